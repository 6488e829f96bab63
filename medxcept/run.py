"""The run directory: where one run's configuration, split, data fingerprints and results live.

``reports/<YYYYmmdd-HHMMSS>-<cohort>-<config hash8>/`` — see ``reports/README.md`` for the files.
Everything a reviewer needs to reproduce the run is saved next to its report: the resolved
configuration, the split with its hash, the data hash, package versions, backend and device,
and the code version (git commit when available).
"""

from __future__ import annotations

import dataclasses
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

import numpy as np
import pandas as pd
import yaml

from medxcept import __version__
from medxcept.config import RunConfig, build_config, config_hash, config_to_dict
from medxcept.errors import ConfigError
from medxcept.files import write_atomic
from medxcept.integrity.split_keys import content_ids
from medxcept.integrity.user_split import is_split_file
from medxcept.models import testnet

__all__ = ["RunDir", "package_versions", "code_version", "data_hash", "load_run_config", "legacy_defaults", "training_determinism",
           "reproduce_block", "write_atomic", "DirectoryLock", "COMPLETE",
           "PRIVATE_PATH", "split_config_paths", "restore_config_paths", "json_default"]

#: The completion marker of a run directory, written last (after the report).
COMPLETE = "complete.json"
LOCK = ".lock"

PACKAGES = ("medxcept", "keras", "tensorflow", "jax", "torch", "numpy", "pandas", "scikit-learn",
            "scikit-image", "scipy", "albumentations", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg",
            "pylibjpeg-openjpeg", "pylibjpeg-rle", "pillow", "matplotlib", "jinja2", "statsmodels")


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


DATA_HASH_FIELDS = ("sha256", "frame", "label", "laterality", "source", "patient")


def data_hash(table: pd.DataFrame, decode: str | None = None) -> str:
    """Hash of the data actually used, by content: the same on any machine.

    One line per image, ``sha256,frame,label,laterality,source,patient``, sorted: the file's
    sha256 and frame, its label, laterality and source, and ``patient``: a digest of the
    sorted ``sha256#frame`` of all images of the same patient (which files belong to one
    person, without naming them). No ``image_id``, pseudonym, path or raw ID enters it, so the
    pseudonym key and the data folder do not change it; a changed file, label, laterality,
    source or patient grouping does. Columns a table lacks are left empty.

    ``decode``: the cohort-level decode key (:func:`medxcept.images.cache.decode_key`, e.g. the
    DICOM window): the same files decoded differently are different data.
    """
    ids = content_ids(table)
    n = len(table)

    def col(name: str) -> pd.Series:
        return table[name].astype(str) if name in table.columns else pd.Series([""] * n, index=table.index)

    if "patient_key" in table.columns:
        owner = table["patient_id"].astype(str) if "patient_id" in table.columns else table["patient_key"].astype(str)
        members = ids.groupby(owner.to_numpy()).agg(lambda s: "\n".join(sorted(s)))
        digest = members.map(lambda m: hashlib.sha256(m.encode("utf-8")).hexdigest()[:16])
        patient = owner.map(digest)
    else:
        patient = pd.Series([""] * n, index=table.index)
    sha = col("sha256")
    frame = pd.to_numeric(table["frame"], errors="coerce").fillna(0).astype(int).astype(str) if "frame" in table \
        else pd.Series(["0"] * n, index=table.index)
    lines = sorted(",".join(v) for v in zip(sha, frame, col("label"), col("laterality"), col("source"), patient,
                                            strict=True))
    text = ",".join(DATA_HASH_FIELDS) + "\n" + "\n".join(lines) + "\n" + (f"decode={decode}\n" if decode else "")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def training_determinism(device: dict[str, str]) -> dict[str, str]:
    """How exactly training repeats on this backend and device, in words a reviewer can check.

    medxcept seeds Python, NumPy and the backend (``keras.utils.set_random_seed``), orders and
    augments every batch from ``(seed, epoch, batch)``, and does not turn on TensorFlow's
    ``enable_op_determinism``. Measured (``tests/test_reproduce.py``, the demo's
    ``--reproduce``): TensorFlow on CPU repeats bitwise on the same machine. Not measured:
    other CPUs (vectorized kernels and thread counts may round differently) and GPUs (cuDNN
    picks non-deterministic kernels), where a re-run agrees within a tolerance only.
    """
    backend, dev = device.get("backend", "?"), device.get("device", "?")
    if dev == "cpu" and backend == "tensorflow":
        return {"level": "bitwise", "scope": "same machine (same CPU, same thread count)",
                "note": "TensorFlow on CPU, seeded; measured bitwise-identical predictions on re-runs. On another "
                        "CPU type expect agreement within a tolerance, not bit for bit."}
    if dev == "cpu":
        return {"level": "within tolerance", "scope": "same machine",
                "note": f"{backend} on CPU, seeded; expected bitwise on the same machine but not measured here"}
    return {"level": "within tolerance", "scope": "same machine",
            "note": f"{backend} on GPU: GPU kernels (cuDNN convolutions, atomic reductions) are not bitwise "
                    "deterministic and op determinism is not enabled; re-runs agree within a tolerance"}


