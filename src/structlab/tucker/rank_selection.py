"""Choosing Tucker ranks for a parameter budget from a layer's mode spectra.

The truncated HOSVD's squared error is at most the sum over modes of the energy its truncation drops,
sum_n sum_{i > r_n} sigma_i^(n)^2 (De Lathauwer, De Moor & Vandewalle 2000, property 10). For each side
(W_qk, W_vo) the ranks minimise that bound over a grid, subject to the side's parameter count
r1 r2 r3 + n_H r1 + d r2 + d r3 fitting its share of the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Ranks = tuple[int, int, int]


def side_parameters(ranks: Sequence[int], n_heads: int, d_model: int) -> int:
    """Parameters of one Tucker side: r1 r2 r3 + n_H r1 + d r2 + d r3 (paper, parameter count)."""
    r1, r2, r3 = ranks
    return r1 * r2 * r3 + n_heads * r1 + d_model * (r2 + r3)


def ranks_for_budget(
    spectra: Sequence[torch.Tensor], budget: float, step: int = 8, even_last: bool = False,
    per_last: int = 0, constant: int = 0,
) -> Ranks:
    """The ranks (r1, r2, r3) of one side that minimise the HOSVD error bound within ``budget`` parameters.

    ``spectra`` are the singular values of the three mode unfoldings (head, second, third mode), as
    :func:`structlab.tucker.mode_spectra` returns them; the mode sizes are their lengths. The side costs
    :func:`side_parameters` plus ``per_last * r3 + constant`` (biases: (n_H + 1) r3 on the query-key
    side, v3 + d on the value-output side). r1 ranges over every head count, r2 and r3 over multiples of
    ``step`` (and 1 .. step - 1 below it), each at most the product of the other two (a Tucker core of
    ranks beyond that is not full rank); ``even_last`` keeps r3 even (latent RoPE). Raises
    ``ValueError`` when even ranks (1, 1, 1) exceed the budget.
    """
    if len(spectra) != 3:
        raise ValueError(f"spectra: {len(spectra)} modes; expected 3 (head, second, third)")
    n_heads, d2, d3 = (len(s) for s in spectra)
    if d2 != d3:
        raise ValueError(f"spectra: second and third modes have sizes {d2} and {d3}; expected equal (d_model)")
    d = d2
    tails = []
    for s in spectra:
        energy = np.asarray(s, dtype=np.float64) ** 2
        dropped = energy.sum() - np.concatenate([[0.0], np.cumsum(energy)])  # dropped[r] = energy beyond rank r
        tails.append(dropped / energy.sum())
    grid = sorted(set(range(1, min(step, d + 1))) | set(range(step, d + 1, step)) | {d})
    last = [r for r in grid if r % 2 == 0] if even_last else grid
    best: tuple[float, int, Ranks] | None = None
    for r1 in range(1, n_heads + 1):
        for r2 in grid:
            for r3 in last:
                count = side_parameters((r1, r2, r3), n_heads, d) + per_last * r3 + constant
                if count > budget:
                    break
                if r1 > r2 * r3 or r2 > r1 * r3 or r3 > r1 * r2:
                    continue  # a mode's rank cannot exceed the product of the other two
                bound = tails[0][r1] + tails[1][r2] + tails[2][r3]
                if best is None or (bound, count) < best[:2]:
                    best = (bound, count, (r1, r2, r3))
    if best is None:
        smallest = side_parameters((1, 1, 1), n_heads, d) + per_last + constant
        raise ValueError(f"budget={budget}: below the smallest Tucker side ({smallest} parameters)")
    return best[2]
