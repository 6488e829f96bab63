"""The graded demo cohort: synthetic fundus photographs with planted lesions whose extent grows with the grade.

The binary demo (:mod:`medxcept.cohort.demo`) plants one kind of signal; diabetic-retinopathy grading is
ordinal, so this variant paints each eye at a grade ``0..k-1`` (ICDR-like names, 3 to 5 grades)
with lesions of increasing extent, on the same simulated fundus (:func:`medxcept.cohort.demo.paint_fundus`,
drawn as a healthy eye first):

* grade 0 (``none``): nothing planted (an occasional faint drusen-like spot, as in the binary demo);
* grade 1 (``mild``): a few dark red dots (microaneurysm/haemorrhage-like);
* grade 2 (``moderate``): more red dots and yellow exudate-like patches around the macula;
* grade 3 (``severe``): many of both, larger blot haemorrhages;
* grade 4 (``proliferative``): all of that and a pale fibrovascular tuft near the disc.

Lesions are drawn large enough to survive the 71-px preprocessing of the quick settings.
Patients have both eyes (a few one eye); fellow eyes share the grade more often than chance, so the
worst-eye patient grade differs from the eye grades. Cameras (two of the demo's, JPEG and PNG) are
chosen independently of the grade: no acquisition shortcut. The cohort is written as a
grade-per-image label table, ``photos/labels.csv`` (file, patient, eye, grade, camera), the layout
of ``cohorts/example_grades_csv.yaml``. Generation is deterministic for the spec, cached under
``$MEDXCEPT_CACHE/demo_graded/<key>`` and reused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from medxcept.cohort.demo import (
    CAMERAS,
    blobs,
    cache_dir,
    finish_cohort,
    paint_fundus,
    save_photo,
    start_cohort,
)

__all__ = ["GRADE_NAMES", "GradedDemoSpec", "paint_graded", "generate_graded_demo", "graded_demo_root"]

log = logging.getLogger(__name__)

#: ICDR-like grade names, mildest first (the first ``n_grades`` are used).
GRADE_NAMES = ("none", "mild", "moderate", "severe", "proliferative")
GENERATOR_VERSION = 1

# (red dots, exudates, blot haemorrhages, tuft) per grade: (min, max) counts
_LESIONS = (
    ((0, 0), (0, 0), (0, 0), False),
    ((3, 6), (0, 0), (0, 0), False),
    ((6, 10), (6, 12), (0, 0), False),
    ((10, 16), (14, 24), (2, 4), False),
    ((12, 18), (16, 26), (3, 5), True),
)


@dataclass(frozen=True)
class GradedDemoSpec:
    """Size, grades and seed of the graded demo cohort.

    Args:
        n_patients: synthetic patients (about 1.9 images each).
        n_grades: 3 (none, mild, moderate) to 5 (the ICDR scale).
        seed: the same seed always gives the same files.
        size_scale: multiplies the cameras' canvas sizes (0.5: about 160-190 px wide, plenty for 71-96 px runs).
        grade_shares: share of patients per worst grade (default: decreasing, like a screening population).
    """

    n_patients: int = 90
    n_grades: int = 3
    seed: int = 11
    size_scale: float = 0.5
    grade_shares: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if not 3 <= self.n_grades <= 5:
            raise ValueError(f"n_grades={self.n_grades} must be 3, 4 or 5")
        if self.n_patients < 2 * self.n_grades:
            raise ValueError(f"n_patients={self.n_patients} is too few for {self.n_grades} grades")
        if self.grade_shares and (len(self.grade_shares) != self.n_grades or min(self.grade_shares) <= 0):
            raise ValueError(f"grade_shares={list(self.grade_shares)} must be {self.n_grades} positive numbers")

    @property
    def classes(self) -> tuple[str, ...]:
        return GRADE_NAMES[: self.n_grades]

    def shares(self) -> np.ndarray:
        raw = np.asarray(self.grade_shares or [0.9 ** g + (0.25 if g == 0 else 0) for g in range(self.n_grades)])
        return raw / raw.sum()

    def key(self) -> str:
        shares = "-".join(f"{s:.3f}" for s in self.shares())
        return (f"v{GENERATOR_VERSION}-n{self.n_patients}-g{self.n_grades}-s{self.seed}-x{self.size_scale:g}"
                f"-p{shares}")


def graded_demo_root(spec: GradedDemoSpec | None = None) -> Path:
    """The directory holding the graded demo cohort for ``spec`` (generated if absent)."""
    spec = spec or GradedDemoSpec()
    return generate_graded_demo(cache_dir() / "demo_graded" / spec.key(), spec)


def paint_graded(rng: np.random.Generator, camera_index: int, *, laterality: str, grade: int,
                 scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic fundus photograph at ``grade``; returns ``(rgb uint8, lesion mask bool)``."""
    camera = CAMERAS[camera_index]
    rgb, _, geo = paint_fundus(rng, camera, laterality=laterality, referable=False, scale=scale)
    img = rgb.astype(np.float32) / 255.0
    h, w = rgb.shape[:2]
    cy, cx, r = geo["cy"], geo["cx"], geo["r"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fov = np.hypot(yy - cy, xx - cx) <= r * 0.97
    side = 1.0 if laterality == "R" else -1.0
    macula = (cy, cx - side * r * 0.08)
    lesions = np.zeros((h, w), dtype=bool)
    dots, exudates, blots, tuft = _LESIONS[grade]

    def paint(n_range: tuple[int, int], spread: float, radius: tuple[float, float], colour: tuple, centre=macula,
              strength: float = 1.0) -> None:
        nonlocal img, lesions
        n = int(rng.integers(n_range[0], n_range[1] + 1)) if n_range[1] else 0
        if n == 0:
            return
        ang = rng.uniform(0, 2 * np.pi, n)
        rad = r * np.sqrt(rng.uniform(0.005, spread, n))
        centres = np.stack([centre[0] + rad * np.sin(ang), centre[1] + rad * np.cos(ang)], axis=1)
        cov = ndimage.gaussian_filter(blobs(yy, xx, centres, r * rng.uniform(*radius, n)), 0.6 * scale) * fov
        cov = strength * np.clip(cov, 0, 1)
        img = img * (1 - cov[..., None]) + np.asarray(colour, dtype=np.float32) * cov[..., None]
        lesions |= cov > 0.4

    paint(dots, 0.45, (0.022, 0.035), (0.35, 0.04, 0.03))
    paint(exudates, 0.22, (0.028, 0.050), (0.98, 0.88, 0.40))
    paint(blots, 0.40, (0.060, 0.085), (0.30, 0.03, 0.02))
    if tuft:
        disc = (cy, cx + side * r * 0.45)
        paint((6, 9), 0.03, (0.035, 0.05), (0.95, 0.80, 0.78), centre=disc, strength=0.8)
    img = img * fov[..., None] + (rgb.astype(np.float32) / 255.0) * (~fov[..., None])
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), lesions


