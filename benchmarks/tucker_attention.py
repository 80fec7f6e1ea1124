"""Attention layers at GPT-2-small's and SmolLM2-135M's shapes: parameters, KV cache, prefill, training
step, and decoding at the memory limit.

Layers, GPT-2 small (d = 768, 12 heads, causal, RoPE: per head for MHA/GQA, latent for MLA/Tucker):
the lean MHA baseline, this package's MHA, GQA with n_KV = 2, MLA with d_c = 128, Tucker Attention with
ranks [8, 128, 64] on both sides. SmolLM2-135M (d = 576, 9 query heads, 3 KV heads, head dim 64, RoPE
base 100000): the lean GQA baseline, this package's GQA, its exact Tucker form (``to_tucker``, ranks
(9, 576, 192)) and Tucker [9, 192, 48], whose cache is 4x smaller. The lean baseline is the plain layer a
user would write: nanoGPT's one fused QKV projection and SDPA, RoPE as a complex product with a
precomputed table (Meta's Llama reference code) and a preallocated cache written in place.

Decoding (batch 1, one thread, float32) is bound by memory: per token a layer reads its weights and its
cache. So that every token reads them from memory, as in a model whose other layers evict them, each
layer is decoded as a stack of identical copies (own weights, own cache) that together hold at least
``--working-set`` MB (default 4x the last-level cache), one token through every copy per pass. The
context is held exactly: each step decodes position ``context`` over ``context`` cached positions, then
the cache is cut back to ``context``. Bytes per token are counted from the tensors a step reads (the
parameters, and the cache after the step). In the same rounds the machine's one-thread read bandwidth is
measured (a sum over a contiguous buffer twice the working set, in 1 MiB chunks; 64 MiB on a GPU), and
each layer's bytes/s is set against it. Times are the thread's CPU time (``time.thread_time``; wall
time with a synchronise on CUDA), medians over the calls of a pass: on a shared machine, wall time also
counts the slices other processes run in. Ratios and fractions are computed per round, then summarised
over rounds (median, min, max).

Analysis of Tucker's step: the attention products alone (``softmax(Q K^T) V`` on the stack's own cache
tensors, cold, and the same on one warm cache: the compute floor), and the fixed cost of a step (the same
layer at tiny sizes: Python and dispatch).

Run: ``OMP_NUM_THREADS=1 nice -n 10 taskset -c 0 python benchmarks/tucker_attention.py [--quick]``
(``--device cuda`` for a GPU, ``--profile`` for torch.profiler's table of one Tucker step).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from structlab.results import Claim, StudyResult, Table, finish, spread
from structlab.tucker import (
    GroupedQueryAttention,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    TuckerAttention,
    attention_parameters,
    kv_cache_bytes,
    to_tucker,
)
from structlab.tucker.rope import rotary_angles, rotary_frequencies

# The arguments that make each results file of this script evidence (docs name them while it is missing).
EVIDENCE_ARGS = {"bench_attention_cuda": "--device cuda"}
D_MODEL, N_HEADS = 768, 12  # GPT-2 small
SMOL_D, SMOL_HEADS, SMOL_KV, SMOL_BASE = 576, 9, 3, 100000.0  # SmolLM2-135M
LEAN_MHA, LEAN_GQA = "MHA (lean)", "GQA (lean)"
TUCKER = "Tucker [8,128,64]"
TUCKER_EXACT, TUCKER_SMALL = "Tucker exact [9,576,192]", "Tucker [9,192,48] (cache/4)"


# --- the lean baseline ----------------------------------------------------------------------------


class StaticCache:
    """Preallocated keys and values (batch, n_kv, capacity, d_H), written in place (as gpt-fast's cache)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, turns: torch.Tensor) -> None:
        self.k, self.v, self.turns, self.length = k, v, turns, 0

    def truncate(self, length: int) -> None:
        self.length = length

    @property
    def nbytes(self) -> int:
        return 2 * self.k[:, :, : self.length].nbytes


class LeanAttention(nn.Module):
    """nanoGPT's attention (one fused QKV projection, SDPA) with grouped KV heads, RoPE as in Meta's Llama
    reference (interleaved pairs times a precomputed complex table) and a static cache."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, rope_base: float = 10000.0) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.c_attn = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=False)
        self.c_proj = nn.Linear(d_model, d_model, bias=False)
        self.rope_base = rope_base

    def new_cache(self, capacity: int, like: torch.Tensor) -> StaticCache:
        k = like.new_zeros(like.shape[0], self.n_kv_heads, capacity, self.head_dim)
        cos, sin = rotary_angles(rotary_frequencies(self.head_dim, self.rope_base), 0, capacity, like)
        return StaticCache(k, torch.zeros_like(k), torch.complex(cos, sin))

    def forward(self, x: torch.Tensor, cache: StaticCache | None = None) -> torch.Tensor:
        batch, seq, _ = x.shape
        pos = cache.length if cache is not None else 0
        split = [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim]
        q, k, v = self.c_attn(x).split(split, dim=-1)
        if cache is not None:
            turns = cache.turns[pos : pos + seq, None]
        else:
            cos, sin = rotary_angles(rotary_frequencies(self.head_dim, self.rope_base), 0, seq, x)
            turns = torch.complex(cos, sin)[:, None]
        q = torch.view_as_real(torch.view_as_complex(q.view(batch, seq, self.n_heads, -1, 2)) * turns).flatten(3)
        k = torch.view_as_real(torch.view_as_complex(k.view(batch, seq, self.n_kv_heads, -1, 2)) * turns).flatten(3)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cache is not None:
            cache.k[:, :, pos : pos + seq] = k
            cache.v[:, :, pos : pos + seq] = v
            cache.length = pos + seq
            k, v = cache.k[:, :, : pos + seq], cache.v[:, :, : pos + seq]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1 and pos == 0,
                                           enable_gqa=self.n_kv_heads < self.n_heads)
        return self.c_proj(y.transpose(1, 2).reshape(batch, seq, self.d_model))


def new_cache(layer: nn.Module, capacity: int, like: torch.Tensor):
    return layer.new_cache(capacity, like) if isinstance(layer, LeanAttention) else layer.new_cache()


# --- layers ---------------------------------------------------------------------------------------


def gpt2_layers() -> dict[str, nn.Module]:
    kw = {"causal": True, "rope": True}
    return {
        LEAN_MHA: LeanAttention(D_MODEL, N_HEADS, N_HEADS),
        "MHA": MultiHeadAttention(D_MODEL, N_HEADS, **kw),
        "GQA (n_KV=2)": GroupedQueryAttention(D_MODEL, N_HEADS, 2, **kw),
        "MLA (d_c=128)": MultiHeadLatentAttention(D_MODEL, N_HEADS, 128, **kw),
        TUCKER: TuckerAttention(D_MODEL, N_HEADS, (8, 128, 64), **kw),
    }


def smollm_layers() -> dict[str, nn.Module]:
    kw = {"causal": True, "rope": True, "rope_base": SMOL_BASE}
    gqa = GroupedQueryAttention(SMOL_D, SMOL_HEADS, SMOL_KV, **kw)
    return {
        LEAN_GQA: LeanAttention(SMOL_D, SMOL_HEADS, SMOL_KV, SMOL_BASE),
        "GQA": gqa,
        TUCKER_EXACT: to_tucker(gqa),
        TUCKER_SMALL: TuckerAttention(SMOL_D, SMOL_HEADS, (9, 192, 48), **kw),
    }


# --- clocks and simple timings --------------------------------------------------------------------


def make_clock(device: torch.device) -> Callable[[], float]:
    """Seconds: this thread's CPU time on the CPU; wall time after a synchronise on CUDA."""
    if device.type == "cuda":
        def clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return clock
    return time.thread_time


def interleaved(layers: dict[str, nn.Module], make: Callable[[str, nn.Module], Callable[[], object]], rounds: int,
                clock: Callable[[], float]) -> dict[str, float]:
    """Median seconds per call of each layer's ``make(name, layer)()``, layers alternating every round."""
    fns = {name: make(name, layer) for name, layer in layers.items()}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# --- decoding at the memory limit -----------------------------------------------------------------


@dataclass
class DecodeStack:
    """``copies`` of one layer with its cache at ``context`` positions, and what one token step reads."""

    items: list[tuple[nn.Module, object]]
    token: torch.Tensor
    context: int
    weight_bytes: int
    cache_bytes: int  # the cache a step reads: context + 1 positions

    @property
    def bytes_per_token(self) -> int:
        return self.weight_bytes + self.cache_bytes


def decode_stack(layer: nn.Module, context: int, working_set: int, device: torch.device,
                 dtype: torch.dtype) -> DecodeStack:
    """Copies of ``layer`` (each with a cache prefilled to ``context``) holding >= ``working_set`` bytes."""
    factory = {"device": device, "dtype": dtype}
    token = torch.randn(1, 1, layer.d_model, **factory)
    with torch.inference_mode():
        cache = new_cache(layer, context + 1, token)
        layer(torch.randn(1, context, layer.d_model, **factory), cache)
        layer(token, cache)  # grows the storage once and builds any tables, as every timed step after it
        cache_bytes = cache.nbytes
        cache.truncate(context)
    weight_bytes = sum(p.nbytes for p in layer.parameters())
    copies = max(1, math.ceil(working_set / (weight_bytes + cache_bytes)))
    items = [copy.deepcopy((layer, cache)) for _ in range(copies)]
    return DecodeStack(items, token, context, weight_bytes, cache_bytes)


def decode_pass(stack: DecodeStack, clock: Callable[[], float]) -> float:
    """One token through every copy, the context cut back after each: median seconds per step."""
    times = []
    with torch.inference_mode():
        for layer, cache in stack.items:
            start = clock()
            layer(stack.token, cache)
            times.append(clock() - start)
            cache.truncate(stack.context)
    return statistics.median(times)


def read_bandwidth(chunks: list[torch.Tensor], clock: Callable[[], float]) -> float:
    """One-thread read bandwidth in bytes/s: a sum over each 1 MiB chunk of a contiguous buffer, median rate."""
    times = []
    for chunk in chunks:
        start = clock()
        chunk.sum()
        times.append(clock() - start)
    return chunks[0].nbytes / statistics.median(times)


def measure_decode(
    layers: dict[str, nn.Module], contexts: tuple[int, ...], rounds: int, working_set: int,
    device: torch.device, dtype: torch.dtype, baseline: str, log: Callable[[str], None],
) -> dict[str, dict]:
    """Per context: bandwidth per round and, per layer, seconds per token per round and bytes per token."""
    clock = make_clock(device)
    buffer = torch.ones(2 * working_set // 4, device=device)
    chunks = list(buffer.split(2**18 if device.type == "cpu" else 2**24))  # 1 MiB (CPU), 64 MiB (GPU: launches)
    out: dict[str, dict] = {}
    for context in contexts:
        stacks = {name: decode_stack(layer, context, working_set, device, dtype) for name, layer in layers.items()}
        for stack in stacks.values():  # warm-up pass (first touches, allocator)
            decode_pass(stack, clock)
        bandwidth, seconds = [], {name: [] for name in layers}
        names = list(layers)
        for r in range(rounds):
            bandwidth.append(read_bandwidth(chunks, clock))
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order every round
                seconds[name].append(decode_pass(stacks[name], clock))
            log(f"context {context}, round {r + 1}/{rounds}: {bandwidth[-1] / 1e9:.1f} GB/s; "
                + ", ".join(f"{n} {1e6 * s[-1]:.0f} us" for n, s in seconds.items()))
        out[str(context)] = {
            "bandwidth_bytes_per_second": bandwidth,
            "layers": {
                name: {"seconds_per_token": seconds[name], "bytes_per_token": stack.bytes_per_token,
                       "weight_bytes": stack.weight_bytes, "cache_bytes": stack.cache_bytes,
                       "copies": len(stack.items)}
                for name, stack in stacks.items()
            },
            "baseline": baseline,
        }
        if context == max(contexts):
            out[str(context)]["stacks"] = stacks  # kept for the analysis, dropped before writing
        del stacks
    return out


def summarise_decode(raw: dict[str, dict]) -> dict[str, dict]:
    """Tokens/s, GB/s, fraction of bandwidth and speed-up over the baseline: median, min, max over rounds."""
    out: dict[str, dict] = {}
    for context, entry in raw.items():
        bandwidth = entry["bandwidth_bytes_per_second"]
        base = entry["layers"][entry["baseline"]]["seconds_per_token"]
        layers = {}
        for name, m in entry["layers"].items():
            secs = m["seconds_per_token"]
            layers[name] = {
                "tokens_per_second": spread(1 / s for s in secs),
                "bytes_per_token": m["bytes_per_token"], "weight_bytes": m["weight_bytes"],
                "cache_bytes": m["cache_bytes"], "copies": m["copies"],
                "gb_per_second": spread(m["bytes_per_token"] / s / 1e9 for s in secs),
                "fraction_of_bandwidth": spread(m["bytes_per_token"] / s / bw
                                                for s, bw in zip(secs, bandwidth, strict=True)),
                "speedup_over_baseline": spread(b / s for s, b in zip(secs, base, strict=True)),
                "byte_ratio_to_baseline": entry["layers"][entry["baseline"]]["bytes_per_token"] / m["bytes_per_token"],
            }
        out[context] = {"bandwidth_gb_per_second": spread(b / 1e9 for b in bandwidth), "layers": layers,
                        "baseline": entry["baseline"]}
    return out


# --- analysis of Tucker's decoding step ------------------------------------------------------------


def attention_products(stack: DecodeStack, clock: Callable[[], float], rounds: int) -> dict[str, float]:
    """``softmax(Q K^T) V`` alone on the stack's cache tensors: cold (one pass over the copies) and warm
    (one cache, repeated), with the FLOPs of one step: what the latent attention costs by itself."""
    layer, cache = stack.items[0]
    keys, values = cache.tensors["k"], cache.tensors["v"]
    q = torch.randn(1, 1, layer.n_heads, keys.shape[-1], device=keys.device, dtype=keys.dtype)

    def run(k: torch.Tensor, v: torch.Tensor) -> float:
        start = clock()
        torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1), v)
        return clock() - start

    with torch.inference_mode():
        cold, warm = [], []
        for _ in range(rounds):
            times = []
            for _, c in stack.items:
                times.append(run(c.tensors["k"], c.tensors["v"]))
            cold.append(statistics.median(times))
            warm.append(statistics.median(run(keys, values) for _ in range(32)))
    flops = 2 * layer.n_heads * keys.shape[2] * (keys.shape[-1] + values.shape[-1])
    return {"flops": flops, "cold_seconds": statistics.median(cold), "warm_seconds": statistics.median(warm),
            "cold_gflops": flops / statistics.median(cold) / 1e9, "warm_gflops": flops / statistics.median(warm) / 1e9}


