"""A test corpus written in code: DICOM files with known pixels, and a mixed DICOM + photo cohort.

Two layers.

**Builders** write one small DICOM file each, with pydicom, into a directory the caller owns,
and return its path. Pixels are chosen by the caller or are simple planted patterns, so a test
can compare the decoded image with a hand computation. Encoders used:

* native (implicit / explicit / deflated VR little endian): pydicom's writer;
* RLE Lossless, JPEG 2000 (lossless and lossy): ``Dataset.compress`` with pydicom's
  RLE encoder and pylibjpeg-openjpeg (:func:`encoder_unavailable` says why not);
* JPEG baseline: Pillow, wrapped with :func:`pydicom.encaps.encapsulate`;
* JPEG lossless (process 14, selection value 1): :func:`encode_jpeg_lossless`, a
  minimal encoder written here because no installed package encodes it;
* JPEG-LS and 12-bit JPEG extended: no encoder is installed (pyjpegls is not a
  dependency, Pillow writes 8-bit JPEG only), so those cases use pydicom's bundled
  ``MR_small_jpeg_ls_lossless.dcm`` (next to its uncompressed twin ``MR_small.dcm``) and
  ``JPGExtended.dcm`` when the installed wheel ships them (:func:`bundled_test_file`,
  never a download).

**The mixed corpus**, :func:`write_mixed_corpus`, writes a whole cohort folder that mixes
every case of issue #4 (transfer syntaxes, pixel semantics, non-image DICOM objects,
photograph variants, broken files and broken label rows) with two label tables and a
cohort file, and returns the table of cases with the outcome each should have. It is the
proof that ingestion does what it says: ``tests/test_ingest_mixed.py`` ingests it and checks
every case, and a researcher can see the same thing with::

    python -m medxcept.testing.corpus OUT_DIR            # writes the corpus, prints the cohort file
    python -m medxcept.testing.corpus OUT_DIR --ingest   # ... and prints case | expected | actual

then ``python -m pipelines.retina check --cohort OUT_DIR/cohort.yaml`` for the check report.
The images are small synthetic textures and fundus-like discs (the *abnormal* class carries a
visible bright blob or yellow spots), so a split and an audit are possible; the cohort is not
meant to train a useful model.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import struct
import sys
import unicodedata
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence

from medxcept.io.dicom_writer import write_ophthalmic_photo

__all__ = [
    "SECONDARY_CAPTURE",
    "CT_IMAGE",
    "bundled_test_file",
    "encode_jpeg_lossless",
    "encoder_unavailable",
    "frames_functional_groups",
    "image_dataset",
    "save",
    "write_gray",
    "write_rgb",
    "write_jpeg_baseline",
    "write_jpeg_lossless",
    "write_voi_lut8",
    "write_jpeg_cut_frame",
    "write_trailing_padding",
    "write_compressed",
    "write_sr",
    "write_presentation_state",
    "write_dicomdir",
    "write_op_dicom",
    "ybr_full_from_rgb",
    "CASE_COLUMNS",
    "write_mixed_corpus",
    "load_expected_pixels",
    "case_outcomes",
    "outcomes_markdown",
    "main",
]

logger = logging.getLogger(__name__)

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


def write_jpeg_baseline(path: Path, image: np.ndarray, *, quality: int = 95, **attrs: Any) -> Path:
    """JPEG baseline via Pillow: RGB (H, W, 3) -> YBR_FULL_422, or gray (H, W) -> MONOCHROME2.

    ``attrs`` are extra elements (``PatientID``, ``ImageLaterality``...)."""
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
            **attrs,
        )
    else:
        Image.fromarray(image, mode="L").save(buffer, "JPEG", quality=quality)
        ds = image_dataset(rows=image.shape[0], columns=image.shape[1], bits_allocated=8, **attrs)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    return save(ds, path, dcm_uid.JPEGBaseline8Bit)


def write_voi_lut8(path: Path, stored: np.ndarray, *, first_mapped: int = 0, **attrs: Any) -> tuple[Path, np.ndarray]:
    """12-bit gray pixels with a VOI LUT Sequence of 4096 *8-bit* entries (``LUTDescriptor [4096, first, 8]``).

    The LUT is ``entry k = k // 16`` (a linear ramp to 255). pydicom 3's ``apply_voi_lut`` indexes an
    8-bit LUT with 8-bit integers, so its output wraps every 256 inputs. Returns the path and the
    display values a viewer shows, ``(1, H, W, 1)`` float32.
    """
    lut = (np.arange(4096) // 16).astype(np.int64)
    item = Dataset()
    item.LUTDescriptor = [4096, first_mapped, 8]
    item.add_new(0x00283006, "US", [int(v) for v in lut])  # LUTData
    path = write_gray(path, stored, bits_stored=12, VOILUTSequence=Sequence([item]), **attrs)
    index = np.clip(np.asarray(stored, dtype=np.int64) - first_mapped, 0, 4095)
    return path, (lut[index] / 255.0).astype(np.float32)[np.newaxis, ..., np.newaxis]


def write_jpeg_cut_frame(path: Path, image: np.ndarray, *, keep: float = 0.6, **attrs: Any) -> Path:
    """A JPEG baseline DICOM whose single frame is cut short *inside a well-formed file*.

    The item holds only the first ``keep`` of the JPEG stream (no end-of-image marker), with a
    correct item length and the sequence delimiter after it: the file parses, and Pillow decodes
    the frame without an error, filling the missing part with grey.
    """
    full = write_jpeg_baseline(path, image, **attrs)
    ds = pydicom.dcmread(full)
    frame = next(iter(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
    cut = frame[: int(len(frame) * keep)]
    assert not cut.rstrip(b"\x00").endswith(b"\xff\xd9")
    ds.PixelData = encapsulate([cut])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_trailing_padding(path: Path, stored: np.ndarray, *, extra: int = 64, **attrs: Any) -> Path:
    """Native 16-bit gray pixels followed by ``extra`` zero bytes after the last frame (valid padding)."""
    raw = np.asarray(stored).astype("<u2").tobytes() + bytes(extra)
    return write_gray(path, stored, raw_bytes=raw, **attrs)


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


def write_jpeg_lossless(path: Path, pixels: np.ndarray, *, precision: int = 12, **attrs: Any) -> Path:
    """Grayscale (H, W) as JPEG Lossless SV1 (1.2.840.10008.1.2.4.70), 16 allocated."""
    pixels = np.asarray(pixels)
    ds = image_dataset(rows=pixels.shape[0], columns=pixels.shape[1], bits_stored=precision, **attrs)
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


# =========================================================================== the mixed corpus

#: Columns of the case table returned by :func:`write_mixed_corpus`.
CASE_COLUMNS = ["case", "file", "expected", "note", "reader", "label", "rows", "height", "width",
                "channels", "tolerance"]

CLASSES = ("normal", "abnormal")
MAX_PIXELS = 4_000_000  # the corpus cohort's max_pixels: small enough to show the limit working
GRAY_SHAPE = (40, 52)  # DICOM grayscale cases (H, W): not square, so a transposition shows
PHOTO_SHAPE = (60, 76)  # fundus-like photographs and colour DICOM
LOSSLESS = 2e-3  # mean absolute error allowed for lossless cases (float rounding only)
LOSSY = 0.04  # ... for JPEG / lossy JPEG 2000 cases
EXPECTED_FILE = "expected_pixels.npz"

COHORT_YAML = """\
# Mixed DICOM + photograph corpus written by medxcept.testing.corpus.write_mixed_corpus (seed {seed}).
# Every case of issue #4: see cases.csv for the outcome each file should have.
name: mixed-corpus
description: >-
  Synthetic mixed DICOM + photograph folder with every ingestion case of issue #4 (valid files of
  each transfer syntax and photo format, non-image DICOM objects, broken files, broken label rows).
