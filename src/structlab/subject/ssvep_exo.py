"""The SSVEP exoskeleton data set (Kalunga et al. 2016; MOABB ``Kalunga2016``) as checked trials.

12 subjects, 8 occipital channels at 256 Hz, four classes (rest, 13, 17 and 21 Hz flicker), 8 trials of
each per recording; 2 to 6 recordings per subject (``subjectNN/record-[DATE-TIME]_raw.fif`` with its
events in ``record-[DATE-TIME]-eve.fif``). Each recording is a session, labelled by its time stamp, so
sessions sort in recording order. A subject's sessions were recorded minutes apart on one day (the time
stamps say so), so "cross-session" here is a much milder shift than across days.

A trial is the window [1, 5) s after its event. MOABB takes [2, 4) s; the flicker's power at the class
frequency is raised from about 1 s to 6 s after the event (measured on these files), and the longer window
separates the classes better (a log-power classifier gains about 9 points across sessions). Windows end
before the next event in every recording. The stored values are about 1000x larger
than scalp EEG in volts (a standard deviation of about 5e-3 "V" after band-pass), so they are scaled by
1e3 to numbers of order one; the amplifier saturates at +-0.49998 in these units.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import numpy as np

from structlab import data
from structlab.subject.cache import cache_key, cached
from structlab.subject.recordings import Preprocessing, Recording, RecordingSpec, load_trials
from structlab.subject.trials import Trials

SPEC = RecordingSpec(
    name="ssvep-exo",
    channels=("Oz", "O1", "O2", "PO3", "POz", "PO7", "PO8", "PO4"),
    sfreq=256.0,
    event_id={"rest": 1, "13Hz": 2, "21Hz": 3, "17Hz": 4},  # MOABB's codes
    window=(1.0, 5.0),
    trials_per_class=8,
    clip_level=0.4999,
)
PREPROCESSING = Preprocessing(l_freq=4.0, h_freq=45.0, sfreq=128.0, scale=1e3)

_RAW = re.compile(r"record-\[(?P<stamp>[0-9.\-]+)\]_raw\.fif$")


def recordings(folder: str | os.PathLike[str]) -> list[Recording]:
    """Every recording under ``folder`` (``subjectNN/record-[...]_raw.fif``), by subject then time.

    A missing events file gives an empty event list, which the event checks report.
    """
    import mne

    folder = Path(folder)
    found = []
    for path in sorted(folder.glob("subject*/record-*_raw.fif")):
        match = _RAW.search(path.name)
        if match is None:
            continue
        events_path = path.with_name(path.name.replace("_raw.fif", "-eve.fif"))
        events = (
            mne.read_events(events_path, verbose="error") if events_path.is_file() else np.zeros((0, 3), dtype=int)
        )
        raw = mne.io.read_raw_fif(path, preload=False, verbose="error")
        subject = path.parent.name.removeprefix("subject")
        found.append(Recording(subject, match["stamp"], "0", str(path.relative_to(folder)), raw, events))
    return found


def load(
    folder: str | os.PathLike[str] | None = None,
    preprocessing: Preprocessing = PREPROCESSING,
    on_problem: Literal["drop", "raise"] = "drop",
    cache_dir: str | os.PathLike[str] | None | Literal[False] = None,
    download: bool = False,
    progress: bool = False,
) -> Trials:
    """The SSVEP exoskeleton trials, checked and de-duplicated (see :mod:`structlab.subject.recordings`).

    Args:
        folder: the data set's folder; default ``structlab.data.resolve("ssvep-exo")``.
        preprocessing: band-pass, sampling rate and scale of the trials.
        on_problem: ``"drop"`` faulty recordings/trials (reported in ``trials.info["report"]``) or
            ``"raise"`` a StructlabError with the report.
        cache_dir: where arrays are cached (default: ``<structlab cache>/subject``; ``False``: no cache).
            The key covers every file's SHA-256 and all settings.
        download: fetch the data set from its publishers when it is not found.

    Raises:
        DataNotFoundError: the data set is not found (and not downloaded).
        StructlabError: ``on_problem="raise"`` and a fault was found.
    """
    if folder is None:
        resolution = data.resolve("ssvep-exo", download=download)
        folder = resolution.path
    else:
        resolution = data.Resolution("ssvep-exo", Path(folder), "data folder", "given folder")
    folder = Path(folder)
    files = sorted(p for p in folder.glob("subject*/record-*.fif"))
    if not files:
        raise data.DataNotFoundError(f"folder={str(folder)!r}: no subject*/record-*.fif files")
    key = cache_key({
        "spec": SPEC, "preprocessing": preprocessing, "on_problem": on_problem,
        "files": {p.relative_to(folder).as_posix(): data.sha256_file(p) for p in files},
    })
    if cache_dir is False:
        where = None
    else:
        where = Path(cache_dir) if cache_dir is not None else data.cache_root() / "subject"

    def build() -> Trials:
        return load_trials(recordings(folder), SPEC, preprocessing, on_problem, progress=progress)

    trials = cached(where, "ssvep-exo", key, build)
    trials.info["data"] = resolution.as_record()
    return trials
