"""From raw MNE recordings to checked, de-duplicated, epoched trials, with a report of every fault.

Real recordings have faults, so nothing is trusted before it is checked:

* **channels**: the expected channels must all be there (extra ones are left out, order is fixed);
* **sampling rate**: must be the one the data set documents;
* **events**: each class must have the documented number of trials, and every trial's window must lie
  inside the recording;
* **saturation**: a trial whose raw signal reaches the amplifier's limit is dropped;
* **duplicates**: a recording (or part of one) that appears more than once, under one subject or under
  several, is found by its content: every trial's event-locked raw signal is compared with every other
  trial's (Pearson correlation over all channels; copies correlate at 1.0, independent trials near 0,
  and a copy stays a copy through re-saving, rescaling or trimming). Under one subject the first copy (in
  recording order) is kept; content that appears under several subjects cannot be attributed, so every
  copy is dropped. Either way no trial can reach both the training and the test side of a split.

``on_problem="drop"`` drops what is faulty and records why; ``"raise"`` refuses the data set with the
same report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from structlab.errors import StructlabError
from structlab.subject.trials import Trials

DUPLICATE_CORRELATION = 0.999


@dataclass(frozen=True)
class RecordingSpec:
    """What a data set's recordings must look like."""

    name: str
    channels: tuple[str, ...]
    sfreq: float
    event_id: dict[str, int]  # class name -> event code
    window: tuple[float, float]  # trial window in seconds after the event, [start, stop)
    trials_per_class: int | None = None  # None: any number
    clip_level: float | None = None  # the largest magnitude the amplifier records (in the files' unit)


@dataclass(frozen=True)
class Preprocessing:
    """Band-pass filter (Hz), target sampling rate (Hz) and a constant scale applied to the signal."""

    l_freq: float = 4.0
    h_freq: float = 45.0
    sfreq: float = 128.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.l_freq < self.h_freq:
            raise ValueError(f"l_freq={self.l_freq}, h_freq={self.h_freq}: expected 0 <= l_freq < h_freq")
        if not self.h_freq < self.sfreq / 2:
            raise ValueError(f"h_freq={self.h_freq}: expected below the Nyquist frequency {self.sfreq / 2} Hz")


@dataclass
class Recording:
    """One raw recording and its events (MNE's (n, 3) array of sample, previous value, code)."""

    subject: str
    session: str
    run: str
    source: str  # where it came from (a path), for the report
    raw: object  # mne.io.BaseRaw
    events: np.ndarray

    @property
    def key(self) -> str:
        return f"subject {self.subject} / session {self.session} / run {self.run}"


@dataclass
class Problem:
    """A fault found in a recording and what was done about it."""

    recording: str
    kind: Literal["channels", "sampling rate", "events", "saturation", "duplicate", "flat"]
    detail: str
    action: str


@dataclass
class LoadReport:
    """What was loaded, what was dropped and why."""

    dataset: str
    kept: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)
    trials: int = 0

    def summary(self) -> str:
        lines = [f"{self.dataset}: {len(self.kept)} recordings, {self.trials} trials kept"]
        for p in self.problems:
            lines.append(f"  {p.kind}: {p.recording}: {p.detail} -> {p.action}")
        return "\n".join(lines)

    def as_record(self) -> dict:
        return asdict(self)


def _channel_problem(rec: Recording, spec: RecordingSpec) -> str:
    names = list(rec.raw.ch_names)
    missing = [c for c in spec.channels if c not in names]
    if missing:
        return f"missing channels {missing} (has {names})"
    return ""


def _event_problems(rec: Recording, spec: RecordingSpec) -> tuple[np.ndarray, list[str]]:
    """The events of known classes whose window fits the recording, and what was wrong with the rest."""
    events = np.asarray(rec.events)
    notes = []
    if events.ndim != 2 or events.shape[1] != 3:
        return events[:0], [f"events array of shape {events.shape}; expected (n, 3)"]
    codes = set(spec.event_id.values())
    unknown = sorted(set(events[:, 2].tolist()) - codes)
    if unknown:
        notes.append(f"ignored {int(np.isin(events[:, 2], unknown).sum())} events with unknown codes {unknown}")
    events = events[np.isin(events[:, 2], list(codes))]
    start = events[:, 0] - rec.raw.first_samp + round(spec.window[0] * spec.sfreq)
    stop = events[:, 0] - rec.raw.first_samp + round(spec.window[1] * spec.sfreq)
    inside = (start >= 0) & (stop <= rec.raw.n_times)
    if not inside.all():
        notes.append(f"{int((~inside).sum())} trial windows extend beyond the recording")
    return events[inside], notes


