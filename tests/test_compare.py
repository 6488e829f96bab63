"""Tests of medxcept.evaluation.compare and pipelines.compare on fake run directories (no training).

Each fake run is written the way :func:`medxcept.workflows.single.run_pipeline` writes one: predictions
with known probabilities, and a ``metrics.json`` computed from them with the project's own metric
functions, so the comparison's numbers can be checked against numpy, scikit-learn and
:mod:`medxcept.evaluation.metrics`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from medxcept.errors import ConfigError  # noqa: E402
from medxcept.evaluation import compare as cmp  # noqa: E402
from medxcept.evaluation.calibrate import brier, ece  # noqa: E402
from medxcept.evaluation.intervals import bootstrap_ci, delong_test, paired_bootstrap_auc
from medxcept.evaluation.metrics import binary_metrics  # noqa: E402

N_PATIENTS = 60
N_BOOT = 200
SPLIT_HASH = "a" * 64


def _cohort(n_patients: int = N_PATIENTS) -> pd.DataFrame:
    """Two images (L, R) per patient; half the patients positive."""
    keys = [f"P-{i:04d}" for i in range(n_patients)]
    y = np.array([i % 2 for i in range(n_patients)])
    rows = [{"image_id": f"I-{i:04d}{eye}", "patient_key": k, "laterality": eye, "y": int(y[i])}
            for i, k in enumerate(keys) for eye in "LR"]
    return pd.DataFrame(rows)


def write_run(root: Path, name: str, *, recipe: str, seed: int, signal: float, noise_seed: int,
              split_hash: str = SPLIT_HASH, cohort: pd.DataFrame | None = None, lr: float = 1e-3,
              best_epoch: int = 3) -> Path:
    """A finished binary run whose image probabilities are sigmoid(signal * (2y - 1) + N(0, 1))."""
    path = root / name
    path.mkdir(parents=True)
    test = (_cohort() if cohort is None else cohort).copy()
    rng = np.random.default_rng(noise_seed)
    y = test["y"].to_numpy()
    logit = signal * (2 * y - 1) + rng.normal(0.0, 1.0, len(y))
    test["label"] = np.where(y == 1, "referable", "non_referable")
    test["source"] = "cam"
    test["logit"] = logit
    test["prob_raw"] = 1 / (1 + np.exp(-1.5 * logit))  # over-confident before recalibration
    test["prob"] = 1 / (1 + np.exp(-logit))
    pat = test.groupby("patient_key").agg(patient_y=("y", "max"), patient_prob=("prob", "mean"))
    test = test.merge(pat, left_on="patient_key", right_index=True)
    test.to_csv(path / "predictions.csv", index=False)
    threshold = 0.5
    yp, pp = pat["patient_y"].to_numpy(), pat["patient_prob"].to_numpy()
    ci = bootstrap_ci(yp, pp, pat.index.to_numpy(), metrics=("roc_auc",), threshold=threshold, n_resamples=N_BOOT,
                      seed=seed)
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "stage": "s", "auc": [0.7, 0.85, 0.95, 0.99],
                            "loss": [0.7, 0.5, 0.3, 0.2], "val_auc": [0.6, 0.7, 0.8, 0.78],
                            "val_loss": [0.69, 0.6, 0.55, 0.6],
                            "val_patient_auc": [0.62, 0.7 + 0.01 * seed, 0.81, 0.79]})
    history.to_csv(path / "history.csv", index=False)
    metrics = {
        "run": {"id": name, "cohort": "fake", "recipe": recipe, "seed": seed, "pretrained": False,
                "weights_description": "NOT PRETRAINED"},
        "classes": ["non_referable", "referable"],
        "threshold": {"value": threshold, "method": "youden", "chosen_on": "validation"},
        "test_patient": binary_metrics(yp, pp, threshold=threshold),
        "test_patient_ci": {k: v.to_dict() for k, v in ci.items()},
        "calibration_test": {
            "before": {"ece": ece(y, test["prob_raw"], n_bins=10), "brier": brier(y, test["prob_raw"]), "n_bins": 10},
            "after": {"ece": ece(y, test["prob"], n_bins=10), "brier": brier(y, test["prob"]), "n_bins": 10}},
        "training": {"best_epoch": best_epoch, "seconds": 100.0 + seed},
        "hashes": {"split_hash": split_hash},
    }
    (path / "metrics.json").write_text(json.dumps(metrics, default=float))
    (path / "versions.json").write_text(json.dumps({"split_hash": split_hash}))
    split = pd.concat([test[["image_id", "patient_key"]].assign(split="test"),
                       pd.DataFrame({"image_id": ["T-1", "T-2"], "patient_key": ["P-x", "P-y"], "split": "train"})])
    split.assign(fold="").to_csv(path / "split.csv", index=False)
    config = {"cohort_name": "fake", "seed": seed, "split": {"seed": 0}, "train": {"recipe": recipe,
                                                                                   "learning_rate": lr}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def _two_groups(root: Path, *, signal_a: float, signal_b: float, seeds=(0, 1, 2)) -> list[Path]:
    dirs = [write_run(root, f"a-s{s}", recipe="baseline", seed=s, signal=signal_a, noise_seed=100 + s) for s in seeds]
    dirs += [write_run(root, f"b-s{s}", recipe="default", seed=s, signal=signal_b, noise_seed=200 + s) for s in seeds]
    return dirs


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A weak recipe (signal 0.4) against a strong one (signal 2.5), three seeds each."""
    root = tmp_path_factory.mktemp("big")
    runs = [cmp.load_run(p) for p in _two_groups(root, signal_a=0.4, signal_b=2.5)]
    return runs, cmp.compare(runs, n_resamples=N_BOOT, seed=0)


