"""How long does the integrity audit take for 2,000 and 20,000 images?

Random 64-bit hashes stand in for the fingerprints of decoded images (hashing itself
is timed separately, per image, with ``--hash-images``), with planted exact copies,
near-copies (a few flipped bits) and mirror copies. For each size the script prints

* the time of :func:`medxcept.splits.assign_splits` + ``assign_folds``;
* the time of :func:`medxcept.audit.audit_cohort` (all checks, given fingerprints)
  and how many planted duplicate pairs it found;
* a naive pure-Python O(n^2) pair loop, *timed on a subset* of ``--naive-subset``
  images and *extrapolated* to n by (n / subset)^2 — stated as such, not measured.

Usage::

    python benchmarks/audit_bench.py                  # 2000 and 20000 images
    python benchmarks/audit_bench.py --sizes 5000 --hash-images 200
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medxcept.audit import DEFAULT_HAMMING_THRESHOLD, audit_cohort, fingerprints  # noqa: E402
from medxcept.splits import SplitConfig, assign_folds, assign_splits  # noqa: E402


def synthetic(n: int, n_planted: int, seed: int = 0) -> tuple[pd.DataFrame, dict, set[tuple[int, int]]]:
    """A cohort table of ``n`` images (2 per patient) with random fingerprints.

    A third of the planted pairs are exact pixel copies, a third near-copies (1-6
    bits flipped in both hashes), a third mirror copies; every copy belongs to
    another, random patient (the hard case: a leak across patients and splits).
    """
    rng = np.random.default_rng(seed)
    fp = {k: rng.integers(0, 2**63, n, dtype=np.uint64) * 2 + rng.integers(0, 2, n, dtype=np.uint64)
          for k in ("phash", "phash_flip", "dhash", "dhash_flip")}
    fp["pixel_hash"] = np.array([f"{i:064x}" for i in rng.integers(0, 2**62, n)], dtype=object)
    planted: set[tuple[int, int]] = set()
    src = rng.choice(n, size=2 * n_planted, replace=False)
    for k, (a, b) in enumerate(src.reshape(-1, 2)):
        kind = k % 3
        if kind == 0:
            for key in fp:
                fp[key][b] = fp[key][a]
        elif kind == 1:
            bits = rng.choice(64, int(rng.integers(1, 7)), replace=False)
            mask = np.uint64(sum(1 << int(x) for x in bits))
            for key in ("phash", "phash_flip", "dhash", "dhash_flip"):
                fp[key][b] = fp[key][a] ^ mask
        else:  # b is the mirror image of a
            fp["phash"][b], fp["phash_flip"][b] = fp["phash_flip"][a], fp["phash"][a]
            fp["dhash"][b], fp["dhash_flip"][b] = fp["dhash_flip"][a], fp["dhash"][a]
        planted.add((int(min(a, b)), int(max(a, b))))
    patients = np.arange(n) // 2
    y = rng.integers(0, 3, n // 2 + 1)[patients]
    df = pd.DataFrame(
        {
            "image_id": [f"img{i:06d}" for i in range(n)],
            "frame": 0,
            "patient_key": [f"P-{p:010x}" for p in patients],
            "study_id": "S1",
            "laterality": np.where(np.arange(n) % 2 == 0, "L", "R"),
            "label": np.array(["normal", "moderate", "severe"])[y],
            "y": y,
            "source": rng.choice(["siteA", "siteB", "siteC"], n),
            "width": 2048,
            "height": 1536,
            "sha256": [f"{i:064x}" for i in rng.integers(0, 2**62, n)],
        }
    )
    return df, fp, planted


def naive_pairs(fp: dict, m: int, threshold: int) -> list[tuple[int, int]]:
    """The O(n^2) Python loop the audit replaces (first ``m`` images)."""
    ph, phf = [int(v) for v in fp["phash"][:m]], [int(v) for v in fp["phash_flip"][:m]]
    dh, dhf = [int(v) for v in fp["dhash"][:m]], [int(v) for v in fp["dhash_flip"][:m]]
    out = []
    for i in range(m):
        for j in range(i + 1, m):
            if (bin(ph[i] ^ ph[j]).count("1") <= threshold and bin(dh[i] ^ dh[j]).count("1") <= threshold) or (
                bin(ph[i] ^ phf[j]).count("1") <= threshold and bin(dh[i] ^ dhf[j]).count("1") <= threshold
            ):
                out.append((i, j))
    return out


def found_pairs(report) -> set[tuple[int, int]]:
    pairs = set()
    for f in report.findings:
        if f.kind.startswith("duplicate_"):
            for d in f.details:
                a, b = int(d["image_id_a"][3:]), int(d["image_id_b"][3:])
                pairs.add((min(a, b), max(a, b)))
    return pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--planted", type=int, default=30, help="planted duplicate pairs per size")
    p.add_argument("--naive-subset", type=int, default=1000)
    p.add_argument("--threshold", type=int, default=DEFAULT_HAMMING_THRESHOLD)
    p.add_argument("--hash-images", type=int, default=100, help="decoded images to fingerprint (0: skip)")
    args = p.parse_args(argv)

    print(f"threshold {args.threshold} bits; times in seconds (wall clock, this machine)")
    print(f"{'n':>7} {'split+folds':>12} {'audit':>8} {'planted found':>14} {'naive subset':>18} {'naive at n (extrap.)':>21}")
    for n in args.sizes:
        df, fp, planted = synthetic(n, args.planted)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = SplitConfig(seed=0)
            df = assign_folds(assign_splits(df, cfg), cfg)
        t_split = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = audit_cohort(df, fp=fp, hamming_threshold=args.threshold, max_details=10**6)
        t_audit = time.perf_counter() - t0
        recall = len(planted & found_pairs(report))
        m = min(args.naive_subset, n)
        t0 = time.perf_counter()
        naive_pairs(fp, m, args.threshold)
        t_naive = time.perf_counter() - t0
        extrap = t_naive * (n / m) ** 2
        print(
            f"{n:>7} {t_split:>12.2f} {t_audit:>8.2f} {recall:>7}/{len(planted):<6} "
            f"{t_naive:>8.2f} (m={m:>5}) {extrap:>13.0f} (extrap.)"
        )
    if args.hash_images:
        rng = np.random.default_rng(0)
        for shape in ((512, 512, 3), (1536, 2048, 3)):
            imgs = [rng.random(shape, dtype=np.float32) for _ in range(min(args.hash_images, 20 if shape[0] > 1000 else 200))]
            t0 = time.perf_counter()
            fingerprints(imgs)
            per = (time.perf_counter() - t0) / len(imgs)
            print(f"fingerprints of decoded {shape[1]}x{shape[0]} RGB: {per * 1000:.1f} ms/image "
                  f"(20,000 images: {per * 20000:.0f} s, done once while decoding)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
