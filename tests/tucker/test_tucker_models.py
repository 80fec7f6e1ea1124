"""GPT and ViT with every attention kind: shapes, causal masking, KV-cached generation against full
recomputation, attention specs."""

from __future__ import annotations

import pytest
import torch

from structlab.tucker.blocks import AttentionSpec
from structlab.tucker.gpt import GPT, GPTConfig
from structlab.tucker.vit import ViT, ViTConfig

SPECS = ["mha", "gqa:2", "mla:16", "mla:16,24", "tucker:2,16,8", "tucker:4,32,16/2,16,8"]


def tiny_gpt(spec: str, rope: bool = True, block_size: int = 32) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=11, block_size=block_size, n_layer=2, d_model=32,
                       attention=AttentionSpec.parse(spec, n_heads=4), rope=rope)
    return GPT(config).double().eval()


@pytest.mark.parametrize("spec", SPECS)
def test_gpt_logits_have_shape_batch_seq_vocab(spec: str) -> None:
    model = tiny_gpt(spec)
    idx = torch.randint(11, (3, 17))
    assert model(idx).shape == (3, 17, 11)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("rope", [True, False])
def test_gpt_output_at_a_position_ignores_later_tokens(spec: str, rope: bool) -> None:
    model = tiny_gpt(spec, rope)
    idx = torch.randint(11, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 11
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-12)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-6  # later positions do see the change


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("rope", [True, False])
def test_cached_decoding_logits_equal_full_recomputation(spec: str, rope: bool) -> None:
    model = tiny_gpt(spec, rope)
    generated = model.generate(torch.randint(11, (2, 5)), 20, temperature=0)
    full = model(generated)  # one forward over the whole sequence: the independent computation
    caches = model.new_caches()
    stepwise = [model(generated[:, :5], caches)]
    for t in range(5, generated.shape[1]):
        stepwise.append(model(generated[:, t : t + 1], caches))
    torch.testing.assert_close(torch.cat(stepwise, dim=1), full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("spec", ["mha", "gqa:1", "mla:16", "tucker:2,16,8"])
def test_greedy_generation_with_cache_equals_generation_without(spec: str) -> None:
    model = tiny_gpt(spec)
    prompt = torch.randint(11, (2, 4))
    cached = model.generate(prompt, 24, temperature=0, use_cache=True)
    recomputed = model.generate(prompt, 24, temperature=0, use_cache=False)
    assert torch.equal(cached, recomputed)


def test_generation_beyond_block_size_slides_a_window_like_recomputation() -> None:
    model = tiny_gpt("tucker:2,16,8", block_size=16)
    prompt = torch.randint(11, (1, 6))
    out = model.generate(prompt, 30, temperature=0)
    assert out.shape == (1, 36)
    # Each token is the argmax of the model on the preceding (at most 16) tokens.
    for t in range(6, 36):
        window = out[:, max(0, t - 16) : t]
        assert out[0, t] == model(window)[0, -1].argmax()


def test_sampling_with_a_seeded_generator_is_reproducible() -> None:
    model = tiny_gpt("mla:16")
    prompt = torch.zeros(1, 1, dtype=torch.long)
    a = model.generate(prompt, 30, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 30, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_learned_positions_reject_inputs_longer_than_the_context() -> None:
    model = tiny_gpt("mha", rope=False, block_size=8)
    with pytest.raises(ValueError, match="block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_output_head_is_tied_to_the_token_embedding() -> None:
    model = tiny_gpt("mha")
    assert model.lm_head.weight is model.wte.weight


@pytest.mark.parametrize("spec", SPECS)
def test_vit_logits_depend_on_every_patch(spec: str) -> None:
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=8, patch_size=2, n_classes=5, n_layer=2, d_model=32,
                          attention=AttentionSpec.parse(spec, 4))).double().eval()
    images = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    logits = model(images)
    assert logits.shape == (3, 5)
    changed = images.clone()
    changed[:, :, -2:, -2:] += 1.0  # only the last patch: a causal model's class token would not see it
    assert (model(changed) - logits).abs().max() > 1e-6


def test_vit_rejects_images_of_the_wrong_shape() -> None:
    model = ViT(ViTConfig(image_size=8, patch_size=2))
    with pytest.raises(ValueError, match=r"expected \(batch, 1, 8, 8\)"):
        model(torch.zeros(2, 8, 8))


@pytest.mark.parametrize("text", ["mha", "gqa:2", "mla:16", "mla:16,24", "tucker:4,32,16", "tucker:4,32,16/2,16,8"])
def test_attention_spec_label_parses_back_to_the_same_spec(text: str) -> None:
    spec = AttentionSpec.parse(text, n_heads=4)
    assert spec.label == text
    assert AttentionSpec.parse(spec.label, 4) == spec


@pytest.mark.parametrize("text", ["gqa", "mla:a", "tucker:4,32", "tucker:1,2,3/4", "lsh", "mha:3"])
def test_attention_spec_rejects_malformed_text_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="attention="):
        AttentionSpec.parse(text)


def test_attention_spec_rejects_sizes_of_another_kind() -> None:
    with pytest.raises(ValueError, match="not an argument of mha"):
        AttentionSpec("mha", 4, kv_latent=16)


def test_impossible_layer_shapes_surface_the_library_error() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        tiny_gpt("tucker:8,16,8")  # head rank 8 > 4 heads


def test_tucker_initialisation_matches_the_variance_of_gpt2_initialised_mha_tensors() -> None:
    from structlab.tucker import MultiHeadAttention, TuckerAttention, attention_tensors
    from structlab.tucker.blocks import init_attention

    std, out_std, d_h = 0.02, 0.005, 32
    torch.manual_seed(0)
    mha = MultiHeadAttention(128, 4)
    init_attention(mha, std=std, out_std=out_std)
    w_qk, w_vo = attention_tensors(mha)
    assert w_qk.var().item() == pytest.approx(d_h * std**4, rel=0.05)  # entries of W_i^Q W_i^K^T
    assert w_vo.var().item() == pytest.approx(d_h * std**2 * out_std**2, rel=0.05)
    # A product of random factors with only 4 head coefficients varies a lot from draw to draw, so the
    # expected variance is checked as a mean over draws.
    ratios = []
    for seed in range(30):
        torch.manual_seed(seed)
        tucker = TuckerAttention(128, 4, (4, 64, 32))
        init_attention(tucker, std=std, out_std=out_std)
        t_qk, t_vo = attention_tensors(tucker)
        ratios.append((t_qk.var().item() / (d_h * std**4), t_vo.var().item() / (d_h * std**2 * out_std**2)))
    mean_qk, mean_vo = (sum(r[k] for r in ratios) / len(ratios) for k in (0, 1))
    assert 0.8 < mean_qk < 1.25 and 0.8 < mean_vo < 1.25
