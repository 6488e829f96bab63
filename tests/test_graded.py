"""The graded assessment (decision rule, patient level, endpoints, calibration) and its report section."""

from __future__ import annotations

from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from medxcept.cohort.table import parse_endpoint
from medxcept.config import EvalConfig
from medxcept.evaluation.graded import assess_graded
from medxcept.evaluation.metrics import choose_threshold
from medxcept.evaluation.multiclass import DecisionRule, classwise_ece

CLASSES = ("none", "mild", "moderate")


def _frame(n_patients: int, seed: int, temperature: float = 2.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    keys = np.repeat([f"P-{seed}-{i:03d}" for i in range(n_patients)], 2)
    lat = np.tile(["L", "R"], n_patients)
    y = np.clip(np.repeat(rng.integers(0, 3, n_patients), 2) - rng.integers(0, 2, 2 * n_patients), 0, 2)
    z = rng.normal(0, 1, (2 * n_patients, 3)) + 2.0 * np.eye(3)[y]
    frame = pd.DataFrame({"patient_key": keys, "laterality": lat, "y": y})
    for name, scale in (("prob_raw_", 1.0), ("prob_", temperature)):
        e = np.exp(z / scale)
        P = e / e.sum(axis=1, keepdims=True)
        for i, c in enumerate(CLASSES):
            frame[f"{name}{c}"] = P[:, i]
    return frame


@pytest.fixture(scope="module")
def graded():
    val, test = _frame(30, 1), _frame(40, 2)
    endpoints = (parse_endpoint("referable", "grade >= moderate", CLASSES, "ordinal"),)
    out = assess_graded(val=val, test=test, classes=CLASSES, task="ordinal", endpoints=endpoints,
                        eval_cfg=EvalConfig(n_bootstrap=200), seed=0)
    return val, test, endpoints, out


def test_patient_level_metrics_are_the_worst_eye_by_hand(graded):
    _, test, _, out = graded
    rule = DecisionRule.from_dict(out["decision_rule"])
    assert out["decision_rule"]["chosen_on"].startswith("validation")
    P = test[[f"prob_{c}" for c in CLASSES]].to_numpy()
    frame = test.assign(pred=rule.predict(P))
    pat = frame.groupby("patient_key").agg(y=("y", "max"), pred=("pred", "max"))
    r = out["test_patient"]
    assert r["n"] == 40 and r["kappa_quadratic"]["point"] == pytest.approx(
        cohen_kappa_score(pat["y"], pat["pred"], weights="quadratic", labels=[0, 1, 2]))
    assert r["kappa_quadratic"]["low"] < r["kappa_quadratic"]["point"] < r["kappa_quadratic"]["high"]
    assert out["test_image"]["n"] == 80 and "test_eye" not in out  # one image per eye: eyes = images
    assert "worst" in out["patient_rule"]


def test_decision_rule_is_chosen_on_validation_patients(graded):
    """The ordinal rule is tuned on the validation patients (worst eye), the level the headline reads."""
    from medxcept.evaluation.class_units import aggregate_units
    from medxcept.evaluation.multiclass import choose_decision_rule

    val, _, _, out = graded
    units = aggregate_units(val["patient_key"].to_numpy(), val["y"].to_numpy(),
                            val[[f"prob_{c}" for c in CLASSES]].to_numpy(), kind="ordinal",
                            laterality=val["laterality"].to_numpy())
    want = choose_decision_rule(units.y, units.P, kind="ordinal").thresholds
    assert out["decision_rule"]["thresholds"] == pytest.approx(list(want), abs=1e-12)
    # chosen on the images instead, the first threshold is another one (issue 30: 0.603 against 0.738)
    image = choose_decision_rule(val["y"].to_numpy(), val[[f"prob_{c}" for c in CLASSES]].to_numpy(), kind="ordinal")
    assert out["decision_rule"]["thresholds"][0] == pytest.approx(0.738, abs=1e-3)
    assert image.thresholds[0] == pytest.approx(0.603, abs=1e-3)


def test_graded_aucs_rank_the_uncalibrated_probabilities(graded):
    """Per-class, macro and endpoint AUCs come from ``prob_raw_*``; temperature scaling of the
    calibrated ``prob_*`` (here 2.0) changes one-vs-rest rankings."""
    from sklearn.metrics import roc_auc_score as auc

    _, test, _, out = graded
    y = test["y"].to_numpy()
    raw = test[[f"prob_raw_{c}" for c in CLASSES]].to_numpy()
    cal = test[[f"prob_{c}" for c in CLASSES]].to_numpy()
    per_class = [auc(y == i, raw[:, i]) for i in range(3)]
    assert out["test_image"]["macro_roc_auc"]["point"] == pytest.approx(np.mean(per_class), abs=1e-12)
    for i, c in enumerate(CLASSES):
        assert out["test_image"]["per_class"][c]["roc_auc"]["point"] == pytest.approx(per_class[i], abs=1e-12)
    assert np.mean([auc(y == i, cal[:, i]) for i in range(3)]) != pytest.approx(np.mean(per_class), abs=1e-6)


def test_endpoint_gets_the_binary_report_consistent_with_the_worst_eye(graded):
    val, test, _, out = graded
    e = out["endpoints"]["referable"]
    assert e["positive_classes"] == ["moderate"] and e["patient_aggregation"] == "max"
    # the threshold is chosen on the validation patients' worst-eye scores, the kind of score it
    # is applied to (issue 30)
    vpat = val.assign(pos=(val["y"] == 2).astype(int)).groupby("patient_key").agg(
        pos=("pos", "max"), p=("prob_moderate", "max"))
    t = choose_threshold(vpat["pos"], vpat["p"])
    assert e["threshold"]["value"] == pytest.approx(t)
    assert e["threshold"]["level"] == "patient" and e["threshold"]["n_validation_units"] == 30
    pat = test.assign(pos=(test["y"] == 2).astype(int)).groupby("patient_key").agg(
        pos=("pos", "max"), p=("prob_moderate", "max"), raw=("prob_raw_moderate", "max"))
    # the AUC ranks the uncalibrated probabilities; sensitivity / specificity apply t to the calibrated
    assert e["test_patient"]["roc_auc"] == pytest.approx(roc_auc_score(pat["pos"], pat["raw"]))
    pos, called = pat["pos"].to_numpy() == 1, pat["p"].to_numpy() >= t
    assert e["test_patient"]["sensitivity"] == pytest.approx(called[pos].mean())
    assert e["test_patient"]["specificity"] == pytest.approx((~called[~pos]).mean())
    assert e["test_patient"]["n"] == 40
    ci = e["test_patient_ci"]["sensitivity"]
    assert ci["low"] <= e["test_patient"]["sensitivity"] <= ci["high"]
    assert set(e["calibration_test"]) == {"before", "after"}


def test_classwise_calibration_before_and_after(graded):
    _, test, _, out = graded
    y = test["y"].to_numpy()
    for key, prefix in (("before", "prob_raw_"), ("after", "prob_")):
        P = test[[f"{prefix}{c}" for c in CLASSES]].to_numpy()
        assert out["calibration_test"][key]["classwise_ece"] == pytest.approx(classwise_ece(y, P)["mean"])
    assert set(out["calibration_test"]["after"]["reliability_per_class"]) == set(CLASSES)


def test_fixed_rule_and_thresholds_reproduce_the_test_numbers(graded):
    _, test, endpoints, out = graded
    fixed = {"decision_rule": out["decision_rule"],
             "endpoint_thresholds": {"referable": out["endpoints"]["referable"]["threshold"]["value"]}}
    again = assess_graded(val=None, test=test, classes=CLASSES, task="ordinal", endpoints=endpoints,
                          eval_cfg=EvalConfig(n_bootstrap=200), seed=0, fixed=fixed)
    assert again["test_patient"]["kappa_quadratic"] == out["test_patient"]["kappa_quadratic"]
    assert again["endpoints"]["referable"]["test_patient"] == out["endpoints"]["referable"]["test_patient"]


def test_report_section_renders_kappa_aucs_with_cis_endpoint_and_calibration(graded):
    from medxcept.report import _ci, _performance_answer, fmt

    *_, out = graded
    templates = Path(__file__).resolve().parent.parent / "medxcept" / "report" / "templates"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"], env.filters["ci"] = fmt, _ci
    figs = {"graded_confusion_test_patient": None, "graded_confusion_test_image": None,
            "graded_reliability_classwise": None, "endpoint_roc_referable": None}
    html = env.get_template("graded.html.j2").render(
        m={"graded": out, "calibration_method": "temperature", "calibrator": {"temperature": 2.0, "note": None}},
        figs=figs, ci_metrics=["roc_auc", "sensitivity", "specificity"])
    kappa = out["test_patient"]["kappa_quadratic"]
    assert "kappa_quadratic" in html and _ci(kappa) in html
    auc = out["test_patient"]["per_class"]["mild"]["roc_auc"]
    assert _ci(auc) in html
    assert "Derived endpoint: referable" in html and _ci(out["endpoints"]["referable"]["test_patient_ci"]["roc_auc"]) in html
    assert fmt(out["calibration_test"]["after"]["classwise_ece"]) in html
    assert "200 resamples" in _performance_answer({"graded": out})
    zero = {**out, "n_bootstrap": 0}
    assert "no confidence intervals" in _performance_answer({"graded": zero})
    assert "(0 resamples)" not in _performance_answer({"n_bootstrap": 0})


def test_pooled_out_of_fold_report_uses_each_folds_rule_and_threshold():
    from medxcept.evaluation.graded import fold_predictions, pooled_report

    endpoints = (parse_endpoint("referable", "grade >= moderate", CLASSES, "ordinal"),)
    cfg = EvalConfig(n_bootstrap=100)
    frames = []
    for fold in range(2):
        val, test = _frame(25, 10 + fold, temperature=1.0 + fold), _frame(20, 20 + fold)
        g = assess_graded(val=val, test=test, classes=CLASSES, task="ordinal", endpoints=endpoints, eval_cfg=cfg,
                          seed=0)
        frames.append(fold_predictions(test, g, repeat=0, fold=fold))
    pooled = pooled_report(frames, classes=CLASSES, task="ordinal", endpoints=endpoints, eval_cfg=cfg, seed=0)
    df = pd.concat(frames)
    pat = df.groupby("patient_key").agg(y=("y", "max"), pred=("pred", "max"))
    r = pooled["test_patient"]
    assert r["n"] == 40 and r["kappa_quadratic"]["point"] == pytest.approx(
        cohen_kappa_score(pat["y"], pat["pred"], weights="quadratic", labels=[0, 1, 2]))
    assert r["kappa_quadratic"]["low"] is not None and r["per_class"]["mild"]["roc_auc"]["high"] is not None
    e = pooled["endpoints"]["referable"]
    unit = df.assign(pos=(df["y"] == 2).astype(int)).groupby("patient_key").agg(
        pos=("pos", "max"), p=("prob_moderate", "max"), t=("threshold_referable", "first"))
    hit = unit["p"] >= unit["t"]
    assert e["test_patient"]["sensitivity"] == pytest.approx(hit[unit["pos"] == 1].mean())
    assert e["test_patient"]["specificity"] == pytest.approx(1 - hit[unit["pos"] == 0].mean())
    assert e["test_patient"]["roc_auc"] == pytest.approx(roc_auc_score(unit["pos"], unit["p"]))
    assert e["test_patient_ci"]["sensitivity"]["low"] is not None


def test_cv_graded_section_renders_pooled_kappa_and_endpoint():
    from medxcept.evaluation.graded import fold_predictions, fold_row, pooled_report
    from medxcept.report import _ci, fmt

    endpoints = (parse_endpoint("referable", "grade >= moderate", CLASSES, "ordinal"),)
    cfg = EvalConfig(n_bootstrap=50)
    frames, rows = [], []
    for fold in range(2):
        g = assess_graded(val=_frame(20, 30 + fold), test=_frame(15, 40 + fold), classes=CLASSES, task="ordinal",
                          endpoints=endpoints, eval_cfg=cfg, seed=0)
        frames.append(fold_predictions(_frame(15, 40 + fold), g, repeat=0, fold=fold))
        counts = {"train": {"patients": 40 + fold, "images": 80}, "inner_val": {"patients": 10, "images": 21},
                  "held_out": {"patients": 15, "images": 30}}
        rows.append({"name": f"fold-{fold}", "n_patients": 15, "best_epoch": 1, "counts": counts, **fold_row(g)})
    pooled = pooled_report(frames, classes=CLASSES, task="ordinal", endpoints=endpoints, eval_cfg=cfg, seed=0)
    columns = [k for k in rows[0] if k not in ("name", "n_patients", "best_epoch", "counts")]
    summary = {k: {"mean": float(np.mean([r[k] for r in rows])), "sd": None, "low": None, "high": None}
               for k in columns}
    templates = Path(__file__).resolve().parent.parent / "medxcept" / "report" / "templates"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"], env.filters["ci"] = fmt, _ci
    html = env.get_template("cv_graded.html.j2").render(
        r={"graded": {"pooled": pooled, "per_fold": rows, "columns": columns, "summary": summary, "holdout": None},
           "notes": [], "method": {"calibration": "temperature", "inner_validation_sentence": "Fold i trained",
                                   "threshold_and_calibration_fitted_on": "each fold's inner validation split"}},
        figs={}, ci_metrics=["roc_auc", "sensitivity"])
    assert _ci(pooled["test_patient"]["kappa_quadratic"]) in html
    assert "Derived endpoint: referable" in html and "each fold&#39;s own decision rule" in html
    assert 'id="cv-graded-table"' in html and "roc_auc_mild" in html
    # each fold's sizes: trained / inner validation / held out, patients (images)
    assert '<td class="num" data-count="train">41 (80)</td>' in html
    assert '<td class="num" data-count="inner_val">10 (21)</td>' in html
    assert 'chosen on each fold&#39;s inner validation split' in html


def test_compare_graded_runs_pairs_patients_with_each_runs_rule(tmp_path):
    import json

    from medxcept.evaluation.class_units import aggregate_units
    from medxcept.evaluation.graded import compare_graded_runs
    from medxcept.evaluation.multiclass import paired_comparison

    endpoints = (parse_endpoint("referable", "grade >= moderate", CLASSES, "ordinal"),)
    cfg = EvalConfig(n_bootstrap=50)
    dirs = []
    for i, temperature in enumerate((1.0, 4.0)):
        t = _frame(30, 50, temperature=temperature)  # same cases, another model's probabilities
        if i:  # another, worse model: its raw and calibrated probabilities
            for prefix in ("prob_", "prob_raw_"):
                t[[f"{prefix}{c}" for c in CLASSES]] = t[[f"{prefix}{c}" for c in CLASSES]].to_numpy()[::-1]
        g = assess_graded(val=_frame(20, 60), test=t, classes=CLASSES, task="ordinal", endpoints=endpoints,
                          eval_cfg=cfg, seed=0)
        d = tmp_path / f"run{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"run": {"id": f"run{i}", "recipe": "default"}, "graded": g}))
        (d / "calibration.json").write_text(json.dumps({"decision_rule": g["decision_rule"]}))
        t.assign(image_id=[f"I-{k:03d}" for k in range(len(t))]).to_csv(d / "predictions.csv", index=False)
        dirs.append(d)
    out = compare_graded_runs(dirs, n_resamples=100, seed=0)
    pair = out["pairs"][0]
    assert out["runs"][0]["kappa_quadratic"]["point"] is not None and out["n_patients"] == 30
    # the same numbers by hand: patients by the worst-eye rule, each run's own decision rule
    frames = [pd.read_csv(d / "predictions.csv", dtype={"patient_key": str}).sort_values("image_id") for d in dirs]
    units = [aggregate_units(f["patient_key"].to_numpy(), f["y"].to_numpy(),
                             f[[f"prob_{c}" for c in CLASSES]].to_numpy(), kind="ordinal") for f in frames]
    raw = [aggregate_units(f["patient_key"].to_numpy(), f["y"].to_numpy(),
                           f[[f"prob_raw_{c}" for c in CLASSES]].to_numpy(), kind="ordinal") for f in frames]
    rules = [DecisionRule.from_dict(json.loads((d / "calibration.json").read_text())["decision_rule"]) for d in dirs]
    # AUCs rank the uncalibrated probabilities; predictions apply each run's rule to the calibrated
    want = paired_comparison(raw[0].y, raw[0].P, raw[1].P, raw[0].patients, kind="ordinal",
                             pred1=rules[0].predict(units[0].P), pred2=rules[1].predict(units[1].P),
                             n_resamples=100, seed=0)
    assert pair["kappa_quadratic"] == want["kappa_quadratic"] and pair["macro_roc_auc"] == want["macro_roc_auc"]
    assert pair["macro_roc_auc"]["diff"] > 0  # the reversed probabilities are worse
    assert "referable_roc_auc" in pair
    with pytest.raises(Exception, match="not a graded"):
        (tmp_path / "bin").mkdir()
        for f in ("metrics.json", "predictions.csv", "calibration.json"):
            (tmp_path / "bin" / f).write_text("{}" if f.endswith("json") else "a\n1\n")
        compare_graded_runs([dirs[0], tmp_path / "bin"])


def test_assess_steps_record_and_reapply_the_rule_and_thresholds():
    """A run's calibration.json holds the rule and endpoint thresholds; external validation reapplies them."""
    from medxcept.config import RunConfig
    from medxcept.evaluation.assess import assess, assess_frozen

    rng = np.random.default_rng(9)
    endpoints = (parse_endpoint("referable", "grade >= moderate", CLASSES, "ordinal"),)
    cfg = RunConfig(eval=EvalConfig(n_bootstrap=50))

    def rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
        f = _frame(n, seed)[["patient_key", "laterality", "y"]]
        return f, rng.normal(0, 1, (len(f), 3)) + 2.0 * np.eye(3)[f["y"].to_numpy()]

    (val, zv), (test, zt) = rows(25, 70), rows(25, 71)
    a = assess(val=val, test=test, val_logits=zv, test_logits=zt, cfg=cfg, classes=CLASSES, task="ordinal",
               endpoints=endpoints)
    record = a.calibration_record
    assert record["decision_rule"] == a.metrics["graded"]["decision_rule"]
    assert record["endpoint_thresholds"]["referable"] == a.metrics["graded"]["endpoints"]["referable"]["threshold"][
        "value"]
    b = assess_frozen(test, zt, calibrator=a.calibrator, threshold=None, cfg=cfg, classes=CLASSES, task="ordinal",
                      endpoints=endpoints, graded=record)
    assert b.metrics["graded"]["test_patient"]["kappa_quadratic"] == a.metrics["graded"]["test_patient"][
        "kappa_quadratic"]
    assert b.metrics["graded"]["endpoints"]["referable"]["threshold"]["method"] == "fixed"


def test_graded_evaluation_honours_the_visit_unit():
    """``eval.unit = visit``: patients with two visits give two units each; the bootstrap still
    resamples patients, and the endpoint's threshold is chosen on validation visits."""
    from medxcept.evaluation.units import unit_keys

    val, test = _frame(30, 1), _frame(40, 2)
    for f in (val, test):  # patients with an even index came twice: their right eye is a second visit
        second = (f["laterality"] == "R") & (f["patient_key"].str[-1].astype(int) % 2 == 0)
        f["study_id"] = np.where(second, "S2", "S1")
    endpoints = (parse_endpoint("referable", "grade >= moderate", CLASSES, "ordinal"),)
    out = assess_graded(val=val, test=test, classes=CLASSES, task="ordinal", endpoints=endpoints,
                        eval_cfg=EvalConfig(n_bootstrap=50, unit="visit"), seed=0)
    n_units = len(set(unit_keys(test["patient_key"], test["study_id"])))
    assert out["evaluation_unit"] == "visit" and n_units > 40
    assert out["test_patient"]["n"] == n_units and out["test_patient"]["n_patients"] == 40
    e = out["endpoints"]["referable"]
    assert e["test_patient"]["n"] == n_units and e["threshold"]["level"] == "visit"
    vk = unit_keys(val["patient_key"], val["study_id"])
    vpat = val.assign(u=vk, pos=(val["y"] == 2).astype(int)).groupby("u").agg(pos=("pos", "max"),
                                                                              p=("prob_moderate", "max"))
    assert e["threshold"]["value"] == pytest.approx(choose_threshold(vpat["pos"], vpat["p"]))
    assert e["threshold"]["n_validation_units"] == len(vpat)