@pytest.fixture(scope="module")
def same(tmp_path_factory):
    """Two recipes drawn from the same distribution (signal 1.0), three seeds each."""
    root = tmp_path_factory.mktemp("same")
    runs = [cmp.load_run(p) for p in _two_groups(root, signal_a=1.0, signal_b=1.0)]
    return runs, cmp.compare(runs, n_resamples=N_BOOT, seed=0)


# ---------------------------------------------------------------------------------- per run


def test_per_run_numbers_are_the_runs_own(big):
    runs, result = big
    r = runs[0]
    m = json.loads((r.path / "metrics.json").read_text())
    row = result["runs"][0]
    assert (row["name"], row["group"], row["seed"]) == ("a-s0", "baseline", 0)
    for k in ("roc_auc", "pr_auc", "sensitivity", "specificity", "mcc"):  # mcc: read from the metric registry
        assert row[k] == pytest.approx(m["test_patient"][k])
    assert "mcc" in result["comparisons"][0]["verdicts"]
    assert row["roc_auc_low"] == pytest.approx(m["test_patient_ci"]["roc_auc"]["low"])
    assert row["ece_after"] == pytest.approx(m["calibration_test"]["after"]["ece"])
    assert row["brier_before"] == pytest.approx(m["calibration_test"]["before"]["brier"])
    # gaps at the kept epoch 3 of history.csv: auc 0.95 - val_patient_auc 0.81, loss 0.3 - val_loss 0.55
    assert row["auc_gap"] == pytest.approx(0.95 - 0.81)
    assert row["loss_gap"] == pytest.approx(0.3 - 0.55)
    assert (row["best_epoch"], row["epochs_run"], row["train_seconds"]) == (3, 4, 100.0)
    assert len(r.patients) == N_PATIENTS and len(r.images) == 2 * N_PATIENTS


def test_group_means_and_sds_match_numpy(big):
    runs, result = big
    for group in ("baseline", "default"):
        members = [r for r in runs if r.group == group]
        assert result["groups"][group]["seeds"] == [0, 1, 2]
        for k in ("roc_auc", "sensitivity", "ece_after", "auc_gap", "train_seconds"):
            v = np.array([r.summary[k] for r in members])
            s = result["groups"][group]["metrics"][k]
            assert s["mean"] == pytest.approx(v.mean())
            assert s["sd"] == pytest.approx(v.std(ddof=1))
            assert (s["min"], s["max"]) == (pytest.approx(v.min()), pytest.approx(v.max()))
        widths = [r.summary["roc_auc_high"] - r.summary["roc_auc_low"] for r in members]
        assert result["groups"][group]["roc_auc_ci_width"] == pytest.approx(np.mean(widths))
    a = [r.summary["roc_auc"] for r in runs if r.group == "baseline"]
    b = [r.summary["roc_auc"] for r in runs if r.group == "default"]
    pooled = np.sqrt((np.var(a, ddof=1) * 2 + np.var(b, ddof=1) * 2) / 4)
    v = result["comparisons"][0]["verdicts"]["roc_auc"]
    assert v["pooled_sd"] == pytest.approx(pooled)
    assert v["mean_diff"] == pytest.approx(np.mean(b) - np.mean(a))


