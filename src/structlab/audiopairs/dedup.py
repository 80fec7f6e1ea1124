"""De-duplication at three levels: the same freesound id, the same bytes, the same audio.

1. **freesound id**: one freesound sound found by several pairs' searches is stored once (``sounds``
   has one row per freesound id) and linked to each pair; these are reported, not dropped, since a
   sound may carry two pairs ("heavy rain" and "falling rain").
2. **bytes**: files with equal SHA-256 (a package shipping one file under two names).
3. **audio**: files whose decoded audio is the same although their bytes differ (another container,
   re-encoding, a gain change); a clip trimmed by more than an encoder's padding is another clip.
   Candidates come from the audio fingerprint (:mod:`~structlab.audiopairs.fingerprint`): clips of
   compatible duration that share a sub-fingerprint (or are too short for that to be likely) and whose
   strong-bit BER is low. Each candidate is then verified on the decoded audio: after alignment and one
   gain, the band levels must agree within ``MAX_LEVEL_DB`` (90th percentile) and the waveform residual
   must be small in *every* 0.37 s window (``MAX_WINDOW_RESIDUAL``), so that two clips made from one
   recording but edited differently (a horn mixed into one) are not merged.

The thresholds were set on the developers' shared corpus (858 real clips) against re-encoded copies
(Ogg Vorbis and MP3 at two qualities each, with gain changes) and the distinct clips whose fingerprints
come closest; ``benchmarks/audiopairs_dedup.py`` measures both margins (docs/audiopairs-corpus.md).

**Loudness is a label, not a duplicate.** The fingerprint and the verification remove one gain, so a clip
and its copy at -5 dB are "the same audio"; but "soft cowbell" and "hard cowbell" made that way carry
different labels, and merging them would delete the distinction AudioPairBank's adjectives ask about.
So within each group of same bytes or same audio, only clips with the same label (an imported clip's own
label and the pairs it is linked to) are duplicates; clips whose labels differ are **related**: both are
kept, the ``related`` table records them (level, gain in dB, how they matched), and splits keep them on
one side (they are one recording).

Every duplicate but the one with the lowest id of its label gets ``duplicate_of`` (that id) and
``duplicate_level``; cleaning and splits leave them out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from structlab.audiopairs import fingerprint as fp
from structlab.audiopairs.corpus import Corpus

MAX_BER = 0.25  # fingerprint screen: strong-bit BER overall ...
MAX_WINDOW_BER = 0.35  # ... and in every 0.37 s block (Haitsma & Kalker's block threshold)
MAX_LEVEL_DB = 2.75  # verification on decoded audio: band levels after one gain
MAX_WINDOW_RESIDUAL = 0.35  # unexplained energy in the worst 0.37 s window
SHORT_FRAMES = 32  # clips with fewer valid frames (0.37 s) are compared without a shared-key hit
TINY_FRAMES = 8  # clips with fewer (under 0.2 s) carry too few bits for a BER: verified on audio directly


@dataclass
class DuplicateGroup:
    """Sounds holding the same content; ``keep`` is the one kept."""

    level: str  # "freesound-id", "bytes" or "audio"
    keep: int
    copies: list[int]
    detail: dict[int, str] = field(default_factory=dict)  # per copy: how it matched


@dataclass(frozen=True)
class Related:
    """Two sounds with the same audio (up to a gain) under different labels: both kept.

    ``gain_db``: level of ``b`` relative to ``a`` (negative: ``b`` is softer).
    """

    a: int
    b: int
    level: str  # "bytes" or "audio"
    gain_db: float
    detail: str = ""


@dataclass
class DedupReport:
    """What de-duplication found, per level, the related sounds, and how many fingerprint candidates it
    checked."""

    groups: list[DuplicateGroup]
    candidates: int = 0
    verified: int = 0
    related: list[Related] = field(default_factory=list)

    def by_level(self, level: str) -> list[DuplicateGroup]:
        return [g for g in self.groups if g.level == level]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def same_audio(samples_a: np.ndarray, samples_b: np.ndarray) -> tuple[bool, str]:
    """Verify on decoded audio (mono, ``fp.SAMPLE_RATE``) that two clips hold the same audio.

    Returns the verdict and the measurements behind it.
    """
    m = measure(samples_a, samples_b)
    ok = m["same_duration"] and m["level_db"] <= MAX_LEVEL_DB and m["window_residual"] <= MAX_WINDOW_RESIDUAL
    return ok, (f"{m['duration_a']:.3f} s / {m['duration_b']:.3f} s, level {m['level_db']:.2f} dB, "
                f"residual {m['residual']:.3f} (worst window {m['window_residual']:.3f}), lag {m['lag']} samples")


def measure(samples_a: np.ndarray, samples_b: np.ndarray) -> dict[str, float]:
    """The measurements :func:`same_audio` decides on: durations, lag, band-level deviation, residuals."""
    a, b, lag = fp.align(samples_a, samples_b)
    overall, window = fp.waveform_residual(a, b)
    duration_a, duration_b = len(samples_a) / fp.SAMPLE_RATE, len(samples_b) / fp.SAMPLE_RATE
    return {
        "duration_a": duration_a, "duration_b": duration_b,
        "same_duration": fp.same_duration(duration_a, duration_b), "lag": lag,
        "level_db": fp.level_deviation(a, b), "residual": overall, "window_residual": window,
    }


def gain_db(samples_a: np.ndarray, samples_b: np.ndarray) -> float:
    """Level of ``b`` relative to ``a`` in dB (RMS over their aligned overlap)."""
    a, b, _ = fp.align(samples_a, samples_b)
    ra, rb = float(np.sqrt(np.mean(a.astype(np.float64) ** 2))), float(np.sqrt(np.mean(b.astype(np.float64) ** 2)))
    return 20.0 * np.log10(rb / ra) if ra > 0 and rb > 0 else 0.0


def label_keys(corpus: Corpus) -> dict[int, tuple[str, tuple[int, ...]]]:
    """Each sound's label: its own label text (imports) and the pairs it is linked to (freesound search)."""
    pairs: dict[int, list[int]] = defaultdict(list)
    for row in corpus.query("SELECT sound_id, pair_id FROM links ORDER BY pair_id"):
        pairs[row["sound_id"]].append(row["pair_id"])
    return {r["id"]: ((r["label"] or "").strip().casefold(), tuple(pairs.get(r["id"], ())))
            for r in corpus.query("SELECT id, label FROM sounds")}


