"""Train/validation/test splits grouped by uploader, seeded and byte-for-byte reproducible.

A recogniser tested on recordings by the uploader it was trained on learns the microphone and the room,
not the sound; AudioPairBank's files are dominated by few prolific uploaders. So files are grouped and
whole groups go to one split. Two files are in one group when they share an uploader (or, for files
without one, a source such as the package they came from), a freesound recording they were made from
(``origin_ids``), or are duplicates of each other. Groups are the connected components of those links.

Groups are ordered by SHA-256 of ``"<seed>:<group key>"`` (independent of row order and of Python's hash
seed) and dealt out greedily: each group goes to the split furthest below its target share of files.
Only usable files (decodable, not duplicates, with a kept link) are split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass

from structlab.atomic import atomic_write_text
from structlab.audiopairs.corpus import Corpus

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    """Target shares of files for validation and test (train gets the rest) and the seed."""

    val: float = 0.1
    test: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("val", "test"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r}: expected a share in [0, 1)")
        if self.val + self.test >= 1.0:
            raise ValueError(f"val + test = {self.val + self.test}: expected < 1 (train needs files)")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r}: expected a non-negative int")


def groups(corpus: Corpus) -> dict[int, str]:
    """Group key per usable sound: the smallest member key of its connected component."""
    rows = corpus.usable_sounds()
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for r in rows:
        me = f"sound:{r['id']}"
        for who in _uploaders(r):
            union(me, f"uploader:{who}")
        if r["freesound_id"] is not None:
            union(me, f"recording:{r['freesound_id']}")
        for origin in filter(None, (r["origin_ids"] or "").split(";")):
            union(me, f"recording:{origin}")
    for r in corpus.query("SELECT a, b FROM related"):  # the same recording under two labels: one group
        union(f"sound:{r['a']}", f"sound:{r['b']}")
    for r in corpus.sounds("duplicate_of IS NOT NULL"):  # a copy's uploader joins its original's group
        for who in _uploaders(r):
            union(f"sound:{r['duplicate_of']}", f"uploader:{who}")
    return {r["id"]: find(f"sound:{r['id']}") for r in rows}


def _uploaders(row) -> list[str]:
    """A file's uploaders (several joined by ';'), or its source where it names none."""
    names = [u.strip() for u in (row["uploader"] or "").split(";") if u.strip()]
    return names or ([row["source"]] if row["source"] else [])


def make_splits(corpus: Corpus, config: SplitConfig = SplitConfig()) -> dict[str, int]:
    """Assign every usable sound to train/val/test by group; store it (one transaction).

    Returns the number of files per split. Raises ``ValueError`` if the corpus has no usable sounds.
    """
    if not isinstance(config, SplitConfig):
        raise TypeError(f"config={config!r}: expected a SplitConfig")
    key_of = groups(corpus)
    if not key_of:
        raise ValueError(f"{corpus.path}: no usable sounds to split (import or build, then clean)")
    members: dict[str, list[int]] = defaultdict(list)
    for sound_id, key in key_of.items():
        members[key].append(sound_id)
    order = sorted(members, key=lambda k: hashlib.sha256(f"{config.seed}:{k}".encode()).hexdigest())
    target = {"train": 1.0 - config.val - config.test, "val": config.val, "test": config.test}
    size = dict.fromkeys(SPLITS, 0)
    total = len(key_of)
    assignment: dict[int, tuple[str, str]] = {}
    for key in order:
        # The split furthest below its target share (ties in SPLITS order) takes the group.
        split = max(SPLITS, key=lambda s: (target[s] - size[s] / total) if target[s] > 0 else -2.0)
        for sound_id in members[key]:
            assignment[sound_id] = (split, key)
        size[split] += len(members[key])
    with corpus.transaction() as db:
        db.execute("DELETE FROM splits")
        db.executemany(
            "INSERT INTO splits (sound_id, split, group_key) VALUES (?, ?, ?)",
            [(i, split, key) for i, (split, key) in sorted(assignment.items())],
        )
        corpus.set_meta("split", json.dumps({"val": config.val, "test": config.test, "seed": config.seed}))
    return size


def splits_csv(corpus: Corpus) -> str:
    """The stored split as CSV text (sound id, freesound id, path, split, group), sorted by sound id.

    Byte-for-byte the same for the same corpus and configuration.
    """
    rows = corpus.query(
        "SELECT s.id, s.freesound_id, s.path, p.split, p.group_key FROM splits p "
        "JOIN sounds s ON s.id = p.sound_id ORDER BY s.id"
    )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sound_id", "freesound_id", "path", "split", "group"])
    for r in rows:
        writer.writerow([r["id"], r["freesound_id"] if r["freesound_id"] is not None else "", r["path"],
                         r["split"], r["group_key"]])
    return out.getvalue()


def write_splits(corpus: Corpus, path) -> None:
    """Write :func:`splits_csv` to ``path`` atomically."""
    atomic_write_text(path, splits_csv(corpus))
