"""The k-class metric registry (``medxcept.evaluation.class_metrics.CLASS_METRICS``): one entry reaches the
graded report, the k-fold per-fold rows and their summary, pooled out-of-fold metrics and the comparison
of runs, with the value a hand computation gives; the registered kappa and AUCs equal scikit-learn's."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from medxcept.cohort.table import parse_endpoint
from medxcept.config import EvalConfig
from medxcept.evaluation import class_metrics
from medxcept.evaluation.class_metrics import ClassMetric
from medxcept.evaluation.graded import (
    assess_graded,
    compare_graded_runs,
    fold_predictions,
    fold_row,
    pooled_report,
)
from medxcept.evaluation.kfold import graded_fold_summary, t_interval
from medxcept.evaluation.multiclass import DecisionRule

CLASSES = ("none", "mild", "moderate", "severe")
TEMPLATES = Path(__file__).resolve().parent.parent / "medxcept" / "report" / "templates"


def _frame(n_patients: int, seed: int, temperature: float = 2.0, flip: bool = False) -> pd.DataFrame:
    """Two eyes per patient, grades 0..3, logits that favour the true grade (reversed: ``flip``)."""
    rng = np.random.default_rng(seed)
    keys = np.repeat([f"P-{seed}-{i:03d}" for i in range(n_patients)], 2)
    y = np.clip(np.repeat(rng.integers(0, 4, n_patients), 2) - rng.integers(0, 2, 2 * n_patients), 0, 3)
    z = rng.normal(0, 1, (2 * n_patients, 4)) + 2.0 * np.eye(4)[y]
    if flip:
        z = z[:, ::-1]
    frame = pd.DataFrame({"patient_key": keys, "laterality": np.tile(["L", "R"], n_patients), "y": y})
    for prefix, scale in (("prob_raw_", 1.0), ("prob_", temperature)):
        e = np.exp(z / scale)
        P = e / e.sum(axis=1, keepdims=True)
        for i, c in enumerate(CLASSES):
            frame[f"{prefix}{c}"] = P[:, i]
    return frame


def _within_one(cm: np.ndarray) -> np.ndarray:
    """Share of cases predicted within one grade of the truth, of (B, k, k) confusion matrices."""
    i = np.arange(cm.shape[-1])
    near = (np.abs(i[:, None] - i[None, :]) <= 1).astype(np.float64)
    n = cm.sum(axis=(1, 2))
    return np.where(n > 0, np.einsum("bij,ij->b", cm, near) / np.maximum(n, 1), np.nan)


def _f1(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 of (B, k, k) confusion matrices: 2 TP / (cases + predictions) of each class."""
    diag, den = np.einsum("bii->bi", cm), cm.sum(axis=2) + cm.sum(axis=1)
    return np.where(den > 0, 2 * diag / np.maximum(den, 1), np.nan)


@pytest.fixture
def within_one(monkeypatch):
    """Register two toy metrics for the test's duration, one entry each, nothing else changed: a summary
    metric (accuracy within one grade) and a per-class one (F1 of each class)."""
    entry = ClassMetric("within_one", "accuracy within one grade", "confusion", _within_one, tasks=("ordinal",),
                        card=True, compare=True, paired=True)
    f1 = ClassMetric("f1", "F1", "per_class", _f1, compare=True)
    monkeypatch.setattr(class_metrics, "CLASS_METRICS", (*class_metrics.CLASS_METRICS, entry, f1))
    return entry


def _f1_by_hand(y: pd.Series, pred: pd.Series) -> dict[str, float | None]:
    out = {}
    for i, c in enumerate(CLASSES):
        tp, n_true, n_pred = int(((y == i) & (pred == i)).sum()), int((y == i).sum()), int((pred == i).sum())
        out[c] = None if n_true + n_pred == 0 else 2 * tp / (n_true + n_pred)
    return out


def _env() -> jinja2.Environment:
    from medxcept.report import _ci, fmt

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"], env.filters["ci"] = fmt, _ci
    return env


def _by_hand(test: pd.DataFrame, rule: DecisionRule) -> pd.DataFrame:
    """Worst-eye patients: the highest grade and the highest predicted grade over the patient's eyes."""
    P = test[[f"prob_{c}" for c in CLASSES]].to_numpy()
    return test.assign(pred=rule.predict(P)).groupby("patient_key").agg(y=("y", "max"), pred=("pred", "max"))


ENDPOINTS = (parse_endpoint("referable", "grade >= moderate", CLASSES, "ordinal"),)


