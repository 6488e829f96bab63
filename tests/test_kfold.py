"""Tests of medxcept.evaluation.kfold and pipelines.kfold: resumable patient-level k-fold cross-validation.

The quick tests check the arithmetic (t-interval, pooled out-of-fold metrics, fold tables) against
hand computations and scikit-learn. The slow ones train a tiny 3-fold CV once (module fixture) on
the demo generator with 24 patients, in the order a crashed-and-resumed run would see it:
``--fold 0`` alone, ``--aggregate`` on that partial run, the full command (must skip fold 0), and the
same command again (must train nothing). They use the frozen-base ``baseline`` recipe for one
epoch: a from-scratch Xception spends 80-120 s per fold compiling its training step with XLA on a
2-core CPU, the frozen base about a fifth of that, and these tests are about the CV bookkeeping.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from sklearn.metrics import average_precision_score, matthews_corrcoef, roc_auc_score

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from medxcept.errors import ConfigError  # noqa: E402
from medxcept.evaluation import kfold  # noqa: E402
from medxcept.workflows import cv as cv_workflow  # noqa: E402
from medxcept.workflows.executors import (  # noqa: E402
    EXECUTORS,
    LocalExecutor,
    ProcessExecutor,
    make_executor,
)

REPO = Path(__file__).resolve().parent.parent
N_FOLDS = 3


# ------------------------------------------------------------------------------------ quick tests


def test_t_interval_matches_hand_computation():
    values = [0.61, 0.74, None, 0.80, float("nan"), 0.69]
    r = kfold.t_interval(values)
    v = np.array([0.61, 0.74, 0.80, 0.69])
    half = stats.t.ppf(0.975, 3) * v.std(ddof=1) / 2.0
    assert r["n"] == 4
    assert r["mean"] == pytest.approx(v.mean())
    assert r["sd"] == pytest.approx(v.std(ddof=1))
    assert (r["low"], r["high"]) == pytest.approx((v.mean() - half, v.mean() + half))
    clipped = kfold.t_interval([0.9, 1.0, 0.7], bounds=(0.0, 1.0))
    assert clipped["high"] == 1.0 and clipped["low"] < 0.9
    one = kfold.t_interval([0.7])
    assert one["mean"] == 0.7 and one["sd"] is None and one["low"] is None
    assert kfold.t_interval([None])["mean"] is None


def test_fold_table_partitions_patients():
    table = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(8)],
        "patient_key": ["P-a", "P-a", "P-b", "P-c", "P-d", "P-e", "P-f", "P-f"],
        "cv_split": ["cv"] * 6 + ["test"] * 2,
        "fold_r0": [0, 0, 1, 2, 0, 1, -1, -1],
        "fold_r1": [2, 2, 0, 1, 1, 0, -1, -1],
    })
    t = kfold.fold_table(table, repeat=1, fold=0)
    assert t["split"].tolist() == ["train", "train", "val", "train", "train", "val", "test", "test"]
    assert t["fold"].tolist() == table["fold_r1"].tolist()
    assert "split" not in table  # the input is not modified


def test_fold_names_and_task_indices():
    tasks = kfold.fold_tasks(3, 2)
    assert [t.name for t in tasks] == ["r0-fold-0", "r0-fold-1", "r0-fold-2", "r1-fold-0", "r1-fold-1",
                                       "r1-fold-2"]
    assert [(t.index, t.repeat, t.fold) for t in tasks][4] == (4, 1, 1)
    assert [t.name for t in kfold.fold_tasks(2, 1)] == ["fold-0", "fold-1"]


def test_pooled_oof_uses_each_folds_threshold_and_patient_means():
    # fold 0: threshold 0.5; fold 1: threshold 0.3. P-c has two images (mean 0.4).
    f0 = pd.DataFrame({"repeat": 0, "fold": 0, "patient_key": ["P-a", "P-b"], "y": [1, 0],
                       "prob": [0.8, 0.45], "prob_raw": [0.9, 0.4], "threshold": 0.5})
    f1 = pd.DataFrame({"repeat": 0, "fold": 1, "patient_key": ["P-c", "P-c", "P-d", "P-e"], "y": [1, 1, 0, 0],
                       "prob": [0.5, 0.3, 0.35, 0.1], "prob_raw": [0.6, 0.2, 0.3, 0.2], "threshold": 0.3})
    m, rel = kfold.pooled_oof_metrics([f0, f1], "mean", 10)
    y = np.array([1, 0, 1, 0, 0])  # P-a P-b P-c P-d P-e
    p = np.array([0.8, 0.45, 0.4, 0.35, 0.1])
    raw = np.array([0.9, 0.4, 0.4, 0.3, 0.2])  # the uncalibrated scores, ranked (issue 30)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, raw)) == pytest.approx(11 / 12)
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, raw))
    assert m["roc_auc_calibrated"] == pytest.approx(roc_auc_score(y, p)) == pytest.approx(5 / 6)
    assert m["ranked_on"] == "uncalibrated probabilities (prob_raw)"
    # predicted positive: P-a (0.8 >= 0.5), P-c (0.4 >= 0.3), P-d (0.35 >= 0.3); P-b 0.45 < 0.5
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 2, 0)
    assert m["sensitivity"] == 1.0 and m["specificity"] == pytest.approx(2 / 3)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["n"] == 5 and m["n_images"] == 6


def test_pooled_oof_keeps_repeats_apart():
    a = pd.DataFrame({"repeat": 0, "fold": 0, "patient_key": ["P-a", "P-b"], "y": [1, 0], "prob": [0.9, 0.2],
                      "prob_raw": [0.9, 0.2], "threshold": 0.5})
    b = a.assign(repeat=1, prob=[0.1, 0.6], prob_raw=[0.1, 0.6])
    m, _ = kfold.pooled_oof_metrics([a, b], "mean", 10)
    assert m["n"] == 4  # each patient once per repeat, never averaged across repeats
    assert m["roc_auc"] == pytest.approx(roc_auc_score([1, 0, 1, 0], [0.9, 0.2, 0.1, 0.6]))


def _oof_folds(repeat: int = 0, seed: int = 0) -> list[pd.DataFrame]:
    """Two folds of 20 patients, two images each, logits carrying the label; references too."""
    rng = np.random.default_rng(seed)
    frames = []
    for fold in range(2):
        keys = np.repeat([f"P-{fold}{i:02d}" for i in range(20)], 2)
        y = np.repeat(np.arange(20) % 2, 2)
        z = 1.2 * y + rng.normal(0, 1, len(y))
        frames.append(pd.DataFrame({"repeat": repeat, "fold": fold, "patient_key": keys, "y": y, "logit": z,
                                    "prob_raw": 1 / (1 + np.exp(-z)), "prob": 1 / (1 + np.exp(-z / 2)),
                                    "threshold": 0.5, "ref_prevalence": 0.5,
                                    "ref_image_statistics": np.clip(0.3 * y + rng.uniform(0, 0.7, len(y)), 0, 1),
                                    "ref_acquisition": rng.uniform(0, 1, len(y))}))
    return frames


def test_repeating_the_same_folds_does_not_narrow_pooled_intervals():
    """Repeat 1 predicts every patient exactly as repeat 0 did: no new information. The pooled
    bootstrap clusters on the patient (not repeat:patient), so the intervals stay as they are; with
    one cluster per repeat and patient they would narrow by about 1/sqrt(2)."""
    from medxcept.config import load_config

    once = _oof_folds()
    twice = once + [f.assign(repeat=1) for f in once]
    a = kfold.pooled_references(once, "max", n_resamples=300, seed=0)
    b = kfold.pooled_references(twice, "max", n_resamples=300, seed=0)
    assert b["n_units"] == 2 * a["n_units"] and b["n_patients"] == a["n_patients"] == 40
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(b["deep"]["ci"]) == pytest.approx(width(a["deep"]["ci"]), abs=1e-12)
    row_a, row_b = a["references"]["image_statistics"], b["references"]["image_statistics"]
    assert width(row_b["diff_ci"]) == pytest.approx(width(row_a["diff_ci"]), abs=1e-12)
    # several units per patient: the stated p is the patient bootstrap's, and the record says so
    assert row_a["test_used"] == "DeLong" and row_b["test_used"] == "patient-cluster bootstrap"
    assert row_b["p_value"] == row_b["diff_p_bootstrap"]
    ec = load_config(overrides={"eval.n_bootstrap": 300}).eval
    ca = kfold.pooled_clinical(once, [None, None], ec)["calibration"]["after"]["slope"]
    cb = kfold.pooled_clinical(twice, [None] * 4, ec)["calibration"]["after"]["slope"]
    assert cb["high"] - cb["low"] == pytest.approx(ca["high"] - ca["low"], rel=1e-9)


def test_pooled_oof_ranks_each_folds_logits():
    """The pooled ROC-AUC ranks the folds' uncalibrated logits (each unit: the maximum), not the
    calibrated ``prob``, whose per-fold temperatures reorder units across folds."""
    frames = _oof_folds()
    frames[1]["prob"] = 1 / (1 + np.exp(-(frames[1]["logit"] - 2.0)))  # fold 1's calibrator shifts its units
    m, _ = kfold.pooled_oof_metrics(frames, "max", 10)
    df = pd.concat(frames)
    pat = df.groupby("patient_key").agg(y=("y", "max"), z=("logit", "max"), p=("prob", "max"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(pat["y"], pat["z"]), abs=1e-12)
    assert m["roc_auc_calibrated"] == pytest.approx(roc_auc_score(pat["y"], pat["p"]), abs=1e-12)
    assert m["roc_auc"] != pytest.approx(m["roc_auc_calibrated"])
    assert m["ranked_on"].startswith("uncalibrated logits")


# ------------------------------------------------------------- inner validation split (issue 36)


def _random_cohort(n_per_class: list[int], images: list[int], mixed: list[bool]) -> pd.DataFrame:
    """One row per image; patient p has ``images[p]`` images of its class; a ``mixed`` patient
    also has one image of class 0 (a patient label by the most severe class, as in the splits)."""
    rows, p = [], 0
    names = ["normal", "mild", "severe"]
    for c, n in enumerate(n_per_class):
        for _ in range(n):
            ys = [c] * images[p % len(images)] + ([0] if c > 0 and mixed[p % len(mixed)] else [])
            for j, y in enumerate(ys):
                rows.append({"image_id": f"i{p:03d}-{j}", "patient_key": f"P-{p:03d}", "label": names[y], "y": y,
                             "sha256": f"{p:03d}{j:02d}".ljust(64, "0")})
            p += 1
    return pd.DataFrame(rows)


def _inner_cases():
    from hypothesis import strategies as st

    return st.fixed_dictionaries({
        "k": st.integers(2, 5), "repeats": st.integers(1, 3), "n_classes": st.integers(2, 3),
        "extra": st.lists(st.integers(0, 25), min_size=3, max_size=3),
        "images": st.lists(st.integers(1, 3), min_size=1, max_size=7),
        "mixed": st.lists(st.booleans(), min_size=1, max_size=5),
        "fraction": st.sampled_from([0.1, 0.2, 0.25, 0.3, 0.45]),
        "test_fraction": st.sampled_from([0.0, 0.2]), "seed": st.integers(0, 50)})


def _check_inner_case(case) -> None:
    from medxcept.config import RunConfig
    from medxcept.integrity.splits import SplitConfig

    k, f = case["k"], case["fraction"]
    # enough patients per class for k folds and a two-sided inner split of every fold's training folds
    n_per_class = [3 * k + 2 + e for e in case["extra"][:case["n_classes"]]]
    df = _random_cohort(n_per_class, case["images"], case["mixed"])
    split = SplitConfig(test_fraction=case["test_fraction"], n_folds=k, seed=case["seed"])
    table = kfold.cv_table(df, RunConfig(split=split), k, case["repeats"], None)
    classes = set(df["y"])
    for r in range(case["repeats"]):
        for i in range(k):
            ft = kfold.fold_split(table, split, r, i, fraction=f)
            part = {s: set(ft.loc[ft["split"] == s, "patient_key"]) for s in ("train", "inner_val", "val", "test")}
            # no patient in two of train / inner validation / held-out fold / hold-out test, none lost
            names = list(part)
            for a in range(4):
                for b in range(a + 1, 4):
                    assert not part[names[a]] & part[names[b]], (r, i, names[a], names[b])
            assert set().union(*part.values()) == set(df["patient_key"])
            folds = table[f"fold_r{r}"]
            assert part["val"] == set(table.loc[folds == i, "patient_key"])
            assert part["test"] == set(table.loc[table["cv_split"] == "test", "patient_key"])
            assert part["train"] | part["inner_val"] == set(table.loc[(folds >= 0) & (folds != i), "patient_key"])
            # every class on both sides of the inner split (AUC, calibration and threshold are defined)
            for s in ("train", "inner_val"):
                assert set(ft.loc[ft["split"] == s, "y"]) == classes, (r, i, s)
            # its size: the stated share of the training folds' patients, up to one patient per class
            # (per-class rounding, and the coverage of every class on both sides)
            n_train_folds = len(part["train"]) + len(part["inner_val"])
            assert abs(len(part["inner_val"]) - f * n_train_folds) <= case["n_classes"] + 1, (r, i)
            kfold.check_fold_disjoint(ft, f"r{r} fold {i}")  # the fold runner's own check agrees
            # deterministic per fold and repeat: the same call gives the same split
            assert kfold.fold_split(table, split, r, i, fraction=f)["split"].tolist() == ft["split"].tolist()


def test_inner_validation_split_is_patient_disjoint_in_every_repeat():
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_inner_cases())
    def prop(case):
        _check_inner_case(case)

    prop()


def test_fold_runner_check_catches_a_patient_on_two_sides():
    from medxcept.errors import SplitError
    from medxcept.integrity.splits import SplitConfig

    df = _random_cohort([10, 10], [2], [False])
    table = df.assign(cv_split="cv", fold_r0=[int(p[-3:]) % 3 for p in df["patient_key"]])
    ft = kfold.fold_split(table, SplitConfig(), 0, 1, fraction=0.25)
    kfold.check_fold_disjoint(ft, "fold-1")
    inner_patient = ft.loc[ft["split"] == "inner_val", "patient_key"].iloc[0]
    rows = np.flatnonzero((ft["patient_key"] == inner_patient).to_numpy())
    assert len(rows) == 2  # two images: move one of them to the training side
    bad = ft.copy()
    bad.iloc[rows[0], bad.columns.get_loc("split")] = "train"
    with pytest.raises(SplitError, match="fold-1: 1 patient"):
        kfold.check_fold_disjoint(bad, "fold-1")


def test_inner_split_counts_are_the_stated_share_of_the_training_folds():
    from medxcept.integrity.splits import SplitConfig

    # 90 patients, 2 classes (45 each), 3 folds of 30: 60 training-fold patients, 20 % = 12 inner
    df = _random_cohort([45, 45], [1, 2, 3], [False])
    table = df.assign(cv_split="cv", fold_r0=[int(p[-3:]) // 2 % 3 for p in df["patient_key"]])
    for i in range(3):
        c = kfold.fold_counts(kfold.fold_split(table, SplitConfig(val_fraction=0.2), 0, i, fraction=0.2))
        assert c["held_out"]["patients"] == 30 and c["test"]["patients"] == 0
        assert c["inner_val"]["patients"] == 12 and c["train"]["patients"] == 48  # 80 % of 60 train
        assert c["inner_val"]["positive_patients"] == 6  # stratified: half of each class
        held = table[table["fold_r0"] == i]
        assert c["held_out"]["images"] == len(held)
        assert c["train"]["images"] + c["inner_val"]["images"] == len(table) - len(held)


def test_inner_fraction_defaults_to_the_single_runs_validation_share():
    from medxcept.integrity.splits import SplitConfig

    assert kfold.inner_fraction(SplitConfig(val_fraction=0.15)) == 0.15
    assert kfold.inner_fraction(SplitConfig(val_fraction=0.15, inner_val_fraction=0.3)) == 0.3
    assert kfold.inner_fraction(SplitConfig(val_fraction=0.0, inner_val_fraction=0.1)) == 0.1
    with pytest.raises(ConfigError, match="split.inner_val_fraction is unset and split.val_fraction is 0"):
        kfold.inner_fraction(SplitConfig(val_fraction=0.0))
    # the seeds differ per fold and per repeat
    seeds = {kfold.inner_seed(7, r, i) for r in range(10) for i in range(10)}
    assert len(seeds) == 100


def test_config_hash_unchanged_by_an_unset_inner_fraction():
    import hashlib

    from medxcept.config import RunConfig, config_hash, config_to_dict, load_config
    from medxcept.integrity.splits import SplitConfig

    cfg = RunConfig()
    # a configuration written before the field existed: the same dict without it, hashed as then
    old = config_to_dict(cfg)
    del old["split"]["inner_val_fraction"]
    del old["model"]["backbone"]  # nor model.backbone (issue 32): hashed only when it is not xception
    assert config_hash(cfg) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:8]
    set_ = RunConfig(split=SplitConfig(inner_val_fraction=0.25))
    assert config_hash(set_) != config_hash(cfg)
    assert load_config(overrides={"split.inner_val_fraction": 0.25}) == set_  # --set parses the value as YAML


@pytest.fixture
def restore_logging():
    """The CLI configures the 'medxcept' logger (own handler, no propagation): undo that afterwards."""
    logger = logging.getLogger("medxcept")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def test_cli_aggregate_of_a_directory_that_is_no_cv_exits_2(tmp_path, capsys, restore_logging):
    from pipelines.kfold import main

    assert main(["--aggregate", str(tmp_path), "-q"]) == 2
    assert "is not a cross-validation directory" in capsys.readouterr().err


def test_load_plan_refuses_an_edited_config(tmp_path):
    from medxcept.config import RunConfig, config_hash, config_to_dict

    cfg = RunConfig()
    (tmp_path / "cv.json").write_text(json.dumps({"config_hash": config_hash(cfg)}))
    edited = config_to_dict(cfg)
    edited["train"]["patience"] = 9
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(edited))
    with pytest.raises(ConfigError, match=config_hash(cfg)):
        kfold.load_plan(tmp_path)


# ------------------------------------------------------------------------------ tiny trained CV


def _write_tiny_cohort(path: Path) -> Path:
    data = yaml.safe_load((REPO / "cohorts" / "demo.yaml").read_text())
    data["name"] = "tiny"
    data["generator_options"] = {"n_patients": 24, "seed": 3, "size_scale": 0.5}
    data["defaults"] = {
        "preprocess": {"image_px": 71},
        # baseline recipe (frozen base) for speed, see the module docstring
        "train": {"batch_size": 8, "head_epochs": 1, "finetune_epochs": 1, "recipe": "baseline",
                  "baseline_epochs": 1, "workers": 1},
        "eval": {"n_bootstrap": 50},
        # the audit flagged synthetic fundus images as near-duplicates; do not stop the tests on it
        "audit": {"on_leak": "warn"},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cfg(cohort: Path, out: Path):
    from medxcept.cohort.table import load_cohort_spec
    from medxcept.config import load_config

    spec = load_cohort_spec(cohort)
    # the same overrides the CLI makes for --cohort, --out-dir and --folds
    cfg = load_config(cohort_defaults=spec.defaults,
                      overrides={"out_dir": str(out), "cohort": str(cohort), "split.n_folds": N_FOLDS})
    return cfg, spec


def _mtimes(d: Path) -> dict[str, float]:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cv(tmp_path_factory):
    """Fold 0 via the CLI, --aggregate, the full run, then the same full run again."""
    from pipelines.kfold import main

    tmp = tmp_path_factory.mktemp("kfold")
    logger = logging.getLogger("medxcept")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    out: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDXCEPT_CACHE", str(tmp / "cache"))
        cohort = _write_tiny_cohort(tmp / "tiny.yaml")
        cfg, spec = _cfg(cohort, tmp / "reports")
        try:
            # 1. one fold, as a scheduler job would run it (the run is "killed" after it)
            rc = main(["--cohort", str(cohort), "--folds", str(N_FOLDS), "--out-dir", str(tmp / "reports"),
                       "--fold", "0", "--no-save-models", "-q"])
            assert rc == 0
        finally:
            logger.handlers[:], logger.level, logger.propagate = saved
        cv_dir = tmp / "reports" / kfold.default_cv_name("tiny", cfg, N_FOLDS)
        out["after_fold0"] = sorted(p.name for p in cv_dir.iterdir())
        fold0 = _mtimes(cv_dir / "fold-0")
        # 2. the report of the partial run
        out["partial"] = cv_workflow.aggregate_cv(cv_dir)
        out["partial_html"] = (cv_dir / "cv_report.html").read_text()
        # 3. the full command: must skip fold 0
        out["full"] = cv_workflow.run_cv(cfg, spec, n_folds=N_FOLDS, save_model=False)
        out["fold0_untouched"] = _mtimes(cv_dir / "fold-0") == fold0
        # 4. the same command again: nothing may train
        before = _mtimes(cv_dir)

        def no_training(*args, **kwargs):
            raise AssertionError("a complete fold was trained again")

        import medxcept.models.train

        mp.setattr(medxcept.models.train, "fit", no_training)
        out["again"] = cv_workflow.run_cv(cfg, spec, n_folds=N_FOLDS, save_model=False, aggregate=False)
        out["unchanged"] = _mtimes(cv_dir) == before
        mp.undo()
        mp.setenv("MEDXCEPT_CACHE", str(tmp / "cache"))
        out.update(dir=cv_dir, cfg=cfg, spec=spec, cohort=cohort, tmp=tmp, cache=tmp / "cache")
        yield out


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """The tiny cohort planned with --prepare (ingested, folds and inner splits made; nothing trained)."""
    from pipelines.kfold import main

    tmp = tmp_path_factory.mktemp("kfold-plan")
    logger = logging.getLogger("medxcept")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDXCEPT_CACHE", str(tmp / "cache"))
        cohort = _write_tiny_cohort(tmp / "tiny.yaml")
        try:
            rc = main(["--cohort", str(cohort), "--folds", str(N_FOLDS), "--out-dir", str(tmp / "reports"),
                       "--cv-name", "planned", "--prepare", "-q"])
        finally:
            logger.handlers[:], logger.level, logger.propagate = saved
        assert rc == 0
        yield {"dir": tmp / "reports" / "planned", "cohort": cohort, "tmp": tmp}


def test_plan_records_each_folds_inner_split_and_sizes(planned):
    from medxcept.integrity.split_keys import split_hash

    d = planned["dir"]
    info = json.loads((d / "cv.json").read_text())
    assert info["inner_validation"]["fraction"] == 0.2  # split.val_fraction, the default
    assert info["inner_validation"]["fraction_from"] == "split.val_fraction"
    table = pd.read_csv(d / "cohort.csv", dtype={"patient_key": str})
    cv_pat = table[table["cv_split"] == "cv"]
    plan = kfold.load_plan(d)
    for i, rec in enumerate(info["folds"]):
        c = rec["counts"]
        held = cv_pat[cv_pat["fold_r0"] == i]
        rest = cv_pat[cv_pat["fold_r0"] != i]
        # sizes against the fold columns of cohort.csv, computed here without the code under test
        assert c["held_out"] == {"patients": held["patient_key"].nunique(), "images": len(held),
                                 "positive_patients": int((held.groupby("patient_key")["y"].max() > 0).sum())}
        assert c["train"]["patients"] + c["inner_val"]["patients"] == rest["patient_key"].nunique()
        assert c["train"]["images"] + c["inner_val"]["images"] == len(rest)
        assert c["test"]["patients"] == table.loc[table["cv_split"] == "test", "patient_key"].nunique()
        assert 1 <= c["inner_val"]["patients"] < c["train"]["patients"]
        assert rec["inner_seed"] == kfold.inner_seed(plan.cfg.split.seed, 0, i)
        # the fold runner makes the same split again from the plan alone (what its marker is checked against)
        again = kfold.fold_split(plan.table, plan.cfg.split, 0, i, fraction=0.2)
        assert split_hash(again) == rec["split_hash"]
        assert kfold.fold_counts(again) == c


def test_a_plan_made_before_inner_splits_is_refused_in_one_line(planned, tmp_path, capsys, restore_logging):
    from pipelines.kfold import main

    old = tmp_path / "reports" / "old"
    shutil.copytree(planned["dir"], old)
    info = json.loads((old / "cv.json").read_text())
    del info["inner_validation"]  # what cv.json looked like before issue 36
    (old / "cv.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="planned before k-fold inner validation splits"):
        cv_workflow.run_fold(old, 0)
    assert not (old / "fold-0").exists()  # nothing was trained or written
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDXCEPT_CACHE", str(planned["tmp"] / "cache"))
        rc = main(["--cohort", str(planned["cohort"]), "--folds", str(N_FOLDS), "--out-dir", str(tmp_path / "reports"),
                   "--cv-name", "old", "--fold", "0", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "planned before k-fold inner validation splits" in err[0]
    assert "--aggregate" in err[0] and "--cv-name" in err[0]


def test_where_choices_were_made_is_said_as_planned():
    from medxcept.config import RunConfig

    info = {"n_folds": 2, "inner_validation": {"fraction": 0.2, "fraction_from": "split.val_fraction"}}
    plan = kfold.CVPlan(path=Path("."), cfg=RunConfig(), info=info, table=pd.DataFrame())
    new = cv_workflow._where_chosen(plan, graded=False)
    assert "inner validation split: 20 % of the patients" in new["threshold_and_calibration_fitted_on"]
    assert "never the held-out fold" in new["early_stopping_on"]
    del info["inner_validation"]  # a 2-fold plan made before issue 36: its folds chose on fold i
    old = cv_workflow._where_chosen(plan, graded=True)
    assert "held-out fold itself" in old["threshold_and_calibration_fitted_on"] and old["inner_validation"] is None
    info["n_folds"] = 3
    assert "the next fold" in cv_workflow._where_chosen(plan, graded=False)["early_stopping_on"]


@pytest.mark.slow
def test_single_fold_then_partial_aggregate_lists_missing_folds(cv):
    assert "fold-0" in cv["after_fold0"] and "fold-1" not in cv["after_fold0"]
    assert cv["partial"]["missing"] == ["fold-1", "fold-2"]
    assert cv["partial"]["metrics"]["cv"]["complete"] == ["fold-0"]
    assert 'id="missing-folds"' in cv["partial_html"]
    assert "fold-1, fold-2" in cv["partial_html"]


@pytest.mark.slow
def test_full_run_resumes_without_retraining_fold0(cv):
    assert cv["full"]["skipped"] == ["fold-0"]
    assert cv["full"]["trained"] == ["fold-1", "fold-2"]
    assert cv["full"]["missing"] == []
    assert cv["fold0_untouched"]
    assert cv["full"]["report"] == cv["dir"] / "cv_report.html"


@pytest.mark.slow
def test_rerun_skips_every_fold(cv):
    assert cv["again"]["trained"] == []
    assert cv["again"]["skipped"] == ["fold-0", "fold-1", "fold-2"]
    assert cv["unchanged"]  # no file of the CV directory was rewritten


@pytest.mark.slow
def test_folds_partition_patients_and_keep_the_holdout_out(cv):
    d = cv["dir"]
    table = pd.read_csv(d / "cohort.csv", dtype={"patient_key": str})
    assert "patient_id" not in table.columns
    holdout = set(table.loc[table["cv_split"] == "test", "patient_key"])
    assert holdout  # the tiny cohort has a hold-out test split (test_fraction 0.2)
    oof = pd.concat([pd.read_csv(d / f"fold-{i}" / "oof_predictions.csv", dtype={"patient_key": str})
                     for i in range(N_FOLDS)])
    # every non-test image is predicted out of fold exactly once, no hold-out image ever
    cv_images = set(table.loc[table["cv_split"] == "cv", "image_id"].astype(str))
    assert sorted(oof["image_id"].astype(str)) == sorted(cv_images)
    assert not holdout & set(oof["patient_key"])
    for i in range(N_FOLDS):
        split = pd.read_csv(d / f"fold-{i}" / "split.csv", dtype={"patient_key": str})
        per_patient = split.groupby("patient_key")["split"].nunique()
        assert per_patient.max() == 1  # no patient on two sides of a fold
        assert set(split.loc[split["split"] == "test", "patient_key"]) == holdout
        val = set(split.loc[split["split"] == "val", "patient_key"])
        assert val == set(oof.loc[oof["fold"] == i, "patient_key"])
        # the inner validation split: training-fold patients only, its sizes as planned and as reported
        inner = split[split["split"] == "inner_val"]
        assert set(inner["patient_key"]) and not set(inner["patient_key"]) & (val | holdout)
        planned = json.loads((d / "cv.json").read_text())["folds"][i]["counts"]
        metrics = json.loads((d / f"fold-{i}" / "metrics.json").read_text())["counts"]
        reported = json.loads((d / "cv_metrics.json").read_text())["per_fold"][i]["counts"]
        for part, name in (("train", "train"), ("inner_val", "inner_val"), ("val", "held_out")):
            rows = split[split["split"] == part]
            assert planned[name]["patients"] == rows["patient_key"].nunique() == reported[name]["patients"]
            assert planned[name]["images"] == len(rows) == metrics[name]["images"] == reported[name]["images"]


@pytest.mark.slow
def test_cv_metrics_match_an_independent_computation(cv):
    d = cv["dir"]
    m = json.loads((d / "cv_metrics.json").read_text())
    frames = []
    for i, row in enumerate(m["per_fold"]):
        f = pd.read_csv(d / f"fold-{i}" / "oof_predictions.csv", dtype={"patient_key": str})
        frames.append(f)
        how = m["method"]["patient_aggregation"]  # per unit (patient, or patient's visit), the run's rule
        pat = f.groupby("unit_key").agg(y=("y", "max"), p=("prob", how), raw=("prob_raw", how),
                                        t=("threshold", "first"))
        # ranking metrics from the uncalibrated scores (a saturating temperature can tie calibrated ones)
        assert row["roc_auc"] == pytest.approx(roc_auc_score(pat["y"], pat["raw"]))
        assert row["pr_auc"] == pytest.approx(average_precision_score(pat["y"], pat["raw"]))
        pred, y = pat["p"] >= pat["t"], pat["y"] == 1
        assert row["sensitivity"] == pytest.approx((pred & y).sum() / y.sum())
        assert row["specificity"] == pytest.approx((~pred & ~y).sum() / (~y).sum())
        assert row["brier"] == pytest.approx(np.mean((pat["p"] - pat["y"]) ** 2))
        if pred.nunique() == 2:  # mcc: one entry of the metric registry, summarized like the others
            assert row["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
    for k in kfold.CV_METRICS:
        vals = [r[k] for r in m["per_fold"] if r[k] is not None]
        assert m["summary"][k]["mean"] == pytest.approx(np.mean(vals))
        assert m["summary"][k]["sd"] == pytest.approx(np.std(vals, ddof=1))
    pooled = pd.concat(frames).groupby("unit_key").agg(y=("y", "max"), p=("prob", how), raw=("prob_raw", how))
    # pooled ranking from each fold's uncalibrated scores, never its calibrated prob (issue 30)
    assert m["pooled_oof"]["roc_auc"] == pytest.approx(roc_auc_score(pooled["y"], pooled["raw"]))
    assert m["pooled_oof"]["n"] == len(pooled)
    # the references pooled over the folds on the same units, next to the deep model's pooled AUC
    refs = m["pooled_references"]
    assert refs["deep"]["auc"] == pytest.approx(m["pooled_oof"]["roc_auc"])
    cls = pd.concat(frames).groupby("unit_key")["ref_image_statistics"].max().loc[pooled.index]
    assert refs["references"]["image_statistics"]["auc"] == pytest.approx(roc_auc_score(pooled["y"], cls))
    assert refs["references"]["image_statistics"]["delong_p"] is not None and refs["sentences"]
    html = (d / "cv_report.html").read_text(encoding="utf-8")
    assert 'id="cv-references"' in html and refs["sentences"][0].split(":")[0] in html


class _Cells(HTMLParser):
    """Text of every ``<td data-metric>`` cell, keyed by (table id, row data-fold, metric)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str, str], str] = {}
        self._table = self._row = self._metric = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr":
            self._row = a.get("data-fold")
        elif tag == "td" and "data-metric" in a:
            self._metric, self._text = a["data-metric"], []

    def handle_data(self, data):
        if self._metric:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._metric:
            self.cells[(self._table, self._row, self._metric)] = "".join(self._text).strip()
            self._metric = None


