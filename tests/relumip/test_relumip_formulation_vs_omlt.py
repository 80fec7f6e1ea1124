"""Optional cross-check: OMLT's own big-M encoding (Pyomo, solved by HiGHS) reaches the same optimum.

Skipped unless ``omlt`` and ``pyomo`` import and Pyomo can reach HiGHS.
"""

from __future__ import annotations

import numpy as np
import pytest

from structlab.relumip import ReluNetwork, optimize

from ._relumip_reference import random_mlp

pyo = pytest.importorskip("pyomo.environ")
omlt = pytest.importorskip("omlt")


def _omlt_optimum(net: ReluNetwork, lower: np.ndarray, upper: np.ndarray, sense: str) -> float:
    from omlt.neuralnet import NetworkDefinition, ReluBigMFormulation
    from omlt.neuralnet.layer import DenseLayer, InputLayer

    definition = NetworkDefinition(
        scaled_input_bounds={i: (float(a), float(b)) for i, (a, b) in enumerate(zip(lower, upper, strict=True))}
    )
    previous = InputLayer([net.input_dim])
    definition.add_layer(previous)
    for layer in net.layers:
        dense = DenseLayer(
            previous.output_size, [layer.n_out], activation="relu" if layer.activation == "relu" else "linear",
            weights=layer.weight.T, biases=layer.bias,
        )
        definition.add_layer(dense)
        definition.add_edge(previous, dense)
        previous = dense
    model = pyo.ConcreteModel()
    model.nn = omlt.OmltBlock()
    model.nn.build_formulation(ReluBigMFormulation(definition))
    model.obj = pyo.Objective(expr=model.nn.outputs[0], sense=pyo.minimize if sense == "min" else pyo.maximize)
    solver = pyo.SolverFactory("appsi_highs")
    if not solver.available(exception_flag=False):
        pytest.skip("Pyomo cannot reach HiGHS (appsi_highs)")
    solver.config.mip_gap = 1e-9
    solver.solve(model)
    return float(pyo.value(model.obj))


@pytest.mark.parametrize("seed", [0, 1])
def test_omlt_big_m_optimum_equals_structlab_optimum(seed: int) -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 10, 10, 1), seed))
    lower, upper = -np.ones(2), np.ones(2)
    for sense in ("min", "max"):
        ours = optimize(net, lower, upper, 1.0, sense=sense, bounds="lp")
        assert ours.objective == pytest.approx(_omlt_optimum(net, lower, upper, sense), abs=1e-6)
