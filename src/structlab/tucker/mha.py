"""Multi-head attention (Vaswani et al.) and grouped-query attention (Ainslie et al.), batch-first.

Per head i the layer computes softmax(X W_i^Q (X W_i^K)^T / sqrt(d_H)) X W_i^V W_i^O. Grouped-query
attention shares each key/value head among ``n_heads / n_kv_heads`` query heads; multi-head attention
is the case ``n_kv_heads = n_heads``. Weights follow ``nn.Linear``: ``q_proj.weight`` is (n_H d_H, d),
and W_i^Q (d x d_H) is the transpose of its rows ``i d_H .. (i+1) d_H``.
"""

from __future__ import annotations

from torch import Tensor, nn

from structlab.tucker.attention import attend, attention_mask, check_input, check_options, head_dim, positive_int
from structlab.tucker.cache import KVCache
from structlab.tucker.rope import Rotary, rotary_frequencies, rotary_table, rotate


class GroupedQueryAttention(nn.Module):
    """Grouped-query attention: ``n_heads`` query heads over ``n_kv_heads`` key/value heads.

    Args:
        d_model: model width d.
        n_heads: query heads n_H (d must be divisible by it; d_H = d / n_H).
        n_kv_heads: key/value heads n_KV (must divide n_H).
        causal: mask future positions.
        rope: rotary position embedding on each head's queries and keys (d_H must be even).
        bias: biases on the four projections.
        dropout: dropout probability on the attention weights and on the output (training only).
        rope_base: RoPE's base.

    ``forward(x, cache=None, mask=None, rotary=None)``: x (batch, seq, d) -> (batch, seq, d). With a cache
    from ``new_cache()`` the layer appends its keys and values (each (batch, n_KV, seq, d_H)) and attends
    over all cached positions; RoPE positions continue from ``cache.length``. ``mask``: a padding mask
    (batch, cached + seq) or a full mask (batch, 1, seq, cached + seq), True where attention is allowed
    (see :func:`~structlab.tucker.attention.attention_mask`). ``rotary``: (cos, sin) of shape
    ([batch,] seq, d_H / 2) to use instead of the layer's own RoPE angles (a host model's table).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        *,
        causal: bool = True,
        rope: bool = False,
        bias: bool = False,
        dropout: float = 0.0,
        rope_base: float = 10000.0,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim(d_model, n_heads)
        positive_int("n_kv_heads", n_kv_heads)
        if n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}: expected a divisor")
        check_options(dropout=dropout, rope_base=rope_base)
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.causal, self.rope, self.bias, self.dropout, self.rope_base = causal, rope, bias, dropout, rope_base
        kv_width = n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_width, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_width, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.register_buffer(
            "rope_frequencies", rotary_frequencies(self.head_dim, rope_base) if rope else None, persistent=False
        )

    def new_cache(self) -> KVCache:
        """An empty cache of keys ``k`` and values ``v`` for incremental decoding."""
        return KVCache(self.cache_shapes)

    @property
    def cache_shapes(self) -> dict[str, tuple[int, int]]:
        """(heads, dim) of each cached tensor."""
        return {"k": (self.n_kv_heads, self.head_dim), "v": (self.n_kv_heads, self.head_dim)}

    def forward(
        self, x: Tensor, cache: KVCache | None = None, mask: Tensor | None = None, rotary: Rotary | None = None
    ) -> Tensor:
        past = check_input(x, self.d_model, cache, self.cache_shapes)
        batch, seq, _ = x.shape
        mask = attention_mask(mask, batch, seq, past)
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.rope:
            angles = rotary_table(rotary, self.rope_frequencies, past, seq, q)
            q, k = rotate(q, *angles), rotate(k, *angles)
        if cache is not None:
            k, v = cache.append(k=k, v=v).values()
        y = attend(
            q, k, v, causal=self.causal, past=past, scale=self.head_dim**-0.5,
            dropout=self.dropout if self.training else 0.0, mask=mask,
        )
        return self.resid_dropout(self.o_proj(y.transpose(1, 2).reshape(batch, seq, self.d_model)))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"causal={self.causal}, rope={self.rope}, bias={self.bias}"
        )


class MultiHeadAttention(GroupedQueryAttention):
    """Multi-head attention: grouped-query attention with one key/value head per query head.

    Takes the same keyword arguments as :class:`GroupedQueryAttention`; caches 2 N d numbers per layer.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        causal: bool = True,
        rope: bool = False,
        bias: bool = False,
        dropout: float = 0.0,
        rope_base: float = 10000.0,
    ) -> None:
        super().__init__(
            d_model, n_heads, n_heads, causal=causal, rope=rope, bias=bias, dropout=dropout, rope_base=rope_base
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, causal={self.causal}, rope={self.rope}, "
            f"bias={self.bias}"
        )
