"""Linear regions of a ReLU network on a box (paper, Sec. 4: an indicator of redundancy and solver effort).

A linear region is the set of inputs that share one activation pattern (each hidden neuron on one of its
linear pieces: off, linear, or clipped at ``c``) and has a non-empty interior; on it the network is affine.

- :func:`count_linear_regions` enumerates them exactly, layer by layer, by splitting every region with
  the hyperplanes ``a_j(x) = 0`` (and ``a_j(x) = c_j``) of the next layer's neurons, on which ``a_j`` is
  affine. For 1-D and 2-D inputs regions are convex polygons clipped exactly (a 1-D box is treated as a
  2-D strip); for more inputs each split is decided by two LPs (``min``/``max`` of ``a_j`` on the region).
- :func:`linear_regions` returns the polygons (1-D/2-D) and :func:`plot_linear_regions` draws them.
- :func:`estimate_linear_regions` samples the box, counts distinct activation patterns and extrapolates
  the unseen ones with the Chao1 estimator and its log-normal confidence interval (Chao 1987).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from structlab.relumip.bounds import check_box
from structlab.relumip.model import new_highs
from structlab.relumip.network import ReluNetwork

DEFAULT_MAX_REGIONS = 200_000
_AREA_TOL = 1e-10  # relative to the box: a split that leaves a side thinner than this is no split


@dataclass(frozen=True)
class RegionEstimate:
    """A sampled estimate of the number of linear regions.

    ``estimate`` (Chao1), ``low``/``high`` its confidence interval at level ``confidence``; ``observed``:
    distinct activation patterns among ``n_samples`` uniform samples (a lower bound on the count);
    ``singletons``/``doubletons``: patterns seen once and twice.
    """

    estimate: float
    low: float
    high: float
    observed: int
    n_samples: int
    confidence: float
    singletons: int
    doubletons: int


def count_linear_regions(
    net: ReluNetwork,
    lower: np.ndarray | Sequence[float],
    upper: np.ndarray | Sequence[float],
    max_regions: int = DEFAULT_MAX_REGIONS,
) -> int:
    """The exact number of linear regions of ``net`` on the box ``[lower, upper]`` (shape (n_in,)).

    Exact polygon clipping for 1-D and 2-D inputs, two LPs per candidate split otherwise. Raises
    ``ValueError`` for a bad box and ``RuntimeError`` when more than ``max_regions`` regions appear (use
    :func:`estimate_linear_regions` then).
    """
    lo, hi = check_box(net, lower, upper)
    if net.input_dim <= 2:
        return len(_polygon_regions(net, lo, hi, max_regions))
    return _count_by_lp(net, lo, hi, max_regions)


def linear_regions(
    net: ReluNetwork,
    lower: np.ndarray | Sequence[float],
    upper: np.ndarray | Sequence[float],
    max_regions: int = DEFAULT_MAX_REGIONS,
) -> list[np.ndarray]:
    """The linear regions of a network with 1 or 2 inputs as convex polygons (vertex arrays (k, 2)).

    For one input the second coordinate spans [0, 1] (each region is an interval times [0, 1]).
    Raises ``ValueError`` for more than 2 inputs.
    """
    lo, hi = check_box(net, lower, upper)
    if net.input_dim > 2:
        raise ValueError(f"net: {net.input_dim} inputs; region polygons need 1 or 2 inputs")
    return [poly for poly, _, _ in _polygon_regions(net, lo, hi, max_regions)]


def plot_linear_regions(
    net: ReluNetwork,
    lower: np.ndarray | Sequence[float],
    upper: np.ndarray | Sequence[float],
    ax: Any = None,
    path: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> Any:
    """Draw the linear regions of a 1-D or 2-D network (each region one colour) and return the axes.

    For one input the network's output is drawn over the regions. ``path``: also save the figure there.
    """
    import matplotlib

    if ax is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    lo, hi = check_box(net, lower, upper)
    polys = linear_regions(net, lo, hi)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.35, 0.95, size=(len(polys), 3))
    if net.input_dim == 1:
        xs = np.linspace(lo[0], hi[0], 2001)
        ys = net(xs[:, None])[:, 0]
        y0, y1 = ys.min(), ys.max()
        span = (y1 - y0) or 1.0
        scaled = [np.column_stack([p[:, 0], y0 - 0.05 * span + p[:, 1] * 1.1 * span]) for p in polys]
        ax.add_collection(PolyCollection(scaled, facecolors=colours, edgecolors="none", alpha=0.6))
        ax.plot(xs, ys, color="black", linewidth=1.2)
        ax.set_ylabel("net(x)")
    else:
        ax.add_collection(PolyCollection(polys, facecolors=colours, edgecolors="black", linewidths=0.3))
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_ylabel("x2")
    ax.set_xlabel("x1" if net.input_dim == 2 else "x")
    ax.set_title(f"{len(polys)} linear regions")
    if path is not None:
        ax.figure.savefig(path, dpi=150, bbox_inches="tight")
    return ax


def estimate_linear_regions(
    net: ReluNetwork,
    lower: np.ndarray | Sequence[float],
    upper: np.ndarray | Sequence[float],
    n_samples: int = 100_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> RegionEstimate:
    """Estimate the number of linear regions from ``n_samples`` uniform samples of the box (module docstring).

    Regions too small to be hit are under-represented: treat the estimate as a rough lower-side figure.
    """
    from scipy.stats import norm

    lo, hi = check_box(net, lower, upper)
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples={n_samples!r}: expected an int >= 2")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}: expected a value in (0, 1)")
    rng = np.random.default_rng(seed)
    counts: dict[bytes, int] = {}
    for start in range(0, n_samples, 50_000):
        x = lo + (hi - lo) * rng.random((min(50_000, n_samples - start), lo.size))
        pattern = net.activation_pattern(x)
        keys = np.concatenate([np.packbits(pattern >= 1, axis=1), np.packbits(pattern == 2, axis=1)], axis=1)
        uniq, n = np.unique(keys, axis=0, return_counts=True)
        for key, k in zip(uniq, n, strict=True):
            counts[key.tobytes()] = counts.get(key.tobytes(), 0) + int(k)
    freq = np.array(list(counts.values()))
    observed, f1, f2 = int(freq.size), int((freq == 1).sum()), int((freq == 2).sum())
    # Chao1 (bias-corrected) and its variance (Chao 1987); log-normal interval keeps low >= observed
    extra = f1 * (f1 - 1) / (2.0 * (f2 + 1))
    estimate = observed + extra
    if f1 == 0:
        return RegionEstimate(float(observed), float(observed), float(observed), observed, n_samples,
                              confidence, f1, f2)
    var = (f1 * (f1 - 1) / (2 * (f2 + 1)) + f1 * (2 * f1 - 1) ** 2 / (4 * (f2 + 1) ** 2)
           + f1**2 * f2 * (f1 - 1) ** 2 / (4 * (f2 + 1) ** 4))
    z = float(norm.ppf(0.5 + confidence / 2))
    if extra <= 0 or var <= 0:
        return RegionEstimate(float(estimate), float(observed), float(estimate), observed, n_samples,
                              confidence, f1, f2)
    k = math.exp(z * math.sqrt(math.log(1 + var / extra**2)))
    return RegionEstimate(float(estimate), observed + extra / k, observed + extra * k, observed, n_samples,
                          confidence, f1, f2)


# ------------------------------------------------------------------------------- exact, 1-D / 2-D
def _polygon_regions(
    net: ReluNetwork, lo: np.ndarray, hi: np.ndarray, max_regions: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Regions as (polygon (k, 2), M, m) with the last hidden layer's output ``h = M p + m`` on it.

    Points ``p`` are 2-D; a 1-D network ignores the second coordinate (its box is [lo, hi] x [0, 1]).
    """
    folded = net.folded()
    if net.input_dim == 1:
        box = np.array([[lo[0], 0.0], [hi[0], 0.0], [hi[0], 1.0], [lo[0], 1.0]])
        embed = np.array([[1.0, 0.0]])  # x = embed @ p
    else:
        box = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
        embed = np.eye(2)
    min_area = _AREA_TOL * _area(box)
    regions = [(box, embed, np.zeros(net.input_dim))]
    for layer in folded.hidden:
        clip = layer.clip if layer.activation == "clipped_relu" else None
        next_regions = []
        for poly, M, m in regions:
            A, c = layer.weight @ M, layer.weight @ m + layer.bias  # a(p) = A p + c on this region
            cells = [(poly, np.zeros(layer.n_out, dtype=np.int8))]
            for j in range(layer.n_out):
                levels = (0.0,) if clip is None else (0.0, float(clip[j]))
                for level in levels:
                    split = []
                    for cell, pieces in cells:
                        below, above = _split(cell, A[j], c[j] - level, min_area)
                        if below is not None:
                            split.append((below, pieces))
                        if above is not None:
                            p = pieces.copy()
                            p[j] += 1
                            split.append((above, p))
                    cells = split
            for cell, pieces in cells:
                on = pieces == 1
                Mh = np.where(on[:, None], A, 0.0)
                mh = np.where(on, c, 0.0) + (np.where(pieces == 2, clip, 0.0) if clip is not None else 0.0)
                next_regions.append((cell, Mh, mh))
            if len(next_regions) > max_regions:
                raise RuntimeError(
                    f"more than max_regions={max_regions} linear regions; use estimate_linear_regions"
                )
        regions = next_regions
    return regions


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(x @ np.roll(y, -1) - y @ np.roll(x, -1)))


