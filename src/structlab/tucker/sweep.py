"""Run a study's independent training runs, in parallel processes where a GPU is present, and keep each
finished run's outcome on disk so an interrupted study resumes where it stopped.

A run is a :class:`Job`: a top-level function and its keyword arguments (both picklable, the outcome a
JSON-serialisable dict). Its outcome is stored as ``<cache>/<key>.json`` together with a fingerprint of
the function, the arguments and the caller's ``salt`` (the study passes its source fingerprint), so a
stored outcome is reused only by the same run of the same code.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from structlab import reproduce, runtime
from structlab.atomic import atomic_write_json


@dataclass(frozen=True)
class Job:
    """One run: ``fn(**kwargs) -> dict``; ``key`` names it (file-name safe, unique within a sweep)."""

    key: str
    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self, salt: str) -> str:
        text = json.dumps([self.fn.__module__, self.fn.__qualname__, self.kwargs, salt], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def run_jobs(
    jobs: Sequence[Job],
    cache: Path | None = None,
    salt: str = "",
    workers: int = 1,
    threads: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Outcomes of ``jobs`` by key: stored ones read from ``cache``, the others run (in ``workers``
    processes when > 1, each with ``threads`` PyTorch threads) and stored as they finish. Runs that
    raise do not stop the others: once every run has ended, a ``RuntimeError`` names the failed ones
    (chained to the first error), and a rerun repeats only those."""
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"jobs: duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}")
    outcomes: dict[str, dict[str, Any]] = {}
    pending = []
    for job in jobs:
        stored = _read(cache, job, salt)
        if stored is not None:
            outcomes[job.key] = stored
        else:
            pending.append(job)
    if len(outcomes):
        log(f"{len(outcomes)} of {len(jobs)} runs already done (stored in {cache})")
    start = time.perf_counter()

    def finished(job: Job, outcome: dict[str, Any]) -> None:
        outcomes[job.key] = outcome
        if cache is not None:
            atomic_write_json(cache / f"{job.key}.json", {"fingerprint": job.fingerprint(salt), "outcome": outcome})
        log(f"[{len(outcomes)}/{len(jobs)}] {job.key} done ({time.perf_counter() - start:.0f} s into the sweep)")

    failed: list[tuple[str, BaseException]] = []
    if workers <= 1 or len(pending) <= 1:
        with runtime.torch_threads(threads):
            for job in pending:
                try:
                    finished(job, job.fn(**job.kwargs))
                except Exception as err:  # noqa: BLE001 - reported below, after the other runs
                    failed.append((job.key, err))
    else:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(job.fn, **job.kwargs): job for job in pending}
            for future in as_completed(futures):
                try:
                    finished(futures[future], future.result())
                except Exception as err:  # noqa: BLE001 - reported below, after the other runs
                    failed.append((futures[future].key, err))
    if failed:
        key, first = failed[0]
        names = ", ".join(k for k, _ in failed)
        raise RuntimeError(f"{len(failed)} of {len(jobs)} runs failed ({names}); {key}: {first}") from first
    return {key: outcomes[key] for key in keys}


def _read(cache: Path | None, job: Job, salt: str) -> dict[str, Any] | None:
    if cache is None:
        return None
    path = cache / f"{job.key}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return stored["outcome"] if stored.get("fingerprint") == job.fingerprint(salt) else None


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    runtime.set_progress(False)
