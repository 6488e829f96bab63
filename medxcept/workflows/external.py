"""The external-validation workflow: apply a trained run, unchanged, to another cohort.

``python -m pipelines.retina evaluate --run RUN_DIR --cohort OTHER.yaml`` calls
:func:`evaluate_run`. What is taken from the source run and why nothing is refitted is in
:mod:`medxcept.evaluation.external` (the source-run reader, :func:`~medxcept.evaluation.external.external_config`,
:func:`~medxcept.evaluation.external.source_overlap`); this module composes the steps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from medxcept.cohort.class_exclusions import exclusions_by_class
from medxcept.cohort.ingest import file_sha256
from medxcept.cohort.table import CohortSpec, public_view
from medxcept.config import RunConfig, config_hash
from medxcept.errors import LeakageError
from medxcept.evaluation.assess import TTA, Fixed, Units, assess_model, write_outcome
from medxcept.evaluation.calibrate import Calibrator
from medxcept.evaluation.external import (
    SOURCE_EVAL_FIELDS,
    _load_model,
    _match_classes,
    _run_block,
    _source_history,
    _training_block,
    copies_page,
    external_config,
    external_references,
    load_source_fingerprints,
    load_source_run,
    near_copies,
    near_copy_findings,
    read_run_json,
    source_overlap,
    transfer_line,
)
from medxcept.evaluation.graded import graded_figures
from medxcept.images.cache import load_images
from medxcept.integrity.audit import audit_cohort, fingerprints
from medxcept.integrity.split_keys import split_hash, split_table
from medxcept.models.network import detect_device
from medxcept.report import render_report
from medxcept.run import RunDir, data_hash
from medxcept.workflows.steps import (
    ingest_into_run,
    materialize,
    reason_counts,
    report_examples,
    summary_block,
    summary_counts,
)

__all__ = ["evaluate_run"]

log = logging.getLogger("medxcept.evaluation.external")  # the log lines keep their logger name


def evaluate_run(run_dir: Path, spec: CohortSpec, cfg: RunConfig, run_name: str | None = None) -> Path:
    """Apply the trained run ``run_dir`` unchanged to cohort ``spec``; return the new report's path.

    Parameters
    ----------
    run_dir : Path
        A finished training run (see :data:`REQUIRED_FILES`).
    spec : CohortSpec
        The external cohort. Its classes must be the model's classes (any order).
    cfg : RunConfig
        The configuration resolved for the external cohort. Only ``out_dir``, ``seed``,
        ``eval.n_bootstrap``, ``eval.n_bins`` and ``audit.hamming_threshold`` are used; everything
        that shaped the model comes from the source run (:func:`external_config`), and a log line
        says where the two differ.
    run_name : str, optional
        Name of the new run directory (default ``<date>-<cohort>-external-<hash8>``).

    Returns
    -------
    Path
        ``report.html`` of the new run directory.

    Raises
    ------
    ConfigError
        An incomplete source run directory (naming the missing files), a model whose classes or
        input size do not match.
    CohortError
        The external cohort has no usable image, or a class without images.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    src = load_source_run(run_dir)
    spec = materialize(_match_classes(spec, src))
    ecfg, differences = external_config(src.cfg, cfg)
    for line in differences:
        log.warning("! configuration differs from the source run, %s: the model was trained on the source "
                    "run's settings", line)
    calibrator = Calibrator.from_dict(src.calibration["calibrator"])
    threshold = src.calibration.get("threshold")
    if threshold is not None:
        threshold = {**threshold, "chosen_on": f"the validation split of run {src.id}", "refitted": False}
    log.info("external validation of run %s on cohort '%s': every usable image is a test image; model, "
             "preprocessing (%d px), %s calibration%s come from the source run and nothing is refitted",
             src.id, spec.name, ecfg.preprocess.image_px, calibrator.name,
             f" and threshold {threshold['value']:.4f}" if threshold else "")
    model = _load_model(src, ecfg.preprocess.image_px)

    run = RunDir.create(ecfg.out_dir, f"{spec.name}-external", ecfg, name=run_name)
    run.write_config(ecfg, extra={"cohort_name": spec.name, "classes": list(src.classes),
                                  "external_validation": True, "source_run": src.id})
    log.info("run directory: %s", run.path)

    t = time.perf_counter()
    ing, cache = ingest_into_run(run, spec, ecfg)
    timings["ingest_s"] = time.perf_counter() - t
    table = ing.table.copy()
    table["split"] = "test"  # external validation: every usable image is a test image
    log.info("cohort: %d image(s) of %d patient(s); %d file(s) found, %d excluded (see exclusions.csv)",
             len(table), table["patient_key"].nunique(), ing.files_found, ing.files_excluded)

    t = time.perf_counter()
    images = load_images(table, cache, ecfg.preprocess)
    fp = fingerprints(images)
    # Nothing is trained here, so duplicates inside the cohort are not leakage: the audit only
    # describes the cohort (policy "warn") and never stops the run.
    audit = audit_cohort(table, fp=fp, policy="warn", hamming_threshold=ecfg.audit.hamming_threshold)
    overlap, findings = source_overlap(table, pd.read_csv(src.path / "cohort.csv", dtype=str), src.id)
    # copies of the training images, re-encoded, resized or cropped: the audit's pair verification
    # across the source run's training + validation fingerprints and these images
    source_fp = load_source_fingerprints(src.path)
    pairs = None
    if source_fp is None:
        log.warning("! the source run %s kept no fingerprints of its training images: only byte-identical "
                    "copies are looked for in this cohort", src.id)
    else:
        try:
            pairs = near_copies(source_fp, table, fp, ecfg.audit.hamming_threshold)
        except ValueError as exc:
            log.warning("! the source run %s kept fingerprints of another medxcept version (%s): only "
                        "byte-identical copies are looked for in this cohort", src.id, exc)
    copies, copy_findings = near_copy_findings(pairs, len(table), src.id, ecfg.audit.on_leak)
    overlap["near_copies"] = copies
    if pairs is not None:
        overlap["checked"].append("near-duplicate fingerprints (training and validation images)")
    findings += copy_findings
    audit.findings.extend(findings)
    timings["audit_s"] = time.perf_counter() - t
    for f in audit.findings:
        if f.severity in ("warning", "error"):
            log.warning("! audit: %s", f.message)
    run.write_json("audit.json", audit.to_dict())
    run.write_csv("split.csv", split_table(table))
    run.write_csv("cohort.csv", public_view(table))
    if pairs is not None and len(pairs) and source_fp is not None:
        run.write_private("external_copies.html", copies_page(
            pairs, source_fp, table, images, run_id=run.path.name, source_id=src.id, finding=copy_findings[0]))
        if copy_findings[0].severity == "error":
            raise LeakageError(f"external validation refused: {copy_findings[0].message}")

    t = time.perf_counter()
    # the one assessment (medxcept.evaluation.assess), every choice taken from the source run: its
    # test-time augmentation too (its threshold and calibrator were fitted on TTA-averaged logits)
    chosen_on = f"the validation split of run {src.id}"
    assessed = assess_model(
        model, test=Units(table, images), cfg=ecfg, classes=src.classes, task=spec.task, endpoints=spec.endpoints,
        tta=TTA.of(src.cfg, batch_size=ecfg.train.batch_size),
        fixed=Fixed(calibrator, threshold, src.calibration if len(src.classes) > 2 else None),
        method={"epoch_chosen_on": chosen_on, "chosen_on": chosen_on},
        # the source run's reference models, applied unchanged to these images, on these patients
        references=lambda test: external_references(src, test, images, ecfg))
    measured, test, references = assessed.metrics, assessed.test, assessed.references
    timings["evaluate_s"] = time.perf_counter() - t
    predictions = assessed.predictions(src.classes, ecfg.eval.patient_aggregation, ecfg.eval.unit)
    device = detect_device()
    src_versions = read_run_json(src.path / "versions.json") if (src.path / "versions.json").is_file() else {}
    versions = write_outcome(
        run, assessed, tables={"predictions.csv": predictions},
        calibration={**src.calibration, "source_run": src.id, "refitted": False},
        versions={"device": device, "hashes": {"data_hash": data_hash(table), "split_hash": split_hash(table),
                                               "config_hash": config_hash(ecfg)},
                  "source_run": {"id": src.id, "model_sha256": file_sha256(src.path / "model.keras"),
                                 **{k: src_versions[k] for k in ("data_hash", "split_hash", "config_hash")
                                    if k in src_versions}}})
    history = _source_history(src.path)
    training = _training_block(src, history)
    summary = summary_block(measured, training, references) if len(src.classes) == 2 else {}
    line = transfer_line(src, measured)
    if line and summary.get("summary_items") is not None:
        summary["summary_items"].append({"text": line, "severity": "info", "kind": "transfer"})
    timings["total_s"] = time.perf_counter() - t_start
    full = {
        "run": _run_block(run, spec, src, ecfg, device),
        "external": {
            "source_run": src.id, "source_cohort": src.cohort_name, "refitted": [],
            "from_source_run": ["model", "preprocessing", "calibrator", "threshold", "test-time augmentation",
                                *[f"eval.{k}" for k in SOURCE_EVAL_FIELDS]],
            "note": "every usable image of this cohort is a test image; nothing (model, temperature or other "
                    "calibrator, threshold) was fitted on it",
            "config_differences": differences, "overlap": overlap,
            "warnings": [f.message for f in findings if f.severity == "warning"]},
        "cohort": {**summary_counts(table), "files_found": ing.files_found, "files_used": ing.files_used,
                   "files_excluded": ing.files_excluded,
                   "exclusions_by_reason": reason_counts(ing.exclusions),
                   "exclusions_by_class": exclusions_by_class(ing.table, ing.exclusions, list(spec.classes))},
        "class_balance": src.metrics.get("class_balance") or {"method": src.cfg.augment.balance},
        "training": training,
        **measured,
        **({"references": references} if references is not None else {}),
        **summary,
        "audit": {"errors": len(audit.errors), "n_findings": len(audit.findings)},
        "timings": timings,
        "hashes": {k: versions[k] for k in ("data_hash", "split_hash", "config_hash")},
    }
    run.write_json("metrics.json", full)
    html = render_report(run.path, metrics=full, table=table, history=history, predictions=predictions,
                         audit=audit, versions=versions, images=images, cfg=ecfg, spec=spec,
                         frames={"test": test}, examples=report_examples(table, images, ecfg, spec),
                         extra_figs=graded_figures(measured["graded"], test) if measured.get("graded") else None)
    log.info("external validation report written in %.0f s", time.perf_counter() - t_start)
    return html
