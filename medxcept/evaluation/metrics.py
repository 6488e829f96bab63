"""Evaluation metrics: pure functions on labels and predicted probabilities.

Everything here takes arrays and returns numbers; nothing reads files or models.
Three rules run through the module:

* **Undefined is None, never 0.** A metric that cannot be computed on the data at
  hand (ROC-AUC when the test set has one class, precision when nothing was
  predicted positive) is ``None``, and a plain-words reason goes into ``notes``.
  A misleading 0 or 0.5 would be copied into a paper.
* **The patient is the unit.** Images of one patient are correlated, so
  :func:`bootstrap_ci` resamples patients (``groups``) with all their images, and
  :func:`aggregate_by_patient` gives one prediction per patient.
* **Thresholds come from validation data.** :func:`choose_threshold` is meant for
  the validation split; the test split is touched once, with the threshold fixed.

A case is predicted positive when ``y_prob >= threshold``.

The bootstrap is vectorized: one resample is a vector of draw counts per group, so
a resampled data set is the original data with integer weights. ROC-AUC and
average precision are computed for all resamples at once from weighted rank
statistics (exactly what scikit-learn gives on the explicitly resampled arrays,
ties included), instead of calling scikit-learn once per resample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from medxcept.errors import SplitError

__all__ = [
    "Metric",
    "METRICS",
    "metric_names",
    "metric_labels",
    "BINARY_METRICS",
    "probabilities",
    "ranking_scores",
    "ranking_metrics",
    "patient_auc",
    "weighted_average_precision",
    "BootstrapCI",
    "binary_metrics",
    "multiclass_metrics",
    "choose_threshold",
    "aggregate_by_patient",
    "unit_keys",
    "unit_patients",
    "unit_visits",
    "bootstrap_ci",
    "cluster_resample_weights",
    "percentile_ci",
    "delong_test",
    "paired_bootstrap_auc",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------- the registry


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a / b`` elementwise, NaN where ``b`` is 0 (the metric is undefined there)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = np.full(np.broadcast(a, b).shape, np.nan)
    np.divide(a, b, out=out, where=b > 0)
    return out


def _mcc(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Matthews correlation coefficient; NaN when a row or column of the confusion matrix is empty."""
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return _div(tp * tn - fp * fn, den)


@dataclass(frozen=True)
class Metric:
    """One metric, declared once: every list of metrics in medxcept is read from :data:`METRICS`.

    Attributes
    ----------
    name : str
        Key in ``metrics.json`` (``test_patient``, ``test_image``, a fold's ``oof.patient``).
    label : str
        How the reports name it.
    kind : {"rank", "counts", "calibration"}
        ``rank``: computed from the ranking of the probabilities (:func:`binary_metrics`, the
        weighted rank statistics of the bootstrap); ``counts``: a function of the confusion
        counts at the threshold (``counts``); ``calibration``: measured by
        :mod:`medxcept.evaluation.calibrate` (ECE, Brier), listed here for the summaries that read it.
    counts : callable, optional
        ``counts(tp, fp, tn, fn) -> value`` on float arrays (any shape; one value per resample
        in the bootstrap), NaN where undefined. Used by :func:`binary_metrics`, the bootstrap,
        the pooled out-of-fold metrics and the paired comparison bootstrap.
    undefined : str
        The note :func:`binary_metrics` writes when the value is undefined (``{threshold}`` and
        ``{missing}`` are filled in).
    ci : bool
        Gets a patient-bootstrap confidence interval in a run (``test_patient_ci``) and a row in
        the report's performance table.
    cv : bool
        Summarized across folds (mean, SD, t-interval, pooled) in ``cv_metrics.json`` and the
        CV report.
    compare : bool
        A per-run number and a paired verdict in ``python -m pipelines.compare``.
    lower_is_better : bool
    bounds : (float, float)
        The metric's range (the CV t-interval is clipped to it).
    """

    name: str
    label: str
    kind: Literal["rank", "counts", "calibration"]
    counts: Callable[..., np.ndarray] | None = None
    undefined: str = ""
    ci: bool = False
    cv: bool = False
    compare: bool = False
    lower_is_better: bool = False
    bounds: tuple[float, float] = (0.0, 1.0)