def reproduce_block(cfg: RunConfig, *, data_hash: str, split_hash: str, device: dict[str, str],
                    user_split: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a re-run needs to reproduce a run exactly (the ``reproduce`` block of ``versions.json``).

    The split is a function of the data, the configuration and the seed only (never of the
    per-machine pseudonym key), so the same ``data_hash`` + ``config_hash`` + seed give the
    same ``split_hash`` anywhere; training then repeats as ``determinism`` says.
    """
    return {
        "command": "python -m pipelines.retina --reproduce RUN_DIR",
        "seed": int(cfg.seed), "split_seed": int(cfg.split.seed), "config_hash": config_hash(cfg),
        "data_hash": data_hash, "split_hash": split_hash,
        "split_depends_on": "data (file contents, labels, patients), configuration and seed only; "
                            "not on the pseudonym key, file paths or row order",
        "backend": device.get("backend"), "device": device.get("device"),
        "determinism": training_determinism(device),
        "packages": "see 'packages' (same versions needed for a bitwise re-run)",
        "user_split": user_split,
    }


class DirectoryLock:
    """An exclusive, non-blocking ``fcntl.flock`` on a lock file: one process per run or fold.

    The operating system releases it when the process ends, however it ends (``SIGKILL``
    included), so a killed run never leaves a stale lock. ``flock`` is advisory and, on some
    network file systems, local to one machine. Where ``fcntl`` does not exist (Windows) the lock
    is a no-op.

    Parameters
    ----------
    path : str or Path
        The lock file (created; never deleted, so two processes always lock the same inode).
    what : str
        How the error names the locked thing (``"run directory reports/x"``).
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path, self.what = Path(path), what
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        try:
            import fcntl  # POSIX only: where it does not exist (Windows) the lock is a no-op
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
            import fcntl  # POSIX only (see acquire)
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

    Parameters
    ----------
    path : Path
        The directory (created).
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
        return self.write_text(name, json.dumps(data, indent=2, sort_keys=False, default=json_default) + "\n")

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text(encoding="utf-8"))

    def write_csv(self, name: str, df: pd.DataFrame) -> Path:
        return self.write_text(name, df.to_csv(index=False))

    def write_config(self, cfg: RunConfig, extra: dict[str, Any] | None = None) -> Path:
        """``config.yaml``, shareable: a path option that could name a folder of patient files
        (:func:`split_config_paths`) is replaced by :data:`PRIVATE_PATH` and kept in
        ``private/config_paths.json``, from which :func:`load_run_config` restores it."""
        data, paths = split_config_paths(config_to_dict(cfg))
        if paths:
            self.write_private(CONFIG_PATHS, json.dumps(paths, indent=2) + "\n")
        if extra:
            data = {**extra, **data}
        return self.write_text("config.yaml", yaml.safe_dump(data, sort_keys=False))

    def write_versions(self, *, hashes: dict[str, str], device: dict[str, str] | None = None,
                       **extra: Any) -> dict[str, Any]:
        """Write ``versions.json``, the run's provenance, and return it.

        The one builder of ``versions.json`` for every workflow: ``packages``
        (:func:`package_versions`), ``code`` (:func:`code_version`), ``environment``, then
        ``device`` (when given), the ``hashes`` (``data_hash``, ``split_hash``, ``config_hash``,
        in the caller's order) and any ``extra`` blocks (``model``, ``reproduce``, ``source_run``).
        """
        versions: dict[str, Any] = {"packages": package_versions(), "code": code_version(),
                                    "environment": environment()}
        if device is not None:
            versions["device"] = device
        versions.update(hashes)
        versions.update(extra)
        self.write_json("versions.json", versions)
        return versions

    def write_private(self, name: str, data: pd.DataFrame | str | bytes) -> Path:
        """Identifiers (patient map, paths, full exclusion log): in ``private/``, never elsewhere.

        The folder is created owner-only (0700) and each file is created 0600 from the start
        (``os.open`` with the mode, then an atomic rename), so no other user can read it even
        for a moment; a warning file lies beside them. ``data``: a table (CSV), text or bytes
        (image fingerprints).
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
        text = data if isinstance(data, (str, bytes)) else data.to_csv(index=False)
        p = priv / name
        _write_owner_only(p, text)
        return p


PRIVATE_README = (
    "This folder holds identifiers: raw patient IDs and their pseudonyms, file paths and names,\n"
    "DICOM UIDs, exact dates and ages, and the full exclusion log. Do not share it, do not attach it\n"
    "to a publication. Everything outside this folder is meant to be shareable.\n")


def _write_owner_only(path: Path, text: str | bytes) -> None:
    """Write ``text`` (or bytes) to ``path`` through a 0600 temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a crashed writer may have other permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if isinstance(text, bytes):
            with os.fdopen(fd, "wb") as fb:
                fb.write(text)
        else:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


