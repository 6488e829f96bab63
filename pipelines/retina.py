"""``python -m pipelines.retina``: train and evaluate Xception on a cohort, write an HTML report.

With no arguments it runs the whole pipeline on the embedded synthetic demo cohort
(``cohorts/demo.yaml``) and prints the path of the report it wrote. Everything else is an option;
``--help`` explains each. This module only parses arguments: the work is done by plain functions
in :mod:`medxcept.pipeline` that a notebook can call too.

Exit status: 0 on success, 2 on a problem the user can fix (the message says what to do),
1 on a bug (with its traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_COHORT = Path(__file__).resolve().parent.parent / "cohorts" / "demo.yaml"
SUBCOMMANDS = ("run", "evaluate")


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cohort and output")
    g.add_argument("--cohort", default=str(DEFAULT_COHORT),
                   help="cohort definition (YAML); default: the embedded synthetic demo cohort")
    g.add_argument("--config", help="a run-configuration YAML (overrides the cohort's defaults)")
    g.add_argument("--out-dir", help="where run directories are created (default: reports/)")
    g.add_argument("--run-name", help="name of the run directory (default: <date>-<cohort>-<config hash>)")
    g.add_argument("--seed", type=int, help="seed for splits, initialization, augmentation and bootstrap")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any configuration field, e.g. --set train.patience=5 (repeatable)")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the report path")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.retina [run|evaluate]",
        description="Train and honestly evaluate an Xception classifier on a small medical imaging cohort: "
                    "ingest DICOM and photographs, split by patient, audit for leakage, fine-tune, calibrate, "
                    "and write a self-contained HTML report. Without arguments: the embedded demo cohort.",
        epilog="Subcommands: 'run' (default) trains and evaluates; 'evaluate --run DIR --cohort FILE' applies a "
               "trained run to another cohort (external validation). Exit status 2 means a problem with the "
               "input or options, explained in one line.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="train and evaluate (default)", description=parser.description,
                         epilog=parser.epilog)
    _add_common(run)
    g = run.add_argument_group("model and training")
    g.add_argument("--weights", help="imagenet (from Keras' cache, never downloaded) | none (random "
                   "initialization, marked in the report) | PATH to a .h5/.weights.h5/.keras file")
    g.add_argument("--recipe", choices=["default", "baseline"],
                   help="default: the limited-data recipe; baseline: the common tutorial recipe, for comparison")
    g.add_argument("--image-px", type=int, help="input size in pixels (>= 71; Xception's native size is 299)")
    g.add_argument("--batch-size", type=int, help="images per training step")
    g.add_argument("--head-epochs", type=int, help="stage 1 epochs (frozen base)")
    g.add_argument("--finetune-epochs", type=int, help="stage 2 epochs (top blocks unfrozen), maximum")
    g.add_argument("--on-leak", choices=["error", "warn", "fix"],
                   help="what a cross-split duplicate or patient overlap does: stop (default), warn, or regroup")
    ev = sub.add_parser("evaluate", help="apply a trained run to another cohort (external validation)",
                        description="apply a trained run (model, preprocessing, calibration, threshold) "
                                    "unchanged to another cohort and write the same report")
    _add_common(ev)
    ev.add_argument("--run", required=True, help="the run directory of the trained model")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from medxcept.errors import ConfigError

    out: dict[str, Any] = {}
    mapping = {"out_dir": "out_dir", "seed": "seed", "weights": "model.weights", "recipe": "train.recipe",
               "image_px": "preprocess.image_px", "batch_size": "train.batch_size",
               "head_epochs": "train.head_epochs", "finetune_epochs": "train.finetune_epochs",
               "on_leak": "audit.on_leak"}
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = value
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.patience=5")
        key, value = item.split("=", 1)
        import yaml

        out[key.strip()] = yaml.safe_load(value)
    if "seed" in out:
        out.setdefault("split.seed", out["seed"])
    return out


def _logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("medxcept")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        argv.insert(0, "run")  # 'run' is the default; its --help lists every option
    args = build_parser().parse_args(argv)
    _logging(args)
    from medxcept.errors import MedxceptError

    try:
        from medxcept.cohort import load_cohort_spec
        from medxcept.config import load_config

        spec = load_cohort_spec(args.cohort)
        cfg = load_config(cohort_defaults=spec.defaults, config_file=args.config, overrides=_overrides(args))
        if args.command == "evaluate":
            from medxcept.external import evaluate_run

            report = evaluate_run(Path(args.run), spec, cfg, run_name=args.run_name)
        else:
            from medxcept.pipeline import run_pipeline

            report = run_pipeline(cfg, spec, run_name=args.run_name)
    except MedxceptError as exc:
        print(f"medxcept: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medxcept: interrupted", file=sys.stderr)
        return 130
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
