"""Helpers shared by the tucker tests."""

from __future__ import annotations

import torch


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Float64 with every parameter (biases included) drawn at random, so no term hides behind a zero."""
    gen = torch.Generator().manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.4)
    return module
