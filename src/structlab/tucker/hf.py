"""Tucker Attention inside Hugging Face ``transformers`` causal LMs of the Llama family.

:func:`convert_hf` replaces every self-attention module of a Llama, Mistral, Qwen2 or SmolLM2 model by
:class:`HFAttention`, which holds one of this package's layers (a :class:`~structlab.tucker.TuckerAttention`
after conversion) and speaks the interface the model's decoder layer calls::

    self_attn(hidden_states, position_embeddings=(cos, sin), attention_mask=mask, cache=cache, ...)
        -> (output, None)

What a converter must respect (transformers' ``modeling_llama.py``):

- RoPE in the *rotate-half* layout: head coordinate j pairs with j + d_H/2 (not 2j with 2j+1), both
  rotating at ``inv_freq[j]``. The conversion permutes each head's q/k rows into this package's
  interleaved layout, and every latent pair remembers which column of the model's (cos, sin) table is
  its angle (``rope_index``). The model computes that table per batch row from its ``position_ids``
  with its own ``rope_theta`` and scaling (Llama 3, linear, YaRN, dynamic), so the converted layer
  rotates exactly as the original, scaling factors included.
- The cache object ``generate`` passes (a ``DynamicCache``): the layer stores its own cached tensors in
  the model's cache layer, keys first: the key and value latents of Tucker Attention (r3 + v3 numbers
  per token instead of 2 n_KV d_H), the latent (and decoupled RoPE key) of MLA. Their bytes are what
  :func:`~structlab.tucker.kv_cache_bytes` states.
- The attention mask the model builds (bool for SDPA, additive float for eager, a padding mask for
  flash attention), so left-padded batches work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from structlab.tucker.cache import KVCache
from structlab.tucker.decomposition import to_tucker
from structlab.tucker.mha import GroupedQueryAttention
from structlab.tucker.tensors import AttentionLayer, _check_layer

# Model types whose attention is q_proj/k_proj/v_proj/o_proj with rotate-half RoPE over the full head.
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2")
SUPPORTED_ATTENTION: tuple[str, ...] = ("LlamaAttention", "MistralAttention", "Qwen2Attention")


class HFCacheLayer(KVCache):
    """One layer's view of a ``transformers`` ``DynamicCache``, with the interface of :class:`KVCache`.

    The layer's first cached tensor is stored as the cache's keys, the second (or an empty tensor) as its
    values, both (batch, heads, seq, dim); ``length`` is the number of cached positions (padding included).
    """

    def __init__(self, cache: Any, layer_idx: int, shapes: dict[str, tuple[int, int]]) -> None:
        super().__init__(shapes)
        if len(shapes) > 2:
            raise ValueError(f"cache shapes {shapes}: a transformers cache holds at most two tensors per layer")
        self.cache, self.layer_idx = cache, layer_idx
        layers = getattr(cache, "layers", None)
        if layers is not None and layer_idx < len(layers):
            from transformers.cache_utils import DynamicLayer

            layer = layers[layer_idx]
            if type(layer) is not DynamicLayer:
                raise TypeError(
                    f"cache layer {layer_idx} is a {type(layer).__name__}: converted attention stores its latents in "
                    "a DynamicCache (generate's default; no static, sliding-window or quantised cache)"
                )

    @property
    def length(self) -> int:
        return int(self.cache.get_seq_length(self.layer_idx))

    @property
    def tensors(self) -> dict[str, Tensor]:
        if self.length == 0:
            return {}
        layer = self.cache.layers[self.layer_idx]
        return dict(zip(self.names, (layer.keys, layer.values), strict=False))

    def append(self, **new: Tensor) -> dict[str, Tensor]:
        if set(new) != set(self.names):
            raise ValueError(f"cache: got tensors {sorted(new)}; this cache holds {sorted(self.names)}")
        first = new[self.names[0]]
        second = new[self.names[1]] if len(self.names) == 2 else first.new_empty(*first.shape[:3], 0)
        keys, values = self.cache.update(first, second, self.layer_idx)
        return dict(zip(self.names, (keys, values), strict=False))

    def reset(self) -> None:
        raise TypeError("reset: a transformers cache is reset through the cache object itself")


def _boolean_mask(attention_mask: Any) -> Tensor | None:
    """The model's attention mask as this package's: True where a query may attend, or None."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):
        raise TypeError(
            f"attention_mask: a {type(attention_mask).__name__} (flex attention?) is not supported; load the model "
            "with attn_implementation='sdpa' or 'eager'"
        )
    if attention_mask.is_floating_point():  # eager: 0 where allowed, the dtype's minimum where not
        return attention_mask > torch.finfo(attention_mask.dtype).min / 2
    return attention_mask.bool()


