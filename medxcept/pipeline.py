"""The training verdict: plain words on over- and underfitting from a run's per-epoch history.

The workflows that used to live here are in :mod:`medxcept.workflows` (``run_pipeline`` in
:mod:`medxcept.workflows.single`, the shared steps in :mod:`medxcept.workflows.steps`); this
module keeps :func:`training_verdict`, read by every workflow and by ``compare``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["training_verdict"]


def training_verdict(history: pd.DataFrame, best_epoch: int) -> dict[str, Any]:
    """Plain-words overfitting verdict from the per-epoch history.

    Three signs are read: validation AUC falling after its peak while training AUC still rises,
    validation loss rising after its minimum while training loss still falls, and the
    train-validation AUC gap at the kept epoch (> 0.10 clear, > 0.03 mild).
    """
    if history.empty:
        return {"verdict": "no training epochs ran", "best_epoch": 0}
    last = history.iloc[-1]
    best_row = history[history["epoch"] == best_epoch]
    best = best_row.iloc[0] if len(best_row) else last
    train_auc, val_auc = float(best.get("auc", np.nan)), float(best.get("val_patient_auc", best.get("val_auc", np.nan)))
    gap = train_auc - val_auc
    n = int(history["epoch"].max())
    parts = []
    vals = history["val_patient_auc"] if "val_patient_auc" in history else history.get("val_auc")
    overfit = False
    if vals is not None and vals.notna().any():
        top = float(vals.max())
        first = int(history.loc[vals.idxmax(), "epoch"])
        tied = history.loc[np.isclose(vals, top, atol=1e-6), "epoch"].tolist()
        if len(tied) > 1:
            parts.append(f"validation AUC reached its best ({top:.3f}) at epoch {first} of {n} and matched it in "
                         f"{len(tied)} epochs; among those, epoch {best_epoch} had the lowest validation loss")
        else:
            parts.append(f"validation AUC peaked at epoch {first} of {n} ({top:.3f})")
        if top >= 0.999:
            parts.append("a validation AUC of 1 cannot rank epochs any further: the validation patients are "
                         "perfectly separated, so the loss decides")
        after = history[history["epoch"] > max(tied)]
        if len(after) and float(vals.iloc[-1]) < top - 0.02 and float(after["auc"].iloc[-1]) >= float(
                history.loc[vals.idxmax(), "auc"]):
            parts.append("later epochs improved training AUC while validation AUC fell: they overfit")
            overfit = True
    if "val_loss" in history and history["val_loss"].notna().any():
        vl = history["val_loss"]
        low = int(history.loc[vl.idxmin(), "epoch"])
        rise = float(vl.iloc[-1] - vl.min())
        if low < n and rise > 0.05 * abs(float(vl.min())) and float(history["loss"].iloc[-1]) < float(
                history.loc[vl.idxmin(), "loss"]):
            parts.append(f"validation loss was lowest at epoch {low} and rose by {rise:.3f} by epoch {n} while "
                         "training loss kept falling: later epochs overfit")
            overfit = True
    parts.append(f"weights of epoch {best_epoch} kept")
    if np.isfinite(gap):
        if gap > 0.10:
            parts.append(f"train-validation AUC gap {gap:.3f} at the kept epoch: clear overfitting")
        elif gap > 0.03:
            parts.append(f"train-validation AUC gap {gap:.3f} at the kept epoch: mild overfitting")
        else:
            parts.append(f"train-validation AUC gap {gap:.3f} at the kept epoch"
                         + ("" if overfit else ": no sign of overfitting"))
    return {"verdict": "; ".join(parts) + ".", "best_epoch": int(best_epoch), "epochs_run": n,
            "train_auc_at_best": train_auc, "val_auc_at_best": val_auc, "gap_at_best": gap,
            "overfitting_seen": overfit or (np.isfinite(gap) and gap > 0.03),
            "final_train_auc": float(last.get("auc", np.nan)),
            "final_val_auc": float(last.get("val_patient_auc", np.nan))}
