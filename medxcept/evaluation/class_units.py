"""k-class inputs and evaluation units: class indices and probabilities, the patient (or eye) of a
graded or multi-class task, and the ranking scores of units computed from logits in log space.

**The patient (or eye) of an ordinal task has its worst grade**, and its probabilities follow the
same rule on the cumulative scale (:func:`aggregate_units`; see :mod:`medxcept.evaluation.multiclass`
for why). Nominal units carry the mean of their images' probabilities. Ranking metrics rank each
unit's one-vs-rest log-odds (:func:`unit_rank_scores`), which never saturate. Pure functions on arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

from medxcept.evaluation.class_metrics import KINDS
from medxcept.evaluation.units import unit_keys

__all__ = [
    "as_class_indices",
    "check_probabilities",
    "check_logits",
    "cumulative_probs",
    "probs_from_cumulative",
    "Aggregated",
    "group_reduce",
    "aggregate_units",
    "log_softmax",
    "unit_rank_scores",
    "unit_macro_auc",
]


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


def group_reduce(codes: np.ndarray, values: np.ndarray, how: str) -> np.ndarray:
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
    p = check_probabilities(P, n) if scale == "probability" else check_logits(P, n)
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
            mixed = np.flatnonzero(group_reduce(codes, y, "min") != group_reduce(codes, y, "max"))
            if mixed.size == 0:
                break
            rows = np.isin(codes, mixed)
            unit[rows] = finer[rows].astype(object)
            notes.append(f"{mixed.size} unit(s) had images of different classes: evaluated per {stage}")
    units, codes = np.unique(unit.astype(str), return_inverse=True)
    codes = codes.ravel()
    patient_of = group_reduce(codes, np.unique(keys_raw, return_inverse=True)[1].ravel(), "max")
    patients = np.unique(keys_raw)[patient_of]
    if scale == "logit":
        y_u = group_reduce(codes, y, "max")
        p_u = unit_rank_scores(codes, p, kind=kind)
        rule = (f"per {level}: the worst (highest) grade of its images; P({level} grade >= g) = the maximum "
                "over its images of P(image grade >= g)" if kind == "ordinal" else
                f"per {level}: the class of its images and the mean of their probabilities (a {level} whose "
                "images disagree is split)")
    elif kind == "ordinal":
        y_u = group_reduce(codes, y, "max")
        s_u = group_reduce(codes, cumulative_probs(p), "max")
        p_u = probs_from_cumulative(s_u)
        rule = (f"per {level}: the worst (highest) grade of its images; P({level} grade >= g) = the maximum "
                "over its images of P(image grade >= g)")
    else:
        y_u = group_reduce(codes, y, "max")  # all equal within a unit by construction
        p_u = group_reduce(codes, p, "mean")
        rule = (f"per {level}: the class of its images and the mean of their probabilities (a {level} whose "
                "images disagree is split)")
    return Aggregated(keys=units, patients=patients, y=y_u.astype(np.int64), P=p_u, level=level, rule=rule,
                      notes=tuple(notes))


def check_logits(Z: ArrayLike, n: int) -> np.ndarray:
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
    m = group_reduce(codes, v, "max")
    return m + np.log(group_reduce(codes, np.exp(v - m[codes]), "sum"))


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
    s, r = group_reduce(c, log_s, "max"), group_reduce(c, log_r, "min")
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
