"""Tests for medxcept.evaluation.calibrate: hand-computed bins, scikit-learn as oracle, planted temperatures."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit, softmax
from sklearn.calibration import calibration_curve
from sklearn.exceptions import NotFittedError
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from medxcept.errors import ConfigError
from medxcept.evaluation import calibrate as cal

# --------------------------------------------------------------------------- fixtures


def _planted_binary(n: int, temperature: float, seed: int = 0):
    """Logits z and labels drawn from sigmoid(z / T): the right temperature is T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, n)
    y = (rng.random(n) < expit(z / temperature)).astype(int)
    return z, y


def _planted_multiclass(n: int, k: int, temperature: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, (n, k))
    P = softmax(z / temperature, axis=1)
    y = (P.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return z, np.minimum(y, k - 1)


def _overconfident(n: int, seed: int = 0):
    """True log-odds t; the model reports 3 t + 1 (overconfident and biased)."""
    rng = np.random.default_rng(seed)
    t = rng.normal(0.0, 1.2, n)
    y = (rng.random(n) < expit(t)).astype(int)
    return 3.0 * t + 1.0, y


# Hand example: 10 cases, 5 equal-width bins holding 2 cases each.
P10 = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95])
Y10 = np.array([0, 0, 1, 0, 0, 1, 1, 0, 1, 1])


# ----------------------------------------------------------------- binned measures


def test_ece_and_mce_equal_width_by_hand():
    # bin means 0.1, 0.3, 0.5, 0.7, 0.9; observed 0, 0.5, 0.5, 0.5, 1
    # gaps 0.1, 0.2, 0, 0.2, 0.1, each bin 2/10 of the cases
    assert cal.ece(Y10, P10, n_bins=5) == pytest.approx(0.2 * (0.1 + 0.2 + 0 + 0.2 + 0.1))
    assert cal.mce(Y10, P10, n_bins=5) == pytest.approx(0.2)
    table = cal.reliability_table(Y10, P10, n_bins=5)
    assert list(table.columns) == [
        "bin", "lower", "upper", "count", "mean_confidence", "observed_frequency", "gap",
    ]
    assert table["count"].tolist() == [2] * 5
    assert table["mean_confidence"].tolist() == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert table["observed_frequency"].tolist() == pytest.approx([0, 0.5, 0.5, 0.5, 1])
    assert table["lower"].tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])


def test_bins_are_right_closed_like_sklearn():
    # 0.2 sits on an edge and belongs to the lower bin (0, 0.2]
    table = cal.reliability_table([0, 1, 1], [0.2, 0.3, 1.0], n_bins=5)
    assert table["count"].tolist() == [1, 1, 0, 0, 1]


def test_equal_mass_bins_by_hand():
    p = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.90, 0.95])
    y = np.array([0, 0, 0, 1, 0, 0, 0, 1, 1, 1])
    table = cal.reliability_table(y, p, n_bins=5, strategy="quantile")
    assert table["count"].tolist() == [2] * 5
    # gaps 0.015, 0.465, 0.055, 0.425, 0.075, each of weight 0.2
    assert cal.ece(y, p, n_bins=5, strategy="quantile") == pytest.approx(0.207)
    # equal width puts 8 cases in the first bin: 0.8 * |0.25 - 0.045| + 0.2 * 0.075
    assert cal.ece(y, p, n_bins=5) == pytest.approx(0.179)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_table_matches_sklearn_calibration_curve(strategy):
    rng = np.random.default_rng(1)
    p = rng.random(500) ** 2
    y = (rng.random(500) < p).astype(int)
    table = cal.reliability_table(y, p, n_bins=10, strategy=strategy)
    filled = table[table["count"] > 0]
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy=strategy)
    assert filled["observed_frequency"].to_numpy() == pytest.approx(prob_true)
    assert filled["mean_confidence"].to_numpy() == pytest.approx(prob_pred)
    assert table["count"].sum() == 500


def test_multiclass_uses_top_label():
    P = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]])
    y = np.array([0, 2, 2, 1])
    # confidences 0.7, 0.6, 0.4, 0.9; correct 1, 0, 1, 0; 2 bins: (0, .5] and (.5, 1]
    # bin 0: 0.4 vs 1 -> 0.6; bin 1: mean 0.7333 vs 1/3 -> 0.4
    assert cal.ece(y, P, n_bins=2) == pytest.approx(0.25 * 0.6 + 0.75 * 0.4)
    assert cal.mce(y, P, n_bins=2) == pytest.approx(0.6)


# ------------------------------------------------------------------ scoring rules


def test_brier_and_nll_match_sklearn():
    rng = np.random.default_rng(2)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(int)
    assert cal.brier(y, p) == pytest.approx(brier_score_loss(y, p))
    assert cal.nll(y, p) == pytest.approx(log_loss(y, p))
    P = softmax(rng.normal(0, 2, (300, 4)), axis=1)
    yk = rng.integers(0, 4, 300)
    assert cal.brier(yk, P) == pytest.approx(brier_score_loss(yk, P, scale_by_half=False))
    assert cal.nll(yk, P) == pytest.approx(log_loss(yk, P))
    # a binary problem given as two columns: Brier doubles, NLL is the same
    P2 = np.stack([1 - p, p], axis=1)
    assert cal.brier(y, P2) == pytest.approx(2 * cal.brier(y, p))
    assert cal.nll(y, P2) == pytest.approx(cal.nll(y, p))


