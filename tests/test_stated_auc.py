"""The AUC a figure draws or a sentence reuses is the stated one: the pooled k-fold ROC curve is drawn
from the scores the pooled ROC-AUC ranks (each fold's logits, not its calibrated probabilities), and the
clinical reading's sample-size AUC is the headline's (logits), not one of saturated probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import auc, roc_auc_score, roc_curve

from medxcept.config import EvalConfig, load_config
from medxcept.evaluation import kfold
from medxcept.evaluation.assess import assess


def _folds(seed: int = 0) -> list[pd.DataFrame]:
    """Two folds of 20 patients (two images each) with logits from 30 to 70, where float64 probabilities
    are 1.0; fold 1's calibrator shifts its units, so calibrated probabilities rank differently."""
    rng = np.random.default_rng(seed)
    frames = []
    for fold in range(2):
        keys = np.repeat([f"P-{fold}{i:02d}" for i in range(20)], 2)
        y = np.repeat(np.arange(20) % 2, 2)
        z = np.clip(45.0 + 6.0 * y + rng.normal(0, 6, len(y)), 30.0, 70.0)
        prob = 1 / (1 + np.exp(-(z - 45.0 - 20.0 * fold) / 3.0))
        frames.append(pd.DataFrame({"repeat": 0, "fold": fold, "patient_key": keys, "y": y, "logit": z,
                                    "prob_raw": 1 / (1 + np.exp(-z)), "prob": prob, "threshold": 0.5}))
    return frames


def test_pooled_roc_figure_draws_the_scores_the_pooled_auc_ranks():
    frames = _folds()
    m, rel = kfold.pooled_oof_metrics(frames, "max", 10)
    fpr, tpr, _ = roc_curve(rel["y"], rel["score"])  # what cv.py's roc_pr_figure draws
    assert auc(fpr, tpr) == pytest.approx(m["roc_auc"], abs=1e-12)
    pat = pd.concat(frames).groupby("patient_key").agg(y=("y", "max"), z=("logit", "max"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(pat["y"], pat["z"]), abs=1e-12)
    # the calibrated probabilities the figure drew before give another curve, with another AUC
    fpr_c, tpr_c, _ = roc_curve(rel["y"], rel["prob"])
    assert auc(fpr_c, tpr_c) == pytest.approx(m["roc_auc_calibrated"], abs=1e-12)
    assert abs(m["roc_auc_calibrated"] - m["roc_auc"]) > 0.01
    assert rel["ranked_on"].startswith("uncalibrated logits")
    # the pooled clinical reading's sample-size AUC is the stated pooled AUC too
    clinical = kfold.pooled_clinical(frames, [None, None], EvalConfig(n_bootstrap=0))
    assert clinical["sample_size"]["auc_assumed"] == pytest.approx(m["roc_auc"], abs=1e-12)
    _, _, pr = kfold.aggregate_by_patient(kfold._pooled_units(pd.concat(frames)), pd.concat(frames)["y"],
                                          pd.concat(frames)["prob_raw"], how="max")
    assert roc_auc_score(rel["y"], pr) < m["roc_auc"] - 0.01  # the saturated probabilities' AUC, used before


def test_sample_size_auc_is_the_headline_auc_of_the_logits():
    rng = np.random.default_rng(5)

    def part(n: int, prefix: str) -> tuple[pd.DataFrame, np.ndarray]:
        y = np.repeat(np.arange(n) % 2, 2)
        frame = pd.DataFrame({"patient_key": np.repeat([f"{prefix}{i:03d}" for i in range(n)], 2), "y": y})
        return frame, np.clip(45.0 + 6.0 * y + rng.normal(0, 6, len(y)), 30.0, 70.0)

    (val, vz), (test, tz) = part(30, "v"), part(40, "t")
    a = assess(val=val, test=test, val_logits=vz, test_logits=tz,
               cfg=load_config(overrides={"eval.n_bootstrap": 0}), classes=("neg", "pos"))
    m = a.metrics
    pat = pd.DataFrame({"k": test["patient_key"], "y": test["y"], "z": tz}).groupby("k").max()
    stated = m["test_patient"]["roc_auc"]
    assert stated == pytest.approx(roc_auc_score(pat["y"], pat["z"]), abs=1e-12) and 0.6 < stated < 0.99
    assert m["clinical"]["sample_size"]["auc_assumed"] == pytest.approx(stated, abs=1e-12)
    raw = pd.DataFrame({"k": test["patient_key"], "y": test["y"], "p": 1 / (1 + np.exp(-tz))}).groupby("k").max()
    assert roc_auc_score(raw["y"], raw["p"]) < stated - 0.01  # float64 probabilities tie above about 37


def test_report_roc_curve_draws_the_scores_the_headline_auc_ranks(tmp_path, session_cache, monkeypatch):
    """The run report's ROC / PR figure is drawn from each patient's logit (what the headline ROC-AUC ranks),
    with the operating point on the calibrated probabilities."""
    import medxcept.report
    from tests.test_report_escaping import build_escaping_report

    drawn = {}

    def capture(y, p, threshold, **kw):
        drawn.update(y=np.asarray(y), p=np.asarray(p), operating=kw.get("operating"))
        return None

    monkeypatch.setattr(medxcept.report, "roc_pr_figure", capture)
    _, info = build_escaping_report(tmp_path)
    m = info["metrics"]
    assert roc_auc_score(drawn["y"], drawn["p"]) == pytest.approx(m["test_patient"]["roc_auc"], abs=1e-12)
    assert auc(*roc_curve(drawn["y"], drawn["p"])[:2]) == pytest.approx(m["test_patient"]["roc_auc"], abs=1e-12)
    assert drawn["operating"] is not None and ((drawn["operating"] >= 0) & (drawn["operating"] <= 1)).all()
    assert drawn["p"].min() < 0 or drawn["p"].max() > 1  # logits, not probabilities
