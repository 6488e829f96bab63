"""The embedded demo cohort: synthetic colour fundus photographs with a planted, learnable signal.

Why synthetic: a newcomer must be able to run the whole pipeline on a fresh machine with no data
and no network, and a test must know the right answer. The generator paints fundus-like images with
the structure a real camera produces — black surround, circular field of view (clipped top and bottom
on the wide camera), vignetting, uneven illumination, a per-camera colour cast, an optic disc on the
nasal side of each eye, a darker macula, vessel arcades — and plants the class signal:

* ``referable`` eyes carry hard-exudate-like yellow lesions clustered around the macula and a few
  microaneurysm/haemorrhage-like dark red dots;
* ``non_referable`` eyes are clean, except for an occasional faint drusen-like spot (so the task is
  easy but not trivially separable by "any yellow pixel").

That task is easy: a network trained from scratch reaches a test AUC of 1.000 with the interval
1.000-1.000, and then nothing a report says about uncertainty, calibration or overfitting can be seen.
Four options of :class:`DemoSpec` make it realistically hard (``cohorts/demo.yaml`` sets them; their
defaults paint exactly the easy task above, byte for byte):

* ``min_severity`` < 1: each referable patient gets a disease severity drawn uniformly from
  ``[min_severity, 1]`` (both eyes share it, each eye a little less or more). Mild eyes carry
  few, small, faint exudates and microaneurysms, down to one or two spots a few pixels wide at 96 px;
* ``drusen_rate``: the share of healthy eyes with drusen-like yellow spots (up to four, some as
  bright as a mild exudate), so "any yellow pixel" no longer separates the classes;
* ``pigment_sd``: patient-level variation of the retinal pigmentation (fundus colour), so colour
  statistics vary between patients more than between classes;
* ``label_noise``: the share of eyes whose written label is the other class (grader error), so no
  model can reach an AUC of 1 on the written labels.

The cohort has patients with both eyes, some with only one, and some with a repeat visit, so that
patient-level splitting matters. It is written as a real user's data would arrive:

* ``photos/``: camera A as JPEG, camera B as PNG, named ``{patient}_{visit}_{eye}.{ext}``, with a
  ``labels.csv`` (file, patient, eye, visit, label);
* ``dicom/``: camera C as DICOM Ophthalmic Photography (JPEG baseline, YBR_FULL_422), PatientID and
  ImageLaterality in the header, with a ``labels.csv`` (file, label).

Generation is deterministic for ``(seed, n_patients, size)``, happens on first use into a cache
directory (``$MEDXCEPT_CACHE`` or ``~/.cache/medxcept``) and is reused afterwards.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medxcept.paths import cache_dir

__all__ = ["DemoSpec", "CAMERAS", "paint_fundus", "generate_demo", "demo_root", "cache_dir",
           "start_cohort", "save_photo", "finish_cohort", "blobs"]

log = logging.getLogger(__name__)

CLASSES = ("non_referable", "referable")
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Camera:
    """A simulated fundus camera: canvas size, field of view, colour cast, blur, file format."""

    name: str
    height: int
    width: int
    fov_frac: float  # FOV radius as a fraction of min(height, width) / 2 (> 1 means clipped)
    cast: tuple[float, float, float]
    blur_sigma: float
    fmt: str  # "jpeg" | "png" | "dicom"


CAMERAS = (
    Camera("Topcon TRC-NW8 (synthetic)", 320, 320, 0.94, (1.00, 1.00, 1.00), 0.6, "jpeg"),
    Camera("Canon CR-2 (synthetic)", 288, 384, 1.12, (0.92, 1.05, 1.15), 0.8, "png"),
    Camera("Zeiss Visucam (synthetic)", 352, 352, 0.90, (1.08, 0.95, 0.85), 0.5, "dicom"),
)


@dataclass(frozen=True)
class DemoSpec:
    """Size and seed of the demo cohort.

    Args:
        n_patients: number of synthetic patients (about 2.2 images each).
        seed: generator seed; the same seed always gives the same files, byte for byte.
        size_scale: multiplies every camera's canvas size (1.0 = 288-384 px wide).
        p_referable: probability that an eye is referable.
        min_severity: lowest disease severity of a referable patient, in (0, 1]; 1 paints every
            referable eye fully (the easy task), lower values add mild, hard-to-see cases.
        drusen_rate: probability that a healthy eye shows drusen-like yellow spots.
        pigment_sd: standard deviation of a patient's fundus colour (relative, per channel).
        label_noise: probability that an eye's written label is the other class.
    """

    n_patients: int = 110
    seed: int = 7
    size_scale: float = 1.0
    p_referable: float = 0.4
    min_severity: float = 1.0
    drusen_rate: float = 0.3
    pigment_sd: float = 0.0
    label_noise: float = 0.0

    def __post_init__(self) -> None:
        ranges = (("min_severity", 0.0, 1.0), ("drusen_rate", 0.0, 1.0), ("pigment_sd", 0.0, 0.5),
                  ("label_noise", 0.0, 0.5), ("p_referable", 0.0, 1.0))
        for name, low, high in ranges:
            value = getattr(self, name)
            if not low <= value <= high or (name == "min_severity" and value == 0.0):
                raise ValueError(f"demo generator option {name}={value!r} is outside its range "
                                 f"({'(' if name == 'min_severity' else '['}{low:g}, {high:g}]); "
                                 "fix generator_options in the cohort file")

    @property
    def hard(self) -> bool:
        """True when any option departs from the easy task's defaults."""
        options = (self.min_severity, self.drusen_rate, self.pigment_sd, self.label_noise)
        return options != (1.0, 0.3, 0.0, 0.0)

    def key(self) -> str:
        base = (f"v{GENERATOR_VERSION}-n{self.n_patients}-s{self.seed}-x{self.size_scale:g}"
                f"-p{self.p_referable:g}")
        if not self.hard:  # the easy task keeps its cache key (and its files)
            return base
        return (base + f"-m{self.min_severity:g}-d{self.drusen_rate:g}-g{self.pigment_sd:g}"
                f"-l{self.label_noise:g}")


