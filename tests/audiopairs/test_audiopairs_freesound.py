"""FreesoundClient and RateLimiter against a local fake of the freesound API (real HTTP, real clips)."""

from __future__ import annotations

import logging
import os

import pytest

from structlab import data
from structlab.audiopairs.freesound import (
    FreesoundClient,
    FreesoundError,
    QuotaExhausted,
    RateLimiter,
    load_token,
)

from .fake_freesound import FakeFreesound, clips_from_manifest

TOKEN = "tok-3f9a1c77e2"


class FakeClock:
    """A clock whose sleep advances it, so rate-limit tests run instantly."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def max_in_window(times: list[float], width: float) -> int:
    """Most requests in any window of ``width`` seconds (brute force over window starts)."""
    return max(sum(t <= s < t + width for s in times) for t in times)


def test_rate_limiter_keeps_60_per_minute(tmp_path):
    clock = FakeClock()
    limiter = RateLimiter(tmp_path / "state.json", clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(130):
        limiter.acquire()
        times.append(clock.now)
    assert max_in_window(times, 60.0) <= 60
    assert times[-1] - times[0] >= 120.0  # 130 requests need at least two full minutes


def test_rate_limit_is_shared_across_runs_through_the_state_file(tmp_path):
    clock = FakeClock()
    first = RateLimiter(tmp_path / "state.json", clock=clock, sleep=clock.sleep)
    for _ in range(50):
        first.acquire()
    second = RateLimiter(tmp_path / "state.json", clock=clock, sleep=clock.sleep)  # a new run
    start = clock.now
    for _ in range(20):
        second.acquire()
    assert clock.now - start >= 59.0  # the 61st request of the minute had to wait
    assert second.used()[1] == 70


def test_daily_quota_stops_with_the_time_to_resume(tmp_path):
    clock = FakeClock()
    limiter = RateLimiter(tmp_path / "state.json", per_minute=60, per_day=5, clock=clock, sleep=clock.sleep)
    first = clock.now
    for _ in range(5):
        limiter.acquire()
    with pytest.raises(QuotaExhausted) as err:
        RateLimiter(tmp_path / "state.json", per_day=5, clock=clock, sleep=clock.sleep).acquire()
    assert err.value.resume_at == pytest.approx(first + 86400.0)
    clock.now = first + 86400.5
    limiter.acquire()  # a day later


def test_rate_limiter_rejects_bad_limits(tmp_path):
    with pytest.raises(ValueError, match="per_minute=0"):
        RateLimiter(tmp_path / "s.json", per_minute=0)


def test_load_token_from_env_or_private_config_file(tmp_path):
    assert load_token({"FREESOUND_API_KEY": " abc "}, tmp_path / "none.toml") == "abc"
    config = tmp_path / "freesound.toml"
    config.write_text('api_key = "from-file"\n')
    os.chmod(config, 0o600)
    assert load_token({}, config) == "from-file"
    os.chmod(config, 0o644)
    with pytest.raises(FreesoundError, match="chmod 600"):
        load_token({}, config)
    with pytest.raises(FreesoundError, match="FREESOUND_API_KEY"):
        load_token({}, tmp_path / "missing.toml")


@pytest.fixture(scope="module")
def clips():
    found = data.find("audio")
    if found is None:
        pytest.skip("shared audio corpus not found (set STRUCTLAB_DATA to a folder holding audio/)")
    spec = {f"clips/wesnoth-1.16-data/orc-die-{i}.ogg": ["dying", "orc"] for i in range(1, 4)}
    spec["clips/lugaru-data/RabbitChitter.ogg"] = ["rabbit", "chitter"]
    return clips_from_manifest(found.path, spec)  # 3 dying orcs and a rabbit


def client_for(fake, tmp_path, clock=None, **kwargs) -> FreesoundClient:
    clock = clock or FakeClock()
    limiter = RateLimiter(tmp_path / "state.json", clock=clock, sleep=clock.sleep)
    return FreesoundClient(TOKEN, base_url=fake.base_url, limiter=limiter, sleep=clock.sleep, **kwargs)


def test_search_follows_next_links_across_pages(clips, tmp_path):
    with FakeFreesound(clips, TOKEN) as fake, client_for(fake, tmp_path) as client:
        page = client.search("dying orc", "duration:[0.1 TO 600]", page_size=2)
        assert page.count == 3 and len(page.results) == 2 and page.next
        every = list(client.search_all("dying orc", "duration:[0.1 TO 600]", page_size=2))
        assert [s["id"] for s in every] == sorted(c.id for c in clips if "orc" in c.tags)
        assert {"previews", "username", "license", "tags"} <= set(every[0])
        assert client.sound(clips[0].id)["name"] == clips[0].name


def test_429_is_retried_after_the_retry_after_delay(clips, tmp_path):
    clock = FakeClock()
    with FakeFreesound(clips, TOKEN, throttle={1}, retry_after=7) as fake, client_for(fake, tmp_path, clock) as client:
        page = client.search("dying orc")
        assert page.count == 3
        assert clock.slept and clock.slept[0] >= 7.0
        assert fake.api_requests == 2


def test_5xx_is_retried_with_backoff_and_4xx_is_not(clips, tmp_path):
    clock = FakeClock()
    with FakeFreesound(clips, TOKEN, fail={1, 2}) as fake, client_for(fake, tmp_path, clock, backoff=1.0) as client:
        assert client.search("dying orc").count == 3
        assert len(clock.slept) == 2 and clock.slept[1] > clock.slept[0]  # exponential back-off
        with pytest.raises(FreesoundError, match="HTTP 404"):
            client.sound(999999)
        assert fake.api_requests == 4


def test_token_goes_only_to_the_api_host_and_never_into_errors_or_logs(clips, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeFreesound(clips, TOKEN, throttle={1}, retry_after=1) as fake:
        with client_for(fake, tmp_path) as client:
            result = client.search("dying orc", page_size=1).results[0]
            client.download(result["previews"]["preview-hq-ogg"], tmp_path / "x.ogg")
            assert TOKEN not in repr(client)
        assert fake.preview_auth_headers == [None]
        # The fake answers a wrong token with a 401 that echoes the header; the error must not carry it.
        wrong = FreesoundClient(TOKEN + "-old", base_url=fake.base_url, limiter=RateLimiter(tmp_path / "s2.json"))
        with pytest.raises(FreesoundError) as err:
            wrong.search("dying orc")
        assert "401" in str(err.value) and TOKEN not in str(err.value)
    assert TOKEN not in caplog.text
    assert TOKEN not in (tmp_path / "state.json").read_text()


def test_download_resumes_a_dropped_connection_with_a_range_request(clips, tmp_path):
    clip = clips[0]
    with FakeFreesound(clips, TOKEN, drop_once={clip.id}) as fake, client_for(fake, tmp_path) as client:
        size = client.download(f"{fake.preview_base}/previews/{clip.id}.ogg", tmp_path / "p.ogg")
        assert (tmp_path / "p.ogg").read_bytes() == clip.file.read_bytes()
        assert size == clip.file.stat().st_size
        assert fake.preview_bytes[clip.id] == size  # the first half was not fetched again
        assert fake.previews_completed[clip.id] == 1


def test_download_times_out_a_stalled_connection_and_resumes(clips, tmp_path):
    clip = clips[1]
    with FakeFreesound(clips, TOKEN, block={clip.id}) as fake:
        with client_for(fake, tmp_path, timeout=(2.0, 0.5)) as client:
            client.download(f"{fake.preview_base}/previews/{clip.id}.ogg", tmp_path / "p.ogg")
        assert (tmp_path / "p.ogg").read_bytes() == clip.file.read_bytes()
        assert fake.preview_bytes[clip.id] == clip.file.stat().st_size


def test_client_validates_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="token"):
        FreesoundClient("  ")
    with pytest.raises(ValueError, match="base_url="):
        FreesoundClient("t", base_url="ftp://x")
    client = FreesoundClient("t", limiter=RateLimiter(tmp_path / "s.json"))
    with pytest.raises(ValueError, match="page_size=151"):
        client.search("x", page_size=151)