#: The value ``config.yaml`` shows for a path option kept in ``private/config_paths.json``.
PRIVATE_PATH = "(in private/config_paths.json)"
CONFIG_PATHS = "config_paths.json"
#: Path options of :class:`RunConfig` (dotted): the cohort file, the output folder, a split file.
PATH_OPTIONS = ("cohort", "out_dir", "split.user_split")


def _shareable_path(value: str) -> bool:
    """A relative path inside the working directory (``cohorts/demo.yaml``, ``reports``) may be shown;
    an absolute path, ``~`` or ``..`` reveals where the data lives, and goes to ``private/``."""
    p = Path(value)
    return not (p.is_absolute() or value.startswith("~") or ".." in p.parts)


def split_config_paths(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A saved configuration's shareable copy and the path options taken out of it.

    Parameters
    ----------
    data : dict
        :func:`medxcept.config.config_to_dict` of a :class:`RunConfig`.

    Returns
    -------
    (dict, dict)
        The configuration with each path option of :data:`PATH_OPTIONS` that is not a plain
        relative path replaced by :data:`PRIVATE_PATH`, and ``{dotted option: value}`` of those.

    Examples
    --------
    >>> split_config_paths({"cohort": "/data/smith/c.yaml", "out_dir": "reports", "split": {"user_split": None}})
    ({'cohort': '(in private/config_paths.json)', 'out_dir': 'reports', 'split': {'user_split': None}}, \
{'cohort': '/data/smith/c.yaml'})
    """
    out = json.loads(json.dumps(data))
    taken: dict[str, str] = {}
    for dotted in PATH_OPTIONS:
        *parents, leaf = dotted.split(".")
        node = out
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(leaf), str):
            continue
        value = node[leaf]
        if dotted == "split.user_split" and not is_split_file(value):
            continue  # a column name, not a file
        if not _shareable_path(value):
            taken[dotted] = value
            node[leaf] = PRIVATE_PATH
    return out, taken


def restore_config_paths(data: dict[str, Any], run_dir: str | Path, *, strict: bool = True) -> dict[str, Any]:
    """Put back the path options :func:`split_config_paths` moved to ``private/config_paths.json``.

    ``strict=False`` leaves :data:`PRIVATE_PATH` where ``private/`` is missing (a reader that
    needs no path: an external validation reads the model's options only).

    Raises
    ------
    ConfigError
        ``strict`` and an option is kept in a ``private/config_paths.json`` that is missing.
    """
    run_dir = Path(run_dir)
    out = json.loads(json.dumps(data))
    private = run_dir / "private" / CONFIG_PATHS
    paths: dict[str, str] | None = None
    for dotted in PATH_OPTIONS:
        *parents, leaf = dotted.split(".")
        node = out
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or node.get(leaf) != PRIVATE_PATH:
            continue
        if paths is None:
            if not private.is_file():
                if not strict:
                    return out
                raise ConfigError(
                    f"{run_dir / 'config.yaml'}: option '{dotted}' is kept in {private}, which is missing "
                    "(a run directory copied without its private/ folder): copy private/ back, or give the "
                    "option again on the command line")
            paths = json.loads(private.read_text(encoding="utf-8"))
        node[leaf] = paths[dotted]
    return out


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved configuration a run saved in ``config.yaml`` (its descriptive extras dropped;
    path options kept in ``private/`` put back)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: {run_dir} is not a medxcept run directory")
    data = restore_config_paths(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, run_dir)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return build_config(RunConfig, legacy_defaults({k: v for k, v in data.items() if k in known}), "")


def legacy_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """Fill options a run saved before they existed with the behaviour that run actually had.

    Runs made before ``eval.unit`` existed were measured per patient (and chose their threshold so);
    before ``eval.patient_aggregation`` existed, by the mean of the images. Without this, resuming
    or reproducing such a run would silently apply today's defaults (per visit, maximum).
    """
    ev = saved.get("eval")
    if isinstance(ev, dict):
        saved = {**saved, "eval": {"unit": "patient", "patient_aggregation": "mean", **ev}}
    return saved


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays, tuples, sets, paths and ``to_dict`` objects (NaN: null)."""
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
    """Interpreter and platform, for ``versions.json`` (and ``test_network`` under the test hook of
    :mod:`medxcept.models.testnet`, so that a run on the tiny test network can never pass for a real one)."""
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            **testnet.provenance()}
