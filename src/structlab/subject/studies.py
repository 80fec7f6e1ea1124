"""The subject studies of ``structlab reproduce``: the paper's claim on real EEG, and a synthetic control.

* ``ssvep``: the SSVEP exoskeleton recordings (synthetic stand-in, labelled as such, where they are
  absent). The paper's protocol (pooled cross-session) for several backbones, then the question users
  ask (a subject the model has never seen: zero-shot and with k calibration trials), a rank sweep and
  which layers the adapters help in, with paired statistics over subjects.
* ``synthetic``: subjects whose data differ by a low-rank change of the spatial mixing of known size,
  from none to strong: where subject-conditioned layers must help if they work at all.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from structlab import data, runtime
from structlab.errors import DataNotFoundError
from structlab.jobs import Job
from structlab.reproduce import StudyContext, study
from structlab.results import Claim, StudyResult, Table, spread
from structlab.subject import evaluation as ev
from structlab.subject import ssvep_exo, synthetic
from structlab.subject.evaluation import EvalConfig, Record
from structlab.subject.protocols import held_out_subjects
from structlab.subject.stats import PairedComparison, paired_comparison
from structlab.subject.training import TrainConfig
from structlab.subject.trials import Trials

# Where the adapters go in the main runs: as in the authors' released EEGNeX code, on the temporal
# convolutions, not on the spatial (channel-mixing) convolution nor on the classifier.
TEMPORAL_ONLY = {
    "eegnet": ["features.2", "classifier"],
    "shallow": ["features.1", "classifier"],
    "eegnex": ["block_3.0", "final_layer"],
    "pbt": ["final_layer"],
}
MAIN_LAYERS = "temporal convs (main)"
# Other layer sets of EEGNet (structlab.subject.backbones.EEGNet) for the "which layers" study (include=...).
EEGNET_LAYERS = {
    "all layers": None,
    "temporal + spatial convs": ["features.0", "features.2", "features.7", "features.8"],
    "temporal convs + classifier": ["features.0", "features.7", "features.8", "classifier"],
    "first temporal conv only": ["features.0"],
    "spatial depthwise conv only": ["features.2"],
    "classifier only": ["classifier"],
}


@dataclass
class Plan:
    """What one scale of the ``ssvep`` study runs."""

    seeds: list[int]
    backbones: list[str]  # for the pooled cross-session protocol
    train: TrainConfig
    per_subject_steps: int
    loso_subjects: int | None  # how many subjects to hold out (None: all with two sessions)
    ks: tuple[int, ...]
    loso_methods: tuple[str, ...]
    pooled_methods: tuple[str, ...]
    ranks: tuple[int, ...]  # the rank sweep (the main runs give rank 4)
    layer_sets: dict[str, list[str] | None] = field(default_factory=dict)  # include=...; the main runs give theirs
    pooled_seeds: dict[str, int] = field(default_factory=dict)  # fewer seeds for a costly backbone
    loso_seeds: int | None = None  # how many of ``seeds`` (None: all)
    sweep_seeds: int | None = None
    calibration_epochs: int = 100
    fine_tune_epochs: int = 100
    workers: int = 2  # processes (at most the cores there are)


# quick is a smoke test of the whole pipeline (every protocol, method family and table in about a minute
# on 2 cores), not a measurement: its models train for a few dozen steps. full is the measurement: the
# pooled protocol (the paper's) with the paper's two backbones, EEGNeX and the patched transformer (PBT),
# beside EEGNet; LOSO, calibration and the sweeps with EEGNet. A training step of 64 subject-conditioned
# trials costs 0.16 s of CPU for EEGNet, 1.37 s for EEGNeX and 0.86 s for the PBT (one thread), so the
# EEGNeX and PBT pooled jobs add about 2-2.5 h to EEGNet's ~35 min on one core (see docs/subject.md).
PLANS = {
    "quick": Plan(
        seeds=[0],
        backbones=["eegnet"],
        train=TrainConfig(steps=40),
        per_subject_steps=10,
        loso_subjects=2,
        ks=(4, 32),
        loso_methods=(ev.SHARED, ev.CONDITIONED_DROPOUT, ev.FINE_TUNE, ev.ADAPTER, ev.TANGENT),
        pooled_methods=(ev.SHARED, ev.PER_SUBJECT, ev.CONDITIONED_DROPOUT, ev.TANGENT),
        ranks=(1,),
        layer_sets={},
        calibration_epochs=10,
        fine_tune_epochs=10,
    ),
    "full": Plan(
        seeds=[0, 1, 2],
        backbones=["eegnet", "eegnex", "pbt"],
        train=TrainConfig(steps=250),
        per_subject_steps=60,
        loso_subjects=6,  # the fewest with which a two-sided Wilcoxon test over subjects can reach p < 0.05
        ks=(4, 8, 16, 32),
        # without subject dropout, the conditioned model is compared in the pooled protocol only (cost)
        loso_methods=(ev.SHARED, ev.CONDITIONED_DROPOUT, ev.FINE_TUNE, ev.ADAPTER, ev.TANGENT),
        pooled_methods=ev.POOLED_METHODS,
        ranks=(1, 2, 8, 16),
        layer_sets=EEGNET_LAYERS,
        loso_seeds=2,
        sweep_seeds=1,
        calibration_epochs=50,
        fine_tune_epochs=50,
        workers=1,
    ),
}


def _config(plan: Plan, backbone: str = "eegnet", **overrides) -> EvalConfig:
    settings = {"exclude": TEMPORAL_ONLY.get(backbone, []), **overrides}
    return EvalConfig(
        backbone=backbone, train=plan.train, per_subject_steps=plan.per_subject_steps,
        calibration_epochs=plan.calibration_epochs, fine_tune_epochs=plan.fine_tune_epochs, **settings,
    )


def load_trials(ctx: StudyContext) -> Trials:
    """The SSVEP exoskeleton trials, or a synthetic stand-in of the same shape (labelled synthetic)."""
    try:
        return ssvep_exo.load(progress=True)
    except DataNotFoundError as err:
        ctx.log(f"ssvep-exo not found ({err}); using synthetic subjects instead (results labelled synthetic)")
        config = synthetic.SyntheticConfig(n_times=512)
        return synthetic.generate(config, seed=0)


@study("subject", "ssvep", title="Subject-conditioned layers on real SSVEP EEG: pooled, unseen and calibrated subjects")
def ssvep_study(ctx: StudyContext) -> StudyResult:
    return run_ssvep(ctx, PLANS[ctx.scale], load_trials(ctx))


def run_ssvep(ctx: StudyContext, plan: Plan, trials: Trials) -> StudyResult:
    """Every part of the ``ssvep`` study under ``plan`` on ``trials``.

    All trainings are independent jobs (each seeded on its own), run by the study's executor (locally in
    ``plan.workers`` processes) and stored as they finish, so a stopped study resumes.
    """
    jobs: list[tuple[str, str, tuple]] = []  # (kind, label for sweeps, arguments)
    for backbone in plan.backbones:
        for seed in plan.seeds[: plan.pooled_seeds.get(backbone, len(plan.seeds))]:
            jobs.append(("pooled", "", (trials, _config(plan, backbone), seed, plan.pooled_methods)))
    held_out = held_out_subjects(trials)[: plan.loso_subjects] if plan.loso_subjects else None
    for seed in plan.seeds[: plan.loso_seeds]:
        jobs += [("loso", "", job) for job in ev.loso_jobs(trials, _config(plan), seed, plan.ks, held_out,
                                                               plan.loso_methods)]
    # The rank sweep and the layer sets: subject-conditioned + dropout, EEGNet, pooled cross-session.
    sweeps = [(f"rank {r}", {"rank": r}) for r in plan.ranks]
    sweeps += [(name, {"include": layers, "exclude": []}) for name, layers in plan.layer_sets.items()]
    for (name, overrides), seed in [(v, s) for v in sweeps for s in plan.seeds[: plan.sweep_seeds]]:
        jobs.append(("pooled", name, (trials, _config(plan, **overrides), seed, (ev.CONDITIONED_DROPOUT,))))
    workers = _workers(ctx, plan.workers)
    ctx.log(f"{len(jobs)} jobs ({sum(k == 'loso' for k, _, _ in jobs)} leave-one-subject-out folds) "
            f"on {workers} {ctx.executor.name} workers")
    outputs = _run_jobs(ctx, [(_job_key(kind, label, args), kind, args) for kind, label, args in jobs],
                        workers, "subject study")
    records: list[Record] = []
    variants: list[Record] = []
    for (_, label, _), out in zip(jobs, outputs, strict=True):
        if not label:
            records += out
        else:
            variants += [dataclasses.replace(r, method=label) for r in out if r.method == ev.CONDITIONED_DROPOUT]
    # The main runs are the sweeps' rank-4, temporal-convs point (same configuration and seeds).
    sweep_seeds = set(plan.seeds[: plan.sweep_seeds])
    main = [r for r in records if r.protocol == "pooled-cross-session" and r.method == ev.CONDITIONED_DROPOUT
            and r.backbone == "eegnet" and r.seed in sweep_seeds]
    if plan.ranks:
        variants += [dataclasses.replace(r, method=f"rank {_config(plan).rank}") for r in main]
    if plan.layer_sets:
        variants += [dataclasses.replace(r, method=MAIN_LAYERS) for r in main]
    return _ssvep_result(ctx, plan, trials, records, variants)


def _workers(ctx: StudyContext, planned: int) -> int:
    """Jobs at once: the run's choice (``--workers``) where it made one, else the plan's, at most the cores."""
    return ctx.executor.workers or min(planned, runtime.cpu_count())


def _run_jobs(ctx: StudyContext, jobs: list[tuple[str, str, tuple]], workers: int, desc: str) -> list[list[Record]]:
    """The records of each (key, kind, arguments) job, run by the study's executor and stored as they finish."""
    # The trials go as an argument of their own: an executor sends one data set that many jobs share once.
    outcomes = ctx.run_jobs([Job(key, run_job, {"kind": kind, "trials": args[0], "args": args[1:]})
                             for key, kind, args in jobs], workers=workers, desc=desc)
    return [[Record(**r) for r in outcome["records"]] for outcome in outcomes.values()]


