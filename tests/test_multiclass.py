"""k-class metrics, patient aggregation and decision rules, checked against scikit-learn and by hand."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    mean_absolute_error,
    roc_auc_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from medxcept.evaluation.intervals import draw_counts
from medxcept.evaluation.multiclass import (
    DecisionRule,
    aggregate_units,
    calibration_report,
    choose_decision_rule,
    classwise_ece,
    cumulative_probs,
    endpoint_probability,
    multiclass_report,
    probs_from_cumulative,
    quadratic_kappa,
)

K = 4
CLASSES = [f"grade{i}" for i in range(K)]


def _graded(n_patients: int = 40, seed: int = 0, k: int = K):
    """Patients with two eyes; informative but noisy probabilities (ties included)."""
    rng = np.random.default_rng(seed)
    keys = np.repeat([f"P{i:03d}" for i in range(n_patients)], 2)
    lat = np.tile(["L", "R"], n_patients)
    base = rng.integers(0, k, n_patients)
    y = np.clip(np.repeat(base, 2) + rng.integers(-1, 2, 2 * n_patients), 0, k - 1)
    logits = rng.normal(0, 1.0, (2 * n_patients, k)) + 1.5 * np.eye(k)[y]
    logits = np.round(logits, 1)  # ties
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return keys, lat, y, P


def test_point_metrics_equal_scikit_learn():
    keys, _, y, P = _graded()
    rule = DecisionRule("cumulative", (0.5, 0.4, 0.6))
    pred = rule.predict(P)
    r = multiclass_report(y, P, keys, classes=CLASSES, kind="ordinal", rule=rule, n_resamples=0)
    for c, name in enumerate(CLASSES):
        assert r["per_class"][name]["roc_auc"]["point"] == pytest.approx(roc_auc_score(y == c, P[:, c]))
        assert r["per_class"][name]["pr_auc"]["point"] == pytest.approx(average_precision_score(y == c, P[:, c]))
        assert r["per_class"][name]["n"] == int((y == c).sum())
    assert r["macro_roc_auc"]["point"] == pytest.approx(roc_auc_score(y, P, multi_class="ovr", average="macro"))
    assert r["weighted_roc_auc"]["point"] == pytest.approx(
        roc_auc_score(y, P, multi_class="ovr", average="weighted"))
    assert r["macro_pr_auc"]["point"] == pytest.approx(
        np.mean([average_precision_score(y == c, P[:, c]) for c in range(K)]))
    assert r["balanced_accuracy"]["point"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert r["accuracy"]["point"] == pytest.approx(np.mean(y == pred))
    assert r["kappa_quadratic"]["point"] == pytest.approx(
        cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(K))))
    assert r["mae_grade"]["point"] == pytest.approx(mean_absolute_error(y, pred))
    assert r["confusion_matrix"] == sk_confusion_matrix(y, pred, labels=list(range(K))).tolist()
    # zero resamples: no interval is claimed
    assert r["n_bootstrap"] == 0 and r["kappa_quadratic"]["low"] is None


def test_kappa_keeps_true_grade_distances_when_a_grade_is_absent():
    y = np.array([0, 0, 3, 3, 1])
    pred = np.array([0, 1, 3, 1, 1])
    assert quadratic_kappa(y, pred, 4) == pytest.approx(
        cohen_kappa_score(y, pred, weights="quadratic", labels=[0, 1, 2, 3]))
    # by hand: observed weighted disagreement vs expected under independent marginals
    cm = sk_confusion_matrix(y, pred, labels=[0, 1, 2, 3]).astype(float)
    w = (np.arange(4)[:, None] - np.arange(4)[None, :]) ** 2
    expected = np.outer(cm.sum(1), cm.sum(0)) / cm.sum()
    assert quadratic_kappa(y, pred, 4) == pytest.approx(1 - (w * cm).sum() / (w * expected).sum())


def test_bootstrap_intervals_equal_explicit_patient_resampling():
    keys, _, y, P = _graded(n_patients=25, seed=3)
    B, seed = 40, 11
    r = multiclass_report(y, P, keys, classes=CLASSES, kind="ordinal", n_resamples=B, seed=seed)
    # redo the same resamples explicitly with scikit-learn
    _, codes = np.unique(keys, return_inverse=True)
    counts = draw_counts(np.random.default_rng(seed), B, codes.max() + 1)
    pred = DecisionRule("cumulative", (0.5,) * (K - 1)).predict(P)
    kap, auc1, bacc, wauc = [], [], [], []
    for b in range(B):
        rep = np.repeat(np.arange(len(y)), counts[b, codes])
        yb, pb, predb = y[rep], P[rep], pred[rep]
        kap.append(cohen_kappa_score(yb, predb, weights="quadratic", labels=list(range(K))))
        bacc.append(balanced_accuracy_score(yb, predb))
        if 0 < (yb == 1).sum() < len(yb):
            auc1.append(roc_auc_score(yb == 1, pb[:, 1]))
        if len(np.unique(yb)) == K:
            wauc.append(roc_auc_score(yb, pb, multi_class="ovr", average="weighted"))
    for got, want in ((r["kappa_quadratic"], kap), (r["per_class"]["grade1"]["roc_auc"], auc1),
                      (r["balanced_accuracy"], bacc), (r["weighted_roc_auc"], wauc)):
        assert got["n_used"] == len(want)
        assert got["low"] == pytest.approx(np.percentile(want, 2.5))
        assert got["high"] == pytest.approx(np.percentile(want, 97.5))


def test_bootstrap_is_fast():
    keys, _, y, P = _graded(n_patients=300, seed=1, k=5)
    t = time.perf_counter()
    r = multiclass_report(y, P, keys, classes=[str(i) for i in range(5)], kind="ordinal", n_resamples=1000)
    assert time.perf_counter() - t < 5.0  # ~0.5 s on one core; 600 images x 5 classes x 1000 resamples
    assert r["kappa_quadratic"]["low"] < r["kappa_quadratic"]["point"] < r["kappa_quadratic"]["high"]


def test_ordinal_patient_level_is_the_worst_eye_and_consistent():
    keys, lat, y, P = _graded(n_patients=30, seed=5)
    agg = aggregate_units(keys, y, P, kind="ordinal", laterality=lat)
    order = np.argsort(keys, kind="mergesort")
    assert list(agg.keys) == sorted(set(keys))
    for i, key in enumerate(agg.keys):
        rows = keys == key
        assert agg.y[i] == y[rows].max()  # worst grade
        assert agg.P[i].sum() == pytest.approx(1.0)
        for g in range(1, K):
            # a derived endpoint "grade >= g" at patient level is the max of its image probabilities
            assert endpoint_probability(agg.P[i:i + 1], range(g, K))[0] == pytest.approx(
                endpoint_probability(P[rows], range(g, K)).max())
    rng = np.random.default_rng(0)
    for _ in range(5):  # any thresholds: the patient's predicted grade is the worst image prediction
        rule = DecisionRule("cumulative", tuple(rng.uniform(0.05, 0.95, K - 1)))
        image_pred = rule.predict(P)
        want = [image_pred[keys == key].max() for key in agg.keys]
        assert rule.predict(agg.P).tolist() == want
    assert order.size == len(y)


def test_eye_level_and_single_image_units_are_unchanged():
    keys, lat, y, P = _graded(n_patients=10, seed=2)
    eyes = aggregate_units(keys, y, P, kind="ordinal", laterality=lat, level="eye")
    assert len(eyes.keys) == len(y)  # one image per eye here: identity
    order = np.lexsort((lat, keys))
    assert np.allclose(eyes.P, P[order]) and (eyes.y == y[order]).all()
    assert list(eyes.patients) == list(keys[order])


def test_nominal_discordant_patient_is_split_per_eye():
    keys = np.array(["A", "A", "B", "B", "C"])
    lat = np.array(["L", "R", "L", "R", "L"])
    y = np.array([1, 2, 0, 0, 1])
    P = np.array([[.1, .8, .1], [.1, .2, .7], [.6, .2, .2], [.8, .1, .1], [.3, .4, .3]])
    agg = aggregate_units(keys, y, P, kind="nominal", laterality=lat)
    assert list(agg.keys) == ["A|L", "A|R", "B", "C"]
    assert list(agg.patients) == ["A", "A", "B", "C"]
    assert agg.y.tolist() == [1, 2, 0, 1]
    assert np.allclose(agg.P[2], [.7, .15, .15])
    assert agg.notes and "different classes" in agg.notes[0]


def test_cumulative_round_trip_and_validation_errors():
    _, _, _, P = _graded(n_patients=5)
    assert np.allclose(probs_from_cumulative(cumulative_probs(P)), P)
    with pytest.raises(ValueError, match="row 1 sums to"):
        multiclass_report([0, 1], [[.5, .5], [.9, .9]], None, classes=["a", "b"], kind="nominal")
    with pytest.raises(ValueError, match=r"found \[7\]"):
        multiclass_report([0, 7], [[.5, .5], [.5, .5]], None, classes=["a", "b"], kind="nominal")
    with pytest.raises(ValueError, match="kind='graded'"):
        multiclass_report([0, 1], [[.5, .5], [.5, .5]], None, classes=["a", "b"], kind="graded")


def test_decision_rule_chosen_on_validation_repairs_a_shifted_model():
    """A model that under-calls every grade by one: tuned thresholds restore the kappa 0.5 loses."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, K, 400)
    latent = y + rng.normal(0, 0.35, 400)
    g = np.arange(K)
    S = 1.0 / (1.0 + np.exp(-(3.0 * (latent[:, None] - g[None, :] + 0.5) - 3.0)))  # P(grade >= g) too low
    S[:, 0] = 1.0
    P = probs_from_cumulative(S)
    val, test = slice(0, 200), slice(200, 400)
    default = DecisionRule("cumulative", (0.5,) * (K - 1))
    rule = choose_decision_rule(y[val], P[val], kind="ordinal")
    assert rule.chosen_on.startswith("validation")
    k_default = quadratic_kappa(y[test], default.predict(P[test]), K)
    k_tuned = quadratic_kappa(y[test], rule.predict(P[test]), K)
    assert k_tuned > k_default + 0.05
    assert choose_decision_rule(y[val], P[val], kind="nominal").kind == "argmax"
    assert DecisionRule.from_dict(rule.to_dict()) == rule


