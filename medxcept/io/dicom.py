"""Read DICOM images as the pixels a clinician would see on a viewer.

A DICOM file stores *stored values*; what a radiologist looks at is the result of
the display pipeline that DICOM defines (PS3.3 C.11 and PS3.4 N.2). For grayscale
images :func:`read_dicom` applies, in that order:

1. the **modality LUT**: *Rescale Slope/Intercept* (e.g. to Hounsfield units) or a
   *Modality LUT Sequence*;
2. the **VOI LUT**: *Window Center/Width* (the first window unless
   ``window_index`` says otherwise; LINEAR, LINEAR_EXACT or SIGMOID) or a
   *VOI LUT Sequence*. When the file has neither, the window is the minimum and
   maximum of the values actually present in the frame (ignoring *Pixel Padding
   Value*), so that a 12-bit image stored in 16 bits still fills [0, 1];
3. **MONOCHROME1** is inverted so that a higher output is always brighter;
4. the result is scaled to ``[0, 1]`` and returned as ``float32``.

Steps 1 and 2 are pydicom's :func:`~pydicom.pixels.apply_modality_lut` and
:func:`~pydicom.pixels.apply_voi_lut`, except a VOI LUT with 8-bit entries, which this
module applies itself (pydicom 3 indexes such a LUT with 8-bit integers, so an input
above 255, or a LUT of more than 256 entries, wraps to a wrong entry); the output range of the window is taken
from pydicom itself (by windowing the two extreme inputs), so both always agree.
Enhanced multi-frame objects carry rescale and window per frame in functional
groups; they are honoured frame by frame.

Colour images (RGB, YBR_FULL, YBR_FULL_422, YBR_ICT/RCT, PALETTE COLOR) are
returned as RGB. pydicom 3 decodes JPEG without colour conversion and converts
YBR to RGB exactly once afterwards (``raw=False``); this module reads the
photometric interpretation that pydicom reports for its *output* and never
converts again. *Planar Configuration* is handled by pydicom's reshape.

Pixel data longer than the header implies (trailing padding after the last frame) is
accepted; only a shortfall is an error. An encapsulated JPEG, JPEG-LS or JPEG 2000 frame
must end with its end-of-image marker (``FF D9``): decoders fill a frame cut short with
grey without an error, so a frame without it is refused.

Failures are per file: :class:`~medxcept.errors.ReadError` with a specific
reason. Problems with the header (empty file, not DICOM, not an image) use stage
``"ingest"``; problems with the pixels (truncated, inconsistent size, codec
failure) use stage ``"decode"``. A compressed transfer syntax whose decoder plugin
is not installed is not a property of the file but of the installation: it raises
:class:`~medxcept.errors.MissingDecoderError` naming the pip packages, so that the
run stops once instead of excluding every file.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.pixels.processing import apply_windowing

from medxcept.errors import MedxceptError, MissingDecoderError, ReadError
from medxcept.io import log_name

# the writer lives in its own module (the reader never writes); re-exported for existing callers (demo.py)
from medxcept.io.dicom_writer import OPHTHALMIC_PHOTOGRAPHY_8BIT, write_ophthalmic_photo

__all__ = [
    "OPHTHALMIC_PHOTOGRAPHY_8BIT",
    "check_decoders",
    "read_dicom",
    "read_dicom_header",
    "require_decoder",
    "write_ophthalmic_photo",
]

logger = logging.getLogger(__name__)


_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010

# Compressed transfer syntaxes and the pip packages that decode them here.
_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
_DECODER_PACKAGES: dict[str, str] = {
    dcm_uid.JPEGBaseline8Bit: _LIBJPEG + " (or pillow)",
    dcm_uid.JPEGExtended12Bit: _LIBJPEG,
    dcm_uid.JPEGLossless: _LIBJPEG,
    dcm_uid.JPEGLosslessSV1: _LIBJPEG,
    dcm_uid.JPEGLSLossless: _LIBJPEG,
    dcm_uid.JPEGLSNearLossless: _LIBJPEG,
    dcm_uid.JPEG2000Lossless: _OPENJPEG,
    dcm_uid.JPEG2000: _OPENJPEG,
    dcm_uid.HTJ2KLossless: _OPENJPEG,
    dcm_uid.HTJ2KLosslessRPCL: _OPENJPEG,
    dcm_uid.HTJ2K: _OPENJPEG,
    dcm_uid.RLELossless: "pylibjpeg pylibjpeg-rle",
}

# Elements of which at least one must be present for a force-read file to count
# as DICOM: random bytes parse as one or two nonsense elements.
_IDENTITY_TAGS = (0x00080016, 0x00080018, 0x00080060, 0x0020000D, 0x00280010, _PIXEL_DATA)

# Elements a per-frame view needs (see _frame_view).
_PIXEL_MODULE_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
)


# --------------------------------------------------------------------------- decoders


def check_decoders() -> dict[str, bool]:
    """Which compressed transfer syntaxes can be decoded with what is installed.

    Returns
    -------
    dict of str to bool
        Keyed by the transfer syntax keyword (``"JPEGBaseline8Bit"``,
        ``"JPEG2000Lossless"``, ``"JPEGLSLossless"``, ``"RLELossless"``, ...);
        ``True`` when at least one pydicom decoding plugin is available.
        Uncompressed and deflated syntaxes need no plugin and are not listed.

    Examples
    --------
    >>> check_decoders()["RLELossless"]  # pydicom decodes RLE by itself
    True
    """
    return {dcm_uid.UID(ts).keyword: get_decoder(ts).is_available for ts in _DECODER_PACKAGES}


def require_decoder(transfer_syntax: str) -> None:
    """Raise :class:`MissingDecoderError` if ``transfer_syntax`` cannot be decoded here.

    Parameters
    ----------
    transfer_syntax : str
        A transfer syntax UID. Uncompressed, deflated and unknown UIDs pass
        (an unknown UID is a property of the file, reported by :func:`read_dicom`).

    Raises
    ------
    MissingDecoderError
        The message names the transfer syntax and the pip packages to install.
        This is an installation problem: every file of this syntax would fail
        the same way, so the caller should stop the run instead of excluding files.
    """
    ts = dcm_uid.UID(str(transfer_syntax))
    if ts not in _DECODER_PACKAGES or get_decoder(ts).is_available:
        return
    missing = "; ".join(get_decoder(ts).missing_dependencies) or "no plugin found"
    raise MissingDecoderError(
        f"cannot decode DICOM pixel data in '{ts.name}' ({ts}): no decoder plugin is "
        f"installed ({missing}). Install one with: pip install {_DECODER_PACKAGES[ts]}"
    )


# --------------------------------------------------------------------------- reading


def _read_dataset(path: Path) -> Dataset:
    """Parse ``path`` into a Dataset, or raise ReadError(stage="ingest")."""
    if not path.exists():
        raise ReadError(path, "file not found", stage="ingest")
    if not path.is_file():
        raise ReadError(path, "not a regular file", stage="ingest")
    size = path.stat().st_size
    if size == 0:
        raise ReadError(path, "empty file (0 bytes)", stage="ingest")
    # defer_size: large values (PixelData) are skipped, not loaded, until first
    # accessed; unlike stop_before_pixels the element and its declared length stay
    # visible, so headers are checked (size guard, truncation) before any pixel I/O.
    kwargs: dict[str, Any] = {"defer_size": "4 KB"}
    forced = False
    try:
        try:
            ds = pydicom.dcmread(path, **kwargs)
        except InvalidDicomError:
            # No 128-byte preamble + "DICM": legal for old files written without a
            # file meta header. force=True parses it, but also parses random bytes,
            # hence the identity check below.
            forced = True
            ds = pydicom.dcmread(path, force=True, **kwargs)
        # Values are converted lazily; convert them now so that a corrupt element
        # fails here, inside the per-file error handling.
        file_meta = getattr(ds, "file_meta", None)
        for container in (file_meta, ds) if file_meta is not None else (ds,):
            for tag in list(container.keys()):
                if tag != _PIXEL_DATA:
                    container[tag]
    except MedxceptError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is a per-file problem
        logger.debug("pydicom failed on %s", log_name(path), exc_info=True)
        raise ReadError(
            path, f"unreadable DICOM header: {type(exc).__name__}: {exc}", stage="ingest"
        ) from exc
    if forced and not any(tag in ds for tag in _IDENTITY_TAGS):
        raise ReadError(
            path,
            f"not a DICOM file: no 'DICM' marker and no recognisable DICOM elements "
            f"in {size} bytes",
            stage="ingest",
        )
    return ds


def _transfer_syntax(path: Path, ds: Dataset) -> dcm_uid.UID:
    """The transfer syntax, inferred from the encoding when there is no file meta."""
    file_meta = getattr(ds, "file_meta", None)
    ts = str(file_meta.get("TransferSyntaxUID", "") or "") if file_meta is not None else ""
    ts = ts.strip("\0 ")
    if ts:
        return dcm_uid.UID(ts)
    pixel_elem = ds.get_item(_PIXEL_DATA, keep_deferred=True) if _PIXEL_DATA in ds else None
    if pixel_elem is not None and getattr(pixel_elem, "length", 0) == _UNDEFINED_LENGTH:
        raise ReadError(
            path,
            "compressed (encapsulated) pixel data but no Transfer Syntax UID in the file "
            "meta header: the codec cannot be determined",
            stage="decode",
        )
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        raise ReadError(path, "no Transfer Syntax UID and unknown encoding", stage="ingest")
    if implicit:
        return dcm_uid.ImplicitVRLittleEndian
    return dcm_uid.ExplicitVRLittleEndian if little else dcm_uid.ExplicitVRBigEndian


def _missing_pixels_reason(path: Path, ds: Dataset) -> str | None:
    """Why a dataset that should hold pixels has none: a cut-off file.

    When the file ends inside encapsulated (undefined-length) Pixel Data, pydicom
    warns and returns a dataset without it -- or without any element at all, since
    it drops everything read so far. The raw bytes still show the Pixel Data tag.
    """
    file_meta = getattr(ds, "file_meta", None) or {}
    sop = str(ds.get("SOPClassUID", "") or file_meta.get("MediaStorageSOPClassUID", "") or "")
    if len(ds) and "Rows" not in ds and "Image Storage" not in dcm_uid.UID(sop).name:
        return None  # an SR, a presentation state...: not a damaged image
    data = path.read_bytes()
    for tag_bytes in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"):
        position = data.find(tag_bytes)
        if position >= 0:
            return (
                f"truncated pixel data: the Pixel Data element at byte {position} runs "
                f"past the end of the file ({len(data)} bytes); the file is cut short "
                f"or corrupt"
            )
    if len(ds) == 0:
        return (
            "unreadable DICOM dataset: no data element could be read after the file meta "
            "header (truncated or corrupt file)"
        )
    return None


def _not_an_image_reason(ds: Dataset) -> str | None:
    """A reason if the object is not an image (SR, DICOMDIR, presentation state...)."""
    file_meta = getattr(ds, "file_meta", None) or {}
    sop = str(ds.get("SOPClassUID", "") or file_meta.get("MediaStorageSOPClassUID", "") or "")
    name = dcm_uid.UID(sop).name if sop else "unknown SOP class"
    if sop == dcm_uid.MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        return "not an image: DICOMDIR (Media Storage Directory Storage)"
    if _PIXEL_DATA in ds:
        return None
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return f"not supported: {name} has float pixel data (parametric map)"
    words = name.split()
    if "SR" in words or "Structured" in words:
        kind = "structured report"
    elif "Presentation" in words:
        kind = "presentation state"
    else:
        kind = "no Pixel Data element"
    return f"not an image: {name} ({kind})"


def _check_is_image(path: Path, ds: Dataset) -> None:
    """Raise ReadError unless ``ds`` holds pixel data."""
    if _PIXEL_DATA not in ds:
        reason = _missing_pixels_reason(path, ds)
        if reason:
            raise ReadError(path, reason, stage="decode" if "pixel data" in reason else "ingest")
    reason = _not_an_image_reason(ds)
    if reason:
        raise ReadError(path, reason, stage="ingest")


# --------------------------------------------------------------------------- metadata


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip().strip("\0").strip()


def _int(ds: Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _laterality(ds: Dataset) -> str:
    """ImageLaterality, then Laterality, then FrameLaterality: L, R or NA."""
    candidates = [_text(ds, "ImageLaterality"), _text(ds, "Laterality")]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        anatomy = shared[0].get("FrameAnatomySequence")
        if anatomy:
            candidates.append(_text(anatomy[0], "FrameLaterality"))
    for value in candidates:
        if value:
            return value.upper() if value.upper() in ("L", "R") else "NA"
    return "NA"


def _date(ds: Dataset) -> str:
    """AcquisitionDate, AcquisitionDateTime, then StudyDate as YYYY-MM-DD, or ""."""
    for keyword in ("AcquisitionDate", "AcquisitionDateTime", "StudyDate"):
        digits = re.sub(r"\D", "", _text(ds, keyword))[:8]
        if len(digits) == 8:
            try:
                return _dt.datetime.strptime(digits, "%Y%m%d").date().isoformat()
            except ValueError:
                continue
    return ""


_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def _age(value: str) -> float | None:
    """DICOM Age String ("045Y", "006M", "003W", "010D") in years, or None."""
    match = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD]?)\s*", value.upper())
    if not match:
        return None
    return int(match.group(1)) * _AGE_UNITS[match.group(2) or "Y"]


def _metadata(ds: Dataset, ts: str) -> dict[str, Any]:
    sex = _text(ds, "PatientSex").upper()
    return {
        "patient_id": _text(ds, "PatientID"),
        "study_id": _text(ds, "StudyInstanceUID"),
        "series_uid": _text(ds, "SeriesInstanceUID"),
        "sop_uid": _text(ds, "SOPInstanceUID"),
        "sop_class": _text(ds, "SOPClassUID"),
        "modality": _text(ds, "Modality"),
        "laterality": _laterality(ds),
        "source": f"{_text(ds, 'Manufacturer')} {_text(ds, 'ManufacturerModelName')}".strip(),
        "acquisition_date": _date(ds),
        "burned_in_annotation": _text(ds, "BurnedInAnnotation").upper(),
        "sex": sex if sex in ("M", "F", "O") else "",
        "age": _age(_text(ds, "PatientAge")),
        "photometric": _text(ds, "PhotometricInterpretation"),
        "transfer_syntax": str(ts),
        "n_frames": max(1, _int(ds, "NumberOfFrames", 1)),
        "rows": _int(ds, "Rows", 0),
        "columns": _int(ds, "Columns", 0),
        "samples_per_pixel": _int(ds, "SamplesPerPixel", 1),
        "bits_stored": _int(ds, "BitsStored", _int(ds, "BitsAllocated", 0)),
    }


def read_dicom_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the metadata of a DICOM image without decoding its pixels.

    Parameters
    ----------
    path : str or path-like
        A DICOM file, with or without the 128-byte preamble and file meta header.

    Returns
    -------
    dict
        ``patient_id`` (raw: never log it), ``study_id`` (StudyInstanceUID),
        ``series_uid``, ``sop_uid``, ``sop_class``, ``modality``, ``laterality``
        (``L``/``R``/``NA``), ``source`` ("Manufacturer Model"), ``acquisition_date``
        (``YYYY-MM-DD`` or ""), ``burned_in_annotation`` (``YES``/``NO``/"": text such as
        the name burned into the pixels), ``sex`` (``M``/``F``/``O`` or ""), ``age`` (years or
        None), ``photometric`` (as stored), ``transfer_syntax`` (UID), ``n_frames``,
        ``rows``, ``columns``, ``samples_per_pixel``, ``bits_stored``.

    Raises
    ------
    ReadError
        With stage ``"ingest"``: empty or garbage file, unreadable header, or an
        object that is not an image (``"not an image: Comprehensive SR Storage
        (structured report)"``, DICOMDIR, presentation state, no Pixel Data).
    """
    path = Path(path)
    ds = _read_dataset(path)
    _check_is_image(path, ds)
    return _metadata(ds, _transfer_syntax(path, ds))