def run_job(kind: str, trials: Trials, args: tuple) -> dict:
    """One job of a study: :func:`evaluate_pooled` or :func:`loso_fold` on ``trials``, its records as dicts."""
    records = ev.evaluate_pooled(trials, *args) if kind == "pooled" else ev.loso_fold(trials, *args)
    return {"records": [dataclasses.asdict(r) for r in records]}


def _job_key(kind: str, label: str, args: tuple) -> str:
    if kind == "loso":  # (trials, split, calibration, config, seed, ...)
        return f"loso-{args[1].held_out}-s{args[4]}"
    config, seed = args[1], args[2]  # (trials, config, seed, methods)
    return f"pooled-{config.backbone}-s{seed}" + (f"-{re.sub(r'[^A-Za-z0-9.=+,-]+', '_', label)}" if label else "")


# --- summarising ------------------------------------------------------------------------------------

def _by_key(records: Sequence[Record], protocol: str, method: str, backbone: str = "eegnet"):
    """Accuracy by (subject, seed) for one protocol, method and backbone."""
    return {(r.subject, r.seed): r.accuracy for r in records
            if r.protocol == protocol and r.method == method and r.backbone == backbone}


def _subject_means(acc: dict[tuple[str, int], float]) -> dict[str, float]:
    per: dict[str, list[float]] = defaultdict(list)
    for (subject, _), value in acc.items():
        per[subject].append(value)
    return {s: float(np.mean(v)) for s, v in sorted(per.items())}


