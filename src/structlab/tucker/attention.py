"""What every attention layer of this package shares: argument checks and the attention kernel.

All four layers end in the same computation, softmax(Q K^T * scale) V over ``n_kv`` key/value heads
shared by groups of query heads: MHA has ``n_kv = n_heads``, GQA ``n_kv`` groups, and MLA and Tucker
Attention a single latent key/value pair for all heads (multi-query attention in the latent space).
:func:`attend` runs it through ``F.scaled_dot_product_attention`` with the scale passed explicitly.
"""

from __future__ import annotations

import contextlib
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from structlab.tucker.cache import KVCache

# cuDNN's attention builds a graph per sequence length; with a cache the key length grows every step, so
# each decoding step paid a new graph (~40 ms on an H200 in bf16) for a 20 us kernel.
_WITHOUT_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attend(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, past: int, scale: float, dropout: float,
    mask: Tensor | None = None,
) -> Tensor:
    """Scaled dot-product attention of ``q`` (B, H, N, D) over ``k`` (B, H_kv, T, D), ``v`` (B, H_kv, T, Dv).

    ``T = past + N``: the first ``past`` keys are cached positions, so query ``n`` sits at position
    ``past + n`` and, when ``causal``, sees keys ``0 .. past + n``. Query head ``i`` uses key/value head
    ``i // (H / H_kv)``. ``mask`` (bool, broadcastable to (B, 1, N, T), from :func:`attention_mask`) further
    limits what each query sees (True: may attend). Returns (B, H, N, Dv).
    """
    with sdpa_kernel(_WITHOUT_CUDNN) if past > 0 and q.device.type == "cuda" else contextlib.nullcontext():
        return _attend(q, k, v, causal=causal, past=past, scale=scale, dropout=dropout, mask=mask)


def _attend(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, past: int, scale: float, dropout: float, mask: Tensor | None
) -> Tensor:
    batch, n_heads, seq, dim = q.shape
    n_kv = k.shape[1]
    group = n_heads // n_kv
    needs_mask = causal and seq > 1
    if group > 1 and not needs_mask and mask is None:
        # Without a mask every query of a group reads the same keys: stack the group's heads along the
        # query axis and attend once per key/value head (one matrix product instead of `group`).
        out = F.scaled_dot_product_attention(
            q.reshape(batch, n_kv, group * seq, dim), k, v, dropout_p=dropout, scale=scale
        )
        return out.reshape(batch, n_heads, seq, v.shape[-1])
    native_gqa = q.device.type == "cpu" or q.dtype in (torch.float16, torch.bfloat16)
    if group > 1 and not native_gqa:
        # On CUDA, float32 runs in the memory-efficient kernel, which has no grouped-query support: SDPA
        # would fall back to the math kernel and form every score. Broadcasting the shared heads keeps the
        # fused kernel (a stride-0 view, no copy, for the single latent head of MLA and Tucker).
        k, v = _broadcast_heads(k, group), _broadcast_heads(v, group)
        group = 1
    causal_mask = None
    if needs_mask and (past > 0 or mask is not None):
        # Bottom-right aligned causal mask (is_causal aligns top-left, which is wrong after a cache).
        rows = torch.arange(past, past + seq, device=q.device)[:, None]
        causal_mask = torch.arange(past + seq, device=q.device)[None, :] <= rows
    if mask is not None:
        mask = mask if causal_mask is None else mask & causal_mask
        # A query that may see no key at all (a padding position before the first real token) would get
        # NaN from the softmax; let it see every key instead: its output is never used.
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    else:
        mask = causal_mask
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=needs_mask and mask is None,
        scale=scale, enable_gqa=group > 1,
    )


def attention_mask(mask: Tensor | None, batch: int, seq: int, past: int) -> Tensor | None:
    """``mask`` as a bool tensor of shape (B, 1, N, T) that :func:`attend` takes (True: may attend), or None.

    Accepted forms: a padding mask (B, T) over all ``T = past + N`` positions (cached ones first), in
    which True (or 1) marks real tokens and False (0) padding, as Hugging Face's ``attention_mask``; or a
    full mask (B, 1 | H, N, T) of which queries may see which keys. Causality is added by the layer.
    Raises ``TypeError`` for a mask that is not a bool or integer tensor and ``ValueError`` for a shape
    that fits neither form.
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.is_floating_point() or mask.is_complex():
        got = f"a tensor of {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(
            "mask: expected a bool (or 0/1 integer) torch.Tensor of shape (batch, past + seq) or "
            f"(batch, 1, seq, past + seq); got {got}"
        )
    total = past + seq
    if mask.dim() == 2 and tuple(mask.shape) == (batch, total):
        return mask.bool()[:, None, None, :]
    if mask.dim() == 4 and mask.shape[0] in (1, batch) and tuple(mask.shape[2:]) == (seq, total):
        return mask.bool()
    raise ValueError(
        f"mask has shape {tuple(mask.shape)}: expected (batch, past + seq) = ({batch}, {total}) or "
        f"(batch, 1 or heads, seq, past + seq) = ({batch}, 1, {seq}, {total})"
    )


def _broadcast_heads(t: Tensor, group: int) -> Tensor:
    """(B, H_kv, T, D) -> (B, H_kv * group, T, D), key/value head g serving query heads g*group .. (g+1)*group-1."""
    batch, n_kv, seq, dim = t.shape
    if n_kv == 1:
        return t.expand(batch, group, seq, dim)
    return t.repeat_interleave(group, dim=1)


def head_dim(d_model: int, n_heads: int) -> int:
    """d_H = d_model / n_heads; raises ``ValueError`` when it is not a positive integer."""
    positive_int("d_model", d_model)
    positive_int("n_heads", n_heads)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}: expected d_model = n_heads * d_H")
    return d_model // n_heads


def positive_int(name: str, value: object) -> int:
    """``value`` as a Python int if it is a positive integer, else ``TypeError``/``ValueError`` naming ``name``.

    Any integral type counts (``int``, NumPy's ``np.int64`` from ``argmax`` or an array of ranks, ...);
    ``bool`` does not.
    """
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: expected a positive int")
    if value <= 0:
        raise ValueError(f"{name}={value}: expected a positive int")
    return int(value)


def check_options(*, dropout: float, rope_base: float) -> None:
    """Validate the keyword options every layer takes."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r}: expected a probability in [0, 1)")
    if not rope_base > 1.0:
        raise ValueError(f"rope_base={rope_base!r}: expected a number > 1")


def check_input(x: Tensor, d_model: int, cache: KVCache | None, shapes: dict[str, tuple[int, int]]) -> int:
    """Validate ``forward``'s arguments; return the number of cached positions (0 without a cache)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor of shape (batch, seq, {d_model}); got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected (batch, seq, d_model={d_model})")
    if cache is None:
        return 0
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache: expected a KVCache from this layer's new_cache(); got {type(cache).__name__}")
    if cache.shapes != shapes:
        raise ValueError(
            f"cache holds {cache.shapes} (name: (heads, dim)); this layer caches {shapes} "
            "(a cache belongs to the layer that made it)"
        )
    return cache.length
