"""convert_hf on transformers' own Llama, Mistral and Qwen2 models (small random configurations built
here, no hub): the exact conversion reproduces the original model's logits and its generate(), the
cache holds the latents, compression keeps RoPE exact, and bad models are refused without damage."""

from __future__ import annotations

import copy
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from structlab.tucker import TuckerAttention, kv_cache_bytes  # noqa: E402
from structlab.tucker.hf import HFAttention, attention_layers, convert_hf, hf_kv_cache_bytes  # noqa: E402

VOCAB = 96
SHAPE = {
    "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 256,
}


def build(kind: str, **overrides) -> torch.nn.Module:
    """A float64 model of ``kind`` with weights large enough that attention shapes the logits."""
    options = {**SHAPE, **overrides}
    if kind == "llama":
        config = transformers.LlamaConfig(rope_theta=500.0, **options)
        cls = transformers.LlamaForCausalLM
    elif kind == "llama3":  # Llama 3's frequency-dependent RoPE scaling
        config = transformers.LlamaConfig(**options, rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
        cls = transformers.LlamaForCausalLM
    elif kind == "mistral":
        config = transformers.MistralConfig(**{"sliding_window": None, **options})
        cls = transformers.MistralForCausalLM
    elif kind == "qwen2":  # q/k/v biases
        config = transformers.Qwen2Config(**options)
        cls = transformers.Qwen2ForCausalLM
    else:
        raise AssertionError(kind)
    torch.manual_seed(0)
    model = cls(config).double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                scale = 1.0 if "embed" in name else 1.5 / math.sqrt(p.shape[-1])
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
            elif p.dim() == 1 and "bias" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return model


def greedy(model: torch.nn.Module, ids: torch.Tensor, new: int, **options) -> torch.Tensor:
    """model.generate, greedy, exactly ``new`` tokens (an end-of-sequence token does not stop it)."""
    options = {"do_sample": False, **options}
    return model.generate(ids, max_new_tokens=new, min_new_tokens=new, pad_token_id=0, **options)


def prompts(batch: int = 2, seq: int = 12, seed: int = 5) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


KINDS = ["llama", "llama3", "mistral", "qwen2"]


@pytest.mark.parametrize("kind", KINDS)
def test_exact_conversion_reproduces_the_original_logits(kind: str) -> None:
    original = build(kind)
    ids = prompts()
    with torch.no_grad():
        reference = original(ids).logits
        converted = convert_hf(copy.deepcopy(original))
        logits = converted(ids).logits
    assert all(isinstance(m, HFAttention) for m in (layer.self_attn for layer in converted.model.layers))
    assert reference.std() > 0.5  # attention matters to these logits
    torch.testing.assert_close(logits, reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_exact_conversion_generates_the_same_tokens_greedy_and_left_padded(kind: str) -> None:
    original = build(kind)
    converted = convert_hf(copy.deepcopy(original))
    ids = prompts(1, 9)
    assert greedy(converted, ids, 12).tolist() == greedy(original, ids, 12).tolist()
    # A left-padded batch of prompts of different lengths gives each prompt's tokens alone.
    rows = [prompts(1, n, seed=n)[0] for n in (9, 4, 6)]
    longest = max(len(r) for r in rows)
    batch = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for b, r in enumerate(rows):
        batch[b, longest - len(r):], mask[b, longest - len(r):] = r, 1
    padded = greedy(converted, batch, 10, attention_mask=mask)
    for b, r in enumerate(rows):
        alone = greedy(original, r[None], 10)[0, len(r):]
        assert padded[b, longest:].tolist() == alone.tolist()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_the_cache_holds_the_latents_and_their_bytes_equal_kv_cache_bytes(kind: str) -> None:
    ids = prompts(2, 11)
    for ranks in (None, ((3, 24, 8), (2, 20, 10))):
        converted = convert_hf(build(kind), ranks=ranks)
        with torch.no_grad():
            out = converted(ids, use_cache=True)
        layers = attention_layers(converted)
        expected = ids.shape[0] * sum(kv_cache_bytes(layer, ids.shape[1], torch.float64) for layer in layers)
        assert hf_kv_cache_bytes(out.cache) == expected
        per_token = sum(kv_cache_bytes(layer, 1, torch.float64) for layer in layers) // 8
        # GQA caches 2 n_KV d_H = 32 numbers per layer and token; the exact Tucker form as many, the
        # compressed one r3 + v3 = 18.
        assert per_token == (2 * 32 if ranks is None else 2 * 18)


@pytest.mark.parametrize("kind", ["llama3", "qwen2"])
def test_compression_at_full_ranks_is_exact_and_rope_stays_exact_below(kind: str) -> None:
    original = build(kind)
    ids = prompts()
    with torch.no_grad():
        reference = original(ids).logits
        full = convert_hf(copy.deepcopy(original), ranks=(6, 48, 16))
        torch.testing.assert_close(full(ids).logits, reference, rtol=1e-9, atol=1e-9)
        small = convert_hf(copy.deepcopy(original), ranks=(4, 32, 12), method="hooi")
        # Latent RoPE is still a rotation: shifting every position by the same amount changes nothing (up to
        # the model's rotary table, which transformers computes in float32).
        shifted = small(ids, position_ids=torch.arange(ids.shape[1])[None] + 37).logits
        torch.testing.assert_close(shifted, small(ids).logits, rtol=1e-4, atol=1e-5)
        assert (small(ids).logits - reference).abs().max() > 1e-3  # compressed: not the original any more
    layer = small.model.layers[0].self_attn.attention
    assert isinstance(layer, TuckerAttention) and layer.ranks == (4, 32, 12)


def test_compressed_model_generates_with_a_padded_batch() -> None:
    converted = convert_hf(build("llama"), ranks=(4, 32, 12))
    batch = prompts(2, 7)
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    out = greedy(converted, batch, 5, attention_mask=mask)
    alone = greedy(converted, batch[1:, 3:], 5)
    assert out[1, 7:].tolist() == alone[0, 4:].tolist()


def test_sampling_generate_runs_on_a_converted_model() -> None:
    converted = convert_hf(build("mistral"))
    torch.manual_seed(0)
    out = greedy(converted, prompts(2, 5), 6, do_sample=True, top_k=20)
    assert out.shape == (2, 11)


# --- bad input ------------------------------------------------------------------------------------


def test_sliding_window_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="sliding-window"):
        convert_hf(build("mistral", sliding_window=16))


def test_alibi_model_is_refused_naming_alibi() -> None:
    config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=1, n_head=4)
    with pytest.raises(ValueError, match="ALiBi"):
        convert_hf(transformers.BloomForCausalLM(config))


