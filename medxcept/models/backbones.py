"""The backbone registry: every ImageNet network medxcept can put under its head, one entry each.

A backbone is described by data, not by code paths: which ``keras.applications`` builder makes it
(always ``include_top=False``), how the uint8-range pixels the pipeline feeds the model are mapped to
the range its ImageNet weights expect, its smallest and native input size, how its layers group into
the blocks that staged fine-tuning unfreezes from the top, and the published ImageNet 'notop' file
(name, hash and URL, as Keras' own application sources give them, so that
``keras.utils.get_file`` fetches and checks it exactly as ``keras.applications.X(weights="imagenet")``
would).

**Blocks.** "The top ``n`` blocks" means the same thing for every backbone: the last ``n`` of the
network's repeated units, in the order data flows through them: an Xception block (``block1`` ...
``block14``), a DenseNet dense layer (``conv2_block1`` ... ``conv5_block16``), a ResNet bottleneck
(``conv2_block1`` ... ``conv5_block3``), an EfficientNetV2 MBConv block (``block1a`` ... ``block6h``).
A layer outside every unit belongs to the next unit (Xception's residual 1 x 1 convolutions, DenseNet's
transition layers, every network's stem), and the layers after the last unit (DenseNet's final
BatchNormalization, EfficientNet's ``top_conv``) belong to the last. ``n`` equal to
:attr:`Backbone.n_blocks` unfreezes everything. The units differ in size (a DenseNet dense layer is
much smaller than an Xception block), so the same ``n`` opens a different share of the weights:
the report states the count of trainable parameters.

**Adding a backbone** is one :class:`Backbone` entry in :data:`BACKBONES` (take the file name, hash and
URL from ``keras/src/applications/<name>.py``: ``WEIGHTS_PATH_NO_TOP`` / ``BASE_WEIGHTS_PATH`` and the
``file_hash`` of the ``include_top=False`` branch) plus its line in ``tests/test_backbones.py``, which
builds it small and checks its blocks, input mapping and weights download.

This module imports no Keras (the configuration validates names and sizes against it);
:mod:`medxcept.models.network` builds the networks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from medxcept.errors import ConfigError

__all__ = ["Backbone", "BACKBONES", "DEFAULT", "get_backbone", "names", "block_of", "provenance"]

_KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"

#: ImageNet channel statistics of the 'torch' preprocessing mode (RGB, on [0, 1] pixels)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
#: ImageNet channel means of the 'caffe' mode (BGR order, on [0, 255] pixels)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Backbone:
    """One ImageNet network under medxcept's head.

    Args:
        name: the registry key (``--backbone``, ``model.backbone``), also the name of the base
            sub-model inside a built model.
        application: the ``keras.applications`` builder, e.g. ``"Xception"``.
        paper: where it comes from, for the docs and the report.
        input_mode: how ``[0, 255]`` pixels become what the ImageNet weights expect, as Keras'
            ``imagenet_utils.preprocess_input`` modes: ``"tf"`` (``[-1, 1]``), ``"torch"`` (``[0, 1]``,
            then ImageNet mean and SD per RGB channel), ``"caffe"`` (RGB to BGR, then ImageNet BGR
            means subtracted, no scaling) or ``"in_model"`` (the Keras model takes ``[0, 255]`` and
            scales itself: ``include_preprocessing=True``).
        range_layer: the name of medxcept's layer that does that mapping (``None`` for ``"in_model"``).
        min_px, default_px: the smallest input Keras accepts, and the native ImageNet size.
        block_pattern: a regular expression matched at the start of a layer name; its groups identify
            the repeated unit the layer belongs to (see the module docstring).
        n_blocks: how many units the network has (checked against the built network in the tests).
        weights_file: the ImageNet 'notop' file name in Keras' cache (``~/.keras/models``).
        weights_hash: its MD5 or SHA-256, as Keras' application source checks it.
        weights_url: the published URL of that file.
        model_name: the name of the whole medxcept model (``model.keras``).
        builder_kwargs: extra keyword arguments of the builder.
    """

    name: str
    application: str
    paper: str
    input_mode: str
    range_layer: str | None
    min_px: int
    default_px: int
    block_pattern: str
    n_blocks: int
    weights_file: str
    weights_hash: str
    weights_url: str
    model_name: str
    builder_kwargs: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.input_mode not in ("tf", "torch", "caffe", "in_model"):
            raise ValueError(f"backbone {self.name}: input_mode={self.input_mode!r}")
        if (self.range_layer is None) != (self.input_mode == "in_model"):
            raise ValueError(f"backbone {self.name}: range_layer is needed unless the model scales itself")
        if not self.weights_url.endswith("/" + self.weights_file):
            raise ValueError(f"backbone {self.name}: the URL must end with the file name")

    @property
    def label(self) -> str:
        """The network's usual name, e.g. ``"DenseNet121"`` (its ``keras.applications`` builder)."""
        return self.application

    def affine(self) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]:
        """The input mapping as ``(channel_order, scale, offset)``: ``y[..., c] = x[..., order[c]] * scale[c]
        + offset[c]`` on ``[0, 255]`` pixels (identity for ``"in_model"``)."""
        if self.input_mode == "tf":
            return (0, 1, 2), (1 / 127.5,) * 3, (-1.0,) * 3
        if self.input_mode == "torch":
            return ((0, 1, 2), tuple(1 / (255.0 * s) for s in _TORCH_STD),
                    tuple(-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD, strict=True)))
        if self.input_mode == "caffe":
            return (2, 1, 0), (1.0,) * 3, tuple(-m for m in _CAFFE_MEAN_BGR)
        return (0, 1, 2), (1.0,) * 3, (0.0,) * 3

    def build(self, input_shape: tuple[int, int, int]) -> Any:
        """``keras.applications.<application>(include_top=False, weights=None, input_shape=...)``, named
        :attr:`name`; ImageNet weights are loaded by the caller (:mod:`medxcept.models.network`)."""
        import keras  # here: the registry itself is read without Keras

        base = getattr(keras.applications, self.application)(
            include_top=False, weights=None, input_shape=input_shape, **dict(self.builder_kwargs))
        base.name = self.name
        return base


