"""The cumulative-link (CORAL-style) ordinal head and loss, checked by hand computation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medxcept.evaluation.class_metrics import quadratic_kappa
from medxcept.evaluation.class_units import cumulative_probs
from medxcept.evaluation.multiclass import DecisionRule
from medxcept.models.ordinal import CumulativeLinkLoss, CumulativeLogits, is_ordinal_model

K = 4


def _tiny(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    score = keras.layers.Dense(1, use_bias=False, name="grade_score")(inputs)
    return keras.Model(inputs, CumulativeLogits(K, name="logits")(score))


def test_head_gives_ordered_cumulative_probabilities():
    model = _tiny()
    head = model.get_layer("logits")
    head.gaps.assign(np.array([-3.0, 2.0]))  # any gaps: the order holds by construction
    x = np.random.default_rng(0).normal(0, 3, (50, 3)).astype("float32")
    logp = model.predict(x, verbose=0)
    P = np.exp(logp)
    assert np.allclose(P.sum(axis=1), 1.0, atol=1e-5)
    S = cumulative_probs(P)
    assert (np.diff(S, axis=1) <= 1e-6).all()
    # by hand: P(grade >= g) = sigmoid(s + b_g), b = first - [0, cumsum(softplus(gaps))]
    s = x @ model.get_layer("grade_score").get_weights()[0]
    sp = np.log1p(np.exp([-3.0, 2.0]))
    b = float(head.first.numpy()[0]) - np.r_[0.0, np.cumsum(sp)]
    assert np.allclose(S[:, 1:], 1 / (1 + np.exp(-(s + b))), atol=1e-5)
    assert is_ordinal_model(model)


def test_loss_is_the_sum_of_cumulative_binary_cross_entropies():
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(K), 6)
    y = rng.integers(0, K, 6)
    onehot = np.eye(K)[y]
    S = cumulative_probs(P)[:, 1:]
    T = (y[:, None] >= np.arange(1, K)[None, :]).astype(float)
    want = -(T * np.log(S) + (1 - T) * np.log(1 - S)).sum(axis=1).mean()
    got = float(CumulativeLinkLoss()(onehot.astype("float32"), np.log(P).astype("float32")))
    assert got == pytest.approx(want, rel=1e-4)
    ls = 0.1
    Ts = T * (1 - ls) + ls / 2
    want_ls = -(Ts * np.log(S) + (1 - Ts) * np.log(1 - S)).sum(axis=1).mean()
    assert float(CumulativeLinkLoss(ls)(onehot.astype("float32"), np.log(P).astype("float32"))) == pytest.approx(
        want_ls, rel=1e-4)


def test_head_learns_grades_and_survives_saving(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (400, 3)).astype("float32")
    y = np.digitize(x[:, 0] + 0.5 * x[:, 1], [-1.0, 0.0, 1.0])  # 4 ordered grades
    model = _tiny(1)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=CumulativeLinkLoss())
    reps = np.tile(np.arange(400), 10)  # one long epoch: Keras' per-epoch overhead dominates here
    model.fit(x[reps], np.eye(K)[y[reps]].astype("float32"), epochs=1, batch_size=32, verbose=0)
    P = np.exp(model.predict(x, verbose=0))
    pred = DecisionRule("cumulative", (0.5,) * (K - 1)).predict(P)
    assert quadratic_kappa(y, pred, K) > 0.9
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.models.load_model(path, compile=False)
    assert np.allclose(again.predict(x[:10], verbose=0), model.predict(x[:10], verbose=0), atol=1e-6)


def test_build_model_rejects_an_unknown_head():
    from medxcept.errors import WeightsError
    from medxcept.models.network import build_model

    with pytest.raises(WeightsError, match="head='ordinal'"):
        build_model(image_px=71, n_classes=3, head="ordinal")
    with pytest.raises(ValueError, match="at least 3 grades"):
        CumulativeLogits(2)
