"""verify(): answers checked against an independent computation.

On 2-input networks a dense grid plus a Lipschitz bound brackets the true maximum of ``y_0 - y_1``:
``grid_max <= max <= grid_max + L h / 2`` (``L = |c| |W_L| ... |W_1| 1`` bounds the change of ``c . f`` per
unit of L-inf distance; every point is within ``h / 2`` of the grid). A threshold above the bracket must
hold, one below the grid maximum must be violated, by both disjunction encodings, with and without the
attack. Counterexamples are re-checked here by onnxruntime and the property, independently of the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from structlab import data
from structlab.cli import main
from structlab.relumip import ReluNetwork
from structlab.relumip.verifier import Verdict, verify
from structlab.relumip.vnnlib import parse_vnnlib, read_vnnlib

from ._relumip_reference import random_mlp

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

mnistfc = data.find("vnncomp2021-mnistfc")
needs_mnistfc = pytest.mark.skipif(mnistfc is None, reason="vnncomp2021-mnistfc data set not found")


def _grid_bracket(net: ReluNetwork, c: np.ndarray, n: int = 801) -> tuple[float, float, np.ndarray]:
    """(grid max, proven upper bound on the true max, argmax) of c . f(x) on [-1, 1]^2."""
    g = np.linspace(-1, 1, n)
    X = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    values = net(X) @ c
    folded = net.folded()
    lipschitz = np.abs(c)
    for layer in reversed(folded.layers):
        lipschitz = lipschitz @ np.abs(layer.weight)
    h = g[1] - g[0]
    return float(values.max()), float(values.max() + lipschitz.sum() * h / 2), X[int(values.argmax())]


def _property(threshold: float, extra_or: str = "") -> str:
    return (
        "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
        "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 -1))\n(assert (<= X_1 1))\n"
        f"(assert (or (and (>= (- Y_0 Y_1) {threshold!r})) {extra_or}))\n"
    )


def _onnx_model(net: ReluNetwork) -> onnx.ModelProto:
    """The network as a float64 ONNX graph (Gemm + Relu), built here with onnx.helper."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, cur = [], [], "x"
    for i, layer in enumerate(net.folded().layers):
        inits += [numpy_helper.from_array(layer.weight, f"W{i}"), numpy_helper.from_array(layer.bias, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [f"a{i}"], transB=1))
        cur = f"a{i}"
        if layer.activation == "relu":
            nodes.append(helper.make_node("Relu", [cur], [f"h{i}"]))
            cur = f"h{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def small() -> tuple[ReluNetwork, float, float]:
    net = ReluNetwork.from_torch(random_mlp((2, 12, 12, 2), seed=5))
    grid_max, upper, _ = _grid_bracket(net, np.array([1.0, -1.0]))
    return net, grid_max, upper


def _check_counterexample(verdict: Verdict, model: onnx.ModelProto, threshold: float) -> None:
    assert verdict.result == "violated"
    x = verdict.counterexample
    assert np.all(x >= -1) and np.all(x <= 1)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x.reshape(1, 2)})[0].reshape(-1)
    assert y[0] - y[1] >= threshold
    np.testing.assert_allclose(verdict.output, y, rtol=0, atol=0)


@pytest.mark.parametrize("disjunctions", ["split", "indicator"])
@pytest.mark.parametrize("run_attack", [True, False], ids=["attack", "milp-only"])
def test_a_threshold_above_the_proven_maximum_holds(small, disjunctions: str, run_attack: bool) -> None:
    net, _, upper = small
    # a second, impossible disjunct (Y_0 - Y_1 far above) makes the indicator encoding choose between two
    prop = parse_vnnlib(_property(upper + 1e-3, f"(and (>= Y_0 (+ Y_1 {upper + 5.0!r})))"))
    verdict = verify(net, prop, time_limit=60, disjunctions=disjunctions, run_attack=run_attack)
    assert verdict.result == "holds" and verdict.counterexample is None


