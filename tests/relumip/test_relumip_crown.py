"""Back-substitution (CROWN) bounds: sound against exact optima found by enumerating activation patterns
and against 100k samples, never looser than interval arithmetic, and a valid start for LP tightening."""

from __future__ import annotations

import time

import numpy as np
import pytest

from structlab.relumip import ReluNetwork, interval_bounds, lp_bounds
from structlab.relumip.crown import crown_bounds, linear_bound

from ._relumip_reference import box_samples, optimum_by_enumeration, random_mlp


@pytest.mark.parametrize("clip", [None, 0.7], ids=["relu", "clipped-relu"])
def test_crown_bounds_contain_the_exact_range_of_every_neuron(clip: float | None) -> None:
    module = random_mlp((2, 3, 2, 2) if clip else (2, 4, 3, 2), seed=11, clip=clip)
    net = ReluNetwork.from_torch(module)
    lo, hi = np.array([-1.0, -0.5]), np.array([1.0, 1.5])
    b = crown_bounds(net, lo, hi)
    for layer in range(1, len(net.layers)):
        for j in range(net.layers[layer].n_out):
            c = np.zeros(net.layers[layer].n_out)
            c[j] = 1.0
            exact_min = optimum_by_enumeration(module, lo, hi, c, "min", target=(layer, j))
            exact_max = optimum_by_enumeration(module, lo, hi, c, "max", target=(layer, j))
            assert b.lower[layer][j] <= exact_min + 1e-9 and b.upper[layer][j] >= exact_max - 1e-9


def test_crown_bounds_hold_on_samples_and_are_never_looser_than_intervals() -> None:
    net = ReluNetwork.from_torch(random_mlp((6, 40, 40, 40, 3), seed=12))
    lo, hi = -np.ones(6) * 0.3, np.ones(6) * 0.3
    b, ib = crown_bounds(net, lo, hi), interval_bounds(net, lo, hi)
    pre = net.folded().pre_activations(box_samples(lo, hi, 100_000, seed=1))
    for a, low, up, ilow, iup in zip(pre, b.lower, b.upper, ib.lower, ib.upper, strict=True):
        assert np.all(a >= low) and np.all(a <= up)
        assert np.all(low >= ilow) and np.all(up <= iup)
    assert sum(w.sum() for w in b.width()) < 0.8 * sum(w.sum() for w in ib.width())


def test_linear_bound_of_an_output_difference_is_below_the_enumerated_minimum() -> None:
    module = random_mlp((2, 4, 4, 3), seed=13)
    net = ReluNetwork.from_torch(module)
    lo, hi = -np.ones(2), np.ones(2)
    b = crown_bounds(net, lo, hi)
    c = np.array([1.0, -1.0, 0.0])
    low = linear_bound(net.folded(), b.lower, b.upper, len(net.layers) - 1, c[None], np.zeros(1), lo, hi, False)
    up = linear_bound(net.folded(), b.lower, b.upper, len(net.layers) - 1, c[None], np.zeros(1), lo, hi, True)
    assert low[0] <= optimum_by_enumeration(module, lo, hi, c, "min") + 1e-9
    assert up[0] >= optimum_by_enumeration(module, lo, hi, c, "max") - 1e-9


def test_lp_tightening_from_crown_is_at_least_as_tight_and_a_past_deadline_keeps_the_start() -> None:
    net = ReluNetwork.from_torch(random_mlp((4, 20, 20, 2), seed=14))
    lo, hi = -np.ones(4), np.ones(4)
    start = crown_bounds(net, lo, hi)
    tight = lp_bounds(net, lo, hi, n_jobs=1, start=start)
    for a, b in zip(tight.lower, start.lower, strict=True):
        assert np.all(a >= b)
    pre = net.folded().pre_activations(box_samples(lo, hi, 20_000, seed=2))
    for a, low, up in zip(pre, tight.lower, tight.upper, strict=True):
        assert np.all(a >= low) and np.all(a <= up)
    same = lp_bounds(net, lo, hi, n_jobs=1, start=start, deadline=time.perf_counter() - 1.0)
    for a, b in zip(same.upper, start.upper, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="another input box"):
        lp_bounds(net, lo, hi * 2, start=start)
