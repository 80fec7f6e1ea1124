"""The Patched Brain Transformer (PBT; Klein et al. 2025), the patched transformer of arXiv 2510.08059.

Written from the authors' code (github.com/timonkl/PatchedBrainTransformer: ``model.py`` and the
tokenising data set in ``utils.py``) with braindecode's conventions (braindecode ``PBT``):

* **tokens**: each channel's centre ``n_tokens * patch_size`` samples are cut into ``n_tokens``
  non-overlapping patches of ``patch_size`` samples; a patch is one token (``n_chans * n_tokens`` tokens);
* **embedding**: a bias-free linear projection of every patch to ``d_model``, a classification token in
  front, and a learned positional embedding per (channel, patch) position: position ``1 + c n_tokens + j``
  for patch ``j`` of channel ``c``, position 0 for the classification token;
* **encoder**: ``n_blocks`` pre-norm blocks, ``x + MHSA(LN(x))`` then ``x + FF(LN(x))``, with the attention's
  query/key/value as one ``nn.Linear(d_model, 3 d_model)`` and a feed-forward of width ``4 d_model`` with
  GELU; no biases and bias-free layer norms (``bias_transformer=False``), GPT-2 initialisation;
* **head**: a linear layer on the classification token.

Every projection is an ``nn.Linear`` (not ``nn.MultiheadAttention``), so each one can be
subject-conditioned. Where braindecode's port differs: its positional index of a patch is the index of the
patch's first sample modulo ``n_tokens``, which gives every patch of a channel the same position (the
authors' data set numbers the patches, as here), and it cuts longer trials into windows whose CLS outputs
it averages (the authors' code crops one window: the centre one at test time, as here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BiasFreeLayerNorm(nn.Module):
    """Layer norm with a learned scale and, with ``bias=True``, a learned shift (Ba et al. 2016)."""

    def __init__(self, d_model: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, eps=1e-5)


class SelfAttention(nn.Module):
    """Multi-head self-attention with the query, key and value projections in one Linear (as in nanoGPT)."""

    def __init__(self, d_model: int, n_heads: int, bias: bool, drop_prob: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads}: expected a divisor of d_model={d_model}")
        self.attn = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(drop_prob)
        self.n_heads = n_heads
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        q, k, v = (z.reshape(b, t, self.n_heads, -1).transpose(1, 2) for z in self.attn(x).chunk(3, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.drop_prob if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, t, -1)))


class FeedForward(nn.Module):
    """``Linear(d, 4d) -> GELU -> dropout -> Linear(4d, d) -> dropout``."""

    def __init__(self, d_model: int, bias: bool, drop_prob: float) -> None:
        super().__init__()
        self.proj_in = nn.Linear(d_model, 4 * d_model, bias=bias)
        self.proj = nn.Linear(4 * d_model, d_model, bias=bias)
        self.dropout_in = nn.Dropout(drop_prob)
        self.dropout = nn.Dropout(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.dropout_in(F.gelu(self.proj_in(x)))))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + MHSA(LN(x))``, then ``x + FF(LN(x))`` (Vaswani et al. 2017)."""

    def __init__(self, d_model: int, n_heads: int, bias: bool, drop_prob: float) -> None:
        super().__init__()
        self.layer_norm_att = BiasFreeLayerNorm(d_model, bias)
        self.mhsa = SelfAttention(d_model, n_heads, bias, drop_prob)
        self.layer_norm_ff = BiasFreeLayerNorm(d_model, bias)
        self.feed_forward = FeedForward(d_model, bias, drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mhsa(self.layer_norm_att(x))
        return x + self.feed_forward(self.layer_norm_ff(x))


class Encoder(nn.Module):
    """``n_blocks`` encoder blocks in sequence."""

    def __init__(self, n_blocks: int, d_model: int, n_heads: int, bias: bool, drop_prob: float) -> None:
        super().__init__()
        self.encoder_block = nn.ModuleList(EncoderBlock(d_model, n_heads, bias, drop_prob) for _ in range(n_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.encoder_block:
            x = block(x)
        return x


class PatchedBrainTransformer(nn.Module):
    """PBT: per-channel patches as tokens, a pre-norm transformer encoder, a head on the classification token.

    Args:
        n_chans, n_outputs, n_times: input ``(batch, n_chans, n_times)``, output ``(batch, n_outputs)``.
        patch_size: samples per token (the authors' ``d_input``, 64).
        n_tokens: tokens per channel (the authors' ``num_tokens_per_channel``, 8); the model reads the
            centre ``n_tokens * patch_size`` samples of each trial.
        d_model, n_blocks, n_heads, drop_prob: the encoder (128, 4, 4, 0.1 as in braindecode's ``PBT``).
        learnable_cls: a learned classification token (braindecode's default); ``False`` is the authors'
            default, a zero patch whose embedding is its positional embedding alone.
        bias_transformer: biases in the encoder's linear layers and layer norms.

    Raises:
        ValueError: ``n_times`` shorter than ``n_tokens * patch_size``, or a non-positive size.
    """

    def __init__(
        self,
        n_chans: int,
        n_outputs: int,
        n_times: int,
        patch_size: int = 64,
        n_tokens: int = 8,
        d_model: int = 128,
        n_blocks: int = 4,
        n_heads: int = 4,
        drop_prob: float = 0.1,
        learnable_cls: bool = True,
        bias_transformer: bool = False,
    ) -> None:
        super().__init__()
        for name, value, minimum in (("n_chans", n_chans, 1), ("n_outputs", n_outputs, 2), ("n_times", n_times, 1),
                                     ("patch_size", patch_size, 1), ("n_tokens", n_tokens, 1),
                                     ("d_model", d_model, 1), ("n_blocks", n_blocks, 1), ("n_heads", n_heads, 1)):
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}={value!r}: expected an int >= {minimum}")
        if n_times < n_tokens * patch_size:
            raise ValueError(
                f"n_times={n_times}: expected at least n_tokens * patch_size = {n_tokens * patch_size} samples "
                "(use fewer or shorter patches)"
            )
        self.n_chans, self.n_times, self.patch_size, self.n_tokens = n_chans, n_times, patch_size, n_tokens
        start = (n_times - n_tokens * patch_size) // 2
        self.crop = (start, start + n_tokens * patch_size)  # the centre window, as the authors' test-time crop
        self.linear_projection = nn.Linear(patch_size, d_model, bias=False)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d_model) * 0.002) if learnable_cls else None
        self.pos_embedding = nn.Embedding(n_chans * n_tokens + 1, d_model)
        self.transformer_encoder = Encoder(n_blocks, d_model, n_heads, bias_transformer, drop_prob)
        self.final_layer = nn.Linear(d_model, n_outputs)
        # Position 0 is the classification token; patch j of channel c is at 1 + c * n_tokens + j.
        self.register_buffer("positions", torch.arange(n_chans * n_tokens + 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # As the authors' code ends up: N(0, 0.02) for every linear layer (its encoder's GPT-2 scaling of the
        # residual projections is overwritten by the model-wide initialisation that follows it), zero biases,
        # N(0, 0.002) for the positional embedding.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.pos_embedding.weight, 0.0, 0.002)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patches ``(batch, n_chans * n_tokens, patch_size)`` of the centre of trials ``x``, channel by channel."""
        return x[..., self.crop[0] : self.crop[1]].reshape(x.shape[0], self.n_chans * self.n_tokens, self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear_projection(self.tokens(x))
        cls = self.cls_token.expand(x.shape[0], 1, -1) if self.cls_token is not None else h.new_zeros(
            x.shape[0], 1, h.shape[-1])
        h = torch.cat([cls, h], dim=1) + self.pos_embedding(self.positions)
        return self.final_layer(self.transformer_encoder(h)[:, 0])
