"""Tests for medxcept.images.preprocess on real pixels: synthetic fundus discs with known geometry."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medxcept.errors import ConfigError, ReadError
from medxcept.images.cache import PreprocessCache
from medxcept.images.preprocess import PreprocessConfig, find_fov, preprocess, to_model_range
from medxcept.images.quality import apply_quality_policy, quality


def paint_fundus(
    h: int = 400,
    w: int = 400,
    *,
    cy: float | None = None,
    cx: float | None = None,
    r: float = 150.0,
    brightness: float = 0.55,
    n_vessels: int = 12,
    noise: float = 0.005,
    seed: int = 0,
) -> np.ndarray:
    """A fundus-like float32 RGB image: black surround, vignetted reddish disc of known
    centre (pixel-centre coordinates) and radius, a bright optic disc and dark
    vessel-like curves radiating from it."""
    rng = np.random.default_rng(seed)
    cy = (h - 1) / 2.0 if cy is None else cy
    cx = (w - 1) / 2.0 if cx is None else cx
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    d = np.hypot(yy - cy, xx - cx)
    disc = d <= r
    base = brightness * (1.0 - 0.35 * (d / r) ** 2)  # vignetting
    img = np.stack([base * g for g in (1.0, 0.55, 0.3)], axis=-1)
    oy, ox = cy + 0.1 * r, cx + 0.35 * r
    od = np.hypot(yy - oy, xx - ox) <= 0.12 * r
    img[od] = np.minimum(img[od] * 1.6 + 0.1, 1.0)
    vessels = np.zeros((h, w), dtype=bool)
    for _ in range(n_vessels):
        ang, length, curv = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.4) * r, rng.uniform(-0.5, 0.5)
        t = np.linspace(0, 1, int(length * 2))
        py, px = oy + np.sin(ang + curv * t) * length * t, ox + np.cos(ang + curv * t) * length * t
        ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
        vessels[py[ok].astype(int), px[ok].astype(int)] = True
    vessels = ndimage.binary_dilation(vessels, iterations=max(1, int(r / 100)))
    img *= (1.0 - 0.45 * ndimage.gaussian_filter(vessels.astype(float), 0.7))[..., None]
    img += rng.normal(0.0, noise, img.shape)
    img[~disc] = rng.uniform(0.0, 0.01, (int((~disc).sum()), 3))
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot(yy - cy, xx - cx) <= r


# --------------------------------------------------------------------------- config


def test_config_validation_names_field_and_value():
    with pytest.raises(ConfigError, match="image_px=0"):
        PreprocessConfig(image_px=0)  # the backbone's minimum (Xception: 71): RunConfig, tests/test_backbones.py
    with pytest.raises(ConfigError, match="illumination='graham'"):
        PreprocessConfig(illumination="graham")
    with pytest.raises(ConfigError, match="quality_policy"):
        PreprocessConfig(quality_policy="drop")
    with pytest.raises(ConfigError, match="clip_percentiles"):
        PreprocessConfig(clip_percentiles=(99.0, 1.0))
    with pytest.raises(ConfigError, match="min_quality"):
        PreprocessConfig(min_quality=1.5)
    # a YAML list is normalised to a tuple of floats (hashable, same key)
    assert PreprocessConfig(clip_percentiles=[1, 99]).clip_percentiles == (1.0, 99.0)


def test_key_is_stable_and_tracks_pixel_options_only():
    a = PreprocessConfig()
    assert a.key() == PreprocessConfig().key()
    assert len(a.key()) == 12
    assert PreprocessConfig(clahe=True).key() != a.key()
    assert PreprocessConfig(image_px=224).key() != a.key()
    # quality policy decides which images are used, not their pixels
    assert PreprocessConfig(quality_policy="flag", min_quality=0.3).key() == a.key()
    assert PreprocessConfig(clip_percentiles=[1, 99]).key() == PreprocessConfig(clip_percentiles=(1.0, 99.0)).key()


# --------------------------------------------------------------------------- find_fov


@pytest.mark.parametrize(
    "kw",
    [
        dict(h=400, w=400, r=150),  # centred
        dict(h=400, w=400, r=150, brightness=0.15),  # dark: mean ~0.08 inside
        dict(h=400, w=500, cy=230.0, cx=180.0, r=120),  # off-centre
        dict(h=400, w=560, r=250),  # clipped by the frame top and bottom
        dict(h=1200, w=1600, cy=610.0, cx=790.0, r=650),  # large, clipped, downscaled path
    ],
    ids=["centred", "dark", "off-centre", "clipped", "large-clipped"],
)
def test_find_fov_recovers_known_circle(kw):
    img = paint_fundus(**kw)
    h, w = kw["h"], kw["w"]
    cy, cx, r = kw.get("cy", (h - 1) / 2.0), kw.get("cx", (w - 1) / 2.0), kw["r"]
    fy, fx, fr, found = find_fov(img)
    assert found
    tol = 3.0 if max(h, w) <= 600 else 6.0  # a few pixels (0.5% on the large one)
    assert abs(fy - cy) <= tol and abs(fx - cx) <= tol and abs(fr - r) <= tol, (fy, fx, fr)


@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(200, 600),
    w=st.integers(200, 700),
    rel_r=st.floats(0.3, 0.6),  # up to 20% of the disc clipped by the frame
    rel_cy=st.floats(0.42, 0.58),
    rel_cx=st.floats(0.42, 0.58),
    brightness=st.floats(0.12, 0.8),
    seed=st.integers(0, 1000),
)
def test_find_fov_property_random_discs_with_text_overlay(h, w, rel_r, rel_cy, rel_cx, brightness, seed):
    r, cy, cx = rel_r * min(h, w), rel_cy * h, rel_cx * w
    img = paint_fundus(h, w, cy=cy, cx=cx, r=r, brightness=brightness, seed=seed)
    img[4:16, 4:50] = 0.95  # burnt-in text in a corner must not move the circle
    fy, fx, fr, found = find_fov(img)
    assert found
    assert max(abs(fy - cy), abs(fx - cx), abs(fr - r)) <= 3.0


def test_find_fov_dark_image_is_really_dark():
    img = paint_fundus(brightness=0.15)
    inside = _disc(400, 400, 199.5, 199.5, 150)
    assert 0.06 < img[inside].mean() < 0.1  # the fixed-0.1-threshold trap
    assert find_fov(img)[3]


def test_find_fov_not_found_without_dark_surround():
    rng = np.random.default_rng(0)
    flat = np.clip(0.4 + rng.normal(0, 0.02, (200, 300, 3)), 0, 1).astype(np.float32)
    cy, cx, r, found = find_fov(flat)
    assert not found
    assert (cy, cx, r) == (99.5, 149.5, 150.0)  # circle around the whole padded image
    assert not find_fov(np.zeros((200, 200, 3), np.float32))[3]


# --------------------------------------------------------------------------- preprocess


@pytest.mark.parametrize(
    "kw",
    [dict(h=400, w=500, cy=230.0, cx=180.0, r=120), dict(h=400, w=560, r=250)],
    ids=["off-centre", "clipped"],
)
def test_preprocess_fundus_fov_fills_output(kw):
    cfg = PreprocessConfig(image_px=128)
    out = preprocess(paint_fundus(**kw), cfg, modality="fundus")
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    fov = out.max(axis=2) > 0
    c = 63.5
    rows, cols = np.nonzero(fov)
    # the disc spans the full width (and full height unless clipped by the frame)
    assert cols.min() <= 2 and cols.max() >= 125
    mid_row = fov[64]
    assert mid_row[2:126].all()
    # centred: mask's centroid at the image centre
    assert abs(rows.mean() - c) < 2 and abs(cols.mean() - c) < 2
    # outside the inscribed circle everything is black (masked)
    assert not fov[~_disc(128, 128, c, c, 64.5)].any()
    if kw.get("r") == 250:  # clipped top/bottom: rows near the top and bottom are padding
        assert not fov[:5].any() and not fov[-5:].any()
    else:
        assert rows.min() <= 2 and rows.max() >= 125


def test_preprocess_fundus_options_shapes_and_effects():
    img = paint_fundus(h=300, w=360, r=140, brightness=0.3)
    base = preprocess(img, PreprocessConfig(image_px=96), modality="fundus")
    bg = preprocess(img, PreprocessConfig(image_px=96, illumination="ben_graham"), modality="fundus")
    cl = preprocess(img, PreprocessConfig(image_px=96, clahe=True), modality="fundus")
    nomask_cfg = PreprocessConfig(image_px=96, illumination="ben_graham", mask_outside_fov=False)
    nomask = preprocess(img, nomask_cfg, modality="fundus")
    nocrop = preprocess(img, PreprocessConfig(image_px=96, fov_crop=False), modality="fundus")
    for o in (base, bg, cl, nomask, nocrop):
        assert o.shape == (96, 96, 3) and o.dtype == np.uint8
    inner = _disc(96, 96, 47.5, 47.5, 40)
    # Ben Graham re-centres the retina on mid-grey (128), whatever its original colour
    assert abs(bg[inner].mean() - 128) < 12
    assert abs(base[inner].mean() - 128) > 30
    # CLAHE raises local contrast inside the disc
    assert cl[inner].std() > base[inner].std()
    # without the mask, the outside keeps (non-black) values; with it, black
    outside = ~_disc(96, 96, 47.5, 47.5, 48.5)
    assert bg[outside].max() == 0 and nomask[outside].max() > 0
    # no crop: the 360-wide frame fills the width, the disc (280 px) does not
    rows, cols = np.nonzero(nocrop.max(axis=2) > 5)
    assert cols.max() - cols.min() < 0.85 * 96


def test_preprocess_gray_clip_pad_replicate():
    img = np.tile(np.linspace(0.2, 0.6, 120, dtype=np.float32), (60, 1))[:, :, None]
    img[0, 0, 0] = 1.0  # a burnt-in marker that the percentile clip ignores
    out = preprocess(img, PreprocessConfig(image_px=80, clip_percentiles=(1, 99)), modality="gray")
    assert out.shape == (80, 80, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    # 60x120 padded to 120x120: top and bottom quarter are black padding
    assert out[:18].max() == 0 and out[-18:].max() == 0
    # clip stretched the 0.2-0.6 ramp to the full range, left dark to right bright
    row = out[40, :, 0].astype(int)
    assert row[:3].max() <= 8 and row[-3:].min() >= 247
    assert np.all(np.diff(row) >= 0)
    # a colour-encoded radiograph is reduced to luminance, CLAHE keeps shape
    rgb = np.repeat(img, 3, axis=2)
    out2 = preprocess(rgb, PreprocessConfig(image_px=80, clahe=True), modality="gray")
    assert out2.shape == (80, 80, 3)


def test_preprocess_rejects_contract_violations():
    cfg = PreprocessConfig(image_px=80)
    with pytest.raises(ValueError, match="range"):
        preprocess(np.full((50, 50, 3), 2.0, np.float32), cfg, modality="gray")
    with pytest.raises(ValueError, match="C 1 or 3"):
        preprocess(np.zeros((50, 50, 4), np.float32), cfg, modality="gray")
    with pytest.raises(ConfigError, match="modality='ct'"):
        preprocess(np.zeros((50, 50, 1), np.float32), cfg, modality="ct")


# --------------------------------------------------------------------------- model range


def test_to_model_range_exact():
    x = np.array([0, 255], dtype=np.uint8)
    assert to_model_range(x).tolist() == [-1.0, 1.0]
    assert to_model_range(np.array([127.5]))[0] == 0.0
    y = to_model_range(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1))
    assert y.dtype == np.float32 and y.shape == (1, 16, 16, 1)
    assert np.allclose(y.ravel(), np.arange(256) / 127.5 - 1.0, atol=1e-7)
    assert np.all(np.diff(y.ravel()) > 0)


# --------------------------------------------------------------------------- quality


def test_quality_passes_sharp_fundus_and_flags_black_and_blurred():
    img = paint_fundus(h=500, w=500, r=220)
    good = quality(img, modality="fundus")
    assert good["fov_found"] and good["reasons"] == [] and good["score"] >= 0.5
    assert 0.0 <= good["score"] <= 1.0

    black = quality(np.zeros((300, 300, 3), np.float32), modality="fundus")
    assert black["score"] < 0.5
    assert any("too dark" in r for r in black["reasons"])
    assert any("field of view not found" in r for r in black["reasons"])

    blurred = quality(ndimage.gaussian_filter(img, (8, 8, 0)), modality="fundus")
    assert blurred["fov_found"]  # still a disc, just useless
    assert blurred["score"] < 0.5
    assert any(r.startswith("blurred") for r in blurred["reasons"])
    assert blurred["sharpness"] < good["sharpness"] / 10


def test_quality_dark_but_sharp_is_not_called_blurred_and_size_invariant():
    dark = quality(paint_fundus(brightness=0.15), modality="fundus")
    assert dark["reasons"] == []
    small = quality(paint_fundus(h=300, w=300, r=120, seed=3), modality="fundus")
    big = quality(paint_fundus(h=1200, w=1200, r=480, seed=3), modality="fundus")
    # measured on a fixed-size version: same picture at 4x the size scores alike
    assert 0.25 < small["sharpness"] / big["sharpness"] < 4


def test_quality_gray_flags_flat_image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:200, 0:160]
    ribs = 0.4 + 0.2 * (np.sin(yy / 6.0) > 0) + rng.normal(0, 0.01, (200, 160))  # sharp edges
    ok = quality(np.clip(ribs, 0, 1)[:, :, None].astype(np.float32), modality="gray")
    assert ok["fov_found"] and ok["reasons"] == []
    flat = quality(np.full((200, 160, 1), 0.5, np.float32), modality="gray")
    assert any(r.startswith("no contrast") for r in flat["reasons"]) and flat["score"] < 0.5


def test_apply_quality_policy():
    bad = quality(np.zeros((100, 100, 3), np.float32), modality="fundus")
    with pytest.raises(ReadError) as exc:
        apply_quality_policy(bad, PreprocessConfig(), path="/data/a.png")
    assert exc.value.stage == "quality" and "too dark" in exc.value.reason
    assert apply_quality_policy(bad, PreprocessConfig(quality_policy="flag"), path="a.png") is True
    assert apply_quality_policy(bad, PreprocessConfig(quality_policy="off"), path="a.png") is False
    good = quality(paint_fundus(), modality="fundus")
    assert apply_quality_policy(good, PreprocessConfig(), path="a.png") is False


# --------------------------------------------------------------------------- cache

SHA = "ab" + "0" * 62


def test_cache_roundtrip_and_config_change_misses(tmp_path):
    cfg = PreprocessConfig(image_px=80)
    cache = PreprocessCache(tmp_path / "cache")
    assert cache.get(SHA, 0, cfg) is None and cache.size_bytes() == 0
    calls = []

    def compute():
        calls.append(1)
        return preprocess(paint_fundus(h=200, w=200, r=80), cfg, modality="fundus")

    a = cache.get_or_compute(SHA, 0, cfg, compute)
    b = cache.get_or_compute(SHA, 0, cfg, compute)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert np.array_equal(a, b) and b.dtype == np.uint8
    assert cache.size_bytes() >= a.nbytes
    assert cache.get(SHA, 1, cfg) is None  # another frame
    assert cache.get(SHA, 0, PreprocessConfig(image_px=80, clahe=True)) is None  # config change
    assert cache.get(SHA, 0, PreprocessConfig(image_px=80, quality_policy="flag")) is not None
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # no temporary left behind


def test_cache_corrupt_entry_is_a_miss_and_bad_arrays_refused(tmp_path):
    cfg = PreprocessConfig(image_px=80)
    cache = PreprocessCache(tmp_path)
    p = cache.put(SHA, 0, cfg, np.zeros((80, 80, 3), np.uint8))
    p.write_bytes(b"not a numpy file")
    assert cache.get(SHA, 0, cfg) is None
    with pytest.raises(ValueError, match="uint8"):
        cache.put(SHA, 0, cfg, np.zeros((80, 80, 3), np.float32))
    with pytest.raises(ValueError, match="hex"):
        cache.path("../etc", 0, cfg)


def test_cache_concurrent_writers_leave_a_valid_file(tmp_path):
    cfg = PreprocessConfig(image_px=80)
    cache = PreprocessCache(tmp_path)
    arrays = [np.full((80, 80, 3), v, np.uint8) for v in (10, 200)]

    def writer(arr):
        for _ in range(20):
            cache.put(SHA, 0, cfg, arr)

    threads = [threading.Thread(target=writer, args=(a,)) for a in arrays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = cache.get(SHA, 0, cfg)
    assert got is not None and any(np.array_equal(got, a) for a in arrays)


def test_real_fundus_photograph_from_scikit_image():
    """skimage.data.retina (a real fundus photograph shipped with scikit-image)."""
    data = pytest.importorskip("skimage.data")
    try:
        img = data.retina().astype(np.float32) / 255.0
    except Exception as exc:  # the image may need a download on some installs
        pytest.skip(f"skimage retina image unavailable: {exc}")
    h, w = img.shape[:2]
    cy, cx, r, found = find_fov(img)
    assert found
    assert abs(cy - h / 2) < 0.02 * h and abs(cx - w / 2) < 0.02 * w and 0.45 * w < r < 0.52 * w
    assert quality(img, modality="fundus")["reasons"] == []
    blurred = quality(ndimage.gaussian_filter(img, (15, 15, 0)), modality="fundus")
    assert any(x.startswith("blurred") for x in blurred["reasons"])
    out = preprocess(img, PreprocessConfig(image_px=128), modality="fundus")
    assert out.shape == (128, 128, 3) and (out[64, 3:125].max(axis=1) > 0).all()
