"""``structlab relumip``: train to ONNX, then bounds, solve, regions and export on the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from structlab.cli import main
from structlab.relumip import count_linear_regions, lp_bounds, optimize, stable_fraction
from structlab.relumip.cli import read_network


@pytest.fixture(scope="module")
def peaks_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("relumip") / "peaks.onnx"
    assert main(["--quiet", "relumip", "train", "--problem", "peaks", "--hidden", "8", "8", "--epochs", "5",
                 "--n-train", "256", "--out", str(path)]) == 0
    return path


def test_onnx_file_runs_the_same_function_in_onnxruntime(peaks_onnx):
    ort = pytest.importorskip("onnxruntime")
    net, meta = read_network(peaks_onnx)
    assert json.loads(meta["structlab.input_box"]) == {"lower": [-2.0, -2.0], "upper": [2.0, 2.0]}
    x = np.random.default_rng(0).uniform(-2, 2, (100, 2)).astype(np.float32)
    session = ort.InferenceSession(str(peaks_onnx), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose(net(x.astype(np.float64)), y, rtol=1e-5, atol=1e-5)


def test_bounds_json_matches_the_library(peaks_onnx, capsys):
    assert main(["relumip", "bounds", str(peaks_onnx), "--method", "lp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    net, _ = read_network(peaks_onnx)
    ref = lp_bounds(net, [-2, -2], [2, 2])
    assert out["stable_share"] == pytest.approx(stable_fraction(net, ref))
    assert [row["neurons"] for row in out["layers"]] == [8, 8]
    np.testing.assert_allclose(out["layers"][1]["upper"], ref.upper[1], rtol=1e-6)


def test_solve_reports_the_optimum_of_the_network(peaks_onnx, capsys):
    assert main(["relumip", "solve", str(peaks_onnx), "--objective", "1", "--bounds", "lp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    net, _ = read_network(peaks_onnx)
    ref = optimize(net, [-2, -2], [2, 2], [1.0], sense="min", solver="scip")
    assert out["status"] == "optimal"
    assert out["objective"] == pytest.approx(ref.objective, abs=1e-6)
    assert out["objective"] == pytest.approx(float(net(np.array(out["x"]))[0]), abs=1e-9)


def test_regions_and_export(peaks_onnx, tmp_path, capsys):
    assert main(["relumip", "regions", str(peaks_onnx), "--plot", str(tmp_path / "r.png")]) == 0
    net, _ = read_network(peaks_onnx)
    assert capsys.readouterr().out.startswith(f"{count_linear_regions(net, [-2, -2], [2, 2])} linear regions")
    assert (tmp_path / "r.png").stat().st_size > 0
    assert main(["relumip", "export", str(peaks_onnx), "--objective", "1", "--out", str(tmp_path / "m.mps")]) == 0
    import highspy

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.readModel(str(tmp_path / "m.mps"))
    h.run()
    ref = optimize(net, [-2, -2], [2, 2], [1.0])
    assert h.getInfo().objective_function_value == pytest.approx(ref.objective, abs=1e-6)


def test_margin_problem_around_a_saved_centre(tmp_path, capsys):
    path = tmp_path / "digits.onnx"
    assert main(["--quiet", "relumip", "train", "--problem", "digits", "--hidden", "8", "--epochs", "2",
                 "--out", str(path)]) == 0
    capsys.readouterr()
    np.save(tmp_path / "x0.npy", np.full(64, 0.5))
    assert main(["relumip", "solve", str(path), "--center", str(tmp_path / "x0.npy"), "--eps", "0.05",
                 "--margin", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    x = np.array(out["x"])
    assert np.all(np.abs(x - 0.5) <= 0.05 + 1e-9)
    y = np.array(out["y"])
    assert out["objective"] == pytest.approx(np.delete(y, 3).max() - y[3], abs=1e-9)


@pytest.mark.parametrize(("argv", "message"), [
    (["--objective", "1", "2"], "--objective: 2 values; expected 1"),
    ([], "--objective: missing"),
    (["--objective", "1", "--margin", "0"], "--margin and --objective"),
    (["--objective", "1", "--output-constraint", "5", "0", "1"], "--output-constraint 5"),
])
def test_bad_problem_arguments_give_one_line_errors(peaks_onnx, capsys, argv, message):
    assert main(["relumip", "solve", str(peaks_onnx), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_missing_network_file_is_a_clear_error(tmp_path, capsys):
    assert main(["relumip", "bounds", str(tmp_path / "nope.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_output_constraint_takes_minus_inf_as_a_value_as_the_help_shows(peaks_onnx, capsys):
    # argparse used to read "-inf" as an option ("expected 3 arguments")
    assert main(["relumip", "solve", str(peaks_onnx), "--objective", "1", "--sense", "max",
                 "--output-constraint", "0", "-inf", "0.2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    net, _ = read_network(peaks_onnx)
    low = optimize(net, [-2, -2], [2, 2], [1.0], sense="min", solver="scip").objective
    high = optimize(net, [-2, -2], [2, 2], [1.0], sense="max", solver="scip").objective
    assert low < 0.2  # the network is continuous on the box: every value in [low, high] is attained
    assert out["status"] == "optimal"
    assert out["objective"] == pytest.approx(min(0.2, high), abs=1e-6)


def test_output_constraint_names_itself_on_a_bad_value(peaks_onnx, capsys):
    assert main(["relumip", "solve", str(peaks_onnx), "--objective", "1",
                 "--output-constraint", "0", "low", "0.2"]) == 2
    assert "--output-constraint" in capsys.readouterr().err
