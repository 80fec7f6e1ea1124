"""The corpus: one SQLite file holding pairs, queries, sounds, pair-sound links, cleaning and splits.

Tables (see ``SCHEMA``):

- ``pairs``: the vocabulary (canonical text, kind, modifier, noun);
- ``queries``: every search page fetched from freesound (pair, query, filter, page, count, next URL), so
  that a resumed build never asks for a page twice;
- ``imports``: local folders imported with their manifest (root, manifest checksum);
- ``sounds``: one row per audio file: where it came from (freesound id, or import and path), uploader,
  licence, attribution, tags, duration, sample rate, the file's SHA-256 and size, what decoding found
  (decoded duration or the decode error) and its audio fingerprint, and the de-duplication verdict;
- ``links``: which pair each sound was found for, the tag-match rules it satisfies, and whether
  cleaning kept it (or which step dropped it);
- ``related``: sounds holding the same audio (up to a gain) under different labels ("soft cowbell" and
  "hard cowbell"), which de-duplication keeps both of and splits keep together;
- ``funnel``: the last cleaning run, one row per step; ``splits``: the last split.

Every step writes inside one transaction (:meth:`Corpus.transaction`), so a build killed at any
moment leaves the database as it was after the last completed step. Downloaded files live in
``files_dir`` (default: ``<database stem>.files`` beside the database) under their freesound id;
imported files stay where they are, under their import's root.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structlab.audiopairs.vocab import Pair

SCHEMA_VERSION = 2
# What each version added to the one before (applied in order to an older database).
MIGRATIONS = {
    2: ["ALTER TABLE sounds ADD COLUMN download_error TEXT"],
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('anp', 'vnp')),
    modifier TEXT NOT NULL,
    noun TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queries (
    id INTEGER PRIMARY KEY,
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    query TEXT NOT NULL,
    filter TEXT NOT NULL,
    page INTEGER NOT NULL,
    count INTEGER NOT NULL,
    n_results INTEGER NOT NULL,
    next_url TEXT,
    fetched_at TEXT NOT NULL,
    UNIQUE (pair_id, query, filter, page)
);
CREATE TABLE IF NOT EXISTS imports (
    id INTEGER PRIMARY KEY,
    root TEXT NOT NULL,
    manifest TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    imported_at TEXT NOT NULL,
    UNIQUE (manifest)
);
CREATE TABLE IF NOT EXISTS sounds (
    id INTEGER PRIMARY KEY,
    freesound_id INTEGER UNIQUE,          -- the freesound sound this file is a preview of
    import_id INTEGER REFERENCES imports(id),
    path TEXT,                            -- relative to files_dir (downloads) or the import's root
    name TEXT,
    label TEXT,                           -- an imported file's own description
    uploader TEXT,
    source TEXT,                          -- where the file came from (an imported package, 'freesound')
    origin_ids TEXT NOT NULL DEFAULT '',  -- freesound ids of the recordings an imported clip was made from
    license TEXT,
    attribution TEXT,
    url TEXT,
    tags TEXT NOT NULL DEFAULT '[]',      -- JSON list
    duration REAL,                        -- as reported (freesound, manifest), seconds
    sample_rate INTEGER,
    channels INTEGER,
    preview_url TEXT,
    download_error TEXT,                  -- why the last download of its preview failed
    sha256 TEXT,
    size INTEGER,
    added_at TEXT NOT NULL,
    analysed INTEGER NOT NULL DEFAULT 0,
    decoded_duration REAL,
    decode_error TEXT,
    fingerprint BLOB,
    duplicate_of INTEGER REFERENCES sounds(id),
    duplicate_level TEXT CHECK (duplicate_level IN ('freesound-id', 'bytes', 'audio')),
    UNIQUE (import_id, path)
);
CREATE INDEX IF NOT EXISTS sounds_sha256 ON sounds(sha256);
CREATE TABLE IF NOT EXISTS links (
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    sound_id INTEGER NOT NULL REFERENCES sounds(id),
    rules TEXT NOT NULL,                  -- tag-match rules satisfied: 'both-tags', 'phrase', 'label'
    kept INTEGER NOT NULL DEFAULT 1,
    dropped_by TEXT,
    PRIMARY KEY (pair_id, sound_id)
);
CREATE TABLE IF NOT EXISTS related (     -- same audio (up to a gain) under different labels: both kept
    a INTEGER NOT NULL REFERENCES sounds(id),
    b INTEGER NOT NULL REFERENCES sounds(id),
    level TEXT NOT NULL CHECK (level IN ('bytes', 'audio')),
    gain_db REAL,                         -- level of b relative to a, dB
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (a, b),
    CHECK (a < b)
);
CREATE TABLE IF NOT EXISTS funnel (
    step_index INTEGER PRIMARY KEY,
    step TEXT NOT NULL,
    pairs INTEGER NOT NULL,
    files INTEGER NOT NULL,
    links INTEGER NOT NULL,
    setting TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS splits (
    sound_id INTEGER PRIMARY KEY REFERENCES sounds(id),
    split TEXT NOT NULL CHECK (split IN ('train', 'val', 'test')),
    group_key TEXT NOT NULL
);
"""


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class ValidationReport:
    """The outcome of checking files against their recorded size and SHA-256."""

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)  # files with no checksum yet

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.checked} files match their checksums"
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing (e.g. {self.missing[0]})")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} with a wrong checksum (e.g. {self.mismatched[0]})")
        return f"FAILED: {self.checked} checked; " + "; ".join(parts)