def demo_root(spec: DemoSpec | None = None) -> Path:
    """The directory holding the demo cohort for ``spec`` (generated if absent)."""
    spec = spec or DemoSpec()
    return generate_demo(cache_dir() / "demo" / spec.key(), spec)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma)
    return field / (np.abs(field).max() + 1e-8)


def _draw_vessels(rng: np.random.Generator, h: int, w: int, disc: tuple[float, float], r: float,
                  laterality: str) -> np.ndarray:
    """Four arcades leaving the disc, each a curved polyline with branches; returns a soft mask."""
    from skimage.draw import line

    mask = np.zeros((h, w), dtype=np.float32)
    dy0, dx0 = disc
    temporal = -1.0 if laterality == "R" else 1.0  # the macula lies temporal to the disc
    for vertical in (-1.0, 1.0):
        for reach, bend in ((1.5, 0.55), (0.6, 0.25)):  # long temporal arcade, short nasal one
            direction = temporal if reach > 1 else -temporal
            t = np.linspace(0, 1, 40)
            ang = vertical * (0.25 + bend * np.pi * t) + rng.normal(0, 0.05)
            xs = dx0 + direction * reach * r * t * np.cos(ang * 0.6)
            ys = dy0 + vertical * r * (0.15 + 0.7 * np.sin(np.clip(ang * vertical, 0, np.pi / 2))) * t
            width = 1.0 + 1.5 * rng.random()
            for i in range(len(t) - 1):
                rr, cc = line(int(ys[i]), int(xs[i]), int(ys[i + 1]), int(xs[i + 1]))
                ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
                mask[rr[ok], cc[ok]] = max(1.0 - t[i] * 0.6, 0.3) * width
    soft = ndimage.gaussian_filter(mask, 1.2)
    return np.clip(soft / (soft.max() + 1e-8) * 1.6, 0, 1)


