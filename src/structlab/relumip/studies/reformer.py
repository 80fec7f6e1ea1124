"""Study ``relumip/reformer``: OMLT's autothermal-reformer surrogate (paper, Sec. 5.3), maximising H2
under the N2 limit: the optimum against OMLT's published one, bound methods, rescaling and levers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from structlab.relumip.network import ReluNetwork
from structlab.relumip.problems import reformer
from structlab.relumip.studies.analysis import (
    largest_gain_claim,
    lever_claims,
    lever_table,
    method_claims,
    method_table,
    optimum_agreement,
    plan_record,
    solves,
    stored_measurements,
    tradeoff_points,
    verdict_summary,
)
from structlab.relumip.studies.figures import performance_profile, trade_off_figure
from structlab.relumip.studies.measure import METHODS, Plan, arch_label, levers, one_thread, run_box_problem
from structlab.relumip.training import TrainConfig
from structlab.reproduce import StudyContext, study
from structlab.results import Claim, StudyResult, Table

PLANS = {
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
@one_thread
def reformer_study(ctx: StudyContext) -> StudyResult:
    plan = PLANS[ctx.scale]
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
    trade_off_figure(tradeoff_points(entries, "lp"), path, "Reformer: accuracy vs solve time", "test error (nRMSE)")
    figures.append(path.name)
    tables = [
        Table("Optimum of the plain surrogates (LP bounds) against OMLT's published answer",
              ["seed", "bypass fraction", "NG steam ratio", "H2 (surrogate)", "N2 (surrogate)", "H2 (simulator)",
               "N2 (simulator)"], rows),
        method_table(plain, plan.sweep_methods, "Solve methods on the plain networks"),
        lever_table(entries, arch, "lp", f"Training levers on {arch} (LP bounds)", "test error (nRMSE)"),
    ]
    return StudyResult(
        part="relumip", study="reformer", title="Autothermal reformer", scale=ctx.scale,
        summary=verdict_summary(claims), config=plan_record(plan) | {"published": pub, "n2_limit": reformer.N2_LIMIT},
        seeds=list(plan.train_seeds), data=[ds.source.as_record()],
        metrics={**mstats, **lstats, "optimum_agreement": worst, **stored_measurements(entries)},
        tables=tables, figures=figures, claims=claims,
    )
