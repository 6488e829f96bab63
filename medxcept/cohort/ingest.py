"""Ingestion: a cohort file in, one cohort table and one exclusion log out.

For every source of the cohort this module

1. lists every file under the source folder (the label table itself aside): these are the
   **files found**;
2. reads the label table and matches its rows to the files (label rows without a file, files
   without a label, unknown labels and conflicting duplicates become exclusions, or stop the run
   when the cohort says ``on_label_issue: error``);
3. decodes each labelled file in a process pool (DICOM with :mod:`medxcept.io.dicom`, photographs
   with :mod:`medxcept.io.images`), measures its quality, preprocesses it and stores the result in
   the :class:`~medxcept.images.cache.PreprocessCache` — one decode per file per configuration;
4. returns the cohort table (schema in :mod:`medxcept.cohort.table`) and the exclusion log.

Nothing is dropped silently: ``files found = files used + files excluded`` is checked at the end
and any difference is an error. A file that fails for any reason becomes an exclusion row with its
stage and reason, and the run goes on; a missing decoder plugin is an install problem and stops
the run once, with the pip command to fix it.

Privacy: ids are keyed hashes (the pseudonym key, :func:`pseudonym_salt`) of a file's position in
the cohort, never of its name alone, so they cannot be recomputed from guessed record numbers.
Warnings name files by that keyed id (:func:`medxcept.io.log_name`), never by path or name; the
full exclusion log (paths) goes to ``private/``, and :func:`public_exclusions` is the shareable
one. Symbolic links that resolve outside a source's root folder are not followed (an exclusion).
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing as mp
import os
import re
import secrets
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medxcept.cohort.table import (
    SOURCE_KINDS,
    CohortSpec,
    SourceSpec,
    keyed_id,
    pseudonymize,
    validate_cohort,
)
from medxcept.errors import CohortError, ConfigError, MissingDecoderError, ReadError
from medxcept.images.cache import PreprocessCache
from medxcept.images.preprocess import PreprocessConfig, decode_min_side, find_fov, preprocess
from medxcept.images.quality import apply_quality_policy, quality
from medxcept.integrity.acquisition import acquisition_fingerprint, geometry_fingerprint
from medxcept.io import file_label, walk_files
from medxcept.io.dicom import read_dicom, read_dicom_header
from medxcept.io.images import read_image
from medxcept.io.labels import (
    labels_from_folders,
    match_files,
    normalize_laterality,
    parse_filename,
    read_label_table,
)
from medxcept.paths import cache_dir
from medxcept.threads import available_cpus

__all__ = ["IngestResult", "ingest", "data_root", "EXCLUSION_COLUMNS", "PUBLIC_EXCLUSION_COLUMNS",
           "pseudonym_salt", "file_sha256", "public_exclusions", "shareable_reason", "SOURCE_READERS",
           "SourceReader", "FILE_READERS", "read_frames"]

log = logging.getLogger(__name__)

EXCLUSION_COLUMNS = ["path", "stage", "reason"]
#: The exclusion log kept in memory and in ``private/exclusions.csv``: the columns above, plus the
#: keyed ``file_id``, the ``frame`` (-1: the whole file), the ``source`` name, the class ``label``
#: when known and ``found`` (the path is one of the files found, so it counts in the accounting).
PRIVATE_EXCLUSION_COLUMNS = [*EXCLUSION_COLUMNS, "file_id", "frame", "source", "label", "found"]
#: The shareable exclusion log (``exclusions.csv``): no path, no file name.
PUBLIC_EXCLUSION_COLUMNS = ["file_id", "frame", "source", "stage", "reason", "label", "found"]
MIN_KEY_CHARS = 32  # a key file shorter than this was truncated or tampered with
SKIP_NAMES = {"COMPLETE", ".DS_Store", "Thumbs.db"}
#: Ingestion decodes the first :data:`POOL_PROBE_FILES` files in this process and times them; the rest
#: goes to a process pool only when decoding it here would take at least :data:`POOL_MIN_SECONDS`.
#: A spawned worker pays about 2-4 CPU s of imports before its first file: the tests' 49-file
#: half-size cohort decodes in 0.9 CPU s in one process and took 7.6-8.4 CPU s (17-23 s wall, load 8)
#: in a 2-worker pool, while the demo's full-size photographs and DICOM files still get the pool.
POOL_PROBE_FILES = 8
POOL_MIN_SECONDS = 4.0


@dataclass
class IngestResult:
    """The cohort table, the exclusion log and the bookkeeping that proves nothing was lost."""

    table: pd.DataFrame
    exclusions: pd.DataFrame
    files_found: int
    files_used: int
    files_excluded: int
    patient_map: pd.DataFrame  # raw patient_id -> patient_key; private, never in a report


def data_root(spec: CohortSpec) -> Path:
    """The folder the sources' relative paths start from.

    Ingestion reads files; it never generates them. A generated cohort (``generator: demo``) is
    written first by the workflow (:func:`medxcept.workflows.steps.materialize`), which returns the
    spec with ``base_dir`` set to the generated folder.

    Raises
    ------
    ConfigError
        ``spec`` is a generated cohort not materialized yet.
    """
    if spec.generator:
        raise ConfigError(f"cohort '{spec.name}' is generated (generator: {spec.generator}) and not written yet: "
                          "call medxcept.workflows.steps.materialize(spec) first (the pipelines do)")
    return Path(spec.base_dir)


def pseudonym_salt(spec: CohortSpec) -> str:
    """The cohort's salt, or this machine's random key (created once, kept private).

    The key file appears complete or not at all: it is written to a private temporary file and
    then hard-linked into place (``os.link`` fails if another process got there first, whose key
    is then used), so a concurrent process can never read it empty. An empty or short key file
    (an empty key would mean unsalted, enumerable hashes) is refused.

    Raises
    ------
    ConfigError
        The key file is shorter than 32 characters.
    """
    if spec.pseudonym_salt:
        return spec.pseudonym_salt
    key = cache_dir() / "pseudonym.key"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        tmp = key.with_name(f".pseudonym.key.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, key)  # atomic, and never replaces a key another process created
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    text = key.read_text().strip()
    if len(text) < MIN_KEY_CHARS:
        raise ConfigError(
            f"pseudonym key {key} holds {len(text)} character(s), fewer than {MIN_KEY_CHARS}: it is truncated "
            "or was replaced, and a short key gives guessable pseudonyms. Restore it from a backup (pseudonyms "
            "of earlier runs depend on it), or delete it to create a new key, or set pseudonym_salt in the "
            "cohort file")
    return text


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


OUTSIDE_LINK = "symbolic link to a location outside the source folder: not followed"


def _list_files(root: Path, exclude: set[Path], refused: list[Path] | None = None) -> list[Path]:
    """Every file under ``root`` (:func:`medxcept.io.walk_files`); links leading out of ``root``
    are appended to ``refused`` instead."""
    files, out_links = walk_files(root, skip=lambda name: name.startswith(".") or name in SKIP_NAMES)
    if refused is not None:
        refused.extend(out_links)
    return [p for p in files if p.resolve() not in exclude]


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_PATHLIKE = re.compile(r"[^\s'\"(),;]*[/\\][^\s'\"(),;]*")
_FILENAME = re.compile(r"[^\s'\"(),;/\\]+\.(?:jpe?g|png|tiff?|bmp|gif|webp|dcm|dicom|ima|img|raw|npy|csv|tsv|"
                       r"xlsx?|txt|json|ya?ml|zip|gz)\b", re.IGNORECASE)


def shareable_reason(reason: str, names: tuple[str, ...] = ()) -> str:
    """An exclusion reason without file names or paths, for shared files and logs.

    Quoted values (file names, labels, UIDs) become ``'…'``; path-like and file-name-like words
    become ``…``; ``names`` (the file's path, folder and name) are removed wherever they appear.

    >>> shareable_reason("row 7: file 'MRN123_OD.jpg' has an empty label")
    "row 7: file '…' has an empty label"
    >>> shareable_reason("[Errno 2] No such file or directory: /data/x/MRN123.png")
    '[Errno 2] No such file or directory: …'
    """
    text = str(reason)
    for n in sorted((n for n in names if n and len(n) > 2), key=len, reverse=True):
        text = text.replace(n, "…")
    text = _QUOTED.sub("'…'", text)
    text = _PATHLIKE.sub("…", text)
    return _FILENAME.sub("…", text)


def public_exclusions(exclusions: pd.DataFrame) -> pd.DataFrame:
    """The exclusion log as it may be shared: keyed ``file_id`` instead of the path, reasons
    without file names (:func:`shareable_reason`); columns :data:`PUBLIC_EXCLUSION_COLUMNS`."""
    ex = exclusions.copy()
    for c in PRIVATE_EXCLUSION_COLUMNS:
        if c not in ex:
            ex[c] = "" if c not in ("frame", "found") else (-1 if c == "frame" else True)
    reasons = []
    for path, reason in zip(ex["path"].astype(str), ex["reason"].astype(str), strict=True):
        base = path.split("#frame")[0]
        p = Path(base)
        reasons.append(shareable_reason(reason, (base, str(p.parent), p.name)))
    ex["reason"] = reasons
    return ex[PUBLIC_EXCLUSION_COLUMNS].reset_index(drop=True)


def _decode_task(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: decode, check quality, preprocess and cache one file. Never raises for a bad file.

    Log lines and library warnings about the file name it by its keyed ``file_id``, never by path.
    """
    path = Path(task["path"])
    label = task.get("file_id") or "a file"
    with file_label(label), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _decode_guarded(task, path)
    names = (str(path), str(path.parent), path.name)
    for w in caught:  # pydicom / Pillow warnings: re-emitted naming the file id, without paths
        text = f"{w.category.__name__}: {shareable_reason(str(w.message), names)}"
        if text not in _WARNED:  # once per process, as Python's default filter would
            _WARNED.add(text)
            log.warning("%s: %s (first file with this warning)", label, text)
    return result


_WARNED: set[str] = set()


def _decode_guarded(task: dict[str, Any], path: Path) -> dict[str, Any]:
    try:
        return _decode_file(task)
    except ReadError as exc:
        return {"path": str(path), "excluded": [{"path": str(path), "stage": exc.stage, "reason": exc.reason}]}
    except MissingDecoderError as exc:
        return {"path": str(path), "fatal": str(exc)}
    except (MemoryError, RecursionError) as exc:
        return {"path": str(path), "excluded": [{"path": str(path), "stage": "decode",
                                                 "reason": f"decoder ran out of resources: {type(exc).__name__}"}]}
    except Exception as exc:  # noqa: BLE001 - a library bug on one file must not stop the cohort
        return {"path": str(path), "excluded": [{"path": str(path), "stage": "decode",
                                                 "reason": f"unexpected decoder error: {type(exc).__name__}: {exc}"}]}


def _read_dicom_frames(path: Path, *, frames: str | int = "all", window_index: int = 0,
                       max_pixels: int | None = None,
                       min_side: int | None = None) -> tuple[list[int], list[np.ndarray], dict[str, Any]]:
    # min_side is not used: DICOM frames are decoded at their stored size
    frame = None if frames == "all" else int(frames)
    limit = {} if max_pixels is None else {"max_pixels": max_pixels}  # None: the reader's own limit
    pixels, meta = read_dicom(path, frame=frame, window_index=window_index, **limit)
    return (list(range(pixels.shape[0])) if frame is None else [frame]), list(pixels), meta


def _read_photo_frames(path: Path, *, frames: str | int = "all", window_index: int = 0,
                       max_pixels: int | None = None,
                       min_side: int | None = None) -> tuple[list[int], list[np.ndarray], dict[str, Any]]:
    arr, meta = read_image(path, min_side=min_side, **({} if max_pixels is None else {"max_pixels": max_pixels}))
    return [0], [arr], meta


#: File readers by name (the cohort table's ``reader`` column): ``path -> (frame indices, frames, meta)``.
#: ``min_side``: the reader may decode a reduced image whose shorter side keeps at least that many
#: pixels (:func:`medxcept.io.images.read_image`); it reports ``stored_width``/``stored_height`` and
#: ``reduce`` in the metadata when it did, and may ignore the option (DICOM does).
FILE_READERS: dict[str, Callable[..., tuple[list[int], list[np.ndarray], dict[str, Any]]]] = {
    "dicom": _read_dicom_frames,
    "photo": _read_photo_frames,
}


@dataclass(frozen=True)
class SourceReader:
    """How ingestion treats one kind of source (a cohort file's ``sources[].kind``).

    Attributes
    ----------
    reader : str
        The file reader of :data:`FILE_READERS` that decodes its files.
    labels : {"table", "folders"}
        A label table matched to the files, or one folder per class.
    headers : bool
        The files carry patient and eye in their headers (DICOM): a label table that contradicts
        them is an issue, and non-image objects beside the images (SR, DICOMDIR, presentation
        states) are skipped rather than reported as unlabelled.
    """

    reader: str
    labels: str = "table"
    headers: bool = False


#: Source kinds, each declared once; :data:`medxcept.cohort.table.SOURCE_KINDS` names the same kinds.
SOURCE_READERS: dict[str, SourceReader] = {
    "photos": SourceReader("photo"),
    "dicom": SourceReader("dicom", headers=True),
    "folders": SourceReader("photo", labels="folders"),
}
assert set(SOURCE_READERS) == set(SOURCE_KINDS), "every source kind of medxcept.cohort.table needs a reader here"


def read_frames(reader: str, path: str | os.PathLike[str], *, frames: str | int = "all", window_index: int = 0,
                max_pixels: int | None = None,
                min_side: int | None = None) -> tuple[list[int], list[np.ndarray], dict[str, Any]]:
    """Decode ``path`` with the file reader ``reader``: its frame indices, the frames, the metadata.

    ``min_side``: decode a reduced image whose shorter side keeps at least that many pixels, where
    the reader can (a camera JPEG: libjpeg's DCT scaling); ``None``: the stored size.
    """
    return FILE_READERS[reader](Path(path), frames=frames, window_index=window_index, max_pixels=max_pixels,
                                min_side=min_side)


Fov = tuple[float, float, float, bool]


def _read_at_need(task: dict[str, Any], path: Path) -> tuple[list[int], list[np.ndarray], dict[str, Any],
                                                             list[Fov | None]]:
    """Decode a file no larger than preprocessing needs; the frames and their fields of view.

    The decoder is asked for :func:`~medxcept.images.preprocess.decode_min_side` pixels on the shorter side,
    a first guess of the field of view's diameter. When the field of view found turns out narrower
    than that (a small disc in a large frame), the file is decoded again, finer, so the cropped
    field of view still keeps the pixels the output needs. Fields of view are found once here, on
    the decoded frames, for the quality score, the preprocessing and the geometry fingerprint.
    """
    need = decode_min_side(task["preprocess"])
    fundus = task["modality"] == "fundus"

    def read(min_side: int) -> tuple[list[int], list[np.ndarray], dict[str, Any], list[Fov | None]]:
        frames, arrays, meta = read_frames(task["kind"], path, frames=task["frames"],
                                           window_index=task["window_index"], max_pixels=task["max_pixels"],
                                           min_side=min_side)
        return frames, arrays, meta, [find_fov(a) if fundus else None for a in arrays]

    frames, arrays, meta, fovs = read(need)
    reduce = int(meta.get("reduce", 1))
    fov = fovs[0] if len(fovs) == 1 else None
    if reduce > 1 and fov is not None and fov[3] and 2.0 * fov[2] < need:
        stored_min = min(int(meta["stored_width"]), int(meta["stored_height"]))
        frames, arrays, meta, fovs = read(math.ceil(need * stored_min / (2.0 * fov[2] * reduce)))
    return frames, arrays, meta, fovs


def _decode_file(task: dict[str, Any]) -> dict[str, Any]:
    path = Path(task["path"])
    cfg: PreprocessConfig = task["preprocess"]
    cache = PreprocessCache(task["cache_root"])
    sha = file_sha256(path)  # of the file's bytes: the decoded size does not change it
    frames, arrays, meta, fovs = _read_at_need(task, path)
    rows, excluded = [], []
    # headers only: how the image was made (the device keyed, as every id)
    acquisition = acquisition_fingerprint(path, task["kind"], key=task["salt"])
    for frame_index, arr, fov in zip(frames, arrays, fovs, strict=False):
        where = f"{path}#frame{frame_index}" if len(frames) > 1 else str(path)
        height, width = int(meta.get("stored_height", arr.shape[0])), int(meta.get("stored_width", arr.shape[1]))
        try:
            q = quality(arr, modality=task["modality"], fov=fov, reduce=int(meta.get("reduce", 1)))
            flagged = apply_quality_policy(q, cfg, path=where)
        except ReadError as exc:
            excluded.append({"path": where, "stage": exc.stage, "reason": exc.reason})
            continue
        if cache.get(sha, frame_index, cfg) is None:
            cache.put(sha, frame_index, cfg, preprocess(arr, cfg, modality=task["modality"], fov=fov))
        try:  # border and field-of-view geometry: how the image was framed
            geometry = geometry_fingerprint(arr, task["modality"], fov=fov, stored_size=(height, width))
        except Exception:  # noqa: BLE001 - a courtesy fingerprint never excludes an image
            geometry = {}
        rows.append({
            "frame": frame_index, "sha256": sha, "height": height, "width": width,
            "channels": int(arr.shape[2]), "quality": round(float(q["score"]), 4), "quality_flag": bool(flagged),
            "meta": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) or v is None},
            "acquisition": {**acquisition, **geometry},
        })
    return {"path": str(path), "rows": rows, "excluded": excluded}


