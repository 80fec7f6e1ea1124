"""Sound bounds on every pre-activation of a ReLU network over an input box.

Three methods, each at least as tight as the one before (paper, Sec. 3.1):

- :func:`interval_bounds`: interval arithmetic, layer by layer (``W+ l + W- u + b``).
- :func:`lp_bounds`: optimisation-based bound tightening (OBBT): for every neuron of layer ``l``, minimise
  and maximise ``w_j^T h_{l-1} + b_j`` over the LP relaxation of the big-M encoding of layers ``< l``
  (with the already tightened bounds), then feed the new bounds forward by interval arithmetic.
- :func:`milp_bounds`: the same over the exact big-M MILP of layers ``< l``, with a time limit per neuron.

Soundness: a bound is never tighter than what the solver proved. An LP bound is computed from the LP's
dual solution by weak duality (Neumaier and Shcherbina 2004): for *any* row multipliers ``y``,
``min c^T v >= y^T r(y) + sum_j min(d_j l_j, d_j u_j)`` with ``d = c - A^T y``, which holds whatever the
solver's tolerances were. A MILP bound is the solver's dual bound, widened by its tolerance. Interval
bounds are widened by a few units of floating-point rounding. Work is spread over processes (one HiGHS
model each) when the measured time of the first problems says it pays.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from structlab import runtime
from structlab.relumip.bigm import encode_layer
from structlab.relumip.model import Model
from structlab.relumip.network import Layer, ReluNetwork

_ROUNDING = 1e-12  # relative widening of interval bounds against floating-point rounding
_MILP_TOL = 1e-6  # relative widening of a MILP dual bound (the solver's feasibility tolerance)
# The cost model that decides whether a layer's bound problems go to worker processes (_Workers._pool_size)
PROBE_ROWS = 6  # at most this many neurons solved here first, to time a cold and warm-started solves
PROBE_SECONDS = 0.25  # ... and beyond the first two, only while the probe has taken less than this
MIN_ROWS_PER_WORKER = 4
POOL_START_SECONDS = 1.5  # starting the processes (once per call): interpreter, numpy, scipy, highspy
POOL_DISPATCH_SECONDS = 0.2  # sending a layer's model to the processes and collecting the bounds


@dataclass(frozen=True)
class Bounds:
    """Bounds ``lower[l] <= a_l <= upper[l]`` on the pre-activations of every layer (the last: outputs).

    They refer to :meth:`ReluNetwork.folded` (the hidden layers are the same as the network's; the outputs
    are in the user's units). ``input_lower``/``input_upper`` is the box they hold on; ``method`` is
    "interval", "lp" or "milp"; ``seconds`` the time taken; ``problems`` the number of LPs/MILPs solved;
    ``processes`` the most processes a layer's problems were spread over (1: all solved in this process).
    """

    lower: tuple[np.ndarray, ...]
    upper: tuple[np.ndarray, ...]
    input_lower: np.ndarray
    input_upper: np.ndarray
    method: str
    seconds: float = 0.0
    problems: int = 0
    processes: int = 1

    def __post_init__(self) -> None:
        if len(self.lower) != len(self.upper):
            raise ValueError(f"lower/upper: {len(self.lower)} and {len(self.upper)} layers; expected the same")
        for i, (lo, hi) in enumerate(zip(self.lower, self.upper, strict=True)):
            if lo.shape != hi.shape or np.any(lo > hi):
                raise ValueError(f"layer {i}: lower bounds exceed upper bounds or shapes differ")

    def width(self) -> list[np.ndarray]:
        """``upper - lower`` per layer."""
        return [hi - lo for lo, hi in zip(self.lower, self.upper, strict=True)]


def check_box(
    net: ReluNetwork, lower: np.ndarray | Sequence[float], upper: np.ndarray | Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Validate an input box; returns float64 copies of ``lower`` and ``upper`` (shape (n_in,))."""
    if not isinstance(net, ReluNetwork):
        raise TypeError(f"net: {type(net).__name__}; expected a ReluNetwork")
    lo = np.array(lower, dtype=np.float64).reshape(-1) if np.ndim(lower) else np.full(net.input_dim, lower, float)
    hi = np.array(upper, dtype=np.float64).reshape(-1) if np.ndim(upper) else np.full(net.input_dim, upper, float)
    for name, arr in (("lower", lo), ("upper", hi)):
        if arr.shape != (net.input_dim,):
            raise ValueError(f"{name}: shape {arr.shape}; expected ({net.input_dim},) to match the network input")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: {arr}; expected finite values (the box must be bounded)")
    if np.any(lo > hi):
        j = int(np.argmax(lo > hi))
        raise ValueError(f"lower[{j}]={lo[j]} > upper[{j}]={hi[j]}: expected lower <= upper")
    return lo, hi


def _affine_interval(layer: Layer, h_lo: np.ndarray, h_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval arithmetic for ``W h + b`` with ``h`` in [h_lo, h_hi], widened against rounding."""
    w_pos, w_neg = np.maximum(layer.weight, 0.0), np.minimum(layer.weight, 0.0)
    lo = w_pos @ h_lo + w_neg @ h_hi + layer.bias
    hi = w_pos @ h_hi + w_neg @ h_lo + layer.bias
    slack = _ROUNDING * (np.abs(layer.weight) @ np.maximum(np.abs(h_lo), np.abs(h_hi)) + np.abs(layer.bias) + 1.0)
    return lo - slack, hi + slack


def _propagate(folded: ReluNetwork, lower: list[np.ndarray], upper: list[np.ndarray], start: int) -> None:
    """Interval arithmetic from layer ``start`` on, intersected with the bounds already there (in place)."""
    for k in range(start, len(folded.layers)):
        prev = folded.layers[k - 1]
        lo, hi = _affine_interval(folded.layers[k], prev.activate(lower[k - 1]), prev.activate(upper[k - 1]))
        lower[k], upper[k] = np.maximum(lower[k], lo), np.minimum(upper[k], hi)


def interval_bounds(
    net: ReluNetwork, lower: np.ndarray | Sequence[float], upper: np.ndarray | Sequence[float]
) -> Bounds:
    """Interval-arithmetic bounds on every pre-activation for inputs in ``[lower, upper]`` (shape (n_in,)).

    Raises ``ValueError`` for a box of the wrong shape, with infinite values or with ``lower > upper``.
    """
    start = time.perf_counter()
    lo, hi = check_box(net, lower, upper)
    folded = net.folded()
    layer_lo, layer_hi = _affine_interval(folded.layers[0], lo, hi)
    L = [layer_lo] + [np.full(layer.n_out, -math.inf) for layer in folded.layers[1:]]
    U = [layer_hi] + [np.full(layer.n_out, math.inf) for layer in folded.layers[1:]]
    _propagate(folded, L, U, 1)
    return Bounds(tuple(L), tuple(U), lo, hi, "interval", time.perf_counter() - start)


def lp_bounds(
    net: ReluNetwork,
    lower: np.ndarray | Sequence[float],
    upper: np.ndarray | Sequence[float],
    n_jobs: int | None = None,
) -> Bounds:
    """LP-based bound tightening (module docstring), layer by layer, starting from interval bounds.

    ``n_jobs``: processes to spread each layer's LPs over (default: the available cores; a layer whose
    measured work would not pay for them is solved in this process, see ``_Workers._pool_size``).
    Raises ``ValueError`` for a bad box.
    """
    start = interval_bounds(net, lower, upper)
    return _tighten(net, start, mip=False, time_limit=None, n_jobs=n_jobs, method="lp")


def milp_bounds(
    net: ReluNetwork,
    lower: np.ndarray | Sequence[float],
    upper: np.ndarray | Sequence[float],
    time_limit: float = 1.0,
    n_jobs: int | None = None,
    start: Bounds | None = None,
) -> Bounds:
    """MILP-based bound tightening: exact over the big-M MILP of the earlier layers, ``time_limit`` s per problem.

    A problem stopped by its time limit contributes its proven dual bound. ``start``: bounds to begin
    from (default: :func:`lp_bounds`, whose tighter big-M make the MILPs faster).
    """
    if not time_limit > 0:
        raise ValueError(f"time_limit={time_limit!r}: expected a positive number of seconds per problem")
    lo, hi = check_box(net, lower, upper)
    start = start or lp_bounds(net, lo, hi, n_jobs=n_jobs)
    if not (np.array_equal(start.input_lower, lo) and np.array_equal(start.input_upper, hi)):
        raise ValueError("start: bounds computed for another input box; expected the same [lower, upper]")
    return _tighten(net, start, mip=True, time_limit=time_limit, n_jobs=n_jobs, method="milp")


def stable_fraction(net: ReluNetwork, bounds: Bounds) -> float:
    """Share of hidden neurons that are stable under ``bounds`` (one linear piece on the whole box).

    A ReLU neuron is stable when ``U <= 0`` or ``L >= 0``; a clipped ReLU one when ``U <= 0``, ``L >= c``
    or ``0 <= L <= U <= c``. Returns a value in [0, 1] (1.0 for a network without hidden layers).
    """
    if len(bounds.lower) != len(net.layers):
        raise ValueError(f"bounds: {len(bounds.lower)} layers; expected {len(net.layers)} for {net!r}")
    stable = total = 0
    for layer, lo, hi in zip(net.hidden, bounds.lower, bounds.upper, strict=False):
        if layer.activation == "clipped_relu":
            c = layer.clip
            ok = (hi <= 0) | (lo >= c) | ((lo >= 0) & (hi <= c))
        else:
            ok = (hi <= 0) | (lo >= 0)
        stable += int(ok.sum())
        total += layer.n_out
    return stable / total if total else 1.0


# ------------------------------------------------------------------------------------------ OBBT
def _tighten(
    net: ReluNetwork, start: Bounds, mip: bool, time_limit: float | None, n_jobs: int | None, method: str
) -> Bounds:
    t0 = time.perf_counter()
    n_jobs = runtime.cpu_count() if n_jobs is None else n_jobs
    if not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs={n_jobs!r}: expected a positive int or None")
    folded = net.folded()
    L, U = [b.copy() for b in start.lower], [b.copy() for b in start.upper]
    problems = 0
    with _Workers(n_jobs) as workers:
        for l in range(1, len(folded.layers)):
            model = Model()
            h = model.add_variables(net.input_dim, start.input_lower, start.input_upper, name="x")
            for k in range(l):
                h = encode_layer(model, h, folded.layers[k], L[k], U[k], relax=not mip, name=f"l{k}").h
            layer = folded.layers[l]
            # a dead or saturated hidden neuron is constant: its bounds do not matter
            clip = layer.clip if layer.activation == "clipped_relu" else np.full(layer.n_out, math.inf)
            output = l == len(folded.layers) - 1
            todo = np.arange(layer.n_out) if output else np.flatnonzero((U[l] > 0) & (L[l] < clip))
            lo, hi = workers.bound_rows(model, h, layer.weight[todo], mip, time_limit)
            problems += 2 * todo.size
            L[l][todo] = np.maximum(L[l][todo], lo + layer.bias[todo])
            U[l][todo] = np.minimum(U[l][todo], hi + layer.bias[todo])
            # two sound bounds cannot cross beyond rounding; where they touch, keep the point
            cross = L[l] > U[l]
            L[l][cross] = U[l][cross] = 0.5 * (L[l][cross] + U[l][cross])
            _propagate(folded, L, U, l + 1)
    return Bounds(tuple(L), tuple(U), start.input_lower, start.input_upper, method,
                  start.seconds + time.perf_counter() - t0, start.problems + problems,
                  max(start.processes, workers.most_used))


class _Workers:
    """Solve bound problems here or, when the measured work pays for it, in a pool of processes."""

    def __init__(self, n_jobs: int) -> None:
        self.n_jobs = n_jobs
        self.executor: ProcessPoolExecutor | None = None
        self.most_used = 1

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def bound_rows(
        self, model: Model, cols: np.ndarray, rows: np.ndarray, mip: bool, time_limit: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        solver = RowBounds(model, cols, mip, time_limit)
        n = rows.shape[0]
        if self.n_jobs == 1:
            lo, hi, _ = solver(rows)
            return lo, hi
        # time a cold and some warm-started solves here, for at most PROBE_SECONDS beyond the first two
        probe, seconds = 0, []
        while probe < n and (probe < 2 or (probe < PROBE_ROWS and sum(seconds) < PROBE_SECONDS)):
            seconds.append(solver(rows[probe:probe + 1])[2][0])
            probe += 1
        lo, hi = np.array(solver.lower), np.array(solver.upper)
        rest = n - probe
        workers = self._pool_size(np.array(seconds), rest) if rest else 1
        if workers > 1:
            try:
                lo2, hi2 = self._in_pool(model, cols, rows[probe:], mip, time_limit, workers)
                self.most_used = max(self.most_used, workers)
                return np.concatenate([lo, lo2]), np.concatenate([hi, hi2])
            except BrokenProcessPool:
                warnings.warn("bound tightening: worker processes failed; solving serially",
                              RuntimeWarning, stacklevel=4)
                self.n_jobs = 1
        lo2, hi2, _ = solver(rows[probe:])
        return np.concatenate([lo, lo2]), np.concatenate([hi, hi2])

    def _pool_size(self, seconds: np.ndarray, rest: int) -> int:
        """How many processes the remaining ``rest`` rows should go to (1: stay here), from the probe's times.

        A chunk sent to a process starts cold (its first solve is like ``seconds[0]``), while here the
        simplex goes on warm (like the later probe rows); processes pay only when
        ``cold + warm * rest / k + overheads < 0.8 * warm * rest``, with ``k`` at most the idle cores.
        """
        if self.n_jobs == 1:
            return 1
        cold = float(seconds[0])
        warm = float(np.median(seconds[1:])) if seconds.size > 1 else cold
        k = min(self.n_jobs, idle_cores(), max(1, rest // MIN_ROWS_PER_WORKER))
        if k == 1:
            return 1
        overhead = POOL_DISPATCH_SECONDS + (POOL_START_SECONDS if self.executor is None else 0.0)
        parallel = cold + warm * math.ceil(rest / k) + overhead
        return k if parallel < 0.8 * warm * rest else 1

    def _in_pool(
        self, model: Model, cols: np.ndarray, rows: np.ndarray, mip: bool, time_limit: float | None, workers: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.executor is None:
            self.executor = ProcessPoolExecutor(self.n_jobs, mp_context=multiprocessing.get_context("spawn"))
        chunks = [c for c in np.array_split(np.arange(rows.shape[0]), workers) if c.size]
        with _main_script_hidden():  # processes start during submit
            futures = [self.executor.submit(bound_rows, model, cols, rows[c], mip, time_limit) for c in chunks]
        parts = [f.result() for f in futures]
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


def idle_cores() -> int:
    """Cores not busy with other work (this process's own included): usable cores minus the load."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this platform
        return runtime.cpu_count()
    return max(1, math.floor(runtime.cpu_count() - load + 1.0))


class RowBounds:
    """Sound ``min`` and ``max`` of ``w @ v[cols]`` over ``model``'s feasible set, for one row ``w`` after another.

    One HiGHS model is built once and re-solved with new costs (a warm-started simplex for LPs). A call
    returns ``(lower, upper, seconds)`` for its rows, ``seconds`` being the solver's time per row (both
    of its problems); ``lower``/``upper`` keep every bound computed so far.
    """

    def __init__(self, model: Model, cols: np.ndarray, mip: bool, time_limit: float | None) -> None:
        from scipy.sparse import csr_matrix

        self.highs = model.to_highs()
        self.highs.setOptionValue("threads", 1)
        if time_limit is not None:  # HiGHS restarts its clock at every run: this is a limit per problem
            self.highs.setOptionValue("time_limit", float(time_limit))
        self.model, self.cols, self.mip = model, cols, mip
        starts, index, value, self.row_lo, self.row_hi = model.rows()
        self.A = csr_matrix((value, index, starts), shape=(model.num_rows, model.num_variables))
        self.col_lo, self.col_hi = model.col_lower, model.col_upper
        self.lower: list[float] = []
        self.upper: list[float] = []

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.model.num_variables
        all_cols = np.arange(n, dtype=np.int32)
        lower, upper, seconds = np.empty(len(rows)), np.empty(len(rows)), np.zeros(len(rows))
        for i, w in enumerate(rows):
            for sign, out in ((1.0, lower), (-1.0, upper)):
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
    """:class:`RowBounds` of ``rows`` on a fresh model (what a worker process runs)."""
    return RowBounds(model, cols, mip, time_limit)(rows)


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
