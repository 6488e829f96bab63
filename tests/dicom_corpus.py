"""Builders of small DICOM test files with known pixels (importable by any test).

Every builder writes one file with pydicom into a directory the caller owns
(``tmp_path``) and returns its path. Pixels are chosen by the caller or are simple
planted patterns, so tests can compare the decoded image with a hand computation.

Encoders used:

* native (implicit / explicit / deflated VR little endian): pydicom's writer;
* RLE Lossless, JPEG 2000 (lossless and lossy): ``Dataset.compress`` with pydicom's
  RLE encoder and pylibjpeg-openjpeg (:func:`encoder_unavailable` says why not);
* JPEG baseline: Pillow, wrapped with :func:`pydicom.encaps.encapsulate`;
* JPEG lossless (process 14, selection value 1): :func:`encode_jpeg_lossless`, a
  minimal encoder written here because no installed package encodes it;
* JPEG-LS: no encoder is installed (pyjpegls is not a dependency), so the JPEG-LS
  case uses pydicom's bundled ``MR_small_jpeg_ls_lossless.dcm`` next to its
  uncompressed twin ``MR_small.dcm`` when the installed wheel ships them
  (:func:`bundled_test_file`, never a download).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence

from medxcept.io.dicom import write_ophthalmic_photo

__all__ = [
    "SECONDARY_CAPTURE",
    "CT_IMAGE",
    "bundled_test_file",
    "encode_jpeg_lossless",
    "encoder_unavailable",
    "image_dataset",
    "save",
    "write_gray",
    "write_rgb",
    "write_jpeg_baseline",
    "write_jpeg_lossless",
    "write_compressed",
    "write_sr",
    "write_presentation_state",
    "write_dicomdir",
    "write_op_dicom",
    "ybr_full_from_rgb",
]

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
GRAYSCALE_PRESENTATION_STATE = "1.2.840.10008.5.1.4.1.1.11.1"

#: The real writer lives in medxcept (the demo cohort generator uses it at run time).
write_op_dicom = write_ophthalmic_photo

_TRANSFER = {
    "implicit": dcm_uid.ImplicitVRLittleEndian,
    "explicit": dcm_uid.ExplicitVRLittleEndian,
    "deflated": dcm_uid.DeflatedExplicitVRLittleEndian,
    "big_endian": dcm_uid.ExplicitVRBigEndian,
}


def image_dataset(
    *,
    rows: int,
    columns: int,
    photometric: str = "MONOCHROME2",
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    samples: int = 1,
    frames: int = 1,
    sop_class: str = SECONDARY_CAPTURE,
    **attrs: Any,
) -> Dataset:
    """A dataset with the Image Pixel module and identifiers, no PixelData yet."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = dcm_uid.generate_uid()
    ds.StudyInstanceUID = dcm_uid.generate_uid()
    ds.SeriesInstanceUID = dcm_uid.generate_uid()
    ds.PatientID = "PAT-001"
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, path: Path, transfer: str = "explicit", *, file_meta: bool = True) -> Path:
    """Write ``ds``; ``transfer`` is a key of ``_TRANSFER`` or a transfer syntax UID.

    ``file_meta=False`` writes a bare dataset: no preamble, no "DICM", no group 2
    (implicit VR little endian), as some old archives hold.
    """
    path = Path(path)
    if not file_meta:
        if hasattr(ds, "file_meta"):
            del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True)
        return path
    uid = _TRANSFER.get(transfer, transfer)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = uid
    if dcm_uid.UID(uid).name == str(uid):  # unknown UID: pydicom needs the encoding
        ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    else:
        ds.save_as(path, enforce_file_format=True)
    return path


def _pixel_bytes(arr: np.ndarray, bits_allocated: int, signed: bool) -> bytes:
    dtype = {8: "u1", 16: "u2", 32: "u4"}[bits_allocated]
    dtype = ("i" if signed else "u") + dtype[1:]
    return np.ascontiguousarray(arr).astype("<" + dtype).tobytes()


def write_gray(
    path: Path,
    pixels: np.ndarray,
    *,
    transfer: str = "explicit",
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    file_meta: bool = True,
    raw_bytes: bytes | None = None,
    **attrs: Any,
) -> Path:
    """Grayscale image(s): ``pixels`` is (H, W) or (F, H, W) stored values.

    ``raw_bytes`` replaces the pixel bytes (to plant garbage in unused high bits or
    to make the data inconsistent with Rows/Columns).
    """
    pixels = np.asarray(pixels)
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds = image_dataset(
        rows=pixels.shape[-2],
        columns=pixels.shape[-1],
        photometric=photometric,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=signed,
        frames=frames,
        **attrs,
    )
    ds.PixelData = raw_bytes if raw_bytes is not None else _pixel_bytes(pixels, bits_allocated, signed)
    ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"
    return save(ds, path, transfer, file_meta=file_meta)


