"""Study ``relumip/omlt``: the same networks and instances encoded by structlab and by its peers, with the
same time limit and one thread for everyone.

Six encoders solve every instance (:data:`ENCODERS`): OMLT with its own interval bounds and OMLT with
structlab's LP bounds (both Pyomo, HiGHS through APPSI), structlab with interval and with LP bounds
(HiGHS), PySCIPOpt-ML with its default SOS1 formulation (SCIP) and structlab with LP bounds solved by SCIP.
Paired comparisons then isolate one difference each (:data:`COMPARISONS`): OMLT with its bounds against
OMLT with ours is what bound tightening is worth; OMLT with our bounds against structlab is the encoding
and the modelling layer; PySCIPOpt-ML against structlab on SCIP is the encoding with its bounds on the
other solver. An instance is hard when the slower side of a comparison needs at least ``hard_seconds``
(or either side does not finish), so neither side picks the instances.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from structlab.errors import DataNotFoundError
from structlab.jobs import Job
from structlab.relumip.bounds import lp_bounds
from structlab.relumip.network import ReluNetwork
from structlab.relumip.omlt_compare import solve_with_omlt
from structlab.relumip.problems import Instance, peaks, reformer, solve_instance, verification
from structlab.relumip.scipml_compare import solve_with_pyscipopt_ml
from structlab.relumip.studies.analysis import (
    SIGNIFICANCE,
    fmt_paired,
    median_iqr,
    paired,
    verdict_for_speedup,
    verdict_summary,
)
from structlab.relumip.studies.figures import performance_profile, pyplot
from structlab.relumip.studies.measure import (
    PLAIN,
    arch_label,
    job_key,
    one_thread,
    run_measurements,
    train_regressor,
)
from structlab.relumip.training import TrainConfig
from structlab.reproduce import StudyContext, study
from structlab.results import Claim, StudyResult, Table

# Every encoder of an instance: its key in the records and what it is
ENCODERS = {
    "omlt": "OMLT, its own bounds (HiGHS)",
    "omlt_lp": "OMLT, structlab's LP bounds (HiGHS)",
    "interval": "structlab, interval bounds (HiGHS)",
    "lp": "structlab, LP bounds (HiGHS)",
    "scipml": "PySCIPOpt-ML, SOS1 (SCIP)",
    "lp_scip": "structlab, LP bounds (SCIP)",
}
# (base, other, what the pair isolates): each a paired comparison of total times, other against base
COMPARISONS = (
    ("omlt", "omlt_lp", "bound tightening, in OMLT's encoding"),
    ("omlt_lp", "lp", "the encoding and modelling layer, same LP bounds and solver"),
    ("omlt", "interval", "the encoding and modelling layer, same interval bounds and solver"),
    ("omlt", "lp", "everything: OMLT as shipped against structlab"),
    ("scipml", "lp_scip", "PySCIPOpt-ML as shipped against structlab, both on SCIP"),
)


@dataclass(frozen=True)
class OmltPlan:
    """What one scale of the ``omlt`` head-to-head runs: plain networks of each problem, every instance
    solved by every encoder of :data:`ENCODERS` with the same time limit and one thread."""

    peaks: tuple[tuple[int, ...], ...]
    peaks_train: TrainConfig
    reformer_train: TrainConfig
    verification: tuple[int, ...]
    verification_train: TrainConfig
    n_images: int
    epsilons: tuple[float, ...]
    seeds: tuple[int, ...]
    time_limit: float
    hard_seconds: float  # hard: the slower side of a comparison needs at least this long (or does not finish)
    n_train_verification: int | None = None


PLANS = {
    "quick": OmltPlan(
        peaks=((16, 16),), peaks_train=TrainConfig(epochs=30),
        reformer_train=TrainConfig(epochs=20, batch_size=32, lr=1e-3),
        verification=(20, 20), verification_train=TrainConfig(task="classification", epochs=2, lr=1e-3), n_images=2,
        epsilons=(0.01,), seeds=(0,), time_limit=5.0, hard_seconds=1.0, n_train_verification=2000,
    ),
    # Sized to well under an hour on one core (six encoders at 30 s; the stored evidence took about half an
    # hour of CPU, training included: most instances solve well inside the limit)
    "full": OmltPlan(
        peaks=((25, 25), (25, 25, 25), (50, 50)), peaks_train=TrainConfig(epochs=150),
        reformer_train=TrainConfig(epochs=reformer.EPOCHS, batch_size=reformer.BATCH_SIZE, lr=1e-3),
        verification=(50, 50), verification_train=TrainConfig(task="classification", epochs=10, lr=1e-3), n_images=8,
        epsilons=(0.01, 0.02), seeds=(0, 1, 2), time_limit=30.0, hard_seconds=2.0, n_train_verification=20_000,
    ),
}


@study("relumip", "omlt", title="Head-to-head with OMLT and PySCIPOpt-ML (same networks, time limit, one thread)")
@one_thread
def omlt_study(ctx: StudyContext) -> StudyResult:
    plan = PLANS[ctx.scale]
    problems, sources = head_to_head_problems(plan)
    cases = [(f"{name}|{seed}|{inst.name}", name, seed, net, inst) for name, net, insts, seed in problems
             for inst in insts]
    jobs = [Job(job_key(key), measure_head_to_head, {"net": net, "inst": inst, "time_limit": plan.time_limit},
                identity=key) for key, _, _, net, inst in cases]
    warm_up(problems[0][1], problems[0][2][0])
    records = []
    for (key, name, seed, _, inst), measured in zip(cases, run_measurements(ctx, plan, jobs, MEASURING).values(),
                                                    strict=True):
        rec = {"problem": name, "seed": seed, "instance": inst.name, **measured}
        ctx.log(f"{key}: " + ", ".join(f"{e} {rec[e]['status']} {rec[e]['seconds']:.1f} s" for e in ENCODERS))
        records.append(rec)
    claims, metrics = omlt_claims(records, plan)
    figures = []
    path = ctx.figure_path("profile.png")
    performance_profile({ENCODERS[e]: [r[e] for r in records] for e in ENCODERS}, plan.time_limit, path,
                        "Head-to-head: same networks, time limit and one thread")
    figures.append(path.name)
    path = ctx.figure_path("scatter.png")
    _scatter(records, plan, path)
    figures.append(path.name)
    return StudyResult(
        part="relumip", study="omlt", title="Head-to-head with OMLT and PySCIPOpt-ML", scale=ctx.scale,
        summary=verdict_summary(claims),
        config=asdict(plan) | {"encoders": ENCODERS} | {
            f"{p}_version": _version(p) for p in ("omlt", "pyomo", "pyscipopt-ml", "pyscipopt", "highspy")},
        seeds=list(plan.seeds), data=sources, metrics=metrics | {"records": records},
        tables=[_size_table(records, plan), _comparison_table(metrics["comparisons"], plan)],
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
    """One instance solved by every encoder of :data:`ENCODERS`, one after the other so that the machine's
    load is alike for all. structlab's LP bounds are computed once; their time counts in the build time of
    every encoder that uses them."""
    lp = lp_bounds(net, inst.lower, inst.upper, n_jobs=1)
    return {
        "omlt": solve_with_omlt(net, inst, time_limit=time_limit).as_record(),
        # no warm start on structlab's side: the other encoders are handed none
        "omlt_lp": solve_with_omlt(net, inst, time_limit=time_limit, bounds=lp).as_record(),
        "interval": solve_instance(net, inst, "interval", time_limit=time_limit, warm_start=None).as_record(),
        "lp": solve_instance(net, inst, lp, time_limit=time_limit, warm_start=None).as_record(),
        "scipml": solve_with_pyscipopt_ml(net, inst, time_limit=time_limit).as_record(),
        "lp_scip": solve_instance(net, inst, lp, time_limit=time_limit, solver="scip", warm_start=None).as_record(),
    }


def warm_up(net: ReluNetwork, inst: Instance) -> None:
    """Solve ``inst`` once with every encoder, unmeasured: the first call of each pays for imports (Pyomo,
    OMLT, torch for PySCIPOpt-ML) and first-use set-up, which would otherwise fall on the first instance."""
    measure_head_to_head(net, inst, time_limit=1.0)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _key(r: dict[str, Any]) -> Any:
    return (r["problem"], r["seed"], r["instance"])


def _seconds(rec: dict[str, Any], field: str, time_limit: float) -> float:
    """``rec[field]``, a time-out's solver time taken at the limit: a solver checks its clock between
    steps and may stop seconds late (SCIP by up to ~5 s on the verification balls), which would make a
    time-out on both sides look like a difference."""
    if rec["solved"]:
        return rec[field]
    return min(rec[field], time_limit + (rec["build_seconds"] if field == "seconds" else 0.0))


def compare(records: list[dict[str, Any]], base: str, other: str, hard_seconds: float,
            time_limit: float) -> dict[str, Any]:
    """Paired total times of ``other`` against ``base`` (ratio < 1: ``other`` is faster): on all instances,
    on the hard ones (the slower of the two needs ``hard_seconds`` or either does not finish) and on the
    hard ones that not both left unsolved; solver time alone; solved counts. A time-out's solver time
    counts at ``time_limit`` (:func:`_seconds`)."""
    hard = [r for r in records if not (r[base]["solved"] and r[other]["solved"])
            or max(r[base]["seconds"], r[other]["seconds"]) >= hard_seconds]
    decided = [r for r in hard if r[base]["solved"] or r[other]["solved"]]

    def pair(group: list[dict[str, Any]], field: str = "seconds") -> dict[str, Any]:
        return paired({_key(r): _seconds(r[base], field, time_limit) for r in group},
                      {_key(r): _seconds(r[other], field, time_limit) for r in group})

    return {"all": pair(records), "hard": pair(hard), "hard_decided": pair(decided),
            "solver": pair(records, "solve_seconds"),
            "solved": [sum(r[base]["solved"] for r in records), sum(r[other]["solved"] for r in records)],
            "solved_by_base_only": [r["instance"] for r in records if r[base]["solved"] and not r[other]["solved"]],
            "n": len(records)}


def omlt_claims(records: list[dict[str, Any]], plan: OmltPlan) -> tuple[list[Claim], dict[str, Any]]:
    worst: dict[str, float] = {}
    compared: dict[str, int] = {}
    for e in ENCODERS:
        both = [r for r in records if r[e]["solved"] and r["lp"]["solved"]]
        compared[e] = len(both)
        worst[e] = max((abs(r[e]["value"] - r["lp"]["value"]) / max(1.0, abs(r["lp"]["value"])) for r in both),
                       default=0.0)
    cmps = {f"{base}_vs_{other}": compare(records, base, other, plan.hard_seconds, plan.time_limit) | {"what": what}
            for base, other, what in COMPARISONS}
    n = len(records)
    tightening, encoding = cmps["omlt_vs_omlt_lp"], cmps["omlt_lp_vs_lp"]
    goal, scip = cmps["omlt_vs_lp"], cmps["scipml_vs_lp_scip"]
    speedup = 1 / goal["hard"]["ratio"] if goal["hard"]["n"] else math.nan
    decided = goal["hard_decided"]
    limit = f"time limit {plan.time_limit:g} s, one thread"
    claims = [
        Claim("Every encoder solves the same problem: the same optimum wherever two prove one.",
              "; ".join(f"{ENCODERS[e]}: {worst[e]:.1e} over {compared[e]}" for e in ENCODERS if e != "lp")
              + " (largest relative difference to structlab with LP bounds, instances both solved)",
              "agrees" if max(worst.values()) < 1e-5 else "disagrees",
              "Optima re-evaluated by the network's forward pass at each encoder's returned input."),
        Claim("What bound tightening is worth: OMLT is faster with structlab's LP bounds than with its own.",
              f"OMLT with LP bounds against its own: all {n}: {fmt_paired(tightening['all'])}; hard "
              f"({tightening['hard']['n']}): {fmt_paired(tightening['hard'])}; solved "
              f"{tightening['solved'][1]}/{n} against {tightening['solved'][0]}/{n}",
              verdict_for_speedup(tightening["all"]),
              f"Same encoding (OMLT's ReluBigMFormulation, a binary for every ReLU), same HiGHS options, {limit}; "
              "the LP tightening's time counts in the total."),
        Claim("What the encoding is worth: with the same LP bounds, structlab's model solves faster than OMLT's.",
              f"structlab against OMLT, both with LP bounds: all {n}: {fmt_paired(encoding['all'])}; solver time "
              f"only: {fmt_paired(encoding['solver'])}; hard ({encoding['hard']['n']}): "
              f"{fmt_paired(encoding['hard'])}; solved {encoding['solved'][1]}/{n} against {encoding['solved'][0]}/{n}",
              verdict_for_speedup(encoding["all"]),
              "The difference left is the encoding (structlab gives stable neurons no binary and no big-M rows) "
              "and the modelling layer (Pyomo and APPSI against a direct HiGHS model)."),
        Claim("Goal: structlab solves every instance that OMLT solves.",
              f"OMLT solved {goal['solved'][0]}/{n}, structlab (LP bounds) {goal['solved'][1]}/{n}; solved by OMLT "
              f"only: {goal['solved_by_base_only'] or 'none'}",
              "agrees" if not goal["solved_by_base_only"] else "disagrees", f"Same HiGHS options, {limit}."),
        Claim("Goal: structlab is at least 2x faster than OMLT on the median of the hard instances.",
              f"{goal['hard']['n']} hard instances (the slower side >= {plan.hard_seconds:g} s or either unsolved): "
              f"median speed-up {speedup:.2f}x ({fmt_paired(goal['hard'])}); without the "
              f"{goal['hard']['n'] - decided['n']} that neither solved: "
              f"{1 / decided['ratio'] if decided['n'] else math.nan:.2f}x ({fmt_paired(decided)}); all {n}: "
              f"{fmt_paired(goal['all'])}",
              _goal_verdict(goal["hard"], speedup),
              "Total time: bounds, model building (Pyomo and OMLT; LP tightening and structlab's model) and "
              "HiGHS's run. A time-out counts at the time limit (plus its build), which understates the speed-up "
              "where one side timed out, and makes an instance neither solved nearly a tie; the verdict uses all "
              "hard instances."),
        Claim("structlab (LP bounds) is faster than PySCIPOpt-ML on the same solver (SCIP).",
              f"all {n}: {fmt_paired(scip['all'])}; hard ({scip['hard']['n']}): {fmt_paired(scip['hard'])}; solved "
              f"{scip['solved'][1]}/{n} against {scip['solved'][0]}/{n}; solved by PySCIPOpt-ML only: "
              f"{scip['solved_by_base_only'] or 'none'}",
              verdict_for_speedup(scip["all"]),
              f"PySCIPOpt-ML's default formulation (SOS1 per ReLU, bounds by its interval propagation); both on "
              f"SCIP with the same gap, feasibility tolerance and seed, {limit}."),
    ]
    building = {e: statistics.median(r[e]["timings"].get("model", 0.0) for r in records) for e in ENCODERS}
    return claims, {"optimum_agreement": worst, "comparisons": cmps, "model_seconds_median": building,
                    "hard": goal["hard"], "hard_decided": decided, "all": goal["all"],
                    "solved_by_omlt_only": goal["solved_by_base_only"]}


def _goal_verdict(cmp: dict[str, Any], speedup: float) -> str:
    """At least 2x (significant): agrees; faster but under 2x: partly; not significant: inconclusive."""
    if not cmp["n"]:
        return "not measured"
    if cmp["p"] >= SIGNIFICANCE:
        return "inconclusive"
    return "agrees" if speedup >= 2 else ("partly agrees" if speedup > 1 else "disagrees")


def _size_table(records: list[dict[str, Any]], plan: OmltPlan) -> Table:
    rows = []
    for name in dict.fromkeys(r["problem"] for r in records):
        group = [r for r in records if r["problem"] == name]
        for e, label in ENCODERS.items():
            recs = [r[e] for r in group]
            rows.append([name, label, median_iqr(r["variables"] for r in recs), median_iqr(r["binaries"] for r in recs),
                         median_iqr(r["constraints"] for r in recs),
                         median_iqr(max(r["big_m"]) for r in recs if r["big_m"]) if recs[0]["big_m"] else "-",
                         median_iqr(r["timings"].get("bounds", 0.0) for r in recs),
                         median_iqr(r["timings"].get("model", 0.0) for r in recs),
                         median_iqr(r["timings"]["transfer"] for r in recs) if "transfer" in recs[0]["timings"]
                         else "-",
                         median_iqr(r["solve_seconds"] for r in recs), median_iqr(r["seconds"] for r in recs),
                         median_iqr(r["nodes"] for r in recs), f"{sum(r['solved'] for r in recs)}/{len(recs)}"])
    return Table("Model size, big-M and time per encoder",
                 ["problem", "encoder", "variables", "binaries", "constraints", "largest big-M", "bounds (s)",
                  "model building (s)", "transfer to solver (s)", "solver (s)", "total (s)", "nodes", "solved"],
                 rows, note=f"median [q1, q3] over seeds and instances; time limit {plan.time_limit:g} s, one thread; "
                            "model building is Pyomo + OMLT for OMLT, PySCIPOpt for PySCIPOpt-ML; transfer is APPSI "
                            "handing Pyomo's model to HiGHS; PySCIPOpt-ML's SOS1 formulation has no big-M")


def _comparison_table(cmps: dict[str, dict[str, Any]], plan: OmltPlan) -> Table:
    rows = []
    for (base, other, what), c in zip(COMPARISONS, cmps.values(), strict=True):
        rows.append([f"{ENCODERS[other]} vs {ENCODERS[base]}", what,
                     f"{c['all']['ratio']:.2f} (p={c['all']['p']:.2g})",
                     f"{c['solver']['ratio']:.2f} (p={c['solver']['p']:.2g})",
                     f"{c['hard']['ratio']:.2f} (p={c['hard']['p']:.2g}, n={c['hard']['n']})" if c["hard"]["n"]
                     else "no hard instances",
                     f"{c['solved'][1]}/{c['n']} vs {c['solved'][0]}/{c['n']}"])
    return Table("Paired comparisons (time of the first against the second)",
                 ["comparison", "what differs", "total time ratio", "solver time ratio",
                  "total time ratio, hard instances", "solved"], rows,
                 note=f"median of the paired ratios (< 1: the first is faster), Wilcoxon signed-rank p; hard: the "
                      f"slower of the two needs >= {plan.hard_seconds:g} s or either does not finish; a time-out's "
                      f"solver time counts at the limit ({plan.time_limit:g} s)")


def _scatter(records: list[dict[str, Any]], plan: OmltPlan, path: Path) -> None:
    """One panel per comparison that isolates a difference: base time against other time, per instance."""
    plt = pyplot()
    panels = [c for c in COMPARISONS if c[:2] != ("omlt", "interval")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    lim = (1e-2, plan.time_limit * 2)
    for ax, (base, other, what) in zip(axes[0], panels, strict=True):
        for name in dict.fromkeys(r["problem"] for r in records):
            group = [r for r in records if r["problem"] == name]
            ax.scatter([r[base]["seconds"] for r in group], [r[other]["seconds"] for r in group], label=name, s=20)
        ax.plot(lim, lim, color="grey", linewidth=1)
        ax.plot(lim, [v / 2 for v in lim], color="grey", linewidth=1, linestyle="--", label="2x faster")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(*lim)
        ax.set_ylim(*lim)
        ax.set_xlabel(f"{ENCODERS[base]}: total (s)", fontsize=8)
        ax.set_ylabel(f"{ENCODERS[other]}: total (s)", fontsize=8)
        ax.set_title(what, fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# What the cache key hashes besides the shared measuring code (measure.MEASURING)
MEASURING = (OmltPlan, head_to_head_problems, measure_head_to_head, warm_up)
