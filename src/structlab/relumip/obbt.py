"""The bound problems of one layer in optimisation-based bound tightening (OBBT), and where they run.

For every neuron ``j`` of layer ``l``, OBBT minimises and maximises ``w_j^T h_{l-1}`` over the feasible set
of the layers before it: the LP relaxation of their big-M encoding (:func:`~structlab.relumip.bounds.lp_bounds`)
or the MILP itself (:func:`~structlab.relumip.bounds.milp_bounds`). The problems of a layer share one model
and differ only in the objective, so they are independent. :class:`RowBounds` solves them one after the
other on one HiGHS model; :class:`Workers` spreads a layer's rows over processes when the measured work
pays for it, or over Ray tasks on a cluster (:func:`rows_per_task`) when the caller gives it a
:class:`~structlab.jobs.RayExecutor`.

Soundness: a bound is never tighter than what the solver proved. An LP bound is computed from the LP's
dual solution by weak duality (Neumaier and Shcherbina 2004): for *any* row multipliers ``y``,
``min c^T v >= y^T r(y) + sum_j min(d_j l_j, d_j u_j)`` with ``d = c - A^T y``, which holds whatever the
solver's tolerances were. A MILP bound is the solver's dual bound, widened by its tolerance.

The cost model (:func:`processes_for`), from measurements on peaks surrogates of 3x100 to 6x256
(``benchmarks/relumip_bounds.py --jobs``): a row's two problems take from 15 ms (first layers) to tens of
seconds (deep layers of wide networks), and a warm-started simplex saves less than assumed before
(warm/cold 0.4-1.15 per layer, mostly 0.8-1.1), so a worker loses little by starting cold. What a worker
costs is its start (once per call: a spawned interpreter importing numpy, scipy and highspy, 1-3.5 s on
a shared 2-core machine), shipping the layer's model (pickled once, 0.02-0.2 s) and loading it into
HiGHS. This process solves a share of the rows itself while the workers solve theirs, so ``k``
processes take ``(serial + (k - 1) * overhead) / k``.

On Ray (:func:`rows_per_task`) the layer's model goes to the object store once (``ray.put``) and its rows
go out in chunks, one task each. A task costs Ray's own scheduling (``RAY_TASK_SECONDS``; a few ms in
``benchmarks/executor_overhead.py``) plus fetching and loading the model and a cold first solve, so a
chunk holds enough rows that this is at most ``TASK_OVERHEAD_SHARE`` of its solve time, and a layer has
at most ``TASKS_PER_CPU`` tasks per CPU of the cluster. A task's rows start from a cold simplex where the
serial computation warm-starts each row from the one before, so the LP bounds may differ from the serial
ones in the last bits (both are weak-duality bounds, so both are sound); a chunk's bounds are bit for bit
those of the same rows solved in this process.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import pickle
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix

from structlab.relumip.model import Model

_MILP_TOL = 1e-6  # relative widening of a MILP dual bound (the solver's feasibility tolerance)
PROBE_ROWS = 4  # rows solved here first to time a cold and warm-started solves ...
PROBE_SECONDS = 0.25  # ... beyond the first two, only while the probe has taken less than this
MIN_ROWS_PER_PROCESS = 2
POOL_START_SECONDS = 3.0  # starting the worker processes, once per call (measured 1.1-3.5 s under load)
DISPATCH_SECONDS = 0.05  # handing a chunk to a worker and collecting its bounds
SHIP_PER_BUILD = 3.0  # pickling a layer's model takes 2.3-4x as long as loading it into HiGHS
PAYS = 0.8  # processes are used only where they are predicted to take at most this share of the serial time
RAY_TASK_SECONDS = 0.005  # Ray's own cost per task (scheduling, the call, the result), a few ms measured
TASK_OVERHEAD_SHARE = 0.05  # a Ray task's overhead is at most this share of its rows' solve time ...
TASKS_PER_CPU = 4  # ... and a layer has at most this many tasks per CPU (enough to balance unequal rows)


class RowBounds:
    """Sound ``min`` and ``max`` of ``w @ v[cols]`` over ``model``'s feasible set, for one row ``w`` after another.

    One HiGHS model is built once and re-solved with new costs (a warm-started simplex for LPs). A call
    returns ``(lower, upper, seconds)`` for its rows, ``seconds`` being the solver's time per row (both
    of its problems); ``lower``/``upper`` keep every bound computed so far. ``build_seconds``: the time it
    took to load the model into HiGHS. ``deadline``: a ``time.perf_counter()`` value after which rows get
    no bound (-inf, inf: sound).
    """

    def __init__(
        self, model: Model, cols: np.ndarray, mip: bool, time_limit: float | None, deadline: float | None = None
    ) -> None:
        start = time.perf_counter()
        self.deadline = deadline
        self.highs = model.to_highs()
        self.highs.setOptionValue("threads", 1)
        if time_limit is not None:  # HiGHS restarts its clock at every run: this is a limit per problem
            self.highs.setOptionValue("time_limit", float(time_limit))
        self.model, self.cols, self.mip = model, cols, mip
        starts, index, value, self.row_lo, self.row_hi = model.rows()
        self.A = csr_matrix((value, index, starts), shape=(model.num_rows, model.num_variables))
        self.col_lo, self.col_hi = model.col_lower, model.col_upper
        self.build_seconds = time.perf_counter() - start
        self.lower: list[float] = []
        self.upper: list[float] = []

    def __call__(self, rows: np.ndarray, upper_too: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bounds of each row; with ``upper_too=False`` only the minimum is solved (``upper`` is +inf)."""
        n = self.model.num_variables
        all_cols = np.arange(n, dtype=np.int32)
        lower, upper, seconds = np.empty(len(rows)), np.full(len(rows), math.inf), np.zeros(len(rows))
        sides = ((1.0, lower), (-1.0, upper)) if upper_too else ((1.0, lower),)
        for i, w in enumerate(rows):
            if self.deadline is not None and time.perf_counter() > self.deadline:
                lower[i:], upper[i:] = -math.inf, math.inf  # sound: no bound
                break
            for sign, out in sides:
                c = np.zeros(n)
                c[self.cols] = sign * w
                self.highs.changeColsCost(n, all_cols, c)
                start = time.perf_counter()
                self.highs.run()
                seconds[i] += time.perf_counter() - start
                if self.mip:
                    bound = float(self.highs.getInfo().mip_dual_bound)
                    bound -= _MILP_TOL * (1.0 + abs(bound))
                else:
                    bound = _dual_bound(self.highs, self.A, c, self.row_lo, self.row_hi, self.col_lo, self.col_hi)
                out[i] = sign * bound
        self.lower.extend(lower)
        self.upper.extend(upper)
        return lower, upper, seconds


