"""Pareto frontiers of (attention parameters, metric) points, and what a frontier needs to reach a metric.

"At equal loss, how many parameters?" is answered by interpolating a family's frontier: between two
adjacent frontier points the loss is taken as linear in log(parameters), the usual shape of scaling
curves over a factor of a few in size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


def pareto_front(params: Sequence[float], losses: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (as few or fewer parameters and as low or lower
    loss, one of them strictly), sorted by parameters. Lower is better for both."""
    if len(params) != len(losses):
        raise ValueError(f"params and losses: {len(params)} and {len(losses)} values; expected equal lengths")
    front = []
    points = list(zip(params, losses, strict=True))
    for i, (p, l) in enumerate(points):
        dominated = any((q <= p and m <= l) and (q < p or m < l) for j, (q, m) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (params[i], losses[i]))


@dataclass(frozen=True)
class ParamsAtLoss:
    """The parameters a frontier needs for a loss: ``interpolated`` between two frontier points,
    ``at most`` (even its smallest point is as good: the value is that point's size), or ``not reached``
    (``params`` is None: the loss is below the frontier's best)."""

    params: float | None
    kind: Literal["interpolated", "at most", "not reached"]


def params_at_loss(params: Sequence[float], losses: Sequence[float], loss: float) -> ParamsAtLoss:
    """The parameters the Pareto frontier of (``params``, ``losses``) needs to reach ``loss``."""
    front = pareto_front(params, losses)
    if not front:
        raise ValueError("params: expected at least one point")
    xs = [math.log(params[i]) for i in front]
    ys = [losses[i] for i in front]  # decreasing along the frontier
    if loss >= ys[0]:
        return ParamsAtLoss(params[front[0]], "at most")
    if loss < ys[-1]:
        return ParamsAtLoss(None, "not reached")
    for k in range(len(front) - 1):
        if ys[k] >= loss >= ys[k + 1]:
            t = (ys[k] - loss) / (ys[k] - ys[k + 1]) if ys[k] > ys[k + 1] else 0.0
            return ParamsAtLoss(math.exp(xs[k] + t * (xs[k + 1] - xs[k])), "interpolated")
    return ParamsAtLoss(params[front[-1]], "interpolated")  # loss == ys[-1]