#: Every metric, in the order reports show them. Adding a metric is one entry here (and its test).
METRICS: tuple[Metric, ...] = (
    Metric("roc_auc", "ROC-AUC", "rank", ci=True, cv=True, compare=True,
           undefined="roc_auc not defined: the test set has no {missing} case"),
    Metric("pr_auc", "PR-AUC", "rank", ci=True, cv=True, compare=True,
           undefined="pr_auc not defined: the test set has no {missing} case"),
    Metric("sensitivity", "sensitivity", "counts", lambda tp, fp, tn, fn: _div(tp, tp + fn),
           "sensitivity not defined: the test set has no positive case", ci=True, cv=True, compare=True),
    Metric("specificity", "specificity", "counts", lambda tp, fp, tn, fn: _div(tn, tn + fp),
           "specificity not defined: the test set has no negative case", ci=True, cv=True, compare=True),
    Metric("precision", "precision (PPV)", "counts", lambda tp, fp, tn, fn: _div(tp, tp + fp),
           "precision not defined: no case was predicted positive at threshold {threshold:g}", ci=True, cv=True),
    Metric("npv", "NPV", "counts", lambda tp, fp, tn, fn: _div(tn, tn + fn),
           "npv not defined: no case was predicted negative at threshold {threshold:g}", ci=True),
    Metric("f1", "F1", "counts", lambda tp, fp, tn, fn: _div(2 * tp, 2 * tp + fp + fn),
           "f1 not defined: no positive case and no positive prediction", ci=True),
    Metric("balanced_accuracy", "balanced accuracy", "counts",
           lambda tp, fp, tn, fn: (_div(tp, tp + fn) + _div(tn, tn + fp)) / 2.0,  # NaN if either is
           "balanced_accuracy not defined: the test set has only one class", ci=True),
    Metric("accuracy", "accuracy", "counts", lambda tp, fp, tn, fn: _div(tp + tn, tp + fp + tn + fn),
           "accuracy not defined: the test set is empty"),
    Metric("mcc", "MCC", "counts", _mcc,
           "mcc not defined: the test set has one class, or every case was predicted in one class "
           "at threshold {threshold:g}", ci=True, cv=True, compare=True, bounds=(-1.0, 1.0)),
    Metric("ece", "ECE", "calibration", cv=True, lower_is_better=True),
    Metric("brier", "Brier", "calibration", cv=True, lower_is_better=True),
)
_BY_NAME = {m.name: m for m in METRICS}


def metric_names(*, ci: bool | None = None, cv: bool | None = None, compare: bool | None = None,
                 kinds: Sequence[str] = ("rank", "counts", "calibration")) -> tuple[str, ...]:
    """Names of the registered metrics with the given flags, in registry order.

    Examples
    --------
    >>> metric_names(kinds=("rank",))
    ('roc_auc', 'pr_auc')
    """
    return tuple(m.name for m in METRICS if m.kind in kinds and (ci is None or m.ci == ci)
                 and (cv is None or m.cv == cv) and (compare is None or m.compare == compare))


def metric_labels() -> dict[str, str]:
    """``name -> label`` of every registered metric."""
    return {m.name: m.label for m in METRICS}


