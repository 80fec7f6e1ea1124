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
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from structlab import data, runtime
from structlab.errors import DataNotFoundError
from structlab.reproduce import StudyContext, study
from structlab.results import Claim, StudyResult, Table, spread
from structlab.subject import evaluation as ev
from structlab.subject import ssvep_exo, synthetic
from structlab.subject.evaluation import EvalConfig, Record
from structlab.subject.protocols import held_out_subjects
from structlab.subject.stats import PairedComparison, paired_comparison
from structlab.subject.training import TrainConfig
from structlab.subject.trials import Trials

# Layers of EEGNet (structlab.subject.backbones.EEGNet) for the "which layers" study.
EEGNET_LAYERS = {
    "all layers": None,
    "temporal conv (features.0)": ["features.0"],
    "spatial depthwise conv (features.2)": ["features.2"],
    "separable conv (features.7-8)": ["features.7", "features.8"],
    "classifier": ["classifier"],
}


@dataclass
class Plan:
    """What one scale of the ``ssvep`` study runs."""

    seeds: list[int]
    backbones: list[str]  # for the pooled cross-session protocol
    pooled_seeds: dict[str, int]  # seeds per backbone (the first n of ``seeds``), for costly backbones
    train: TrainConfig
    per_subject_epochs: int
    loso_subjects: int | None  # how many subjects to hold out (None: all with two sessions)
    ks: tuple[int, ...]
    loso_methods: tuple[str, ...]
    pooled_methods: tuple[str, ...]
    ranks: tuple[int, ...]
    layer_sets: dict[str, list[str] | None] = field(default_factory=dict)
    calibration_epochs: int = 100
    fine_tune_epochs: int = 100
    workers: int = 2  # processes for leave-one-subject-out folds (at most the cores there are)


PLANS = {
    "quick": Plan(
        seeds=[0, 1],
        backbones=["eegnet"],
        pooled_seeds={},
        train=TrainConfig(epochs=12, batch_size=64, lr=3e-3),
        per_subject_epochs=40,
        loso_subjects=3,
        ks=(4, 16),
        loso_methods=(ev.SHARED, ev.CONDITIONED_DROPOUT, ev.FINE_TUNE, ev.ADAPTER, ev.TANGENT),
        pooled_methods=(ev.SHARED, ev.PER_SUBJECT, ev.CONDITIONED_DROPOUT, ev.TANGENT),
        ranks=(1, 8),
        layer_sets={},
        calibration_epochs=40,
        fine_tune_epochs=40,
    ),
    "full": Plan(
        seeds=[0, 1, 2],
        backbones=["eegnet", "shallow", "eegnex"],
        pooled_seeds={"eegnex": 2},
        train=TrainConfig(epochs=30, batch_size=64, lr=3e-3),
        per_subject_epochs=100,
        loso_subjects=None,
        ks=(4, 8, 16, 32),
        loso_methods=ev.LOSO_METHODS,
        pooled_methods=ev.POOLED_METHODS,
        ranks=(1, 2, 4, 8, 16),
        layer_sets=EEGNET_LAYERS,
    ),
}


