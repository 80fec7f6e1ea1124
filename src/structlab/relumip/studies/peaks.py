"""Study ``relumip/peaks``: networks of depth 2-5 and width 25-50 trained on the peaks function (paper,
Sec. 5.1): big-M growth with depth, interval vs LP bounds, rescaling, then every training lever on one
architecture."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from structlab.relumip.network import ReluNetwork
from structlab.relumip.problems import Dataset, peaks
from structlab.relumip.studies.analysis import (
    largest_gain_claim,
    lever_claims,
    lever_table,
    median_iqr,
    method_claims,
    method_table,
    optimum_agreement,
    plan_record,
    solves,
    stored_measurements,
    tradeoff_points,
    verdict_summary,
)
from structlab.relumip.studies.figures import big_m_figure, performance_profile, pyplot, trade_off_figure
from structlab.relumip.studies.measure import (
    PLAIN,
    Plan,
    arch_label,
    levers,
    one_thread,
    run_box_problem,
    train_regressor,
)
from structlab.relumip.training import TrainConfig
from structlab.reproduce import StudyContext, study
from structlab.results import Claim, StudyResult, Table, spread

PLANS = {
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
@one_thread
def peaks_study(ctx: StudyContext) -> StudyResult:
    plan = PLANS[ctx.scale]
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
    trade_off_figure(tradeoff_points(lever_nets, "lp"), path, f"Peaks {lever_arch}: accuracy vs solve time",
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
        method_table(sweep, plan.sweep_methods, "Solve methods on the plain networks"),
        lever_table(entries, lever_arch, "lp", f"Training levers on {lever_arch} (LP bounds)", "test error (nRMSE)"),
        _region_check_table(entries),
    ]
    return StudyResult(
        part="relumip", study="peaks", title="Peaks surrogate", scale=ctx.scale,
        summary=verdict_summary(claims),
        config=plan_record(plan) | {"true_minimum": minimum, "true_argmin": argmin.tolist(),
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


def _region_check_table(entries: list[dict[str, Any]]) -> Table:
    rows = [[e["arch"], e["lever"], e["seed"], e["regions_method"], f"{e['regions']:.0f}"] for e in entries
            if e["regions_method"] == "exact" and e["seed"] == entries[0]["seed"]]
    return Table("Linear regions counted exactly (first training seed)",
                 ["network", "lever", "seed", "method", "regions"], rows)


def _regions_figure(ctx: StudyContext, ds: Dataset, plan: Plan, nets: list[dict[str, Any]], path: Path) -> None:
    """Linear regions of the plain network and of the lever with the fewest regions (first training seed)."""
    from structlab.relumip.regions import plot_linear_regions

    plt = pyplot()
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
