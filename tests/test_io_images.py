"""Tests for medxcept.io.images: real files written with Pillow (or by hand), known pixel values."""

from __future__ import annotations

import io
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from medxcept.errors import ConfigError, ReadError
from medxcept.io import images
from medxcept.io.images import read_image, sniff_format

# ----------------------------------------------------------------------------- helpers


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: Path, array: np.ndarray | None, *, width: int = 0, height: int = 0,
              bit_depth: int = 16, colour_type: int = 2, exif: bytes | None = None) -> Path:
    """Hand-written PNG (Pillow cannot write 16-bit colour). ``array=None``: header only, no pixel data."""
    if array is not None:
        height, width = array.shape[:2]
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    if exif is not None:
        out += _chunk(b"eXIf", exif)
    if array is not None:
        dtype = ">u2" if bit_depth == 16 else "u1"
        rows = array.astype(dtype).reshape(height, -1)
        raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 per row
        out += _chunk(b"IDAT", zlib.compress(raw))
    out += _chunk(b"IEND", b"")
    path.write_bytes(out)
    return path


def exif_bytes(orientation: int | None = None, make: str | None = None, model: str | None = None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    return exif.tobytes()


def corner_pattern(width: int = 48, height: int = 32, block: int = 16) -> Image.Image:
    """Black image with a white block in the stored top-left corner (asymmetric under every flip)."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:block, :block] = 255
    return Image.fromarray(a)


# ----------------------------------------------------------------------------- basic formats


def test_png_8bit_exact_values(tmp_path):
    a = np.array([[[255, 0, 0], [0, 128, 255]]], np.uint8)
    p = tmp_path / "x.png"
    Image.fromarray(a).save(p)
    img, meta = read_image(p)
    assert img.dtype == np.float32 and img.shape == (1, 2, 3)
    np.testing.assert_allclose(img, a / 255.0, atol=1e-7)
    assert meta == {"format": "PNG", "mode": "RGB", "width": 2, "height": 1, "bit_depth": 8,
                    "exif_transposed": False, "source": "", "n_frames": 1,
                    "stored_width": 2, "stored_height": 1, "reduce": 1}


def test_png_16bit_grey_scaled_by_65535(tmp_path):
    g = np.array([[65535, 32768, 0, 1000]], np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(g).save(p)
    img, meta = read_image(p)
    assert img.shape == (1, 4, 3)
    assert img[0, 0, 0] == 1.0
    assert img[0, 1, 0] == pytest.approx(0.5, abs=1e-4)
    assert img[0, 3, 0] == pytest.approx(1000 / 65535, rel=1e-6)  # not 8-bit (3/255 = 0.0118)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])
    assert meta["bit_depth"] == 16 and meta["mode"] == "I;16"


def test_png_16bit_colour_keeps_16_bits(tmp_path):
    a = np.zeros((2, 3, 3), np.uint16)
    a[..., 0] = 65535
    a[..., 1] = 32768
    a[..., 2] = 1000  # 8-bit reduction would give 3/255 = 0.01176
    p = write_png(tmp_path / "rgb16.png", a, bit_depth=16, colour_type=2)
    img, meta = read_image(p)
    np.testing.assert_allclose(img[1, 2], [1.0, 32768 / 65535, 1000 / 65535], rtol=1e-6)
    assert meta["bit_depth"] == 16 and meta["format"] == "PNG"


def test_png_16bit_rgba_composited_on_black(tmp_path):
    a = np.zeros((1, 2, 4), np.uint16)
    a[0, 0] = [65535, 40000, 1000, 0]  # fully transparent -> black
    a[0, 1] = [40000, 65535, 20000, 65535]  # opaque -> itself
    p = write_png(tmp_path / "rgba16.png", a, bit_depth=16, colour_type=6)
    img, _ = read_image(p)
    np.testing.assert_allclose(img[0, 0], [0, 0, 0], atol=0)
    np.testing.assert_allclose(img[0, 1], np.array([40000, 65535, 20000]) / 65535, rtol=1e-6)


def test_png_16bit_colour_with_exif_orientation(tmp_path):
    a = np.zeros((2, 3, 3), np.uint16)
    a[0, 0] = 65535  # white in stored top-left
    p = write_png(tmp_path / "o.png", a, exif=exif_bytes(orientation=6))
    img, meta = read_image(p)
    assert img.shape == (3, 2, 3) and meta["exif_transposed"] is True
    assert img[0, 1].tolist() == [1.0, 1.0, 1.0]  # rotated 90 deg clockwise: top-left -> top-right
    assert img.sum() == 3.0


def test_greyscale_replicated(tmp_path):
    p = tmp_path / "g.png"
    Image.fromarray(np.array([[0, 51, 255]], np.uint8), mode="L").save(p)
    img, meta = read_image(p)
    np.testing.assert_allclose(img[0, :, 0], [0, 0.2, 1.0], atol=1e-7)
    assert (img[..., 0] == img[..., 2]).all() and meta["mode"] == "L" and meta["bit_depth"] == 8


def test_bilevel_image(tmp_path):
    p = tmp_path / "b.png"
    Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(p)
    img, meta = read_image(p)
    assert img[0, :, 1].tolist() == [0.0, 1.0] and meta["bit_depth"] == 1


def test_rgba_transparent_is_black_half_alpha_is_scaled(tmp_path):
    a = np.array([[[255, 255, 255, 0], [200, 100, 50, 255], [255, 255, 255, 51]]], np.uint8)
    p = tmp_path / "a.png"
    Image.fromarray(a, mode="RGBA").save(p)
    img, meta = read_image(p)
    assert img[0, 0].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(img[0, 1], [200 / 255, 100 / 255, 50 / 255], atol=1e-6)
    np.testing.assert_allclose(img[0, 2], [0.2, 0.2, 0.2], atol=1e-6)
    assert meta["mode"] == "RGBA"


def test_palette_with_and_without_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    p = tmp_path / "p.png"
    im.save(p)
    img, meta = read_image(p)
    assert img[0].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]] and meta["mode"] == "P"
    im.info["transparency"] = 0  # palette index 0 transparent
    im.save(tmp_path / "pt.png", transparency=0)
    img, _ = read_image(tmp_path / "pt.png")
    assert img[0].tolist() == [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def test_cmyk_cyan_tiff_and_jpeg(tmp_path):
    cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    cyan.save(tmp_path / "c.tif")
    img, meta = read_image(tmp_path / "c.tif")
    assert meta["format"] == "TIFF" and meta["mode"] == "CMYK"
    np.testing.assert_allclose(img[4, 4], [0, 1, 1], atol=1e-6)
    cyan.save(tmp_path / "c.jpg", quality=95)
    img, meta = read_image(tmp_path / "c.jpg")
    assert meta["format"] == "JPEG"
    np.testing.assert_allclose(img.mean(axis=(0, 1)), [0, 1, 1], atol=0.03)


def test_exif_orientation_6_rotates_jpeg(tmp_path):
    p = tmp_path / "o6.jpg"
    corner_pattern().save(p, quality=95, exif=exif_bytes(orientation=6))
    img, meta = read_image(p)
    # stored 48 wide x 32 high; orientation 6 = rotate 90 deg clockwise for display
    assert img.shape == (48, 32, 3) and meta["width"] == 32 and meta["height"] == 48
    assert meta["exif_transposed"] is True
    assert img[:16, 16:].mean() > 0.95  # white block now top-right
    assert img[:16, :16].mean() < 0.05 and img[16:, :].mean() < 0.05


def test_no_exif_not_transposed(tmp_path):
    p = tmp_path / "o1.jpg"
    corner_pattern().save(p, quality=95)
    img, meta = read_image(p)
    assert img.shape == (32, 48, 3) and meta["exif_transposed"] is False
    assert img[:16, :16].mean() > 0.95


@pytest.mark.parametrize("orientation", range(1, 9))
def test_numpy_orientation_matches_pillow(orientation):
    a = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(images._apply_orientation(a, orientation), expected)


def test_exif_make_model_source(tmp_path):
    p = tmp_path / "cam.jpg"
    corner_pattern().save(p, exif=exif_bytes(make="Canon ", model="CR-2 AF\x00"))
    assert read_image(p)[1]["source"] == "Canon CR-2 AF"
    corner_pattern().save(p, exif=exif_bytes(make="TOPCON", model="TOPCON TRC-NW8 "))
    assert read_image(p)[1]["source"] == "TOPCON TRC-NW8"


def test_png_named_jpg_read_by_content(tmp_path):
    a = np.array([[[10, 20, 30]]], np.uint8)
    p = tmp_path / "really_png.jpg"
    Image.fromarray(a).save(p, format="PNG")
    img, meta = read_image(p)
    assert meta["format"] == "PNG" and sniff_format(p) == "PNG"
    np.testing.assert_allclose(img[0, 0] * 255, [10, 20, 30], atol=1e-4)  # lossless: JPEG would blur


def test_progressive_jpeg(tmp_path):
    p = tmp_path / "prog.jpg"
    Image.new("RGB", (64, 64), (200, 50, 100)).save(p, quality=95, progressive=True)
    with Image.open(p) as check:
        assert check.info.get("progressive") == 1
    img, meta = read_image(p)
    assert meta["format"] == "JPEG" and img.shape == (64, 64, 3)
    np.testing.assert_allclose(img.mean(axis=(0, 1)) * 255, [200, 50, 100], atol=2)


def test_tiff_and_bmp_exact(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.tif", compression="tiff_lzw")
    Image.fromarray(a).save(tmp_path / "x.bmp")
    for name, fmt in (("x.tif", "TIFF"), ("x.bmp", "BMP")):
        img, meta = read_image(tmp_path / name)
        assert meta["format"] == fmt
        np.testing.assert_allclose(img, a / 255.0, atol=1e-7)


def test_tiff_16bit_colour(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = np.zeros((2, 2, 3), np.uint16)
    a[..., 0], a[..., 1], a[..., 2] = 65535, 32768, 1000
    tifffile.imwrite(tmp_path / "rgb16.tif", a, photometric="rgb")
    img, meta = read_image(tmp_path / "rgb16.tif")
    np.testing.assert_allclose(img[0, 0], [1.0, 32768 / 65535, 1000 / 65535], rtol=1e-6)
    assert meta["bit_depth"] == 16


def test_multipage_tiff_reads_first_page(tmp_path):
    pages = [Image.new("L", (4, 4), v) for v in (255, 0)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    img, meta = read_image(tmp_path / "m.tif")
    assert meta["n_frames"] == 2 and img.min() == 1.0


def test_non_ascii_file_name(tmp_path):
    d = tmp_path / "Øjenbilleder_眼底"
    d.mkdir()
    p = d / "patiënt_é_眼.png"
    Image.new("RGB", (3, 3), (0, 255, 0)).save(p)
    img, _ = read_image(p)
    assert img[1, 1].tolist() == [0.0, 1.0, 0.0]
    p16 = write_png(d / "ñ16.png", np.full((1, 1, 3), 65535, np.uint16))  # OpenCV path
    assert read_image(p16)[0].tolist() == [[[1.0, 1.0, 1.0]]]


# ----------------------------------------------------------------------------- refusals


def test_truncated_jpeg_refused(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for cut in (len(data) // 2, len(data) - 2):
        p = tmp_path / f"cut{cut}.jpg"
        p.write_bytes(data[:cut])
        with pytest.raises(ReadError) as ei:
            read_image(p)
        assert ei.value.stage == "decode" and "truncated" in ei.value.reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_16bit_png_refused(tmp_path):
    p = write_png(tmp_path / "t16.png", np.full((64, 64, 3), 1234, np.uint16))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError):
        read_image(p)


def test_empty_file_and_text_file_and_missing(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(ReadError, match="empty file") as ei:
        read_image(tmp_path / "e.jpg")
    assert ei.value.stage == "decode" and ei.value.path.endswith("e.jpg")
    (tmp_path / "notes.png").write_text("patient notes, not an image\n")
    with pytest.raises(ReadError, match="not a recognised image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(ReadError, match="file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ReadError, match="folder"):
        read_image(tmp_path)


def test_huge_declared_dimensions_refused_without_allocating(tmp_path):
    p = write_png(tmp_path / "bomb.png", None, width=100_000, height=100_000, bit_depth=8, colour_type=2)
    assert p.stat().st_size < 100
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ReadError, match="decompression bomb") as ei:
        read_image(p)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 200_000  # KiB: nothing like the 30 GB the header asks for
    assert "truncated" not in ei.value.reason


def test_max_pixels_checked_on_header_before_decoding(tmp_path):
    # 5000 x 5000 is under Pillow's own limit; no pixel data at all, so any decode attempt
    # would fail as "truncated". The refusal must come from the header check instead.
    p = write_png(tmp_path / "big.png", None, width=5000, height=5000, bit_depth=8, colour_type=2)
    with pytest.raises(ReadError) as ei:
        read_image(p, max_pixels=1_000_000)
    assert "5000 x 5000 = 25,000,000 pixels" in ei.value.reason and "max_pixels" in ei.value.reason
    ok = tmp_path / "ok.png"
    Image.new("RGB", (1000, 1000)).save(ok)
    assert read_image(ok, max_pixels=1_000_000)[0].shape == (1000, 1000, 3)  # equal to the limit: fine
    with pytest.raises(ReadError, match="max_pixels"):
        read_image(ok, max_pixels=999_999)


def test_dicom_refused_with_pointer(tmp_path):
    p = tmp_path / "scan.jpg"
    p.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00" * 10)
    assert sniff_format(p) == "DICOM"
    with pytest.raises(ReadError, match="read_dicom"):
        read_image(p)


def test_float_tiff_refused(tmp_path):
    Image.fromarray(np.ones((3, 3), np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(ReadError, match="unsupported pixel type"):
        read_image(tmp_path / "f.tif")


def test_unsupported_format_refused(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.gif")
    with pytest.raises(ReadError, match="unsupported image format 'GIF'"):
        read_image(tmp_path / "x.gif")


def test_bad_arguments_and_global_flag(tmp_path, monkeypatch):
    p = tmp_path / "x.png"
    Image.new("RGB", (2, 2)).save(p)
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ConfigError, match="max_pixels"):
            read_image(p, max_pixels=bad)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ConfigError, match="LOAD_TRUNCATED_IMAGES"):
        read_image(p)


def test_sniff_format_magic_bytes(tmp_path):
    cases = {
        "JPEG": b"\xff\xd8\xff\xe0" + bytes(20),
        "PNG": b"\x89PNG\r\n\x1a\n" + bytes(20),
        "TIFF": b"II*\x00" + bytes(20),
        "BMP": b"BM" + bytes(40),
    }
    for i, (fmt, data) in enumerate(cases.items()):
        (tmp_path / f"f{i}.bin").write_bytes(data)
        assert sniff_format(tmp_path / f"f{i}.bin") == fmt
    (tmp_path / "mm.tif").write_bytes(b"MM\x00*" + bytes(8))
    assert sniff_format(tmp_path / "mm.tif") == "TIFF"
    (tmp_path / "t.txt").write_text("hello")
    (tmp_path / "empty").write_bytes(b"")
    assert sniff_format(tmp_path / "t.txt") is None and sniff_format(tmp_path / "empty") is None


def test_corrupt_png_and_truncated_tiff_bmp_refused(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[60:80] = bytes(20)  # zero a stretch of the compressed stream
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ReadError, match="corrupt or unreadable PNG"):
        read_image(tmp_path / "bad.png")
    for fmt, suffix in (("TIFF", ".tif"), ("BMP", ".bmp")):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, fmt)
        p = tmp_path / f"cut{suffix}"
        p.write_bytes(buf.getvalue()[:500])
        with pytest.raises(ReadError, match=f"truncated {fmt} file"):
            read_image(p)


# ----------------------------------------------------------------------------- decoding at a reduced size


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean of each f x f block (the sizes divide exactly in these tests)."""
    h, w = a.shape[:2]
    return a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))


