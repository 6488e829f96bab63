"""The learning-curve workflow: train again on fractions of the training patients.

The question, the sampling (:func:`medxcept.evaluation.learning_curve.subsample_patients`), the verdict and
the figure are in :mod:`medxcept.evaluation.learning_curve`; this module trains and measures the points.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medxcept.evaluation.assess import TTA, Units, predict_units
from medxcept.evaluation.learning_curve import subsample_patients
from medxcept.evaluation.units import patient_auc, probabilities, unit_keys, unit_visits
from medxcept.evaluation.verdict import training_verdict
from medxcept.models.train import fit

__all__ = ["learning_curve_rows"]

log = logging.getLogger("medxcept.evaluation.learning_curve")  # the log lines keep their logger name


def learning_curve_rows(*, fractions: Sequence[float], images: np.ndarray, table: pd.DataFrame,
                        parts: dict[str, np.ndarray], cfg: Any, weights: Any, n_classes: int,
                        full: Any, task: str | None = None) -> pd.DataFrame:
    """Train one model per fraction and measure it; ``full`` (a ``TrainResult``) is the 100 % point.

    Returns one row per fraction (ascending, 100 % last): ``fraction, train_patients,
    train_images, best_epoch, train_auc_at_best, val_patient_auc, test_patient_auc, seconds``.
    Test AUC is of the uncalibrated probabilities (with the run's test-time augmentation,
    ``eval.tta``), aggregated per patient like the run's. ``task``: the cohort's task, passed to
    :func:`~medxcept.models.train.fit` so a graded run's early stopping ranks epochs by the graded
    evaluation's rule, as the run's own fit does.
    """
    tr, va, te = (table.iloc[parts[s]] for s in ("train", "val", "test"))
    rows = []
    for f in [*sorted(fractions), 1.0]:
        mask = subsample_patients(tr, f, seed=cfg.seed) if f < 1.0 else np.ones(len(tr), dtype=bool)
        idx = parts["train"][mask]
        if f < 1.0:
            log.info("learning curve: %.0f %% of the training patients (%d patients, %d images)", 100 * f,
                     tr.loc[mask, "patient_key"].nunique(), len(idx))
            result = fit(images[idx], table["y"].to_numpy()[idx], images[parts["val"]], va["y"].to_numpy(),
                         unit_keys(va["patient_key"], unit_visits(va, cfg.eval.unit)), cfg=cfg, weights=weights,
                         n_classes=n_classes, run_dir=None,
                         train_groups=unit_keys(table["patient_key"].iloc[idx],
                                                unit_visits(table.iloc[idx], cfg.eval.unit)), task=task)
        else:
            result = full
        verdict = training_verdict(result.history, result.best_epoch)
        # the run's own test-time augmentation (eval.tta), as its headline is measured
        prob = probabilities(predict_units(result.model, Units(te, images[parts["test"]]), TTA.of(cfg)))
        test_auc = patient_auc(te["patient_key"].to_numpy(), te["y"].to_numpy(), prob,
                               how=cfg.eval.patient_aggregation, visit=unit_visits(te, cfg.eval.unit))
        rows.append({"fraction": f, "train_patients": int(tr.loc[mask, "patient_key"].nunique()),
                     "train_images": int(len(idx)), "best_epoch": verdict["best_epoch"],
                     "train_auc_at_best": verdict.get("train_auc_at_best"),
                     "val_patient_auc": verdict.get("val_auc_at_best"), "test_patient_auc": test_auc,
                     "seconds": round(result.seconds, 1)})
    return pd.DataFrame(rows)