def blobs(yy: np.ndarray, xx: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Soft-edged discs at ``centres`` (n, 2) with ``radii`` (n,); returns max coverage in [0, 1]."""
    out = np.zeros(yy.shape, dtype=np.float32)
    for (cy, cx), rad in zip(centres, radii, strict=False):
        y0, y1 = int(max(cy - 2 * rad - 2, 0)), int(min(cy + 2 * rad + 3, yy.shape[0]))
        x0, x1 = int(max(cx - 2 * rad - 2, 0)), int(min(cx + 2 * rad + 3, yy.shape[1]))
        if y0 >= y1 or x0 >= x1:
            continue
        d = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx)
        cov = np.clip(rad + 0.5 - d, 0, 1)
        out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], cov)
    return out


def paint_fundus(rng: np.random.Generator, camera: Camera, *, laterality: str, referable: bool,
                 scale: float = 1.0, severity: float | None = None, drusen_rate: float = 0.3,
                 pigment: tuple[float, float, float] | None = None,
                 hard: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """Paint one synthetic fundus photograph.

    ``severity`` (referable eyes, in (0, 1]; None = the easy task's full lesion load) scales the
    number, size and contrast of the lesions; ``drusen_rate`` is the probability of drusen-like spots
    on a healthy eye, which ``hard`` makes more numerous and brighter; ``pigment`` multiplies the
    fundus colour per channel. The defaults paint the easy demo task (:class:`DemoSpec` defaults).

    Returns:
        ``(rgb, lesion_mask, geometry)``: ``rgb`` uint8 H x W x 3, ``lesion_mask`` bool H x W marking
        planted exudate pixels (for tests), ``geometry`` with the FOV centre and radius in pixels.
    """
    h, w = int(round(camera.height * scale)), int(round(camera.width * scale))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy = h / 2 + rng.normal(0, 0.02 * h)
    cx = w / 2 + rng.normal(0, 0.02 * w)
    r = camera.fov_frac * min(h, w) / 2
    d = np.hypot(yy - cy, xx - cx) / r
    fov = d <= 1.0

    # Retina background: orange-red, vignetting, uneven illumination, low-frequency texture.
    brightness = rng.uniform(0.75, 1.15)
    base = np.array([0.80, 0.38, 0.17], dtype=np.float32) * np.array(camera.cast, dtype=np.float32)
    if pigment is not None:
        base = base * np.asarray(pigment, dtype=np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    illum = 1.0 + rng.uniform(0.05, 0.25) * ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / r
    vignette = 1.0 - 0.38 * np.clip(d, 0, 1) ** 2
    texture = 1.0 + 0.05 * _smooth_noise(rng, h, w, 6 * scale)
    shade = (brightness * illum * vignette * texture)[..., None]
    img = base[None, None, :] * shade

    # Optic disc on the nasal side (right of the image for a right eye), macula temporal.
    side = 1.0 if laterality == "R" else -1.0
    disc = (cy + rng.normal(0, 0.03 * r), cx + side * r * rng.uniform(0.40, 0.50))
    disc_r = r * rng.uniform(0.12, 0.15)
    macula = (cy + rng.normal(0, 0.03 * r), cx - side * r * rng.uniform(0.05, 0.12))
    mac = np.exp(-(((yy - macula[0]) ** 2 + (xx - macula[1]) ** 2) / (2 * (0.12 * r) ** 2)))
    img *= (1.0 - 0.35 * mac)[..., None]
    vessels = _draw_vessels(rng, h, w, disc, r, laterality)
    vessel_col = np.array([0.50, 0.10, 0.07], dtype=np.float32) * brightness
    img = img * (1 - 0.8 * vessels[..., None]) + vessel_col * 0.8 * vessels[..., None]
    disc_cov = np.clip((disc_r - np.hypot(yy - disc[0], xx - disc[1])) / (0.25 * disc_r) + 0.5, 0, 1)
    disc_col = np.array([1.0, 0.86, 0.74], dtype=np.float32) * min(brightness * 1.05, 1.0)
    img = img * (1 - disc_cov[..., None]) + disc_col * disc_cov[..., None]

    # The planted signal.
    lesion_mask = np.zeros((h, w), dtype=bool)
    if referable:
        # severity 1 (or None) is the easy task's full load; mild eyes get few, small, faint lesions
        sev = 1.0 if severity is None else float(severity)
        n_ex = int(rng.integers(10, 26))
        if severity is not None:
            n_ex = max(1, int(round(n_ex * sev ** 2)))
        ang = rng.uniform(0, 2 * np.pi, n_ex)
        rad = r * np.sqrt(rng.uniform(0.01, 0.30, n_ex))
        centres = np.stack([macula[0] + rad * np.sin(ang), macula[1] + rad * np.cos(ang)], axis=1)
        radii = r * rng.uniform(0.018, 0.040, n_ex) * (0.5 + 0.5 * sev)
        cov = blobs(yy, xx, centres, radii) * fov
        lesion_mask = cov > 0.5
        cov = cov * (0.35 + 0.65 * sev)  # contrast: a mild exudate is faint
        ex_col = np.array([0.98, 0.90, 0.42], dtype=np.float32) * min(brightness * 1.1, 1.0)
        img = img * (1 - cov[..., None]) + ex_col * cov[..., None]
        n_ma = int(rng.integers(4, 12))
        if severity is not None:
            n_ma = int(round(n_ma * sev))
        ang = rng.uniform(0, 2 * np.pi, n_ma)
        rad = r * np.sqrt(rng.uniform(0.02, 0.5, n_ma))
        centres = np.stack([macula[0] + rad * np.sin(ang), macula[1] + rad * np.cos(ang)], axis=1)
        cov = blobs(yy, xx, centres, r * rng.uniform(0.008, 0.016, n_ma)) * fov
        img = img * (1 - cov[..., None]) + np.array([0.42, 0.05, 0.03], dtype=np.float32) * cov[..., None]
    elif rng.random() < drusen_rate:  # an occasional faint drusen-like spot on a healthy eye
        n = int(rng.integers(1, 5 if hard else 3))
        ang = rng.uniform(0, 2 * np.pi, n)
        rad = r * np.sqrt(rng.uniform(0.01, 0.3, n))
        centres = np.stack([macula[0] + rad * np.sin(ang), macula[1] + rad * np.cos(ang)], axis=1)
        strength = rng.uniform(0.4, 0.8) if hard else 0.5  # hard: some as bright as a mild exudate
        cov = strength * blobs(yy, xx, centres, r * rng.uniform(0.01, 0.025 if hard else 0.02, n)) * fov
        img = img * (1 - cov[..., None]) + np.array([0.95, 0.85, 0.45], dtype=np.float32) * cov[..., None]

    if camera.blur_sigma > 0:
        img = ndimage.gaussian_filter(img, sigma=(camera.blur_sigma * scale, camera.blur_sigma * scale, 0))
    img = img + rng.normal(0, 0.012, img.shape).astype(np.float32)
    img = img * fov[..., None]  # black surround
    rgb = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return rgb, lesion_mask, {"cy": cy, "cx": cx, "r": r, "height": h, "width": w}


def _plan(spec: DemoSpec) -> list[dict]:
    """Decide patients, eyes, visits, labels and cameras (no pixels yet)."""
    rng = np.random.default_rng(spec.seed)
    rows: list[dict] = []
    for p in range(spec.n_patients):
        pid = f"DEMO-{p + 1:05d}"
        camera = int(rng.integers(0, len(CAMERAS)))  # one camera per patient, as at one clinic visit
        sex = "F" if rng.random() < 0.5 else "M"
        age = int(rng.integers(35, 85))
        eyes = ["L", "R"] if rng.random() < 0.92 else [str(rng.choice(["L", "R"]))]
        first = rng.random() < spec.p_referable
        labels = {}
        for i, eye in enumerate(eyes):
            # fellow eyes agree more often than chance, as in diabetic retinopathy
            labels[eye] = first if i == 0 else (first if rng.random() < 0.7 else not first)
        visits = 2 if rng.random() < 0.15 else 1
        # the hard task's draws come from a generator of their own: the easy task's plan is unchanged
        extra = np.random.default_rng([spec.seed, 17, p]) if spec.hard else None
        severity = pigment = None
        if extra is not None:
            severity = float(extra.uniform(spec.min_severity, 1.0))
            shades = np.clip(1.0 + spec.pigment_sd * extra.standard_normal(3), 0.6, 1.4)
            pigment = tuple(float(v) for v in shades)
        for v in range(visits):
            for eye in eyes:
                referable = labels[eye] or (v > 0 and rng.random() < 0.2)  # may progress, never regress
                row = {"patient": pid, "eye": eye, "visit": v + 1, "referable": bool(referable),
                       "camera": camera, "sex": sex, "age": age + v}
                if extra is not None:
                    eye_sev = float(np.clip(severity * extra.uniform(0.8, 1.2), spec.min_severity, 1.0))
                    flip = bool(extra.random() < spec.label_noise)  # grader error: the written label only
                    row.update(severity=eye_sev, pigment=pigment, label_referable=bool(referable) != flip)
                rows.append(row)
    return rows


def generate_demo(root: Path, spec: DemoSpec | None = None) -> Path:
    """Write the demo cohort under ``root`` unless a complete copy is already there.

    Generation happens in a temporary sibling directory that is renamed when complete, so an
    interrupted generation never leaves a half-written cohort that later runs would trust.
    """
    from tqdm.auto import tqdm

    from medxcept.io.dicom import write_ophthalmic_photo

    spec = spec or DemoSpec()
    root = Path(root)
    if (root / "COMPLETE").exists():
        return root
    tmp = start_cohort(root, ("photos", "dicom"))
    plan = _plan(spec)
    photo_rows, dicom_rows = [], []
    study_uids: dict[tuple[str, int], str] = {}
    for i, row in enumerate(tqdm(plan, desc="generating demo cohort", unit="img", leave=False)):
        rng = np.random.default_rng([spec.seed, i])
        camera = CAMERAS[row["camera"]]
        hard = {"severity": row["severity"], "pigment": row["pigment"], "drusen_rate": spec.drusen_rate,
                "hard": True} if spec.hard else {}
        rgb, _, _ = paint_fundus(rng, camera, laterality=row["eye"], referable=row["referable"],
                                 scale=spec.size_scale, **hard)
        label = CLASSES[int(row.get("label_referable", row["referable"]))]
        stem = f"{row['patient']}_v{row['visit']}_{row['eye']}"
        if camera.fmt == "dicom":
            key = (row["patient"], row["visit"])
            study_uids.setdefault(key, f"1.2.826.0.1.3680043.10.1138.{spec.seed}.{i + 1}")
            name = f"IM{i + 1:05d}.dcm"  # PACS exports carry opaque names: identity is in the header
            maker, model = camera.name.split(" ", 1)
            write_ophthalmic_photo(
                tmp / "dicom" / name, rgb, patient_id=row["patient"], laterality=row["eye"],
                study_uid=study_uids[key], manufacturer=maker, model=model, sex=row["sex"],
                age=f"{row['age']:03d}Y", transfer="jpeg_baseline",
                series_uid=study_uids[key] + ".1", sop_uid=study_uids[key] + f".1.{i + 1}",
                patient_name=f"Demo^Patient{row['patient'][-3:]}",
            )
            dicom_rows.append({"file": name, "label": label})
        else:
            photo_rows.append({"file": save_photo(rgb, tmp / "photos", stem, camera), "patient": row["patient"], "eye": row["eye"],
                               "visit": row["visit"], "label": label, "camera": camera.name,
                               "sex": row["sex"], "age": row["age"]})
    finish_cohort(tmp, root, spec.key(), {"photos": photo_rows, "dicom": dicom_rows})
    log.info("demo cohort written to %s (%d images)", root, len(plan))
    return root


def start_cohort(root: Path, subfolders: tuple[str, ...]) -> Path:
    """A fresh temporary sibling of ``root`` with ``subfolders``, where a generator writes its cohort."""
    tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in subfolders:
        (tmp / sub).mkdir(parents=True)
    return tmp


def save_photo(rgb: np.ndarray, folder: Path, stem: str, camera: Camera) -> str:
    """Save ``rgb`` as the camera's photo format (JPEG quality 92, or PNG) and return the file name."""
    from PIL import Image

    ext = "jpg" if camera.fmt == "jpeg" else "png"
    options = {"quality": 92} if ext == "jpg" else {}
    Image.fromarray(rgb).save(folder / f"{stem}.{ext}", **options)
    return f"{stem}.{ext}"


def finish_cohort(tmp: Path, root: Path, key: str, tables: dict[str, list[dict]]) -> None:
    """Write each subfolder's ``labels.csv``, mark ``tmp`` complete and rename it to ``root`` atomically.

    When another process finished the same cohort first, its copy is kept and ``tmp`` is removed.
    """
    for sub, rows in tables.items():
        with open(tmp / sub / "labels.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    (tmp / "COMPLETE").write_text(key + "\n")
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
