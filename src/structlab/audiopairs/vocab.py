"""The pair vocabulary: adjective-noun (ANP, "heavy rain") and verb-noun (VNP, "barking dog") pairs.

``parse_pair`` turns the text of a tag or a list entry into one canonical :class:`Pair`:

- case, hyphens, underscores, CamelCase and joined tags ("HeavyRain", "heavy_rain", "dogbarking");
- plural nouns to the singular ("dogs" -> dog), verb forms to the -ing modifier (barks, barked, bark
  -> barking), word order ("dog barking" = "barking dog");
- ANP or VNP. As in AudioPairBank, a verb's -ing form is a verb-noun modifier ("running water" is a
  VNP) even where the dictionary also lists it as an adjective ("dying orc"), while a participle in -ed
  before its noun is an adjective ("closed door", "filtered snare"); after its noun it is the verb of
  a subject ("dog barked" -> barking dog). Other
  ambiguities ("dogs bark": dog and bark are both nouns and verbs) are settled by how common each reading
  is (:func:`structlab.audiopairs.lexicon.verb_share`) and by plural, agreement and word-order cues;
- text that is not a pair (one word, a noun compound such as "dog bark" or a closed compound written
  spaced, "gun shot" = "gunshot", a phrase with function words, numbers) raises ``ValueError`` with the
  reason.

Scoring: every reading of the words is a candidate whose score is the product of how common each word's
reading is and a cue factor (``CUES``); the best candidate wins, and if that is not a pair the text is
rejected. The cue factors are ratios of plausibility, chosen so that agreement beats frequency ("dogs
bark" is a sentence, "dog bark" a compound noun) and word order breaks ties.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from structlab.atomic import atomic_open
from structlab.audiopairs import lexicon

Kind = Literal["anp", "vnp"]
KINDS = ("anp", "vnp")

# Cue factors (multiplied into a reading's score).
CUES = {
    "adjective after noun": 0.3,  # "rain heavy": tags are often unordered, but adjectives precede nouns
    "subject-verb agreement": 1.0,  # "dogs bark", "dog barks", "dog barked"
    "verb before object": 0.05,  # "slam door" -> slamming door; rare in tags, where "train whistle" is a noun
    "3rd person before noun": 0.05,  # "barks dog"
    "gerund as noun": 0.6,  # "electric sparking", "synthetic singing": an -ing form as the head noun
    "noun compound": 0.3,  # "dog bark", "lion roar": not a pair
    "plural noun modifier": 0.1,  # "dogs bark" as a compound is unlikely
    "verb as noun": 0.2,  # "electronic chime": a verb's base form as a (converted) noun
    "longer noun": 0.5,  # per extra word of the noun: "old + man hit cry" is no pair
    # "gun shot", "rain drops": two nouns that the lexicon lists joined as one noun ("gunshot") are that
    # noun spaced out, not a subject and its verb; an adjective reading is left as it is ("black bird").
    "spaced closed compound": 0.05,
}
# A noun of several words ("circular saw") has a noun as its head, whatever else the head can be.
MIN_COMPOUND_HEAD = 0.5
# The best pair reading must reach this score; below it no reading is plausible ("dub snare": "dub" is
# only a verb in the lexicon, and "dubbing snare" needs the rare verb + object order).
MIN_SCORE = 0.05

FUNCTION_WORDS = frozenset(
    "and or but nor with without of in on at to from by for into onto over under near is are was were be "
    "been being am has have had do does did this that these those my your his her its our their some any "
    "no not very against through across along behind between during inside outside within upon via per "
    "& +".split()
)
ARTICLES = frozenset({"a", "an", "the"})
# Particles of phrasal verbs, kept with their verb as the modifier ("train slowing down").
PARTICLES = frozenset("down up off on out away by in over back around along".split())
MAX_WORDS = 4  # a modifier and a noun of up to three words ("solar power station")


@dataclass(frozen=True, order=True)
class Pair:
    """One adjective-noun or verb-noun pair, in canonical form (lower case, singular noun, -ing verb).

    ``modifier`` is the adjective or the verb's -ing form; ``noun`` the singular noun (possibly a
    compound, "power station"); ``kind`` "anp" or "vnp". ``why`` says how the text was read (not part of
    equality).
    """

    modifier: str
    noun: str
    kind: Kind
    why: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: expected one of {KINDS}")
        for name in ("modifier", "noun"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or value != value.strip().lower():
                raise ValueError(f"{name}={value!r}: expected a non-empty lower-case word")

    @property
    def text(self) -> str:
        """The canonical text, modifier first ("barking dog")."""
        return f"{self.modifier} {self.noun}"

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class _Reading:
    score: float
    kind: Kind | Literal["compound"]
    modifier: str
    noun: str
    why: str


def _tokens(text: str) -> list[str]:
    """Split text into words: CamelCase, underscores, slashes and plus signs separate; hyphens are kept;
    a bracketed qualifier is dropped ("engine (low frequency)"). Raises ``ValueError`` for several
    phrases separated by commas or semicolons ("crying, sobbing")."""
    text = unicodedata.normalize("NFKC", text).strip().strip("\"`")
    text = re.sub(r"\([^)]*\)|\[[^\]]*\]", " ", text)
    if len([part for part in re.split(r"[,;]", text) if part.strip()]) > 1:
        raise ValueError(f"text={text.strip()!r}: not a pair: several phrases separated by a comma")
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)
    return [t for t in re.split(r"[\s_+/,;.]+", text.lower()) if t]


def _split_joined(token: str) -> list[str] | None:
    """Split a joined tag ("dogbarking") into the two known words whose rarer one is most common."""
    best, best_freq = None, 0.0
    for i in range(3, len(token) - 2):
        a, b = token[:i], token[i:]
        wa, wb = lexicon.word(a), lexicon.word(b)
        if not (wa.known and wb.known):
            continue
        f = min(lexicon.frequency(a), lexicon.frequency(b))
        if f > best_freq:
            best, best_freq = [a, b], f
    return best


def _noun_share(w: lexicon.Word, adjective_discount: bool = False) -> float:
    """P(noun reading) against a verb reading; with ``adjective_discount``, also against an adjective
    reading (a word that is mostly an adjective would rather be the modifier: "rain heavy" is not the
    compound "rain heavy")."""
    p = lexicon.noun_share(w.form)
    return p * (1.0 - lexicon.adjective_share(w.form)) if adjective_discount and "ADJ" in w.lemmas else p


def _adjective_share(w: lexicon.Word) -> float:
    """P(adjective reading) of a modifier: from use (:func:`lexicon.adjective_share`); a hyphenated word
    the lexicon does not know is an adjective when it ends in a participle or an adjective, or starts
    with an adjective ("high-pitched", "extra-large", "high-tech", "single-lens")."""
    if "-" in w.form and not w.known:
        first, last = w.form.split("-", 1)[0], w.form.rsplit("-", 1)[-1]
        end = lexicon.word(last)
        if "ADJ" in lexicon.word(first).lemmas or "ADJ" in end.lemmas or end.verb_tags() & {"VBN", "VBD"}:
            return 1.0
    return lexicon.adjective_share(w.form)


def _singular(words: list[str]) -> str:
    """A noun (compound) with its head in the singular."""
    head = lexicon.word(words[-1])
    return " ".join([*words[:-1], head.lemmas.get("NOUN", head.form)])


def _readings(mod_words: list[str], noun_words: list[str], modifier_first: bool) -> list[_Reading]:
    """Every reading of ``mod_words`` (one word, possibly hyphenated) as the modifier of ``noun_words``."""
    (m_form,) = mod_words
    m = lexicon.word(m_form)
    head = lexicon.word(noun_words[-1])
    # The noun of a noun-verb reading is a subject: an adjective there is unlikely ("long wail").
    p_noun = _noun_share(head, adjective_discount=not modifier_first)
    if len(noun_words) > 1 and "NOUN" in head.lemmas:
        p_noun = max(p_noun, MIN_COMPOUND_HEAD)
    gerund = False
    if p_noun == 0.0 and modifier_first and m_form != noun_words[-1] and len(noun_words) == 1:
        tags = head.verb_tags()
        if tags == {"VBG"}:
            p_noun, gerund = CUES["gerund as noun"], True  # "electric sparking"
        elif tags & {"VB", "VBP"}:
            p_noun, gerund = CUES["verb as noun"], True  # "electronic chime"
    if p_noun == 0.0:
        return []
    if len(noun_words) > 2 and any(lexicon.verb_share(w) > 0.2 for w in noun_words[:-1]):
        return []  # "old + man hit cry": a noun of three words is no clause of its own
    p_noun *= CUES["longer noun"] ** (len(noun_words) - 1)
    noun = _singular(noun_words)
    plural = head.is_plural_noun
    # The two adjacent words, in text order, written together as one noun ("gun shot" -> "gunshot").
    closed = lexicon.closed_compound(*((m_form, noun_words[0]) if modifier_first else (noun_words[-1], m_form)))
    out: list[_Reading] = []
    verb_tags = m.verb_tags()
    is_ing = "VBG" in verb_tags
    p_adj = _adjective_share(m)
    # Adjective readings. The -ing rule: a verb's -ing form is never an ANP modifier. After an adjective
    # the head is a noun whatever else it can be ("long wail": not the verb "wail").
    if p_adj > 0 and not is_ing:
        if modifier_first:
            p_head = p_noun if gerund else CUES["longer noun"] ** (len(noun_words) - 1)
            if gerund and head.verb_tags() == {"VBG"}:
                p_head = CUES["longer noun"] ** (len(noun_words) - 1)
            out.append(_Reading(p_adj * p_head, "anp", m_form, noun, "adjective + noun"))
        else:
            out.append(_Reading(p_adj * p_noun * CUES["adjective after noun"], "anp", m_form, noun,
                                "adjective + noun"))
    if modifier_first and verb_tags & {"VBD", "VBN"} and not is_ing:
        if "ADJ" not in m.lemmas:  # "filtered snare": a participle before its noun is an adjective
            out.append(_Reading(p_noun, "anp", m_form, noun, "participle (as adjective) + noun"))
        return out
    # After a noun, an -ing form that is a count noun of its own heads a compound ("level crossing").
    nominal_ing = is_ing and not modifier_first and lexicon.is_count_noun(m_form)
    if "VERB" in m.lemmas and not gerund and not nominal_ing:
        p_verb = 1.0 if is_ing else lexicon.verb_share(m_form)
        cue, why = None, ""
        if is_ing:
            cue, why = 1.0, "verb -ing form + noun"
        elif not modifier_first:  # noun then verb: a subject and its verb, which must agree
            # A form that is itself some verb's base form ("hit", "saw") is not read as a past tense.
            past = bool(verb_tags & {"VBD", "VBN"}) and not lexicon.is_verb_lemma(m_form)
            if past or (plural and verb_tags & {"VB", "VBP"}) or (not plural and "VBZ" in verb_tags):
                cue, why = CUES["subject-verb agreement"], "noun + verb (subject and verb)"
            # else: "dog bark", a singular noun and a base form, is a compound, not a subject and its verb
        elif verb_tags & {"VB", "VBP"}:
            cue, why = CUES["verb before object"], "verb + object"
        else:
            cue, why = CUES["3rd person before noun"], "3rd-person verb + noun"
        if cue is not None:
            if closed is not None:
                cue, why = cue * CUES["spaced closed compound"], f"{why}, though spaced {closed!r}"
            ing = m_form if is_ing else lexicon.ing_form(m.lemmas["VERB"])
            out.append(_Reading(p_verb * p_noun * cue, "vnp", ing, noun, why))
    # The competing non-pair: a noun compound ("dog bark"), as likely as the first word is a noun. After a
    # noun, an -ing form that is mostly a noun itself ("level crossing", "field recording") can be its head.
    first = m if modifier_first else head
    if "NOUN" in first.lemmas and (not is_ing or not modifier_first):
        second = head if modifier_first else m
        p_first = _noun_share(first) * (1.0 - _adjective_share(first))
        p_second = 1.0 if nominal_ing else _noun_share(second, adjective_discount=True)
        p = p_first * p_second * CUES["noun compound"] * CUES["longer noun"] ** (len(noun_words) - 1)
        if first.is_plural_noun:
            p *= CUES["plural noun modifier"]
        words = [m_form, *noun_words] if modifier_first else [*noun_words, m_form]
        out.append(_Reading(p, "compound", "", " ".join(words), "noun + noun"))
    return out


def _phrasal(tokens: list[str]) -> tuple[list[str], str] | None:
    """A phrasal verb with its particle ("slowing down") at the end or the start: (tokens without the
    particle, particle), or None."""
    for verb_at, particle_at in ((-2, -1), (0, 1)):
        if len(tokens) >= 3 and tokens[particle_at] in PARTICLES and "VBG" in lexicon.word(tokens[verb_at]).verb_tags():
            rest = tokens[:particle_at] + tokens[particle_at + 1 :] if particle_at > 0 else tokens[:-1]
            if particle_at == -1:
                rest = tokens[:-1]
            return rest, tokens[particle_at]
    return None


def parse_pair(text: str) -> Pair:
    """Parse ``text`` ("Dogs bark", "heavy-rain", "dog_barking") into its canonical :class:`Pair`.

    Raises ``TypeError`` if ``text`` is not a string and ``ValueError`` (with the reason) if it is not an
    adjective-noun or verb-noun pair.
    """
    if not isinstance(text, str):
        raise TypeError(f"text={text!r}: expected a str")
    tokens = _tokens(text)
    while tokens and tokens[0] in ARTICLES:
        tokens = tokens[1:]
    if not tokens:
        raise ValueError(f"text={text!r}: not a pair: no words")
    if any(re.search(r"\d", t) for t in tokens):
        raise ValueError(f"text={text!r}: not a pair: contains a number")
    if any("'" in t for t in tokens):
        raise ValueError(f"text={text!r}: not a pair: a possessive ({next(t for t in tokens if chr(39) in t)!r})")
    phrasal = _phrasal(tokens)
    if phrasal is not None:
        return _parse_phrasal(text, *phrasal)
    bad = [t for t in tokens if t in FUNCTION_WORDS or t in ARTICLES]
    if bad:
        raise ValueError(f"text={text!r}: not a pair: contains the function word {bad[0]!r}")
    if len(tokens) == 1:
        if not lexicon.word(tokens[0]).known:
            tokens = _hyphen_split(tokens[0]) or _split_joined(tokens[0]) or tokens
        if len(tokens) == 1:
            raise ValueError(f"text={text!r}: not a pair: one word")
    if len(tokens) > MAX_WORDS:
        raise ValueError(f"text={text!r}: not a pair: {len(tokens)} words (at most {MAX_WORDS})")
    inner = [t for t in tokens[1:-1] if lexicon.word(t).verb_tags() & {"VBG"}]
    if inner:
        raise ValueError(f"text={text!r}: not a pair: a clause (the verb {inner[0]!r} between nouns)")
    readings: list[_Reading] = []
    readings += _readings(tokens[:1], tokens[1:], modifier_first=True)
    readings += _readings(tokens[-1:], tokens[:-1], modifier_first=False)
    if not readings:
        raise ValueError(f"text={text!r}: not a pair: no reading as modifier + noun")
    best = max(readings, key=lambda r: r.score)
    if best.kind != "compound" and best.score < MIN_SCORE:
        raise ValueError(f"text={text!r}: not a pair: no plausible reading (best: {best.why}, "
                         f"{best.modifier} + {best.noun}, score {best.score:.3g} < {MIN_SCORE})")
    if best.kind == "compound":
        raise ValueError(
            f"text={text!r}: not a pair: reads as the noun compound {best.noun!r} "
            "(write e.g. 'barking dog' or 'dogs barking' for a verb-noun pair)"
        )
    return Pair(best.modifier, best.noun, best.kind, why=f"{best.why} (score {best.score:.3g})")


def _parse_phrasal(text: str, tokens: list[str], particle: str) -> Pair:
    """A verb-noun pair whose verb has a particle ("train slowing down" -> slowing down + train)."""
    try:
        pair = parse_pair(" ".join(tokens))
    except ValueError as err:
        raise ValueError(f"text={text!r}: not a pair: {str(err).split(': not a pair: ', 1)[-1]}") from None
    verb = lexicon.word(pair.modifier).lemmas.get("VERB")
    if pair.kind != "vnp" or verb is None:
        raise ValueError(f"text={text!r}: not a pair: {particle!r} is no particle of a verb here")
    return Pair(f"{pair.modifier} {particle}", pair.noun, "vnp", why=f"phrasal verb; {pair.why}")


def _hyphen_split(token: str) -> list[str] | None:
    """Split a hyphenated tag ("heavy-rain", "dog-barking") unless it is one hyphenated word."""
    parts = [p for p in token.split("-") if p]
    if len(parts) < 2 or lexicon.word(token).known:
        return None
    return parts


def try_parse(text: str) -> Pair | None:
    """:func:`parse_pair`, or None where ``text`` is not a pair."""
    try:
        return parse_pair(text)
    except ValueError:
        return None


# -- pair lists -----------------------------------------------------------------------------------------


@dataclass
class Vocabulary:
    """Parsed pair list: the pairs (in first-seen order, without repeats) and the rejected entries."""

    pairs: list[Pair]
    rejected: list[tuple[str, str]]  # (text, reason)
    sources: dict[Pair, list[str]]  # pair -> the texts that produced it


def build_vocabulary(texts: Iterable[str]) -> Vocabulary:
    """Parse many texts; equal pairs ("dog barking", "barking dogs") are merged."""
    pairs: list[Pair] = []
    sources: dict[Pair, list[str]] = {}
    rejected = []
    for text in texts:
        try:
            pair = parse_pair(text)
        except ValueError as err:
            rejected.append((text, str(err).split(": not a pair: ", 1)[-1]))
            continue
        if pair not in sources:
            pairs.append(pair)
            sources[pair] = []
        sources[pair].append(text)
    return Vocabulary(pairs, rejected, sources)


def read_pair_texts(path: str | Path) -> list[str]:
    """Pair texts from a plain-text file (one a line, ``#`` comments) or a CSV file.

    A CSV file needs a ``pair`` (or ``text``) column, or ``modifier`` and ``noun`` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pair list")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            if columns & {"pair", "text"}:
                key = "pair" if "pair" in columns else "text"
                return [row[key] for row in reader if row[key].strip()]
            if {"modifier", "noun"} <= columns:
                return [f"{row['modifier']} {row['noun']}" for row in reader if row["noun"].strip()]
            raise ValueError(f"{path}: columns {sorted(columns)}: expected 'pair' or 'modifier' and 'noun'")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def load_pairs(path: str | Path) -> list[Pair]:
    """Read and parse a pair list; raises ``ValueError`` listing the entries that are not pairs."""
    vocab = build_vocabulary(read_pair_texts(path))
    if vocab.rejected:
        shown = "; ".join(f"{t!r} ({why})" for t, why in vocab.rejected[:5])
        raise ValueError(f"{path}: {len(vocab.rejected)} entries are not pairs: {shown}")
    return vocab.pairs


def save_pairs(pairs: Iterable[Pair], path: str | Path) -> None:
    """Write pairs to ``path``: CSV (pair, kind, modifier, noun) for ``.csv``, else one pair a line."""
    path = Path(path)
    pairs = list(pairs)
    with atomic_open(path, "w") as handle:
        if path.suffix.lower() == ".csv":
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["pair", "kind", "modifier", "noun"])
            writer.writerows([p.text, p.kind, p.modifier, p.noun] for p in pairs)
        else:
            handle.writelines(f"{p.text}\n" for p in pairs)


