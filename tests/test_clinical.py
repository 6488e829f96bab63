"""Tests for medxcept.evaluation.clinical: net benefit by hand and against dcurves, calibration intercept and slope
against statsmodels and on planted (mis)calibration, operating points against roc_curve on validation,
the sample-size formulas against simulation, and the clinical reading wired into ``assess``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy.special import expit
from sklearn.metrics import roc_auc_score, roc_curve

import medxcept.report as report_pkg
from medxcept.config import load_config
from medxcept.evaluation import clinical as cl
from medxcept.evaluation.assess import assess
from medxcept.evaluation.intervals import cluster_resample_weights
from medxcept.evaluation.units import aggregate_by_patient

# Ten patients, one unit each, scores in descending order.
Y10 = np.array([1, 0, 1, 0, 0, 1, 0, 0, 1, 0])
P10 = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1])


# ------------------------------------------------------------------------------- net benefit


def test_net_benefit_by_hand_on_ten_patients():
    # t = 0.10: all 10 referred, TP 4, FP 6: 4/10 - 6/10 * (0.1/0.9)
    # t = 0.20: the 8 with p >= 0.2, TP 3 (0.9, 0.7, 0.4), FP 5: 3/10 - 5/10 * 0.25 = 0.175
    # t = 0.50: the 5 with p >= 0.5, TP 2, FP 3: 2/10 - 3/10 * 1 = -0.1
    # t = 0.85: only 0.9, TP 1, FP 0: 0.1
    t = np.array([0.10, 0.20, 0.50, 0.85])
    expected = [0.4 - 0.6 / 9, 0.175, -0.1, 0.1]
    assert cl.net_benefit(Y10, P10, t) == pytest.approx(expected)
    dc = cl.decision_curve(Y10, P10, t)
    # refer all: prevalence 0.4 - 0.6 * t / (1 - t)
    assert dc["refer_all"] == pytest.approx([0.4 - 0.6 / 9, 0.25, -0.2, 0.4 - 0.6 * 0.85 / 0.15])
    assert dc["refer_none"] == [0.0] * 4 and dc["prevalence"] == pytest.approx(0.4)
    # the model beats both defaults only at 0.85
    assert dc["useful_range"] == [0.85, 0.85] and dc["useful_ranges"] == [[0.85, 0.85]]
    # runs of thresholds: at 0.11 and 0.12 the lowest score (0.10) is no longer referred, TP 4, FP 5:
    # 0.4 - 0.5 t / (1 - t) beats refer all (0.4 - 0.6 t / (1 - t)); at 0.10 they tie; at 0.2 refer all wins
    t2 = np.array([0.10, 0.11, 0.12, 0.2, 0.85])
    assert cl.net_benefit(Y10, P10, [0.11])[0] == pytest.approx(0.4 - 0.5 * 0.11 / 0.89)
    assert cl.decision_curve(Y10, P10, t2)["useful_ranges"] == [[0.11, 0.12], [0.85, 0.85]]


def test_net_benefit_equals_dcurves():
    dcurves = pytest.importorskip("dcurves")
    rng = np.random.default_rng(3)
    y = (rng.random(200) < 0.3).astype(int)
    p = np.clip(0.3 + 0.35 * (y - 0.3) + rng.normal(0, 0.2, 200), 0.001, 0.999)
    t = np.round(np.arange(0.05, 0.51, 0.01), 2)
    ref = dcurves.dca(data=pd.DataFrame({"y": y, "p": p}), outcome="y", modelnames=["p"], thresholds=t)
    ours = cl.decision_curve(y, p, t)
    for name, key in (("p", "model"), ("all", "refer_all"), ("none", "refer_none")):
        theirs = ref[ref["model"] == name].sort_values("threshold")["net_benefit"].to_numpy()
        assert ours[key] == pytest.approx(theirs, abs=1e-12), name
    # with unit weights of 2 for everyone (a bootstrap row drawing every patient twice) nothing changes
    assert cl.net_benefit(y, p, t, np.full((1, 200), 2.0))[0] == pytest.approx(ours["model"])


def test_weighted_net_benefit_equals_the_repeated_data():
    w = np.array([[2, 0, 1, 0, 3, 1, 0, 1, 1, 1]], dtype=float)
    idx = np.repeat(np.arange(10), w[0].astype(int))
    t = np.array([0.15, 0.3, 0.6])
    assert cl.net_benefit(Y10, P10, t, w)[0] == pytest.approx(cl.net_benefit(Y10[idx], P10[idx], t))


# ------------------------------------------------------------------- calibration intercept, slope


def _units(n: int, seed: int):
    """n units of n // 2 patients (two visits each): true log-odds z, outcome drawn from them."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-0.8, 1.6, n)
    y = (rng.random(n) < expit(z)).astype(int)
    return z, y, np.arange(n) // 2


