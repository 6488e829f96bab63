"""Class-activation maps: where in the image the model's evidence for a class lies.

The classifier of :mod:`medxcept.models.network` ends in Xception's last feature map ``A`` (``h x w x K``),
global average pooling, dropout (the identity at inference) and a dense layer producing logits::

    logit_c = sum_k W[k, c] * mean_{i,j} A[i, j, k] + b_c

For such a head the class-activation map of Zhou et al. (2016, "Learning Deep Features for
Discriminative Localization") is ``CAM_c = sum_k W[k, c] * A[:, :, k]``. Grad-CAM (Selvaraju et
al., 2017) weights each feature map by the spatial mean of ``d logit_c / d A_k``, which here is
``W[k, c] / (h * w)`` at every position, so ``Grad-CAM_c = CAM_c / (h * w)``: the same map up to a
positive factor, and identical after normalization. :func:`class_activation_maps` therefore needs
no gradient (and no backend-specific gradient tape): it runs a sub-model up to the feature map and
combines it with the dense kernel using ``keras.ops`` only, so it works under the TensorFlow, JAX
and PyTorch backends.

Every map is ReLU'd (only evidence *for* the class is shown, as in Grad-CAM), upsampled bilinearly
to the input size and divided by its maximum, so it lies in [0, 1]; a map with no positive
evidence anywhere is all zeros.

What a CAM can and cannot say: it shows which regions raised the logit, at the resolution of the
last feature map (3 x 3 at 96 px, 10 x 10 at 299 px), for *this* model. It is not a segmentation,
and a plausible-looking map does not validate a model; a map that lights up the image border, a
text label or the camera's mask is a strong hint of a shortcut. :func:`medxcept.report.cam.cam_gallery` lays out maps
of correct and wrong test predictions side by side for that review.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from medxcept.errors import ConfigError

__all__ = ["class_activation_maps"]


def _head(model: Any) -> tuple[Any, Any]:
    """The last GlobalAveragePooling2D layer and the linear Dense layer after it."""
    import keras

    layers = list(model.layers)
    gap_i = max((i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.GlobalAveragePooling2D)),
                default=None)
    if gap_i is None:
        raise ConfigError(f"class_activation_maps: model {model.name!r} has no GlobalAveragePooling2D layer; "
                          "CAM needs a 'feature map -> global average pooling -> dense' head "
                          "(medxcept.models.network.build_model)")
    after = layers[gap_i + 1:]
    dense = [layer for layer in after if isinstance(layer, keras.layers.Dense)]
    others = [layer.name for layer in after if not isinstance(layer, (keras.layers.Dense, keras.layers.Dropout))]
    if len(dense) != 1 or others:
        raise ConfigError(f"class_activation_maps: after global average pooling model {model.name!r} must have "
                          f"only dropout and one dense layer; found {[layer.name for layer in after]}")
    head = dense[0]
    if head.activation is not keras.activations.linear:
        raise ConfigError(f"class_activation_maps: the dense layer {head.name!r} must output logits (linear "
                          f"activation), not {getattr(head.activation, '__name__', head.activation)}")
    return layers[gap_i], head


def _class_weights(kernel: Any, logits: Any, class_index: int | ArrayLike | None, n: int) -> Any:
    """Per-image dense weights ``(n, K)`` of the class whose map is wanted."""
    import keras.ops as ops

    units = int(kernel.shape[-1])
    if units == 1:  # binary model: one logit z for the positive class; the negative class's logit is -z
        if class_index is None:
            sign = np.ones(n, dtype="float32")
        else:
            idx = np.broadcast_to(np.asarray(class_index), (n,))
            if not np.isin(idx, (0, 1)).all():
                raise ConfigError(f"class_index must be 0 or 1 for a binary model; got {np.unique(idx).tolist()}")
            sign = np.where(idx == 1, 1.0, -1.0).astype("float32")
        return ops.convert_to_tensor(sign)[:, None] * ops.reshape(kernel[:, 0], (1, -1))
    if class_index is None:
        idx = ops.argmax(logits, axis=-1)  # the predicted class of each image
    else:
        idx = np.broadcast_to(np.asarray(class_index), (n,))
        if not ((idx >= 0) & (idx < units)).all():
            raise ConfigError(f"class_index must be in 0..{units - 1}; got {np.unique(idx).tolist()}")
        idx = ops.convert_to_tensor(idx.astype("int32"))
    return ops.transpose(ops.take(kernel, idx, axis=1))


def class_activation_maps(model: Any, images_uint8: ArrayLike, class_index: int | ArrayLike | None = None, *,
                          batch_size: int = 16) -> np.ndarray:
    """Class-activation maps of a GAP + linear-head classifier, equal to its Grad-CAM after normalization.

    Parameters
    ----------
    model : keras.Model
        A model built by :func:`medxcept.models.network.build_model` (or any functional model whose last
        GlobalAveragePooling2D is followed only by dropout and one linear Dense layer).
    images_uint8 : array-like of shape (N, H, W, 3)
        Pixels in the range the model takes ([0, 255], as cached by preprocessing).
    class_index : int, array-like of shape (N,) or None
        The class whose evidence is mapped. Binary models (one logit): ``None`` or 1 is the positive
        class, 0 the negative one (its logit is minus the positive one). Multiclass models: ``None``
        maps each image's predicted class.
    batch_size : int, default 16
        Images per forward pass.

    Returns
    -------
    numpy.ndarray of shape (N, H, W), float32
        One map per image in [0, 1] (maximum 1, or all zeros without positive evidence).

    Raises
    ------
    ConfigError
        The model's head is not global average pooling + dropout + one linear dense layer, or
        ``class_index`` is out of range.
    """
    import keras
    import keras.ops as ops

    x = np.asarray(images_uint8)
    if x.ndim != 4:
        raise ConfigError(f"class_activation_maps expects a batch of images (N, H, W, C); got shape {x.shape}")
    gap, head = _head(model)
    # the sub-model shares the model's layers (and weights) up to the last feature map
    features = keras.Model(model.input, gap.input, name=f"{model.name}_features")
    kernel = ops.cast(ops.convert_to_tensor(head.kernel), "float32")
    bias = ops.cast(ops.convert_to_tensor(head.bias), "float32") if head.use_bias else 0.0
    n, height, width = x.shape[0], x.shape[1], x.shape[2]
    out = np.zeros((n, height, width), dtype=np.float32)
    for start in range(0, n, max(int(batch_size), 1)):
        batch = x[start:start + batch_size]
        fmap = ops.cast(features(ops.convert_to_tensor(batch.astype("float32")), training=False), "float32")
        logits = ops.matmul(ops.mean(fmap, axis=(1, 2)), kernel) + bias  # what the model outputs (no dropout)
        w = _class_weights(kernel, logits, None if class_index is None else
                           np.broadcast_to(np.asarray(class_index), (n,))[start:start + len(batch)], len(batch))
        cam = ops.relu(ops.einsum("bhwk,bk->bhw", fmap, w))
        cam = ops.image.resize(cam[..., None], (height, width), interpolation="bilinear")[..., 0]
        peak = ops.max(cam, axis=(1, 2), keepdims=True)
        cam = ops.where(peak > 0, cam / ops.maximum(peak, 1e-12), ops.zeros_like(cam))
        out[start:start + len(batch)] = ops.convert_to_numpy(ops.clip(cam, 0.0, 1.0))
    return out