def _split_by_label(members: list[int], labels: dict) -> list[list[int]]:
    """Members grouped by label, each group sorted, groups in order of their first member."""
    by: dict[tuple, list[int]] = defaultdict(list)
    for m in sorted(members):
        by[labels[m]].append(m)
    return sorted(by.values())


def find_candidates(prints: dict[int, fp.Fingerprint]) -> list[tuple[int, int, fp.Match]]:
    """Pairs of sounds whose fingerprints match: compatible durations, a shared sub-fingerprint (or a
    short clip), and strong-bit BER within ``MAX_BER`` overall and ``MAX_WINDOW_BER`` per block. Pairs
    with a clip too short for a BER (``TINY_FRAMES``) are candidates on duration alone."""
    ids = sorted(prints, key=lambda i: (prints[i].duration, i))
    keys = {i: set(prints[i].keys().tolist()) for i in ids}
    short = {i for i in ids if int(prints[i].valid.sum()) < SHORT_FRAMES}
    out = []
    for n, a in enumerate(ids):
        for b in ids[n + 1 :]:
            if not fp.same_duration(prints[a].duration, prints[b].duration):
                break
            if a not in short and b not in short and keys[a].isdisjoint(keys[b]):
                continue
            match = fp.compare(prints[a], prints[b])
            if min(prints[a].valid.sum(), prints[b].valid.sum()) < TINY_FRAMES:
                out.append((min(a, b), max(a, b), match))
                continue
            if match.ber <= MAX_BER and match.window_ber <= MAX_WINDOW_BER:
                out.append((min(a, b), max(a, b), match))
    return out


