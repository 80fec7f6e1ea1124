"""A nanoGPT-style decoder whose attention is any of MHA, GQA, MLA or Tucker Attention.

Positions enter only through RoPE inside the attention layers (``rope=True``, the default): rotary
embedding of each head's queries and keys for MHA/GQA, and the paper's latent RoPE (a rotation of the
query and key latents) for MLA and Tucker. With ``rope=False`` a learned position embedding is added
to the token embedding instead. The output projection is tied to the token embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from structlab.tucker.blocks import AttentionSpec, Block, init_attention


@dataclass
class GPTConfig:
    """The decoder's shape. ``attention`` is an :class:`AttentionSpec` or its string form (``"gqa:2"``)."""

    vocab_size: int = 84
    block_size: int = 256  # the context length trained on
    n_layer: int = 4
    d_model: int = 128
    attention: AttentionSpec | str | dict[str, Any] = field(default_factory=AttentionSpec)
    rope: bool = True
    dropout: float = 0.0
    bias: bool = False

    def __post_init__(self) -> None:
        self.attention = AttentionSpec.coerce(self.attention)
        for name in ("vocab_size", "block_size", "n_layer", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout!r}: expected in [0, 1)")


class GPT(nn.Module):
    """Token embedding, ``n_layer`` pre-norm blocks, final LayerNorm, tied output head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = None if config.rope else nn.Embedding(config.block_size, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(d, config.attention.build(d, causal=True, rope=config.rope, bias=config.bias, dropout=config.dropout),
                  bias=config.bias, dropout=config.dropout)
            for _ in range(config.n_layer)
        )
        self.ln_f = nn.LayerNorm(d, bias=config.bias)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        # GPT-2's initialisation, N(0, 0.02) with the projections that write into the residual stream scaled
        # by 1/sqrt(2 n_layer), for every attention kind alike (Tucker's factors matched to MHA's tensors).
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for module in (self.wte, self.wpe, *(block.mlp for block in self.blocks)):
            if module is not None:
                module.apply(_init_weights)
        for block in self.blocks:
            nn.init.normal_(block.mlp.proj.weight, std=residual_std)
            init_attention(block.attn, std=0.02, out_std=residual_std)

    def forward(
        self, idx: torch.Tensor, caches: list[Any] | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (batch, seq, vocab) for token ids ``idx`` (batch, seq).

        With ``caches`` (one per block, from :meth:`new_caches`) the tokens continue the cached
        sequence: each layer appends its keys/values and attends to everything cached so far.
        ``attention_mask`` (batch, cached + seq), 1 for real tokens and 0 for padding (as in Hugging Face):
        no position attends to padding, and learned positions count real tokens only, so a left-padded
        row gives the logits it gives alone (RoPE needs no shift: its scores depend on position
        differences). Raises ``ValueError`` for a mask of another shape.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx: shape {tuple(idx.shape)}; expected (batch, seq)")
        past = caches[0].length if caches else 0
        batch, seq = idx.shape
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, past + seq):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}: expected (batch, cached + seq) = "
                f"({batch}, {past + seq})"
            )
        if self.wpe is not None and past + seq > self.config.block_size:
            raise ValueError(
                f"idx: position {past + seq} exceeds block_size={self.config.block_size} (learned positions)"
            )
        x = self.wte(idx)
        if self.wpe is not None:
            if attention_mask is None:
                positions = torch.arange(past, past + seq, device=idx.device)
            else:  # the position of a token is the number of real tokens before it
                positions = (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)[:, past:]
            x = x + self.wpe(positions)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache=caches[i] if caches else None, mask=attention_mask)
        return self.lm_head(self.ln_f(x))

    def new_caches(self) -> list[Any]:
        """One empty KV cache per block, for incremental decoding."""
        return [block.attn.new_cache() for block in self.blocks]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Continue ``idx`` (batch, seq) by ``max_new_tokens`` sampled tokens; returns (batch, seq + new).

        ``temperature=0`` decodes greedily. With ``use_cache`` each new token costs one step through the
        KV caches while the sequence fits in ``block_size``; beyond it, like nanoGPT, the last
        ``block_size`` tokens are recomputed at every step. Prompts of different lengths go in one batch
        left-padded, with ``attention_mask`` (batch, seq) 0 on the padding: each row then continues as it
        would alone.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 0")
        if temperature < 0:
            raise ValueError(f"temperature={temperature}: expected >= 0")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k={top_k}: expected >= 1 or None")
        if attention_mask is not None and attention_mask.shape != idx.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}: expected the shape of idx {tuple(idx.shape)}"
            )
        was_training = self.training
        self.eval()
        caches = self.new_caches() if use_cache and idx.shape[1] <= self.config.block_size else None
        step_input = idx
        for _ in range(max_new_tokens):
            if caches is not None and idx.shape[1] <= self.config.block_size:
                logits = self(step_input, caches, attention_mask=attention_mask)[:, -1]
            else:
                caches = None
                window = attention_mask[:, -self.config.block_size :] if attention_mask is not None else None
                logits = self(idx[:, -self.config.block_size :], attention_mask=window)[:, -1]
            next_id = sample_next(logits, temperature, top_k, generator)
            idx = torch.cat([idx, next_id], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(idx.shape[0], 1)], dim=1)
            step_input = next_id
        self.train(was_training)
        return idx


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One token id per row (batch, 1) from ``logits`` (batch, vocab): greedy at temperature 0."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