classes: [normal, abnormal]
positive_class: abnormal
modality: fundus
frames: all
window_index: 0
on_label_issue: exclude
max_pixels: {max_pixels}
pseudonym_salt: mixed-corpus-{seed}
sources:
  - name: dicom
    kind: dicom
    root: dicom
    labels: dicom/labels.csv
    patient_column: patient
    laterality_column: eye
  - name: photos
    kind: photos
    root: photos
    labels: photos/labels.csv
    file_column: image
    label_column: grade
    patient_column: patient
    laterality_column: eye
  - name: pattern
    kind: folders
    root: pattern
    filename_pattern: "{{patient}}_{{eye}}.*"
defaults:
  preprocess: {{image_px: 71}}
  train: {{batch_size: 8, head_epochs: 1, finetune_epochs: 1}}
  eval: {{n_bootstrap: 50}}
  audit: {{on_leak: warn}}
"""


@dataclass
class _Case:
    """One file (or label row) of the corpus and the outcome it should have."""

    case: str
    file: str  # relative to the corpus root ("dicom/x.dcm", "photos/y.jpg")
    expected: str  # "decoded" | "excluded: <reason fragment>" | "skipped: not an image"
    note: str
    label: str | None = None  # the label row written for it (None: the file has no row)
    patient: str | None = None  # photos: the patient column ("" = empty cell)
    eye: str = ""
    truth: np.ndarray | None = None  # decoded cases: (F, H, W, C) float32 display values
    tolerance: float = 0.0
    table_name: str | None = None  # the file as the label row writes it (default: its path)
    repeat: int = 1  # how many identical label rows name it


    @property
    def reader(self) -> str:
        return "dicom" if self.file.startswith("dicom/") else "photo"

    def record(self) -> dict[str, Any]:
        shape = self.truth.shape if self.truth is not None else (0, None, None, None)
        return {"case": self.case, "file": self.file, "expected": self.expected, "note": self.note,
                "reader": self.reader, "label": self.label or "",
                "rows": int(shape[0]) if self.expected == "decoded" else 0,
                "height": shape[1], "width": shape[2], "channels": shape[3],
                "tolerance": self.tolerance if self.expected == "decoded" else None}


def _texture(rng: np.random.Generator, height: int, width: int, *, signal: bool) -> np.ndarray:
    """Smooth blobs plus fine noise in [0, 1] (exactly 0 and 1 present); ``signal``: a bright blob."""
    from scipy import ndimage

    coarse = rng.random((height // 6 + 2, width // 6 + 2))
    smooth = ndimage.zoom(coarse, (height / coarse.shape[0], width / coarse.shape[1]), order=1)
    p = 0.65 * smooth[:height, :width] + 0.35 * rng.random((height, width))
    if signal:
        yy, xx = np.mgrid[:height, :width]
        blob = (yy - 0.3 * height) ** 2 + (xx - 0.3 * width) ** 2 < (0.18 * min(height, width)) ** 2
        p = p + 0.8 * blob
    p = p - p.min()
    return p / p.max()


def _fundus(rng: np.random.Generator, height: int, width: int, *, signal: bool) -> np.ndarray:
    """A fundus-like uint8 RGB picture: a textured orange disc on black; ``signal``: yellow spots."""
    yy, xx = np.mgrid[:height, :width]
    r = min(height, width) * rng.uniform(0.40, 0.48)
    cy = (height - 1) / 2 + rng.uniform(-2, 2)
    cx = (width - 1) / 2 + rng.uniform(-4, 4)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    tex = _texture(rng, height, width, signal=False)
    img = np.array([0.85, 0.42, 0.16]) * (0.45 + 0.55 * tex[..., None])
    if signal:
        for k in range(4):
            angle = k * 1.7 + rng.uniform(0, 0.5)
            sy, sx = cy + 0.5 * r * np.cos(angle), cx + 0.5 * r * np.sin(angle)
            img[(yy - sy) ** 2 + (xx - sx) ** 2 <= (0.13 * r) ** 2] = [1.0, 0.92, 0.45]
    return np.rint(img * disc[..., None] * 255).astype(np.uint8)


def _gray_truth(stored: np.ndarray, top: int = 4095) -> np.ndarray:
    """(H, W) or (F, H, W) stored values spanning [0, top] -> (F, H, W, 1) display values."""
    arr = np.asarray(stored, dtype=np.float32) / np.float32(top)
    return (arr[np.newaxis] if arr.ndim == 2 else arr)[..., np.newaxis]


def _rgb_truth(rgb: np.ndarray, top: float = 255.0) -> np.ndarray:
    return (np.asarray(rgb, dtype=np.float32) / np.float32(top))[np.newaxis]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares ``width x height`` followed by a tiny IDAT (a decompression bomb's
    header: decoding it would need width x height x 3 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _cut(path: Path, keep: float) -> Path:
    """Truncate ``path`` to ``keep`` of its length (a copy that stopped half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _relabel_bundled(name: str, out: Path, **attrs: Any) -> Path | None:
    """Copy a file of pydicom's wheel with new identifiers (pixel data untouched), or None."""
    src = bundled_test_file(name)
    if src is None:
        return None
    ds = pydicom.dcmread(src)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.save_as(out, enforce_file_format=True)
    return out


class _Writer:
    """Writes the corpus files one case at a time and keeps the case list and label rows."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.cases: list[_Case] = []
        self.n_patients = 0
        self.n_labels = 0
        self.dicom = root / "dicom"
        self.photos = root / "photos"
        self.pattern = root / "pattern"
        self.dicom.mkdir(parents=True, exist_ok=True)
        self.photos.mkdir(parents=True, exist_ok=True)

    def next_label(self) -> str:
        """Alternate the classes so both have patients of every reader."""
        label = CLASSES[self.n_labels % 2]
        self.n_labels += 1
        return label

    def patient(self, prefix: str) -> str:
        self.n_patients += 1
        return f"{prefix}{self.seed:02d}{self.n_patients:03d}"

    def add(self, case: str, path: Path, expected: str, note: str, **kw: Any) -> _Case:
        c = _Case(case=case, file=path.relative_to(self.root).as_posix(), expected=expected, note=note, **kw)
        self.cases.append(c)
        return c


def _dicom_cases(w: _Writer) -> None:
    """Every DICOM case: transfer syntaxes, pixel semantics, non-images, broken files."""
    h, wd = GRAY_SHAPE
    d = w.dicom

    def gray(signal: bool) -> np.ndarray:
        return np.rint(_texture(w.rng, h, wd, signal=signal) * 4095).astype(np.uint16)

    def ident() -> dict[str, Any]:
        return {"PatientID": w.patient("MRN")}

    # -- transfer syntaxes (12 bits stored in 16, min-max display: truth = stored / 4095)
    lab = w.next_label()
    pair = ident()  # one patient, both eyes
    for transfer, lat in (("implicit", "L"), ("explicit", "R")):
        s = gray(lab == "abnormal")
        p = write_gray(d / f"{transfer}_vr.dcm", s, transfer=transfer, bits_stored=12, ImageLaterality=lat,
                       PatientSex="F", PatientAge="063Y", **pair)
        w.add(f"{transfer} VR little endian", p, "decoded", "12 of 16 bits, no window: min-max display",
              label=lab, truth=_gray_truth(s), tolerance=LOSSLESS)
    lab = w.next_label()
    s = gray(lab == "abnormal")
    p = write_gray(d / "deflated.dcm", s, transfer="deflated", bits_stored=12, **ident())
    w.add("deflated explicit VR little endian", p, "decoded", "zlib-deflated dataset", label=lab,
          truth=_gray_truth(s), tolerance=LOSSLESS)

    lab = w.next_label()
    s8 = np.rint(_texture(w.rng, h, wd, signal=lab == "abnormal") * 255).astype(np.uint8)
    p = write_jpeg_baseline(d / "jpeg_baseline_gray.dcm", s8, quality=90, **ident())
    w.add("JPEG baseline (8-bit gray)", p, "decoded", "lossy: compared within a tolerance", label=lab,
          truth=_gray_truth(s8, 255), tolerance=LOSSY)

    lab = w.next_label()
    p = _relabel_bundled("JPGExtended.dcm", d / "jpeg_extended_12bit.dcm", **ident())
    if p is not None:
        stored = pydicom.dcmread(p).pixel_array.astype(np.float64)
        ref = (stored - stored.min()) / (stored.max() - stored.min())
        w.add("JPEG extended (12-bit, process 2/4)", p, "decoded",
              "pydicom's bundled JPGExtended.dcm (no 12-bit JPEG encoder installed); reference: pydicom's "
              "pixel_array of the file, min-max scaled", label=lab,
              truth=ref.astype(np.float32)[np.newaxis, ..., np.newaxis], tolerance=LOSSLESS)

    lab = w.next_label()
    s = gray(lab == "abnormal")
    p = write_jpeg_lossless(d / "jpeg_lossless_sv1.dcm", s, precision=12, **ident())
    w.add("JPEG lossless (process 14, SV1)", p, "decoded", "encoded by medxcept.testing.corpus.encode_jpeg_lossless",
          label=lab, truth=_gray_truth(s), tolerance=LOSSLESS)

    lab = w.next_label()
    p = _relabel_bundled("MR_small_jpeg_ls_lossless.dcm", d / "jpeg_ls_lossless.dcm", **ident())
    twin = bundled_test_file("MR_small.dcm")
    if p is not None and twin is not None:
        from medxcept.io.dicom import read_dicom

        w.add("JPEG-LS lossless", p, "decoded",
              "pydicom's bundled MR_small_jpeg_ls_lossless.dcm (no JPEG-LS encoder installed); reference: "
              "its uncompressed twin MR_small.dcm", label=lab, truth=read_dicom(twin)[0], tolerance=LOSSLESS)
    elif p is not None:
        p.unlink()

    for ts, name, case, tol, kw in (
        (dcm_uid.JPEG2000Lossless, "jpeg2000_lossless.dcm", "JPEG 2000 lossless", LOSSLESS, {}),
        (dcm_uid.JPEG2000, "jpeg2000_lossy.dcm", "JPEG 2000 lossy (ratio 2)", LOSSY, {"j2k_cr": [2]}),
        (dcm_uid.RLELossless, "rle_lossless.dcm", "RLE lossless", LOSSLESS, {}),
    ):
        why = encoder_unavailable(ts)
        if why:
            logger.info("%s case left out: %s", case, why)
            continue
        lab = w.next_label()
        s = gray(lab == "abnormal")
        p = write_compressed(d / name, s, ts, bits_stored=12, attrs=ident(), **kw)
        w.add(case, p, "decoded", "Dataset.compress", label=lab, truth=_gray_truth(s), tolerance=tol)

    # -- pixel semantics
    lab = w.next_label()
    s = gray(lab == "abnormal")
    p = write_gray(d / "monochrome1.dcm", 4095 - s, bits_stored=12, photometric="MONOCHROME1", **ident())
    w.add("MONOCHROME1", p, "decoded", "stored inverted: must be inverted back (higher = brighter)",
          label=lab, truth=_gray_truth(s), tolerance=LOSSLESS)

    lab = w.next_label()
    s = gray(lab == "abnormal")
    p = write_gray(d / "signed_rescale.dcm", s.astype(np.int32) - 2048, signed=True, bits_stored=16,
                   RescaleSlope=1, RescaleIntercept=-1024, RescaleType="HU", **ident())
    w.add("signed pixels + rescale", p, "decoded", "PixelRepresentation 1, values -2048..2047, intercept -1024",
          label=lab, truth=_gray_truth(s), tolerance=LOSSLESS)

    lab = w.next_label()
    s = gray(lab == "abnormal")
    junk = w.rng.integers(0, 16, size=s.shape, dtype=np.uint16) << 12
    p = write_gray(d / "bits_stored_12_high_bits_set.dcm", s, bits_stored=12,
                   raw_bytes=(s | junk).astype("<u2").tobytes(), **ident())
    w.add("BitsStored 12 < BitsAllocated 16", p, "decoded", "garbage in the 4 unused high bits must be masked",
          label=lab, truth=_gray_truth(s), tolerance=LOSSLESS)

    lab = w.next_label()
    s = gray(lab == "abnormal")
    center, width = 2048.0, 2048.0
    win = np.clip((s.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    p = write_gray(d / "window_center_width.dcm", s, bits_stored=12, WindowCenter=center, WindowWidth=width,
                   **ident())
    w.add("VOI window (center 2048, width 2048)", p, "decoded",
          "LINEAR window, truth by the PS3.3 C.11.2.1.2 formula", label=lab,
          truth=win.astype(np.float32)[np.newaxis, ..., np.newaxis], tolerance=LOSSLESS)

    lab = w.next_label()
    frames = np.stack([gray(lab == "abnormal") for _ in range(3)])
    p = write_gray(d / "multiframe_3.dcm", frames, bits_stored=12, **ident())
    w.add("multi-frame (3 frames)", p, "decoded", "frames: all -> one cohort row per frame", label=lab,
          truth=_gray_truth(frames), tolerance=LOSSLESS)

    ph, pw = PHOTO_SHAPE
    lab = w.next_label()
    rgb = _fundus(w.rng, ph, pw, signal=lab == "abnormal")
    p = write_rgb(d / "ybr_full.dcm", ybr_full_from_rgb(rgb), photometric="YBR_FULL", **ident())
    w.add("YBR_FULL (uncompressed)", p, "decoded", "converted to RGB once (rounding only)", label=lab,
          truth=_rgb_truth(rgb), tolerance=0.01)

    lab = w.next_label()
    rgb = _fundus(w.rng, ph, pw, signal=lab == "abnormal")
    p = write_jpeg_baseline(d / "jpeg_baseline_ybr422.dcm", rgb, quality=95, **ident())
    w.add("JPEG baseline, YBR_FULL_422", p, "decoded", "lossy colour JPEG, 4:2:2 chroma", label=lab,
          truth=_rgb_truth(rgb), tolerance=LOSSY)

    lab = w.next_label()
    rgb = _fundus(w.rng, ph, pw, signal=lab == "abnormal")
    p = write_rgb(d / "rgb_planar1.dcm", rgb, planar=1, **ident())
    w.add("RGB, PlanarConfiguration 1", p, "decoded", "colour-by-plane: RRR..GGG..BBB", label=lab,
          truth=_rgb_truth(rgb), tolerance=LOSSLESS)

    lab = w.next_label()
    s = gray(lab == "abnormal")
    p = write_gray(d / "no_preamble_no_meta.dcm", s, bits_stored=12, file_meta=False, **ident())
    w.add("no preamble, no file meta", p, "decoded", "bare implicit VR dataset, as old archives hold",
          label=lab, truth=_gray_truth(s), tolerance=LOSSLESS)

    lab = w.next_label()
    rgb = _fundus(w.rng, ph, pw, signal=lab == "abnormal")
    p = write_ophthalmic_photo(d / "ophthalmic_photo.dcm", rgb, patient_id=w.patient("MRN"), laterality="R",
                               manufacturer="CorpusCam", model="OP-1", sex="M", age="058Y")
    w.add("Ophthalmic Photography (JPEG baseline)", p, "decoded", "a fundus camera export", label=lab,
          truth=_rgb_truth(rgb), tolerance=LOSSY)

    # -- objects that are not images
    p = write_sr(d / "report_sr.dcm")
    w.add("structured report (SR), labelled", p, "skipped: not an image", "listed in the label table",
          label=w.next_label())
    p = write_presentation_state(d / "presentation_state.dcm")
    w.add("presentation state, unlabelled", p, "skipped: not an image", "not in the label table, as in a PACS export")
    p = write_dicomdir(d / "DICOMDIR")
    w.add("DICOMDIR, unlabelled", p, "skipped: not an image", "the media directory of the export")
    ds = image_dataset(rows=h, columns=wd, PatientID=w.patient("MRN"))
    p = save(ds, d / "header_without_pixels.dcm")
    w.add("image header without Pixel Data", p, "skipped: not an image",
          "the reader reports it as 'not an image (no Pixel Data element)'", label=w.next_label())

    # -- broken files (each listed in the label table, so it reaches the decoder)
    s = gray(False)
    p = _cut(write_gray(d / "truncated_native.dcm", s, bits_stored=12, **ident()), 0.6)
    w.add("truncated DICOM (native)", p, "excluded: truncated pixel data", "file cut at 60 %", label=w.next_label())
    rgb = _fundus(w.rng, ph, pw, signal=False)
    p = _cut(write_jpeg_baseline(d / "truncated_jpeg.dcm", rgb, **ident()), 0.7)
    w.add("truncated DICOM (encapsulated JPEG)", p, "excluded: truncated pixel data", "file cut at 70 %",
          label=w.next_label())
    p = d / "empty.dcm"
    p.write_bytes(b"")
    w.add("zero-byte .dcm", p, "excluded: empty file", "", label=w.next_label())
    p = d / "notes.dcm"
    p.write_text("Clinic notes exported by mistake; not a DICOM file.\n" * 20, encoding="utf-8")
    w.add("text file named .dcm", p, "excluded: not a DICOM file", "", label=w.next_label())
    ds = image_dataset(rows=65535, columns=65535, PatientID=w.patient("MRN"))
    ds.PixelData = b"\0" * 64
    ds["PixelData"].VR = "OW"
    p = save(ds, d / "absurd_dimensions.dcm")
    w.add("absurd dimensions (65535 x 65535)", p, "excluded: image too large",
          f"refused before decoding (max_pixels {MAX_PIXELS:,})", label=w.next_label())
    s = gray(False)
    p = write_gray(d / "rows_columns_mismatch.dcm", s, bits_stored=12, raw_bytes=s[: h // 2].astype("<u2").tobytes(),
                   **ident())
    w.add("Rows/Columns inconsistent with the data", p, "excluded: pixel data length does not match",
          "half the pixel bytes", label=w.next_label())
    p = write_gray(d / "unknown_transfer_syntax.dcm", gray(False), transfer="1.2.826.0.1.3680043.9.9999.1",
                   bits_stored=12, **ident())
    w.add("unknown transfer syntax", p, "excluded: unknown transfer syntax", "a private UID", label=w.next_label())


def _photo_cases(w: _Writer) -> None:
    """Every photograph case: formats, modes, EXIF, wrong extension, broken files, broken rows."""
    from PIL import Image

    ph, pw = PHOTO_SHAPE
    f = w.photos

    def fundus(label: str) -> np.ndarray:
        return _fundus(w.rng, ph, pw, signal=label == "abnormal")

    def add(case: str, path: Path, note: str, label: str, patient: str, eye: str, truth: np.ndarray,
            tol: float) -> None:
        w.add(case, path, "decoded", note, label=label, patient=patient, eye=eye, truth=truth, tolerance=tol)

    # patients with both eyes photographed (one label per patient)
    lab, pid = w.next_label(), w.patient("PT")
    rgb = fundus(lab)
    Image.fromarray(rgb).save(p := f / "visit1_a.jpg", "JPEG", quality=95)
    add("JPEG baseline", p, "", lab, pid, "OD", _rgb_truth(rgb), LOSSY)
    rgb = fundus(lab)
    Image.fromarray(rgb).save(p := f / "visit1_b.jpg", "JPEG", quality=95, progressive=True)
    add("JPEG progressive", p, "both eyes of one patient", lab, pid, "OS", _rgb_truth(rgb), LOSSY)

    lab, pid = w.next_label(), w.patient("PT")
    rgb = fundus(lab)
    Image.fromarray(rgb).save(p := f / "img_0003.png")
    add("PNG 8-bit RGB", p, "", lab, pid, "right", _rgb_truth(rgb), LOSSLESS)
    g16 = np.rint(_texture(w.rng, ph, pw, signal=lab == "abnormal") * 65535).astype(np.uint16)
    Image.fromarray(g16).save(p := f / "img_0004.png")  # mode I;16
    add("PNG 16-bit grayscale", p, "scaled by 65535, replicated to RGB", lab, pid, "left",
        np.repeat(_gray_truth(g16, 65535), 3, axis=-1), LOSSLESS)

    lab, pid = w.next_label(), w.patient("PT")
    rgb16 = fundus(lab).astype(np.uint16) * 257 + w.rng.integers(0, 257, size=(ph, pw, 3)).astype(np.uint16)
    try:
        import cv2

        cv2.imwrite(str(p := f / "img_0005.png"), np.ascontiguousarray(rgb16[..., ::-1]))  # OpenCV writes BGR
        add("PNG 16-bit RGB", p, "decoded with OpenCV (Pillow reduces it to 8 bits)", lab, pid, "R",
            _rgb_truth(rgb16, 65535.0), LOSSLESS)
    except ImportError:
        logger.info("OpenCV not installed: PNG 16-bit RGB case left out")
    rgb = fundus(lab)
    Image.fromarray(rgb).save(p := f / "img_0006.tif", "TIFF")
    add("TIFF RGB", p, "", lab, pid, "L", _rgb_truth(rgb), LOSSLESS)

    lab, pid = w.next_label(), w.patient("PT")
    rgb = fundus(lab)
    Image.fromarray(rgb).save(p := f / "img_0007.bmp", "BMP")
    add("BMP", p, "", lab, pid, "R", _rgb_truth(rgb), LOSSLESS)
    grey = np.asarray(Image.fromarray(fundus(lab)).convert("L"))
    Image.fromarray(grey).save(p := f / "img_0008.jpg", "JPEG", quality=95)
    add("JPEG grayscale", p, "replicated to RGB", lab, pid, "L",
        np.repeat(_gray_truth(grey, 255), 3, axis=-1), LOSSY)

    lab, pid = w.next_label(), w.patient("PT")
    rgb = fundus(lab)
    alpha = np.where(rgb.max(axis=-1) > 0, 255, 0).astype(np.uint8)
    surround = np.where(alpha[..., None] > 0, rgb, 255).astype(np.uint8)  # white where transparent
    Image.fromarray(np.dstack([surround, alpha]), mode="RGBA").save(p := f / "img_0009.png")
    add("PNG RGBA (transparent surround)", p, "alpha composited on black", lab, pid, "R", _rgb_truth(rgb),
        LOSSLESS)
    rgb = fundus(lab)
    Image.fromarray(rgb).convert("CMYK").save(p := f / "img_0010.jpg", "JPEG", quality=95)
    add("JPEG CMYK", p, "converted to RGB", lab, pid, "L", _rgb_truth(rgb), LOSSY)

    lab, pid = w.next_label(), w.patient("PT")
    rgb = fundus(lab)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored picture is the display rotated 90 CCW
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, k=1))).save(p := f / "img_0011.jpg", "JPEG", quality=95,
                                                                 exif=exif)
    add("JPEG with EXIF orientation 6", p, "stored rotated; must come back upright", lab, pid, "R",
        _rgb_truth(rgb), LOSSY)
    rgb = fundus(lab)
    Image.fromarray(rgb).save(p := f / "img_0012.jpg", "PNG")
    add("PNG named .jpg", p, "format read from the content", lab, pid, "L", _rgb_truth(rgb), LOSSLESS)

    lab, pid = w.next_label(), w.patient("PT")
    rgb = fundus(lab)
    Image.fromarray(rgb).save(p := f / "œil_gauche_é.png")
    add("non-ASCII file name", p, "", lab, pid, "OS", _rgb_truth(rgb), LOSSLESS)

    # -- broken files, each with a valid label row
    def broken(case: str, path: Path, expected: str, note: str = "") -> None:
        w.add(case, path, expected, note, label=w.next_label(), patient=w.patient("PT"), eye="R")

    Image.fromarray(fundus("normal")).save(p := f / "<b onmouseover=alert(1)>tronqué&.jpg", "JPEG", quality=95)
    broken("truncated JPEG (HTML in its name)", _cut(p, 0.5), "excluded: truncated",
           "cut at 50 %; the name tests escaping in check.html")
    (p := f / "empty.jpg").write_bytes(b"")
    broken("zero-byte .jpg", p, "excluded: empty file")
    broken("decompression bomb (PNG declaring 100000 x 100000)", _png_header_only(f / "bomb.png", 100_000, 100_000),
           "excluded: decompression bomb", "refused from the header, before any decoding")
    broken("PNG over max_pixels (2500 x 2000)", _png_header_only(f / "huge.png", 2500, 2000),
           "excluded: max_pixels", f"5,000,000 pixels > max_pixels {MAX_PIXELS:,}")
    p = write_ophthalmic_photo(f / "fundus_export.dcm", fundus("normal"), patient_id="", laterality="R")
    broken("DICOM file in the photo folder", p, "excluded: this is a DICOM file", "")

    # -- broken label rows
    rgb = fundus("normal")
    Image.fromarray(rgb).save(p := f / "img_0013.png")
    w.add("label row: unknown label value", p, "excluded: not one of the declared classes",
          "label 'maybe'; the file is then also without a valid label", label="maybe", patient=w.patient("PT"))
    w.add("label row: file missing on disk", f / "img_9999.png", "excluded: label row whose file is missing",
          "not a file found, so not counted in files found", label=w.next_label(), patient=w.patient("PT"))
    Image.fromarray(fundus("normal")).save(p := f / "img_0014.png")
    w.add("file not in the label table", p, "excluded: file without a label", "")
    Image.fromarray(fundus("abnormal")).save(p := f / "img_0015.png")
    w.add("label row with an empty patient", p, "excluded: no patient identifier",
          "decoded, then refused: no patient, no patient-level split", label=w.next_label(), patient="")


def _issue18_cases(w: _Writer) -> None:
    """Issue 18: DICOM cases real exports have, table rows that must not cross patients, file-name patterns."""
    from PIL import Image

    h, wd = GRAY_SHAPE
    ph, pw = PHOTO_SHAPE
    d, f = w.dicom, w.photos

    def gray(label: str) -> np.ndarray:
        return np.rint(_texture(w.rng, h, wd, signal=label == "abnormal") * 4095).astype(np.uint16)

    def fundus(label: str) -> np.ndarray:
        return _fundus(w.rng, ph, pw, signal=label == "abnormal")

    # -- DICOM
    lab = w.next_label()
    p, truth = write_voi_lut8(d / "voi_lut_8bit_4096_entries.dcm", gray(lab), PatientID=w.patient("MRN"))
    w.add("VOI LUT, 8-bit entries, 4096 of them", p, "decoded",
          "LUTDescriptor [4096, 0, 8]: pydicom 3's apply_voi_lut wraps the index; truth = LUT[value]", label=lab,
          truth=truth, tolerance=LOSSLESS)
    lab = w.next_label()
    s = gray(lab)
    p = write_trailing_padding(d / "trailing_padding.dcm", s, extra=64, bits_stored=12, PatientID=w.patient("MRN"))
    w.add("pixel data longer than Rows x Columns (trailing padding)", p, "decoded",
          "64 zero bytes after the last frame: valid; only a shortfall is an error", label=lab,
          truth=_gray_truth(s), tolerance=LOSSLESS)
    p = write_jpeg_cut_frame(d / "jpeg_frame_cut_short.dcm", fundus("normal"), keep=0.6, PatientID=w.patient("MRN"))
    w.add("encapsulated JPEG frame cut short (file well formed)", p, "excluded: no end-of-image marker",
          "item and sequence delimiter intact; Pillow would fill the missing part with grey", label=w.next_label())
    header_id = w.patient("MRN")
    p = write_gray(d / "table_patient_differs.dcm", gray("normal"), bits_stored=12, PatientID=header_id)
    w.add("label table PatientID differs from the DICOM header", p, "excluded: PatientID differs from the header",
          "the table names another patient; no identifier is written in the reason", label=w.next_label(),
          patient=w.patient("MRN"))
    p = write_gray(d / "table_laterality_differs.dcm", gray("normal"), bits_stored=12, PatientID=w.patient("MRN"),
                   ImageLaterality="R")
    w.add("label table laterality differs from the DICOM header", p, "excluded: says L, DICOM (Image) Laterality says R",
          "table 'L', header 'R'", label=w.next_label(), eye="L")

    # -- label rows: never across patients; NFD names; identical repeats
    (f / "pat_a").mkdir(exist_ok=True)
    Image.fromarray(fundus("normal")).save(p := f / "pat_a" / "left.png")
    w.add("a file no row names (its name is in another folder's row)", p, "excluded: file without a label",
          "pat_a/left.png; the row below says pat_b/left.png")
    w.add("label row naming another patient's folder (its path missing on disk)", f / "pat_b" / "left.png",
          "excluded: a file of that name is in another folder",
          "row 'pat_b/left.png'; only pat_a/left.png exists: never matched by bare name", label=w.next_label(),
          patient=w.patient("PT"), eye="L")
    lab, pid = w.next_label(), w.patient("PT")
    rgb = fundus(lab)
    Image.fromarray(rgb).save(p := f / unicodedata.normalize("NFC", "rétine_nfc.png"))
    w.add("label row in Unicode NFD, file name in NFC", p, "decoded", "macOS exports write NFD; compared in NFC",
          label=lab, patient=pid, eye="R", truth=_rgb_truth(rgb), tolerance=LOSSLESS,
          table_name=unicodedata.normalize("NFD", "rétine_nfc.png"))
    lab, pid = w.next_label(), w.patient("PT")
    rgb = fundus(lab)
    Image.fromarray(rgb).save(p := f / "img_0016.png")
    w.add("identical label row repeated", p, "decoded", "the repeat is dropped with a warning (not an error)",
          label=lab, patient=pid, eye="L", truth=_rgb_truth(rgb), tolerance=LOSSLESS, repeat=2)

    # -- file-name pattern {patient}_{eye}.*: one name whose eye field is not a laterality
    for lab in CLASSES:
        (w.pattern / lab).mkdir(parents=True, exist_ok=True)
    for k in range(4):
        lab, pid = w.next_label(), w.patient("PA")
        for eye in ("L", "R"):
            rgb = fundus(lab)
            Image.fromarray(rgb).save(p := w.pattern / lab / f"{pid}_{eye}.png")
            w.add(f"file-name pattern {{patient}}_{{eye}}.*: {eye} eye (patient {k + 1})", p, "decoded",
                  "patient and eye from the name", label=lab, truth=_rgb_truth(rgb), tolerance=LOSSLESS)
    Image.fromarray(fundus("abnormal")).save(p := w.pattern / "abnormal" / "Glaucoma_005.png")
    w.add("file-name pattern: eye field '005' is not a laterality", p, "excluded: eye '005' is not a laterality",
          "Glaucoma_005.png with {patient}_{eye}.*: patient 'Glaucoma', eye '005'", label="abnormal")


def _write_label_tables(w: _Writer) -> None:
    """dicom/labels.csv (plain CSV) and photos/labels.csv (semicolons, UTF-8 BOM, untidy labels)."""
    dicom_rows = ["file,label,patient,eye"]
    photo_rows = ["image;grade;patient;eye"]
    for k, c in enumerate(w.cases):
        if c.label is None or c.file.startswith("pattern/"):  # the pattern source is labelled by folders
            continue
        name = c.table_name or c.file.split("/", 1)[1]
        if c.reader == "dicom":
            dicom_rows += [f"{name},{c.label},{c.patient or ''},{c.eye}"] * c.repeat
        else:
            # spreadsheet habits: stray spaces and capitals, matched case-insensitively
            shown = (f" {c.label.capitalize()} " if k % 3 == 0 else c.label.upper() if k % 3 == 1 else c.label)
            photo_rows += [f"{name};{shown};{c.patient or ''};{c.eye}"] * c.repeat
    (w.dicom / "labels.csv").write_text("\n".join(dicom_rows) + "\n", encoding="utf-8")
    (w.photos / "labels.csv").write_text("\n".join(photo_rows) + "\n", encoding="utf-8-sig")


def write_mixed_corpus(root: Path, *, seed: int = 0) -> pd.DataFrame:
    """Write a mixed DICOM + photograph cohort folder holding every case of issue #4.

    Parameters
    ----------
    root : Path
        Output folder (created). It receives ``dicom/`` and ``photos/`` (each with its
        ``labels.csv``), ``cohort.yaml``, ``cases.csv`` (the returned table) and
        ``expected_pixels.npz`` (the display values each decoded case should show; see
        :func:`load_expected_pixels`). Existing files of the same names are overwritten; write
        into an empty folder so no stray file joins the cohort.
    seed : int, default 0
        Seeds the synthetic pixels and the patient identifiers.

    Returns
    -------
    pandas.DataFrame
        One row per case (:data:`CASE_COLUMNS`): ``case`` (what it shows), ``file`` (relative to
        ``root``), ``expected`` (``"decoded"``, ``"excluded: <reason fragment>"`` or ``"skipped: not
        an image"``), ``note``, ``reader`` (``dicom``/``photo``), ``label`` (the label row written,
        "" when the file has none), and for decoded cases the cohort ``rows`` it should give
        (frames), its ``height``, ``width``, ``channels`` and the mean absolute ``tolerance``
        against the expected pixels (about 0 for lossless cases, a few percent for lossy ones).

    Notes
    -----
    The cohort (``modality: fundus``, ``max_pixels: 4000000``, ``on_label_issue: exclude``) has
    about thirty usable patients, half of them *abnormal*: enough for a patient-level
    train/validation/test split. Cases that need a file pydicom's wheel does not ship, or an
    encoder that is not installed, are left out with a log line (never downloaded).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    w = _Writer(root, seed)
    _dicom_cases(w)
    _photo_cases(w)
    _issue18_cases(w)
    _write_label_tables(w)
    (root / "cohort.yaml").write_text(COHORT_YAML.format(seed=seed, max_pixels=MAX_PIXELS), encoding="utf-8")
    np.savez_compressed(root / EXPECTED_FILE, **{c.case: c.truth for c in w.cases if c.truth is not None})
    cases = pd.DataFrame([c.record() for c in w.cases], columns=CASE_COLUMNS)
    for col in ("height", "width", "channels"):
        cases[col] = cases[col].astype("Int64")
    cases.to_csv(root / "cases.csv", index=False)
    logger.info("mixed corpus: %d case(s) in %s", len(cases), root)
    return cases


def load_expected_pixels(root: Path) -> dict[str, np.ndarray]:
    """The expected display values of each decoded case, ``(F, H, W, C)`` float32 in [0, 1]."""
    with np.load(Path(root) / EXPECTED_FILE) as data:
        return {k: data[k] for k in data.files}


# --------------------------------------------------------------------------- outcomes


def _norm(path: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.path.abspath(str(path)))


def case_outcomes(cases: pd.DataFrame, root: Path, table: pd.DataFrame, exclusions: pd.DataFrame, *,
                  check_pixels: bool = True) -> pd.DataFrame:
    """What ingestion actually did with each case, next to what was expected.

    Parameters
    ----------
    cases : pandas.DataFrame
        From :func:`write_mixed_corpus`.
    root : Path
        The corpus folder (``cases["file"]`` is relative to it).
    table, exclusions : pandas.DataFrame
        The cohort table (needs ``path``: the in-memory table, not the public view) and the
        exclusion log of :func:`medxcept.cohort.ingest.ingest`.
    check_pixels : bool, default True
        Decode every used case again with the reader ingestion used (corpus options: window 0,
        ``max_pixels`` 4,000,000) and compare it with ``expected_pixels.npz``: a decoded case is
        only ``ok`` when its mean absolute error is within the case's tolerance.

    Returns
    -------
    pandas.DataFrame
        ``case``, ``file``, ``expected``, ``actual`` (``"decoded: N row(s), HxWxC"``,
        ``"excluded: <reason>"``, ``"skipped: <reason>"`` or ``"lost: in neither table"``) and
        ``ok`` (the outcome kind agrees and, for exclusions, a reason holds the expected fragment;
        for decoded cases, the number of rows and the size agree, and the pixels when checked).
    """
    truth = load_expected_pixels(root) if check_pixels else {}
    used = table.assign(_p=table["path"].map(_norm)).groupby("_p")
    used_paths = set(used.groups)
    reasons: dict[str, list[str]] = {}
    for p, r in zip(exclusions["path"], exclusions["reason"], strict=True):
        reasons.setdefault(_norm(str(p).split("#frame")[0]), []).append(str(r))
    rows = []
    for c in cases.itertuples(index=False):
        p = _norm(Path(root) / c.file)
        kind, _, fragment = str(c.expected).partition(": ")
        if p in used_paths:
            g = used.get_group(p)
            first = g.iloc[0]
            actual = f"decoded: {len(g)} row(s), {first['height']}x{first['width']}x{first['channels']}"
            ok = kind == "decoded" and len(g) == c.rows and (int(first["height"]), int(first["width"]),
                                                               int(first["channels"])) == (c.height, c.width, c.channels)
            if check_pixels and c.case in truth:
                mae = _pixel_error(Path(root) / c.file, c.reader, truth[c.case])
                ok = ok and mae <= c.tolerance
                actual += f", pixels match (MAE {mae:.4f} <= {c.tolerance:g})" if mae <= c.tolerance else (
                    f", PIXELS DIFFER (MAE {mae:.4f} > {c.tolerance:g})")
        elif p in reasons:
            rs = reasons[p]
            skipped = all(r.startswith("not an image") for r in rs)
            actual = ("skipped: " if skipped else "excluded: ") + " | ".join(rs)
            ok = kind == ("skipped" if skipped else "excluded") and any(fragment in r for r in rs)
        else:
            actual, ok = "lost: in neither table", False
        rows.append({"case": c.case, "file": c.file, "expected": c.expected, "actual": actual, "ok": bool(ok)})
    return pd.DataFrame(rows, columns=["case", "file", "expected", "actual", "ok"])


def _pixel_error(path: Path, reader: str, truth: np.ndarray) -> float:
    """Mean absolute error between the reader's output for ``path`` and the expected pixels."""
    from medxcept.io.dicom import read_dicom
    from medxcept.io.images import read_image

    if reader == "dicom":
        image = read_dicom(path, max_pixels=MAX_PIXELS)[0]
    else:
        image = read_image(path, max_pixels=MAX_PIXELS)[0][np.newaxis]
    if image.shape != truth.shape:
        return float("inf")
    return float(np.abs(image.astype(np.float64) - truth).mean())


def outcomes_markdown(outcomes: pd.DataFrame, *, width: int = 160, files: bool = True) -> str:
    """``case | file | expected | actual | ok`` as a markdown table (cells shortened to ``width``)."""

    def cell(text: object) -> str:
        s = str(text).replace("|", "\\|").replace("\n", " ")
        return s if len(s) <= width else s[: width - 1] + "…"

    head = ["case"] + (["file"] if files else []) + ["expected", "actual", "ok"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in outcomes.itertuples(index=False):
        cells = [cell(r.case)] + ([f"`{cell(r.file)}`"] if files else [])
        cells += [cell(r.expected), cell(r.actual), "yes" if r.ok else "**NO**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m medxcept.testing.corpus OUT_DIR [--seed N] [--ingest]``: write the corpus, print the cohort file.

    ``--ingest`` also ingests it (71 px, a preprocessing cache in ``OUT_DIR/.cache``) and prints
    the markdown table of expected and actual outcomes. Exit status 0 when every case behaves
    as expected, 1 otherwise.
    """
    parser = argparse.ArgumentParser(prog="python -m medxcept.testing.corpus", description=main.__doc__)
    parser.add_argument("out_dir", type=Path, help="folder to write the corpus into (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pixels (default 0)")
    parser.add_argument("--ingest", action="store_true", help="ingest it and print case | expected | actual")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("openjpeg").setLevel(logging.WARNING)  # one line per encoded tile otherwise
    cases = write_mixed_corpus(args.out_dir, seed=args.seed)
    cohort = (args.out_dir / "cohort.yaml").resolve()
    sys.stdout.write(f"{cohort}\n")
    if not args.ingest:
        return 0
    from medxcept.cohort.ingest import ingest
    from medxcept.cohort.table import load_cohort_spec
    from medxcept.images.cache import PreprocessCache
    from medxcept.images.preprocess import PreprocessConfig

    spec = load_cohort_spec(cohort)
    result = ingest(spec, preprocess_cfg=PreprocessConfig(image_px=71),
                    cache=PreprocessCache(args.out_dir / ".cache"), workers=1)
    outcomes = case_outcomes(cases, args.out_dir, result.table, result.exclusions)
    sys.stdout.write(outcomes_markdown(outcomes) + "\n")
    sys.stdout.write(f"\nfiles found {result.files_found} = used {result.files_used} + "
                     f"excluded {result.files_excluded}; {int(outcomes['ok'].sum())}/{len(outcomes)} cases as expected\n")
    return 0 if outcomes["ok"].all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