def deduplicate(corpus: Corpus, workers: int = 1, progress: bool = True) -> DedupReport:
    """Find duplicates at the three levels and mark them in ``corpus`` (one transaction).

    Decodes files not yet analysed first. Earlier marks are replaced.
    """
    from structlab import runtime
    from structlab.audiopairs.audio import load_audio

    corpus.analyse(workers=workers, progress=progress)
    groups: list[DuplicateGroup] = []

    # 1. freesound id: sounds linked from several pairs' searches.
    for row in corpus.query(
        "SELECT sound_id, GROUP_CONCAT(pair_id) AS pairs FROM links WHERE rules != 'label' "
        "GROUP BY sound_id HAVING COUNT(*) > 1 ORDER BY sound_id"
    ):
        groups.append(DuplicateGroup("freesound-id", row["sound_id"], [], {0: f"pairs {row['pairs']}"}))

    # 2. bytes.
    marks: dict[int, tuple[int, str]] = {}
    by_hash: dict[str, list[int]] = defaultdict(list)
    for row in corpus.query("SELECT id, sha256 FROM sounds WHERE sha256 IS NOT NULL ORDER BY id"):
        by_hash[row["sha256"]].append(row["id"])
    labels = label_keys(corpus)
    related: list[Related] = []
    same_bytes: set[int] = set()  # all but the first file of each set of equal bytes: not compared again
    for ids in by_hash.values():
        if len(ids) > 1:
            same_bytes.update(ids[1:])
            same = _split_by_label(ids, labels)
            for members in same:
                if len(members) > 1:
                    groups.append(DuplicateGroup("bytes", members[0], members[1:],
                                                 {i: "same SHA-256" for i in members[1:]}))
                    marks.update({i: (members[0], "bytes") for i in members[1:]})
            keepers = [m[0] for m in same]
            related += [Related(a, b, "bytes", 0.0, "same SHA-256, different labels")
                        for n, a in enumerate(keepers) for b in keepers[n + 1:]]

    # 3. audio, among the files not already marked.
    prints = {
        r["id"]: fp.Fingerprint.from_bytes(r["fingerprint"])
        for r in corpus.sounds("fingerprint IS NOT NULL")
        if r["id"] not in same_bytes
    }
    candidates = find_candidates(prints)
    rows = {r["id"]: r for r in corpus.sounds("fingerprint IS NOT NULL")}
    union = _UnionFind()
    detail: dict[tuple[int, int], str] = {}
    cache: dict[int, np.ndarray] = {}

    def decoded(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = load_audio(corpus.file_path(rows[i]), sr=fp.SAMPLE_RATE)
        return cache[i]

    verified = 0
    for a, b, match in runtime.progress(candidates, desc="verifying", unit="pair", disable=None if progress else True):
        ok, why = same_audio(decoded(a), decoded(b))
        if ok:
            verified += 1
            union.union(a, b)
            detail[(a, b)] = f"BER {match.ber:.3f}; {why}"
    clusters: dict[int, list[int]] = defaultdict(list)
    for i in list(union.parent):
        clusters[union.find(i)].append(i)
    for members in clusters.values():
        same = _split_by_label(members, labels)
        for group in same:
            if len(group) > 1:
                keep, copies = group[0], group[1:]
                how = {c: next((d for (x, y), d in detail.items() if c in (x, y)), "") for c in copies}
                groups.append(DuplicateGroup("audio", keep, copies, how))
                marks.update({c: (keep, "audio") for c in copies})
        keepers = [g[0] for g in same]
        for n, a in enumerate(keepers):
            for b in keepers[n + 1:]:
                how = detail.get((a, b)) or detail.get((b, a)) or "same audio (through other clips)"
                related.append(Related(a, b, "audio", gain_db(decoded(a), decoded(b)), how))
    groups.sort(key=lambda g: (g.level, g.keep))

    with corpus.transaction() as db:
        db.execute("UPDATE sounds SET duplicate_of = NULL, duplicate_level = NULL")
        db.executemany(
            "UPDATE sounds SET duplicate_of = ?, duplicate_level = ? WHERE id = ?",
            [(keep, level, i) for i, (keep, level) in sorted(marks.items())],
        )
        db.execute("DELETE FROM related")
        related = sorted({(r.a, r.b): r for r in related}.values(), key=lambda r: (r.a, r.b))
        db.executemany(
            "INSERT INTO related (a, b, level, gain_db, detail) VALUES (?, ?, ?, ?, ?)",
            [(r.a, r.b, r.level, r.gain_db, r.detail) for r in related],
        )
    return DedupReport(groups, candidates=len(candidates), verified=verified, related=related)
