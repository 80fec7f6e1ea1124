"""A study's independent jobs (seeds x configurations, folds, solves), run by one executor and stored as
they finish, so that a stopped run, or a lost worker, loses at most the jobs in flight.

A :class:`Job` is a top-level function and its keyword arguments (picklable); it returns a
JSON-serialisable dict. :func:`run_jobs` reads the outcomes already in a :class:`JobStore`
(``<folder>/<key>.json``, each with the fingerprint of the function, its arguments and the caller's
``salt``), runs the others with an executor and stores each outcome atomically as it arrives::

    from structlab.jobs import Job, JobStore, LocalExecutor, run_jobs

    jobs = [Job(f"seed-{s}", train_one, {"seed": s, "steps": 400}) for s in range(3)]
    outcomes = run_jobs(jobs, LocalExecutor(workers=2), JobStore("results/runs", salt="v1"))

Executors: :class:`LocalExecutor` (in this process with one worker, else a pool of spawned
processes: the default) and :class:`RayExecutor` (Ray tasks on a local Ray instance it starts, or on
an existing cluster at ``address``). A job that raises does not stop the others; once every job has
ended, :class:`JobsFailed` names the failed ones, and a rerun runs only those.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from structlab import runtime
from structlab.atomic import atomic_write_text, json_default
from structlab.errors import StructlabError

EXECUTORS: tuple[str, ...] = ("local", "ray")


@dataclass(frozen=True)
class Job:
    """One job: ``fn(**kwargs) -> dict``; ``key`` names it (file-name safe, unique among its jobs).

    ``fn`` must be a module-level function and ``kwargs`` picklable (they travel to worker processes).
    ``identity``, when given, is what the outcome depends on besides ``fn`` and stands in for
    ``kwargs`` in the fingerprint: use it when an argument is an object the fingerprint cannot read
    (e.g. a feature table: give the checksums of the files it was computed from).
    """

    key: str
    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    identity: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not re.fullmatch(r"[A-Za-z0-9._=+,-]+", self.key):
            raise ValueError(f"key={self.key!r}: expected a non-empty file-name-safe string ([A-Za-z0-9._=+,-])")
        if not callable(self.fn):
            raise TypeError(f"fn={self.fn!r}: expected a module-level function")

    def fingerprint(self, salt: str = "") -> str:
        """A hash of the function's name, the arguments (or ``identity``) and ``salt``.

        Arrays count by content (dtype, shape, bytes), dataclasses by their fields (those that take part
        in equality: not one declared with ``compare=False``); any other object
        that JSON cannot hold raises ``TypeError`` (give the job an ``identity``).
        """
        what = self.kwargs if self.identity is None else self.identity
        text = json.dumps([self.fn.__module__, self.fn.__qualname__, what, salt], sort_keys=True,
                          default=_Fingerprint(self.key))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Fingerprint:
    """``json.dumps``'s ``default`` for fingerprints: arrays by content, dataclasses by their fields."""

    # id -> (weak reference to the array, digest): a data set that many jobs share is hashed once.
    _digests: dict[int, tuple[weakref.ref, str]] = {}

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, obj: Any) -> Any:
        import numpy as np

        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                return {"ndarray": "object", "shape": list(obj.shape), "items": obj.ravel().tolist()}
            cached = self._digests.get(id(obj))
            if cached is None or cached[0]() is not obj:
                data = np.ascontiguousarray(obj)
                key = id(obj)  # forgotten when the array is: its id may then be reused
                cached = (weakref.ref(obj, lambda _: self._digests.pop(key, None)),
                          hashlib.sha256(data.view(np.uint8).reshape(-1)).hexdigest())
                self._digests[key] = cached
            return {"ndarray": str(obj.dtype), "shape": list(obj.shape), "sha256": cached[1]}
        if isinstance(obj, np.generic):
            return obj.item()
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            # the fields that take part in equality: one declared compare=False (a provenance record) does not
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.compare}
            return {"dataclass": f"{type(obj).__module__}.{type(obj).__qualname__}", **fields}
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        if isinstance(obj, set | frozenset):
            return sorted(obj, key=repr)
        raise TypeError(
            f"job {self.key!r}: an argument of type {type(obj).__name__} cannot be fingerprinted; "
            "expected JSON values, NumPy arrays or dataclasses of them (or give the Job an identity)"
        )


