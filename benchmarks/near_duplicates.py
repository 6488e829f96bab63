"""Does the near-duplicate audit find augmented copies, and leave look-alike eyes alone? How fast is it?

A measurement on a stress set built here (no data outside the repository):

* **real-photo look-alikes**: scikit-image's real fundus photograph (``skimage.data.retina``) with
  its vessels inpainted away and a *different* random vessel tree drawn on the same background
  (same camera, colour, disc, vignetting, black circular border), half of them mirrored (left vs
  right eye), some with a lens flare, and a Ben Graham-preprocessed variant of each (as in public
  challenge crops); plus the real photograph itself;
* **demo look-alikes**: the demo generator's eyes (three cameras, both eyes);
* **copies** of the real photograph, of real-photo look-alikes and of demo eyes under rotation up to
  +-45 deg, shift up to 20 %, zoom 0.8-1.25, shear up to 0.2 rad, horizontal/vertical flip, resize to
  224-512 px, JPEG quality 50-95, brightness/contrast +-20 %, one at a time and all combined.

Every image goes through the pipeline's preprocessing (FOV crop, ``--px``), then the audit's pair
search. ``before`` = the former rule (pHash/dHash candidates verified by in-place detail
agreement, :func:`medxcept.integrity.audit.near_duplicate_pairs`); ``after`` = the current audit
(:func:`medxcept.integrity.audit.verified_near_pairs`: keypoints + one affine transform + aligned detail).
It prints, for each: the share of copies found per transform, the false pairs among distinct images
(and per 10,000 images), the inlier distributions of copies vs look-alike candidates (the margins
of :data:`medxcept.integrity.duplicates.MIN_INLIERS`), combined copies hidden among 300 look-alikes of their
kind (the candidate search must single them out: in the 40-image cohorts every voting pair is
verified, :data:`medxcept.integrity.duplicates.PAIR_BUDGET`), and the audit time at several cohort sizes with
the fitted growth exponent.

Usage::

    python benchmarks/near_duplicates.py --scale-sizes      # copies and look-alikes (~7 min on 2 cores)
    python benchmarks/near_duplicates.py                    # ... and the large cohort (20 min more the first time)
    python benchmarks/near_duplicates.py --quick            # smoke run (a few images)
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medxcept.cohort.demo import CAMERAS, paint_fundus  # noqa: E402
from medxcept.config import PreprocessConfig  # noqa: E402
from medxcept.images.preprocess import preprocess  # noqa: E402
from medxcept.integrity import duplicates  # noqa: E402
from medxcept.integrity.audit import fingerprints, near_duplicate_pairs, verified_near_pairs  # noqa: E402

# ------------------------------------------------------------------ the stress set


def _real_background(size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The real retina at ``size`` px and the same photograph with its vessels inpainted away."""
    from skimage import data

    rgb = cv2.resize(data.retina(), (size, size), interpolation=cv2.INTER_AREA)
    g = rgb[:, :, 1]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))
    tophat = cv2.morphologyEx(g, cv2.MORPH_BLACKHAT, kernel)
    fov = g > 15
    vessels = (tophat > np.percentile(tophat[fov], 80)) & fov
    vessels = cv2.dilate(vessels.astype(np.uint8), np.ones((3, 3), np.uint8))
    clean = cv2.inpaint(rgb, vessels, 5, cv2.INPAINT_TELEA)
    # blur away the photograph's own fine texture (it would make every look-alike the same eye);
    # colour, disc, vignetting and border stay
    clean = cv2.GaussianBlur(clean, (0, 0), 4)
    clean[rgb.max(axis=2) < 10] = 0
    return rgb, clean


def _draw_tree(rng: np.random.Generator, img: np.ndarray, disc: tuple[float, float]) -> np.ndarray:
    """A random branching vessel tree leaving the disc, drawn darker onto ``img``."""
    out = img.astype(np.float32)
    noise = cv2.GaussianBlur(rng.standard_normal(img.shape[:2]).astype(np.float32), (0, 0), 2.0)
    out *= (1 + 0.15 * noise / (np.abs(noise).max() + 1e-6))[..., None]  # this eye's own faint texture
    mask = np.zeros(img.shape[:2], np.float32)
    h = img.shape[0]

    def grow(x: float, y: float, ang: float, width: float, length: int, depth: int) -> None:
        pts = [(x, y)]
        for _ in range(length):
            ang += rng.normal(0, 0.18)
            x += 6 * np.cos(ang)
            y += 6 * np.sin(ang)
            pts.append((x, y))
            if depth < 3 and rng.random() < 0.07:
                grow(x, y, ang + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0), width * 0.7, length // 2, depth + 1)
        cv2.polylines(mask, [np.round(np.array(pts)).astype(np.int32)], False, 1.0, max(1, int(round(width))))

    for _ in range(int(rng.integers(6, 10))):
        grow(disc[0], disc[1], rng.uniform(0, 2 * np.pi), rng.uniform(2.5, 5.0), int(rng.integers(25, 45)), 0)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0)
    dark = np.array([0.55, 0.35, 0.45], np.float32)
    out = out * (1 - mask[..., None] * (1 - dark))
    if rng.random() < 0.3:  # a lens flare
        yy, xx = np.mgrid[0:h, 0:h]
        cy, cx = rng.uniform(0.2, 0.8, 2) * h
        out += 70 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.08 * h) ** 2))[..., None]
    out[img.max(axis=2) < 10] = 0  # keep the black border
    return np.clip(out, 0, 255).astype(np.uint8)


