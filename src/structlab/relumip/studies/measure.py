"""What the relumip studies share for measuring: training levers, plans, solving every instance with
every bound method, region counts, and the cache that makes a full-scale run resumable.

Every solve has the same fixed time limit and one HiGHS thread. Solve times count bound tightening and
model building ("total") unless a column says "solver".

Results of each trained network are appended to ``results/relumip/.cache/<study>-<scale>-<hash>.jsonl``
as they are measured, so an interrupted full-scale run resumes where it stopped. The hash covers the plan
and all code that measures (:func:`measurement_digest`): a change there starts afresh, a change to the
analysis reuses the measurements.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from structlab import reproduce, runtime
from structlab.relumip.bounds import Bounds, interval_bounds, lp_bounds, stable_fraction
from structlab.relumip.formulation import Formulation
from structlab.relumip.network import ReluNetwork
from structlab.relumip.problems import Dataset, Instance, solve_instance
from structlab.relumip.regions import count_linear_regions, estimate_linear_regions
from structlab.relumip.rescale import rescale
from structlab.relumip.training import TrainConfig, train
from structlab.reproduce import StudyContext
from structlab.results import StudyResult

METHODS = ("interval", "interval+rescale", "lp", "lp+rescale")


MethodName = Literal["interval", "interval+rescale", "lp", "lp+rescale"]


# ---------------------------------------------------------------------------- the levers
@dataclass(frozen=True)
class Lever:
    """A training lever of the paper and its strength: ``plain`` (none), ``l1``, ``rs``, ``clip``, ``dropout``."""

    name: Literal["plain", "l1", "rs", "clip", "dropout"]
    value: float = 0.0

    @property
    def label(self) -> str:
        return "plain" if self.name == "plain" else f"{self.name}={self.value:g}"

    def flags(self) -> dict[str, float]:
        """Keyword arguments of :class:`TrainConfig` for this lever."""
        return {} if self.name == "plain" else {self.name: self.value}


PLAIN = Lever("plain")


def levers(
    l1: Sequence[float], rs: Sequence[float], clip: Sequence[float], dropout: Sequence[float]
) -> tuple[Lever, ...]:
    """``plain`` and every lever at each of its strengths."""
    return (PLAIN, *(Lever("l1", v) for v in l1), *(Lever("rs", v) for v in rs),
            *(Lever("clip", v) for v in clip), *(Lever("dropout", v) for v in dropout))


@dataclass(frozen=True)
class Plan:
    """What one scale of a problem study runs.

    ``architectures``: hidden widths of the plain networks of the depth/width sweep (solved with
    ``sweep_methods``); ``lever_architecture``: the one every lever is trained on (solved with
    ``lever_methods``); seeds of training and of the solver; ``time_limit`` per solve in seconds.
    """

    architectures: tuple[tuple[int, ...], ...]
    lever_architecture: tuple[int, ...]
    levers: tuple[Lever, ...]
    train_seeds: tuple[int, ...]
    solver_seeds: tuple[int, ...]
    time_limit: float
    train: TrainConfig
    sweep_methods: tuple[str, ...] = ("interval", "lp")
    lever_methods: tuple[str, ...] = ("interval", "lp")
    sweep_solver_seeds: tuple[int, ...] = (0,)
    region_samples: int = 100_000
    data: dict[str, Any] = field(default_factory=dict)

    def networks(self) -> list[NetworkSpec]:
        """Every network to train, without repeats: the plain network of the lever architecture is solved
        with the sweep's and the lever grid's methods and solver seeds."""
        out: dict[tuple[tuple[int, ...], str, int], NetworkSpec] = {}
        for seed in self.train_seeds:
            for hidden in self.architectures:
                out[(hidden, PLAIN.label, seed)] = NetworkSpec(hidden, PLAIN, seed, self.sweep_methods,
                                                               self.sweep_solver_seeds)
            for lever in self.levers:
                key = (self.lever_architecture, lever.label, seed)
                spec = NetworkSpec(self.lever_architecture, lever, seed, self.lever_methods, self.solver_seeds)
                if key in out:
                    shared = out[key]
                    spec = replace(spec, methods=tuple(dict.fromkeys((*shared.methods, *spec.methods))),
                                   solver_seeds=tuple(dict.fromkeys((*shared.solver_seeds, *spec.solver_seeds))))
                out[key] = spec
        return list(out.values())


@dataclass(frozen=True)
class NetworkSpec:
    """One network of a plan: its hidden widths, lever, training seed, solve methods and solver seeds."""

    hidden: tuple[int, ...]
    lever: Lever
    seed: int
    methods: tuple[str, ...]
    solver_seeds: tuple[int, ...]

    @property
    def key(self) -> str:
        return (f"{arch_label(self.hidden)}|{self.lever.label}|{self.seed}|{','.join(self.methods)}|"
                f"{','.join(map(str, self.solver_seeds))}")


def arch_label(hidden: Sequence[int]) -> str:
    widths = set(hidden)
    return f"{len(hidden)}x{hidden[0]}" if len(widths) == 1 else "-".join(map(str, hidden))


# ----------------------------------------------------------------------------- measuring
def prepare(
    net: ReluNetwork, lower: np.ndarray, upper: np.ndarray, method: str, lp: Bounds | None = None
) -> tuple[ReluNetwork, Bounds, float]:
    """The network and bounds a solve method uses, and extra seconds spent on the way.

    ``interval``/``lp``: the network with interval/LP bounds. ``interval+rescale``: weights normalised
    (:func:`rescale` without bounds), then interval bounds. ``lp+rescale``: rescaled with its LP bounds
    (every hidden big-M at most 1), then LP bounds of the rescaled network; the first LP pass is the
    extra time. ``lp``: LP bounds of ``net`` on this box, if already computed.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    if method.startswith("lp") and lp is None:
        lp = lp_bounds(net, lower, upper, n_jobs=1)
    if method == "interval":
        return net, interval_bounds(net, lower, upper), 0.0
    if method == "lp":
        return net, lp, 0.0
    start = time.perf_counter()
    if method == "interval+rescale":
        scaled = rescale(net)
        return scaled, interval_bounds(scaled, lower, upper), time.perf_counter() - start
    scaled = rescale(net, lp)
    return scaled, lp_bounds(scaled, lower, upper, n_jobs=1), lp.seconds + time.perf_counter() - start


