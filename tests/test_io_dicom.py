"""Tests of medxcept.io.dicom against hand-computed display values.

Windowing expectations come from the DICOM formula (PS3.3 C.11.2.1.2), written out
here independently of pydicom; colour expectations from known RGB inputs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

sys.path.insert(0, str(Path(__file__).parent))
import dicom_corpus as corpus  # noqa: E402

from medxcept.errors import ConfigError, MissingDecoderError, ReadError  # noqa: E402
from medxcept.io import dicom as dicom_mod  # noqa: E402
from medxcept.io.dicom import (  # noqa: E402
    OPHTHALMIC_PHOTOGRAPHY_8BIT,
    check_decoders,
    read_dicom,
    read_dicom_header,
    require_decoder,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ----------------------------------------------------------------- helpers


def dicom_linear(x: float, center: float, width: float) -> float:
    """PS3.3 C.11.2.1.2.1 LINEAR window, output scaled to [0, 1]."""
    if x <= center - 0.5 - (width - 1) / 2:
        return 0.0
    if x > center - 0.5 + (width - 1) / 2:
        return 1.0
    return (x - (center - 0.5)) / (width - 1) + 0.5


def minmax(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return (values - values.min()) / (values.max() - values.min())


@pytest.fixture(scope="module")
def pixels12() -> np.ndarray:
    rng = np.random.default_rng(12)
    px = rng.integers(100, 4000, size=(48, 64)).astype(np.uint16)  # 6 KB: a deferred read
    px[0, 0], px[3, 7] = 37, 4095
    return px


def assert_reason(excinfo: pytest.ExceptionInfo[ReadError], *fragments: str, stage: str) -> None:
    err = excinfo.value
    assert err.stage == stage, err
    for fragment in fragments:
        assert fragment in err.reason, f"{fragment!r} not in {err.reason!r}"


# ----------------------------------------------------------------- transfer syntaxes


@pytest.mark.parametrize("transfer", ["implicit", "explicit", "deflated"])
def test_native_transfer_syntaxes(tmp_path: Path, pixels12: np.ndarray, transfer: str) -> None:
    path = corpus.write_gray(tmp_path / f"{transfer}.dcm", pixels12, transfer=transfer, bits_stored=12)
    image, meta = read_dicom(path)
    assert image.shape == (1, 48, 64, 1) and image.dtype == np.float32
    np.testing.assert_allclose(image[0, ..., 0], minmax(pixels12), atol=1e-6)
    assert meta["transfer_syntax"] == corpus._TRANSFER[transfer]
    assert meta["voi"] == "min-max of the stored range present"
    assert image[0, 0, 0, 0] == 0.0 and image[0, 3, 7, 0] == 1.0


def test_no_preamble_no_file_meta(tmp_path: Path, pixels12: np.ndarray) -> None:
    path = corpus.write_gray(tmp_path / "bare.dcm", pixels12, file_meta=False)
    raw = path.read_bytes()
    assert raw[128:132] != b"DICM" and raw[:4] == b"\x08\x00\x16\x00"  # starts at (0008,0016)
    image, meta = read_dicom(path)
    np.testing.assert_allclose(image[0, ..., 0], minmax(pixels12), atol=1e-6)
    assert meta["transfer_syntax"] == dcm_uid.ImplicitVRLittleEndian
    assert read_dicom_header(path)["rows"] == 48


def test_big_endian_bundled_matches_little_endian() -> None:
    big, little = (corpus.bundled_test_file(n) for n in ("MR_small_bigendian.dcm", "MR_small.dcm"))
    if big is None or little is None:
        pytest.skip("MR_small(_bigendian).dcm not shipped in this pydicom wheel")
    np.testing.assert_array_equal(read_dicom(big)[0], read_dicom(little)[0])


def test_jpeg_baseline_ybr_full_422_colours(tmp_path: Path) -> None:
    colours = np.array(
        [[255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 150, 30], [20, 60, 110], [128, 128, 128]],
        dtype=np.uint8,
    )
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    for k, colour in enumerate(colours):
        rgb[(k // 3) * 16 : (k // 3 + 1) * 16, (k % 3) * 16 : (k % 3 + 1) * 16] = colour
    path = corpus.write_jpeg_baseline(tmp_path / "ybr422.dcm", rgb)
    image, meta = read_dicom(path)
    assert meta["photometric"] == "YBR_FULL_422" and image.shape == (1, 32, 48, 3)
    # block interiors (away from JPEG ringing at colour edges); a second YBR->RGB
    # conversion would move pure red by >100 levels
    for k, colour in enumerate(colours):
        r, c = (k // 3) * 16 + 8, (k % 3) * 16 + 8
        got = image[0, r - 2 : r + 2, c - 2 : c + 2].reshape(-1, 3).mean(axis=0) * 255
        np.testing.assert_allclose(got, colour, atol=4, err_msg=f"colour {colour}")


def test_jpeg_baseline_gray(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))  # smooth ramp 0..252
    image, meta = read_dicom(corpus.write_jpeg_baseline(tmp_path / "gray.dcm", gray))
    assert image.shape == (1, 16, 64, 1)
    np.testing.assert_allclose(image[0, 4:12, 4:60, 0] * 252, gray[4:12, 4:60], atol=4)


def test_jpeg_lossless_sv1_is_exact(tmp_path: Path, pixels12: np.ndarray) -> None:
    path = corpus.write_jpeg_lossless(tmp_path / "jll.dcm", pixels12, precision=12)
    stored = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(stored, pixels12)  # the encoder here is right
    image, meta = read_dicom(path)
    assert meta["transfer_syntax"] == dcm_uid.JPEGLosslessSV1
    np.testing.assert_allclose(image[0, ..., 0], minmax(pixels12), atol=1e-6)


def test_jpeg_ls_lossless_bundled_matches_uncompressed() -> None:
    jls, raw = (corpus.bundled_test_file(n) for n in ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"))
    if jls is None or raw is None:
        pytest.skip(f"no JPEG-LS encoder ({corpus.encoder_unavailable(dcm_uid.JPEGLSLossless)}) "
                    "and MR_small_jpeg_ls_lossless.dcm not shipped in this pydicom wheel")
    image, meta = read_dicom(jls)
    assert meta["transfer_syntax"] == dcm_uid.JPEGLSLossless
    reference, _ = read_dicom(raw)
    np.testing.assert_array_equal(image, reference)
    ds = pydicom.dcmread(raw)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)  # 600, 1600
    expected = np.vectorize(dicom_linear)(ds.pixel_array.astype(np.float64), center, width)
    np.testing.assert_allclose(image[0, ..., 0], expected, atol=1e-6)


@pytest.mark.parametrize("transfer", [dcm_uid.JPEG2000Lossless, dcm_uid.RLELossless])
def test_lossless_codecs_are_exact(tmp_path: Path, pixels12: np.ndarray, transfer: str) -> None:
    reason = corpus.encoder_unavailable(transfer)
    if reason:
        pytest.skip(reason)
    path = corpus.write_compressed(tmp_path / "c.dcm", pixels12, transfer, bits_stored=12)
    image, meta = read_dicom(path)
    assert meta["transfer_syntax"] == transfer
    np.testing.assert_allclose(image[0, ..., 0], minmax(pixels12), atol=1e-6)


def test_jpeg2000_lossy_is_close(tmp_path: Path) -> None:
    reason = corpus.encoder_unavailable(dcm_uid.JPEG2000)
    if reason:
        pytest.skip(reason)
    ramp = (np.add.outer(np.arange(40), np.arange(48)) * 40).astype(np.uint16)
    window = {"WindowCenter": 2048, "WindowWidth": 4096}
    path = corpus.write_compressed(
        tmp_path / "j2k.dcm", ramp, dcm_uid.JPEG2000, bits_stored=12, attrs=window, j2k_cr=[20]
    )
    assert len(pydicom.dcmread(path).PixelData) < ramp.nbytes / 5  # really compressed
    image, meta = read_dicom(path)
    expected = np.vectorize(dicom_linear)(ramp, 2048, 4096)
    error = np.abs(image[0, ..., 0] - expected)
    assert error.mean() < 0.03 and error.max() < 0.15
    assert meta["voi"] == "window C=2048 W=4096 LINEAR"


def test_rle_rgb_and_multiframe_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    path = corpus.write_compressed(tmp_path / "rgb.dcm", rgb, dcm_uid.RLELossless, bits_allocated=8, photometric="RGB")
    image, _ = read_dicom(path)
    np.testing.assert_array_equal(np.rint(image[0] * 255), rgb)
    frames = rng.integers(0, 1000, size=(3, 8, 8)).astype(np.uint16)
    path = corpus.write_compressed(tmp_path / "mf.dcm", frames, dcm_uid.RLELossless)
    image, meta = read_dicom(path, frame=2)
    assert meta["n_frames"] == 3 and meta["frames"] == [2]
    np.testing.assert_allclose(image[0, ..., 0], minmax(frames[2]), atol=1e-6)


# ----------------------------------------------------------------- grayscale display pipeline


def test_window_values_at_pixels(tmp_path: Path) -> None:
    px = np.array([[0, 75, 76, 90, 100, 124, 125, 200]], dtype=np.uint16)
    path = corpus.write_gray(
        tmp_path / "w.dcm", px, bits_stored=12, WindowCenter=[100, 1000], WindowWidth=[50, 2001]
    )
    image, meta = read_dicom(path)
    expected = [dicom_linear(x, 100, 50) for x in px[0]]
    assert expected[:3] == [0.0, 0.0, pytest.approx(1 / 49)] and expected[-2:] == [1.0, 1.0]
    np.testing.assert_allclose(image[0, 0, :, 0], expected, atol=1e-6)
    image1, meta1 = read_dicom(path, window_index=1)
    np.testing.assert_allclose(image1[0, 0, :, 0], [dicom_linear(x, 1000, 2001) for x in px[0]], atol=1e-6)
    assert meta["voi"].startswith("window C=100 W=50") and meta1["voi"].startswith("window C=1000 W=2001")
    with pytest.raises(ReadError) as excinfo:
        read_dicom(path, window_index=2)
    assert_reason(excinfo, "window_index=2", "2 window(s)", stage="decode")


def test_window_exact_and_sigmoid(tmp_path: Path) -> None:
    px = np.array([[50, 90, 100, 110, 150]], dtype=np.uint16)
    exact = corpus.write_gray(tmp_path / "e.dcm", px, WindowCenter=100, WindowWidth=20, VOILUTFunction="LINEAR_EXACT")
    image, _ = read_dicom(exact)
    # LINEAR_EXACT: (x - c) / w + 0.5, clipped
    np.testing.assert_allclose(image[0, 0, :, 0], [0, 0, 0.5, 1, 1], atol=1e-6)
    sigmoid = corpus.write_gray(tmp_path / "s.dcm", px, WindowCenter=100, WindowWidth=20, VOILUTFunction="SIGMOID")
    image, _ = read_dicom(sigmoid)
    expected = [1 / (1 + math.exp(-4 * (int(x) - 100) / 20)) for x in px[0]]
    np.testing.assert_allclose(image[0, 0, :, 0], expected, atol=1e-6)


def test_voi_lut_sequence(tmp_path: Path) -> None:
    px = np.array([[0, 10, 11, 12, 13, 500]], dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 10, 16]  # 4 entries, first mapped value 10, 16 bits
    item.add_new(0x00283006, "US", [0, 1000, 30000, 65535])  # LUTData
    path = corpus.write_gray(tmp_path / "voilut.dcm", px, VOILUTSequence=Sequence([item]))
    image, meta = read_dicom(path)
    # below first mapped -> entry 0; above the last -> last entry
    np.testing.assert_allclose(image[0, 0, :, 0], np.array([0, 0, 1000, 30000, 65535, 65535]) / 65535, atol=1e-6)
    assert meta["voi"] == "VOI LUT 0"


def test_voi_lut_8bit_entries_more_than_256(tmp_path: Path) -> None:
    """LUTDescriptor [4096, 0, 8]: pydicom 3 indexes it with uint8 and wraps; medxcept must not."""
    px = np.array([[0, 15, 16, 255, 256, 300, 2048, 4095]], dtype=np.uint16)
    path, truth = corpus.write_voi_lut8(tmp_path / "lut8.dcm", px)
    image, meta = read_dicom(path)
    expected = (px[0] // 16) / 255.0  # entry k = k // 16, hand-computed
    np.testing.assert_allclose(image[0, 0, :, 0], expected, atol=1e-6)
    np.testing.assert_allclose(image, truth, atol=1e-6)
    assert meta["voi"] == "VOI LUT 0"
    # the bug this guards against: pydicom's own output for input 300 is entry 44 (300 mod 256)
    ds = pydicom.dcmread(path)
    wrapped = dicom_mod.apply_voi_lut(px.astype(np.int64), ds, prefer_lut=True)
    assert int(wrapped[0, 5]) != 300 // 16
    # a first mapped value: inputs below it take entry 0
    path, truth = corpus.write_voi_lut8(tmp_path / "lut8_first.dcm", px, first_mapped=256)
    np.testing.assert_allclose(read_dicom(path)[0], truth, atol=1e-6)
    assert float(read_dicom(path)[0][0, 0, 3, 0]) == 0.0


def test_encapsulated_jpeg_frame_cut_short_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, size=(32, 40), dtype=np.uint8)
    whole = corpus.write_jpeg_baseline(tmp_path / "whole.dcm", img)
    assert read_dicom(whole)[0].shape == (1, 32, 40, 1)
    cut = corpus.write_jpeg_cut_frame(tmp_path / "cut.dcm", img, keep=0.6)
    # the file itself is well formed: pydicom parses it and Pillow decodes the frame silently
    assert pydicom.dcmread(cut).pixel_array.shape == (32, 40)
    with pytest.raises(ReadError) as excinfo:
        read_dicom(cut)
    assert_reason(excinfo, "truncated pixel data", "no end-of-image marker", "frame 0", stage="decode")


def test_rescale_slope_intercept_then_window(tmp_path: Path) -> None:
    px = np.array([[0, 800, 1024, 1064, 1100, 1300, 4095]], dtype=np.uint16)
    path = corpus.write_gray(
        tmp_path / "ct.dcm", px, bits_stored=12, sop_class=corpus.CT_IMAGE,
        RescaleSlope=0.5, RescaleIntercept=-512, WindowCenter=40, WindowWidth=400,
    )
    image, _ = read_dicom(path)
    hounsfield = px[0] * 0.5 - 512  # [-512, -112, 0, 20, 38, 138, 1535.5]
    expected = [dicom_linear(h, 40, 400) for h in hounsfield]
    assert expected[0] == 0.0 and expected[-1] == 1.0
    np.testing.assert_allclose(image[0, 0, :, 0], expected, atol=1e-6)


def test_negative_rescale_slope_keeps_window_direction(tmp_path: Path) -> None:
    px = np.array([[0, 900, 1000, 1100, 4000]], dtype=np.uint16)
    path = corpus.write_gray(
        tmp_path / "neg.dcm", px, bits_stored=12, RescaleSlope=-1, RescaleIntercept=1000,
        WindowCenter=0, WindowWidth=201,
    )
    image, _ = read_dicom(path)
    rescaled = 1000 - px[0].astype(np.float64)  # [1000, 100, 0, -100, -3000]
    np.testing.assert_allclose(image[0, 0, :, 0], [dicom_linear(v, 0, 201) for v in rescaled], atol=1e-6)


def test_modality_lut_sequence(tmp_path: Path) -> None:
    px = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.add_new(0x00283006, "US", [0, 100, 200, 4000])  # LUTData
    item.ModalityLUTType = "US"
    path = corpus.write_gray(tmp_path / "mlut.dcm", px, ModalityLUTSequence=Sequence([item]))
    image, _ = read_dicom(path)
    np.testing.assert_allclose(image[0, 0, :, 0], [0, 100 / 4000, 200 / 4000, 1], atol=1e-6)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    px = np.array([[0, 1000, 4095]], dtype=np.uint16)
    path = corpus.write_gray(tmp_path / "m1.dcm", px, bits_stored=12, photometric="MONOCHROME1")
    image, meta = read_dicom(path)
    np.testing.assert_allclose(image[0, 0, :, 0], [1, 1 - 1000 / 4095, 0], atol=1e-6)
    assert meta["photometric"] == "MONOCHROME1"
    windowed = corpus.write_gray(
        tmp_path / "m1w.dcm", px, bits_stored=12, photometric="MONOCHROME1", WindowCenter=1000, WindowWidth=1000
    )
    image, _ = read_dicom(windowed)
    np.testing.assert_allclose(image[0, 0, :, 0], [1 - dicom_linear(x, 1000, 1000) for x in px[0]], atol=1e-6)


def test_signed_16bit(tmp_path: Path) -> None:
    px = np.array([[-2000, -1, 0, 1000, 2000]], dtype=np.int16)
    path = corpus.write_gray(tmp_path / "s16.dcm", px, signed=True)
    image, _ = read_dicom(path)
    np.testing.assert_allclose(image[0, 0, :, 0], (px[0] + 2000) / 4000, atol=1e-6)
    windowed = corpus.write_gray(tmp_path / "s16w.dcm", px, signed=True, WindowCenter=0, WindowWidth=2001)
    image, _ = read_dicom(windowed)
    np.testing.assert_allclose(image[0, 0, :, 0], [dicom_linear(x, 0, 2001) for x in px[0]], atol=1e-6)


def test_bits_stored_12_ignores_unused_high_bits(tmp_path: Path) -> None:
    px = np.array([[0, 1, 2048, 4095]], dtype=np.uint16)
    garbage = (px | 0xA000).astype("<u2").tobytes()  # high 4 bits set
    path = corpus.write_gray(tmp_path / "b12.dcm", px, bits_stored=12, raw_bytes=garbage)
    image, meta = read_dicom(path)
    assert meta["bits_stored"] == 12
    np.testing.assert_allclose(image[0, 0, :, 0], px[0] / 4095, atol=1e-6)
    # signed 12-bit two's complement in the low bits: 0xFFF is -1, 0x800 is -2048
    signed = np.array([[0x800, 0xFFF, 0, 0x7FF]], dtype=np.uint16)
    path = corpus.write_gray(tmp_path / "s12.dcm", signed, bits_stored=12, signed=True,
                             raw_bytes=signed.astype("<u2").tobytes())
    image, _ = read_dicom(path)
    np.testing.assert_allclose(image[0, 0, :, 0], (np.array([-2048, -1, 0, 2047]) + 2048) / 4095, atol=1e-6)


def test_pixel_padding_value_excluded_from_min_max(tmp_path: Path) -> None:
    px = np.array([[0, 100, 200, 300]], dtype=np.uint16)
    path = corpus.write_gray(tmp_path / "pad.dcm", px, PixelPaddingValue=0)
    image, _ = read_dicom(path)
    np.testing.assert_allclose(image[0, 0, :, 0], [0, 0, 0.5, 1], atol=1e-6)


def test_multiframe_selection_and_per_frame_windows(tmp_path: Path) -> None:
    frames = np.stack([np.full((4, 5), v, dtype=np.uint16) for v in (10, 20, 30)])
    frames[:, 0, 0] = 0
    frames[:, 3, 4] = 100
    path = corpus.write_gray(tmp_path / "mf.dcm", frames)
    all_frames, meta = read_dicom(path)
    assert all_frames.shape == (3, 4, 5, 1) and meta["n_frames"] == 3 and meta["frames"] == [0, 1, 2]
    for k, v in enumerate((10, 20, 30)):
        assert all_frames[k, 1, 1, 0] == pytest.approx(v / 100)
        one, meta_one = read_dicom(path, frame=k)
        assert one.shape == (1, 4, 5, 1) and meta_one["frames"] == [k]
        np.testing.assert_array_equal(one[0], all_frames[k])
    with pytest.raises(ReadError) as excinfo:
        read_dicom(path, frame=3)
    assert_reason(excinfo, "frame 3", "3 frame(s)", stage="decode")
    # enhanced multi-frame: shared rescale, one window per frame in functional groups
    groups = corpus.frames_functional_groups([(15, 11), (25, 11), (40, 81)], rescale=(2.0, -10.0))
    path = corpus.write_gray(tmp_path / "enh.dcm", frames, **groups)
    image, _ = read_dicom(path)
    for k, (v, (center, width)) in enumerate(zip((10, 20, 30), [(15, 11), (25, 11), (40, 81)], strict=False)):
        assert image[k, 1, 1, 0] == pytest.approx(dicom_linear(2 * v - 10, center, width))


# ----------------------------------------------------------------- colour


@pytest.fixture(scope="module")
def rgb_known() -> np.ndarray:
    rgb = np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]],
         [[0, 0, 0], [200, 150, 30], [20, 60, 110], [128, 128, 128]]],
        dtype=np.uint8,
    )
    return rgb


def test_ybr_full_to_rgb(tmp_path: Path, rgb_known: np.ndarray) -> None:
    path = corpus.write_rgb(tmp_path / "ybr.dcm", corpus.ybr_full_from_rgb(rgb_known), photometric="YBR_FULL")
    image, meta = read_dicom(path)
    assert meta["photometric"] == "YBR_FULL"
    np.testing.assert_allclose(image[0] * 255, rgb_known, atol=2.5)


def test_ybr_full_422_native(tmp_path: Path) -> None:
    # pairs of pixels share chroma: Y0 Y1 Cb Cr per pair (PS3.3 C.7.6.3.1.2)
    rgb = np.array([[[255, 0, 0], [255, 0, 0], [0, 0, 255], [0, 0, 255]]], dtype=np.uint8)
    ybr = corpus.ybr_full_from_rgb(rgb)[0]
    packed = bytes([ybr[0, 0], ybr[1, 0], ybr[0, 1], ybr[0, 2], ybr[2, 0], ybr[3, 0], ybr[2, 1], ybr[2, 2]])
    ds = corpus.image_dataset(rows=1, columns=4, photometric="YBR_FULL_422", bits_allocated=8, samples=3)
    ds.PixelData = packed
    image, _ = read_dicom(corpus.save(ds, tmp_path / "422.dcm"))
    np.testing.assert_allclose(image[0] * 255, rgb, atol=2.5)


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422 (dcmtk)
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL (dcmtk)
        "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1, RGB (gdcm)
        "SC_rgb_gdcm_KY.dcm",  # JPEG 2000, RGB (gdcm)
    ],
)
def test_bundled_colour_files_match_uncompressed_rgb(name: str) -> None:
    """Real encoders' colour files against the same picture stored as RLE RGB."""
    path, reference = corpus.bundled_test_file(name), corpus.bundled_test_file("SC_rgb_rle.dcm")
    if path is None or reference is None:
        pytest.skip(f"{name} or SC_rgb_rle.dcm not shipped in this pydicom wheel")
    image, _ = read_dicom(path)
    expected, _ = read_dicom(reference)
    assert np.abs(image - expected).mean() * 255 < 4  # one YBR->RGB pass, not two


