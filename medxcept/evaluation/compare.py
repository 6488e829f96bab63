"""Compare finished runs on the same test set: recipes (or any configuration key) across seeds.

A single run's test AUC moves by a few hundredths when only the training seed changes (weight
initialization, augmentation draws, batch order). On a small cohort that run-to-run noise is often
as large as the difference between two recipes, so "recipe B scored 0.03 higher" means little
until it is set against the spread of each recipe over seeds. This module reads run directories
written by :func:`medxcept.workflows.single.run_pipeline` and answers: *is the difference between these
groups of runs larger than what a different seed alone would give?*

Inputs. Each run directory must hold ``metrics.json``, ``predictions.csv``, ``history.csv``,
``split.csv``, ``versions.json`` and ``config.yaml`` (see ``reports/README.md``). Every run must
have been evaluated on the **same test set**: the same split hash (``versions.json``) and the same
test image ids (``predictions.csv``, checked against ``split.csv``), otherwise a
:class:`~medxcept.errors.ConfigError` names the runs and their hashes. (``--seed N`` also moves the
split; to vary only the training seed, keep ``split.seed`` fixed: ``--set seed=N --set split.seed=0``.)
Runs are grouped by ``metrics.json`` → ``run.recipe``, or by any dotted ``config.yaml`` key
(``group_by="train.learning_rate"``). Within a group, runs are told apart by their seed
(``run.seed``); two runs of one group with the same seed are an error, since pairing is by seed.

Per run (patient level unless stated): test ROC-AUC with its bootstrap CI, PR-AUC, sensitivity
and specificity at the run's own validation threshold, ECE and Brier score before and after
recalibration (image level, as in the run's report), the train - validation gap at the kept epoch
(train AUC - validation patient AUC, and train loss - validation loss, from ``history.csv``; a
negative loss gap means the training loss is lower), the kept epoch and the training seconds.
Every number is read from the run's own ``metrics.json`` and ``history.csv``, so it is the number
its report shows.

Per group: mean, SD (ddof=1; the **run-to-run SD**), minimum and maximum over the group's runs.

Paired comparisons. For every pair of groups (A = the group met first on the command line, B the
other), runs are matched by seed, and each seed pair is tested on the same test patients:

* ROC-AUC: DeLong's test (:func:`medxcept.evaluation.intervals.delong_test`) and the paired bootstrap
  (:func:`medxcept.evaluation.intervals.paired_bootstrap_auc`) on the patient-level probabilities;
* PR-AUC, sensitivity, specificity: a paired bootstrap over patients (both runs scored on the same
  resamples, each at its own threshold);
* ECE and Brier after recalibration: the same paired bootstrap, resampling patients with all
  their images (ECE with the run's uniform bins).

Bootstrap p-values are two-sided normal ones, ``2 * (1 - Phi(|diff| / SD of the resampled
differences))``, as in :func:`~medxcept.evaluation.intervals.paired_bootstrap_auc`.

**The verdict rule**, per metric. Let ``d`` be the mean of B's runs minus the mean of A's runs and
``s`` the pooled run-to-run SD, ``s^2 = sum_g (n_g - 1) s_g^2 / sum_g (n_g - 1)`` over the two
groups. The verdict is **"difference larger than run-to-run noise"** only when both hold:

1. ``|d| > 2 s``: the groups differ by more than twice the seed-to-seed spread, and
2. in most seed pairs (strictly more than half) the paired test gives ``p < 0.05`` with a
   difference of the same sign as ``d`` (DeLong for ROC-AUC, the paired bootstrap otherwise).

Otherwise it is **"within run-to-run noise"**. When the noise cannot be measured (no group with
two runs) or no seed is shared by the two groups, the verdict says so instead of guessing. The
first condition guards against a difference that one lucky seed explains; the second against a
difference that is consistent over seeds but small compared with the test set's sampling noise.
Neither makes the groups' *test-set* estimates generalize: they are still measured on one test set.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from medxcept.errors import ConfigError
from medxcept.evaluation.intervals import delong_test, paired_bootstrap_auc, weighted_average_precision
from medxcept.evaluation.metrics import METRICS as REGISTRY
from medxcept.evaluation.metrics import counts_metrics, metric_names
from medxcept.evaluation.verdict import training_verdict

__all__ = [
    "LARGER",
    "WITHIN",
    "NOT_MEASURED",
    "NO_PAIRS",
    "METRICS",
    "RunRecord",
    "load_run",
    "check_same_test_set",
    "group_summary",
    "pooled_sd",
    "noise_verdict",
    "paired_tests",
    "compare",
    "comparison_json",
    "PATIENT_METRICS",
    "VERDICT_METRICS",
]

log = logging.getLogger(__name__)

LARGER = "difference larger than run-to-run noise"
WITHIN = "within run-to-run noise"
NOT_MEASURED = "run-to-run noise not measured (fewer than two runs in both groups)"
NO_PAIRS = "not tested (no seed shared by the two groups)"

REQUIRED_FILES = ("metrics.json", "predictions.csv", "history.csv", "split.csv", "versions.json", "config.yaml")

#: The registry's metrics compared across runs (:data:`medxcept.evaluation.metrics.METRICS`, ``compare=True``):
#: patient level, each a per-run number and a paired verdict.
PATIENT_METRICS = metric_names(compare=True)
#: Per-run fields: key -> (label, lower is better?). The registry's metrics and the calibration
#: after recalibration get a verdict (:data:`VERDICT_METRICS`).
METRICS: dict[str, tuple[str, bool]] = {
    **{m.name: (f"{m.label} (patients)", m.lower_is_better) for m in REGISTRY if m.name in PATIENT_METRICS},
    "ece_after": ("ECE after recalibration (images)", True),
    "brier_after": ("Brier after recalibration (images)", True),
    "ece_before": ("ECE before recalibration (images)", True),
    "brier_before": ("Brier before recalibration (images)", True),
    "auc_gap": ("train - validation AUC at the kept epoch", False),
    "loss_gap": ("train - validation loss at the kept epoch", False),
    "best_epoch": ("kept epoch", False),
    "train_seconds": ("training seconds", True),
}
VERDICT_METRICS = (*PATIENT_METRICS, "ece_after", "brier_after")
#: ROC-AUC is tested by DeLong (by the paired patient bootstrap when a patient has several units, which
#: DeLong would treat as independent); every other verdict metric by the paired patient bootstrap.
BOOTSTRAP_METRICS = tuple(m for m in VERDICT_METRICS if m != "roc_auc")


@dataclass(frozen=True)
class RunRecord:
    """One finished run, as the comparison needs it.

    Attributes
    ----------
    name : str
        Run directory name (shown in the report).
    path : pathlib.Path
    group : str
        Its recipe, or the value of the ``group_by`` key.
    seed : int
    summary : dict
        The per-run numbers (keys of :data:`METRICS`, plus ``roc_auc_low`` / ``roc_auc_high``,
        ``epochs_run``, ``verdict``, ``pretrained``, ``threshold``).
    patients : pandas.DataFrame
        One row per test evaluation unit (the run's ``unit_key``: a patient, or a patient's visit;
        runs without it: a patient), sorted: ``patient_key`` (the unit key), ``y``, ``prob``,
        ``score`` (the uncalibrated score discrimination is compared on; ``prob`` for runs written
        before ``patient_prob_raw`` existed) and ``cluster`` (the unit's patient, which the paired
        bootstrap resamples).
    images : pandas.DataFrame
        One row per test image, sorted by ``image_id``: ``image_id``, ``patient_key``, ``y``, ``prob``.
    history : pandas.DataFrame
    split_hash, test_hash : str
        The run's split hash and the sha256 of its sorted test image ids.
    n_bins : int
        Bins of the run's ECE.
    config : dict
        The resolved configuration (``config.yaml``).
    """

    name: str
    path: Path
    group: str
    seed: int
    summary: dict[str, Any]
    patients: pd.DataFrame
    images: pd.DataFrame
    history: pd.DataFrame
    split_hash: str
    test_hash: str
    n_bins: int
    config: dict[str, Any]


# ----------------------------------------------------------------------------- loading


def _dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _num(x: Any) -> float | None:
    """A finite float, or None (metrics.json writes undefined values as null)."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _gaps(history: pd.DataFrame, best_epoch: int) -> tuple[float | None, float | None, dict[str, Any]]:
    """Train - validation AUC and loss at the kept epoch (:func:`medxcept.evaluation.verdict.training_verdict`)."""
    if history.empty:
        return None, None, {"verdict": "no training epochs ran"}
    tv = training_verdict(history, best_epoch)
    rows = history[history["epoch"] == best_epoch]
    row = rows.iloc[0] if len(rows) else history.iloc[-1]
    loss, val_loss = _num(row.get("loss")), _num(row.get("val_loss"))
    loss_gap = loss - val_loss if loss is not None and val_loss is not None else None
    return _num(tv.get("gap_at_best")), loss_gap, tv


