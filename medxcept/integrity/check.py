"""The ``check`` page: what ingestion, the split and the audit found, before any training.

The workflow that produces it is :func:`medxcept.workflows.check.check_cohort`; this module
groups the exclusions, counts files, sources and classes and picks the duplicate pairs shown; the
page is rendered by :func:`medxcept.report.check.render_check_page`.

Before anyone spends hours training, a researcher wants three answers about a new export:
*did every file decode, and if not, which ones and why?*, *how many patients of each class
are there, from which sources?* and *would the split leak?* :func:`~medxcept.workflows.check.check_cohort` runs exactly
the stages that answer them — ingestion (:func:`medxcept.workflows.steps.prepare_cohort`), the
patient-level split (:func:`medxcept.integrity.splits.assign_splits`; under ``audit.on_leak: fix``
duplicates are merged first, as in a training run) and the pre-training audit
(:func:`medxcept.integrity.audit.audit_cohort`) — and writes a run directory:

==================  =====================================================================
``check.html``      self-contained page: files found / used / excluded / skipped, the
                    exclusions grouped by reason (files by keyed id), counts per source,
                    modality and class, the split, and every audit finding
``cohort.csv``      the cohort table, public view (no raw patient ID, no path)
``exclusions.csv``  every file not used: keyed file id, stage, reason (no file names)
``split.csv``       ``image_id, patient_key, split, fold`` (absent when no split is possible)
``audit.json``      the audit findings and tables
``config.yaml``     the resolved configuration (``step: check``)
``versions.json``   packages, code version, data / split / config hashes
``private/``        the patient map, image paths, the full exclusion log and
                    ``check.html`` with the file *names* (identifiers: never share)
==================  =====================================================================

It never trains and never imports Keras. Audit errors are *shown*, not raised: the page is
where they are read (a training run would stop on them). A split that cannot be made is
shown on the page and then raised as :class:`~medxcept.errors.SplitError`.

The researcher needs file names to fix or remove files, but file names can carry patient
identifiers: the page is written twice, ``private/check.html`` with the names (for the data
owner) and the shareable ``check.html`` naming files by their keyed id only.

Each flagged duplicate pair is listed with the transform and keypoint inliers that confirmed it
(a sample of :data:`MAX_DUP_PAIRS`); the private copy shows the two images as thumbnails side
by side, so a person can see whether it is a copy (thumbnails are patient images: never in the
shared page).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medxcept.cohort.class_exclusions import reason_category as _reason_category
from medxcept.cohort.ingest import public_exclusions
from medxcept.cohort.table import CohortSpec

__all__ = ["reason_groups", "is_skip_reason", "duplicate_pairs_shown", "file_counts", "count_table", "source_rows",
           "cohort_summary"]

log = logging.getLogger(__name__)

SKIP_PREFIX = "not an image"
SPLITS = ("train", "val", "test")


def is_skip_reason(reason: str) -> bool:
    """True for the reasons of files that are not images at all (SR, DICOMDIR, presentation state)."""
    return str(reason).startswith(SKIP_PREFIX)


def _file_name(path: str) -> str:
    """The file's name (with ``#frameN`` for one frame), never its folder."""
    base, _, frame = str(path).partition("#frame")
    name = Path(base).name or base
    return f"{name}#frame{frame}" if frame else name


def reason_groups(exclusions: pd.DataFrame, *, hide: str | None = None,
                  names: bool = True) -> list[dict[str, Any]]:
    """Group the exclusion log by stage and kind of reason, largest group first.

    Parameters
    ----------
    exclusions : pandas.DataFrame
        ``path``, ``stage``, ``reason`` (:data:`medxcept.cohort.ingest.EXCLUSION_COLUMNS`).
    hide : str, optional
        A folder whose path is replaced by ``…`` inside reasons (a label issue names the
        image folder; the page shows names, not paths).
    names : bool, default True
        False: files are shown by their keyed ``file_id`` and reasons without file names
        (:func:`medxcept.cohort.ingest.shareable_reason`), for the shareable page.

    Returns
    -------
    list of dict
        ``stage``, ``reason`` (the category), ``count`` (rows), ``skipped`` (True for "not an
        image"), ``files``: a list of ``{"name", "reason"}`` with the file *name* only.

    Examples
    --------
    >>> ex = pd.DataFrame({"path": ["/d/a.dcm", "/d/b.dcm"], "stage": ["ingest"] * 2,
    ...                    "reason": ["empty file (0 bytes)", "empty file (0 bytes)"]})
    >>> g = reason_groups(ex)
    >>> g[0]["reason"], g[0]["count"], [f["name"] for f in g[0]["files"]]
    ('empty file (N bytes)', 2, ['a.dcm', 'b.dcm'])
    """
    if exclusions.empty:
        return []
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    shared = None if names else public_exclusions(exclusions)
    for i, (path, stage, reason) in enumerate(zip(exclusions["path"], exclusions["stage"], exclusions["reason"],
                                                  strict=True)):
        reason = str(reason)
        shown = reason.replace(hide, "…") if hide else reason
        name = _file_name(str(path))
        if shared is not None:
            shown = str(shared.at[i, "reason"])
            frame = int(shared.at[i, "frame"])
            name = str(shared.at[i, "file_id"]) + (f"#frame{frame}" if frame >= 0 else "")
        key = (str(stage), _reason_category(reason))
        g = groups.setdefault(key, {"stage": key[0], "reason": key[1], "count": 0,
                                    "skipped": is_skip_reason(reason), "files": []})
        g["count"] += 1
        g["files"].append({"name": name, "reason": shown})
    return sorted(groups.values(), key=lambda g: (-g["count"], g["stage"], g["reason"]))