def _expected_native_bytes(ds: Dataset, n_frames: int) -> tuple[int, str]:
    """Byte length the header implies for uncompressed pixel data, and the sum shown."""
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    spp, bits = _int(ds, "SamplesPerPixel", 1), _int(ds, "BitsAllocated", 0)
    photometric = _text(ds, "PhotometricInterpretation")
    if bits == 1:
        return math.ceil(rows * cols * n_frames * spp / 8), (
            f"Rows {rows} x Columns {cols} x {n_frames} frame(s) x {spp} sample(s) / 8"
        )
    if photometric == "YBR_FULL_422":
        # two luminance and one pair of chroma samples per two pixels
        per_pixel = 2 * (bits // 8)
        return rows * cols * n_frames * per_pixel, (
            f"Rows {rows} x Columns {cols} x {n_frames} frame(s) x {per_pixel} "
            f"byte(s) (YBR_FULL_422)"
        )
    nbytes = bits // 8
    return rows * cols * n_frames * spp * nbytes, (
        f"Rows {rows} x Columns {cols} x {n_frames} frame(s) x {spp} sample(s) x "
        f"{nbytes} byte(s)"
    )


_REQUIRED_PIXEL_ATTRIBUTES = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
)


def _check_pixel_module(path: Path, ds: Dataset) -> None:
    """The Image Pixel attributes decoding relies on are present and sane."""
    for keyword in _REQUIRED_PIXEL_ATTRIBUTES:
        if not _text(ds, keyword):
            raise ReadError(path, f"missing required Image Pixel attribute {keyword}")
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    if rows <= 0 or cols <= 0:
        raise ReadError(path, f"invalid image size: Rows {rows} x Columns {cols}")
    spp = _int(ds, "SamplesPerPixel", 0)
    if spp not in (1, 3):
        raise ReadError(path, f"unsupported Samples per Pixel {spp} (expected 1 or 3)")
    allocated, stored = _int(ds, "BitsAllocated", 0), _int(ds, "BitsStored", 0)
    if allocated not in (1, 8, 16, 32):
        raise ReadError(path, f"unsupported Bits Allocated {allocated} (expected 1, 8, 16 or 32)")
    if not 1 <= stored <= allocated:
        raise ReadError(path, f"invalid Bits Stored {stored} for Bits Allocated {allocated}")
    if _int(ds, "PixelRepresentation", -1) not in (0, 1):
        raise ReadError(path, f"invalid Pixel Representation {_text(ds, 'PixelRepresentation')!r}")


