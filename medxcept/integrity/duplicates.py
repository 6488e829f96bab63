"""Near-duplicate images decided by geometry: keypoints on the vessel tree, one consistent transform.

Why not global look: every fundus photograph is an orange disc on black with the optic disc on
one side, so global signatures (pHash, dHash, colour) of *different* eyes from one camera are as
close as those of a re-saved copy, and a rotated, sheared or zoomed copy is farther than either.
What a copy always shares with its original, and a different eye never does, is the position of
hundreds of fine structures (vessel branchings and crossings, lesions) related by *one* geometric
transform. So:

1. **Features** (:func:`keypoint_features`): the luma (gray for radiographs) at :data:`WORK_PX`
   px, with its slow illumination removed (minus a Gaussian blur of the field of view), so vessels
   and texture stand out; up to :data:`N_KEYPOINTS` SIFT keypoints (OpenCV, a dependency of
   albumentations; on that image shrunk to :data:`SIFT_PX` px, positions mapped back; contrast
   threshold :data:`SIFT_CONTRAST`, so smooth pictures keep enough)
   inside the eroded field of view (the black border and its rim carry no keypoints: every
   photograph of one camera has the same circle). SIFT is rotation- and scale-invariant, not
   mirror-invariant; a vertical flip is a mirror plus a half-turn, so the mirror image covers both
   flips, and its descriptors are not computed again: mirroring a patch reverses SIFT's 4 x 4 cells
   along one axis and its orientation bins, a fixed permutation (:func:`mirror_descriptors`). Why
   SIFT and not ORB (the first version): on 20,000 look-alikes with 200 planted copies under all
   transforms combined, ORB (250 keypoints at 256 px) could confirm 86 % of the copies even when
   handed the right pair, and its candidate search proposed 52 %; SIFT confirms every one of the
   200, and look-alike pairs stay at most 14 inliers (``benchmarks/audit_bench.py``). The same
   high-pass, band-passed, is kept as the detail thumbnail for step 4.
2. **Candidates** (:func:`candidate_pairs`, sub-quadratic): each descriptor is binarized (each of
   its 128 bins above the descriptor's mean or not) and hashed by :data:`LSH_TABLES` random subsets
   of :func:`_lsh_bits` bits (24, one more per doubling of the cohort's descriptors past 2**21);
   two images sharing many buckets (in either orientation) are candidates: the best-voted
   partners of each image (as many as :data:`PAIR_BUDGET` allows: every voting partner in a
   cohort of up to 90 images, :data:`TOP_K` from 2,048 on), with at least :data:`MIN_VOTES` votes (a shared bucket of
   ``s`` descriptors votes ``1 / (s - 1)``: rare descriptors count more), each orientation of a
   chosen pair with at least half the votes of its better one (left-right symmetric pictures,
   radiographs above all, vote nearly as much for the mirror). Buckets holding more than
   :data:`BUCKET_CAP` descriptors (structures every image has) are ignored, like stop words.
   A dim image (below) also keeps as many partners again ranked by the votes of one orientation
   difference (weak geometric consistency, :data:`ORIENTATION_BINS`), counted over
   :data:`DIM_LSH_TABLES` more tables and buckets of up to :data:`DIM_BUCKET_CAP`.
3. **Geometric verification** (:func:`verify_pairs`): descriptors matched (nearest neighbour in
   L2 passing Lowe's ratio test, :data:`RATIO`; one matrix product per image against all its
   candidates), then one affine transform fitted by RANSAC (OpenCV ``estimateAffine2D``,
   tolerance :data:`RANSAC_PX` px at :data:`WORK_PX` px); the pair must have at least
   :data:`MIN_INLIERS` inliers (:data:`MIN_INLIERS_DIM` with a dim image) and a plausible transform
   (scale within 0.5-2, shear below 0.5).
4. **Aligned detail**: the candidate is warped onto the other image with that transform
   (bilinear, at 128 px) and the sign of its fine detail (a band-pass: Gaussian blur of sigma 1
   minus one of sigma :data:`_DENSE_SIGMA`) compared pixel by pixel inside both fields of view, as
   ``2 * share_agreeing - 1``. Two images of one camera or protocol share their layout (disc,
   arcades, border, dust; ribs, markers) and RANSAC can line up their keypoints with a
   near-identity, mirror, half-turn or slightly sheared transform; a copy agrees widely once
   aligned, a look-alike only on the layout. Three conditions, each for a measured trap: the
   agreement reaches :data:`MIN_ALIGNED_AGREEMENT` (demo eyes drawn from one vessel template reach
   0.41); it exceeds the cohort's own layout agreement (other images warped by the same transform,
   :func:`_layout_agreement`) by :data:`MIN_AGREEMENT_MARGIN` (radiograph-like images sharing ribs
   and a marker agree 0.61 in place; copies exceed their layout by 0.25 or more); and it reaches
   :data:`MIN_STRUCTURE_AGREEMENT` on the strongest quarter of either image's detail (two eyes drawn
   on one pixel-identical background agree 0.52 overall but 0.21 on their own vessels; copies 0.74
   or more).

Images with fewer than :data:`MIN_KEYPOINTS` keypoints (flat or smooth pictures without
structure) cannot be verified by geometry; pairs involving them keep the former rule (pHash and
dHash within the Hamming threshold, and the sign of the fine detail agreeing,
:func:`medxcept.integrity.audit.near_duplicate_pairs`), and are marked ``method="detail"``. Pairs of images
that both carry keypoints are decided by geometry alone, never by hashes. Two images with no picture at all
(no keypoint, or no image area: a photograph darkened to black) are not paired by that rule either.

Dim photographs (:data:`DARK_LEVEL`), and washed-out ones (:data:`DIM_RANGE`: a dim photograph
brightened), are noise-limited: their luma is lifted, their detail smoothed before SIFT
(:data:`DIM_SIFT_SIGMA`), they keep :data:`DIM_PARTNERS` times the candidates (at least
:data:`DIM_MIN_PARTNERS`), and as many again by
the votes of one orientation difference (:data:`ORIENTATION_BINS`), and a pair with one of them needs
:data:`MIN_ALIGNED_AGREEMENT_DIM` overall and :data:`MIN_INLIERS_DIM` inliers (the structure and layout
checks unchanged).

Why the orientation bins, measured on the 3,000-eye screening set (``benchmarks/near_duplicates.py
--screening-only``; two thirds of its eyes are dim): copies lost before verification were lost in the
candidate search. Their descriptors, smoothed noise-limited blobs, differ from the original's in 21 of
128 bits (median over RANSAC inliers; 12 for bright copies), so a true match shares a 24-bit key in
about 1 of 16 tables, and 60 % of the dim descriptors' buckets hold more than :data:`BUCKET_CAP` (other
dim eyes' look-alike descriptors) and are skipped: missed copies confirmed by 14-24 inliers when handed
to verification collided in 1-4 tables, 0-1 of them in a small bucket, and ranked 17th to 300th among
their original's partners, or had no vote at all. The inliers' orientation differences lie within about
10 degrees of the copy's rotation, chance collisions' anywhere: counting the votes of two neighbouring
30-degree bins, over 16 more tables and buckets up to 16, ranked 100 of the 120 planted copies among
an image's 16 best (92 by all votes).

The thresholds come from ``benchmarks/near_duplicates.py`` (copies vs look-alikes, real and
synthetic photographs); see its output in the module notes of :mod:`medxcept.integrity.audit`.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

__all__ = [
    "WORK_PX",
    "SIFT_PX",
    "N_KEYPOINTS",
    "MIN_KEYPOINTS",
    "MIN_INLIERS",
    "MIN_INLIERS_DIM",
    "MIN_ALIGNED_AGREEMENT",
    "MIN_ALIGNED_AGREEMENT_DIM",
    "DIM_SIFT_SIGMA",
    "keypoint_features",
    "candidate_pairs",
    "verify_pairs",
    "geometric_pairs",
    "n_keypoints",
    "partners_per_image",
]

WORK_PX = 128
"""Side of the square image keypoints are found on (larger images are shrunk, smaller ones enlarged).