def file_counts(table: pd.DataFrame, exclusions: pd.DataFrame, files_found: int,
                 files_used: int) -> dict[str, int]:
    """Files found = used + excluded + skipped, plus label rows that name no file on disk."""
    used = set(table["path"].astype(str))
    by_file: dict[str, list[str]] = {}
    for p, r in zip(exclusions["path"], exclusions["reason"], strict=True):
        by_file.setdefault(str(p).split("#frame")[0], []).append(str(r))
    if "found" in exclusions:  # ingestion says which rows are files found (a link to a folder is one)
        found = {str(p).split("#frame")[0] for p, f in zip(exclusions["path"], exclusions["found"], strict=True) if f}
    else:
        found = {p for p in by_file if Path(p).exists()}
    found_excluded = {p: rs for p, rs in by_file.items() if p not in used and p in found}
    skipped = sum(all(is_skip_reason(r) for r in rs) for rs in found_excluded.values())
    excluded = len(found_excluded) - skipped
    return {"found": files_found, "used": files_used, "excluded": excluded, "skipped": skipped,
            "rows_without_file": sum(1 for p in by_file if p not in used and p not in found),
            "frames_excluded": int(exclusions["path"].astype(str).str.contains("#frame").sum())}


def count_table(table: pd.DataFrame, by: list[str], classes: list[str]) -> list[dict[str, Any]]:
    """Images and patients per value of ``by``, with images per class."""
    rows = []
    for key, g in table.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        per_class = g["label"].value_counts()
        rows.append({"key": [str(k) for k in key], "images": len(g), "patients": int(g["patient_key"].nunique()),
                     "per_class": [int(per_class.get(c, 0)) for c in classes]})
    return rows


def source_rows(spec: CohortSpec, table: pd.DataFrame, exclusions: pd.DataFrame,
                 base: Path) -> list[dict[str, Any]]:
    """Per cohort source: its reader, images and patients used, exclusion rows."""
    rows = []
    for s in spec.sources:
        root = str((base / s.root).resolve())
        mine = table[table["source_name"] == s.name] if "source_name" in table else table.iloc[:0]
        if "source" in exclusions:
            n_ex = int((exclusions["source"] == s.name).sum())
        else:
            n_ex = int(sum(str(p).startswith(root + "/") or str(p) == root for p in exclusions["path"]))
        rows.append({"name": s.name, "kind": s.kind, "images": len(mine),
                     "patients": int(mine["patient_key"].nunique()) if len(mine) else 0,
                     "source_values": ", ".join(sorted(set(mine["source"].astype(str)))) if len(mine) else "",
                     "exclusions": n_ex})
    return rows


def cohort_summary(table: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """The cohort table in numbers: images, patients, classes, laterality, sizes, splits."""
    out: dict[str, Any] = {
        "images": len(table), "patients": int(table["patient_key"].nunique()),
        "studies": int(table["study_id"].replace("", np.nan).nunique()),
        "per_class": count_table(table, ["label"], classes),
        "laterality": table["laterality"].value_counts().sort_index().to_dict(),
        "height": (int(table["height"].min()), int(table["height"].max())),
        "width": (int(table["width"].min()), int(table["width"].max())),
        "quality_flagged": int(table["quality_flag"].sum()) if "quality_flag" in table else 0,
        "sex": table["sex"].replace("", "unknown").value_counts().sort_index().to_dict() if "sex" in table else {},
        "per_split": [],
    }
    if "split" in table:
        for s in SPLITS:
            g = table[table["split"] == s]
            if len(g):
                out["per_split"].append({"split": s, "images": len(g), "patients": int(g["patient_key"].nunique()),
                                         "per_class": [int((g["label"] == c).sum()) for c in classes],
                                         "patients_per_class": [int(g.loc[g["label"] == c, "patient_key"].nunique())
                                                                for c in classes]})
    return out


_DUP_KINDS = ("duplicate_across_splits", "duplicate_across_patients", "duplicate_within_split")
MAX_DUP_PAIRS = 24
"""Duplicate pairs shown as thumbnails on the page (a sample, cross-split pairs first)."""


def duplicate_pairs_shown(audit: dict[str, Any], table: pd.DataFrame,
                          max_pairs: int = MAX_DUP_PAIRS) -> tuple[list[dict[str, Any]], int]:
    """Flagged duplicate pairs (at most ``max_pairs``), each with the rows of its two images in
    ``table`` (``pos_a``, ``pos_b``: the report draws their thumbnails), and the number of pairs flagged."""
    pos = {str(k): i for i, k in enumerate(table["image_id"].astype(str))}
    pairs, seen, total = [], set(), 0
    for f in audit["findings"]:
        if f["kind"] not in _DUP_KINDS:
            continue
        total += int(f["count"])
        for d in f["details"]:
            key = (d["image_id_a"], d["image_id_b"])
            if key in seen or len(pairs) >= max_pairs or key[0] not in pos or key[1] not in pos:
                continue
            seen.add(key)
            pairs.append({**d, "kind": f["kind"], "px": 128, "method": d.get("method"),
                          "inliers": d.get("inliers"), "transform": d.get("transform", {}),
                          "partition_a": d.get("partition_a"), "partition_b": d.get("partition_b"),
                          "pos_a": pos[key[0]], "pos_b": pos[key[1]]})
    return pairs, total
