"""Re-derive the claims of stored full-scale relumip results with the current analysis code.

Reads the measurements kept in ``results/relumip/{peaks,reformer,omlt}.json`` (every network's solve
records) and applies the analysis functions of :mod:`structlab.relumip.studies` to them: no training,
no solving. This is how the lines marked *re-analysed* in docs/relumip.md were made, for result files
written before those claims existed.

    .venv/bin/python scripts/relumip_reanalyse.py [--results results] [--out reanalysis.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from structlab.atomic import atomic_write_text
from structlab.relumip.studies import analysis, omlt

# (study, architecture of the lever grid, time limit in seconds) of the full-scale plans
BOX_STUDIES = (("peaks", "3x25", 30.0), ("reformer", "4x10", 30.0))


def reanalyse(results: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, arch, time_limit in BOX_STUDIES:
        stored = json.loads((results / "relumip" / f"{name}.json").read_text())["metrics"]
        entries = analysis.entries_from_stored(stored)
        plain = [e for e in entries if e["lever"] == "plain"]
        method, method_stats = analysis.method_claims(plain, time_limit)
        levers, lever_stats = analysis.lever_claims(entries, arch, "lp", time_limit)
        gain = analysis.largest_gain_claim([e for e in plain if e["arch"] == arch], lever_stats, arch)
        out[name] = {"claims": [vars(c) for c in [*method, *levers, gain]], "method_stats": method_stats,
                     "levers": lever_stats["levers"], "plain_error": lever_stats["plain_error"]}
    records = json.loads((results / "relumip" / "omlt.json").read_text())["metrics"]["records"]
    claims, stats = omlt.omlt_claims(records, omlt.PLANS["full"])
    out["omlt"] = {"claims": [vars(c) for c in claims], "stats": stats}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, default=Path("results/relumip/reanalysis.json"))
    args = parser.parse_args()
    out = reanalyse(args.results)
    atomic_write_text(args.out, json.dumps(out, indent=1, default=str))
    for name, part in out.items():
        print(f"===== {name}")
        for c in part["claims"]:
            print(f"- [{c['verdict']}] {c['claim']}\n    {c['measured']}")


if __name__ == "__main__":
    main()
