"""Trials cached as arrays, keyed by a hash of everything they were made from (file checksums, settings).

A cache file is written atomically (a reader sees the old file or the new one), so an interrupted run
never leaves a truncated cache behind; a different key (changed files or settings) makes a new file.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from structlab.atomic import atomic_write_bytes
from structlab.subject.trials import Trials

FORMAT = "structlab.subject.trials/1"


def cache_key(parts: dict) -> str:
    """A hex digest of ``parts`` (JSON-serialisable: file checksums, loader settings, format version)."""
    text = json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def save_trials(path: Path, trials: Trials) -> None:
    """Write ``trials`` to ``path`` (.npz) atomically."""
    meta = {"ch_names": trials.ch_names, "sfreq": trials.sfreq, "classes": trials.classes, "info": trials.info}
    buffer = io.BytesIO()
    np.savez(
        buffer, X=trials.X, y=trials.y, subject=trials.subject, session=trials.session, run=trials.run,
        meta=np.array(json.dumps(meta, default=str)),
    )
    atomic_write_bytes(path, buffer.getvalue())


def read_trials(path: Path) -> Trials:
    """Read trials written by :func:`save_trials` (no pickles)."""
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        return Trials(
            npz["X"], npz["y"], npz["subject"], npz["session"], npz["run"], meta["ch_names"], meta["sfreq"],
            meta["classes"], meta["info"],
        )


def cached(folder: Path | None, name: str, key: str, build: Callable[[], Trials]) -> Trials:
    """The trials in ``folder/<name>-<key>.npz``, built by ``build()`` and stored there if absent.

    ``folder=None`` builds without caching. A cache file that cannot be read is rebuilt.
    """
    if folder is None:
        return build()
    path = Path(folder) / f"{name}-{key}.npz"
    if path.is_file():
        try:
            trials = read_trials(path)
            trials.info["cache"] = {"path": str(path), "hit": True}
            return trials
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # unreadable (e.g. written by another version): rebuild it below
    trials = build()
    trials.info["cache"] = {"path": str(path), "hit": False}
    save_trials(path, trials)
    return trials