def _check_pixel_length(path: Path, ds: Dataset, ts: dcm_uid.UID, n_frames: int) -> None:
    """Truncation and Rows/Columns consistency, before any decoding."""
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    declared = getattr(raw, "length", None)  # None once pydicom converted the element
    try:
        # loads a deferred value (only now, after the size guard); a cut-off file
        # gives fewer bytes than declared, without an error from pydicom
        value = ds.PixelData
    except Exception as exc:  # noqa: BLE001 - corrupt element: a per-file problem
        raise ReadError(path, f"pixel data could not be read: {type(exc).__name__}: {exc}") from exc
    actual = len(value) if value is not None else 0
    encapsulated = declared == _UNDEFINED_LENGTH
    if declared is not None and not encapsulated and actual < declared:
        raise ReadError(
            path,
            f"truncated pixel data: the Pixel Data element declares {declared} bytes "
            f"but the file ends after {actual}",
        )
    if ts.is_compressed:
        if not encapsulated and declared is not None:
            raise ReadError(
                path,
                f"transfer syntax '{ts.name}' is compressed but the pixel data is not "
                f"encapsulated ({actual} bytes of raw data)",
            )
        return
    if encapsulated:
        raise ReadError(
            path, f"transfer syntax '{ts.name}' is uncompressed but the pixel data is encapsulated"
        )
    expected, formula = _expected_native_bytes(ds, n_frames)
    if actual < expected:
        raise ReadError(
            path,
            f"pixel data length does not match the header: {formula} = {expected} bytes "
            f"expected, found {actual} (shorter; wrong Rows/Columns/Number of Frames or "
            f"a truncated file)",
        )
    if actual > expected + 1:  # one pad byte to an even length is the norm
        logger.info("%s: %d byte(s) of trailing padding after the last frame ignored", log_name(path),
                    actual - expected)


