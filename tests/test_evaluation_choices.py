"""Evaluation choices that match the headline (issue 17): the threshold is chosen on patient-level
validation scores, discrimination comes from the uncalibrated scores, and nothing chosen (threshold,
temperature, epoch) depends on the test labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medxcept.config import load_config
from medxcept.evaluation.assess import assess
from medxcept.evaluation.metrics import choose_threshold
from medxcept.evaluation.units import aggregate_by_patient


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


# ------------------------------------------------------------------ saturation (issue 30 item 1)


def _confident(rng: np.random.Generator, n_patients: int, prefix: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Two images per patient, float32 logits between 17 and 40 (a confident model): every float32
    sigmoid is exactly 1.0, float64 ones above about 37 too. Positives sit higher on average."""
    y_pat = np.arange(n_patients) % 2
    frame = pd.DataFrame({"patient_key": np.repeat([f"{prefix}{i:03d}" for i in range(n_patients)], 2),
                          "y": np.repeat(y_pat, 2)})
    z = 26.0 + 6.0 * frame["y"].to_numpy() + rng.normal(0, 5.0, len(frame))
    return frame, np.clip(z, 17.0, 40.0).astype(np.float32)


def test_issue_example_ranks_the_logits_not_saturated_probabilities():
    from medxcept.evaluation.metrics import binary_metrics, ranking_metrics
    from medxcept.evaluation.units import probabilities

    z = np.array([17, 25, 30, 18, -3, 0], dtype=np.float32)
    y = [0, 0, 1, 0, 0, 0]
    assert float(np.float32(1) / (np.float32(1) + np.exp(-z[1]))) == 1.0  # float32 saturates here
    assert ranking_metrics(y, z)["roc_auc"] == 1.0
    assert probabilities(z).dtype == np.float64
    assert binary_metrics(y, probabilities(z), threshold=0.5)["roc_auc"] == 1.0  # was 0.700 in float32


@pytest.mark.parametrize("how", ["max", "mean"])
def test_logits_up_to_40_give_the_auc_of_the_logits(how):
    """The test split's image and patient ROC-AUC, PR-AUC and their bootstrap point are those of
    the logits; float32 probabilities would tie every case (AUC 0.5)."""
    from medxcept.evaluation.intervals import bootstrap_ci

    rng = np.random.default_rng(3)
    val, vz = _confident(rng, 30, "v")
    test, tz = _confident(rng, 40, "t")
    assert (tz > 37).sum() >= 8 and len(np.unique(test["y"][tz > 37])) == 2  # ties in float64 too
    a = assess(val=val, test=test, val_logits=vz, test_logits=tz, cfg=_cfg(patient_aggregation=how),
               classes=("neg", "pos"))
    z = tz.astype(np.float64)
    g = pd.DataFrame({"k": test["patient_key"], "y": test["y"], "z": z,
                      "q": np.exp(-z) / (1 + np.exp(-z))})  # 1 - p, exact for large z
    pat = g.groupby("k").agg(y=("y", "max"), z=("z", "max"), q=("q", "mean"))
    score = pat["z"] if how == "max" else -pat["q"]  # mean p ranks as -mean(1 - p)
    m = a.metrics
    assert m["test_patient"]["roc_auc"] == pytest.approx(roc_auc_score(pat["y"], score), abs=1e-12)
    assert m["test_patient"]["pr_auc"] == pytest.approx(average_precision_score(pat["y"], score), abs=1e-12)
    assert m["test_patient_ci"]["roc_auc"]["point"] == pytest.approx(roc_auc_score(pat["y"], score), abs=1e-12)
    assert m["test_image"]["roc_auc"] == pytest.approx(roc_auc_score(test["y"], z), abs=1e-12)
    assert m["test_patient"]["roc_auc"] > 0.8
    # the interval equals the one of any monotone non-saturating map of the same scores
    mono = (score.to_numpy() - score.min()) / (score.max() - score.min())
    ref = bootstrap_ci(pat["y"].to_numpy(), mono, pat.index.to_numpy(), metrics=("roc_auc",), threshold=None,
                       n_resamples=100, seed=0)["roc_auc"]
    assert (m["test_patient_ci"]["roc_auc"]["low"], m["test_patient_ci"]["roc_auc"]["high"]) == pytest.approx(
        (ref.low, ref.high), abs=1e-12)


def test_reference_comparison_ranks_logits_up_to_40():
    """DeLong p and the deep AUC of the reference comparison equal those of the patients' maximum
    logits, with logits up to 40."""
    from medxcept.evaluation.intervals import delong_test, paired_bootstrap_auc
    from medxcept.evaluation.references import compare_with_references

    rng = np.random.default_rng(4)
    test, tz = _confident(rng, 40, "t")
    ref = np.clip(0.2 + 0.3 * test["y"].to_numpy() + rng.uniform(0, 0.5, len(test)), 0, 1)
    block = compare_with_references(test["y"].to_numpy(), tz, {"r": {"scores": ref, "label": "ref"}},
                                    test["patient_key"].to_numpy(), how="max", scale="logit", n_resamples=100)
    pat = pd.DataFrame({"k": test["patient_key"], "y": test["y"], "z": tz.astype(np.float64), "r": ref}).groupby(
        "k").max()
    dl = delong_test(pat["y"], pat["z"], pat["r"])
    row = block["references"]["r"]
    assert block["deep"]["auc"] == pytest.approx(roc_auc_score(pat["y"], pat["z"]), abs=1e-12)
    assert row["delong_p"] == pytest.approx(dl["p_value"], rel=1e-9)
    assert row["test_used"] == "DeLong" and row["p_value"] == row["delong_p"]  # one unit per patient
    pb = paired_bootstrap_auc(pat["y"], pat["z"], pat["r"], pat.index.to_numpy(), n_resamples=100, seed=0)
    assert row["diff_p_bootstrap"] == pytest.approx(pb["p_value"], rel=1e-9)