# ---------------------------------------------------------------------------------- paired tests


def test_delong_and_paired_bootstrap_match_the_evaluate_functions(big):
    runs, result = big
    c = result["comparisons"][0]
    assert (c["a"], c["b"], c["seeds"]) == ("baseline", "default", [0, 1, 2])
    for i, pair in enumerate(c["pairs"]):
        ra = next(r for r in runs if r.group == "baseline" and r.seed == pair["seed"])
        rb = next(r for r in runs if r.group == "default" and r.seed == pair["seed"])
        preds_a = pd.read_csv(ra.path / "predictions.csv").drop_duplicates("patient_key").sort_values("patient_key")
        preds_b = pd.read_csv(rb.path / "predictions.csv").drop_duplicates("patient_key").sort_values("patient_key")
        y = preds_a["patient_y"].to_numpy()
        ref = delong_test(y, preds_b["patient_prob"], preds_a["patient_prob"])
        assert pair["delong"]["p_value"] == pytest.approx(ref["p_value"], rel=1e-12, abs=1e-300)
        assert pair["delong"]["diff"] == pytest.approx(ref["diff"])
        assert pair["metrics"]["roc_auc"]["diff"] == pytest.approx(rb.summary["roc_auc"] - ra.summary["roc_auc"])
        boot = paired_bootstrap_auc(y, preds_b["patient_prob"], preds_a["patient_prob"], n_resamples=N_BOOT, seed=i)
        assert pair["paired_bootstrap_auc"]["diff"] == pytest.approx(boot["diff"])
        assert pair["paired_bootstrap_auc"]["p_value"] == pytest.approx(boot["p_value"])


def test_discrimination_is_compared_on_uncalibrated_scores(tmp_path):
    """Two runs with the same uncalibrated scores, one of them recalibrated by a Platt fit whose
    slope came out negative (its calibrated probabilities rank the patients backwards): their AUCs
    must compare equal, as they do on the scores a run writes as ``prob_raw``."""
    a = write_run(tmp_path, "a-s0", recipe="baseline", seed=0, signal=1.5, noise_seed=7)
    b = write_run(tmp_path, "b-s0", recipe="default", seed=0, signal=1.5, noise_seed=7)
    for path, flip in ((a, False), (b, True)):
        preds = pd.read_csv(path / "predictions.csv")
        pat = preds.groupby("patient_key")["prob_raw"].mean().rename("patient_prob_raw")
        preds = preds.drop(columns=[c for c in ("patient_prob_raw",) if c in preds]).merge(
            pat, left_on="patient_key", right_index=True)
        if flip:
            preds["prob"], preds["patient_prob"] = 1 - preds["prob"], 1 - preds["patient_prob"]
        preds.to_csv(path / "predictions.csv", index=False)
    ra, rb = cmp.load_run(a), cmp.load_run(b)
    pair = cmp.paired_tests(ra, rb, n_resamples=N_BOOT, seed=0)
    assert pair["delong"]["diff"] == pytest.approx(0.0, abs=1e-12)
    assert pair["metrics"]["pr_auc"]["diff"] == pytest.approx(0.0, abs=1e-12)
    # on the calibrated probabilities the flipped run would look like the mirror image of the other
    y = ra.patients["y"].to_numpy()
    assert delong_test(y, rb.patients["prob"], ra.patients["prob"])["diff"] < -0.5


def test_bootstrapped_metrics_on_the_full_data_equal_the_runs_metrics(big):
    runs, _ = big
    a, b = runs[0], runs[3]
    res = cmp.paired_tests(a, b, n_resamples=N_BOOT, seed=0)
    for run, side in ((a, "a"), (b, "b")):
        for k in ("pr_auc", "sensitivity", "specificity", "ece_after", "brier_after"):
            assert res["metrics"][k][side] == pytest.approx(run.summary[k]), k
    assert res["metrics"]["sensitivity"]["diff"] == pytest.approx(b.summary["sensitivity"] - a.summary["sensitivity"])
    for k in ("pr_auc", "ece_after"):
        lo, hi = res["metrics"][k]["ci"]
        assert lo <= hi and res["metrics"][k]["se"] > 0 and 0 <= res["metrics"][k]["p_value"] <= 1


