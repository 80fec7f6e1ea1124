"""The benchmark problems at toy size, each against an independent computation.

A ReLU network is affine on each linear region, so a linear objective (and the margin max_j (y_j - y_k),
convex on each region) attains its optimum over a 2-D box at a vertex of a region polygon: evaluating
the network at every vertex is an exact reference that shares nothing with the MILP.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from structlab import data
from structlab.relumip import Formulation, ReluNetwork, linear_regions
from structlab.relumip.problems import (
    Dataset,
    Instance,
    OutputConstraint,
    encode,
    peaks,
    reformer,
    solve_instance,
    verification,
)
from structlab.relumip.training import TrainConfig, train


def _vertices(net: ReluNetwork, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    return np.concatenate(linear_regions(net, lower, upper))


def _random_net(widths: tuple[int, ...], seed: int, **scaling: object) -> ReluNetwork:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return ReluNetwork.from_torch(torch.nn.Sequential(*layers), **scaling)


def test_peaks_true_minimum_matches_the_published_value():
    value, argmin = peaks.true_minimum()
    assert value == pytest.approx(peaks.PUBLISHED_MINIMUM, abs=1e-5)
    np.testing.assert_allclose(argmin, [0.2283, -1.6255], atol=1e-3)
    assert peaks.peaks(argmin) <= peaks.peaks(np.random.default_rng(0).uniform(-2, 2, (10_000, 2))).min()


def test_peaks_dataset_samples_the_function_on_its_box():
    ds = peaks.dataset(n_train=64, n_test=32, seed=3)
    assert ds.x_train.shape == (64, 2) and ds.y_test.shape == (32, 1)
    assert ds.x_train.min() >= -2 and ds.x_train.max() <= 2
    np.testing.assert_allclose(ds.y_train[:, 0], peaks.peaks(ds.x_train), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="n_train"):
        peaks.dataset(n_train=1)


@pytest.mark.parametrize("bounds", ["interval", "lp"])
def test_trained_peaks_surrogate_minimum_equals_best_region_vertex(bounds):
    ds = peaks.dataset(n_train=256, n_test=64)
    net = train(ds.x_train, ds.y_train, hidden=(8, 8), epochs=15, indicators=False, seed=0).net
    res = solve_instance(net, peaks.instance(), bounds, time_limit=60)
    assert res.solved and res.violation == 0.0
    reference = net(_vertices(net, ds.lower, ds.upper))[:, 0].min()
    assert res.value == pytest.approx(reference, abs=1e-6)
    assert res.value == pytest.approx(float(net(res.x)[0]), abs=1e-12)  # scored by the forward pass
    assert res.bound <= res.value + 1e-6


def test_margin_instance_equals_best_region_vertex_on_a_2d_classifier():
    net = _random_net((2, 6, 6, 4), seed=1)
    lower, upper = np.array([-1.0, -0.5]), np.array([0.5, 1.0])
    inst = Instance("toy", lower, upper, "max", margin_label=2)
    res = solve_instance(net, inst, "lp", time_limit=60)
    y = net(_vertices(net, lower, upper))
    reference = (np.delete(y, 2, axis=1).max(axis=1) - y[:, 2]).max()
    assert res.solved
    assert res.value == pytest.approx(reference, abs=1e-6)


def _feasible_vertices(net: ReluNetwork, lower: np.ndarray, upper: np.ndarray, j: int, limit: float) -> np.ndarray:
    """Vertices of every region cut by ``y_j <= limit``: on a region ``y_j`` is affine, so the cut's new
    vertices lie where an edge crosses the level ``limit`` (linear interpolation along the edge)."""
    points = []
    for poly in linear_regions(net, lower, upper):
        level = net(poly)[:, j] - limit
        for p, q, lp, lq in zip(poly, np.roll(poly, -1, axis=0), level, np.roll(level, -1), strict=True):
            if lp <= 0:
                points.append(p)
            if lp * lq < 0:
                points.append(p + (q - p) * lp / (lp - lq))
    return np.array(points)


def test_output_constraint_holds_at_the_optimum_and_matches_vertex_search():
    net = _random_net((2, 5, 5, 2), seed=4, output_offset=[0.1, -0.2], output_scale=[2.0, 0.5])
    lower, upper = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    limit = float(np.median(net(_vertices(net, lower, upper))[:, 1]))
    inst = Instance("toy", lower, upper, "max", objective=np.array([1.0, 0.0]),
                    constraints=(OutputConstraint(np.array([0.0, 1.0]), upper=limit),))
    res = solve_instance(net, inst, "lp", time_limit=60)
    assert res.solved and net(res.x)[1] <= limit + 1e-6
    reference = net(_feasible_vertices(net, lower, upper, 1, limit))[:, 0].max()
    assert res.value == pytest.approx(reference, abs=1e-6)


def test_instance_needs_exactly_one_objective():
    box = np.zeros(2), np.ones(2)
    with pytest.raises(ValueError, match="exactly one"):
        Instance("bad", *box, "max", objective=np.ones(3), margin_label=1)
    with pytest.raises(ValueError, match="exactly one"):
        Instance("bad", *box, "min")
    with pytest.raises(ValueError, match="sense"):
        Instance("bad", *box, "min", margin_label=1)


def _digits_classifier() -> tuple[ReluNetwork, Dataset]:
    ds = verification.dataset("digits")
    config = TrainConfig(hidden=(10, 10), task="classification", epochs=4, lr=3e-3, seed=0)
    return verification.train_classifier(ds, config), ds


def test_verification_optimum_is_the_forward_pass_margin_and_beats_an_attack():
    net, ds = _digits_classifier()
    assert ds.test_error(net) < 0.5  # far better than chance (0.9)
    images = verification.pick_images(ds, [net], n_images=2, seed=0)
    for inst in verification.instances(ds, images, epsilons=(0.03,)):
        form = Formulation(net, inst.lower, inst.upper, "lp")
        encode(form, inst)
        sol = form.solve(time_limit=60)
        assert sol.optimal
        assert np.all(sol.x >= inst.lower - 1e-9) and np.all(sol.x <= inst.upper + 1e-9)
        margin = inst.evaluate(net, sol.x)  # the network evaluated at the returned input
        assert sol.solver_objective == pytest.approx(margin, abs=1e-6)
        centre = inst.evaluate(net, ds.x_test[inst.meta["image"]])
        assert centre < 0  # correctly classified: negative margin at the centre
        assert margin >= max(centre, verification.attack(net, inst, steps=30, restarts=2)) - 1e-7


def test_verification_ball_is_clipped_to_pixel_range():
    lo, hi = verification.ball(np.array([0.0, 0.5, 1.0]), 0.1)
    np.testing.assert_allclose(lo, [0.0, 0.4, 0.9])
    np.testing.assert_allclose(hi, [0.1, 0.6, 1.0])
    with pytest.raises(ValueError, match="eps"):
        verification.ball(np.zeros(3), -1.0)


def test_attack_gradient_matches_torch_autograd():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3)).double()
    net = ReluNetwork.from_torch(module)
    x = torch.rand(5, dtype=torch.float64, requires_grad=True)
    out = module(x)
    (out[2] - out[0]).backward()
    grad = verification._margin_gradient(net.folded(), x.detach().numpy(), 2, 0)
    np.testing.assert_allclose(grad, x.grad.numpy(), atol=1e-12)


reformer_data = pytest.mark.skipif(data.find("omlt-reformer") is None, reason="omlt-reformer data set not found")


@reformer_data
def test_reformer_dataset_has_omlts_columns_and_box():
    ds = reformer.dataset()
    assert len(ds.x_train) + len(ds.x_test) == 2800
    assert ds.y_train.shape[1] == len(reformer.OUTPUTS) == 12
    np.testing.assert_allclose(ds.lower, [0.1, 0.8])
    np.testing.assert_allclose(ds.upper, [0.8, 1.2])
    x, y, _ = reformer.read_table()
    np.testing.assert_allclose(reformer.simulated(x[1234]), y[1234], rtol=1e-6)  # duplicate rows averaged
    between = reformer.simulated((x[0] + x[1]) / 2)  # neighbours on the grid: the midpoint is their mean
    np.testing.assert_allclose(between, (y[0] + y[1]) / 2, rtol=1e-9)


@reformer_data
def test_reformer_toy_surrogate_respects_the_n2_limit_and_matches_vertex_search():
    ds = reformer.dataset()
    net = train(ds.x_train, ds.y_train, hidden=(6, 6), epochs=5, batch_size=32, lr=3e-3, indicators=False,
                seed=0).net
    inst = reformer.instance(ds)
    res = solve_instance(net, inst, "lp", time_limit=60)
    assert res.solved
    y = net(res.x)
    assert y[reformer.N2] <= reformer.N2_LIMIT + 1e-6
    assert res.value == pytest.approx(y[reformer.H2], abs=1e-12)
    reference = net(_feasible_vertices(net, ds.lower, ds.upper, reformer.N2, reformer.N2_LIMIT))[:, reformer.H2].max()
    assert res.value == pytest.approx(reference, abs=1e-6)
