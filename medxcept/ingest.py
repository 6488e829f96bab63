"""Ingestion: a cohort file in, one cohort table and one exclusion log out.

For every source of the cohort this module

1. lists every file under the source folder (the label table itself aside): these are the
   **files found**;
2. reads the label table and matches its rows to the files (label rows without a file, files
   without a label, unknown labels and conflicting duplicates become exclusions, or stop the run
   when the cohort says ``on_label_issue: error``);
3. decodes each labelled file in a process pool (DICOM with :mod:`medxcept.io.dicom`, photographs
   with :mod:`medxcept.io.images`), measures its quality, preprocesses it and stores the result in
   the :class:`~medxcept.preprocess.PreprocessCache` — one decode per file per configuration;
4. returns the cohort table (schema in :mod:`medxcept.cohort`) and the exclusion log.

Nothing is dropped silently: ``files found = files used + files excluded`` is checked at the end
and any difference is an error. A file that fails for any reason becomes an exclusion row with its
stage and reason, and the run goes on; a missing decoder plugin is an install problem and stops
the run once, with the pip command to fix it.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
import secrets
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medxcept.cohort import CohortSpec, SourceSpec, pseudonymize, validate_cohort
from medxcept.errors import CohortError, MissingDecoderError, ReadError
from medxcept.io.labels import match_files, normalize_laterality, parse_filename, read_label_table
from medxcept.preprocess import PreprocessCache, PreprocessConfig, apply_quality_policy, preprocess, quality

__all__ = ["IngestResult", "ingest", "data_root", "EXCLUSION_COLUMNS", "pseudonym_salt", "file_sha256"]

log = logging.getLogger(__name__)

EXCLUSION_COLUMNS = ["path", "stage", "reason"]
SKIP_NAMES = {"COMPLETE", ".DS_Store", "Thumbs.db"}
POOL_MIN_FILES = 48  # below this, worker start-up costs more than it saves


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
    """The folder the sources' relative paths start from (generating the demo data if needed)."""
    if spec.generator == "demo":
        from medxcept.demo import DemoSpec, demo_root

        return demo_root(DemoSpec(**spec.generator_options))
    return Path(spec.base_dir)


def pseudonym_salt(spec: CohortSpec) -> str:
    """The cohort's salt, or this machine's random key (created once, kept private)."""
    if spec.pseudonym_salt:
        return spec.pseudonym_salt
    from medxcept.demo import cache_dir

    key = cache_dir() / "pseudonym.key"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return key.read_text().strip()


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _list_files(root: Path, exclude: set[Path]) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or name in SKIP_NAMES or p.resolve() in exclude:
                continue
            out.append(p)
    return out


