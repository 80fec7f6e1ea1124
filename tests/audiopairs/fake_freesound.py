"""A local stand-in for freesound's API v2, for tests: real HTTP (http.server in a thread, port 0).

It speaks the documented request and response shapes: ``GET /apiv2/search/text/`` with ``query``,
``filter`` (``duration:[a TO b]``, ``license:("A" OR "B")``), ``fields``, ``page``, ``page_size``,
answering ``{"count", "next", "previous", "results"}`` with ``next`` a full URL; ``GET
/apiv2/sounds/<id>/``; token authentication (``Authorization: Token ...``; a wrong token gets 401,
whose body echoes the header so tests can check the client scrubs it). Previews are served from a
second host name (``localhost`` while the API is on ``127.0.0.1``), as freesound's CDN is, with HTTP
Range support, and the bytes are real clips from the shared audio corpus, whatever their container: a
WAV or FLAC clip is served behind an ``.ogg`` URL as a misconfigured mirror would. A clip's
``preview_keys`` say which ``previews`` keys its record offers (none, or only the MP3 ones, as real
records sometimes do); ``body`` replaces the file's bytes (an HTML error page served with status 200).

Faults on demand: ``throttle``: API request numbers answered 429 with ``Retry-After``; ``fail``: request
numbers answered 503; ``drop_once``: sound ids whose first preview download stops half-way;
``block``: sound ids whose first preview download hangs (until ``release`` is set) after half the bytes,
so a test can kill the client mid-download or let it time out. It counts what it served:
``pages_served[(query, page)]``, ``previews_completed[id]``, ``preview_bytes[id]``.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

LICENCE_URLS = {
    "CC0-1.0": "http://creativecommons.org/publicdomain/zero/1.0/",
    "CC-BY-3.0": "http://creativecommons.org/licenses/by/3.0/",
    "CC-BY-4.0": "https://creativecommons.org/licenses/by/4.0/",
    "CC-BY-NC-4.0": "https://creativecommons.org/licenses/by-nc/4.0/",
}
LICENCE_NAMES = {
    "Creative Commons 0": ("CC0-1.0",),
    "Attribution": ("CC-BY-3.0", "CC-BY-4.0"),
    "Attribution Noncommercial": ("CC-BY-NC-4.0",),
}


@dataclass
class Clip:
    """One sound the fake server knows: metadata and the real file served as its preview."""

    id: int
    name: str
    tags: list[str]
    username: str
    license: str  # SPDX id (served as freesound's licence URL)
    duration: float
    samplerate: int
    channels: int
    file: Path
    preview_keys: tuple[str, ...] = ("preview-hq-ogg", "preview-lq-ogg")
    body: bytes | None = None

    def data(self) -> bytes:
        return self.body if self.body is not None else self.file.read_bytes()

    def as_result(self, base: str, preview_base: str, fields: list[str]) -> dict:
        full = {
            "id": self.id,
            "name": self.name,
            "tags": self.tags,
            "username": self.username,
            "license": LICENCE_URLS[self.license],
            "duration": self.duration,
            "samplerate": self.samplerate,
            "channels": self.channels,
            "type": self.file.suffix.lstrip("."),
            "filesize": self.file.stat().st_size,
            "url": f"{base}/people/{self.username}/sounds/{self.id}/",
            "previews": {
                key: f"{preview_base}/previews/{self.id}-{key.rsplit('-', 2)[1]}.{key.rsplit('-', 1)[1]}"
                for key in self.preview_keys
            },
        }
        return {k: full[k] for k in fields if k in full}


@dataclass
class FakeFreesound:
    clips: list[Clip]
    token: str
    throttle: set[int] = field(default_factory=set)
    retry_after: int = 2
    fail: set[int] = field(default_factory=set)
    drop_once: set[int] = field(default_factory=set)
    block: set[int] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    blocked: threading.Event = field(default_factory=threading.Event)
    api_requests: int = 0
    pages_served: Counter = field(default_factory=Counter)
    previews_completed: Counter = field(default_factory=Counter)
    preview_bytes: Counter = field(default_factory=Counter)
    preview_auth_headers: list = field(default_factory=list)
    log: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                fake._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/apiv2"
        self.preview_base = f"http://localhost:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeFreesound:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    # -- request handling ------------------------------------------------------------------------------

    def _json(self, h, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h) -> None:
        url = urlsplit(h.path)
        host = h.headers.get("Host", "")
        self.log.append((host, h.path, h.headers.get("Authorization")))
        if url.path.startswith("/previews/"):
            self.preview_auth_headers.append(h.headers.get("Authorization"))
            return self._preview(h, int(Path(url.path).stem.split("-")[0]))
        if not url.path.startswith("/apiv2/"):
            return self._json(h, 404, {"detail": "Not found."})
        with self._lock:
            self.api_requests += 1
            number = self.api_requests
        auth = h.headers.get("Authorization", "")
        if auth != f"Token {self.token}":
            return self._json(h, 401, {"detail": f"Invalid token header: {auth!r}"})
        if number in self.throttle:
            return self._json(h, 429, {"detail": "Request was throttled."}, {"Retry-After": str(self.retry_after)})
        if number in self.fail:
            return self._json(h, 503, {"detail": "Service unavailable."})
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path.rstrip("/") == "/apiv2/search/text":
            return self._search(h, params)
        m = re.fullmatch(r"/apiv2/sounds/(\d+)/?", url.path)
        if m:
            clip = next((c for c in self.clips if c.id == int(m.group(1))), None)
            if clip is None:
                return self._json(h, 404, {"detail": "Not found."})
            fields = params.get("fields", "id,name,tags,username,license").split(",")
            return self._json(h, 200, clip.as_result(self.base_url, self.preview_base, fields))
        return self._json(h, 404, {"detail": "Not found."})

    def matches(self, clip: Clip, query: str, filt: str) -> bool:
        """Every query term among the clip's tags or name words; the filter's duration and licence."""
        words = set(re.split(r"[\W_]+", " ".join([*clip.tags, clip.name]).lower()))
        if not all(term.lower() in words for term in query.split()):
            return False
        m = re.search(r"duration:\[([\d.*]+) TO ([\d.*]+)\]", filt)
        if m:
            lo = 0.0 if m.group(1) == "*" else float(m.group(1))
            hi = float("inf") if m.group(2) == "*" else float(m.group(2))
            if not lo <= clip.duration <= hi:
                return False
        m = re.search(r"license:\(([^)]*)\)", filt)
        if m:
            allowed = {spdx for name in re.findall(r'"([^"]+)"', m.group(1)) for spdx in LICENCE_NAMES[name]}
            if clip.license not in allowed:
                return False
        return True

    def _search(self, h, params: dict) -> None:
        query, filt = params.get("query", ""), params.get("filter", "")
        page, size = int(params.get("page", 1)), int(params.get("page_size", 15))
        if size > 150:
            return self._json(h, 400, {"detail": "page_size: at most 150"})
        hits = sorted((c for c in self.clips if self.matches(c, query, filt)), key=lambda c: c.id)
        chunk = hits[(page - 1) * size : page * size]
        if page > 1 and not chunk:
            return self._json(h, 404, {"detail": "Invalid page."})
        fields = params.get("fields", "id,name,tags,username,license").split(",")

        def link(p: int) -> str:
            return f"{self.base_url}/search/text/?" + urlencode({**params, "page": p})

        body = {
            "count": len(hits),
            "next": link(page + 1) if page * size < len(hits) else None,
            "previous": link(page - 1) if page > 1 else None,
            "results": [c.as_result(self.base_url, self.preview_base, fields) for c in chunk],
        }
        with self._lock:
            self.pages_served[(query, page)] += 1
        self._json(h, 200, body)

    def _preview(self, h, sound_id: int) -> None:
        clip = next((c for c in self.clips if c.id == sound_id), None)
        if clip is None:
            return self._json(h, 404, {"detail": "Not found."})
        data = clip.data()
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("Content-Type", "audio/ogg")
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        with self._lock:
            drop = sound_id in self.drop_once
            self.drop_once.discard(sound_id)
            hang = sound_id in self.block
            self.block.discard(sound_id)
        if drop or hang:
            half = body[: len(body) // 2]
            h.wfile.write(half)
            h.wfile.flush()
            with self._lock:
                self.preview_bytes[sound_id] += len(half)
            if hang:
                self.blocked.set()
                self.release.wait(timeout=30)
            h.close_connection = True
            return
        h.wfile.write(body)
        with self._lock:
            self.preview_bytes[sound_id] += len(body)
            self.previews_completed[sound_id] += 1


def clips_from_manifest(root: Path, paths: dict[str, list[str]], first_id: int = 1000) -> list[Clip]:
    """Clips for the fake server from the shared corpus: ``paths`` maps a clip path to its tags."""
    import csv

    with open(root / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = {r["path"]: r for r in csv.DictReader(handle)}
    clips = []
    for i, (path, tags) in enumerate(paths.items()):
        r = rows[path]
        licence = r["license"] if r["license"] in LICENCE_URLS else "CC-BY-4.0"
        clips.append(Clip(
            id=first_id + i,
            name=r["label"],
            tags=tags,
            username=r["uploader"] or r["source"].split(":")[1].split("@")[0],
            license=licence,
            duration=float(r["duration_s"]),
            samplerate=int(r["sample_rate"]),
            channels=int(r["channels"]),
            file=root / path,
        ))
    return clips
