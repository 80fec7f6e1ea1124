"""The training loop shared by every model here: AdamW, cosine schedule with warm-up, gradient clipping,
evaluation every N steps, checkpoints that resume exactly, a progress bar, and DistributedDataParallel.

What is trained is described by a :class:`Task` (how to draw a batch, the loss, the evaluation set and
its metrics), so the same loop trains the language model, the ViT and the distillation of a compressed
encoder.

Data order does not depend on the number of processes: every process draws the same global batch from
one generator seeded by ``TrainConfig.seed`` and keeps its own slice of the rows. DDP averages the
gradients of the slices, so training with 2 processes follows the same trajectory as training with 1
(up to floating-point summation order), and a checkpoint saved under one world size resumes under another.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from structlab import runtime
from structlab.tucker.checkpoint import load_checkpoint, save_checkpoint

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``batch_size`` is the global batch (split across processes under DDP)."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float | None = None  # end of the cosine; default lr / 10
    warmup: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_every: int = 100
    seed: int = 0
    device: str = "cpu"
    autocast: bool = False  # bfloat16 autocast (CUDA)
    checkpoint: str | None = None  # written every ``eval_every`` steps and at the end; resumed from if present

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup={self.warmup!r}: expected a non-negative int")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}: expected > 0")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr={self.min_lr!r}: expected in [0, lr={self.lr}]")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip={self.grad_clip!r}: expected >= 0")
        object.__setattr__(self, "betas", tuple(self.betas))


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``lr`` down to ``min_lr`` at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    span = max(1, config.steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    return min_lr + 0.5 * (config.lr - min_lr) * (1 + math.cos(math.pi * progress))


class Task(Protocol):
    """What a model is trained on.

    ``sample`` draws a global batch (inputs, targets) on the CPU; ``loss`` is the mean training loss of a
    model output; ``eval_set`` is a fixed (inputs, targets) pair; ``metrics`` gives per-example values
    (name -> tensor of shape (batch,)) whose means over the evaluation set are reported as ``val_<name>``.
    """

    eval_set: tuple[Inputs, torch.Tensor]

    def sample(self, generator: torch.Generator, batch_size: int) -> tuple[Inputs, torch.Tensor]: ...

    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def metrics(self, output: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class Process:
    """This process's place in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def process_from_environment(device: str) -> Process:
    """Join the process group that ``torchrun`` describes in RANK/WORLD_SIZE/LOCAL_RANK, if any.

    Uses NCCL on CUDA (one GPU per local rank) and gloo on the CPU. Called once, by the command line.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return Process()
    process = Process(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda"):
        torch.cuda.set_device(process.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return process


def device_for(process: Process, device: str) -> str:
    """The device of this process: its own GPU under DDP on CUDA."""
    return f"cuda:{process.local_rank}" if device == "cuda" and process.distributed else device


@dataclass
class TrainResult:
    """What a run measured: ``history`` has one entry per evaluation (step, lr, train_loss, val_*)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0