def _accuracy_table(records: Sequence[Record]) -> tuple[Table, dict]:
    """Mean accuracy (over subjects, after averaging seeds) per protocol, backbone and method."""
    groups: dict[tuple[str, str, str], dict] = defaultdict(dict)
    for r in records:
        groups[(r.protocol, r.backbone, r.method)][(r.subject, r.seed)] = r.accuracy
    rows, metrics = [], {}
    for (protocol, backbone, method), acc in sorted(groups.items(), key=lambda kv: _protocol_order(kv[0])):
        means = _subject_means(acc)
        s = spread(means.values())
        rows.append([protocol, backbone, method, round(s["mean"], 4), round(s["std"], 4), len(means),
                     len({seed for _, seed in acc})])
        metrics[f"{protocol} | {backbone} | {method}"] = s
    table = Table(
        "Accuracy per protocol, backbone and method (mean and std over subjects of each subject's mean over seeds)",
        ["protocol", "backbone", "method", "accuracy", "std over subjects", "subjects", "seeds"], rows,
        note="Chance is 0.25 (four balanced classes).",
    )
    return table, metrics


def _protocol_order(key) -> tuple:
    protocol = key[0]
    k = int(protocol.rsplit("-", 1)[1]) if protocol.startswith("loso-calibration") else -1
    rank = {"pooled-cross-session": 0, "loso-zero-shot": 1}.get(protocol, 2)
    return (rank, k, key[1], key[2])


def _compare(records, name_a, spec_a, name_b, spec_b, comparisons: list[PairedComparison]):
    """Paired comparison of two (protocol, method, backbone) specs, appended to ``comparisons``."""
    a, b = _by_key(records, *spec_a), _by_key(records, *spec_b)
    if len({s for s, _ in set(a) & set(b)}) < 2:
        return None
    result = paired_comparison(name_a, name_b, a, b, seed=len(comparisons))
    comparisons.append(result)
    return result


def _comparison_table(comparisons: Sequence[PairedComparison]) -> Table:
    rows = [[c.a, c.b, c.n_subjects, c.n_pairs, round(c.mean_difference, 4), round(c.ci_low, 4), round(c.ci_high, 4),
             float(f"{c.p_value:.3g}"), f"{c.subjects_a_better}/{c.subjects_b_better}", c.verdict] for c in comparisons]
    return Table(
        "Paired comparisons (difference a - b in accuracy; per-subject means over seeds; 95% bootstrap CI; "
        "two-sided Wilcoxon signed-rank test over subjects)",
        ["a", "b", "subjects", "subject x seed pairs", "mean difference", "CI low", "CI high", "p", "higher/lower",
         "verdict"],
        rows,
        note="'better' only where p < 0.05 and the CI excludes 0.",
    )


def _verdict(results: Sequence[PairedComparison | None]) -> str:
    """agrees: a significantly better everywhere; disagrees: b significantly better somewhere and a nowhere."""
    results = [r for r in results if r is not None]
    if not results:
        return "not measured"
    wins = [r.verdict == f"{r.a} better" for r in results]
    losses = [r.verdict == f"{r.b} better" for r in results]
    if all(wins):
        return "agrees"
    if any(wins):
        return "partly agrees"
    if any(losses):
        return "disagrees"
    return "inconclusive"


