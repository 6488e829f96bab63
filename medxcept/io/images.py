"""Read photographs (JPEG, PNG, TIFF, BMP) into the decoded image contract.

A fundus photograph arrives in whatever form the camera software or an earlier
researcher left it: a progressive JPEG rotated by an EXIF tag, a 16-bit PNG, a
CMYK TIFF from a print workflow, a palette BMP, a PNG whose surround was made
transparent, a PNG that someone renamed ``.jpg``. :func:`read_image` turns all of
them into one thing: a float32 ``H x W x 3`` RGB array in ``[0, 1]`` plus a small
metadata dict, or a :class:`~medxcept.errors.ReadError` that says in plain words
why the file cannot be used (it becomes one row of ``exclusions.csv``).

Decisions
---------
* **Format by content.** The file's magic bytes decide, never its extension.
  DICOM files (128-byte preamble + ``DICM``) are refused here with a pointer to
  :func:`medxcept.io.dicom.read_dicom`.
* **Size checked before decoding.** Opening an image with Pillow reads only its
  header; the declared ``width * height`` is compared with ``max_pixels`` before
  a single pixel is decoded, so a 100000 x 100000 "decompression bomb" costs a few
  bytes of I/O, not 30 GB of memory. Pillow's own hard limit
  (``DecompressionBombError``, twice ``PIL.Image.MAX_IMAGE_PIXELS``) is turned into
  a :class:`ReadError` too; its softer warning is superseded by ``max_pixels``.
* **Truncated files are refused.** Pillow can pad a truncated JPEG with grey when
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is true; a half-grey fundus photograph
  would silently poison training. medxcept never sets that flag and refuses to
  run if another library has set it.
* **16-bit stays 16-bit.** 16-bit greyscale is scaled by 65535. Pillow reduces
  16-bit *colour* PNG/TIFF to 8 bits while decoding, so those files are decoded
  with OpenCV (installed with albumentations) and scaled by 65535 as well.
* **Alpha is composited on black.** The surround of a fundus photograph (outside
  the circular field of view) is black; tools that mask the surround often make
  it transparent instead. Compositing on black makes such a file look like the
  camera's original, so field-of-view detection and cropping treat the
  transparent area as background. (On white, the surround would become the
  brightest region of the image.)
* **Greyscale is replicated to three channels**: a photograph reader always
  returns RGB; radiograph-like images come through the DICOM reader.
* **Decoded at the size the caller needs** (``min_side``). A 12-megapixel camera
  photograph preprocessed to 299 px needs a few hundred pixels across its field of
  view, not 4288: a JPEG is then decoded with libjpeg's DCT scaling at 1/2, 1/4 or
  1/8 of its size (Pillow's ``draft``; 1/4 decodes 16 times fewer pixels and is
  several times faster than a full decode), and any other format is reduced by an
  integer factor, by box averaging on its integer (8- or 16-bit) pixels, before any
  float copy is made. The float image is never made at full resolution when the
  caller does not need it.
"""

from __future__ import annotations

import logging
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

from medxcept.errors import ConfigError, ReadError
from medxcept.io import log_name

__all__ = ["read_image", "sniff_format", "SUPPORTED_FORMATS"]

logger = logging.getLogger(__name__)

#: Formats :func:`read_image` accepts (as named by :func:`sniff_format` and Pillow).
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "TIFF", "BMP")

_STAGE = "decode"

# Errors Pillow (and the libraries below it) raise for a corrupt or truncated file.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
)

_EXIF_ORIENTATION = 0x0112
_EXIF_MAKE = 0x010F
_EXIF_MODEL = 0x0110

# Pillow names some JPEG variants differently; all are decoded as JPEG.
_FORMAT_ALIASES = {"MPO": "JPEG"}

_BIT_DEPTH_BY_MODE = {
    "1": 1,
    "L": 8,
    "LA": 8,
    "P": 8,
    "PA": 8,
    "RGB": 8,
    "RGBA": 8,
    "RGBX": 8,
    "CMYK": 8,
    "YCbCr": 8,
    "I;16": 16,
    "I;16L": 16,
    "I;16B": 16,
    "I;16N": 16,
}


