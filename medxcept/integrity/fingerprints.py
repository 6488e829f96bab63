"""Image fingerprints and the near-duplicate pair search behind the integrity audit.

:func:`fingerprints` computes, per image, the file-independent pixel hash, the 64-bit pHash and
dHash (and those of the mirror image), the detail bit-maps and the SIFT keypoints
(:mod:`medxcept.integrity.duplicates`); :func:`verified_near_pairs` and :func:`near_duplicate_pairs` find
the pairs; :func:`duplicate_groups` joins them into groups. The checks that turn pairs into
findings are in :mod:`medxcept.integrity.audit`.

Near-duplicates are decided by geometry
---------------------------------------
Images with structure (at least :data:`medxcept.integrity.duplicates.MIN_KEYPOINTS` SIFT keypoints: every
photograph and radiograph) are paired by :func:`verified_near_pairs`: candidates from shared
keypoint-descriptor buckets (sub-quadratic), each verified by one affine transform fitted by RANSAC
to matched keypoints (at least :data:`medxcept.integrity.duplicates.MIN_INLIERS` inliers) and by the fine
detail agreeing once aligned, more than the cohort's shared layout explains and on the images' own
strongest structures (:mod:`medxcept.integrity.duplicates`). The transform (rotation, scale, shear, shift,
flip) and the inlier count of each pair are in the findings. This finds rotated, shifted, zoomed,
sheared, flipped, rescaled and re-compressed copies, and rejects different eyes that share the
camera, colour, disc position and border. The hash rule below decides only pairs involving a
structureless image; a pair of images with keypoints is never decided on hashes.

Measured (``benchmarks/near_duplicates.py``, 224 px, 20 originals per transform, seed 0): copies of
the real photograph and of real-photo look-alikes found 100 % under each of rotation +-45 deg,
shift 20 %, zoom 0.8-1.25, shear 0.2, h/v flip, resize 224-512 px, JPEG 50, brightness/contrast
+-20 % and under all of them combined (the former hash rule: 0-100 %, 0 % for rotation, shear,
vertical flip and combined); gray radiograph-like images (the stand-in for DICOM) 100 % under each
and combined; the demo generator's smooth painted eyes 95-100 % under each and 95 % combined. In
those 40-image cohorts every pair sharing a descriptor bucket is verified
(:data:`medxcept.integrity.duplicates.PAIR_BUDGET`); hidden among 300 look-alikes of their kind (340 images,
24 partners verified per image), combined copies are found 100 % (real-photo eyes), 90 % (demo eyes,
which share one vessel template, so look-alikes outvote 2 of the copies in the candidate search) and
100 % (radiograph-like). No false pair among 301 real-photo look-alikes, 300 demo eyes (aligned
agreement at most 0.39 over 4,894 verified candidates) and 300 radiograph-like images sharing ribs
and a marker (agreement up to 0.61 in place, stopped by the layout margin). At scale
(``benchmarks/audit_bench.py``: the whole audit on 20,000 decoded 224-px look-alikes with 1 % planted
combined copies, 2 cores of a shared machine): 1,000 / 5,000 / 20,000 images in 5.3 / 24.7 / 112.8 s
wall (two more runs at 20,000: 116.3 and 118.7 s), 9-11 ms of CPU an image (CPU ~ n^1.02; at 20,000:
keypoints 79-88 s, candidate search 16-18 s, verification 10-13 s); 196 of 200 planted copies found
(the other 4 never proposed), no false pair. The ORB engine before: 52 % of the copies at 20,000,
467 CPU s.

Screening photographs (the camera's frame is not the retina)
------------------------------------------------------------
Public diabetic-retinopathy collections and screening exports share one frame: a circle cut by
flat chords at top and bottom, a dark vignette ring inside its edge, low vessel contrast, and many
dim photographs. Measured on 300 such eyes of 150 people (:mod:`medxcept.testing.screening`, both
eyes each, 299 px as ``check`` ingests them, 20 + 20 combined copies planted;
``benchmarks/near_duplicates.py --screening-only``): the engine before gave **18 false pairs, all
from the hash rule** (the ``detail`` method), with one photograph paired to 5 people, because 17 dim
photographs (retina at 10-25 of 255) had fewer than :data:`medxcept.integrity.duplicates.MIN_KEYPOINTS`
keypoints (their uint8 luma kept a few grey levels, and the field of view fell under the keypoint
engine's absolute level 8), and the hash rule then compared what all of them share: hashes of the
frame, and detail signs along the frame's rim (2 px eroded of a vignette ring 4-5 px wide at 64 px).
Now: dim images are lifted (:data:`medxcept.integrity.duplicates.DARK_LEVEL`), the field-of-view level is
relative, the hash rule drops a :data:`_FOV_ERODE`-px band and must beat the cohort's layout by
:data:`DETAIL_LAYOUT_MARGIN`, hubs are checked (:func:`_hub_pairs`) and one patient's left and
right eye are not paired (:func:`duplicate_pairs`): 0 false pairs, 2 images left under 30
keypoints. On 1,560 eyes (780 people): 1,042 false pairs (hub of 77 people, 3 left/right pairs, 59
images under 30 keypoints) before, 4 after (the hash rule, among the 8 darkest eyes still under 30
keypoints, a small clique the hub check keeps): not yet 0. Combined copies found at 300: 12/20 ->
13/20 with ``_combo`` of ``benchmarks/near_duplicates.py`` (its additive brightness of up to 51 grey levels turns a dim photograph black or grey), 13/20 ->
17/20 with brightness and contrast relative to the exposure; the misses keep 4-6 inliers (smooth,
low-contrast eyes under rotation, zoom, shear and resize): a known limit. At 3,000 eyes (60 + 60
copies; the benchmark's ``_combo`` now keeps half of a dim retina's brightness instead of turning it
black), copies of dim eyes were lost in the candidate search (their descriptors' buckets crowded by
other dim eyes'); counting their votes by orientation difference
(:data:`medxcept.integrity.duplicates.ORIENTATION_BINS`) found 50/60 and 52/60 (47 and 50 before),
0 false pairs; handed straight to verification, 56 of each kind are confirmed: the rest of the gap
to 95 % is verification's (dim copies with 4-15 inliers or agreement 0.22-0.27). A dim image now keeps
at least :data:`medxcept.integrity.duplicates.DIM_MIN_PARTNERS` candidates and a pair with one is
confirmed from :data:`medxcept.integrity.duplicates.MIN_INLIERS_DIM` inliers: 52/60 and 54/60, 0 false
pairs. What stands between that and 57/60: 3 copies of bright originals keep 24-29 keypoints and 4-10
inliers (no plausible transform), 1 dim copy has 4; 2 dim copies agree 0.22-0.23 once aligned, as much
as the most agreeing of the 398 candidate pairs of different eyes with 10 or more inliers (0.23), a
third 0.27 (0.43 on its structures; those pairs at most 0.33); and 7 copies that verification confirms
are not among 64 partners of the candidate search.

Near-duplicate threshold (hash rule)
------------------------------------
Two images are near-duplicates when their 64-bit pHash and their 64-bit dHash **both** differ
in at most ``hamming_threshold`` bits (default :data:`DEFAULT_HAMMING_THRESHOLD` = 10),
comparing each image with the other and with its mirror image, **and** their fine detail agrees
in that orientation (:func:`detail_similarity` >= :data:`DETAIL_THRESHOLD` = 0.46).

The hashes find the copies. Why 10, measured on synthetic textured images (random smooth
colour blobs, ``tests/test_audit.py``): 0.9x and 0.75x rescaled copies differ by at most 2
bits, JPEG quality-60 copies by at most 4 (quality 30: 6), mirror copies by 0 against the
mirror hashes; 300 unrelated images differ by 16-50 pHash bits (mean 31.5, the mean of a fair
coin) but by as few as 7 dHash bits, because smooth images have correlated gradients. On the
demo cohort preprocessed at 96 and 71 px they find 99-100 % of mirrored, JPEG (quality 60-85)
and 0.8-1.1x rescaled copies (``benchmarks/near_duplicates.py``).

The detail check keeps look-alikes apart. The hashes see the global layout, which every fundus
photograph shares (an orange disc on black, the optic disc on one side): on the demo cohort 12 %
of all pairs of distinct images are hash candidates. The detail bit-maps record, on a 64 x 64
thumbnail, where the fine detail (finer than a Gaussian of sigma 1 px: vessels, texture,
lesions) is above its median; the similarity is ``2 x`` the share of pixels, inside both
images, where two bit-maps agree, ``- 1``. Measured on the demo cohort (240 distinct images;
96 px, 71 px in brackets): distinct hash candidates at most 0.35 (0.36); copies at least 0.57
(0.58) after JPEG quality 60, 0.65 (0.67) at quality 75, 0.67 (0.71) rescaled 0.8-1.1x, 1.0
mirrored; all copies found that the hashes find, and no distinct pair flagged. Random blob
images: distinct within +-0.09, rescaled copies >= 0.85, JPEG quality 75 >= 0.66, 60 >= 0.58,
quality 30 copies as low as 0.39 (missed: a known limit of harsh re-compression of smooth,
detail-poor images; exact copies are always found by hash). An image with no detail to compare
(black or flat) is judged on its hashes alone. Real cohorts are usually less alike than the
synthetic demo; if a cohort shows false alarms, run the benchmark's measurement on it and say so.

Near-duplicate search is exact, not approximate: all pairs are compared, but as
vectorized XOR + popcount over blocks of hashes (numpy), never as a Python loop. A
banded LSH index (4 bands of 16 bits) would only be guaranteed, by pigeonhole, to find
pairs within 3 bits (4 bands, at most 3 differing bits leave one band intact), which is
below the default threshold (covering 10 bits would need 11 bands of ~6 bits, whose
buckets hold n/64 images each: no gain). Exhaustive blocks cost about n^2 popcounts:
~3 s for 20,000 images here (random hashes). The detail
check of a hash candidate costs 192 word operations (~0.5 million pairs a second on two
shared cores): seconds for real cohorts, ~50 s for 20,000 images as alike as the demo's.
"""