EQUIVALENCE_MARGIN = 0.03  # accuracy: a difference this small is taken as no practical difference


def _equivalence(result: PairedComparison | None) -> str:
    """agrees: the CI lies within +-EQUIVALENCE_MARGIN; disagrees: a significant difference; else inconclusive."""
    if result is None:
        return "not measured"
    if -EQUIVALENCE_MARGIN <= result.ci_low and result.ci_high <= EQUIVALENCE_MARGIN:
        return "agrees"
    return "disagrees" if result.verdict != "no significant difference" else "inconclusive"


def _ssvep_result(ctx: StudyContext, plan: Plan, trials: Trials, records: list[Record],
                  variants: list[Record]) -> StudyResult:
    pooled = "pooled-cross-session"
    comparisons: list[PairedComparison] = []
    sc_vs_shared, sc_vs_per_subject = [], []
    for backbone in plan.backbones:
        for method in (ev.CONDITIONED, ev.CONDITIONED_DROPOUT):
            if method not in plan.pooled_methods:
                continue
            sc_vs_shared.append(_compare(records, f"{method} [{backbone}]", (pooled, method, backbone),
                                         f"{ev.SHARED} [{backbone}]", (pooled, ev.SHARED, backbone), comparisons))
            sc_vs_per_subject.append(_compare(records, f"{method} [{backbone}]", (pooled, method, backbone),
                                              f"{ev.PER_SUBJECT} [{backbone}]", (pooled, ev.PER_SUBJECT, backbone),
                                              comparisons))
    _compare(records, ev.TANGENT, (pooled, ev.TANGENT, "eegnet"), f"{ev.SHARED} [eegnet]",
             (pooled, ev.SHARED, "eegnet"), comparisons)
    zero = "loso-zero-shot"
    zero_shot = [
        _compare(records, f"{m}{ev.SHARED_WEIGHTS} (zero-shot)", (zero, m + ev.SHARED_WEIGHTS, "eegnet"),
                 f"{ev.SHARED} (zero-shot)", (zero, ev.SHARED, "eegnet"), comparisons)
        for m in (ev.CONDITIONED_DROPOUT, ev.CONDITIONED)
    ]
    calibrated_vs_zero, adapter_vs_fine_tune = [], []
    for k in plan.ks:
        cal = f"loso-calibration-{k}"
        calibrated_vs_zero.append(_compare(records, f"{ev.ADAPTER} (k={k})", (cal, ev.ADAPTER, "eegnet"),
                                           f"{ev.SHARED} (zero-shot)", (zero, ev.SHARED, "eegnet"), comparisons))
        adapter_vs_fine_tune.append(_compare(records, f"{ev.ADAPTER} (k={k})", (cal, ev.ADAPTER, "eegnet"),
                                             f"{ev.FINE_TUNE} (k={k})", (cal, ev.FINE_TUNE, "eegnet"), comparisons))
        _compare(records, f"{ev.ADAPTER} (k={k})", (cal, ev.ADAPTER, "eegnet"), f"{ev.TANGENT} (k={k})",
                 (cal, ev.TANGENT, "eegnet"), comparisons)
    rank_rows, rank_metrics = _variant_rows(variants, records)
    accuracy_table, metrics = _accuracy_table(records)
    metrics["variants"] = rank_metrics
    metrics["comparisons"] = [c.as_record() for c in comparisons]
    metrics["records"] = [dataclasses.asdict(r) for r in (*records, *variants)]
    figures = _ssvep_figures(ctx, plan, records, variants)
    report = trials.info.get("report", {})
    seen_vs_unseen = _compare(records, f"{ev.SHARED} (pooled: subject's first session in training)",
                              (pooled, ev.SHARED, "eegnet"), f"{ev.SHARED} (zero-shot: subject never seen)",
                              (zero, ev.SHARED, "eegnet"), comparisons)
    train_per_subject = int(np.mean([
        ((trials.subject == s) & (trials.session == trials.sessions(s)[0])).sum() for s in trials.subjects
    ]))
    why_mild = (
        f"Each subject contributes {train_per_subject} first-session trials to pooled training{_session_gap(trials)}. "
    )
    if seen_vs_unseen:
        why_mild += (
            "For the subjects held out in LOSO, having their own first session in training (pooled) rather than "
            f"never seeing them (zero-shot, trained on the other subjects' {_loso_size(trials)} trials) gives "
            f"{seen_vs_unseen.describe()}: "
            + ("subject-specific information is there, and a shared model already uses it through its training data."
               if seen_vs_unseen.verdict.startswith(ev.SHARED + " (pooled")
               else "little subject-specific information shows, so there is little for adapters to add.")
        )
    claims = [
        Claim(
            "Models with subject-conditioned layers outperform the shared-weight (subject-agnostic) model "
            "(pooled cross-session protocol).",
            "; ".join(c.describe() for c in sc_vs_shared if c) or "not measured",
            _verdict(sc_vs_shared),
            why_mild,
        ),
        Claim(
            "Models with subject-conditioned layers outperform the average of individually trained per-subject models.",
            "; ".join(c.describe() for c in sc_vs_per_subject if c) or "not measured",
            _verdict(sc_vs_per_subject),
            "Per-subject models see only their own subject's first session "
            f"({train_per_subject} trials): the pooled models learn the shared SSVEP response from every subject.",
        ),
        Claim(
            "(beyond the paper) For a subject never seen, the subject-conditioned model's shared weights are as good "
            "as a shared-only model (subject dropout keeps them subject-agnostic).",
            "; ".join(c.describe() for c in zero_shot if c) or "not measured",
            _equivalence(zero_shot[0]),
            f"'agrees' needs the 95% CI of the difference inside +-{EQUIVALENCE_MARGIN:.2f} (equivalence); a "
            "significant difference either way disagrees; otherwise inconclusive.",
        ),
        Claim(
            "(beyond the paper) Calibrating a new subject's adapters on k labelled trials beats the zero-shot "
            "shared model.",
            "; ".join(c.describe() for c in calibrated_vs_zero if c) or "not measured",
            _verdict(calibrated_vs_zero),
            "Per k; the calibration trials come from the subject's first session, the test trials from its later "
            "sessions.",
        ),
        Claim(
            "(beyond the paper) Adapter-only calibration beats full fine-tuning on the same k trials.",
            "; ".join(c.describe() for c in adapter_vs_fine_tune if c) or "not measured",
            _verdict(adapter_vs_fine_tune),
        ),
    ]
    return StudyResult(
        part="subject",
        study=ctx.study,
        title="Subject-conditioned layers on real SSVEP EEG: pooled, unseen and calibrated subjects",
        scale=ctx.scale,
        summary=_summary(records, comparisons, report),
        config={"plan": dataclasses.asdict(plan), "eval": _config(plan).as_record(), "trials": len(trials),
                "subjects": trials.subjects, "preprocessing": trials.info.get("preprocessing")},
        seeds=plan.seeds,
        data=[trials.info.get("data", {}), {"name": "load report", "origin": "data folder", "synthetic": False,
                                            "detail": report}] if report else [trials.info.get("data", {})],
        metrics=metrics,
        tables=[accuracy_table, _comparison_table(comparisons),
                Table("Rank sweep (adapters on the temporal convs) and layer sets (rank 4): subject-conditioned + "
                      "subject dropout, EEGNet, pooled cross-session",
                      ["variant", "accuracy", "std over subjects", "minus shared-only", "p (Wilcoxon)"], rank_rows),
                _per_subject_table(records, plan), _report_table(report)],
        figures=figures,
        claims=claims,
    )