#: Every backbone, by name. Xception is the default (:data:`DEFAULT`); its names (``xception``,
#: ``to_xception_range``, ``medxcept_xception``) are those of runs saved before the registry existed.
BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone(
        name="xception", application="Xception",
        paper="Chollet, 2017, Xception: Deep Learning with Depthwise Separable Convolutions",
        input_mode="tf", range_layer="to_xception_range", min_px=71, default_px=299,
        block_pattern=r"^block(\d+)_", n_blocks=14,
        weights_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_hash="b0042744bf5b25fce3cb969f33bebb97",
        weights_url=_KERAS_APPLICATIONS + "xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        model_name="medxcept_xception"),
    Backbone(
        name="densenet121", application="DenseNet121",
        paper="Huang et al., 2017, Densely Connected Convolutional Networks (CheXNet's network)",
        input_mode="torch", range_layer="to_densenet121_range", min_px=32, default_px=224,
        block_pattern=r"^conv(\d)_block(\d+)_", n_blocks=58,
        weights_file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_hash="30ee3e1110167f948a6b9946edeeb738",
        weights_url=_KERAS_APPLICATIONS + "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        model_name="medxcept_densenet121"),
    Backbone(
        name="efficientnetv2b0", application="EfficientNetV2B0",
        paper="Tan and Le, 2021, EfficientNetV2: Smaller Models and Faster Training",
        input_mode="in_model", range_layer=None, min_px=32, default_px=224,
        block_pattern=r"^block(\d+[a-z])_", n_blocks=21,
        weights_file="efficientnetv2-b0_notop.h5",
        weights_hash="893217f2bb855e2983157299931e43ff",
        weights_url=_KERAS_APPLICATIONS + "efficientnet_v2/efficientnetv2-b0_notop.h5",
        model_name="medxcept_efficientnetv2b0", builder_kwargs=(("include_preprocessing", True),)),
    Backbone(
        name="resnet50", application="ResNet50",
        paper="He et al., 2016, Deep Residual Learning for Image Recognition",
        input_mode="caffe", range_layer="to_resnet50_range", min_px=32, default_px=224,
        block_pattern=r"^conv(\d)_block(\d+)_", n_blocks=16,
        weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_hash="4d473c1dd8becc155b73f8504c6f6626",
        weights_url=_KERAS_APPLICATIONS + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        model_name="medxcept_resnet50"),
)}

DEFAULT = "xception"


def names() -> list[str]:
    """The registered backbone names, the default first."""
    return [DEFAULT, *sorted(n for n in BACKBONES if n != DEFAULT)]


def get_backbone(name: str) -> Backbone:
    """The registry entry called ``name``.

    Raises:
        ConfigError: no such backbone (the message lists the registered ones).
    """
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"model.backbone={name!r} is not one of {names()} (--backbone NAME)") from None


def provenance(name: str) -> dict[str, str]:
    """What ``versions.json`` and the reports record of a run's backbone."""
    entry = get_backbone(name)
    return {"name": entry.name, "network": entry.label, "keras_application": f"keras.applications.{entry.application}",
            "paper": entry.paper, "imagenet_weights_file": entry.weights_file}


def block_of(backbone: Backbone, layer_names: list[str]) -> list[int]:
    """The block number (1 ... ``n_blocks``) of each layer name, in network order.

    Units are numbered in order of first appearance, except where the name carries the unit's
    number itself (one all-digit group: Xception's ``block{i}_``), which is then used, so that the
    tiny test network, Xception without blocks 6-12, keeps Xception's numbers. A layer matching no
    unit belongs to the next unit that appears, and trailing unmatched layers to the last one (see
    the module docstring).
    """
    pattern = re.compile(backbone.block_pattern)
    keys: dict[tuple[str, ...], int] = {}
    out: list[int | None] = []
    for name in layer_names:
        m = pattern.match(name)
        if m is None:
            out.append(None)
            continue
        groups = m.groups()
        numbered = len(groups) == 1 and groups[0].isdigit()
        out.append(keys.setdefault(groups, int(groups[0]) if numbered else len(keys) + 1))
    last = max(keys.values(), default=backbone.n_blocks)
    result: list[int] = []
    following = last
    for value in reversed(out):  # an unmatched layer takes the next matched layer's block
        following = value if value is not None else following
        result.append(following)
    return result[::-1]
