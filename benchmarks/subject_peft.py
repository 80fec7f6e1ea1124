"""Benchmark: subject-conditioned layers against peft's LoRA, the library a user would reach for, in one run.

peft holds one named LoRA adapter per subject. At inference it mixes adapters in a batch with
``model(x, adapter_names=[...])`` (it loops over the distinct adapters of the batch in every layer); in training
it has no mixed batches, so a step over a batch of many subjects is a loop: per subject, ``set_adapter``,
forward and backward of that subject's trials, then one optimiser step. We compute a mixed batch in one pass.
Both wrap the same layers with the same A and B (the outputs are checked equal before timing); peft supports
neither grouped convolutions (merging) nor dilated ones, so the models are ShallowConvNet and EEGNet's
ungrouped layers (its first temporal conv, pointwise conv and classifier). A third variant runs our layers over
peft's per-subject slices: on CPU a backbone can be faster on small slices than on the whole batch (ShallowConvNet's
activations of 256 trials leave the caches), and the ratio at the same slices separates that from the adapters.

    .venv/bin/python benchmarks/subject_peft.py                          # batch 256, 9/64/256 subjects, 1 thread
    .venv/bin/python benchmarks/subject_peft.py --models shallow --rounds 3 --batch 128

Prints JSON (ratios = peft's time / ours, medians of per-round ratios) and writes results/subject/bench_peft.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

from structlab.results import Claim, StudyResult, Table, finish, spread
from structlab.subject import SubjectConditioned
from structlab.subject.backbones import build

SUBJECT_COUNTS = (9, 64, 256)
# layers peft can adapt (groups == 1, no dilation), by model
TARGETS = {"shallow": ["features.0", "features.1", "classifier"], "eegnet": ["features.0", "features.8", "classifier"]}


def _timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def _models(name: str, n_subjects: int, n_chans: int, n_times: int, rank: int):
    """Ours and peft's model with the same base weights and the same random A, B per subject."""
    import peft

    torch.manual_seed(0)
    base = build(name, n_chans, 4, n_times)
    theirs_base = copy.deepcopy(base)
    ours = SubjectConditioned(base, n_subjects, rank=rank, alpha=float(rank), include=TARGETS[name])
    config = peft.LoraConfig(r=rank, lora_alpha=float(rank), target_modules=TARGETS[name], lora_dropout=0.0,
                             init_lora_weights=False)
    theirs = peft.get_peft_model(theirs_base, config, adapter_name="s0")
    for s in range(1, n_subjects):
        theirs.add_adapter(f"s{s}", config)
    modules = dict(theirs.base_model.model.named_modules())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer_name, layer in ours.subject_layers():
            layer.A.copy_(torch.randn(layer.A.shape, generator=gen) * 0.1)
            layer.B.copy_(torch.randn(layer.B.shape, generator=gen) * 0.1)
            lora = modules[layer_name]
            for s in range(n_subjects):
                a, b = lora.lora_A[f"s{s}"].weight, lora.lora_B[f"s{s}"].weight
                a.copy_(layer.A[s].reshape(a.shape))
                b.copy_(layer.B[s].reshape(b.shape))
    return ours, theirs


