"""The clinical reading of a binary model: calibration the clinical way, net benefit, operating points,
and whether the test set is big enough to say any of it.

Pure functions on unit-level labels and probabilities (one row per patient or visit,
:func:`medxcept.evaluation.units.aggregate_by_patient`); they return numbers, the report draws them.

* **Calibration intercept and slope** (Van Calster et al., BMC Medicine 2019;17:230): the
  calibration-in-the-large ``a`` of ``logit P(y=1) = a + logit(p)`` (the slope fixed at 1, the
  model's logit as offset) and the slope ``b`` of ``logit P(y=1) = a' + b logit(p)``. Ideal: ``a = 0``,
  ``b = 1``; ``b < 1`` means predictions too extreme (the signature of overfitting on small data).
  Point estimates are ``statsmodels`` GLM fits; the patient-bootstrap resamples refit the same
  maximum-likelihood models on case weights, vectorized over resamples (:func:`recalibration_fits`,
  checked against ``statsmodels`` in the tests).
* **Smoothed calibration curve**: LOWESS (``statsmodels``) of the outcome on the predicted
  probability, with a patient-bootstrap percentile band.
* **Net benefit** (Vickers & Elkin, Med Decis Making 2006;26:565): at threshold probability ``t``,
  ``TP/n - FP/n * t / (1 - t)``, against "refer all" (``prevalence - (1 - prevalence) t / (1 - t)``)
  and "refer none" (0). It holds at the prevalence of the units it is computed on, which is stated.
* **Operating points**: the threshold reaching a fixed specificity (or sensitivity) is read off the
  **validation** units' ROC curve (:func:`operating_thresholds`) and applied unchanged to test
  (:func:`operating_point_table`); PPV and NPV are restated at a given prevalence by Bayes' rule.
* **Sample size** (Riley et al., Stat Med 2021;40:4230; BMJ 2024;384:e074821): the expected 95 % CI
  half-width of the AUC and of the calibration slope for this number of units and events, and the
  units needed for Riley's targets (AUC within ±0.05, slope within ±0.10): :func:`sample_size`.

Bootstrap intervals resample patients with all their units, through the project's one cluster
bootstrap (:func:`medxcept.evaluation.intervals.cluster_resample_weights`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import statsmodels.api as sm
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve
from statsmodels.nonparametric.smoothers_lowess import lowess
from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

from medxcept.evaluation.calibrate import to_logits
from medxcept.evaluation.intervals import cluster_resample_weights, percentile_ci
from medxcept.evaluation.metrics import as_binary_labels, as_scores, counts_metrics, threshold_below

__all__ = [
    "OPERATING_TARGETS",
    "AUC_HALF_WIDTH_TARGET",
    "SLOPE_HALF_WIDTH_TARGET",
    "calibration_intercept_slope",
    "recalibration_fits",
    "smoothed_calibration",
    "net_benefit",
    "decision_curve",
    "operating_thresholds",
    "operating_point_table",
    "ppv_npv_at_prevalence",
    "auc_standard_error",
    "slope_standard_error",
    "sample_size",
    "decision_thresholds",
    "clinical_reading",
]

#: The operating points a clinician picks: (the rate held fixed, its target on validation).
OPERATING_TARGETS: tuple[tuple[str, float], ...] = (
    ("specificity", 0.90), ("specificity", 0.95), ("sensitivity", 0.90), ("sensitivity", 0.95))

#: Riley et al.'s precision targets for a validation study: 95 % CI width 0.1 for the C statistic ...
AUC_HALF_WIDTH_TARGET = 0.05
#: ... and 0.2 for the calibration slope.
SLOPE_HALF_WIDTH_TARGET = 0.10

_Z = float(stats.norm.ppf(0.975))


# ------------------------------------------------------------------- calibration intercept, slope


def calibration_intercept_slope(y_true: ArrayLike, y_prob: ArrayLike) -> dict[str, Any]:
    """Calibration-in-the-large and calibration slope (``statsmodels`` logistic fits).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 outcome of each unit.
    y_prob : array-like of shape (n,)
        Predicted probability of each unit (clipped to [1e-7, 1 - 1e-7] before the logit).

    Returns
    -------
    dict
        ``intercept`` (slope fixed at 1: ``logit(p)`` as offset), ``slope`` (and ``slope_intercept``,
        its model's intercept), their model standard errors ``intercept_se`` / ``slope_se``, ``n``,
        ``n_events``; ``None`` values and a ``note`` when a fit is undefined (one class, constant
        predictions, predictions that separate the outcome perfectly).

    Examples
    --------
    >>> r = calibration_intercept_slope([0, 1, 0, 1, 1, 0], [0.2, 0.7, 0.4, 0.3, 0.9, 0.6])
    >>> round(r["intercept"], 3), round(r["slope"], 3)
    (-0.087, 1.07)
    """
    y = as_binary_labels(y_true).astype(np.float64)
    z = to_logits(as_scores(y_prob, y.shape[0]))
    out: dict[str, Any] = {"intercept": None, "intercept_se": None, "slope": None, "slope_intercept": None,
                           "slope_se": None, "n": int(y.size), "n_events": int(y.sum()), "note": None}
    if y.min() == y.max():
        out["note"] = "calibration intercept and slope not defined: the units have one class"
        return out
    binomial = sm.families.Binomial()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # exp overflow of saturated logits inside the IRLS
        try:
            citl = sm.GLM(y, np.ones((y.size, 1)), family=binomial, offset=z).fit()
            out["intercept"], out["intercept_se"] = float(citl.params[0]), float(citl.bse[0])
            if np.ptp(z) == 0:
                out["note"] = "calibration slope not defined: every unit has the same prediction"
                return out
            fit = sm.GLM(y, sm.add_constant(z, has_constant="add"), family=binomial).fit()
        except (PerfectSeparationWarning, np.linalg.LinAlgError):
            out["note"] = "calibration slope not defined: the predictions separate the outcome perfectly"
            return out
    out["slope_intercept"], out["slope"], out["slope_se"] = (float(fit.params[0]), float(fit.params[1]),
                                                              float(fit.bse[1]))
    return out


def recalibration_fits(y_true: ArrayLike, y_prob: ArrayLike, weights: np.ndarray, *,
                       max_iter: int = 50, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Calibration intercept and slope of many case-weighted data sets at once.

    The maximum-likelihood fits of :func:`calibration_intercept_slope` (Newton-Raphson, one row of
    ``weights`` per data set: bootstrap draw counts), vectorized over rows.

    Parameters
    ----------
    y_true, y_prob : array-like of shape (n,)
    weights : ndarray of shape (B, n)
        Non-negative case weights (integer draw counts give exactly the fit on the repeated cases).

    Returns
    -------
    intercept, slope : ndarray of shape (B,)
        NaN where undefined in that row (one class drawn, constant predictions, separation, no
        convergence).
    """
    y = as_binary_labels(y_true).astype(np.float64)
    z = to_logits(as_scores(y_prob, y.shape[0]))
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    pos, tot = w @ y, w.sum(axis=1)
    both = (pos > 0) & (pos < tot)
    # intercept with offset z: one-parameter Newton
    a = np.zeros(w.shape[0])
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(a[:, None] + z)))
        grad = w @ y - (w * p).sum(axis=1)
        info = (w * p * (1 - p)).sum(axis=1)
        step = np.divide(grad, info, out=np.zeros_like(grad), where=info > 0)
        a += step
        if np.all(np.abs(step[both]) < tol):
            break
    intercept = np.where(both & np.isfinite(a), a, np.nan)
    # slope: two-parameter Newton on (a', b), with the 2x2 information inverted in closed form
    coef = np.zeros((w.shape[0], 2))
    converged = np.zeros(w.shape[0], dtype=bool)
    for _ in range(max_iter):
        eta = coef[:, :1] + coef[:, 1:] * z
        p = 1.0 / (1.0 + np.exp(-np.clip(eta, -700, 700)))
        r = w * (y - p)
        g0, g1 = r.sum(axis=1), r @ z
        v = w * p * (1 - p)
        i00, i01, i11 = v.sum(axis=1), v @ z, v @ (z * z)
        det = i00 * i11 - i01 * i01
        ok = det > 1e-12 * np.maximum(i00 * i11, 1e-300)
        d0 = np.divide(i11 * g0 - i01 * g1, det, out=np.zeros_like(det), where=ok)
        d1 = np.divide(i00 * g1 - i01 * g0, det, out=np.zeros_like(det), where=ok)
        coef[:, 0] += d0
        coef[:, 1] += d1
        converged = ok & (np.abs(d0) < 1e-8) & (np.abs(d1) < 1e-8)
        if np.all(converged | ~both):
            break
    # a separated row never converges: its slope runs off to large values
    slope = np.where(both & converged & (np.abs(coef[:, 1]) < 50), coef[:, 1], np.nan)
    return intercept, slope


