"""A tiny subject study end to end (synthetic subjects): records, statistics, tables, figures, claims."""

from __future__ import annotations

import dataclasses

import pytest

from structlab.reproduce import StudyContext
from structlab.results import VERDICTS, finish, read_result
from structlab.subject import evaluation as ev
from structlab.subject import studies, synthetic
from structlab.subject.training import TrainConfig

TINY = studies.Plan(
    seeds=[0],
    backbones=["eegnet"],
    train=TrainConfig(steps=4, batch_size=32),
    per_subject_steps=2,
    loso_subjects=3,
    ks=(4,),
    loso_methods=ev.LOSO_METHODS,
    pooled_methods=ev.POOLED_METHODS,
    ranks=(2,),
    layer_sets={"classifier": ["classifier"]},
    calibration_epochs=3,
    fine_tune_epochs=3,
    workers=1,
)


def _trials():
    return synthetic.generate(synthetic.SyntheticConfig(n_subjects=4, trials_per_class=3, n_times=128), seed=0)


def test_tiny_ssvep_study_runs_end_to_end(tmp_path):
    ctx = StudyContext("subject", "ssvep", "quick", tmp_path, log=lambda _: None)
    result = studies.run_ssvep(ctx, TINY, _trials())
    path = finish(result, tmp_path)
    back = read_result(path)
    assert back.synthetic and back.seeds == [0]
    protocols = {r["protocol"] for r in back.metrics["records"]}
    assert protocols == {"pooled-cross-session", "loso-zero-shot", "loso-calibration-4"}
    methods = {r["method"] for r in back.metrics["records"]}
    assert {ev.SHARED, ev.PER_SUBJECT, ev.CONDITIONED, ev.FINE_TUNE, ev.ADAPTER, ev.TANGENT, "rank 2", "rank 4",
            "classifier", studies.MAIN_LAYERS} <= methods
    # every (protocol, method) has one record per held-out or tested subject and seed
    loso = [r for r in back.metrics["records"] if r["protocol"] == "loso-calibration-4" and r["method"] == ev.ADAPTER]
    assert sorted((r["subject"], r["seed"]) for r in loso) == [("01", 0), ("02", 0), ("03", 0)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in back.metrics["records"])
    assert back.metrics["comparisons"] and all(c["n_subjects"] >= 2 for c in back.metrics["comparisons"])
    assert len(back.claims) == 5 and all(c.verdict in VERDICTS for c in back.claims)
    assert {t.title.split(" (")[0] for t in back.tables} >= {"Paired comparisons", "Per-subject accuracy"}
    for figure in back.figures:
        assert (tmp_path / "subject" / figure).stat().st_size > 1000


def test_tiny_synthetic_control_runs_end_to_end(tmp_path):
    plan = studies.SyntheticPlan([0], (0.0, 3.0), (2, 3), synthetic.SyntheticConfig(n_subjects=3, n_times=128),
                                 TrainConfig(steps=4, batch_size=32), 2, workers=1)
    ctx = StudyContext("subject", "synthetic", "quick", tmp_path, log=lambda _: None)
    result = studies.run_synthetic(ctx, plan)
    back = read_result(finish(result, tmp_path))
    assert back.synthetic and len(back.claims) == 4 and all(c.verdict in VERDICTS for c in back.claims)
    assert {(row[0], row[1]) for row in back.tables[0].rows} == {(0.0, 8), (0.0, 12), (3.0, 8), (3.0, 12)}


@pytest.mark.slow
def test_loso_records_do_not_depend_on_the_number_of_worker_processes():
    trials = _trials()
    config = ev.EvalConfig(train=TrainConfig(steps=4, batch_size=32), calibration_epochs=2, fine_tune_epochs=2)
    methods = (ev.SHARED, ev.FINE_TUNE, ev.ADAPTER)
    serial = ev.evaluate_loso(trials, config, 0, (4,), ["01", "02"], methods, workers=1)
    parallel = ev.evaluate_loso(trials, config, 0, (4,), ["01", "02"], methods, workers=2)
    assert [dataclasses.astuple(r) for r in serial] == [dataclasses.astuple(r) for r in parallel]


def test_cli_layers_lists_wrapped_and_skipped_layers(capsys):
    from structlab.cli import main

    assert main(["subject", "layers", "--backbone", "eegnet", "--exclude", "classifier", "--rank", "16"]) == 0
    out = capsys.readouterr().out
    assert "wrapped  features.0     Conv2d  rank 8 (limit 8)" in out
    assert "skipped  classifier     matched by exclude=['classifier']" in out
    assert main(["subject", "layers", "--backbone", "nope"]) == 2
    assert "unknown backbone" in capsys.readouterr().err