def _ben_graham(img: np.ndarray) -> np.ndarray:
    """Ben Graham's challenge preprocessing: ``4 * (img - blur) + 128`` inside a circular border."""
    x = img.astype(np.float32)
    out = 4 * (x - cv2.GaussianBlur(x, (0, 0), img.shape[0] / 30)) + 128
    fov = img.max(axis=2) > 10
    out[~fov] = 0
    return np.clip(out, 0, 255).astype(np.uint8)


def real_lookalikes(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` distinct eyes on the real photograph's background (half mirrored, a third Ben Graham'ed)."""
    _, clean = _real_background()
    g = cv2.GaussianBlur(clean[:, :, 1].astype(np.float32), (0, 0), 15)
    dy, dx = np.unravel_index(np.argmax(g), g.shape)
    out = []
    for k in range(n):
        img = _draw_tree(rng, clean, (float(dx), float(dy)))
        if k % 2:
            img = img[:, ::-1].copy()
        if k % 3 == 2:
            img = _ben_graham(img)
        out.append(img)
    return out


def demo_lookalikes(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [paint_fundus(rng, CAMERAS[k % 3], laterality="LR"[k % 2], referable=bool(k % 5 == 0))[0]
            for k in range(n)]


def gray_lookalikes(n: int, rng: np.random.Generator, px: int = 384) -> list[np.ndarray]:
    """``n`` distinct chest-radiograph-like gray images sharing one layout (a stand-in for gray DICOM).

    All share the frame, collimation border, lung fields, mediastinum, ribs and a burnt-in marker;
    each has its own fine structure (a branching vascular pattern in the lungs, faint texture), and
    every other one is heavily CLAHE'd.
    """
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32) / px
    base = 0.62 - 0.30 * (np.exp(-(((xx - 0.32) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
                          + np.exp(-(((xx - 0.68) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2)))
    base += 0.25 * np.exp(-(((xx - 0.5) / 0.06) ** 2))  # mediastinum / spine
    for k in range(8):  # ribs: the same for everyone
        base += 0.06 * np.exp(-((yy - (0.22 + 0.07 * k + 0.08 * (xx - 0.5) ** 2 * 4)) / 0.012) ** 2) * (np.abs(xx - 0.5) > 0.08)
    base = base.astype(np.float32)
    frame = (xx > 0.04) & (xx < 0.96) & (yy > 0.03) & (yy < 0.97)
    out = []
    for k in range(n):
        img = base.copy()
        noise = cv2.GaussianBlur(rng.standard_normal((px, px)).astype(np.float32), (0, 0), 1.2)
        img += 0.02 * noise / (np.abs(noise).std() + 1e-6) * 0.5
        mask = np.zeros((px, px), np.float32)
        for cx in (0.32, 0.68):  # a vascular tree in each lung, from the hilum
            for _ in range(int(rng.integers(6, 10))):
                x, y, ang = cx * px, 0.45 * px, rng.uniform(0, 2 * np.pi)
                angs = ang + np.cumsum(rng.normal(0, 0.25, 30))
                xs = x + px / 110 * np.cumsum(np.cos(angs))
                ys = y + px / 110 * np.cumsum(np.sin(angs))
                cv2.polylines(mask, [np.round(np.c_[xs, ys]).astype(np.int32)], False, 1.0, 1)
        img += 0.12 * cv2.GaussianBlur(mask, (0, 0), 0.8)
        img = np.clip(img, 0, 1) * frame
        u8 = np.rint(img * 255).astype(np.uint8)
        cv2.putText(u8, "L", (int(0.08 * px), int(0.12 * px)), cv2.FONT_HERSHEY_SIMPLEX, px / 400, 255, 2)
        if k % 2:
            u8 = cv2.createCLAHE(clipLimit=4.0, tileGridSize=(8, 8)).apply(u8) * frame.astype(np.uint8)
        out.append(np.repeat(u8[..., None], 3, axis=2))
    return out


# ------------------------------------------------------------------ copies


def _warp(a: np.ndarray, rot: float = 0, shift: tuple[float, float] = (0, 0), zoom: float = 1, shear: float = 0) -> np.ndarray:
    h, w = a.shape[:2]
    c = np.array([w / 2, h / 2])
    r = np.deg2rad(rot)
    lin = zoom * np.array([[np.cos(r), -np.sin(r + shear)], [np.sin(r), np.cos(r + shear)]])
    t = c + np.array(shift) * [w, h] - lin @ c
    return cv2.warpAffine(a, np.hstack([lin, t[:, None]]), (w, h), flags=cv2.INTER_LINEAR)


def _resize(a: np.ndarray, px: int) -> np.ndarray:
    return cv2.resize(a, (px, px), interpolation=cv2.INTER_AREA if px < a.shape[0] else cv2.INTER_LINEAR)


def _jpeg(a: np.ndarray, q: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=int(q))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _bc(a: np.ndarray, b: float, c: float, keep: float = 0.0) -> np.ndarray:
    """Brightness ``b`` (share of the full range, added) and contrast ``c`` (about mid-grey) of uint8 ``a``.

    ``keep`` > 0 caps the darkening relative to the image: the 99th percentile of the result's luma is
    at least ``keep`` times the input's (where it would fall lower, the shift is raised just enough).
    """
    x = a.astype(np.float32)
    out = (x - 128) * (1 + c) + 128 + 255 * b
    if keep:
        luma = x @ np.array([0.299, 0.587, 0.114], np.float32) if x.ndim == 3 else x
        p99 = float(np.percentile(luma, 99))
        floor = keep * p99 - (1 + c) * p99  # the shift that leaves the 99th percentile at keep x its level
        if 128 - 128 * (1 + c) + 255 * b < floor:
            out = x * (1 + c) + floor
    return np.clip(out, 0, 255).astype(np.uint8)


KEEP_RETINA = 0.5
"""The screening set's combined copies keep at least this share of their retina's brightness (see :func:`_combo`)."""


def _combo(a: np.ndarray, rng: np.random.Generator, keep: float = 0.0) -> np.ndarray:
    """All transforms combined: rotation, shift, zoom, shear, flips, resize, brightness/contrast, JPEG.

    ``keep`` (the screening set: :data:`KEEP_RETINA`) caps the darkening relative to the photograph
    (:func:`_bc`): a brightness of -20 % of the full range (-51 grey levels) with a contrast stretch about
    mid-grey turns a dim screening photograph (its retina at 10-40 of 255) black, with no retina left to
    be a copy of (8 of the 60 copies at 3,000 eyes had a luma 99th percentile of 0-1). A re-export keeps
    a visible retina, so those copies now keep at least half their 99th percentile; the random draws are
    the same, and the cap never binds on a photograph whose 99th percentile is 110 or more (every other
    set here: their copies are unchanged).
    """
    a = _warp(a, rng.uniform(-45, 45), tuple(rng.uniform(-0.2, 0.2, 2)), rng.uniform(0.8, 1.25), rng.uniform(-0.2, 0.2))
    if rng.random() < 0.5:
        a = a[:, ::-1]
    if rng.random() < 0.3:
        a = a[::-1]
    a = _resize(np.ascontiguousarray(a), int(rng.integers(224, 513)))
    a = _bc(a, rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2), keep)
    return _jpeg(a, int(rng.integers(50, 96)))


def _combo_exposure(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """:func:`_combo` with brightness and contrast relative to the photograph's exposure.

    :func:`_combo` shifts brightness by up to 20 % of the full range (51 grey levels): a dim
    screening photograph (its retina at 10-40 of 255) then comes out black or washed-out grey, no
    longer a copy of anything. Here brightness is a gain of +-20 % and contrast is stretched +-20 %
    about the field of view's mean; the geometry, flips, resize and JPEG are :func:`_combo`'s.
    """
    a = _warp(a, rng.uniform(-45, 45), tuple(rng.uniform(-0.2, 0.2, 2)), rng.uniform(0.8, 1.25), rng.uniform(-0.2, 0.2))
    if rng.random() < 0.5:
        a = a[:, ::-1]
    if rng.random() < 0.3:
        a = a[::-1]
    a = _resize(np.ascontiguousarray(a), int(rng.integers(224, 513)))
    x = a.astype(np.float32)
    fov = a.max(axis=2) > 5
    m = float(x[fov].mean()) if fov.any() else 0.0
    x = ((x * (1 + rng.uniform(-0.2, 0.2)) - m) * (1 + rng.uniform(-0.2, 0.2)) + m) * fov[..., None]
    return _jpeg(np.clip(x, 0, 255).astype(np.uint8), int(rng.integers(50, 96)))


TRANSFORMS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "rotate +-45": lambda a, r: _warp(a, rot=r.choice([-1, 1]) * r.uniform(20, 45)),
    "shift 20%": lambda a, r: _warp(a, shift=tuple(r.choice([-1, 1], 2) * r.uniform(0.1, 0.2, 2))),
    "zoom 0.8-1.25": lambda a, r: _warp(a, zoom=r.choice([0.8, 1.25])),
    "shear 0.2": lambda a, r: _warp(a, shear=r.choice([-0.2, 0.2])),
    "hflip": lambda a, r: a[:, ::-1].copy(),
    "vflip": lambda a, r: a[::-1].copy(),
    "resize 224-512": lambda a, r: _resize(a, int(r.choice([224, 512]))),
    "jpeg q50": lambda a, r: _jpeg(a, 50),
    "bright/contrast 20%": lambda a, r: _bc(a, r.choice([-0.2, 0.2]), r.choice([-0.2, 0.2])),
    "all combined": _combo,
}


# ------------------------------------------------------------------ a large cohort, cheaply


def _clahe_heavy(img: np.ndarray) -> np.ndarray:
    """Heavy CLAHE on the lightness (clip 4, 8x8 tiles), as in some public challenge crops."""
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    lab[:, :, 0] = cv2.createCLAHE(clipLimit=4.0, tileGridSize=(8, 8)).apply(lab[:, :, 0])
    out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    out[img.max(axis=2) < 10] = 0
    return out


class _Painter:
    """Distinct eyes on the real photograph's background at the model's size, a few ms each.

    Every eye has the same background (camera, colour, disc, vignetting, border) and the same two
    main arcades (per laterality); its own fine vessel tree and faint texture; half are mirrored
    (a right eye of another person beside left eyes), a third Ben Graham'ed, a sixth heavily
    CLAHE'd, some with a lens flare.
    """

    def __init__(self, px: int) -> None:
        real, clean = _real_background()
        prep = _prep([real, clean], px)
        self.px = px
        self.clean = prep[1]
        g = cv2.GaussianBlur(self.clean[:, :, 1].astype(np.float32), (0, 0), px / 34)
        dy, dx = np.unravel_index(np.argmax(g), g.shape)
        self.disc = (float(dx), float(dy))
        self.border = self.clean.max(axis=2) < 10
        self.yy, self.xx = np.mgrid[0:px, 0:px].astype(np.float32)
        arcade_rng = np.random.default_rng(12345)  # the shared arcades: the same for every eye
        self.arcades = np.zeros((px, px), np.float32)
        for sign in (-1, 1):
            pts, ang, (x, y) = [], np.pi + sign * 0.5, self.disc
            for _ in range(40):
                ang += -sign * 0.045 + arcade_rng.normal(0, 0.02)
                x, y = x + px / 85 * np.cos(ang), y + px / 85 * np.sin(ang)
                pts.append((x, y))
            cv2.polylines(self.arcades, [np.round(np.array(pts)).astype(np.int32)], False, 1.0,
                          max(2, round(px / 80)))

    def __call__(self, rng: np.random.Generator, k: int) -> np.ndarray:
        px = self.px
        out = self.clean.astype(np.float32)
        noise = cv2.GaussianBlur(rng.standard_normal((px, px)).astype(np.float32), (0, 0), 1.0)
        out *= (1 + 0.12 * noise / (np.abs(noise).max() + 1e-6))[..., None]
        mask = self.arcades.copy()
        step = px / 85
        todo = [(self.disc[0], self.disc[1], rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 2.2) * px / 224,
                 int(rng.integers(20, 40)), 0) for _ in range(int(rng.integers(5, 9)))]
        while todo:  # a random walk per vessel (vectorized), branches queued
            x, y, ang, width, length, depth = todo.pop()
            angs = ang + np.cumsum(rng.normal(0, 0.2, length))
            xs = x + step * np.cumsum(np.cos(angs))
            ys = y + step * np.cumsum(np.sin(angs))
            pts = np.round(np.c_[np.r_[x, xs], np.r_[y, ys]]).astype(np.int32)
            cv2.polylines(mask, [pts], False, 1.0, max(1, int(round(width))))
            if depth < 3:
                for t in np.nonzero(rng.random(length) < 0.08)[0]:
                    todo.append((xs[t], ys[t], angs[t] + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0),
                                 width * 0.7, length // 2, depth + 1))
        mask = cv2.GaussianBlur(mask, (0, 0), 0.7)
        out = out * (1 - np.clip(mask, 0, 1)[..., None] * (1 - np.array([0.55, 0.35, 0.45], np.float32)))
        if rng.random() < 0.3:  # a lens flare
            cy, cx = rng.uniform(0.2, 0.8, 2) * px
            out += 70 * np.exp(-((self.yy - cy) ** 2 + (self.xx - cx) ** 2) / (2 * (0.08 * px) ** 2))[..., None]
        out[self.border] = 0
        img = np.clip(out, 0, 255).astype(np.uint8)
        if k % 2:
            img = np.ascontiguousarray(img[:, ::-1])
        if k % 3 == 2:
            img = _ben_graham(img)
        elif k % 6 == 1:
            img = _clahe_heavy(img)
        return img


def scale_cohort(n: int, px: int, seed: int, n_demo: int = 300, copy_every: int = 100,
                 folder: Path = Path("/tmp")) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``n`` preprocessed images (a uint8 memory map, cached on disk) and the planted copy pairs.

    Distinct real-photo look-alikes (:class:`_Painter`), ``n_demo`` demo eyes spread among them,
    and every ``copy_every``-th image a copy (all transforms combined) of a random earlier one, so
    that every prefix of the cohort holds look-alikes and copies in the same proportions.
    """
    path = folder / f"medxcept-nd-scale-{n}-{px}-{seed}-{n_demo}-{copy_every}.npy"
    rng = np.random.default_rng(seed)
    is_copy = (np.arange(n) % copy_every) == copy_every - 1
    src = np.array([rng.integers(0, k) if is_copy[k] else -1 for k in range(n)])
    src = np.array([s if s < 0 or not is_copy[s] else s - 1 for s in src])  # never a copy of a copy
    planted = [(int(s), k) for k, s in enumerate(src) if s >= 0]
    if path.exists():
        return np.load(path, mmap_mode="r"), planted
    mm = np.lib.format.open_memmap(str(path) + ".part", mode="w+", dtype=np.uint8, shape=(n, px, px, 3))
    paint = _Painter(px)
    demo_at = set(np.linspace(0, n - 1, n_demo, dtype=int).tolist()) if n_demo else set()
    for k in range(n):
        r = np.random.default_rng([seed, k])
        if src[k] >= 0:
            mm[k] = _prep([_combo(np.asarray(mm[src[k]]), r)], px)[0]
        elif k in demo_at:
            mm[k] = _prep(demo_lookalikes(1, r), px)[0]
        else:
            mm[k] = paint(r, k)
    mm.flush()
    del mm
    os.replace(str(path) + ".part", path)
    return np.load(path, mmap_mode="r"), planted


# ------------------------------------------------------------------ measurement


def _prep(imgs: list[np.ndarray], px: int, modality: str = "fundus") -> np.ndarray:
    cfg = PreprocessConfig(image_px=px)
    return np.stack([preprocess(a.astype(np.float32) / 255, cfg, modality=modality) for a in imgs])


def _pairs(images: np.ndarray) -> tuple[set, set, dict]:
    fp = fingerprints(images)
    before = near_duplicate_pairs(fp)
    after = verified_near_pairs(fp)
    return (set(zip(before["i"], before["j"], strict=True)), set(zip(after["i"], after["j"], strict=True)), fp)


def measure_copies(originals: list[np.ndarray], px: int, rng: np.random.Generator, name: str,
                   modality: str = "fundus") -> list[float]:
    base = _prep(originals, px, modality)
    k = len(originals)
    print(f"\n== copies of {k} {name} at {px} px: share found          before   after   inliers min/q05"
          "   missed: not a candidate / candidate failing verification (of which verifiable)")
    allres = []
    for tname, fn in TRANSFORMS.items():
        copies = _prep([np.ascontiguousarray(fn(a, rng)) for a in originals], px, modality)
        imgs = np.concatenate([base, copies])
        b, a, fp = _pairs(imgs)
        want = [(i, k + i) for i in range(k)]
        rb, ra = np.mean([w in b for w in want]), np.mean([w in a for w in want])
        v = duplicates.verify_pairs(fp, np.arange(k), np.arange(k) + k, np.zeros(k, bool))
        vf = duplicates.verify_pairs(fp, np.arange(k), np.arange(k) + k, np.ones(k, bool))
        inl = np.maximum(v["inliers"].to_numpy(), vf["inliers"].to_numpy())
        verifiable = v["confirmed"].to_numpy(bool) | vf["confirmed"].to_numpy(bool)
        cand = duplicates.LAST_CANDIDATES.get("pairs")
        cs = set(zip(cand["i"].tolist(), cand["j"].tolist(), strict=True)) if cand is not None else set()
        missed = [t for t, w in enumerate(want) if w not in a]
        not_cand = [t for t in missed if want[t] not in cs]
        not_cand_ok = sum(bool(verifiable[t]) for t in not_cand)
        allres.append(ra)
        print(f"  {tname:<46}{rb:>7.0%}{ra:>8.0%}   {inl.min():>4d} / {np.quantile(inl, 0.05):>5.1f}"
              f"   {len(not_cand):>3} ({not_cand_ok} verifiable) / {len(missed) - len(not_cand):>3}")
    return allres


def measure_copies_among(originals: list[np.ndarray], others: list[np.ndarray], px: int, rng: np.random.Generator,
                         name: str, modality: str = "fundus") -> float:
    """Copies under all transforms combined, hidden among ``others`` (distinct look-alikes of the same kind).

    The harder setting: the candidate search must single the copy out among many partners that
    look alike (in the 40-image cohorts above, every pair is verified)."""
    base = _prep(originals, px, modality)
    k = len(originals)
    copies = _prep([np.ascontiguousarray(_combo(a, rng)) for a in originals], px, modality)
    imgs = np.concatenate([base, copies, _prep(others, px, modality)])
    _, a, fp = _pairs(imgs)
    want = {(i, k + i) for i in range(k)}
    cand = duplicates.LAST_CANDIDATES.get("pairs")
    cs = set(zip(cand["i"].tolist(), cand["j"].tolist(), strict=True)) if cand is not None else set()
    found = len(want & a) / k
    print(f"  {name}: {found:.0%} of {k} combined copies found among {len(imgs)} images "
          f"({duplicates.partners_per_image(len(imgs))} partners verified per image); "
          f"{len(want - cs)} never a candidate; false pairs {len(a - want)}")
    return found


def measure_lookalikes(images: list[np.ndarray], px: int, name: str, modality: str = "fundus") -> None:
    imgs = _prep(images, px, modality)
    n = len(imgs)
    t0 = time.perf_counter()
    b, a, fp = _pairs(imgs)
    dt = time.perf_counter() - t0
    cand = duplicates.geometric_pairs(fp)
    print(f"\n== {n} distinct {name} at {px} px ({dt:.1f} s): false pairs before {len(b)} "
          f"({len(b) * 1e4 / n:.0f} per 10,000 images), after {len(a)} ({len(a) * 1e4 / n:.1f} per 10,000)")
    if len(cand):
        inl = cand["inliers"].to_numpy()
        agr = cand["aligned_agreement"].dropna().to_numpy()
        print(f"  {len(cand)} keypoint candidates: inliers max {inl.max()}, q99 {np.quantile(inl, 0.99):.0f} "
              f"(threshold {duplicates.MIN_INLIERS}); aligned agreement of those past it: "
              f"max {agr.max() if len(agr) else float('nan'):.2f} (threshold {duplicates.MIN_ALIGNED_AGREEMENT})")


def measure_scale(sizes: list[int], px: int, seed: int, folder: Path) -> None:
    """Audit time, copies found and false pairs on prefixes of one large cohort (:func:`scale_cohort`)."""
    n_max = max(sizes)
    t0 = time.perf_counter()
    images, planted = scale_cohort(n_max, px, seed, folder=folder)
    print(f"\n== large cohort: {n_max} preprocessed {px}-px images (distinct real-photo look-alikes sharing "
          f"background and arcades, 300 demo eyes, 1 % planted copies under all transforms combined; "
          f"built or loaded in {time.perf_counter() - t0:.0f} s)")
    print(f"  load average {os.getloadavg()[0]:.1f} (2 cores shared); the audit's near-duplicate step: "
          "fingerprints (hashes + keypoints) + candidate search + verification")
    print(f"  {'n':>6} {'wall s':>7} {'CPU s':>7} {'feat s':>7} {'pairs s':>8} {'copies found':>13} "
          f"{'false pairs':>12} {'per 10,000':>11} {'verified':>9}")
    walls, cpus = [], []
    for n in sorted(sizes):
        imgs = images[:n]
        want = {(a, b) for a, b in planted if b < n}
        c0, w0 = time.process_time(), time.perf_counter()
        fp = fingerprints(imgs)
        w1 = time.perf_counter()
        pairs = verified_near_pairs(fp)
        w2, c2 = time.perf_counter(), time.process_time()
        got = set(zip(pairs["i"].tolist(), pairs["j"].tolist(), strict=True))
        false = got - want
        n_ver = int(getattr(duplicates, "LAST_STATS", {}).get("verified", -1))
        walls.append(w2 - w0)
        cpus.append(c2 - c0)
        print(f"  {n:>6} {w2 - w0:>7.1f} {c2 - c0:>7.1f} {w1 - w0:>7.1f} {w2 - w1:>8.1f} "
              f"{len(want & got):>6}/{len(want):<6} {len(false):>12} {len(false) * 1e4 / n:>11.2f} {n_ver:>9}")
        del fp
    if len(sizes) >= 2:
        k_wall = np.polyfit(np.log(sorted(sizes)), np.log(walls), 1)[0]
        k_cpu = np.polyfit(np.log(sorted(sizes)), np.log(cpus), 1)[0]
        print(f"  growth: wall ~ n^{k_wall:.2f}, CPU ~ n^{k_cpu:.2f}; wall per 1,000 images at n={max(sizes)}: "
              f"{walls[-1] * 1000 / max(sizes):.1f} s (target: 20,000 in <= 120 s on 2 cores)")


def _screening_item(job: tuple) -> tuple[np.ndarray, np.ndarray | None]:
    """One screening eye preprocessed, and its combined copy (``job[3]``: the copy's number, or None)."""
    from medxcept.testing.screening import screening_eye

    r, px, seed, c = job
    raw = screening_eye(int(r["person_seed"]), str(r["eye"]), camera=r["camera"])
    eye = _prep([raw], px)[0]
    if c is None:
        return eye, None
    return eye, _prep([_combo(raw, np.random.default_rng([seed, 99, c]), KEEP_RETINA)], px)[0]


def _screening_exposure_copy(job: tuple) -> np.ndarray:
    """The exposure-relative combined copy (:func:`_combo_exposure`) of one screening eye, preprocessed."""
    from medxcept.testing.screening import screening_eye

    r, px, seed, c = job
    raw = screening_eye(int(r["person_seed"]), str(r["eye"]), camera=r["camera"])
    return _prep([_combo_exposure(raw, np.random.default_rng([seed, 98, c]))], px)[0]


def screening_cohort(n_eyes: int, px: int, seed: int, n_copies: int, folder: Path,
                     workers: int = 1) -> tuple[np.ndarray, pd.DataFrame, list[tuple[int, int, str]]]:
    """``n_eyes`` screening-style photographs of ``n_eyes // 2`` people (both eyes), then ``2 * n_copies`` copies.

    Each eye is drawn by :mod:`medxcept.testing.screening` (its own vessel tree; the camera's chords,
    vignette and dim exposures; 400-px JPEG), decoded and preprocessed as the pipeline does (``px``);
    then copies of ``n_copies`` evenly spread originals under all transforms combined (on the decoded
    photograph), each under a patient of its own: first with :func:`_combo` (as every other set here, but
    with its darkening capped relative to the photograph, :data:`KEEP_RETINA`: a copy keeps at least half
    its retina's 99th percentile of luma, as a re-export would, where the plain :func:`_combo` turned 8 of
    the 60 copies at 3,000 eyes black; 12 of those 60 copies and 8 of the 40 at 300 eyes are changed by
    the cap, and the cache file is named ``-kept``), then with :func:`_combo_exposure` (brightness and
    contrast relative to the exposure). Returns
    the images (uint8, cached under ``folder``), the cohort table (``image_id``, ``patient_key``,
    ``laterality``, ``label``, ``split``, ``sha256``) and the planted ``(original, copy, kind)``.
    """
    from medxcept.testing.screening import screening_people

    rows = screening_people(n_eyes // 2, seed)
    src = np.linspace(0, len(rows) - 1, n_copies).round().astype(int) if n_copies else np.zeros(0, int)
    n = len(rows) + len(src)
    path = folder / f"medxcept-screening-{n_eyes}-{n_copies}-{px}-{seed}-kept.npy"  # kept: KEEP_RETINA
    if not path.exists():
        mm = np.lib.format.open_memmap(str(path) + ".part", mode="w+", dtype=np.uint8, shape=(n, px, px, 3))
        copy_of = {int(s): c for c, s in enumerate(src)}
        jobs = [(r, px, seed, copy_of.get(k)) for k, r in enumerate(rows)]
        with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
            for k, (eye, copy) in enumerate(pool.map(_screening_item, jobs, chunksize=8)):
                mm[k] = eye
                if copy is not None:
                    mm[len(rows) + copy_of[k]] = copy
        mm.flush()
        del mm
        os.replace(str(path) + ".part", path)
    path_exp = folder / f"medxcept-screening-{n_eyes}-{n_copies}-{px}-{seed}-exposure.npy"
    if not path_exp.exists():
        jobs = [(rows[int(s)], px, seed, c) for c, s in enumerate(src)]
        with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
            exp = np.stack(list(pool.map(_screening_exposure_copy, jobs)))
        np.save(str(path_exp) + ".part.npy", exp)
        os.replace(str(path_exp) + ".part.npy", path_exp)
    images = np.concatenate([np.load(path, mmap_mode="r"), np.load(path_exp)])
    src = np.r_[src, src]
    n = len(images)
    rng = np.random.default_rng([seed, 5])
    person = [int(r["person"]) for r in rows] + [10**6 + c for c in range(len(src))]
    df = pd.DataFrame({
        "image_id": [f"img{i:06d}" for i in range(n)],
        "frame": 0,
        "patient_key": [f"P-{p:08x}" for p in person],
        "laterality": [str(r["eye"]) for r in rows] + [str(rows[int(s)]["eye"]) for s in src],
        "label": "normal",
        "y": 0,
        "split": rng.choice(["train", "val", "test"], n, p=[0.7, 0.15, 0.15]),
        "sha256": [f"{i:064x}" for i in range(n)],
    })
    half = len(src) // 2
    planted = [(int(s), len(rows) + c, "combined" if c < half else "combined, exposure-relative")
               for c, s in enumerate(src)]
    return images, df, planted


def measure_screening(sizes: list[int], px: int, seed: int, folder: Path, workers: int = 1) -> None:
    """Screening-style look-alikes (:func:`screening_cohort`): the audit's pairs, found copies, false pairs.

    The pair list is the audit's own (:func:`medxcept.integrity.audit.duplicate_pairs` on the cohort table, as
    :func:`medxcept.integrity.audit.audit_cohort` and :func:`medxcept.integrity.audit.duplicate_groups` use it). Columns:
    planted copies found (``_combo`` with its darkening capped, :data:`KEEP_RETINA`; exposure-relative
    ``_combo_exposure``), false pairs (different
    people, copies counted as their original), of them by the hash rule (``detail``) and by geometry,
    pairs of one person's left and right eye reported, the most people one false pair partner is
    paired with (a hub), images under ``MIN_KEYPOINTS`` keypoints, wall and CPU seconds of the
    fingerprints and the pair list.
    """
    print(f"\n== screening-style look-alikes (medxcept.testing.screening: both eyes of each person, circle cut by "
          f"chords, vignette, dim exposures, 400-px JPEG) at {px} px, combined copies planted among them")
    print(f"  load average {os.getloadavg()[0]:.1f}")
    print(f"  combined: _combo, its darkening capped (the retina keeps {KEEP_RETINA:.0%} of its 99th percentile)")
    print(f"  {'eyes':>6} {'found: combined':>16} {'exposure-rel.':>14} {'false pairs':>12} "
          f"{'by rule (detail/geometry)':>26} {'left-right pairs':>17} {'largest hub':>12} {'<30 keypoints':>14} "
          f"{'wall s':>7} {'CPU s':>7}")
    for n_eyes in sizes:
        n_copies = max(40, n_eyes // 50)
        images, df, planted3 = screening_cohort(n_eyes, px, seed, n_copies, folder, workers)
        screening_row(n_eyes, images, df, planted3)


def screening_row(n_eyes: int, images: np.ndarray, df: pd.DataFrame, planted3: list[tuple[int, int, str]]) -> None:
    """One line of :func:`measure_screening`: the audit's pair list on one screening cohort, counted."""
    from medxcept.integrity.audit import duplicate_pairs

    planted = [(a, b) for a, b, _ in planted3]
    imgs = np.asarray(images)
    c0, w0 = time.process_time(), time.perf_counter()
    fp = fingerprints(imgs)
    pairs = duplicate_pairs(df, fp, 10)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    near = pairs[pairs["match"] == "near"]
    got = set(zip(near["i"].tolist(), near["j"].tolist(), strict=True))
    found = {kind: (sum((a, b) in got for a, b, k in planted3 if k == kind),
                    sum(k == kind for _, _, k in planted3)) for kind in ("combined", "combined, exposure-relative")}
    pk = df["patient_key"].to_numpy()
    lat = df["laterality"].to_numpy()
    src_of = {b: a for a, b in planted}
    root = np.array([src_of.get(k, k) for k in range(len(df))])
    false = [(a, b) for a, b in got if root[a] != root[b] and pk[root[a]] != pk[root[b]]]
    lr = [(a, b) for a, b in got if root[a] != root[b] and pk[root[a]] == pk[root[b]]
          and lat[root[a]] != lat[root[b]]]
    fset = set(false)
    by_rule = near[[(a, b) in fset for a, b in zip(near["i"], near["j"], strict=True)]]["method"].value_counts()
    deg = pd.Series([x for p in false for x in p]).value_counts()
    poor = int((duplicates.n_keypoints(fp) < duplicates.MIN_KEYPOINTS).sum())
    fc, fe = found["combined"], found["combined, exposure-relative"]
    print(f"  {n_eyes:>6} {fc[0]:>9}/{fc[1]:<6} {fe[0]:>7}/{fe[1]:<6} {len(false):>12} "
          f"{int(by_rule.get('detail', 0)):>13}/{int(by_rule.get('geometry', 0)):<12} {len(lr):>17} "
          f"{int(deg.iloc[0]) if len(deg) else 0:>12} {poor:>14} {wall:>7.1f} {cpu:>7.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--px", type=int, default=224, help="preprocessing size (model input)")
    parser.add_argument("--n-copies", type=int, default=20, help="originals copied per transform and kind")
    parser.add_argument("--n-lookalikes", type=int, default=300, help="distinct look-alikes per kind")
    parser.add_argument("--scale-sizes", type=int, nargs="*", default=[2500, 5000, 10000, 20000],
                        help="prefix sizes of the large cohort (timed; empty: skip)")
    parser.add_argument("--scale-only", action="store_true", help="only the large-cohort measurement")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("MEDXCEPT_CACHE", os.environ.get("TMPDIR", "/tmp"))),
                        help="where the large cohort's images are kept between runs (~3 GB at 20,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run with a few images")
    parser.add_argument("--screening", type=int, nargs="*", default=[300, 3000],
                        help="screening-style look-alike cohorts: different eyes (empty: skip)")
    parser.add_argument("--screening-only", action="store_true", help="only the screening-style look-alikes")
    parser.add_argument("--screening-px", type=int, default=299,
                        help="preprocessing size of the screening set (the check's default)")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing the screening set (once)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_copies, args.n_lookalikes, args.scale_sizes, args.screening = 3, 12, [200, 400], [40]
    if args.screening_only:
        measure_screening(args.screening, args.screening_px, args.seed, args.cache_dir, args.workers)
        return 0
    if args.scale_only:
        measure_scale(args.scale_sizes, args.px, args.seed, args.cache_dir)
        return 0
    rng = np.random.default_rng(args.seed)
    real, _ = _real_background()
    found = []
    found += measure_copies([real] + real_lookalikes(args.n_copies - 1, rng), args.px, rng, "real-photo eyes")
    found += measure_copies(demo_lookalikes(args.n_copies, rng), args.px, rng, "demo eyes")
    measure_lookalikes([real] + real_lookalikes(args.n_lookalikes, rng), args.px, "real-photo look-alikes")
    measure_lookalikes(demo_lookalikes(args.n_lookalikes, rng), args.px, "demo look-alikes")
    found += measure_copies(gray_lookalikes(args.n_copies, rng), args.px, rng, "gray radiograph-like images", "gray")
    measure_lookalikes(gray_lookalikes(args.n_lookalikes, rng), args.px, "gray radiograph-like look-alikes", "gray")
    print(f"\n== copies under all transforms combined among {args.n_lookalikes} look-alikes of their kind")
    rng2 = np.random.default_rng(args.seed + 1)
    among = [measure_copies_among([real] + real_lookalikes(args.n_copies - 1, rng2),
                                  real_lookalikes(args.n_lookalikes, rng2), args.px, rng2, "real-photo eyes"),
             measure_copies_among(demo_lookalikes(args.n_copies, rng2), demo_lookalikes(args.n_lookalikes, rng2),
                                  args.px, rng2, "demo eyes"),
             measure_copies_among(gray_lookalikes(args.n_copies, rng2), gray_lookalikes(args.n_lookalikes, rng2),
                                  args.px, rng2, "gray radiograph-like images", "gray")]
    if args.screening:
        measure_screening(args.screening, args.screening_px, args.seed, args.cache_dir, args.workers)
    if args.scale_sizes:
        measure_scale(args.scale_sizes, args.px, args.seed, args.cache_dir)
    print(f"\ncopies found (after), worst transform: {min(found):.0%}; combined, among look-alikes: {min(among):.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
