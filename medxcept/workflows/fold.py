"""One k-fold fold: train on the fold's training patients, assess on its held-out fold.

:func:`run_fold` (called by the executors of :mod:`medxcept.workflows.cv`) trains fold ``i``'s model
on its training folds less its inner validation split, then measures it with the one assessment of
every workflow (:func:`medxcept.evaluation.assess.assess_model`: test-time augmentation as
configured; calibrator, threshold or decision rule fitted on the inner validation units) on the
held-out fold, and on the hold-out test split when there is one. What a fold does and why is in
:mod:`medxcept.evaluation.kfold`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from medxcept.cohort.table import Endpoint, load_cohort_spec
from medxcept.errors import ConfigError
from medxcept.evaluation.assess import (
    TTA,
    Assessment,
    Units,
    assess_model,
    compare_references,
    predict_units,
    write_marker,
    write_outcome,
)
from medxcept.evaluation.graded import fold_predictions
from medxcept.evaluation.kfold import (
    FAILED,
    INNER,
    MARKER,
    PLAN,
    CVPlan,
    FoldTask,
    check_fold_disjoint,
    check_marker,
    fold_counts,
    fold_lock,
    fold_split,
    inner_fraction,
    inner_seed,
    load_plan,
    prediction_frame,
    read_json,
    require_inner_split,
)
from medxcept.evaluation.units import unit_keys, unit_visits
from medxcept.evaluation.verdict import training_verdict
from medxcept.faults import fault_point
from medxcept.images.cache import load_images
from medxcept.integrity.audit import audit_cohort, duplicate_groups, fingerprints
from medxcept.integrity.split_keys import split_hash, split_table
from medxcept.models.backbones import provenance as backbone_provenance
from medxcept.paths import cache_dir
from medxcept.run import RunDir
from medxcept.workflows.steps import cohort_cache, prepare_cohort

__all__ = ["run_fold", "task_of"]

log = logging.getLogger("medxcept.evaluation.kfold")  # the log lines keep their logger name


def run_fold(cv_dir: str | Path, task_index: int, *, images: np.ndarray | None = None,
             save_model: bool = True) -> dict[str, Any]:
    """Train and evaluate one fold into ``<cv_dir>/<fold name>/``; skip it when already complete.

    Parameters
    ----------
    cv_dir : path
        A directory written by :func:`medxcept.workflows.cv.plan_cv`.
    task_index : int
        ``repeat * n_folds + fold``.
    images : numpy.ndarray, optional
        The plan's preprocessed images in ``cohort.csv`` row order (read from the cache otherwise).
    save_model : bool, default True
        Keep ``model.keras`` in the fold directory.

    Returns
    -------
    dict
        ``name``, ``status`` (``"trained"`` or ``"skipped"``) and, when trained, ``seconds``.
    """
    plan = load_plan(cv_dir)
    require_inner_split(plan.info, plan.path)
    tasks = plan.tasks
    if not 0 <= task_index < len(tasks):
        raise ConfigError(f"fold index {task_index} is out of range: {plan.path} has {len(tasks)} fold(s) "
                          f"(0..{len(tasks) - 1}; with repeats, index = repeat * {plan.n_folds} + fold)")
    task = tasks[task_index]
    if (plan.path / task.name / MARKER).is_file():
        check_marker(plan, task, read_json(plan.path / task.name / MARKER))
        log.info("%s: complete (fold.json matches configuration %s), skipped", task.name, plan.info["config_hash"])
        return {"name": task.name, "status": "skipped"}
    # one process per fold (a resubmitted array job stops here): held until this process returns or dies
    with fold_lock(plan.path, task):
        return _run_fold_locked(plan, task, images=images, save_model=save_model)


def _run_fold_locked(plan: CVPlan, task: FoldTask, *, images: np.ndarray | None,
                     save_model: bool) -> dict[str, Any]:
    fdir = plan.path / task.name
    if (fdir / MARKER).is_file():  # completed by the process that held the lock before us
        check_marker(plan, task, read_json(fdir / MARKER))
        return {"name": task.name, "status": "skipped"}
    fault_point("fold_start", task.name)  # test hook (medxcept.faults)
    resume = _resumable(fdir, task)
    # imported here: a skipped fold (above), planning and aggregating need neither Keras nor TensorFlow
    from medxcept.models.checkpoint import save_inference_model
    from medxcept.models.network import detect_device, resolve_weights
    from medxcept.models.train import fit, set_seeds

    t0, cfg, classes = time.perf_counter(), plan.cfg, plan.classes
    weights = resolve_weights(cfg.model.weights, cfg.model.backbone)
    images = _load_images(plan) if images is None else images
    # The epoch, the calibration and the threshold (k classes: the decision rule) are chosen on the
    # fold's inner validation split, a share of its training folds' patients made as the single run's
    # validation split; never on the held-out fold "val" that is reported.
    fraction, fp = inner_fraction(cfg.split), fingerprints(images)
    merge = duplicate_groups(plan.table, fp, cfg.audit.hamming_threshold) if cfg.audit.on_leak == "fix" else None
    table = fold_split(plan.table, cfg.split, task.repeat, task.fold, fraction=fraction, merge=merge)
    check_fold_disjoint(table, task.name)  # cheap, and the fold must never train if it fails
    if split_hash(table) != plan.info["folds"][task.index]["split_hash"]:
        raise ConfigError(f"{task.name}: the inner validation split made now differs from the one planned in "
                          f"{plan.path / PLAN} (another version of medxcept?): delete {plan.path} or use another "
                          "--cv-name to plan it again")
    seed = inner_seed(cfg.split.seed, task.repeat, task.fold)
    where = (f"the fold's inner validation split: {100 * fraction:g} % of the patients of its training folds "
             "(patient-grouped, stratified, seeded per fold and repeat), never the held-out fold")
    chosen_on = (f"the fold's inner validation split: {100 * fraction:g} % of its training folds' patients "
                 f"(patient-grouped, stratified, seed {seed}), never the held-out fold")
    run = RunDir(fdir)
    run.write_config(cfg, extra={"cohort_name": plan.info["cohort_name"], "classes": list(classes),
                                 "cv": {"dir": plan.path.name, "fold": task.fold, "repeat": task.repeat,
                                        "n_folds": plan.n_folds, "repeats": plan.repeats,
                                        "inner_val_fraction": fraction, "inner_seed": seed}})
    run.write_csv("split.csv", split_table(table))
    report = audit_cohort(table, fp=fp, policy=cfg.audit.on_leak,
                          hamming_threshold=cfg.audit.hamming_threshold, group_column=cfg.split.group_column)
    run.write_json("audit.json", report.to_dict())
    report.raise_if_errors()

    parts = {s: np.flatnonzero(table["split"].to_numpy() == s) for s in ("train", INNER, "val", "test")}
    train_folds = np.sort(np.concatenate([parts["train"], parts[INNER]]))  # every training-fold row
    counts = fold_counts(table)
    ft, iv, va, te = (table.iloc[parts[s]] for s in ("train", INNER, "val", "test"))
    log.info("%s: training on %d image(s) of %d patient(s), inner validation (epoch, calibration, threshold) on "
             "%d image(s) of %d patient(s), held out %d image(s) of %d patient(s)", task.name,
             counts["train"]["images"], counts["train"]["patients"], counts["inner_val"]["images"],
             counts["inner_val"]["patients"], counts["held_out"]["images"], counts["held_out"]["patients"])
    set_seeds(cfg.seed)
    # early stopping on the report's units (patient or visit) and aggregation rule
    result = fit(images[parts["train"]], ft["y"].to_numpy(), images[parts[INNER]], iv["y"].to_numpy(),
                 unit_keys(iv["patient_key"], unit_visits(iv, cfg.eval.unit)), cfg=cfg, weights=weights,
                 n_classes=len(classes), run_dir=fdir, resume=resume,
                 train_groups=unit_keys(ft["patient_key"], unit_visits(ft, cfg.eval.unit)), task=plan.info.get("task"))
    run.write_csv("history.csv", result.history)

    # the one assessment, as a single run's: TTA (eval.tta) on every prediction, choices on the inner units
    tta, (kind, endpoints) = TTA.of(cfg), task_of(plan)
    inner = Units(iv, logits=predict_units(result.model, Units(iv, images[parts[INNER]]), tta))
    common = {"val": inner, "cfg": cfg, "classes": classes, "task": kind, "endpoints": endpoints, "tta": tta,
              "method": {"epoch_chosen_on": where, "chosen_on": where}}
    oof_a = assess_model(result.model, test=Units(va, images[parts["val"]]), **common,
                         # the reference models on the same split: fitted on every training-fold image, scored on fold i
                         references=lambda test: compare_references(table, images, train_folds, parts["val"], test,
                                                                    cfg, classes))
    ho_a = assess_model(result.model, test=Units(te, images[parts["test"]]), **common) if len(te) else None
    oof, holdout, tables = _fold_record(oof_a, ho_a, task, cfg.eval)
    model_bytes = save_inference_model(result.model, run.file("model.keras")) if save_model else None
    device = detect_device()
    fhash = split_hash(table)
    seconds = time.perf_counter() - t0
    metrics = _fold_metrics(task, oof_a, oof, holdout, cfg=cfg, k=len(classes), weights=weights, result=result,
                            counts=counts, chosen_on=chosen_on, audit=report, device=device, seconds=seconds,
                            model_bytes=model_bytes)
    write_outcome(run, oof_a, tables=tables, calibration={}, metrics=metrics, versions={
        "device": device, "hashes": {"data_hash": plan.info["data_hash"], "split_hash": fhash,
                                     "config_hash": plan.info["config_hash"]},
        "model": {"backbone": backbone_provenance(cfg.model.backbone)}})
    write_marker(run, MARKER, {  # the completion marker, written last
        "name": task.name, "fold": task.fold, "repeat": task.repeat, "config_hash": plan.info["config_hash"],
        "data_hash": plan.info["data_hash"], "split_hash": fhash, "weights_sha256": result.weights_sha256,
        "seconds": seconds})
    shutil.rmtree(fdir / "checkpoints", ignore_errors=True)  # complete: the final model supersedes them
    auc = (oof["graded"]["test_patient"]["macro_roc_auc"]["point"] if "graded" in oof
           else oof["patient"].get("roc_auc"))
    log.info("%s: done in %.0f s; out-of-fold patient %sAUC %s", task.name, seconds,
             "macro " if "graded" in oof else "", auc)
    return {"name": task.name, "status": "trained", "seconds": seconds}


def _fold_metrics(task: FoldTask, oof_a: Assessment, oof: dict[str, Any], holdout: dict[str, Any] | None, *,
                  cfg: Any, k: int, weights: Any, result: Any, counts: dict[str, Any], chosen_on: str, audit: Any,
                  device: dict[str, str], seconds: float, model_bytes: int | None) -> dict[str, Any]:
    """A fold's ``metrics.json``: weights, counts, the choices made on the inner validation split
    (threshold or, for ``k`` > 2 classes, decision rule and endpoint thresholds; calibrator; method),
    the ``oof`` and ``holdout`` blocks, references, training verdict, audit summary, device, seconds
    and the model file."""
    threshold = ({"decision_rule": oof_a.metrics["graded"]["decision_rule"],
                  "endpoint_thresholds": oof_a.calibration_record["endpoint_thresholds"]}
                 if k > 2 else oof_a.metrics["threshold"])
    ec = cfg.eval
    return {
        "fold": task.fold, "repeat": task.repeat, "name": task.name,
        "weights": weights.kind, "weights_description": weights.description, "pretrained": weights.pretrained,
        "counts": counts, "threshold": {**threshold, "chosen_on": chosen_on}, "epoch_chosen_on": chosen_on,
        "method": oof_a.method, "calibration_method": ec.calibration, "calibrator": oof_a.metrics["calibrator"],
        "patient_aggregation": ec.patient_aggregation, "unit": ec.unit, "n_bootstrap": ec.n_bootstrap,
        "oof": oof, "holdout": holdout, "references": oof_a.references,
        "training": {**training_verdict(result.history, result.best_epoch, collapse=getattr(result, "collapse", None)),
                     "stages": result.stages, "seconds": result.seconds},
        "audit": audit.to_dict()["summary"] | {"warnings": [f.message for f in audit.warnings]},
        "device": device, "seconds": seconds,
        "model": {"bytes": model_bytes, "weights_sha256": result.weights_sha256, "optimizer_state": False,
                  "resumed_after_training": result.resumed_after_training},
    }


def _fold_record(oof_a: Assessment, ho_a: Assessment | None, task: FoldTask,
                 ec: Any) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """A fold's ``oof`` and ``holdout`` blocks of ``metrics.json`` and its prediction tables."""
    if "graded" in oof_a.metrics:
        tables = {"oof_predictions.csv": fold_predictions(oof_a.test, oof_a.metrics["graded"], repeat=task.repeat,
                                                          fold=task.fold)}
        if ho_a is not None:
            tables["holdout_predictions.csv"] = fold_predictions(ho_a.test, ho_a.metrics["graded"],
                                                                 repeat=task.repeat, fold=task.fold)
        return ({"graded": oof_a.metrics["graded"]},
                {"graded": ho_a.metrics["graded"]} if ho_a is not None else None, tables)
    threshold = float(oof_a.threshold)
    frame = prediction_frame(oof_a.test, task, threshold, ec.patient_aggregation, ec.unit)
    if oof_a.reference_scores is not None and "image_id" in frame:
        frame = frame.merge(oof_a.reference_scores, on="image_id", how="left")
    tables = {"oof_predictions.csv": frame}
    if ho_a is not None:
        tables["holdout_predictions.csv"] = prediction_frame(ho_a.test, task, threshold, ec.patient_aggregation,
                                                              ec.unit)
    return (_evaluation(oof_a, ec.patient_aggregation, ec.n_bins, ec.unit),
            _evaluation(ho_a, ec.patient_aggregation, ec.n_bins, ec.unit) if ho_a is not None else None, tables)


