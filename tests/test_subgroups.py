"""Subgroup rows (issue 17): patient level, patient-bootstrap CIs, AUC from the uncalibrated scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medxcept.evaluation.subgroups import subgroup_rows


@pytest.fixture(scope="module")
def test_frame():
    """40 patients, two eyes each, two sources; calibrated = a step function of the raw score (ties)."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(40):
        y = int(p % 2)
        for eye in "LR":
            raw = float(np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2), 0.01, 0.99))
            rows.append({"patient_key": f"p{p:02d}", "y": y, "laterality": eye, "source": "AB"[p % 4 // 2],
                         "prob_raw": raw, "prob": round(raw * 2) / 2, "sex": "", "age": 40 + p})
    return pd.DataFrame(rows)


def test_rows_are_patient_level_with_bootstrap_intervals(test_frame):
    rows = subgroup_rows(test_frame, 0.75, how="max", n_resamples=200, seed=0)
    assert {r["by"] for r in rows} == {"source", "laterality", "age band"}  # sex is empty: no rows
    src_a = next(r for r in rows if r["by"] == "source" and r["value"] == "A")
    g = test_frame[test_frame["source"] == "A"]
    pat = g.groupby("patient_key").agg(y=("y", "max"), raw=("prob_raw", "max"), cal=("prob", "max"))
    assert src_a["level"] == "patient" and src_a["patients"] == len(pat) == 20 and src_a["images"] == 40
    # AUC from the uncalibrated patient scores (the calibrated step function would tie most patients)
    assert src_a["roc_auc"] == pytest.approx(roc_auc_score(pat["y"], pat["raw"]))
    assert src_a["roc_auc"] != pytest.approx(roc_auc_score(pat["y"], pat["cal"]))
    assert src_a["sensitivity"] == pytest.approx(((pat["cal"] >= 0.75) & (pat["y"] == 1)).sum() / pat["y"].sum())
    for m in ("roc_auc", "sensitivity", "specificity"):
        low, high = src_a[f"{m}_ci"]
        assert low <= src_a[m] <= high
    for m in ("roc_auc", "sensitivity"):  # 20 patients: real intervals (specificity is 1 in every resample)
        assert src_a[f"{m}_ci"][1] - src_a[f"{m}_ci"][0] > 0.1
    # a subgroup without positive patients: sensitivity and AUC undefined, no interval invented
    young = next(r for r in rows if r["by"] == "age band" and r["value"] == "40-49")
    assert young["patients"] == 10
    one_class = test_frame.assign(y=0)
    row = subgroup_rows(one_class, 0.5, n_resamples=50)[0]
    assert row["roc_auc"] is None and row["roc_auc_ci"] is None and row["sensitivity_ci"] is None
    assert subgroup_rows(test_frame, None) == []
