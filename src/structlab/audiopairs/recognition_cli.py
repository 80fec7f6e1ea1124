"""``structlab audiopairs features | bench | recognise``: the recognition side's commands.

They work on any corpus database (built from freesound or imported from a folder), so whoever has a
corpus can run the per-pair detectors of the studies on it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from structlab.cli import add_command


def register_commands(sub) -> None:
    """Add ``features``, ``bench``, ``recognise``, ``train`` and ``predict`` to the ``audiopairs`` command group."""
    from structlab.audiopairs.features import FEATURE_SETS
    from structlab.audiopairs.protocol import GROUPINGS
    from structlab.audiopairs.recognition import CLASSIFIERS, REPRESENTATIONS

    p = add_command(
        sub, "features", "extract clip features (cached per file) and write them with their labels to an .npz",
        examples="""
            structlab audiopairs features corpus.db --out features.npz
            structlab audiopairs features corpus.db --out logmel.npz --set logmel --workers 4
        """,
    )
    p.add_argument("corpus", type=Path, help="corpus database (de-duplicate it first: structlab audiopairs dedup)")
    p.add_argument("--out", type=Path, required=True, help="output .npz (X, path, sha256, pair, noun, kind)")
    p.add_argument("--set", dest="feature_set", choices=FEATURE_SETS, default="mfcc+logmel", help="clip vector")
    p.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    p.add_argument("--cache", type=Path, help="feature cache folder (default: the user's cache folder)")
    p.set_defaults(func=_run_features)

    p = add_command(
        sub, "bench", "time feature extraction: x real time per core (cold) and the warm-cache speed-up",
        examples="""
            structlab audiopairs bench
            structlab audiopairs bench corpus.db --workers 2
        """,
    )
    p.add_argument("corpus", type=Path, nargs="?", help="corpus database (default: the shared audio data set)")
    p.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    p.set_defaults(func=_run_bench)

    p = add_command(
        sub, "recognise", "per-pair detectors (balanced, grouped cross-validation) on a corpus",
        examples="""
            structlab audiopairs recognise corpus.db
            structlab audiopairs recognise corpus.db --classifier rbf-svm --features logmel --repeats 10
            structlab audiopairs recognise corpus.db --pair "dying orc" --pair "heavy traffic"
        """,
    )
    p.add_argument("corpus", type=Path, help="corpus database")
    p.add_argument("--classifier", choices=CLASSIFIERS, default="linear-svm")
    p.add_argument("--features", choices=REPRESENTATIONS, default="mfcc")
    p.add_argument("--grouping", choices=GROUPINGS, default="uploader", help="what must stay on one side of a split")
    p.add_argument("--min-groups", type=int, default=3, help="pairs need files in this many groups (default 3)")
    p.add_argument("--repeats", type=int, default=5, help="repeats with fresh negatives and folds (default 5)")
    p.add_argument("--pair", action="append", help="only this pair (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="feature cache folder (default: the user's cache folder)")
    p.set_defaults(func=_run_recognise)

    p = add_command(
        sub, "train", "train the multi-class pair recogniser (or per-pair detectors) and save it (skops, no pickle)",
        examples="""
            structlab audiopairs train corpus.db --out pairs.skops
            structlab audiopairs train corpus.db --out detectors.skops --detectors --classifier linear-svm
        """,
    )
    p.add_argument("corpus", type=Path, help="corpus database (de-duplicated: structlab audiopairs dedup)")
    p.add_argument("--out", type=Path, required=True, help="model file to write (.skops)")
    p.add_argument("--detectors", action="store_true", help="one binary detector per pair instead of one recogniser")
    p.add_argument("--classifier", choices=CLASSIFIERS, default="logreg")
    p.add_argument("--features", choices=FEATURE_SETS, default="mfcc", help="clip vector")
    p.add_argument("--min-files", type=int, default=2, help="pairs need this many files (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="feature cache folder (default: the user's cache folder)")
    p.set_defaults(func=_run_train)

    p = add_command(
        sub, "predict", "apply a saved model to clips (any container soundfile/librosa reads): top-k pairs",
        examples="""
            structlab audiopairs predict pairs.skops clip1.ogg clip2.wav --top-k 3
            structlab audiopairs predict detectors.skops sounds/*.flac --json
        """,
    )
    p.add_argument("model", type=Path, help="model file from structlab audiopairs train")
    p.add_argument("clips", type=Path, nargs="+", help="audio files")
    p.add_argument("--top-k", type=int, default=5, help="pairs to print per clip (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per clip: {path, pairs: [[pair, score]]}")
    p.set_defaults(func=_run_predict)


def _recordings(corpus_path: Path):
    from structlab.audiopairs.corpus import Corpus
    from structlab.audiopairs.recordings import from_corpus

    if not corpus_path.is_file():
        raise FileNotFoundError(f"{corpus_path}: no such corpus database")
    with Corpus(corpus_path) as corpus:
        recordings, duplicates = from_corpus(corpus)
    if not recordings:
        raise ValueError(f"{corpus_path}: no decodable files in this corpus")
    return recordings, duplicates


def _clips(recordings, cache: Path | None, workers: int | None = None):
    from structlab.audiopairs import features as feats

    return feats.extract(
        [r.path for r in recordings], checksums=[r.sha256 for r in recordings],
        cache_dir=cache or feats.default_cache_dir(), n_jobs=workers,
    )


def _run_features(args: argparse.Namespace) -> int:
    import numpy as np

    from structlab.atomic import atomic_open
    from structlab.audiopairs.features import summary_matrix

    recordings, duplicates = _recordings(args.corpus)
    X = summary_matrix(_clips(recordings, args.cache, args.workers), args.feature_set)
    with atomic_open(args.out, "wb") as handle:
        np.savez(
            handle, X=X, feature_set=args.feature_set,
            path=np.array([str(r.path) for r in recordings]), sha256=np.array([r.sha256 for r in recordings]),
            pair=np.array([r.pair or "" for r in recordings]), noun=np.array([r.noun for r in recordings]),
            kind=np.array([r.kind for r in recordings]),
        )
    print(f"{X.shape[0]} files x {X.shape[1]} features ({args.feature_set}) -> {args.out}; "
          f"{len(duplicates)} duplicates left out")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from structlab.audiopairs.features import measure_extraction

    if args.corpus is not None:
        recordings, _ = _recordings(args.corpus)
    else:
        from structlab import data
        from structlab.audiopairs.recordings import from_manifest

        recordings = from_manifest(data.resolve("audio").path)
    result = measure_extraction([r.path for r in recordings], [r.sha256 for r in recordings], n_jobs=args.workers)
    print(json.dumps({k: round(v, 3) for k, v in result.items()}, indent=2))
    return 0


def _run_recognise(args: argparse.Namespace) -> int:
    import numpy as np

    from structlab.audiopairs.protocol import recording_groups
    from structlab.audiopairs.recognition import FeatureTable, Recogniser, detect_pair
    from structlab.audiopairs.studies import eligible_pairs
    from structlab.results import format_spread, spread
    from structlab.runtime import progress

    recordings, _ = _recordings(args.corpus)
    groups = recording_groups(recordings, args.grouping)
    pairs = args.pair or eligible_pairs(recordings, groups, args.min_groups)
    known = {r.pair for r in recordings}
    unknown = [p for p in pairs if p not in known]
    if unknown:
        raise ValueError(f"pair={unknown[0]!r}: not a pair of this corpus")
    if not pairs:
        raise ValueError(f"no pair has files in >= {args.min_groups} groups under grouping={args.grouping!r}")
    table = FeatureTable(_clips(recordings, args.cache))
    recogniser = Recogniser(args.classifier, args.features)
    means: dict[str, list[float]] = {}
    print(f"{recogniser.name}, grouped by {args.grouping}, {args.repeats} repeats; balanced accuracy, chance 0.5")
    for pair in progress(pairs, desc="pairs", unit="pair"):
        positive = np.array([r.pair == pair for r in recordings])
        result = detect_pair(pair, table, positive, ~positive, groups, [recogniser], args.repeats, seed=args.seed)
        scores = result.accuracy[recogniser.name]
        kind = next(r.kind for r in recordings if r.pair == pair)
        means.setdefault(kind, []).append(float(np.mean(scores)))
        print(f"  {pair:32s} {kind}  {result.n_positive:4d} files  {format_spread(spread(scores))}")
    for kind, values in sorted(means.items()):
        print(f"mean over {kind} pairs: {format_spread(spread(values))}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from collections import Counter

    from structlab.audiopairs import features as feats
    from structlab.audiopairs.models import save_model, train
    from structlab.audiopairs.recognition import Recogniser

    recordings, duplicates = _recordings(args.corpus)
    counts = Counter(r.pair for r in recordings if r.pair)
    keep = {p for p, n in counts.items() if n >= args.min_files}
    detectors = args.detectors
    chosen = recordings if detectors else [r for r in recordings if r.pair in keep]
    labels = [r.pair if r.pair in keep else "" for r in chosen]
    if len(keep) < 2:
        raise ValueError(f"--min-files {args.min_files}: only {len(keep)} pair(s) have that many files; expected 2")
    X = feats.summary_matrix(_clips(chosen, args.cache), args.features)
    model = train(X, labels, "detectors" if detectors else "pairs", Recogniser(args.classifier, args.features),
                  seed=args.seed)
    save_model(model, args.out)
    print(f"{model['task']}: {len(model['pairs'])} pairs, {sum(bool(x) for x in labels)} labelled files "
          f"({args.classifier} / {args.features}; {len(duplicates)} duplicates left out) -> {args.out}")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from structlab.audiopairs.models import load_model, predict

    missing = [str(c) for c in args.clips if not c.is_file()]
    if missing:
        raise FileNotFoundError(f"clips: no such file {missing[0]!r}")
    model = load_model(args.model)
    results = predict(model, args.clips, top_k=args.top_k)
    for path, ranked in zip(args.clips, results, strict=True):
        if args.json:
            print(json.dumps({"path": str(path), "pairs": [[p, round(s, 6)] for p, s in ranked]}))
        else:
            print(f"{path}: " + ", ".join(f"{p} ({s:.3f})" for p, s in ranked))
    return 0
