"""Feature extraction speed over the shared audio corpus: x real time per core, cold and warm cache.

Measured in one run:

1. cold: every clip decoded, resampled and turned into log-mel + MFCC frames by ``extract`` in worker
   processes (one per core), written to an empty cache;
2. warm: the same call again, reading the cache;
3. baseline: the usual per-clip librosa recipe (``librosa.load``, then ``feature.mfcc`` and
   ``feature.melspectrogram``, each computing its own spectrogram) in one process, on every 4th clip.

"x real time per core" is seconds of audio per CPU second the extraction used (this process and its
workers): what one core delivers, whatever else shares the machine. The wall-clock variant, seconds of
audio / (wall seconds x worker processes), is reported beside it with the load average, since on
shared cores it also counts the time other jobs held them.
Targets (issue 10): cold >= 100x real time per core; warm >= 20x faster than cold.

Run: ``STRUCTLAB_DATA=../shared/data python benchmarks/audiopairs_features.py``
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from structlab import data, runtime
from structlab.audiopairs import features as feats
from structlab.audiopairs.recordings import from_manifest
from structlab.results import Claim, StudyResult, Table, finish


def _librosa_baseline(paths, cfg: feats.FeatureConfig) -> tuple[float, float]:
    import librosa

    audio_s, start = 0.0, time.perf_counter()
    for path in paths:
        y, _ = librosa.load(path, sr=cfg.sr, mono=True)
        audio_s += len(y) / cfg.sr
        librosa.feature.mfcc(y=y, sr=cfg.sr, n_mfcc=cfg.n_mfcc, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                             n_mels=cfg.n_mels)
        librosa.feature.melspectrogram(y=y, sr=cfg.sr, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels)
    return audio_s, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=runtime.cpu_count(), help="worker processes (default: cores)")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    args = parser.parse_args(argv)
    began = time.perf_counter()

    corpus = data.resolve("audio")
    recs = from_manifest(corpus.path)
    paths, shas = [r.path for r in recs], [r.sha256 for r in recs]
    cfg = feats.FeatureConfig()
    # Warm librosa's lazy imports in this process, so the baseline is not charged for them either.
    feats.compute_features(np.zeros(cfg.sr, dtype=np.float32), cfg)

    m = feats.measure_extraction(paths, shas, cfg, n_jobs=args.workers)
    base_audio, base_s = _librosa_baseline(paths[::4], cfg)

    audio_s, cold_s, warm_s, workers = m["audio_seconds"], m["cold_seconds"], m["warm_seconds"], m["workers"]
    per_core, per_cpu = m["x_realtime_per_core"], m["x_realtime_per_cpu_second"]
    baseline_per_core = base_audio / base_s
    load = os.getloadavg()[0]
    out = {
        **{k: round(v, 3) for k, v in m.items()},
        "load_average_1min": round(load, 2),
        "cpu_count": runtime.cpu_count(),
        "baseline_librosa_x_realtime_per_core": round(baseline_per_core, 1),
        "speedup_vs_librosa_baseline_per_core": round(per_core / baseline_per_core, 2),
    }
    print(json.dumps(out, indent=2))

    result = StudyResult(
        part="audiopairs",
        study="bench_features",
        title="Feature extraction speed over the shared audio corpus",
        scale="full",
        summary=f"{per_core:.0f}x real time per core cold ({workers} workers), warm cache "
        f"{cold_s / warm_s:.0f}x faster than cold.",
        config={"features": cfg.__dict__, "workers": workers, "baseline_files": len(paths[::4])},
        data=[corpus.as_record()],
        metrics=out,
        tables=[Table(
            "Extraction speed (one run)",
            ["run", "files", "audio s", "wall s", "x real time per core"],
            [
                ["cold (decode + frames + cache write)", len(paths), round(audio_s, 1), round(cold_s, 2),
                 round(per_core, 1)],
                ["warm (cache read)", len(paths), round(audio_s, 1), round(warm_s, 3),
                 round(audio_s / (warm_s * workers), 1)],
                ["baseline: librosa.load + mfcc + melspectrogram, 1 process", len(paths[::4]), round(base_audio, 1),
                 round(base_s, 2), round(baseline_per_core, 1)],
            ],
        )],
        claims=[
            Claim("Feature extraction runs at >= 100x real time per core on the shared corpus (issue 10).",
                  f"{per_cpu:.0f}x real time per CPU second; {per_core:.0f}x per worker by wall time at load "
                  f"average {load:.1f} on {runtime.cpu_count()} cores",
                  "agrees" if per_cpu >= 100 else "disagrees",
                  "Wall time x workers counts time lost to other jobs on shared cores; CPU seconds do not."),
            Claim("A second run with a warm cache is >= 20x faster than the first (issue 10).",
                  f"{cold_s / warm_s:.1f}x ({cold_s:.2f} s -> {warm_s:.3f} s)",
                  "agrees" if cold_s / warm_s >= 20 else "disagrees"),
        ],
    )
    path = finish(result, args.results, wall_seconds=time.perf_counter() - began)
    print(f"results: {path}")
    return out


if __name__ == "__main__":
    main()
