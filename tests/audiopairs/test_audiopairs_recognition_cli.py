"""The recognition commands on a small corpus imported from a slice of the shared recordings."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from structlab import data
from structlab.audiopairs import features as feats
from structlab.cli import main

AUDIO = data.find("audio")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    if AUDIO is None:
        pytest.skip("shared audio corpus not found (set STRUCTLAB_DATA)")
    from structlab.audiopairs.corpus import Corpus
    from structlab.audiopairs.importing import import_folder

    folder = tmp_path_factory.mktemp("corpus")
    with open(AUDIO.path / "manifest.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = [r for r in reader if r["noun"] in ("industry", "traffic", "farm", "kick")]
        fields = reader.fieldnames
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with Corpus(folder / "corpus.db") as corpus:
        import_folder(corpus, AUDIO.path, folder / "manifest.csv", progress=False)
    return folder / "corpus.db", len(rows)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_features_command_writes_labelled_matrix(small_corpus, cache_dir, tmp_path, monkeypatch):
    db, n_rows = small_corpus
    monkeypatch.setattr(feats, "default_cache_dir", lambda: cache_dir)
    out = tmp_path / "f.npz"
    args = ["--quiet", "audiopairs", "features", str(db), "--out", str(out), "--set", "mfcc", "--workers", "1"]
    assert main(args) == 0
    with np.load(out) as npz:
        assert npz["X"].shape == (n_rows, 120)
        assert "heavy industry" in set(npz["pair"].tolist())
        assert np.isfinite(npz["X"]).all()


def test_recognise_command_reports_each_pair_with_chance(small_corpus, cache_dir, monkeypatch, capsys):
    db, _ = small_corpus
    monkeypatch.setattr(feats, "default_cache_dir", lambda: cache_dir)
    args = ["--quiet", "audiopairs", "recognise", str(db), "--classifier", "logreg", "--repeats", "2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "chance 0.5" in text and "heavy industry" in text and "mean over anp pairs" in text
    assert main([*args, "--pair", "purple industry"]) == 2
    assert "purple industry" in capsys.readouterr().err
