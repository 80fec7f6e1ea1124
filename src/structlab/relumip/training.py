"""Training ReLU networks with the paper's levers, recording the MILP indicators afterwards (Sec. 3.3).

One function, :func:`train`, with each lever a flag of :class:`TrainConfig`:

- ``l1``: L1 penalty ``l1 * sum |W|`` on all weights (sparser weights, smaller bounds);
- ``rs``: the ReLU-stability loss of Xiao et al. (2019), ``rs * sum_j -tanh(1 + l_j u_j)`` averaged over
  the batch, where ``[l_j, u_j]`` bound neuron j's pre-activation over the L-inf ball of radius
  ``rs_epsilon`` (in standardised input units) around each training input by interval arithmetic; it
  pushes each neuron to one side of its kink (for a clipped ReLU, of both kinks);
- ``clip``: clipped ReLU ``min(max(0, a), clip)`` instead of ReLU;
- ``dropout``: dropout after each hidden activation.

Inputs (and regression targets) are standardised; the scaling travels with the returned
:class:`ReluNetwork`, so ``result.net(x)`` takes and returns the data's own units.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from structlab.relumip.bounds import interval_bounds, lp_bounds, stable_fraction
from structlab.relumip.formulation import Formulation
from structlab.relumip.network import ReluNetwork
from structlab.relumip.regions import count_linear_regions, estimate_linear_regions

Task = Literal["regression", "classification"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train; every lever of the paper is one field (module docstring)."""

    hidden: tuple[int, ...] = (25, 25)
    task: Task = "regression"
    epochs: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    l1: float = 0.0
    rs: float = 0.0
    rs_epsilon: float = 0.1
    clip: float | None = None
    dropout: float = 0.0
    seed: int = 0
    indicators: bool = True  # record stable fractions, big-M and linear regions after training
    lp_indicators: bool = True  # also with LP-tightened bounds (slower for wide inputs)
    max_regions: int = 50_000  # exact region count up to this many (2-D inputs), else a sampled estimate

    def __post_init__(self) -> None:
        if not self.hidden or any(not isinstance(w, int) or w < 1 for w in self.hidden):
            raise ValueError(f"hidden={self.hidden!r}: expected a non-empty tuple of positive widths")
        if self.task not in ("regression", "classification"):
            raise ValueError(f"task={self.task!r}: expected 'regression' or 'classification'")
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive int")
        for name in ("lr", "rs_epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive number")
        for name in ("weight_decay", "l1", "rs"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a non-negative number")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip={self.clip!r}: expected a positive clip value or None")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout!r}: expected a probability in [0, 1)")


@dataclass
class TrainResult:
    """A trained network and what was measured on it.

    ``net``: the :class:`ReluNetwork` (with scaling); ``module``: the torch model (standardised units);
    ``history``: training loss per epoch; ``train_error``/``test_error``: mean squared error in the
    target's units (regression) or error rate (classification); ``indicators``: stable fractions,
    largest big-M per layer and linear regions on the box (see :func:`indicators`).
    """

    net: ReluNetwork
    module: nn.Sequential
    config: TrainConfig
    history: list[float]
    train_error: float
    test_error: float | None
    seconds: float
    indicators: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record: configuration, errors, time and indicators."""
        return {"config": asdict(self.config), "train_error": self.train_error, "test_error": self.test_error,
                "seconds": self.seconds, "final_loss": self.history[-1] if self.history else None,
                **self.indicators}


def build_mlp(n_in: int, n_out: int, config: TrainConfig) -> nn.Sequential:
    """The torch MLP ``n_in -> hidden... -> n_out`` of ``config`` (activation, dropout)."""
    layers: list[nn.Module] = []
    width = n_in
    for h in config.hidden:
        layers.append(nn.Linear(width, h))
        layers.append(nn.ReLU() if config.clip is None else nn.Hardtanh(0.0, config.clip))
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def relu_stability_loss(module: nn.Sequential, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Xiao et al. (2019) RS loss: ``sum_j -tanh(1 + l_j u_j)`` over hidden neurons, mean over the batch.

    ``[l, u]`` come from interval arithmetic on the ball ``||x' - x||_inf <= epsilon``; a clipped ReLU
    adds the same term for its upper kink, ``-tanh(1 + (l - c)(u - c))``.
    """
    lo, hi = x - epsilon, x + epsilon
    loss = x.new_zeros(())
    linears = [m for m in module if isinstance(m, nn.Linear)]
    acts = [m for m in module if isinstance(m, (nn.ReLU, nn.Hardtanh))]
    for linear, act in zip(linears[:-1], acts, strict=True):
        centre, radius = (hi + lo) / 2, (hi - lo) / 2
        mid = centre @ linear.weight.T + linear.bias
        rad = radius @ linear.weight.abs().T
        l, u = mid - rad, mid + rad
        loss = loss - torch.tanh(1 + l * u).sum(dim=1).mean()
        if isinstance(act, nn.Hardtanh):
            c = act.max_val
            loss = loss - torch.tanh(1 + (l - c) * (u - c)).sum(dim=1).mean()
        lo, hi = act(l), act(u)
    return loss


