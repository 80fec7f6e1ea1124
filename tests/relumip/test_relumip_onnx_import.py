"""ONNX as published: every imported network equals onnxruntime's output on random inputs.

Covers the VNN-COMP 2021 mnistfc networks (shared data), torch's two exporters, and hand-built graphs for
each operator (input normalisation, shape operators, Gemm flags and broadcast biases, MatMul+Add,
BatchNormalization on either side of a Gemm, Clip in its forms), plus the errors for what is unsupported.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest

from structlab import data

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from structlab.relumip import ReluNetwork  # noqa: E402
from structlab.relumip.onnx_import import read_onnx  # noqa: E402

mnistfc = data.find("vnncomp2021-mnistfc")
needs_mnistfc = pytest.mark.skipif(mnistfc is None, reason="vnncomp2021-mnistfc data set not found")


def _ort_outputs(model: bytes, x: np.ndarray, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """onnxruntime's outputs, one input at a time reshaped to the graph's input shape, flattened."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.stack([np.asarray(session.run(None, {name: xi.astype(dtype).reshape(shape)})[0]).reshape(-1)
                     for xi in x]).astype(np.float64)


def _model(nodes, inits, in_shape, out_shape, elem=TensorProto.FLOAT, opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", elem, in_shape)],
        [helper.make_tensor_value_info("y", elem, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _assert_matches_ort(model: onnx.ModelProto, shape: tuple[int, ...], lo=-2.0, hi=2.0, n=40, atol=1e-5) -> None:
    net = ReluNetwork.from_onnx(model)
    x = np.random.default_rng(0).uniform(lo, hi, (n, int(np.prod(shape)))).astype(np.float32).astype(np.float64)
    expected = _ort_outputs(model.SerializeToString(), x, shape)
    np.testing.assert_allclose(net(x), expected, atol=atol, rtol=1e-5)


# ------------------------------------------------------------------------------- as published
@needs_mnistfc
@pytest.mark.parametrize("name", ["mnist-net_256x2.onnx", "mnist-net_256x4.onnx", "mnist-net_256x6.onnx"])
def test_every_vnncomp_mnistfc_network_equals_onnxruntime(name: str) -> None:
    path = mnistfc.path / name
    parsed = read_onnx(path)
    assert parsed.input_shape == (1, 784, 1)
    net = ReluNetwork.from_onnx(path)
    hidden = int(name.split("x")[1].split(".")[0])
    assert net.widths == (256,) * hidden and net.output_dim == 10
    x = np.random.default_rng(1).uniform(0, 1, (32, 784)).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(net(x), _ort_outputs(path.read_bytes(), x, (1, 784, 1)), atol=2e-5, rtol=1e-5)


class _Normalise(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.1307) / 0.3081


def _torch_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        _Normalise(), torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
        torch.nn.Linear(8, 6), torch.nn.ReLU6(), torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.BatchNorm1d(4),
        torch.nn.Linear(4, 3),
    )
    for bn in (m[3], m[9]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    return m.eval()


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_torch_exports_with_normalisation_batchnorm_and_relu6_equal_onnxruntime_and_torch(dynamo: bool) -> None:
    if dynamo:
        pytest.importorskip("onnxscript")
    m = _torch_net()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.rand(1, 3, 4),), buffer, dynamo=dynamo, input_names=["x"],
                          output_names=["y"], verbose=False)
    model = buffer.getvalue()
    net = ReluNetwork.from_onnx(onnx.load_from_string(model))
    assert any(layer.activation == "clipped_relu" for layer in net.hidden)
    x = np.random.default_rng(2).uniform(-1, 2, (30, 12)).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(net(x), _ort_outputs(model, x, (1, 3, 4)), atol=2e-5, rtol=1e-5)
    with torch.no_grad():
        reference = m(torch.tensor(x, dtype=torch.float32).reshape(-1, 3, 4)).double().numpy()
    np.testing.assert_allclose(net(x), reference, atol=2e-5, rtol=1e-5)


# --------------------------------------------------------------------------------- by operator
def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


def test_acas_xu_shaped_graph_with_sub_div_normalisation_equals_onnxruntime() -> None:
    # ACAS Xu as VNN-COMP ships it: input (1, 1, 1, 5), Sub mean / Div range, Flatten, MatMul + Add, Relu
    rng = np.random.default_rng(3)
    inits = {"mean": np.array([19791.091, 0.0, 0.0, 650.0, 600.0], np.float32).reshape(1, 1, 1, 5),
             "range": np.array([60261.0, 6.28, 6.28, 1100.0, 1200.0], np.float32).reshape(1, 1, 1, 5),
             "W1": _w(rng, 5, 6), "b1": _w(rng, 6), "W2": _w(rng, 6, 6), "b2": _w(rng, 6), "W3": _w(rng, 6, 5),
             "b3": _w(rng, 5)}
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["s"]), helper.make_node("Div", ["s", "range"], ["n"]),
        helper.make_node("Flatten", ["n"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "W1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["h1"]),
        helper.make_node("MatMul", ["h1", "W2"], ["m2"]), helper.make_node("Add", ["b2", "m2"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W3"], ["m3"]), helper.make_node("Add", ["m3", "b3"], ["y"]),
    ]
    model = _model(nodes, inits, [1, 1, 1, 5], [1, 5])
    _assert_matches_ort(model, (1, 1, 1, 5), lo=-1000.0, hi=30000.0, atol=1e-3)


@pytest.mark.parametrize("trans_a,trans_b,alpha,beta", [(0, 0, 1.0, 1.0), (0, 1, 0.5, 2.0), (1, 0, 1.5, 0.3),
                                                        (1, 1, 2.0, 1.0)])
def test_gemm_flags_and_a_broadcast_bias_of_shape_1_n_equal_onnxruntime(trans_a, trans_b, alpha, beta) -> None:
    rng = np.random.default_rng(4)
    W = _w(rng, 7, 5) if trans_b else _w(rng, 5, 7)
    inits = {"W": W, "C": _w(rng, 1, 7), "W2": _w(rng, 3, 7), "C2": _w(rng, 3)}
    nodes = []
    a_in = "x"
    if trans_a:  # Gemm with transA reads a (5, 1) column: transpose the (1, 5) input first
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]))
        a_in = "xt"
    nodes += [
        helper.make_node("Gemm", [a_in, "W", "C"], ["a"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta),
        helper.make_node("Relu", ["a"], ["h"]),
        helper.make_node("Gemm", ["h", "W2", "C2"], ["y"], transB=1),
    ]
    _assert_matches_ort(_model(nodes, inits, [1, 5], [1, 3]), (1, 5))


def test_gemm_with_the_weights_first_and_a_column_input_equals_onnxruntime() -> None:
    # y = W x + b with x of shape (n, 1): the network's data is Gemm's second operand
    rng = np.random.default_rng(5)
    inits = {"W": _w(rng, 6, 4), "b": _w(rng, 6, 1), "W2": _w(rng, 2, 6), "b2": _w(rng, 2, 1)}
    nodes = [helper.make_node("Gemm", ["W", "x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Gemm", ["W2", "h", "b2"], ["y"])]
    _assert_matches_ort(_model(nodes, inits, [4, 1], [2, 1]), (4, 1))


def test_shape_operators_and_constant_nodes_equal_onnxruntime() -> None:
    rng = np.random.default_rng(6)
    inits = {"W": _w(rng, 6, 5), "b": _w(rng, 5), "W2": _w(rng, 5, 2), "shape": np.array([1, -1], np.int64),
             "axes": np.array([0], np.int64)}
    nodes = [
        helper.make_node("Identity", ["x"], ["i"]),
        helper.make_node("Reshape", ["i", "shape"], ["r"]),  # (1, 2, 3) -> (1, 6)
        helper.make_node("Squeeze", ["r", "axes"], ["s"]),  # (6,)
        helper.make_node("Unsqueeze", ["s", "axes"], ["u"]),  # (1, 6)
        helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(np.float32(0.5))),
        helper.make_node("Mul", ["scale", "u"], ["m"]),
        helper.make_node("Constant", [], ["shift"], value_float=0.25),
        helper.make_node("Add", ["m", "shift"], ["n"]),
        helper.make_node("MatMul", ["n", "W"], ["a0"]), helper.make_node("Add", ["a0", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["h"]),
        helper.make_node("Dropout", ["h"], ["d"]),
        helper.make_node("Neg", ["d"], ["nd"]),
        helper.make_node("MatMul", ["nd", "W2"], ["y"]),
    ]
    _assert_matches_ort(_model(nodes, inits, [1, 2, 3], [1, 2]), (1, 2, 3))


def test_shape_arithmetic_on_the_input_is_folded_into_a_reshape() -> None:
    # what exporters write for flatten(start_dim=1): Shape -> Gather -> Concat -> Reshape
    rng = np.random.default_rng(7)
    inits = {"W": _w(rng, 6, 3), "idx": np.array(0, np.int64), "minus1": np.array([-1], np.int64),
             "zero": np.array([0], np.int64)}
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Gather", ["shp", "idx"], ["batch"]),
        helper.make_node("Unsqueeze", ["batch", "zero"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"]),
    ]
    _assert_matches_ort(_model(nodes, inits, [1, 2, 3], [1, 3]), (1, 2, 3))


@pytest.mark.parametrize("where", ["before-gemm", "after-relu"])
def test_batch_normalization_is_folded_into_the_neighbouring_affine_layer(where: str) -> None:
    rng = np.random.default_rng(8)
    inits = {"W": _w(rng, 4, 5), "b": _w(rng, 5), "W2": _w(rng, 5, 2), "b2": _w(rng, 2)}
    n = 4 if where == "before-gemm" else 5
    inits |= {"g": rng.uniform(0.5, 2, n).astype(np.float32), "beta": _w(rng, n), "mu": _w(rng, n),
              "var": rng.uniform(0.5, 2, n).astype(np.float32)}
    bn = helper.make_node("BatchNormalization", ["bn_in", "g", "beta", "mu", "var"], ["bn_out"], epsilon=1e-3)
    if where == "before-gemm":
        nodes = [helper.make_node("Identity", ["x"], ["bn_in"]), bn,
                 helper.make_node("Gemm", ["bn_out", "W", "b"], ["a"])]
    else:
        nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["a0"]), helper.make_node("Relu", ["a0"], ["bn_in"]), bn,
                 helper.make_node("Identity", ["bn_out"], ["a"])]
    nodes += [helper.make_node("Relu", ["a"], ["h"]), helper.make_node("Gemm", ["h", "W2", "b2"], ["y"])]
    model = _model(nodes, inits, [1, 4], [1, 2])
    net = ReluNetwork.from_onnx(model)
    assert len(net.layers) == (2 if where == "before-gemm" else 3)  # no extra layer for the normalisation
    _assert_matches_ort(model, (1, 4))


@pytest.mark.parametrize("lo,hi", [(0.0, 6.0), (-0.5, 0.7), (None, 0.3), (0.2, None)],
                         ids=["relu6", "two-sided", "upper-only", "lower-only"])
def test_clip_in_every_form_equals_onnxruntime(lo, hi) -> None:
    rng = np.random.default_rng(9)
    inits = {"W": _w(rng, 3, 6) * 3, "b": _w(rng, 6), "W2": _w(rng, 6, 2)}
    ins = ["a", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    if lo is not None:
        inits["lo"] = np.array(lo, np.float32)
    if hi is not None:
        inits["hi"] = np.array(hi, np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["a"]), helper.make_node("Clip", ins, ["h"]),
             helper.make_node("MatMul", ["h", "W2"], ["y"])]
    _assert_matches_ort(_model(nodes, inits, [1, 3], [1, 2]), (1, 3), lo=-3, hi=3)


def test_clip_with_attributes_of_opset_6_is_a_clipped_relu() -> None:
    rng = np.random.default_rng(10)
    inits = {"W": _w(rng, 3, 4), "W2": _w(rng, 4, 1)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Clip", ["a"], ["h"], min=0.0, max=1.0),
             helper.make_node("MatMul", ["h", "W2"], ["y"])]
    model = _model(nodes, inits, [1, 3], [1, 1], opset=6)
    net = ReluNetwork.from_onnx(model)
    assert net.hidden[0].activation == "clipped_relu" and np.all(net.hidden[0].clip == 1.0)
    _assert_matches_ort(model, (1, 3))


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "Softmax"])
def test_an_unsupported_operator_is_named_with_its_node_and_the_supported_list(op: str) -> None:
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node(op, ["a"], ["y"], name="act_1")]
    model = _model(nodes, {"W": _w(rng, 3, 2)}, [1, 3], [1, 2])
    with pytest.raises(ValueError, match=f"node 'act_1' has operator {op}.*supported: Add, Sub"):
        ReluNetwork.from_onnx(model)