def _smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour picture with structure on every scale above a few pixels (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a = np.stack([0.5 + 0.4 * np.sin(6 * xx + 2 * k + 9 * yy * (k + 1)) for k in range(3)], axis=2)
    a += 0.05 * rng.standard_normal((h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1)
    return np.clip(a * 255, 0, 255).astype(np.uint8)


def test_jpeg_min_side_decodes_by_dct_scaling_close_to_block_means(tmp_path):
    a = _smooth_rgb(960, 1280)
    p = tmp_path / "camera.jpg"
    Image.fromarray(a).save(p, quality=95)
    full, fmeta = read_image(p)
    img, meta = read_image(p, min_side=200)  # 960 // 200 = 4: DCT scaling by 4
    assert meta["reduce"] == 4 and img.shape == (240, 320, 3) and img.dtype == np.float32
    assert (meta["width"], meta["height"]) == (320, 240)
    assert (meta["stored_width"], meta["stored_height"]) == (1280, 960) == (fmeta["width"], fmeta["height"])
    # the reduced decode is about the 4 x 4 means of the full decode (measured: 1.3 levels on
    # average, 9 at most, no bias) and of the pixels written (0.9 and 6)
    diff = (img - _block_mean(full, 4)) * 255
    assert np.abs(diff).mean() < 2.0 and np.abs(diff).max() < 16 and abs(diff.mean()) < 0.1
    assert (np.abs(img * 255 - _block_mean(a.astype(np.float64), 4))).mean() < 1.5
    # the largest power of two not above the factor (DCT scaling offers 1/2, 1/4, 1/8 only)
    assert read_image(p, min_side=170)[1]["reduce"] == 4  # factor 5
    assert read_image(p, min_side=100)[1]["reduce"] == 8  # factor 9
    assert read_image(p, min_side=480)[1]["reduce"] == 2
    for too_big in (481, 960, 5000):  # factor 1: decoded at full size
        img, meta = read_image(p, min_side=too_big)
        assert meta["reduce"] == 1 and img.shape == full.shape
        np.testing.assert_array_equal(img, full)


def test_jpeg_min_side_keeps_exif_orientation(tmp_path):
    p = tmp_path / "o6.jpg"
    big = np.zeros((320, 480, 3), np.uint8)
    big[:160, :160] = 255  # white block in the stored top-left corner
    Image.fromarray(big).save(p, quality=95, exif=exif_bytes(orientation=6))
    img, meta = read_image(p, min_side=80)  # 320 // 80 = 4
    assert meta["reduce"] == 4 and meta["exif_transposed"] is True
    assert img.shape == (120, 80, 3)  # stored 480 x 320 reduced to 120 x 80, then rotated
    assert (meta["stored_width"], meta["stored_height"]) == (320, 480)
    assert img[:40, 40:].mean() > 0.95 and img[:40, :40].mean() < 0.05 and img[40:].mean() < 0.05


def test_png_min_side_box_averages_8_bit_pixels_exactly(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    p = tmp_path / "x.png"
    Image.fromarray(a).save(p)
    img, meta = read_image(p, min_side=30)  # factor 3, any integer for a lossless format
    assert meta["reduce"] == 3 and img.shape == (30, 40, 3)
    # within one level: Pillow's reduce rounds its fixed-point mean down at times
    np.testing.assert_allclose(img * 255, _block_mean(a.astype(np.float64), 3), atol=1.0 + 1e-4)


def test_png_16bit_grey_and_colour_reduced_on_16_bits(tmp_path):
    rng = np.random.default_rng(2)
    g = rng.integers(0, 65536, (40, 60), dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(g).save(p)
    img, meta = read_image(p, min_side=10)  # factor 4
    assert meta["reduce"] == 4 and meta["bit_depth"] == 16 and img.shape == (10, 15, 3)
    expected = _block_mean(g.astype(np.float64), 4) / 65535
    np.testing.assert_allclose(img[:, :, 0], expected, atol=1.0 / 65535)  # not 1/255: 16 bits kept
    c = rng.integers(0, 65536, (40, 60, 3), dtype=np.uint16)
    p = write_png(tmp_path / "c16.png", c, bit_depth=16, colour_type=2)
    img, meta = read_image(p, min_side=20)  # factor 2
    assert meta["reduce"] == 2 and img.shape == (20, 30, 3)
    np.testing.assert_allclose(img, _block_mean(c.astype(np.float64), 2) / 65535, atol=1.0 / 65535)


def test_alpha_reduced_premultiplied_then_composited_on_black(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., :3] = [200, 100, 50]
    a[:, :2, 3] = 255  # left half opaque, right half transparent (its hidden colour must not show)
    a[:, 2:, :3] = 255
    p = tmp_path / "a.png"
    Image.fromarray(a, "RGBA").save(p)
    full, _ = read_image(p)
    img, meta = read_image(p, min_side=2)  # factor 2
    assert meta["reduce"] == 2
    np.testing.assert_allclose(img, _block_mean(full, 2), atol=1.5 / 255)
    np.testing.assert_allclose(img[0, 1], [0, 0, 0], atol=1e-6)
    c = np.zeros((4, 4, 4), np.uint16)
    c[..., :3] = [40000, 20000, 1000]
    c[:, :2, 3] = 65535
    c[:, 2:, :3] = 65535
    p16 = write_png(tmp_path / "a16.png", c, bit_depth=16, colour_type=6)
    full16, _ = read_image(p16)
    img16, meta16 = read_image(p16, min_side=2)
    assert meta16["reduce"] == 2
    np.testing.assert_allclose(img16, _block_mean(full16, 2), atol=2.0 / 65535)


def test_palette_bilevel_cmyk_reduced_like_their_rgb(tmp_path):
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for name, im in (("p.png", rgb.convert("P")), ("b.png", rgb.convert("1")), ("c.tif", rgb.convert("CMYK"))):
        im.save(tmp_path / name)
        full, _ = read_image(tmp_path / name)
        img, meta = read_image(tmp_path / name, min_side=16)
        assert meta["reduce"] == 4, name
        np.testing.assert_allclose(img, _block_mean(full, 4), atol=1.0 / 255 + 1e-6, err_msg=name)
    cmyk = Image.fromarray(_smooth_rgb(256, 256)).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", quality=95)
    full, _ = read_image(tmp_path / "c.jpg")
    img, meta = read_image(tmp_path / "c.jpg", min_side=64)
    assert meta["reduce"] == 4 and meta["mode"] == "CMYK" and img.shape == (64, 64, 3)
    assert (np.abs(img - _block_mean(full, 4)) * 255).mean() < 1.5


def test_min_side_validated_and_bombs_still_refused_before_decoding(tmp_path):
    ok = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(ok)
    for bad in (0, -3, True, 2.5, "64"):
        with pytest.raises(ConfigError, match="min_side"):
            read_image(ok, min_side=bad)
    p = write_png(tmp_path / "bomb.png", None, width=100_000, height=100_000, bit_depth=8, colour_type=2)
    with pytest.raises(ReadError, match="decompression bomb"):
        read_image(p, min_side=299)


def test_jpeg_that_cannot_be_dct_scaled_is_box_averaged_after_decoding(tmp_path, monkeypatch):
    a = _smooth_rgb(240, 360)
    p = tmp_path / "x.jpg"
    Image.fromarray(a).save(p, quality=95)
    full, _ = read_image(p)
    monkeypatch.setattr(images, "_draft", lambda im, factor: 1)  # as when Pillow's draft() declines
    img, meta = read_image(p, min_side=80)  # factor 3
    assert meta["reduce"] == 3 and img.shape == (80, 120, 3)
    np.testing.assert_allclose(img, _block_mean(full, 3), atol=1.0 / 255 + 1e-6)
