"""The ``structlab`` entry point: arguments that look like options, and a reader that goes away."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from structlab.cli import build_parser


@pytest.mark.parametrize("value", ["-inf", "-1e-3", "-Infinity", "-.5"])
def test_negative_numbers_of_any_spelling_are_values_not_options(value):
    args = build_parser().parse_args(["relumip", "solve", "n.onnx", "--lower", value, "-2",
                                      "--output-constraint", "0", value, "0.2"])
    assert args.lower == [float(value), -2.0]
    assert args.output_constraint == [["0", value, "0.2"]]


def test_unknown_options_are_still_rejected(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["relumip", "solve", "n.onnx", "-x"])
    assert "unrecognized arguments: -x" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_command_quietly_with_sigpipes_status():
    """Like ``structlab data list | head -1``: the reader is gone before the command writes."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "structlab.cli", "data", "list"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 141  # 128 + SIGPIPE, as a command stopped by the signal reports
