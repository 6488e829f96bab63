"""The classifier: a Keras ImageNet backbone with a small regularized head, and the weights that go into it.

The backbone comes from the registry :mod:`medxcept.models.backbones` (``model.backbone``; Xception by
default). Xception (Chollet, 2017, "Xception: Deep Learning with Depthwise Separable Convolutions")
expects inputs in [-1, 1] of at least 71 x 71 pixels. The model built here takes **uint8-range
pixels** ([0, 255], any float or integer dtype) and maps them to what its backbone's ImageNet weights
expect inside the model: for Xception a ``Rescaling`` layer (``to_xception_range``) whose constants
come from :mod:`medxcept.images.preprocess`, for DenseNet and ResNet a :class:`ChannelAffine` layer
(Keras' 'torch' and 'caffe' modes), and EfficientNetV2 scales its own ``[0, 255]`` input. So a saved
model takes the same cached pixels that training saw.

Only Keras 3 APIs are used (``keras.ops``, layers, ``keras.config``): the same code runs under
the TensorFlow (default), JAX and PyTorch backends.

Weights are explicit. ``"imagenet"`` is the file Keras publishes for
``keras.applications.<Backbone>(weights="imagenet", include_top=False)``, fetched by
``keras.utils.get_file`` as Keras does: taken from Keras' cache (``$KERAS_HOME/models`` or
``~/.keras/models``) when it is there and its hash matches, otherwise downloaded once from the
published URL into that cache, with a progress bar, and hash-checked before use (a corrupt download is
deleted, never left in the cache). ``MEDXCEPT_OFFLINE=1`` (``--offline``) forbids the download. ``"none"`` trains from random initialization and the run is
marked "not pretrained" everywhere; a path loads a user's file with a shape check. There is no
silent fallback.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from medxcept.errors import WeightsError
from medxcept.images.preprocess import to_model_range
from medxcept.models import testnet
from medxcept.models.backbones import DEFAULT, Backbone, block_of, get_backbone

__all__ = [
    "WeightsInfo",
    "ChannelAffine",
    "imagenet_weights_path",
    "imagenet_weights_url",
    "fetch_imagenet_weights",
    "offline",
    "resolve_weights",
    "build_model",
    "backbone_base",
    "backbone_of",
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

#: another base URL for every backbone's file (a mirror folder holding the files; the tests' local
#: server): ``$MEDXCEPT_WEIGHTS_URL/<weights_file>``; the hash still applies
URL_ENV = "MEDXCEPT_WEIGHTS_URL"
OFFLINE_ENV = "MEDXCEPT_OFFLINE"
DOWNLOAD_TIMEOUT_S = 60
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
    backbone: str | None = None  # the backbone an "imagenet" file belongs to


def _keras_home() -> Path:
    # read at call time (Keras reads KERAS_HOME once, at import)
    return Path(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"))


def imagenet_weights_path(backbone: str = DEFAULT) -> Path:
    """Where Keras keeps a backbone's ImageNet 'notop' weights (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    return _keras_home() / "models" / get_backbone(backbone).weights_file


def imagenet_weights_url(backbone: str = DEFAULT) -> str:
    """The published URL of a backbone's ImageNet 'notop' file (``$MEDXCEPT_WEIGHTS_URL`` replaces its base)."""
    entry = get_backbone(backbone)
    base = os.environ.get(URL_ENV)
    return base.rstrip("/") + "/" + entry.weights_file if base else entry.weights_url


def offline() -> bool:
    """``MEDXCEPT_OFFLINE`` is set to anything but ``""``/``0``/``false``/``no``: no download at all."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _by_hand(url: str, path: Path, entry: Backbone) -> str:
    return (f"download {url} on a machine with internet access and copy it to {path} "
            f"({_algorithm(entry.weights_hash).upper()} {entry.weights_hash}), or pass --weights PATH to a weights "
            f"file, or --weights none to train from random initialization (the report will say so)")


def _algorithm(file_hash: str) -> str:
    """``"md5"`` or ``"sha256"``, by the hash's length, as ``keras.utils.get_file`` decides."""
    return "sha256" if len(file_hash) == 64 else "md5"


