"""The labelled recordings a recognition study reads, whatever holds them (a corpus database or a manifest).

A :class:`Recording` is what recognition needs of one file: where it is, its checksum, its label
(modifier, noun, kind) and the keys that tie it to other files (freesound ids, uploader, source
package). :func:`from_manifest` reads a manifest CSV as in the developers' shared data (see its
README); :func:`drop_duplicates` removes repeated files before any split.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

KINDS: tuple[str, ...] = ("anp", "vnp", "none")


@dataclass(frozen=True)
class Recording:
    """One labelled audio file.

    ``kind`` is "anp" (adjective-noun), "vnp" (verb-noun) or "none" (a plain label); ``modifier`` and
    ``noun`` are empty where the label has none. ``freesound_ids`` may hold several ids (a clip edited
    from several recordings); ``uploader`` may be empty (unknown).
    """

    path: Path
    sha256: str
    label: str
    noun: str
    modifier: str
    kind: str
    source: str
    uploader: str = ""
    freesound_ids: tuple[str, ...] = ()
    duration_s: float = 0.0
    related: tuple[str, ...] = ()  # keys shared with files of the same audio under another label

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} for {self.path}: expected one of {KINDS}")
        if self.kind != "none" and not (self.modifier and self.noun):
            raise ValueError(f"{self.path}: a {self.kind} label needs a modifier and a noun, got {self.label!r}")

    @property
    def pair(self) -> str | None:
        """``"<modifier> <noun>"`` for an ANP or VNP, else None."""
        return f"{self.modifier} {self.noun}" if self.kind != "none" else None

    @property
    def uploaders(self) -> tuple[str, ...]:
        """The uploader field split on ``;`` (a clip layered from several users' recordings names each)."""
        return tuple(u.strip() for u in self.uploader.split(";") if u.strip())


def from_manifest(folder: str | os.PathLike[str], manifest: str = "manifest.csv") -> list[Recording]:
    """Every row of ``folder/manifest`` as a :class:`Recording` (paths resolved against ``folder``).

    Raises ``FileNotFoundError`` when the manifest is missing and ``ValueError`` naming the row when a
    column is missing or a value is malformed.
    """
    folder = Path(folder)
    path = folder / manifest
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (expected a CSV with path, sha256, label, ... columns)")
    needed = {"path", "sha256", "label", "noun", "modifier", "pair_kind", "source", "uploader", "freesound_id"}
    out = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                out.append(
                    Recording(
                        path=folder / row["path"],
                        sha256=row["sha256"].strip().lower(),
                        label=row["label"],
                        noun=row["noun"].strip(),
                        modifier=row["modifier"].strip(),
                        kind=row["pair_kind"].strip() or "none",
                        source=row["source"],
                        uploader=row["uploader"].strip(),
                        freesound_ids=tuple(i.strip() for i in row["freesound_id"].split(";") if i.strip()),
                        duration_s=float(row.get("duration_s") or 0.0),
                    )
                )
            except ValueError as err:
                raise ValueError(f"{path} line {line}: {err}") from err
    return out


@dataclass(frozen=True)
class Duplicate:
    """A recording left out because ``kept`` has the same audio (``reason``: what matched)."""

    removed: Recording
    kept: Recording
    reason: str


def drop_duplicates(
    recordings: Sequence[Recording], same_audio: Iterable[Sequence[str]] = ()
) -> tuple[list[Recording], list[Duplicate]]:
    """Keep the first of each set of files with the same bytes (SHA-256) or the same audio.

    ``same_audio`` lists sets of SHA-256s whose decoded audio matches (an audio fingerprint's
    verdict, e.g. the corpus's de-duplication). Order is kept; returns (kept, removed).
    """
    alias: dict[str, str] = {}
    for group in same_audio:
        group = list(group)
        for sha in group[1:]:
            alias[sha] = group[0]
    first: dict[str, Recording] = {}
    kept, removed = [], []
    for rec in recordings:
        key = alias.get(rec.sha256, rec.sha256)
        if key in first:
            reason = "same bytes" if first[key].sha256 == rec.sha256 else "same audio"
            removed.append(Duplicate(rec, first[key], reason))
        else:
            first[key] = rec
            kept.append(rec)
    return kept, removed


def from_corpus(corpus) -> tuple[list[Recording], list[Duplicate]]:
    """The decodable files of a :class:`~structlab.audiopairs.corpus.Corpus`, without the duplicates it marked.

    A file's pair comes from its kept link (the first, if several); files without one are plain labels,
    whose noun is read from the manifest they were imported with, where it has a ``noun`` column.
    Returns (recordings, duplicates), the duplicates as the corpus's de-duplication marked them.
    """
    pairs: dict[int, tuple[str, str, str]] = {}
    for row in corpus.query(
        "SELECT l.sound_id, p.modifier, p.noun, p.kind FROM links l JOIN pairs p ON p.id = l.pair_id "
        "WHERE l.kept = 1 ORDER BY l.sound_id, p.id"
    ):
        pairs.setdefault(row["sound_id"], (row["modifier"], row["noun"], row["kind"]))
    nouns = _manifest_nouns(corpus)
    related: dict[int, list[str]] = {}
    for row in corpus.query("SELECT a, b FROM related"):
        for sid in (row["a"], row["b"]):
            related.setdefault(sid, []).append(f"{row['a']}")
    by_id: dict[int, Recording] = {}
    marked: list[tuple[int, int, str]] = []
    for row in corpus.sounds("path IS NOT NULL AND decode_error IS NULL"):
        path = corpus.file_path(row)
        modifier, noun, kind = pairs.get(row["id"], ("", nouns.get(str(path), ""), "none"))
        ids = [row["freesound_id"]] if row["freesound_id"] is not None else []
        ids += [i for i in (row["origin_ids"] or "").split(";") if i]
        by_id[row["id"]] = Recording(
            path=path,
            sha256=row["sha256"] or "",
            label=row["label"] or row["name"] or "",
            noun=noun,
            modifier=modifier,
            kind=kind,
            source=row["source"] or "",
            uploader=row["uploader"] or "",
            freesound_ids=tuple(str(i) for i in dict.fromkeys(ids)),
            duration_s=float(row["decoded_duration"] or row["duration"] or 0.0),
            related=tuple(sorted(set(related.get(row["id"], [])))),
        )
        if row["duplicate_of"] is not None:
            marked.append((row["id"], row["duplicate_of"], row["duplicate_level"]))
    removed = {sid for sid, _, _ in marked}
    duplicates = [Duplicate(by_id[s], by_id[k], f"same {level}") for s, k, level in marked if k in by_id]
    return [r for sid, r in by_id.items() if sid not in removed], duplicates


def _manifest_nouns(corpus) -> dict[str, str]:
    """Absolute file path -> noun, from the manifests of the corpus's imports that have a noun column."""
    out: dict[str, str] = {}
    for imp in corpus.query("SELECT root, manifest FROM imports"):
        manifest = Path(imp["manifest"])
        if not manifest.is_file():
            continue
        with open(manifest, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row.get("noun"):
                    out[str(Path(imp["root"]) / row["path"])] = row["noun"].strip()
    return out
