"""AudioPairBank (Säger et al., arXiv 1607.03766): a corpus of adjective-noun and verb-noun sound pairs.

Corpus side: the pair vocabulary (:func:`parse_pair`), the freesound client (:class:`FreesoundClient`),
the SQLite corpus (:class:`Corpus`), building from freesound, importing local recordings, cleaning,
de-duplication, splits and export. Recognition side: features, recognisers and studies.
"""

from structlab.audiopairs.vocab import Pair, parse_pair

__all__ = ["Corpus", "FreesoundClient", "Pair", "parse_pair"]


def __getattr__(name: str):
    # The client and the corpus import requests/sqlite helpers; keep `import structlab.audiopairs` light.
    if name == "Corpus":
        from structlab.audiopairs.corpus import Corpus

        return Corpus
    if name == "FreesoundClient":
        from structlab.audiopairs.freesound import FreesoundClient

        return FreesoundClient
    raise AttributeError(f"module 'structlab.audiopairs' has no attribute {name!r}")
