"""Evaluation units: which images make one unit (a patient, or a patient's visit), one prediction
per unit, and the score scales (probabilities, ranking scores on the logit scale).

**The patient is the unit.** Images of one patient are correlated, so
:func:`aggregate_by_patient` gives one prediction per patient (or per visit), and the bootstrap
(:mod:`medxcept.evaluation.intervals`) resamples patients with all their images. Pure functions on
arrays; nothing reads files or models.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

__all__ = [
    "UNIT_SEPARATOR",
    "unit_keys",
    "unit_visits",
    "unit_patients",
    "aggregate_by_patient",
    "probabilities",
    "ranking_scores",
    "patient_auc",
]


#: Joins a patient key and a visit (study) key into an evaluation unit's key (:func:`unit_keys`).
UNIT_SEPARATOR = " @ "


def unit_keys(patient_key: ArrayLike, visit: ArrayLike | None = None) -> np.ndarray:
    """The evaluation unit of each image: its patient, or its (patient, visit) when ``visit`` is given.

    A visit is a study (DICOM StudyInstanceUID, a label table's ``visit`` column: the cohort
    table's ``study_id``). An image with an empty visit belongs to its patient's unit without visit.

    Examples
    --------
    >>> unit_keys(["P1", "P1", "P2"], ["S1", "S2", ""]).tolist()
    ['P1 @ S1', 'P1 @ S2', 'P2']
    """
    pk = np.asarray(patient_key).astype(str)
    if visit is None:
        return pk
    v = np.array(["" if x is None or str(x) in ("", "nan", "None") else str(x)
                  for x in np.asarray(visit, dtype=object).ravel()], dtype=object)
    if v.shape != pk.shape:
        raise ValueError(f"visit must have one entry per image; got shapes {v.shape} and {pk.shape}")
    return np.array([str(p) if not x else f"{p}{UNIT_SEPARATOR}{x}" for p, x in zip(pk, v, strict=True)], dtype=object)


def unit_visits(frame: Any, unit: str) -> np.ndarray | None:
    """The visit key of each row of ``frame`` (its ``study_id`` column) when the evaluation unit is
    the visit (``eval.unit = "visit"``) and the cohort records one; else None (units are patients).
    """
    if unit == "visit" and "study_id" in frame:
        v = np.asarray(frame["study_id"], dtype=object)
        if any(x is not None and str(x) not in ("", "nan", "None") for x in v):
            return v
    return None


def unit_patients(keys: ArrayLike) -> np.ndarray:
    """The patient of each unit key (:func:`unit_keys`): the cluster a bootstrap resamples.

    >>> unit_patients(["P1 @ S1", "P1 @ S2", "P2"]).tolist()
    ['P1', 'P1', 'P2']
    """
    return np.array([str(k).split(UNIT_SEPARATOR, 1)[0] for k in np.asarray(keys).ravel()], dtype=object)


def aggregate_by_patient(
    patient_key: ArrayLike,
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    how: Literal["mean", "max"] = "max",
    visit: ArrayLike | None = None,
    scale: Literal["probability", "logit"] = "probability",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One label and one prediction per evaluation unit: a patient, or a patient's visit.

    The unit's label is the maximum of its images' labels ("any image positive": a patient with
    one diseased eye is a diseased patient); its score follows ``how``. ``"max"`` matches that
    label (the unit is as suspicious as its most suspicious image); ``"mean"`` fits labels given
    to the patient and copied onto every image (several views of one finding).

    Parameters
    ----------
    patient_key : array-like of shape (n,)
        Patient pseudonym of each image.
    y_true : array-like of shape (n,)
        Label of each image: 0/1, or a class index whose order is the order of
        severity (the cohort's class list).
    y_prob : array-like of shape (n,) or (n, k)
        Predicted probabilities of each image.
    how : {"mean", "max"}, default "max"
        How image probabilities combine. ``"max"`` on (n, k) takes each column's
        maximum, so rows no longer sum to 1.
    visit : array-like of shape (n,) or None
        Visit (study) key of each image: the unit is then (patient, visit) (:func:`unit_keys`),
        and ``keys`` are unit keys; :func:`unit_patients` gives each unit's patient, which a
        bootstrap resamples (all visits of a patient together).
    scale : {"probability", "logit"}, default "probability"
        ``"logit"``: ``y_prob`` holds (n,) logits (:func:`ranking_scores`), and each unit gets the
        **logit of** its aggregated probability, computed without forming the probabilities:
        the maximum logit for ``"max"``, ``logsumexp(log σ(z)) - logsumexp(log σ(-z))`` for
        ``"mean"``. Same ranking as the aggregated probabilities, but no saturation: rank these.

    Returns
    -------
    keys : ndarray of shape (m,)
        Sorted unit keys (patient keys without ``visit``).
    y_true_patient : ndarray of shape (m,)
        The maximum label over the unit's images, at the most severe grade seen.
    y_prob_patient : ndarray of shape (m,) or (m, k)
    """
    keys_raw = unit_keys(patient_key, visit) if visit is not None else np.asarray(patient_key)
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    n = keys_raw.shape[0]
    if keys_raw.ndim != 1 or y.shape != (n,) or p.ndim not in (1, 2) or p.shape[0] != n:
        raise ValueError(
            "patient_key, y_true and y_prob must have one entry per image; got shapes "
            f"{keys_raw.shape}, {y.shape}, {p.shape}"
        )
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max'; got {how!r}")
    if scale not in ("probability", "logit"):
        raise ValueError(f"scale must be 'probability' or 'logit'; got {scale!r}")
    if scale == "logit" and p.ndim != 1:
        raise ValueError(f"scale='logit' aggregates binary (n,) logits; got shape {p.shape}")
    keys, codes = np.unique(
        keys_raw.astype(str) if keys_raw.dtype == object else keys_raw, return_inverse=True
    )
    codes = codes.ravel()
    order = np.argsort(codes, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(codes[order])) + 1]
    y_patient = np.maximum.reduceat(y[order], starts)
    p_sorted = p[order]
    if how == "max":
        p_patient = np.maximum.reduceat(p_sorted, starts, axis=0)
    elif scale == "logit":
        # logit(mean σ(z)) = log Σ σ(z) - log Σ σ(-z): the 1/count cancels
        p_patient = _group_logsumexp(_log_sigmoid(p_sorted), starts) - _group_logsumexp(_log_sigmoid(-p_sorted),
                                                                                        starts)
    else:
        counts = np.diff(np.r_[starts, n])
        sums = np.add.reduceat(p_sorted, starts, axis=0)
        p_patient = sums / (counts if p.ndim == 1 else counts[:, None])
    return keys, y_patient, p_patient