def _file_hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)  # MD5 matches Keras' own integrity check, not security
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_imagenet_weights(backbone: str = DEFAULT) -> Path:
    """A backbone's ImageNet 'notop' file in Keras' cache, downloaded there first if it is missing.

    ``keras.utils.get_file(file, url, file_hash=..., cache_subdir="models")``, as
    ``keras.applications`` calls it: the same URL, the same cache file, the same hash. A cached file
    with the right hash is used without any request; a cached file with another hash is downloaded
    again. What medxcept adds: the offline refusal (checked before ``get_file`` is called), a
    corrupt download deleted rather than left in the cache, a 60 s socket timeout, and one error
    message saying what to do.

    Raises:
        WeightsError: offline (``MEDXCEPT_OFFLINE``), the download failed, or its hash differs;
            the message names the URL, the expected path and how to place the file by hand.
    """
    entry = get_backbone(backbone)
    path = imagenet_weights_path(backbone)
    url = imagenet_weights_url(backbone)
    algo = _algorithm(entry.weights_hash)
    if offline():
        if not path.is_file():
            raise WeightsError(
                f"ImageNet weights for {entry.label} were requested but {path} does not exist, and "
                f"{OFFLINE_ENV}/--offline forbids downloading them from {url}: {_by_hand(url, path, entry)}.")
        digest = _file_hash(path, algo)
        if digest != entry.weights_hash:
            raise WeightsError(
                f"{path} is not the Keras {entry.label} ImageNet 'notop' file ({algo.upper()} {digest}, expected "
                f"{entry.weights_hash}): it may be truncated, and {OFFLINE_ENV} forbids downloading it again "
                f"from {url}. Replace it: {_by_hand(url, path, entry)}.")
        return path
    timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib's urlretrieve (get_file) takes no timeout
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # get_file takes a missing cache for a read-only one
        got = keras.utils.get_file(entry.weights_file, url, file_hash=entry.weights_hash, cache_subdir="models",
                                   cache_dir=str(_keras_home()))
    except ValueError:  # get_file's hash check after a download: the file is left in place
        digest = _file_hash(path, algo) if path.is_file() else "unknown"
        path.unlink(missing_ok=True)
        raise WeightsError(
            f"the file downloaded from {url} has {algo.upper()} {digest}, not {entry.weights_hash} (an incomplete "
            f"download or a changed file); nothing was kept in the cache. Retry, or "
            f"{_by_hand(url, path, entry)}.") from None
    except Exception as exc:  # noqa: BLE001 - get_file raises a bare Exception for HTTP and URL errors
        path.unlink(missing_ok=True)
        raise WeightsError(
            f"could not download the ImageNet weights for {entry.label} from {url} ({exc}); "
            f"{_by_hand(url, path, entry)}.") from None
    finally:
        socket.setdefaulttimeout(timeout)
    if Path(got) != path:  # get_file falls back to /tmp/.keras when the cache is not writable
        log.warning("Keras' cache %s is not writable: the weights are in %s", path.parent, got)
    return Path(got)


def resolve_weights(weights: str, backbone: str = DEFAULT) -> WeightsInfo:
    """Check that the requested weights exist before any training starts.

    ``"imagenet"`` downloads ``backbone``'s file into Keras' cache when it is missing
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
        path = fetch_imagenet_weights(backbone)
        algo = _algorithm(get_backbone(backbone).weights_hash).upper()
        return WeightsInfo("imagenet", str(path), True, f"ImageNet (Keras cache, {algo} checked: {path.name})",
                           backbone=backbone)
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


@keras.saving.register_keras_serializable(package="medxcept")
class ChannelAffine(keras.layers.Layer):
    """``y[..., c] = x[..., order[c]] * scale[c] + offset[c]``: a fixed per-channel input mapping.

    Keras' 'torch' (DenseNet: ``[0, 1]``, then ImageNet mean and SD per channel) and 'caffe' (ResNet:
    RGB to BGR, ImageNet BGR means subtracted) preprocessing modes, inside the model and with no
    weights, so that a saved model takes ``[0, 255]`` pixels like every medxcept model
    (:meth:`medxcept.models.backbones.Backbone.affine` gives the constants).
    """

    def __init__(self, order: tuple[int, ...], scale: tuple[float, ...], offset: tuple[float, ...],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order = tuple(int(i) for i in order)
        self.scale = tuple(float(v) for v in scale)
        self.offset = tuple(float(v) for v in offset)

    def call(self, x: Any) -> Any:
        x = keras.ops.cast(x, self.compute_dtype)
        if self.order != tuple(range(len(self.order))):
            x = keras.ops.take(x, list(self.order), axis=-1)
        return x * keras.ops.convert_to_tensor(self.scale, self.compute_dtype) + keras.ops.convert_to_tensor(
            self.offset, self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "order": list(self.order), "scale": list(self.scale),
                "offset": list(self.offset)}


def backbone_base(model: keras.Model) -> keras.Model:
    """The backbone sub-model (named after its registry entry) inside a model built by :func:`build_model`."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise WeightsError(f"model {model.name!r} has no backbone sub-model (not built by medxcept's build_model)")


#: The name of runs and code written before the registry: the Xception base is the backbone base.
xception_base = backbone_base


def backbone_of(model: keras.Model) -> Backbone:
    """The registry entry of the backbone inside a model built by :func:`build_model`."""
    return get_backbone(backbone_base(model).name)


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
                seed: int = 0, head: str = "softmax", backbone: str = DEFAULT) -> keras.Model:
    """Backbone (Xception by default) + global average pooling + dropout + dense head producing **logits**.

    Args:
        image_px: input height and width (at least the backbone's ``min_px``: 71 for Xception).
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
        backbone: a name of :data:`medxcept.models.backbones.BACKBONES` (``model.backbone``).

    Returns:
        A ``keras.Model`` named after the backbone (``medxcept_xception``) whose output is logits
        (float32); the probabilities are ``sigmoid``/``softmax`` of them, after calibration.

    Under the test hook ``MEDXCEPT_TEST_NETWORK=tiny`` (:mod:`medxcept.models.testnet`, set by the test
    suite only) an Xception base is :func:`tiny_xception` instead, still named ``xception``, and the
    model ``medxcept_tiny_test_network``; ImageNet weights are refused. Other backbones are built
    as they are (the tests build them small).
    """
    entry = get_backbone(backbone)
    if image_px < entry.min_px:
        raise WeightsError(f"image_px={image_px} is below {entry.label}'s minimum input size of {entry.min_px}")
    if n_classes < 2:
        raise WeightsError(f"n_classes={n_classes}: a classifier needs at least two classes")
    if head not in ("softmax", "coral"):
        raise WeightsError(f"head={head!r} is not one of ['softmax', 'coral']")
    weights = weights or resolve_weights("none")
    if pretrained_bn_frozen is None:
        pretrained_bn_frozen = weights.pretrained
    if weights.kind == "imagenet" and (weights.backbone or DEFAULT) != entry.name:
        raise WeightsError(f"the ImageNet weights resolved for {weights.backbone} do not fit the backbone "
                           f"{entry.name}")
    tiny = testnet.active() and entry.name == DEFAULT
    if tiny and weights.kind == "imagenet":
        raise WeightsError(f"the tiny test network ({testnet.ENV}={testnet.TINY}) cannot take Xception's ImageNet "
                           f"weights; unset {testnet.ENV} to train the real Xception")
    if tiny:
        log.warning("! %s", testnet.DESCRIPTION)
        base = tiny_xception((image_px, image_px, 3))
        base.name = entry.name
    else:
        base = entry.build((image_px, image_px, 3))
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
    mapping = _input_mapping(entry)
    x = mapping(inputs) if mapping is not None else inputs
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
    model = keras.Model(inputs, logits, name=testnet.MODEL_NAME if tiny else entry.model_name)
    if weights.kind == "file":
        _load_user_weights(model, Path(weights.path))
    return model


