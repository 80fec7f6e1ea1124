"""Multi-head latent attention (DeepSeek-V2), with latent RoPE or DeepSeek's decoupled RoPE.

Parametrisation (DeepSeek-V2, section 2.1, without the latent normalisations, so the layer stays
multilinear and its Tucker ranks are exact):

    c_Q = X W^DQ (d_cq)         q_i = c_Q W_i^UQ (d_H)      (W^DQ = I when there is no query latent)
    c_KV = X W^DKV (d_c)        k_i = c_KV W_i^UK (d_H)     v_i = c_KV W_i^UV (d_H)

The layer caches only c_KV (N d_c numbers per layer) and runs as multi-query attention in the latent:
absorbing W_i^UK into the query, q_i k_i^T = (q_i W_i^UK^T) c_KV^T, so every head attends over the same
keys and values, c_KV, with a d_c-dimensional query per head; the head output A_i c_KV is mapped
through W_i^UV and W^O afterwards.

RoPE (``rope=True``):

- ``rope_mode="latent"`` (the Tucker Attention paper): rotate the d_c-dim latent queries and keys,
  scores (q_i W_i^UK^T R_m)(c_KV,n R_n)^T. The rotation acts after the whole query map, so all
  query-side matrices fuse into one per head, W_i = W^DQ W_i^UQ W_i^UK^T (d x d_c)
  (:meth:`MultiHeadLatentAttention.fused_query_weights`), and no extra rotary dimensions are needed.
- ``rope_mode="decoupled"`` (DeepSeek-V2, eq. 14-19): extra rotary queries q_i^R = RoPE(c_Q W_i^QR)
  and one shared rotary key k^R = RoPE(X W^KR), each of ``rope_head_dim`` d_R dims, concatenated to the
  content parts; the scale is 1/sqrt(d_H + d_R) and the cache holds c_KV and k^R (N (d_c + d_R)).

Biases (``bias=True``) sit on every projection. In the absorbed form the bias of W^UK (and the bias of
W^DKV as seen by the keys) shift every score of a row equally, which softmax ignores; the value biases
add a constant to each head's output, which is applied after attention (rows of softmax sum to one).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from structlab.tucker.attention import attend, attention_mask, check_input, check_options, head_dim, positive_int
from structlab.tucker.cache import KVCache
from structlab.tucker.rope import Rotary, apply_rotary, rotary_frequencies, rotary_table, rotate

RopeMode = Literal["latent", "decoupled"]


class MultiHeadLatentAttention(nn.Module):
    """Multi-head latent attention with a KV latent of size ``kv_latent`` (d_c).

    Args:
        d_model: model width d.
        n_heads: heads n_H (d must be divisible by it; d_H = d / n_H).
        kv_latent: d_c, the size of the cached key/value latent (at most d).
        q_latent: d_cq, the size of the query latent, or None for a full-rank query projection.
        causal, rope, bias, dropout, rope_base: as in :class:`~structlab.tucker.MultiHeadAttention`.
        rope_mode: "latent" (RoPE on the d_c latent, which must then be even) or "decoupled"
            (DeepSeek's separate rotary dimensions).
        rope_head_dim: d_R for decoupled RoPE (even; default d_H / 2, rounded up to even).

    ``forward(x, cache=None, mask=None, rotary=None)``: x (batch, seq, d) -> (batch, seq, d); the cache
    holds ``c_kv`` (batch, 1, N, d_c) and, with decoupled RoPE, ``k_rope`` (batch, 1, N, d_R). ``mask`` as
    in :class:`~structlab.tucker.GroupedQueryAttention`; ``rotary``: (cos, sin) of shape ([batch,] seq,
    d_R / 2) replacing the decoupled RoPE's own angles (not available with latent RoPE, which rotates
    the cached latent again at every step).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        kv_latent: int,
        q_latent: int | None = None,
        *,
        causal: bool = True,
        rope: bool = False,
        bias: bool = False,
        dropout: float = 0.0,
        rope_base: float = 10000.0,
        rope_mode: RopeMode = "latent",
        rope_head_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim(d_model, n_heads)
        positive_int("kv_latent", kv_latent)
        if kv_latent > d_model:
            raise ValueError(f"kv_latent={kv_latent} exceeds d_model={d_model}: expected d_c <= d")
        if q_latent is not None:
            positive_int("q_latent", q_latent)
            if q_latent > d_model:
                raise ValueError(f"q_latent={q_latent} exceeds d_model={d_model}: expected d_cq <= d")
        if rope_mode not in ("latent", "decoupled"):
            raise ValueError(f"rope_mode={rope_mode!r}: expected 'latent' or 'decoupled'")
        check_options(dropout=dropout, rope_base=rope_base)
        self.d_model, self.n_heads, self.kv_latent, self.q_latent = d_model, n_heads, kv_latent, q_latent
        self.causal, self.rope, self.bias, self.dropout, self.rope_base = causal, rope, bias, dropout, rope_base
        self.rope_mode: RopeMode = rope_mode
        self.decoupled = rope and rope_mode == "decoupled"
        width = n_heads * self.head_dim
        if q_latent is None:
            self.q_proj = nn.Linear(d_model, width, bias=bias)  # W^Q = W^DQ W^UQ with W^DQ = I
        else:
            self.q_down = nn.Linear(d_model, q_latent, bias=bias)  # W^DQ
            self.q_up = nn.Linear(q_latent, width, bias=bias)  # W^UQ
        self.kv_down = nn.Linear(d_model, kv_latent, bias=bias)  # W^DKV
        self.k_up = nn.Linear(kv_latent, width, bias=bias)  # W^UK
        self.v_up = nn.Linear(kv_latent, width, bias=bias)  # W^UV
        self.o_proj = nn.Linear(width, d_model, bias=bias)  # W^O
        self.resid_dropout = nn.Dropout(dropout)
        self.rope_head_dim: int | None = None
        frequencies = None
        if self.decoupled:
            d_rope = rope_head_dim if rope_head_dim is not None else self.head_dim // 2 + (self.head_dim // 2) % 2
            positive_int("rope_head_dim", d_rope)
            if d_rope % 2:
                raise ValueError(f"rope_head_dim={d_rope}: expected an even size (RoPE rotates pairs)")
            self.rope_head_dim = d_rope
            self.q_rope = nn.Linear(q_latent or d_model, n_heads * d_rope, bias=bias)  # W^QR
            self.k_rope = nn.Linear(d_model, d_rope, bias=bias)  # W^KR
            frequencies = rotary_frequencies(d_rope, rope_base)
        elif rope:
            if kv_latent % 2:
                raise ValueError(
                    f"kv_latent={kv_latent} is odd: latent RoPE rotates pairs, expected an even d_c "
                    "(or rope_mode='decoupled')"
                )
            frequencies = rotary_frequencies(kv_latent, rope_base)
        elif rope_head_dim is not None:
            raise ValueError(f"rope_head_dim={rope_head_dim}: only used with rope=True, rope_mode='decoupled'")
        self.register_buffer("rope_frequencies", frequencies, persistent=False)

    @property
    def cache_shapes(self) -> dict[str, tuple[int, int]]:
        """(heads, dim) of each cached tensor."""
        shapes = {"c_kv": (1, self.kv_latent)}
        if self.decoupled:
            shapes["k_rope"] = (1, self.rope_head_dim)
        return shapes

    def new_cache(self) -> KVCache:
        """An empty cache of the KV latent ``c_kv`` (and ``k_rope`` with decoupled RoPE)."""
        return KVCache(self.cache_shapes)

    @property
    def scale(self) -> float:
        """1/sqrt(d_H), or 1/sqrt(d_H + d_R) with decoupled RoPE (DeepSeek-V2)."""
        return (self.head_dim + (self.rope_head_dim or 0)) ** -0.5

    def _query_latent(self, x: Tensor) -> Tensor:
        """c_Q = X W^DQ, or X itself without a query latent."""
        return x if self.q_latent is None else self.q_down(x)

    def _up_query(self) -> nn.Linear:
        return self.q_proj if self.q_latent is None else self.q_up

    def fused_query_weights(self) -> Tensor:
        """W_i = W^DQ W_i^UQ W_i^UK^T per head, shape (n_H, d, d_c): the latent query is x W_i.

        With latent RoPE these are all the query-side weights (biases aside); rotating x W_i is the
        same as rotating the unfused chain, since RoPE acts after the whole map.
        """
        w_uq = self._up_query().weight.view(self.n_heads, self.head_dim, -1)  # (n_H, d_H, d_cq)
        w_uk = self.k_up.weight.view(self.n_heads, self.head_dim, self.kv_latent)  # (n_H, d_H, d_c)
        w = torch.einsum("hec,hek->hck", w_uq, w_uk)  # W_i^UQ W_i^UK^T: (n_H, d_cq, d_c)
        if self.q_latent is None:
            return w
        return torch.einsum("qd,hqk->hdk", self.q_down.weight, w)

    def forward(
        self, x: Tensor, cache: KVCache | None = None, mask: Tensor | None = None, rotary: Rotary | None = None
    ) -> Tensor:
        past = check_input(x, self.d_model, cache, self.cache_shapes)
        batch, seq, _ = x.shape
        mask = attention_mask(mask, batch, seq, past)
        if rotary is not None and not self.decoupled:
            raise ValueError("rotary: a caller's RoPE table needs rope=True with rope_mode='decoupled'")
        c_q = self._query_latent(x)
        q_heads = self._up_query()(c_q).view(batch, seq, self.n_heads, self.head_dim)
        w_uk = self.k_up.weight.view(self.n_heads, self.head_dim, self.kv_latent)
        q = torch.einsum("bnhe,hek->bhnk", q_heads, w_uk)  # absorbed query q_i W_i^UK^T: (B, n_H, N, d_c)
        c_kv = self.kv_down(x).unsqueeze(1)  # (B, 1, N, d_c)
        if self.decoupled:
            q_r = self.q_rope(c_q).view(batch, seq, self.n_heads, self.rope_head_dim).transpose(1, 2)
            k_r = self.k_rope(x).unsqueeze(1)
            angles = rotary_table(rotary, self.rope_frequencies, past, seq, q_r)
            q = torch.cat((q, rotate(q_r, *angles)), dim=-1)
            k_r = rotate(k_r, *angles)
            if cache is not None:
                c_kv, k_r = cache.append(c_kv=c_kv, k_rope=k_r).values()
            k = torch.cat((c_kv, k_r), dim=-1)
        else:
            if cache is not None:
                (c_kv,) = cache.append(c_kv=c_kv).values()
            k = c_kv
            if self.rope:  # latent RoPE; the values stay unrotated
                q = apply_rotary(q, self.rope_frequencies, past)
                k = apply_rotary(c_kv, self.rope_frequencies, 0)
        y = attend(
            q, k, c_kv, causal=self.causal, past=past, scale=self.scale,
            dropout=self.dropout if self.training else 0.0, mask=mask,
        )  # A_i c_KV: (B, n_H, N, d_c)
        w_uv = self.v_up.weight.view(self.n_heads, self.head_dim, self.kv_latent)
        heads = torch.einsum("bhnk,hek->bnhe", y, w_uv).reshape(batch, seq, -1)
        if self.v_up.bias is not None:
            heads = heads + self.v_up.bias
        return self.resid_dropout(self.o_proj(heads))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, kv_latent={self.kv_latent}, "
            f"q_latent={self.q_latent}, causal={self.causal}, rope={self.rope}, rope_mode={self.rope_mode}, "
            f"bias={self.bias}"
        )
