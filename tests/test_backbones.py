"""The backbone registry (:mod:`medxcept.models.backbones`): every entry checked against Keras itself.

For each backbone, built small (the real ``keras.applications`` network at 32-71 px, random weights):

* its ImageNet file name, hash and URL are the ones Keras' own application asks ``get_file`` for;
* its blocks: as many as the entry says, in network order, every layer in one, and "top n blocks"
  opens exactly the last ``n`` units (BatchNormalization kept frozen);
* its input mapping gives, on raw ``[0, 255]`` pixels, what Keras' ``preprocess_input`` for that
  network gives (so ImageNet weights see the range they were trained on);
* a saved model (``model.keras``) loads and predicts the same.

Adding a backbone is its registry entry plus one line in :data:`EXPECTED` below.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from medxcept.config import load_config  # noqa: E402
from medxcept.errors import ConfigError, WeightsError  # noqa: E402
from medxcept.models import network as mx  # noqa: E402
from medxcept.models.backbones import BACKBONES, DEFAULT, block_of, get_backbone, names  # noqa: E402

#: name -> (Keras application module, the top two units' layer-name prefixes, size built at in these tests)
EXPECTED = {
    "xception": ("xception", ("block13_", "block14_"), 71),
    "densenet121": ("densenet", ("conv5_block15_", "conv5_block16_"), 32),
    "efficientnetv2b0": ("efficientnet_v2", ("block6g_", "block6h_"), 32),
    "resnet50": ("resnet50", ("conv5_block2_", "conv5_block3_"), 32),
}


def test_every_entry_is_tested_and_xception_is_the_default():
    assert set(EXPECTED) == set(BACKBONES)
    assert DEFAULT == "xception" and names()[0] == "xception"
    x = get_backbone("xception")
    # the names of runs saved before the registry: a saved Xception run loads as it did
    assert (x.range_layer, x.model_name, x.min_px, x.n_blocks) == ("to_xception_range", "medxcept_xception", 71, 14)


class _Fetched(Exception):
    pass


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_weights_file_hash_and_url_are_those_keras_fetches(name, monkeypatch):
    """``keras.applications.X(weights="imagenet", include_top=False)`` asks ``get_file`` for exactly the
    registry's file, URL and hash (recorded, never downloaded)."""
    from keras.src.utils import file_utils

    calls = []

    def record(fname, origin=None, **kwargs):
        calls.append((fname, origin, kwargs.get("file_hash"), kwargs.get("cache_subdir")))
        raise _Fetched

    monkeypatch.setattr(file_utils, "get_file", record)
    entry = get_backbone(name)
    with pytest.raises(_Fetched):
        getattr(keras.applications, entry.application)(include_top=False, weights="imagenet",
                                                       input_shape=(EXPECTED[name][2],) * 2 + (3,))
    assert calls == [(entry.weights_file, entry.weights_url, entry.weights_hash, "models")]


