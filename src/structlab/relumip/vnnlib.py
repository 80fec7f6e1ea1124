"""VNN-LIB properties: the SMT-LIB subset that VNN-COMP writes its verification problems in.

A file declares the network's inputs ``X_0 .. X_{n-1}`` and outputs ``Y_0 .. Y_{m-1}`` and asserts
linear constraints on them; the conjunction of the assertions is the *unsafe set*. The property holds when
no input satisfies it (the network is safe), and is violated by any input that does::

    (declare-const X_0 Real)  (declare-const Y_0 Real)  (declare-const Y_1 Real)
    (assert (<= X_0 1.0))     (assert (>= X_0 0.0))
    (assert (or (and (>= Y_1 Y_0)) (and (<= (+ Y_0 (* 2 X_0)) -3))))

Supported: ``declare-const`` of ``Real`` X_i/Y_j; ``assert`` of ``<=``, ``>=``, ``<``, ``>``, ``=`` between
linear terms (numbers, variables, ``+``, ``-``, ``*`` by a number, ``/`` by a number) and any nesting of
``and``/``or``; ``check-sat``/``get-model``/``set-logic``/``set-info`` are ignored. The formula is brought
into disjunctive normal form: each :class:`Disjunct` is an input box plus linear rows ``A [x; y] <= b``.
Errors name the file's line: a non-linear term, an undeclared variable, an input without a finite bound,
an empty input box.

PyPI's ``vnnlib`` 1.x parses VNN-LIB 2.0 only (it rejects VNN-COMP's files), and 0.0.1, the last version
for this dialect, reports errors without lines; this small parser is ours.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_DISJUNCTS = 100_000  # distributing `and` over `or` can explode; refuse beyond this
_NAME = re.compile(r"^([XY])_(\d+)$")
_IGNORED = ("check-sat", "get-model", "set-logic", "set-info", "set-option", "exit")


class VnnlibError(ValueError):
    """A VNN-LIB file that this reader cannot use; the message names the file and the line."""


@dataclass(frozen=True)
class Disjunct:
    """One conjunction of the unsafe set: ``lower <= x <= upper`` and ``A @ [x; y] <= b``.

    ``A`` has shape (rows, n_inputs + n_outputs); ``strict`` (rows,) marks ``<`` rows, which a
    counterexample must satisfy strictly.
    """

    lower: np.ndarray
    upper: np.ndarray
    A: np.ndarray
    b: np.ndarray
    strict: np.ndarray

    def margin(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``max_i (A [x; y] - b)_i`` for inputs ``x`` (batch, n_in) and outputs ``y`` (batch, n_out).

        A point with margin <= 0 (< 0 where a row is strict) and ``x`` in the box is in the unsafe set.
        Returns shape (batch,) (``-inf`` for a disjunct without rows).
        """
        z = np.concatenate([np.atleast_2d(x), np.atleast_2d(y)], axis=1)
        if not self.b.size:
            return np.full(z.shape[0], -math.inf)
        return np.max(z @ self.A.T - self.b, axis=1)

    def contains(self, x: np.ndarray, y: np.ndarray) -> bool:
        """Is ``(x, y)`` (one point, shapes (n_in,), (n_out,)) in this disjunct, exactly (no tolerance)?"""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if not (np.all(x >= self.lower) and np.all(x <= self.upper)):
            return False
        slack = self.A @ np.concatenate([x, y]) - self.b
        return bool(np.all(np.where(self.strict, slack < 0, slack <= 0)))


