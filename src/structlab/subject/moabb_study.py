"""The ``moabb`` study: MOABB's own evaluations of its SSVEP pipelines and of our networks, on the local copy.

MOABB runs everything here: its ``Kalunga2016`` data set (read from the MOABB-layout copy that
:mod:`structlab.subject.moabb_local` writes), its ``SSVEP`` / ``FilterBankSSVEP`` paradigms, its
``WithinSessionEvaluation`` and ``CrossSubjectEvaluation`` (train-only, and with a labelled 20% of the
target subject: ``CrossSubjectMode.TRAIN_AND_TARGET_LABELED_20P``), and its results table. The pipelines:

* MOABB's SSVEP pipelines as its benchmark defines them (``pipelines/*SSVEP*.yml``): ``SSVEP_CCA`` (3
  harmonics), ``SSVEP_TRCA``, ``SSVEP_MsetCCA`` on ``SSVEP`` epochs, and tangent space + logistic regression on
  ``FilterBankSSVEP`` (``ExtendedSSVEPSignal``, OAS covariances, ``TangentSpace(metric="riemann")``,
  ``LogisticRegression(C=1)``). MOABB 1.7's CCA/TRCA read each class's stimulation frequency from the labels,
  so they run with MOABB's ``mne_labels=True`` (labels "13", "17", "21"); with MOABB's default (encoded)
  labels the event names of these epochs are the event codes "2", "3", "4", and CCA builds its references
  at 2-4 Hz (measured below). They model the three flicker classes only, so the main task is 3-class; the
  tangent space and the networks also run the 4-class task with rest.
* our networks as scikit-learn estimators (:class:`structlab.subject.estimators.NetClassifier`, skorch), plain
  and subject-conditioned; the subject ids reach them through the epochs' metadata.
* a diagnostic: the same tangent space with Butterworth filter-bank covariances
  (:class:`structlab.subject.riemann.FilterBankCovariances`).

Why TRCA and MsetCCA stay near chance here is measured, not assumed: both average trials of a class into
templates, which keeps an SSVEP only when its phase is locked to the trial onset (as in the benchmark data
sets they were made for). The phase-locking value across trials of a class at the stimulation frequency is
reported next to its chance level, for these recordings and for synthetic phase-locked and random-phase
SSVEPs on which TRCA is run the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from structlab import data
from structlab.reproduce import StudyContext, fingerprint, study
from structlab.results import Claim, StudyResult, Table
from structlab.subject import moabb_local

SSVEP_EVENTS = ["13", "17", "21"]
TASKS = {"3-class (13/17/21 Hz)": (SSVEP_EVENTS, 3), "4-class (with rest)": (["13", "17", "21", "rest"], 4)}
MAIN_TASK = "3-class (13/17/21 Hz)"


@dataclass
class MoabbPlan:
    """What one scale of the ``moabb`` study runs."""

    subjects: list[int] | None  # None: all subjects of the local layout
    tasks: list[str]
    evaluations: list[str]  # "within-session", "cross-subject", "cross-subject + 20% labelled target"
    backbones: list[str]
    net: dict = field(default_factory=dict)  # NetClassifier settings
    seeds: list[int] = field(default_factory=lambda: [0])
    classical: bool = True


MOABB_PLANS = {
    # quick: a smoke test of the whole chain (layout, MOABB evaluations, every pipeline family, the tables):
    # two subjects, the 3-class task, networks trained for a few epochs. Its scores mean nothing.
    "quick": MoabbPlan(subjects=[1, 2], tasks=[MAIN_TASK], evaluations=["within-session", "cross-subject"],
                       backbones=["eegnet"], net={"max_epochs": 3}),
    # full: every subject, both tasks, the three evaluations, EEGNet plain and subject-conditioned, 60 epochs.
    # About 2.5 h on one core (quick's CPU time scaled: ~10 min of classical pipelines, ~20 s of network training
    # per within-session fold and ~1 min per cross-subject fold); MOABB's folds and the subjects give the spread.
    "full": MoabbPlan(subjects=None, tasks=list(TASKS),
                      evaluations=["within-session", "cross-subject", "cross-subject + 20% labelled target"],
                      backbones=["eegnet"], net={"max_epochs": 60}, seeds=[0]),
}


def classical_pipelines(task: str) -> dict[str, tuple[str, object]]:
    """MOABB's SSVEP pipelines for ``task``: name -> (paradigm kind, estimator)."""
    from moabb.pipelines import ExtendedSSVEPSignal
    from moabb.pipelines.classification import SSVEP_CCA, SSVEP_TRCA, SSVEP_MsetCCA
    from pyriemann.estimation import Covariances
    from pyriemann.tangentspace import TangentSpace
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from structlab.subject.riemann import FilterBankCovariances

    pipelines = {
        "TS+LR (MOABB filter bank)": ("filterbank", make_pipeline(
            ExtendedSSVEPSignal(), Covariances(estimator="oas"), TangentSpace(metric="riemann"),
            LogisticRegression(C=1.0, max_iter=1000))),
        "TS+LR (Butterworth filter bank)": ("ssvep", make_pipeline(
            FilterBankCovariances(), TangentSpace(metric="riemann"), LogisticRegression(C=1.0, max_iter=1000))),
    }
    if TASKS[task][1] == 3:  # CCA, TRCA and MsetCCA model the flicker classes only
        pipelines = {
            "CCA": ("ssvep", make_pipeline(SSVEP_CCA(n_harmonics=3))),
            "TRCA": ("ssvep", make_pipeline(SSVEP_TRCA(n_fbands=3))),
            "MsetCCA": ("ssvep", make_pipeline(SSVEP_MsetCCA())),
            **pipelines,
        }
    return pipelines


