"""``python -m pipelines.retina``: train and evaluate an ImageNet network (Xception by default) on a cohort,
write an HTML report.

With no arguments it runs the whole pipeline on the embedded synthetic demo cohort
(``cohorts/demo.yaml``) and prints the path of the report it wrote. Everything else is an option;
``--help`` explains each. This module only parses arguments: the work is done by plain functions
in :mod:`medxcept.workflows` that a notebook can call too.

Exit status: 0 on success, 2 on a problem the user can fix (the message says what to do),
1 on a bug (with its traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pipelines._cli import (
    CONFIG_OPTIONS,
    DEFAULT_COHORT,
    add_cohort_option,
    add_leak_option,
    add_output_options,
    add_training_options,
    configure_logging,
    overrides,
    run_main,
)

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# light modules only at the top: the workflows that load Keras are imported by the commands that train
from medxcept.cohort.table import load_cohort_spec  # noqa: E402
from medxcept.config import load_config  # noqa: E402
from medxcept.errors import ConfigError, LeakageError  # noqa: E402
from medxcept.evaluation.learning_curve import parse_fractions  # noqa: E402
from medxcept.evaluation.reproduce import DEFAULT_TOLERANCE, NotReproducedError  # noqa: E402
from medxcept.run import load_run_config  # noqa: E402
from medxcept.workflows.check import check_cohort  # noqa: E402

SUBCOMMANDS = ("run", "evaluate", "check")


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cohort and output")
    add_cohort_option(g)
    g.add_argument("--run-name", help="name of the run directory (default: <date>-<cohort>-<config hash>)")
    add_output_options(g)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.retina [run|evaluate|check]",
        description="Train and honestly evaluate an image classifier (an ImageNet backbone, Xception by default: "
                    "--backbone) on a small medical imaging cohort: "
                    "ingest DICOM and photographs, split by patient, audit for leakage, fine-tune, calibrate, "
                    "and write a self-contained HTML report. Without arguments: the embedded demo cohort.",
        epilog="Subcommands: 'run' (default) trains and evaluates; 'evaluate --run DIR --cohort FILE' applies a "
               "trained run to another cohort (external validation); 'check --cohort FILE' ingests, splits and "
               "audits a cohort without training. Exit status 2 means a problem with the input or options, "
               "explained in one line.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="train and evaluate (default)", description=parser.description,
                         epilog=parser.epilog)
    _add_common(run)
    g = run.add_argument_group("model and training")
    add_training_options(g)
    g.add_argument("--learning-curve", nargs="?", const="0.25,0.5,0.75", metavar="FRACTIONS",
                   help="after the run, retrain on these shares of the training patients (default 0.25,0.5,0.75) "
                        "and add the learning curve to the report: would more data help?")
    g.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run after its last completed epoch, with the configuration "
                        "saved in RUN_DIR/config.yaml (no other configuration option may be given)")
    g.add_argument("--reproduce", metavar="RUN_DIR",
                   help="re-run a finished run from its directory (its config.yaml and cohort file) into "
                        "RUN_DIR-reproduced and print, side by side, whether data, split, audit, predictions and "
                        "metrics match; exit 0 when reproduced, 2 when not (no configuration option may be given)")
    g.add_argument("--tolerance", type=float, metavar="P",
                   help="with --reproduce: largest absolute difference of a probability or a metric still "
                        "counted as reproduced (default 1e-4)")
    ev = sub.add_parser("evaluate", help="apply a trained run to another cohort (external validation)",
                        description="apply a trained run (model, preprocessing, calibration, threshold) "
                                    "unchanged to another cohort and write the same report")
    _add_common(ev)
    ev.add_argument("--run", required=True, help="the run directory of the trained model")
    add_leak_option(ev)  # confirmed copies of the source run's training images: stop (default), or warn
    ck = sub.add_parser("check", help="ingest, split and audit a cohort; no training",
                        description="check a cohort before training: ingestion with its exclusion log, the "
                                    "patient-level split and the integrity audit, in check.html")
    _add_common(ck)
    add_leak_option(ck)
    run.set_defaults(func=_cmd_run)
    ev.set_defaults(func=_cmd_evaluate)
    ck.set_defaults(func=_cmd_check)
    return parser


def _reproduce(args: argparse.Namespace) -> str:
    from medxcept.workflows.reproduce import reproduce_run  # loads Keras: only for a command that trains

    given = [f"--{k.replace('_', '-')}" for k in CONFIG_OPTIONS if getattr(args, k, None) is not None]
    given += [opt for opt, on in (("--set", args.set), ("--config", args.config), ("--resume", args.resume),
                                  ("--cohort", args.cohort != str(DEFAULT_COHORT)), ("--run-name", args.run_name),
                                  ("--learning-curve", args.learning_curve)) if on]
    if given:
        raise ConfigError(f"--reproduce takes the configuration saved in the run directory; do not combine it with "
                          f"{', '.join(given)} (the re-run goes to RUN_DIR-reproduced)")
    try:
        rep = reproduce_run(Path(args.reproduce),
                            tolerance=DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance)
    except NotReproducedError as exc:
        if exc.table:  # the side-by-side table on stdout, the one-line verdict on stderr
            print(exc.table)
        raise
    return f"{rep.table()}\n{rep.rerun}\n{rep.verdict()}"


def _resume(args: argparse.Namespace) -> Path:
    from medxcept.workflows.single import run_pipeline  # loads Keras: only for a command that trains

    given = [f"--{k.replace('_', '-')}" for k in CONFIG_OPTIONS if getattr(args, k, None) is not None]
    given += ["--set"] if args.set else []
    given += ["--config"] if args.config else []
    given += ["--cohort"] if args.cohort != str(DEFAULT_COHORT) else []
    if given:
        raise ConfigError(f"--resume takes the configuration saved in the run directory; do not combine it with "
                          f"{', '.join(given)} (start a new run to change options)")
    run_dir = Path(args.resume)
    cfg = load_run_config(run_dir)
    return run_pipeline(cfg, load_cohort_spec(cfg.cohort), resume_dir=run_dir)


def _check_verdict(page: Path) -> Path:
    """A check whose audit found errors exits 2 (after writing its page), so a script can stop on it."""
    audit = json.loads((page.parent / "audit.json").read_text(encoding="utf-8"))
    errors = int(audit.get("summary", {}).get("error", 0))
    if errors:
        raise LeakageError(f"the audit found {errors} error(s) that would stop a training run: read {page}")
    return page


def _config(args: argparse.Namespace) -> tuple[Any, Any]:
    """The cohort and the configuration resolved from the cohort's defaults, ``--config`` and options."""
    spec = load_cohort_spec(args.cohort)
    cfg = load_config(cohort_defaults=spec.defaults, config_file=args.config,
                      overrides={"cohort": args.cohort, **overrides(args)}, cohort_dir=spec.base_dir)
    return spec, cfg


