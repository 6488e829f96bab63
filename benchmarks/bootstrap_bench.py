"""Time the vectorized patient bootstrap against a naive per-resample scikit-learn loop.

The vectorized :func:`medxcept.evaluation.intervals.bootstrap_ci` computes the AUC of all
resamples at once from weighted rank statistics. The naive baseline does what most
scripts do: for each resample, draw patients, gather their images and call
``sklearn.metrics.roc_auc_score``. The naive loop runs on fewer resamples
(``--naive-resamples``) and its time is extrapolated linearly to ``--resamples``;
the table says so.

Usage::

    python benchmarks/bootstrap_bench.py [--sizes 500 2000 10000] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

# run from a checkout without installing: python benchmarks/bootstrap_bench.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medxcept.evaluation.intervals import bootstrap_ci  # noqa: E402


def make_data(n_images: int, images_per_patient: int = 4, seed: int = 0):
    """Synthetic predictions: patients with a few images each, AUC about 0.8."""
    rng = np.random.default_rng(seed)
    n_patients = max(2, n_images // images_per_patient)
    patient = rng.integers(0, n_patients, n_images)
    y_patient = rng.integers(0, 2, n_patients)
    y = y_patient[patient]
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)
    keys = np.array([f"P-{k:06d}" for k in patient])
    return y, p, keys


def patient_members(keys) -> list[np.ndarray]:
    """Image indices of each patient (set-up, kept out of the extrapolated time)."""
    _, codes = np.unique(keys, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)


def naive_auc_bootstrap(y, p, members, n_resamples: int, seed: int = 0) -> np.ndarray:
    """One scikit-learn call per resample, patients drawn with replacement."""
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[g] for g in drawn])
        if y[idx].min() != y[idx].max():
            aucs.append(roc_auc_score(y[idx], p[idx]))
    return np.array(aucs)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 10000])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--naive-resamples", type=int, default=50,
                        help="resamples actually run by the naive loop (then extrapolated)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)

    print(f"bootstrap of {args.resamples} patient resamples (about 4 images per patient); "
          f"best of {args.repeats} runs")
    print(f"naive loop: ran {args.naive_resamples} resamples and extrapolated x"
          f"{args.resamples / args.naive_resamples:g} (linear in resamples)\n")
    header = (f"{'images':>7} {'vector AUC s':>13} {'vector all 9 s':>15} "
              f"{'naive AUC s (extrap.)':>22} {'speed-up (AUC)':>15}")
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        y, p, keys = make_data(n)
        t_auc = best_of(lambda: bootstrap_ci(y, p, keys, metrics=("roc_auc",), threshold=None,
                                             n_resamples=args.resamples), args.repeats)
        t_all = best_of(lambda: bootstrap_ci(y, p, keys, threshold=0.5,
                                             n_resamples=args.resamples), args.repeats)
        members = patient_members(keys)
        t_naive = best_of(lambda: naive_auc_bootstrap(y, p, members, args.naive_resamples),
                          args.repeats) * args.resamples / args.naive_resamples
        print(f"{n:>7} {t_auc:>13.3f} {t_all:>15.3f} {t_naive:>22.2f} {t_naive / t_auc:>14.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