#: Encapsulated syntaxes whose frames end with the end-of-image / end-of-codestream marker FF D9.
_EOI_SYNTAXES = frozenset(
    {
        dcm_uid.JPEGBaseline8Bit, dcm_uid.JPEGExtended12Bit, dcm_uid.JPEGLossless,
        dcm_uid.JPEGLosslessSV1, dcm_uid.JPEGLSLossless, dcm_uid.JPEGLSNearLossless,
        dcm_uid.JPEG2000Lossless, dcm_uid.JPEG2000,
    }
)


def _check_frame_ends(path: Path, ds: Dataset, ts: dcm_uid.UID, n_frames: int, frame: int | None) -> None:
    """Every encapsulated JPEG-family frame to be decoded ends with FF D9 (pad bytes aside).

    A frame cut short (a transfer that stopped, a broken export) decodes without an error in
    Pillow and some codecs, the missing part filled with grey; the marker is the proof that
    the frame is whole.
    """
    if ts not in _EOI_SYNTAXES:
        return
    from pydicom.encaps import generate_frames

    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=n_frames))
    except Exception as exc:  # noqa: BLE001 - malformed item structure: a per-file problem
        raise ReadError(path, f"encapsulated pixel data could not be split into frames: {exc}") from exc
    if len(frames) < n_frames:
        raise ReadError(path, f"truncated pixel data: {len(frames)} encapsulated frame(s) for "
                              f"Number of Frames {n_frames}")
    wanted = range(n_frames) if frame is None else [frame]
    for index in wanted:
        # Items are padded to an even length, with 00 or (some encoders) FF, sometimes more than one
        # byte. FF D9 cannot occur inside entropy-coded JPEG data (FF is stuffed) nor inside a
        # JPEG 2000 codestream's packets, so finding it among the last bytes is proof enough.
        data = bytes(frames[index]).rstrip(b"\x00")
        if b"\xff\xd9" not in data[-16:]:
            raise ReadError(
                path,
                f"truncated pixel data: {ts.name} frame {index} has no end-of-image marker (FF D9); "
                f"the frame was cut short ({len(data)} bytes)",
            )