def net_pipelines(plan: MoabbPlan) -> dict[str, object]:
    """Our networks, plain and subject-conditioned, for every backbone and seed."""
    from sklearn import config_context

    from structlab.subject.estimators import NetClassifier

    out = {}
    for backbone in plan.backbones:
        for conditioned in (False, True):
            for seed in plan.seeds:
                est = NetClassifier(backbone=backbone, subject_conditioned=conditioned, seed=seed, **plan.net)
                with config_context(enable_metadata_routing=True):
                    est.set_fit_request(X_target_labeled=True, y_target_labeled=True, subjects=False)
                kind = "subject-conditioned" if conditioned else "plain"
                out[f"{backbone} ({kind}, seed {seed})"] = est
    return out


def _evaluation(name: str, paradigm, dataset, hdf5: Path, mne_labels: bool, return_epochs: bool):
    from moabb.evaluations import CrossSubjectEvaluation, WithinSessionEvaluation
    from moabb.evaluations.protocols import CrossSubjectMode

    # overwrite=False: MOABB skips the pipelines whose results its hdf5 file already holds (a resumed run)
    common = dict(paradigm=paradigm, datasets=[dataset], overwrite=False, hdf5_path=str(hdf5), mne_labels=mne_labels,
                  return_epochs=return_epochs, n_jobs=1, random_state=0)
    if name == "within-session":
        return WithinSessionEvaluation(**common)
    if name == "cross-subject":
        return CrossSubjectEvaluation(**common)
    return CrossSubjectEvaluation(cs_mode=CrossSubjectMode.TRAIN_AND_TARGET_LABELED_20P, **common)