def test_weighted_metrics_equal_explicit_resamples():
    """A resample as integer weights gives scikit-learn's AP (:func:`medxcept.evaluation.intervals.weighted_average_precision`,
    the one weighted AP) and calibrate's ECE on the repeated rows."""
    from medxcept.evaluation.intervals import weighted_average_precision

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40).astype(float)
    s = np.round(rng.random(40), 1)  # ties
    w = rng.multinomial(40, np.full(40, 1 / 40), size=5).astype(float)
    ap = weighted_average_precision(y, s, w)
    for row, value in zip(w, ap, strict=False):
        rep = np.repeat(np.arange(40), row.astype(int))
        assert value == pytest.approx(average_precision_score(y[rep], s[rep]))
    cohort = _cohort(20)
    cohort["prob"] = rng.random(40)
    run = cmp.RunRecord(name="r", path=Path("."), group="g", seed=0, summary={"threshold": 0.5},
                        patients=pd.DataFrame({"patient_key": sorted(cohort["patient_key"].unique()),
                                               "y": cohort.groupby("patient_key")["y"].max().to_numpy(),
                                               "prob": cohort.groupby("patient_key")["prob"].mean().to_numpy()}),
                        images=cohort, history=pd.DataFrame(), split_hash="", test_hash="", n_bins=10, config={})
    counts = rng.multinomial(20, np.full(20, 1 / 20), size=3).astype(float)
    codes = pd.Categorical(cohort["patient_key"], categories=run.patients["patient_key"]).codes
    got = cmp._weighted_metrics(counts, counts[:, codes], run)
    for i, row in enumerate(counts[:, codes]):
        rep = np.repeat(np.arange(40), row.astype(int))
        assert got["ece_after"][i] == pytest.approx(ece(cohort["y"].to_numpy()[rep], cohort["prob"].to_numpy()[rep],
                                                        n_bins=10))
        assert got["brier_after"][i] == pytest.approx(brier(cohort["y"].to_numpy()[rep],
                                                            cohort["prob"].to_numpy()[rep]))


# ---------------------------------------------------------------------------------- verdicts


def test_noise_verdict_rule_by_hand():
    v = cmp.noise_verdict(0.10, 0.02, [0.01, 0.03, 0.2])  # 0.10 > 0.04 and 2 of 3 significant
    assert v["verdict"] == cmp.LARGER and v["larger"] and v["n_significant"] == 2
    assert v["noise_threshold"] == pytest.approx(0.04)
    assert cmp.noise_verdict(0.10, 0.06, [0.01, 0.01, 0.01])["verdict"] == cmp.WITHIN  # 0.10 < 0.12
    assert cmp.noise_verdict(0.10, 0.02, [0.01, 0.2, 0.3])["verdict"] == cmp.WITHIN  # 1 of 3 is not most
    assert cmp.noise_verdict(0.10, 0.02, [0.01, 0.04])["verdict"] == cmp.LARGER  # 2 of 2
    assert cmp.noise_verdict(0.10, 0.02, [0.01, 0.2])["verdict"] == cmp.WITHIN  # 1 of 2 is not more than half
    # a significant pair in the opposite direction does not count
    assert cmp.noise_verdict(0.10, 0.02, [0.01, 0.01, 0.5], [0.1, -0.1, 0.1])["verdict"] == cmp.WITHIN
    assert cmp.noise_verdict(-0.10, 0.02, [0.01, 0.01], [-0.1, -0.1])["verdict"] == cmp.LARGER
    none = cmp.noise_verdict(0.10, None, [0.01])
    assert none["verdict"] == cmp.NOT_MEASURED and none["larger"] is None
    assert cmp.noise_verdict(0.10, 0.02, [])["verdict"] == cmp.NO_PAIRS
    assert cmp.pooled_sd([1.0, 3.0], [2.0]) == pytest.approx(np.std([1.0, 3.0], ddof=1))
    assert cmp.pooled_sd([1.0], [2.0]) is None


def test_planted_big_difference_is_larger_than_noise(big):
    _, result = big
    v = result["comparisons"][0]["verdicts"]
    assert v["roc_auc"]["mean_diff"] > 0.2
    assert v["roc_auc"]["verdict"] == cmp.LARGER and v["roc_auc"]["n_significant"] == 3
    assert v["brier_after"]["verdict"] == cmp.LARGER and v["brier_after"]["mean_diff"] < 0
    assert "difference larger than run-to-run noise" in v["roc_auc"]["sentence"]
    assert "default - baseline" in v["roc_auc"]["sentence"]