class JobStore:
    """Outcomes stored one file per job, ``<folder>/<key>.json``, written atomically.

    A stored outcome is reused only when its fingerprint matches the job's under ``salt`` (pass what
    the outcome depends on beyond the job's arguments, e.g. the code's fingerprint); a file that is
    unreadable, cut short or of another fingerprint is treated as absent and the job runs again.
    """

    def __init__(self, folder: str | os.PathLike[str], salt: str = "") -> None:
        self.folder = Path(folder)
        self.salt = salt

    def path(self, job: Job) -> Path:
        return self.folder / f"{job.key}.json"

    def read(self, job: Job, fingerprint: str) -> dict[str, Any] | None:
        """The stored outcome of ``job``, or None when there is none this run can trust."""
        try:
            stored = json.loads(self.path(job).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(stored, dict) or stored.get("fingerprint") != fingerprint:
            return None
        outcome = stored.get("outcome")
        return outcome if isinstance(outcome, dict) else None

    def write(self, job: Job, fingerprint: str, outcome_json: str) -> None:
        """Store ``outcome_json`` (the outcome, already encoded as JSON) under ``job``'s key."""
        atomic_write_text(self.path(job), f'{{"fingerprint": "{fingerprint}", "outcome": {outcome_json}}}\n')


class JobsFailed(RuntimeError):
    """Some jobs failed; ``failures`` maps each failed job's key to its error (the others were stored)."""

    def __init__(self, failures: dict[str, BaseException], total: int) -> None:
        self.failures = failures
        key, first = next(iter(failures.items()))
        names = ", ".join(failures)
        super().__init__(f"{len(failures)} of {total} jobs failed ({names}); {key}: {_describe(first)}")


class WorkerLost(RuntimeError):
    """The process running a job died (killed, out of memory, a crash in native code) too many times."""


class Executor(Protocol):
    """Runs jobs somewhere; :func:`run_jobs` adds the store, the progress bar and the failure report."""

    name: str
    workers: int | None

    def results(
        self, jobs: Sequence[Job], workers: int, threads: int, gpus: float
    ) -> Iterator[tuple[Job, dict[str, Any] | BaseException]]:
        """Each job with its outcome, or with the exception it ended with, in the order they finish."""
        ...

    def close(self) -> None:
        """Release what the executor started (worker processes, a local Ray instance)."""
        ...


def run_jobs(
    jobs: Sequence[Job],
    executor: Executor | None = None,
    store: JobStore | None = None,
    workers: int = 1,
    threads: int = 1,
    gpus: float = 0.0,
    log: Callable[[str], None] = print,
    desc: str = "jobs",
) -> dict[str, dict[str, Any]]:
    """The outcome of every job, by key, in the order of ``jobs``.

    Stored outcomes are read from ``store``; the other jobs run on ``executor`` (default: a
    :class:`LocalExecutor`) and each outcome is stored as it arrives. ``workers`` is the caller's
    choice of parallelism (the executor's own ``workers``, when set, overrides it); ``threads`` the
    PyTorch threads of each job; ``gpus`` the share of a GPU each job needs (Ray places it on a node
    that has one). Every outcome comes back as JSON would give it (tuples as lists, NumPy values as
    numbers), the same whether it ran now or was stored.

    Raises:
        ValueError: duplicate keys, or ``workers``/``threads``/``gpus`` out of range.
        JobsFailed: after every job has ended, when some raised or lost their worker (the others are stored).
    """
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"jobs: duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r}: expected a positive int")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r}: expected a positive int")
    if not 0 <= gpus <= 1:
        raise ValueError(f"gpus={gpus!r}: expected a share of one GPU in [0, 1]")
    executor = executor if executor is not None else LocalExecutor()
    fingerprints = {job.key: job.fingerprint(store.salt) for job in jobs} if store is not None else {}
    outcomes: dict[str, dict[str, Any]] = {}
    pending = []
    for job in jobs:
        stored = store.read(job, fingerprints[job.key]) if store is not None else None
        if stored is not None:
            outcomes[job.key] = stored
        else:
            pending.append(job)
    if outcomes:
        log(f"{len(outcomes)} of {len(jobs)} jobs already done (stored in {store.folder})")
    failures: dict[str, BaseException] = {}
    start = time.perf_counter()
    bar = runtime.progress(total=len(jobs), initial=len(outcomes), desc=desc, unit="job")
    try:
        if pending:
            for job, result in executor.results(pending, executor.workers or workers, threads, gpus):
                bar.update(1)
                if not isinstance(result, BaseException):
                    try:
                        outcomes[job.key] = _finished(job, result, store, fingerprints)
                        log(f"[{len(outcomes)}/{len(jobs)}] {job.key} done "
                            f"({time.perf_counter() - start:.0f} s into the jobs)")
                        continue
                    except (TypeError, ValueError) as err:  # not a dict, or not JSON-serialisable
                        result = err
                failures[job.key] = result
                log(f"{job.key} FAILED: {_describe(result)}")
    finally:
        bar.close()
    if failures:
        raise JobsFailed(failures, len(jobs)) from next(iter(failures.values()))
    return {key: outcomes[key] for key in keys}


