"""Rotary position embedding (RoPE), in the interleaved-pair form of RoFormer (Su et al., eq. 34).

A vector's coordinates are taken in pairs ``(x[2j], x[2j+1])`` and the pair ``j`` is rotated by the
angle ``position * theta_j``. Then ``<R_m q, R_n k> = <q, R_(n-m) k>``: scores depend only on the
position difference. The paper's *latent RoPE* applies this rotation to the r3-dimensional query and
key latents of Tucker Attention (and to the d_c-dimensional latent of MLA), with frequencies set by the
latent size.

Interleaved pairs (rather than the "rotate half" layout) keep every pair inside one contiguous block, so
a per-head rotation of MHA/GQA is the same rotation applied to the concatenated keys with the
frequencies tiled per block: this is what makes ``to_tucker`` exact for RoPE layers. A frequency of 0
leaves its pair unrotated (used for MLA's decoupled RoPE, where only part of the latent rotates).
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotary_frequencies(dim: int, base: float = 10000.0) -> Tensor:
    """The angles per position ``theta_j = base^(-2j/dim)`` for ``j < dim/2`` (float64, shape (dim/2,)).

    Raises ``ValueError`` for an odd or non-positive ``dim`` or a ``base`` <= 1.
    """
    if not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"rotary dim={dim!r}: expected a positive even int (RoPE rotates pairs)")
    if not base > 1.0:
        raise ValueError(f"rope_base={base!r}: expected a number > 1")
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def rotary_angles(frequencies: Tensor, offset: int, seq: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin of the angles of positions ``offset .. offset + seq - 1``: each (seq, dim/2).

    The angles are computed in float64 and cast to ``like``'s dtype (and device), so positions in the
    thousands keep their precision. Queries and keys at the same positions share one table.
    """
    positions = torch.arange(offset, offset + seq, dtype=torch.float64, device=like.device)
    angles = positions[:, None] * frequencies.to(device=like.device, dtype=torch.float64)[None, :]
    return angles.cos().to(like.dtype), angles.sin().to(like.dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the pairs ``(x[2j], x[2j+1])`` of ``x`` (..., seq, dim) by the angles of :func:`rotary_angles`."""
    pairs = x.unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def apply_rotary(x: Tensor, frequencies: Tensor, offset: int = 0) -> Tensor:
    """Rotate the pairs of ``x`` (..., seq, dim) at positions ``offset, offset + 1, ...``.

    ``frequencies`` has shape (dim/2,) (see :func:`rotary_frequencies`).
    """
    return rotate(x, *rotary_angles(frequencies, offset, x.shape[-2], x))


class RotaryTurns:
    """The rotations exp(i n theta_j) of RoPE as complex numbers, one row per position, times ``scale``.

    For decoding, where each step rotates one position: looking a row up replaces computing the angles,
    cos and sin (eight small tensor operations) at every step, and the rotation itself becomes one
    complex multiplication of the pairs ``x[2j] + i x[2j+1]`` (RoFormer eq. 34 in complex form). The
    rows hold exactly the values :func:`rotary_angles` gives (angles in float64, cast to the dtype), times
    ``scale`` (which folds a score scale into the queries' rotation). The table is built on first use,
    grows by doubling, and is rebuilt when the frequencies, dtype or device change.
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self._table: Tensor | None = None
        self._key: tuple | None = None

    def row(self, frequencies: Tensor, position: int, like: Tensor) -> Tensor:
        """exp(i position theta_j) * scale for every pair j: complex, shape (dim/2,), of ``like``'s precision.

        ``like`` must be float32 or float64 (complex32 has no CPU multiplication).
        """
        # An in-place change of the frequencies (load_state_dict) bumps their version; inference tensors
        # have none (and cannot be changed outside inference mode).
        version = -1 if frequencies.is_inference() else frequencies._version
        key = (frequencies.data_ptr(), version, like.dtype, like.device)
        if self._table is None or key != self._key or position >= self._table.shape[0]:
            length = max(position + 1, 256, 2 * self._table.shape[0] if key == self._key else 0)
            cos, sin = rotary_angles(frequencies, 0, length, like)
            self._table = torch.complex(cos * self.scale, sin * self.scale)
            self._key = key
        return self._table[position]


def rotate_pairs(x: Tensor, turn: Tensor) -> Tensor:
    """``x`` (..., dim) with its pairs rotated (and scaled) by ``turn`` (dim/2,) complex: one multiplication."""
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * turn).flatten(-2)


Rotary = tuple[Tensor, Tensor]


def rotary_table(rotary: Rotary | None, frequencies: Tensor, offset: int, seq: int, like: Tensor) -> Rotary:
    """cos and sin for rotating ``like`` (B, H, seq, 2 P): the caller's ``rotary`` table, or the layer's own.

    ``rotary`` is None (angles ``position * frequencies`` at positions ``offset ..``) or a pair (cos, sin),
    each of shape (seq, P) or (B, seq, P): angles chosen by the caller per batch row and pair, such as
    a host model's rotary table (a Hugging Face model passes each row its own positions, and some RoPE
    variants scale cos and sin). Raises ``ValueError`` for a table of another shape.
    """
    if rotary is None:
        return rotary_angles(frequencies, offset, seq, like)
    if not isinstance(rotary, (tuple, list)) or len(rotary) != 2 or not all(isinstance(t, Tensor) for t in rotary):
        raise TypeError(f"rotary: expected a pair of tensors (cos, sin); got {type(rotary).__name__}")
    pairs = frequencies.shape[0]
    cos, sin = rotary
    for name, t in (("cos", cos), ("sin", sin)):
        batch_ok = t.dim() == 2 or t.shape[0] in (1, like.shape[0])
        if t.dim() not in (2, 3) or tuple(t.shape[-2:]) != (seq, pairs) or not batch_ok:
            raise ValueError(
                f"rotary {name} has shape {tuple(t.shape)}: expected ({seq}, {pairs}) or (batch, {seq}, {pairs}) "
                "(one angle per position and rotated pair)"
            )
    if cos.dim() == 3:  # (B, seq, P) -> (B, 1, seq, P): the same angles for every head
        cos, sin = cos[:, None], sin[:, None]
    return cos.to(like.dtype), sin.to(like.dtype)
