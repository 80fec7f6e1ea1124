"""Solve a :class:`~structlab.relumip.model.Model` with HiGHS (``highspy``, default) or SCIP (``pyscipopt``).

Both backends read the same model object and report the same :class:`SolverResult`: status, values,
objective, best proven bound, gap, wall time and branch-and-bound nodes. Infeasible and unbounded models
raise :class:`InfeasibleError` / :class:`UnboundedError`; a time-out is a result with status
``"time_limit"`` (and the best solution found, if any) that ``raise_for_status`` turns into
:class:`TimeLimitError`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from structlab.errors import StructlabError
from structlab.relumip.model import Model, import_highspy

SOLVERS: tuple[str, ...] = ("highs", "scip")
Status = Literal["optimal", "time_limit", "limit"]


class SolveError(StructlabError):
    """The solver did not return an optimal solution."""


class InfeasibleError(SolveError):
    """The model has no feasible point (e.g. contradictory extra constraints)."""


class UnboundedError(SolveError):
    """The objective is unbounded (or the model is infeasible or unbounded, as the solver could not tell)."""


class TimeLimitError(SolveError):
    """The time limit was reached before optimality; ``solution`` holds the best one found (``x`` may be None)."""

    def __init__(self, message: str, solution: Any) -> None:
        super().__init__(message)
        self.solution = solution


@dataclass(frozen=True)
class SolverOptions:
    """What is passed through to either solver.

    ``time_limit`` in seconds (None: none); ``gap``: relative optimality gap at which to stop; ``threads``:
    HiGHS threads (SCIP solves with one); ``seed``: the solver's random seed; ``feasibility_tol``: primal
    and integrality feasibility tolerance (tighter than the solvers' 1e-6 default, because an integrality
    error ``eps`` on a binary moves a ReLU output by up to ``eps * M``).
    """

    time_limit: float | None = None
    gap: float = 1e-6
    threads: int | None = None
    seed: int = 0
    feasibility_tol: float = 1e-8
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit={self.time_limit!r}: expected a positive number of seconds or None")
        if not 0 <= self.gap < 1:
            raise ValueError(f"gap={self.gap!r}: expected a relative gap in [0, 1)")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads={self.threads!r}: expected a positive int or None")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r}: expected a non-negative int")
        if not 0 < self.feasibility_tol <= 1e-3:
            raise ValueError(f"feasibility_tol={self.feasibility_tol!r}: expected a value in (0, 1e-3]")


@dataclass
class SolverResult:
    """What a solver returned for a model (values in the model's own variables)."""

    solver: str
    status: Status
    values: np.ndarray | None  # (num_variables,) best solution found, or None
    objective: float | None  # solver's objective value of ``values``
    bound: float  # best proven bound on the optimum (dual bound), in the model's sense
    gap: float  # relative gap |objective - bound| / max(|objective|, 1e-10); inf without a solution
    seconds: float  # wall time of the solve call
    nodes: int  # branch-and-bound nodes (0 for an LP)


def solve(
    model: Model,
    solver: str = "highs",
    options: SolverOptions | None = None,
    warm_start: np.ndarray | None = None,
) -> SolverResult:
    """Solve ``model`` with ``solver`` ("highs" or "scip").

    ``warm_start`` (num_variables,) is a feasible point handed to the solver as its first incumbent; NaN
    entries are left for the solver to complete. Raises :class:`InfeasibleError`, :class:`UnboundedError`,
    ``ValueError`` for an unknown solver and ``StructlabError`` if the solver's package is missing.
    """
    options = options or SolverOptions()
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}: expected one of {SOLVERS}")
    if warm_start is not None:
        warm_start = np.asarray(warm_start, dtype=np.float64)
        if warm_start.shape != (model.num_variables,):
            raise ValueError(f"warm_start: shape {warm_start.shape}; expected ({model.num_variables},)")
    return (_solve_highs if solver == "highs" else _solve_scip)(model, options, warm_start)


def _gap(objective: float | None, bound: float) -> float:
    if objective is None or not math.isfinite(bound):
        return math.inf
    return abs(objective - bound) / max(abs(objective), 1e-10)


