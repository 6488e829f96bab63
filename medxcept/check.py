"""The ``check`` step: ingest, split and audit a cohort without training, and show what was found.

Before anyone spends hours training, a researcher wants three answers about a new export:
*did every file decode, and if not, which ones and why?*, *how many patients of each class
are there, from which sources?* and *would the split leak?* :func:`check_cohort` runs exactly
the stages that answer them — ingestion (:func:`medxcept.pipeline.prepare_cohort`), the
patient-level split (:func:`medxcept.splits.assign_splits`; under ``audit.on_leak: fix``
duplicates are merged first, as in a training run) and the pre-training audit
(:func:`medxcept.audit.audit_cohort`) — and writes a run directory:

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

import datetime as _dt
import logging
import re
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from medxcept.audit import AuditReport, audit_cohort, fingerprints
from medxcept.class_exclusions import exclusions_by_class
from medxcept.cohort import CohortSpec, public_view
from medxcept.config import RunConfig, config_hash
from medxcept.errors import SplitError
from medxcept.ingest import data_root, public_exclusions
from medxcept.pipeline import ingest_into_run, split_and_audit
from medxcept.preprocess import load_images
from medxcept.run import RunDir, code_version, data_hash, environment, package_versions
from medxcept.splits import split_hash, split_table

__all__ = ["check_cohort", "reason_groups", "is_skip_reason", "TEMPLATE"]

log = logging.getLogger(__name__)

#: The page template (jinja2, autoescaped).
TEMPLATE = Path(__file__).parent / "report" / "templates" / "check.html.j2"

SKIP_PREFIX = "not an image"
SPLITS = ("train", "val", "test")


def is_skip_reason(reason: str) -> bool:
    """True for the reasons of files that are not images at all (SR, DICOMDIR, presentation state)."""
    return str(reason).startswith(SKIP_PREFIX)


def _reason_category(reason: str) -> str:
    """The part of a reason that names the problem, without the row, file, numbers or details.

    ``"row 7: label row whose file is missing: 'x.jpg' was not found..."`` ->
    ``"label row whose file is missing"``; ``"not an image: Comprehensive SR Storage (...)"`` ->
    ``"not an image"``; quoted values and numbers become ``…`` and ``N`` so per-file reasons
    group together.
    """
    text = re.sub(r"^row \d+:\s*", "", str(reason).strip())
    head = re.split(r":\s|;", text, maxsplit=1)[0]
    head = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", head)
    head = re.sub(r"\[[^\]]*\]", "[…]", head)
    head = re.sub(r"\d[\d,.]*", "N", head)
    return head.strip() or "unspecified"


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
        ``path``, ``stage``, ``reason`` (:data:`medxcept.ingest.EXCLUSION_COLUMNS`).
    hide : str, optional
        A folder whose path is replaced by ``…`` inside reasons (a label issue names the
        image folder; the page shows names, not paths).
    names : bool, default True
        False: files are shown by their keyed ``file_id`` and reasons without file names
        (:func:`medxcept.ingest.shareable_reason`), for the shareable page.

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


def _file_counts(table: pd.DataFrame, exclusions: pd.DataFrame, files_found: int,
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


def _split_and_audit(table: pd.DataFrame, images: np.ndarray,
                     cfg: RunConfig) -> tuple[pd.DataFrame, AuditReport, SplitError | None]:
    """Split by patient (merging duplicates first under ``on_leak: fix``) and audit, as a run does.

    A split that cannot be made is returned (not raised) so the page can show it; the audit
    then runs on the unsplit table (duplicates, confounding, laterality still apply).
    """
    fp = fingerprints(images)
    try:
        table, report = split_and_audit(table, images, cfg, fp=fp)
        return table, report, None
    except SplitError as exc:  # no split: the audit still reports duplicates, confounding, laterality
        report = audit_cohort(table, fp=fp, policy=cfg.audit.on_leak,
                              hamming_threshold=cfg.audit.hamming_threshold, group_column=cfg.split.group_column,
                              max_images_per_patient=cfg.audit.max_images_per_patient)
        return table, report, exc


def _count_table(table: pd.DataFrame, by: list[str], classes: list[str]) -> list[dict[str, Any]]:
    """Images and patients per value of ``by``, with images per class."""
    rows = []
    for key, g in table.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        per_class = g["label"].value_counts()
        rows.append({"key": [str(k) for k in key], "images": len(g), "patients": int(g["patient_key"].nunique()),
                     "per_class": [int(per_class.get(c, 0)) for c in classes]})
    return rows


def _source_rows(spec: CohortSpec, table: pd.DataFrame, exclusions: pd.DataFrame,
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


def _summary(table: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """The cohort table in numbers: images, patients, classes, laterality, sizes, splits."""
    out: dict[str, Any] = {
        "images": len(table), "patients": int(table["patient_key"].nunique()),
        "studies": int(table["study_id"].replace("", np.nan).nunique()),
        "per_class": _count_table(table, ["label"], classes),
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


def _thumb(img: np.ndarray, px: int = 128) -> str:
    """A PNG data URI of ``img`` shrunk to at most ``px`` px."""
    import base64
    import io

    from PIL import Image

    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    im = Image.fromarray(a)
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _duplicate_pairs_shown(audit: dict[str, Any], table: pd.DataFrame, images: np.ndarray,
                           max_pairs: int = MAX_DUP_PAIRS) -> tuple[list[dict[str, Any]], int]:
    """Flagged duplicate pairs with thumbnails (at most ``max_pairs``), and the number of pairs flagged."""
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
                          "thumb_a": _thumb(images[pos[key[0]]]), "thumb_b": _thumb(images[pos[key[1]]])})
    return pairs, total


def _render(context: dict[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE.name).render(**context)


def check_cohort(spec: CohortSpec, cfg: RunConfig, *, out_dir: Path, run_name: str | None = None) -> Path:
    """Ingest, split and audit ``spec`` without training; write the run directory and ``check.html``.

    Parameters
    ----------
    spec : CohortSpec
        From :func:`medxcept.cohort.load_cohort_spec`.
    cfg : RunConfig
        The resolved configuration: ``preprocess`` (ingestion, cache), ``split`` and ``audit``
        are used; training options are only recorded.
    out_dir : Path
        Parent of the run directory (``reports/`` by default in the CLI).
    run_name : str, optional
        Name of the run directory; default ``<date>-<cohort>-<config hash8>`` as for a training run.

    Returns
    -------
    Path
        ``check.html`` inside the run directory.

    Raises
    ------
    CohortError
        From ingestion: no usable image, a class without images, or label issues under
        ``on_label_issue: error`` (nothing to show yet).
    MissingDecoderError
        A decoder plugin is not installed (an install problem, reported once).
    SplitError
        The split cannot be made; raised *after* the page, which shows the counts, is written.
    """
    run = RunDir.create(out_dir, spec.name, cfg, name=run_name)
    run.write_config(cfg, extra={"step": "check", "cohort_name": spec.name, "classes": list(spec.classes)})
    log.info("check run directory: %s", run.path)
    ing, cache = ingest_into_run(run, spec, cfg)

    images = load_images(ing.table, cache, cfg.preprocess)
    table, report, split_error = _split_and_audit(ing.table, images, cfg)
    run.write_json("audit.json", report.to_dict())
    run.write_csv("cohort.csv", public_view(table))
    versions: dict[str, Any] = {"packages": package_versions(), "code": code_version(),
                                "environment": environment(), "data_hash": data_hash(table),
                                "config_hash": config_hash(cfg)}
    if split_error is None:
        run.write_csv("split.csv", split_table(table))
        versions["split_hash"] = split_hash(table)
    run.write_json("versions.json", versions)

    classes = list(spec.classes)
    base = data_root(spec)
    files = _file_counts(ing.table, ing.exclusions, ing.files_found, ing.files_used)
    if files["found"] != files["used"] + files["excluded"] + files["skipped"]:
        log.warning("files found (%d) != used + excluded + skipped (%d + %d + %d)", files["found"],
                    files["used"], files["excluded"], files["skipped"])
    audit = report.to_dict()
    dup_pairs, dup_total = _duplicate_pairs_shown(audit, ing.table, images)  # images are in ingestion order
    context = {
        "dup_pairs": dup_pairs, "dup_pairs_total": dup_total,
        "cohort": spec.name, "description": spec.description, "run_id": run.path.name,
        "created": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "classes": classes,
        "modality": spec.modality, "files": files,
        "groups": reason_groups(ing.exclusions, names=False), "names_shown": False,
        "by_class": exclusions_by_class(ing.table, ing.exclusions, classes),
        "sources": _source_rows(spec, ing.table, ing.exclusions, base),
        "by_reader": _count_table(table, ["reader", "modality", "channels"], classes),
        "summary": _summary(table, classes),
        "split_error": str(split_error) if split_error else None,
        "split_cfg": {"val": cfg.split.val_fraction, "test": cfg.split.test_fraction, "seed": cfg.split.seed},
        "audit": audit, "findings": audit["findings"],
        "hashes": {k: v for k, v in versions.items() if k.endswith("_hash")},
        "image_px": cfg.preprocess.image_px,
    }
    html = run.file("check.html")
    # the shared page lists the pairs without pictures; the data owner's copy (with file names and
    # the pair thumbnails, both identifying) sits next to the other identifiers
    html.write_text(_render({**context, "dup_pairs": [{k: v for k, v in p.items() if not k.startswith("thumb_")}
                                                      for p in dup_pairs]}), encoding="utf-8")
    run.write_private("check.html", _render({**context, "names_shown": True,
                                            "groups": reason_groups(ing.exclusions, hide=str(base.resolve()))}))
    summary = audit["summary"]
    log.info("check: %d file(s) found, %d used, %d excluded, %d skipped; %d image(s) of %d patient(s); "
             "audit: %d error(s), %d warning(s)", files["found"], files["used"], files["excluded"],
             files["skipped"], len(table), table["patient_key"].nunique(), summary.get("error", 0),
             summary.get("warning", 0))
    if split_error is not None:
        raise SplitError(f"{split_error} (the check page shows the counts: {html})")
    return html
