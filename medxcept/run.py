"""The run directory: where one run's configuration, split, data fingerprints and results live.

``reports/<YYYYmmdd-HHMMSS>-<cohort>-<config hash8>/`` — see ``reports/README.md`` for the files.
Everything a reviewer needs to reproduce the run is saved next to its report: the resolved
configuration, the split with its hash, the data hash, package versions, backend and device,
and the code version (git commit when available).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medxcept.config import RunConfig, config_hash, config_to_dict

__all__ = ["RunDir", "package_versions", "code_version", "data_hash", "load_run_config"]

PACKAGES = ("medxcept", "keras", "tensorflow", "jax", "torch", "numpy", "pandas", "scikit-learn",
            "scikit-image", "scipy", "albumentations", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg",
            "pylibjpeg-openjpeg", "pylibjpeg-rle", "pillow", "matplotlib", "jinja2")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results (absent ones omitted)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def code_version() -> dict[str, str]:
    """medxcept's version and, when run from a git checkout, the commit and whether it is dirty."""
    from medxcept import __version__

    out = {"medxcept": __version__}
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        out["git_commit"] = commit
        out["git_dirty"] = "yes" if dirty else "no"
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown (not a git checkout)"
    return out


def data_hash(table: pd.DataFrame) -> str:
    """Hash of the data actually used: the sorted (image_id, file sha256, frame, label) rows."""
    cols = table[["image_id", "sha256", "frame", "label"]].sort_values("image_id")
    return hashlib.sha256(cols.to_csv(index=False).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "cohort"


class RunDir:
    """A run's output directory and the helpers that write into it.

    Args:
        path: the directory (created).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(cls, out_dir: str | Path, cohort_name: str, cfg: RunConfig, *, name: str | None = None) -> RunDir:
        """A fresh run directory ``<out_dir>/<date>-<cohort>-<hash8>`` (suffixed if it exists)."""
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(out_dir) / (name or f"{stamp}-{_slug(cohort_name)}-{config_hash(cfg)}")
        path, i = base, 1
        while path.exists() and name is None:
            i += 1
            path = base.with_name(f"{base.name}-{i}")
        return cls(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, data: Any) -> Path:
        p = self.file(name)
        p.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n", encoding="utf-8")
        return p

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text(encoding="utf-8"))

    def write_csv(self, name: str, df: pd.DataFrame) -> Path:
        p = self.file(name)
        df.to_csv(p, index=False)
        return p

    def write_config(self, cfg: RunConfig, extra: dict[str, Any] | None = None) -> Path:
        data = config_to_dict(cfg)
        if extra:
            data = {**extra, **data}
        p = self.file("config.yaml")
        p.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return p

    def write_private(self, name: str, data: pd.DataFrame | str) -> Path:
        """Identifiers (patient map, paths, full exclusion log): in ``private/``, never elsewhere.

        The folder is created owner-only (0700) and each file is created 0600 from the start
        (``os.open`` with the mode, then an atomic rename), so no other user can read it even
        for a moment; a warning file lies beside them. ``data``: a table (CSV) or text.
        """
        priv = self.path / "private"
        priv.mkdir(mode=0o700, exist_ok=True)
        try:
            os.chmod(priv, 0o700)  # an existing folder (or a permissive umask) is tightened too
        except OSError:
            pass
        readme = priv / "README.txt"
        if not readme.exists():
            _write_owner_only(readme, PRIVATE_README)
        text = data if isinstance(data, str) else data.to_csv(index=False)
        p = priv / name
        _write_owner_only(p, text)
        return p


PRIVATE_README = (
    "This folder holds identifiers: raw patient IDs and their pseudonyms, file paths and names,\n"
    "DICOM UIDs, exact dates and ages, and the full exclusion log. Do not share it, do not attach it\n"
    "to a publication. Everything outside this folder is meant to be shareable.\n")


def _write_owner_only(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a 0600 temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a crashed writer may have other permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved configuration a run saved in ``config.yaml`` (its descriptive extras dropped)."""
    import dataclasses

    from medxcept.config import _build
    from medxcept.errors import ConfigError

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: {run_dir} is not a medxcept run directory")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return _build(RunConfig, {k: v for k, v in data.items() if k in known}, "")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if np.isnan(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON-serializable: {type(o).__name__}")


def environment() -> dict[str, Any]:
    """Interpreter and platform, for ``versions.json``."""
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine()}
