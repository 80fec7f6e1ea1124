"""A client for the freesound API v2 (https://freesound.org/docs/api/), as AudioPairBank used it.

Written against the API's public documentation:

- ``GET /apiv2/search/text/`` with ``query``, ``filter`` (Solr syntax: ``tag:dog duration:[0.5 TO 30]
  license:("Creative Commons 0" OR "Attribution")``), ``fields``, ``page_size`` (at most 150) and
  ``page``; the answer is ``{"count", "next", "previous", "results"}``, ``next`` being the URL of the
  next page or null;
- ``GET /apiv2/sounds/<id>/`` (a sound instance), whose ``previews`` map holds the URLs of up to four
  previews that need no OAuth2 (the original file would): ``preview-hq-ogg`` (Ogg Vorbis, ~192 kbps),
  ``preview-hq-mp3`` (~128 kbps), ``preview-lq-ogg`` and ``preview-lq-mp3`` (~64 kbps). A record may
  lack some of them; :func:`choose_preview` takes the best one it has;
- token authentication: the header ``Authorization: Token <api key>``;
- throttling: 60 requests a minute and 2,000 a day per key; past a limit the API answers 429.

The token is sent only to the API's own host, never printed, logged or stored (``repr`` hides it, and
any error text that could carry it is scrubbed). The rate limit is kept in a small state file shared
by every run and process on the machine (:class:`RateLimiter`), so a build that is stopped and resumed
keeps to the daily quota.
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import json
import logging
import os
import random
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from structlab.atomic import atomic_write_json
from structlab.errors import StructlabError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://freesound.org/apiv2"
TOKEN_ENV = "FREESOUND_API_KEY"
MAX_PAGE_SIZE = 150
# What a search asks for, so that no per-sound request is needed (the docs' advice).
SEARCH_FIELDS = (
    "id", "name", "tags", "username", "license", "duration", "samplerate", "channels", "type",
    "filesize", "previews", "url",
)
# Previews in order of preference: high quality first, Ogg Vorbis before MP3 at equal quality.
PREVIEW_KEYS = ("preview-hq-ogg", "preview-hq-mp3", "preview-lq-ogg", "preview-lq-mp3")


def choose_preview(previews: dict[str, Any] | None, prefer: str | None = None) -> tuple[str, str] | None:
    """The (key, URL) of the best preview a sound record offers: ``prefer`` if it has it, else the first of
    :data:`PREVIEW_KEYS` it has. None when it has none. Raises ``ValueError`` for an unknown ``prefer``."""
    if prefer is not None and prefer not in PREVIEW_KEYS:
        raise ValueError(f"prefer={prefer!r}: expected one of {PREVIEW_KEYS}")
    previews = previews if isinstance(previews, dict) else {}
    for key in ((prefer,) if prefer else ()) + PREVIEW_KEYS:
        url = previews.get(key)
        if isinstance(url, str) and urlsplit(url).scheme in ("http", "https"):
            return key, url
    return None


class FreesoundError(StructlabError):
    """The freesound API refused or failed a request (after retries)."""


class QuotaExhausted(FreesoundError):
    """The daily request quota is used up; ``resume_at`` is when the next request may go."""

    def __init__(self, message: str, resume_at: float) -> None:
        super().__init__(message)
        self.resume_at = resume_at


# -- the token --------------------------------------------------------------------------------------------


def default_config_path() -> Path:
    """``~/.config/structlab/freesound.toml`` (or the platform's equivalent)."""
    import platformdirs

    return Path(platformdirs.user_config_dir("structlab")) / "freesound.toml"


def load_token(environ: dict[str, str] | None = None, config_path: Path | None = None) -> str:
    """The freesound API key: ``$FREESOUND_API_KEY``, else ``api_key = "..."`` in the config file.

    Raises :class:`FreesoundError` (which never contains the key) if neither gives one, or if the
    config file can be read by other users.
    """
    environ = os.environ if environ is None else environ
    token = environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = config_path or default_config_path()
    if path.is_file():
        if path.stat().st_mode & 0o077:
            raise FreesoundError(f"{path}: readable by other users; run `chmod 600 {path}` (it holds your API key)")
        with open(path, "rb") as handle:
            token = str(tomllib.load(handle).get("api_key", "")).strip()
        if token:
            return token
    raise FreesoundError(
        f"no freesound API key: set {TOKEN_ENV} or write api_key = \"...\" to {path} (chmod 600); "
        "apply for a key at https://freesound.org/apiv2/apply"
    )


# -- the rate limiter --------------------------------------------------------------------------------------


def default_state_path() -> Path:
    """Where the request log lives: the user's state folder (shared by every run on this machine)."""
    import platformdirs

    return Path(platformdirs.user_state_dir("structlab")) / "freesound-requests.json"


@dataclass
class RateLimiter:
    """Keeps to ``per_minute`` and ``per_day`` requests over sliding windows, persisted in ``state_path``.

    The state file holds the times of the requests of the last 24 hours (at most ``per_day`` numbers);
    it is read and written under an exclusive file lock, atomically, so runs that follow each other
    or run side by side share one budget. ``clock`` and ``sleep`` are injectable for tests.
    """

    state_path: Path
    per_minute: int = 60
    per_day: int = 2000
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self.state_path = Path(self.state_path)
        for name in ("per_minute", "per_day"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[float]]:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_path.with_name(self.state_path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                times = self._read()
                yield times
                atomic_write_json(self.state_path, {"version": 1, "requests": times})
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> list[float]:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            return sorted(float(t) for t in state.get("requests", []))
        except FileNotFoundError:
            return []
        except (ValueError, TypeError, AttributeError):
            log.warning("%s: unreadable request log, starting a new one", self.state_path)
            return []

    def acquire(self) -> None:
        """Wait until one more request is allowed, then record it.

        Raises :class:`QuotaExhausted` instead of waiting (hours) when the daily quota is used up.
        """
        while True:
            with self._locked() as times:
                now = self.clock()
                times[:] = [t for t in times if t > now - 86400.0]
                if len(times) >= self.per_day:
                    resume = times[len(times) - self.per_day] + 86400.0
                    raise QuotaExhausted(
                        f"freesound daily quota of {self.per_day} requests used up; resume after "
                        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(resume))}",
                        resume,
                    )
                minute = [t for t in times if t > now - 60.0]
                if len(minute) < self.per_minute:
                    times.append(now)
                    return
                wait = minute[len(minute) - self.per_minute] + 60.0 - now
            self.sleep(max(wait, 0.0))

    def used(self) -> tuple[int, int]:
        """Requests in the last minute and in the last 24 hours."""
        now = self.clock()
        times = self._read()
        return sum(t > now - 60 for t in times), sum(t > now - 86400 for t in times)


