"""Does the near-duplicate audit find copies, and does it leave distinct images alone?

A measurement, not a timing: on the demo cohort (``cohorts/demo.yaml``, 240 synthetic fundus
photographs, every one a distinct picture) the script

* ingests the cohort as a run does (``prepare_cohort`` -> preprocessed uint8 images at the
  model size) and counts the pairs of *distinct* images each method calls near-duplicates
  (every such pair is a false alarm; cross-patient ones would stop a run under ``on_leak: error``);
* makes copies of ``--n-copies`` of the decoded originals (mirrored, JPEG re-compressed,
  rescaled, and combinations), preprocesses them as ingestion does, and reports the share of
  copies whose pair (original, copy) each method finds.

Methods, side by side: ``hash`` = pHash and dHash within the Hamming threshold alone; ``old`` =
hash candidates verified by the former 256-bit DCT "detail hash" of a band-pass image (within
8 bits; re-implemented here for the comparison); ``new`` = hash candidates verified by the
detail bit-maps (:func:`medxcept.audit.detail_similarity` >= :data:`medxcept.audit.DETAIL_THRESHOLD`,
as :func:`medxcept.audit.near_duplicate_pairs` does). The ``sim`` columns give the smallest (and
5th percentile) similarity of the copies, and the line above them the largest similarity of a
distinct hash candidate: the margins on each side of the threshold.

Usage::

    python benchmarks/near_duplicates.py                      # 96 and 71 px, 80 copies each
    python benchmarks/near_duplicates.py --sizes 96 --n-copies 30
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medxcept.audit import (  # noqa: E402
    _LUMA,
    DEFAULT_HAMMING_THRESHOLD,
    DETAIL_THRESHOLD,
    _as_hwc,
    _pack_bits,
    _resize,
    detail_similarity,
    fingerprints,
    hamming,
    near_duplicate_pairs,
)
from medxcept.cohort import load_cohort_spec  # noqa: E402
from medxcept.config import load_config  # noqa: E402
from medxcept.io.dicom import read_dicom  # noqa: E402
from medxcept.io.images import read_image  # noqa: E402
from medxcept.pipeline import prepare_cohort  # noqa: E402
from medxcept.preprocess import load_images, preprocess  # noqa: E402

OLD_DETAIL_BITS = 8  # the former DETAIL_THRESHOLD (bits out of 256)


# ------------------------------------------------------------------ copies


def _u8(a: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)


def _jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(_u8(a)).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255


def _rescale(a: np.ndarray, factor: float) -> np.ndarray:
    im = Image.fromarray(_u8(a))
    im = im.resize((round(im.width * factor), round(im.height * factor)), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.float32) / 255


def _flip(a: np.ndarray) -> np.ndarray:
    return a[:, ::-1].copy()


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "flip": _flip,
    "jpeg85": lambda a: _jpeg(a, 85),
    "jpeg75": lambda a: _jpeg(a, 75),
    "jpeg60": lambda a: _jpeg(a, 60),
    "rescale0.8": lambda a: _rescale(a, 0.8),
    "rescale0.9": lambda a: _rescale(a, 0.9),
    "rescale1.1": lambda a: _rescale(a, 1.1),
    "flip+jpeg75": lambda a: _jpeg(_flip(a), 75),
    "flip+rescale0.9": lambda a: _rescale(_flip(a), 0.9),
}


def _decode(path: str) -> np.ndarray:
    if path.lower().endswith(".dcm"):
        return read_dicom(path, frame=0)[0][0]
    return read_image(path)[0]


# ------------------------------------------------------------------ the former detail hash


def _old_detail_hashes(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The former 256-bit detail hash (band-pass sigma 1 - sigma 4 of the 64x64 gray) and its mirror's."""
    grays = []
    for k, img in enumerate(images):
        small = np.clip(_resize(_as_hwc(img, k), 64, 64), 0.0, 1.0)
        gray = small[:, :, 0] if small.shape[2] == 1 else (small * _LUMA).sum(axis=2)
        grays.append(ndimage.gaussian_filter(gray, 1.0) - ndimage.gaussian_filter(gray, 4.0))
    hp = np.stack(grays)

    def detail_hash(x: np.ndarray) -> np.ndarray:
        low = scipy.fft.dctn(x, type=2, axes=(1, 2), norm="ortho")[:, :16, :16].reshape(len(x), 256)
        bits = low > np.median(low, axis=1, keepdims=True)
        return np.stack([_pack_bits(bits[:, k * 64:(k + 1) * 64]) for k in range(4)], axis=1)

    return detail_hash(hp), detail_hash(hp[:, :, ::-1])


