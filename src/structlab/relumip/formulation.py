"""The big-M MILP of a ReLU network on a box, and a model builder for problem-specific constraints.

Every hidden layer is encoded by :func:`~structlab.relumip.bigm.encode_layer` (paper, eq. (3)) under sound
pre-activation bounds; the outputs ``y = W h + b`` are continuous. :class:`Formulation` keeps the
network's variables (``x``, ``y`` and each layer's ``a``, ``h``, ``z``) apart from the problem: add
variables, constraints and an objective, then :meth:`Formulation.solve`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from structlab.relumip.bigm import NO_VAR, LayerVars, encode_layer
from structlab.relumip.bounds import Bounds, check_box, interval_bounds, lp_bounds, milp_bounds
from structlab.relumip.model import Model, Sense
from structlab.relumip.network import ReluNetwork
from structlab.relumip.solvers import SolverOptions, TimeLimitError, solve

BoundsMethod = Literal["interval", "lp", "milp"]


@dataclass
class Solution:
    """The result of optimising over a network.

    ``x`` (n_in,): the best input found; ``y = net(x)`` (n_out,) from the network's own forward pass;
    ``objective``: the objective at ``x`` evaluated with ``y = net(x)`` (not only the solver's value);
    ``solver_objective``: the solver's value; ``bound``: best proven bound on the optimum; ``status``:
    "optimal" | "time_limit" | "limit"; ``gap``: relative gap; ``seconds``: solver wall time; ``nodes``:
    branch-and-bound nodes. ``x``, ``y`` and ``objective`` are None when no solution was found.
    """

    status: str
    x: np.ndarray | None
    y: np.ndarray | None
    objective: float | None
    bound: float
    gap: float
    seconds: float
    nodes: int
    solver: str
    solver_objective: float | None
    values: np.ndarray | None

    @property
    def optimal(self) -> bool:
        return self.status == "optimal"

    def raise_for_status(self) -> Solution:
        """Return self if optimal; raise :class:`~structlab.relumip.solvers.TimeLimitError` otherwise."""
        if not self.optimal:
            found = "no solution found" if self.x is None else f"best objective {self.objective:.6g}"
            raise TimeLimitError(
                f"{self.solver}: stopped at status {self.status!r} after {self.seconds:.1f} s with {found} "
                f"and bound {self.bound:.6g}", self,
            )
        return self


class Formulation:
    """The big-M MILP of ``net`` on the box ``lower <= x <= upper``, ready for more constraints.

    ``bounds``: precomputed :class:`Bounds` or the method to compute them ("interval", "lp", "milp").
    Attributes: ``model`` (:class:`Model`), ``x`` (n_in,) and ``y`` (n_out,) variable indices, ``layers``
    (:class:`LayerVars` per hidden layer), ``bounds``. Example, a robustness margin in an L-inf ball::

        form = Formulation(net, np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1), bounds="lp")
        form.set_objective(form.y[[j, true]], [1.0, -1.0], sense="max")
        sol = form.solve(time_limit=60)
    """

    def __init__(
        self,
        net: ReluNetwork,
        lower: np.ndarray | Sequence[float],
        upper: np.ndarray | Sequence[float],
        bounds: Bounds | BoundsMethod = "interval",
    ) -> None:
        if not isinstance(net, ReluNetwork):
            raise TypeError(f"net: {type(net).__name__}; expected a ReluNetwork")
        lower, upper = check_box(net, lower, upper)
        if isinstance(bounds, str):
            methods = {"interval": interval_bounds, "lp": lp_bounds, "milp": milp_bounds}
            if bounds not in methods:
                raise ValueError(f"bounds={bounds!r}: expected one of {tuple(methods)} or a Bounds object")
            bounds = methods[bounds](net, lower, upper)
        elif not isinstance(bounds, Bounds):
            raise TypeError(f"bounds: {type(bounds).__name__}; expected a Bounds object or a method name")
        elif not (np.all(bounds.input_lower <= lower) and np.all(upper <= bounds.input_upper)):
            raise ValueError("bounds: computed for a smaller input box than [lower, upper]; recompute them")
        self.net, self.bounds = net, bounds
        self.lower, self.upper = lower, upper
        folded = net.folded()
        self.model = Model()
        self.x = self.model.add_variables(net.input_dim, lower, upper, name="x")
        h = self.x
        self.layers: list[LayerVars] = []
        for i, layer in enumerate(folded.hidden):
            vars_ = encode_layer(self.model, h, layer, bounds.lower[i], bounds.upper[i], name=f"l{i}")
            self.layers.append(vars_)
            h = vars_.h
        out = folded.layers[-1]
        self.y = self.model.add_variables(out.n_out, bounds.lower[-1], bounds.upper[-1], name="y")
        self.model.add_rows(  # y - W h = b
            [np.concatenate(([self.y[j]], h)) for j in range(out.n_out)],
            [np.concatenate(([1.0], -out.weight[j])) for j in range(out.n_out)],
            out.bias, out.bias,
        )

    # ------------------------------------------------------------------------------ problem building
    def add_variables(
        self, n: int, lower: float | np.ndarray = 0.0, upper: float | np.ndarray = math.inf,
        integer: bool = False, name: str = "u",
    ) -> np.ndarray:
        """Add ``n`` problem variables (see :meth:`Model.add_variables`); returns their indices."""
        return self.model.add_variables(n, lower, upper, integer, name)

    def add_constraint(
        self, variables: Sequence[int] | np.ndarray, coeffs: Sequence[float] | np.ndarray,
        lower: float = -math.inf, upper: float = math.inf,
    ) -> None:
        """Add ``lower <= sum_k coeffs[k] * v[variables[k]] <= upper``, e.g. on ``self.y`` or ``self.x``."""
        self.model.add_constraint(variables, coeffs, lower, upper)

    def set_objective(
        self, variables: Sequence[int] | np.ndarray, coeffs: Sequence[float] | np.ndarray,
        sense: Sense = "min", offset: float = 0.0,
    ) -> None:
        """Optimise ``sum_k coeffs[k] * v[variables[k]] + offset`` in direction ``sense`` ("min" | "max")."""
        self.model.set_objective(variables, coeffs, sense, offset)

    # ------------------------------------------------------------------------------------ indicators
    @property
    def big_m(self) -> list[np.ndarray]:
        """The largest big-M coefficient of every hidden neuron, per layer (0 for stable neurons)."""
        return [layer.big_m for layer in self.layers]

    @property
    def num_binaries(self) -> int:
        return self.model.num_integers

    # ---------------------------------------------------------------------------------------- solving
    def point(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        """Values of every network variable at input ``x`` (the forward pass); problem variables are NaN.

        A feasible warm start for :meth:`solve` when ``x`` satisfies the problem's own constraints.
        """
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.net.input_dim,):
            raise ValueError(f"x: shape {x.shape}; expected ({self.net.input_dim},)")
        values = np.full(self.model.num_variables, np.nan)
        values[self.x] = x
        folded = self.net.folded()
        pre = folded.pre_activations(x)
        for vars_, layer, a in zip(self.layers, folded.hidden, pre, strict=False):
            h = layer.activate(a)
            values[vars_.h] = h
            has_a = vars_.a != NO_VAR
            values[vars_.a[has_a]] = a[has_a]
            has_z = vars_.z != NO_VAR
            values[vars_.z[has_z]] = (a[has_z] > 0).astype(float)
            has_zc = vars_.z_clip != NO_VAR
            if has_zc.any():
                values[vars_.z_clip[has_zc]] = (a[has_zc] > layer.clip[has_zc]).astype(float)
        values[self.y] = pre[-1]
        return values

    def solve(
        self,
        solver: str = "highs",
        time_limit: float | None = None,
        gap: float = 1e-6,
        threads: int | None = None,
        seed: int = 0,
        warm_start: np.ndarray | Sequence[float] | None = None,
        feasibility_tol: float = 1e-8,
        verbose: bool = False,
    ) -> Solution:
        """Solve the model; ``warm_start`` is a feasible input x (n_in,) whose forward pass seeds the solver.

        Raises :class:`~structlab.relumip.solvers.InfeasibleError` / ``UnboundedError`` for such models; a
        time-out returns a :class:`Solution` with status "time_limit" (see ``raise_for_status``).
        """
        options = SolverOptions(time_limit, gap, threads, seed, feasibility_tol, verbose)
        start = None if warm_start is None else self.point(np.asarray(warm_start, dtype=np.float64))
        result = solve(self.model, solver, options, start)
        x = y = objective = None
        if result.values is not None:
            x = np.clip(result.values[self.x], self.lower, self.upper)
            y = self.net(x)
            objective = self._objective_at(result.values, x, y)
        return Solution(
            status=result.status, x=x, y=y, objective=objective, bound=result.bound, gap=result.gap,
            seconds=result.seconds, nodes=result.nodes, solver=result.solver,
            solver_objective=result.objective, values=result.values,
        )

    def _objective_at(self, values: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        """The objective with the network's variables taken from the forward pass at ``x``."""
        exact = values.copy()
        exact[self.x] = x
        exact[self.y] = y
        return float(self.model.objective_value @ exact[self.model.objective_index] + self.model.objective_offset)


