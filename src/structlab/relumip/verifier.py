"""Complete verification of a VNN-LIB property: attack first, then bounds, an LP screen and MILPs.

``verify(net, prop)`` answers "holds" (the unsafe set is empty: proven), "violated" (a counterexample,
checked by a forward pass of onnxruntime on the original ONNX file), "timeout" or "unknown". For each
input box of the property (its disjuncts share the box's bounds):

1. :func:`~structlab.relumip.attack.attack`: random samples and projected gradient steps, briefly on
   every disjunct (a stronger attack follows on those the bounds leave open); a point with negative
   margin is checked and returned at once.
2. Sound pre-activation bounds on the box: back-substitution (:func:`~structlab.relumip.crown.crown_bounds`),
   which alone closes a disjunct whose rows it bounds above their right-hand side, then LP tightening
   (:func:`lp_bounds`) for at most ``LP_SHARE`` of the time left.
3. LP screen: for every row ``a . [x; y] <= b`` of a disjunct, a rigorous lower bound on ``a . [x; y]``
   over the LP relaxation (weak duality from the LP's duals, as in :mod:`bounds`); a row whose bound
   exceeds ``b`` empties its disjunct. The input of the LP optimum of an open disjunct starts one more
   attack (verifiers find many counterexamples there).
4. MILP on what is left, minimising the margin ``t >= A [x; y] - b`` (``t >= -delta``) with the cutoff
   ``t < tau``: one MILP per disjunct ("split", sharing the bounds) or one MILP with an indicator binary
   per disjunct ("indicator"). A disjunct is empty when the solver proves that no solution beats the
   cutoff, or its dual bound exceeds ``tau`` (a margin well above the solver's tolerances); a solution
   with margin < 0 is a candidate counterexample, reported only after the onnxruntime check.

Zero wrong answers is the design rule: "holds" needs every disjunct closed by a rigorous LP bound or a
MILP dual bound above ``tau``; "violated" needs an input inside the box (after rounding to the ONNX input
type) whose onnxruntime outputs satisfy the disjunct's rows exactly.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from structlab.relumip.attack import AttackResult, attack
from structlab.relumip.bigm import encode_layer
from structlab.relumip.bounds import interval_bounds, lp_bounds
from structlab.relumip.crown import crown_bounds, linear_bound
from structlab.relumip.formulation import Formulation, Solution
from structlab.relumip.model import Model
from structlab.relumip.network import ReluNetwork
from structlab.relumip.obbt import RowBounds
from structlab.relumip.solvers import SolverOptions, solve
from structlab.relumip.vnnlib import Disjunct, Property

Result = Literal["holds", "violated", "timeout", "unknown"]
Disjunctions = Literal["split", "indicator"]
DISJUNCTIONS: tuple[str, ...] = ("split", "indicator")
BOUNDS: tuple[str, ...] = ("interval", "crown", "lp")
DELTA = 1e-3  # the MILP stops looking deeper than margin -DELTA: a counterexample with room for float32
QUICK_ATTACK = (0.05, 2.0, 4, 20)  # (share of the time left, at most seconds, starts, steps), all disjuncts
STRONG_ATTACK = (0.1, 10.0, 16, 100)  # ... for the disjuncts that the back-substitution bounds leave open
LP_ATTACK = (0.05, 5.0, 4, 50)  # ... from the LP relaxation's optimum, for those the LP screen leaves open
LP_SHARE = 0.3  # LP bound tightening may take this share of the time left (it stops between LPs)
LP_SCREEN_SHARE = 0.25  # ... and the LP screen of the disjuncts this share of what is left then
TAU = 1e-4  # a MILP dual bound must exceed this (absolute, plus TAU * |b|) to close a disjunct


@dataclass
class Verdict:
    """The answer to one verification query.

    ``result``: "holds" | "violated" | "timeout" | "unknown"; ``counterexample``: the input x (n_in,) for
    "violated" (else None) and ``output`` its outputs from the checking forward pass; ``seconds``: wall
    time. ``stage`` says what decided it ("attack", "crown", "lp", "milp", or "" when undecided); ``details``
    counts disjuncts closed per stage, solver nodes and times.
    """

    result: Result
    counterexample: np.ndarray | None
    seconds: float
    output: np.ndarray | None = None
    stage: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"result", "counterexample", "seconds", ...}`` (the CLI's contract, plus stage and details)."""
        return {
            "result": self.result,
            "counterexample": None if self.counterexample is None else self.counterexample.tolist(),
            "seconds": self.seconds,
            "output": None if self.output is None else self.output.tolist(),
            "stage": self.stage,
            "details": self.details,
        }

    def results_file_text(self) -> str:
        """The VNN-COMP result file: the answer on the first line (2021's words) and, for "violated", the
        counterexample as ``((X_0 v) ... (Y_0 v) ...)``, which the competition's checker reads."""
        lines = [self.result]
        if self.result == "violated" and self.counterexample is not None and self.output is not None:
            pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(self.counterexample)]
            pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(self.output)]
            lines.append("(" + "\n ".join(pairs) + ")")
        return "\n".join(lines) + "\n"


