"""An "external" cohort made of altered copies of a training run's images plus new images.

Public fundus and X-ray collections hold re-encoded, resized and re-cropped copies of each other's
images. :func:`altered_copy` makes one such copy (crop, resize, JPEG re-encoding);
:func:`write_copy_cohort` writes a cohort of copies of chosen training images of a run
(read back through ``private/image_paths.csv``) plus new images, as an external validation would
receive it. Used by ``tests/test_external.py`` and ``benchmarks/external_copies.py``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["altered_copy", "write_copy_cohort", "training_images"]

COHORT = """name: {name}
classes: [{classes}]
positive_class: {positive}
modality: fundus
sources:
  - name: photos
    kind: photos
    root: photos
    labels: photos/labels.csv
    patient_column: patient
defaults:
  audit: {{on_leak: {on_leak}}}
"""


def altered_copy(rgb: np.ndarray, *, scale: float = 1.35, quality: int = 70, crop: float = 0.05) -> bytes:
    """``rgb`` (uint8 or float in [0, 1]) cropped by ``crop`` of each side's length (off-centre),
    resized by ``scale`` and re-encoded as JPEG ``quality``; the JPEG bytes."""
    from PIL import Image

    a = np.asarray(rgb)
    if a.dtype != np.uint8:
        a = np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    h, w = a.shape[:2]
    dy, dx = int(round(crop * h)), int(round(crop * w))
    top, left = dy // 3, dx - dx // 3  # more off one side than the other, as a re-crop would
    im = Image.fromarray(a[top:h - (dy - top), left:w - (dx - left)])
    im = im.resize((max(8, int(round(im.width * scale))), max(8, int(round(im.height * scale)))),
                   Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def training_images(run_dir: str | Path, n: int, *, seed: int = 0) -> list[tuple[str, np.ndarray, str]]:
    """``n`` training images of a run, drawn at random: ``(image_id, decoded pixels, label)`` each.

    Reads the run's ``cohort.csv`` (split) and ``private/image_paths.csv`` (files), then decodes the
    files with medxcept's readers, so DICOM images come back as pixels too.
    """
    from medxcept.cohort.ingest import read_frames

    run_dir = Path(run_dir)
    cohort = pd.read_csv(run_dir / "cohort.csv", dtype=str, keep_default_na=False)
    paths = pd.read_csv(run_dir / "private" / "image_paths.csv", dtype=str, keep_default_na=False)
    train = cohort[cohort["split"] == "train"].merge(paths[["image_id", "path"]], on="image_id")
    if len(train) < n:
        raise ValueError(f"{run_dir} has {len(train)} training images, fewer than {n}")
    rows = train.sample(n=n, random_state=seed)
    out = []
    for r in rows.itertuples():
        _, frames, _ = read_frames(r.reader, r.path, frames=int(r.frame) if str(r.frame) not in ("", "-1") else "all")
        out.append((str(r.image_id), np.asarray(frames[0]), str(r.label)))
    return out


def write_copy_cohort(root: str | Path, *, copies: list[tuple[np.ndarray, str]],
                      new: list[tuple[np.ndarray, str]], classes: tuple[str, ...], name: str = "copies",
                      on_leak: str = "error", scale: float = 1.35, quality: int = 70,
                      crop: float = 0.05) -> Path:
    """Write a photographs cohort: :func:`altered_copy` of each of ``copies`` and ``new`` as they are.

    Parameters
    ----------
    root : path
        Folder to create.
    copies, new : list of (pixels, label)
        Images to copy (altered), and new images (saved as JPEG quality 92).
    classes : tuple of str
        The cohort's classes (the last is positive).
    name, on_leak : str
        The cohort's name and its ``audit.on_leak`` default.
    scale, quality, crop
        See :func:`altered_copy`.

    Returns
    -------
    Path
        The cohort file.
    """
    from PIL import Image

    root = Path(root)
    photos = root / "photos"
    photos.mkdir(parents=True, exist_ok=False)
    rows = []
    for k, (rgb, label) in enumerate(copies):
        (photos / f"copy{k:03d}.jpg").write_bytes(altered_copy(rgb, scale=scale, quality=quality, crop=crop))
        rows.append({"file": f"copy{k:03d}.jpg", "patient": f"EXT-C{k:03d}", "label": label})
    for k, (rgb, label) in enumerate(new):
        a = np.asarray(rgb)
        a = a if a.dtype == np.uint8 else np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(a).save(photos / f"new{k:03d}.jpg", quality=92)
        rows.append({"file": f"new{k:03d}.jpg", "patient": f"EXT-N{k:03d}", "label": label})
    pd.DataFrame(rows).to_csv(photos / "labels.csv", index=False)
    path = root / "cohort.yaml"
    path.write_text(COHORT.format(name=name, classes=", ".join(classes), positive=classes[-1], on_leak=on_leak),
                    encoding="utf-8")
    return path