def _run_tasks(tasks: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """Decode every task, in a process pool when it pays; a crashed worker cannot lose a file.

    The first :data:`POOL_PROBE_FILES` files are decoded here and timed; the others go to a pool of
    ``workers`` processes only when they would take :data:`POOL_MIN_SECONDS` or more here (a worker's
    start-up and imports cost more than a small cohort's whole decoding)."""
    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(tasks), desc="ingesting", unit="file", leave=False, disable=len(tasks) < 20)
    t0 = time.perf_counter()
    for task in tasks[:POOL_PROBE_FILES] if workers > 1 else ():
        results[task["path"]] = _decode_task(task)
        bar.update()
    rest = [t for t in tasks if t["path"] not in results]
    per_file = (time.perf_counter() - t0) / max(len(results), 1)
    if workers > 1 and len(rest) > workers and per_file * len(rest) >= POOL_MIN_SECONDS:
        try:
            # spawn: the parent may already hold a Keras/TensorFlow runtime, which must not be forked
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                for res in pool.map(_decode_task, rest, chunksize=8):
                    results[res["path"]] = res
                    bar.update()
        except BrokenProcessPool:
            log.warning("a decoder crashed its worker process; decoding the remaining files one by one")
    for task in tasks:  # sequential path, and the remainder after a crashed pool
        if task["path"] not in results:
            results[task["path"]] = _decode_task(task)
            bar.update()
    bar.close()
    fatal = [r["fatal"] for r in results.values() if "fatal" in r]
    if fatal:
        raise MissingDecoderError(fatal[0])
    return [results[t["path"]] for t in tasks]


