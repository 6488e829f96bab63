"""Screening-style fundus photographs of many different people: look-alikes that are not copies.

Why: every eye of the demo generator (:mod:`medxcept.cohort.demo`) is painted on one vessel template,
so "different people" in tests and benchmarks were either near-copies or nothing like the real
look-alikes that trip a near-duplicate audit. Public diabetic-retinopathy collections and many
screening programmes export every photograph the same way, and that shared *frame* is what a
pair search can latch on to. This module draws each eye with its own retina and renders it the
way such exports look:

* **its own vessel tree**: procedural branching from the optic disc (two temporal arcades that
  arch around the macula, nasal and small radial trunks, each a random walk that forks into
  thinner branches), seeded per eye; the disc's position, the macula, the choroid's faint
  texture and optional lesions (microaneurysms, haemorrhages, exudates) vary too;
* **the camera's frame**: a circular field of view cut by flat chords at top and bottom (the
  sensor is narrower than the circle), a dark vignette ring inside the circle's edge, low vessel
  contrast, varied exposure and colour cast;
* **the export**: 400 x 400, a slight blur, JPEG at quality 75-92.

Left and right eyes of one person are mirror-like, not copies: the disc on the other side, the
trunks leaving it at the person's (mirrored) angles, every branch drawn anew.

:func:`screening_eye` draws one photograph, :func:`screening_people` a cohort table of many.
Never imported by production code (``tests/test_architecture.py``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

__all__ = ["ScreeningCamera", "CAMERAS", "screening_eye", "screening_jpeg", "screening_people"]


@dataclass(frozen=True)
class ScreeningCamera:
    """How one camera (or export) frames every photograph it takes.

    Parameters
    ----------
    radius : float
        Radius of the circular field of view, as a share of the image side.
    chord : float
        Distance of the flat top and bottom cuts from the centre, as a share of the side
        (below ``radius``: the circle is cut).
    vignette : float
        Width of the dark ring inside the circle's edge, as a share of the radius.
    tint : tuple of float
        Mean colour of the retina (RGB in [0, 1]) before the per-photo exposure.
    exposure : tuple of float
        Range of the per-photo gain, drawn log-uniformly: screening photographs are often dim (small
        pupils, no dilation), and a third of these are dark (gain below 0.3: the retina at 10-40 of 255).
    vessel_contrast : tuple of float
        Range of the per-photo vessel contrast (1: veins lose 55 % of their green).
    blur : tuple of float
        Range of the export's Gaussian blur (sigma, pixels of the exported image).
    texture : float
        Amplitude of the choroid's faint texture (share of the brightness).
    """

    radius: float = 0.49
    chord: float = 0.42
    vignette: float = 0.13
    tint: tuple[float, float, float] = (0.78, 0.40, 0.17)
    exposure: tuple[float, float] = (0.1, 1.3)
    vessel_contrast: tuple[float, float] = (0.35, 0.65)
    blur: tuple[float, float] = (0.5, 0.9)
    texture: float = 0.02


CAMERAS: tuple[ScreeningCamera, ...] = (
    ScreeningCamera(),
    ScreeningCamera(radius=0.485, chord=0.40, vignette=0.16, tint=(0.72, 0.36, 0.20)),
    ScreeningCamera(radius=0.495, chord=0.44, vignette=0.11, tint=(0.82, 0.45, 0.15)),
)
"""Three screening exports; :func:`screening_people` photographs most people with the first."""


def _cv2():  # type: ignore[no-untyped-def]
    import cv2  # albumentations' own dependency

    return cv2


@dataclass(frozen=True)
class _Person:
    """What the two eyes of one person share (mirrored): trunk angles, disc offset, fundus colour."""

    trunk_angles: tuple[float, ...]
    disc_dy: float
    disc_dx: float
    colour: tuple[float, float, float]


def _person(seed: int) -> _Person:
    r = np.random.default_rng([seed, 0x5C4EE7])
    # angles (radians, image coordinates, temporal = towards the macula = +x for the template):
    # superior and inferior temporal arcades (artery and vein each), nasal trunks
    angles = [-1.25 + r.normal(0, 0.12), -1.05 + r.normal(0, 0.12),
              1.25 + r.normal(0, 0.12), 1.05 + r.normal(0, 0.12),
              np.pi - 0.5 + r.normal(0, 0.2), np.pi + 0.45 + r.normal(0, 0.2), np.pi + r.normal(0, 0.3)]
    cr, cg, cb = (float(c) for c in r.uniform(0.85, 1.15, 3))
    return _Person(tuple(float(a) for a in angles), float(r.normal(0, 0.025)), float(r.normal(0, 0.02)), (cr, cg, cb))


def _tree(r: np.random.Generator, s: int, disc: np.ndarray, person: _Person) -> tuple[np.ndarray, np.ndarray]:
    """Vessel masks (veins, arteries) at ``s`` px, for a left eye (disc at ``disc``, macula to its right).

    Trunks leave the disc at the person's angles (each nudged per eye); the temporal arcades arch
    around the macula (their direction turns by about 1.6 rad over their length); every vessel is
    a random walk that tapers and forks into thinner ones.
    """
    cv2 = _cv2()
    veins = np.zeros((s, s), np.float32)
    arts = np.zeros((s, s), np.float32)
    step = s / 160.0
    todo: list[tuple[float, float, float, float, float, int, float, bool]] = []
    for k, a0 in enumerate(person.trunk_angles):
        a = a0 + r.normal(0, 0.08)  # the same person, a different eye: close, not equal
        temporal = k < 4
        length = (0.62 if temporal else 0.38) * s * r.uniform(0.85, 1.1)
        n = length / step
        width = (s / 95 if k % 2 else s / 120) * r.uniform(0.85, 1.15)
        # superior arcade (pointing up, a < 0) turns clockwise towards the macula's side, inferior the other way
        curl = -np.sign(a) * r.uniform(1.3, 1.8) / n if temporal else r.normal(0, 0.4) / n
        todo.append((disc[0], disc[1], a, width, length, 0, curl, bool(k % 2)))
    for _ in range(int(r.integers(3, 7))):  # small radial vessels around the disc
        todo.append((disc[0], disc[1], r.uniform(0, 2 * np.pi), s / 220, s * r.uniform(0.08, 0.2), 2,
                     0.0, bool(r.random() < 0.5)))
    while todo:
        x, y, ang, width, length, depth, curl, vein = todo.pop()
        n = max(3, int(length / step))
        angs = ang + np.cumsum(curl + r.normal(0, 0.06, n))
        xs = x + step * np.cumsum(np.cos(angs))
        ys = y + step * np.cumsum(np.sin(angs))
        px = np.r_[x, xs]
        py = np.r_[y, ys]
        target = veins if vein else arts
        pieces = 4  # taper: each piece thinner than the one before
        for p in range(pieces):
            a_, b_ = p * n // pieces, (p + 1) * n // pieces + 1
            if b_ - a_ < 2:
                continue
            w = width * (1 - 0.4 * p / pieces)
            pts = np.round(np.c_[px[a_:b_], py[a_:b_]] * 4).astype(np.int32)  # 2 fractional bits
            cv2.polylines(target, [pts], False, 1.0, max(1, int(round(w))), cv2.LINE_AA, 2)
        if depth < 4 and width > s / 400:
            n_fork = int(r.integers(1, 4)) if depth < 2 else int(r.integers(0, 3))
            at = r.choice(np.arange(n // 6, n), size=min(n_fork, n - n // 6), replace=False)
            for t in np.sort(at):
                sign = r.choice([-1.0, 1.0])
                todo.append((float(xs[t]), float(ys[t]), float(angs[t] + sign * r.uniform(0.4, 1.0)),
                             width * r.uniform(0.55, 0.75), length * r.uniform(0.3, 0.5) * (1 - t / n / 2),
                             depth + 1, r.normal(0, 0.6) / max(n, 1), vein))
    return np.clip(veins, 0, 1), np.clip(arts, 0, 1)


def screening_eye(
    person_seed: int,
    eye: str = "R",
    *,
    camera: ScreeningCamera = CAMERAS[0],
    lesions: bool | None = None,
    photo_seed: int = 0,
    px: int = 400,
    quality: int | None = None,
) -> np.ndarray:
    """One screening-style photograph of ``eye`` (``"R"`` or ``"L"``) of person ``person_seed``.

    Parameters
    ----------
    person_seed : int
        The person: both eyes share trunk angles (mirrored), disc offset and fundus colour.
    eye : {"R", "L"}
        Right eye: optic disc on the right of the picture; left eye: on the left.
    camera : ScreeningCamera, default ``CAMERAS[0]``
        The frame (circle, chords, vignette, colour).
    lesions : bool, optional
        Draw diabetic-retinopathy lesions; ``None``: a third of the eyes, by seed.
    photo_seed : int, default 0
        Exposure, colour cast, blur and JPEG quality of this photograph (the retina stays).
    px : int, default 400
        Side of the exported image.
    quality : int, optional
        JPEG quality; ``None``: 75-92, by ``photo_seed``.

    Returns
    -------
    numpy.ndarray
        ``px x px x 3`` uint8 RGB, decoded from the JPEG export (see :func:`screening_jpeg`).
    """
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(screening_jpeg(person_seed, eye, camera=camera, lesions=lesions,
                                                            photo_seed=photo_seed, px=px,
                                                            quality=quality))).convert("RGB"))


def screening_jpeg(
    person_seed: int,
    eye: str = "R",
    *,
    camera: ScreeningCamera = CAMERAS[0],
    lesions: bool | None = None,
    photo_seed: int = 0,
    px: int = 400,
    quality: int | None = None,
) -> bytes:
    """The JPEG file of :func:`screening_eye` (same arguments)."""
    from PIL import Image

    if eye not in ("R", "L"):
        raise ValueError(f"screening_jpeg: eye must be 'R' or 'L', got {eye!r}")
    cv2 = _cv2()
    person = _person(person_seed)
    r = np.random.default_rng([person_seed, 1 if eye == "R" else 2])  # the retina of this eye
    ph = np.random.default_rng([person_seed, 1 if eye == "R" else 2, photo_seed, 7])  # this photograph
    if lesions is None:
        lesions = bool(r.random() < 1 / 3)
    s = int(px)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    c = (s - 1) / 2.0
    rad = camera.radius * s
    # drawn as a left eye (disc on the left, macula to its right); a right eye is its mirror image
    disc = np.array([c - (0.5 + person.disc_dx + r.normal(0, 0.03)) * rad,
                     c + (person.disc_dy + r.normal(0, 0.015)) * s])
    disc_r = s * r.uniform(0.042, 0.052)
    macula = np.array([disc[0] + 5.0 * disc_r * r.uniform(0.9, 1.1), disc[1] + s * r.normal(0.01, 0.012)])

    # the fundus: colour, this eye's own choroid texture, macula, disc
    tex = cv2.GaussianBlur(r.standard_normal((s, s)).astype(np.float32), (0, 0), s / 40)
    tex /= tex.std() + 1e-6
    fine = cv2.GaussianBlur(r.standard_normal((s, s)).astype(np.float32), (0, 0), 1.0)
    fine /= fine.std() + 1e-6
    shade = 1 + camera.texture * (tex + 0.5 * fine)
    dm2 = ((xx - macula[0]) ** 2 + (yy - macula[1]) ** 2) / (2.2 * disc_r) ** 2
    shade *= 1 - 0.2 * np.exp(-dm2)
    dd = np.hypot((xx - disc[0]) / r.uniform(0.9, 1.0), (yy - disc[1]) / r.uniform(1.0, 1.12))
    disc_mask = cv2.GaussianBlur((dd < disc_r).astype(np.float32), (0, 0), disc_r / 8)
    cup = np.exp(-((dd / (0.45 * disc_r)) ** 2))
    base = np.array(camera.tint, np.float32) * np.array(person.colour, np.float32)
    img = base * shade[..., None]
    img = img * (1 - 0.7 * disc_mask[..., None]) + (0.7 * disc_mask + 0.15 * cup)[..., None] * np.array(
        [1.0, 0.85, 0.55], np.float32)

    # vessels: low contrast, veins darker and wider than arteries
    veins, arts = _tree(r, s, disc, person)
    contrast = ph.uniform(*camera.vessel_contrast)
    img *= 1 - veins[..., None] * (np.array([0.30, 0.55, 0.50], np.float32) * contrast)
    img *= 1 - arts[..., None] * (np.array([0.12, 0.35, 0.30], np.float32) * contrast)

    if lesions:
        les = np.zeros((s, s), np.float32)
        for _ in range(int(r.integers(5, 40))):  # microaneurysms and dot haemorrhages
            p = c + r.uniform(-0.8, 0.8, 2) * rad
            cv2.circle(les, (int(p[0]), int(p[1])), int(r.integers(1, 3)), 1.0, -1, cv2.LINE_AA)
        for _ in range(int(r.integers(0, 6))):  # blot haemorrhages
            p = c + r.uniform(-0.7, 0.7, 2) * rad
            cv2.ellipse(les, (int(p[0]), int(p[1])), (int(r.integers(3, 8)), int(r.integers(3, 6))),
                        float(r.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
        les = cv2.GaussianBlur(les, (0, 0), 0.8)
        img *= 1 - les[..., None] * np.array([0.3, 0.6, 0.5], np.float32)
        exu = np.zeros((s, s), np.float32)
        centre = macula + r.normal(0, 1.5 * disc_r, 2)
        for _ in range(int(r.integers(0, 25))):  # hard exudates, clustered
            p = centre + r.normal(0, 2.0 * disc_r, 2)
            cv2.circle(exu, (int(p[0]), int(p[1])), int(r.integers(1, 3)), 1.0, -1, cv2.LINE_AA)
        exu = cv2.GaussianBlur(exu, (0, 0), 0.7)
        img = img * (1 - 0.5 * exu[..., None]) + 0.5 * exu[..., None] * np.array([0.95, 0.85, 0.4], np.float32)
    if eye == "R":
        img = img[:, ::-1]

    # the camera: uneven illumination, exposure, colour cast, the dark ring inside the circle's edge,
    # the circle cut by chords (anti-aliased edges), sensor noise; then the export: blur, JPEG
    rho = np.hypot(xx - c, yy - c) / rad
    tilt = ph.uniform(-0.08, 0.08, 2)
    illum = 1.0 - 0.25 * rho ** 2 + tilt[0] * (xx - c) / rad + tilt[1] * (yy - c) / rad
    gain = np.exp(ph.uniform(*np.log(camera.exposure))) * ph.uniform(0.9, 1.1, 3).astype(np.float32)
    ring = np.clip((rho - (1 - camera.vignette)) / camera.vignette, 0, 1)
    edge = np.clip((1 - rho) * rad + 0.5, 0, 1) * np.clip(camera.chord * s - np.abs(yy - c) + 0.5, 0, 1)
    img = img * ((illum * (1 - 0.8 * ring ** 1.6) * edge)[..., None] * gain)
    img = np.clip(img, 0, 1) ** np.float32(ph.uniform(0.85, 1.2))
    img += ph.normal(0, 0.004, (s, s, 1)).astype(np.float32) * edge[..., None]
    img = cv2.GaussianBlur(img, (0, 0), ph.uniform(*camera.blur))
    u8 = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    q = int(quality) if quality is not None else int(ph.integers(75, 93))
    Image.fromarray(u8).save(buf, format="JPEG", quality=q)
    return buf.getvalue()


def screening_people(n_people: int, seed: int = 0, *, both_eyes: bool = True,
                     other_cameras: float = 0.2) -> list[dict[str, object]]:
    """Who is in a screening cohort: one row per photograph (``person``, ``eye``, ``person_seed``, ``camera``).

    Parameters
    ----------
    n_people : int
        Different people (each its own retinas).
    seed : int, default 0
        Person ``k`` has the seed ``seed * 1_000_003 + k``.
    both_eyes : bool, default True
        Both eyes of each person (``R`` then ``L``); else one eye, alternating.
    other_cameras : float, default 0.2
        Share of people photographed with one of the other :data:`CAMERAS` (the rest: the first).

    Returns
    -------
    list of dict
        Pass ``person_seed``, ``eye`` and ``camera`` to :func:`screening_eye`.
    """
    rng = np.random.default_rng([seed, 0xCA])
    rows: list[dict[str, object]] = []
    for k in range(int(n_people)):
        cam = CAMERAS[0] if rng.random() >= other_cameras else CAMERAS[1 + int(rng.integers(0, len(CAMERAS) - 1))]
        eyes = ("R", "L") if both_eyes else ("RL"[k % 2],)
        for e in eyes:
            rows.append({"person": k, "eye": e, "person_seed": seed * 1_000_003 + k, "camera": cam})
    return rows