def _session_gap(trials: Trials) -> str:
    """", its sessions within N minutes of each other" from the session time stamps, where they are ones."""
    import datetime as dt

    gaps = []
    for s in trials.subjects:
        try:
            stamps = [dt.datetime.strptime(e, "%Y.%m.%d-%H.%M.%S") for e in trials.sessions(s)]
        except ValueError:
            return ""
        gaps.append((max(stamps) - min(stamps)).total_seconds() / 60)
    return f", and a subject's sessions were recorded within {max(gaps):.0f} minutes of each other (one day)"


def _loso_size(trials: Trials) -> int:
    """Mean number of training trials of a leave-one-subject-out fold."""
    return int(np.mean([(trials.subject != s).sum() for s in held_out_subjects(trials)]))


def _variant_rows(variants: Sequence[Record], records: Sequence[Record]):
    shared = _by_key(records, "pooled-cross-session", ev.SHARED)
    rows, metrics = [], {}
    for name in dict.fromkeys(r.method for r in variants):
        acc = {(r.subject, r.seed): r.accuracy for r in variants if r.method == name}
        s = spread(_subject_means(acc).values())
        diff, p = float("nan"), float("nan")
        if len({k[0] for k in set(acc) & set(shared)}) >= 2:
            c = paired_comparison(name, ev.SHARED, acc, shared)
            diff, p = c.mean_difference, c.p_value
        rows.append([name, round(s["mean"], 4), round(s["std"], 4), round(diff, 4), float(f"{p:.3g}")])
        metrics[name] = {**s, "minus_shared": diff, "p": p}
    return rows, metrics


def _per_subject_table(records: Sequence[Record], plan: Plan) -> Table:
    methods = [("pooled-cross-session", ev.SHARED), ("pooled-cross-session", ev.CONDITIONED_DROPOUT),
               ("pooled-cross-session", ev.PER_SUBJECT), ("loso-zero-shot", ev.SHARED)]
    methods += [(f"loso-calibration-{k}", ev.ADAPTER) for k in plan.ks]
    columns = {f"{p} | {m}": _subject_means(_by_key(records, p, m)) for p, m in methods}
    columns = {k: v for k, v in columns.items() if v}
    subjects = sorted({s for v in columns.values() for s in v})
    rows = [[s, *[round(v[s], 3) if s in v else None for v in columns.values()]] for s in subjects]
    return Table("Per-subject accuracy (EEGNet, mean over seeds)", ["subject", *columns], rows)


