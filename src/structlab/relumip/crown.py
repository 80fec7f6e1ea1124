"""Linear-relaxation bounds by back-substitution (CROWN, Zhang et al. 2018; DeepPoly, Singh et al. 2019).

A linear function ``g = Lambda a_k + c`` of layer ``k``'s pre-activations is bounded by replacing each
earlier activation with a linear bound that holds on its interval ``[l, u]`` and substituting the affine
layers, back to the input box. For an unstable ReLU (``l < 0 < u``)::

    upper:  h <= u (a - l) / (u - l)          lower:  h >= alpha a,  alpha = 1 if u > -l else 0

(the lower line of least area, CROWN's adaptive choice); a stable ReLU is exact (``h = a`` or ``h = 0``).
A clipped ReLU that is not stable gets the constant envelope ``[h(l), h(u)]``. Every coefficient's sign
picks the matching line, so the result is sound for every input of the box, and it costs a few dense
matrix products per layer: far less than an LP per neuron, and much tighter than interval arithmetic
on deep networks. Bounds are widened against floating-point rounding like the interval bounds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from structlab.relumip.bounds import Bounds, check_box, interval_bounds
from structlab.relumip.network import Layer, ReluNetwork

_ROUNDING = 1e-12  # relative widening against floating-point rounding (as for interval bounds)


def _relaxation(layer: Layer, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Slopes and intercepts of the lines ``h <= su a + tu`` and ``h >= sl a + tl`` on ``[lo, hi]``."""
    n = lo.size
    su, tu, sl, tl = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    c = layer.clip if layer.activation == "clipped_relu" else np.full(n, math.inf)
    dead, saturated = hi <= 0, lo >= c
    linear = ~dead & ~saturated & (lo >= 0) & (hi <= c)
    su[linear] = sl[linear] = 1.0
    tu[saturated] = tl[saturated] = c[saturated]
    unstable = ~(dead | saturated | linear)
    relu = unstable & (hi <= c)  # one kink (at 0)
    width = np.where(relu, hi - lo, 1.0)
    su[relu] = hi[relu] / width[relu]
    tu[relu] = -lo[relu] * su[relu]
    sl[relu] = (hi[relu] > -lo[relu]).astype(float)
    other = unstable & ~relu  # a clipped ReLU across its upper kink: the constant envelope
    tu[other] = np.minimum(np.maximum(hi[other], 0.0), c[other])
    tl[other] = np.minimum(np.maximum(lo[other], 0.0), c[other])
    return su, tu, sl, tl


def linear_bound(
    folded: ReluNetwork,
    lower: Sequence[np.ndarray],
    upper: Sequence[np.ndarray],
    k: int,
    coeffs: np.ndarray,
    const: np.ndarray,
    x_lower: np.ndarray,
    x_upper: np.ndarray,
    upper_bound: bool,
) -> np.ndarray:
    """Sound bounds on ``coeffs @ a_k + const`` (rows of ``coeffs``: (m, n_k)) over the box.

    ``lower``/``upper`` must hold bounds on the pre-activations of layers ``< k``. Returns the upper
    bound of each row if ``upper_bound`` else the lower bound, shape (m,).
    """
    sign = 1.0 if upper_bound else -1.0
    lam = sign * np.asarray(coeffs, dtype=np.float64)  # bound max of sign * (...)
    c = sign * np.asarray(const, dtype=np.float64).copy()
    scale = np.abs(c)
    for j in range(k, -1, -1):
        layer = folded.layers[j]
        c = c + lam @ layer.bias
        scale = scale + np.abs(lam) @ np.abs(layer.bias)
        lam = lam @ layer.weight  # now on h_{j-1} (the input for j = 0)
        if j == 0:
            break
        su, tu, sl, tl = _relaxation(folded.layers[j - 1], lower[j - 1], upper[j - 1])
        pos, neg = np.maximum(lam, 0.0), np.minimum(lam, 0.0)
        c = c + pos @ tu + neg @ tl
        scale = scale + np.abs(pos) @ np.abs(tu) + np.abs(neg) @ np.abs(tl)
        lam = pos * su + neg * sl
    value = c + np.maximum(lam, 0.0) @ x_upper + np.minimum(lam, 0.0) @ x_lower
    scale = scale + np.abs(lam) @ np.maximum(np.abs(x_lower), np.abs(x_upper))
    value = value + _ROUNDING * (scale + 1.0) * (len(folded.layers) + 1)
    return sign * value


def crown_bounds(
    net: ReluNetwork, lower: np.ndarray | Sequence[float], upper: np.ndarray | Sequence[float]
) -> Bounds:
    """Back-substitution bounds (module docstring) on every pre-activation, intersected with interval bounds.

    ``lower``/``upper``: the input box (n_in,). Raises ``ValueError`` for a bad box. The result's ``method``
    is "crown"; it can start :func:`~structlab.relumip.bounds.lp_bounds` (fewer unstable neurons to tighten).
    """
    t0 = time.perf_counter()
    lo, hi = check_box(net, lower, upper)
    start = interval_bounds(net, lo, hi)
    folded = net.folded()
    L, U = [b.copy() for b in start.lower], [b.copy() for b in start.upper]
    for k in range(1, len(folded.layers)):
        eye = np.eye(folded.layers[k].n_out)
        zero = np.zeros(folded.layers[k].n_out)
        U[k] = np.minimum(U[k], linear_bound(folded, L, U, k, eye, zero, lo, hi, upper_bound=True))
        L[k] = np.maximum(L[k], linear_bound(folded, L, U, k, eye, zero, lo, hi, upper_bound=False))
        cross = L[k] > U[k]  # two sound bounds cannot cross beyond rounding
        L[k][cross] = U[k][cross] = 0.5 * (L[k][cross] + U[k][cross])
    return Bounds(tuple(L), tuple(U), lo, hi, "crown", time.perf_counter() - t0 + start.seconds)
