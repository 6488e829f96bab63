"""The class-activation gallery of the report: which test images to show (:func:`gallery_cells`, a
choice of display) and the figure (:func:`cam_gallery`). The maps themselves are computed by the
stage, :func:`medxcept.models.explain.class_activation_maps`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from medxcept.report.figures import plt, to_data_uri

__all__ = ["GALLERY_ROWS", "gallery_cells", "cam_gallery"]


GALLERY_ROWS = (
    ("tp", "correct positive"),
    ("tn", "correct negative"),
    ("fp", "false positive"),
    ("fn", "false negative"),
)


def gallery_cells(y_true: ArrayLike, prob: ArrayLike, threshold: float, *,
                  n_per_cell: int = 3) -> dict[str, np.ndarray]:
    """Indices of the images shown in each row of :func:`cam_gallery`, most confident first.

    A case is predicted positive when ``prob >= threshold``. Rows: ``tp`` (highest probabilities
    first), ``tn`` (lowest first), ``fp`` (highest first: the most confident mistakes), ``fn``
    (lowest first).
    """
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true and prob must have the same length; got {y.shape[0]} and {p.shape[0]}")
    pred = p >= threshold
    masks = {"tp": pred & (y == 1), "tn": ~pred & (y == 0), "fp": pred & (y == 0), "fn": ~pred & (y == 1)}
    out = {}
    for key, mask in masks.items():
        idx = np.flatnonzero(mask)
        order = np.argsort(-p[idx] if key in ("tp", "fp") else p[idx], kind="stable")
        out[key] = idx[order][:n_per_cell]
    return out


def _display(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 or a.max() > 1.0 else a.astype(np.float32)
    return np.clip(a, 0.0, 1.0)


def cam_gallery(images: ArrayLike, cams: ArrayLike, y_true: ArrayLike, prob: ArrayLike, threshold: float, *,
                n_per_cell: int = 3, keys: Sequence[str] | None = None, alpha: float = 0.45) -> str:
    """A figure of class-activation maps over test images: correct and wrong predictions, by row.

    Parameters
    ----------
    images : array-like of shape (N, H, W[, C])
        The images (uint8 in [0, 255] or float in [0, 1]; grayscale or RGB).
    cams : array-like of shape (N, h, w)
        Maps in [0, 1] (:func:`medxcept.models.explain.class_activation_maps`); resized to the image size if needed.
    y_true, prob : array-like of shape (N,)
        0/1 labels and (calibrated) probabilities of the positive class.
    threshold : float
        The operating threshold (predicted positive when ``prob >= threshold``).
    n_per_cell : int, default 3
        Images per row (see :func:`gallery_cells` for which).
    keys : sequence of str, optional
        A pseudonymous label per image (``patient_key``) shown in the titles; never raw IDs.
    alpha : float, default 0.45
        Opacity of the map over the image.

    Returns
    -------
    str
        A ``data:image/png;base64,...`` URI. Rows: correct positive, correct negative, false
        positive, false negative; an empty row says "none".
    """
    imgs, maps = np.asarray(images), np.asarray(cams, dtype=np.float32)
    if len(imgs) != len(maps):
        raise ValueError(f"images and cams must have the same length; got {len(imgs)} and {len(maps)}")
    cells = gallery_cells(y_true, prob, threshold, n_per_cell=n_per_cell)
    p = np.asarray(prob, dtype=float).ravel()
    y, pred = np.asarray(y_true).astype(int).ravel(), p >= threshold
    totals = {"tp": int((pred & (y == 1)).sum()), "tn": int((~pred & (y == 0)).sum()),
              "fp": int((pred & (y == 0)).sum()), "fn": int((~pred & (y == 1)).sum())}
    ncols = max(int(n_per_cell), 1)
    fig, axes = plt.subplots(len(GALLERY_ROWS), ncols, figsize=(2.1 * ncols, 2.2 * len(GALLERY_ROWS)),
                             squeeze=False)
    for r, (key, title) in enumerate(GALLERY_ROWS):
        idx = cells[key]
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(idx):
                if c == 0:
                    ax.text(0.5, 0.5, "none", ha="center", va="center", color="#888888", transform=ax.transAxes)
                continue
            i = int(idx[c])
            img = _display(imgs[i])
            cam = maps[i]
            if cam.shape != img.shape[:2]:
                from skimage.transform import resize

                cam = resize(cam, img.shape[:2], order=1, mode="edge", anti_aliasing=False).astype(np.float32)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.imshow(cam, cmap="jet", alpha=alpha, vmin=0, vmax=1)
            name = f"{keys[i]} " if keys is not None else ""
            ax.set_title(f"{name}p={p[i]:.2f}", fontsize=7)
        axes[r][0].text(-0.08, 0.5, f"{title} ({len(idx)} of {totals[key]})", transform=axes[r][0].transAxes,
                        rotation=90, va="center", ha="right", fontsize=8)
    fig.suptitle(f"class-activation maps (threshold {threshold:.3f})", fontsize=9)
    fig.tight_layout()
    return to_data_uri(fig, dpi=90)