def operation_profile(stack: DecodeStack) -> list[dict]:
    """torch.profiler over one pass of the stack: per tensor operation of a step (name and input shapes),
    calls per step, the median time of a call and its share of the profiled step; the last row is the
    rest of the step (Python between operations, and the profiler's own cost of about a microsecond
    per operation: see ``fixed_cost`` for the step's fixed cost without a profiler)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for layer, cache in stack.items:
            with record_function("decode step"):
                layer(stack.token, cache)
            cache.truncate(stack.context)
    steps, calls = [], {}
    for event in prof.events():
        if event.name == "decode step":
            steps.append(event.cpu_time_total)
        elif event.cpu_parent is not None and event.cpu_parent.name == "decode step":
            key = (event.name, str([list(s) for s in event.input_shapes if s]))
            calls.setdefault(key, []).append(event.cpu_time_total)
    step = statistics.median(steps)
    rows = [{"operation": name, "input_shapes": shapes, "calls_per_step": len(times) / len(steps),
             "median_us": statistics.median(times), "us_per_step": len(times) / len(steps) * statistics.median(times)}
            for (name, shapes), times in calls.items()]
    rows.sort(key=lambda r: -r["us_per_step"])
    rest = step - sum(r["us_per_step"] for r in rows)
    rows.append({"operation": "(rest: Python between operations, profiler)", "input_shapes": "",
                 "calls_per_step": 1.0, "median_us": rest, "us_per_step": rest})
    for row in rows:
        row["share_of_step"] = row["us_per_step"] / step
    return rows


def fixed_cost(build: Callable[[], nn.Module], clock: Callable[[], float], device: torch.device,
               dtype: torch.dtype, steps: int = 300) -> float:
    """Seconds per decoding step of a layer built at tiny sizes (the same code path): Python and dispatch."""
    layer = build().to(device, dtype).eval()
    token = torch.randn(1, 1, layer.d_model, device=device, dtype=dtype)
    with torch.inference_mode():
        cache = new_cache(layer, 4, token)
        layer(torch.randn(1, 2, layer.d_model, device=device, dtype=dtype), cache)
        times = []
        for _ in range(steps):
            start = clock()
            layer(token, cache)
            times.append(clock() - start)
            cache.truncate(2)
    return statistics.median(times)


TINY = {  # the same layer kinds with head size 2 and ranks of 1-2: only the fixed cost of a step is left
    LEAN_MHA: lambda: LeanAttention(2 * N_HEADS, N_HEADS, N_HEADS),
    "MHA": lambda: MultiHeadAttention(2 * N_HEADS, N_HEADS, rope=True),
    TUCKER: lambda: TuckerAttention(2 * N_HEADS, N_HEADS, (1, 2, 2), rope=True),
    LEAN_GQA: lambda: LeanAttention(2 * SMOL_HEADS, SMOL_HEADS, SMOL_KV),
    TUCKER_EXACT: lambda: TuckerAttention(2 * SMOL_HEADS, SMOL_HEADS, (1, 2, 2), rope=True),
}


def profile_step(layer: nn.Module, context: int, device: torch.device, dtype: torch.dtype) -> str:
    """torch.profiler's table of 20 decoding steps of ``layer`` at ``context``."""
    from torch.profiler import ProfilerActivity, profile

    stack = decode_stack(layer, context, 0, device, dtype)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            decode_pass(stack, make_clock(device))
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


