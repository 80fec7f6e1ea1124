"""The PySCIPOpt-ML peer: the network as PySCIPOpt-ML embeds it, solved by SCIP, reaches the optimum that
exhaustive region enumeration finds, and agrees with structlab on scaled networks and margin problems."""

from __future__ import annotations

import numpy as np
import pytest

from structlab.relumip import ReluNetwork
from structlab.relumip.problems import Instance, OutputConstraint, solve_instance

from ._relumip_reference import optimum_by_enumeration, random_mlp

pytest.importorskip("pyscipopt_ml")
scipml = pytest.importorskip("structlab.relumip.scipml_compare")


@pytest.fixture(scope="module")
def small():
    """A 2-5-4-2 network, a box, an objective and its true minimum and maximum (512 activation patterns,
    one LP each)."""
    module = random_mlp((2, 5, 4, 2), seed=7)
    lower, upper, c = np.array([-1.0, -0.5]), np.array([1.0, 1.5]), np.array([1.0, -2.0])
    truth = {sense: optimum_by_enumeration(module, lower, upper, c, sense) for sense in ("min", "max")}
    return ReluNetwork.from_torch(module), lower, upper, c, truth


@pytest.mark.parametrize("formulation", ["sos", "bigm"])
def test_pyscipopt_ml_reaches_the_enumerated_optimum(small, formulation):
    net, lower, upper, c, truth = small
    for sense in ("min", "max"):
        result = scipml.solve_with_pyscipopt_ml(net, Instance("toy", lower, upper, sense, objective=c),
                                                time_limit=60, formulation=formulation)
        assert result.solved and result.value == pytest.approx(truth[sense], abs=1e-6)
        assert result.binaries == (9 if formulation == "bigm" else 0)  # the SOS1 formulation needs no binary


def test_pyscipopt_ml_agrees_with_structlab_on_a_scaled_network_with_an_output_constraint():
    net = ReluNetwork.from_torch(random_mlp((2, 8, 8, 3), seed=0), input_offset=[0.5, -1.0],
                                 input_scale=[2.0, 0.5], output_offset=[1.0, 0.0, -2.0],
                                 output_scale=[3.0, 1.0, 0.5])
    lower, upper = np.array([-1.0, -2.0]), np.array([2.0, 0.0])
    limit = float(np.median(net(np.random.default_rng(0).uniform(lower, upper, (500, 2)))[:, 2]))
    inst = Instance("toy", lower, upper, "max", objective=np.array([1.0, -0.5, 0.0]),
                    constraints=(OutputConstraint(np.array([0.0, 0.0, 1.0]), upper=limit),))
    ours = solve_instance(net, inst, "lp", time_limit=60, solver="scip")
    theirs = scipml.solve_with_pyscipopt_ml(net, inst, time_limit=60)
    assert ours.solved and theirs.solved
    assert theirs.value == pytest.approx(ours.value, abs=1e-6)
    assert theirs.violation <= 1e-6


def test_pyscipopt_ml_margin_instance_agrees_with_structlab():
    net = ReluNetwork.from_torch(random_mlp((6, 10, 10, 4), seed=2))
    x0 = np.random.default_rng(1).uniform(0.2, 0.8, 6)
    inst = Instance("ball", x0 - 0.1, x0 + 0.1, "max", margin_label=int(np.argmax(net(x0))))
    ours = solve_instance(net, inst, "lp", time_limit=60)
    theirs = scipml.solve_with_pyscipopt_ml(net, inst, time_limit=60)
    assert ours.solved and theirs.solved
    assert theirs.value == pytest.approx(ours.value, abs=1e-6)


def test_pyscipopt_ml_refuses_clipped_relu_and_unknown_formulations():
    net = ReluNetwork.from_torch(random_mlp((2, 4, 1), seed=0, clip=1.0))
    with pytest.raises(ValueError, match="clipped"):
        scipml.sequential(net)
    plain = ReluNetwork.from_torch(random_mlp((2, 4, 1), seed=0))
    with pytest.raises(ValueError, match="formulation"):
        scipml.build_model(plain, Instance("toy", -np.ones(2), np.ones(2), "min", objective=np.ones(1)), "cone")