def test_nll_is_finite_on_confident_mistakes():
    assert np.isfinite(cal.nll([1, 0], [0.0, 1.0]))


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 1], [0.2, 1.5], r"\[0, 1\]"),
        ([0, 2], [0.2, 0.5], r"0\.\.1"),
        ([0, 1, 1], [0.2, 0.5], "one label per row"),
    ],
)
def test_measures_reject_bad_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        cal.ece(y, p)


# ------------------------------------------------------------------ temperature


def test_temperature_recovers_planted_binary_temperature():
    z, y = _planted_binary(20_000, 2.5)
    assert cal.fit_temperature(z, y) == pytest.approx(2.5, abs=0.15)


def test_temperature_recovers_planted_multiclass_temperature():
    z, y = _planted_multiclass(20_000, 4, 0.6)
    assert cal.fit_temperature(z, y) == pytest.approx(0.6, abs=0.05)


def test_separated_validation_leaves_temperature_at_one_and_says_why():
    z = np.array([-3.0, -2.0, 2.0, 3.0])  # perfectly separated: NLL keeps falling as T -> 0
    with pytest.warns(UserWarning, match="perfectly separated"):
        t = cal.fit_temperature(z, [0, 0, 1, 1])
    assert t == 1.0
    with pytest.warns(UserWarning):
        scaler = cal.make_calibrator("temperature").fit(z, np.array([0, 0, 1, 1]))
    state = scaler.to_dict()
    assert state["temperature"] == 1.0 and "not identifiable" in state["note"]
    np.testing.assert_allclose(scaler.predict_proba(z), 1 / (1 + np.exp(-z)))


def test_separated_multiclass_validation_leaves_temperature_at_one_like_binary():
    """Issue 17: the multiclass fit had no separation guard; with every true class on top, the NLL
    keeps falling as T -> 0 and the search ended at its bound (T = 0.01), saturating every test
    probability."""
    z = np.array([[3.0, 0.0, -1.0], [0.0, 2.0, 1.0], [-1.0, 0.5, 1.5], [2.0, 1.0, 0.0]])
    y = np.array([0, 1, 2, 0])
    assert cal._scaled_nll(np.log(0.05), z, y) < cal._scaled_nll(0.0, z, y)  # sharpening "helps": T -> 0
    with pytest.warns(UserWarning, match="strictly largest logit"):
        assert cal.fit_temperature(z, y) == 1.0
    with pytest.warns(UserWarning):
        scaler = cal.make_calibrator("temperature").fit(z, y)
    state = scaler.to_dict()
    assert state["temperature"] == state["applied_temperature"] == 1.0
    assert state["fitted_temperature"] is None and state["guard"] == "separated"
    np.testing.assert_allclose(scaler.predict_proba(z), softmax(z, axis=1))
    # one case whose true class is not on top: identifiable again, a finite T is fitted and applied
    y2 = np.array([0, 1, 2, 1])
    detail = cal.temperature_fit_detail(z, y2)
    assert detail["guard"] is None and detail["applied"] == detail["fitted"] and 0.01 < detail["applied"] < 100
    fitted = cal.make_calibrator("temperature").fit(z, y2)
    np.testing.assert_allclose(fitted.predict_proba(z), softmax(z / detail["applied"], axis=1))
    again = cal.Calibrator.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert again.to_dict()["applied_temperature"] == pytest.approx(detail["applied"])


