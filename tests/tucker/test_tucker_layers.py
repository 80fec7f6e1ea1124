"""The four attention layers against naive float64 references written from the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from structlab.tucker import (
    GroupedQueryAttention,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    TuckerAttention,
    apply_rotary,
    attention_tensors,
    rotary_frequencies,
)

from .helpers import randomise

D, H, N, BATCH = 24, 4, 7, 2


def inputs(seq: int = N, seed: int = 1) -> torch.Tensor:
    return torch.randn(BATCH, seq, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rotate(x: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """RoPE as complex multiplication: pair j of position n times exp(i n theta_j) (RoFormer eq. 34)."""
    positions = torch.arange(x.shape[-2], dtype=torch.float64)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    turn = torch.polar(torch.ones((), dtype=torch.float64), positions[:, None] * frequencies)
    return torch.view_as_real(z * turn).flatten(-2)


def softmax_attention(scores: torch.Tensor, causal: bool) -> torch.Tensor:
    if causal:
        future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, -math.inf)
    return scores.softmax(-1)


def reference_gqa(m: GroupedQueryAttention, x: torch.Tensor) -> torch.Tensor:
    d_h, group = m.head_dim, m.n_heads // m.n_kv_heads
    out = m.o_proj.bias.clone() if m.bias else torch.zeros(D, dtype=torch.float64)
    w_o = m.o_proj.weight.T
    for i in range(m.n_heads):
        g = i // group
        rows, kv_rows = slice(i * d_h, (i + 1) * d_h), slice(g * d_h, (g + 1) * d_h)
        q = x @ m.q_proj.weight[rows].T + (m.q_proj.bias[rows] if m.bias else 0)
        k = x @ m.k_proj.weight[kv_rows].T + (m.k_proj.bias[kv_rows] if m.bias else 0)
        v = x @ m.v_proj.weight[kv_rows].T + (m.v_proj.bias[kv_rows] if m.bias else 0)
        if m.rope:
            q, k = rotate(q, rotary_frequencies(d_h)), rotate(k, rotary_frequencies(d_h))
        a = softmax_attention(q @ k.transpose(-1, -2) / math.sqrt(d_h), m.causal)
        out = out + a @ v @ w_o[rows]
    return out


def reference_mla(m: MultiHeadLatentAttention, x: torch.Tensor) -> torch.Tensor:
    """The naive (non-absorbed) MLA of DeepSeek-V2: explicit per-head keys and values."""
    d_h = m.head_dim
    c_q = x if m.q_latent is None else m.q_down(x)
    q_all = (m.q_proj if m.q_latent is None else m.q_up)(c_q)
    c_kv = m.kv_down(x)
    k_all, v_all = m.k_up(c_kv), m.v_up(c_kv)
    out = m.o_proj.bias.clone() if m.bias else torch.zeros(D, dtype=torch.float64)
    for i in range(m.n_heads):
        rows = slice(i * d_h, (i + 1) * d_h)
        q, k, v = q_all[..., rows], k_all[..., rows], v_all[..., rows]
        scores = q @ k.transpose(-1, -2)
        if m.decoupled:
            d_r = m.rope_head_dim
            q_r = rotate(m.q_rope(c_q)[..., i * d_r : (i + 1) * d_r], rotary_frequencies(d_r))
            k_r = rotate(m.k_rope(x), rotary_frequencies(d_r))
            scores = scores + q_r @ k_r.transpose(-1, -2)
        a = softmax_attention(scores * m.scale, m.causal)
        out = out + a @ v @ m.o_proj.weight[:, rows].T
    return out


def reference_mla_latent_rope(m: MultiHeadLatentAttention, x: torch.Tensor) -> torch.Tensor:
    """Latent RoPE with the fused per-head query matrices W_i = W^DQ W_i^UQ W_i^UK^T (no biases)."""
    fused = m.fused_query_weights()  # (n_H, d, d_c)
    c_kv = m.kv_down(x)
    frequencies = rotary_frequencies(m.kv_latent)
    k = rotate(c_kv, frequencies)
    out = torch.zeros(D, dtype=torch.float64)
    d_h = m.head_dim
    for i in range(m.n_heads):
        q = rotate(x @ fused[i], frequencies)
        a = softmax_attention(q @ k.transpose(-1, -2) * m.scale, m.causal)
        rows = slice(i * d_h, (i + 1) * d_h)
        out = out + a @ m.v_up(c_kv)[..., rows] @ m.o_proj.weight[:, rows].T
    return out


def reference_tucker_dense(m: TuckerAttention, x: torch.Tensor) -> torch.Tensor:
    """Dense-tensor path: scores_i = x W_qk[i] x^T / sqrt(d_H), output sum_i A_i x W_vo[i]^T (no biases)."""
    W_qk, W_vo = attention_tensors(m)
    out = torch.zeros(D, dtype=torch.float64)
    for i in range(m.n_heads):
        a = softmax_attention(x @ W_qk[i] @ x.transpose(-1, -2) / math.sqrt(m.head_dim), m.causal)
        out = out + a @ x @ W_vo[i].T
    return out


def reference_tucker_factored(m: TuckerAttention, x: torch.Tensor) -> torch.Tensor:
    """The factored form with biases and latent RoPE, head by head: Q_i = X U_q B_i + b_i, K = X U_k + b_k."""
    B, C = m.query_cores(), m.value_cores()
    k = x @ m.U_k + (m.key_bias if m.bias else 0)
    v = k if m.shared_latent else x @ m.U_v + (m.value_bias if m.bias else 0)
    if m.rope:
        k = rotate(k, m.rope_frequencies)
    out = m.output_bias.clone() if m.bias else torch.zeros(D, dtype=torch.float64)
    for i in range(m.n_heads):
        q = x @ m.U_q @ B[i] + (m.query_bias[i] if m.bias else 0)
        if m.rope:
            q = rotate(q, m.rope_frequencies)
        a = softmax_attention(q @ k.transpose(-1, -2) / math.sqrt(m.head_dim), m.causal)
        out = out + a @ v @ C[i].T @ m.U_o.T
    return out


LAYERS = {
    "mha": lambda **kw: MultiHeadAttention(D, H, **kw),
    "gqa1": lambda **kw: GroupedQueryAttention(D, H, 1, **kw),
    "gqa2": lambda **kw: GroupedQueryAttention(D, H, 2, **kw),
    "mla": lambda **kw: MultiHeadLatentAttention(D, H, 8, **kw),
    "mla_q": lambda **kw: MultiHeadLatentAttention(D, H, 8, 10, **kw),
    "mla_decoupled": lambda **kw: MultiHeadLatentAttention(D, H, 8, 10, rope_mode="decoupled", **kw),
    "tucker": lambda **kw: TuckerAttention(D, H, (3, 10, 8), (2, 12, 6), **kw),
    "tucker_shared": lambda **kw: TuckerAttention(D, H, (3, 10, 8), (2, 12, 8), shared_latent=True, **kw),
}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", ["mha", "gqa1", "gqa2"])
def test_mha_and_gqa_match_per_head_reference(kind: str, causal: bool, rope: bool, bias: bool) -> None:
    m = randomise(LAYERS[kind](causal=causal, rope=rope, bias=bias))
    x = inputs()
    torch.testing.assert_close(m(x), reference_gqa(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", ["mla", "mla_q", "mla_decoupled"])
def test_absorbed_mla_matches_naive_mla(kind: str, causal: bool, bias: bool) -> None:
    m = randomise(LAYERS[kind](causal=causal, rope=kind == "mla_decoupled", bias=bias))
    x = inputs()
    torch.testing.assert_close(m(x), reference_mla(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["mla", "mla_q"])
def test_mla_latent_rope_with_fused_query_matrices_matches_unfused(kind: str) -> None:
    m = randomise(LAYERS[kind](rope=True))
    x = inputs()
    torch.testing.assert_close(m(x), reference_mla_latent_rope(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", ["tucker", "tucker_shared"])
def test_tucker_factored_sdpa_path_matches_dense_tensor_path(kind: str, causal: bool) -> None:
    m = randomise(LAYERS[kind](causal=causal))
    x = inputs()
    torch.testing.assert_close(m(x), reference_tucker_dense(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("kind", ["tucker", "tucker_shared"])
def test_tucker_with_biases_and_latent_rope_matches_head_by_head_reference(kind: str, rope: bool) -> None:
    m = randomise(LAYERS[kind](rope=rope, bias=True))
    x = inputs()
    torch.testing.assert_close(m(x), reference_tucker_factored(m, x), rtol=1e-10, atol=1e-10)


def test_tucker_uses_the_scale_of_the_equivalent_mha_not_the_latent_size() -> None:
    m = randomise(TuckerAttention(D, H, (2, 8, 4)))
    scores_scale = m.head_dim**-0.5
    assert scores_scale == pytest.approx((D / H) ** -0.5)
    torch.testing.assert_close(m(inputs()), reference_tucker_dense(m, inputs()), rtol=1e-10, atol=1e-10)


CONFIGS = [
    (kind, rope, causal)
    for kind in LAYERS
    for rope in (False, True)
    for causal in (True, False)
    if not (kind == "mla_decoupled" and not rope)
]


@pytest.mark.parametrize(("kind", "rope", "causal"), CONFIGS)
def test_cached_step_by_step_decoding_equals_full_forward(kind: str, rope: bool, causal: bool) -> None:
    m = randomise(LAYERS[kind](rope=rope, causal=causal, bias=True)).eval()
    x = inputs(seq=9)
    full = m(x)
    if causal:
        cache = m.new_cache()
        steps = torch.cat([m(x[:, t : t + 1], cache) for t in range(x.shape[1])], dim=1)
        torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
        assert cache.length == 9
    cache = m.new_cache()  # a chunked prefill, then single steps: positions continue from the cache
    chunks = [m(x[:, :4], cache), m(x[:, 4:7], cache), m(x[:, 7:8], cache), m(x[:, 8:], cache)]
    if causal:
        torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=1e-10, atol=1e-10)
    else:  # without a mask the last chunk sees every position, like the full forward
        torch.testing.assert_close(chunks[-1], full[:, 8:], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_gradcheck_on_small_shapes(kind: str) -> None:
    torch.manual_seed(0)
    d, h = 8, 2
    build = {
        "mha": lambda: MultiHeadAttention(d, h, rope=True, bias=True),
        "gqa1": lambda: GroupedQueryAttention(d, h, 1, rope=True, bias=True),
        "gqa2": lambda: GroupedQueryAttention(d, h, 2, bias=True),
        "mla": lambda: MultiHeadLatentAttention(d, h, 4, rope=True, bias=True),
        "mla_q": lambda: MultiHeadLatentAttention(d, h, 4, 3, bias=True),
        "mla_decoupled": lambda: MultiHeadLatentAttention(d, h, 4, 3, rope=True, rope_mode="decoupled", bias=True),
        "tucker": lambda: TuckerAttention(d, h, (2, 3, 4), (1, 3, 2), rope=True, bias=True),
        "tucker_shared": lambda: TuckerAttention(d, h, (2, 3, 4), shared_latent=True, rope=True, bias=True),
    }[kind]
    m = build().double()
    x = torch.randn(1, 3, d, dtype=torch.float64, requires_grad=True)
    params = [p for p in m.parameters()]
    names = [n for n, _ in m.named_parameters()]

    def f(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(m, dict(zip(names, values, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in params]), fast_mode=True)


@pytest.mark.parametrize("offset", [1, 5, 1000])
def test_latent_rope_scores_depend_only_on_position_difference(offset: int) -> None:
    gen = torch.Generator().manual_seed(3)
    r3 = 16
    q = torch.randn(1, 1, 6, r3, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 1, 6, r3, generator=gen, dtype=torch.float64)
    frequencies = rotary_frequencies(r3)
    scores = apply_rotary(q, frequencies) @ apply_rotary(k, frequencies).transpose(-1, -2)
    shifted = apply_rotary(q, frequencies, offset) @ apply_rotary(k, frequencies, offset).transpose(-1, -2)
    torch.testing.assert_close(shifted, scores, rtol=1e-10, atol=1e-10)
    unrotated = q @ k.transpose(-1, -2)
    torch.testing.assert_close(scores.diagonal(dim1=-2, dim2=-1), unrotated.diagonal(dim1=-2, dim2=-1))


def test_apply_rotary_matches_complex_multiplication() -> None:
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(apply_rotary(x, rotary_frequencies(8, 500.0)), rotate(x, rotary_frequencies(8, 500.0)))


def test_dropout_is_active_only_in_training() -> None:
    m = randomise(MultiHeadAttention(D, H, dropout=0.5))
    x = inputs()
    m.eval()
    torch.testing.assert_close(m(x), reference_gqa(m, x), rtol=1e-10, atol=1e-10)
    m.train()
    assert not torch.allclose(m(x), reference_gqa(m, x))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MultiHeadAttention(30, 4), "not divisible by n_heads"),
        (lambda: GroupedQueryAttention(24, 4, 3), "does not divide n_heads"),
        (lambda: MultiHeadAttention(12, 4, rope=True), "even"),
        (lambda: TuckerAttention(24, 4, (5, 8, 8)), "head-mode rank 5 exceeds"),
        (lambda: TuckerAttention(24, 4, (2, 25, 8)), "exceeds that mode's size 24"),
        (lambda: TuckerAttention(24, 4, (2, 8, 8), (2, 8, 30)), "value_ranks"),
        (lambda: TuckerAttention(24, 4, (2, 8, 7), rope=True), "even key rank"),
        (lambda: TuckerAttention(24, 4, (2, 8, 8), (2, 8, 6), shared_latent=True), "shared_latent"),
        (lambda: MultiHeadLatentAttention(24, 4, 7, rope=True), "kv_latent=7 is odd"),
        (lambda: MultiHeadLatentAttention(24, 4, 30), "kv_latent=30 exceeds"),
        (lambda: MultiHeadLatentAttention(24, 4, 8, rope_mode="rotary"), "rope_mode"),
        (lambda: MultiHeadAttention(24, 4, dropout=1.5), "dropout"),
    ],
)
def test_impossible_configurations_raise_value_error_naming_the_argument(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_wrong_ranks_type_raises_type_error() -> None:
    with pytest.raises(TypeError, match="ranks"):
        TuckerAttention(24, 4, 8)  # type: ignore[arg-type]


def test_mismatched_cache_is_rejected() -> None:
    tucker = TuckerAttention(D, H, (2, 8, 8))
    mha = MultiHeadAttention(D, H)
    with pytest.raises(ValueError, match="cache holds"):
        tucker(torch.randn(1, 2, D), mha.new_cache())
    cache = tucker.new_cache()
    tucker(torch.randn(2, 3, D), cache)
    with pytest.raises(ValueError, match="a cache belongs to one layer and batch"):
        tucker(torch.randn(3, 1, D), cache)
    with pytest.raises(TypeError, match="KVCache"):
        tucker(torch.randn(1, 1, D), {})  # type: ignore[arg-type]


def test_input_of_wrong_width_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"expected \(batch, seq, d_model=24\)"):
        MultiHeadAttention(D, H)(torch.randn(2, 3, 25))


def test_latent_rope_frequencies_are_set_by_the_latent_size() -> None:
    r3, d_c = 8, 12
    expected = 10000.0 ** (-torch.arange(0, r3, 2, dtype=torch.float64) / r3)
    torch.testing.assert_close(TuckerAttention(D, H, (2, 8, r3), rope=True).rope_frequencies, expected)
    expected = 500.0 ** (-torch.arange(0, d_c, 2, dtype=torch.float64) / d_c)
    torch.testing.assert_close(MultiHeadLatentAttention(D, H, d_c, rope=True, rope_base=500.0).rope_frequencies,
                               expected)