def test_planar_configuration_1(tmp_path: Path, rgb_known: np.ndarray) -> None:
    by_pixel, _ = read_dicom(corpus.write_rgb(tmp_path / "p0.dcm", rgb_known, planar=0))
    by_plane, _ = read_dicom(corpus.write_rgb(tmp_path / "p1.dcm", rgb_known, planar=1))
    np.testing.assert_array_equal(by_plane, by_pixel)
    np.testing.assert_allclose(by_plane[0] * 255, rgb_known, atol=1e-4)


def test_palette_colour(tmp_path: Path) -> None:
    px = np.array([[0, 1, 2, 3]], dtype=np.uint8)
    attrs = {
        "RedPaletteColorLookupTableDescriptor": [4, 0, 16],
        "GreenPaletteColorLookupTableDescriptor": [4, 0, 16],
        "BluePaletteColorLookupTableDescriptor": [4, 0, 16],
        "RedPaletteColorLookupTableData": np.array([0, 65535, 0, 32768], "<u2").tobytes(),
        "GreenPaletteColorLookupTableData": np.array([0, 0, 65535, 32768], "<u2").tobytes(),
        "BluePaletteColorLookupTableData": np.array([0, 0, 0, 65535], "<u2").tobytes(),
    }
    path = corpus.write_gray(tmp_path / "pal.dcm", px, bits_allocated=8, photometric="PALETTE COLOR", **attrs)
    image, _ = read_dicom(path)
    assert image.shape == (1, 1, 4, 3)
    np.testing.assert_allclose(image[0, 0], [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.5, 0.5, 1]], atol=1e-4)