# -- the client --------------------------------------------------------------------------------------------


@dataclass
class Page:
    """One page of a sound list: the sounds, the total count and the URL of the next page."""

    results: list[dict[str, Any]]
    count: int
    next: str | None


class FreesoundClient:
    """Token-authenticated access to freesound's API v2 (search, sound instances, previews).

    ``token``: the API key (see :func:`load_token`). ``base_url``: the API root (a test server's
    address in tests). ``limiter``: shared request budget (default: the machine's state file).
    ``timeout``: (connect, read) seconds. ``max_retries``: retries after 429, 5xx and dropped
    connections, with exponential back-off that honours ``Retry-After``.
    """

    def __init__(
        self,
        token: str,
        base_url: str = DEFAULT_BASE_URL,
        limiter: RateLimiter | None = None,
        timeout: tuple[float, float] = (10.0, 60.0),
        max_retries: int = 5,
        backoff: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(token, str) or not token.strip():
            raise ValueError("token: expected a non-empty freesound API key (str)")
        if not isinstance(base_url, str) or urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError(f"base_url={base_url!r}: expected an http(s) URL")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r}: expected a non-negative int")
        import requests

        self._token = token.strip()
        self.base_url = base_url.rstrip("/")
        self._api_host = urlsplit(self.base_url).netloc
        self.limiter = limiter or RateLimiter(default_state_path())
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self._sleep = sleep
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "structlab-audiopairs (+https://freesound.org/docs/api/)"

    def __repr__(self) -> str:
        return f"FreesoundClient(base_url={self.base_url!r}, token=<hidden>)"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> FreesoundClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "<token>")

    def _request(self, url: str, params: dict[str, Any] | None = None, stream: bool = False, headers=None):
        """GET ``url`` with retries; the token goes only to the API host; each try counts against the limit."""
        import requests

        is_api = urlsplit(url).netloc == self._api_host
        send = dict(headers or {})
        if is_api:
            send["Authorization"] = f"Token {self._token}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if is_api:
                self.limiter.acquire()
            try:
                response = self._session.get(url, params=params, headers=send, timeout=self.timeout, stream=stream)
            except (requests.ConnectionError, requests.Timeout) as err:
                last = self._scrub(f"{type(err).__name__}: {err}")
                delay = self.backoff * 2**attempt
            else:
                if response.status_code < 400 or response.status_code == 416:
                    return response
                last = f"HTTP {response.status_code} for {self._scrub(response.url)}"
                if response.status_code != 429 and response.status_code < 500:
                    detail = self._scrub(response.text[:200])
                    response.close()
                    raise FreesoundError(f"{last}: {detail}")
                delay = _retry_after(response.headers.get("Retry-After"), time.time())
                if delay is None:
                    delay = self.backoff * 2**attempt
                response.close()
            if attempt == self.max_retries:
                break
            delay *= 1.0 + 0.1 * random.random()  # jitter, so parallel clients do not retry in step
            log.info("freesound: %s; retry %d/%d in %.1f s", last, attempt + 1, self.max_retries, delay)
            self._sleep(delay)
        raise FreesoundError(f"freesound request failed after {self.max_retries + 1} tries: {last}")

    def search(
        self,
        query: str,
        filter: str = "",
        fields: tuple[str, ...] = SEARCH_FIELDS,
        page_size: int = MAX_PAGE_SIZE,
        page: int = 1,
        sort: str = "score",
    ) -> Page:
        """One page of ``/search/text/`` results (``page`` from 1; ``page_size`` at most 150)."""
        if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size={page_size!r}: expected an int in [1, {MAX_PAGE_SIZE}]")
        if not isinstance(page, int) or page < 1:
            raise ValueError(f"page={page!r}: expected an int >= 1")
        params = {"query": query, "fields": ",".join(fields), "page_size": page_size, "page": page, "sort": sort}
        if filter:
            params["filter"] = filter
        return self._page(self._request(f"{self.base_url}/search/text/", params))

    def next_page(self, page: Page) -> Page | None:
        """The page after ``page`` (following its ``next`` URL), or None on the last page."""
        if not page.next:
            return None
        if urlsplit(page.next).netloc != self._api_host:
            raise FreesoundError(f"next={self._scrub(page.next)!r}: not on the API host {self._api_host}")
        return self._page(self._request(page.next))

    def search_all(self, query: str, filter: str = "", limit: int | None = None, **kwargs: Any) -> Iterator[dict]:
        """Every result of a search, page by page (at most ``limit`` sounds)."""
        page: Page | None = self.search(query, filter, **kwargs)
        n = 0
        while page is not None:
            for sound in page.results:
                if limit is not None and n >= limit:
                    return
                n += 1
                yield sound
            page = self.next_page(page)

    def _page(self, response) -> Page:
        try:
            body = response.json()
            return Page(list(body["results"]), int(body.get("count", len(body["results"]))), body.get("next"))
        except (ValueError, KeyError, TypeError) as err:
            raise FreesoundError(f"unexpected search answer from {self._scrub(response.url)}: {err}") from None

    def sound(self, sound_id: int, fields: tuple[str, ...] = SEARCH_FIELDS) -> dict[str, Any]:
        """A sound instance (``/sounds/<id>/``) with the given fields."""
        if not isinstance(sound_id, int) or sound_id < 0:
            raise ValueError(f"sound_id={sound_id!r}: expected a non-negative int")
        response = self._request(f"{self.base_url}/sounds/{sound_id}/", {"fields": ",".join(fields)})
        try:
            return response.json()
        except ValueError as err:
            raise FreesoundError(f"sound {sound_id}: answer is not JSON ({err})") from None

    def download(self, url: str, dest: Path) -> int:
        """Download ``url`` (a preview) into ``dest``, resuming a partial ``dest`` with an HTTP Range.

        A connection that drops mid-file is retried from where it stopped. Returns the file's size.
        The caller renames ``dest`` into place once it has checked it.
        """
        import requests
        import urllib3

        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(self.max_retries + 1):
            have = dest.stat().st_size if dest.exists() else 0
            headers = {"Accept-Encoding": "identity"}  # the bytes as stored, so ranges and checksums hold
            if have:
                headers["Range"] = f"bytes={have}-"
            response = self._request(url, stream=True, headers=headers)
            try:
                if response.status_code == 416:  # asked past the end: the file is complete
                    return have
                append = have and response.status_code == 206
                expected = response.headers.get("Content-Length")
                with open(dest, "ab" if append else "wb") as out:
                    got = 0
                    # read1: whatever has arrived, so bytes before a dropped connection are kept for resuming
                    while block := response.raw.read1(1 << 16):
                        out.write(block)
                        got += len(block)
                    out.flush()
                    os.fsync(out.fileno())
                if expected is not None and got != int(expected):
                    raise requests.ConnectionError(f"got {got} of {expected} bytes")
                return dest.stat().st_size
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError,
                    OSError) as err:
                if attempt == self.max_retries:
                    raise FreesoundError(
                        f"download of {self._scrub(url)} kept failing: {self._scrub(str(err))}"
                    ) from None
                log.info("freesound: download interrupted (%s); resuming", self._scrub(str(err)))
                self._sleep(self.backoff * 2**attempt)
            finally:
                response.close()
        raise AssertionError("unreachable")


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(when - now, 0.0)
