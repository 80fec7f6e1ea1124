"""Training levers: each flag does what it says, the RS loss equals its interval-arithmetic definition,
and the recorded indicators are those of the returned network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from structlab.relumip import (
    ReluNetwork,
    count_linear_regions,
    interval_bounds,
    relu_stability_loss,
    stable_fraction,
    train,
)

from ._relumip_reference import random_mlp


def _data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(n, 2))
    return X, np.sin(X[:, 0]) * X[:, 1] + 5.0


FAST = {"hidden": (12, 12), "epochs": 40, "batch_size": 50, "lp_indicators": False}


def test_rs_loss_equals_its_definition_with_interval_bounds() -> None:
    module = random_mlp((2, 6, 5, 1), seed=0)
    net = ReluNetwork.from_torch(module)
    x, eps = np.array([0.3, -0.4]), 0.2
    bounds = interval_bounds(net, x - eps, x + eps)
    expected = sum(-np.tanh(1 + lo * hi).sum() for lo, hi in zip(bounds.lower[:-1], bounds.upper[:-1],
                                                                      strict=True))
    got = relu_stability_loss(module, torch.tensor(x[None]), eps)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-9)


def test_trained_network_carries_its_scaling_and_matches_the_module() -> None:
    X, y = _data()
    result = train(X, y, **FAST)
    x_std = (X - X.mean(0)) / X.std(0)
    with torch.no_grad():
        raw = result.module(torch.tensor(x_std, dtype=torch.float32)).numpy()[:, 0]
    np.testing.assert_allclose(result.net(X)[:, 0], raw * y.std() + y.mean(), rtol=1e-5, atol=1e-5)
    assert result.train_error < np.var(y)  # it learned something
    assert result.history[-1] < result.history[0]


def test_indicators_are_those_of_the_returned_network() -> None:
    X, y = _data()
    result = train(X, y, **FAST, lower=[-2, -2], upper=[2, 2])
    box = (np.array([-2.0, -2.0]), np.array([2.0, 2.0]))
    assert result.indicators["regions"] == count_linear_regions(result.net, *box)
    assert result.indicators["regions_method"] == "exact"
    assert result.indicators["stable_fraction_interval"] == stable_fraction(
        result.net, interval_bounds(result.net, *box))


def test_l1_and_rs_flags_shrink_weights_and_raise_stability() -> None:
    X, y = _data()
    base = train(X, y, **FAST)
    l1 = train(X, y, **FAST, l1=1e-2)
    rs = train(X, y, **FAST, rs=0.5, rs_epsilon=0.3)
    def weight_sum(r):
        return sum(np.abs(layer.weight).sum() for layer in r.net.layers)
    assert weight_sum(l1) < weight_sum(base)
    assert rs.indicators["stable_fraction_interval"] > base.indicators["stable_fraction_interval"]


def test_clip_and_dropout_flags_change_the_architecture() -> None:
    X, y = _data()
    result = train(X, y, **FAST, clip=1.0, dropout=0.2)
    assert {layer.activation for layer in result.net.hidden} == {"clipped_relu"}
    assert any(isinstance(m, torch.nn.Dropout) for m in result.module)
    assert not result.module.training


def test_classification_reports_an_error_rate() -> None:
    X, _ = _data()
    labels = (X[:, 0] * X[:, 1] > 0).astype(int)
    result = train(X, labels, task="classification", **FAST, indicators=False)
    assert result.net.output_dim == 2
    assert 0.0 <= result.train_error < 0.3


def test_unknown_flag_and_bad_values_are_rejected() -> None:
    X, y = _data(20)
    with pytest.raises(TypeError, match="l2"):
        train(X, y, l2=1.0)
    with pytest.raises(ValueError, match="dropout"):
        train(X, y, dropout=1.5)
    with pytest.raises(ValueError, match="y: 3 rows"):
        train(X, y[:3])