def configure_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms, embeddings' 1-d parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def fit(
    model: torch.nn.Module,
    task: Task,
    config: TrainConfig,
    process: Process = Process(),
    desc: str = "train",
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` for ``config.steps`` steps, resuming from ``config.checkpoint`` if present.

    ``extra`` (JSON-serialisable, e.g. the vocabulary) is stored in the checkpoints.
    The model is moved to ``config.device``. Returns the evaluation history and the final metrics
    (evaluated at the last step). Raises ``ValueError`` when the batch does not split across processes.
    """
    if config.batch_size % process.world_size:
        raise ValueError(
            f"batch_size={config.batch_size}: expected a multiple of the number of processes ({process.world_size})"
        )
    if len(task.eval_set[1]) < process.world_size:
        raise ValueError(
            f"task.eval_set: {len(task.eval_set[1])} examples; expected >= {process.world_size} (one per process)"
        )
    device = torch.device(device_for(process, config.device))
    model.to(device)
    optimizer = configure_optimizer(model, config)
    data_rng = torch.Generator().manual_seed(config.seed)
    # Dropout draws from the global generator: one stream per process, restored on resume.
    torch.manual_seed(config.seed * 7919 + process.rank + 1)
    step, history = 0, []
    if config.checkpoint and Path(config.checkpoint).is_file():
        step, history = _resume(model, optimizer, data_rng, config, device)
    net = model
    if process.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    share = config.batch_size // process.world_size
    rows = slice(process.rank * share, (process.rank + 1) * share)  # this process's rows of the global batch

    resumed_seconds = history[-1]["seconds"] if history else 0.0
    quiet = {} if process.is_main else {"disable": True}
    bar = runtime.progress(total=config.steps, initial=step, desc=desc, **quiet)
    start = time.perf_counter()
    running, count = torch.zeros((), device=device), 0
    shown: dict[str, str] = {}  # the latest validation metrics, kept on the progress bar
    model.train()
    while step < config.steps:
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = task.sample(data_rng, config.batch_size)
        inputs, targets = _to(_rows(inputs, rows), device), targets[rows].to(device, non_blocking=True)
        with _autocast(device, config.autocast):
            loss = task.loss(net(*_tuple(inputs)), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        running += loss.detach()
        count += 1
        step += 1
        bar.update(1)
        if step % 10 == 0:  # reading the loss waits for the device: not at every step
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", **shown)
        if step % config.eval_every == 0 or step == config.steps:
            record = {"step": step, "lr": lr, "train_loss": float(running) / count}
            record.update({f"val_{k}": v for k, v in evaluate(model, task, process, device, config.autocast).items()})
            record["seconds"] = resumed_seconds + time.perf_counter() - start
            history.append(record)
            running, count = torch.zeros((), device=device), 0
            shown = {k: f"{v:.3f}" for k, v in record.items() if k.startswith("val_")}
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", **shown)
            if config.checkpoint:
                if process.is_main:
                    rng = {"data": data_rng.get_state(), "torch": torch.get_rng_state()}
                    if device.type == "cuda":
                        rng["cuda"] = torch.cuda.get_rng_state(device)
                    save_checkpoint(config.checkpoint, model, step=step, optimizer=optimizer, rng=rng,
                                    history=history, train_config=asdict(config), extra=extra)
                if process.distributed:
                    dist.barrier()
    bar.close()
    final = {k: v for k, v in history[-1].items() if k.startswith("val_")} if history else {}
    return TrainResult(history, final, time.perf_counter() - start, step)


def _resume(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data_rng: torch.Generator,
            config: TrainConfig, device: torch.device) -> tuple[int, list[dict[str, Any]]]:
    saved = load_checkpoint(config.checkpoint, device=device)
    if type(saved.model) is not type(model) or asdict(saved.model.config) != asdict(model.config):
        raise ValueError(
            f"checkpoint={config.checkpoint}: holds a {saved.kind} with another configuration than the model to train"
        )
    model.load_state_dict(saved.model.state_dict())
    if saved.optimizer is not None:
        optimizer.load_state_dict(saved.optimizer)
    if "data" in saved.rng:
        data_rng.set_state(saved.rng["data"])
    if "torch" in saved.rng:
        torch.set_rng_state(saved.rng["torch"])
    if "cuda" in saved.rng and device.type == "cuda":
        torch.cuda.set_rng_state(saved.rng["cuda"], device)
    return saved.step, saved.history


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    task: Task,
    process: Process = Process(),
    device: str | torch.device = "cpu",
    autocast: bool = False,
    batch_size: int = 32,
) -> dict[str, float]:
    """Means of ``task.metrics`` over the evaluation set (each process takes a share of it under DDP)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    inputs, targets = task.eval_set
    n = len(targets)
    mine = range(process.rank * n // process.world_size, (process.rank + 1) * n // process.world_size)
    sums: dict[str, torch.Tensor] = {}
    for lo in range(mine.start, mine.stop, batch_size):
        rows = slice(lo, min(lo + batch_size, mine.stop))
        with _autocast(device, autocast):
            values = task.metrics(model(*_tuple(_to(_rows(inputs, rows), device))), targets[rows].to(device))
        for name, value in values.items():
            sums[name] = sums.get(name, torch.zeros((), device=device, dtype=torch.float64)) + value.double().sum()
    names = sorted(sums)
    totals = torch.stack([sums[k] for k in names])
    if process.distributed:
        dist.all_reduce(totals)
    model.train(was_training)
    return {k: float(v) / n for k, v in zip(names, totals, strict=True)}


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _rows(inputs: Inputs, rows: slice) -> Inputs:
    return tuple(t[rows] for t in inputs) if isinstance(inputs, tuple) else inputs[rows]


def _to(inputs: Inputs, device: torch.device) -> Inputs:
    if isinstance(inputs, tuple):
        return tuple(t.to(device, non_blocking=True) for t in inputs)
    return inputs.to(device, non_blocking=True)


def cross_entropy_per_example(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) per example: logits (batch, ..., classes), targets (batch, ...) -> (batch,)."""
    losses = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="none")
    return losses.view(len(targets), -1).mean(dim=1)