def results_store(ctx: StudyContext, plan: MoabbPlan) -> Path:
    """The folder of MOABB's hdf5 results for this code and plan, so a stopped study resumes.

    MOABB stores a result under its pipeline, data set and subject, and one file per paradigm and evaluation
    class: a different plan (other subjects change every cross-subject fold), another task or scale and any
    change to the part's code must not find those, so the folder is named by all of them, and each task and
    evaluation gets its own below it.
    """
    key = json.dumps([fingerprint(ctx.part, ctx.scale), dataclasses.asdict(plan)], sort_keys=True, default=str)
    return ctx.out_dir / "moabb_hdf5" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _batches(pipelines: dict) -> list[dict]:
    """MOABB stores an evaluation's results when all its pipelines are done: the classical pipelines (minutes)
    go in one evaluation, each network (the hours) in its own, so a stop loses at most one network's folds."""
    from structlab.subject.estimators import NetClassifier

    cheap = {name: p for name, p in pipelines.items() if not isinstance(p, NetClassifier)}
    return ([cheap] if cheap else []) + [{name: p} for name, p in pipelines.items() if name not in cheap]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_moabb(ctx: StudyContext, plan: MoabbPlan, cache=None):
    """Every evaluation x task x pipeline of ``plan`` through MOABB; returns MOABB's results table (pandas)."""
    import pandas as pd
    from moabb.paradigms import SSVEP, FilterBankSSVEP

    cache = moabb_local.write_layout(cache, progress=True, subjects=plan.subjects)
    frames = []
    with moabb_local.offline_moabb(cache):
        import moabb

        moabb.set_log_level("error")
        dataset = moabb_local.local_dataset(cache, plan.subjects)
        store = results_store(ctx, plan)
        for task in plan.tasks:
            events, n_classes = TASKS[task]
            paradigms = {"ssvep": SSVEP(events=events, n_classes=n_classes),
                         "filterbank": FilterBankSSVEP(events=events, n_classes=n_classes)}
            groups: dict[str, dict] = {"ssvep": {}, "filterbank": {}}
            if plan.classical:
                for name, (kind, pipeline) in classical_pipelines(task).items():
                    groups[kind][name] = pipeline
            groups["ssvep"].update(net_pipelines(plan))
            for evaluation in plan.evaluations:
                for kind, pipelines in groups.items():
                    for batch in _batches(pipelines):
                        ctx.log(f"MOABB {evaluation}, {task}, {kind} paradigm: {', '.join(batch)}")
                        started = time.perf_counter()
                        ev = _evaluation(evaluation, paradigms[kind], dataset, store / _slug(task) / _slug(evaluation),
                                         mne_labels=kind == "ssvep", return_epochs=kind == "ssvep")
                        frame = ev.process(batch)
                        frame["evaluation"] = evaluation
                        frame["task"] = task
                        frames.append(frame)
                        ctx.log(f"  {time.perf_counter() - started:.0f} s")
    results = pd.concat(frames, ignore_index=True)
    return results, cache


# --- diagnostics ------------------------------------------------------------------------------------

def cca_default_label_frequencies(cache) -> dict[str, float]:
    """The reference frequencies SSVEP_CCA builds with MOABB's default (encoded) labels on these epochs."""
    from moabb.paradigms import SSVEP
    from moabb.pipelines.classification import SSVEP_CCA
    from sklearn.preprocessing import LabelEncoder

    with moabb_local.offline_moabb(cache):
        dataset = moabb_local.local_dataset(cache, [1])
        X, y, _ = SSVEP(events=SSVEP_EVENTS, n_classes=3).get_data(dataset, [1], return_epochs=True)
        encoder = LabelEncoder().fit(y)
        cca = SSVEP_CCA().fit(X, encoder.transform(y))
    names = {code: name for name, code in X.event_id.items()}
    out = {}
    for c, f in cca.class_freqs_.items():
        label = encoder.inverse_transform([c])[0]
        code = int(X.events[np.flatnonzero(np.asarray(y) == label)[0], 2])
        out[f"{label} Hz (encoded label {c}, epochs' event name {names[code]!r})"] = float(f)
    return out


def phase_locking(cache, subjects: list[int] | None) -> list[list]:
    """Per subject and class: the phase-locking value across trials at the stimulation frequency (Oz)."""
    from moabb.paradigms import SSVEP

    rows = []
    with moabb_local.offline_moabb(cache):
        dataset = moabb_local.local_dataset(cache, subjects)
        X, y, meta = SSVEP(events=SSVEP_EVENTS, n_classes=3).get_data(dataset, dataset.subject_list)
    sfreq = 256.0
    for subject in sorted(set(meta.subject)):
        for f in SSVEP_EVENTS:
            mask = (meta.subject.to_numpy() == subject) & (y == f)
            rows.append([int(subject), f, int(mask.sum()), round(_plv(X[mask][:, 0], float(f), sfreq), 3),
                         round(float(1 / np.sqrt(mask.sum())), 3)])
    return rows