# ---------------------------------------------------------------------- smoothed calibration curve


def smoothed_calibration(y_true: ArrayLike, y_prob: ArrayLike, grid: ArrayLike, *,
                         frac: float = 2.0 / 3.0) -> np.ndarray:
    """LOWESS estimate of P(y = 1 | p) at the probabilities ``grid`` (``statsmodels``, no robustness
    iterations: the outcome is binary). NaN outside the range of ``y_prob``; clipped to [0, 1]."""
    y = as_binary_labels(y_true).astype(np.float64)
    p = as_scores(y_prob, y.shape[0])
    g = np.asarray(grid, dtype=np.float64)
    if np.ptp(p) == 0:
        return np.full(g.shape, np.nan)
    with warnings.catch_warnings():  # a neighbourhood of identical predictions has no slope: NaN there
        warnings.simplefilter("ignore", RuntimeWarning)
        est = lowess(y, p, frac=frac, it=0, xvals=g)
    est = np.clip(est, 0.0, 1.0)
    est[(g < p.min()) | (g > p.max())] = np.nan
    return est


# ------------------------------------------------------------------------------- net benefit


def net_benefit(y_true: ArrayLike, y_prob: ArrayLike, thresholds: ArrayLike,
                weights: np.ndarray | None = None) -> np.ndarray:
    """Net benefit of referring the units with ``y_prob >= t``, at each threshold probability ``t``.

    ``NB(t) = TP/n - FP/n * t / (1 - t)`` (Vickers & Elkin 2006). With ``weights`` (B, n), one row per
    weighted data set (bootstrap resamples): shape (B, T); else (T,).

    Examples
    --------
    >>> net_benefit([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.1], [0.5]).round(4).tolist()
    [0.0]
    """
    y = as_binary_labels(y_true).astype(np.float64)
    p = as_scores(y_prob, y.shape[0])
    t = np.asarray(thresholds, dtype=np.float64)
    if np.any((t <= 0) | (t >= 1)):
        raise ValueError(f"threshold probabilities must be in (0, 1); got {t.min():g}..{t.max():g}")
    pred = (p[:, None] >= t[None, :]).astype(np.float64)  # (n, T)
    w = np.ones((1, y.size)) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n = w.sum(axis=1, keepdims=True)
    tp, fp = (w * y) @ pred, (w * (1 - y)) @ pred
    nb = np.divide(tp - fp * (t / (1 - t)), n, out=np.full(tp.shape, np.nan), where=n > 0)
    return nb[0] if weights is None else nb


