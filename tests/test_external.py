"""External validation (``pipelines.retina evaluate``): a trained run applied unchanged to another cohort.

The slow tests use the session's one trained TINY_COHORT run (:func:`trained_tiny_run`, shared with
``test_report_render.py``, ``test_pipeline_e2e.py`` and ``test_faults.py``), then evaluate it on a second tiny cohort
generated with another seed, and on its own cohort (which must be reported as overlapping).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medxcept.cohort.table import load_cohort_spec
from medxcept.config import load_config
from medxcept.errors import ConfigError


def trained_tiny_run(base: Path) -> Path:
    """The run directory of TINY_COHORT (24 patients, seed 3) trained once per pytest session:
    :func:`tests.conftest.finished_tiny_run`, shared with ``test_pipeline_e2e.py``,
    ``test_faults.py`` and ``test_report_render.py``. ``base`` is a folder in the session's base
    temp directory (its parent is where the shared run lives).
    """
    from tests.conftest import finished_tiny_run

    return finished_tiny_run(Path(base).parent)


def _cohort_file(d: Path, n_patients: int, seed: int) -> Path:
    from tests.conftest import TINY_COHORT

    path = d / f"tiny-{n_patients}-{seed}.yaml"
    path.write_text(TINY_COHORT.format(n_patients=n_patients, seed=seed), encoding="utf-8")
    return path


# ------------------------------------------------------------------ fast: no model


def _fake_run_dir(d: Path, skip: str) -> Path:
    d.mkdir(parents=True)
    for name in ("model.keras", "config.yaml", "calibration.json", "cohort.csv", "metrics.json"):
        if name != skip:
            (d / name).write_text("{}\n", encoding="utf-8")
    return d


def test_run_dir_without_model_is_a_config_error_naming_it(tmp_path, session_cache):
    from medxcept.workflows.external import evaluate_run

    run = _fake_run_dir(tmp_path / "run", skip="model.keras")
    spec = load_cohort_spec(_cohort_file(tmp_path, 16, 11))
    cfg = load_config(cohort_defaults=spec.defaults, overrides={"out_dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError) as info:
        evaluate_run(run, spec, cfg)
    assert f"{run} is not a complete training run: missing model.keras. " in str(info.value)
    assert not (tmp_path / "out").exists(), "nothing may be written before the run dir is checked"


def test_cli_evaluate_of_an_incomplete_run_exits_2_naming_every_missing_file(tmp_path, session_cache, capsys):
    from pipelines.retina import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n", encoding="utf-8")
    cohort = _cohort_file(tmp_path, 16, 11)
    root = logging.getLogger("medxcept")
    saved = (root.handlers[:], root.level, root.propagate)
    try:
        rc = main(["evaluate", "--run", str(run), "--cohort", str(cohort),
                   "--out-dir", str(tmp_path / "out")])
    finally:
        root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]
    err = capsys.readouterr().err
    assert rc == 2
    assert "missing model.keras, calibration.json, cohort.csv, metrics.json. " in err  # not config.yaml
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_run_dir_is_a_config_error(tmp_path):
    from medxcept.evaluation.external import check_run_dir

    with pytest.raises(ConfigError, match="run directory not found"):
        check_run_dir(tmp_path / "nope")


def test_external_config_keeps_the_model_defining_sections_of_the_source_run():
    from medxcept.evaluation.external import external_config

    src = load_config(overrides={"preprocess.image_px": 71, "eval.calibration": "temperature", "seed": 1,
                                 "eval.n_bootstrap": 50})
    new = load_config(overrides={"preprocess.image_px": 299, "preprocess.clahe": True,
                                 "eval.calibration": "platt", "seed": 7, "eval.n_bootstrap": 200,
                                 "out_dir": "elsewhere"})
    cfg, diffs = external_config(src, new)
    assert cfg.preprocess == src.preprocess and cfg.model == src.model and cfg.train == src.train
    assert cfg.eval.calibration == "temperature" and cfg.eval.threshold == src.eval.threshold
    assert (cfg.seed, cfg.eval.n_bootstrap, cfg.out_dir) == (7, 200, "elsewhere")  # reporting choices: new
    text = "\n".join(diffs)
    assert "image_px=71 (this cohort's config: 299)" in text and "clahe=False" in text
    assert "eval.calibration: the source run's 'temperature' wins (this cohort's config: 'platt')" in text
    same, none = external_config(src, src)
    assert none == [] and same == src


def test_source_overlap_counts_identical_files_and_shared_pseudonyms():
    from medxcept.evaluation.external import source_overlap

    table = pd.DataFrame({"image_id": ["a", "b", "c"], "sha256": ["h1", "h2", "h3"],
                          "patient_key": ["P-1", "P-2", "P-3"]})
    source = pd.DataFrame({"sha256": ["h2", "h3", "h9"], "split": ["train", "test", "val"],
                           "patient_key": ["P-3", "P-8", "P-9"]})
    overlap, findings = source_overlap(table, source, "run-x")
    assert overlap["images_same_sha256"] == 2 and overlap["image_ids"] == ["b", "c"]
    assert overlap["by_source_split"] == {"test": 1, "train": 1}
    assert overlap["patients_same_key"] == 1
    kinds = {f.kind: f for f in findings}
    assert kinds["external_overlap"].severity == "warning" and kinds["external_overlap"].count == 2
    assert "run-x" in kinds["external_overlap"].message
    # issue 33: shared pseudonyms are a warning, with the sentence that says when they mean the same people
    assert kinds["external_patient_keys"].severity == "warning"
    assert "the same people, unless the two cohorts number patients independently" in \
        kinds["external_patient_keys"].message
    clean, none = source_overlap(table, source.iloc[[2]], "run-x")
    assert clean["images_same_sha256"] == 0 and clean["patients_same_key"] == 0 and none == []


def _preprocessed(rgbs: list[np.ndarray], px: int = 96) -> np.ndarray:
    from medxcept.images.preprocess import PreprocessConfig, preprocess

    cfg = PreprocessConfig(image_px=px)
    return np.stack([preprocess(np.asarray(a, np.float32) / 255.0, cfg, modality="fundus") for a in rgbs])


def _decoded_jpeg(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_near_copies_pairs_altered_copies_with_their_originals_only(tmp_path):
    """Issue 33: copies of training images (cropped 5 %, resized x1.35, JPEG 70) are paired with their own
    originals across the two sets; new images of the same generator are not; the finding is an error
    under --on-leak error and a warning under warn; no fingerprints: an info finding (byte check only)."""
    from medxcept.cohort.demo import CAMERAS, paint_fundus
    from medxcept.evaluation.external import (
        keep_source_fingerprints,
        load_source_fingerprints,
        near_copies,
        near_copy_findings,
    )
    from medxcept.integrity.fingerprints import fingerprints
    from medxcept.run import RunDir
    from medxcept.testing.copies import altered_copy

    eyes = [paint_fundus(np.random.default_rng([5, k]), CAMERAS[k % 2], laterality="LR"[k % 2],
                         referable=k % 3 == 0, scale=0.6)[0] for k in range(22)]
    src_images = _preprocessed(eyes[:12])
    table = pd.DataFrame({"image_id": [f"I-{k:02d}" for k in range(12)], "sha256": [f"s{k}" for k in range(12)],
                          "frame": 0, "split": ["train"] * 8 + ["val"] * 2 + ["test"] * 2})
    run = RunDir(tmp_path / "run")
    keep_source_fingerprints(run, table, src_images, fingerprints(src_images))
    source = load_source_fingerprints(run.path)
    assert source["image_id"] == [f"I-{k:02d}" for k in range(10)]  # training and validation only
    copied = [1, 4, 9, 10]  # 10 is a test image: the model never trained on it, not a copy to report
    ext = [_decoded_jpeg(altered_copy(eyes[k])) for k in copied] + eyes[12:]
    ext_images = _preprocessed(ext)
    ext_table = pd.DataFrame({"image_id": [f"E-{k:02d}" for k in range(len(ext))],
                              "sha256": [f"e{k}" for k in range(len(ext))], "frame": 0})
    pairs = near_copies(source, ext_table, fingerprints(ext_images), 10)
    assert sorted(zip(pairs["image_id"], pairs["source_image_id"])) == [("E-00", "I-01"), ("E-01", "I-04"),
                                                                       ("E-02", "I-09")]
    assert set(pairs["match"]) == {"near"} and (pairs["inliers"] > 0).all()
    block, findings = near_copy_findings(pairs, len(ext), "run-x", "error")
    assert block["confirmed_pairs"] == 3 and block["by_source_split"] == {"train": 2, "val": 1}
    assert [f.severity for f in findings] == ["error"] and "3 confirmed pair(s)" in findings[0].message
    assert {d["image_id"] for d in findings[0].details} == {"E-00", "E-01", "E-02"}
    _, warned = near_copy_findings(pairs, len(ext), "run-x", "warn")
    assert [f.severity for f in warned] == ["warning"] and "evaluated anyway" in warned[0].message
    clean = near_copies(source, ext_table.iloc[4:], fingerprints(ext_images[4:]), 10)
    assert len(clean) == 0 and near_copy_findings(clean, 10, "run-x", "error")[1] == []
    block, none = near_copy_findings(None, 10, "run-x", "error")
    assert block == {"checked": False} and none[0].severity == "info"
    assert "only byte-identical files were compared" in none[0].message


# ------------------------------------------------------------------ slow: one trained model


@pytest.fixture(scope="module")
def external(tmp_path_factory, session_cache):
    """Train once; evaluate on a new seed-11 cohort (with clashing options) and on the training cohort."""
    from medxcept.workflows.external import evaluate_run

    source = trained_tiny_run(tmp_path_factory.getbasetemp() / "tiny-source")
    d = tmp_path_factory.mktemp("external")
    out: dict = {"source": source}

    class _Grab(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    root = logging.getLogger("medxcept")
    for name, n, seed, extra in (("new", 16, 11, {"preprocess.image_px": 80, "eval.calibration": "platt"}),
                                 ("own", 24, 3, {})):
        spec = load_cohort_spec(_cohort_file(d, n, seed))
        cfg = load_config(cohort_defaults=spec.defaults, overrides={"out_dir": str(d / "reports"), **extra})
        grab = _Grab()
        level = root.level
        root.addHandler(grab)
        root.setLevel(logging.INFO)
        try:
            report = evaluate_run(source, spec, cfg, run_name=f"ext-{name}")
        finally:
            root.removeHandler(grab)
            root.setLevel(level)
        out[name] = report.parent
        out[f"{name}_log"] = grab.lines
    return out


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_threshold_and_temperature_are_the_source_runs(external):
    cal = _json(external["source"] / "calibration.json")
    m = _json(external["new"] / "metrics.json")
    assert cal["calibrator"]["name"] == "temperature"
    assert m["threshold"]["value"] == cal["threshold"]["value"]
    assert m["threshold"]["method"] == cal["threshold"]["method"]
    assert m["calibrator"]["temperature"] == cal["calibrator"]["temperature"]
    assert m["calibration_method"] == "temperature"  # the new cohort's 'platt' lost
    assert m["run"]["external_validation"] is True
    assert m["run"]["source_run"] == _json(external["source"] / "metrics.json")["run"]["id"]
    assert m["external"]["refitted"] == []
    # the source run's preprocessing, not the new cohort's 80 px, and a log line saying so
    assert m["run"]["image_px"] == 71
    log = "\n".join(external["new_log"])
    assert "image_px=71 (this cohort's config: 80) wins" in log
    assert "eval.calibration: the source run's 'temperature' wins" in log
    assert "nothing is refitted" in log


@pytest.mark.slow
def test_every_usable_image_is_a_test_image_and_metrics_equal_sklearn(external):
    from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

    m = _json(external["new"] / "metrics.json")
    pred = pd.read_csv(external["new"] / "predictions.csv")
    cohort = pd.read_csv(external["new"] / "cohort.csv")
    assert set(cohort["split"]) == {"test"} and len(pred) == len(cohort) == m["cohort"]["n_images"]
    assert m["cohort"]["n_patients"] == cohort["patient_key"].nunique() == 16
    t = m["threshold"]["value"]
    y, p = pred["y"].to_numpy(), pred["prob"].to_numpy()
    # discrimination from the uncalibrated scores (issue 17): sigmoid(z / T) saturates to ties
    raw = pred["prob_raw"].to_numpy()
    assert m["test_image"]["roc_auc"] == pytest.approx(roc_auc_score(y, raw))
    assert m["test_image"]["pr_auc"] == pytest.approx(average_precision_score(y, raw))
    tn, fp, fn, tp = confusion_matrix(y, (p >= t).astype(int), labels=[0, 1]).ravel()
    assert (m["test_image"]["tp"], m["test_image"]["fp"], m["test_image"]["tn"], m["test_image"]["fn"]) == (
        tp, fp, tn, fn)
    assert m["test_image"]["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["test_image"]["specificity"] == pytest.approx(tn / (tn + fp))
    # one unit per patient's visit (the demo records visits), scored by the source run's rule (max)
    how = m["patient_aggregation"]
    assert how == "max" and m["evaluation_unit"]["unit"] == "visit"
    pat = pred.groupby("unit_key").agg(y=("y", "max"), p=("prob_raw", how))
    assert m["test_patient"]["n"] == len(pat) and m["evaluation_unit"]["n_patients"] == 16
    assert m["test_patient"]["roc_auc"] == pytest.approx(roc_auc_score(pat["y"], pat["p"]))
    # the source run's reference models, applied unchanged, compared on the same units
    ref = m["references"]
    assert ref["from_source_run"] is True and (external["source"] / "references.joblib").is_file()
    assert ref["deep"]["auc"] == pytest.approx(m["test_patient"]["roc_auc"])
    cls = pred.groupby("unit_key")["ref_image_statistics"].max().loc[pat.index]
    assert ref["references"]["image_statistics"]["auc"] == pytest.approx(roc_auc_score(pat["y"], cls))
    assert ref["references"]["image_statistics"]["delong_p"] is not None
    kinds = [i["kind"] for i in m["summary_items"]]
    assert "verdict" in kinds and "transfer" in kinds and m["chance"] is not None
    assert m["training"]["headline"].startswith("Training of the source run")
    # the calibrated probability is sigmoid(logit / T) with the source run's T
    temp = m["calibrator"]["temperature"]
    assert np.allclose(p, 1.0 / (1.0 + np.exp(-pred["logit"].to_numpy() / temp)), atol=1e-6)


@pytest.mark.slow
def test_new_run_directory_follows_the_run_conventions(external):
    d = external["new"]
    for name in ("report.html", "metrics.json", "config.yaml", "cohort.csv", "split.csv", "exclusions.csv",
                 "audit.json", "predictions.csv", "calibration.json", "versions.json",
                 "private/patient_map.csv"):
        assert (d / name).is_file(), name
    assert not (d / "model.keras").exists()  # the model stays in (and is named by) the source run
    m = _json(d / "metrics.json")
    assert m["cohort"]["files_found"] == m["cohort"]["files_used"] + m["cohort"]["files_excluded"]
    v = _json(d / "versions.json")
    assert v["source_run"]["id"] == m["run"]["source_run"] and len(v["source_run"]["model_sha256"]) == 64
    html = (d / "report.html").read_text(encoding="utf-8")
    assert 'id="external-validation"' in html and m["run"]["source_run"] in html
    assert 'id="summary-card"' in html and 'id="references-table"' in html  # a run's summary card
    assert "nothing refitted" in html
    raw_ids = set(pd.read_csv(d / "private" / "patient_map.csv")["patient_id"])
    for name in ("report.html", "metrics.json", "cohort.csv", "predictions.csv", "audit.json"):
        text = (d / name).read_text(encoding="utf-8")
        assert not any(r in text for r in raw_ids), name


@pytest.mark.slow
def test_a_new_cohort_has_no_file_overlap_but_its_own_cohort_is_flagged(external):
    new = _json(external["new"] / "metrics.json")["external"]
    # no shared file; the demo generator numbers patients DEMO-00001... in both cohorts and the tiny cohorts
    # share one salt, so their pseudonyms coincide: a warning that says when that means the same people
    assert new["overlap"]["images_same_sha256"] == 0 and len(new["warnings"]) == 1
    assert "number patients independently (then a coincidence)" in new["warnings"][0]
    own = _json(external["own"] / "metrics.json")
    src_cohort = pd.read_csv(external["source"] / "cohort.csv")
    ov = own["external"]["overlap"]
    assert ov["images_same_sha256"] == own["cohort"]["n_images"] == len(src_cohort)
    assert ov["by_source_split"] == src_cohort["split"].value_counts().sort_index().to_dict()
    assert own["external"]["warnings"] and "not an external validation" in own["external"]["warnings"][0]
    assert any("byte-identical" in line for line in external["own_log"])
    kinds = {f["kind"]: f for f in _json(external["own"] / "audit.json")["findings"]}
    assert kinds["external_overlap"]["severity"] == "warning"
    assert "not an external validation" in (external["own"] / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_source_dir_without_model_after_training_is_refused(external, tmp_path):
    from medxcept.workflows.external import evaluate_run

    copy = tmp_path / "copy"
    shutil.copytree(external["source"], copy, ignore=shutil.ignore_patterns("model.keras", "checkpoint*"))
    spec = load_cohort_spec(_cohort_file(tmp_path, 16, 11))
    cfg = load_config(cohort_defaults=spec.defaults, overrides={"out_dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match=r"missing model\.keras\. "):
        evaluate_run(copy, spec, cfg)


@pytest.mark.slow
def test_own_cohort_is_paired_image_by_image_with_the_training_images(external):
    """The training cohort evaluated on itself: every training and validation image is a confirmed pair
    (byte-identical), a warning under the tiny cohort's on_leak: warn, with the thumbnails page in private/."""
    own = _json(external["own"] / "metrics.json")["external"]["overlap"]["near_copies"]
    src = pd.read_csv(external["source"] / "cohort.csv")
    n_fit = int(src["split"].isin(["train", "val"]).sum())
    assert own["checked"] is True and own["confirmed_pairs"] >= n_fit and own["images"] >= n_fit
    kinds = {f["kind"]: f for f in _json(external["own"] / "audit.json")["findings"]}
    assert kinds["external_near_copies"]["severity"] == "warning"
    page = (external["own"] / "private" / "external_copies.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 2 * min(n_fit, 200)
    new = _json(external["new"] / "metrics.json")["external"]["overlap"]["near_copies"]
    assert new == {**new, "checked": True, "confirmed_pairs": 0}


@pytest.mark.slow
def test_evaluate_refuses_altered_copies_of_training_images_under_on_leak_error(external, tmp_path, capsys):
    """Issue 33 "done when", on the session's tiny run (``evaluate`` takes the policy as ``--set audit.on_leak``):
    10 of its training images cropped by 5 %, resized
    and re-encoded as JPEG 70, plus 10 new demo eyes. --on-leak error: exit 2 naming the confirmed pairs
    (only copied originals; at 71 px at least 8 of the 10), nothing predicted; --on-leak warn:
    the evaluation runs, with the warning. (benchmarks/external_copies.py
    measures the same on the full demo cohort: 30 + 30.)"""
    from medxcept.cohort.demo import CAMERAS, paint_fundus
    from medxcept.testing.copies import training_images, write_copy_cohort
    from pipelines.retina import main

    source = external["source"]
    classes = tuple(_json(source / "metrics.json")["classes"])
    copies = training_images(source, 10, seed=1)
    new = [(paint_fundus(np.random.default_rng([999, k]), CAMERAS[k % 2], laterality="L", referable=k % 2 == 1,
                         scale=0.5)[0], classes[k % 2]) for k in range(10)]
    cohort = write_copy_cohort(tmp_path / "copies", copies=[(a, lab) for _, a, lab in copies], new=new,
                               classes=classes)
    out = tmp_path / "out"
    rc = main(["evaluate", "--run", str(source), "--cohort", str(cohort), "--out-dir", str(out),
               "--run-name", "refused", "--on-leak", "error", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "external validation refused: " in err
    assert not (out / "refused" / "predictions.csv").exists()
    audit = _json(out / "refused" / "audit.json")
    finding = next(f for f in audit["findings"] if f["kind"] == "external_near_copies")
    n = finding["count"]
    # the tiny run works at 71 px on half-size eyes (the demo benchmark, 96 px: 30 of 30); never a new image
    assert finding["severity"] == "error" and 8 <= n <= 10 and f"{n} confirmed pair(s)" in err
    assert {d["source_image_id"] for d in finding["details"]} <= {i for i, _, _ in copies}
    assert all(d["image_id"] for d in finding["details"])
    assert (out / "refused" / "private" / "external_copies.html").is_file()
    rc = main(["evaluate", "--run", str(source), "--cohort", str(cohort), "--out-dir", str(out),
               "--run-name", "warned", "--set", "audit.on_leak=warn", "-q"])
    err = capsys.readouterr().err
    assert rc == 0 and f"{n} confirmed pair(s)" in err and "evaluated anyway" in err
    m = _json(out / "warned" / "metrics.json")["external"]
    assert m["overlap"]["near_copies"]["confirmed_pairs"] == n
    assert any(f"{n} confirmed pair(s)" in w for w in m["warnings"])


@pytest.mark.slow
def test_the_clinical_reading_applies_the_source_runs_operating_points(external):
    """Issue 34: the external cohort gets the same "Clinical reading", its operating points the source
    run's validation-chosen thresholds (nothing chosen on the external cohort)."""
    cal = _json(external["source"] / "calibration.json")
    m = _json(external["new"] / "metrics.json")
    chosen = cal["threshold"]["operating_points"]
    assert len(chosen) == 4
    assert [r["threshold"] for r in m["clinical"]["operating_points"]] == [r["threshold"] for r in chosen]
    assert m["clinical"]["n_units"] == m["test_patient"]["n"]
    html = (external["new"] / "report.html").read_text(encoding="utf-8")
    # the section names what it reads (autoescaped: the apostrophe is an entity)
    assert 'id="clinical"' in html and "the external cohort&#39;s units" in html and 'id="clinical-figure"' in html


@pytest.mark.slow
def test_a_run_of_the_tiny_test_network_is_refused_outside_the_test_suite(external, tmp_path, monkeypatch):
    """The suite's runs use the tiny test network (tests/conftest.py): versions.json says so, and
    without the test hook its model is refused before anything is written."""
    from medxcept.models import testnet
    from medxcept.workflows.external import evaluate_run

    assert _json(external["source"] / "versions.json")["environment"]["test_network"] == testnet.DESCRIPTION
    assert _json(external["new"] / "versions.json")["environment"]["test_network"] == testnet.DESCRIPTION
    monkeypatch.setenv(testnet.ENV, "")
    spec = load_cohort_spec(_cohort_file(tmp_path, 16, 11))
    cfg = load_config(cohort_defaults=spec.defaults, overrides={"out_dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match=r"model\.keras is the tiny test network .*MEDXCEPT_TEST_NETWORK"):
        evaluate_run(external["source"], spec, cfg)
    assert not (tmp_path / "out").exists()


def test_copies_page_shows_byte_identical_and_geometric_pairs():
    """The private page renders a byte-identical pair (no method, no transform) beside a geometric one."""
    from medxcept.evaluation.external import copies_rows, near_copy_findings
    from medxcept.report.check import copies_page

    nan = np.nan
    pairs = pd.DataFrame({"image_id": ["E1", "E2"], "source_image_id": ["I1", "I2"], "source_split": ["train", "val"],
                          "match": ["sha256", "near"], "method": [nan, "geometry"], "inliers": [nan, 50.0],
                          "rotation_deg": [nan, 1.0], "scale": [nan, 1.1], "shear_rad": [nan, 0.0],
                          "shift_x": [nan, 0.0], "shift_y": [nan, 0.0], "flipped": [False, True],
                          "source_pos": [0, 1], "pos": [0, 1]})
    _, findings = near_copy_findings(pairs, 2, "run-x", "error")
    rows = copies_rows(pairs, pd.DataFrame({"path": ["/data/a.jpg", "/data/b.jpg"]}))
    html = copies_page(rows, [np.zeros((8, 8, 3), np.uint8)] * 2, np.zeros((2, 8, 8, 3), np.float32),
                       total=len(pairs), run_id="ext", source_id="run-x", finding=findings[0])
    assert html.count("data:image/png;base64,") == 4 and "/data/a.jpg" in html
    assert "sha256" in html and "near (geometry)" in html and "50 keypoint inliers" in html and "mirrored" in html
