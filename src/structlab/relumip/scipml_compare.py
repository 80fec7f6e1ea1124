"""The head-to-head against PySCIPOpt-ML: the same network and instance encoded by PySCIPOpt-ML, solved by SCIP.

PySCIPOpt-ML (Turner et al. 2023, PyPI ``pyscipopt-ml``) embeds a trained predictor in a PySCIPOpt model:
``add_predictor_constr(scip_model, predictor, input_vars, output_vars)`` takes a
``torch.nn.Sequential`` (or a scikit-learn, Keras, ONNX... model) and adds its layers as constraints. A
ReLU is encoded by its default SOS1 formulation (``h = a + s``, ``SOS1(h, s)``, no big-M) or, with
``formulation="bigm"``, by a binary and big-M values; both take their bounds from interval propagation
of the input variables' bounds. SCIP solves the model with the same options as structlab's SCIP backend
(:class:`~structlab.relumip.solvers.SolverOptions`: gap, feasibility tolerance, seed, time limit; one
thread), so comparing against structlab's formulation solved by SCIP leaves the encoding and its bounds
as the difference.

PySCIPOpt-ML has no clipped ReLU; :func:`solve_with_pyscipopt_ml` raises ``ValueError`` for such networks.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import numpy as np

from structlab.errors import StructlabError
from structlab.relumip.network import ReluNetwork
from structlab.relumip.problems import Instance, InstanceResult, margin_big_m
from structlab.relumip.solvers import SolverOptions

Formulation = Literal["sos", "bigm"]


def _pyscipopt_ml() -> tuple[Any, Any]:
    try:
        import pyscipopt
        from pyscipopt_ml.add_predictor import add_predictor_constr
    except ImportError as err:
        raise StructlabError("PySCIPOpt-ML is not installed: pip install 'structlab[mip]'") from err
    return pyscipopt, add_predictor_constr


def sequential(net: ReluNetwork) -> Any:
    """``net`` (its scaling folded in) as the ``torch.nn.Sequential`` of ``Linear`` and ``ReLU`` that
    PySCIPOpt-ML reads, in float64. Raises ``ValueError`` for a clipped-ReLU network."""
    import torch
    from torch import nn

    if any(layer.activation == "clipped_relu" for layer in net.hidden):
        raise ValueError(f"net: {net!r} has clipped ReLUs; PySCIPOpt-ML's formulations support only ReLU")
    modules: list[nn.Module] = []
    for layer in net.folded().layers:
        linear = nn.Linear(layer.n_in, layer.n_out).double()
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(layer.weight))
            linear.bias.copy_(torch.tensor(layer.bias))
        modules.append(linear)
        if layer.activation == "relu":
            modules.append(nn.ReLU())
    return nn.Sequential(*modules).eval()


def build_model(net: ReluNetwork, instance: Instance, formulation: Formulation = "sos") -> tuple[Any, Any, Any]:
    """A PySCIPOpt model with ``net`` added by PySCIPOpt-ML and ``instance``'s problem; returns
    ``(model, x, y)`` with the input and output variables (user's units).

    The margin objective uses the same selector encoding as structlab's
    (:func:`structlab.relumip.problems.encode`), with big-M values from the output bounds that
    PySCIPOpt-ML's propagation put on ``y``.
    """
    pyscipopt, add_predictor_constr = _pyscipopt_ml()
    if formulation not in ("sos", "bigm"):
        raise ValueError(f"formulation={formulation!r}: expected 'sos' or 'bigm'")
    m = pyscipopt.Model()
    m.hideOutput()
    x = m.addMatrixVar((net.input_dim,), lb=instance.lower, ub=instance.upper, name="x")
    y = m.addMatrixVar((net.output_dim,), lb=None, ub=None, name="y")
    add_predictor_constr(m, sequential(net), x, y, unique_naming_prefix="nn_", formulation=formulation)
    for k, con in enumerate(instance.constraints):
        expr = pyscipopt.quicksum(float(c) * y[j] for j, c in enumerate(con.coeffs) if c != 0)
        if math.isfinite(con.lower):
            m.addCons(expr >= float(con.lower), name=f"output_lower_{k}")
        if math.isfinite(con.upper):
            m.addCons(expr <= float(con.upper), name=f"output_upper_{k}")
    if instance.margin_label is None:
        m.setObjective(pyscipopt.quicksum(float(c) * y[j] for j, c in enumerate(instance.objective) if c != 0),
                       sense="maximize" if instance.sense == "max" else "minimize")
        return m, x, y
    label = instance.margin_label
    lo = np.array([y[j].getLbOriginal() for j in range(net.output_dim)], dtype=np.float64)
    hi = np.array([y[j].getUbOriginal() for j in range(net.output_dim)], dtype=np.float64)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise StructlabError("PySCIPOpt-ML left an output unbounded; the margin's big-M needs finite bounds")
    others = [j for j in range(net.output_dim) if j != label]
    d_lo, d_hi = margin_big_m(lo, hi, label)
    top = float(d_hi[others].max())
    t = m.addVar(lb=float(d_lo[others].max()), ub=top, name="margin")
    select = {j: m.addVar(vtype="B", name=f"select_{j}") for j in others}
    m.addCons(pyscipopt.quicksum(select.values()) == 1, name="select_one")
    for j in others:
        m.addCons(t <= y[j] - y[label] + (top - float(d_lo[j])) * (1 - select[j]), name=f"margin_{j}")
    m.setObjective(t, sense="maximize")
    return m, x, y


def solve_with_pyscipopt_ml(
    net: ReluNetwork,
    instance: Instance,
    time_limit: float | None = None,
    seed: int = 0,
    formulation: Formulation = "sos",
    options: SolverOptions | None = None,
) -> InstanceResult:
    """Encode ``instance`` with PySCIPOpt-ML (``formulation``: its default ``"sos"`` or ``"bigm"``) and
    solve it with SCIP, with structlab's SCIP options (module docstring).

    ``build_seconds`` is PySCIPOpt-ML's model building (``timings["model"]``); ``solve_seconds`` SCIP's
    run (presolve included). The returned input is re-evaluated by the network's forward pass.
    """
    options = options or SolverOptions(time_limit=time_limit, seed=seed)
    start = time.perf_counter()
    m, x_vars, _ = build_model(net, instance, formulation)
    built = time.perf_counter()
    if options.time_limit is not None:
        m.setParam("limits/time", float(options.time_limit))
    m.setParam("limits/gap", float(options.gap))
    m.setParam("randomization/randomseedshift", int(options.seed))
    m.setParam("numerics/feastol", float(options.feasibility_tol))
    m.optimize()
    solve_seconds = time.perf_counter() - built
    scip_status = m.getStatus()
    status = {"optimal": "optimal", "gaplimit": "optimal", "timelimit": "time_limit"}.get(scip_status, scip_status)
    x = value = None
    violation = 0.0
    if m.getNSols() > 0:
        best = m.getBestSol()
        x = np.clip([m.getSolVal(best, v) for v in x_vars], instance.lower, instance.upper)
        value = instance.evaluate(net, x)
        violation = instance.violation(net, x)
    bound = float(m.getDualbound())
    gap = abs(value - bound) / max(abs(value), 1e-10) if value is not None and math.isfinite(bound) else math.inf
    return InstanceResult(
        encoder="pyscipopt-ml", bounds="interval (PySCIPOpt-ML propagation)", status=status, x=x, value=value,
        bound=bound, gap=gap, build_seconds=built - start, solve_seconds=solve_seconds, nodes=int(m.getNNodes()),
        variables=int(m.getNVars(transformed=False)),
        binaries=sum(v.vtype() == "BINARY" for v in m.getVars(transformed=False)),
        constraints=int(m.getNConss(transformed=False)), big_m=(), violation=violation,
        timings={"bounds": 0.0, "model": built - start},
    )
