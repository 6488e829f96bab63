"""Turn a decoded image into the fixed-size uint8 picture the model is trained on.

Input is the decoded image contract (float32 ``H x W x C`` in ``[0, 1]``, ``C`` 1 or 3);
output is ``image_px x image_px x 3`` uint8. uint8 keeps the on-disk cache four times
smaller than float32 and is exactly what augmentation (albumentations) expects; the
mapping to the network's ``[-1, 1]`` happens in one place only, :func:`to_model_range`.

Fundus photographs (``modality="fundus"``), in order, each step for a reason:

1. **Find the field of view** (:func:`find_fov`). A fundus camera images a bright disc
   on a black surround; the disc's size and position depend on camera and sensor, not
   on the eye.
2. **Crop to the disc's bounding square.** Every image then shows the retina at the
   same scale, so a lesion of a given size covers the same number of pixels whatever
   the camera, and no resolution is spent on black surround.
3. **Pad to a square with black.** Discs clipped by the frame at top and bottom (a
   common camera format) keep their shape instead of being stretched.
4. **Resize with an area filter** to ``image_px`` (299 for Xception): each output pixel
   is the average of the input pixels it covers (OpenCV's ``INTER_AREA``), so fine
   vessels do not alias into moiré when shrinking a large photograph. A camera-size
   JPEG arrives already reduced by the decoder (:func:`decode_min_side`), so this
   step never works on a 12-megapixel float image.
5. **Optional illumination normalisation** (``illumination="ben_graham"``): subtract a
   large Gaussian blur (sigma ``image_px / 30``) and re-centre on mid-grey, as in Ben
   Graham's winning Kaggle diabetic-retinopathy entry. It removes the slow
   vignetting and overall colour cast that differ between cameras and sites (a
   shortcut a network will happily learn) and leaves vessels, haemorrhages and
   exudates, which are small. The blur is *normalised* by the blurred FOV mask so
   the black surround does not leak in and draw a bright ring at the rim.
6. **Optional CLAHE** on the luminance (``L`` of Lab): raises local contrast of dim
   images without shifting hue.
7. **Mask outside the FOV** to black: text overlays, notches and light leaks outside
   the disc are camera signatures, i.e. site confounders; masking also makes the
   rotation augmentation seamless (the fill colour equals the surround).

Radiograph-like images (``modality="gray"``): optional percentile clip (removes burnt-in
text and collimator extremes before contrast is stretched), optional CLAHE, pad to
square, resize with anti-aliasing, replicate to three channels (Xception and its
ImageNet weights expect RGB).

:func:`medxcept.images.quality.quality` measures brightness, contrast and sharpness so an all-black or
hopelessly blurred image never silently enters training; :func:`~medxcept.images.quality.apply_quality_policy`
turns the measurement into an exclusion (a :class:`~medxcept.errors.ReadError` with
``stage="quality"``) or a flag, according to ``PreprocessConfig.quality_policy``.

:class:`medxcept.images.cache.PreprocessCache` stores preprocessed images on disk, keyed by file hash,
frame and :meth:`PreprocessConfig.key`, so a config change never reuses stale pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from skimage import color, exposure, transform
from skimage.filters import threshold_otsu

from medxcept.errors import ConfigError

__all__ = [
    "decode_min_side",
    "DECODE_MARGIN",
    "PREPROCESS_VERSION",
    "MODALITIES",
    "QUALITY_PX",
    "PreprocessConfig",
    "find_fov",
    "preprocess",
    "to_model_range",
    "as_float_image",
    "luminance",
    "disc_mask",
    "square_window",
    "resize_gaussian",
]

logger = logging.getLogger(__name__)

#: Bumped whenever the pixel output of :func:`preprocess` changes for the same config;
#: it is part of :meth:`PreprocessConfig.key`, so old cache entries are never reused.
#: 2: area-filter resize (was scikit-image's Gaussian anti-aliasing + bilinear).
PREPROCESS_VERSION = 2

MODALITIES = ("fundus", "gray")
ILLUMINATIONS = ("none", "ben_graham")
QUALITY_POLICIES = ("exclude", "flag", "off")

QUALITY_PX = 256  # fixed size on which sharpness is measured, so it is comparable across sizes
_FOV_WORK_PX = 512  # find_fov works on a copy no larger than this (speed; the circle is large)
#: A photograph is decoded with at least this many times the pixels the outputs need across its
#: field of view (:func:`decode_min_side`): 2 keeps the area filter's last step a real
#: reduction, so the output matches a full-resolution computation (tests/test_preprocess.py).
DECODE_MARGIN = 2


@dataclass(frozen=True)
class PreprocessConfig:
    """Options of :func:`preprocess` (validated on creation).

    Parameters
    ----------
    image_px : int, default 299
        Side of the square output. At least the backbone's smallest input (Xception: 71; checked
        by ``RunConfig`` against ``medxcept.models.backbones``); 299 is Xception's native size.
    fov_crop : bool, default True
        Fundus only: crop to the bounding square of the field of view.
    illumination : {"none", "ben_graham"}, default "none"
        Fundus only: "ben_graham" subtracts a Gaussian blur of sigma ``image_px / 30``.
    clahe : bool, default False
        Contrast-limited adaptive histogram equalisation on luminance.
    mask_outside_fov : bool, default True
        Fundus only: set pixels outside the FOV circle to black.
    clip_percentiles : tuple of two floats or None, default None
        Gray only: clip intensities to these percentiles (e.g. ``(0.5, 99.5)``) and
        stretch to ``[0, 1]``.
    quality_policy : {"exclude", "flag", "off"}, default "exclude"
        What :func:`~medxcept.images.quality.apply_quality_policy` does with an image whose score is below
        ``min_quality``: exclude it (an ``exclusions.csv`` row), keep it but flag it,
        or skip the check. Exclusions and flags are counted per class in ``check.html``
        and the report (:mod:`medxcept.cohort.class_exclusions`), with a warning when the gate
        removes one class more than the others (README, "Design choices").
    min_quality : float, default 0.5
        Threshold on :func:`~medxcept.images.quality.quality`'s ``score`` in ``[0, 1]``. 0.5 means every measure
        (brightness, contrast, sharpness) reaches its documented threshold.
    """

    image_px: int = 299
    fov_crop: bool = True
    illumination: str = "none"
    clahe: bool = False
    mask_outside_fov: bool = True
    clip_percentiles: tuple[float, float] | None = None
    quality_policy: str = "exclude"
    min_quality: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.image_px, bool) or not isinstance(self.image_px, (int, np.integer)):
            raise ConfigError(f"preprocess.image_px must be an integer, got {self.image_px!r}")
        if self.image_px < 1:  # the backbone's own minimum: RunConfig (medxcept.models.backbones)
            raise ConfigError(f"preprocess.image_px={self.image_px} must be a positive number of pixels")
        for name in ("fov_crop", "clahe", "mask_outside_fov"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"preprocess.{name} must be true or false, got {getattr(self, name)!r}")
        if self.illumination not in ILLUMINATIONS:
            raise ConfigError(
                f"preprocess.illumination={self.illumination!r} is not one of {list(ILLUMINATIONS)}"
            )
        if self.quality_policy not in QUALITY_POLICIES:
            raise ConfigError(
                f"preprocess.quality_policy={self.quality_policy!r} is not one of {list(QUALITY_POLICIES)}"
            )
        mq = self.min_quality
        if isinstance(mq, bool) or not isinstance(mq, (int, float)) or not 0.0 <= float(mq) <= 1.0:
            raise ConfigError(f"preprocess.min_quality must be a number in [0, 1], got {mq!r}")
        cp = self.clip_percentiles
        if cp is not None:
            try:
                lo, hi = (float(v) for v in cp)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"preprocess.clip_percentiles must be two numbers like [0.5, 99.5] or null, got {cp!r}"
                ) from None
            if not 0.0 <= lo < hi <= 100.0:
                raise ConfigError(
                    f"preprocess.clip_percentiles={list(cp)} must satisfy 0 <= low < high <= 100"
                )
            # Normalise lists from YAML to a hashable tuple of floats (frozen: use object.__setattr__).
            object.__setattr__(self, "clip_percentiles", (lo, hi))

    def key(self) -> str:
        """Stable short hash of the options that change pixels (12 hex characters).

        ``quality_policy`` and ``min_quality`` decide which images are *used*, not
        their pixels, so they are left out: changing them keeps the cache valid.
        :data:`PREPROCESS_VERSION` is included so a change of algorithm invalidates it.
        """
        fields = dataclasses.asdict(self)
        fields.pop("quality_policy")
        fields.pop("min_quality")
        if fields["clip_percentiles"] is not None:
            fields["clip_percentiles"] = [float(v) for v in fields["clip_percentiles"]]
        fields["image_px"] = int(fields["image_px"])
        fields["version"] = PREPROCESS_VERSION
        blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def decode_min_side(cfg: PreprocessConfig) -> int:
    """The pixels a decoded photograph must keep across its field of view (or its shorter side).

    Preprocessing crops the field of view's bounding square (the whole frame when none is
    found) and resizes it to ``image_px``; :func:`~medxcept.images.quality.quality` measures sharpness on a
    ``QUALITY_PX`` version of the same square. A decoder may therefore reduce a large
    photograph as long as the field of view keeps ``DECODE_MARGIN`` times the larger of the two
    across: :func:`medxcept.io.images.read_image` takes it as ``min_side`` (the shorter side
    is a first guess of the diameter; ingestion decodes again, finer, when the field of view
    turns out smaller).

    Examples
    --------
    >>> decode_min_side(PreprocessConfig(image_px=299))
    598
    >>> decode_min_side(PreprocessConfig(image_px=96))
    512
    """
    return DECODE_MARGIN * max(int(cfg.image_px), QUALITY_PX)


# --------------------------------------------------------------------------- helpers


def as_float_image(img: np.ndarray) -> np.ndarray:
    """Check the decoded image contract; return float32 H x W x C (C 1 or 3)."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"expected an H x W x C image with C 1 or 3, got shape {a.shape}")
    if a.shape[0] < 2 or a.shape[1] < 2:
        raise ValueError(f"image too small to preprocess: shape {a.shape}")
    if a.dtype == np.uint8:  # tolerated: an 8-bit image straight from a decoder
        return a.astype(np.float32) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected float values in [0, 1] (or uint8), got dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError("image contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"expected values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return np.clip(a, 0.0, 1.0)


def luminance(a: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an H x W x C float image (the channel itself when C is 1)."""
    if a.shape[2] == 1:
        return a[:, :, 0]
    return (0.299 * a[:, :, 0] + 0.587 * a[:, :, 1] + 0.114 * a[:, :, 2]).astype(np.float32)


def _fov_channel(a: np.ndarray) -> np.ndarray:
    """Channel used to find the FOV: red for colour fundus (brightest inside the disc,
    so dark images still separate from the surround), the image itself for gray."""
    return a[:, :, 0]


def _circle_fit(ys: np.ndarray, xs: np.ndarray) -> tuple[float, float, float]:
    """Algebraic least-squares (Kasa) circle through points: returns (cy, cx, r)."""
    A = np.column_stack([xs, ys, np.ones_like(xs)])
    b = -(xs**2 + ys**2)
    (D, E, F), *_ = np.linalg.lstsq(A, b, rcond=None)
    cx, cy = -D / 2.0, -E / 2.0
    r2 = cx**2 + cy**2 - F
    return float(cy), float(cx), float(math.sqrt(max(r2, 0.0)))


def _robust_circle_fit(
    ys: np.ndarray, xs: np.ndarray, *, r_min: float, r_max: float, n_trials: int = 256
) -> tuple[float, float, float] | None:
    """RANSAC circle through boundary points, refined by least squares on its inliers.

    A text overlay or light leak touching the disc adds boundary points that are not on
    the circle; a plain least-squares fit would be pulled towards them. Candidate
    circles through three random points (fixed seed: deterministic) are scored by the
    number of points within ``max(1.5, 1% of r)`` pixels. Returns None if no candidate
    has a plausible radius.
    """
    rng = np.random.default_rng(0)
    n = ys.size
    tri = rng.integers(0, n, size=(n_trials, 3))  # repeated points give d == 0: dropped
    x1, x2, x3 = xs[tri[:, 0]], xs[tri[:, 1]], xs[tri[:, 2]]
    y1, y2, y3 = ys[tri[:, 0]], ys[tri[:, 1]], ys[tri[:, 2]]
    d = 2.0 * (x1 * (y2 - y3) + x2 * (y3 - y1) + x3 * (y1 - y2))
    ok = np.abs(d) > 1e-9
    d = np.where(ok, d, 1.0)
    s1, s2, s3 = x1**2 + y1**2, x2**2 + y2**2, x3**2 + y3**2
    ccx = (s1 * (y2 - y3) + s2 * (y3 - y1) + s3 * (y1 - y2)) / d
    ccy = (s1 * (x3 - x2) + s2 * (x1 - x3) + s3 * (x2 - x1)) / d
    rr = np.hypot(x1 - ccx, y1 - ccy)
    ok &= (rr > r_min) & (rr < r_max)
    if not ok.any():
        return None
    ccx, ccy, rr = ccx[ok], ccy[ok], rr[ok]
    tol = np.maximum(1.5, 0.01 * rr)[:, None]
    res = np.abs(np.hypot(xs[None, :] - ccx[:, None], ys[None, :] - ccy[:, None]) - rr[:, None])
    best = int(np.argmax((res <= tol).sum(axis=1)))
    inl = res[best] <= tol[best, 0]
    if inl.sum() < 10:
        return None
    cy, cx, r = _circle_fit(ys[inl], xs[inl])
    # second pass: inliers of the refined circle
    inl = np.abs(np.hypot(xs - cx, ys - cy) - r) <= max(1.5, 0.01 * r)
    if inl.sum() >= 10:
        cy, cx, r = _circle_fit(ys[inl], xs[inl])
    return cy, cx, r


def disc_mask(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    """Boolean mask of pixels whose centre lies within the circle (pixel-centre coordinates)."""
    yy = np.arange(shape[0], dtype=np.float64)[:, None]
    xx = np.arange(shape[1], dtype=np.float64)[None, :]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# --------------------------------------------------------------------------- FOV


def find_fov(img: np.ndarray) -> tuple[float, float, float, bool]:
    """Locate the circular field of view of a fundus photograph.

    Parameters
    ----------
    img : ndarray
        Decoded image, float ``H x W x C`` in ``[0, 1]`` (uint8 is accepted too).

    Returns
    -------
    cy, cx, r : float
        Centre (row, column; pixel-centre coordinates) and radius in pixels of the
        original image.
    found : bool
        False when there is no dark surround or the bright region is not a disc. The
        returned circle is then the one that circumscribes the padded square image
        (centre of the image, radius half the longer side), so cropping to it keeps
        everything.

    Notes
    -----
    Works on a smoothed, downscaled (longest side <= 512) red channel. The threshold is
    relative to the image's own intensities, not a fixed 0.1, so a dark photograph
    (mean 0.08 inside the disc) is handled: ``background`` is a low quantile of the
    four corner patches (outside the disc in every fundus format), ``foreground`` the
    median of pixels above Otsu's threshold (computed on intensities clipped at their
    90th percentile, so burnt-in text or the optic disc cannot form the bright
    class), and the mask is everything above ``background + 0.3 * (foreground -
    background)``. Holes are filled and the largest component kept. The circle is a
    fit to the mask's boundary points *excluding those on the frame edge*, so a disc
    clipped at the top and bottom by the frame (a common camera format) or off-centre
    still yields its true centre and radius; the fit is RANSAC-robust, so a text
    overlay or light leak touching the disc does not pull it. It is accepted only
    when the circle (clipped to the frame) overlaps the mask with IoU >= 0.9. A disc
    clipped on all four sides so that less than 0.5% of the frame is surround counts
    as "no surround" (not found).
    """
    a = as_float_image(img)
    h, w = a.shape[:2]
    not_found = ((h - 1) / 2.0, (w - 1) / 2.0, max(h, w) / 2.0, False)
    ch = _fov_channel(a)
    f = max(1, math.ceil(max(h, w) / _FOV_WORK_PX))
    small = transform.downscale_local_mean(ch, (f, f)) if f > 1 else ch.astype(np.float64)
    # downscale_local_mean pads the last block with zeros; drop partial blocks.
    sh, sw = h // f, w // f
    small = small[:sh, :sw]
    if min(sh, sw) < 16:
        return not_found
    small = ndimage.gaussian_filter(small, sigma=1.5)

    # Background level: corners are outside the disc for every fundus format.
    cp = max(2, min(sh, sw) // 20)
    corners = np.concatenate(
        [small[:cp, :cp].ravel(), small[:cp, -cp:].ravel(), small[-cp:, :cp].ravel(), small[-cp:, -cp:].ravel()]
    )
    bg = float(np.quantile(corners, 0.25))
    # Clip at the 90th percentile first: a small very bright region (burnt-in text,
    # the optic disc) would otherwise become Otsu's "bright" class.
    clipped = np.minimum(small, np.quantile(small, 0.9))
    if float(clipped.max() - clipped.min()) < 1e-6:
        return not_found  # constant image
    t_otsu = float(threshold_otsu(clipped))
    above = small[small > t_otsu]
    if above.size == 0:
        return not_found
    fg = float(np.median(above))
    if fg - bg < 0.02 or bg > 0.35 * fg:
        return not_found  # no dark surround (pre-cropped image) or a blank frame
    thr = bg + 0.3 * (fg - bg)
    mask = small > thr
    labels, n = ndimage.label(mask)
    if n == 0:
        return not_found
    sizes = np.bincount(labels.ravel())[1:]
    mask = labels == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_fill_holes(mask)
    frac = float(mask.mean())
    if not 0.05 <= frac <= 0.995:
        return not_found

    boundary = mask & ~ndimage.binary_erosion(mask)
    ys, xs = np.nonzero(boundary)
    keep = (ys > 1) & (ys < sh - 2) & (xs > 1) & (xs < sw - 2)  # frame edge is not the circle
    ys, xs = ys[keep].astype(np.float64), xs[keep].astype(np.float64)
    if ys.size < 20:
        return not_found
    fit = _robust_circle_fit(ys, xs, r_min=0.1 * min(sh, sw), r_max=2.0 * max(sh, sw))
    if fit is None:
        return not_found
    cy, cx, r = fit
    if not (r > 0.1 * min(sh, sw) and r < 2.0 * max(sh, sw)):
        return not_found
    # The fitted boundary sits half a pixel inside the true rim.
    r += 0.5
    circ = disc_mask((sh, sw), cy, cx, r)
    inter = np.count_nonzero(circ & mask)
    union = np.count_nonzero(circ | mask)
    if union == 0 or inter / union < 0.9:
        return not_found
    # Back to original pixel-centre coordinates: small pixel i covers [i*f, (i+1)*f).
    return (cy + 0.5) * f - 0.5, (cx + 0.5) * f - 0.5, r * f, True


# --------------------------------------------------------------------------- geometry


def square_window(
    a: np.ndarray, cy: float, cx: float, r: float
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Cut the square ``[cy-r, cy+r] x [cx-r, cx+r]`` out of ``a``, padding with black.

    Returns the square, a mask of which square pixels came from the image (1) rather
    than padding (0), and the circle centre in the square's pixel-centre coordinates.
    """
    h, w, c = a.shape
    # continuous coordinates: pixel i covers [i, i+1)
    ccy, ccx = cy + 0.5, cx + 0.5
    side = max(1, int(math.ceil(2 * r)))
    y0 = int(math.floor(ccy - side / 2.0 + 0.5))
    x0 = int(math.floor(ccx - side / 2.0 + 0.5))
    out = np.zeros((side, side, c), dtype=np.float32)
    valid = np.zeros((side, side), dtype=np.float32)
    sy0, sy1 = max(y0, 0), min(y0 + side, h)
    sx0, sx1 = max(x0, 0), min(x0 + side, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = a[sy0:sy1, sx0:sx1]
        valid[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = 1.0
    return out, valid, cy - y0, cx - x0


def _resize(a: np.ndarray, px: int) -> np.ndarray:
    """Area-filter resize of an ``H x W x C`` image to ``px x px`` (no-op when already that size).

    OpenCV's ``INTER_AREA``: shrinking, each output pixel is the area-weighted mean of the
    input pixels it covers (the anti-aliasing low-pass and the resampling in one pass, in
    milliseconds); enlarging, it interpolates bilinearly. uint8 input gives uint8 output.
    """
    if a.shape[0] == px and a.shape[1] == px:
        return a if a.dtype == np.uint8 else a.astype(np.float32, copy=False)
    src = np.ascontiguousarray(a if a.dtype == np.uint8 else a.astype(np.float32, copy=False))
    out = cv2.resize(src, (px, px), interpolation=cv2.INTER_AREA).reshape((px, px) + a.shape[2:])
    return out if out.dtype == np.uint8 else np.clip(out, 0.0, 1.0)


def resize_gaussian(a: np.ndarray, px: int, *, reduce: int = 1) -> np.ndarray:
    """scikit-image's resize with Gaussian anti-aliasing (the sharpness measure is calibrated on it).

    ``reduce``: ``a`` was decoded at ``1 / reduce`` of the stored size. The blur is then the one
    scikit-image would apply to the stored image, ``(factor - 1) / 2`` stored pixels, expressed in
    ``a``'s pixels, less the variance of the decoder's own averaging (a box one pixel of ``a``
    wide: 1/12), so a reduced decode measures about the sharpness of a full one.
    """
    if a.shape[0] == px and a.shape[1] == px:
        return a.astype(np.float32, copy=False)
    shape = (px, px) + a.shape[2:]
    sigma = None
    if reduce > 1:
        factors = np.array(a.shape[:2], dtype=np.float64) / px
        sig = np.maximum(0.0, (factors * reduce - 1.0) / 2.0) / reduce
        sig = np.sqrt(np.maximum(0.0, sig**2 - 1.0 / 12.0))
        sigma = tuple(sig) + (0.0,) * (a.ndim - 2)
    out = transform.resize(a, shape, order=1, mode="constant", cval=0.0, anti_aliasing=True,
                           anti_aliasing_sigma=sigma, preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _ben_graham(a: np.ndarray, fov: np.ndarray, sigma: float) -> np.ndarray:
    """``4 * (img - blur(img)) + 0.5`` with a blur normalised by the blurred FOV mask."""
    m = fov.astype(np.float32)
    den = ndimage.gaussian_filter(m, sigma=sigma, mode="constant")
    den = np.maximum(den, 1e-3)
    out = np.empty_like(a)
    for k in range(a.shape[2]):
        blur = ndimage.gaussian_filter(a[:, :, k] * m, sigma=sigma, mode="constant") / den
        out[:, :, k] = 4.0 * (a[:, :, k] - blur) + 0.5
    return np.clip(out, 0.0, 1.0)


def _clahe_luminance(a: np.ndarray) -> np.ndarray:
    """CLAHE on L of Lab (colour) or on the single channel (gray)."""
    if a.shape[2] == 1:
        return exposure.equalize_adapthist(a[:, :, 0], clip_limit=0.01)[:, :, None].astype(np.float32)
    lab = color.rgb2lab(a)
    lab[:, :, 0] = exposure.equalize_adapthist(np.clip(lab[:, :, 0] / 100.0, 0, 1), clip_limit=0.01) * 100.0
    return np.clip(color.lab2rgb(lab), 0.0, 1.0).astype(np.float32)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- preprocess


def preprocess(
    img: np.ndarray,
    cfg: PreprocessConfig,
    *,
    modality: str,
    fov: tuple[float, float, float, bool] | None = None,
) -> np.ndarray:
    """Preprocess one decoded image for the model.

    Parameters
    ----------
    img : ndarray
        Decoded float32 ``H x W x C`` in ``[0, 1]``, ``C`` 1 or 3.
    cfg : PreprocessConfig
        Options; see the module docstring for the reason behind each step.
    modality : {"fundus", "gray"}
        "fundus": FOV crop -> pad to square -> resize -> optional Ben Graham and
        CLAHE -> mask outside the FOV. "gray": optional percentile clip, optional
        CLAHE, pad to square, resize, replicate to three channels.
    fov : tuple, optional
        Fundus: :func:`find_fov`'s result for this same image, when the caller has it
        (ingestion finds it once for the quality score, the preprocessing and the
        geometry fingerprint); found again when omitted.

    Returns
    -------
    ndarray
        uint8 ``image_px x image_px x 3``. Map it to the network's range with
        :func:`to_model_range`.

    Raises
    ------
    ConfigError
        Unknown ``modality``.
    ValueError
        The image breaks the decoded image contract (shape, dtype, range).
    """
    if modality not in MODALITIES:
        raise ConfigError(f"modality={modality!r} is not one of {list(MODALITIES)}")
    a = as_float_image(img)
    px = int(cfg.image_px)
    if modality == "fundus":
        return _preprocess_fundus(a, cfg, px, fov)
    return _preprocess_gray(a, cfg, px)


def _preprocess_fundus(
    a: np.ndarray, cfg: PreprocessConfig, px: int, fov_found: tuple[float, float, float, bool] | None = None
) -> np.ndarray:
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    h, w = a.shape[:2]
    cy, cx, r, found = find_fov(a) if fov_found is None else fov_found
    if not found:
        logger.debug("no field of view found; image used uncropped and unmasked")
    if cfg.fov_crop and found:
        sq, valid, qcy, qcx = square_window(a, cy, cx, r)
    else:  # whole image, padded to a centred square
        sq, valid, qcy, qcx = square_window(a, (h - 1) / 2.0, (w - 1) / 2.0, max(h, w) / 2.0)
        qcy, qcx = qcy + (cy - (h - 1) / 2.0), qcx + (cx - (w - 1) / 2.0)
    side = sq.shape[0]
    s = px / side
    out = _resize(sq, px)
    valid_px = _resize(valid[:, :, None], px)[:, :, 0] > 0.5
    if found:
        # circle in output coordinates; 1 px smaller so the resampled rim (half surround,
        # half retina) is not kept as a dark ring that differs between cameras.
        ocy, ocx = (qcy + 0.5) * s - 0.5, (qcx + 0.5) * s - 0.5
        fov = disc_mask((px, px), ocy, ocx, max(r * s - 1.0, 1.0)) & valid_px
    else:
        fov = valid_px
    if cfg.illumination == "ben_graham":
        out = _ben_graham(out, fov, sigma=px / 30.0)
    if cfg.clahe:
        out = _clahe_luminance(out)
    if cfg.mask_outside_fov:
        out = out * fov[:, :, None]
    return _to_uint8(out)


def _preprocess_gray(a: np.ndarray, cfg: PreprocessConfig, px: int) -> np.ndarray:
    g = luminance(a)  # a colour-encoded radiograph is reduced to its luminance
    if cfg.clip_percentiles is not None:
        lo, hi = np.percentile(g, cfg.clip_percentiles)
        if hi > lo:
            g = np.clip((g - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
        else:
            logger.debug("percentile clip skipped: constant image")
    g3 = g[:, :, None]
    if cfg.clahe:
        g3 = _clahe_luminance(g3)
    h, w = g.shape
    sq, _, _, _ = square_window(g3, (h - 1) / 2.0, (w - 1) / 2.0, max(h, w) / 2.0)
    out = _resize(sq, px)
    return _to_uint8(np.repeat(out, 3, axis=2))


# --------------------------------------------------------------------------- model range


def to_model_range(x: np.ndarray) -> np.ndarray:
    """Map uint8-range pixels ``[0, 255]`` to float32 ``[-1, 1]``: ``x / 127.5 - 1``.

    The one place this mapping lives; training, evaluation and inference all call it,
    so a model never sees pixels scaled two different ways. Xception's ImageNet
    weights expect ``[-1, 1]`` (``keras.applications.xception.preprocess_input`` does
    the same). Exact at the ends: 0 -> -1, 127.5 -> 0, 255 -> 1.

    Parameters
    ----------
    x : array_like
        A numpy array (any shape, usually ``N x H x W x 3`` uint8) with values in
        ``[0, 255]``. Float inputs are taken to be in the same 0-255 range.

    Returns
    -------
    ndarray
        float32 array of the same shape.

    Examples
    --------
    >>> to_model_range(np.array([0, 255], dtype=np.uint8)).tolist()
    [-1.0, 1.0]
    """
    return np.asarray(x, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)

