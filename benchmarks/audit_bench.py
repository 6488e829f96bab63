"""How long does the integrity audit take on 1,000 to 20,000 decoded images, and what does it find?

The real audit path, timed end to end on images: :func:`medxcept.integrity.audit.fingerprints` (pixel hash,
pHash/dHash, detail bit-maps, SIFT keypoints of each image and its mirror) and
:func:`medxcept.integrity.audit.audit_cohort` (exact and pixel-identical copies, the near-duplicate candidate
search, geometric verification, groups, leakage and confounding checks). The cohort is
``benchmarks/near_duplicates.py``'s large stress set (:func:`near_duplicates.scale_cohort`):
preprocessed 224-px real-photo look-alikes (the same real background, colour, disc, arcades,
vignetting and border; their own fine vessels; half mirrored, Ben Graham'ed, CLAHE'd, lens flares),
300 demo-generator eyes among them, and every 100th image a copy of an earlier one under all
transforms combined (rotation +-45 deg, shift 20 %, zoom 0.8-1.25, shear 0.2, flips, resize
224-512 px, brightness/contrast +-20 %, JPEG 50-95), each image its own patient, split at random.
Smaller sizes are prefixes of the largest (the same proportions). The images are built once and
kept under ``$MEDXCEPT_CACHE`` (``--cache-dir``; ~3 GB at 20,000; building 20,000 takes ~20 min).

Printed per size: ``n``, wall seconds, CPU seconds (all threads of the process), CPU ms per
image, candidate recall (planted copies among the pairs the candidate search proposed), verified
recall (planted copies among the audit's duplicate findings), false pairs (findings that are not
planted copies) and false pairs per 10,000 images; then how the cost grows with ``n``.

Usage::

    nice -n 5 python benchmarks/audit_bench.py                   # 1,000, 5,000 and 20,000 images
    python benchmarks/audit_bench.py --sizes 1000 2000           # quicker (prefixes of the same set)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from near_duplicates import scale_cohort  # noqa: E402

from medxcept.integrity import duplicates  # noqa: E402
from medxcept.integrity.audit import audit_cohort, fingerprints  # noqa: E402


def cohort_table(n: int, seed: int = 0) -> pd.DataFrame:
    """One patient per image, a random split; ``sha256`` in row order (the audit's canonical order)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return pd.DataFrame({
        "image_id": [f"img{i:06d}" for i in range(n)],
        "frame": 0,
        "patient_key": [f"P-{i:08x}" for i in range(n)],
        "label": np.array(["normal", "referable"])[y],
        "y": y,
        "split": rng.choice(["train", "val", "test"], n, p=[0.7, 0.15, 0.15]),
        "sha256": [f"{i:064x}" for i in range(n)],
    })


def copy_groups(planted: list[tuple[int, int]], n: int) -> set[tuple[int, int]]:
    """Every pair of images among the first ``n`` that are copies of one another: an original and its
    copies, and two copies of one original (found pairs, not false ones)."""
    members: dict[int, list[int]] = {}
    for a, b in planted:
        if b < n:
            members.setdefault(a, [a]).append(b)
    return {(x, y) for m in members.values() for x in m for y in m if x < y}


def found_pairs(report) -> set[tuple[int, int]]:
    pairs = set()
    for f in report.findings:
        if f.kind in ("duplicate_across_splits", "duplicate_across_patients", "duplicate_within_split"):
            for d in f.details:
                a, b = int(d["image_id_a"][3:]), int(d["image_id_b"][3:])
                pairs.add((min(a, b), max(a, b)))
    return pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    p.add_argument("--cohort-size", type=int, default=20000,
                   help="images of the cached stress set; --sizes are its prefixes")
    p.add_argument("--px", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path,
                   default=Path(os.environ.get("MEDXCEPT_CACHE", os.environ.get("TMPDIR", "/tmp"))))
    args = p.parse_args(argv)
    n_max = max(args.cohort_size, *args.sizes)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    images, planted = scale_cohort(n_max, args.px, args.seed, folder=args.cache_dir)
    print(f"{n_max} preprocessed {args.px}-px look-alike images, 1 % planted copies (all transforms "
          f"combined), built or loaded in {time.perf_counter() - t0:.0f} s; "
          f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'n':>7} {'wall s':>8} {'CPU s':>8} {'CPU ms/img':>11} {'candidates':>11} {'cand. recall':>13} "
          f"{'verified':>10} {'false pairs':>12} {'per 10,000':>11}   wall s: keypoints / candidates / verification; "
          "images judged dim (duplicates.DARK_LEVEL, DIM_RANGE)")
    walls, cpus = [], []
    for n in sorted(args.sizes):
        imgs = np.asarray(images[:n])  # decoded into memory first (not timed): the audit sees arrays
        want = {(a, b) for a, b in planted if b < n}  # recall: each planted copy with its original
        related = copy_groups(planted, n)  # not false: two copies of one original found together
        df = cohort_table(n, args.seed)
        c0, w0 = time.process_time(), time.perf_counter()
        fp = fingerprints(imgs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = audit_cohort(df, fp=fp, policy="warn", max_details=10**7)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        st = dict(duplicates.LAST_STATS)
        cand = duplicates.LAST_CANDIDATES.get("pairs")
        cs = set(zip(cand["i"].tolist(), cand["j"].tolist(), strict=True)) if cand is not None else set()
        got = found_pairs(report)
        false = got - want - related
        walls.append(wall)
        cpus.append(cpu)
        print(f"{n:>7} {wall:>8.1f} {cpu:>8.1f} {cpu * 1000 / n:>11.1f} {len(cs):>11} "
              f"{len(want & cs):>6}/{len(want):<6} {len(want & got):>4}/{len(want):<5} {len(false):>12} "
              f"{len(false) * 1e4 / n:>11.2f}   {st.get('keypoint_s', 0):.1f} / {st.get('candidate_s', 0):.1f} / "
              f"{st.get('verify_s', 0):.1f}; {int(np.sum(fp.get('kp_dim', 0)))}", flush=True)
        del fp, imgs
    if len(args.sizes) >= 2:
        s = np.log(sorted(args.sizes))
        print(f"growth: wall ~ n^{np.polyfit(s, np.log(walls), 1)[0]:.2f}, CPU ~ n^{np.polyfit(s, np.log(cpus), 1)[0]:.2f}; "
              f"load average {os.getloadavg()[0]:.1f} at the end (target: 20,000 images in <= 120 s wall on 2 cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