# ----------------------------------------------------------------- broken files


def test_truncated_pixel_data(tmp_path: Path) -> None:
    px = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    for transfer in ("explicit", "deflated"):
        path = corpus.write_gray(tmp_path / f"t_{transfer}.dcm", px, transfer=transfer)
        path.write_bytes(path.read_bytes()[:-500])
        with pytest.raises(ReadError) as excinfo:
            read_dicom(path)
        reason = excinfo.value.reason
        if transfer == "explicit":
            assert_reason(excinfo, "truncated pixel data", "declares 2048 bytes", "ends after 1548", stage="decode")
            assert read_dicom_header(path)["rows"] == 32  # the header alone is intact
        else:  # the whole dataset is one deflate stream: it fails when inflated
            assert_reason(excinfo, "unreadable DICOM header", "truncated stream", stage="ingest")


def test_truncated_compressed_pixel_data(tmp_path: Path, pixels12: np.ndarray) -> None:
    # pydicom drops the whole dataset when a file ends inside encapsulated data
    path = corpus.write_compressed(tmp_path / "t.dcm", pixels12, dcm_uid.RLELossless)
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    position = data.find(b"\xe0\x7f\x10\x00", 132)
    for reader in (read_dicom, read_dicom_header):
        with pytest.raises(ReadError) as excinfo:
            reader(path)
        assert_reason(
            excinfo, "truncated pixel data", f"element at byte {position}",
            f"end of the file ({len(data) - 1000} bytes)", stage="decode",
        )


