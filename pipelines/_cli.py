"""What the command-line pipelines share: options that map onto the configuration, logging, exit codes.

Each pipeline module (``retina``, ``kfold``, ``compare``) only parses its own arguments; the options
that set configuration fields are declared once here, so ``--image-px`` means the same everywhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from medxcept.errors import ConfigError, MedxceptError
from medxcept.models.backbones import names as backbone_names

#: The embedded synthetic demo cohort: every pipeline's default ``--cohort``.
DEFAULT_COHORT = Path(__file__).resolve().parent.parent / "cohorts" / "demo.yaml"

# option attribute -> configuration key (dotted) that it overrides
CONFIG_OPTIONS = {"out_dir": "out_dir", "seed": "seed", "weights": "model.weights", "backbone": "model.backbone",
                  "recipe": "train.recipe",
                  "image_px": "preprocess.image_px", "batch_size": "train.batch_size",
                  "head_epochs": "train.head_epochs", "finetune_epochs": "train.finetune_epochs",
                  "on_leak": "audit.on_leak"}


def add_training_options(g: argparse._ArgumentGroup) -> None:
    """``--backbone``, ``--weights``, ``--recipe``, ``--image-px``, ``--batch-size``, epochs and ``--on-leak``."""
    g.add_argument("--backbone", choices=backbone_names(),
                   help="the ImageNet network under the classifier's head (default xception; "
                        "medxcept/models/backbones.py): model.backbone")
    g.add_argument("--weights", help="imagenet (Keras' published file for the backbone: from Keras' cache, "
                   "downloaded there and hash-checked when missing) | none (random initialization, marked in the "
                   "report) | PATH to a .h5/.weights.h5/.keras file")
    g.add_argument("--offline", action="store_true",
                   help="never download anything (same as MEDXCEPT_OFFLINE=1): --weights imagenet then needs "
                        "the file in Keras' cache")
    g.add_argument("--recipe", choices=["default", "baseline"],
                   help="default: the limited-data recipe; baseline: the common tutorial recipe, for comparison")
    g.add_argument("--image-px", type=int, help="input size in pixels (at least the backbone's minimum: 71 for "
                   "Xception, 32 for the others; native: Xception 299, the others 224)")
    g.add_argument("--batch-size", type=int, help="images per training step")
    g.add_argument("--head-epochs", type=int, help="stage 1 epochs (frozen base)")
    g.add_argument("--finetune-epochs", type=int, help="stage 2 epochs (top blocks unfrozen), maximum")
    add_leak_option(g)


def add_leak_option(g: argparse._ArgumentGroup) -> None:
    """``--on-leak``: what a cross-split duplicate or patient overlap does."""
    g.add_argument("--on-leak", choices=["error", "warn", "fix"],
                   help="what a cross-split duplicate or patient overlap does: stop (default), warn, or regroup")


def add_cohort_option(g: argparse._ArgumentGroup, *, default: str | None = str(DEFAULT_COHORT)) -> None:
    """``--cohort``: the cohort definition (YAML); default the embedded demo cohort."""
    g.add_argument("--cohort", default=default,
                   help="cohort definition (YAML); default: the embedded synthetic demo cohort")


def add_output_options(g: argparse._ArgumentGroup) -> None:
    """``--config``, ``--out-dir``, ``--seed``, ``--set``, ``-v``, ``-q``."""
    g.add_argument("--config", help="a run-configuration YAML (overrides the cohort's defaults)")
    g.add_argument("--out-dir", help="where run directories are created (default: reports/)")
    g.add_argument("--seed", type=int, help="seed for splits, initialization, augmentation and bootstrap")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any configuration field, e.g. --set train.patience=5 (repeatable)")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the report path")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration overrides given by options and ``--set KEY=VALUE``."""
    if getattr(args, "offline", False):
        # not a configuration field (it changes no result): it holds for this process and its workers
        # (medxcept.models.network.OFFLINE_ENV, not imported here: that would load Keras to parse options)
        os.environ["MEDXCEPT_OFFLINE"] = "1"
    out: dict[str, Any] = {}
    for attr, key in CONFIG_OPTIONS.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = value
    for item in getattr(args, "set", []) or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.patience=5")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    if "seed" in out:
        out.setdefault("split.seed", out["seed"])
    return out


def configure_logging(args: argparse.Namespace) -> None:
    """medxcept's log lines on stderr, bare; ``-v`` debug, ``-q`` warnings only."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("medxcept")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def run_main(work: Callable[[], Path | str], *, interrupted: str = "interrupted") -> int:
    """Run ``work`` and print its result; a user-fixable problem is one line on stderr and exit 2."""
    try:
        out = work()
    except MedxceptError as exc:
        print(f"medxcept: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medxcept: {interrupted}", file=sys.stderr)
        return 130
    print(out)
    return 0
