"""``structlab relumip``: train a ReLU surrogate, bound it, optimise over it, count its regions, export it.

Networks travel as ONNX files (``Gemm`` + ``Relu``/``Clip``), the format OMLT and gurobi-machinelearning
read too. ``train`` folds the data scaling into the first and last layers and records the problem's input
box in the file's metadata, so ``bounds``, ``solve``, ``regions`` and ``export`` find the box themselves
(``--lower``/``--upper`` override it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from structlab.cli import add_command

PROBLEMS = ("peaks", "reformer", "fashion-mnist", "digits")
_BOX_KEY = "structlab.input_box"


def register(subparsers: Any) -> None:
    """Add the ``relumip`` command group to the ``structlab`` command line."""
    relumip = add_command(
        subparsers, "relumip", "ReLU networks as MILPs: train, bound, solve, count regions, export, study",
        examples="""
            structlab relumip train --problem peaks --hidden 25 25 --l1 1e-4 --out peaks.onnx
            structlab relumip bounds peaks.onnx --method lp
            structlab relumip solve peaks.onnx --objective 1 --sense min --bounds lp --time-limit 60
            structlab relumip regions peaks.onnx --plot regions.png
            structlab relumip export peaks.onnx --objective 1 --out peaks.mps
            structlab relumip verify mnist-net_256x2.onnx prop_0_0.03.vnnlib --timeout 120 --json
            structlab relumip study peaks --scale quick
        """,
    )
    sub = relumip.add_subparsers(dest="relumip_command", required=True, metavar="COMMAND")

    train = add_command(
        sub, "train", "train a ReLU network on a benchmark problem with the paper's levers; write ONNX",
        examples="""
            structlab relumip train --problem peaks --hidden 25 25 25 --out peaks.onnx
            structlab relumip train --problem peaks --hidden 50 50 --rs 1e-2 --clip 1 --out peaks-rs.onnx
            structlab relumip train --problem reformer --hidden 10 10 10 10 --epochs 100 --out reformer.onnx
            structlab relumip train --problem fashion-mnist --hidden 50 50 --epochs 10 --out fmnist.onnx
        """,
    )
    train.add_argument("--problem", choices=PROBLEMS, required=True)
    train.add_argument("--hidden", type=int, nargs="+", default=[25, 25], help="hidden layer widths")
    train.add_argument("--epochs", type=int, help="training epochs (default: the problem's)")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, help="Adam learning rate (default: the problem's)")
    train.add_argument("--l1", type=float, default=0.0, help="L1 penalty on the weights")
    train.add_argument("--rs", type=float, default=0.0, help="weight of the ReLU-stability loss (Xiao et al. 2019)")
    train.add_argument("--rs-epsilon", type=float, default=0.1, help="radius of the RS loss's input ball")
    train.add_argument("--clip", type=float, help="clipped ReLU min(max(0, a), CLIP) instead of ReLU")
    train.add_argument("--dropout", type=float, default=0.0)
    train.add_argument("--n-train", type=int, help="training samples (peaks: drawn; Fashion-MNIST: subset)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    train.set_defaults(func=_train)

    bounds = add_command(
        sub, "bounds", "bounds on every neuron: stable share and largest big-M per layer",
        examples="""
            structlab relumip bounds peaks.onnx
            structlab relumip bounds peaks.onnx --method lp --json
            structlab relumip bounds net.onnx --lower -1 -1 --upper 1 1 --method milp --neuron-time-limit 2
            structlab relumip bounds big.onnx --method lp --executor ray --address 10.0.0.5:6379
        """,
    )
    _network_arguments(bounds)
    bounds.add_argument("--method", choices=("interval", "lp", "milp"), default="interval")
    bounds.add_argument("--neuron-time-limit", type=float, default=1.0, help="seconds per MILP (method milp)")
    bounds.add_argument("--rescale", action="store_true", help="rescale the network first (every big-M <= 1)")
    _executor_arguments(bounds)
    bounds.add_argument("--json", action="store_true", help="print JSON (with every neuron's bounds)")
    bounds.set_defaults(func=_bounds)

    solve = add_command(
        sub, "solve", "optimise over the network (big-M MILP, HiGHS or SCIP) and check the answer",
        examples="""
            structlab relumip solve peaks.onnx --objective 1 --sense min
            structlab relumip solve reformer.onnx --objective 0 0 0 0 0 0 0 0 0 1 0 0 --sense max \\
                --output-constraint 11 -inf 0.34 --bounds lp
            structlab relumip solve fmnist.onnx --center image.npy --eps 0.01 --margin 3 --bounds lp
            structlab relumip solve peaks.onnx --objective 1 --solver scip --time-limit 30 --json
            structlab relumip solve big.onnx --objective 1 --bounds lp --executor ray --address 10.0.0.5:6379
        """,
    )
    _problem_arguments(solve)
    solve.add_argument("--solver", choices=("highs", "scip"), default="highs")
    solve.add_argument("--time-limit", type=float, help="seconds (default: none)")
    solve.add_argument("--gap", type=float, default=1e-6, help="relative optimality gap")
    solve.add_argument("--threads", type=int, default=1)
    solve.add_argument("--seed", type=int, default=0, help="the solver's random seed")
    solve.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=True,
                       help="start the solver from the best feasible point among --start-points, the box "
                            "centre and 256 samples")
    solve.add_argument("--start-points", type=Path, metavar="FILE.npy",
                       help="candidate inputs for the warm start, one per row (e.g. the training data)")
    solve.add_argument("--json", action="store_true")
    solve.set_defaults(func=_solve)

    regions = add_command(
        sub, "regions", "count the network's linear regions on a box (exact for 1-2 inputs, else sampled)",
        examples="""
            structlab relumip regions peaks.onnx
            structlab relumip regions peaks.onnx --plot regions.png
            structlab relumip regions reformer.onnx --samples 200000 --sampled
        """,
    )
    _network_arguments(regions)
    regions.add_argument("--sampled", action="store_true", help="estimate by sampling even for 1-2 inputs")
    regions.add_argument("--samples", type=int, default=100_000)
    regions.add_argument("--max-regions", type=int, default=200_000, help="give up exact counting beyond this")
    regions.add_argument("--plot", type=Path, help="draw the regions (1-2 inputs) into this PNG")
    regions.set_defaults(func=_regions)

    export = add_command(
        sub, "export", "write the MILP (network, bounds, objective, constraints) as an MPS or LP file",
        examples="""
            structlab relumip export peaks.onnx --objective 1 --out peaks.mps
            structlab relumip export peaks.onnx --objective 1 --bounds lp --out peaks-lp.lp
        """,
    )
    _problem_arguments(export)
    export.add_argument("--out", type=Path, required=True, help="file ending in .mps or .lp")
    export.set_defaults(func=_export)

    verify = add_command(
        sub, "verify", "decide a VNN-LIB property of an ONNX network: holds, violated (checked), timeout, unknown",
        description=(
            "Decide a VNN-LIB property (the unsafe set of inputs and outputs) for an ONNX network: an attack "
            "first, then LP bounds and MILPs. 'holds' is proven; 'violated' comes with a counterexample that "
            "onnxruntime confirmed. The last line of stdout is one JSON object with --json. Exit status 0 when "
            "decided, 3 on timeout or unknown."
        ),
        examples="""
            structlab relumip verify mnist-net_256x2.onnx prop_0_0.03.vnnlib --timeout 120
            structlab relumip verify net.onnx prop.vnnlib --timeout 60 --json --results-file out.txt
            structlab relumip verify net.onnx prop.vnnlib --disjunctions indicator --no-warm-start
        """,
    )
    verify.add_argument("network", type=Path, help="ONNX file of a fully-connected ReLU network")
    verify.add_argument("property", type=Path, help="VNN-LIB file (the unsafe set)")
    verify.add_argument("--timeout", type=float, help="seconds for the whole query (default: none)")
    verify.add_argument("--json", action="store_true", help="print the verdict as one JSON object")
    verify.add_argument("--results-file", type=Path,
                        help="also write VNN-COMP's result file: holds/violated/timeout/unknown, then the "
                             "counterexample ((X_0 v) ... (Y_0 v) ...) for violated")
    verify.add_argument("--disjunctions", choices=("split", "indicator"), default="split",
                        help="one MILP per disjunct (split) or one MILP with an indicator binary per disjunct")
    verify.add_argument("--bounds", choices=("interval", "crown", "lp"), default="lp",
                        help="pre-activation bounds: interval arithmetic, back-substitution (crown), or crown "
                             "then LP tightening (lp)")
    verify.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=True,
                        help="seed the MILPs with the attack's best point (useful with --no-cutoff)")
    verify.add_argument("--cutoff", action=argparse.BooleanOptionalAction, default=True,
                        help="let the MILP prune every node that cannot reach a margin below tau")
    verify.add_argument("--attack", action=argparse.BooleanOptionalAction, default=True,
                        help="random sampling and projected gradient before the MILPs")
    verify.add_argument("--solver", choices=("highs", "scip"), default="highs")
    verify.add_argument("--seed", type=int, default=0)
    verify.set_defaults(func=_verify)

    run = add_command(
        sub, "study", "run a relumip study (same as structlab reproduce --only relumip --study NAME)",
        examples="""
            structlab relumip study peaks --scale quick
            structlab relumip study omlt --scale full --results /tmp/results
        """,
    )
    run.add_argument("name", choices=("peaks", "verification", "reformer", "omlt", "vnncomp"))
    run.add_argument("--scale", choices=("quick", "full"), default="quick")
    run.add_argument("--force", action="store_true", help="rerun even if the results are current")
    run.add_argument("--results", type=Path, default=Path("results"))
    run.set_defaults(func=_study)


def _network_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("network", type=Path, help="ONNX file of a feed-forward ReLU network")
    parser.add_argument("--lower", type=float, nargs="+", help="input box lower corner (default: from the file)")
    parser.add_argument("--upper", type=float, nargs="+", help="input box upper corner (default: from the file)")


def _problem_arguments(parser: argparse.ArgumentParser) -> None:
    _network_arguments(parser)
    parser.add_argument("--objective", type=float, nargs="+", help="coefficients c of c . y on the outputs")
    parser.add_argument("--sense", choices=("min", "max"), default="min")
    parser.add_argument("--margin", type=int, metavar="LABEL",
                        help="maximise the misclassification margin max_j (y_j - y_LABEL) instead")
    parser.add_argument("--center", type=Path, help=".npy input: the box is the L-inf ball of radius --eps around it")
    parser.add_argument("--eps", type=float, help="radius of the ball around --center (clipped to the box)")
    parser.add_argument("--output-constraint", nargs=3, action="append", default=[], metavar=("J", "LO", "HI"),
                        help="LO <= y_J <= HI (use -inf/inf for one side); repeatable")
    parser.add_argument("--bounds", choices=("interval", "lp", "milp"), default="interval")
    parser.add_argument("--rescale", action="store_true", help="rescale the network first (every big-M <= 1)")
    _executor_arguments(parser)


def _executor_arguments(parser: argparse.ArgumentParser) -> None:
    from structlab.jobs import EXECUTORS

    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="where LP/MILP bound tightening runs: this machine's processes (default) or Ray "
                             "tasks, for networks whose layer of LPs takes many seconds (needs the 'cluster' "
                             "extra)")
    parser.add_argument("--address", metavar="HOST:PORT",
                        help="with --executor ray: join the Ray cluster whose head listens there (default: "
                             "start a local Ray instance)")


@contextlib.contextmanager
def _executor(args: argparse.Namespace, method: str) -> Iterator[Any]:
    """The RayExecutor of ``--executor ray`` (None for local processes), closed when the command ends.

    Raises ``ValueError`` for ``--executor ray`` with interval bounds (nothing to run as tasks) and for
    ``--address`` without it.
    """
    from structlab.jobs import RayExecutor, make_executor

    if args.executor == "ray" and method == "interval":
        raise ValueError("--executor ray: only LP and MILP bound tightening run as Ray tasks; expected --bounds "
                         "lp or milp (--method for `bounds`)")
    executor = make_executor(args.executor, args.address)
    if not isinstance(executor, RayExecutor):
        yield None
        return
    try:
        yield executor
    finally:
        executor.close()


def _bounds_for(
    net: Any, lower: np.ndarray, upper: np.ndarray, method: str, executor: Any, time_limit: float = 1.0
) -> Any:
    """``method``'s bounds as :class:`~structlab.relumip.Formulation` takes them: its name for local
    processes (the formulation computes them), computed on Ray with an executor."""
    from structlab.relumip import lp_bounds, milp_bounds

    if executor is None:
        return method
    if method == "lp":
        return lp_bounds(net, lower, upper, executor=executor)
    return milp_bounds(net, lower, upper, time_limit=time_limit, executor=executor)


# --------------------------------------------------------------------------------------- files
def write_onnx(net: Any, path: Path, box: tuple[np.ndarray, np.ndarray] | None = None, **metadata: str) -> Path:
    """Write ``net`` (scaling folded in) as an ONNX graph of ``Gemm`` and ``Relu``/``Clip`` nodes.

    ``box``: the input box recorded in the file's metadata. Raises ``ValueError`` for a clipped ReLU
    layer whose clip values differ between neurons (ONNX ``Clip`` takes one value).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from structlab.atomic import atomic_write_bytes

    folded = net.folded()
    nodes, inits = [], []
    current = "x"
    for i, layer in enumerate(folded.layers):
        inits += [numpy_helper.from_array(layer.weight.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(layer.bias.astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"b{i}"], [f"a{i}"], transB=1))
        current = f"a{i}"
        if layer.activation == "relu":
            nodes.append(helper.make_node("Relu", [current], [f"h{i}"]))
            current = f"h{i}"
        elif layer.activation == "clipped_relu":
            if np.ptp(layer.clip) > 0:
                raise ValueError(f"net: layer {i} has different clip values per neuron; ONNX Clip takes one")
            inits += [numpy_helper.from_array(np.array(0.0, np.float32), f"lo{i}"),
                      numpy_helper.from_array(np.array(layer.clip[0], np.float32), f"hi{i}")]
            nodes.append(helper.make_node("Clip", [current, f"lo{i}", f"hi{i}"], [f"h{i}"]))
            current = f"h{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(
        nodes, "relu_network",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", net.input_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", net.output_dim])], inits,
    )
    model = helper.make_model(graph, producer_name="structlab", opset_imports=[helper.make_opsetid("", 13)])
    if box is not None:
        metadata[_BOX_KEY] = json.dumps({"lower": np.asarray(box[0]).tolist(), "upper": np.asarray(box[1]).tolist()})
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())
    return path


