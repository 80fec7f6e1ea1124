"""Recovering what compression loses, cheaply enough for a CPU: layer-wise fitting, then distillation.

1. Layer-wise fitting (no backpropagation through the model): the original model runs once on
   calibration text and each attention module's inputs and outputs are recorded; every converted layer
   is then trained alone to reproduce its original's outputs from those same inputs (mean squared error
   relative to the output's energy, Adam). Each layer costs a few hundred small matrix products.
2. Distillation: a short end-to-end training of the converted model's attention parameters to match the
   original model's next-token distributions (KL divergence) on calibration windows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structlab.tucker.hf import HFAttention, attention_modules


@dataclass
class Calibration:
    """The original model's attention inputs and outputs on calibration windows (count, length, d), per
    layer, and the rotary table (cos, sin) the model passed them."""

    inputs: list[Tensor]
    outputs: list[Tensor]
    position_embeddings: tuple[Tensor, Tensor]


@torch.no_grad()
def record_attention(model: nn.Module, batches: Tensor) -> Calibration:
    """Run ``model`` (unconverted) on token windows ``batches`` (count, length) and record every attention
    module's input ``hidden_states`` and output."""
    modules = [m for _, m in attention_modules(model)]
    inputs: list[list[Tensor]] = [[] for _ in modules]
    outputs: list[list[Tensor]] = [[] for _ in modules]
    tables: list[tuple[Tensor, Tensor]] = []

    def hook(i: int) -> Callable:
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            inputs[i].append((kwargs.get("hidden_states", args[0] if args else None)).detach())
            outputs[i].append(output[0].detach())
            if i == 0:
                tables.append(tuple(t.detach() for t in kwargs["position_embeddings"]))
        return record

    handles = [m.register_forward_hook(hook(i), with_kwargs=True) for i, m in enumerate(modules)]
    try:
        for row in batches:
            model(row[None])
    finally:
        for h in handles:
            h.remove()
    cos = torch.cat([t[0] for t in tables])
    sin = torch.cat([t[1] for t in tables])
    return Calibration([torch.cat(x) for x in inputs], [torch.cat(y) for y in outputs], (cos, sin))


def input_covariances(calibration: Calibration) -> list[Tensor]:
    """Per layer, the second moment E[x x^T] (d, d, float64) of the recorded attention inputs."""
    return [
        (lambda flat: flat.T @ flat / len(flat))(x.reshape(-1, x.shape[-1]).double()) for x in calibration.inputs
    ]


def _relative_error(layer: HFAttention, x: Tensor, y: Tensor, tables: tuple[Tensor, Tensor]) -> Tensor:
    return (layer(x, position_embeddings=tables)[0] - y).pow(2).sum() / y.pow(2).sum().clamp_min(1e-30)


