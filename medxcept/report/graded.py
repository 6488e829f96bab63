"""The figures of the graded (k-class) sections: drawn from the graded record and the per-endpoint
scores the stage computed (:func:`medxcept.evaluation.graded.endpoint_scores`); nothing is computed here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medxcept.report.figures import (
    BLUE,
    GREY,
    clinical_figure,
    confusion_figure,
    plt,
    reliability_figure,
    roc_pr_figure,
    to_data_uri,
)

__all__ = ["graded_figures", "classwise_reliability_figure"]


def graded_figures(graded: dict[str, Any], endpoint_scores: dict[str, dict[str, np.ndarray]]
                   ) -> dict[str, str | None]:
    """Figures of the graded sections: confusion matrices (images, patients), class-wise
    reliability after recalibration, and each endpoint's ROC/PR curves.

    ``endpoint_scores``: per endpoint, ``y`` (0/1), ``raw`` (the uncalibrated scores the AUC ranks:
    the curves) and ``calibrated`` (what the threshold applies to: the operating point), as
    :func:`medxcept.evaluation.graded.endpoint_scores` returns them.
    """
    classes = graded["classes"]
    figs: dict[str, str | None] = {}
    for level in ("test_image", "test_patient"):
        cm = np.asarray(graded[level]["confusion_matrix"])
        k = cm.shape[0]
        yy = np.repeat(np.repeat(np.arange(k), k), cm.ravel())
        pp = np.repeat(np.tile(np.arange(k), k), cm.ravel())
        figs[f"graded_confusion_{level}"] = confusion_figure(yy, pp, classes) if cm.sum() else None
    before, after = graded["calibration_test"]["before"], graded["calibration_test"]["after"]
    figs["graded_reliability_classwise"] = classwise_reliability_figure(before, after, classes)
    figs["graded_reliability_top_label"] = reliability_figure(
        before["reliability_top_label"], after["reliability_top_label"],
        labels=("top label, before recalibration", "top label, after"))
    for name, e in graded["endpoints"].items():
        s = endpoint_scores[name]
        figs[f"endpoint_roc_{name}"] = roc_pr_figure(s["y"], s["raw"], e["threshold"]["value"],
                                                     operating=s["calibrated"], title_suffix=f" ({name}, images)")
        if e.get("clinical"):
            figs[f"endpoint_clinical_{name}"] = clinical_figure(e["clinical"], title_suffix=f" ({name}, patients)")
    return figs


def classwise_reliability_figure(before: dict[str, Any], after: dict[str, Any], classes: Sequence[str]) -> str:
    """Reliability per class (``P[:, c]`` against ``y == c``): top row before recalibration, bottom row after."""
    k = len(classes)
    fig, axes = plt.subplots(2, k, figsize=(2.9 * k, 5.6), sharex=True, sharey=True, squeeze=False)
    for row, (label, cal) in enumerate((("before", before), ("after", after))):
        for j, c in enumerate(classes):
            ax = axes[row, j]
            t = pd.DataFrame(cal["reliability_per_class"][c])
            t = t[t["count"] > 0]
            ax.plot([0, 1], [0, 1], color=GREY, ls="--", lw=1)
            ax.plot(t["mean_confidence"], t["observed_frequency"], marker="o", color=BLUE)
            for _, r in t.iterrows():
                ax.annotate(str(int(r["count"])), (r["mean_confidence"], r["observed_frequency"]),
                            textcoords="offset points", xytext=(4, -10), fontsize=7, color=GREY)
            ece_c = cal["classwise_ece_per_class"][c]
            ax.set(title=f"{c} ({label}): ECE {ece_c:.3f}", xlim=(0, 1), ylim=(0, 1))
            if row == 1:
                ax.set_xlabel(f"predicted P({c})")
        axes[row, 0].set_ylabel("observed frequency")
    return to_data_uri(fig)