def _decode_task(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: decode, check quality, preprocess and cache one file. Never raises for a bad file."""
    path = Path(task["path"])
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


def _decode_file(task: dict[str, Any]) -> dict[str, Any]:
    from medxcept.acquisition import acquisition_fingerprint
    from medxcept.io.dicom import read_dicom
    from medxcept.io.images import read_image

    path = Path(task["path"])
    cfg: PreprocessConfig = task["preprocess"]
    cache = PreprocessCache(task["cache_root"])
    sha = file_sha256(path)
    if task["kind"] == "dicom":
        frame = None if task["frames"] == "all" else int(task["frames"])
        pixels, meta = read_dicom(path, frame=frame, window_index=task["window_index"],
                                  max_pixels=task["max_pixels"])
        frames = list(range(pixels.shape[0])) if frame is None else [frame]
        arrays = list(pixels)
    else:
        arr, meta = read_image(path, max_pixels=task["max_pixels"])
        frames, arrays = [0], [arr]
    rows, excluded = [], []
    acquisition = acquisition_fingerprint(path, task["kind"])  # headers only: how the image was made
    for frame_index, arr in zip(frames, arrays, strict=False):
        where = f"{path}#frame{frame_index}" if len(frames) > 1 else str(path)
        try:
            q = quality(arr, modality=task["modality"])
            flagged = apply_quality_policy(q, cfg, path=where)
        except ReadError as exc:
            excluded.append({"path": where, "stage": exc.stage, "reason": exc.reason})
            continue
        if cache.get(sha, frame_index, cfg) is None:
            cache.put(sha, frame_index, cfg, preprocess(arr, cfg, modality=task["modality"]))
        rows.append({
            "frame": frame_index, "sha256": sha, "height": int(arr.shape[0]), "width": int(arr.shape[1]),
            "channels": int(arr.shape[2]), "quality": round(float(q["score"]), 4), "quality_flag": bool(flagged),
            "meta": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) or v is None},
            "acquisition": acquisition,
        })
    return {"path": str(path), "rows": rows, "excluded": excluded}


def _run_tasks(tasks: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """Decode every task, in a process pool when it pays; a crashed worker cannot lose a file."""
    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(tasks), desc="ingesting", unit="file", leave=False, disable=len(tasks) < 20)
    if workers > 1 and len(tasks) >= POOL_MIN_FILES:
        try:
            # spawn: the parent may already hold a Keras/TensorFlow runtime, which must not be forked
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                for res in pool.map(_decode_task, tasks, chunksize=8):
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
    if source.kind == "folders":
        from medxcept.io.labels import labels_from_folders

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
        if source.kind == "dicom" and getattr(issue, "kind", "") == "unlabelled_file":
            # a DICOMDIR, SR or presentation state beside the images is normal in an export, not a
            # labelling mistake: skip it as "not an image" (and do not stop an on_label_issue=error run)
            skip = _not_an_image(Path(target))
            if skip:
                excluded.append({"path": str(target), "stage": "ingest", "reason": skip})
                continue
        issues.append(issue.message)
        excluded.append({"path": str(target), "stage": "label", "reason": issue.message})
    return labelled


def _not_an_image(path: Path) -> str | None:
    """The DICOM reader's "not an image: ..." reason for ``path``, or None (an image, or unreadable)."""
    from medxcept.io.dicom import read_dicom_header

    try:
        read_dicom_header(path)
    except ReadError as exc:
        return exc.reason if exc.reason.startswith("not an image") else None
    except OSError:  # unreadable: stays an ordinary unlabelled file
        return None
    return None


def _resolve(spec: CohortSpec, rel: str | None) -> Path:
    base = data_root(spec) if spec.generator else Path(spec.base_dir)
    return (base / rel) if rel is not None else base


def ingest(spec: CohortSpec, *, preprocess_cfg: PreprocessConfig, cache: PreprocessCache,
           workers: int | None = None) -> IngestResult:
    """Turn a cohort definition into a validated cohort table and an exclusion log.

    Args:
        spec: from :func:`medxcept.cohort.load_cohort_spec`.
        preprocess_cfg: preprocessing applied (once) to every decoded image.
        cache: where preprocessed images are stored for training and evaluation.
        workers: decoder processes (default: the number of CPU cores).

    Raises:
        CohortError: no usable image, a declared class without images, or label issues under
            ``on_label_issue: error`` (all of them listed in one message).
        MissingDecoderError: a decoder plugin is not installed (an install problem).
    """
    workers = workers or os.cpu_count() or 1
    salt = pseudonym_salt(spec)
    excluded: list[dict] = []
    label_issues: list[str] = []
    candidates: list[dict[str, Any]] = []
    files_found: set[str] = set()
    for source in spec.sources:
        root = _resolve(spec, source.root)
        if not root.is_dir():
            raise CohortError(f"cohort '{spec.name}': source '{source.name}' folder not found: {root}")
        label_file = _resolve(spec, source.labels).resolve() if source.labels else None
        files = _list_files(root, {label_file} if label_file else set())
        files_found.update(str(f) for f in files)
        labelled = _label_rows(spec, source, root, files, excluded, label_issues)
        for rec in labelled.to_dict("records"):
            rec["_source"] = source
            candidates.append(rec)
    if label_issues and spec.on_label_issue == "error":
        shown = "\n  ".join(label_issues[:20])
        more = f"\n  ... and {len(label_issues) - 20} more" if len(label_issues) > 20 else ""
        raise CohortError(f"cohort '{spec.name}': {len(label_issues)} label problem(s) "
                          f"(on_label_issue: error):\n  {shown}{more}\nFix the label table or set "
                          f"on_label_issue: exclude to leave these files out.")

    tasks = [{"path": str(c["path"]), "kind": "dicom" if c["_source"].kind == "dicom" else "photo",
              "preprocess": preprocess_cfg, "cache_root": str(cache.root), "modality": spec.modality,
              "frames": spec.frames, "window_index": spec.window_index, "max_pixels": spec.max_pixels}
             for c in candidates]
    results = _run_tasks(tasks, workers)

    rows = []
    for cand, res in zip(candidates, results, strict=False):
        excluded.extend(res.get("excluded", []))
        source: SourceSpec = cand["_source"]
        for r in res.get("rows", []):
            row = _cohort_row(spec, source, cand, r, salt)
            if isinstance(row, dict):
                rows.append(row)
            else:
                excluded.append({"path": str(cand["path"]), "stage": "ingest", "reason": row})
    table = pd.DataFrame(rows)
    exclusions = pd.DataFrame(excluded, columns=EXCLUSION_COLUMNS)
    used_files = set(table["path"]) if len(table) else set()
    excluded_files = {p.split("#frame")[0] for p in exclusions["path"]} & files_found
    lost = files_found - used_files - excluded_files
    if lost:  # a bug, not a data problem: say so loudly rather than lose images
        raise CohortError(f"internal error: {len(lost)} file(s) neither used nor excluded, e.g. {sorted(lost)[0]}")
    if table.empty:
        reasons = exclusions["reason"].value_counts().head(5).to_dict()
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


def _cohort_row(spec: CohortSpec, source: SourceSpec, cand: dict, r: dict, salt: str) -> dict | str:
    """One cohort-table row, or the reason the image cannot be used."""
    meta = r["meta"]
    path = Path(cand["path"])
    parsed = parse_filename(source.filename_pattern, path.name) if source.filename_pattern else None
    if source.filename_pattern and parsed is None:
        return f"file name does not match filename_pattern '{source.filename_pattern}'"
    parsed = parsed or {}
    patient = _first(cand.get("patient"), parsed.get("patient"), meta.get("patient_id"))
    if not patient:
        if source.one_patient_per_file:
            patient = f"file:{source.name}/{path.name}"
        else:
            return "no patient identifier (label-table column, file-name pattern or DICOM PatientID)"
    laterality = normalize_laterality(_first(cand.get("laterality"), parsed.get("eye"), parsed.get("laterality"),
                                             meta.get("laterality")) or "")
    visit = _first(cand.get("visit"), parsed.get("visit"))
    study = _first(meta.get("study_id"), f"visit-{visit}" if visit else "")
    label = str(cand["label"])
    rel = f"{source.name}/{path.name}#{r['frame']}"
    image_id = "I-" + hashlib.sha1(f"{rel}|{path}".encode()).hexdigest()[:10]
    if r["frame"]:
        image_id += f"-f{r['frame']}"
    src = _first(cand.get("source"), source.source, meta.get("source"), source.name)
    return {
        "image_id": image_id, "path": str(path), "frame": int(r["frame"]), "patient_id": str(patient),
        "patient_key": pseudonymize(str(patient), salt), "study_id": str(study or ""),
        "laterality": laterality, "label": label, "y": spec.classes.index(label), "source": str(src),
        "modality": spec.modality, "width": r["width"], "height": r["height"], "channels": r["channels"],
        "sha256": r["sha256"], "quality": r["quality"], "quality_flag": r["quality_flag"],
        "sex": str(_first(cand.get("sex"), meta.get("sex")) or ""),
        "age": _age(_first(cand.get("age"), meta.get("age"))),
        "acquisition_date": str(meta.get("acquisition_date") or ""),
        "visit": str(visit or ""), "source_name": source.name,
        "reader": "dicom" if source.kind == "dicom" else "photo",
        **r.get("acquisition", {}),  # acq_* columns (medxcept.acquisition)
    }


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