def _treat_all(y: np.ndarray, t: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    w = np.ones((1, y.size)) if weights is None else weights
    prev = (w @ y) / w.sum(axis=1)
    nb = prev[:, None] - (1 - prev[:, None]) * (t / (1 - t))[None, :]
    return nb[0] if weights is None else nb


def decision_curve(y_true: ArrayLike, y_prob: ArrayLike, thresholds: ArrayLike,
                   weights: np.ndarray | None = None, alpha: float = 0.05) -> dict[str, Any]:
    """Net benefit of the model, of referring all and of referring none over ``thresholds``, with the
    prevalence it holds for; with ``weights`` (bootstrap draws) a percentile band for the model and
    for the model's gain over the better default (``max(refer all, refer none)``).

    ``useful_ranges``: the runs of thresholds where the model beats both defaults (``useful_range``:
    from the first to the last of them); ``clearly_useful_ranges``: where the gain's interval excludes 0.
    """
    y = as_binary_labels(y_true).astype(np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    model, all_ = net_benefit(y, y_prob, t), _treat_all(y, t)
    out: dict[str, Any] = {"thresholds": t.tolist(), "prevalence": float(y.mean()), "n": int(y.size),
                           "model": model.tolist(), "refer_all": all_.tolist(), "refer_none": [0.0] * t.size}
    gain = model - np.maximum(all_, 0.0)
    out["useful_ranges"] = _runs(t, gain > 1e-12)
    out["useful_range"] = ([out["useful_ranges"][0][0], out["useful_ranges"][-1][1]]
                           if out["useful_ranges"] else None)
    if weights is not None:
        boot = net_benefit(y, y_prob, t, weights)
        boot_gain = boot - np.maximum(_treat_all(y, t, weights), 0.0)
        low, high = np.nanpercentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
        glow, ghigh = np.nanpercentile(boot_gain, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
        out.update(model_low=low.tolist(), model_high=high.tolist(), gain=gain.tolist(),
                   gain_low=glow.tolist(), gain_high=ghigh.tolist(),
                   # where the gain's interval excludes 0: the model is better than both defaults there
                   clearly_useful_ranges=_runs(t, glow > 0))
    return out


def _runs(t: np.ndarray, mask: np.ndarray) -> list[list[float]]:
    """Contiguous runs of ``t`` where ``mask`` holds, as ``[first, last]`` pairs."""
    runs: list[list[float]] = []
    for i in np.flatnonzero(mask):
        if runs and i > 0 and mask[i - 1]:
            runs[-1][1] = float(t[i])
        else:
            runs.append([float(t[i]), float(t[i])])
    return runs


# -------------------------------------------------------------------------- operating points


def operating_thresholds(y_val: ArrayLike, p_val: ArrayLike,
                         targets: Sequence[tuple[str, float]] = OPERATING_TARGETS) -> list[dict[str, Any]]:
    """The thresholds reaching fixed specificities / sensitivities on the **validation** units.

    Read off ``sklearn.metrics.roc_curve`` of the validation units: for ``("specificity", s)`` the ROC
    point with the highest sensitivity among those with specificity ``>= s``; for
    ``("sensitivity", s)`` the one with the highest specificity among those with sensitivity ``>= s``
    (ties: the higher threshold). As with :func:`medxcept.evaluation.metrics.choose_threshold`, the threshold
    applied is the midpoint between that point's score and the next lower validation score.

    Returns
    -------
    list of dict
        ``fixed``, ``target``, ``threshold``, ``val_sensitivity``, ``val_specificity``, ``n_val``;
        ``threshold`` is ``None``, with a ``note``, when validation lacks a class or when no threshold
        but "refer none" reaches the target.
    """
    y = as_binary_labels(y_val, "y_val")
    p = as_scores(p_val, y.shape[0], "p_val")
    rows: list[dict[str, Any]] = []
    if y.min() == y.max():
        return [{"fixed": f, "target": s, "threshold": None, "val_sensitivity": None, "val_specificity": None,
                 "n_val": int(y.size), "note": "not defined: the validation units lack a class"}
                for f, s in targets]
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    spec = 1.0 - fpr
    for fixed, target in targets:
        if fixed not in ("specificity", "sensitivity") or not 0.0 < target < 1.0:
            raise ValueError(f"operating target must be ('specificity' | 'sensitivity', value in (0, 1)); "
                             f"got {(fixed, target)}")
        held, free = (spec, tpr) if fixed == "specificity" else (tpr, spec)
        ok = np.flatnonzero((held >= target - 1e-12) & np.isfinite(thr))
        if ok.size == 0:  # only "refer none" reaches it (too few validation negatives, or a tie at the top)
            rows.append({"fixed": fixed, "target": float(target), "threshold": None, "val_sensitivity": None,
                         "val_specificity": None, "n_val": int(y.size),
                         "note": f"no threshold reaches {fixed} >= {target:g} on the {int(y.size)} validation "
                                 "units except referring none"})
            continue
        i = int(ok[np.argmax(free[ok])])  # argmax: the first, i.e. the highest threshold among ties
        rows.append({"fixed": fixed, "target": float(target), "threshold": threshold_below(p, float(thr[i])),
                     "val_sensitivity": float(tpr[i]), "val_specificity": float(spec[i]), "n_val": int(y.size)})
    return rows


def ppv_npv_at_prevalence(sensitivity: ArrayLike, specificity: ArrayLike,
                          prevalence: float) -> tuple[np.ndarray, np.ndarray]:
    """PPV and NPV at another prevalence, by Bayes' rule from sensitivity and specificity.

    Examples
    --------
    >>> ppv, npv = ppv_npv_at_prevalence(0.9, 0.8, 0.1)
    >>> round(float(ppv), 4), round(float(npv), 4)
    (0.3333, 0.9863)
    """
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must be in (0, 1); got {prevalence}")
    se, sp = np.asarray(sensitivity, dtype=np.float64), np.asarray(specificity, dtype=np.float64)
    tp, fp = se * prevalence, (1 - sp) * (1 - prevalence)
    tn, fn = sp * (1 - prevalence), (1 - se) * prevalence
    ppv = np.divide(tp, tp + fp, out=np.full(np.broadcast(tp, fp).shape, np.nan), where=(tp + fp) > 0)
    npv = np.divide(tn, tn + fn, out=np.full(np.broadcast(tn, fn).shape, np.nan), where=(tn + fn) > 0)
    return ppv, npv


def operating_point_table(y_true: ArrayLike, y_prob: ArrayLike, chosen: Sequence[dict[str, Any]],
                          weights: np.ndarray | None, *, prevalence: float | None = None,
                          alpha: float = 0.05, per_unit: Sequence[np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Each validation-chosen operating point (:func:`operating_thresholds`) measured on test.

    Sensitivity, specificity, PPV and NPV at the cohort's prevalence, and (``prevalence``) PPV and NPV
    restated at that prevalence; each a ``{point, low, high, n_used, n_dropped}`` patient-bootstrap
    interval from the draw counts ``weights`` (B, n) (``None``: no interval). ``per_unit``: for pooled
    out-of-fold units, one threshold per unit for each row of ``chosen`` (its fold's; NaN: that fold
    reached the target only by referring none, and its units count as not referred).
    """
    y = as_binary_labels(y_true)
    p = as_scores(y_prob, y.shape[0])
    rows = []
    for i, op in enumerate(chosen):
        row = dict(op)
        if per_unit is None and op.get("threshold") is None:
            rows.append(row)
            continue
        t = np.full(y.shape, float(op["threshold"])) if per_unit is None else np.asarray(per_unit[i], dtype=float)
        if np.isnan(t).all():
            rows.append(row)
            continue
        pred = np.where(np.isnan(t), False, p >= np.nan_to_num(t, nan=np.inf))
        cells = np.stack([pred & (y == 1), pred & (y == 0), ~pred & (y == 0), ~pred & (y == 1)], axis=1)
        cells = cells.astype(np.float64)
        point = {k: v[0] for k, v in _rates(cells.sum(axis=0)[None, :], prevalence).items()}
        boot = _rates(weights @ cells, prevalence) if weights is not None else None
        for name, value in point.items():
            v = None if not np.isfinite(value) else float(value)
            row[name] = (percentile_ci(v, boot[name], alpha).to_dict() if boot is not None
                         else {"point": v, "low": None, "high": None, "n_used": 0, "n_dropped": 0})
        rows.append(row)
    return rows


def _rates(counts: np.ndarray, prevalence: float | None) -> dict[str, np.ndarray]:
    """Rates from (B, 4) counts tp, fp, tn, fn (the metric registry's formulas)."""
    tp, fp, tn, fn = counts.T
    out = counts_metrics(tp, fp, tn, fn, ("sensitivity", "specificity", "precision", "npv"))
    out["ppv"] = out.pop("precision")
    if prevalence is not None:
        out["ppv_at_prevalence"], out["npv_at_prevalence"] = ppv_npv_at_prevalence(
            out["sensitivity"], out["specificity"], prevalence)
    return out


# ------------------------------------------------------------------------------- sample size


def auc_standard_error(auc: float, n: int, prevalence: float) -> float:
    """Expected standard error of the C statistic (AUC) for ``n`` units at ``prevalence``.

    Newcombe's formula, as Riley et al. (Stat Med 2021, criterion for the C statistic) use it:
    ``SE = sqrt(C(1-C) [1 + (n/2 - 1)(1-C)/(2-C) + (n/2 - 1) C/(1+C)] / (n^2 phi (1-phi)))``.

    Examples
    --------
    >>> round(auc_standard_error(0.8, 200, 0.3), 4)
    0.0342
    """
    c, phi = float(auc), float(prevalence)
    if not (0 < phi < 1) or n < 2:
        return math.nan
    m = n / 2 - 1
    var = c * (1 - c) * (1 + m * (1 - c) / (2 - c) + m * c / (1 + c)) / (n * n * phi * (1 - phi))
    return math.sqrt(max(var, 0.0))


def slope_standard_error(logits: ArrayLike, n: int) -> float:
    """Expected standard error of the calibration slope for ``n`` units whose linear predictors are
    distributed like ``logits``, when the model is well calibrated (Riley et al. 2021, criterion for the
    calibration slope: the inverse Fisher information of the calibration model, here with the expectation
    taken over the observed linear predictors rather than an assumed normal distribution)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.size < 2 or np.ptp(z) == 0 or n < 2:
        return math.nan
    p = 1.0 / (1.0 + np.exp(-z))
    v = p * (1 - p)
    i00, i01, i11 = v.mean(), (v * z).mean(), (v * z * z).mean()
    det = i00 * i11 - i01 * i01
    return math.sqrt(i00 / det / n) if det > 0 else math.nan


def _units_for(half_width: float, se_of_n: Any, n_now: int) -> int | None:
    """The smallest n whose expected 95 % half-width ``1.96 se_of_n(n)`` is at most ``half_width``."""
    if not math.isfinite(se_of_n(n_now)):
        return None
    lo, hi = 2, max(n_now, 2)
    while _Z * se_of_n(hi) > half_width:
        lo, hi = hi, hi * 2
        if hi > 10_000_000:
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        if _Z * se_of_n(mid) <= half_width:
            hi = mid
        else:
            lo = mid + 1
    return hi


def sample_size(*, n: int, n_events: int, auc: float | None, logits: ArrayLike,
                slope: float | None = None, achieved_auc: Sequence[float | None] | None = None,
                achieved_slope: Sequence[float | None] | None = None, unit: str = "unit") -> dict[str, Any]:
    """Is the test set big enough? Expected 95 % CI half-widths of the AUC and of the calibration slope
    for ``n`` units with ``n_events`` events, the units Riley et al.'s targets need at this prevalence,
    the achieved half-widths, and a plain sentence.

    Parameters
    ----------
    n, n_events : int
        Test units and positive units.
    auc : float or None
        The AUC the precision is computed for (the observed test AUC; clipped to [0.01, 0.99], as an AUC
        of 1 would give a zero-width interval).
    logits : array-like
        The test units' linear predictors (logits of the calibrated probabilities).
    slope : float or None
        The calibration slope obtained (named in the sentence with its interval).
    achieved_auc, achieved_slope : (low, high) or None
        The patient-bootstrap intervals obtained.
    unit : str
        What a unit is ("visit", "patient"), for the sentence.
    """
    phi = n_events / n if n else math.nan
    out: dict[str, Any] = {"n": int(n), "n_events": int(n_events), "prevalence": phi, "unit": unit,
                           "auc_target_half_width": AUC_HALF_WIDTH_TARGET,
                           "slope_target_half_width": SLOPE_HALF_WIDTH_TARGET,
                           "reference": "Riley et al., Stat Med 2021;40:4230-51 (validation of a binary-outcome "
                                        "prediction model); BMJ 2024;384:e074821"}
    # an AUC of 1 (or 0) would claim a zero-width interval: the precision is computed at 0.99 at most
    c = None if auc is None or not 0 < phi < 1 else min(max(float(auc), 0.01), 0.99)
    out["auc_assumed"] = c
    se_auc = auc_standard_error(c, n, phi) if c is not None else math.nan
    se_slope = slope_standard_error(logits, n) if 0 < phi < 1 else math.nan
    out["auc_expected_half_width"] = _Z * se_auc if math.isfinite(se_auc) else None
    out["slope_expected_half_width"] = _Z * se_slope if math.isfinite(se_slope) else None
    out["auc_units_needed"] = (_units_for(AUC_HALF_WIDTH_TARGET, lambda m: auc_standard_error(c, m, phi), n)
                               if c is not None else None)
    out["slope_units_needed"] = (_units_for(SLOPE_HALF_WIDTH_TARGET, lambda m: slope_standard_error(logits, m), n)
                                 if 0 < phi < 1 else None)
    out["auc_events_needed"] = (None if out["auc_units_needed"] is None
                                else math.ceil(out["auc_units_needed"] * phi))
    out["slope_events_needed"] = (None if out["slope_units_needed"] is None
                                  else math.ceil(out["slope_units_needed"] * phi))

    def half(ci: Sequence[float | None] | None) -> float | None:
        return None if not ci or ci[0] is None or ci[1] is None else (float(ci[1]) - float(ci[0])) / 2

    out["auc_achieved_half_width"], out["slope_achieved_half_width"] = half(achieved_auc), half(achieved_slope)
    short = [name for name, need in (("the AUC", out["auc_units_needed"]), ("the calibration slope",
                                                                            out["slope_units_needed"]))
             if need is not None and need > n]
    out["too_small"] = bool(short)
    units = f"{n} {unit}s, {n_events} with the condition"
    if short:
        parts = []
        if out["auc_units_needed"] is not None and out["auc_units_needed"] > n:
            parts.append(f"about {out['auc_units_needed']} {unit}s ({out['auc_events_needed']} with the condition) "
                         f"to know the AUC within ±{AUC_HALF_WIDTH_TARGET:.2f}; here ±"
                         f"{out['auc_expected_half_width']:.2f} is expected")
        if out["slope_units_needed"] is not None and out["slope_units_needed"] > n:
            parts.append(f"about {out['slope_units_needed']} {unit}s ({out['slope_events_needed']} with the "
                         f"condition) to know the calibration slope within ±{SLOPE_HALF_WIDTH_TARGET:.2f}; here ±"
                         f"{out['slope_expected_half_width']:.2f} is expected")
        ranges = [f"{what} {point:.2f} as anywhere from {ci[0]:.2f} to {ci[1]:.2f}"
                  for what, point, ci in (("the AUC of", auc, achieved_auc), ("the calibration slope of",
                                                                             slope, achieved_slope))
                  if point is not None and ci and ci[0] is not None and ci[1] is not None]
        out["sentence"] = (f"This test set ({units}) is too small to support a precise claim about "
                           f"{' or '.join(short)}: Riley et al.'s criteria for a validation study ask for "
                           + "; and ".join(parts) + "."
                           + (f" Read {' and '.join(ranges)} (the patient-bootstrap intervals), not as points."
                              if ranges else " Read the summary's numbers as ranges, not as points."))
    elif out["auc_units_needed"] is None and out["slope_units_needed"] is None:
        out["sentence"] = f"The precision this test set ({units}) can give is not defined (one class, or constant predictions)."
    else:
        out["sentence"] = (f"This test set ({units}) meets Riley et al.'s precision targets for a validation "
                           f"study (AUC within ±{AUC_HALF_WIDTH_TARGET:.2f}, calibration slope within "
                           f"±{SLOPE_HALF_WIDTH_TARGET:.2f}).")
    return out


# ------------------------------------------------------------------------------------- all of it


def _calibration_block(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None, alpha: float,
                       grid: np.ndarray, band_weights: np.ndarray | None) -> dict[str, Any]:
    fit = calibration_intercept_slope(y, p)
    out: dict[str, Any] = {"fit": fit}
    if weights is not None:
        ints, slopes = recalibration_fits(y, p, weights)
        out["intercept"] = percentile_ci(fit["intercept"], ints, alpha).to_dict()
        out["slope"] = percentile_ci(fit["slope"], slopes, alpha).to_dict()
    else:
        out["intercept"] = {"point": fit["intercept"], "low": None, "high": None, "n_used": 0, "n_dropped": 0}
        out["slope"] = {"point": fit["slope"], "low": None, "high": None, "n_used": 0, "n_dropped": 0}
    curve = smoothed_calibration(y, p, grid)
    smooth: dict[str, Any] = {"grid": grid.tolist(), "observed": _nan_to_none(curve)}
    if band_weights is not None:
        boots = []
        for w in band_weights:
            idx = np.repeat(np.arange(y.size), w.astype(np.int64))
            if np.unique(y[idx]).size == 2:
                boots.append(smoothed_calibration(y[idx], p[idx], grid))
        if boots:
            b = np.array(boots)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a grid point outside every resample
                low, high = np.nanpercentile(b, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
            smooth.update(low=_nan_to_none(low), high=_nan_to_none(high), n_resamples=len(boots))
    out["smoothed"] = smooth
    return out


def _nan_to_none(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in a]


def decision_thresholds(low: float, high: float) -> np.ndarray:
    """The decision curve's threshold probabilities: ``low`` to ``high`` in steps of 0.01.

    >>> decision_thresholds(0.05, 0.1).tolist()
    [0.05, 0.06, 0.07, 0.08, 0.09, 0.1]
    """
    return np.round(np.arange(round(low * 100), round(high * 100) + 1) / 100.0, 2)


def clinical_reading(y_true: ArrayLike, y_prob: ArrayLike, y_prob_raw: ArrayLike, groups: ArrayLike, *,
                     operating: Sequence[dict[str, Any]] | None, thresholds: ArrayLike,
                     operating_per_unit: Sequence[np.ndarray] | None = None,
                     prevalence: float | None = None, n_resamples: int = 1000, n_band: int = 200,
                     seed: int = 0, alpha: float = 0.05, unit: str = "unit",
                     auc_ci: Sequence[float | None] | None = None) -> dict[str, Any]:
    """The four items of the report's "Clinical reading" for one set of test units.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 label of each unit.
    y_prob, y_prob_raw : array-like of shape (n,)
        Each unit's probability after recalibration and before it (the uncalibrated model).
    groups : array-like of shape (n,)
        The patient of each unit: the cluster the bootstrap resamples.
    operating : list of dict or None
        Operating points chosen on validation (:func:`operating_thresholds`), applied to ``y_prob``.
    operating_per_unit : list of arrays, optional
        Pooled out-of-fold units: each operating point's threshold per unit (its fold's).
    thresholds : array-like
        Threshold probabilities of the decision curve.
    prevalence : float or None
        The clinic's prevalence (``eval.prevalence``): PPV and NPV are restated at it.
    n_resamples : int
        Patient-bootstrap resamples for the intervals (0: none); ``n_band`` of them (the first) for the
        smoothed curve's band.
    auc_ci : (low, high) or None
        The achieved AUC interval (the headline's), for the sample-size comparison.

    Returns
    -------
    dict
        ``calibration`` (``before`` / ``after``: ``intercept``, ``slope`` with CIs, ``fit``,
        ``smoothed``), ``decision_curve`` (``before`` / ``after``), ``operating_points``,
        ``sample_size``, ``prevalence`` (the test units'), ``clinic_prevalence``, ``n_units``,
        ``n_events``, ``n_resamples``.
    """
    y = as_binary_labels(y_true)
    p = as_scores(y_prob, y.shape[0])
    pr = as_scores(y_prob_raw, y.shape[0], "y_prob_raw")
    t = np.asarray(thresholds, dtype=np.float64)
    weights = cluster_resample_weights(groups, n_resamples, seed) if n_resamples else None
    band = None if weights is None else weights[: max(1, min(n_band, n_resamples))]
    grid = np.round(np.linspace(0.0, 1.0, 51), 4)
    calibration = {"before": _calibration_block(y, pr, weights, alpha, grid, band),
                   "after": _calibration_block(y, p, weights, alpha, grid, band)}
    dca = {"before": decision_curve(y, pr, t, weights, alpha), "after": decision_curve(y, p, t, weights, alpha)}
    ops = operating_point_table(y, p, operating or [], weights, prevalence=prevalence, alpha=alpha,
                                per_unit=operating_per_unit)
    auc = None
    if 0 < y.sum() < y.size:
        auc = float(roc_auc_score(y, pr))
    slope_ci = calibration["after"]["slope"]
    size = sample_size(n=int(y.size), n_events=int(y.sum()), auc=auc, logits=to_logits(p), slope=slope_ci["point"],
                       achieved_auc=auc_ci, achieved_slope=(slope_ci["low"], slope_ci["high"]), unit=unit)
    return {"calibration": calibration, "decision_curve": dca, "operating_points": ops, "sample_size": size,
            "prevalence": float(y.mean()), "clinic_prevalence": prevalence, "n_units": int(y.size),
            "n_events": int(y.sum()), "n_resamples": int(n_resamples), "unit": unit,
            "threshold_range": [float(t.min()), float(t.max())] if t.size else None}
