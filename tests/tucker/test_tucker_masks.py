"""Padding masks: a left-padded row in a batch gives what the row gives alone, for every attention kind,
in one forward pass, through the KV cache, and through the GPT's batched generation."""

from __future__ import annotations

import pytest
import torch

from structlab.tucker import GPT, GPTConfig
from structlab.tucker.attention import attention_mask

from .helpers import randomise
from .test_tucker_layers import LAYERS

D = 24
LENGTHS = (7, 4, 1)  # prompts of different lengths, left-padded to the longest


def padded_batch(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Inputs (B, T, D) with row b left-padded by random junk, its padding mask, and each row alone."""
    gen = torch.Generator().manual_seed(seed)
    longest = max(LENGTHS)
    alone = [torch.randn(1, n, D, generator=gen, dtype=torch.float64) for n in LENGTHS]
    x = torch.randn(len(LENGTHS), longest, D, generator=gen, dtype=torch.float64) * 5  # junk where padded
    mask = torch.zeros(len(LENGTHS), longest, dtype=torch.bool)
    for b, (n, row) in enumerate(zip(LENGTHS, alone, strict=True)):
        x[b, longest - n :] = row[0]
        mask[b, longest - n :] = True
    return x, mask, alone


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_left_padded_rows_equal_each_row_alone(kind: str, rope: bool, causal: bool) -> None:
    layer = randomise(LAYERS[kind](causal=causal, rope=rope, bias=True)).eval()
    x, mask, alone = padded_batch()
    with torch.no_grad():
        batched = layer(x, mask=mask)
        for b, row in enumerate(alone):
            n = row.shape[1]
            # RoPE scores depend on position differences only, so the shift by the padding cancels.
            torch.testing.assert_close(batched[b, -n:], layer(row)[0], rtol=1e-9, atol=1e-9)
    assert torch.isfinite(batched).all()  # padding queries see no real key; they must not produce NaN


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_cached_decoding_with_a_padding_mask_equals_each_row_alone(kind: str) -> None:
    layer = randomise(LAYERS[kind](causal=True, rope=True, bias=True)).eval()
    x, mask, alone = padded_batch()
    steps = torch.randn(len(LENGTHS), 3, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with torch.no_grad():
        cache = layer.new_cache()
        outs = [layer(x, cache, mask=mask)[:, -1:]]
        for t in range(steps.shape[1]):
            mask = torch.cat([mask, torch.ones(len(LENGTHS), 1, dtype=torch.bool)], dim=1)
            outs.append(layer(steps[:, t : t + 1], cache, mask=mask))
        batched = torch.cat(outs, dim=1)
        for b, row in enumerate(alone):
            full = layer(torch.cat([row, steps[b : b + 1]], dim=1))[0, row.shape[1] - 1 :]
            torch.testing.assert_close(batched[b], full, rtol=1e-9, atol=1e-9)


def test_full_mask_form_equals_padding_form() -> None:
    layer = randomise(LAYERS["tucker"](causal=True, rope=True)).eval()
    x, mask, _ = padded_batch()
    full = mask[:, None, None, :].expand(-1, 1, x.shape[1], -1)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, mask=mask), layer(x, mask=full))


@pytest.mark.parametrize(
    ("mask", "error", "message"),
    [
        (torch.ones(3, 7), TypeError, "bool"),
        (torch.ones(3, 6, dtype=torch.bool), ValueError, r"\(batch, past \+ seq\)"),
        (torch.ones(2, 7, dtype=torch.bool), ValueError, "mask has shape"),
        ("all", TypeError, "mask"),
    ],
)
def test_bad_masks_are_rejected_with_the_expected_shape(mask, error, message: str) -> None:
    with pytest.raises(error, match=message):
        attention_mask(mask, batch=3, seq=7, past=0)


def tiny_gpt(attention: str, rope: bool) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=30, block_size=32, n_layer=2, d_model=32, attention=attention, rope=rope)
    model = GPT(config).double().eval()
    with torch.no_grad():  # larger weights than GPT-2's initialisation, so greedy decoding varies
        for p in model.parameters():
            p.mul_(8.0)
    return model


@pytest.mark.parametrize("attention", ["mha", "gqa:2", "mla:8", "tucker:2,16,8"])
@pytest.mark.parametrize("rope", [True, False])
def test_gpt_batched_generation_of_left_padded_prompts_equals_generating_each_alone(attention: str, rope: bool) -> None:
    model = tiny_gpt(attention, rope)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 30, (n,), generator=gen) for n in (6, 2, 4)]
    longest = max(len(p) for p in prompts)
    idx = torch.zeros(len(prompts), longest, dtype=torch.long)  # pad id 0
    mask = torch.zeros_like(idx)
    for b, p in enumerate(prompts):
        idx[b, longest - len(p) :] = p
        mask[b, longest - len(p) :] = 1
    batched = model.generate(idx, 8, temperature=0, attention_mask=mask)
    alone = [model.generate(p[None], 8, temperature=0)[0] for p in prompts]
    for b, row in enumerate(alone):
        assert batched[b, longest:].tolist() == row[len(prompts[b]) :].tolist()
    assert len({tuple(r[-8:].tolist()) for r in alone}) > 1  # the prompts lead to different continuations


def test_gpt_rejects_a_mask_of_the_wrong_shape() -> None:
    model = tiny_gpt("mha", True)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
