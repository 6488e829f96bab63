"""What a decoded frame may show on the report: the raw view, masked to the field of view.

The report draws what it is given; the masking (which pixels may be shown at all) is computed here,
with the preprocessing's own field-of-view detection.
"""

from __future__ import annotations

import numpy as np

from medxcept.images.preprocess import as_float_image, disc_mask, find_fov, square_window

__all__ = ["raw_preview"]


def raw_preview(raw: np.ndarray, *, modality: str, burned_in: str = "") -> tuple[np.ndarray | None, str]:
    """The decoded frame as the report may show it, or None, and the panel's title saying which.

    Cameras and secondary captures burn the patient's name, ID and the date into the pixels,
    outside the circular field of view of a fundus photograph or anywhere in a radiograph. So the
    raw frame is shown only cropped to the detected field of view with everything outside the disc
    blacked out; it is not shown at all for a DICOM image marked ``BurnedInAnnotation: YES``, for a
    photograph whose field of view is not found, and for ``gray`` (radiograph-like) images.

    Parameters
    ----------
    raw : ndarray
        Decoded image, ``H x W`` or ``H x W x C``, float in [0, 1] or uint8.
    modality : {"fundus", "gray"}
    burned_in : str
        The DICOM ``BurnedInAnnotation`` value ("" for photographs).
    """
    if str(burned_in).strip().upper() == "YES":
        return None, "raw: not shown (BurnedInAnnotation)"
    if modality != "fundus":
        return None, "raw: not shown (text may be burned in)"
    a = as_float_image(raw if raw.ndim == 3 else raw[..., None])
    cy, cx, r, found = find_fov(a)
    if not found:
        return None, "raw: not shown (no field of view)"
    sq, valid, qcy, qcx = square_window(a, cy, cx, r)
    disc = disc_mask(sq.shape[:2], qcy, qcx, r) & (valid > 0)
    out = sq * disc[:, :, None]
    out = out[..., 0] if out.shape[2] == 1 else out
    return np.clip(out, 0.0, 1.0).astype(np.float32), "raw, outside field of view masked"
