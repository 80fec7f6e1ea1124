"""Tucker Attention (arXiv 2603.30033) and the attention layers it generalises.

Layers (``torch.nn.Module``, batch-first, each with ``causal``, ``rope``, ``bias``, ``dropout`` options
and a KV cache for incremental decoding): :class:`MultiHeadAttention`, :class:`GroupedQueryAttention`,
:class:`MultiHeadLatentAttention`, :class:`TuckerAttention`.

Analysis and conversion: :func:`attention_tensors`, :func:`tucker_ranks`, :func:`mode_spectra`,
:func:`to_tucker`, :func:`compress` (with :func:`hosvd`, :func:`hooi`), :func:`attention_parameters`,
:func:`kv_cache_bytes`, :func:`compress_rotary` (RoPE layers). Loading: :func:`from_torch_mha`,
:func:`minilm_state_dict`, :func:`bert_attention`. Hugging Face models: :func:`convert_hf` (Llama, Mistral,
Qwen2, SmolLM2 in place; ``transformers`` is imported only when it runs).
"""

from structlab.tucker.cache import KVCache
from structlab.tucker.counting import attention_parameters, kv_cache_bytes
from structlab.tucker.decomposition import (
    TuckerDecomposition,
    compress,
    hooi,
    hosvd,
    relative_errors,
    to_tucker,
)
from structlab.tucker.hf import convert_hf
from structlab.tucker.mha import GroupedQueryAttention, MultiHeadAttention
from structlab.tucker.mla import MultiHeadLatentAttention
from structlab.tucker.pretrained import (
    bert_attention,
    from_torch_mha,
    minilm_config,
    minilm_path,
    minilm_state_dict,
)
from structlab.tucker.rope import apply_rotary, rotary_frequencies
from structlab.tucker.rotary_compress import compress_rotary
from structlab.tucker.tensors import (
    attention_tensors,
    energy,
    latent_form,
    mode_spectra,
    theoretical_ranks,
    tucker_ranks,
    unfold,
)
from structlab.tucker.tucker import TuckerAttention

__all__ = [
    "GroupedQueryAttention",
    "KVCache",
    "MultiHeadAttention",
    "MultiHeadLatentAttention",
    "TuckerAttention",
    "TuckerDecomposition",
    "apply_rotary",
    "attention_parameters",
    "attention_tensors",
    "bert_attention",
    "compress",
    "compress_rotary",
    "convert_hf",
    "energy",
    "from_torch_mha",
    "hooi",
    "hosvd",
    "kv_cache_bytes",
    "latent_form",
    "minilm_config",
    "minilm_path",
    "minilm_state_dict",
    "mode_spectra",
    "relative_errors",
    "rotary_frequencies",
    "theoretical_ranks",
    "to_tucker",
    "tucker_ranks",
    "unfold",
]

# Models, training and checkpoints built on these layers (the study part: gpt, vit, encoder, train).
from structlab.tucker.blocks import AttentionSpec  # noqa: E402
from structlab.tucker.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from structlab.tucker.encoder import SentenceEncoder, load_minilm  # noqa: E402
from structlab.tucker.gpt import GPT, GPTConfig  # noqa: E402
from structlab.tucker.train import TrainConfig, fit  # noqa: E402
from structlab.tucker.vit import ViT, ViTConfig  # noqa: E402

__all__ += [
    "GPT", "AttentionSpec", "GPTConfig", "SentenceEncoder", "TrainConfig", "ViT", "ViTConfig", "fit",
    "load_checkpoint", "load_minilm", "save_checkpoint",
]