def test_header_without_pixels(tmp_path: Path) -> None:
    ds = corpus.image_dataset(rows=8, columns=8, sop_class=corpus.CT_IMAGE)
    path = corpus.save(ds, tmp_path / "nopix.dcm")
    for reader in (read_dicom, read_dicom_header):
        with pytest.raises(ReadError) as excinfo:
            reader(path)
        assert_reason(excinfo, "not an image: CT Image Storage (no Pixel Data element)", stage="ingest")


@pytest.mark.parametrize("seed", range(6))
def test_garbage_bytes_named_dcm(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path = tmp_path / "garbage.dcm"
    path.write_bytes(rng.integers(0, 256, size=int(rng.integers(10, 5000)), dtype=np.uint8).tobytes())
    for reader in (read_dicom, read_dicom_header):
        with pytest.raises(ReadError) as excinfo:
            reader(path)
        err = excinfo.value
        assert err.stage == "ingest"
        assert err.reason.startswith(("not a DICOM file", "unreadable DICOM header")), err.reason


def test_text_file_named_dcm(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("patient notes, not an image\n" * 40)
    with pytest.raises(ReadError) as excinfo:
        read_dicom(path)
    assert_reason(excinfo, "not a DICOM file: no 'DICM' marker", "1120 bytes", stage="ingest")


@pytest.mark.parametrize("kind", ["native", "rle", "jpeg_baseline"])
def test_mutated_files_fail_cleanly(tmp_path: Path, pixels12: np.ndarray, kind: str) -> None:
    """Random byte corruption or cuts: a valid image or a ReadError, never a crash."""
    if kind == "native":
        good = corpus.write_gray(tmp_path / "g.dcm", pixels12, WindowCenter=100, WindowWidth=50)
    elif kind == "rle":
        good = corpus.write_compressed(tmp_path / "g.dcm", pixels12, dcm_uid.RLELossless)
    else:
        good = corpus.write_jpeg_baseline(tmp_path / "g.dcm", np.full((32, 32, 3), 90, np.uint8))
    original = good.read_bytes()
    rng = np.random.default_rng(7)
    outcomes = {"ok": 0, "error": 0}
    for k in range(40):
        data = bytearray(original)
        for pos in rng.integers(128, len(data), size=int(rng.integers(1, 6))):
            data[pos] = int(rng.integers(0, 256))
        if k % 8 == 0:
            data = data[: int(rng.integers(132, len(data)))]
        path = tmp_path / f"mut{k}.dcm"
        path.write_bytes(bytes(data))
        for reader in (read_dicom, read_dicom_header):
            try:
                result = reader(path)
            except ReadError as err:
                assert err.reason and err.stage in ("ingest", "decode")
                outcomes["error"] += 1
            else:
                if reader is read_dicom:
                    image = result[0]
                    assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
                outcomes["ok"] += 1
    assert outcomes["error"] > 0


def test_corrupt_codec_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = corpus.image_dataset(rows=4, columns=4, bits_allocated=8)
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + bytes(range(40)) + b"\xff\xd9"])
    path = corpus.save(ds, tmp_path / "badjpeg.dcm", dcm_uid.JPEGBaseline8Bit)
    with pytest.raises(ReadError) as excinfo:
        read_dicom(path)
    assert_reason(excinfo, "JPEG Baseline (Process 1) decoding failed", stage="decode")

    # Rust codecs (pylibjpeg-rle) panic with pyo3's PanicException, a BaseException
    class PanicException(BaseException):
        pass

    class PanickingDecoder:
        is_available = True

        def as_array(self, *args: object, **kwargs: object) -> None:
            raise PanicException("index out of bounds: the len is 3840 but the index is 3841")

    monkeypatch.setattr(dicom_mod, "get_decoder", lambda uid: PanickingDecoder())
    with pytest.raises(ReadError) as excinfo:
        read_dicom(path)
    assert_reason(excinfo, "decoding failed: PanicException: index out of bounds", stage="decode")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    for reader in (read_dicom, read_dicom_header):
        with pytest.raises(ReadError) as excinfo:
            reader(path)
        assert_reason(excinfo, "empty file (0 bytes)", stage="ingest")
    with pytest.raises(ReadError) as excinfo:
        read_dicom(tmp_path / "missing.dcm")
    assert_reason(excinfo, "file not found", stage="ingest")


