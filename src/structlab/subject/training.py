"""Training and prediction for plain models and SubjectConditioned ones, on in-memory trial arrays."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from structlab.subject.conditioned import SubjectConditioned


@dataclass
class TrainConfig:
    """How a model is trained: AdamW with a cosine learning-rate schedule over the whole run.

    The run lasts ``steps`` optimiser steps (rounded up to whole epochs), so that data sets of different
    sizes get the same training budget; ``steps=None`` trains for ``epochs`` epochs instead.
    ``adapter_lr`` / ``adapter_weight_decay`` apply to a SubjectConditioned model's adapters
    (``None``: the shared settings).
    """

    steps: int | None = 600
    epochs: int = 60
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 1e-2
    adapter_lr: float | None = None
    adapter_weight_decay: float | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "steps"):
            value = getattr(self, name)
            if name == "steps" and value is None:
                continue
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}: expected a positive learning rate")


def as_tensor(x, name: str, dtype: torch.dtype) -> torch.Tensor:
    """``x`` (tensor, array, list or tuple) as a tensor of ``dtype``, or a TypeError naming ``name``."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    if isinstance(x, np.ndarray | list | tuple):
        return torch.as_tensor(np.asarray(x), dtype=dtype)
    raise TypeError(f"{name}: {type(x).__name__}; expected a tensor, numpy array or list")


def _check_trials(x: torch.Tensor, y: torch.Tensor | None, subjects: torch.Tensor | None) -> None:
    if x.dim() < 2:
        raise ValueError(f"x: shape {tuple(x.shape)}; expected (trials, ...)")
    if y is not None and (y.dim() != 1 or y.shape[0] != x.shape[0]):
        raise ValueError(f"y: shape {tuple(y.shape)}; expected ({x.shape[0]},), one label per trial")
    if subjects is not None and (subjects.dim() != 1 or subjects.shape[0] != x.shape[0]):
        raise ValueError(f"subjects: shape {tuple(subjects.shape)}; expected ({x.shape[0]},), one id per trial")


def forward(model: nn.Module, x: torch.Tensor, subjects: torch.Tensor | None) -> torch.Tensor:
    """``model(x, subjects)`` for a SubjectConditioned model, ``model(x)`` otherwise."""
    if isinstance(model, SubjectConditioned):
        if subjects is None:
            raise ValueError("subjects: None; a SubjectConditioned model needs one subject id per trial")
        return model(x, subjects)
    return model(x)


def fit(
    model: nn.Module,
    x,
    y,
    subjects=None,
    config: TrainConfig | None = None,
    seed: int = 0,
    parameters: list[dict] | None = None,
) -> list[float]:
    """Train ``model`` to classify trials ``x`` (trials, ...) with integer labels ``y`` (trials,).

    ``subjects`` (trials,) are the subject ids for a SubjectConditioned model. ``parameters`` are
    optimiser parameter groups (default: the wrapper's ``param_groups`` or all trainable parameters).
    Returns the mean training loss of each epoch.
    """
    config = config or TrainConfig()
    x = as_tensor(x, "x", torch.float32)
    y = as_tensor(y, "y", torch.long)
    subjects = as_tensor(subjects, "subjects", torch.long) if subjects is not None else None
    _check_trials(x, y, subjects)
    if parameters is None:
        if isinstance(model, SubjectConditioned):
            parameters = model.param_groups(
                config.lr, config.weight_decay, config.adapter_lr, config.adapter_weight_decay
            )
        else:
            parameters = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimiser = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-x.shape[0] // config.batch_size)
    epochs = config.epochs if config.steps is None else -(-config.steps // steps_per_epoch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    model.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        total = 0.0
        for start in range(0, x.shape[0], config.batch_size):
            batch = order[start : start + config.batch_size]
            if batch.numel() == 1 and _has_batchnorm(model):
                continue  # batch norm cannot train on one trial
            xb, yb = x[batch].to(device), y[batch].to(device)
            sb = subjects[batch].to(device) if subjects is not None else None
            loss = F.cross_entropy(forward(model, xb, sb), yb)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * batch.numel()
        losses.append(total / x.shape[0])
    model.eval()
    return losses


@torch.no_grad()
def predict(model: nn.Module, x, subjects=None, batch_size: int = 256) -> np.ndarray:
    """Class scores (trials, classes) of ``model`` in evaluation mode."""
    x = as_tensor(x, "x", torch.float32)
    subjects = as_tensor(subjects, "subjects", torch.long) if subjects is not None else None
    _check_trials(x, None, subjects)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        sb = subjects[start : start + batch_size].to(device) if subjects is not None else None
        out.append(forward(model, x[start : start + batch_size].to(device), sb).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def accuracy(model: nn.Module, x, y, subjects=None) -> float:
    """Fraction of trials whose predicted class equals ``y``."""
    y = np.asarray(y)
    return float((predict(model, x, subjects).argmax(1) == y).mean())


NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@contextlib.contextmanager
def frozen_norms(model: nn.Module) -> Iterator[None]:
    """Train ``model`` with its normalisation layers in evaluation mode (their statistics stay as they are).

    Restores every module's training flag on exit.
    """
    modes = {id(m): m.training for m in model.modules()}
    try:
        model.train()
        for module in model.modules():
            if isinstance(module, NORMS):
                module.eval()
        yield
    finally:
        for module in model.modules():
            module.training = modes.get(id(module), module.training)


def fine_tune(model: nn.Module, x, y, epochs: int = 100, lr: float = 3e-4, batch_size: int = 32, seed: int = 0) -> None:
    """Fine-tune every weight of a plain ``model`` on a few trials (Adam; normalisation statistics kept)."""
    x = as_tensor(x, "x", torch.float32)
    y = as_tensor(y, "y", torch.long)
    _check_trials(x, y, None)
    device = next(model.parameters()).device
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    with frozen_norms(model):
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=generator)
            for start in range(0, x.shape[0], batch_size):
                batch = order[start : start + batch_size]
                loss = F.cross_entropy(model(x[batch].to(device)), y[batch].to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