def _frame_view(ds: Dataset, index: int) -> Dataset:
    """The dataset seen by frame ``index``: functional groups override the top level.

    Enhanced multi-frame objects keep Rescale and Window in the Shared and Per-frame
    Functional Groups; pydicom's LUT functions only read the top level.
    """
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups = [shared[0] if shared else None]
    groups.append(per_frame[index] if per_frame and index < len(per_frame) else None)
    if not any(groups):
        return ds
    view = Dataset()
    view.file_meta = ds.file_meta
    for keyword in _PIXEL_MODULE_KEYWORDS:
        if keyword in ds:
            view[keyword] = ds[keyword]
    for group in groups:
        if group is None:
            continue
        for seq_keyword, keywords in (
            ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept")),
            ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
        ):
            items = group.get(seq_keyword)
            if items:
                for keyword in keywords:
                    if keyword in items[0]:
                        view[keyword] = items[0][keyword]
    return view


def _n_windows(view: Dataset) -> tuple[str, int]:
    """The VOI transform the view defines and how many alternatives it offers."""
    voi_seq = view.get("VOILUTSequence")
    if voi_seq and voi_seq[0].get("LUTDescriptor") and voi_seq[0].get("LUTData") is not None:
        return "lut", len(voi_seq)
    if view.get("WindowCenter") is not None and view.get("WindowWidth") is not None:
        center, width = view["WindowCenter"], view["WindowWidth"]
        return "window", min(center.VM, width.VM)
    return "none", 0


