"""The big-M encoding of one hidden layer of a ReLU network (paper, eq. (3); Fischetti and Jo 2018).

For a neuron with pre-activation ``a = w^T h_prev + b`` and sound bounds ``L <= a <= U`` the ReLU output
``h = max(0, a)`` is encoded with a binary ``z``::

    h >= 0,   h >= a,   h <= a - L (1 - z),   h <= U z,   z in {0, 1}

Stable neurons get no binary: ``U <= 0`` fixes ``h = 0`` and ``L >= 0`` makes ``h = a``. A clipped ReLU
``h = min(max(0, a), c)`` has up to two kinks; with ``z1 = [a >= 0]`` and ``z2 = [a >= c]``::

    h <= a - L (1 - z1),   h <= c z1,   h >= c z2,   h >= a - (U - c) z2,   z2 <= z1,   0 <= h <= c

where a kink outside ``[L, U]`` drops its binary (``L >= 0``: ``z1 = 1``; ``U <= c``: ``z2 = 0``).

Both the network's MILP (:class:`~structlab.relumip.formulation.Formulation`) and bound tightening
(:func:`~structlab.relumip.bounds.lp_bounds`, over the relaxation of the layers before a neuron) are built
from :func:`encode_layer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from structlab.relumip.model import Model
from structlab.relumip.network import Layer

NO_VAR = -1  # index of a variable that a neuron does not need


@dataclass(frozen=True)
class LayerVars:
    """Variable indices of one hidden layer; ``NO_VAR`` where a neuron needs none.

    ``a``: pre-activation (``NO_VAR`` for a constant neuron; equal to ``h`` where ``h = a``), ``h``: output,
    ``z``: binary of the kink at 0, ``z_clip``: binary of the kink at ``c``. ``big_m`` (n,) is the largest
    big-M coefficient of each neuron (0 for a stable one).
    """

    a: np.ndarray
    h: np.ndarray
    z: np.ndarray
    z_clip: np.ndarray
    big_m: np.ndarray


def encode_layer(
    model: Model,
    h_prev: np.ndarray,
    layer: Layer,
    lower: np.ndarray,
    upper: np.ndarray,
    relax: bool = False,
    name: str = "l",
) -> LayerVars:
    """Add one hidden layer's big-M encoding to ``model`` (module docstring); returns its variables.

    ``h_prev`` are the indices of the layer's inputs, ``lower``/``upper`` (n_out,) sound bounds on its
    pre-activations. ``relax`` makes the binaries continuous in [0, 1] (the LP relaxation).
    """
    n = layer.n_out
    clip = layer.clip if layer.activation == "clipped_relu" else np.full(n, math.inf)
    dead = upper <= 0
    saturated = lower >= clip
    linear = ~dead & ~saturated & (lower >= 0) & (upper <= clip)
    unstable = ~(dead | saturated | linear)
    h_lower = np.where(saturated, clip, np.where(linear, lower, 0.0))
    h_upper = np.where(dead, 0.0, np.where(saturated, clip, np.minimum(upper, clip)))
    h = model.add_variables(n, h_lower, h_upper, name=f"{name}.h")

    a = np.full(n, NO_VAR)
    a[linear] = h[linear]
    unstable_idx = np.flatnonzero(unstable)
    a[unstable_idx] = model.add_variables(unstable_idx.size, lower[unstable], upper[unstable], name=f"{name}.a")

    # a - W h_prev = b for every neuron that is not constant
    varying = np.flatnonzero(linear | unstable)
    model.add_rows(
        [np.concatenate(([a[j]], h_prev)) for j in varying],
        [np.concatenate(([1.0], -layer.weight[j])) for j in varying],
        layer.bias[varying], layer.bias[varying],
    )

    z = np.full(n, NO_VAR)
    z_clip = np.full(n, NO_VAR)
    big_m = np.zeros(n)
    kink0 = unstable & (lower < 0)
    kink_c = unstable & (upper > clip)
    k0, kc = np.flatnonzero(kink0), np.flatnonzero(kink_c)
    z[k0] = model.add_variables(k0.size, 0.0, 1.0, integer=not relax, name=f"{name}.z")
    z_clip[kc] = model.add_variables(kc.size, 0.0, 1.0, integer=not relax, name=f"{name}.zc")
    inf = math.inf
    for j in unstable_idx:
        L, U, c = float(lower[j]), float(upper[j]), float(clip[j])
        hj, aj, zj, cj = h[j], a[j], z[j], z_clip[j]
        rows: list[tuple[list[int], list[float], float, float]] = []  # (variables, coefficients, lo, hi)
        if kink0[j]:
            rows.append(([hj, aj, zj], [1.0, -1.0, -L], -inf, -L))  # h <= a - L (1 - z1)
            rows.append(([hj, zj], [1.0, -min(U, c)], -inf, 0.0))  # h <= min(U, c) z1
        else:
            rows.append(([hj, aj], [1.0, -1.0], -inf, 0.0))  # h <= a   (z1 = 1)
        if kink_c[j]:
            rows.append(([hj, cj], [1.0, -c], 0.0, inf))  # h >= c z2
            rows.append(([hj, aj, cj], [1.0, -1.0, U - c], 0.0, inf))  # h >= a - (U - c) z2
            if kink0[j]:
                rows.append(([cj, zj], [1.0, -1.0], -inf, 0.0))  # z2 <= z1
        else:
            rows.append(([hj, aj], [1.0, -1.0], 0.0, inf))  # h >= a   (z2 = 0)
        cols, coeffs, lo, hi = zip(*rows, strict=True)
        model.add_rows(cols, coeffs, np.array(lo), np.array(hi))
        big_m[j] = max(-L if kink0[j] else 0.0, min(U, c) if kink0[j] else 0.0, U - c if kink_c[j] else 0.0)
    return LayerVars(a, h, z, z_clip, big_m)