@pytest.mark.parametrize("disjunctions", ["split", "indicator"])
@pytest.mark.parametrize("run_attack", [True, False], ids=["attack", "milp-only"])
def test_a_threshold_below_the_grid_maximum_is_violated_and_onnxruntime_confirms_it(
        small, disjunctions: str, run_attack: bool) -> None:
    net, grid_max, _ = small
    model = _onnx_model(net)
    threshold = grid_max - 1e-2
    prop = parse_vnnlib(_property(threshold, f"(and (>= Y_1 (+ Y_0 {1e6!r})))"))
    verdict = verify(model, prop, time_limit=60, disjunctions=disjunctions, run_attack=run_attack)
    _check_counterexample(verdict, model, threshold)
    assert verdict.stage == ("attack" if run_attack else "milp")


def test_results_file_follows_the_competition_convention(small, tmp_path: Path) -> None:
    net, grid_max, _ = small
    model = _onnx_model(net)
    verdict = verify(model, parse_vnnlib(_property(grid_max - 1e-2)), time_limit=30)
    text = verdict.results_file_text()
    first, rest = text.split("\n", 1)
    assert first == "violated"
    # the counterexample as VNN-COMP's checker reads it: ((X_0 v) (X_1 v) (Y_0 v) (Y_1 v))
    content = rest.replace("\n", " ").strip()
    assert content[0] == "(" and content[-1] == ")"
    values: dict[str, float] = {}
    for part in content[1:-1].split(")"):
        if part.strip():
            name, num = part.strip()[1:].split(" ")
            values[name] = float(num)
    x = np.array([values["X_0"], values["X_1"]])
    y = np.array([values["Y_0"], values["Y_1"]])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x.reshape(1, 2)})[0].reshape(-1), y, rtol=1e-12)
    assert Verdict("holds", None, 1.0).results_file_text() == "holds\n"


def test_a_network_whose_input_size_differs_from_the_property_is_one_clear_line(small) -> None:
    net, _, _ = small
    model = _onnx_model(net)
    prop = parse_vnnlib("(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)"
                        "(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= Y_0 Y_1))", source="p.vnnlib")
    with pytest.raises(ValueError, match=r"network net \(input shape \(1, 2\).*has 2 inputs and 2 outputs, but "
                                         r"property p.vnnlib declares 1 X_i and 2 Y_j") as err:
        verify(model, prop)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="time_limit"):
        verify(net, parse_vnnlib(_property(0.0)), time_limit=0)
    with pytest.raises(ValueError, match="disjunctions='both'"):
        verify(net, parse_vnnlib(_property(0.0)), disjunctions="both")  # type: ignore[arg-type]


def test_cli_verify_prints_json_last_and_writes_the_results_file(small, tmp_path: Path, capsys) -> None:
    net, grid_max, upper = small
    model_path = tmp_path / "net.onnx"
    model_path.write_bytes(_onnx_model(net).SerializeToString())
    for threshold, expected in ((grid_max - 1e-2, "violated"), (upper + 1e-3, "holds")):
        prop_path = tmp_path / "prop.vnnlib"
        prop_path.write_text(_property(threshold))
        out = tmp_path / "result.txt"
        code = main(["relumip", "verify", str(model_path), str(prop_path), "--timeout", "60", "--json",
                     "--results-file", str(out)])
        assert code == 0
        verdict = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert verdict["result"] == expected and set(verdict) >= {"result", "counterexample", "seconds"}
        assert out.read_text().splitlines()[0] == expected
        assert (verdict["counterexample"] is None) == (expected == "holds")


def test_cli_verify_reports_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= (* X_0 X_0) 1))\n")
    model = tmp_path / "net.onnx"
    model.write_bytes(b"")
    assert main(["relumip", "verify", str(model), str(bad)]) != 0
    err = capsys.readouterr().err
    assert "bad.vnnlib:3:" in err and "Traceback" not in err


@needs_mnistfc
@pytest.mark.slow
@pytest.mark.parametrize("prop,expected", [("prop_1_0.05.vnnlib", "violated"), ("prop_2_0.03.vnnlib", "holds")])
def test_mnistfc_instances_settled_by_the_competition_get_the_same_answer(prop: str, expected: str) -> None:
    # settled: nine tools agree (prop_1_0.05: violated; prop_2_0.03: holds, only RPM, wrong elsewhere, disagrees)
    verdict = verify(mnistfc.path / "mnist-net_256x2.onnx", read_vnnlib(mnistfc.path / prop), time_limit=300)
    assert verdict.result == expected