def test_same_distribution_is_within_noise(same):
    _, result = same
    v = result["comparisons"][0]["verdicts"]
    for m in cmp.VERDICT_METRICS:
        assert v[m]["verdict"] == cmp.WITHIN, (m, v[m]["sentence"])
    assert v["roc_auc"]["n_significant"] <= 1


def test_one_run_per_group_cannot_measure_noise(tmp_path):
    dirs = _two_groups(tmp_path, signal_a=0.4, signal_b=2.5, seeds=(0,))
    result = cmp.compare([cmp.load_run(p) for p in dirs], n_resamples=50)
    v = result["comparisons"][0]["verdicts"]["roc_auc"]
    assert v["verdict"] == cmp.NOT_MEASURED and v["n_pairs"] == 1
    assert result["groups"]["baseline"]["metrics"]["roc_auc"]["sd"] is None


def test_runs_pair_by_seed_and_group_by_a_config_key(tmp_path):
    d = [write_run(tmp_path, "r1", recipe="default", seed=0, signal=1.0, noise_seed=1, lr=1e-3),
         write_run(tmp_path, "r2", recipe="default", seed=1, signal=1.0, noise_seed=2, lr=1e-3),
         write_run(tmp_path, "r3", recipe="default", seed=1, signal=1.0, noise_seed=3, lr=1e-4),
         write_run(tmp_path, "r4", recipe="default", seed=5, signal=1.0, noise_seed=4, lr=1e-4)]
    runs = [cmp.load_run(p, group_by="train.learning_rate") for p in d]
    assert [r.group for r in runs] == ["0.001", "0.001", "0.0001", "0.0001"]
    c = cmp.compare(runs, n_resamples=50)["comparisons"][0]
    assert c["seeds"] == [1] and c["unpaired_seeds"] == [0, 5]
    assert (c["pairs"][0]["run_a"], c["pairs"][0]["run_b"]) == ("r2", "r3")
    with pytest.raises(ConfigError, match="no key 'train.nope'"):
        cmp.load_run(d[0], group_by="train.nope")
    # same recipe and seed twice: pairing by seed is ambiguous
    with pytest.raises(ConfigError, match="more than one run with seed 1"):
        cmp.compare([cmp.load_run(p) for p in d], n_resamples=50)


# ---------------------------------------------------------------------------------- errors


def test_different_test_sets_raise_naming_runs_and_hashes(tmp_path):
    a = write_run(tmp_path, "run-a", recipe="default", seed=0, signal=1.0, noise_seed=1)
    b = write_run(tmp_path, "run-b", recipe="baseline", seed=0, signal=1.0, noise_seed=2, split_hash="b" * 64)
    with pytest.raises(ConfigError) as info:
        cmp.compare([cmp.load_run(a), cmp.load_run(b)])
    msg = str(info.value)
    assert "run-a" in msg and "run-b" in msg and "a" * 12 in msg and "b" * 12 in msg
    # same split hash, but another set of test images
    c = write_run(tmp_path, "run-c", recipe="baseline", seed=0, signal=1.0, noise_seed=3, cohort=_cohort(50))
    with pytest.raises(ConfigError, match="not evaluated on the same test set"):
        cmp.compare([cmp.load_run(a), cmp.load_run(c)])


def test_unfinished_or_inconsistent_run_directories_raise(tmp_path):
    a = write_run(tmp_path, "run-a", recipe="default", seed=0, signal=1.0, noise_seed=1)
    (a / "history.csv").unlink()
    with pytest.raises(ConfigError, match="missing history.csv"):
        cmp.load_run(a)
    b = write_run(tmp_path, "run-b", recipe="default", seed=0, signal=1.0, noise_seed=1)
    pd.read_csv(b / "predictions.csv").iloc[:-1].to_csv(b / "predictions.csv", index=False)
    with pytest.raises(ConfigError, match="inconsistent"):
        cmp.load_run(b)


# ---------------------------------------------------------------------------------- output and CLI