def load_run(path: str | Path, *, group_by: str | None = None) -> RunRecord:
    """Read a finished binary run directory.

    Parameters
    ----------
    path : str or Path
        A run directory (``reports/<date>-<cohort>-<hash8>/``).
    group_by : str, optional
        Dotted ``config.yaml`` key whose value names the run's group; default: the run's recipe.

    Raises
    ------
    ConfigError
        Files missing, a multiclass run, a ``group_by`` key the configuration lacks, or
        predictions that do not cover the run's own test split.
    """
    path = Path(path)
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise ConfigError(f"{path} is not a finished run directory: missing {', '.join(missing)} "
                          "(give directories written by python -m pipelines.retina)")
    metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    versions = json.loads((path / "versions.json").read_text(encoding="utf-8"))
    config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    name = str(metrics.get("run", {}).get("id") or path.name)
    classes = metrics.get("classes") or []
    if len(classes) != 2 or "test_patient" not in metrics:
        raise ConfigError(f"run {name}: this comparison is for binary runs (classes: {classes}); k-class runs are "
                          "compared by medxcept.evaluation.graded.compare_graded_runs (pipelines.compare picks it)")
    if group_by:
        try:
            group = str(_dotted(config, group_by))
        except KeyError:
            raise ConfigError(f"run {name}: config.yaml has no key {group_by!r} to group by (top-level keys: "
                              f"{', '.join(map(str, config))})") from None
    else:
        group = str(metrics.get("run", {}).get("recipe", "unknown"))
    seed = metrics.get("run", {}).get("seed", config.get("seed"))
    if seed is None:
        raise ConfigError(f"run {name}: no seed in metrics.json (run.seed) or config.yaml")

    preds = pd.read_csv(path / "predictions.csv", dtype={"image_id": str, "patient_key": str})
    need = {"image_id", "patient_key", "y", "prob", "patient_y", "patient_prob"}
    if not need <= set(preds.columns):
        raise ConfigError(f"run {name}: predictions.csv lacks {', '.join(sorted(need - set(preds.columns)))}")
    split = pd.read_csv(path / "split.csv", dtype={"image_id": str, "split": str})
    test_ids = sorted(split.loc[split["split"] == "test", "image_id"])
    pred_ids = sorted(preds["image_id"])
    if test_ids != pred_ids:
        raise ConfigError(f"run {name}: predictions.csv holds {len(pred_ids)} image(s) but split.csv lists "
                          f"{len(test_ids)} test image(s); the run directory is inconsistent")
    split_hash = versions.get("split_hash") or metrics.get("hashes", {}).get("split_hash")
    if not split_hash:
        raise ConfigError(f"run {name}: no split_hash in versions.json or metrics.json")
    test_hash = hashlib.sha256("\n".join(test_ids).encode("utf-8")).hexdigest()
    # discrimination (DeLong, AUC and PR-AUC differences) from the uncalibrated scores when the run
    # wrote them: isotonic ties or a Platt sign flip must not change a ranking comparison
    # wrote them, on the logit scale when it did (probabilities of confident cases saturate and tie)
    score = next(c for c in ("logit", "prob_raw", "prob") if c in preds)
    preds["score"] = preds[score].astype(np.float64)
    patient_score = next(c for c in ("patient_logit", "patient_prob_raw", "patient_prob") if c in preds)
    preds["patient_score"] = preds[patient_score].astype(np.float64)
    images = preds[["image_id", "patient_key", "y", "prob", "score"]].sort_values("image_id", kind="stable")
    # one row per evaluation unit (the run's: a patient, or a patient's visit: ``unit_key``), with its
    # patient as ``cluster`` (what the bootstrap resamples); runs without ``unit_key``: patients
    unit = "unit_key" if "unit_key" in preds else "patient_key"
    patients = (preds.groupby(unit, sort=True)
                .agg(y=("patient_y", "first"), prob=("patient_prob", "first"),
                     score=("patient_score", "first"), cluster=("patient_key", "first")).reset_index()
                .rename(columns={unit: "patient_key"}))

    history = pd.read_csv(path / "history.csv")
    training = metrics.get("training", {})
    best_epoch = int(training.get("best_epoch") or (history["epoch"].max() if len(history) else 0))
    auc_gap, loss_gap, tv = _gaps(history, best_epoch)
    tp = metrics["test_patient"]
    ci = (metrics.get("test_patient_ci") or {}).get("roc_auc") or {}
    cal = metrics.get("calibration_test") or {}
    before, after = cal.get("before") or {}, cal.get("after") or {}
    summary = {
        **{m: _num(tp.get(m)) for m in PATIENT_METRICS},
        "roc_auc_low": _num(ci.get("low")), "roc_auc_high": _num(ci.get("high")),
        "ece_before": _num(before.get("ece")), "ece_after": _num(after.get("ece")),
        "brier_before": _num(before.get("brier")), "brier_after": _num(after.get("brier")),
        "auc_gap": auc_gap, "loss_gap": loss_gap, "best_epoch": best_epoch,
        "epochs_run": int(history["epoch"].max()) if len(history) else 0,
        "train_seconds": _num(training.get("seconds")),
        "verdict": tv.get("verdict", ""),
        "threshold": _num((metrics.get("threshold") or {}).get("value")),
        "pretrained": bool(metrics.get("run", {}).get("pretrained", False)),
        "weights": metrics.get("run", {}).get("weights_description", ""),
    }
    return RunRecord(name=name, path=path, group=group, seed=int(seed), summary=summary, patients=patients,
                     images=images.reset_index(drop=True), history=history, split_hash=str(split_hash),
                     test_hash=test_hash, n_bins=int(after.get("n_bins") or before.get("n_bins") or 10),
                     config=config)