def read_network(path: Path) -> tuple[Any, dict[str, str]]:
    """The network in an ONNX file and the file's metadata; a missing file raises ``FileNotFoundError``."""
    import onnx

    from structlab.relumip.network import ReluNetwork

    if not path.is_file():
        raise FileNotFoundError(f"network: {path} does not exist")
    model = onnx.load(str(path))
    return ReluNetwork.from_onnx(model), {p.key: p.value for p in model.metadata_props}


def _box(args: argparse.Namespace, net: Any, meta: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The input box from --lower/--upper, else --center/--eps, else the file's metadata."""
    stored = json.loads(meta[_BOX_KEY]) if _BOX_KEY in meta else None
    lower = np.array(args.lower if args.lower else stored["lower"] if stored else [], dtype=float)
    upper = np.array(args.upper if args.upper else stored["upper"] if stored else [], dtype=float)
    center = getattr(args, "center", None)
    if center is not None:
        if args.eps is None:
            raise ValueError("--center needs --eps (the radius of the L-inf ball)")
        x0 = np.load(center, allow_pickle=False).astype(float).reshape(-1)
        lo, hi = (lower, upper) if lower.size else (np.full(x0.size, -math.inf), np.full(x0.size, math.inf))
        lower, upper = np.clip(x0 - args.eps, lo, hi), np.clip(x0 + args.eps, lo, hi)
    if not lower.size or not upper.size:
        raise ValueError(f"{args.network}: no input box in the file; give --lower and --upper "
                         f"({net.input_dim} values each)")
    if lower.size == 1 and net.input_dim > 1:
        lower = np.full(net.input_dim, lower[0])
    if upper.size == 1 and net.input_dim > 1:
        upper = np.full(net.input_dim, upper[0])
    return lower, upper


def _instance(args: argparse.Namespace, net: Any, lower: np.ndarray, upper: np.ndarray) -> Any:
    from structlab.relumip.problems import Instance, OutputConstraint

    constraints = []
    for given in args.output_constraint:
        try:
            j, lo, hi = int(given[0]), float(given[1]), float(given[2])
        except ValueError:
            raise ValueError(f"--output-constraint {' '.join(given)}: expected an output index and two numbers "
                             "(-inf/inf for an open side)") from None
        if not 0 <= j < net.output_dim:
            raise ValueError(f"--output-constraint {j}: expected an output index in [0, {net.output_dim})")
        coeffs = np.zeros(net.output_dim)
        coeffs[j] = 1.0
        constraints.append(OutputConstraint(coeffs, lo, hi))
    if args.margin is not None:
        if args.objective:
            raise ValueError("--margin and --objective: give one of the two")
        if not 0 <= args.margin < net.output_dim:
            raise ValueError(f"--margin {args.margin}: expected a class in [0, {net.output_dim})")
        return Instance("cli", lower, upper, "max", margin_label=args.margin, constraints=tuple(constraints))
    if not args.objective:
        raise ValueError(f"--objective: missing; give {net.output_dim} output coefficients (or --margin LABEL)")
    c = np.array(args.objective, dtype=float)
    if c.size == 1 and net.output_dim > 1:
        raise ValueError(f"--objective {args.objective}: expected {net.output_dim} coefficients, one per output")
    if c.size != net.output_dim:
        raise ValueError(f"--objective: {c.size} values; expected {net.output_dim}, one per output")
    return Instance("cli", lower, upper, args.sense, objective=c, constraints=tuple(constraints))


def _prepared(args: argparse.Namespace, executor: Any = None) -> tuple[Any, np.ndarray, np.ndarray, dict[str, str]]:
    from structlab.relumip import interval_bounds, lp_bounds, rescale

    net, meta = read_network(args.network)
    lower, upper = _box(args, net, meta)
    if getattr(args, "rescale", False):
        if args.bounds == "lp":
            first = lp_bounds(net, lower, upper, executor=executor)
        else:
            first = interval_bounds(net, lower, upper)
        net = rescale(net, first)
    return net, lower, upper, meta


# --------------------------------------------------------------------------------------- commands
def _train(args: argparse.Namespace) -> int:
    import torch

    from structlab.relumip.problems import peaks, reformer, verification
    from structlab.relumip.training import TrainConfig, train

    torch.set_num_threads(1)
    if args.out.suffix != ".onnx":
        raise ValueError(f"--out {args.out}: expected a file name ending in .onnx")
    flags = {"l1": args.l1, "rs": args.rs, "rs_epsilon": args.rs_epsilon, "clip": args.clip, "dropout": args.dropout}
    if args.problem in ("fashion-mnist", "digits"):
        ds = verification.dataset(args.problem, n_train=args.n_train, seed=args.seed)
        config = TrainConfig(hidden=tuple(args.hidden), task="classification", epochs=args.epochs or 10,
                             batch_size=args.batch_size, lr=args.lr or 1e-3, seed=args.seed, **flags)
        print(f"training {args.problem} classifier {config.hidden} on {len(ds.x_train)} images ...", file=sys.stderr)
        net = verification.train_classifier(ds, config)
    else:
        if args.problem == "peaks":
            ds = peaks.dataset(n_train=args.n_train or 2048, seed=args.seed)
            epochs, lr = args.epochs or 150, args.lr or 3e-3
        else:
            ds = reformer.dataset(seed=args.seed)
            epochs, lr = args.epochs or reformer.EPOCHS, args.lr or 1e-3
        config = TrainConfig(hidden=tuple(args.hidden), epochs=epochs, batch_size=args.batch_size, lr=lr,
                             seed=args.seed, indicators=False, **flags)
        print(f"training {args.problem} surrogate {config.hidden} for {epochs} epochs ...", file=sys.stderr)
        net = train(ds.x_train, ds.y_train, config).net
    config_record = json.dumps(flags | {"hidden": args.hidden, "epochs": config.epochs, "seed": args.seed})
    write_onnx(net, args.out, (ds.lower, ds.upper),
               **{"structlab.problem": args.problem, "structlab.config": config_record})
    print(f"{args.out}: {net!r}, test error {ds.test_error(net):.4g} "
          f"({'error rate' if ds.task == 'classification' else 'normalised RMSE'})")
    return 0


def _bounds(args: argparse.Namespace) -> int:
    from structlab.relumip import Formulation, interval_bounds, lp_bounds, milp_bounds, stable_fraction
    from structlab.relumip.bigm import NO_VAR

    args.bounds = "lp" if args.method == "milp" else args.method
    with _executor(args, args.method) as executor:
        net, lower, upper, _ = _prepared(args, executor)
        if args.method == "interval":
            b = interval_bounds(net, lower, upper)
        elif args.method == "lp":
            b = lp_bounds(net, lower, upper, executor=executor)
        else:
            b = milp_bounds(net, lower, upper, time_limit=args.neuron_time_limit, executor=executor)
    form = Formulation(net, lower, upper, b)
    layers = []
    for i, (vars_, lo, hi) in enumerate(zip(form.layers, b.lower, b.upper, strict=False)):
        stable = (vars_.z == NO_VAR) & (vars_.z_clip == NO_VAR)  # a stable neuron needs no binary
        layers.append({"layer": i + 1, "neurons": int(stable.size), "stable_share": float(stable.mean()),
                       "largest_big_m": float(vars_.big_m.max(initial=0.0)), "lower": lo.tolist(),
                       "upper": hi.tolist()})
    out = {"network": repr(net), "method": b.method, "seconds": b.seconds, "problems": b.problems,
           "processes": b.processes,
           "stable_share": stable_fraction(net, b), "binaries": form.num_binaries,
           "output_lower": b.lower[-1].tolist(), "output_upper": b.upper[-1].tolist(), "layers": layers}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['network']}: {b.method} bounds in {b.seconds:.2f} s ({b.problems} LPs/MILPs); "
          f"stable share {out['stable_share']:.3f}; {out['binaries']} binaries")
    print(f"{'layer':>5} {'neurons':>8} {'stable':>7} {'largest big-M':>14}")
    for row in layers:
        print(f"{row['layer']:>5} {row['neurons']:>8} {row['stable_share']:>7.3f} {row['largest_big_m']:>14.4g}")
    print("outputs: " + ", ".join(f"[{lo:.4g}, {hi:.4g}]" for lo, hi in zip(b.lower[-1], b.upper[-1], strict=True)))
    return 0


