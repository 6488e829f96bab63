"""The backend-touching parts of medxcept, run under ``KERAS_BACKEND=jax`` without TensorFlow.

Run by ``tests/test_backend_jax.py`` in one subprocess (``python tests/jax_backend_run.py OUT``);
it writes ``OUT/results.json`` and a few arrays that the test compares with the TensorFlow backend.
TensorFlow is made unimportable first, as on the GPU machines this project is measured on (JAX and
PyTorch, no TensorFlow): anything in the JAX path that reaches for ``tf.*`` fails here.

Steps (each records what the tests assert):

1. a from-scratch fit of the model of ``build_model`` at 71 px (the suite's tiny Xception-shaped test
   network, :mod:`medxcept.models.testnet`, inherited from the test process) on 32 training images with a planted lesion signal,
   interrupted after its first epoch and resumed from the checkpoint (``medxcept.models.train.fit``:
   ``CohortDataset``, augmentation, ``BestEpoch`` early stopping, per-epoch checkpoints);
2. prediction and test-time augmentation of the trained model; its weights saved for TensorFlow;
3. temperature scaling of the validation logits;
4. class-activation maps (:mod:`medxcept.models.explain`);
5. the mixed-precision policy and ``data_parallel()`` on one CPU device;
6. ``benchmarks/gpu_xception.py --smoke --skip-timm`` in this same process.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import json
import os
import sys
import time
from pathlib import Path

PX, N_TRAIN, N_VAL, N_TEST, BATCH = 71, 32, 16, 16, 8
EPOCHS, CRASH_AFTER = 2, 1


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """Make ``import tensorflow`` fail, as on a machine where it is not installed."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"{name} is blocked: the JAX path must not need TensorFlow")
        return None


#: the class of each of the eight class-activation maps: images 0-3 for class 1, then for class 0
CAM_CLASSES = (1, 1, 1, 1, 0, 0, 0, 0)


