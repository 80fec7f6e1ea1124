"""AudioPairBank recognition studies: does the audio carry its adjective-noun and verb-noun labels?

Two studies, both on the shared labelled recordings (duplicates removed first, folds grouped so that no
recording, freesound id or uploader is on both sides):

- ``detectors``: the paper's experiment, one binary detector per pair (its files against as many
  files drawn from the rest), for every representation x classifier, repeated over seeds; per pair,
  per kind (ANP, VNP), set against the paper's ~70% and against chance (50%).
- ``questions``: what the labels ask of the audio: which pair (multi-class, top-1/top-5, and whether
  confusions stay within one noun), which noun (e.g. kick vs snare), which modifier for a fixed noun
  (soft vs hard, heavy vs light, carried to an unseen noun), ANP vs VNP (by recording and by source
  package), and accuracy against the number of training files.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from structlab import runtime
from structlab.audiopairs import embeddings
from structlab.audiopairs import features as feats
from structlab.audiopairs.protocol import (
    GROUPINGS,
    check_disjoint,
    grouped_folds,
    n_groups_per_class,
    recording_groups,
)
from structlab.audiopairs.recognition import (
    CLASSIFIERS,
    REPRESENTATIONS,
    FeatureTable,
    Recogniser,
    cross_validate,
    detect_pair,
    majority_top_k,
)
from structlab.audiopairs.recordings import Duplicate, Recording, from_corpus
from structlab.reproduce import StudyContext, study
from structlab.results import Claim, StudyResult, Table, format_spread, spread

PAPER_ACCURACY = 0.70  # AudioPairBank abstract: "classification experiments, which yielded 70% accuracy"
PRIMARY = Recogniser("linear-svm", "mfcc")
# Bump when import or de-duplication changes what the cached study corpus holds (2: related sounds).
CORPUS_VERSION = 2  # the classic MFCC-statistics + linear SVM detector


@dataclass
class StudyScale:
    """How much a study does at one scale."""

    recognisers: list[Recogniser]
    detector_repeats: int
    seeds: list[int]
    min_pair_groups: int = 3
    min_noun_groups: int = 6
    curve_sizes: tuple[int, ...] = (1, 2, 3, 4, 6)


def _scale(ctx: StudyContext) -> StudyScale:
    if ctx.quick:
        return StudyScale(
            recognisers=[
                Recogniser("linear-svm", "mfcc"),
                Recogniser("rbf-svm", "mfcc"),
                Recogniser("logreg", "mfcc"),
                Recogniser("linear-svm", "logmel"),
                Recogniser("linear-svm", "boaw", n_words=64, max_frames=5000),
            ],
            detector_repeats=2,
            seeds=[0],
        )
    return StudyScale(
        recognisers=[Recogniser(c, f) for f in REPRESENTATIONS for c in CLASSIFIERS],
        detector_repeats=10,
        seeds=[0, 1, 2, 3, 4],
    )


@dataclass
class LabelledClips:
    """De-duplicated recordings with their features and their groups under each grouping."""

    recordings: list[Recording]
    duplicates: list[Duplicate]
    table: FeatureTable
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    data: list[dict] = field(default_factory=list)
    extraction_seconds: float = 0.0


def imported_corpus(folder, log=print, manifest: str | Path = "manifest.csv"):
    """The recordings ``manifest`` lists under ``folder`` imported into a :class:`Corpus` and de-duplicated.

    Built once, then reused: the database is cached beside the feature cache, keyed by the manifest's
    SHA-256, and written under a temporary name first, so an interrupted build is never mistaken for a
    finished one.
    """
    import os

    from structlab.audiopairs.corpus import Corpus
    from structlab.audiopairs.dedup import deduplicate
    from structlab.audiopairs.importing import import_folder
    from structlab.data import sha256_file

    folder = Path(folder)
    manifest = folder / manifest  # an absolute manifest stays as it is
    key = f"{sha256_file(manifest)[:16]}-v{CORPUS_VERSION}"
    path = feats.default_cache_dir().parent / "audiopairs-corpus" / f"shared-audio-{key}.sqlite"
    if not path.is_file():
        log(f"importing {folder} into a corpus and de-duplicating it (once; cached at {path})")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        with Corpus(tmp) as corpus:
            import_folder(corpus, folder, manifest, progress=False)
            deduplicate(corpus, workers=runtime.cpu_count(), progress=False)
        os.replace(tmp, path)
    return Corpus(path)


def load_labelled_clips(ctx: StudyContext, with_embeddings: bool = False) -> LabelledClips:
    """The shared labelled recordings, read through an imported, de-duplicated corpus, with features and groups.

    This is the one place that decides where recordings come from. ``with_embeddings``: add aiSFX
    embeddings when the ``aisfx`` wheel's weights are installed (``pip install --no-deps aisfx``).
    """
    from structlab import data

    found = data.resolve("audio")
    with imported_corpus(found.path, ctx.log) as corpus:
        recordings, duplicates = from_corpus(corpus)
    ctx.log(f"{len(recordings)} recordings ({len(duplicates)} duplicates removed by the corpus)")
    start = time.perf_counter()
    paths, checksums = [r.path for r in recordings], [r.sha256 for r in recordings]
    clips = feats.extract(paths, checksums=checksums, cache_dir=feats.default_cache_dir())
    sources = [found.as_record()]
    vectors = None
    checkpoint = embeddings.find_aisfx_checkpoint() if with_embeddings else None
    if checkpoint is not None:
        vectors = embeddings.embed(paths, checkpoint, checksums, cache_dir=feats.default_cache_dir())
        sources.append({"name": "aisfx weights", "origin": "package", "synthetic": False, "path": str(checkpoint),
                        "detail": "PyPI aisfx 0.1.2 checkpoint.pth (embedding network only)"})
    groups = {g: recording_groups(recordings, g) for g in GROUPINGS}
    return LabelledClips(
        recordings, duplicates, FeatureTable(clips, vectors), groups, sources, time.perf_counter() - start
    )


def _single_thread():
    """Native thread pools off: folds are tiny, and other work shares the cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _fmt(values: Sequence[float]) -> str:
    return format_spread(spread(values), digits=3)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


