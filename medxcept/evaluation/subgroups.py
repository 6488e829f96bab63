"""Subgroup rows of the report: patient-level metrics with patient-bootstrap confidence intervals.

A subgroup table is read as a fairness screen ("does the model miss cases from camera B?"), and a
row of six patients will show a sensitivity of 0.5 or 1.0 whatever the truth. So each row carries
its interval, resampling **patients** (a patient's images move together), and is computed like the
headline: one score per patient of the subgroup (the run's patient aggregation over the patient's
images in that subgroup), ranking metrics from the uncalibrated scores, sensitivity and
specificity from the calibrated probabilities at the run's threshold.

Groups: ``source``, ``laterality``, ``sex`` and age band (``<40`` ... ``80+``) where the table
records them and they take at least two values.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from medxcept.evaluation.intervals import bootstrap_ci
from medxcept.evaluation.metrics import binary_metrics, ranking_metrics
from medxcept.evaluation.units import aggregate_by_patient, unit_patients, unit_visits

__all__ = ["SUBGROUP_COLUMNS", "subgroup_rows"]

log = logging.getLogger(__name__)

#: Columns whose values define subgroups (``age band`` is derived from ``age``).
SUBGROUP_COLUMNS = ("source", "laterality", "sex", "age band")
_AGE_BANDS = ([0, 40, 50, 60, 70, 80, 200], ["<40", "40-49", "50-59", "60-69", "70-79", "80+"])


def _none(v: Any) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def subgroup_rows(test: pd.DataFrame, threshold: float | None, *, how: str = "max", n_resamples: int = 1000,
                  seed: int = 0, unit: str = "patient") -> list[dict[str, Any]]:
    """Patient-level ROC-AUC, sensitivity and specificity per subgroup, each with its patient-bootstrap CI.

    Parameters
    ----------
    test : pandas.DataFrame
        Test images with ``y``, ``patient_key``, ``prob`` (calibrated), ``prob_raw`` (uncalibrated;
        ``prob`` is used when absent) and the subgroup columns.
    threshold : float or None
        The run's threshold (applied to the calibrated patient probabilities); None: no rows.
    how : {"mean", "max"}
        The run's patient aggregation.
    unit : {"patient", "visit"}
        The run's evaluation unit (``eval.unit``): with "visit", one score per patient and visit
        (``study_id``); the bootstrap still resamples patients.
    n_resamples, seed :
        The patient bootstrap; 0 resamples gives rows without intervals.

    Returns
    -------
    list of dict
        ``by``, ``value``, ``level`` ("patient"), ``images``, ``patients``, ``positives`` (patients),
        ``roc_auc``, ``sensitivity``, ``specificity`` and ``<metric>_ci`` (``[low, high]`` or None).
    """
    if threshold is None or "prob" not in test:
        return []
    frame = test.copy()
    if "age" in frame and frame["age"].notna().any():
        frame["age band"] = pd.cut(frame["age"], _AGE_BANDS[0], right=False, labels=_AGE_BANDS[1]).astype(str)
    # ranked on the logits when the frame has them (probabilities of confident cases saturate)
    raw_col = next(c for c in ("logit", "prob_raw", "prob") if c in frame)
    scale = "logit" if raw_col == "logit" else "probability"
    rows: list[dict[str, Any]] = []
    dropped: list[tuple[int, str]] = []
    for col in SUBGROUP_COLUMNS:
        if col not in frame or frame[col].astype(str).replace("", np.nan).dropna().nunique() < 2:
            continue
        for value, g in frame.groupby(frame[col].astype(str)):
            visit = unit_visits(g, unit)
            keys, yp, pp = aggregate_by_patient(g["patient_key"].astype(str), g["y"], g["prob"], how=how, visit=visit)
            _, _, pr = aggregate_by_patient(g["patient_key"].astype(str), g["y"], g[raw_col].astype(float), how=how,
                                            visit=visit, scale=scale)
            cut = binary_metrics(yp, pp, threshold=threshold)
            rank = ranking_metrics(yp, pr)
            row: dict[str, Any] = {"by": col, "value": value or "(missing)", "level": "patient",
                                   "images": int(len(g)), "patients": int(len(keys)), "positives": int(yp.sum()),
                                   "roc_auc": rank["roc_auc"], "sensitivity": cut["sensitivity"],
                                   "specificity": cut["specificity"]}
            for m in ("roc_auc", "sensitivity", "specificity"):
                row[f"{m}_ci"] = None
            if n_resamples and len(keys) >= 2:
                groups = unit_patients(keys)
                what = f"subgroup table row {col} = {value or '(missing)'}"
                ci_rank = bootstrap_ci(yp, pr, groups, metrics=("roc_auc",), threshold=None,
                                       n_resamples=n_resamples, seed=seed, context=what) \
                    if rank["roc_auc"] is not None else {}
                ci_cut = bootstrap_ci(yp, pp, groups, metrics=("sensitivity", "specificity"), threshold=threshold,
                                      n_resamples=n_resamples, seed=seed, context=what)
                for m, ci in {**ci_rank, **ci_cut}.items():
                    if row[m] is not None and _none(ci.low) is not None:
                        row[f"{m}_ci"] = [_none(ci.low), _none(ci.high)]
                    # resamples in which the metric is undefined (no positive / negative patient drawn):
                    # the interval is conditional on the others; a large share means a tiny subgroup
                    row[f"{m}_dropped"] = int(ci.n_dropped)
                    if ci.n_dropped:
                        dropped.append((int(ci.n_dropped), f"{col} = {row['value']} ({m})"))
            rows.append(row)
    if dropped:
        worst = max(dropped)
        log.info("subgroup table: in %d row(s) some of the %d bootstrap resamples drew no positive or no negative "
                 "patient and were left out of that row's interval (most: %d, row %s); the counts are in the "
                 "report's subgroup table", len({d[1].rsplit(' (', 1)[0] for d in dropped}), n_resamples, worst[0],
                 worst[1])
    return rows
