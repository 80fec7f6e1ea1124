"""Tucker compression of attention with RoPE: a key mode that commutes with the rotation.

RoPE rotates each pair of key-latent coordinates by ``position * theta``. Written as one complex number
per pair, z = k[2p] + i k[2p+1], the rotation is a multiplication by e^(i n theta_p), and head i's score
is a sum over frequencies (RoFormer, eq. 34)

    s_i(m, n) = sum_theta Re( y_(i,theta)^H e^(i (n-m) theta) z_theta ),

with y the query pairs and z the key pairs of that frequency (a GQA layer has one pair per KV head and
frequency). A change of the key latent's basis commutes with every rotation exactly when it is complex
linear within each frequency and does not mix frequencies; so ``compress`` (which picks a real basis)
cannot be used, and this module compresses the key mode per frequency with complex factors instead.

What is kept is judged on the RoPE-averaged score form: averaged over the relative offset, the
frequencies decouple, and the error is the sum over frequencies of the complex tensors

    T_theta[i] = Y_(i,theta)^H Z_theta       (head, query, key), one per frequency,

Frobenius-measured. The head and query modes are real and shared by all frequencies (they act before
the rotation), the key mode is complex per frequency with one budget for all: the HOSVD keeps the r3/2
largest key-mode singular values over all frequencies together, and HOOI alternates as usual, each
step an exact maximisation of the kept energy. At full ranks the result equals the layer; below, the
rotation stays exact and only the averaged score form is approximated. With a single key head this is
the choice of the rotation planes with the most energy; with several it is TransMLA's RoRoPE (a PCA
across KV heads per frequency) folded into a Tucker decomposition. The value side has no RoPE and is
compressed as :func:`~structlab.tucker.compress` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from structlab.tucker.decomposition import _as_parameters, _split_ranks, hooi, hosvd
from structlab.tucker.tensors import AttentionLayer, _check_layer, latent_form
from structlab.tucker.tucker import TuckerAttention


@dataclass
class RotaryKeyMode:
    """The complex key-mode factors of a RoPE layer's query-key side, per frequency.

    ``frequencies`` (F,) the distinct rotation frequencies; ``pairs[f]`` the latent pairs rotating at
    ``frequencies[f]``; ``bases[f]`` (k_f, D) complex rows mapping the (bias-augmented) input to the kept
    complex key coordinates; ``query_maps[f]`` (n_f, k_f) complex, the old key pairs in terms of the new
    (z ~ query_maps[f] @ c); ``energy`` the kept fraction of the RoPE-averaged tensor's energy.
    """

    frequencies: Tensor
    pairs: list[Tensor]
    bases: list[Tensor]
    query_maps: list[Tensor]
    energy: float


def _pair_complex(matrix: Tensor, pairs: Tensor) -> Tensor:
    """Columns (2p, 2p+1) of ``matrix`` (..., 2P) as complex numbers, for the pairs ``pairs``: (..., len(pairs))."""
    return torch.complex(matrix[..., 2 * pairs], matrix[..., 2 * pairs + 1])


def _top(gram: Tensor, rank: int) -> Tensor:
    """The ``rank`` leading eigenvectors of a symmetric (Hermitian) positive semi-definite matrix."""
    values, vectors = torch.linalg.eigh(gram)
    return vectors[:, values.argsort(descending=True)[:rank]]


def whitening(covariance: Tensor | None, d: int) -> Tensor | None:
    """L with L L^T = covariance + 1% of its mean variance on the diagonal, so u = L^-1 x has (about) identity
    second moment; None for None.

    Raises ``ValueError`` for a covariance that is not a (d, d) matrix.
    """
    if covariance is None:
        return None
    if not isinstance(covariance, Tensor) or tuple(covariance.shape) != (d, d):
        raise ValueError(
            f"covariance of shape {tuple(getattr(covariance, 'shape', ()))}: expected ({d}, {d}), the second "
            "moment E[x x^T] of the layer's inputs"
        )
    sigma = covariance.double().cpu()
    sigma = (sigma + sigma.T) / 2
    # Damping, as GPTQ's 1%: directions the calibration text hardly visits (a few hundred tokens do not
    # span d dimensions) must not get weights that blow up what other text puts there.
    ridge = 1e-2 * float(sigma.diagonal().mean().clamp_min(1e-30))
    return torch.linalg.cholesky(sigma + ridge * torch.eye(d, dtype=torch.float64))


class _RotaryTensor:
    """The RoPE-averaged query-key tensor of a layer, one complex (n_H, d, n_f) block per frequency, in
    orthonormal reduced key coordinates w = V^H u (so Frobenius norms are those of the score form).

    Inputs are measured in u = L^-1 x when a whitening L is given (then the norms are the expected squared
    score errors over inputs of second moment L L^T), else u = x.
    """

    def __init__(self, module: AttentionLayer, L: Tensor | None = None) -> None:
        form = latent_form(module)
        if form.rope_frequencies is None:
            raise ValueError("module has no RoPE: use compress, which is exact at full ranks without it")
        if form.shared_latent:
            raise ValueError(
                "module has a shared key/value latent (MLA with latent RoPE): its values would rotate with "
                "the keys; convert it with to_tucker first or compress a layer with separate latents"
            )
        self.form, self.L = form, L
        U_q, B, U_k = form.U_q.double().cpu(), form.B.double().cpu(), form.U_k.double().cpu()
        if L is not None:  # x = L u
            U_q, U_k = L.T @ U_q, L.T @ U_k
        key_bias = None if form.key_bias is None else form.key_bias.double().cpu()
        self.key_input = U_k if key_bias is None else torch.cat((U_k, key_bias[None]), dim=0)
        query = torch.einsum("dp,hpr->hdr", U_q, B)  # the query latent of head i is u @ query[i]
        frequencies = form.rope_frequencies.double().cpu()
        self.frequencies, groups = torch.unique(frequencies, return_inverse=True)
        self.pairs = [torch.nonzero(groups == f).flatten() for f in range(len(self.frequencies))]
        self.blocks, self.reducers = [], []
        for pairs in self.pairs:
            Z = _pair_complex(self.key_input, pairs).T  # (n_f, D): z = Z u~
            U, S, Vh = torch.linalg.svd(Z, full_matrices=False)
            Y = _pair_complex(query, pairs)  # (n_H, d, n_f): y_i = Y_i^T u  (u real)
            # s = Re(y^H e^(i phi) z) = Re(u^T conj(Y) U S w e^(i phi)) with w = Vh u~.
            self.blocks.append(torch.einsum("hdn,nm,m->hdm", Y.conj(), U, S.to(torch.complex128)))
            self.reducers.append((U, S, Vh))
        self.total = sum(float(b.abs().pow(2).sum()) for b in self.blocks)

    def to_input(self, rows: Tensor) -> Tensor:
        """Rows acting on u~ = [u; 1] (or u) as rows acting on x~ = [x; 1]: the first d columns times L^-1."""
        if self.L is None:
            return rows
        d = self.L.shape[0]
        # rows_x = rows_u L^-1: (L^-T rows_u^T)^T; L^-T v solves L^T y = v
        head = torch.linalg.solve_triangular(self.L.T.to(rows.dtype), rows[:, :d].T, upper=True).T
        return torch.cat((head, rows[:, d:]), dim=1)


def _project(block: Tensor, U_head: Tensor | None, U_q: Tensor | None, E: Tensor | None) -> Tensor:
    """block x_head U_head^T x_query U_q^T, then times E on the key mode (each factor optional)."""
    if U_head is not None:
        block = torch.einsum("hdn,ha->adn", block, U_head.to(block.dtype))
    if U_q is not None:
        block = torch.einsum("adn,db->abn", block, U_q.to(block.dtype))
    if E is not None:
        block = block @ E
    return block


def _head_factor(blocks: Sequence[Tensor], r1: int) -> Tensor:
    return _top(sum((b.reshape(b.shape[0], -1) @ b.reshape(b.shape[0], -1).conj().T).real for b in blocks), r1)


def _query_factor(blocks: Sequence[Tensor], r2: int) -> Tensor:
    grams = [b.transpose(0, 1).reshape(b.shape[1], -1) for b in blocks]
    return _top(sum((g @ g.conj().T).real for g in grams), r2)


def _key_factors(blocks: Sequence[Tensor], n_pairs: int) -> list[Tensor]:
    """Per frequency the complex key-mode factor E_f; together they keep the ``n_pairs`` largest eigenvalues."""
    eig = []
    for b in blocks:
        W = b.reshape(-1, b.shape[-1])
        eig.append(torch.linalg.eigh(W.conj().T @ W))
    ranked = sorted(((float(v), f, j) for f, (values, _) in enumerate(eig) for j, v in enumerate(values)),
                    reverse=True)[:n_pairs]
    keep: dict[int, list[int]] = {}
    for _, f, j in ranked:
        keep.setdefault(f, []).append(j)
    return [vectors[:, sorted(keep.get(f, []), key=lambda j: -float(values[j]))]
            for f, (values, vectors) in enumerate(eig)]


def _energy(blocks: Sequence[Tensor], U_head: Tensor, U_q: Tensor, E: Sequence[Tensor]) -> float:
    return sum(float(_project(b, U_head, U_q, e).abs().pow(2).sum()) for b, e in zip(blocks, E, strict=True))


def rotary_tucker(
    tensor: _RotaryTensor, ranks: tuple[int, int, int], method: str, max_iter: int, tol: float
) -> tuple[Tensor, Tensor, list[Tensor], float]:
    """HOSVD (or HOOI from it) of the RoPE-averaged tensor: U_head (n_H, r1), U_q (d, r2), key factors E_f
    (n_f, k_f) with sum k_f = r3 / 2, and the fraction of energy kept."""
    r1, r2, r3 = ranks
    blocks = tensor.blocks
    U_head, U_q, E = _head_factor(blocks, r1), _query_factor(blocks, r2), _key_factors(blocks, r3 // 2)
    best = (U_head, U_q, E, _energy(blocks, U_head, U_q, E))
    if method == "hooi":
        for _ in range(max_iter):
            U_head = _head_factor([_project(b, None, U_q, e) for b, e in zip(blocks, E, strict=True)], r1)
            U_q = _query_factor([_project(b, U_head, None, e) for b, e in zip(blocks, E, strict=True)], r2)
            E = _key_factors([_project(b, U_head, U_q, None) for b in blocks], r3 // 2)
            fit = _energy(blocks, U_head, U_q, E)
            improved = fit - best[3]
            if improved > 0:
                best = (U_head, U_q, E, fit)
            if improved <= tol * tensor.total:
                break
    U_head, U_q, E, fit = best
    return U_head, U_q, E, fit / max(tensor.total, 1e-300)


def _complete(U: Tensor, rank: int) -> Tensor:
    """``U`` (orthonormal columns) extended by orthonormal columns to ``rank`` columns."""
    if U.shape[1] >= rank:
        return U[:, :rank]
    eye = torch.eye(U.shape[0], dtype=U.dtype)
    return torch.linalg.qr(torch.cat((U, eye), dim=1)).Q[:, :rank]


def value_side(module: AttentionLayer, ranks: tuple[int, int, int], method: str, max_iter: int, tol: float,
               L: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(core_v, U_head_v, U_o, U_v) of the HOSVD (or HOOI) of W_vo, value inputs measured in u = L^-1 x.

    W_vo[i] = U_o C_i U_v^T is reduced first: with U_o = Q_o R_o and U_v = Q_v R_v (thin QR), the tensor
    C x_2 R_o x_3 R_v has the same singular values in every mode and is at most (n_H, d, s), so the SVDs
    are small; the factors are mapped back through Q_o and Q_v (and L^-T). A rank above a reduced mode's
    size is completed with orthonormal columns that carry no energy.
    """
    form = latent_form(module)
    C, U_o, U_v = form.C.double().cpu(), form.U_o.double().cpu(), form.U_v.double().cpu()
    if L is not None:
        U_v = L.T @ U_v
    Q_o, R_o = torch.linalg.qr(U_o)
    Q_v, R_v = torch.linalg.qr(U_v)
    reduced = torch.einsum("hos,ao,bs->hab", C, R_o, R_v)
    capped = tuple(min(r, n) for r, n in zip(ranks, reduced.shape, strict=True))
    dec = hosvd(reduced, capped)
    if method == "hooi":
        dec = hooi(reduced, capped, init=dec, max_iter=max_iter, tol=tol)
    U_head_v, U_o_new, U_v_new = dec.factors
    U_o_new, U_v_new = _complete(Q_o @ U_o_new, ranks[1]), _complete(Q_v @ U_v_new, ranks[2])
    if L is not None:  # rows of U_v^T act on u = L^-1 x: as columns on x, L^-T U_v
        U_v_new = torch.linalg.solve_triangular(L.T, U_v_new, upper=True)
    core = torch.zeros(ranks, dtype=torch.float64)
    core[: capped[0], : capped[1], : capped[2]] = dec.core
    return core, _complete(U_head_v, ranks[0]), U_o_new, U_v_new


