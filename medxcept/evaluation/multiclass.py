"""Graded and multi-class tasks: patient level, decision rules, metrics with patient-bootstrap CIs.

Pure functions on labels and class probabilities (nothing reads files or models), the k-class
counterpart of :mod:`medxcept.evaluation.metrics`. Two kinds of task (:data:`KINDS`):

* **nominal**: unordered classes (normal / cataract / glaucoma / DR);
* **ordinal**: ordered grades (ICDR 0-4); class index = grade.

**The patient (or eye) of an ordinal task has its worst grade.** A patient's label is the highest
grade over their images, and their probabilities are aggregated the same way, on the cumulative
scale: ``P(patient grade >= g) = max over images of P(image grade >= g)`` for every g
(:func:`aggregate_units`). The class distribution of the patient follows from these (successive
differences). This is the rule of comonotone eyes (fellow eyes as correlated as they can be): it
is a lower bound of the independence rule ``1 - prod(1 - P_i)``, never exceeds the evidence of the
single worst image, and it makes everything downstream consistent with the worst-eye label:

* a derived endpoint ``grade >= g`` has, for the patient, the maximum over images of its image
  probability: exactly the binary ``max`` aggregation of that endpoint;
* with the ordinal decision rule (:class:`DecisionRule`, ``kind="cumulative"``: the grade is the
  highest g with ``P(grade >= g) >= t_g``), the predicted grade of the patient is the maximum of
  the predicted grades of their images, for any thresholds (``tests/test_multiclass.py`` checks
  both properties).

Nominal tasks have no "worst" class: a patient's probabilities are the mean over their images, and
a patient whose images carry different classes is evaluated per eye (per image if one eye still
disagrees), with a note; the bootstrap still resamples whole patients.

**Decision rule.** Nominal: argmax. Ordinal: cumulative thresholds ``t_1..t_{k-1}`` (all 0.5: the
median grade of the predicted distribution), or chosen on the **validation** split to maximize
quadratic-weighted kappa (:func:`choose_decision_rule`) and applied unchanged to test.

**Metrics** (:func:`multiclass_report`): per-class one-vs-rest ROC-AUC and PR-AUC, macro and
(support-)weighted ROC-AUC, macro PR-AUC, balanced accuracy, accuracy, the confusion matrix, and for
ordinal tasks quadratic-weighted Cohen's kappa and the mean absolute grade error, each with a
percentile bootstrap CI resampling patients. The bootstrap is vectorized as in
:func:`medxcept.evaluation.intervals.bootstrap_ci`: a resample is a vector of draw counts per patient, rank
metrics come from weighted rank statistics, confusion-matrix metrics from per-patient cell counts.

**Calibration**: top-label ECE (:func:`medxcept.evaluation.calibrate.ece` on (n, k)), class-wise ECE (the mean
over classes of the binary ECE of ``P[:, c]`` against ``y == c``; Kull et al. 2019) and the
reliability data of both (:func:`calibration_report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

from medxcept.evaluation.calibrate import brier, ece, mce, nll, reliability_table
from medxcept.evaluation.intervals import (
    BootstrapCI,
    RankIndex,
    as_group_codes,
    block_rows,
    check_bootstrap_args,
    draw_counts,
    percentile_ci,
    weighted_ap,
    weighted_auc,
)
from medxcept.evaluation.units import unit_keys

__all__ = [
    "KINDS",
    "unit_macro_auc",
    "Aggregated",
    "DecisionRule",
    "as_class_indices",
    "check_probabilities",
    "cumulative_probs",
    "probs_from_cumulative",
    "aggregate_units",
    "choose_decision_rule",
    "confusion_matrix",
    "quadratic_kappa",
    "multiclass_report",
    "classwise_ece",
    "calibration_report",
    "endpoint_probability",
    "paired_comparison",
]

KINDS = ("nominal", "ordinal")


# --------------------------------------------------------------------------- inputs


def as_class_indices(y_true: ArrayLike, k: int, *, name: str = "y_true") -> np.ndarray:
    """Class indices ``0..k-1`` as int64; raise naming the bad values."""
    y_raw = np.asarray(y_true)
    if y_raw.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {y_raw.shape}")
    if y_raw.size == 0:
        raise ValueError(f"{name} is empty: there is nothing to evaluate")
    if not np.issubdtype(y_raw.dtype, np.number) and y_raw.dtype != bool:
        raise ValueError(f"{name} must hold class indices 0..{k - 1}; got dtype {y_raw.dtype}")
    y = y_raw.astype(np.int64)
    bad = (y != y_raw) | (y < 0) | (y >= k)
    if bad.any():
        raise ValueError(f"{name} must hold class indices 0..{k - 1}; found {sorted(set(y_raw[bad].tolist()))[:5]}")
    return y


def check_probabilities(P: ArrayLike, n: int | None = None, *, name: str = "P", atol: float = 1e-4) -> np.ndarray:
    """(n, k) class probabilities, k >= 2, rows summing to 1 (within ``atol``); float64."""
    p = np.asarray(P, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"{name} must have shape (n, k) with k >= 2; got {p.shape}")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"{name} has {p.shape[0]} rows but there are {n} labels")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(p)).sum())} NaN or infinite values")
    if p.min() < -atol or p.max() > 1 + atol:
        raise ValueError(f"{name} must hold probabilities in [0, 1]; found range [{p.min():.4g}, {p.max():.4g}]")
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > atol:
        raise ValueError(f"rows of {name} must sum to 1; row {worst} sums to {sums[worst]:.6g}")
    return np.clip(p, 0.0, 1.0)


def cumulative_probs(P: ArrayLike) -> np.ndarray:
    """``S[:, g] = P(grade >= g)`` for g = 0..k-1 (``S[:, 0] = 1``), from class probabilities (n, k)."""
    p = np.asarray(P, dtype=np.float64)
    s = np.cumsum(p[:, ::-1], axis=1)[:, ::-1]
    s[:, 0] = 1.0
    return np.clip(s, 0.0, 1.0)


def probs_from_cumulative(S: ArrayLike) -> np.ndarray:
    """Class probabilities from ``S[:, g] = P(grade >= g)`` (non-increasing in g, ``S[:, 0] = 1``)."""
    s = np.asarray(S, dtype=np.float64)
    nxt = np.concatenate([s[:, 1:], np.zeros((s.shape[0], 1))], axis=1)
    return np.clip(s - nxt, 0.0, 1.0)


# ------------------------------------------------------------------- patient / eye level


@dataclass(frozen=True)
class Aggregated:
    """One row per unit (patient or eye): its key, its patient, label and class probabilities.

    ``rule`` says in words how labels and probabilities were combined; ``notes`` what was
    special (nominal patients whose images disagree, evaluated per eye).
    """

    keys: np.ndarray
    patients: np.ndarray
    y: np.ndarray
    P: np.ndarray
    level: str
    rule: str
    notes: tuple[str, ...] = ()


def _group_reduce(codes: np.ndarray, values: np.ndarray, how: str) -> np.ndarray:
    order = np.argsort(codes, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(codes[order])) + 1]
    v = values[order]
    if how == "max":
        return np.maximum.reduceat(v, starts, axis=0)
    if how == "min":
        return np.minimum.reduceat(v, starts, axis=0)
    sums = np.add.reduceat(v.astype(np.float64), starts, axis=0)
    counts = np.diff(np.r_[starts, len(v)])
    return sums / (counts[:, None] if v.ndim == 2 else counts)


def aggregate_units(
    patient_key: ArrayLike,
    y_true: ArrayLike,
    P: ArrayLike,
    *,
    kind: str,
    laterality: ArrayLike | None = None,
    level: str = "patient",
) -> Aggregated:
    """One label and one class distribution per patient (``level="patient"``) or eye (``"eye"``).

    Parameters
    ----------
    patient_key : array-like of shape (n,)
        Patient pseudonym of each image.
    y_true : array-like of shape (n,)
        Class index of each image (ordinal: the grade).
    P : array-like of shape (n, k)
        Class probabilities of each image.
    kind : {"nominal", "ordinal"}
    laterality : array-like of shape (n,), optional
        ``L``/``R``/``NA`` of each image; needed for ``level="eye"`` and for nominal patients
        whose images disagree.
    level : {"patient", "eye"}, default "patient"

    Returns
    -------
    Aggregated
        Ordinal: the unit's grade is its worst (highest) image grade and
        ``P(unit grade >= g) = max over images of P(image grade >= g)`` (see the module notes).
        Nominal: the unit's class is its images' class and its probabilities their mean; a
        patient whose images disagree is split into eyes (into images if an eye disagrees).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {list(KINDS)}")
    if level not in ("patient", "eye"):
        raise ValueError(f"level={level!r} is not one of ['patient', 'eye']")
    keys_raw = np.asarray(patient_key).astype(str)
    n = keys_raw.shape[0]
    p = check_probabilities(P, n)
    k = p.shape[1]
    y = as_class_indices(y_true, k)
    lat = None if laterality is None else np.asarray(laterality).astype(str)
    if lat is not None and lat.shape != (n,):
        raise ValueError(f"laterality must be one value per image ({n}); got shape {lat.shape}")
    if level == "eye" and lat is None:
        raise ValueError("level='eye' needs the laterality of each image")
    unit = keys_raw if level == "patient" else np.char.add(np.char.add(keys_raw, "|"), lat)
    notes: list[str] = []
    if kind == "nominal":
        unit = unit.astype(object)  # finer keys are longer than the patient keys
        steps: list[tuple[str, np.ndarray]] = []
        if level == "patient" and lat is not None:
            steps.append(("eye", np.char.add(np.char.add(keys_raw, "|"), lat)))
        steps.append(("image", np.char.add(np.char.add(unit, "#"), np.arange(n).astype(str))))
        for stage, finer in steps:
            _, codes = np.unique(unit, return_inverse=True)
            codes = codes.ravel()
            mixed = np.flatnonzero(_group_reduce(codes, y, "min") != _group_reduce(codes, y, "max"))
            if mixed.size == 0:
                break
            rows = np.isin(codes, mixed)
            unit[rows] = finer[rows].astype(object)
            notes.append(f"{mixed.size} unit(s) had images of different classes: evaluated per {stage}")
    units, codes = np.unique(unit.astype(str), return_inverse=True)
    codes = codes.ravel()
    patient_of = _group_reduce(codes, np.unique(keys_raw, return_inverse=True)[1].ravel(), "max")
    patients = np.unique(keys_raw)[patient_of]
    if kind == "ordinal":
        y_u = _group_reduce(codes, y, "max")
        s_u = _group_reduce(codes, cumulative_probs(p), "max")
        p_u = probs_from_cumulative(s_u)
        rule = (f"per {level}: the worst (highest) grade of its images; P({level} grade >= g) = the maximum "
                "over its images of P(image grade >= g)")
    else:
        y_u = _group_reduce(codes, y, "max")  # all equal within a unit by construction
        p_u = _group_reduce(codes, p, "mean")
        rule = (f"per {level}: the class of its images and the mean of their probabilities (a {level} whose "
                "images disagree is split)")
    return Aggregated(keys=units, patients=patients, y=y_u.astype(np.int64), P=p_u, level=level, rule=rule,
                      notes=tuple(notes))