# -- tags -----------------------------------------------------------------------------------------------


def tag_matches(pair: Pair, tags: Iterable[str]) -> set[str]:
    """Which tag-match rules ``tags`` satisfy for ``pair``: a subset of {"both-tags", "phrase"}.

    "both-tags": one tag is the modifier (any verb form, for a VNP) and one the noun (singular or plural;
    a compound noun as one joined tag or as all its words). "phrase": one tag is the pair itself, in
    any spelling that parses to it ("barking-dog", "dogs-barking", "barkingdog").
    """
    tags = {t.strip().lower() for t in tags if t and t.strip()}
    found: set[str] = set()
    modifier_ok = noun_ok = False
    noun_words = pair.noun.split()
    joined_noun = {pair.noun.replace(" ", "-"), pair.noun.replace(" ", "")}
    seen_noun_words = set()
    verb = lexicon.word(pair.modifier).lemmas.get("VERB") if pair.kind == "vnp" else None
    for tag in tags:
        w = lexicon.word(tag)
        if tag == pair.modifier or (verb is not None and w.lemmas.get("VERB") == verb):
            modifier_ok = True
        noun_form = w.lemmas.get("NOUN", tag)
        if tag in joined_noun or noun_form in joined_noun or (len(noun_words) == 1 and noun_form == pair.noun):
            noun_ok = True
        if len(noun_words) > 1 and noun_form in noun_words:
            seen_noun_words.add(noun_form)
        if (("-" in tag) or len(tag) > 6) and "phrase" not in found and try_parse(tag) == pair:
            found.add("phrase")
    if len(noun_words) > 1 and seen_noun_words == set(noun_words):
        noun_ok = True
    if modifier_ok and noun_ok:
        found.add("both-tags")
    return found
