"""Loudness is a label: gain copies of real clips under different labels are related, never merged; one
file imported through two manifests is one row."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile

from structlab import data
from structlab.audiopairs.cleaning import CleaningConfig, clean
from structlab.audiopairs.corpus import Corpus
from structlab.audiopairs.dedup import deduplicate
from structlab.audiopairs.importing import import_folder
from structlab.audiopairs.protocol import recording_groups
from structlab.audiopairs.recordings import from_corpus
from structlab.audiopairs.splits import SplitConfig, make_splits

COLUMNS = ["path", "license", "label", "modifier", "noun", "pair_kind", "uploader", "source", "freesound_id", "sha256"]


@pytest.fixture(scope="module")
def root() -> Path:
    found = data.find("audio")
    if found is None:
        pytest.skip("shared audio corpus not found (set STRUCTLAB_DATA to a folder holding audio/)")
    return found.path


def _write_manifest(folder: Path, rows: list[dict], name: str = "manifest.csv") -> None:
    with open(folder / name, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([{c: r.get(c, "") for c in COLUMNS} for r in rows])


@pytest.fixture(scope="module")
def gain_folder(root, tmp_path_factory):
    """Real Sonic Pi clips and gain copies made from them (-2 and -5 dB), labelled as loudness pairs, plus a
    same-label copy (a true duplicate) and the package's own soft kick (a different recording)."""
    folder = tmp_path_factory.mktemp("gains")
    clips = root / "clips" / "sonic-pi-samples"
    cowbell, sr = soundfile.read(clips / "drum_cowbell.flac", dtype="float64")
    kick, sr_kick = soundfile.read(clips / "drum_bass_hard.flac", dtype="float64")
    peak = max(np.abs(cowbell).max(), np.abs(kick).max())
    cowbell, kick = cowbell * 0.8 / peak, kick * 0.8 / peak  # headroom: no gain copy clips
    written = {
        "hard_cowbell.flac": (cowbell, sr, "hard"),
        "medium_cowbell.wav": (cowbell * 10 ** (-2 / 20), sr, "medium"),
        "soft_cowbell.wav": (cowbell * 10 ** (-5 / 20), sr, "soft"),
        "soft_cowbell_copy.ogg": (cowbell * 10 ** (-5.5 / 20), sr, "soft"),  # same label: a duplicate
        "hard_kick.flac": (kick, sr_kick, "hard"),
        "soft_kick.wav": (kick * 10 ** (-5 / 20), sr_kick, "soft"),
    }
    rows = []
    for name, (samples, rate, modifier) in written.items():
        soundfile.write(folder / name, samples, rate)
        noun = name.split("_")[1].split(".")[0]
        rows.append({"path": name, "license": "CC0-1.0", "label": f"{modifier} {noun}", "modifier": modifier,
                     "noun": noun, "pair_kind": "anp", "uploader": "menegass", "source": "test"})
    real_soft = folder / "real_soft_kick.flac"
    real_soft.write_bytes((clips / "drum_bass_soft.flac").read_bytes())
    rows.append({"path": real_soft.name, "license": "CC0-1.0", "label": "soft kick", "modifier": "soft",
                 "noun": "kick", "pair_kind": "anp", "uploader": "menegass", "source": "test"})
    _write_manifest(folder, rows)
    return folder


def test_gain_copies_under_different_labels_are_related_and_never_merged(gain_folder, tmp_path):
    with Corpus(tmp_path / "c.db") as corpus:
        import_folder(corpus, gain_folder, progress=False)
        report = deduplicate(corpus, progress=False)
        name = {r["id"]: r["path"] for r in corpus.sounds()}
        duplicates = {(name[r["id"]], name[r["duplicate_of"]]) for r in corpus.sounds("duplicate_of IS NOT NULL")}
        related = {(name[r.a], name[r.b]): r.gain_db for r in report.related}
        clean(corpus, CleaningConfig())
        make_splits(corpus, SplitConfig(seed=0, val=0.3, test=0.3))
        split = {name[r["sound_id"]]: r["split"] for r in corpus.query("SELECT sound_id, split FROM splits")}
        recordings, _ = from_corpus(corpus)
    # Only the copy with the same label is a duplicate; every loudness label survives.
    assert duplicates == {("soft_cowbell_copy.ogg", "soft_cowbell.wav")}
    # The generated gains, measured back (an independent number: we made them).
    assert related.keys() == {("hard_cowbell.flac", "medium_cowbell.wav"), ("hard_cowbell.flac", "soft_cowbell.wav"),
                              ("medium_cowbell.wav", "soft_cowbell.wav"), ("hard_kick.flac", "soft_kick.wav")}
    assert related[("hard_cowbell.flac", "medium_cowbell.wav")] == pytest.approx(-2.0, abs=0.1)
    assert related[("hard_cowbell.flac", "soft_cowbell.wav")] == pytest.approx(-5.0, abs=0.1)
    assert related[("hard_kick.flac", "soft_kick.wav")] == pytest.approx(-5.0, abs=0.1)
    # The package's own soft kick is another recording: neither a duplicate nor related.
    assert not any("real_soft_kick.flac" in pair for pair in related)
    # Related clips are one recording: one split, one cross-validation group.
    assert split["hard_cowbell.flac"] == split["medium_cowbell.wav"] == split["soft_cowbell.wav"]
    groups = dict(zip([r.path.name for r in recordings], recording_groups(recordings, "recording"), strict=True))
    assert groups["hard_kick.flac"] == groups["soft_kick.wav"] != groups["real_soft_kick.flac"]
    assert groups["hard_cowbell.flac"] == groups["soft_cowbell.wav"]


def test_the_same_file_imported_through_a_second_manifest_adds_no_row(root, tmp_path):
    with open(root / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle)][:12]
    for name in ("first.csv", "second.csv"):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    with Corpus(tmp_path / "c.db") as corpus:
        first = import_folder(corpus, root, tmp_path / "first.csv", progress=False)
        second = import_folder(corpus, root, tmp_path / "second.csv", progress=False)
        assert (first.already, second.already) == (0, len(rows))
        assert corpus.counts()["sounds"] == len(rows) == len({r["sha256"] for r in rows})
        assert len(corpus.query("SELECT * FROM imports")) == 2
