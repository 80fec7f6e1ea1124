"""The transformer block shared by the GPT and the ViT, and :class:`AttentionSpec`, which names one of the
four attention layers (MHA, GQA, MLA, Tucker) with its sizes so that any model takes any of them.

A spec is written ``kind[:sizes]`` on the command line and in study tables:

========================  ==========================================================
``mha``                   multi-head attention
``gqa:2``                 grouped-query attention with 2 key/value heads
``mla:32`` / ``mla:32,64`` multi-head latent attention, KV latent 32 (query latent 64)
``tucker:4,32,16``        Tucker Attention, ranks (r1, r2, r3) on both sides
``tucker:4,32,16/2,32,16`` query-key ranks / value-output ranks
========================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ATTENTION_KINDS: tuple[str, ...] = ("mha", "gqa", "mla", "tucker")


@dataclass(frozen=True)
class AttentionSpec:
    """Which attention layer, with how many heads and which sizes (only those of its kind may be set)."""

    kind: str = "mha"
    n_heads: int = 4
    n_kv_heads: int | None = None  # gqa
    kv_latent: int | None = None  # mla: d_c
    q_latent: int | None = None  # mla: d_cq (None: full-rank queries)
    ranks: tuple[int, int, int] | None = None  # tucker: (r1, r2, r3) of the query-key tensor
    value_ranks: tuple[int, int, int] | None = None  # tucker: of the value-output tensor (default: ranks)

    def __post_init__(self) -> None:
        if self.kind not in ATTENTION_KINDS:
            raise ValueError(f"attention kind={self.kind!r}: expected one of {ATTENTION_KINDS}")
        if not isinstance(self.n_heads, int) or self.n_heads < 1:
            raise ValueError(f"n_heads={self.n_heads!r}: expected a positive int")
        for name in ("ranks", "value_ranks"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(r) for r in value))
        needed = {"gqa": ("n_kv_heads",), "mla": ("kv_latent",), "tucker": ("ranks",)}.get(self.kind, ())
        allowed = {"gqa": ("n_kv_heads",), "mla": ("kv_latent", "q_latent"), "tucker": ("ranks", "value_ranks")}
        for name in ("n_kv_heads", "kv_latent", "q_latent", "ranks", "value_ranks"):
            if name in needed and getattr(self, name) is None:
                raise ValueError(f"{name}=None: {self.kind} attention needs it")
            if name not in allowed.get(self.kind, ()) and getattr(self, name) is not None:
                raise ValueError(f"{name}={getattr(self, name)!r}: not an argument of {self.kind} attention")

    @classmethod
    def parse(cls, text: str, n_heads: int = 4) -> AttentionSpec:
        """The spec written ``kind[:sizes]`` (see the module docstring), e.g. ``"tucker:4,32,16"``."""
        if not isinstance(text, str):
            raise TypeError(f"attention={text!r}: expected a string such as 'gqa:2' or 'tucker:4,32,16'")
        kind, _, sizes = text.strip().partition(":")
        try:
            if kind == "mha" and not sizes:
                return cls("mha", n_heads)
            if kind == "gqa":
                return cls("gqa", n_heads, n_kv_heads=int(sizes))
            if kind == "mla":
                latents = [int(s) for s in sizes.split(",")]
                if len(latents) in (1, 2):
                    return cls("mla", n_heads, kv_latent=latents[0], q_latent=latents[1] if len(latents) == 2 else None)
            if kind == "tucker":
                sides = [tuple(int(r) for r in side.split(",")) for side in sizes.split("/")]
                if len(sides) in (1, 2) and all(len(s) == 3 for s in sides):
                    return cls("tucker", n_heads, ranks=sides[0], value_ranks=sides[1] if len(sides) == 2 else None)
        except ValueError as err:
            if "invalid literal" not in str(err):
                raise
        raise ValueError(
            f"attention={text!r}: expected mha, gqa:N_KV, mla:D_C[,D_CQ], tucker:R1,R2,R3[/V1,V2,V3]"
        )

    @classmethod
    def coerce(cls, value: AttentionSpec | str | dict[str, Any], n_heads: int = 4) -> AttentionSpec:
        """A spec from a spec, its string form, or its dict form (as stored in checkpoints)."""
        if isinstance(value, AttentionSpec):
            return value
        if isinstance(value, str):
            return cls.parse(value, n_heads)
        if isinstance(value, dict):
            return cls(**value)
        raise TypeError(f"attention={value!r}: expected an AttentionSpec, a string such as 'gqa:2' or a dict")

    @property
    def label(self) -> str:
        """The spec's string form (``parse(spec.label) == spec`` for the same ``n_heads``)."""
        if self.kind == "gqa":
            return f"gqa:{self.n_kv_heads}"
        if self.kind == "mla":
            return f"mla:{self.kv_latent}" + (f",{self.q_latent}" if self.q_latent is not None else "")
        if self.kind == "tucker":
            text = "tucker:" + ",".join(map(str, self.ranks))
            return text + ("/" + ",".join(map(str, self.value_ranks)) if self.value_ranks else "")
        return "mha"

    def build(self, d_model: int, *, causal: bool, rope: bool, bias: bool = False, dropout: float = 0.0) -> nn.Module:
        """The attention module (from :mod:`structlab.tucker`) this spec names, at width ``d_model``."""
        from structlab.tucker import (
            GroupedQueryAttention,
            MultiHeadAttention,
            MultiHeadLatentAttention,
            TuckerAttention,
        )

        options = {"causal": causal, "rope": rope, "bias": bias, "dropout": dropout}
        if self.kind == "mha":
            return MultiHeadAttention(d_model, self.n_heads, **options)
        if self.kind == "gqa":
            return GroupedQueryAttention(d_model, self.n_heads, self.n_kv_heads, **options)
        if self.kind == "mla":
            return MultiHeadLatentAttention(d_model, self.n_heads, self.kv_latent, self.q_latent, **options)
        return TuckerAttention(d_model, self.n_heads, self.ranks, self.value_ranks, **options)


