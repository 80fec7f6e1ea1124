"""Benchmark: what bound tightening costs and what it buys, on peaks surrogates of growing depth.

For ReLU networks trained on MATLAB's peaks function (2x25 ... 5x50), in one run:

- bound-tightening time per neuron (LP-based OBBT), serial and with a process pool;
- the big-M reduction per layer: largest and mean big-M under LP bounds against interval bounds;
- the MILP (minimise the surrogate on [-2, 2]^2, HiGHS, fixed time limit) with interval bounds, with LP
  bounds, and with LP bounds on the rescaled network: solve time, nodes, binaries, coefficient range.

With ``--jobs 1,2,...``: LP and MILP bound tightening of wider and deeper surrogates (3x100 ... 6x256)
with 1 and more processes, as ratios against one process in the same run
(``results/relumip/bench_obbt_scaling.json``); with ``--executor ray`` also as Ray tasks (a local Ray
instance of the usable cores, or the cluster at ``--address``), against the same serial time.

Prints JSON and writes ``results/relumip/bench_bounds.json``::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/relumip_bounds.py --scale quick
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/relumip_bounds.py --scale quick --jobs 1,2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/relumip_bounds.py --scale quick --jobs 1,2 --executor ray
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from typing import Any

import numpy as np

from structlab import runtime
from structlab.relumip import (
    Formulation,
    interval_bounds,
    lp_bounds,
    milp_bounds,
    obbt,
    rescale,
    stable_fraction,
    train,
)
from structlab.relumip.problems.peaks import peaks
from structlab.results import Claim, StudyResult, Table, finish

# The arguments that make each results file of this script evidence (docs name them while it is missing).
EVIDENCE_ARGS = {"bench_bounds": "--scale full", "bench_obbt_scaling": "--scale full --jobs 1,2"}
LOWER, UPPER = np.array([-2.0, -2.0]), np.array([2.0, 2.0])
SCALES = {
    "quick": {"nets": [(2, 25), (3, 25), (2, 50)], "epochs": 120, "time_limit": 30.0, "n_train": 2000},
    "full": {"nets": [(2, 25), (3, 25), (4, 25), (5, 25), (2, 50), (3, 50), (4, 50), (5, 50)],
             "epochs": 300, "time_limit": 60.0, "n_train": 4000},
}


def solve(net: Any, bounds: Any, time_limit: float) -> dict[str, Any]:
    form = Formulation(net, LOWER, UPPER, bounds=bounds)
    form.set_objective(form.y, [1.0], sense="min")
    # every variant starts from the same incumbent (the box centre), so that a time-out still has a gap
    sol = form.solve(time_limit=time_limit, threads=1, warm_start=0.5 * (LOWER + UPPER))
    stats = form.model.stats()
    return {
        "status": sol.status, "objective": sol.objective, "bound": sol.bound, "gap": sol.gap,
        "seconds": sol.seconds, "nodes": sol.nodes, "binaries": form.num_binaries,
        "coefficient_range": stats["coefficient_max"] / stats["coefficient_min"],
        "max_big_m": [float(m.max()) for m in form.big_m],
        "mean_big_m": [float(m[m > 0].mean()) if (m > 0).any() else 0.0 for m in form.big_m],
    }


def run(scale: str, seed: int) -> StudyResult:
    cfg = SCALES[scale]
    rng = np.random.default_rng(seed)
    X = rng.uniform(LOWER, UPPER, size=(cfg["n_train"], 2))
    y = peaks(X)
    n_jobs = runtime.cpu_count()
    rows, records = [], []
    for depth, width in cfg["nets"]:
        name = f"{depth}x{width}"
        trained = train(X, y, hidden=(width,) * depth, epochs=cfg["epochs"], seed=seed, indicators=False)
        net = trained.net
        ib = interval_bounds(net, LOWER, UPPER)
        t = time.perf_counter()
        lb = lp_bounds(net, LOWER, UPPER, n_jobs=1)
        serial = time.perf_counter() - t
        t = time.perf_counter()
        pooled = lp_bounds(net, LOWER, UPPER, n_jobs=n_jobs)
        parallel = time.perf_counter() - t
        tightened = sum(net.widths[1:]) + net.output_dim  # the first layer's interval bounds are exact
        interval = solve(net, ib, cfg["time_limit"])
        lp = solve(net, lb, cfg["time_limit"])
        scaled_net = rescale(net, lb)
        scaled = solve(scaled_net, lp_bounds(scaled_net, LOWER, UPPER, n_jobs=1), cfg["time_limit"])
        record = {
            "net": name, "depth": depth, "width": width, "train_mse": trained.train_error,
            "lp_bounds_seconds": serial, "lp_bounds_seconds_parallel": parallel, "n_jobs": n_jobs,
            "processes_used": pooled.processes,
            "lp_seconds_per_neuron": serial / tightened, "lp_problems": lb.problems,
            "stable_fraction_interval": stable_fraction(net, ib), "stable_fraction_lp": stable_fraction(net, lb),
            "big_m_reduction_per_layer": [
                a / b if b > 0 else 1.0 for a, b in zip(lp["max_big_m"], interval["max_big_m"], strict=True)
            ],
            "interval": interval, "lp": lp, "lp_rescaled": scaled,
        }
        records.append(record)
        print(json.dumps({k: record[k] for k in ("net", "lp_bounds_seconds", "big_m_reduction_per_layer")}),
              file=sys.stderr)
        rows.append([
            name, f"{trained.train_error:.4f}", f"{1e3 * record['lp_seconds_per_neuron']:.1f}",
            f"{serial:.2f} / {parallel:.2f}",
            " ".join(f"{r:.2f}" for r in record["big_m_reduction_per_layer"]),
            f"{record['stable_fraction_interval']:.2f} / {record['stable_fraction_lp']:.2f}",
            f"{interval['binaries']} / {lp['binaries']}",
            f"{interval['seconds']:.2f} ({interval['status']}, {interval['nodes']})",
            f"{lp['seconds']:.2f} ({lp['status']}, {lp['nodes']})",
            f"{scaled['seconds']:.2f} ({scaled['status']}, {scaled['nodes']})",
        ])

    def paired(a: str, b: str) -> list[float]:
        """Solve-time ratios a / b over the networks that both variants solved within the limit."""
        return [r[a]["seconds"] / max(r[b]["seconds"], 1e-9) for r in records
                if r[a]["status"] == "optimal" and r[b]["status"] == "optimal"]

    def closed(a: str, b: str) -> list[float]:
        """Final relative gaps of a minus those of b, over the networks that neither variant solved."""
        return [r[a]["gap"] - r[b]["gap"] for r in records if r[a]["status"] != "optimal" != r[b]["status"]]

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else math.nan

    def verdict(speedups: list[float]) -> str:
        if len(speedups) < 2:
            return "inconclusive"
        return "agrees" if median(speedups) > 1.1 else "disagrees" if median(speedups) < 0.9 else "inconclusive"

    lp_speedup, rescale_speedup = paired("interval", "lp"), paired("lp", "lp_rescaled")
    lp_total = [r["interval"]["seconds"] / (r["lp"]["seconds"] + r["lp_bounds_seconds"]) for r in records
                if r["interval"]["status"] == "optimal" == r["lp"]["status"]]
    solved = {v: sum(r[v]["status"] == "optimal" for r in records) for v in ("interval", "lp", "lp_rescaled")}
    deep_reduction = [r["big_m_reduction_per_layer"][-1] for r in records]
    pool_used = [r for r in records if r["processes_used"] > 1]
    pool_speedup = [r["lp_bounds_seconds"] / r["lp_bounds_seconds_parallel"] for r in pool_used]
    def number(x: float) -> float | None:  # JSON has no NaN
        return None if math.isnan(x) else x

    metrics = {
        "solved_within_limit": solved,
        "solve_speedup_lp_vs_interval_median_solved": number(median(lp_speedup)),
        "solve_speedup_lp_incl_bounds_median_solved": number(median(lp_total)),
        "solve_speedup_rescaled_vs_lp_median_solved": number(median(rescale_speedup)),
        "gap_interval_minus_lp_median_unsolved": number(median(closed("interval", "lp"))),
        "gap_lp_minus_rescaled_median_unsolved": number(median(closed("lp", "lp_rescaled"))),
        "last_hidden_big_m_ratio_lp_over_interval_median": number(median(deep_reduction)),
        "obbt_pool_speedup_median": number(median(pool_speedup)),
        "records": records,
    }
    limit = f"HiGHS, threads=1, {cfg['time_limit']} s limit, one training and solver seed"
    claims = [
        Claim("LP-based bound tightening shrinks the big-M values of deeper layers (paper, Sec. 3.1)",
              f"largest big-M of the last hidden layer, LP / interval: median {median(deep_reduction):.2f} "
              f"over {len(records)} networks", "agrees" if median(deep_reduction) < 0.9 else "disagrees"),
        Claim("LP-based bound tightening reduces the MILP's solve time",
              f"solved within the limit: interval {solved['interval']}, LP {solved['lp']} of {len(records)}; "
              f"paired solve-time ratio interval / LP {median(lp_speedup):.2f}x over {len(lp_speedup)} networks "
              f"({median(lp_total):.2f}x counting the tightening); on unsolved ones the final gap of interval "
              f"minus LP has median {median(closed('interval', 'lp')):.3f}",
              verdict(lp_speedup), limit),
        Claim("Rescaling the network (every hidden big-M made 1) reduces solve time",
              f"solved: LP {solved['lp']}, LP+rescaled {solved['lp_rescaled']}; paired ratio LP / LP+rescaled "
              f"{median(rescale_speedup):.2f}x over {len(rescale_speedup)} networks",
              verdict(rescale_speedup),
              "rescaling is a diagonal scaling of the MILP's columns, which a solver's own scaling can undo; "
              "it moves magnitude from big-M into the next layer's weights, so the coefficient range can grow"),
        Claim(f"Spreading LP-based OBBT over up to {n_jobs} processes is faster than serial",
              f"the pool was used for {len(pool_used)} of {len(records)} networks"
              + (f"; median serial / pool time {median(pool_speedup):.2f}x" if pool_used else ""),
              ("agrees" if median(pool_speedup) > 1.1 else "disagrees") if pool_used else "not measured",
              "the cost model sends a layer to the pool only where a gain is predicted and cores are idle"),
    ]
    table = Table(
        "Bounds and solve effort on peaks surrogates",
        ["net", "train MSE", "LP ms/neuron", "LP bounds s (serial / pool)", "big-M ratio LP/IA per layer",
         "stable IA / LP", "binaries IA / LP", "solve s IA (status, nodes)", "solve s LP", "solve s LP+rescale"],
        rows,
        note=f"HiGHS threads=1, time limit {cfg['time_limit']} s, minimise the surrogate on [-2, 2]^2",
    )
    return StudyResult(
        part="relumip", study="bench_bounds", title="Bound tightening: cost, big-M reduction, solve effort",
        scale=scale, summary="LP-based OBBT against interval bounds on peaks surrogates of growing depth",
        config={**cfg, "seed": seed, "n_jobs": n_jobs}, seeds=[seed], metrics=metrics, tables=[table],
        claims=claims,
        data=[{"name": "peaks", "origin": "analytic function", "synthetic": False, "path": None,
               "detail": f"{cfg['n_train']} uniform samples of MATLAB's peaks function on [-2, 2]^2"}],
    )


SCALING = {
    # networks whose LP bounds are tightened with each process count; MILP bounds on the smaller ones
    "quick": {"nets": [(3, 100)], "milp_nets": [(3, 100)], "epochs": 30, "repeats": 1},
    # about 50 minutes with --jobs 1,2 on an idle 2-core machine; 6x256 (add it with --nets) is ~1.6 h more:
    # its deep layers take seconds per neuron, ~1 h of LPs in one process
    "full": {"nets": [(3, 100), (4, 128), (5, 200)], "milp_nets": [(3, 100), (4, 128)], "epochs": 60,
             "repeats": 2},
}


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (a call's worker pool is shut down when it returns)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, float]]:
    """``fn(*args, **kwargs)`` and its wall time, this process's CPU time and its workers'."""
    wall, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
    out = fn(*args, **kwargs)
    return out, {"wall": time.perf_counter() - wall, "cpu_here": time.process_time() - cpu,
                 "cpu_workers": _children_cpu() - children, "load": os.getloadavg()[0]}


def obbt_scaling(
    scale: str, jobs: list[int], seed: int, milp_time_limit: float, nets: list[tuple[int, int]] | None = None,
    executor: Any = None,
) -> StudyResult:
    """Wall and CPU time of LP and MILP bound tightening with 1 and more processes, in the same run.

    For each network and process count: the wall time and its ratio to one process (``speedup``), the
    processes the cost model chose for the busiest layer, the CPU time of this process and of the workers,
    and the speed-up those CPU times imply on idle cores (``speedup_idle_estimate``: serial CPU time over
    the busiest process's, taking the workers' share as even). The wall ratios hold for the machine as it
    was (its load average is recorded); on a busy machine they understate what idle cores give. Repeats
    alternate the order of the process counts. ``nets``: (depth, width) of the networks, instead of the
    scale's. ``executor``: a started :class:`~structlab.jobs.RayExecutor`, measured as one more column
    (``n_jobs`` "ray"; its workers' CPU time is not seen from here, so it has no idle-core estimate).
    """
    cfg = dict(SCALING[scale], nets=nets) if nets else SCALING[scale]
    rng = np.random.default_rng(seed)
    X = rng.uniform(LOWER, UPPER, size=(4000, 2))
    y = peaks(X)
    rows, records = [], []
    for depth, width in cfg["nets"]:
        name = f"{depth}x{width}"
        net = train(X, y, hidden=(width,) * depth, epochs=cfg["epochs"], seed=seed, indicators=False).net
        kinds = ["lp"] + (["milp"] if (depth, width) in cfg["milp_nets"] else [])
        start = None
        for kind in kinds:
            columns: list[int | str] = [*jobs, *(["ray"] if executor is not None else [])]
            measured: dict[int | str, list[dict[str, Any]]] = {k: [] for k in columns}
            for repeat in range(cfg["repeats"]):
                for k in columns if repeat % 2 == 0 else columns[::-1]:
                    where = {"executor": executor} if k == "ray" else {"n_jobs": k}
                    if kind == "lp":
                        bounds, m = _timed(lp_bounds, net, LOWER, UPPER, **where)
                        start = bounds if k == 1 else start  # where MILP tightening starts
                    else:
                        bounds, m = _timed(milp_bounds, net, LOWER, UPPER, time_limit=milp_time_limit, start=start,
                                           **where)
                    m["processes"] = bounds.processes
                    m["stable_fraction"] = stable_fraction(net, bounds)
                    measured[k].append(m)
                    print(json.dumps({"net": name, "kind": kind, "n_jobs": k, **m}), file=sys.stderr)
            serial = statistics.median(m["wall"] for m in measured[jobs[0]])
            serial_cpu = statistics.median(m["cpu_here"] for m in measured[jobs[0]])
            for k in columns:
                wall = statistics.median(m["wall"] for m in measured[k])
                busiest = statistics.median(max(m["cpu_here"], m["cpu_workers"] / max(m["processes"] - 1, 1))
                                            for m in measured[k])
                idle = None if k == "ray" else serial_cpu / busiest
                record = {"net": name, "kind": kind, "n_jobs": k, "wall_seconds": wall, "speedup": serial / wall,
                          "speedup_idle_estimate": idle,
                          "processes": max(m["processes"] for m in measured[k]),
                          "cpu_here": statistics.median(m["cpu_here"] for m in measured[k]),
                          "cpu_workers": statistics.median(m["cpu_workers"] for m in measured[k]),
                          "load": statistics.median(m["load"] for m in measured[k]), "repeats": measured[k],
                          "stable_fraction": measured[k][0]["stable_fraction"]}
                records.append(record)
                rows.append([name, kind.upper(), k, record["processes"], f"{wall:.1f}", f"{record['speedup']:.2f}",
                             "-" if idle is None else f"{idle:.2f}",
                             f"{record['cpu_here']:.1f} + {record['cpu_workers']:.1f}", f"{record['load']:.1f}"])

    def processes(r: dict[str, Any]) -> bool:
        return isinstance(r["n_jobs"], int) and r["n_jobs"] > 1

    def best(kind: str, key: str, which: Any = processes) -> float | None:
        values = [r[key] for r in records if r["kind"] == kind and which(r) and r[key] is not None]
        return max(values) if values else None

    claims = []
    for kind, what in (("lp", "LP"), ("milp", "MILP")):
        on_ray = [r for r in records if r["kind"] == kind and r["n_jobs"] == "ray"]
        sent = [r for r in on_ray if r["processes"] > 1]
        if on_ray:
            claims.append(Claim(
                f"{what}-based bound tightening as Ray tasks is faster than in one process",
                "; ".join(f"{r['net']}: wall {r['speedup']:.2f}x, {r['processes']} tasks at once at most "
                          f"(load {r['load']:.1f})" for r in on_ray),
                ("agrees" if max(r["speedup"] for r in sent) > 1.1 else "disagrees") if sent else "inconclusive",
                "Ratios against one process in the same run; the Ray instance was started before the timings. "
                "'inconclusive' where no layer was heavy enough to go out as tasks (1 task at once: all here).",
            ))
        group = [r for r in records if r["kind"] == kind and processes(r)]
        if not group:
            continue
        wall, idle = best(kind, "speedup"), best(kind, "speedup_idle_estimate")
        claims.append(Claim(
            f"{what}-based bound tightening is faster over several processes than in one",
            "; ".join(f"{r['net']}, {r['n_jobs']} processes: wall {r['speedup']:.2f}x, idle-core estimate "
                      f"{r['speedup_idle_estimate']:.2f}x (load {r['load']:.1f})" for r in group),
            "agrees" if wall > 1.1 else ("inconclusive" if idle > 1.1 else "disagrees"),
            "Ratios against one process in the same run. 'inconclusive' where only the CPU-time estimate "
            "shows a gain: the machine's other work took the cores the workers would have used.",
        ))
    return StudyResult(
        part="relumip", study="bench_obbt_scaling", title="Bound tightening over worker processes",
        scale=scale, summary="LP and MILP OBBT wall and CPU time against the number of processes",
        config={**cfg, "jobs": jobs, "seed": seed, "milp_time_limit": milp_time_limit,
                "cpu_count": runtime.cpu_count(), "pool_start_seconds": obbt.POOL_START_SECONDS},
        seeds=[seed],
        metrics={"records": records, "best_lp_speedup": best("lp", "speedup"),
                 "best_milp_speedup": best("milp", "speedup"),
                 "best_lp_speedup_idle_estimate": best("lp", "speedup_idle_estimate"),
                 "best_milp_speedup_idle_estimate": best("milp", "speedup_idle_estimate"),
                 "best_lp_speedup_ray": best("lp", "speedup", lambda r: r["n_jobs"] == "ray"),
                 "best_milp_speedup_ray": best("milp", "speedup", lambda r: r["n_jobs"] == "ray")},
        tables=[Table("OBBT wall time against worker processes",
                      ["net", "bounds", "n_jobs", "processes used", "wall s", "speed-up (wall)",
                       "speed-up (idle-core estimate)", "CPU s here + workers", "load average"], rows,
                      note=f"peaks surrogates; MILP bounds: {milp_time_limit} s per problem, starting from LP "
                           f"bounds; median of {cfg['repeats']} repeats; {runtime.cpu_count()} cores")],
        claims=claims,
        data=[{"name": "peaks", "origin": "analytic function", "synthetic": False, "path": None,
               "detail": "4000 uniform samples of MATLAB's peaks function on [-2, 2]^2"}],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=tuple(SCALES), default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="results")
    parser.add_argument("--jobs", default=None,
                        help="comma-separated process counts, 1 first: measure OBBT over processes instead "
                             "(e.g. 1,2 or 1,2,4,8,16)")
    parser.add_argument("--milp-time-limit", type=float, default=0.5, help="seconds per MILP-OBBT problem")
    parser.add_argument("--nets", default=None,
                        help="with --jobs: comma-separated DEPTHxWIDTH networks instead of the scale's (e.g. 6x256)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="with --jobs: 'ray' adds a column of Ray tasks (against the same serial time)")
    parser.add_argument("--address", metavar="HOST:PORT",
                        help="with --executor ray: the Ray cluster to join (default: a local instance)")
    args = parser.parse_args()
    if (args.executor == "ray" or args.address) and not args.jobs:
        parser.error("--executor ray/--address: expected --jobs as well (the Ray column is one of its columns)")
    start = time.perf_counter()
    if args.jobs:
        jobs = [int(j) for j in args.jobs.split(",")]
        if jobs[0] != 1:
            parser.error(f"--jobs {args.jobs}: expected 1 first (the baseline every ratio is against)")
        nets = None
        if args.nets:
            try:
                nets = [(int(d), int(w)) for d, w in (net.split("x") for net in args.nets.split(","))]
            except ValueError:
                parser.error(f"--nets {args.nets}: expected DEPTHxWIDTH items such as 3x100,6x256")
        executor = None
        if args.executor == "ray":
            from structlab.jobs import make_executor

            executor = make_executor("ray", args.address)
            executor.connect()  # started (or joined) before any timing
        try:
            result = obbt_scaling(args.scale, jobs, args.seed, args.milp_time_limit, nets, executor)
        finally:
            if executor is not None:
                executor.close()
    else:
        result = run(args.scale, args.seed)
    path = finish(result, args.results, wall_seconds=time.perf_counter() - start)
    out = {k: v for k, v in result.metrics.items() if k not in ("records",)}
    print(json.dumps({"results": str(path), **out, "claims": [c.verdict for c in result.claims]}, indent=2))


if __name__ == "__main__":
    main()