def train(
    X: np.ndarray,
    y: np.ndarray,
    config: TrainConfig | None = None,
    X_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    **flags: Any,
) -> TrainResult:
    """Train an MLP on ``X`` (n, n_in) and ``y`` ((n,) or (n, n_out); class ids for classification).

    ``config`` with ``flags`` overriding its fields (e.g. ``train(X, y, l1=1e-4, clip=1.0)``). Indicators
    are measured on the box ``[lower, upper]`` (default: the range of ``X``). Raises ``ValueError`` for
    inconsistent shapes and ``TypeError`` for an unknown flag.
    """
    config = config or TrainConfig()
    unknown = set(flags) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown training flags {sorted(unknown)}; expected fields of TrainConfig")
    config = replace(config, **flags)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) < 2:
        raise ValueError(f"X: shape {X.shape}; expected (n_samples >= 2, n_features)")
    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(f"y: {len(y)} rows; expected {len(X)} to match X")
    classify = config.task == "classification"
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()

    x_mean, x_std = X.mean(0), X.std(0)
    x_std = np.where(x_std > 0, x_std, 1.0)
    xt = torch.tensor((X - x_mean) / x_std, dtype=torch.float32)
    if classify:
        labels = y.astype(np.int64).reshape(-1)
        n_out = int(labels.max()) + 1
        yt = torch.tensor(labels)
        y_mean, y_std = np.zeros(n_out), np.ones(n_out)
        criterion: nn.Module = nn.CrossEntropyLoss()
    else:
        Y = y.reshape(len(y), -1).astype(np.float64)
        n_out = Y.shape[1]
        y_mean, y_std = Y.mean(0), Y.std(0)
        y_std = np.where(y_std > 0, y_std, 1.0)
        yt = torch.tensor((Y - y_mean) / y_std, dtype=torch.float32)
        criterion = nn.MSELoss()

    module = build_mlp(X.shape[1], n_out, config)
    optimiser = torch.optim.Adam(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    weights = [m.weight for m in module if isinstance(m, nn.Linear)]
    history = []
    for _ in range(config.epochs):
        module.train()
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for batch in order.split(config.batch_size):
            xb, yb = xt[batch], yt[batch]
            loss = criterion(module(xb), yb)
            if config.l1 > 0:
                loss = loss + config.l1 * sum(w.abs().sum() for w in weights)
            if config.rs > 0:
                loss = loss + config.rs * relu_stability_loss(module, xb, config.rs_epsilon)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        history.append(total / len(xt))
    module.eval()
    net = ReluNetwork.from_torch(
        module, input_offset=x_mean, input_scale=x_std,
        **({} if classify else {"output_offset": y_mean, "output_scale": y_std}),
    )

    def error(Xe: np.ndarray, ye: np.ndarray) -> float:
        out = net(np.asarray(Xe, dtype=np.float64))
        if classify:
            return float(np.mean(out.argmax(1) != np.asarray(ye).reshape(-1)))
        return float(np.mean((out - np.asarray(ye, dtype=np.float64).reshape(len(ye), -1)) ** 2))

    result = TrainResult(
        net=net, module=module, config=config, history=history, train_error=error(X, y),
        test_error=None if X_test is None or y_test is None else error(X_test, y_test),
        seconds=time.perf_counter() - start,
    )
    if config.indicators:
        lo = X.min(0) if lower is None else np.asarray(lower, dtype=np.float64)
        hi = X.max(0) if upper is None else np.asarray(upper, dtype=np.float64)
        result.indicators = indicators(net, lo, hi, lp=config.lp_indicators, max_regions=config.max_regions,
                                       seed=config.seed)
    return result


def indicators(
    net: ReluNetwork, lower: np.ndarray, upper: np.ndarray, lp: bool = True, max_regions: int = 50_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The paper's indicators of a network on a box: stable fraction and largest big-M per layer (interval
    and, with ``lp``, LP bounds), binaries of the big-M MILP, and the number of linear regions (exact up to
    ``max_regions`` for 1-D/2-D inputs, else a sampled Chao1 estimate with its 95% interval)."""
    out: dict[str, Any] = {}
    methods = {"interval": interval_bounds(net, lower, upper)}
    if lp:
        methods["lp"] = lp_bounds(net, lower, upper)
    for name, bounds in methods.items():
        form = Formulation(net, lower, upper, bounds=bounds)
        out[f"stable_fraction_{name}"] = stable_fraction(net, bounds)
        out[f"max_big_m_{name}"] = [float(m.max()) if m.size else 0.0 for m in form.big_m]
        out[f"binaries_{name}"] = form.num_binaries
        out[f"bounds_seconds_{name}"] = bounds.seconds
    regions: dict[str, Any] = {}
    if net.input_dim <= 2:
        try:
            regions = {"regions": count_linear_regions(net, lower, upper, max_regions=max_regions),
                       "regions_method": "exact"}
        except RuntimeError:
            regions = {}
    if not regions:
        est = estimate_linear_regions(net, lower, upper, seed=seed)
        regions = {"regions": est.estimate, "regions_method": "sampled", "regions_low": est.low,
                   "regions_high": est.high, "regions_observed": est.observed}
    out.update(regions)
    return out
