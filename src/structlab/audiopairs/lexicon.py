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
ADJECTIVE_SUFFIXES = ("y", "ish", "ous", "ful", "less", "ic", "al", "ive", "able", "ible")


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
        if not tags and self.form.endswith("ing"):
            tags = {"VBG"}
        return frozenset(tags) or frozenset({"VB"})


@lru_cache(maxsize=65536)
def word(form: str) -> Word:
    """Look up ``form`` (lower case): its parts of speech and lemmas."""
    import lemminflect

    table = lemminflect.getAllLemmas(form)
    lemmas = {pos: table[pos][0] for pos in OPEN_CLASSES if pos in table}
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
            if f not in shared:
                only.setdefault(f, set()).add(tag)
    verb_total = None
    share = sum(VERB_TAG_SHARE[t] for tags in only.values() for t in tags)
    if only and share > 0:
        verb_total = sum(frequency(f) for f in only) / share
    # Noun uses from the noun-only forms (a plural that is not also a verb form: "buildings").
    verb_set = {f for forms in verb_forms.values() for f in forms}
    noun_only = [f for tag, forms in noun_forms.items() if tag == "NNS" for f in forms if f not in verb_set]
    noun_total = sum(frequency(f) for f in noun_only) / PLURAL_SHARE if noun_only else None

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
def noun_share(form: str) -> float:
    """Estimated P(noun reading | form) against a verb reading: 1 - :func:`verb_share`.

    An unknown word is read as a noun (1.0); a word with no noun reading gives 0.0.
    """
    w = word(form)
    if "NOUN" not in w.lemmas:
        return 0.0
    return 1.0 - verb_share(form) if "VERB" in w.lemmas else 1.0
