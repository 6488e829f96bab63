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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
    "ClassMetric",
    "CLASS_METRICS",
    "class_metrics",
    "class_metric_names",
    "class_metric_bounds",
    "metric_in_cv",
    "unit_macro_auc",
    "Aggregated",
    "DecisionRule",
    "as_class_indices",
    "check_probabilities",
    "cumulative_probs",
    "probs_from_cumulative",
    "aggregate_units",
    "log_softmax",
    "unit_rank_scores",
    "choose_decision_rule",
    "confusion_matrix",
    "quadratic_kappa",
    "multiclass_report",
    "classwise_ece",
    "calibration_report",
    "endpoint_probability",
    "endpoint_logit",
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
    if how == "sum":
        return sums
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
    scale: Literal["probability", "logit"] = "probability",
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
    scale : {"probability", "logit"}, default "probability"
        ``"logit"``: ``P`` holds the images' (n, k) **logits**, and ``Aggregated.P`` each unit's
        one-vs-rest ranking scores ``log P_u(c) - log(1 - P_u(c))`` of the same aggregated
        distribution, computed in log space (:func:`unit_rank_scores`): the scores ranking
        metrics rank, which never saturate where float64 probabilities would tie.

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
    if scale not in ("probability", "logit"):
        raise ValueError(f"scale must be 'probability' or 'logit'; got {scale!r}")
    keys_raw = np.asarray(patient_key).astype(str)
    n = keys_raw.shape[0]
    p = check_probabilities(P, n) if scale == "probability" else _check_logits(P, n)
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
    if scale == "logit":
        y_u = _group_reduce(codes, y, "max")
        p_u = unit_rank_scores(codes, p, kind=kind)
        rule = (f"per {level}: the worst (highest) grade of its images; P({level} grade >= g) = the maximum "
                "over its images of P(image grade >= g)" if kind == "ordinal" else
                f"per {level}: the class of its images and the mean of their probabilities (a {level} whose "
                "images disagree is split)")
    elif kind == "ordinal":
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


