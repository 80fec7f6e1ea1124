"""Sound bounds on every pre-activation of a ReLU network over an input box.

Three methods, each at least as tight as the one before (paper, Sec. 3.1):

- :func:`interval_bounds`: interval arithmetic, layer by layer (``W+ l + W- u + b``).
- :func:`lp_bounds`: optimisation-based bound tightening (OBBT): for every neuron of layer ``l``, minimise
  and maximise ``w_j^T h_{l-1} + b_j`` over the LP relaxation of the big-M encoding of layers ``< l``
  (with the already tightened bounds), then feed the new bounds forward by interval arithmetic.
- :func:`milp_bounds`: the same over the exact big-M MILP of layers ``< l``, with a time limit per neuron.

Soundness: a bound is never tighter than what was proved. LP and MILP bounds come from the solver's dual
information (:mod:`structlab.relumip.obbt`, which also spreads a layer's problems over processes when the
measured time of the first ones says it pays, or over a Ray cluster given ``executor``); interval bounds
are widened by a few units of floating-point rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from structlab import runtime
from structlab.relumip.bigm import encode_layer
from structlab.relumip.model import Model
from structlab.relumip.network import Layer, ReluNetwork
from structlab.relumip.obbt import Workers

if TYPE_CHECKING:
    from structlab.jobs import RayExecutor

_ROUNDING = 1e-12  # relative widening of interval bounds against floating-point rounding


@dataclass(frozen=True)
class Bounds:
    """Bounds ``lower[l] <= a_l <= upper[l]`` on the pre-activations of every layer (the last: outputs).

    They refer to :meth:`ReluNetwork.folded` (the hidden layers are the same as the network's; the outputs
    are in the user's units). ``input_lower``/``input_upper`` is the box they hold on; ``method`` is
    "interval", "lp" or "milp"; ``seconds`` the time taken; ``problems`` the number of LPs/MILPs solved;
    ``processes`` the most processes a layer's problems were spread over (1: all solved in this process;
    with a Ray executor: the most tasks a layer could run at once).
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
    start: Bounds | None = None,
    deadline: float | None = None,
    executor: RayExecutor | None = None,
) -> Bounds:
    """LP-based bound tightening (module docstring), layer by layer, starting from interval bounds.

    ``n_jobs``: the most processes to spread each layer's LPs over, this one included (default: the
    available cores); a layer whose measured work would not pay for them is solved in this process alone
    (:func:`structlab.relumip.obbt.processes_for`). ``start``: sound bounds on the same box to begin from
    (e.g. :func:`~structlab.relumip.crown.crown_bounds`: fewer unstable neurons to tighten); ``deadline``:
    a ``time.perf_counter()`` value after which no further LP is solved (the bounds stay sound, only
    looser; the LPs then stay in this process).

    ``executor``: a :class:`structlab.jobs.RayExecutor` to solve each layer's LPs as Ray tasks on the
    cluster it joins (or the local Ray instance it starts), for networks whose layer of LPs takes many
    seconds; ``None`` (default): this machine's processes, ``n_jobs``. The layer's model goes to Ray's
    object store once and its neurons go out in chunks sized by :func:`structlab.relumip.obbt.rows_per_task`.
    The caller closes the executor.

    Raises ``ValueError`` for a bad box or ``n_jobs``, or ``executor`` given with ``n_jobs`` or
    ``deadline``; ``TypeError`` for an ``executor`` that is not a ``RayExecutor``; ``RuntimeError``
    naming the layer when a Ray task fails.
    """
    _check_executor(executor, n_jobs, deadline)
    lo, hi = check_box(net, lower, upper)
    start = start or interval_bounds(net, lo, hi)
    if not (np.array_equal(start.input_lower, lo) and np.array_equal(start.input_upper, hi)):
        raise ValueError("start: bounds computed for another input box; expected the same [lower, upper]")
    return _tighten(net, start, mip=False, time_limit=None, n_jobs=n_jobs, method="lp", deadline=deadline,
                    executor=executor)


def milp_bounds(
    net: ReluNetwork,
    lower: np.ndarray | Sequence[float],
    upper: np.ndarray | Sequence[float],
    time_limit: float = 1.0,
    n_jobs: int | None = None,
    start: Bounds | None = None,
    executor: RayExecutor | None = None,
) -> Bounds:
    """MILP-based bound tightening: exact over the big-M MILP of the earlier layers, ``time_limit`` s per problem.

    A problem stopped by its time limit contributes its proven dual bound. ``start``: bounds to begin
    from (default: :func:`lp_bounds`, whose tighter big-M make the MILPs faster). ``n_jobs`` and
    ``executor``: where the MILPs (and the LPs of the default start) run, as in :func:`lp_bounds`.
    """
    if not time_limit > 0:
        raise ValueError(f"time_limit={time_limit!r}: expected a positive number of seconds per problem")
    _check_executor(executor, n_jobs, None)
    lo, hi = check_box(net, lower, upper)
    start = start or lp_bounds(net, lo, hi, n_jobs=n_jobs, executor=executor)
    if not (np.array_equal(start.input_lower, lo) and np.array_equal(start.input_upper, hi)):
        raise ValueError("start: bounds computed for another input box; expected the same [lower, upper]")
    return _tighten(net, start, mip=True, time_limit=time_limit, n_jobs=n_jobs, method="milp", executor=executor)


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
def _check_executor(executor: object, n_jobs: int | None, deadline: float | None) -> None:
    """``executor`` is None or a RayExecutor, and not given with ``n_jobs`` or ``deadline``."""
    if executor is None:
        return
    from structlab.jobs import RayExecutor

    if not isinstance(executor, RayExecutor):
        raise TypeError(f"executor={executor!r}: expected a structlab.jobs.RayExecutor or None (this machine's "
                        "processes: n_jobs)")
    if n_jobs is not None:
        raise ValueError(f"n_jobs={n_jobs!r} and executor: expected one of the two (n_jobs: processes here; "
                         "executor: Ray tasks)")
    if deadline is not None:
        raise ValueError("deadline and executor: expected one of the two (rows with a deadline are solved in "
                         "this process)")


def _tighten(
    net: ReluNetwork, start: Bounds, mip: bool, time_limit: float | None, n_jobs: int | None, method: str,
    deadline: float | None = None, executor: RayExecutor | None = None,
) -> Bounds:
    t0 = time.perf_counter()
    n_jobs = (1 if executor is not None else runtime.cpu_count()) if n_jobs is None else n_jobs
    if not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs={n_jobs!r}: expected a positive int or None")
    folded = net.folded()
    L, U = [b.copy() for b in start.lower], [b.copy() for b in start.upper]
    problems = 0
    with Workers(n_jobs, deadline, executor) as workers:
        for l in range(1, len(folded.layers)):
            if deadline is not None and time.perf_counter() > deadline:
                break  # the layers left keep their (sound) start bounds
            model = Model()
            h = model.add_variables(net.input_dim, start.input_lower, start.input_upper, name="x")
            for k in range(l):
                h = encode_layer(model, h, folded.layers[k], L[k], U[k], relax=not mip, name=f"l{k}").h
            layer = folded.layers[l]
            # a dead or saturated hidden neuron is constant: its bounds do not matter
            clip = layer.clip if layer.activation == "clipped_relu" else np.full(layer.n_out, math.inf)
            output = l == len(folded.layers) - 1
            todo = np.arange(layer.n_out) if output else np.flatnonzero((U[l] > 0) & (L[l] < clip))
            lo, hi = workers.bound_rows(model, h, layer.weight[todo], mip, time_limit, layer=l)
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
