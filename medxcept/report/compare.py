"""The figures of the comparison page (``pipelines.compare``): drawn from the runs the stage loaded.

The statistics are in :mod:`medxcept.evaluation.compare`; this module only draws. Each run is a
:class:`medxcept.evaluation.compare.RunRecord` (read here through its ``group``, ``seed``,
``history`` and ``summary`` fields only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.ticker import MaxNLocator

from medxcept.report.figures import plt, to_data_uri

__all__ = ["palette", "validation_curves_figure", "auc_ci_figure"]


def _palette(groups: Sequence[str]) -> dict[str, str]:
    colours = ["#1f5fa8", "#d9822b", "#2e8b57", "#b3261e", "#7b4fa0", "#8c6d31", "#e377c2", "#17becf"]
    return {g: colours[i % len(colours)] for i, g in enumerate(groups)}


def validation_curves_figure(runs: Sequence[Any]) -> str | None:
    """Validation patient AUC and validation loss per epoch, one line per run, coloured by group."""
    if not any(len(r.history) for r in runs):
        return None
    colour = _palette(list(dict.fromkeys(r.group for r in runs)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    seen: set[str] = set()
    for r in runs:
        h = r.history
        if h.empty:
            continue
        auc_col = "val_patient_auc" if "val_patient_auc" in h else "val_auc"
        label = None if r.group in seen else r.group
        seen.add(r.group)
        if auc_col in h:
            axes[0].plot(h["epoch"], h[auc_col], color=colour[r.group], marker=".", lw=1.3, alpha=0.85, label=label)
            best = h[h["epoch"] == r.summary["best_epoch"]]
            if len(best):
                axes[0].scatter(best["epoch"], best[auc_col], color=colour[r.group], s=40, edgecolor="black",
                                zorder=3)
        if "val_loss" in h:
            axes[1].plot(h["epoch"], h["val_loss"], color=colour[r.group], marker=".", lw=1.3, alpha=0.85)
    axes[0].set(title="validation ROC-AUC (patients); circled: kept epoch", xlabel="epoch")
    axes[1].set(title="validation loss", xlabel="epoch")
    axes[0].legend(fontsize=8, loc="lower right")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return to_data_uri(fig)


def auc_ci_figure(runs: Sequence[Any]) -> str:
    """Each run's test ROC-AUC with its bootstrap CI, grouped and coloured by group."""
    groups = list(dict.fromkeys(r.group for r in runs))
    colour = _palette(groups)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(runs) + 1.2))
    ylabels = []
    for i, r in enumerate(sorted(runs, key=lambda r: (groups.index(r.group), r.seed))):
        s = r.summary
        if s["roc_auc"] is None:
            continue
        lo, hi = s["roc_auc_low"], s["roc_auc_high"]
        err = [[s["roc_auc"] - lo], [hi - s["roc_auc"]]] if lo is not None and hi is not None else None
        ax.errorbar(s["roc_auc"], i, xerr=err, fmt="o", color=colour[r.group], capsize=3)
        ylabels.append((i, f"{r.group} · seed {r.seed}"))
    ax.set_yticks([i for i, _ in ylabels], [t for _, t in ylabels], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="test ROC-AUC (patients), 95 % bootstrap CI", xlim=(0, 1.02))
    return to_data_uri(fig)


def palette(groups: Sequence[str]) -> dict[str, str]:
    """One colour per group, in order (the page and the figures agree)."""
    return _palette(groups)
