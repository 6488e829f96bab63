"""The unit of evaluation matches the label (issue 17): "any eye positive" labels are scored by the
maximum of the unit's images, a cohort states its rule (``label_rule``), a patient's visits are
separate units that one bootstrap cluster (the patient) resamples together, and the k-fold report
pools the reference models on the same units."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medxcept.cohort.table import load_cohort_spec
from medxcept.config import load_config
from medxcept.errors import ConfigError
from medxcept.evaluation.assess import measure_test, prediction_table
from medxcept.evaluation.kfold import pooled_references
from medxcept.evaluation.units import aggregate_by_patient, unit_keys, unit_patients


def _cfg(**ev):
    return load_config(overrides={f"eval.{k}": v for k, v in ev.items()})


def _eyes() -> pd.DataFrame:
    """Four patients, two eyes each. A: one clearly positive eye (0.95) and one normal eye (0.05);
    B negative at 0.60 / 0.60; C positive at 0.70 / 0.70; D negative at 0.20 / 0.30."""
    p = [0.95, 0.05, 0.60, 0.60, 0.70, 0.70, 0.20, 0.30]
    return pd.DataFrame({"patient_key": np.repeat(["A", "B", "C", "D"], 2), "y": [1, 0, 0, 0, 1, 1, 0, 0],
                         "prob": p, "prob_raw": p, "image_id": [f"i{k}" for k in range(8)],
                         "laterality": ["L", "R"] * 4, "source": "x", "label": "l"})


def test_any_eye_positive_is_scored_by_the_maximum():
    """Hand-computed: under max the patients score A .95, B .60, C .70, D .30 (positives A, C):
    every positive above every negative, AUC 1. Under mean A drops to .50, below B's .60: 3 of 4
    pairs, AUC 0.75. A is a positive patient either way (its label is the maximum)."""
    t = _eyes()
    keys, y, pmax = aggregate_by_patient(t["patient_key"], t["y"], t["prob"], how="max")
    assert keys.tolist() == ["A", "B", "C", "D"] and y.tolist() == [1, 0, 1, 0]
    assert pmax.tolist() == [0.95, 0.60, 0.70, 0.30]
    m_max = measure_test(t, threshold=0.8, cfg=_cfg(n_bootstrap=0), classes=("n", "p"))
    m_mean = measure_test(t, threshold=0.8, cfg=_cfg(n_bootstrap=0, patient_aggregation="mean"), classes=("n", "p"))
    assert m_max["test_patient"]["roc_auc"] == pytest.approx(1.0)
    assert m_mean["test_patient"]["roc_auc"] == pytest.approx(0.75)
    # at threshold 0.8 patient A is called positive under max (0.95), missed under mean (0.50)
    assert m_max["test_patient"]["sensitivity"] == pytest.approx(0.5)
    assert m_mean["test_patient"]["sensitivity"] == pytest.approx(0.0)
    assert m_max["evaluation_unit"]["patient_aggregation"] == "max"
    assert "maximum" in m_max["evaluation_unit"]["rule"]


def _visits(n_patients: int = 14, seed: int = 3) -> pd.DataFrame:
    """Patients with one or two visits (study_id), two eyes per visit; a second visit may progress."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        base = int(i % 2)
        for v in range(1 + int(i % 3 == 0)):
            for eye in "LR":
                y = int(base or (v == 1 and eye == "L"))
                rows.append({"patient_key": f"P{i:02d}", "study_id": f"S{i:02d}{v}", "laterality": eye, "y": y})
    t = pd.DataFrame(rows)
    t["prob"] = np.clip(0.35 * t["y"] + rng.uniform(0, 0.65, len(t)), 0, 1)
    t["prob_raw"] = t["prob"]
    t["image_id"] = [f"I{k:03d}" for k in range(len(t))]
    t["source"], t["label"] = "x", "l"
    return t