def check_same_test_set(runs: Sequence[RunRecord]) -> None:
    """Raise :class:`ConfigError` unless every run has the same split hash, test images and labels."""
    if len(runs) < 2:
        raise ConfigError(f"a comparison needs at least two runs; got {len(runs)}")
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"run(s) given twice: {', '.join(dup)}")
    splits = {r.split_hash for r in runs}
    tests = {r.test_hash for r in runs}
    if len(splits) > 1 or len(tests) > 1:
        lines = "; ".join(f"{r.name}: split {r.split_hash[:12]}, test set {r.test_hash[:12]}" for r in runs)
        raise ConfigError(
            f"the runs were not evaluated on the same test set ({lines}). Compare runs of one split: keep "
            f"split.seed and the cohort fixed and vary only the training seed (--set seed=N --set split.seed=S)")
    ref = runs[0]
    for r in runs[1:]:
        if not np.array_equal(r.images["y"].to_numpy(), ref.images["y"].to_numpy()) or not (
                r.patients["patient_key"].tolist() == ref.patients["patient_key"].tolist()
                and np.array_equal(r.patients["y"].to_numpy(), ref.patients["y"].to_numpy())):
            raise ConfigError(f"runs {ref.name} and {r.name} share the test images but not their labels or "
                              "patients: were they made from different label files?")


