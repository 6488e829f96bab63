"""``python -m pipelines.kfold``: patient-level k-fold cross-validation with one CV report.

    python -m pipelines.kfold --cohort cohorts/demo.yaml --folds 5
    python -m pipelines.kfold --cohort cohorts/demo.yaml --folds 5 --fold 3      # one fold (a scheduler job)
    python -m pipelines.kfold --aggregate reports/demo-cv5-1a2b3c4d               # report of the folds done

Every fold is a run directory of its own under ``<out-dir>/<cv-name>/``; the CV report
(``cv_report.html``, ``cv_metrics.json``) is written when every fold is complete, or on demand with
``--aggregate``. Re-running the same command resumes: complete folds are skipped. This module only
parses arguments; the work is done by :mod:`medxcept.workflows.cv` (read :mod:`medxcept.evaluation.kfold`'s docstring for
what the out-of-fold numbers mean).

Exit status: 0 on success, 2 on a problem the user can fix (the message says what to do) or when
folds failed (one line naming them; each fold's error is in its ``failed.json``, the other folds
ran, and the same command again retries only the failed ones), 1 on a bug (with its traceback),
130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pipelines._cli import (
    DEFAULT_COHORT,
    add_cohort_option,
    add_output_options,
    add_training_options,
    configure_logging,
    overrides,
    run_main,
)

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.kfold",
        description="Patient-level, stratified k-fold cross-validation of the pipeline (the backbone of "
                    "--backbone, Xception by default): one run "
                    "directory per fold and a CV report (per-fold and mean ± SD metrics, 95 %% t-interval, "
                    "pooled out-of-fold ROC and reliability). Resumable: complete folds are skipped.",
        epilog="Exit status 2 means a problem with the input or options, explained in one line. With "
               "repeats, fold indices run from 0 to repeats * folds - 1 (index = repeat * folds + fold).")
    g = parser.add_argument_group("cohort and output")
    add_cohort_option(g, default=None)  # None: the demo, and --aggregate needs no cohort
    g.add_argument("--cv-name", help="name of the CV directory (default: <cohort>-cv<k>[x<repeats>]-<config "
                   "hash>, so the same command finds and resumes it)")
    add_output_options(g)
    cv = parser.add_argument_group("cross-validation")
    cv.add_argument("--folds", type=int, help="number of folds (default: split.n_folds, 5); each fold chooses its "
                    "epoch, calibration and threshold on an inner validation split of its training folds' patients, "
                    "of share split.inner_val_fraction (default split.val_fraction, 0.2; e.g. --set "
                    "split.inner_val_fraction=0.25)")
    cv.add_argument("--repeats", type=int, default=1, help="repeated CV: fold seeds split.seed + r (default 1)")
    cv.add_argument("--fold", type=int, action="append", metavar="I",
                    help="run only fold I (repeatable), e.g. --fold $SLURM_ARRAY_TASK_ID; no report is written "
                         "unless that completes the CV")
    cv.add_argument("--prepare", action="store_true",
                    help="only ingest, assign folds and audit (write the CV directory and print its path); "
                         "train nothing")
    cv.add_argument("--aggregate", metavar="CV_DIR",
                    help="write the CV report of the complete folds of CV_DIR and list the missing ones")
    cv.add_argument("--no-save-models", action="store_true", help="do not keep each fold's model.keras")
    ex = parser.add_argument_group("executor")
    ex.add_argument("--executor", choices=["local", "processes", "ray"], default="local",
                    help="local: this machine (default; --jobs > 1: spawned processes); processes: --jobs "
                         "spawned processes; ray: one ray.remote task per fold (pip install 'medxcept[ray]')")
    ex.add_argument("--jobs", type=int, default=1,
                    help="local executor: folds run at once in separate processes (default 1, in-process)")
    ex.add_argument("--ray-address", help="address of an existing Ray cluster (default: start a local one)")
    ex.add_argument("--num-cpus", type=float, default=1, help="CPUs each Ray fold task requests (default 1)")
    ex.add_argument("--num-gpus", type=float, default=0, help="GPUs each Ray fold task requests (default 0)")
    add_training_options(parser.add_argument_group("model and training (shortcuts for --set)"))
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = overrides(args)
    if args.cohort is not None:
        out["cohort"] = args.cohort
    if args.folds is not None:
        out["split.n_folds"] = args.folds
    return out


def _run(args: argparse.Namespace) -> Path:
    # imported here, not at the top: --help and option errors answer without loading the stages
    from medxcept.cohort.table import load_cohort_spec
    from medxcept.config import load_config
    from medxcept.workflows import cv as cv_workflow

    if args.aggregate:
        return cv_workflow.aggregate_cv(Path(args.aggregate))["report"]  # it logs the missing folds
    cohort = args.cohort or str(DEFAULT_COHORT)
    spec = load_cohort_spec(cohort)
    cfg = load_config(cohort_defaults=spec.defaults, config_file=args.config, overrides=_overrides(args),
                      cohort_dir=spec.base_dir)
    cv_dir = Path(cfg.out_dir) / args.cv_name if args.cv_name else None
    only = [] if args.prepare else args.fold
    options = ({"address": args.ray_address, "num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
               if args.executor == "ray" else None)
    result = cv_workflow.run_cv(cfg, spec, n_folds=cfg.split.n_folds, repeats=args.repeats, cv_dir=cv_dir,
                                only=only, executor=args.executor, jobs=args.jobs, executor_options=options,
                                save_model=not args.no_save_models, cohort_file=cohort)
    log = logging.getLogger("medxcept")
    log.info("trained: %s; skipped (complete): %s", ", ".join(result["trained"]) or "none",
             ", ".join(result["skipped"]) or "none")
    if result["missing"]:
        log.info("not complete yet: %s (run them, then --aggregate %s)", ", ".join(result["missing"]),
                 result["path"])
    if args.prepare:
        return result["path"]
    return result["report"] or result["path"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args)
    return run_main(lambda: _run(args), interrupted="interrupted (re-run the same command to resume)")


if __name__ == "__main__":
    sys.exit(main())
