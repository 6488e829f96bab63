"""Camera-resolution fundus photographs for ingestion tests and benchmarks.

Real fundus cameras write 10-12 megapixel JPEGs (3410 x 2848, 4288 x 2848, ...) at quality
90-95; the demo cohort's photographs are 288-384 px. :func:`camera_fundus` paints an eye
with :func:`medxcept.cohort.demo.paint_fundus` at a quarter of the camera's size (painting 12
megapixels directly takes half a minute), enlarges it, and then adds at full resolution what
makes a camera file a camera file: a sharp field-of-view edge (a circle, cut by flat chords
at the top and bottom when it is wider than the sensor), a darker ring inside that edge,
fine choroidal texture, sensor noise, and a near-black, slightly noisy surround. Saved by
:func:`write_camera_fundus` as a baseline JPEG (4:2:0, quality 92 by default) with EXIF
make and model, the file sizes (1.5-3 MB) and decode times are those of camera exports.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from medxcept.cohort.demo import Camera, paint_fundus

__all__ = ["CAMERA_SIZES", "camera_fundus", "write_camera_fundus"]

#: (width, height, FOV radius as a fraction of half the height) of two common camera formats:
#: a 12-megapixel sensor whose field of view is cut by chords, and a 10-megapixel one.
CAMERA_SIZES: tuple[tuple[int, int, float], ...] = ((4288, 2848, 1.06), (3410, 2848, 0.98))


def camera_fundus(width: int, height: int, *, seed: int, fov_frac: float = 1.0,
                  referable: bool = False) -> tuple[np.ndarray, dict[str, float]]:
    """Paint one camera-size fundus photograph.

    Parameters
    ----------
    width, height : int
        Frame size in pixels (at least 64 each).
    seed : int
        Seed of everything drawn.
    fov_frac : float, default 1.0
        Radius of the field of view as a fraction of ``height / 2``; above 1 the circle is cut
        by the top and bottom of the frame.
    referable : bool, default False
        Paint lesions (exudates, haemorrhages) as :func:`~medxcept.cohort.demo.paint_fundus` does.

    Returns
    -------
    rgb : ndarray
        uint8 ``height x width x 3``.
    geometry : dict
        ``cy``, ``cx``, ``r``: the field-of-view circle in pixel-centre coordinates.
    """
    if width < 64 or height < 64:
        raise ValueError(f"camera_fundus paints at least 64 x 64 pixels, got {width} x {height}")
    rng = np.random.default_rng([seed, 35])
    f = 4
    cam = Camera("camera (synthetic)", height // f, width // f, fov_frac, (1.0, 1.0, 1.0), 0.5, "jpeg")
    small, _, geo = paint_fundus(rng, cam, laterality="LR"[seed % 2], referable=referable)
    # paint_fundus's noise would be enlarged into blobs: smooth it away, the camera's comes below
    small = cv2.GaussianBlur(small, (0, 0), 0.8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    cy, cx, r = (geo["cy"] + 0.5) * f - 0.5, (geo["cx"] + 0.5) * f - 0.5, geo["r"] * f
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / np.float32(r)
    # full-resolution retina: fine texture (a few pixels across), a darker ring inside the rim
    tex = cv2.GaussianBlur(rng.standard_normal((height, width), dtype=np.float32), (0, 0), 1.6)
    shade = (1.0 + 0.25 * tex) * (1.0 - 0.30 * np.clip((d - 0.85) / 0.15, 0.0, 1.0) ** 2)
    img *= shade[:, :, None]
    img += np.float32(0.010) * rng.standard_normal(img.shape, dtype=np.float32)  # sensor noise
    edge = np.clip((1.0 - d) * np.float32(r) + 0.5, 0.0, 1.0)  # one-pixel anti-aliased rim
    surround = np.abs(np.float32(0.012) + np.float32(0.006) * rng.standard_normal((height, width), dtype=np.float32))
    img = img * edge[:, :, None] + (surround * (1.0 - edge))[:, :, None]
    rgb = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return rgb, {"cy": float(cy), "cx": float(cx), "r": float(r)}


def write_camera_fundus(path: str | Path, width: int, height: int, *, seed: int, fov_frac: float = 1.0,
                        quality: int = 92, referable: bool = False) -> Path:
    """Write :func:`camera_fundus` as a camera-like JPEG (baseline, 4:2:0, EXIF make and model).

    Returns
    -------
    Path
        ``path``.
    """
    rgb, _ = camera_fundus(width, height, seed=seed, fov_frac=fov_frac, referable=referable)
    exif = Image.Exif()
    exif[0x010F] = "Synthetic Optics"
    exif[0x0110] = f"Fundus {width}x{height}"
    path = Path(path)
    Image.fromarray(rgb).save(path, format="JPEG", quality=quality, subsampling=2, exif=exif)
    return path


def reference_preprocess(img: np.ndarray, image_px: int = 299) -> np.ndarray:
    """The straightforward full-resolution computation the reduced-size ingestion is checked against.

    What :func:`medxcept.images.preprocess.preprocess` did for a fundus photograph up to
    ``PREPROCESS_VERSION`` 1, with default options: the field of view found on the whole decoded
    image, its bounding square cut at full resolution, resized with scikit-image's Gaussian
    anti-aliasing (bilinear), masked outside the circle, rounded to uint8.

    Parameters
    ----------
    img : ndarray
        The fully decoded image, float ``H x W x 3`` in ``[0, 1]``.
    image_px : int, default 299

    Returns
    -------
    ndarray
        uint8 ``image_px x image_px x 3``.
    """
    from skimage import transform

    from medxcept.images.preprocess import disc_mask, find_fov, square_window

    def resize(a: np.ndarray) -> np.ndarray:
        out = transform.resize(a, (image_px, image_px) + a.shape[2:], order=1, mode="constant", cval=0.0,
                               anti_aliasing=True, preserve_range=True)
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    cy, cx, r, found = find_fov(img)
    if not found:
        raise ValueError("reference_preprocess expects a photograph with a field of view")
    sq, valid, qcy, qcx = square_window(img, cy, cx, r)
    s = image_px / sq.shape[0]
    out = resize(sq)
    valid_px = resize(valid[:, :, None])[:, :, 0] > 0.5
    fov = disc_mask((image_px, image_px), (qcy + 0.5) * s - 0.5, (qcx + 0.5) * s - 0.5, max(r * s - 1.0, 1.0))
    out = out * (fov & valid_px)[:, :, None]
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
