"""A trap cohort: a small synthetic fundus cohort with every kind of leakage planted at a known place.

Why: an audit that reports nothing proves nothing unless it is shown to find what it is meant to
find. :func:`write_trap_cohort` writes a cohort, as a user's data would arrive (JPEG/PNG photographs,
``photos/labels.csv``, a user split file ``split.csv`` and a ``cohort.yaml`` that uses it through
``split.user_split``), in which each trap of issue #5 is planted once, and returns where:

==========================  ========================================================================
trap                        what is planted
==========================  ========================================================================
``patient_overlap``         one patient's left eye in ``train``, right eye in ``test`` (user split)
``two_ids_exact_duplicate`` one file copied byte for byte under a second patient ID, other split
``flipped_copy``            a horizontally mirrored copy under another patient ID, other split
``rescaled_copy``           a copy rescaled by :data:`RESCALE_FACTOR` under another ID, other split
``jpeg_copy``               a JPEG re-compression (quality :data:`JPEG_QUALITY`) of a PNG, other ID
                            and split
``label_conflict``          one file copied under the same patient and eye with the other label
``confounded_class``        ``referable`` images come (almost) all from one camera, and so from one
                            image size; the other class from the two other cameras
``laterality_excess``       one patient with three right-eye images in one visit
``laterality_missing``      one patient whose two images have no eye recorded
==========================  ========================================================================

With ``clean=True`` the same generator writes the cohort without any trap: cameras independent of
the class, every patient in one split, both eyes known, no copies. The audit must then report no
error and no warning.

The pixels come from :func:`medxcept.cohort.demo.paint_fundus` and the demo's cameras (each keeps its
canvas size, so a camera is also an image size), written as the demo writes its photographs
(JPEG quality 92 or PNG, with PIL). Patients are named ``TRAP-001`` ...; the cohort file sets a
fixed ``pseudonym_salt`` so that the patient keys returned here are the ones ingestion computes.

Command line: ``python -m medxcept.testing.traps OUT_DIR [--clean]`` writes the cohort and prints the path
of its ``cohort.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from medxcept.cohort.demo import CAMERAS, CLASSES, Camera, paint_fundus
from medxcept.cohort.table import pseudonymize
from medxcept.errors import ConfigError

__all__ = [
    "TRAP_SALT",
    "RESCALE_FACTOR",
    "JPEG_QUALITY",
    "TRAP_NAMES",
    "trap_patient_key",
    "write_trap_cohort",
    "main",
]

log = logging.getLogger(__name__)

TRAP_SALT = "medxcept-traps-not-secret"
"""Pseudonym salt written into the trap cohort file (synthetic patients: no secret needed)."""

RESCALE_FACTOR = 0.9
"""Scale of the rescaled copy ("slightly rescaled")."""

JPEG_QUALITY = 85
"""Quality of the JPEG re-compressed copy."""

TRAP_NAMES = (
    "patient_overlap",
    "two_ids_exact_duplicate",
    "flipped_copy",
    "rescaled_copy",
    "jpeg_copy",
    "label_conflict",
    "confounded_class",
    "laterality_excess",
    "laterality_missing",
)

_N_PATIENTS = 24  # 12 per class; patient p is referable when p is odd, its rank in its class is p // 2
_SPLIT_PATTERN = ("train", "val", "test", "train", "train", "train")  # by rank: 8 / 2 / 2 per class
_SAVE_QUALITY = 92  # the demo's JPEG quality
_MARKER = "traps.json"

# The demo's cameras, written as photographs: Topcon JPEG, Canon PNG, Zeiss JPEG (the demo's
# DICOM camera; a photo here, so that one label table and one split file cover the cohort).
_CAMERAS: tuple[Camera, ...] = (
    CAMERAS[0],
    CAMERAS[1],
    dataclasses.replace(CAMERAS[2], fmt="jpeg"),
)
_CONFOUNDED = 1  # trap: referable eyes come from the Canon camera
_NO_EYE = 12  # trap: base patient whose eyes are not recorded


def trap_patient_key(patient: str) -> str:
    """The pseudonym ingestion gives a trap patient (``"TRAP-001"`` ...)."""
    return pseudonymize(patient, TRAP_SALT)


def _pid(p: int) -> str:
    return f"TRAP-{p + 1:03d}"


def _camera_for(p: int, clean: bool) -> int:
    """Camera index of base patient ``p``: balanced per class, or confounded (trap)."""
    rank, referable = p // 2, bool(p % 2)
    if clean:
        return rank % 3
    if referable:
        return _CONFOUNDED
    return 1 if rank == 11 else (0, 2)[rank % 2]  # one Canon patient: "almost", not "only"


def _ext(camera: Camera) -> str:
    return "jpg" if camera.fmt == "jpeg" else "png"


def _save(img: Any, path: Path, *, quality: int = _SAVE_QUALITY) -> None:
    """Write a PIL image as the demo does: JPEG at ``quality`` or PNG, chosen by suffix."""
    if path.suffix == ".jpg":
        img.save(path, quality=quality)
    else:
        img.save(path)


def _base_rows(clean: bool) -> list[dict[str, Any]]:
    """Both eyes of every base patient, one visit, with camera, label and split."""
    rows = []
    for p in range(_N_PATIENTS):
        cam = _camera_for(p, clean)
        split = _SPLIT_PATTERN[(p // 2) % len(_SPLIT_PATTERN)]
        for k, eye in enumerate(("L", "R")):
            known = clean or p != _NO_EYE
            rows.append({"patient": _pid(p), "eye": eye if known else "", "paint_eye": eye, "visit": 1,
                         "label": CLASSES[p % 2], "camera": cam, "split": split, "seed_key": 2 * p + k,
                         "file": f"{_pid(p)}_v1_{eye if known else k + 1}.{_ext(_CAMERAS[cam])}"})
    return rows


def write_trap_cohort(
    root: Path, *, seed: int = 0, clean: bool = False, size_scale: float = 1.0
) -> dict[str, list[str]]:
    """Write the trap cohort (or its clean twin) under ``root``.

    Parameters
    ----------
    root : pathlib.Path
        Output folder; created if needed. It must be empty or hold an earlier trap cohort
        (recognized by its ``traps.json``), which is replaced.
    seed : int, default 0
        Seed of the painted images (the traps' places do not depend on it). The clean
        cohort was checked free of near-duplicate false alarms for seed 0 at the default
        size and 96-px preprocessing; synthetic fundus images are much alike, so another
        seed may give a chance near-duplicate pair.
    clean : bool, default False
        Write the cohort without any trap.
    size_scale : float, default 1.0
        Scale of the demo cameras' canvases (1.0: 320-384 px wide, as in the demo).

    Returns
    -------
    dict of str to list of str
        ``{trap name: [...]}`` (empty when ``clean``), in :data:`TRAP_NAMES` order. Image
        traps list file names (unique within the cohort; ``path`` in the cohort table ends
        with them), original first, copy second; patient traps list pseudonymized patient
        keys; ``confounded_class`` lists the class and the camera (``source``) it comes
        from. The same dict is saved as ``root/traps.json``.

    Raises
    ------
    ConfigError
        ``root`` holds other files.
    """
    from PIL import Image, ImageOps

    root = Path(root)
    if root.exists() and any(root.iterdir()):
        if not (root / _MARKER).is_file():
            raise ConfigError(f"{root} is not empty and holds no trap cohort ({_MARKER}); choose an empty folder")
        shutil.rmtree(root / "photos", ignore_errors=True)
    photos = root / "photos"
    photos.mkdir(parents=True, exist_ok=True)

    rows = _base_rows(clean)
    traps: dict[str, list[str]] = {}

    def paint(row: dict[str, Any], key: int) -> None:
        rng = np.random.default_rng([seed, key])
        rgb, _, _ = paint_fundus(rng, _CAMERAS[row["camera"]], laterality=row["paint_eye"],
                                 referable=row["label"] == CLASSES[1], scale=size_scale)
        _save(Image.fromarray(rgb), photos / row["file"])

    for row in rows:
        paint(row, row["seed_key"])

    if not clean:
        by_file = {r["file"]: r for r in rows}

        def base(p: int, eye: str) -> dict[str, Any]:
            cam = _camera_for(p, clean)
            return by_file[f"{_pid(p)}_v1_{eye}.{_ext(_CAMERAS[cam])}"]

        def copy_row(src: dict[str, Any], p_new: int | None, eye: str, split: str, ext: str,
                     suffix: str = "", label: str | None = None) -> dict[str, Any]:
            patient = _pid(p_new) if p_new is not None else src["patient"]
            return {**src, "patient": patient, "eye": eye, "paint_eye": eye, "split": split,
                    "label": label or src["label"],
                    "file": f"{patient}_v1_{eye}{suffix}.{ext}"}

        # the same patient in two user splits: right eye moved to test
        r = base(0, "R")
        r["split"] = "test"
        traps["patient_overlap"] = [trap_patient_key(_pid(0))]

        # one person under two IDs: the file copied byte for byte, other patient, other split
        src = base(3, "L")  # val
        new = copy_row(src, 100, "L", "test", src["file"].rsplit(".", 1)[1])
        shutil.copyfile(photos / src["file"], photos / new["file"])
        rows.append(new)
        traps["two_ids_exact_duplicate"] = [src["file"], new["file"]]

        # a mirrored copy (a right eye now looks like a left one), other patient, other split
        src = base(4, "R")  # test
        new = copy_row(src, 101, "L", "train", "jpg")
        with Image.open(photos / src["file"]) as im:
            _save(ImageOps.mirror(im.convert("RGB")), photos / new["file"])
        rows.append(new)
        traps["flipped_copy"] = [src["file"], new["file"]]

        # a slightly rescaled copy, other patient, other split
        src = base(5, "L")  # test
        new = copy_row(src, 102, "L", "train", src["file"].rsplit(".", 1)[1])
        with Image.open(photos / src["file"]) as im:
            im = im.convert("RGB")
            size = (round(im.width * RESCALE_FACTOR), round(im.height * RESCALE_FACTOR))
            _save(im.resize(size, Image.Resampling.BICUBIC), photos / new["file"])
        rows.append(new)
        traps["rescaled_copy"] = [src["file"], new["file"]]

        # a JPEG re-compression of a PNG, other patient, other split
        src = base(7, "L")  # train, Canon (PNG)
        new = copy_row(src, 103, "L", "test", "jpg")
        with Image.open(photos / src["file"]) as im:
            _save(im.convert("RGB"), photos / new["file"], quality=JPEG_QUALITY)
        rows.append(new)
        traps["jpeg_copy"] = [src["file"], new["file"]]

        # the same image with two labels (a regrade export): same patient, eye, visit and split
        src = base(8, "L")  # train, non_referable
        new = copy_row(src, None, "L", src["split"], src["file"].rsplit(".", 1)[1], suffix="_regrade",
                       label=CLASSES[1])
        shutil.copyfile(photos / src["file"], photos / new["file"])
        rows.append(new)
        traps["label_conflict"] = [src["file"], new["file"]]

        traps["confounded_class"] = [CLASSES[1], _CAMERAS[_CONFOUNDED].name]

        # three right-eye images in one visit (two extra shots, distinct pictures)
        src = base(10, "R")
        for k in (2, 3):
            extra = copy_row(src, None, "R", src["split"], src["file"].rsplit(".", 1)[1], suffix=f"_{k}")
            paint(extra, 1000 + k)
            rows.append(extra)
        traps["laterality_excess"] = [trap_patient_key(_pid(10))]

        # no eye recorded for either image of one patient (named so in _base_rows)
        traps["laterality_missing"] = [r["file"] for r in rows if r["patient"] == _pid(_NO_EYE)]

    with open(photos / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "patient", "eye", "visit", "label", "camera"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"file": row["file"], "patient": row["patient"], "eye": row["eye"],
                             "visit": row["visit"], "label": row["label"], "camera": _CAMERAS[row["camera"]].name})
    with open(root / "split.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "split"])
        writer.writeheader()
        writer.writerows({"file": row["file"], "split": row["split"]} for row in rows)
    (root / "cohort.yaml").write_text(_cohort_yaml(clean), encoding="utf-8")
    traps = {name: traps[name] for name in TRAP_NAMES if name in traps}
    (root / _MARKER).write_text(json.dumps({"clean": clean, "seed": seed, "traps": traps}, indent=2) + "\n",
                                encoding="utf-8")
    log.info("trap cohort (%s) written to %s: %d images", "clean" if clean else "with traps", root, len(rows))
    return traps


def _cohort_yaml(clean: bool) -> str:
    name = "traps-clean" if clean else "traps"
    what = "the same generator without any trap" if clean else "every leakage trap of issue #5 planted once"
    return f"""# Written by medxcept.traps ({what}); see traps.json for where each trap is.
name: {name}
description: >-
  Synthetic fundus photographs (medxcept trap generator), {what}. Not real patients.
classes: [non_referable, referable]
positive_class: referable
modality: fundus
pseudonym_salt: {TRAP_SALT}
on_label_issue: error
sources:
  - name: photos
    kind: photos
    root: photos
    labels: photos/labels.csv
    file_column: file
    label_column: label
    patient_column: patient
    laterality_column: eye
    visit_column: visit
    columns: {{camera: source}}
defaults:
  preprocess: {{image_px: 96}}  # the demo's size
  # the user's own split, next to this file: audited, never re-split
  split: {{user_split: split.csv}}
  audit: {{on_leak: error}}
  train: {{batch_size: 8, head_epochs: 1, finetune_epochs: 1, workers: 1}}
  eval: {{n_bootstrap: 50}}
"""


def main(argv: list[str] | None = None) -> int:
    """``python -m medxcept.testing.traps OUT_DIR [--clean]``: write the cohort, print its ``cohort.yaml``."""
    parser = argparse.ArgumentParser(
        prog="python -m medxcept.testing.traps",
        description="Write a small synthetic fundus cohort with every leakage trap planted at a known place "
                    "(or, with --clean, without any), to show what the integrity audit finds.")
    parser.add_argument("out_dir", help="folder to write (empty, or an earlier trap cohort)")
    parser.add_argument("--clean", action="store_true", help="write the cohort without any trap")
    parser.add_argument("--seed", type=int, default=0, help="seed of the painted images (default 0)")
    args = parser.parse_args(argv)
    from medxcept.errors import MedxceptError

    try:
        write_trap_cohort(Path(args.out_dir), seed=args.seed, clean=args.clean)
    except MedxceptError as exc:
        print(f"medxcept: error: {exc}", file=sys.stderr)
        return 2
    print(Path(args.out_dir).resolve() / "cohort.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
