"""The training path under ``KERAS_BACKEND=jax`` (CPU), and its agreement with TensorFlow.

One subprocess (``tests/jax_backend_run.py``, module-scoped fixture) runs under JAX with TensorFlow
made unimportable and CUDA hidden: a from-scratch fit with per-epoch checkpoints, interrupted and
resumed, best-epoch selection, prediction and TTA, temperature scaling, class-activation maps, the
mixed-precision policy, ``data_parallel()`` and ``benchmarks/gpu_xception.py --smoke``. Each test
asserts one part of its results.

Where the backends must agree, this process (TensorFlow, the default backend) loads the weights
file JAX saved and recomputes, with float32 tolerances (seen on 2 CPU cores, Keras 3.15, JAX 0.10,
TensorFlow 2.21, in brackets): logits within 1e-4 (4e-9), the last feature map within 1e-4 of its
largest value in inference mode (2e-9 of 0.011) and in training mode (1.1e-5 of 2.3),
class-activation maps within 1e-3 (8e-7; maps in [0, 1]), and the fitted temperature within 0.1 %
(identical: it is NumPy/SciPy on logits that agree). Training trajectories are not
compared: the backends draw different random numbers, so JAX training is checked on its own (it
learns the planted signal; the resumed run continues the learning-rate schedule).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "jax_backend_run.py"


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    if importlib.util.find_spec("jax") is None:
        if os.environ.get("CI"):
            pytest.fail("jax is not installed: CI must run the JAX backend tests (pip install -e '.[test]')")
        pytest.skip("jax is not installed (it is in the test extra: pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
           "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1200)
    if proc.returncode != 0 or not (out / "results.json").is_file():
        pytest.fail(f"the JAX run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    res = json.loads((out / "results.json").read_text())
    res["dir"] = out
    return res


@pytest.fixture(scope="module")
def tf_model(jax_run):
    """The weights JAX trained, loaded by this process's backend (TensorFlow)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"the comparison runs under TensorFlow; this process uses {keras.backend.backend()}")
    from medxcept.models.network import build_model, resolve_weights

    return build_model(image_px=71, n_classes=2, weights=resolve_weights(str(jax_run["dir"] / "model.weights.h5")))


def _split(jax_run, name):
    from tests.jax_backend_run import N_TEST, N_TRAIN, N_VAL

    images = np.load(jax_run["dir"] / "images.npy")
    y = np.load(jax_run["dir"] / "labels.npy")
    part = {"val": slice(N_TRAIN, N_TRAIN + N_VAL), "test": slice(N_TRAIN + N_VAL, N_TRAIN + N_VAL + N_TEST)}[name]
    return images[part], y[part]


def test_jax_run_used_jax_on_cpu_without_tensorflow(jax_run):
    from medxcept.models import testnet

    assert jax_run["backend"] == "jax"
    assert jax_run["model_name"] == (testnet.MODEL_NAME if testnet.active() else "medxcept_xception")
    assert jax_run["device"] == {"backend": "jax", "device": "cpu", "detail": ""}
    assert jax_run["tensorflow_imported"] is False, "the JAX path must run where TensorFlow is not installed"


def test_jax_fit_resumes_after_an_interrupt_with_schedule_and_history_intact(jax_run):
    from medxcept.config import load_config
    from medxcept.models.train import _schedule
    from tests.jax_backend_run import CRASH_AFTER, EPOCHS

    assert jax_run["interrupted"] and len(jax_run["rows_at_interrupt"]) == CRASH_AFTER
    h = jax_run["history"]
    assert h["epoch"] == list(range(1, EPOCHS + 1)), "the resumed run completes the planned epochs"
    first = jax_run["rows_at_interrupt"][0]
    assert {k: h[k][0] for k in first} == first, "epochs before the interrupt come from the checkpoint unchanged"
    # the learning rate logged after each epoch is the schedule at that step count: the resumed
    # optimizer continued from the checkpoint's iteration count, not from zero
    tc = load_config().train
    steps = jax_run["steps_per_epoch"]
    sched = _schedule(tc.head_lr, steps, EPOCHS, tc.warmup_epochs)
    import keras

    expected = [float(keras.ops.convert_to_numpy(sched(e * steps))) for e in range(1, EPOCHS + 1)]
    np.testing.assert_allclose(h["lr"], expected, rtol=1e-5)
    final = jax_run["final_state"]
    assert final["stage_finished"] and len(final["rows"]) == EPOCHS


def test_jax_fit_returns_its_best_epoch_weights(jax_run):
    h = jax_run["history"]
    best = jax_run["best_epoch"]
    auc, loss = np.array(h["val_patient_auc"]), np.array(h["val_loss"])
    top = np.flatnonzero(np.isclose(auc, np.nanmax(auc), atol=1e-6))
    assert best - 1 == top[np.argmin(loss[top])], "highest validation patient AUC, ties: lower validation loss"
    assert jax_run["val_patient_auc_of_returned_model"] == pytest.approx(auc[best - 1], abs=1e-6)