def _segments(rec: Recording, events: np.ndarray, spec: RecordingSpec) -> np.ndarray:
    """Raw event-locked trial windows (n_trials, n_chans, n_samples), the expected channels in order."""
    data = rec.raw.get_data(picks=list(spec.channels), verbose="error")
    offset = round(spec.window[0] * spec.sfreq)
    length = round((spec.window[1] - spec.window[0]) * spec.sfreq)
    starts = events[:, 0] - rec.raw.first_samp + offset
    if not len(starts):
        return np.zeros((0, len(spec.channels), length))
    return np.stack([data[:, s : s + length] for s in starts])


def find_shared_trials(segments: Sequence[np.ndarray], threshold: float = DUPLICATE_CORRELATION):
    """Pairs of trials, in different recordings, whose raw signals are copies of each other.

    ``segments[i]`` holds recording i's trials (n_i, n_chans, n_samples). Returns a list of
    ``((i, trial), (j, trial))`` with ``i < j`` whose Pearson correlation over all channels and samples is
    at least ``threshold``.
    """
    owner, index, vectors = [], [], []
    for i, seg in enumerate(segments):
        for t in range(len(seg)):
            v = seg[t] - seg[t].mean(axis=1, keepdims=True)
            norm = np.linalg.norm(v)
            if norm == 0:
                continue
            owner.append(i)
            index.append(t)
            vectors.append((v / norm).ravel())
    if not vectors:
        return []
    length = min(v.size for v in vectors)
    matrix = np.stack([v[:length] for v in vectors])
    corr = matrix @ matrix.T
    owner_arr = np.array(owner)
    a, b = np.nonzero(np.triu(corr >= threshold, k=1) & (owner_arr[:, None] != owner_arr[None, :]))
    return [((owner[i], index[i]), (owner[j], index[j])) for i, j in zip(a.tolist(), b.tolist(), strict=True)]


