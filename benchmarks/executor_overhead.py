"""Benchmark: what running a study's jobs through Ray costs per job, against the local process pool.

N jobs (N = 50, 200, 500) of two kinds, empty (return at once) and ~10 ms of busy CPU, run by
:func:`structlab.jobs.run_jobs` on ``--workers`` workers with (a) the local executor (a pool of spawned
processes, started anew by each call, as a study's call does) and (b) a Ray instance on this machine
(started once, as ``structlab reproduce --executor ray`` does), against (c) the plain baseline a user
would write: ``concurrent.futures.ProcessPoolExecutor.map`` over the same function. Rounds interleave the
three, and each wall time is the median over rounds. The overhead per job is (wall - N x job time /
workers) / N: what the executor adds, its pool's start included. Storing an outcome (an atomic write with
fsync, what a study adds to every job) is timed on its own.

    .venv/bin/python benchmarks/executor_overhead.py                  # 2 workers, 3 rounds
    .venv/bin/python benchmarks/executor_overhead.py --workers 4 --rounds 5 --sizes 50 500

Prints JSON and writes results/jobs/bench_executor_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

KINDS = {"empty": 0.0, "10 ms": 0.010}


def job(seconds: float, index: int) -> dict:
    """Busy for ``seconds`` of wall time (a CPU-bound job's shape), then returns a small outcome."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        pass
    return {"index": index}


def _plain_pool(n: int, seconds: float, workers: int) -> None:
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(job, [seconds] * n, range(n)))


def _run(executor, n: int, seconds: float, workers: int) -> None:
    from structlab.jobs import Job, run_jobs

    jobs = [Job(f"j{i}", job, {"seconds": seconds, "index": i}) for i in range(n)]
    outcomes = run_jobs(jobs, executor, workers=workers, log=lambda message: None, desc="bench")
    assert [o["index"] for o in outcomes.values()] == list(range(n))  # every job ran, in order


def _store_seconds(count: int = 200) -> float:
    """Seconds to store one small outcome in a job store (atomic write and fsync)."""
    from structlab.jobs import Job, JobStore

    with tempfile.TemporaryDirectory() as folder:
        store = JobStore(folder, salt="bench")
        jobs = [Job(f"j{i}", job, {"seconds": 0.0, "index": i}) for i in range(count)]
        start = time.perf_counter()
        for j in jobs:
            store.write(j, j.fingerprint("bench"), json.dumps({"index": 0}))
        return (time.perf_counter() - start) / count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="worker processes / Ray CPUs (default 2)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 500], help="numbers of jobs N")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    began = time.perf_counter()

    from structlab import runtime
    from structlab.jobs import LocalExecutor, RayExecutor
    from structlab.results import Claim, StudyResult, Table, finish

    runtime.set_progress(False)
    load_before = os.getloadavg()[0]
    local, ray = LocalExecutor(workers=args.workers), RayExecutor(workers=args.workers)
    t0 = time.perf_counter()
    ray.connect()
    ray_start = time.perf_counter() - t0
    _run(ray, 2 * args.workers, 0.0, args.workers)  # start Ray's worker processes: they are kept after
    runners = {
        "process pool (plain)": lambda n, s: _plain_pool(n, s, args.workers),
        "structlab local": lambda n, s: _run(local, n, s, args.workers),
        "structlab ray": lambda n, s: _run(ray, n, s, args.workers),
    }
    walls: dict[tuple[str, str, int], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for kind, seconds in KINDS.items():
                for n in args.sizes:
                    for name, run in runners.items():
                        start = time.perf_counter()
                        run(n, seconds)
                        walls.setdefault((name, kind, n), []).append(time.perf_counter() - start)
    finally:
        ray.close()
    store_s = _store_seconds()

    load = os.getloadavg()
    metrics = {"ray_init_seconds": ray_start, "store_seconds_per_job": store_s, "workers": args.workers,
               "cpu_count": runtime.cpu_count(), "load_average_1min": [load_before, load[0]], "runs": {}}
    rows, ratio_rows = [], []
    for kind, seconds in KINDS.items():
        for n in args.sizes:
            wall = {name: statistics.median(walls[(name, kind, n)]) for name in runners}
            overhead = {name: (w - n * seconds / args.workers) / n for name, w in wall.items()}
            metrics["runs"][f"{kind}, N={n}"] = {
                name: {"wall_seconds": wall[name], "walls": walls[(name, kind, n)],
                       "overhead_per_job_ms": 1e3 * overhead[name]} for name in runners}
            rows += [[kind, n, name, round(wall[name], 3), round(1e3 * wall[name] / n, 2),
                      round(1e3 * overhead[name], 2)] for name in runners]
            ratio_rows.append([kind, n, round(wall["structlab ray"] / wall["structlab local"], 3),
                               round(wall["structlab local"] / wall["process pool (plain)"], 3)])
    metrics["ratios"] = {f"{r[0]}, N={r[1]}": {"ray / local": r[2], "local / plain pool": r[3]} for r in ratio_rows}
    print(json.dumps(metrics, indent=2))

    n = max(args.sizes)
    ray_ms = {k: metrics["runs"][f"{k}, N={n}"]["structlab ray"]["overhead_per_job_ms"] for k in KINDS}
    local_ms = {k: metrics["runs"][f"{k}, N={n}"]["structlab local"]["overhead_per_job_ms"] for k in KINDS}
    claims = [
        Claim("Running a study's jobs as Ray tasks costs at most 10 ms more per job than the local process pool, "
              "so jobs of a second or more (every study's) lose at most 1% to it.",
              f"overhead per job at N={n}: Ray {ray_ms['empty']:.2f} ms vs local pool {local_ms['empty']:.2f} ms "
              f"(empty jobs), Ray {ray_ms['10 ms']:.2f} ms vs local {local_ms['10 ms']:.2f} ms (10 ms jobs); "
              f"{args.workers} workers, load average {load_before:.1f} -> {load[0]:.1f} on {runtime.cpu_count()} cores",
              "agrees" if max(ray_ms[k] - local_ms[k] for k in KINDS) <= 10 else "disagrees",
              "Overhead per job = (wall - N x job time / workers) / N, medians over interleaved rounds; the local "
              "pool's start is inside it (each study call starts one), Ray's instance start is not (once per "
              "`structlab reproduce`)."),
    ]
    result = StudyResult(
        part="jobs", study="bench_executor_overhead", title="Executor overhead: Ray tasks against the local pool",
        scale="full",
        summary="Wall time of N jobs through structlab's local and Ray executors and a plain process pool, "
                "medians over interleaved rounds.",
        config=vars(args), metrics=metrics,
        tables=[
            Table("Wall time of N jobs (s), per job and overhead per job (ms)",
                  ["jobs", "N", "executor", "wall (s)", "per job (ms)", "overhead per job (ms)"], rows,
                  note=f"{args.workers} workers on {runtime.cpu_count()} cores (load average {load_before:.1f} "
                       f"before, {load[0]:.1f} after); Ray instance start {ray_start:.1f} s, once per run and not "
                       f"in these walls; storing an outcome {1e3 * store_s:.2f} ms per job, not in these walls"),
            Table("Ratios of wall times", ["jobs", "N", "ray / local", "local / plain pool"], ratio_rows),
        ],
        claims=claims,
    )
    path = finish(result, args.results, wall_seconds=time.perf_counter() - began)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
