"""The quality gate: whether a decoded image is usable at all (:func:`quality`: brightness, contrast,
sharpness inside the field of view) and what a run does with one that is not
(:func:`apply_quality_policy`: exclude, flag or let it pass, per ``PreprocessConfig.quality_policy``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import ndimage

from medxcept.errors import ConfigError, ReadError
from medxcept.images.preprocess import (
    MODALITIES,
    QUALITY_PX,
    PreprocessConfig,
    as_float_image,
    disc_mask,
    find_fov,
    luminance,
    resize_gaussian,
    square_window,
)
from medxcept.io import log_name

__all__ = ["quality", "apply_quality_policy", "MIN_BRIGHTNESS", "MAX_BRIGHTNESS", "MIN_CONTRAST", "MIN_SHARPNESS"]

logger = logging.getLogger(__name__)

# Quality thresholds (see :func:`quality`). Each measure is mapped to a sub-score that
# equals 0.5 exactly at its threshold, so the default ``min_quality=0.5`` means "every
# measure at least at its threshold".
MIN_BRIGHTNESS = 0.03  # mean luminance inside the FOV; an all-black frame is 0
MAX_BRIGHTNESS = 0.92  # above this the image is blown out
MIN_CONTRAST = 0.01  # std of luminance inside the FOV
MIN_SHARPNESS = 0.1  # variance of the Laplacian of the brightness-normalised 256-px image (x1e3)


def _ramp_up(value: float, threshold: float) -> float:
    """0 at 0, 0.5 at the threshold, 1 at twice the threshold."""
    return float(np.clip(0.5 * value / threshold, 0.0, 1.0))


def quality(
    img: np.ndarray, *, modality: str, fov: tuple[float, float, float, bool] | None = None, reduce: int = 1
) -> dict[str, Any]:
    """Measure whether an image is usable at all (not a grading of image quality).

    Parameters
    ----------
    img : ndarray
        Decoded float ``H x W x C`` in ``[0, 1]`` (uint8 accepted).
    modality : {"fundus", "gray"}
        For fundus the measures are taken inside the field of view.
    fov : tuple, optional
        Fundus: :func:`~medxcept.images.preprocess.find_fov`'s result for this same image, when the caller has it;
        found again when omitted.
    reduce : int, default 1
        The image was decoded at ``1 / reduce`` of its stored size
        (:func:`medxcept.io.images.read_image`'s ``meta["reduce"]``). Sharpness is then
        measured as on the stored image: the 256-px version gets the anti-aliasing blur a
        full-size decode would have got, less what the decoder's reduction already did.

    Returns
    -------
    dict
        ``fov_found`` (bool; always True for gray), ``brightness`` (mean luminance in
        the FOV), ``contrast`` (its standard deviation), ``sharpness`` (variance of
        the Laplacian, x1000, of a fixed 256 x 256 grayscale version of the FOV's
        square divided by its mean brightness, taken inside the FOV shrunk by 6 px so
        the disc's rim does not count as detail), ``score`` in ``[0, 1]`` and
        ``reasons`` (list of str; empty when the image passes).

    Notes
    -----
    Each measure becomes a sub-score that is exactly 0.5 at its threshold
    (:data:`MIN_BRIGHTNESS`, :data:`MAX_BRIGHTNESS`, :data:`MIN_CONTRAST`,
    :data:`MIN_SHARPNESS`) and 1 well above it; ``score`` is the smallest sub-score
    (an image is as usable as its worst aspect). A fundus photograph without a
    detectable FOV is capped at 0.6 and gets a reason, but is not failed by that alone
    (pre-cropped datasets have no black surround). Sharpness is measured at a fixed
    size so a 3000-px and a 500-px photograph compare, and on brightness-normalised
    intensities so a dark but sharp image is not called blurred.
    """
    if modality not in MODALITIES:
        raise ConfigError(f"modality={modality!r} is not one of {list(MODALITIES)}")
    a = as_float_image(img)
    h, w = a.shape[:2]
    lum = luminance(a)
    reasons: list[str] = []
    if modality == "fundus":
        cy, cx, r, found = find_fov(a) if fov is None else fov
    else:
        cy, cx, r, found = (h - 1) / 2.0, (w - 1) / 2.0, max(h, w) / 2.0, True
    if modality == "fundus" and found:
        sq, valid, qcy, qcx = square_window(lum[:, :, None], cy, cx, r)
        side = sq.shape[0]
        region = disc_mask((side, side), qcy, qcx, r) & (valid > 0)
    else:
        sq, valid, qcy, qcx = square_window(lum[:, :, None], (h - 1) / 2.0, (w - 1) / 2.0, max(h, w) / 2.0)
        side = sq.shape[0]
        region = valid > 0
    vals = sq[:, :, 0][region]
    brightness = float(vals.mean()) if vals.size else 0.0
    contrast = float(vals.std()) if vals.size else 0.0

    small = resize_gaussian(sq, QUALITY_PX, reduce=reduce)[:, :, 0].astype(np.float64)
    s = QUALITY_PX / side
    if modality == "fundus" and found:
        sreg = disc_mask((QUALITY_PX, QUALITY_PX), (qcy + 0.5) * s - 0.5, (qcx + 0.5) * s - 0.5, r * s)
    else:
        sreg = np.ones((QUALITY_PX, QUALITY_PX), dtype=bool)
    sreg = sreg & (resize_gaussian(valid[:, :, None], QUALITY_PX)[:, :, 0] > 0.5)
    sreg = ndimage.binary_erosion(sreg, iterations=6)
    if sreg.sum() >= 100 and brightness > 1e-4:
        norm = small / max(float(small[sreg].mean()), 1e-3)
        lap = ndimage.laplace(norm)
        sharpness = float(lap[sreg].var()) * 1e3
    else:
        sharpness = 0.0

    subs = {
        "brightness": _ramp_up(brightness, MIN_BRIGHTNESS),
        "overexposure": _ramp_up(1.0 - brightness, 1.0 - MAX_BRIGHTNESS),
        "contrast": _ramp_up(contrast, MIN_CONTRAST),
        "sharpness": _ramp_up(sharpness, MIN_SHARPNESS),
    }
    if subs["brightness"] < 0.5:
        reasons.append(f"too dark: mean brightness {brightness:.3f} < {MIN_BRIGHTNESS}")
    if subs["overexposure"] < 0.5:
        reasons.append(f"overexposed: mean brightness {brightness:.3f} > {MAX_BRIGHTNESS}")
    if subs["contrast"] < 0.5:
        reasons.append(f"no contrast: intensity std {contrast:.4f} < {MIN_CONTRAST}")
    if subs["sharpness"] < 0.5:
        reasons.append(f"blurred: sharpness {sharpness:.3g} < {MIN_SHARPNESS}")
    score = min(subs.values())
    if modality == "fundus" and not found:
        reasons.append("field of view not found (no dark surround or not a disc): image used uncropped")
        score = min(score, 0.6)
    return {
        "fov_found": bool(found),
        "brightness": brightness,
        "contrast": contrast,
        "sharpness": sharpness,
        "score": float(score),
        "reasons": reasons,
    }


def apply_quality_policy(q: dict[str, Any], cfg: PreprocessConfig, *, path: object) -> bool:
    """Apply ``cfg.quality_policy`` to a :func:`quality` result.

    Parameters
    ----------
    q : dict
        Output of :func:`quality`.
    cfg : PreprocessConfig
        Supplies ``quality_policy`` and ``min_quality``.
    path : str or Path
        The source file, named in the exclusion.

    Returns
    -------
    bool
        True when the image is below ``min_quality`` and kept with a flag ("flag"),
        False when it passes or the policy is "off".

    Raises
    ------
    ReadError
        With ``stage="quality"`` when the policy is "exclude" and the score is below
        ``min_quality``; ingestion turns it into an ``exclusions.csv`` row.
    """
    if cfg.quality_policy == "off":
        return False
    if q["score"] >= cfg.min_quality:
        return False
    why = "; ".join(q["reasons"]) or "low quality"
    if cfg.quality_policy == "exclude":
        raise ReadError(path, f"quality score {q['score']:.2f} < {cfg.min_quality}: {why}", stage="quality")
    logger.warning("low-quality image kept (quality_policy=flag): %s: %s", log_name(path), why)
    return True