@torch.no_grad()
def compress_rotary(
    module: AttentionLayer,
    ranks: tuple[int, int, int] | tuple[tuple[int, int, int], tuple[int, int, int]],
    method: Literal["hosvd", "hooi"] = "hosvd",
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    input_covariance: Tensor | None = None,
) -> TuckerAttention:
    """A Tucker Attention layer with latent RoPE approximating a RoPE layer ``module`` at lower ranks.

    Args:
        module: an attention layer of this package with RoPE (MHA, GQA, MLA with decoupled RoPE, or
            Tucker with separate key and value latents), e.g. the exact conversion of a pretrained
            layer by :func:`~structlab.tucker.to_tucker` or :func:`~structlab.tucker.convert_hf`.
        ranks: (r1, r2, r3) for both sides or ((r1, r2, r3), (v1, v2, v3)); r3 (the key latent) must be
            even, and at most the module's key latent size.
        method: "hosvd" or "hooi" (started from the HOSVD, never worse on the averaged score form).
        max_iter, tol: HOOI's sweep limit and relative stopping tolerance.
        input_covariance: optional (d, d) second moment E[x x^T] of the layer's inputs (e.g. from
            calibration text): the errors are then weighted by the inputs the layer sees, the
            activation-aware decomposition (the query, key and value input modes are whitened by its
            Cholesky factor before the SVDs and mapped back after). Without it all input directions
            count alike, which for a pretrained LLM (whose normalised inputs have a few dimensions of very
            large scale) keeps the wrong directions.

    The key mode is compressed per rotation frequency with complex factors (see the module docstring),
    so the result's latent RoPE is exact: each kept latent pair rotates at one of ``module``'s
    frequencies (``rope_frequencies`` of the result). Biases: the query bias and the key bias are mapped
    into the new latent exactly (the key bias takes part in choosing the key basis); the value bias folds
    into the output bias. At full ranks the result equals ``module`` up to rounding. Raises
    ``ValueError`` for a layer without RoPE, an odd or too large r3, bad ranks or an unknown method.
    """
    _check_layer(module)
    if method not in ("hosvd", "hooi"):
        raise ValueError(f"method={method!r}: expected 'hosvd' or 'hooi'")
    if not module.rope:
        raise ValueError("module has rope=False: use compress (this function keeps RoPE exact in the latent)")
    qk_ranks, vo_ranks = _split_ranks(ranks, module)
    L = whitening(input_covariance, module.d_model)
    tensor = _RotaryTensor(module, L)
    latent = tensor.form.U_k.shape[1]
    if qk_ranks[2] % 2 or qk_ranks[2] > latent:
        raise ValueError(
            f"ranks={qk_ranks}: the key rank r3={qk_ranks[2]} must be even (RoPE rotates pairs) and at most the "
            f"module's key latent size {latent}"
        )
    form = tensor.form
    dtype, device = form.B.dtype, form.B.device
    U_head, U_q, E, _ = rotary_tucker(tensor, qk_ranks, method, max_iter, tol)

    # New latent pairs, frequency by frequency: c = E^H w = E^H Vh x~ (complex), stored as (Re c, Im c).
    # The score of head i is Re(conj(y'_i) e^(i phi) c) with conj(y'_i) = sum_ab U_head[i,a] (x U_q)_b core[a,b].
    cores, key_rows, freqs, query_bias_blocks = [], [], [], []
    for f, (block, e) in enumerate(zip(tensor.blocks, E, strict=True)):
        if e.shape[1] == 0:
            continue
        U, S, Vh = tensor.reducers[f]
        cores.append(_project(block, U_head, U_q, e))  # (r1, r2, k_f) complex
        key_rows.append(tensor.to_input(e.conj().T @ Vh))  # (k_f, D), acting on x~
        freqs.append(tensor.frequencies[f].repeat(e.shape[1]))
        if form.query_bias is not None:
            # Head i's bias pairs beta (n_f) score Re(beta^H e^(i phi) z), z ~ U S E c: new bias E^H S U^H beta.
            beta = _pair_complex(form.query_bias.double(), tensor.pairs[f])  # (n_H, n_f)
            query_bias_blocks.append(beta @ (U * S.to(U.dtype)).conj() @ e.conj())  # (n_H, k_f)
    core = torch.cat(cores, dim=-1)
    core_real = torch.stack((core.real, -core.imag), dim=-1).flatten(-2)  # pair t -> (Re, -Im)
    keys = torch.cat(key_rows, dim=0)  # (r3/2, D)
    key_real = torch.stack((keys.real, keys.imag), dim=1).flatten(0, 1).T  # (D, r3): columns (Re c, Im c)
    frequencies = torch.cat(freqs)
    r3 = core_real.shape[-1]
    qk_ranks = (qk_ranks[0], qk_ranks[1], r3)

    core_v, U_head_v, U_o, U_v = value_side(module, vo_ranks, method, max_iter, tol, L)
    U_q = tensor.to_input(U_q.T).T  # columns act on x
    tucker = TuckerAttention(
        module.d_model, module.n_heads, qk_ranks, vo_ranks, causal=module.causal, rope=True, bias=form.has_bias,
        dropout=module.dropout, rope_frequencies=frequencies,
    )
    ratio = form.scale / tucker.head_dim**-0.5
    d = module.d_model
    cast = {"dtype": dtype, "device": device}
    _as_parameters(
        tucker, core=(core_real * ratio).to(**cast), U_head=U_head.to(**cast), U_q=U_q.to(**cast),
        U_k=key_real[:d].to(**cast), core_v=core_v.to(**cast), U_head_v=U_head_v.to(**cast), U_o=U_o.to(**cast),
        U_v=U_v.to(**cast),
    )
    if form.has_bias:
        query_bias = torch.zeros(module.n_heads, r3, dtype=torch.float64)
        if query_bias_blocks:
            qb = torch.cat(query_bias_blocks, dim=1)
            query_bias = ratio * torch.stack((qb.real, qb.imag), dim=-1).flatten(-2)
        key_bias = key_real[d] if form.key_bias is not None else torch.zeros(r3, dtype=torch.float64)
        output_bias = torch.zeros(d, dtype=torch.float64)
        if form.output_bias is not None:
            output_bias = output_bias + form.output_bias.double().cpu()
        if form.value_bias is not None:  # rows of softmax sum to one: the value bias is an output bias
            output_bias = output_bias + torch.einsum(
                "s,hos,do->d", form.value_bias.double(), form.C.double(), form.U_o.double()
            ).cpu()
        _as_parameters(
            tucker, query_bias=query_bias.to(**cast), key_bias=key_bias.to(**cast),
            value_bias=torch.zeros(vo_ranks[2], **cast), output_bias=output_bias.to(**cast),
        )
    tucker.rope_frequencies = tucker.rope_frequencies.to(device)
    return tucker.train(module.training)


