"""medxcept: train and honestly evaluate an Xception classifier on a small medical imaging cohort.

One module per stage (see the README's map). Importing the package sets two environment
defaults before any heavy library loads: albumentations must not ask the network for updates
(``NO_ALBUMENTATIONS_UPDATE=1``), and TensorFlow's C++ start-up chatter is silenced.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
