"""Features: decoding, log-mel/MFCC frames against librosa, summary statistics, the cache, parallel extraction."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from structlab import data
from structlab.audiopairs import features as feats

AUDIO = data.find("audio")
needs_audio = pytest.mark.skipif(AUDIO is None, reason="shared audio corpus not found (set STRUCTLAB_DATA)")


def _manifest() -> list[dict[str, str]]:
    with open(AUDIO.path / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _one_per_format() -> list[dict[str, str]]:
    """One clip of each encoding (wav, flac, ogg, mp3), longest first so deltas have frames to work with."""
    seen: dict[str, dict[str, str]] = {}
    for row in sorted(_manifest(), key=lambda r: -float(r["duration_s"])):
        seen.setdefault(row["path"].rsplit(".", 1)[1], row)
    return [seen[ext] for ext in sorted(seen)]


@needs_audio
def test_frames_match_direct_librosa_on_a_real_clip():
    import librosa

    row = next(r for r in _one_per_format() if r["path"].endswith(".ogg"))  # 44.1 kHz Vorbis: resampled
    cfg = feats.FeatureConfig()
    clip = feats.clip_features(AUDIO.path / row["path"], cfg)
    y, _ = librosa.load(AUDIO.path / row["path"], sr=cfg.sr, mono=True)
    mfcc = librosa.feature.mfcc(y=y, sr=cfg.sr, n_mfcc=cfg.n_mfcc, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                n_mels=cfg.n_mels)
    mel = librosa.feature.melspectrogram(y=y, sr=cfg.sr, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels)
    logmel = librosa.power_to_db(mel, ref=1.0, top_db=cfg.top_db)
    assert clip.mfcc.shape == mfcc.shape and clip.logmel.shape == logmel.shape
    np.testing.assert_allclose(clip.mfcc, mfcc, atol=1e-3)
    np.testing.assert_allclose(clip.logmel, logmel, atol=0.05)


@needs_audio
def test_every_encoding_decodes_to_its_manifest_duration():
    for row in _one_per_format():
        clip = feats.clip_features(AUDIO.path / row["path"])
        assert clip.duration_s == pytest.approx(float(row["duration_s"]), abs=0.06), row["path"]
        assert np.isfinite(clip.logmel).all() and np.isfinite(clip.mfcc).all()


def test_short_clip_is_padded_to_min_seconds():
    cfg = feats.FeatureConfig(min_seconds=0.5)
    clip = feats.compute_features(np.ones(100, dtype=np.float32) * 0.1, cfg)
    assert clip.duration_s == pytest.approx(100 / cfg.sr)
    assert clip.n_frames == 1 + int(np.ceil(0.5 * cfg.sr)) // cfg.hop_length


def test_summary_vector_is_mean_and_std_of_mfcc_deltas_and_logmel():
    import librosa

    rng = np.random.default_rng(0)
    clip = feats.compute_features(rng.standard_normal(22050).astype(np.float32))
    d1 = librosa.feature.delta(clip.mfcc, width=9, order=1)
    d2 = librosa.feature.delta(clip.mfcc, width=9, order=2)
    expected = np.concatenate([
        clip.mfcc.mean(1), clip.mfcc.std(1), d1.mean(1), d1.std(1), d2.mean(1), d2.std(1),
        clip.logmel.mean(1), clip.logmel.std(1),
    ])
    np.testing.assert_allclose(feats.summary_vector(clip, "mfcc+logmel"), expected, rtol=1e-6)
    assert feats.summary_vector(clip, "mfcc").shape == (6 * 20,)
    assert feats.summary_vector(clip, "logmel").shape == (2 * 64,)


@needs_audio
def test_extraction_is_deterministic_parallel_and_cached(tmp_path):
    rows = _manifest()[:12]
    paths = [AUDIO.path / r["path"] for r in rows]
    shas = [r["sha256"] for r in rows]
    serial = feats.extract(paths, n_jobs=1, progress=False)
    cold = feats.ExtractionStats()
    parallel = feats.extract(paths, checksums=shas, cache_dir=tmp_path, n_jobs=2, progress=False, stats=cold)
    warm = feats.ExtractionStats()
    cached = feats.extract(paths, cache_dir=tmp_path, n_jobs=2, progress=False, stats=warm)  # checksums hashed here
    assert (cold.computed, cold.cached, warm.computed, warm.cached) == (12, 0, 0, 12)
    for a, b, c in zip(serial, parallel, cached, strict=True):
        np.testing.assert_array_equal(a.mfcc, b.mfcc)
        np.testing.assert_array_equal(a.logmel, c.logmel)
        assert a.duration_s == c.duration_s
    # Another configuration is another cache entry; a damaged entry is recomputed, not trusted.
    other = feats.ExtractionStats()
    feats.extract(paths[:2], feats.FeatureConfig(n_mels=40), shas[:2], tmp_path, 1, False, other)
    assert other.computed == 2
    entry = feats.FeatureCache(tmp_path).path(shas[0])
    entry.write_bytes(entry.read_bytes()[:200])  # truncated
    again = feats.ExtractionStats()
    redone = feats.extract(paths[:1], checksums=shas[:1], cache_dir=tmp_path, progress=False, stats=again)
    assert again.computed == 1
    np.testing.assert_array_equal(redone[0].mfcc, serial[0].mfcc)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="n_mfcc=80"):
        feats.FeatureConfig(n_mfcc=80)
    with pytest.raises(ValueError, match="min_seconds"):
        feats.FeatureConfig(min_seconds=0.01)
    with pytest.raises(ValueError, match="feature_set='mel'"):
        feats.summary_vector(feats.compute_features(np.zeros(22050, dtype=np.float32)), "mel")
    with pytest.raises(ValueError, match="checksums"):
        feats.extract(["a.wav"], checksums=[], progress=False)
    with pytest.raises(ValueError, match="sha256"):
        feats.FeatureCache("/tmp").path("xyz")
