"""Independent reference computations for the relumip tests (NumPy, torch and scipy only).

Nothing here uses structlab's bounds, formulations or solvers: it enumerates activation patterns and
solves one scipy LP per pattern, which is slow but plainly correct on networks with a handful of neurons.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.optimize import linprog


def random_mlp(widths: tuple[int, ...], seed: int, clip: float | None = None) -> torch.nn.Sequential:
    """A random torch MLP ``widths[0] -> ... -> widths[-1]`` with ReLU (or Hardtanh(0, clip))."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU() if clip is None else torch.nn.Hardtanh(0.0, clip))
    return torch.nn.Sequential(*layers).double()


def affine_layers(module: torch.nn.Sequential) -> list[tuple[np.ndarray, np.ndarray, float | None]]:
    """(W, b, clip) per Linear layer; clip is None for ReLU and for the output layer."""
    out = []
    mods = list(module)
    for i, m in enumerate(mods):
        if isinstance(m, torch.nn.Linear):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            clip = float(nxt.max_val) if isinstance(nxt, torch.nn.Hardtanh) else None
            out.append((m.weight.detach().double().numpy(), m.bias.detach().double().numpy(), clip))
    return out


def optimum_by_enumeration(
    module: torch.nn.Sequential, lower: np.ndarray, upper: np.ndarray, c: np.ndarray, sense: str = "min",
    target: tuple[int, int] | None = None,
) -> float:
    """Exact optimum of ``c . f(x)`` on the box: one LP per activation pattern (each pattern is a polytope
    on which ``f`` is affine). With ``target=(layer, j)`` it optimises that pre-activation instead.
    Each hidden neuron has 2 pieces (ReLU) or 3 (clipped ReLU: 0, a, c)."""
    layers = affine_layers(module)
    hidden = layers[:-1] if target is None else layers[: target[0]]
    pieces = [range(3 if clip is not None else 2) for W, _, clip in hidden for _j in range(W.shape[0])]
    n_in = lower.size
    best = np.inf if sense == "min" else -np.inf
    for pattern in itertools.product(*pieces):
        # express every pre-activation as M x + m under this pattern and collect the region's inequalities
        M, m = np.eye(n_in), np.zeros(n_in)
        A_ub, b_ub = [], []
        k = 0
        for W, b, clip in hidden:
            Ma, ma = W @ M, W @ m + b
            Mh, mh = np.zeros_like(Ma), np.zeros_like(ma)
            for j in range(W.shape[0]):
                p = pattern[k]
                k += 1
                if p == 0:  # a <= 0, h = 0
                    A_ub.append(Ma[j])
                    b_ub.append(-ma[j])
                elif p == 1:  # 0 <= a (<= c), h = a
                    A_ub.append(-Ma[j])
                    b_ub.append(ma[j])
                    if clip is not None:
                        A_ub.append(Ma[j])
                        b_ub.append(clip - ma[j])
                    Mh[j], mh[j] = Ma[j], ma[j]
                else:  # a >= c, h = c
                    A_ub.append(-Ma[j])
                    b_ub.append(ma[j] - clip)
                    mh[j] = clip
            M, m = Mh, mh
        if target is None:
            W, b, _ = layers[-1]
            obj_M, obj_m = c @ (W @ M), c @ (W @ m + b)
        else:
            W, b, _ = layers[target[0]]
            obj_M, obj_m = (W @ M)[target[1]], (W @ m + b)[target[1]]
        sign = 1.0 if sense == "min" else -1.0
        res = linprog(
            sign * obj_M, A_ub=np.array(A_ub) if A_ub else None, b_ub=np.array(b_ub) if b_ub else None,
            bounds=list(zip(lower, upper, strict=True)), method="highs",
        )
        if res.status == 0:
            value = float(obj_M @ res.x + obj_m)
            best = min(best, value) if sense == "min" else max(best, value)
    return best


def box_samples(lower: np.ndarray, upper: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` uniform samples in the box plus all of its corners."""
    rng = np.random.default_rng(seed)
    inside = lower + (upper - lower) * rng.random((n, lower.size))
    corners = np.array(list(itertools.product(*zip(lower, upper, strict=True))))
    return np.vstack([inside, corners])


def regions_by_enumeration(module: torch.nn.Sequential, lower: np.ndarray, upper: np.ndarray) -> int:
    """Number of ReLU activation patterns whose region has an interior: for each pattern, the largest ball
    inside its polytope (Chebyshev centre, one LP) must have a positive radius."""
    layers = affine_layers(module)[:-1]
    n_hidden = sum(W.shape[0] for W, _, _ in layers)
    n_in = lower.size
    count = 0
    for pattern in itertools.product((0, 1), repeat=n_hidden):
        M, m = np.eye(n_in), np.zeros(n_in)
        rows, rhs = [], []
        k = 0
        for W, b, _ in layers:
            Ma, ma = W @ M, W @ m + b
            on = np.array(pattern[k:k + W.shape[0]], dtype=bool)
            k += W.shape[0]
            sign = np.where(on, -1.0, 1.0)  # active: -a <= 0, inactive: a <= 0
            rows.extend(sign[:, None] * Ma)
            rhs.extend(-sign * ma)
            M, m = np.where(on[:, None], Ma, 0.0), np.where(on, ma, 0.0)
        G = np.vstack([np.array(rows), np.eye(n_in), -np.eye(n_in)])
        g = np.concatenate([np.array(rhs), upper, -lower])
        norms = np.linalg.norm(G, axis=1)
        # maximise r subject to G x + r |G_i| <= g
        res = linprog(np.r_[np.zeros(n_in), -1.0], A_ub=np.c_[G, norms], b_ub=g,
                      bounds=[(None, None)] * n_in + [(0, None)], method="highs")
        if res.status == 0 and -res.fun > 1e-7:
            count += 1
    return count