def sniff_format(path: str | Path) -> str | None:
    """Name the image format of a file from its first bytes (never its extension).

    Parameters
    ----------
    path : str or Path
        The file to inspect. Only the first 132 bytes are read.

    Returns
    -------
    str or None
        ``"DICOM"`` (128-byte preamble followed by ``DICM``; checked first, because a
        dual-personality DICOM/TIFF file keeps a TIFF header in its preamble),
        ``"JPEG"``, ``"PNG"``, ``"TIFF"`` (classic or BigTIFF, either byte order),
        ``"BMP"``, or ``None`` when the bytes match none of these (including an
        empty file).

    Raises
    ------
    OSError
        When the file cannot be opened (missing, a directory, no permission).

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile(suffix=".jpg", delete=False) as f:
    ...     _ = f.write(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(24))
    >>> sniff_format(f.name)
    'PNG'
    >>> os.remove(f.name)
    """
    with open(path, "rb") as fh:
        head = fh.read(132)
    return _sniff_bytes(head)


def _sniff_bytes(head: bytes) -> str | None:
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head.startswith(b"BM") and len(head) >= 14:
        return "BMP"
    return None


def read_image(
    path: str | Path, *, max_pixels: int = 100_000_000, min_side: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a photograph into a float32 ``H x W x 3`` RGB array in ``[0, 1]``.

    Parameters
    ----------
    path : str or Path
        JPEG (baseline or progressive), PNG (8- or 16-bit), TIFF or BMP file. The
        format is recognised from the content, so a PNG named ``.jpg`` is read as PNG.
    max_pixels : int, default 100_000_000
        Refuse images whose header declares more than ``width * height`` pixels,
        before decoding any pixel (decompression-bomb guard). A 24-megapixel fundus
        camera stays well under the default. Pillow's own hard limit
        (``2 * PIL.Image.MAX_IMAGE_PIXELS``, about 179 megapixels by default) still
        applies on top of this one.
    min_side : int, optional
        Decode a reduced image whose shorter side is still at least ``min_side``
        pixels: the stored size divided by the largest integer factor that allows it
        (a JPEG by libjpeg's DCT scaling, so only 1, 2, 4 or 8; other formats by box
        averaging of the decoded integer pixels, any factor). ``None`` (default), or a
        ``min_side`` at least the stored shorter side, decodes at full size.

    Returns
    -------
    image : np.ndarray
        float32, shape ``(height, width, 3)``, RGB, values in ``[0, 1]``; EXIF
        orientation already applied (``height``/``width`` are those *after* rotation).
        8-bit data is divided by 255, 16-bit data by 65535, 1-bit data maps to 0/1.
        Greyscale is replicated to three channels, palette and CMYK images are
        converted to RGB, and alpha is composited on black.
    meta : dict
        ``format`` (by content: ``"JPEG"``, ``"PNG"``, ``"TIFF"``, ``"BMP"``), ``mode``
        (Pillow mode of the stored data, e.g. ``"RGBA"``, ``"I;16"``, ``"CMYK"``),
        ``width``, ``height`` (of the returned array), ``bit_depth`` (bits per sample
        as stored: 1, 8 or 16), ``exif_transposed`` (True when an EXIF orientation
        other than 1 was applied), ``source`` (EXIF ``Make`` and ``Model`` joined
        and stripped, ``""`` when absent) and ``n_frames`` (pages in the file; only
        the first is read), ``stored_width``, ``stored_height`` (the size of the stored
        image after EXIF orientation, whatever ``min_side`` did) and ``reduce`` (the
        factor applied: 1 at full size; the returned image is
        ``ceil(stored / reduce)`` pixels on each side).

    Raises
    ------
    ReadError
        ``stage="decode"``, with a plain-words reason: file missing or empty, not an
        image, a DICOM file, an unsupported format or pixel type, declared size over
        ``max_pixels``, truncated or corrupt data.
    ConfigError
        ``max_pixels`` is not a positive integer, or ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``
        was set to True by other code (truncated images would be silently padded).

    Notes
    -----
    ICC colour profiles are not applied: CMYK is converted with Pillow's simple
    formula (cyan ``(255, 0, 0, 0)`` becomes RGB ``(0, 255, 255)``). Colour-managed
    print files may therefore look slightly different from a viewer's rendering.

    Examples
    --------
    >>> import tempfile, os
    >>> from PIL import Image
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "eye.png")
    ...     Image.new("RGB", (4, 2), (255, 0, 0)).save(p)
    ...     img, meta = read_image(p)
    >>> img.shape, img.dtype.name, img[0, 0].tolist(), meta["format"]
    ((2, 4, 3), 'float32', [1.0, 0.0, 0.0], 'PNG')
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ConfigError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if min_side is not None and (isinstance(min_side, bool) or not isinstance(min_side, int) or min_side <= 0):
        raise ConfigError(f"min_side must be a positive integer or None, got {min_side!r}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ConfigError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by other code); with it Pillow pads "
            "truncated photographs with grey instead of failing. Set it back to False before "
            "reading images with medxcept."
        )
    path = Path(path)
    head = _read_head(path)
    kind = _sniff_bytes(head)
    if kind == "DICOM":
        raise ReadError(
            path,
            "this is a DICOM file, not a photograph; read it with medxcept.io.dicom.read_dicom "
            "(set the cohort's modality/format to DICOM)",
            _STAGE,
        )

    with warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS; the decision is ours (max_pixels), below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ReadError(
                path,
                f"image dimensions are implausibly large and were refused before decoding "
                f"(possible decompression bomb): {exc}",
                _STAGE,
            ) from exc
        except Image.UnidentifiedImageError as exc:
            raise ReadError(
                path,
                "not a recognised image: the content is not JPEG, PNG, TIFF or BMP "
                f"(first bytes {head[:8]!r}); check that the file is a photograph and not "
                "a damaged or renamed file",
                _STAGE,
            ) from exc
        except _DECODE_ERRORS as exc:
            raise ReadError(path, f"cannot read the image header: {_describe(exc)}", _STAGE) from exc

    with im:
        fmt = _FORMAT_ALIASES.get(im.format or "", im.format or "")
        if fmt not in SUPPORTED_FORMATS:
            raise ReadError(
                path,
                f"unsupported image format {fmt or 'unknown'!r}; medxcept reads "
                f"{', '.join(SUPPORTED_FORMATS)}: convert the file to PNG",
                _STAGE,
            )
        width, height = im.size
        _check_size(path, width, height, max_pixels)
        n_frames = int(getattr(im, "n_frames", 1) or 1)
        if n_frames > 1:
            logger.warning("%s holds %d frames/pages; only the first is read", log_name(path), n_frames)
        try:
            exif = im.getexif()
            orientation = _orientation(exif)
            source = _source(exif)
            mode = im.mode
            bit_depth = _bit_depth(im, path, head)
            factor = 1 if min_side is None else max(1, min(width, height) // min_side)
            if _is_deep_colour(head, fmt, im):
                array = _decode_deep_colour(path, im, orientation, factor)
                transposed = orientation in range(2, 9)
            else:
                drafted = fmt == "JPEG" and factor > 1 and (scale := _draft(im, factor)) > 1
                if drafted:
                    factor = scale  # else (a JPEG libjpeg cannot scale): box-averaged after decoding
                array, transposed = _decode_pillow(path, im, factor, drafted=drafted)
        except Image.DecompressionBombError as exc:
            raise ReadError(path, f"image refused as a possible decompression bomb: {exc}", _STAGE) from exc
        except _DECODE_ERRORS as exc:
            raise ReadError(path, _decode_reason(exc, fmt), _STAGE) from exc

    meta: dict[str, Any] = {
        "format": fmt,
        "mode": mode,
        "width": int(array.shape[1]),
        "height": int(array.shape[0]),
        "bit_depth": bit_depth,
        "exif_transposed": bool(transposed),
        "source": source,
        "n_frames": n_frames,
        "stored_width": int(height if transposed and orientation >= 5 else width),
        "stored_height": int(width if transposed and orientation >= 5 else height),
        "reduce": int(factor),
    }
    if path.suffix and _extension_disagrees(path.suffix, fmt):
        logger.info("%s: extension %r but content is %s; read as %s", log_name(path), path.suffix, fmt, fmt)
    return array, meta


# --------------------------------------------------------------------------- helpers


def _read_head(path: Path) -> bytes:
    """First bytes of the file, with plain-words errors for missing/empty files."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except FileNotFoundError as exc:
        raise ReadError(path, "file not found; check the path or the label table", _STAGE) from exc
    except IsADirectoryError as exc:
        raise ReadError(path, "this is a folder, not an image file", _STAGE) from exc
    except PermissionError as exc:
        raise ReadError(path, "permission denied: the file cannot be opened for reading", _STAGE) from exc
    except OSError as exc:
        raise ReadError(path, f"the file cannot be opened: {_describe(exc)}", _STAGE) from exc
    if not head:
        raise ReadError(path, "empty file (0 bytes): the copy or download probably failed", _STAGE)
    return head


def _check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ReadError(path, f"the header declares an empty image ({width} x {height} pixels)", _STAGE)
    n = width * height
    if n > max_pixels:
        raise ReadError(
            path,
            f"the header declares {width} x {height} = {n:,} pixels, more than the limit of "
            f"{max_pixels:,} (max_pixels); refused before decoding as a possible decompression "
            "bomb. If the image is genuine, downscale it or raise max_pixels",
            _STAGE,
        )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _decode_reason(exc: BaseException, fmt: str) -> str:
    text = str(exc).lower()
    if "truncat" in text or isinstance(exc, EOFError):
        return (
            f"truncated {fmt} file: the pixel data ends early ({_describe(exc)}); the copy or "
            "download is probably incomplete, copy the file again"
        )
    return f"corrupt or unreadable {fmt} pixel data ({_describe(exc)})"


def _orientation(exif: Image.Exif) -> int:
    value = exif.get(_EXIF_ORIENTATION, 1)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 1


def _clean_tag(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1", "replace")
    if not isinstance(value, str):
        return ""
    return value.replace("\x00", "").strip()


def _source(exif: Image.Exif) -> str:
    """EXIF Make + Model, stripped; the make is not repeated when the model starts with it."""
    make = _clean_tag(exif.get(_EXIF_MAKE))
    model = _clean_tag(exif.get(_EXIF_MODEL))
    if make and model.casefold().startswith(make.casefold()):
        return model
    return " ".join(part for part in (make, model) if part)


def _bit_depth(im: Image.Image, path: Path, head: bytes) -> int:
    mode = im.mode
    if mode in ("I", "F"):
        kind = "32-bit float" if mode == "F" else "32-bit or signed integer"
        raise ReadError(
            path,
            f"unsupported pixel type ({kind} samples, Pillow mode {mode!r}): the intensity range "
            "is not defined; export the image as 8- or 16-bit unsigned PNG/TIFF",
            _STAGE,
        )
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        if isinstance(bits, tuple) and bits:
            return int(bits[0])
        if isinstance(bits, int):
            return bits
    ihdr = _png_ihdr(head)
    if ihdr is not None:
        # Pillow's mode hides the PNG's stored depth (16-bit colour opens as "RGB").
        return int(ihdr[0])
    return _BIT_DEPTH_BY_MODE.get(mode, 8)


def _png_ihdr(head: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None."""
    if len(head) >= 26 and head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return head[24], head[25]
    return None


def _is_deep_colour(head: bytes, fmt: str, im: Image.Image) -> bool:
    """True for 16-bit colour data, which Pillow would reduce to 8 bits."""
    if fmt == "PNG":
        ihdr = _png_ihdr(head)
        # colour types 2 (RGB), 4 (grey + alpha), 6 (RGBA); grey 16-bit is fine in Pillow
        return ihdr is not None and ihdr[0] == 16 and ihdr[1] in (2, 4, 6)
    if fmt == "TIFF" and im.mode in ("RGB", "RGBA", "RGBX", "LA"):
        bits = getattr(im, "tag_v2", {}).get(258)
        return isinstance(bits, tuple) and bool(bits) and int(bits[0]) == 16
    return False


def _draft(im: Image.Image, factor: int) -> int:
    """Ask libjpeg for DCT scaling by the largest of 8, 4, 2 not above ``factor``; return the one applied.

    Must be called before the pixels are loaded. The scaled image is ``ceil(stored / s)``
    pixels on each side, and its pixel ``i`` covers stored pixels ``[i * s, (i + 1) * s)``.
    """
    scale = next(s for s in (8, 4, 2, 1) if s <= factor)
    if scale == 1:
        return 1
    width, height = im.size
    res = im.draft(None, (width // scale, height // scale))
    if res is None:  # a JPEG Pillow cannot scale (several tiles): the caller box-averages after decoding
        return 1
    _, box = res
    return max(1, int(round(width / box[2])))


def _decode_pillow(
    path: Path, im: Image.Image, factor: int = 1, *, drafted: bool = False
) -> tuple[np.ndarray, bool]:
    """Decode through Pillow: EXIF transpose, then convert the mode to float RGB.

    ``factor``: reduce by it on the integer pixels after decoding, unless ``drafted`` (a
    JPEG whose DCT scaling by ``factor`` was set up: ``im.size`` is already the reduced size).
    """
    im.load()  # raises OSError on truncated data (LOAD_TRUNCATED_IMAGES is False)
    transposed = _orientation(im.getexif()) in range(2, 9)
    oriented = ImageOps.exif_transpose(im)
    return _to_rgb_float(path, oriented, 1 if drafted else factor), transposed


def _reduce_u8(im: Image.Image, factor: int) -> Image.Image:
    """Box-average an 8-bit Pillow image by ``factor`` (premultiplied for LA/RGBA)."""
    return im.reduce(factor) if factor > 1 else im


def _reduce_array(a: np.ndarray, factor: int) -> np.ndarray:
    """Area-average an integer H x W [x C] array to ``ceil(H / factor) x ceil(W / factor)``."""
    if factor <= 1:
        return a
    h, w = a.shape[:2]
    out = cv2.resize(np.ascontiguousarray(a), (-(-w // factor), -(-h // factor)), interpolation=cv2.INTER_AREA)
    return out.reshape(out.shape[:2] + a.shape[2:])


def _to_rgb_float(path: Path, im: Image.Image, factor: int = 1) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16"):
        raw = np.asarray(im)
        grey = _reduce_array(raw.astype(raw.dtype.newbyteorder("=")), factor).astype(np.float32)
        return _grey_to_rgb(grey / np.float32(65535.0))
    if mode == "1":
        grey = np.asarray(_reduce_u8(im.convert("L"), factor), dtype=np.float32) / np.float32(255.0)
        return _grey_to_rgb(grey)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        rgba = np.asarray(_reduce_u8(im.convert("RGBA"), factor), dtype=np.float32) / np.float32(255.0)
        return _composite_on_black(rgba)
    if mode == "L":
        return _grey_to_rgb(np.asarray(_reduce_u8(im, factor), dtype=np.float32) / np.float32(255.0))
    try:
        rgb = im.convert("RGB")
    except ValueError as exc:
        raise ReadError(
            path,
            f"unsupported colour mode {mode!r}: cannot convert to RGB; export the image as RGB PNG",
            _STAGE,
        ) from exc
    return np.asarray(_reduce_u8(rgb, factor), dtype=np.float32) / np.float32(255.0)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2), dtype=np.float32)


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """Alpha-composite on black: ``rgb * alpha`` (the fundus surround is black)."""
    out = rgba[:, :, :3] * rgba[:, :, 3:4]
    return np.ascontiguousarray(out, dtype=np.float32)


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation applied with numpy, matching ``ImageOps.exif_transpose``."""
    if orientation == 2:
        out = array[:, ::-1]
    elif orientation == 3:
        out = array[::-1, ::-1]
    elif orientation == 4:
        out = array[::-1]
    elif orientation == 5:
        out = array.swapaxes(0, 1)
    elif orientation == 6:
        out = np.rot90(array, k=-1)
    elif orientation == 7:
        out = array[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        out = np.rot90(array, k=1)
    else:
        out = array
    return np.ascontiguousarray(out)


def _decode_deep_colour(path: Path, im: Image.Image, orientation: int, factor: int = 1) -> np.ndarray:
    """16-bit colour PNG/TIFF via OpenCV (Pillow would drop the low 8 bits); reduced on uint16."""
    data = np.fromfile(path, dtype=np.uint8)  # imdecode: works with non-ASCII paths everywhere
    # IMREAD_UNCHANGED keeps 16 bits and alpha and does not apply EXIF orientation (we do).
    raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ReadError(
            path, "corrupt or truncated 16-bit colour image: the decoder returned no pixels", _STAGE
        )
    scale = np.float32(65535.0 if raw.dtype == np.uint16 else 255.0)
    if factor > 1 and raw.ndim == 3 and raw.shape[2] in (2, 4):
        # premultiply before averaging, as Pillow's reduce does for RGBA: a transparent
        # neighbour must not bleed its hidden colour into the average
        alpha = raw[:, :, -1:].astype(np.float32) / scale
        pre = np.concatenate([raw[:, :, :-1].astype(np.float32) * alpha, raw[:, :, -1:].astype(np.float32)], axis=2)
        pre = _reduce_array(pre, factor)
        a = np.maximum(pre[:, :, -1:] / scale, np.float32(1e-12))
        raw = np.concatenate([pre[:, :, :-1] / a, pre[:, :, -1:]], axis=2)
    else:
        raw = _reduce_array(raw, factor)
    pixels = raw.astype(np.float32) / scale
    if pixels.ndim == 2:
        rgb = _grey_to_rgb(pixels)
    elif pixels.shape[2] == 2:  # grey + alpha
        grey_alpha = pixels[:, :, [0, 0, 0, 1]]
        rgb = _composite_on_black(grey_alpha)
    elif pixels.shape[2] == 4:  # BGRA
        rgb = _composite_on_black(pixels[:, :, [2, 1, 0, 3]])
    else:  # BGR
        rgb = np.ascontiguousarray(pixels[:, :, 2::-1])
    return _apply_orientation(rgb, orientation).astype(np.float32, copy=False)


_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"},
    "PNG": {".png"},
    "TIFF": {".tif", ".tiff"},
    "BMP": {".bmp", ".dib"},
}


def _extension_disagrees(suffix: str, fmt: str) -> bool:
    return suffix.lower() not in _EXTENSIONS.get(fmt, set())
