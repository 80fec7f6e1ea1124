"""The big-M MILP against independent computations: activation-pattern enumeration, a dense grid, the
network's forward pass, and the other solver."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from structlab.relumip import (
    Formulation,
    InfeasibleError,
    ReluNetwork,
    TimeLimitError,
    UnboundedError,
    interval_bounds,
    lp_bounds,
    optimize,
)

from ._relumip_reference import optimum_by_enumeration, random_mlp

BOX = (-np.ones(2), np.ones(2))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sense", ["min", "max"])
def test_milp_optimum_equals_region_enumeration(seed: int, sense: str) -> None:
    module = random_mlp((2, 4, 3, 2), seed)
    net = ReluNetwork.from_torch(module)
    c = np.array([1.0, -0.5])
    expected = optimum_by_enumeration(module, *BOX, c, sense)
    sol = optimize(net, *BOX, c, sense=sense)
    assert sol.status == "optimal"
    assert sol.objective == pytest.approx(expected, abs=1e-6)
    assert float(c @ net(sol.x)) == pytest.approx(sol.objective, abs=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_clipped_relu_milp_optimum_equals_region_enumeration(seed: int) -> None:
    module = random_mlp((2, 3, 2, 1), seed, clip=0.4)
    net = ReluNetwork.from_torch(module)
    assert {layer.activation for layer in net.hidden} == {"clipped_relu"}
    for sense in ("min", "max"):
        expected = optimum_by_enumeration(module, *BOX, np.ones(1), sense)
        sol = optimize(net, *BOX, 1.0, sense=sense, bounds="lp")
        assert sol.objective == pytest.approx(expected, abs=1e-6)


def test_milp_optimum_is_at_least_as_good_as_a_dense_grid() -> None:
    module = random_mlp((2, 16, 16, 1), seed=5)
    net = ReluNetwork.from_torch(module)
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 401), np.linspace(-1, 1, 401)), -1).reshape(-1, 2)
    grid_min = float(net(grid).min())
    sol = optimize(net, *BOX, 1.0)
    assert sol.objective <= grid_min + 1e-9
    assert sol.objective == pytest.approx(float(net(sol.x)[0]), abs=1e-12)
    assert grid_min - sol.objective < 0.05  # a 0.005-spaced grid comes close to the optimum
    assert sol.bound <= sol.objective + 1e-6


def test_returned_y_is_the_forward_pass_and_matches_the_solver_within_tolerance() -> None:
    module = random_mlp((3, 12, 12, 12, 2), seed=6)
    net = ReluNetwork.from_torch(module)
    sol = optimize(net, -np.ones(3), np.ones(3), [1.0, 1.0], sense="max", bounds="lp")
    form_y = sol.values[-2:]  # the model's y variables are added last
    np.testing.assert_allclose(sol.y, net(sol.x), atol=0)
    np.testing.assert_allclose(form_y, sol.y, atol=1e-6)
    assert sol.solver_objective == pytest.approx(sol.objective, abs=1e-6)


def test_stable_neurons_get_no_binary_and_unstable_ones_one() -> None:
    module = random_mlp((2, 10, 10, 1), seed=7)
    net = ReluNetwork.from_torch(module)
    bounds = interval_bounds(net, *BOX)
    form = Formulation(net, *BOX, bounds=bounds)
    pairs = zip(bounds.lower[:-1], bounds.upper[:-1], strict=True)
    unstable = sum(int(((lo < 0) & (hi > 0)).sum()) for lo, hi in pairs)
    assert form.num_binaries == unstable
    for vars_, lo, hi in zip(form.layers, bounds.lower, bounds.upper, strict=False):
        has_z = vars_.z >= 0
        np.testing.assert_array_equal(has_z, (lo < 0) & (hi > 0))
        np.testing.assert_allclose(vars_.big_m[has_z], np.maximum(-lo, hi)[has_z])


def test_scaling_travels_with_the_network_into_the_milp() -> None:
    module = random_mlp((2, 6, 1), seed=8)
    plain = ReluNetwork.from_torch(module)
    scaled = ReluNetwork.from_torch(module, input_offset=[10.0, -5.0], input_scale=[2.0, 0.5],
                                    output_offset=100.0, output_scale=3.0)
    x = np.array([[11.0, -5.2], [9.0, -4.6]])
    np.testing.assert_allclose(scaled(x), 100.0 + 3.0 * plain((x - [10.0, -5.0]) / [2.0, 0.5]), atol=1e-12)
    lower, upper = np.array([8.0, -5.5]), np.array([12.0, -4.5])  # = [-1, 1]^2 in network units
    sol = optimize(scaled, lower, upper, 1.0)
    expected = optimum_by_enumeration(module, *BOX, np.ones(1), "min")
    assert sol.objective == pytest.approx(100.0 + 3.0 * expected, abs=1e-6)


def test_margin_objective_and_output_constraint_through_the_model_builder() -> None:
    module = random_mlp((2, 5, 3), seed=9)
    net = ReluNetwork.from_torch(module)
    form = Formulation(net, *BOX, bounds="lp")
    form.set_objective(form.y[[0, 2]], [1.0, -1.0], sense="max")
    form.add_constraint(form.y[[1]], [1.0], upper=0.4)  # a linear limit on an output
    sol = form.solve().raise_for_status()
    assert net(sol.x)[1] <= 0.4 + 1e-6
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 301), np.linspace(-1, 1, 301)), -1).reshape(-1, 2)
    y = net(grid)
    feasible = y[:, 1] <= 0.4
    assert 0 < feasible.mean() < 1  # the limit binds
    assert sol.objective >= (y[feasible, 0] - y[feasible, 2]).max() - 1e-9
    assert sol.objective == pytest.approx(float(sol.y[0] - sol.y[2]), abs=1e-12)


def test_contradictory_constraints_raise_infeasible() -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 4, 1), seed=10))
    form = Formulation(net, *BOX)
    bounds = interval_bounds(net, *BOX)
    form.add_constraint(form.y, [1.0], lower=float(bounds.upper[-1][0]) + 1.0)
    form.set_objective(form.y, [1.0])
    with pytest.raises(InfeasibleError, match="infeasible"):
        form.solve()


@pytest.mark.parametrize("solver", ["highs", "scip"])
def test_an_unbounded_problem_variable_raises_unbounded(solver: str) -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 4, 1), seed=10))
    form = Formulation(net, *BOX)
    (u,) = form.add_variables(1, lower=-np.inf, upper=np.inf)
    form.add_constraint([u, form.y[0]], [1.0, -1.0], upper=0.0)  # u <= y: unbounded below
    form.set_objective([u], [1.0], sense="min")
    with pytest.raises(UnboundedError):
        form.solve(solver=solver)


def test_time_limit_returns_best_solution_and_raise_for_status_raises() -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 60, 60, 60, 1), seed=11))
    sol = optimize(net, *BOX, 1.0, time_limit=0.05, warm_start=np.zeros(2))
    if sol.status == "optimal":  # pragma: no cover - a very fast machine
        pytest.skip("solved within 0.05 s")
    assert sol.status == "time_limit"
    assert sol.x is not None and sol.objective <= float(net(np.zeros(2))[0]) + 1e-9
    with pytest.raises(TimeLimitError) as err:
        sol.raise_for_status()
    assert err.value.solution is sol


@pytest.mark.parametrize("seed", [12, 13])
def test_highs_and_scip_agree_on_the_optimum(seed: int) -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 10, 10, 1), seed))
    bounds = lp_bounds(net, *BOX)
    highs = optimize(net, *BOX, 1.0, bounds=bounds, solver="highs")
    scip = optimize(net, *BOX, 1.0, bounds=bounds, solver="scip")
    assert highs.objective == pytest.approx(scip.objective, abs=1e-6)
    assert scip.bound == pytest.approx(scip.objective, abs=1e-5)


def test_warm_start_is_the_forward_pass_and_feasible() -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 8, 8, 1), seed=14))
    form = Formulation(net, *BOX, bounds="lp")
    x0 = np.array([0.3, -0.7])
    point = form.point(x0)
    starts, index, value, lo, hi = form.model.rows()
    activity = np.array([value[s:e] @ point[index[s:e]] for s, e in zip(starts[:-1], starts[1:], strict=False)])
    assert np.all(activity >= lo - 1e-9) and np.all(activity <= hi + 1e-9)
    assert np.all(point >= form.model.col_lower - 1e-12) and np.all(point <= form.model.col_upper + 1e-12)
    form.set_objective(form.y, [1.0])
    best = optimize(net, *BOX, 1.0).objective
    for solver in ("highs", "scip"):
        assert form.solve(solver=solver, warm_start=x0).objective == pytest.approx(best, abs=1e-7)


@pytest.mark.parametrize("suffix", [".mps", ".lp"])
def test_exported_model_solves_to_the_same_optimum(tmp_path, suffix: str) -> None:
    import highspy

    net = ReluNetwork.from_torch(random_mlp((2, 6, 6, 1), seed=15))
    form = Formulation(net, *BOX)
    form.set_objective(form.y, [1.0])
    path = form.model.write(tmp_path / f"net{suffix}")
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.readModel(str(path))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.run()
    assert h.getInfo().objective_function_value == pytest.approx(form.solve().objective, abs=1e-6)


def test_bad_arguments_name_the_argument() -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 4, 1), seed=16))
    with pytest.raises(ValueError, match="lower"):
        optimize(net, np.zeros(3), np.ones(2), 1.0)
    with pytest.raises(ValueError, match="objective"):
        optimize(net, *BOX, [1.0, 2.0])
    with pytest.raises(ValueError, match="solver"):
        optimize(net, *BOX, 1.0, solver="gurobi")
    with pytest.raises(ValueError, match="bounds"):
        Formulation(net, *BOX, bounds="exact")
    with pytest.raises(ValueError, match="lower\\[0\\]"):
        optimize(net, np.ones(2), np.zeros(2), 1.0)


def test_from_torch_rejects_unsupported_layers() -> None:
    with pytest.raises(TypeError, match="Sigmoid"):
        ReluNetwork.from_torch(nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1)))
    with pytest.raises(ValueError, match="min_val"):
        ReluNetwork.from_torch(nn.Sequential(nn.Linear(2, 3), nn.Hardtanh(), nn.Linear(3, 1)))
