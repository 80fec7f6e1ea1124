"""How the studies' sweeps of small training runs use the machine, and which code their stored runs
depend on. The runs themselves are jobs (:class:`structlab.jobs.Job`), run and stored by
:func:`structlab.jobs.run_jobs` through the study context (``ctx.run_jobs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from structlab import reproduce, runtime


def code_fingerprint(package: Path, exclude: Sequence[str] = ()) -> str:
    """A hash of the package's modules, leaving out ``exclude`` (file names): stored runs stay valid while
    only the code that analyses or presents them changes."""
    return reproduce.source_digest(package, exclude).hexdigest()[:16]


def parallelism(device: str, quick: bool = False) -> tuple[int, int]:
    """(processes, PyTorch threads per process) for a sweep of small training runs.

    On a GPU up to 8 processes share it (small models leave it mostly idle), with the cores split
    between them. On the CPU one single-threaded process per core (up to 4): small models gain little
    from threads, and threads that wait on each other slow to a crawl when other programs share the
    cores (run under ``taskset`` to use fewer cores). A quick sweep stays in this process: starting
    workers would cost more than its runs.
    """
    cores = runtime.cpu_count()
    if device.startswith("cuda"):
        workers = 1 if quick else min(8, cores)
        return workers, max(1, cores // workers)
    return (1 if quick else max(1, min(4, cores))), 1
