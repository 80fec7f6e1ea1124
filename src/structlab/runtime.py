"""What every part shares about running numerical work: seeds, devices, threads and progress bars."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

# Set once by the command line (``--quiet``); progress bars are otherwise shown on a terminal.
_PROGRESS_DISABLED: bool | None = None


def set_progress(enabled: bool | None) -> None:
    """Show progress bars (True), hide them (False) or show them only on a terminal (None)."""
    global _PROGRESS_DISABLED
    _PROGRESS_DISABLED = None if enabled is None else not enabled


def shows_progress() -> bool:
    """Whether progress bars are shown now (``--quiet`` hides them; by default only on a terminal)."""
    if _PROGRESS_DISABLED is None:
        return sys.stderr.isatty()
    return not _PROGRESS_DISABLED


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> Iterator[T]:
    """A tqdm progress bar that follows the command line's ``--quiet`` setting."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", _PROGRESS_DISABLED)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative int")
    random.seed(seed)
    import numpy as np

    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)


def default_device() -> str:
    """``"cuda"`` where a GPU is available, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_count() -> int:
    """Cores this process may use (respects CPU affinity, e.g. in containers and CI)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` PyTorch threads, then restore the previous number. Small models on a
    shared machine run faster single-threaded: threads that wait on each other crawl on busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
