"""Grouped-query attention with RoPE converted to multi-head latent attention: the TransMLA / MHA2MLA recipe.

The anchor Tucker Attention is compared with at equal KV-cache bytes. A GQA layer's keys and values
(2 n_KV d_H numbers per token) become DeepSeek's MLA with decoupled RoPE, caching a joint latent c_KV
(d_c) and one rotary key k^R (d_R):

1. RoRoPE (TransMLA, Meng et al. 2025): per rotation frequency, the n_KV key pairs (one complex number
   per KV head) are rotated into a basis ordered by energy; a complex change of basis within one
   frequency commutes with RoPE, so this step is exact. The leading component of the d_R / 2 frequencies
   with the most energy keeps RoPE and forms k^R (MHA2MLA's partial RoPE keeps the frequencies that
   contribute most); every other component loses its rotation, the approximation both papers make.
2. The position-free keys K_nope (the keys minus their RoPE components) and the values are factorised
   jointly, [a K_nope; V] ~ [W^UK; W^UV] W^DKV, by a truncated SVD of their stacked weights, after
   scaling the keys so both blocks have the same norm (TransMLA's balanced KV).

Energies are measured on the weights (the query-weighted, RoPE-averaged score tensor of
:mod:`~structlab.tucker.rotary_compress`), as Tucker's HOSVD does, so both conversions start from the same
information; recovery (layer fitting, distillation) then treats both alike.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from structlab.tucker.attention import positive_int
from structlab.tucker.mha import GroupedQueryAttention
from structlab.tucker.mla import MultiHeadLatentAttention
from structlab.tucker.rotary_compress import _RotaryTensor, whitening


@torch.no_grad()
def gqa_to_mla(
    gqa: GroupedQueryAttention, kv_latent: int, rope_dim: int, input_covariance: Tensor | None = None
) -> MultiHeadLatentAttention:
    """MLA with decoupled RoPE approximating a RoPE ``gqa`` layer, caching ``kv_latent + rope_dim`` numbers.

    Args:
        gqa: a grouped-query (or multi-head) attention layer with RoPE and no biases.
        kv_latent: d_c, the joint key/value latent, at most 2 n_KV d_H - rope_dim and at most d.
        rope_dim: d_R, the rotary key's size (even, at most d_H: one rotating component per frequency).
        input_covariance: optional (d, d) second moment of the layer's inputs: energies and the joint
            factorisation are then measured on the inputs the layer sees (TransMLA's PCA works on
            activations), as :func:`~structlab.tucker.compress_rotary` does with it.

    Returns a float64 :class:`~structlab.tucker.MultiHeadLatentAttention` (no query latent) whose
    ``rope_frequencies`` are the kept frequencies of ``gqa``. Exact when nothing is dropped (rope_dim =
    d_H with n_KV = 1 and kv_latent covering the rest). Raises ``ValueError`` for sizes out of range, a
    layer without RoPE or with biases.
    """
    if not isinstance(gqa, GroupedQueryAttention):
        raise TypeError(f"gqa: expected a GroupedQueryAttention; got {type(gqa).__name__}")
    if not gqa.rope or gqa.bias:
        raise ValueError(f"gqa: expected RoPE without biases (rope={gqa.rope}, bias={gqa.bias})")
    n_h, n_kv, d_h, d = gqa.n_heads, gqa.n_kv_heads, gqa.head_dim, gqa.d_model
    positive_int("rope_dim", rope_dim)
    positive_int("kv_latent", kv_latent)
    if rope_dim % 2 or rope_dim > d_h:
        raise ValueError(f"rope_dim={rope_dim}: expected an even size of at most d_H={d_h}")
    if kv_latent > min(d, 2 * n_kv * d_h - rope_dim):
        raise ValueError(f"kv_latent={kv_latent}: expected at most {min(d, 2 * n_kv * d_h - rope_dim)}")
    tensor = _RotaryTensor(gqa.double(), whitening(input_covariance, d))
    group = n_h // n_kv
    kv_of_head = torch.arange(n_h) // group

    # Step 1: per frequency, components c = E^H Vh x with z = H c (H = U S E), ranked by energy.
    parts = []
    for f, block in enumerate(tensor.blocks):
        U, S, Vh = tensor.reducers[f]
        W = block.reshape(-1, block.shape[-1])
        values, E = torch.linalg.eigh(W.conj().T @ W)
        order = values.argsort(descending=True)
        values, E = values[order], E[:, order]
        parts.append({"H": (U * S.to(U.dtype)) @ E, "F": E.conj().T @ Vh, "lead": float(values[0]),  # F: on u
                      "pairs": tensor.pairs[f], "frequency": tensor.frequencies[f]})
    keep = sorted(range(len(parts)), key=lambda f: -parts[f]["lead"])[: rope_dim // 2]
    keep = sorted(keep, key=lambda f: -float(parts[f]["frequency"]))  # fastest rotation first, as RoPE orders

    # The keys' interleaved pair p of KV head g is latent pair g * d_H / 2 + j (j: the head's pair index).
    K_nope = torch.zeros(n_kv * d_h, d, dtype=torch.float64)
    k_rope = torch.zeros(rope_dim, d, dtype=torch.float64)
    q = gqa.q_proj.weight.double().view(n_h, d_h, d)  # head i's query pair j: rows 2j, 2j+1
    q_rope = torch.zeros(n_h, rope_dim, d, dtype=torch.float64)
    for f, part in enumerate(parts):
        H, F = part["H"], part["F"]
        nope = torch.arange(H.shape[1]) if f not in keep else torch.arange(1, H.shape[1])
        z = H[:, nope] @ F[nope]  # (n_KV, d) complex: the key pairs without their RoPE component
        for g, pair in enumerate(part["pairs"].tolist()):
            K_nope[2 * pair], K_nope[2 * pair + 1] = z[g].real, z[g].imag
        if f in keep:
            t = keep.index(f)
            rope_row = tensor.to_input(F[:1])[0]
            k_rope[2 * t], k_rope[2 * t + 1] = rope_row.real, rope_row.imag
            # Rotary query of head i: conj(H[g, 0]) y_i, y_i = (q_re + i q_im) x, as a 2 x 2 real block.
            j = int(part["pairs"][0]) % (d_h // 2)  # the same pair index in every head
            h = H[kv_of_head, 0].conj()  # (n_H,)
            q_re, q_im = q[:, 2 * j], q[:, 2 * j + 1]
            q_rope[:, 2 * t] = h.real[:, None] * q_re - h.imag[:, None] * q_im
            q_rope[:, 2 * t + 1] = h.imag[:, None] * q_re + h.real[:, None] * q_im
    # Step 2: joint low-rank keys and values, balanced.
    V = gqa.v_proj.weight.double()  # on x; K_nope is on u = L^-1 x, and so V L
    if tensor.L is not None:
        V = V @ tensor.L
    alpha = float(V.norm() / K_nope.norm().clamp_min(1e-300))
    P, sigma, Qh = torch.linalg.svd(torch.cat((alpha * K_nope, V)), full_matrices=False)
    down = tensor.to_input(sigma[:kv_latent, None] * Qh[:kv_latent])  # W^DKV (d_c, d), acting on x
    up_k, up_v = P[: n_kv * d_h, :kv_latent] / alpha, P[n_kv * d_h :, :kv_latent]

    mla = MultiHeadLatentAttention(d, n_h, kv_latent, rope=True, rope_mode="decoupled", rope_head_dim=rope_dim,
                                   causal=gqa.causal).double()
    ratio = math.sqrt((d_h + rope_dim) / d_h)  # MLA scales scores by 1/sqrt(d_H + d_R); GQA by 1/sqrt(d_H)
    heads = up_k.view(n_kv, d_h, kv_latent)[kv_of_head]  # head i reads its KV head's keys and values
    mla.q_proj.weight.copy_(gqa.q_proj.weight.double() * ratio)
    mla.kv_down.weight.copy_(down)
    mla.k_up.weight.copy_(heads.reshape(n_h * d_h, kv_latent))
    mla.v_up.weight.copy_(up_v.view(n_kv, d_h, kv_latent)[kv_of_head].reshape(n_h * d_h, kv_latent))
    mla.o_proj.weight.copy_(gqa.o_proj.weight.double())
    mla.q_rope.weight.copy_(q_rope.reshape(n_h * rope_dim, d) * ratio)
    mla.k_rope.weight.copy_(k_rope)
    mla.rope_frequencies = torch.stack([parts[f]["frequency"] for f in keep]).double()
    return mla.train(gqa.training)

