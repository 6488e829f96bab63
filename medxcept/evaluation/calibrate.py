"""Calibration: how far predicted probabilities are from observed frequencies, and fixes.

Measures (pure functions): :func:`ece`, :func:`mce`, :func:`brier`, :func:`nll` and
:func:`reliability_table`. Binary inputs give ``y_prob`` of shape (n,), the
probability of the positive class; multiclass inputs give (n, k) and the binned
measures use the *top label* (confidence = largest probability, observed = whether
the argmax was right).

Recalibration maps a model's logits to better probabilities. It is **fitted on the
validation split only** and then applied, frozen, to the test split:

* :class:`TemperatureScaler` divides logits by one temperature ``T``
  (:func:`fit_temperature`); binary or multiclass. It never changes the ranking,
  so AUC and the argmax are unchanged.
* :class:`PlattScaler`: logistic regression on the logit (binary).
* :class:`IsotonicCalibrator`: monotone step function (binary; needs more data).

Every calibrator has ``fit(logits, y)``, ``predict_proba(logits)``, ``to_dict()`` and
``Calibrator.from_dict(d)``, so its fitted state is stored as JSON beside the
model; :func:`make_calibrator` builds one from its config name.

Binary logits are ``log(p / (1 - p))``; multiclass logits are the pre-softmax
scores (``log p`` serves, up to a constant). :func:`to_logits` converts.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import optimize, special
from sklearn.exceptions import NotFittedError
from sklearn.isotonic import IsotonicRegression

from medxcept.errors import ConfigError

__all__ = [
    "CALIBRATORS",
    "ece",
    "mce",
    "brier",
    "nll",
    "reliability_table",
    "calibration_summary",
    "to_logits",
    "fit_temperature",
    "temperature_fit_detail",
    "Calibrator",
    "IdentityCalibrator",
    "TemperatureScaler",
    "PlattScaler",
    "IsotonicCalibrator",
    "make_calibrator",
]

Strategy = Literal["uniform", "quantile"]
_C = TypeVar("_C", bound="Calibrator")

# Temperatures outside this range mean the logits carry no usable scale.
_LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))


# --------------------------------------------------------------------------- inputs


def _check_probs(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 and probabilities as float64, (n,) binary or (n, k) multiclass."""
    p = np.asarray(y_prob, dtype=np.float64)
    y_raw = np.asarray(y_true)
    if p.ndim not in (1, 2) or (p.ndim == 2 and p.shape[1] < 2):
        raise ValueError(f"y_prob must have shape (n,) or (n, k) with k >= 2; got {p.shape}")
    if y_raw.ndim != 1 or y_raw.shape[0] != p.shape[0]:
        raise ValueError(
            f"y_true must be one label per row of y_prob ({p.shape[0]}); got shape {y_raw.shape}"
        )
    if p.shape[0] == 0:
        raise ValueError("y_true is empty: there is nothing to measure")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("y_prob must be finite probabilities in [0, 1]")
    return _check_labels(y_raw, None if p.ndim == 1 else p.shape[1]), p


def _check_labels(y_raw: np.ndarray, n_classes: int | None) -> np.ndarray:
    if y_raw.dtype == bool:
        y_raw = y_raw.astype(np.int64)
    if not np.issubdtype(y_raw.dtype, np.number):
        raise ValueError(f"y_true must hold class indices; got dtype {y_raw.dtype}")
    y = y_raw.astype(np.int64)
    top = 1 if n_classes is None else n_classes - 1
    if not np.array_equal(y, y_raw) or y.min() < 0 or y.max() > top:
        raise ValueError(f"y_true must hold class indices 0..{top}; found {np.unique(y_raw)[:5]}")
    return y


