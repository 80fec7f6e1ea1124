"""Rescaling changes neither the network's function nor its optimum, and it sets the big-M values."""

from __future__ import annotations

import numpy as np
import pytest

from structlab.relumip import Formulation, ReluNetwork, interval_bounds, lp_bounds, optimize, rescale

from ._relumip_reference import box_samples, random_mlp

LOWER, UPPER = np.array([-2.0, -1.0]), np.array([2.0, 3.0])


@pytest.mark.parametrize("clip", [None, 0.7])
@pytest.mark.parametrize("with_bounds", [False, True])
def test_rescaling_preserves_outputs_and_the_optimum(clip: float | None, with_bounds: bool) -> None:
    module = random_mlp((2, 12, 12, 2), seed=0, clip=clip)
    for i, m in enumerate(module):  # uneven weight sizes, as after training
        if hasattr(m, "weight"):
            m.weight.data *= 3.0 ** (i % 3 - 1)
    net = ReluNetwork.from_torch(module, input_offset=[0.5, 1.0], input_scale=[2.0, 1.5])
    scaled = rescale(net, lp_bounds(net, LOWER, UPPER) if with_bounds else None)
    x = box_samples(LOWER, UPPER, 20_000, seed=1)
    np.testing.assert_allclose(scaled(x), net(x), rtol=1e-10, atol=1e-10)
    c = np.array([1.0, -2.0])
    assert optimize(scaled, LOWER, UPPER, c).objective == pytest.approx(
        optimize(net, LOWER, UPPER, c).objective, abs=1e-6)


def test_rescaling_with_bounds_makes_every_hidden_big_m_at_most_one() -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 10, 10, 1), seed=2))
    bounds = interval_bounds(net, LOWER, UPPER)
    scaled = rescale(net, bounds)
    form = Formulation(scaled, LOWER, UPPER, bounds="interval")
    big_m = np.concatenate(form.big_m)
    assert big_m.max() <= 1.0 + 1e-9
    # interval bounds are equivariant under positive scaling: the same neurons stay (un)stable
    assert form.num_binaries == Formulation(net, LOWER, UPPER, bounds=bounds).num_binaries


def test_rescaling_without_bounds_normalises_incoming_weights() -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 8, 8, 1), seed=3))
    for layer in rescale(net).hidden:
        size = np.maximum(np.abs(layer.weight).max(axis=1), np.abs(layer.bias))
        np.testing.assert_allclose(size, 1.0)


def test_rescale_rejects_bounds_of_another_network() -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 8, 1), seed=4))
    other = ReluNetwork.from_torch(random_mlp((2, 5, 1), seed=4))
    with pytest.raises(ValueError, match="bounds"):
        rescale(net, interval_bounds(other, LOWER, UPPER))
