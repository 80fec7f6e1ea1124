"""``structlab subject``: check the EEG data, show what a model's adapters wrap, evaluate methods under a protocol."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from structlab.cli import add_command


def register(subparsers: Any) -> None:
    """Add the ``subject`` command group to the ``structlab`` command line."""
    subject = add_command(
        subparsers, "subject", "subject-conditioned layers: EEG data checks, wrapping, evaluation protocols",
        examples="""
            structlab subject data
            structlab subject layers --backbone eegnet --rank 4
            structlab subject evaluate --protocol pooled-cross-session --steps 300
            structlab subject evaluate --protocol loso-calibration-16 --subjects 01 02 --seeds 0 1
            structlab reproduce --only subject
        """,
    )
    sub = subject.add_subparsers(dest="subject_command", required=True, metavar="COMMAND")

    data = add_command(
        sub, "data", "load the SSVEP exoskeleton recordings, check them and report every fault",
        examples="structlab subject data\nstructlab subject data --raise\nstructlab subject data --no-cache",
        description="Checks channels, sampling rate, event counts, saturation and duplicate recordings "
        "(by content), caches the epoched trials, and prints the report and the trials per subject.",
    )
    data.add_argument("--raise", dest="raise_", action="store_true", help="refuse the data set on any fault")
    data.add_argument("--no-cache", action="store_true", help="rebuild the trials instead of reading the cache")
    data.set_defaults(func=_data)

    layers = add_command(
        sub, "layers", "wrap a backbone and list the layers that got adapters and those that did not",
        examples="structlab subject layers --backbone eegnex --rank 8\nstructlab subject layers --exclude classifier",
    )
    layers.add_argument("--backbone", default="eegnet", help="eegnet, shallow, eegnex or braindecode:<Model>")
    layers.add_argument("--n-chans", type=int, default=8)
    layers.add_argument("--n-times", type=int, default=512)
    layers.add_argument("--n-outputs", type=int, default=4)
    layers.add_argument("--subjects", type=int, default=12, help="number of subjects")
    layers.add_argument("--rank", type=int, default=4)
    layers.add_argument("--include", nargs="*", help="glob patterns of layer names to wrap")
    layers.add_argument("--exclude", nargs="*", default=[], help="glob patterns of layer names to leave")
    layers.set_defaults(func=_layers)

    evaluate = add_command(
        sub, "evaluate", "run the methods under a protocol on the SSVEP data and print per-subject accuracy",
        examples="""
            structlab subject evaluate --protocol pooled-cross-session
            structlab subject evaluate --protocol loso-zero-shot --subjects 04 05 --steps 300
            structlab subject evaluate --protocol loso-calibration-8 --backbone shallow --rank 2
        """,
    )
    evaluate.add_argument("--protocol", default="pooled-cross-session",
                          help="pooled-cross-session, loso-zero-shot or loso-calibration-<k>")
    evaluate.add_argument("--backbone", default="eegnet")
    evaluate.add_argument("--seeds", type=int, nargs="+", default=[0])
    evaluate.add_argument("--steps", type=int, default=600, help="optimiser steps per training run")
    evaluate.add_argument("--rank", type=int, default=4)
    evaluate.add_argument("--subject-dropout", type=float, default=0.25)
    evaluate.add_argument("--exclude", nargs="*",
                          help="layers without adapters (default: the backbone's spatial conv and classifier, as in "
                          "the study)")
    evaluate.add_argument("--subjects", nargs="*", help="held-out subjects for LOSO protocols (default: all)")
    evaluate.set_defaults(func=_evaluate)


def _data(args: argparse.Namespace) -> int:
    from structlab.subject import ssvep_exo

    trials = ssvep_exo.load(on_problem="raise" if args.raise_ else "drop",
                            cache_dir=False if args.no_cache else None, progress=True)
    report = trials.info["report"]
    print(f"{report['dataset']}: {len(report['kept'])} recordings, {report['trials']} trials kept "
          f"({trials.X.shape[1]} channels x {trials.X.shape[2]} samples at {trials.sfreq:g} Hz)")
    for p in report["problems"]:
        print(f"  {p['kind']}: {p['recording']}: {p['detail']} -> {p['action']}")
    for s in trials.subjects:
        sessions = trials.sessions(s)
        counts = [int(((trials.subject == s) & (trials.session == e)).sum()) for e in sessions]
        print(f"  subject {s}: {len(sessions)} sessions, trials {counts}")
    if "cache" in trials.info:
        print(f"cache: {trials.info['cache']['path']} ({'hit' if trials.info['cache']['hit'] else 'written'})")
    return 0


def _layers(args: argparse.Namespace) -> int:
    from structlab.subject import SubjectConditioned
    from structlab.subject.backbones import build

    model = build(args.backbone, args.n_chans, args.n_outputs, args.n_times)
    shared = sum(p.numel() for p in model.parameters())
    wrapped = SubjectConditioned(model, args.subjects, rank=args.rank, include=args.include, exclude=args.exclude,
                                 clip_rank=True)
    print(f"{args.backbone}: {shared} shared parameters; adapters for {args.subjects} subjects:")
    total = 0
    for name, layer in wrapped.wrapped_layers.items():
        total += layer.adapter_parameters_per_subject
        print(f"  wrapped  {name:<14} {layer.kind:<7} rank {layer.rank} (limit {layer.limit}), "
              f"{layer.adapter_parameters_per_subject} parameters per subject")
    for name, reason in wrapped.skipped_layers.items():
        print(f"  skipped  {name:<14} {reason}")
    print(f"{total} adapter parameters per subject ({100 * total / shared:.1f}% of the shared model)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from structlab.subject import evaluation as ev
    from structlab.subject import protocols, ssvep_exo
    from structlab.subject.studies import TEMPORAL_ONLY
    from structlab.subject.training import TrainConfig

    protocol = protocols.get(args.protocol)
    trials = ssvep_exo.load(progress=True)
    exclude = args.exclude if args.exclude is not None else TEMPORAL_ONLY.get(args.backbone, [])
    config = ev.EvalConfig(backbone=args.backbone, train=TrainConfig(steps=args.steps), rank=args.rank,
                           subject_dropout=args.subject_dropout, exclude=exclude)
    records = []
    for seed in args.seeds:
        if isinstance(protocol, protocols.PooledCrossSession):
            records += ev.evaluate_pooled(trials, config, seed, progress=True)
        else:
            ks = (protocol.k,) if isinstance(protocol, protocols.LosoCalibration) else ()
            records += ev.evaluate_loso(trials, config, seed, ks, args.subjects, progress=True)
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.protocol == protocol.name:
            table[r.method][r.subject].append(r.accuracy)
    subjects = sorted({s for row in table.values() for s in row})
    print(f"{protocol.name}, {args.backbone}, seeds {args.seeds}: accuracy per subject (mean over seeds)")
    print(f"{'method':<52}" + "".join(f"{s:>6}" for s in subjects) + "    mean")
    for method, row in table.items():
        means = [float(np.mean(row[s])) if s in row else float("nan") for s in subjects]
        print(f"{method:<52}" + "".join(f"{m:6.2f}" for m in means) + f"  {np.nanmean(means):6.3f}")
    return 0
