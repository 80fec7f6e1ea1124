"""The main job (study registry, current results skipped, failures isolated) and the command line."""

from __future__ import annotations

import pytest

from structlab import cli, reproduce
from structlab.results import StudyResult, read_result


@pytest.fixture
def toy_studies(monkeypatch):
    """Two registered studies of the 'tucker' part: one that works and one that fails."""
    registry: dict = {}
    monkeypatch.setattr(reproduce, "_STUDIES", registry)
    monkeypatch.setattr(reproduce, "load_studies", lambda: dict(registry))
    calls = []

    @reproduce.study("tucker", "ok", title="works")
    def ok(ctx):
        calls.append(ctx.scale)
        return StudyResult(part="tucker", study="ok", title="works", scale=ctx.scale, metrics={"x": 1.0})

    @reproduce.study("tucker", "broken", title="fails")
    def broken(ctx):
        raise RuntimeError("boom")

    return calls


def test_studies_run_then_are_current_until_forced(tmp_path, toy_studies):
    out = reproduce.run("quick", results_dir=tmp_path, log=lambda m: None)
    status = {o.study: o.status for o in out}
    assert status == {"ok": "ran", "broken": "failed"}
    assert read_result(tmp_path / "tucker" / "ok.json").fingerprint == reproduce.fingerprint("tucker", "quick")
    out = reproduce.run("quick", studies=["ok"], results_dir=tmp_path, log=lambda m: None)
    assert [o.status for o in out] == ["current"] and toy_studies == ["quick"]
    reproduce.run("quick", studies=["ok"], force=True, results_dir=tmp_path, log=lambda m: None)
    reproduce.run("full", studies=["ok"], results_dir=tmp_path, log=lambda m: None)  # other scale: stale
    assert toy_studies == ["quick", "quick", "full"]


def test_reproduce_rejects_unknown_names(tmp_path, toy_studies):
    with pytest.raises(ValueError, match="scale='huge'"):
        reproduce.run("huge", results_dir=tmp_path)
    with pytest.raises(ValueError, match="no such study"):
        reproduce.run("quick", studies=["nope"], results_dir=tmp_path)
    with pytest.raises(ValueError, match="part='nope'"):
        reproduce.study("nope", "x", "y")


def test_cli_reproduce_writes_report_and_exits_nonzero_on_failure(tmp_path, toy_studies, capsys):
    code = cli.main(["--quiet", "reproduce", "--results", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and "FAILED tucker/broken: RuntimeError: boom" in captured.err
    assert (tmp_path / "report.html").is_file() and "report:" in captured.out


def test_cli_errors_are_one_line_without_traceback(capsys):
    assert cli.main(["data", "verify", "no-such-set"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: name='no-such-set': unknown data set") and "Traceback" not in err
    with pytest.raises(ValueError):
        cli.main(["--debug", "data", "verify", "no-such-set"])


def test_every_command_has_help_with_examples(capsys):
    parser = cli.build_parser()
    for argv in (["--help"], ["data", "--help"], ["data", "list", "--help"], ["reproduce", "--help"],
                 ["report", "--help"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert "Examples:" in capsys.readouterr().out, argv


def test_data_list_shows_every_data_set(capsys):
    assert cli.main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("shakespeare", "fashion-mnist", "digits", "ssvep-exo", "omlt-reformer", "audio", "minilm"):
        assert f"\n{name}\n" in out
    assert "licence:" in out and "where:" in out
