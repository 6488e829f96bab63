"""The embedded demo cohort: deterministic, realistic enough to exercise both readers, signal learnable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medxcept.cohort.demo import CAMERAS, DemoSpec, generate_demo, paint_fundus
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
    assert (photos.groupby(["patient", "eye"]).size() > 1).any(), "repeat visits expected"
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


# ------------------------------------------------------------------ the hard task (issue 17)


def test_default_spec_keeps_the_easy_task_and_its_cache_key():
    assert not DemoSpec().hard and DemoSpec().key() == "v1-n110-s7-x1-p0.4"
    hard = DemoSpec(min_severity=0.35, drusen_rate=0.5, pigment_sd=0.06, label_noise=0.03)
    assert hard.hard and hard.key() == "v1-n110-s7-x1-p0.4-m0.35-d0.5-g0.06-l0.03"
    with pytest.raises(ValueError, match=r"label_noise=0\.7 is outside its range"):
        DemoSpec(label_noise=0.7)
    with pytest.raises(ValueError, match="min_severity=0"):
        DemoSpec(min_severity=0.0)


def test_mild_eyes_carry_fewer_fainter_lesions():
    """Severity scales the lesion load: the lesion-pixel count of mild eyes sits far below that of
    severe eyes, painted from the same random draws."""
    mild, severe = [], []
    for i in range(12):
        for sev, out in ((0.35, mild), (1.0, severe)):
            rgb, mask, _ = paint_fundus(np.random.default_rng(i), CAMERAS[i % 3], laterality="R", referable=True,
                                        scale=0.5, severity=sev, hard=True)
            out.append((mask.sum(), _lesion_pixels(rgb.astype(np.float32) / 255)))
    assert np.median([m for m, _ in mild]) < 0.3 * np.median([m for m, _ in severe])
    assert np.median([f for _, f in mild]) < np.median([f for _, f in severe])


def test_hard_plan_label_noise_and_shared_patient_severity():
    from medxcept.cohort.demo import _plan

    spec = DemoSpec(n_patients=400, seed=2, min_severity=0.35, drusen_rate=0.5, pigment_sd=0.06, label_noise=0.1)
    rows = pd.DataFrame(_plan(spec))
    flipped = (rows["label_referable"] != rows["referable"]).mean()
    assert 0.07 < flipped < 0.13  # 10 % of the written labels are the other class (binomial SD 0.9 %)
    ref = rows[rows["referable"]]
    assert ref["severity"].between(0.35, 1.0).all()
    # both eyes of a patient share its severity (within the per-eye 0.8-1.2 factor) and its pigmentation
    spread = ref.groupby("patient")["severity"].agg(lambda s: s.max() / s.min())
    assert (spread <= 1.2 / 0.8 + 1e-9).all()
    assert rows.groupby("patient")["pigment"].nunique().max() == 1
    # the easy task's plan (which eyes are diseased) is unchanged by the hard options
    easy = pd.DataFrame(_plan(DemoSpec(n_patients=400, seed=2)))
    assert (easy["referable"].to_numpy() == rows["referable"].to_numpy()).all()


def test_hard_task_is_harder_for_a_hand_made_feature():
    """The lesion-pixel count separates the easy task perfectly; on the same draws with the hard
    options (mild eyes, drusen, pigmentation) it no longer does (seed 0: 1.000 vs 0.89; seeds 0-3
    give 0.89-0.97)."""
    aucs = {}
    for hard in (False, True):
        rng = np.random.default_rng(0)
        feats, labels = [], []
        for i in range(60):
            referable = bool(i % 2)
            sev = float(rng.uniform(0.35, 1.0)) if referable else None
            kw = {"severity": sev, "drusen_rate": 0.5, "hard": True,
                  "pigment": tuple(1 + 0.06 * rng.standard_normal(3))} if hard else {}
            rgb, _, _ = paint_fundus(rng, CAMERAS[i % 3], laterality="LR"[i % 2 == 0], referable=referable,
                                     scale=0.5, **kw)
            feats.append(_lesion_pixels(rgb.astype(np.float32) / 255))
            labels.append(int(referable))
        aucs[hard] = roc_auc_score(labels, feats)
    assert aucs[False] == 1.0 and aucs[True] < 0.95
