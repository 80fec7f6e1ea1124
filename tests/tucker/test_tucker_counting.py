"""Parameter and KV-cache counts: the paper's formulas against the real parameters and cache tensors."""

from __future__ import annotations

import pytest
import torch

from structlab.tucker import (
    GroupedQueryAttention,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    TuckerAttention,
    attention_parameters,
    kv_cache_bytes,
)

LAYERS = {
    "mha": lambda **kw: MultiHeadAttention(48, 4, **kw),
    "gqa": lambda **kw: GroupedQueryAttention(48, 4, 2, **kw),
    "mla": lambda **kw: MultiHeadLatentAttention(48, 4, 16, **kw),
    "mla_q": lambda **kw: MultiHeadLatentAttention(48, 4, 16, 20, **kw),
    "mla_decoupled": lambda **kw: MultiHeadLatentAttention(48, 4, 16, 20, rope=True, rope_mode="decoupled", **kw),
    "tucker": lambda **kw: TuckerAttention(48, 4, (3, 20, 16), (2, 24, 12), **kw),
    "tucker_shared": lambda **kw: TuckerAttention(48, 4, (3, 20, 16), shared_latent=True, **kw),
}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_attention_parameters_equal_trainable_parameter_count(kind: str, bias: bool) -> None:
    m = LAYERS[kind](bias=bias)
    assert attention_parameters(m) == sum(p.numel() for p in m.parameters() if p.requires_grad)


def test_parameter_formulas_of_the_paper() -> None:
    d, n_h = 768, 12
    assert attention_parameters(MultiHeadAttention(d, n_h)) == 4 * d * d
    assert attention_parameters(GroupedQueryAttention(d, n_h, 2)) == 2 * d * d + 2 * d * 2 * 64
    r1, r2, r3 = 8, 128, 64
    tucker = TuckerAttention(d, n_h, (r1, r2, r3))
    assert attention_parameters(tucker) == 2 * (r1 * r2 * r3 + n_h * r1 + d * r2 + d * r3)
    mla = MultiHeadLatentAttention(d, n_h, 128)
    assert attention_parameters(mla) == d * d + d * 128 + 2 * 128 * d + d * d


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_kv_cache_bytes_equal_the_filled_cache_tensors(kind: str, dtype: torch.dtype) -> None:
    m = LAYERS[kind]().to(dtype)
    seq = 11
    cache = m.new_cache()
    with torch.no_grad():
        m(torch.randn(1, 5, 48, dtype=dtype), cache)
        m(torch.randn(1, seq - 5, 48, dtype=dtype), cache)
    measured = sum(t.numel() * t.element_size() for t in cache.tensors.values())
    assert cache.length == seq
    assert kv_cache_bytes(m, seq, dtype) == measured == cache.nbytes


def test_cache_formulas_per_token() -> None:
    d, n_h = 768, 12
    per_token = {
        "mha": (MultiHeadAttention(d, n_h), 2 * d),
        "gqa": (GroupedQueryAttention(d, n_h, 2), 2 * 2 * 64),
        "mla": (MultiHeadLatentAttention(d, n_h, 128), 128),
        "tucker": (TuckerAttention(d, n_h, (8, 128, 64)), 2 * 64),
        "tucker_shared": (TuckerAttention(d, n_h, (8, 128, 64), shared_latent=True), 64),
    }
    for module, numbers in per_token.values():
        assert kv_cache_bytes(module, 1, torch.float16) == 2 * numbers
    mha, tucker = per_token["mha"][0], per_token["tucker"][0]
    assert kv_cache_bytes(mha, 1000) / kv_cache_bytes(tucker, 1000) == 12


def test_counting_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="seq_len"):
        kv_cache_bytes(MultiHeadAttention(8, 2), -1)
    with pytest.raises(TypeError, match="dtype"):
        kv_cache_bytes(MultiHeadAttention(8, 2), 4, "float32")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected MultiHeadAttention"):
        attention_parameters(torch.nn.MultiheadAttention(8, 2))  # type: ignore[arg-type]