def test_unsupported_attention_class_is_named() -> None:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4)
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn \(GPT2Attention\): unsupported attention class"):
        convert_hf(transformers.GPT2LMHeadModel(config))


def test_quantised_weights_are_refused_and_nothing_is_half_converted() -> None:
    model = build("llama")
    ids = prompts()
    with torch.no_grad():
        before = model(ids).logits
    layer = model.model.layers[1].self_attn
    layer.k_proj.weight = torch.nn.Parameter(torch.ones_like(layer.k_proj.weight, dtype=torch.int8),
                                             requires_grad=False)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_proj .*quantised"):
        convert_hf(model)
    assert type(model.model.layers[0].self_attn).__name__ == "LlamaAttention"  # layer 0 was not swapped
    layer.k_proj.weight = torch.nn.Parameter(layer.k_proj.weight.double())
    with torch.no_grad():
        assert model(ids).logits.shape == before.shape


@pytest.mark.parametrize(
    ("ranks", "method", "error", "message"),
    [
        ((4, 32, 11), "hosvd", ValueError, "even"),
        ((4, 32, 20), "hosvd", ValueError, "at most the module.s key latent size 16"),
        ((7, 32, 12), "hosvd", ValueError, "exceeds"),
        ((4, 32, 12), "svd", ValueError, "method='svd'"),
        ("4,32,12", "hosvd", TypeError, "triple"),
    ],
)
def test_bad_ranks_name_the_argument(ranks, method: str, error: type, message: str) -> None:
    model = build("llama")
    with pytest.raises(error, match=message):
        convert_hf(model, ranks=ranks, method=method)
    assert type(model.model.layers[0].self_attn).__name__ == "LlamaAttention"