# --------------------------------------------------------------------------------------------------
# detectors


def eligible_pairs(recordings: Sequence[Recording], groups: np.ndarray, min_groups: int) -> list[str]:
    """Pairs whose files span at least ``min_groups`` groups, most files first."""
    counts = Counter(r.pair for r in recordings if r.pair)
    per_pair = n_groups_per_class([r.pair for r in recordings], groups)
    return sorted((p for p in counts if per_pair[p] >= min_groups), key=lambda p: (-counts[p], p))


@study("audiopairs", "detectors", title="AudioPairBank per-pair detectors on the shared recordings")
def detectors(ctx: StudyContext) -> StudyResult:
    scale = _scale(ctx)
    corpus = load_labelled_clips(ctx, with_embeddings=not ctx.quick)
    scale.recognisers = [r for r in scale.recognisers if corpus.table.has(r.features)]
    recs, groups = corpus.recordings, corpus.groups["uploader"]
    pairs = eligible_pairs(recs, groups, scale.min_pair_groups)
    kind_of = {r.pair: r.kind for r in recs if r.pair}
    source = np.array([r.source for r in recs])
    strict_pairs = eligible_pairs(recs, corpus.groups["uploader-or-source"], scale.min_pair_groups)
    ctx.log(f"{len(pairs)} pairs with >= {scale.min_pair_groups} groups; {len(scale.recognisers)} recognisers")

    results, matched = {}, {}
    with _single_thread():
        for pair in pairs:
            positive = np.array([r.pair == pair for r in recs])
            results[pair] = detect_pair(
                pair, corpus.table, positive, ~positive, groups, scale.recognisers, scale.detector_repeats
            )
            # Harder negatives: only files from the positives' own source packages, so a detector
            # cannot win by recognising the package's recording chain instead of the sound.
            same_source = np.isin(source, source[positive]) & ~positive
            if same_source.sum() >= positive.sum():
                matched[pair] = detect_pair(
                    pair, corpus.table, positive, same_source, groups, [PRIMARY], scale.detector_repeats, seed=1
                )

    names = [r.name for r in scale.recognisers]
    per_pair_mean = {n: {p: _mean(results[p].accuracy[n]) for p in pairs} for n in names}
    kinds = [k for k in ("anp", "vnp") if any(kind_of[p] == k for p in pairs)]

    summary_rows, metrics = [], {}
    for n in names:
        row = [n]
        for k in (*kinds, "all"):
            means = [per_pair_mean[n][p] for p in pairs if k == "all" or kind_of[p] == k]
            metrics[f"detector_accuracy/{n}/{k}"] = spread(means)
            row.append(_fmt(means))
        summary_rows.append(row + [0.5])
    best = max(names, key=lambda n: _mean(list(per_pair_mean[n].values())))

    pair_rows = []
    for p in pairs:
        r = results[p]
        m = matched.get(p)
        pair_rows.append([
            p, kind_of[p], r.n_positive, r.n_positive_groups,
            _fmt(r.accuracy[PRIMARY.name]), _fmt(r.accuracy[best]),
            _fmt(m.accuracy[PRIMARY.name]) if m else "n/a (too few files)",
        ])
        metrics[f"pair/{p}/{PRIMARY.name}"] = spread(r.accuracy[PRIMARY.name])
    matched_means = [_mean(matched[p].accuracy[PRIMARY.name]) for p in matched]
    primary_means = [per_pair_mean[PRIMARY.name][p] for p in matched]
    metrics["same_source_negatives/primary"] = spread(matched_means)
    metrics["random_negatives/primary_on_same_pairs"] = spread(primary_means)

    figures = [_plot_per_pair(ctx, pairs, kind_of, results, best)]
    primary_all = list(per_pair_mean[PRIMARY.name].values())
    mean_primary = _mean(primary_all)
    verdict = "agrees" if abs(mean_primary - PAPER_ACCURACY) <= 0.05 else (
        "partly agrees" if mean_primary > 0.5 + 2 * np.std(primary_all) / np.sqrt(len(primary_all)) else "disagrees"
    )
    claims = [
        Claim(
            claim="Audio correlates with ANP/VNP labels: classification yields about 70% accuracy (chance 50% "
            "for a balanced binary detector).",
            measured=f"mean over {len(pairs)} pairs of the per-pair balanced accuracy of one-vs-rest detectors "
            f"({PRIMARY.name}): {_fmt(primary_all)}; best recogniser ({best}): "
            f"{_fmt(list(per_pair_mean[best].values()))}",
            verdict=verdict,
            why="Same kind of measurement (balanced binary detector per pair), very different data: "
            f"{len(pairs)} pairs with {min(r.n_positive for r in results.values())}-"
            f"{max(r.n_positive for r in results.values())} files each (the paper: 1,123 pairs, ~30 files each "
            "from freesound). Most of these pairs are numbered variants of one game sound (orc-die-1..3), "
            "which share a recording chain; no uploader is known for them, so grouping cannot keep them apart. "
            "Under the corpus's split rule (unknown uploader -> whole source package) only "
            f"{len(strict_pairs)} pairs ({', '.join(strict_pairs) or 'none'}) keep >= {scale.min_pair_groups} groups.",
        ),
        Claim(
            claim="A detector learns the pair's sound, not the source it came from.",
            measured=f"{PRIMARY.name} with negatives from the positives' own source package: "
            f"{_fmt(matched_means)} vs {_fmt(primary_means)} with negatives from anywhere, on the same "
            f"{len(matched)} pairs",
            verdict="agrees" if _mean(matched_means) >= _mean(primary_means) - 0.05 else "partly agrees",
            why="Random negatives mostly come from other packages (other games, other recording chains); "
            "same-package negatives remove that shortcut, so the drop measures how much of the score it was.",
        ),
    ]
    return StudyResult(
        part="audiopairs",
        study="detectors",
        title="AudioPairBank per-pair detectors on the shared recordings",
        scale=ctx.scale,
        summary=(
            f"One binary detector per pair ({len(pairs)} pairs with >= {scale.min_pair_groups} independent "
            f"groups), balanced negatives, grouped cross-validation repeated {scale.detector_repeats} times. "
            f"Mean per-pair balanced accuracy {mean_primary:.3f} ({PRIMARY.name}); paper: ~{PAPER_ACCURACY:.2f}."
        ),
        config={
            "features": feats.FeatureConfig().__dict__,
            "recognisers": [r.__dict__ for r in scale.recognisers],
            "repeats": scale.detector_repeats,
            "grouping": "uploader (and same bytes / freesound id)",
            "min_pair_groups": scale.min_pair_groups,
            "pairs_evaluable_under_uploader_or_source_grouping": strict_pairs,
            "recordings": len(recs),
            "duplicates_removed": [(d.removed.path.name, d.kept.path.name, d.reason) for d in corpus.duplicates],
            "feature_seconds": corpus.extraction_seconds,
        },
        seeds=list(range(scale.detector_repeats)),
        data=corpus.data,
        metrics=metrics,
        tables=[
            Table(
                "Per-pair detector accuracy by recogniser and pair kind (mean ± std over pairs of each pair's "
                "mean balanced accuracy)",
                ["recogniser", *kinds, "all pairs", "chance"],
                summary_rows,
                note="Each pair's accuracy is the mean over folds x repeats; spreads are over pairs.",
            ),
            Table(
                "Per-pair accuracy (mean ± std over folds x repeats; chance 0.5)",
                ["pair", "kind", "files", "groups", PRIMARY.name, f"best: {best}", "same-source negatives"],
                pair_rows,
            ),
        ],
        figures=figures,
        claims=claims,
    )


