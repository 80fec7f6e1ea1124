"""De-duplication on the shared audio corpus: speed, what the corpus reports, and the decision's margins.

Measures, in one run: (1) decoding + fingerprinting speed against the corpus's audio duration and the
time of the three-level de-duplication; (2) the same-audio pairs the data README lists under "Known
quirks", against what :func:`~structlab.audiopairs.dedup.deduplicate` reports: a duplicate where the two
labels agree, a related sound (both rows kept) where they differ, and nothing else; (3) gain copies of a
seeded sample of clips imported under loudness labels ("soft X" at -5 dB) and as a same-label copy (-2 dB):
related with the gain measured back, and a duplicate, respectively; (4) for re-encoded copies (Ogg Vorbis
and MP3 at two qualities each, gain changes from -3 dB to +2.3 dB without clipping) of the same clips,
the statistics the decision uses (strong-bit BER, band-level deviation, worst-window waveform residual);
(5) the same statistics for the fingerprint candidates that are genuinely different audio (not a pair
the README lists, not equal bytes): any of them judged "same audio" is a failure. Prints JSON and writes
``results/audiopairs/bench_dedup.json``.

    STRUCTLAB_DATA=../shared/data python benchmarks/audiopairs_dedup.py [--clips 80] [--results results]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import shutil
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
SOFT_DB, COPY_DB = -5.0, -2.0  # gain copies: a "soft" label, and a same-label copy (a true duplicate)
# README "Known quirks" lines that list same-audio pairs: `clips/a` (label) = `clips/b` (label).
QUIRK_PAIR = re.compile(r"`(clips/[^`]+)` \([^)]*\) = `(clips/[^`]+)` \([^)]*\)")


def known_same_audio(readme: Path) -> list[tuple[str, str]]:
    """The same-audio pairs the data README lists under "Known quirks" (same decoded audio, identical files)."""
    text = readme.read_text(encoding="utf-8")
    quirks = text.split("## Known quirks", 1)[-1].split("\n## ", 1)[0]
    return [tuple(sorted(m)) for m in QUIRK_PAIR.findall(quirks)]


def measure(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The statistics behind the decision, and how close they come to it: ``ratio`` <= 1 means "same"."""
    m = dedup.measure(a, b)
    m["ber"] = fp.compare(fp.fingerprint(a), fp.fingerprint(b)).ber
    m["ratio"] = max(m["level_db"] / dedup.MAX_LEVEL_DB, m["window_residual"] / dedup.MAX_WINDOW_RESIDUAL)
    if not m["same_duration"]:
        m["ratio"] = max(m["ratio"], 99.0)
    return m


def reported(corpus: Corpus, report: dedup.DedupReport) -> dict[tuple[str, str], tuple[str, str, float | None]]:
    """What the corpus says about each pair of paths it links, keyed by the sorted paths: ``(kind, level,
    gain dB of the second path relative to the first)``, kind "duplicate" (``duplicate_of``) or "related"
    (the ``related`` table, both rows kept)."""
    path = {r["id"]: r["path"] for r in corpus.sounds()}
    out: dict[tuple[str, str], tuple[str, str, float | None]] = {}
    for r in corpus.sounds("duplicate_of IS NOT NULL"):
        out[tuple(sorted((path[r["duplicate_of"]], path[r["id"]])))] = ("duplicate", r["duplicate_level"], None)
    for r in report.related:  # gain_db: b relative to a; oriented here to the sorted paths
        gain = r.gain_db if path[r.a] < path[r.b] else -r.gain_db
        out[tuple(sorted((path[r.a], path[r.b])))] = ("related", r.level, gain)
    return out


def keeper_relation(corpus: Corpus, report: dedup.DedupReport, a: str, b: str) -> str:
    """How the corpus relates two paths: "duplicate" (one kept row for both), "related" (their kept rows are
    in the ``related`` table) or "neither"."""
    rows = {r["path"]: r for r in corpus.sounds()}
    keep = [rows[p]["duplicate_of"] or rows[p]["id"] for p in (a, b)]
    if keep[0] == keep[1]:
        return "duplicate"
    return "related" if {tuple(keep), tuple(keep[::-1])} & {(r.a, r.b) for r in report.related} else "neither"


