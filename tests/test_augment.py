"""Tests for medxcept.images.augment: real pixels through albumentations, balancing vs scikit-learn."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
from sklearn.utils.class_weight import compute_class_weight  # noqa: E402

from medxcept.errors import CohortError, ConfigError  # noqa: E402
from medxcept.images.augment import (  # noqa: E402
    AugmentConfig,
    augment_batch,
    balanced_epoch_indices,
    build_augment,
    build_tta,
    class_weights,
    effective_class_frequencies,
    serialize_augment,
    tta_views,
)

PX = 96


def fundus_batch(n: int = 6, px: int = PX, seed: int = 0) -> np.ndarray:
    """uint8 batch of masked fundus-like discs (black surround, reddish disc, a dark
    vessel line and a bright optic disc at a seed-dependent angle)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:px, 0:px]
    c = (px - 1) / 2.0
    d = np.hypot(yy - c, xx - c)
    out = np.zeros((n, px, px, 3), np.uint8)
    for i in range(n):
        img = np.zeros((px, px, 3))
        base = 0.6 * (1 - 0.3 * (d / (px / 2)) ** 2)
        for k, g in enumerate((1.0, 0.5, 0.25)):
            img[..., k] = base * g
        a = rng.uniform(0, 2 * np.pi)
        oy, ox = c + 0.3 * c * np.sin(a), c + 0.3 * c * np.cos(a)
        img[np.hypot(yy - oy, xx - ox) < 5] = 0.9
        line = np.abs((yy - oy) * np.cos(a + 1) - (xx - ox) * np.sin(a + 1)) < 1.2
        img[line] *= 0.5
        img[d > px / 2] = 0
        out[i] = np.round(img * 255).astype(np.uint8)
    return out


def test_config_validation():
    with pytest.raises(ConfigError, match="strength='huge'"):
        AugmentConfig(strength="huge")
    with pytest.raises(ConfigError, match="policy"):
        AugmentConfig(policy="ct")
    with pytest.raises(ConfigError, match="balance"):
        AugmentConfig(balance="oversample")
    with pytest.raises(ConfigError, match="tta"):
        AugmentConfig(tta=-1)


@pytest.mark.parametrize("policy", ["fundus", "radiograph"])
@pytest.mark.parametrize("strength", ["light", "default", "strong"])
def test_augment_keeps_shape_and_is_reproducible(policy, strength):
    batch = fundus_batch()
    y = np.array([0, 1, 0, 1, 1, 0])
    y_before = y.copy()
    aug = build_augment(AugmentConfig(strength=strength, policy=policy), seed=0)
    assert isinstance(aug, A.Compose)
    o1 = augment_batch(aug, batch, rng=np.random.default_rng(7))
    o2 = augment_batch(aug, batch, rng=np.random.default_rng(7))
    o3 = augment_batch(aug, batch, rng=np.random.default_rng(8))
    assert o1.shape == batch.shape and o1.dtype == np.uint8
    assert np.array_equal(o1, o2)  # same seed -> identical arrays
    assert not np.array_equal(o1, o3)  # different seed -> different
    assert not np.array_equal(o1, batch)  # it did something
    assert np.array_equal(y, y_before)  # labels untouched
    # a state used before does not leak: a fresh pipeline gives the same answer
    fresh = build_augment(AugmentConfig(strength=strength, policy=policy), seed=123)
    assert np.array_equal(augment_batch(fresh, batch, rng=np.random.default_rng(7)), o1)


def test_augment_single_channel_and_none():
    gray = fundus_batch(3)[..., :1]
    aug = build_augment(AugmentConfig(policy="radiograph"), seed=0)
    out = augment_batch(aug, gray, rng=np.random.default_rng(0))
    assert out.shape == gray.shape and out.dtype == np.uint8
    assert build_augment(AugmentConfig(strength="none"), seed=0) is None
    same = augment_batch(None, gray, rng=np.random.default_rng(0))
    assert np.array_equal(same, gray) and same is not gray
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(aug, gray.astype(np.float32), rng=np.random.default_rng(0))


def test_flips_are_independent():
    """albumentations' own Compose(seed=) seeds every transform alike, so two flips with
    equal p fire together; the shared generator gives all four flip combinations."""
    img = np.arange(16 * 16, dtype=np.uint8).reshape(1, 16, 16, 1) % 251
    aug = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], seed=0)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        o = augment_batch(aug, img, rng=rng)[0, :, :, 0]
        h = np.array_equal(o, img[0, :, ::-1, 0]) or np.array_equal(o, img[0, ::-1, ::-1, 0])
        v = np.array_equal(o, img[0, ::-1, :, 0]) or np.array_equal(o, img[0, ::-1, ::-1, 0])
        seen.add((h, v))
    assert seen == {(False, False), (True, False), (False, True), (True, True)}


def test_fundus_rotation_keeps_black_surround_and_disc():
    """Geometry fills with black and keeps the disc: corners stay dark, centre bright."""
    batch = fundus_batch(8)
    aug = build_augment(AugmentConfig(strength="light"), seed=0)
    out = augment_batch(aug, batch, rng=np.random.default_rng(1)).astype(int)
    corners = np.concatenate([out[:, :6, :6], out[:, -6:, -6:]], axis=1)
    # light brightness jitter is +-10% of 255 at most on the black surround
    assert corners.max() <= 30
    assert out[:, 40:56, 40:56, 0].mean() > 80