class HFAttention(nn.Module):
    """A self-attention module of a ``transformers`` decoder layer backed by one of this package's layers.

    Args:
        attention: the layer (``TuckerAttention``, ``GroupedQueryAttention`` or decoupled-RoPE
            ``MultiHeadLatentAttention``) with interleaved latent RoPE pairs.
        layer_idx: the decoder layer's index (its slot in the model's cache).
        rope_index: (pairs,) int64, for each latent RoPE pair the column j of the model's rotate-half
            (cos, sin) table whose angle it takes; -1 leaves a pair unrotated.

    ``forward(hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs)``
    returns ``(output, None)`` as transformers' attention modules do (no attention weights).
    """

    def __init__(self, attention: AttentionLayer, layer_idx: int, rope_index: Tensor | None = None) -> None:
        super().__init__()
        self.attention = attention
        self.layer_idx = layer_idx
        self.is_causal = True
        self.register_buffer("rope_index", rope_index, persistent=False)

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        cache = cache if cache is not None else kwargs.get("past_key_values")
        rotary = None
        if self.rope_index is not None:
            if position_embeddings is None:
                raise ValueError("position_embeddings: the converted layer needs the model's (cos, sin) RoPE table")
            cos, sin = position_embeddings  # (B, N, d_H), columns j and j + d_H/2 equal (rotate-half layout)
            index = self.rope_index.clamp_min(0)
            cos, sin = cos[..., index], sin[..., index]
            unrotated = self.rope_index < 0
            if unrotated.any():  # keep the table's scaling (YaRN scales cos and sin) but no rotation
                scale = (position_embeddings[0][..., :1] ** 2 + position_embeddings[1][..., :1] ** 2).sqrt()
                cos, sin = torch.where(unrotated, scale, cos), torch.where(unrotated, 0.0, sin)
            rotary = (cos, sin)
        view = None if cache is None else HFCacheLayer(cache, self.layer_idx, self.attention.cache_shapes)
        out = self.attention(hidden_states, view, mask=_boolean_mask(attention_mask), rotary=rotary)
        return out, None

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}"


# --- conversion ------------------------------------------------------------------------------------


def _reject_model(model: nn.Module, first: str) -> None:
    """Raise ``ValueError`` for model features the conversion cannot carry (sliding window, ALiBi), naming
    the model's first attention module ``first`` ("name (class)")."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if getattr(config, "alibi", False) or model_type in ("bloom", "mpt") or (
        getattr(config, "position_embedding_type", None) == "alibi"
    ):
        raise ValueError(
            f"{first} in {type(model).__name__}: ALiBi attention (a linear position bias on the scores) has no "
            "counterpart in Tucker Attention's latent RoPE; expected a RoPE model of the Llama family "
            f"({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    layer_types = getattr(config, "layer_types", None) or ()
    window = getattr(config, "sliding_window", None)
    context = getattr(config, "max_position_embeddings", None)
    if "sliding_attention" in layer_types or (window is not None and context is not None and window < context):
        raise ValueError(
            f"{first} in {type(model).__name__}: sliding-window attention (sliding_window={window} < "
            f"max_position_embeddings={context}) drops old positions from the cache, which the converted layers "
            "do not; load it with sliding_window=None (exact up to that many tokens) or use a full-attention model"
        )
    if getattr(config, "partial_rotary_factor", 1.0) not in (None, 1.0):
        raise ValueError(
            f"{first}: partial_rotary_factor={config.partial_rotary_factor}: expected RoPE on whole heads"
        )


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every self-attention module of ``model`` (outermost ``*Attention`` modules).

    Raises ``ValueError`` naming the module and the reason when the model or a module's class is not
    supported (model-wide reasons such as ALiBi or a sliding window first).
    """
    found = []
    for name, module in model.named_modules():
        if isinstance(module, HFAttention) or any(name.startswith(outer + ".") for outer, _ in found):
            continue
        if type(module).__name__.endswith("Attention"):
            found.append((name, module))
    if not found:
        raise ValueError(f"model ({type(model).__name__}): no self-attention modules to convert")
    _reject_model(model, f"{found[0][0]} ({type(found[0][1]).__name__})")
    for name, module in found:
        cls = type(module).__name__
        if cls not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"{name} ({cls}): unsupported attention class; expected one of {SUPPORTED_ATTENTION} "
                "(separate q_proj, k_proj, v_proj, o_proj with rotate-half RoPE)"
            )
    first = f"{found[0][0]} ({type(found[0][1]).__name__})"
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{first} in {type(model).__name__}: model_type={model_type!r} is not supported; expected one of "
            f"{SUPPORTED_MODEL_TYPES} (q/k/v/o projections with rotate-half RoPE)"
        )
    return found


