"""Writing DICOM: the Ophthalmic Photography files of the demo cohort and of the test corpora.

Kept apart from the reader (:mod:`medxcept.io.dicom`), which never writes. The demo generator
(:mod:`medxcept.cohort.demo`) and the test fixtures (:mod:`medxcept.testing`) use it.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset

from medxcept.errors import ConfigError

__all__ = ["OPHTHALMIC_PHOTOGRAPHY_8BIT", "write_ophthalmic_photo"]

#: SOP Class UID of Ophthalmic Photography 8 Bit Image Storage.
OPHTHALMIC_PHOTOGRAPHY_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"


def write_ophthalmic_photo(
    path: str | os.PathLike[str],
    rgb_uint8: np.ndarray,
    *,
    patient_id: str,
    laterality: str,
    study_uid: str | None = None,
    manufacturer: str = "",
    model: str = "",
    sex: str = "",
    age: str = "",
    transfer: str = "jpeg_baseline",
    acquisition_date: str = "",
    series_uid: str | None = None,
    jpeg_quality: int = 95,
    sop_uid: str | None = None,
    patient_name: str = "",
) -> Path:
    """Write an 8-bit colour Ophthalmic Photography image (e.g. a fundus photo).

    SOP class 1.2.840.10008.5.1.4.1.1.77.1.5.1, modality ``OP``.

    Parameters
    ----------
    path : str or path-like
        Output file (parents are created).
    rgb_uint8 : numpy.ndarray
        ``uint8`` array of shape ``(H, W, 3)``.
    patient_id : str
        Written to PatientID.
    laterality : {"L", "R", "NA"}
        Written to ImageLaterality. ``NA`` leaves it out: the OP IOD only allows
        R, L and B, and none of them means "unknown".
    study_uid : str, optional
        StudyInstanceUID; a new UID when omitted.
    manufacturer, model : str
        Manufacturer and ManufacturerModelName (the ``source`` when read back).
    sex : {"", "M", "F", "O"}
        PatientSex.
    age : str
        PatientAge as a DICOM age string, e.g. ``"045Y"``.
    transfer : {"jpeg_baseline", "rle", "explicit"}
        JPEG baseline (YBR_FULL_422, 4:2:2 chroma subsampling, lossy, via Pillow),
        RLE Lossless (RGB) or uncompressed Explicit VR Little Endian (RGB).
    acquisition_date : str
        ``YYYYMMDD`` or ``YYYY-MM-DD``; written to StudyDate and AcquisitionDateTime.
    series_uid : str, optional
        SeriesInstanceUID; a new UID when omitted.
    jpeg_quality : int, default 95
        Pillow JPEG quality for ``transfer="jpeg_baseline"``.
    sop_uid : str, optional
        SOPInstanceUID; a new UID when omitted (pass one for byte-reproducible files).
    patient_name : str
        PatientName (the demo writes fake names so tests can check they never leak).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    rgb = np.asarray(rgb_uint8)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConfigError(
            f"rgb_uint8 must be a uint8 array of shape (H, W, 3), got {rgb.dtype} {rgb.shape}"
        )
    if laterality not in ("L", "R", "NA"):
        raise ConfigError(f"laterality must be 'L', 'R' or 'NA', got {laterality!r}")
    if transfer not in ("jpeg_baseline", "rle", "explicit"):
        raise ConfigError(
            f"transfer must be 'jpeg_baseline', 'rle' or 'explicit', got {transfer!r}"
        )
    if sex not in ("", "M", "F", "O"):
        raise ConfigError(f"sex must be '', 'M', 'F' or 'O', got {sex!r}")
    if age and not re.fullmatch(r"\d{3}[DWMY]", age):
        raise ConfigError(f"age must be a DICOM age string like '045Y' or '006M', got {age!r}")
    date = re.sub(r"\D", "", acquisition_date)
    if acquisition_date and len(date) != 8:
        raise ConfigError(f"acquisition_date must be YYYYMMDD or YYYY-MM-DD, got {acquisition_date!r}")

    ds = Dataset()
    ds.SOPClassUID = OPHTHALMIC_PHOTOGRAPHY_8BIT
    ds.SOPInstanceUID = sop_uid or dcm_uid.generate_uid()
    ds.StudyInstanceUID = study_uid or dcm_uid.generate_uid()
    ds.SeriesInstanceUID = series_uid or dcm_uid.generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientSex = sex
    ds.PatientAge = age
    ds.StudyDate = date
    ds.ContentDate = date
    ds.AcquisitionDateTime = date
    ds.Modality = "OP"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    if laterality != "NA":
        ds.ImageLaterality = laterality
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    if transfer == "jpeg_baseline":
        buffer = io.BytesIO()
        # subsampling=1 is 4:2:2 (horizontal only), what YBR_FULL_422 declares
        Image.fromarray(rgb, mode="RGB").save(
            buffer, format="JPEG", quality=jpeg_quality, subsampling=1
        )
        ds.PixelData = pydicom.encaps.encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.LossyImageCompressionRatio = f"{rgb.nbytes / len(buffer.getvalue()):.2f}"[:16]
        ds.file_meta.TransferSyntaxUID = dcm_uid.JPEGBaseline8Bit
    else:
        ds.file_meta.TransferSyntaxUID = dcm_uid.ExplicitVRLittleEndian
        ds.PixelData = np.ascontiguousarray(rgb).tobytes()
        ds["PixelData"].VR = "OB"
        if transfer == "rle":
            ds.compress(dcm_uid.RLELossless, np.ascontiguousarray(rgb))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
