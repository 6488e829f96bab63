"""Graded and multi-class tasks: patient level, decision rules, metrics with patient-bootstrap CIs.

Pure functions on labels and class probabilities (nothing reads files or models), the k-class
counterpart of :mod:`medxcept.evaluation.metrics`. The metric registry lives in
:mod:`medxcept.evaluation.class_metrics`, the inputs and the patient / eye level in
:mod:`medxcept.evaluation.class_units`. Two kinds of task (:data:`~medxcept.evaluation.class_metrics.KINDS`):

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
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from medxcept.evaluation.calibrate import brier, ece, mce, nll, reliability_table
from medxcept.evaluation.class_metrics import KINDS, class_metrics, confusion_matrix, quadratic_kappa
from medxcept.evaluation.class_units import (
    as_class_indices,
    check_logits,
    check_probabilities,
    cumulative_probs,
)
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

__all__ = [
    "DecisionRule",
    "choose_decision_rule",
    "multiclass_report",
    "classwise_ece",
    "calibration_report",
    "endpoint_probability",
    "endpoint_logit",
    "paired_comparison",
]


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
        p1, p2 = check_logits(P1, n), check_logits(P2, len(np.asarray(P2)))
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