def pairs_by_method(images: np.ndarray, threshold: int = DEFAULT_HAMMING_THRESHOLD) -> dict[str, Any]:
    """``{"hash" | "old" | "new": {(i, j), ...}}``: the near-duplicate pairs each method reports.

    Also ``"_hash_frame"`` (the hash candidates, a DataFrame) and ``"_fp"`` (the fingerprints).
    """
    fp = fingerprints(images)
    hash_only = near_duplicate_pairs(fp, threshold, detail_threshold=None)
    new = near_duplicate_pairs(fp, threshold)
    det, det_flip = _old_detail_hashes(images)
    # the former rule: a hash match in an orientation, and the detail hash within 8 bits in it
    old: set[tuple[int, int]] = set()
    for other_p, other_d, other_det in (("phash", "dhash", det), ("phash_flip", "dhash_flip", det_flip)):
        dp = hamming(fp["phash"][:, None], fp[other_p][None, :])
        dd = hamming(fp["dhash"][:, None], fp[other_d][None, :])
        ii, jj = np.nonzero(np.triu((dp <= threshold) & (dd <= threshold), k=1))
        ok = hamming(det[ii], other_det[jj]).sum(axis=-1) <= OLD_DETAIL_BITS
        old |= set(zip(ii[ok].tolist(), jj[ok].tolist(), strict=True))
    return {
        "hash": set(zip(hash_only["i"].tolist(), hash_only["j"].tolist(), strict=True)),
        "old": old,
        "new": set(zip(new["i"].tolist(), new["j"].tolist(), strict=True)),
        "_hash_frame": hash_only,
        "_fp": fp,
    }


# ------------------------------------------------------------------ measurement


def measure(px: int, n_copies: int, seed: int) -> None:
    spec = load_cohort_spec(Path(__file__).resolve().parents[1] / "cohorts" / "demo.yaml")
    cfg = load_config(cohort_defaults=spec.defaults, cohort_dir=spec.base_dir,
                      overrides={"preprocess.image_px": px})
    ing, cache = prepare_cohort(spec, cfg)
    table = ing.table.reset_index(drop=True)
    originals = load_images(table, cache, cfg.preprocess)
    n = len(originals)

    t0 = time.perf_counter()
    found = pairs_by_method(originals)
    t_all = time.perf_counter() - t0
    pk = table["patient_key"].astype(str).to_numpy()
    cand = found["_hash_frame"]
    sim = detail_similarity(found["_fp"], cand["i"], cand["j"], cand["flipped"].to_numpy())
    print(f"\n== {px} px: demo cohort, {n} distinct images, {len(cand)} hash-candidate pairs "
          f"(fingerprints + pair search of all three methods: {t_all:.2f} s)")
    methods = ("hash", "old", "new")
    print(f"{'distinct pairs flagged':<26}" + "".join(f"{m:>8}" for m in methods))
    for what, keep in (("all pairs", lambda i, j: True), ("cross-patient pairs", lambda i, j: pk[i] != pk[j])):
        print(f"  {what:<24}" + "".join(f"{sum(keep(i, j) for i, j in found[m]):>8}" for m in methods))
    print(f"  largest detail similarity of a distinct hash candidate: {np.nanmax(sim):.3f} "
          f"(threshold {DETAIL_THRESHOLD})")

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=min(n_copies, n), replace=False))
    decoded = [_decode(str(p)) for p in table["path"].iloc[pick]]
    base = originals[pick]
    print(f"{'copies found (' + str(len(pick)) + ' each)':<26}" + "".join(f"{m:>8}" for m in methods)
          + f"{'min sim':>10}{'q05 sim':>10}")
    for name, fn in TRANSFORMS.items():
        copies = np.stack([preprocess(fn(a), cfg.preprocess, modality="fundus") for a in decoded])
        k = len(pick)
        res = pairs_by_method(np.concatenate([base, copies]))
        want = [(i, k + i) for i in range(k)]
        rates = [np.mean([w in res[m] for w in want]) for m in methods]
        fp = res["_fp"]
        c = np.maximum(detail_similarity(fp, np.arange(k), np.arange(k) + k, False),
                       detail_similarity(fp, np.arange(k), np.arange(k) + k, True))
        print(f"  {name:<24}" + "".join(f"{r:>8.0%}" for r in rates)
              + f"{np.nanmin(c):>10.3f}{np.quantile(c, 0.05):>10.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 71], help="model input sizes (px)")
    parser.add_argument("--n-copies", type=int, default=80, help="originals copied per transform")
    parser.add_argument("--seed", type=int, default=0, help="which originals are copied")
    args = parser.parse_args(argv)
    for px in args.sizes:
        measure(px, args.n_copies, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
