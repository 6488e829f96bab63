"""The training verdict names each case with its numbers (issue 17): planted on synthetic histories,
and on real (tiny) Keras training whose per-epoch training and validation patient AUCs are measured
as :mod:`medxcept.models.train` measures them (clean images, inference mode, patients aggregated)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medxcept.evaluation.verdict import CASES, chance_statement, summary_items, training_verdict


def _history(train: list[float], val: list[float], *, keras_auc: list[float] | None = None,
             with_train_patient: bool = True, **cols) -> pd.DataFrame:
    n = len(val)
    frame = pd.DataFrame({"epoch": np.arange(1, n + 1), "loss": np.linspace(0.7, 0.5, n),
                          "val_loss": np.linspace(0.7, 0.6, n), "val_patient_auc": val,
                          "auc": keras_auc if keras_auc is not None else train})
    if with_train_patient:
        frame["train_patient_auc"] = train
    for k, v in cols.items():
        frame[k] = v
    return frame


def test_training_at_chance_is_did_not_learn_not_overfitting():
    """The issue's run: training AUC 0.52-0.59 for 7 epochs, validation AUC wandering down. The former
    verdict called it overfitting; the network never fitted its training images."""
    h = _history([0.52, 0.55, 0.59, 0.57, 0.56, 0.58, 0.54], [0.61, 0.66, 0.58, 0.55, 0.50, 0.52, 0.49])
    v = training_verdict(h, best_epoch=2)
    assert v["case"] == "did not learn"
    assert v["headline"].startswith("Did not learn: the clean training patient AUC stayed between 0.52 and 0.59 "
                                    "over 7 epoch(s)")
    assert v["overfitting_seen"] is False and "overfit" not in v["verdict"]
    assert v["evidence"]["train_auc_max"] == pytest.approx(0.59)


def test_collapse_is_named_first_with_its_message():
    h = _history([0.5] * 3, [0.5] * 3, val_prob_sd=[1e-6] * 3, collapsed=[True] * 3)
    v = training_verdict(h, best_epoch=1, collapse={"epochs": [1, 2, 3], "all": True,
                                                     "message": "every validation output was 0.31"})
    assert v["case"] == "collapsed"
    assert "constant in every epoch" in v["headline"] and "1.0e-06" in v["headline"]
    assert "every validation output was 0.31" in v["headline"]
    # train's own collapse record: its remedy is added once, the restated "constant" sentence is not
    from medxcept.models.epoch_eval import collapse_summary
    v3 = training_verdict(h, best_epoch=1, collapse=collapse_summary(h))
    assert v3["headline"].count("constant in every epoch") == 1
    assert "--weights" in v3["headline"]
    # the history's column alone says it too (no TrainResult.collapse, e.g. a run read from disk)
    assert training_verdict(h, best_epoch=1)["case"] == "collapsed"
    # one collapsed epoch that was not kept is a detail, not the verdict
    h2 = _history([0.7, 0.9, 0.95], [0.7, 0.88, 0.9], collapsed=[True, False, False])
    v2 = training_verdict(h2, best_epoch=3)
    assert v2["case"] == "fine" and "collapsed) in epoch(s) 1" in v2["verdict"]


def test_underfitting_reports_the_low_training_auc_and_that_it_still_rises():
    h = _history([0.58, 0.64, 0.69, 0.74], [0.60, 0.66, 0.70, 0.72])
    v = training_verdict(h, best_epoch=4)
    assert v["case"] == "underfitting"
    assert "reached only 0.74 at the kept epoch 4 (validation 0.72, gap +0.02)" in v["headline"]
    assert "still rising at the last epoch" in v["headline"]


def test_overfitting_gives_the_gap_and_the_later_epochs():
    h = _history([0.80, 0.92, 0.97, 0.99, 1.00], [0.74, 0.80, 0.78, 0.72, 0.70])
    v = training_verdict(h, best_epoch=2)
    assert v["case"] == "overfitting"
    assert "0.92 against a validation AUC of 0.80 at the kept epoch 2 (gap 0.12" in v["headline"]
    assert "after epoch 2 training AUC rose to 1.000 while validation AUC fell to 0.700" in v["verdict"]
    assert v["overfitting_seen"] is True and v["gap_at_best"] == pytest.approx(0.12)


def test_fine_when_train_and_validation_agree():
    h = _history([0.90, 0.95, 0.96], [0.88, 0.93, 0.94])
    v = training_verdict(h, best_epoch=3)
    assert v["case"] == "fine"
    assert "0.96 and the validation AUC 0.94 at the kept epoch 3 (gap +0.02)" in v["headline"]
    assert v["overfitting_seen"] is False


def test_old_histories_fall_back_to_keras_auc_and_say_so():
    h = _history([0.9, 0.95], [0.9, 0.94], with_train_patient=False)
    v = training_verdict(h, best_epoch=2)
    assert v["train_metric"] == "auc" and "Keras' running AUC" in v["train_metric_note"]
    assert "training AUC (Keras, running)" in v["headline"] and "Note: the history has no clean" in v["verdict"]
    # the clean metric wins when both are there: here Keras' augmented running AUC looks like chance
    h = _history([0.95, 0.97], [0.93, 0.95], keras_auc=[0.55, 0.58])
    assert training_verdict(h, best_epoch=2)["case"] == "fine"


#: The keys of the verdict before issue 17 (medxcept.pipeline.training_verdict), read by reports and compare.
FORMER_KEYS = {"verdict", "best_epoch", "epochs_run", "train_auc_at_best", "val_auc_at_best", "gap_at_best",
               "overfitting_seen", "final_train_auc", "final_val_auc"}


def test_verdict_keys_are_a_superset_of_the_former_verdict():
    h = _history([0.8, 0.9], [0.75, 0.85])
    assert FORMER_KEYS <= set(training_verdict(h, 2))
    assert training_verdict(pd.DataFrame(), 0)["headline"] == "no training epochs ran"


@pytest.mark.parametrize(("ci", "chance"), [((0.381, 0.752), True), ((0.61, 0.93), False), ((0.2, 0.45), False)])
def test_chance_statement(ci, chance):
    s = chance_statement(0.57, ci)
    assert s["chance"] is chance
    if chance:
        assert s["severity"] == "red"
        assert s["message"] == ("Test patient AUC 0.570 is not distinguishable from chance: its 95 % CI "
                                "0.381–0.752 contains 0.5")
    # the BootstrapCI serialization (point, low, high) and the dict form give the same answer
    assert chance_statement(0.57, (0.57, *ci))["chance"] is chance
    assert chance_statement(0.57, {"low": ci[0], "high": ci[1]})["chance"] is chance
    assert chance_statement(None, ci)["chance"] is None


def test_summary_card_order_not_better_first_then_chance_in_red():
    def row(label, auc, diff, ci, better):
        return {"label": label, "auc": auc, "diff": diff, "diff_ci": ci, "delong_p": 0.2, "better": better}

    refs = {"deep": {"auc": 0.57}, "classical_not_better": True, "references": {
        "prevalence": row("prevalence (a constant)", 0.5, 0.07, [-0.1, 0.25], "no"),
        "image_statistics": row("classical model on image statistics (...)", 0.687, -0.117, [-0.3, 0.05], "no")}}
    training = training_verdict(_history([0.52, 0.59], [0.6, 0.55]), best_epoch=1)
    items = summary_items(training=training, references=refs, chance=chance_statement(0.57, (0.381, 0.752)))
    assert [i["kind"] for i in items] == ["references", "chance", "verdict", "references"]
    assert items[0]["text"].startswith("The deep model is not better than the classical model on image statistics: "
                                       "it ranks the test patients worse (patient AUC 0.570 vs 0.687")
    assert items[1]["severity"] == "red" and "not distinguishable from chance" in items[1]["text"]
    assert items[2]["text"].startswith("Did not learn") and items[2]["severity"] == "warn"
    # a deep model better than the classical reference: the verdict leads, the comparison is information
    refs["classical_not_better"] = False
    refs["references"]["image_statistics"].update(diff=0.2, diff_ci=[0.05, 0.35], better="yes")
    fine = training_verdict(_history([0.9, 0.95], [0.9, 0.93]), best_epoch=2)
    items = summary_items(training=fine, references=refs, chance=chance_statement(0.9, (0.8, 0.97)))
    assert [i["kind"] for i in items] == ["verdict", "chance", "references", "references"]
    assert all(i["severity"] == "info" for i in items)
    assert items[2]["text"].startswith("The deep model is better than the classical model on image statistics")


# ------------------------------------------------------------------ real (tiny) training


def _tiny_cohort(rng: np.random.Generator, n_patients: int, amplitude: float) -> tuple[np.ndarray, ...]:
    """Two 16x16 images per patient; positive patients carry a bright 3x3 spot at a random place in
    both images, under pixel noise of SD 1 (``amplitude`` sets how visible the spot is)."""
    y_pat = np.arange(n_patients) % 2
    rng.shuffle(y_pat)
    x = rng.standard_normal((2 * n_patients, 16, 16, 1)).astype("float32")
    y = np.repeat(y_pat, 2)
    for i in np.flatnonzero(y == 1):
        r, c = rng.integers(0, 13, 2)
        x[i, r:r + 3, c:c + 3, 0] += amplitude
    return x, y, np.repeat(np.arange(n_patients), 2)


def _patient_auc(model, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    from medxcept.evaluation.units import aggregate_by_patient

    p = model.predict(x, verbose=0, batch_size=256)[:, 0]  # inference mode: no dropout
    _, yp, pp = aggregate_by_patient(groups, y, p, how="mean")
    return float(roc_auc_score(yp, pp))


def _train(*, seed: int, n_train: int, amplitude: float, permute: bool, big: bool, epochs: int,
           lr: float) -> tuple[pd.DataFrame, int]:
    """Real Keras training; the history carries train_patient_auc and val_patient_auc per epoch, and
    the kept epoch is the best validation patient AUC, as medxcept.models.train keeps it."""
    import keras

    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    x, y, g = _tiny_cohort(rng, n_train, amplitude)
    xv, yv, gv = _tiny_cohort(rng, 60, amplitude)
    if permute:  # labels permuted across patients, training and validation: unrelated to the pixels
        y, yv = (rng.permutation(a.reshape(-1, 2)).ravel() for a in (y, yv))
    if big:  # enough parameters to memorize the training images
        body = [keras.layers.Flatten(), keras.layers.Dense(512, activation="relu"), keras.layers.Dense(1)]
    else:  # a spot detector: a few filters and the maximum over the image
        body = [keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalMaxPooling2D(),
                keras.layers.Dense(1)]
    model = keras.Sequential([keras.Input((16, 16, 1)), *body, keras.layers.Activation("sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy", jit_compile=False)
    rows: list[dict] = []

    def measure(epoch: int, logs: dict) -> None:
        rows.append({"epoch": epoch + 1, "loss": logs["loss"], "train_patient_auc": _patient_auc(model, x, y, g),
                     "val_patient_auc": _patient_auc(model, xv, yv, gv)})

    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, shuffle=True,
              callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=measure)])
    h = pd.DataFrame(rows)
    return h, int(h.loc[h["val_patient_auc"].idxmax(), "epoch"])


@pytest.mark.slow
@pytest.mark.parametrize(("case", "kw"), [
    ("did not learn", {"n_train": 200, "amplitude": 3.0, "permute": True, "big": False, "epochs": 3, "lr": 0.003}),
    ("fine", {"n_train": 100, "amplitude": 3.0, "permute": False, "big": False, "epochs": 3, "lr": 0.03}),
    ("overfitting", {"n_train": 20, "amplitude": 1.5, "permute": False, "big": True, "epochs": 3, "lr": 0.003}),
])
def test_verdict_on_real_training(case, kw):
    h, kept = _train(seed=0, **kw)
    v = training_verdict(h, kept)
    assert v["case"] == case, (v["verdict"], h.round(3).to_dict("list"))
    assert v["train_metric"] == "train_patient_auc" and v["train_metric_note"] is None
    ev = v["evidence"]
    if case == "did not learn":  # labels permuted: the training images cannot be fitted in 3 epochs
        assert ev["train_auc_max"] < 0.6
    elif case == "fine":  # the spot is learned: both sides high and close
        assert ev["val_auc_at_kept"] > 0.9 and abs(ev["gap_at_kept"]) <= 0.1
    else:  # 20 patients memorized by 130 k parameters: training fitted, validation far behind
        assert ev["train_auc_at_kept"] > 0.95 and ev["gap_at_kept"] > 0.1
    assert set(CASES) >= {v["case"]}


def test_the_gap_says_its_validation_auc_was_selected_for_being_best():
    """Early stopping kept epoch 3 for its validation AUC (the best of 4): the verdict records that
    the gap uses this selected value and ends with the sentence that says so; a kept epoch that is
    not the best (ties broken by loss elsewhere) gets no such sentence."""
    h = _history([0.90, 0.95, 0.96, 0.97], [0.80, 0.85, 0.93, 0.90])
    v = training_verdict(h, best_epoch=3)
    assert v["gap_validation_selected"] is True and v["gap_at_best"] == pytest.approx(0.96 - 0.93)
    assert v["gap_note"].startswith("The gap uses the validation AUC of epoch 3, the epoch kept for having the "
                                    "best validation AUC of 4")
    assert v["gap_note"] in v["verdict"]
    w = training_verdict(h, best_epoch=4)
    assert w["gap_validation_selected"] is False and w["gap_note"] is None


def test_training_figure_plots_what_the_verdict_states():
    """The figure's ROC-AUC panel and gap bars are the clean training patient AUC and its gap, the
    numbers of the verdict beside it, not Keras' running image AUC (issue 30: 0.63 plotted, 0.90 stated)."""
    from medxcept.report.figures import training_auc_curves

    h = _history([0.85, 0.90, 0.92], [0.90, 0.97, 0.95], keras_auc=[0.55, 0.63, 0.64])
    v = training_verdict(h, best_epoch=2)
    c = training_auc_curves(h)
    kept = int(np.flatnonzero(h["epoch"] == 2)[0])
    assert c["train_label"] == "train (patients, clean)"
    assert c["train"].iloc[kept] == pytest.approx(v["train_auc_at_best"]) == pytest.approx(0.90)
    assert c["gap"].iloc[kept] == pytest.approx(v["gap_at_best"]) == pytest.approx(-0.07)
    old = training_auc_curves(h.drop(columns=["train_patient_auc"]))
    assert old["train_label"] == "train (images, running)" and old["train"].iloc[kept] == pytest.approx(0.63)