@pytest.mark.slow
def test_report_shows_the_numbers_of_cv_metrics_json(cv):
    from medxcept.report import fmt

    d = cv["dir"]
    m = json.loads((d / "cv_metrics.json").read_text())
    html = (d / "cv_report.html").read_text()
    parser = _Cells()
    parser.feed(html)
    cells = parser.cells
    checked = 0
    for k in kfold.CV_METRICS:
        for row in m["per_fold"]:
            assert cells[("cv-table", row["name"], k)] == fmt(row[k])
            checked += 1
        s = m["summary"][k]
        assert cells[("cv-table", "mean", k)] == fmt(s["mean"])
        assert cells[("cv-table", "sd", k)] == fmt(s["sd"])
        ci = "not defined" if s["low"] is None else f"{fmt(s['low'])}–{fmt(s['high'])}"
        assert cells[("cv-table", "ci", k)] == ci
        assert cells[("cv-table", "pooled", k)] == fmt(m["pooled_oof"][k])
        for row in m["holdout_per_fold"]:
            assert cells[("holdout-table", row["name"], k)] == fmt(row[k])
    assert checked == N_FOLDS * len(kfold.CV_METRICS)
    for row in m["per_fold"]:  # the fold sizes: patients (images) trained, inner-validated, held out
        c = row["counts"]
        for part in ("train", "inner_val", "held_out"):
            assert f'data-count="{part}">{c[part]["patients"]} ({c[part]["images"]})</td>' in html
    assert "20 % of the patients of its training folds" in m["method"]["threshold_and_calibration_fitted_on"]
    assert 'id="fold-sizes"' in html and "except 20 % of them" in html
    assert 'id="missing-folds"' not in html
    assert "NOT PRETRAINED" in html  # weights: none in the tiny cohort
    assert html.count("data:image/png;base64,") == 4  # pooled ROC/PR, reliability, clinical reading, training curves
    assert m["pooled_clinical"]["n_units"] == m["pooled_oof"]["n"] and 'id="clinical-figure"' in html
    assert "<script" not in html and "http://" not in html and "https://" not in html