class _Checker:
    """Checks candidate counterexamples: onnxruntime on the ONNX model, or the network's forward pass."""

    def __init__(self, net: ReluNetwork, model: Any | None, input_name: str = "",
                 input_shape: tuple[int, ...] = (), dtype: np.dtype | None = None) -> None:
        self.net = net
        self.session = None
        if model is not None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(model.SerializeToString(), options,
                                                providers=["CPUExecutionProvider"])
            self.input_name, self.input_shape, self.dtype = input_name, input_shape, dtype

    def rounded(self, x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """``x`` as the ONNX input type represents it, kept inside ``[lower, upper]``."""
        if self.session is None or self.dtype == np.float64:
            return np.clip(x, lower, upper)
        xr = np.clip(x, lower, upper).astype(self.dtype)
        xr = np.where(xr.astype(np.float64) > upper, np.nextafter(xr, -np.inf, dtype=self.dtype), xr)
        xr = np.where(xr.astype(np.float64) < lower, np.nextafter(xr, np.inf, dtype=self.dtype), xr)
        return xr.astype(np.float64)

    def outputs(self, x: np.ndarray) -> np.ndarray:
        if self.session is None:
            return self.net.forward(x)
        feed = np.asarray(x, dtype=self.dtype).reshape(self.input_shape)
        return np.asarray(self.session.run(None, {self.input_name: feed})[0], dtype=np.float64).reshape(-1)

    def confirm(self, x: np.ndarray, disjunct: Disjunct) -> tuple[np.ndarray, np.ndarray] | None:
        """``(x, y)`` if the rounded ``x`` is a counterexample by the checking forward pass, else None."""
        xr = self.rounded(x, disjunct.lower, disjunct.upper)
        y = self.outputs(xr)
        return (xr, y) if disjunct.contains(xr, y) else None


def _load(net: ReluNetwork | str | os.PathLike[str] | Any) -> tuple[ReluNetwork, _Checker, str]:
    if isinstance(net, ReluNetwork):
        return net, _Checker(net, None), repr(net)
    import onnx

    from structlab.relumip.onnx_import import read_onnx

    if isinstance(net, (str, os.PathLike)):
        if not os.path.isfile(net):
            raise FileNotFoundError(f"net: {os.fspath(net)} does not exist")
        proto, name = onnx.load(os.fspath(net)), os.path.basename(os.fspath(net))
    elif isinstance(net, onnx.ModelProto):
        proto, name = net, net.graph.name or "model"
    else:
        raise TypeError(f"net: {type(net).__name__}; expected a ReluNetwork, an ONNX path or an onnx.ModelProto")
    parsed = read_onnx(proto)
    relu_net = ReluNetwork(parsed.layers)
    checker = _Checker(relu_net, proto, parsed.input_name, parsed.input_shape, parsed.input_dtype)
    return relu_net, checker, f"{name} (input shape {parsed.input_shape}, output shape {parsed.output_shape})"


def verify(
    net: ReluNetwork | str | os.PathLike[str] | Any,
    prop: Property,
    time_limit: float | None = None,
    *,
    disjunctions: Disjunctions = "split",
    bounds: str = "lp",
    warm_start: bool = True,
    cutoff: bool = True,
    run_attack: bool = True,
    solver: str = "highs",
    threads: int = 1,
    seed: int = 0,
) -> Verdict:
    """Decide whether the unsafe set of ``prop`` is empty for ``net`` (module docstring).

    ``net``: a :class:`ReluNetwork`, or an ONNX file / ``onnx.ModelProto`` (then counterexamples are
    checked by onnxruntime on it); ``prop``: a :class:`~structlab.relumip.vnnlib.Property`;
    ``time_limit``: seconds for the whole query (None: none). ``disjunctions``: "split" (one MILP per
    disjunct) or "indicator" (one MILP); ``bounds``: "interval", "crown" (back-substitution) or "lp"
    (crown, then LP tightening for at most ``LP_SHARE`` of the time left); ``warm_start``: seed each MILP
    with the attack's best point; ``cutoff``: tell the solver that only margins below ``tau`` matter (it
    prunes every node that cannot reach one, and "no such solution" proves the disjunct empty). With the
    cutoff an attack point (margin above ``tau``) cannot serve as an incumbent, so ``warm_start`` matters
    only with ``cutoff=False``; benchmarks/relumip_verify.py measures the variants.
    Raises ``ValueError`` when the network's input or output size differs
    from the property's X/Y count, or for a bad argument.
    """
    t0 = time.perf_counter()
    if not isinstance(prop, Property):
        raise TypeError(f"prop: {type(prop).__name__}; expected a Property (read_vnnlib(path))")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit={time_limit!r}: expected a positive number of seconds or None")
    if disjunctions not in DISJUNCTIONS:
        raise ValueError(f"disjunctions={disjunctions!r}: expected one of {DISJUNCTIONS}")
    if bounds not in BOUNDS:
        raise ValueError(f"bounds={bounds!r}: expected one of {BOUNDS}")
    relu_net, checker, name = _load(net)
    if relu_net.input_dim != prop.n_inputs or relu_net.output_dim != prop.n_outputs:
        raise ValueError(
            f"network {name} has {relu_net.input_dim} inputs and {relu_net.output_dim} outputs, but property "
            f"{prop.source or ''} declares {prop.n_inputs} X_i and {prop.n_outputs} Y_j"
        )
    deadline = math.inf if time_limit is None else t0 + time_limit
    query = _Query(relu_net, checker, deadline, disjunctions, bounds, warm_start, cutoff, run_attack, solver,
                   threads, seed)
    verdict = query.run(prop)
    verdict.seconds = time.perf_counter() - t0
    return verdict


class _Query:
    """One verification query: the network, its checker, the deadline and the options of :func:`verify`."""

    def __init__(self, net: ReluNetwork, checker: _Checker, deadline: float, disjunctions: str, bounds: str,
                 warm_start: bool, cutoff: bool, run_attack: bool, solver: str, threads: int, seed: int) -> None:
        self.net, self.checker, self.deadline = net, checker, deadline
        self.disjunctions, self.bounds, self.warm_start, self.cutoff = disjunctions, bounds, warm_start, cutoff
        self.run_attack, self.solver, self.threads, self.seed = run_attack, solver, threads, seed
        self.details: dict[str, Any] = {"disjuncts": 0, "closed_crown": 0, "closed_lp": 0, "closed_milp": 0, "milps": 0,
                                        "nodes": 0, "attack_seconds": 0.0, "bounds_seconds": 0.0, "lp_seconds": 0.0,
                                        "milp_seconds": 0.0}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def verdict(self, result: Result, stage: str = "", x: np.ndarray | None = None,
                y: np.ndarray | None = None) -> Verdict:
        return Verdict(result, x, 0.0, y, stage, self.details)

    def run(self, prop: Property) -> Verdict:
        self.details["disjuncts"] = len(prop.disjuncts)
        attacks: dict[int, AttackResult] = {}
        # 1. a quick attack on every disjunct first: a counterexample anywhere ends the query
        if self.run_attack:
            found = self.attack(prop.disjuncts, list(range(len(prop.disjuncts))), attacks, QUICK_ATTACK)
            if found is not None:
                return found
        undecided = False
        for lower, upper, ks in prop.boxes():
            if self.left() <= 0:
                return self.verdict("timeout")
            outcome = self.box(lower, upper, [prop.disjuncts[k] for k in ks], [attacks.get(k) for k in ks])
            if isinstance(outcome, Verdict):
                return outcome
            undecided |= outcome
        return self.verdict("unknown" if undecided else "holds", "" if undecided else self.stage())

    def attack(self, ds: Sequence[Disjunct], ks: list[int], attacks: dict[int, AttackResult],
               effort: tuple[float, float, int, int], init: dict[int, np.ndarray] | None = None) -> Verdict | None:
        """Attack disjuncts ``ks`` of ``ds`` with ``effort`` (share of the time left, cap in seconds, starts,
        steps), from ``init[k]`` too where given, keeping each one's best point in ``attacks``; a confirmed
        counterexample is the verdict."""
        share, cap, starts, steps = effort
        t = time.perf_counter()
        per = min(max(self.left(), 0.0) * share, cap) / max(len(ks), 1)
        for k in ks:
            result = attack(self.net, ds[k], starts=starts, steps=steps, seed=self.seed + 7919 * steps + k,
                            deadline=time.perf_counter() + per, init=None if init is None else init.get(k))
            if k not in attacks or result.margin < attacks[k].margin:
                attacks[k] = result
            if attacks[k].margin < 0 and (found := self.checker.confirm(attacks[k].x, ds[k])):
                self.details["attack_seconds"] += time.perf_counter() - t
                return self.verdict("violated", "attack", *found)
        self.details["attack_seconds"] += time.perf_counter() - t
        return None

    def stage(self) -> str:
        if self.details["closed_milp"]:
            return "milp"
        return "lp" if self.details["closed_lp"] else "crown"

    # ---------------------------------------------------------------------------------- one box
    def box(self, lower: np.ndarray, upper: np.ndarray, ds: list[Disjunct],
            attacks: list[AttackResult | None]) -> Verdict | bool:
        """Close every disjunct on this box: returns a Verdict (violated/timeout) or whether any stayed open."""
        t = time.perf_counter()
        bound = interval_bounds if self.bounds == "interval" else crown_bounds
        b = bound(self.net, lower, upper)
        self.details["bounds_seconds"] += time.perf_counter() - t
        open_ = [k for k, d in enumerate(ds) if not self.crown_closes(b, d)]
        self.details["closed_crown"] += len(ds) - len(open_)
        if not open_:
            return False
        if self.run_attack:  # 2. a stronger attack on what the bounds did not close
            known = {i: r for i, r in enumerate(attacks) if r is not None}
            found = self.attack(ds, open_, known, STRONG_ATTACK)
            if found is not None:
                return found
            attacks = [known.get(i) for i in range(len(ds))]
        if self.bounds == "lp":  # LP tightening on top, for at most LP_SHARE of the time left
            t = time.perf_counter()
            b = lp_bounds(self.net, lower, upper, n_jobs=1, start=b,
                          deadline=None if math.isinf(self.left()) else t + LP_SHARE * self.left())
            self.details["bounds_seconds"] += time.perf_counter() - t
        t = time.perf_counter()
        screened = open_
        closed = self.lp_closes(b, [ds[k] for k in screened])
        open_ = [k for k, c in zip(screened, closed, strict=True) if not c]
        self.details["lp_seconds"] += time.perf_counter() - t
        self.details["closed_lp"] += len(closed) - len(open_)
        if not open_:
            return False
        if self.run_attack:  # 3. attack again from the LP relaxation's optima (verifiers find many this way)
            points = {screened[j]: x for j, x in self.lp_points.items()}  # all of them still open
            found = self.attack(ds, list(points), {}, LP_ATTACK, points)
            if found is not None:
                return found
        if self.left() <= 0:
            return self.verdict("timeout")
        # most promising (smallest attack margin) first: a counterexample there ends the query
        open_.sort(key=lambda k: attacks[k].margin if attacks[k] is not None else 0.0)
        groups = [[k] for k in open_] if self.disjunctions == "split" else [open_]
        undecided = False
        for group in groups:
            if self.left() <= 0:
                return self.verdict("timeout")
            outcome = self.milp(b, [ds[k] for k in group], [attacks[k] for k in group])
            if isinstance(outcome, Verdict):
                return outcome
            undecided |= outcome
        return undecided

    def crown_closes(self, b: Any, d: Disjunct) -> bool:
        """Does the back-substitution bound of some output-only row of ``d`` exceed its right-hand side?"""
        n_in = self.net.input_dim
        folded = self.net.folded()
        for i in range(d.b.size):
            if np.any(d.A[i, :n_in]) or not np.any(d.A[i, n_in:]):
                continue  # rows on the inputs are left to the LP screen
            k = len(folded.layers) - 1
            low = linear_bound(folded, b.lower, b.upper, k, d.A[i:i + 1, n_in:], np.zeros(1),
                               b.input_lower, b.input_upper, upper_bound=False)
            if low[0] > d.b[i]:
                return True
        return False

    def lp_closes(self, b: Any, ds: list[Disjunct]) -> list[bool]:
        """For each disjunct: is some row infeasible over the LP relaxation (a rigorous dual bound)?"""

        folded = self.net.folded()
        n_in = self.net.input_dim
        model = Model()
        x = model.add_variables(n_in, b.input_lower, b.input_upper, name="x")
        h = x
        for k, layer in enumerate(folded.hidden):
            h = encode_layer(model, h, layer, b.lower[k], b.upper[k], relax=True, name=f"l{k}").h
        out = folded.layers[-1]
        solver = RowBounds(model, np.concatenate([x, h]), mip=False, time_limit=None)
        self.lp_points: dict[int, np.ndarray] = {}  # the relaxation optimum's input, per open disjunct
        stop = time.perf_counter() + LP_SCREEN_SHARE * max(self.left(), 0.0)
        closed = []
        for d in ds:
            # a . [x; y] with y = W h + c: coefficients on [x; h] and a constant
            rows = np.concatenate([d.A[:, :n_in], d.A[:, n_in:] @ out.weight], axis=1)
            const = d.A[:, n_in:] @ out.bias
            empty = False
            for i in range(rows.shape[0]):
                if time.perf_counter() > stop:  # on deep networks each LP is dear: leave the rest to the MILP
                    break
                # an LP cut short still gives a sound bound: weak duality holds for any multipliers
                solver.highs.setOptionValue("time_limit", max(stop - time.perf_counter(), 0.5))
                lo, _, _ = solver(rows[i:i + 1], upper_too=False)
                if lo[0] + const[i] > d.b[i]:
                    empty = True
                    break
            if not empty:  # where the relaxation is tightest against the row: a good place to attack
                values = np.asarray(solver.highs.getSolution().col_value)
                if values.size == model.num_variables:
                    self.lp_points[len(closed)] = values[x]
            closed.append(empty)
        return closed

    def milp(self, b: Any, ds: list[Disjunct], attacks: list[AttackResult | None]) -> Verdict | bool:
        """Minimise the margin over the disjuncts ``ds`` in one MILP; returns a Verdict or 'still open'."""

        form = Formulation(self.net, b.input_lower, b.input_upper, b)
        zcols = np.concatenate([form.x, form.y])
        t = form.add_variables(1, -DELTA, math.inf, name="t")[0]
        indicator = len(ds) > 1
        s = form.add_variables(len(ds), 0.0, 1.0, integer=True, name="s") if indicator else None
        zlo = np.concatenate([b.input_lower, b.lower[-1]])
        zhi = np.concatenate([b.input_upper, b.upper[-1]])
        for k, d in enumerate(ds):
            for i in range(d.b.size):
                a = d.A[i]
                if indicator:  # a.z - b - t <= M (1 - s_k), M = max of a.z - b + DELTA over the bounds
                    big_m = float(np.maximum(a * zlo, a * zhi).sum() - d.b[i] + DELTA)
                    form.add_constraint(np.concatenate([zcols, [t, s[k]]]), np.concatenate([a, [-1.0, big_m]]),
                                        upper=float(d.b[i]) + big_m)
                else:  # t >= a.z - b
                    form.add_constraint(np.concatenate([zcols, [t]]), np.concatenate([a, [-1.0]]),
                                        upper=float(d.b[i]))
        if indicator:
            form.add_constraint(s, np.ones(len(ds)), lower=1.0)
        form.set_objective([t], [1.0], "min")
        start = None
        best = min((r for r in attacks if r is not None), key=lambda r: r.margin, default=None)
        if self.warm_start and best is not None:
            start = form.point(best.x)
            start[t] = max(best.margin, -DELTA) + 1e-9
            if indicator:
                k_best = min(range(len(ds)), key=lambda k: attacks[k].margin if attacks[k] else math.inf)
                start[s] = 0.0
                start[s[k_best]] = 1.0
        tau = TAU * (1.0 + max(float(np.abs(d.b).max(initial=0.0)) for d in ds))
        sol = self.solve(form, start, tau)
        self.details["milps"] += 1
        self.details["nodes"] += sol.nodes
        self.details["milp_seconds"] += sol.seconds
        if sol.x is not None:
            for d in ds:
                m = float(d.margin(sol.x[None], self.net.forward(sol.x[None]))[0])
                if m < 0 and (found := self.checker.confirm(sol.x, d)):
                    return self.verdict("violated", "milp", *found)
        # with the cutoff the bound is min(dual bound, tau) (see SolverOptions): half of tau keeps a margin
        if sol.bound >= 0.5 * tau:
            self.details["closed_milp"] += len(ds)
            return False
        if sol.status != "optimal":
            return self.verdict("timeout")
        return True  # solved, but the optimum is within the tolerance of the boundary: cannot decide

    def solve(self, form: Any, start: np.ndarray | None, tau: float) -> Any:
        """Solve ``form`` within the time left; ``start`` is a full warm-start vector (or None)."""
        options = SolverOptions(max(self.left(), 1e-3), 1e-6, self.threads, self.seed,
                                cutoff=tau if self.cutoff else None)
        result = solve(form.model, self.solver, options, start)
        x = y = None
        if result.values is not None:
            x = np.clip(result.values[form.x], form.lower, form.upper)
            y = form.net(x)
        return Solution(result.status, x, y, result.objective, result.bound, result.gap, result.seconds,
                        result.nodes, result.solver, result.objective, result.values)
