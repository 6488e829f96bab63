"""The model: Xception blocks addressed by name, staged unfreezing, explicit weights, and the suite's
tiny test network (same builder, same layer names and block logic; :mod:`medxcept.models.testnet`)."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from medxcept.errors import ConfigError, WeightsError  # noqa: E402
from medxcept.images.preprocess import to_model_range  # noqa: E402
from medxcept.models import testnet  # noqa: E402
from medxcept.models.backbones import get_backbone  # noqa: E402
from medxcept.models.network import (  # noqa: E402
    build_model,
    count_trainable,
    freeze_base,
    layer_blocks,
    resolve_weights,
    unfreeze_top_blocks,
    xception_base,
)
from tests.conftest import real_xception  # noqa: E402


@pytest.fixture(scope="module")
def model():
    """The real Xception (the block tests are about Keras' Xception itself)."""
    with real_xception():
        return build_model(image_px=71, n_classes=2, weights=resolve_weights("none"))


@pytest.fixture(scope="module")
def tiny():
    """The suite's tiny test network, built by the same ``build_model``."""
    assert testnet.active(), "tests/conftest.py sets MEDXCEPT_TEST_NETWORK=tiny"
    return build_model(image_px=71, n_classes=2, weights=resolve_weights("none"))


def _layer_kinds(base):
    """Layer names in network order, the unnamed ones (residual convolutions, BN, adds) by class."""
    return [layer.name if layer.name.startswith("block") else type(layer).__name__ for layer in base.layers]


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
    assert str(tmp_path / "models" / get_backbone("xception").weights_file) in str(exc.value)


def test_imagenet_weights_corrupt_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / get_backbone("xception").weights_file).write_bytes(b"not weights")
    monkeypatch.setenv("MEDXCEPT_OFFLINE", "1")  # online, it is downloaded again: tests/test_weights_download.py
    with pytest.raises(WeightsError, match="MD5"):
        resolve_weights("imagenet")


def test_user_weights_of_the_wrong_shape_fail_clearly(tmp_path):
    other = build_model(image_px=71, n_classes=3, weights=resolve_weights("none"))
    path = tmp_path / "three_classes.weights.h5"
    other.save_weights(path)
    with pytest.raises(WeightsError, match="does not fit this model"):
        build_model(image_px=71, n_classes=2, weights=resolve_weights(str(path)))


@pytest.mark.xception
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

    from medxcept.models.network import build_model, precision_policy

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


# --------------------------------------------------------------------- the tiny test network


def test_tiny_network_is_xception_without_middle_blocks_6_to_12(model, tiny):
    """Layer for layer (names, unnamed residual layers, order) Keras' Xception minus blocks 6-12."""
    real = _layer_kinds(xception_base(model))
    first = real.index("block6_sepconv1_act")
    last = max(i for i, name in enumerate(real) if name.startswith("block12_"))
    assert real[last + 1] == "Add", "block 12 ends with its residual add"
    assert _layer_kinds(xception_base(tiny)) == real[:first] + real[last + 2:]
    assert tiny.name == testnet.MODEL_NAME and model.name == "medxcept_xception"
    assert xception_base(tiny).output.shape[1:3] == xception_base(model).output.shape[1:3] == (3, 3)
    assert tiny.count_params() < model.count_params() / 100


def test_tiny_network_blocks_and_stage2_as_xception(tiny):
    blocks = layer_blocks(xception_base(tiny))
    nums = [b for _, b in blocks]
    assert set(nums) == {1, 2, 3, 4, 5, 13, 14} and nums == sorted(nums)
    freeze_base(tiny)
    width = xception_base(tiny).output.shape[-1]
    assert count_trainable(tiny) == width + 1
    opened = unfreeze_top_blocks(tiny, 2, keep_bn_frozen=True)
    assert opened and all(n.startswith(("block13", "block14")) or n.startswith("conv2d") for n in opened)
    for layer, block in blocks:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable, layer.name
        elif layer.weights:
            assert layer.trainable == (block >= 13), layer.name
    freeze_base(tiny)


def test_tiny_network_takes_no_imagenet_weights_and_its_weights_never_load_into_xception(tmp_path, tiny,
                                                                                        monkeypatch):
    fake = resolve_weights("none").__class__("imagenet", str(tmp_path / "x.h5"), True, "ImageNet")
    with pytest.raises(WeightsError, match="tiny test network.*ImageNet"):
        build_model(image_px=71, n_classes=2, weights=fake)
    path = tmp_path / "tiny.weights.h5"
    tiny.save_weights(path)
    monkeypatch.setenv(testnet.ENV, "")
    with pytest.raises(WeightsError, match="does not fit this model"):
        build_model(image_px=71, n_classes=2, weights=resolve_weights(str(path)))


def test_test_network_variable_is_tiny_or_unset(monkeypatch):
    monkeypatch.setenv(testnet.ENV, "")
    assert not testnet.active() and testnet.provenance() == {}
    monkeypatch.setenv(testnet.ENV, "small")
    with pytest.raises(ConfigError, match="MEDXCEPT_TEST_NETWORK='small'"):
        build_model(image_px=71, n_classes=2)
    monkeypatch.setenv(testnet.ENV, "tiny")
    assert testnet.provenance() == {"test_network": testnet.DESCRIPTION}