def _finished(job: Job, outcome: Any, store: JobStore | None, fingerprints: dict[str, str]) -> dict[str, Any]:
    """The outcome as JSON gives it back, stored first when there is a store."""
    if not isinstance(outcome, dict):
        raise TypeError(f"job {job.key!r} returned {type(outcome).__name__}; expected a dict")
    text = json.dumps(outcome, default=json_default, allow_nan=True)
    if store is not None:
        store.write(job, fingerprints[job.key], text)
    return json.loads(text)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def call_in_worker(fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run one job in a worker process: with ``threads`` PyTorch threads and no progress bars of its own."""
    runtime.set_progress(False)
    with _threads(threads):
        return fn(**kwargs)


def _threads(n: int) -> contextlib.AbstractContextManager:
    # PyTorch is set where the job's module brought it in; a job without it (scikit-learn, a solver) does
    # not pay for importing it, and OMP_NUM_THREADS (set by the pool, or by Ray) covers a later import.
    return runtime.torch_threads(n) if "torch" in sys.modules else contextlib.nullcontext()


def _init_worker(threads: int, parent: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    # A parent killed without the time to shut its pool down (SIGTERM, SIGKILL, a lost terminal) leaves its
    # workers computing jobs no one will collect, for hours: a worker exits once its parent is gone.
    threading.Thread(target=_exit_with_parent, args=(parent,), name="structlab-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


# --------------------------------------------------------------------------------------------- local
@dataclass
class LocalExecutor:
    """Jobs in this process (one worker) or in a pool of ``workers`` spawned processes.

    ``workers=None`` takes the caller's choice (see :func:`run_jobs`). When a worker dies (killed, out of
    memory) the pool breaks and every job it had not finished is lost; each runs again in a process of
    its own, up to ``retries`` times, so a job that kills its process takes no other job with it.
    """

    workers: int | None = None
    retries: int = 2
    name: str = "local"

    def __post_init__(self) -> None:
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers={self.workers!r}: expected a positive int or None")

    def results(
        self, jobs: Sequence[Job], workers: int, threads: int, gpus: float = 0.0
    ) -> Iterator[tuple[Job, dict[str, Any] | BaseException]]:
        if workers <= 1 or len(jobs) <= 1:
            with runtime.torch_threads(threads):
                for job in jobs:
                    try:
                        result: dict[str, Any] | BaseException = job.fn(**job.kwargs)
                    except Exception as err:  # noqa: BLE001 - reported after the other jobs
                        result = err
                    yield job, result
            return
        context = multiprocessing.get_context("spawn")  # CUDA and OpenMP do not survive a fork
        lost: list[Job] = []
        pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_init_worker,
                                   initargs=(threads, os.getpid()))
        try:
            futures = {pool.submit(call_in_worker, job.fn, job.kwargs, threads): job for job in jobs}
            for future in as_completed(futures):
                try:
                    yield futures[future], future.result()
                except BrokenProcessPool:  # a worker died: every job the pool had not finished is lost
                    lost.append(futures[future])
                except Exception as err:  # noqa: BLE001 - reported after the other jobs
                    yield futures[future], err
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        # Which job killed its process is unknown, so each lost job runs again in a process of its own:
        # one that dies every time takes no other job with it.
        for _ in range(self.retries):
            if not lost:
                return
            again, lost = sorted(lost, key=jobs.index), []
            for job, result in _isolated(again, workers, threads, context):
                if isinstance(result, BrokenProcessPool):
                    lost.append(job)
                else:
                    yield job, result
        for job in lost:
            yield job, WorkerLost(f"its worker process died {self.retries + 1} times (killed, out of memory "
                                  "or a crash in native code)")

    def close(self) -> None:
        """Nothing to release: each call's pool ends with the call."""


