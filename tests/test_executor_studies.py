"""One tiny study of each part run twice, by the default executor and as Ray tasks on a local instance of
2 CPUs: the results must be the same up to what was timed (slow tests)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import pytest

from structlab import data
from structlab.jobs import RayExecutor
from structlab.reproduce import StudyContext
from structlab.results import StudyResult

# What is timed, or measured from times, and so differs between any two runs.
TIMED = re.compile(r"second|time|timing|wall|speed|created|environment|fingerprint", re.IGNORECASE)


def untimed(value: Any) -> Any:
    """``value`` without timed entries: dict keys and table columns whose names say they hold times."""
    if isinstance(value, StudyResult):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        if set(value) >= {"title", "columns", "rows"}:  # a table
            keep = [i for i, c in enumerate(value["columns"]) if not TIMED.search(c) and "(s)" not in c]
            return {"title": value["title"], "columns": [value["columns"][i] for i in keep],
                    "rows": [[untimed(row[i]) for i in keep] for row in value["rows"]]}
        return {k: untimed(v) for k, v in value.items() if not TIMED.search(str(k))}
    if isinstance(value, list | tuple):
        return [untimed(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"  # equal to itself
    return value


def _contexts(tmp_path: Path, part: str, study: str, ray_executor: RayExecutor) -> tuple[StudyContext, StudyContext]:
    local = StudyContext(part, study, "quick", tmp_path / "local", log=lambda _: None)
    return local, dataclasses.replace(local, results_dir=tmp_path / "ray", executor=ray_executor)


@pytest.mark.slow
@pytest.mark.skipif(data.find("shakespeare") is None, reason="the shakespeare data set is absent (STRUCTLAB_DATA)")
def test_tucker_charlm_on_ray_gives_the_local_results(tmp_path: Path, ray_executor: RayExecutor) -> None:
    from structlab.tucker.studies import run_charlm
    from tests.tucker.test_tucker_study import TINY_CHARLM

    local, ray = _contexts(tmp_path, "tucker", "charlm", ray_executor)
    assert untimed(run_charlm(ray, TINY_CHARLM)) == untimed(run_charlm(local, TINY_CHARLM))


@pytest.mark.slow
def test_subject_ssvep_on_ray_gives_the_local_results(tmp_path: Path, ray_executor: RayExecutor) -> None:
    from structlab.subject.studies import run_ssvep
    from tests.subject.test_subject_study import TINY, _trials

    local, ray = _contexts(tmp_path, "subject", "ssvep", ray_executor)
    assert untimed(run_ssvep(ray, TINY, _trials())) == untimed(run_ssvep(local, TINY, _trials()))


@pytest.mark.slow
def test_relumip_peaks_on_ray_gives_the_local_results(
    tmp_path: Path, ray_executor: RayExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from structlab.relumip.studies import peaks
    from tests.relumip.test_relumip_study import TINY

    monkeypatch.setitem(peaks.PLANS, "quick", TINY)
    local, ray = _contexts(tmp_path, "relumip", "peaks", ray_executor)
    ray_result, local_result = peaks.peaks_study(ray), peaks.peaks_study(local)
    # The paired speed-up statistics (and the claims quoting them) are computed from solve times; every
    # measurement of every network and solve, and every table, must agree.
    for key in ("networks", "solves", "growth", "growth_per_layer", "regret", "optimum_agreement"):
        assert untimed(ray_result.metrics[key]) == untimed(local_result.metrics[key]), key
    assert untimed(ray_result.tables) == untimed(local_result.tables)
    assert len(ray_result.metrics["networks"]) == 6 and ray_result.metrics["solves"]


@pytest.mark.slow
@pytest.mark.skipif(data.find("audio") is None, reason="shared audio corpus not found (set STRUCTLAB_DATA)")
def test_audiopairs_detectors_on_ray_give_the_local_results(
    tmp_path: Path, ray_executor: RayExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from structlab.audiopairs import features as feats
    from structlab.audiopairs import studies
    from structlab.audiopairs.recognition import Recogniser
    from tests.audiopairs.test_audiopairs_study import _slice_manifest

    manifest = tmp_path / "slice.csv"
    _slice_manifest(manifest)
    real_imported_corpus = studies.imported_corpus
    tiny = studies.StudyScale(recognisers=[Recogniser("logreg", "mfcc"), Recogniser("linear-svm", "mfcc")],
                              detector_repeats=2, seeds=[0], min_pair_groups=4)
    monkeypatch.setattr(studies, "imported_corpus", lambda folder, log: real_imported_corpus(folder, log, manifest))
    monkeypatch.setattr(studies, "_scale", lambda ctx: tiny)
    monkeypatch.setattr(feats, "default_cache_dir", lambda: tmp_path / "cache")
    local, ray = _contexts(tmp_path, "audiopairs", "detectors", ray_executor)
    local_result = studies.detectors(local)
    assert len(list((tmp_path / "local" / "audiopairs" / "runs" / "detectors").glob("*.json"))) >= 3
    assert untimed(studies.detectors(ray)) == untimed(local_result)
