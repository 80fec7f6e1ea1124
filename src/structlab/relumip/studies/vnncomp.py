"""Study ``relumip/vnncomp``: the VNN-COMP 2021 mnistfc instances, answered by :func:`verify` and compared
instance by instance with the 12 tools' published results.

Each instance is one network (784-256x{2,4,6}-10) and one property (an L-inf ball of radius 0.03 or 0.05
around an MNIST test image, unsafe when another class scores at least the true one), at the competition's
time-out as its instances file lists it (120 s for the 2x256 network, 300 s for 4x256 and 6x256), on one
thread. An answer is *settled* by a counterexample that onnxruntime confirmed
(ours; the competition's files do not carry the tools' counterexamples) or else by a strict majority of the
tools that decided the instance, at least two of them; a tool's answer that contradicts a settled one is
wrong. The tools ran on 64-vCPU cloud machines (GPU tools on p3.2xlarge), we run on one core of a shared
machine: times compare orders of magnitude, not seconds.

Resumable: every instance's verdict is appended to the study's cache as it finishes.
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from structlab import data
from structlab.jobs import Job
from structlab.relumip.studies.analysis import median_iqr, verdict_summary
from structlab.relumip.studies.figures import pyplot
from structlab.relumip.studies.measure import job_key, one_thread, run_measurements
from structlab.relumip.verifier import verify
from structlab.relumip.vnnlib import read_vnnlib
from structlab.reproduce import StudyContext, study
from structlab.results import Claim, StudyResult, Table

DATASET = "vnncomp2021-mnistfc"
OURS = "structlab"
GOAL_TOOL = "venus2"  # the goal: decide at least as many instances as this MILP-based verifier
# A settling majority needs at least two tools that agree: the 2021 results carry no counterexamples, and one
# tool's unchecked answer is no evidence (RPM's answers are contradicted by every other tool that decided the
# instance on about half of the instances it decided, and it is the only tool to decide 14 of them).
MIN_AGREEING = 2
# the published result words, mapped onto VNN-COMP 2021's four answers
_ANSWER = {"holds": "holds", "unsat": "holds", "violated": "violated", "sat": "violated"}


@dataclass(frozen=True)
class VnncompPlan:
    """Which instances (all when ``instances`` is None), the time-out per instance (None: the one the
    instances file lists, 120 s or 300 s, as the competition ran them), the verifier's options."""

    instances: tuple[tuple[str, str], ...] | None
    timeout: float | None
    disjunctions: str = "split"
    warm_start: bool = True
    seed: int = 0


PLANS = {
    # a violated instance (found by the attack), a robust one and a second violated one, at a short time-out
    "quick": VnncompPlan(instances=(("mnist-net_256x2.onnx", "prop_1_0.05.vnnlib"),
                                    ("mnist-net_256x2.onnx", "prop_2_0.03.vnnlib"),
                                    ("mnist-net_256x2.onnx", "prop_7_0.05.vnnlib")), timeout=20.0),
    "full": VnncompPlan(instances=None, timeout=None),
}


def read_instances(folder: Path) -> list[tuple[str, str, float]]:
    """``mnistfc_instances.csv``: (onnx, vnnlib, time-out) per instance, in the competition's order."""
    with open(folder / "mnistfc_instances.csv", encoding="utf-8") as handle:
        return [(row[0].strip(), row[1].strip(), float(row[2])) for row in csv.reader(handle) if row]


