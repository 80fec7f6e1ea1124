"""Building a corpus from the fake freesound: plan, build, kill and resume, quota, token hygiene."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from structlab import data
from structlab.audiopairs.build import BuildConfig, build, plan
from structlab.audiopairs.corpus import Corpus
from structlab.audiopairs.freesound import FreesoundClient, RateLimiter
from structlab.audiopairs.vocab import parse_pair

from .fake_freesound import FakeFreesound, clips_from_manifest

TOKEN = "tok-b7c1d0e95a"
PAIRS = ["dying orc", "dying wolf", "heavy wind"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def clips():
    found = data.find("audio")
    if found is None:
        pytest.skip("shared audio corpus not found (set STRUCTLAB_DATA to a folder holding audio/)")
    spec = {f"clips/wesnoth-1.16-data/orc-die-{i}.ogg": ["dying", "orc", "death"] for i in (1, 2, 3)}
    spec.update({f"clips/wesnoth-1.16-data/wolf-die-{i}.ogg": ["wolf", "dies"] for i in (1, 2, 3)})
    spec["clips/openttd-opensfx/57_heavy-wind.flac"] = ["heavy", "wind", "heavy-wind"]
    spec["clips/openttd-opensfx/52_wind.flac"] = ["wind", "heavy"]  # the same bytes as 57: one file twice
    spec["clips/tuxpaint-stamps-default/animals_mammals_badger.ogg"] = ["dying", "orc"]  # tags that lie
    spec["clips/lugaru-data/RabbitChitter.ogg"] = ["orc", "dying-orc"]  # only the phrase tag
    return clips_from_manifest(found.path, spec)


def new_client(fake, state: Path, clock: FakeClock | None = None, **kw) -> FreesoundClient:
    clock = clock or FakeClock()
    limiter = RateLimiter(state, clock=clock, sleep=clock.sleep, **kw)
    return FreesoundClient(TOKEN, base_url=fake.base_url, limiter=limiter, sleep=clock.sleep)


def test_plan_counts_requests_and_days_before_anything_is_sent():
    pairs = [parse_pair(t) for t in PAIRS]
    p = plan(pairs, BuildConfig(max_files=400, page_size=150), per_day=2000)
    assert (p.pages_per_pair, p.search_requests, p.downloads) == (3, 9, 1200)
    many = plan(pairs * 1000, BuildConfig(max_files=150))  # 3,000 pairs (repeats are fine for a plan)
    assert many.search_requests == 3000 and many.days == 2 and many.minutes == 50.0


def test_build_fetches_every_page_and_file_once_and_records_tag_rules(clips, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    pairs = [parse_pair(t) for t in PAIRS]
    with FakeFreesound(clips, TOKEN, throttle={2}, retry_after=3, drop_once={clips[0].id}) as fake:
        with Corpus(tmp_path / "c.db") as corpus, new_client(fake, tmp_path / "rate.json") as client:
            report = build(corpus, client, pairs, BuildConfig(max_files=10, page_size=2), progress=False)
            again = build(corpus, client, pairs, BuildConfig(max_files=10, page_size=2), progress=False)
            rules = {
                (r["text"], r["freesound_id"]): r["rules"]
                for r in corpus.query(
                    "SELECT p.text, s.freesound_id, l.rules FROM links l JOIN pairs p ON p.id = l.pair_id "
                    "JOIN sounds s ON s.id = l.sound_id"
                )
            }
            counts = corpus.counts()
            assert corpus.validate().ok
        # Every search page and every preview went over the wire exactly once, even across two runs,
        # a 429 and a connection dropped mid-file (resumed with a Range request).
        assert all(n == 1 for n in fake.pages_served.values())
        assert fake.previews_completed == {c.id: 1 for c in clips}
        assert fake.preview_bytes == {c.id: c.file.stat().st_size for c in clips}
        assert (again.pages, again.downloads) == (0, 0)
        assert report.downloads == len(clips) == counts["files"] == counts["analysed"]
    by_name = {c.file.name: c.id for c in clips}
    assert rules[("dying orc", by_name["orc-die-1.ogg"])] == "both-tags"
    assert rules[("dying orc", by_name["RabbitChitter.ogg"])] == "phrase"
    assert rules[("dying wolf", by_name["wolf-die-1.ogg"])] == "both-tags"  # 'dies' is a form of 'die'
    assert rules[("heavy wind", by_name["57_heavy-wind.flac"])] == "both-tags,phrase"
    # The token is nowhere but in the requests to the API host.
    assert TOKEN not in caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


CHILD = textwrap.dedent(
    """
    import sys
    from structlab.audiopairs.build import BuildConfig, build
    from structlab.audiopairs.corpus import Corpus
    from structlab.audiopairs.freesound import FreesoundClient, RateLimiter, load_token
    from structlab.audiopairs.vocab import parse_pair

    base, db, state = sys.argv[1:4]
    pairs = [parse_pair(t) for t in sys.argv[4:]]
    client = FreesoundClient(load_token(), base_url=base, limiter=RateLimiter(state))
    build(Corpus(db), client, pairs, BuildConfig(max_files=10, page_size=2), progress=False)
    """
)


def test_killed_build_resumes_without_fetching_anything_twice(clips, tmp_path):
    blocked = clips[4]  # a download in the middle of the run hangs half-way; the build is killed there
    with FakeFreesound(clips, TOKEN, block={blocked.id}) as fake:
        env = {**os.environ, "FREESOUND_API_KEY": TOKEN}
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, fake.base_url, str(tmp_path / "c.db"), str(tmp_path / "rate.json"), *PAIRS],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            assert fake.blocked.wait(timeout=60), child.communicate(timeout=5)[0].decode()
            time.sleep(0.2)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        with Corpus(tmp_path / "c.db") as corpus:
            done_before = corpus.counts()
            assert done_before["search pages"] == sum(fake.pages_served.values())  # every page was committed
            assert 0 < done_before["files"] < len(clips)
            assert not (corpus.files_dir / f"freesound/{blocked.id}.ogg").exists()  # only the .part
            fake.release.set()
            with new_client(fake, tmp_path / "rate.json") as client:
                report = build(corpus, client, [parse_pair(t) for t in PAIRS], BuildConfig(max_files=10, page_size=2),
                               progress=False)
            assert report.pages == 0
            assert corpus.counts()["files"] == len(clips) and corpus.validate().ok
    assert all(n == 1 for n in fake.pages_served.values())
    assert fake.previews_completed == {c.id: 1 for c in clips}
    for clip in clips:
        size = clip.file.stat().st_size
        if clip is blocked:  # at most the bytes the killed process had not yet written were sent again
            assert size <= fake.preview_bytes[clip.id] < size + size // 2 + 1
        else:
            assert fake.preview_bytes[clip.id] == size


def test_build_stops_at_the_daily_quota_and_resumes_the_next_day(clips, tmp_path):
    clock = FakeClock()
    pairs = [parse_pair(t) for t in PAIRS]
    config = BuildConfig(max_files=10, page_size=2)
    with FakeFreesound(clips, TOKEN) as fake, Corpus(tmp_path / "c.db") as corpus:
        with new_client(fake, tmp_path / "rate.json", clock, per_day=3) as client:
            first = build(corpus, client, pairs, config, progress=False)
        assert "quota of 3 requests used up" in first.stopped and first.pages == 3
        clock.now += 86400
        with new_client(fake, tmp_path / "rate.json", clock, per_day=3) as client:
            second = build(corpus, client, pairs, config, progress=False)
        assert second.stopped == "" and first.pages + second.pages == sum(fake.pages_served.values())
    assert all(n == 1 for n in fake.pages_served.values())