# --- prefill, training step, counts ---------------------------------------------------------------


def measure_counts(layers: dict[str, nn.Module], device: torch.device, dtype: torch.dtype) -> dict[str, dict]:
    out = {}
    for name, layer in layers.items():
        x = torch.randn(1, 64, layer.d_model, device=device, dtype=dtype)
        with torch.inference_mode():
            cache = new_cache(layer, 64, x)
            layer(x, cache)
        params = sum(p.numel() for p in layer.parameters())
        out[name] = {"attention_parameters": params, "kv_cache_bytes_per_token": cache.nbytes / 64}
        if not isinstance(layer, LeanAttention):
            assert params == attention_parameters(layer)
            assert cache.nbytes == kv_cache_bytes(layer, 64, dtype)
    return out


def measure_compute(layers: dict[str, nn.Module], device: torch.device, dtype: torch.dtype, rounds: int,
                    train_shape: tuple[int, int], prefill_len: int = 1024) -> dict[str, dict]:
    """Prefill of ``prefill_len`` tokens (no gradients) and a training step (forward + backward)."""
    clock = make_clock(device)
    factory = {"device": device, "dtype": dtype}
    x_prefill = torch.randn(1, prefill_len, D_MODEL, **factory)

    def prefill(_: str, layer: nn.Module) -> Callable[[], object]:
        def run() -> None:
            with torch.inference_mode():
                layer(x_prefill)
        return run

    out: dict[str, dict] = {name: {} for name in layers}
    for name, seconds in interleaved(layers, prefill, rounds, clock).items():
        out[name][f"prefill_{prefill_len}_seconds"] = seconds
    batch, seq = train_shape
    x_train = torch.randn(batch, seq, D_MODEL, **factory)

    def train_step(_: str, layer: nn.Module) -> Callable[[], object]:
        def run() -> None:
            layer.zero_grad(set_to_none=True)
            layer(x_train).float().square().mean().backward()
        return run

    for layer in layers.values():
        layer.train()
    for name, seconds in interleaved(layers, train_step, rounds, clock).items():
        out[name][f"train_step_{batch}x{seq}_seconds"] = seconds
    for layer in layers.values():
        layer.eval()
    return out