def test_a_registered_k_class_metric_reaches_every_report(within_one, tmp_path):
    from medxcept.report import fmt

    cfg = EvalConfig(n_bootstrap=60)
    # 1. the graded report (a single run): patient and image level, with a CI, and its table row
    val, test = _frame(30, 1), _frame(40, 2)
    g = assess_graded(val=val, test=test, classes=CLASSES, task="ordinal", endpoints=ENDPOINTS, eval_cfg=cfg, seed=0)
    rule = DecisionRule.from_dict(g["decision_rule"])
    pat = _by_hand(test, rule)
    want = float((np.abs(pat["y"] - pat["pred"]) <= 1).mean())
    assert g["test_patient"]["within_one"]["point"] == pytest.approx(want)
    assert g["test_patient"]["within_one"]["low"] is not None
    img_pred = rule.predict(test[[f"prob_{c}" for c in CLASSES]].to_numpy())
    assert g["test_image"]["within_one"]["point"] == pytest.approx(np.mean(np.abs(test["y"] - img_pred) <= 1))
    assert want < 1.0 and g["test_patient"]["accuracy"]["point"] < want  # the toy metric differs from accuracy
    figs = {"graded_confusion_test_patient": None, "graded_confusion_test_image": None,
            "graded_reliability_classwise": None, "endpoint_roc_referable": None}
    html = _env().get_template("graded.html.j2").render(
        m={"graded": g, "calibration_method": "temperature", "calibrator": {"temperature": 2.0, "note": None}},
        figs=figs, ci_metrics=["roc_auc", "sensitivity", "specificity"])
    assert f"<tr><td>within_one</td><td class=\"num\">{fmt(want)}</td>" in html
    f1 = _f1_by_hand(pat["y"], pat["pred"])
    for c in CLASSES:  # the per-class entry: a CI per class, and a column of the per-class table
        assert g["test_patient"]["per_class"][c]["f1"]["point"] == pytest.approx(f1[c])
    assert "<th>f1 (patients)</th>" in html and f'<td class="num">{fmt(f1["severe"])}</td></tr>' in html

    # 2. k-fold: the per-fold row, the across-fold summary, the pooled out-of-fold metric and its card
    frames, rows, hand = [], [], []
    for fold in range(2):
        v, t = _frame(25, 10 + fold), _frame(20, 20 + fold)
        gf = assess_graded(val=v, test=t, classes=CLASSES, task="ordinal", endpoints=ENDPOINTS, eval_cfg=cfg, seed=0)
        p = _by_hand(t, DecisionRule.from_dict(gf["decision_rule"]))
        hand.append(float((np.abs(p["y"] - p["pred"]) <= 1).mean()))
        rows.append({"name": f"fold-{fold}", "n_patients": 20, **fold_row(gf)})
        frames.append(fold_predictions(t, gf, repeat=0, fold=fold))
    assert [r["within_one"] for r in rows] == pytest.approx(hand)
    assert "f1_mild" in rows[0] and "recall_mild" not in rows[0]  # per-class columns where the entry says cv
    columns = [k for k in rows[0] if k not in ("name", "n_patients")]
    summary = graded_fold_summary(rows, columns, len(CLASSES))
    assert summary["within_one"]["mean"] == pytest.approx(np.mean(hand))
    assert summary["within_one"] == t_interval(hand, bounds=(0.0, 1.0))
    assert summary["mae_grade"] == t_interval([r["mae_grade"] for r in rows], bounds=(0.0, 3.0))
    pooled = pooled_report(frames, classes=CLASSES, task="ordinal", endpoints=ENDPOINTS, eval_cfg=cfg, seed=0)
    df = pd.concat(frames)
    pp = df.groupby("patient_key").agg(y=("y", "max"), pred=("pred", "max"))
    assert pooled["test_patient"]["within_one"]["point"] == pytest.approx(np.mean(np.abs(pp["y"] - pp["pred"]) <= 1))
    assert pooled["card_metrics"] == ["kappa_quadratic", "macro_roc_auc", "within_one"]
    counts = {s: {"patients": 20, "images": 40} for s in ("train", "inner_val", "held_out")}
    html = _env().get_template("cv_graded.html.j2").render(
        r={"graded": {"pooled": pooled, "per_fold": [{**r, "best_epoch": 1, "counts": counts} for r in rows],
                      "columns": columns, "summary": summary, "holdout": None},
           "notes": [], "method": {"calibration": "temperature", "inner_validation_sentence": "Fold i trained",
                                   "threshold_and_calibration_fitted_on": "each fold's inner validation split"}},
        figs={}, ci_metrics=["roc_auc", "sensitivity"])
    assert f'id="pooled-within_one">{fmt(pooled["test_patient"]["within_one"]["point"])}<' in html
    assert '<th>within_one</th>' in html and '<td class="num" data-metric="within_one">' in html

    # 3. comparing runs (pipelines.compare): each run's value, and the paired difference
    dirs = []
    for i in range(2):
        t = _frame(30, 50, temperature=1.0 + 3 * i, flip=bool(i))
        gr = assess_graded(val=_frame(20, 60), test=t, classes=CLASSES, task="ordinal", endpoints=ENDPOINTS,
                           eval_cfg=cfg, seed=0)
        d = tmp_path / f"run{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"run": {"id": f"run{i}", "recipe": "default"}, "graded": gr}))
        (d / "calibration.json").write_text(json.dumps({"decision_rule": gr["decision_rule"]}))
        t.assign(image_id=[f"I-{k:03d}" for k in range(len(t))]).to_csv(d / "predictions.csv", index=False)
        dirs.append((d, t, gr))
    out = compare_graded_runs([d for d, _, _ in dirs], n_resamples=80, seed=0)
    hand_runs = []
    for _, t, gr in dirs:
        p = _by_hand(t, DecisionRule.from_dict(gr["decision_rule"]))
        hand_runs.append(float((np.abs(p["y"] - p["pred"]) <= 1).mean()))
    assert [r["within_one"]["point"] for r in out["runs"]] == pytest.approx(hand_runs)
    pair = out["pairs"][0]["within_one"]
    assert pair["model1"] == pytest.approx(hand_runs[0]) and pair["model2"] == pytest.approx(hand_runs[1])
    assert pair["diff"] == pytest.approx(hand_runs[0] - hand_runs[1]) and pair["ci"] is not None
    assert "within_one" in out["metric_names"] and "f1_severe" in out["metric_names"]
    p0 = _by_hand(dirs[0][1], DecisionRule.from_dict(dirs[0][2]["decision_rule"]))
    assert out["runs"][0]["f1_severe"]["point"] == pytest.approx(_f1_by_hand(p0["y"], p0["pred"])["severe"])
    html = _env().get_template("comparison_graded.html.j2").render(c=out, title="t", created="now")
    assert "<th>within_one</th>" in html