class Corpus:
    """An AudioPairBank-style corpus in one SQLite file (created if missing).

    ``path``: the database file. ``files_dir``: where downloaded files go (default
    ``<path without suffix>.files``). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, files_dir: str | Path | None = None) -> None:
        if not isinstance(path, str | Path):
            raise TypeError(f"path={path!r}: expected a file path")
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"path={str(self.path)!r}: is a folder; expected a database file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.files_dir = Path(files_dir) if files_dir else self.path.with_suffix(".files")
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA foreign_keys = ON")
        try:
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            self.db.close()
            raise ValueError(f"path={str(self.path)!r}: not a corpus database ({err})") from None
        version = self.get_meta("schema_version")
        if version is None:
            with self.transaction():
                self.set_meta("schema_version", str(SCHEMA_VERSION))
                self.set_meta("created_at", now_iso())
        elif int(version) < SCHEMA_VERSION:
            self._migrate(int(version))
        elif int(version) > SCHEMA_VERSION:
            raise ValueError(f"{self.path}: schema version {version}; this structlab reads up to {SCHEMA_VERSION}")

    def _migrate(self, version: int) -> None:
        """Bring a database of an older schema ``version`` up to date, in one transaction."""
        with self.transaction() as db:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for sql in MIGRATIONS[step]:
                    db.execute(sql)
            self.set_meta("schema_version", str(SCHEMA_VERSION))

    # -- plumbing ----------------------------------------------------------------------------------------

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Corpus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r})"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed, or (on any exception) none of it."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        """Rows of a read-only SQL query."""
        return self.db.execute(sql, params).fetchall()

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row["value"]

    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata value (call inside a transaction)."""
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                        (key, value, value))

    # -- pairs ---------------------------------------------------------------------------------------------

    def add_pair(self, pair: Pair) -> int:
        """Insert ``pair`` if new (call inside a transaction); returns its id."""
        if not isinstance(pair, Pair):
            raise TypeError(f"pair={pair!r}: expected a Pair")
        self.db.execute(
            "INSERT INTO pairs (text, kind, modifier, noun) VALUES (?, ?, ?, ?) ON CONFLICT(text) DO NOTHING",
            (pair.text, pair.kind, pair.modifier, pair.noun),
        )
        return self.db.execute("SELECT id FROM pairs WHERE text = ?", (pair.text,)).fetchone()["id"]

    def pairs(self) -> list[tuple[int, Pair]]:
        """Every pair with its id, in id order."""
        rows = self.query("SELECT id, kind, modifier, noun FROM pairs ORDER BY id")
        return [(r["id"], Pair(r["modifier"], r["noun"], r["kind"])) for r in rows]

    # -- sounds --------------------------------------------------------------------------------------------

    def file_path(self, sound: sqlite3.Row | dict[str, Any]) -> Path | None:
        """Where a sound's file is on disk (None if it has not been downloaded)."""
        if sound["path"] is None:
            return None
        if sound["import_id"] is None:
            return self.files_dir / sound["path"]
        root = self._import_roots().get(sound["import_id"])
        return None if root is None else Path(root) / sound["path"]

    def _import_roots(self) -> dict[int, str]:
        return {r["id"]: r["root"] for r in self.query("SELECT id, root FROM imports")}

    def sounds(self, where: str = "1", params: tuple = ()) -> list[sqlite3.Row]:
        """Sound rows matching an SQL condition, in id order."""
        return self.query(f"SELECT * FROM sounds WHERE {where} ORDER BY id", params)

    def usable_sounds(self) -> list[sqlite3.Row]:
        """Sounds with a file, decodable, not a duplicate, with at least one kept link."""
        return self.sounds(
            "path IS NOT NULL AND decode_error IS NULL AND duplicate_of IS NULL "
            "AND id IN (SELECT sound_id FROM links WHERE kept = 1)"
        )

    def counts(self) -> dict[str, int]:
        """How many pairs, sounds, files, links, kept links, duplicates and queries the corpus has."""
        one = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "pairs": one("SELECT COUNT(*) FROM pairs"),
            "sounds": one("SELECT COUNT(*) FROM sounds"),
            "files": one("SELECT COUNT(*) FROM sounds WHERE path IS NOT NULL"),
            "analysed": one("SELECT COUNT(*) FROM sounds WHERE analysed = 1"),
            "undecodable": one("SELECT COUNT(*) FROM sounds WHERE decode_error IS NOT NULL"),
            "duplicates": one("SELECT COUNT(*) FROM sounds WHERE duplicate_of IS NOT NULL"),
            "related": one("SELECT COUNT(*) FROM related"),
            "links": one("SELECT COUNT(*) FROM links"),
            "kept links": one("SELECT COUNT(*) FROM links WHERE kept = 1"),
            "search pages": one("SELECT COUNT(*) FROM queries"),
        }

    def analyse(self, workers: int = 1, progress: bool = True) -> int:
        """Decode every file not yet analysed: decoded duration, decode error, audio fingerprint.

        Each file is decoded once (at the fingerprint's sample rate); results are committed in batches,
        so an interrupted run keeps what it did. ``workers`` > 1 decodes in that many processes.
        Returns the number of files analysed.
        """
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers={workers!r}: expected a positive int")
        from structlab import runtime

        todo = [(r["id"], str(self.file_path(r))) for r in self.sounds("analysed = 0 AND path IS NOT NULL")]
        if not todo:
            return 0
        bar = runtime.progress(total=len(todo), desc="decoding", unit="file", disable=None if progress else True)
        results = _map(_analyse_file, todo, workers)
        batch: list[tuple] = []
        for result in results:
            batch.append(result)
            bar.update(1)
            if len(batch) >= 32:
                self._store_analysis(batch)
                batch = []
        self._store_analysis(batch)
        bar.close()
        return len(todo)

    def _store_analysis(self, batch: list[tuple]) -> None:
        if not batch:
            return
        with self.transaction():
            self.db.executemany(
                "UPDATE sounds SET analysed = 1, decoded_duration = ?, decode_error = ?, fingerprint = ? "
                "WHERE id = ?",
                [(duration, error, blob, sound_id) for sound_id, duration, error, blob in batch],
            )

    def validate(self) -> ValidationReport:
        """Check every file the corpus has against its recorded size and SHA-256."""
        from structlab.data import sha256_file

        report = ValidationReport()
        for row in self.sounds("path IS NOT NULL"):
            path = self.file_path(row)
            name = row["path"]
            if path is None or not path.is_file():
                report.missing.append(name)
                continue
            if row["sha256"] is None:
                report.unrecorded.append(name)
                continue
            report.checked += 1
            if path.stat().st_size != row["size"] or sha256_file(path) != row["sha256"]:
                report.mismatched.append(name)
        return report


def _analyse_file(item: tuple[int, str]) -> tuple[int, float | None, str | None, bytes | None]:
    """Decode one file; (sound id, decoded duration, decode error, fingerprint blob)."""
    from structlab.audiopairs.audio import DecodeError, load_audio
    from structlab.audiopairs.fingerprint import SAMPLE_RATE, fingerprint

    sound_id, path = item
    try:
        samples = load_audio(path, sr=SAMPLE_RATE, mono=True)
    except (DecodeError, FileNotFoundError) as err:
        return sound_id, None, str(err), None
    if not (abs(samples).max() > 0):
        return sound_id, len(samples) / SAMPLE_RATE, f"{path}: decodes to digital silence", None
    return sound_id, len(samples) / SAMPLE_RATE, None, fingerprint(samples).to_bytes()


def _map(fn, items: list, workers: int) -> Iterator:
    """``map`` in order, in ``workers`` processes when more than one."""
    if workers == 1 or len(items) < 2:
        yield from map(fn, items)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items, chunksize=8)


def tags_json(tags: list[str] | tuple[str, ...]) -> str:
    """Tags as stored: a JSON list of lower-case strings, sorted."""
    return json.dumps(sorted({str(t).lower() for t in tags}))
