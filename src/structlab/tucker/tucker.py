"""Tucker Attention (arXiv 2603.30033): both attention tensors of a layer in Tucker form.

Per head i of multi-head attention, W_i = W_i^Q W_i^K^T and W~_i = W_i^V W_i^O are d x d matrices;
stacked over heads they form the query-key tensor W_qk (head, query, key) and the value-output tensor
W_vo (head, output, value) with W_vo[i] = W~_i^T. Tucker Attention writes each as a Tucker product

    W_qk = core   x_1 U_head   x_2 U_q x_3 U_k      core (r1, r2, r3), U_head (n_H, r1), U_q, U_k (d, r2|r3)
    W_vo = core_v x_1 U_head_v x_2 U_o x_3 U_v      core_v (v1, v2, v3), U_head_v (n_H, v1), U_o, U_v (d, v2|v3)

with 2 (r1 r2 r3 + n_H r1 + d r2 + d r3) parameters when both sides share their ranks.

The layer never forms these tensors. With B_i = core x_1 U_head[i] (r2 x r3), the scores of head i are
X U_q B_i (X U_k)^T, so the per-head queries Q_i = X U_q B_i live in the r3-dim key latent and
K = X U_k is ONE key shared by every head; likewise V = X U_v is one value, and head i's output
A_i V C_i^T U_o^T with C_i = core_v x_1 U_head_v[i] (v2 x v3). The layer is multi-query attention in
the latent spaces: ``F.scaled_dot_product_attention`` with the scale 1/sqrt(d_H) of the equivalent MHA
layer passed explicitly (the latent size r3 is not a head size), and a KV cache of r3 + v3 numbers
per token (r3 with ``shared_latent``, where keys and values are the same latent X U_k).

Latent RoPE rotates the r3-dim queries Q_i and the key latent K, so scores depend only on position
differences and the cache stays r3-dimensional.

Biases (``bias=True``) sit on the latents, as MHA's sit on its projections: Q_i = X U_q B_i +
``query_bias[i]`` (n_H, r3), K = X U_k + ``key_bias`` (r3), V = X U_v + ``value_bias`` (v3; with a shared
latent V = K), and ``output_bias`` (d). Without RoPE only the query bias changes the attention weights
(it adds b_i K^T to head i's scores; the key bias shifts all scores of a row equally, which softmax
ignores) and the value bias is an output bias (rows of softmax sum to one); with RoPE the key bias is
rotated with its position and does matter. ``to_tucker`` carries the biases of MHA, GQA and MLA over
exactly; ``compress`` keeps the query bias's effect on the scores (projected on the new key latent)
and folds the value bias into the output bias.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structlab.tucker.attention import attend, attention_mask, check_input, check_options, head_dim, positive_int
from structlab.tucker.cache import KVCache
from structlab.tucker.rope import (
    Rotary,
    RotaryTurns,
    apply_rotary,
    rotary_frequencies,
    rotary_table,
    rotate,
    rotate_pairs,
)

Ranks = tuple[int, int, int]


def rank_sequence(ranks: object) -> object:
    """``ranks`` with NumPy arrays in it turned into lists, so that ranks read from an array count."""
    if isinstance(ranks, np.ndarray):
        return ranks.tolist()
    if isinstance(ranks, (tuple, list)):
        return type(ranks)(rank_sequence(r) for r in ranks)
    return ranks


def check_ranks(name: str, ranks: object, n_heads: int, d_model: int) -> Ranks:
    """``ranks`` as a triple of Python ints (head, query|output, key|value), each between 1 and its mode's size.

    Takes a tuple, a list or a NumPy array of any integer type.
    """
    ranks = rank_sequence(ranks)
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 3:
        raise TypeError(f"{name}={ranks!r}: expected a triple of ints (r1, r2, r3)")
    checked = []
    for rank, mode, size in zip(ranks, ("head", "second", "third"), (n_heads, d_model, d_model), strict=True):
        rank = positive_int(f"{name} ({mode} mode)", rank)
        if rank > size:
            raise ValueError(
                f"{name}={tuple(int(r) for r in ranks)}: the {mode}-mode rank {rank} exceeds that mode's size "
                f"{size} (the modes have sizes (n_heads, d_model, d_model) = {(n_heads, d_model, d_model)})"
            )
        checked.append(rank)
    return (checked[0], checked[1], checked[2])


def _empty_stored(shape: tuple[int, ...], order: tuple[int, ...]) -> Tensor:
    """An uninitialised tensor of ``shape`` laid out in memory with its dimensions in ``order`` (outermost
    first): only the memory order differs, shapes, state dicts and checkpoints are as if it were contiguous.

    Every factor is stored as the matrix a token is multiplied by, with its longer side innermost:
    U_q, U_k, U_v and U_o as (r, d), the core as r2 x (r1 r3), core_v as v2 x (v1 v3). Each product of
    a decoding step is then one matrix-vector product over rows of kilobytes, which BLAS streams fastest
    (rows of 0.5 KB ran 1.3-1.7x slower from memory on one CPU thread), and no core is ever permuted
    into a copy (the forward pass gains that too).
    """
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return torch.empty([shape[i] for i in order]).permute(inverse)


class TuckerAttention(nn.Module):
    """Tucker Attention with query-key ranks ``ranks`` and value-output ranks ``value_ranks``.

    Args:
        d_model: model width d.
        n_heads: heads n_H; d_H = d / n_H sets the score scale 1/sqrt(d_H).
        ranks: (r1, r2, r3) of W_qk in mode order (head, query, key); r3 is the key latent size.
        value_ranks: (v1, v2, v3) of W_vo in mode order (head, output, value); default ``ranks``.
            v3 is the value latent size.
        causal, bias, dropout, rope_base: as in :class:`~structlab.tucker.MultiHeadAttention`.
        rope: latent RoPE on the r3-dim query and key latents (r3 must be even).
        shared_latent: keys and values are one latent X U_k (needs v3 = r3): U_v is U_k, and the cache
            holds r3 numbers per token.
        rope_frequencies: RoPE angle per latent pair, shape (r3/2,); default
            ``rotary_frequencies(r3, rope_base)``. :func:`~structlab.tucker.to_tucker` sets it to carry a
            per-head RoPE over exactly.

    ``forward(x, cache=None, mask=None, rotary=None)``: x (batch, seq, d) -> (batch, seq, d); the cache
    holds ``k`` and ``v`` (batch, 1, N, r3 | v3), or ``kv`` (batch, 1, N, r3, unrotated) with a shared
    latent. ``mask`` as in :class:`~structlab.tucker.GroupedQueryAttention`; ``rotary``: (cos, sin) of
    shape ([batch,] seq, r3 / 2) replacing the latent RoPE's own angles, one per latent pair (not with a
    shared latent, whose cached keys are rotated again at every step).

    Raises ``ValueError`` for a rank larger than its mode, an odd r3 with RoPE, a shared latent with
    v3 != r3, or d not divisible by n_H.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ranks: Ranks,
        value_ranks: Ranks | None = None,
        *,
        causal: bool = True,
        rope: bool = False,
        bias: bool = False,
        dropout: float = 0.0,
        rope_base: float = 10000.0,
        shared_latent: bool = False,
        rope_frequencies: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim(d_model, n_heads)
        self.ranks = check_ranks("ranks", ranks, n_heads, d_model)
        self.value_ranks = check_ranks("value_ranks", value_ranks if value_ranks is not None else ranks,
                                       n_heads, d_model)
        check_options(dropout=dropout, rope_base=rope_base)
        r1, r2, r3 = self.ranks
        v1, v2, v3 = self.value_ranks
        if shared_latent and v3 != r3:
            raise ValueError(
                f"shared_latent=True needs the value rank v3 equal to the key rank r3; got value_ranks="
                f"{self.value_ranks}, ranks={self.ranks}"
            )
        if rope and r3 % 2:
            raise ValueError(f"ranks={self.ranks}: latent RoPE rotates pairs, expected an even key rank r3")
        if rope_frequencies is not None and (not rope or tuple(rope_frequencies.shape) != (r3 // 2,)):
            raise ValueError(
                f"rope_frequencies of shape {tuple(rope_frequencies.shape)}: expected shape ({r3 // 2},) "
                "with rope=True"
            )
        self.d_model, self.n_heads = d_model, n_heads
        self.causal, self.rope, self.bias, self.dropout, self.rope_base = causal, rope, bias, dropout, rope_base
        self.shared_latent = shared_latent
        # Shapes as written; memory layouts chosen for the products a token goes through (_empty_stored).
        self.core = nn.Parameter(_empty_stored((r1, r2, r3), (1, 0, 2)))
        self.U_head = nn.Parameter(torch.empty(n_heads, r1))
        self.U_q = nn.Parameter(_empty_stored((d_model, r2), (1, 0)))
        self.U_k = nn.Parameter(_empty_stored((d_model, r3), (1, 0)))
        self.core_v = nn.Parameter(_empty_stored((v1, v2, v3), (1, 0, 2)))
        self.U_head_v = nn.Parameter(torch.empty(n_heads, v1))
        self.U_o = nn.Parameter(_empty_stored((d_model, v2), (1, 0)))
        self.U_v = None if shared_latent else nn.Parameter(_empty_stored((d_model, v3), (1, 0)))
        self.query_bias = nn.Parameter(torch.zeros(n_heads, r3)) if bias else None
        self.key_bias = nn.Parameter(torch.zeros(r3)) if bias else None
        self.value_bias = nn.Parameter(torch.zeros(v3)) if bias and not shared_latent else None
        self.output_bias = nn.Parameter(torch.zeros(d_model)) if bias else None
        self.resid_dropout = nn.Dropout(dropout)
        if rope:
            frequencies = rotary_frequencies(r3, rope_base) if rope_frequencies is None else rope_frequencies
            self.register_buffer("rope_frequencies", frequencies.to(torch.float64))
        else:
            self.rope_frequencies = None
        # Decoding looks each position's rotation up (queries carry the score scale): see _decode_token.
        self._query_turns, self._key_turns = RotaryTurns(self.head_dim**-0.5), RotaryTurns()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random factors scaled so that latents, queries and the output have about unit variance.

        Factor matrices ~ N(0, 1/fan_in) (fan_in = d for U_q, U_k, U_v; v2 for U_o; r1 or v1 for the
        head factors), cores ~ N(0, 1/r2) and N(0, 1/(n_H v3)); biases zero.
        """
        r1, r2, _ = self.ranks
        v1, v2, v3 = self.value_ranks
        d = self.d_model
        with torch.no_grad():
            self.U_q.normal_(0.0, d**-0.5)
            self.U_k.normal_(0.0, d**-0.5)
            self.U_head.normal_(0.0, r1**-0.5)
            self.core.normal_(0.0, r2**-0.5)
            if self.U_v is not None:
                self.U_v.normal_(0.0, d**-0.5)
            self.U_head_v.normal_(0.0, v1**-0.5)
            self.core_v.normal_(0.0, (self.n_heads * v3) ** -0.5)
            self.U_o.normal_(0.0, v2**-0.5)
            for b in (self.query_bias, self.key_bias, self.value_bias, self.output_bias):
                if b is not None:
                    b.zero_()

    @property
    def value_factor(self) -> Tensor:
        """U_v (d, v3): U_k itself with a shared latent."""
        return self.U_k if self.U_v is None else self.U_v

    @property
    def cache_shapes(self) -> dict[str, tuple[int, int]]:
        """(heads, dim) of each cached tensor: one head, the latent sizes."""
        if self.shared_latent:
            return {"kv": (1, self.ranks[2])}
        return {"k": (1, self.ranks[2]), "v": (1, self.value_ranks[2])}

    def new_cache(self) -> KVCache:
        """An empty cache of the key and value latents (one latent ``kv`` when shared)."""
        return KVCache(self.cache_shapes)

    def query_cores(self) -> Tensor:
        """B_i = core x_1 U_head[i] for every head: (n_H, r2, r3)."""
        return torch.einsum("ia,abc->ibc", self.U_head, self.core)

    def value_cores(self) -> Tensor:
        """C_i = core_v x_1 U_head_v[i] for every head: (n_H, v2, v3); W_vo[i] = U_o C_i U_v^T."""
        return torch.einsum("ia,abc->ibc", self.U_head_v, self.core_v)

    def _core_matrix(self) -> Tensor:
        """core as the r2 x (r1 r3) matrix M[b, (a, c)] = core[a, b, c]: a view in the stored layout."""
        r1, r2, r3 = self.ranks
        return self.core.transpose(0, 1).reshape(r2, r1 * r3)

    def _value_core_matrix(self) -> Tensor:
        """core_v as the v2 x (v1 v3) matrix M[o, (a, s)] = core_v[a, o, s]: a view in the stored layout."""
        v1, v2, v3 = self.value_ranks
        return self.core_v.transpose(0, 1).reshape(v2, v1 * v3)

    def forward(
        self, x: Tensor, cache: KVCache | None = None, mask: Tensor | None = None, rotary: Rotary | None = None
    ) -> Tensor:
        past = check_input(x, self.d_model, cache, self.cache_shapes)
        batch, seq, _ = x.shape
        # the decode fast path serves the plain case: no mask, the layer's own RoPE
        if seq == 1 and cache is not None and mask is None and rotary is None and self._decodes_fast(x):
            return self._decode_token(x, cache, past)
        mask = attention_mask(mask, batch, seq, past)
        if rotary is not None and (not self.rope or self.shared_latent):
            raise ValueError("rotary: a caller's RoPE table needs rope=True and separate key and value latents")
        r1, r2, r3 = self.ranks
        v1, v2, v3 = self.value_ranks
        # Q_i = X U_q B_i with B_i = core x_1 U_head[i], evaluated in core coordinates: P = (X U_q) x_2 core,
        # (B N, r1, r3), then Q_i = sum_a U_head[i, a] P_a. Per token that is r1 r2 r3 + n_H r1 r3
        # multiplications instead of n_H r2 r3, and no per-head matrix is formed.
        p = (x @ self.U_q) @ self._core_matrix()
        p = p.view(batch * seq, r1, r3).transpose(0, 1).reshape(r1, batch * seq * r3)
        q = (self.U_head @ p).view(self.n_heads, batch, seq, r3).transpose(0, 1)  # (B, n_H, N, r3)
        if self.query_bias is not None:
            q = q + self.query_bias[:, None, :]
        k = x @ self.U_k  # one key latent for all heads
        if self.key_bias is not None:
            k = k + self.key_bias
        k = k.unsqueeze(1)  # (B, 1, N, r3)
        if self.rope:
            angles = rotary_table(rotary, self.rope_frequencies, past, seq, q)
            q = rotate(q, *angles)
        if self.shared_latent:
            if cache is not None:
                (k,) = cache.append(kv=k).values()
            v = k
            if self.rope:  # rotate the keys only; the cached latent stays unrotated for the values
                k = apply_rotary(k, self.rope_frequencies, 0)
        else:
            v = x @ self.U_v
            if self.value_bias is not None:
                v = v + self.value_bias
            v = v.unsqueeze(1)  # (B, 1, N, v3)
            if self.rope:
                k = rotate(k, *angles)
            if cache is not None:
                k, v = cache.append(k=k, v=v).values()
        y = attend(
            q, k, v, causal=self.causal, past=past, scale=self.head_dim**-0.5,
            dropout=self.dropout if self.training else 0.0, mask=mask,
        )  # A_i V: (B, n_H, N, v3)
        # sum_i A_i V C_i^T U_o^T with C_i = core_v x_1 U_head_v[i], in core coordinates as well:
        # Z_a = sum_i U_head_v[i, a] A_i V, then sum_a Z_a core_v[a]^T, then U_o^T.
        z = self.U_head_v.T @ y.transpose(0, 1).reshape(self.n_heads, batch * seq * v3)
        z = z.view(v1, batch, seq, v3).permute(1, 2, 0, 3).reshape(batch, seq, v1 * v3)
        out = (z @ self._value_core_matrix().T) @ self.U_o.T
        if self.output_bias is not None:
            out = out + self.output_bias
        return self.resid_dropout(out)

    def _decodes_fast(self, x: Tensor) -> bool:
        """Whether :meth:`_decode_token` computes this step: without gradients (it writes into the cache
        in place), with no dropout to apply, and with RoPE's rotation as a complex product (float32 or
        float64) on keys that are cached rotated (not with a shared latent)."""
        if torch.is_grad_enabled() or (self.training and self.dropout > 0):
            return False
        return not self.rope or (not self.shared_latent and x.dtype in (torch.float32, torch.float64))

    def _decode_token(self, x: Tensor, cache: KVCache, past: int) -> Tensor:
        """One new position per sequence after ``past`` cached ones: the decoding step, written for its cost.

        A decoding step reads every factor and the cached latents once; at these sizes each tensor
        operation also costs a few microseconds of dispatch, as much as reading a factor. So the step
        reads each factor once, in its stored layout (:func:`_empty_stored`: every product is one
        matrix-vector product, no core is permuted into a copy), computes the new key and value latents
        straight into the cache (:meth:`KVCache.extend`) and rotates the key there, applies RoPE and the
        score scale as one complex product per position (:class:`RotaryTurns`), and runs the attention as
        two products and a softmax (one query row needs no mask; SDPA's kernel is no faster for it).
        Queries in core coordinates as in :meth:`forward`: P_a = (x U_q) core[a], Q = U_head P; output
        sum_a (sum_i U_head_v[i, a] A_i V) core_v[a]^T U_o^T. Equal to the general path to rounding
        (tested against full recomputation).
        """
        batch = x.shape[0]
        r1, _, r3 = self.ranks
        v1, _, v3 = self.value_ranks
        x = x.reshape(batch, self.d_model)
        filled = cache.extend(batch, 1, x)  # (B, 1, past + 1, r3 | v3); position `past` is written here
        keys = filled[0]
        values = keys if self.shared_latent else filled[1]
        k = torch.matmul(x, self.U_k, out=keys[:, 0, past])
        if self.key_bias is not None:
            k.add_(self.key_bias)
        if self.rope:
            torch.view_as_complex(k.unflatten(-1, (-1, 2))).mul_(self._key_turns.row(self.rope_frequencies, past, k))
        if not self.shared_latent:
            v = torch.matmul(x, self.U_v, out=values[:, 0, past])
            if self.value_bias is not None:
                v.add_(self.value_bias)
        p = ((x @ self.U_q) @ self._core_matrix()).view(batch, r1, r3)  # P_a = (x U_q) core[a]
        q = torch.bmm(self.U_head.expand(batch, -1, -1), p)  # (B, n_H, r3): Q_i = sum_a U_head[i, a] P_a
        if self.query_bias is not None:
            q = q + self.query_bias
        if self.rope:  # the score scale rides on the queries' rotation
            q = rotate_pairs(q, self._query_turns.row(self.rope_frequencies, past, q))
        else:
            q = q * self.head_dim**-0.5
        # (B, 1, n_H, r3) x (B, 1, r3, T): every head against the one latent key of each position.
        scores = torch.matmul(q.unsqueeze(1), keys.transpose(-1, -2))
        y = torch.matmul(torch.softmax(scores, dim=-1), values).view(batch, self.n_heads, v3)  # A_i V
        z = torch.bmm(self.U_head_v.T.expand(batch, -1, -1), y).view(batch, v1 * v3)  # sum_i U_head_v[i, a] A_i V
        out = F.linear(F.linear(z, self._value_core_matrix()), self.U_o)  # sum_a Z_a core_v[a]^T U_o^T
        if self.output_bias is not None:
            out = out + self.output_bias
        return out.view(batch, 1, self.d_model)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, ranks={self.ranks}, value_ranks={self.value_ranks}, "
            f"causal={self.causal}, rope={self.rope}, bias={self.bias}, shared_latent={self.shared_latent}"
        )

