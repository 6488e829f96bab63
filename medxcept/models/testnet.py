"""Test hook: a tiny Xception-shaped network in place of Xception, so the test suite's plumbing is fast.

``MEDXCEPT_TEST_NETWORK=tiny`` makes :func:`medxcept.models.network.build_model` build a network with
Xception's structure and layer names (entry flow ``block1``-``block4``, one middle-flow block
``block5``, exit flow ``block13``-``block14``; the unnamed residual 1 x 1 convolutions in the same
places) but 8 to 256 channels instead of 32 to 2048 and one middle block instead of eight. Block
lookup, freezing and unfreezing, Grad-CAM, checkpoints, resume, k-fold and the report then run
the same code in a fraction of the time. The test suite sets it (``tests/conftest.py``); the
tests that check that Xception itself learns unset it.

It is a test fixture, not a user option: no command-line flag or configuration key selects it.
The variable is unset in normal use; nothing here changes anything unless it is set. When it is,
the run says so wherever it could be mistaken for a real one: ``versions.json``
(``environment.test_network``), a warning in the log, and the model's name
(:data:`MODEL_NAME`), which :mod:`medxcept.evaluation.external` refuses to evaluate without the variable.
Its weights have other shapes than Xception's, so they never load into Xception, and it refuses
ImageNet weights.

This module only reads the variable (no Keras import); the network is built by
:func:`medxcept.models.network.tiny_xception`.
"""

from __future__ import annotations

import os

from medxcept.errors import ConfigError

__all__ = ["ENV", "TINY", "MODEL_NAME", "DESCRIPTION", "active", "provenance"]

ENV = "MEDXCEPT_TEST_NETWORK"
TINY = "tiny"
#: the name of a model built on the tiny test network (a real one is ``medxcept_xception``)
MODEL_NAME = "medxcept_tiny_test_network"
DESCRIPTION = (f"tiny Xception-shaped TEST network ({ENV}={TINY}): a test fixture, not Xception; "
               "its results say nothing about the data")


def active() -> bool:
    """``MEDXCEPT_TEST_NETWORK`` is ``tiny`` (unset or empty: the real Xception).

    Raises:
        ConfigError: the variable holds anything else (a typo must not silently train Xception
            in a test, nor the tiny network in a real run).
    """
    value = os.environ.get(ENV, "").strip()
    if not value:
        return False
    if value != TINY:
        raise ConfigError(f"{ENV}={value!r}: the only test network is {TINY!r}; unset the variable "
                          "to train the real Xception")
    return True


def provenance() -> dict[str, str]:
    """``{"test_network": DESCRIPTION}`` while the hook is active, else ``{}`` (for ``versions.json``)."""
    return {"test_network": DESCRIPTION} if active() else {}
