"""The one assessment (``medxcept.evaluation.assess``): every workflow measures a model the same way.

The consistency test runs one frozen model (the tiny test network with fixed weights: training is
replaced by returning it) over one cohort through the three workflows that turn a model into
numbers: fold 0 of a 3-fold cross-validation, a single run whose user split makes its validation
split the fold's inner validation split and its test split the fold's held-out fold, and an
external validation of that single run on a cohort of those test images only. With test-time
augmentation on (``eval.tta=2``) the three record the same logits, threshold, sensitivity,
specificity, ROC-AUC and ECE on the same test patients. Before the shared stage, the fold predicted
without TTA and TTA copies depended on an image's position in its batch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY_COHORT, graded_cohort

N_FOLDS = 3


def _frozen_result(images: np.ndarray, n_classes: int = 2):
    """A TrainResult holding the tiny network with fixed weights (seed 0): its head is scaled and
    centred on ``images`` so that the logits spread around 0 (a random network's barely move)."""
    import keras

    from medxcept.models.checkpoint import weights_checksum
    from medxcept.models.inference import predict_logits
    from medxcept.models.network import build_model, resolve_weights
    from medxcept.models.train import TrainResult

    model = build_model(image_px=71, n_classes=n_classes, dropout=0.0, weights=resolve_weights("none"), seed=0)
    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    z = predict_logits(model, images, batch_size=8)
    scale = 1.5 / max(float(z.std()), 1e-9)
    head.kernel.assign(head.kernel * scale)
    head.bias.assign((head.bias.numpy() - z.mean(axis=0)) * scale)
    history = pd.DataFrame({"epoch": [1, 2], "stage": ["scratch", "scratch"], "loss": [0.7, 0.6],
                            "val_loss": [0.7, 0.65], "auc": [0.6, 0.7], "val_patient_auc": [0.55, 0.6],
                            "train_patient_auc": [0.6, 0.7]})
    return TrainResult(model=model, history=history, best_epoch=2, stages=[{"stage": "scratch", "max_epochs": 2,
                                                                          "trainable_params": 1}],
                       seconds=0.0, weights_sha256=weights_checksum(model))


def _filtered_cohort(spec, image_paths: pd.DataFrame, keep: set[str], out: Path):
    """``spec`` (materialized) with each source's label table cut to the images ``keep`` (by image_id):
    the other files are found but unlabelled, so excluded."""
    from medxcept.workflows.steps import materialize

    spec = materialize(spec)
    wanted = {str(Path(p).resolve()) for p in image_paths.loc[image_paths["image_id"].isin(keep), "path"]}
    sources = []
    for s in spec.sources:
        root = Path(spec.base_dir) / s.root
        labels = pd.read_csv(Path(spec.base_dir) / s.labels, dtype=str)
        rows = labels[[str((root / f).resolve()) in wanted for f in labels["file"]]]
        path = out / f"{s.name}_labels.csv"
        rows.to_csv(path, index=False)
        sources.append(dataclasses.replace(s, labels=str(path)))
    return dataclasses.replace(spec, name="tiny-test-only", sources=type(spec.sources)(sources))


@pytest.fixture(scope="module")
def three_ways(tmp_path_factory):
    import medxcept.models.train
    import medxcept.workflows.single
    from medxcept.cohort.table import load_cohort_spec
    from medxcept.config import load_config
    from medxcept.evaluation.kfold import INNER
    from medxcept.workflows.cv import plan_cv, run_fold
    from medxcept.workflows.external import evaluate_run
    from medxcept.workflows.single import run_pipeline

    tmp = tmp_path_factory.mktemp("assess")
    frozen: dict = {}

    def fit(*args, **kwargs):  # noqa: ARG001 - training replaced by the frozen model
        return frozen["result"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDXCEPT_CACHE", str(tmp / "cache"))
        mp.setattr(medxcept.models.train, "fit", fit)  # the fold imports it from there
        mp.setattr(medxcept.workflows.single, "fit", fit)
        cohort = tmp / "tiny.yaml"
        cohort.write_text(TINY_COHORT.format(n_patients=24, seed=3), encoding="utf-8")
        spec = load_cohort_spec(cohort)
        overrides = {"out_dir": str(tmp / "reports"), "cohort": str(cohort), "eval.tta": 2}
        cfg = load_config(cohort_defaults=spec.defaults, overrides={**overrides, "split.n_folds": N_FOLDS})
        plan = plan_cv(cfg, spec, n_folds=N_FOLDS, cv_dir=tmp / "cv", cohort_file=cohort)
        frozen["result"] = _frozen_result(plan.images)
        run_fold(plan.path, 0, save_model=False)
        fold = plan.path / "fold-0"
        # the single run's split: the fold's inner validation split, its held-out fold as test
        parts = pd.read_csv(fold / "split.csv", dtype=str)
        parts["split"] = parts["split"].map({"train": "train", INNER: "val", "val": "test", "test": "train"})
        parts[["image_id", "split"]].to_csv(tmp / "split.csv", index=False)
        single_cfg = load_config(cohort_defaults=spec.defaults,
                                 overrides={**overrides, "split.user_split": str(tmp / "split.csv")})
        single = run_pipeline(single_cfg, spec, run_name="single").parent
        # external validation of the single run on a cohort of its test images only
        test_ids = set(parts.loc[parts["split"] == "test", "image_id"])
        paths = pd.read_csv(single / "private" / "image_paths.csv", dtype=str)
        external_spec = _filtered_cohort(spec, paths, test_ids, tmp)
        ext_cfg = load_config(cohort_defaults=spec.defaults, overrides={"out_dir": str(tmp / "reports")})
        external = evaluate_run(single, external_spec, ext_cfg, run_name="external").parent
        yield {"fold": fold, "single": single, "external": external, "test_ids": test_ids, "frozen": frozen["result"],
               "plan": plan}


def _read(d: Path, name: str) -> dict:
    return json.loads((d / name).read_text(encoding="utf-8"))


@pytest.mark.slow
def test_one_frozen_model_gives_the_same_numbers_through_fold_single_run_and_external(three_ways):
    fold_m, single_m, ext_m = (_read(three_ways[k], "metrics.json") for k in ("fold", "single", "external"))
    pred = {"fold": pd.read_csv(three_ways["fold"] / "oof_predictions.csv", dtype={"image_id": str}),
            "single": pd.read_csv(three_ways["single"] / "predictions.csv", dtype={"image_id": str}),
            "external": pd.read_csv(three_ways["external"] / "predictions.csv", dtype={"image_id": str})}
    # the same test images in all three
    for p in pred.values():
        assert set(p["image_id"]) == three_ways["test_ids"]
    logits = {k: p.set_index("image_id").sort_index()["logit"] for k, p in pred.items()}
    np.testing.assert_allclose(logits["single"], logits["fold"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits["single"], logits["external"], rtol=0, atol=1e-5)
    assert logits["single"].std() > 0.1  # the frozen model's logits spread: a real ranking to compare

    # the threshold: chosen on the same validation units by the single run and the fold, applied by external
    t = single_m["threshold"]["value"]
    assert fold_m["threshold"]["value"] == pytest.approx(t, abs=1e-6)
    assert ext_m["threshold"]["value"] == t
    patient = {"single": single_m["test_patient"], "fold": fold_m["oof"]["patient"],
               "external": ext_m["test_patient"]}
    for k in ("roc_auc", "pr_auc", "sensitivity", "specificity", "n", "n_pos"):
        assert patient["fold"][k] == pytest.approx(patient["single"][k], abs=1e-9), k
        assert patient["external"][k] == pytest.approx(patient["single"][k], abs=1e-9), k
    cal = {"single": single_m["calibration_test"], "fold": fold_m["oof"]["calibration_image"],
           "external": ext_m["calibration_test"]}
    for when in ("before", "after"):
        for k in ("ece", "brier"):
            assert cal["fold"][when][k] == pytest.approx(cal["single"][when][k], abs=1e-7), (when, k)
            assert cal["external"][when][k] == pytest.approx(cal["single"][when][k], abs=1e-7), (when, k)

    # the recorded method: TTA on in all three, choices refitted except in external validation
    for m in (fold_m, single_m, ext_m):
        assert m["method"]["tta"] == {"passes": 2, "seed": 0, "policy": "fundus", "copies_keyed_by": "image_id"}
    assert single_m["method"]["refitted"] and fold_m["method"]["refitted"] and not ext_m["method"]["refitted"]
    assert "inner validation split" in fold_m["method"]["threshold"]["chosen_on"]
    assert ext_m["method"]["threshold"]["chosen_on"] == f"the validation split of run {three_ways['single'].name}"


@pytest.mark.slow
def test_the_recorded_logits_are_the_tta_mean_keyed_by_image(three_ways):
    """TTA is applied (the logits are not the plain ones) and each image's copies are keyed by its
    image_id: predicting the test images alone, in another order, gives the same logits."""
    from medxcept.evaluation.assess import TTA, Units, predict_units
    from medxcept.models.inference import predict_logits

    plan = three_ways["plan"]
    images, table = plan.images, plan.table.reset_index(drop=True)
    pred = pd.read_csv(three_ways["single"] / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
    order = np.flatnonzero(table["image_id"].isin(three_ways["test_ids"]).to_numpy())[::-1]
    model = three_ways["frozen"].model
    tta = TTA(passes=2, seed=0, policy="fundus", batch_size=8)
    again = predict_units(model, Units(table.iloc[order], images[order]), tta)
    want = pred.loc[table["image_id"].iloc[order], "logit"].to_numpy()
    np.testing.assert_allclose(again, want, rtol=0, atol=1e-5)
    plain = predict_logits(model, images[order], batch_size=8)
    assert np.abs(plain - want).max() > 1e-3  # TTA moved the logits


def test_method_record_states_where_each_choice_was_made():
    from medxcept.config import load_config
    from medxcept.evaluation.assess import TTA, method_record

    cfg = load_config(overrides={"eval.tta": 3})
    val = pd.DataFrame({"patient_key": ["a", "a", "b", "c"], "study_id": ["1", "2", "1", "1"], "y": [0, 0, 1, 1]})
    rec = method_record(classes=("n", "p"), cfg=cfg, epoch_chosen_on="E", chosen_on="C", tta=TTA.of(cfg),
                        refitted=True, val=val)
    assert rec["epoch"]["chosen_on"] == "E" and rec["calibrator"]["fitted_on"] == "C"
    assert rec["threshold"] == {"rule": cfg.eval.threshold, "chosen_on": "C", "unit": "visit", "n_patients": 3,
                                "n_units": 4}
    assert rec["tta"]["passes"] == 3 and "decision_rule" not in rec
    graded = method_record(classes=("a", "b", "c"), cfg=cfg, epoch_chosen_on="E", chosen_on="C",
                           tta=TTA.of(cfg), refitted=False)
    assert graded["decision_rule"]["chosen_on"] == "C" and "threshold" not in graded and not graded["refitted"]


def _paragraph(html: str, pid: str) -> str:
    """The text of ``<p id="pid">`` in ``html``, entities unescaped (the page escapes apostrophes)."""
    import html as _html

    start = html.index(f'id="{pid}"')
    return _html.unescape(html[start:html.index("</p>", start)])


def test_report_method_sentences_come_from_the_method_record(tmp_path):
    """report.html.j2: the performance and calibration sections say where the threshold, epoch and
    calibrator were chosen from ``metrics.json["method"]``; changing a field changes the sentence."""
    from tests.test_report_escaping import build_escaping_report

    report, info = build_escaping_report(tmp_path / "a")
    html = report.read_text(encoding="utf-8")
    rec = info["metrics"]["method"]
    where = _paragraph(html, "method-where")
    assert f"chosen on {rec['threshold']['chosen_on']}" in where and "No test-time augmentation" in where
    assert f"fitted on {rec['calibrator']['fitted_on']}" in _paragraph(html, "calibration-where")

    def edit(m):
        m["method"]["threshold"]["chosen_on"] = "PLACE-OF-THRESHOLD"
        m["method"]["epoch"]["chosen_on"] = "PLACE-OF-EPOCH"
        m["method"]["calibrator"]["fitted_on"] = "PLACE-OF-CALIBRATOR"
        m["method"]["tta"]["passes"] = 7

    html = build_escaping_report(tmp_path / "b", edit=edit)[0].read_text(encoding="utf-8")
    where = _paragraph(html, "method-where")
    assert "threshold (" in where and "was chosen on PLACE-OF-THRESHOLD" in where
    assert "epoch was chosen on PLACE-OF-EPOCH" in where and "and 7 augmented copies" in where
    assert "fitted on PLACE-OF-CALIBRATOR" in _paragraph(html, "calibration-where")
    assert "the validation split" not in where  # nothing of the old record is left in the sentence


def test_cv_graded_method_sentence_comes_from_the_folds_record():
    """cv_graded.html.j2: the where-chosen paragraph is made from ``r.method.recorded`` (the folds'
    ``method`` records, :func:`medxcept.workflows.cv.recorded_method`); changing a field changes it."""
    from medxcept.cohort.table import parse_endpoint
    from medxcept.config import EvalConfig, load_config
    from medxcept.evaluation.assess import TTA, method_record
    from medxcept.evaluation.graded import assess_graded, fold_predictions, fold_row, pooled_report
    from medxcept.report import environment
    from medxcept.workflows.cv import recorded_method
    from tests.test_graded import CLASSES, _frame

    endpoints = (parse_endpoint("referable", "grade >= moderate", CLASSES, "ordinal"),)
    ecfg, cfg = EvalConfig(n_bootstrap=20), load_config()
    frames, rows = [], []
    for fold in range(2):
        g = assess_graded(val=_frame(20, 30 + fold), test=_frame(15, 40 + fold), classes=CLASSES, task="ordinal",
                          endpoints=endpoints, eval_cfg=ecfg, seed=0)
        frames.append(fold_predictions(_frame(15, 40 + fold), g, repeat=0, fold=fold))
        counts = {"train": {"patients": 40, "images": 80}, "inner_val": {"patients": 10, "images": 21},
                  "held_out": {"patients": 15, "images": 30}}
        rows.append({"name": f"fold-{fold}", "n_patients": 15, "best_epoch": 1, "counts": counts, **fold_row(g)})
    pooled = pooled_report(frames, classes=CLASSES, task="ordinal", endpoints=endpoints, eval_cfg=ecfg, seed=0)
    columns = [k for k in rows[0] if k not in ("name", "n_patients", "best_epoch", "counts")]
    summary = {k: {"mean": 0.5, "sd": None, "low": None, "high": None} for k in columns}

    def render(chosen_on: str, passes: int) -> str:
        tta = TTA(passes=passes, seed=0, policy="fundus", batch_size=8)
        folds = [{"method": method_record(classes=CLASSES, cfg=cfg, epoch_chosen_on="EPOCH-PLACE",
                                          chosen_on=chosen_on, tta=tta, refitted=True)} for _ in range(2)]
        r = {"graded": {"pooled": pooled, "per_fold": rows, "columns": columns, "summary": summary, "holdout": None},
             "notes": [], "method": {"calibration": "temperature", "inner_validation_sentence": "Fold i trained",
                                     "threshold_and_calibration_fitted_on": "PLANNED-PLACE",
                                     "recorded": recorded_method(folds)}}
        html = environment().get_template("cv_graded.html.j2").render(r=r, figs={}, ci_metrics=["roc_auc"])
        return _paragraph(html, "where-chosen")

    a, b = render("RULE-PLACE-A", 0), render("RULE-PLACE-B", 3)
    assert "decision rule (cumulative thresholds maximizing quadratic kappa)" in a and "PLANNED-PLACE" not in a
    assert "were chosen on RULE-PLACE-A" in a and "epoch was chosen on EPOCH-PLACE" in a
    assert "No test-time augmentation" in a
    assert "were chosen on RULE-PLACE-B" in b and "RULE-PLACE-A" not in b and "and 3 augmented copies" in b


@pytest.mark.slow
def test_cv_report_method_sentence_comes_from_the_folds_metrics(three_ways, tmp_path):
    """cv_report.html.j2: aggregating the folds states where they chose from their ``metrics.json``
    ``method`` records; editing a fold's record changes the CV report's sentence."""
    import shutil

    from medxcept.workflows.cv import aggregate_cv

    copy = tmp_path / three_ways["plan"].path.name
    shutil.copytree(three_ways["plan"].path, copy)
    out = aggregate_cv(copy)
    rec = _read(copy / "fold-0", "metrics.json")["method"]
    where = _paragraph((copy / "cv_report.html").read_text(encoding="utf-8"), "where-chosen")
    assert out["metrics"]["method"]["recorded"]["threshold"]["chosen_on"] == rec["threshold"]["chosen_on"]
    assert "inner validation split: 20 % of the patients of its training folds" in where
    assert "2 augmented copies" in where
    m = _read(copy / "fold-0", "metrics.json")
    m["method"]["threshold"]["chosen_on"] = "A-PLACE-THE-FOLD-RECORDED"
    m["method"]["tta"]["passes"] = 0
    (copy / "fold-0" / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
    out = aggregate_cv(copy)
    where = _paragraph((copy / "cv_report.html").read_text(encoding="utf-8"), "where-chosen")
    assert "was chosen on A-PLACE-THE-FOLD-RECORDED" in where and "No test-time augmentation" in where
    assert out["metrics"]["method"]["threshold_and_calibration_fitted_on"] == "A-PLACE-THE-FOLD-RECORDED"


GRADED_COHORT = graded_cohort(eval_options="n_bootstrap: 20, tta: 2")


@pytest.mark.slow
def test_a_graded_fold_predicts_with_tta_and_the_cv_page_states_its_record(tmp_path, monkeypatch):
    """A k-class fold goes through the same stage: its class probabilities are the softmax of the
    TTA-averaged logits, its decision rule is recorded as chosen on its inner validation split, and
    the graded CV page says so from that record."""
    import medxcept.models.train
    from medxcept.cohort.table import load_cohort_spec
    from medxcept.config import load_config
    from medxcept.evaluation.assess import TTA, Units, predict_units
    from medxcept.evaluation.units import probabilities
    from medxcept.workflows.cv import aggregate_cv, plan_cv, run_fold

    monkeypatch.setenv("MEDXCEPT_CACHE", str(tmp_path / "cache"))
    cohort = tmp_path / "graded.yaml"
    cohort.write_text(GRADED_COHORT, encoding="utf-8")
    spec = load_cohort_spec(cohort)
    cfg = load_config(cohort_defaults=spec.defaults, overrides={"out_dir": str(tmp_path / "reports"),
                                                                "cohort": str(cohort), "split.n_folds": N_FOLDS})
    plan = plan_cv(cfg, spec, n_folds=N_FOLDS, cv_dir=tmp_path / "cv", cohort_file=cohort)
    frozen = _frozen_result(plan.images, n_classes=3)
    monkeypatch.setattr(medxcept.models.train, "fit", lambda *a, **k: frozen)
    run_fold(plan.path, 0, save_model=False)
    m = _read(plan.path / "fold-0", "metrics.json")
    assert m["method"]["tta"]["passes"] == 2 and "threshold" not in m["method"]
    assert m["method"]["decision_rule"]["chosen_on"].startswith("the fold's inner validation split")
    oof = pd.read_csv(plan.path / "fold-0" / "oof_predictions.csv", dtype={"image_id": str})
    table = plan.table.reset_index(drop=True)
    rows = np.flatnonzero(table["image_id"].isin(oof["image_id"]).to_numpy())
    logits = predict_units(frozen.model, Units(table.iloc[rows], plan.images[rows]), TTA.of(cfg))
    want = pd.DataFrame(probabilities(logits), columns=list(spec.classes), index=table["image_id"].iloc[rows])
    got = oof.set_index("image_id").loc[want.index, [f"prob_raw_{c}" for c in spec.classes]].to_numpy()
    np.testing.assert_allclose(got, want.to_numpy(), rtol=0, atol=1e-5)
    out = aggregate_cv(plan.path)
    where = _paragraph((plan.path / "cv_report.html").read_text(encoding="utf-8"), "where-chosen")
    assert out["metrics"]["method"]["recorded"]["decision_rule"] == {
        k: v for k, v in m["method"]["decision_rule"].items() if k not in ("n_patients", "n_units")}
    assert f"were chosen on {m['method']['decision_rule']['chosen_on']}" in where and "2 augmented copies" in where
