"""The three benchmark problems of the study (paper, Sec. 5), as data sets and optimisation instances.

Each problem module gives the data a surrogate is trained on (:class:`Dataset`) and the optimisation
problems posed over the trained network (:class:`Instance`):

- :mod:`.peaks`: minimise a network trained on MATLAB's peaks function on [-2, 2]^2.
- :mod:`.verification`: the largest misclassification margin of a Fashion-MNIST classifier in an
  L-infinity ball around a test image.
- :mod:`.reformer`: maximise hydrogen under a nitrogen limit on OMLT's autothermal-reformer surrogate.

An :class:`Instance` is declarative (a box, an objective on the outputs, output constraints); :func:`encode`
turns it into a :class:`~structlab.relumip.Formulation` and :mod:`structlab.relumip.omlt_compare` into an
OMLT/Pyomo model, so both encodings solve exactly the same problem. :meth:`Instance.evaluate` scores an
input by the network's own forward pass, independently of either encoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from structlab.data import Resolution
from structlab.relumip.bounds import Bounds
from structlab.relumip.formulation import Formulation, start_points
from structlab.relumip.network import ReluNetwork

Task = Literal["regression", "classification"]


@dataclass(frozen=True)
class Dataset:
    """Training and test data of a surrogate, in the network's input and output units.

    ``x_*`` (n, n_in) float32; ``y_*`` (n, n_out) float32 for regression or (n,) int64 class labels.
    ``lower``/``upper`` (n_in,) is the input domain the surrogate is valid on.
    """

    name: str
    task: Task
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    source: Resolution

    @property
    def n_in(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_out(self) -> int:
        return int(self.y_train.max()) + 1 if self.task == "classification" else self.y_train.shape[1]

    def test_error(self, net: ReluNetwork) -> float:
        """Classification: share of misclassified test inputs. Regression: normalised RMSE,
        ``sqrt(mean_k MSE_k / Var_k)`` over outputs ``k`` (variance of the training targets), so that
        outputs of different units (a duty in kW, a mole fraction) weigh alike; 1.0 is a constant guess."""
        pred = net(self.x_test.astype(np.float64))
        if self.task == "classification":
            return float(np.mean(pred.argmax(axis=1) != self.y_test))
        mse = np.mean((pred - self.y_test) ** 2, axis=0)
        return float(np.sqrt(np.mean(mse / self.y_train.astype(np.float64).var(axis=0))))


@dataclass(frozen=True)
class OutputConstraint:
    """``lower <= coeffs . y <= upper`` on the network's outputs ``y`` (n_out,), in the user's units."""

    coeffs: np.ndarray
    lower: float = -np.inf
    upper: float = np.inf


@dataclass(frozen=True)
class Instance:
    """One optimisation problem over a trained network, on the input box ``[lower, upper]``.

    Either a linear objective ``objective . y`` (``objective`` of shape (n_out,)) or, when ``margin_label``
    is set, the misclassification margin ``max_{j != label} (y_j - y_label)``, always in direction
    ``sense``. ``constraints`` restrict the outputs.
    """

    name: str
    lower: np.ndarray
    upper: np.ndarray
    sense: Literal["min", "max"]
    objective: np.ndarray | None = None
    margin_label: int | None = None
    constraints: tuple[OutputConstraint, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.objective is None) == (self.margin_label is None):
            raise ValueError("objective/margin_label: expected exactly one of the two")
        if self.margin_label is not None and self.sense != "max":
            raise ValueError(f"sense={self.sense!r}: a margin instance maximises (sense='max')")

    def evaluate(self, net: ReluNetwork, x: np.ndarray) -> float:
        """The objective at input ``x`` by the network's forward pass (no solver involved)."""
        y = net(np.asarray(x, dtype=np.float64))
        if self.margin_label is None:
            return float(self.objective @ y)
        return float(np.delete(y, self.margin_label).max() - y[self.margin_label])

    def violation(self, net: ReluNetwork, x: np.ndarray) -> float:
        """The largest violation of the input box and the output constraints at ``x`` (0 when feasible)."""
        x = np.asarray(x, dtype=np.float64)
        y = net(x)
        worst = max(float(np.max(self.lower - x)), float(np.max(x - self.upper)), 0.0)
        for con in self.constraints:
            value = float(con.coeffs @ y)
            worst = max(worst, con.lower - value, value - con.upper)
        return worst


