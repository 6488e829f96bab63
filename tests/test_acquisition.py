"""Acquisition fingerprints and the shortcut probe (medxcept.integrity.acquisition, audit finding ``acquisition_shortcut``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxcept.integrity.acquisition import SHORTCUT_AUC, acquisition_fingerprint, jpeg_quality, shortcut_probe
from medxcept.integrity.audit import audit_cohort

WARNING = "the model may learn the camera, not the disease"
KEY = "test-key-0123456789abcdef0123456789abcdef"


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
                         "width": 24, "height": 24, **acquisition_fingerprint(path, key=KEY)})
    return pd.DataFrame(rows)


def test_fingerprints_read_the_jpeg_settings(tmp_path):
    rng = np.random.default_rng(1)
    _save(tmp_path / "a.jpeg", rng, quality=95, subsampling=0, make="Camera A")
    _save(tmp_path / "b.jpg", rng, quality=75, subsampling=2, make="Camera B")
    a, b = (acquisition_fingerprint(tmp_path / n, key=KEY) for n in ("a.jpeg", "b.jpg"))
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


def _source_cohort(tmp_path, differ: str) -> pd.DataFrame:
    """16 patients x 2 photos, label = source; the two sources differ only in ``differ``.

    ``quality``: JPEG re-encoded at 95 vs 60 (same extension, size, subsampling, no EXIF);
    ``extension``: ``.jpeg`` vs ``.jpg`` (same bytes); ``size``: 64 vs 80 px; ``fov``: the field of view's
    radius and centre in the frame (same file settings). The pixels of both are photos of the same kind.
    """
    from medxcept.integrity.acquisition import geometry_fingerprint

    rng = np.random.default_rng(3)
    rows = []
    for p in range(16):
        src = p % 2
        for k in range(2):
            px = 80 if (differ == "size" and src) else 64
            yy, xx = np.mgrid[0:px, 0:px]
            r, cx = (0.47 * px, px / 2) if not (differ == "fov" and src) else (0.40 * px, px / 2 + 0.06 * px)
            disc = np.hypot(yy - px / 2, xx - cx) < r
            img = (rng.random((px, px, 3)) * 80 + 120).astype(np.uint8) * disc[..., None]
            ext = "jpeg" if (differ == "extension" and src) else "jpg"
            path = tmp_path / f"p{p}_{k}.{ext}"
            Image.fromarray(img).save(path, format="JPEG", quality=60 if (differ == "quality" and src) else 95,
                                      subsampling=2)
            rows.append({"image_id": path.stem, "patient_key": f"P{p}", "label": ["normal", "disease"][src],
                         "y": src, "width": px, "height": px, **acquisition_fingerprint(path, key=KEY),
                         **geometry_fingerprint(np.asarray(Image.open(path)), "fundus")})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("differ,columns", [("quality", ("acq_jpeg_q", "acq_jpeg_qt")), ("extension", ("acq_format",)),
                                            ("size", ("size",)), ("fov", ("acq_fov",))])
def test_sources_differing_in_one_setting_are_caught(tmp_path, differ, columns):
    df = _source_cohort(tmp_path, differ)
    probe = shortcut_probe(df)
    assert probe["auc"] >= SHORTCUT_AUC and min(probe["cramers_v"][c] for c in columns) > 0.9
    others = {c: v for c, v in probe["cramers_v"].items() if c not in columns}
    assert all(v < 0.5 for v in others.values()), others  # only the setting that differs carries the label


def test_geometry_fingerprint_reads_the_field_of_view():
    from medxcept.integrity.acquisition import geometry_fingerprint

    yy, xx = np.mgrid[0:120, 0:160]
    inside = np.hypot(yy - 60, xx - 96) < 50  # radius 50 of the half-side 60, centre 16 px right
    img = np.where(inside[..., None], 0.55, 0.03).repeat(3, axis=2)
    g = geometry_fingerprint(img)
    assert g == {"acq_fov": "r0.85 c+0.25+0.00", "acq_border": "k4", "acq_aspect": "1.33"}
    flat = geometry_fingerprint(np.full((50, 50, 3), 0.5))  # no surround: a pre-cropped image
    assert flat["acq_fov"] == "none" and flat["acq_border"] == "none"
    gray = geometry_fingerprint(np.pad(np.full((40, 40), 0.5), 5), "gray")
    assert gray["acq_fov"] == "" and gray["acq_border"] == "k0"


def test_dicom_fingerprint_reads_the_transfer_syntax_without_a_warning(tmp_path, recwarn):
    """The transfer syntax lives in the file meta information, which pydicom keeps as an attribute:
    the fingerprint must read it (and not ask ``"file_meta" in ds``, which pydicom warns about and
    answers False)."""
    from medxcept.io.dicom_writer import write_ophthalmic_photo

    rgb = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    prints = {}
    for transfer in ("jpeg_baseline", "explicit"):
        path = tmp_path / f"{transfer}.dcm"
        write_ophthalmic_photo(path, rgb, patient_id="P1", laterality="L", manufacturer="Acme", model="X1",
                               transfer=transfer)
        prints[transfer] = acquisition_fingerprint(path, kind="dicom", key=KEY)
    assert prints["jpeg_baseline"]["acq_jpeg_qt"] == "1.2.840.10008.1.2.4.50"
    assert prints["explicit"]["acq_jpeg_qt"] == "1.2.840.10008.1.2.1"
    assert not [w for w in recwarn if "operator" in str(w.message)]


def test_device_fingerprint_is_keyed(tmp_path):
    """Issue 33: ``acq_device`` was sha256(device string)[:8], which anyone can recompute from a guessed
    station or hospital name. It is an HMAC with the pseudonym key: equal devices agree under one key,
    the value changes with the key, and the plain hash of the device string appears nowhere."""
    import hashlib

    from medxcept.io.dicom_writer import write_ophthalmic_photo

    rgb = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    for name in ("a", "b"):
        write_ophthalmic_photo(tmp_path / f"{name}.dcm", rgb, patient_id="P1", laterality="L",
                               manufacturer="Acme", model="X1", transfer="explicit")
    a1, b1 = (acquisition_fingerprint(tmp_path / f"{n}.dcm", kind="dicom", key=KEY)["acq_device"] for n in "ab")
    a2 = acquisition_fingerprint(tmp_path / "a.dcm", kind="dicom", key=KEY[::-1])["acq_device"]
    assert a1 == b1 and a1.startswith("h:") and len(a1) == 10  # the audit can still compare devices
    assert a2 != a1
    import pydicom

    ds = pydicom.dcmread(tmp_path / "a.dcm", stop_before_pixels=True)
    dev = " | ".join(str(ds.get(k, "") or "") for k in
                     ("Manufacturer", "ManufacturerModelName", "StationName", "InstitutionName"))
    assert hashlib.sha256(dev.encode()).hexdigest()[:8] not in a1
    with pytest.raises(ValueError, match="empty key"):
        acquisition_fingerprint(tmp_path / "a.dcm", kind="dicom", key="")
