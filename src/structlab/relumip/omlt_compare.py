"""The head-to-head against OMLT: the same network and instance encoded by OMLT and solved by HiGHS.

OMLT (Ceccon et al. 2022) is the reference Pyomo toolkit: a :class:`omlt.neuralnet.NetworkDefinition`
holds the network (weights, input bounds, an ``OffsetScaling``), :class:`omlt.neuralnet.ReluBigMFormulation`
encodes every ReLU with a binary and big-M values from Pyomo's interval arithmetic (FBBT on the affine
expressions), and Pyomo's APPSI interface hands the model to HiGHS. structlab's encoding differs in
its bounds (LP-based tightening), in giving stable neurons no binary and in building the model without
Pyomo. Both sides get the same HiGHS options (time limit, gap, tolerances, one thread, seed).

To tell the bounds from the encoding, :func:`solve_with_omlt` also takes structlab's bounds
(:func:`impose_bounds` writes them into OMLT's model in place of its own): OMLT with its bounds against
OMLT with ours is what the tightening is worth; OMLT with ours against structlab is the encoding and the
modelling layer. Its timings keep Pyomo's model building (``model``), APPSI's transfer to HiGHS
(``transfer``) and HiGHS's run apart.

OMLT has no clipped ReLU; :func:`solve_with_omlt` raises ``ValueError`` for such networks.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from structlab.errors import StructlabError
from structlab.relumip.bounds import Bounds
from structlab.relumip.network import ReluNetwork
from structlab.relumip.problems import Instance, InstanceResult
from structlab.relumip.solvers import SolverOptions


def _omlt() -> Any:
    try:
        import omlt
        import pyomo.environ  # noqa: F401
    except ImportError as err:
        raise StructlabError("OMLT and Pyomo are not installed: pip install 'structlab[mip]'") from err
    return omlt


def network_definition(net: ReluNetwork, lower: np.ndarray, upper: np.ndarray) -> Any:
    """An OMLT ``NetworkDefinition`` of ``net`` on the input box ``[lower, upper]`` (user's units).

    The network's input/output scaling becomes an OMLT ``OffsetScaling`` with the box in scaled units,
    as OMLT's documentation does it. Raises ``ValueError`` for a clipped-ReLU network.
    """
    _omlt()
    from omlt import OffsetScaling
    from omlt.neuralnet import NetworkDefinition
    from omlt.neuralnet.layer import DenseLayer, InputLayer

    if any(layer.activation == "clipped_relu" for layer in net.hidden):
        raise ValueError(f"net: {net!r} has clipped ReLUs; OMLT's big-M formulation supports only ReLU")
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    scaled_lo = (lower - net.input_offset) / net.input_scale
    scaled_hi = (upper - net.input_offset) / net.input_scale
    scaler = None
    if not net.is_folded:
        scaler = OffsetScaling(
            offset_inputs=dict(enumerate(net.input_offset.tolist())),
            factor_inputs=dict(enumerate(net.input_scale.tolist())),
            offset_outputs=dict(enumerate(net.output_offset.tolist())),
            factor_outputs=dict(enumerate(net.output_scale.tolist())),
        )
    box = {i: (float(a), float(b)) for i, (a, b) in enumerate(zip(scaled_lo, scaled_hi, strict=True))}
    definition = NetworkDefinition(scaling_object=scaler, scaled_input_bounds=box)
    previous = InputLayer([net.input_dim])
    definition.add_layer(previous)
    for layer in net.layers:
        dense = DenseLayer(
            [layer.n_in], [layer.n_out], activation="relu" if layer.activation == "relu" else "linear",
            weights=layer.weight.T.copy(), biases=layer.bias.copy(),
        )
        definition.add_layer(dense)
        definition.add_edge(previous, dense)
        previous = dense
    return definition


def build_model(net: ReluNetwork, instance: Instance, bounds: Bounds | None = None) -> Any:
    """A Pyomo ``ConcreteModel`` with OMLT's ``ReluBigMFormulation`` of ``net`` and ``instance``'s problem.

    ``model.nn`` is the ``OmltBlock``; its ``inputs``/``outputs`` are in the user's units. ``bounds``:
    structlab's bounds on the instance's box to use in place of OMLT's own (:func:`impose_bounds`). The
    margin objective uses the same selector encoding as structlab's (:func:`structlab.relumip.problems.encode`),
    with big-M values from the model's output bounds.
    """
    import pyomo.environ as pyo
    from omlt import OmltBlock
    from omlt.neuralnet import ReluBigMFormulation

    m = pyo.ConcreteModel()
    m.nn = OmltBlock()
    definition = network_definition(net, instance.lower, instance.upper)
    # OMLT initialises its scaled inputs at 0, outside a box that excludes 0: Pyomo warns once per input
    pyomo_log = logging.getLogger("pyomo.core")
    level = pyomo_log.level
    pyomo_log.setLevel(logging.ERROR)
    try:
        m.nn.build_formulation(ReluBigMFormulation(definition))
    finally:
        pyomo_log.setLevel(level)
    if bounds is not None:
        impose_bounds(m, net, bounds)
    y = m.nn.outputs
    for k, con in enumerate(instance.constraints):
        expr = sum(float(c) * y[j] for j, c in enumerate(con.coeffs) if c != 0)
        lo = None if math.isinf(con.lower) else float(con.lower)
        hi = None if math.isinf(con.upper) else float(con.upper)
        setattr(m, f"output_constraint_{k}", pyo.Constraint(expr=pyo.inequality(lo, expr, hi)))
    sense = pyo.maximize if instance.sense == "max" else pyo.minimize
    if instance.margin_label is None:
        m.obj = pyo.Objective(expr=sum(float(c) * y[j] for j, c in enumerate(instance.objective) if c != 0),
                              sense=sense)
        return m
    label = instance.margin_label
    lo, hi = output_bounds(m, net)
    others = [j for j in range(net.output_dim) if j != label]
    d_lo, d_hi = lo - hi[label], hi - lo[label]
    top = float(d_hi[others].max())
    m.margin = pyo.Var(bounds=(float(d_lo[others].max()), top))
    m.select = pyo.Var(others, within=pyo.Binary)
    m.select_one = pyo.Constraint(expr=sum(m.select[j] for j in others) == 1)
    m.margin_cut = pyo.Constraint(
        others, rule=lambda b, j: b.margin <= y[j] - y[label] + (top - float(d_lo[j])) * (1 - b.select[j])
    )
    m.obj = pyo.Objective(expr=m.margin, sense=pyo.maximize)
    return m


def impose_bounds(model: Any, net: ReluNetwork, bounds: Bounds) -> None:
    """Put ``bounds`` (structlab's, on the same input box) into OMLT's model in place of its own.

    Every dense layer's pre-activation bounds (``zhat``), the big-M parameters of its ReLUs and the
    bounds of its outputs ``z`` (``max(0, L)``, ``max(0, U)``) are set as OMLT sets them from its own
    bounds; the encoding itself (a binary for every ReLU) is left as OMLT builds it. Hidden bounds are in
    the network's units as OMLT's are; the output bounds (user's units) are scaled back (scales are positive).
    """
    if len(bounds.lower) != len(net.layers):
        raise ValueError(f"bounds: {len(bounds.lower)} layers; expected {len(net.layers)} for {net!r}")
    blocks = [model.nn.layer[i] for i in model.nn.layers if hasattr(model.nn.layer[i], "zhat")]
    for k, (block, lo, hi) in enumerate(zip(blocks, bounds.lower, bounds.upper, strict=True)):
        if k == len(blocks) - 1:
            lo, hi = (lo - net.output_offset) / net.output_scale, (hi - net.output_offset) / net.output_scale
        relu = hasattr(block, "_big_m_lb_relu")
        for index in block.zhat:
            j = index[-1] if isinstance(index, tuple) else index
            a, b = float(lo[j]), float(hi[j])
            block.zhat[index].setlb(a)
            block.zhat[index].setub(b)
            if relu:
                block._big_m_lb_relu[index] = a
                block._big_m_ub_relu[index] = b
                block.z[index].setlb(max(0.0, a))
                block.z[index].setub(max(0.0, b))
            else:
                block.z[index].setlb(a)
                block.z[index].setub(b)


def output_bounds(model: Any, net: ReluNetwork) -> tuple[np.ndarray, np.ndarray]:
    """OMLT's interval bounds on the network's outputs (user's units), from its last layer."""
    last = list(model.nn.layers)[-1]
    zhat = model.nn.layer[last].zhat
    lo = np.array([zhat[j].lb for j in sorted(zhat)], dtype=np.float64)
    hi = np.array([zhat[j].ub for j in sorted(zhat)], dtype=np.float64)
    return net.output_offset + net.output_scale * lo, net.output_offset + net.output_scale * hi


def big_m(model: Any) -> tuple[float, ...]:
    """The largest big-M coefficient ``max(-L, U)`` of each ReLU layer of an OMLT model."""
    out = []
    for layer_id in model.nn.layers:
        block = model.nn.layer[layer_id]
        if not hasattr(block, "_big_m_lb_relu"):
            continue
        lo = np.array([block._big_m_lb_relu[j].value for j in block._big_m_lb_relu], dtype=np.float64)
        hi = np.array([block._big_m_ub_relu[j].value for j in block._big_m_ub_relu], dtype=np.float64)
        out.append(float(np.maximum(-lo, hi).max(initial=0.0)))
    return tuple(out)


def solve_with_omlt(
    net: ReluNetwork,
    instance: Instance,
    time_limit: float | None = None,
    seed: int = 0,
    threads: int = 1,
    options: SolverOptions | None = None,
    bounds: Bounds | None = None,
) -> InstanceResult:
    """Encode ``instance`` with OMLT's big-M formulation and solve it with HiGHS through Pyomo APPSI.

    HiGHS gets structlab's defaults (``SolverOptions``: gap, feasibility tolerances) plus ``time_limit``,
    ``seed`` and ``threads``. ``bounds``: structlab's bounds to use instead of OMLT's (their computing time
    counts as build time). ``solve_seconds`` is HiGHS's own run time; ``build_seconds`` covers the bounds,
    OMLT's and Pyomo's model building and APPSI's transfer to HiGHS (``timings`` has each).
    """
    import pyomo.environ as pyo
    from pyomo.contrib import appsi
    from pyomo.util.model_size import build_model_size_report

    options = options or SolverOptions(time_limit=time_limit, seed=seed, threads=threads)
    start = time.perf_counter()
    model = build_model(net, instance, bounds)
    built = time.perf_counter()
    solver = appsi.solvers.Highs()
    if not solver.available():
        raise StructlabError("Pyomo's APPSI cannot find HiGHS (highspy)")
    solver.config.load_solution = False
    solver.config.time_limit = options.time_limit
    solver.config.mip_gap = options.gap
    solver.highs_options = {
        "random_seed": int(options.seed), "threads": int(options.threads or 1),
        "mip_feasibility_tolerance": options.feasibility_tol,
        "primal_feasibility_tolerance": options.feasibility_tol,
    }
    results = solver.solve(model)
    solved = time.perf_counter()
    highs = solver._solver_model  # APPSI's highspy.Highs: the run's own time and node count
    solve_seconds = float(highs.getRunTime())
    info = highs.getInfo()
    condition = results.termination_condition
    status = {
        appsi.base.TerminationCondition.optimal: "optimal",
        appsi.base.TerminationCondition.maxTimeLimit: "time_limit",
    }.get(condition, str(condition).split(".")[-1])
    x = value = None
    violation = 0.0
    if results.best_feasible_objective is not None:
        results.solution_loader.load_vars()
        x = np.clip([pyo.value(model.nn.inputs[i]) for i in range(net.input_dim)], instance.lower, instance.upper)
        value = instance.evaluate(net, x)
        violation = instance.violation(net, x)
    bound = results.best_objective_bound
    bound = float(bound) if bound is not None else math.nan
    gap = abs(value - bound) / max(abs(value), 1e-10) if value is not None and math.isfinite(bound) else math.inf
    size = build_model_size_report(model).activated
    timings = {"bounds": bounds.seconds if bounds is not None else 0.0, "model": built - start,
               "transfer": max(solved - built - solve_seconds, 0.0)}
    return InstanceResult(
        encoder="omlt", bounds="interval (OMLT/FBBT)" if bounds is None else f"{bounds.method} (structlab)",
        status=status, x=x, value=value, bound=bound, gap=gap, build_seconds=sum(timings.values()),
        solve_seconds=solve_seconds, nodes=max(int(info.mip_node_count), 0), variables=int(size.variables),
        binaries=int(size.binary_variables), constraints=int(size.constraints), big_m=big_m(model),
        violation=violation, timings=timings,
    )