def test_classwise_ece_by_hand():
    y = np.array([0, 1, 1, 2])
    P = np.array([[.7, .2, .1], [.2, .7, .1], [.4, .5, .1], [.1, .1, .8]])
    # 2 equal-width bins (0, .5], (.5, 1]
    # class 0: p=.7 (y1) -> bin1 gap .3 ; p=.2,.4,.1 (y0) -> bin0 mean .2333, obs 0 -> gap .2333*3
    e0 = (0.3 * 1 + (0.7 / 3) * 3) / 4
    # class 1: .2(0) .7(1) .5(1) .1(0) -> bin0: .2,.5,.1 mean .2667 obs 1/3 ; bin1: .7 obs 1
    e1 = (abs(1 / 3 - 0.8 / 3) * 3 + 0.3) / 4
    # class 2: .1 .1 .1 (0) ; .8 (1)
    e2 = (0.1 * 3 + 0.2) / 4
    cw = classwise_ece(y, P, n_bins=2)
    assert cw["per_class"] == pytest.approx([e0, e1, e2])
    assert cw["mean"] == pytest.approx((e0 + e1 + e2) / 3)
    rep = calibration_report(y, P, classes=["a", "b", "c"], n_bins=2)
    assert rep["classwise_ece"] == pytest.approx(cw["mean"])
    # top label: confidences .7 .7 .5 .8, correct 1 1 1 1 -> bins: (.5 -> bin0 gap .5), others bin1
    assert rep["top_label_ece"] == pytest.approx((0.5 + 0.3 + 0.3 + 0.2) / 4)
    assert set(rep["reliability_per_class"]) == {"a", "b", "c"}