def test_intercept_and_slope_equal_statsmodels_fits():
    z, y, groups = _units(300, 1)
    p = expit(0.7 * z + 0.4)
    r = cl.calibration_intercept_slope(y, p)
    lp = np.log(p / (1 - p))
    slope = sm.Logit(y, sm.add_constant(lp)).fit(disp=0)
    citl = sm.GLM(y, np.ones((300, 1)), family=sm.families.Binomial(), offset=lp).fit()
    assert r["slope"] == pytest.approx(slope.params[1], rel=1e-6)
    assert r["slope_intercept"] == pytest.approx(slope.params[0], rel=1e-6)
    assert r["intercept"] == pytest.approx(citl.params[0], rel=1e-6)
    # the bootstrap's vectorized fits are the same maximum-likelihood fits on the weighted data
    w = cluster_resample_weights(groups, 5, seed=2)
    ints, slopes = cl.recalibration_fits(y, p, w)
    for b in range(5):
        fit = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial(), freq_weights=w[b]).fit()
        off = sm.GLM(y, np.ones((300, 1)), family=sm.families.Binomial(), offset=lp, freq_weights=w[b]).fit()
        assert slopes[b] == pytest.approx(fit.params[1], rel=1e-6)
        assert ints[b] == pytest.approx(off.params[0], rel=1e-6, abs=1e-9)


def test_perfectly_calibrated_units_give_intercept_zero_and_slope_one():
    z, y, groups = _units(2000, 4)
    p = expit(z)
    r = cl.clinical_reading(y, p, p, groups, operating=None, thresholds=[0.1, 0.2], n_resamples=300,
                            n_band=25, seed=0)
    ci_a, ci_b = r["calibration"]["after"]["intercept"], r["calibration"]["after"]["slope"]
    assert abs(ci_a["point"]) < 0.1 and ci_a["low"] < 0.0 < ci_a["high"]
    assert abs(ci_b["point"] - 1.0) < 0.1 and ci_b["low"] < 1.0 < ci_b["high"]
    # the smoothed curve follows the diagonal where the data are dense
    smooth = r["calibration"]["after"]["smoothed"]
    grid, obs = np.array(smooth["grid"]), np.array(smooth["observed"], dtype=float)
    dense = (grid >= 0.1) & (grid <= 0.6)
    assert np.nanmax(np.abs(obs[dense] - grid[dense])) < 0.06
    low, high = np.array(smooth["low"], dtype=float), np.array(smooth["high"], dtype=float)
    assert np.all(low[dense] <= obs[dense] + 1e-9) and np.all(obs[dense] <= high[dense] + 1e-9)


def test_overconfident_predictions_give_a_slope_well_below_one():
    z, y, groups = _units(1500, 5)
    overconfident = expit(2.5 * z)  # logits 2.5 times too extreme: the true slope is 0.4
    r = cl.clinical_reading(y, overconfident, expit(z), groups, operating=None, thresholds=[0.1],
                            n_resamples=300, n_band=20, seed=0)
    after, before = r["calibration"]["after"]["slope"], r["calibration"]["before"]["slope"]
    assert after["point"] == pytest.approx(0.4, abs=0.06) and after["high"] < 0.6
    assert before["low"] < 1.0 < before["high"]  # "before" here is the calibrated truth


# -------------------------------------------------------------------------- operating points


def _by_roc_curve(y, p, fixed, target):
    """The operating point read off scikit-learn's ROC curve, independently of medxcept."""
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    best = None
    for f, s, t in zip(fpr, tpr, thr, strict=True):
        held, free = (1 - f, s) if fixed == "specificity" else (s, 1 - f)
        if np.isfinite(t) and held >= target and (best is None or free > best[0]):
            best = (free, t, s, 1 - f)
    _, t, sens, spec = best
    lower = p[p < t]
    return (t + lower.max()) / 2 if lower.size else t, sens, spec