def test_registered_kappa_and_aucs_equal_scikit_learn():
    """The registry's kappa, macro / weighted ROC-AUC and balanced accuracy are scikit-learn's, on the
    worst-eye patients (AUCs ranking the uncalibrated probabilities)."""
    from sklearn.metrics import balanced_accuracy_score

    from medxcept.evaluation.class_units import aggregate_units

    val, test = _frame(30, 3), _frame(50, 4)
    g = assess_graded(val=val, test=test, classes=CLASSES, task="ordinal", endpoints=ENDPOINTS,
                      eval_cfg=EvalConfig(n_bootstrap=0), seed=0)
    r = g["test_patient"]
    pat = _by_hand(test, DecisionRule.from_dict(g["decision_rule"]))
    assert r["kappa_quadratic"]["point"] == pytest.approx(
        cohen_kappa_score(pat["y"], pat["pred"], weights="quadratic", labels=[0, 1, 2, 3]), abs=1e-12)
    assert r["balanced_accuracy"]["point"] == pytest.approx(balanced_accuracy_score(pat["y"], pat["pred"]), abs=1e-12)
    units = aggregate_units(test["patient_key"].to_numpy(), test["y"].to_numpy(),
                            test[[f"prob_raw_{c}" for c in CLASSES]].to_numpy(), kind="ordinal")
    assert set(units.y) == {0, 1, 2, 3}
    P = units.P / units.P.sum(axis=1, keepdims=True)
    for average in ("macro", "weighted"):
        assert r[f"{average}_roc_auc"]["point"] == pytest.approx(
            roc_auc_score(units.y, P, multi_class="ovr", average=average), abs=1e-12)
    from sklearn.metrics import precision_score, recall_score

    rec = recall_score(pat["y"], pat["pred"], labels=[0, 1, 2, 3], average=None, zero_division=np.nan)
    prec = precision_score(pat["y"], pat["pred"], labels=[0, 1, 2, 3], average=None, zero_division=np.nan)
    for i, c in enumerate(CLASSES):  # per-class registry entries: the points they had as plain floats
        for got, want in ((r["per_class"][c]["recall"]["point"], rec[i]), (r["per_class"][c]["precision"]["point"], prec[i])):
            assert (got is None) if np.isnan(want) else got == pytest.approx(want, abs=1e-12)
    assert r["per_class_metric_names"] == ["recall", "precision"]
    assert r["metric_names"] == ["kappa_quadratic", "mae_grade", "macro_roc_auc", "weighted_roc_auc", "macro_pr_auc",
                                 "balanced_accuracy", "accuracy"]
    nominal = class_metrics.class_metric_names("nominal")
    assert "kappa_quadratic" not in nominal and "macro_roc_auc" in nominal