# ----------------------------------------------------------------------------- statistics


def _describe(values: Sequence[float | None]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], dtype=float)
    return {"n": int(v.size), "mean": float(v.mean()) if v.size else None,
            "sd": float(v.std(ddof=1)) if v.size >= 2 else None,
            "min": float(v.min()) if v.size else None, "max": float(v.max()) if v.size else None}


def group_summary(runs: Sequence[RunRecord]) -> dict[str, dict[str, Any]]:
    """Per group: seeds, runs, and for every metric ``n``, ``mean``, ``sd`` (ddof=1: run-to-run), min, max.

    Also ``roc_auc_ci_width``: the mean width of the runs' own bootstrap CIs of the test AUC (the
    test set's sampling uncertainty), to set beside the run-to-run SD.
    """
    out: dict[str, dict[str, Any]] = {}
    for group in dict.fromkeys(r.group for r in runs):
        members = [r for r in runs if r.group == group]
        widths = [r.summary["roc_auc_high"] - r.summary["roc_auc_low"] for r in members
                  if r.summary["roc_auc_high"] is not None and r.summary["roc_auc_low"] is not None]
        out[group] = {"runs": [r.name for r in members], "seeds": [r.seed for r in members],
                      "metrics": {k: _describe([r.summary[k] for r in members]) for k in METRICS},
                      "roc_auc_ci_width": float(np.mean(widths)) if widths else None}
    return out