def fit_layers(
    model: nn.Module, calibration: Calibration, steps: int, lr: float | Sequence[float], batch: int = 2,
    generator: torch.Generator | None = None, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit each converted layer of ``model`` to its original's recorded outputs; returns per-layer relative
    squared errors before and after, the learning rate each layer kept, and the CPU seconds spent
    (``process_time``) and wall seconds.

    A quarter of the calibration windows (at least one) is held back to judge the fits; each step takes
    ``batch`` random windows of the rest, ``steps`` Adam steps with a cosine decay to zero. With several
    learning rates each layer is fitted from its starting point with each and keeps the one of least
    error on the held-back windows; when none improves on the starting point the layer stays as it was
    (learning rate 0), so a fit that only memorises the calibration text is not kept. Errors are
    reported on the held-back windows. Raises ``ValueError`` if the number of converted layers differs
    from the number recorded or fewer than two windows were recorded.
    """
    layers = [m for m in model.modules() if isinstance(m, HFAttention)]
    if len(layers) != len(calibration.inputs):
        raise ValueError(
            f"model has {len(layers)} converted layers; the calibration recorded {len(calibration.inputs)}"
        )
    rates = [lr] if isinstance(lr, (int, float)) else list(lr)
    count = len(calibration.inputs[0])
    if count < 2:
        raise ValueError(f"calibration: {count} window(s); expected at least 2 (some are held back)")
    held = max(1, count // 4)
    train, check = slice(0, count - held), slice(count - held, count)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    cpu, wall = time.process_time(), time.perf_counter()
    before, after, kept = [], [], []
    cos, sin = calibration.position_embeddings
    for i, (layer, x, y) in enumerate(zip(layers, calibration.inputs, calibration.outputs, strict=True)):
        params = [p for p in layer.parameters() if p.is_floating_point()]
        start = [p.detach().clone() for p in params]
        with torch.no_grad():
            before.append(float(_relative_error(layer, x[check], y[check], (cos[check], sin[check]))))
        best = (before[-1], 0.0, start)
        for rate in rates if steps > 0 else []:
            with torch.no_grad():
                for p, value in zip(params, start, strict=True):
                    p.copy_(value)
            optimiser = torch.optim.Adam(params, lr=rate)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
            for _ in range(steps):
                pick = torch.randint(count - held, (min(batch, count - held),), generator=generator)
                loss = _relative_error(layer, x[train][pick], y[train][pick], (cos[train][pick], sin[train][pick]))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
            with torch.no_grad():
                error = float(_relative_error(layer, x[check], y[check], (cos[check], sin[check])))
            if error < best[0]:
                best = (error, rate, [p.detach().clone() for p in params])
        with torch.no_grad():  # the best fit, or the starting point when no fit improved on it
            for p, value in zip(params, best[2], strict=True):
                p.copy_(value)
                p.grad = None
        after.append(best[0])
        kept.append(best[1])
        if log is not None and (i + 1) % 10 == 0:
            log(f"fitted {i + 1}/{len(layers)} layers")
    return {"before": before, "after": after, "learning_rates": kept, "cpu_seconds": time.process_time() - cpu,
            "seconds": time.perf_counter() - wall, "steps": steps, "lr": rates}


def distill(
    student: nn.Module, teacher: nn.Module, batches: Tensor, steps: int, lr: float,
    generator: torch.Generator | None = None, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``student``'s converted attention layers to match ``teacher``'s next-token distributions.

    Each of ``steps`` Adam steps (learning rate ``lr``, cosine decay) takes one random window of
    ``batches`` (count, length) and minimises KL(teacher || student) averaged over its tokens. Returns
    the losses and the CPU and wall seconds. The other parameters of ``student`` stay frozen.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    layers = [m for m in student.modules() if isinstance(m, HFAttention)]
    trainable = {id(p) for layer in layers for p in layer.parameters()}
    frozen = [p for p in student.parameters() if id(p) not in trainable and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    params = [p for layer in layers for p in layer.parameters() if p.is_floating_point()]
    cpu, wall = time.process_time(), time.perf_counter()
    losses = []
    try:
        if steps > 0:
            optimiser = torch.optim.Adam(params, lr=lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
            student.train()
            for step in range(steps):
                row = batches[int(torch.randint(len(batches), (1,), generator=generator))][None]
                with torch.no_grad():
                    target = F.log_softmax(teacher(row, use_cache=False).logits.float(), dim=-1)
                logits = student(row, use_cache=False).logits.float()
                loss = F.kl_div(F.log_softmax(logits, dim=-1), target, log_target=True, reduction="none").sum(-1).mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                losses.append(float(loss.detach()))
                if log is not None and (step + 1) % 10 == 0:
                    log(f"distillation step {step + 1}/{steps}: KL {losses[-1]:.4f}")
    finally:
        student.eval()
        for p in frozen:
            p.requires_grad_(True)
        for p in params:
            p.grad = None
    return {"losses": losses, "cpu_seconds": time.process_time() - cpu, "seconds": time.perf_counter() - wall,
            "steps": steps, "lr": lr}