def _float_weight(linear: nn.Module, name: str) -> tuple[Tensor, Tensor | None]:
    """(weight, bias) of a projection as plain float tensors; ``ValueError`` for quantised weights."""
    weight = getattr(linear, "weight", None)
    if isinstance(linear, nn.Linear) and isinstance(weight, Tensor) and weight.is_floating_point():
        if type(weight) in (Tensor, nn.Parameter):
            bias = linear.bias.detach() if linear.bias is not None else None
            return weight.detach(), bias
    # A quantised torch tensor, or a quantisation library's layer that can rebuild its float weight (a
    # plain integer tensor has no scale to dequantise with).
    quantized = isinstance(weight, Tensor) and weight.is_quantized
    dequantize = weight.dequantize if quantized else getattr(linear, "dequantize", None)
    if callable(dequantize):
        try:
            dense = dequantize()
            if isinstance(dense, Tensor) and dense.is_floating_point():
                bias = getattr(linear, "bias", None)
                return dense.detach(), (bias.detach().to(dense.dtype) if bias is not None else None)
        except Exception as err:  # noqa: BLE001 - any failure means: cannot dequantise
            raise ValueError(
                f"{name} ({type(linear).__name__}): quantised weight of dtype {getattr(weight, 'dtype', None)} could "
                f"not be dequantised ({type(err).__name__}: {err}); load the model in floating point"
            ) from err
    raise ValueError(
        f"{name} ({type(linear).__name__}): quantised weight of dtype {getattr(weight, 'dtype', None)} "
        f"({type(weight).__name__}) that cannot be dequantised here; load the model in floating point "
        "(transformers dequantises GGUF files on load)"
    )


def _rotate_half_to_interleaved(head_dim: int) -> Tensor:
    """Row order that takes a head's rotate-half layout (j, j + d_H/2) to interleaved pairs (2j, 2j+1)."""
    half = head_dim // 2
    return torch.stack((torch.arange(half), torch.arange(half) + half), dim=1).flatten()


