"""MOABB's ``Kalunga2016`` (SSVEPExo) on the local copy of the recordings, with no network access.

MOABB reads ``$MNE_DATA/MNE-ssvepexo-data/zenodo/2392979/subjectNN_runK_raw.fif`` (one file per run, events
in a stim channel) and downloads what is missing. The shared copy (``structlab.data`` ``ssvep-exo``) keeps
each recording as ``subjectNN/record-[DATE-TIME]_raw.fif`` with its events in ``-eve.fif``. This module
writes MOABB-layout copies of it into a cache folder and points MOABB there:

* **which file is which run.** MOABB expects 2, 2, 2, 2, 2, 2, 3, 2, 2, 4, 2, 5 runs for subjects 1-12.
  The shared copy has the same recordings plus the five sessions its README flags (excluded by the data
  set's authors for protocol problems); without them, run k of a subject is its k-th recording in time
  order. :func:`recording_table` checks that order against the recording dates stored in the files: every
  unflagged recording's ``meas_date`` is its file-name time stamp (local time in France) converted to UTC,
  and the five flagged ones are exactly the recordings whose clock was not converted.
* **what is left out, and why.** The loader (:mod:`structlab.subject.recordings`) finds that subject 03's
  second recording and subject 07's first are one recording filed under two subjects (identical samples);
  as there, both copies are dropped. Subject 12 has 3 of MOABB's 5 runs (two sessions were not available to
  us); they are kept. MOABB's ``Kalunga2016.data_path`` lists every run it expects, so
  :func:`local_dataset` gives a subclass that changes nothing but that list and reads the runs present.
* **checksums.** The source files are verified against structlab's checksums before anything is written,
  and every written file against the manifest written with them (MOABB itself accepts any file there).
* **offline.** :func:`offline_moabb` sets ``MNE_DATA`` (and the data set's own path key) to the cache and
  ``MOABB_DOWNLOAD_PROVIDER=upstream`` (the default provider first looks the data set up in a remote
  index), restoring the environment afterwards.

The written raws carry the shared copy's samples unchanged plus a ``STI 014`` stim channel holding each
event's code on its sample; MOABB's own epoching (window [2, 4] s after the event) reads them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from structlab import data
from structlab.atomic import atomic_write_json
from structlab.errors import StructlabError

MOABB_RUNS = (2, 2, 2, 2, 2, 2, 3, 2, 2, 4, 2, 5)  # Kalunga2016.data_path, subjects 1-12
# The sessions the data set's README says its authors excluded (synchronisation, hardware problems).
FLAGGED = {
    ("08", "2013.04.06-16.22.32"),
    ("10", "2014.02.26-15.10.48"),
    ("10", "2014.02.26-15.50.09"),
    ("11", "2014.02.24-17.56.37"),
    ("11", "2014.02.24-18.02.40"),
}
# One recording under two subjects (found by content by the loader; every copy is dropped, as there).
DUPLICATES = {("03", "2012.07.11-15.33.08"), ("07", "2012.07.11-15.33.08")}
SIGN = "SSVEPEXO"  # MOABB's signifier: the folder MNE-ssvepexo-data and the key MNE_DATASETS_SSVEPEXO_PATH
LAYOUT = Path("MNE-ssvepexo-data") / "zenodo" / "2392979"
MANIFEST = "structlab-manifest.json"
FORMAT = "structlab.subject.moabb-layout/1"
LOCAL_TIME = ZoneInfo("Europe/Paris")  # the recordings were made at Versailles
_STAMP = re.compile(r"record-\[(?P<stamp>[0-9.\-]+)\]_raw\.fif$")


@dataclass(frozen=True)
class RecordingRow:
    """One recording of the shared copy and what becomes of it in the MOABB layout."""

    subject: str
    stamp: str  # the file name's time stamp (local time)
    meas_date: str  # the file's own recording date (UTC), ISO format
    clock_offset_hours: float  # file-name stamp minus meas_date
    expected_offset_hours: float  # the UTC offset of local time at the stamp
    flagged: bool
    duplicate: bool
    moabb_run: int | None  # run number in MOABB's numbering (1-based), None if not in MOABB's files
    written: bool  # part of the local MOABB layout
    source: str

    @property
    def clock_as_expected(self) -> bool:
        return abs(self.clock_offset_hours - self.expected_offset_hours) < 1e-6


def recording_table(folder: str | os.PathLike[str]) -> list[RecordingRow]:
    """Every recording of the shared copy with its MOABB run number and the date checks, by subject and time.

    Raises:
        StructlabError: the unflagged recordings do not give MOABB's number of runs for some subject (other
            than subject 12, of which the shared copy lacks two), or their time order by file name differs
            from their order by recording date.
    """
    import mne

    folder = Path(folder)
    rows: list[RecordingRow] = []
    for path in sorted(folder.glob("subject*/record-*_raw.fif")):
        match = _STAMP.search(path.name)
        if match is None:
            continue
        subject = path.parent.name.removeprefix("subject")
        stamp = match["stamp"]
        local = dt.datetime.strptime(stamp, "%Y.%m.%d-%H.%M.%S")
        meas = mne.io.read_info(path, verbose="error")["meas_date"]
        offset = (local - meas.replace(tzinfo=None)).total_seconds() / 3600
        expected = local.replace(tzinfo=LOCAL_TIME).utcoffset().total_seconds() / 3600
        rows.append(RecordingRow(subject, stamp, meas.isoformat(), offset, expected, (subject, stamp) in FLAGGED,
                                 (subject, stamp) in DUPLICATES, None, False, str(path.relative_to(folder))))
    problems = []
    numbered: list[RecordingRow] = []
    for subject in sorted({r.subject for r in rows}):
        mine = sorted((r for r in rows if r.subject == subject), key=lambda r: r.stamp)
        runs = [r for r in mine if not r.flagged]
        by_date = sorted(runs, key=lambda r: r.meas_date)
        if [r.stamp for r in by_date] != [r.stamp for r in runs]:
            problems.append(f"subject {subject}: time order by file name differs from the order by recording date")
        expected = MOABB_RUNS[int(subject) - 1]
        if len(runs) != expected and subject != "12":
            problems.append(f"subject {subject}: {len(runs)} unflagged recordings; MOABB expects {expected} runs")
        for k, r in enumerate(runs, start=1):
            # Subject 12's three recordings are three of MOABB's five runs; which three is not known.
            run = k if subject != "12" else None
            numbered.append(RecordingRow(**{**asdict(r), "moabb_run": run, "written": not r.duplicate}))
        numbered += [r for r in mine if r.flagged]
    if problems:
        raise StructlabError("ssvep-exo: the recordings do not map onto MOABB's runs: " + "; ".join(problems))
    return sorted(numbered, key=lambda r: (r.subject, r.stamp))


def _run_file(subject: str, run: int) -> str:
    return f"subject{subject}_run{run}_raw.fif"


def write_layout(
    cache: str | os.PathLike[str] | None = None,
    folder: str | os.PathLike[str] | None = None,
    progress: bool = False,
    subjects: list[int] | None = None,
) -> Path:
    """Write (or verify) MOABB-layout copies of the shared recordings under ``cache``; returns ``cache``.

    ``cache`` defaults to ``<structlab cache>/moabb`` and must not lie inside ``folder`` (the data set).
    Files already there are kept when they match the manifest (SHA-256) and the sources still match
    structlab's checksums; otherwise they are written again (each atomically). ``subjects`` limits the
    layout to those subjects (default: all).

    Raises:
        DataNotFoundError: the shared copy is not found.
        StructlabError: a source file does not match structlab's checksum, or the runs do not map.
        ValueError: ``cache`` lies inside the data set's folder.
    """
    import mne

    from structlab import runtime

    folder = Path(folder) if folder is not None else data.resolve("ssvep-exo").path
    cache = Path(cache) if cache is not None else data.cache_root() / "moabb"
    if cache.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"cache={str(cache)!r}: inside the data set's folder {str(folder)!r}; expected a cache folder")
    expected = data.checksums("ssvep-exo")
    rows = recording_table(folder)
    if subjects is not None:
        rows = [r for r in rows if int(r.subject) in subjects]
    sources = {}
    for row in rows:
        if not row.written:
            continue
        for path in (folder / row.source, folder / row.source.replace("_raw.fif", "-eve.fif")):
            rel = path.relative_to(folder).as_posix()
            digest = data.sha256_file(path)
            if expected.get(rel) != digest:
                raise StructlabError(f"ssvep-exo: {rel} does not match structlab's checksum (sha256 {digest[:12]}...)")
            sources[rel] = digest
    target = cache / LAYOUT
    manifest_path = target / MANIFEST
    old = _read_manifest(manifest_path)
    files: dict[str, dict] = {}
    subject12 = 0
    todo = [r for r in rows if r.written]
    for row in runtime.progress(todo, desc="MOABB layout", disable=not progress or None):
        if row.moabb_run is None:
            subject12 += 1
            name = _run_file(row.subject, subject12)  # numbered in time order (which of the five is unknown)
        else:
            name = _run_file(row.subject, row.moabb_run)
        entry = {"source": row.source, "source_sha256": sources[row.source]}
        path = target / name
        previous = old.get("files", {}).get(name)
        if (previous and previous.get("source_sha256") == entry["source_sha256"] and path.is_file()
                and data.sha256_file(path) == previous.get("sha256")):
            files[name] = previous
            continue
        raw = mne.io.read_raw_fif(folder / row.source, preload=True, verbose="error")
        events = mne.read_events(folder / row.source.replace("_raw.fif", "-eve.fif"), verbose="error")
        stim = np.zeros((1, raw.n_times))
        stim[0, events[:, 0] - raw.first_samp] = events[:, 2]
        info = mne.create_info(["STI 014"], raw.info["sfreq"], ["stim"])
        with info._unlock():
            info["meas_date"] = raw.info["meas_date"]
        raw.add_channels([mne.io.RawArray(stim, info, first_samp=raw.first_samp, verbose="error")],
                         force_update_info=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name[:-8]}.partial_raw.fif")
        try:
            raw.save(tmp, overwrite=True, verbose="error")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        files[name] = {**entry, "sha256": data.sha256_file(path), "events": int(len(events))}
    stale = set(old.get("files", {})) - set(files)
    for name in stale:
        (target / name).unlink(missing_ok=True)
    atomic_write_json(manifest_path, {
        "format": FORMAT, "files": files, "recordings": [asdict(r) for r in rows],
        "note": "MOABB Kalunga2016 layout written by structlab.subject.moabb_local from the ssvep-exo copy",
    })
    return cache


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return manifest if manifest.get("format") == FORMAT else {}


def verify_layout(cache: str | os.PathLike[str]) -> dict[str, list[str]]:
    """``{subject: [run files]}`` of a written layout after checking every file's SHA-256 against its manifest.

    Raises:
        StructlabError: no manifest, or a file is missing or differs from it.
    """
    target = Path(cache) / LAYOUT
    manifest = _read_manifest(target / MANIFEST)
    if not manifest:
        raise StructlabError(f"cache={str(cache)!r}: no MOABB layout written there (call write_layout first)")
    runs: dict[str, list[str]] = {}
    for name, entry in sorted(manifest["files"].items()):
        path = target / name
        if not path.is_file() or data.sha256_file(path) != entry["sha256"]:
            raise StructlabError(
                f"{path}: missing or changed since it was written (manifest sha256 {entry['sha256'][:12]}...)"
            )
        runs.setdefault(name[len("subject"):len("subject") + 2], []).append(name)
    return {s: sorted(v, key=lambda n: int(n.split("_run")[1].split("_")[0])) for s, v in runs.items()}


@contextlib.contextmanager
def offline_moabb(cache: str | os.PathLike[str]) -> Iterator[Path]:
    """Point MNE/MOABB at ``cache`` and the upstream provider for the duration; the environment is restored."""
    cache = Path(cache)
    settings = {"MNE_DATA": str(cache), f"MNE_DATASETS_{SIGN}_PATH": str(cache),
                "MOABB_DOWNLOAD_PROVIDER": "upstream"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield cache
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def local_dataset(cache: str | os.PathLike[str], subjects: list[int] | None = None):
    """MOABB's ``Kalunga2016``, reading exactly the runs written to ``cache``."""
    from moabb.datasets import Kalunga2016

    runs = verify_layout(cache)
    available = sorted(int(s) for s in runs)

    class Kalunga2016(Kalunga2016):  # noqa: F811 - MOABB requires the class name to abbreviate its code
        """``Kalunga2016`` whose ``data_path`` lists the runs of the local layout (nothing else differs).

        MOABB's own ``data_path`` lists every run it expects and would download the ones the layout lacks
        (the duplicated recording's two copies and two runs of subject 12).
        """

        def data_path(self, subject, path=None, force_update=False, update_path=None, verbose=None):
            if subject not in available:
                raise ValueError(f"subject={subject!r}: not in the local layout (subjects {available})")
            target = Path(cache) / LAYOUT
            return [str(target / name) for name in runs[f"{subject:02d}"]]

    dataset = Kalunga2016()
    dataset.subject_list = [s for s in available if subjects is None or s in subjects]
    return dataset
