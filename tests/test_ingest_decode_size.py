"""Ingestion decodes a photograph at the size preprocessing needs, and the result is the same as a
full-resolution computation within a stated tolerance.

The reference (:func:`medxcept.testing.camera.reference_preprocess`) is the straightforward way,
what medxcept did up to ``PREPROCESS_VERSION`` 1: decode every pixel, find the field of view on the
full image, cut its square at full resolution, resize with scikit-image's Gaussian anti-aliasing,
mask. The path under test is the real per-file ingestion step (:func:`medxcept.cohort.ingest._decode_task`),
which decodes a camera JPEG at 1/4 scale and resizes with an area filter.

Tolerance, per image, in uint8 levels: mean absolute difference below 1.5, 99th percentile at most
8, at most 48 two pixels or more inside the rim; pixels on the rim itself may fall in or out of the
mask (a sub-pixel shift of the circle), at most 0.5 % of the field of view. Measured on camera-size
files: mean 0.5-1.0, 99th percentile 3-6, rim 0.1-0.25 %; the largest differences (6-43) are single
pixels on the sharpest colour edges (a vessel crossing the optic disc's rim): at 1/4 scale libjpeg
decodes the 4:2:0 chroma at 1/8 of the stored resolution. The same area filter applied to the full
decode stays within 16 of the reference there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from medxcept.cohort.demo import CAMERAS, paint_fundus
from medxcept.cohort.ingest import _decode_task
from medxcept.images.cache import PreprocessCache
from medxcept.images.preprocess import PreprocessConfig, decode_min_side, preprocess
from medxcept.images.quality import quality
from medxcept.integrity.acquisition import GEOMETRY_COLUMNS, geometry_fingerprint
from medxcept.io.images import read_image
from medxcept.testing.camera import reference_preprocess, write_camera_fundus


def _ingest_one(path: Path, cache_root: Path, image_px: int = 299) -> tuple[np.ndarray, dict[str, Any]]:
    cfg = PreprocessConfig(image_px=image_px)
    task = {"path": str(path), "kind": "photo", "preprocess": cfg, "cache_root": str(cache_root),
            "modality": "fundus", "frames": "all", "window_index": 0, "max_pixels": None, "file_id": "F-test",
            "salt": "test-salt"}
    res = _decode_task(task)
    assert res.get("rows"), res
    row = res["rows"][0]
    arr = PreprocessCache(cache_root).get(row["sha256"], 0, cfg)
    assert arr is not None
    return arr, row


def _compare(new: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Per-image differences in uint8 levels (see the module docstring)."""
    diff = np.abs(new.astype(np.int16) - ref.astype(np.int16))
    in_ref, in_new = ref.max(axis=2) > 0, new.max(axis=2) > 0
    interior = ndimage.binary_erosion(in_ref & in_new, iterations=2)
    return {"mean": float(diff.mean()), "p99": float(np.percentile(diff, 99)),
            "interior_max": float(diff.max(axis=2)[interior].max()),
            "rim_share": float((in_ref ^ in_new).sum() / in_ref.sum())}


def _assert_within_tolerance(stats: dict[str, float]) -> None:
    assert stats["mean"] < 1.5, stats
    assert stats["p99"] <= 8, stats
    assert stats["interior_max"] <= 48, stats
    assert stats["rim_share"] < 0.005, stats


@pytest.fixture(scope="module")
def camera_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-megapixel fundus camera's JPEG (3410 x 2848, quality 92)."""
    return write_camera_fundus(tmp_path_factory.mktemp("camera") / "eye.jpg", 3410, 2848, seed=1,
                               fov_frac=0.98, referable=True)


def test_camera_jpeg_ingested_at_quarter_scale_like_the_full_resolution_reference(camera_jpeg, tmp_path):
    new, row = _ingest_one(camera_jpeg, tmp_path)
    # decoded by DCT scaling at 1/4: 853 x 712 pixels, never a 3410 x 2848 float image
    assert row["meta"]["reduce"] == 4 and (row["meta"]["width"], row["meta"]["height"]) == (853, 712)
    assert (row["width"], row["height"]) == (3410, 2848)  # the table gives the stored size
    full, _ = read_image(camera_jpeg)
    ref = reference_preprocess(full)
    _assert_within_tolerance(_compare(new, ref))

    # quality and geometry as measured on the full image
    q_full = quality(full, modality="fundus")
    small, meta = read_image(camera_jpeg, min_side=decode_min_side(PreprocessConfig()))
    q_small = quality(small, modality="fundus", reduce=meta["reduce"])
    assert q_small["fov_found"] and q_full["fov_found"]
    assert row["quality"] == pytest.approx(q_full["score"], abs=0.02)
    assert q_small["brightness"] == pytest.approx(q_full["brightness"], abs=0.003)
    assert q_small["contrast"] == pytest.approx(q_full["contrast"], rel=0.03)
    assert 0.75 < q_small["sharpness"] / q_full["sharpness"] < 1.33  # measured: 0.87-0.93
    assert {k: row["acquisition"][k] for k in GEOMETRY_COLUMNS} == geometry_fingerprint(full)


def test_small_field_of_view_in_a_large_frame_is_decoded_finer(tmp_path):
    # a disc 720 px across in a 1600 x 1200 frame: the first guess (1/2 scale, 600 px on the shorter
    # side) leaves 360 px across the disc, fewer than the 598 the outputs need, so it is decoded again
    p = write_camera_fundus(tmp_path / "small_disc.jpg", 1600, 1200, seed=4, fov_frac=0.6)
    new, row = _ingest_one(p, tmp_path / "cache")
    assert row["meta"]["reduce"] == 1
    full, _ = read_image(p)
    _assert_within_tolerance(_compare(new, reference_preprocess(full)))
    # a disc filling the same frame keeps the 1/2 scale
    p2 = write_camera_fundus(tmp_path / "large_disc.jpg", 1600, 1200, seed=4, fov_frac=1.0)
    new2, row2 = _ingest_one(p2, tmp_path / "cache")
    assert row2["meta"]["reduce"] == 2
    full2, _ = read_image(p2)
    _assert_within_tolerance(_compare(new2, reference_preprocess(full2)))
    # a disc cut by chords at the top and bottom (wider than the sensor), as on 12-megapixel cameras
    p3 = write_camera_fundus(tmp_path / "chords.jpg", 2144, 1424, seed=5, fov_frac=1.06)
    new3, row3 = _ingest_one(p3, tmp_path / "cache")
    assert row3["meta"]["reduce"] == 2 and row3["acquisition"]["acq_aspect"] == "1.51"
    full3, _ = read_image(p3)
    _assert_within_tolerance(_compare(new3, reference_preprocess(full3)))
    assert {k: row3["acquisition"][k] for k in GEOMETRY_COLUMNS} == geometry_fingerprint(full3)


@pytest.mark.parametrize("camera", CAMERAS, ids=lambda c: c.name.split()[0])
def test_demo_camera_images_preprocessed_like_before(camera):
    # the demo's photographs (288-384 px) are decoded at full size; only the resize filter changed
    for seed in range(3):
        rgb, _, _ = paint_fundus(np.random.default_rng([seed, 7]), camera, laterality="LR"[seed % 2],
                                 referable=seed == 0)
        img = rgb.astype(np.float32) / 255.0
        for px in (96, 299):
            new = preprocess(img, PreprocessConfig(image_px=px), modality="fundus")
            _assert_within_tolerance(_compare(new, reference_preprocess(img, px)))
