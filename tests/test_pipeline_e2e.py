"""End to end at tiny size: ingest both readers, split, audit, train, evaluate, report."""

from __future__ import annotations

import json
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from medxcept.cohort.table import load_cohort_spec
from medxcept.report import fmt

pytestmark = pytest.mark.slow


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.imgs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for k in ("src", "href"):
            v = a.get(k) or ""
            if v and not v.startswith(("data:", "#")):
                self.external.append(v)
        if tag == "script":
            self.external.append("<script>")

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The session's finished tiny run (tests/conftest.py: both readers, learning curve at 50 %)."""
    return tiny_run


def test_the_run_lock_is_released_when_run_pipeline_returns(run_dir):
    """flock locks are per open file: a lock kept after the run would refuse this same process."""
    from medxcept.run import LOCK, DirectoryLock

    assert (run_dir / LOCK).exists() and not DirectoryLock(run_dir / LOCK, "run").is_held()


def test_run_directory_holds_every_artifact(run_dir):
    for name in ("report.html", "metrics.json", "config.yaml", "cohort.csv", "split.csv", "exclusions.csv",
                 "audit.json", "history.csv", "predictions.csv", "model.keras", "calibration.json",
                 "versions.json", "augmentation.json", "private/patient_map.csv"):
        assert (run_dir / name).is_file(), name
    versions = json.loads((run_dir / "versions.json").read_text())
    assert len(versions["split_hash"]) == 64 and len(versions["data_hash"]) == 64
    assert versions["packages"]["keras"]
    # the suite trains its tiny test network (tests/conftest.py), and the run's provenance says so
    from medxcept.models import testnet

    assert versions["environment"].get("test_network") == (testnet.DESCRIPTION if testnet.active() else None)


def test_no_patient_in_two_splits_and_both_readers_used(run_dir):
    cohort = pd.read_csv(run_dir / "cohort.csv")
    assert cohort.groupby("patient_key")["split"].nunique().max() == 1
    assert set(cohort["split"]) == {"train", "val", "test"}
    assert set(cohort["reader"]) == {"dicom", "photo"}
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["cohort"]["files_found"] == m["cohort"]["files_used"] + m["cohort"]["files_excluded"]


