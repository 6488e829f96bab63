"""``python -m pipelines.compare``: compare finished runs (recipes, seeds) on the same test set.

    python -m pipelines.compare reports/run-a reports/run-b reports/run-c reports/run-d
    python -m pipelines.compare reports/*-demo-* --group-by train.learning_rate --name lr-sweep

Writes ``comparison.html`` (self-contained) and ``comparison.json`` into
``<out>/<name>/`` (default ``comparisons/<date>-<groups>/`` beside the first run) and prints the
HTML path. Runs are grouped by recipe (or ``--group-by KEY`` of their ``config.yaml``) and paired by
seed; every run must have the same test set. The verdict rule ("larger than run-to-run noise" or
not) is stated in :mod:`medxcept.evaluation.compare`, which does the work.

Exit status: 0 on success, 2 on a problem the user can fix (the message says what to do),
1 on a bug (with its traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipelines._cli import configure_logging, run_main

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.compare",
        description="Compare finished runs evaluated on the same test set: per-run metrics, mean ± run-to-run "
                    "SD per group (recipe), DeLong and paired-bootstrap tests per seed pair, and a verdict per "
                    "metric on whether the difference is larger than run-to-run noise.",
        epilog="To vary only the training seed on one test set: --set seed=N --set split.seed=0 when running "
               "python -m pipelines.retina (--seed N moves the split too). Exit status 2 means a problem with "
               "the input, explained in one line.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run directories (two or more)")
    parser.add_argument("--out", help="folder in which the comparison directory is created "
                        "(default: comparisons/ beside the first run)")
    parser.add_argument("--name", help="name of the comparison directory (default: <date>-<groups>)")
    parser.add_argument("--group-by", metavar="KEY",
                        help="dotted config.yaml key whose value defines the groups, e.g. train.learning_rate "
                             "(default: the run's recipe)")
    parser.add_argument("--n-bootstrap", type=int, default=1000,
                        help="paired bootstrap resamples of the test patients per seed pair (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the report path")
    return parser


def _run(args: argparse.Namespace) -> Path:
    from medxcept.workflows.compare import run_comparison  # here: --help answers without loading the stages

    return run_comparison(args.runs, out_dir=args.out, name=args.name, group_by=args.group_by,
                          n_resamples=args.n_bootstrap, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args)
    return run_main(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
