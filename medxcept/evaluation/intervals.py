"""Uncertainty of evaluation metrics: patient-cluster bootstrap intervals and paired tests of two models.

**The patient is the unit.** Images of one patient are correlated, so :func:`bootstrap_ci`
resamples patients (``groups``) with all their images.

The bootstrap is vectorized: one resample is a vector of draw counts per group, so
a resampled data set is the original data with integer weights. ROC-AUC and
average precision are computed for all resamples at once from weighted rank
statistics (exactly what scikit-learn gives on the explicitly resampled arrays,
ties included), instead of calling scikit-learn once per resample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import roc_auc_score

from medxcept.evaluation.metrics import (
    BINARY_METRICS,
    RANK_METRICS,
    as_binary_labels,
    as_scores,
    binary_metrics,
    counts_metrics,
    ranking_metrics,
)

__all__ = [
    "BootstrapCI",
    "RankIndex",
    "weighted_auc",
    "weighted_ap",
    "weighted_average_precision",
    "as_group_codes",
    "draw_counts",
    "block_rows",
    "check_bootstrap_args",
    "percentile_ci",
    "cluster_resample_weights",
    "bootstrap_ci",
    "delong_test",
    "paired_bootstrap_auc",
]

logger = logging.getLogger(__name__)

# Upper bound on the elements of one (resamples x images) block in the bootstrap,
# so 10 000 images x 1000 resamples stays near 16 MB per temporary array.
_BLOCK_ELEMENTS = 2_000_000


def as_group_codes(groups: ArrayLike | None, n: int) -> np.ndarray:
    """Integer code per image (0..G-1); ``None`` makes every image its own group."""
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"groups must be one value per image ({n}); got shape {g.shape}")
    _, codes = np.unique(g.astype(str) if g.dtype == object else g, return_inverse=True)
    return codes.ravel()


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


class RankIndex:
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


def weighted_auc(pos_u: np.ndarray, neg_u: np.ndarray) -> np.ndarray:
    """ROC-AUC per row: P(score_pos > score_neg) + 0.5 P(tie); NaN without both classes."""
    below = np.cumsum(neg_u, axis=1) - neg_u
    num = np.einsum("bu,bu->b", pos_u, below + 0.5 * neg_u)
    den = pos_u.sum(axis=1) * neg_u.sum(axis=1)
    out = np.full(den.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def weighted_ap(pos_u: np.ndarray, neg_u: np.ndarray) -> np.ndarray:
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
    y = as_binary_labels(y_true)
    s = as_scores(y_score, y.shape[0], "y_score", unit_interval=False)
    pos_u, neg_u = RankIndex(y, s, np.arange(y.shape[0])).per_value(np.atleast_2d(weights))
    return weighted_ap(pos_u, neg_u)


def draw_counts(rng: np.random.Generator, n_rows: int, n_groups: int) -> np.ndarray:
    """(n_rows, n_groups) draw counts: each row resamples the groups with replacement."""
    idx = rng.integers(0, n_groups, size=(n_rows, n_groups))
    idx += (np.arange(n_rows) * n_groups)[:, None]
    return np.bincount(idx.ravel(), minlength=n_rows * n_groups).reshape(n_rows, n_groups)


def block_rows(n_images: int, n_resamples: int) -> int:
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
    check_bootstrap_args(n_resamples, 0.05)
    n = int(np.asarray(groups).shape[0])
    codes = as_group_codes(groups, n)
    n_groups = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    rows = block_rows(n, n_resamples)
    out: list[np.ndarray] = []
    done = 0
    while done < n_resamples:
        b = min(rows, n_resamples - done)
        out.append(draw_counts(rng, b, n_groups)[:, codes].astype(np.float64))
        done += b
    return np.concatenate(out)


def check_bootstrap_args(n_resamples: int, alpha: float) -> None:
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
    if metric in RANK_METRICS:
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
        scores (logits, :func:`~medxcept.evaluation.units.ranking_scores`: only their order counts).
    groups : array-like of shape (n,) or None
        Patient key of each image. A resample draws patients with replacement and
        takes all their images, because images of one patient are not independent;
        resampling images instead gives intervals that are too narrow. ``None``
        resamples images (only right when each patient has one image).
    metrics : sequence of str, default :data:`~medxcept.evaluation.metrics.BINARY_METRICS`
        Names from :data:`~medxcept.evaluation.metrics.BINARY_METRICS`.
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
        full data (:func:`~medxcept.evaluation.metrics.binary_metrics`). Resamples where a metric is undefined
        (no positive patient drawn, say) are dropped for that metric; the count
        is in ``.n_dropped``, and ``low``/``high`` are ``None`` if all were dropped.
    """
    unknown = [m for m in metrics if m not in BINARY_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(BINARY_METRICS)}")
    check_bootstrap_args(n_resamples, alpha)
    y = as_binary_labels(y_true)
    threshold_names = [m for m in metrics if m not in RANK_METRICS]
    rank_names = [m for m in metrics if m in RANK_METRICS]
    # ranking metrics alone take any real scores (logits: nothing saturates)
    p = as_scores(y_prob, y.shape[0], unit_interval=bool(threshold_names))
    codes = as_group_codes(groups, y.shape[0])
    if threshold_names and threshold is None:
        raise ValueError(f"threshold is needed for {threshold_names}")
    point_all = (binary_metrics(y, p, threshold=0.5 if threshold is None else threshold) if threshold_names
                 else ranking_metrics(y, p))

    n_groups = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    index = RankIndex(y, p, codes)
    group_cells = np.zeros((n_groups, 4), dtype=np.int64)
    if threshold_names and threshold is not None:
        pred = p >= float(threshold)
        cells = np.stack(
            [pred & (y == 1), pred & (y == 0), ~pred & (y == 0), ~pred & (y == 1)], axis=1
        ).astype(np.int64)
        np.add.at(group_cells, codes, cells)
    values: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    rows = block_rows(y.shape[0], n_resamples)
    done = 0
    while done < n_resamples:
        b = min(rows, n_resamples - done)
        counts = draw_counts(rng, b, n_groups)
        if rank_names:
            pos_u, neg_u = index.per_value(counts)
            if "roc_auc" in rank_names:
                values["roc_auc"].append(weighted_auc(pos_u, neg_u))
            if "pr_auc" in rank_names:
                values["pr_auc"].append(weighted_ap(pos_u, neg_u))
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
    aggregate first (:func:`~medxcept.evaluation.units.aggregate_by_patient`) or use
    :func:`paired_bootstrap_auc` with ``groups``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    y = as_binary_labels(y_true)
    s1 = as_scores(p1, y.shape[0], "p1", unit_interval=False)
    s2 = as_scores(p2, y.shape[0], "p2", unit_interval=False)
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
    check_bootstrap_args(n_resamples, alpha)
    y = as_binary_labels(y_true)
    s1 = as_scores(p1, y.shape[0], "p1", unit_interval=False)
    s2 = as_scores(p2, y.shape[0], "p2", unit_interval=False)
    if y.min() == y.max():
        raise ValueError("paired_bootstrap_auc needs both classes in y_true")
    codes = as_group_codes(groups, y.shape[0])
    n_groups = int(codes.max()) + 1
    idx1, idx2 = RankIndex(y, s1, codes), RankIndex(y, s2, codes)
    rng = np.random.default_rng(seed)
    diffs: list[np.ndarray] = []
    rows = block_rows(y.shape[0], n_resamples)
    done = 0
    while done < n_resamples:
        b = min(rows, n_resamples - done)
        counts = draw_counts(rng, b, n_groups)
        diffs.append(weighted_auc(*idx1.per_value(counts)) - weighted_auc(*idx2.per_value(counts)))
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
