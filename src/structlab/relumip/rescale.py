"""Rescaling a trained ReLU network without changing its function (paper, Sec. 3.2).

ReLU and clipped ReLU are positively homogeneous: ``relu(alpha a) = alpha relu(a)`` and
``min(max(alpha a, 0), alpha c) = alpha min(max(a, 0), c)`` for ``alpha > 0``. Scaling row ``j`` of
``(W_l, b_l)`` (and the clip value ``c_j``) by ``alpha_j`` and column ``j`` of ``W_{l+1}`` by ``1 / alpha_j``
leaves the network's output unchanged, while the neuron's bounds, and so its big-M coefficients, scale by
``alpha_j``. Two choices of ``alpha``:

- without bounds, each hidden neuron's incoming weights and bias are normalised to max-norm 1,
  ``alpha_j = 1 / ||(w_j, b_j)||_inf`` (layer by layer, after the previous layer's factors are absorbed),
  which removes the growth of big-M values that comes only from the size of the weights;
- with bounds ``L <= a <= U``, ``alpha_j = 1 / max(|L_j|, |U_j|)``: every hidden big-M becomes at most 1
  (interval and LP bounds scale with the network, so recomputing them gives the scaled bounds).

The output layer absorbs the remaining factors. Whether this helps a solver is measured, not assumed:
a MILP solver's own column scaling may already do the same.
"""

from __future__ import annotations

import numpy as np

from structlab.relumip.bounds import Bounds
from structlab.relumip.network import Layer, ReluNetwork


def rescale(net: ReluNetwork, bounds: Bounds | None = None) -> ReluNetwork:
    """A network with the same function whose hidden neurons are balanced (module docstring).

    ``bounds``: pre-activation bounds of ``net`` (e.g. from :func:`lp_bounds`); without them the weights
    are normalised. The input/output scaling is kept. Raises ``ValueError`` if ``bounds`` do not fit ``net``.
    """
    if not isinstance(net, ReluNetwork):
        raise TypeError(f"net: {type(net).__name__}; expected a ReluNetwork")
    if bounds is not None:
        if not isinstance(bounds, Bounds):
            raise TypeError(f"bounds: {type(bounds).__name__}; expected a Bounds object or None")
        widths = tuple(lo.size for lo in bounds.lower)
        if widths != tuple(layer.n_out for layer in net.layers):
            raise ValueError(f"bounds: layer widths {widths}; expected those of {net!r}")
    layers: list[Layer] = []
    carry = np.ones(net.input_dim)  # 1 / alpha of the previous layer's neurons, applied to our columns
    for i, layer in enumerate(net.layers):
        weight = layer.weight * carry
        if i == len(net.layers) - 1:
            layers.append(Layer(weight, layer.bias, "linear"))
            break
        if bounds is None:
            size = np.maximum(np.abs(weight).max(axis=1), np.abs(layer.bias))
        else:  # the bounds of net's neuron j become alpha_j times as large in the rescaled network
            size = np.maximum(np.abs(bounds.lower[i]), np.abs(bounds.upper[i]))
        alpha = np.where(size > 0, 1.0 / np.where(size > 0, size, 1.0), 1.0)
        clip = None if layer.clip is None else layer.clip * alpha
        layers.append(Layer(weight * alpha[:, None], layer.bias * alpha, layer.activation, clip))
        carry = 1.0 / alpha
    return ReluNetwork(tuple(layers), net.input_offset, net.input_scale, net.output_offset, net.output_scale)