def _label_rows(spec: CohortSpec, source: SourceSpec, root: Path, files: list[Path],
                excluded: list[dict], issues: list[str]) -> pd.DataFrame:
    """Match label information to the files found; returns one row per labelled file."""
    extra = dict(source.columns)
    if source.visit_column:
        extra[source.visit_column] = "visit"
    if SOURCE_READERS[source.kind].labels == "folders":
        labelled = labels_from_folders(root, list(spec.classes))
        table_issues: list = list(labelled.attrs.get("issues", []))
        match_issues: list = []
    else:
        table, table_issues = read_label_table(
            _resolve(spec, source.labels), file_column=source.file_column, label_column=source.label_column,
            classes=list(spec.classes), patient_column=source.patient_column,
            laterality_column=source.laterality_column, extra_columns=extra or None)
        labelled, match_issues = match_files(table, root, files)
    for issue in list(table_issues) + list(match_issues):
        target = getattr(issue, "path", None) or (str(root / issue.file) if issue.file else str(source.labels))
        if getattr(issue, "kind", "") == "duplicate":
            # an identical repeat: the file keeps its (same) label; a warning, never a stopping issue
            log.warning("%s", shareable_reason(issue.message))
            continue
        if SOURCE_READERS[source.kind].headers and getattr(issue, "kind", "") == "unlabelled_file":
            # a DICOMDIR, SR or presentation state beside the images is normal in an export, not a
            # labelling mistake: skip it as "not an image" (and do not stop an on_label_issue=error run)
            skip = _not_an_image(Path(target))
            if skip:
                excluded.append({"path": str(target), "stage": "ingest", "reason": skip, "label": ""})
                continue
        issues.append(issue.message)
        excluded.append({"path": str(target), "stage": "label", "reason": issue.message,
                         "label": getattr(issue, "label", "")})
    return labelled


