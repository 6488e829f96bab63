"""The training verdict: plain words on over- and underfitting from a run's per-epoch history.

The workflows that used to live here are in :mod:`medxcept.workflows` (``run_pipeline`` in
:mod:`medxcept.workflows.single`, the shared steps in :mod:`medxcept.workflows.steps`); this
module keeps :func:`training_verdict`, read by every workflow and by ``compare``. The verdict
itself is :func:`medxcept.verdict.training_verdict` (issue 17: did not learn, collapsed,
underfitting, overfitting, fine).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from medxcept.verdict import training_verdict as _verdict

__all__ = ["training_verdict"]


def training_verdict(history: pd.DataFrame, best_epoch: int, *,
                     collapse: dict | None = None) -> dict[str, Any]:
    """The training verdict of :func:`medxcept.verdict.training_verdict` (its keys include the
    former ``verdict``, ``best_epoch``, ``epochs_run``, ``train_auc_at_best``, ``val_auc_at_best``,
    ``gap_at_best``, ``overfitting_seen``, ``final_train_auc`` and ``final_val_auc``)."""
    return _verdict(history, best_epoch, collapse=collapse)
