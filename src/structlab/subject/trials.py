"""Epoched EEG trials with per-trial metadata (subject, session, run), as braindecode/MOABB keep them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Trials:
    """Trials ``X`` (n_trials, n_chans, n_times) with labels and metadata, one entry per trial.

    ``subject``, ``session`` and ``run`` are string labels; a session label is unique within its subject
    and sessions sort in recording order. ``classes[y]`` names label ``y``.
    """

    X: np.ndarray
    y: np.ndarray
    subject: np.ndarray
    session: np.ndarray
    run: np.ndarray
    ch_names: list[str]
    sfreq: float
    classes: list[str]
    # How the trials were made (source, filter, report, cache): provenance, not content, so it takes no part
    # in equality or in a job's fingerprint (a run that built the cache and one that read it are the same jobs).
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = len(self.X)
        if self.X.ndim != 3:
            raise ValueError(f"X: shape {self.X.shape}; expected (n_trials, n_chans, n_times)")
        for name in ("y", "subject", "session", "run"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name}: shape {getattr(self, name).shape}; expected ({n},), one per trial")
        if self.X.shape[1] != len(self.ch_names):
            raise ValueError(f"ch_names: {len(self.ch_names)} names for {self.X.shape[1]} channels")

    def __len__(self) -> int:
        return len(self.X)

    @property
    def subjects(self) -> list[str]:
        """Subject labels, sorted."""
        return sorted(set(self.subject.tolist()))

    def sessions(self, subject: str) -> list[str]:
        """Session labels of ``subject`` in recording order."""
        return sorted(set(self.session[self.subject == subject].tolist()))

    def select(self, mask: np.ndarray) -> Trials:
        """The trials where boolean ``mask`` is true (or at integer indices ``mask``)."""
        return Trials(
            self.X[mask], self.y[mask], self.subject[mask], self.session[mask], self.run[mask],
            self.ch_names, self.sfreq, self.classes, self.info,
        )

    def subject_ids(self, registry: list[str]) -> np.ndarray:
        """Each trial's subject as an index into ``registry`` (-1 where the subject is not in it)."""
        index = {label: i for i, label in enumerate(registry)}
        return np.array([index.get(s, -1) for s in self.subject.tolist()], dtype=np.int64)
