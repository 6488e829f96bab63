"""Evaluation metrics: the metric registry and point metrics on labels and predicted probabilities.

Everything here takes arrays and returns numbers; nothing reads files or models.
Two rules run through the module:

* **Undefined is None, never 0.** A metric that cannot be computed on the data at
  hand (ROC-AUC when the test set has one class, precision when nothing was
  predicted positive) is ``None``, and a plain-words reason goes into ``notes``.
  A misleading 0 or 0.5 would be copied into a paper.
* **Thresholds come from validation data.** :func:`choose_threshold` is meant for
  the validation split; the test split is touched once, with the threshold fixed.

A case is predicted positive when ``y_prob >= threshold``. The evaluation unit (patient or
visit) and the aggregation of images into units live in :mod:`medxcept.evaluation.units`;
bootstrap intervals and the paired tests (DeLong) in :mod:`medxcept.evaluation.intervals`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score

from medxcept.errors import SplitError

__all__ = [
    "Metric",
    "METRICS",
    "metric_names",
    "metric_labels",
    "counts_metrics",
    "BINARY_METRICS",
    "RANK_METRICS",
    "as_binary_labels",
    "as_scores",
    "ranking_metrics",
    "binary_metrics",
    "multiclass_metrics",
    "choose_threshold",
    "threshold_below",
]

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


#: Metric names understood by :func:`~medxcept.evaluation.intervals.bootstrap_ci` (keys of :func:`binary_metrics`).
BINARY_METRICS: tuple[str, ...] = metric_names(kinds=("rank", "counts"))
RANK_METRICS = frozenset({"roc_auc", "pr_auc"})

# --------------------------------------------------------------------------- inputs


def as_binary_labels(y_true: ArrayLike, name: str = "y_true") -> np.ndarray:
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


def as_scores(
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
    y = as_binary_labels(y_true)
    p = as_scores(y_prob, y.shape[0])
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

    Rank logits (or :func:`~medxcept.evaluation.units.ranking_scores`), never probabilities that saturated: float32 sigmoid
    probabilities of logits above about 17 are all exactly 1.0, and float64 ones above about 37,
    so confident cases tie and the AUC drops (:func:`~medxcept.evaluation.units.ranking_scores`).

    Returns
    -------
    dict
        ``roc_auc``, ``pr_auc`` (None without both classes) and ``notes``.

    Examples
    --------
    >>> ranking_metrics([0, 0, 1, 0, 0, 0], [17.0, 25.0, 30.0, 18.0, -3.0, 0.0])["roc_auc"]
    1.0
    """
    y = as_binary_labels(y_true)
    return _ranking(y, as_scores(y_score, y.shape[0], "y_score", unit_interval=False))


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
    y = as_binary_labels(y_true)
    p = as_scores(y_prob, y.shape[0])
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
        return threshold_below(p, float(np.sort(p[y == 1])[::-1][max(k, 1) - 1]))
    if method != "youden":
        raise ValueError(f"method must be 'youden' or 'sensitivity'; got {method!r}")
    thresholds = np.unique(p)[::-1]  # descending, each a candidate
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), ps.shape[0] - 1]  # last index of each value
    tp = np.cumsum(ys)[last]
    fp = np.cumsum(1 - ys)[last]
    # J * n_pos * n_neg in integers, so exact ties resolve to the highest threshold
    return threshold_below(p, float(thresholds[int(np.argmax(tp * n_neg - fp * n_pos))]))


def threshold_below(p: np.ndarray, chosen: float) -> float:
    """Midpoint between ``chosen`` and the next lower distinct score (``chosen`` if none)."""
    lower = p[p < chosen]
    return chosen if lower.size == 0 else float((chosen + lower.max()) / 2)