@pytest.mark.slow
def test_marker_of_another_configuration_is_never_mixed(cv, tmp_path):
    copy = tmp_path / "cv"
    shutil.copytree(cv["dir"], copy)
    marker = copy / "fold-1" / "fold.json"
    data = json.loads(marker.read_text())
    real = data["config_hash"]
    data["config_hash"] = "deadbeef"
    marker.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as exc:
        cv_workflow.run_cv(cv["cfg"], cv["spec"], n_folds=N_FOLDS, cv_dir=copy, save_model=False)
    assert "deadbeef" in str(exc.value) and real in str(exc.value) and "fold-1" in str(exc.value)
    with pytest.raises(ConfigError, match="deadbeef"):
        cv_workflow.aggregate_cv(copy)


@pytest.mark.slow
def test_cv_directory_of_another_configuration_is_refused(cv):
    import dataclasses

    from medxcept.config import config_hash

    other = dataclasses.replace(cv["cfg"], seed=cv["cfg"].seed + 1)
    with pytest.raises(ConfigError) as exc:
        cv_workflow.run_cv(other, cv["spec"], n_folds=N_FOLDS, cv_dir=cv["dir"])
    msg = str(exc.value)
    assert config_hash(other) in msg and config_hash(cv["cfg"]) in msg


@pytest.mark.slow
def test_fold_killed_mid_training_continues_from_its_checkpoint(cv, tmp_path, monkeypatch, caplog):
    copy = tmp_path / "cv"
    shutil.copytree(cv["dir"], copy)
    shutil.rmtree(copy / "fold-2")
    fold1 = _mtimes(copy / "fold-1")
    import medxcept.models.train

    original = medxcept.models.train._History.on_epoch_end

    def killed_after_epoch_1(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt  # the process dies right after epoch 1's checkpoint

    monkeypatch.setattr(medxcept.models.train._History, "on_epoch_end", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        cv_workflow.run_fold(copy, 2, save_model=False)
    plan = kfold.load_plan(copy)
    assert kfold.fold_status(plan) == {"fold-0": "complete", "fold-1": "complete", "fold-2": "interrupted"}
    monkeypatch.setattr(medxcept.models.train._History, "on_epoch_end", original)

    logger = logging.getLogger("medxcept")
    logger.addHandler(caplog.handler)  # whatever another test's CLI call did to propagation
    try:
        with caplog.at_level(logging.INFO, logger="medxcept"):
            result = cv_workflow.run_cv(cv["cfg"], cv["spec"], n_folds=N_FOLDS, cv_dir=copy, save_model=False)
    finally:
        logger.removeHandler(caplog.handler)
    assert result["trained"] == ["fold-2"] and result["skipped"] == ["fold-0", "fold-1"]
    assert "fold-2 was interrupted after epoch 1: continuing from its checkpoint" in caplog.text
    assert _mtimes(copy / "fold-1") == fold1, "a complete fold is never retrained"
    resumed = pd.read_csv(copy / "fold-2" / "history.csv")
    reference = pd.read_csv(cv["dir"] / "fold-2" / "history.csv")
    assert list(resumed["epoch"]) == list(reference["epoch"])
    assert resumed["loss"].iloc[0] == pytest.approx(reference["loss"].iloc[0], rel=1e-4)  # epoch 1 kept, not redone
    assert not (copy / "fold-2" / "checkpoints").exists()


def _processes(plan, todo):
    """The ``processes`` executor (two spawned workers) on ``todo``."""
    runner = make_executor("local", 2)
    assert isinstance(runner, ProcessExecutor)
    return runner.run(plan, todo, save_model=False, in_process=cv_workflow._guarded_fold, worker=cv_workflow._worker)


def test_executors_by_name():
    assert set(EXECUTORS) >= {"local", "processes", "ray"}
    assert isinstance(make_executor("local"), LocalExecutor)
    assert make_executor("processes", 3) == ProcessExecutor(3)
    with pytest.raises(ConfigError, match="is not one of"):
        make_executor("slurm")
    with pytest.raises(ConfigError, match="jobs=0"):
        make_executor("local", 0)
    with pytest.raises(ConfigError, match="executor 'processes'"):
        make_executor("processes", options={"address": "x"})


@pytest.mark.slow
def test_spawned_worker_reports_errors_with_their_class(cv):
    plan = kfold.load_plan(cv["dir"])
    bogus = kfold.FoldTask(index=99, repeat=0, fold=99, name="fold-99")
    results = _processes(plan, [bogus])
    assert results[0]["status"] == "error" and results[0]["error_class"] == "ConfigError"
    assert "fold index 99 is out of range" in results[0]["message"]
    with pytest.raises(ConfigError, match="out of range"):
        cv_workflow._raise_worker_error(results[0])


@pytest.mark.slow
def test_failing_folds_are_recorded_and_the_cli_says_so_in_one_line(cv, tmp_path, monkeypatch, capsys):
    """Local executor: a fold that raises and a spawned fold whose process dies (os._exit) do not stop
    each other; each is recorded in its failed.json; the CLI exits 2 with one line naming the fold."""
    from pipelines.kfold import main

    copy = cv["dir"].parent / "faulty"
    shutil.copytree(cv["dir"], copy)
    for name in ("fold-1", "fold-2"):
        shutil.rmtree(copy / name)
    plan = kfold.load_plan(copy)
    monkeypatch.setenv("MEDXCEPT_FAULT", "fold_start:fold-1=raise,fold_start:fold-2=exit")
    results = _processes(plan, plan.tasks[1:])
    assert [(r["name"], r["error_class"]) for r in results] == [("fold-1", "InjectedFault"),
                                                                 ("fold-2", "WorkerCrashed")]
    failed = {n: json.loads((copy / n / kfold.FAILED).read_text()) for n in ("fold-1", "fold-2")}
    assert "injected fault at fold_start:fold-1" in failed["fold-1"]["message"]
    assert "exit code 1" in failed["fold-2"]["message"]
    assert kfold.fold_status(plan) == {"fold-0": "complete", "fold-1": "failed", "fold-2": "failed"}

    monkeypatch.setenv("MEDXCEPT_FAULT", "fold_start:fold-1=raise")
    rc = main(["--cohort", str(cv["cohort"]), "--folds", str(N_FOLDS), "--out-dir", str(cv["dir"].parent),
               "--cv-name", "faulty", "--fold", "1", "-q"])
    assert rc == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medxcept: error:")]
    assert len(err) == 1 and "1 of 1 fold(s) failed: fold-1 (InjectedFault" in err[0] and "failed.json" in err[0]
    assert "Traceback" not in err[0]


@pytest.mark.slow
def test_ray_fold_that_raises_or_dies_leaves_the_others_to_finish(cv, tmp_path, monkeypatch):
    """Ray: fold 1 raises, fold 2's worker process exits; fold 0 completes with the local fold's
    numbers, both failures are recorded, the error names both, and a re-run runs only them."""
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'medxcept[ray]'")
    monkeypatch.setenv("MEDXCEPT_FAULT", "fold_start:fold-1=raise,fold_start:fold-2=exit")
    with pytest.raises(kfold.FoldsFailedError) as caught:
        cv_workflow.run_cv(cv["cfg"], cv["spec"], n_folds=N_FOLDS, cv_dir=tmp_path / "ray-cv", executor="ray",
                           executor_options={"num_cpus": 1}, save_model=False)
    msg = str(caught.value)
    assert "2 of 3 fold(s) failed" in msg and "fold-1 (InjectedFault" in msg and "fold-2 (WorkerCrashed" in msg
    assert "done: fold-0" in msg and "\n" not in msg
    assert json.loads((tmp_path / "ray-cv" / "fold-2" / kfold.FAILED).read_text())["error_class"] == "WorkerCrashed"
    plan = kfold.load_plan(tmp_path / "ray-cv")
    assert kfold.fold_status(plan) == {"fold-0": "complete", "fold-1": "failed", "fold-2": "failed"}
    local = json.loads((cv["dir"] / "fold-0" / "metrics.json").read_text())
    remote = json.loads((tmp_path / "ray-cv" / "fold-0" / "metrics.json").read_text())
    for k in kfold.CV_METRICS:
        assert remote["oof"]["patient"][k] == pytest.approx(local["oof"]["patient"][k], abs=1e-4), k
    lp = pd.read_csv(cv["dir"] / "fold-0" / "oof_predictions.csv")
    rp = pd.read_csv(tmp_path / "ray-cv" / "fold-0" / "oof_predictions.csv")
    assert lp["image_id"].tolist() == rp["image_id"].tolist()
    np.testing.assert_allclose(rp["prob"], lp["prob"], atol=1e-4)
    # same layout whichever executor ran the fold
    assert sorted(p.name for p in (tmp_path / "ray-cv" / "fold-0").iterdir()) == \
        sorted(p.name for p in (cv["dir"] / "fold-0").iterdir())

    # the same command again runs exactly the failed folds (fold 0 is complete)
    monkeypatch.delenv("MEDXCEPT_FAULT")
    ran = []
    monkeypatch.setattr(cv_workflow, "run_fold", lambda cv_dir, i, **kw: ran.append(i) or {"name": f"fold-{i}",
                                                                                      "status": "trained"})
    result = cv_workflow.run_cv(cv["cfg"], cv["spec"], n_folds=N_FOLDS, cv_dir=tmp_path / "ray-cv", save_model=False)
    assert ran == [1, 2] and result["skipped"] == ["fold-0"]


@pytest.mark.slow
def test_a_fold_held_by_another_process_is_neither_run_nor_deleted(cv):
    from medxcept.run import DirectoryLock

    copy = cv["dir"].parent / "held"
    shutil.copytree(cv["dir"], copy)
    shutil.rmtree(copy / "fold-2")
    (copy / "fold-2").mkdir()  # another process is in its first epoch: no checkpoint yet
    (copy / "fold-2" / "config.yaml").write_text("being written")
    with DirectoryLock(copy / ".fold-2.lock", "x"):
        with pytest.raises(ConfigError, match="fold-2 of .* is in use by another process"):
            cv_workflow.run_fold(copy, 2, save_model=False)
    assert (copy / "fold-2" / "config.yaml").read_text() == "being written", "never deleted from under it"
    assert not (copy / "fold-2" / kfold.FAILED).exists()


def test_the_plan_audit_covers_every_repeat():
    """Issue 33: the plan audited repeat 0 only. Two patients' byte-identical images share fold 0 in
    repeat 0 but fall in folds 0 and 1 in repeat 1: the audit must name the repeat-1 leak."""
    from medxcept.config import RunConfig

    rows = []
    for p in range(8):
        for k in range(2):
            rows.append({"image_id": f"I-{p}{k}", "patient_key": f"P-{p}", "label": ["normal", "abnormal"][p % 2],
                         "y": p % 2, "sha256": f"{p}{k}" * 8, "cv_split": "cv",
                         "fold_r0": p % 2 if p > 1 else 0, "fold_r1": p % 2})
    table = pd.DataFrame(rows)
    table.loc[table["image_id"] == "I-10", "sha256"] = table.loc[table["image_id"] == "I-00", "sha256"].iloc[0]
    cfg = RunConfig()
    only_r0 = cv_workflow.audit_every_repeat(table, 1, fp=None, cfg=cfg)
    assert not [f for f in only_r0.findings if f.kind == "duplicate_across_splits"]
    both = cv_workflow.audit_every_repeat(table, 2, fp=None, cfg=cfg)
    leaks = [f for f in both.findings if f.kind == "duplicate_across_splits"]
    assert len(leaks) == 1 and leaks[0].severity == "error" and leaks[0].message.startswith("repeat 1: ")
    assert leaks[0].count == 1 and leaks[0].details[0]["repeat"] == 1
    with pytest.raises(Exception, match="duplicate across splits: 1"):
        both.raise_if_errors()


@pytest.mark.slow
def test_cv_json_holds_no_path(cv):
    """Issue 33: the plan kept the cohort file's absolute path in the shareable cv.json; it is in private/."""
    text = (cv["dir"] / "cv.json").read_text()
    assert str(cv["tmp"]) not in text and "cohort_file" not in json.loads(text)
    private = json.loads((cv["dir"] / "private" / kfold.PLAN_PATHS).read_text())
    assert private["cohort_file"] == str(Path(cv["cohort"]).resolve())
    assert kfold.load_plan(cv["dir"]).info["cohort_file"] == private["cohort_file"]
    assert str(cv["tmp"]) not in (cv["dir"] / "config.yaml").read_text()
