"""Building a corpus from freesound: plan the queries, search page by page, download previews; resumable.

For each pair, one text search (``query="<modifier> <noun>"``; freesound matches it against tags, names
and descriptions) with the duration and licence filters, ``page_size`` results a page, until
``max_files`` results or the last page. Each page is stored in one transaction together with the
sounds it lists and their links to the pair (with the tag-match rules each sound satisfies), so a
resumed build starts at the first page it does not have. Then every linked sound's Ogg preview is
downloaded to ``<files_dir>/freesound/<id>.ogg.part`` (resuming a partial file with an HTTP Range),
hashed, and renamed into place; the database records it in the same step. A file that is already in
place is never fetched again. Finally each new file is decoded once (:meth:`Corpus.analyse`).

Search pages count against freesound's 60/minute and 2,000/day limits; previews come from freesound's
file servers and do not. When the daily quota runs out the build stops cleanly and says when to resume.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from structlab.audiopairs.corpus import Corpus, now_iso, tags_json
from structlab.audiopairs.freesound import MAX_PAGE_SIZE, PREVIEW, FreesoundClient, QuotaExhausted
from structlab.audiopairs.vocab import Pair, tag_matches
from structlab.data import sha256_file

FREESOUND_LICENCE_NAMES = ("Attribution", "Attribution Noncommercial", "Creative Commons 0")


@dataclass(frozen=True)
class BuildConfig:
    """What to search for and fetch, per pair."""

    max_files: int = 150  # search results per pair
    page_size: int = MAX_PAGE_SIZE
    min_duration: float = 0.1  # seconds (a search filter)
    max_duration: float | None = 600.0
    licenses: tuple[str, ...] | None = None  # freesound licence names; None: all
    download: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_files, int) or self.max_files < 1:
            raise ValueError(f"max_files={self.max_files!r}: expected a positive int")
        if not isinstance(self.page_size, int) or not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size={self.page_size!r}: expected an int in [1, {MAX_PAGE_SIZE}]")
        if self.min_duration < 0 or (self.max_duration is not None and self.max_duration < self.min_duration):
            raise ValueError(
                f"min_duration={self.min_duration!r}, max_duration={self.max_duration!r}: expected 0 <= min <= max"
            )
        for name in self.licenses or ():
            if name not in FREESOUND_LICENCE_NAMES:
                raise ValueError(f"licenses: {name!r}: expected freesound licence names {FREESOUND_LICENCE_NAMES}")

    def pages_per_pair(self) -> int:
        return math.ceil(self.max_files / self.page_size)


def search_spec(pair: Pair, config: BuildConfig) -> tuple[str, str]:
    """The ``query`` and ``filter`` of the search for ``pair``."""
    hi = "*" if config.max_duration is None else f"{config.max_duration:g}"
    filters = [f"duration:[{config.min_duration:g} TO {hi}]"]
    if config.licenses:
        filters.append("license:(" + " OR ".join(f'"{name}"' for name in config.licenses) + ")")
    return pair.text, " ".join(filters)


@dataclass(frozen=True)
class Plan:
    """What a build will ask of freesound at most (a dry run; nothing is requested)."""

    pairs: int
    pages_per_pair: int
    search_requests: int
    downloads: int
    per_minute: int
    per_day: int
    already_done: int = 0  # search pages the corpus already has

    @property
    def requests_left(self) -> int:
        return max(self.search_requests - self.already_done, 0)

    @property
    def days(self) -> int:
        return math.ceil(self.requests_left / self.per_day) if self.requests_left else 0

    @property
    def minutes(self) -> float:
        return self.requests_left / self.per_minute

    def summary(self) -> str:
        return "\n".join([
            f"pairs: {self.pairs}",
            f"search requests: at most {self.search_requests} ({self.pages_per_pair} page(s) per pair)"
            + (f", {self.already_done} already in the corpus" if self.already_done else ""),
            f"API requests left: {self.requests_left}: {self.minutes:.0f} min at {self.per_minute}/min, "
            f"{self.days} day(s) at {self.per_day}/day",
            f"preview downloads: at most {self.downloads} (file servers, not counted against the API quota)",
        ])


def plan(pairs: list[Pair], config: BuildConfig = BuildConfig(), corpus: Corpus | None = None,
         per_minute: int = 60, per_day: int = 2000) -> Plan:
    """The query plan for ``pairs``: requests, downloads and days (minus what ``corpus`` already has)."""
    done = 0
    if corpus is not None:
        for pair in pairs:
            query, filt = search_spec(pair, config)
            done += corpus.query(
                "SELECT COUNT(*) AS n FROM queries q JOIN pairs p ON p.id = q.pair_id "
                "WHERE p.text = ? AND q.query = ? AND q.filter = ?", (pair.text, query, filt)
            )[0]["n"]
    pages = config.pages_per_pair()
    return Plan(len(pairs), pages, len(pairs) * pages, len(pairs) * config.max_files, per_minute, per_day, done)


@dataclass
class BuildReport:
    """What one build run did."""

    pages: int = 0
    new_sounds: int = 0
    links: int = 0
    downloads: int = 0
    bytes: int = 0
    analysed: int = 0
    stopped: str = ""  # why the run stopped early (the daily quota), else empty


def _sound_values(result: dict) -> dict:
    from structlab.audiopairs.cleaning import licence_id

    previews = result.get("previews") or {}
    return {
        "freesound_id": int(result["id"]),
        "name": result.get("name"),
        "uploader": result.get("username"),
        "source": "freesound",
        "license": licence_id(result.get("license") or ""),
        "url": result.get("url") or f"https://freesound.org/s/{int(result['id'])}/",
        "tags": tags_json(result.get("tags") or []),
        "duration": result.get("duration"),
        "sample_rate": result.get("samplerate"),
        "channels": result.get("channels"),
        "preview_url": previews.get(PREVIEW),
        "added_at": now_iso(),
    }


def search_pair(corpus: Corpus, client: FreesoundClient, pair: Pair, config: BuildConfig, report: BuildReport) -> None:
    """Fetch the pages of ``pair``'s search that the corpus does not have yet."""
    query, filt = search_spec(pair, config)
    with corpus.transaction():
        pair_id = corpus.add_pair(pair)
    while True:
        done = corpus.query(
            "SELECT page, next_url, n_results FROM queries WHERE pair_id = ? AND query = ? AND filter = ? "
            "ORDER BY page", (pair_id, query, filt)
        )
        have = sum(r["n_results"] for r in done)
        if have >= config.max_files or (done and done[-1]["next_url"] is None):
            return
        page_number = len(done) + 1
        page = client.search(query, filt, page_size=config.page_size, page=page_number)
        results = page.results[: config.max_files - have]
        with corpus.transaction() as db:
            db.execute(
                "INSERT INTO queries (pair_id, query, filter, page, count, n_results, next_url, fetched_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (pair_id, query, filt, page_number, page.count, len(page.results), page.next, now_iso()),
            )
            for result in results:
                values = _sound_values(result)
                known = db.execute("SELECT id FROM sounds WHERE freesound_id = ?", (values["freesound_id"],)).fetchone()
                report.new_sounds += known is None
                columns = ", ".join(values)
                updates = ", ".join(f"{k} = excluded.{k}" for k in values if k not in ("freesound_id", "added_at"))
                db.execute(
                    f"INSERT INTO sounds ({columns}) VALUES ({', '.join('?' for _ in values)}) "
                    f"ON CONFLICT(freesound_id) DO UPDATE SET {updates}",
                    tuple(values.values()),
                )
                sound_id = db.execute(
                    "SELECT id FROM sounds WHERE freesound_id = ?", (values["freesound_id"],)
                ).fetchone()[0]
                rules = ",".join(sorted(tag_matches(pair, result.get("tags") or [])))
                db.execute(
                    "INSERT INTO links (pair_id, sound_id, rules) VALUES (?, ?, ?) "
                    "ON CONFLICT(pair_id, sound_id) DO UPDATE SET rules = excluded.rules",
                    (pair_id, sound_id, rules),
                )
                report.links += 1
        report.pages += 1
        if page.next is None:
            return


