"""The check workflow: ingest, split and audit a cohort without training; write ``check.html``.

What the page shows and why is in :mod:`medxcept.integrity.check`; this module composes the steps.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medxcept.cohort.class_exclusions import exclusions_by_class
from medxcept.cohort.ingest import data_root
from medxcept.cohort.table import CohortSpec, public_view
from medxcept.config import RunConfig, config_hash
from medxcept.errors import SplitError
from medxcept.images.cache import load_images
from medxcept.integrity.audit import AuditReport, audit_cohort, fingerprints
from medxcept.integrity.check import (
    cohort_summary,
    count_table,
    duplicate_pairs_shown,
    file_counts,
    reason_groups,
    source_rows,
)
from medxcept.integrity.split_keys import split_hash, split_table
from medxcept.report.check import pair_thumbnails, render_check_page
from medxcept.run import RunDir, data_hash
from medxcept.workflows.steps import ingest_into_run, materialize, split_and_audit

__all__ = ["check_cohort"]

log = logging.getLogger("medxcept.integrity.check")  # the log lines keep their logger name


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


def check_cohort(spec: CohortSpec, cfg: RunConfig, *, out_dir: Path, run_name: str | None = None) -> Path:
    """Ingest, split and audit ``spec`` without training; write the run directory and ``check.html``.

    Parameters
    ----------
    spec : CohortSpec
        From :func:`medxcept.cohort.table.load_cohort_spec`.
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
    spec = materialize(spec)
    run = RunDir.create(out_dir, spec.name, cfg, name=run_name)
    run.write_config(cfg, extra={"step": "check", "cohort_name": spec.name, "classes": list(spec.classes)})
    log.info("check run directory: %s", run.path)
    ing, cache = ingest_into_run(run, spec, cfg)

    images = load_images(ing.table, cache, cfg.preprocess)
    table, report, split_error = _split_and_audit(ing.table, images, cfg)
    run.write_json("audit.json", report.to_dict())
    run.write_csv("cohort.csv", public_view(table))
    hashes = {"data_hash": data_hash(table), "config_hash": config_hash(cfg)}
    if split_error is None:
        run.write_csv("split.csv", split_table(table))
        hashes["split_hash"] = split_hash(table)
    versions = run.write_versions(hashes=hashes)

    classes = list(spec.classes)
    base = data_root(spec)
    files = file_counts(ing.table, ing.exclusions, ing.files_found, ing.files_used)
    if files["found"] != files["used"] + files["excluded"] + files["skipped"]:
        log.warning("files found (%d) != used + excluded + skipped (%d + %d + %d)", files["found"],
                    files["used"], files["excluded"], files["skipped"])
    audit = report.to_dict()
    dup_pairs, dup_total = duplicate_pairs_shown(audit, ing.table)
    dup_pairs = pair_thumbnails(dup_pairs, images)  # images are in ingestion order
    context = {
        "dup_pairs": dup_pairs, "dup_pairs_total": dup_total,
        "cohort": spec.name, "description": spec.description, "run_id": run.path.name,
        "created": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "classes": classes,
        "modality": spec.modality, "files": files,
        "groups": reason_groups(ing.exclusions, names=False), "names_shown": False,
        "by_class": exclusions_by_class(ing.table, ing.exclusions, classes),
        "sources": source_rows(spec, ing.table, ing.exclusions, base),
        "by_reader": count_table(table, ["reader", "modality", "channels"], classes),
        "summary": cohort_summary(table, classes),
        "split_error": str(split_error) if split_error else None,
        "split_cfg": {"val": cfg.split.val_fraction, "test": cfg.split.test_fraction, "seed": cfg.split.seed},
        "audit": audit, "findings": audit["findings"],
        "hashes": {k: v for k, v in versions.items() if k.endswith("_hash")},
        "image_px": cfg.preprocess.image_px,
    }
    # the shared page lists the pairs without pictures; the data owner's copy (with file names and
    # the pair thumbnails, both identifying) sits next to the other identifiers
    html = run.write_text("check.html", render_check_page(
        {**context, "dup_pairs": [{k: v for k, v in p.items() if not k.startswith("thumb_")} for p in dup_pairs]}))
    run.write_private("check.html", render_check_page({**context, "names_shown": True,
                                            "groups": reason_groups(ing.exclusions, hide=str(base.resolve()))}))
    summary = audit["summary"]
    log.info("check: %d file(s) found, %d used, %d excluded, %d skipped; %d image(s) of %d patient(s); "
             "audit: %d error(s), %d warning(s)", files["found"], files["used"], files["excluded"],
             files["skipped"], len(table), table["patient_key"].nunique(), summary.get("error", 0),
             summary.get("warning", 0))
    if split_error is not None:
        raise SplitError(f"{split_error} (the check page shows the counts: {html})")
    return html
