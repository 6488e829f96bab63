"""Does external validation catch near-copies of the training images? (issue 33)

On the demo cohort (``cohorts/demo.yaml``, its settings: 96 px), split and fingerprinted as a
training run does (the fingerprints a run keeps in ``private/fingerprints.joblib``), an "external"
cohort is made of 30 of its training images, each cropped by 5 %, resized (x1.35) and re-encoded
as JPEG quality 70 (:func:`medxcept.testing.copies.altered_copy`), plus 30 new images of the demo
generator with another seed. The external cohort is ingested and fingerprinted with the source's
preprocessing, and :func:`medxcept.evaluation.external.near_copies` runs the audit's pair verification across
the two sets. Printed: confirmed pairs, how many of the 30 copies were found (and whether each was
paired with its own original), false pairs among the 30 new images, the finding under
``--on-leak error`` and ``warn``, the same for the cohort without the copies, and the times.

No model is trained: the check runs before any prediction (``evaluate`` stops there under
``error``); ``tests/test_external.py`` runs the same through the CLI on a trained tiny run.

Usage::

    python -m benchmarks.external_copies            # ~2-4 min on 2 cores (ingests 300 images)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from medxcept.cohort.ingest import read_frames
from medxcept.cohort.table import load_cohort_spec
from medxcept.config import load_config
from medxcept.evaluation.external import (
    keep_source_fingerprints,
    load_source_fingerprints,
    near_copies,
    near_copy_findings,
)
from medxcept.images.cache import load_images
from medxcept.integrity.fingerprints import fingerprints
from medxcept.run import RunDir
from medxcept.testing.copies import write_copy_cohort
from medxcept.workflows.steps import materialize, prepare_cohort, split_and_audit

ROOT = Path(__file__).resolve().parent.parent


def _decode(table, rows) -> list[tuple[np.ndarray, str]]:
    out = []
    for r in table.iloc[rows].itertuples():
        frames = int(r.frame) if int(r.frame) >= 0 else "all"
        out.append((np.asarray(read_frames(r.reader, r.path, frames=frames)[1][0]), str(r.label)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="copies and new images (default 30 each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"load average: {os.getloadavg()}")
    tmp = Path(tempfile.mkdtemp(prefix="external-copies-"))
    spec = materialize(load_cohort_spec(ROOT / "cohorts" / "demo.yaml"))
    cfg = load_config(cohort_defaults=spec.defaults, overrides={"out_dir": str(tmp)})
    t = time.perf_counter()
    ing, cache = prepare_cohort(spec, cfg)
    images = load_images(ing.table, cache, cfg.preprocess)
    fp = fingerprints(images)
    table, _ = split_and_audit(ing.table, images, cfg, fp=fp)
    run = RunDir(tmp / "source")
    keep_source_fingerprints(run, table, images, fp)
    source = load_source_fingerprints(run.path)
    print(f"source: demo cohort, {len(table)} images ({cfg.preprocess.image_px} px), "
          f"{len(source['image_id'])} training + validation fingerprints kept in "
          f"{(run.path / 'private' / 'fingerprints.joblib').stat().st_size / 1e6:.1f} MB; "
          f"{time.perf_counter() - t:.1f} s")

    rng = np.random.default_rng(args.seed)
    train_rows = np.flatnonzero(table["split"].to_numpy() == "train")
    chosen = rng.choice(train_rows, size=args.n, replace=False)
    copies = _decode(table, chosen)
    # the demo generator with another seed (and the demo's hard-task options)
    demo_spec = load_cohort_spec(ROOT / "cohorts" / "demo.yaml")
    other_spec = dataclasses.replace(demo_spec, name="other", generator_options={
        **dict(demo_spec.generator_options), "n_patients": args.n, "seed": 1234})
    other_ing, _ = prepare_cohort(other_spec, cfg)
    new = _decode(other_ing.table, np.arange(args.n))

    for name, cp in (("30 copies + 30 new", copies), ("30 new only", [])):
        cohort = write_copy_cohort(tmp / name.replace(" ", "-"), copies=cp, new=new, classes=spec.classes,
                                   name=name.replace(" ", "-"))
        ext_spec = load_cohort_spec(cohort)
        t = time.perf_counter()
        e_ing, e_cache = prepare_cohort(ext_spec, dataclasses.replace(cfg))
        e_images = load_images(e_ing.table, e_cache, cfg.preprocess)
        e_fp = fingerprints(e_images)
        t_fp = time.perf_counter() - t
        t = time.perf_counter()
        pairs = near_copies(source, e_ing.table, e_fp, cfg.audit.hamming_threshold)
        t_pairs = time.perf_counter() - t
        files = e_ing.table["path"].map(lambda p: Path(p).name).to_numpy()
        found = {files[p] for p in pairs["pos"]}
        n_copies = sum(f.startswith("copy") for f in found)
        false = sorted(f for f in found if f.startswith("new"))
        own = sum(str(table["image_id"].iloc[chosen[int(files[p][4:7])]]) == s
                  for p, s in zip(pairs["pos"], pairs["source_image_id"], strict=True) if files[p].startswith("copy"))
        print(f"\n{name}: {len(e_images)} images; fingerprints {t_fp:.1f} s, cross-set verification {t_pairs:.1f} s")
        print(f"  confirmed pairs: {len(pairs)} (by match: {pairs['match'].value_counts().to_dict()}); copies found "
              f"{n_copies} of {len(cp)}, {own} paired with their own original; false pairs on new images: "
              f"{len(false)} {false[:5]}")
        if len(pairs):
            inl = pairs["inliers"].dropna()
            print(f"  inliers of the confirmed pairs: min {inl.min():.0f}, median {inl.median():.0f}")
        for policy in ("error", "warn"):
            _, findings = near_copy_findings(pairs, len(e_images), "demo-source", policy)
            print(f"  --on-leak {policy}: " + ("; ".join(f"{f.severity}: {f.message[:160]}..." for f in findings)
                                               or "no finding"))


if __name__ == "__main__":
    main()