@pytest.fixture(scope="module")
def built():
    """Each backbone's model at its test size (the real network; Xception outside the tiny test hook)."""
    from tests.conftest import real_xception

    out = {}
    with real_xception():
        for name, (_, _, px) in EXPECTED.items():
            keras.utils.set_random_seed(0)
            out[name] = mx.build_model(image_px=px, n_classes=2, weights=mx.resolve_weights("none"), backbone=name)
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_blocks_are_the_networks_units_in_order_and_top_n_opens_the_last_n(built, name):
    model = built[name]
    entry = mx.backbone_of(model)
    assert entry.name == name and model.name == entry.model_name
    blocks = mx.layer_blocks(mx.backbone_base(model))
    nums = [b for _, b in blocks]
    assert set(nums) == set(range(1, entry.n_blocks + 1)), "every unit found, numbered 1..n_blocks"
    assert nums == sorted(nums), "blocks in network order"
    top2 = EXPECTED[name][1]
    by_name = {layer.name: b for layer, b in blocks}
    for prefix, want in zip(top2, (entry.n_blocks - 1, entry.n_blocks), strict=True):
        got = {b for n, b in by_name.items() if n.startswith(prefix)}
        assert got == {want}, (prefix, got)
    mx.freeze_base(model)
    head = mx.count_trainable(model)
    opened = mx.unfreeze_top_blocks(model, 2, keep_bn_frozen=True)
    assert opened and mx.count_trainable(model) > head
    for layer, block in blocks:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable, layer.name
        elif layer.trainable_weights or (layer.weights and layer.trainable):
            assert block >= entry.n_blocks - 1, f"{layer.name} (block {block}) opened by 'top 2 blocks'"
    # every layer named after one of the top two units with trainable weights is open
    for layer, _ in blocks:
        if layer.name.startswith(top2) and layer.weights and not isinstance(layer, keras.layers.BatchNormalization):
            assert layer.trainable, layer.name
    with pytest.raises(WeightsError, match=f"1..{entry.n_blocks}"):
        mx.unfreeze_top_blocks(model, entry.n_blocks + 1)
    mx.freeze_base(model)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_input_mapping_equals_keras_preprocess_input(built, name):
    """What the backbone sees (first layer of the base) from raw pixels == Keras' preprocess_input + the
    network's own in-model scaling."""
    import importlib

    model = built[name]
    px = EXPECTED[name][2]
    x = np.random.default_rng(1).integers(0, 256, (2, px, px, 3)).astype("float32")
    keras_app = importlib.import_module(f"keras.applications.{EXPECTED[name][0]}")
    want = np.asarray(keras_app.preprocess_input(x.copy()))
    entry = get_backbone(name)
    if entry.range_layer is None:
        got = x  # the model's input goes to the Keras network unchanged: preprocess_input is the identity
    else:
        got = keras.ops.convert_to_numpy(model.get_layer(entry.range_layer)(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_channel_affine_layer_saves_and_loads(tmp_path):
    """The DenseNet/ResNet input mapping is a medxcept layer: it must survive ``model.keras``."""
    order, scale, offset = get_backbone("densenet121").affine()
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, mx.ChannelAffine((2, 1, 0), scale, offset, name="m")(inputs))
    x = np.random.default_rng(3).integers(0, 256, (2, 4, 4, 3)).astype("float32")
    want = x[..., ::-1] * np.array(scale, "float32") + np.array(offset, "float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-6)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(again.predict(x, verbose=0), want, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "efficientnetv2b0"])
def test_saved_model_loads_and_predicts_the_same(built, name, tmp_path):
    model = built[name]
    px = EXPECTED[name][2]
    x = np.random.default_rng(2).integers(0, 256, (3, px, px, 3)).astype("uint8")
    path = tmp_path / "model.keras"
    model.save(path)
    again = keras.saving.load_model(path, compile=False)
    assert again.name == model.name and mx.backbone_of(again).name == name
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_block_grouping_rule_on_names():
    """Unmatched layers join the next unit, trailing ones the last; numbered names keep their number."""
    dn = get_backbone("densenet121")
    assert block_of(dn, ["conv1_conv", "conv2_block1_0_bn", "conv2_block1_1_conv", "pool2_conv",
                         "conv3_block1_0_bn", "bn", "relu"]) == [1, 1, 1, 2, 2, 2, 2]
    x = get_backbone("xception")
    assert block_of(x, ["conv2d", "block1_conv1", "block5_sepconv1", "batch_normalization", "block13_sepconv1",
                        "block14_sepconv2_act", "add"]) == [1, 1, 5, 13, 13, 14, 14]


def test_config_names_the_backbone_and_checks_size_and_blocks_against_it():
    assert load_config().model.backbone == "xception"
    cfg = load_config(overrides={"model.backbone": "densenet121", "preprocess.image_px": 32,
                                 "train.unfreeze_blocks": 58})
    assert cfg.model.backbone == "densenet121"
    with pytest.raises(ConfigError, match="model.backbone='vgg16' is not one of"):
        load_config(overrides={"model.backbone": "vgg16"})
    with pytest.raises(ConfigError, match="below 71, the smallest input Xception accepts"):
        load_config(overrides={"preprocess.image_px": 64})
    with pytest.raises(ConfigError, match=r"unfreeze_blocks=15 must be in 1\.\.14"):
        load_config(overrides={"train.unfreeze_blocks": 15})
    with pytest.raises(ConfigError, match=r"must be in 1\.\.21 for model.backbone=efficientnetv2b0"):
        load_config(overrides={"model.backbone": "efficientnetv2b0", "train.unfreeze_blocks": 22})


def test_config_hash_of_an_xception_run_is_unchanged_by_the_new_field():
    """Runs and CV directories are named after the config hash: adding model.backbone must not rename them."""
    import dataclasses
    import hashlib
    import json

    from medxcept.config import config_hash, config_to_dict

    cfg = load_config()
    data = config_to_dict(cfg)
    del data["model"]["backbone"]
    data["split"].pop("inner_val_fraction", None) if data["split"].get("inner_val_fraction") is None else None
    old = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
    assert config_hash(cfg) == old
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone="densenet121"))
    assert config_hash(other) != old


@pytest.mark.slow
def test_a_run_on_another_backbone_names_it_everywhere_and_a_resume_keeps_it(tiny_cohort, tmp_path, capsys):
    """``--backbone efficientnetv2b0`` (the real network at 32 px) killed after epoch 1, then ``--resume``: the
    resumed run trains the same backbone from its config.yaml, and the report, metrics.json,
    versions.json and model.keras name it. Changing it on resume is refused. Only the killed run is a
    subprocess (SIGKILL); the refusal and the resume run ``pipelines.retina.main`` in this process."""
    import json
    import os
    import signal
    import subprocess
    import sys

    import pandas as pd
    import yaml

    from pipelines.retina import main
    from tests.conftest import REPO

    run = tmp_path / "reports" / "bb"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "MEDXCEPT_FAULT": "epoch_end:1"}
    res = subprocess.run([sys.executable, "-m", "pipelines.retina", "--cohort", str(tiny_cohort), "--out-dir",
                          str(tmp_path / "reports"), "--run-name", "bb", "--backbone", "efficientnetv2b0", "--image-px", "32",
                          "-q"], cwd=REPO, capture_output=True, text=True, timeout=1200, env=env)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["backbone"] == "efficientnetv2b0"
    capsys.readouterr()
    assert main(["--resume", str(run), "--backbone", "xception", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--backbone" in err and "Traceback" not in err
    assert main(["--resume", str(run), "-q"]) == 0, capsys.readouterr().err[-2000:]
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["backbone"] == "efficientnetv2b0" and metrics["run"]["network"] == "EfficientNetV2B0"
    versions = json.loads((run / "versions.json").read_text())
    assert versions["model"]["backbone"]["keras_application"] == "keras.applications.EfficientNetV2B0"
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "· EfficientNetV2B0, recipe" in html and "EfficientNetV2B0 (keras.applications" in html
    assert "Xception" not in html.split("<body", 1)[1].split("Grad-CAM", 1)[0], "no literal Xception describing it"
    model = keras.saving.load_model(run / "model.keras", compile=False)
    assert model.name == "medxcept_efficientnetv2b0" and mx.backbone_of(model).name == "efficientnetv2b0"
