"""What the relumip studies share for analysis: paired statistics over seeds, the stored form of the
measurements, and the claims and tables of the paper's levers (bound tightening, rescaling, training).

A time-out counts at its measured time (the limit), so medians are conservative for the slower side. A
speed-up is claimed only where the paired median ratio over seeds shows it and a Wilcoxon signed-rank
test agrees (p < 0.05).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from structlab.relumip.studies.measure import Plan, arch_label
from structlab.results import Claim, Table, spread

SIGNIFICANCE = 0.05


# ---------------------------------------------------------------------------- statistics
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


# ------------------------------------------------------------------- stored measurements
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


# --------------------------------------------------------------------- claims and tables
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


def method_table(entries: list[dict[str, Any]], methods: Sequence[str], title: str) -> Table:
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


def tradeoff_points(nets: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    points = []
    for label in dict.fromkeys(e["lever"] for e in nets):
        group = [e for e in nets if e["lever"] == label]
        recs = solves(group, method=method)
        points.append({"label": label, "error": float(np.median([e["test_error"] for e in group])),
                       "time": float(np.median([r["seconds"] for r in recs])),
                       "colour": float(np.median([e["regions"] for e in group])), "colour_label": "linear regions",
                       "log_colour": True})
    return points


def plan_record(plan: Plan) -> dict[str, Any]:
    out = asdict(plan)
    out["levers"] = [lv.label for lv in plan.levers]
    out["architectures"] = [arch_label(h) for h in plan.architectures]
    out["lever_architecture"] = arch_label(plan.lever_architecture)
    return out


def verdict_summary(claims: list[Claim]) -> str:
    counts = defaultdict(int)
    for c in claims:
        counts[c.verdict] += 1
    return "; ".join(f"{n} {v}" for v, n in counts.items()) + f" of {len(claims)} claims."
