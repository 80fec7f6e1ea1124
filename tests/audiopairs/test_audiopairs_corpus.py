"""The shared audio corpus imported into a Corpus: import, fingerprint, de-duplication, cleaning funnel,
splits, export and validate, and the command line on top of them."""

from __future__ import annotations

import csv
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from structlab import data
from structlab.audiopairs import fingerprint as fp
from structlab.audiopairs.audio import load_audio
from structlab.audiopairs.cleaning import CleaningConfig, clean, licence_allowed
from structlab.audiopairs.corpus import Corpus
from structlab.audiopairs.dedup import deduplicate, same_audio
from structlab.audiopairs.export import export, validate_manifest
from structlab.audiopairs.importing import import_folder
from structlab.audiopairs.splits import SplitConfig, make_splits, splits_csv
from structlab.cli import main

# The shared corpus's README, "Known quirks": identical files, and identical decoded audio in different files.
SAME_BYTES = {
    ("clips/openttd-opensfx/52_wind.flac", "clips/openttd-opensfx/57_heavy-wind.flac"),
    ("clips/lugaru-data/RabbitChitter.ogg", "clips/lugaru-data/RabbitChitter2.ogg"),
    ("clips/lincity-ng-data/CoalMine2.wav", "clips/lincity-ng-data/Tip2.wav"),
    ("clips/lincity-ng-data/Harbor3.wav", "clips/lincity-ng-data/Water2.wav"),
    ("clips/lincity-ng-data/PowerSolar1.wav", "clips/lincity-ng-data/WindMillHTech1.wav"),
}
SAME_AUDIO = {
    ("clips/tuxpaint-stamps-default/animals_mammals_badger.ogg",
     "clips/tuxpaint-stamps-default/animals_mammals_rodents_beaver.ogg"),
    ("clips/tuxpaint-stamps-default/animals_mammals_bovines_mountaingoat.ogg",
     "clips/tuxpaint-stamps-default/animals_mammals_bovines_ram.ogg"),
}


@pytest.fixture(scope="module")
def root() -> Path:
    found = data.find("audio")
    if found is None:
        pytest.skip("shared audio corpus not found (set STRUCTLAB_DATA to a folder holding audio/)")
    return found.path


