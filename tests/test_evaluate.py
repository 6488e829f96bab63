"""Tests for medxcept.evaluation.metrics, .units and .intervals: scikit-learn as oracle, hand computations, published values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medxcept.errors import SplitError
from medxcept.evaluation import intervals as iv
from medxcept.evaluation import metrics as ev
from medxcept.evaluation import units as un

# --------------------------------------------------------------------------- fixtures

# pROC's aSAH data (Turck et al. 2010, Intensive Care Med 36:107; shipped with the R
# package pROC, Robin et al. 2011): 113 patients as outcome (G = good, P = poor),
# wfns, s100b, ndka.
ASAH = """
G,1,0.13,3.01 G,1,0.14,8.54 G,1,0.1,8.09 G,1,0.04,10.42 P,3,0.13,17.4
P,2,0.1,12.75 G,5,0.47,6.0 P,4,0.16,13.2 G,1,0.18,15.54 G,2,0.1,6.01
P,5,0.12,15.96 G,2,0.1,17.86 P,5,0.44,5.18 P,5,0.71,8.9 G,1,0.04,13.41
G,2,0.08,20.75 P,5,0.49,11.6 G,2,0.04,16.11 P,2,0.07,32.37 P,5,0.33,54.82
P,2,0.09,32.41 G,1,0.09,49.94 P,1,0.07,40.34 G,1,0.11,9.47 G,1,0.07,6.29
G,2,0.17,12.53 G,1,0.07,6.54 G,2,0.11,6.3 G,1,0.13,80.3 G,1,0.19,12.8
G,3,0.05,9.8 G,4,0.16,9.81 P,2,0.41,9.85 G,1,0.14,18.21 G,4,0.34,5.03
P,5,0.35,14.04 P,4,0.48,21.93 G,1,0.09,8.02 P,4,0.96,7.42 P,2,0.25,8.38
G,5,0.5,6.59 G,5,0.46,9.63 G,1,0.16,13.12 G,1,0.07,7.96 G,2,0.43,14.34
G,4,0.45,41.43 G,1,0.11,7.63 G,1,0.08,7.06 G,2,0.09,12.59 P,5,0.86,13.56
P,5,0.52,3.87 G,2,0.08,9.44 G,1,0.06,7.66 G,2,0.13,12.98 P,5,2.07,419.19
G,1,0.1,27.19 G,2,0.14,22.27 G,2,0.15,9.95 P,2,0.07,21.22 G,1,0.06,11.73
P,5,0.77,10.4 G,1,0.05,58.83 G,1,0.09,6.39 P,2,0.3,11.09 P,5,0.03,12.22
P,2,0.09,13.67 G,1,0.04,17.21 P,4,0.23,22.63 P,5,0.7,12.9 G,2,0.09,9.7
P,4,0.27,21.57 P,4,0.71,8.23 P,1,0.08,72.57 P,4,0.26,15.54 G,1,0.08,10.51
G,2,0.16,10.6 G,1,0.09,14.57 P,4,0.13,5.19 P,2,0.1,9.63 G,1,0.08,4.61
P,2,0.11,21.48 G,3,0.33,17.3 G,2,0.11,12.71 G,4,0.28,9.44 G,2,0.07,11.07
G,1,0.1,19.46 G,4,0.32,10.83 P,5,0.22,5.37 G,1,0.07,11.97 G,1,0.05,7.75
G,5,0.24,9.83 G,4,0.38,10.55 G,2,0.1,28.49 G,2,0.15,8.53 G,1,0.08,12.57
G,1,0.14,12.9 G,1,0.1,46.83 G,3,0.07,11.68 G,1,0.04,12.67 G,2,0.19,9.01
P,5,0.56,9.57 P,2,0.14,34.06 P,2,0.58,11.72 P,5,0.32,14.26 P,5,0.82,47.61
P,5,0.74,11.67 G,2,0.15,24.58 G,4,0.47,10.33 G,4,0.17,13.87 P,5,0.44,15.89
G,1,0.15,22.43 G,1,0.5,6.79 G,1,0.48,13.45
"""


def _asah() -> dict[str, np.ndarray]:
    rows = [r.split(",") for r in ASAH.split()]
    return {
        "y": np.array([r[0] == "P" for r in rows], dtype=int),
        "wfns": np.array([float(r[1]) for r in rows]),
        "s100b": np.array([float(r[2]) for r in rows]),
        "ndka": np.array([float(r[3]) for r in rows]),
    }


def _clustered(n_patients: int, images_per_patient: int, seed: int = 0):
    """Patients whose images share label and (almost) probability: strong clustering."""
    rng = np.random.default_rng(seed)
    y_pat = rng.integers(0, 2, n_patients)
    p_pat = np.clip(rng.normal(0.35 + 0.3 * y_pat, 0.2), 0.0, 1.0)
    groups = np.repeat(np.arange(n_patients), images_per_patient)
    y = y_pat[groups]
    p = np.clip(p_pat[groups] + rng.normal(0, 0.005, groups.size), 0.0, 1.0)
    return y, p, np.array([f"P-{g:04d}" for g in groups])


def _width(ci: iv.BootstrapCI) -> float:
    assert ci.low is not None and ci.high is not None
    return ci.high - ci.low


labels_and_probs = st.integers(min_value=2, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        # a coarse grid makes ties frequent, the case where implementations differ
        st.lists(st.integers(0, 20).map(lambda k: k / 20), min_size=n, max_size=n),
        st.sampled_from([0.25, 0.5, 0.7]),
    )
)


# ---------------------------------------------------------------------- binary_metrics


def test_binary_metrics_hand_computed():
    y = [0, 0, 0, 1, 1, 1, 1, 0]
    p = [0.1, 0.4, 0.6, 0.3, 0.7, 0.8, 0.9, 0.2]
    m = ev.binary_metrics(y, p, threshold=0.5)
    # predicted positive: 0.6 (neg), 0.7, 0.8, 0.9 (pos) -> tp 3, fp 1, tn 3, fn 1
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"], m["n_pos"]) == (3, 1, 3, 1, 8, 4)
    assert m["sensitivity"] == 0.75 and m["specificity"] == 0.75
    assert m["precision"] == 0.75 and m["npv"] == 0.75
    assert m["f1"] == 0.75 and m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.75
    # pairs (pos, neg) ranked correctly: 0.3 beats 0.1, 0.2 (2 of 4); others beat all 4
    assert m["roc_auc"] == pytest.approx(14 / 16)
    # ranks by score: 0.9 P, 0.8 P, 0.7 P, 0.6 N, 0.4 N, 0.3 P -> AP = (1+1+1+4/6)/4
    assert m["pr_auc"] == pytest.approx((3 + 4 / 6) / 4)
    assert m["notes"] == []
    json.dumps(m)  # metrics.json-ready


@settings(max_examples=60, deadline=None)
@given(labels_and_probs)
def test_binary_metrics_match_sklearn(data):
    y_list, p_list, threshold = data
    y, p = np.array(y_list), np.array(p_list)
    m = ev.binary_metrics(y, p, threshold=threshold)
    pred = (p >= threshold).astype(int)
    both = 0 < y.sum() < y.size

    def expect(fn, defined, **kw):
        return pytest.approx(fn(y, pred, zero_division=np.nan, **kw)) if defined else None

    if both:
        assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
        assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    else:
        assert m["roc_auc"] is None and m["pr_auc"] is None and m["balanced_accuracy"] is None
    assert m["sensitivity"] == expect(recall_score, y.sum() > 0)
    assert m["specificity"] == expect(recall_score, y.sum() < y.size, pos_label=0)
    assert m["precision"] == expect(precision_score, pred.sum() > 0)
    assert m["npv"] == expect(precision_score, pred.sum() < pred.size, pos_label=0)
    assert m["f1"] == expect(f1_score, y.sum() + pred.sum() > 0)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
    # every None has a reason
    undefined = [k for k, v in m.items() if v is None]
    assert all(any(note.startswith(k) for note in m["notes"]) for k in undefined)


def test_binary_metrics_degenerate_cases_give_none_with_reasons():
    only_neg = ev.binary_metrics([0, 0, 0], [0.1, 0.7, 0.2], threshold=0.5)
    assert only_neg["roc_auc"] is None and only_neg["pr_auc"] is None
    assert only_neg["sensitivity"] is None and only_neg["balanced_accuracy"] is None
    assert only_neg["specificity"] == pytest.approx(2 / 3)
    assert "roc_auc not defined: the test set has no positive case" in only_neg["notes"]

    only_pos = ev.binary_metrics([1, 1], [0.9, 0.8], threshold=0.5)
    assert only_pos["pr_auc"] is None and only_pos["specificity"] is None
    assert only_pos["sensitivity"] == 1.0 and only_pos["npv"] is None

    none_predicted = ev.binary_metrics([0, 1, 1], [0.1, 0.2, 0.3], threshold=0.5)
    assert none_predicted["precision"] is None
    assert none_predicted["f1"] == 0.0  # positives exist and all were missed: a real 0
    assert none_predicted["roc_auc"] == 1.0
    assert any("no case was predicted positive at threshold 0.5" in n for n in none_predicted["notes"])


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 2], [0.1, 0.2], "only 0 and 1"),
        ([0, 1], [0.1, 1.2], r"in \[0, 1\]"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 1, 1], [0.1, 0.2], "has 2 values but y_true has 3"),
        ([], [], "empty"),
    ],
)
def test_binary_metrics_rejects_bad_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        ev.binary_metrics(y, p, threshold=0.5)


# ------------------------------------------------------------------ multiclass_metrics


def _softmax_rows(rng: np.random.Generator, n: int, k: int, y: np.ndarray) -> np.ndarray:
    z = rng.normal(0, 1, (n, k))
    z[np.arange(n), y] += 1.0
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    n, k = 300, 4
    y = rng.integers(0, k, n)
    P = _softmax_rows(rng, n, k, y)
    classes = ["none", "mild", "moderate", "severe"]
    m = ev.multiclass_metrics(y, P, classes=classes)
    pred = P.argmax(axis=1)
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=range(k)).tolist()
    assert m["macro"]["roc_auc"] == pytest.approx(roc_auc_score(y, P, multi_class="ovr"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=range(k))
    for c, name in enumerate(classes):
        row = m["per_class"][name]
        assert row["n"] == support[c]
        assert row["recall"] == pytest.approx(rec[c])
        assert row["precision"] == pytest.approx(prec[c])
        assert row["f1"] == pytest.approx(f1[c])
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y == c, P[:, c]))
        assert row["pr_auc"] == pytest.approx(average_precision_score(y == c, P[:, c]))
    assert m["macro"]["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    # class names work as labels too
    named = ev.multiclass_metrics(np.array(classes)[y], P, classes=classes)
    assert named["confusion_matrix"] == m["confusion_matrix"]


def test_multiclass_absent_class_is_none_and_left_out_of_macro():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 120)  # class 2 never occurs
    P = _softmax_rows(rng, 120, 3, y)
    P[:, 2] *= 0.01  # ... and is never predicted
    P /= P.sum(axis=1, keepdims=True)
    m = ev.multiclass_metrics(y, P, classes=["a", "b", "c"])
    absent = m["per_class"]["c"]
    assert absent["n"] == 0
    assert absent["roc_auc"] is None and absent["recall"] is None and absent["precision"] is None
    assert any("'c'" in note and "absent" in note for note in m["notes"])
    present = [roc_auc_score(y == c, P[:, c]) for c in (0, 1)]
    assert m["macro"]["roc_auc"] == pytest.approx(np.mean(present))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, P.argmax(axis=1)))


def test_multiclass_rejects_bad_shapes_and_labels():
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        ev.multiclass_metrics([0, 1], np.ones((2, 2)) / 2, classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="not in classes"):
        ev.multiclass_metrics(["a", "z"], np.ones((2, 2)) / 2, classes=["a", "b"])


# -------------------------------------------------------------------- choose_threshold


def _sens_spec(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float]:
    pred = p >= t
    return float(pred[y == 1].mean()), float((~pred[y == 0]).mean())


@settings(max_examples=40, deadline=None)
@given(labels_and_probs)
def test_youden_threshold_maximises_j_over_all_candidates(data):
    y_list, p_list, _ = data
    y, p = np.array(y_list), np.array(p_list)
    if not 0 < y.sum() < y.size:
        with pytest.raises(SplitError, match="validation split has no"):
            ev.choose_threshold(y, p)
        return
    t = ev.choose_threshold(y, p, method="youden")
    j = {c: sum(_sens_spec(y, p, c)) - 1 for c in np.unique(p)}
    best = max(j.values())
    chosen = max(c for c, v in j.items() if v >= best - 1e-12)  # ties: highest threshold
    assert sum(_sens_spec(y, p, t)) - 1 == pytest.approx(best)
    # the midpoint below the chosen score: same validation decisions, not on a case's own score
    lower = p[p < chosen]
    assert t == (pytest.approx((chosen + lower.max()) / 2) if lower.size else chosen)
    assert ((p >= t) == (p >= chosen)).all()


def test_threshold_of_saturated_separated_probabilities_is_not_their_edge():
    # validation perfectly separated with saturated probabilities: the old rule returned 1.0,
    # so a test positive at 0.9999 was called negative
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([1e-9, 2e-9, 0.0, 1.0, 1.0, 1.0])
    t = ev.choose_threshold(y, p)
    assert t == pytest.approx(0.5, abs=1e-8)
    assert 0.9999 >= t


@pytest.mark.parametrize("target", [0.5, 0.7, 0.9, 1.0])
def test_sensitivity_threshold_is_highest_reaching_target(target):
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(10, int), np.zeros(30, int)]
    p = rng.permutation(40)[:40] / 40 + 0.001  # distinct values
    t = ev.choose_threshold(y, p, method="sensitivity", target=target)
    sens, _ = _sens_spec(y, p, t)
    assert sens >= target
    chosen = p[p >= t].min()  # the lowest score still called positive
    higher = p[p > chosen]
    if higher.size:
        assert _sens_spec(y, p, higher.min())[0] < target  # the next higher score misses the target
    lower = p[p < chosen]
    assert t == (pytest.approx((chosen + lower.max()) / 2) if lower.size else chosen)
    # 10 positives: target 0.7 needs exactly 7 (0.7 * 10 is 7.000000000000001 in floats)
    assert sens == pytest.approx(math.ceil(round(target * 10, 9)) / 10)


# ---------------------------------------------------------------- aggregate_by_patient


def test_aggregate_by_patient_mean_max_and_labels():
    keys = ["P-b", "P-a", "P-b", "P-a", "P-c"]
    y = [0, 0, 1, 0, 2]
    p = [0.2, 0.1, 0.6, 0.3, 0.9]
    k, yp, pp = un.aggregate_by_patient(keys, y, p, how="mean")
    assert k.tolist() == ["P-a", "P-b", "P-c"]
    assert yp.tolist() == [0, 1, 2]  # most severe image
    assert pp == pytest.approx([0.2, 0.4, 0.9])
    _, _, pmax = un.aggregate_by_patient(keys, y, p, how="max")
    assert pmax == pytest.approx([0.3, 0.6, 0.9])

    P = np.array([[0.8, 0.2], [0.6, 0.4], [0.2, 0.8], [0.4, 0.6], [0.1, 0.9]])
    _, _, P_mean = un.aggregate_by_patient(keys, y, P, how="mean")
    assert P_mean == pytest.approx(np.array([[0.5, 0.5], [0.5, 0.5], [0.1, 0.9]]))
    _, _, P_max = un.aggregate_by_patient(keys, y, P, how="max")
    assert P_max == pytest.approx(np.array([[0.6, 0.6], [0.8, 0.8], [0.1, 0.9]]))


# ------------------------------------------------------------------------- bootstrap


def test_vectorized_resample_metrics_equal_sklearn_on_explicit_resamples():
    rng = np.random.default_rng(4)
    n = 150
    y = rng.integers(0, 2, n)
    p = np.round(rng.random(n), 1)  # many ties
    codes = iv.as_group_codes(rng.integers(0, 40, n), n)
    counts = iv.draw_counts(rng, 8, int(codes.max()) + 1)
    pos_u, neg_u = iv.RankIndex(y, p, codes).per_value(counts)
    auc, ap = iv.weighted_auc(pos_u, neg_u), iv.weighted_ap(pos_u, neg_u)
    pred = p >= 0.5
    cells = np.stack([pred & (y == 1), pred & (y == 0), ~pred & (y == 0), ~pred & (y == 1)], 1)
    group_cells = np.zeros((counts.shape[1], 4), int)
    np.add.at(group_cells, codes, cells.astype(int))
    thr = iv._threshold_metrics(counts, group_cells, ev.BINARY_METRICS[2:])
    for b in range(counts.shape[0]):
        w = counts[b, codes]  # every image of a drawn patient, as often as the patient
        yb, pb = np.repeat(y, w), np.repeat(p, w)
        assert auc[b] == pytest.approx(roc_auc_score(yb, pb), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(yb, pb), abs=1e-12)
        ref = ev.binary_metrics(yb, pb, threshold=0.5)
        for name, values in thr.items():
            assert values[b] == pytest.approx(ref[name], abs=1e-12)


def test_resampling_keeps_a_patients_images_together():
    codes = iv.as_group_codes(np.array(["P-x", "P-y", "P-x", "P-z", "P-y", "P-x"]), 6)
    counts = iv.draw_counts(np.random.default_rng(5), 200, 3)
    assert (counts.sum(axis=1) == 3).all()  # as many patients drawn as there are
    w = counts[:, codes]
    for members in ([0, 2, 5], [1, 4]):
        assert (w[:, members] == w[:, members[:1]]).all()


def test_bootstrap_ci_contains_point_and_narrows_with_n():
    rng = np.random.default_rng(6)

    def sample(n):
        y = rng.integers(0, 2, n)
        return y, np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)

    widths = {}
    for n in (200, 2000):
        y, p = sample(n)
        ci = iv.bootstrap_ci(y, p, None, threshold=0.5, n_resamples=400, seed=1)
        point = ev.binary_metrics(y, p, threshold=0.5)
        for name, (pt, low, high) in ci.items():
            assert pt == pytest.approx(point[name])
            assert low < pt < high
        widths[n] = {m: _width(c) for m, c in ci.items()}
    for m in ev.BINARY_METRICS:
        # width ~ 1/sqrt(n): a ratio near sqrt(10) = 3.2
        assert 2.0 < widths[200][m] / widths[2000][m] < 5.0, m


def test_patient_resampling_widens_intervals_on_clustered_data():
    # 40 patients x 15 near-identical images: resampling images pretends n = 600,
    # resampling patients sees n = 40, about sqrt(15) ~ 3.9 times wider.
    y, p, groups = _clustered(40, 15)
    by_patient = iv.bootstrap_ci(y, p, groups, threshold=0.5, n_resamples=500, seed=0)
    by_image = iv.bootstrap_ci(y, p, None, threshold=0.5, n_resamples=500, seed=0)
    for m in ("roc_auc", "sensitivity", "specificity", "accuracy"):
        assert _width(by_patient[m]) > 2.5 * _width(by_image[m]), m


def test_bootstrap_is_reproducible_and_serializable():
    y, p, groups = _clustered(30, 3, seed=2)
    a = iv.bootstrap_ci(y, p, groups, metrics=("roc_auc", "pr_auc"), threshold=None,
                        n_resamples=200, seed=7)
    b = iv.bootstrap_ci(y, p, groups, metrics=("roc_auc", "pr_auc"), threshold=None,
                        n_resamples=200, seed=7)
    c = iv.bootstrap_ci(y, p, groups, metrics=("roc_auc", "pr_auc"), threshold=None,
                        n_resamples=200, seed=8)
    assert a == b and a != c
    assert json.loads(json.dumps(a))["roc_auc"] == list(a["roc_auc"])
    assert a["roc_auc"].to_dict()["n_used"] == 200


def test_bootstrap_drops_and_counts_undefined_resamples():
    # 1 positive patient among 10: a resample misses it with probability 0.9^10 ~ 0.35
    y = np.r_[np.ones(2, int), np.zeros(18, int)]
    p = np.linspace(0.95, 0.05, 20)
    groups = np.repeat([f"P-{i}" for i in range(10)], 2)
    ci = iv.bootstrap_ci(y, p, groups, threshold=0.5, n_resamples=1000, seed=0)
    auc = ci["roc_auc"]
    assert auc.n_used + auc.n_dropped == 1000
    assert 250 < auc.n_dropped < 450
    assert ci["sensitivity"].n_dropped == auc.n_dropped  # same resamples lack a positive
    assert ci["specificity"].n_dropped == 0
    assert auc.point == 1.0 and auc.low == 1.0 == auc.high


def test_bootstrap_rejects_bad_arguments():
    y, p = [0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]
    with pytest.raises(ValueError, match="threshold is needed"):
        iv.bootstrap_ci(y, p, None, threshold=None)
    with pytest.raises(ValueError, match="unknown metrics"):
        iv.bootstrap_ci(y, p, None, metrics=("auc",), threshold=0.5)
    with pytest.raises(ValueError, match="one value per image"):
        iv.bootstrap_ci(y, p, ["a", "b"], threshold=0.5)


def test_bootstrap_2000_images_1000_resamples_is_fast():
    import time

    y, p, groups = _clustered(500, 4, seed=3)
    start = time.perf_counter()
    iv.bootstrap_ci(y, p, groups, threshold=0.5, n_resamples=1000)
    assert time.perf_counter() - start < 10.0  # ~0.2 s; generous for shared CPUs


# ---------------------------------------------------------------------------- DeLong


def test_delong_matches_proc_on_asah():
    # pROC: roc.test(roc(outcome, wfns), roc(outcome, s100b)) -> Z = 2.209, p = 0.0272
    d = _asah()
    r = iv.delong_test(d["y"], d["wfns"], d["s100b"])
    assert r["z"] == pytest.approx(2.20898359144091, rel=1e-9)
    assert r["p_value"] == pytest.approx(0.0271757822291882, rel=1e-9)
    assert r["ci"] == pytest.approx((0.0104061769564846, 0.174214419249478), rel=1e-9)
    assert r["auc1"] == pytest.approx(0.823678861788618, rel=1e-12)
    assert r["auc2"] == pytest.approx(roc_auc_score(d["y"], d["s100b"]))
    r2 = iv.delong_test(d["y"], d["wfns"], d["ndka"])
    assert r2["z"] == pytest.approx(2.79777591868904, rel=1e-9)
    assert r2["auc2"] == pytest.approx(0.611957994579946, rel=1e-12)
    assert iv.delong_test(d["y"], d["s100b"], d["wfns"])["z"] == pytest.approx(-r["z"])


def test_delong_matches_brute_force_structural_components():
    rng = np.random.default_rng(8)
    y = np.r_[np.ones(25, int), np.zeros(35, int)]
    s1 = np.round(rng.normal(y, 1.0), 1)  # ties on purpose
    s2 = np.round(0.5 * s1 + rng.normal(0.3 * y, 1.0), 1)

    def psi(a, b):
        return 1.0 if a > b else 0.5 if a == b else 0.0

    v10, v01 = [], []
    for s in (s1, s2):
        pos, neg = s[y == 1], s[y == 0]
        v10.append([np.mean([psi(a, b) for b in neg]) for a in pos])
        v01.append([np.mean([psi(a, b) for a in pos]) for b in neg])
    S = np.cov(v10) / 25 + np.cov(v01) / 35
    diff = np.mean(v10[0]) - np.mean(v10[1])
    r = iv.delong_test(y, s1, s2)
    assert r["diff"] == pytest.approx(diff, abs=1e-12)
    assert r["se"] == pytest.approx(math.sqrt(S[0, 0] + S[1, 1] - 2 * S[0, 1]), rel=1e-10)


def test_delong_agrees_with_paired_bootstrap():
    rng = np.random.default_rng(9)
    n = 400
    y = rng.integers(0, 2, n)
    s1 = rng.normal(1.0 * y, 1.0)
    s2 = 0.6 * s1 + rng.normal(0.3 * y, 0.8)
    d = iv.delong_test(y, s1, s2)
    b = iv.paired_bootstrap_auc(y, s1, s2, None, n_resamples=2000, seed=0)
    assert b["diff"] == pytest.approx(d["diff"])
    assert b["se"] == pytest.approx(d["se"], rel=0.15)
    assert b["ci"][0] < d["diff"] < b["ci"][1]
    assert abs(b["p_value"] - d["p_value"]) < 0.05


def test_delong_and_paired_bootstrap_degenerate_cases():
    few = iv.delong_test([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3], [0.5, 0.4, 0.3, 0.2])
    assert few["p_value"] is None and few["auc1"] is None and "at least 2" in few["notes"][0]
    same = iv.delong_test([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], [0.9, 0.4, 0.5, 0.1])
    assert same["diff"] == 0 and same["p_value"] == 1.0
    y, p, groups = _clustered(20, 3)
    pb = iv.paired_bootstrap_auc(y, p, p, groups, n_resamples=100)
    assert pb["diff"] == 0 and pb["ci"] == (0.0, 0.0) and pb["p_value"] == 1.0


def test_mcc_is_one_registry_entry_matching_sklearn():
    """The Matthews correlation coefficient, added as one :data:`METRICS` entry, reaches the point
    metrics, the bootstrap and every list read from the registry (CI, CV, compare)."""
    from sklearn.metrics import matthews_corrcoef

    rng = np.random.default_rng(11)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        p = np.clip(rng.normal(0.4 + 0.2 * y, 0.25), 0, 1)
        t = float(rng.uniform(0.2, 0.8))
        m = ev.binary_metrics(y, p, threshold=t)
        pred = (p >= t).astype(int)
        if pred.min() == pred.max():
            assert m["mcc"] is None and any(note.startswith("mcc not defined") for note in m["notes"])
        else:
            assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred), abs=1e-12)
    # bootstrap: per-resample MCC equals scikit-learn's on the explicitly resampled arrays
    y, p = rng.integers(0, 2, 40), rng.uniform(0, 1, 40)
    codes = np.repeat(np.arange(20), 2)
    counts = iv.draw_counts(rng, 6, 20)
    pred = p >= 0.5
    cells = np.stack([pred & (y == 1), pred & (y == 0), ~pred & (y == 0), ~pred & (y == 1)], 1).astype(int)
    group_cells = np.zeros((20, 4), int)
    np.add.at(group_cells, codes, cells)
    mcc = iv._threshold_metrics(counts, group_cells, ["mcc"])["mcc"]
    for b in range(counts.shape[0]):
        w = counts[b, codes]
        assert mcc[b] == pytest.approx(matthews_corrcoef(np.repeat(y, w), np.repeat(pred, w)), abs=1e-12)
    for names in (ev.metric_names(ci=True), ev.metric_names(cv=True), ev.metric_names(compare=True)):
        assert "mcc" in names
    assert "mcc" in ev.BINARY_METRICS and ev.metric_labels()["mcc"] == "MCC"
    ci = iv.bootstrap_ci(y, p, codes, metrics=["mcc"], threshold=0.5, n_resamples=200, seed=0)["mcc"]
    assert ci.low < ci.point < ci.high


def test_patient_auc_uses_the_aggregation_it_is_given():
    # patient A: one confident positive image and one low one; mean and max rank A differently
    keys = np.array(["A", "A", "B", "C"])
    y = np.array([1, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.6, 0.4])
    assert un.patient_auc(keys, y, p, how="max") == pytest.approx(1.0)
    assert un.patient_auc(keys, y, p, how="mean") == pytest.approx(0.5)
    assert np.isnan(un.patient_auc(keys, np.zeros(4, int), p))
    np.testing.assert_allclose(un.probabilities(np.array([[1.0, 1.0, 1.0]])), [[1 / 3] * 3])