def test_serialize_roundtrip():
    aug = build_augment(AugmentConfig(), seed=0)
    d = serialize_augment(aug)
    assert d["transform"]["__class_fullname__"] == "Compose"
    names = [t["__class_fullname__"] for t in d["transform"]["transforms"]]
    assert "HorizontalFlip" in names and "Affine" in names
    assert not {"ElasticTransform", "CoarseDropout", "GridDistortion"} & set(names)
    A.from_dict(d)
    rad_aug = build_augment(AugmentConfig(policy="radiograph"), seed=0)
    rad = [t["__class_fullname__"] for t in serialize_augment(rad_aug)["transform"]["transforms"]]
    assert "VerticalFlip" not in rad and "HueSaturationValue" not in rad
    assert serialize_augment(None)["transform"] is None


def test_tta_views():
    batch = fundus_batch(2)
    v = tta_views(batch, AugmentConfig(tta=3), seed=5)
    assert v.shape == (4,) + batch.shape and v.dtype == np.uint8
    assert np.array_equal(v[0], batch)
    assert np.array_equal(v, tta_views(batch, AugmentConfig(tta=3), seed=5))
    assert build_tta(AugmentConfig(), seed=0) is None
    assert tta_views(batch, AugmentConfig(), seed=0).shape == (1,) + batch.shape


# --------------------------------------------------------------------------- balancing


@pytest.mark.parametrize("y", [[0] * 10 + [1] * 90, [0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 1], [3, 3, 0, 1, 2]])
def test_class_weights_match_sklearn(y):
    y = np.array(y)
    k = int(y.max()) + 1
    ref = compute_class_weight("balanced", classes=np.arange(k), y=y)
    got = class_weights(y, k)
    assert list(got) == list(range(k))
    assert np.allclose([got[c] for c in range(k)], ref)


def test_class_weights_absent_class_and_bad_labels():
    assert class_weights([0, 0, 1], 3)[2] == 0.0
    with pytest.raises(CohortError, match=r"\[0, 1\]"):
        class_weights([0, 2], 2)
    with pytest.raises(CohortError):
        class_weights([], 2)


def test_balanced_epoch_indices_on_1_to_9_cohort():
    y = np.array([1] * 10 + [0] * 90)
    rng = np.random.default_rng(0)
    y = y[rng.permutation(y.size)]
    idx = balanced_epoch_indices(y, seed=0, epoch=0)
    assert idx.shape == (100,) and idx.dtype == np.int64
    counts = np.bincount(y[idx], minlength=2)
    assert abs(int(counts[0]) - int(counts[1])) <= 1  # near-equal (here exactly 50/50)
    # minority images repeated evenly (5 times each), majority not repeated
    minority = np.flatnonzero(y == 1)
    reps = np.array([(idx == i).sum() for i in minority])
    assert reps.min() == reps.max() == 5
    assert np.bincount(idx[y[idx] == 0]).max() == 1
    # deterministic for (seed, epoch), different across epochs and seeds
    assert np.array_equal(idx, balanced_epoch_indices(y, seed=0, epoch=0))
    assert not np.array_equal(idx, balanced_epoch_indices(y, seed=0, epoch=1))
    assert not np.array_equal(idx, balanced_epoch_indices(y, seed=1, epoch=0))
    # over epochs every majority image gets its turn
    seen = np.unique(np.concatenate([balanced_epoch_indices(y, seed=0, epoch=e) for e in range(10)]))
    assert seen.size > 95


def test_balanced_epoch_indices_size_and_three_classes():
    y = np.array([0] * 5 + [1] * 20 + [2] * 75)
    idx = balanced_epoch_indices(y, seed=3, epoch=2, size=31)
    counts = np.bincount(y[idx], minlength=3)
    assert counts.sum() == 31 and counts.max() - counts.min() <= 1


def test_effective_class_frequencies():
    y = np.array([0] * 90 + [1] * 10)
    none = effective_class_frequencies(y, AugmentConfig(balance="none"))
    assert none["effective"] == pytest.approx({0: 0.9, 1: 0.1}) and none["weights"] is None
    w = effective_class_frequencies(y, AugmentConfig(balance="weights"))
    assert w["effective"] == pytest.approx({0: 0.5, 1: 0.5})
    assert w["weights"] == pytest.approx({0: 100 / 180, 1: 5.0})
    s = effective_class_frequencies(y, AugmentConfig(balance="sampling"))
    assert s["effective"] == pytest.approx({0: 0.5, 1: 0.5})
    assert s["repeats_per_epoch"] == pytest.approx({0: 50 / 90, 1: 5.0})
    assert s["counts"] == {0: 90, 1: 10} and s["raw"] == pytest.approx({0: 0.9, 1: 0.1})
    # agrees with what balanced_epoch_indices actually draws
    idx = balanced_epoch_indices(y, seed=0, epoch=0)
    assert np.bincount(y[idx]) / idx.size == pytest.approx([0.5, 0.5])
