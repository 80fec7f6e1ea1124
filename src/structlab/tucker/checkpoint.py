"""Training checkpoints as one safetensors file: model, optimizer, random-number states, step, history.

Everything a run needs to continue exactly where it stopped is in the file, and nothing is pickled:
tensors are safetensors entries (``model.*``, ``optimizer.<param>.<key>``, ``rng.*``) and the rest
(model kind and configuration, optimizer hyper-parameters, step, history, training configuration) is
JSON in the safetensors metadata. Files are written atomically, so an interrupted save keeps the
previous checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from structlab.atomic import atomic_write_bytes
from structlab.errors import StructlabError

FORMAT = "structlab.tucker.checkpoint/1"


def model_kinds() -> dict[str, tuple[type, type]]:
    """Model kind -> (configuration dataclass, module class) of the models a checkpoint can hold."""
    from structlab.tucker.gpt import GPT, GPTConfig
    from structlab.tucker.vit import ViT, ViTConfig

    return {"gpt": (GPTConfig, GPT), "vit": (ViTConfig, ViT)}


def model_kind(model: torch.nn.Module) -> str:
    """The registered kind of ``model``; raises ``TypeError`` for a model of another class."""
    for kind, (_, cls) in model_kinds().items():
        if type(model) is cls:
            return kind
    names = [cls.__name__ for _, cls in model_kinds().values()]
    raise TypeError(f"model: a {type(model).__name__}; expected one of {names}")


def build_model(kind: str, config: dict[str, Any]) -> torch.nn.Module:
    """A freshly initialised model of ``kind`` with configuration ``config`` (a dataclass as a dict)."""
    kinds = model_kinds()
    if kind not in kinds:
        raise ValueError(f"kind={kind!r}: expected one of {sorted(kinds)}")
    config_cls, model_cls = kinds[kind]
    return model_cls(config_cls(**config))


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (on the requested device) and the state to resume its training."""

    model: torch.nn.Module
    kind: str
    step: int = 0
    optimizer: dict[str, Any] | None = None  # a torch optimizer state_dict
    rng: dict[str, torch.Tensor] = field(default_factory=dict)  # "torch", "cuda", "data"
    history: list[dict[str, Any]] = field(default_factory=list)
    train_config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # what the data needs (e.g. the vocabulary)


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    *,
    step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    history: list[dict[str, Any]] | None = None,
    train_config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` (a registered kind) and, optionally, its training state to ``path`` atomically.

    ``extra`` is JSON-serialisable information about the data (e.g. ``{"vocab": ...}``).
    Tied weights (one tensor under two names) are stored once and re-tied by the model on loading.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue  # a tied weight: the module it belongs to shares the first name's tensor
        seen.add(tensor.data_ptr())
        tensors[f"model.{name}"] = tensor.detach().to("cpu").contiguous()
    param_groups: list[dict[str, Any]] = []
    if optimizer is not None:
        state = optimizer.state_dict()
        param_groups = state["param_groups"]
        for index, values in state["state"].items():
            for key, value in values.items():
                tensors[f"optimizer.{index}.{key}"] = value.detach().to("cpu").contiguous()
    for key, value in (rng or {}).items():
        tensors[f"rng.{key}"] = value.to("cpu").contiguous()
    metadata = {
        "format": FORMAT,
        "kind": model_kind(model),
        "config": json.dumps(asdict(model.config)),
        "step": str(step),
        "optimizer": json.dumps(param_groups) if optimizer is not None else "",
        "history": json.dumps(history or []),
        "train_config": json.dumps(train_config or {}),
        "extra": json.dumps(extra or {}),
    }
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; the model is put on ``device``.

    Raises ``FileNotFoundError`` for a missing file and ``StructlabError`` for a file that is not a
    structlab checkpoint, whose tensors do not fit its model, or whose weights hold NaN or inf.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={path}: no such file")
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise StructlabError(f"checkpoint={path}: not a safetensors file ({err})") from err
    if metadata.get("format") != FORMAT:
        raise StructlabError(f"checkpoint={path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    model = build_model(metadata["kind"], json.loads(metadata["config"]))
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    for name, value in weights.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise StructlabError(
                f"checkpoint={path}: weight {name!r} {tuple(value.shape)} has {bad} non-finite value(s) (NaN or "
                "inf); a model with such weights gives meaningless outputs (a diverged training run?)"
            )
    missing, unexpected = model.load_state_dict(weights, strict=False)
    untied = [name for name in missing if not _is_tied(model, name, weights)]
    if untied or unexpected:
        raise StructlabError(
            f"checkpoint={path}: tensors do not fit the model (missing {untied}, unexpected {unexpected})"
        )
    optimizer = None
    if metadata["optimizer"]:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer = {"state": state, "param_groups": json.loads(metadata["optimizer"])}
    rng = {k.removeprefix("rng."): v for k, v in tensors.items() if k.startswith("rng.")}
    return Checkpoint(
        model=model.to(device),
        kind=metadata["kind"],
        step=int(metadata["step"]),
        optimizer=optimizer,
        rng=rng,
        history=json.loads(metadata["history"]),
        train_config=json.loads(metadata["train_config"]),
        extra=json.loads(metadata.get("extra", "{}")),
    )


def _is_tied(model: torch.nn.Module, name: str, weights: dict[str, torch.Tensor]) -> bool:
    """Whether parameter ``name`` is the same tensor as another, loaded, parameter of ``model``."""
    state = model.state_dict()
    return any(state[name].data_ptr() == state[other].data_ptr() for other in weights)