def _lut_output_max(item: Dataset, data: np.ndarray) -> float:
    """Top of a LUT's output range: 2**bits - 1, unless the data fit fewer bits.

    Many files declare 16 bits per entry for 12-bit LUT data; displays (and DCMTK)
    then use the bit depth of the largest entry.
    """
    bits = int(item.LUTDescriptor[2])
    largest = int(np.max(data)) if data.size else 0
    return float(2 ** min(bits, max(largest.bit_length(), 1)) - 1)


def _apply_lut8(values: np.ndarray, item: Dataset, view: Dataset) -> np.ndarray:
    """Apply a VOI LUT with 8-bit entries (PS3.3 C.11.2.1.1), indexing with 64-bit integers.

    pydicom 3's ``apply_voi_lut`` computes the index in the LUT's own dtype (uint8 here), so
    ``value - first mapped`` above 255 wraps: with 4096 entries, input 300 would read entry 44.
    Inputs below the first mapped value take the first entry, above the last the last one.
    """
    n_entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
    if first >= 2**15 and _int(view, "PixelRepresentation", 0) == 1:
        first -= 2**16  # US-encoded descriptor of a signed image (PS3.3 C.11.2.1.1)
    element = item["LUTData"]
    if element.VR == "OW" or isinstance(element.value, bytes):
        little = getattr(getattr(view, "file_meta", None), "TransferSyntaxUID", None)
        order = ">" if little is not None and not dcm_uid.UID(little).is_little_endian else "<"
        data = np.frombuffer(bytes(element.value), dtype=f"{order}u2")
    else:
        data = np.asarray(element.value if isinstance(element.value, (list, tuple)) else [element.value])
    data = np.asarray(data, dtype=np.int64)[:n_entries]
    if data.size == 0:
        raise ValueError("the VOI LUT Sequence item has no LUT Data")
    index = np.clip(np.asarray(values, dtype=np.int64) - first, 0, data.size - 1)
    return data[index]