def load_trials(
    recordings: Sequence[Recording],
    spec: RecordingSpec,
    preprocessing: Preprocessing = Preprocessing(),
    on_problem: Literal["drop", "raise"] = "drop",
    progress: bool = False,
) -> Trials:
    """Check, de-duplicate, filter and epoch ``recordings`` into :class:`Trials`.

    Trials keep the expected channels in ``spec.channels`` order, band-passed (FIR, MNE's defaults),
    resampled to ``preprocessing.sfreq`` and multiplied by ``preprocessing.scale``. ``trials.info["report"]``
    is the :class:`LoadReport` as a dict.

    Raises:
        StructlabError: ``on_problem="raise"`` and a fault was found (the message is the report), or no
            trial is left.
    """
    import mne

    from structlab import runtime

    if on_problem not in ("drop", "raise"):
        raise ValueError(f"on_problem={on_problem!r}: expected 'drop' or 'raise'")
    report = LoadReport(spec.name)
    kept: list[tuple[Recording, np.ndarray]] = []  # recording, its events
    for rec in recordings:
        problem = _channel_problem(rec, spec)
        if problem:
            report.problems.append(Problem(rec.key, "channels", problem, "recording dropped"))
            continue
        if abs(rec.raw.info["sfreq"] - spec.sfreq) > 1e-6:
            report.problems.append(Problem(
                rec.key, "sampling rate", f"{rec.raw.info['sfreq']} Hz; expected {spec.sfreq} Hz", "recording dropped"
            ))
            continue
        events, notes = _event_problems(rec, spec)
        for note in notes:
            report.problems.append(Problem(rec.key, "events", note, "those events ignored"))
        if spec.trials_per_class is not None:
            counts = {name: int((events[:, 2] == code).sum()) for name, code in spec.event_id.items()}
            if any(c != spec.trials_per_class for c in counts.values()):
                report.problems.append(Problem(
                    rec.key, "events", f"trials per class {counts}; expected {spec.trials_per_class} each",
                    "recording dropped",
                ))
                continue
        kept.append((rec, events))

    # Trial windows of the raw signal: for saturation, flat signals and duplicate content.
    segments = [_segments(rec, events, spec) for rec, events in kept]
    drop = [np.zeros(len(ev), dtype=bool) for _, ev in kept]
    for i, ((rec, _), seg) in enumerate(zip(kept, segments, strict=True)):
        if spec.clip_level is not None:
            saturated = (np.abs(seg) >= spec.clip_level).any(axis=(1, 2))
            if saturated.any():
                drop[i] |= saturated
                report.problems.append(Problem(
                    rec.key, "saturation", f"{int(saturated.sum())} trial(s) reach the amplifier limit "
                    f"+-{spec.clip_level}", "those trials dropped",
                ))
        flat = (seg.std(axis=2) == 0).any(axis=1)
        if flat.any():
            drop[i] |= flat
            report.problems.append(Problem(rec.key, "flat", f"{int(flat.sum())} trial(s) with a flat channel",
                                           "those trials dropped"))
    _drop_duplicates(kept, segments, drop, report)

    if on_problem == "raise" and report.problems:
        raise StructlabError(f"{spec.name}: faults found (on_problem='raise'):\n{report.summary()}")

    X, y, subject, session, run = [], [], [], [], []
    code_to_class = {code: c for c, (_, code) in enumerate(spec.event_id.items())}
    items = [(rec, ev[~d]) for (rec, ev), d in zip(kept, drop, strict=True) if (~d).any()]
    for rec, events in runtime.progress(items, desc=f"{spec.name}: epoching", disable=not progress or None):
        raw = rec.raw.copy().pick(list(spec.channels)).load_data(verbose="error")
        raw.filter(preprocessing.l_freq, preprocessing.h_freq, verbose="error")
        epochs = mne.Epochs(
            raw, events, tmin=spec.window[0], tmax=spec.window[1] - 1.0 / spec.sfreq, baseline=None,
            preload=True, reject_by_annotation=False, event_repeated="error", verbose="error",
        )
        if preprocessing.sfreq != spec.sfreq:
            factor = spec.sfreq / preprocessing.sfreq
            if abs(factor - round(factor)) < 1e-9:
                epochs.decimate(round(factor), verbose="error")  # safe: low-passed below the new Nyquist
            else:
                epochs.resample(preprocessing.sfreq, verbose="error")
        X.append((epochs.get_data(copy=False) * preprocessing.scale).astype(np.float32))
        y.append(np.array([code_to_class[c] for c in epochs.events[:, 2]], dtype=np.int64))
        n = len(epochs)
        subject.append(np.full(n, rec.subject))
        session.append(np.full(n, rec.session))
        run.append(np.full(n, rec.run))
        report.kept.append(rec.key)
    if not X:
        raise StructlabError(f"{spec.name}: no trials left after the checks:\n{report.summary()}")
    report.trials = int(sum(len(v) for v in y))
    return Trials(
        np.concatenate(X), np.concatenate(y), np.concatenate(subject).astype(str),
        np.concatenate(session).astype(str), np.concatenate(run).astype(str), list(spec.channels),
        preprocessing.sfreq, list(spec.event_id), info={"dataset": spec.name, "report": report.as_record(),
                                                        "preprocessing": asdict(preprocessing)},
    )


def _drop_duplicates(kept, segments, drop, report: LoadReport) -> None:
    """Mark shared trials for dropping (see the module docstring) and report each group of recordings."""
    pairs = find_shared_trials(segments)
    if not pairs:
        return
    # Group recordings that share content (union-find over recording indices).
    parent = list(range(len(kept)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (i, _), (j, _) in pairs:
        parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in sorted({i for pair in pairs for i, _ in pair}):
        groups.setdefault(root(i), []).append(i)
    for members in groups.values():
        report.duplicate_groups.append([kept[i][0].key for i in members])
        subjects = sorted({kept[i][0].subject for i in members})
        group_pairs = [(a, b) for a, b in pairs if a[0] in members]
        for a, b in group_pairs:  # a precedes b in recording order
            drop[b[0]][b[1]] = True
            if len(subjects) > 1:  # content under several subjects cannot be attributed: every copy goes
                drop[a[0]][a[1]] = True
        for i in members:
            copied = {t for a, b in group_pairs for r, t in (a, b) if r == i}
            others = sorted({kept[r][0].key for a, b in group_pairs for r, _ in (a, b) if i in (a[0], b[0]) and r != i})
            if len(subjects) > 1:
                action = "every copy dropped"
            elif i == members[0]:
                action = "kept (first copy)"
            else:
                action = "later copies dropped"
            report.problems.append(Problem(
                kept[i][0].key, "duplicate",
                f"{len(copied)} of {len(segments[i])} trials are copies of trials in {others}"
                + (f" (recorded under different subjects: {subjects})" if len(subjects) > 1 else ""),
                action,
            ))
