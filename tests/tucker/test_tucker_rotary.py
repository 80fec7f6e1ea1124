"""compress_rotary: Tucker compression of RoPE layers whose latent RoPE stays an exact rotation."""

from __future__ import annotations

import math

import pytest
import torch

from structlab.tucker import GroupedQueryAttention, MultiHeadAttention, TuckerAttention, compress_rotary, to_tucker
from structlab.tucker.rope import rotary_angles
from structlab.tucker.rotary_compress import rotary_relative_error
from structlab.tucker.transmla import gqa_to_mla

from .helpers import randomise

D, H = 24, 4


def inputs(seed: int = 1, scale: torch.Tensor | None = None) -> torch.Tensor:
    x = torch.randn(2, 9, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x if scale is None else x * scale


def shifted(layer: torch.nn.Module, x: torch.Tensor, offset: int) -> torch.Tensor:
    """The layer with every position moved by ``offset`` (through its rotary table)."""
    cos, sin = rotary_angles(layer.rope_frequencies, offset, x.shape[1], x)
    return layer(x, rotary=(cos, sin))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("source", ["mha", "gqa", "tucker"])
def test_full_ranks_reproduce_the_layer(source: str, bias: bool) -> None:
    layer = {"mha": lambda: MultiHeadAttention(D, H, rope=True, bias=bias),
             "gqa": lambda: GroupedQueryAttention(D, H, 2, rope=True, bias=bias)}.get(
        source, lambda: to_tucker(GroupedQueryAttention(D, H, 2, rope=True, bias=bias)))()
    layer = randomise(layer).eval()
    latent = to_tucker(layer).ranks[2]
    compressed = compress_rotary(layer, (H, D, latent))
    torch.testing.assert_close(compressed(inputs()), layer(inputs()), rtol=1e-10, atol=1e-10)
    assert rotary_relative_error(layer, compressed) < 1e-6  # a difference of squared norms: ~sqrt(eps)


@pytest.mark.parametrize("method", ["hosvd", "hooi"])
def test_compressed_scores_depend_only_on_position_differences(method: str) -> None:
    layer = randomise(GroupedQueryAttention(D, H, 2, rope=True, bias=True)).eval()
    small = compress_rotary(layer, (3, 12, 6), method)
    x = inputs()
    torch.testing.assert_close(shifted(small, x, 41), small(x), rtol=1e-10, atol=1e-10)
    assert (small(x) - layer(x)).abs().max() > 1e-3  # it is an approximation


def test_a_key_latent_of_low_complex_rank_per_frequency_compresses_exactly() -> None:
    """KV head 1's keys are KV head 0's turned by a fixed angle per frequency: each frequency's keys span
    one complex dimension, so half the key latent holds them exactly; no real basis could (it would
    have to commute with every rotation)."""
    layer = randomise(GroupedQueryAttention(D, H, 2, rope=True)).eval()
    d_h = D // H
    with torch.no_grad():
        w = layer.k_proj.weight
        head0 = w[:d_h].view(d_h // 2, 2, D)
        angles = torch.linspace(0.3, 2.0, d_h // 2, dtype=torch.float64)[:, None]
        turned = torch.stack((angles.cos() * head0[:, 0] - angles.sin() * head0[:, 1],
                              angles.sin() * head0[:, 0] + angles.cos() * head0[:, 1]), dim=1)
        w[d_h:] = 1.7 * turned.reshape(d_h, D)
    exact = compress_rotary(layer, ((H, D, d_h), (H, D, 2 * d_h)))
    torch.testing.assert_close(exact(inputs()), layer(inputs()), rtol=1e-9, atol=1e-9)
    assert exact.ranks[2] == d_h  # half of the 2 d_H key latent
    generic = randomise(GroupedQueryAttention(D, H, 2, rope=True)).eval()
    assert rotary_relative_error(generic, compress_rotary(generic, ((H, D, d_h), (H, D, 2 * d_h)))) > 0.1


def test_hooi_is_never_worse_than_hosvd_on_the_rope_averaged_error() -> None:
    layer = randomise(GroupedQueryAttention(D, H, 2, rope=True, bias=True), seed=3).eval()
    for ranks in [(4, 24, 8), (2, 12, 6), (3, 8, 4)]:
        a = rotary_relative_error(layer, compress_rotary(layer, ranks, "hosvd"))
        b = rotary_relative_error(layer, compress_rotary(layer, ranks, "hooi"))
        assert b <= a + 1e-12


def test_activation_aware_compression_fits_the_inputs_it_is_weighted_by() -> None:
    layer = randomise(GroupedQueryAttention(D, H, 2, rope=True)).eval()
    order = torch.randperm(D, generator=torch.Generator().manual_seed(0))
    scale = torch.logspace(-1.5, 0.5, D, dtype=torch.float64)[order]
    x = inputs(scale=scale)
    flat = x.reshape(-1, D)
    covariance = flat.T @ flat / len(flat)
    full = compress_rotary(layer, (H, D, 12), input_covariance=covariance)
    torch.testing.assert_close(full(x), layer(x), rtol=1e-10, atol=1e-10)

    @torch.no_grad()
    def error(m: torch.nn.Module) -> float:
        return float((m(x) - layer(x)).norm() / layer(x).norm())

    plain = compress_rotary(layer, (H, D, 6))
    aware = compress_rotary(layer, (H, D, 6), input_covariance=covariance)
    assert error(aware) < 0.9 * error(plain)
    with pytest.raises(ValueError, match="covariance of shape"):
        compress_rotary(layer, (H, D, 6), input_covariance=torch.eye(D - 1))


def test_mla_conversion_of_multi_query_attention_is_exact_with_and_without_covariance() -> None:
    layer = randomise(GroupedQueryAttention(D, H, 1, rope=True)).eval()
    d_h = D // H
    x = inputs(scale=torch.linspace(0.1, 2.0, D, dtype=torch.float64))
    flat = x.reshape(-1, D)
    for covariance in (None, flat.T @ flat / len(flat)):
        mla = gqa_to_mla(layer, kv_latent=d_h, rope_dim=d_h, input_covariance=covariance)
        torch.testing.assert_close(mla(x), layer(x), rtol=1e-10, atol=1e-10)
        assert mla.cache_shapes == {"c_kv": (1, d_h), "k_rope": (1, d_h)}


def test_rope_layers_need_even_key_ranks_and_plain_layers_are_sent_to_compress() -> None:
    layer = randomise(GroupedQueryAttention(D, H, 2, rope=True)).eval()
    with pytest.raises(ValueError, match="even"):
        compress_rotary(layer, (H, D, 5))
    with pytest.raises(ValueError, match="use compress"):
        compress_rotary(randomise(MultiHeadAttention(D, H)), (H, D, 6))
    assert isinstance(compress_rotary(layer, (H, D, 4)), TuckerAttention)
    assert math.isfinite(rotary_relative_error(layer, compress_rotary(layer, (1, 4, 2))))
