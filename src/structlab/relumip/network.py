"""A trained feed-forward ReLU network as plain NumPy data, independent of any formulation.

A network is a sequence of affine layers ``a_l = W_l h_{l-1} + b_l``; every layer but the last is
followed by ``ReLU`` (``h = max(0, a)``) or a clipped ReLU (``h = min(max(0, a), c)``), the last one is
linear. Input and output scaling travel with the network, so ``net(x)`` takes and returns values in the
user's units::

    net(x) = output_offset + output_scale * f((x - input_offset) / input_scale)

Formulations and bounds work on :meth:`ReluNetwork.folded`, where the scaling is folded into the first
and last affine maps (the hidden layers are unchanged).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

Activation = Literal["relu", "clipped_relu", "linear"]
ACTIVATIONS: tuple[str, ...] = ("relu", "clipped_relu", "linear")


@dataclass(frozen=True)
class Layer:
    """One affine map ``a = weight @ h + bias`` followed by ``activation``.

    ``weight`` has shape (n_out, n_in), ``bias`` (n_out,); ``clip`` (n_out,) is the upper value ``c`` of a
    clipped ReLU (``None`` otherwise). Arrays are float64 and read-only.
    """

    weight: np.ndarray
    bias: np.ndarray
    activation: Activation = "relu"
    clip: np.ndarray | None = None

    def __post_init__(self) -> None:
        weight = _frozen(self.weight, "weight")
        bias = _frozen(self.bias, "bias")
        if weight.ndim != 2:
            raise ValueError(f"weight: shape {weight.shape}; expected a 2-D array (n_out, n_in)")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias: shape {bias.shape}; expected ({weight.shape[0]},) to match weight")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: expected one of {ACTIVATIONS}")
        clip = self.clip
        if self.activation == "clipped_relu":
            if clip is None:
                raise ValueError("clip: None; a clipped_relu layer needs its upper values c > 0")
            clip = _frozen(np.broadcast_to(np.asarray(clip, dtype=np.float64), bias.shape), "clip")
            if not np.all(clip > 0):
                raise ValueError(f"clip: min {clip.min()}; expected every clip value c > 0")
        elif clip is not None:
            raise ValueError(f"clip={clip!r}: only a clipped_relu layer has clip values")
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "clip", clip)

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    def activate(self, a: np.ndarray) -> np.ndarray:
        """The activation applied to pre-activations ``a`` (any shape ending in n_out)."""
        if self.activation == "linear":
            return a
        h = np.maximum(a, 0.0)
        return np.minimum(h, self.clip) if self.activation == "clipped_relu" else h


def _frozen(values: Any, name: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values; expected finite numbers")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class ReluNetwork:
    """A feed-forward ReLU network ``x -> y`` with its input and output scaling.

    ``layers[:-1]`` are the hidden layers (``relu`` or ``clipped_relu``), ``layers[-1]`` is linear.
    ``input_offset``/``input_scale`` have shape (n_in,), ``output_offset``/``output_scale`` (n_out,).
    """

    layers: tuple[Layer, ...]
    input_offset: np.ndarray = field(default=None)  # type: ignore[assignment]
    input_scale: np.ndarray = field(default=None)  # type: ignore[assignment]
    output_offset: np.ndarray = field(default=None)  # type: ignore[assignment]
    output_scale: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers:
            raise ValueError("layers: empty; expected at least one (linear output) layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}]: {type(layer).__name__}; expected a Layer")
            if i and layer.n_in != layers[i - 1].n_out:
                raise ValueError(
                    f"layers[{i}]: takes {layer.n_in} inputs but layers[{i - 1}] gives {layers[i - 1].n_out}"
                )
            last = i == len(layers) - 1
            if last and layer.activation != "linear":
                raise ValueError(f"layers[{i}]: activation {layer.activation!r}; the output layer must be linear")
            if not last and layer.activation == "linear":
                raise ValueError(
                    f"layers[{i}]: a linear hidden layer; merge it into the next one (hidden layers are "
                    "relu or clipped_relu)"
                )
        object.__setattr__(self, "layers", layers)
        n_in, n_out = layers[0].n_in, layers[-1].n_out
        for name, default, n in (
            ("input_offset", 0.0, n_in), ("input_scale", 1.0, n_in),
            ("output_offset", 0.0, n_out), ("output_scale", 1.0, n_out),
        ):
            value = default if getattr(self, name) is None else getattr(self, name)
            arr = np.asarray(value, dtype=np.float64)
            if arr.ndim > 1 or (arr.ndim == 1 and arr.shape != (n,)):
                raise ValueError(f"{name}: shape {arr.shape}; expected a scalar or shape ({n},)")
            arr = _frozen(np.broadcast_to(arr, (n,)), name)
            if name.endswith("scale") and not np.all(arr > 0):
                raise ValueError(f"{name}: {arr}; expected positive scale factors")
            object.__setattr__(self, name, arr)

    # ----------------------------------------------------------------------------------------- shape
    @property
    def input_dim(self) -> int:
        return self.layers[0].n_in

    @property
    def output_dim(self) -> int:
        return self.layers[-1].n_out

    @property
    def hidden(self) -> tuple[Layer, ...]:
        """The hidden (ReLU or clipped ReLU) layers."""
        return self.layers[:-1]

    @property
    def widths(self) -> tuple[int, ...]:
        """Number of neurons of each hidden layer."""
        return tuple(layer.n_out for layer in self.hidden)

    @property
    def n_neurons(self) -> int:
        return sum(self.widths)

    def __repr__(self) -> str:
        kinds = {layer.activation for layer in self.hidden} or {"none"}
        dims = "-".join(str(d) for d in (self.input_dim, *self.widths, self.output_dim))
        return f"ReluNetwork({dims}, activation={'/'.join(sorted(kinds))})"

    # --------------------------------------------------------------------------------------- forward
    def __call__(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        return self.forward(x)

    def forward(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        """Outputs for inputs ``x`` of shape (n_in,) or (batch, n_in), in the user's units."""
        return self.pre_activations(x)[-1]

    def pre_activations(self, x: np.ndarray | Sequence[float]) -> list[np.ndarray]:
        """Pre-activations ``a_l`` of every layer of the folded network; the last one is the output ``y``."""
        arr = self._check_inputs(x)
        out = []
        h = (arr - self.input_offset) / self.input_scale
        for layer in self.layers:
            a = h @ layer.weight.T + layer.bias
            out.append(a)
            h = layer.activate(a)
        out[-1] = self.output_offset + self.output_scale * out[-1]
        if np.ndim(x) == 1:
            out = [a[0] for a in out]
        return out

    def activation_pattern(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        """The linear piece of every hidden neuron at ``x``: 0 inactive, 1 linear, 2 clipped at ``c``.

        Shape (batch, n_neurons) (or (n_neurons,) for one input), dtype int8.
        """
        pre = self.pre_activations(x)[:-1]
        pieces = []
        for layer, a in zip(self.hidden, pre, strict=True):
            piece = (a > 0).astype(np.int8)
            if layer.activation == "clipped_relu":
                piece += (a > layer.clip).astype(np.int8)
            pieces.append(piece)
        return np.concatenate(pieces, axis=-1) if pieces else np.zeros(np.shape(x)[:-1] + (0,), np.int8)

    def _check_inputs(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim not in (1, 2) or arr.shape[-1] != self.input_dim:
            raise ValueError(f"x: shape {arr.shape}; expected ({self.input_dim},) or (batch, {self.input_dim})")
        return arr.reshape(-1, self.input_dim)

    # --------------------------------------------------------------------------------------- scaling
    def with_scaling(
        self,
        input_offset: Any = 0.0,
        input_scale: Any = 1.0,
        output_offset: Any = 0.0,
        output_scale: Any = 1.0,
    ) -> ReluNetwork:
        """The same layers with new input/output scaling (see the module docstring for the map)."""
        return ReluNetwork(self.layers, input_offset, input_scale, output_offset, output_scale)

    def folded(self) -> ReluNetwork:
        """The same function with the scaling folded into the first and last affine maps.

        First layer: ``W (x - o)/s + b = (W / s) x + (b - W (o / s))``; last layer: ``o' + s' (W h + b)``.
        The hidden pre-activations are unchanged, so bounds on them mean the same in both networks.
        """
        layers = list(self.layers)
        first = layers[0]
        w0 = first.weight / self.input_scale
        b0 = first.bias - first.weight @ (self.input_offset / self.input_scale)
        layers[0] = Layer(w0, b0, first.activation, first.clip)
        last = layers[-1]
        s = self.output_scale[:, None]
        layers[-1] = Layer(last.weight * s, self.output_offset + self.output_scale * last.bias, "linear")
        return ReluNetwork(tuple(layers))

    @property
    def is_folded(self) -> bool:
        return bool(
            np.all(self.input_offset == 0) and np.all(self.input_scale == 1)
            and np.all(self.output_offset == 0) and np.all(self.output_scale == 1)
        )

    # ------------------------------------------------------------------------------------- importers
    @classmethod
    def from_torch(cls, module: torch.nn.Module, **scaling: Any) -> ReluNetwork:
        """Read a ``torch.nn.Sequential`` of ``Linear``, ``ReLU``, ``ReLU6`` and ``Hardtanh(0, c)`` layers.

        ``Dropout``, ``Identity`` and a leading ``Flatten`` are skipped (they are the identity at
        inference); consecutive ``Linear`` layers are multiplied out. ``scaling`` takes the keyword
        arguments of :meth:`with_scaling`. Raises ``TypeError`` for any other layer and ``ValueError``
        for a ``Hardtanh`` whose lower value is not 0 or a network that does not end in ``Linear``.
        """
        import torch
        from torch import nn

        if not isinstance(module, nn.Module):
            raise TypeError(f"module: {type(module).__name__}; expected a torch.nn.Sequential")
        steps: list[tuple[str, Any]] = []
        for i, child in enumerate(_flatten_sequential(module)):
            if isinstance(child, nn.Linear):
                with torch.no_grad():
                    w = child.weight.detach().cpu().double().numpy()
                    b = (
                        child.bias.detach().cpu().double().numpy()
                        if child.bias is not None else np.zeros(w.shape[0])
                    )
                steps.append(("affine", (w, b)))
            elif isinstance(child, nn.ReLU):
                steps.append(("relu", None))
            elif isinstance(child, nn.Hardtanh):  # also ReLU6 = Hardtanh(0, 6)
                if child.min_val != 0:
                    raise ValueError(
                        f"module[{i}]: Hardtanh(min_val={child.min_val}); a clipped ReLU needs min_val=0"
                    )
                steps.append(("clipped_relu", float(child.max_val)))
            elif isinstance(child, (nn.Dropout, nn.Identity)) or (isinstance(child, nn.Flatten) and i == 0):
                continue
            else:
                raise TypeError(
                    f"module[{i}]: {type(child).__name__} is not supported; expected Linear, ReLU, ReLU6, "
                    "Hardtanh(0, c), Dropout, Identity or a leading Flatten"
                )
        return cls(_layers_from_steps(steps, source="module"), **_scaling_kwargs(scaling))

    @classmethod
    def from_onnx(cls, model: str | os.PathLike[str] | Any, **scaling: Any) -> ReluNetwork:
        """Read an ONNX model (a path or an ``onnx.ModelProto``) of a fully-connected ReLU network.

        Reads the networks VNN-COMP publishes and torch's exporters write, as shipped: Flatten, Reshape,
        Squeeze/Unsqueeze, Transpose, Identity, Dropout, Constant; Add/Sub/Mul/Div by constants (input
        normalisation, folded into the first affine layer); Gemm (transA/transB, alpha, beta, broadcast
        biases) and MatMul; BatchNormalization (folded into the next affine map); Relu and Clip (a clipped
        ReLU; ``Clip(0, 6)`` is ReLU6). The input tensor is flattened in C order (VNN-LIB's ``X_i``).
        ``scaling`` takes the keyword arguments of :meth:`with_scaling`. Raises ``ValueError`` naming the
        node, its operator and the supported ones for anything else (see :mod:`structlab.relumip.onnx_import`).
        """
        from structlab.relumip.onnx_import import read_onnx

        return cls(read_onnx(model).layers, **_scaling_kwargs(scaling))


def _flatten_sequential(module: Any) -> list[Any]:
    from torch import nn

    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _flatten_sequential(child)]
    return [module]


def _layers_from_steps(steps: list[tuple[str, Any]], source: str) -> tuple[Layer, ...]:
    """Affine maps and activations in order -> layers; consecutive affine maps are multiplied out."""
    layers: list[Layer] = []
    pending: tuple[np.ndarray, np.ndarray] | None = None
    for kind, value in steps:
        if kind == "affine":
            w, b = value
            if pending is not None:  # W2 (W1 h + b1) + b2
                w, b = w @ pending[0], w @ pending[1] + b
            pending = (w, b)
        elif pending is None:
            raise ValueError(f"{source}: a {kind} activation that does not follow a linear layer")
        else:
            clip = value if kind == "clipped_relu" else None
            layers.append(Layer(pending[0], pending[1], kind, clip))  # type: ignore[arg-type]
            pending = None
    if pending is None:
        raise ValueError(f"{source}: does not end in a linear layer; expected a linear output layer")
    layers.append(Layer(pending[0], pending[1], "linear"))
    return tuple(layers)


def _scaling_kwargs(scaling: dict[str, Any]) -> dict[str, Any]:
    allowed = {"input_offset", "input_scale", "output_offset", "output_scale"}
    unknown = set(scaling) - allowed
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}; expected some of {sorted(allowed)}")
    return scaling