def test_unknown_transfer_syntax(tmp_path: Path) -> None:
    ds = corpus.image_dataset(rows=2, columns=2, bits_allocated=8)
    ds.PixelData = bytes(4)
    path = corpus.save(ds, tmp_path / "uts.dcm", "1.2.3.4.5")
    assert read_dicom_header(path)["transfer_syntax"] == "1.2.3.4.5"
    with pytest.raises(ReadError) as excinfo:
        read_dicom(path)
    assert_reason(excinfo, "unknown transfer syntax UID '1.2.3.4.5'", stage="decode")


def test_video_transfer_syntax_has_no_image_decoder(tmp_path: Path) -> None:
    ds = corpus.image_dataset(rows=2, columns=2, bits_allocated=8)
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" + bytes(8)])
    path = corpus.save(ds, tmp_path / "mpeg.dcm", dcm_uid.MPEG2MPML)
    with pytest.raises(ReadError) as excinfo:
        read_dicom(path)
    assert_reason(excinfo, "MPEG2 Main Profile / Main Level", "no image decoder", stage="decode")


def test_rows_columns_inconsistent_with_data(tmp_path: Path) -> None:
    px = np.zeros((10, 10), dtype=np.uint16)
    short = corpus.write_gray(tmp_path / "short.dcm", px, raw_bytes=bytes(128))
    with pytest.raises(ReadError) as excinfo:
        read_dicom(short)
    assert_reason(excinfo, "Rows 10 x Columns 10", "200 bytes expected, found 128", stage="decode")
    # trailing padding after the last frame is valid (issue 18): only a shortfall is an error
    long = corpus.write_gray(tmp_path / "long.dcm", px, raw_bytes=bytes(240))
    assert read_dicom(long)[0].shape == (1, 10, 10, 1)
    padded = corpus.write_gray(tmp_path / "pad.dcm", np.zeros((3, 3), np.uint8), bits_allocated=8)
    assert read_dicom(padded)[0].shape == (1, 3, 3, 1)  # 9 bytes + 1 pad byte is fine