def test_cli_writes_an_escaped_self_contained_report(tmp_path):
    from pipelines.compare import main

    evil = "<script>alert('x')</script>"
    dirs = [write_run(tmp_path, f"a{s}", recipe=evil, seed=s, signal=0.5, noise_seed=s) for s in (0, 1)]
    dirs += [write_run(tmp_path, f"<b>b{s}", recipe="default", seed=s, signal=2.0, noise_seed=10 + s) for s in (0, 1)]
    out = tmp_path / "out"
    assert main([str(d) for d in dirs] + ["--out", str(out), "--name", "cmp", "--n-bootstrap", "50", "-q"]) == 0
    html = (out / "cmp" / "comparison.html").read_text()
    assert "<script" not in html and "<b>b0" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html and "&lt;b&gt;b0" in html
    assert html.count("data:image/png;base64,") == 2  # curves and AUC-per-run, inlined
    assert 'id="confounders"' not in html  # only the recipe (the grouping key) and the seed differ
    assert "http://" not in html and "https://" not in html
    data = json.loads((out / "cmp" / "comparison.json").read_text())
    assert [g for g in data["groups"]] == [evil, "default"]
    assert data["comparisons"][0]["verdicts"]["roc_auc"]["verdict"] in (cmp.LARGER, cmp.WITHIN)
    assert data["group_by"] == "train.recipe" and "train.recipe" in data["differing_config"]


def test_cli_exit_status_2_on_mismatched_test_sets(tmp_path, capsys):
    from pipelines.compare import main

    a = write_run(tmp_path, "run-a", recipe="default", seed=0, signal=1.0, noise_seed=1)
    b = write_run(tmp_path, "run-b", recipe="baseline", seed=0, signal=1.0, noise_seed=2, split_hash="c" * 64)
    assert main([str(a), str(b), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medxcept: error:") and "c" * 12 in err and "Traceback" not in err
    assert main([str(a)]) == 2


def test_compare_ranks_logits_up_to_40(tmp_path):
    """Runs whose logits reach 40 (float32 sigmoid: all 1.0): compare's DeLong and paired bootstrap
    rank the patients' maximum logits, as the run's prediction table writes them (``patient_logit``),
    and the verdict's p-values are those."""
    from medxcept.evaluation.assess import prediction_table

    dirs = []
    for name, noise in (("a-s0", 7), ("b-s0", 8)):
        path = write_run(tmp_path, name, recipe=name[0], seed=0, signal=1.0, noise_seed=noise)
        preds = pd.read_csv(path / "predictions.csv")
        rng = np.random.default_rng(noise)
        z = np.clip(28.0 + 5.0 * preds["y"] + rng.normal(0, 5.0, len(preds)), 17, 40).astype(np.float32)
        frame = preds[["image_id", "patient_key", "laterality", "y", "label", "source"]].assign(
            logit=z, prob_raw=(1 / (1 + np.exp(-z))).astype(np.float32), prob=1 / (1 + np.exp(-z / 8.0)))
        prediction_table(frame, ("n", "p"), "max", "patient").to_csv(path / "predictions.csv", index=False)
        dirs.append(path)
    ra, rb = cmp.load_run(dirs[0]), cmp.load_run(dirs[1])
    pat = {}
    for r, path in ((ra, dirs[0]), (rb, dirs[1])):
        p = pd.read_csv(path / "predictions.csv")
        assert (p["prob_raw"] == 1.0).all()  # saturated: ranking them gives 0.5
        pat[r.name] = p.groupby("patient_key").agg(y=("y", "max"), z=("logit", "max"))
    y = pat["a-s0"]["y"].to_numpy()
    dl = delong_test(y, pat["b-s0"]["z"], pat["a-s0"]["z"])
    res = cmp.paired_tests(ra, rb, n_resamples=N_BOOT, seed=0)
    assert res["metrics"]["roc_auc"]["test"] == "DeLong"
    assert res["metrics"]["roc_auc"]["diff"] == pytest.approx(dl["diff"], abs=1e-12)
    assert res["metrics"]["roc_auc"]["p_value"] == pytest.approx(dl["p_value"], rel=1e-9)
    assert roc_auc_score(y, pat["a-s0"]["z"]) > 0.75  # the logits rank; the saturated scores tie
    boot = paired_bootstrap_auc(y, pat["b-s0"]["z"], pat["a-s0"]["z"], pat["a-s0"].index.to_numpy(),
                                n_resamples=N_BOOT, seed=0)
    assert res["paired_bootstrap_auc"]["diff"] == pytest.approx(boot["diff"], abs=1e-12)
    verdict = cmp.compare([ra, rb], n_resamples=N_BOOT, seed=0)
    roc = verdict["comparisons"][0]["verdicts"]["roc_auc"]
    assert roc["test"] == "DeLong" and roc["n_significant"] == int(dl["p_value"] < 0.05)
