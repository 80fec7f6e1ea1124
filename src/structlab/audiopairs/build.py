"""Building a corpus from freesound: plan the queries, search page by page, download previews; resumable.

For each pair, one text search (``query="<modifier> <noun>"``; freesound matches it against tags, names
and descriptions) with the duration and licence filters, ``page_size`` results a page, until
``max_files`` results or the last page. Each page is stored in one transaction together with the
sounds it lists and their links to the pair (with the tag-match rules each sound satisfies), so a
resumed build starts at the first page it does not have. Then every linked sound's preview (the best
one its record offers: :func:`~structlab.audiopairs.freesound.choose_preview`) is downloaded to
``<files_dir>/freesound/<id>.part`` (resuming a partial file with an HTTP Range), its container read
from its first bytes (:func:`~structlab.audiopairs.containers.sniff`: a WAV served behind an ``.ogg``
URL is saved as ``.wav``), hashed, and renamed to ``<id>.<container>``; the database records it in the
same step. A file that is already in place is never fetched again. A sound whose record offers no
preview, or whose download fails, is recorded with the reason (``download_error``) and the build goes
on; :meth:`BuildReport.problem` says when the build has sounds but no file at all. Finally each new file
is decoded once (:meth:`Corpus.analyse`).

Search pages count against freesound's 60/minute and 2,000/day limits; previews come from freesound's
file servers and do not. When the daily quota runs out the build stops cleanly and says when to resume.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from structlab.audiopairs.containers import sniff
from structlab.audiopairs.corpus import Corpus, now_iso, tags_json
from structlab.audiopairs.freesound import (
    MAX_PAGE_SIZE,
    PREVIEW_KEYS,
    FreesoundClient,
    FreesoundError,
    QuotaExhausted,
    choose_preview,
)
from structlab.audiopairs.vocab import Pair, tag_matches
from structlab.data import sha256_file

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 20  # downloads failing one after another: the file server is down, stop asking
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
    preview: str | None = None  # preview key to prefer (else PREVIEW_KEYS' order)

    def __post_init__(self) -> None:
        if not isinstance(self.max_files, int) or self.max_files < 1:
            raise ValueError(f"max_files={self.max_files!r}: expected a positive int")
        if not isinstance(self.page_size, int) or not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size={self.page_size!r}: expected an int in [1, {MAX_PAGE_SIZE}]")
        if self.min_duration < 0 or (self.max_duration is not None and self.max_duration < self.min_duration):
            raise ValueError(
                f"min_duration={self.min_duration!r}, max_duration={self.max_duration!r}: expected 0 <= min <= max"
            )
        if self.preview is not None and self.preview not in PREVIEW_KEYS:
            raise ValueError(f"preview={self.preview!r}: expected one of {PREVIEW_KEYS}")
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

    @property
    def days_if_previews_counted(self) -> int:
        """Days at ``per_day`` if every preview download counted against the API quota too."""
        return math.ceil((self.requests_left + self.downloads) / self.per_day)

    def summary(self) -> str:
        return "\n".join([
            f"pairs: {self.pairs}",
            f"search requests: at most {self.search_requests} ({self.pages_per_pair} page(s) per pair)"
            + (f", {self.already_done} already in the corpus" if self.already_done else ""),
            f"API requests left: {self.requests_left}: {self.minutes:.0f} min at {self.per_minute}/min, "
            f"{self.days} day(s) at {self.per_day}/day",
            f"preview downloads: at most {self.downloads} (file servers, not counted against the API quota; "
            f"if they were: {self.days_if_previews_counted} day(s))",
            "a build stopped by the daily quota exits with code 3 and says when to resume; "
            "the quota is kept in the --state file, so the same command resumes the next day",
        ])


def plan(pairs: list[Pair] | int, config: BuildConfig = BuildConfig(), corpus: Corpus | None = None,
         per_minute: int = 60, per_day: int = 2000) -> Plan:
    """The query plan for ``pairs`` (a list, or a vocabulary size): requests, downloads and days (minus
    the search pages ``corpus`` already has). Raises ``ValueError`` for a negative vocabulary size or a
    non-positive limit."""
    for name, value in (("per_minute", per_minute), ("per_day", per_day)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive int")
    if isinstance(pairs, int):
        if pairs < 0:
            raise ValueError(f"pairs={pairs!r}: expected a list of pairs or a vocabulary size >= 0")
        pages = config.pages_per_pair()
        return Plan(pairs, pages, pairs * pages, pairs * config.max_files, per_minute, per_day)
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
    """What one build run did, and where the corpus stands after it.

    ``failed`` maps a freesound id to why its preview could not be had (no preview in its record, a
    download that failed, bytes that are no audio container); ``linked`` and ``with_file`` count the
    sounds the corpus found for its pairs and those of them that have a file.
    """

    pages: int = 0
    new_sounds: int = 0
    links: int = 0
    downloads: int = 0
    bytes: int = 0
    analysed: int = 0
    stopped: str = ""  # why the run stopped early (the daily quota), else empty
    failed: dict[int, str] = field(default_factory=dict)
    linked: int = 0
    with_file: int = 0

    def problem(self) -> str:
        """Why the build has nothing to show: no sound found, or sounds found but no file; else empty."""
        if self.stopped and not self.linked:
            return ""  # stopped by the quota before finding anything: resumable, said by ``stopped``
        if self.linked == 0:
            return "the searches found no sound for any pair (check the pairs and the filters)"
        if self.with_file == 0:
            reasons: dict[str, int] = {}
            for why in self.failed.values():
                reasons[why.split(": ", 1)[0]] = reasons.get(why.split(": ", 1)[0], 0) + 1
            shown = "; ".join(f"{n} x {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
            example = next(iter(self.failed.items()), None)
            return (f"{self.linked} sounds found but none downloaded: {shown or 'no download was tried'}"
                    + (f" (e.g. sound {example[0]}: {example[1]})" if example else ""))
        return ""


def _sound_values(result: dict, prefer: str | None = None) -> dict:
    from structlab.audiopairs.cleaning import licence_id

    previews = result.get("previews") or {}
    chosen = choose_preview(previews, prefer)
    offered = sorted(previews) if isinstance(previews, dict) else []
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
        "preview_url": chosen[1] if chosen else None,
        "download_error": None if chosen else f"no preview in the record: it offers {offered or 'no previews'}",
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
                values = _sound_values(result, config.preview)
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


def _in_place(folder, freesound_id: int):
    """The finished file of a sound (``<id>.<container>``), or None."""
    found = sorted(p for p in folder.glob(f"{freesound_id}.*") if p.suffix != ".part")
    return found[0] if found else None


def download_previews(corpus: Corpus, client: FreesoundClient, report: BuildReport, progress: bool = True) -> None:
    """Download every linked sound's preview that the corpus does not have (atomic, never twice).

    A sound without a preview URL or whose download fails is recorded with the reason
    (``sounds.download_error``, ``report.failed``) and skipped; after ``MAX_FAILURES_IN_A_ROW`` failures
    in a row the downloads stop (``report.stopped``).
    """
    from structlab import runtime

    linked = "freesound_id IS NOT NULL AND id IN (SELECT sound_id FROM links)"
    todo = corpus.sounds(f"{linked} AND path IS NULL")
    folder = corpus.files_dir / "freesound"
    in_a_row = 0
    for row in runtime.progress(todo, desc="downloading", unit="file", disable=None if progress else True):
        fid = row["freesound_id"]
        if row["preview_url"] is None:
            report.failed[fid] = row["download_error"] or "no preview in the record"
            continue
        folder.mkdir(parents=True, exist_ok=True)
        final = _in_place(folder, fid)  # a file in place was renamed there after a complete, checked download
        if final is None:
            partial = folder / f"{fid}.part"
            try:
                client.download(row["preview_url"], partial)
                container = sniff(partial)
                if container is None:
                    head = partial.read_bytes()[:16]
                    partial.unlink()
                    raise FreesoundError(f"not an audio container: the file starts with {head!r}")
            except FreesoundError as err:
                report.failed[fid] = f"download failed: {err}"
                with corpus.transaction() as db:
                    db.execute("UPDATE sounds SET download_error = ? WHERE id = ?", (report.failed[fid], row["id"]))
                in_a_row += 1
                if in_a_row >= MAX_FAILURES_IN_A_ROW:
                    report.stopped = "; ".join(filter(None, [
                        report.stopped, f"{in_a_row} downloads failed in a row (last: {err}); run again later"]))
                    break
                continue
            final = folder / f"{fid}.{container}"
            os.replace(partial, final)
            report.downloads += 1
        in_a_row = 0
        size = final.stat().st_size
        report.bytes += size
        with corpus.transaction() as db:
            db.execute("UPDATE sounds SET path = ?, sha256 = ?, size = ?, download_error = NULL WHERE id = ?",
                       (final.relative_to(corpus.files_dir).as_posix(), sha256_file(final), size, row["id"]))
    report.linked = len(corpus.sounds(linked))
    report.with_file = len(corpus.sounds(f"{linked} AND path IS NOT NULL"))


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