def bound_indicators(net: ReluNetwork, bounds: Bounds) -> dict[str, Any]:
    """Stable share, largest big-M per hidden layer and binaries of the big-M MILP under ``bounds``."""
    form = Formulation(net, bounds.input_lower, bounds.input_upper, bounds)
    return {
        "stable": stable_fraction(net, bounds),
        "big_m": [float(m.max(initial=0.0)) for m in form.big_m],
        "network_binaries": form.num_binaries,
        "bounds_seconds": bounds.seconds,
    }


def solve_all(
    net: ReluNetwork,
    instances: Sequence[Instance],
    methods: Sequence[str],
    solver_seeds: Sequence[int],
    time_limit: float,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Solve every instance with every method and solver seed; one record per solve."""
    records = []
    for inst in instances:
        lp = lp_bounds(net, inst.lower, inst.upper, n_jobs=1) if any(m.startswith("lp") for m in methods) else None
        for method in methods:
            used, bounds, extra = prepare(net, inst.lower, inst.upper, method, lp)
            indicators = bound_indicators(used, bounds)
            for seed in solver_seeds:
                res = solve_instance(used, inst, bounds, time_limit=time_limit, seed=seed)
                rec = res.as_record()
                rec["build_seconds"] += extra
                rec["seconds"] += extra
                rec.update(instance=inst.name, method=method, solver_seed=seed, x=_list(res.x),
                           **{f"instance_{k}": v for k, v in inst.meta.items()}, **indicators)
                records.append(rec)
                if log is not None and res.status != "optimal":
                    log(f"  {inst.name} {method} seed {seed}: {res.status} after {res.seconds:.1f} s")
    return records


def _list(x: np.ndarray | None) -> list[float] | None:
    return None if x is None else [float(v) for v in x]


def region_count(net: ReluNetwork, lower: np.ndarray, upper: np.ndarray, samples: int, seed: int = 0,
                 exact: bool = False) -> dict[str, Any]:
    """Linear regions on the box: exact (``exact``, 1-D/2-D) or the sampled Chao1 estimate with its interval."""
    start = time.perf_counter()
    if exact:
        return {"regions": float(count_linear_regions(net, lower, upper)), "regions_method": "exact",
                "regions_seconds": time.perf_counter() - start}
    est = estimate_linear_regions(net, lower, upper, n_samples=samples, seed=seed)
    return {"regions": est.estimate, "regions_low": est.low, "regions_high": est.high,
            "regions_observed": est.observed, "regions_method": "sampled",
            "regions_seconds": time.perf_counter() - start}


def train_regressor(
    ds: Dataset, hidden: tuple[int, ...], lever: Lever, seed: int, config: TrainConfig
) -> tuple[ReluNetwork, float]:
    """A surrogate of ``ds`` trained with ``lever``; returns it and the training seconds."""
    start = time.perf_counter()
    result = train(ds.x_train, ds.y_train, replace(config, hidden=hidden, seed=seed, indicators=False, **lever.flags()))
    return result.net, time.perf_counter() - start


def one_thread(fn: Callable[[StudyContext], StudyResult]) -> Callable[[StudyContext], StudyResult]:
    """Run a study with one PyTorch thread (small networks; solver pools use the cores), restored after."""
    @functools.wraps(fn)
    def wrapper(ctx: StudyContext) -> StudyResult:
        with runtime.torch_threads(1):
            return fn(ctx)
    return wrapper


# -------------------------------------------------------------------------- box problems
def run_box_problem(
    ctx: StudyContext,
    plan: Plan,
    ds: Dataset,
    instance: Instance,
    exact_regions: Callable[[tuple[int, ...]], bool],
    extra: Callable[[ReluNetwork, list[dict[str, Any]]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Train every network of ``plan`` on ``ds`` and solve ``instance`` (a fixed box) over each.

    One entry per network: its configuration, test error, indicators under interval and LP bounds,
    linear regions, ``extra(net, solves)`` and the list of solve records.
    """
    cache = RecordCache(ctx, plan)
    entries = []
    networks = plan.networks()
    for i, spec in enumerate(networks):
        hidden, lever, seed, key = spec.hidden, spec.lever, spec.seed, spec.key
        entry = cache.get(key)
        if entry is None:
            net, train_seconds = train_regressor(ds, hidden, lever, seed, plan.train)
            entry = {"arch": arch_label(hidden), "depth": len(hidden), "width": hidden[0], "lever": lever.label,
                     "lever_name": lever.name, "lever_value": lever.value, "seed": seed,
                     "test_error": ds.test_error(net), "train_seconds": train_seconds}
            entry["solves"] = solve_all(net, [instance], spec.methods, spec.solver_seeds, plan.time_limit, ctx.log)
            for method in ("interval", "lp"):  # the network's indicators under each kind of bounds
                entry.update(_indicators_of(net, ds, method, entry["solves"]))
            entry.update(region_count(net, ds.lower, ds.upper, plan.region_samples, seed, exact_regions(hidden)))
            if extra is not None:
                entry.update(extra(net, entry["solves"]))
            cache.put(key, entry)
        ctx.log(f"[{i + 1}/{len(networks)}] {key}: error {entry['test_error']:.4f}, "
                f"solved {sum(s['solved'] for s in entry['solves'])}/{len(entry['solves'])}")
        entries.append(entry)
    return entries


def _indicators_of(net: ReluNetwork, ds: Dataset, method: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Stable share, big-M, binaries and bound time under ``method``'s bounds, from a solve that used them
    (or computed here when no solve did)."""
    first = next((r for r in records if r["method"] == method), None)
    if first is None:
        bounds = interval_bounds(net, ds.lower, ds.upper) if method == "interval" else lp_bounds(
            net, ds.lower, ds.upper, n_jobs=1)
        first = bound_indicators(net, bounds)
    return {f"{k}_{method}": first[k] for k in ("stable", "big_m", "network_binaries", "bounds_seconds")}


# ------------------------------------------------------------------------------ resuming
def measurement_digest(plan: Any, measuring: Sequence[Callable[..., Any] | type] = ()) -> str:
    """A hash of everything that decides what a study measures: the plan, the library and problem modules
    (every module of the part but the studies and the command line), the shared measuring code here
    (:data:`MEASURING`) and the study's own (``measuring``). The analysis that turns measurements into
    tables and claims is left out, so changing it reuses them."""
    part = Path(__file__).parents[1]
    digest = reproduce.source_digest(part, exclude=("studies", "cli.py"), prefix=repr(plan).encode())
    for fn in (*MEASURING, *measuring):
        digest.update(inspect.getsource(fn).encode())
    return digest.hexdigest()[:10]


class RecordCache:
    """Per-network results appended to a JSON-lines file as they are measured (see module docstring)."""

    def __init__(self, ctx: StudyContext, plan: Any, measuring: Sequence[Callable[..., Any] | type] = ()) -> None:
        """``measuring``: the study's own measuring code, hashed with the plan (:func:`measurement_digest`)."""
        digest = measurement_digest(plan, measuring)
        self.path = ctx.out_dir / ".cache" / f"{ctx.study}-{ctx.scale}-{digest}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by an interruption
                    continue
                self.done[entry["key"]] = entry["value"]

    def get(self, key: str) -> dict[str, Any] | None:
        return self.done.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        line = json.dumps({"key": key, "value": value}, default=_json_default) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.done[key] = value


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


# What measurement_digest hashes besides the plan and the library: the code here that measures.
MEASURING: tuple[Callable[..., Any] | type, ...] = (
    Lever, Plan, NetworkSpec, arch_label, prepare, bound_indicators, solve_all, _list, region_count,
    train_regressor, run_box_problem, _indicators_of,
)