def test_paired_comparison_matches_explicit_resampling():
    from medxcept.evaluation.multiclass import paired_comparison

    keys, _, y, P1 = _graded(n_patients=30, seed=7)
    _, _, _, noise = _graded(n_patients=30, seed=8)
    P2 = 0.5 * P1 + 0.5 * noise  # a worse model on the same cases
    B, seed = 40, 3
    r = paired_comparison(y, P1, P2, keys, kind="ordinal", n_resamples=B, seed=seed)
    rule = DecisionRule("cumulative", (0.5,) * (K - 1))
    k1 = cohen_kappa_score(y, rule.predict(P1), weights="quadratic", labels=list(range(K)))
    k2 = cohen_kappa_score(y, rule.predict(P2), weights="quadratic", labels=list(range(K)))
    assert r["kappa_quadratic"]["diff"] == pytest.approx(k1 - k2)
    m1 = roc_auc_score(y, P1, multi_class="ovr", average="macro")
    m2 = roc_auc_score(y, P2, multi_class="ovr", average="macro")
    assert r["macro_roc_auc"]["diff"] == pytest.approx(m1 - m2) and m1 > m2
    _, codes = np.unique(keys, return_inverse=True)
    counts = draw_counts(np.random.default_rng(seed), B, codes.max() + 1)
    d = []
    for b in range(B):
        rep = np.repeat(np.arange(len(y)), counts[b, codes])
        if len(np.unique(y[rep])) == K:
            d.append(roc_auc_score(y[rep], P1[rep], multi_class="ovr", average="macro")
                     - roc_auc_score(y[rep], P2[rep], multi_class="ovr", average="macro"))
    assert r["macro_roc_auc"]["n_used"] == len(d)
    assert r["macro_roc_auc"]["ci"] == pytest.approx((np.percentile(d, 2.5), np.percentile(d, 97.5)))


