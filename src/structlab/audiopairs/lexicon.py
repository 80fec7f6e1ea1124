"""The offline English lexicon behind pair parsing: parts of speech, inflections and reading frequencies.

Two PyPI packages, both pure data shipped in their wheels (nothing is fetched at run time):

- **lemminflect** (its lemma and inflection tables come from the NIH SPECIALIST Lexicon): which parts of
  speech a word form can be (``dogs`` is a plural noun or a 3rd-person verb), its lemma, and the
  inflections of a lemma (``bark`` -> barked, barking, barks). It covers open-class words far better
  than a small hand list and, unlike WordNet through NLTK, needs no data download.
- **wordfreq** (word frequencies from several large corpora): how common each *form* is.

Neither package says how often ``dog`` is used as a verb, which is what settles "dogs bark". We estimate
it from the frequencies of the forms only one reading can produce: ``dogged`` and ``dogging`` can only be
verbs, and in English text a verb's past (VBD/VBN) and -ing (VBG) forms carry a known share of its uses
(Penn Treebank WSJ tag counts below). So ``verb uses of dog ~ f(dogged, dogging) / share(VBD, VBN, VBG)``
and the verb share of the ambiguous form ``dogs`` is that times the VBZ share. Likewise a noun's plural
carries about 30% of its uses. This gives P(reading | form), our stand-in for WordNet's sense counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

# Share of verb tokens per Penn Treebank tag (WSJ sections 0-24: VB 26.5k, VBD 30.2k, VBG 14.5k,
# VBN 20.0k, VBP 12.5k, VBZ 21.0k, rounded).
VERB_TAG_SHARE = {"VB": 0.21, "VBD": 0.24, "VBG": 0.12, "VBN": 0.16, "VBP": 0.10, "VBZ": 0.17}
# Share of noun tokens in the plural (NNS / (NN + NNS) in the same corpus).
PLURAL_SHARE = 0.30
# No reading is ever ruled out by frequency alone: a reading keeps at least this share.
MIN_SHARE = 0.05

OPEN_CLASSES = ("NOUN", "VERB", "ADJ")
# Endings that make an unknown word possibly an adjective ("puny", "whooshy", "elvish").
ADJECTIVE_SUFFIXES = ("y", "ish", "ous", "ful", "less", "ic", "al", "ive", "able", "ible", "ist", "ese", "ian")
# Share of adjective tokens that are comparatives or superlatives (Penn WSJ: JJR 3.2k + JJS 1.8k of
# about 60k adjective tokens), and a rough share of an adjective's uses carried by its -ly adverb.
COMPARATIVE_SHARE = 0.085
ADVERB_SHARE = 0.10
# Evidence for the noun and adjective readings below this share of the form's own frequency says
# nothing either way: the split is then even.
MIN_EVIDENCE = 0.1


@dataclass(frozen=True)
class Word:
    """What the lexicon knows about one lower-case word form."""

    form: str
    lemmas: dict[str, str]  # part of speech ("NOUN", "VERB", "ADJ") -> lemma
    known: bool  # False: not in the lexicon (then read as a noun, as unknown tags mostly are)

    @property
    def pos(self) -> frozenset[str]:
        return frozenset(self.lemmas)

    @property
    def is_plural_noun(self) -> bool:
        return "NOUN" in self.lemmas and self.lemmas["NOUN"] != self.form

    def verb_tags(self) -> frozenset[str]:
        """Penn tags this form has as a verb (empty if it is no verb)."""
        if "VERB" not in self.lemmas:
            return frozenset()
        table = _inflections(self.lemmas["VERB"], "VERB")
        tags = {tag for tag, forms in table.items() if self.form in forms}
        if not tags and self.form.endswith("ing") and self.lemmas["VERB"] != self.form:
            tags = {"VBG"}
        if self.lemmas["VERB"] == self.form:  # "lightning" is no -ing form of a verb "lightn"
            tags.discard("VBG")
        return frozenset(tags) or frozenset({"VB"})


@lru_cache(maxsize=65536)
def word(form: str) -> Word:
    """Look up ``form`` (lower case): its parts of speech and lemmas."""
    import lemminflect

    table = lemminflect.getAllLemmas(form)
    lemmas = {pos: table[pos][0] for pos in OPEN_CLASSES if pos in table}
    if len(table.get("NOUN", ())) > 1:  # "leaves": leaf, not leave (a lemma that is also a verb's)
        verbs = set(table.get("VERB", ()))
        lemmas["NOUN"] = next((n for n in table["NOUN"] if n not in verbs), table["NOUN"][0])
    if lemmas:
        return Word(form, lemmas, known=True)
    if form.endswith("ing") and len(form) > 5:  # an unknown -ing form ("whooshing"): a verb
        guess = lemminflect.getAllLemmasOOV(form, "VERB").get("VERB", (form[:-3],))[0]
        return Word(form, {"VERB": guess}, known=False)
    noun = form
    if form.endswith("s") and not form.endswith("ss"):
        noun = lemminflect.getAllLemmasOOV(form, "NOUN").get("NOUN", (form,))[0]
    if form.endswith(ADJECTIVE_SUFFIXES) and noun == form:  # "puny", "whooshy": maybe an adjective
        return Word(form, {"NOUN": noun, "ADJ": form}, known=False)
    return Word(form, {"NOUN": noun}, known=False)


# An -ing form whose plural is at least this share as common as itself is a count noun of its own
# ("crossings", "recordings", "paintings": a thing), not only the name of an action ("barking").
COUNT_NOUN_PLURAL = 0.1


@lru_cache(maxsize=65536)
def is_count_noun(form: str) -> bool:
    """Whether an -ing ``form`` is also a count noun in its own right (see ``COUNT_NOUN_PLURAL``)."""
    f = frequency(form)
    return f > 0 and "NOUN" in word(form).lemmas and frequency(form + "s") >= COUNT_NOUN_PLURAL * f


# Shortest part of a closed compound: "gun" + "shot"; shorter parts join by accident ("a" + "stir").
MIN_COMPOUND_PART = 3


@lru_cache(maxsize=65536)
def closed_compound(first: str, second: str) -> str | None:
    """The one-word noun that ``first`` and ``second`` spell when written together, or None.

    Tags often space out a closed compound: "gun shot" is the noun "gunshot", "foot steps" the plural of
    "footstep", "rain drop" is "raindrop". When the lexicon lists the joined form (``second`` as written
    or in the singular) as a noun and both parts can be nouns, the two words are one noun, not a subject
    and its verb. Joins that are verb forms ("bar" + "king" -> "barking") do not count.
    """
    if min(len(first), len(second)) < MIN_COMPOUND_PART:
        return None
    a, b = word(first), word(second)
    if not (a.known and b.known and "NOUN" in a.lemmas and "NOUN" in b.lemmas):
        return None
    for joined in dict.fromkeys((first + second, first + b.lemmas["NOUN"])):
        w = word(joined)
        if w.known and "NOUN" in w.lemmas and not w.verb_tags() & {"VBG", "VBD", "VBN", "VBZ"}:
            return w.lemmas["NOUN"]
    return None


@lru_cache(maxsize=65536)
def is_verb_lemma(form: str) -> bool:
    """Whether ``form`` is the base form of some verb ("saw": to saw, as well as the past of "see")."""
    import lemminflect

    return form in lemminflect.getAllLemmas(form).get("VERB", ())


def frequency(form: str) -> float:
    """How often ``form`` occurs in English text (wordfreq; fraction of all words)."""
    import wordfreq

    return wordfreq.word_frequency(form, "en")


@lru_cache(maxsize=65536)
def _inflections(lemma: str, pos: str) -> dict[str, tuple[str, ...]]:
    import lemminflect

    return lemminflect.getAllInflections(lemma, upos=pos) or lemminflect.getAllInflectionsOOV(lemma, upos=pos)


def ing_form(verb_lemma: str) -> str:
    """The -ing form of a verb lemma (``die`` -> ``dying``)."""
    forms = _inflections(verb_lemma, "VERB").get("VBG")
    return forms[0] if forms else verb_lemma + "ing"


@lru_cache(maxsize=65536)
def verb_share(form: str) -> float:
    """Estimated P(verb reading | form) for a form that can be a noun or a verb (see module docstring).

    1.0 if the form is only a verb, 0.0 if it is no verb; otherwise clipped to [MIN_SHARE, 1 - MIN_SHARE].
    """
    w = word(form)
    if "VERB" not in w.lemmas:
        return 0.0
    if "NOUN" not in w.lemmas:
        return 1.0
    f_form = frequency(form)
    verb_forms = _inflections(w.lemmas["VERB"], "VERB")
    noun_forms = _inflections(w.lemmas["NOUN"], "NOUN")
    shared = {f for forms in noun_forms.values() for f in forms} | {form}
    # Verb uses from the verb-only forms: total = f(verb-only forms) / (their share of verb tokens).
    only = {}
    for tag, forms in verb_forms.items():
        for f in forms:
            # A verb form that is also a noun of its own ("training", "building") is no verb-only evidence.
            if f not in shared and (f == form or "NOUN" not in word(f).lemmas):
                only.setdefault(f, set()).add(tag)
    verb_total = None
    share = sum(VERB_TAG_SHARE[t] for tags in only.values() for t in tags)
    if only and share > 0:
        verb_total = sum(frequency(f) for f in only) / share
    # Noun uses from the noun-only forms (a plural that is not also a verb form: "buildings").
    verb_set = {f for forms in verb_forms.values() for f in forms}
    noun_only = [f for tag, forms in noun_forms.items() if tag == "NNS" for f in forms if f not in verb_set]
    noun_total = sum(frequency(f) for f in noun_only) / PLURAL_SHARE if noun_only else None
    singular = w.lemmas["NOUN"]
    if noun_total is None and verb_total is not None and singular != form:
        # The plural is also the 3rd-person verb ("drops"): the singular's uses minus its verb uses.
        base_tags = {t for t, forms in verb_forms.items() if singular in forms}
        rest = frequency(singular) - verb_total * sum(VERB_TAG_SHARE.get(t, 0.0) for t in base_tags)
        noun_total = max(rest, 0.0) / (1 - PLURAL_SHARE)

    tags = w.verb_tags()
    verb_uses = verb_total * sum(VERB_TAG_SHARE.get(t, 0.0) for t in tags) if verb_total is not None else None
    if noun_total is not None:
        noun_uses = noun_total * (PLURAL_SHARE if w.is_plural_noun else 1 - PLURAL_SHARE)
    else:
        noun_uses = None
    if verb_uses is None and noun_uses is None:
        p = 0.5
    elif noun_uses is None:
        p = verb_uses / f_form if f_form > 0 else 0.5
    elif verb_uses is None:
        p = 1.0 - noun_uses / f_form if f_form > 0 else 0.5
    else:
        p = verb_uses / (verb_uses + noun_uses) if verb_uses + noun_uses > 0 else 0.5
    return min(max(p, MIN_SHARE), 1.0 - MIN_SHARE)



@lru_cache(maxsize=65536)
def adjective_share(form: str) -> float:
    """Estimated P(adjective reading | form) against a noun reading, for forms that can be both.

    The lexicon lists many nouns as possible adjectives ("house", "sound", "crash"); what settles it is
    use. Adjective uses leave comparatives, superlatives and -ly adverbs (``heavier``, ``heavily``),
    noun uses leave plurals (``houses``): each is divided by the share of uses it carries
    (``COMPARATIVE_SHARE``, ``ADVERB_SHARE``, ``PLURAL_SHARE``). Where both kinds of evidence are under
    ``MIN_EVIDENCE`` of the form's own frequency (a non-gradable adjective with a rare plural: "modern",
    "organic") the split is even (0.5). 1.0 for a form that is only an adjective, 0.0 for no adjective.
    """
    import lemminflect

    w = word(form)
    if "ADJ" not in w.lemmas:
        return 0.0
    if "NOUN" not in w.lemmas:
        return 1.0
    f = frequency(form)
    if f == 0.0 or not w.known:  # the lexicon does not know it: its adjective reading was a guess ("buddhist")
        return 0.5
    graded = lemminflect.getAllInflections(w.lemmas["ADJ"], upos="ADJ")
    comparative = sum(frequency(x) for t in ("JJR", "JJS") for x in graded.get(t, ()) if x != form)
    stem = form[:-1] + "i" if form.endswith("y") else form[:-1] if form.endswith("le") else form
    adverb = frequency(stem + "ly")
    # Regular plurals only: "media" is a word of its own, not the plural that tells "medium" is a noun.
    plurals = _inflections(w.lemmas["NOUN"], "NOUN").get("NNS", ())
    plural = sum(frequency(x) for x in plurals if x != form and x.endswith("s"))
    adj_uses = comparative / COMPARATIVE_SHARE + adverb / ADVERB_SHARE
    noun_uses = plural * (1 - PLURAL_SHARE) / PLURAL_SHARE
    if adj_uses + noun_uses < MIN_EVIDENCE * f:
        return 0.5
    return min(max(adj_uses / (adj_uses + noun_uses), MIN_SHARE), 1.0 - MIN_SHARE)


@lru_cache(maxsize=65536)
def noun_share(form: str) -> float:
    """Estimated P(noun reading | form) against a verb reading: 1 - :func:`verb_share`.

    An unknown word is read as a noun (1.0); a word with no noun reading gives 0.0.
    """
    w = word(form)
    if "NOUN" not in w.lemmas:
        return 0.0
    return 1.0 - verb_share(form) if "VERB" in w.lemmas else 1.0
