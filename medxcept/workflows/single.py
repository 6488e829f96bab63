"""The single-run workflow: ingest -> split -> audit -> train -> assess -> provenance -> report.

``python -m pipelines.retina run`` calls :func:`run_pipeline`; a notebook can call it too. Each
stage is a module of its own (see the README's map) and each shared step is in
:mod:`medxcept.workflows.steps`; this module only composes them.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medxcept.cohort.class_exclusions import exclusions_by_class
from medxcept.cohort.table import CohortSpec, public_view
from medxcept.config import RunConfig, config_hash
from medxcept.errors import CohortError, ConfigError
from medxcept.evaluation.assess import (
    TTA,
    Units,
    assess_model,
    compare_references,
    prediction_table,
    write_marker,
    write_outcome,
)
from medxcept.evaluation.external import keep_source_fingerprints
from medxcept.evaluation.graded import check_task_config
from medxcept.evaluation.learning_curve import learning_curve_verdict
from medxcept.evaluation.units import unit_keys, unit_visits
from medxcept.evaluation.verdict import training_verdict
from medxcept.faults import fault_point
from medxcept.images.augment import build_augment, effective_class_frequencies, serialize_augment
from medxcept.images.cache import decode_key, load_images
from medxcept.integrity.audit import fingerprints
from medxcept.integrity.split_keys import split_hash, split_table
from medxcept.integrity.splits import user_split_agreement
from medxcept.models.backbones import get_backbone
from medxcept.models.backbones import provenance as backbone_provenance
from medxcept.models.checkpoint import check_resumable, save_inference_model
from medxcept.models.explain import class_activation_maps
from medxcept.models.network import detect_device, resolve_weights
from medxcept.models.train import fit, set_seeds
from medxcept.report.cam import cam_gallery
from medxcept.report.figures import learning_curve_figure
from medxcept.run import COMPLETE, RunDir, data_hash, reproduce_block
from medxcept.workflows.learning_curve import learning_curve_rows
from medxcept.workflows.steps import (
    cohort_block,
    leaks_let_through,
    materialize,
    metrics_document,
    prepare_withholding_names,
    record_ingestion,
    render_run_report,
    split_and_audit,
    summary_block,
)

__all__ = ["run_pipeline"]

log = logging.getLogger(__name__)


def _say(msg: str) -> None:
    """Console line for the researcher (stderr via logging keeps stdout for the report path)."""
    log.warning(msg) if msg.startswith("!") else log.info(msg)


def run_pipeline(cfg: RunConfig, spec: CohortSpec, *, run_name: str | None = None,
                 resume_dir: Path | None = None, learning_curve: tuple[float, ...] = (),
                 before_training: Any = None) -> Path:
    """Run every stage on ``spec`` with ``cfg``; return the path of the report (:func:`_run_locked`).

    The run directory's lock is released when this returns or raises, so the same process (a
    notebook, a test, an in-process k-fold) can resume or re-open the directory afterwards.
    """
    held: list[RunDir] = []
    try:
        return _run_locked(cfg, spec, run_name=run_name, resume_dir=resume_dir, learning_curve=learning_curve,
                           before_training=before_training, held=held)
    finally:
        for run in held:
            run.unlock()


def _run_locked(cfg: RunConfig, spec: CohortSpec, *, run_name: str | None, resume_dir: Path | None,
                learning_curve: tuple[float, ...], before_training: Any, held: list[RunDir]) -> Path:
    """Run every stage on ``spec`` with ``cfg``; return the path of the report.

    Whole-run problems (no usable image, a class without patients, missing weights, leakage
    under ``policy=error``) raise a :class:`~medxcept.errors.MedxceptError` *before* training.

    ``resume_dir``: an interrupted run directory to complete. Ingestion, split and audit are
    redone (from the preprocessing cache, so quickly) and must give the split the run saved;
    training continues after the last completed epoch of ``resume_dir/checkpoints``.

    ``learning_curve``: fractions of the training patients (e.g. ``(0.25, 0.5, 0.75)``) to train
    again on, after the run itself (:mod:`medxcept.evaluation.learning_curve`); the report gains the curve.

    ``before_training``: called as ``before_training(run_dir, table, audit_report)`` once the split
    and the audit are written, before training (:mod:`medxcept.evaluation.reproduce` stops there when the
    data changed).
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    spec = materialize(spec)  # a generated cohort is written before anything else
    check_task_config(spec.task, spec.n_classes, cfg.train.ordinal_loss)
    weights = resolve_weights(cfg.model.weights, cfg.model.backbone)  # fail before any work if weights are missing
    if not weights.pretrained:
        _say("! NOT PRETRAINED: --weights none, the model starts from random initialization. "
             "Results are from random initialization; the report says so on its first line.")
    set_seeds(cfg.seed)
    run = _open_run(cfg, spec, run_name, resume_dir)
    held.append(run)
    ing, images, table, report, agreement = _ingest_split_audit(run, spec, cfg, resume=resume_dir is not None,
                                                                before_training=before_training, timings=timings)
    parts = {s: np.flatnonzero(table["split"].to_numpy() == s) for s in ("train", "val", "test")}
    for s, idx in parts.items():
        if len(idx) == 0:
            raise CohortError(f"the {s} split is empty: the cohort is too small for the requested fractions")
    tr, va, te = (table.iloc[parts[s]] for s in ("train", "val", "test"))
    device = detect_device()
    _say(f"training on {len(tr)} image(s) ({device['backend']} backend, {device['device']}) at "
         f"{cfg.preprocess.image_px} px, recipe '{cfg.train.recipe}'")
    # early stopping ranks epochs on the report's units (patient or visit) and aggregation rule
    result = fit(images[parts["train"]], tr["y"].to_numpy(), images[parts["val"]], va["y"].to_numpy(),
                 unit_keys(va["patient_key"], unit_visits(va, cfg.eval.unit)), cfg=cfg, weights=weights,
                 n_classes=spec.n_classes, run_dir=run.path, resume=resume_dir is not None,
                 train_groups=unit_keys(tr["patient_key"], unit_visits(tr, cfg.eval.unit)), task=spec.task)
    timings["train_s"] = result.seconds
    run.write_csv("history.csv", result.history)
    model_bytes = save_inference_model(result.model, run.file("model.keras"))
    _say(f"model.keras: {model_bytes / 1e6:.1f} MB (architecture and weights of epoch {result.best_epoch}, "
         "no optimizer state)")
    fault_point("trained")  # test hook (medxcept.faults): killed after training, before evaluation

    t = time.perf_counter()
    # the one assessment (medxcept.evaluation.assess): TTA as configured, choices on the validation units
    assessed = assess_model(
        result.model, val=Units(va, images[parts["val"]]), test=Units(te, images[parts["test"]]), cfg=cfg,
        classes=spec.classes, task=spec.task, endpoints=spec.endpoints, tta=TTA.of(cfg),
        method={"epoch_chosen_on": "the validation split", "chosen_on": "the validation split"},
        references=lambda test: compare_references(table, images, np.r_[parts["train"], parts["val"]],
                                                   parts["test"], test, cfg, spec.classes,
                                                   save_models=run.file("references.joblib")))
    timings["evaluate_s"] = time.perf_counter() - t
    run.write_json("augmentation.json", serialize_augment(build_augment(cfg.augment, seed=cfg.seed)))
    # the validation predictions (pseudonymized, like predictions.csv): a reviewer recomputes the
    # threshold and the temperature from them; nothing of the test split is in there
    how, unit = cfg.eval.patient_aggregation, cfg.eval.unit
    versions = write_outcome(run, assessed, tables={
        "predictions.csv": assessed.predictions(spec.classes, how, unit),
        "val_predictions.csv": prediction_table(assessed.val, spec.classes, how, unit)},
        versions=_provenance(cfg, spec, table, device, result, model_bytes, agreement))
    timings["total_s"] = time.perf_counter() - t_start
    training = {**training_verdict(result.history, result.best_epoch, collapse=getattr(result, "collapse", None)),
                "stages": result.stages, "seconds": result.seconds}
    full = metrics_document(
        run=_run_record(run, spec, cfg, weights, result, device, model_bytes),
        cohort=cohort_block(table, ing, spec.classes),
        class_balance={"method": cfg.augment.balance, **effective_class_frequencies(
            tr["y"].to_numpy(), cfg.augment, n_classes=spec.n_classes)},
        training=training, assessed=assessed,
        summary=summary_block(assessed.metrics, training, assessed.references),
        audit={"errors": len(report.errors), "n_findings": len(report.findings), "policy": cfg.audit.on_leak,
               "let_through": leaks_let_through(report, cfg.audit.on_leak)},
        timings=timings, versions=versions)
    figs: dict[str, str | None] = {}
    if learning_curve:
        figs["learning_curve"] = _learning_curve(run, full, learning_curve, images=images, table=table, parts=parts,
                                                 cfg=cfg, weights=weights, spec=spec, result=result)
    run.write_json("metrics.json", full)
    fault_point("evaluated")  # test hook: killed after metrics.json, before the report
    figs["cam"] = _cam_figure(result.model, images[parts["test"]], assessed.test, assessed.metrics.get("threshold"))
    html = render_run_report(run, full, assessed=assessed, history=result.history, audit=report,
                             versions=versions, spec=spec, cfg=cfg, table=table, images=images, figs=figs)
    # the completion marker, written last: until it exists the run is resumable (checkpoints kept)
    write_marker(run, COMPLETE, {"weights_sha256": result.weights_sha256, "model_bytes": model_bytes,
                                 "best_epoch": int(result.best_epoch)})
    shutil.rmtree(run.file("checkpoints"), ignore_errors=True)  # complete: model.keras supersedes them
    _say(f"report written in {timings['total_s']:.0f} s")
    return html