def unit_macro_auc(patient_key: ArrayLike, y_true: ArrayLike, P: ArrayLike, *, kind: str,
                   visit: ArrayLike | None = None) -> float:
    """The graded evaluation's patient (or visit) macro ROC-AUC, as a point: units by
    :func:`aggregate_units` (worst eye for ordinal tasks), then the mean one-vs-rest AUC over the
    classes present, as :func:`multiclass_report`'s ``macro_roc_auc``. NaN without two classes.
    Early stopping ranks epochs by it, so it picks the epoch by the number the report states.
    """
    p = np.asarray(P, dtype=np.float64)
    keys = unit_keys(patient_key, visit) if visit is not None else np.asarray(patient_key)
    units = aggregate_units(keys, y_true, p / p.sum(axis=1, keepdims=True), kind=kind)
    aucs = [float(roc_auc_score(units.y == c, units.P[:, c])) for c in range(p.shape[1])
            if 0 < int((units.y == c).sum()) < units.y.shape[0]]
    return float(np.mean(aucs)) if aucs else float("nan")


# ------------------------------------------------------------------------ decision rules


@dataclass(frozen=True)
class DecisionRule:
    """How class probabilities become one predicted class.

    ``kind="argmax"``: the most probable class (ties: the lower index). ``kind="cumulative"``
    (ordinal tasks): the highest grade g >= 1 with ``P(grade >= g) >= thresholds[g - 1]``, else 0.
    Thresholds all 0.5 give the median grade of the predicted distribution. Because the predicted
    grade is a maximum over g, it commutes with the worst-image aggregation of
    :func:`aggregate_units`: a patient's predicted grade is the worst of their images'.
    """

    kind: str = "argmax"
    thresholds: tuple[float, ...] = ()
    chosen_on: str = "default"

    def __post_init__(self) -> None:
        if self.kind not in ("argmax", "cumulative"):
            raise ValueError(f"decision rule kind={self.kind!r} is not one of ['argmax', 'cumulative']")
        if self.kind == "cumulative" and not self.thresholds:
            raise ValueError("a cumulative decision rule needs k - 1 thresholds")
        bad = [t for t in self.thresholds if not 0.0 <= t <= 1.0]
        if bad:
            raise ValueError(f"decision thresholds must be in [0, 1]; got {bad}")

    def predict(self, P: ArrayLike) -> np.ndarray:
        p = np.asarray(P, dtype=np.float64)
        if self.kind == "argmax":
            return p.argmax(axis=1).astype(np.int64)
        if p.shape[1] - 1 != len(self.thresholds):
            raise ValueError(f"{len(self.thresholds)} thresholds for {p.shape[1]} grades: need {p.shape[1] - 1}")
        return _cumulative_predict(cumulative_probs(p), np.asarray(self.thresholds))

    def to_dict(self) -> dict[str, Any]:
        text = ("argmax (the most probable class)" if self.kind == "argmax" else
                "the highest grade g with P(grade >= g) >= t_g; t = "
                + ", ".join(f"{t:.3g}" for t in self.thresholds))
        return {"kind": self.kind, "thresholds": list(self.thresholds), "chosen_on": self.chosen_on,
                "description": text}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecisionRule:
        return cls(kind=d["kind"], thresholds=tuple(float(t) for t in d.get("thresholds", ())),
                   chosen_on=d.get("chosen_on", "default"))


