"""The classifier: Keras' Xception with a small regularized head, and the weights that go into it.

Xception (Chollet, 2017, "Xception: Deep Learning with Depthwise Separable Convolutions") expects
inputs in [-1, 1] of at least 71 x 71 pixels. The model built here takes **uint8-range pixels**
([0, 255], any float or integer dtype) and maps them to [-1, 1] with a ``Rescaling`` layer whose
constants come from :mod:`medxcept.images.preprocess` — so a saved model takes the same cached pixels
that training saw, and the mapping lives in exactly one place.

Only Keras 3 APIs are used (``keras.ops``, layers, ``keras.config``): the same code runs under
the TensorFlow (default), JAX and PyTorch backends.

Weights are explicit. ``"imagenet"`` is the file Keras publishes for
``keras.applications.Xception(weights="imagenet", include_top=False)``: taken from Keras' cache
(``$KERAS_HOME/models`` or ``~/.keras/models``) when it is there and its MD5 matches, otherwise
downloaded once from the published URL into that cache, as Keras does, with a progress bar, and
MD5-checked before use (a corrupt download is deleted, never left in the cache). ``MEDXCEPT_OFFLINE=1``
(``--offline``) forbids the download. ``"none"`` trains from random initialization and the run is
marked "not pretrained" everywhere; a path loads a user's file with a shape check. There is no
silent fallback.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import keras

from medxcept.models import testnet
from medxcept.errors import WeightsError
from medxcept.images.preprocess import to_model_range

__all__ = [
    "IMAGENET_FILE",
    "IMAGENET_MD5",
    "WeightsInfo",
    "IMAGENET_URL",
    "imagenet_weights_path",
    "imagenet_weights_url",
    "fetch_imagenet_weights",
    "offline",
    "resolve_weights",
    "build_model",
    "xception_base",
    "tiny_xception",
    "layer_blocks",
    "freeze_base",
    "unfreeze_top_blocks",
    "count_trainable",
    "detect_device",
    "precision_policy",
    "data_parallel",
]

log = logging.getLogger(__name__)

IMAGENET_FILE = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_MD5 = "b0042744bf5b25fce3cb969f33bebb97"  # the hash keras.applications.xception checks
# keras.applications.xception.WEIGHTS_PATH_NO_TOP, without its file name
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/xception/"
URL_ENV = "MEDXCEPT_WEIGHTS_URL"  # another base URL (a mirror; the tests' local server); the MD5 still applies
OFFLINE_ENV = "MEDXCEPT_OFFLINE"
DOWNLOAD_TIMEOUT_S = 60
BASE_NAME = "xception"
MIN_PX = 71
SCRATCH_BN_MOMENTUM = 0.9

# The exact affine map of to_model_range, derived from it rather than restated: x * scale + offset.
_MODEL_OFFSET = float(to_model_range(0.0))
_MODEL_SCALE = float(to_model_range(1.0)) - _MODEL_OFFSET


@dataclass(frozen=True)
class WeightsInfo:
    """What the model's weights are, for the console and the report's first lines."""

    kind: str  # "imagenet" | "none" | "file"
    path: str | None
    pretrained: bool
    description: str


def imagenet_weights_path() -> Path:
    """Where Keras keeps the ImageNet Xception weights (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models" / IMAGENET_FILE


def imagenet_weights_url() -> str:
    """The published URL of the ImageNet 'notop' file (``$MEDXCEPT_WEIGHTS_URL`` replaces its base)."""
    base = os.environ.get(URL_ENV) or IMAGENET_URL
    return base.rstrip("/") + "/" + IMAGENET_FILE


def offline() -> bool:
    """``MEDXCEPT_OFFLINE`` is set to anything but ``""``/``0``/``false``/``no``: no download at all."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _by_hand(url: str, path: Path) -> str:
    return (f"download {url} on a machine with internet access and copy it to {path} "
            f"(MD5 {IMAGENET_MD5}), or pass --weights PATH to a weights file, or --weights none to train "
            f"from random initialization (the report will say so)")


def fetch_imagenet_weights() -> Path:
    """The ImageNet Xception 'notop' file in Keras' cache, downloaded there first if it is missing.

    As ``keras.utils.get_file`` does for ``keras.applications.Xception``: the same URL, the same
    cache file, the same MD5. A cached file with the right MD5 is used without any request. The
    download goes to a ``.part`` file next to the target, with a progress bar on stderr, and is
    moved into place only after its MD5 matched; a failed or corrupt download is deleted.

    Raises:
        WeightsError: offline (``MEDXCEPT_OFFLINE``), the download failed, or its MD5 differs;
            the message names the URL, the expected path and how to place the file by hand.
    """
    path = imagenet_weights_path()
    url = imagenet_weights_url()
    if path.is_file():
        digest = _md5(path)
        if digest == IMAGENET_MD5:
            return path
        if offline():
            raise WeightsError(
                f"{path} is not the Keras Xception ImageNet 'notop' file (MD5 {digest}, expected "
                f"{IMAGENET_MD5}): it may be truncated, and {OFFLINE_ENV} forbids downloading it again "
                f"from {url}. Replace it: {_by_hand(url, path)}.")
        log.warning("%s has MD5 %s, not %s: downloading it again", path, digest, IMAGENET_MD5)
    elif offline():
        raise WeightsError(
            f"ImageNet weights for Xception were requested but {path} does not exist, and "
            f"{OFFLINE_ENV}/--offline forbids downloading them from {url}: {_by_hand(url, path)}.")
    part = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _download(url, part)
        digest = _md5(part)
        if digest != IMAGENET_MD5:
            raise WeightsError(
                f"the file downloaded from {url} has MD5 {digest}, not {IMAGENET_MD5} (an incomplete "
                f"download or a changed file); nothing was kept in the cache. Retry, or "
                f"{_by_hand(url, path)}.")
        os.replace(part, path)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(
            f"could not download the ImageNet weights for Xception from {url} ({reason}); "
            f"{_by_hand(url, path)}.") from None
    finally:
        part.unlink(missing_ok=True)
    log.info("downloaded the ImageNet Xception weights to %s (MD5 checked)", path)
    return path


def _download(url: str, dest: Path) -> None:
    """Stream ``url`` to ``dest`` with a tqdm progress bar (bytes) on stderr."""
    from tqdm.auto import tqdm

    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(dest, "wb") as fh:  # noqa: S310
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=IMAGENET_FILE,
                  leave=False, dynamic_ncols=True, mininterval=1.0) as bar:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                fh.write(chunk)
                bar.update(len(chunk))
        if total is not None and fh.tell() != total:
            raise ValueError(f"connection closed after {fh.tell()} of {total} bytes")


def _md5(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 - matching Keras' own integrity check, not security
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_weights(weights: str) -> WeightsInfo:
    """Check that the requested weights exist before any training starts.

    ``"imagenet"`` downloads the file into Keras' cache when it is missing
    (:func:`fetch_imagenet_weights`), so this is called before any other work: a failure costs
    nothing.

    Raises:
        WeightsError: ImageNet weights neither cached nor downloadable, or corrupt (names the URL
            and the path to place the file), or a user weights file that does not exist.
    """
    if weights in ("none", "", None):
        return WeightsInfo("none", None, False,
                           "NOT PRETRAINED: random initialization (results are from random initialization)")
    if weights == "imagenet":
        path = fetch_imagenet_weights()
        return WeightsInfo("imagenet", str(path), True, f"ImageNet (Keras cache, MD5 checked: {path.name})")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (use --weights imagenet|none|PATH)")
    if not re.search(r"\.(h5|hdf5|keras)$", path.name):
        raise WeightsError(f"weights file {path} must be a Keras .h5, .weights.h5 or .keras file")
    return WeightsInfo("file", str(path), True, f"user file {path.name}")


def detect_device() -> dict[str, str]:
    """The Keras backend and whether it sees a GPU (``{"backend", "device", "detail"}``)."""
    backend = keras.backend.backend()
    device, detail = "cpu", ""
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                device, detail = "gpu", f"{len(gpus)} GPU(s)"
        elif backend == "jax":
            import jax

            devs = [d for d in jax.devices() if d.platform == "gpu"]
            if devs:
                device, detail = "gpu", f"{len(devs)} x {devs[0].device_kind}"
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                device, detail = "gpu", f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except (ImportError, RuntimeError) as exc:  # a broken GPU stack still trains on CPU; say so
        detail = f"GPU detection failed: {exc}"
    return {"backend": backend, "device": device, "detail": detail}


PRECISION_POLICIES = {"off": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def precision_policy(setting: str, device: dict[str, str] | None = None) -> str:
    """The Keras dtype policy for ``model.mixed_precision``.

    ``"auto"``: ``mixed_bfloat16`` on a GPU (Ampere/Hopper run bf16 at full speed and need no
    loss scaling), ``float32`` on CPU (CPUs gain nothing and lose precision). The head's logits
    stay float32 in every policy (see :func:`build_model`).
    """
    if setting == "auto":
        device = device or detect_device()
        return "mixed_bfloat16" if device["device"] == "gpu" else "float32"
    return PRECISION_POLICIES[setting]


def data_parallel() -> int:
    """Spread each batch over all GPUs when the backend sees more than one; return the device count.

    ``keras.distribution.DataParallel`` (implemented for the JAX backend). On one device, on CPU
    or on another backend nothing changes and 1 is returned. The batch size stays global: each of
    ``k`` GPUs gets ``batch / k`` images.
    """
    if keras.backend.backend() != "jax":
        return 1
    try:
        gpus = keras.distribution.list_devices("gpu")
    except RuntimeError:  # JAX without a GPU platform
        return 1
    if len(gpus) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=gpus))
        log.info("data parallel over %d GPUs", len(gpus))
    return max(len(gpus), 1)


def xception_base(model: keras.Model) -> keras.Model:
    """The Xception sub-model inside a model built by :func:`build_model`."""
    return model.get_layer(BASE_NAME)


#: Channels of the tiny test network (:mod:`medxcept.models.testnet`), by Xception layer; Xception's own
#: are 32, 64, 128, 256, 728, 728, 728/1024, 1536, 2048.
_TINY_WIDTHS = {"block1_conv1": 8, "block1_conv2": 16, "block2": 16, "block3": 32, "block4": 48, "middle": 48,
                "block13_sepconv1": 48, "block13_sepconv2": 64, "block14_sepconv1": 96, "block14_sepconv2": 128}
#: Middle-flow blocks of the tiny network (Xception has eight, ``block5``-``block12``).
_TINY_MIDDLE_BLOCKS = 1


def tiny_xception(input_shape: tuple[int, int, int]) -> keras.Model:
    """A narrow, shallow network with Xception's structure and layer names (the test hook's network).

    The layers of ``keras.applications.Xception(include_top=False)`` in the same order and with
    the same names and strides (so :func:`layer_blocks`, :func:`unfreeze_top_blocks` and Grad-CAM
    see the same thing, and the last feature map is 3 x 3 at 71 px), with the channel counts of
    :data:`_TINY_WIDTHS` and one middle-flow block (``block5``) instead of eight; the exit flow keeps
    its numbers, ``block13`` and ``block14``. Used only when :mod:`medxcept.models.testnet` is active.

    Args:
        input_shape: ``(height, width, 3)``.

    Returns:
        A ``keras.Model`` (not yet named: :func:`build_model` names it ``xception``).
    """
    w = _TINY_WIDTHS
    layers = keras.layers

    def conv_bn(x: keras.KerasTensor, name: str, filters: int, *, strides: int = 1) -> keras.KerasTensor:
        x = layers.Conv2D(filters, (3, 3), strides=strides, use_bias=False, name=name)(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_act")(x)

    def sep_bn(x: keras.KerasTensor, name: str, filters: int) -> keras.KerasTensor:
        x = layers.SeparableConv2D(filters, (3, 3), padding="same", use_bias=False, name=name)(x)
        return layers.BatchNormalization(name=f"{name}_bn")(x)

    def residual(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
        # unnamed, created just before the block it bypasses, as in Keras' Xception
        r = layers.Conv2D(filters, (1, 1), strides=(2, 2), padding="same", use_bias=False)(x)
        return layers.BatchNormalization()(r)

    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, "block1_conv1", w["block1_conv1"], strides=2)
    x = conv_bn(x, "block1_conv2", w["block1_conv2"])
    for i in (2, 3, 4):  # entry flow
        f = w[f"block{i}"]
        r = residual(x, f)
        if i > 2:
            x = layers.Activation("relu", name=f"block{i}_sepconv1_act")(x)
        x = sep_bn(x, f"block{i}_sepconv1", f)
        x = layers.Activation("relu", name=f"block{i}_sepconv2_act")(x)
        x = sep_bn(x, f"block{i}_sepconv2", f)
        x = layers.MaxPooling2D((3, 3), strides=(2, 2), padding="same", name=f"block{i}_pool")(x)
        x = layers.add([x, r])
    for i in range(5, 5 + _TINY_MIDDLE_BLOCKS):  # middle flow
        r = x
        for k in (1, 2, 3):
            x = layers.Activation("relu", name=f"block{i}_sepconv{k}_act")(x)
            x = sep_bn(x, f"block{i}_sepconv{k}", w["middle"])
        x = layers.add([x, r])
    r = residual(x, w["block13_sepconv2"])  # exit flow
    x = layers.Activation("relu", name="block13_sepconv1_act")(x)
    x = sep_bn(x, "block13_sepconv1", w["block13_sepconv1"])
    x = layers.Activation("relu", name="block13_sepconv2_act")(x)
    x = sep_bn(x, "block13_sepconv2", w["block13_sepconv2"])
    x = layers.MaxPooling2D((3, 3), strides=(2, 2), padding="same", name="block13_pool")(x)
    x = layers.add([x, r])
    for k in (1, 2):
        x = sep_bn(x, f"block14_sepconv{k}", w[f"block14_sepconv{k}"])
        x = layers.Activation("relu", name=f"block14_sepconv{k}_act")(x)
    return keras.Model(inputs, x)


def build_model(*, image_px: int, n_classes: int, dropout: float = 0.3,
                weights: WeightsInfo | None = None, pretrained_bn_frozen: bool | None = None,
                seed: int = 0, head: str = "softmax") -> keras.Model:
    """Xception + global average pooling + dropout + dense head producing **logits**.

    Args:
        image_px: input height and width (>= 71).
        n_classes: 2 gives one sigmoid logit; more give ``n_classes`` softmax logits.
        dropout: rate of the dropout layer before the head.
        weights: from :func:`resolve_weights`; ``None`` means random initialization.
        pretrained_bn_frozen: call the base with ``training=False`` so BatchNormalization stays
            in inference mode (Keras' fine-tuning guide: otherwise the first fine-tuning steps
            wreck the pretrained statistics). Defaults to ``weights.pretrained``.
        seed: seed of the dropout layer.
        head: ``"softmax"`` (the dense logits above) or, for ordered grades (``n_classes >= 3``),
            ``"coral"``: one dense score and a :class:`medxcept.models.ordinal.CumulativeLogits` head whose
            output is the class log-probabilities (``train.ordinal_loss``).

    Returns:
        A ``keras.Model`` named ``medxcept_xception`` whose output is logits (float32); the
        probabilities are ``sigmoid``/``softmax`` of them, after calibration.

    Under the test hook ``MEDXCEPT_TEST_NETWORK=tiny`` (:mod:`medxcept.models.testnet`, set by the test
    suite only) the base is :func:`tiny_xception` instead, still named ``xception``, and the model
    ``medxcept_tiny_test_network``; ImageNet weights are refused.
    """
    if image_px < MIN_PX:
        raise WeightsError(f"image_px={image_px} is below Xception's minimum input size of {MIN_PX}")
    if n_classes < 2:
        raise WeightsError(f"n_classes={n_classes}: a classifier needs at least two classes")
    if head not in ("softmax", "coral"):
        raise WeightsError(f"head={head!r} is not one of ['softmax', 'coral']")
    weights = weights or resolve_weights("none")
    if pretrained_bn_frozen is None:
        pretrained_bn_frozen = weights.pretrained
    tiny = testnet.active()
    if tiny and weights.kind == "imagenet":
        raise WeightsError(f"the tiny test network ({testnet.ENV}={testnet.TINY}) cannot take Xception's ImageNet "
                           f"weights; unset {testnet.ENV} to train the real Xception")
    if tiny:
        log.warning("! %s", testnet.DESCRIPTION)
        base = tiny_xception((image_px, image_px, 3))
    else:
        base = keras.applications.Xception(include_top=False, weights=None, input_shape=(image_px, image_px, 3))
    base.name = BASE_NAME
    if weights.kind == "imagenet":
        base.load_weights(weights.path)
    if not weights.pretrained:
        # From scratch on a small cohort there are only a few dozen steps: with Keras' default
        # momentum (0.99) the BN moving statistics would still be near their initial values when
        # the model is evaluated, and inference-mode outputs would be garbage (saturated logits).
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    inputs = keras.Input((image_px, image_px, 3), name="pixels")
    x = keras.layers.Rescaling(_MODEL_SCALE, offset=_MODEL_OFFSET, name="to_xception_range")(inputs)
    x = base(x, training=False) if pretrained_bn_frozen else base(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="dropout")(x)
    units = 1 if n_classes == 2 else n_classes
    # float32 logits even under mixed precision: calibration and the loss need the precision
    if head == "coral" and n_classes > 2:
        from medxcept.models.ordinal import CumulativeLogits

        score = keras.layers.Dense(1, use_bias=False, dtype="float32", name="grade_score")(x)
        logits = CumulativeLogits(n_classes, dtype="float32", name="logits")(score)
    else:
        logits = keras.layers.Dense(units, dtype="float32", name="logits")(x)
    model = keras.Model(inputs, logits, name=testnet.MODEL_NAME if tiny else "medxcept_xception")
    if weights.kind == "file":
        _load_user_weights(model, Path(weights.path))
    return model


def _load_user_weights(model: keras.Model, path: Path) -> None:
    """Load a user file into the whole model, or else into the Xception base; explain a mismatch."""
    errors = []
    targets = [("whole model", model), ("Xception base", xception_base(model))]
    for what, target in targets:
        try:
            if path.name.endswith(".keras"):
                other = keras.saving.load_model(path, compile=False)
                target.set_weights(other.get_weights())
            else:
                target.load_weights(path)
            log.info("loaded weights from %s into the %s", path.name, what)
            return
        except (ValueError, OSError, KeyError, TypeError) as exc:
            errors.append(f"{what}: {str(exc).splitlines()[0][:200]}")
    raise WeightsError(
        f"weights file {path} does not fit this model (input {model.input_shape[1]} px, "
        f"{model.output_shape[-1]} output unit(s)): " + "; ".join(errors)
        + ". Use a file saved from the same architecture, or --weights imagenet|none."
    )


def layer_blocks(base: keras.Model) -> list[tuple[keras.layers.Layer, int]]:
    """Each layer of the Xception base with its block number (1-14).

    Keras names the main-path layers ``block{i}_...``; the residual 1x1 convolutions and their
    BatchNormalization are unnamed (``conv2d``, ``batch_normalization``) and are created just
    before the block they bypass, so an unnamed layer belongs to the next named block.
    """
    pattern = re.compile(r"^block(\d+)_")
    out: list[tuple[keras.layers.Layer, int]] = []
    pending: list[keras.layers.Layer] = []
    for layer in base.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        m = pattern.match(layer.name)
        if m is None:
            pending.append(layer)
            continue
        block = int(m.group(1))
        out.extend((p, block) for p in pending)
        pending = []
        out.append((layer, block))
    out.extend((p, 14) for p in pending)
    return out


def freeze_base(model: keras.Model) -> None:
    """Stage 1: the whole Xception base frozen; only the head trains."""
    xception_base(model).trainable = False


def unfreeze_top_blocks(model: keras.Model, n_blocks: int, *, keep_bn_frozen: bool = True) -> list[str]:
    """Stage 2: make the top ``n_blocks`` Xception blocks trainable (14 = all).

    BatchNormalization layers stay frozen when ``keep_bn_frozen`` (pretrained weights): their
    moving statistics and affine parameters are not updated, as Keras' fine-tuning guide
    prescribes. Returns the names of the layers made trainable; raises if none matched.
    """
    if not 1 <= n_blocks <= 14:
        raise WeightsError(f"unfreeze_blocks={n_blocks} must be in 1..14")
    base = xception_base(model)
    base.trainable = True
    first = 15 - n_blocks
    opened = []
    for layer, block in layer_blocks(base):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = block >= first and not (is_bn and keep_bn_frozen)
        if layer.trainable and layer.weights:
            opened.append(layer.name)
    if not opened:
        raise WeightsError(f"unfreezing the top {n_blocks} block(s) matched no layer with weights")
    return opened


def count_trainable(model: keras.Model) -> int:
    """Number of trainable scalar parameters."""
    return int(sum(int(w.numpy().size) if hasattr(w, "numpy") else int(w.size) for w in model.trainable_weights))
