"""ReLU networks in mixed-integer linear programs (Plate et al., arXiv 2502.03016).

A trained network (:class:`ReluNetwork`, from PyTorch or ONNX) is kept apart from its encodings: sound
pre-activation bounds (:func:`interval_bounds`, :func:`lp_bounds`, :func:`milp_bounds`), the big-M
:class:`Formulation` (clipped ReLU included, stable neurons without binaries), solved by HiGHS or SCIP
(:func:`optimize`), VNN-COMP's networks and properties (:meth:`ReluNetwork.from_onnx`,
:func:`read_vnnlib`) and a verifier (:func:`verify`), plus the paper's levers and indicators:
:func:`rescale`, :func:`stable_fraction`, :func:`count_linear_regions` and regularised training
(:func:`train`, imported on first use because it needs torch).
"""

from __future__ import annotations

from typing import Any

from structlab.relumip.bigm import LayerVars, encode_layer
from structlab.relumip.bounds import Bounds, interval_bounds, lp_bounds, milp_bounds, stable_fraction
from structlab.relumip.formulation import Formulation, Solution, optimize
from structlab.relumip.model import Model
from structlab.relumip.network import Layer, ReluNetwork
from structlab.relumip.regions import (
    RegionEstimate,
    count_linear_regions,
    estimate_linear_regions,
    linear_regions,
    plot_linear_regions,
)
from structlab.relumip.rescale import rescale
from structlab.relumip.solvers import (
    InfeasibleError,
    SolveError,
    SolverOptions,
    TimeLimitError,
    UnboundedError,
)
from structlab.relumip.verifier import Verdict, verify
from structlab.relumip.vnnlib import Property, VnnlibError, parse_vnnlib, read_vnnlib

_TRAINING = ("TrainConfig", "TrainResult", "train", "indicators", "relu_stability_loss", "build_mlp")

__all__ = [
    "Bounds", "Formulation", "InfeasibleError", "Layer", "LayerVars", "Model", "Property", "RegionEstimate",
    "ReluNetwork", "Solution", "SolveError", "SolverOptions", "TimeLimitError", "UnboundedError", "Verdict",
    "VnnlibError", "count_linear_regions", "encode_layer", "estimate_linear_regions", "interval_bounds",
    "linear_regions", "lp_bounds", "milp_bounds", "optimize", "parse_vnnlib", "plot_linear_regions",
    "read_vnnlib", "rescale", "stable_fraction", "verify", *_TRAINING,
]


def __getattr__(name: str) -> Any:
    # training needs torch; OBBT worker processes import this package and should not pay for it
    if name in _TRAINING:
        from structlab.relumip import training

        return getattr(training, name)
    raise AttributeError(f"module 'structlab.relumip' has no attribute {name!r}")
