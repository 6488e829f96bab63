"""Learning curve: would more data help?

The same validation and test patients, the same recipe and seed; only the training set shrinks.
For each fraction ``f`` of the training **patients** (drawn stratified by patient label, so each
class keeps its share; at least two patients per class), a model is trained and measured:
validation patient-level AUC at its best epoch, and test patient-level AUC. The 100 % point is
the run itself. The training is done by :mod:`medxcept.workflows.learning_curve`; this module holds
the sampling and the verdict (the figure: :func:`medxcept.report.figures.learning_curve_figure`).

Reading it: if validation AUC still rises between the last two points by more than the noise of a
validation set this size, more patients would likely help; a flat end says the model is limited by
something else (the recipe, the image size, label noise). With a few dozen validation patients
the points are noisy: the report shows the bootstrap-free numbers and says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medxcept.errors import ConfigError

__all__ = ["parse_fractions", "subsample_patients", "learning_curve_verdict"]


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.25,0.5,0.75"`` → ``(0.25, 0.5, 0.75)``; each in (0, 1), 1.0 (the run itself) dropped."""
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(f"--learning-curve {text!r}: expected comma-separated fractions such as 0.25,0.5,0.75") from None
    bad = [v for v in values if not 0.0 < v <= 1.0]
    if bad or not values:
        raise ConfigError(f"--learning-curve {text!r}: fractions must lie in (0, 1], e.g. 0.25,0.5,0.75")
    return tuple(v for v in values if v < 1.0)


def subsample_patients(train: pd.DataFrame, fraction: float, *, seed: int) -> np.ndarray:
    """Boolean mask over ``train`` rows keeping ``fraction`` of its patients, stratified by patient label.

    A patient's label is its most severe image label (``max`` of ``y``), as for splitting. Each
    class keeps ``round(fraction * n)`` patients, at least 2 (or all it has). Nested: the
    patients kept at a smaller fraction are kept at every larger one (same seed).
    """
    patients = train.groupby("patient_key")["y"].max()
    rng = np.random.default_rng([seed, 4099])
    keep: list[str] = []
    for _, members in patients.groupby(patients):
        keys = members.index.to_numpy()
        order = keys[rng.permutation(len(keys))]
        n = min(len(keys), max(2, int(round(fraction * len(keys)))))
        keep.extend(order[:n].tolist())
    return train["patient_key"].isin(keep).to_numpy()


def learning_curve_verdict(rows: pd.DataFrame, n_val_patients: int) -> str:
    """Plain words on the last step of the curve, against the noise of the validation set."""
    if len(rows) < 2 or rows["val_patient_auc"].isna().any():
        return "not enough points for a verdict"
    a, b = rows.iloc[-2], rows.iloc[-1]
    step = float(b["val_patient_auc"] - a["val_patient_auc"])
    # rough standard error of an AUC near its value with n validation patients split in two classes
    auc = min(max(float(b["val_patient_auc"]), 0.5), 0.999)
    se = float(np.sqrt(auc * (1 - auc) / max(n_val_patients / 2, 1)))
    where = f"from {a['fraction']:.0%} to {b['fraction']:.0%} of the training patients"
    if float(b["val_patient_auc"]) >= 0.999 and float(a["val_patient_auc"]) >= 0.999:
        return (f"validation AUC is already 1.000 {where.replace('from', 'at both')}: this validation set cannot "
                "tell whether more data would help")
    if step > 2 * se:
        return f"validation AUC still rises {where} (+{step:.3f}, more than twice its noise of ±{se:.3f}): more patients would likely help"
    if step > 0:
        return f"validation AUC rises slightly {where} (+{step:.3f}, within its noise of ±{se:.3f}): more data may help, not shown here"
    return f"validation AUC does not rise {where} ({step:+.3f}; noise ±{se:.3f}): more of the same data is unlikely to help much"