from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import scipy.fft
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from medxcept.errors import ConfigError
from medxcept.integrity.duplicates import (
    MIN_KEYPOINTS,
    geometric_pairs,
    keypoint_features,
    n_keypoints,
)
from medxcept.integrity.split_keys import content_ids

__all__ = [
    "DEFAULT_HAMMING_THRESHOLD",
    "DETAIL_THRESHOLD",
    "DETAIL_LAYOUT_MARGIN",
    "DETAIL_PX",
    "fingerprints",
    "hamming",
    "detail_similarity",
    "near_duplicate_pairs",
    "verified_near_pairs",
    "duplicate_groups",
    "check_fingerprints",
    "duplicate_pairs",
    "components",
    "canonical_rows",
    "input_order_groups",
]

logger = logging.getLogger("medxcept.integrity.audit")  # the log lines keep their logger name

DEFAULT_HAMMING_THRESHOLD = 10
"""Bits (out of 64) within which two pHashes *and* dHashes mark a near-duplicate."""

DETAIL_THRESHOLD = 0.46
"""Detail similarity (in [-1, 1]) from which a hash candidate is a near-duplicate.

Why a second stage: pHash and dHash see the global layout, and every fundus photograph has the
same layout (an orange disc on black, the optic disc on one side, vignetting): on the demo
cohort 12 % of all pairs of *distinct* images lie within 10 bits on both hashes. What tells one
retina from another is its fine detail (vessel branching, texture, lesions), so each hash
candidate is verified on its two detail bit-maps (:func:`fingerprints`): the share of pixels, of
those inside both images, where the two agree on the sign of the fine detail, as
``2 * share - 1`` (:func:`detail_similarity`; 0 for unrelated images, 1 for identical ones),
in the orientation the hashes matched. Measured on the demo cohort preprocessed at 96 px (71 px
in brackets), ``benchmarks/near_duplicates.py``: distinct hash candidates at most 0.35 (0.36);
copies at least 0.65 (0.67) after JPEG quality 75, 0.57 (0.58) after quality 60, 0.67 (0.71)
after 0.8-1.1x rescaling, 1.0 when mirrored. 0.46 sits in the middle of the gap.
"""

DETAIL_LAYOUT_MARGIN = 0.15
"""How much more than the cohort's shared layout a hash candidate's detail must agree (see :func:`near_duplicate_pairs`).

Images judged by the hash rule (no keypoints to fit) are the least structured; what their hashes and
detail share with each other is mostly what every photograph of the camera shares (the circle, the
chords, the vignette, the bright disc on one side). So a candidate ``(i, j)`` must agree more than
``i`` agrees with the cohort in general: its similarity minus the 75th percentile of ``i``'s
similarity with about :data:`N_LAYOUT_REFS` images spread over the cohort (in the same orientation)
must reach this margin (the same rule as the keypoint engine's :data:`medxcept.integrity.duplicates.MIN_AGREEMENT_MARGIN`)."""
N_LAYOUT_REFS = 16