def _plv(x: np.ndarray, freq: float, sfreq: float) -> float:
    """|mean over trials of the unit phasor of each trial's Fourier coefficient at ``freq``|."""
    t = np.arange(x.shape[-1]) / sfreq
    z = (x * np.exp(-2j * np.pi * freq * t)).sum(-1)
    return float(abs((z / abs(z)).mean()))


def trca_on_synthetic(seed: int = 0) -> dict[str, float]:
    """MOABB's TRCA (5-fold CV) on synthetic 3-class SSVEP trials with phase-locked vs. random phases."""
    import mne
    from moabb.pipelines.classification import SSVEP_TRCA
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(seed)
    sfreq, n_times, n_chans, per_class = 256.0, 513, 8, 16
    t = np.arange(n_times) / sfreq
    mixing = rng.normal(size=n_chans)
    out = {}
    for name, random_phase in (("phase-locked", False), ("random phase", True)):
        X, y = [], []
        for f in SSVEP_EVENTS:
            for _ in range(per_class):
                phase = rng.uniform(0, 2 * np.pi) if random_phase else 0.0
                signal = np.sin(2 * np.pi * float(f) * t + phase)
                X.append(np.outer(mixing, signal) + rng.normal(scale=3.0, size=(n_chans, n_times)))
                y.append(f)
        info = mne.create_info([f"EEG{i}" for i in range(n_chans)], sfreq, "eeg")
        codes = {f: i + 1 for i, f in enumerate(SSVEP_EVENTS)}
        events = np.array([[i * n_times, 0, codes[label]] for i, label in enumerate(y)])
        epochs = mne.EpochsArray(np.array(X) * 1e-6, info, events=events, event_id=codes, verbose="error")
        labels, scores = np.array(y), []
        for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(labels, labels):
            model = SSVEP_TRCA(n_fbands=3).fit(epochs[train], labels[train])
            scores.append(float(np.mean(np.asarray(model.predict(epochs[test])) == labels[test])))
        out[name] = float(np.mean(scores))
    return out


def filter_bank_leakage() -> list[list]:
    """Gain of MOABB's FilterBankSSVEP band filters (MNE FIR defaults, 256 Hz) at each stimulation frequency."""
    import mne
    from scipy import signal

    rows = []
    for f in SSVEP_EVENTS:
        h = mne.filter.create_filter(None, 256.0, float(f) - 0.5, float(f) + 0.5, verbose="error")
        _, response = signal.freqz(h, worN=[float(g) for g in SSVEP_EVENTS], fs=256.0)
        rows.append([f"{float(f) - 0.5}-{float(f) + 0.5} Hz", *[round(float(abs(r)), 3) for r in response]])
    return rows


# --- the study --------------------------------------------------------------------------------------

@study("subject", "moabb", title="MOABB's evaluations on the SSVEP exoskeleton copy: its pipelines and our networks")
def moabb_study(ctx: StudyContext) -> StudyResult:
    return run_moabb_study(ctx, MOABB_PLANS[ctx.scale])


