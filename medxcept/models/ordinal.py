"""An ordinal (cumulative-link, CORAL-style) head and loss for graded tasks, in Keras 3 ops only.

Why. Softmax cross-entropy treats grade 4 called 0 as no worse than grade 1 called 0, and its
class probabilities need not be unimodal. The cumulative formulation (Frank & Hall 2001; CORAL,
Cao, Mirjalili & Raschka 2020) predicts the k - 1 binary questions "is the grade >= g?" from one
score ``s(x)`` and ordered biases: ``P(grade >= g) = sigmoid(s(x) + b_g)`` with ``b_1 > b_2 > ...``.
Here the order is guaranteed by construction (``b_g = b_1 - sum of softplus gaps``), so the
cumulative probabilities always decrease with g (CORAL's rank consistency) and the class
probabilities ``P(grade = g) = P(>= g) - P(>= g + 1)`` are never negative.

The head (:class:`CumulativeLogits`) outputs **class log-probabilities** (k columns): softmax of
them is the grade distribution, so prediction, calibration (temperature scaling then acts as
power scaling of the distribution), patient aggregation and every metric treat both heads alike.
:class:`CumulativeLinkLoss` is the CORAL loss, the sum over g of the binary cross-entropy of
``P(grade >= g)`` against ``grade >= g``, computed stably from those log-probabilities
(``log P(>= g)`` is a log-sum-exp of the upper classes). Choose it with ``train.ordinal_loss: coral``
(ordinal cohorts only); ``softmax`` (the default) keeps the plain head, for comparison.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["ORDINAL_LOSSES", "CumulativeLogits", "CumulativeLinkLoss", "is_ordinal_model"]

#: ``train.ordinal_loss`` values.
ORDINAL_LOSSES = ("softmax", "coral")

_EPS = 1e-7


@keras.saving.register_keras_serializable(package="medxcept")
class CumulativeLogits(keras.layers.Layer):
    """One score per image -> k class log-probabilities through k - 1 ordered cumulative logits.

    Args:
        n_classes: number of grades k (>= 3).
    """

    def __init__(self, n_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(n_classes) < 3:
            raise ValueError(f"n_classes={n_classes}: an ordinal head needs at least 3 grades")
        self.n_classes = int(n_classes)

    def build(self, input_shape: Any) -> None:
        k = self.n_classes
        self.first = self.add_weight(shape=(1,), initializer=keras.initializers.Constant(1.0), name="first_bias")
        # softplus(0.55) ~ 1: grade thresholds start one logit apart
        self.gaps = self.add_weight(shape=(k - 2,), initializer=keras.initializers.Constant(0.55), name="gaps")

    def cumulative_logits(self, score: Any) -> Any:
        """(batch, k - 1) logits of P(grade >= g), g = 1..k-1."""
        steps = ops.concatenate([ops.zeros((1,), dtype=self.gaps.dtype), ops.cumsum(ops.softplus(self.gaps))])
        return score + (self.first - steps)[None, :]

    def call(self, score: Any) -> Any:
        s = ops.sigmoid(self.cumulative_logits(score))
        n = ops.shape(s)[0]
        full = ops.concatenate([ops.ones((n, 1), dtype=s.dtype), s, ops.zeros((n, 1), dtype=s.dtype)], axis=1)
        return ops.log(ops.maximum(full[:, :-1] - full[:, 1:], _EPS))

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0], self.n_classes)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_classes": self.n_classes}


@keras.saving.register_keras_serializable(package="medxcept")
class CumulativeLinkLoss(keras.losses.Loss):
    """CORAL loss on class log-probabilities: sum over g of BCE(P(grade >= g), grade >= g).

    Args:
        label_smoothing: each cumulative target t becomes ``t (1 - ls) + ls / 2``.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "cumulative_link", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(y_true, y_pred.dtype)
        k = y_pred.shape[-1]
        total = 0.0
        for g in range(1, k):
            target = ops.sum(y_true[:, g:], axis=-1)  # one-hot -> 1[grade >= g]
            target = target * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            log_upper = ops.logsumexp(y_pred[:, g:], axis=-1)  # log P(grade >= g)
            log_lower = ops.logsumexp(y_pred[:, :g], axis=-1)  # log P(grade < g)
            total = total - (target * log_upper + (1.0 - target) * log_lower)
        return total

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def is_ordinal_model(model: keras.Model) -> bool:
    """Whether ``model`` ends in a :class:`CumulativeLogits` head."""
    return any(isinstance(layer, CumulativeLogits) for layer in model.layers)
