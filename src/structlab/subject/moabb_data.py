"""Any MOABB data set (e.g. the motor-imagery ``BNCI2014_001``) through the same checked loader.

Optional: MOABB is not a dependency of structlab and downloads its data from the internet, so this path
works only where ``moabb`` is installed and the machine is online. The recordings go through
:func:`structlab.subject.recordings.load_trials` (channel, sampling-rate and event checks, duplicate
detection) exactly as the SSVEP exoskeleton files do; the expected channels and sampling rate are those
of the data set's first recording, and the trial window is the data set's own ``interval``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from structlab import data
from structlab.errors import StructlabError
from structlab.subject.cache import cache_key, cached
from structlab.subject.recordings import Preprocessing, Recording, RecordingSpec, load_trials
from structlab.subject.trials import Trials

MOTOR_IMAGERY = Preprocessing(l_freq=4.0, h_freq=38.0, sfreq=128.0, scale=1e6)  # MOABB's raws are in volts


def available() -> bool:
    """Whether MOABB is installed (it still needs the internet to fetch a data set the first time)."""
    import importlib.util

    return importlib.util.find_spec("moabb") is not None


def load(
    dataset: str,
    subjects: list[int] | None = None,
    preprocessing: Preprocessing = MOTOR_IMAGERY,
    on_problem: Literal["drop", "raise"] = "drop",
    cache_dir: str | os.PathLike[str] | None | Literal[False] = None,
) -> Trials:
    """Trials of MOABB data set ``dataset`` (a class name in ``moabb.datasets``) for ``subjects``.

    Raises:
        StructlabError: MOABB is not installed, or the data set is unknown or cannot be downloaded.
    """
    import mne

    if not available():
        raise StructlabError(
            f"dataset={dataset!r}: MOABB is not installed (optional: `pip install moabb`; it downloads its "
            "data sets from the internet)"
        )
    import moabb.datasets

    cls = getattr(moabb.datasets, dataset, None)
    if cls is None:
        raise StructlabError(f"dataset={dataset!r}: moabb.datasets has no such data set")
    ds = cls()
    subjects = list(subjects) if subjects is not None else list(ds.subject_list)
    unknown = sorted(set(subjects) - set(ds.subject_list))
    if unknown:
        raise ValueError(f"subjects={unknown}: not in {dataset}'s subjects {ds.subject_list}")
    try:
        paths = sorted({str(p) for s in subjects for p in ds.data_path(s)})
    except Exception as err:  # noqa: BLE001 - MOABB raises many kinds of download errors
        raise StructlabError(f"dataset={dataset!r}: could not download it through MOABB ({err})") from err
    key = cache_key({
        "moabb": dataset, "subjects": subjects, "preprocessing": preprocessing, "on_problem": on_problem,
        "files": {p: data.sha256_file(p) for p in paths if Path(p).is_file()},
    })
    where = None if cache_dir is False else Path(cache_dir or data.cache_root() / "subject")

    def build() -> Trials:
        recordings = []
        for subject, sessions in ds.get_data(subjects).items():
            for session, runs in sessions.items():
                for run, raw in runs.items():
                    if len(raw.annotations):
                        events, _ = mne.events_from_annotations(raw, event_id=ds.event_id, verbose="error")
                    else:
                        events = mne.find_events(raw, shortest_event=0, verbose="error")
                    recordings.append(Recording(f"{subject:02d}", str(session), str(run), f"moabb:{dataset}",
                                                raw, events))
        first = recordings[0].raw
        spec = RecordingSpec(
            name=f"moabb:{dataset}",
            channels=tuple(first.ch_names[i] for i in mne.pick_types(first.info, eeg=True)),
            sfreq=float(first.info["sfreq"]),
            event_id=dict(ds.event_id),
            window=(float(ds.interval[0]), float(ds.interval[1])),
        )
        return load_trials(recordings, spec, preprocessing, on_problem)

    trials = cached(where, f"moabb-{dataset}", key, build)
    trials.info["data"] = {"name": f"moabb:{dataset}", "origin": "downloaded", "synthetic": False,
                           "path": None, "detail": f"MOABB {dataset}, subjects {subjects}"}
    return trials