def test_a_non_model_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="model"):
        convert_hf("SmolLM2")


# --- the MLA anchor and recovery -----------------------------------------------------------------


def test_mla_conversion_of_a_multi_query_model_is_exact_and_caches_its_latent() -> None:
    from structlab.tucker.hf import replace_attention
    from structlab.tucker.transmla import gqa_to_mla

    original = build("llama", num_key_value_heads=1)  # one KV head: RoRoPE drops nothing
    ids = prompts()
    d_h = 48 // 6
    with torch.no_grad():
        reference = original(ids).logits
        mla = replace_attention(copy.deepcopy(original), lambda gqa: gqa_to_mla(gqa, kv_latent=d_h, rope_dim=d_h))
        out = mla(ids, use_cache=True)
    torch.testing.assert_close(out.logits, reference, rtol=1e-9, atol=1e-9)
    assert hf_kv_cache_bytes(out.cache) == ids.numel() * 2 * (d_h + d_h) * 8  # 2 layers, c_KV + k^R, float64
    assert greedy(mla, ids[:1], 6).tolist() == greedy(original, ids[:1], 6).tolist()


def test_layer_fitting_lowers_each_layers_held_back_error_and_distillation_trains_only_attention() -> None:
    from structlab.tucker.recovery import distill, fit_layers, record_attention

    original = build("llama")
    converted = convert_hf(copy.deepcopy(original), ranks=(3, 16, 6))
    batches = prompts(12, 16, seed=11)
    calibration = record_attention(original, batches)
    assert len(calibration.inputs) == 2 and calibration.inputs[0].shape == (12, 16, 48)
    fit = fit_layers(converted, calibration, steps=60, lr=(1e-2, 1e-3))
    # errors on the 3 held-back windows, which the fit never trained on
    assert all(a < 0.95 * b for a, b in zip(fit["after"], fit["before"], strict=True)), fit
    frozen = converted.lm_head.weight.clone()
    result = distill(converted, original, batches, steps=3, lr=1e-3)
    assert len(result["losses"]) == 3 and all(math.isfinite(v) for v in result["losses"])
    assert torch.equal(converted.lm_head.weight, frozen) and converted.lm_head.weight.requires_grad


# --- the real model --------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_exact_conversion_equals_the_original_and_generates_the_same_tokens() -> None:
    from structlab import data

    if data.find("smollm2") is None:
        pytest.skip(data.missing_message("smollm2"))
    from structlab.tucker.llm import load_smollm2

    model, tokenizer = load_smollm2()
    ids = tokenizer("To be, or not to be, that is the question:", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(ids).logits
        converted = convert_hf(copy.deepcopy(model))
        assert (converted(ids).logits - reference).abs().max() < 1e-3
    assert greedy(converted, ids, 12).tolist() == greedy(model, ids, 12).tolist()
    compressed = convert_hf(model, ranks=((9, 576, 48), (9, 576, 48)))
    with torch.no_grad():
        out = compressed(ids, use_cache=True)
    assert hf_kv_cache_bytes(out.cache) == 30 * ids.shape[1] * 96 * 4  # 4x below GQA's 384 numbers per token


def test_activation_aware_conversion_takes_one_covariance_per_layer() -> None:
    from structlab.tucker.recovery import input_covariances, record_attention

    original = build("llama")
    batches = prompts(3, 16, seed=4)
    covariances = input_covariances(record_attention(original, batches))
    assert len(covariances) == 2 and covariances[0].shape == (48, 48)
    with torch.no_grad():
        reference = original(batches).logits
        plain = convert_hf(copy.deepcopy(original), ranks=(6, 48, 8))(batches).logits
        aware = convert_hf(copy.deepcopy(original), ranks=(6, 48, 8), input_covariances=covariances)(batches).logits
    assert (aware - reference).norm() < (plain - reference).norm()
    with pytest.raises(ValueError, match="one per attention module"):
        convert_hf(original, ranks=(6, 48, 8), input_covariances=covariances[:1])
