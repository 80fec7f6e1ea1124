"""Attention parameters and KV-cache size of each layer, from the paper's formulas.

Per layer and token the cache holds 2 d numbers for MHA, 2 n_KV d_H for GQA, d_c for MLA (d_c + d_R
with decoupled RoPE) and r3 + v3 for Tucker Attention (r3 with a shared key/value latent). Tucker
Attention has r1 r2 r3 + n_H r1 + d r2 + d r3 parameters per side (paper, section on parameter
counts), 2 (r1 r2 r3 + n_H r1 + d r2 + d r3) with equal ranks on both sides.
"""

from __future__ import annotations

import math

import torch

from structlab.tucker.mha import GroupedQueryAttention
from structlab.tucker.mla import MultiHeadLatentAttention
from structlab.tucker.tensors import AttentionLayer, _check_layer
from structlab.tucker.tucker import TuckerAttention


def attention_parameters(module: AttentionLayer) -> int:
    """The layer's parameter count from its configuration (equal to its trainable parameters).

    MHA 4 d^2 and GQA 2 d^2 + 2 d n_KV d_H (plus biases); MLA the sum of its projections; Tucker
    sum over both sides of r1 r2 r3 + n_H r1 + d r2 + d r3 (without U_v when the latent is shared),
    plus n_H r3 + r3 + v3 + d for its biases. Raises ``TypeError`` for any other module.
    """
    _check_layer(module)
    d, n_h = module.d_model, module.n_heads
    bias = int(module.bias)
    if isinstance(module, TuckerAttention):
        (r1, r2, r3), (v1, v2, v3) = module.ranks, module.value_ranks
        count = math.prod(module.ranks) + n_h * r1 + d * (r2 + r3)
        count += math.prod(module.value_ranks) + n_h * v1 + d * v2 + (0 if module.shared_latent else d * v3)
        return count + bias * (n_h * r3 + r3 + (0 if module.shared_latent else v3) + d)
    if isinstance(module, GroupedQueryAttention):
        kv = module.n_kv_heads * module.head_dim
        return 2 * d * d + 2 * d * kv + bias * (2 * d + 2 * kv)
    width = n_h * module.head_dim

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out + bias * n_out

    d_c, d_cq = module.kv_latent, module.q_latent
    count = linear(d, width) if d_cq is None else linear(d, d_cq) + linear(d_cq, width)
    count += linear(d, d_c) + 2 * linear(d_c, width) + linear(width, d)
    if module.decoupled:
        d_r = module.rope_head_dim
        count += linear(d_cq or d, n_h * d_r) + linear(d, d_r)
    return count


def cached_numbers_per_token(module: AttentionLayer) -> int:
    """Numbers the KV cache holds per token and sequence (see the module docstring)."""
    _check_layer(module)
    if isinstance(module, TuckerAttention):
        return module.ranks[2] + (0 if module.shared_latent else module.value_ranks[2])
    if isinstance(module, GroupedQueryAttention):
        return 2 * module.n_kv_heads * module.head_dim
    if isinstance(module, MultiHeadLatentAttention):
        return module.kv_latent + (module.rope_head_dim or 0)
    raise AssertionError("unreachable")  # pragma: no cover


def kv_cache_bytes(module: AttentionLayer, seq_len: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the layer's KV cache for one sequence of ``seq_len`` tokens stored in ``dtype``.

    Raises ``ValueError`` for a negative ``seq_len`` and ``TypeError`` for a ``dtype`` that is not a
    ``torch.dtype``.
    """
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 0:
        raise ValueError(f"seq_len={seq_len!r}: expected a non-negative int")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype={dtype!r}: expected a torch.dtype such as torch.float16")
    item = torch.empty((), dtype=dtype).element_size()
    return cached_numbers_per_token(module) * seq_len * item