def _not_an_image(path: Path) -> str | None:
    """The DICOM reader's "not an image: ..." reason for ``path``, or None (an image, or unreadable)."""
    try:
        with file_label("an unlabelled file"):  # a log line must not name it
            read_dicom_header(path)
    except ReadError as exc:
        return exc.reason if exc.reason.startswith("not an image") else None
    except OSError:  # unreadable: stays an ordinary unlabelled file
        return None
    return None


def _resolve(spec: CohortSpec, rel: str | None) -> Path:
    base = data_root(spec)
    return (base / rel) if rel is not None else base


def ingest(spec: CohortSpec, *, preprocess_cfg: PreprocessConfig, cache: PreprocessCache,
           workers: int | None = None) -> IngestResult:
    """Turn a cohort definition into a validated cohort table and an exclusion log.

    Parameters
    ----------
    spec : CohortSpec
        From :func:`medxcept.cohort.table.load_cohort_spec` (a generated cohort materialized first:
        :func:`medxcept.workflows.steps.materialize`).
    preprocess_cfg : PreprocessConfig
        Preprocessing applied (once) to every decoded image.
    cache : PreprocessCache
        Where preprocessed images are stored for training and evaluation.
    workers : int, optional
        Decoder processes (default: the CPUs this process may use, :func:`medxcept.threads.available_cpus`;
        a pool only when the files are many enough: :data:`POOL_MIN_SECONDS`).

    Raises
    ------
    CohortError
        No usable image, a declared class without images, or label issues under
        ``on_label_issue: error`` (all of them listed in one message).
    MissingDecoderError
        A decoder plugin is not installed (an install problem).
    """
    workers = workers or available_cpus()
    salt = pseudonym_salt(spec)
    excluded: list[dict] = []
    label_issues: list[str] = []
    candidates: list[dict[str, Any]] = []
    files_found: set[str] = set()
    roots: dict[str, Path] = {}
    for source in spec.sources:
        root = _resolve(spec, source.root)
        if not root.is_dir():
            raise CohortError(f"cohort '{spec.name}': source '{source.name}' folder not found: {root}")
        roots[source.name] = root
        label_file = _resolve(spec, source.labels).resolve() if source.labels else None
        refused: list[Path] = []
        files = _list_files(root, {label_file} if label_file else set(), refused)
        files_found.update(str(f) for f in files)
        first = len(excluded)
        for p in refused:  # found, and excluded: never read through a link out of the source folder
            files_found.add(str(p))
            what = "folder" if p.is_dir() else "file"
            excluded.append({"path": str(p), "stage": "ingest", "reason": f"{OUTSIDE_LINK} ({what})"})
        labelled = _label_rows(spec, source, root, files, excluded, label_issues)
        if source.filename_pattern:
            _check_pattern_fits(spec, source, [Path(p) for p in labelled["path"]] if len(labelled) else [])
        outside = {str(p) for p in refused}
        for rec in labelled.to_dict("records"):
            if str(rec["path"]) in outside or not _inside_root(Path(rec["path"]), root):
                continue  # excluded above (a folder-per-class source lists files itself)
            rec["_source"] = source
            candidates.append(rec)
        for e in excluded[first:]:
            e.setdefault("source", source.name)
    if label_issues and spec.on_label_issue == "error":
        def message(issues: list[str]) -> str:
            shown = "\n  ".join(issues[:20])
            more = f"\n  ... and {len(issues) - 20} more" if len(issues) > 20 else ""
            return (f"cohort '{spec.name}': {len(issues)} label problem(s) (on_label_issue: error):\n  {shown}{more}"
                    "\nFix the label table or set on_label_issue: exclude to leave these files out.")

        # the console (a cluster .out file) gets the problems without file names; the full text goes
        # to private/ingest_error.txt (medxcept.workflows.steps.ingest_into_run) or exc.private_detail
        exc = CohortError(message([shareable_reason(m) for m in label_issues]))
        exc.private_detail = message(label_issues)
        raise exc

    tasks = [{"path": str(c["path"]), "kind": SOURCE_READERS[c["_source"].kind].reader,
              "preprocess": preprocess_cfg, "cache_root": str(cache.root), "modality": spec.modality,
              "frames": spec.frames, "window_index": spec.window_index, "max_pixels": spec.max_pixels,
              "salt": salt,  # keys the device fingerprint (acquisition.acquisition_fingerprint)
              "file_id": _file_id(Path(c["path"]), c["_source"].name, roots[c["_source"].name], salt)}
             for c in candidates]
    results = _run_tasks(tasks, workers)

    rows = []
    header_issues: list[str] = []
    for cand, res in zip(candidates, results, strict=False):
        label = str(cand.get("label", "") or "")
        source: SourceSpec = cand["_source"]
        for e in res.get("excluded", []):
            excluded.append({**e, "source": source.name, "label": label})
        multi = len(res.get("rows", [])) + len(res.get("excluded", [])) > 1
        for r in res.get("rows", []):
            row = _cohort_row(spec, source, cand, r, salt, roots[source.name])
            if isinstance(row, dict):
                rows.append(row)
            else:
                stage, reason = row
                where = f"{cand['path']}#frame{r['frame']}" if multi else str(cand["path"])
                excluded.append({"path": where, "stage": stage, "reason": reason,
                                 "source": source.name, "label": label})
                if stage == "label" and reason not in header_issues:
                    header_issues.append(reason)
    if header_issues and spec.on_label_issue == "error":
        shown = "\n  ".join(header_issues[:20])
        raise CohortError(f"cohort '{spec.name}': {len(header_issues)} label-table row(s) disagree with the DICOM "
                          f"header (on_label_issue: error):\n  {shown}\nFix the table or the files, or set "
                          f"on_label_issue: exclude to leave these files out.")
    table = pd.DataFrame(rows)
    exclusions = _exclusion_frame(excluded, roots, files_found, salt)
    used_files = set(table["path"]) if len(table) else set()
    excluded_files = {p.split("#frame")[0] for p in exclusions["path"]} & files_found
    lost = files_found - used_files - excluded_files
    if lost:  # a bug, not a data problem: say so loudly rather than lose images (named by keyed id)
        first = Path(sorted(lost)[0])
        src = next((n for n, r in roots.items() if _inside_root(first, r)), "?")
        raise CohortError(f"internal error: {len(lost)} file(s) neither used nor excluded, e.g. file "
                          f"{_file_id(first, src, roots.get(src, first.parent), salt)}: a bug in medxcept, "
                          "please report it")
    if table.empty:
        reasons = public_exclusions(exclusions)["reason"].value_counts().head(5).to_dict()
        raise CohortError(f"cohort '{spec.name}': no usable image among {len(files_found)} file(s) found; "
                          f"most common exclusion reasons: {reasons}")
    missing = [c for c in spec.classes if c not in set(table["label"])]
    if missing:
        raise CohortError(f"cohort '{spec.name}': no usable image of class(es) {missing}; "
                          f"images per class: {table['label'].value_counts().to_dict()}")
    table = table.sort_values(["patient_key", "study_id", "laterality", "image_id"], kind="stable")
    table = table.reset_index(drop=True)
    patient_map = table[["patient_id", "patient_key"]].drop_duplicates().reset_index(drop=True)
    log.info("ingested %d image(s) of %d patient(s); %d exclusion(s)", len(table),
             table["patient_key"].nunique(), len(exclusions))
    return IngestResult(table=validate_cohort(table, where=f"cohort '{spec.name}'"), exclusions=exclusions,
                        files_found=len(files_found), files_used=len(used_files),
                        files_excluded=len(excluded_files - used_files), patient_map=patient_map)