def _report_table(report: dict) -> Table:
    rows = [[p["kind"], p["recording"], p["detail"], p["action"]] for p in report.get("problems", [])]
    return Table("Data faults found by the loader", ["fault", "recording", "detail", "action"], rows,
                 note=f"{len(report.get('kept', []))} recordings and {report.get('trials', 0)} trials kept.")


def _summary(records, comparisons, report) -> str:
    means = {}
    for r in records:
        means.setdefault((r.protocol, r.method, r.backbone), []).append(r.accuracy)
    pooled = {m: np.mean(v) for (p, m, b), v in means.items() if p == "pooled-cross-session" and b == "eegnet"}
    text = ", ".join(f"{m} {a:.3f}" for m, a in pooled.items())
    return f"EEGNet, pooled cross-session accuracy: {text}. {len(comparisons)} paired comparisons in the tables."


def _ssvep_figures(ctx: StudyContext, plan: Plan, records: Sequence[Record], variants: Sequence[Record]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = ctx.figure_path(name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        names.append(path.name)

    def mean_sem(acc):
        v = np.array(list(_subject_means(acc).values()))
        return (v.mean(), v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else (v.mean() if len(v) else np.nan, 0)

    # 1. accuracy per protocol and method
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
    present = {(r.protocol, r.method) for r in records}
    pooled_methods = [m for m in (ev.SHARED, ev.PER_SUBJECT, ev.CONDITIONED, ev.CONDITIONED + ev.SHARED_WEIGHTS,
                                  ev.CONDITIONED_DROPOUT, ev.CONDITIONED_DROPOUT + ev.SHARED_WEIGHTS, ev.TANGENT)
                      if ("pooled-cross-session", m) in present]
    width = 0.8 / max(1, len(plan.backbones))
    for i, backbone in enumerate(plan.backbones):
        stats = [mean_sem(_by_key(records, "pooled-cross-session", m, backbone)) for m in pooled_methods]
        axes[0].bar(np.arange(len(pooled_methods)) + i * width, [s[0] for s in stats], width,
                    yerr=[s[1] for s in stats], label=backbone, capsize=2)
    axes[0].set_xticks(np.arange(len(pooled_methods)) + width * (len(plan.backbones) - 1) / 2)
    # seven long method names: slanted, so neighbours do not overprint each other
    axes[0].set_xticklabels([m.replace(" + ", "\n+ ").replace(" (", "\n(") for m in pooled_methods],
                            fontsize=7, rotation=20, ha="right")
    axes[0].set_title("pooled cross-session (the paper's protocol)")
    axes[0].set_ylabel("accuracy (mean over subjects, ± s.e.)")
    axes[0].axhline(0.25, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=8)
    zero_methods = [m for m in (ev.SHARED, ev.CONDITIONED + ev.SHARED_WEIGHTS,
                                ev.CONDITIONED_DROPOUT + ev.SHARED_WEIGHTS, ev.TANGENT)
                    if ("loso-zero-shot", m) in present]
    stats = [mean_sem(_by_key(records, "loso-zero-shot", m)) for m in zero_methods]
    axes[1].bar(range(len(zero_methods)), [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=2,
                color="tab:orange")
    axes[1].set_xticks(range(len(zero_methods)))
    axes[1].set_xticklabels([m.replace(" + ", "\n+ ").replace(" (", "\n(") for m in zero_methods], fontsize=7)
    axes[1].set_title("leave-one-subject-out, zero-shot (EEGNet)")
    axes[1].axhline(0.25, color="grey", lw=0.8, ls=":")
    save(fig, "accuracy.png")

    # 2. accuracy against k
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in (ev.ADAPTER, ev.ADAPTER_NO_DROPOUT, ev.FINE_TUNE, ev.TANGENT):
        stats = [mean_sem(_by_key(records, f"loso-calibration-{k}", method)) for k in plan.ks]
        if not np.isnan(stats[0][0]):
            ax.errorbar(plan.ks, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=2,
                        label=method)
    for method, style in ((ev.SHARED, "--"), (ev.TANGENT, ":")):
        m, _ = mean_sem(_by_key(records, "loso-zero-shot", method))
        if not np.isnan(m):
            ax.axhline(m, ls=style, color="grey", label=f"{method}, zero-shot")
    ax.set_xscale("log", base=2)
    ax.set_xticks(plan.ks)
    ax.set_xticklabels([str(k) for k in plan.ks])
    ax.set_xlabel("calibration trials k of the new subject")
    ax.set_ylabel("accuracy on its later sessions")
    ax.set_title("unseen subject, calibrated (EEGNet, LOSO)")
    ax.legend(fontsize=7)
    save(fig, "accuracy_vs_k.png")

    # 3. per-subject deltas
    k_mid = plan.ks[len(plan.ks) // 2]
    panels = [
        ("pooled: subject-conditioned + dropout - shared-only",
         _by_key(records, "pooled-cross-session", ev.CONDITIONED_DROPOUT),
         _by_key(records, "pooled-cross-session", ev.SHARED)),
        (f"unseen: adapter calibration (k={k_mid}) - shared-only zero-shot",
         _by_key(records, f"loso-calibration-{k_mid}", ev.ADAPTER), _by_key(records, "loso-zero-shot", ev.SHARED)),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, (title, a, b) in zip(axes, panels, strict=True):
        ma, mb = _subject_means(a), _subject_means(b)
        subjects = [s for s in ma if s in mb]
        deltas = [ma[s] - mb[s] for s in subjects]
        ax.bar(subjects, deltas, color=["tab:green" if d > 0 else "tab:red" for d in deltas])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("subject")
    axes[0].set_ylabel("accuracy difference (mean over seeds)")
    save(fig, "subject_deltas.png")

    # 4. rank sweep
    ranks = sorted({*plan.ranks, _config(plan).rank}) if plan.ranks else []
    if ranks and variants:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        stats = [mean_sem({(r.subject, r.seed): r.accuracy for r in variants if r.method == f"rank {k}"})
                 for k in ranks]
        ax.errorbar(ranks, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=2,
                    label="subject-conditioned + dropout")
        m, _ = mean_sem(_by_key(records, "pooled-cross-session", ev.SHARED))
        ax.axhline(m, ls="--", color="grey", label="shared-only")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks)
        ax.set_xticklabels([str(r) for r in ranks])
        ax.set_xlabel("adapter rank r (clipped to each layer's limit)")
        ax.set_ylabel("accuracy (pooled cross-session)")
        ax.legend(fontsize=8)
        save(fig, "rank_sweep.png")
    return names


# --- the synthetic control --------------------------------------------------------------------------

@dataclass
class SyntheticPlan:
    """What one scale of the ``synthetic`` control runs: every shift x trials-per-class condition."""

    seeds: list[int]
    shifts: tuple[float, ...]
    trials_per_class: tuple[int, ...]  # per session; the SSVEP recordings have 8
    config: synthetic.SyntheticConfig
    train: TrainConfig
    per_subject_steps: int
    workers: int = 2


SYNTHETIC_PLANS = {
    "quick": SyntheticPlan([0], (0.0, 3.0), (8,), synthetic.SyntheticConfig(n_subjects=6, n_times=256),
                           TrainConfig(steps=40), 10),
    "full": SyntheticPlan([0, 1, 2], (0.0, 3.0), (8, 24), synthetic.SyntheticConfig(n_subjects=8, n_times=256),
                          TrainConfig(steps=300), 60, workers=1),
}


@study("subject", "synthetic", title="Control: synthetic subjects with a controlled low-rank subject shift")
def synthetic_study(ctx: StudyContext) -> StudyResult:
    return run_synthetic(ctx, SYNTHETIC_PLANS[ctx.scale])


def run_synthetic(ctx: StudyContext, plan: SyntheticPlan) -> StudyResult:
    """Shared-only, per-subject and subject-conditioned models (pooled cross-session) in every condition."""
    methods = (ev.SHARED, ev.PER_SUBJECT, ev.CONDITIONED_DROPOUT)
    conditions = [(shift, n) for shift in plan.shifts for n in plan.trials_per_class]
    jobs, tags = [], []
    for shift, n in conditions:
        config = _config_for_synthetic(plan)
        for seed in plan.seeds:
            trials = synthetic.generate(dataclasses.replace(plan.config, shift=shift, trials_per_class=n), seed=seed)
            jobs.append((f"shift{shift}-trials{n}-s{seed}", "pooled", (trials, config, seed, methods)))
            tags.append((shift, n))
    workers = _workers(ctx, plan.workers)
    ctx.log(f"{len(jobs)} jobs on {workers} {ctx.executor.name} workers")
    outputs = _run_jobs(ctx, jobs, workers, "synthetic control")
    by_condition: dict[tuple[float, int], list[Record]] = defaultdict(list)
    for tag, out in zip(tags, outputs, strict=True):
        by_condition[tag] += out
    rows, comparisons, records_all, found, runs = [], [], [], {}, {}
    for shift, n in conditions:
        records = by_condition[(shift, n)]
        for method in (*methods, ev.CONDITIONED_DROPOUT + ev.SHARED_WEIGHTS):
            s = spread(_subject_means(_by_key(records, "pooled-cross-session", method)).values())
            rows.append([shift, 4 * n, method, round(s["mean"], 4), round(s["std"], 4)])
        label = f"shift {shift}, {4 * n} trials per session"
        for other in (ev.SHARED, ev.PER_SUBJECT):
            c = paired_comparison(f"{ev.CONDITIONED_DROPOUT} ({label})", f"{other} ({label})",
                                  _by_key(records, "pooled-cross-session", ev.CONDITIONED_DROPOUT),
                                  _by_key(records, "pooled-cross-session", other))
            comparisons.append(c)
            found[(shift, n, other)] = c
            runs[(shift, n, other)] = _per_seed_differences(
                _by_key(records, "pooled-cross-session", ev.CONDITIONED_DROPOUT),
                _by_key(records, "pooled-cross-session", other))
        records_all += [dataclasses.replace(r, method=f"{r.method} | {label}") for r in records]
    strong, none = max(plan.shifts), min(plan.shifts)
    most, fewest = max(plan.trials_per_class), min(plan.trials_per_class)

    def verdict(key) -> str:
        # Every subject of a run shares one trained model, so the test over subjects does not cover the
        # run-to-run spread; "better" also needs every run (seed) to agree in sign.
        c, diffs = found[key], runs[key]
        if c.verdict.startswith(c.a) and min(diffs) > 0:
            return "agrees"
        if c.verdict.startswith(c.b) and max(diffs) < 0:
            return "disagrees"
        return "inconclusive"

    def measured(key) -> str:
        per_run = ", ".join(f"{100 * d:+.1f}" for d in runs[key])
        return f"{found[key].describe()}; per run (seed): {per_run} points"

    claims = [
        Claim(
            f"Control: where subjects differ by a low-rank spatial shift (strength {strong}) and each has "
            f"{4 * most} trials per session, subject-conditioned layers beat the shared-only model.",
            measured((strong, most, ev.SHARED)), verdict((strong, most, ev.SHARED)),
            "Synthetic data: this checks the method and the code, not EEG. 'agrees' needs the test over subjects "
            "and every run (seed) to agree.",
        ),
        Claim(
            f"Control: same shift, {4 * most} trials per session: subject-conditioned layers beat per-subject models.",
            measured((strong, most, ev.PER_SUBJECT)), verdict((strong, most, ev.PER_SUBJECT)),
        ),
        Claim(
            "Control: with no subject shift, subject-conditioned layers bring no gain over the shared-only model.",
            measured((none, most, ev.SHARED)),
            "disagrees" if verdict((none, most, ev.SHARED)) == "agrees" else "agrees",
            "Adapters can only fit noise when subjects do not differ; 'agrees' means no gain that every run shows.",
        ),
    ]
    if fewest != most:
        key = (strong, fewest, ev.SHARED)
        claims.append(Claim(
            f"Control: with {4 * fewest} trials per session (as many as the SSVEP recordings have), the same shift: "
            "subject-conditioned layers beat the shared-only model.",
            measured(key), verdict(key),
            "How much each subject's adapters can learn depends on that subject's number of trials.",
        ))
    how = (f"{plan.config.n_subjects} synthetic subjects x {plan.config.sessions_per_subject} sessions, rank-"
           f"{plan.config.shift_rank} spatial-mixing shift of strength {list(plan.shifts)}, "
           f"{[4 * n for n in plan.trials_per_class]} trials per session")
    return StudyResult(
        part="subject",
        study=ctx.study,
        title="Control: synthetic subjects with a controlled low-rank subject shift",
        scale=ctx.scale,
        summary="; ".join(c.describe() for c in comparisons),
        config={"plan": dataclasses.asdict(plan), "eval": _config_for_synthetic(plan).as_record()},
        seeds=plan.seeds,
        data=[data.synthetic("ssvep-exo", how).as_record()],
        metrics={"comparisons": [c.as_record() for c in comparisons],
                 "per_run_differences": {f"shift {k[0]}, {4 * k[1]} trials per session, minus {k[2]}": v
                                         for k, v in runs.items()},
                 "records": [dataclasses.asdict(r) for r in records_all]},
        tables=[Table("Accuracy by subject-shift strength and trials per session (pooled cross-session, EEGNet with "
                      "adapters on its temporal and spatial convs; mean and std over subjects)",
                      ["shift", "trials per session", "method", "accuracy", "std over subjects"], rows),
                _comparison_table(comparisons)],
        claims=claims,
    )


def _per_seed_differences(a: dict[tuple[str, int], float], b: dict[tuple[str, int], float]) -> list[float]:
    """Mean over subjects of ``a - b`` for each seed (one run: every subject shares its trained model)."""
    keys = set(a) & set(b)
    return [float(np.mean([a[k] - b[k] for k in keys if k[1] == seed])) for seed in sorted({k[1] for k in keys})]


def _config_for_synthetic(plan: SyntheticPlan) -> EvalConfig:
    # The synthetic shift changes the spatial mixing, so the control's adapters include the spatial
    # (depthwise) convolution that can undo it, besides the temporal convolutions of the main runs.
    return EvalConfig(train=plan.train, per_subject_steps=plan.per_subject_steps,
                      include=EEGNET_LAYERS["temporal + spatial convs"], exclude=[])


# The MOABB study registers itself on import (it needs moabb only when it runs).
from structlab.subject import moabb_study  # noqa: E402, F401
