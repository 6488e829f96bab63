"""The compare workflow: load finished runs, compare them, write ``comparison.json`` and ``.html``.

``python -m pipelines.compare`` calls :func:`run_comparison`. The statistics (the paired tests,
the run-to-run noise and the verdict rule) are in :mod:`medxcept.evaluation.compare`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medxcept.errors import ConfigError
from medxcept.evaluation.compare import (
    LARGER,
    METRICS,
    VERDICT_METRICS,
    RunRecord,
    compare,
    comparison_json,
    load_run,
    slug,
)
from medxcept.report import environment
from medxcept.report.compare import auc_ci_figure, palette, validation_curves_figure
from medxcept.run import write_atomic

__all__ = ["run_comparison", "write_comparison"]


def write_comparison(runs: Sequence[RunRecord], result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``comparison.json`` and the self-contained ``comparison.html`` into ``out_dir``; return the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "comparison.json", comparison_json(result))
    env = environment()
    figs = {"curves": validation_curves_figure(runs), "test_auc": auc_ci_figure(runs)}
    html = env.get_template("comparison.html.j2").render(
        c=result, figs=figs, metrics=METRICS, verdict_metrics=VERDICT_METRICS, larger=LARGER,
        colours=palette(list(result["groups"])), created=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        not_pretrained=[r["name"] for r in result["runs"] if not r["pretrained"]], title=out.name)
    return write_atomic(out / "comparison.html", html)


def run_comparison(run_dirs: Sequence[str | Path], *, out_dir: str | Path | None = None, name: str | None = None,
                   group_by: str | None = None, n_resamples: int = 1000, seed: int = 0) -> Path:
    """Load, check, compare and write: what ``python -m pipelines.compare`` does. Returns the HTML path.

    The output directory is ``<out_dir>/<name>``; ``out_dir`` defaults to ``comparisons/`` beside the
    first run, ``name`` to ``<date>-<groups joined by -vs->``.
    """
    if len(run_dirs) < 2:
        raise ConfigError(f"give at least two run directories to compare; got {len(run_dirs)}")
    if any(_is_graded(p) for p in run_dirs):
        return _compare_graded(run_dirs, out_dir=out_dir, name=name, n_resamples=n_resamples, seed=seed)
    runs = [load_run(p, group_by=group_by) for p in run_dirs]
    result = compare(runs, n_resamples=n_resamples, seed=seed)
    result["group_by"] = group_by or "train.recipe"  # metrics.json's run.recipe is config train.recipe
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = slug(name or f"{stamp}-{'-vs-'.join(result['groups'])}")
    base = Path(out_dir) if out_dir is not None else Path(run_dirs[0]).resolve().parent / "comparisons"
    return write_comparison(runs, result, base / name)


def _is_graded(run_dir: str | Path) -> bool:
    path = Path(run_dir) / "metrics.json"
    return path.is_file() and '"graded"' in path.read_text(encoding="utf-8")


def _compare_graded(run_dirs: Sequence[str | Path], *, out_dir: str | Path | None, name: str | None,
                    n_resamples: int, seed: int) -> Path:
    """k-class runs: :func:`medxcept.evaluation.graded.compare_graded_runs`, written as ``comparison.json`` and ``.html``."""
    import json

    from medxcept.evaluation.graded import compare_graded_runs

    result = compare_graded_runs(run_dirs, n_resamples=n_resamples, seed=seed)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = slug(name or f"{stamp}-graded-{len(run_dirs)}-runs")
    base = Path(out_dir) if out_dir is not None else Path(run_dirs[0]).resolve().parent / "comparisons"
    out = base / name
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "comparison.json", json.dumps(result, indent=2, default=float))
    html = environment().get_template("comparison_graded.html.j2").render(
        c=result, title=out.name, created=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"))
    return write_atomic(out / "comparison.html", html)