@dataclass(frozen=True)
class Property:
    """A VNN-LIB property: its unsafe set is the union of ``disjuncts``."""

    n_inputs: int
    n_outputs: int
    disjuncts: tuple[Disjunct, ...]
    source: str = ""

    def __repr__(self) -> str:
        return (f"Property({self.source or 'vnnlib'}: {self.n_inputs} inputs, {self.n_outputs} outputs, "
                f"{len(self.disjuncts)} disjuncts over {len(self.boxes())} input boxes)")

    def boxes(self) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
        """The distinct input boxes, each with the indices of the disjuncts on it (they share bounds)."""
        groups: dict[bytes, tuple[np.ndarray, np.ndarray, list[int]]] = {}
        for k, d in enumerate(self.disjuncts):
            key = d.lower.tobytes() + d.upper.tobytes()
            groups.setdefault(key, (d.lower, d.upper, []))[2].append(k)
        return list(groups.values())

    def is_counterexample(self, x: np.ndarray, y: np.ndarray) -> bool:
        """Does the input ``x`` with outputs ``y`` lie in the unsafe set (exactly, without tolerance)?"""
        return any(d.contains(x, y) for d in self.disjuncts)


# ----------------------------------------------------------------------------------- s-expressions
@dataclass(frozen=True)
class _Atom:
    text: str
    line: int


@dataclass(frozen=True)
class _List:
    items: tuple[_Atom | _List, ...]
    line: int


