"""A canary cohort: every identifying field carries a unique marker, and a scanner that finds them.

Why: the README promises that everything outside ``private/`` (and the console) can be shared. A
promise about *every* output is only as good as a test that looks at every output. So
:func:`write_canary_cohort` writes a small fundus cohort (DICOM Ophthalmic Photography files and
JPEG photographs with EXIF, a label table, a cohort file) in which each identifier is a marker
string that appears nowhere else:

=============================  ===================================================================
where                          what is planted (``Cn<tag><KIND><nn>z``, one per patient)
=============================  ===================================================================
folder and file names          ``DIR``, ``FILE`` (DICOM), ``PDIR``, ``PFILE`` (photographs)
label table                    patient ID (``PID``, also the DICOM PatientID), visit date
DICOM header                   PatientName (``FAM^GIV``), OtherPatientIDs (``OPID``),
                               AccessionNumber (``ACC``), InstitutionName (``INST``),
                               StationName (``STN``), DeviceSerialNumber (``DSN``),
                               ReferringPhysicianName (``REF``), Study/Series/SOP/FrameOfReference
                               UIDs, study/series/acquisition dates and times, birth date, age;
                               half the files end with 64 bytes of padding (the reader notes it)
pixels                         ``BURN`` written in magenta (:data:`BURN_RGB`) outside the field of
                               view, in DICOM and photographs alike
EXIF                           BodySerialNumber (``SER``), DateTimeOriginal and DateTime
=============================  ===================================================================

Device strings that medxcept hashes (the ``acq_device`` fingerprint of
:mod:`medxcept.integrity.acquisition`) are returned as :attr:`CanaryCohort.hashed`: they may appear only keyed.

:func:`scan_outputs` then reads every file under a folder, outside ``private/``, by its type
(text, JSON, CSV, YAML, HTML with each embedded image decoded, PNG/JPEG with their text chunks and
EXIF, ``.keras`` archives member by member, HDF5 and joblib pickles as bytes), and reports every
marker, every unkeyed MD5 / SHA-1 / SHA-256 hex prefix (8 digits) of a marker or a hashed string,
every absolute path, and every embedded image showing the magenta burned-in text. A file of a
type it cannot read is itself a finding, so that a new output cannot escape it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["BURN_RGB", "CanaryCohort", "write_canary_cohort", "scan_text", "scan_outputs", "ScanResult"]

#: The colour of the burned-in text: no fundus, figure or heat map uses it.
BURN_RGB = (255, 0, 255)
#: Pixels of that colour (within a tolerance) that make an embedded image a finding. Burned-in text
#: shows as 530-560 such pixels at full size and 133-137 at half size; a Grad-CAM tile whose jet red is
#: blended over a purple fundus gives 19-20 (a false finding seen in the CAM gallery at 12), so 60.
#: A CAM gallery's purple (about (118, 55, 135), 99 pixels in one) is kept out by the green ratio of
#: :func:`_burned_pixels`.
BURN_PIXELS = 60

_COHORT = """name: canary-{tag}
classes: [normal, abnormal]
positive_class: abnormal
modality: fundus
description: canary cohort {tag} (issue 33)
sources:
  - name: photos
    kind: photos
    root: photos
    labels: photos/labels.csv
    patient_column: patient
    laterality_column: eye
    visit_column: visit
    columns: {{sex: sex, age: age}}
  - name: dicom
    kind: dicom
    root: dicom
    labels: dicom/labels.csv
defaults:
  split: {{val_fraction: 0.25, test_fraction: 0.3}}
  eval: {{n_bootstrap: 20}}
  audit: {{on_leak: warn}}
