"""Exact Tucker forms (to_tucker), the attention tensors and their ranks against the paper's theorem."""

from __future__ import annotations

import pytest
import torch

from structlab.tucker import (
    GroupedQueryAttention,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    TuckerAttention,
    attention_tensors,
    mode_spectra,
    theoretical_ranks,
    to_tucker,
    tucker_ranks,
    unfold,
)

from .helpers import randomise

D, H = 24, 4  # d_H = 6


def inputs(seq: int = 8) -> torch.Tensor:
    return torch.randn(2, seq, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


SOURCES = {
    "mha": lambda **kw: MultiHeadAttention(D, H, **kw),
    "gqa1": lambda **kw: GroupedQueryAttention(D, H, 1, **kw),
    "gqa2": lambda **kw: GroupedQueryAttention(D, H, 2, **kw),
    "gqa4": lambda **kw: GroupedQueryAttention(D, H, 4, **kw),
    "mla": lambda **kw: MultiHeadLatentAttention(D, H, 8, **kw),
    "mla_q": lambda **kw: MultiHeadLatentAttention(D, H, 8, 10, **kw),
}
# The paper's theorem: (head, query, key) and (head, output, value) ranks of each structure.
THEOREM = {
    "mha": ((H, D, D), (H, D, D)),
    "gqa1": ((H, D, 6), (H, D, 6)),
    "gqa2": ((H, D, 12), (H, D, 12)),
    "gqa4": ((H, D, D), (H, D, D)),
    "mla": ((H, D, 8), (H, D, 8)),
    "mla_q": ((H, 10, 8), (H, D, 8)),
}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", list(SOURCES))
def test_to_tucker_matches_source_layer_to_1e_10(kind: str, causal: bool) -> None:
    source = randomise(SOURCES[kind](causal=causal))
    tucker = to_tucker(source)
    assert isinstance(tucker, TuckerAttention)
    torch.testing.assert_close(tucker(inputs()), source(inputs()), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", list(SOURCES))
def test_to_tucker_has_the_theorem_ranks(kind: str) -> None:
    tucker = to_tucker(randomise(SOURCES[kind]()))
    assert (tucker.ranks, tucker.value_ranks) == THEOREM[kind]


@pytest.mark.parametrize("kind", list(SOURCES))
def test_to_tucker_is_exact_with_biases_and_rope(kind: str) -> None:
    """Per-head RoPE becomes latent RoPE with tiled frequencies; the biases become latent biases."""
    source = randomise(SOURCES[kind](rope=True, bias=True))
    tucker = to_tucker(source)
    x = inputs()
    torch.testing.assert_close(tucker(x), source(x), rtol=1e-10, atol=1e-10)
    cache = tucker.new_cache()  # and decodes step by step like the source
    steps = torch.cat([tucker(x[:, t : t + 1], cache) for t in range(x.shape[1])], dim=1)
    torch.testing.assert_close(steps, source(x), rtol=1e-10, atol=1e-10)


def test_mla_with_decoupled_rope_becomes_tucker_with_latent_rope_on_extra_dims() -> None:
    source = randomise(MultiHeadLatentAttention(D, H, 8, 10, rope=True, rope_mode="decoupled", bias=True))
    tucker = to_tucker(source)
    assert tucker.ranks == (H, 10, 8 + source.rope_head_dim)
    torch.testing.assert_close(tucker(inputs()), source(inputs()), rtol=1e-10, atol=1e-10)


def test_mla_to_tucker_keeps_one_shared_latent_in_the_cache() -> None:
    source = randomise(MultiHeadLatentAttention(D, H, 8, rope=True))
    tucker = to_tucker(source)
    assert tucker.shared_latent
    cache_source, cache_tucker = source.new_cache(), tucker.new_cache()
    source(inputs(), cache_source)
    tucker(inputs(), cache_tucker)
    assert cache_tucker.nbytes == cache_source.nbytes


def test_full_rank_tucker_equals_mha() -> None:
    mha = randomise(MultiHeadAttention(D, H))
    W_qk, W_vo = attention_tensors(mha)
    tucker = TuckerAttention(D, H, (H, D, D)).double()
    eye_h, eye_d = torch.eye(H, dtype=torch.float64), torch.eye(D, dtype=torch.float64)
    with torch.no_grad():  # identity factors, the tensors themselves as cores
        tucker.core.copy_(W_qk)
        tucker.core_v.copy_(W_vo)
        for factor, eye in ((tucker.U_head, eye_h), (tucker.U_head_v, eye_h), (tucker.U_q, eye_d),
                            (tucker.U_k, eye_d), (tucker.U_v, eye_d), (tucker.U_o, eye_d)):
            factor.copy_(eye)
    torch.testing.assert_close(tucker(inputs()), mha(inputs()), rtol=1e-10, atol=1e-10)


def test_attention_tensors_are_the_per_head_weight_products() -> None:
    """W_qk[i] = W_i^Q W_i^K^T and W_vo[i] = (W_i^V W_i^O)^T, read directly off the projections."""
    m = randomise(GroupedQueryAttention(D, H, 2))
    W_qk, W_vo = attention_tensors(m)
    d_h = m.head_dim
    for i in range(H):
        g = i // 2
        w_q = m.q_proj.weight[i * d_h : (i + 1) * d_h].T
        w_k = m.k_proj.weight[g * d_h : (g + 1) * d_h].T
        w_v = m.v_proj.weight[g * d_h : (g + 1) * d_h].T
        w_o = m.o_proj.weight[:, i * d_h : (i + 1) * d_h].T
        torch.testing.assert_close(W_qk[i], w_q @ w_k.T)
        torch.testing.assert_close(W_vo[i], (w_v @ w_o).T)


def test_attention_tensors_of_tucker_are_the_tucker_products() -> None:
    m = randomise(TuckerAttention(D, H, (3, 10, 8), (2, 12, 6)))
    W_qk, W_vo = attention_tensors(m)
    expected_qk = torch.einsum("abc,ia,jb,kc->ijk", m.core, m.U_head, m.U_q, m.U_k)
    expected_vo = torch.einsum("abc,ia,jb,kc->ijk", m.core_v, m.U_head_v, m.U_o, m.U_v)
    torch.testing.assert_close(W_qk, expected_qk.detach())
    torch.testing.assert_close(W_vo, expected_vo.detach())


@pytest.mark.parametrize("kind", list(SOURCES))
def test_measured_tucker_ranks_equal_theorem_values_on_random_weights(kind: str) -> None:
    m = randomise(SOURCES[kind]())
    assert tucker_ranks(m) == THEOREM[kind]
    assert theoretical_ranks(m) == THEOREM[kind]


@pytest.mark.parametrize("kind", ["mha", "gqa1", "mla_q"])
def test_tucker_ranks_agree_with_matrix_rank_of_dense_unfoldings(kind: str) -> None:
    m = randomise(SOURCES[kind]())
    dense = tuple(tuple(int(torch.linalg.matrix_rank(unfold(t, mode))) for mode in range(3))
                  for t in attention_tensors(m))
    assert tucker_ranks(m) == dense


def test_mode_spectra_equal_singular_values_of_dense_unfoldings() -> None:
    m = randomise(MultiHeadLatentAttention(D, H, 8, 10))
    for spectra, tensor in zip(mode_spectra(m), attention_tensors(m), strict=True):
        for mode, values in enumerate(spectra):
            expected = torch.linalg.svdvals(unfold(tensor, mode))[: values.numel()]
            torch.testing.assert_close(values[: expected.numel()], expected, rtol=1e-9, atol=1e-9)


def test_tucker_layer_ranks_are_its_configured_ranks() -> None:
    m = randomise(TuckerAttention(D, H, (3, 10, 8), (2, 12, 6)))
    assert tucker_ranks(m) == ((3, 10, 8), (2, 12, 6))


def test_to_tucker_rejects_other_modules() -> None:
    with pytest.raises(TypeError, match="expected MultiHeadAttention"):
        to_tucker(torch.nn.Linear(3, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rtol"):
        tucker_ranks(MultiHeadAttention(D, H), rtol=2.0)
