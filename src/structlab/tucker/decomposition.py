"""Tucker decompositions (HOSVD, HOOI) and the conversions of attention layers to Tucker Attention.

``to_tucker`` is exact: it rebuilds a layer from its factored form (:func:`~structlab.tucker.tensors.
latent_form`, the paper's constructions) with the identity as head factor, at the theorem's ranks.
``compress`` approximates a layer's two attention tensors at lower ranks with the truncated
higher-order SVD (De Lathauwer, De Moor & Vandewalle 2000) or with higher-order orthogonal iteration
(HOOI; De Lathauwer et al. 2000, Kolda & Bader 2009, Alg. 4.2) started from the HOSVD.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from structlab.tucker.tensors import AttentionLayer, _check_layer, attention_tensors, latent_form, singular, unfold
from structlab.tucker.tucker import Ranks, TuckerAttention, check_ranks


@dataclass
class TuckerDecomposition:
    """T ~ core x_1 factors[0] x_2 factors[1] x_3 factors[2], factors with orthonormal columns."""

    core: Tensor
    factors: tuple[Tensor, Tensor, Tensor]

    def full(self) -> Tensor:
        """The tensor this decomposition represents."""
        return torch.einsum("abc,ia,jb,kc->ijk", self.core, *self.factors)

    def relative_error(self, tensor: Tensor) -> float:
        """||tensor - full()||_F / ||tensor||_F."""
        return float(torch.linalg.vector_norm(tensor - self.full()) / torch.linalg.vector_norm(tensor))


def _leading(matrix: Tensor, rank: int) -> Tensor:
    """The ``rank`` leading left singular vectors of ``matrix``.

    A wide matrix with fewer columns than ``rank`` (in HOOI, a mode rank above the product of the other
    two) has fewer singular vectors: the basis is completed with orthonormal columns, which carry none
    of its energy.
    """
    U = singular(matrix)[0][:, :rank]
    if U.shape[1] < rank:
        eye = torch.eye(U.shape[0], dtype=U.dtype, device=U.device)
        U = torch.linalg.qr(torch.cat((U, eye), dim=1)).Q[:, :rank]
    return U


def _check_decomposition_args(tensor: Tensor, ranks: Sequence[int]) -> tuple[int, int, int]:
    if not isinstance(tensor, Tensor) or tensor.dim() != 3:
        raise ValueError(f"tensor: expected a third-order torch.Tensor; got shape {getattr(tensor, 'shape', None)}")
    if len(ranks) != 3 or not all(
        isinstance(r, int) and 1 <= r <= n for r, n in zip(ranks, tensor.shape, strict=True)
    ):
        raise ValueError(f"ranks={tuple(ranks)}: expected three ints, each in 1 .. its mode size {tuple(tensor.shape)}")
    return tuple(ranks)  # type: ignore[return-value]


def _project(tensor: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """tensor x_1 U_1^T x_2 U_2^T x_3 U_3^T."""
    return torch.einsum("ijk,ia,jb,kc->abc", tensor, *factors)


_EXCEPT = {0: "ijk,jb,kc->ibc", 1: "ijk,ia,kc->ajc", 2: "ijk,ia,jb->abk"}


def _project_except(tensor: Tensor, factors: Sequence[Tensor], mode: int) -> Tensor:
    """tensor x_m U_m^T for the two modes m != ``mode`` (that mode keeps its full size)."""
    others = [f for m, f in enumerate(factors) if m != mode]
    return torch.einsum(_EXCEPT[mode], tensor, *others)


def hosvd(tensor: Tensor, ranks: Sequence[int]) -> TuckerDecomposition:
    """Truncated higher-order SVD: U_n = leading r_n left singular vectors of the mode-n unfolding.

    ``tensor`` is third-order; ``ranks`` one rank per mode. The error is at most sqrt(3) times the best
    rank-(r1, r2, r3) error (De Lathauwer et al. 2000, property 10). Raises ``ValueError`` for a rank
    outside 1 .. its mode size.
    """
    ranks = _check_decomposition_args(tensor, ranks)
    factors = tuple(_leading(unfold(tensor, mode), r) for mode, r in enumerate(ranks))
    return TuckerDecomposition(_project(tensor, factors), factors)  # type: ignore[arg-type]


def hooi(
    tensor: Tensor,
    ranks: Sequence[int],
    init: TuckerDecomposition | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> TuckerDecomposition:
    """Higher-order orthogonal iteration, started from ``init`` (default: the HOSVD).

    Each sweep sets U_n to the leading left singular vectors of (T x_{m != n} U_m^T)_(n), which
    maximises ||core||_F over U_n with the others fixed; since ||T - T_hat||^2 = ||T||^2 - ||core||^2 for
    orthonormal factors, the error never increases. Stops after ``max_iter`` sweeps or when a sweep
    raises ||core||^2 / ||T||^2 (the fraction of energy kept) by less than ``tol``; on MiniLM's attention
    tensors the relative error is then within 1e-4 of its limit after about 15 sweeps. The best sweep is
    returned, so the result is never worse than ``init``.
    """
    ranks = _check_decomposition_args(tensor, ranks)
    best = init if init is not None else hosvd(tensor, ranks)
    factors = list(best.factors)
    total = float(torch.linalg.vector_norm(tensor) ** 2)
    best_fit = float(torch.linalg.vector_norm(best.core) ** 2)
    for _ in range(max_iter):
        for mode in range(3):
            factors[mode] = _leading(unfold(_project_except(tensor, factors, mode), mode), ranks[mode])
        core = _project(tensor, factors)
        fit = float(torch.linalg.vector_norm(core) ** 2)
        improved = fit - best_fit
        if improved > 0:
            best, best_fit = TuckerDecomposition(core, tuple(factors)), fit  # type: ignore[arg-type]
        if improved <= tol * total:
            break
    return best


def _as_parameters(module: nn.Module, **values: Tensor | None) -> None:
    """Replace ``module``'s parameters by ``values`` (keeping their dtype and device)."""
    for name, value in values.items():
        if getattr(module, name) is not None:
            setattr(module, name, nn.Parameter(value.detach().clone().contiguous()))