def _window_range(view: Dataset, window_index: int) -> tuple[float, float]:
    """Output range of pydicom's windowing: the image of -inf and +inf."""
    probe = np.array([-1e30, 1e30])
    with np.errstate(over="ignore"):
        low, high = apply_windowing(probe, view, index=window_index)
    return float(low), float(high)


def _padding_mask(view: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Pixels equal to Pixel Padding Value (or within its range): not tissue."""
    pad = view.get("PixelPaddingValue")
    if pad is None or isinstance(pad, bytes):
        return None
    limit = view.get("PixelPaddingRangeLimit")
    if limit is None or isinstance(limit, bytes):
        return stored == int(pad)
    low, high = sorted((int(pad), int(limit)))
    return (stored >= low) & (stored <= high)


def _gray_to_display(
    path: Path, stored: np.ndarray, view: Dataset, window_index: int, photometric: str
) -> tuple[np.ndarray, str]:
    """Modality LUT -> VOI LUT -> MONOCHROME1 inversion -> [0, 1] for one frame."""
    values = apply_modality_lut(stored, view)
    kind, n_windows = _n_windows(view)
    if kind != "none" and not 0 <= window_index < n_windows:
        raise ReadError(
            path,
            f"window_index={window_index} requested but the file defines {n_windows} "
            f"{'VOI LUT(s)' if kind == 'lut' else 'window(s)'}",
        )
    if kind == "lut":
        if np.issubdtype(values.dtype, np.floating):
            values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
        item = view.VOILUTSequence[window_index]
        if int(item.LUTDescriptor[2]) == 8:
            out = _apply_lut8(values, item, view)
        else:
            out = apply_voi_lut(values, view, index=window_index, prefer_lut=True)
        low, high = 0.0, _lut_output_max(item, np.asarray(out))
        voi = f"VOI LUT {window_index}"
    elif kind == "window":
        out = apply_voi_lut(values, view, index=window_index, prefer_lut=False)
        low, high = _window_range(view, window_index)
        center = view["WindowCenter"].value
        width = view["WindowWidth"].value
        if view["WindowCenter"].VM > 1:
            center, width = center[window_index], width[window_index]
        function = _text(view, "VOILUTFunction") or "LINEAR"
        voi = f"window C={float(center):g} W={float(width):g} {function}"
    else:
        out = values
        mask = _padding_mask(view, stored)
        present = out[~mask] if mask is not None and not mask.all() else out
        low, high = (float(np.min(present)), float(np.max(present))) if present.size else (0, 0)
        voi = "min-max of the stored range present"
    out = np.asarray(out, dtype=np.float64)
    if high != low:
        # low is the output for the darkest input; with a negative Rescale Slope
        # pydicom's range is reversed (low > high) and this still maps it to 0
        display = np.clip((out - low) / (high - low), 0.0, 1.0)
    else:
        display = np.zeros_like(out)
    if photometric == "MONOCHROME1":
        display = 1.0 - display
    return display, voi


def _color_to_display(path: Path, arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """Decoded colour samples (already RGB) to [0, 1]."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor") or [0, 0, 16]
        bits = int(descriptor[2]) if int(descriptor[2]) in (8, 16) else 16
        return np.asarray(rgb, dtype=np.float64) / (2**bits - 1)
    if photometric != "RGB":
        raise ReadError(path, f"unsupported colour photometric interpretation '{photometric}'")
    bits = _int(ds, "BitsStored", 8)
    top = float(2**bits - 1)
    return np.clip(np.asarray(arr, dtype=np.float64) / top, 0.0, 1.0)


def _decoder(path: Path, ts: dcm_uid.UID) -> Any:
    """pydicom's decoder for ``ts``; unknown syntaxes are per-file errors."""
    if not ts.is_valid or ts.name == str(ts):
        raise ReadError(path, f"unknown transfer syntax UID '{ts}'")
    require_decoder(ts)
    try:
        return get_decoder(ts)
    except NotImplementedError as exc:
        raise ReadError(
            path, f"transfer syntax '{ts.name}' ({ts}) has no image decoder (video or referenced data)"
        ) from exc


