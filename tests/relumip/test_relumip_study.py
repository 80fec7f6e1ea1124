"""The relumip studies end to end at a tiny size, and the statistics they rest on."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import wilcoxon

from structlab import reproduce
from structlab.relumip.studies import analysis, measure
from structlab.relumip.studies import peaks as peaks_study
from structlab.relumip.training import TrainConfig
from structlab.results import VERDICTS, read_result

TINY = measure.Plan(
    architectures=((6, 6), (6, 6, 6)), lever_architecture=(6, 6),
    levers=measure.levers(l1=(1e-2,), rs=(), clip=(), dropout=()), train_seeds=(0, 1), solver_seeds=(0,),
    time_limit=10.0, train=TrainConfig(epochs=3, batch_size=64), sweep_methods=("interval", "lp", "lp+rescale"),
    region_samples=2_000, data={"n_train": 128, "n_test": 64},
)


def test_tiny_peaks_study_end_to_end_writes_results_figures_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setitem(peaks_study.PLANS, "quick", TINY)
    outcomes = reproduce.run("quick", only=["relumip"], studies=["peaks"], results_dir=tmp_path, log=lambda m: None)
    assert [o.status for o in outcomes] == ["ran"], outcomes
    result = read_result(tmp_path / "relumip" / "peaks.json")
    assert result.claims and all(c.verdict in VERDICTS for c in result.claims)
    assert all((tmp_path / "relumip" / f).is_file() for f in result.figures)
    assert len(result.metrics["networks"]) == 6  # 2 seeds x (2 sweep architectures + 1 lever)
    sweep = result.tables[0]
    assert [row[0] for row in sweep.rows] == ["2x6", "3x6"]
    solves = result.metrics["solves"]
    assert {s["method"] for s in solves} == {"interval", "lp", "lp+rescale"}
    # every encoding of one network proves the same optimum, evaluated by the network's forward pass
    assert result.metrics["optimum_agreement"] < 1e-6
    # the cache holds every network: a rerun (forced) measures nothing again and gives the same numbers
    cache = list((tmp_path / "relumip" / ".cache").glob("peaks-quick-*.jsonl"))
    assert len(cache) == 1 and len(cache[0].read_text().splitlines()) == 6
    reproduce.run("quick", only=["relumip"], studies=["peaks"], results_dir=tmp_path, force=True, log=lambda m: None)
    again = read_result(tmp_path / "relumip" / "peaks.json")
    assert [s["seconds"] for s in again.metrics["solves"]] == [s["seconds"] for s in solves]


def test_record_cache_skips_a_line_cut_short(tmp_path):
    ctx = reproduce.StudyContext("relumip", "peaks", "quick", tmp_path)
    cache = measure.RecordCache(ctx, TINY)
    cache.put("a", {"x": 1})
    cache.put("b", {"x": np.float64(2.0)})
    with open(cache.path, "a", encoding="utf-8") as handle:
        handle.write('{"key": "c", "val')
    again = measure.RecordCache(ctx, TINY)
    assert again.get("a") == {"x": 1} and again.get("b") == {"x": 2.0} and again.get("c") is None
    assert json.loads(cache.path.read_text().splitlines()[0])["key"] == "a"


def test_cache_key_follows_the_plan_and_the_measuring_code_only():
    assert measure.measurement_digest(TINY) == measure.measurement_digest(replace(TINY))
    assert measure.measurement_digest(TINY) != measure.measurement_digest(replace(TINY, time_limit=11.0))
    assert measure.solve_all in measure.MEASURING and analysis.lever_claims not in measure.MEASURING
    # a study's own measuring code is part of its key
    assert measure.measurement_digest(TINY) != measure.measurement_digest(TINY, (analysis.paired,))


def test_paired_ratio_and_wilcoxon_match_scipy():
    base = {i: float(t) for i, t in enumerate([1.0, 2.0, 4.0, 3.0, 5.0, 8.0])}
    other = {i: t * f for (i, t), f in zip(base.items(), [0.5, 0.4, 0.6, 0.5, 0.45, 0.55], strict=True)}
    other["unpaired"] = 1.0
    res = analysis.paired(base, other)
    assert res["n"] == 6 and res["faster"] == 6
    logs = np.log([other[i] / base[i] for i in range(6)])
    assert res["ratio"] == pytest.approx(float(np.exp(np.median(logs))))
    assert res["p"] == pytest.approx(wilcoxon(logs).pvalue)
    assert analysis.verdict_for_speedup(res) == "agrees"
    assert analysis.verdict_for_speedup(res, expect_faster=False) == "disagrees"
    assert analysis.verdict_for_speedup(analysis.paired(base, dict(base))) == "inconclusive"


def test_plan_solves_the_shared_plain_network_with_both_method_sets():
    plan = replace(TINY, lever_methods=("lp",), sweep_methods=("interval", "lp+rescale"))
    nets = plan.networks()
    assert len(nets) == 6
    shared = [n for n in nets if n.hidden == (6, 6) and n.lever == measure.PLAIN]
    assert [n.methods for n in shared] == [("interval", "lp+rescale", "lp")] * 2
    assert [n.solver_seeds for n in shared] == [(0,)] * 2


def test_prepare_rejects_unknown_methods():
    from structlab.relumip.problems import peaks

    with pytest.raises(ValueError, match="method"):
        measure.prepare(None, peaks.LOWER, peaks.UPPER, "milp+magic")


def test_stored_measurements_round_trip_to_the_entries():
    entries = [
        {"arch": "2x5", "lever": "plain", "seed": s, "test_error": 0.1 * s,
         "solves": [{"method": m, "seconds": float(i), "x": [0.0]} for i, m in enumerate(("interval", "lp"))]}
        for s in (0, 1)
    ]
    stored = json.loads(json.dumps(analysis.stored_measurements(entries, drop=("x",))))
    assert all("solves" not in s and "x" not in s for s in stored["solves"])  # no nested copies
    back = analysis.entries_from_stored(stored)
    assert [{k: v for k, v in e.items() if k != "solves"} for e in back] == stored["networks"]
    for original, restored in zip(entries, back, strict=True):
        assert [(s["method"], s["seconds"]) for s in restored["solves"]] == \
            [(s["method"], s["seconds"]) for s in original["solves"]]
