"""ReLU networks in mixed-integer linear programs (Plate et al., arXiv 2502.03016).

A trained network (:class:`ReluNetwork`, from PyTorch or ONNX) is kept apart from its encodings: sound
pre-activation bounds (:func:`interval_bounds`, :func:`lp_bounds`, :func:`milp_bounds`), the big-M
:class:`Formulation` (clipped ReLU included, stable neurons without binaries), solved by HiGHS or SCIP
(:func:`optimize`), plus the paper's levers and indicators: :func:`rescale`, :func:`stable_fraction`,
:func:`count_linear_regions` and regularised training (:func:`train`).
"""

from __future__ import annotations

from structlab.relumip.bounds import Bounds, interval_bounds, lp_bounds, milp_bounds, stable_fraction
from structlab.relumip.formulation import Formulation, LayerVars, Solution, optimize
from structlab.relumip.model import Model
from structlab.relumip.network import Layer, ReluNetwork
from structlab.relumip.solvers import (
    InfeasibleError,
    SolveError,
    SolverOptions,
    TimeLimitError,
    UnboundedError,
)

__all__ = [
    "Bounds", "Formulation", "InfeasibleError", "Layer", "LayerVars", "Model", "ReluNetwork", "Solution",
    "SolveError", "SolverOptions", "TimeLimitError", "UnboundedError", "interval_bounds", "lp_bounds",
    "milp_bounds", "optimize", "stable_fraction",
]