def counts_metrics(tp: ArrayLike, fp: ArrayLike, tn: ArrayLike, fn: ArrayLike,
                   names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every ``counts`` metric (or those in ``names``) from confusion counts; NaN where undefined."""
    tp, fp, tn, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, tn, fn))
    wanted = metric_names(kinds=("counts",)) if names is None else names
    return {n: _BY_NAME[n].counts(tp, fp, tn, fn) for n in wanted}


#: Metric names understood by :func:`bootstrap_ci` (keys of :func:`binary_metrics`).
BINARY_METRICS: tuple[str, ...] = metric_names(kinds=("rank", "counts"))
_RANK_METRICS = frozenset({"roc_auc", "pr_auc"})

# Upper bound on the elements of one (resamples x images) block in the bootstrap,
# so 10 000 images x 1000 resamples stays near 16 MB per temporary array.
_BLOCK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------- inputs


def _as_binary_labels(y_true: ArrayLike, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name} is empty: there is nothing to evaluate")
    if y.dtype == bool:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{name} must hold 0/1 labels; got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        found = sorted({float(v) for v in np.unique(y[bad])[:5]})
        raise ValueError(f"{name} must hold only 0 and 1; found {found}")
    return y.astype(np.int64)


def _as_scores(
    y_score: ArrayLike, n: int, name: str = "y_prob", *, unit_interval: bool = True
) -> np.ndarray:
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {s.shape}")
    if s.shape[0] != n:
        raise ValueError(f"{name} has {s.shape[0]} values but y_true has {n}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(s)).sum())} NaN or infinite values")
    if unit_interval and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; found range "
            f"[{s.min():.4g}, {s.max():.4g}]"
        )
    return s


def _as_group_codes(groups: ArrayLike | None, n: int) -> np.ndarray:
    """Integer code per image (0..G-1); ``None`` makes every image its own group."""
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"groups must be one value per image ({n}); got shape {g.shape}")
    _, codes = np.unique(g.astype(str) if g.dtype == object else g, return_inverse=True)
    return codes.ravel()


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


# --------------------------------------------------------------------- point metrics


def binary_metrics(
    y_true: ArrayLike, y_prob: ArrayLike, *, threshold: float
) -> dict[str, Any]:
    """Threshold and ranking metrics of a binary classifier.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 labels (1 = positive, the disease).
    y_prob : array-like of shape (n,)
        Predicted probability of the positive class, in [0, 1].
    threshold : float
        A case is predicted positive when ``y_prob >= threshold``. Choose it on the
        validation split (:func:`choose_threshold`), never on the test split.

    Returns
    -------
    dict
        ``roc_auc``, ``pr_auc`` (average precision), ``sensitivity`` (recall),
        ``specificity``, ``precision`` (PPV), ``npv``, ``f1``,
        ``balanced_accuracy``, ``accuracy``, ``mcc`` (every metric of :data:`METRICS` that is not a
        calibration metric; floats, or ``None`` where undefined),
        the counts ``tp``, ``fp``, ``tn``, ``fn``, ``n``, ``n_pos`` (ints),
        ``threshold`` and ``notes``: a list of plain-words reasons for every
        ``None``.

    Notes
    -----
    ``pr_auc`` is also ``None`` when the test set has no negative case: average
    precision is then 1 whatever the model does, which would mislead.
    ``balanced_accuracy`` is ``None`` unless both sensitivity and specificity are
    defined. ``f1`` is ``2 tp / (2 tp + fp + fn)``, ``None`` only when that is 0/0. ``mcc`` (Matthews)
    is ``None`` when a row or column of the confusion matrix is empty (scikit-learn returns 0 there).

    Examples
    --------
    >>> m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], threshold=0.5)
    >>> m["roc_auc"], m["sensitivity"], m["specificity"]
    (0.75, 0.5, 0.5)
    >>> binary_metrics([0, 0], [0.1, 0.2], threshold=0.5)["notes"][0]
    'roc_auc not defined: the test set has no positive case'
    """
    y = _as_binary_labels(y_true)
    p = _as_scores(y_prob, y.shape[0])
    threshold = float(threshold)
    pred = p >= threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    n, n_pos = int(y.shape[0]), tp + fn
    notes: list[str] = []

    rank = _ranking(y, p)
    notes.extend(rank["notes"])
    out: dict[str, Any] = {"roc_auc": rank["roc_auc"], "pr_auc": rank["pr_auc"]}
    for name, value in counts_metrics(tp, fp, tn, fn).items():
        out[name] = None if np.isnan(value) else float(value)
        if out[name] is None:
            notes.append(_BY_NAME[name].undefined.format(threshold=threshold))
    return {**out, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n, "n_pos": n_pos, "threshold": threshold,
            "notes": notes}


def _ranking(y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.shape[0]:
        missing = "positive" if n_pos == 0 else "negative"
        return {"roc_auc": None, "pr_auc": None,
                "notes": [_BY_NAME[m].undefined.format(missing=missing) for m in ("roc_auc", "pr_auc")]}
    return {"roc_auc": float(roc_auc_score(y, s)), "pr_auc": float(average_precision_score(y, s)), "notes": []}


def ranking_metrics(y_true: ArrayLike, y_score: ArrayLike) -> dict[str, Any]:
    """ROC-AUC and PR-AUC (average precision) of any real scores: only their order counts.

    Rank logits (or :func:`ranking_scores`), never probabilities that saturated: float32 sigmoid
    probabilities of logits above about 17 are all exactly 1.0, and float64 ones above about 37,
    so confident cases tie and the AUC drops (:func:`ranking_scores`).

    Returns
    -------
    dict
        ``roc_auc``, ``pr_auc`` (None without both classes) and ``notes``.

    Examples
    --------
    >>> ranking_metrics([0, 0, 1, 0, 0, 0], [17.0, 25.0, 30.0, 18.0, -3.0, 0.0])["roc_auc"]
    1.0
    """
    y = _as_binary_labels(y_true)
    return _ranking(y, _as_scores(y_score, y.shape[0], "y_score", unit_interval=False))


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def multiclass_metrics(
    y_true: ArrayLike, P: ArrayLike, *, classes: Sequence[str]
) -> dict[str, Any]:
    """One-vs-rest and confusion-matrix metrics of a k-class classifier.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Class indices ``0..k-1`` (the cohort's ``y`` column) or class names from
        ``classes``.
    P : array-like of shape (n, k)
        Predicted class probabilities, columns in the order of ``classes``.
    classes : sequence of str
        The k class names.

    Returns
    -------
    dict
        ``classes``, ``n``, ``per_class`` (name -> ``n``, ``roc_auc``, ``pr_auc``,
        ``recall``, ``precision``, ``f1``), ``macro`` (the mean of each metric over
        the classes where it is defined), ``confusion_matrix`` (list of rows: true
        class; columns: predicted class = argmax of ``P``), ``balanced_accuracy``
        (mean recall over the classes present), ``accuracy`` and ``notes``.

    Notes
    -----
    A class absent from ``y_true`` has ``None`` for ROC-AUC, PR-AUC and recall,
    and is left out of the macro means (a note says so). Precision of a class
    never predicted is ``None``. Ties in ``P`` go to the first class.
    """
    names = [str(c) for c in classes]
    k = len(names)
    if k < 2:
        raise ValueError(f"classes must name at least 2 classes; got {names}")
    probs = np.asarray(P, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"P must have shape (n, {k}) for classes {names}; got {probs.shape}")
    if not np.isfinite(probs).all():
        raise ValueError("P holds NaN or infinite values")
    y_raw = np.asarray(y_true)
    if y_raw.ndim != 1 or y_raw.shape[0] != probs.shape[0]:
        raise ValueError(
            f"y_true must be one label per row of P ({probs.shape[0]}); got shape {y_raw.shape}"
        )
    if y_raw.shape[0] == 0:
        raise ValueError("y_true is empty: there is nothing to evaluate")
    if np.issubdtype(y_raw.dtype, np.number):
        y = y_raw.astype(np.int64)
        if not np.array_equal(y, y_raw) or y.min() < 0 or y.max() >= k:
            raise ValueError(f"y_true must hold class indices 0..{k - 1}; found {np.unique(y_raw)[:5]}")
    else:
        lookup = {c: i for i, c in enumerate(names)}
        unknown = sorted({str(v) for v in y_raw} - lookup.keys())
        if unknown:
            raise ValueError(f"y_true holds labels not in classes {names}: {unknown[:5]}")
        y = np.array([lookup[str(v)] for v in y_raw], dtype=np.int64)

    pred = probs.argmax(axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    notes: list[str] = []
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        is_c = y == c
        n_c = int(is_c.sum())
        tp = int(cm[c, c])
        row: dict[str, Any] = {"n": n_c}
        if 0 < n_c < y.shape[0]:
            row["roc_auc"] = float(roc_auc_score(is_c, probs[:, c]))
            row["pr_auc"] = float(average_precision_score(is_c, probs[:, c]))
        else:
            row["roc_auc"] = row["pr_auc"] = None
            why = "is absent from" if n_c == 0 else "is the only class in"
            notes.append(f"roc_auc and pr_auc of class '{name}' not defined: it {why} the test set")
        row["recall"] = _ratio(tp, n_c)
        if row["recall"] is None:
            notes.append(f"recall of class '{name}' not defined: the test set has no such case")
        n_pred = int(cm[:, c].sum())
        row["precision"] = _ratio(tp, n_pred)
        if row["precision"] is None:
            notes.append(f"precision of class '{name}' not defined: it was never predicted")
        row["f1"] = _ratio(2 * tp, n_c + n_pred)
        per_class[name] = row

    metric_names = ("roc_auc", "pr_auc", "recall", "precision", "f1")
    macro = {m: _mean_defined([per_class[c][m] for c in names]) for m in metric_names}
    return {
        "classes": names,
        "n": int(y.shape[0]),
        "per_class": per_class,
        "macro": macro,
        "confusion_matrix": cm.tolist(),
        "balanced_accuracy": macro["recall"],
        "accuracy": float(np.trace(cm) / y.shape[0]),
        "notes": notes,
    }


def choose_threshold(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    method: Literal["youden", "sensitivity"] = "youden",
    target: float = 0.9,
) -> float:
    """Pick a decision threshold on the **validation** split.

    Never tune a threshold on the test split: the test metrics would then be
    optimistic, exactly the bias this package exists to avoid.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Validation 0/1 labels; both classes must be present.
    y_prob : array-like of shape (n,)
        Validation probabilities of the positive class.
    method : {"youden", "sensitivity"}, default "youden"
        ``"youden"``: maximise sensitivity + specificity - 1 (ties: the highest
        threshold). ``"sensitivity"``: the highest threshold whose sensitivity is
        at least ``target`` (the most specific operating point that still finds
        that share of the cases).
    target : float, default 0.9
        Target sensitivity in (0, 1], used by ``method="sensitivity"``.

    Returns
    -------
    float
        Cases with ``y_prob >= threshold`` are positive. The returned value is the
        **midpoint** between the chosen score and the next lower validation score: it
        classifies the validation cases exactly as the chosen score does, but does not sit
        on a validation case's own score. (Placed on the lowest positive score, a
        threshold of 1.0 from saturated, perfectly separated validation probabilities
        calls every test positive at 0.9999 negative.)

    Raises
    ------
    SplitError
        If the validation split lacks a class.
    """
    y = _as_binary_labels(y_true)
    p = _as_scores(y_prob, y.shape[0])
    n_pos = int(y.sum())
    n_neg = int(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        missing = "positive" if n_pos == 0 else "negative"
        raise SplitError(
            f"cannot choose a threshold: the validation split has no {missing} case; "
            "use fewer folds or a larger validation share, or fix the threshold in the config"
        )
    if method == "sensitivity":
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target sensitivity must be in (0, 1]; got {target}")
        # Sensitivity at threshold t counts positives with p >= t, so the highest t
        # reaching the target is the k-th largest positive score.
        k = math.ceil(target * n_pos - 1e-9)
        return _below(p, float(np.sort(p[y == 1])[::-1][max(k, 1) - 1]))
    if method != "youden":
        raise ValueError(f"method must be 'youden' or 'sensitivity'; got {method!r}")
    thresholds = np.unique(p)[::-1]  # descending, each a candidate
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), ps.shape[0] - 1]  # last index of each value
    tp = np.cumsum(ys)[last]
    fp = np.cumsum(1 - ys)[last]
    # J * n_pos * n_neg in integers, so exact ties resolve to the highest threshold
    return _below(p, float(thresholds[int(np.argmax(tp * n_neg - fp * n_pos))]))


def _below(p: np.ndarray, chosen: float) -> float:
    """Midpoint between ``chosen`` and the next lower distinct score (``chosen`` if none)."""
    lower = p[p < chosen]
    return chosen if lower.size == 0 else float((chosen + lower.max()) / 2)


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
    return np.array([p if not x else f"{p}{UNIT_SEPARATOR}{x}" for p, x in zip(pk, v, strict=True)], dtype=object)


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
    :func:`medxcept.evaluation.multiclass.unit_macro_auc`.
    """
    p = np.asarray(y_prob, dtype=np.float64)
    _, yp, pp = aggregate_by_patient(patient_key, y_true, p, how=how if p.ndim == 1 else "mean", visit=visit)
    if np.unique(yp).size < 2:
        return float("nan")
    if p.ndim == 1:
        return float(roc_auc_score(yp, pp))
    pp = pp / pp.sum(axis=1, keepdims=True)
    return float(roc_auc_score(yp, pp, multi_class="ovr", average="macro", labels=list(range(p.shape[1]))))


