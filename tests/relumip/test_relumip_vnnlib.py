"""VNN-LIB: every property file VNN-COMP 2021 published for mnistfc reads as the competition's reference
reader (PyPI ``vnnlib`` 0.0.1's ``read_vnnlib_simple``) reads it; nesting, linear terms and errors by line."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from structlab import data
from structlab.relumip.vnnlib import VnnlibError, parse_vnnlib, read_vnnlib

mnistfc = data.find("vnncomp2021-mnistfc")
needs_mnistfc = pytest.mark.skipif(mnistfc is None, reason="vnncomp2021-mnistfc data set not found")


@needs_mnistfc
def test_every_mnistfc_property_reads_as_the_competition_reference_reader_reads_it() -> None:
    compat = pytest.importorskip("vnnlib.compat", reason="the reference reader (pip install vnnlib==0.0.1)")
    files = sorted(mnistfc.path.glob("*.vnnlib"))
    assert len(files) == 30
    for path in files:
        prop = read_vnnlib(path)
        reference = compat.read_vnnlib_simple(str(path), 784, 10)  # [(box, [(A_y, b), ...])]
        assert prop.n_inputs == 784 and prop.n_outputs == 10
        assert len(reference) == 1 and len(prop.boxes()) == 1
        box = np.array(reference[0][0], dtype=float)
        lower, upper, ks = prop.boxes()[0]
        np.testing.assert_array_equal(lower, box[:, 0])
        np.testing.assert_array_equal(upper, box[:, 1])
        specs = reference[0][1]
        assert len(ks) == len(specs) == 9
        for d, (A, b) in zip(prop.disjuncts, specs, strict=True):
            np.testing.assert_array_equal(d.A[:, :784], 0.0)
            np.testing.assert_array_equal(d.A[:, 784:], A)
            np.testing.assert_array_equal(d.b, np.ravel(b))


HEADER = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"


def test_nested_or_and_over_inputs_and_outputs_expand_into_disjuncts() -> None:
    text = HEADER + """
; two input boxes, each with an output condition
(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 -1) (<= X_1 1))
            (and (>= X_0 2) (<= X_0 3) (>= X_1 -1) (<= X_1 1))))
(assert (or (and (<= (+ Y_0 (* 2 X_0)) (- 3))) (and (> Y_1 Y_0) (= (/ Y_0 2) (- X_1 0.5)))))
"""
    prop = parse_vnnlib(text)
    assert len(prop.disjuncts) == 4 and len(prop.boxes()) == 2
    first = prop.disjuncts[0]
    np.testing.assert_array_equal(first.lower, [0, -1])
    np.testing.assert_array_equal(first.upper, [1, 1])
    # Y_0 + 2 X_0 <= -3 as a row on [X_0, X_1, Y_0, Y_1]
    np.testing.assert_array_equal(first.A, [[2, 0, 1, 0]])
    np.testing.assert_array_equal(first.b, [-3])
    second = prop.disjuncts[1]
    # Y_1 > Y_0 (strict), Y_0 / 2 = X_1 - 0.5 as two rows
    np.testing.assert_array_equal(second.A, [[0, 0, 1, -1], [0, -1, 0.5, 0], [0, 1, -0.5, 0]])
    np.testing.assert_array_equal(second.b, [0, -0.5, 0.5])
    np.testing.assert_array_equal(second.strict, [True, False, False])
    assert second.contains(np.array([0.5, 0.5]), np.array([0.0, 1.0]))
    assert not second.contains(np.array([0.5, 0.5]), np.array([0.0, 0.0]))  # strict: Y_1 > Y_0 fails
    assert prop.is_counterexample(np.array([2.5, 0.0]), np.array([-9.0, 0.0]))  # second box, first output row


def test_margin_is_the_largest_row_slack() -> None:
    prop = parse_vnnlib(HEADER + "(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_1 1))(assert (>= X_1 0))"
                        "(assert (and (>= Y_0 Y_1) (<= Y_0 2)))")
    d = prop.disjuncts[0]
    m = d.margin(np.array([[0.5, 0.5]]), np.array([[1.0, 3.0]]))  # rows: Y_1 - Y_0 <= 0 (slack 2), Y_0 <= 2 (-1)
    np.testing.assert_allclose(m, [2.0])


@pytest.mark.parametrize("body,line,message", [
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n(assert (>= X_1 0))\n"
     "(assert (<= (* X_0 Y_0) 2))", 9, "product of two variables is not linear"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= Z_3 2))", 7, "Z_3 is not declared"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 2))\n(assert (<= X_1 1))\n(assert (>= X_1 0))", 6,
     "the input box is empty: X_0 >= 2 \\(line 6\\) and X_0 <= 1 \\(line 5\\)"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))", 2, "X_1 has no lower bound"),
    ("(assert (<= X_0 1)\n", 5, "'\\(' is never closed"),
    ("(assert (<= (exp X_0) 1))", 5, "\\(exp ...\\) with 1 arguments is not a linear term"),
    ("(assert (not (<= X_0 1)))", 5, "\\(not ...\\) is not supported"),
    ("(declare-fun f (Real) Real)", 5, "\\(declare-fun ...\\) is not supported"),
])
def test_bad_input_names_the_line(body: str, line: int, message: str) -> None:
    with pytest.raises(VnnlibError, match=f"^prop.vnnlib:{line}: .*{message}"):
        parse_vnnlib(HEADER + body, source="prop.vnnlib")


def test_a_missing_file_and_a_gap_in_the_declarations_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.vnnlib"):
        read_vnnlib(tmp_path / "missing.vnnlib")
    with pytest.raises(VnnlibError, match="X_1 is not declared"):
        parse_vnnlib("(declare-const X_0 Real)(declare-const X_2 Real)(declare-const Y_0 Real)")
    assert issubclass(VnnlibError, ValueError)


def test_a_strict_input_bound_stays_a_row_that_a_counterexample_must_meet_strictly() -> None:
    prop = parse_vnnlib("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 0))(assert (< X_0 1))"
                        "(assert (<= Y_0 5))")
    d = prop.disjuncts[0]
    assert d.upper[0] == 1.0 and not math.isinf(d.lower[0])
    assert not d.contains(np.array([1.0]), np.array([0.0]))
    assert d.contains(np.array([0.999]), np.array([0.0]))
