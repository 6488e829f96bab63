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
import scipy.fft

from medxcept.errors import ConfigError
from medxcept.integrity.duplicates import (
    keypoint_features,
)

__all__ = ["DETAIL_PX", "fingerprints", "hamming", "popcount", "check_fingerprints"]

logger = logging.getLogger("medxcept.integrity.audit")  # the log lines keep their logger name




DETAIL_PX = 64
"""Side of the detail bit-maps: the 64 x 64 thumbnail of the pixel hash, one uint64 word per row."""

_DETAIL_SIGMA = 1.0  # the bit-map keeps detail finer than a Gaussian of this sigma (in 64-px pixels)
_FOV_LUMA = 0.04  # pixels darker than this are surround (black), not image (a dim image: see _detail_bitmaps)
_FOV_ERODE = 5
"""Pixels (of 64) dropped along the surround's edge, the chords and the frame before detail is compared.

Every photograph of one camera has the same circle, the same flat cuts at top and bottom and the
same dark vignette ring inside the edge (13-16 % of the radius on screening exports): a band common
to all of them that says nothing about identity. 2 px (the former value) kept most of the ring."""

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


def popcount(x: np.ndarray) -> np.ndarray:
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
    return popcount(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


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
