"""The relumip studies of ``structlab reproduce``: the paper's claims (Plate et al., arXiv 2502.03016,
Sec. 5) re-measured on its three benchmark problems, and a head-to-head against OMLT.

* ``peaks``: networks of depth 2-5 and width 25-50 trained on the peaks function (big-M growth with
  depth; interval vs LP bounds; rescaling), then every training lever on one architecture.
* ``verification``: largest misclassification margin of Fashion-MNIST classifiers in L-inf balls.
* ``reformer``: OMLT's autothermal-reformer surrogate, maximising H2 under the N2 limit.
* ``omlt``: the same networks and instances encoded by OMLT (Pyomo, big-M) and by structlab.

Every solve has the same fixed time limit and one HiGHS thread. Solve times count bound tightening and
model building ("total") unless a column says "solver". A time-out counts at its measured time (the
limit), so medians are conservative for the slower side. A speed-up is claimed only where the paired
median ratio over seeds shows it and a Wilcoxon signed-rank test agrees (p < 0.05).

Results of each trained network are appended to ``results/relumip/.cache/<study>-<scale>-<hash>.jsonl``
as they are measured, so an interrupted full-scale run resumes where it stopped. The hash covers the plan
and all code that measures (:func:`measurement_digest`): a change there starts afresh, a change to the
analysis reuses the measurements.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from structlab import reproduce, runtime
from structlab.errors import DataNotFoundError
from structlab.relumip.bounds import Bounds, interval_bounds, lp_bounds, stable_fraction
from structlab.relumip.formulation import Formulation
from structlab.relumip.network import ReluNetwork
from structlab.relumip.problems import Dataset, Instance, peaks, reformer, solve_instance, verification
from structlab.relumip.regions import count_linear_regions, estimate_linear_regions
from structlab.relumip.rescale import rescale
from structlab.relumip.training import TrainConfig, train
from structlab.reproduce import StudyContext, study
from structlab.results import Claim, StudyResult, Table, spread

METHODS = ("interval", "interval+rescale", "lp", "lp+rescale")
MethodName = Literal["interval", "interval+rescale", "lp", "lp+rescale"]
SIGNIFICANCE = 0.05


# ------------------------------------------------------------------------------------ the levers
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


# ------------------------------------------------------------------------------------ measuring
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


# ------------------------------------------------------------------------------------ resuming
def measurement_digest(plan: Any) -> str:
    """A hash of everything that decides what a study measures: the plan, the library and problem modules
    (every module of the part but this one and the command line) and the measuring functions here. The
    analysis that turns measurements into tables and claims is left out, so changing it reuses them."""
    digest = reproduce.source_digest(Path(__file__).parent, exclude=("studies.py", "cli.py"),
                                     prefix=repr(plan).encode())
    for fn in MEASURING:
        digest.update(inspect.getsource(fn).encode())
    return digest.hexdigest()[:10]


class RecordCache:
    """Per-network results appended to a JSON-lines file as they are measured (see module docstring)."""

    def __init__(self, ctx: StudyContext, plan: Any) -> None:
        digest = measurement_digest(plan)
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


# ------------------------------------------------------------------------------------ statistics
def paired(base: dict[Any, float], other: dict[Any, float]) -> dict[str, Any]:
    """Paired comparison of times ``other`` against ``base`` over their common keys.

    ``ratio``: median of ``other/base`` (< 1: ``other`` is faster); ``p``: two-sided Wilcoxon
    signed-rank p-value on the log ratios (1.0 when every pair is equal); ``faster``: pairs where
    ``other`` was faster.
    """
    from scipy.stats import wilcoxon

    keys = sorted(set(base) & set(other), key=str)
    a = np.array([base[k] for k in keys], dtype=float)
    b = np.array([other[k] for k in keys], dtype=float)
    if not keys:
        return {"n": 0, "ratio": math.nan, "p": math.nan, "faster": 0}
    log_ratio = np.log(np.maximum(b, 1e-6) / np.maximum(a, 1e-6))
    p = 1.0
    if np.any(log_ratio != 0) and len(keys) >= 2:
        p = float(wilcoxon(log_ratio).pvalue)
    return {"n": len(keys), "ratio": float(np.exp(np.median(log_ratio))), "p": p,
            "faster": int((b < a).sum()), "median_base": float(np.median(a)), "median_other": float(np.median(b))}


def verdict_for_speedup(result: dict[str, Any], expect_faster: bool = True) -> str:
    """``agrees`` when the paired ratio goes the expected way and is significant, else ``disagrees``
    (significantly the other way) or ``inconclusive``."""
    if not result["n"]:
        return "not measured"
    significant = result["p"] < SIGNIFICANCE
    faster = result["ratio"] < 1
    if significant and faster == expect_faster:
        return "agrees"
    if significant:
        return "disagrees"
    return "inconclusive"


def fmt_paired(result: dict[str, Any]) -> str:
    if not result["n"]:
        return "no pairs"
    return (f"median time ratio {result['ratio']:.2f} (Wilcoxon p={result['p']:.3g}, n={result['n']} pairs, "
            f"faster in {result['faster']})")


def median_iqr(values: Iterable[float], digits: int = 3) -> str:
    """``median [q1, q3]`` of the finite values (``n/a`` if none)."""
    vals = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not vals.size:
        return "n/a"
    q1, med, q3 = np.percentile(vals, [25, 50, 75])
    return f"{_g(med, digits)} [{_g(q1, digits)}, {_g(q3, digits)}]"


def _g(v: float, digits: int) -> str:
    return f"{v:.{digits}g}"


def times_by(records: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Any],
             value: str = "seconds") -> dict[Any, float]:
    return {key(r): float(r[value]) for r in records}


# ------------------------------------------------------------------------------------ figures
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def performance_profile(groups: dict[str, list[dict[str, Any]]], time_limit: float, path: Path, title: str) -> None:
    """Share of instances solved (to optimality) within time t, per group, t on a log axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, recs in groups.items():
        if not recs:
            continue
        solved = np.sort([r["seconds"] for r in recs if r["solved"]])
        xs = np.concatenate([[1e-2], solved, [time_limit * 1.5]])
        ys = np.concatenate([[0], np.arange(1, solved.size + 1), [solved.size]]) / len(recs)
        ax.step(xs, ys, where="post", label=f"{label} ({solved.size}/{len(recs)})")
    ax.axvline(time_limit, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("time incl. bounds and model building (s)")
    ax.set_ylabel("share of instances solved")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def trade_off_figure(points: list[dict[str, Any]], path: Path, title: str, error_label: str) -> None:
    """Test error against median solve time per lever (colour: median linear regions or stable share)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colour = np.array([p["colour"] for p in points], dtype=float)
    sc = ax.scatter([p["error"] for p in points], [p["time"] for p in points], c=colour, cmap="viridis", s=40,
                    norm=_log_norm(colour) if points and points[0].get("log_colour") else None)
    for p in points:
        ax.annotate(p["label"], (p["error"], p["time"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.margins(0.15)  # room for the labels
    ax.set_xlabel(error_label)
    ax.set_ylabel("median solve time (s)")
    ax.set_title(title)
    if points:
        fig.colorbar(sc, ax=ax, label=points[0]["colour_label"])
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _log_norm(values: np.ndarray) -> Any:
    from matplotlib.colors import LogNorm

    finite = values[np.isfinite(values) & (values > 0)]
    return LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size else None


def big_m_figure(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Largest big-M of each hidden layer (median over seeds) against the layer's depth, per architecture."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, method in zip(axes, ("interval", "lp"), strict=True):
        by_arch: dict[str, list[list[float]]] = defaultdict(list)
        for r in rows:
            by_arch[r["arch"]].append(r[f"big_m_{method}"])
        for arch, per_seed in sorted(by_arch.items()):
            med = np.median(np.array(per_seed, dtype=float), axis=0)
            ax.plot(np.arange(1, med.size + 1), med, marker="o", label=arch)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("hidden layer")
        ax.set_title(f"{method} bounds")
    axes[0].set_ylabel("largest big-M in the layer")
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ------------------------------------------------------------------------------------ training
def train_regressor(
    ds: Dataset, hidden: tuple[int, ...], lever: Lever, seed: int, config: TrainConfig
) -> tuple[ReluNetwork, float]:
    """A surrogate of ``ds`` trained with ``lever``; returns it and the training seconds."""
    start = time.perf_counter()
    result = train(ds.x_train, ds.y_train, replace(config, hidden=hidden, seed=seed, indicators=False, **lever.flags()))
    return result.net, time.perf_counter() - start


def arch_label(hidden: Sequence[int]) -> str:
    widths = set(hidden)
    return f"{len(hidden)}x{hidden[0]}" if len(widths) == 1 else "-".join(map(str, hidden))


def _one_thread(fn: Callable[[StudyContext], StudyResult]) -> Callable[[StudyContext], StudyResult]:
    """Run a study with one PyTorch thread (small networks; solver pools use the cores), restored after."""
    @functools.wraps(fn)
    def wrapper(ctx: StudyContext) -> StudyResult:
        with runtime.torch_threads(1):
            return fn(ctx)
    return wrapper


# ------------------------------------------------------------------------------------ box problems
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


def stored_measurements(entries: Sequence[dict[str, Any]], drop: Sequence[str] = ()) -> dict[str, Any]:
    """What a results file keeps of the measurements: every network (without its solves) and every solve
    record merged with its network's fields (less the fields in ``drop``); :func:`entries_from_stored` is
    the inverse, so the analysis can be re-run on a results file."""
    return {"networks": [{k: v for k, v in e.items() if k != "solves"} for e in entries],
            "solves": [{k: v for k, v in s.items() if k != "solves" and k not in drop} for s in solves(entries)]}


def entries_from_stored(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-network entries, each with its solve records, from a results file's ``metrics``."""
    def key(record: dict[str, Any]) -> tuple[Any, ...]:
        return record["arch"], record["lever"], record["seed"]

    by_network: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for record in metrics["solves"]:
        by_network.setdefault(key(record), []).append({k: v for k, v in record.items() if k != "solves"})
    return [{**n, "solves": by_network.get(key(n), [])} for n in metrics["networks"]]


def solves(entries: Iterable[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """Solve records of the entries whose fields equal ``match`` (fields of a solve or of its network)."""
    out = []
    for e in entries:
        for s in e["solves"]:
            merged = {**e, **s}
            if all(merged.get(k) == v for k, v in match.items()):
                out.append(merged)
    return out


def optimum_agreement(entries: Iterable[dict[str, Any]]) -> tuple[float, int]:
    """Largest relative difference between the optima (forward-pass values) that different methods and
    seeds proved for the same network and instance, and how many instances were compared."""
    worst, compared = 0.0, 0
    for e in entries:
        by_instance: dict[str, list[float]] = defaultdict(list)
        for s in e["solves"]:
            if s["solved"] and s["value"] is not None:
                by_instance[s["instance"]].append(s["value"])
        for values in by_instance.values():
            if len(values) > 1:
                compared += 1
                worst = max(worst, (max(values) - min(values)) / max(1.0, abs(max(values, key=abs))))
    return worst, compared


def lever_table(entries: list[dict[str, Any]], arch: str, method: str, title: str, error_label: str) -> Table:
    """Per lever on ``arch``: test error, regions, stable share, largest big-M, time, nodes, solved, gap."""
    rows = []
    for label in dict.fromkeys(e["lever"] for e in entries if e["arch"] == arch):
        nets = [e for e in entries if e["arch"] == arch and e["lever"] == label]
        recs = solves(nets, method=method)
        rows.append([
            label, len(nets), median_iqr(e["test_error"] for e in nets),
            median_iqr(e["regions"] for e in nets),
            median_iqr(e["stable_lp"] for e in nets), median_iqr(max(e["big_m_lp"]) for e in nets),
            median_iqr(r["seconds"] for r in recs), median_iqr(r["nodes"] for r in recs),
            f"{sum(r['solved'] for r in recs)}/{len(recs)}",
            median_iqr(r["gap"] for r in recs if not r["solved"]),
        ])
    return Table(title, ["lever", "networks", error_label, "linear regions", "stable share (LP)",
                         "largest big-M (LP)", f"time {method} (s)", "nodes", "solved", "gap of unsolved"],
                 rows, note="median [q1, q3] over training and solver seeds")


def lever_claims(
    entries: list[dict[str, Any]], arch: str, method: str, time_limit: float
) -> tuple[list[Claim], dict[str, Any]]:
    """Does each lever speed up solving (paired over seeds against the plain network) and at what cost in
    test error; do fewer regions / more stable neurons go with faster solves (Spearman)?"""
    from scipy.stats import spearmanr

    nets = [e for e in entries if e["arch"] == arch]
    def key(r: dict[str, Any]) -> Any:
        return (r["seed"], r["solver_seed"], r["instance"])

    base = times_by(solves(nets, lever="plain", method=method), key)
    plain_error = float(np.median([e["test_error"] for e in nets if e["lever"] == "plain"]))
    results, lines = {}, []
    for label in dict.fromkeys(e["lever"] for e in nets if e["lever"] != "plain"):
        other = times_by(solves(nets, lever=label, method=method), key)
        res = paired(base, other)
        res["error"] = float(np.median([e["test_error"] for e in nets if e["lever"] == label]))
        results[label] = res
        lines.append(f"{label}: {fmt_paired(res)}, median test error {res['error']:.4g} (plain {plain_error:.4g})")
    claims = []
    names = {"l1": "L1 regularisation", "rs": "the ReLU-stability (RS) loss", "clip": "a clipped ReLU",
             "dropout": "dropout"}
    for family, name in names.items():
        family_results = {k: r for k, r in results.items() if k.startswith(family + "=")}
        if not family_results:
            continue
        verdicts = {k: verdict_for_speedup(r) for k, r in family_results.items()}
        verdict = ("agrees" if all(v == "agrees" for v in verdicts.values())
                   else "partly agrees" if "agrees" in verdicts.values()
                   else "disagrees" if "disagrees" in verdicts.values() else "inconclusive")
        claims.append(Claim(
            f"Training with {name} makes the MILP faster to solve.",
            "; ".join(line for line in lines if line.split(":")[0] in family_results),
            verdict,
            f"Paired over training and solver seeds on {arch} with {method} bounds against the plain network, "
            f"time limit {time_limit:g} s; a time-out counts at the limit.",
        ))
    med = {e["lever"] + f"|{e['seed']}": e for e in nets}
    per_net_time = {k: float(np.median([s["seconds"] for s in e["solves"] if s["method"] == method]))
                    for k, e in med.items()}
    keys = list(per_net_time)
    rho_regions = spearmanr([med[k]["regions"] for k in keys], [per_net_time[k] for k in keys])
    rho_stable = spearmanr([med[k]["stable_lp"] for k in keys], [per_net_time[k] for k in keys])
    rho_error = spearmanr([med[k]["test_error"] for k in keys], [per_net_time[k] for k in keys])
    stats = {"levers": results, "plain_error": plain_error, "spearman_regions_time": float(rho_regions.statistic),
             "spearman_regions_time_p": float(rho_regions.pvalue),
             "spearman_stable_time": float(rho_stable.statistic), "spearman_stable_time_p": float(rho_stable.pvalue),
             "spearman_error_time": float(rho_error.statistic), "spearman_error_time_p": float(rho_error.pvalue)}
    claims.append(Claim(
        "Regularisation works by cutting linear regions and raising the share of stable neurons; there is a "
        "trade-off between a network's redundancy (accuracy, regions) and the cost of optimising over it.",
        f"over {len(keys)} networks: Spearman(regions, time) = {rho_regions.statistic:.2f} "
        f"(p={rho_regions.pvalue:.2g}), Spearman(stable share, time) = {rho_stable.statistic:.2f} "
        f"(p={rho_stable.pvalue:.2g}), Spearman(test error, time) = {rho_error.statistic:.2f} "
        f"(p={rho_error.pvalue:.2g})",
        _tradeoff_verdict(rho_regions, rho_stable, rho_error),
        "Positive regions-time and negative stable-time and error-time correlations are what the paper's "
        "trade-off predicts; each network's time is its median over solver seeds.",
    ))
    return claims, stats


def largest_gain_claim(plain: list[dict[str, Any]], lever_stats: dict[str, Any], arch: str) -> Claim:
    """Training levers against the levers applied to a trained network (LP bounds, rescaling), on the
    plain networks of the lever grid's architecture."""
    _, post = method_claims(plain, math.nan)
    after = {"LP bounds (vs interval)": post.get("lp_vs_interval", {}).get("total"),
             "rescaling (vs LP bounds)": post.get("lp+rescale_vs_lp", {}).get("solver")}
    after = {k: v for k, v in after.items() if v and v["n"]}
    # significantly faster at no more than twice the plain network's test error
    during = {k: v for k, v in lever_stats["levers"].items()
              if verdict_for_speedup(v) == "agrees" and v["error"] <= 2 * lever_stats["plain_error"]}
    best_after = min((v["ratio"] for v in after.values()), default=math.nan)
    parts = [f"{k}: median time ratio {v['ratio']:.2f} (p={v['p']:.2g})" for k, v in after.items()]
    if during:
        best = min(during, key=lambda k: during[k]["ratio"])
        parts.append(f"best significant training lever at most doubling the test error: {best}, ratio "
                     f"{during[best]['ratio']:.2f} at test error {during[best]['error']:.3g} "
                     f"(plain {lever_stats['plain_error']:.3g})")
    else:
        parts.append("no training lever was significantly faster at most doubling the test error")
    return Claim(
        "Regularisation during training gives the largest gains, more than bound tightening or rescaling.",
        "; ".join(parts),
        "inconclusive" if not during or math.isnan(best_after)
        else ("agrees" if during[best]["ratio"] < best_after else "disagrees"),
        f"On the plain {arch} networks (paired over seeds). The training levers trade accuracy for speed; see "
        "the trade-off figure.",
    )


def _tradeoff_verdict(rho_regions: Any, rho_stable: Any, rho_error: Any) -> str:
    agree = [rho_regions.statistic > 0 and rho_regions.pvalue < SIGNIFICANCE,
             rho_stable.statistic < 0 and rho_stable.pvalue < SIGNIFICANCE,
             rho_error.statistic < 0 and rho_error.pvalue < SIGNIFICANCE]
    if all(agree):
        return "agrees"
    if any(agree):
        return "partly agrees"
    return "inconclusive"


def final_gaps(
    base: list[dict[str, Any]], other: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]
) -> dict[str, Any]:
    """Paired relative gaps at the time limit where both sides stopped there with an incumbent (< 1: ``other``
    closed more of the gap)."""
    a = {key(r): r["gap"] for r in base if not r["solved"] and math.isfinite(r["gap"])}
    b = {key(r): r["gap"] for r in other if not r["solved"] and math.isfinite(r["gap"])}
    return paired(a, b)


def method_claims(entries: list[dict[str, Any]], time_limit: float) -> tuple[list[Claim], dict[str, Any]]:
    """LP vs interval bounds (total time) and rescaling (solver time), paired on the same networks."""
    def key(r: dict[str, Any]) -> Any:
        return (r["arch"], r["lever"], r["seed"], r["solver_seed"], r["instance"])

    stats: dict[str, Any] = {}
    methods = {s["method"] for e in entries for s in e["solves"]}
    claims = []
    if {"interval", "lp"} <= methods:
        interval = solves(entries, method="interval")
        lp = solves(entries, method="lp")
        total = paired(times_by(interval, key), times_by(lp, key))
        solver = paired(times_by(interval, key, "solve_seconds"), times_by(lp, key, "solve_seconds"))
        nodes = paired(times_by(interval, key, "nodes"), times_by(lp, key, "nodes"))
        shrink = [max(e["big_m_lp"]) / max(e["big_m_interval"]) for e in entries if max(e["big_m_interval"]) > 0]
        gaps = final_gaps(interval, lp, key)
        stats["lp_vs_interval"] = {"total": total, "solver": solver, "nodes": nodes, "gap_at_limit": gaps,
                                   "largest_big_m_ratio": spread(shrink)}
        claims.append(Claim(
            "LP-based bound tightening shrinks the big-M coefficients and the run time.",
            f"largest big-M (LP/interval) median {np.median(shrink):.2f}; total time (bounds included): "
            f"{fmt_paired(total)}; solver time only: {fmt_paired(solver)}; solved "
            f"{sum(r['solved'] for r in lp)}/{len(lp)} (LP) vs {sum(r['solved'] for r in interval)}/{len(interval)}"
            + (f"; where both hit the limit, gap ratio LP/interval {gaps['ratio']:.2f} (p={gaps['p']:.2g}, "
               f"n={gaps['n']})" if gaps["n"] else ""),
            verdict_for_speedup(total) if np.median(shrink) < 1 else "disagrees",
            f"Paired on the same networks, instances and solver seeds; time limit {time_limit:g} s.",
        ))
    for plain_m, scaled_m in (("interval", "interval+rescale"), ("lp", "lp+rescale")):
        if {plain_m, scaled_m} <= methods:
            a, b = solves(entries, method=plain_m), solves(entries, method=scaled_m)
            solver = paired(times_by(a, key, "solve_seconds"), times_by(b, key, "solve_seconds"))
            nodes = paired(times_by(a, key, "nodes"), times_by(b, key, "nodes"))
            stats[f"{scaled_m}_vs_{plain_m}"] = {"solver": solver, "nodes": nodes}
            claims.append(Claim(
                f"Rescaling the trained network shrinks big-M and run time ({scaled_m} vs {plain_m}).",
                f"solver time: {fmt_paired(solver)}; nodes ratio {nodes['ratio']:.2f}; solved "
                f"{sum(r['solved'] for r in b)}/{len(b)} vs {sum(r['solved'] for r in a)}/{len(a)}",
                verdict_for_speedup(solver),
                "Rescaling changes every big-M but not the LP relaxation's geometry (it is an exact change of "
                "variables), so any effect comes from the solver's numerics and heuristics; solver time is "
                "compared because the bounds are the same work either way.",
            ))
    return claims, stats


# ------------------------------------------------------------------------------------ peaks study
PEAKS_PLANS = {
    "quick": Plan(
        architectures=((16, 16), (16, 16, 16)), lever_architecture=(16, 16),
        levers=levers(l1=(1e-3,), rs=(1e-2,), clip=(), dropout=()),
        train_seeds=(0, 1), solver_seeds=(0,), time_limit=4.0,
        train=TrainConfig(epochs=30, batch_size=64), sweep_methods=("interval", "lp", "lp+rescale"),
        region_samples=20_000, data={"n_train": 512, "n_test": 1024},
    ),
    "full": Plan(
        architectures=tuple((w,) * d for w in (25, 50) for d in (2, 3, 4, 5)), lever_architecture=(25, 25, 25),
        levers=levers(l1=(1e-4, 1e-3, 1e-2), rs=(1e-3, 1e-2, 1e-1), clip=(0.5, 1.0), dropout=(0.05, 0.2)),
        train_seeds=(0, 1, 2), solver_seeds=(0, 1), time_limit=30.0,
        train=TrainConfig(epochs=100, batch_size=64), sweep_methods=("interval", "lp", "lp+rescale"),
        lever_methods=("lp",),
        region_samples=100_000, data={"n_train": 2048, "n_test": 2048},
    ),
}


@study("relumip", "peaks", title="Peaks surrogate: big-M growth, bound tightening, rescaling and training levers")
@_one_thread
def peaks_study(ctx: StudyContext) -> StudyResult:
    plan = PEAKS_PLANS[ctx.scale]
    ds = peaks.dataset(**plan.data)
    minimum, argmin = peaks.true_minimum()
    inst = peaks.instance()

    def regret(net: ReluNetwork, recs: list[dict[str, Any]]) -> dict[str, Any]:
        found = [r for r in recs if r["x"] is not None and r["solved"]]
        return {"regret": float(np.median([peaks.regret(np.array(r["x"]), minimum) for r in found])) if found else None}

    narrow = {h for h in plan.architectures if h[0] <= 25} | {plan.lever_architecture}
    entries = run_box_problem(ctx, plan, ds, inst, exact_regions=lambda h: h in narrow and len(h) <= 3,
                              extra=regret)
    lever_arch = arch_label(plan.lever_architecture)
    sweep = [e for e in entries if e["lever"] == "plain"]

    # big-M growth with depth: the largest big-M of the last hidden layer against the first one's
    growth_rows, growth = [], {}
    for arch in dict.fromkeys(e["arch"] for e in sweep):
        nets = [e for e in sweep if e["arch"] == arch]
        last_interval = [e["big_m_interval"][-1] for e in nets]
        last_lp = [e["big_m_lp"][-1] for e in nets]
        growth[arch] = {"interval": spread(last_interval), "lp": spread(last_lp)}
        recs_i, recs_l = solves(nets, method="interval"), solves(nets, method="lp")
        growth_rows.append([
            arch, median_iqr(e["test_error"] for e in nets), median_iqr(e["regions"] for e in nets),
            median_iqr(e["stable_interval"] for e in nets), median_iqr(e["stable_lp"] for e in nets),
            median_iqr(last_interval), median_iqr(last_lp),
            median_iqr(r["seconds"] for r in recs_i), f"{sum(r['solved'] for r in recs_i)}/{len(recs_i)}",
            median_iqr(r["seconds"] for r in recs_l), f"{sum(r['solved'] for r in recs_l)}/{len(recs_l)}",
        ])
    depth_slope = _log_growth(sweep)
    claims = [Claim(
        "Big-M coefficients grow exponentially with the number of layers.",
        "; ".join(f"width {w}: largest big-M x{np.exp(s['interval']):.2f} per layer (interval), "
                  f"x{np.exp(s['lp']):.2f} (LP)" for w, s in depth_slope.items()),
        "agrees" if all(s["interval"] > 0 for s in depth_slope.values()) and depth_slope else "disagrees",
        "Slope of log(largest big-M of the last hidden layer) against depth, least squares over the plain "
        "networks of each width (all training seeds); a factor above 1 per layer is exponential growth.",
    )]
    mclaims, mstats = method_claims(sweep, plan.time_limit)
    claims += mclaims
    lclaims, lstats = lever_claims(entries, lever_arch, "lp", plan.time_limit)
    claims += lclaims
    claims.append(largest_gain_claim([e for e in sweep if e["arch"] == lever_arch], lstats, lever_arch))
    worst, compared = optimum_agreement(entries)
    regrets = [e["regret"] for e in entries if e.get("regret") is not None]
    claims.append(Claim(
        "The MILP finds the surrogate's global minimum, and a good surrogate's minimum is near the true one "
        f"({minimum:.5f}).",
        f"methods and seeds agree on every optimum to {worst:.1e} (relative, {compared} networks); "
        f"peaks(x*) - min peaks: median {np.median(regrets) if regrets else math.nan:.3g} over {len(regrets)} networks",
        "agrees" if worst < 1e-5 else "disagrees",
        "Each optimum is re-evaluated by the network's forward pass at the returned input.",
    ))

    figures = []
    path = ctx.figure_path("big_m.png")
    big_m_figure(sweep, path, "Peaks: largest big-M per hidden layer (median over seeds)")
    figures.append(path.name)
    path = ctx.figure_path("profile_methods.png")
    performance_profile({m: solves(sweep, method=m) for m in plan.sweep_methods}, plan.time_limit, path,
                        "Peaks, plain networks: bounds and rescaling")
    figures.append(path.name)
    path = ctx.figure_path("profile_levers.png")
    lever_nets = [e for e in entries if e["arch"] == lever_arch]
    labels = dict.fromkeys(e["lever"] for e in lever_nets)
    performance_profile({lab: solves(lever_nets, lever=lab, method="lp") for lab in labels},
                        plan.time_limit, path, f"Peaks {lever_arch}: training levers (LP bounds)")
    figures.append(path.name)
    path = ctx.figure_path("tradeoff.png")
    trade_off_figure(_tradeoff_points(lever_nets, "lp"), path, f"Peaks {lever_arch}: accuracy vs solve time",
                     "test error (normalised RMSE)")
    figures.append(path.name)
    path = ctx.figure_path("regions.png")
    _regions_figure(ctx, ds, plan, lever_nets, path)
    figures.append(path.name)

    tables = [
        Table("Depth and width sweep (plain networks)",
              ["network", "test error (nRMSE)", "linear regions", "stable (interval)", "stable (LP)",
               "largest big-M, last layer (interval)", "... (LP)", "time interval (s)", "solved",
               "time LP (s)", "solved"], growth_rows,
              note=f"median [q1, q3] over {len(plan.train_seeds)} training seeds x {len(plan.sweep_solver_seeds)} "
                   f"solver seeds; time limit {plan.time_limit:g} s; regions exact for width <= 25 up to depth 3, "
                   "else sampled (Chao1)"),
        _method_table(sweep, plan.sweep_methods, "Solve methods on the plain networks"),
        lever_table(entries, lever_arch, "lp", f"Training levers on {lever_arch} (LP bounds)", "test error (nRMSE)"),
        _region_check_table(entries),
    ]
    return StudyResult(
        part="relumip", study="peaks", title="Peaks surrogate", scale=ctx.scale,
        summary=_summary(claims),
        config=_plan_record(plan) | {"true_minimum": minimum, "true_argmin": argmin.tolist(),
                                     "published_minimum": peaks.PUBLISHED_MINIMUM},
        seeds=list(plan.train_seeds), data=[ds.source.as_record()],
        metrics={"growth": growth, "growth_per_layer": depth_slope, **mstats, **lstats,
                 "optimum_agreement": worst, "regret": spread(regrets),
                 **stored_measurements(entries)},
        tables=tables, figures=figures, claims=claims,
    )


def _log_growth(sweep: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per width: least-squares slope of log(largest big-M of the last hidden layer) on depth."""
    out = {}
    for width in sorted({e["width"] for e in sweep}):
        nets = [e for e in sweep if e["width"] == width]
        if len({e["depth"] for e in nets}) < 2:
            continue
        depth = np.array([e["depth"] for e in nets], dtype=float)
        out[str(width)] = {
            method: float(np.polyfit(depth, np.log([max(e[f"big_m_{method}"][-1], 1e-12) for e in nets]), 1)[0])
            for method in ("interval", "lp")
        }
    return out


def _method_table(entries: list[dict[str, Any]], methods: Sequence[str], title: str) -> Table:
    rows = []
    for m in methods:
        recs = solves(entries, method=m)
        rows.append([m, median_iqr(r["seconds"] for r in recs), median_iqr(r["build_seconds"] for r in recs),
                     median_iqr(r["solve_seconds"] for r in recs), median_iqr(r["nodes"] for r in recs),
                     median_iqr(max(r["big_m"]) for r in recs), f"{sum(r['solved'] for r in recs)}/{len(recs)}",
                     median_iqr(r["gap"] for r in recs if not r["solved"])])
    return Table(title, ["method", "total time (s)", "bounds + build (s)", "solver (s)", "nodes",
                         "largest big-M", "solved", "gap of unsolved"], rows,
                 note="median [q1, q3] over networks, training and solver seeds")


def _region_check_table(entries: list[dict[str, Any]]) -> Table:
    rows = [[e["arch"], e["lever"], e["seed"], e["regions_method"], f"{e['regions']:.0f}"] for e in entries
            if e["regions_method"] == "exact" and e["seed"] == entries[0]["seed"]]
    return Table("Linear regions counted exactly (first training seed)",
                 ["network", "lever", "seed", "method", "regions"], rows)


def _tradeoff_points(nets: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    points = []
    for label in dict.fromkeys(e["lever"] for e in nets):
        group = [e for e in nets if e["lever"] == label]
        recs = solves(group, method=method)
        points.append({"label": label, "error": float(np.median([e["test_error"] for e in group])),
                       "time": float(np.median([r["seconds"] for r in recs])),
                       "colour": float(np.median([e["regions"] for e in group])), "colour_label": "linear regions",
                       "log_colour": True})
    return points


def _regions_figure(ctx: StudyContext, ds: Dataset, plan: Plan, nets: list[dict[str, Any]], path: Path) -> None:
    """Linear regions of the plain network and of the lever with the fewest regions (first training seed)."""
    from structlab.relumip.regions import plot_linear_regions

    plt = _pyplot()
    seed = plan.train_seeds[0]
    first = [e for e in nets if e["seed"] == seed]
    fewest = min((e for e in first if e["lever"] != "plain"), key=lambda e: e["regions"], default=None)
    chosen = [PLAIN] + ([next(lv for lv in plan.levers if lv.label == fewest["lever"])] if fewest else [])
    fig, axes = plt.subplots(1, len(chosen), figsize=(5 * len(chosen), 4.5), squeeze=False)
    for ax, lever in zip(axes[0], chosen, strict=True):
        net, _ = train_regressor(ds, plan.lever_architecture, lever, seed, plan.train)
        try:
            plot_linear_regions(net, ds.lower, ds.upper, ax=ax)
        except RuntimeError as err:  # too many regions to draw
            ax.text(0.5, 0.5, str(err), ha="center", wrap=True)
        ax.set_title(f"{arch_label(plan.lever_architecture)}, {lever.label}: {ax.get_title()}")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    ctx.log(f"regions figure: {path.name}")


def _plan_record(plan: Plan) -> dict[str, Any]:
    out = asdict(plan)
    out["levers"] = [lv.label for lv in plan.levers]
    out["architectures"] = [arch_label(h) for h in plan.architectures]
    out["lever_architecture"] = arch_label(plan.lever_architecture)
    return out


def _summary(claims: list[Claim]) -> str:
    counts = defaultdict(int)
    for c in claims:
        counts[c.verdict] += 1
    return "; ".join(f"{n} {v}" for v, n in counts.items()) + f" of {len(claims)} claims."


# ------------------------------------------------------------------------------------ verification
@dataclass(frozen=True)
class VerificationPlan:
    """What one scale of the ``verification`` study runs.

    ``networks``: (hidden widths, lever) of every classifier, each trained with every seed; the plain
    network of ``hidden`` (the first one) is also solved with interval bounds.
    """

    hidden: tuple[int, ...]
    deep: tuple[int, ...]
    levers: tuple[Lever, ...]
    train_seeds: tuple[int, ...]
    n_images: int
    epsilons: tuple[float, ...]
    time_limit: float
    train: TrainConfig
    n_train: int | None
    region_samples: int = 5_000
    solver_seed: int = 0


VERIFICATION_PLANS = {
    "quick": VerificationPlan(
        hidden=(20, 20), deep=(20, 20, 20), levers=levers(l1=(1e-4,), rs=(), clip=(), dropout=()),
        train_seeds=(0, 1), n_images=4, epsilons=(0.01,), time_limit=5.0,
        train=TrainConfig(task="classification", epochs=3, batch_size=64, lr=1e-3), n_train=3000,
        region_samples=1_000,
    ),
    # Sized to about 40 minutes on one core: at 5 s a plain 784-50-50-10 network needs ~4 s per ball of
    # radius 0.005 and times out on most balls of radius 0.01 or more, so the radii stay below that.
    "full": VerificationPlan(
        hidden=(50, 50), deep=(50, 50, 50),
        levers=levers(l1=(1e-4, 1e-3), rs=(1e-3, 1e-2), clip=(1.0,), dropout=(0.2,)),
        train_seeds=(0, 1), n_images=20, epsilons=(0.002, 0.005), time_limit=5.0,
        train=TrainConfig(task="classification", epochs=10, batch_size=64, lr=1e-3), n_train=20_000,
    ),
}


@study("relumip", "verification", title="Fashion-MNIST verification: largest misclassification margin in L-inf balls")
@_one_thread
def verification_study(ctx: StudyContext) -> StudyResult:
    plan = VERIFICATION_PLANS[ctx.scale]
    try:
        ds = verification.dataset("fashion-mnist", n_train=plan.n_train)
        sources = [ds.source.as_record()]
    except DataNotFoundError as err:
        ctx.log(f"{err}; using scikit-learn digits instead (labelled synthetic)")
        ds = verification.dataset("digits")
        sources = [verification.digits_fallback_record(), ds.source.as_record()]
    nets, info = train_verification_networks(ds, plan, ctx.log)
    images = verification.pick_images(ds, list(nets.values()), plan.n_images, seed=0)
    insts = verification.instances(ds, images, plan.epsilons)
    cache = RecordCache(ctx, plan)
    entries = []
    main_arch = arch_label(plan.hidden)
    for i, (key, net) in enumerate(nets.items()):
        methods = ("interval", "lp") if key[:2] == (main_arch, "plain") else ("lp",)
        cache_key = f"{'|'.join(map(str, key))}|{','.join(methods)}|{images.tolist()}"
        entry = cache.get(cache_key)
        if entry is None:
            entry = {**info[key], "solves": measure_verification(net, insts, methods, plan, ctx.log)}
            cache.put(cache_key, entry)
        entry = {**info[key], "solves": entry["solves"]}  # errors are remeasured, solves resumed
        n_solved = sum(s["solved"] for s in entry["solves"])
        ctx.log(f"[{i + 1}/{len(nets)}] {key}: solved {n_solved}/{len(entry['solves'])}")
        entries.append(entry)
    for e in entries:  # the network's indicators: medians over its instances under LP bounds
        lp = [s for s in e["solves"] if s["method"] == "lp"]
        e["regions"] = float(np.median([s["regions"] for s in lp]))
        e["stable_lp"] = float(np.median([s["stable"] for s in lp]))
        e["big_m_lp"] = [float(np.median([s["big_m"][k] for s in lp])) for k in range(len(lp[0]["big_m"]))]

    claims, metrics = _verification_claims(entries, plan, main_arch)
    figures = []
    path = ctx.figure_path("profile_levers.png")
    main = [e for e in entries if e["arch"] == main_arch]
    performance_profile({lab: solves(main, lever=lab, method="lp") for lab in dict.fromkeys(e["lever"] for e in main)}
                        | {f"{arch_label(plan.deep)} plain": solves(entries, arch=arch_label(plan.deep), method="lp"),
                           "plain, interval bounds": solves(main, lever="plain", method="interval")},
                        plan.time_limit, path, "Verification: levers, depth and bounds")
    figures.append(path.name)
    path = ctx.figure_path("tradeoff.png")
    points = []
    for label in dict.fromkeys(e["lever"] for e in main):
        group = [e for e in main if e["lever"] == label]
        points.append({"label": label, "error": float(np.median([e["test_error"] for e in group])),
                       "time": float(np.median([r["seconds"] for r in solves(group, method="lp")])),
                       "colour": float(np.median([e["stable_lp"] for e in group])),
                       "colour_label": "stable share (LP, median over balls)"})
    trade_off_figure(points, path, f"Verification {main_arch}: accuracy vs solve time", "test error rate")
    figures.append(path.name)
    rows = []
    for arch in dict.fromkeys(e["arch"] for e in entries):
        for label in dict.fromkeys(e["lever"] for e in entries if e["arch"] == arch):
            group = [e for e in entries if e["arch"] == arch and e["lever"] == label]
            for eps in plan.epsilons:
                recs = solves(group, method="lp", instance_eps=eps)
                rows.append([arch, label, eps, median_iqr(e["test_error"] for e in group),
                             median_iqr(r["regions"] for r in recs), median_iqr(r["stable"] for r in recs),
                             median_iqr(max(r["big_m"]) for r in recs), median_iqr(r["seconds"] for r in recs),
                             median_iqr(r["nodes"] for r in recs), f"{sum(r['solved'] for r in recs)}/{len(recs)}",
                             f"{sum(r['solved'] and r['value'] > 0 for r in recs)}",
                             median_iqr(r["gap"] for r in recs if not r["solved"])])
    tables = [Table("Verification with LP bounds, per network and radius",
                    ["network", "lever", "eps", "test error", "linear regions in the ball (sampled)",
                     "stable share", "largest big-M", "time (s)", "nodes", "solved", "adversarial (margin > 0)",
                     "gap of unsolved"], rows,
                    note=f"median [q1, q3] over {len(plan.train_seeds)} training seeds x {plan.n_images} images; "
                         f"time limit {plan.time_limit:g} s")]
    return StudyResult(
        part="relumip", study="verification", title="Fashion-MNIST verification", scale=ctx.scale,
        summary=_summary(claims), config=asdict(plan) | {"levers": [lv.label for lv in plan.levers],
                                                          "images": images.tolist()},
        seeds=list(plan.train_seeds), data=sources,
        metrics=metrics | stored_measurements(entries, drop=("x",)),
        tables=tables, figures=figures, claims=claims,
    )


def train_verification_networks(
    ds: Dataset, plan: VerificationPlan, log: Callable[[str], None]
) -> tuple[dict[tuple[str, str, int], ReluNetwork], dict[tuple[str, str, int], dict[str, Any]]]:
    """Every classifier of the plan, keyed (architecture, lever, seed), and its test error and training time."""
    nets: dict[tuple[str, str, int], ReluNetwork] = {}
    info: dict[tuple[str, str, int], dict[str, Any]] = {}
    for hidden, lever in [(plan.hidden, lever) for lever in plan.levers] + [(plan.deep, PLAIN)]:
        for seed in plan.train_seeds:
            start = time.perf_counter()
            net = verification.train_classifier(ds, replace(plan.train, hidden=hidden, seed=seed, **lever.flags()))
            key = (arch_label(hidden), lever.label, seed)
            nets[key] = net
            info[key] = {"arch": key[0], "lever": key[1], "seed": seed, "test_error": ds.test_error(net),
                         "train_seconds": time.perf_counter() - start}
            log(f"trained {key}: test error {info[key]['test_error']:.4f}")
    return nets, info


def measure_verification(
    net: ReluNetwork, insts: Sequence[Instance], methods: Sequence[str], plan: VerificationPlan,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Solve every ball with every method; with LP bounds also run a PGD attack and sample the ball's regions."""
    recs = solve_all(net, insts, methods, (plan.solver_seed,), plan.time_limit, log)
    for rec, inst in zip(recs, [inst for inst in insts for _ in methods], strict=True):
        rec["attack"] = verification.attack(net, inst, seed=0) if rec["method"] == "lp" else None
        if rec["method"] == "lp":
            rec.update(region_count(net, inst.lower, inst.upper, plan.region_samples))
    return recs


def _verification_claims(
    entries: list[dict[str, Any]], plan: VerificationPlan, main_arch: str
) -> tuple[list[Claim], dict[str, Any]]:
    def key(r: dict[str, Any]) -> Any:
        return (r["seed"], r["instance"])

    main = [e for e in entries if e["arch"] == main_arch]
    plain = [e for e in main if e["lever"] == "plain"]
    metrics: dict[str, Any] = {}
    interval, lp = solves(plain, method="interval"), solves(plain, method="lp")
    total = paired(times_by(interval, key), times_by(lp, key))
    metrics["lp_vs_interval"] = total
    claims = [Claim(
        "LP-based bound tightening shrinks the big-M coefficients and the run time.",
        f"{main_arch} plain: largest big-M (LP/interval) median "
        f"{np.median([max(b['big_m']) / max(max(a['big_m']), 1e-12) for a, b in zip(interval, lp, strict=True)]):.2f}; "
        f"total time: {fmt_paired(total)}; solved {sum(r['solved'] for r in lp)}/{len(lp)} (LP) vs "
        f"{sum(r['solved'] for r in interval)}/{len(interval)} (interval)",
        verdict_for_speedup(total), f"Paired over training seeds, images and radii; time limit {plan.time_limit:g} s.",
    )]
    lclaims, lstats = lever_claims(main, main_arch, "lp", plan.time_limit)
    claims += lclaims
    metrics |= lstats
    deep = arch_label(plan.deep)
    deeper = paired(times_by(lp, key), times_by(solves(entries, arch=deep, method="lp"), key))
    metrics["deep_vs_shallow"] = deeper
    claims.append(Claim(
        "Deeper networks are harder to optimise over (big-M grows with depth).",
        f"{deep} vs {main_arch} (plain, LP bounds): {fmt_paired(deeper)}",
        verdict_for_speedup(deeper, expect_faster=False),
        "Paired per training seed, image and radius.",
    ))
    checked = [r for r in solves(entries, method="lp") if r["solved"]]
    below = [r for r in checked if r["attack"] <= r["value"] + 1e-6 * max(1.0, abs(r["value"]))]
    worst, compared = optimum_agreement(entries)
    metrics |= {"attack_below_optimum": len(below), "attack_checked": len(checked), "optimum_agreement": worst}
    claims.append(Claim(
        "The MILP returns the largest margin in the ball (checked by the forward pass at the returned input).",
        f"every optimum re-evaluated by the forward pass; a PGD attack never beat a proven optimum "
        f"({len(below)}/{len(checked)}); interval and LP agree to {worst:.1e} ({compared} instances)",
        "agrees" if len(below) == len(checked) and worst < 1e-5 else "disagrees",
        "PGD (projected sign-gradient ascent, 5 restarts x 100 steps) gives lower bounds found without a MILP.",
    ))
    return claims, metrics


# ------------------------------------------------------------------------------------ reformer
REFORMER_PLANS = {
    "quick": Plan(
        architectures=(reformer.HIDDEN,), lever_architecture=reformer.HIDDEN,
        levers=levers(l1=(1e-3,), rs=(), clip=(), dropout=()), train_seeds=(0, 1), solver_seeds=(0,),
        time_limit=5.0, train=TrainConfig(epochs=30, batch_size=reformer.BATCH_SIZE, lr=1e-3),
        sweep_methods=("interval", "lp", "lp+rescale"), region_samples=20_000,
    ),
    "full": Plan(
        architectures=(reformer.HIDDEN,), lever_architecture=reformer.HIDDEN,
        levers=levers(l1=(1e-4, 1e-3, 1e-2), rs=(1e-3, 1e-2), clip=(1.0,), dropout=(0.1,)),
        train_seeds=(0, 1, 2, 3, 4), solver_seeds=(0, 1), time_limit=30.0,
        train=TrainConfig(epochs=reformer.EPOCHS, batch_size=reformer.BATCH_SIZE, lr=1e-3), sweep_methods=METHODS,
        lever_methods=("interval", "lp"),
    ),
}


@study("relumip", "reformer", title="Autothermal reformer (OMLT's example): maximise H2 under the N2 limit")
@_one_thread
def reformer_study(ctx: StudyContext) -> StudyResult:
    plan = REFORMER_PLANS[ctx.scale]
    ds = reformer.dataset(seed=0)
    inst = reformer.instance(ds)

    def optimum(net: ReluNetwork, recs: list[dict[str, Any]]) -> dict[str, Any]:
        found = next((r for r in recs if r["solved"] and r["method"] == "lp"), None)
        if found is None:
            return {"optimum": None}
        x = np.array(found["x"])
        y, sim = net(x), reformer.simulated(x)
        return {"optimum": {"bypass": float(x[0]), "ng_steam_ratio": float(x[1]), "h2": float(y[reformer.H2]),
                            "n2": float(y[reformer.N2]), "h2_simulated": float(sim[reformer.H2]),
                            "n2_simulated": float(sim[reformer.N2])}}

    entries = run_box_problem(ctx, plan, ds, inst, exact_regions=lambda h: True, extra=optimum)
    arch = arch_label(plan.lever_architecture)
    plain = [e for e in entries if e["lever"] == "plain"]
    claims, mstats = method_claims(plain, plan.time_limit)
    lclaims, lstats = lever_claims(entries, arch, "lp", plan.time_limit)
    claims += lclaims
    claims.append(largest_gain_claim(plain, lstats, arch))
    opts = [e["optimum"] for e in plain if e.get("optimum")]
    pub = reformer.PUBLISHED
    rows = [[e["seed"], *(f"{e['optimum'][k]:.5f}" for k in ("bypass", "ng_steam_ratio", "h2", "n2", "h2_simulated",
                                                               "n2_simulated"))] for e in plain if e.get("optimum")]
    rows.append(["OMLT (published)", *(f"{pub[k]:.5f}" for k in ("Bypass Fraction", "NG Steam Ratio", "H2", "N2")),
                 "", ""])
    h2 = [o["h2"] for o in opts]
    ratio = [o["ng_steam_ratio"] for o in opts]
    close = [abs(o["h2"] - pub["H2"]) <= 2e-3 and abs(o["bypass"] - pub["Bypass Fraction"]) <= 0.02 for o in opts]
    claims.append(Claim(
        f"OMLT's example optimum: Bypass Fraction {pub['Bypass Fraction']}, NG Steam Ratio {pub['NG Steam Ratio']}, "
        f"H2 {pub['H2']} with N2 at its limit {pub['N2']}.",
        f"{len(opts)} plain networks: H2 median {np.median(h2) if h2 else math.nan:.5f} "
        f"(range {min(h2, default=math.nan):.5f}-{max(h2, default=math.nan):.5f}), NG Steam Ratio median "
        f"{np.median(ratio) if ratio else math.nan:.4f}; within 0.002 of H2 and 0.02 of the bypass: "
        f"{sum(close)}/{len(opts)}",
        "agrees" if close and all(close) else ("partly agrees" if any(close) else "disagrees"),
        "Each seed trains another surrogate, as OMLT's notebook does with its own random start; the simulator "
        "columns interpolate the 2,800 simulated rows at the surrogate's optimum.",
    ))
    worst, compared = optimum_agreement(entries)
    claims.append(Claim(
        "Every encoding and seed finds the same optimum of a given network.",
        f"largest relative difference {worst:.1e} over {compared} networks",
        "agrees" if worst < 1e-5 else "disagrees", "Optima re-evaluated by the network's forward pass.",
    ))
    figures = []
    path = ctx.figure_path("profile.png")
    performance_profile({f"plain, {m}": solves(plain, method=m) for m in plan.sweep_methods}
                        | {lab: solves(entries, lever=lab, method="lp")
                           for lab in dict.fromkeys(e["lever"] for e in entries) if lab != "plain"},
                        plan.time_limit, path, "Reformer: methods and levers")
    figures.append(path.name)
    path = ctx.figure_path("tradeoff.png")
    trade_off_figure(_tradeoff_points(entries, "lp"), path, "Reformer: accuracy vs solve time", "test error (nRMSE)")
    figures.append(path.name)
    tables = [
        Table("Optimum of the plain surrogates (LP bounds) against OMLT's published answer",
              ["seed", "bypass fraction", "NG steam ratio", "H2 (surrogate)", "N2 (surrogate)", "H2 (simulator)",
               "N2 (simulator)"], rows),
        _method_table(plain, plan.sweep_methods, "Solve methods on the plain networks"),
        lever_table(entries, arch, "lp", f"Training levers on {arch} (LP bounds)", "test error (nRMSE)"),
    ]
    return StudyResult(
        part="relumip", study="reformer", title="Autothermal reformer", scale=ctx.scale, summary=_summary(claims),
        config=_plan_record(plan) | {"published": pub, "n2_limit": reformer.N2_LIMIT},
        seeds=list(plan.train_seeds), data=[ds.source.as_record()],
        metrics={**mstats, **lstats, "optimum_agreement": worst,
                 **stored_measurements(entries)},
        tables=tables, figures=figures, claims=claims,
    )


# ------------------------------------------------------------------------------------ OMLT
@dataclass(frozen=True)
class OmltPlan:
    """What one scale of the ``omlt`` head-to-head runs: plain networks of each problem, every instance
    solved by OMLT and by structlab (interval and LP bounds) with the same HiGHS options and time limit."""

    peaks: tuple[tuple[int, ...], ...]
    peaks_train: TrainConfig
    reformer_train: TrainConfig
    verification: tuple[int, ...]
    verification_train: TrainConfig
    n_images: int
    epsilons: tuple[float, ...]
    seeds: tuple[int, ...]
    time_limit: float
    hard_seconds: float  # an instance is hard when OMLT needs at least this long (or does not finish)
    n_train_verification: int | None = None


OMLT_PLANS = {
    "quick": OmltPlan(
        peaks=((16, 16),), peaks_train=TrainConfig(epochs=30),
        reformer_train=TrainConfig(epochs=20, batch_size=32, lr=1e-3),
        verification=(20, 20), verification_train=TrainConfig(task="classification", epochs=2, lr=1e-3), n_images=2,
        epsilons=(0.01,), seeds=(0,), time_limit=5.0, hard_seconds=1.0, n_train_verification=2000,
    ),
    "full": OmltPlan(
        peaks=((25, 25), (25, 25, 25), (50, 50)), peaks_train=TrainConfig(epochs=150),
        reformer_train=TrainConfig(epochs=reformer.EPOCHS, batch_size=reformer.BATCH_SIZE, lr=1e-3),
        verification=(50, 50), verification_train=TrainConfig(task="classification", epochs=10, lr=1e-3), n_images=10,
        epsilons=(0.01, 0.02), seeds=(0, 1, 2), time_limit=30.0, hard_seconds=2.0, n_train_verification=20_000,
    ),
}


@study("relumip", "omlt", title="Head-to-head with OMLT (Pyomo big-M formulation, HiGHS through APPSI)")
@_one_thread
def omlt_study(ctx: StudyContext) -> StudyResult:
    plan = OMLT_PLANS[ctx.scale]
    problems, sources = head_to_head_problems(plan)
    cache = RecordCache(ctx, plan)
    records = []
    for name, net, insts, seed in problems:
        for inst in insts:
            key = f"{name}|{seed}|{inst.name}"
            rec = cache.get(key)
            if rec is None:
                rec = {"problem": name, "seed": seed, "instance": inst.name,
                       **measure_head_to_head(net, inst, plan.time_limit)}
                cache.put(key, rec)
            ctx.log(f"{key}: OMLT {rec['omlt']['status']} {rec['omlt']['seconds']:.1f} s, structlab LP "
                    f"{rec['lp']['status']} {rec['lp']['seconds']:.1f} s")
            records.append(rec)
    claims, metrics = _omlt_claims(records, plan)
    rows = []
    for name in dict.fromkeys(r["problem"] for r in records):
        group = [r for r in records if r["problem"] == name]
        for label in ("omlt", "interval", "lp"):
            recs = [r[label] for r in group]
            rows.append([name, {"omlt": "OMLT (ReluBigMFormulation)", "interval": "structlab, interval bounds",
                                "lp": "structlab, LP bounds"}[label],
                         median_iqr(r["variables"] for r in recs), median_iqr(r["binaries"] for r in recs),
                         median_iqr(r["constraints"] for r in recs), median_iqr(max(r["big_m"]) for r in recs),
                         median_iqr(r["build_seconds"] for r in recs), median_iqr(r["solve_seconds"] for r in recs),
                         median_iqr(r["seconds"] for r in recs), median_iqr(r["nodes"] for r in recs),
                         f"{sum(r['solved'] for r in recs)}/{len(recs)}"])
    figures = []
    path = ctx.figure_path("profile.png")
    performance_profile({"OMLT": [r["omlt"] for r in records], "structlab interval": [r["interval"] for r in records],
                         "structlab LP": [r["lp"] for r in records]}, plan.time_limit, path,
                        "Head-to-head: OMLT vs structlab (HiGHS, same options)")
    figures.append(path.name)
    path = ctx.figure_path("scatter.png")
    _omlt_scatter(records, plan, path)
    figures.append(path.name)
    return StudyResult(
        part="relumip", study="omlt", title="Head-to-head with OMLT", scale=ctx.scale, summary=_summary(claims),
        config=asdict(plan) | {"omlt_version": _version("omlt"), "pyomo_version": _version("pyomo")},
        seeds=list(plan.seeds), data=sources, metrics=metrics | {"records": records},
        tables=[Table("Model size, big-M and time per encoder",
                      ["problem", "encoder", "variables", "binaries", "constraints", "largest big-M",
                       "build (s)", "solver (s)", "total (s)", "nodes", "solved"], rows,
                      note=f"median [q1, q3] over seeds and instances; time limit {plan.time_limit:g} s; "
                           "structlab's build includes bound tightening")],
        figures=figures, claims=claims,
    )


def head_to_head_problems(plan: OmltPlan) -> tuple[list[tuple[str, ReluNetwork, list[Instance], int]], list[dict]]:
    """The plain networks of the head-to-head with their instances (name, network, instances, seed), and
    the data sources."""
    problems: list[tuple[str, ReluNetwork, list[Instance], int]] = []
    sources: list[dict] = []
    pk = peaks.dataset()
    sources.append(pk.source.as_record())
    for hidden in plan.peaks:
        for seed in plan.seeds:
            net, _ = train_regressor(pk, hidden, PLAIN, seed, plan.peaks_train)
            problems.append((f"peaks {arch_label(hidden)}", net, [peaks.instance()], seed))
    rf = reformer.dataset()
    sources.append(rf.source.as_record())
    for seed in plan.seeds:
        net, _ = train_regressor(rf, reformer.HIDDEN, PLAIN, seed, plan.reformer_train)
        problems.append((f"reformer {arch_label(reformer.HIDDEN)}", net, [reformer.instance(rf)], seed))
    try:
        vf = verification.dataset("fashion-mnist", n_train=plan.n_train_verification)
        sources.append(vf.source.as_record())
    except DataNotFoundError:
        vf = verification.dataset("digits")
        sources += [verification.digits_fallback_record(), vf.source.as_record()]
    vnet = verification.train_classifier(
        vf, replace(plan.verification_train, hidden=plan.verification, seed=plan.seeds[0]))
    images = verification.pick_images(vf, [vnet], plan.n_images, seed=0)
    problems.append((f"verification {arch_label(plan.verification)}", vnet,
                     verification.instances(vf, images, plan.epsilons), plan.seeds[0]))
    return problems, sources


def measure_head_to_head(net: ReluNetwork, inst: Instance, time_limit: float) -> dict[str, Any]:
    """One instance solved by OMLT and by structlab (interval and LP bounds), one after the other so that
    the machine's load is alike for the three."""
    from structlab.relumip.omlt_compare import solve_with_omlt

    return {
        "omlt": solve_with_omlt(net, inst, time_limit=time_limit).as_record(),
        "interval": solve_instance(net, inst, "interval", time_limit=time_limit).as_record(),
        "lp": solve_instance(net, inst, lp_bounds(net, inst.lower, inst.upper, n_jobs=1),
                             time_limit=time_limit).as_record(),
    }


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _omlt_claims(records: list[dict[str, Any]], plan: OmltPlan) -> tuple[list[Claim], dict[str, Any]]:
    both = [r for r in records if r["omlt"]["solved"] and r["lp"]["solved"]]
    worst = max((abs(r["omlt"]["value"] - r["lp"]["value"]) / max(1.0, abs(r["lp"]["value"])) for r in both),
                default=0.0)
    missed = [r["instance"] for r in records if r["omlt"]["solved"] and not r["lp"]["solved"]]
    hard = [r for r in records if not r["omlt"]["solved"] or r["omlt"]["seconds"] >= plan.hard_seconds]

    def key(r: dict[str, Any]) -> Any:
        return (r["problem"], r["seed"], r["instance"])

    hard_cmp = paired({key(r): r["omlt"]["seconds"] for r in hard}, {key(r): r["lp"]["seconds"] for r in hard})
    decided = [r for r in hard if r["omlt"]["solved"] or r["lp"]["solved"]]  # not a time-out on both sides
    decided_cmp = paired({key(r): r["omlt"]["seconds"] for r in decided},
                         {key(r): r["lp"]["seconds"] for r in decided})
    all_cmp = paired({key(r): r["omlt"]["seconds"] for r in records}, {key(r): r["lp"]["seconds"] for r in records})
    speedup = 1 / hard_cmp["ratio"] if hard_cmp["n"] else math.nan
    claims = [
        Claim("OMLT and structlab encode the same problem: the same optimum wherever both prove one.",
              f"largest relative difference {worst:.1e} over {len(both)} instances solved by both",
              "agrees" if worst < 1e-5 else "disagrees",
              "Optima re-evaluated by the network's forward pass at each encoder's returned input."),
        Claim("Goal: structlab solves every instance that OMLT solves.",
              f"OMLT solved {sum(r['omlt']['solved'] for r in records)}/{len(records)}, structlab (LP bounds) "
              f"{sum(r['lp']['solved'] for r in records)}/{len(records)}; solved by OMLT only: {missed or 'none'}",
              "agrees" if not missed else "disagrees", f"Same HiGHS options and time limit ({plan.time_limit:g} s)."),
        Claim("Goal: structlab is at least 2x faster than OMLT on the median of the hard instances.",
              f"{len(hard)} hard instances (OMLT >= {plan.hard_seconds:g} s or unsolved): median speed-up "
              f"{speedup:.2f}x ({fmt_paired(hard_cmp)}); without the {len(hard) - len(decided)} that neither "
              f"solved: {1 / decided_cmp['ratio'] if decided_cmp['n'] else math.nan:.2f}x ({fmt_paired(decided_cmp)}); "
              f"all {len(records)} instances: {fmt_paired(all_cmp)}",
              _goal_verdict(hard_cmp, speedup),
              "Total time: bounds, model building (Pyomo and OMLT for OMLT; LP tightening for structlab) and "
              "HiGHS's run. A time-out counts at its measured time, which understates the speed-up where OMLT "
              "timed out and structlab did not, and makes an instance neither solved a tie; the verdict uses "
              "all hard instances."),
    ]
    return claims, {"optimum_agreement": worst, "hard": hard_cmp, "hard_decided": decided_cmp, "all": all_cmp,
                    "solved_by_omlt_only": missed}


def _goal_verdict(cmp: dict[str, Any], speedup: float) -> str:
    """At least 2x (significant): agrees; faster but under 2x: partly; not significant: inconclusive."""
    if not cmp["n"]:
        return "not measured"
    if cmp["p"] >= SIGNIFICANCE:
        return "inconclusive"
    return "agrees" if speedup >= 2 else ("partly agrees" if speedup > 1 else "disagrees")


def _omlt_scatter(records: list[dict[str, Any]], plan: OmltPlan, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name in dict.fromkeys(r["problem"] for r in records):
        group = [r for r in records if r["problem"] == name]
        ax.scatter([r["omlt"]["seconds"] for r in group], [r["lp"]["seconds"] for r in group], label=name, s=25)
    lim = (1e-2, plan.time_limit * 2)
    ax.plot(lim, lim, color="grey", linewidth=1)
    ax.plot(lim, [v / 2 for v in lim], color="grey", linewidth=1, linestyle="--", label="2x faster")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("OMLT total time (s)")
    ax.set_ylabel("structlab total time, LP bounds (s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# What measurement_digest hashes besides the plan and the library: the plans and the code that measures.
MEASURING: tuple[Callable[..., Any], ...] = (
    Lever, Plan, NetworkSpec, VerificationPlan, OmltPlan, arch_label, prepare, bound_indicators, solve_all, _list,
    region_count, train_regressor, run_box_problem, _indicators_of, train_verification_networks,
    measure_verification, head_to_head_problems, measure_head_to_head,
)