def bound_rows(
    model: Model, cols: np.ndarray, rows: np.ndarray, mip: bool, time_limit: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:class:`RowBounds` of ``rows`` on a fresh model: ``(lower, upper, seconds per row)``."""
    return RowBounds(model, cols, mip, time_limit)(rows)


def _bound_chunk(
    layer: tuple[Model, np.ndarray], rows: np.ndarray, mip: bool, time_limit: float | None
) -> dict[str, np.ndarray]:
    """What a Ray task runs: ``layer`` is the layer's ``(model, cols)``, from Ray's object store."""
    lower, upper, seconds = bound_rows(*layer, rows, mip, time_limit)
    return {"lower": lower, "upper": upper, "seconds": seconds}


def _bound_rows_shipped(
    shipped: bytes, rows: np.ndarray, mip: bool, time_limit: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a pool worker runs: ``shipped`` is the layer's ``(model, cols)``, pickled once for every chunk."""
    model, cols = pickle.loads(shipped)
    return bound_rows(model, cols, rows, mip, time_limit)


def _dual_bound(
    highs: Any, A: Any, c: np.ndarray, row_lo: np.ndarray, row_hi: np.ndarray,
    col_lo: np.ndarray, col_hi: np.ndarray,
) -> float:
    """A rigorous lower bound on ``min c^T v`` from the LP's row duals by weak duality (module docstring)."""
    solution = highs.getSolution()
    if not solution.dual_valid:
        return -math.inf
    y = np.asarray(solution.row_dual, dtype=np.float64)
    # a multiplier on a row side that is infinite would make the bound -inf: drop it
    y = np.where((y > 0) & ~np.isfinite(row_lo), 0.0, y)
    y = np.where((y < 0) & ~np.isfinite(row_hi), 0.0, y)
    d = c - A.T @ y
    row_part = np.where(y > 0, y * np.where(y > 0, row_lo, 0.0), y * np.where(y < 0, row_hi, 0.0))
    col_part = np.where(d > 0, d * col_lo, np.where(d < 0, d * col_hi, 0.0))
    terms = np.concatenate([row_part, col_part])
    bound = float(terms.sum())
    return bound - 1e-12 * (float(np.abs(terms).sum()) + 1.0) - 1e-9 * (1.0 + abs(bound))


# ------------------------------------------------------------------------------------- cost model
@dataclass(frozen=True)
class Probe:
    """What the first rows of a layer cost here, in seconds: ``cold`` (the first row's two problems),
    ``warm`` (median of the next rows; ``cold`` when there were none), ``build`` (loading the model into
    HiGHS) and ``ship`` (pickling the model for a worker; unpickling it there takes about as long)."""

    cold: float
    warm: float
    build: float
    ship: float

    def overhead(self, pool_started: bool) -> float:
        """What a worker adds before its rows go at this process's pace."""
        start = 0.0 if pool_started else POOL_START_SECONDS
        return start + DISPATCH_SECONDS + 2 * self.ship + self.build + max(self.cold - self.warm, 0.0)


def predicted_seconds(probe: Probe, rows: int, processes: int, pool_started: bool) -> float:
    """Wall time for ``rows`` rows over ``processes`` processes (this one and ``processes - 1`` workers),
    shared so that all finish together: ``(serial + (k - 1) * overhead) / k``."""
    serial = probe.warm * rows
    if processes == 1:
        return serial
    return (serial + (processes - 1) * probe.overhead(pool_started)) / processes


def processes_for(probe: Probe, rows: int, n_jobs: int, pool_started: bool) -> int:
    """How many processes ``rows`` remaining rows should go to (1: all here), at most ``n_jobs``.

    The predicted time falls with every process added once the serial work exceeds a worker's overhead,
    so this is ``n_jobs`` (bounded by the rows) where that pays by the margin ``PAYS``, else 1.
    """
    k = min(n_jobs, max(1, rows // MIN_ROWS_PER_PROCESS))
    if k > 1 and predicted_seconds(probe, rows, k, pool_started) < PAYS * predicted_seconds(probe, rows, 1, False):
        return k
    return 1


def shares(rows: int, processes: int, probe: Probe, pool_started: bool) -> list[int]:
    """Rows for this process (first) and each of ``processes - 1`` workers (at least one each), so that all
    are predicted to finish together: this process, already warm, takes ``overhead / warm`` more rows."""
    if rows < processes:
        raise ValueError(f"rows={rows}: expected at least one row for each of {processes} processes")
    extra = probe.overhead(pool_started) / max(probe.warm, 1e-9)
    per_worker = min(max(1, math.floor((rows - extra) / processes)), (rows - 1) // (processes - 1))
    return [rows - per_worker * (processes - 1)] + [per_worker] * (processes - 1)


def rows_per_task(probe: Probe, rows: int, cpus: int) -> int:
    """Rows in each Ray task for ``rows`` rows on a cluster of ``cpus`` CPUs (``rows``: one task, none sent).

    A task's overhead is Ray's own (``RAY_TASK_SECONDS``), fetching and unpickling the layer's model
    (``ship``), loading it into HiGHS (``build``) and its first, cold solve (``cold - warm``); a task holds
    enough rows that this is at most ``TASK_OVERHEAD_SHARE`` of their solve time (``warm`` each), and
    more where that would make over ``TASKS_PER_CPU`` tasks per CPU.
    """
    if rows < 1 or cpus < 1:
        raise ValueError(f"rows={rows}, cpus={cpus}: expected at least one of each")
    overhead = RAY_TASK_SECONDS + probe.ship + probe.build + max(probe.cold - probe.warm, 0.0)
    by_overhead = math.ceil(overhead / (TASK_OVERHEAD_SHARE * max(probe.warm, 1e-9)))
    by_cpus = math.ceil(rows / (TASKS_PER_CPU * cpus))
    return min(rows, max(1, by_overhead, by_cpus))


# ---------------------------------------------------------------------------------------- workers
class Workers:
    """Solve a layer's bound problems here or, where the measured work pays for it (:func:`processes_for`),
    also in a pool of up to ``n_jobs - 1`` worker processes started on first use and kept for the call;
    or, with ``executor`` (a :class:`~structlab.jobs.RayExecutor`), as Ray tasks (:func:`rows_per_task`).

    This process solves its share of the rows while the workers solve theirs (on Ray it only waits).
    ``most_used``: the most processes one layer was spread over (1: every row solved here; on Ray, the
    most tasks a layer could run at once). ``deadline``: a ``time.perf_counter()`` value after which no
    row is solved (no pool is used with one: rows cut short in a worker could not be told apart; it cannot
    be combined with ``executor``). The caller closes ``executor``.
    """

    def __init__(self, n_jobs: int, deadline: float | None = None, executor: Any = None) -> None:
        if executor is not None and deadline is not None:
            raise ValueError("executor and deadline: expected one of the two (rows with a deadline are solved "
                             "in this process)")
        self.n_jobs = n_jobs
        self.deadline = deadline
        self.executor = executor
        self.pool: ProcessPoolExecutor | None = None
        self.most_used = 1

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def bound_rows(
        self, model: Model, cols: np.ndarray, rows: np.ndarray, mip: bool, time_limit: float | None,
        layer: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sound lower and upper bounds of ``rows @ v[cols]`` over ``model`` (each of shape (len(rows),)).

        ``layer`` names the layer in errors. Raises ``RuntimeError`` naming the layer and its rows when a
        Ray task raised or lost its worker more often than the executor's ``retries``.
        """
        solver = RowBounds(model, cols, mip, time_limit, deadline=self.deadline)
        local = self.executor is None and self.n_jobs == 1
        if local or self.deadline is not None or len(rows) < 2 * MIN_ROWS_PER_PROCESS:
            lower, upper, _ = solver(rows)
            return lower, upper
        lo, hi, cost = self._probe(solver, rows)
        rest = rows[len(lo):]
        if self.executor is not None and len(rest):
            a, b = self._on_ray(solver, model, cols, rest, mip, time_limit, cost, layer)
            return np.concatenate([*lo, a]), np.concatenate([*hi, b])
        k = processes_for(cost, len(rest), self.n_jobs, self.pool is not None) if len(rest) else 1
        if k > 1:
            try:
                a, b = self._spread(solver, model, cols, rest, mip, time_limit, shares(len(rest), k, cost,
                                                                                      self.pool is not None))
            except BrokenProcessPool:
                warnings.warn("bound tightening: worker processes failed; solving here", RuntimeWarning,
                              stacklevel=4)
                self.n_jobs = 1
            else:
                return np.concatenate([*lo, a]), np.concatenate([*hi, b])
        a, b, _ = solver(rest)
        return np.concatenate([*lo, a]), np.concatenate([*hi, b])

    @staticmethod
    def _probe(solver: RowBounds, rows: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], Probe]:
        """Time a cold and some warm-started solves here, for at most PROBE_SECONDS beyond the first two:
        the bounds of the rows solved and what a row costs."""
        lo, hi, seconds = [], [], []
        while len(seconds) < len(rows) and (len(seconds) < 2 or (len(seconds) < PROBE_ROWS
                                                                   and sum(seconds) < PROBE_SECONDS)):
            i = len(seconds)
            a, b, s = solver(rows[i:i + 1])
            lo.append(a)
            hi.append(b)
            seconds.append(float(s[0]))
        cost = Probe(cold=seconds[0], warm=float(np.median(seconds[1:])) if len(seconds) > 1 else seconds[0],
                     build=solver.build_seconds, ship=SHIP_PER_BUILD * solver.build_seconds)
        return lo, hi, cost

    def _on_ray(
        self, solver: RowBounds, model: Model, cols: np.ndarray, rows: np.ndarray, mip: bool,
        time_limit: float | None, cost: Probe, layer: int | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``rows`` in chunks of :func:`rows_per_task`, one Ray task each (here when one chunk holds them all)."""
        from structlab.jobs import Job

        ray = self.executor.connect()
        cpus = self.executor.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = rows_per_task(cost, len(rows), cpus)
        if size >= len(rows):  # one task would only add its overhead
            a, b, _ = solver(rows)
            return a, b
        shared = (model, cols)  # one object for every chunk: the executor puts it in the object store once
        name = "layer" if layer is None else f"layer{layer}"
        edges = list(range(0, len(rows), size)) + [len(rows)]
        jobs = {f"{name}-rows{i}-{j}": Job(f"{name}-rows{i}-{j}", _bound_chunk, {
            "layer": shared, "rows": rows[i:j], "mip": mip, "time_limit": time_limit})
            for i, j in zip(edges[:-1], edges[1:], strict=True)}
        results: dict[str, dict[str, np.ndarray]] = {}
        with contextlib.closing(self.executor.results(list(jobs.values()), cpus, 1)) as finished:
            for job, result in finished:  # an error stops the layer; closing cancels the tasks in flight
                if isinstance(result, BaseException):
                    where = "a layer" if layer is None else f"layer {layer}"
                    raise RuntimeError(f"bound tightening of {where} on Ray: task {job.key} failed: "
                                       f"{type(result).__name__}: {result}") from result
                results[job.key] = result
        self.most_used = max(self.most_used, min(len(jobs), cpus))
        return (np.concatenate([results[key]["lower"] for key in jobs]),
                np.concatenate([results[key]["upper"] for key in jobs]))

    def _spread(
        self, solver: RowBounds, model: Model, cols: np.ndarray, rows: np.ndarray, mip: bool,
        time_limit: float | None, counts: list[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first ``counts[0]`` rows here, the next ``counts[i]`` in worker ``i``, at the same time."""
        edges = np.cumsum([0, *counts])
        chunks = [rows[edges[i]:edges[i + 1]] for i in range(len(counts))]
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.n_jobs - 1, mp_context=multiprocessing.get_context("spawn"))
        shipped = pickle.dumps((model, cols), protocol=pickle.HIGHEST_PROTOCOL)  # once for every chunk
        with _main_script_hidden():  # processes start during submit
            futures: list[Future] = [self.pool.submit(_bound_rows_shipped, shipped, chunk, mip, time_limit)
                                     for chunk in chunks[1:]]
        here_lo, here_hi, _ = solver(chunks[0])
        parts = [(here_lo, here_hi)] + [f.result()[:2] for f in futures]
        self.most_used = max(self.most_used, len(counts))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Hide the caller's ``__main__`` script from processes started meanwhile.

    A 'spawn'ed process re-runs the parent's main script (up to its ``if __name__ == "__main__":``
    guard) before it takes work. The workers need nothing from it (their work is :func:`bound_rows`), and
    re-running a script without the guard would repeat its work, training included, in every process.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            if "__spec__" in saved:
                main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)
