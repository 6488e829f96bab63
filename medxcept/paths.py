"""Where medxcept keeps what it makes on this machine: generated cohorts, preprocessing caches, the pseudonym key.

``$MEDXCEPT_CACHE``, or ``~/.cache/medxcept``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """Where generated data and preprocessing caches live (``$MEDXCEPT_CACHE`` or ``~/.cache/medxcept``).

    The demo generators re-export it (``medxcept.cohort.demo.cache_dir``), so generation and ingestion agree.
    """
    return Path(os.environ.get("MEDXCEPT_CACHE", Path.home() / ".cache" / "medxcept")).expanduser()