def _tokens(text: str, source: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.split(";", 1)[0]
        for tok in re.findall(r"\(|\)|[^\s()]+", line):
            out.append((tok, lineno))
    return out


def _parse_sexprs(text: str, source: str) -> list[_List]:
    stack: list[list[_Atom | _List]] = []
    starts: list[int] = []
    top: list[_List] = []
    for tok, line in _tokens(text, source):
        if tok == "(":
            stack.append([])
            starts.append(line)
        elif tok == ")":
            if not stack:
                raise VnnlibError(f"{source}:{line}: unbalanced ')'")
            node = _List(tuple(stack.pop()), starts.pop())
            (stack[-1].append(node) if stack else top.append(node))
        else:
            if not stack:
                raise VnnlibError(f"{source}:{line}: {tok!r} outside a command; expected '(' ... ')'")
            stack[-1].append(_Atom(tok, line))
    if stack:
        raise VnnlibError(f"{source}:{starts[-1]}: '(' is never closed")
    return top


# ---------------------------------------------------------------------------------------- reader
_Linear = tuple[dict[str, float], float]  # coefficients by variable name, constant
_Row = tuple[dict[str, float], float, bool, int]  # sum coeffs * v <= rhs, strict, line


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.declared: dict[str, int] = {}  # name -> line

    def fail(self, line: int, message: str) -> VnnlibError:
        return VnnlibError(f"{self.source}:{line}: {message}")

    def declare(self, cmd: _List) -> None:
        items = cmd.items
        if len(items) != 3 or not all(isinstance(i, _Atom) for i in items[1:]):
            raise self.fail(cmd.line, "expected (declare-const NAME Real)")
        name, sort = items[1].text, items[2].text  # type: ignore[union-attr]
        if not _NAME.match(name):
            raise self.fail(cmd.line, f"declare-const {name}: expected an input X_i or an output Y_j")
        if sort != "Real":
            raise self.fail(cmd.line, f"declare-const {name} {sort}: expected the sort Real")
        if name in self.declared:
            raise self.fail(cmd.line, f"{name} is declared twice (first on line {self.declared[name]})")
        self.declared[name] = cmd.line

    def term(self, node: _Atom | _List) -> _Linear:
        if isinstance(node, _Atom):
            try:
                return {}, float(node.text)
            except ValueError:
                pass
            if node.text not in self.declared:
                raise self.fail(node.line, f"{node.text} is not declared (declare-const {node.text} Real first)")
            return {node.text: 1.0}, 0.0
        if not node.items or not isinstance(node.items[0], _Atom):
            raise self.fail(node.line, "expected an arithmetic term")
        op, args = node.items[0].text, [self.term(a) for a in node.items[1:]]
        if op == "+" and args:
            return _combine(args, [1.0] * len(args))
        if op == "-" and args:
            return _combine(args, [-1.0] if len(args) == 1 else [1.0] + [-1.0] * (len(args) - 1))
        if op == "*" and len(args) >= 2:
            variable = [a for a in args if a[0]]
            if len(variable) > 1:
                raise self.fail(node.line, "a product of two variables is not linear; VNN-LIB here is linear")
            factor = math.prod(a[1] for a in args if not a[0])
            coeffs, const = variable[0] if variable else ({}, 1.0)
            return {k: v * factor for k, v in coeffs.items()}, const * factor
        if op == "/" and len(args) == 2:
            if args[1][0] or args[1][1] == 0:
                raise self.fail(node.line, "division by a variable or by zero is not linear")
            return {k: v / args[1][1] for k, v in args[0][0].items()}, args[0][1] / args[1][1]
        raise self.fail(node.line, f"({op} ...) with {len(args)} arguments is not a linear term; expected "
                                   "a number, a variable, +, -, * by a number or / by a number")

    def formula(self, node: _Atom | _List) -> list[list[_Row]]:
        """DNF of a boolean formula: a list of conjunctions, each a list of rows ``coeffs . v <= rhs``."""
        if not isinstance(node, _List) or not node.items or not isinstance(node.items[0], _Atom):
            raise self.fail(node.line, "expected a constraint such as (<= X_0 1) or (and ...) / (or ...)")
        op, args = node.items[0].text, node.items[1:]
        if op in ("and", "or"):
            parts = [self.formula(a) for a in args]
            if op == "or":
                return [conj for part in parts for conj in part]
            result: list[list[_Row]] = [[]]
            for part in parts:
                if len(result) * len(part) > MAX_DISJUNCTS:
                    raise self.fail(node.line, f"more than {MAX_DISJUNCTS} disjuncts after expanding (and ...)")
                result = [left + right for left in result for right in part]
            return result
        if op in ("<=", ">=", "<", ">", "=") and len(args) == 2:
            (lc, lk), (rc, rk) = self.term(args[0]), self.term(args[1])
            diff = dict(lc)
            for k, v in rc.items():
                diff[k] = diff.get(k, 0.0) - v
            const = rk - lk  # lhs - rhs <= 0  <=>  diff . v <= rk - lk
            le: _Row = (diff, const, op == "<", node.line)
            ge: _Row = ({k: -v for k, v in diff.items()}, -const, op == ">", node.line)
            if op in ("<=", "<"):
                return [[le]]
            if op in (">=", ">"):
                return [[ge]]
            return [[le, ge]]
        if op == "not":
            raise self.fail(node.line, "(not ...) is not supported; write the negated comparison instead")
        raise self.fail(node.line, f"({op} ...) is not a supported constraint; expected <=, >=, <, >, =, and, or")


def _combine(args: list[_Linear], signs: list[float]) -> _Linear:
    coeffs: dict[str, float] = {}
    const = 0.0
    for (c, k), s in zip(args, signs, strict=True):
        for name, v in c.items():
            coeffs[name] = coeffs.get(name, 0.0) + s * v
        const += s * k
    return coeffs, const


def parse_vnnlib(text: str, source: str = "<string>") -> Property:
    """Parse VNN-LIB ``text`` (see the module docstring); ``source`` names it in error messages."""
    reader = _Reader(source)
    conjunctions: list[list[_Row]] = [[]]
    for cmd in _parse_sexprs(text, source):
        head = cmd.items[0] if cmd.items else None
        if not isinstance(head, _Atom):
            raise reader.fail(cmd.line, "expected a command such as (declare-const ...) or (assert ...)")
        if head.text == "declare-const":
            reader.declare(cmd)
        elif head.text == "assert":
            if len(cmd.items) != 2:
                raise reader.fail(cmd.line, "expected (assert CONSTRAINT) with one constraint")
            part = reader.formula(cmd.items[1])
            if len(conjunctions) * len(part) > MAX_DISJUNCTS:
                raise reader.fail(cmd.line, f"more than {MAX_DISJUNCTS} disjuncts after expanding the asserts")
            conjunctions = [left + right for left in conjunctions for right in part]
        elif head.text not in _IGNORED:
            raise reader.fail(cmd.line, f"({head.text} ...) is not supported; expected declare-const or assert")
    return _property(reader, conjunctions)


def read_vnnlib(path: str | os.PathLike[str]) -> Property:
    """Read a VNN-LIB file (see the module docstring) into a :class:`Property`.

    Raises ``FileNotFoundError`` for a missing file and :class:`VnnlibError` (a ``ValueError``) naming the
    file and line for anything outside the supported subset, an undeclared variable, an input without a
    finite lower and upper bound, or an empty input box.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: {os.fspath(path)} does not exist")
    return parse_vnnlib(p.read_text(encoding="utf-8"), source=p.name)


def _property(reader: _Reader, conjunctions: list[list[_Row]]) -> Property:
    names = reader.declared
    idx = {"X": sorted(int(m.group(2)) for n in names if (m := _NAME.match(n)) and m.group(1) == "X"),
           "Y": sorted(int(m.group(2)) for n in names if (m := _NAME.match(n)) and m.group(1) == "Y")}
    for kind in ("X", "Y"):
        if not idx[kind]:
            raise VnnlibError(f"{reader.source}: no {kind}_i is declared; expected inputs X_0.. and outputs Y_0..")
        if idx[kind] != list(range(len(idx[kind]))):
            missing = sorted(set(range(idx[kind][-1] + 1)) - set(idx[kind]))
            raise VnnlibError(f"{reader.source}: {kind}_{missing[0]} is not declared; expected "
                              f"{kind}_0 .. {kind}_{idx[kind][-1]} without gaps")
    n_in, n_out = len(idx["X"]), len(idx["Y"])
    column = {f"X_{i}": i for i in range(n_in)} | {f"Y_{j}": n_in + j for j in range(n_out)}
    disjuncts = []
    for rows in conjunctions:
        lower, upper = np.full(n_in, -math.inf), np.full(n_in, math.inf)
        lower_line, upper_line = np.zeros(n_in, int), np.zeros(n_in, int)
        A, b, strict = [], [], []
        for coeffs, rhs, is_strict, line in rows:
            nz = {k: v for k, v in coeffs.items() if v != 0.0}
            if not nz:
                if (0.0 < rhs) if is_strict else (0.0 <= rhs):
                    continue  # always true
                raise reader.fail(line, f"the constraint 0 {'<' if is_strict else '<='} {rhs:g} is never true")
            if len(nz) == 1 and (name := next(iter(nz))).startswith("X_"):
                i, v = column[name], nz[name]
                bound = rhs / v
                if v > 0 and bound < upper[i]:  # x_i <= bound (a strict bound only narrows the closure)
                    upper[i], upper_line[i] = bound, line
                elif v < 0 and bound > lower[i]:
                    lower[i], lower_line[i] = bound, line
                if not is_strict:
                    continue  # a strict bound also stays a row, which a counterexample must meet strictly
            row = np.zeros(n_in + n_out)
            for name, v in nz.items():
                row[column[name]] = v
            A.append(row)
            b.append(rhs)
            strict.append(is_strict)
        for i in range(n_in):
            if not (math.isfinite(lower[i]) and math.isfinite(upper[i])):
                side = "lower" if not math.isfinite(lower[i]) else "upper"
                raise VnnlibError(f"{reader.source}:{names[f'X_{i}']}: X_{i} has no {side} bound; expected a "
                                  "bounded input box (assert (>= X_i lo)) and (assert (<= X_i hi))")
            if lower[i] > upper[i]:
                raise VnnlibError(
                    f"{reader.source}:{max(lower_line[i], upper_line[i])}: the input box is empty: "
                    f"X_{i} >= {lower[i]:g} (line {lower_line[i]}) and X_{i} <= {upper[i]:g} (line {upper_line[i]})"
                )
        disjuncts.append(Disjunct(
            lower, upper, np.array(A).reshape(-1, n_in + n_out), np.array(b, dtype=np.float64),
            np.array(strict, dtype=bool),
        ))
    return Property(n_in, n_out, tuple(disjuncts), reader.source)