# ------------------------------------------------------------------------- bootstrap


class BootstrapCI(tuple):
    """``(point, low, high)`` of one metric, with the resample counts attached.

    Unpacks and serializes (``json.dumps``) as a plain 3-tuple; ``n_used`` and
    ``n_dropped`` tell how many resamples defined the metric and how many did not
    (for example a resample with no positive patient has no AUC).
    """

    n_used: int
    n_dropped: int

    def __new__(
        cls,
        point: float | None,
        low: float | None,
        high: float | None,
        n_used: int,
        n_dropped: int,
    ) -> BootstrapCI:
        self = super().__new__(cls, (point, low, high))
        self.n_used = n_used
        self.n_dropped = n_dropped
        return self

    @property
    def point(self) -> float | None:
        return self[0]

    @property
    def low(self) -> float | None:
        return self[1]

    @property
    def high(self) -> float | None:
        return self[2]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{point, low, high, n_used, n_dropped}``."""
        return {
            "point": self.point,
            "low": self.low,
            "high": self.high,
            "n_used": self.n_used,
            "n_dropped": self.n_dropped,
        }

    def __repr__(self) -> str:
        return (
            f"BootstrapCI(point={self.point}, low={self.low}, high={self.high}, "
            f"n_used={self.n_used}, n_dropped={self.n_dropped})"
        )


class _RankIndex:
    """Scores sorted once, so weighted AUC/AP of many resamples are cheap."""

    def __init__(self, y: np.ndarray, score: np.ndarray, codes: np.ndarray) -> None:
        order = np.argsort(score, kind="mergesort")
        sorted_score = score[order]
        self.starts = np.r_[0, np.flatnonzero(np.diff(sorted_score)) + 1]
        self.codes_sorted = codes[order]
        self.pos_sorted = (y[order] == 1).astype(np.float64)

    def per_value(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positive and negative weight at each distinct score (ascending), per resample."""
        w = counts[:, self.codes_sorted].astype(np.float64)
        pos_w = w * self.pos_sorted
        pos_u = np.add.reduceat(pos_w, self.starts, axis=1)
        neg_u = np.add.reduceat(w - pos_w, self.starts, axis=1)
        return pos_u, neg_u