def _evaluation(assessed: Assessment, how: str, n_bins: int, unit: str = "visit") -> dict[str, Any]:
    """A fold's measurement of one frame: patient metrics with patient calibration, image metrics, CIs."""
    m = assessed.metrics
    out = {"patient": {**m["test_patient"], **assessed.patient_calibration(how, n_bins, unit)},
           "image": m["test_image"], "calibration_image": m["calibration_test"]}
    for key in ("test_patient_ci", "test_image_ci"):
        if key in m:
            out[key.replace("test_", "")] = m[key]
    return out


def _resumable(fdir: Path, task: FoldTask) -> bool:
    """Whether the fold continues from its checkpoint; a fold killed before its first epoch restarts."""
    if (fdir / FAILED).is_file():
        log.warning("! %s failed before (%s): running it again", task.name,
                    read_json(fdir / FAILED).get("message", "?"))
        (fdir / FAILED).unlink()
    if not fdir.exists():
        return False
    state = fdir / "checkpoints" / "state.json"
    if state.is_file():
        done = len(read_json(state).get("rows", []))
        log.warning("! %s was interrupted after epoch %d: continuing from its checkpoint", task.name, done)
        return True
    log.warning("! %s was interrupted before its first epoch ended: restarting it", task.name)
    shutil.rmtree(fdir)
    return False


def _load_images(plan: CVPlan) -> np.ndarray:
    decode = plan.info.get("decode_key")
    cache = cohort_cache(load_cohort_spec(plan.info["cohort_file"])) if decode is None else cohort_cache(decode=decode)
    try:
        return load_images(plan.table, cache, plan.cfg.preprocess)
    except KeyError:
        # another machine, or a cleared cache: preprocess again (fills the cache), then read it
        log.info("preprocessed images not in the cache at %s: ingesting the cohort again", cache_dir())
        prepare_cohort(load_cohort_spec(plan.info["cohort_file"]), plan.cfg)
        return load_images(plan.table, cache, plan.cfg.preprocess)


def task_of(plan: CVPlan) -> tuple[str, tuple[Endpoint, ...]]:
    """The cohort's task and derived endpoints as planned (``cv.json``; older plans: binary or nominal)."""
    kind = plan.info.get("task") or ("binary" if len(plan.classes) == 2 else "nominal")
    endpoints = tuple(Endpoint(name=e["name"], positive=tuple(e["positive"]), rule=e["rule"])
                      for e in plan.info.get("endpoints", []))
    return kind, endpoints