def _inside_root(path: Path, root: Path) -> bool:
    """``path`` (as listed, links not resolved) lies under ``root``."""
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
        return True
    except ValueError:
        return False


def _position(path: Path, source_name: str, root: Path) -> str:
    """Where a file sits in the cohort: ``<source>/<path relative to its root>`` (stable if the
    cohort folder moves); a path outside the root (a label table elsewhere) is used as it is."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        rel = str(path)
    return f"{source_name}/{rel}"


def _file_id(path: Path, source_name: str, root: Path, salt: str) -> str:
    """The keyed id of a file (``F-`` + 10 hex): names files in shared logs and exclusion lists."""
    return keyed_id("F-", "file", _position(path, source_name, root), salt)


def _exclusion_frame(excluded: list[dict], roots: dict[str, Path], files_found: set[str],
                     salt: str) -> pd.DataFrame:
    """The exclusion log with its bookkeeping columns (:data:`PRIVATE_EXCLUSION_COLUMNS`)."""
    rows = []
    for e in excluded:
        base, _, frame = str(e["path"]).partition("#frame")
        src = e.get("source") or next((n for n, r in roots.items() if _inside_root(Path(base), r)), "")
        root = roots.get(src, Path(base).parent)
        rows.append({"path": str(e["path"]), "stage": e["stage"], "reason": e["reason"],
                     "file_id": _file_id(Path(base), src, root, salt),
                     "frame": int(frame) if frame.isdigit() else -1, "source": src,
                     "label": str(e.get("label") or ""), "found": base in files_found})
    return pd.DataFrame(rows, columns=PRIVATE_EXCLUSION_COLUMNS)


#: Eye values that say "no single eye" (both, unknown): laterality NA, not a wrong pattern.
_UNSIDED = frozenset({"ou", "both", "b", "u", "unknown", "na", "n/a", "x"})


def _eye_problem(parsed: dict[str, str], pattern: str) -> str | None:
    """The reason a file name's eye field is not a laterality, or None (no such field, or a laterality)."""
    value = _first(parsed.get("eye"), parsed.get("laterality"))
    if value is None or normalize_laterality(value) != "NA" or str(value).strip().casefold() in _UNSIDED:
        return None
    shown = f"'{value}'" if len(str(value)) <= 6 else f"of {len(str(value))} characters"  # never a long identifier
    return (f"eye {shown} is not a laterality (pattern {pattern}); expected L/R, left/right or OD/OS: "
            "correct the file name or the cohort's filename_pattern")


