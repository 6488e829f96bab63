"""The run directory: where one run's configuration, split, data fingerprints and results live.

``reports/<YYYYmmdd-HHMMSS>-<cohort>-<config hash8>/`` — see ``reports/README.md`` for the files.
Everything a reviewer needs to reproduce the run is saved next to its report: the resolved
configuration, the split with its hash, the data hash, package versions, backend and device,
and the code version (git commit when available).
"""

from __future__ import annotations

import datetime as _dt
import errno
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

__all__ = ["RunDir", "package_versions", "code_version", "data_hash", "load_run_config", "write_atomic",
           "DirectoryLock", "COMPLETE"]

#: The completion marker of a run directory, written last (after the report).
COMPLETE = "complete.json"
LOCK = ".lock"

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


def data_hash(table: pd.DataFrame, decode: str | None = None) -> str:
    """Hash of the data actually used: the sorted (image_id, file sha256, frame, label) rows.

    ``decode``: the cohort-level decode key (:meth:`medxcept.preprocess.PreprocessCache` ``decode``,
    e.g. the DICOM window): the same files decoded differently are different data.
    """
    cols = table[["image_id", "sha256", "frame", "label"]].sort_values("image_id")
    blob = cols.to_csv(index=False) + (f"decode={decode}\n" if decode else "")
    return hashlib.sha256(blob.encode()).hexdigest()


def write_atomic(path: str | Path, data: str | bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader (or a resumed run) sees the old file or the new one, never half of one; a crash
    mid-write leaves the old file untouched. ``mode``: permissions set on the temporary file
    before any byte is written (e.g. ``0o600`` for identifiers).
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


class DirectoryLock:
    """An exclusive, non-blocking ``fcntl.flock`` on a lock file: one process per run or fold.

    The operating system releases it when the process ends, however it ends (``SIGKILL``
    included), so a killed run never leaves a stale lock. ``flock`` is advisory and, on some
    network file systems, local to one machine. Where ``fcntl`` does not exist (Windows) the lock
    is a no-op.

    Args:
        path: the lock file (created; never deleted, so two processes always lock the same inode).
        what: how the error names the locked thing (``"run directory reports/x"``).
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path, self.what = Path(path), what
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        from medxcept.errors import ConfigError

        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = self.holder()
            raise ConfigError(f"{self.what} is in use by another process{f' (pid {holder})' if holder else ''}: "
                              "wait for it to finish, or stop it first; nothing was changed") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def is_held(self) -> bool:
        """Whether another process holds the lock now (without taking it)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover
            return False
        if self._fd is not None or not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing releases a lock taken here
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "cohort"


class RunDir:
    """A run's output directory and the helpers that write into it.

    Every write goes through :func:`write_atomic` (temporary file, then ``os.replace``).

    Args:
        path: the directory (created).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock: DirectoryLock | None = None

    @classmethod
    def create(cls, out_dir: str | Path, cohort_name: str, cfg: RunConfig, *, name: str | None = None) -> RunDir:
        """A fresh run directory ``<out_dir>/<date>-<cohort>-<hash8>`` (suffixed if it exists).

        A ``name`` given (``--run-name``) must not be an existing non-empty directory: stale files
        of another run would mix with this one's (use ``--resume`` to continue a run).
        """
        from medxcept.errors import ConfigError

        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(out_dir) / (name or f"{stamp}-{_slug(cohort_name)}-{config_hash(cfg)}")
        if name is not None and base.exists() and (not base.is_dir() or any(base.iterdir())):
            raise ConfigError(f"--run-name {name}: {base} already exists and is not empty; choose another name, "
                              f"delete it, or continue it with --resume {base}")
        path, i = base, 1
        while path.exists() and name is None:
            i += 1
            path = base.with_name(f"{base.name}-{i}")
        return cls(path)

    def lock(self) -> RunDir:
        """Take the run's exclusive lock (``.lock``) for the life of this process, or raise
        :class:`~medxcept.errors.ConfigError` when another process holds it."""
        if self._lock is None:
            self._lock = DirectoryLock(self.path / LOCK, f"run directory {self.path}").acquire()
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def file(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        return write_atomic(self.file(name), text)

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text(encoding="utf-8"))

    def write_csv(self, name: str, df: pd.DataFrame) -> Path:
        return self.write_text(name, df.to_csv(index=False))

    def write_config(self, cfg: RunConfig, extra: dict[str, Any] | None = None) -> Path:
        data = config_to_dict(cfg)
        if extra:
            data = {**extra, **data}
        return self.write_text("config.yaml", yaml.safe_dump(data, sort_keys=False))

    def write_private(self, name: str, df: pd.DataFrame) -> Path:
        """Identifiers (the patient map): in ``private/``, with a warning file beside them."""
        priv = self.path / "private"
        priv.mkdir(exist_ok=True)
        write_atomic(priv / "README.txt",
                     "This folder maps raw patient IDs to the pseudonyms used everywhere else.\n"
                     "It contains identifiers: do not share it, do not attach it to a publication.\n")
        p = write_atomic(priv / name, df.to_csv(index=False), mode=0o600)
        try:
            p.chmod(0o600)
        except OSError:
            pass
        return p


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