def read_published(folder: Path) -> dict[tuple[str, str], dict[str, tuple[str, float]]]:
    """The tools' published answers: (onnx, vnnlib) -> tool -> (answer, seconds).

    Answers are "holds", "violated" (a-b-CROWN's UNSAT/SAT mapped), or the tool's word for no answer
    (timeout, unknown, error...), kept as "timeout"/"unknown"/"error" in three groups.
    """
    out: dict[tuple[str, str], dict[str, tuple[str, float]]] = defaultdict(dict)
    with open(folder / "vnncomp2021_results.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            word = row["result"].strip().lower()
            answer = _ANSWER.get(word) or ("timeout" if "timeout" in word else
                                           "unknown" if word in ("unknown", "") else "error")
            seconds = float(row["seconds"]) if row["seconds"] else math.nan
            key = (Path(row["onnx"]).name, Path(row["vnnlib"]).name)
            out[key][row["tool"]] = (answer, seconds)
    return out


def settle(ours: dict[str, Any] | None, tools: dict[str, tuple[str, float]]) -> tuple[str, str]:
    """The settled answer of one instance and how: ("violated", "checked counterexample") when our
    counterexample passed onnxruntime, else (answer, "majority k of n") of the tools that decided it, k at
    least ``MIN_AGREEING`` (our own answer does not vote), or ("unsettled", why)."""
    if ours is not None and ours["result"] == "violated" and ours["checked"]:
        return "violated", "checked counterexample"
    votes = Counter(a for a, _ in tools.values() if a in ("holds", "violated"))  # ours does not vote
    n = votes["holds"] + votes["violated"]
    for answer in ("holds", "violated"):
        if votes[answer] * 2 > n and votes[answer] >= MIN_AGREEING:
            return answer, f"majority {votes[answer]} of {n}"
    if n < MIN_AGREEING:
        only = next((f"{t}'s {a}" for t, (a, _) in tools.items() if a in ("holds", "violated")), None)
        return "unsettled", f"one tool only ({only})" if only else "no answer"
    return "unsettled", f"tie {votes['holds']}:{votes['violated']}"


def solve_one(folder: Path, onnx: str, vnnlib: str, timeout: float, plan: VnncompPlan) -> dict[str, Any]:
    """One instance through :func:`verify` (counterexamples are checked by onnxruntime inside)."""
    verdict = verify(folder / onnx, read_vnnlib(folder / vnnlib), timeout, disjunctions=plan.disjunctions,
                     warm_start=plan.warm_start, seed=plan.seed)
    return {"onnx": onnx, "vnnlib": vnnlib, "timeout": timeout, "result": verdict.result, "seconds": verdict.seconds,
            "stage": verdict.stage, "checked": verdict.counterexample is not None, "details": verdict.details}


@study("relumip", "vnncomp", title="VNN-COMP 2021 mnistfc: verify() against the competition's 12 tools")
@one_thread
def vnncomp_study(ctx: StudyContext) -> StudyResult:
    plan = PLANS[ctx.scale]
    source = data.resolve(DATASET)  # DataNotFoundError (with how to get it) when the folder is absent
    folder = Path(source.path)
    listed = {(o, v): t for o, v, t in read_instances(folder)}
    chosen = list(listed) if plan.instances is None else list(plan.instances)
    published = read_published(folder)
    keys = {(onnx, vnnlib): job_key(f"{onnx}|{vnnlib}") for onnx, vnnlib in chosen}
    # The folder is where the data happen to be, not what the outcome depends on: identity leaves it out.
    jobs = [Job(keys[o, v], solve_one, {"folder": folder, "onnx": o, "vnnlib": v,
                                        "timeout": plan.timeout or listed[(o, v)], "plan": plan},
                identity=[o, v, plan.timeout or listed[(o, v)]])
            for o, v in chosen]
    outcomes = run_measurements(ctx, plan, jobs, (VnncompPlan, solve_one))
    records = [outcomes[keys[o, v]] for o, v in chosen]
    for rec in records:
        ctx.log(f"{rec['onnx']}|{rec['vnnlib']}: {rec['result']} ({rec['stage'] or '-'}) in {rec['seconds']:.1f} s")
    return _result(ctx, plan, records, published, source.as_record())


def _result(ctx: StudyContext, plan: VnncompPlan, records: list[dict[str, Any]],
            published: dict[tuple[str, str], dict[str, tuple[str, float]]], source: dict[str, Any]) -> StudyResult:
    tools = sorted({t for answers in published.values() for t in answers})
    rows_by_tool: dict[str, dict[str, Any]] = {t: {"answers": [], "seconds": []} for t in [OURS, *tools]}
    per_instance = []
    settled_count = Counter()
    for rec in records:
        key = (rec["onnx"], rec["vnnlib"])
        theirs = published.get(key, {})
        answer, how = settle(rec, theirs)
        settled_count[answer] += 1
        answers = {OURS: (rec["result"], rec["seconds"]), **theirs}
        for tool, (a, s) in answers.items():
            rows_by_tool[tool]["answers"].append((a, answer))
            rows_by_tool[tool]["seconds"].append(s if a in ("holds", "violated") else math.nan)
            others = [b for t, (b, _) in answers.items() if t != tool and b in ("holds", "violated")]
            if a in ("holds", "violated") and others and all(b != a for b in others):
                rows_by_tool[tool]["alone"] = rows_by_tool[tool].get("alone", 0) + 1
        agree = sum(1 for a, _ in theirs.values() if a == answer)
        per_instance.append([rec["onnx"].removeprefix("mnist-net_").removesuffix(".onnx"),
                             rec["vnnlib"].removesuffix(".vnnlib"), answer, how, rec["result"], rec["stage"] or "-",
                             round(rec["seconds"], 2), theirs.get("venus2", ("-", 0))[0],
                             theirs.get("a-b-CROWN", ("-", 0))[0], f"{agree}/{len(theirs)}"])
    tool_rows, decided, wrong = [], {}, {}
    for tool, r in rows_by_tool.items():
        answers = r["answers"]
        holds = sum(a == "holds" for a, _ in answers)
        violated = sum(a == "violated" for a, _ in answers)
        bad = sum(a in ("holds", "violated") and s in ("holds", "violated") and a != s for a, s in answers)
        secs = [s for s in r["seconds"] if np.isfinite(s)]
        decided[tool], wrong[tool] = holds + violated, bad
        tool_rows.append([tool, holds, violated, holds + violated, bad, r.get("alone", 0), median_iqr(secs),
                          sum(s <= 10 for s in secs), sum(s <= 120 for s in secs)])
    tool_rows.sort(key=lambda row: (-(row[3] - 10 * row[4]), row[0]))
    stages = Counter(rec["stage"] or rec["result"] for rec in records)
    stage_rows = [[stage, n, median_iqr(rec["seconds"] for rec in records if (rec["stage"] or rec["result"]) == stage)]
                  for stage, n in sorted(stages.items())]
    n = len(records)
    goal = decided.get(GOAL_TOOL, 0)  # over the same instances, from the published results
    claims = [
        Claim(f"verify() decides at least as many instances as {GOAL_TOOL} (a MILP-based verifier) at the "
              "competition's time-out", f"{decided[OURS]} of {n} decided against {GOAL_TOOL}'s {goal} "
              f"({ctx.scale} scale)",
              ("agrees" if decided[OURS] >= goal else "disagrees") if n == 90 else "inconclusive",
              "full scale runs all 90 instances" if n != 90 else
              "one core of a shared machine against venus2's 64 vCPUs and Gurobi"),
        Claim("zero wrong answers (against answers settled by a checked counterexample or a majority of at least "
              "two tools)",
              f"{wrong[OURS]} wrong of {decided[OURS]} decided", "agrees" if wrong[OURS] == 0 else "disagrees"),
    ]
    metrics = {"instances": n, "decided": decided, "wrong": wrong, "settled": dict(settled_count),
               "stages": dict(stages), "records": records}
    figures = []
    path = ctx.figure_path("cactus.png")
    _cactus(rows_by_tool, max(r["timeout"] for r in records), path, n)
    figures.append(path.name)
    return StudyResult(
        part="relumip", study="vnncomp", title="VNN-COMP 2021 mnistfc against the competition's tools",
        scale=ctx.scale, summary=verdict_summary(claims), config=asdict(plan) | {"tools": tools},
        seeds=[plan.seed], data=[source], metrics=metrics, claims=claims, figures=figures,
        tables=[
            Table("Decided instances per tool", ["tool", "holds", "violated", "decided", "wrong vs settled",
                                                 "against all others", "seconds per decided", "within 10 s",
                                                 "within 120 s"], tool_rows,
                  note=f"{n} instances; settled answers: {dict(settled_count)}. Against all others: decided "
                       "answers that every other tool deciding the instance contradicts (structlab included). "
                       "Seconds: median [q1, q3] of "
                       "decided instances; the tools' include about 1 s of start-up, on 64-vCPU (CPU tools) or "
                       "p3.2xlarge (GPU tools) cloud machines; structlab's are one thread of a shared machine."),
            Table("Instance by instance", ["net", "property", "settled", "settled by", "structlab", "stage",
                                           "seconds", "venus2", "a-b-CROWN", "tools agreeing"], per_instance),
            Table("structlab's answers by deciding stage", ["stage", "instances", "seconds"], stage_rows,
                  note="attack: sampling + projected gradient; lp: every disjunct closed by the rigorous LP bound; "
                       "milp: at least one closed by a MILP dual bound; timeout/unknown: undecided"),
        ],
    )


def _cactus(rows_by_tool: dict[str, dict[str, Any]], timeout: float, path: Path, n: int) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tool, r in rows_by_tool.items():
        secs = np.sort([s for s in r["seconds"] if np.isfinite(s) and s <= timeout * 1.2])
        if not secs.size:
            continue
        style = {"color": "black", "linewidth": 2.5} if tool == OURS else {"linewidth": 1}
        ax.step(secs, np.arange(1, secs.size + 1), where="post", label=tool, **style)
    ax.set_xscale("log")
    ax.set_xlabel("seconds (structlab: one thread; tools: their competition machines)")
    ax.set_ylabel(f"instances decided (of {n})")
    ax.set_title("VNN-COMP 2021 mnistfc: instances decided within a time")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