def planted_images(n: int, seed: int) -> tuple:
    """Fundus-like discs; label 1 images carry bright yellow "lesions" (the planted signal)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:PX, :PX]
    disc = (yy - PX // 2) ** 2 + (xx - PX // 2) ** 2 <= 32 ** 2
    y = np.arange(n) % 2
    rng.shuffle(y)
    images = np.zeros((n, PX, PX, 3), np.float32)
    for i in range(n):
        base = np.array([150.0, 70.0, 30.0]) * rng.uniform(0.8, 1.2)
        images[i][disc] = base + rng.normal(0, 12, (int(disc.sum()), 3))
        if y[i]:
            for _ in range(rng.integers(5, 9)):
                cy, cx = rng.integers(14, PX - 14, 2)
                spot = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(3, 6) ** 2
                images[i][spot & disc] = (250.0, 230.0, 90.0)
    return np.clip(images, 0, 255).astype(np.uint8), y.astype(np.int64)


def main(out: Path) -> None:
    sys.meta_path.insert(0, _NoTensorFlow())
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    cpu = {"last": time.process_time()}

    def lap(name: str, t0: float) -> None:
        now = time.process_time()
        timings[name] = round(time.perf_counter() - t0, 1)
        timings[name + "_cpu"] = round(now - cpu["last"], 1)
        cpu["last"] = now

    import keras
    import numpy as np

    from medxcept.config import load_config
    from medxcept.evaluation.calibrate import fit_temperature
    from medxcept.images.augment import AugmentConfig, augment_batch, build_augment
    from medxcept.models import epoch_eval, inference, train
    from medxcept.models.explain import class_activation_maps
    from medxcept.models.network import (
        build_model,
        data_parallel,
        detect_device,
        precision_policy,
        resolve_weights,
    )

    res: dict = {"backend": keras.backend.backend()}
    lap("import", t_start)
    images, y = planted_images(N_TRAIN + N_VAL + N_TEST, seed=11)
    tr = slice(0, N_TRAIN)
    va = slice(N_TRAIN, N_TRAIN + N_VAL)
    te = slice(N_TRAIN + N_VAL, None)
    groups = np.array([f"p{i:03d}" for i in range(len(y))])  # one image per patient
    # From scratch (--weights none, what the demo runs): the whole network trains, BN in training mode.
    weights = resolve_weights("none")
    cfg = load_config(overrides={
        "model.weights": "none", "preprocess.image_px": PX, "train.batch_size": BATCH, "train.head_epochs": 1,
        "train.finetune_epochs": EPOCHS - 1, "train.patience": 1, "train.workers": 1, "augment.balance": "none",
        "seed": 0})
    run_dir = out / "run"

    # 1. fit, interrupted after CRASH_AFTER epochs, then resumed
    t0 = time.perf_counter()
    original = train._History.on_epoch_end

    def crash(self, epoch, logs=None):  # noqa: ANN001, ANN202
        original(self, epoch, logs)
        if len(self.rows) == CRASH_AFTER:
            raise KeyboardInterrupt

    train._History.on_epoch_end = crash
    try:
        train.fit(images[tr], y[tr], images[va], y[va], groups[va], cfg=cfg, weights=weights, n_classes=2,
                  run_dir=run_dir)
        res["interrupted"] = False
    except KeyboardInterrupt:
        res["interrupted"] = True
    train._History.on_epoch_end = original
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    res["rows_at_interrupt"] = state["rows"]
    lap("fit_until_interrupt", t0)
    t0 = time.perf_counter()
    result = train.fit(images[tr], y[tr], images[va], y[va], groups[va], cfg=cfg,
                       weights=weights, n_classes=2, run_dir=run_dir, resume=True)
    lap("fit_resumed", t0)
    model = result.model
    res["model_name"] = model.name
    res["history"] = result.history.to_dict(orient="list")
    res["stages"] = result.stages
    res["best_epoch"] = result.best_epoch
    res["precision"], res["n_devices"] = result.precision, result.n_devices
    res["steps_per_epoch"] = train.steps_per_epoch(N_TRAIN, BATCH)
    res["final_state"] = json.loads((run_dir / "checkpoints" / "state.json").read_text())

    # 2. prediction, TTA; weights for the TensorFlow comparison
    t0 = time.perf_counter()
    val_logits = inference.predict_logits(model, images[va], batch_size=BATCH)
    test_logits = inference.predict_logits(model, images[te], batch_size=BATCH)
    how = cfg.eval.patient_aggregation
    res["val_patient_auc_of_returned_model"] = epoch_eval._patient_auc(groups[va], y[va], epoch_eval._probs(val_logits), how=how)
    res["test_patient_auc"] = epoch_eval._patient_auc(groups[te], y[te], epoch_eval._probs(test_logits), how=how)
    tta = inference.predict_logits_tta(model, images[te], passes=2, seed=3, batch_size=BATCH)
    aug = build_augment(AugmentConfig(strength="light", balance="none"), seed=3)
    manual = test_logits.copy()
    for k in range(2):
        copies = augment_batch(aug, images[te], rng=np.random.default_rng([3, 7919, k]))
        manual = manual + inference.predict_logits(model, copies, batch_size=BATCH)
    res["tta_max_abs_diff_to_manual_mean"] = float(np.max(np.abs(tta - manual / 3)))
    res["tta_max_abs_diff_to_plain"] = float(np.max(np.abs(tta - test_logits)))
    model.save_weights(out / "model.weights.h5")
    np.save(out / "images.npy", images)
    np.save(out / "labels.npy", y)
    np.save(out / "val_logits.npy", val_logits)
    np.save(out / "test_logits.npy", test_logits)
    lap("predict_tta", t0)

    # 3. calibration
    t0 = time.perf_counter()
    res["temperature"] = fit_temperature(val_logits, y[va])
    lap("calibration", t0)

    # 4. class-activation maps
    t0 = time.perf_counter()
    # both classes of each image (CAM_CLASSES): after a few dozen steps from scratch one class's
    # evidence may be nowhere positive, but the spatial mean of the two maps before clipping are
    # opposite (the logit minus the bias), so one of each image's two maps shows evidence
    cams = class_activation_maps(model, np.concatenate([images[te][:4]] * 2), np.array(CAM_CLASSES),
                                 batch_size=4)
    np.save(out / "cams.npy", cams)
    # the last feature map itself (varies with the image even where the logits hardly do)
    from medxcept.models.explain import _head

    # and in training mode (BN on batch statistics): after two epochs from scratch BN's moving
    # statistics are unsettled and inference-mode features hardly differ between images, while
    # training-mode ones do, so they make the cross-backend comparison discriminating. (It updates
    # the moving statistics: the model is not used for prediction after this.)
    features = keras.Model(model.input, _head(model)[0].input)
    x4 = keras.ops.convert_to_tensor(images[te][:4].astype("float32"))
    np.save(out / "features.npy", keras.ops.convert_to_numpy(features(x4, training=False)))
    np.save(out / "features_training.npy", keras.ops.convert_to_numpy(features(x4, training=True)))
    lap("cam", t0)

    t0 = time.perf_counter()
    # 5. precision policy, data parallelism on one device
    res["device"] = detect_device()
    res["policy_auto"] = precision_policy("auto")
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        bf16 = build_model(image_px=PX, n_classes=2)
    finally:
        keras.config.set_dtype_policy(previous)
    conv = bf16.get_layer("xception").get_layer("block1_conv1")
    res["bf16_conv_dtypes"] = [conv.compute_dtype, conv.variable_dtype]
    res["bf16_logits_dtype"] = keras.backend.standardize_dtype(bf16.output.dtype)
    res["data_parallel"] = data_parallel()
    res["distribution_after_data_parallel"] = repr(keras.distribution.distribution())

    lap("precision_parallel", t0)

    # 6. the GPU benchmark's smoke mode, in this process
    t0 = time.perf_counter()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_xception

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        gpu_xception.main(["--smoke", "--skip-timm", "--json", str(out / "gpu_xception.json")])
    res["gpu_xception_stdout"] = buf.getvalue()
    lap("gpu_xception_smoke", t0)

    res["tensorflow_imported"] = "tensorflow" in sys.modules
    timings["total"] = round(time.perf_counter() - t_start, 1)
    timings["total_cpu"] = round(time.process_time(), 1)
    res["timings"] = timings
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    main(Path(sys.argv[1]))