The detail thumbnail and keypoint positions are at this size; SIFT runs on it shrunk to :data:`SIFT_PX`
and doubles that internally for its first octave, so fine vessels of a 224-px image still count."""
SIFT_PX = 112
"""Side of the image SIFT runs on (the :data:`WORK_PX` high-pass, shrunk; positions are mapped back).

SIFT's cost is its first octave (the image doubled) and its descriptors: at 112 px the keypoint
stage took 3.7 ms an image against 4.5 ms at 128 px (400 images, 2 threads). Measured on the 200 planted copies (all transforms combined) of ``benchmarks/audit_bench.py``,
handed as pairs: 200 confirmed at 128 and at 112 px (fewest inliers 18 and 16), 198 at 96 px
(fewest 8); ``benchmarks/near_duplicates.py`` finds the same copies at 112 as at 128 px."""
N_KEYPOINTS = 150
"""SIFT keypoints kept per image (the strongest by contrast; SIFT describes only these)."""
SIFT_LAYERS = 3
"""Scales per octave of SIFT's pyramid (Lowe's 3)."""
SIFT_CONTRAST = 0.01
"""SIFT's contrast threshold (OpenCV's default is 0.04): smooth pictures (the demo's painted eyes) keep
about 100 keypoints instead of 20-40; textured photographs reach the :data:`N_KEYPOINTS` cap either way."""
MIN_KEYPOINTS = 30
"""Fewer keypoints than this: the image is judged by the former hash + detail rule."""
MIN_INLIERS = 10
"""Matches consistent with one affine transform needed to call a pair a copy.

Below the aligned-detail checks, which decide: among 20,000 look-alikes, 225 candidate pairs of
different eyes reached 10 inliers (at most 14 with ratio-test matching), none agreed more than 0.31
once aligned; the hardest combined copies of smooth demo eyes have 7-11 (``benchmarks/``)."""
MIN_INLIERS_DIM = 8
""":data:`MIN_INLIERS` for a pair with a dim image (:data:`DARK_LEVEL`); the aligned-detail checks decide.

A dim copy's noise-limited descriptors match less, so a copy whose detail agrees plainly can keep
fewer inliers. Measured on the screening sets (``benchmarks/near_duplicates.py --screening-only``,
every candidate pair of different eyes fitted down to 3 inliers): with 8 or more inliers and a
plausible transform, the 3,089 such pairs among 3,000 eyes (84,588 candidates, :data:`DIM_MIN_PARTNERS`)
agreed at most 0.23 once aligned and 0.38 on their structures (:data:`MIN_ALIGNED_AGREEMENT_DIM` 0.30, :data:`MIN_STRUCTURE_AGREEMENT` 0.50), the
573 among 300 eyes at most 0.22 and 0.35; with 6 or more, still at most 0.25 and 0.39 in both sets.
A combined copy of a dim eye with 8 inliers agreed 0.34 and 0.67. Bright pairs keep :data:`MIN_INLIERS`
(the demo's look-alikes of one vessel template reach 25 inliers)."""
MIN_ALIGNED_AGREEMENT = 0.46
"""Sign agreement of the fine detail after alignment (in [-1, 1]) needed to call a pair a copy."""
MIN_ALIGNED_AGREEMENT_DIM = 0.3
""":data:`MIN_ALIGNED_AGREEMENT` for a pair with a dim image (:data:`DARK_LEVEL`); the structure and layout checks stay.

A dim photograph's detail, stretched, is mostly sensor and JPEG noise away from its vessels, so even a
true copy agrees less pixel by pixel. Measured on 300 screening-style eyes with 80 combined copies
(``benchmarks/near_duplicates.py --screening-only``): copies of dim eyes confirmed by 10-20 inliers agreed
0.34-0.43 overall and 0.55-0.81 on their structures; the 1,359 candidate pairs of different eyes with
6 or more inliers at most 0.17 and 0.28. The trap :data:`MIN_ALIGNED_AGREEMENT` is set for (the demo's
eyes, one vessel template, 0.41) is bright."""
MIN_AGREEMENT_MARGIN = 0.15
"""How much more a pair's aligned agreement must be than the cohort's layout agreement (:func:`_layout_agreement`)."""
MIN_STRUCTURE_AGREEMENT = 0.5
"""Sign agreement, after alignment, over the strongest quarter of either image's detail, needed to call a pair a copy."""
N_LAYOUT_REFS = 16
"""Images of the cohort the layout agreement is measured on."""
RANSAC_PX = 1.5
"""RANSAC tolerance, in pixels at :data:`WORK_PX`."""
RANSAC_ITERS = 2000
RATIO = 0.85
"""Lowe's ratio test: a match is kept when its nearest descriptor is this much closer than the second."""
LSH_TABLES = 16
"""Hash tables of the candidate search (each keys the binarized descriptors on :data:`LSH_BITS` random bits)."""
LSH_BITS = 24
CODE_BITS = 128
"""Bits of a binarized descriptor (each SIFT bin above the descriptor's mean)."""
BUCKET_CAP = 8
_SIZE_BITS = 5  # bits of a vote code holding its bucket's size (<= BUCKET_CAP < 32)
TOP_K = 4
PAIR_BUDGET = 8192
"""Candidate pairs a small cohort can afford to verify: each image keeps ``PAIR_BUDGET // n`` partners
(:func:`partners_per_image`), never fewer than :data:`TOP_K`. Verifying a pair costs about 0.35 ms of
CPU (20,000 images: 54,128 pairs), a twentieth of one image's keypoints (7-9 ms): up to 90 images every pair sharing a bucket is
verified, at 240 (the demo) 34 partners, from 2,048 images on :data:`TOP_K`. Copies whose descriptors
an augmentation degraded vote less than look-alikes of one template (the demo generator's eyes share
one vessel tree): among 40 demo eyes, 4 of 20 copies under all transforms combined ranked 9th to 35th
among their original's partners (``benchmarks/near_duplicates.py``); only verification tells them apart."""
MIN_VOTES = 1.0
DIM_LSH_TABLES = 16
"""Extra hash tables whose collisions count only for pairs with a dim image (in their angle bins)."""
DIM_BUCKET_CAP = 16
"""Largest bucket whose collisions count for a pair with a dim image (in their angle bins; :data:`BUCKET_CAP` otherwise)."""
ORIENTATION_BINS = 12
"""Bins (30 degrees each) of the orientation difference of two colliding keypoints, for pairs with a dim image (``kp_angle``).

Weak geometric consistency (Jegou, Douze and Schmid, 2008): the true matches of a copy all differ by its
rotation, chance collisions by anything, so the votes in the best two neighbouring bins single out copies
that the sum of all votes buries (see :func:`candidate_pairs`)."""
DIM_PARTNERS = 4
"""A dim image (:data:`DARK_LEVEL`) keeps this many times :func:`partners_per_image` candidates.

Its descriptors are noise-limited: on the 300-eye screening set, other dim eyes gave a dim original
5-7 votes each and its combined copies 3-5, so 12 of 80 copies ranked 4th or lower among both
images' partners (the partners each image keeps from 2,048 images on), 7 of them 21st or lower."""
DIM_MIN_PARTNERS = 32
"""Fewest partners a dim image keeps by default (by votes, and as many by orientation-binned votes): from
2,048 images on (:data:`TOP_K`), :data:`DIM_PARTNERS` is raised to reach it.

Copies of dim eyes that verification confirms ranked 17th to 300th among their original's partners
(``benchmarks/near_duplicates.py --screening-only``, 3,000 eyes). Measured there: 32 partners instead
of 16 found 52 and 54 of 60 combined and exposure-relative copies instead of 50 and 52 (0 false pairs;
64 partners found no more), for about 30 % more CPU on that set (twice the candidates of dim images).
Smaller cohorts already keep more (300 eyes: 108 partners each); a cohort without dim images is
unchanged."""
DENSE_PX = WORK_PX  # the detail thumbnail is the keypoint image's high-pass, band-passed
_DENSE_SIGMA = 3.0
_FOV_LEVEL = 8  # uint8 level below which a pixel is border, not image (a dim image: half its median, see _enhance)
DARK_LEVEL = 64
"""A luma image whose 99th percentile is below this is dim: it is rebuilt from the colour channels in
floating point and stretched (its 99th percentile to 128) before keypoints are sought.

Screening photographs are often dim (no pupil dilation): on 300 screening-style eyes
(:mod:`medxcept.testing.screening`, a third with the retina at 10-40 of 255) the uint8 luma of the
darkest kept a few grey levels, their field of view fell below :data:`_FOV_LEVEL`, and they had fewer
than :data:`MIN_KEYPOINTS` keypoints, so the hash rule judged them (``benchmarks/near_duplicates.py``)."""
DIM_RANGE = 64
"""An image whose luma spans fewer grey levels than this from its darkest 2 % to its 99th percentile is
treated as dim too (:data:`DIM_SIFT_SIGMA`, :data:`MIN_ALIGNED_AGREEMENT_DIM`, :data:`DIM_PARTNERS`),
though not lifted (every image below :data:`DARK_LEVEL` is within it).

A dim photograph brightened by an additive shift (an augmentation's brightness of +20 % adds 51 levels,
the black surround included) is no longer dark, but its retina still spans the few levels it had, with
the same noise and JPEG blocks: on the 1,560-eye screening prefix, 3 of 31 combined copies were such
(99th percentile 63-98, the original's 29-42) and were missed while judged bright. The span, not the
median: a zoomed-out, shifted copy of a bright photograph can be more than half surround (median 0);
none of the 20,000 images of ``benchmarks/audit_bench.py`` spans fewer than 64 levels."""
DIM_SIFT_SIGMA = 1.0
"""Gaussian sigma (pixels at :data:`WORK_PX`) of the smoothing of a dim image's detail before SIFT.

Stretched, a dim photograph's sensor noise and, in a re-saved copy, its JPEG blocks (2-4 px here) are as
strong as its vessels, and SIFT's strongest keypoints land on them. Measured on the 300-eye screening set
with 80 combined copies: the copies' candidate recall went from 68 to 73 of 80 and the 10th percentile of
their inliers from 9 to 13 (sigma 1.5: 67 and 12; SIFT's own sigma 2.4 instead: 68 and 4). Bright images
are untouched."""
_MIN_OVERLAP = 400  # pixels (at DENSE_PX) inside both images needed for the detail check
# SIFT's descriptor is 4 x 4 cells x 8 orientation bins; a mirrored patch (keypoint mirrored, angle
# 180 - a) reverses the cells along one axis and the orientation bins (measured on OpenCV's layout)
_MIRROR = (np.arange(128).reshape(4, 4, 8)[::-1][:, :, (-np.arange(8)) % 8]).ravel()


def _cv2() -> Any:
    import cv2  # albumentations' own dependency

    cv2.setNumThreads(1)
    return cv2


def _to_u8_gray(img: np.ndarray) -> np.ndarray:
    """Luma of a colour image, or the gray image, as uint8."""
    a = np.asarray(img)
    dtype = a.dtype
    if dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:  # the preprocessing cache: OpenCV's luma
        cv2 = _cv2()
        return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
    if a.ndim == 3 and a.shape[2] >= 3:
        # luma, not the green channel alone: a darkened, contrast-stretched copy can clip green to 0
        a = a[:, :, 0] * 0.299 + a[:, :, 1] * 0.587 + a[:, :, 2] * 0.114
        a = a if dtype.kind == "f" else a.astype(dtype)
    elif a.ndim == 3:
        a = a[:, :, 0]
    if a.dtype.kind == "f":
        a = np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = (a.astype(np.float64) * (255.0 / float(np.iinfo(a.dtype).max))).round().astype(np.uint8)
    return np.ascontiguousarray(a)


def _percentiles_u8(u: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(u, qs)`` (linear interpolation) of uint8 pixels, from their histogram (no sort)."""
    c = np.cumsum(np.bincount(u.ravel(), minlength=256))
    n = int(c[-1])
    out = []
    for q in qs:
        r = q / 100.0 * (n - 1)
        k = int(np.floor(r))
        lo, hi = np.searchsorted(c, [k, min(k + 1, n - 1)], side="right")
        out.append(float(lo + (hi - lo) * (r - k)))
    return out


def _enhance(cv2: Any, g: np.ndarray, px: int, sigma: float, erode: int) -> tuple[np.ndarray, np.ndarray]:
    """``(detail, fov)`` at ``px x px``: the image minus its blurred field of view, and the eroded mask."""
    interp = cv2.INTER_AREA if g.shape[0] > px or g.shape[1] > px else cv2.INTER_LINEAR
    u = cv2.resize(g, (px, px), interpolation=interp)
    x = u.astype(np.float32)
    # the border: darker than a quarter of the way from the darkest pixels to the median
    # (a brightened copy's black border is no longer 0)
    # (a brightened copy's black border is no longer 0); a dim image's retina can lie below
    # _FOV_LEVEL itself: the floor is then half-way from the darkest pixels to the median
    lo, mid = _percentiles_u8(u, (2, 50))
    fov = (x > max(lo + 0.25 * (mid - lo), min(_FOV_LEVEL, lo + 0.5 * (mid - lo)))).astype(np.uint8)
    if erode:
        fov = cv2.erode(fov, np.ones((erode, erode), np.uint8))
    m = fov.astype(np.float32)
    blur = cv2.GaussianBlur(x * m, (0, 0), sigma) / np.maximum(cv2.GaussianBlur(m, (0, 0), sigma), 1e-3)
    return (x - blur) * m, fov


_local = threading.local()
LAST_STATS: dict[str, float] = {}
"""Counts of the last :func:`geometric_pairs` call (candidates, pairs fitted, confirmed) and wall seconds of
the last :func:`keypoint_features`, candidate search and verification, for benchmarks."""
LAST_CANDIDATES: dict[str, pd.DataFrame] = {}
"""``"pairs"``: the candidate pairs (``i``, ``j``, ``flipped``) of the last :func:`geometric_pairs` call,
for benchmarks (candidate recall of planted copies)."""


def _workers(n_items: int) -> int:
    """Threads for OpenCV work: the usable cores, at most one per item."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, n_items))


def _sift() -> Any:
    """One SIFT detector per thread (OpenCV detectors are not thread-safe)."""
    if not hasattr(_local, "sift"):
        _local.sift = _cv2().SIFT_create(N_KEYPOINTS, SIFT_LAYERS, SIFT_CONTRAST)
    return _local.sift


def _codes(desc: np.ndarray) -> np.ndarray:
    """Binarized descriptors, packed: bit ``k`` says whether bin ``k`` lies above the descriptor's mean."""
    if not len(desc):
        return np.zeros((0, CODE_BITS // 8), np.uint8)
    return np.packbits(desc > desc.mean(axis=1, keepdims=True, dtype=np.float32), axis=1)


def mirror_descriptors(desc: np.ndarray) -> np.ndarray:
    """The SIFT descriptors the mirror image has at the mirrored keypoints (a permutation of the bins)."""
    return desc[:, _MIRROR]


def _lift_dim(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``g`` (the uint8 luma of ``img``), or for a dim image (:data:`DARK_LEVEL`) its luma in floating point,
    stretched so that its 99th percentile is 128: the few grey levels of a dark photograph's uint8
    luma become the finer ones its three channels hold together."""
    p99 = _percentiles_u8(g, (99,))[0]
    if p99 >= DARK_LEVEL:
        return g
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] >= 3:
        x = a[:, :, 0] * 0.299 + a[:, :, 1] * 0.587 + a[:, :, 2] * 0.114
        if a.dtype.kind == "f":
            x = x * 255.0
        elif a.dtype != np.uint8:
            x = x * (255.0 / float(np.iinfo(a.dtype).max))
    else:
        x = g.astype(np.float32)
    return np.ascontiguousarray(np.clip(np.rint(x * (128.0 / max(p99, 1.0))), 0, 255).astype(np.uint8))


def _image_features(img: np.ndarray) -> tuple[np.ndarray, ...]:
    """Keypoints, uint8 SIFT descriptors and their binarized codes (and the mirror image's) of one image,
    its int8 band-pass detail, and whether it was dim (:data:`DARK_LEVEL`, :data:`DIM_RANGE`)."""
    cv2 = _cv2()
    g8 = _to_u8_gray(img)
    g = _lift_dim(img, g8)
    lo, hi = _percentiles_u8(g8, (2, 99))
    dim = g is not g8 or hi - lo < DIM_RANGE  # dim, or washed out (a dim photograph brightened)
    d, inner = _enhance(cv2, g, WORK_PX, _DENSE_SIGMA, 5)  # the border's rim carries no keypoints
    # a dim photograph, stretched, shows its sensor noise and JPEG blocks as strongly as its vessels:
    # SIFT sees the detail smoothed (DIM_SIFT_SIGMA), where the blocks of a re-saved copy fade
    ds = cv2.GaussianBlur(d, (0, 0), DIM_SIFT_SIGMA) * inner if dim and DIM_SIFT_SIGMA else d
    sd = float(ds[inner > 0].std()) if inner.any() else 0.0
    e = np.clip(128.0 + 40.0 * ds / (sd + 1e-6), 0, 255).astype(np.uint8)
    mask = inner
    if SIFT_PX != WORK_PX:
        e = cv2.resize(e, (SIFT_PX, SIFT_PX), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(inner, (SIFT_PX, SIFT_PX), interpolation=cv2.INTER_NEAREST)
    kp, desc = _sift().detectAndCompute(e, mask)
    if desc is None or not kp:
        xy, desc = np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
        angle = np.zeros(0, np.float32)
    else:
        angle = np.array([k.angle for k in kp], np.float32)  # degrees: the candidate search's orientation bins
        # SIFT keeps the N_KEYPOINTS strongest; their order does not matter (all are indexed and matched)
        xy = cv2.KeyPoint_convert(kp).astype(np.float32).reshape(-1, 2)
        xy = (xy + 0.5) * (WORK_PX / SIFT_PX) - 0.5  # pixel centres: SIFT_PX -> WORK_PX
        desc = np.clip(desc, 0, 255).astype(np.uint8)  # SIFT's bins are whole numbers <= 255
    # the detail thumbnail: the same high-pass, band-passed
    fine = cv2.GaussianBlur(d, (0, 0), 1.0)  # band-pass: sigma 1 to 3 px (pixel noise and resampling out)
    inside = inner > 0
    if inside.any():
        fine = fine - np.median(fine[inside])
        fine = fine / (np.abs(fine[inside]).mean() + 1e-6)
    # int8 detail (0 = outside the field of view; inside never exactly 0)
    q = np.clip(np.rint(fine * 32), -127, 127)
    q = np.where(q == 0, np.where(fine >= 0, 1, -1), q)
    return xy, desc, _codes(desc), _codes(mirror_descriptors(desc)), (q * inside).astype(np.int8), dim, angle


def keypoint_features(images: Any) -> dict[str, np.ndarray]:
    """SIFT keypoints of each image (and where they fall in its mirror), and the detail thumbnail.

    Parameters
    ----------
    images : iterable of numpy.ndarray
        Decoded images (``H x W [x C]``, float in [0, 1] or integer pixels), in cohort order.

    Returns
    -------
    dict of str to numpy.ndarray
        ``kp_xy``, ``kp_xy_flip``: object arrays of ``(k, 2)`` float32 keypoint positions (pixels
        at :data:`WORK_PX`) in the image and in its mirror image; ``kp_desc``: object array of
        ``(k, 128)`` uint8 SIFT descriptors (the strongest :data:`N_KEYPOINTS`; the mirror image's are
        :func:`mirror_descriptors` of them); ``kp_code``, ``kp_code_flip``: the binarized
        descriptors of the image and of its mirror, ``(k, 16)`` uint8, for the candidate search;
        ``dense``: ``(n, 128, 128)`` int8 band-pass detail (0 outside the field of view, never 0
        inside); ``kp_dim``: ``(n,)`` bool, the image was dim (:data:`DARK_LEVEL`: lifted, and its
        detail smoothed for SIFT by :data:`DIM_SIFT_SIGMA`); ``kp_angle``: object array of ``(k,)``
        float32 keypoint orientations (degrees, SIFT's), for the dim images' candidate search.
    """
    images = list(images)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=_workers(len(images))) as pool:  # OpenCV releases the GIL
        per_image = list(pool.map(_image_features, images))
    LAST_STATS["keypoint_s"] = time.perf_counter() - t0
    n = len(per_image)

    def obj(v: list[np.ndarray]) -> np.ndarray:
        out = np.empty(n, dtype=object)
        out[:] = v
        return out

    xy = [r[0] for r in per_image]
    w = WORK_PX - 1
    return {"kp_xy": obj(xy), "kp_xy_flip": obj([np.c_[w - p[:, 0], p[:, 1]].astype(np.float32) for p in xy]),
            "kp_desc": obj([r[1] for r in per_image]), "kp_code": obj([r[2] for r in per_image]),
            "kp_code_flip": obj([r[3] for r in per_image]),
            "dense": np.stack([r[4] for r in per_image]) if n else np.zeros((0, DENSE_PX, DENSE_PX), np.int8),
            "kp_dim": np.array([r[5] for r in per_image], dtype=bool), "kp_angle": obj([r[6] for r in per_image])}


def _lsh_bits(n_codes: int) -> int:
    """Key length for ``n_codes`` indexed descriptors: :data:`LSH_BITS`, one more bit per doubling past 2**21.

    Chance neighbours fill the buckets of a large cohort past :data:`BUCKET_CAP`, and full buckets
    are skipped; longer keys keep the buckets as sparse as at ~7,000 images. Measured at 20,000
    images (6 million descriptors): 24 bits found 190 of 200 planted combined copies among the
    candidates, 26 bits 199 (``benchmarks/audit_bench.py``).
    """
    return min(31, LSH_BITS + max(0, int(round(np.log2(max(n_codes, 1) / 2**21)))))


def _lsh_masks(n_codes: int = 0, tables: int | None = None, seed: int = 20261201) -> np.ndarray:
    """Bit positions (of the :data:`CODE_BITS`) of each LSH table's key: ``tables`` (:data:`LSH_TABLES`) x :func:`_lsh_bits`."""
    rng = np.random.default_rng(seed)  # fixed: the same buckets for every cohort of a size
    bits = _lsh_bits(n_codes)
    return np.stack([rng.choice(CODE_BITS, bits, replace=False) for _ in range(LSH_TABLES if tables is None else tables)])


def _lsh_keys(desc: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The key of each packed descriptor: its bits ``bits`` (no unpacking of the whole matrix).

    Key bit ``k`` is descriptor bit ``bits[k]``; one table look-up per descriptor byte that holds
    any of them (each byte value -> its bits' share of the key), not one pass per bit.
    """
    bits = np.asarray(bits, dtype=np.int64)
    key = np.zeros(len(desc), np.int32)
    values = np.arange(256, dtype=np.int32)
    for byte in np.unique(bits // 8):
        lut = np.zeros(256, np.int32)
        for k in np.nonzero(bits // 8 == byte)[0]:
            lut |= ((values >> (7 - int(bits[k]) % 8)) & 1) << int(k)
        key |= lut[desc[:, byte]]
    return key


def partners_per_image(n: int) -> int:
    """Best-voted partners each image keeps among ``n`` images: :data:`PAIR_BUDGET` shared, at least :data:`TOP_K`."""
    return int(max(TOP_K, min(max(n - 1, 0), PAIR_BUDGET // max(n, 1))))


def candidate_pairs(
    feat: dict[str, np.ndarray], *, top_k: int | None = None, min_votes: float = MIN_VOTES,
    dim_partners: int | None = None,
) -> pd.DataFrame:
    """Pairs sharing many descriptor buckets: ``i < j``, ``flipped``, ``votes`` (sub-quadratic).

    The binarized descriptors of each image (orientation 0) and of its mirror image (orientation
    1) are hashed by :data:`LSH_TABLES` keys of :func:`_lsh_bits` random bits; descriptors in one
    bucket vote for their images' pair (flipped when their orientations differ), ``1 / (s - 1)``
    for a bucket of ``s``. A bucket of more than :data:`BUCKET_CAP` descriptors (a structure every
    image has) is skipped, like a stop word. Each image keeps its ``top_k`` best-voted partners
    (default :func:`partners_per_image`; a dim image, ``feat["kp_dim"]``, ``dim_partners`` times as
    many, default :data:`DIM_PARTNERS`, and at least :data:`DIM_MIN_PARTNERS` in all)
    with at least ``min_votes``. Cost: one sort of the descriptors per table (``O(N log N)``) plus
    the pairs inside small buckets (about linear).

    With keypoint angles (``feat["kp_angle"]``) and a dim image in the cohort, a collision involving a
    dim image also falls in one of :data:`ORIENTATION_BINS` bins of the two keypoints' orientation
    difference (in the first image's unmirrored frame), counted over :data:`DIM_LSH_TABLES` more tables
    and buckets of up to :data:`DIM_BUCKET_CAP`; ``angle_votes`` (a column then) are the votes of the
    best two neighbouring bins, and each dim image also keeps its ``top_k * dim_partners`` best partners
    by them. ``votes`` stay those of the :data:`LSH_TABLES` tables and buckets up to :data:`BUCKET_CAP`,
    and a cohort without a dim image is searched exactly as without angles.
    """
    n = len(feat["kp_code"])
    top_k = partners_per_image(n) if top_k is None else top_k
    # a dim image keeps DIM_PARTNERS times the partners, and at least DIM_MIN_PARTNERS
    if dim_partners is None:
        dim_partners = max(DIM_PARTNERS, -(-DIM_MIN_PARTNERS // max(top_k, 1)))
    dim_partners = int(dim_partners)
    dim = np.asarray(feat["kp_dim"], bool) if "kp_dim" in feat else np.zeros(n, bool)
    # orientation bins (weak geometric consistency) only where a dim image is involved: a bright cohort's
    # search is the same as without them
    binned = "kp_angle" in feat and dim_partners > 1 and bool(dim.any())
    n_bins = ORIENTATION_BINS if binned else 1
    img_ids, orient, descs, angles = [], [], [], []
    for o, key in ((0, "kp_code"), (1, "kp_code_flip")):
        for k, d in enumerate(feat[key]):
            if len(d):
                descs.append(d)
                img_ids.append(np.full(len(d), k, np.int64))
                orient.append(np.full(len(d), o, np.int8))
                if binned:  # a mirrored keypoint's angle is 180 - a (see mirror_descriptors)
                    a = np.asarray(feat["kp_angle"][k], np.float32)
                    angles.append(np.mod(180.0 - a, 360.0) if o else a)
    empty = pd.DataFrame({"i": np.zeros(0, np.int64), "j": np.zeros(0, np.int64),
                          "flipped": np.zeros(0, bool), "votes": np.zeros(0, np.float64)})
    if not descs or n < 2:
        return empty
    allde = np.concatenate(descs)
    img = np.concatenate(img_ids)
    ori = np.concatenate(orient)
    ang = np.concatenate(angles) if binned else None
    # a bucket shared by many images holds a structure they all have (the disc rim, a rib): a stop word
    cap = BUCKET_CAP

    def table(job: tuple[np.ndarray, bool]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The vote codes of one hash table (pair, orientation, angle bin, channel and bucket size of each
        collision), in two halves. ``job``: the table's key bits, and whether it is one of the extra tables
        of dim images (:data:`DIM_LSH_TABLES`)."""
        sel, extra = job
        out: list[tuple[np.ndarray, np.ndarray]] = []
        key = _lsh_keys(allde, sel)
        packed = np.sort((key.astype(np.int64) << 32) | np.arange(len(key), dtype=np.int64))  # faster than argsort
        order = packed & 0xFFFFFFFF
        ks = packed >> 32
        start = np.r_[0, np.nonzero(np.diff(ks))[0] + 1]
        size = np.diff(np.r_[start, len(ks)])
        keep_b = (size >= 2) & (size <= (DIM_BUCKET_CAP if binned else cap))
        if not keep_b.any():
            return out
        # only members of small buckets, in bucket order
        members = np.repeat(keep_b, size)
        pos = order[members]
        bid = np.repeat(np.arange(keep_b.sum()), size[keep_b])
        bsz = np.repeat(size[keep_b], size[keep_b])
        im, oi = img[pos], ori[pos]
        for off in range(1, int(size[keep_b].max())):
            a = np.nonzero(bid[:-off] == bid[off:])[0]
            if not len(a):
                break
            ia, ib = im[a], im[a + off]
            oa, ob = oi[a], oi[a + off]
            # (0,0) and (1,1) plain, (0,1)/(1,0) flipped: two chances each
            keep = ia != ib
            if binned:
                # the dim channel: an extra table, or a bucket past BUCKET_CAP, counts only for a dim image
                ch2 = np.full(len(a), extra) | (bsz[a] > cap)
                keep &= ~ch2 | dim[ia] | dim[ib]
            a, ia, ib = a[keep], ia[keep], ib[keep]
            if not len(a):
                continue
            oa, ob = oa[keep], ob[keep]
            fl = (oa != ob)
            lo, hi = np.minimum(ia, ib), np.maximum(ia, ib)
            pair = (lo * n + hi) * 2 + fl
            if binned:
                # the keypoints' orientation difference (hi's minus lo's, in lo's unmirrored frame: mirroring
                # both negates it): the copy's rotation for its true matches, anything for chance ones
                swap = ia > ib
                d = ang[pos[a + off]] - ang[pos[a]]
                d = np.where(swap ^ (np.where(swap, ob, oa) == 1), -d, d)
                b = (np.mod(d, 360.0) * (n_bins / 360.0)).astype(np.int64) % n_bins
                pair = (pair * n_bins + np.where(dim[lo] | dim[hi], b, 0)) * 2 + ch2[keep]
            # the bucket's size rides in the low bits (a rare bucket says more, idf-like: 1 / (s - 1));
            # one sort of the codes, not an argsort
            code = (pair << _SIZE_BITS) | bsz[a]
            odd = (hi & 1).astype(bool)  # two halves by the pair, summed apart (in two threads)
            out.append((code[~odd], code[odd]))
        return out

    def summed(codes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pairs among ``codes`` with at least ``min_votes`` votes (or in one angle window), sorted, their
        votes and their votes in the best two neighbouring angle bins (all channels)."""
        if not codes:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        packed = np.sort(np.concatenate(codes))
        code = packed >> _SIZE_BITS
        start = np.r_[0, np.nonzero(np.diff(code))[0] + 1]
        votes = np.add.reduceat(1.0 / ((packed & ((1 << _SIZE_BITS) - 1)) - 1), start)
        code = code[start]
        if binned:
            # per pair and orientation: the votes of the ordinary channel (as without bins), and the most
            # in two neighbouring angle bins, the dim channel included
            ch2 = (code % 2).astype(bool)
            pfb = code // 2
            pf, b = pfb // n_bins, pfb % n_bins
            run = np.r_[0, np.nonzero(np.diff(pf))[0] + 1]
            total = np.add.reduceat(np.where(ch2, 0.0, votes), run)
            # (pf, b) is sorted with the channel last: sum the channels, then each bin and the next (circular)
            r2 = np.r_[0, np.nonzero(np.diff(pfb))[0] + 1]
            v, pf2, b2 = np.add.reduceat(votes, r2), pf[r2], b[r2]
            nxt = np.r_[pf2[1:] == pf2[:-1], False] & np.r_[b2[1:] == b2[:-1] + 1, False]
            win = v + np.where(nxt, np.r_[v[1:], 0.0], 0.0)
            r3 = np.r_[0, np.nonzero(np.diff(pf2))[0] + 1]
            wrap = (b2 == n_bins - 1) & (b2[r3] == 0)[np.repeat(np.arange(len(r3)), np.diff(np.r_[r3, len(pf2)]))]
            win = win + np.where(wrap, v[np.repeat(r3, np.diff(np.r_[r3, len(pf2)]))], 0.0)
            best_bin = np.maximum.reduceat(win, r3)  # the same pairs as pf[run], in the same order
            code, votes = pf[run], total
        else:
            best_bin = votes
        ok = (votes >= min_votes) | (best_bin >= min_votes)
        return code[ok], votes[ok], best_bin[ok]

    jobs = [(m, False) for m in _lsh_masks(len(allde))]
    if binned and DIM_LSH_TABLES:
        jobs += [(m, True) for m in _lsh_masks(len(allde), DIM_LSH_TABLES, seed=20261202)]
    with ThreadPoolExecutor(max_workers=_workers(len(jobs))) as pool:  # numpy's sorts release the GIL
        parts = [c for part in pool.map(table, jobs) for c in part]
        halves = list(pool.map(summed, [[c[h] for c in parts if len(c[h])] for h in (0, 1)]))
    del parts
    pair = np.concatenate([h[0] for h in halves])
    votes = np.concatenate([h[1] for h in halves])
    wgc = np.concatenate([h[2] for h in halves])
    if not len(pair):
        return empty
    fl = (pair % 2).astype(bool)
    lo, hi = (pair // 2) // n, (pair // 2) % n
    # the top_k partners of each image (as i or as j), ranked by the pair's better orientation;
    # each orientation of a chosen pair with at least half the better one's votes is verified
    # (left-right symmetric pictures, radiographs above all, vote nearly as much for the mirror)
    key = pair // 2  # sorted within each half, and the halves hold different pairs: equal keys are neighbours
    run = np.r_[0, np.nonzero(np.diff(key))[0] + 1]
    ukey = key[run]
    uinv = np.repeat(np.arange(len(run)), np.diff(np.r_[run, len(key)]))
    ulo, uhi = ukey // n, ukey % n

    def choose(score: np.ndarray, limit: np.ndarray) -> np.ndarray:
        """Orientations of the pairs among each image's ``limit`` best by ``score`` (with half the better one's)."""
        best = np.maximum.reduceat(score, run)
        a = np.r_[ulo, uhi]
        v = np.r_[best, best]
        idx = np.r_[np.arange(len(ukey)), np.arange(len(ukey))]
        order = np.lexsort((np.r_[ukey, ukey], -v, a))  # ties: the lower pair first
        a_s = a[order]
        first = np.r_[0, np.nonzero(np.diff(a_s))[0] + 1]
        rank = np.arange(len(a_s)) - np.repeat(first, np.diff(np.r_[first, len(a_s)]))
        chosen = np.zeros(len(ukey), bool)
        ok = (rank < limit[a_s]) & (v[order] >= min_votes)
        chosen[idx[order][ok]] = True
        return chosen[uinv] & (score >= 0.5 * best[uinv]) & (score >= min_votes)

    limit = np.full(n, top_k, np.int64)
    if dim_partners > 1:
        # a dim image's descriptors (noise-limited, smoothed) vote less for its copies and more for other
        # dim images: it keeps more partners (few images are dim; a bright cohort is unchanged)
        limit[dim] = top_k * dim_partners
    keep = choose(votes, limit)
    if binned:
        # and as many again by the votes of one orientation difference: a copy's matches share its rotation
        keep |= choose(wgc, np.where(dim, top_k * dim_partners, 0))
    df = pd.DataFrame({"i": lo[keep], "j": hi[keep], "flipped": fl[keep], "votes": votes[keep]})
    if binned:
        df["angle_votes"] = wgc[keep]
    return df.sort_values(["i", "j", "flipped"], kind="stable").reset_index(drop=True)


def _decompose(m: np.ndarray, flipped: bool) -> dict[str, float]:
    """Rotation (degrees), scale, shear (radians) and shift (share of the side) of a 2x3 affine matrix."""
    a = m[:, :2].astype(np.float64)
    sx = float(np.hypot(a[0, 0], a[1, 0]))
    rot = float(np.arctan2(a[1, 0], a[0, 0]))
    det = float(np.linalg.det(a))
    sy = det / sx if sx > 0 else 0.0
    shear = float(np.arctan2(a[0, 0] * a[0, 1] + a[1, 0] * a[1, 1], det)) if det else 0.0
    c = (WORK_PX - 1) / 2.0
    centre = a @ np.array([c, c]) + m[:, 2]
    return {"rotation_deg": round(np.degrees(rot), 1), "scale": round(float(np.sqrt(abs(sx * sy))), 3),
            "shear_rad": round(shear, 3), "shift_x": round(float(centre[0] - c) / WORK_PX, 3),
            "shift_y": round(float(centre[1] - c) / WORK_PX, 3), "flip": bool(flipped)}


def _aligned_agreement(
    cv2: Any, feat: dict[str, np.ndarray], i: int, j: int, m: np.ndarray, flipped: bool, structure: bool = True
) -> tuple[float, float]:
    """Sign agreement of the detail of ``i`` and of ``j`` warped onto ``i`` by ``m`` (NaN: little overlap).

    Returns the agreement over all pixels inside both images and over the strongest quarter of
    either image's detail (its structures; NaN unless ``structure``), each as ``2 * share_agreeing - 1``.
    """
    a = feat["dense"][i].astype(np.float32)
    b = feat["dense"][j]
    if flipped:
        b = b[:, ::-1]
    s = DENSE_PX / WORK_PX
    # pixel centres: x_dense = s * x_work + c, so the translation becomes s * t + c - A (c, c)
    c = 0.5 * s - 0.5
    ms = m.astype(np.float64).copy()
    ms[:, 2] = s * ms[:, 2] + c - ms[:, :2] @ np.array([c, c])
    inside_b = cv2.warpAffine((b != 0).astype(np.float32), ms, (DENSE_PX, DENSE_PX),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP) > 0.99
    warped = cv2.warpAffine(np.ascontiguousarray(b, dtype=np.float32), ms, (DENSE_PX, DENSE_PX),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    both = (a != 0) & inside_b
    if int(both.sum()) < _MIN_OVERLAP:
        return float("nan"), float("nan")
    aa, ww = a[both], warped[both]
    agree = (aa > 0) == (ww > 0)
    if not structure:
        return float(2.0 * np.mean(agree) - 1.0), float("nan")
    # the strongest quarter of either image's detail: its own structures (vessels, lesions), where a
    # look-alike on the same background has its own different ones
    strong = (np.abs(aa) >= np.percentile(np.abs(aa), 75)) | (np.abs(ww) >= np.percentile(np.abs(ww), 75))
    return float(2.0 * np.mean(agree) - 1.0), float(2.0 * np.mean(agree[strong]) - 1.0)


def _ratio_matches(da: np.ndarray, blocks: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Lowe-ratio matches of the descriptors ``da`` against each descriptor set in ``blocks``.

    For each block: ``(query, train)`` index arrays of the descriptors of ``da`` whose nearest
    neighbour (L2) in the block is closer than :data:`RATIO` times the second nearest (a tie is no
    match). One matrix product against all blocks at once (the candidates of one image), not one
    matcher per pair; the blocks are padded to one width, so that both nearest neighbours come
    from two reductions along one axis.
    """
    out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64), np.zeros(0, np.int64))] * len(blocks)
    use = [k for k, blk in enumerate(blocks) if len(blk) >= 2]
    if len(da) == 0 or not use:
        return out
    width = max(len(blocks[k]) for k in use)
    b = np.zeros((len(use), width, da.shape[1]), np.float32)
    bb = np.full((len(use), width), np.inf, np.float32)  # padding: never a neighbour
    for c, k in enumerate(use):
        blk = blocks[k].astype(np.float32)
        b[c, :len(blk)] = blk
        bb[c, :len(blk)] = np.einsum("ij,ij->i", blk, blk)
    a = da.astype(np.float32)
    # squared distance minus |a|^2 (the same for one query row): |b|^2 - 2 a.b
    d = a @ b.reshape(-1, b.shape[2]).T
    d *= -2.0
    d += bb.reshape(1, -1)
    d = d.reshape(len(a), len(use), width)
    nn = d.argmin(axis=2)[..., None]
    m1 = np.take_along_axis(d, nn, axis=2)[..., 0]
    np.put_along_axis(d, nn, np.inf, axis=2)
    m2 = d.min(axis=2)
    aa = np.einsum("ij,ij->i", a, a)[:, None]
    ok = np.maximum(m1 + aa, 0.0) < (RATIO * RATIO) * (m2 + aa)  # squared distances: d1 < RATIO * d2
    for c, k in enumerate(use):
        q = np.nonzero(ok[:, c])[0]
        if len(q):
            out[k] = (q, nn[q, c, 0])
    return out


def _verify_one(feat: dict[str, np.ndarray], a: int, b: int, fl: bool, least: int,
                match: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Fit and check one candidate pair from its descriptor matches (see :func:`verify_pairs`)."""
    cv2 = _cv2()
    q, t = match
    row: dict[str, Any] = {"i": a, "j": b, "flipped": fl, "matches": len(q), "inliers": 0,
                           "aligned_agreement": np.nan, "structure_agreement": np.nan,
                           "layout_agreement": np.nan, "rotation_deg": np.nan, "scale": np.nan,
                           "shear_rad": np.nan, "shift_x": np.nan, "shift_y": np.nan, "confirmed": False}
    dim = "kp_dim" in feat and bool(feat["kp_dim"][a] or feat["kp_dim"][b])
    need = MIN_INLIERS_DIM if dim else MIN_INLIERS  # inliers the confirmation needs
    if dim:  # a dim pair can be confirmed on fewer inliers: fit it from that many matches on
        least = min(least, MIN_INLIERS_DIM)
    if len(q) < least:  # fewer matches than the least inliers the caller's rule needs
        return row
    src = feat["kp_xy"][a][q]
    dst = feat["kp_xy_flip" if fl else "kp_xy"][b][t]
    cv2.setRNGSeed(0)  # per thread: the same pair always gets the same fit
    m, inl = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX,
                                  maxIters=RANSAC_ITERS, confidence=0.999, refineIters=10)
    if m is None:
        return row
    row["inliers"] = int(inl.sum())
    if row["inliers"] < least:  # the caller's rule needs no more (most look-alike candidates end here)
        return row
    row.update({k: v for k, v in _decompose(m, fl).items() if k != "flip"})
    plausible = 0.5 <= row["scale"] <= 2.0 and abs(row["shear_rad"]) <= 0.5
    if plausible:
        row["aligned_agreement"], row["structure_agreement"] = _aligned_agreement(cv2, feat, a, b, m, fl)
    # a shared layout (disc, arcades, border, dust of one camera; ribs and markers of one radiograph
    # protocol) can line up keypoints of two different images under a near-identity, mirror or
    # slightly sheared transform: the fine detail must agree too once aligned, on the image's own
    # strongest structures too (two eyes drawn on one background agree everywhere but on their
    # vessels), and clearly more than other images of the cohort agree with ``a`` under the same
    # transform (that figure costs 16 warps: only for a pair the other conditions confirm)
    least_agreement = MIN_ALIGNED_AGREEMENT_DIM if dim else MIN_ALIGNED_AGREEMENT
    if (row["inliers"] >= need and plausible and row["aligned_agreement"] >= least_agreement
            and row["structure_agreement"] >= MIN_STRUCTURE_AGREEMENT):
        row["layout_agreement"] = _layout_agreement(cv2, feat, a, b, m, fl)
        row["confirmed"] = bool(row["aligned_agreement"] - row["layout_agreement"] >= MIN_AGREEMENT_MARGIN)
    return row


def _layout_agreement(cv2: Any, feat: dict[str, np.ndarray], a: int, b: int, m: np.ndarray, fl: bool) -> float:
    """What the cohort's shared layout alone gives: the aligned agreement of ``a`` with other images under ``m``.

    The 75th percentile over up to :data:`N_LAYOUT_REFS` images spread evenly over the cohort
    (neither ``a`` nor ``b``), each warped onto ``a`` by the pair's transform: a camera or protocol
    shared by a quarter of the cohort shows here; a few copies of ``a`` among them do not. 0
    when the cohort has no other image with detail to compare.
    """
    n = len(feat["dense"])
    refs = [r for r in np.unique(np.linspace(0, n - 1, N_LAYOUT_REFS + 2).round().astype(int)) if r not in (a, b)]
    vals = [_aligned_agreement(cv2, feat, a, int(r), m, fl, structure=False)[0] for r in refs[:N_LAYOUT_REFS]]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.percentile(vals, 75)) if vals else 0.0


def verify_pairs(
    feat: dict[str, np.ndarray], i: Any, j: Any, flipped: Any, *, least: int = MIN_INLIERS
) -> pd.DataFrame:
    """Geometric verification of candidate pairs ``(i[k], j[k])`` (``j`` mirrored where ``flipped``).

    The descriptors of ``i`` are matched (Lowe's ratio test, :data:`RATIO`) against those of all
    its candidates at once; a pair with at least ``least`` matches gets one affine transform
    fitted by RANSAC, and one with at least ``least`` inliers and a plausible transform (scale
    0.5-2, shear below 0.5) its aligned detail agreement.

    Returns
    -------
    pandas.DataFrame
        One row per pair, in the order given: ``i``, ``j``, ``flipped``, ``matches`` (ratio-test
        matches), ``inliers`` (of one affine transform, RANSAC), ``aligned_agreement`` (see the
        module notes), the transform (``rotation_deg``, ``scale``, ``shear_rad``, ``shift_x``,
        ``shift_y``: how ``j`` is placed relative to ``i``) and ``confirmed`` (all criteria met).
        A pair with fewer than ``least`` matches (at most :data:`MIN_INLIERS_DIM` for a pair with a
        dim image) is not fitted (inliers 0), one with fewer than that many inliers gets no transform and no aligned agreement (NaN), and the layout
        agreement is computed only for a pair whose other conditions hold: the caller's rule needs
        no more.
    """
    ii = np.asarray(i, np.int64).ravel()
    jj = np.asarray(j, np.int64).ravel()
    ff = np.asarray(flipped, bool).ravel()
    if not (len(ii) == len(jj) == len(ff)):
        raise ValueError(f"verify_pairs: i, j and flipped have lengths {len(ii)}, {len(jj)}, {len(ff)}")
    least = max(3, int(least))
    groups = pd.Series(np.arange(len(ii))).groupby(ii, sort=False).indices  # the pairs of each image i

    def run(members: np.ndarray) -> list[tuple[int, dict[str, Any]]]:
        a = int(ii[members[0]])
        blocks = [mirror_descriptors(feat["kp_desc"][jj[k]]) if ff[k] else feat["kp_desc"][jj[k]] for k in members]
        matches = _ratio_matches(feat["kp_desc"][a], blocks)
        return [(int(k), _verify_one(feat, a, int(jj[k]), bool(ff[k]), least, mt))
                for k, mt in zip(members, matches, strict=True)]

    # one BLAS thread per worker: OpenBLAS' own threads inside each worker would spin against each other
    with threadpool_limits(1, user_api="blas"), \
            ThreadPoolExecutor(max_workers=_workers(len(groups))) as pool:  # numpy and OpenCV release the GIL
        done = [r for part in pool.map(run, list(groups.values())) for r in part]
    rows = [r for _, r in sorted(done, key=lambda t: t[0])]
    cols = ["i", "j", "flipped", "matches", "inliers", "aligned_agreement", "structure_agreement", "layout_agreement",
            "rotation_deg", "scale", "shear_rad", "shift_x", "shift_y", "confirmed"]
    return pd.DataFrame(rows, columns=cols)


def geometric_pairs(feat: dict[str, np.ndarray]) -> pd.DataFrame:
    """Candidates (:func:`candidate_pairs`) verified (:func:`verify_pairs`); every candidate row, ``i < j``.

    A pair tried in both orientations keeps its better one (confirmed first, then more inliers).
    """
    t0 = time.perf_counter()
    cand = candidate_pairs(feat)
    t1 = time.perf_counter()
    res = verify_pairs(feat, cand["i"], cand["j"], cand["flipped"], least=MIN_INLIERS)
    LAST_CANDIDATES["pairs"] = cand[["i", "j", "flipped"]]
    LAST_STATS.update(candidates=len(cand), verified=int((res["matches"] >= MIN_INLIERS).sum()),
                      confirmed=int(res["confirmed"].sum()), candidate_s=t1 - t0,
                      verify_s=time.perf_counter() - t1)
    res["votes"] = cand["votes"].to_numpy()
    res = res.sort_values(["i", "j", "confirmed", "inliers"], ascending=[True, True, False, False],
                          kind="stable")
    return res.drop_duplicates(["i", "j"]).reset_index(drop=True)


def n_keypoints(feat: dict[str, np.ndarray]) -> np.ndarray:
    """Keypoints found per image (original orientation)."""
    return np.array([len(d) for d in feat["kp_desc"]], dtype=np.int64)
