"""Bounds are sound (they hold on 1e5 samples and every corner of the box), nested (MILP inside LP inside
interval), and the exact MILP bound of a small network equals the enumerated extreme value."""

from __future__ import annotations

import numpy as np
import pytest

from structlab.relumip import ReluNetwork, interval_bounds, lp_bounds, milp_bounds, stable_fraction
from structlab.relumip import bounds as bounds_module

from ._relumip_reference import box_samples, optimum_by_enumeration, random_mlp


def _assert_bounds_hold(net: ReluNetwork, bounds, lower: np.ndarray, upper: np.ndarray) -> None:
    points = box_samples(lower, upper, 100_000, seed=0)
    for i, a in enumerate(net.folded().pre_activations(points)):
        assert np.all(a >= bounds.lower[i]), f"layer {i}: a sample below the lower bound"
        assert np.all(a <= bounds.upper[i]), f"layer {i}: a sample above the upper bound"


def _assert_nested(inner, outer) -> None:
    for lo_in, hi_in, lo_out, hi_out in zip(inner.lower, inner.upper, outer.lower, outer.upper, strict=True):
        assert np.all(lo_in >= lo_out) and np.all(hi_in <= hi_out)


@pytest.mark.parametrize("clip", [None, 0.5])
def test_interval_and_lp_bounds_hold_on_samples_and_corners(clip: float | None) -> None:
    net = ReluNetwork.from_torch(random_mlp((3, 20, 20, 20, 2), seed=0, clip=clip))
    lower, upper = np.array([-1.0, 0.0, -2.0]), np.array([1.0, 0.5, 2.0])
    ib = interval_bounds(net, lower, upper)
    lb = lp_bounds(net, lower, upper, n_jobs=1)
    _assert_bounds_hold(net, ib, lower, upper)
    _assert_bounds_hold(net, lb, lower, upper)
    _assert_nested(lb, ib)
    # tightening must actually tighten in the deeper layers, and never loosen the first (already exact)
    np.testing.assert_array_equal(lb.lower[0], ib.lower[0])
    assert sum(w.sum() for w in lb.width()[1:]) < 0.9 * sum(w.sum() for w in ib.width()[1:])
    assert stable_fraction(net, lb) >= stable_fraction(net, ib)


def test_interval_bounds_of_the_first_layer_are_attained_at_corners() -> None:
    net = ReluNetwork.from_torch(random_mlp((3, 7, 1), seed=1))
    lower, upper = -np.ones(3), np.ones(3)
    ib = interval_bounds(net, lower, upper)
    corners = box_samples(lower, upper, 0, seed=0)
    a0 = net.pre_activations(corners)[0]
    np.testing.assert_allclose(ib.lower[0], a0.min(0), atol=1e-9)
    np.testing.assert_allclose(ib.upper[0], a0.max(0), atol=1e-9)


def test_milp_bounds_are_exact_on_a_small_network_and_inside_lp_bounds() -> None:
    module = random_mlp((2, 4, 3, 2), seed=2)
    net = ReluNetwork.from_torch(module)
    lower, upper = -np.ones(2), np.ones(2)
    lb = lp_bounds(net, lower, upper, n_jobs=1)
    mb = milp_bounds(net, lower, upper, time_limit=10.0, n_jobs=1, start=lb)
    _assert_nested(mb, lb)
    _assert_bounds_hold(net, mb, lower, upper)
    for j in range(3):
        true_min = optimum_by_enumeration(module, lower, upper, None, "min", target=(1, j))
        true_max = optimum_by_enumeration(module, lower, upper, None, "max", target=(1, j))
        if mb.upper[1][j] > 0:  # dead neurons are skipped (constant 0 in every formulation)
            assert mb.lower[1][j] == pytest.approx(true_min, abs=1e-5)
            assert mb.upper[1][j] == pytest.approx(true_max, abs=1e-5)
        assert mb.lower[1][j] <= true_min + 1e-12 and mb.upper[1][j] >= true_max - 1e-12


def test_lp_bounds_in_parallel_equal_serial_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 16, 16, 1), seed=3))
    lower, upper = -np.ones(2), np.ones(2)
    serial = lp_bounds(net, lower, upper, n_jobs=1)
    monkeypatch.setattr(bounds_module._Workers, "_pool_size", lambda self, seconds, rest: 2)  # force the pool
    parallel = lp_bounds(net, lower, upper, n_jobs=2)
    for a, b in zip(serial.lower + serial.upper, parallel.lower + parallel.upper, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7)


def test_bounds_reject_a_bad_box() -> None:
    net = ReluNetwork.from_torch(random_mlp((2, 3, 1), seed=4))
    with pytest.raises(ValueError, match="upper"):
        interval_bounds(net, np.zeros(2), np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="shape"):
        lp_bounds(net, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="n_jobs"):
        lp_bounds(net, np.zeros(2), np.ones(2), n_jobs=0)


def test_milp_time_limit_applies_to_each_problem_not_to_all_of_them() -> None:
    from structlab.relumip.bigm import encode_layer
    from structlab.relumip.model import Model

    net = ReluNetwork.from_torch(random_mlp((2, 40, 40, 40, 1), seed=5)).folded()
    lower, upper = -np.ones(2), np.ones(2)
    lb = lp_bounds(net, lower, upper, n_jobs=1)
    model = Model()
    h = model.add_variables(2, lower, upper)
    for k in range(3):
        h = encode_layer(model, h, net.layers[k], lb.lower[k], lb.upper[k]).h
    rows = net.layers[3].weight
    lo, hi, seconds = bounds_module.bound_rows(model, h, np.repeat(rows, 2, axis=0), mip=True, time_limit=0.5)
    # each of the 4 problems gets its own 0.5 s (a limit on the total would starve the later ones, which
    # would then return an infinite bound at once) and proves a bound within the LP bounds
    assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))
    assert np.all(lo + net.layers[3].bias[0] >= lb.lower[3][0] - 1e-6)
    assert np.all(hi + net.layers[3].bias[0] <= lb.upper[3][0] + 1e-6)
    assert seconds.sum() < 4 * 0.5 + 1.0


def test_worker_processes_do_not_rerun_an_unguarded_calling_script(tmp_path) -> None:
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from structlab.relumip import Layer, ReluNetwork, lp_bounds
        from structlab.relumip import bounds
        print("script body", flush=True)
        bounds._Workers._pool_size = lambda self, seconds, rest: 2  # force the process pool
        rng = np.random.default_rng(0)
        net = ReluNetwork((Layer(rng.normal(size=(12, 2)), rng.normal(size=12)),
                           Layer(rng.normal(size=(12, 12)), rng.normal(size=12)),
                           Layer(rng.normal(size=(1, 12)), np.zeros(1), "linear")))
        parallel = lp_bounds(net, -np.ones(2), np.ones(2), n_jobs=2)
        serial = lp_bounds(net, -np.ones(2), np.ones(2), n_jobs=1)
        print("same", np.allclose(parallel.upper[1], serial.upper[1], atol=1e-7))
    """))
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", str(script)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.count("script body") == 1
    assert "same True" in out