def _cumulative_predict(S: np.ndarray, t: np.ndarray) -> np.ndarray:
    hit = S[:, 1:] >= t[None, :]
    last = hit.shape[1] - np.argmax(hit[:, ::-1], axis=1)  # 1-based index of the last hit
    return np.where(hit.any(axis=1), last, 0).astype(np.int64)


def _candidates(values: np.ndarray, max_n: int = 64) -> np.ndarray:
    """Thresholds separating the distinct ``values`` (midpoints), at most ``max_n`` of them, plus 0.5."""
    u = np.unique(values)
    mids = (u[:-1] + u[1:]) / 2 if u.size > 1 else u
    if mids.size > max_n:
        mids = np.quantile(mids, np.linspace(0, 1, max_n))
    return np.unique(np.r_[mids, 0.5])


def choose_decision_rule(y_true: ArrayLike, P: ArrayLike, *, kind: str, tune: bool = True,
                         n_sweeps: int = 3) -> DecisionRule:
    """The decision rule for a task, chosen on the **validation** split.

    Nominal: argmax (nothing to choose). Ordinal with ``tune``: cumulative thresholds maximizing
    quadratic-weighted kappa on ``(y_true, P)``, by coordinate ascent from 0.5 over the midpoints
    between distinct validation values of ``P(grade >= g)``; ties keep the value closest to 0.5.
    Ordinal without ``tune``: all thresholds 0.5.
    """
    p = check_probabilities(P)
    k = p.shape[1]
    y = as_class_indices(y_true, k)
    if kind == "nominal":
        return DecisionRule("argmax", chosen_on="default")
    if kind != "ordinal":
        raise ValueError(f"kind={kind!r} is not one of {list(KINDS)}")
    t = np.full(k - 1, 0.5)
    if not tune or np.unique(y).size < 2:
        return DecisionRule("cumulative", tuple(t), chosen_on="default")
    S = cumulative_probs(p)
    best = quadratic_kappa(y, _cumulative_predict(S, t), k)
    best = -np.inf if best is None else best
    for _ in range(n_sweeps):
        changed = False
        for g in range(k - 1):
            cands = _candidates(S[:, g + 1])
            scores = []
            for c in cands:
                trial = t.copy()
                trial[g] = c
                kap = quadratic_kappa(y, _cumulative_predict(S, trial), k)
                scores.append(-np.inf if kap is None else kap)
            scores_a = np.asarray(scores)
            top = scores_a.max()
            if top > best + 1e-12:
                ties = cands[scores_a >= top - 1e-12]
                t[g] = float(ties[np.argmin(np.abs(ties - 0.5))])
                best, changed = top, True
        if not changed:
            break
    return DecisionRule("cumulative", tuple(float(v) for v in t), chosen_on="validation (max quadratic kappa)")


