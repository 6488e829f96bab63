"""The whole pipeline as plain functions: ingest -> split -> audit -> train -> evaluate -> report.

``pipelines/retina.py`` only parses arguments and calls :func:`run_pipeline`; a notebook can call
the same functions. Each stage is a module of its own (see the README's map); this module only
composes them and writes the run directory.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medxcept.audit import audit_cohort, duplicate_groups, fingerprints
from medxcept.augment import build_augment, effective_class_frequencies, serialize_augment
from medxcept.calibrate import brier, ece, make_calibrator, mce, nll, reliability_table
from medxcept.class_exclusions import exclusions_by_class
from medxcept.cohort import CohortSpec, public_view
from medxcept.config import RunConfig, config_hash
from medxcept.demo import cache_dir
from medxcept.errors import CohortError, ConfigError
from medxcept.evaluate import (
    aggregate_by_patient,
    binary_metrics,
    bootstrap_ci,
    choose_threshold,
    multiclass_metrics,
)
from medxcept.faults import fault_point
from medxcept.ingest import IngestResult, ingest, public_exclusions
from medxcept.preprocess import PreprocessCache, decode_key
from medxcept.run import COMPLETE, RunDir, code_version, data_hash, environment, package_versions, reproduce_block
from medxcept.splits import assign_splits, split_hash, split_table, user_split_agreement

__all__ = ["run_pipeline", "evaluate_predictions", "training_verdict", "prepare_cohort"]

log = logging.getLogger(__name__)

CI_METRICS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "precision", "npv", "f1", "balanced_accuracy")


def _say(msg: str) -> None:
    """Console line for the researcher (stderr via logging keeps stdout for the report path)."""
    log.warning(msg) if msg.startswith("!") else log.info(msg)


def prepare_cohort(spec: CohortSpec, cfg: RunConfig) -> tuple[IngestResult, PreprocessCache]:
    """Ingest the cohort into the table and the preprocessing cache."""
    cache = cohort_cache(spec)
    return ingest(spec, preprocess_cfg=cfg.preprocess, cache=cache), cache


def cohort_cache(spec: CohortSpec | None = None, decode: str | None = None) -> PreprocessCache:
    """The preprocessing cache for a cohort: one sub-folder per cohort-level decoding
    (:func:`medxcept.preprocess.decode_key`, e.g. another DICOM window gives other pixels)."""
    key = decode_key(spec) if decode is None else decode
    root = cache_dir() / "preprocessed"
    return PreprocessCache(root / key if key else root)


#: The raw values kept in ``private/image_paths.csv`` (when the cohort has them).
PRIVATE_IMAGE_COLUMNS = ("image_id", "patient_key", "path", "frame", "study_id", "study_uid", "series_uid",
                         "sop_uid", "acquisition_date", "age", "visit")


def record_ingestion(run: RunDir, ing: IngestResult) -> None:
    """Record an ingestion in ``run``: what may be shared at the root, identifiers in ``private/``.

    * ``exclusions.csv``: every file not used, by keyed ``file_id`` with stage, reason (file names
      and paths removed), source and class label when known: :func:`medxcept.ingest.public_exclusions`;
    * ``exclusions_summary.json``: files found = used + excluded, and the rows per reason;
    * ``private/exclusions.csv``: the same rows with full paths and unabridged reasons;
    * ``private/patient_map.csv`` (raw patient ID -> pseudonym) and ``private/image_paths.csv``
      (image_id -> path, frame, raw UIDs, exact date and age).
    """
    shared = public_exclusions(ing.exclusions)
    run.write_csv("exclusions.csv", shared)
    run.write_json("exclusions_summary.json", {
        "files_found": ing.files_found, "files_used": ing.files_used, "files_excluded": ing.files_excluded,
        "check": "files_found = files_used + files_excluded",
        "holds": ing.files_found == ing.files_used + ing.files_excluded,
        "exclusion_rows": len(shared), "rows_by_reason": _reason_counts(ing.exclusions)})
    run.write_private("exclusions.csv", ing.exclusions)
    run.write_private("patient_map.csv", ing.patient_map)
    run.write_private("image_paths.csv", ing.table[[c for c in PRIVATE_IMAGE_COLUMNS if c in ing.table]])


def ingest_into_run(run: RunDir, spec: CohortSpec, cfg: RunConfig) -> tuple[IngestResult, PreprocessCache]:
    """Ingest ``spec`` and record it in ``run`` (:func:`record_ingestion`).

    An ingestion error whose full text names files (label problems under ``on_label_issue: error``)
    is raised without the names; the full text is written to ``private/ingest_error.txt``.
    """
    ing, cache = prepare_withholding_names(run, spec, cfg)
    record_ingestion(run, ing)
    return ing, cache


def prepare_withholding_names(run: RunDir, spec: CohortSpec, cfg: RunConfig, *,
                              keep_detail: bool = True) -> tuple[IngestResult, PreprocessCache]:
    """:func:`prepare_cohort`, with a stopping ingestion error's file names kept out of the console.

    The error is raised with shareable text; when ``keep_detail`` the full text (naming the files)
    goes to ``private/ingest_error.txt`` of ``run`` (a refused ``--resume`` writes nothing).
    """
    try:
        return prepare_cohort(spec, cfg)
    except CohortError as exc:
        detail = getattr(exc, "private_detail", None)
        if not detail:
            raise
        if not keep_detail:
            raise CohortError(f"{exc}\nFile names are withheld here (logs may be shared)") from None
        where = run.write_private("ingest_error.txt", detail + "\n")
        raise CohortError(f"{exc}\nFile names are withheld here (logs may be shared); they are in {where}") from None


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _calibration_block(y: np.ndarray, p: np.ndarray, n_bins: int) -> dict[str, Any]:
    return {
        "ece": ece(y, p, n_bins=n_bins, strategy="uniform"),
        "ece_equal_mass": ece(y, p, n_bins=n_bins, strategy="quantile"),
        "mce": mce(y, p, n_bins=n_bins, strategy="uniform"),
        "brier": brier(y, p),
        "nll": nll(y, p),
        "n_bins": n_bins,
        "reliability": reliability_table(y, p, n_bins=n_bins, strategy="uniform").to_dict("records"),
    }


def add_probabilities(frame: pd.DataFrame, logits: np.ndarray, calibrator: Any,
                      classes: tuple[str, ...]) -> pd.DataFrame:
    """A copy of ``frame`` with ``logit``, ``prob_raw`` and calibrated ``prob`` (per class when k > 2)."""
    frame = frame.copy()
    if len(classes) == 2:
        frame["logit"] = logits
        frame["prob_raw"] = _sigmoid(logits)
        frame["prob"] = calibrator.predict_proba(logits)
        return frame
    zz = logits - logits.max(axis=1, keepdims=True)
    raw = np.exp(zz) / np.exp(zz).sum(axis=1, keepdims=True)
    cal = calibrator.predict_proba(logits)
    for i, c in enumerate(classes):
        frame[f"prob_raw_{c}"] = raw[:, i]
        frame[f"prob_{c}"] = cal[:, i]
    return frame


def measure_test(test: pd.DataFrame, *, threshold: float | None, cfg: RunConfig,
                 classes: tuple[str, ...]) -> dict[str, Any]:
    """Test metrics of a frame from :func:`add_probabilities` at a threshold fixed beforehand.

    Image- and patient-level metrics, patient-bootstrap CIs and calibration before/after.
    The same code measures a run's own test split and an external cohort.
    """
    ec = cfg.eval
    y = test["y"].to_numpy()
    out: dict[str, Any] = {}
    if len(classes) == 2:
        p = test["prob"].to_numpy()
        out["test_image"] = binary_metrics(y, p, threshold=threshold)
        keys, yp, pp = aggregate_by_patient(test["patient_key"], y, p, how=ec.patient_aggregation)
        out["test_patient"] = binary_metrics(yp, pp, threshold=threshold)
        out["patient_aggregation"] = ec.patient_aggregation
        if ec.n_bootstrap:
            cis = bootstrap_ci(yp, pp, keys, metrics=CI_METRICS, threshold=threshold,
                               n_resamples=ec.n_bootstrap, seed=cfg.seed)
            out["test_patient_ci"] = {k: v.to_dict() for k, v in cis.items()}
            cis_img = bootstrap_ci(y, p, test["patient_key"].to_numpy(), metrics=CI_METRICS, threshold=threshold,
                                   n_resamples=ec.n_bootstrap, seed=cfg.seed)
            out["test_image_ci"] = {k: v.to_dict() for k, v in cis_img.items()}
        out["n_bootstrap"] = ec.n_bootstrap
        out["calibration_test"] = {"before": _calibration_block(y, test["prob_raw"].to_numpy(), ec.n_bins),
                                   "after": _calibration_block(y, p, ec.n_bins)}
        return out
    P = test[[f"prob_{c}" for c in classes]].to_numpy()
    out["test_image"] = multiclass_metrics(y, P, classes=list(classes))
    Praw = test[[f"prob_raw_{c}" for c in classes]].to_numpy()
    out["calibration_test"] = {"before": _calibration_block(y, Praw, ec.n_bins),
                               "after": _calibration_block(y, P, ec.n_bins)}
    return out


def evaluate_predictions(*, val: pd.DataFrame, test: pd.DataFrame, val_logits: np.ndarray,
                         test_logits: np.ndarray, cfg: RunConfig, classes: tuple[str, ...],
                         task: str = "nominal", endpoints: tuple = ()) -> dict[str, Any]:
    """Calibrate on validation, choose the threshold on validation, measure on test.

    Returns the ``metrics`` dict (the content of ``metrics.json`` minus run metadata) and adds
    ``prob_raw`` / ``prob`` columns to copies of ``val`` and ``test`` under ``"_frames"``.
    More than two classes add ``graded`` (:func:`medxcept.graded.assess_graded`: decision rule
    chosen on validation, patient/eye/image metrics with CIs, class-wise calibration, ``task``'s
    derived ``endpoints`` with the binary report).
    """
    ec = cfg.eval
    calibrator = make_calibrator(ec.calibration).fit(val_logits, val["y"].to_numpy())
    val = add_probabilities(val, val_logits, calibrator, classes)
    test = add_probabilities(test, test_logits, calibrator, classes)
    out: dict[str, Any] = {"classes": list(classes), "calibration_method": ec.calibration,
                           "calibrator": calibrator.to_dict()}
    threshold = None
    if len(classes) == 2:
        threshold = choose_threshold(val["y"], val["prob"], method=ec.threshold, target=ec.target_sensitivity)
        out["threshold"] = {"value": float(threshold), "method": ec.threshold, "chosen_on": "validation",
                            "target_sensitivity": ec.target_sensitivity if ec.threshold == "sensitivity" else None}
    out.update(measure_test(test, threshold=threshold, cfg=cfg, classes=classes))
    if len(classes) == 2:
        out["val_image"] = binary_metrics(val["y"].to_numpy(), val["prob"].to_numpy(), threshold=threshold)
    else:
        from medxcept.graded import assess_graded

        out["graded"] = assess_graded(val=val, test=test, classes=classes, task=task, endpoints=endpoints,
                                      eval_cfg=ec, seed=cfg.seed)
        out["n_bootstrap"] = ec.n_bootstrap
    out["_frames"] = {"val": val, "test": test}
    return out


def training_verdict(history: pd.DataFrame, best_epoch: int) -> dict[str, Any]:
    """Plain-words overfitting verdict from the per-epoch history.

    Three signs are read: validation AUC falling after its peak while training AUC still rises,
    validation loss rising after its minimum while training loss still falls, and the
    train-validation AUC gap at the kept epoch (> 0.10 clear, > 0.03 mild).
    """
    if history.empty:
        return {"verdict": "no training epochs ran", "best_epoch": 0}
    last = history.iloc[-1]
    best_row = history[history["epoch"] == best_epoch]
    best = best_row.iloc[0] if len(best_row) else last
    train_auc, val_auc = float(best.get("auc", np.nan)), float(best.get("val_patient_auc", best.get("val_auc", np.nan)))
    gap = train_auc - val_auc
    n = int(history["epoch"].max())
    parts = []
    vals = history["val_patient_auc"] if "val_patient_auc" in history else history.get("val_auc")
    overfit = False
    if vals is not None and vals.notna().any():
        top = float(vals.max())
        first = int(history.loc[vals.idxmax(), "epoch"])
        tied = history.loc[np.isclose(vals, top, atol=1e-6), "epoch"].tolist()
        if len(tied) > 1:
            parts.append(f"validation AUC reached its best ({top:.3f}) at epoch {first} of {n} and matched it in "
                         f"{len(tied)} epochs; among those, epoch {best_epoch} had the lowest validation loss")
        else:
            parts.append(f"validation AUC peaked at epoch {first} of {n} ({top:.3f})")
        if top >= 0.999:
            parts.append("a validation AUC of 1 cannot rank epochs any further: the validation patients are "
                         "perfectly separated, so the loss decides")
        after = history[history["epoch"] > max(tied)]
        if len(after) and float(vals.iloc[-1]) < top - 0.02 and float(after["auc"].iloc[-1]) >= float(
                history.loc[vals.idxmax(), "auc"]):
            parts.append("later epochs improved training AUC while validation AUC fell: they overfit")
            overfit = True
    if "val_loss" in history and history["val_loss"].notna().any():
        vl = history["val_loss"]
        low = int(history.loc[vl.idxmin(), "epoch"])
        rise = float(vl.iloc[-1] - vl.min())
        if low < n and rise > 0.05 * abs(float(vl.min())) and float(history["loss"].iloc[-1]) < float(
                history.loc[vl.idxmin(), "loss"]):
            parts.append(f"validation loss was lowest at epoch {low} and rose by {rise:.3f} by epoch {n} while "
                         "training loss kept falling: later epochs overfit")
            overfit = True
    parts.append(f"weights of epoch {best_epoch} kept")
    if np.isfinite(gap):
        if gap > 0.10:
            parts.append(f"train-validation AUC gap {gap:.3f} at the kept epoch: clear overfitting")
        elif gap > 0.03:
            parts.append(f"train-validation AUC gap {gap:.3f} at the kept epoch: mild overfitting")
        else:
            parts.append(f"train-validation AUC gap {gap:.3f} at the kept epoch"
                         + ("" if overfit else ": no sign of overfitting"))
    return {"verdict": "; ".join(parts) + ".", "best_epoch": int(best_epoch), "epochs_run": n,
            "train_auc_at_best": train_auc, "val_auc_at_best": val_auc, "gap_at_best": gap,
            "overfitting_seen": overfit or (np.isfinite(gap) and gap > 0.03),
            "final_train_auc": float(last.get("auc", np.nan)),
            "final_val_auc": float(last.get("val_patient_auc", np.nan))}


def _summary_counts(table: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {"n_images": int(len(table)), "n_patients": int(table["patient_key"].nunique()),
                           "images_per_class": table["label"].value_counts().sort_index().to_dict(),
                           "patients_per_class": table.groupby("label")["patient_key"].nunique().to_dict()}
    if "split" in table:
        out["per_split"] = {
            s: {"images": int((g := table[table["split"] == s]).shape[0]), "patients": int(g["patient_key"].nunique()),
                "images_per_class": g["label"].value_counts().sort_index().to_dict()}
            for s in ("train", "val", "test")}
    return out


def split_and_audit(table: pd.DataFrame, images: np.ndarray, cfg: RunConfig,
                    fp: pd.DataFrame | None = None) -> tuple[pd.DataFrame, Any]:
    """Patient-level split (near-duplicates merged first under ``on_leak: fix``), then the audit.

    Returns the table with ``split`` and the :class:`~medxcept.audit.AuditReport` (not yet
    raised: the caller writes ``audit.json`` first). ``fp``: fingerprints of ``images`` if known.
    """
    fp = fingerprints(images) if fp is None else fp
    merge = duplicate_groups(table, fp, cfg.audit.hamming_threshold) if cfg.audit.on_leak == "fix" else None
    table = assign_splits(table, cfg.split, merge=merge)
    report = audit_cohort(table, fp=fp, policy=cfg.audit.on_leak, hamming_threshold=cfg.audit.hamming_threshold,
                          group_column=cfg.split.group_column,
                          max_images_per_patient=cfg.audit.max_images_per_patient)
    return table, report


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
    again on, after the run itself (:mod:`medxcept.learning_curve`); the report gains the curve.

    ``before_training``: called as ``before_training(run_dir, table, audit_report)`` once the split
    and the audit are written, before training (:mod:`medxcept.reproduce` stops there when the
    data changed).
    """
    from medxcept.model import detect_device, resolve_weights
    from medxcept.preprocess import load_images
    from medxcept.report import render_report
    from medxcept.train import check_resumable, fit, predict_logits_tta, save_inference_model, set_seeds

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    from medxcept.graded import check_task_config

    check_task_config(spec.task, spec.n_classes, cfg.train.ordinal_loss)
    weights = resolve_weights(cfg.model.weights)  # fail before any work if weights are missing
    if not weights.pretrained:
        _say("! NOT PRETRAINED: --weights none, the model starts from random initialization. "
             "Results are from random initialization; the report says so on its first line.")
    set_seeds(cfg.seed)
    if resume_dir is not None:
        run = RunDir(_resumable(Path(resume_dir))).lock()  # a second process on this run stops here
        _say(f"resuming {run.path}")
    else:
        run = RunDir.create(cfg.out_dir, spec.name, cfg, name=run_name).lock()
        run.write_config(cfg, extra={"cohort_name": spec.name, "classes": list(spec.classes)})
    held.append(run)
    _say(f"run directory: {run.path}")

    t = time.perf_counter()
    # nothing written into the run yet (but a stopping error's file names): a refused resume changes nothing
    ing, cache = prepare_withholding_names(run, spec, cfg, keep_detail=resume_dir is None)
    timings["ingest_s"] = time.perf_counter() - t
    _say(f"cohort: {len(ing.table)} image(s) of {ing.table['patient_key'].nunique()} patient(s); "
         f"{ing.files_found} file(s) found, {ing.files_excluded} excluded (see exclusions.csv)")
    by_class = exclusions_by_class(ing.table, ing.exclusions, list(spec.classes))
    for w in by_class["warnings"]:
        _say(f"! exclusions depend on the class: {w}")

    t = time.perf_counter()
    images = load_images(ing.table, cache, cfg.preprocess)
    table, report = split_and_audit(ing.table, images, cfg)
    timings["audit_s"] = time.perf_counter() - t
    if resume_dir is not None:
        # validate everything a resume depends on before the first write
        _same_split(run.file("split.csv"), split_table(table))
        train_y = table.loc[table["split"] == "train", "y"].to_numpy()
        check_resumable(run.path, cfg=cfg, train_y=train_y, n_val=int((table["split"] == "val").sum()))
    record_ingestion(run, ing)
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

    parts = {s: np.flatnonzero(table["split"].to_numpy() == s) for s in ("train", "val", "test")}
    for s, idx in parts.items():
        if len(idx) == 0:
            raise CohortError(f"the {s} split is empty: the cohort is too small for the requested fractions")
    tr, va, te = (table.iloc[parts[s]] for s in ("train", "val", "test"))
    device = detect_device()
    _say(f"training on {len(tr)} image(s) ({device['backend']} backend, {device['device']}) at "
         f"{cfg.preprocess.image_px} px, recipe '{cfg.train.recipe}'")
    result = fit(images[parts["train"]], tr["y"].to_numpy(), images[parts["val"]], va["y"].to_numpy(),
                 va["patient_key"].to_numpy(), cfg=cfg, weights=weights, n_classes=spec.n_classes, run_dir=run.path,
                 resume=resume_dir is not None)
    timings["train_s"] = result.seconds
    run.write_csv("history.csv", result.history)
    model_bytes = save_inference_model(result.model, run.file("model.keras"))
    _say(f"model.keras: {model_bytes / 1e6:.1f} MB (architecture and weights of epoch {result.best_epoch}, "
         "no optimizer state)")
    fault_point("trained")  # test hook (medxcept.faults): killed after training, before evaluation

    t = time.perf_counter()
    tta = {"passes": cfg.eval.tta, "seed": cfg.seed, "policy": cfg.augment.policy, "batch_size": cfg.train.batch_size}
    val_logits = predict_logits_tta(result.model, images[parts["val"]], **tta)
    test_logits = predict_logits_tta(result.model, images[parts["test"]], **tta)
    metrics = evaluate_predictions(val=va, test=te, val_logits=val_logits, test_logits=test_logits, cfg=cfg,
                                   classes=spec.classes, task=spec.task, endpoints=spec.endpoints)
    timings["evaluate_s"] = time.perf_counter() - t
    frames = metrics.pop("_frames")
    graded = metrics.get("graded")
    run.write_json("calibration.json", {"method": cfg.eval.calibration, "calibrator": metrics["calibrator"],
                                        "threshold": metrics.get("threshold"),
                                        **({"decision_rule": graded["decision_rule"], "endpoint_thresholds": {
                                            n: e["threshold"]["value"] for n, e in graded["endpoints"].items()}}
                                           if graded else {})})
    pred_cols = ["image_id", "patient_key", "laterality", "source", "label", "y"] + [
        c for c in frames["test"].columns if c.startswith(("logit", "prob"))]
    predictions = frames["test"][pred_cols].copy()
    if len(spec.classes) == 2:
        pat = predictions.groupby("patient_key").agg(
            patient_y=("y", "max"), patient_prob=("prob", cfg.eval.patient_aggregation))
        predictions = predictions.merge(pat, left_on="patient_key", right_index=True, how="left")
    run.write_csv("predictions.csv", predictions)

    aug = build_augment(cfg.augment, seed=cfg.seed)
    run.write_json("augmentation.json", serialize_augment(aug))
    versions = {"packages": package_versions(), "code": code_version(), "environment": environment(),
                "device": device, "data_hash": data_hash(table, decode=decode_key(spec)),
                "split_hash": split_hash(table), "config_hash": config_hash(cfg),
                "model": {"file": "model.keras", "bytes": model_bytes, "weights_sha256": result.weights_sha256,
                          "optimizer_state": False}}
    versions["reproduce"] = reproduce_block(cfg, data_hash=versions["data_hash"], split_hash=versions["split_hash"],
                                            device=device, user_split=agreement)
    run.write_json("versions.json", versions)
    timings["total_s"] = time.perf_counter() - t_start
    full = {
        "run": {"id": run.path.name, "cohort": spec.name, "description": spec.description,
                "weights": weights.kind, "weights_description": weights.description,
                "pretrained": weights.pretrained, "recipe": cfg.train.recipe, "image_px": cfg.preprocess.image_px,
                "seed": cfg.seed, "tta_passes": cfg.eval.tta, "precision": result.precision,
                "model_bytes": model_bytes, "weights_sha256": result.weights_sha256,
                "resumed_after_training": result.resumed_after_training,
                "n_devices": result.n_devices, "backend": device["backend"], "device": device["device"],
                "external_validation": False},
        "cohort": {**_summary_counts(table), "files_found": ing.files_found, "files_used": ing.files_used,
                   "files_excluded": ing.files_excluded,
                   "exclusions_by_reason": _reason_counts(ing.exclusions),
                   "exclusions_by_class": by_class},
        "class_balance": {"method": cfg.augment.balance,
                          **effective_class_frequencies(tr["y"].to_numpy(), cfg.augment, n_classes=spec.n_classes)},
        "training": {**training_verdict(result.history, result.best_epoch), "stages": result.stages,
                     "seconds": result.seconds},
        **metrics,
        "audit": {"errors": len(report.errors), "n_findings": len(report.findings)},
        "timings": timings,
        "hashes": {k: versions[k] for k in ("data_hash", "split_hash", "config_hash")},
    }
    figs: dict[str, str | None] = {}
    if graded:
        from medxcept.graded import graded_figures

        figs.update(graded_figures(graded, frames["test"]))
    if learning_curve:
        from medxcept.learning_curve import learning_curve_figure, learning_curve_rows, learning_curve_verdict

        t = time.perf_counter()
        lc = learning_curve_rows(fractions=learning_curve, images=images, table=table, parts=parts, cfg=cfg,
                                 weights=weights, n_classes=spec.n_classes, full=result)
        run.write_csv("learning_curve.csv", lc)
        full["learning_curve"] = {"rows": lc.to_dict("records"),
                                  "verdict": learning_curve_verdict(lc, int(va["patient_key"].nunique()))}
        figs["learning_curve"] = learning_curve_figure(lc)
        timings["learning_curve_s"] = time.perf_counter() - t
        _say(f"learning curve: {full['learning_curve']['verdict']}")
    run.write_json("metrics.json", full)
    fault_point("evaluated")  # test hook: killed after metrics.json, before the report
    html = render_report(run.path, metrics=full, table=table, history=result.history, predictions=predictions,
                         audit=report, versions=versions, images=images, cfg=cfg, spec=spec, frames=frames,
                         extra_figs={**figs, "cam": _cam_figure(result.model, images[parts["test"]], frames["test"],
                                                                metrics.get("threshold"))})
    # the completion marker, written last: until it exists the run is resumable (checkpoints kept)
    run.write_json(COMPLETE, {"completed": _dt.datetime.now().isoformat(timespec="seconds"),
                              "weights_sha256": result.weights_sha256, "model_bytes": model_bytes,
                              "best_epoch": int(result.best_epoch)})
    shutil.rmtree(run.file("checkpoints"), ignore_errors=True)  # complete: model.keras supersedes them
    _say(f"report written in {timings['total_s']:.0f} s")
    return html


def _cam_figure(model: Any, images: np.ndarray, test: pd.DataFrame, threshold: dict | None) -> str | None:
    """The Grad-CAM gallery of the test split (binary cohorts)."""
    if threshold is None or "prob" not in test:
        return None
    from medxcept.explain import cam_gallery, class_activation_maps

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


def _reason_counts(exclusions: pd.DataFrame) -> dict[str, int]:
    if exclusions.empty:
        return {}
    if "path" in exclusions:  # the shareable reasons: no file name reaches metrics.json
        exclusions = public_exclusions(exclusions)
    # group reasons by their first clause so per-file numbers do not split one reason into many
    # (after the label table's "row 7:" / "rows 3, 9:" prefix)
    reason = exclusions["reason"].str.replace(r"^rows? [\d, ]+:\s*", "", regex=True)
    key = exclusions["stage"] + ": " + reason.str.split(r"[:(]", n=1, regex=True).str[0].str.strip()
    return key.value_counts().to_dict()