def run_moabb_study(ctx: StudyContext, plan: MoabbPlan, cache=None) -> StudyResult:
    from structlab.atomic import atomic_write_bytes

    results, cache = run_moabb(ctx, plan, cache)
    csv_path = ctx.out_dir / "moabb_results.csv"
    atomic_write_bytes(csv_path, results.to_csv(index=False).encode())

    table_rows, metrics = [], {}
    for (evaluation, task, pipeline), group in results.groupby(["evaluation", "task", "pipeline"], sort=False):
        per_subject = group.groupby("subject").score.mean()
        metrics[f"{evaluation} | {task} | {pipeline}"] = {"mean": float(per_subject.mean()),
                                                          "std": float(per_subject.std(ddof=1) or 0.0),
                                                          "subjects": int(len(per_subject))}
        table_rows.append([evaluation, task, pipeline, round(float(per_subject.mean()), 4),
                           round(float(per_subject.std(ddof=1)) if len(per_subject) > 1 else 0.0, 4),
                           len(per_subject), round(float(group.time.mean()), 2)])
    side_by_side = Table(
        "MOABB scores: its SSVEP pipelines and our networks (accuracy, mean and std over subjects)",
        ["evaluation", "task", "pipeline", "score", "std over subjects", "subjects", "fit seconds"], table_rows,
        note="MOABB's own evaluations and results table (moabb_results.csv beside this file; the same rows are "
             "under metrics.moabb_results). Chance is "
             "1/3 (3-class) and 1/4 (4-class). Networks: one row per seed.",
    )
    rows = moabb_local.recording_table(data.resolve("ssvep-exo").path)
    recordings = Table(
        "Recordings -> MOABB runs, with the date check (file-name time stamp minus the file's UTC date)",
        ["subject", "recording", "flagged by the README", "duplicate", "MOABB run", "in the layout",
         "clock offset (h)", "local UTC offset (h)"],
        [[r.subject, r.stamp, r.flagged, r.duplicate, r.moabb_run, r.written, r.clock_offset_hours,
          r.expected_offset_hours] for r in rows],
        note="Run k of a subject is its k-th unflagged recording in time order (subject 12: 3 of MOABB's 5 runs, "
             "which three is not known, numbered in time order). The duplicated recording (subject 03 / 07) is "
             "left out under both subjects, as the loader does.",
    )
    plv = phase_locking(cache, plan.subjects)
    synthetic = trca_on_synthetic()
    cca_freqs = cca_default_label_frequencies(cache)
    leakage = filter_bank_leakage()
    flagged_clock = all(not r.clock_as_expected for r in rows if r.flagged)
    unflagged_clock = all(r.clock_as_expected for r in rows if not r.flagged)
    plv_values = [r[3] for r in plv]
    chance_values = [r[4] for r in plv]
    tables = [
        side_by_side,
        Table("Where MOABB's protocols differ from ours", ["", "MOABB", "structlab ssvep study"], _protocol_rows()),
        recordings,
        Table("Phase locking across trials at the stimulation frequency (Oz, [2, 4] s; 1 = locked, chance "
              "~ 1/sqrt(trials))", ["subject", "class (Hz)", "trials", "PLV", "chance level"], plv),
        Table("MOABB's TRCA (5-fold CV) on synthetic 3-class SSVEP trials", ["phases", "accuracy"],
              [[k, round(v, 3)] for k, v in synthetic.items()],
              note="Same SNR, same spatial pattern; only whether the phase is locked to the trial onset differs."),
        Table("Gain of MOABB's FilterBankSSVEP band filters at each stimulation frequency",
              ["band", *[f"gain at {f} Hz" for f in SSVEP_EVENTS]], leakage),
        Table("Reference frequencies SSVEP_CCA builds with MOABB's default (encoded) labels",
              ["class", "reference frequency (Hz)"], [[k, v] for k, v in cca_freqs.items()]),
    ]
    main = {p: metrics.get(f"within-session | {MAIN_TASK} | {p}", {}).get("mean") for p in ("CCA", "TRCA", "MsetCCA")}
    claims = [
        Claim("MOABB runs on the local copy with no network access (its own data set class, paradigms and "
              "evaluations; sockets guarded in the tests)", f"{len(results)} MOABB result rows", "agrees"),
        Claim("The unflagged recordings map onto MOABB's runs, and the flagged sessions are the ones with a "
              "wrong clock", f"unflagged: clock = local time - UTC offset for all: {unflagged_clock}; flagged: "
              f"clock without offset for all: {flagged_clock}",
              "agrees" if flagged_clock and unflagged_clock else "disagrees"),
        Claim("TRCA and MsetCCA near chance here because the SSVEP is not phase-locked to the trial onset",
              f"within-session 3-class: CCA {_fmt(main['CCA'])}, TRCA {_fmt(main['TRCA'])}, MsetCCA "
              f"{_fmt(main['MsetCCA'])}; PLV median {np.median(plv_values):.2f} vs chance "
              f"{np.median(chance_values):.2f}; TRCA on synthetic trials: phase-locked "
              f"{synthetic['phase-locked']:.2f}, random phase {synthetic['random phase']:.2f}",
              "agrees" if synthetic["phase-locked"] > 0.9 > synthetic["random phase"] + 0.3 else "inconclusive",
              "TRCA and MsetCCA average a class's trials into templates; a random phase averages the SSVEP away. "
              "CCA uses sinusoidal references and fits the phase per trial."),
    ]
    figures = [_scores_figure(ctx, results)]
    return StudyResult(
        part="subject", study=ctx.study, title="MOABB's evaluations on the SSVEP exoskeleton copy", scale=ctx.scale,
        figures=figures,
        summary=f"{len(results)} MOABB result rows ({', '.join(plan.evaluations)}; {', '.join(plan.tasks)}).",
        config={"plan": dataclasses.asdict(plan), "cache": str(cache), "moabb_results": csv_path.name},
        seeds=plan.seeds, data=[data.resolve("ssvep-exo").as_record()],
        metrics={"scores": metrics, "cca_default_label_frequencies": cca_freqs, "trca_synthetic": synthetic,
                 "moabb_results": results.to_dict(orient="records")},
        tables=tables, claims=claims,
    )