def test_visits_are_units_and_patients_are_bootstrap_clusters():
    """Two visits of one patient are two units (n counts visits) but one cluster: the CI equals a
    hand-rolled cluster bootstrap that draws patients with the same generator and takes all their
    visits (each drawn once per draw)."""
    t = _visits()
    n_boot, seed = 200, 5
    cfg = load_config(overrides={"eval.n_bootstrap": n_boot, "seed": seed})
    m = measure_test(t, threshold=0.5, cfg=cfg, classes=("n", "p"))
    units = unit_keys(t["patient_key"], t["study_id"])
    keys, yu, pu = aggregate_by_patient(units, t["y"], t["prob"], how="max")
    assert m["test_patient"]["n"] == len(keys) == t["study_id"].nunique() > t["patient_key"].nunique()
    assert m["evaluation_unit"]["unit"] == "visit" and m["evaluation_unit"]["n_patients"] == 14
    assert m["test_patient"]["roc_auc"] == pytest.approx(roc_auc_score(yu, pu))

    # hand-rolled cluster bootstrap: draw patients (sorted), replicate each drawn patient's units
    patients = unit_patients(keys)
    order = sorted(set(patients))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(order), size=(n_boot, len(order)))
    aucs = []
    for row in draws:
        take = np.concatenate([np.flatnonzero(patients == order[j]) for j in row])
        if len(set(yu[take])) == 2:
            aucs.append(roc_auc_score(yu[take], pu[take]))
    low, high = np.percentile(aucs, [2.5, 97.5])
    ci = m["test_patient_ci"]["roc_auc"]
    assert ci["low"] == pytest.approx(low, abs=1e-9) and ci["high"] == pytest.approx(high, abs=1e-9)
    # resampling visits as if independent draws from other clusters: another interval
    flat = np.random.default_rng(seed).integers(0, len(keys), size=(n_boot, len(keys)))
    flat_aucs = [roc_auc_score(yu[r], pu[r]) for r in flat if len(set(yu[r])) == 2]
    assert (np.percentile(flat_aucs, 2.5), np.percentile(flat_aucs, 97.5)) != (low, high)

    # eval.unit = patient: all visits together, one unit per patient
    m_pat = measure_test(t, threshold=0.5, cfg=_cfg(n_bootstrap=0, unit="patient"), classes=("n", "p"))
    assert m_pat["test_patient"]["n"] == 14 and m_pat["evaluation_unit"]["unit"] == "patient"
    # predictions.csv: one unit score per row's unit
    pred = prediction_table(t.assign(logit=0.0), ("n", "p"), "max", "visit")
    assert pred.groupby("unit_key")["patient_prob"].nunique().max() == 1
    assert pred["unit_key"].nunique() == len(keys)


def _cohort(tmp_path, extra: str):
    f = tmp_path / "c.yaml"
    f.write_text("name: c\nclasses: [a, b]\nsources:\n  - {kind: photos, root: x, labels: l.csv, patient_column: p}\n"
                 + extra, encoding="utf-8")
    return f


def test_cohort_label_rule_sets_the_aggregation(tmp_path):
    spec = load_cohort_spec(_cohort(tmp_path, "label_rule: per_patient\n"))
    assert load_config(cohort_defaults=spec.defaults).eval.patient_aggregation == "mean"
    spec = load_cohort_spec(_cohort(tmp_path, ""))
    assert spec.label_rule == "any_image"
    assert load_config(cohort_defaults=spec.defaults).eval.patient_aggregation == "max"
    with pytest.raises(ConfigError, match="contradicts label_rule"):
        load_cohort_spec(_cohort(tmp_path, "label_rule: any_image\ndefaults: {eval: {patient_aggregation: mean}}\n"))
    with pytest.raises(ConfigError, match="label_rule='eye'"):
        load_cohort_spec(_cohort(tmp_path, "label_rule: eye\n"))