# ------------------------------------------------------------------------- point metrics


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts: rows the true class, columns the predicted one (all k classes kept)."""
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _kappa_from_cm(cm: np.ndarray) -> np.ndarray:
    """Quadratic-weighted kappa of (..., k, k) confusion matrices; NaN where undefined."""
    cm = cm.astype(np.float64)
    k = cm.shape[-1]
    i = np.arange(k)
    w = (i[:, None] - i[None, :]) ** 2
    n = cm.sum(axis=(-2, -1))
    rows, cols = cm.sum(axis=-1), cm.sum(axis=-2)
    expected = np.einsum("...i,...j,ij->...", rows, cols, w)
    observed = np.einsum("...ij,ij->...", cm, w)
    out = np.full(n.shape, np.nan)
    ok = (expected > 0) & (n > 0)
    np.divide(observed * n, expected, out=out, where=ok)
    return np.where(ok, 1.0 - out, np.nan)


def quadratic_kappa(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float | None:
    """Cohen's kappa with quadratic weights ``(i - j)^2`` over grades 0..k-1; ``None`` if undefined.

    Equals ``sklearn.metrics.cohen_kappa_score(y_true, y_pred, weights="quadratic",
    labels=range(k))`` (the grade distances are the true ones even when a grade is absent).
    """
    v = float(_kappa_from_cm(confusion_matrix(y_true, y_pred, k)))
    return None if np.isnan(v) else v


def _cm_metrics(cm: np.ndarray, names: Sequence[str], present: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion-matrix metrics of (B, k, k) matrices: balanced accuracy, accuracy, kappa, MAE."""
    cm = cm.astype(np.float64)
    k = cm.shape[-1]
    diag = np.einsum("bii->bi", cm)
    support = cm.sum(axis=2)
    n = support.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    if "balanced_accuracy" in names:
        recall = np.full(support.shape, np.nan)
        np.divide(diag, support, out=recall, where=support > 0)
        with np.errstate(invalid="ignore"):
            out["balanced_accuracy"] = np.nanmean(np.where(support > 0, recall, np.nan), axis=1)
    if "accuracy" in names:
        out["accuracy"] = np.where(n > 0, diag.sum(axis=1) / np.maximum(n, 1), np.nan)
    if "kappa_quadratic" in names:
        out["kappa_quadratic"] = _kappa_from_cm(cm)
    if "mae_grade" in names:
        i = np.arange(k)
        dist = np.abs(i[:, None] - i[None, :])
        out["mae_grade"] = np.where(n > 0, np.einsum("bij,ij->b", cm, dist) / np.maximum(n, 1), np.nan)
    return out