def _input_mapping(entry: Backbone) -> keras.layers.Layer | None:
    """The layer mapping ``[0, 255]`` pixels to what the backbone's ImageNet weights expect (``None``:
    the Keras model takes ``[0, 255]`` itself)."""
    if entry.input_mode == "tf":
        # Xception: the exact affine map of to_model_range, as before the registry (same layer, same name)
        return keras.layers.Rescaling(_MODEL_SCALE, offset=_MODEL_OFFSET, name=entry.range_layer)
    if entry.input_mode == "in_model":  # the Keras model scales [0, 255] itself (include_preprocessing)
        return None
    order, scale, offset = entry.affine()
    return ChannelAffine(order, scale, offset, name=entry.range_layer)


def _load_user_weights(model: keras.Model, path: Path) -> None:
    """Load a user file into the whole model, or else into the backbone; explain a mismatch."""
    errors = []
    base = backbone_base(model)
    targets = [("whole model", model), (f"{get_backbone(base.name).label} base", base)]
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
    """Each layer of a backbone with its block number (1 ... ``n_blocks`` of its registry entry).

    The grouping is :func:`medxcept.models.backbones.block_of`. For Xception: Keras names the
    main-path layers ``block{i}_...``; the residual 1x1 convolutions and their BatchNormalization are
    unnamed (``conv2d``, ``batch_normalization``) and are created just before the block they bypass,
    so an unnamed layer belongs to the next named block.
    """
    layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    blocks = block_of(get_backbone(base.name), [layer.name for layer in layers])
    return list(zip(layers, blocks, strict=True))


def freeze_base(model: keras.Model) -> None:
    """Stage 1: the whole backbone frozen; only the head trains."""
    backbone_base(model).trainable = False


def unfreeze_top_blocks(model: keras.Model, n_blocks: int, *, keep_bn_frozen: bool = True) -> list[str]:
    """Stage 2: make the top ``n_blocks`` blocks of the backbone trainable (its ``n_blocks`` = all; Xception 14).

    BatchNormalization layers stay frozen when ``keep_bn_frozen`` (pretrained weights): their
    moving statistics and affine parameters are not updated, as Keras' fine-tuning guide
    prescribes. Returns the names of the layers made trainable; raises if none matched.
    """
    entry = backbone_of(model)
    if not 1 <= n_blocks <= entry.n_blocks:
        raise WeightsError(f"unfreeze_blocks={n_blocks} must be in 1..{entry.n_blocks} for {entry.label}")
    base = backbone_base(model)
    base.trainable = True
    first = entry.n_blocks + 1 - n_blocks
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