def _scores_figure(ctx: StudyContext, results) -> str:
    """Mean score per pipeline (subjects as points) for each evaluation of the main task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = results[results.task == MAIN_TASK]
    evaluations = list(dict.fromkeys(main.evaluation))
    pipelines = list(dict.fromkeys(main.pipeline))
    fig, axes = plt.subplots(1, len(evaluations), figsize=(4.5 * len(evaluations), 4.5), sharey=True, squeeze=False)
    for ax, evaluation in zip(axes[0], evaluations, strict=True):
        part = main[main.evaluation == evaluation]
        for i, pipeline in enumerate(pipelines):
            per_subject = part[part.pipeline == pipeline].groupby("subject").score.mean()
            if len(per_subject):
                ax.bar(i, per_subject.mean(), color="tab:blue" if "(" not in pipeline or "filter bank" in pipeline
                       else "tab:orange")
                ax.plot([i] * len(per_subject), per_subject.values, "k.", ms=3)
        ax.axhline(1 / 3, color="grey", ls=":", lw=0.8)
        ax.set_xticks(range(len(pipelines)))
        ax.set_xticklabels(pipelines, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{evaluation}", fontsize=9)
    axes[0][0].set_ylabel("MOABB score (accuracy)")
    fig.suptitle(f"{MAIN_TASK}: bars are means over subjects, dots are subjects; orange: our networks", fontsize=9)
    fig.tight_layout()
    path = ctx.figure_path("scores.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def _fmt(value) -> str:
    return "not run" if value is None else f"{value:.3f}"


def _protocol_rows() -> list[list[str]]:
    return [
        ["sessions", "every run of a subject in one session '0' (CrossSessionEvaluation finds nothing to split)",
         "each recording is a session; pooled cross-session trains on every subject's first and tests on the "
         "later ones"],
        ["within-subject", "WithinSessionEvaluation: 5-fold CV over a subject's pooled runs (trials of one "
         "recording on both sides)", "pooled cross-session: no recording on both sides"],
        ["unseen subject", "CrossSubjectEvaluation: leave one subject out, no target data (zero-shot)",
         "loso-zero-shot: the same, tested on the held-out subject's later sessions"],
        ["calibration", "TRAIN_AND_TARGET_LABELED_20P: a random 20% of the target's trials, labelled",
         "loso-calibration-k: k class-balanced trials of the first session, tested on later sessions"],
        ["window", "[2, 4] s after the event, 256 Hz, 7-45 Hz", "[1, 5) s after the event, 128 Hz, 4-45 Hz"],
        ["subjects", "subject 03 with 1 run, subject 07 with 2 (duplicate dropped), subject 12 with 3 of 5",
         "the same recordings (the loader's checks), plus saturated trials dropped"],
    ]