@torch.no_grad()
def to_tucker(module: AttentionLayer) -> TuckerAttention:
    """The exact Tucker Attention form of an MHA, GQA, MLA (or Tucker) layer.

    The result has ranks (n_H, d, d) for MHA, (n_H, d, n_KV d_H) for GQA, (n_H, d_cq, d_c) and
    (n_H, d, d_c) for MLA (with a shared key/value latent), identity head factors, and the source's
    causality, biases, dropout and RoPE (per-head RoPE becomes latent RoPE with the frequencies tiled
    per head; DeepSeek's decoupled RoPE becomes latent RoPE on the extra d_R latent dimensions). Same
    dtype and device as the source. Raises ``TypeError`` for any other module.
    """
    _check_layer(module)
    if isinstance(module, TuckerAttention):
        return copy.deepcopy(module)
    form = latent_form(module)
    n_h = module.n_heads
    ranks = (n_h, *form.B.shape[1:])
    value_ranks = (n_h, *form.C.shape[1:])
    tucker = TuckerAttention(
        module.d_model, n_h, ranks, value_ranks, causal=module.causal, rope=module.rope,
        bias=form.has_bias, dropout=module.dropout, rope_base=module.rope_base,
        shared_latent=form.shared_latent, rope_frequencies=form.rope_frequencies,
    )
    ratio = form.scale / tucker.head_dim**-0.5  # a different score scale folds into the query side
    eye = torch.eye(n_h, dtype=form.B.dtype, device=form.B.device)
    _as_parameters(
        tucker, core=form.B * ratio, U_head=eye, U_q=form.U_q, U_k=form.U_k,
        core_v=form.C, U_head_v=eye, U_o=form.U_o, U_v=form.U_v,
    )
    if form.has_bias:
        zeros = form.B.new_zeros
        _as_parameters(
            tucker,
            query_bias=ratio * form.query_bias if form.query_bias is not None else zeros(n_h, ranks[2]),
            key_bias=form.key_bias if form.key_bias is not None else zeros(ranks[2]),
            value_bias=form.value_bias if form.value_bias is not None else zeros(value_ranks[2]),
            output_bias=form.output_bias if form.output_bias is not None else zeros(module.d_model),
        )
    tucker.rope_frequencies = None if tucker.rope_frequencies is None else tucker.rope_frequencies.to(form.B.device)
    return tucker.train(module.training)


def _split_ranks(ranks: object, module: AttentionLayer) -> tuple[Ranks, Ranks]:
    pair = (
        isinstance(ranks, (tuple, list)) and len(ranks) == 2
        and all(isinstance(r, (tuple, list)) for r in ranks)
    )
    qk, vo = ranks if pair else (ranks, ranks)  # type: ignore[misc]
    return (
        check_ranks("ranks (query-key side)", qk, module.n_heads, module.d_model),
        check_ranks("ranks (value-output side)", vo, module.n_heads, module.d_model),
    )