def _isolated(
    jobs: Sequence[Job], workers: int, threads: int, context: Any
) -> Iterator[tuple[Job, dict[str, Any] | BaseException]]:
    """Each job in a spawned process of its own, ``workers`` at a time."""
    queue, running = list(jobs), {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                job = queue.pop(0)
                pool = ProcessPoolExecutor(1, mp_context=context, initializer=_init_worker,
                                           initargs=(threads, os.getpid()))
                running[pool.submit(call_in_worker, job.fn, job.kwargs, threads)] = (job, pool)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job, pool = running.pop(future)
                pool.shutdown(wait=True)
                try:
                    yield job, future.result()
                except Exception as err:  # noqa: BLE001 - a job's error or its lost process, for the caller
                    yield job, err
    finally:
        for _, pool in running.values():
            pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------- ray
_ADDRESS = re.compile(r"(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})")
INSTALL_RAY = "pip install 'structlab[cluster]'"


@dataclass
class RayExecutor:
    """Jobs as Ray tasks of one CPU each (plus ``gpus`` of a GPU when the caller asks for it).

    Without ``address`` a local Ray instance of ``workers`` CPUs (default: the cores this process may
    use) is started on first use and stopped by :meth:`close`; with ``address="HOST:PORT"`` the
    executor joins the cluster whose head listens there (``ray start --head --port=PORT``), where
    ``workers``, when given, caps the jobs in flight. Every node needs structlab installed, and the
    data sets its jobs read (``STRUCTLAB_DATA`` in the environment ``ray start`` ran in).

    A task whose worker process dies is run again up to ``retries`` times (Ray's ``max_retries``); an
    exception raised by a job is not retried: it is reported with the other failures.
    """

    address: str | None = None
    workers: int | None = None
    retries: int = 3
    name: str = "ray"
    _ray: Any = field(default=None, repr=False)
    _started: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.address is not None and not _ADDRESS.fullmatch(self.address):
            raise ValueError(f"address={self.address!r}: expected HOST:PORT of a Ray head, e.g. 127.0.0.1:6379")
        if self.address is not None:
            port = int(_ADDRESS.fullmatch(self.address)["port"])
            if not 0 < port < 65536:
                raise ValueError(f"address={self.address!r}: port {port} is out of range 1-65535")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers={self.workers!r}: expected a positive int or None")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries={self.retries!r}: expected a non-negative int")

    def connect(self) -> Any:
        """The ``ray`` module, connected (started or joined) on first use."""
        if self._ray is not None:
            return self._ray
        ray = import_ray()
        if not ray.is_initialized():
            if self.address is None:
                # Listens on the loopback only: a local instance serves this process and no one else.
                ray.init(address="local", num_cpus=self.workers or runtime.cpu_count(), include_dashboard=False,
                         _node_ip_address="127.0.0.1", logging_level="WARNING", log_to_driver=True)
            else:
                _check_reachable(self.address)
                try:
                    ray.init(address=self.address, logging_level="WARNING", log_to_driver=True)
                except (ConnectionError, RuntimeError, ValueError) as err:
                    raise StructlabError(
                        f"address={self.address!r}: could not join the Ray cluster there ({_describe(err)}). "
                        "A head started with token authentication (Ray's default) admits a driver that sets "
                        "RAY_AUTH_MODE=token and has its token (~/.ray/auth_token or RAY_AUTH_TOKEN); "
                        "the driver and the cluster need the same Ray and Python versions"
                    ) from err
            self._started = True
        self._ray = ray
        return ray

    def results(
        self, jobs: Sequence[Job], workers: int, threads: int, gpus: float = 0.0
    ) -> Iterator[tuple[Job, dict[str, Any] | BaseException]]:
        ray = self.connect()
        task = ray.remote(_ray_task).options(
            num_cpus=1, num_gpus=gpus, max_retries=self.retries, retry_exceptions=False
        )
        # An argument that several jobs share (a data set) goes to the object store once, not once a job.
        refs = {id(value): ray.put(value) for value in _shared_arguments(jobs)}
        # A local instance has ``workers`` CPUs, so Ray's scheduler already runs that many at once and the
        # rest wait in its queue, ready to start; on a cluster ``workers`` caps the jobs in flight.
        limit = self.workers if self.address is not None and self.workers else len(jobs)
        queue, in_flight = list(jobs), {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    job = queue.pop(0)
                    # Keyword arguments of the task, so that Ray resolves the object references among them.
                    kwargs = {k: refs.get(id(v), v) for k, v in job.kwargs.items()}
                    in_flight[task.remote(job.fn, threads, **kwargs)] = job
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                if len(in_flight) > 1:  # and every other one that has finished meanwhile
                    ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
                for ref in ready:
                    job = in_flight.pop(ref)
                    try:
                        yield job, ray.get(ref)
                    except ray.exceptions.RayTaskError as err:  # the job raised: report its own exception
                        cause = getattr(err, "cause", None)
                        yield job, cause if isinstance(cause, BaseException) else err
                    except ray.exceptions.RayError as err:  # its worker or node died more than ``retries`` times
                        yield job, WorkerLost(f"{_describe(err)} (after {self.retries} retries)")
        finally:
            for ref in in_flight:  # stopped early (Ctrl-C, an error): do not leave the cluster busy
                ray.cancel(ref, force=True)

    def close(self) -> None:
        """Stop the Ray instance this executor started (or disconnect from the cluster it joined)."""
        if self._ray is not None and self._started:
            self._ray.shutdown()
        self._ray, self._started = None, False


def _ray_task(_job_fn: Callable[..., dict[str, Any]], _job_threads: int, **kwargs: Any) -> dict[str, Any]:
    return call_in_worker(_job_fn, kwargs, _job_threads)


def _shared_arguments(jobs: Sequence[Job]) -> list[Any]:
    """Argument values (by identity) that more than one job passes, other than plain scalars."""
    seen: dict[int, tuple[Any, int]] = {}
    for job in jobs:
        for value in {id(v): v for v in job.kwargs.values()}.values():
            if value is None or isinstance(value, str | int | float | bool | bytes):
                continue
            seen[id(value)] = (value, seen.get(id(value), (value, 0))[1] + 1)
    return [value for value, count in seen.values() if count > 1]


def import_ray() -> Any:
    """The ``ray`` module; raises ``StructlabError`` saying how to install it when it is missing."""
    try:
        import ray
    except ImportError as err:
        raise StructlabError(f"executor='ray' needs Ray, which is not installed: {INSTALL_RAY}") from err
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, naming ``address``, when nothing accepts connections there (Ray itself retries for minutes)."""
    match = _ADDRESS.fullmatch(address)
    host, port = match["host"].strip("[]"), int(match["port"])
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise StructlabError(
            f"address={address!r}: no Ray head answers there ({err}); start one with "
            f"`ray start --head --port={port}` on {host}, or leave out the address to start a local instance"
        ) from err


def make_executor(kind: str = "local", address: str | None = None, workers: int | None = None) -> Executor:
    """The executor named ``kind`` (``"local"`` or ``"ray"``), as the command line's options give it.

    Raises ``ValueError`` for an unknown ``kind``, an ``address`` with the local executor or a malformed
    one, and ``StructlabError`` when ``kind="ray"`` and Ray is not installed, or no Ray cluster answers
    at ``address``.
    """
    if kind not in EXECUTORS:
        raise ValueError(f"executor={kind!r}: expected one of {EXECUTORS}")
    if kind == "local":
        if address is not None:
            raise ValueError(f"address={address!r}: only the 'ray' executor joins a cluster (use --executor ray)")
        return LocalExecutor(workers=workers)
    executor = RayExecutor(address=address, workers=workers)
    import_ray()  # a missing install fails now, before any study starts
    if address is not None:
        executor.connect()  # and so does an address with no cluster (a local instance starts when first used)
    return executor
