"""Training-time augmentation and class balancing.

Augmentation uses albumentations (2.0.8) on the uint8 images that
:func:`medxcept.images.preprocess.preprocess` produces, *before* :func:`~medxcept.images.preprocess.to_model_range`.
Policies keep lesion evidence intact: no heavy blur, no cutout over the disc, no
elastic warps (they move and erase microaneurysms and exudates, the very evidence a
retinal grade rests on). Geometric transforms come first and fill with black, then
photometric ones, so a rotated corner is indistinguishable from the black surround.

Class imbalance is handled one of two ways (``AugmentConfig.balance``), never both:

* ``"weights"``: a class-weighted loss with :func:`class_weights` (``n / (k * n_c)``,
  scikit-learn's "balanced").
* ``"sampling"``: :func:`balanced_epoch_indices` draws each class equally per epoch;
  minority images repeat, but each repeat is augmented differently.

:func:`effective_class_frequencies` states what the model effectively sees, for the
report.

Randomness: albumentations 2.x transforms own their generators. ``Compose(seed=s)``
seeds *every* transform with the same ``s``, so e.g. horizontal and vertical flips with
equal ``p`` would always fire together. Here one numpy and one Python generator are
shared by all transforms (``set_random_state``), and :func:`augment_batch` re-seeds them
per image from the caller's ``numpy.random.Generator``: same generator state, same output.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402  (albumentations' own dependency: border-mode constants)

from medxcept.errors import CohortError, ConfigError  # noqa: E402

__all__ = [
    "STRENGTHS",
    "POLICIES",
    "BALANCES",
    "AugmentConfig",
    "build_augment",
    "build_tta",
    "serialize_augment",
    "class_weights",
    "balanced_epoch_indices",
    "effective_class_frequencies",
    "augment_batch",
    "tta_views",
]

logger = logging.getLogger(__name__)

STRENGTHS = ("none", "light", "default", "strong")
BALANCES = ("weights", "sampling", "none")
MAX_TTA = 64


@dataclass(frozen=True)
class AugmentConfig:
    """Options of augmentation and class balancing (validated on creation).

    Parameters
    ----------
    strength : {"none", "light", "default", "strong"}, default "default"
        Magnitude of the policy; "none" disables training augmentation.
    policy : {"fundus", "radiograph"}, default "fundus"
        "fundus": flips and rotations by any angle (a fundus has no canonical
        orientation once cropped to its disc). "radiograph": no vertical flip, small
        rotations (anatomy has an up), no hue jitter.
    balance : {"weights", "sampling", "none"}, default "weights"
        Class-weighted loss, balanced sampling per epoch, or neither.
    tta : int, default 0
        Test-time augmentation: number of extra augmented copies averaged at
        evaluation (0 = off). See :func:`tta_views`.
    """

    strength: str = "default"
    policy: str = "fundus"
    balance: str = "weights"
    tta: int = 0

    def __post_init__(self) -> None:
        if self.strength not in STRENGTHS:
            raise ConfigError(f"augment.strength={self.strength!r} is not one of {list(STRENGTHS)}")
        if self.policy not in POLICIES:
            raise ConfigError(f"augment.policy={self.policy!r} is not one of {list(POLICIES)}")
        if self.balance not in BALANCES:
            raise ConfigError(f"augment.balance={self.balance!r} is not one of {list(BALANCES)}")
        tta_ok = isinstance(self.tta, (int, np.integer)) and not isinstance(self.tta, bool)
        if not tta_ok or not 0 <= self.tta <= MAX_TTA:
            raise ConfigError(f"augment.tta must be an integer in [0, {MAX_TTA}], got {self.tta!r}")


# Magnitudes per strength. One Affine does rotation, scale and shift together: one
# interpolation instead of three, so fine vessels are resampled once.
_FUNDUS = {
    "light": dict(rotate=180, scale=0.03, shift=0.02, bc=0.10, gamma=(90, 110), hue=3, sat=5, p_blur_noise=0.0),
    "default": dict(rotate=180, scale=0.05, shift=0.03, bc=0.15, gamma=(85, 115), hue=5, sat=10, p_blur_noise=0.2),
    "strong": dict(rotate=180, scale=0.10, shift=0.05, bc=0.25, gamma=(80, 120), hue=10, sat=20, p_blur_noise=0.3),
}
_RADIOGRAPH = {
    "light": dict(rotate=5, scale=0.03, shift=0.02, bc=0.10, gamma=(90, 110), p_blur_noise=0.0),
    "default": dict(rotate=10, scale=0.05, shift=0.04, bc=0.15, gamma=(85, 115), p_blur_noise=0.2),
    "strong": dict(rotate=15, scale=0.10, shift=0.06, bc=0.20, gamma=(80, 120), p_blur_noise=0.3),
}


def _blur_noise(p: float) -> list[A.BasicTransform]:
    """Mild blur *or* mild noise: camera softness and sensor noise, never enough to erase
    a microaneurysm (3x3 kernel, sigma <= 0.6 px at 299 px)."""
    if p <= 0:
        return []
    return [
        A.OneOf(
            [
                A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.1, 0.6), p=1.0),
                A.GaussNoise(std_range=(0.01, 0.03), p=1.0),
            ],
            p=p,
        )
    ]


def _affine(m: dict[str, Any], p: float) -> A.Affine:
    return A.Affine(
        rotate=(-m["rotate"], m["rotate"]),
        scale=(1.0 - m["scale"], 1.0 + m["scale"]),
        translate_percent=(-m["shift"], m["shift"]),
        interpolation=cv2.INTER_LINEAR,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        p=p,
    )


def _fundus(strength: str) -> list[A.BasicTransform | A.BaseCompose]:
    """Colour fundus photographs: flips both ways, any rotation, exposure and colour jitter."""
    m = _FUNDUS[strength]
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        _affine(m, p=0.9),
        A.RandomBrightnessContrast(brightness_limit=m["bc"], contrast_limit=m["bc"], p=0.5),
        A.RandomGamma(gamma_limit=m["gamma"], p=0.3),
        A.HueSaturationValue(hue_shift_limit=m["hue"], sat_shift_limit=m["sat"], val_shift_limit=0, p=0.3),
        *_blur_noise(m["p_blur_noise"]),
    ]


def _radiograph(strength: str) -> list[A.BasicTransform | A.BaseCompose]:
    """Gray radiograph-like images: horizontal flip only, small rotations, no colour jitter."""
    m = _RADIOGRAPH[strength]
    return [
        A.HorizontalFlip(p=0.5),
        _affine(m, p=0.7),
        A.RandomBrightnessContrast(brightness_limit=m["bc"], contrast_limit=m["bc"], p=0.5),
        A.RandomGamma(gamma_limit=m["gamma"], p=0.3),
        *_blur_noise(m["p_blur_noise"]),
    ]


#: Augmentation policies by name (``augment.policy``): strength -> the transforms, in order.
#: A new kind of image is one entry here (and its strengths table).
POLICIES: dict[str, Callable[[str], list[A.BasicTransform | A.BaseCompose]]] = {
    "fundus": _fundus,
    "radiograph": _radiograph,
}


def build_augment(cfg: AugmentConfig, *, seed: int) -> A.Compose | None:
    """Build the training augmentation pipeline.

    Parameters
    ----------
    cfg : AugmentConfig
        ``strength`` and ``policy`` choose the transforms.
    seed : int
        Seeds the pipeline's shared generators (used when called directly;
        :func:`augment_batch` re-seeds per image).

    Returns
    -------
    albumentations.Compose or None
        None when ``strength == "none"``.

    Notes
    -----
    Fundus: horizontal and vertical flips; rotation of the whole disc by any angle with
    a black border (the FOV is a centred masked circle, so nothing is cut off), small
    scale/shift; brightness/contrast, gamma, small hue/saturation jitter (camera and
    exposure differences); rarely a mild blur or mild noise. A horizontal flip turns a
    left eye into a right-looking eye; that is intended (laterality is not the label).

    Radiograph: horizontal flip only (anatomy has an up), rotations of at most 5-15
    degrees, small scale/shift, brightness/contrast and gamma, rarely mild blur/noise;
    no colour jitter (the image is gray replicated to three channels).
    """
    if cfg.strength == "none":
        return None
    transforms = POLICIES[cfg.policy](cfg.strength)
    aug = A.Compose(transforms, p=1.0, seed=int(seed))
    _reseed(aug, int(seed))
    return aug


def build_tta(cfg: AugmentConfig, *, seed: int) -> A.Compose | None:
    """The test-time augmentation pipeline: the policy at "light" strength, without
    blur or noise (TTA should average over pose and exposure, not degrade the image).
    None when ``cfg.tta == 0``."""
    if cfg.tta == 0:
        return None
    return build_augment(AugmentConfig(strength="light", policy=cfg.policy, balance="none"), seed=seed)


def _reseed(aug: A.BaseCompose, seed: int) -> None:
    """One numpy and one Python generator shared by every transform of ``aug``."""
    aug.set_random_state(np.random.default_rng(seed), random.Random(seed))


def serialize_augment(aug: A.BaseCompose | None) -> dict[str, Any]:
    """Describe the pipeline for the run directory (``albumentations.to_dict``).

    ``None`` (no augmentation) gives ``{"__version__": ..., "transform": None}``.
    The result can be rebuilt with ``albumentations.from_dict``.
    """
    if aug is None:
        return {"__version__": A.__version__, "transform": None}
    return dict(A.to_dict(aug))


# --------------------------------------------------------------------------- balancing


def _check_labels(y: Any, n_classes: int | None = None) -> tuple[np.ndarray, int]:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.size == 0:
        raise CohortError(f"expected a non-empty 1-D array of class indices, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise CohortError(f"class indices must be integers (the cohort's y column), got dtype {arr.dtype}")
    k = int(arr.max()) + 1 if n_classes is None else int(n_classes)
    if k < 1 or arr.min() < 0 or arr.max() >= k:
        raise CohortError(f"class indices must lie in [0, {k - 1}], found [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64), k


def class_weights(y: Any, n_classes: int) -> dict[int, float]:
    """Balanced class weights ``n / (k * count_c)`` (scikit-learn's ``"balanced"``).

    Parameters
    ----------
    y : array_like of int
        Class indices of the training images.
    n_classes : int
        Number of classes ``k`` of the cohort.

    Returns
    -------
    dict
        ``{class index: weight}``; the weighted counts sum to ``n``. A class absent
        from ``y`` gets weight 0.0 (with a warning): no example, nothing to weight.

    Examples
    --------
    >>> class_weights([0, 0, 0, 1], 2)
    {0: 0.6666666666666666, 1: 2.0}
    """
    arr, k = _check_labels(y, n_classes)
    counts = np.bincount(arr, minlength=k)
    n = arr.size
    out: dict[int, float] = {}
    for c in range(k):
        if counts[c] == 0:
            logger.warning("class %d has no training example; its loss weight is 0", c)
            out[c] = 0.0
        else:
            out[c] = float(n / (k * counts[c]))
    return out


def balanced_epoch_indices(y: Any, *, seed: int, epoch: int, size: int | None = None) -> np.ndarray:
    """Indices into ``y`` for one class-balanced epoch.

    Parameters
    ----------
    y : array_like of int
        Class indices of the training images.
    seed, epoch : int
        The draw is a pure function of ``(seed, epoch)``: resuming a run replays it.
    size : int, optional
        Number of indices (default ``len(y)``).

    Returns
    -------
    ndarray of int64
        Shuffled indices; each class present in ``y`` gets ``size // k`` of them (the
        remainder spread over randomly chosen classes). Within a class, images are
        taken in a fresh random order and the order is repeated as needed, so a
        minority image appears ``floor`` or ``ceil`` of ``quota / count`` times (each
        repeat is augmented differently) and a majority class is subsampled without
        repetition.
    """
    arr, _ = _check_labels(y)
    n_out = arr.size if size is None else int(size)
    if n_out < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    rng = np.random.default_rng([int(seed), int(epoch)])
    classes = np.unique(arr)
    k = classes.size
    quota = np.full(k, n_out // k, dtype=np.int64)
    quota[rng.choice(k, size=n_out % k, replace=False)] += 1
    parts = []
    for c, q in zip(classes, quota, strict=False):
        members = np.flatnonzero(arr == c)
        reps = -(-int(q) // members.size)  # ceil
        order = np.concatenate([rng.permutation(members) for _ in range(reps)])
        parts.append(order[:q])
    idx = np.concatenate(parts)
    return rng.permutation(idx).astype(np.int64)


def effective_class_frequencies(y: Any, cfg: AugmentConfig, *, n_classes: int | None = None) -> dict[str, Any]:
    """What the model effectively sees per class, for the report.

    Parameters
    ----------
    y : array_like of int
        Class indices of the training images.
    cfg : AugmentConfig
        ``balance`` decides the answer.
    n_classes : int, optional
        Number of classes (default ``max(y) + 1``).

    Returns
    -------
    dict
        ``balance``; ``counts`` and ``raw`` (share of images) per class; ``effective``:
        the share of the loss each class carries (weights: count x weight; sampling:
        expected share of an epoch; none: the raw share); ``weights`` (per class, or
        None); ``repeats_per_epoch`` (sampling: mean number of times one image of the
        class is drawn per epoch; else 1.0).
    """
    arr, k = _check_labels(y, n_classes)
    counts = np.bincount(arr, minlength=k).astype(float)
    n = float(arr.size)
    raw = counts / n
    present = counts > 0
    weights: dict[int, float] | None = None
    repeats = np.where(present, 1.0, 0.0)
    if cfg.balance == "weights":
        weights = class_weights(arr, k)
        mass = counts * np.array([weights[c] for c in range(k)])
        eff = mass / mass.sum()
    elif cfg.balance == "sampling":
        eff = present / present.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            repeats = np.where(present, eff * n / np.maximum(counts, 1), 0.0)
    else:
        eff = raw
    return {
        "balance": cfg.balance,
        "counts": {c: int(counts[c]) for c in range(k)},
        "raw": {c: float(raw[c]) for c in range(k)},
        "effective": {c: float(eff[c]) for c in range(k)},
        "weights": weights,
        "repeats_per_epoch": {c: float(repeats[c]) for c in range(k)},
    }


# --------------------------------------------------------------------------- applying


def _check_batch(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 batch N x H x W x C (C 1 or 3), got {arr.dtype} {arr.shape}")
    return arr


def augment_batch(aug: A.BaseCompose | None, images_uint8: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    """Apply ``aug`` to each image of a batch, reproducibly.

    Parameters
    ----------
    aug : albumentations.Compose or None
        From :func:`build_augment`; None returns a copy of the batch.
    images_uint8 : ndarray
        uint8 ``N x H x W x C``.
    rng : numpy.random.Generator
        One 64-bit seed per image is drawn from it and used to re-seed the
        pipeline's shared generators, so the output depends only on the state of
        ``rng`` (not on which images were augmented before) and advances it by
        exactly ``N`` draws.

    Returns
    -------
    ndarray
        uint8 array of the same shape; labels are untouched by construction.

    Notes
    -----
    Re-seeding mutates ``aug``'s generators: give each worker thread its own pipeline
    (``build_augment`` is cheap) rather than sharing one between threads.
    """
    arr = _check_batch(images_uint8)
    seeds = rng.integers(0, 2**63 - 1, size=arr.shape[0], dtype=np.int64)
    if aug is None:
        return arr.copy()
    out = np.empty_like(arr)
    for i, s in enumerate(seeds):
        _reseed(aug, int(s))
        res = aug(image=np.ascontiguousarray(arr[i]))["image"]
        if res.ndim == 2:  # a single-channel image can lose its axis in cv2 ops
            res = res[:, :, None]
        if res.shape != arr.shape[1:] or res.dtype != np.uint8:
            raise ValueError(
                f"augmentation changed image {i} from {arr.dtype} {arr.shape[1:]} to {res.dtype} {res.shape}; "
                "the policy must keep size and dtype"
            )
        out[i] = res
    return out


def tta_views(images_uint8: np.ndarray, cfg: AugmentConfig, *, seed: int) -> np.ndarray:
    """Test-time augmentation views of a batch.

    Returns a uint8 array ``(1 + cfg.tta) x N x H x W x C``: view 0 is the batch
    itself, views 1.. are :func:`build_tta` copies. Deterministic for ``seed``.
    Average the model's probabilities over axis 0.
    """
    arr = _check_batch(images_uint8)
    views = [arr.copy()]
    aug = build_tta(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(cfg.tta):
        views.append(augment_batch(aug, arr, rng=rng))
    return np.stack(views)
