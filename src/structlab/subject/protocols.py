"""Evaluation protocols, named and reusable (MOABB style): which trials train, calibrate and test.

* ``pooled-cross-session`` (the paper's): train on every subject's first session, test on their later
  sessions. Subjects with a single session only train.
* ``loso-zero-shot``: leave one subject out; train on every trial of the others, test on the held-out
  subject's later sessions (every session after its first) without any of its data.
* ``loso-calibration-<k>``: as ``loso-zero-shot``, plus ``k`` labelled calibration trials of the held-out
  subject, drawn class-balanced from its first session. Zero-shot and every ``k`` share one test set
  (the later sessions), so their accuracies pair up subject by subject.

Only subjects with at least two sessions are held out (their test set must not share a session with
their calibration trials); every subject trains when another is held out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from structlab.subject.trials import Trials

CALIBRATION_K = (4, 8, 16, 32)


@dataclass(frozen=True)
class Split:
    """Trial indices of one train/test split (and, for calibration protocols, the calibration trials)."""

    protocol: str
    train: np.ndarray
    test: np.ndarray
    held_out: str | None = None
    calibration: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class PooledCrossSession:
    """Train on all subjects' first sessions, test on their later sessions."""

    name: str = "pooled-cross-session"

    def splits(self, trials: Trials, seed: int = 0) -> list[Split]:
        first = _first_session_mask(trials)
        return [Split(self.name, np.flatnonzero(first), np.flatnonzero(~first))]


@dataclass(frozen=True)
class LosoZeroShot:
    """Leave one subject out; test on its later sessions with no data of it."""

    name: str = "loso-zero-shot"

    def splits(self, trials: Trials, seed: int = 0) -> list[Split]:
        first = _first_session_mask(trials)
        return [
            Split(self.name, np.flatnonzero(trials.subject != s), np.flatnonzero((trials.subject == s) & ~first), s)
            for s in held_out_subjects(trials)
        ]


@dataclass(frozen=True)
class LosoCalibration:
    """Leave one subject out; calibrate on ``k`` class-balanced trials of its first session."""

    k: int
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k={self.k!r}: expected a positive number of calibration trials")
        object.__setattr__(self, "name", self.name or f"loso-calibration-{self.k}")

    def splits(self, trials: Trials, seed: int = 0) -> list[Split]:
        first = _first_session_mask(trials)
        out = []
        for number, s in enumerate(held_out_subjects(trials)):
            # One generator per subject and seed: the calibration sets of k = 4, 8, ... are nested.
            rng = np.random.default_rng([seed, number])
            pool = np.flatnonzero((trials.subject == s) & first)
            out.append(Split(
                self.name, np.flatnonzero(trials.subject != s), np.flatnonzero((trials.subject == s) & ~first), s,
                calibration=balanced_sample(trials.y[pool], pool, self.k, rng),
            ))
        return out


def balanced_sample(labels: np.ndarray, indices: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` of ``indices``, as evenly spread over the classes in ``labels`` as they allow (sorted)."""
    by_class = [rng.permutation(indices[labels == c]) for c in np.unique(labels)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < k and any(depth < len(b) for b in by_class):
        for group in rng.permutation(len(by_class)):
            if depth < len(by_class[group]) and len(chosen) < k:
                chosen.append(int(by_class[group][depth]))
        depth += 1
    return np.sort(np.array(chosen, dtype=np.int64))


def held_out_subjects(trials: Trials) -> list[str]:
    """Subjects with at least two sessions (the ones LOSO protocols hold out)."""
    return [s for s in trials.subjects if len(trials.sessions(s)) >= 2]


def _first_session_mask(trials: Trials) -> np.ndarray:
    first = {s: trials.sessions(s)[0] for s in trials.subjects}
    return np.array([first[s] == e for s, e in zip(trials.subject.tolist(), trials.session.tolist(), strict=True)])


def get(name: str):
    """The protocol called ``name``: ``pooled-cross-session``, ``loso-zero-shot`` or ``loso-calibration-<k>``."""
    if name == "pooled-cross-session":
        return PooledCrossSession()
    if name == "loso-zero-shot":
        return LosoZeroShot()
    match = re.fullmatch(r"loso-calibration-(\d+)", name)
    if match:
        return LosoCalibration(int(match[1]))
    raise ValueError(
        f"name={name!r}: unknown protocol; expected pooled-cross-session, loso-zero-shot or loso-calibration-<k>"
    )