def download_previews(corpus: Corpus, client: FreesoundClient, report: BuildReport, progress: bool = True) -> None:
    """Download every linked sound's preview that the corpus does not have (atomic, never twice)."""
    from structlab import runtime

    todo = corpus.sounds(
        "freesound_id IS NOT NULL AND path IS NULL AND preview_url IS NOT NULL "
        "AND id IN (SELECT sound_id FROM links)"
    )
    folder = corpus.files_dir / "freesound"
    for row in runtime.progress(todo, desc="downloading", unit="file", disable=None if progress else True):
        rel = f"freesound/{row['freesound_id']}.ogg"
        final = corpus.files_dir / rel
        if not final.is_file():  # a file in place was renamed there after a complete, checked download
            partial = folder / f"{row['freesound_id']}.ogg.part"
            client.download(row["preview_url"], partial)
            os.replace(partial, final)
            report.downloads += 1
        size = final.stat().st_size
        report.bytes += size
        with corpus.transaction() as db:
            db.execute("UPDATE sounds SET path = ?, sha256 = ?, size = ? WHERE id = ?",
                       (rel, sha256_file(final), size, row["id"]))


def build(
    corpus: Corpus,
    client: FreesoundClient,
    pairs: Iterable[Pair],
    config: BuildConfig = BuildConfig(),
    workers: int = 1,
    progress: bool = True,
) -> BuildReport:
    """Search, download and decode; resumes where an earlier run stopped. See the module docstring.

    Stops early (``report.stopped`` says why and when to resume) when the daily quota is used up.
    """
    from structlab import runtime

    pairs = list(pairs)
    if not all(isinstance(p, Pair) for p in pairs):
        raise TypeError("pairs: expected Pair objects (parse texts with parse_pair)")
    report = BuildReport()
    with corpus.transaction():
        corpus.set_meta("build", repr(config))
    try:
        for pair in runtime.progress(pairs, desc="searching", unit="pair", disable=None if progress else True):
            search_pair(corpus, client, pair, config, report)
    except QuotaExhausted as err:
        report.stopped = str(err)
    if config.download:
        download_previews(corpus, client, report, progress)
        report.analysed = corpus.analyse(workers=workers, progress=progress)
    return report