def gain_copies(root: Path, sample: list[str], labels: dict[str, str], folder: Path) -> list[dict]:
    """Import each sampled clip, a ``SOFT_DB`` copy labelled "soft <label>" and a ``COPY_DB`` copy under the
    same label into a fresh corpus, de-duplicate it, and say what the corpus reports for each."""
    rows, cases = [], []
    for n, rel in enumerate(sample):
        samples, sr = soundfile.read(root / rel, dtype="float32")
        original = f"{n:03d}_original{Path(rel).suffix}"
        shutil.copyfile(root / rel, folder / original)
        soft, copy = f"{n:03d}_soft.wav", f"{n:03d}_copy.flac"
        soundfile.write(folder / soft, samples * 10 ** (SOFT_DB / 20), sr)
        soundfile.write(folder / copy, samples * 10 ** (COPY_DB / 20), sr)
        label = labels[rel]
        rows += [{"path": original, "license": "test", "label": label},
                 {"path": soft, "license": "test", "label": f"soft {label}"},
                 {"path": copy, "license": "test", "label": label}]
        cases.append({"clip": rel, "original": original, "soft": soft, "copy": copy})
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "license", "label"])
        writer.writeheader()
        writer.writerows(rows)
    with Corpus(folder / "gains.db") as corpus:
        import_folder(corpus, folder, progress=False)
        report = dedup.deduplicate(corpus, progress=False)
        gains = reported(corpus, report)
        for case in cases:
            case["soft_reported"] = keeper_relation(corpus, report, case["original"], case["soft"])
            case["copy_reported"] = keeper_relation(corpus, report, case["original"], case["copy"])
            _, _, gain = gains.get((case["original"], case["soft"]), ("", "", None))  # "NNN_original" < "NNN_soft"
            case["soft_gain_db"] = gain
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=80, help="clips to copy and re-encode (default 80)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="results")
    args = parser.parse_args()
    found = data.resolve("audio")
    start = time.perf_counter()
    known = known_same_audio(found.path / "README.md")
    if not known:
        raise SystemExit(f"{found.path / 'README.md'}: no same-audio pairs found under 'Known quirks'")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(Path(tmp) / "c.db")
        import_folder(corpus, found.path, progress=False)
        t0 = time.perf_counter()
        corpus.analyse(workers=1, progress=False)
        analyse_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = dedup.deduplicate(corpus, progress=False)
        dedup_s = time.perf_counter() - t0
        sounds = corpus.sounds()
        audio_s = sum(r["decoded_duration"] for r in sounds)
        paths = {r["id"]: r["path"] for r in sounds}
        labels = {r["path"]: r["label"] or Path(r["path"]).stem for r in sounds}
        sha = {r["path"]: r["sha256"] for r in sounds}
        found_pairs = reported(corpus, report)
        known_rows = []
        for a, b in known:
            expected = "duplicate" if labels[a].strip().casefold() == labels[b].strip().casefold() else "related"
            kept = len(corpus.sounds("path IN (?, ?) AND duplicate_of IS NULL", (a, b)))
            known_rows.append({"a": a, "b": b, "expected": expected,
                               "reported": keeper_relation(corpus, report, a, b), "rows_kept": kept})
        # every fingerprint candidate, merged or not: the decision is measured on all of them below
        prints = {r["id"]: fp.Fingerprint.from_bytes(r["fingerprint"]) for r in sounds if r["fingerprint"]}
        candidates = dedup.find_candidates(prints)
        corpus.close()

    known_set = set(known)
    unexpected = sorted(p for p in found_pairs if p not in known_set)
    as_expected = [k for k in known_rows if k["reported"] == k["expected"]
                   and k["rows_kept"] == (1 if k["expected"] == "duplicate" else 2)]
    decoded = {}

    def audio(path: str) -> np.ndarray:
        if path not in decoded:
            decoded[path] = load_audio(found.path / path, sr=fp.SAMPLE_RATE)
        return decoded[path]

    # Genuinely different audio: candidates that are neither a README same-audio pair nor equal bytes.
    distinct = []
    for i, j, _ in candidates:
        a, b = sorted((paths[i], paths[j]))
        if (a, b) in known_set or sha[a] == sha[b]:
            continue
        verdict, _ = dedup.same_audio(audio(a), audio(b))
        distinct.append({"a": a, "b": b, "same_audio": verdict, "reported": found_pairs.get((a, b), ("",))[0],
                         **measure(audio(a), audio(b))})
    distinct.sort(key=lambda c: c["ratio"])
    matched = [c for c in distinct if c["same_audio"] or c["reported"]]

    rng = random.Random(args.seed)
    sample = rng.sample(sorted(paths.values()), args.clips)
    with tempfile.TemporaryDirectory() as tmp:
        gains = gain_copies(found.path, sample, labels, Path(tmp))
    soft_ok = [g for g in gains if g["soft_reported"] == "related"]
    copy_ok = [g for g in gains if g["copy_reported"] == "duplicate"]
    gain_error = [abs(g["soft_gain_db"] - SOFT_DB) for g in gains if g["soft_gain_db"] is not None]

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

    duplicates = sorted(p for p, v in found_pairs.items() if v[0] == "duplicate")
    related = sorted(p for p, v in found_pairs.items() if v[0] == "related")
    metrics = {
        "audio_seconds": audio_s,
        "analyse_seconds": analyse_s,
        "analyse_x_realtime": audio_s / analyse_s,
        "dedup_seconds": dedup_s,
        "duplicates_found": len(duplicates),
        "related_found": len(related),
        "known_pairs": len(known_rows),
        "known_pairs_as_expected": len(as_expected),
        "unexpected_pairs_reported": len(unexpected),
        "gain_copies": len(gains),
        "gain_copies_related": len(soft_ok),
        "same_label_copies_merged": len(copy_ok),
        "gain_error_db": spread(gain_error),
        "reencoded_copies": len(copies),
        "reencoded_recall": recall,
        "reencoded_level_db": spread(c["level_db"] for c in copies),
        "reencoded_window_residual": spread(c["window_residual"] for c in copies),
        "distinct_pairs_checked": len(distinct),
        "distinct_pairs_matched": len(matched),
        "closest_distinct_ratio": min((c["ratio"] for c in distinct), default=float("nan")),
        "hardest_reencoded_ratio": max(c["ratio"] for c in copies),
    }
    worst = sorted(copies, key=lambda c: -c["ratio"])[:8]
    by_pair = {(k["a"], k["b"]): k for k in known_rows}
    pair_rows = []
    for a, b in sorted(set(by_pair) | set(found_pairs)):
        kind, level, gain = found_pairs.get((a, b), ("neither", "", None))
        k = by_pair.get((a, b))
        pair_rows.append([a, b, labels[a], labels[b], k["expected"] if k else "(not listed)",
                          k["reported"] if k else kind, level, "" if gain is None else round(gain, 2)])
    fmt_pairs = ", ".join(f"{Path(a).stem} / {Path(b).stem}" for a, b in related)
    result = StudyResult(
        part="audiopairs", study="bench_dedup", title="De-duplication of the shared audio corpus", scale="full",
        summary=f"{len(as_expected)} of {len(known_rows)} README same-audio pairs reported as expected "
                f"({len(duplicates)} duplicates, {len(related)} related); {len(soft_ok)} of {len(gains)} gain copies "
                f"under a loudness label related; {recall:.1%} of {len(copies)} re-encoded copies matched; "
                f"{len(matched)} of {len(distinct)} distinct candidate pairs matched",
        config={"clips": args.clips, "encodings": ENCODINGS, "soft_db": SOFT_DB, "copy_db": COPY_DB,
                "max_level_db": dedup.MAX_LEVEL_DB, "max_window_residual": dedup.MAX_WINDOW_RESIDUAL},
        seeds=[args.seed], data=[found.as_record()], metrics=metrics,
        tables=[
            Table("Duplicates and related sounds", ["a", "b", "label a", "label b", "README expects", "corpus reports",
                                                    "level", "gain dB"], pair_rows,
                  note="README expects a duplicate where the labels agree and a related sound (both rows kept) where "
                       "they differ; '(not listed)': reported by the corpus but not among the README's known quirks"),
            Table("Gain copies under loudness labels",
                  ["clip", "soft copy (-5 dB, 'soft' label)", "measured gain dB", "same-label copy (-2 dB)"],
                  [[g["clip"], g["soft_reported"], "" if g["soft_gain_db"] is None else round(g["soft_gain_db"], 3),
                    g["copy_reported"]]
                   for g in sorted(gains, key=lambda g: (g["soft_reported"] == "related",
                                                         g["copy_reported"] == "duplicate",
                                                         -abs((g["soft_gain_db"] or 0.0) - SOFT_DB)))[:8]],
                  note="the 8 worst cases: failures first, then the largest gain errors"),
            Table("Closest distinct clips (fingerprint candidates, different audio)",
                  ["a", "b", "BER", "level dB", "window residual", "ratio", "same audio"],
                  [[c["a"], c["b"], round(c["ber"], 3), round(c["level_db"], 2), round(c["window_residual"], 3),
                    round(c["ratio"], 2), c["same_audio"] or bool(c["reported"])] for c in distinct[:12]],
                  note="candidates that are neither a README same-audio pair nor equal bytes; ratio = max(level / "
                       "2.75 dB, window residual / 0.35), 99 for incompatible durations; <= 1 is judged same audio"),
            Table("Hardest re-encoded copies", ["clip", "format", "quality", "gain dB", "BER", "level dB",
                                                "window residual", "ratio", "same audio"],
                  [[c["clip"], c["format"], c["level"], round(c["gain_db"], 1), round(c["ber"], 3),
                    round(c["level_db"], 2), round(c["window_residual"], 3), round(c["ratio"], 2), c["same_audio"]]
                   for c in worst]),
        ],
        claims=[
            Claim("the README's known same-audio pairs are duplicates where the labels agree and related sounds "
                  "(both rows kept) where they differ, and nothing else is reported",
                  f"{len(as_expected)} of {len(known_rows)} as expected; duplicates: "
                  + (", ".join(f"{Path(a).name}={Path(b).name}" for a, b in duplicates) or "none")
                  + f"; related: {fmt_pairs or 'none'}; {len(unexpected)} other pairs reported",
                  "agrees" if len(as_expected) == len(known_rows) and not unexpected else "disagrees"),
            Claim("loudness is a label: gain copies under a different label are related, never merged; a copy "
                  "under the same label is a duplicate",
                  f"{len(soft_ok)} of {len(gains)} {SOFT_DB:+.0f} dB 'soft' copies related (gain error median "
                  f"{metrics['gain_error_db'].get('median', float('nan')):.3f} dB, max "
                  f"{metrics['gain_error_db'].get('max', float('nan')):.3f} dB); {len(copy_ok)} of {len(gains)} "
                  f"same-label {COPY_DB:+.0f} dB copies merged",
                  "agrees" if len(soft_ok) == len(copy_ok) == len(gains) else "disagrees"),
            Claim("robust to re-encoding and gain changes", f"{recall:.1%} of {len(copies)} copies matched",
                  "agrees" if recall == 1.0 else "partly agrees"),
            Claim("distinct clips (different audio) are not matched",
                  f"{len(matched)} of {len(distinct)} fingerprint candidates of different audio matched"
                  + (": " + ", ".join(f"{Path(c['a']).name}={Path(c['b']).name}" for c in matched) if matched else ""),
                  "agrees" if not matched else "disagrees"),
        ],
    )
    path = finish(result, args.results, wall_seconds=time.perf_counter() - start)
    print(json.dumps({**{k: v for k, v in metrics.items() if not isinstance(v, dict)}, "results": str(path)}, indent=2))


if __name__ == "__main__":
    main()