def _open_run(cfg: RunConfig, spec: CohortSpec, run_name: str | None, resume_dir: Path | None) -> RunDir:
    """The run directory, locked: a new one with its ``config.yaml``, or the interrupted one to resume."""
    if resume_dir is not None:
        run = RunDir(_resumable(Path(resume_dir))).lock()  # a second process on this run stops here
        _say(f"resuming {run.path}")
    else:
        run = RunDir.create(cfg.out_dir, spec.name, cfg, name=run_name).lock()
        run.write_config(cfg, extra={"cohort_name": spec.name, "classes": list(spec.classes)})
    _say(f"run directory: {run.path}")
    return run


def _ingest_split_audit(run: RunDir, spec: CohortSpec, cfg: RunConfig, *, resume: bool, before_training: Any,
                        timings: dict[str, float]) -> tuple[Any, np.ndarray, pd.DataFrame, Any, Any]:
    """Ingest, split and audit; write the records (``audit.json``, ``split.csv``, ``cohort.csv``, the
    exclusions, the source fingerprints); stop on the audit's errors. A resume first checks that the
    split and the checkpoints still fit. Returns the ingestion, the images, the split table, the audit
    report and the user split's agreement (or None)."""
    t = time.perf_counter()
    # nothing written into the run yet (but a stopping error's file names): a refused resume changes nothing
    ing, cache = prepare_withholding_names(run, spec, cfg, keep_detail=not resume)
    timings["ingest_s"] = time.perf_counter() - t
    _say(f"cohort: {len(ing.table)} image(s) of {ing.table['patient_key'].nunique()} patient(s); "
         f"{ing.files_found} file(s) found, {ing.files_excluded} excluded (see exclusions.csv)")
    for w in exclusions_by_class(ing.table, ing.exclusions, list(spec.classes))["warnings"]:
        _say(f"! exclusions depend on the class: {w}")

    t = time.perf_counter()
    images = load_images(ing.table, cache, cfg.preprocess)
    fp = fingerprints(images)
    table, report = split_and_audit(ing.table, images, cfg, fp=fp)
    timings["audit_s"] = time.perf_counter() - t
    if resume:
        # validate everything a resume depends on before the first write
        _same_split(run.file("split.csv"), split_table(table))
        train_y = table.loc[table["split"] == "train", "y"].to_numpy()
        check_resumable(run.path, cfg=cfg, train_y=train_y, n_val=int((table["split"] == "val").sum()))
    record_ingestion(run, ing)
    # private: what an external validation compares its images with (copies of training images)
    keep_source_fingerprints(run, table, images, fp)
    run.write_json("audit.json", report.to_dict())
    run.write_csv("split.csv", split_table(table))
    run.write_csv("cohort.csv", public_view(table))
    agreement = user_split_agreement(table, cfg.split) if cfg.split.user_split is not None else None
    if before_training is not None:
        before_training(run.path, table, report)
    report.raise_if_errors()
    for f in report.findings:
        if f.severity == "warning":
            _say(f"! audit: {f.message}")
    return ing, images, table, report, agreement