def _cmd_run(args: argparse.Namespace) -> Path | str:
    """``run``: train and evaluate (:func:`medxcept.workflows.single.run_pipeline`)."""
    if args.reproduce:
        return _reproduce(args)
    if args.tolerance is not None:
        raise ConfigError("--tolerance applies to --reproduce RUN_DIR only")
    if args.resume:
        return _resume(args)
    from medxcept.workflows.single import run_pipeline  # loads Keras: only for a command that trains

    spec, cfg = _config(args)
    fractions = parse_fractions(args.learning_curve) if args.learning_curve else ()
    return run_pipeline(cfg, spec, run_name=args.run_name, learning_curve=fractions)


def _cmd_evaluate(args: argparse.Namespace) -> Path:
    """``evaluate``: external validation (:func:`medxcept.workflows.external.evaluate_run`)."""
    from medxcept.workflows.external import evaluate_run  # loads Keras: only for this command

    spec, cfg = _config(args)
    return evaluate_run(Path(args.run), spec, cfg, run_name=args.run_name)


def _cmd_check(args: argparse.Namespace) -> Path:
    """``check``: ingest, split and audit (:func:`medxcept.workflows.check.check_cohort`)."""
    spec, cfg = _config(args)
    return _check_verdict(check_cohort(spec, cfg, out_dir=Path(cfg.out_dir), run_name=args.run_name))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        argv.insert(0, "run")  # 'run' is the default; its --help lists every option
    args = build_parser().parse_args(argv)
    configure_logging(args)
    return run_main(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