def start_points(
    net: ReluNetwork, lo: np.ndarray, hi: np.ndarray, candidates: np.ndarray | Sequence[Sequence[float]] | None,
    n_samples: int, seed: int,
) -> np.ndarray:
    """Warm-start candidates in the box [lo, hi]: its centre, ``n_samples`` uniform samples (drawn with
    ``seed``) and the rows of ``candidates`` that lie inside it; shape (k, n_in)."""
    rng = np.random.default_rng(seed)
    points = [0.5 * (lo + hi)[None], rng.uniform(lo, hi, (n_samples, lo.size))]
    if candidates is not None:
        rows = np.asarray(candidates, dtype=np.float64).reshape(-1, net.input_dim)
        points.append(rows[np.all((rows >= lo) & (rows <= hi), axis=1)])
    return np.concatenate(points)

def sampled_start(
    net: ReluNetwork,
    lower: np.ndarray | Sequence[float],
    upper: np.ndarray | Sequence[float],
    objective: np.ndarray,
    sense: Sense = "min",
    candidates: np.ndarray | None = None,
    n_samples: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """The best input, by ``objective . net(x)``, among ``candidates`` (rows inside the box, e.g. data
    points), the box centre and ``n_samples`` uniform samples: a cheap feasible warm start (n_in,).

    Any point of the box is feasible for :func:`optimize`, and a solver that starts from a good one prunes
    from its first node (HiGHS found no feasible point in 60 s on some surrogate problems without it).
    """
    lo, hi = check_box(net, lower, upper)
    x = start_points(net, lo, hi, candidates, n_samples, seed)
    values = net(x) @ np.asarray(objective, dtype=np.float64)
    return x[int(np.argmin(values) if sense == "min" else np.argmax(values))]


def optimize(
    net: ReluNetwork,
    lower: np.ndarray | Sequence[float],
    upper: np.ndarray | Sequence[float],
    objective: np.ndarray | Sequence[float] | float,
    sense: Sense = "min",
    bounds: Bounds | BoundsMethod = "interval",
    solver: str = "highs",
    time_limit: float | None = None,
    warm_start: np.ndarray | Sequence[float] | Literal["sample"] | None = "sample",
    **options: object,
) -> Solution:
    """Optimise ``c . net(x)`` over the box ``lower <= x <= upper`` (each of shape (n_in,)).

    ``objective`` is the vector ``c`` (n_out,) of coefficients on the outputs (a number for one output).
    ``bounds``: "interval", "lp", "milp" or a :class:`Bounds`. ``warm_start``: "sample" (default: the best
    of the box centre and 256 uniform samples, see :func:`sampled_start`), an input x (n_in,) in the box,
    or None (no warm start). ``options`` go to :meth:`Formulation.solve` (gap, threads, seed,
    feasibility_tol, verbose). Returns a :class:`Solution` whose ``objective`` is ``c . net(x)`` from the
    network's forward pass at the returned ``x``.
    """
    c = np.atleast_1d(np.asarray(objective, dtype=np.float64))
    if c.shape != (net.output_dim,) or not np.all(np.isfinite(c)):
        raise ValueError(f"objective: shape {c.shape}; expected {net.output_dim} finite output coefficients")
    if isinstance(warm_start, str) and warm_start != "sample":
        raise ValueError(f"warm_start={warm_start!r}: expected 'sample', an input x or None")
    form = Formulation(net, lower, upper, bounds)
    form.set_objective(form.y, c, sense)
    start = sampled_start(net, form.lower, form.upper, c, sense) if isinstance(warm_start, str) else warm_start
    return form.solve(solver=solver, time_limit=time_limit, warm_start=start, **options)  # type: ignore[arg-type]
