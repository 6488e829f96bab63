"""Evaluation choices that match the headline (issue 17): the threshold is chosen on patient-level
validation scores, discrimination comes from the uncalibrated scores, and nothing chosen (threshold,
temperature, epoch) depends on the test labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medxcept.config import load_config
from medxcept.evaluation.metrics import aggregate_by_patient, choose_threshold
from medxcept.workflows.steps import assess


def _frame(rng: np.random.Generator, n_patients: int, prefix: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Two images per patient; logits carry the label with noise."""
    y_pat = np.arange(n_patients) % 2
    frame = pd.DataFrame({"patient_key": np.repeat([f"{prefix}{i:03d}" for i in range(n_patients)], 2),
                          "y": np.repeat(y_pat, 2)})
    logits = 1.5 * (frame["y"].to_numpy() - 0.5) + rng.normal(0, 1.2, len(frame))
    return frame, logits


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    val, vz = _frame(rng, 30, "v")
    test, tz = _frame(rng, 40, "t")
    return val, vz, test, tz


def _cfg(**eval_overrides):
    return load_config(overrides={"eval.n_bootstrap": 100, **{f"eval.{k}": v for k, v in eval_overrides.items()}})


def test_threshold_is_chosen_on_patient_level_validation_scores(planted):
    val, vz, test, tz = planted
    cfg = _cfg(patient_aggregation="max")
    a = assess(val=val, test=test, val_logits=vz, test_logits=tz, cfg=cfg, classes=("neg", "pos"))
    _, vy, vp = aggregate_by_patient(a.val["patient_key"], a.val["y"], a.val["prob"], how="max")
    assert a.metrics["threshold"]["value"] == choose_threshold(vy, vp)
    assert a.metrics["threshold"]["level"] == "patient" and a.metrics["threshold"]["n_validation_patients"] == 30
    # the image-level choice differs here: it would have been a threshold for another kind of score
    assert choose_threshold(a.val["y"], a.val["prob"]) != a.metrics["threshold"]["value"]


def test_discrimination_comes_from_uncalibrated_scores(planted):
    """Isotonic calibration ties scores (a step function): the reported AUC and PR-AUC are those of
    the raw scores, point and interval alike; sensitivity uses the calibrated probabilities."""
    val, vz, test, tz = planted
    # per-patient labels (both images share it): the mean rule, stated
    a = assess(val=val, test=test, val_logits=vz, test_logits=tz, cfg=_cfg(calibration="isotonic", patient_aggregation="mean"),
               classes=("neg", "pos"))
    t = a.test
    _, yp, raw = aggregate_by_patient(t["patient_key"], t["y"], t["prob_raw"], how="mean")
    _, _, cal = aggregate_by_patient(t["patient_key"], t["y"], t["prob"], how="mean")
    m = a.metrics
    assert m["test_patient"]["roc_auc"] == pytest.approx(roc_auc_score(yp, raw))
    assert m["test_patient"]["pr_auc"] == pytest.approx(average_precision_score(yp, raw))
    assert roc_auc_score(yp, cal) != pytest.approx(roc_auc_score(yp, raw))  # the ties did change it
    assert m["test_image"]["roc_auc"] == pytest.approx(roc_auc_score(t["y"], t["prob_raw"]))
    assert m["test_patient_ci"]["roc_auc"]["point"] == pytest.approx(roc_auc_score(yp, raw))
    thr = m["threshold"]["value"]
    assert m["test_patient"]["sensitivity"] == pytest.approx((cal[yp == 1] >= thr).mean())


def test_permuting_test_labels_changes_no_choice(planted):
    """Threshold and temperature come from validation only: permuting the test labels changes the
    measured test metrics and nothing that was chosen."""
    val, vz, test, tz = planted
    cfg = _cfg()
    a = assess(val=val, test=test, val_logits=vz, test_logits=tz, cfg=cfg, classes=("neg", "pos"))
    perm = np.random.default_rng(1).permutation(test["patient_key"].unique())
    relabel = dict(zip(test["patient_key"].unique(), test.groupby("patient_key")["y"].max().loc[perm], strict=True))
    shuffled = test.assign(y=test["patient_key"].map(relabel).to_numpy())
    assert (shuffled["y"] != test["y"]).any()
    b = assess(val=val, test=shuffled, val_logits=vz, test_logits=tz, cfg=cfg, classes=("neg", "pos"))
    assert b.metrics["threshold"] == a.metrics["threshold"]
    assert b.metrics["calibrator"] == a.metrics["calibrator"]
    assert b.metrics["calibrator"]["applied_temperature"] == a.metrics["calibrator"]["temperature"]
    assert b.metrics["test_patient"]["roc_auc"] != pytest.approx(a.metrics["test_patient"]["roc_auc"])


@pytest.mark.slow
def test_training_never_sees_the_test_labels(tiny_cohort, tmp_path, monkeypatch):
    """The epoch is chosen inside train.fit, whose inputs are the training and validation splits
    only: a run whose test labels are permuted hands fit exactly the same arrays."""
    import medxcept.workflows.single as single
    from medxcept.cohort.table import load_cohort_spec

    seen: list[tuple] = []

    class _Stop(Exception):
        pass

    def spy_fit(x_train, y_train, x_val, y_val, groups_val, **kw):
        seen.append((x_train.tobytes(), y_train.tolist(), x_val.tobytes(), y_val.tolist(), list(groups_val)))
        raise _Stop

    from medxcept.integrity.audit import AuditReport
    from medxcept.integrity.splits import assign_splits

    def permuting_split(table, images, cfg, *a, **kw):
        # the split as the run makes it; the audit (which reads no label to set anything fit sees)
        # is skipped to keep the test short
        table, report = assign_splits(table, cfg.split), AuditReport(policy=cfg.audit.on_leak)
        if permute:
            test = table["split"] == "test"
            table.loc[test, "y"] = np.random.default_rng(0).permutation(table.loc[test, "y"].to_numpy())
        return table, report

    monkeypatch.setattr(single, "fit", spy_fit)
    monkeypatch.setattr(single, "split_and_audit", permuting_split)
    spec = load_cohort_spec(tiny_cohort)
    for permute in (False, True):
        cfg = load_config(cohort_defaults=spec.defaults, overrides={"out_dir": str(tmp_path / f"r{permute}")})
        with pytest.raises(_Stop):
            single.run_pipeline(cfg, spec)
    assert len(seen) == 2 and seen[0] == seen[1]