def _score_blocks(module: AttentionLayer) -> dict[float, tuple[Tensor, Tensor]]:
    """Per frequency: the scaled query pairs Y (n_H, d, n_f) and key pairs Z (n_f, d + 1) (last column: key bias)."""
    form = latent_form(module)
    if form.rope_frequencies is None or form.shared_latent:
        raise ValueError("module: expected a layer with RoPE and separate key and value latents")
    U_k = form.U_k.double()
    key_bias = form.key_bias.double() if form.key_bias is not None else U_k.new_zeros(U_k.shape[1])
    key_input = torch.cat((U_k, key_bias[None]), dim=0)
    query = torch.einsum("dp,hpr->hdr", form.U_q.double(), form.B.double()) * form.scale
    frequencies = form.rope_frequencies.double().cpu()
    return {
        float(f): (_pair_complex(query, pairs), _pair_complex(key_input, pairs).T)
        for f in torch.unique(frequencies) for pairs in [torch.nonzero(frequencies == f).flatten()]
    }


@torch.no_grad()
def rotary_relative_error(module: AttentionLayer, other: AttentionLayer) -> float:
    """||M - M'||_F / ||M||_F of the RoPE-averaged score forms of two RoPE layers of the same width.

    M stacks, per frequency theta and head i, the complex matrix conj(Y_(i,theta)) Z_theta (query input
    by bias-augmented key input) whose real part at relative offset phi, turned by e^(i phi theta), is
    the layer's score form (scale included); averaged over phi the frequencies are orthogonal. This is
    the quantity :func:`compress_rotary` truncates; the query bias is not part of it.
    """
    a, b = _score_blocks(module), _score_blocks(other)
    if next(iter(a.values()))[0].shape[:2] != next(iter(b.values()))[0].shape[:2]:
        raise ValueError("module and other: expected layers with the same heads and width")

    def inner(x: tuple[Tensor, Tensor], y: tuple[Tensor, Tensor]) -> float:
        (Y, Z), (Y2, Z2) = x, y  # sum_i tr(M_i^H M'_i) = sum_i tr(Y_i^T conj(Y'_i) Z' Z^H)
        return float(torch.einsum("hdn,hdk,kn->", Y, Y2.conj(), Z2 @ Z.conj().T).real)

    norm = sum(inner(v, v) for v in a.values())
    other_norm = sum(inner(v, v) for v in b.values())
    cross = sum(inner(a[f], b[f]) for f in a.keys() & b.keys())
    return max(norm + other_norm - 2 * cross, 0.0) ** 0.5 / max(norm, 1e-300) ** 0.5