DETAIL_PX = 64
"""Side of the detail bit-maps: the 64 x 64 thumbnail of the pixel hash, one uint64 word per row."""

_DETAIL_SIGMA = 1.0  # the bit-map keeps detail finer than a Gaussian of this sigma (in 64-px pixels)
_FOV_LUMA = 0.04  # pixels darker than this are surround (black), not image (a dim image: see _detail_bitmaps)
_FOV_ERODE = 5
"""Pixels (of 64) dropped along the surround's edge, the chords and the frame before detail is compared.

Every photograph of one camera has the same circle, the same flat cuts at top and bottom and the
same dark vignette ring inside the edge (13-16 % of the radius on screening exports): a band common
to all of them that says nothing about identity. 2 px (the former value) kept most of the ring."""
_MIN_OVERLAP = 256  # fewer pixels inside both images than this: nothing to compare

_PIXEL_HASH_PX = 64  # the "fixed small size" of the decoded-pixel hash
_THUMB_PX = 32  # pHash: DCT of a 32x32 grayscale thumbnail, low 8x8 block
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)



# --------------------------------------------------------------------------- hashing


def _area_rows(x: np.ndarray, n_out: int) -> np.ndarray:
    """Area-resample ``x`` to ``n_out`` rows (axis 0), accumulating in float64.

    Output row ``i`` is the mean of input rows over ``[i, i + 1) * n_in / n_out``:
    the sum of the whole rows inside, plus the overlapping share of the two edge
    rows. Sums of contiguous row blocks are fast in numpy (a 3-megapixel image in
    ~10 ms), unlike ``cumsum``/``reduceat`` along axis 0 or large matrix products.
    The result is mirror-symmetric up to rounding, shrinking by an integer factor
    twice equals shrinking once, and upsampling repeats rows.
    """
    n_in = x.shape[0]
    if n_in % n_out == 0:  # whole blocks (64 -> 32, 64 -> 8)
        return x.reshape((n_out, n_in // n_out) + x.shape[1:]).mean(axis=1, dtype=np.float64)
    return _area_rows_blocks(x, n_out)


def _area_rows_blocks(x: np.ndarray, n_out: int) -> np.ndarray:
    n_in = x.shape[0]
    k = np.arange(n_out + 1)
    ceil = -(-k * n_in // n_out)  # first whole row at or after each edge
    floor = np.minimum(k * n_in // n_out, n_in - 1)  # row holding each edge
    part = (ceil * n_out - k * n_in) / n_out  # share of row `floor` before the edge
    edge = part.reshape((-1,) + (1,) * (x.ndim - 1)) * x[floor].astype(np.float64)
    whole = np.stack([x[a:b].sum(axis=0, dtype=np.float64) for a, b in zip(ceil[:-1], ceil[1:], strict=False)])
    return (whole + edge[:-1] - edge[1:]) * (n_out / n_in)


def _resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area-resample an ``H x W [x C]`` array to ``out_h x out_w [x C]`` (float64)."""
    return _area_rows(_area_rows(img, out_h).swapaxes(0, 1), out_w).swapaxes(0, 1)


def _resize_stack(g: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area-resample a stack of ``n x H x W`` images to ``n x out_h x out_w`` (float64), all at once."""
    return _area_rows(_area_rows(g.transpose(1, 0, 2), out_h).transpose(2, 1, 0), out_w).transpose(1, 2, 0)


def _as_hwc(img: np.ndarray, index: int) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype.kind in "ui":  # integer pixels (uint8 cache, 16-bit files) -> [0, 1]
        arr = arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConfigError(
            f"fingerprints: image #{index} has shape {arr.shape}; expected H x W x C with C in (1, 3)"
        )
    if arr.shape[2] == 4:  # drop alpha; readers should already have done so
        arr = arr[:, :, :3]
    return arr


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """``(n, 64)`` booleans -> ``(n,)`` uint64, first bit most significant."""
    packed = np.packbits(bits.astype(np.uint8), axis=1)  # (n, 8) bytes, big-endian bit order
    return packed.view(">u8").ravel().astype(np.uint64)


def _phash(thumbs: np.ndarray) -> np.ndarray:
    """pHash of ``(n, 32, 32)`` thumbnails: sign of the low 8x8 DCT block vs its median."""
    low = scipy.fft.dctn(thumbs, type=2, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(thumbs), 64)
    # Median over the 63 AC coefficients: the DC term (mean brightness) is far larger
    # than the rest and would otherwise only shift the median by one rank.
    med = np.median(low[:, 1:], axis=1, keepdims=True)
    return _pack_bits(low > med)


def _dhash(small: np.ndarray) -> np.ndarray:
    """dHash of ``(n, 8, 9)`` thumbnails: is each pixel brighter than its left neighbour."""
    return _pack_bits((small[:, :, 1:] > small[:, :, :-1]).reshape(len(small), 64))


def _masked_median(d: np.ndarray) -> np.ndarray:
    """Median of each row of ``d`` over its non-NaN entries (NaN for an all-NaN row), ``(n, 1)``.

    ``np.nanmedian`` loops in Python over the rows; one sort of the whole block does not.
    """
    srt = np.sort(d, axis=1)  # NaN sorts last
    m = (~np.isnan(d)).sum(axis=1)
    rows = np.arange(len(d))
    med = 0.5 * (srt[rows, np.maximum(m - 1, 0) // 2] + srt[rows, m // 2])
    return np.where(m > 0, med, np.nan)[:, None]


def _detail_bitmaps(grays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detail bit-maps of ``(n, 64, 64)`` grayscale images and of their mirrors, ``(n, 2, 64)`` uint64 each.

    Per image: the image minus its Gaussian blur (sigma :data:`_DETAIL_SIGMA`), the blur taken
    over the image area only (normalised by the blurred area mask, so that the black surround
    of a fundus photograph draws no ring at its rim). Word ``[:, 0, r]`` holds, for row ``r``,
    whether each pixel's detail lies above the image's median detail; word ``[:, 1, r]``
    whether the pixel is inside the image area (brighter than the surround, eroded by
    :data:`_FOV_ERODE` pixels). Only signs are kept, so no single strong structure (the optic
    disc's rim, at the same place in every eye) outweighs the vessels and texture that differ.
    """
    from scipy import ndimage

    # surround: darker than _FOV_LUMA, or for a dim image than half-way from its darkest pixels
    # to its median (its retina can lie below _FOV_LUMA), never below a quarter of the way
    flat = grays.reshape(len(grays), -1)
    k_lo, k_mid = int(0.02 * (flat.shape[1] - 1)), flat.shape[1] // 2
    part = np.partition(flat, (k_lo, k_mid), axis=1)
    lo, mid = part[:, k_lo], part[:, k_mid]
    level = np.maximum(lo + 0.25 * (mid - lo), np.minimum(_FOV_LUMA, lo + 0.5 * (mid - lo)))
    area = grays > level[:, None, None]
    if _FOV_ERODE:  # erode each image separately (no structure along the stack axis)
        area = ndimage.binary_erosion(area, structure=np.ones((1, 3, 3), bool), iterations=_FOV_ERODE)
    m = area.astype(np.float64)
    sig = (0.0, _DETAIL_SIGMA, _DETAIL_SIGMA)
    blur = ndimage.gaussian_filter(grays * m, sig) / np.maximum(ndimage.gaussian_filter(m, sig), 1e-3)
    d = np.where(area, grays - blur, np.nan).reshape(len(grays), -1)
    above = (d > _masked_median(d)).reshape(grays.shape)  # NaN compares False
    n, h, _ = grays.shape

    def pack(bits: np.ndarray) -> np.ndarray:
        return _pack_bits(bits.reshape(n * h, -1)).reshape(n, h)

    return (np.stack([pack(above), pack(area)], axis=1),
            np.stack([pack(above[:, :, ::-1]), pack(area[:, :, ::-1])], axis=1))


def _hash_inputs(images: Iterable[np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """Pixel hash and the 64x64 grayscale area thumbnail of each image (one pass over each)."""
    pixel_hashes: list[str] = []
    grays: list[np.ndarray] = []
    for i, img in enumerate(images):
        raw = np.asarray(img)
        if raw.dtype == np.uint8 and raw.ndim == 3 and raw.shape[2] in (1, 3) and min(raw.shape[:2]) >= _PIXEL_HASH_PX:
            # the preprocessing cache (uint8): OpenCV's area resampling, 10x faster than the float64 path
            import cv2

            small = cv2.resize(raw, (_PIXEL_HASH_PX, _PIXEL_HASH_PX), interpolation=cv2.INTER_AREA)
            small = small.reshape(_PIXEL_HASH_PX, _PIXEL_HASH_PX, -1).astype(np.float64) / 255.0
        else:
            arr = _as_hwc(img, i)
            # one pass over the full image; everything else is derived from 64x64
            # (area resampling 64 -> 32 is exactly the same as H -> 32)
            small = np.clip(_resize(arr, _PIXEL_HASH_PX, _PIXEL_HASH_PX), 0.0, 1.0)
        q = np.rint(small * 255.0).astype(np.uint8)
        h = hashlib.sha256(f"{q.shape}".encode())
        h.update(q.tobytes())
        pixel_hashes.append(h.hexdigest())
        grays.append(small[:, :, 0] if small.shape[2] == 1 else (small * _LUMA).sum(axis=2))
    return pixel_hashes, grays


def fingerprints(images: Iterable[np.ndarray], *, keypoints: bool = True) -> dict[str, np.ndarray]:
    """Exact and perceptual hashes of decoded images, and detail bit-maps, for duplicate search.

    Parameters
    ----------
    images : iterable of numpy.ndarray
        Decoded images (``H x W x C`` float in [0, 1], or integer pixels scaled by their
        dtype's maximum, e.g. the uint8 preprocessing cache; ``C`` = 1 or 3, or ``H x W``),
        in the order of the cohort table's rows.

    Returns
    -------
    dict of str to numpy.ndarray
        Arrays of length n, aligned with the input order:

        ``pixel_hash``
            sha256 hex (``object`` array of str) of the image area-resampled to 64x64
            per channel and quantized to uint8, so that the same pixels read from two
            differently encoded files (PNG and lossless TIFF) match exactly.
        ``phash``, ``phash_flip``
            uint64 pHash of the image and of its horizontal mirror (grayscale 32x32
            area thumbnail, 2-D DCT, low 8x8 block > its AC median).
        ``dhash``, ``dhash_flip``
            uint64 dHash of the image and of its mirror (grayscale 9x8 thumbnail,
            each pixel > its left neighbour).
        ``detail``, ``detail_flip``
            ``(n, 2, 64)`` uint64 detail bit-maps of the image and of its mirror: the
            sign of the fine detail of the 64x64 grayscale thumbnail (``[:, 0]``, one
            word per row) and where the image is (``[:, 1]``: not the black surround); see
            :data:`DETAIL_THRESHOLD` and :func:`detail_similarity`.
        ``kp_xy``, ``kp_xy_flip``, ``kp_desc``, ``kp_desc_flip``, ``dense``
            Keypoints on the vessel tree of the image and of its mirror, and the sign of its
            fine detail, for the geometric verification of near-duplicates
            (:func:`medxcept.integrity.duplicates.keypoint_features`); absent with ``keypoints=False``.

    Notes
    -----
    Grayscale uses ITU-R 601 luma weights. Thumbnails come from exact area
    resampling (running sums, one pass over each image: ~15 ms for a 3-megapixel
    photograph); the DCT, the detail filter and bit packing run on all thumbnails at
    once. The detail bit-maps take 2 KB per image (40 MB for 20,000 images).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.random((40, 50, 3)).astype("float32")
    >>> fp = fingerprints([img, img[:, ::-1]])
    >>> bool(fp["phash_flip"][0] == fp["phash"][1])
    True
    >>> bool((fp["detail_flip"][0] == fp["detail"][1]).all())
    True
    """
    if not isinstance(images, (np.ndarray, Sequence)):
        images = list(images)  # read twice: hashes, then keypoints
    if not keypoints:
        return _hashes(images)
    # the hashes in one thread while the keypoints take the cores: they fill the gaps the keypoint
    # workers leave (Python between OpenCV calls); a bad image is reported by the hashes' check
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashes = pool.submit(_hashes, images)
        try:
            kp = keypoint_features(images)
        except Exception:
            hashes.result()  # the ConfigError naming the image, when that is the cause
            raise
        return {**kp, **hashes.result()}


def _hashes(images: Sequence[np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
    """Pixel hash, pHash, dHash and detail bit-maps of each image (see :func:`fingerprints`)."""
    pixel_hashes, grays = _hash_inputs(images)
    n = len(pixel_hashes)
    if n == 0:
        empty = np.zeros(0, dtype=np.uint64)
        return {
            "pixel_hash": np.zeros(0, dtype=object),
            "phash": empty,
            "phash_flip": empty.copy(),
            "dhash": empty.copy(),
            "dhash_flip": empty.copy(),
            "detail": np.zeros((0, 2, DETAIL_PX), dtype=np.uint64),
            "detail_flip": np.zeros((0, 2, DETAIL_PX), dtype=np.uint64),
        }
    g = np.stack(grays)
    # area resampling of all 64 x 64 thumbnails at once (the same sums as one image at a time)
    t = _resize_stack(g, _THUMB_PX, _THUMB_PX)
    s = _resize_stack(g, 8, 9)
    detail, detail_flip = _detail_bitmaps(g)
    return {
        "pixel_hash": np.array(pixel_hashes, dtype=object),
        "phash": _phash(t),
        "phash_flip": _phash(t[:, :, ::-1]),
        "dhash": _dhash(s),
        "dhash_flip": _dhash(s[:, :, ::-1]),
        "detail": detail,
        "detail_flip": detail_flip,
    }


# ------------------------------------------------------------------- pair search


def _popcount(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64 (numpy >= 2 has a ufunc; else a byte table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    b = np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8).reshape(*x.shape, 8)
    return table[b].sum(axis=-1, dtype=np.uint8)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Elementwise Hamming distance between uint64 hashes (broadcasting).

    >>> int(hamming(np.uint64(0b1011), np.uint64(0b0001)))
    2
    """
    return _popcount(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def check_fingerprints(fp: dict[str, np.ndarray], n: int) -> None:
    need = ("pixel_hash", "phash", "phash_flip", "dhash", "dhash_flip")
    missing = [k for k in need if k not in fp]
    if missing:
        raise ConfigError(f"fingerprints dict lacks {missing}; build it with medxcept.integrity.audit.fingerprints()")
    bad = {k: len(fp[k]) for k in need if len(fp[k]) != n}
    if bad:
        raise ConfigError(
            f"fingerprints have lengths {bad} but the cohort has {n} rows; "
            "compute them from the images in the order of the cohort table"
        )


def detail_similarity(
    fp: dict[str, np.ndarray], i: np.ndarray, j: np.ndarray, flipped: np.ndarray | bool = False,
    *, chunk: int = 1 << 16,
) -> np.ndarray:
    """How far the fine detail of image pairs ``(i[k], j[k])`` agrees, in [-1, 1].

    Parameters
    ----------
    fp : dict
        :func:`fingerprints` (``detail`` and ``detail_flip``).
    i, j : array of int
        Row positions of the pairs.
    flipped : bool or array of bool, default False
        Compare ``i`` with the mirror image of ``j`` (per pair).
    chunk : int, default 65536
        Pairs per numpy block (memory ~ 2 KB each).

    Returns
    -------
    numpy.ndarray
        ``2 * share - 1`` per pair, ``share`` being the share of the pixels inside both
        images where both details have the same sign: 1 for the same picture, about 0 for
        unrelated ones. NaN where fewer than 256 pixels lie inside both images (a black
        or flat image): nothing to compare.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.random((64, 64, 3)), rng.random((64, 64, 3))
    >>> fp = fingerprints([a, b, a[:, ::-1]])
    >>> s = detail_similarity(fp, [0, 0, 0], [1, 2, 2], [False, False, True])
    >>> bool(abs(s[0]) < 0.1 and abs(s[1]) < 0.1 and s[2] == 1.0)
    True
    """
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    flip = np.broadcast_to(np.asarray(flipped, dtype=bool), i.shape)
    det = np.asarray(fp["detail"], dtype=np.uint64)
    det_flip = np.asarray(fp["detail_flip"], dtype=np.uint64)
    out = np.empty(len(i), dtype=np.float64)
    for a in range(0, len(i), chunk):
        ii, jj, ff = i[a:a + chunk], j[a:a + chunk], flip[a:a + chunk]
        x = det[ii]
        y = det[jj]
        y[ff] = det_flip[jj[ff]]
        both = x[:, 1] & y[:, 1]
        n_both = _popcount(both).sum(axis=1, dtype=np.int64)
        n_agree = _popcount(~(x[:, 0] ^ y[:, 0]) & both).sum(axis=1, dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a:a + chunk] = np.where(n_both >= _MIN_OVERLAP, 2.0 * n_agree / n_both - 1.0, np.nan)
    return out


def near_duplicate_pairs(
    fp: dict[str, np.ndarray],
    hamming_threshold: int = DEFAULT_HAMMING_THRESHOLD,
    *,
    detail_threshold: float | None = DETAIL_THRESHOLD,
    layout_margin: float | None = DETAIL_LAYOUT_MARGIN,
    block_elements: int = 1 << 22,
) -> pd.DataFrame:
    """All pairs of images whose pHash and dHash lie within ``hamming_threshold`` and whose detail agrees.

    Parameters
    ----------
    fp : dict
        Output of :func:`fingerprints` (row order = image order).
    hamming_threshold : int, default 10
        Largest Hamming distance (bits out of 64) on both hashes.
    detail_threshold : float or None, default :data:`DETAIL_THRESHOLD`
        Smallest :func:`detail_similarity` of a hash candidate, in the orientation its
        hashes matched. ``None``, or a ``fp`` without ``detail``, keeps every hash candidate.
    layout_margin : float or None, default :data:`DETAIL_LAYOUT_MARGIN`
        How much more than ``i``'s agreement with the cohort's other images (:func:`_layout_similarity`)
        a candidate's detail similarity must be; ``None``: no such check.
    block_elements : int, default 2**22
        Pairs compared per numpy block (memory ~ 9 bytes each).

    Returns
    -------
    pandas.DataFrame
        Columns ``i < j`` (row positions), ``phash_distance``, ``dhash_distance``,
        ``flipped`` (True when ``j`` matches the mirror image of ``i``) and
        ``detail_similarity`` (NaN when not computed). A pair that matches both ways is
        reported once, unflipped.

    Notes
    -----
    Exhaustive and exact: pHashes of each block of rows are XOR-ed against all later
    rows (and against their mirror hashes) and popcounted in numpy, about n^2 popcounts
    in all; the pHash candidates are then checked on dHash, and the survivors on their
    detail bit-maps (:func:`detail_similarity`: 192 word operations a pair). An image
    without detail to compare (NaN similarity) is judged on its hashes alone.
    """
    ph = np.asarray(fp["phash"], dtype=np.uint64)
    phf = np.asarray(fp["phash_flip"], dtype=np.uint64)
    dh = np.asarray(fp["dhash"], dtype=np.uint64)
    dhf = np.asarray(fp["dhash_flip"], dtype=np.uint64)
    check = detail_threshold is not None and "detail" in fp and "detail_flip" in fp
    n = len(ph)
    t = int(hamming_threshold)
    rows = max(1, block_elements // max(n, 1))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool, np.ndarray]] = []
    for flipped, other_p, other_d in ((False, ph, dh), (True, phf, dhf)):
        for a in range(0, n, rows):
            b = min(n, a + rows)
            d = _popcount(ph[a:b, None] ^ other_p[None, a:])
            hit = d <= t
            # keep j > i only (the diagonal block holds i == j and both orders)
            hit[:, : b - a] &= np.triu(np.ones((b - a, b - a), dtype=bool), k=1)
            ii, jj = np.nonzero(hit)
            if not len(ii):
                continue
            i, j = ii + a, jj + a
            dp = d[ii, jj]
            dd = hamming(dh[i], other_d[j])
            ok = dd <= t
            i, j, dp, dd = i[ok], j[ok], dp[ok], dd[ok]
            sim = np.full(len(i), np.nan)
            if check and len(i):
                sim = detail_similarity(fp, i, j, flipped)
                ok = ~(sim < detail_threshold)  # NaN (no detail to compare) keeps the hash verdict
                i, j, dp, dd, sim = i[ok], j[ok], dp[ok], dd[ok], sim[ok]
                if layout_margin is not None and len(i):
                    ok = ~(sim - _layout_similarity(fp, i, j, flipped) < layout_margin)
                    i, j, dp, dd, sim = i[ok], j[ok], dp[ok], dd[ok], sim[ok]
            found.append((i, j, dp, dd, flipped, sim))
    names = ("i", "j", "phash_distance", "dhash_distance", "flipped", "detail_similarity")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for i, j, dp, dd, flipped, sim in found:
        cols["i"].append(i.astype(np.int64))
        cols["j"].append(j.astype(np.int64))
        cols["phash_distance"].append(dp.astype(np.int64))
        cols["dhash_distance"].append(dd.astype(np.int64))
        cols["flipped"].append(np.full(len(i), flipped))
        cols["detail_similarity"].append(sim.astype(np.float64))
    if not found:
        dtypes = (np.int64, np.int64, np.int64, np.int64, bool, np.float64)
        return pd.DataFrame({k: np.zeros(0, dt) for k, dt in zip(names, dtypes, strict=True)})
    out = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    out = out.sort_values(["i", "j", "flipped"], kind="stable")
    return out.drop_duplicates(["i", "j"], keep="first").reset_index(drop=True)


def _layout_similarity(fp: dict[str, np.ndarray], i: np.ndarray, j: np.ndarray, flipped: bool) -> np.ndarray:
    """What the cohort's shared layout alone gives each pair: ``i``'s detail similarity with other images.

    The 75th percentile of :func:`detail_similarity` of ``i`` with the images at ``N_LAYOUT_REFS + 2``
    positions spread evenly over the cohort, less ``i`` and ``j`` (:data:`N_LAYOUT_REFS` or more), in
    the pair's orientation; 0 where the cohort has no other image with detail to compare. A few copies of ``i`` among them do not
    show; a camera shared by a quarter of the cohort does.
    """
    n = len(np.asarray(fp["phash"]))
    refs = np.unique(np.linspace(0, n - 1, N_LAYOUT_REFS + 2).round().astype(np.int64))
    k = len(i)
    ii = np.repeat(i, len(refs))
    rr = np.tile(refs, k)
    sim = detail_similarity(fp, ii, rr, flipped).reshape(k, len(refs))
    sim[(rr.reshape(k, -1) == i[:, None]) | (rr.reshape(k, -1) == j[:, None])] = np.nan
    out = np.zeros(k)
    has = np.isfinite(sim).any(axis=1)
    if has.any():
        out[has] = np.nanpercentile(sim[has], 75, axis=1)
    return out


def _blank(fp: dict[str, np.ndarray]) -> np.ndarray:
    """Images without a picture to compare: no keypoint at all, or fewer than ``_MIN_OVERLAP`` pixels of image area.

    All surround, nothing SIFT finds anywhere even at its lowest contrast (a photograph darkened to
    black by an augmentation; a flat picture), or too little image area left in the 64-px detail
    bit-map to compare. Two such images have only their hashes in common, and the hashes see the
    frame. On the screening-style set (``benchmarks/near_duplicates.py --screening``, the engine
    before this rule), all 8 false pairs among 3,000 eyes were between such copies of different
    people's eyes, by the hash rule with no detail to compare: 5 between copies darkened to black
    (99th percentile of luma 0-1 of 255, no keypoint) and 3 between washed-out, zoomed copies with
    24-29 keypoints and 111-144 pixels of image area.
    """
    area = np.asarray(fp["detail"], dtype=np.uint64)[:, 1]
    return (_popcount(area).sum(axis=1, dtype=np.int64) < _MIN_OVERLAP) | (n_keypoints(fp) == 0)


_GEOMETRY_COLS = ["method", "inliers", "aligned_agreement", "rotation_deg", "scale", "shear_rad",
                  "shift_x", "shift_y"]


def verified_near_pairs(
    fp: dict[str, np.ndarray], hamming_threshold: int = DEFAULT_HAMMING_THRESHOLD
) -> pd.DataFrame:
    """Near-duplicate pairs, each confirmed by geometry (or, for structureless images, by detail).

    Pairs of images that both carry at least :data:`medxcept.integrity.duplicates.MIN_KEYPOINTS` keypoints
    are found and decided by :func:`medxcept.integrity.duplicates.geometric_pairs` (one affine transform
    with enough consistent keypoint matches, and the fine detail agreeing once aligned):
    ``method="geometry"``, with the transform and inlier count. A pair involving an image with
    fewer keypoints (a flat or smooth picture) is decided by :func:`near_duplicate_pairs` (hashes
    and detail sign agreement): ``method="detail"``; not a pair of two images without a picture
    (:func:`_blank`: no keypoint or no image area; pixel-identical ones are exact matches elsewhere). ``fp`` without keypoints (built with
    ``keypoints=False``): :func:`near_duplicate_pairs` for every pair.

    Returns
    -------
    pandas.DataFrame
        ``i < j``, ``phash_distance``, ``dhash_distance``, ``flipped``, ``detail_similarity``,
        ``method``, ``inliers``, ``aligned_agreement``, ``rotation_deg``, ``scale``, ``shear_rad``,
        ``shift_x``, ``shift_y`` (the transform placing ``j``, mirrored when ``flipped``, on ``i``;
        shifts as a share of the side; NaN for ``method="detail"``).
    """
    cols = ["i", "j", "phash_distance", "dhash_distance", "flipped", "detail_similarity"] + _GEOMETRY_COLS
    if "kp_desc" not in fp:
        return near_duplicate_pairs(fp, hamming_threshold).assign(method="detail").reindex(columns=cols)
    poor = n_keypoints(fp) < MIN_KEYPOINTS
    geo = geometric_pairs(fp)
    geo = geo[geo["confirmed"].to_numpy(bool)]
    if len(geo):
        gi, gj = geo["i"].to_numpy(np.int64), geo["j"].to_numpy(np.int64)
        geo = geo[~poor[gi] & ~poor[gj]]
    ph = np.asarray(fp["phash"], dtype=np.uint64)
    dh = np.asarray(fp["dhash"], dtype=np.uint64)
    gi, gj = geo["i"].to_numpy(np.int64), geo["j"].to_numpy(np.int64)
    fl = geo["flipped"].to_numpy(bool)
    other_p = np.where(fl, np.asarray(fp["phash_flip"], dtype=np.uint64)[gj], ph[gj])
    other_d = np.where(fl, np.asarray(fp["dhash_flip"], dtype=np.uint64)[gj], dh[gj])
    geo = geo.assign(method="geometry", phash_distance=hamming(ph[gi], other_p).astype(np.int64),
                     dhash_distance=hamming(dh[gi], other_d).astype(np.int64), detail_similarity=np.nan)
    # a pair confirmed both ways keeps its geometric evidence (transform, inliers)
    parts = [geo.reindex(columns=cols)]
    # the former rule decides only pairs with a structureless image (and costs nothing when there is
    # none: on 20,000 look-alikes its detail check of every hash candidate took 16 s)
    if poor.any():
        old = near_duplicate_pairs(fp, hamming_threshold)
        oi, oj = old["i"].to_numpy(np.int64), old["j"].to_numpy(np.int64)
        # two images with no picture (all surround: a copy darkened to black) share their hashes and
        # nothing else: no one's retina is in them (identical ones are still exact pixel matches)
        blank = _blank(fp)
        old = old[(poor[oi] | poor[oj]) & ~(blank[oi] & blank[oj])]
        parts.append(old.assign(method="detail").reindex(columns=cols))
    out = pd.concat(parts, ignore_index=True)
    out = out.sort_values(["i", "j"], kind="stable").drop_duplicates(["i", "j"])
    return out.reset_index(drop=True)


def _group_pairs(keys: pd.Series, max_clique: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of row positions sharing a key: all pairs of a small group, a star for large ones."""
    pos = pd.Series(np.arange(len(keys)), index=keys.index)
    valid = keys.notna() & (keys.astype(str) != "") & keys.duplicated(keep=False)
    grouped = pos[valid.to_numpy()].groupby(keys[valid].to_numpy(), sort=True)
    ii: list[np.ndarray] = []
    jj: list[np.ndarray] = []
    for _, members in grouped:
        m = np.sort(members.to_numpy())
        if len(m) < 2:
            continue
        if len(m) <= max_clique:
            a, b = np.triu_indices(len(m), k=1)
            ii.append(m[a])
            jj.append(m[b])
        else:  # a star keeps the same connected component without m^2 pairs
            ii.append(np.full(len(m) - 1, m[0]))
            jj.append(m[1:])
    if not ii:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ii).astype(np.int64), np.concatenate(jj).astype(np.int64)


_MATCH_RANK = {"sha256": 0, "pixel": 1, "near": 2}

HUB_PATIENTS = 3
"""An image near-paired with images of this many other patients or more is a hub, checked by :func:`_hub_pairs`."""
HUB_COHESION = 0.5
"""Share of a hub's other partners a partner must itself be near-paired with for its pair to the hub to stand."""


def _patients(df: pd.DataFrame) -> np.ndarray:
    """The patient of each row (``patient_key``, else ``patient_id``; else each row its own)."""
    for col in ("patient_key", "patient_id"):
        if col in df.columns:
            return df[col].astype(str).to_numpy()
    return np.arange(len(df)).astype(str)


def _other_eye_pairs(df: pd.DataFrame, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Pairs of the left and the right eye of one patient (both lateralities known and different)."""
    if "laterality" not in df.columns or not len(i):
        return np.zeros(len(i), bool)
    pat = _patients(df)
    lat = df["laterality"].astype(str).str.upper().to_numpy()
    known = np.isin(lat[i], ("L", "R")) & np.isin(lat[j], ("L", "R"))
    return (pat[i] == pat[j]) & known & (lat[i] != lat[j])


def _hub_pairs(pat: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Near pairs through a hub that its partners do not share: a generic match, not a copy group.

    A copy group is small and closed: copies of one photograph are near-duplicates of the
    original and of each other. A photograph "matching" the images of many different people
    whose images do not match each other says that the rule matched something every picture
    has (the camera's frame, a dim featureless retina). For each hub (an image paired with images
    of :data:`HUB_PATIENTS` or more other patients), a pair to partner ``p`` stands when ``p`` is
    itself paired with at least :data:`HUB_COHESION` of the hub's other partners; the others are
    returned (True). A guard: on the screening-style look-alikes of ``benchmarks/near_duplicates.py`` the
    former engine's false pairs reached a hub of 5 patients at 300 eyes; the current one leaves no
    false pair there for it to drop.
    """
    drop = np.zeros(len(i), bool)
    if len(i) < HUB_PATIENTS:
        return drop
    edges = set(zip(i.tolist(), j.tolist(), strict=True)) | set(zip(j.tolist(), i.tolist(), strict=True))
    nodes = np.r_[i, j]
    other = np.r_[j, i]
    k = np.r_[np.arange(len(i)), np.arange(len(i))]
    order = np.argsort(nodes, kind="stable")
    bounds = np.r_[0, np.nonzero(np.diff(nodes[order]))[0] + 1, len(order)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[a:b]
        h = int(nodes[idx[0]])
        partners = other[idx]
        if len(set(pat[partners].tolist()) - {pat[h]}) < HUB_PATIENTS:
            continue
        for e, p in zip(k[idx].tolist(), partners.tolist(), strict=True):
            rest = [q for q in partners.tolist() if q != p]
            shared = sum((p, q) in edges for q in rest)
            if shared < HUB_COHESION * len(rest):
                drop[e] = True
    return drop


def duplicate_pairs(df: pd.DataFrame, fp: dict[str, np.ndarray] | None, hamming_threshold: int) -> pd.DataFrame:
    """Every duplicate pair (row positions i < j) with its strongest kind of match."""
    parts: list[pd.DataFrame] = []
    if "sha256" in df.columns:
        # frames of one multi-frame DICOM share the file hash: key on (sha256, frame)
        frame = df["frame"].astype(str) if "frame" in df.columns else pd.Series("0", index=df.index)
        sha = df["sha256"].astype("string")
        key = (sha + "#" + frame).where(sha.notna() & (sha != ""))
        i, j = _group_pairs(key)
        parts.append(pd.DataFrame({"i": i, "j": j, "match": "sha256"}))
    if fp is not None:
        i, j = _group_pairs(pd.Series(fp["pixel_hash"], index=df.index))
        parts.append(pd.DataFrame({"i": i, "j": j, "match": "pixel"}))
        near = verified_near_pairs(fp, hamming_threshold)
        ni, nj = near["i"].to_numpy(np.int64), near["j"].to_numpy(np.int64)
        # the left and the right eye of one patient are two eyes, however alike their photographs
        other_eye = _other_eye_pairs(df, ni, nj)
        near = near[~other_eye]
        ni, nj = ni[~other_eye], nj[~other_eye]
        hub = _hub_pairs(_patients(df), ni, nj)
        if hub.any():
            logger.warning("near-duplicates: %d pair(s) dropped, each through a photograph paired with %d or more "
                           "other patients whose photographs do not match each other (a generic match: the "
                           "camera's frame or a featureless picture, not a copy)", int(hub.sum()), HUB_PATIENTS)
        parts.append(near[~hub].assign(match="near"))
    cols = ["i", "j", "match", "phash_distance", "dhash_distance", "flipped", "detail_similarity"]
    cols += _GEOMETRY_COLS
    if not parts:
        return pd.DataFrame(columns=cols)
    pairs = pd.concat(parts, ignore_index=True).reindex(columns=cols)
    pairs["rank"] = pairs["match"].map(_MATCH_RANK)
    pairs = pairs.sort_values(["i", "j", "rank"], kind="stable").drop_duplicates(["i", "j"])
    return pairs.drop(columns="rank").reset_index(drop=True)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` nodes joined by edges ``i - j``."""
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # renumber by first member so ids follow row order
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))
    return order[labels]


def duplicate_groups(
    df: pd.DataFrame,
    fp: dict[str, np.ndarray] | None = None,
    threshold: int = DEFAULT_HAMMING_THRESHOLD,
) -> pd.Series:
    """Group id of every image, where exact and near duplicates share one group.

    Pass the result to :func:`medxcept.integrity.splits.assign_splits` (``merge=``) so that every
    copy of an image, and every patient holding one, lands in the same split.

    Parameters
    ----------
    df : pandas.DataFrame
        Cohort table (``image_id``, ``sha256``, ``frame``).
    fp : dict, optional
        :func:`fingerprints` of the rows of ``df``, in order; without it only
        identical files (``sha256``) are grouped.
    threshold : int, default 10
        Hamming threshold for near-duplicates.

    Returns
    -------
    pandas.Series
        Integer group id, indexed by ``image_id``, named ``dup_group``. Singletons get
        their own id; ids are numbered in row order.
    """
    if fp is not None:
        check_fingerprints(fp, len(df))
    given_ids = df["image_id"]
    canon, fp, order = canonical_rows(df.reset_index(drop=True), fp)  # groups independent of row order
    pairs = duplicate_pairs(canon, fp, threshold)
    labels = components(len(canon), pairs["i"].to_numpy(np.int64), pairs["j"].to_numpy(np.int64))
    return input_order_groups(labels, order, given_ids)


def canonical_rows(
    df: pd.DataFrame, fp: dict[str, np.ndarray] | None
) -> tuple[pd.DataFrame, dict[str, np.ndarray] | None, np.ndarray]:
    """``df`` and ``fp`` in a canonical row order, so the findings do not depend on the table's order.

    The pair search is not symmetric in its two images (``i < j`` compares ``i`` with the
    mirror of ``j``, and a large group of copies is joined as a star around its first row),
    and the cohort table's order follows the per-machine pseudonyms; sorting rows by content
    (``sha256#frame``, then the decoded-pixel hash, then the raw ``patient_id`` held in
    memory) first makes the same images give the same findings on any machine and cache.
    Also returns ``order`` (canonical position -> input row).
    """
    keys: list[np.ndarray] = [df["image_id"].astype(str).to_numpy()]  # last resort
    for col in ("patient_key", "patient_id"):
        if col in df.columns:
            keys.insert(0, df[col].astype(str).to_numpy())
    if fp is not None:
        keys.insert(0, np.asarray(fp["pixel_hash"]).astype(str))
    keys.insert(0, content_ids(df).astype(str).to_numpy())
    order = np.lexsort(keys[::-1])  # lexsort: the last key is the primary one
    if (order == np.arange(len(df))).all():
        return df, fp, order
    out = df.iloc[order].reset_index(drop=True)
    if fp is None:
        return out, None, order
    return out, {k: (np.asarray(v)[order] if len(v) == len(df) else v) for k, v in fp.items()}, order


def input_order_groups(labels: np.ndarray, order: np.ndarray, image_ids: pd.Series) -> pd.Series:
    """Component labels computed in canonical order, back in input row order, numbered by first row."""
    back = np.empty(len(labels), dtype=np.int64)
    back[order] = labels
    _, first = np.unique(back, return_index=True)
    rank = np.argsort(np.argsort(first))
    return pd.Series(rank[back], index=pd.Index(image_ids.astype(str), name="image_id"), name="dup_group")


