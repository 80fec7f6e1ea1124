"""``SubjectConditioned``: make any PyTorch model subject-conditioned, in place.

The Linear, Conv1d and Conv2d layers of the model are replaced by
:class:`~structlab.subject.layers.SubjectLayer` s that keep the original layer (its pretrained weights and
its weight parametrisations) as ``base``. The model's own ``forward`` is untouched: the wrapper sets the
batch's subject ids on a state object that every subject layer reads, then calls the model.

Layers that are not wrapped, and why (``skipped_layers``):

* ``nn.MultiheadAttention``: its ``forward`` reads ``in_proj_weight`` and ``out_proj.weight`` directly
  (through ``F.multi_head_attention_forward``), so a replaced ``out_proj`` would never be called and the
  input projection is no module at all. Both are skipped with a warning; attention written with
  ``nn.Linear`` projections (as in nanoGPT or timm) is wrapped like any other Linear layer.
* subclasses that override ``forward`` (e.g. a convolution that renormalises its weight inside
  ``forward``): the adapter computes with the weight directly and could not reproduce that forward. Use a
  ``torch.nn.utils.parametrize`` constraint instead, which is kept.
* Conv3d and transposed convolutions: not supported.
* layers left out by ``include``/``exclude``.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import numbers
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize

from structlab.subject.layers import (
    UNKNOWN_SUBJECT,
    WRAPPABLE,
    Path,
    SubjectLayer,
    SubjectState,
    plain_class,
    rank_limit,
    staged,
)

FORMAT = "structlab.subject/1"
_UNSUPPORTED = (nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class BaseKeys(NamedTuple):
    """What :meth:`SubjectConditioned.load_base_state_dict` did not match, in the unwrapped model's names."""

    missing_keys: list[str]
    unexpected_keys: list[str]


@dataclass(frozen=True)
class WrappedLayer:
    """One wrapped layer: its qualified name in the model, kind, rank and rank limit."""

    name: str
    kind: str
    rank: int
    limit: int
    adapter_parameters_per_subject: int