def pooled_sd(*samples: Sequence[float | None]) -> float | None:
    """Pooled standard deviation ``sqrt(sum (n_g - 1) s_g^2 / sum (n_g - 1))``; None without 2 values in a group."""
    num = den = 0.0
    for s in samples:
        v = np.array([x for x in s if x is not None], dtype=float)
        if v.size >= 2:
            num += (v.size - 1) * float(v.var(ddof=1))
            den += v.size - 1
    return math.sqrt(num / den) if den > 0 else None


def noise_verdict(mean_diff: float | None, pooled: float | None, p_values: Sequence[float | None],
                  pair_diffs: Sequence[float | None] | None = None, *, alpha: float = 0.05,
                  k_sd: float = 2.0) -> dict[str, Any]:
    """The verdict rule of the module docstring, as a pure function.

    Parameters
    ----------
    mean_diff : float or None
        Mean of group B minus mean of group A.
    pooled : float or None
        Pooled run-to-run SD (:func:`pooled_sd`).
    p_values : sequence of float or None
        The paired test's p-value for each seed pair.
    pair_diffs : sequence of float or None, optional
        Each pair's difference (B - A); a significant pair counts only when its sign matches
        ``mean_diff``. ``None``: signs are not checked.
    alpha : float, default 0.05
    k_sd : float, default 2.0

    Returns
    -------
    dict
        ``verdict`` (:data:`LARGER`, :data:`WITHIN`, :data:`NOT_MEASURED` or :data:`NO_PAIRS`),
        ``larger`` (bool, or None when not decided), ``noise_threshold`` (``k_sd * pooled``),
        ``exceeds_noise``, ``n_pairs``, ``n_significant``.
    """
    n_pairs = len(p_values)
    diffs = list(pair_diffs) if pair_diffs is not None else [None] * n_pairs
    if len(diffs) != n_pairs:
        raise ValueError(f"pair_diffs has {len(diffs)} values for {n_pairs} p-values")
    n_sig = 0
    for p, d in zip(p_values, diffs, strict=False):
        if p is None or not p < alpha:
            continue
        if d is not None and mean_diff is not None and np.sign(d) != np.sign(mean_diff):
            continue
        n_sig += 1
    out: dict[str, Any] = {"n_pairs": n_pairs, "n_significant": n_sig, "alpha": alpha, "k_sd": k_sd,
                           "noise_threshold": None if pooled is None else k_sd * pooled, "exceeds_noise": None}
    if mean_diff is None or pooled is None:
        return {**out, "verdict": NOT_MEASURED, "larger": None}
    out["exceeds_noise"] = bool(abs(mean_diff) > k_sd * pooled)
    if n_pairs == 0:
        return {**out, "verdict": NO_PAIRS, "larger": None}
    larger = out["exceeds_noise"] and n_sig > n_pairs / 2
    return {**out, "verdict": LARGER if larger else WITHIN, "larger": bool(larger)}


