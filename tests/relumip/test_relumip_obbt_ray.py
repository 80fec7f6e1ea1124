"""Bound tightening as Ray tasks (``lp_bounds``/``milp_bounds(executor=RayExecutor(...))``): the bounds are
those of the same rows solved in this process, bit for bit, sound on samples, and equal the serial ones
(MILP: bit for bit; LP: up to the last bits a warm-started simplex changes); a failing task is named by
its layer. The Ray tests start a local instance of 2 CPUs (seconds) and are marked slow."""

from __future__ import annotations

import numpy as np
import pytest

from structlab.jobs import LocalExecutor, RayExecutor
from structlab.relumip import ReluNetwork, lp_bounds, milp_bounds, obbt

from ._relumip_reference import box_samples, random_mlp

LOWER, UPPER = np.array([-1.0, 0.0, -2.0]), np.array([1.0, 0.5, 2.0])


def _net() -> ReluNetwork:
    return ReluNetwork.from_torch(random_mlp((3, 20, 20, 20, 2), seed=0))


# ------------------------------------------------------------------------------------------------ fast
def test_an_executor_other_than_ray_or_with_n_jobs_or_a_deadline_is_refused_by_name() -> None:
    net = ReluNetwork.from_torch(random_mlp((3, 4, 1), seed=1))
    with pytest.raises(TypeError, match=r"executor='ray': expected a structlab.jobs.RayExecutor or None"):
        lp_bounds(net, LOWER, UPPER, executor="ray")
    with pytest.raises(TypeError, match=r"executor=LocalExecutor"):
        milp_bounds(net, LOWER, UPPER, executor=LocalExecutor(workers=2))
    ray = RayExecutor(workers=2)  # not started: the arguments are checked first
    with pytest.raises(ValueError, match=r"n_jobs=2 and executor: expected one of the two"):
        lp_bounds(net, LOWER, UPPER, n_jobs=2, executor=ray)
    with pytest.raises(ValueError, match=r"deadline and executor"):
        lp_bounds(net, LOWER, UPPER, deadline=1e12, executor=ray)
    assert ray._ray is None


def test_a_ray_task_holds_rows_worth_twenty_times_its_overhead_and_at_most_four_tasks_per_cpu() -> None:
    deep = obbt.Probe(cold=2.5, warm=2.0, build=0.05, ship=0.15)  # a deep layer of a wide network: 2 s a row
    first = obbt.Probe(cold=0.02, warm=0.01, build=0.01, ship=0.03)  # a first layer: 10 ms a row
    share = obbt.TASK_OVERHEAD_SHARE
    for probe, row_seconds in ((deep, 2.0), (first, 0.01)):
        # Ray's own cost, fetching (as long as shipping) and loading the model, the first solve's extra
        overhead = obbt.RAY_TASK_SECONDS + probe.ship + probe.build + (probe.cold - probe.warm)
        rows = obbt.rows_per_task(probe, 10_000, cpus=1000)  # many CPUs: the overhead decides
        assert rows * row_seconds * share >= overhead * (1 - 1e-9)  # at most 5% of the task's time ...
        assert (rows - 2) * row_seconds * share < overhead  # ... and not many more rows than that takes
    assert obbt.rows_per_task(first, 100, cpus=8) == 100  # a whole layer worth less than one task: none sent
    assert obbt.rows_per_task(deep, 1000, cpus=8) == 32  # 1000 rows over 8 CPUs: 4 tasks a CPU at most
    with pytest.raises(ValueError, match="cpus=0"):
        obbt.rows_per_task(deep, 10, cpus=0)


# ------------------------------------------------------------------------------------------------ Ray
class _InProcess(RayExecutor):
    """The executor's chunks solved one after the other in this process: the reference for Ray's transport."""

    def connect(self):
        return _OneCpu()

    def results(self, jobs, workers, threads, gpus=0.0):
        return LocalExecutor(workers=1).results(jobs, 1, threads)


class _OneCpu:
    @staticmethod
    def cluster_resources() -> dict:
        return {"CPU": 2.0}


def _chunks_of_three(monkeypatch: pytest.MonkeyPatch) -> None:
    # the layers of a 3x20 network are far too light for a task (the rule solves them here): force 3 rows a task
    monkeypatch.setattr(obbt, "rows_per_task", lambda probe, rows, cpus: 3)


def _assert_sound(net: ReluNetwork, bounds) -> None:
    for i, a in enumerate(net.folded().pre_activations(box_samples(LOWER, UPPER, 20_000, seed=0))):
        assert np.all(a >= bounds.lower[i]) and np.all(a <= bounds.upper[i]), f"layer {i}: a sample outside"