def bench(name: str, n_subjects: int, batch: int, n_chans: int, n_times: int, rank: int, rounds: int,
          steps: int) -> dict:
    ours, theirs = _models(name, n_subjects, n_chans, n_times, rank)
    x = torch.randn(batch, n_chans, n_times)
    y = torch.randint(0, 4, (batch,))
    ids = torch.arange(batch) % n_subjects  # every subject in the batch
    names = [f"s{s}" for s in ids.tolist()]
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        a, b = ours(x, ids), theirs(x, adapter_names=names)
        error = float((a - b).abs().max() / b.abs().max())

    ours_opt = torch.optim.AdamW(ours.adapter_parameters(), lr=1e-3)
    lora_params = [p for n, p in theirs.named_parameters() if "lora_" in n]
    theirs_opt = torch.optim.AdamW(lora_params, lr=1e-3)
    groups = {s: (ids == s).nonzero().flatten() for s in range(n_subjects)}

    def ours_train():
        loss = F.cross_entropy(ours(x, ids), y)
        ours_opt.zero_grad(set_to_none=True)
        loss.backward()
        ours_opt.step()

    def ours_train_sliced():  # ours over the same per-subject slices as peft's loop (cache effects apart)
        ours_opt.zero_grad(set_to_none=True)
        for idx in groups.values():
            (F.cross_entropy(ours(x[idx], ids[idx]), y[idx], reduction="sum") / batch).backward()
        ours_opt.step()

    def theirs_train():  # peft: one subject at a time, then one step
        theirs_opt.zero_grad(set_to_none=True)
        for s, idx in groups.items():
            theirs.base_model.set_adapter(f"s{s}")
            (F.cross_entropy(theirs(x[idx]), y[idx], reduction="sum") / batch).backward()
        theirs_opt.step()

    def ours_infer():
        with torch.no_grad():
            ours(x, ids)

    def theirs_infer():
        with torch.no_grad():
            theirs(x, adapter_names=names)

    variants = {"ours train": ours_train, "ours train (per-subject loop)": ours_train_sliced,
                "peft train (per-subject loop)": theirs_train,
                "ours inference": ours_infer, "peft inference (adapter_names)": theirs_infer}
    for key, fn in variants.items():  # warm-up
        (ours if key.startswith("ours") else theirs).train(key.endswith("train") or "train (" in key)
        fn()
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for key, fn in variants.items():
            training = "train" in key
            (ours if key.startswith("ours") else theirs).train(training)
            times[key].append(_timed(fn, steps))

    def ratio(a: str, b: str) -> dict:
        return spread(x / y for x, y in zip(times[a], times[b], strict=True))

    return {
        "model": name, "subjects_in_batch": n_subjects, "batch": batch, "input": [n_chans, n_times], "rank": rank,
        "mixed_batch_relative_error_vs_peft": error,
        "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "ms_per_round": {k: [1e3 * t for t in v] for k, v in times.items()},
        # per-round ratios (median, min, max): the rounds interleave the variants, so a slow spell of the
        # machine hits both sides of a round
        "train_ratio_peft_over_ours": ratio("peft train (per-subject loop)", "ours train"),
        "train_ratio_same_slices": ratio("peft train (per-subject loop)", "ours train (per-subject loop)"),
        "inference_ratio_peft_over_ours": ratio("peft inference (adapter_names)", "ours inference"),
    }


def _ratio_text(ratio: dict) -> str:
    return f"{ratio['median']:.2f}x [{ratio['min']:.2f}, {ratio['max']:.2f}]"


def _verdict(ratio: dict) -> str:
    """Faster where every round says so, slower where every round says so, else inconclusive."""
    if ratio["min"] > 1:
        return "agrees"
    return "disagrees" if ratio["max"] < 1 else "inconclusive"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["shallow", "eegnet"])
    parser.add_argument("--subjects", nargs="+", type=int, default=list(SUBJECT_COUNTS))
    parser.add_argument("--n-chans", type=int, default=22)
    parser.add_argument("--n-times", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    torch.set_num_threads(args.threads)
    runs = [bench(m, n, args.batch, args.n_chans, args.n_times, args.rank, args.rounds, args.steps)
            for m in args.models for n in args.subjects]
    print(json.dumps(runs, indent=2))
    rows = [[r["model"], r["subjects_in_batch"], round(r["ms"]["ours train"], 1),
             round(r["ms"]["peft train (per-subject loop)"], 1), _ratio_text(r["train_ratio_peft_over_ours"]),
             round(r["ms"]["ours train (per-subject loop)"], 1), _ratio_text(r["train_ratio_same_slices"]),
             round(r["ms"]["ours inference"], 1), round(r["ms"]["peft inference (adapter_names)"], 1),
             _ratio_text(r["inference_ratio_peft_over_ours"]), f"{r['mixed_batch_relative_error_vs_peft']:.1e}"]
            for r in runs]
    claims = [Claim(f"{r['model']}, {r['subjects_in_batch']} subjects in a batch: a mixed-subject training step "
                    "is faster than peft's per-subject loop",
                    f"peft/ours = {_ratio_text(r['train_ratio_peft_over_ours'])}",
                    _verdict(r["train_ratio_peft_over_ours"])) for r in runs]
    claims += [Claim(f"{r['model']}, {r['subjects_in_batch']} subjects: mixed-subject inference at least as fast as "
                     "peft's adapter_names batches", f"peft/ours = {_ratio_text(r['inference_ratio_peft_over_ours'])}",
                     _verdict(r["inference_ratio_peft_over_ours"])) for r in runs]
    result = StudyResult(
        part="subject", study="bench_peft", title="Subject-conditioned layers against peft LoRA (mixed batches)",
        # a benchmark at its documented size is evidence (`structlab evidence save`), as subject_layers.py's
        scale="full", summary="Per-round ratios of peft's time to ours (median [min, max]), measured in one run.",
        config=vars(args), metrics={"runs": runs},
        tables=[Table("Times (ms) and ratios (peft / ours, median [min, max] over rounds)",
                      ["model", "subjects in batch", "ours train ms", "peft train ms", "train ratio",
                       "ours train, peft's slices ms", "train ratio, same slices", "ours inference ms",
                       "peft inference ms", "inference ratio", "max rel. difference"], rows)],
        claims=claims,
    )
    print(f"results: {finish(result, args.results, wall_seconds=time.perf_counter() - began)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
