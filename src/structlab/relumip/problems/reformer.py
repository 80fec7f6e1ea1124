"""Benchmark 3: OMLT's autothermal-reformer surrogate (docs/notebooks/neuralnet/auto-thermal-reformer-relu).

OMLT's example, reproduced: inputs ``Bypass Fraction`` and ``NG Steam Ratio``; twelve outputs (steam
flow, reformer duty and the outlet mole fractions AR ... N2; O2 is left out); inputs and outputs
standardised by their mean and sample standard deviation; a 2-10-10-10-10-12 ReLU network trained with
Adam on the mean squared error for 100 epochs (batch 32). The optimisation problem maximises the H2 mole
fraction subject to ``N2 <= 0.34`` over the data's input range. OMLT's notebook reports the optimum
Bypass Fraction 0.1, NG Steam Ratio 1.1186717, H2 0.33157189 (with N2 at its limit 0.34).

OMLT trains on all 2,800 rows; here a random fifth is held out to measure the test error.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from structlab import data
from structlab.relumip.problems import Dataset, Instance, OutputConstraint

INPUTS = ("Bypass Fraction", "NG Steam Ratio")
OUTPUTS = (
    "Steam Flow", "Reformer Duty", "AR", "C2H6", "C3H8", "C4H10", "CH4", "CO", "CO2", "H2", "H2O", "N2",
)
H2, N2 = OUTPUTS.index("H2"), OUTPUTS.index("N2")
N2_LIMIT = 0.34
HIDDEN = (10, 10, 10, 10)  # OMLT's network: four hidden layers of 10 ReLUs
EPOCHS, BATCH_SIZE = 100, 32  # OMLT's Keras fit: 100 epochs, Keras' default batch of 32
PUBLISHED = {"Bypass Fraction": 0.1, "NG Steam Ratio": 1.1186717, "H2": 0.33157189, "N2": 0.34}


def read_table(download: bool = False) -> tuple[np.ndarray, np.ndarray, data.Resolution]:
    """The 2,800 rows: inputs (2800, 2) and outputs (2800, 12) in OMLT's column order, and their source."""
    where = data.resolve("omlt-reformer", download=download)
    table = np.genfromtxt(where.path / "reformer.csv", delimiter=",", names=True)
    columns = {name.replace("_", " "): name for name in table.dtype.names}
    x = np.column_stack([table[columns[name]] for name in INPUTS])
    y = np.column_stack([table[columns[name]] for name in OUTPUTS])
    return x, y, where


def dataset(test_fraction: float = 0.2, seed: int = 0, download: bool = False) -> Dataset:
    """OMLT's data split at random into training and test rows (the network is trained on standardised
    inputs and outputs, as in OMLT's notebook; :func:`structlab.relumip.train` does that)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r}: expected a share in (0, 1)")
    x, y, where = read_table(download)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    return Dataset(
        name="reformer", task="regression",
        x_train=x[train].astype(np.float32), y_train=y[train].astype(np.float32),
        x_test=x[test].astype(np.float32), y_test=y[test].astype(np.float32),
        lower=x.min(axis=0), upper=x.max(axis=0), source=where,
    )


def instance(ds: Dataset) -> Instance:
    """Maximise H2 subject to N2 <= 0.34 over the data's input range (OMLT's problem)."""
    n2 = np.zeros(len(OUTPUTS))
    n2[N2] = 1.0
    h2 = np.zeros(len(OUTPUTS))
    h2[H2] = 1.0
    return Instance(
        name="reformer-max-h2", lower=np.asarray(ds.lower, float), upper=np.asarray(ds.upper, float),
        sense="max", objective=h2, constraints=(OutputConstraint(n2, upper=N2_LIMIT),),
    )


def simulated(x: np.ndarray) -> np.ndarray:
    """The simulator's outputs (12,) at input ``x`` (2,), interpolated bilinearly in the simulated grid
    (70 bypass fractions x 39 steam ratios): the truth the surrogate's optimum is checked against.
    Raises ``DataNotFoundError`` without the data."""
    return _simulator()(np.asarray(x, dtype=np.float64)[None, :])[0]


@functools.cache
def _simulator() -> Any:
    from scipy.interpolate import RegularGridInterpolator

    xs, ys, _ = read_table()
    keys = np.round(xs, 9)  # the rows lie on a grid; NG Steam Ratio 1.0 appears twice per bypass value
    grid = [np.unique(keys[:, 0]), np.unique(keys[:, 1])]
    i = np.searchsorted(grid[0], keys[:, 0])
    j = np.searchsorted(grid[1], keys[:, 1])
    total = np.zeros((grid[0].size, grid[1].size, ys.shape[1]))
    count = np.zeros(total.shape[:2])
    np.add.at(total, (i, j), ys)
    np.add.at(count, (i, j), 1)
    if np.any(count == 0):
        raise ValueError("reformer.csv: the rows do not fill a grid of bypass fractions x steam ratios")
    return RegularGridInterpolator(grid, total / count[..., None])