# ----------------------------------------------------------------------- the full report


_RANK = ("roc_auc", "pr_auc")


def multiclass_report(
    y_true: ArrayLike,
    P: ArrayLike,
    groups: ArrayLike | None,
    *,
    classes: Sequence[str],
    kind: str,
    rule: DecisionRule | None = None,
    y_pred: ArrayLike | None = None,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    P_rank: ArrayLike | None = None,
) -> dict[str, Any]:
    """Every k-class metric with a percentile bootstrap CI, resampling patients.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Class indices (of images, or of the units of :func:`aggregate_units`).
    P : array-like of shape (n, k)
        Class probabilities, columns in the order of ``classes``.
    groups : array-like of shape (n,) or None
        Patient key of each row: a resample draws patients with replacement and takes all their
        rows. ``None`` resamples rows.
    classes : sequence of str
    kind : {"nominal", "ordinal"}
        Ordinal adds ``kappa_quadratic`` and ``mae_grade``.
    rule : DecisionRule, optional
        Turns ``P`` into predictions (default: argmax for nominal, cumulative 0.5 for ordinal).
        Choose it on validation (:func:`choose_decision_rule`).
    y_pred : array-like of shape (n,), optional
        Predicted classes made beforehand (pooled out-of-fold predictions, each fold with its own
        rule); ``rule`` is then only described, not applied.
    n_resamples : int, default 1000
        ``0``: point estimates only; every interval is then ``None`` and ``n_bootstrap`` says 0.
    alpha : float, default 0.05
    seed : int, default 0
    P_rank : array-like of shape (n, k), optional
        The scores the per-class (one-vs-rest) ROC-AUC and PR-AUC and their means rank: the
        **uncalibrated** probabilities (multi-class temperature scaling changes one-vs-rest
        rankings). Default ``P``.

    Returns
    -------
    dict
        ``classes``, ``kind``, ``n``, ``n_patients``, ``per_class`` (name -> ``n``, ``roc_auc``,
        ``pr_auc``, ``recall``, ``precision``), ``macro_roc_auc``, ``weighted_roc_auc``,
        ``macro_pr_auc``, ``balanced_accuracy``, ``accuracy`` (+ ``kappa_quadratic``,
        ``mae_grade``): each metric a :meth:`BootstrapCI.to_dict`; ``confusion_matrix`` (rows:
        true class), ``decision_rule``, ``n_bootstrap``, ``alpha`` and ``notes``.

    Notes
    -----
    A class absent from ``y_true`` (or the only class) has no ROC-AUC or PR-AUC; the macro and
    weighted means are then over the classes that have them, in every resample alike (a resample
    missing one of those classes is dropped for the mean, counted in ``n_dropped``). The weighted
    mean weighs each class by its support, as scikit-learn's ``average="weighted"``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {list(KINDS)}")
    names = [str(c) for c in classes]
    k = len(names)
    p = check_probabilities(P)
    if p.shape[1] != k:
        raise ValueError(f"P has {p.shape[1]} columns for {k} classes {names}")
    y = as_class_indices(y_true, k)
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"P has {p.shape[0]} rows but y_true has {y.shape[0]} labels")
    if rule is None:
        rule = DecisionRule("argmax") if kind == "nominal" else DecisionRule("cumulative", (0.5,) * (k - 1))
    n_resamples = int(n_resamples)
    if n_resamples:
        check_bootstrap_args(n_resamples, alpha)
    codes = as_group_codes(groups, y.shape[0])
    n_groups = int(codes.max()) + 1
    pred = rule.predict(p) if y_pred is None else as_class_indices(y_pred, k, name="y_pred")
    if pred.shape != y.shape:
        raise ValueError(f"y_pred has {pred.shape[0]} values but y_true has {y.shape[0]}")
    cm = confusion_matrix(y, pred, k)
    support = np.bincount(y, minlength=k)
    present = (support > 0) & (support < y.shape[0])
    notes: list[str] = []
    for c in np.flatnonzero(~present):
        why = "is absent from" if support[c] == 0 else "is the only class in"
        notes.append(f"roc_auc and pr_auc of class '{names[c]}' not defined: it {why} the data")

    cm_names = ["balanced_accuracy", "accuracy"] + (["kappa_quadratic", "mae_grade"] if kind == "ordinal" else [])
    point_cm = {m: float(v[0]) for m, v in _cm_metrics(cm[None], cm_names, present).items()}
    if P_rank is None:
        p_rank = p
    else:
        p_rank = np.asarray(P_rank, dtype=np.float64)
        if p_rank.shape != p.shape or not np.isfinite(p_rank).all():
            raise ValueError(f"P_rank must be finite, of the shape of P {p.shape}; got {p_rank.shape}")
    point_rank = {}
    indexes = {}
    for c in np.flatnonzero(present):
        yc = (y == c).astype(np.int64)
        idx = RankIndex(yc, p_rank[:, c], codes)
        indexes[c] = idx
        ones = np.ones((1, n_groups), dtype=np.int64)
        pos_u, neg_u = idx.per_value(ones)
        point_rank[c] = (float(weighted_auc(pos_u, neg_u)[0]), float(weighted_ap(pos_u, neg_u)[0]))

    def _means(aucs: np.ndarray, aps: np.ndarray, sup: np.ndarray) -> dict[str, np.ndarray]:
        # (B, c) arrays over the classes present in the full data; NaN rows when any is undefined
        macro = aucs.mean(axis=1)
        macro_ap = aps.mean(axis=1)
        tot = sup.sum(axis=1)
        weighted = np.full(tot.shape, np.nan)
        np.divide((aucs * sup).sum(axis=1), tot, out=weighted, where=tot > 0)
        return {"macro_roc_auc": macro, "weighted_roc_auc": weighted, "macro_pr_auc": macro_ap}

    pres = np.flatnonzero(present)
    if pres.size:
        pa = np.array([[point_rank[c][0] for c in pres]])
        pp = np.array([[point_rank[c][1] for c in pres]])
        point_means = {m: float(v[0]) for m, v in _means(pa, pp, support[pres][None].astype(float)).items()}
    else:
        point_means = {"macro_roc_auc": None, "weighted_roc_auc": None, "macro_pr_auc": None}
        notes.append("no class has both its cases and others: no ROC-AUC or PR-AUC")

    # resamples
    boot: dict[str, list[np.ndarray]] = {m: [] for m in [*cm_names, *point_means]}
    boot_cls: dict[int, dict[str, list[np.ndarray]]] = {c: {"roc_auc": [], "pr_auc": []} for c in pres}
    if n_resamples:
        cells = np.zeros((n_groups, k * k), dtype=np.int64)
        np.add.at(cells, (codes, y * k + pred), 1)
        onehot = np.zeros((n_groups, k), dtype=np.int64)
        np.add.at(onehot, (codes, y), 1)
        rng = np.random.default_rng(seed)
        rows = block_rows(y.shape[0] * max(1, pres.size), n_resamples)
        done = 0
        while done < n_resamples:
            b = min(rows, n_resamples - done)
            counts = draw_counts(rng, b, n_groups)
            cms = (counts @ cells).reshape(b, k, k)
            for m, v in _cm_metrics(cms, cm_names, present).items():
                boot[m].append(v)
            if pres.size:
                aucs, aps = np.empty((b, pres.size)), np.empty((b, pres.size))
                for j, c in enumerate(pres):
                    pos_u, neg_u = indexes[c].per_value(counts)
                    aucs[:, j] = weighted_auc(pos_u, neg_u)
                    aps[:, j] = weighted_ap(pos_u, neg_u)
                    boot_cls[c]["roc_auc"].append(aucs[:, j])
                    boot_cls[c]["pr_auc"].append(aps[:, j])
                sup = (counts @ onehot)[:, pres].astype(np.float64)
                for m, v in _means(aucs, aps, sup).items():
                    boot[m].append(v)
            done += b

    def ci(point: float | None, values: list[np.ndarray]) -> dict[str, Any]:
        if point is not None and np.isnan(point):
            point = None
        if not n_resamples:
            return BootstrapCI(point, None, None, 0, 0).to_dict()
        if point is None:
            return BootstrapCI(None, None, None, 0, n_resamples).to_dict()
        return percentile_ci(point, np.concatenate(values), alpha).to_dict()

    per_class: dict[str, dict[str, Any]] = {}
    n_pred = cm.sum(axis=0)
    for c, name in enumerate(names):
        row: dict[str, Any] = {"n": int(support[c])}
        for j, m in enumerate(_RANK):
            row[m] = ci(point_rank[c][j], boot_cls[c][m]) if c in point_rank else ci(None, [])
        row["recall"] = float(cm[c, c] / support[c]) if support[c] else None
        row["precision"] = float(cm[c, c] / n_pred[c]) if n_pred[c] else None
        per_class[name] = row
    out: dict[str, Any] = {"classes": names, "kind": kind, "n": int(y.shape[0]), "n_patients": n_groups,
                           "per_class": per_class}
    for m, v in point_means.items():
        out[m] = ci(v, boot[m])
    for m in cm_names:
        out[m] = ci(point_cm[m], boot[m])
    out.update({"confusion_matrix": cm.tolist(),
                "decision_rule": rule.to_dict() if y_pred is None else {"kind": "given", "description": (
                    "predictions made beforehand (each fold's own decision rule)")},
                "n_bootstrap": n_resamples,
                "alpha": alpha, "notes": notes})
    return out


# ---------------------------------------------------------------------------- calibration


def classwise_ece(y_true: ArrayLike, P: ArrayLike, *, n_bins: int = 10) -> dict[str, Any]:
    """Class-wise ECE: per class, the binary ECE of ``P[:, c]`` against ``y == c``; and their mean.

    Returns ``{"mean": float, "per_class": [float, ...]}`` (equal-width bins).
    """
    p = check_probabilities(P)
    y = as_class_indices(y_true, p.shape[1])
    per = [ece((y == c).astype(np.int64), p[:, c], n_bins=n_bins, strategy="uniform") for c in range(p.shape[1])]
    return {"mean": float(np.mean(per)), "per_class": per}


def calibration_report(y_true: ArrayLike, P: ArrayLike, *, classes: Sequence[str], n_bins: int = 10) -> dict:
    """Top-label and class-wise calibration of k-class probabilities, with reliability data.

    Returns ``top_label_ece``, ``top_label_ece_equal_mass``, ``top_label_mce``, ``classwise_ece``
    (mean), ``classwise_ece_per_class`` (name -> ECE), ``brier`` (multi-class Brier, in [0, 2]),
    ``nll``, ``n_bins``, ``reliability_top_label`` (bins, records) and ``reliability_per_class``
    (name -> bins, records).
    """
    p = check_probabilities(P)
    y = as_class_indices(y_true, p.shape[1])
    names = [str(c) for c in classes]
    cw = classwise_ece(y, p, n_bins=n_bins)

    def records(table: pd.DataFrame) -> list[dict]:
        return table.replace({np.nan: None}).to_dict("records")

    return {
        "top_label_ece": ece(y, p, n_bins=n_bins, strategy="uniform"),
        "top_label_ece_equal_mass": ece(y, p, n_bins=n_bins, strategy="quantile"),
        "top_label_mce": mce(y, p, n_bins=n_bins, strategy="uniform"),
        "classwise_ece": cw["mean"],
        "classwise_ece_per_class": dict(zip(names, cw["per_class"], strict=True)),
        "brier": brier(y, p),
        "nll": nll(y, p),
        "n_bins": n_bins,
        "reliability_top_label": records(reliability_table(y, p, n_bins=n_bins)),
        "reliability_per_class": {
            name: records(reliability_table((y == c).astype(np.int64), p[:, c], n_bins=n_bins))
            for c, name in enumerate(names)},
    }


# ------------------------------------------------------------------------ derived endpoints


def endpoint_probability(P: ArrayLike, positive: Sequence[int]) -> np.ndarray:
    """P(endpoint) = the summed probability of its positive classes (``grade >= g``: ``P(grade >= g)``)."""
    p = np.asarray(P, dtype=np.float64)
    idx = np.asarray(list(positive), dtype=np.int64)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= p.shape[1]:
        raise ValueError(f"endpoint classes {list(positive)} are not indices 0..{p.shape[1] - 1}")
    return np.clip(p[:, idx].sum(axis=1), 0.0, 1.0)



# ----------------------------------------------------------------------- comparing two models


def paired_comparison(
    y_true: ArrayLike,
    P1: ArrayLike,
    P2: ArrayLike,
    groups: ArrayLike | None,
    *,
    kind: str,
    pred1: ArrayLike | None = None,
    pred2: ArrayLike | None = None,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired patient-bootstrap comparison of two k-class models on the same cases.

    Both models are scored on the same resamples (patients drawn with replacement), so their
    correlation is kept. Compared: macro one-vs-rest ROC-AUC (over the classes present in the
    data) and, for ordinal tasks, quadratic-weighted kappa of the given predictions (default: the
    default rule of :func:`multiclass_report`).

    Returns
    -------
    dict
        Per metric: ``model1``, ``model2``, ``diff`` (model1 - model2, on the full data), ``ci``
        (percentile interval of the difference), ``p_value`` (two-sided, from the bootstrap SD
        of the difference, normal approximation), ``n_used``.
    """
    from scipy import stats

    check_bootstrap_args(n_resamples, alpha)
    p1, p2 = check_probabilities(P1, name="P1"), check_probabilities(P2, name="P2")
    k = p1.shape[1]
    if p2.shape != p1.shape:
        raise ValueError(f"P1 and P2 must have the same shape; got {p1.shape} and {p2.shape}")
    y = as_class_indices(y_true, k)
    codes = as_group_codes(groups, y.shape[0])
    n_groups = int(codes.max()) + 1
    default = DecisionRule("argmax") if kind == "nominal" else DecisionRule("cumulative", (0.5,) * (k - 1))
    preds = [default.predict(p) if q is None else as_class_indices(q, k, name="pred")
             for p, q in ((p1, pred1), (p2, pred2))]
    support = np.bincount(y, minlength=k)
    pres = np.flatnonzero((support > 0) & (support < y.shape[0]))
    idx = [[RankIndex((y == c).astype(np.int64), p[:, c], codes) for c in pres] for p in (p1, p2)]
    ones = np.ones((1, n_groups), dtype=np.int64)

    def macro(model: int, counts: np.ndarray) -> np.ndarray:
        if not pres.size:
            return np.full(counts.shape[0], np.nan)
        return np.mean([weighted_auc(*ix.per_value(counts)) for ix in idx[model]], axis=0)

    cells = []
    for pred in preds:
        c = np.zeros((n_groups, k * k), dtype=np.int64)
        np.add.at(c, (codes, y * k + pred), 1)
        cells.append(c)
    names = ["macro_roc_auc"] + (["kappa_quadratic"] if kind == "ordinal" else [])

    def values(counts: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {"macro_roc_auc": (macro(0, counts), macro(1, counts))}
        if kind == "ordinal":
            b = counts.shape[0]
            out["kappa_quadratic"] = tuple(_kappa_from_cm((counts @ c).reshape(b, k, k)) for c in cells)
        return out

    point = {m: (float(a[0]), float(b[0])) for m, (a, b) in values(ones).items()}
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in names}
    rows = block_rows(y.shape[0] * max(1, 2 * pres.size), n_resamples)
    done = 0
    while done < n_resamples:
        b = min(rows, n_resamples - done)
        for m, (a, c) in values(draw_counts(rng, b, n_groups)).items():
            diffs[m].append(a - c)
        done += b
    result: dict[str, Any] = {}
    for m in names:
        d = np.concatenate(diffs[m])
        ok = d[np.isfinite(d)]
        a, c = point[m]
        diff = a - c
        entry: dict[str, Any] = {"model1": None if np.isnan(a) else a, "model2": None if np.isnan(c) else c,
                                 "diff": None if np.isnan(diff) else diff, "ci": None, "p_value": None,
                                 "n_used": int(ok.size)}
        if ok.size >= 2 and not np.isnan(diff):
            low, high = np.percentile(ok, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            sd = float(np.std(ok, ddof=1))
            entry["ci"] = (float(low), float(high))
            entry["p_value"] = float(2 * stats.norm.sf(abs(diff) / sd)) if sd > 0 else (1.0 if diff == 0 else 0.0)
        result[m] = entry
    return result
