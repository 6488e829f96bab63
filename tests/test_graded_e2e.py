"""A graded (ordinal) cohort end to end at tiny size: ordinal loss, worst-eye patients, endpoint, report."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from medxcept.cohort.table import load_cohort_spec
from medxcept.config import load_config
from medxcept.report import _ci
from medxcept.workflows.single import run_pipeline
from tests.conftest import graded_cohort

pytestmark = pytest.mark.slow

GRADED_COHORT = graded_cohort(train_extra=", ordinal_loss: coral")


@pytest.fixture(scope="module")
def graded_run(tmp_path_factory, session_cache):
    d = tmp_path_factory.mktemp("graded")
    cohort = d / "graded.yaml"
    cohort.write_text(GRADED_COHORT, encoding="utf-8")
    spec = load_cohort_spec(cohort)
    cfg = load_config(cohort_defaults=spec.defaults, overrides={"out_dir": str(d / "reports"), "cohort": str(cohort)})
    return run_pipeline(cfg, spec, run_name="graded").parent


def _classwise_ece(y, P, n_bins):
    """Mean over classes of the equal-width-bin ECE of P[:, c] against y == c (by hand)."""
    import numpy as np

    eces = []
    for c in range(P.shape[1]):
        p, hit = P[:, c], (y == c).astype(float)
        b = np.minimum((p * n_bins).astype(int), n_bins - 1)
        eces.append(sum(abs(p[b == k].mean() - hit[b == k].mean()) * (b == k).mean()
                        for k in range(n_bins) if (b == k).any()))
    return float(np.mean(eces))


def test_graded_run_reports_kappa_aucs_endpoint_and_classwise_calibration(graded_run):
    m = json.loads((graded_run / "metrics.json").read_text())
    g = m["graded"]
    html = (graded_run / "report.html").read_text(encoding="utf-8")
    pat = g["test_patient"]
    # worst-eye patients: as many patient rows as test patients, each with the max image grade
    pred = pd.read_csv(graded_run / "predictions.csv")
    assert pat["n"] == pred["patient_key"].nunique()
    assert sorted(sum(pat["confusion_matrix"], [])) and sum(map(sum, pat["confusion_matrix"])) == pat["n"]
    worst = pred.groupby("patient_key")["y"].max().value_counts().reindex(range(3), fill_value=0).tolist()
    assert [sum(row) for row in pat["confusion_matrix"]] == worst
    # the ordinal head's probabilities are a distribution
    probs = pred[[f"prob_{c}" for c in ("none", "mild", "moderate")]].sum(axis=1)
    assert probs.between(0.999, 1.001).all()
    assert g["decision_rule"]["kind"] == "cumulative" and g["n_bootstrap"] == 50
    assert "kappa_quadratic" in html and 'id="graded-per-class-table"' in html
    # a one-vs-rest AUC exists exactly for the classes that some, but not all, test patients have (worst eye)
    worst_grade = pred.groupby("patient_key")["y"].max()
    for i, c in enumerate(("none", "mild", "moderate")):
        ci = pat["per_class"][c]["roc_auc"]
        assert (ci["point"] is not None) == (0 < int((worst_grade == i).sum()) < len(worst_grade)), c
        if ci["point"] is not None:
            assert _ci(ci) in html
    e = g["endpoints"]["referable"]
    assert e["threshold"]["chosen_on"] == "validation" and e["patient_aggregation"] == "max"
    assert "Derived endpoint: referable" in html and 'id="endpoint-table-referable"' in html
    assert 'id="graded-calibration-table"' in html
    # class-wise ECE after recalibration, recomputed by hand from the test images' calibrated probabilities
    after = g["calibration_test"]["after"]
    P = pred[[f"prob_{c}" for c in ("none", "mild", "moderate")]].to_numpy()
    assert after["classwise_ece"] == pytest.approx(_classwise_ece(pred["y"].to_numpy(), P, after["n_bins"]), abs=1e-9)
    assert "patient-level bootstrap CIs (50 resamples) of quadratic kappa" in html
    assert "(0 resamples)" not in html
    cal = json.loads((graded_run / "calibration.json").read_text())
    assert cal["decision_rule"] == g["decision_rule"] and "referable" in cal["endpoint_thresholds"]
