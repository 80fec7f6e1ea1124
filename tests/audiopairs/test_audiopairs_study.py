"""A tiny detectors + questions study end to end through ``reproduce``, on a slice of the real recordings."""

from __future__ import annotations

import csv
import json

import pytest

from structlab import data, reproduce
from structlab.audiopairs import features as feats
from structlab.audiopairs import studies
from structlab.audiopairs.recognition import Recogniser

AUDIO = data.find("audio")
NOUNS = {"kick", "snare", "industry", "traffic", "badger", "beaver"}
PAIRS = {("dying", "orc"), ("dying", "wolf"), ("holy", "magic")}


def _slice_manifest(path) -> None:
    """The shared manifest's rows for a few nouns and pairs, drum modifiers and non-Wesnoth VNPs (70 files)."""
    with open(AUDIO.path / "manifest.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = [
            r for r in reader
            if r["noun"] in NOUNS or (r["modifier"], r["noun"]) in PAIRS or r["modifier"] in ("soft", "hard")
            or (r["pair_kind"] == "vnp" and "wesnoth" not in r["source"])
        ]
        fields = reader.fieldnames
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.skipif(AUDIO is None, reason="shared audio corpus not found (set STRUCTLAB_DATA)")
def test_tiny_studies_write_tables_figures_and_claims(tmp_path, monkeypatch):
    manifest = tmp_path / "slice.csv"
    _slice_manifest(manifest)
    real_imported_corpus, real_from_corpus = studies.imported_corpus, studies.from_corpus

    def from_corpus(corpus):
        recordings, duplicates = real_from_corpus(corpus)
        # badger and beaver are the same audio under different labels: both kept, marked related
        assert {"badger", "beaver"} <= {r.noun for r in recordings if r.related}
        return recordings, duplicates

    tiny = studies.StudyScale(
        recognisers=[Recogniser("logreg", "mfcc"), Recogniser("linear-svm", "mfcc")],
        detector_repeats=1, seeds=[0], min_pair_groups=4, min_noun_groups=5, curve_sizes=(1, 2),
    )
    monkeypatch.setattr(studies, "imported_corpus", lambda folder, log: real_imported_corpus(folder, log, manifest))
    monkeypatch.setattr(studies, "from_corpus", from_corpus)
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