def test_operating_points_equal_those_read_off_roc_curve_on_validation():
    rng = np.random.default_rng(7)
    y = (rng.random(80) < 0.4).astype(int)
    p = np.round(expit(1.5 * (y - 0.4) + rng.normal(0, 1, 80)), 2)  # rounding makes ties
    rows = cl.operating_thresholds(y, p)
    assert [(r["fixed"], r["target"]) for r in rows] == list(cl.OPERATING_TARGETS)
    for r in rows:
        threshold, sens, spec = _by_roc_curve(y, p, r["fixed"], r["target"])
        assert r["threshold"] == pytest.approx(threshold)
        assert r["val_sensitivity"] == pytest.approx(sens) and r["val_specificity"] == pytest.approx(spec)
        # and the threshold classifies the validation units as that ROC point does
        pred = p >= r["threshold"]
        assert pred[y == 1].mean() == pytest.approx(sens) and (~pred[y == 0]).mean() == pytest.approx(spec)
        held = spec if r["fixed"] == "specificity" else sens
        assert held >= r["target"]


def test_operating_point_table_measures_test_at_the_validation_threshold():
    rng = np.random.default_rng(8)
    y = (rng.random(60) < 0.5).astype(int)
    p = expit(2 * (y - 0.5) + rng.normal(0, 1, 60))
    chosen = [{"fixed": "specificity", "target": 0.9, "threshold": 0.6}]
    w = cluster_resample_weights(np.arange(60) // 3, 200, seed=0)
    (row,) = cl.operating_point_table(y, p, chosen, w, prevalence=0.05)
    pred = p >= 0.6
    sens, spec = pred[y == 1].mean(), (~pred[y == 0]).mean()
    assert row["sensitivity"]["point"] == pytest.approx(sens)
    assert row["specificity"]["point"] == pytest.approx(spec)
    assert row["ppv"]["point"] == pytest.approx(y[pred].mean())
    assert row["ppv_at_prevalence"]["point"] == pytest.approx(sens * 0.05 / (sens * 0.05 + (1 - spec) * 0.95))
    assert row["sensitivity"]["low"] <= sens <= row["sensitivity"]["high"]
    assert row["threshold"] == 0.6  # applied as chosen


# ------------------------------------------------------------------------------- sample size


def test_expected_half_widths_match_simulation():
    """The formulas' standard errors against the spread of the estimates over simulated test sets."""
    rng = np.random.default_rng(11)
    n, lp = 200, rng.normal(-1.0, 1.5, 200)  # linear predictors of one test set, held fixed
    slopes, aucs = [], []
    for _ in range(200):
        y = (rng.random(n) < expit(lp)).astype(int)
        slopes.append(cl.calibration_intercept_slope(y, expit(lp))["slope"])
        aucs.append(roc_auc_score(y, lp))
    assert cl.slope_standard_error(lp, n) == pytest.approx(np.std(slopes), rel=0.15)
    phi = float(np.mean(expit(lp)))
    assert cl.auc_standard_error(float(np.mean(aucs)), n, phi) == pytest.approx(np.std(aucs), rel=0.2)


def test_sample_size_sentence_says_when_the_test_set_is_too_small():
    rng = np.random.default_rng(12)
    small = cl.sample_size(n=24, n_events=8, auc=0.85, logits=rng.normal(-1, 1.5, 24),
                           achieved_auc=(0.65, 1.0), unit="visit")
    assert small["too_small"] and "too small" in small["sentence"] and "24 visits" in small["sentence"]
    assert small["auc_units_needed"] > 24 and small["slope_units_needed"] > 24
    # the units needed do reach the target, and one fewer does not
    need = small["auc_units_needed"]
    assert 1.96 * cl.auc_standard_error(0.85, need, 8 / 24) <= 0.05 < 1.96 * cl.auc_standard_error(0.85, need - 1,
                                                                                                    8 / 24)
    assert small["auc_achieved_half_width"] == pytest.approx(0.175)
    assert "AUC of 0.85 as anywhere from 0.65 to 1.00" in small["sentence"]
    big = cl.sample_size(n=5000, n_events=1500, auc=0.85, logits=rng.normal(-1, 1.5, 5000))
    assert not big["too_small"] and "meets" in big["sentence"]


# ------------------------------------------------------------------------ wired into assess


def _frame(rng: np.random.Generator, n_patients: int, prefix: str) -> tuple[pd.DataFrame, np.ndarray]:
    y_pat = np.arange(n_patients) % 2
    frame = pd.DataFrame({"patient_key": np.repeat([f"{prefix}{i:03d}" for i in range(n_patients)], 2),
                          "y": np.repeat(y_pat, 2)})
    return frame, 1.5 * (frame["y"].to_numpy() - 0.5) + rng.normal(0, 1.2, len(frame))


def test_operating_points_are_chosen_on_validation_never_on_test():
    rng = np.random.default_rng(0)
    val, vz = _frame(rng, 40, "v")
    test, tz = _frame(rng, 40, "t")
    cfg = load_config(overrides={"eval.n_bootstrap": 100, "eval.prevalence": 0.1})
    a = assess(val=val, test=test, val_logits=vz, test_logits=tz, cfg=cfg, classes=("neg", "pos"))
    chosen = a.metrics["threshold"]["operating_points"]
    _, vy, vp = aggregate_by_patient(a.val["patient_key"], a.val["y"], a.val["prob"], how="max")
    for r in chosen:  # read off the validation units' ROC curve
        assert r["threshold"] == pytest.approx(_by_roc_curve(vy, vp, r["fixed"], r["target"])[0])
    clinical = a.metrics["clinical"]
    assert [r["threshold"] for r in clinical["operating_points"]] == [r["threshold"] for r in chosen]
    assert clinical["clinic_prevalence"] == 0.1 and clinical["n_units"] == 40

    # permuting the test labels (by patient) changes what is measured, never what was chosen
    patients = test["patient_key"].unique()
    relabel = dict(zip(patients, test.groupby("patient_key")["y"].max().loc[rng.permutation(patients)],
                       strict=True))
    shuffled = test.assign(y=test["patient_key"].map(relabel).to_numpy())
    b = assess(val=val, test=shuffled, val_logits=vz, test_logits=tz, cfg=cfg, classes=("neg", "pos"))
    assert b.metrics["threshold"]["operating_points"] == chosen
    assert [r["threshold"] for r in b.metrics["clinical"]["operating_points"]] == [r["threshold"] for r in chosen]
    before = [r["sensitivity"]["point"] for r in clinical["operating_points"]]
    after = [r["sensitivity"]["point"] for r in b.metrics["clinical"]["operating_points"]]
    assert before != after


def test_an_unreachable_operating_point_is_not_defined_rather_than_invented():
    # 4 validation negatives, the top score a negative: specificity >= 0.90 only by referring none
    y = np.array([0, 1, 0, 1, 0, 1, 0])
    p = np.array([0.95, 0.9, 0.6, 0.7, 0.2, 0.5, 0.1])
    rows = {(r["fixed"], r["target"]): r for r in cl.operating_thresholds(y, p)}
    r = rows[("specificity", 0.90)]
    assert r["threshold"] is None and "refer" in r["note"]
    assert rows[("sensitivity", 0.90)]["threshold"] == pytest.approx((0.5 + 0.2) / 2)


def test_pooled_out_of_fold_operating_points_apply_each_folds_threshold():
    from medxcept.config import EvalConfig
    from medxcept.evaluation.kfold import pooled_clinical

    # fold 0 chose 0.5 for every operating point, fold 1 chose 0.3 (and reached specificity 95 % only by
    # referring none: its units then count as not referred)
    f0 = pd.DataFrame({"repeat": 0, "fold": 0, "patient_key": ["P-a", "P-b", "P-f"], "y": [1, 0, 1],
                       "prob": [0.8, 0.45, 0.35], "prob_raw": [0.9, 0.4, 0.3], "threshold": 0.5})
    f1 = pd.DataFrame({"repeat": 0, "fold": 1, "patient_key": ["P-c", "P-d", "P-e"], "y": [1, 0, 0],
                       "prob": [0.4, 0.35, 0.1], "prob_raw": [0.6, 0.3, 0.2], "threshold": 0.3})
    ops0 = [{"fixed": f, "target": t, "threshold": 0.5} for f, t in cl.OPERATING_TARGETS]
    ops1 = [{"fixed": f, "target": t, "threshold": None if (f, t) == ("specificity", 0.95) else 0.3}
            for f, t in cl.OPERATING_TARGETS]
    out = pooled_clinical([f0, f1], [ops0, ops1], EvalConfig(n_bootstrap=50, patient_aggregation="max"))
    assert out["n_units"] == 6 and out["n_events"] == 3
    rows = {(r["fixed"], r["target"]): r for r in out["operating_points"]}
    # referred: P-a (0.8 >= 0.5), P-c (0.4 >= 0.3), P-d (0.35 >= 0.3); not P-b (0.45 < 0.5), P-f (0.35 < 0.5)
    r = rows[("specificity", 0.90)]
    assert r["per_fold_thresholds"] == [0.5, 0.3]
    assert r["sensitivity"]["point"] == pytest.approx(2 / 3) and r["specificity"]["point"] == pytest.approx(2 / 3)
    # fold 1 refers none at specificity 95 %: P-a only
    r = rows[("specificity", 0.95)]
    assert r["sensitivity"]["point"] == pytest.approx(1 / 3) and r["specificity"]["point"] == 1.0


def test_each_graded_endpoint_gets_its_clinical_reading():
    import jinja2

    from medxcept.cohort.table import parse_endpoint
    from medxcept.config import EvalConfig
    from medxcept.evaluation.graded import assess_graded
    from medxcept.report import _ci, fmt
    from medxcept.report.figures import clinical_figure
    from tests.test_graded import CLASSES
    from tests.test_graded import _frame as graded_frame

    val, test = graded_frame(30, 1), graded_frame(40, 2)
    endpoints = (parse_endpoint("referable", "grade >= moderate", CLASSES, "ordinal"),)
    out = assess_graded(val=val, test=test, classes=CLASSES, task="ordinal", endpoints=endpoints,
                        eval_cfg=EvalConfig(n_bootstrap=100), seed=0)
    e = out["endpoints"]["referable"]
    # worst eye: the patient's P(moderate) is the maximum over their images, on validation and test alike
    vpat = val.assign(pos=(val["y"] == 2).astype(int)).groupby("patient_key").agg(pos=("pos", "max"),
                                                                                   p=("prob_moderate", "max"))
    for r in e["operating_points"]:
        assert r["threshold"] == pytest.approx(_by_roc_curve(vpat["pos"].to_numpy(), vpat["p"].to_numpy(),
                                                             r["fixed"], r["target"])[0])
    tpat = test.assign(pos=(test["y"] == 2).astype(int)).groupby("patient_key").agg(
        pos=("pos", "max"), p=("prob_moderate", "max"))
    clin = e["clinical"]
    assert clin["n_units"] == 40
    assert clin["calibration"]["after"]["slope"]["point"] == pytest.approx(
        cl.calibration_intercept_slope(tpat["pos"], tpat["p"])["slope"])
    templates = str(Path(report_pkg.__file__).parent / "templates")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"], env.filters["ci"] = fmt, _ci
    html = env.get_template("graded.html.j2").render(
        m={"graded": out, "calibration_method": "temperature", "calibrator": {"temperature": 2.0, "note": None}},
        figs={"endpoint_clinical_referable": clinical_figure(clin)}, ci_metrics=["roc_auc"])
    assert 'id="clinical-1"' in html and "Clinical reading: referable" in html
    assert _ci(clin["calibration"]["after"]["slope"]) in html and 'id="clinical-1-figure"' in html


def test_checklist_rows_are_filled_from_the_clinical_reading():
    from medxcept.report import _ci, _clinical_rows

    z, y, groups = _units(300, 9)
    r = cl.clinical_reading(y, expit(z), expit(2 * z), groups, operating=None,
                            thresholds=cl.decision_thresholds(0.05, 0.5), n_resamples=100, n_band=10, seed=0,
                            unit="visit")
    r["calibration_method"] = "temperature"
    rows = {row["item"].split(":")[0]: row for row in _clinical_rows(r)}
    assert set(rows) == {"Calibration", "Clinical utility", "Study size"}
    cal = rows["Calibration"]["answer"]
    for key in ("before", "after"):
        assert _ci(r["calibration"][key]["slope"]) in cal and _ci(r["calibration"][key]["intercept"]) in cal
    first = r["decision_curve"]["after"]["useful_ranges"][0]
    assert f"{first[0]:.2f}–{first[1]:.2f}" in rows["Clinical utility"]["answer"]
    assert rows["Study size"]["answer"] == r["sample_size"]["sentence"]
    assert _clinical_rows(None) == []