def test_cv_pools_references_on_the_same_units():
    """Two folds' out-of-fold frames: the pooled AUC of the deep model and of each reference equal
    scikit-learn's on the pooled units (max over each unit's images); a classical reference planted
    better than the deep model is said first, as not better."""
    rng = np.random.default_rng(0)
    frames = []
    for fold in range(2):
        t = _visits(12, seed=fold)
        t["patient_key"] = f"f{fold}" + t["patient_key"]
        t["unit_key"] = unit_keys(t["patient_key"], t["study_id"])
        t["repeat"], t["fold"] = 0, fold
        t["ref_prevalence"] = 0.4
        t["ref_image_statistics"] = np.clip(0.8 * t["y"] + rng.uniform(0, 0.2, len(t)), 0, 1)  # near perfect
        t["ref_acquisition"] = rng.uniform(0, 1, len(t))
        frames.append(t)
    block = pooled_references(frames, "max", n_resamples=200, seed=0)
    df = pd.concat(frames, ignore_index=True)
    units = ("r0:" + df["unit_key"]).to_numpy()
    _, yu, deep = aggregate_by_patient(units, df["y"], df["prob"], how="max")
    _, _, cls = aggregate_by_patient(units, df["y"], df["ref_image_statistics"], how="max")
    assert block["deep"]["auc"] == pytest.approx(roc_auc_score(yu, deep))
    row = block["references"]["image_statistics"]
    assert row["auc"] == pytest.approx(roc_auc_score(yu, cls))
    assert row["diff"] == pytest.approx(roc_auc_score(yu, deep) - roc_auc_score(yu, cls))
    assert block["n_units"] == len(yu) and block["n_patients"] == 24
    assert block["classical_not_better"] is True and row["diff_ci"] is not None and row["delong_p"] is not None
    assert block["sentences"][0].startswith("The deep model is not better than the classical model")
    assert block["references"]["prevalence"]["auc"] == pytest.approx(0.5)
    assert pooled_references([f.drop(columns=["ref_prevalence", "ref_image_statistics", "ref_acquisition"])
                              for f in frames], "max") is None


def test_calibration_card_says_when_recalibration_made_it_worse():
    """Calibrated probabilities pulled across the middle on test raise the ECE (0.2 -> 0.55): the
    calibration block says so in words (the report's calibration card and section show it)."""
    t = _visits()
    good = t.assign(prob_raw=np.where(t["y"] == 1, 0.8, 0.2), prob=np.where(t["y"] == 1, 0.8, 0.2))
    bad = good.assign(prob=np.where(t["y"] == 1, 0.45, 0.55))  # the calibrator pulled everything to the middle
    cfg = _cfg(n_bootstrap=0)
    change = measure_test(bad, threshold=0.5, cfg=cfg, classes=("n", "p"))["calibration_test"]["change"]
    assert change["worse"] is True and change["sentence"].startswith("Recalibration made the test calibration worse")
    same = measure_test(good, threshold=0.5, cfg=cfg, classes=("n", "p"))["calibration_test"]
    assert same["change"]["worse"] is False and same["after"]["ece"] == pytest.approx(same["before"]["ece"])


def test_dropped_resamples_are_named_by_their_subgroup_row(caplog):
    """A subgroup with one negative patient among eight: about (7/8)^8 = 34 % of its resamples draw
    no negative, so its specificity interval drops them. The log line names the table row, and the
    row carries the count (the demo's "318 of 1000 resamples dropped" came from such a row)."""
    import logging

    from medxcept.evaluation.subgroups import subgroup_rows

    rows = []
    for i in range(8):
        y = int(i > 0)  # one negative patient
        for eye, src in (("L", "cam A"), ("R", "cam B")):
            rows.append({"patient_key": f"P{i}", "laterality": eye, "source": src, "y": y, "prob": 0.3 + 0.5 * y})
    t = pd.DataFrame(rows).assign(prob_raw=lambda f: f["prob"])
    with caplog.at_level(logging.DEBUG, logger="medxcept"):
        out = subgroup_rows(t, 0.5, how="max", n_resamples=1000, seed=0)
    row = next(r for r in out if r["by"] == "laterality" and r["value"] == "L")
    assert 250 < row["specificity_dropped"] < 430  # binomial around 344
    # the detail (debug) names the row and the cause; the console gets one summary line
    assert any("subgroup table row laterality = L" in m and "no negative drawn" in m and
               f"{row['specificity_dropped']} of 1000" in m for m in caplog.messages)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1 and info[0].startswith("subgroup table: in 4 row(s)")


def test_a_run_saved_before_units_existed_keeps_its_patient_mean_rule(tmp_path):
    """Resuming or reproducing an older run must not apply today's defaults (per visit, maximum)."""
    import dataclasses

    import yaml

    from medxcept.run import load_run_config

    data = dataclasses.asdict(load_config())
    assert (data["eval"]["unit"], data["eval"]["patient_aggregation"]) == ("visit", "max")
    del data["eval"]["unit"], data["eval"]["patient_aggregation"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    old = load_run_config(tmp_path)
    assert (old.eval.unit, old.eval.patient_aggregation) == ("patient", "mean")
    # a run that saved its choices keeps them
    data["eval"].update(unit="visit", patient_aggregation="max")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    new = load_run_config(tmp_path)
    assert (new.eval.unit, new.eval.patient_aggregation) == ("visit", "max")
