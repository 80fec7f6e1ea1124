"""structlab's head-to-head encoder for OMLT, with OMLT's bounds and with ours: same network, same
problem, same optimum (against exhaustive region enumeration where the network is small)."""

from __future__ import annotations

import numpy as np
import pytest

from structlab.relumip import ReluNetwork, interval_bounds, lp_bounds
from structlab.relumip.problems import Instance, OutputConstraint, solve_instance

from ._relumip_reference import optimum_by_enumeration, random_mlp

omlt_compare = pytest.importorskip("structlab.relumip.omlt_compare")
pytest.importorskip("omlt")


def _net(widths: tuple[int, ...], seed: int, clip: float | None = None, **scaling: object) -> ReluNetwork:
    return ReluNetwork.from_torch(random_mlp(widths, seed, clip), **scaling)


def test_omlt_and_structlab_find_the_same_optimum_with_scaling_and_output_constraint():
    net = _net((2, 8, 8, 3), seed=0, input_offset=[0.5, -1.0], input_scale=[2.0, 0.5],
               output_offset=[1.0, 0.0, -2.0], output_scale=[3.0, 1.0, 0.5])
    lower, upper = np.array([-1.0, -2.0]), np.array([2.0, 0.0])
    limit = float(np.median(net(np.random.default_rng(0).uniform(lower, upper, (500, 2)))[:, 2]))
    inst = Instance("toy", lower, upper, "max", objective=np.array([1.0, -0.5, 0.0]),
                    constraints=(OutputConstraint(np.array([0.0, 0.0, 1.0]), upper=limit),))
    ours = solve_instance(net, inst, "lp", time_limit=60)
    theirs = omlt_compare.solve_with_omlt(net, inst, time_limit=60)
    assert ours.solved and theirs.solved
    assert theirs.value == pytest.approx(ours.value, abs=1e-6)
    assert theirs.violation <= 1e-6
    # OMLT gives every ReLU a binary; its big-M come from interval arithmetic on the same network
    assert theirs.binaries == sum(net.widths)
    assert ours.binaries <= theirs.binaries
    interval = interval_bounds(net, lower, upper)
    expected = [float(np.maximum(-lo, hi).max()) for lo, hi in zip(interval.lower[:-1], interval.upper[:-1],
                                                                     strict=True)]
    np.testing.assert_allclose(theirs.big_m, expected, rtol=1e-6)


def test_omlt_margin_instance_agrees_with_structlab():
    net = _net((6, 10, 10, 4), seed=2)
    x0 = np.random.default_rng(1).uniform(0.2, 0.8, 6)
    inst = Instance("ball", x0 - 0.1, x0 + 0.1, "max", margin_label=int(np.argmax(net(x0))))
    ours = solve_instance(net, inst, "interval", time_limit=60)
    theirs = omlt_compare.solve_with_omlt(net, inst, time_limit=60)
    assert ours.solved and theirs.solved
    assert theirs.value == pytest.approx(ours.value, abs=1e-6)
    assert theirs.value == pytest.approx(inst.evaluate(net, theirs.x), abs=1e-12)


def test_omlt_refuses_clipped_relu():
    net = _net((2, 4, 1), seed=0, clip=1.0)
    with pytest.raises(ValueError, match="clipped"):
        omlt_compare.network_definition(net, np.zeros(2), np.ones(2))


@pytest.mark.parametrize("sense", ["min", "max"])
def test_omlt_with_its_own_and_with_our_bounds_reaches_the_enumerated_optimum(sense):
    module = random_mlp((2, 5, 4, 2), seed=5)
    net = ReluNetwork.from_torch(module)
    lower, upper = np.array([-1.0, -0.5]), np.array([1.0, 1.5])
    c = np.array([1.0, -2.0])
    truth = optimum_by_enumeration(module, lower, upper, c, sense)  # one LP per activation pattern (512)
    inst = Instance("toy", lower, upper, sense, objective=c)
    own = omlt_compare.solve_with_omlt(net, inst, time_limit=60)
    lp = lp_bounds(net, lower, upper, n_jobs=1)
    ours = omlt_compare.solve_with_omlt(net, inst, time_limit=60, bounds=lp)
    for result in (own, ours):
        assert result.solved and result.value == pytest.approx(truth, abs=1e-6)
    assert own.bounds.startswith("interval") and ours.bounds == "lp (structlab)"
    # OMLT's big-M parameters are now our LP bounds: max(-L, U) over each hidden layer
    expected = [float(np.maximum(-lo, hi).max()) for lo, hi in zip(lp.lower[:-1], lp.upper[:-1], strict=True)]
    np.testing.assert_allclose(ours.big_m, expected, rtol=1e-12)
    assert all(a <= b + 1e-9 for a, b in zip(ours.big_m, own.big_m, strict=True))
    assert ours.timings["bounds"] == lp.seconds and set(ours.timings) == {"bounds", "model", "transfer"}
    assert ours.build_seconds == pytest.approx(sum(ours.timings.values()))


def test_our_bounds_in_omlt_keep_the_optimum_with_scaling_and_a_margin():
    net = _net((2, 8, 8, 3), seed=0, input_offset=[0.5, -1.0], input_scale=[2.0, 0.5],
               output_offset=[1.0, 0.0, -2.0], output_scale=[3.0, 1.0, 0.5])
    lower, upper = np.array([-1.0, -2.0]), np.array([2.0, 0.0])
    inst = Instance("margin", lower, upper, "max", margin_label=1)
    ours = solve_instance(net, inst, "lp", time_limit=60)
    theirs = omlt_compare.solve_with_omlt(net, inst, time_limit=60, bounds=lp_bounds(net, lower, upper, n_jobs=1))
    assert ours.solved and theirs.solved
    assert theirs.value == pytest.approx(ours.value, abs=1e-6)
    assert theirs.value == pytest.approx(inst.evaluate(net, theirs.x), abs=1e-12)


def test_omlt_refuses_bounds_of_another_network():
    net = _net((2, 4, 1), seed=0)
    other = lp_bounds(_net((2, 4, 4, 1), seed=0), -np.ones(2), np.ones(2), n_jobs=1)
    inst = Instance("toy", -np.ones(2), np.ones(2), "min", objective=np.ones(1))
    with pytest.raises(ValueError, match="bounds"):
        omlt_compare.solve_with_omlt(net, inst, bounds=other)
