"""Choosing Tucker ranks for a parameter budget: the ranks whose truncated HOSVD has the smallest error.

The truncated HOSVD of T at ranks (r1, r2, r3) keeps the leading r_n singular vectors of each mode
unfolding, and its core is the leading r1 x r2 x r3 block of the full-rank HOSVD core G (De Lathauwer,
De Moor & Vandewalle 2000). With orthonormal factors ||T - T_hat||^2 = ||T||^2 - ||core||^2, so the error
of every rank triple is read off one cumulative sum of G^2: the search over all ranks within the budget
is exact and costs one full HOSVD. (The usual bound, the dropped energy summed over the modes, is
loose for slowly decaying spectra and picks lopsided ranks such as (12, 7, 56).)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Ranks = tuple[int, int, int]


def side_parameters(ranks: Sequence[int], n_heads: int, d_model: int) -> int:
    """Parameters of one Tucker side: r1 r2 r3 + n_H r1 + d r2 + d r3 (paper, parameter count)."""
    r1, r2, r3 = ranks
    return r1 * r2 * r3 + n_heads * r1 + d_model * (r2 + r3)


def captured_energy(tensor: torch.Tensor) -> torch.Tensor:
    """``E[a, b, c]`` = ||core||^2 of the truncated HOSVD of ``tensor`` at ranks (a+1, b+1, c+1) (float64)."""
    if tensor.dim() != 3:
        raise ValueError(f"tensor: shape {tuple(tensor.shape)}; expected a third-order tensor")
    t = tensor.double()
    factors = []
    for mode in range(3):
        unfolding = t.movedim(mode, 0).reshape(t.shape[mode], -1)
        # Left singular vectors from the small Gram matrix (a wide SVD is many times slower), descending.
        _, vectors = torch.linalg.eigh(unfolding @ unfolding.T)
        factors.append(vectors.flip(1))
    core = torch.einsum("ijk,ia,jb,kc->abc", t, *factors)
    return (core**2).cumsum(0).cumsum(1).cumsum(2)


def ranks_for_budget(
    tensor: torch.Tensor, budget: float, step: int = 8, even_last: bool = False, per_last: int = 0,
    constant: int = 0,
) -> Ranks:
    """The ranks (r1, r2, r3) of one side whose truncated HOSVD of ``tensor`` has the least error within
    ``budget`` parameters.

    ``tensor`` has shape (n_H, d, d) (W_qk or W_vo). The side costs :func:`side_parameters` plus
    ``per_last * r3 + constant`` (biases: (n_H + 1) r3 on the query-key side, v3 + d on the
    value-output side). r1 ranges over every head count, r2 and r3 over multiples of ``step`` (and
    1 .. step - 1 below it), each at most the product of the other two (a core beyond that is not full
    rank); ``even_last`` keeps r3 even (latent RoPE). Raises ``ValueError`` when even ranks (1, 1, 1)
    exceed the budget.
    """
    n_heads, d2, d3 = tensor.shape
    if d2 != d3:
        raise ValueError(f"tensor: shape {tuple(tensor.shape)}; expected (n_heads, d_model, d_model)")
    d = d2
    energy = captured_energy(tensor).numpy()
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
                lost = -float(energy[r1 - 1, r2 - 1, r3 - 1])
                if best is None or (lost, count) < best[:2]:
                    best = (lost, count, (r1, r2, r3))
    if best is None:
        smallest = side_parameters((1, 1, 1), n_heads, d) + per_last + constant
        raise ValueError(f"budget={budget}: below the smallest Tucker side ({smallest} parameters)")
    return best[2]