@pytest.mark.parametrize("disjunctions", ["split", "indicator"])
def test_without_the_cutoff_the_milp_gives_the_same_answers(small, disjunctions: str) -> None:
    net, grid_max, upper = small
    for threshold, expected in ((upper + 1e-3, "holds"), (grid_max - 1e-2, "violated")):
        for warm_start in (True, False):
            verdict = verify(net, parse_vnnlib(_property(threshold)), time_limit=60, disjunctions=disjunctions,
                             cutoff=False, warm_start=warm_start, run_attack=expected == "holds")
            assert verdict.result == expected


@pytest.mark.parametrize("solver", ["highs", "scip"])
def test_a_solver_cutoff_below_the_optimum_reports_cutoff_and_above_it_the_optimum(solver: str) -> None:
    from structlab.relumip import Formulation
    from structlab.relumip.solvers import SolverOptions, solve

    from ._relumip_reference import optimum_by_enumeration

    module = random_mlp((2, 6, 6, 1), seed=21)
    net = ReluNetwork.from_torch(module)
    lo, hi = -np.ones(2), np.ones(2)
    exact = optimum_by_enumeration(module, lo, hi, np.array([1.0]), "min")
    form = Formulation(net, lo, hi, "interval")
    form.set_objective(form.y, [1.0], "min")
    below = solve(form.model, solver, SolverOptions(cutoff=exact - 1e-3))
    # a valid bound: never above the true optimum (HiGHS's own dual bound is, once the cutoff pruned it)
    assert below.status == "cutoff" and below.bound <= exact + 1e-9
    above = solve(form.model, solver, SolverOptions(cutoff=exact + 1e-3))
    assert above.status == "optimal" and above.objective == pytest.approx(exact, abs=1e-6)


def test_scip_gives_the_same_answers_through_its_objective_limit(small) -> None:
    net, grid_max, upper = small
    for threshold, expected in ((upper + 1e-3, "holds"), (grid_max - 1e-2, "violated")):
        verdict = verify(net, parse_vnnlib(_property(threshold)), time_limit=60, solver="scip", run_attack=False)
        assert verdict.result == expected


def test_the_time_limit_holds_on_a_query_that_needs_the_milp() -> None:
    net = ReluNetwork.from_torch(random_mlp((10, 80, 80, 80, 2), seed=22))
    x = np.random.default_rng(0).uniform(-1, 1, (20_000, 10))
    top = float((net(x) @ np.array([1.0, -1.0])).max())
    header = "".join(f"(declare-const X_{i} Real)" for i in range(10))
    header += "(declare-const Y_0 Real)(declare-const Y_1 Real)"
    box = "".join(f"(assert (>= X_{i} -1))(assert (<= X_{i} 1))" for i in range(10))
    prop = parse_vnnlib(header + box + f"(assert (>= (- Y_0 Y_1) {top + 0.05!r}))")
    verdict = verify(net, prop, time_limit=4.0)
    assert verdict.seconds <= 4.0 + 3.0  # the last LP or attack step may run a little over
    assert verdict.result in ("holds", "violated", "timeout")
    if verdict.result == "violated":  # then the counterexample beats the threshold by the forward pass
        y = net(verdict.counterexample)
        assert y[0] - y[1] >= top + 0.05


def test_an_attack_started_at_a_counterexample_returns_it() -> None:
    from structlab.relumip.attack import attack

    net = ReluNetwork.from_torch(random_mlp((2, 12, 12, 2), seed=5))
    _, _, best = _grid_bracket(net, np.array([1.0, -1.0]))
    top = float(net(best) @ np.array([1.0, -1.0]))
    d = parse_vnnlib(_property(top - 1e-6)).disjuncts[0]
    result = attack(net, d, samples=0, starts=1, steps=0, init=best[None])
    assert result.margin < 0 and np.array_equal(result.x, best)
