"""Inference: logits for preprocessed images, test-time augmentation, and the inference batch size."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from medxcept.images.augment import AugmentConfig, augment_batch, build_augment
from medxcept.images.dataset import CohortDataset

__all__ = ["predict_logits", "predict_logits_tta", "inference_batch_size", "INFERENCE_PIXELS"]

#: Pixels per inference batch (:func:`inference_batch_size`): 64 images at 96 px.
INFERENCE_PIXELS = 64 * 96 * 96


def predict_logits(model: keras.Model, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Logits for uint8-range images: shape (N,) for binary models, (N, k) otherwise."""
    ds = CohortDataset(images, np.zeros(len(images), dtype=np.int64), n_classes=2,
                       batch_size=batch_size, with_labels=False)
    out = model.predict(ds, verbose=0)
    return out[:, 0] if out.shape[-1] == 1 else out


def predict_logits_tta(model: keras.Model, images: np.ndarray, *, passes: int, seed: int, policy: str = "fundus",
                       batch_size: int = 32, keys: Sequence[int] | None = None) -> np.ndarray:
    """Test-time augmentation: the mean logit over the image and ``passes`` augmented copies.

    Copies use the ``light`` strength of the training policy (flips, small rotations and shifts,
    no colour change), seeded by ``seed`` so evaluation is reproducible. ``passes=0`` is
    :func:`predict_logits`. ``keys``: one non-negative integer per image (from its ``image_id``:
    :func:`medxcept.evaluation.assess.predict_units`); image ``i``'s copy ``k`` is then drawn from
    ``(seed, 7919, k, keys[i])``, so an image gets the same copies, hence the same logit, in any
    batch, split, fold or cohort. Without ``keys`` the copies of pass ``k`` are drawn in array
    order from ``(seed, 7919, k)``.
    """
    total = predict_logits(model, images, batch_size=batch_size)
    if passes <= 0:
        return total
    aug = build_augment(AugmentConfig(strength="light", policy=policy, balance="none"), seed=seed)
    if keys is not None and len(keys) != len(images):
        raise ValueError(f"{len(keys)} keys for {len(images)} images")
    for k in range(passes):
        if keys is None:
            copies = augment_batch(aug, images, rng=np.random.default_rng([seed, 7919, k]))
        else:
            copies = np.empty_like(images)
            for i, key in enumerate(keys):
                copies[i] = augment_batch(aug, images[i:i + 1], rng=np.random.default_rng([seed, 7919, k, int(key)]))[0]
        total = total + predict_logits(model, copies, batch_size=batch_size)
    return total / (passes + 1)


def inference_batch_size(image_px: int, train_batch: int) -> int:
    """Images per inference batch: about :data:`INFERENCE_PIXELS` pixels (64 images at 96 px, 6 at
    299 px), never fewer than the training batch. Inference keeps no activations for a backward pass,
    so a larger batch than training's fits, and fewer, larger calls cost less per image on a CPU
    (``benchmarks/train_throughput.py``)."""
    return max(int(train_batch), int(INFERENCE_PIXELS // (image_px * image_px)))