"""


@dataclass(frozen=True)
class CanaryCohort:
    """A written canary cohort.

    Attributes
    ----------
    cohort_file : Path
        Its ``cohort.yaml``.
    root : Path
        The folder holding it (its name is itself a marker).
    markers : dict of str to list of str
        Every planted string that must not leave ``private/``, by kind.
    hashed : list of str
        Strings medxcept hashes (device descriptions): only their unkeyed hashes are searched.
    """

    cohort_file: Path
    root: Path
    markers: dict[str, list[str]] = field(default_factory=dict)
    hashed: list[str] = field(default_factory=list)

    @property
    def n_markers(self) -> int:
        """Distinct marker strings planted."""
        return len({m for values in self.markers.values() for m in values})


def _burn(rgb: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in :data:`BURN_RGB`, in two short lines, into the left margin (outside the
    field of view), as a camera or a PACS writes a name into the pixels."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    half = (len(text) + 1) // 2
    draw.text((2, 2), text[:half], fill=BURN_RGB, stroke_width=1, stroke_fill=BURN_RGB)
    draw.text((2, 16), text[half:], fill=BURN_RGB, stroke_width=1, stroke_fill=BURN_RGB)
    return np.asarray(img)


def write_canary_cohort(base: str | Path, *, tag: str = "A", n_patients: int = 16, seed: int = 0) -> CanaryCohort:
    """Write a canary cohort of ``n_patients`` patients (one DICOM and one photograph each) under ``base``.

    Parameters
    ----------
    base : path
        Parent folder; the cohort is written into a new subfolder whose name is a marker.
    tag : str, default "A"
        Part of every marker, so that two cohorts (a training and an external one) differ.
    n_patients : int, default 16
        Patients; half of them abnormal (both images).
    seed : int, default 0
        Seed of the painted pixels.

    Returns
    -------
    CanaryCohort
    """
    from PIL import Image

    from medxcept.cohort.demo import Camera, paint_fundus
    from medxcept.io.dicom_writer import write_ophthalmic_photo

    if not re.fullmatch(r"[A-Z]", tag):
        raise ValueError(f"tag must be one capital letter, got {tag!r}")
    markers: dict[str, list[str]] = {}
    hashed: list[str] = []

    def mark(kind: str, p: int) -> str:
        value = f"Cn{tag}{kind}{p:02d}z"
        markers.setdefault(kind, []).append(value)
        return value

    def plant(kind: str, *values: str) -> None:
        markers.setdefault(kind, []).extend(values)

    root = Path(base) / f"cohort-{mark('ROOT', 0)}"
    dicom, photos = root / "dicom", root / "photos"
    # a wide canvas: the field of view is a circle in the middle, the margins are dark and wide enough
    # for two lines of burned-in text
    camera = Camera("canary", 160, 224, 0.85, (1.0, 1.0, 1.0), 0.5, "jpeg")
    uid_root = f"1.2.826.0.1.3680043.10.{ord(tag)}{seed % 100:02d}"
    dicom_rows, photo_rows = [], []
    for p in range(n_patients):
        abnormal = p % 2 == 1
        pid = mark("PID", p)
        day = 10 + p
        study_date, birth = f"1987{4 + seed % 3:02d}{day:02d}", f"1931{2 + seed % 3:02d}{day:02d}"
        study_time = f"13{day:02d}{p + 7:02d}.{271828 + p:06d}"
        age = f"{87 + p % 5:03d}Y"
        uid = f"{uid_root}.{7700 + p}"
        uids = {"study": f"{uid}.1", "series": f"{uid}.1.2", "sop": f"{uid}.1.2.3", "frame": f"{uid}.9"}
        plant("DATE", study_date, f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}", birth,
              f"{birth[:4]}-{birth[4:6]}-{birth[6:]}")
        plant("TIME", study_time, f"{study_time[:2]}:{study_time[2:4]}:{study_time[4:]}")
        plant("AGE", age)
        plant("UID", *uids.values())
        rng = np.random.default_rng([seed, p])
        rgb, _, _ = paint_fundus(rng, camera, laterality="R", referable=abnormal)
        rgb = _burn(rgb, mark("BURN", p))
        folder, fname = mark("DIR", p), f"{mark('FILE', p)}_OD.dcm"
        path = write_ophthalmic_photo(
            dicom / folder / fname, rgb, patient_id=pid, laterality="R", study_uid=uids["study"],
            series_uid=uids["series"], sop_uid=uids["sop"], manufacturer="Acme", model="FC-1", sex="F",
            age=age, acquisition_date=study_date, patient_name=f"{mark('FAM', p)}^{mark('GIV', p)}",
            transfer="explicit")
        import pydicom

        ds = pydicom.dcmread(path)
        ds.OtherPatientIDs = mark("OPID", p)
        ds.AccessionNumber = mark("ACC", p)
        ds.InstitutionName = mark("INST", p)
        ds.StationName = mark("STN", p)
        ds.DeviceSerialNumber = mark("DSN", p)
        ds.ReferringPhysicianName = mark("REF", p)
        ds.FrameOfReferenceUID = uids["frame"]
        ds.PatientBirthDate = birth
        ds.SeriesDate = study_date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = study_time
        ds.AcquisitionDateTime = study_date + study_time
        if p % 2 == 0:  # trailing bytes after the last frame: the reader notes them (naming the file)
            ds.PixelData = ds.PixelData + bytes(64)
        ds.save_as(path, enforce_file_format=True)
        hashed.append(" | ".join(["Acme", "FC-1", ds.StationName, ds.InstitutionName]))
        dicom_rows.append({"file": f"{folder}/{fname}", "label": "abnormal" if abnormal else "normal"})

        # the same patient's other eye, photographed: a JPEG with the camera's EXIF
        rgb, _, _ = paint_fundus(np.random.default_rng([seed, p, 1]), camera, laterality="L", referable=abnormal)
        rgb = _burn(rgb, mark("BURN", 50 + p))
        pfolder, pname = mark("PDIR", p), f"{mark('PFILE', p)}_OS.jpg"
        visit = f"2016-03-{day:02d}"
        stamp = f"2016:03:{day:02d} 09:{p + 10:02d}:{p + 20:02d}"
        plant("DATE", visit, visit.replace("-", ""))
        plant("TIME", stamp, stamp.replace(":", "").replace(" ", ""))
        img = Image.fromarray(rgb)
        exif = img.getexif()
        exif[0x010F], exif[0x0110], exif[0x0132] = "Acme", "FC-1 photo", stamp  # Make, Model, DateTime
        sub = exif.get_ifd(0x8769)
        sub[0xA431] = mark("SER", p)  # BodySerialNumber
        sub[0x9003] = stamp  # DateTimeOriginal
        (photos / pfolder).mkdir(parents=True, exist_ok=True)
        img.save(photos / pfolder / pname, quality=92, exif=exif)
        hashed.append("Acme | FC-1 photo |")  # EXIF Make | Model | Software, stripped as medxcept hashes it
        photo_rows.append({"file": f"{pfolder}/{pname}", "patient": pid, "eye": "L", "visit": visit,
                           "label": "abnormal" if abnormal else "normal", "sex": "F", "age": 87 + p % 5})
    pd.DataFrame(dicom_rows).to_csv(dicom / "labels.csv", index=False)
    pd.DataFrame(photo_rows).to_csv(photos / "labels.csv", index=False)
    cohort_file = root / "cohort.yaml"
    cohort_file.write_text(_COHORT.format(tag=tag), encoding="utf-8")
    return CanaryCohort(cohort_file=cohort_file, root=root, markers=markers, hashed=sorted(set(hashed)))


# ------------------------------------------------------------------------------------------ scanner


@dataclass
class ScanResult:
    """What :func:`scan_outputs` read and found.

    Attributes
    ----------
    checked : dict of str to str
        Every file read (relative path) and how it was read.
    findings : list of str
        ``<file>: <what>`` for every leak; empty when the outputs are clean.
    """

    checked: dict[str, str] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)


def _digests(value: str) -> set[str]:
    out = set()
    for v in {value, value.lower(), value.upper()}:
        for algo in (hashlib.md5, hashlib.sha1, hashlib.sha256):
            out.add(algo(v.encode()).hexdigest()[:8])
    return out


_HEX_TOKEN = re.compile(r"(?<![0-9a-f])[0-9a-f]{8,}")


# absolute paths: a POSIX path two folders deep from a usual root, a home folder, a Windows drive
_ABS_PATH = re.compile(r"(?<![\w.:/-])(?:/(?:tmp|home|root|Users|data|work|mnt|media|srv|var|opt|scratch|nfs|"
                       r"private|run|net)/[\w.@~-]+|~/[\w.-]{2,}/|[A-Za-z]:\\\\?[\w.-]+\\)")


def scan_text(text: str, cohort: CanaryCohort, where: str, *, paths: tuple[str, ...] = ()) -> list[str]:
    """Findings in one text: markers (case-insensitive), unkeyed hash prefixes, absolute paths.

    ``paths`` are folders whose mention is a finding wherever they appear (the temporary folders of
    a test), besides the generic pattern of an absolute path.
    """
    low = text.lower()
    found = []
    for kind, values in cohort.markers.items():
        for m in values:
            if re.fullmatch(r"[\d.:-]+", m):  # a date, time or UID: not inside a longer number (0.0201603120...)
                if re.search(r"(?<![\d.])" + re.escape(m) + r"(?!\d)", text):
                    found.append(f"{where}: marker {kind} {m!r}")
            elif m.lower() in low:
                found.append(f"{where}: marker {kind} {m!r}")
    digests = {d: m for m in [v for values in cohort.markers.values() for v in values] + list(cohort.hashed)
               for d in _digests(m)}
    for token in set(_HEX_TOKEN.findall(low)):  # a hash prefix starts a hex token ("h:1a2b3c4d", "1a2b...")
        if token[:8] in digests:
            found.append(f"{where}: unkeyed hash {token[:8]} of {digests[token[:8]]!r}")
    for p in paths:
        if p and p.lower() in low:
            found.append(f"{where}: path {p!r}")
    for hit in sorted(set(_ABS_PATH.findall(text))):
        found.append(f"{where}: absolute path {hit!r}")
    return found


def _burned_pixels(rgb: np.ndarray) -> int:
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        return 0
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    # magenta, however darkened or smeared by JPEG: red and blue alike, green well below both, and
    # under 35 % of their mean (Grad-CAM's purple over a fundus, (105, 48, 133) to (119, 56, 138),
    # keeps about 44 %: 99 such pixels in one CAM gallery made a false finding)
    return int(((np.abs(r - b) < 20) & (np.minimum(r, b) >= 115) & ((r + b) // 2 - g > 70)
                & (g * 40 < (r + b) * 7)).sum())


def _image_findings(data: bytes, cohort: CanaryCohort, where: str, paths: tuple[str, ...]) -> list[str]:
    """An image file or embedded image: its text chunks, comments and EXIF; the burned-in colour."""
    from PIL import Image

    found = []
    with Image.open(io.BytesIO(data)) as im:
        meta = {str(k): str(v) for k, v in im.info.items() if k not in ("icc_profile", "exif")}
        exif = im.getexif()
        for k, v in exif.items():
            meta[f"exif {k}"] = str(v)
        for ifd in (0x8769, 0x8825):
            for k, v in exif.get_ifd(ifd).items():
                meta[f"exif {ifd}:{k}"] = str(v)
        found += scan_text(json.dumps(meta), cohort, f"{where} (metadata)", paths=paths)
        n = _burned_pixels(np.asarray(im.convert("RGB")))
    if n >= BURN_PIXELS:
        found.append(f"{where}: {n} pixels of the burned-in text colour")
    return found


_DATA_URI = re.compile(r"data:(image/[\w.+-]+)(;base64)?,([A-Za-z0-9+/=%._-]+)")


def _html(text: str, cohort: CanaryCohort, where: str, paths: tuple[str, ...]) -> tuple[list[str], int]:
    found, n = [], 0
    for k, m in enumerate(_DATA_URI.finditer(text)):
        kind, b64, payload = m.groups()
        raw = base64.b64decode(payload) if b64 else payload.encode()
        n += 1
        if kind == "image/svg+xml":
            found += scan_text(raw.decode("utf-8", "replace"), cohort, f"{where} [svg {k}]", paths=paths)
        else:
            found += _image_findings(raw, cohort, f"{where} [{kind} {k}]", paths)
    found += scan_text(_DATA_URI.sub("data:", text), cohort, where, paths=paths)
    return found, n


def _binary_text(data: bytes) -> str:
    """The strings of a binary file (runs of 6+ printable bytes, as ``strings`` lists them); a zlib
    stream is inflated first. Float weights make short random runs; metadata makes long ones."""
    if data[:1] == b"\x78":
        try:
            data = zlib.decompress(data)
        except zlib.error:
            pass
    return "\n".join(r.decode("ascii") for r in re.findall(rb"[\x20-\x7e]{6,}", data))


TEXT_SUFFIXES = (".json", ".csv", ".yaml", ".yml", ".txt", ".md", ".log", ".tsv", ".svg")


def scan_outputs(folder: str | Path, cohort: CanaryCohort, *, paths: tuple[str, ...] = ()) -> ScanResult:
    """Read every file under ``folder`` outside any ``private/`` folder and search it.

    Parameters
    ----------
    folder : path
        A run directory, a k-fold directory, a comparison, or a folder of several.
    cohort : CanaryCohort
        What to search for.
    paths : tuple of str
        Folders whose mention is a finding (see :func:`scan_text`).

    Returns
    -------
    ScanResult
        ``checked`` names each file and how it was read; a file of an unknown type is a finding.
    """
    folder = Path(folder)
    result = ScanResult()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or "private" in p.relative_to(folder).parts:
            continue
        where, suffix, data = rel, p.suffix.lower(), p.read_bytes()
        result.findings += scan_text(rel, cohort, f"{where} (file name)", paths=paths)
        if suffix in (".html", ".htm"):
            found, n = _html(data.decode("utf-8", "replace"), cohort, where, paths)
            result.findings += found
            result.checked[rel] = f"html ({n} embedded image(s) decoded)"
        elif suffix in TEXT_SUFFIXES:
            text = data.decode("utf-8", "replace")
            if suffix == ".json":
                json.loads(text)  # a truncated file is a finding of its own: it raises
            result.findings += scan_text(text, cohort, where, paths=paths)
            result.checked[rel] = suffix[1:]
        elif suffix in (".png", ".jpg", ".jpeg"):
            result.findings += _image_findings(data, cohort, where, paths)
            result.findings += scan_text(_binary_text(data), cohort, where, paths=paths)
            result.checked[rel] = "image (pixels, text chunks, EXIF, strings)"
        elif suffix == ".keras":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members = z.namelist()
                for name in members:
                    result.findings += scan_text(_binary_text(z.read(name)), cohort, f"{where}:{name}", paths=paths)
            result.checked[rel] = f"keras archive ({', '.join(members)})"
        elif suffix in (".h5", ".hdf5", ".joblib", ".pkl", ".npy", ".npz") or p.name.endswith(".weights.h5"):
            result.findings += scan_text(_binary_text(data), cohort, where, paths=paths)
            result.checked[rel] = "binary (its strings, zlib inflated)"
        elif p.name.endswith(".lock"):
            result.findings += scan_text(data.decode("utf-8", "replace"), cohort, where, paths=paths)
            result.checked[rel] = "lock file (text)"
        else:
            result.findings.append(f"{where}: a file type the canary scan does not know how to read")
    return result
