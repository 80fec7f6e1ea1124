"""The attention tensors of a layer, their mode unfoldings, spectra and Tucker ranks.

Every layer of this package is, per head i, the bilinear score form W_qk[i] = W_i^Q W_i^K^T and the
value-output map W_vo[i] = (W_i^V W_i^O)^T. Stacked over heads they are the paper's two third-order
tensors, with modes (head, query, key) and (head, output, value). :func:`latent_form` writes any layer
in one factored form,

    W_qk[i] = U_q B_i U_k^T        W_vo[i] = U_o C_i U_v^T,

a Tucker form whose head factor is the identity (the paper's constructions for MHA, GQA and MLA). It
also carries what the tensors leave out: biases, the score scale and the RoPE frequencies of the key
latent, so that :func:`~structlab.tucker.to_tucker` can rebuild the layer exactly. The tensors, their
spectra and ranks are computed from that form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from structlab.tucker.mha import GroupedQueryAttention
from structlab.tucker.mla import MultiHeadLatentAttention
from structlab.tucker.tucker import TuckerAttention

AttentionLayer = GroupedQueryAttention | MultiHeadLatentAttention | TuckerAttention
Triple = tuple[int, int, int]


@dataclass
class LatentForm:
    """A layer as Q_i = X U_q B_i + query_bias[i], K = X U_k + key_bias, V = X U_v + value_bias.

    Head i's scores are scale * <rot(Q_i), rot(K)> (rot: RoPE with ``rope_frequencies`` on the key
    latent, if any) and the output is sum_i A_i V C_i^T U_o^T + output_bias. Shapes: U_q (d, p),
    B (n_H, p, r), U_k (d, r), U_v (d, s), C (n_H, o, s), U_o (d, o); biases (n_H, r), (r), (s), (d) or
    None. ``shared_latent``: U_v is U_k and V is K.
    """

    U_q: Tensor
    B: Tensor
    U_k: Tensor
    U_v: Tensor
    C: Tensor
    U_o: Tensor
    scale: float
    causal: bool
    query_bias: Tensor | None = None
    key_bias: Tensor | None = None
    value_bias: Tensor | None = None
    output_bias: Tensor | None = None
    rope_frequencies: Tensor | None = None
    shared_latent: bool = False

    @property
    def has_bias(self) -> bool:
        return any(b is not None for b in (self.query_bias, self.key_bias, self.value_bias, self.output_bias))


def _check_layer(module: object, name: str = "module") -> None:
    if not isinstance(module, (GroupedQueryAttention, MultiHeadLatentAttention, TuckerAttention)):
        raise TypeError(
            f"{name}: expected MultiHeadAttention, GroupedQueryAttention, MultiHeadLatentAttention or "
            f"TuckerAttention; got {type(module).__name__}"
        )


def check_finite(module: nn.Module, name: str = "module") -> None:
    """Raise ``ValueError`` naming the first parameter of ``module`` that holds NaN or inf.

    Non-finite weights do not fail loudly elsewhere: CPU SDPA gives finite outputs for NaN scores, and
    the SVDs of a decomposition stop with a LAPACK error that names no weight.
    """
    for weight_name, weight in module.named_parameters():
        bad = int((~torch.isfinite(weight.detach())).sum())
        if bad:
            raise ValueError(
                f"{name}: weight {weight_name!r} {tuple(weight.shape)} has {bad} non-finite value(s) (NaN or inf); "
                "expected finite weights (a diverged training run or a damaged file?)"
            )


def _bias(linear: nn.Linear) -> Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


@torch.no_grad()
def latent_form(module: AttentionLayer) -> LatentForm:
    """``module`` in the factored form of :class:`LatentForm` (detached tensors, the module's dtype).

    The constructions are the paper's: MHA/GQA with U_q = I, B_i = W_i^Q placed in its key/value
    group's block and U_k = W^K (ranks (n_H, d, n_KV d_H)); MLA with U_q = W^DQ, B_i = W_i^UQ W_i^UK^T,
    U_k = U_v = W^DKV (ranks (n_H, d_cq, d_c) and (n_H, d, d_c)); Tucker with B_i = core x_1 U_head[i].
    Raises ``TypeError`` for another module and ``ValueError`` for a weight with NaN or inf.
    """
    _check_layer(module)
    check_finite(module)
    if isinstance(module, TuckerAttention):
        return LatentForm(
            U_q=module.U_q.detach(), B=module.query_cores().detach(), U_k=module.U_k.detach(),
            U_v=module.value_factor.detach(), C=module.value_cores().detach(), U_o=module.U_o.detach(),
            scale=module.head_dim**-0.5, causal=module.causal,
            query_bias=_detach(module.query_bias), key_bias=_detach(module.key_bias),
            value_bias=_detach(module.key_bias if module.shared_latent else module.value_bias),
            output_bias=_detach(module.output_bias),
            rope_frequencies=module.rope_frequencies, shared_latent=module.shared_latent,
        )
    if isinstance(module, GroupedQueryAttention):
        return _gqa_form(module)
    return _mla_form(module)


def _detach(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


def _gqa_form(m: GroupedQueryAttention) -> LatentForm:
    n_h, n_kv, d_h, d = m.n_heads, m.n_kv_heads, m.head_dim, m.d_model
    group = n_h // n_kv
    w_q = m.q_proj.weight.detach().T.reshape(d, n_h, d_h)  # W_i^Q = w_q[:, i]
    w_o = m.o_proj.weight.detach().T.reshape(n_h, d_h, d)  # W_i^O = w_o[i]
    eye = torch.eye(d, dtype=w_q.dtype, device=w_q.device)
    # Place head i's d_H columns in the block of its key/value head g(i) = i // group (S_g^T).
    B = w_q.new_zeros(n_h, d, n_kv, d_h)
    C_t = w_q.new_zeros(n_h, n_kv, d_h, d)  # C_i^T = S_g W_i^O
    heads = torch.arange(n_h)
    B[heads, :, heads // group] = w_q.permute(1, 0, 2)
    C_t[heads, heads // group] = w_o
    query_bias = None
    if m.q_proj.bias is not None:
        query_bias = w_q.new_zeros(n_h, n_kv, d_h)
        query_bias[heads, heads // group] = m.q_proj.bias.detach().view(n_h, d_h)
        query_bias = query_bias.reshape(n_h, n_kv * d_h)
    # The layer's own frequencies (rotary_frequencies(d_H, rope_base), or a converted model's scaled ones).
    frequencies = m.rope_frequencies.double().cpu().repeat(n_kv) if m.rope else None
    return LatentForm(
        U_q=eye, B=B.reshape(n_h, d, n_kv * d_h), U_k=m.k_proj.weight.detach().T,
        U_v=m.v_proj.weight.detach().T, C=C_t.reshape(n_h, n_kv * d_h, d).transpose(1, 2), U_o=eye,
        scale=d_h**-0.5, causal=m.causal, query_bias=query_bias, key_bias=_bias(m.k_proj),
        value_bias=_bias(m.v_proj), output_bias=_bias(m.o_proj), rope_frequencies=frequencies,
    )


def _mla_form(m: MultiHeadLatentAttention) -> LatentForm:
    n_h, d_h, d, d_c = m.n_heads, m.head_dim, m.d_model, m.kv_latent
    up_q = m.q_proj if m.q_latent is None else m.q_up
    w_uq = up_q.weight.detach().view(n_h, d_h, -1)  # (n_H, d_H, d_cq): W_i^UQ^T
    w_uk = m.k_up.weight.detach().view(n_h, d_h, d_c)  # W_i^UK^T
    w_uv = m.v_up.weight.detach().view(n_h, d_h, d_c)  # W_i^UV^T
    w_o = m.o_proj.weight.detach().T.reshape(n_h, d_h, d)  # W_i^O
    eye = torch.eye(d, dtype=w_uq.dtype, device=w_uq.device)
    U_q = eye if m.q_latent is None else m.q_down.weight.detach().T  # W^DQ
    b_dq = None if m.q_latent is None else _bias(m.q_down)
    B = torch.einsum("hec,hek->hck", w_uq, w_uk)  # W_i^UQ W_i^UK^T
    # Query bias in the latent: (b^DQ W_i^UQ + b_i^UQ) W_i^UK^T. The bias of W^UK only shifts rows.
    q_bias_heads = None
    if up_q.bias is not None:
        q_bias_heads = up_q.bias.detach().view(n_h, d_h)
        if b_dq is not None:
            q_bias_heads = q_bias_heads + torch.einsum("c,hec->he", b_dq, w_uq)
    query_bias = None if q_bias_heads is None else torch.einsum("he,hek->hk", q_bias_heads, w_uk)
    U_k = m.kv_down.weight.detach().T  # W^DKV
    key_bias = _bias(m.kv_down)
    # The value bias b_i^UV adds b_i^UV W_i^O to the output (rows of softmax sum to one).
    output_bias = _bias(m.o_proj)
    if m.v_up.bias is not None:
        output_bias = output_bias + torch.einsum("he,hed->d", m.v_up.bias.detach().view(n_h, d_h), w_o)
    C = torch.einsum("hek,hed->hdk", w_uv, w_o)  # C_i = (W_i^UV W_i^O)^T, U_o = I
    form = LatentForm(
        U_q=U_q, B=B, U_k=U_k, U_v=U_k, C=C, U_o=eye, scale=m.scale, causal=m.causal,
        query_bias=query_bias, key_bias=key_bias, value_bias=key_bias, output_bias=output_bias,
        rope_frequencies=m.rope_frequencies if m.rope else None, shared_latent=True,
    )
    if not m.decoupled:
        return form
    # Decoupled RoPE (DeepSeek-V2): the key latent is [c_KV, k^R] with RoPE on k^R only (frequency 0
    # leaves the c_KV pairs unrotated); the query latent of head i is [q_i W_i^UK^T, q_i^R].
    d_r = m.rope_head_dim
    if d_c % 2:
        raise ValueError(
            f"kv_latent={d_c} is odd: decoupled RoPE has no exact latent form (its rotary pairs would "
            "straddle the latent); expected an even kv_latent"
        )
    w_qr = m.q_rope.weight.detach().view(n_h, d_r, -1)  # W_i^QR^T: (n_H, d_R, d_cq)
    form.B = torch.cat((B, w_qr.transpose(1, 2)), dim=2)
    if m.q_rope.bias is not None:
        q_r_bias = m.q_rope.bias.detach().view(n_h, d_r)
        if b_dq is not None:
            q_r_bias = q_r_bias + torch.einsum("c,hrc->hr", b_dq, w_qr)
        form.query_bias = torch.cat((query_bias, q_r_bias), dim=1)
    form.U_k = torch.cat((U_k, m.k_rope.weight.detach().T), dim=1)
    if key_bias is not None:
        form.key_bias = torch.cat((key_bias, m.k_rope.bias.detach()))
    form.rope_frequencies = torch.cat((torch.zeros(d_c // 2, dtype=torch.float64), m.rope_frequencies.cpu()))
    form.shared_latent = False
    return form


def attention_tensors(module: AttentionLayer) -> tuple[Tensor, Tensor]:
    """The layer's query-key and value-output tensors (W_qk, W_vo), each (n_heads, d_model, d_model).

    W_qk has modes (head, query, key), W_qk[i] = W_i^Q W_i^K^T; W_vo has modes (head, output, value),
    W_vo[i] = (W_i^V W_i^O)^T. The score scale, biases and RoPE are not part of the tensors (with
    RoPE, W_qk[i] is the score form at relative position 0). Detached, in the module's dtype.
    Raises ``TypeError`` for a module that is not one of this package's attention layers.
    """
    form = latent_form(module)
    W_qk = torch.einsum("dp,hpr,er->hde", form.U_q, form.B, form.U_k)
    W_vo = torch.einsum("do,hos,es->hde", form.U_o, form.C, form.U_v)
    return W_qk, W_vo


def unfold(tensor: Tensor, mode: int) -> Tensor:
    """The mode-``mode`` unfolding of a third-order tensor (Kolda & Bader): (size of mode, product of the rest).

    Mode 0 is the head mode, 1 the query (output) mode, 2 the key (value) mode.
    """
    if tensor.dim() != 3:
        raise ValueError(f"tensor has shape {tuple(tensor.shape)}: expected a third-order tensor")
    if mode not in (0, 1, 2):
        raise ValueError(f"mode={mode!r}: expected 0 (head), 1 (query/output) or 2 (key/value)")
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)


def singular(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Left singular vectors and singular values (descending) of a matrix, via a QR for wide ones.

    LAPACK's SVD (MKL) of a wide matrix such as a 384 x 4608 unfolding takes tens of seconds; with the
    thin QR M^T = Q R, M = R^T Q^T has M's left singular vectors and values, and the SVD is m x m.
    """
    if matrix.shape[0] < matrix.shape[1]:
        matrix = torch.linalg.qr(matrix.T, mode="r").R.T
    U, S, _ = torch.linalg.svd(matrix, full_matrices=False)
    return U, S


def _orthogonal_reduction(U: Tensor) -> Tensor:
    """R with U = Q R (Q orthonormal, thin QR); for a square U the identity is not needed."""
    return torch.linalg.qr(U, mode="r").R


def _spectra(B: Tensor, U_2: Tensor, U_3: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Singular values of the three unfoldings of B x_2 U_2 x_3 U_3 (head factor the identity).

    Orthonormal factors do not change the singular values of any unfolding, so the tensor is reduced
    to B x_2 R_2 x_3 R_3 with U_n = Q_n R_n (at most (n_H, min(d, p), min(d, r))) before the SVDs.
    """
    B, U_2, U_3 = B.double(), U_2.double(), U_3.double()
    reduced = torch.einsum("hpr,ap,br->hab", B, _orthogonal_reduction(U_2), _orthogonal_reduction(U_3))
    return tuple(singular(unfold(reduced, mode))[1] for mode in range(3))  # type: ignore[return-value]


@torch.no_grad()
def mode_spectra(module: AttentionLayer) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """Singular values (float64, descending) of every mode unfolding of W_qk and of W_vo.

    Returns ((head, query, key), (head, output, value)): the paper's per-mode spectra ("actual ranks"
    analysis); the energy kept by the leading r singular values of a mode is the sum of their squares.
    """
    form = latent_form(module)
    return _spectra(form.B, form.U_q, form.U_k), _spectra(form.C, form.U_o, form.U_v)


def _count(values: Tensor, rtol: float) -> int:
    return int((values > rtol * values.max()).sum()) if values.numel() and values.max() > 0 else 0


def tucker_ranks(module: AttentionLayer, rtol: float = 1e-8) -> tuple[Triple, Triple]:
    """Numerical multilinear ranks ((r1, r2, r3), (v1, v2, v3)) of W_qk and W_vo, in their mode orders.

    A mode's rank is the number of singular values of its unfolding above ``rtol`` times the largest.
    Raises ``ValueError`` for an ``rtol`` outside (0, 1).
    """
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol={rtol!r}: expected a relative tolerance in (0, 1)")
    qk, vo = mode_spectra(module)
    return tuple(_count(s, rtol) for s in qk), tuple(_count(s, rtol) for s in vo)  # type: ignore[return-value]


def theoretical_ranks(module: AttentionLayer) -> tuple[Triple, Triple]:
    """The multilinear ranks the paper's theorem gives for the layer's structure (reached by generic weights).

    MHA (n_H, d, d) on both sides; GQA (n_H, d, n_KV d_H); MLA (n_H, d_cq, d_c) and (n_H, d, d_c) (d_cq = d
    without a query latent; d_c + d_R on the key mode with decoupled RoPE); Tucker its ranks. Each is
    capped by the product of the other two modes' ranks, which small layers can hit.
    """
    _check_layer(module)
    n_h, d = module.n_heads, module.d_model
    if isinstance(module, TuckerAttention):
        qk, vo = module.ranks, module.value_ranks
    elif isinstance(module, GroupedQueryAttention):
        width = module.n_kv_heads * module.head_dim
        qk = vo = (n_h, d, width)
    else:
        d_cq = module.q_latent or d
        qk = (n_h, d_cq, min(d, module.kv_latent + (module.rope_head_dim or 0)))
        vo = (n_h, d, module.kv_latent)
    return _cap(qk), _cap(vo)


def _cap(ranks: Triple) -> Triple:
    r1, r2, r3 = ranks
    return (min(r1, r2 * r3), min(r2, r1 * r3), min(r3, r1 * r2))


def energy(values: Tensor) -> Tensor:
    """Cumulative energy fraction of singular values: ``energy(s)[k-1]`` is kept by a rank-k truncation."""
    squares = values.double() ** 2
    return squares.cumsum(0) / squares.sum().clamp_min(math.ulp(0.0))
