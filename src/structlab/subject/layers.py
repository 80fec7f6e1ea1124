"""The subject-conditioned layer: a shared Linear/Conv layer plus a rank-r correction per subject.

For a trial of subject ``s`` the layer computes with the weight (Klein et al., arXiv 2510.08059)

    W_s = W + (alpha / r) B_s A_s

where ``W`` (with its bias) is the original, shared layer and ``B_s A_s`` is subject ``s``'s low-rank
correction. ``B_s`` starts at zero, so a freshly wrapped layer computes exactly what the original did;
``A_s`` starts small and random. A trial of an unknown subject (:data:`UNKNOWN_SUBJECT`) uses ``W`` alone.

For a convolution, ``A_s`` is a convolution from the input channels to ``r`` channels with the base
layer's kernel size, stride, padding and dilation, and ``B_s`` a 1x1 convolution from ``r`` to the output
channels, so that ``B_s(A_s(x))`` equals a convolution with the kernel ``B_s A_s`` (its matrix view, of
shape ``(out_channels, in_channels/groups * prod(kernel))``). For a grouped convolution the same ``A_s``
filters act on every group's inputs and ``B_s`` mixes them within each output channel's group, which keeps
``B_s A_s`` of rank ``r`` in that matrix view; for a depthwise filter bank this means every output filter
is a combination of ``r`` shared filter shapes.

Mixed-subject batches run without a Python loop over subjects, in one of two ways:

* ``"merged"``: per-sample weights ``W_{s_n}`` (a gather and a batched matmul) and one grouped
  convolution with ``groups = batch * groups`` (or a batched matmul for Linear). Cheapest when the
  weight is small next to the activations, as in EEG networks.
* ``"factored"``: the base layer on the whole batch plus ``B_{s_n} (A_{s_n} x_n)`` through a grouped
  convolution to ``r`` channels and a batched contraction. Its memory does not grow with the weight size,
  so it is used for large weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

UNKNOWN_SUBJECT = -1
"""Subject id of a trial whose subject has no adapter: the shared weights alone are used."""

Path = Literal["auto", "merged", "factored"]

WRAPPABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def rank_limit(layer: nn.Module) -> int:
    """The largest useful adapter rank of ``layer``: the rank of its weight's matrix view.

    ``min(out_features, in_features)`` for Linear; ``min(out_channels, in_channels/groups x kernel size)``
    for a convolution.
    """
    if isinstance(layer, nn.Linear):
        return min(layer.out_features, layer.in_features)
    if isinstance(layer, nn.Conv1d | nn.Conv2d):
        return min(layer.out_channels, layer.in_channels // layer.groups * math.prod(layer.kernel_size))
    raise TypeError(f"layer={type(layer).__name__}: expected nn.Linear, nn.Conv1d or nn.Conv2d")


class SubjectState:
    """The subject ids of the batch being computed, shared by every subject-conditioned layer of a model.

    :class:`~structlab.subject.conditioned.SubjectConditioned` sets them around each call of the
    wrapped model's own ``forward``, so the model's code (residuals, reshapes, concatenations) is untouched.
    """

    def __init__(self) -> None:
        self.subjects: torch.Tensor | None = None
        self.single: int | None = None  # the one subject id of the batch, where all ids are equal

    def set(self, subjects: torch.Tensor | None) -> None:
        """Set the batch's subject ids (None clears them).

        Whether every id is the same needs the ids' values on the host, so under ``torch.compile`` and
        ``torch.jit.trace`` the batch always takes the general (mixed-subject) path, which holds for any ids:
        nothing is specialised to the ids seen while tracing.
        """
        self.subjects = subjects
        self.single = None
        if subjects is None or staged():
            return
        if subjects.numel() and bool((subjects == subjects[0]).all()):
            self.single = int(subjects[0])


def staged() -> bool:
    """Whether the current call is being traced or compiled (no host reads of tensor values allowed)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class SubjectLayer(nn.Module):
    """A Linear, Conv1d or Conv2d layer with a rank-``rank`` correction per subject.

    Parameters ``A`` (n_subjects, rank, d_in) and ``B`` (n_subjects, d_out, rank) hold every subject's
    ``A_s`` and ``B_s`` in matrix form, where ``d_in`` is ``in_features`` or
    ``in_channels/groups x prod(kernel_size)`` and ``d_out`` is ``out_features`` or ``out_channels``.
    The base layer (``base``) is kept as it is, with its parametrisations.
    """

    def __init__(
        self,
        base: nn.Linear | nn.Conv1d | nn.Conv2d,
        n_subjects: int,
        rank: int,
        alpha: float,
        state: SubjectState,
        name: str = "",
        path: Path = "auto",
    ) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.alpha = alpha
        self.name = name
        self.path: Path = path
        self._state = state
        self.weight_shape = weight_shape(base)
        d_out, d_in = self.weight_shape[0], math.prod(self.weight_shape[1:])
        raw = raw_weight(base)  # read without running a parametrisation (spectral norm would iterate)
        factory = {"device": raw.device, "dtype": raw.dtype}
        self.A = nn.Parameter(torch.empty(n_subjects, rank, d_in, **factory))
        self.B = nn.Parameter(torch.zeros(n_subjects, d_out, rank, **factory))
        self.reset_adapters(range(n_subjects))

    @property
    def scaling(self) -> float:
        """``alpha / r``, the factor of every correction."""
        return self.alpha / self.rank

    @property
    def n_subjects(self) -> int:
        return self.A.shape[0]

    def reset_adapters(self, subjects) -> None:
        """Start the adapters of ``subjects`` afresh: ``B_s = 0``, ``A_s`` uniform as nn.Linear's init."""
        bound = 1.0 / math.sqrt(self.A.shape[2])
        with torch.no_grad():
            for s in subjects:
                self.A[s].uniform_(-bound, bound)
                self.B[s].zero_()

    def add_subjects(self, k: int) -> None:
        """Append ``k`` fresh adapters (new parameter tensors: build optimisers after calling this)."""
        old_A, old_B = self.A.detach(), self.B.detach()
        self.A = nn.Parameter(torch.cat([old_A, old_A.new_empty(k, *old_A.shape[1:])]))
        self.B = nn.Parameter(torch.cat([old_B, old_B.new_zeros(k, *old_B.shape[1:])]))
        self.reset_adapters(range(self.n_subjects - k, self.n_subjects))

    def delta(self, subject: int) -> torch.Tensor:
        """``(alpha/r) B_s A_s`` in the shape of the base weight; zeros for :data:`UNKNOWN_SUBJECT`."""
        if subject == UNKNOWN_SUBJECT:
            return self.A.new_zeros(self.weight_shape)
        return (self.scaling * (self.B[subject] @ self.A[subject])).reshape(self.weight_shape)

    def merged_layer(self, subject: int) -> nn.Module:
        """A plain layer of the base layer's class, hyper-parameters and device with ``W + delta(subject)``.

        Parametrisations are evaluated (the merged weight is their current value), not carried over:
        a constraint such as max-norm would otherwise change the merged weight. They are evaluated as in
        evaluation mode, so a stateful one (spectral norm's power iteration) is read, never advanced: the
        wrapped model is left exactly as it was.
        """
        base = self.base
        cls = plain_class(base)
        if isinstance(base, nn.Linear):
            layer = cls(base.in_features, base.out_features, bias=base.bias is not None)
        else:
            layer = cls(
                base.in_channels, base.out_channels, base.kernel_size, stride=base.stride,
                padding=base.padding, dilation=base.dilation, groups=base.groups,
                bias=base.bias is not None, padding_mode=base.padding_mode,
            )
        with evaluation_mode(base):
            weight = _weight(base)
        layer.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight + self.delta(subject))
            if base.bias is not None:
                layer.bias.copy_(base.bias)
        layer.train(base.training)
        return layer

    def extra_repr(self) -> str:
        return f"n_subjects={self.n_subjects}, rank={self.rank}, alpha={self.alpha}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        subjects = self._state.subjects
        if subjects is None:
            raise RuntimeError(
                f"subject-conditioned layer {self.name!r} was called without subject ids: call the "
                "SubjectConditioned wrapper, model(x, subjects), not the inner model"
            )
        tracing = torch.jit.is_tracing()  # sizes are traced values: no Python decision may depend on them
        if not tracing and (x.dim() < 2 or x.shape[0] != subjects.shape[0]):
            raise RuntimeError(
                f"layer {self.name!r} received input of shape {tuple(x.shape)} for {subjects.shape[0]} "
                "subject ids: subject-conditioned layers need the batch in the first dimension"
            )
        # The weight is read once per call: a parametrisation runs once, as in the base layer's own forward
        # (spectral norm's power iteration advances one step per training forward, not one per read).
        weight = _weight(self.base)
        if (not tracing and x.shape[0] == 0) or self._state.single == UNKNOWN_SUBJECT:
            return self._with_weight(x, weight)
        if self._state.single is not None:
            # One subject for the whole batch: one merged weight, the base layer's own kernel.
            return self._with_weight(x, weight + self.delta(self._state.single))
        known = subjects != UNKNOWN_SUBJECT
        scale = self.scaling * known.to(x.dtype)
        index = subjects.clamp(min=0)
        A, B = self.A[index], self.B[index]  # (N, r, d_in), (N, d_out, r)
        if isinstance(self.base, nn.Linear):
            return self._linear_mixed(x, weight, A, B, scale)
        path = self.path
        if path == "auto":  # both paths compute the same; factored's memory does not grow with the weight
            path = "factored" if tracing or math.prod(self.weight_shape) > x[0].numel() else "merged"
        if path == "merged":
            return self._conv_merged(x, weight, A, B, scale)
        return self._conv_factored(x, weight, A, B, scale)

    def _with_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The base layer's computation with ``weight`` in place of its own."""
        if isinstance(self.base, nn.Linear):
            return F.linear(x, weight, self.base.bias)
        return self.base._conv_forward(x, weight, self.base.bias)

    def _linear_mixed(self, x, weight, A, B, scale) -> torch.Tensor:
        # y_n = x_n W^T + b + scale_n (x_n A_n^T) B_n^T, with any number of middle dimensions in x_n.
        n = x.shape[0]
        flat = x.reshape(n, -1, x.shape[-1])
        correction = torch.bmm(torch.bmm(flat, A.transpose(1, 2)), B.transpose(1, 2))
        correction = correction * scale[:, None, None]
        return self._with_weight(x, weight) + correction.reshape(*x.shape[:-1], correction.shape[-1])

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        """The input padded as the base layer pads it, and the padding left for F.conv."""
        base = self.base
        if base.padding_mode != "zeros":
            return F.pad(x, base._reversed_padding_repeated_twice, mode=base.padding_mode), 0
        return x, base.padding

    def _conv_merged(self, x, weight, A, B, scale) -> torch.Tensor:
        base = self.base
        n = x.shape[0]
        # W_n = W + scale_n B_n A_n, then sample n convolved with W_n: one grouped convolution.
        per_sample = weight.unsqueeze(0) + (torch.bmm(B, A) * scale[:, None, None]).reshape(n, *weight.shape)
        x, padding = self._padded(x)
        conv = F.conv1d if isinstance(base, nn.Conv1d) else F.conv2d
        y = conv(
            x.reshape(1, n * x.shape[1], *x.shape[2:]), per_sample.reshape(-1, *weight.shape[1:]),
            None, base.stride, padding, base.dilation, n * base.groups,
        )
        y = y.reshape(n, base.out_channels, *y.shape[2:])
        if base.bias is not None:
            y = y + base.bias.reshape(1, -1, *([1] * (y.dim() - 2)))
        return y

    def _conv_factored(self, x, weight, A, B, scale) -> torch.Tensor:
        base = self.base
        n, g, r = x.shape[0], base.groups, self.rank
        kernel = self.weight_shape[1:]
        y = self._with_weight(x, weight)
        # A_n: a convolution to r channels with the base layer's geometry, applied to each group's inputs.
        a = A.reshape(n, 1, r, *kernel).expand(n, g, r, *kernel).reshape(n * g * r, *kernel)
        xp, padding = self._padded(x)
        conv = F.conv1d if isinstance(base, nn.Conv1d) else F.conv2d
        z = conv(xp.reshape(1, n * xp.shape[1], *xp.shape[2:]), a, None, base.stride, padding, base.dilation, n * g)
        z = z.reshape(n, g, r, -1)
        # B_n: a 1x1 convolution from r channels to each group's output channels.
        b = B.reshape(n, g, base.out_channels // g, r)
        correction = torch.einsum("ngrl,ngor->ngol", z, b) * scale[:, None, None, None]
        return y + correction.reshape(y.shape)


def _weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as its forward uses it (the parametrised value, where it is parametrised)."""
    return layer.weight


def raw_weight(layer: nn.Module) -> torch.Tensor:
    """A tensor the layer's weight is stored in: the (first) unconstrained original of a parametrised weight.

    Reading it runs no parametrisation, so it changes nothing (spectral norm's vectors stay as they are);
    it tells the weight's device and dtype.
    """
    if parametrize.is_parametrized(layer, "weight"):
        originals = layer.parametrizations.weight
        return originals.original if hasattr(originals, "original") else originals.original0  # weight_norm: g, v
    return layer.weight


def weight_shape(layer: nn.Linear | nn.Conv1d | nn.Conv2d) -> tuple[int, ...]:
    """The shape of the layer's weight, from its hyper-parameters: ``(out, in)`` or ``(out, in/groups, *kernel)``."""
    if isinstance(layer, nn.Linear):
        return (layer.out_features, layer.in_features)
    return (layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)


@contextlib.contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """``module`` and its sub-modules (parametrisations included) in evaluation mode; flags restored after."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in modes:
            m.training = False
        yield
    finally:
        for m, training in modes:
            m.training = training


def plain_class(layer: nn.Module) -> type[nn.Module]:
    """The layer's class without torch.nn.utils.parametrize's injected subclass."""
    cls = type(layer)
    return cls.__bases__[0] if parametrize.is_parametrized(layer) else cls