def test_trailing_padding_log_names_the_keyed_label(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # issue 33: the padding note named the file itself ("PATIENT_SMITH_12345_OD.dcm: ...") at INFO
    from medxcept.io import file_label

    px = np.zeros((10, 10), dtype=np.uint16)
    long = corpus.write_gray(tmp_path / "SMITH_12345_OD.dcm", px, raw_bytes=bytes(240))
    with caplog.at_level("INFO", logger="medxcept"), file_label("F-0123456789"):
        read_dicom(long)
    lines = [r.getMessage() for r in caplog.records if "trailing padding" in r.getMessage()]
    assert lines == ["F-0123456789: 40 byte(s) of trailing padding after the last frame ignored"]
    assert "SMITH" not in caplog.text


def test_huge_declared_dimensions_refused_before_decoding(tmp_path: Path) -> None:
    ds = corpus.image_dataset(rows=60000, columns=60000, bits_allocated=8)
    ds.PixelData = bytes(16)
    path = corpus.save(ds, tmp_path / "huge.dcm")
    with pytest.raises(ReadError) as excinfo:
        read_dicom(path)
    assert_reason(excinfo, "Rows 60000 x Columns 60000", "3600000000 pixels exceeds max_pixels=100000000", stage="decode")
    small = corpus.write_gray(tmp_path / "small.dcm", np.zeros((20, 20), np.uint16))
    with pytest.raises(ReadError) as excinfo:
        read_dicom(small, max_pixels=399)
    assert_reason(excinfo, "400 pixels exceeds max_pixels=399", stage="decode")


def test_non_ascii_file_name(tmp_path: Path, pixels12: np.ndarray) -> None:
    big = np.tile(pixels12, (2, 2))  # 15 KB of pixels: above the 4 KB deferred-read size
    path = corpus.write_gray(tmp_path / "patiënt_眼底_Ø.dcm", big)
    image, _ = read_dicom(path)
    np.testing.assert_allclose(image[0, ..., 0], minmax(big), atol=1e-6)
    broken = tmp_path / "défaut_壊れた.dcm"
    broken.write_bytes(b"\x00" * 10)
    with pytest.raises(ReadError) as excinfo:
        read_dicom(broken)
    assert excinfo.value.path == str(broken)


@pytest.mark.parametrize(
    ("writer", "fragment"),
    [
        (corpus.write_sr, "not an image: Comprehensive SR Storage (structured report)"),
        (corpus.write_presentation_state, "not an image: Grayscale Softcopy Presentation State Storage (presentation state)"),
        (corpus.write_dicomdir, "not an image: DICOMDIR"),
    ],
)
def test_non_image_objects(tmp_path: Path, writer, fragment: str) -> None:
    path = writer(tmp_path / "obj.dcm")
    for reader in (read_dicom, read_dicom_header):
        with pytest.raises(ReadError) as excinfo:
            reader(path)
        assert_reason(excinfo, fragment, stage="ingest")


def test_missing_decoder_is_an_install_error(tmp_path: Path, pixels12: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg-openjpeg"]

    path = corpus.write_compressed(tmp_path / "j2k.dcm", pixels12, dcm_uid.JPEG2000Lossless)
    monkeypatch.setattr(dicom_mod, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(MissingDecoderError, match="pip install pylibjpeg pylibjpeg-openjpeg"):
        read_dicom(path)
    require_decoder(dcm_uid.ExplicitVRLittleEndian)  # native: never needs a plugin


def test_check_decoders() -> None:
    decoders = check_decoders()
    assert {"JPEGBaseline8Bit", "JPEGLosslessSV1", "JPEGLSLossless", "JPEG2000Lossless", "RLELossless"} <= set(decoders)
    assert all(isinstance(v, bool) for v in decoders.values())
    assert decoders["RLELossless"] is True  # pydicom's own RLE decoder
    for keyword, ok in decoders.items():
        if ok:
            require_decoder(getattr(dcm_uid, keyword))


# ----------------------------------------------------------------- metadata


def test_header_metadata(tmp_path: Path) -> None:
    px = np.zeros((3, 4, 5), dtype=np.uint16)
    path = corpus.write_gray(
        tmp_path / "h.dcm", px, bits_stored=12, ImageLaterality="l", Laterality="R", Manufacturer="Topcon ",
        ManufacturerModelName="TRC-NW8", AcquisitionDate="20210304", StudyDate="20200101",
        PatientSex="f", PatientAge="045Y", Modality="OP",
    )
    meta = read_dicom_header(path)
    assert meta["laterality"] == "L"  # ImageLaterality wins, normalised to upper case
    assert meta["source"] == "Topcon TRC-NW8"
    assert meta["acquisition_date"] == "2021-03-04"
    assert (meta["sex"], meta["age"]) == ("F", 45.0)
    assert (meta["n_frames"], meta["rows"], meta["columns"], meta["samples_per_pixel"]) == (3, 4, 5, 1)
    assert (meta["photometric"], meta["bits_stored"], meta["modality"]) == ("MONOCHROME2", 12, "OP")
    assert meta["patient_id"] == "PAT-001" and meta["transfer_syntax"] == dcm_uid.ExplicitVRLittleEndian
    for key in ("study_id", "series_uid", "sop_uid"):
        assert meta[key].startswith("1.2.826.0.1.3680043")


@pytest.mark.parametrize(
    ("attrs", "laterality", "age", "date", "sex", "source"),
    [
        ({"Laterality": "R", "PatientAge": "006M", "StudyDate": "19991231"}, "R", 0.5, "1999-12-31", "", ""),
        ({"ImageLaterality": "B", "PatientAge": "003W", "PatientSex": "X"}, "NA", 3 * 7 / 365.25, "", "", ""),
        ({"ImageLaterality": "U", "Laterality": "L", "PatientAge": "bad", "AcquisitionDate": "20211399",
          "StudyDate": "20200229", "Manufacturer": "Zeiss"}, "NA", None, "2020-02-29", "", "Zeiss"),
        ({"PatientAge": "010D", "PatientSex": "O", "ManufacturerModelName": "Cirrus"}, "NA", 10 / 365.25, "", "O", "Cirrus"),
    ],
)
def test_header_normalisation(tmp_path: Path, attrs, laterality, age, date, sex, source) -> None:
    meta = read_dicom_header(corpus.write_gray(tmp_path / "n.dcm", np.zeros((2, 2), np.uint16), **attrs))
    assert meta["laterality"] == laterality
    assert meta["age"] == (pytest.approx(age) if age is not None else None)
    assert (meta["acquisition_date"], meta["sex"], meta["source"]) == (date, sex, source)


# ----------------------------------------------------------------- ophthalmic photography writer


@pytest.mark.parametrize("transfer", ["jpeg_baseline", "rle", "explicit"])
def test_write_ophthalmic_photo_roundtrip(tmp_path: Path, transfer: str) -> None:
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    rgb[:, :16] = [180, 60, 20]  # fundus-like orange
    rgb[:, 16:32] = [90, 30, 10]
    rgb[:, 32:] = [250, 220, 120]
    path = corpus.write_op_dicom(
        tmp_path / f"op_{transfer}.dcm", rgb, patient_id="EYE-9", laterality="R",
        manufacturer="Topcon", model="TRC-NW8", sex="M", age="067Y", transfer=transfer, study_uid="1.2.3.4",
    )
    image, meta = read_dicom(path)
    assert image.shape == (1, 32, 48, 3)
    if transfer == "jpeg_baseline":
        assert meta["photometric"] == "YBR_FULL_422"
        np.testing.assert_allclose(image[0][:, [4, 8, 24, 40]] * 255, rgb[:, [4, 8, 24, 40]], atol=4)
    else:
        np.testing.assert_array_equal(np.rint(image[0] * 255), rgb)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == OPHTHALMIC_PHOTOGRAPHY_8BIT and ds.Modality == "OP"
    assert ds.preamble is not None and path.read_bytes()[128:132] == b"DICM"
    assert (meta["patient_id"], meta["laterality"], meta["study_id"]) == ("EYE-9", "R", "1.2.3.4")
    assert (meta["source"], meta["sex"], meta["age"], meta["modality"]) == ("Topcon TRC-NW8", "M", 67.0, "OP")


def test_write_ophthalmic_photo_validates(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    meta = read_dicom_header(corpus.write_op_dicom(tmp_path / "na.dcm", rgb, patient_id="P", laterality="NA", transfer="explicit"))
    assert meta["laterality"] == "NA" and meta["source"] == "" and meta["age"] is None
    assert "ImageLaterality" not in pydicom.dcmread(tmp_path / "na.dcm")
    with pytest.raises(ConfigError, match="laterality"):
        corpus.write_op_dicom(tmp_path / "x.dcm", rgb, patient_id="P", laterality="left")
    with pytest.raises(ConfigError, match="uint8 array of shape"):
        corpus.write_op_dicom(tmp_path / "x.dcm", rgb.astype(np.float32), patient_id="P", laterality="L")
    with pytest.raises(ConfigError, match="DICOM age string"):
        corpus.write_op_dicom(tmp_path / "x.dcm", rgb, patient_id="P", laterality="L", age="45")
    with pytest.raises(ConfigError, match="transfer"):
        corpus.write_op_dicom(tmp_path / "x.dcm", rgb, patient_id="P", laterality="L", transfer="jpeg2000")