def test_report_is_self_contained_html_holding_the_metrics(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    parser = _Collect()
    parser.feed(html)
    assert parser.tags[:1] == ["html"] and "table" in parser.tags
    assert parser.external == [], "the report must not load anything from outside"
    assert len(parser.imgs) >= 4 and all(s.startswith("data:image/png;base64,") for s in parser.imgs)
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("roc_auc", "sensitivity", "specificity", "precision", "mcc"):  # mcc: one registry entry
        assert fmt(m["test_patient"][key]) in html, key
        assert fmt(m["test_image"][key]) in html, key
    assert fmt(m["calibration_test"]["before"]["ece"]) in html
    assert fmt(m["calibration_test"]["after"]["ece"]) in html
    assert fmt(m["threshold"]["value"]) in html
    # not pretrained: said loudly
    assert m["run"]["pretrained"] is False
    assert "NOT PRETRAINED" in html and 'id="not-pretrained"' in html


def test_no_raw_patient_identifier_or_name_leaves_the_private_folder(run_dir):
    """Every file of a real run outside private/ (the model too) is free of the demo's patient IDs and
    names, file names and DICOM UIDs; they are all in private/ (tests/test_privacy.py does the same
    for a cohort with distinctive dates, ages, folders and excluded files)."""
    raw_ids = set(pd.read_csv(run_dir / "private" / "patient_map.csv")["patient_id"])
    assert raw_ids and all(i.startswith("DEMO-") for i in raw_ids)
    paths = pd.read_csv(run_dir / "private" / "image_paths.csv", dtype=str, keep_default_na=False)
    stems = {p.rsplit("/", 1)[-1].rsplit(".", 1)[0] for p in paths["path"]}
    uids = set(paths["study_uid"]) | set(paths["series_uid"]) | set(paths["sop_uid"])
    assert any(s.startswith("IM0") for s in stems) and "1.2.826.0.1.3680043.10.1138.3.1" in uids
    needles = ["DEMO-", "Demo^", "1.2.826.0.1.3680043.10.1138", *sorted(stems)]
    shared = [p for p in run_dir.rglob("*") if p.is_file() and "private" not in p.relative_to(run_dir).parts]
    assert {"report.html", "model.keras", "exclusions.csv", "learning_curve.csv"} <= {p.name for p in shared}
    for p in shared:
        if p.suffix == ".keras":  # a zip: its text members (the weights file is numbers only)
            with zipfile.ZipFile(p) as z:
                text = " ".join(z.read(n).decode("utf-8", "replace") for n in z.namelist() if n.endswith(".json"))
        else:
            text = p.read_bytes().decode("utf-8", errors="replace")
        leaked = [n for n in needles if n in text]
        assert not leaked, f"{p.name} holds {leaked[:3]}"


def test_threshold_comes_from_validation_and_metrics_match_sklearn(run_dir):
    from sklearn.metrics import roc_auc_score

    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["threshold"]["chosen_on"] == "validation"
    pred = pd.read_csv(run_dir / "predictions.csv")
    assert m["test_image"]["roc_auc"] == pytest.approx(roc_auc_score(pred["y"], pred["prob"]))
    # the Matthews coefficient (one entry of medxcept.evaluation.metrics.METRICS) reached metrics.json with its CI
    from sklearn.metrics import matthews_corrcoef

    pat = pred.groupby("unit_key").agg(y=("patient_y", "first"), p=("patient_prob", "first"))
    hard = (pat["p"] >= m["threshold"]["value"]).astype(int)
    if hard.nunique() == 2 and pat["y"].nunique() == 2:
        assert m["test_patient"]["mcc"] == pytest.approx(matthews_corrcoef(pat["y"], hard))
    assert "mcc" in m["test_patient_ci"]
    hist = pd.read_csv(run_dir / "history.csv")
    assert {"loss", "val_loss", "auc", "val_patient_auc"} <= set(hist.columns)


def test_learning_curve_retrains_on_half_the_patients_and_reports_it(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    lc = pd.read_csv(run_dir / "learning_curve.csv")
    assert list(lc["fraction"]) == [0.5, 1.0]
    assert lc["train_patients"].iloc[0] < lc["train_patients"].iloc[1] == m["cohort"]["per_split"]["train"]["patients"]
    # the 100 % point is the run itself
    assert lc["best_epoch"].iloc[1] == m["training"]["best_epoch"]
    assert lc["val_patient_auc"].iloc[1] == pytest.approx(m["training"]["val_auc_at_best"])
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert 'id="learning-curve-table"' in html and m["learning_curve"]["verdict"] in html


def test_report_has_a_cam_gallery_of_test_predictions(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert 'id="cam"' in html and 'alt="class-activation maps of correct and wrong test predictions"' in html


def test_report_states_the_class_balance_method_and_effective_shares(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    cb = m["class_balance"]
    assert cb["method"] == "weights" and 'id="class-balance"' in html
    train = pd.read_csv(run_dir / "cohort.csv").query("split == 'train'")
    counts = train["y"].value_counts().sort_index()
    assert [cb["counts"][str(i)] for i in range(2)] == counts.tolist()
    # class-weighted loss: each class carries half the loss mass
    assert [cb["effective"][str(i)] for i in range(2)] == pytest.approx([0.5, 0.5])
    assert fmt(cb["effective"]["0"]) in html


# ------------------------------------------------------------------ --reproduce (issue 21)


def test_reproduce_reruns_the_run_and_finds_the_same_split_audit_and_predictions(run_dir, capsys):
    """`--reproduce RUN_DIR` re-runs the finished run into RUN_DIR-reproduced and compares side by side."""
    import numpy as np

    from pipelines.retina import main

    versions = json.loads((run_dir / "versions.json").read_text())
    block = versions["reproduce"]
    assert block["seed"] == 0 and block["data_hash"] == versions["data_hash"]
    assert block["split_hash"] == versions["split_hash"] and block["config_hash"] == versions["config_hash"]
    assert block["backend"] == versions["device"]["backend"] and block["determinism"]["level"]
    assert main(["--reproduce", str(run_dir), "-q"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("same data, same split, same audit, predictions within tolerance 0.0001 (max |Δp| = ")
    new = Path(out[-2])
    assert new.parent == run_dir.parent and new.name.startswith("tiny-reproduced")
    rep = json.loads((new / "reproduce.json").read_text())
    assert rep["reproduced"] and rep["tolerance"] == 1e-4
    # the comparison itself, recomputed from the two predictions files
    a = pd.read_csv(run_dir / "predictions.csv").set_index("image_id")
    b = pd.read_csv(new / "predictions.csv").set_index("image_id").loc[a.index]
    dp = float(np.abs(a["prob"] - b["prob"]).max())
    assert rep["checks"]["predictions"]["max_abs_diff"] == dp <= 1e-4
    if block["determinism"]["level"] == "bitwise":  # what versions.json claims for this backend
        assert dp == 0.0 and (a["logit"] == b["logit"]).all()
    assert (pd.read_csv(run_dir / "split.csv").equals(pd.read_csv(new / "split.csv")))


def test_reproduce_stops_before_training_when_the_data_changed(run_dir, tmp_path, monkeypatch, capsys):
    """The run's cohort file now finds other data (one label changed): exit 2 with one line, no training."""
    from medxcept.cohort.ingest import data_root
    from medxcept.workflows.steps import materialize
    from pipelines.retina import main

    monkeypatch.setenv("MEDXCEPT_CACHE", str(tmp_path / "cache"))  # the demo generated afresh, then edited
    root = data_root(materialize(load_cohort_spec(run_dir.parent.parent / "tiny.yaml")))
    labels = pd.read_csv(root / "photos" / "labels.csv", dtype=str)
    labels.loc[0, "label"] = "referable" if labels.loc[0, "label"] == "non_referable" else "non_referable"
    labels.to_csv(root / "photos" / "labels.csv", index=False)
    assert main(["--reproduce", str(run_dir), "-q"]) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("medxcept:")]
    assert len(err) == 1 and "not reproducible: the data changed" in err[0] and "stopped before training" in err[0]
    assert "Traceback" not in captured.err
    new = next(p for p in run_dir.parent.glob("tiny-reproduced*") if str(p / "reproduce.json") in err[0])
    rep = json.loads((new / "reproduce.json").read_text())
    assert not rep["reproduced"] and not rep["checks"]["data"]["same"]
    assert "predictions" not in rep["checks"]
    assert not (new / "model.keras").exists() and not (new / "history.csv").exists()
    assert "DIFFERENT" in captured.out  # the side-by-side table


def _delong_p(y, a, b):
    """Two-sided DeLong p for AUC(a) - AUC(b) on the same cases (DeLong et al. 1988, placement values)."""
    import math

    import numpy as np

    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())

    def placements(s):
        x, z = s[pos][:, None], s[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()

    va, wa, auc_a = placements(a)
    vb, wb, auc_b = placements(b)
    s10, s01 = np.cov(np.vstack([va, vb])), np.cov(np.vstack([wa, wb]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    if not var > 1e-15:  # no spread: the difference is certain (p 0), or there is none (p 1)
        return 1.0 if auc_a == auc_b else 0.0
    return math.erfc(abs(auc_a - auc_b) / math.sqrt(var) / math.sqrt(2))


def test_summary_card_references_and_verdict_in_metrics_and_report(run_dir):
    """Issue 17: the deep model next to the reference models (paired test), the verdict's case, the
    chance statement; the report's summary card shows them."""
    m = json.loads((run_dir / "metrics.json").read_text())
    refs = m["references"]
    assert set(refs["references"]) == {"prevalence", "image_statistics", "acquisition"}
    assert refs["references"]["prevalence"]["auc"] == pytest.approx(0.5)
    assert refs["deep"]["auc"] == pytest.approx(m["test_patient"]["roc_auc"])  # both from uncalibrated scores
    # DeLong p of each reference against the deep model, recomputed here from predictions.csv with the
    # textbook O(m n) placement values (an implementation independent of evaluate.delong_test)
    preds = pd.read_csv(run_dir / "predictions.csv")
    assert m["patient_aggregation"] == "max"
    units = preds.groupby("unit_key").agg("max", numeric_only=True)
    for name, r in refs["references"].items():
        expected = _delong_p(units["y"].to_numpy(), units["prob_raw"].to_numpy(), units[f"ref_{name}"].to_numpy())
        assert r["delong_p"] == pytest.approx(expected, rel=1e-6, abs=1e-12), name
    assert m["training"]["case"] in ("collapsed", "did not learn", "underfitting", "overfitting", "fine")
    ci = m["test_patient_ci"]["roc_auc"]
    assert m["chance"]["chance"] is bool(ci["low"] <= 0.5 <= ci["high"])
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert 'id="summary-card"' in html and 'id="references-table"' in html
    assert [i["kind"] for i in m["summary_items"]].count("verdict") == 1
    first = m["summary_items"][0]
    if refs["classical_not_better"]:
        assert first["text"].startswith("The deep model is not better than the classical model")
    if m["chance"]["chance"]:
        assert 'class="sev-red kind-chance"' in html and "not distinguishable from chance" in html
    assert {"ref_prevalence", "ref_image_statistics", "ref_acquisition"} <= set(preds.columns)


def test_validation_predictions_recompute_threshold_and_temperature(run_dir):
    """val_predictions.csv (pseudonymized, validation patients only) gives back the run's threshold
    and temperature."""
    from medxcept.evaluation.calibrate import fit_temperature
    from medxcept.evaluation.metrics import choose_threshold
    from medxcept.evaluation.units import aggregate_by_patient

    val = pd.read_csv(run_dir / "val_predictions.csv")
    split = pd.read_csv(run_dir / "split.csv")
    cal = json.loads((run_dir / "calibration.json").read_text())
    m = json.loads((run_dir / "metrics.json").read_text())
    val_keys = set(pd.read_csv(run_dir / "cohort.csv").query("split == 'val'")["patient_key"])
    assert set(val["patient_key"]) == val_keys and len(val) == int((split["split"] == "val").sum())
    assert fit_temperature(val["logit"].to_numpy(), val["y"].to_numpy()) == pytest.approx(
        cal["calibrator"]["temperature"], rel=1e-6)
    # the run's units (patient, or patient's visit: unit_key) and rule
    _, vy, vp = aggregate_by_patient(val["unit_key"], val["y"], val["prob"], how=m["patient_aggregation"])
    assert choose_threshold(vy, vp, method=cal["threshold"]["method"]) == pytest.approx(cal["threshold"]["value"])
