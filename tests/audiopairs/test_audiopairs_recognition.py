"""Recognisers: audio words against brute force, top-k against scikit-learn, a real detector beats chance."""

from __future__ import annotations

import numpy as np
import pytest

from structlab import data
from structlab.audiopairs import features as feats
from structlab.audiopairs.audiowords import AudioWordCodebook
from structlab.audiopairs.protocol import grouped_folds, recording_groups
from structlab.audiopairs.recognition import FeatureTable, Recogniser, cross_validate, detect_pair
from structlab.audiopairs.recordings import drop_duplicates, from_manifest

AUDIO = data.find("audio")
needs_audio = pytest.mark.skipif(AUDIO is None, reason="shared audio corpus not found (set STRUCTLAB_DATA)")


@pytest.fixture(scope="module")
def kicks_and_birds(tmp_path_factory):
    recs, _ = drop_duplicates(from_manifest(AUDIO.path))
    recs = [r for r in recs if r.noun in ("kick", "bird")]
    clips = feats.extract([r.path for r in recs], checksums=[r.sha256 for r in recs],
                          cache_dir=tmp_path_factory.mktemp("features"), progress=False)
    return recs, FeatureTable(clips)


def test_audio_words_are_nearest_centroid_histograms():
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal((n, 6)) + k for k, n in enumerate([30, 50, 20])]
    book = AudioWordCodebook(n_words=4, random_state=0).fit(clips)
    hist = book.transform(clips)
    centroids = book.kmeans_.cluster_centers_
    for frames, h in zip(clips, hist, strict=True):
        z = (frames - book.mean_) / book.scale_
        nearest = np.argmin(((z[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)  # brute force
        np.testing.assert_allclose(h, np.bincount(nearest, minlength=4) / len(frames))
    with pytest.raises(ValueError, match="n_words=500"):
        AudioWordCodebook(n_words=500).fit(clips)


def test_top_k_and_balanced_accuracy_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

    rng = np.random.default_rng(1)
    y = np.repeat(np.array(["a", "b", "c", "d"]), 10)
    clips = [feats.ClipFeatures(rng.standard_normal((8, 12)) + (ord(c) % 3), rng.standard_normal((4, 12)), 1.0)
             for c in y]
    table = FeatureTable(clips)
    groups = np.arange(len(y))
    folds = grouped_folds(y, groups, n_splits=5, seed=0)
    rec = Recogniser("logreg", "logmel")
    cv = cross_validate([rec], table, np.arange(len(y)), y, folds, top_k=(1, 2))[rec.name]
    X = table.inputs("logmel")
    for (train, test), acc, top2 in zip(folds, cv.accuracy, cv.top_k[2], strict=True):
        model = rec.pipeline().fit(X[train], y[train])
        assert acc == pytest.approx(balanced_accuracy_score(y[test], model.predict(X[test])))
        scores = model.decision_function(X[test])
        assert top2 == pytest.approx(top_k_accuracy_score(y[test], scores, k=2, labels=model.classes_))


@needs_audio
def test_detector_on_two_real_sound_classes_beats_chance_on_held_out_files(kicks_and_birds):
    from scipy.stats import binomtest

    recs, table = kicks_and_birds
    groups = recording_groups(recs, "uploader")
    y = np.array([r.noun for r in recs])
    rec = Recogniser("linear-svm", "mfcc")
    cv = cross_validate([rec], table, np.arange(len(y)), y, grouped_folds(y, groups, 4, seed=0))[rec.name]
    correct = int(np.sum(np.array(cv.y_true) == np.array(cv.y_pred)))
    assert len(cv.y_true) == len(recs)  # every file scored once, as a held-out file
    assert cv.pooled_accuracy() > 0.8
    assert binomtest(correct, len(y), 0.5, alternative="greater").pvalue < 1e-3


@needs_audio
def test_pair_detector_uses_balanced_negatives_and_bag_of_words(kicks_and_birds):
    recs, table = kicks_and_birds
    groups = recording_groups(recs, "uploader")
    positive = np.array([r.noun == "bird" for r in recs])
    recognisers = [Recogniser("logreg", "mfcc"), Recogniser("rbf-svm", "boaw", n_words=16, max_frames=2000)]
    result = detect_pair("bird", table, positive, ~positive, groups, recognisers, n_repeats=2, n_splits=3)
    assert result.n_positive == positive.sum()
    for name in (r.name for r in recognisers):
        assert len(result.accuracy[name]) == 6
        assert np.mean(result.accuracy[name]) > 0.7


def test_sfx_embeddings_match_the_aisfx_package(tmp_path):
    """Our network and input against aiSFX's own code, where the wheel is installed (pip install --no-deps aisfx)."""
    import torch

    from structlab.audiopairs import embeddings

    checkpoint = embeddings.find_aisfx_checkpoint()
    if checkpoint is None:
        pytest.skip("aisfx wheel not installed (pip install --no-deps aisfx)")
    ref_net = pytest.importorskip("aisfx.models.cnn2d")
    net = embeddings.load_embedding_net(checkpoint)
    reference = ref_net.EmbeddingNet("max", 3, 1, 64)
    reference.load_state_dict(net.state_dict())  # strict: the same parameter names and shapes
    x = torch.rand(2, 100, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference.eval()(x))
    blocking = pytest.importorskip("aisfx.preprocessing").blocking
    for n_frames in (30, 100, 149, 173, 251):
        spec = np.random.default_rng(n_frames).random((n_frames, 96)).astype(np.float32)
        np.testing.assert_array_equal(embeddings.blocks(spec), blocking(spec, 100, 50, True))
    if AUDIO is not None:
        from aisfx.spectrogram.spectrogram_librosa import compute_spectrogram

        from structlab.audiopairs.audio import load_audio

        path = AUDIO.path / "clips" / "lincity-ng-data" / "IndustryHigh1.wav"
        theirs = compute_spectrogram(path, 44100.0, 2048, 1024, 96, 0.0, 22050.0).T / embeddings.SPEC_MAX
        np.testing.assert_allclose(embeddings.sfx_spectrogram(load_audio(path, sr=44100)), theirs, atol=1e-5)
        short = AUDIO.path / "clips" / "openttd-opensfx" / "00_good-year.flac"  # one block: cheap on a CPU
        vectors = embeddings.embed([short], checkpoint, progress=False)
        assert vectors.shape == (1, 512) and np.isfinite(vectors).all()
