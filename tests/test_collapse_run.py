"""Issue 23: a collapsed training is named as such by the whole run path, not only by the verdict
function: ``run_pipeline`` on a tiny cohort whose head is forced to a constant output writes
``metrics.json`` with the "collapsed" case and its numbers, and the report's summary card says it
(the issue's gray cohort gave constant validation outputs in every epoch and the verdict said
"clear overfitting")."""

from __future__ import annotations

import html
import json

import pandas as pd
import pytest

from medxcept.cohort.table import load_cohort_spec
from medxcept.config import load_config
from medxcept.workflows.single import run_pipeline

pytestmark = pytest.mark.slow


def test_a_collapsed_run_is_named_in_metrics_and_report(tmp_path, session_cache, monkeypatch):
    from medxcept.models import train
    from tests.conftest import TINY_COHORT

    def constant_head(*, image_px, n_classes, seed, **_):
        """A small network with build_model's head (gap, dropout, logits), so that the run path is the
        product's (BN recalibration, class-activation maps, saving); the head's kernel is zero and
        frozen: every validation output is sigmoid(bias), whatever the pixels."""
        import keras

        inputs = keras.Input((image_px, image_px, 3), name="pixels")
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
        x = keras.layers.Conv2D(4, 3, strides=2, use_bias=False)(x)
        x = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(x))
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        x = keras.layers.Dropout(0.3, seed=seed, name="dropout")(x)
        head = keras.layers.Dense(1 if n_classes == 2 else n_classes, kernel_initializer="zeros",
                                  dtype="float32", name="logits", trainable=False)
        return keras.Model(inputs, head(x), name="constant_head")

    monkeypatch.setattr(train, "build_model", constant_head)
    cohort = tmp_path / "tiny.yaml"
    cohort.write_text(TINY_COHORT.format(n_patients=24, seed=3), encoding="utf-8")
    spec = load_cohort_spec(cohort)
    cfg = load_config(cohort_defaults=spec.defaults, overrides={
        "out_dir": str(tmp_path / "reports"), "train.head_epochs": 1, "train.finetune_epochs": 1,
        "eval.n_bootstrap": 20})
    run_dir = run_pipeline(cfg, spec, run_name="collapsed").parent

    h = pd.read_csv(run_dir / "history.csv")
    assert len(h) == 2 and h["collapsed"].all() and (h["val_prob_sd"] < 1e-4).all()
    m = json.loads((run_dir / "metrics.json").read_text())
    t = m["training"]
    assert t["case"] == "collapsed" and t["case"] != "overfitting"
    assert "constant in every epoch" in t["headline"]
    kept = h.loc[h["epoch"] == t["best_epoch"]].iloc[0]
    assert f"(SD of the validation probabilities {kept['val_prob_sd']:.1e})" in t["headline"]
    assert "overfit" not in t["headline"]
    verdict_items = [i for i in m["summary_items"] if i["kind"] == "verdict"]
    assert len(verdict_items) == 1 and verdict_items[0]["text"] == t["headline"]
    assert verdict_items[0]["severity"] != "info"
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert t["headline"] in html.unescape(report)