def _split(
    poly: np.ndarray, normal: np.ndarray, offset: float, min_area: float
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Cut a convex polygon by ``normal . p + offset = 0`` into its (<= 0, >= 0) parts; None for an empty part."""
    s = poly @ normal + offset
    scale = float(np.abs(normal).sum()) * float(np.abs(poly).max() + 1.0) * 1e-12 + 1e-300
    if s.max() <= scale:
        return poly, None
    if s.min() >= -scale:
        return None, poly
    below, above = [], []
    k = len(poly)
    for i in range(k):
        p, q, sp, sq = poly[i], poly[(i + 1) % k], s[i], s[(i + 1) % k]
        if sp <= 0:
            below.append(p)
        if sp >= 0:
            above.append(p)
        if (sp < 0 < sq) or (sq < 0 < sp):  # Sutherland-Hodgman: the edge crosses the line
            cross = p + (q - p) * (sp / (sp - sq))
            below.append(cross)
            above.append(cross)
    lower_poly, upper_poly = np.array(below), np.array(above)
    small_below = len(lower_poly) < 3 or _area(lower_poly) <= min_area
    small_above = len(upper_poly) < 3 or _area(upper_poly) <= min_area
    if small_below:
        return None, poly
    if small_above:
        return poly, None
    return lower_poly, upper_poly


# --------------------------------------------------------------------------------- exact, any dim
def _count_by_lp(net: ReluNetwork, lo: np.ndarray, hi: np.ndarray, max_regions: int) -> int:
    """Regions as inequality systems ``G x <= g`` with a point ``p`` strictly inside each.

    The sign of ``a_j(p)`` says on which side of a hyperplane the region lies at ``p``; one LP for the
    extreme of ``a_j`` in the other direction says whether it reaches across (a split). The new region on
    the far side gets the interior point ``p + t (q - p)`` between ``p`` and the LP's extreme point ``q``,
    past the hyperplane (``t < 1`` keeps it strictly inside). Near a hyperplane both LPs are solved.
    """
    folded = net.folded()
    d = net.input_dim
    eps = 1e-9 * (1.0 + float(np.abs(np.concatenate([lo, hi])).max()))
    cols = np.arange(d, dtype=np.int32)

    def extreme(G: np.ndarray, g: np.ndarray, a: np.ndarray, sign: float) -> tuple[float, np.ndarray]:
        """``min`` (sign 1) or ``max`` (sign -1) of ``a . x`` on the region, and where it is attained."""
        highs = new_highs()
        highs.addVars(d, lo, hi)
        if len(G):
            dense = np.ascontiguousarray(G, dtype=np.float64)
            highs.addRows(len(G), np.full(len(G), -np.inf), g, dense.size,
                          np.arange(0, dense.size, d, dtype=np.int32), np.tile(cols, len(G)), dense.ravel())
        highs.changeColsCost(d, cols, sign * a)
        highs.run()
        x = np.asarray(highs.getSolution().col_value)
        return float(a @ x), x

    def box_of(G: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The smallest box around the region (2d LPs): interval arithmetic on it rules splits out cheaply."""
        if not len(G):
            return lo, hi
        low = np.array([extreme(G, g, e, 1.0)[0] for e in np.eye(d)])
        high = np.array([extreme(G, g, e, -1.0)[0] for e in np.eye(d)])
        return low - eps, high + eps

    def towards(p: np.ndarray, v: float, q: np.ndarray, w: float) -> np.ndarray:
        t0 = v / (v - w)  # where a_j - level crosses zero on the segment from p (value v) to q (value w)
        return p + 0.5 * (1.0 + t0) * (q - p)

    regions = [(np.zeros((0, d)), np.zeros(0), 0.5 * (lo + hi), np.eye(d), np.zeros(d))]
    for layer in folded.hidden:
        clip = layer.clip if layer.activation == "clipped_relu" else None
        next_regions = []
        for G, g, point, M, m in regions:
            A, c = layer.weight @ M, layer.weight @ m + layer.bias
            box_lo, box_hi = box_of(G, g)  # also holds for every cell the region is split into
            a_lo = np.minimum(A, 0.0) @ box_hi + np.maximum(A, 0.0) @ box_lo + c
            a_hi = np.maximum(A, 0.0) @ box_hi + np.minimum(A, 0.0) @ box_lo + c
            cells = [(G, g, point, np.zeros(layer.n_out, dtype=np.int8))]
            for j in range(layer.n_out):
                for level in (0.0,) if clip is None else (0.0, float(clip[j])):
                    if a_hi[j] - level <= eps or a_lo[j] - level >= -eps:  # no cell reaches across
                        if a_lo[j] - level >= -eps:
                            for cell in cells:
                                cell[3][j] += 1
                        continue
                    split = []
                    for Gc, gc, p, pieces in cells:
                        offset = c[j] - level
                        v = float(A[j] @ p) + offset
                        below_point = above_point = None
                        if v < -eps:
                            below_point = p
                            w, q = extreme(Gc, gc, A[j], -1.0)
                            if w + offset > eps:
                                above_point = towards(p, v, q, w + offset)
                        elif v > eps:
                            above_point = p
                            w, q = extreme(Gc, gc, A[j], 1.0)
                            if w + offset < -eps:
                                below_point = towards(p, v, q, w + offset)
                        else:
                            w_lo, q_lo = extreme(Gc, gc, A[j], 1.0)
                            w_hi, q_hi = extreme(Gc, gc, A[j], -1.0)
                            if w_lo + offset < -eps:
                                below_point = 0.5 * (p + q_lo)
                            if w_hi + offset > eps:
                                above_point = 0.5 * (p + q_hi)
                            if below_point is None and above_point is None:  # a_j == level throughout
                                below_point = p
                        both = below_point is not None and above_point is not None
                        if below_point is not None:
                            split.append((np.vstack([Gc, A[j]]) if both else Gc,
                                          np.append(gc, -offset) if both else gc, below_point, pieces))
                        if above_point is not None:
                            piece = pieces.copy()
                            piece[j] += 1
                            split.append((np.vstack([Gc, -A[j]]) if both else Gc,
                                          np.append(gc, offset) if both else gc, above_point, piece))
                    cells = split
            for Gc, gc, p, pieces in cells:
                on = pieces == 1
                mh = np.where(on, c, 0.0) + (np.where(pieces == 2, clip, 0.0) if clip is not None else 0.0)
                next_regions.append((Gc, gc, p, np.where(on[:, None], A, 0.0), mh))
            if len(next_regions) > max_regions:
                raise RuntimeError(
                    f"more than max_regions={max_regions} linear regions; use estimate_linear_regions"
                )
        regions = next_regions
    return len(regions)
