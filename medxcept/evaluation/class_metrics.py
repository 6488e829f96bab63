"""The k-class metric registry: every k-class metric declared once, and the confusion-matrix metrics.

The k-class counterpart of :mod:`medxcept.evaluation.metrics` (:data:`medxcept.evaluation.metrics.METRICS`):
:data:`CLASS_METRICS` lists every metric of a graded or multi-class run, how it is computed (from
confusion matrices, one value or one per class, or from the per-class one-vs-rest ranks), the tasks
(:data:`KINDS`) it applies to and where it is shown. :func:`medxcept.evaluation.multiclass.multiclass_report`,
:func:`~medxcept.evaluation.multiclass.paired_comparison`, the k-fold per-fold rows and summary, pooled
out-of-fold metrics and ``pipelines.compare`` read it when they run, so adding a metric is one entry.
Pure functions on arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "KINDS",
    "ClassMetric",
    "CLASS_METRICS",
    "class_metrics",
    "class_metric_names",
    "class_metric_bounds",
    "metric_in_cv",
    "confusion_matrix",
    "kappa_from_cm",
    "quadratic_kappa",
]

#: The two kinds of k-class task: unordered classes, and ordered grades (class index = grade).
KINDS = ("nominal", "ordinal")


# ------------------------------------------------------------------------- point metrics


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts: rows the true class, columns the predicted one (all k classes kept)."""
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def kappa_from_cm(cm: np.ndarray) -> np.ndarray:
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
    v = float(kappa_from_cm(confusion_matrix(y_true, y_pred, k)))
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
    ClassMetric("kappa_quadratic", "quadratic-weighted kappa", "confusion", lambda cm: kappa_from_cm(cm),
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
