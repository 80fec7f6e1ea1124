"""Attention layers at the GPT-2-small shape: parameters, KV cache, prefill, decode and training speed.

Layers (d = 768, 12 heads, causal, RoPE: per-head for MHA/GQA, latent RoPE for MLA and Tucker):
MHA, GQA with n_KV = 2, MLA with d_c = 128, Tucker Attention with ranks [8, 128, 64] on both sides.
Measured in one run, layers interleaved round by round so that load on the machine hits all alike:

- attention parameters (counted on the modules) and KV-cache bytes per token, measured from the
  cache tensors after a prefill (float32);
- prefill time of 1024 tokens (batch 1, no gradients);
- decode tokens/s (batch 1 or ``--decode-batch``, one token per step) at contexts 256, 1024 and 4096;
- a training step, forward + backward of (batch, seq) = (4, 1024) (``--quick``: (2, 256)).

Ratios are to MHA in the same run. Targets (issue 3): Tucker's cache 12x smaller than MHA's; decode at
>= 1k context at least as fast as MHA; training step no slower than MHA.

Run: ``python benchmarks/tucker_attention.py [--quick] [--device cuda] [--threads N]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from structlab.results import Claim, StudyResult, Table, finish
from structlab.tucker import (
    GroupedQueryAttention,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    TuckerAttention,
    attention_parameters,
    kv_cache_bytes,
)

D_MODEL, N_HEADS = 768, 12


def build_layers() -> dict[str, nn.Module]:
    kw = {"causal": True, "rope": True}
    return {
        "MHA": MultiHeadAttention(D_MODEL, N_HEADS, **kw),
        "GQA (n_KV=2)": GroupedQueryAttention(D_MODEL, N_HEADS, 2, **kw),
        "MLA (d_c=128)": MultiHeadLatentAttention(D_MODEL, N_HEADS, 128, **kw),
        "Tucker [8,128,64]": TuckerAttention(D_MODEL, N_HEADS, (8, 128, 64), **kw),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of ``fn`` (after the device finished earlier work)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved(
    layers: dict[str, nn.Module], make: Callable[[str, nn.Module], Callable[[], object]], rounds: int,
    device: torch.device, warmup: int = 1,
) -> dict[str, float]:
    """Median seconds per call of each layer's ``make(name, layer)()``, layers alternating every round."""
    fns = {name: make(name, layer) for name, layer in layers.items()}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def measure(
    device: torch.device, quick: bool, decode_batch: int = 1, train_shape: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    layers = {name: layer.to(device, dtype).eval() for name, layer in build_layers().items()}
    factory = {"device": device, "dtype": dtype}
    rounds = 3 if quick else 7
    contexts = (256, 1024) if quick else (256, 1024, 4096)
    decode_steps = 8 if quick else 32
    train_shape = train_shape or ((2, 256) if quick else (4, 1024))
    prefill_len = 1024
    out: dict[str, dict[str, float]] = {name: {} for name in layers}

    for name, layer in layers.items():
        out[name]["attention_parameters"] = attention_parameters(layer)
        assert out[name]["attention_parameters"] == sum(p.numel() for p in layer.parameters())
        cache = layer.new_cache()
        with torch.inference_mode():
            layer(torch.randn(1, 64, D_MODEL, **factory), cache)
        out[name]["kv_cache_bytes_per_token"] = cache.nbytes / cache.length
        assert cache.nbytes == kv_cache_bytes(layer, cache.length, dtype)

    x_prefill = torch.randn(1, prefill_len, D_MODEL, **factory)

    def prefill(_: str, layer: nn.Module) -> Callable[[], object]:
        def run() -> None:
            with torch.inference_mode():
                layer(x_prefill)
        return run

    for name, seconds in interleaved(layers, prefill, rounds, device).items():
        out[name]["prefill_1024_seconds"] = seconds

    for context in contexts:
        caches = {}
        with torch.inference_mode():
            for name, layer in layers.items():
                caches[name] = layer.new_cache()
                layer(torch.randn(decode_batch, context, D_MODEL, **factory), caches[name])
        token = torch.randn(decode_batch, 1, D_MODEL, **factory)

        def decode(name: str, layer: nn.Module, caches: dict = caches, token: torch.Tensor = token) -> Callable:
            def run() -> None:
                with torch.inference_mode():
                    for _ in range(decode_steps):
                        layer(token, caches[name])
            return run

        for name, seconds in interleaved(layers, decode, rounds, device).items():
            out[name][f"decode_tokens_per_second_{context}"] = decode_batch * decode_steps / seconds
        del caches

    batch, seq = train_shape
    x_train = torch.randn(batch, seq, D_MODEL, **factory)
    for layer in layers.values():
        layer.train()

    def train_step(_: str, layer: nn.Module) -> Callable[[], object]:
        def run() -> None:
            layer.zero_grad(set_to_none=True)
            layer(x_train).float().square().mean().backward()
        return run

    for name, seconds in interleaved(layers, train_step, rounds, device).items():
        out[name][f"train_step_{batch}x{seq}_seconds"] = seconds
    return out


def ratios(measured: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each layer against MHA: >1 means better (fewer parameters/bytes, faster)."""
    base = measured["MHA"]
    out: dict[str, dict[str, float]] = {}
    for name, m in measured.items():
        r = {}
        for key, value in m.items():
            if key.startswith("decode"):
                r[key.replace("decode_tokens_per_second", "decode_speedup")] = value / base[key]
            else:  # smaller is better: parameters, bytes, seconds
                r[key.replace("_seconds", "_speedup") if key.endswith("seconds") else key + "_reduction"] = (
                    base[key] / value
                )
        out[name] = r
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter contexts, smaller training step, fewer rounds")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--decode-batch", type=int, default=1, help="sequences decoded at once (default: 1)")
    parser.add_argument("--train-shape", type=int, nargs=2, metavar=("BATCH", "SEQ"), default=None,
                        help="training step input (default: 4 1024; --quick: 2 256)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="parameters, activations and cache (default: float32)")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    measured = measure(
        device, args.quick, args.decode_batch, tuple(args.train_shape) if args.train_shape else None, dtype
    )
    rel = ratios(measured)
    out = {"device": str(device), "threads": torch.get_num_threads(), "measured": measured, "ratio_to_mha": rel}
    print(json.dumps(out, indent=2))

    tucker = rel["Tucker [8,128,64]"]
    decode_keys = [k for k in tucker if k.startswith("decode_speedup") and int(k.rsplit("_", 1)[1]) >= 1024]
    train_key = next(k for k in tucker if k.startswith("train_step"))
    cache_reduction = tucker["kv_cache_bytes_per_token_reduction"]
    decode_ok = all(tucker[k] >= 1.0 for k in decode_keys)
    claims = [
        Claim("Tucker [8,128,64] caches 12x fewer bytes per token than MHA",
              f"{cache_reduction:.2f}x (measured from the cache tensors)",
              "agrees" if cache_reduction >= 12 - 1e-9 else "disagrees"),
        Claim("Tucker decodes at >= 1k context at least as fast as MHA",
              ", ".join(f"{k.rsplit('_', 1)[1]}: {tucker[k]:.2f}x" for k in decode_keys),
              "agrees" if decode_ok else "disagrees"),
        Claim("Tucker's training step (forward + backward) is no slower than MHA's",
              f"{tucker[train_key]:.2f}x MHA's speed",
              "agrees" if tucker[train_key] >= 1.0 else "disagrees"),
    ]
    columns = ["layer", *next(iter(measured.values())).keys()]
    result = StudyResult(
        part="tucker",
        study="bench_attention" + ("_cuda" if device.type == "cuda" else "")
        + (f"_decode_batch{args.decode_batch}" if args.decode_batch != 1 else "")
        + ("_bf16" if dtype == torch.bfloat16 else ""),
        title=f"Attention layers at d=768, 12 heads on {device.type}: parameters, KV cache, prefill, decode, training",
        scale="quick" if args.quick else "full",
        summary=f"Tucker [8,128,64] vs MHA: {tucker['attention_parameters_reduction']:.1f}x fewer parameters, "
        f"{cache_reduction:.1f}x smaller cache, decode "
        + ", ".join(f"{tucker[k]:.2f}x" for k in decode_keys)
        + f" at >= 1k context, training step {tucker[train_key]:.2f}x.",
        config={"d_model": D_MODEL, "n_heads": N_HEADS, "device": str(device), "threads": torch.get_num_threads(),
                "quick": args.quick, "rope": True, "causal": True, "dtype": args.dtype,
                "decode_batch": args.decode_batch,
                "train_shape": list(args.train_shape or ((2, 256) if args.quick else (4, 1024)))},
        seeds=[0],
        metrics=out,
        tables=[
            Table("Measured", columns, [[name, *(round(v, 4) for v in m.values())] for name, m in measured.items()]),
            Table("Ratio to MHA (>1: better)", ["layer", *next(iter(rel.values())).keys()],
                  [[name, *(round(v, 3) for v in r.values())] for name, r in rel.items()]),
        ],
        claims=claims,
    )
    finish(result, args.results, wall_seconds=time.perf_counter() - start)
    return out


if __name__ == "__main__":
    main()
