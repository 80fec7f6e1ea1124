"""De-duplication on the shared audio corpus: speed, and the margins of the "same audio" decision.

Measures, in one run: (1) decoding + fingerprinting speed against the corpus's audio duration and the
time of the three-level de-duplication; (2) for re-encoded copies (Ogg Vorbis and MP3 at two
qualities each, gain changes from -3 dB to +2.3 dB without clipping) of a seeded sample of clips, the
statistics the decision uses (strong-bit BER, band-level deviation, worst-window waveform residual);
(3) the same statistics for the distinct clips whose fingerprints come closest. Prints JSON and writes
``results/audiopairs/bench_dedup.json``.

    STRUCTLAB_DATA=../shared/data python benchmarks/audiopairs_dedup.py [--clips 80] [--results results]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

from structlab import data
from structlab.audiopairs import dedup
from structlab.audiopairs import fingerprint as fp
from structlab.audiopairs.audio import load_audio
from structlab.audiopairs.corpus import Corpus
from structlab.audiopairs.importing import import_folder
from structlab.results import Claim, StudyResult, Table, finish, spread

ENCODINGS = [("OGG", "VORBIS", 0.3, 0.7), ("OGG", "VORBIS", 0.6, 1.0), ("MP3", "MPEG_LAYER_III", 0.5, 1.3),
             ("MP3", "MPEG_LAYER_III", 0.3, 0.8)]  # (format, subtype, compression level, gain)


def measure(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The statistics behind the decision, and how close they come to it: ``ratio`` <= 1 means "same"."""
    m = dedup.measure(a, b)
    m["ber"] = fp.compare(fp.fingerprint(a), fp.fingerprint(b)).ber
    m["ratio"] = max(m["level_db"] / dedup.MAX_LEVEL_DB, m["window_residual"] / dedup.MAX_WINDOW_RESIDUAL)
    if not m["same_duration"]:
        m["ratio"] = max(m["ratio"], 99.0)
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=80, help="clips to re-encode (default 80)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="results")
    args = parser.parse_args()
    found = data.resolve("audio")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(Path(tmp) / "c.db")
        import_folder(corpus, found.path, progress=False)
        t0 = time.perf_counter()
        corpus.analyse(workers=1, progress=False)
        analyse_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = dedup.deduplicate(corpus, progress=False)
        dedup_s = time.perf_counter() - t0
        audio_s = sum(r["decoded_duration"] for r in corpus.sounds())
        paths = {r["id"]: r["path"] for r in corpus.sounds()}
        found_pairs = sorted((paths[g.keep], paths[c], g.level) for g in report.groups for c in g.copies)
        prints = {
            r["id"]: fp.Fingerprint.from_bytes(r["fingerprint"])
            for r in corpus.sounds("duplicate_of IS NULL AND fingerprint IS NOT NULL")
        }
        candidates = dedup.find_candidates(prints)
        corpus.close()

    decoded = {}

    def audio(i: int) -> np.ndarray:
        if i not in decoded:
            decoded[i] = load_audio(found.path / paths[i], sr=fp.SAMPLE_RATE)
        return decoded[i]

    closest = sorted(({"a": paths[a], "b": paths[b], **measure(audio(a), audio(b))} for a, b, _ in candidates),
                     key=lambda c: c["ratio"])
    rng = random.Random(args.seed)
    sample = rng.sample(sorted(paths.values()), args.clips)
    copies = []
    with tempfile.TemporaryDirectory() as tmp:
        for rel in sample:
            samples, sr = soundfile.read(found.path / rel, dtype="float32")
            peak = float(np.abs(samples).max()) or 1.0
            original = load_audio(found.path / rel, sr=fp.SAMPLE_RATE)
            for fmt, subtype, level, gain in ENCODINGS:
                gain = min(gain, 0.99 / peak)  # a gain change, not clipping
                out = Path(tmp) / f"copy.{fmt.lower()}"
                soundfile.write(out, samples * gain, sr, format=fmt, subtype=subtype, compression_level=level)
                copy = load_audio(out, sr=fp.SAMPLE_RATE)
                verdict, _ = dedup.same_audio(original, copy)
                copies.append({"clip": rel, "format": fmt, "level": level, "gain_db": 20 * np.log10(gain),
                               "same_audio": verdict, **measure(original, copy)})
    recall = sum(c["same_audio"] for c in copies) / len(copies)
    distinct = [c for c in closest if (c["a"], c["b"]) not in {(a, b) for a, b, _ in found_pairs}]
    false = [c for c in distinct if c["ratio"] <= 1.0]
    metrics = {
        "audio_seconds": audio_s,
        "analyse_seconds": analyse_s,
        "analyse_x_realtime": audio_s / analyse_s,
        "dedup_seconds": dedup_s,
        "duplicates_found": len(found_pairs),
        "reencoded_copies": len(copies),
        "reencoded_recall": recall,
        "reencoded_level_db": spread(c["level_db"] for c in copies),
        "reencoded_window_residual": spread(c["window_residual"] for c in copies),
        "distinct_pairs_checked": len(distinct),
        "distinct_pairs_merged": len(false),
        "closest_distinct_ratio": min(c["ratio"] for c in distinct),
        "hardest_reencoded_ratio": max(c["ratio"] for c in copies),
    }
    worst = sorted(copies, key=lambda c: -c["ratio"])[:8]
    result = StudyResult(
        part="audiopairs", study="bench_dedup", title="De-duplication of the shared audio corpus", scale="full",
        summary=f"{len(found_pairs)} duplicates found; {recall:.1%} of {len(copies)} re-encoded copies matched; "
                f"{len(false)} of {len(distinct)} close distinct pairs merged",
        config={"clips": args.clips, "encodings": ENCODINGS, "max_level_db": dedup.MAX_LEVEL_DB,
                "max_window_residual": dedup.MAX_WINDOW_RESIDUAL}, seeds=[args.seed], data=[found.as_record()],
        metrics=metrics,
        tables=[
            Table("Duplicates found", ["kept", "copy", "level"], [list(p) for p in found_pairs]),
            Table("Closest distinct clips (fingerprint candidates)",
                  ["a", "b", "BER", "level dB", "window residual", "ratio"],
                  [[c["a"], c["b"], round(c["ber"], 3), round(c["level_db"], 2), round(c["window_residual"], 3),
                    round(c["ratio"], 2)] for c in distinct[:12]],
                  note="ratio = max(level / 2.75 dB, window residual / 0.35), 99 for incompatible durations; "
                       "<= 1 is merged"),
            Table("Hardest re-encoded copies", ["clip", "format", "quality", "gain dB", "BER", "level dB",
                                                "window residual", "ratio", "same audio"],
                  [[c["clip"], c["format"], c["level"], round(c["gain_db"], 1), round(c["ber"], 3),
                    round(c["level_db"], 2), round(c["window_residual"], 3), round(c["ratio"], 2), c["same_audio"]]
                   for c in worst]),
        ],
        claims=[
            Claim("the fingerprint finds the corpus's known duplicates (README 'Known quirks')",
                  f"{len(found_pairs)} found: "
                  + ", ".join(f"{Path(a).name}={Path(b).name}" for a, b, _ in found_pairs),
                  "agrees" if len(found_pairs) == 7 else "disagrees"),
            Claim("robust to re-encoding and gain changes", f"{recall:.1%} of {len(copies)} copies matched",
                  "agrees" if recall == 1.0 else "partly agrees"),
            Claim("distinct clips are not merged", f"{len(false)} of {len(distinct)} closest distinct pairs merged",
                  "agrees" if not false else "disagrees"),
        ],
    )
    path = finish(result, args.results, wall_seconds=time.perf_counter() - start)
    print(json.dumps({**{k: v for k, v in metrics.items() if not isinstance(v, dict)}, "results": str(path)}, indent=2))


if __name__ == "__main__":
    main()