@torch.no_grad()
def compress(
    module: AttentionLayer,
    ranks: Ranks | tuple[Ranks, Ranks],
    method: Literal["hosvd", "hooi"] = "hosvd",
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> TuckerAttention:
    """A Tucker Attention layer whose tensors approximate ``module``'s at lower ranks.

    Args:
        module: an attention layer of this package, without RoPE (RoPE rotates the key latent, and a
            new key basis does not commute with that rotation).
        ranks: (r1, r2, r3) for both sides, or ((r1, r2, r3), (v1, v2, v3)) for the query-key and
            value-output sides, in the mode orders (head, query, key) and (head, output, value).
        method: "hosvd" (truncated HOSVD) or "hooi" (HOOI started from the HOSVD, never worse).
        max_iter, tol: HOOI's sweep limit and relative stopping tolerance.

    W_qk and W_vo are decomposed in float64. Biases: the query bias's score term b_i K^T is kept as
    far as the new key latent spans it (orthogonal projection; exact at full rank), the key bias is
    dropped (it only shifts each row of scores) and the value bias is folded into the output bias
    (exactly). With full ranks the result equals ``module`` up to rounding. Same dtype and device as
    ``module``. Raises ``ValueError`` for RoPE layers, bad ranks or an unknown method.
    """
    _check_layer(module)
    if method not in ("hosvd", "hooi"):
        raise ValueError(f"method={method!r}: expected 'hosvd' or 'hooi'")
    if module.rope:
        raise ValueError(
            "module has rope=True: compress changes the key latent's basis, which does not commute with "
            "RoPE's rotation; compress a layer without RoPE (or use to_tucker, which is exact)"
        )
    qk_ranks, vo_ranks = _split_ranks(ranks, module)
    form = latent_form(module)
    dtype = form.B.dtype
    W_qk, W_vo = (t.double() for t in attention_tensors(module))
    decompositions = []
    for tensor, r in ((W_qk, qk_ranks), (W_vo, vo_ranks)):
        dec = hosvd(tensor, r)
        if method == "hooi":
            dec = hooi(tensor, r, init=dec, max_iter=max_iter, tol=tol)
        decompositions.append(dec)
    qk, vo = decompositions
    tucker = TuckerAttention(
        module.d_model, module.n_heads, qk_ranks, vo_ranks, causal=module.causal,
        bias=form.has_bias, dropout=module.dropout,
    )
    ratio = form.scale / tucker.head_dim**-0.5
    U_head, U_q, U_k = qk.factors
    U_head_v, U_o, U_v = vo.factors
    cast = {"dtype": dtype, "device": form.B.device}
    _as_parameters(
        tucker, core=(qk.core * ratio).to(**cast), U_head=U_head.to(**cast), U_q=U_q.to(**cast),
        U_k=U_k.to(**cast), core_v=vo.core.to(**cast), U_head_v=U_head_v.to(**cast), U_o=U_o.to(**cast),
        U_v=U_v.to(**cast),
    )
    if form.has_bias:
        n_h = module.n_heads
        query_bias = torch.zeros(n_h, qk_ranks[2], dtype=torch.float64, device=U_k.device)
        if form.query_bias is not None:
            # Head i's score term b_i (X U_k_src)^T = t_i X^T with t_i = b_i U_k_src^T, kept as t_i U_k.
            t = form.query_bias.double() @ form.U_k.double().T
            query_bias = ratio * t @ U_k
        output_bias = torch.zeros(module.d_model, dtype=torch.float64, device=U_k.device)
        if form.output_bias is not None:
            output_bias = output_bias + form.output_bias.double()
        if form.value_bias is not None:
            # The value bias adds sum_i b_v C_i^T U_o^T to every output (rows of softmax sum to one).
            output_bias = output_bias + torch.einsum(
                "s,hos,do->d", form.value_bias.double(), form.C.double(), form.U_o.double()
            )
        _as_parameters(
            tucker, query_bias=query_bias.to(**cast), key_bias=torch.zeros(qk_ranks[2], **cast),
            value_bias=torch.zeros(vo_ranks[2], **cast), output_bias=output_bias.to(**cast),
        )
    return tucker.train(module.training)


def relative_errors(module: AttentionLayer, compressed: AttentionLayer) -> tuple[float, float]:
    """||W - W_hat||_F / ||W||_F of the query-key and value-output tensors of two layers (float64)."""
    errors = []
    for a, b in zip(attention_tensors(module), attention_tensors(compressed), strict=True):
        a, b = a.double(), b.double()
        errors.append(float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a).clamp_min(math.ulp(0.0))))
    return errors[0], errors[1]
