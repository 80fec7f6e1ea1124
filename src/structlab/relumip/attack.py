"""A cheap search for points in a property's unsafe set: random sampling, then projected gradient descent.

For a disjunct ``A [x; y] <= b`` on the box ``[lower, upper]`` the attack minimises the margin
``m(x) = max_i (A [x; f(x)] - b)_i`` over the box; ``m(x) <= 0`` is a counterexample. ``f`` is piecewise
linear, so its gradient is exact where the activation pattern is fixed: ``A_y W_L D_{L-1} W_{L-1} ... D_1 W_1``
with ``D_l`` the diagonal of active neurons (backpropagated by hand, in NumPy, for a batch of starts).
Steps are signed gradients (the L-inf steepest descent of Madry et al. 2018) projected onto the box, with a
step that shrinks from a tenth of the box width. Nothing here proves anything: the verifier's MILP does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from structlab.relumip.network import ReluNetwork
from structlab.relumip.vnnlib import Disjunct


@dataclass(frozen=True)
class AttackResult:
    """The best point found for one disjunct: ``x`` (n_in,), its ``margin`` (<= 0: in the unsafe set)."""

    x: np.ndarray
    margin: float
    evaluations: int
    seconds: float


def margins(folded: ReluNetwork, disjunct: Disjunct, x: np.ndarray) -> np.ndarray:
    """``max_i (A [x; f(x)] - b)_i`` for a batch ``x`` (batch, n_in) of a folded network."""
    return disjunct.margin(x, folded.forward(x))


def _margin_and_gradient(folded: ReluNetwork, d: Disjunct, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_in = folded.input_dim
    h, masks = x, []
    for layer in folded.layers:
        a = h @ layer.weight.T + layer.bias
        if layer.activation == "linear":
            h = a
            break
        if layer.activation == "clipped_relu":
            masks.append((a > 0) & (a < layer.clip))
        else:
            masks.append(a > 0)
        h = layer.activate(a)
    y = h
    slack = np.concatenate([x, y], axis=1) @ d.A.T - d.b  # (batch, rows)
    worst = np.argmax(slack, axis=1)
    row = d.A[worst]  # the active row of the max, per start
    g = row[:, n_in:] @ folded.layers[-1].weight
    for layer, mask in zip(reversed(folded.layers[:-1]), reversed(masks), strict=True):
        g = (g * mask) @ layer.weight
    return slack[np.arange(x.shape[0]), worst], g + row[:, :n_in]


def attack(
    net: ReluNetwork,
    disjunct: Disjunct,
    samples: int = 512,
    starts: int = 8,
    steps: int = 60,
    seed: int = 0,
    deadline: float | None = None,
    init: np.ndarray | None = None,
) -> AttackResult:
    """Search the disjunct's box for the smallest margin; stops at the first point with margin < 0.

    ``samples`` uniform points (plus the box centre and the rows of ``init``, e.g. the input of an LP
    relaxation's optimum, clipped to the box) are evaluated, the ``starts`` best are refined by ``steps``
    projected signed-gradient steps. ``deadline`` (``time.perf_counter()`` value) cuts it short.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    folded = net.folded()
    lo, hi = disjunct.lower, disjunct.upper
    if not disjunct.b.size:  # no rows: any point of the box is in the unsafe set
        x = 0.5 * (lo + hi)
        return AttackResult(x, -np.inf, 1, time.perf_counter() - t0)
    x = np.concatenate([(0.5 * (lo + hi))[None], rng.uniform(lo, hi, (samples, lo.size))])
    if init is not None:
        x = np.concatenate([np.clip(np.asarray(init, dtype=np.float64).reshape(-1, lo.size), lo, hi), x])
    m = margins(folded, disjunct, x)
    evaluations = x.shape[0]
    order = np.argsort(m)[:starts]
    best_x, best_m = x[order[0]].copy(), float(m[order[0]])
    if best_m < 0:
        return AttackResult(best_x, best_m, evaluations, time.perf_counter() - t0)
    x = x[order]
    width = hi - lo
    for k in range(steps):
        if deadline is not None and time.perf_counter() > deadline:
            break
        m, g = _margin_and_gradient(folded, disjunct, x)
        evaluations += x.shape[0]
        i = int(np.argmin(m))
        if m[i] < best_m:
            best_x, best_m = x[i].copy(), float(m[i])
        if best_m < 0:
            break
        step = width * (0.1 * (1 - k / steps) + 0.005)
        x = np.clip(x - step * np.sign(g), lo, hi)
    else:
        m = margins(folded, disjunct, x)
        evaluations += x.shape[0]
        i = int(np.argmin(m))
        if m[i] < best_m:
            best_x, best_m = x[i].copy(), float(m[i])
    return AttackResult(best_x, best_m, evaluations, time.perf_counter() - t0)
