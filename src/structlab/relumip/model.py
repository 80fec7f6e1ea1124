"""A solver-neutral mixed-integer linear program: the one model object every backend reads.

    min / max  c^T v + offset   s.t.   row_lower <= A v <= row_upper,   col_lower <= v <= col_upper,
                                       v_j integer for j in integers

Variables are referred to by their integer index (``np.ndarray`` of indices for a group). Rows are
collected in compressed sparse row form. HiGHS is the model's reference reader: :meth:`Model.to_highs`
loads it into ``highspy`` (for the solver, bound tightening and file export), :meth:`Model.write` exports
MPS or LP files through it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from structlab.errors import StructlabError

Sense = Literal["min", "max"]
INF = float("inf")


class Model:
    """Variables, linear rows and a linear objective, built incrementally."""

    def __init__(self) -> None:
        self._col_lower: list[np.ndarray] = []
        self._col_upper: list[np.ndarray] = []
        self._integer: list[np.ndarray] = []
        self.names: list[str] = []
        self.num_variables = 0
        self._row_starts: list[int] = [0]
        self._row_index: list[np.ndarray] = []
        self._row_value: list[np.ndarray] = []
        self._row_lower: list[float] = []
        self._row_upper: list[float] = []
        self.objective_index = np.zeros(0, dtype=np.int64)
        self.objective_value = np.zeros(0)
        self.objective_offset = 0.0
        self.sense: Sense = "min"

    # ------------------------------------------------------------------------------------- building
    def add_variables(
        self,
        n: int,
        lower: float | np.ndarray = 0.0,
        upper: float | np.ndarray = INF,
        integer: bool = False,
        name: str = "v",
    ) -> np.ndarray:
        """Add ``n`` variables with bounds ``lower``/``upper`` (scalars or shape (n,)); returns their indices.

        Names are ``name[i]``. Raises ``ValueError`` if a lower bound exceeds its upper bound.
        """
        lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)).copy()
        hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)).copy()
        if np.any(lo > hi):
            j = int(np.argmax(lo > hi))
            raise ValueError(f"{name}[{j}]: lower bound {lo[j]} > upper bound {hi[j]}")
        start = self.num_variables
        self._col_lower.append(lo)
        self._col_upper.append(hi)
        self._integer.append(np.full(n, integer))
        self.names.extend(f"{name}[{i}]" for i in range(n))
        self.num_variables += n
        return np.arange(start, start + n)

    def add_rows(
        self,
        index: Sequence[np.ndarray],
        value: Sequence[np.ndarray],
        lower: float | np.ndarray = -INF,
        upper: float | np.ndarray = INF,
    ) -> None:
        """Add rows ``lower[i] <= sum_k value[i][k] * v[index[i][k]] <= upper[i]``."""
        n = len(index)
        lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,))
        hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,))
        for idx, val, row_lo, row_hi in zip(index, value, lo, hi, strict=True):
            idx = np.asarray(idx, dtype=np.int64)
            val = np.asarray(val, dtype=np.float64)
            keep = val != 0.0
            self._row_index.append(idx[keep])
            self._row_value.append(val[keep])
            self._row_starts.append(self._row_starts[-1] + int(keep.sum()))
            self._row_lower.append(float(row_lo))
            self._row_upper.append(float(row_hi))

    def add_constraint(
        self,
        variables: Sequence[int] | np.ndarray,
        coeffs: Sequence[float] | np.ndarray,
        lower: float = -INF,
        upper: float = INF,
    ) -> None:
        """Add ``lower <= sum_k coeffs[k] * v[variables[k]] <= upper`` (one of the two may be infinite).

        Raises ``ValueError`` for mismatched lengths, unknown variables or ``lower > upper``.
        """
        idx, val = self._linear_terms(variables, coeffs)
        if lower > upper or lower == INF or upper == -INF:
            raise ValueError(f"lower={lower}, upper={upper}: expected lower <= upper with a finite side")
        self.add_rows([idx], [val], lower, upper)

    def _linear_terms(self, variables, coeffs) -> tuple[np.ndarray, np.ndarray]:
        """``variables`` and ``coeffs`` as flat index and value arrays, checked (one finite value per variable)."""
        idx = np.asarray(variables, dtype=np.int64).reshape(-1)
        val = np.asarray(coeffs, dtype=np.float64).reshape(-1)
        if idx.shape != val.shape:
            raise ValueError(f"coeffs: {val.size} values for {idx.size} variables; expected one per variable")
        self._check_variables(idx, "variables")
        if not np.all(np.isfinite(val)):
            raise ValueError("coeffs: contains NaN or infinite values; expected finite numbers")
        return idx, val

    def set_objective(
        self,
        variables: Sequence[int] | np.ndarray,
        coeffs: Sequence[float] | np.ndarray,
        sense: Sense = "min",
        offset: float = 0.0,
    ) -> None:
        """Make ``sense`` of ``sum_k coeffs[k] * v[variables[k]] + offset`` the objective (replacing any)."""
        if sense not in ("min", "max"):
            raise ValueError(f"sense={sense!r}: expected 'min' or 'max'")
        idx, val = self._linear_terms(variables, coeffs)
        self.objective_index, self.objective_value = idx, val
        self.objective_offset, self.sense = float(offset), sense

    def _check_variables(self, idx: np.ndarray, name: str) -> None:
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_variables):
            raise ValueError(f"{name}: indices {idx.tolist()}; expected indices in [0, {self.num_variables})")

    # ------------------------------------------------------------------------------------- reading
    @property
    def col_lower(self) -> np.ndarray:
        return np.concatenate(self._col_lower) if self._col_lower else np.zeros(0)

    @property
    def col_upper(self) -> np.ndarray:
        return np.concatenate(self._col_upper) if self._col_upper else np.zeros(0)

    @property
    def integer(self) -> np.ndarray:
        return np.concatenate(self._integer) if self._integer else np.zeros(0, dtype=bool)

    @property
    def cost(self) -> np.ndarray:
        """The objective as a dense vector of length ``num_variables`` (its own sense)."""
        c = np.zeros(self.num_variables)
        np.add.at(c, self.objective_index, self.objective_value)
        return c

    @property
    def num_rows(self) -> int:
        return len(self._row_lower)

    @property
    def num_integers(self) -> int:
        return int(self.integer.sum())

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, index, value, lower, upper)``: the rows in compressed sparse row form."""
        index = np.concatenate(self._row_index) if self._row_index else np.zeros(0, dtype=np.int64)
        value = np.concatenate(self._row_value) if self._row_value else np.zeros(0)
        return (
            np.asarray(self._row_starts, dtype=np.int64), index, value,
            np.asarray(self._row_lower), np.asarray(self._row_upper),
        )

    def stats(self) -> dict[str, int | float]:
        """Model size: variables, integers, rows, nonzeros and the coefficient range (max/min |a_ij|)."""
        _, _, value, _, _ = self.rows()
        magnitude = np.abs(value)
        return {
            "variables": self.num_variables,
            "integers": self.num_integers,
            "rows": self.num_rows,
            "nonzeros": int(value.size),
            "coefficient_min": float(magnitude.min()) if value.size else 0.0,
            "coefficient_max": float(magnitude.max()) if value.size else 0.0,
        }

    def to_highs(self, names: bool = False) -> Any:
        """A silent ``highspy.Highs`` holding this model (with variable names if ``names``)."""
        highspy = import_highspy()
        h = new_highs()
        n = self.num_variables
        h.addVars(n, self.col_lower, self.col_upper)
        starts, index, value, lower, upper = self.rows()
        if self.num_rows:
            h.addRows(
                self.num_rows, lower, upper, index.size,
                starts[:-1].astype(np.int32), index.astype(np.int32), value,
            )
        integer = np.flatnonzero(self.integer).astype(np.int32)
        if integer.size:
            h.changeColsIntegrality(integer.size, integer, np.full(integer.size, 1, dtype=np.uint8))
        cols = np.arange(n, dtype=np.int32)
        h.changeColsCost(n, cols, self.cost)
        h.changeObjectiveOffset(self.objective_offset)
        h.changeObjectiveSense(
            highspy.ObjSense.kMaximize if self.sense == "max" else highspy.ObjSense.kMinimize
        )
        if names:
            for j, name in enumerate(self.names):
                h.passColName(j, name)
        return h

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to ``path``: ``.mps`` (free MPS) or ``.lp`` (CPLEX LP), through HiGHS.

        Raises ``ValueError`` for another suffix. Returns the path.
        """
        out = Path(path)
        if out.suffix not in (".mps", ".lp"):
            raise ValueError(f"path={os.fspath(path)!r}: expected a file name ending in .mps or .lp")
        out.parent.mkdir(parents=True, exist_ok=True)
        highs = self.to_highs(names=True)
        tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")  # HiGHS picks the format by the suffix
        status = highs.writeModel(os.fspath(tmp))
        if not tmp.is_file() or status.name == "kError":
            raise OSError(f"HiGHS could not write {out}")
        os.replace(tmp, out)
        return out


# ------------------------------------------------------------------------------------------- HiGHS
def import_highspy() -> Any:
    """The ``highspy`` module; raises ``StructlabError`` naming the extra to install when it is missing."""
    try:
        import highspy
    except ImportError as err:  # pragma: no cover - highspy is a dependency of the mip extra
        raise StructlabError("HiGHS is not installed: pip install 'structlab[mip]'") from err
    return highspy


_BANNER_SHOWN = False


def new_highs() -> Any:
    """A silent ``highspy.Highs``. The first one of a process prints a banner to fd 1, which would corrupt
    JSON printed by benchmarks and commands, so it is sent to /dev/null."""
    global _BANNER_SHOWN
    highspy = import_highspy()
    if _BANNER_SHOWN:
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        return h
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _BANNER_SHOWN = True
    h.setOptionValue("output_flag", False)
    return h
