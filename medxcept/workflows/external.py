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
from typing import Any

import numpy as np
import pandas as pd

from medxcept.cohort.table import CohortSpec, public_view
from medxcept.config import RunConfig, config_hash
from medxcept.errors import LeakageError
from medxcept.evaluation.assess import TTA, Assessment, Fixed, Units, assess_model, write_outcome
from medxcept.evaluation.external import (
    SourceCopies,
    SourceRun,
    copies_of_source,
    copies_rows,
    external_block,
    external_config,
    external_references,
    load_source_model,
    load_source_run,
    match_classes,
    run_block,
    source_choices,
    source_history,
    source_provenance,
    training_block,
    transfer_line,
)
from medxcept.images.cache import load_images
from medxcept.integrity.audit import audit_cohort, fingerprints
from medxcept.integrity.split_keys import split_hash, split_table
from medxcept.models.network import detect_device
from medxcept.report.check import copies_page
from medxcept.run import RunDir, data_hash
from medxcept.workflows.steps import (
    cohort_block,
    ingest_into_run,
    materialize,
    metrics_document,
    render_run_report,
    summary_block,
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
    spec = materialize(match_classes(spec, src))
    ecfg, differences = external_config(src.cfg, cfg)
    for line in differences:
        log.warning("! configuration differs from the source run, %s: the model was trained on the source "
                    "run's settings", line)
    calibrator, threshold = source_choices(src)
    log.info("external validation of run %s on cohort '%s': every usable image is a test image; model, "
             "preprocessing (%d px), %s calibration%s come from the source run and nothing is refitted",
             src.id, spec.name, ecfg.preprocess.image_px, calibrator.name,
             f" and threshold {threshold['value']:.4f}" if threshold else "")
    model = load_source_model(src, ecfg.preprocess.image_px)
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
    # describes the cohort (policy "warn") and never stops the run; copies of the source run's images do.
    audit = audit_cohort(table, fp=fp, policy="warn", hamming_threshold=ecfg.audit.hamming_threshold)
    copies = copies_of_source(src, table, fp, ecfg.audit.hamming_threshold, ecfg.audit.on_leak)
    audit.findings.extend(copies.findings)
    timings["audit_s"] = time.perf_counter() - t
    for f in audit.findings:
        if f.severity in ("warning", "error"):
            log.warning("! audit: %s", f.message)
    run.write_json("audit.json", audit.to_dict())
    run.write_csv("split.csv", split_table(table))
    run.write_csv("cohort.csv", public_view(table))
    _refuse_copies(run, copies, table, images, src.id)

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
    timings["evaluate_s"] = time.perf_counter() - t
    device = detect_device()
    versions = write_outcome(
        run, assessed, tables={"predictions.csv": assessed.predictions(src.classes, ecfg.eval.patient_aggregation,
                                                                       ecfg.eval.unit)},
        calibration={**src.calibration, "source_run": src.id, "refitted": False},
        versions={"device": device, "hashes": {"data_hash": data_hash(table), "split_hash": split_hash(table),
                                               "config_hash": config_hash(ecfg)},
                  "source_run": source_provenance(src)})
    history = source_history(src.path)
    training = training_block(src, history)
    summary = _summary(src, assessed, training)
    timings["total_s"] = time.perf_counter() - t_start
    full = metrics_document(
        run=run_block(run, spec, src, ecfg, device), external=external_block(src, differences, copies),
        cohort=cohort_block(table, ing, spec.classes),
        class_balance=src.metrics.get("class_balance") or {"method": src.cfg.augment.balance},
        training=training, assessed=assessed, summary=summary,
        audit={"errors": len(audit.errors), "n_findings": len(audit.findings)}, timings=timings, versions=versions)
    run.write_json("metrics.json", full)
    html = render_run_report(run, full, assessed=assessed, history=history, audit=audit, versions=versions,
                             spec=spec, cfg=ecfg, table=table, images=images)
    log.info("external validation report written in %.0f s", time.perf_counter() - t_start)
    return html


def _refuse_copies(run: RunDir, copies: SourceCopies, table: pd.DataFrame, images: np.ndarray, source_id: str) -> None:
    """Copies of the source run's images found: the private page of the pairs, then stop under
    ``audit.on_leak: error`` (the finding's severity)."""
    if copies.pairs is None or not len(copies.pairs):
        return
    run.write_private("external_copies.html", copies_page(
        copies_rows(copies.pairs, table), copies.source_thumbs, images, total=len(copies.pairs),
        run_id=run.path.name, source_id=source_id, finding=copies.copy_finding))
    if copies.copy_finding.severity == "error":
        raise LeakageError(f"external validation refused: {copies.copy_finding.message}")


def _summary(src: SourceRun, assessed: Assessment, training: dict[str, Any]) -> dict[str, Any]:
    """The summary block (binary: :func:`~medxcept.workflows.steps.summary_block`), with the line
    comparing the source run's test AUC with this cohort's (:func:`~medxcept.evaluation.external.transfer_line`)."""
    summary = summary_block(assessed.metrics, training, assessed.references) if len(src.classes) == 2 else {}
    line = transfer_line(src, assessed.metrics)
    if line and summary.get("summary_items") is not None:
        summary["summary_items"].append({"text": line, "severity": "info", "kind": "transfer"})
    return summary
