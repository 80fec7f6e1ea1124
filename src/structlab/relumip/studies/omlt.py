"""Study ``relumip/omlt``: the same networks and instances encoded by OMLT (Pyomo, big-M) and by
structlab, solved by HiGHS with the same options and time limit."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from structlab.errors import DataNotFoundError
from structlab.relumip.bounds import lp_bounds
from structlab.relumip.network import ReluNetwork
from structlab.relumip.omlt_compare import solve_with_omlt
from structlab.relumip.problems import Instance, peaks, reformer, solve_instance, verification
from structlab.relumip.studies.analysis import (
    SIGNIFICANCE,
    fmt_paired,
    median_iqr,
    paired,
    verdict_summary,
)
from structlab.relumip.studies.figures import performance_profile, pyplot
from structlab.relumip.studies.measure import PLAIN, RecordCache, arch_label, one_thread, train_regressor
from structlab.relumip.training import TrainConfig
from structlab.reproduce import StudyContext, study
from structlab.results import Claim, StudyResult, Table


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


PLANS = {
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
@one_thread
def omlt_study(ctx: StudyContext) -> StudyResult:
    plan = PLANS[ctx.scale]
    problems, sources = head_to_head_problems(plan)
    cache = RecordCache(ctx, plan, MEASURING)
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
    claims, metrics = omlt_claims(records, plan)
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
        part="relumip", study="omlt", title="Head-to-head with OMLT", scale=ctx.scale, summary=verdict_summary(claims),
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
    return {
        "omlt": solve_with_omlt(net, inst, time_limit=time_limit).as_record(),
        "interval": solve_instance(net, inst, "interval", time_limit=time_limit).as_record(),
        "lp": solve_instance(net, inst, lp_bounds(net, inst.lower, inst.upper, n_jobs=1),
                             time_limit=time_limit).as_record(),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def omlt_claims(records: list[dict[str, Any]], plan: OmltPlan) -> tuple[list[Claim], dict[str, Any]]:
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
    plt = pyplot()
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


# What the cache key hashes besides the shared measuring code (measure.MEASURING)
MEASURING = (OmltPlan, head_to_head_problems, measure_head_to_head)
