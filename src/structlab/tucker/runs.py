"""The training runs the studies sweep over: one function per kind of run, each taking only plain
values (so it can run in a worker process) and returning a JSON-ready outcome.

Data sets are loaded once per process.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from structlab import runtime
from structlab.tucker.blocks import AttentionSpec
from structlab.tucker.decomposition import compress
from structlab.tucker.gpt import GPT, GPTConfig
from structlab.tucker.train import TrainConfig, evaluate, fit
from structlab.tucker.vit import ImageClassificationTask, ViT, ViTConfig, load_images


@dataclass(frozen=True)
class Schedule:
    """The optimisation of one run (a subset of :class:`~structlab.tucker.train.TrainConfig`)."""

    steps: int
    batch_size: int
    lr: float
    warmup: int
    eval_every: int
    weight_decay: float = 0.1

    def train_config(self, seed: int, device: str) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup=self.warmup,
                           eval_every=self.eval_every, weight_decay=self.weight_decay, seed=seed, device=device)


@functools.cache
def shakespeare_corpus():
    """The Shakespeare corpus, loaded once per process."""
    from structlab.tucker.text import load_shakespeare

    return load_shakespeare()


@functools.cache
def _images(name: str, train_subset: int, test_subset: int) -> tuple[np.ndarray, ...]:
    train_x, train_y, test_x, test_y = load_images(name)
    if train_subset:
        train_x, train_y = train_x[:train_subset], train_y[:train_subset]
    if test_subset:
        test_x, test_y = test_x[:test_subset], test_y[:test_subset]
    return train_x, train_y, test_x, test_y


def attention_summary(model: torch.nn.Module) -> dict[str, Any]:
    """Attention parameters (all layers), KV-cache numbers per token (all layers) and parameters in total."""
    from structlab.tucker import attention_parameters
    from structlab.tucker.counting import cached_numbers_per_token

    layers = [block.attn for block in model.blocks]
    return {
        "attention_parameters": sum(attention_parameters(a) for a in layers),
        "attention_parameters_per_layer": attention_parameters(layers[0]),
        "kv_cache_numbers_per_token": sum(cached_numbers_per_token(a) for a in layers),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def layer_spectra(model: torch.nn.Module) -> list[dict[str, list[list[float]]]]:
    """Per layer, the singular values of every mode unfolding of W_qk and W_vo, each scaled by its largest."""
    from structlab.tucker import mode_spectra

    out = []
    for block in model.blocks:
        qk, vo = mode_spectra(block.attn)
        out.append({side: [(s / s.max()).tolist() for s in modes] for side, modes in (("qk", qk), ("vo", vo))})
    return out


def layer_ranks(model: torch.nn.Module, rtol: float = 1e-5) -> dict[str, list]:
    """Per layer, the measured multilinear ranks (at ``rtol``) and those of the paper's theorem."""
    from structlab.tucker import theoretical_ranks, tucker_ranks

    layers = [block.attn for block in model.blocks]
    return {"measured": [tucker_ranks(a, rtol=rtol) for a in layers],
            "theorem": [theoretical_ranks(a) for a in layers]}


def language_model_run(
    width: int, attention: str, seed: int, n_layer: int, block_size: int, head_dim: int,
    schedule: dict[str, Any], eval_windows: int, device: str, spectra: bool = False,
) -> dict[str, Any]:
    """Train a character-level GPT on Shakespeare (validation: held-out plays); returns its outcome."""
    from structlab.tucker.text import LanguageModelTask

    corpus = shakespeare_corpus()
    runtime.seed_everything(seed)
    spec = AttentionSpec.parse(attention, n_heads=width // head_dim)
    model = GPT(GPTConfig(vocab_size=corpus.vocab.size, block_size=block_size, n_layer=n_layer, d_model=width,
                          attention=spec))
    task = LanguageModelTask(corpus.train, corpus.val, block_size, eval_windows)
    plan = Schedule(**schedule)
    result = fit(model, task, plan.train_config(seed, device), desc=f"d={width} {attention} seed {seed}")
    outcome = {
        "width": width, "attention": attention, "seed": seed, "val_loss": result.final["val_loss"],
        "history": result.history, "seconds": result.seconds, **attention_summary(model),
    }
    model.cpu()
    outcome["ranks"] = layer_ranks(model)
    if spectra:
        outcome["spectra"] = layer_spectra(model)
    return outcome


def vit_run(
    attention: str, seed: int, n_heads: int, vit: dict[str, Any], schedule: dict[str, Any], data: str,
    device: str, train_subset: int = 0, test_subset: int = 0, finetune: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a ViT (``vit``: :class:`ViTConfig` fields but the attention) on ``data``; returns test
    accuracy and loss. With ``finetune`` (``ranks``, ``method``, ``schedule``) the trained model's
    attention is then compressed to Tucker ranks and fine-tuned, as the paper initialises Tucker ViTs
    from pretrained MHA by HOSVD; the outcome's ``finetuned`` entry holds that model's results."""
    train_x, train_y, test_x, test_y = _images(data, train_subset, test_subset)
    scale = 255.0 if data == "fashion-mnist" else 16.0
    task = ImageClassificationTask(train_x, train_y, test_x, test_y, scale=scale)
    runtime.seed_everything(seed)
    config = ViTConfig(**vit, attention=AttentionSpec.parse(attention, n_heads))
    model = ViT(config)
    result = fit(model, task, Schedule(**schedule).train_config(seed, device), desc=f"vit {attention} seed {seed}")
    outcome = {
        "attention": attention, "seed": seed, "accuracy": result.final["val_accuracy"],
        "val_loss": result.final["val_loss"], "history": result.history, "seconds": result.seconds,
        **attention_summary(model),
    }
    if finetune is None:
        return outcome
    start = time.perf_counter()
    ranks = tuple(finetune["ranks"])
    spec = AttentionSpec("tucker", n_heads, ranks=ranks)
    student = ViT(ViTConfig(**{**asdict(config), "attention": spec}))
    student.load_state_dict(model.state_dict(), strict=False)  # all but attention
    student = student.to(device)
    for src, dst in zip(model.blocks, student.blocks, strict=True):
        dst.attn = compress(copy.deepcopy(src.attn).cpu(), ranks, method=finetune["method"]).to(device)
    before = evaluate(student, task, device=device)
    tuned = fit(student, task, Schedule(**finetune["schedule"]).train_config(seed, device),
                desc=f"vit {spec.label} from {attention}, seed {seed}")
    outcome["finetuned"] = {
        "attention": f"{spec.label} from {attention}", "seed": seed, "method": finetune["method"],
        "accuracy_after_compression": before["accuracy"], "accuracy": tuned.final["val_accuracy"],
        "val_loss": tuned.final["val_loss"], "history": tuned.history, "seconds": time.perf_counter() - start,
        **attention_summary(student),
    }
    return outcome
