"""The on-disk cache of preprocessed images (:class:`PreprocessCache`, keyed by file hash, frame and
:meth:`~medxcept.images.preprocess.PreprocessConfig.key`, so a configuration change never reuses stale
pixels), the cohort-level decode key (:func:`decode_key`) and stacking cached images into one array
(:func:`load_images`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medxcept.images.preprocess import PREPROCESS_VERSION, PreprocessConfig

__all__ = ["decode_key", "PreprocessCache", "load_images"]

logger = logging.getLogger(__name__)


def decode_key(spec: Any) -> str:
    """The cohort-level options that change decoded pixels, as a cache sub-folder name.

    ``modality`` (quality and preprocessing per modality) and ``window_index`` (which DICOM
    WindowCenter/Width pair is applied) are cohort options, not :class:`~medxcept.images.preprocess.PreprocessConfig`
    fields, so :meth:`~medxcept.images.preprocess.PreprocessConfig.key` does not see them; this key keeps the pixels of one
    decoding apart from another's (``"decode-<hash8>"``); the defaults give ``""`` (no
    sub-folder, no change to the data hash), so existing caches and hashes stay valid.

    Examples
    --------
    >>> from types import SimpleNamespace as S
    >>> decode_key(S(modality="fundus", window_index=0))
    ''
    >>> decode_key(S(modality="fundus", window_index=1)) != decode_key(S(modality="gray", window_index=1))
    True
    """
    opts = {"modality": str(getattr(spec, "modality", "fundus")), "window_index": int(getattr(spec, "window_index", 0))}
    if opts == {"modality": "fundus", "window_index": 0}:
        return ""
    blob = json.dumps(opts, sort_keys=True, separators=(",", ":"))
    return "decode-" + hashlib.sha256(blob.encode()).hexdigest()[:8]


class PreprocessCache:
    """On-disk cache of preprocessed images: one ``.npy`` per (file, frame, config).

    Layout: ``<root>/<cfg.key()>/<sha[:2]>/<sha>_<frame>.npy`` plus a human-readable
    ``<root>/<cfg.key()>/config.json``. A config change gives a different key, so it
    never reuses stale pixels. Writes go to a temporary file in the same directory,
    then ``os.replace`` (atomic on POSIX and Windows), so two processes filling the
    same cache cannot leave a half-written file; a corrupt or unexpected entry is
    treated as a miss and rewritten.

    Parameters
    ----------
    root : str or Path
        Cache directory (created on first write).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, sha: str, frame: int, cfg: PreprocessConfig) -> Path:
        """Where the entry for (sha, frame, cfg) lives."""
        sha = str(sha).lower()
        if not sha or any(ch not in "0123456789abcdef" for ch in sha):
            raise ValueError(f"cache key must be a hex sha256, got {sha!r}")
        return self.root / cfg.key() / sha[:2] / f"{sha}_{int(frame)}.npy"

    def get(self, sha: str, frame: int, cfg: PreprocessConfig) -> np.ndarray | None:
        """The cached array, or None on a miss (absent, unreadable or wrong shape)."""
        p = self.path(sha, frame, cfg)
        if not p.exists():
            return None
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("unreadable cache entry %s (%s); recomputing", p, exc)
            return None
        px = int(cfg.image_px)
        if arr.dtype != np.uint8 or arr.shape != (px, px, 3):
            logger.warning(
                "cache entry %s has %s %s, expected uint8 %s; recomputing", p, arr.dtype, arr.shape, (px, px, 3)
            )
            return None
        return arr

    def put(self, sha: str, frame: int, cfg: PreprocessConfig, arr: np.ndarray) -> Path:
        """Store ``arr`` (uint8 ``image_px x image_px x 3``) atomically; return its path."""
        px = int(cfg.image_px)
        arr = np.asarray(arr)
        if arr.dtype != np.uint8 or arr.shape != (px, px, 3):
            raise ValueError(f"cache stores uint8 {(px, px, 3)} arrays, got {arr.dtype} {arr.shape}")
        p = self.path(sha, frame, cfg)
        p.parent.mkdir(parents=True, exist_ok=True)
        self._write_config(cfg)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
            os.replace(tmp, p)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return p

    def get_or_compute(
        self, sha: str, frame: int, cfg: PreprocessConfig, fn: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """Return the cached array, or compute it with ``fn()``, store and return it."""
        arr = self.get(sha, frame, cfg)
        if arr is not None:
            self.hits += 1
            return arr
        self.misses += 1
        arr = fn()
        self.put(sha, frame, cfg, arr)
        return arr

    def size_bytes(self) -> int:
        """Total size of the cached ``.npy`` files under ``root``."""
        if not self.root.exists():
            return 0
        return sum(p.stat().st_size for p in self.root.rglob("*.npy"))

    def _write_config(self, cfg: PreprocessConfig) -> None:
        p = self.root / cfg.key() / "config.json"
        if p.exists():
            return
        fields = dataclasses.asdict(cfg)
        fields.pop("quality_policy")  # not part of the key: decides use, not pixels
        fields.pop("min_quality")
        fields["version"] = PREPROCESS_VERSION
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".config.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(fields, fh, indent=2, default=list)
        os.replace(tmp, p)


def load_images(df: pd.DataFrame, cache: PreprocessCache, cfg: PreprocessConfig) -> np.ndarray:
    """Stack the cached preprocessed images of ``df`` rows into one uint8 array (N, px, px, 3).

    Raises ``KeyError`` naming the image when one is not in the cache (ingestion fills it).
    """
    out = np.empty((len(df), cfg.image_px, cfg.image_px, 3), dtype=np.uint8)
    for i, (sha, frame) in enumerate(zip(df["sha256"], df["frame"], strict=True)):
        arr = cache.get(sha, int(frame), cfg)
        if arr is None:
            raise KeyError(f"image {df['image_id'].iloc[i]} is not in the preprocessing cache; re-run ingestion")
        out[i] = arr
    return out

