"""Benchmark: how verify() should encode a disjunction, and what a cutoff or the attack's warm start buys.

On VNN-COMP 2021 mnistfc instances that the bounds alone do not decide (the MILP has to), in one run and
in the same order for every variant:

- disjunctions "split" (one MILP per disjunct, sharing the bounds) against "indicator" (one MILP with a
  binary per disjunct, big-M from the output bounds);
- each with the cutoff (the solver prunes every node that cannot reach a margin below tau; the default),
  or without it, warm-started from the attack's best point or cold.

Ratios are time(variant) / time(split with the cutoff, the default), geometric means over the instances
that not both time out; a variant that times out counts at the time-out. Prints JSON and writes
``results/relumip/bench_verify.json``::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/relumip_verify.py --scale quick
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import numpy as np

from structlab import data
from structlab.errors import DataNotFoundError
from structlab.relumip.verifier import verify
from structlab.relumip.vnnlib import read_vnnlib
from structlab.results import Claim, StudyResult, Table, finish

# instances of the 2x256 network whose answer needs a MILP (settled "holds" by the competition's tools)
# The arguments that make this script's results file evidence (docs name them while it is missing).
EVIDENCE_ARGS = {"bench_verify": "--scale full"}
SCALES = {
    "quick": {"instances": ["prop_0_0.03", "prop_5_0.03"], "timeout": 60.0},
    "full": {"instances": ["prop_0_0.03", "prop_1_0.03", "prop_3_0.03", "prop_5_0.03", "prop_9_0.03"],
             "timeout": 120.0},
}
VARIANTS = {  # (disjunctions, warm start, cutoff)
    "split, cutoff": ("split", True, True), "split, warm start": ("split", True, False),
    "split, cold": ("split", False, False), "indicator, cutoff": ("indicator", True, True),
    "indicator, warm start": ("indicator", True, False), "indicator, cold": ("indicator", False, False),
}
BASELINE = "split, cutoff"


def run(scale: str) -> StudyResult:
    source = data.resolve("vnncomp2021-mnistfc")
    folder = source.path
    plan = SCALES[scale]
    network = folder / "mnist-net_256x2.onnx"
    # One untimed call first: the process's first verify() pays for imports and first-call set-up (about
    # a second), which would otherwise be charged to the first variant of the first instance, the default.
    verify(network, read_vnnlib(folder / f"{plan['instances'][0]}.vnnlib"), plan["timeout"], bounds="crown")
    records = []
    for prop in plan["instances"]:
        for name, (disjunctions, warm, cutoff) in VARIANTS.items():
            v = verify(network, read_vnnlib(folder / f"{prop}.vnnlib"), plan["timeout"],
                       disjunctions=disjunctions, warm_start=warm, cutoff=cutoff, bounds="crown")
            rec = {"instance": prop, "variant": name, "result": v.result, "seconds": v.seconds,
                   "milp_seconds": v.details["milp_seconds"], "nodes": v.details["nodes"], "stage": v.stage}
            records.append(rec)
            print(json.dumps(rec), file=sys.stderr)
    rows, ratios = [], {}
    for name in VARIANTS:
        mine = {r["instance"]: r for r in records if r["variant"] == name}
        base = {r["instance"]: r for r in records if r["variant"] == BASELINE}
        counted = [i for i in mine if "timeout" not in (mine[i]["result"], base[i]["result"])
                   or mine[i]["result"] != base[i]["result"]]  # not when both time out
        logs = [math.log(max(mine[i]["seconds"], 1e-3) / max(base[i]["seconds"], 1e-3)) for i in counted]
        ratios[name] = math.exp(float(np.mean(logs))) if logs else None
        decided = sum(r["result"] in ("holds", "violated") for r in mine.values())
        rows.append([name, decided, len(mine), round(float(np.median([r["seconds"] for r in mine.values()])), 2),
                     None if ratios[name] is None else round(ratios[name], 3)])
    best = min((n for n in VARIANTS if ratios[n] is not None), key=lambda n: ratios[n], default=BASELINE)
    claims = [Claim("the default (split disjunctions, MILP cutoff at tau) is the fastest variant",
                    f"fastest: {best} (ratios to the default: "
                    + ", ".join(f"{n} {r:.2f}" for n, r in ratios.items() if r is not None) + ")",
                    "agrees" if best == BASELINE else "disagrees")]
    return StudyResult(
        part="relumip", study="bench_verify", title="verify(): disjunction encodings and warm starts",
        scale=scale, config=plan | {"bounds": "crown", "network": "mnist-net_256x2.onnx"}, data=[source.as_record()],
        metrics={"ratio_to_default": ratios, "fastest": best, "records": records},
        tables=[Table("Variants of verify() on instances that need a MILP",
                      ["variant", "decided", "instances", "median seconds", "time ratio to default (geo-mean)"],
                      rows, note="one thread; a time-out counts at the time-out; same instances, same order")],
        claims=claims,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=tuple(SCALES), default="quick")
    parser.add_argument("--results", default="results")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        result = run(args.scale)
    except DataNotFoundError as err:  # nothing measured: say why and fail
        print(f"relumip_verify: {err}", file=sys.stderr)
        sys.exit(2)
    path = finish(result, args.results, wall_seconds=time.perf_counter() - start)
    out: dict[str, Any] = {k: v for k, v in result.metrics.items() if k != "records"}
    print(json.dumps({"results": str(path), **out, "claims": [c.verdict for c in result.claims]}, indent=2))


if __name__ == "__main__":
    main()