@pytest.mark.slow
def test_lp_bounds_on_ray_are_those_of_the_same_chunks_here_bit_for_bit_and_the_serial_ones(
    ray_executor: RayExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _net()
    serial = lp_bounds(net, LOWER, UPPER, n_jobs=1)
    _chunks_of_three(monkeypatch)
    on_ray = lp_bounds(net, LOWER, UPPER, executor=ray_executor)
    here = lp_bounds(net, LOWER, UPPER, executor=_InProcess(workers=2))
    assert on_ray.processes == 2  # the rows did go out as tasks, two at a time
    for a, b, c in zip(on_ray.lower + on_ray.upper, here.lower + here.upper, serial.lower + serial.upper,
                       strict=True):
        np.testing.assert_array_equal(a, b)  # to the last bit
        # a task starts its rows from a cold simplex, the serial run warm-starts each from the one before:
        # another optimal dual, the same bound up to rounding
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-11)
    _assert_sound(net, on_ray)


@pytest.mark.slow
def test_milp_bounds_on_ray_equal_the_serial_ones_bit_for_bit(
    ray_executor: RayExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _net()
    start = lp_bounds(net, LOWER, UPPER, n_jobs=1)
    serial = milp_bounds(net, LOWER, UPPER, time_limit=60.0, n_jobs=1, start=start)  # every MILP solved
    _chunks_of_three(monkeypatch)
    on_ray = milp_bounds(net, LOWER, UPPER, time_limit=60.0, start=start, executor=ray_executor)
    assert on_ray.processes == 2
    for a, b in zip(on_ray.lower + on_ray.upper, serial.lower + serial.upper, strict=True):
        np.testing.assert_array_equal(a, b)
    _assert_sound(net, on_ray)


@pytest.mark.slow
def test_a_failing_ray_task_stops_the_tightening_with_an_error_naming_its_layer(
    ray_executor: RayExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chunks_of_three(monkeypatch)
    monkeypatch.setattr(obbt, "_bound_chunk", _failing_chunk)
    with pytest.raises(RuntimeError, match=r"bound tightening of layer 1 on Ray: task layer1-rows\d+-\d+ failed: "
                                           r"ValueError: rows failed on purpose") as info:
        lp_bounds(_net(), LOWER, UPPER, executor=ray_executor)
    assert isinstance(info.value.__cause__, ValueError)


def _failing_chunk(layer, rows, mip, time_limit) -> dict:
    raise ValueError("rows failed on purpose")


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def net_onnx(tmp_path_factory):
    from structlab.relumip.cli import write_onnx

    path = tmp_path_factory.mktemp("ray-obbt") / "net.onnx"
    write_onnx(ReluNetwork.from_torch(random_mlp((3, 12, 12, 1), seed=2)), path, (LOWER, UPPER))
    return path


def test_cli_refuses_ray_for_interval_bounds_and_an_address_without_ray(net_onnx, capsys) -> None:
    from structlab.cli import main

    assert main(["relumip", "solve", str(net_onnx), "--objective", "1", "--executor", "ray"]) == 2
    assert "--executor ray: only LP and MILP bound tightening run as Ray tasks" in capsys.readouterr().err
    assert main(["relumip", "bounds", str(net_onnx), "--method", "lp", "--address", "10.0.0.5:6379"]) == 2
    assert "address='10.0.0.5:6379': only the 'ray' executor" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_bounds_and_solve_on_ray_agree_with_local_bounds(
    net_onnx, ray_executor: RayExecutor, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import json

    from structlab.cli import main

    ray_executor.connect()  # the commands join this instance (and leave it running)
    _chunks_of_three(monkeypatch)
    outs = {}
    for executor in ("local", "ray"):
        assert main(["relumip", "bounds", str(net_onnx), "--method", "lp", "--json", "--executor", executor]) == 0
        outs[executor] = json.loads(capsys.readouterr().out)
    assert (outs["local"]["processes"], outs["ray"]["processes"]) == (1, 2)  # on Ray, two tasks at a time
    for mine, theirs in zip(outs["ray"]["layers"], outs["local"]["layers"], strict=True):
        np.testing.assert_allclose(mine["lower"], theirs["lower"], rtol=0, atol=1e-11)
        np.testing.assert_allclose(mine["upper"], theirs["upper"], rtol=0, atol=1e-11)
    args = ["relumip", "solve", str(net_onnx), "--objective", "1", "--bounds", "lp", "--json"]
    assert main(args) == 0
    local = json.loads(capsys.readouterr().out)
    assert main([*args, "--executor", "ray"]) == 0
    on_ray = json.loads(capsys.readouterr().out)
    assert on_ray["status"] == local["status"] == "optimal"
    assert on_ray["objective"] == pytest.approx(local["objective"], abs=1e-7)
    assert ray_executor._ray is not None  # still connected: the commands closed only what they started