def _z_p(diff: float, boot: np.ndarray) -> tuple[float | None, float | None, tuple[float, float] | None]:
    ok = boot[np.isfinite(boot)]
    if ok.size < 2 or not math.isfinite(diff):
        return None, None, None
    se = float(ok.std(ddof=1))
    ci = (float(np.percentile(ok, 2.5)), float(np.percentile(ok, 97.5)))
    if se > 0:
        return se, float(2.0 * stats.norm.sf(abs(diff) / se)), ci
    return se, 1.0 if diff == 0 else 0.0, ci


def _scores(patients: pd.DataFrame) -> np.ndarray:
    """The patients' uncalibrated scores (``score``), or ``prob`` where a record has none."""
    return patients["score" if "score" in patients else "prob"].to_numpy(float)


def _weighted_metrics(wp: np.ndarray, wi: np.ndarray, run: RunRecord) -> dict[str, np.ndarray]:
    """The registry's patient metrics but ROC-AUC (patient weights ``wp``: PR-AUC from the weighted
    ranks, threshold metrics from weighted confusion counts) and ECE, Brier (image weights ``wi``)."""
    y, p = run.patients["y"].to_numpy(float), run.patients["prob"].to_numpy(float)
    thr = run.summary["threshold"]
    pred = (p >= thr).astype(float) if thr is not None else np.full_like(p, np.nan)
    tp, fp = wp @ (pred * y), wp @ (pred * (1.0 - y))
    tn, fn = wp @ ((1.0 - pred) * (1.0 - y)), wp @ ((1.0 - pred) * y)
    counted = [m for m in PATIENT_METRICS if m in metric_names(kinds=("counts",))]
    out: dict[str, np.ndarray] = counts_metrics(tp, fp, tn, fn, counted)
    if "pr_auc" in PATIENT_METRICS:
        out["pr_auc"] = weighted_average_precision(y.astype(int), _scores(run.patients), wp)
    yi, pi = run.images["y"].to_numpy(float), run.images["prob"].to_numpy(float)
    edges = np.linspace(0.0, 1.0, run.n_bins + 1)
    which = np.searchsorted(edges[1:-1], pi, side="left")  # calibrate.reliability_table's binning
    bins = np.zeros((pi.size, run.n_bins))
    bins[np.arange(pi.size), which] = pi - yi
    total = wi.sum(axis=1)
    return {**out, "ece_after": np.abs(wi @ bins).sum(axis=1) / total, "brier_after": (wi @ (pi - yi) ** 2) / total}


