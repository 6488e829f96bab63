"""Learning curve: stratified, nested patient subsamples; the verdict against validation noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medxcept.errors import ConfigError
from medxcept.evaluation.learning_curve import learning_curve_verdict, parse_fractions, subsample_patients


def _train_table(n_pos: int, n_neg: int) -> pd.DataFrame:
    rows = []
    for i in range(n_pos + n_neg):
        for eye in ("L", "R"):
            rows.append({"patient_key": f"P{i:03d}", "y": int(i < n_pos and eye == "R"), "laterality": eye})
    return pd.DataFrame(rows)


def test_fractions_parse_and_refuse_nonsense():
    assert parse_fractions("0.5, 0.25,0.75,1") == (0.25, 0.5, 0.75)  # 1.0 is the run itself
    for bad in ("0", "1.5", "half", ""):
        with pytest.raises(ConfigError, match="learning-curve"):
            parse_fractions(bad)


def test_subsample_keeps_whole_patients_stratified_and_nested():
    t = _train_table(n_pos=12, n_neg=28)
    pat = t.groupby("patient_key")["y"].max()
    kept_before: set[str] = set()
    for f in (0.25, 0.5, 0.75):
        m = subsample_patients(t, f, seed=4)
        kept = set(t.loc[m, "patient_key"])
        # whole patients: both eyes of every kept patient
        assert t.loc[m].groupby("patient_key").size().eq(2).all()
        # each class keeps round(f * n) patients
        assert sum(pat[k] for k in kept) == round(f * 12)
        assert sum(1 - pat[k] for k in kept) == round(f * 28)
        assert kept_before <= kept, "a larger fraction keeps the patients of a smaller one"
        kept_before = kept
    assert not np.array_equal(subsample_patients(t, 0.5, seed=4), subsample_patients(t, 0.5, seed=5))
    # a tiny class keeps at least two patients
    small = _train_table(n_pos=3, n_neg=20)
    m = subsample_patients(small, 0.25, seed=0)
    assert small.loc[m].groupby("patient_key")["y"].max().sum() == 2


def test_verdict_compares_the_last_step_with_validation_noise():
    rows = pd.DataFrame({"fraction": [0.5, 1.0], "val_patient_auc": [0.70, 0.86]})
    assert "more patients would likely help" in learning_curve_verdict(rows, n_val_patients=40)
    rows = pd.DataFrame({"fraction": [0.5, 1.0], "val_patient_auc": [0.80, 0.82]})
    assert "within its noise" in learning_curve_verdict(rows, n_val_patients=40)
    rows = pd.DataFrame({"fraction": [0.5, 1.0], "val_patient_auc": [0.85, 0.80]})
    assert "unlikely to help" in learning_curve_verdict(rows, n_val_patients=40)
    rows = pd.DataFrame({"fraction": [0.5, 1.0], "val_patient_auc": [1.0, 1.0]})
    assert "cannot tell" in learning_curve_verdict(rows, n_val_patients=40)