def _check_pattern_fits(spec: CohortSpec, source: SourceSpec, paths: list[Path]) -> None:
    """Stop the run when the file-name pattern does not describe most names of a source.

    One odd name is a per-file exclusion (:func:`_cohort_row`); when most names give no laterality
    in the eye field (``{patient}_{eye}.*`` on ``Glaucoma_005.png``: patient ``Glaucoma``, eye
    ``005``), the pattern itself is wrong and every patient it builds would be wrong too.
    """
    pattern = str(source.filename_pattern)
    parsed = [(p, parse_filename(pattern, p.name)) for p in paths]
    fitting = [(p, d) for p, d in parsed if d is not None]
    bad = [(p, d) for p, d in fitting if _eye_problem(d, pattern)]
    if len(bad) < 5 or len(bad) * 2 <= len(fitting):
        return
    example, fields = bad[0]
    eye_field = "eye" if "eye" in fields else "laterality"
    hints = []
    if "patient" in fields:
        eye = "{" + eye_field + "}"
        swapped = eye.join(part.replace(eye, "{patient}") for part in pattern.split("{patient}"))
        ok = [d for d in (parse_filename(swapped, p.name) for p, _ in fitting)
              if d is not None and not _eye_problem(d, swapped)]
        if len(ok) * 2 > len(fitting):
            hints.append(f"filename_pattern: '{swapped}' (fields swapped) fits {len(ok)} of them")
        patients = {d["patient"] for _, d in fitting}
        if {str(v).casefold() for v in patients} & {c.casefold() for c in spec.classes} or len(patients) * 5 < len(fitting):
            hints.append(f"the patient field gives only {len(patients)} distinct value(s) for {len(fitting)} files "
                         "(a class name or a prefix, not a patient): if the names hold no patient identifier, "
                         "give patients in a label table (patient_column) or set one_patient_per_file: true")
    hints.append(f"without an eye in the names, drop the field: e.g. '{pattern.split('_')[0]}.*'"
                 if "_" in pattern else "drop the eye field from the pattern")
    raise CohortError(
        f"cohort '{spec.name}': source '{source.name}': {len(bad)} of {len(fitting)} file names give an eye that is "
        f"not a laterality with filename_pattern '{pattern}' (e.g. '{example.name}' -> "
        f"{eye_field} '{fields[eye_field]}'); the pattern does not describe these names. "
        + "; ".join(hints))


