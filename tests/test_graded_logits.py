"""k-class ranking metrics rank the logits: per-class, macro and endpoint AUCs of confident predictions
(class gaps of 40 logits and more, where float64 softmax probabilities are exactly 1 and tie) equal a
hand computation on the one-vs-rest log-odds; aggregated units rank the log-odds of their aggregated
distribution."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medxcept.cohort.table import parse_endpoint
from medxcept.config import EvalConfig
from medxcept.evaluation.class_units import aggregate_units, log_softmax
from medxcept.evaluation.graded import assess_graded

CLASSES = ("none", "mild", "moderate")
ENDPOINTS = (parse_endpoint("referable", "grade >= moderate", CLASSES, "ordinal"),)


def _confident() -> tuple[np.ndarray, np.ndarray]:
    """Twelve images, one per patient: six sure of 'none', six sure of 'moderate', by 40 to 61 logits;
    the surest half is right, the rest are truly 'mild'."""
    z, y = [], []
    for gap in (40, 44, 48, 52, 56, 60):
        z.append([float(gap), 0.0, 0.0])
        y.append(0 if gap >= 52 else 1)
    for gap in (41, 45, 49, 53, 57, 61):
        z.append([0.0, 0.0, float(gap)])
        y.append(2 if gap >= 53 else 1)
    return np.array(z), np.array(y)


def _frame(z: np.ndarray, y: np.ndarray, *, logits: bool) -> pd.DataFrame:
    P = np.exp(log_softmax(z))
    frame = pd.DataFrame({"patient_key": [f"P{i:02d}" for i in range(len(y))], "laterality": "L", "y": y})
    for i, c in enumerate(CLASSES):
        if logits:
            frame[f"logit_{c}"] = z[:, i]
        frame[f"prob_raw_{c}"] = P[:, i]
        frame[f"prob_{c}"] = P[:, i]
    return frame


def _log_odds_by_hand(z: np.ndarray, positive: list[int]) -> list[float]:
    """log P(set) - log P(rest) = log sum_{j in set} e^{z_j} - log sum_{j not in set} e^{z_j}, in plain floats."""
    return [math.log(sum(math.exp(v) for j, v in enumerate(row) if j in positive))
            - math.log(sum(math.exp(v) for j, v in enumerate(row) if j not in positive)) for row in z.tolist()]


def _auc_by_hand(pos: np.ndarray, s: list[float]) -> float:
    """Mann-Whitney: the share of (positive, negative) pairs ordered right, ties counted half."""
    p = [v for v, t in zip(s, pos, strict=True) if t]
    n = [v for v, t in zip(s, pos, strict=True) if not t]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in p for b in n) / (len(p) * len(n))


def test_class_aucs_rank_the_logits_where_probabilities_tie():
    z, y = _confident()
    assert np.exp(log_softmax(z)).max(axis=1).tolist() == [1.0] * 12  # every image's top probability is 1.0
    cfg = EvalConfig(n_bootstrap=0)
    new = assess_graded(val=_frame(z, y, logits=True), test=_frame(z, y, logits=True), classes=CLASSES,
                        task="ordinal", endpoints=ENDPOINTS, eval_cfg=cfg, seed=0)
    old = assess_graded(val=_frame(z, y, logits=False), test=_frame(z, y, logits=False), classes=CLASSES,
                        task="ordinal", endpoints=ENDPOINTS, eval_cfg=cfg, seed=0)
    hand = {c: _auc_by_hand(y == i, _log_odds_by_hand(z, [i])) for i, c in enumerate(CLASSES)}
    assert hand == {"none": 1.0, "mild": 1.0, "moderate": 1.0}
    for level in ("test_image", "test_patient"):  # one image per patient: the patient ranks its image's log-odds
        for c in CLASSES:
            assert new[level]["per_class"][c]["roc_auc"]["point"] == pytest.approx(hand[c], abs=1e-12), (level, c)
        assert new[level]["macro_roc_auc"]["point"] == pytest.approx(np.mean(list(hand.values())), abs=1e-12)
    # the probability path tied the confident images: 3 right and 3 wrong 'none' all at P = 1.0
    tied = (3 * 6 + 0.5 * 3 * 3) / (3 * 9)
    assert old["test_image"]["per_class"]["none"]["roc_auc"]["point"] == pytest.approx(tied)
    assert old["test_image"]["per_class"]["moderate"]["roc_auc"]["point"] == pytest.approx(tied)
    # the endpoint (grade >= moderate) ranks its own log-odds, at the image and the (worst-eye) patient level
    e_hand = _auc_by_hand(y == 2, _log_odds_by_hand(z, [2]))
    for level in ("test_image", "test_patient"):
        assert new["endpoints"]["referable"][level]["roc_auc"] == pytest.approx(e_hand, abs=1e-12)
    assert old["endpoints"]["referable"]["test_image"]["roc_auc"] == pytest.approx(tied)
    # the endpoint's ROC figure draws the scores its stated image-level AUC ranks
    from sklearn.metrics import roc_auc_score

    from medxcept.evaluation.graded import endpoint_scores

    s = endpoint_scores(new, _frame(z, y, logits=True))["referable"]
    assert roc_auc_score(s["y"], s["raw"]) == pytest.approx(new["endpoints"]["referable"]["test_image"]["roc_auc"])
    # the endpoint's clinical reading sizes the test set for the stated AUC (1.0, clipped to 0.99), not the tied one
    assert new["endpoints"]["referable"]["clinical"]["sample_size"]["auc_assumed"] == pytest.approx(0.99)
    assert new["discrimination_from"].startswith("uncalibrated logits")


def test_unit_log_odds_are_those_of_the_aggregated_distribution():
    """Two eyes per patient: the units' log-odds from the logits rank exactly as the aggregated
    probabilities (worst eye for ordinal tasks, mean for nominal ones) where those do not saturate,
    and stay apart where they do."""
    rng = np.random.default_rng(3)
    keys = np.repeat([f"P{i}" for i in range(40)], 2)
    lat = np.tile(["L", "R"], 40)
    z = rng.normal(0, 2, (80, 4))
    for kind, y in (("ordinal", rng.integers(0, 4, 80)), ("nominal", np.repeat(rng.integers(0, 4, 40), 2))):
        prob = aggregate_units(keys, y, np.exp(log_softmax(z)), kind=kind, laterality=lat)
        odds = aggregate_units(keys, y, z, kind=kind, laterality=lat, scale="logit")
        assert (prob.keys == odds.keys).all() and (prob.y == odds.y).all()
        np.testing.assert_allclose(odds.P, np.log(prob.P) - np.log1p(-prob.P), atol=1e-9)
    # a worst eye ahead by 45 and one ahead by 55 logits: probability 1.0 for both, log-odds 10 apart
    sure = np.array([[0.0, 0.0, 45.0], [0.0, 0.0, 0.0], [0.0, 0.0, 55.0], [0.0, 0.0, 0.0]])
    odds = aggregate_units(["A", "A", "B", "B"], [2, 0, 2, 0], sure, kind="ordinal", scale="logit")
    prob = aggregate_units(["A", "A", "B", "B"], [2, 0, 2, 0], np.exp(log_softmax(sure)), kind="ordinal")
    assert prob.P[0, 2] == prob.P[1, 2] == 1.0
    assert odds.P[1, 2] - odds.P[0, 2] == pytest.approx(10.0, abs=1e-9)


def test_compare_ranks_the_same_log_odds_as_each_runs_report(tmp_path):
    """``pipelines.compare`` of graded runs: each run's macro AUC and endpoint AUC in the paired comparison
    are the ones its own report states (both rank the logits), not the tied probabilities'."""
    import json

    from medxcept.evaluation.graded import compare_graded_runs

    z, y = _confident()
    dirs, reports = [], []
    for i in range(2):
        zi = z if i == 0 else z[:, ::-1]  # a second, wrong model
        t = _frame(zi, y, logits=True)
        g = assess_graded(val=t, test=t, classes=CLASSES, task="ordinal", endpoints=ENDPOINTS,
                          eval_cfg=EvalConfig(n_bootstrap=0), seed=0)
        d = tmp_path / f"run{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"run": {"id": f"run{i}"}, "graded": g}))
        (d / "calibration.json").write_text(json.dumps({"decision_rule": g["decision_rule"]}))
        t.assign(image_id=[f"I-{k:03d}" for k in range(len(t))]).to_csv(d / "predictions.csv", index=False)
        dirs.append(d)
        reports.append(g)
    pair = compare_graded_runs(dirs, n_resamples=50, seed=0)["pairs"][0]
    assert pair["macro_roc_auc"]["model1"] == pytest.approx(reports[0]["test_patient"]["macro_roc_auc"]["point"])
    assert pair["macro_roc_auc"]["model2"] == pytest.approx(reports[1]["test_patient"]["macro_roc_auc"]["point"])
    assert pair["macro_roc_auc"]["model1"] == pytest.approx(1.0)
    assert pair["referable_roc_auc"]["auc1"] == pytest.approx(reports[0]["endpoints"]["referable"]["test_patient"]["roc_auc"])


def test_assessment_tables_hold_the_logits_and_every_auc_ranks_them():
    """Through the assessment stage: the prediction table carries ``logit_<class>`` and both the graded
    section and the plain k-class summary rank them (the calibrated probabilities tie)."""
    from medxcept.config import RunConfig
    from medxcept.evaluation.assess import assess

    z, y = _confident()
    frame = pd.DataFrame({"patient_key": [f"P{i:02d}" for i in range(len(y))], "laterality": "L", "y": y})
    a = assess(val=frame, test=frame, val_logits=z, test_logits=z, cfg=RunConfig(eval=EvalConfig(n_bootstrap=0)),
               classes=CLASSES, task="ordinal", endpoints=ENDPOINTS)
    table = a.predictions(CLASSES, "max")
    np.testing.assert_array_equal(table[[f"logit_{c}" for c in CLASSES]].to_numpy(), z)
    hand = _auc_by_hand(y == 0, _log_odds_by_hand(z, [0]))
    assert a.metrics["test_image"]["per_class"]["none"]["roc_auc"] == pytest.approx(hand, abs=1e-12)
    assert a.metrics["graded"]["test_patient"]["per_class"]["none"]["roc_auc"]["point"] == pytest.approx(hand)