def _config(plan: Plan, backbone: str = "eegnet", **overrides) -> EvalConfig:
    return EvalConfig(
        backbone=backbone, train=plan.train, per_subject_epochs=plan.per_subject_epochs,
        calibration_epochs=plan.calibration_epochs, fine_tune_epochs=plan.fine_tune_epochs, **overrides,
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

    All trainings are independent jobs (each seeded on its own), run in ``plan.workers`` processes.
    """
    jobs: list[tuple[str, str, tuple]] = []  # (kind, label for sweeps, arguments)
    for backbone in plan.backbones:
        for seed in plan.seeds[: plan.pooled_seeds.get(backbone, len(plan.seeds))]:
            jobs.append(("pooled", "", (trials, _config(plan, backbone), seed, plan.pooled_methods)))
    held_out = held_out_subjects(trials)[: plan.loso_subjects] if plan.loso_subjects else None
    for seed in plan.seeds:
        jobs += [("loso", "", job) for job in ev.loso_jobs(trials, _config(plan), seed, plan.ks, held_out,
                                                               plan.loso_methods)]
    # The rank sweep and the layer sets: subject-conditioned + dropout, EEGNet, pooled cross-session.
    sweeps = [(f"rank {r}", {"rank": r}) for r in plan.ranks]
    sweeps += [(name, {"include": layers}) for name, layers in plan.layer_sets.items() if layers is not None]
    for (name, overrides), seed in [(v, s) for v in sweeps for s in plan.seeds]:
        jobs.append(("pooled", name, (trials, _config(plan, **overrides), seed, (ev.CONDITIONED_DROPOUT,))))
    ctx.log(f"{len(jobs)} jobs ({sum(k == 'loso' for k, _, _ in jobs)} leave-one-subject-out folds) "
            f"in {min(plan.workers, runtime.cpu_count())} processes")
    outputs = ev.parallel_map(_run_job, [(kind, args) for kind, _, args in jobs],
                              min(plan.workers, runtime.cpu_count()), "subject study", progress=True)
    records: list[Record] = []
    variants: list[Record] = []
    for (_, label, _), out in zip(jobs, outputs, strict=True):
        if not label:
            records += out
        else:
            variants += [dataclasses.replace(r, method=label) for r in out if r.method == ev.CONDITIONED_DROPOUT]
    return _ssvep_result(ctx, plan, trials, records, variants)


def _run_job(kind: str, args: tuple) -> list[Record]:
    """One job of :func:`run_ssvep` (module level, so worker processes can unpickle it)."""
    return ev.evaluate_pooled(*args) if kind == "pooled" else ev.loso_fold(*args)


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


def _verdict(results: Sequence[PairedComparison | None], a_name_contains: str) -> str:
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
        _compare(records, f"{ev.TANGENT}", (pooled, ev.TANGENT, "eegnet"), f"{ev.SHARED} [eegnet]",
                 (pooled, ev.SHARED, "eegnet"), comparisons) if backbone == "eegnet" else None
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
        f"Each subject contributes {train_per_subject} first-session trials to pooled training, and its sessions "
        "were recorded minutes apart on one day. "
        + (f"Having the subject's own first session in training changes its later-session accuracy by "
           f"{seen_vs_unseen.describe()} against a model that never saw the subject, so the subject-specific part "
           "that adapters could capture is small here." if seen_vs_unseen else "")
    )
    claims = [
        Claim(
            "Models with subject-conditioned layers outperform the shared-weight (subject-agnostic) model "
            "(pooled cross-session protocol).",
            "; ".join(c.describe() for c in sc_vs_shared if c) or "not measured",
            _verdict(sc_vs_shared, ""),
            why_mild,
        ),
        Claim(
            "Models with subject-conditioned layers outperform the average of individually trained per-subject models.",
            "; ".join(c.describe() for c in sc_vs_per_subject if c) or "not measured",
            _verdict(sc_vs_per_subject, ""),
            "Per-subject models see only their own subject's first session "
            f"({train_per_subject} trials): the pooled models learn the shared SSVEP response from every subject.",
        ),
        Claim(
            "(beyond the paper) For a subject never seen, the subject-conditioned model's shared weights are as good "
            "as a shared-only model (subject dropout keeps them subject-agnostic).",
            "; ".join(c.describe() for c in zero_shot if c) or "not measured",
            "agrees" if zero_shot[0] and zero_shot[0].verdict == "no significant difference"
            else _verdict(zero_shot[:1], ""),
            "Agreement here means no significant difference (not proof of equality).",
        ),
        Claim(
            "(beyond the paper) Calibrating a new subject's adapters on k labelled trials beats the zero-shot "
            "shared model.",
            "; ".join(c.describe() for c in calibrated_vs_zero if c) or "not measured",
            _verdict(calibrated_vs_zero, ""),
            "Per k; the calibration trials come from the subject's first session, the test trials from its later "
            "sessions.",
        ),
        Claim(
            "(beyond the paper) Adapter-only calibration beats full fine-tuning on the same k trials.",
            "; ".join(c.describe() for c in adapter_vs_fine_tune if c) or "not measured",
            _verdict(adapter_vs_fine_tune, ""),
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
                Table("Rank sweep and layer sets (subject-conditioned + subject dropout, EEGNet, pooled cross-session)",
                      ["variant", "accuracy", "std over subjects", "minus shared-only", "p (Wilcoxon)"], rank_rows),
                _per_subject_table(records, plan), _report_table(report)],
        figures=figures,
        claims=claims,
    )


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

    def mean_sem(acc):
        v = np.array(list(_subject_means(acc).values()))
        return (v.mean(), v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else (v.mean() if len(v) else np.nan, 0)

    # 1. accuracy per protocol and method
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
    pooled_methods = [m for m in (ev.SHARED, ev.PER_SUBJECT, ev.CONDITIONED, ev.CONDITIONED_DROPOUT,
                                  ev.CONDITIONED_DROPOUT + ev.SHARED_WEIGHTS, ev.TANGENT)]
    width = 0.8 / max(1, len(plan.backbones))
    for i, backbone in enumerate(plan.backbones):
        stats = [mean_sem(_by_key(records, "pooled-cross-session", m, backbone)) for m in pooled_methods]
        axes[0].bar(np.arange(len(pooled_methods)) + i * width, [s[0] for s in stats], width,
                    yerr=[s[1] for s in stats], label=backbone, capsize=2)
    axes[0].set_xticks(np.arange(len(pooled_methods)) + width * (len(plan.backbones) - 1) / 2)
    axes[0].set_xticklabels([m.replace(" + ", "\n+ ").replace(" (", "\n(") for m in pooled_methods], fontsize=7)
    axes[0].set_title("pooled cross-session (the paper's protocol)")
    axes[0].set_ylabel("accuracy (mean over subjects, ± s.e.)")
    axes[0].axhline(0.25, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=8)
    zero_methods = [ev.SHARED, ev.CONDITIONED + ev.SHARED_WEIGHTS, ev.CONDITIONED_DROPOUT + ev.SHARED_WEIGHTS,
                    ev.TANGENT]
    stats = [mean_sem(_by_key(records, "loso-zero-shot", m)) for m in zero_methods]
    axes[1].bar(range(len(zero_methods)), [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=2,
                color="tab:orange")
    axes[1].set_xticks(range(len(zero_methods)))
    axes[1].set_xticklabels([m.replace(" + ", "\n+ ").replace(" (", "\n(") for m in zero_methods], fontsize=7)
    axes[1].set_title("leave-one-subject-out, zero-shot (EEGNet)")
    axes[1].axhline(0.25, color="grey", lw=0.8, ls=":")
    fig.tight_layout()
    path = ctx.figure_path("accuracy.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    names.append(path.name)

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
    fig.tight_layout()
    path = ctx.figure_path("accuracy_vs_k.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    names.append(path.name)

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
    fig.tight_layout()
    path = ctx.figure_path("subject_deltas.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    names.append(path.name)

    # 4. rank sweep
    ranks = [r for r in plan.ranks]
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
        fig.tight_layout()
        path = ctx.figure_path("rank_sweep.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        names.append(path.name)
    return names


# --- the synthetic control --------------------------------------------------------------------------

@dataclass
class SyntheticPlan:
    """What one scale of the ``synthetic`` control runs."""

    seeds: list[int]
    shifts: tuple[float, ...]
    config: synthetic.SyntheticConfig
    train: TrainConfig
    per_subject_epochs: int
    ks: tuple[int, ...]
    loso_subjects: int
    calibration_epochs: int = 100
    workers: int = 2


SYNTHETIC_PLANS = {
    "quick": SyntheticPlan([0, 1], (0.0, 3.0), synthetic.SyntheticConfig(n_subjects=6, n_times=256),
                           TrainConfig(epochs=20, batch_size=32, lr=2e-3), 60, (8,), 2, 40),
    "full": SyntheticPlan([0, 1, 2], (0.0, 1.5, 3.0), synthetic.SyntheticConfig(n_subjects=12, n_times=256),
                          TrainConfig(epochs=40, batch_size=32, lr=2e-3), 150, (8,), 6),
}


@study("subject", "synthetic", title="Control: synthetic subjects with a controlled low-rank subject shift")
def synthetic_study(ctx: StudyContext) -> StudyResult:
    return run_synthetic(ctx, SYNTHETIC_PLANS[ctx.scale])


def run_synthetic(ctx: StudyContext, plan: SyntheticPlan) -> StudyResult:
    """Shared-only, per-subject and subject-conditioned models as the subject shift grows from none."""
    config = EvalConfig(train=plan.train, per_subject_epochs=plan.per_subject_epochs,
                        calibration_epochs=plan.calibration_epochs)
    jobs, tags = [], []
    for shift in plan.shifts:
        for seed in plan.seeds:
            trials = synthetic.generate(dataclasses.replace(plan.config, shift=shift), seed=seed)
            held_out = held_out_subjects(trials)[: plan.loso_subjects]
            jobs.append(("pooled", (trials, config, seed, (ev.SHARED, ev.PER_SUBJECT, ev.CONDITIONED_DROPOUT))))
            jobs += [("loso", job) for job in ev.loso_jobs(trials, config, seed, plan.ks, held_out,
                                                              (ev.SHARED, ev.ADAPTER))]
            tags += [shift] * (len(jobs) - len(tags))
    workers = min(plan.workers, runtime.cpu_count())
    ctx.log(f"{len(jobs)} jobs in {workers} processes")
    outputs = ev.parallel_map(_run_job, jobs, workers, "synthetic control", progress=True)
    by_shift: dict[float, list[Record]] = defaultdict(list)
    for shift, out in zip(tags, outputs, strict=True):
        by_shift[shift] += out
    rows, comparisons, records_all, claims_data = [], [], [], {}
    for shift in plan.shifts:
        records = by_shift[shift]
        for protocol, method in (("pooled-cross-session", ev.SHARED), ("pooled-cross-session", ev.PER_SUBJECT),
                                 ("pooled-cross-session", ev.CONDITIONED_DROPOUT),
                                 ("pooled-cross-session", ev.CONDITIONED_DROPOUT + ev.SHARED_WEIGHTS),
                                 ("loso-zero-shot", ev.SHARED),
                                 *((f"loso-calibration-{k}", ev.ADAPTER) for k in plan.ks)):
            s = spread(_subject_means(_by_key(records, protocol, method)).values())
            rows.append([shift, protocol, method, round(s.get("mean", float("nan")), 4),
                         round(s.get("std", float("nan")), 4)])
        c = paired_comparison(f"{ev.CONDITIONED_DROPOUT} (shift {shift})", f"{ev.SHARED} (shift {shift})",
                              _by_key(records, "pooled-cross-session", ev.CONDITIONED_DROPOUT),
                              _by_key(records, "pooled-cross-session", ev.SHARED))
        comparisons.append(c)
        claims_data[shift] = c
        records_all += [dataclasses.replace(r, method=f"{r.method} | shift {shift}") for r in records]
    strongest, none = claims_data[max(plan.shifts)], claims_data[min(plan.shifts)]
    claims = [
        Claim(
            "Control: where subjects differ by a low-rank spatial shift, subject-conditioned layers beat the "
            "shared-only model.",
            strongest.describe(),
            "agrees" if strongest.verdict.startswith(ev.CONDITIONED_DROPOUT) else
            ("disagrees" if strongest.verdict.startswith(ev.SHARED) else "inconclusive"),
            f"Strongest shift tested ({max(plan.shifts)}); synthetic data, so this checks the method, not EEG.",
        ),
        Claim(
            "Control: with no subject shift, subject-conditioned layers bring no gain.",
            none.describe(),
            "agrees" if none.verdict == "no significant difference" or none.verdict.startswith(ev.SHARED)
            else "disagrees",
            "Adapters can only fit noise when subjects do not differ.",
        ),
    ]
    how = synthetic.generate(dataclasses.replace(plan.config, n_subjects=1, sessions_per_subject=1,
                                                 trials_per_class=1)).info["data"]
    return StudyResult(
        part="subject",
        study=ctx.study,
        title="Control: synthetic subjects with a controlled low-rank subject shift",
        scale=ctx.scale,
        summary="; ".join(c.describe() for c in comparisons),
        config={"plan": dataclasses.asdict(plan)},
        seeds=plan.seeds,
        data=[data.synthetic("ssvep-exo", how["detail"] + f"; shifts {list(plan.shifts)}").as_record()],
        metrics={"comparisons": [c.as_record() for c in comparisons],
                 "records": [dataclasses.asdict(r) for r in records_all]},
        tables=[Table("Accuracy by subject-shift strength (mean and std over subjects)",
                      ["shift", "protocol", "method", "accuracy", "std over subjects"], rows),
                _comparison_table(comparisons)],
        claims=claims,
    )
