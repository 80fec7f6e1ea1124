"""Read the fully-connected ReLU networks that VNN-COMP and the exporters of torch publish, as shipped.

Every tensor that depends on the network input is tracked as an affine map of the current layer's input
``h`` (the network input, or the output of the last activation)::

    T = W h + b        W: (*shape, n_h),  b: shape

Shape operations (Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Identity, Dropout) rearrange ``W`` and
``b``; arithmetic with constants (Add, Sub, Mul, Div, Neg, MatMul, Gemm, BatchNormalization) composes
affine maps. That folds input normalisation into the first affine layer and batch normalisation into the
layer next to it, whatever order the exporter wrote them in. An activation ends the layer:

- ``Relu``: ``relu(W h + b)``;
- ``Clip(lo, hi)``: ``lo + clipped_relu(W h + b - lo)`` with ``c = hi - lo`` (the ``+ lo`` moves into the
  next affine map); ``Clip(0, 6)`` is ReLU6; a one-sided ``Clip`` is a ReLU of a shifted (or negated) map.

Nodes whose inputs are all constant (``Constant``, ``Shape`` of a tensor whose shape is known, ``Cast``,
``Gather``, ``Concat``, ...) are evaluated by ONNX's reference implementation, so exporter-made shape
arithmetic costs nothing. Any other node that touches the input raises ``ValueError`` naming the node, its
operator and what is supported.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from structlab.relumip.network import Layer

AFFINE_OPS = (
    "Add", "Sub", "Mul", "Div", "Neg", "MatMul", "Gemm", "BatchNormalization",
    "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout",
)
ACTIVATION_OPS = ("Relu", "Clip")
SUPPORTED = ", ".join(AFFINE_OPS + ACTIVATION_OPS) + " (and any operator on constants only, e.g. Constant, Shape)"


@dataclass
class _Affine:
    """A tensor ``W h + b`` of shape ``b.shape``, affine in the current layer input ``h`` (``W``: (*shape, n_h))."""

    W: np.ndarray
    b: np.ndarray
    segment: int  # which layer input h it refers to (a new one after every activation)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.b.shape

    def flat(self) -> tuple[np.ndarray, np.ndarray]:
        return self.W.reshape(-1, self.W.shape[-1]), self.b.reshape(-1)


@dataclass(frozen=True)
class OnnxNetwork:
    """What :func:`read_onnx` found: the layers plus the graph's input and output names and shapes.

    ``input_shape``/``output_shape`` are the tensors' shapes with a symbolic batch dimension set to 1;
    the network's input ``x`` is the input tensor flattened in C order (as VNN-LIB numbers ``X_i``).
    """

    layers: tuple[Layer, ...]
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: np.dtype
    output_name: str
    output_shape: tuple[int, ...]


def read_onnx(model: str | os.PathLike[str] | Any) -> OnnxNetwork:
    """Parse an ONNX model (a path or an ``onnx.ModelProto``) into affine layers and activations.

    Raises ``TypeError`` for another argument type, ``FileNotFoundError`` for a missing file and
    ``ValueError`` naming the node, its operator and the supported operators for anything that is not a
    fully-connected ReLU / clipped-ReLU network (Conv, Sigmoid, MaxPool, a second input, a skip connection).
    """
    import onnx

    if isinstance(model, (str, os.PathLike)):
        if not os.path.isfile(model):
            raise FileNotFoundError(f"model: {os.fspath(model)} does not exist")
        proto = onnx.load(os.fspath(model))
    elif isinstance(model, onnx.ModelProto):
        proto = model
    else:
        raise TypeError(f"model: {type(model).__name__}; expected a path or an onnx.ModelProto")
    return _Importer(proto).run()


class _Importer:
    def __init__(self, proto: Any) -> None:
        from onnx import numpy_helper

        self.proto = proto
        self.graph = proto.graph
        self.consts: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in self.graph.initializer
        }
        self.affine: dict[str, _Affine] = {}
        self.layers: list[Layer] = []
        self.segment = 0
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)

    # ---------------------------------------------------------------------------------------- graph
    def run(self) -> OnnxNetwork:
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ValueError(
                f"model: graph inputs {[i.name for i in inputs]}; expected exactly one (the network input)"
            )
        if len(self.graph.output) != 1:
            raise ValueError(
                f"model: graph outputs {[o.name for o in self.graph.output]}; expected exactly one"
            )
        source = inputs[0]
        in_shape = _static_shape(source, "input")
        n_in = math.prod(in_shape)
        self.affine[source.name] = _Affine(np.eye(n_in).reshape(*in_shape, n_in), np.zeros(in_shape), 0)
        for node in self.graph.node:
            self._node(node)
        out_name = self.graph.output[0].name
        if out_name not in self.affine:
            raise ValueError(f"model: output {out_name!r} does not depend on the input {source.name!r}")
        out = self.affine[out_name]
        if out.segment != self.segment:
            raise ValueError(f"model: output {out_name!r} is not computed from the last activation")
        W, b = out.flat()
        self.layers.append(Layer(W, b, "linear"))
        from onnx import helper

        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(source.type.tensor_type.elem_type))
        return OnnxNetwork(tuple(self.layers), source.name, in_shape, dtype, out_name, out.shape)

    def _node(self, node: Any) -> None:
        op, name = node.op_type, node.name or node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise ValueError(f"model: node {name!r} has operator {node.domain}.{op}; supported: {SUPPORTED}")
        attrs = _attributes(node)
        ins = list(node.input)
        touched = [i for i in ins if i in self.affine]
        if not touched:
            self._fold_constant(node)
            return
        for i in touched:
            if self.affine[i].segment != self.segment:
                raise ValueError(
                    f"model: node {name!r} ({op}) reads {i!r} from before the last activation; only a single "
                    "chain of layers is supported (no skip connections or branches)"
                )
        if op == "Shape":
            self.consts[node.output[0]] = self._shape(self.affine[ins[0]].shape, attrs)
            return
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise ValueError(f"model: node {name!r} has operator {op}, which is not supported on the network's "
                             f"path; supported: {SUPPORTED}")
        result = handler(node, name, ins, attrs)
        if result is not None:
            self.affine[node.output[0]] = result

    def _fold_constant(self, node: Any) -> None:
        """Evaluate a node whose inputs are all constant with ONNX's reference implementation."""
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        missing = [i for i in node.input if i and i not in self.consts]
        if missing:
            raise ValueError(f"model: node {node.name or node.op_type!r} ({node.op_type}) reads {missing}, "
                             "which no earlier node computes")
        values = {i: self.consts[i] for i in node.input if i}
        graph = helper.make_graph(
            [node], "fold",
            [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
             for i, v in values.items()],
            [helper.make_tensor_value_info(o, 0, None) for o in node.output if o],
        )
        fold = helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        outputs = ReferenceEvaluator(fold).run(None, values)
        for o, v in zip([o for o in node.output if o], outputs, strict=True):
            self.consts[o] = np.asarray(v)

    @staticmethod
    def _shape(shape: tuple[int, ...], attrs: dict[str, Any]) -> np.ndarray:
        start, end = attrs.get("start", 0), attrs.get("end")
        return np.array(shape[start:end], dtype=np.int64)

    def _const(self, node_name: str, op: str, value: str, what: str) -> np.ndarray:
        if value in self.affine:
            raise ValueError(f"model: node {node_name!r} ({op}) has the network's data as its {what}; expected a "
                             "constant there (a product of two input-dependent tensors is not affine)")
        return self.consts[value].astype(np.float64)

    # ----------------------------------------------------------------------------- shape operations
    def _op_Identity(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        return self.affine[ins[0]]

    def _op_Dropout(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        training = ins[2] if len(ins) > 2 and ins[2] else None
        if training is not None and bool(self.consts.get(training, np.array(False))):
            raise ValueError(f"model: node {name!r} (Dropout) runs in training mode; expected inference")
        return self.affine[ins[0]]

    def _reshaped(self, t: _Affine, shape: tuple[int, ...]) -> _Affine:
        return _Affine(t.W.reshape(*shape, t.W.shape[-1]), t.b.reshape(shape), t.segment)

    def _op_Flatten(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        t = self.affine[ins[0]]
        axis = attrs.get("axis", 1) % max(len(t.shape), 1) if t.shape else 0
        return self._reshaped(t, (math.prod(t.shape[:axis]), math.prod(t.shape[axis:])))

    def _op_Reshape(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        t = self.affine[ins[0]]
        target = [int(d) for d in self._const(name, "Reshape", ins[1], "shape")]
        if not attrs.get("allowzero", 0):
            target = [t.shape[i] if d == 0 else d for i, d in enumerate(target)]
        try:
            return self._reshaped(t, tuple(np.empty(t.shape, dtype=np.int8).reshape(target).shape))
        except ValueError as err:
            raise ValueError(f"model: node {name!r} (Reshape) of shape {t.shape} to {target}: {err}") from None

    def _axes(self, attrs: dict[str, Any], ins: list[str]) -> list[int] | None:
        if len(ins) > 1 and ins[1]:
            return [int(a) for a in self.consts[ins[1]].reshape(-1)]
        return list(attrs["axes"]) if "axes" in attrs else None

    def _op_Squeeze(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        t = self.affine[ins[0]]
        axes = self._axes(attrs, ins)
        shape = np.squeeze(np.empty(t.shape, np.int8), axis=None if axes is None else tuple(axes)).shape
        return self._reshaped(t, shape)

    def _op_Unsqueeze(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        t = self.affine[ins[0]]
        axes = self._axes(attrs, ins)
        if axes is None:
            raise ValueError(f"model: node {name!r} (Unsqueeze) without axes")
        return self._reshaped(t, np.expand_dims(np.empty(t.shape, np.int8), tuple(axes)).shape)

    def _op_Transpose(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        t = self.affine[ins[0]]
        perm = list(attrs.get("perm", range(len(t.shape) - 1, -1, -1)))
        return _transpose(t, perm)

    # ------------------------------------------------------------------------------------ arithmetic
    def _binary(self, name: str, op: str, ins: list[str]) -> tuple[Any, Any]:
        a = self.affine.get(ins[0], None)
        b = self.affine.get(ins[1], None)
        a = a if a is not None else self._const(name, op, ins[0], "first input")
        b = b if b is not None else self._const(name, op, ins[1], "second input")
        return a, b

    def _op_Add(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        a, b = self._binary(name, "Add", ins)
        return _add(a, b)

    def _op_Sub(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        a, b = self._binary(name, "Sub", ins)
        return _add(a, _scale(b, -1.0) if isinstance(b, _Affine) else -b)

    def _op_Neg(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        return _scale(self.affine[ins[0]], -1.0)

    def _op_Mul(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        a, b = self._binary(name, "Mul", ins)
        if isinstance(a, _Affine) and isinstance(b, _Affine):
            raise ValueError(f"model: node {name!r} (Mul) multiplies two input-dependent tensors; not affine")
        return _scale(a, b) if isinstance(a, _Affine) else _scale(b, a)

    def _op_Div(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        t = self.affine[ins[0]] if ins[0] in self.affine else None
        divisor = self._const(name, "Div", ins[1], "divisor")
        if t is None:
            raise ValueError(f"model: node {name!r} (Div) divides by the network's data; not affine")
        if np.any(divisor == 0):
            raise ValueError(f"model: node {name!r} (Div) divides by zero")
        return _scale(t, 1.0 / divisor)

    def _op_MatMul(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        a, b = self._binary(name, "MatMul", ins)
        if isinstance(a, _Affine) and isinstance(b, _Affine):
            raise ValueError(f"model: node {name!r} (MatMul) multiplies two input-dependent tensors; not affine")
        return _matmul(a, b)

    def _op_Gemm(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        # Y = alpha * A' B' + beta * C, A' = A^T if transA, B' = B^T if transB (C broadcasts, e.g. (1, n))
        a, b = self._binary(name, "Gemm", ins[:2])
        if isinstance(a, _Affine) and isinstance(b, _Affine):
            raise ValueError(f"model: node {name!r} (Gemm) multiplies two input-dependent tensors; not affine")
        for value, what in ((a, "A"), (b, "B")):
            if len(value.shape) != 2:
                raise ValueError(f"model: node {name!r} (Gemm): {what} has shape {tuple(value.shape)}; expected 2-D")
        if attrs.get("transA", 0):
            a = _transpose(a, [1, 0]) if isinstance(a, _Affine) else a.T
        if attrs.get("transB", 0):
            b = _transpose(b, [1, 0]) if isinstance(b, _Affine) else b.T
        y = _scale(_matmul(a, b), float(attrs.get("alpha", 1.0)))
        if len(ins) > 2 and ins[2]:
            y = _add(y, float(attrs.get("beta", 1.0)) * self._const(name, "Gemm", ins[2], "bias C"))
        return y

    def _op_BatchNormalization(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        # y = scale (x - mean) / sqrt(var + eps) + B, per channel (axis 1); inference form only
        if attrs.get("training_mode", 0):
            raise ValueError(f"model: node {name!r} (BatchNormalization) in training mode; expected inference")
        t = self.affine[ins[0]]
        scale, bias, mean, var = (self._const(name, "BatchNormalization", i, what)
                                  for i, what in zip(ins[1:5], ("scale", "B", "mean", "var"), strict=True))
        factor = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
        if len(t.shape) < 2 or t.shape[1] != factor.size:
            raise ValueError(f"model: node {name!r} (BatchNormalization): input shape {t.shape}, "
                             f"{factor.size} channels; expected the channels on axis 1")
        per_channel = (factor.size,) + (1,) * (len(t.shape) - 2)
        return _add(_scale(t, factor.reshape(per_channel)), (bias - mean * factor).reshape(per_channel))

    # ----------------------------------------------------------------------------------- activations
    def _activate(self, t: _Affine, pre_shift: np.ndarray, sign: float, kind: str,
                  clip: np.ndarray | None, post_shift: np.ndarray) -> _Affine:
        """Emit the layer ``kind(sign * (W h + b) - pre_shift)``; the result is ``post_shift + sign * out``."""
        W, b = t.flat()
        size = b.size
        shift = np.broadcast_to(pre_shift, t.shape).reshape(-1)
        c = None if clip is None else np.broadcast_to(clip, t.shape).reshape(-1)
        self.layers.append(Layer(sign * W, sign * b - shift, kind, c))  # type: ignore[arg-type]
        self.segment += 1
        W_next = (sign * np.eye(size)).reshape(*t.shape, size)
        b_next = np.broadcast_to(post_shift, t.shape).astype(np.float64).copy()
        return _Affine(W_next, b_next, self.segment)

    def _op_Relu(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        return self._activate(self.affine[ins[0]], np.zeros(()), 1.0, "relu", None, np.zeros(()))

    def _op_Clip(self, node: Any, name: str, ins: list[str], attrs: dict[str, Any]) -> _Affine:
        t = self.affine[ins[0]]
        if self.opset < 11:
            lo, hi = attrs.get("min", -np.inf), attrs.get("max", np.inf)
        else:
            lo = self._const(name, "Clip", ins[1], "min") if len(ins) > 1 and ins[1] else -np.inf
            hi = self._const(name, "Clip", ins[2], "max") if len(ins) > 2 and ins[2] else np.inf
        lo, hi = float(np.asarray(lo)), float(np.asarray(hi))
        if lo >= hi:
            raise ValueError(f"model: node {name!r} (Clip) with min={lo} >= max={hi}; expected min < max")
        if math.isinf(lo) and math.isinf(hi):
            return t
        if math.isinf(lo):  # min(a, hi) = hi - relu(hi - a)
            return self._activate(t, np.array(-hi), -1.0, "relu", None, np.array(hi))
        if math.isinf(hi):  # max(a, lo) = lo + relu(a - lo)
            return self._activate(t, np.array(lo), 1.0, "relu", None, np.array(lo))
        # min(max(a, lo), hi) = lo + min(max(a - lo, 0), hi - lo)
        return self._activate(t, np.array(lo), 1.0, "clipped_relu", np.array(hi - lo), np.array(lo))


# ------------------------------------------------------------------------------------ affine algebra
def _add(a: Any, b: Any) -> _Affine:
    """``a + b`` where at least one is affine (two affine tensors must share their layer input)."""
    if not isinstance(a, _Affine):
        a, b = b, a
    if isinstance(b, _Affine):
        shape = np.broadcast_shapes(a.shape, b.shape)
        return _Affine(_broadcast_W(a.W, shape) + _broadcast_W(b.W, shape), a.b + b.b, a.segment)
    shape = np.broadcast_shapes(a.shape, np.shape(b))
    return _Affine(_broadcast_W(a.W, shape), np.broadcast_to(a.b + b, shape).copy(), a.segment)


def _scale(t: Any, factor: Any) -> _Affine:
    """``t * factor`` for an affine ``t`` and a constant (broadcast) ``factor``."""
    factor = np.asarray(factor, dtype=np.float64)
    shape = np.broadcast_shapes(t.shape, factor.shape)
    W = _broadcast_W(t.W, shape) * np.broadcast_to(factor, shape)[..., None]
    return _Affine(W, np.broadcast_to(t.b * factor, shape).copy(), t.segment)


def _broadcast_W(W: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n = W.shape[-1]
    lead = W.shape[:-1]
    W = W.reshape((1,) * (len(shape) - len(lead)) + lead + (n,))
    return np.broadcast_to(W, (*shape, n))


def _transpose(t: _Affine, perm: list[int]) -> _Affine:
    return _Affine(t.W.transpose(*perm, len(perm)), t.b.transpose(perm), t.segment)


def _matmul(a: Any, b: Any) -> _Affine:
    """``a @ b`` (numpy semantics) where exactly one of the two is affine."""
    if isinstance(a, _Affine):
        Bm = np.asarray(b, dtype=np.float64)
        Wt = np.moveaxis(a.W, -1, 0)  # (n, *shape)
        if a.b.ndim == 1:  # a vector: (k,) @ (k, m) -> (m,)
            W = np.moveaxis(Wt @ Bm, 0, -1)
        else:
            W = np.moveaxis(np.matmul(Wt, Bm), 0, -1)
        return _Affine(W, np.matmul(a.b, Bm), a.segment)
    A = np.asarray(a, dtype=np.float64)
    if b.b.ndim == 1:  # (p, k) @ (k,) -> (p,)
        return _Affine(A @ b.W, A @ b.b, b.segment)
    Wt = np.moveaxis(b.W, -1, 0)  # (n, ..., k, m)
    return _Affine(np.moveaxis(np.matmul(A, Wt), 0, -1), np.matmul(A, b.b), b.segment)


# ---------------------------------------------------------------------------------------- helpers
def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _static_shape(value_info: Any, what: str) -> tuple[int, ...]:
    """The tensor's shape with a symbolic (or 0) leading batch dimension read as 1."""
    dims = value_info.type.tensor_type.shape.dim
    shape = []
    for i, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(int(d.dim_value))
        elif i == 0:
            shape.append(1)
        else:
            raise ValueError(f"model: {what} {value_info.name!r} has a symbolic dimension {i} "
                             f"({d.dim_param or '?'}); only the leading batch dimension may be symbolic")
    return tuple(shape)