# --- main -----------------------------------------------------------------------------------------


def last_level_cache_bytes() -> int:
    """The CPU's last-level cache size from sysfs (32 MiB when it cannot be read)."""
    for index in (3, 2):
        path = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20}.get(text[-1], 1)
        return int(text.rstrip("KM")) * scale
    return 32 * 2**20


def fmt_spread(s: dict, digits: int = 2, scale: float = 1.0) -> str:
    return f"{s['median'] * scale:.{digits}f} [{s['min'] * scale:.{digits}f}, {s['max'] * scale:.{digits}f}]"


def verdict(ok: bool) -> str:
    return "agrees" if ok else "disagrees"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="contexts 256/1024, 2 rounds, a small training step")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every measurement (default: 7; quick 2)")
    parser.add_argument("--working-set", type=float, default=None,
                        help="MB that each decoded stack holds (default: 4x the last-level cache)")
    parser.add_argument("--train-shape", type=int, nargs=2, metavar=("BATCH", "SEQ"), default=None,
                        help="training step input (default: 4 1024; --quick: 2 256)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of Tucker's step")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads < 1:
        raise SystemExit(f"--threads {args.threads}: expected >= 1")
    torch.set_num_threads(args.threads)
    dtype = torch.float32
    rounds = args.rounds or (2 if args.quick else 7)
    contexts = (256, 1024) if args.quick else (256, 1024, 4096)
    goal_context = max(contexts)
    llc = last_level_cache_bytes()
    working_set = int(args.working_set * 2**20) if args.working_set else 4 * llc
    train_shape = tuple(args.train_shape or ((2, 256) if args.quick else (4, 1024)))
    start = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {text}", flush=True)

    torch.manual_seed(0)
    gpt2 = {name: layer.to(device, dtype).eval() for name, layer in gpt2_layers().items()}
    smol = {name: layer.to(device, dtype).eval() for name, layer in smollm_layers().items()}
    if args.profile:
        print(profile_step(gpt2[TUCKER], goal_context, device, dtype))
    counts = {**measure_counts(gpt2, device, dtype), **measure_counts(smol, device, dtype)}
    log("prefill and training step (GPT-2 small layers)")
    compute = measure_compute(gpt2, device, dtype, rounds, train_shape)
    log("decoding, GPT-2 small layers")
    raw_gpt2 = measure_decode(gpt2, contexts, rounds, working_set, device, dtype, LEAN_MHA, log)
    log("decoding, SmolLM2-135M layers")
    smol_contexts = tuple(sorted({1024, goal_context}))
    raw_smol = measure_decode(smol, smol_contexts, rounds, working_set, device, dtype, LEAN_GQA, log)
    clock = make_clock(device)
    analysis, operations = {}, {}
    for name, raw in ((TUCKER, raw_gpt2), (TUCKER_EXACT, raw_smol), (TUCKER_SMALL, raw_smol)):
        stack = raw[str(goal_context)]["stacks"][name]
        analysis[name] = attention_products(stack, clock, rounds)
        if device.type == "cpu":
            operations[name] = operation_profile(stack)
    fixed = {name: fixed_cost(build, clock, device, dtype) for name, build in TINY.items()}
    for raw in (raw_gpt2, raw_smol):
        raw[str(goal_context)].pop("stacks")
    decode = {"gpt2": summarise_decode(raw_gpt2), "smollm2": summarise_decode(raw_smol)}

    # Where Tucker's step goes at the goal context: attention products (cold), fixed cost, the rest.
    for name, shape in ((TUCKER, "gpt2"), (TUCKER_EXACT, "smollm2"), (TUCKER_SMALL, "smollm2")):
        step = 1 / decode[shape][str(goal_context)]["layers"][name]["tokens_per_second"]["median"]
        a = analysis[name]
        a["step_seconds"] = step
        a["attention_fraction_of_step"] = a["cold_seconds"] / step
        fixed_name = TUCKER if shape == "gpt2" else TUCKER_EXACT
        a["fixed_seconds"] = fixed[fixed_name]
        a["fixed_fraction_of_step"] = fixed[fixed_name] / step
    ratio_to_baseline = {}  # GPT-2 small layers against the lean MHA (>1: fewer, faster)
    for name in compute:
        lean, m = counts[LEAN_MHA], counts[name]
        ratio_to_baseline[name] = {
            "attention_parameters_reduction": lean["attention_parameters"] / m["attention_parameters"],
            "kv_cache_bytes_per_token_reduction": lean["kv_cache_bytes_per_token"] / m["kv_cache_bytes_per_token"],
            **{k.replace("_seconds", "_speedup"): compute[LEAN_MHA][k] / v for k, v in compute[name].items()},
        }
    measured = {"counts": counts, "compute": compute, "ratio_to_baseline": ratio_to_baseline, "decode": decode,
                "attention_products": analysis, "fixed_cost_seconds_per_step": fixed, "operations": operations}

    # --- claims ---------------------------------------------------------------------------------
    g = decode["gpt2"][str(goal_context)]
    tucker = g["layers"][TUCKER]
    bw = g["bandwidth_gb_per_second"]
    a = analysis[TUCKER]
    why = (f"Per step at {goal_context}: the attention products alone ({a['flops'] / 1e6:.1f} MFLOP on the cached "
           f"latents) take {1e6 * a['cold_seconds']:.0f} us cold ({a['cold_gflops']:.0f} GFLOP/s) and "
           f"{1e6 * a['warm_seconds']:.0f} us warm, {a['attention_fraction_of_step']:.0%} of the "
           f"{1e6 * a['step_seconds']:.0f} us step; the fixed cost of a step (Python, dispatch) is "
           f"{1e6 * a['fixed_seconds']:.0f} us ({a['fixed_fraction_of_step']:.0%}). Reading the "
           f"{tucker['bytes_per_token'] / 1e6:.2f} MB at the measured bandwidth would take "
           f"{1e6 * tucker['bytes_per_token'] / (bw['median'] * 1e9):.0f} us: the step is bound by the "
           "products' arithmetic (12 heads on one 64-dim latent: 6 FLOP per byte of cache) and by dispatch, "
           "not by memory.")
    cache_reduction = counts[LEAN_MHA]["kv_cache_bytes_per_token"] / counts[TUCKER]["kv_cache_bytes_per_token"]
    long_contexts = [c for c in decode["gpt2"] if int(c) >= 1024]
    train_key = next(k for k in compute[TUCKER] if k.startswith("train"))
    train_speedup = compute[LEAN_MHA][train_key] / compute[TUCKER][train_key]
    claims = [
        Claim("Tucker [8,128,64] caches 12x fewer bytes per token than MHA",
              f"{cache_reduction:.2f}x (measured from the cache tensors)", verdict(cache_reduction >= 12 - 1e-9)),
        Claim("Tucker decodes at >= 1k context at least as fast as the lean MHA",
              ", ".join(f"{c}: {fmt_spread(decode['gpt2'][c]['layers'][TUCKER]['speedup_over_baseline'])}x"
                        for c in long_contexts),
              verdict(all(decode["gpt2"][c]["layers"][TUCKER]["speedup_over_baseline"]["median"] >= 1
                          for c in long_contexts))),
        Claim("Tucker's training step (forward + backward) is no slower than the lean MHA's",
              f"{train_speedup:.2f}x the lean MHA's speed ({train_key})", verdict(train_speedup >= 1)),
        Claim(f"Tucker [8,128,64] decodes at {goal_context} context at >= 70% of the one-thread read bandwidth",
              f"{fmt_spread(tucker['fraction_of_bandwidth'], 0, 100)}% of {fmt_spread(bw, 1)} GB/s "
              f"({fmt_spread(tucker['gb_per_second'], 1)} GB/s)",
              verdict(tucker["fraction_of_bandwidth"]["median"] >= 0.7), why),
        Claim(f"Tucker [8,128,64] decodes at {goal_context} context at >= 6x the lean MHA's tokens/s",
              f"{fmt_spread(tucker['speedup_over_baseline'])}x (bytes per token: "
              f"{tucker['byte_ratio_to_baseline']:.1f}x fewer)",
              verdict(tucker["speedup_over_baseline"]["median"] >= 6), why),
    ]
    s = decode["smollm2"][str(goal_context)]
    for name in (TUCKER_EXACT, TUCKER_SMALL):
        m = s["layers"][name]
        a = analysis[name]
        claims.append(Claim(
            f"SmolLM2-shaped {name} decodes at {goal_context} context at >= 70% of the read bandwidth",
            f"{fmt_spread(m['fraction_of_bandwidth'], 0, 100)}%; {fmt_spread(m['speedup_over_baseline'])}x the "
            f"lean GQA's tokens/s, reading {1 / m['byte_ratio_to_baseline']:.2f}x its bytes per token",
            verdict(m["fraction_of_bandwidth"]["median"] >= 0.7),
            f"attention products {1e6 * a['cold_seconds']:.0f} us cold ({a['flops'] / 1e6:.1f} MFLOP, "
            f"{a['cold_gflops']:.0f} GFLOP/s) of a {1e6 * a['step_seconds']:.0f} us step",
        ))

    # --- tables ---------------------------------------------------------------------------------
    tables = []
    for shape, title in (("gpt2", "GPT-2 small (d=768, 12 heads)"), ("smollm2", "SmolLM2-135M (d=576, 9/3 heads)")):
        rows = []
        for context, entry in decode[shape].items():
            for name, m in entry["layers"].items():
                rows.append([context, name, m["copies"], round(m["bytes_per_token"] / 1e6, 3),
                             fmt_spread(m["tokens_per_second"], 0), fmt_spread(m["gb_per_second"], 1),
                             fmt_spread(m["fraction_of_bandwidth"], 0, 100),
                             fmt_spread(m["speedup_over_baseline"]), round(m["byte_ratio_to_baseline"], 2)])
        tables.append(Table(
            f"Decoding at the memory limit, {title}",
            ["context", "layer", "copies", "MB per token", "tokens/s", "GB/s", "% of bandwidth",
             f"speed-up over {decode[shape]['1024']['baseline']}", "byte ratio"],
            rows,
            note="median [min, max] over rounds; bandwidth per round "
            + ", ".join(f"{c}: {fmt_spread(e['bandwidth_gb_per_second'], 1)} GB/s" for c, e in decode[shape].items()),
        ))
    tables.append(Table(
        "Parameters, cache, prefill and training step (GPT-2 small layers)",
        ["layer", "attention parameters", "cache bytes per token", *next(iter(compute.values())).keys()],
        [[name, counts[name]["attention_parameters"], counts[name]["kv_cache_bytes_per_token"],
          *(round(v, 5) for v in compute[name].values())] for name in compute],
    ))
    tables.append(Table(
        f"Where a Tucker decoding step goes, context {goal_context}",
        ["layer", "step us", "attention products cold us", "warm us", "MFLOP", "cold GFLOP/s", "warm GFLOP/s",
         "fixed cost us"],
        [[name, round(1e6 * a["step_seconds"]), round(1e6 * a["cold_seconds"]), round(1e6 * a["warm_seconds"]),
          round(a["flops"] / 1e6, 2), round(a["cold_gflops"], 1), round(a["warm_gflops"], 1),
          round(1e6 * a["fixed_seconds"])] for name, a in analysis.items()],
        note="fixed cost: the same layer kind at tiny sizes, " + ", ".join(
            f"{n} {1e6 * v:.0f} us" for n, v in fixed.items()),
    ))
    if TUCKER in operations:
        tables.append(Table(
            f"Operations of a Tucker [8,128,64] decoding step, context {goal_context}",
            ["operation", "input shapes", "calls per step", "median us", "share of the step"],
            [[r["operation"], r["input_shapes"], round(r["calls_per_step"], 2), round(r["median_us"], 1),
              f"{r['share_of_step']:.1%}"] for r in operations[TUCKER] if r["share_of_step"] >= 0.005],
            note="torch.profiler over one pass of the stack: medians of wall time, shares of the profiled step "
            "(the profiler adds about a microsecond per operation); operations under 0.5% of the step left out",
        ))
    summary = (f"At {goal_context} context, batch 1, {device.type}: Tucker [8,128,64] decodes at "
               f"{fmt_spread(tucker['speedup_over_baseline'])}x the lean MHA's tokens/s "
               f"({tucker['byte_ratio_to_baseline']:.1f}x fewer bytes per token) and "
               f"{fmt_spread(tucker['fraction_of_bandwidth'], 0, 100)}% of the measured read bandwidth.")
    result = StudyResult(
        part="tucker",
        study="bench_attention" + ("_cuda" if device.type == "cuda" else ""),
        title=f"Attention layers at GPT-2-small and SmolLM2-135M shapes on {device.type}: decoding at the "
        "memory limit, parameters, cache, prefill, training",
        scale="quick" if args.quick else "full",
        summary=summary,
        config={"device": str(device), "threads": torch.get_num_threads(), "dtype": "float32", "batch": 1,
                "rounds": rounds, "contexts": list(contexts), "working_set_bytes": working_set,
                "last_level_cache_bytes": llc, "train_shape": list(train_shape), "quick": args.quick,
                "clock": "thread CPU time" if device.type == "cpu" else "wall time, synchronised"},
        seeds=[0],
        metrics=measured,
        tables=tables,
        claims=claims,
    )
    finish(result, args.results, wall_seconds=time.perf_counter() - start)
    print(json.dumps({"summary": summary, "claims": [c.__dict__ for c in claims]}, indent=2))
    return measured


if __name__ == "__main__":
    main()