def margin_big_m(bounds_lower: np.ndarray, bounds_upper: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds ``[d_lo_j, d_hi_j]`` of the margins ``d_j = y_j - y_label`` from bounds on the outputs."""
    d_lo = bounds_lower - bounds_upper[label]
    d_hi = bounds_upper - bounds_lower[label]
    return d_lo, d_hi


def encode(form: Formulation, instance: Instance) -> None:
    """Add ``instance``'s objective and output constraints to a :class:`Formulation` of its network.

    The margin ``t = max_j d_j`` (``d_j = y_j - y_label``) is encoded with one selector binary ``s_j`` per
    wrong class: ``t <= d_j + (T - d_lo_j)(1 - s_j)`` and ``sum_j s_j = 1``, where ``T = max_j d_hi_j``;
    maximising ``t`` makes it the largest margin (Fischetti and Jo 2018, Sec. 4 use one class at a time).
    """
    for con in instance.constraints:
        form.add_constraint(form.y, con.coeffs, con.lower, con.upper)
    if instance.margin_label is None:
        form.set_objective(form.y, instance.objective, instance.sense)
        return
    label = instance.margin_label
    others = [j for j in range(form.net.output_dim) if j != label]
    d_lo, d_hi = margin_big_m(form.bounds.lower[-1], form.bounds.upper[-1], label)
    top = float(d_hi[others].max())
    t = form.add_variables(1, float(d_lo[others].max()), top, name="margin")[0]
    s = form.add_variables(len(others), 0.0, 1.0, integer=True, name="select")
    for sj, j in zip(s, others, strict=True):
        big_m = top - float(d_lo[j])
        # t - y_j + y_label + M s_j <= M
        form.add_constraint([t, form.y[j], form.y[label], sj], [1.0, -1.0, 1.0, big_m], upper=big_m)
    form.add_constraint(s, np.ones(len(others)), 1.0, 1.0)
    form.set_objective([t], [1.0], "max")


@dataclass
class InstanceResult:
    """How one encoding of an instance was solved (structlab's or a peer's: OMLT, PySCIPOpt-ML).

    ``value``: the objective at ``x`` by the network's forward pass (:meth:`Instance.evaluate`), None when
    no solution was found; ``bound``: the solver's proven bound; ``build_seconds``: bounds and model
    building; ``solve_seconds``: the solver's run; ``big_m``: the largest big-M coefficient per hidden
    layer (empty for an encoding without big-M); ``variables``/``binaries``/``constraints``: model size as
    handed to the solver. ``timings``: ``build_seconds`` by part, in seconds: ``bounds`` (tightening),
    ``model`` (building the model: structlab's, or Pyomo and OMLT's, or PySCIPOpt's) and ``transfer``
    (handing it to the solver, where that is a separate step).
    """

    encoder: str
    bounds: str
    status: str
    x: np.ndarray | None
    value: float | None
    bound: float
    gap: float
    build_seconds: float
    solve_seconds: float
    nodes: int
    variables: int
    binaries: int
    constraints: int
    big_m: tuple[float, ...]
    violation: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def solved(self) -> bool:
        return self.status == "optimal"

    @property
    def seconds(self) -> float:
        return self.build_seconds + self.solve_seconds

    def as_record(self) -> dict[str, Any]:
        """Plain numbers for a results file (``x`` left out)."""
        out = {k: v for k, v in self.__dict__.items() if k != "x"}
        out["big_m"] = list(self.big_m)
        out["timings"] = dict(self.timings)
        out["solved"] = self.solved
        out["seconds"] = self.seconds
        return out


def feasible_start(
    net: ReluNetwork,
    instance: Instance,
    candidates: np.ndarray | None = None,
    n_samples: int = 256,
    seed: int = 0,
) -> np.ndarray | None:
    """The best feasible input of ``instance`` among ``candidates`` (rows, e.g. the training data), the
    box centre and ``n_samples`` uniform samples; None when none of them meets the output constraints.

    A cheap incumbent for the solver: HiGHS without one found no feasible point in 60 s on trivially
    feasible 3x32 and 3x50 reformer surrogates, and solved one of them in 19 s from the best data row.
    """
    x = start_points(net, instance.lower, instance.upper, candidates, n_samples, seed)
    y = net(x)
    feasible = np.ones(x.shape[0], dtype=bool)
    for con in instance.constraints:
        value = y @ con.coeffs
        feasible &= (value >= con.lower) & (value <= con.upper)
    if not feasible.any():
        return None
    x, y = x[feasible], y[feasible]
    if instance.margin_label is None:
        values = y @ instance.objective
    else:
        values = np.delete(y, instance.margin_label, axis=1).max(axis=1) - y[:, instance.margin_label]
    return x[int(np.argmin(values) if instance.sense == "min" else np.argmax(values))]


def solve_instance(
    net: ReluNetwork,
    instance: Instance,
    bounds: Bounds | str = "interval",
    time_limit: float | None = None,
    seed: int = 0,
    threads: int = 1,
    solver: str = "highs",
    warm_start: np.ndarray | Literal["auto"] | None = "auto",
    candidates: np.ndarray | None = None,
) -> InstanceResult:
    """Encode ``instance`` over ``net`` with structlab's big-M formulation and solve it.

    ``bounds``: "interval", "lp", "milp" or precomputed :class:`Bounds` for the instance's box. The
    bound-tightening time counts as build time. ``warm_start``: "auto" (default: :func:`feasible_start`
    over ``candidates`` and samples, its time counted as build time), an input x, or None (no warm start,
    as the paper-reproduction studies solve). Raises the solver's errors for infeasible models.
    """
    start = time.perf_counter()
    form = Formulation(net, instance.lower, instance.upper, bounds)
    encode(form, instance)
    if isinstance(warm_start, str):
        if warm_start != "auto":
            raise ValueError(f"warm_start={warm_start!r}: expected 'auto', an input x or None")
        warm_start = feasible_start(net, instance, candidates, seed=seed)
    # precomputed bounds: their computation time counts too
    model = time.perf_counter() - start - (0.0 if isinstance(bounds, Bounds) else form.bounds.seconds)
    build = model + form.bounds.seconds
    sol = form.solve(solver=solver, time_limit=time_limit, seed=seed, threads=threads, warm_start=warm_start)
    stats = form.model.stats()
    value = None if sol.x is None else instance.evaluate(net, sol.x)
    return InstanceResult(
        encoder="structlab", bounds=form.bounds.method, status=sol.status, x=sol.x, value=value,
        bound=float(sol.bound), gap=float(sol.gap), build_seconds=build, solve_seconds=float(sol.seconds),
        nodes=int(sol.nodes), variables=int(stats["variables"]), binaries=int(stats["integers"]),
        constraints=int(stats["rows"]), big_m=tuple(float(m.max(initial=0.0)) for m in form.big_m),
        violation=0.0 if sol.x is None else instance.violation(net, sol.x),
        timings={"bounds": form.bounds.seconds, "model": model},
    )