class SubjectConditioned(nn.Module):
    """Wrap ``model``'s Linear/Conv1d/Conv2d layers with per-subject rank-``rank`` adapters, in place.

    Args:
        model: any ``nn.Module`` whose wrapped layers see the batch in their input's first dimension.
        n_subjects: number of subjects with an adapter (ids ``0 .. n_subjects - 1``).
        rank: adapter rank ``r`` of every wrapped layer.
        alpha: scale of the corrections, ``W_s = W + (alpha / r) B_s A_s``.
        include: glob patterns of layer names (as in ``model.named_modules()``) to wrap; default all.
        exclude: glob patterns of layer names to leave as they are.
        labels: a string label per subject (the subject registry); default ``"0" .. "n-1"``.
        subject_dropout: fraction of training trials computed as :data:`UNKNOWN_SUBJECT`, so that the shared
            weights alone stay a good subject-agnostic model. Only in training mode.
        clip_rank: where ``rank`` exceeds a layer's :func:`rank_limit`, use the limit for that layer instead
            of raising.
        path: how mixed-subject convolutions are computed (``"auto"``, ``"merged"``, ``"factored"``; see
            :mod:`structlab.subject.layers`).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; a label is not a string.
        ValueError: ``n_subjects < 1``, ``rank < 1``, ``subject_dropout`` outside [0, 1), a rank above a
            layer's limit (without ``clip_rank``), duplicate labels, or nothing to wrap.
    """

    def __init__(
        self,
        model: nn.Module,
        n_subjects: int,
        rank: int = 4,
        alpha: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        *,
        labels: Sequence[str] | None = None,
        subject_dropout: float = 0.0,
        clip_rank: bool = False,
        path: Path = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model={type(model).__name__}: expected a torch.nn.Module")
        if isinstance(model, SubjectConditioned):
            raise TypeError("model: already SubjectConditioned; wrap the original model once")
        _check_int("n_subjects", n_subjects, 1)
        _check_int("rank", rank, 1)
        if not isinstance(alpha, int | float) or not alpha > 0:
            raise ValueError(f"alpha={alpha!r}: expected a positive number")
        if path not in ("auto", "merged", "factored"):
            raise ValueError(f"path={path!r}: expected 'auto', 'merged' or 'factored'")
        for arg, patterns in (("include", include or ()), ("exclude", exclude)):
            if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
                raise TypeError(f"{arg}={patterns!r}: expected a sequence of glob patterns (str)")
        self.rank = rank
        self.alpha = float(alpha)
        self.include = list(include) if include is not None else None
        self.exclude = list(exclude)
        self.clip_rank = clip_rank
        self.subject_dropout = subject_dropout
        self.labels: list[str] = []
        self._register_labels(labels if labels is not None else [str(i) for i in range(n_subjects)], n_subjects)
        self._state = SubjectState()
        self.skipped_layers: dict[str, str] = {}
        self.model = self._wrap(model, n_subjects, path)

    # --- wrapping -----------------------------------------------------------------------------------

    def _wrap(self, model: nn.Module, n_subjects: int, path: Path) -> nn.Module:
        inside_attention = {
            id(sub) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for sub in m.modules()
        }
        chosen: list[tuple[str, nn.Module, int]] = []
        too_small: list[str] = []
        lazy: list[str] = []
        for name, module in model.named_modules():
            if isinstance(module, nn.MultiheadAttention):
                self.skipped_layers[name or "<model>"] = (
                    "nn.MultiheadAttention reads in_proj_weight and out_proj.weight directly, so its "
                    "projections cannot be wrapped by replacing submodules; write the attention with "
                    "nn.Linear projections to condition it"
                )
                continue
            if id(module) in inside_attention or not isinstance(module, WRAPPABLE + _UNSUPPORTED):
                continue
            label = name or "<model>"
            uninitialised = isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()
            reason = self._skip_reason(name, module, lazy=uninitialised)
            if reason:
                self.skipped_layers[label] = reason
                continue
            if uninitialised:
                lazy.append(label)
                continue
            limit = rank_limit(module)
            if self.rank > limit and not self.clip_rank:
                too_small.append(f"{label} (limit {limit})")
            chosen.append((name, module, min(self.rank, limit)))
        if lazy:
            raise ValueError(
                f"model: {lazy} are lazy layers whose shapes are not known yet (in_features/in_channels is "
                "inferred on the first call); run the model once on an input of the right shape before "
                "wrapping it, or exclude=[...] those layers"
            )
        if too_small:
            raise ValueError(
                f"rank={self.rank}: larger than these layers allow: {', '.join(too_small)}; use a smaller "
                "rank, exclude=[...] those layers, or clip_rank=True to use each layer's limit there"
            )
        if not chosen:
            why = "; ".join(f"{k}: {v}" for k, v in self.skipped_layers.items()) or "it has none"
            raise ValueError(
                f"model={type(model).__name__}: nothing to wrap (no nn.Linear, nn.Conv1d or nn.Conv2d layer "
                f"selected; {why})"
            )
        skipped_attention = [k for k, v in self.skipped_layers.items() if v.startswith("nn.MultiheadAttention")]
        if skipped_attention:
            warnings.warn(
                f"SubjectConditioned: left nn.MultiheadAttention layers unconditioned: {skipped_attention}",
                stacklevel=3,
            )
        # One module may sit at several places (weight sharing): every place gets the same wrapper.
        places: dict[int, list[tuple[nn.Module, str]]] = {}
        for parent in model.modules():
            for child_name, child in parent._modules.items():
                if child is not None:
                    places.setdefault(id(child), []).append((parent, child_name))
        # Build every wrapper first and swap only when all were built: a failure half-way leaves the
        # user's model exactly as it was.
        layers = [
            (name, module, SubjectLayer(module, n_subjects, rank, self.alpha, self._state, name=name, path=path))
            for name, module, rank in chosen
        ]
        self._wrapped: dict[str, WrappedLayer] = {}
        root = model
        for name, module, layer in layers:
            if not name:
                root = layer
            for parent, child_name in places.get(id(module), []):
                setattr(parent, child_name, layer)
            self._wrapped[name] = WrappedLayer(
                name, plain_class(module).__name__, layer.rank, rank_limit(module),
                layer.A[0].numel() + layer.B[0].numel(),
            )
        return root

    def _skip_reason(self, name: str, module: nn.Module, lazy: bool = False) -> str:
        if isinstance(module, _UNSUPPORTED):
            return f"{type(module).__name__} is not supported (Linear, Conv1d and Conv2d are)"
        plain = plain_class(module)
        if plain.forward not in (nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward):
            return (
                f"{plain.__name__} overrides forward(); the adapter computes with the weight directly and "
                "could not reproduce it (use a torch.nn.utils.parametrize constraint instead)"
            )
        # (an uninitialised lazy layer's own initialisation hook is not the user's: it is reported as lazy)
        hooks = [kind for kind, registry in (("forward pre-hooks", module._forward_pre_hooks),
                                             ("forward hooks", module._forward_hooks)) if registry and not lazy]
        if hooks:
            found = [type(h).__name__ for registry in (module._forward_pre_hooks, module._forward_hooks)
                     for h in registry.values()]
            return (
                f"has {' and '.join(hooks)} ({', '.join(found)}), e.g. the hook-based torch.nn.utils.weight_norm "
                "or spectral_norm; the adapter computes with the weight directly and would bypass them (a stale "
                "weight breaks the next training step): use torch.nn.utils.parametrizations.weight_norm or "
                "spectral_norm instead, which are kept"
            )
        if self.include is not None and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return f"not matched by include={self.include}"
        if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return f"matched by exclude={self.exclude}"
        return ""

    @property
    def wrapped_layers(self) -> dict[str, WrappedLayer]:
        """The wrapped layers by qualified name, with their kind, rank and rank limit."""
        return dict(self._wrapped)

    def subject_layers(self) -> Iterator[tuple[str, SubjectLayer]]:
        """(name, layer) of every subject-conditioned layer."""
        seen = set()
        for module in self.model.modules():
            if isinstance(module, SubjectLayer) and id(module) not in seen:
                seen.add(id(module))
                yield module.name, module

    # --- subjects -----------------------------------------------------------------------------------

    @property
    def n_subjects(self) -> int:
        return len(self.labels)

    def _register_labels(self, labels: Sequence[str], expected: int) -> None:
        labels = list(labels)
        if len(labels) != expected:
            raise ValueError(f"labels: {len(labels)} given; expected one per subject ({expected})")
        for label in labels:
            if not isinstance(label, str):
                raise TypeError(f"labels: {label!r} is a {type(label).__name__}; expected str")
        clashes = sorted({lab for lab in labels if labels.count(lab) > 1 or lab in self.labels})
        if clashes:
            raise ValueError(f"labels: {clashes} are already registered or repeated; labels must be unique")
        self.labels.extend(labels)

    def add_subjects(self, k: int, labels: Sequence[str] | None = None) -> list[int]:
        """Add ``k`` subjects with fresh adapters (``B_s = 0``); returns their ids.

        Adapter parameters are replaced by larger ones: build optimisers after calling this.
        """
        _check_int("k", k, 1)
        first = self.n_subjects
        self._register_labels(labels if labels is not None else [str(first + i) for i in range(k)], k)
        for _, layer in self.subject_layers():
            layer.add_subjects(k)
        return list(range(first, first + k))

    def subject_id(self, label: str) -> int:
        """The id of the subject registered as ``label``."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(f"label={label!r}: no such subject; registered: {self.labels}") from None

    def subject_ids(self, labels: Sequence[str], unknown: str = "raise") -> torch.Tensor:
        """Ids of ``labels``; with ``unknown="shared"`` an unregistered label maps to UNKNOWN_SUBJECT."""
        if unknown not in ("raise", "shared"):
            raise ValueError(f"unknown={unknown!r}: expected 'raise' or 'shared'")
        index = {lab: i for i, lab in enumerate(self.labels)}
        out = []
        for label in labels:
            if label not in index and unknown == "raise":
                raise ValueError(f"labels: {label!r} is not a registered subject (unknown='shared' maps it to -1)")
            out.append(index.get(label, UNKNOWN_SUBJECT))
        return torch.tensor(out, dtype=torch.long)

    def _check_subjects(self, subjects, batch: int, device: torch.device) -> torch.Tensor:
        """``subjects`` as a (batch,) long tensor on ``device``: ids, one id, labels or one label."""
        if isinstance(subjects, str):
            subjects = [subjects] * batch
        elif isinstance(subjects, numbers.Integral) and not isinstance(subjects, bool | np.bool_):
            subjects = [int(subjects)] * batch  # Python and numpy integers alike
        if not isinstance(subjects, torch.Tensor):
            values = np.asarray(subjects) if not isinstance(subjects, np.ndarray) else subjects
            if values.size == 0:
                subjects = torch.zeros(values.shape, dtype=torch.long)
            elif values.dtype.kind in "UO" and all(isinstance(v, str) for v in values.ravel()):
                unknown = sorted({v for v in values.ravel().tolist() if v not in self.labels})
                if unknown:
                    raise ValueError(
                        f"subjects: labels {unknown[:8]} are not registered; registered: {self.labels[:12]}"
                        f"{' ...' if len(self.labels) > 12 else ''}"
                    )
                subjects = self.subject_ids(values.ravel().tolist()).reshape(values.shape)
            elif values.dtype.kind not in "iu":
                raise TypeError(
                    f"subjects: {type(subjects).__name__} of dtype {values.dtype}; expected integer subject ids "
                    "or registered labels (str)"
                )
            else:
                subjects = torch.as_tensor(values)
        if subjects.dtype.is_floating_point or subjects.dtype.is_complex or subjects.dtype == torch.bool:
            raise TypeError(f"subjects: dtype {subjects.dtype}; expected integer subject ids")
        if not torch.jit.is_tracing() and (subjects.dim() != 1 or subjects.shape[0] != batch):
            raise ValueError(
                f"subjects: shape {tuple(subjects.shape)}; expected one id per sample, ({batch},)"
            )
        # The range check reads the ids on the host, which tracing and compiling must not do; there an id
        # out of range fails in the adapters' gather instead.
        if not staged() and batch and (
            int(subjects.min()) < UNKNOWN_SUBJECT or int(subjects.max()) >= self.n_subjects
        ):
            bad = subjects[(subjects < UNKNOWN_SUBJECT) | (subjects >= self.n_subjects)][0]
            raise ValueError(
                f"subjects: id {int(bad)} out of range; expected 0..{self.n_subjects - 1} or "
                f"UNKNOWN_SUBJECT ({UNKNOWN_SUBJECT})"
            )
        return subjects.to(device=device, dtype=torch.long)

    # --- computing ----------------------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, subjects: torch.Tensor | np.ndarray | Sequence[int] | Sequence[str] | int | str
    ) -> torch.Tensor:
        """Run the model on ``x`` with subject ``subjects[n]`` for sample ``n``.

        Args:
            x: the model's input; its first dimension is the batch (it may be empty).
            subjects: one id per sample (a tensor, numpy array or list of ints), one int for the whole
                batch, or registered labels (one per sample, or one for the whole batch);
                :data:`UNKNOWN_SUBJECT` for the shared weights alone.

        Raises:
            TypeError: ``x`` is not a tensor; ``subjects`` are neither integers nor labels.
            ValueError: the wrong number of ids, an id out of range, or a label that is not registered.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: {type(x).__name__}; expected a torch.Tensor")
        if x.dim() == 0:
            raise ValueError("x: a scalar; expected a batch in the first dimension")
        subjects = self._check_subjects(subjects, x.shape[0], x.device)
        if self.training and self.subject_dropout > 0:
            dropped = torch.rand(subjects.shape, device=subjects.device) < self.subject_dropout
            subjects = subjects.masked_fill(dropped, UNKNOWN_SUBJECT)
        self._state.set(subjects)
        try:
            return self.model(x)
        finally:
            self._state.set(None)

    @property
    def subject_dropout(self) -> float:
        return self._subject_dropout

    @subject_dropout.setter
    def subject_dropout(self, value: float) -> None:
        if not isinstance(value, int | float) or not 0 <= value < 1:
            raise ValueError(f"subject_dropout={value!r}: expected a fraction in [0, 1)")
        self._subject_dropout = float(value)

    # --- training -----------------------------------------------------------------------------------

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every subject's ``A_s`` and ``B_s`` (one tensor of each per wrapped layer)."""
        return [p for _, layer in self.subject_layers() for p in (layer.A, layer.B)]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an adapter (the original model's)."""
        adapters = {id(p) for p in self.adapter_parameters()}
        return [p for p in self.parameters() if id(p) not in adapters]

    def freeze_shared(self, frozen: bool = True) -> None:
        """Stop (or, with ``frozen=False``, restart) gradients to the shared parameters."""
        for p in self.shared_parameters():
            p.requires_grad_(not frozen)

    def param_groups(
        self,
        lr: float | None = None,
        weight_decay: float | None = None,
        adapter_lr: float | None = None,
        adapter_weight_decay: float | None = 0.0,
    ) -> list[dict]:
        """Optimiser parameter groups: shared parameters, then adapters, each with its own settings.

        ``None`` leaves a setting to the optimiser's default. Frozen parameters are left out.
        """
        groups = []
        for params, group_lr, decay in (
            (self.shared_parameters(), lr, weight_decay),
            (self.adapter_parameters(), adapter_lr, adapter_weight_decay),
        ):
            trainable = [p for p in params if p.requires_grad]
            if not trainable:
                continue
            group: dict = {"params": trainable}
            if group_lr is not None:
                group["lr"] = group_lr
            if decay is not None:
                group["weight_decay"] = decay
            groups.append(group)
        return groups

    # --- deployment ---------------------------------------------------------------------------------

    def merged(self, subject: int | str) -> nn.Module:
        """A plain copy of the model with subject ``subject``'s correction folded into each weight.

        ``subject`` is an id, a registered label or :data:`UNKNOWN_SUBJECT` (the shared model). The copy
        is independent of this wrapper: its parametrised modules get classes of their own, since a deep
        copy of a parametrised module otherwise shares its injected class with the original (and
        ``remove_parametrizations`` on the copy would break the original).
        """
        sid = self.subject_id(subject) if isinstance(subject, str) else subject
        if not isinstance(sid, int) or isinstance(sid, bool) or not UNKNOWN_SUBJECT <= sid < self.n_subjects:
            raise ValueError(
                f"subject={subject!r}: expected an id in 0..{self.n_subjects - 1}, a registered label or "
                f"UNKNOWN_SUBJECT ({UNKNOWN_SUBJECT})"
            )
        with torch.no_grad():
            merged_layers = {id(layer): layer.merged_layer(sid) for _, layer in self.subject_layers()}
        originals = {id(layer) for _, layer in self.subject_layers()}
        # Deep-copy everything but the subject layers (their merged replacements are new modules).
        memo = {}
        for _, layer in self.subject_layers():
            memo[id(layer)] = merged_layers[id(layer)]
        if id(self.model) in originals:
            return merged_layers[id(self.model)]
        clone = copy.deepcopy(self.model, memo)
        for module in clone.modules():
            if parametrize.is_parametrized(module):
                _own_class(module)
        return clone

    # --- save / load --------------------------------------------------------------------------------

    def base_key(self, key: str) -> str | None:
        """The name of state-dict entry ``key`` in the unwrapped model (None for an adapter's ``A``/``B``)."""
        if not key.startswith("model."):
            return None
        key = key.removeprefix("model.")
        for name, _ in self.subject_layers():
            prefix = f"{name}." if name else ""
            if key in (f"{prefix}A", f"{prefix}B"):
                return None
            if key.startswith(f"{prefix}base."):
                return prefix + key.removeprefix(f"{prefix}base.")
        return key

    def load_base_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True):
        """Load a checkpoint of the unwrapped model (its own ``state_dict()`` names) into the shared weights.

        The adapters are left as they are. Names are those of the model before wrapping (a wrapped layer
        ``features.0`` keeps ``features.0.weight``, also for parametrised weights:
        ``features.0.parametrizations.weight.original``).

        Returns:
            ``(missing_keys, unexpected_keys)`` in the unwrapped model's names (empty with ``strict=True``).

        Raises:
            TypeError: ``state_dict`` is not a mapping.
            ValueError: with ``strict=True``, names missing from or unknown to the unwrapped model, or a
                tensor of the wrong shape.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: {type(state_dict).__name__}; expected a mapping of names to tensors")
        own = {}
        for key in self.state_dict():
            plain = self.base_key(key)
            if plain is not None:
                own[plain] = key
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if strict and (missing or unexpected):
            raise ValueError(
                f"state_dict: does not match the unwrapped model: missing {missing[:8]}"
                f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                f"{' ...' if len(unexpected) > 8 else ''}"
            )
        renamed = {own[k]: v for k, v in state_dict.items() if k in own}
        current = self.state_dict()
        wrong = [f"{k} {tuple(v.shape)} (expected {tuple(current[own[k]].shape)})" for k, v in state_dict.items()
                 if k in own and tuple(v.shape) != tuple(current[own[k]].shape)]
        if wrong:
            raise ValueError(f"state_dict: tensors of the wrong shape: {wrong[:8]}")
        self.load_state_dict(renamed, strict=False)
        return BaseKeys(missing, unexpected)

    def config(self) -> dict:
        """What ``load`` needs to wrap a fresh copy of the model the same way (JSON-serialisable)."""
        return {
            "format": FORMAT,
            "n_subjects": self.n_subjects,
            "rank": self.rank,
            "alpha": self.alpha,
            "include": self.include,
            "exclude": self.exclude,
            "clip_rank": self.clip_rank,
            "subject_dropout": self.subject_dropout,
            "labels": self.labels,
            "wrapped_layers": {name: w.rank for name, w in self._wrapped.items()},
        }

    def save(self, path: str | os.PathLike[str]) -> FilePath:
        """Write every weight and the subject registry to a safetensors file, atomically."""
        from safetensors.torch import save_model

        path = FilePath(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_model(self, tmp, metadata={FORMAT: json.dumps(self.config())}, force_contiguous=True)
            os.replace(tmp, path)
        except BaseException:
            FilePath(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module) -> SubjectConditioned:
        """Wrap ``model`` (a fresh instance of the saved architecture) as saved and load the weights.

        Raises:
            ValueError: the file is not a saved SubjectConditioned model, or ``model`` does not match it.
        """
        from safetensors import safe_open
        from safetensors.torch import load_model

        with safe_open(os.fspath(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if FORMAT not in meta:
            raise ValueError(f"path={os.fspath(path)!r}: not a saved SubjectConditioned model (no {FORMAT} metadata)")
        cfg = json.loads(meta[FORMAT])
        wrapped = cls(
            model, cfg["n_subjects"], rank=cfg["rank"], alpha=cfg["alpha"], include=cfg["include"],
            exclude=cfg["exclude"], labels=cfg["labels"], subject_dropout=cfg["subject_dropout"],
            clip_rank=cfg["clip_rank"],
        )
        got = {name: w.rank for name, w in wrapped._wrapped.items()}
        if got != cfg["wrapped_layers"]:
            raise ValueError(
                f"model: wraps layers {got}, but {os.fspath(path)!r} was saved with {cfg['wrapped_layers']}"
            )
        missing, unexpected = load_model(wrapped, os.fspath(path), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"model: does not match {os.fspath(path)!r}: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        return wrapped


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: expected an int")
    if value < minimum:
        raise ValueError(f"{name}={value}: expected an int >= {minimum}")


def _own_class(module: nn.Module) -> None:
    """Give a parametrised module a class of its own (a copy of its injected class)."""
    cls = type(module)
    namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)