def test_early_stopping_auc_is_the_graded_evaluations_patient_macro_auc():
    """Issue 30: graded early stopping ranked epochs by mean probabilities per patient with the highest
    class as label; ``unit_macro_auc`` (what it now ranks by) is the evaluation's patient macro ROC-AUC
    (ordinal: worst eye), which it must equal exactly."""
    from medxcept.evaluation.multiclass import aggregate_units, multiclass_report, unit_macro_auc
    from medxcept.evaluation.units import patient_auc

    rng = np.random.default_rng(11)
    n = 40
    keys = np.repeat([f"P{i:02d}" for i in range(n)], 2)
    y = np.clip(np.repeat(rng.integers(0, 3, n), 2) - rng.integers(0, 2, 2 * n), 0, 2)
    z = rng.normal(0, 1.2, (2 * n, 3)) + 1.5 * np.eye(3)[y]
    P = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    for kind in ("ordinal", "nominal"):
        units = aggregate_units(keys, y, P, kind=kind, laterality=None)
        want = multiclass_report(units.y, units.P, None, classes=["a", "b", "c"], kind=kind,
                                 n_resamples=0)["macro_roc_auc"]["point"]
        assert unit_macro_auc(keys, y, P, kind=kind) == pytest.approx(want, abs=1e-12)
    # the former early-stopping rule (mean probabilities, highest class as label) is another number
    assert patient_auc(keys, y, P) != pytest.approx(unit_macro_auc(keys, y, P, kind="ordinal"), abs=1e-4)