def _plot_per_pair(ctx, pairs, kind_of, results, best) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(pairs, key=lambda p: _mean(results[p].accuracy[PRIMARY.name]))
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(order) + 1.4))
    y = np.arange(len(order))
    colour = {"anp": "tab:blue", "vnp": "tab:orange"}
    means = [_mean(results[p].accuracy[PRIMARY.name]) for p in order]
    stds = [np.std(results[p].accuracy[PRIMARY.name]) for p in order]
    ax.barh(y, means, xerr=stds, color=[colour[kind_of[p]] for p in order], alpha=0.8, capsize=2)
    ax.plot([_mean(results[p].accuracy[best]) for p in order], y, "k|", markersize=10, label=f"best: {best}")
    ax.axvline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax.axvline(PAPER_ACCURACY, color="red", ls=":", lw=1, label="paper (~70%)")
    ax.set_yticks(y, [f"{p} ({kind_of[p]})" for p in order], fontsize=8)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel(f"balanced accuracy ({PRIMARY.name}; bars: mean ± std over folds x repeats)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = ctx.figure_path("per_pair.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


# --------------------------------------------------------------------------------------------------
# questions


def _classes_with_groups(labels: Sequence[str | None], groups: np.ndarray, min_groups: int) -> np.ndarray:
    """Row indices whose label has at least ``min_groups`` groups (None labels left out)."""
    per = n_groups_per_class([lab or "" for lab in labels], groups)
    return np.array([i for i, lab in enumerate(labels) if lab and per[lab] >= min_groups], dtype=np.int64)


@dataclass
class _Task:
    """One classification question evaluated over seeds: per-recogniser fold scores and pooled predictions."""

    name: str
    question: str
    rows: np.ndarray
    y: np.ndarray
    grouping: str
    accuracy: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    top5: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    majority5: list[float] = field(default_factory=list)
    pooled: dict[str, tuple[list, list]] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(np.unique(self.y))


def _run_task(task: _Task, corpus: LabelledClips, recognisers, seeds, folds_fn=None, top_k=()) -> _Task:
    groups = corpus.groups[task.grouping][task.rows]
    for seed in seeds:
        folds = folds_fn(seed) if folds_fn else grouped_folds(task.y, groups, n_splits=5, seed=seed)
        check_disjoint(folds, groups)
        results = cross_validate(
            recognisers, corpus.table, task.rows, task.y, folds, top_k=top_k, seed=seed,
            pool_groups=corpus.groups[task.grouping],
        )
        for name, cv in results.items():
            task.accuracy[name] += cv.accuracy
            if 5 in top_k:
                task.top5[name] += cv.top_k[5]
            if seed == seeds[0]:
                task.pooled[name] = (cv.y_true, cv.y_pred)
        if 5 in top_k:
            task.majority5 += majority_top_k(task.y, folds, 5)
    return task


@study("audiopairs", "questions", title="What AudioPairBank's labels ask of the audio: pair, noun, modifier, kind")
def questions(ctx: StudyContext) -> StudyResult:
    scale = _scale(ctx)
    corpus = load_labelled_clips(ctx, with_embeddings=not ctx.quick)
    recs = corpus.recordings
    wanted = ("mfcc", "mfcc+logmel", "boaw", "sfx")
    recognisers = scale.recognisers if ctx.quick else [
        r for r in scale.recognisers if r.features in wanted and corpus.table.has(r.features)
    ]
    uploader = corpus.groups["uploader"]
    tasks: list[_Task] = []
    with _single_thread():
        # Which pair? Multi-class over pairs with enough independent groups.
        rows = _classes_with_groups([r.pair for r in recs], uploader, scale.min_pair_groups)
        pair_task = _run_task(
            _Task("pair (multi-class)", "Which pair is it?", rows, np.array([recs[i].pair for i in rows]), "uploader"),
            corpus, recognisers, scale.seeds, top_k=(1, 5),
        )
        tasks.append(pair_task)
        # Which noun? Every labelled recording with a noun, plain labels included.
        rows = _classes_with_groups([r.noun for r in recs], uploader, scale.min_noun_groups)
        noun_task = _run_task(
            _Task("noun (multi-class)", "Which noun is it?", rows, np.array([recs[i].noun for i in rows]), "uploader"),
            corpus, recognisers, scale.seeds, top_k=(1, 5),
        )
        tasks.append(noun_task)
        rows = np.array([i for i, r in enumerate(recs) if r.noun in ("kick", "snare")])
        tasks.append(_run_task(
            _Task("noun: kick vs snare", "Kick or snare?", rows, np.array([recs[i].noun for i in rows]), "uploader"),
            corpus, recognisers, scale.seeds,
        ))
        # Which modifier, for a fixed noun?
        for noun, mods in (("industry", ("heavy", "light")), ("traffic", ("heavy", "light"))):
            rows = np.array([i for i, r in enumerate(recs) if r.noun == noun and r.modifier in mods])
            y = np.array([recs[i].modifier for i in rows])
            question = f"{mods[0].capitalize()} or {mods[1]} {noun}?"
            task = _Task(f"modifier: {mods[0]} vs {mods[1]} {noun}", question, rows, y, "uploader")
            tasks.append(_run_task(task, corpus, recognisers, scale.seeds))
        for mods in (("soft", "hard"), ("heavy", "light")):
            task = _modifier_transfer(recs, mods)
            if task is not None:
                tasks.append(_run_task(task[0], corpus, recognisers, scale.seeds[:1], folds_fn=task[1]))
        # ANP or VNP?
        rows = np.array([i for i, r in enumerate(recs) if r.kind != "none"])
        kinds = np.array([recs[i].kind for i in rows])
        for name, question, grouping in (
            ("kind: ANP vs VNP", "Adjective-noun or verb-noun pair?", "uploader"),
            ("kind: ANP vs VNP, unseen source package", "ANP or VNP, in a package never trained on?", "source"),
        ):
            tasks.append(_run_task(_Task(name, question, rows, kinds, grouping), corpus, recognisers, scale.seeds))
        curve = _learning_curve(corpus, recognisers, scale)

    names = [r.name for r in recognisers]
    rows_out, metrics = [], {}
    for task in tasks:
        chance = 1.0 / task.n_classes
        for n in names:
            metrics[f"{task.name}/{n}/balanced_accuracy"] = spread(task.accuracy[n])
            rows_out.append([
                task.name, task.grouping, len(task.rows), task.n_classes, n, _fmt(task.accuracy[n]), round(chance, 3),
            ])
    topk_rows = []
    for task in (pair_task, noun_task):
        for n in names:
            metrics[f"{task.name}/{n}/top5"] = spread(task.top5[n])
            topk_rows.append([
                task.name, task.n_classes, n, _fmt(task.accuracy[n]), _fmt(task.top5[n]),
                round(5 / task.n_classes, 3), _fmt(task.majority5),
            ])
    confusion = _same_noun_confusion(pair_task, PRIMARY.name)
    metrics["pair_confusions"] = confusion
    figures = [
        _plot_confusion(ctx, pair_task, PRIMARY.name),
        _plot_curve(ctx, curve),
    ]
    for n, points in curve["accuracy"].items():
        for size, values in points.items():
            metrics[f"learning_curve/{n}/{size}"] = spread(values)

    def best(task: _Task) -> str:
        return max(names, key=lambda n: _mean(task.accuracy[n]))

    claims = []
    for task in tasks:
        test = beats_chance(*task.pooled[PRIMARY.name])
        verdict = "agrees" if test["p_value"] < 0.01 else ("inconclusive" if len(task.rows) < 30 else "disagrees")
        n = best(task)
        claims.append(Claim(
            claim=f"{task.question} The audio answers it better than chance ({task.name}).",
            measured=f"{PRIMARY.name}: {_fmt(task.accuracy[PRIMARY.name])} balanced accuracy over folds; pooled "
            f"{test['balanced_accuracy']:.3f} on {test['n']} files ({test['test']}, p = {test['p_value']:.2g}); "
            f"best {n}: {_fmt(task.accuracy[n])}; chance {1 / task.n_classes:.3f}; {task.n_classes} classes, "
            f"grouped by {task.grouping}",
            verdict=verdict,
            why="Verdict from the pre-chosen recogniser's pooled test predictions (first seed): 'agrees' when "
            "p < 0.01, 'inconclusive' when p >= 0.01 on fewer than 30 files, else 'disagrees'.",
        ))
    claims.append(Claim(
        claim="Confusions between pairs stay within a noun (pairs sharing a noun sound alike).",
        measured=f"{confusion['same_noun_errors']} of {confusion['errors']} errors go to a pair with the same noun "
        f"({confusion['same_noun_share']:.3f}) vs {confusion['same_noun_expected']:.3f} expected if errors were "
        f"spread evenly; same modifier: {confusion['same_modifier_share']:.3f} vs "
        f"{confusion['same_modifier_expected']:.3f}",
        verdict="agrees" if confusion["same_noun_share"] > confusion["same_noun_expected"] else "disagrees",
        why="Measured on the pooled predictions of the multi-class pair recogniser "
        f"({PRIMARY.name}, first seed); only pairs with enough groups take part.",
    ))
    return StudyResult(
        part="audiopairs",
        study="questions",
        title="What AudioPairBank's labels ask of the audio: pair, noun, modifier, kind",
        scale=ctx.scale,
        summary=(
            f"Pair top-1/top-5 over {pair_task.n_classes} pairs, noun over {noun_task.n_classes} nouns, modifier "
            "for a fixed noun, ANP vs VNP, and a learning curve, all with grouped folds and chance levels."
        ),
        config={
            "features": feats.FeatureConfig().__dict__,
            "recognisers": [r.__dict__ for r in recognisers],
            "seeds": scale.seeds,
            "min_pair_groups": scale.min_pair_groups,
            "min_noun_groups": scale.min_noun_groups,
            "curve_sizes": list(scale.curve_sizes),
            "recordings": len(recs),
        },
        seeds=scale.seeds,
        data=corpus.data,
        metrics=metrics,
        tables=[
            Table(
                "Balanced accuracy per question (mean ± std over folds x seeds)",
                ["question", "grouped by", "files", "classes", "recogniser", "balanced accuracy", "chance"],
                rows_out,
            ),
            Table(
                "Multi-class pair and noun recognition: top-1 (balanced) and top-5 accuracy",
                ["task", "classes", "recogniser", "top-1 balanced", "top-5", "top-5 chance (uniform)",
                 "top-5 majority guess (measured)"],
                topk_rows,
            ),
            Table(
                "Accuracy against training files per class (noun task; balanced accuracy, mean ± std)",
                ["recogniser", *[f"{s} per class" for s in curve["sizes"]], "chance"],
                [[n, *[_fmt(curve["accuracy"][n][s]) for s in curve["sizes"]], round(curve["chance"], 3)]
                 for n in curve["accuracy"]],
            ),
        ],
        figures=figures,
        claims=claims,
    )


def beats_chance(y_true: Sequence, y_pred: Sequence) -> dict:
    """Do the predictions depend on the true class? A test on the pooled confusion matrix.

    Two classes: Fisher's exact test, one-sided (more correct answers than independence gives); more
    classes: the chi-square test of independence, counted only when balanced accuracy also exceeds 1/K.
    The null is a recogniser whose answers ignore the audio, whatever its answer frequencies, which is
    what balanced accuracy's chance level 1/K assumes.
    """
    from scipy.stats import chi2_contingency, fisher_exact
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    labels = sorted(set(y_true))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    cm = cm[:, cm.sum(axis=0) > 0]  # classes never predicted carry no information
    accuracy = float(balanced_accuracy_score(y_true, y_pred))
    if cm.shape[1] < 2:
        p = 1.0
    elif len(labels) == 2:
        p = float(fisher_exact(cm, alternative="greater").pvalue)
    else:
        p = float(chi2_contingency(cm).pvalue) if accuracy > 1 / len(labels) else 1.0
    return {"n": int(cm.sum()), "balanced_accuracy": accuracy, "p_value": p,
            "test": "Fisher exact (one-sided)" if len(labels) == 2 else "chi-square independence"}


def _modifier_transfer(recs: Sequence[Recording], mods: tuple[str, str]):
    """Leave-one-noun-out folds for ``mods[0]`` vs ``mods[1]`` over the nouns that have both."""
    nouns = sorted({r.noun for r in recs if r.modifier == mods[0]} & {r.noun for r in recs if r.modifier == mods[1]})
    if len(nouns) < 2:
        return None
    rows = np.array([i for i, r in enumerate(recs) if r.noun in nouns and r.modifier in mods])
    y = np.array([recs[i].modifier for i in rows])
    noun_of = np.array([recs[i].noun for i in rows])

    def folds(seed: int):
        return [(np.flatnonzero(noun_of != n), np.flatnonzero(noun_of == n)) for n in nouns]

    task = _Task(
        f"modifier: {mods[0]} vs {mods[1]}, unseen noun ({', '.join(nouns)})",
        f"{mods[0].capitalize()} or {mods[1]}, for a noun never trained on?", rows, y, "recording",
    )
    return task, folds


def _learning_curve(corpus: LabelledClips, recognisers, scale: StudyScale) -> dict:
    """Noun recognition with n training files per class (drawn from the training folds), n in curve_sizes."""
    recs = corpus.recordings
    uploader = corpus.groups["uploader"]
    min_groups = max(scale.curve_sizes) + 2
    rows = _classes_with_groups([r.noun for r in recs], uploader, min_groups)
    y = np.array([recs[i].noun for i in rows])
    groups = uploader[rows]
    chosen = [r for r in recognisers if r.features != "boaw"][:3]
    acc: dict[str, dict[int, list[float]]] = {r.name: {s: [] for s in scale.curve_sizes} for r in chosen}
    for seed in scale.seeds:
        rng = np.random.default_rng([seed, 7])
        for train, test in grouped_folds(y, groups, n_splits=5, seed=seed):
            for size in scale.curve_sizes:
                # One file per group first, so n files are n independent recordings where possible.
                sub = []
                for label in np.unique(y[train]):
                    idx = train[y[train] == label]
                    by_group = defaultdict(list)
                    for i in rng.permutation(idx):
                        by_group[int(groups[i])].append(int(i))
                    firsts = [v[0] for v in by_group.values()]
                    rest = [i for v in by_group.values() for i in v[1:]]
                    sub += (firsts + rest)[:size]
                sub = np.array(sorted(sub))
                fold = [(sub, test)]
                for name, cv in cross_validate(chosen, corpus.table, rows, y, fold, seed=seed).items():
                    acc[name][size] += cv.accuracy
    return {"sizes": list(scale.curve_sizes), "accuracy": acc, "chance": 1.0 / len(np.unique(y)),
            "classes": len(np.unique(y)), "files": len(rows)}


def _same_noun_confusion(task: _Task, name: str) -> dict:
    y_true, y_pred = task.pooled[name]
    labels = sorted(set(y_true))
    noun = {p: p.split(" ", 1)[1] for p in labels}
    modifier = {p: p.split(" ", 1)[0] for p in labels}
    errors = [(t, p) for t, p in zip(y_true, y_pred, strict=True) if t != p]
    same_noun = sum(noun[t] == noun[p] for t, p in errors)
    same_mod = sum(modifier[t] == modifier[p] for t, p in errors)

    # If a wrong answer were drawn evenly from the other pairs, how often would it share the noun/modifier?
    def expected(attr) -> float:
        if not errors:
            return float("nan")
        return float(np.mean([
            sum(attr[q] == attr[t] for q in labels if q != t) / (len(labels) - 1) for t, _ in errors
        ]))

    return {
        "errors": len(errors),
        "same_noun_errors": same_noun,
        "same_noun_share": same_noun / len(errors) if errors else float("nan"),
        "same_noun_expected": expected(noun),
        "same_modifier_errors": same_mod,
        "same_modifier_share": same_mod / len(errors) if errors else float("nan"),
        "same_modifier_expected": expected(modifier),
    }


def _plot_confusion(ctx, task: _Task, name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    y_true, y_pred = task.pooled[name]
    labels = sorted(set(y_true), key=lambda p: (p.split(" ", 1)[1], p))  # by noun, then modifier
    cm = confusion_matrix(y_true, y_pred, labels=labels).astype(float)
    cm /= cm.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(0.42 * len(labels) + 2.5, 0.42 * len(labels) + 2))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    nouns = [p.split(" ", 1)[1] for p in labels]
    start = 0
    for i in range(1, len(labels) + 1):  # outline blocks of pairs that share a noun
        if i == len(labels) or nouns[i] != nouns[start]:
            if i - start > 1:
                size = i - start
                ax.add_patch(plt.Rectangle((start - 0.5, start - 0.5), size, size, fill=False, ec="red", lw=1.5))
            start = i
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted pair")
    ax.set_ylabel("true pair")
    ax.set_title(f"Pair confusions ({name}); red: pairs sharing a noun", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, label="share of the true pair's files")
    fig.tight_layout()
    path = ctx.figure_path("pair_confusion.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def _plot_curve(ctx, curve: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, points in curve["accuracy"].items():
        sizes = curve["sizes"]
        m = [_mean(points[s]) for s in sizes]
        sd = [np.std(points[s]) for s in sizes]
        ax.errorbar(sizes, m, yerr=sd, marker="o", capsize=3, label=name)
    ax.axhline(curve["chance"], color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("training files per class")
    ax.set_ylabel("balanced accuracy")
    ax.set_title(f"Noun recognition, {curve['classes']} nouns ({curve['files']} files)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = ctx.figure_path("learning_curve.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name