def _provenance(cfg: RunConfig, spec: CohortSpec, table: pd.DataFrame, device: dict[str, str], result: Any,
                model_bytes: int, agreement: Any) -> dict[str, Any]:
    """The keyword arguments of :meth:`medxcept.run.RunDir.write_versions`: device, hashes, the model file
    and what ``pipelines.reproduce`` needs."""
    hashes = {"data_hash": data_hash(table, decode=decode_key(spec)), "split_hash": split_hash(table),
              "config_hash": config_hash(cfg)}
    return {"device": device, "hashes": hashes,
            "model": {"file": "model.keras", "bytes": model_bytes, "weights_sha256": result.weights_sha256,
                      "optimizer_state": False, "backbone": backbone_provenance(cfg.model.backbone)},
            "reproduce": reproduce_block(cfg, data_hash=hashes["data_hash"], split_hash=hashes["split_hash"],
                                         device=device, user_split=agreement)}


def _run_record(run: RunDir, spec: CohortSpec, cfg: RunConfig, weights: Any, result: Any, device: dict[str, str],
                model_bytes: int) -> dict[str, Any]:
    """``metrics.json["run"]``: what was trained, how, and on what."""
    return {"id": run.path.name, "cohort": spec.name, "description": spec.description,
            "weights": weights.kind, "weights_description": weights.description,
            "pretrained": weights.pretrained, "recipe": cfg.train.recipe, "image_px": cfg.preprocess.image_px,
            "backbone": cfg.model.backbone, "network": get_backbone(cfg.model.backbone).label,
            "parameters": int(result.model.count_params()),
            "seed": cfg.seed, "tta_passes": cfg.eval.tta, "precision": result.precision,
            "model_bytes": model_bytes, "weights_sha256": result.weights_sha256,
            "resumed_after_training": result.resumed_after_training,
            "n_devices": result.n_devices, "backend": device["backend"], "device": device["device"],
            "external_validation": False}