class MLP(nn.Module):
    """The position-wise feed-forward layer: d -> 4d -> d with GELU."""

    def __init__(self, d_model: int, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model, bias=bias)
        self.proj = nn.Linear(4 * d_model, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(nn.functional.gelu(self.fc(x))))


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, attention: nn.Module, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = attention
        self.ln_2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = MLP(d_model, bias, dropout)

    def forward(self, x: torch.Tensor, cache: Any = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache=cache, mask=mask)
        return x + self.mlp(self.ln_2(x))


@torch.no_grad()
def init_attention(attention: nn.Module, std: float = 0.02, out_std: float = 0.02) -> None:
    """GPT-2's initialisation for any attention kind: weights ~ N(0, std), the output map ~ N(0, out_std).

    MHA, GQA and MLA are stacks of ``nn.Linear`` and take it as written. For Tucker Attention the
    factors that act on the model width (U_q, U_k, U_v) take ``std`` and U_o ``out_std``; the head
    factors take 1/sqrt(rank) and the cores sqrt(d_H / (r2 r3)), so that every entry of W_qk and
    W_vo has the variance it has in the GPT-2-initialised MHA layer (d_H std^4 and d_H std^2 out_std^2).
    """
    from structlab.tucker import TuckerAttention

    if isinstance(attention, TuckerAttention):
        (r1, r2, r3), (v1, v2, v3) = attention.ranks, attention.value_ranks
        d_h = attention.head_dim
        for factor in (attention.U_q, attention.U_k, attention.value_factor):
            factor.normal_(0.0, std)
        attention.U_o.normal_(0.0, out_std)
        attention.U_head.normal_(0.0, r1**-0.5)
        attention.U_head_v.normal_(0.0, v1**-0.5)
        attention.core.normal_(0.0, (d_h / (r2 * r3)) ** 0.5)
        attention.core_v.normal_(0.0, (d_h / (v2 * v3)) ** 0.5)
        for bias in (attention.query_bias, attention.key_bias, attention.value_bias, attention.output_bias):
            if bias is not None:
                bias.zero_()
        return
    for module in attention.modules():
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
    attention.o_proj.weight.normal_(0.0, out_std)
