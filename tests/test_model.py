"""The model: Xception blocks addressed by name, staged unfreezing, explicit weights."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from medxcept.errors import WeightsError  # noqa: E402
from medxcept.model import (  # noqa: E402
    IMAGENET_FILE,
    build_model,
    count_trainable,
    freeze_base,
    layer_blocks,
    resolve_weights,
    unfreeze_top_blocks,
    xception_base,
)
from medxcept.preprocess import to_model_range  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return build_model(image_px=71, n_classes=2, weights=resolve_weights("none"))


def test_every_xception_layer_has_a_block_and_blocks_are_ordered(model):
    blocks = layer_blocks(xception_base(model))
    nums = [b for _, b in blocks]
    assert set(nums) == set(range(1, 15))
    assert nums == sorted(nums), "blocks must come in network order"
    names = {layer.name: b for layer, b in blocks}
    assert names["block14_sepconv2"] == 14 and names["block1_conv1"] == 1


def test_input_mapping_is_exactly_to_model_range(model):
    layer = model.get_layer("to_xception_range")
    x = np.array([[0.0, 127.5, 255.0]], dtype=np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), to_model_range(x), atol=1e-7)


def test_stage2_opens_only_the_top_blocks_and_keeps_bn_frozen(model):
    freeze_base(model)
    head_only = count_trainable(model)
    assert head_only == 2048 + 1  # dense head: 2048 weights + bias
    opened = unfreeze_top_blocks(model, 2, keep_bn_frozen=True)
    assert opened and all(n.startswith(("block13", "block14")) or n.startswith("conv2d") for n in opened)
    for layer, block in layer_blocks(xception_base(model)):
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable, layer.name
        elif layer.weights:
            assert layer.trainable == (block >= 13), layer.name
    assert count_trainable(model) > head_only


def test_bn_statistics_unchanged_by_a_stage2_step(model):
    freeze_base(model)
    unfreeze_top_blocks(model, 1, keep_bn_frozen=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    bn = model.get_layer("xception").get_layer("block14_sepconv1_bn")
    before = [np.array(w) for w in bn.get_weights()]
    conv = model.get_layer("xception").get_layer("block14_sepconv1")
    conv_before = [np.array(w) for w in conv.get_weights()]
    x = np.random.default_rng(0).integers(0, 255, (4, 71, 71, 3)).astype("float32")
    model.train_on_batch(x, np.array([[0], [1], [0], [1]], dtype="float32"))
    for a, b in zip(before, bn.get_weights(), strict=False):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(conv_before, conv.get_weights(), strict=False))


def test_imagenet_weights_missing_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("MEDXCEPT_OFFLINE", "1")  # downloading: tests/test_weights_download.py
    with pytest.raises(WeightsError) as exc:
        resolve_weights("imagenet")
    assert str(tmp_path / "models" / IMAGENET_FILE) in str(exc.value)


def test_imagenet_weights_corrupt_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / IMAGENET_FILE).write_bytes(b"not weights")
    monkeypatch.setenv("MEDXCEPT_OFFLINE", "1")  # online, it is downloaded again: tests/test_weights_download.py
    with pytest.raises(WeightsError, match="MD5"):
        resolve_weights("imagenet")


def test_user_weights_of_the_wrong_shape_fail_clearly(tmp_path):
    other = build_model(image_px=71, n_classes=3, weights=resolve_weights("none"))
    path = tmp_path / "three_classes.weights.h5"
    other.save_weights(path)
    with pytest.raises(WeightsError, match="does not fit this model"):
        build_model(image_px=71, n_classes=2, weights=resolve_weights(str(path)))


def test_user_weights_round_trip(tmp_path, model):
    path = tmp_path / "mine.weights.h5"
    model.save_weights(path)
    info = resolve_weights(str(path))
    assert info.pretrained and info.kind == "file"
    again = build_model(image_px=71, n_classes=2, weights=info)
    for a, b in zip(model.get_weights(), again.get_weights(), strict=False):
        np.testing.assert_array_equal(a, b)


def test_precision_policy_is_bf16_on_gpu_float32_on_cpu_and_logits_stay_float32():
    import keras

    from medxcept.model import build_model, precision_policy

    assert precision_policy("auto", {"device": "cpu"}) == "float32"
    assert precision_policy("auto", {"device": "gpu"}) == "mixed_bfloat16"
    assert precision_policy("float16") == "mixed_float16" and precision_policy("off") == "float32"
    before = keras.config.dtype_policy().name
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model(image_px=71, n_classes=2)
    finally:
        keras.config.set_dtype_policy(before)
    conv = model.get_layer("xception").get_layer("block1_conv1")
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert model.get_layer("logits").compute_dtype == "float32"  # calibration needs full-precision logits
    assert keras.backend.standardize_dtype(model.output.dtype) == "float32"