def _group_logsumexp(v: np.ndarray, starts: np.ndarray) -> np.ndarray:
    m = np.maximum.reduceat(v, starts)
    counts = np.diff(np.r_[starts, v.shape[0]])
    return m + np.log(np.add.reduceat(np.exp(v - np.repeat(m, counts)), starts))


def probabilities(logits: ArrayLike) -> np.ndarray:
    """The model's probabilities from its logits: sigmoid of (n,) logits, softmax of (n, k), in float64.

    The one probability transform of medxcept (uncalibrated ``prob_raw``, early stopping, the
    learning curve). Always float64: float32 probabilities of logits above about 17 are exactly
    1.0 and tie, which changes every AUC ranked on them. float64 keeps logits up to about 37
    apart; ranking metrics rank :func:`ranking_scores` (logit scale), which never saturate.

    Examples
    --------
    >>> probabilities(np.array([0.0, 2.0])).round(3).tolist()
    [0.5, 0.881]
    >>> probabilities(np.array([[0.0, 0.0]])).tolist()
    [[0.5, 0.5]]
    >>> bool(probabilities(np.array([25.0, 30.0], dtype=np.float32)).dtype == np.float64)
    True
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        return _expit(z)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _expit(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    """log(sigmoid(z)) without overflow or underflow to -inf for moderate z."""
    return -np.logaddexp(0.0, -z)


def ranking_scores(logits: ArrayLike) -> np.ndarray:
    """Scores to rank (ROC-AUC, PR-AUC, DeLong, paired tests): the logit of each probability, in float64.

    Binary (n,) logits are returned as float64. For (n, k) class logits, column ``c`` is the
    one-vs-rest logit ``log P(c) - log(1 - P(c)) = z_c - logsumexp(z_{-c})``, monotone in the softmax
    probability of class ``c``. Unlike probabilities, these never saturate: logits 30 and 40 stay
    apart, whereas their float32 sigmoids are both 1.0 (and float64 ones above about 37).

    Examples
    --------
    >>> ranking_scores(np.array([[0.0, 0.0]])).tolist()
    [[0.0, 0.0]]
    >>> ranking_scores(np.array([[40.0, 0.0, 0.0], [30.0, 0.0, 0.0]]))[:, 0].round(3).tolist()
    [39.307, 29.307]
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        return z.copy()
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must have shape (n,) or (n, k >= 2); got {z.shape}")
    out = np.empty_like(z)
    for c in range(z.shape[1]):
        rest = np.delete(z, c, axis=1)
        m = rest.max(axis=1)
        out[:, c] = z[:, c] - (m + np.log(np.exp(rest - m[:, None]).sum(axis=1)))
    return out


def patient_auc(
    patient_key: ArrayLike, y_true: ArrayLike, y_prob: ArrayLike, *, how: Literal["mean", "max"] = "max",
    visit: ArrayLike | None = None,
) -> float:
    """ROC-AUC of the patients (or of their visits: ``visit``; :func:`aggregate_by_patient`); NaN
    without both classes.

    Binary ``y_prob`` of shape (n,) is aggregated by ``how``. Class probabilities (n, k) are
    averaged per patient (whatever ``how``), renormalized, and scored one-vs-rest, macro; the
    graded evaluation's own rule (worst eye for ordinal tasks) is
    :func:`medxcept.evaluation.class_units.unit_macro_auc`.
    """
    p = np.asarray(y_prob, dtype=np.float64)
    _, yp, pp = aggregate_by_patient(patient_key, y_true, p, how=how if p.ndim == 1 else "mean", visit=visit)
    if np.unique(yp).size < 2:
        return float("nan")
    if p.ndim == 1:
        return float(roc_auc_score(yp, pp))
    pp = pp / pp.sum(axis=1, keepdims=True)
    return float(roc_auc_score(yp, pp, multi_class="ovr", average="macro", labels=list(range(p.shape[1]))))
