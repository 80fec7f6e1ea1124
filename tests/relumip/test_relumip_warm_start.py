"""Warm starts: a cheap feasible point (data row, sample, attack) seeds HiGHS and SCIP as their incumbent.

Checked against the start's own forward-pass value: a warm-started solve stopped almost at once still
returns a solution at least as good as the start, and the start itself is the best feasible candidate.
"""

from __future__ import annotations

import numpy as np
import pytest

from structlab.cli import main
from structlab.relumip import ReluNetwork, optimize
from structlab.relumip.formulation import sampled_start
from structlab.relumip.problems import Instance, OutputConstraint, feasible_start, solve_instance

from ._relumip_reference import optimum_by_enumeration, random_mlp


@pytest.fixture(scope="module")
def net() -> ReluNetwork:
    return ReluNetwork.from_torch(random_mlp((6, 48, 48, 48, 3), seed=3))


def _constrained(net: ReluNetwork) -> Instance:
    # maximise y_0 subject to y_1 <= median of y_1 over the box (about half of the box is feasible)
    y1 = net(np.random.default_rng(0).uniform(-1, 1, (2000, 6)))[:, 1]
    return Instance("c", -np.ones(6), np.ones(6), "max", objective=np.array([1.0, 0.0, 0.0]),
                    constraints=(OutputConstraint(np.array([0.0, 1.0, 0.0]), -np.inf, float(np.median(y1))),))


@pytest.mark.parametrize("solver", ["highs", "scip"])
def test_a_warm_started_solve_stopped_early_is_at_least_as_good_as_its_start(net, solver: str) -> None:
    inst = _constrained(net)
    start = feasible_start(net, inst)
    assert start is not None and inst.violation(net, start) == 0.0
    result = solve_instance(net, inst, "interval", time_limit=0.05, solver=solver, warm_start=start)
    assert result.x is not None and inst.violation(net, result.x) <= 1e-6
    assert result.value >= inst.evaluate(net, start) - 1e-9


def test_feasible_start_picks_the_best_feasible_candidate_and_none_when_nothing_is_feasible(net) -> None:
    inst = _constrained(net)
    rng = np.random.default_rng(1)
    rows = rng.uniform(-1, 1, (500, 6))
    start = feasible_start(net, inst, candidates=rows, n_samples=0)
    values = net(rows) @ inst.objective
    ok = np.array([inst.violation(net, r) == 0.0 for r in rows])
    assert inst.evaluate(net, start) >= values[ok].max()  # the box centre is a candidate too
    impossible = Instance("x", -np.ones(6), np.ones(6), "max", objective=np.array([1.0, 0.0, 0.0]),
                          constraints=(OutputConstraint(np.array([0.0, 1.0, 0.0]), 1e6, np.inf),))
    assert feasible_start(net, impossible, candidates=rows) is None


def test_optimize_warm_starts_by_default_and_reaches_the_enumerated_optimum() -> None:
    module = random_mlp((2, 6, 6, 1), seed=4)
    small = ReluNetwork.from_torch(module)
    lo, hi = -np.ones(2), np.ones(2)
    exact = optimum_by_enumeration(module, lo, hi, np.array([1.0]), "max")
    start = sampled_start(small, lo, hi, np.array([1.0]), "max")
    sol = optimize(small, lo, hi, 1.0, sense="max")
    assert sol.objective == pytest.approx(exact, abs=1e-6)
    assert float(small(start)[0]) <= exact + 1e-9
    cold = optimize(small, lo, hi, 1.0, sense="max", warm_start=None)
    assert cold.objective == pytest.approx(exact, abs=1e-6)
    with pytest.raises(ValueError, match="warm_start='best'"):
        optimize(small, lo, hi, 1.0, warm_start="best")  # type: ignore[arg-type]


def test_cli_solve_takes_warm_start_flags_and_checks_start_points(tmp_path, capsys) -> None:
    from structlab.relumip.cli import write_onnx

    small = ReluNetwork.from_torch(random_mlp((2, 6, 1), seed=5))
    path = write_onnx(small, tmp_path / "net.onnx", (-np.ones(2), np.ones(2)))
    assert main(["relumip", "solve", str(path), "--objective", "1", "--json", "--no-warm-start"]) == 0
    assert '"warm_start": false' in capsys.readouterr().out
    points = tmp_path / "points.npy"
    np.save(points, np.zeros((4, 3)))
    assert main(["relumip", "solve", str(path), "--objective", "1", "--start-points", str(points)]) != 0
    assert "expected (rows, 2)" in capsys.readouterr().err
    np.save(points, np.zeros((4, 2)))
    assert main(["relumip", "solve", str(path), "--objective", "1", "--json", "--start-points", str(points)]) == 0
    assert '"warm_start": true' in capsys.readouterr().out