def write_rgb(
    path: Path,
    samples: np.ndarray,
    *,
    photometric: str = "RGB",
    planar: int = 0,
    transfer: str = "explicit",
    **attrs: Any,
) -> Path:
    """8-bit colour image(s): ``samples`` is (H, W, 3) or (F, H, W, 3), in the
    colour space named by ``photometric``, stored with Planar Configuration ``planar``."""
    samples = np.asarray(samples, dtype=np.uint8)
    frames = samples.shape[0] if samples.ndim == 4 else 1
    ds = image_dataset(
        rows=samples.shape[-3],
        columns=samples.shape[-2],
        photometric=photometric,
        bits_allocated=8,
        samples=3,
        frames=frames,
        **attrs,
    )
    ds.PlanarConfiguration = planar
    data = samples
    if planar == 1:  # colour-by-plane: RRR..GGG..BBB.. per frame
        data = np.moveaxis(samples, -1, -3)
    ds.PixelData = np.ascontiguousarray(data).tobytes()
    ds["PixelData"].VR = "OB"
    return save(ds, path, transfer)


def ybr_full_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """RGB -> YBR_FULL with the DICOM formula (PS3.3 C.7.6.3.1.2), uint8."""
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.2990 * r + 0.5870 * g + 0.1140 * b
    cb = -0.1687 * r - 0.3313 * g + 0.5000 * b + 128
    cr = 0.5000 * r - 0.4187 * g - 0.0813 * b + 128
    return np.clip(np.rint(np.stack([y, cb, cr], axis=-1)), 0, 255).astype(np.uint8)


def encoder_unavailable(transfer_syntax: str) -> str | None:
    """Why pydicom cannot encode ``transfer_syntax`` here (None when it can)."""
    try:
        encoder = get_encoder(transfer_syntax)
    except NotImplementedError as exc:
        return str(exc)
    if encoder.is_available:
        return None
    missing = "; ".join(encoder.missing_dependencies) or "no plugin"
    return f"no encoder for {dcm_uid.UID(transfer_syntax).name}: {missing}"


def write_compressed(
    path: Path,
    pixels: np.ndarray,
    transfer_syntax: str,
    *,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    attrs: dict[str, Any] | None = None,
    **encode_kwargs: Any,
) -> Path:
    """Grayscale (H, W) / (F, H, W) or RGB (H, W, 3) via ``Dataset.compress``.

    ``attrs`` are extra elements (e.g. a window); ``encode_kwargs`` go to the encoder
    (``j2k_cr=[20]`` for lossy JPEG 2000)."""
    pixels = np.asarray(pixels)
    is_rgb = pixels.ndim == 3 and pixels.shape[-1] == 3 and photometric == "RGB"
    frames = pixels.shape[0] if pixels.ndim == (4 if is_rgb else 3) else 1
    height, width = (pixels.shape[-3], pixels.shape[-2]) if is_rgb else pixels.shape[-2:]
    ds = image_dataset(
        rows=height,
        columns=width,
        photometric=photometric,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=signed,
        samples=3 if is_rgb else 1,
        frames=frames,
        **(attrs or {}),
    )
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = dcm_uid.ExplicitVRLittleEndian
    stored = np.ascontiguousarray(pixels).astype(
        f"{'i' if signed else 'u'}{bits_allocated // 8}"
    )
    ds.PixelData = stored.tobytes()
    ds.compress(transfer_syntax, stored, **encode_kwargs)
    return save(ds, path, transfer_syntax)


def write_jpeg_baseline(path: Path, image: np.ndarray, *, quality: int = 95) -> Path:
    """JPEG baseline via Pillow: RGB (H, W, 3) -> YBR_FULL_422, or gray (H, W) -> MONOCHROME2."""
    from PIL import Image

    image = np.asarray(image, dtype=np.uint8)
    buffer = io.BytesIO()
    if image.ndim == 3:
        Image.fromarray(image, mode="RGB").save(buffer, "JPEG", quality=quality, subsampling=1)
        ds = image_dataset(
            rows=image.shape[0],
            columns=image.shape[1],
            photometric="YBR_FULL_422",
            bits_allocated=8,
            samples=3,
        )
    else:
        Image.fromarray(image, mode="L").save(buffer, "JPEG", quality=quality)
        ds = image_dataset(rows=image.shape[0], columns=image.shape[1], bits_allocated=8)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    return save(ds, path, dcm_uid.JPEGBaseline8Bit)


# ----------------------------------------------------------------- JPEG lossless


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value: int, nbits: int) -> None:
        for shift in range(nbits - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> shift) & 1)
            self.n += 1
            if self.n == 8:
                self._emit()

    def _emit(self) -> None:
        self.out.append(self.acc)
        if self.acc == 0xFF:  # byte stuffing (ITU T.81 F.1.2.3)
            self.out.append(0x00)
        self.acc = 0
        self.n = 0

    def flush(self) -> bytes:
        while self.n:  # pad with 1-bits
            self.put(1, 1)
        return bytes(self.out)


