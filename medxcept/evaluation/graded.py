"""Assessing a k-class (nominal or ordinal) run: the numbers behind the report's graded sections.

Given validation and test frames that already hold raw and calibrated class probabilities
(``prob_raw_<class>``, ``prob_<class>``; calibration fitted on validation), this module

1. chooses the decision rule on the **validation units** (patients, worst eye for ordinal tasks, or
   visits under ``eval.unit = visit``: the level the headline reads it at;
   :func:`medxcept.evaluation.multiclass.choose_decision_rule`: argmax for nominal tasks, cumulative
   thresholds maximizing quadratic kappa for ordinal ones); ROC-AUC and PR-AUC rank the uncalibrated
   logits (``logit_<class>``: temperature scaling changes one-vs-rest rankings, and probabilities
   saturate): per class the one-vs-rest log-odds ``log P(c) - log(1 - P(c))``, of the image or of the
   unit's aggregated distribution, computed in log space
   (:func:`medxcept.evaluation.class_units.unit_rank_scores`); frames without logits (older runs)
   rank ``prob_raw_<class>``;
2. measures test at the image, patient and (when lateralities are known) eye level, every metric
   with a patient-bootstrap CI (:func:`medxcept.evaluation.multiclass.multiclass_report`); the patient of an
   ordinal task has their worst eye's grade, probabilities aggregated consistently
   (:func:`medxcept.evaluation.class_units.aggregate_units`);
3. measures calibration before and after recalibration, top-label and class-wise, with
   reliability data per class;
4. reports each derived binary endpoint (``referable: grade >= 2``) with the full binary report:
   its probability is the summed probability of its positive classes, its threshold is chosen on
   the validation units' scores (:func:`medxcept.evaluation.metrics.choose_threshold`), and test gets image- and patient-level
   metrics with patient-bootstrap CIs and calibration before/after. For an ordinal endpoint
   ``grade >= g`` the patient probability is the maximum over images (the worst-eye rule);
   for a list of nominal classes it is ``eval.patient_aggregation``.

Everything returned is JSON-ready and goes into ``metrics.json`` under ``graded``. In k-fold
cross-validation, "validation" is each fold's inner validation split (a share of its training
folds' patients, :func:`medxcept.evaluation.kfold.fold_split`) and "test" its held-out fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medxcept.evaluation.calibrate import calibration_summary
from medxcept.evaluation.class_metrics import class_metric_names, class_metrics, metric_in_cv
from medxcept.evaluation.class_units import aggregate_units
from medxcept.evaluation.clinical import clinical_reading, decision_thresholds, operating_thresholds
from medxcept.evaluation.intervals import bootstrap_ci
from medxcept.evaluation.metrics import binary_metrics, choose_threshold, metric_names, ranking_metrics
from medxcept.evaluation.multiclass import (
    DecisionRule,
    calibration_report,
    choose_decision_rule,
    endpoint_logit,
    endpoint_probability,
    multiclass_report,
)
from medxcept.evaluation.units import (
    aggregate_by_patient,
    ranking_scores,
    unit_keys,
    unit_patients,
    unit_visits,
)

__all__ = ["ENDPOINT_CI_METRICS", "assess_graded", "endpoint_report", "check_task_config", "endpoint_scores"]

#: Binary metrics given a CI in each endpoint's report: the binary run's list (the registry's ``ci`` flag).
ENDPOINT_CI_METRICS = metric_names(ci=True)


def check_task_config(task: str, n_classes: int, ordinal_loss: str) -> None:
    """Refuse an ordinal loss on a task that has no order, before any work."""
    from medxcept.errors import ConfigError

    if ordinal_loss != "softmax" and task != "ordinal":
        raise ConfigError(f"train.ordinal_loss={ordinal_loss!r} needs an ordinal cohort (task: ordinal, ordered "
                          f"grades); this cohort's task is {task!r} with {n_classes} classes: use 'softmax'")


def _probs(frame: pd.DataFrame, classes: Sequence[str], prefix: str) -> np.ndarray:
    P = frame[[f"{prefix}{c}" for c in classes]].to_numpy(dtype=np.float64)
    return P / P.sum(axis=1, keepdims=True)


def _logits(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray | None:
    """The (n, k) uncalibrated logits (``logit_<c>``), or None when the frame has none (older runs)."""
    cols = [f"logit_{c}" for c in classes]
    if not all(c in frame for c in cols) or frame[cols].isna().any().any():
        return None
    return frame[cols].to_numpy(dtype=np.float64)


def _rank_scores(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """What the images' one-vs-rest AUCs rank: the log-odds of each class from the logits
    (:func:`medxcept.evaluation.units.ranking_scores`), else the uncalibrated probabilities."""
    z = _logits(frame, classes)
    return _probs(frame, classes, "prob_raw_") if z is None else ranking_scores(z)


def _rank_units(keys: np.ndarray, y: np.ndarray, frame: pd.DataFrame, classes: Sequence[str], **kw: Any) -> Any:
    """:func:`medxcept.evaluation.class_units.aggregate_units` of what AUCs rank: the logits (its
    ``P`` then holds each unit's one-vs-rest log-odds), else the uncalibrated probabilities."""
    z = _logits(frame, classes)
    if z is None:
        return aggregate_units(keys, y, _probs(frame, classes, "prob_raw_"), **kw)
    return aggregate_units(keys, y, z, scale="logit", **kw)


def _endpoint_rank(frame: pd.DataFrame, classes: Sequence[str], pos: Sequence[int]) -> tuple[np.ndarray, str]:
    """Each image's ranking score of an endpoint and its scale: the endpoint's log-odds from the logits
    (:func:`medxcept.evaluation.multiclass.endpoint_logit`), else its uncalibrated probability."""
    z = _logits(frame, classes)
    if z is None:
        return endpoint_probability(_probs(frame, classes, "prob_raw_"), pos), "probability"
    return endpoint_logit(ranking_scores(z), pos), "logit"


def _discrimination_from(frame: pd.DataFrame, classes: Sequence[str]) -> str:
    return ("uncalibrated logits (logit_<class>: one-vs-rest log-odds, computed in log space)"
            if _logits(frame, classes) is not None else "uncalibrated probabilities (prob_raw_<class>)")


def _unit_keys(frame: pd.DataFrame, eval_cfg: Any) -> np.ndarray:
    """Each row's evaluation unit (``eval.unit``: the patient, or the patient's visit), as the
    binary path's (:func:`medxcept.evaluation.units.unit_visits`)."""
    return np.asarray(unit_keys(frame["patient_key"].astype(str),
                                unit_visits(frame, getattr(eval_cfg, "unit", "patient"))), dtype=str)


_RANK = ("roc_auc", "pr_auc")


def _endpoint_ci(y: np.ndarray, p: np.ndarray, p_raw: np.ndarray, groups: np.ndarray, threshold: float,
                 n_boot: int, seed: int) -> dict[str, Any]:
    """Patient-bootstrap CIs: ranking metrics of the uncalibrated scores ``p_raw`` (logits, or
    probabilities), threshold metrics of ``p``, on the same resamples (same groups and seed)."""
    cut = [m for m in ENDPOINT_CI_METRICS if m not in _RANK]
    out = dict(bootstrap_ci(y, p, groups, metrics=cut, threshold=threshold, n_resamples=n_boot, seed=seed))
    out.update(bootstrap_ci(y, p_raw, groups, metrics=[m for m in ENDPOINT_CI_METRICS if m in _RANK],
                            threshold=None, n_resamples=n_boot, seed=seed))
    return {m: out[m].to_dict() for m in ENDPOINT_CI_METRICS}


def _with_rank(metrics: dict[str, Any], y: np.ndarray, p_raw: np.ndarray) -> dict[str, Any]:
    """``metrics`` (calibrated, at the threshold) with ROC-AUC and PR-AUC of the uncalibrated scores ``p_raw``."""
    rank = ranking_metrics(y, p_raw)
    notes = [n for n in metrics["notes"] if not n.startswith(_RANK)] + rank["notes"]
    return {**metrics, "roc_auc": rank["roc_auc"], "pr_auc": rank["pr_auc"], "notes": notes}


def endpoint_report(*, name: str, rule: str, positive: Sequence[int], classes: Sequence[str], kind: str,
                    val: pd.DataFrame | None, test: pd.DataFrame, eval_cfg: Any, seed: int,
                    threshold: float | None = None) -> dict[str, Any]:
    """The full binary report of one derived endpoint (see the module notes).

    ``threshold``: a threshold fixed beforehand (external validation); otherwise it is chosen on
    ``val`` with ``eval_cfg.threshold`` / ``eval_cfg.target_sensitivity``.
    """
    pos = sorted(int(i) for i in positive)
    operating: list[dict[str, Any]] | None = None
    upper_set = kind == "ordinal" and pos == list(range(pos[0], len(classes)))
    how = "max" if upper_set else eval_cfg.patient_aggregation
    out: dict[str, Any] = {"name": name, "rule": rule, "positive_classes": [classes[i] for i in pos],
                           "patient_aggregation": how,
                           "patient_aggregation_reason": (
                               "worst eye: P(patient positive) is the maximum over their images, consistent with "
                               "the worst-grade patient label" if upper_set else
                               f"eval.patient_aggregation ({how}); the patient is positive when any image is")}
    unit = "visit" if any(" @ " in k for k in _unit_keys(test, eval_cfg)) else "patient"
    if threshold is None:
        assert val is not None, "a threshold needs the validation split"
        pv = endpoint_probability(_probs(val, classes, "prob_"), pos)
        yv = np.isin(val["y"].to_numpy(), pos).astype(np.int64)
        # chosen on the kind of score the headline applies it to: the validation units' (as the
        # binary path); so are the clinical reading's operating points
        _, vyp, vpp = aggregate_by_patient(_unit_keys(val, eval_cfg), yv, pv, how=how)
        threshold = choose_threshold(vyp, vpp, method=eval_cfg.threshold, target=eval_cfg.target_sensitivity)
        out["val_image"] = binary_metrics(yv, pv, threshold=threshold)
        operating = operating_thresholds(vyp, vpp)
        out["threshold"] = {"value": float(threshold), "method": eval_cfg.threshold, "chosen_on": "validation",
                            "level": unit, "patient_aggregation": how, "n_validation_units": int(len(vyp)),
                            "target_sensitivity": (eval_cfg.target_sensitivity
                                                   if eval_cfg.threshold == "sensitivity" else None)}
    else:
        out["threshold"] = {"value": float(threshold), "method": "fixed", "chosen_on": "the source run's validation",
                            "target_sensitivity": None}
    y = np.isin(test["y"].to_numpy(), pos).astype(np.int64)
    p = endpoint_probability(_probs(test, classes, "prob_"), pos)
    p_raw = endpoint_probability(_probs(test, classes, "prob_raw_"), pos)
    z, scale = _endpoint_rank(test, classes, pos)
    keys = test["patient_key"].to_numpy()
    ukeys = _unit_keys(test, eval_cfg)
    # ROC-AUC and PR-AUC rank the uncalibrated logits (the endpoint's log-odds; the unit's: the log-odds
    # of its aggregated probability); the threshold metrics use the calibrated probabilities
    out["test_image"] = _with_rank(binary_metrics(y, p, threshold=threshold), y, z)
    pk, yp, pp = aggregate_by_patient(ukeys, y, p, how=how)
    _, _, ppr = aggregate_by_patient(ukeys, y, p_raw, how=how)
    _, _, pz = aggregate_by_patient(ukeys, y, z, how=how, scale=scale)
    out["test_patient"] = _with_rank(binary_metrics(yp, pp, threshold=threshold), yp, pz)
    out["evaluation_unit"] = unit
    out["discrimination_from"] = _discrimination_from(test, classes)
    groups = unit_patients(pk)
    n_boot = int(eval_cfg.n_bootstrap)
    out["n_bootstrap"] = n_boot
    if n_boot:
        out["test_patient_ci"] = _endpoint_ci(yp, pp, pz, groups, threshold, n_boot, seed)
        out["test_image_ci"] = _endpoint_ci(y, p, z, keys, threshold, n_boot, seed)
    out["calibration_test"] = {"before": calibration_summary(y, p_raw, eval_cfg.n_bins),
                               "after": calibration_summary(y, p, eval_cfg.n_bins)}
    if np.unique(yp).size == 2:
        auc_ci = (out.get("test_patient_ci") or {}).get("roc_auc")
        out["operating_points"] = operating
        out["clinical"] = clinical_reading(
            yp, pp, ppr, groups, operating=operating, thresholds=decision_thresholds(*eval_cfg.decision_thresholds),
            prevalence=eval_cfg.prevalence, n_resamples=n_boot, seed=seed, unit=unit,
            auc_ci=None if auc_ci is None else (auc_ci["low"], auc_ci["high"]), y_rank=pz)
        out["clinical"]["calibration_method"] = eval_cfg.calibration
        if operating is None:
            out["clinical"]["operating_note"] = ("no operating points: they are chosen on the validation patients, "
                                                 "and the source run recorded none for this endpoint")
    return out


def assess_graded(*, val: pd.DataFrame | None, test: pd.DataFrame, classes: Sequence[str], task: str,
                  endpoints: Sequence[Any], eval_cfg: Any, seed: int, fixed: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Everything the report shows for a k-class run (see the module notes).

    Args:
        val, test: frames with ``y``, ``patient_key``, ``laterality``, ``prob_raw_<c>``, ``prob_<c>``.
        classes: class names (ordinal: mildest first).
        task: ``"nominal"`` or ``"ordinal"``.
        endpoints: :class:`medxcept.cohort.table.Endpoint` objects.
        eval_cfg: :class:`medxcept.config.EvalConfig` (bootstrap resamples, bins, threshold method).
        seed: bootstrap seed.
        fixed: ``{"decision_rule": {...}, "endpoint_thresholds": {name: t}}`` chosen earlier (external
            validation); ``None`` chooses them on ``val``.

    Returns:
        ``task``, ``decision_rule``, ``patient_rule``, ``test_image``, ``test_patient`` (and
        ``test_eye`` when lateralities are known), ``calibration_test`` (``before``/``after``, each
        :func:`medxcept.evaluation.multiclass.calibration_report`), ``endpoints`` (name -> :func:`endpoint_report`),
        ``n_bootstrap``.
    """
    classes = [str(c) for c in classes]
    n_boot = int(eval_cfg.n_bootstrap)
    if fixed is not None:
        rule = DecisionRule.from_dict(fixed["decision_rule"])
    else:
        assert val is not None, "the decision rule is chosen on the validation split"
        # on the validation units (worst eye for ordinal tasks), the level the headline reads it at
        vlat = val["laterality"].to_numpy() if "laterality" in val else None
        vunits = aggregate_units(_unit_keys(val, eval_cfg), val["y"].to_numpy(), _probs(val, classes, "prob_"),
                                 kind=task, laterality=vlat, level="patient")
        rule = choose_decision_rule(vunits.y, vunits.P, kind=task)
    y = test["y"].to_numpy()
    P = _probs(test, classes, "prob_")
    P_raw = _rank_scores(test, classes)  # what the AUCs rank: the uncalibrated logits' log-odds
    keys = test["patient_key"].to_numpy()
    ukeys = _unit_keys(test, eval_cfg)
    lat = test["laterality"].to_numpy() if "laterality" in test else None
    kw = {"classes": classes, "kind": task, "rule": rule, "n_resamples": n_boot, "seed": seed}
    out: dict[str, Any] = {"task": task, "classes": classes, "decision_rule": rule.to_dict(), "n_bootstrap": n_boot,
                           "decision_rule_level": "validation units (patients, worst eye when ordinal; or visits: "
                                                  "eval.unit)" if fixed is None else "fixed by the source run",
                           "discrimination_from": _discrimination_from(test, classes)}
    out["test_image"] = multiclass_report(y, P, keys, P_rank=P_raw, **kw)
    patients = aggregate_units(ukeys, y, P, kind=task, laterality=lat, level="patient")
    patients_raw = _rank_units(ukeys, y, test, classes, kind=task, laterality=lat, level="patient")
    out["patient_rule"] = patients.rule
    out["patient_notes"] = list(patients.notes)
    out["evaluation_unit"] = "visit" if any(" @ " in k for k in ukeys) else "patient"
    out["test_patient"] = multiclass_report(patients.y, patients.P, unit_patients(patients.patients),
                                            P_rank=patients_raw.P, **kw)
    known = lat is not None and bool(np.isin(lat, ("L", "R")).all())
    one_per_eye = known and not pd.Series(list(zip(keys, lat, strict=True))).duplicated().any()
    if one_per_eye:
        out["eye_rule"] = "one image per eye here: the eye level equals the image level"
    elif known:
        eyes = aggregate_units(keys, y, P, kind=task, laterality=lat, level="eye")
        eyes_raw = _rank_units(keys, y, test, classes, kind=task, laterality=lat, level="eye")
        out["test_eye"] = multiclass_report(eyes.y, eyes.P, eyes.patients, P_rank=eyes_raw.P, **kw)
        out["eye_rule"] = eyes.rule
    out["calibration_test"] = {
        "before": calibration_report(y, _probs(test, classes, "prob_raw_"), classes=classes, n_bins=eval_cfg.n_bins),
        "after": calibration_report(y, P, classes=classes, n_bins=eval_cfg.n_bins)}
    thresholds = (fixed or {}).get("endpoint_thresholds", {})
    out["endpoints"] = {
        e.name: endpoint_report(name=e.name, rule=e.rule, positive=e.positive, classes=classes, kind=task,
                                val=val, test=test, eval_cfg=eval_cfg, seed=seed,
                                threshold=thresholds.get(e.name) if fixed is not None else None)
        for e in endpoints}
    return out


def endpoint_scores(graded: dict[str, Any], test: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """Per endpoint of ``graded``, the image-level scores its figure draws: ``y`` (0/1), ``raw`` (what the
    image-level AUC ranks: the endpoint's log-odds from the logits, else its uncalibrated probability)
    and ``calibrated`` (what its threshold applies to), for :func:`medxcept.report.graded.graded_figures`."""
    classes = graded["classes"]
    P = _probs(test, classes, "prob_")
    raw_known = all(f"prob_raw_{c}" in test for c in classes) or _logits(test, classes) is not None
    out = {}
    for name, e in graded["endpoints"].items():
        pos = [classes.index(c) for c in e["positive_classes"]]
        raw = _endpoint_rank(test, classes, pos)[0] if raw_known else endpoint_probability(P, pos)
        out[name] = {"y": np.isin(test["y"].to_numpy(), pos).astype(int),
                     "raw": raw, "calibrated": endpoint_probability(P, pos)}
    return out


# ------------------------------------------------------------------------- cross-validation

def fold_predictions(frame: pd.DataFrame, graded: dict[str, Any], *, repeat: int, fold: int) -> pd.DataFrame:
    """One fold's out-of-fold predictions for pooling: ids, ``y``, ``logit_<c>``, ``prob_raw_<c>``, ``prob_<c>``, the
    fold's own predicted class (``pred``, its decision rule) and per endpoint its threshold
    (``threshold_<name>``)."""
    classes = graded["classes"]
    cols = [c for c in ("image_id", "patient_key", "laterality", "source", "label", "y") if c in frame.columns]
    logits = [f"logit_{c}" for c in classes] if _logits(frame, classes) is not None else []
    out = frame[cols + logits + [f"prob_raw_{c}" for c in classes] + [f"prob_{c}" for c in classes]].copy()
    out.insert(0, "repeat", repeat)
    out.insert(1, "fold", fold)
    out["pred"] = DecisionRule.from_dict(graded["decision_rule"]).predict(_probs(frame, classes, "prob_"))
    for name, e in graded["endpoints"].items():
        out[f"threshold_{name}"] = float(e["threshold"]["value"])
    return out


def _pooled_endpoint(df: pd.DataFrame, e: Any, classes: list[str], kind: str, eval_cfg: Any, seed: int
                     ) -> dict[str, Any]:
    pos = sorted(e.positive)
    upper_set = kind == "ordinal" and pos == list(range(pos[0], len(classes)))
    how = "max" if upper_set else eval_cfg.patient_aggregation
    frame = pd.DataFrame({"unit": df["unit"], "patient": df["patient_key"].astype(str),
                          "y": np.isin(df["y"].to_numpy(), pos).astype(np.int64),
                          "p": endpoint_probability(_probs(df, classes, "prob_"), pos),
                          "p_raw": endpoint_probability(_probs(df, classes, "prob_raw_"), pos),
                          "t": df[f"threshold_{e.name}"].to_numpy()})
    z, scale = _endpoint_rank(df, classes, pos)  # what the AUCs rank: each fold's uncalibrated logits
    out: dict[str, Any] = {"name": e.name, "rule": e.rule, "positive_classes": [classes[i] for i in pos],
                           "patient_aggregation": how,
                           "patient_aggregation_reason": (
                               "worst eye: the maximum over their images" if upper_set else f"the {how} over their "
                               "images") + "; sensitivity and specificity apply each fold's own threshold",
                           "threshold": {"value": float(frame["t"].median()), "method": "per fold",
                                         "chosen_on": "each fold's inner validation split", "target_sensitivity": None},
                           "n_bootstrap": int(eval_cfg.n_bootstrap)}
    units = frame.groupby("unit").agg(y=("y", "max"), p=("p", how), p_raw=("p_raw", how), t=("t", "first"),
                                      patient=("patient", "first"))
    ukeys, _, uz = aggregate_by_patient(frame["unit"].to_numpy(), frame["y"].to_numpy(), z, how=how, scale=scale)
    units["z"] = pd.Series(uz, index=ukeys.astype(str)).reindex(units.index.astype(str)).to_numpy()
    frame["z"] = z
    for level, f in (("image", frame), ("patient", units)):
        y, p, p_raw = f["y"].to_numpy(), f["p"].to_numpy(), f["z"].to_numpy()
        pred = (p >= f["t"].to_numpy()).astype(np.float64)
        rank = ranking_metrics(y, p_raw)  # each fold's uncalibrated scores, never its calibrated ones
        thr = binary_metrics(y, pred, threshold=0.5)
        out[f"test_{level}"] = {**thr, "roc_auc": rank["roc_auc"], "pr_auc": rank["pr_auc"],
                                "threshold": out["threshold"]["value"],
                                "notes": [n for n in rank["notes"] if n.startswith(("roc", "pr_"))] + [
                                    n for n in thr["notes"] if not n.startswith(("roc", "pr_"))]}
        if eval_cfg.n_bootstrap:
            groups = f["patient"].to_numpy()
            cis = bootstrap_ci(y, p_raw, groups, metrics=("roc_auc", "pr_auc"), threshold=None,
                               n_resamples=eval_cfg.n_bootstrap, seed=seed)
            cis.update(bootstrap_ci(y, pred, groups, metrics=[m for m in ENDPOINT_CI_METRICS if m not in cis],
                                    threshold=0.5, n_resamples=eval_cfg.n_bootstrap, seed=seed))
            out[f"test_{level}_ci"] = {k: v.to_dict() for k, v in cis.items()}
    out["calibration_test"] = {"before": calibration_summary(units["y"].to_numpy(), units["p_raw"].to_numpy(),
                                                             eval_cfg.n_bins),
                               "after": calibration_summary(units["y"].to_numpy(), units["p"].to_numpy(),
                                                            eval_cfg.n_bins)}
    return out


def pooled_report(frames: Sequence[pd.DataFrame], *, classes: Sequence[str], task: str, endpoints: Sequence[Any],
                  eval_cfg: Any, seed: int) -> dict[str, Any]:
    """Pooled out-of-fold graded metrics with patient-bootstrap CIs (frames of :func:`fold_predictions`).

    Every patient is predicted once per repeat by the model that did not see them, with that fold's
    decision rule and endpoint thresholds (chosen on the fold's inner validation split, a share of its
    training folds' patients: :func:`medxcept.evaluation.kfold.fold_split`). Patient units are (repeat, patient); the bootstrap
    resamples patients (with all their units). Ordinal patient grades and predictions are the
    worst over the patient's images (the maximum of the fold's image predictions equals the fold's
    rule applied to the aggregated probabilities); nominal predictions are the argmax of the
    patient's mean probabilities.
    """
    classes = [str(c) for c in classes]
    df = pd.concat(list(frames), ignore_index=True)
    df["unit"] = "r" + df["repeat"].astype(str) + ":" + df["patient_key"].astype(str)
    y, P, pred = df["y"].to_numpy(), _probs(df, classes, "prob_"), df["pred"].to_numpy()
    groups = df["patient_key"].astype(str).to_numpy()
    kw = {"classes": classes, "kind": task, "n_resamples": int(eval_cfg.n_bootstrap), "seed": seed}
    out: dict[str, Any] = {"task": task, "classes": classes, "n_bootstrap": int(eval_cfg.n_bootstrap),
                           "n_images": int(len(df)), "n_folds": int(df.groupby(["repeat", "fold"]).ngroups)}
    P_raw = _rank_scores(df, classes)  # what the AUCs rank: each fold's uncalibrated logits
    out["discrimination_from"] = _discrimination_from(df, classes)
    out["card_metrics"] = class_metric_names(task, card=True)  # the k-fold report's summary cards
    out["test_image"] = multiclass_report(y, P, groups, y_pred=pred, P_rank=P_raw, **kw)
    lat = df["laterality"].to_numpy() if task == "nominal" and "laterality" in df else None
    units = aggregate_units(df["unit"].to_numpy(), y, P, kind=task, laterality=lat, level="patient")
    unit_patient = np.array([u.split(":", 1)[1].split("|", 1)[0] for u in units.keys])
    if task == "ordinal":
        unit_pred = df.groupby("unit")["pred"].max().reindex(units.keys).to_numpy()
    else:
        unit_pred = units.P.argmax(axis=1)
    units_raw = _rank_units(df["unit"].to_numpy(), y, df, classes, kind=task, laterality=lat, level="patient")
    out["test_patient"] = multiclass_report(units.y, units.P, unit_patient, y_pred=unit_pred, P_rank=units_raw.P,
                                            **kw)
    out["patient_rule"] = units.rule
    out["patient_notes"] = list(units.notes)
    out["decision_rule"] = {"kind": "per fold", "description": "each fold's own decision rule",
                            "chosen_on": "that fold's inner validation split (never its held-out fold)"}
    out["calibration_test"] = {
        "before": calibration_report(y, _probs(df, classes, "prob_raw_"), classes=classes, n_bins=eval_cfg.n_bins),
        "after": calibration_report(y, P, classes=classes, n_bins=eval_cfg.n_bins)}
    out["endpoints"] = {e.name: _pooled_endpoint(df, e, classes, task, eval_cfg, seed) for e in endpoints}
    return out


def fold_row(graded: dict[str, Any]) -> dict[str, Any]:
    """One fold's patient-level point estimates for the across-fold summary: every registered k-class
    metric of the task (:data:`medxcept.evaluation.class_metrics.CLASS_METRICS`), each class's ROC-AUC,
    and each endpoint's ROC-AUC, sensitivity and specificity."""
    r = graded["test_patient"]
    # the registry at call time (a fold measured by older code lacks the metrics added since)
    row = {m: r[m]["point"] for m in class_metric_names(graded["task"]) if m in r and metric_in_cv(m)}
    for c, v in r["per_class"].items():
        row[f"roc_auc_{c}"] = v["roc_auc"]["point"]
    for m in class_metrics(graded["task"], kind="per_class", cv=True):
        for c, v in r["per_class"].items():
            if m.name in v:
                row[f"{m.name}_{c}"] = v[m.name]["point"]
    for name, e in graded["endpoints"].items():
        for m in ("roc_auc", "sensitivity", "specificity"):
            row[f"{name}_{m}"] = e["test_patient"][m]
    return row


# ------------------------------------------------------------------------------- comparing runs


def compare_graded_runs(run_dirs: Sequence[Any], *, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Compare finished k-class runs on the same test images, patient level, paired by patient.

    Each run's own numbers (kappa, macro AUC with their CIs, from ``metrics.json``) and, for every
    pair, the paired patient-bootstrap difference of macro ROC-AUC and (ordinal) quadratic kappa
    (:func:`medxcept.evaluation.multiclass.paired_comparison`; each run's predictions with its own decision
    rule, patients by the worst-eye rule) and of each endpoint's patient ROC-AUC
    (:func:`medxcept.evaluation.intervals.paired_bootstrap_auc`).

    Raises:
        ConfigError: a run that is not a finished k-class run, or runs on different test images,
            classes or tasks.
    """
    import json
    from pathlib import Path

    from medxcept.errors import ConfigError
    from medxcept.evaluation.intervals import paired_bootstrap_auc
    from medxcept.evaluation.multiclass import paired_comparison

    runs = []
    for d in run_dirs:
        path = Path(d)
        need = [f for f in ("metrics.json", "predictions.csv", "calibration.json") if not (path / f).is_file()]
        if need:
            raise ConfigError(f"{path} is not a finished run directory: missing {', '.join(need)}")
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        if "graded" not in metrics:
            raise ConfigError(f"run {path.name}: not a graded / multi-class run (classes {metrics.get('classes')}); "
                              "compare binary runs separately")
        cal = json.loads((path / "calibration.json").read_text(encoding="utf-8"))
        preds = pd.read_csv(path / "predictions.csv", dtype={"image_id": str, "patient_key": str})
        runs.append({"name": str(metrics.get("run", {}).get("id") or path.name), "metrics": metrics,
                     "rule": DecisionRule.from_dict(cal["decision_rule"]),
                     "preds": preds.sort_values("image_id", kind="stable").reset_index(drop=True)})
    first = runs[0]
    g0 = first["metrics"]["graded"]
    classes, kind = g0["classes"], g0["task"]
    for r in runs[1:]:
        g = r["metrics"]["graded"]
        if g["classes"] != classes or g["task"] != kind:
            raise ConfigError(f"run {r['name']} has classes {g['classes']} ({g['task']}), run {first['name']} "
                              f"{classes} ({kind}): compare runs of one cohort")
        if r["preds"]["image_id"].tolist() != first["preds"]["image_id"].tolist():
            raise ConfigError(f"runs {first['name']} and {r['name']} were tested on different images: compare "
                              "runs with the same split (same split.seed and data)")
    y = first["preds"]["y"].to_numpy()
    keys = first["preds"]["patient_key"].to_numpy()
    lat = first["preds"]["laterality"].to_numpy() if "laterality" in first["preds"] else None
    per_run, units = [], []
    for r in runs:
        P = _probs(r["preds"], classes, "prob_")
        agg = aggregate_units(keys, y, P, kind=kind, laterality=lat)
        pred = r["rule"].predict(agg.P)
        scale = "probability"
        if _logits(r["preds"], classes) is not None:  # AUCs rank the uncalibrated logits' log-odds
            agg, scale = _rank_units(keys, y, r["preds"], classes, kind=kind, laterality=lat), "logit"
        elif all(f"prob_raw_{c}" in r["preds"] for c in classes):  # else the uncalibrated probabilities
            agg = aggregate_units(keys, y, _probs(r["preds"], classes, "prob_raw_"), kind=kind, laterality=lat)
        units.append((agg, pred, scale))
        tp = r["metrics"]["graded"]["test_patient"]
        per_run.append({"name": r["name"], "recipe": r["metrics"].get("run", {}).get("recipe"),
                        "decision_rule": r["rule"].to_dict()["description"],
                        **{m: tp[m] for m in class_metric_names(kind) if m in tp},
                        **{f"{m.name}_{c}": v[m.name] for m in class_metrics(kind, kind="per_class", compare=True)
                           for c, v in tp["per_class"].items()}})
    pairs = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            (a, pa, sa), (b, pb, sb) = units[i], units[j]
            if sa != sb:  # one run without logits: both on probabilities, as before logits were stored
                a = aggregate_units(keys, y, _probs(runs[i]["preds"], classes, "prob_raw_"), kind=kind, laterality=lat)
                b = aggregate_units(keys, y, _probs(runs[j]["preds"], classes, "prob_raw_"), kind=kind, laterality=lat)
                sa = sb = "probability"
            entry: dict[str, Any] = {"run1": runs[i]["name"], "run2": runs[j]["name"],
                                     **paired_comparison(a.y, a.P, b.P, a.patients, kind=kind, pred1=pa, pred2=pb,
                                                         n_resamples=n_resamples, seed=seed, scale=sa)}
            score = endpoint_logit if sa == "logit" else endpoint_probability
            for e in g0["endpoints"].values():
                pos = [classes.index(c) for c in e["positive_classes"]]
                ye = np.isin(a.y, pos).astype(np.int64)
                if 0 < ye.sum() < ye.size:
                    entry[f"{e['name']}_roc_auc"] = paired_bootstrap_auc(
                        ye, score(a.P, pos), score(b.P, pos), a.patients,
                        n_resamples=n_resamples, seed=seed)
            pairs.append(entry)
    shown = [m.name for m in class_metrics(kind, compare=True) if m.kind != "per_class"] + [
        f"{m.name}_{c}" for m in class_metrics(kind, kind="per_class", compare=True) for c in classes]
    return {"kind": "graded", "task": kind, "classes": classes, "metric_names": shown,
            "n_patients": int(len(units[0][0].y)),
            "n_images": int(len(y)), "patient_rule": units[0][0].rule, "runs": per_run, "pairs": pairs,
            "n_resamples": n_resamples, "seed": seed}