def paired_tests(a: RunRecord, b: RunRecord, *, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired tests of run ``b`` against run ``a`` on the same test patients (differences are b - a).

    Returns
    -------
    dict
        ``delong`` (:func:`medxcept.evaluation.intervals.delong_test` on the patients' uncalibrated scores, with
        ``diff`` = AUC(b) - AUC(a)), ``paired_bootstrap_auc``
        (:func:`medxcept.evaluation.intervals.paired_bootstrap_auc`, same orientation), and ``metrics``: per
        metric of :data:`VERDICT_METRICS`, ``a``, ``b``, ``diff``, ``p_value``, ``test`` and, for
        bootstrapped metrics, ``se`` and ``ci`` (95 % percentile interval of the difference).
    """
    y = a.patients["y"].to_numpy(int)
    pa, pb = _scores(a.patients), _scores(b.patients)
    dl = delong_test(y, pb, pa)
    groups = (a.patients["cluster"] if "cluster" in a.patients else a.patients["patient_key"]).to_numpy()
    pbs = (paired_bootstrap_auc(y, pb, pa, groups, n_resamples=n_resamples, seed=seed)
           if 0 < y.sum() < y.size else None)
    out: dict[str, Any] = {"seed": a.seed, "run_a": a.name, "run_b": b.name, "delong": dl,
                           "paired_bootstrap_auc": pbs, "metrics": {}}
    # DeLong treats units as independent: several units (visits) of one patient take the
    # patient-cluster bootstrap's p instead, and ``test`` says which one the verdict used
    several = pbs is not None and len(set(groups)) < len(groups)
    out["metrics"]["roc_auc"] = {"a": dl["auc2"], "b": dl["auc1"], "diff": dl["diff"],
                                 "p_value": pbs["p_value"] if several else dl["p_value"],
                                 "test": "patient-cluster bootstrap" if several else "DeLong",
                                 "delong_p": dl["p_value"],
                                 "bootstrap_p": None if pbs is None else pbs["p_value"]}
    # one set of resamples of the patients, shared by both runs and every metric
    # (the patients: all the visits of a patient, when the unit is the visit, go together)
    clusters = a.patients["cluster"] if "cluster" in a.patients else a.patients["patient_key"]
    categories = pd.Index(sorted(set(clusters)))
    unit_codes = pd.Categorical(clusters, categories=categories).codes
    codes = pd.Categorical(a.images["patient_key"], categories=categories).codes
    n_pat = len(categories)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_pat, np.full(n_pat, 1.0 / n_pat), size=int(n_resamples)).astype(float)
    ones_p, ones_i = np.ones((1, unit_codes.size)), np.ones((1, codes.size))
    full_a, full_b = _weighted_metrics(ones_p, ones_i, a), _weighted_metrics(ones_p, ones_i, b)
    wu, wi = counts[:, unit_codes], counts[:, codes]
    boot_a, boot_b = _weighted_metrics(wu, wi, a), _weighted_metrics(wu, wi, b)
    for m in BOOTSTRAP_METRICS:
        va, vb = float(full_a[m][0]), float(full_b[m][0])
        diff = vb - va
        se, p, ci = _z_p(diff, boot_b[m] - boot_a[m])
        out["metrics"][m] = {"a": _num(va), "b": _num(vb), "diff": _num(diff), "p_value": p, "se": se, "ci": ci,
                             "test": "paired bootstrap"}
    return out


def _sentence(metric: str, a: str, b: str, d: float | None, v: dict[str, Any], test: str) -> str:
    label, lower_better = METRICS[metric]
    if d is None:
        return f"{label}: not defined for every run; {v['verdict']}."
    parts = [f"{label}: {b} - {a} = {d:+.3f}" + (" (lower is better)" if lower_better else "")]
    if v["noise_threshold"] is not None:
        parts.append(f"2 x pooled run-to-run SD = {v['noise_threshold']:.3f}")
    if v["n_pairs"]:
        parts.append(f"{test} p < {v['alpha']:g} in {v['n_significant']} of {v['n_pairs']} seed pair(s)")
    return "; ".join(parts) + f": {v['verdict']}."


def compare(runs: Sequence[RunRecord], *, n_resamples: int = 1000, seed: int = 0,
            alpha: float = 0.05) -> dict[str, Any]:
    """Per-run numbers, per-group summaries and paired comparisons of every pair of groups.

    Parameters
    ----------
    runs : sequence of RunRecord
        From :func:`load_run`; groups are ordered by first appearance.
    n_resamples : int, default 1000
        Bootstrap resamples per seed pair.
    seed : int, default 0
        Seed of the bootstrap.
    alpha : float, default 0.05
        Significance level of the paired tests in the verdict rule.

    Returns
    -------
    dict
        The content of ``comparison.json``: ``test_set``, ``runs``, ``groups``, ``comparisons``,
        ``differing_config`` (configuration keys whose values differ between runs), ``rule``.

    Raises
    ------
    ConfigError
        Different test sets, fewer than two runs, or two runs of one group with the same seed.
    """
    if int(n_resamples) < 1:
        raise ConfigError(f"n_resamples must be at least 1; got {n_resamples}")
    check_same_test_set(runs)
    for group in dict.fromkeys(r.group for r in runs):
        seeds = [r.seed for r in runs if r.group == group]
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        if twice:
            names = [r.name for r in runs if r.group == group and r.seed in twice]
            raise ConfigError(f"group {group!r} has more than one run with seed {twice[0]} ({', '.join(names)}): "
                              "runs are paired by seed; drop the repeats or group by another key (--group-by)")
    groups = group_summary(runs)
    comparisons = []
    for ga, gb in itertools.combinations(groups, 2):
        ra = {r.seed: r for r in runs if r.group == ga}
        rb = {r.seed: r for r in runs if r.group == gb}
        shared = sorted(set(ra) & set(rb))
        pairs = [paired_tests(ra[s], rb[s], n_resamples=n_resamples, seed=seed + i) for i, s in enumerate(shared)]
        verdicts = {}
        for m in VERDICT_METRICS:
            mean_a, mean_b = groups[ga]["metrics"][m]["mean"], groups[gb]["metrics"][m]["mean"]
            d = None if mean_a is None or mean_b is None else mean_b - mean_a
            sd = pooled_sd([ra[s].summary[m] for s in ra], [rb[s].summary[m] for s in rb])
            v = noise_verdict(d, sd, [p["metrics"][m]["p_value"] for p in pairs],
                              [p["metrics"][m]["diff"] for p in pairs], alpha=alpha)
            test = pairs[0]["metrics"][m]["test"] if pairs else ("DeLong" if m == "roc_auc" else "paired bootstrap")
            verdicts[m] = {"label": METRICS[m][0], "mean_a": mean_a, "mean_b": mean_b, "mean_diff": d,
                           "pooled_sd": sd, "test": test, **v, "sentence": _sentence(m, ga, gb, d, v, test)}
        unpaired = sorted((set(ra) | set(rb)) - set(shared))
        comparisons.append({"a": ga, "b": gb, "seeds": shared, "unpaired_seeds": unpaired, "pairs": pairs,
                            "verdicts": verdicts})
        log.info("%s vs %s (%d seed pair(s)): %s", gb, ga, len(shared), verdicts["roc_auc"]["sentence"])
    flat = [_flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat))
    differing = {k: {r.name: f.get(k) for r, f in zip(runs, flat, strict=False)} for k in keys
                 if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1}
    ref = runs[0]
    return {
        "test_set": {"split_hash": ref.split_hash, "test_hash": ref.test_hash, "n_images": int(len(ref.images)),
                     "n_patients": int(len(ref.patients)), "n_positive_patients": int(ref.patients["y"].sum())},
        "runs": [{"name": r.name, "group": r.group, "seed": r.seed, **r.summary} for r in runs],
        "groups": groups,
        "comparisons": comparisons,
        "differing_config": differing,
        "settings": {"n_resamples": int(n_resamples), "bootstrap_seed": int(seed), "alpha": alpha, "k_sd": 2.0},
        "rule": (f"'{LARGER}' only when |mean difference| > 2 x the pooled run-to-run SD and the paired test "
                 f"(DeLong for ROC-AUC, paired patient bootstrap otherwise) gives p < {alpha:g} with the same "
                 f"sign in most (more than half of the) seed pairs; otherwise '{WITHIN}'."),
    }


# ----------------------------------------------------------------------------- output


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if np.isnan(o) else float(o)
    if isinstance(o, (np.ndarray, tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serializable: {type(o).__name__}")


def comparison_json(result: dict[str, Any]) -> str:
    """The text of ``comparison.json``."""
    return json.dumps(result, indent=2, default=_json_default) + "\n"


def slug(text: str) -> str:
    """``text`` as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "comparison"
