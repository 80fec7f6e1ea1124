"""Benchmark: cost of subject-conditioned layers against the unwrapped model, measured in one run.

A training step (forward, backward, AdamW step) of an EEG-sized CNN on a batch of ``--batch`` trials
drawn from 9, 64 and 256 subjects, against the same step of the unwrapped model; and inference with one
subject (wrapped) and with the merged model, against the unwrapped model. Rounds interleave the
variants, and each ratio is the median over rounds of the per-round ratio, so load on a shared machine
cancels out as far as it can.

    .venv/bin/python benchmarks/subject_layers.py                  # EEGNet and ShallowConvNet, 1 thread
    .venv/bin/python benchmarks/subject_layers.py --models eegnet --rounds 5
    .venv/bin/python benchmarks/subject_layers.py --device cuda --models eegnet shallow eegnex

Prints JSON and writes results/subject/bench_layers.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from structlab.results import Claim, StudyResult, Table, finish
from structlab.subject import SubjectConditioned
from structlab.subject.backbones import build

SUBJECT_COUNTS = (9, 64, 256)


def _timed(fn, steps: int, device: str) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls (waiting for the GPU to finish)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def _train_step(model, x, y, subjects=None):
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        out = model(x) if subjects is None else model(x, subjects)
        loss = torch.nn.functional.cross_entropy(out, y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return step


def bench_model(name: str, n_chans: int, n_times: int, batch: int, rank: int, rounds: int, steps: int,
                device: str) -> dict:
    torch.manual_seed(0)
    base = build(name, n_chans, 4, n_times).to(device)
    x = torch.randn(batch, n_chans, n_times, device=device)
    y = torch.randint(0, 4, (batch,), device=device)
    variants = {"unwrapped": _train_step(copy.deepcopy(base).train(), x, y)}
    for n in SUBJECT_COUNTS:
        wrapped = SubjectConditioned(copy.deepcopy(base), n, rank=rank, clip_rank=True).train()
        with torch.no_grad():  # non-zero corrections, as after training
            for _, layer in wrapped.subject_layers():
                layer.B.normal_(0, 0.01)
        subjects = torch.arange(batch, device=device) % n  # every subject in the batch
        variants[f"wrapped, {n} subjects"] = _train_step(wrapped, x, y, subjects)

    inference_model = SubjectConditioned(copy.deepcopy(base), 9, rank=rank, clip_rank=True).eval()
    with torch.no_grad():
        for _, layer in inference_model.subject_layers():
            layer.B.normal_(0, 0.01)
    merged = inference_model.merged(3).eval()
    plain = copy.deepcopy(base).eval()
    inference = {
        "unwrapped": lambda: plain(x),
        "wrapped, one subject": lambda: inference_model(x, 3),
        "merged": lambda: merged(x),
    }

    # What is timed must be right: a mixed batch equals each sample through its subject's merged model.
    with torch.no_grad():
        check = SubjectConditioned(copy.deepcopy(base), 9, rank=rank, clip_rank=True).eval()
        for _, layer in check.subject_layers():
            layer.B.normal_(0, 0.1)
        ids = torch.arange(8, device=device) % 9
        mixed = check(x[:8], ids)
        alone = torch.cat([check.merged(int(s)).eval()(x[i : i + 1]) for i, s in enumerate(ids.tolist())])
        max_error = float((mixed - alone).abs().max() / alone.abs().max())

    times: dict[str, list[float]] = {k: [] for k in (*variants, *(f"infer: {k}" for k in inference))}
    for fn in (*variants.values(), *inference.values()):  # warm-up
        with torch.set_grad_enabled(fn in variants.values()):
            fn()
    for _ in range(rounds):
        for key, fn in variants.items():
            times[key].append(_timed(fn, steps, device))
        with torch.no_grad():
            for key, fn in inference.items():
                times[f"infer: {key}"].append(_timed(fn, steps, device))

    def ratio(key: str, baseline: str) -> float:
        return statistics.median(a / b for a, b in zip(times[key], times[baseline], strict=True))

    out = {
        "model": name,
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "input": [batch, n_chans, n_times],
        "rank": rank,
        "mixed_vs_merged_relative_error": max_error,
        "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "train_ratio": {n: ratio(f"wrapped, {n} subjects", "unwrapped") for n in SUBJECT_COUNTS},
        "infer_ratio": {
            "wrapped, one subject": ratio("infer: wrapped, one subject", "infer: unwrapped"),
            "merged": ratio("infer: merged", "infer: unwrapped"),
        },
    }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["eegnet", "shallow"])
    parser.add_argument("--n-chans", type=int, default=22, help="EEG channels (22: BCI Competition IV 2a)")
    parser.add_argument("--n-times", type=int, default=512, help="samples per trial (4 s at 128 Hz)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    torch.set_num_threads(args.threads)

    runs = [
        bench_model(m, args.n_chans, args.n_times, args.batch, args.rank, args.rounds, args.steps, args.device)
        for m in args.models
    ]
    print(json.dumps(runs, indent=2))

    rows = []
    for run in runs:
        for n in SUBJECT_COUNTS:
            rows.append([run["model"], f"train step, {n} subjects in the batch",
                         round(run["ms"][f"wrapped, {n} subjects"], 1), round(run["ms"]["unwrapped"], 1),
                         round(run["train_ratio"][n], 3)])
        for key in ("wrapped, one subject", "merged"):
            rows.append([run["model"], f"inference, {key}", round(run["ms"][f"infer: {key}"], 1),
                         round(run["ms"]["infer: unwrapped"], 1), round(run["infer_ratio"][key], 3)])
    claims = []
    for run in runs:
        tr, inf = run["train_ratio"], run["infer_ratio"]
        growth = tr[256] / tr[9]
        claims += [
            Claim(f"{run['model']}: training step <= 1.3x the unwrapped model at 64 subjects",
                  f"{tr[64]:.2f}x", "agrees" if tr[64] <= 1.3 else "disagrees"),
            Claim(f"{run['model']}: merged inference 1.0x (within noise)",
                  f"{inf['merged']:.2f}x", "agrees" if abs(inf["merged"] - 1) <= 0.1 else "disagrees",
                  "within noise taken as +-10% of the median per-round ratio"),
            Claim(f"{run['model']}: no growth of step time with the number of subjects",
                  f"256 vs 9 subjects: {growth:.2f}x", "agrees" if growth <= 1.1 else "disagrees",
                  "per-sample gathers and grouped kernels cost the same for any number of distinct subjects"),
        ]
    result = StudyResult(
        part="subject", study="bench_layers", title="Subject-conditioned layers: step time against unwrapped",
        scale="full",  # a benchmark at its documented size is evidence (`structlab evidence save`)
        summary="Median per-round ratios of wrapped to unwrapped step times, measured in one run.",
        config=vars(args),
        metrics={run["model"]: run for run in runs},
        tables=[Table("Step times (ms) and ratios", ["model", "what", "wrapped ms", "unwrapped ms", "ratio"], rows)],
        claims=claims,
    )
    if args.device != "cpu":
        result.study = f"bench_layers_{args.device.split(':')[0]}"
    path = finish(result, args.results, wall_seconds=time.perf_counter() - began)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