def _solve(args: argparse.Namespace) -> int:
    from structlab.relumip import Formulation
    from structlab.relumip.problems import encode

    with _executor(args, args.bounds) as executor:
        net, lower, upper, _ = _prepared(args, executor)
        instance = _instance(args, net, lower, upper)
        form = Formulation(net, lower, upper, _bounds_for(net, lower, upper, args.bounds, executor))
    encode(form, instance)
    start = None
    if args.warm_start:
        from structlab.relumip.problems import feasible_start

        candidates = None if args.start_points is None else np.load(args.start_points, allow_pickle=False)
        if candidates is not None and (candidates.ndim != 2 or candidates.shape[1] != net.input_dim):
            raise ValueError(f"--start-points {args.start_points}: shape {candidates.shape}; expected "
                             f"(rows, {net.input_dim})")
        start = feasible_start(net, instance, candidates, seed=args.seed)
    sol = form.solve(solver=args.solver, time_limit=args.time_limit, gap=args.gap, threads=args.threads,
                     seed=args.seed, warm_start=start)
    value = None if sol.x is None else instance.evaluate(net, sol.x)
    out = {"status": sol.status, "objective": value, "bound": sol.bound, "gap": sol.gap, "seconds": sol.seconds,
           "bounds_seconds": form.bounds.seconds, "nodes": sol.nodes, "solver": sol.solver,
           "binaries": form.num_binaries, "warm_start": start is not None,
           "x": None if sol.x is None else sol.x.tolist(),
           "y": None if sol.y is None else sol.y.tolist(),
           "violation": None if sol.x is None else instance.violation(net, sol.x)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{sol.status}: objective {value} (forward pass at x), bound {sol.bound:.6g}, gap {sol.gap:.2g}")
        print(f"{sol.solver}: {sol.seconds:.2f} s, {sol.nodes} nodes, {form.num_binaries} binaries; "
              f"{form.bounds.method} bounds in {form.bounds.seconds:.2f} s")
        if sol.x is not None and net.input_dim <= 20:
            print(f"x = {np.array2string(sol.x, precision=6)}")
            print(f"y = {np.array2string(sol.y, precision=6)}")
    return 0 if sol.status == "optimal" else 3


def _regions(args: argparse.Namespace) -> int:
    from structlab.relumip import count_linear_regions, estimate_linear_regions, plot_linear_regions

    net, meta = read_network(args.network)
    lower, upper = _box(args, net, meta)
    if net.input_dim <= 2 and not args.sampled:
        print(f"{count_linear_regions(net, lower, upper, max_regions=args.max_regions)} linear regions (exact)")
    else:
        est = estimate_linear_regions(net, lower, upper, n_samples=args.samples)
        print(f"about {est.estimate:.0f} linear regions ({est.confidence:.0%} interval {est.low:.0f}-{est.high:.0f}; "
              f"{est.observed} seen in {est.n_samples} samples)")
    if args.plot is not None:
        plot_linear_regions(net, lower, upper, path=args.plot)
        print(f"figure: {args.plot}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from structlab.relumip import Formulation
    from structlab.relumip.problems import encode

    with _executor(args, args.bounds) as executor:
        net, lower, upper, _ = _prepared(args, executor)
        form = Formulation(net, lower, upper, _bounds_for(net, lower, upper, args.bounds, executor))
    encode(form, _instance(args, net, lower, upper))
    path = form.model.write(args.out)
    stats = form.model.stats()
    print(f"{path}: {stats['variables']} variables ({stats['integers']} binary), {stats['rows']} rows, "
          f"{stats['nonzeros']} nonzeros; coefficients in [{stats['coefficient_min']:.3g}, "
          f"{stats['coefficient_max']:.3g}]")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from structlab.atomic import atomic_write_text
    from structlab.relumip.verifier import verify
    from structlab.relumip.vnnlib import read_vnnlib

    if args.timeout is not None and not args.timeout > 0:
        raise ValueError(f"--timeout {args.timeout}: expected a positive number of seconds")
    if not args.network.is_file():
        raise FileNotFoundError(f"network: {args.network} does not exist")
    verdict = verify(args.network, read_vnnlib(args.property), args.timeout, disjunctions=args.disjunctions,
                     bounds=args.bounds, warm_start=args.warm_start, cutoff=args.cutoff, run_attack=args.attack,
                     solver=args.solver,
                     seed=args.seed)
    if args.results_file is not None:
        atomic_write_text(args.results_file, verdict.results_file_text())
    if args.json:
        print(json.dumps(verdict.to_json()))
    else:
        how = f" ({verdict.stage})" if verdict.stage else ""
        print(f"{verdict.result}{how} in {verdict.seconds:.2f} s")
        if verdict.counterexample is not None:
            print(f"counterexample checked by onnxruntime; outputs {np.array2string(verdict.output, precision=5)}")
    return 0 if verdict.result in ("holds", "violated") else 3


def _study(args: argparse.Namespace) -> int:
    from structlab import report, reproduce

    outcomes = reproduce.run(args.scale, ["relumip"], [args.name], args.force, args.results)
    report.write_report(args.results)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"FAILED relumip/{o.study}: {o.error}", file=sys.stderr)
    print(f"results: {args.results / 'relumip' / (args.name + '.json')}")
    return 1 if failed else 0