@pytest.fixture(scope="module")
def manifest(root) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def imported(root):
    """The whole shared corpus, imported, decoded and de-duplicated once for this module."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(Path(tmp) / "shared.db")
        import_folder(corpus, root, progress=False)
        corpus.analyse(workers=2, progress=False)
        report = deduplicate(corpus, progress=False)
        yield corpus, report
        corpus.close()


@pytest.fixture
def corpus(imported) -> Corpus:
    return imported[0]


def path_of(corpus: Corpus) -> dict[int, str]:
    return {r["id"]: r["path"] for r in corpus.sounds()}


def test_import_records_every_file_and_labelled_pair(corpus, manifest):
    labelled = [r for r in manifest if r["pair_kind"] != "none"]
    counts = corpus.counts()
    assert counts["sounds"] == counts["files"] == counts["analysed"] == len(manifest)
    assert counts["links"] == len(labelled)
    assert counts["pairs"] == len({(r["modifier"], r["noun"], r["pair_kind"]) for r in labelled})
    assert counts["undecodable"] == 0
    stored = {r["path"]: r["sha256"] for r in corpus.sounds()}
    assert stored == {r["path"]: r["sha256"] for r in manifest}
    assert corpus.validate().ok


def test_decoded_durations_match_the_manifest(corpus, manifest):
    expected = {r["path"]: float(r["duration_s"]) for r in manifest}
    got = {r["path"]: r["decoded_duration"] for r in corpus.sounds()}
    assert max(abs(got[p] - expected[p]) for p in expected) < 0.002


def test_dedup_finds_exactly_the_known_duplicates_and_keeps_differently_labelled_ones_as_related(imported,
                                                                                                  manifest):
    corpus, report = imported
    # Same bytes, independently: equal SHA-256 in the manifest.
    by_hash = defaultdict(list)
    for r in manifest:
        by_hash[r["sha256"]].append(r["path"])
    assert {tuple(sorted(g)) for g in by_hash.values() if len(g) > 1} == SAME_BYTES
    label = {r["path"]: r["label"] for r in manifest}
    name = path_of(corpus)
    found = {tuple(sorted((name[g.keep], name[c]))) for g in report.groups if g.level != "freesound-id"
             for c in g.copies}
    related = {tuple(sorted((name[r.a], name[r.b]))) for r in report.related}
    # Loudness (and every other label) is kept: only files with equal labels are duplicates.
    same_label = {p for p in SAME_BYTES | SAME_AUDIO if label[p[0]] == label[p[1]]}
    assert found == same_label == {("clips/lugaru-data/RabbitChitter.ogg", "clips/lugaru-data/RabbitChitter2.ogg")}
    assert related == (SAME_BYTES | SAME_AUDIO) - same_label  # no distinct clips (goat and ram, bus +- horn)
    stored = {tuple(sorted((name[r["a"]], name[r["b"]]))) for r in corpus.query("SELECT a, b FROM related")}
    assert stored == related
    marked = {name[r["id"]] for r in corpus.sounds("duplicate_of IS NOT NULL")}
    assert marked == {b for _, b in same_label}


def test_fingerprint_round_trips_through_bytes(root):
    print_ = fp.fingerprint(load_audio(root / "clips/lugaru-data/RabbitChitter.ogg", sr=fp.SAMPLE_RATE))
    back = fp.Fingerprint.from_bytes(print_.to_bytes())
    assert np.array_equal(back.bits, print_.bits) and np.array_equal(back.strong, print_.strong)
    assert np.array_equal(back.valid, print_.valid) and back.duration == print_.duration


def _reencode(path: Path, tmp: Path, fmt: str, gain: float) -> np.ndarray:
    import soundfile

    samples, sr = soundfile.read(path, dtype="float32")
    out = tmp / f"copy.{fmt.lower()}"
    subtype = {"OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt]
    soundfile.write(out, samples * gain, sr, format=fmt, subtype=subtype, compression_level=0.5)
    return load_audio(out, sr=fp.SAMPLE_RATE)


@pytest.mark.parametrize(
    "clip",
    [
        "clips/lincity-ng-data/Harbor3.wav",  # an ambience
        "clips/wesnoth-1.16-data/orc-die-1.ogg",  # a voice
        "clips/sonic-pi-samples/bd_zum.flac",  # a drum
        "clips/openttd-opensfx/26_old-bus-starting-with-horn.flac",
    ],
)
@pytest.mark.parametrize("fmt, gain", [("OGG", 0.7), ("MP3", 0.9)])
def test_fingerprint_matches_reencoded_copies_with_a_gain_change(root, tmp_path, clip, fmt, gain):
    original = load_audio(root / clip, sr=fp.SAMPLE_RATE)
    copy = _reencode(root / clip, tmp_path, fmt, gain)
    print_ = fp.fingerprint(original)
    match = fp.compare(print_, fp.fingerprint(copy))
    if print_.valid.sum() >= 8:  # a clip of a few frames (bd_zum: 0.13 s) is verified on its audio alone
        assert match.ber < 0.1
    ok, why = same_audio(original, copy)
    assert ok, why


@pytest.mark.parametrize(
    "a, b",
    [
        ("clips/tuxpaint-stamps-default/animals_mammals_bovines_goat.ogg",
         "clips/tuxpaint-stamps-default/animals_mammals_bovines_ram.ogg"),
        ("clips/openttd-opensfx/25_old-bus-starting-and-pulling-away.flac",
         "clips/openttd-opensfx/26_old-bus-starting-with-horn.flac"),
        ("clips/wesnoth-1.16-data/throw-3.wav", "clips/wesnoth-1.16-data/throw-4.wav"),
        ("clips/scorched3d-data/misc_beep.wav", "clips/scorched3d-data/misc_beep2.wav"),
    ],
)
def test_distinct_clips_with_close_fingerprints_are_not_the_same_audio(root, a, b):
    xa, xb = (load_audio(root / p, sr=fp.SAMPLE_RATE) for p in (a, b))
    match = fp.compare(fp.fingerprint(xa), fp.fingerprint(xb))
    assert match.ber < 0.25  # close enough to be a fingerprint candidate ...
    assert not same_audio(xa, xb)[0]  # ... but verification on the audio tells them apart


def expected_funnel(manifest, config: CleaningConfig) -> list[tuple[str, int, int, int]]:
    """The funnel counted from the manifest alone (each labelled file carries one pair)."""
    label = {r["path"]: r["label"] for r in manifest}
    copies = {b for a, b in SAME_BYTES | SAME_AUDIO if label[a] == label[b]}  # others are related, kept
    live = [r for r in manifest if r["pair_kind"] != "none"]
    out = []

    def record(step):
        pairs = {(r["modifier"], r["noun"]) for r in live}
        out.append((step, len(pairs), len(live), len(live)))

    record("found")
    record("tag match")
    record("has file")
    record("decodes")
    live = [r for r in live if config.min_duration <= float(r["duration_s"]) <= config.max_duration]
    record("duration")
    live = [r for r in live if licence_allowed(r["license"], config.licenses)]
    record("licence")
    live = [r for r in live if r["path"] not in copies]
    record("not a duplicate")
    for step, key, cap in (
        ("per uploader", lambda r: (r["modifier"], r["noun"], r["uploader"] or r["source"]), config.per_uploader),
        ("max files", lambda r: (r["modifier"], r["noun"]), config.max_files),
    ):
        seen = Counter()
        kept = []
        for r in live:  # which ones are kept does not change the counts
            seen[key(r)] += 1
            if seen[key(r)] <= cap:
                kept.append(r)
        live = kept
        record(step)
    size = Counter((r["modifier"], r["noun"]) for r in live)
    live = [r for r in live if size[(r["modifier"], r["noun"])] >= config.min_files]
    record("min files")
    return out


def test_cleaning_funnel_matches_an_independent_count(corpus, manifest):
    config = CleaningConfig(
        rule="both-tags", min_duration=0.5123, max_duration=19.87,
        licenses=("CC0-1.0", "CC-BY-3.0", "GPL-2.0-or-later"), per_uploader=2, max_files=3, min_files=2,
    )
    durations = [float(r["duration_s"]) for r in manifest]
    assert min(abs(d - b) for d in durations for b in (0.5123, 19.87)) > 0.001  # no clip on a bound
    funnel = clean(corpus, config)
    assert [(f.step, f.pairs, f.files, f.links) for f in funnel] == expected_funnel(manifest, config)
    kept = corpus.query("SELECT COUNT(*) AS n FROM links WHERE kept = 1")[0]["n"]
    assert kept == funnel[-1].links


def test_splits_are_reproducible_and_keep_uploaders_and_recordings_apart(corpus):
    clean(corpus, CleaningConfig())
    make_splits(corpus, SplitConfig(seed=7))
    first = splits_csv(corpus)
    make_splits(corpus, SplitConfig(seed=7))
    assert splits_csv(corpus) == first  # byte for byte
    make_splits(corpus, SplitConfig(seed=8))
    assert splits_csv(corpus) != first
    make_splits(corpus, SplitConfig(seed=7))
    rows = corpus.query("SELECT s.*, p.split FROM splits p JOIN sounds s ON s.id = p.sound_id")
    assert {r["id"] for r in rows} == {r["id"] for r in corpus.usable_sounds()}
    splits_of = defaultdict(set)
    for r in rows:
        for who in filter(None, (r["uploader"] or r["source"] or "").split(";")):
            splits_of[f"uploader:{who.strip()}"].add(r["split"])
        for origin in filter(None, r["origin_ids"].split(";")):
            splits_of[f"recording:{origin}"].add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values()), {k: v for k, v in splits_of.items() if len(v) > 1}
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_splits_do_not_depend_on_the_order_files_were_imported(root, manifest, tmp_path):
    subset = [r for r in manifest if r["pair_kind"] != "none"][:60]
    assignments = []
    for name, rows in (("forward", subset), ("backward", subset[::-1])):
        with open(tmp_path / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(manifest[0]))
            writer.writeheader()
            writer.writerows(rows)
        with Corpus(tmp_path / f"{name}.db") as c:
            import_folder(c, root, tmp_path / f"{name}.csv", verify=False, progress=False)
            make_splits(c, SplitConfig(seed=3, val=0.2, test=0.3))
            assignments.append({r["path"]: r["split"] for r in c.query(
                "SELECT s.path, p.split FROM splits p JOIN sounds s ON s.id = p.sound_id")})
    assert assignments[0] == assignments[1]


def test_export_writes_licence_and_attribution_and_validate_catches_changes(corpus, tmp_path):
    clean(corpus, CleaningConfig(licenses=("CC-BY-3.0", "CC0-1.0")))
    report = export(corpus, tmp_path / "out", copy=True)
    with open(tmp_path / "out" / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == report.rows > 0 and {r["license"] for r in rows} <= {"CC-BY-3.0", "CC0-1.0"}
    assert all(r["attribution"] for r in rows)
    credits = (tmp_path / "out" / "ATTRIBUTION.txt").read_text()
    assert all(r["attribution"] in credits for r in rows)
    assert validate_manifest(tmp_path / "out" / "manifest.csv") == (len(rows), [], [])
    victim = tmp_path / "out" / rows[0]["path"]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    (tmp_path / "out" / rows[1]["path"]).unlink()
    checked, missing, mismatched = validate_manifest(tmp_path / "out" / "manifest.csv")
    assert (missing, mismatched) == ([rows[1]["path"]], [rows[0]["path"]])


def test_command_line_runs_the_corpus_steps(corpus, tmp_path, capsys):
    assert main(["audiopairs", "vocab", "dogs bark", "dog"]) == 0
    out = capsys.readouterr().out
    assert "vnp  barking dog" in out and "'dog': one word" in out
    (tmp_path / "pairs.txt").write_text("heavy rain\ndogs bark\n")
    assert main(["audiopairs", "plan", "--pairs", str(tmp_path / "pairs.txt"), "--max-files", "300"]) == 0
    assert "search requests: at most 4 (2 page(s) per pair)" in capsys.readouterr().out
    db = str(corpus.path)
    assert main(["--quiet", "audiopairs", "split", db, "--out", str(tmp_path / "s.csv")]) == 0
    assert (tmp_path / "s.csv").read_text() == splits_csv(corpus)
    assert main(["audiopairs", "validate", db]) == 0
    assert main(["audiopairs", "validate", str(tmp_path / "missing.db")]) == 2  # a one-line error
    assert "no such corpus database" in capsys.readouterr().err


def test_undecodable_file_gives_one_line_naming_it(tmp_path):
    from structlab.audiopairs.audio import DecodeError

    bad = tmp_path / "broken.ogg"
    bad.write_bytes(b"OggS" + b"\0" * 200)
    with pytest.raises(DecodeError) as err:
        load_audio(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_export_fills_freesound_id_and_url_of_imported_clips(corpus, manifest, tmp_path):
    clean(corpus, CleaningConfig())
    export(corpus, tmp_path / "out")
    with open(tmp_path / "out" / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    ids = {r["path"]: r["freesound_id"] for r in manifest}
    by_path = {str(Path(r["path"]).relative_to(corpus.query("SELECT root FROM imports")[0]["root"])): r for r in rows}
    with_ids = [p for p in by_path if ids[p]]
    assert with_ids  # the shared data credits freesound recordings for many clips
    for p in with_ids:
        expected = ";".join(sorted(ids[p].split(";"), key=int))
        assert by_path[p]["freesound_id"] == expected
        assert by_path[p]["url"] == f"https://freesound.org/s/{expected.split(';')[0]}/"
