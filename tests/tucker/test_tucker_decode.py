"""TuckerAttention's decoding step (no gradients, one token per sequence after a cache) against full
recomputation, the KV cache's in-place extension, and the lean baseline of the benchmark."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from structlab.tucker import KVCache, TuckerAttention

from .helpers import randomise

D, H = 24, 4
LAYERS = {
    "tucker": lambda **kw: TuckerAttention(D, H, (3, 10, 8), (2, 12, 6), **kw),
    "tucker_shared": lambda **kw: TuckerAttention(D, H, (3, 10, 8), (2, 12, 8), shared_latent=True, **kw),
}
CONFIGS = [(kind, rope, bias) for kind in LAYERS for rope in (False, True) for bias in (False, True)]


def inputs(batch: int, seq: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(batch, seq, D, generator=torch.Generator().manual_seed(3), dtype=dtype)


def decode_steps(m: TuckerAttention, x: torch.Tensor, prefill: int) -> torch.Tensor:
    """A prefill of ``prefill`` positions, then one position per call, without gradients."""
    cache = m.new_cache()
    with torch.inference_mode():
        outs = [m(x[:, :prefill], cache)]
        outs += [m(x[:, t : t + 1], cache) for t in range(prefill, x.shape[1])]
    assert cache.length == x.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize(("kind", "rope", "bias"), CONFIGS)
@pytest.mark.parametrize("batch", [1, 3])
def test_decoding_without_gradients_equals_full_recomputation(kind: str, rope: bool, bias: bool, batch: int) -> None:
    m = randomise(LAYERS[kind](rope=rope, bias=bias)).eval()
    x = inputs(batch, 11)
    full = m(x)
    fast = not (rope and kind == "tucker_shared")  # a shared latent is cached unrotated: the general path
    with mock.patch.object(TuckerAttention, "_decode_token", autospec=True,
                           side_effect=TuckerAttention._decode_token) as spy:
        steps = decode_steps(m, x, prefill=3)
    assert spy.call_count == (8 if fast else 0)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)


def test_float32_decoding_matches_the_float64_computation() -> None:
    m = randomise(LAYERS["tucker"](rope=True, bias=True)).eval()
    x = inputs(2, 40)
    reference = m(x)
    steps = decode_steps(m.float(), x.float(), prefill=1)
    torch.testing.assert_close(steps.double(), reference, rtol=1e-4, atol=1e-4)


def test_decoding_follows_new_rope_frequencies_and_dtype() -> None:
    # The per-position rotation table is built on first use; loading other frequencies or changing the
    # dtype must rebuild it, or decoding would rotate with stale angles.
    m = randomise(LAYERS["tucker"](rope=True)).eval()
    x = inputs(1, 9)
    decode_steps(m, x, prefill=2)
    other = randomise(LAYERS["tucker"](rope=True, rope_base=50.0), seed=5)
    m.load_state_dict(other.state_dict())
    torch.testing.assert_close(decode_steps(m, x, prefill=2), other(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(decode_steps(m.float(), x.float(), prefill=2), other.float()(x.float()),
                               rtol=1e-5, atol=1e-5)


def test_a_truncated_cache_decodes_the_same_position_again() -> None:
    m = randomise(LAYERS["tucker"](rope=True)).eval()
    x, token = inputs(1, 7), inputs(1, 1) * 2
    cache = m.new_cache()
    with torch.inference_mode():
        m(x, cache)
        first = m(token, cache)
        cache.truncate(7)
        again = m(token, cache)
    assert cache.length == 8
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    full = m(torch.cat([x, token], dim=1))[:, -1:]
    torch.testing.assert_close(again, full, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="length=9"):
        cache.truncate(9)


def test_cache_extension_is_written_in_place_and_checked() -> None:
    cache = KVCache({"k": (1, 4), "v": (2, 3)})
    k, v = torch.randn(2, 1, 5, 4), torch.randn(2, 2, 5, 3)
    filled = cache.append(k=k, v=v)
    torch.testing.assert_close(filled["k"], k)
    keys, values = cache.extend(2, 1, k)
    assert keys.shape == (2, 1, 6, 4) and values.shape == (2, 2, 6, 3) and cache.length == 6
    keys[:, :, 5] = 7.0
    assert torch.equal(cache.tensors["k"][:, :, 5], torch.full((2, 1, 4), 7.0))
    torch.testing.assert_close(cache.tensors["v"][:, :, :5], v)
    with pytest.raises(ValueError, match="batch 2"):
        cache.extend(3, 1, k)
    with pytest.raises(ValueError, match="float64"):
        cache.extend(2, 1, k.double())


def _benchmark():
    path = Path(__file__).parents[2] / "benchmarks" / "tucker_attention.py"
    spec = importlib.util.spec_from_file_location("tucker_attention_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n_kv", [4, 2])
def test_the_benchmarks_lean_baseline_computes_the_same_attention(n_kv: int) -> None:
    from structlab.tucker import GroupedQueryAttention

    bench = _benchmark()
    ours = randomise(GroupedQueryAttention(D, H, n_kv, rope=True, rope_base=500.0)).eval()
    lean = bench.LeanAttention(D, H, n_kv, rope_base=500.0).double().eval()
    with torch.no_grad():
        lean.c_attn.weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        lean.c_proj.weight.copy_(ours.o_proj.weight)
    x = inputs(1, 10)
    full = ours(x)
    torch.testing.assert_close(lean(x), full, rtol=1e-10, atol=1e-10)
    cache = lean.new_cache(10, x)
    with torch.inference_mode():
        steps = torch.cat([lean(x[:, :4], cache)] + [lean(x[:, t : t + 1], cache) for t in range(4, 10)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
    assert cache.nbytes == 2 * 10 * n_kv * (D // H) * 8


def test_gradients_still_flow_through_a_cached_step() -> None:
    # With gradients the step takes the general path (the fast one writes into the cache in place).
    m = randomise(LAYERS["tucker"](rope=True)).train()
    cache = m.new_cache()
    x = inputs(1, 5)
    m(x[:, :4], cache)
    m(x[:, 4:], cache).sum().backward()
    assert m.U_q.grad is not None and torch.isfinite(m.U_q.grad).all()
