"""The embedded demo cohort: deterministic, realistic enough to exercise both readers, signal learnable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medxcept.demo import CAMERAS, DemoSpec, generate_demo, paint_fundus
from medxcept.io.dicom import read_dicom, read_dicom_header
from medxcept.io.images import read_image

SPEC = DemoSpec(n_patients=14, seed=11, size_scale=0.5)


def _pixels(root):
    out = {}
    for p in sorted((root / "photos").glob("*.*")) + sorted((root / "dicom").glob("*.dcm")):
        if p.suffix == ".csv":
            continue
        out[p.name] = read_dicom(p)[0][0] if p.suffix == ".dcm" else read_image(p)[0]
    return out


def test_generator_is_deterministic(tmp_path):
    a = generate_demo(tmp_path / "a", SPEC)
    b = generate_demo(tmp_path / "b", SPEC)
    pa, pb = _pixels(a), _pixels(b)
    assert pa.keys() == pb.keys() and len(pa) >= 20
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)
    for sub in ("photos", "dicom"):
        assert (a / sub / "labels.csv").read_bytes() == (b / sub / "labels.csv").read_bytes()
    # a different seed gives different images
    c = generate_demo(tmp_path / "c", DemoSpec(n_patients=14, seed=12, size_scale=0.5))
    assert (a / "photos" / "labels.csv").read_bytes() != (c / "photos" / "labels.csv").read_bytes()


def test_generation_is_reused_not_repeated(tmp_path):
    root = generate_demo(tmp_path / "d", SPEC)
    marker = (root / "COMPLETE").stat().st_mtime_ns
    first = sorted(p.name for p in root.rglob("*"))
    assert generate_demo(tmp_path / "d", SPEC) == root
    assert (root / "COMPLETE").stat().st_mtime_ns == marker
    assert sorted(p.name for p in root.rglob("*")) == first


def test_demo_structure_patients_eyes_visits_and_dicom_header(tmp_path):
    root = generate_demo(tmp_path / "e", DemoSpec(n_patients=40, seed=5, size_scale=0.5))
    photos = pd.read_csv(root / "photos" / "labels.csv")
    assert set(photos["eye"]) == {"L", "R"}
    per_patient = photos.groupby("patient")["eye"].nunique()
    assert (per_patient == 2).any(), "both eyes of a patient must occur"
    assert (photos.groupby(["patient", "eye"]).size() > 1).any() or len(photos) < 40, "repeat visits expected"
    assert set(photos["label"]) == {"non_referable", "referable"}
    dcm = sorted((root / "dicom").glob("*.dcm"))
    assert dcm, "some images must be DICOM"
    meta = read_dicom_header(dcm[0])
    assert meta["patient_id"].startswith("DEMO-")
    assert meta["laterality"] in ("L", "R")
    assert "JPEG" in str(meta["transfer_syntax"]) or meta["transfer_syntax"].startswith("1.2.840.10008.1.2.4")
    assert meta["modality"] == "OP"


def _lesion_pixels(rgb: np.ndarray) -> int:
    """A hand-made feature: bright yellow pixels (exudate colour) inside the field of view."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((g > 0.6 * r) & (g > 0.45) & (b < 0.62 * g) & (r > 0.5)).sum())


def test_planted_signal_separates_the_classes():
    rng = np.random.default_rng(0)
    feats, labels = [], []
    for i in range(80):
        referable = bool(i % 2)
        cam = CAMERAS[i % len(CAMERAS)]
        rgb, mask, geo = paint_fundus(rng, cam, laterality="LR"[i % 2 == 0], referable=referable, scale=0.5)
        feats.append(_lesion_pixels(rgb.astype(np.float32) / 255))
        labels.append(int(referable))
        assert mask.any() == referable  # lesions are planted exactly in referable eyes
        assert rgb[0, 0].max() == 0  # black surround outside the circular field of view
    auc = roc_auc_score(labels, feats)
    assert auc > 0.9, f"lesion-pixel count AUC {auc:.3f}"


@pytest.mark.parametrize("camera", range(len(CAMERAS)))
def test_cameras_differ_in_geometry_and_colour(camera):
    rgb, _, geo = paint_fundus(np.random.default_rng(1), CAMERAS[camera], laterality="R", referable=False)
    assert rgb.shape[:2] == (CAMERAS[camera].height, CAMERAS[camera].width)
    if CAMERAS[camera].fov_frac > 1:  # the wide camera clips the disc at top and bottom
        assert rgb[0, rgb.shape[1] // 2].max() > 0