def test_a_convolution_and_a_max_pool_are_refused_with_their_names() -> None:
    rng = np.random.default_rng(12)
    model = _model([helper.make_node("Conv", ["x", "K"], ["y"], name="conv0")], {"K": _w(rng, 1, 1, 2, 2)},
                   [1, 1, 4, 4], [1, 1, 3, 3])
    with pytest.raises(ValueError, match="node 'conv0' has operator Conv"):
        ReluNetwork.from_onnx(model)
    model = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], name="pool")], {},
                   [1, 1, 4, 4], [1, 1, 3, 3])
    with pytest.raises(ValueError, match="node 'pool' has operator MaxPool"):
        ReluNetwork.from_onnx(model)


def test_a_skip_connection_and_a_product_of_two_data_tensors_are_refused() -> None:
    rng = np.random.default_rng(13)
    skip = [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Relu", ["a"], ["h"]),
            helper.make_node("Add", ["h", "x"], ["y"], name="residual")]
    with pytest.raises(ValueError, match="'residual' \\(Add\\) reads 'x' from before the last activation"):
        ReluNetwork.from_onnx(_model(skip, {"W": _w(rng, 3, 3)}, [1, 3], [1, 3]))
    square = [helper.make_node("Mul", ["x", "x"], ["y"], name="sq")]
    with pytest.raises(ValueError, match="'sq' \\(Mul\\) multiplies two input-dependent tensors"):
        ReluNetwork.from_onnx(_model(square, {}, [1, 3], [1, 3]))


def test_a_missing_file_and_a_wrong_type_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        ReluNetwork.from_onnx(tmp_path / "nope.onnx")
    with pytest.raises(TypeError, match="expected a path or an onnx.ModelProto"):
        ReluNetwork.from_onnx(42)
