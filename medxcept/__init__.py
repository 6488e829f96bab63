"""medxcept: train and honestly evaluate an Xception classifier on a small medical imaging cohort.

One module per stage (see the README's map). Importing the package sets two environment
defaults before any heavy library loads: albumentations must not ask the network for updates
(``NO_ALBUMENTATIONS_UPDATE=1``), TensorFlow's C++ start-up chatter is silenced, and the
backends' thread counts are set from the CPUs the process may use (:mod:`medxcept.threads`).
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# the backends' thread pools sized from the CPUs this process may use, before any backend starts
from medxcept.threads import configure_threads  # noqa: E402

configure_threads()

__version__ = "0.1.0"