def _weighted_auc(pos_u: np.ndarray, neg_u: np.ndarray) -> np.ndarray:
    """ROC-AUC per row: P(score_pos > score_neg) + 0.5 P(tie); NaN without both classes."""
    below = np.cumsum(neg_u, axis=1) - neg_u
    num = np.einsum("bu,bu->b", pos_u, below + 0.5 * neg_u)
    den = pos_u.sum(axis=1) * neg_u.sum(axis=1)
    out = np.full(den.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _weighted_ap(pos_u: np.ndarray, neg_u: np.ndarray) -> np.ndarray:
    """Average precision per row (scikit-learn's step definition); NaN without both classes."""
    tp = np.cumsum(pos_u[:, ::-1], axis=1)[:, ::-1]  # positives with score >= value
    fp = np.cumsum(neg_u[:, ::-1], axis=1)[:, ::-1]
    predicted = tp + fp
    precision = np.zeros_like(tp)
    np.divide(tp, predicted, out=precision, where=predicted > 0)
    n_pos, n_neg = tp[:, 0], fp[:, 0]
    out = np.full(n_pos.shape, np.nan)
    np.divide(np.einsum("bu,bu->b", pos_u, precision), n_pos, out=out,
              where=(n_pos > 0) & (n_neg > 0))
    return out


def _threshold_metrics(
    counts: np.ndarray, group_cells: np.ndarray, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Confusion-matrix metrics per resample; ``group_cells`` is (G, 4): tp, fp, tn, fn."""
    tp, fp, tn, fn = (counts @ group_cells).T.astype(np.float64)
    return counts_metrics(tp, fp, tn, fn, names)


def weighted_average_precision(y_true: ArrayLike, y_score: ArrayLike, weights: np.ndarray) -> np.ndarray:
    """Average precision for each row of case weights ``weights`` (B, n); NaN without both classes.

    A row of integer weights gives exactly scikit-learn's ``average_precision_score`` on the
    cases repeated that often (ties grouped); the patient bootstrap and the paired comparison
    use it.
    """
    y = _as_binary_labels(y_true)
    s = _as_scores(y_score, y.shape[0], "y_score", unit_interval=False)
    pos_u, neg_u = _RankIndex(y, s, np.arange(y.shape[0])).per_value(np.atleast_2d(weights))
    return _weighted_ap(pos_u, neg_u)


def _draw_counts(rng: np.random.Generator, n_rows: int, n_groups: int) -> np.ndarray:
    """(n_rows, n_groups) draw counts: each row resamples the groups with replacement."""
    idx = rng.integers(0, n_groups, size=(n_rows, n_groups))
    idx += (np.arange(n_rows) * n_groups)[:, None]
    return np.bincount(idx.ravel(), minlength=n_rows * n_groups).reshape(n_rows, n_groups)


def _block_rows(n_images: int, n_resamples: int) -> int:
    return max(1, min(n_resamples, _BLOCK_ELEMENTS // max(n_images, 1)))


def _percentile_ci(
    point: float | None, values: np.ndarray, alpha: float
) -> BootstrapCI:
    ok = values[np.isfinite(values)]
    n_drop = int(values.shape[0] - ok.shape[0])
    if ok.size == 0:
        return BootstrapCI(point, None, None, 0, n_drop)
    low, high = np.percentile(ok, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return BootstrapCI(point, float(low), float(high), int(ok.size), n_drop)


def percentile_ci(point: float | None, values: ArrayLike, alpha: float = 0.05) -> BootstrapCI:
    """Percentile interval of bootstrap ``values`` (NaN values, where the statistic was undefined in a
    resample, are dropped and counted), as :func:`bootstrap_ci` gives it."""
    return _percentile_ci(point, np.asarray(values, dtype=np.float64), alpha)


def cluster_resample_weights(groups: ArrayLike, n_resamples: int, seed: int = 0) -> np.ndarray:
    """The patient-cluster bootstrap of :func:`bootstrap_ci` as case weights, for statistics it does not list.

    Row ``b`` holds how often each case is drawn in resample ``b``: its patient (``groups``) drawn with
    replacement, with all the patient's cases. Same ``groups``, ``n_resamples`` and ``seed``, same draws
    as :func:`bootstrap_ci` (one generator, blocks drawn in the same order).

    Returns
    -------
    ndarray of shape (n_resamples, n)
        Integer draw counts per case (float64).

    Examples
    --------
    >>> w = cluster_resample_weights(["a", "a", "b"], 4, seed=1)
    >>> w.shape, bool((w[:, 0] == w[:, 1]).all()), (w[:, 0] + w[:, 2]).tolist()  # 2 patients drawn
    ((4, 3), True, [2.0, 2.0, 2.0, 2.0])
    """
    _check_bootstrap_args(n_resamples, 0.05)
    n = int(np.asarray(groups).shape[0])
    codes = _as_group_codes(groups, n)
    n_groups = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    rows = _block_rows(n, n_resamples)
    out: list[np.ndarray] = []
    done = 0
    while done < n_resamples:
        b = min(rows, n_resamples - done)
        out.append(_draw_counts(rng, b, n_groups)[:, codes].astype(np.float64))
        done += b
    return np.concatenate(out)


def _check_bootstrap_args(n_resamples: int, alpha: float) -> None:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1; got {n_resamples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")


def _undefined_because(metric: str) -> str:
    """Why ``metric`` can be undefined in a resample, in words."""
    if metric in ("sensitivity",):
        return "positive"
    if metric in ("specificity",):
        return "negative"
    if metric in _RANK_METRICS:
        return "positive or no negative"
    return "case it needs"


def bootstrap_ci(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    groups: ArrayLike | None,
    *,
    metrics: Sequence[str] = BINARY_METRICS,
    threshold: float | None,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    context: str | None = None,
) -> dict[str, BootstrapCI]:
    """Percentile bootstrap confidence intervals, resampling patients.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 image labels.
    y_prob : array-like of shape (n,)
        Probabilities of the positive class; when every metric is a ranking metric, any real
        scores (logits, :func:`ranking_scores`: only their order counts).
    groups : array-like of shape (n,) or None
        Patient key of each image. A resample draws patients with replacement and
        takes all their images, because images of one patient are not independent;
        resampling images instead gives intervals that are too narrow. ``None``
        resamples images (only right when each patient has one image).
    metrics : sequence of str, default :data:`BINARY_METRICS`
        Names from :data:`BINARY_METRICS`.
    threshold : float or None
        Decision threshold (``y_prob >= threshold`` is positive); may be ``None``
        only when every metric is a ranking metric (``roc_auc``, ``pr_auc``).
    n_resamples : int, default 1000
    alpha : float, default 0.05
        The interval covers ``1 - alpha``.
    seed : int, default 0
        Seed of the resampling generator; same inputs and seed, same intervals.
    context : str or None
        What is resampled (e.g. ``"subgroup laterality = L"``), named in the log line that counts
        resamples dropped because the metric was undefined in them.

    Returns
    -------
    dict of str to BootstrapCI
        ``(point, low, high)`` per metric. The point estimate is the metric on the
        full data (:func:`binary_metrics`). Resamples where a metric is undefined
        (no positive patient drawn, say) are dropped for that metric; the count
        is in ``.n_dropped``, and ``low``/``high`` are ``None`` if all were dropped.
    """
    unknown = [m for m in metrics if m not in BINARY_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(BINARY_METRICS)}")
    _check_bootstrap_args(n_resamples, alpha)
    y = _as_binary_labels(y_true)
    threshold_names = [m for m in metrics if m not in _RANK_METRICS]
    rank_names = [m for m in metrics if m in _RANK_METRICS]
    # ranking metrics alone take any real scores (logits: nothing saturates)
    p = _as_scores(y_prob, y.shape[0], unit_interval=bool(threshold_names))
    codes = _as_group_codes(groups, y.shape[0])
    if threshold_names and threshold is None:
        raise ValueError(f"threshold is needed for {threshold_names}")
    point_all = (binary_metrics(y, p, threshold=0.5 if threshold is None else threshold) if threshold_names
                 else _ranking(y, p))

    n_groups = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    index = _RankIndex(y, p, codes)
    group_cells = np.zeros((n_groups, 4), dtype=np.int64)
    if threshold_names and threshold is not None:
        pred = p >= float(threshold)
        cells = np.stack(
            [pred & (y == 1), pred & (y == 0), ~pred & (y == 0), ~pred & (y == 1)], axis=1
        ).astype(np.int64)
        np.add.at(group_cells, codes, cells)
    values: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    rows = _block_rows(y.shape[0], n_resamples)
    done = 0
    while done < n_resamples:
        b = min(rows, n_resamples - done)
        counts = _draw_counts(rng, b, n_groups)
        if rank_names:
            pos_u, neg_u = index.per_value(counts)
            if "roc_auc" in rank_names:
                values["roc_auc"].append(_weighted_auc(pos_u, neg_u))
            if "pr_auc" in rank_names:
                values["pr_auc"].append(_weighted_ap(pos_u, neg_u))
        if threshold_names:
            for m, v in _threshold_metrics(counts, group_cells, threshold_names).items():
                values[m].append(v)
        done += b

    out: dict[str, BootstrapCI] = {}
    for m in metrics:
        out[m] = _percentile_ci(point_all[m], np.concatenate(values[m]), alpha)
        if out[m].n_dropped:
            n_pos, n_neg = int(np.unique(codes[y == 1]).size), int(np.unique(codes[y == 0]).size)
            # a table row (context) is summarized by its caller in one line; the detail is debug
            logger.log(
                logging.DEBUG if context else logging.INFO,
                "bootstrap %s%s (%d resampled group(s): %d with a positive, %d with a negative): %d of %d "
                "resamples dropped (metric undefined in them: no %s drawn)",
                m, f" of {context}" if context else "", n_groups, n_pos, n_neg, out[m].n_dropped, n_resamples,
                _undefined_because(m),
            )
    return out


# ------------------------------------------------------------------ comparing models


def delong_test(
    y_true: ArrayLike, p1: ArrayLike, p2: ArrayLike, *, alpha: float = 0.05
) -> dict[str, Any]:
    """DeLong's test for two correlated ROC-AUCs (same cases, two models).

    Uses the fast midrank algorithm of Sun & Xu (2014, IEEE Signal Processing
    Letters 21:1389), which gives exactly the DeLong, DeLong & Clarke-Pearson
    (1988) covariance in O(n log n).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 labels, at least two of each class.
    p1, p2 : array-like of shape (n,)
        Scores of the two models (any real values; higher = more likely positive).
    alpha : float, default 0.05
        ``ci`` is the ``1 - alpha`` normal-theory interval of ``auc1 - auc2``.

    Returns
    -------
    dict
        ``auc1``, ``auc2``, ``diff`` (auc1 - auc2), ``se`` (of diff), ``z``,
        ``p_value`` (two-sided), ``ci`` (low, high), ``n_pos``, ``n_neg``, ``notes``.
        With fewer than two cases of a class everything but the counts is ``None``.

    Notes
    -----
    The test treats cases as independent. With several images per patient,
    aggregate first (:func:`aggregate_by_patient`) or use
    :func:`paired_bootstrap_auc` with ``groups``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    y = _as_binary_labels(y_true)
    s1 = _as_scores(p1, y.shape[0], "p1", unit_interval=False)
    s2 = _as_scores(p2, y.shape[0], "p2", unit_interval=False)
    m, n = int(y.sum()), int(y.shape[0] - y.sum())
    result: dict[str, Any] = {
        "auc1": None, "auc2": None, "diff": None, "se": None, "z": None,
        "p_value": None, "ci": None, "n_pos": m, "n_neg": n, "notes": [],
    }
    if m < 2 or n < 2:
        result["notes"].append(
            f"DeLong test not defined: it needs at least 2 positive and 2 negative cases "
            f"(found {m} and {n})"
        )
        return result
    scores = np.stack([s1, s2])
    x, z_neg = scores[:, y == 1], scores[:, y == 0]
    tx = stats.rankdata(x, axis=1)
    ty = stats.rankdata(z_neg, axis=1)
    tz = stats.rankdata(np.concatenate([x, z_neg], axis=1), axis=1)
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v_pos = (tz[:, :m] - tx) / n  # structural components of the positives
    v_neg = 1.0 - (tz[:, m:] - ty) / m  # ... and of the negatives
    cov = np.cov(v_pos) / m + np.cov(v_neg) / n
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se > 1e-15:
        z = diff / se
        p_value = float(2.0 * stats.norm.sf(abs(z)))
    else:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p_value = 1.0 if diff == 0 else 0.0
        result["notes"].append("the AUC difference has zero variance (identical rankings?)")
    half = float(stats.norm.ppf(1 - alpha / 2)) * se
    result.update(
        auc1=float(aucs[0]), auc2=float(aucs[1]), diff=diff, se=se, z=float(z),
        p_value=p_value, ci=(diff - half, diff + half),
    )
    return result


def paired_bootstrap_auc(
    y_true: ArrayLike,
    p1: ArrayLike,
    p2: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap comparison of two models' ROC-AUC, resampling patients.

    Both models are scored on the same resamples, so their correlation is kept.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 image labels.
    p1, p2 : array-like of shape (n,)
        Scores of the two models.
    groups : array-like of shape (n,) or None
        Patient key per image (``None``: images are resampled).
    n_resamples : int, default 1000
    alpha : float, default 0.05
    seed : int, default 0

    Returns
    -------
    dict
        ``auc1``, ``auc2``, ``diff`` (on the full data), ``ci`` (percentile
        interval of the difference), ``se`` (bootstrap standard deviation of the
        difference), ``z`` = diff / se, ``p_value`` (two-sided, normal), ``n_used``,
        ``n_dropped`` (resamples without both classes).
    """
    _check_bootstrap_args(n_resamples, alpha)
    y = _as_binary_labels(y_true)
    s1 = _as_scores(p1, y.shape[0], "p1", unit_interval=False)
    s2 = _as_scores(p2, y.shape[0], "p2", unit_interval=False)
    if y.min() == y.max():
        raise ValueError("paired_bootstrap_auc needs both classes in y_true")
    codes = _as_group_codes(groups, y.shape[0])
    n_groups = int(codes.max()) + 1
    idx1, idx2 = _RankIndex(y, s1, codes), _RankIndex(y, s2, codes)
    rng = np.random.default_rng(seed)
    diffs: list[np.ndarray] = []
    rows = _block_rows(y.shape[0], n_resamples)
    done = 0
    while done < n_resamples:
        b = min(rows, n_resamples - done)
        counts = _draw_counts(rng, b, n_groups)
        diffs.append(_weighted_auc(*idx1.per_value(counts)) - _weighted_auc(*idx2.per_value(counts)))
        done += b
    d = np.concatenate(diffs)
    ok = d[np.isfinite(d)]
    auc1, auc2 = float(roc_auc_score(y, s1)), float(roc_auc_score(y, s2))
    diff = auc1 - auc2
    out: dict[str, Any] = {
        "auc1": auc1, "auc2": auc2, "diff": diff, "ci": None, "se": None, "z": None,
        "p_value": None, "n_used": int(ok.size), "n_dropped": int(d.size - ok.size),
    }
    if ok.size >= 2:
        low, high = np.percentile(ok, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        se = float(np.std(ok, ddof=1))
        out["ci"] = (float(low), float(high))
        out["se"] = se
        if se > 0:
            out["z"] = diff / se
            out["p_value"] = float(2.0 * stats.norm.sf(abs(diff / se)))
        else:
            out["z"] = 0.0 if diff == 0 else math.copysign(math.inf, diff)
            out["p_value"] = 1.0 if diff == 0 else 0.0
    return out
