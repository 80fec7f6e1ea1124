"""A tiny detectors + questions study end to end through ``reproduce``, on a slice of the real recordings."""

from __future__ import annotations

import json

import pytest

from structlab import data, reproduce
from structlab.audiopairs import features as feats
from structlab.audiopairs import studies
from structlab.audiopairs.recognition import Recogniser

AUDIO = data.find("audio")


@pytest.mark.skipif(AUDIO is None, reason="shared audio corpus not found (set STRUCTLAB_DATA)")
def test_tiny_studies_write_tables_figures_and_claims(tmp_path, monkeypatch):
    keep_nouns = {"kick", "snare", "industry", "traffic", "wolf", "orc", "magic", "bird", "jet"}
    real_from_corpus = studies.from_corpus

    def slice_of_corpus(corpus):
        recordings, duplicates = real_from_corpus(corpus)
        assert any(d.reason == "same audio" for d in duplicates)  # the corpus's fingerprint de-duplication ran
        return [
            r for r in recordings
            if r.noun in keep_nouns or r.modifier in ("soft", "hard") or (r.kind == "vnp" and "wesnoth" not in r.source)
        ], duplicates

    tiny = studies.StudyScale(
        recognisers=[Recogniser("logreg", "mfcc"), Recogniser("linear-svm", "mfcc")],
        detector_repeats=1, seeds=[0], min_pair_groups=4, min_noun_groups=5, curve_sizes=(1, 2),
    )
    monkeypatch.setattr(studies, "from_corpus", slice_of_corpus)
    monkeypatch.setattr(studies, "_scale", lambda ctx: tiny)
    monkeypatch.setattr(feats, "default_cache_dir", lambda: tmp_path / "cache")

    outcomes = reproduce.run("quick", only=["audiopairs"], results_dir=tmp_path, log=lambda msg: None)
    assert {o.study: o.status for o in outcomes} == {"detectors": "ran", "questions": "ran"}, outcomes
    det = json.loads((tmp_path / "audiopairs" / "detectors.json").read_text())
    assert [row[0] for row in det["tables"][1]["rows"]] == ["dying orc", "dying wolf", "holy magic"]
    assert det["data"][0]["synthetic"] is False
    assert det["claims"][0]["verdict"] in ("agrees", "partly agrees", "disagrees")
    questions = json.loads((tmp_path / "audiopairs" / "questions.json").read_text())
    asked = {row[0] for row in questions["tables"][0]["rows"]}
    assert {"noun: kick vs snare", "kind: ANP vs VNP, unseen source package"} <= asked
    for result in (det, questions):
        for figure in result["figures"]:
            assert (tmp_path / "audiopairs" / figure).stat().st_size > 1000