def _check_logits(Z: ArrayLike, n: int) -> np.ndarray:
    z = np.asarray(Z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] != n or z.shape[1] < 2:
        raise ValueError(f"logits must have shape ({n}, k >= 2); got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError(f"logits hold {int((~np.isfinite(z)).sum())} NaN or infinite values")
    return z


def log_softmax(Z: ArrayLike) -> np.ndarray:
    """``log P(c)`` of (n, k) logits, in float64, without forming the probabilities.

    >>> log_softmax(np.array([[0.0, 0.0]])).round(4).tolist()
    [[-0.6931, -0.6931]]
    """
    z = np.asarray(Z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _group_logsumexp(codes: np.ndarray, v: np.ndarray) -> np.ndarray:
    """log of the per-unit sum of exp(v), rows of (n, k) ``v`` grouped by ``codes``, stably."""
    m = _group_reduce(codes, v, "max")
    return m + np.log(_group_reduce(codes, np.exp(v - m[codes]), "sum"))


def unit_rank_scores(codes: ArrayLike, logits: ArrayLike, *, kind: str) -> np.ndarray:
    """Each unit's one-vs-rest ranking score of each class, ``log P_u(c) - log(1 - P_u(c))``, from its images'
    logits, in log space: monotone in the unit's aggregated probability of :func:`aggregate_units`, but a
    class ahead by 40 logits is not tied with one ahead by 50 (float64 softmax gives both exactly 1).

    Parameters
    ----------
    codes : array-like of shape (n,)
        Unit index ``0..m-1`` of each image.
    logits : array-like of shape (n, k)
    kind : {"nominal", "ordinal"}
        Ordinal: worst eye on the cumulative scale, ``log P_u(grade >= g) = max_i log P_i(grade >= g)`` and
        ``log P_u(grade < g) = min_i log P_i(grade < g)``; then ``P_u(c)`` is the difference of two
        neighbouring cumulative probabilities, taken on the side (``>= g`` or ``< g``) where both are small,
        so nothing cancels. Nominal: the mean of the images' probabilities,
        ``log P_u(c) = logsumexp_i log P_i(c) - log n`` and ``log(1 - P_u(c)) = logsumexp_i log(1 - P_i(c)) -
        log n`` (the ``log n`` cancels).

    Returns
    -------
    ndarray of shape (m, k)

    Examples
    --------
    >>> z = np.array([[40.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
    >>> unit_rank_scores([0, 1], z, kind="nominal")[:, 0].round(3).tolist()
    [39.307, 49.307]
    """
    c = np.asarray(codes).ravel()
    ell = log_softmax(logits)
    n, k = ell.shape
    if kind == "nominal":
        # log(1 - P_i(c)) = logsumexp over the other classes of log P_i(j)
        rest = np.stack([np.logaddexp.reduce(np.delete(ell, j, axis=1), axis=1) for j in range(k)], axis=1)
        return _group_logsumexp(c, ell) - _group_logsumexp(c, rest)
    if kind != "ordinal":
        raise ValueError(f"kind={kind!r} is not one of {list(KINDS)}")
    ninf = np.full((n, 1), -np.inf)
    log_s = np.concatenate([np.logaddexp.accumulate(ell[:, ::-1], axis=1)[:, ::-1], ninf], axis=1)  # >= g
    log_r = np.concatenate([ninf, np.logaddexp.accumulate(ell, axis=1)], axis=1)  # < g
    s, r = _group_reduce(c, log_s, "max"), _group_reduce(c, log_r, "min")
    with np.errstate(divide="ignore", invalid="ignore"):
        via_s = s[:, :k] + np.log(-np.expm1(s[:, 1:] - s[:, :k]))
        via_r = r[:, 1:] + np.log(-np.expm1(r[:, :k] - r[:, 1:]))
        log_p = np.where(s[:, 1:] > np.log(0.5), via_r, via_s)
        log_q = np.logaddexp(r[:, :k], s[:, 1:])  # 1 - P_u(c) = P_u(grade < c) + P_u(grade > c)
    return log_p - log_q


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


def _balanced_accuracy(cm: np.ndarray) -> np.ndarray:
    diag, support = np.einsum("bii->bi", cm), cm.sum(axis=2)
    recall = np.full(support.shape, np.nan)
    np.divide(diag, support, out=recall, where=support > 0)
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.where(support > 0, recall, np.nan), axis=1)


def _accuracy(cm: np.ndarray) -> np.ndarray:
    n = cm.sum(axis=(1, 2))
    return np.where(n > 0, np.einsum("bii->b", cm) / np.maximum(n, 1), np.nan)


def _mae_grade(cm: np.ndarray) -> np.ndarray:
    i = np.arange(cm.shape[-1])
    n = cm.sum(axis=(1, 2))
    return np.where(n > 0, np.einsum("bij,ij->b", cm, np.abs(i[:, None] - i[None, :])) / np.maximum(n, 1), np.nan)


def _per_class_share(cm: np.ndarray, axis: int) -> np.ndarray:
    """(B, k) diagonal over the row sums (``axis=2``: recall) or column sums (``axis=1``: precision)."""
    diag, tot = np.einsum("bii->bi", cm), cm.sum(axis=axis)
    out = np.full(tot.shape, np.nan)
    np.divide(diag, tot, out=out, where=tot > 0)
    return out


def _weighted_mean(aucs: np.ndarray, support: np.ndarray) -> np.ndarray:
    tot = support.sum(axis=1)
    out = np.full(tot.shape, np.nan)
    np.divide((aucs * support).sum(axis=1), tot, out=out, where=tot > 0)
    return out


@dataclass(frozen=True)
class ClassMetric:
    """One k-class metric, declared once: every list of k-class metrics in medxcept is read from
    :data:`CLASS_METRICS` (the k-class counterpart of :data:`medxcept.evaluation.metrics.METRICS`).

    Parameters
    ----------
    name : str
        Key in :func:`multiclass_report` (and so in ``metrics.json`` → ``graded``), in the per-fold
        rows of k-fold and in ``pipelines.compare``.
    label : str
        How reports name it.
    kind : {"confusion", "rank", "per_class"}
        ``confusion``: ``compute(cm)`` of (B, k, k) float confusion matrices (rows: true class) gives
        (B,) values, NaN where undefined. ``rank``: ``compute(roc_auc, pr_auc, support)``, each
        (B, c) over the c classes that have one-vs-rest ranks in the data (their per-resample
        ROC-AUC, PR-AUC and case counts), gives (B,) values. ``per_class``: ``compute(cm)`` gives
        (B, k) values, one per class (``per_class[<class>][name]`` of :func:`multiclass_report`, and the
        ``<name>_<class>`` columns of the k-fold table with ``cv``).
    compute : callable
    tasks : tuple of str, default both kinds
        The tasks (:data:`KINDS`) the metric applies to; ``("ordinal",)`` for grade distances.
    bounds : (float, float or None), default (0, 1)
        Range of the metric, for the across-fold t-interval; ``None`` as the upper bound means
        ``k - 1`` (a grade distance).
    lower_is_better : bool, default False
    cv : bool, default True
        A column of the k-fold per-fold table and its across-fold summary (per-class metrics: one
        column per class).
    card : bool, default False
        A summary card of the k-fold report (pooled out-of-fold value).
    compare : bool, default False
        A column of ``pipelines.compare``'s table of runs.
    paired : bool, default False
        Tested pairwise between runs by the paired patient bootstrap (:func:`paired_comparison`;
        ``confusion`` and ``rank`` metrics).
    """

    name: str
    label: str
    kind: Literal["confusion", "rank", "per_class"]
    compute: Callable[..., np.ndarray]
    tasks: tuple[str, ...] = KINDS
    bounds: tuple[float, float | None] = (0.0, 1.0)
    lower_is_better: bool = False
    cv: bool = True
    card: bool = False
    compare: bool = False
    paired: bool = False


#: Every k-class metric, in the order reports show them. Adding one is one entry here (and its test):
#: the graded report, the k-fold per-fold table and summary, pooled out-of-fold metrics and
#: ``pipelines.compare`` read this tuple when they run.
CLASS_METRICS: tuple[ClassMetric, ...] = (
    ClassMetric("kappa_quadratic", "quadratic-weighted kappa", "confusion", lambda cm: _kappa_from_cm(cm),
                tasks=("ordinal",), bounds=(-1.0, 1.0), card=True, compare=True, paired=True),
    ClassMetric("mae_grade", "mean absolute grade error", "confusion", _mae_grade, tasks=("ordinal",),
                bounds=(0.0, None), lower_is_better=True, compare=True),
    ClassMetric("macro_roc_auc", "macro ROC-AUC", "rank", lambda auc, ap, sup: auc.mean(axis=1), card=True,
                compare=True, paired=True),
    ClassMetric("weighted_roc_auc", "weighted ROC-AUC", "rank", lambda auc, ap, sup: _weighted_mean(auc, sup)),
    ClassMetric("macro_pr_auc", "macro PR-AUC", "rank", lambda auc, ap, sup: ap.mean(axis=1)),
    ClassMetric("balanced_accuracy", "balanced accuracy", "confusion", _balanced_accuracy, compare=True),
    ClassMetric("accuracy", "accuracy", "confusion", _accuracy),
    ClassMetric("recall", "recall", "per_class", lambda cm: _per_class_share(cm, axis=2), cv=False),
    ClassMetric("precision", "precision", "per_class", lambda cm: _per_class_share(cm, axis=1), cv=False),
)


def class_metrics(task: str, **flags: bool) -> tuple[ClassMetric, ...]:
    """The registered k-class metrics of ``task`` with the given flags (``card``, ``compare``,
    ``paired``, ``kind``), in registry order; read at call time, so an added entry is seen everywhere.

    Examples
    --------
    >>> [m.name for m in class_metrics("nominal", card=True)]
    ['macro_roc_auc']
    """
    if task not in KINDS:
        raise ValueError(f"task={task!r} is not one of {list(KINDS)}")
    return tuple(m for m in CLASS_METRICS if task in m.tasks
                 and all(getattr(m, f) == v for f, v in flags.items()))


def class_metric_names(task: str, **flags: bool) -> list[str]:
    """Names of :func:`class_metrics`."""
    return [m.name for m in class_metrics(task, **flags)]


def metric_in_cv(name: str) -> bool:
    """Whether the k-class metric ``name`` is a column of the k-fold per-fold table (its ``cv`` flag)."""
    return all(m.cv for m in CLASS_METRICS if m.name == name)


def class_metric_bounds(name: str, k: int) -> tuple[float, float]:
    """The range of the k-class metric ``name`` with ``k`` classes; (0, 1) for a name not registered
    (per-class and endpoint AUCs, sensitivities)."""
    for m in CLASS_METRICS:
        if m.name == name:
            low, high = m.bounds
            return float(low), float(k - 1) if high is None else float(high)
    return 0.0, 1.0


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
        The task: its metrics are those of :data:`CLASS_METRICS` (ordinal adds ``kappa_quadratic``
        and ``mae_grade``).
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
        ``pr_auc`` and every ``per_class`` entry of :data:`CLASS_METRICS`: ``recall``, ``precision``), ``macro_roc_auc``, ``weighted_roc_auc``,
        ``macro_pr_auc``, ``balanced_accuracy``, ``accuracy`` (+ ``kappa_quadratic``,
        ``mae_grade``; every entry of :data:`CLASS_METRICS` for the task): each metric a
        :meth:`BootstrapCI.to_dict`; ``metric_names`` (those entries, in registry order: what reports
        list), ``per_class_metric_names``, ``metric_labels``, ``confusion_matrix`` (rows: true class), ``decision_rule``,
        ``n_bootstrap``, ``alpha`` and ``notes``.

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

    registered = class_metrics(kind)
    cm_metrics = [m for m in registered if m.kind in ("confusion", "per_class")]
    rank_metrics = [m for m in registered if m.kind == "rank"]
    summary = [m for m in registered if m.kind != "per_class"]
    per_class_metrics = [m for m in registered if m.kind == "per_class"]
    cm_names = [m.name for m in cm_metrics]

    def _cm_values(cms: np.ndarray) -> dict[str, np.ndarray]:
        cms = cms.astype(np.float64)
        return {m.name: m.compute(cms) for m in cm_metrics}  # (B,) or, per class, (B, k)

    point_cm = {m: v[0] for m, v in _cm_values(cm[None]).items()}
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
        return {m.name: m.compute(aucs, aps, sup) for m in rank_metrics}

    pres = np.flatnonzero(present)
    if pres.size:
        pa = np.array([[point_rank[c][0] for c in pres]])
        pp = np.array([[point_rank[c][1] for c in pres]])
        point_means = {m: float(v[0]) for m, v in _means(pa, pp, support[pres][None].astype(float)).items()}
    else:
        point_means = {m.name: None for m in rank_metrics}
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
            for m, v in _cm_values(cms).items():
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
    for c, name in enumerate(names):
        row: dict[str, Any] = {"n": int(support[c])}
        for j, m in enumerate(_RANK):
            row[m] = ci(point_rank[c][j], boot_cls[c][m]) if c in point_rank else ci(None, [])
        for m in per_class_metrics:
            row[m.name] = ci(float(point_cm[m.name][c]), [v[:, c] for v in boot[m.name]])
        per_class[name] = row
    out: dict[str, Any] = {"classes": names, "kind": kind, "n": int(y.shape[0]), "n_patients": n_groups,
                           "per_class": per_class}
    for m in summary:
        out[m.name] = ci(point_means[m.name] if m.kind == "rank" else float(point_cm[m.name]), boot[m.name])
    out.update({"metric_names": [m.name for m in summary],
                "per_class_metric_names": [m.name for m in per_class_metrics],
                "metric_labels": {m.name: m.label for m in registered},
                "confusion_matrix": cm.tolist(),
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


def endpoint_logit(scores: ArrayLike, positive: Sequence[int]) -> np.ndarray:
    """The ranking score of a derived endpoint (a set of classes), ``log P(set) - log(1 - P(set))``, from
    one-vs-rest scores ``log P(c) - log(1 - P(c))`` (:func:`medxcept.evaluation.units.ranking_scores` of
    logits, or :func:`aggregate_units` with ``scale="logit"``): monotone in :func:`endpoint_probability`,
    without its saturation.

    >>> endpoint_logit(np.array([[0.0, 0.0]]), [1]).tolist()
    [0.0]
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = sorted(int(i) for i in positive)
    neg = [j for j in range(s.shape[1]) if j not in pos]
    if not pos or not neg:
        raise ValueError(f"an endpoint needs classes on both sides; got positive {pos} of {s.shape[1]}")
    log_p = -np.logaddexp(0.0, -s)  # log P(c) = log sigmoid of its one-vs-rest logit
    return np.logaddexp.reduce(log_p[:, pos], axis=1) - np.logaddexp.reduce(log_p[:, neg], axis=1)


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
    scale: Literal["probability", "logit"] = "probability",
) -> dict[str, Any]:
    """Paired patient-bootstrap comparison of two k-class models on the same cases.

    ``scale="logit"``: ``P1`` and ``P2`` are one-vs-rest ranking scores (:func:`aggregate_units` with
    ``scale="logit"``), which only the rank metrics read; ``pred1`` and ``pred2`` are then required.

    Both models are scored on the same resamples (patients drawn with replacement), so their
    correlation is kept. Compared: the entries of :data:`CLASS_METRICS` flagged ``paired`` (macro
    one-vs-rest ROC-AUC over the classes present in the data and, for ordinal tasks,
    quadratic-weighted kappa of the given predictions; default predictions: the default rule of
    :func:`multiclass_report`).

    Returns
    -------
    dict
        Per metric: ``model1``, ``model2``, ``diff`` (model1 - model2, on the full data), ``ci``
        (percentile interval of the difference), ``p_value`` (two-sided, from the bootstrap SD
        of the difference, normal approximation), ``n_used``.
    """
    from scipy import stats

    check_bootstrap_args(n_resamples, alpha)
    if scale == "logit":
        if pred1 is None or pred2 is None:
            raise ValueError("scale='logit' compares ranking scores: give both models' predictions (pred1, pred2)")
        n = len(np.asarray(P1))
        p1, p2 = _check_logits(P1, n), _check_logits(P2, len(np.asarray(P2)))
    else:
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
    onehot = np.zeros((n_groups, k), dtype=np.int64)
    np.add.at(onehot, (codes, y), 1)
    paired = class_metrics(kind, paired=True)
    names = [m.name for m in paired]

    def ranks(model: int, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # (B, c) one-vs-rest ROC-AUC and PR-AUC of the classes present
        per = [ix.per_value(counts) for ix in idx[model]]
        shape = (counts.shape[0], len(per))
        aucs = np.column_stack([weighted_auc(*pu) for pu in per]) if per else np.empty(shape)
        aps = np.column_stack([weighted_ap(*pu) for pu in per]) if per else np.empty(shape)
        return aucs, aps

    cells = []
    for pred in preds:
        c = np.zeros((n_groups, k * k), dtype=np.int64)
        np.add.at(c, (codes, y * k + pred), 1)
        cells.append(c)

    def values(counts: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        b = counts.shape[0]
        sup = (counts @ onehot)[:, pres].astype(np.float64)
        rank = [ranks(0, counts), ranks(1, counts)] if any(m.kind == "rank" for m in paired) else []
        out = {}
        for m in paired:
            if m.kind == "confusion":
                out[m.name] = tuple(m.compute((counts @ c).reshape(b, k, k).astype(np.float64)) for c in cells)
            elif not pres.size:
                out[m.name] = (np.full(b, np.nan), np.full(b, np.nan))
            else:
                out[m.name] = tuple(m.compute(aucs, aps, sup) for aucs, aps in rank)
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