def read_dicom(
    path: str | os.PathLike[str],
    *,
    frame: int | None = None,
    window_index: int = 0,
    max_pixels: int = 100_000_000,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a DICOM image to display values in [0, 1].

    Parameters
    ----------
    path : str or path-like
        A DICOM image file (any transfer syntax pydicom and the installed plugins
        decode; with or without preamble and file meta header).
    frame : int, optional
        Return only this frame (0-based). Default: all frames.
    window_index : int, default 0
        Which of several Window Center/Width pairs (or VOI LUTs) to apply.
    max_pixels : int, default 100_000_000
        Refuse, before decoding, images whose Rows x Columns x frames-to-return
        exceeds this (a guard against absurd or malicious headers).

    Returns
    -------
    image : numpy.ndarray
        float32, shape ``(F, H, W, C)``, values in [0, 1]; ``F`` is the number of
        frames returned, ``C`` is 1 (grayscale) or 3 (RGB). Higher is brighter.
    meta : dict
        The :func:`read_dicom_header` keys plus ``voi`` (the display transform
        applied to the first returned frame, e.g. ``"window C=40 W=400 LINEAR"``)
        and ``frames`` (the frame indices returned).

    Raises
    ------
    ReadError
        Stage ``"ingest"`` for header problems (see :func:`read_dicom_header`);
        stage ``"decode"`` for truncated or inconsistent pixel data, unknown
        transfer syntax, codec failure, a frame or window that does not exist.
    MissingDecoderError
        The transfer syntax needs a plugin that is not installed (stop the run).
    """
    path = Path(path)
    ds = _read_dataset(path)
    _check_is_image(path, ds)
    ts = _transfer_syntax(path, ds)
    meta = _metadata(ds, ts)
    rows, cols, n_frames = meta["rows"], meta["columns"], meta["n_frames"]
    _check_pixel_module(path, ds)
    if frame is not None and not 0 <= frame < n_frames:
        raise ReadError(path, f"frame {frame} requested but the file has {n_frames} frame(s)")
    n_out = n_frames if frame is None else 1
    if rows * cols * n_out > max_pixels:
        raise ReadError(
            path,
            f"image too large: Rows {rows} x Columns {cols} x {n_out} frame(s) = "
            f"{rows * cols * n_out} pixels exceeds max_pixels={max_pixels}",
        )
    decoder = _decoder(path, ts)
    _check_pixel_length(path, ds, ts, n_frames)
    _check_frame_ends(path, ds, ts, n_frames, frame)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts

    try:
        arr, props = decoder.as_array(ds, index=frame, raw=False)
    except (MedxceptError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        # Codecs raise many types on corrupt data, and Rust ones (pylibjpeg-rle)
        # raise pyo3's PanicException, which derives from BaseException.
        logger.debug("decoding failed for %s", log_name(path), exc_info=True)
        raise ReadError(path, f"{ts.name} decoding failed: {type(exc).__name__}: {exc}") from exc

    spp = int(props.get("samples_per_pixel", meta["samples_per_pixel"]))
    photometric = str(props.get("photometric_interpretation", meta["photometric"]))
    if frame is not None or n_frames == 1:
        arr = arr[np.newaxis]
    if spp == 1:
        arr = arr[..., np.newaxis]
    indices = [frame] if frame is not None else list(range(n_frames))

    if photometric in ("MONOCHROME1", "MONOCHROME2") and spp == 1:
        frames, vois = [], []
        try:
            for position, index in enumerate(indices):
                display, voi = _gray_to_display(
                    path, arr[position, ..., 0], _frame_view(ds, index), window_index, photometric
                )
                frames.append(display.astype(np.float32))  # float64 per frame only
                vois.append(voi)
        except MedxceptError:
            raise
        except (ValueError, IndexError, TypeError, AttributeError, NotImplementedError) as exc:
            raise ReadError(path, f"invalid modality/VOI LUT attributes: {exc}") from exc
        image = np.stack(frames)[..., np.newaxis]
        meta["voi"] = vois[0]
    elif spp == 3 or photometric == "PALETTE COLOR":
        source = arr[..., 0] if photometric == "PALETTE COLOR" else arr
        try:
            image = _color_to_display(path, source, ds, photometric)
        except MedxceptError:
            raise
        except (ValueError, IndexError, TypeError, AttributeError, KeyError) as exc:
            raise ReadError(path, f"invalid palette colour lookup table: {exc}") from exc
        meta["voi"] = "none (colour)"
    else:
        raise ReadError(
            path,
            f"unsupported pixel layout: photometric '{photometric}' with "
            f"{spp} sample(s) per pixel",
        )
    meta["frames"] = indices
    return image.astype(np.float32), meta
