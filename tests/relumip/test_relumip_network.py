"""Importing networks: the NumPy forward pass equals PyTorch's and onnx's reference evaluator."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from structlab.relumip import Layer, ReluNetwork

from ._relumip_reference import random_mlp


def test_forward_matches_torch_for_relu_relu6_hardtanh_and_dropout() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 16), nn.ReLU6(),
        nn.Linear(16, 8), nn.Hardtanh(0.0, 0.5), nn.Identity(), nn.Linear(8, 3),
    ).double().eval()
    net = ReluNetwork.from_torch(module)
    assert [layer.activation for layer in net.layers] == ["relu", "clipped_relu", "clipped_relu", "linear"]
    assert net.layers[1].clip[0] == 6.0 and net.layers[2].clip[0] == 0.5
    x = np.random.default_rng(0).normal(size=(500, 4)) * 3
    with torch.no_grad():
        expected = module(torch.tensor(x)).numpy()
    np.testing.assert_allclose(net(x), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(net(x[0]), expected[0], rtol=1e-12, atol=1e-12)


def test_consecutive_linear_layers_are_multiplied_out() -> None:
    module = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2), nn.Linear(2, 1)).double()
    net = ReluNetwork.from_torch(module)
    assert net.widths == (4,)
    x = np.random.default_rng(1).normal(size=(50, 3))
    with torch.no_grad():
        np.testing.assert_allclose(net(x), module(torch.tensor(x)).numpy(), atol=1e-12)


def test_activation_pattern_counts_the_pieces() -> None:
    net = ReluNetwork((Layer(np.array([[1.0], [-1.0]]), np.zeros(2), "clipped_relu", clip=1.0),
                       Layer(np.ones((1, 2)), np.zeros(1), "linear")))
    np.testing.assert_array_equal(net.activation_pattern(np.array([[2.0], [0.5], [-0.5]])),
                                  [[2, 0], [1, 0], [0, 1]])


def _export(module: nn.Module, n_in: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.zeros(1, n_in, dtype=torch.float64), buffer, dynamo=False)
    return buffer.getvalue()


@pytest.mark.parametrize("clip", [None, 0.8])
def test_from_onnx_matches_the_onnx_reference_evaluator(tmp_path, clip: float | None) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    module = random_mlp((3, 10, 10, 2), seed=2, clip=clip)
    path = tmp_path / "net.onnx"
    path.write_bytes(_export(module, 3))
    net = ReluNetwork.from_onnx(path)
    assert len(net.layers) == 3
    x = np.random.default_rng(3).normal(size=(64, 3))
    (expected,) = ReferenceEvaluator(onnx.load(path)).run(None, {onnx.load(path).graph.input[0].name: x})
    np.testing.assert_allclose(net(x), expected, rtol=1e-10, atol=1e-10)


def test_from_onnx_reads_a_matmul_add_graph_built_by_hand() -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    W1, b1, W2, b2 = rng.normal(size=(2, 4)), rng.normal(size=4), rng.normal(size=(4, 1)), rng.normal(size=1)
    inits = [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"))]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["h1"]), helper.make_node("MatMul", ["h1", "W2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 1])], inits)
    net = ReluNetwork.from_onnx(helper.make_model(graph))
    x = rng.normal(size=(20, 2))
    np.testing.assert_allclose(net(x), np.maximum(x @ W1 + b1, 0) @ W2 + b2, atol=1e-12)
    bad = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "bad",
                            [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 2])],
                            [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 2])])
    with pytest.raises(ValueError, match="Sigmoid"):
        ReluNetwork.from_onnx(helper.make_model(bad))


def test_network_validates_its_layers() -> None:
    with pytest.raises(ValueError, match="output layer must be linear"):
        ReluNetwork((Layer(np.ones((2, 2)), np.zeros(2), "relu"),))
    with pytest.raises(ValueError, match="layers\\[1\\]"):
        ReluNetwork((Layer(np.ones((2, 2)), np.zeros(2)), Layer(np.ones((1, 3)), np.zeros(1), "linear")))
    with pytest.raises(ValueError, match="x: shape"):
        ReluNetwork((Layer(np.ones((1, 2)), np.zeros(1), "linear"),))(np.zeros(3))
    with pytest.raises(ValueError, match="input_scale"):
        ReluNetwork((Layer(np.ones((1, 2)), np.zeros(1), "linear"),), input_scale=[1.0, 0.0])
