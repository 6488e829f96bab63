"""Class-activation maps: equal to Grad-CAM for a GAP + linear head, and peaking where the signal is."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

keras = pytest.importorskip("keras")

from medxcept.errors import ConfigError  # noqa: E402
from medxcept.models.explain import class_activation_maps  # noqa: E402
from medxcept.report.cam import cam_gallery, gallery_cells  # noqa: E402

PX = 32


def _normalize(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The test's own ReLU -> bilinear upsampling -> divide-by-max."""
    cam = np.maximum(cam, 0.0)
    up = keras.ops.convert_to_numpy(keras.ops.image.resize(cam[..., None], size, interpolation="bilinear"))[..., 0]
    peak = up.reshape(len(up), -1).max(axis=1)[:, None, None]
    return np.where(peak > 0, up / np.where(peak > 0, peak, 1.0), 0.0)


def _grad_cam(model: keras.Model, images: np.ndarray, class_index: int | None) -> np.ndarray:
    """Grad-CAM with tf.GradientTape: feature maps weighted by the spatial mean of the logit's gradient."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the reference Grad-CAM uses tf.GradientTape (TensorFlow backend)")
    tf = pytest.importorskip("tensorflow")
    gap = next(layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    both = keras.Model(model.input, [gap.input, model.output])
    with tf.GradientTape() as tape:
        fmap, logits = both(tf.convert_to_tensor(images.astype("float32")), training=False)
        if logits.shape[-1] == 1:
            target = logits[:, 0] if class_index in (None, 1) else -logits[:, 0]
        else:
            idx = tf.argmax(logits, axis=-1) if class_index is None else tf.fill([len(images)], class_index)
            target = tf.gather(logits, idx, axis=1, batch_dims=1)
    grads = tape.gradient(target, fmap)
    alpha = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.reduce_sum(alpha * fmap, axis=-1).numpy()
    return _normalize(cam, images.shape[1:3])


def _tiny_model(kernel: list[float], units: int = 1) -> keras.Model:
    """pixels -> 4x4 average 'features' of the R and G channels (8 x 8 map) -> GAP -> dropout -> dense.

    The feature map is known: channel 0 is the red intensity, channel 1 the green one, averaged over
    4 x 4 blocks. The dense kernel picks what the logit looks at.
    """
    inputs = keras.Input((PX, PX, 3), name="pixels")
    feats = keras.layers.Conv2D(2, 4, strides=4, use_bias=False, activation="relu", name="features")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(feats)
    x = keras.layers.Dropout(0.5, name="dropout")(x)
    out = keras.layers.Dense(units, name="logits")(x)
    model = keras.Model(inputs, out)
    w = np.zeros((4, 4, 3, 2), dtype="float32")
    w[:, :, 0, 0] = 1 / 16.0  # channel 0: mean red
    w[:, :, 1, 1] = 1 / 16.0  # channel 1: mean green
    model.get_layer("features").set_weights([w])
    model.get_layer("logits").set_weights([np.asarray(kernel, dtype="float32").reshape(2, units),
                                           np.zeros(units, dtype="float32")])
    return model


def _planted_images() -> np.ndarray:
    """Image 0: red square top-left, green square bottom-right. Image 1: the other way round."""
    x = np.zeros((2, PX, PX, 3), dtype=np.uint8)
    x[0, 4:12, 4:12, 0] = 255
    x[0, 20:28, 20:28, 1] = 255
    x[1, 20:28, 20:28, 0] = 255
    x[1, 4:12, 4:12, 1] = 255
    return x


def _peak(cam: np.ndarray) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(cam), cam.shape))


def _in_square(rc: tuple[int, int], top_left: int) -> bool:
    return top_left <= rc[0] < top_left + 8 and top_left <= rc[1] < top_left + 8


# --------------------------------------------------------------------- planted signal (no Xception)


def test_map_peaks_on_the_planted_region_and_follows_the_class():
    model = _tiny_model([1.0, -1.0])  # logit = mean(red) - mean(green)
    x = _planted_images()
    pos = class_activation_maps(model, x)  # positive class: evidence = red
    neg = class_activation_maps(model, x, class_index=0)  # negative class: evidence = green
    assert pos.shape == (2, PX, PX) and pos.dtype == np.float32
    assert _in_square(_peak(pos[0]), 4) and _in_square(_peak(pos[1]), 20)
    assert _in_square(_peak(neg[0]), 20) and _in_square(_peak(neg[1]), 4)
    for cam in (pos, neg):
        assert cam.min() >= 0.0 and np.allclose(cam.reshape(2, -1).max(axis=1), 1.0)
    # no evidence for the positive class in the green square: the ReLU leaves zeros there
    assert pos[0, 22:26, 22:26].max() == 0.0
    # known feature map (8 x 8): positive map = relu(red - green) block means, upsampled
    red = np.zeros((8, 8), dtype="float32")
    red[1:3, 1:3] = 1.0
    green = np.zeros((8, 8), dtype="float32")
    green[5:7, 5:7] = 1.0
    expected = _normalize((red - green)[None], (PX, PX))[0]
    np.testing.assert_allclose(pos[0], expected, atol=1e-5)


def test_blank_image_gives_an_all_zero_map():
    model = _tiny_model([1.0, 0.0])
    cam = class_activation_maps(model, np.zeros((1, PX, PX, 3), dtype=np.uint8))
    assert cam.shape == (1, PX, PX) and not cam.any()


def test_multiclass_default_maps_the_predicted_class():
    # three logits: red, 2 x green, nothing
    model = _tiny_model([1.0, 0.0, 0.0, 0.0, 2.0, 0.0], units=3)
    x = np.zeros((2, PX, PX, 3), dtype=np.uint8)
    x[:, 4:12, 4:12, 0] = 255  # both: red square top-left
    x[1, 20:28, 20:28, 1] = 255  # image 1 also has a green square bottom-right: predicted "green"
    cams = class_activation_maps(model, x)
    assert _in_square(_peak(cams[0]), 4)  # class 0 (red) predicted: the red square
    assert _in_square(_peak(cams[1]), 20)  # class 1 (green) predicted: the green square
    np.testing.assert_allclose(cams, _grad_cam(model, x, None), atol=1e-5)
    red = class_activation_maps(model, x, class_index=0)
    assert _in_square(_peak(red[1]), 4)
    assert not class_activation_maps(model, x, class_index=2).any()  # zero kernel: no evidence


def test_tiny_model_cam_equals_grad_cam():
    model = _tiny_model([0.7, -0.3])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, PX, PX, 3)).astype(np.uint8)
    for ci in (None, 0, 1):
        np.testing.assert_allclose(class_activation_maps(model, x, class_index=ci), _grad_cam(model, x, ci),
                                   atol=1e-5)


def test_rejects_models_without_a_gap_linear_head():
    inputs = keras.Input((PX, PX, 3))
    x = keras.layers.Conv2D(2, 4, strides=4)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    with pytest.raises(ConfigError, match="linear"):
        class_activation_maps(keras.Model(inputs, out), np.zeros((1, PX, PX, 3), np.uint8))
    flat = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ConfigError, match="GlobalAveragePooling2D"):
        class_activation_maps(flat, np.zeros((1, PX, PX, 3), np.uint8))
    with pytest.raises(ConfigError, match="class_index"):
        class_activation_maps(_tiny_model([1.0, 0.0]), np.zeros((1, PX, PX, 3), np.uint8), class_index=2)


# --------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def xception_71():
    from medxcept.models.network import build_model
    from tests.conftest import real_xception

    keras.utils.set_random_seed(0)
    with real_xception():
        return build_model(image_px=71, n_classes=2)


def test_xception_cam_equals_grad_cam(xception_71):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(3, 71, 71, 3)).astype(np.uint8)
    for ci in (None, 0):
        cam = class_activation_maps(xception_71, x, class_index=ci, batch_size=2)  # two batches
        ref = _grad_cam(xception_71, x, ci)
        assert cam.shape == (3, 71, 71)
        np.testing.assert_allclose(cam, ref, atol=1e-4)
    # not a vacuous comparison: at least one of the two classes has positive evidence
    both = np.concatenate([class_activation_maps(xception_71, x), class_activation_maps(xception_71, x, 0)])
    assert both.max() == pytest.approx(1.0)


# --------------------------------------------------------------------- gallery


def test_gallery_cells_pick_the_most_confident_cases_per_row():
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1])
    p = np.array([0.9, 0.6, 0.95, 0.1, 0.3, 0.7, 0.2, 0.8, 0.45])
    cells = gallery_cells(y, p, 0.5, n_per_cell=2)
    assert cells["tp"].tolist() == [2, 0]  # 0.95, 0.9 (0.6 left out)
    assert cells["tn"].tolist() == [3, 4]  # 0.1, 0.3
    assert cells["fp"].tolist() == [7, 5]  # 0.8, 0.7
    assert cells["fn"].tolist() == [6, 8]  # 0.2, 0.45
    assert gallery_cells(y, p, 0.5, n_per_cell=5)["fp"].tolist() == [7, 5]
    # at the threshold a case is predicted positive
    assert gallery_cells([0], [0.5], 0.5)["fp"].tolist() == [0]


def test_cam_gallery_is_an_inline_png_and_handles_empty_rows():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(4, 24, 24, 3)).astype(np.uint8)
    cams = rng.random((4, 6, 6)).astype(np.float32)  # coarser than the images: resized
    uri = cam_gallery(imgs, cams, [1, 0, 1, 0], [0.9, 0.2, 0.8, 0.1], 0.5, n_per_cell=2,
                      keys=["P-a", "P-b", "P-c", "P-d"])  # no false positives or negatives
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    gray = cam_gallery(imgs[..., :1].astype(np.float32) / 255.0, cams, [1, 0, 1, 0], [0.1, 0.9, 0.8, 0.1], 0.5)
    assert gray.startswith("data:image/png;base64,")
    with pytest.raises(ValueError, match="same length"):
        cam_gallery(imgs, cams[:3], [1, 0, 1, 0], [0.9, 0.2, 0.8, 0.1], 0.5)