def _cohort_row(spec: CohortSpec, source: SourceSpec, cand: dict, r: dict, salt: str,
                root: Path) -> dict | tuple[str, str]:
    """One cohort-table row, or ``(stage, reason)`` when the image cannot be used."""
    meta = r["meta"]
    path = Path(cand["path"])
    parsed = parse_filename(source.filename_pattern, path.name) if source.filename_pattern else None
    if source.filename_pattern and parsed is None:
        return "pattern", f"file name does not match filename_pattern '{source.filename_pattern}'"
    parsed = parsed or {}
    eye_problem = _eye_problem(parsed, str(source.filename_pattern)) if parsed else None
    if eye_problem:
        return "pattern", eye_problem
    disagreement = _header_disagreement(source, cand, meta)
    if disagreement:
        return "label", disagreement
    patient = _first(cand.get("patient"), parsed.get("patient"), meta.get("patient_id"))
    if not patient:
        if source.one_patient_per_file:
            patient = f"file:{source.name}/{path.name}"
        else:
            return "ingest", "no patient identifier (label-table column, file-name pattern or DICOM PatientID)"
    table_lat = cand.get("laterality") if cand.get("laterality") != "NA" else None  # "NA": the cell was empty
    laterality = normalize_laterality(_first(table_lat, parsed.get("eye"), parsed.get("laterality"),
                                             meta.get("laterality")) or "")
    visit = _first(cand.get("visit"), parsed.get("visit"))
    study = str(_first(meta.get("study_id"), f"visit-{visit}" if visit else "") or "")
    label = str(cand["label"])
    # keyed: a plain hash of a file name carrying a record number could be recomputed by guessing
    image_id = keyed_id("I-", "image", f"{_position(path, source.name, root)}#{r['frame']}", salt)
    if r["frame"]:
        image_id += f"-f{r['frame']}"
    src = _first(cand.get("source"), source.source, meta.get("source"), source.name)
    return {
        "image_id": image_id, "path": str(path), "frame": int(r["frame"]), "patient_id": str(patient),
        "patient_key": pseudonymize(str(patient), salt),
        "study_id": keyed_id("S-", "study", f"{patient}|{study}", salt) if study else "", "study_uid": study,
        "series_uid": str(meta.get("series_uid") or ""), "sop_uid": str(meta.get("sop_uid") or ""),
        "laterality": laterality, "label": label, "y": spec.classes.index(label), "source": str(src),
        "modality": spec.modality, "width": r["width"], "height": r["height"], "channels": r["channels"],
        "sha256": r["sha256"], "quality": r["quality"], "quality_flag": r["quality_flag"],
        "sex": str(_first(cand.get("sex"), meta.get("sex")) or ""),
        "age": _age(_first(cand.get("age"), meta.get("age"))),
        "acquisition_date": str(meta.get("acquisition_date") or ""),
        "visit": str(visit or ""), "source_name": source.name,
        "reader": SOURCE_READERS[source.kind].reader,
        **r.get("acquisition", {}),  # acq_* columns (medxcept.integrity.acquisition)
    }


