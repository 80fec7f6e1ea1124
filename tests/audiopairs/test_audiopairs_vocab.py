"""Pair vocabulary: parse_pair's normalisation, ANP/VNP readings, rejections, pair lists, tag matching."""

from __future__ import annotations

import csv

import pytest

from structlab import data
from structlab.audiopairs.vocab import Pair, build_vocabulary, load_pairs, parse_pair, save_pairs, tag_matches


@pytest.mark.parametrize(
    "text, expected",
    [
        ("dogs bark", ("barking", "dog", "vnp")),  # dog is also a verb: the plural subject + base verb wins
        ("dog barks", ("barking", "dog", "vnp")),
        ("dog barked", ("barking", "dog", "vnp")),
        ("Dog Barking", ("barking", "dog", "vnp")),
        ("barking dogs", ("barking", "dog", "vnp")),
        ("dog_barking", ("barking", "dog", "vnp")),
        ("DogBarking", ("barking", "dog", "vnp")),
        ("dogbarking", ("barking", "dog", "vnp")),  # a joined tag
        ("running water", ("running", "water", "vnp")),  # -ing form: vnp although 'running' is also a noun
        ("water running", ("running", "water", "vnp")),
        ("dying orc", ("dying", "orc", "vnp")),  # -ing form: vnp although 'dying' is also an adjective
        ("babies crying", ("crying", "baby", "vnp")),
        ("door slams", ("slamming", "door", "vnp")),
        ("heavy rain", ("heavy", "rain", "anp")),
        ("heavy-rain", ("heavy", "rain", "anp")),
        ("HeavyRain", ("heavy", "rain", "anp")),
        ("rain heavy", ("heavy", "rain", "anp")),  # tags are unordered
        ("closed door", ("closed", "door", "anp")),  # an -ed participle before its noun is an adjective
        ("filtered snare", ("filtered", "snare", "anp")),
        ("tropical monkeys", ("tropical", "monkey", "anp")),
        ("closed hi-hat", ("closed", "hi-hat", "anp")),  # a hyphenated compound noun stays whole
        ("extra-large explosion", ("extra-large", "explosion", "anp")),
        ("solar power station", ("solar", "power station", "anp")),
        ("car engine starting", ("starting", "car engine", "vnp")),
        ("the barking dog", ("barking", "dog", "vnp")),
    ],
)
def test_parse_pair_normalises_to_one_canonical_pair(text, expected):
    pair = parse_pair(text)
    assert (pair.modifier, pair.noun, pair.kind) == expected
    assert pair.text == f"{expected[0]} {expected[1]}"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("dog", "one word"),
        ("footsteps", "one word"),
        ("dogs and cats", "function word 'and'"),
        ("kick 01", "number"),
        ("dog bark", "noun compound"),  # a dog's bark: a compound noun, no agreement for a verb reading
        ("lion roar", "noun compound"),
        ("big old red noisy truck", "5 words"),
        ("", "no words"),
    ],
)
def test_parse_pair_rejects_non_pairs_with_the_reason(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_pair(text)


def test_parse_pair_rejects_non_strings():
    with pytest.raises(TypeError, match="text="):
        parse_pair(42)


def test_pair_validates_its_fields():
    with pytest.raises(ValueError, match="kind="):
        Pair("heavy", "rain", "adj")
    with pytest.raises(ValueError, match="noun="):
        Pair("heavy", "Rain", "anp")


def test_parse_pair_agrees_with_the_hand_labelled_pairs_of_the_shared_corpus():
    found = data.find("audio")
    if found is None:
        pytest.skip("shared audio corpus not found (set STRUCTLAB_DATA to a folder holding audio/)")
    with open(found.path / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["pair_kind"] != "none"]
    labelled = {(r["modifier"], r["noun"], r["pair_kind"]) for r in rows}
    disagree = []
    for modifier, noun, kind in sorted(labelled):
        pair = parse_pair(f"{modifier} {noun}")
        if (pair.modifier, pair.noun, pair.kind) != (modifier, noun, kind):
            disagree.append((modifier, noun, kind, pair.text, pair.kind))
    # The one known difference: the manifest keeps the plural "wheels"; parse_pair singularises nouns.
    assert disagree == [("touching", "wheels", "vnp", "touching wheel", "vnp")]


def test_vocabulary_merges_spellings_and_lists_rejections():
    vocab = build_vocabulary(["dog barking", "barking dogs", "heavy rain", "dog"])
    assert [p.text for p in vocab.pairs] == ["barking dog", "heavy rain"]
    assert vocab.sources[parse_pair("barking dog")] == ["dog barking", "barking dogs"]
    assert vocab.rejected == [("dog", "one word")]


@pytest.mark.parametrize("name", ["pairs.txt", "pairs.csv"])
def test_pair_lists_round_trip(tmp_path, name):
    pairs = [parse_pair(t) for t in ("heavy rain", "dogs bark", "closed hi-hat")]
    save_pairs(pairs, tmp_path / name)
    assert load_pairs(tmp_path / name) == pairs


def test_load_pairs_names_the_entries_that_are_not_pairs(tmp_path):
    (tmp_path / "p.txt").write_text("heavy rain\n# a comment\ndog\n")
    with pytest.raises(ValueError, match="'dog' \\(one word\\)"):
        load_pairs(tmp_path / "p.txt")


def test_tag_matches_finds_both_tags_and_phrase_in_any_form():
    dog = parse_pair("barking dog")
    assert tag_matches(dog, ["dogs", "barks", "night"]) == {"both-tags"}
    assert tag_matches(dog, ["dog-barking"]) == {"phrase"}
    assert tag_matches(dog, ["dog", "barked", "barking-dog"]) == {"both-tags", "phrase"}
    assert tag_matches(dog, ["dog", "cat"]) == set()
    station = parse_pair("solar power station")
    assert tag_matches(station, ["solar", "power", "station"]) == {"both-tags"}
    assert tag_matches(station, ["solar", "power-station"]) == {"both-tags"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train slowing down", ("slowing down", "train", "vnp")),  # a phrasal verb keeps its particle
        ("A Tree Falling Down", ("falling down", "tree", "vnp")),
        ("car passing by", ("passing by", "car", "vnp")),
        ("high-pitched honk", ("high-pitched", "honk", "anp")),  # a hyphenated adjective is an adjective
        ("buddhist gong", ("buddhist", "gong", "anp")),
        ("Light engine (high frequency)", ("light", "engine", "anp")),  # a bracketed qualifier is dropped
        ("Roaring cats (lions, tigers)", ("roaring", "cat", "vnp")),
        ("long wail", ("long", "wail", "anp")),
        ("Rustling leaves", ("rustling", "leaf", "vnp")),
        ("Circular saw crosscutting", ("crosscutting", "circular saw", "vnp")),
    ],
)
def test_parse_pair_reads_real_tags_from_issue_17(text, expected):
    pair = parse_pair(text)
    assert (pair.modifier, pair.noun, pair.kind) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("metal hit", "noun compound"),  # compounds are rejected, as the docs say
        ("hand clap", "noun compound"),
        ("bird chirp", "noun compound"),
        ("level crossing", "noun compound"),
        ("dig sound (choppy material)", "noun compound 'dig sound'"),
        ("Crying, sobbing", "several phrases"),
        ("witches' laugh", "possessive"),
        ("staff hitting body", "clause"),
        ("sword against staff", "function word 'against'"),
    ],
)
def test_parse_pair_rejects_compounds_lists_and_clauses_from_real_tags(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_pair(text)


def test_parse_pair_agrees_with_the_hand_labelled_tag_phrases():
    """The labelled set of 435 real tag phrases (tests/audiopairs/data/pair_phrases.csv), an independent
    judgement written before the parser was tuned; benchmarks/audiopairs_parser.py reports it in full."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "audiopairs_parser.py"
    spec = importlib.util.spec_from_file_location("audiopairs_parser", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.load_set()
    assert len(rows) >= 300 and {r["kind"] for r in rows} == {"anp", "vnp", "reject"}
    result = bench.evaluate(rows, bench.lexicon_parser)
    assert bench.rate(result["overall"]) >= 0.98, result["wrong"]  # issue 17's goal
    assert bench.rate(result["overall"]) > bench.rate(bench.evaluate(rows, bench.baseline_parser)["overall"]) + 0.3


@pytest.mark.parametrize("text", ["foot steps", "rain drops", "door bell", "heart beat", "fire works", "type writer"])
def test_parse_pair_rejects_spaced_closed_compounds_whose_second_word_is_also_a_verb(text):
    # "foot steps" could be a subject and its verb (as "dog barks"), but "footstep" is one noun in the
    # lexicon: the tag is that noun spaced out, a compound.
    with pytest.raises(ValueError, match="noun compound"):
        parse_pair(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("black bird", ("black", "bird", "anp")),  # "blackbird" is a noun, but "black" is mostly an adjective
        ("green house", ("green", "house", "anp")),
        ("feet stepping", ("stepping", "foot", "vnp")),  # an -ing form is a verb, spaced compound or not
    ],
)
def test_spaced_closed_compounds_keep_their_adjective_and_ing_readings(text, expected):
    pair = parse_pair(text)
    assert (pair.modifier, pair.noun, pair.kind) == expected


def test_closed_compound_joins_nouns_only_into_listed_nouns():
    from structlab.audiopairs.lexicon import closed_compound

    assert closed_compound("foot", "steps") == "footstep"  # the plural's singular joins
    assert closed_compound("gun", "shot") == "gunshot"
    assert closed_compound("dog", "bark") is None  # "dogbark" is no word
    assert closed_compound("bar", "king") is None  # "barking" is a verb form, not a compound noun
    assert closed_compound("a", "stir") is None  # parts under three letters join by accident
