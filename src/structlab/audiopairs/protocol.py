"""The evaluation protocol: which recordings must stay together, grouped folds, balanced negatives.

Files that share a recording must never be split between training and test, or a recogniser is
scored on audio it has heard. :func:`recording_groups` joins files (union-find) that share

- ``"recording"``: the same bytes (SHA-256), the same freesound recording (any freesound id) or the same
  audio under another label (de-duplication's related sounds, e.g. gain copies);
- ``"uploader"`` (the default): the above, or an uploader (one person's microphone, room and editing);
- ``"uploader-or-source"``: as ``"uploader"``, but a file whose uploader is unknown joins its source
  package (the corpus's split rule, :func:`structlab.audiopairs.splits.groups`);
- ``"source"``: the above, or the package or collection the file came from.

Duplicates are removed before this (:func:`~structlab.audiopairs.recordings.drop_duplicates`). Folds
come from scikit-learn's ``StratifiedGroupKFold`` with a seed, so a protocol is reproducible, and
:func:`check_disjoint` proves that no group is on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from structlab.audiopairs.recordings import Recording

GROUPINGS: tuple[str, ...] = ("recording", "uploader", "uploader-or-source", "source")

Fold = tuple[np.ndarray, np.ndarray]  # (train indices, test indices)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def group_keys(rec: Recording, grouping: str) -> list[str]:
    """The keys that tie ``rec`` to other files under ``grouping`` (see the module docstring)."""
    keys = [f"sha256:{rec.sha256}"] + [f"freesound:{i}" for i in rec.freesound_ids]
    keys += [f"audio:{k}" for k in rec.related]  # one recording under two labels ("soft"/"hard" gain copies)
    if grouping != "recording":
        keys += [f"uploader:{u.casefold()}" for u in rec.uploaders]
    if grouping == "source" or (grouping == "uploader-or-source" and not rec.uploaders):
        keys.append(f"source:{rec.source}")
    return keys


def recording_groups(recordings: Sequence[Recording], grouping: str = "uploader") -> np.ndarray:
    """One group id per recording (ints from 0, in order of first appearance) under ``grouping``.

    Two recordings are in one group when a chain of shared keys joins them. Raises ``ValueError`` for
    an unknown ``grouping``.
    """
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping={grouping!r}: expected one of {GROUPINGS}")
    uf = _UnionFind(len(recordings))
    owner: dict[str, int] = {}
    for i, rec in enumerate(recordings):
        for key in group_keys(rec, grouping):
            if key in owner:
                uf.union(owner[key], i)
            else:
                owner[key] = i
    roots = [uf.find(i) for i in range(len(recordings))]
    renumber: dict[int, int] = {}
    return np.array([renumber.setdefault(r, len(renumber)) for r in roots], dtype=np.int64)


def n_groups_per_class(y: Sequence, groups: Sequence[int]) -> dict:
    """How many distinct groups each class of ``y`` has."""
    out: dict = {}
    for label, g in zip(y, groups, strict=True):
        out.setdefault(label, set()).add(int(g))
    return {label: len(gs) for label, gs in out.items()}


def grouped_folds(y: Sequence, groups: Sequence[int], n_splits: int = 5, seed: int = 0) -> list[Fold]:
    """Stratified folds that keep each group on one side, shuffled by ``seed``.

    ``n_splits`` is lowered to the fewest groups any class has (so every class can reach every test
    fold), never below 2. Raises ``ValueError`` when a class has fewer than 2 groups (it cannot be both
    trained on and tested) or the arguments disagree in length.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y)
    groups = np.asarray(groups)
    if y.shape != groups.shape or y.ndim != 1:
        raise ValueError(f"y and groups: expected 1-D arrays of one length, got shapes {y.shape} and {groups.shape}")
    if not isinstance(n_splits, int) or n_splits < 2:
        raise ValueError(f"n_splits={n_splits!r}: expected an int >= 2")
    per_class = n_groups_per_class(y, groups)
    if len(per_class) < 2:
        raise ValueError(f"y: expected at least 2 classes, got {sorted(per_class)}")
    fewest = min(per_class.values())
    if fewest < 2:
        thin = sorted(str(c) for c, n in per_class.items() if n < 2)
        raise ValueError(f"y: classes {thin} have fewer than 2 groups; they cannot be split into train and test")
    splitter = StratifiedGroupKFold(n_splits=min(n_splits, fewest), shuffle=True, random_state=seed)
    folds = [(train, test) for train, test in splitter.split(np.zeros(len(y)), y, groups)]
    check_disjoint(folds, groups)
    return folds


def check_disjoint(folds: Sequence[Fold], groups: Sequence[int]) -> None:
    """Raise ``AssertionError`` if any fold has a group on both its training and its test side."""
    groups = np.asarray(groups)
    for k, (train, test) in enumerate(folds):
        shared = set(groups[train].tolist()) & set(groups[test].tolist())
        if shared:
            raise AssertionError(f"fold {k}: groups {sorted(shared)[:5]} are in both training and test")


def balanced_negatives(
    positive: np.ndarray, candidates: np.ndarray, groups: Sequence[int], rng: np.random.Generator
) -> np.ndarray:
    """As many negatives as there are positives, drawn without replacement from ``candidates``.

    ``positive`` and ``candidates`` are boolean masks over the recordings (disjoint). The draw takes at
    most one recording per group while unused groups last (round-robin over shuffled groups), so no
    single uploader or source supplies all the negatives. Returns sorted indices. Raises ``ValueError``
    when the masks overlap or there are fewer candidates than positives.
    """
    positive = np.asarray(positive, dtype=bool)
    candidates = np.asarray(candidates, dtype=bool)
    groups = np.asarray(groups)
    if not positive.shape == candidates.shape == groups.shape:
        raise ValueError(
            f"positive, candidates, groups: expected one shape, got "
            f"{positive.shape}, {candidates.shape}, {groups.shape}"
        )
    if np.any(positive & candidates):
        raise ValueError("candidates: must not include positives")
    n = int(positive.sum())
    pool = np.flatnonzero(candidates)
    if len(pool) < n:
        raise ValueError(f"candidates: {len(pool)} recordings for {n} positives; expected at least as many")
    by_group: dict[int, list[int]] = {}
    for i in rng.permutation(pool):
        by_group.setdefault(int(groups[i]), []).append(int(i))
    queues = [by_group[g] for g in rng.permutation(sorted(by_group))]
    chosen: list[int] = []
    while len(chosen) < n:
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop())
    return np.sort(np.array(chosen, dtype=np.int64))