# ------------------------------------------------------------------------------------------- HiGHS
def _solve_highs(model: Model, options: SolverOptions, warm_start: np.ndarray | None) -> SolverResult:
    highspy = import_highspy()
    h = model.to_highs()
    h.setOptionValue("output_flag", options.verbose)
    if options.time_limit is not None:
        h.setOptionValue("time_limit", float(options.time_limit))
    h.setOptionValue("mip_rel_gap", float(options.gap))
    h.setOptionValue("random_seed", int(options.seed))
    h.setOptionValue("mip_feasibility_tolerance", float(options.feasibility_tol))
    h.setOptionValue("primal_feasibility_tolerance", float(options.feasibility_tol))
    if options.threads is not None:
        h.setOptionValue("threads", int(options.threads))
    if warm_start is not None:
        known = np.flatnonzero(~np.isnan(warm_start)).astype(np.int32)
        h.setSolution(known.size, known, warm_start[known])
    start = time.perf_counter()
    h.run()
    seconds = time.perf_counter() - start
    status = h.getModelStatus()
    info = h.getInfo()
    S = highspy.HighsModelStatus
    if status == S.kInfeasible:
        raise InfeasibleError("HiGHS: the model is infeasible (check the extra constraints and the input box)")
    if status in (S.kUnbounded, S.kUnboundedOrInfeasible):
        raise UnboundedError("HiGHS: the model is unbounded or infeasible (is every input bounded?)")
    if status == S.kOptimal:
        result_status: Status = "optimal"
    elif status == S.kTimeLimit:
        result_status = "time_limit"
    elif status in (S.kIterationLimit, S.kSolutionLimit, S.kObjectiveBound, S.kObjectiveTarget, S.kInterrupt):
        result_status = "limit"
    else:
        raise SolveError(f"HiGHS stopped with status {h.modelStatusToString(status)}")
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    values = np.asarray(h.getSolution().col_value, dtype=np.float64) if has_solution else None
    objective = float(info.objective_function_value) if has_solution else None
    is_mip = model.num_integers > 0
    if is_mip:
        bound = float(info.mip_dual_bound)
    else:  # an LP solved to optimality: the dual objective equals the primal one within tolerance
        bound = objective if (objective is not None and result_status == "optimal") else math.nan
    nodes = max(int(info.mip_node_count), 0) if is_mip else 0
    return SolverResult("highs", result_status, values, objective, bound, _gap(objective, bound), seconds, nodes)


# -------------------------------------------------------------------------------------------- SCIP
def _solve_scip(model: Model, options: SolverOptions, warm_start: np.ndarray | None) -> SolverResult:
    try:
        import pyscipopt
    except ImportError as err:  # pragma: no cover - pyscipopt is a dependency of the mip extra
        raise StructlabError("SCIP is not installed: pip install 'structlab[mip]'") from err
    m = pyscipopt.Model()
    m.hideOutput(not options.verbose)
    lower, upper, integer = model.col_lower, model.col_upper, model.integer
    variables = [
        m.addVar(
            name=name,
            vtype="I" if integer[j] else "C",
            lb=None if lower[j] == -math.inf else float(lower[j]),
            ub=None if upper[j] == math.inf else float(upper[j]),
        )
        for j, name in enumerate(model.names)
    ]
    starts, index, value, row_lower, row_upper = model.rows()
    for i in range(model.num_rows):
        row = slice(starts[i], starts[i + 1])
        expr = pyscipopt.quicksum(float(v) * variables[k] for k, v in zip(index[row], value[row], strict=True))
        m.addCons(_scip_range(expr, row_lower[i], row_upper[i]), name=f"r{i}")
    cost = model.cost
    nz = np.flatnonzero(cost)
    m.setObjective(
        pyscipopt.quicksum(float(cost[j]) * variables[j] for j in nz) + model.objective_offset,
        sense="maximize" if model.sense == "max" else "minimize",
    )
    if options.time_limit is not None:
        m.setParam("limits/time", float(options.time_limit))
    m.setParam("limits/gap", float(options.gap))
    m.setParam("randomization/randomseedshift", int(options.seed))
    m.setParam("numerics/feastol", float(options.feasibility_tol))
    if warm_start is not None:
        known = np.flatnonzero(~np.isnan(warm_start))
        sol = m.createPartialSol() if known.size < warm_start.size else m.createSol()
        for j in known:
            m.setSolVal(sol, variables[j], float(warm_start[j]))
        m.addSol(sol)
    start = time.perf_counter()
    m.optimize()
    seconds = time.perf_counter() - start
    status = m.getStatus()
    if status == "infeasible":
        raise InfeasibleError("SCIP: the model is infeasible (check the extra constraints and the input box)")
    if status in ("unbounded", "inforunbd"):
        raise UnboundedError("SCIP: the model is unbounded or infeasible (is every input bounded?)")
    if status == "optimal":
        result_status: Status = "optimal"
    elif status == "timelimit":
        result_status = "time_limit"
    elif status in ("gaplimit", "nodelimit", "totalnodelimit", "stallnodelimit", "sollimit", "bestsollimit",
                    "userinterrupt", "memlimit"):
        result_status = "optimal" if status == "gaplimit" else "limit"
    else:
        raise SolveError(f"SCIP stopped with status {status}")
    values = objective = None
    if m.getNSols() > 0:
        best = m.getBestSol()
        values = np.array([m.getSolVal(best, v) for v in variables], dtype=np.float64)
        objective = float(m.getSolObjVal(best))
    bound = float(m.getDualbound())
    return SolverResult("scip", result_status, values, objective, bound, _gap(objective, bound), seconds,
                        int(m.getNNodes()))


def _scip_range(expr: Any, lo: float, hi: float) -> Any:
    if lo == hi:
        return expr == lo
    if lo == -math.inf:
        return expr <= hi
    if hi == math.inf:
        return expr >= lo
    return (lo <= expr) <= hi