@torch.no_grad()
def as_gqa(module: nn.Module, name: str, inv_freq: Tensor) -> GroupedQueryAttention:
    """A float64 :class:`GroupedQueryAttention` (interleaved RoPE at ``inv_freq``) equal to a Llama-family
    attention ``module``: q/k rows permuted from rotate-half to interleaved pairs, the module's score
    scale folded into the queries."""
    config = module.config
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    d = config.hidden_size
    d_h = module.head_dim
    if n_heads * d_h != d:
        raise ValueError(
            f"{name}: head_dim={d_h} x num_attention_heads={n_heads} != hidden_size={d}; expected heads that "
            "split the model width"
        )
    weights = {p: _float_weight(getattr(module, p), f"{name}.{p}") for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    bias = any(b is not None for _, b in weights.values())
    gqa = GroupedQueryAttention(d, n_heads, n_kv, rope=True, bias=bias).double()
    gqa.rope_frequencies = inv_freq.double().cpu()
    order = _rotate_half_to_interleaved(d_h)
    ratio = module.scaling / d_h**-0.5
    for proj, (w, b) in weights.items():
        w, b = w.double().cpu(), (b.double().cpu() if b is not None else None)
        if proj in ("q_proj", "k_proj"):
            heads = w.shape[0] // d_h
            w = w.view(heads, d_h, -1)[:, order].reshape(w.shape)
            b = None if b is None else b.view(heads, d_h)[:, order].reshape(-1)
        if proj == "q_proj":
            w, b = w * ratio, (None if b is None else b * ratio)
        target = getattr(gqa, proj)
        target.weight.copy_(w)
        if target.bias is not None:
            target.bias.copy_(b if b is not None else torch.zeros_like(target.bias))
    return gqa


def rotary_inv_freq(model: nn.Module) -> Tensor:
    """The model's RoPE frequencies per head pair (``inv_freq`` of its rotary embedding, float64)."""
    for module in model.modules():
        inv_freq = getattr(module, "inv_freq", None)
        if isinstance(inv_freq, Tensor) and type(module).__name__.endswith("RotaryEmbedding"):
            return inv_freq.detach().double().cpu()
    raise ValueError(f"model ({type(model).__name__}): no rotary embedding (a module with inv_freq) found")


def rope_index_of(frequencies: Tensor, inv_freq: Tensor) -> Tensor:
    """For each latent pair's frequency, the column of the model's (cos, sin) table with that frequency."""
    distance = (frequencies.double().cpu()[:, None] - inv_freq[None, :]).abs()
    index = distance.argmin(dim=1)
    if not torch.all(distance.gather(1, index[:, None]) <= 1e-12 * inv_freq.abs().max()):
        raise ValueError("latent RoPE frequencies that the model's rotary table does not hold")
    return index


Ranks = tuple[int, int, int]


def convert_hf(
    model: nn.Module,
    ranks: Ranks | tuple[Ranks, Ranks] | None = None,
    method: Literal["hosvd", "hooi"] = "hosvd",
    *,
    input_covariances: Sequence[Tensor] | None = None,
) -> nn.Module:
    """Convert every self-attention module of a ``transformers`` Llama-family causal LM to Tucker Attention.

    Args:
        model: e.g. ``AutoModelForCausalLM.from_pretrained(...)`` of a Llama, Mistral, Qwen2 or SmolLM2
            model (GQA or MHA, rotate-half RoPE with any rope_theta and scaling, optional q/k/v biases).
        ranks: None for the exact conversion at the theorem's GQA ranks (n_H, d, n_KV d_H) on both sides,
            with RoPE carried exactly in the key latent; or (r1, r2, r3), or a pair of triples for the
            query-key and value-output sides, to compress (r3 even: it holds RoPE pairs). Compression keeps
            RoPE exact by compressing the key latent per rotation frequency
            (:func:`~structlab.tucker.rotary_compress.compress_rotary`).
        method: "hosvd" or "hooi", as in :func:`~structlab.tucker.compress`.
        input_covariances: optional, one (d, d) second moment E[x x^T] of the attention inputs per layer
            (:func:`~structlab.tucker.recovery.input_covariances` measures them on calibration text):
            compression then weights its errors by the inputs each layer sees (activation-aware). Without
            them every input direction counts alike, which for pretrained LLMs keeps the wrong ones.

    Returns ``model``, converted in place: each attention module is replaced by an :class:`HFAttention`
    holding a :class:`~structlab.tucker.TuckerAttention` in the dtype and device of the weights; the
    model's forward and ``generate`` (greedy, sampling, left-padded batches) work as before, and its KV
    cache holds the latents. Every layer is converted into a new module before any is swapped in, so a
    failure leaves the model as it was.

    Raises ``TypeError`` for an object that is not a ``torch.nn.Module`` and ``ValueError``, naming the
    module and the reason, for an unsupported attention class or model type, sliding-window or ALiBi
    attention, quantised weights that cannot be dequantised, or bad ranks.
    """
    from structlab.tucker.rotary_compress import compress_rotary

    if method not in ("hosvd", "hooi"):
        raise ValueError(f"method={method!r}: expected 'hosvd' or 'hooi'")

    covariances = None if input_covariances is None else list(input_covariances)
    if covariances is not None and len(covariances) != len(attention_modules(model)):
        raise ValueError(
            f"input_covariances: {len(covariances)} matrices; expected one per attention module "
            f"({len(attention_modules(model))})"
        )
    layer = iter(range(len(covariances or [])))

    def build(gqa: GroupedQueryAttention) -> AttentionLayer:
        covariance = None if covariances is None else covariances[next(layer)]
        if ranks is None:
            return to_tucker(gqa)
        return compress_rotary(gqa, ranks, method, input_covariance=covariance)

    return replace_attention(model, build)


def replace_attention(model: nn.Module, build: Callable[[GroupedQueryAttention], AttentionLayer]) -> nn.Module:
    """Replace every Llama-family attention module of ``model`` by an :class:`HFAttention` around
    ``build(gqa)``, where ``gqa`` is the module as an exact float64 :class:`GroupedQueryAttention` and the
    built layer rotates its latent pairs at frequencies of the model's RoPE (``rope_frequencies``; for
    MLA with decoupled RoPE, its rotary key's). All layers are built before any is swapped in.

    Raises ``TypeError``/``ValueError`` as :func:`convert_hf` does; an error from ``build`` is re-raised
    with the module's name in front.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a transformers causal LM (a torch.nn.Module); got {type(model).__name__}")
    modules = attention_modules(model)
    inv_freq = rotary_inv_freq(model)
    replacements = []
    for name, module in modules:
        weight = module.q_proj.weight
        gqa = as_gqa(module, name, inv_freq)
        try:
            layer = build(gqa)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name}: {err}") from err
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        frequencies = layer.rope_frequencies.double().cpu()
        layer = layer.to(dtype=dtype, device=weight.device).train(module.training)
        layer.rope_frequencies = frequencies.to(weight.device)
        index = rope_index_of(frequencies, inv_freq).to(weight.device)
        replacements.append((name, HFAttention(layer, module.layer_idx, index)))
    for name, replacement in replacements:  # every layer converted: swap them in
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, replacement)
    return model


def hf_kv_cache_bytes(cache: Any) -> int:
    """Bytes held by the tensors of a ``transformers`` cache (all layers, keys and values)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, Tensor):
                total += t.numel() * t.element_size()
    return total


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """This package's attention layers inside a converted model, in layer order."""
    layers = [m.attention for m in model.modules() if isinstance(m, HFAttention)]
    for layer in layers:
        _check_layer(layer, "converted layer")
    return layers