def test_temperature_warns_at_search_bound():
    z = np.array([-0.001, 0.001, -0.001, 0.001])  # logits unrelated to the labels: no usable scale
    with pytest.warns(UserWarning, match="search bound"):
        t = cal.fit_temperature(z, [0, 0, 1, 1])
    assert t > 50
    with pytest.warns(UserWarning, match="search bound"):
        state = cal.make_calibrator("temperature").fit(z, np.array([0, 0, 1, 1])).to_dict()
    assert state["guard"] == "bound" and state["applied_temperature"] == state["fitted_temperature"] == t


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(-40, 40), min_size=4, max_size=60),
    st.lists(st.integers(0, 1), min_size=60, max_size=60),
    st.floats(0.25, 4.0),
)
def test_temperature_scaling_never_changes_auc(grid, labels, temperature):
    z = np.array(grid) / 8.0  # |z / T| <= 20: sigmoid keeps distinct values distinct
    y = np.array(labels[: z.size])
    if y.min() == y.max():
        y[0] = 1 - y[0]
    scaler = cal.TemperatureScaler.from_dict(
        {"name": "temperature", "n_classes": 2, "temperature": temperature, "binary_input": True}
    )
    assert roc_auc_score(y, scaler.predict_proba(z)) == pytest.approx(roc_auc_score(y, z), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uninformative draws put T at a search bound
        fitted = cal.TemperatureScaler().fit(z, y)
    if fitted.temperature_ >= 0.25:  # below, sigmoid saturates to 1.0 and creates ties
        assert roc_auc_score(y, fitted.predict_proba(z)) == pytest.approx(
            roc_auc_score(y, z), abs=1e-12
        )


def test_temperature_scaling_keeps_multiclass_argmax_and_lowers_nll():
    z, y = _planted_multiclass(4000, 3, 2.0, seed=4)
    scaler = cal.make_calibrator("temperature").fit(z[:2000], y[:2000])
    P = scaler.predict_proba(z[2000:])
    assert P.shape == (2000, 3) and P.sum(axis=1) == pytest.approx(np.ones(2000))
    assert (P.argmax(axis=1) == z[2000:].argmax(axis=1)).all()
    raw = softmax(z[2000:], axis=1)
    assert cal.nll(y[2000:], P) < cal.nll(y[2000:], raw) - 0.05


# ------------------------------------------------------------- Platt and isotonic


@pytest.mark.parametrize("name", ["platt", "isotonic", "temperature"])
def test_recalibration_reduces_ece_on_held_out_data(name):
    z, y = _overconfident(6000, seed=5)
    z_val, y_val, z_test, y_test = z[:3000], y[:3000], z[3000:], y[3000:]
    before = cal.ece(y_test, expit(z_test))
    calibrator = cal.make_calibrator(name).fit(z_val, y_val)
    after = cal.ece(y_test, calibrator.predict_proba(z_test))
    assert before > 0.1
    # temperature cannot fix the +1 bias, so it gains less
    assert after < (0.05 if name != "temperature" else 0.1)
    assert after < before / 2


def test_platt_matches_sklearn_sigmoid_calibration():
    from sklearn.calibration import _sigmoid_calibration  # private, but the reference

    z, y = _overconfident(2000, seed=6)
    platt = cal.PlattScaler().fit(z, y)
    a, b = _sigmoid_calibration(z, y)  # sklearn: p = 1 / (1 + exp(a z + b))
    assert platt.a_ == pytest.approx(-a, rel=1e-4)
    assert platt.b_ == pytest.approx(-b, abs=1e-4)


def test_platt_stays_finite_on_separable_data():
    platt = cal.PlattScaler().fit([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])
    assert np.isfinite(platt.a_) and platt.a_ > 0


def test_isotonic_matches_sklearn_predictions():
    z, y = _overconfident(1000, seed=7)
    iso = cal.IsotonicCalibrator().fit(z, y)
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(z, y)
    grid = np.linspace(z.min() - 1, z.max() + 1, 500)
    assert iso.predict_proba(grid) == pytest.approx(ref.predict(grid))


def test_binary_only_calibrators_refuse_multiclass_logits():
    z, y = _planted_multiclass(100, 3, 1.0)
    for name in ("platt", "isotonic"):
        with pytest.raises(ConfigError, match="use 'temperature' for multiclass"):
            cal.make_calibrator(name).fit(z, y)


# ----------------------------------------------------------------- serialization


@pytest.mark.parametrize("name", ["temperature", "platt", "isotonic", "none"])
def test_to_dict_from_dict_round_trip_through_json(name):
    z, y = _overconfident(500, seed=8)
    fitted = cal.make_calibrator(name).fit(z, y)
    state = json.loads(json.dumps(fitted.to_dict()))
    assert state["name"] == name
    restored = cal.Calibrator.from_dict(state)
    assert type(restored) is type(fitted)
    grid = np.linspace(-8, 8, 101)
    assert restored.predict_proba(grid) == pytest.approx(fitted.predict_proba(grid), abs=0)
    assert type(fitted).from_dict(state).to_dict() == state


def test_multiclass_temperature_round_trip_keeps_shape_check():
    z, y = _planted_multiclass(300, 3, 1.5)
    state = json.loads(json.dumps(cal.TemperatureScaler().fit(z, y).to_dict()))
    restored = cal.Calibrator.from_dict(state)
    assert restored.predict_proba(z).shape == (300, 3)
    with pytest.raises(ValueError, match="3-class"):
        restored.predict_proba(z[:, 0])


def test_calibrator_errors_are_plain():
    with pytest.raises(ConfigError, match="unknown calibration 'beta'"):
        cal.make_calibrator("beta")
    with pytest.raises(ConfigError, match="lacks key 'temperature'"):
        cal.Calibrator.from_dict({"name": "temperature", "n_classes": 2, "binary_input": True})
    with pytest.raises(ConfigError, match="not 'platt'"):
        cal.PlattScaler.from_dict({"name": "temperature", "n_classes": 2, "temperature": 1.0})
    with pytest.raises(NotFittedError):
        cal.PlattScaler().predict_proba([0.0, 1.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        cal.TemperatureScaler().fit([0.0, np.inf], [0, 1])


def test_to_logits_inverts_sigmoid_and_softmax():
    p = np.array([0.1, 0.5, 0.9])
    assert expit(cal.to_logits(p)) == pytest.approx(p)
    P = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert softmax(cal.to_logits(P), axis=1) == pytest.approx(P)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(cal.to_logits(np.array([0.0, 1.0]))).all()
