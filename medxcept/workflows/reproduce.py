"""The reproduce workflow: re-run a finished run from its directory and compare the two.

``python -m pipelines.retina --reproduce RUN_DIR`` calls :func:`reproduce_run`. What is compared,
with which tolerance, and the verdict are in :mod:`medxcept.evaluation.reproduce`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from medxcept.cohort.table import load_cohort_spec
from medxcept.errors import ConfigError
from medxcept.evaluation.reproduce import (
    DEFAULT_TOLERANCE,
    NotReproducedError,
    Reproduction,
    cohort_path,
    compare_runs,
    read_json,
    rerun_path,
)
from medxcept.integrity.split_keys import split_hash
from medxcept.run import RunDir, data_hash, load_run_config
from medxcept.workflows.single import run_pipeline

__all__ = ["reproduce_run"]

log = logging.getLogger("medxcept.evaluation.reproduce")  # the log lines keep their logger name


def reproduce_run(run_dir: str | Path, *, tolerance: float = DEFAULT_TOLERANCE,
                  out: Path | None = None) -> Reproduction:
    """Re-run a finished run from its directory into a new one, and compare them.

    Parameters
    ----------
    run_dir : path
        A complete run directory (``config.yaml``, ``versions.json``, ``metrics.json``).
    tolerance : float, default :data:`DEFAULT_TOLERANCE`
        For predictions and metrics (absolute).
    out : path, optional
        The new run directory (default ``<run_dir>-reproduced``, numbered if it exists).

    Returns
    -------
    Reproduction
        Also written to ``<new run>/reproduce.json``.

    Raises
    ------
    ConfigError
        ``run_dir`` is not a complete run, or its cohort file is missing.
    NotReproducedError
        The data hash differs (raised before training), or the re-run differs beyond
        ``tolerance``; the message is the verdict line and names ``reproduce.json``.
    """
    run_dir = Path(run_dir).resolve()
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ConfigError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    cfg = load_run_config(run_dir)
    for name in ("versions.json", "metrics.json", "split.csv", "audit.json", "predictions.csv"):
        if not (run_dir / name).is_file():
            raise ConfigError(
                f"cannot reproduce {run_dir}: it has no {name} (only a complete run can be reproduced)")
    versions = read_json(run_dir / "versions.json")
    expected = versions.get("data_hash")
    spec = load_cohort_spec(cohort_path(cfg, run_dir))
    new = Path(out) if out is not None else rerun_path(run_dir)
    log.info("reproducing %s into %s", run_dir, new)

    def check_data(path: Path, table: pd.DataFrame, report: Any) -> None:
        got = data_hash(table)
        if got == expected:
            return
        run = RunDir(path)
        run.write_versions(hashes={"data_hash": got, "split_hash": split_hash(table),
                                   "config_hash": versions.get("config_hash")})
        rep = compare_runs(run_dir, path, tolerance=tolerance, data_only=True)
        rep.checks["data"]["note"] = ("the cohort's files, labels or patients changed since the run; "
                                      "stopped before training")
        run.write_json("reproduce.json", rep.to_dict())
        raise NotReproducedError(
            f"not reproducible: the data changed (data hash {str(expected)[:12]} in {run_dir.name}, "
            f"{got[:12]} now); stopped before training. See {path / 'reproduce.json'}", rep.table())

    run_pipeline(cfg, spec, run_name=str(new), before_training=check_data)
    rep = compare_runs(run_dir, new, tolerance=tolerance)
    RunDir(new).write_json("reproduce.json", rep.to_dict())
    if not rep.reproduced:
        raise NotReproducedError(f"not reproduced: {rep.verdict()}. See {new / 'reproduce.json'}",
                                 rep.table())
    return rep