def encode_jpeg_lossless(pixels: np.ndarray, precision: int) -> bytes:
    """Encode a grayscale (H, W) unsigned image as JPEG lossless, process 14, SV1.

    ITU T.81 Annex H: predictor 1 (left neighbour; the first row uses the left
    neighbour, the first column the pixel above, the first pixel 2**(P-1)), one
    Huffman table in which the 17 difference categories all get a 5-bit code.
    """
    pixels = np.asarray(pixels, dtype=np.int64)
    if pixels.min() < 0 or pixels.max() >= 2**precision:
        raise ValueError(f"pixels must be in [0, 2**{precision})")
    rows, cols = pixels.shape
    header = bytearray(b"\xff\xd8")  # SOI
    header += b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([precision])  # SOF3
    header += rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5
    header += b"\xff\xc4" + (3 + 16 + 17).to_bytes(2, "big") + bytes([0x00])  # DHT
    header += bytes(counts) + bytes(range(17))
    header += b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, 1, 0, 0])  # SOS, Ss=1

    writer = _BitWriter()
    for r in range(rows):
        for c in range(cols):
            if r == 0 and c == 0:
                predicted = 1 << (precision - 1)
            elif c == 0:
                predicted = int(pixels[r - 1, 0])
            else:
                predicted = int(pixels[r, c - 1])
            diff = (int(pixels[r, c]) - predicted) % 65536
            if diff >= 32768:
                diff -= 65536  # modulo 2**16 difference, H.1.2.1
            category = 16 if diff == -32768 else abs(diff).bit_length()
            writer.put(category, 5)  # canonical code of symbol k is k on 5 bits
            if 0 < category < 16:
                writer.put(diff if diff > 0 else diff - 1 + (1 << category), category)
    return bytes(header) + writer.flush() + b"\xff\xd9"


def write_jpeg_lossless(path: Path, pixels: np.ndarray, *, precision: int = 12) -> Path:
    """Grayscale (H, W) as JPEG Lossless SV1 (1.2.840.10008.1.2.4.70), 16 allocated."""
    pixels = np.asarray(pixels)
    ds = image_dataset(rows=pixels.shape[0], columns=pixels.shape[1], bits_stored=precision)
    ds.PixelData = encapsulate([encode_jpeg_lossless(pixels, precision)])
    ds["PixelData"].VR = "OB"
    return save(ds, path, dcm_uid.JPEGLosslessSV1)


# ----------------------------------------------------------------- bundled files


def bundled_test_file(name: str) -> Path | None:
    """A file shipped inside the installed pydicom wheel, or None (never downloads)."""
    import pydicom.data

    candidate = Path(pydicom.data.__file__).parent / "test_files" / name
    return candidate if candidate.is_file() else None


# ----------------------------------------------------------------- non-images


def write_sr(path: Path) -> Path:
    """A Comprehensive SR document: a DICOM object with no pixels."""
    ds = Dataset()
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = dcm_uid.generate_uid()
    ds.StudyInstanceUID = dcm_uid.generate_uid()
    ds.SeriesInstanceUID = dcm_uid.generate_uid()
    ds.PatientID = "PAT-001"
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = (
        "126000",
        "DCM",
        "Imaging Measurement Report",
    )
    ds.ConceptNameCodeSequence = Sequence([concept])
    ds.ContinuityOfContent = "SEPARATE"
    return save(ds, path)


def write_presentation_state(path: Path) -> Path:
    """A Grayscale Softcopy Presentation State (display settings, no pixels)."""
    ds = Dataset()
    ds.SOPClassUID = GRAYSCALE_PRESENTATION_STATE
    ds.SOPInstanceUID = dcm_uid.generate_uid()
    ds.StudyInstanceUID = dcm_uid.generate_uid()
    ds.Modality = "PR"
    ds.PresentationLUTShape = "IDENTITY"
    return save(ds, path)


def write_dicomdir(path: Path) -> Path:
    """A minimal DICOMDIR (Media Storage Directory Storage) with an empty record list."""
    ds = Dataset()
    ds.SOPClassUID = dcm_uid.MediaStorageDirectoryStorage
    ds.SOPInstanceUID = dcm_uid.generate_uid()
    ds.FileSetID = "TEST"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = Sequence([])
    return save(ds, path)


def frames_functional_groups(
    windows: Iterable[tuple[float, float]], rescale: tuple[float, float] | None = None
) -> dict[str, Sequence]:
    """Shared/per-frame functional groups: one window per frame, a shared rescale."""
    shared = Dataset()
    if rescale is not None:
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = rescale
        transform.RescaleType = "US"
        shared.PixelValueTransformationSequence = Sequence([transform])
    per_frame = []
    for center, width in windows:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        item = Dataset()
        item.FrameVOILUTSequence = Sequence([voi])
        per_frame.append(item)
    return {
        "SharedFunctionalGroupsSequence": Sequence([shared]),
        "PerFrameFunctionalGroupsSequence": Sequence(per_frame),
    }