def _check_logits(logits: ArrayLike, y_true: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim not in (1, 2) or (z.ndim == 2 and z.shape[1] < 2):
        raise ValueError(f"logits must have shape (n,) or (n, k) with k >= 2; got {z.shape}")
    if z.shape[0] == 0:
        raise ValueError("logits is empty")
    if not np.isfinite(z).all():
        raise ValueError(f"logits holds {int((~np.isfinite(z)).sum())} NaN or infinite values")
    if y_true is None:
        return z, None
    y_raw = np.asarray(y_true)
    if y_raw.ndim != 1 or y_raw.shape[0] != z.shape[0]:
        raise ValueError(
            f"y_true must be one label per row of logits ({z.shape[0]}); got shape {y_raw.shape}"
        )
    return z, _check_labels(y_raw, None if z.ndim == 1 else z.shape[1])


def _confidence_and_outcome(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary: (P(positive), label). Multiclass: (top probability, argmax correct)."""
    if p.ndim == 1:
        return p, y.astype(np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


# ------------------------------------------------------------------------- measures


def _bin_edges(conf: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be at least 1; got {n_bins}")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        edges = np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
        return edges
    raise ValueError(f"strategy must be 'uniform' or 'quantile'; got {strategy!r}")


def reliability_table(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    n_bins: int = 15,
    strategy: Strategy = "uniform",
) -> pd.DataFrame:
    """Per-bin confidence against observed frequency (the reliability diagram's data).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 labels (binary) or class indices (multiclass).
    y_prob : array-like of shape (n,) or (n, k)
        P(positive), or class probabilities (top-label binning).
    n_bins : int, default 15
    strategy : {"uniform", "quantile"}, default "uniform"
        ``"uniform"``: equal-width bins on [0, 1]. ``"quantile"``: equal-mass bins
        (edges at quantiles of the confidences; ties can leave a bin empty).
        Bins are right-closed, ``(lower, upper]``, the first one also holds 0,
        as in :func:`sklearn.calibration.calibration_curve`.

    Returns
    -------
    pandas.DataFrame
        One row per bin: ``bin``, ``lower``, ``upper``, ``count``,
        ``mean_confidence``, ``observed_frequency`` (NaN for empty bins) and
        ``gap`` = observed_frequency - mean_confidence (negative: overconfident).
    """
    y, p = _check_probs(y_true, y_prob)
    conf, outcome = _confidence_and_outcome(y, p)
    edges = _bin_edges(conf, n_bins, strategy)
    which = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(which, minlength=n_bins)
    sum_conf = np.bincount(which, weights=conf, minlength=n_bins)
    sum_out = np.bincount(which, weights=outcome, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, sum_conf / count, np.nan)
        observed = np.where(count > 0, sum_out / count, np.nan)
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count.astype(np.int64),
            "mean_confidence": mean_conf,
            "observed_frequency": observed,
            "gap": observed - mean_conf,
        }
    )


def ece(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    n_bins: int = 15,
    strategy: Strategy = "uniform",
) -> float:
    """Expected calibration error: the count-weighted mean of ``|gap|`` over bins.

    Parameters are those of :func:`reliability_table`. Binary inputs compare
    P(positive) with the share of positives; multiclass inputs give top-label ECE.

    Examples
    --------
    >>> round(ece([0, 1, 1, 1], [0.2, 0.6, 0.8, 0.9], n_bins=2), 4)
    0.225
    """
    table = reliability_table(y_true, y_prob, n_bins=n_bins, strategy=strategy)
    filled = table[table["count"] > 0]
    return float((filled["count"] * filled["gap"].abs()).sum() / filled["count"].sum())


def mce(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    n_bins: int = 15,
    strategy: Strategy = "uniform",
) -> float:
    """Maximum calibration error: the largest ``|gap|`` over non-empty bins."""
    table = reliability_table(y_true, y_prob, n_bins=n_bins, strategy=strategy)
    return float(table.loc[table["count"] > 0, "gap"].abs().max())


def brier(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Brier score (lower is better).

    Binary (n,): ``mean((p - y)^2)``, in [0, 1]. Multiclass (n, k): Brier's
    original ``mean(sum_k (P_k - onehot_k)^2)``, in [0, 2] (twice the binary
    value if a binary problem is given as two columns).
    """
    y, p = _check_probs(y_true, y_prob)
    if p.ndim == 1:
        return float(np.mean((p - y) ** 2))
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def nll(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean negative log-likelihood (log loss), probabilities clipped to [eps, 1 - eps]."""
    y, p = _check_probs(y_true, y_prob)
    eps = np.finfo(np.float64).eps
    if p.ndim == 1:
        q = np.clip(np.where(y == 1, p, 1.0 - p), eps, 1.0)
    else:
        q = np.clip(p[np.arange(p.shape[0]), y], eps, 1.0)
    return float(-np.mean(np.log(q)))


def calibration_summary(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int) -> dict[str, Any]:
    """ECE (equal-width and equal-mass bins), MCE, Brier, NLL and the reliability table of ``y_prob``.

    The block ``metrics.json`` stores as ``calibration_test.before`` / ``.after`` for binary tasks and
    for each derived endpoint of a graded task.
    """
    return {
        "ece": ece(y_true, y_prob, n_bins=n_bins, strategy="uniform"),
        "ece_equal_mass": ece(y_true, y_prob, n_bins=n_bins, strategy="quantile"),
        "mce": mce(y_true, y_prob, n_bins=n_bins, strategy="uniform"),
        "brier": brier(y_true, y_prob),
        "nll": nll(y_true, y_prob),
        "n_bins": n_bins,
        "reliability": reliability_table(y_true, y_prob, n_bins=n_bins, strategy="uniform").to_dict("records"),
    }


def to_logits(y_prob: ArrayLike, *, eps: float = 1e-7) -> np.ndarray:
    """Probabilities to logits: ``log(p / (1 - p))`` for (n,), ``log p`` for (n, k).

    Probabilities are clipped to [eps, 1 - eps] first, so 0 and 1 stay finite.
    """
    p = np.clip(np.asarray(y_prob, dtype=np.float64), eps, 1.0 - eps)
    if p.ndim == 1:
        return np.asarray(special.logit(p))
    return np.log(p)


# ------------------------------------------------------------------- recalibration


def _scaled_nll(log_t: float, z: np.ndarray, y: np.ndarray) -> float:
    s = z / math.exp(log_t)
    if z.ndim == 1:
        # -log sigmoid(+-s), computed without overflow
        return float(np.mean(np.logaddexp(0.0, np.where(y == 1, -s, s))))
    return float(np.mean(special.logsumexp(s, axis=1) - s[np.arange(s.shape[0]), y]))


SEPARATED_NOTE = ("the validation logits are perfectly separated: temperature scaling is not identifiable "
                  "(the likelihood keeps improving as T -> 0), so T is left at 1 (no recalibration); "
                  "calibration 'after' equals 'before'")
SEPARATED_NOTE_MULTICLASS = ("every validation case's true class has the strictly largest logit: "
                             "temperature scaling is not identifiable (the likelihood keeps improving as "
                             "T -> 0), so T is left at 1 (no recalibration); calibration 'after' equals "
                             "'before'")


def _separated(z: np.ndarray, y: np.ndarray) -> bool:
    """True when the NLL of ``z / T`` keeps falling as ``T -> 0`` (its infimum 0 is not attained).

    Binary: every positive's logit above every negative's. Multiclass: in every row the true class
    has the strictly largest logit (then each row's softmax tends to its one-hot label).
    """
    if z.ndim == 1:
        return bool(0 < y.sum() < y.shape[0] and z[y == 0].max() < z[y == 1].min())
    true = z[np.arange(z.shape[0]), y]
    others = np.where(np.arange(z.shape[1])[None, :] == y[:, None], -np.inf, z)
    return bool(z.shape[0] > 0 and (true > others.max(axis=1)).all())


def temperature_fit_detail(logits: ArrayLike, y_true: ArrayLike) -> dict[str, Any]:
    """:func:`fit_temperature` with what happened: the temperature applied and why.

    Returns
    -------
    dict
        ``applied`` (the temperature the calibrator uses), ``fitted`` (the minimiser found, None
        when the fit was skipped), ``guard`` (None, ``"separated"``: not identifiable, T left at 1;
        or ``"bound"``: the minimiser sits at a search bound, applied but meaningless) and ``note``
        (plain words, None when nothing happened).
    """
    z, y = _check_logits(logits, y_true)
    assert y is not None
    if _separated(z, y):
        # NLL keeps falling as T -> 0: any fitted "sharpening" is an artefact of the separation
        # and would make test probabilities saturate (0 or 1) wherever the model is less perfect
        return {"applied": 1.0, "fitted": None, "guard": "separated",
                "note": SEPARATED_NOTE if z.ndim == 1 else SEPARATED_NOTE_MULTICLASS}
    res = optimize.minimize_scalar(
        _scaled_nll,
        bounds=_LOG_T_BOUNDS,
        args=(z, y),
        method="bounded",
        options={"xatol": 1e-7},
    )
    log_t = float(res.x)
    t = math.exp(log_t)
    if min(abs(log_t - b) for b in _LOG_T_BOUNDS) < 1e-3:
        return {"applied": t, "fitted": t, "guard": "bound",
                "note": f"temperature hit its search bound (T = {t:.3g}): the validation "
                        "logits are perfectly separated, constant or unrelated to the labels, so the "
                        "fitted scale means little"}
    return {"applied": t, "fitted": t, "guard": None, "note": None}


def fit_temperature(logits: ArrayLike, y_true: ArrayLike) -> float:
    """Temperature ``T`` that minimises the NLL of ``sigmoid(z / T)`` or ``softmax(z / T)``.

    Fit on the validation split only. The search is over ``log T`` (bounded
    scalar minimisation, T in [0.01, 100]); a result at a bound warns, because it
    means the logits carry no usable scale (constant, or unrelated to the labels).
    Perfectly separated logits return ``T = 1`` with a warning (:data:`SEPARATED_NOTE`;
    multiclass: every case's true class has the largest logit,
    :data:`SEPARATED_NOTE_MULTICLASS`): the optimum is at ``T -> 0``, which would
    saturate every test probability. :func:`temperature_fit_detail` says which happened.

    Parameters
    ----------
    logits : array-like of shape (n,) or (n, k)
        Binary logits, or multiclass pre-softmax scores.
    y_true : array-like of shape (n,)
        0/1 labels, or class indices ``0..k-1``.

    Returns
    -------
    float
        ``T > 1`` softens an overconfident model; ``T < 1`` sharpens.
    """
    detail = temperature_fit_detail(logits, y_true)
    if detail["note"]:
        warnings.warn(detail["note"], stacklevel=2)
    return float(detail["applied"])


def _probs(z: np.ndarray) -> np.ndarray:
    return np.asarray(special.expit(z)) if z.ndim == 1 else np.asarray(special.softmax(z, axis=1))


class Calibrator:
    """Common interface: ``fit(logits, y)``, ``predict_proba(logits)``, JSON state.

    Subclasses set ``name`` (the config and JSON name) and ``binary_only``.
    ``Calibrator.from_dict(d)`` rebuilds whichever calibrator ``d["name"]`` names.
    """

    name: ClassVar[str] = ""
    binary_only: ClassVar[bool] = False

    def fit(self: _C, logits: ArrayLike, y: ArrayLike) -> _C:
        """Fit on validation logits and labels; returns ``self``."""
        z, labels = _check_logits(logits, y)
        assert labels is not None
        self._check_shape(z)
        self._fit(z, labels)
        self.n_classes_: int = 2 if z.ndim == 1 else int(z.shape[1])
        return self

    def predict_proba(self, logits: ArrayLike) -> np.ndarray:
        """Calibrated probabilities: (n,) P(positive) for binary, (n, k) otherwise."""
        self._check_fitted()
        z, _ = _check_logits(logits)
        self._check_shape(z)
        k = 2 if z.ndim == 1 else z.shape[1]
        if k != self.n_classes_ or (z.ndim == 1) != (self.binary_input_):
            raise ValueError(
                f"{self.name} calibrator was fitted on {self.n_classes_}-class logits "
                f"({'(n,)' if self.binary_input_ else '(n, k)'}); got shape {z.shape}"
            )
        return self._predict(z)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fitted state, including ``name``."""
        self._check_fitted()
        return {"name": self.name, "n_classes": self.n_classes_, **self._state()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict` output."""
        name = d.get("name")
        if name not in CALIBRATORS:
            raise ConfigError(
                f"unknown calibrator {name!r} in stored state; expected one of {sorted(CALIBRATORS)}"
            )
        target = CALIBRATORS[name]
        if cls is not Calibrator and target is not cls:
            raise ConfigError(f"stored calibrator is {name!r}, not {cls.name!r}")
        obj = target()
        try:
            obj.n_classes_ = int(d["n_classes"])
            obj._load(d)
        except KeyError as err:
            raise ConfigError(f"stored {name!r} calibrator state lacks key {err}") from None
        return obj

    # --- for subclasses
    @property
    def binary_input_(self) -> bool:
        return bool(getattr(self, "_binary_input", True))

    def _check_shape(self, z: np.ndarray) -> None:
        if self.binary_only and z.ndim != 1:
            raise ConfigError(
                f"calibration {self.name!r} is for binary models (logits of shape (n,)); "
                f"got shape {z.shape}: use 'temperature' for multiclass models"
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_classes_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit() first")

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, d: dict[str, Any]) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = self._state() if hasattr(self, "n_classes_") else {}
        inner = ", ".join(f"{k}={v!r}" for k, v in state.items() if not isinstance(v, list))
        return f"{type(self).__name__}({inner})"


class IdentityCalibrator(Calibrator):
    """No recalibration: ``sigmoid`` / ``softmax`` of the logits (config ``"none"``)."""

    name = "none"

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        self._binary_input = z.ndim == 1

    def _predict(self, z: np.ndarray) -> np.ndarray:
        return _probs(z)

    def _state(self) -> dict[str, Any]:
        return {"binary_input": self.binary_input_}

    def _load(self, d: dict[str, Any]) -> None:
        self._binary_input = bool(d["binary_input"])


class TemperatureScaler(Calibrator):
    """Divide logits by one fitted temperature (Guo et al. 2017); binary or multiclass.

    Keeps the ranking of cases (AUC) and the argmax (accuracy) unchanged.
    Fitted state: ``temperature_`` (the temperature applied), ``fitted_temperature_`` (what the
    search found; None when the logits are separated and T is left at 1) and ``guard_`` (None,
    "separated" or "bound", :func:`temperature_fit_detail`), all in :meth:`to_dict`.
    """

    name = "temperature"

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        detail = temperature_fit_detail(z, y)
        self.temperature_ = float(detail["applied"])
        self.fitted_temperature_ = detail["fitted"]
        self.guard_ = detail["guard"]
        self.note_ = detail["note"]
        if self.note_:
            warnings.warn(self.note_, stacklevel=3)
        self._binary_input = z.ndim == 1

    def _predict(self, z: np.ndarray) -> np.ndarray:
        return _probs(z / self.temperature_)

    def _state(self) -> dict[str, Any]:
        # "temperature" is the one applied; "fitted_temperature" what the search found (None: skipped)
        return {"temperature": float(self.temperature_), "binary_input": self.binary_input_,
                "note": getattr(self, "note_", None), "applied_temperature": float(self.temperature_),
                "fitted_temperature": getattr(self, "fitted_temperature_", self.temperature_),
                "guard": getattr(self, "guard_", None)}

    def _load(self, d: dict[str, Any]) -> None:
        self.temperature_ = float(d["temperature"])
        self._binary_input = bool(d["binary_input"])
        self.note_ = d.get("note")
        self.fitted_temperature_ = d.get("fitted_temperature", self.temperature_)
        self.guard_ = d.get("guard")


class PlattScaler(Calibrator):
    """``sigmoid(a * z + b)`` fitted by maximum likelihood (Platt 1999); binary only.

    Uses Platt's smoothed targets ``(n_pos + 1) / (n_pos + 2)`` and
    ``1 / (n_neg + 2)`` instead of 1 and 0, as scikit-learn's sigmoid calibration
    does: on small or separable validation sets the plain fit diverges.
    Fitted state: ``a_``, ``b_``.
    """

    name = "platt"
    binary_only = True

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        n_pos = float(y.sum())
        n_neg = float(y.shape[0] - n_pos)
        t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            s = theta[0] * z + theta[1]
            # cross-entropy with soft targets t, in a form that cannot overflow
            value = np.sum(np.logaddexp(0.0, s) - t * s)
            g = special.expit(s) - t
            return float(value), np.array([np.dot(g, z), g.sum()])

        res = optimize.minimize(loss, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        self.a_, self.b_ = float(res.x[0]), float(res.x[1])

    def _predict(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(special.expit(self.a_ * z + self.b_))

    def _state(self) -> dict[str, Any]:
        return {"a": self.a_, "b": self.b_}

    def _load(self, d: dict[str, Any]) -> None:
        self.a_, self.b_ = float(d["a"]), float(d["b"])


class IsotonicCalibrator(Calibrator):
    """Monotone non-decreasing step map from logit to probability; binary only.

    Fitted with :class:`sklearn.isotonic.IsotonicRegression` (clipped outside the
    fitted range); predictions interpolate linearly between the stored
    thresholds, exactly as scikit-learn does. Needs a few hundred validation
    cases to beat Platt scaling. Fitted state: ``x_thresholds_``, ``y_thresholds_``.
    """

    name = "isotonic"
    binary_only = True

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(z, y.astype(np.float64))
        self.x_thresholds_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(iso.y_thresholds_, dtype=np.float64)

    def _predict(self, z: np.ndarray) -> np.ndarray:
        return np.interp(z, self.x_thresholds_, self.y_thresholds_)

    def _state(self) -> dict[str, Any]:
        return {"x_thresholds": self.x_thresholds_.tolist(), "y_thresholds": self.y_thresholds_.tolist()}

    def _load(self, d: dict[str, Any]) -> None:
        x = np.asarray(d["x_thresholds"], dtype=np.float64)
        y = np.asarray(d["y_thresholds"], dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or x.size == 0:
            raise ConfigError("stored isotonic state has thresholds of unequal or zero length")
        self.x_thresholds_, self.y_thresholds_ = x, y


#: Config name -> calibrator class.
CALIBRATORS: dict[str, type[Calibrator]] = {
    cls.name: cls for cls in (IdentityCalibrator, TemperatureScaler, PlattScaler, IsotonicCalibrator)
}


def make_calibrator(name: str) -> Calibrator:
    """An unfitted calibrator from its config name.

    Parameters
    ----------
    name : {"temperature", "platt", "isotonic", "none"}

    Raises
    ------
    ConfigError
        For any other name.
    """
    if name not in CALIBRATORS:
        raise ConfigError(f"unknown calibration {name!r}; choose one of {sorted(CALIBRATORS)}")
    return CALIBRATORS[name]()
