"""Calibrating a new subject: train only that subject's adapters on a few labelled trials."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from structlab.subject.conditioned import SubjectConditioned
from structlab.subject.training import as_tensor, frozen_norms


def calibrate(
    wrapped: SubjectConditioned,
    x,
    y,
    subject: int | str | None = None,
    *,
    label: str | None = None,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    batch_size: int = 32,
    seed: int = 0,
) -> int:
    """Fit subject ``subject``'s adapters (a new subject by default) on trials ``x`` with labels ``y``.

    The shared weights, every other subject's adapters and the normalisation statistics stay exactly as
    they are: the batch-norm layers run in evaluation mode, and only the subject's rows of each ``A`` and
    ``B`` receive gradients (Adam moves a parameter with zero gradient history by exactly zero). The
    adapters are started afresh (``B_s = 0``), so calibration begins from the shared model.

    Args:
        wrapped: the subject-conditioned model.
        x: calibration trials (k, ...) in the model's input shape.
        y: their integer class labels (k,).
        subject: id or registered label of the subject to calibrate; None adds a new subject.
        label: registry label of the new subject (only with ``subject=None``).
        epochs, lr, weight_decay, batch_size, seed: the optimisation (Adam; weight decay is an L2 penalty
            on the subject's adapters only).

    Returns:
        The calibrated subject's id.

    Raises:
        TypeError: ``wrapped`` is not SubjectConditioned; x or y are not arrays/tensors.
        ValueError: shapes disagree, no trials, or ``subject`` is not registered.
    """
    if not isinstance(wrapped, SubjectConditioned):
        raise TypeError(f"wrapped={type(wrapped).__name__}: expected a SubjectConditioned model")
    x = as_tensor(x, "x", torch.float32)
    y = as_tensor(y, "y", torch.long)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x: shape {tuple(x.shape)}; expected (k >= 1 trials, ...)")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y: shape {tuple(y.shape)}; expected ({x.shape[0]},), one label per trial")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive int")
    if subject is None:
        sid = wrapped.add_subjects(1, [label] if label is not None else None)[0]
    else:
        if label is not None:
            raise ValueError("label: only for a new subject (subject=None)")
        sid = wrapped.subject_id(subject) if isinstance(subject, str) else subject
        if not isinstance(sid, int) or not 0 <= sid < wrapped.n_subjects:
            raise ValueError(f"subject={subject!r}: expected an id in 0..{wrapped.n_subjects - 1} or a label")
        for _, layer in wrapped.subject_layers():
            layer.reset_adapters([sid])

    layers = [layer for _, layer in wrapped.subject_layers()]
    adapters = [p for layer in layers for p in (layer.A, layer.B)]
    requires_grad = {id(p): p.requires_grad for p in wrapped.parameters()}
    dropout = wrapped.subject_dropout
    mask = torch.zeros(wrapped.n_subjects, dtype=torch.bool)
    mask[sid] = True
    hooks = []
    try:
        for p in wrapped.parameters():
            p.requires_grad_(False)
        for p in adapters:
            p.requires_grad_(True)
            row_mask = mask.to(p.device).reshape(-1, *([1] * (p.dim() - 1))).to(p.dtype)
            hooks.append(p.register_hook(lambda grad, m=row_mask: grad * m))
        wrapped.subject_dropout = 0.0
        optimiser = torch.optim.Adam(adapters, lr=lr)
        generator = torch.Generator().manual_seed(seed)
        device = adapters[0].device
        with frozen_norms(wrapped):
            for _ in range(epochs):
                order = torch.randperm(x.shape[0], generator=generator)
                for start in range(0, x.shape[0], batch_size):
                    batch = order[start : start + batch_size]
                    logits = wrapped(x[batch].to(device), torch.full((batch.numel(),), sid, device=device))
                    loss = F.cross_entropy(logits, y[batch].to(device))
                    if weight_decay:
                        loss = loss + weight_decay * sum((p[sid] ** 2).sum() for p in adapters)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
    finally:
        for hook in hooks:
            hook.remove()
        for p in wrapped.parameters():
            p.requires_grad_(requires_grad.get(id(p), True))
        wrapped.subject_dropout = dropout
    return sid