def test_jax_training_learns_the_planted_signal(jax_run):
    """Training AUC (training-mode batches) far above chance and a falling loss.

    Held-out AUC is not asserted: from scratch, two epochs leave BatchNormalization's moving
    statistics unsettled, so inference-mode logits are nearly constant under either backend
    (the TensorFlow test that asserts held-out learning trains 8 epochs on 60 patients).
    """
    h = jax_run["history"]
    assert max(h["auc"]) >= 0.8, h["auc"]
    assert h["loss"][-1] < h["loss"][0], h["loss"]


def test_jax_tta_is_the_mean_of_seeded_augmented_copies(jax_run):
    assert jax_run["tta_max_abs_diff_to_manual_mean"] <= 1e-6
    assert jax_run["tta_max_abs_diff_to_plain"] > 0


def test_jax_precision_policy_and_data_parallel_on_one_cpu(jax_run):
    assert jax_run["policy_auto"] == "float32" and jax_run["precision"] == "float32"
    assert jax_run["bf16_conv_dtypes"] == ["bfloat16", "float32"] and jax_run["bf16_logits_dtype"] == "float32"
    assert jax_run["data_parallel"] == 1 and jax_run["n_devices"] == 1
    assert jax_run["distribution_after_data_parallel"] == "None", "one device: no distribution is set"


def test_gpu_xception_smoke_under_jax(jax_run):
    stdout = jax_run["gpu_xception_stdout"]
    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r"^\((a|b|c)\)\s.*?\s(\S+)\s+(\S+)\s+(n/a|[\d.]+ GiB)\s*$", stdout, flags=re.M)}
    assert set(rows) == {"a", "b", "c"}, stdout
    for path in ("a", "b"):
        train, infer = (float(v) for v in rows[path])
        assert train > 0 and infer > 0 and math.isfinite(train) and math.isfinite(infer)
    assert "backend: jax" in stdout and "jax 0." in stdout
    res = json.loads((jax_run["dir"] / "gpu_xception.json").read_text())["keras"]
    assert res["n_devices"] == 1 and res["policy"] == "float32" and res["jit"] is True


def test_same_weights_give_the_same_logits_in_tensorflow(jax_run, tf_model):
    from medxcept.models.inference import predict_logits

    for name in ("val", "test"):
        images, _ = _split(jax_run, name)
        jax_logits = np.load(jax_run["dir"] / f"{name}_logits.npy")
        tf_logits = predict_logits(tf_model, images, batch_size=8)
        np.testing.assert_allclose(tf_logits, jax_logits, rtol=0, atol=1e-4)


def test_same_weights_give_the_same_feature_maps_in_tensorflow(jax_run):
    """The network's last feature map (3 x 3 x K at 71 px: K = 2048 for Xception, 128 for the suite's
    tiny test network), in inference and in training mode.

    Training mode (BN on the batch's statistics) is what varies from image to image after two
    epochs from scratch; it changes BN's moving statistics, so it runs on a model of its own.
    """
    import keras

    from medxcept.models.explain import _head
    from medxcept.models.network import build_model, resolve_weights

    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"the comparison runs under TensorFlow; this process uses {keras.backend.backend()}")
    model = build_model(image_px=71, n_classes=2, weights=resolve_weights(str(jax_run["dir"] / "model.weights.h5")))
    features = keras.Model(model.input, _head(model)[0].input)
    images, _ = _split(jax_run, "test")
    x4 = images[:4].astype("float32")
    tf_inf = keras.ops.convert_to_numpy(features(x4, training=False))
    tf_train = keras.ops.convert_to_numpy(features(x4, training=True))
    for tf_f, name in ((tf_inf, "features"), (tf_train, "features_training")):
        jax_f = np.load(jax_run["dir"] / f"{name}.npy")
        assert jax_f.shape == tf_f.shape == (4, 3, 3, features.output.shape[-1])
        np.testing.assert_allclose(tf_f, jax_f, rtol=0, atol=1e-4 * np.abs(jax_f).max(), err_msg=name)
    jax_train = np.load(jax_run["dir"] / "features_training.npy")
    assert np.std(jax_train, axis=0).mean() > 0.05 * np.abs(jax_train).mean(), "features must differ by image"


def test_same_weights_give_the_same_class_activation_maps_in_tensorflow(jax_run, tf_model):
    from medxcept.models.explain import class_activation_maps

    images, _ = _split(jax_run, "test")
    jax_cams = np.load(jax_run["dir"] / "cams.npy")
    assert jax_cams.shape[0] == 8
    # each image's two maps: one of them shows evidence (else nothing would be compared)
    assert all(max(jax_cams[i].max(), jax_cams[i + 4].max()) == pytest.approx(1.0) for i in range(4))
    tf_cams = class_activation_maps(tf_model, np.concatenate([images[:4]] * 2), np.array([1, 1, 1, 1, 0, 0, 0, 0]),
                                    batch_size=4)
    np.testing.assert_allclose(tf_cams, jax_cams, rtol=0, atol=1e-3)


def test_temperature_fitted_on_jax_logits_equals_tensorflow(jax_run, tf_model):
    import warnings

    from medxcept.evaluation.calibrate import fit_temperature
    from medxcept.models.inference import predict_logits

    images, y = _split(jax_run, "val")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a temperature at its search bound warns in both backends alike
        t_tf = fit_temperature(predict_logits(tf_model, images, batch_size=8), y)
    assert t_tf == pytest.approx(jax_run["temperature"], rel=1e-3)