def _learning_curve(run: RunDir, full: dict[str, Any], fractions: tuple[float, ...], *, images: np.ndarray,
                    table: pd.DataFrame, parts: dict[str, np.ndarray], cfg: RunConfig, weights: Any,
                    spec: CohortSpec, result: Any) -> str | None:
    """Train again on ``fractions`` of the training patients; write ``learning_curve.csv`` and
    ``full["learning_curve"]`` (rows and verdict, ``timings``); return the figure."""
    t = time.perf_counter()
    lc = learning_curve_rows(fractions=fractions, images=images, table=table, parts=parts, cfg=cfg,
                             weights=weights, n_classes=spec.n_classes, full=result, task=spec.task)
    run.write_csv("learning_curve.csv", lc)
    n_val = int(table.iloc[parts["val"]]["patient_key"].nunique())
    full["learning_curve"] = {"rows": lc.to_dict("records"), "verdict": learning_curve_verdict(lc, n_val)}
    full["timings"]["learning_curve_s"] = time.perf_counter() - t
    _say(f"learning curve: {full['learning_curve']['verdict']}")
    return learning_curve_figure(lc)


def _cam_figure(model: Any, images: np.ndarray, test: pd.DataFrame, threshold: dict | None) -> str | None:
    """The Grad-CAM gallery of the test split (binary cohorts)."""
    if threshold is None or "prob" not in test:
        return None
    cams = class_activation_maps(model, images)
    return cam_gallery(images, cams, test["y"].to_numpy(), test["prob"].to_numpy(), float(threshold["value"]),
                       keys=test["patient_key"].tolist())


def _resumable(path: Path) -> Path:
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"cannot resume {path}: it holds no config.yaml (not a medxcept run directory)")
    legacy = (path / "report.html").is_file() and not (path / "checkpoints").exists()  # before complete.json
    if (path / COMPLETE).is_file() or legacy:
        raise ConfigError(f"cannot resume {path}: the run is complete ({COMPLETE} exists); start a new run")
    if not (path / "checkpoints" / "state.json").is_file():
        log.warning("! %s has no checkpoint (interrupted before its first epoch ended): training from the start",
                    path)
    return path


def _same_split(saved: Path, split: pd.DataFrame) -> None:
    if not saved.is_file():
        return
    if saved.read_text(encoding="utf-8") != split.to_csv(index=False):  # written by RunDir.write_csv
        raise ConfigError(f"cannot resume: the split computed now differs from {saved} (the cohort's files or "
                          "labels changed since the run started); start a new run")