def _header_disagreement(source: SourceSpec, cand: dict, meta: dict) -> str | None:
    """A label-table row that contradicts the DICOM header (patient or laterality), or None.

    Names the row and the columns; patient identifiers are never written (shared logs), laterality
    values (L/R) are.
    """
    if not SOURCE_READERS[source.kind].headers:
        return None
    row = cand.get("row")
    where = f"row {int(row)}" if row is not None and not (isinstance(row, float) and np.isnan(row)) else "label row"
    table_patient, header_patient = _first(cand.get("patient")), _first(meta.get("patient_id"))
    if table_patient is not None and header_patient is not None and str(table_patient).strip() != str(
            header_patient).strip():
        return (f"{where}: PatientID differs from the header (label-table column '{source.patient_column}' vs "
                "DICOM PatientID (0010,0020)); one of them names the wrong patient: correct the table or the file")
    table_lat = normalize_laterality(cand.get("laterality")) if cand.get("laterality") is not None else "NA"
    header_lat = normalize_laterality(meta.get("laterality") or "")
    if table_lat != "NA" and header_lat != "NA" and table_lat != header_lat:
        return (f"{where}: laterality differs from the header (label-table column '{source.laterality_column}' "
                f"says {table_lat}, DICOM (Image) Laterality says {header_lat}); correct the table or the file")
    return None


def _first(*values: Any) -> Any:
    for v in values:
        if v is None:
            continue
        if isinstance(v, float) and np.isnan(v):
            continue
        if str(v).strip() == "":
            continue
        return v
    return None


def _age(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