def _plan(spec: GradedDemoSpec) -> list[dict]:
    """Patients, eyes, grades and cameras (no pixels)."""
    rng = np.random.default_rng(spec.seed)
    k = spec.n_grades
    rows: list[dict] = []
    for p in range(spec.n_patients):
        pid = f"GRADED-{p + 1:05d}"
        camera = int(rng.integers(0, 2))  # JPEG or PNG camera, independent of the grade
        worst = int(rng.choice(k, p=spec.shares()))
        eyes = ["L", "R"] if rng.random() < 0.92 else [str(rng.choice(["L", "R"]))]
        grades = {e: worst for e in eyes}
        if len(eyes) == 2 and worst > 0 and rng.random() < 0.45:  # the fellow eye is milder
            other = eyes[int(rng.integers(0, 2))]
            grades[other] = int(rng.integers(max(worst - 2, 0), worst))
        for eye in eyes:
            rows.append({"patient": pid, "eye": eye, "grade": grades[eye], "camera": camera})
    return rows


def generate_graded_demo(root: Path, spec: GradedDemoSpec | None = None) -> Path:
    """Write the graded demo under ``root`` unless a complete copy is there (atomic, like the demo)."""
    spec = spec or GradedDemoSpec()
    root = Path(root)
    if (root / "COMPLETE").exists():
        return root
    tmp = start_cohort(root, ("photos",))
    rows = []
    for i, row in enumerate(_plan(spec)):
        rng = np.random.default_rng([spec.seed, i])
        rgb, _ = paint_graded(rng, row["camera"], laterality=row["eye"], grade=row["grade"], scale=spec.size_scale)
        camera = CAMERAS[row["camera"]]
        name = save_photo(rgb, tmp / "photos", f"{row['patient']}_{row['eye']}", camera)
        rows.append({"file": name, "patient": row["patient"], "eye": row["eye"],
                     "grade": spec.classes[row["grade"]], "camera": camera.name})
    finish_cohort(tmp, root, spec.key(), {"photos": rows})
    log.info("graded demo cohort written to %s (%d images)", root, len(rows))
    return root
