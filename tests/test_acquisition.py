"""Acquisition fingerprints and the shortcut probe (medxcept.acquisition, audit finding ``acquisition_shortcut``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxcept.acquisition import SHORTCUT_AUC, acquisition_fingerprint, jpeg_quality, shortcut_probe
from medxcept.audit import audit_cohort

WARNING = "the model may learn the camera, not the disease"


def _save(path, rng, *, quality: int, subsampling: int, make: str) -> None:
    img = Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[271] = make  # Make
    img.save(path, format="JPEG", quality=quality, subsampling=subsampling, exif=exif)


def _cohort(tmp_path, *, confounded: bool) -> pd.DataFrame:
    """16 patients x 2 images; settings A (.jpeg, q95, 4:4:4, camera A) or B (.jpg, q75, 4:2:0, camera B)."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(16):
        label = "disease" if p % 2 else "normal"
        for k in range(2):
            a = (label == "disease") if confounded else (k == 0)
            path = tmp_path / f"p{p}_{k}.{'jpeg' if a else 'jpg'}"
            _save(path, rng, quality=95 if a else 75, subsampling=0 if a else 2, make="Camera A" if a else "Camera B")
            rows.append({"image_id": path.stem, "patient_key": f"P{p}", "label": label, "y": int(label == "disease"),
                         "width": 24, "height": 24, **acquisition_fingerprint(path)})
    return pd.DataFrame(rows)


def test_fingerprints_read_the_jpeg_settings(tmp_path):
    rng = np.random.default_rng(1)
    _save(tmp_path / "a.jpeg", rng, quality=95, subsampling=0, make="Camera A")
    _save(tmp_path / "b.jpg", rng, quality=75, subsampling=2, make="Camera B")
    a, b = acquisition_fingerprint(tmp_path / "a.jpeg"), acquisition_fingerprint(tmp_path / "b.jpg")
    assert (a["acq_format"], a["acq_jpeg_q"], a["acq_subsampling"]) == (".jpeg:JPEG", "95", "4:4:4")
    assert (b["acq_format"], b["acq_jpeg_q"], b["acq_subsampling"]) == (".jpg:JPEG", "75", "4:2:0")
    assert a["acq_device"].startswith("h:") and a["acq_device"] != b["acq_device"]
    assert "Camera" not in str(a) + str(b)  # device strings are hashed, never in clear
    assert a["acq_jpeg_qt"] != b["acq_jpeg_qt"]


@pytest.mark.parametrize("q", [50, 65, 80, 92])
def test_jpeg_quality_estimate(tmp_path, q):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.jpg", quality=q)
    with Image.open(tmp_path / "x.jpg") as im:
        assert abs(jpeg_quality(im.quantization[0]) - q) <= 1


def test_label_equal_to_acquisition_is_flagged(tmp_path):
    df = _cohort(tmp_path, confounded=True)
    probe = shortcut_probe(df)
    assert probe["auc"] >= 0.95 and probe["cramers_v"]["acq_jpeg_q"] > 0.9
    report = audit_cohort(df)
    [f] = report.by_kind("acquisition_shortcut")
    assert f.severity == "warning" and WARNING in f.message and f"AUC {probe['auc']:.2f}" in f.message
    assert report.tables["acquisition_cramers_v"].loc["acq_subsampling", "cramers_v"] > 0.9


def test_balanced_acquisition_raises_no_warning(tmp_path):
    df = _cohort(tmp_path, confounded=False)
    report = audit_cohort(df)
    assert report.by_kind("acquisition_shortcut") == []
    [f] = report.by_kind("acquisition_checked")
    assert f.details[0]["auc"] < SHORTCUT_AUC and max(f.details[0]["cramers_v"].values()) < 0.2
