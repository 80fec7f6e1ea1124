"""Region counts equal known values on constructed networks; the LP and polygon enumerations agree; the
sampled estimate brackets the exact count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from structlab.relumip import (
    Layer,
    ReluNetwork,
    count_linear_regions,
    estimate_linear_regions,
    linear_regions,
    plot_linear_regions,
)
from structlab.relumip import regions as regions_module

from ._relumip_reference import random_mlp, regions_by_enumeration


def _one_layer(W: np.ndarray, b: np.ndarray) -> ReluNetwork:
    return ReluNetwork((Layer(W, b, "relu"), Layer(np.ones((1, len(b))), np.zeros(1), "linear")))


def test_lines_in_general_position_give_one_plus_n_plus_n_choose_2_regions() -> None:
    rng = np.random.default_rng(0)
    n = 7
    net = _one_layer(rng.normal(size=(n, 2)), 0.1 * rng.normal(size=n))
    # every pairwise intersection lies well inside a large box
    assert count_linear_regions(net, -50 * np.ones(2), 50 * np.ones(2)) == 1 + n + math.comb(n, 2)


def test_one_dimensional_breakpoints_give_n_plus_one_regions() -> None:
    kinks = np.array([-0.8, -0.1, 0.3, 0.75])
    net = _one_layer(np.ones((4, 1)), -kinks)  # a_j = x - kink_j
    assert count_linear_regions(net, [-1.0], [1.0]) == 5
    assert count_linear_regions(net, [0.0], [1.0]) == 3  # only kinks 0.3 and 0.75 inside
    assert len(linear_regions(net, [-1.0], [1.0])) == 5


def test_sawtooth_of_depth_k_has_two_to_the_k_regions() -> None:
    # tent map t(x) = 2 relu(x) - 4 relu(x - 1/2) on [0, 1]; k compositions have 2^k linear pieces
    W1, b1 = np.array([[1.0], [1.0]]), np.array([0.0, -0.5])
    tent = np.array([[2.0, -4.0]])
    layers = [Layer(W1, b1, "relu")]
    for _ in range(3):
        layers.append(Layer(W1 @ tent, b1, "relu"))
    layers.append(Layer(tent, np.zeros(1), "linear"))
    net = ReluNetwork(tuple(layers))
    assert count_linear_regions(net, [0.0], [1.0]) == 2**4


def test_clipped_relu_neuron_has_three_pieces() -> None:
    net = ReluNetwork((Layer(np.array([[1.0]]), np.zeros(1), "clipped_relu", clip=0.5),
                       Layer(np.ones((1, 1)), np.zeros(1), "linear")))
    assert count_linear_regions(net, [-1.0], [1.0]) == 3
    assert count_linear_regions(net, [0.1], [0.4]) == 1


@pytest.mark.parametrize("clip", [None, 0.5])
def test_polygon_and_lp_enumerations_agree(clip: float | None) -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 6, 5, 1), seed=1, clip=clip))
    lo, hi = -np.ones(2), np.ones(2)
    exact = count_linear_regions(net, lo, hi)
    assert regions_module._count_by_lp(net, lo, hi, 10_000) == exact
    polys = linear_regions(net, lo, hi)
    area = sum(regions_module._area(p) for p in polys)
    assert area == pytest.approx(4.0, rel=1e-9)  # the regions tile the box


def test_lp_enumeration_in_three_dimensions_matches_planes_in_general_position() -> None:
    rng = np.random.default_rng(2)
    n = 5  # n planes in general position in R^3 cut space into C(n,0)+C(n,1)+C(n,2)+C(n,3) regions
    net = _one_layer(rng.normal(size=(n, 3)), 0.1 * rng.normal(size=n))
    expected = sum(math.comb(n, k) for k in range(4))
    assert count_linear_regions(net, -100 * np.ones(3), 100 * np.ones(3)) == expected


@pytest.mark.parametrize("widths", [(3, 4, 3, 1), (2, 5, 4, 1)])
def test_exact_count_equals_enumeration_of_patterns_with_an_interior(widths: tuple[int, ...]) -> None:
    module = random_mlp(widths, seed=5)
    lo, hi = -np.ones(widths[0]), np.ones(widths[0])
    assert count_linear_regions(ReluNetwork.from_torch(module), lo, hi) == regions_by_enumeration(module, lo, hi)


def test_sampled_estimate_brackets_the_exact_count() -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 8, 8, 1), seed=3))
    lo, hi = -np.ones(2), np.ones(2)
    exact = count_linear_regions(net, lo, hi)
    est = estimate_linear_regions(net, lo, hi, n_samples=200_000, seed=0)
    assert est.observed <= exact
    assert est.low <= est.estimate <= est.high
    assert est.high >= exact * 0.9 and est.low <= exact


def test_count_raises_past_max_regions_and_plot_writes_a_file(tmp_path) -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 8, 8, 1), seed=4))
    with pytest.raises(RuntimeError, match="max_regions"):
        count_linear_regions(net, -np.ones(2), np.ones(2), max_regions=3)
    ax = plot_linear_regions(net, -np.ones(2), np.ones(2), path=tmp_path / "regions.png")
    assert (tmp_path / "regions.png").stat().st_size > 1000
    assert str(count_linear_regions(net, -np.ones(2), np.ones(2))) in ax.get_title()
