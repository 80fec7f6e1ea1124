"""HOSVD, HOOI and compress: exact at full rank, HOOI never worse than HOSVD, biases carried over."""

from __future__ import annotations

import math

import pytest
import torch

from structlab.tucker import (
    GroupedQueryAttention,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    TuckerAttention,
    attention_tensors,
    compress,
    hooi,
    hosvd,
    relative_errors,
    tucker_ranks,
)

from .helpers import randomise

D, H = 24, 4


def inputs(seq: int = 8) -> torch.Tensor:
    return torch.randn(2, seq, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def low_rank_tensor(shape: tuple[int, int, int], ranks: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    core = torch.randn(ranks, generator=gen, dtype=torch.float64)
    factors = [torch.randn(n, r, generator=gen, dtype=torch.float64) for n, r in zip(shape, ranks, strict=True)]
    return torch.einsum("abc,ia,jb,kc->ijk", core, *factors)


def test_hosvd_recovers_a_tensor_of_known_multilinear_rank_exactly() -> None:
    tensor = low_rank_tensor((5, 12, 9), (2, 4, 3))
    dec = hosvd(tensor, (2, 4, 3))
    assert dec.relative_error(tensor) < 1e-12
    for factor in dec.factors:  # orthonormal columns
        torch.testing.assert_close(factor.T @ factor, torch.eye(factor.shape[1], dtype=torch.float64))


def test_hosvd_error_is_within_sqrt3_of_hooi_and_hooi_is_never_worse() -> None:
    gen = torch.Generator().manual_seed(5)
    for trial in range(5):
        tensor = low_rank_tensor((6, 14, 10), (4, 8, 7), seed=trial) + 0.3 * torch.randn(6, 14, 10, generator=gen,
                                                                                      dtype=torch.float64)
        ranks = (2, 5, 4)
        e_hosvd = hosvd(tensor, ranks).relative_error(tensor)
        e_hooi = hooi(tensor, ranks).relative_error(tensor)
        assert e_hooi <= e_hosvd + 1e-12
        assert e_hosvd <= math.sqrt(3) * e_hooi + 1e-12


def test_hooi_error_equals_norm_identity_for_orthonormal_factors() -> None:
    tensor = torch.randn(4, 10, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    dec = hooi(tensor, (2, 4, 3))
    expected = math.sqrt(1 - float(dec.core.norm() ** 2 / tensor.norm() ** 2))
    assert dec.relative_error(tensor) == pytest.approx(expected, rel=1e-9)


SOURCES = {
    "mha": lambda **kw: MultiHeadAttention(D, H, **kw),
    "gqa2": lambda **kw: GroupedQueryAttention(D, H, 2, **kw),
    "mla_q": lambda **kw: MultiHeadLatentAttention(D, H, 8, 10, **kw),
    "tucker": lambda **kw: TuckerAttention(D, H, (3, 12, 10), **kw),
}


@pytest.mark.parametrize("method", ["hosvd", "hooi"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", list(SOURCES))
def test_compress_at_full_rank_reproduces_the_layer(kind: str, causal: bool, bias: bool, method: str) -> None:
    source = randomise(SOURCES[kind](causal=causal, bias=bias))
    compressed = compress(source, (H, D, D), method=method)
    torch.testing.assert_close(compressed(inputs()), source(inputs()), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", list(SOURCES))
def test_compress_at_the_layers_own_ranks_is_exact(kind: str) -> None:
    source = randomise(SOURCES[kind]())
    compressed = compress(source, tucker_ranks(source), method="hosvd")
    torch.testing.assert_close(compressed(inputs()), source(inputs()), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", list(SOURCES))
def test_compressed_tensors_are_the_truncated_decompositions(kind: str) -> None:
    source = randomise(SOURCES[kind]())
    qk_ranks, vo_ranks = (2, 7, 5), (3, 6, 4)
    compressed = compress(source, (qk_ranks, vo_ranks), method="hooi")
    assert (compressed.ranks, compressed.value_ranks) == (qk_ranks, vo_ranks)
    W_qk, W_vo = attention_tensors(source)
    C_qk, C_vo = attention_tensors(compressed)
    torch.testing.assert_close(C_qk, hooi(W_qk, qk_ranks).full(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(C_vo, hooi(W_vo, vo_ranks).full(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kind", list(SOURCES))
def test_hooi_compression_error_is_never_larger_than_hosvd(kind: str) -> None:
    source = randomise(SOURCES[kind]())
    for ranks in [(1, 4, 3), (2, 8, 6), (3, 12, 5)]:
        e_hosvd = relative_errors(source, compress(source, ranks, method="hosvd"))
        e_hooi = relative_errors(source, compress(source, ranks, method="hooi"))
        assert e_hooi[0] <= e_hosvd[0] + 1e-12 and e_hooi[1] <= e_hosvd[1] + 1e-12


def test_compress_keeps_the_query_bias_term_projected_on_the_new_key_latent() -> None:
    """Without RoPE the bias changes head i's scores by t_i x_n with t_i = b_i W_i^K^T (in input space)."""
    source = randomise(MultiHeadAttention(D, H, causal=False, bias=True))
    compressed = compress(source, (3, 10, 8))
    d_h = source.head_dim
    P = compressed.U_k @ compressed.U_k.T  # projector on the new key latent
    for i in range(H):
        rows = slice(i * d_h, (i + 1) * d_h)
        t = source.q_proj.bias[rows] @ source.k_proj.weight[rows]  # b_i W_i^K^T
        torch.testing.assert_close(compressed.query_bias[i] @ compressed.U_k.T, t @ P)
    value_bias_term = sum(source.v_proj.bias[i * d_h:(i + 1) * d_h] @ source.o_proj.weight[:, i * d_h:(i + 1) * d_h].T
                          for i in range(H))
    torch.testing.assert_close(compressed.output_bias, source.o_proj.bias + value_bias_term)


def test_compress_rejects_rope_bad_ranks_and_methods() -> None:
    with pytest.raises(ValueError, match="rope=True"):
        compress(MultiHeadAttention(D, H, rope=True), (2, 8, 8))
    with pytest.raises(ValueError, match="exceeds that mode's size"):
        compress(MultiHeadAttention(D, H), (2, 8, 30))
    with pytest.raises(ValueError, match="head-mode rank 5"):
        compress(MultiHeadAttention(D, H), ((2, 8, 8), (5, 8, 8)))
    with pytest.raises(ValueError, match="method"):
        compress(MultiHeadAttention(D, H), (2, 8, 8), method="cp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ranks"):
        hosvd(torch.randn(3, 4, 5), (4, 1, 1))


def test_compress_keeps_dtype_and_float32_error_is_small() -> None:
    source = MultiHeadAttention(D, H, causal=False)
    compressed = compress(source, (H, D, D))
    assert compressed.core.dtype == torch.float32
    x = inputs().float()
    torch.testing.assert_close(compressed(x), source(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_weight(bad: float) -> None:
    from structlab.tucker import mode_spectra, to_tucker

    source = MultiHeadAttention(D, H)
    with torch.no_grad():
        source.k_proj.weight[2, 5] = bad
    for call in (lambda: compress(source, (2, 8, 8)), lambda: tucker_ranks(source), lambda: to_tucker(source),
                 lambda: mode_spectra(source), lambda: attention_tensors(source)):
        with pytest.raises(ValueError, match=r"weight 'k_proj\.weight' \(24, 24\) has 1 non-finite"):
            call()


def test_ranks_of_numpy_integer_types_are_accepted_everywhere() -> None:
    import numpy as np

    source = randomise(MultiHeadAttention(D, H, causal=False))
    reference = compress(source, ((2, 8, 6), (3, 8, 4)))
    given = [
        ((np.int64(2), np.int32(8), np.int16(6)), (np.uint8(3), np.int64(8), np.int64(4))),
        (np.array([2, 8, 6]), np.array([3, 8, 4], dtype=np.int32)),
        np.array([[2, 8, 6], [3, 8, 4]]),
    ]
    for ranks in given:
        compressed = compress(source, ranks)
        assert compressed.ranks == (2, 8, 6) and compressed.value_ranks == (3, 8, 4)
        assert all(type(r) is int for r in (*compressed.ranks, *compressed.value_ranks))
        torch.testing.assert_close(compressed.core, reference.core)
    layer = TuckerAttention(D, H, np.array([2, 8, 6]), (np.int64(3), 8, np.int64(4)))
    assert layer.ranks == (2, 8, 6) and layer.value_ranks == (3, 8, 4)
    tensor = low_rank_tensor((5, 12, 9), (2, 4, 3))
    assert hosvd(tensor, np.array([2, 4, 3])).core.shape == (2, 4, 3)
    assert hooi(tensor, (np.int64(2), np.int64(4), np.int64(3))).core.shape == (2, 4, 3)
    with pytest.raises(TypeError, match="head mode"):
        TuckerAttention(D, H, (np.float64(2.0), 8, 6))
    with pytest.raises(TypeError, match="head mode"):
        TuckerAttention(D, H, (True, 8, 6))


@pytest.mark.parametrize("method", ["hosvd", "hooi"])
def test_a_rank_above_the_product_of_the_others_still_gives_a_working_layer(method: str) -> None:
    # (1, 4, 3): the query mode's rank 4 exceeds r1 r3 = 3, so HOOI's projected unfolding has 3 columns;
    # the factor is completed to 4 orthonormal columns (it was returned with 3 and the layer's forward failed).
    source = randomise(MultiHeadAttention(D, H, causal=False))
    compressed = compress(source, (1, 4, 3), method=method)
    assert compressed.U_q.shape == (D, 4) and compressed.core.shape == (1, 4, 3)
    torch.testing.assert_close(compressed.U_q.T @ compressed.U_q, torch.eye(4, dtype=torch.float64))
    assert compressed(inputs()).shape == (2, 8, D)
