"""Stored evidence: `structlab evidence save` refuses what is not evidence and loses nothing on failure."""

from __future__ import annotations

import gzip
import json
import subprocess

import pytest
from PIL import Image, ImageDraw

from structlab import cli, evidence, reproduce
from structlab.results import (
    Claim,
    StudyResult,
    Table,
    command_line,
    environment,
    failure_record,
    finish,
    read_result,
    record_failure,
)

COMMAND = "OMP_NUM_THREADS=1 structlab --quiet reproduce --scale full --only tucker --study demo"


def _figure(path, width=2400):
    """A plot-like RGBA image (white, axes, a curve, text) as wide as a 12-inch figure at 200 dpi."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGBA", (width, width // 3), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(100, 700), (2300, 700)], fill="black", width=3)
    draw.line([(100, 50), (100, 700)], fill="black", width=3)
    draw.line([(100 + 44 * i, 700 - (i * i) // 4) for i in range(50)], fill=(31, 119, 180), width=4)
    draw.text((1200, 60), "squares", fill="black")
    image.save(path)


def _write(results, scale="full", study="demo", raw_values=10, command=COMMAND, figures=("demo_curve.png",),
           fingerprint="f" * 16, created=None):
    """A results file as `reproduce` writes it, with an environment that records ``command``."""
    for fig in figures:
        _figure(results / "tucker" / fig)
    res = StudyResult(
        part="tucker", study=study, title="A demo study", scale=scale, summary="Demo.",
        metrics={"loss": {"mean": 1.5, "std": 0.1, "n": 3},
                 "records": [{"i": i, "x": i / 7} for i in range(raw_values)]},
        tables=[Table("Losses", ["model", "loss"], [["mha", 1.1], ["tucker", 1.15]])],
        figures=list(figures), claims=[Claim("Tucker matches MHA", "+0.05 nats", "partly agrees")],
    )
    res.fingerprint = fingerprint
    path = finish(res, results, wall_seconds=12.0)
    obj = json.loads(path.read_text())
    obj["environment"]["command"] = command
    obj["environment"]["git_commit"] = "abc1234"
    if created:
        obj["created"] = created
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def code_matches(monkeypatch):
    """The results' fingerprint is that of the part's code at their commit (git is tested separately)."""
    monkeypatch.setattr(evidence, "fingerprint_at", lambda commit, part, scale, repo=None: "f" * 16)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_save_stores_results_with_provenance_small_figures_and_raw_block(tmp_path, code_matches, monkeypatch):
    monkeypatch.setattr(evidence, "RAW_LIMIT_BYTES", 2_000)
    results, store = tmp_path / "results", tmp_path / "evidence"
    source = _write(results, raw_values=200)
    [saved] = evidence.save(["tucker/demo"], results, store, log=lambda m: None)
    assert saved == store / "tucker" / "demo.json"
    stored = evidence.read_evidence(saved)
    prov = stored.provenance
    assert prov["command"] == COMMAND and prov["command_source"] == "recorded by the run"
    assert prov["commit"] == "abc1234" and "fingerprint is that of src/structlab/tucker" in prov["code_check"]
    original = read_result(source)
    assert stored.result.claims == original.claims and stored.result.tables == original.tables
    assert stored.result.environment == original.environment and stored.result.wall_seconds == 12.0
    # The 200 records went to the compressed sidecar and come back unchanged.
    assert stored.result.metrics["records"] == {"stored_in": "demo.raw.json.gz"}
    with gzip.open(store / "tucker" / "demo.raw.json.gz", "rt") as handle:
        assert json.load(handle)["records"] == original.metrics["records"]
    assert stored.metrics(with_raw=True) == original.metrics
    # The figure is stored downsized (2400 px -> 1200 px wide) and smaller on disk.
    fig_in, fig_out = results / "tucker" / "demo_curve.png", store / "tucker" / "demo_curve.png"
    with Image.open(fig_in) as a, Image.open(fig_out) as b:
        assert a.width == 2400 and b.width == evidence.FIGURE_MAX_WIDTH
        assert abs(b.height / b.width - a.height / a.width) < 0.01
    assert fig_out.stat().st_size < fig_in.stat().st_size / 2


def test_quick_scale_results_are_refused_and_nothing_is_written(tmp_path, code_matches):
    results, store = tmp_path / "results", tmp_path / "evidence"
    _write(results, scale="quick")
    with pytest.raises(ValueError, match=r"tucker/demo: scale='quick'; only full-scale results are evidence"):
        evidence.save(["tucker/demo"], results, store, log=lambda m: None)
    assert not store.exists()
    # Saving everything skips quick-scale files, and says there is nothing to save.
    notes = []
    with pytest.raises(ValueError, match="no full-scale results files"):
        evidence.save([], results, store, log=notes.append)
    assert notes == ["skipped tucker/demo: not full scale (a smoke test, not evidence)"]


@pytest.mark.parametrize("name, message", [
    ("tucker/nope", r"study='tucker/nope': no results file .*results there: \['tucker/demo'\]"),
    ("nopart/demo", r"unknown part 'nopart'"),
    ("tucker", r"expected PART/STUDY"),
    ("tucker/a/b", r"expected PART/STUDY"),
])
def test_unknown_or_malformed_names_are_refused(tmp_path, code_matches, name, message):
    results = tmp_path / "results"
    _write(results)
    with pytest.raises(ValueError, match=message):
        evidence.save([name], results, tmp_path / "evidence", log=lambda m: None)


def test_a_bad_file_among_good_ones_saves_nothing_and_keeps_old_evidence(tmp_path, code_matches):
    results, store = tmp_path / "results", tmp_path / "evidence"
    _write(results)
    evidence.save(["tucker/demo"], results, store, log=lambda m: None)
    before = _snapshot(store)
    _write(results, created="2999-01-01T00:00:00+00:00")  # a newer good file ...
    (results / "tucker" / "broken.json").write_text("{not json")  # ... beside a corrupt one
    with pytest.raises(ValueError, match=r"nothing saved:\n  .*broken.json: not a structlab results file"):
        evidence.save(["tucker/demo", "tucker/broken"], results, store, log=lambda m: None)
    assert _snapshot(store) == before


def test_missing_or_broken_figure_is_refused(tmp_path, code_matches):
    results = tmp_path / "results"
    _write(results)
    (results / "tucker" / "demo_curve.png").unlink()
    with pytest.raises(ValueError, match="figure 'demo_curve.png' is missing"):
        evidence.save(["tucker/demo"], results, tmp_path / "evidence", log=lambda m: None)
    (results / "tucker" / "demo_curve.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="is not a readable image"):
        evidence.save(["tucker/demo"], results, tmp_path / "evidence", log=lambda m: None)


def test_results_whose_last_full_run_failed_are_refused(tmp_path, code_matches):
    results = tmp_path / "results"
    _write(results, created="2000-01-01T00:00:00+00:00")
    record_failure(results, "tucker", "demo", "quick", "RuntimeError: boom")  # a smoke run: irrelevant
    evidence.save(["tucker/demo"], results, tmp_path / "ev1", log=lambda m: None)
    record_failure(results, "tucker", "demo", "full", "RuntimeError: boom")
    with pytest.raises(ValueError, match=r"its last run \(full scale, .*\) failed \(RuntimeError: boom\)"):
        evidence.save(["tucker/demo"], results, tmp_path / "ev2", log=lambda m: None)
    _write(results)  # a successful run removes the note
    assert failure_record(results, "tucker", "demo") is None
    evidence.save(["tucker/demo"], results, tmp_path / "ev2", log=lambda m: None)


def test_results_made_by_other_code_than_their_commit_are_refused(tmp_path, monkeypatch):
    results = tmp_path / "results"
    _write(results)
    monkeypatch.setattr(evidence, "fingerprint_at", lambda commit, part, scale, repo=None: "0" * 16)
    with pytest.raises(ValueError, match=r"made by code other than src/structlab/tucker at .* commit abc1234"):
        evidence.save(["tucker/demo"], results, tmp_path / "evidence", log=lambda m: None)
    monkeypatch.setattr(evidence, "fingerprint_at", lambda commit, part, scale, repo=None: None)
    [saved] = evidence.save(["tucker/demo"], results, tmp_path / "evidence", log=lambda m: None)
    assert "not checked (commit abc1234 is not in this repository)" in evidence.read_evidence(saved).provenance[
        "code_check"]


def test_command_is_recorded_or_given_and_must_run_this_study_at_full_scale(tmp_path, code_matches):
    results, store = tmp_path / "results", tmp_path / "evidence"
    _write(results, command="")
    with pytest.raises(ValueError, match="records no command .* pass --command"):
        evidence.save(["tucker/demo"], results, store, log=lambda m: None)
    template = "taskset -c 1 structlab reproduce --scale full --only {part} --study {study}"
    [saved] = evidence.save(["tucker/demo"], results, store, command=template, log=lambda m: None)
    prov = evidence.read_evidence(saved).provenance
    assert prov["command"] == "taskset -c 1 structlab reproduce --scale full --only tucker --study demo"
    assert prov["command_source"] == "given to structlab evidence save"
    for wrong, message in [
        ("structlab reproduce --scale quick --only tucker", "runs scale 'quick', not full"),
        ("structlab reproduce --only tucker", "runs scale 'quick', not full"),
        ("structlab reproduce --scale full --only relumip", "does not run tucker/demo"),
        ("structlab reproduce --scale full --study other", "does not run tucker/demo"),
        ("structlab reproduce --scale 'full", "is not a shell command line"),
    ]:
        with pytest.raises(ValueError, match=message):
            evidence.save(["tucker/demo"], results, store, command=wrong, replace_newer=True, log=lambda m: None)
    _write(results)  # records COMMAND itself: a different --command is an error, not an override
    with pytest.raises(ValueError, match="differs from the command the file records"):
        evidence.save(["tucker/demo"], results, store, command=template, log=lambda m: None)


def test_older_results_do_not_replace_newer_evidence_unless_asked(tmp_path, code_matches):
    results, store = tmp_path / "results", tmp_path / "evidence"
    _write(results, created="2030-01-01T00:00:00+00:00")
    evidence.save(["tucker/demo"], results, store, log=lambda m: None)
    _write(results, created="2020-01-01T00:00:00+00:00")
    with pytest.raises(ValueError, match="is newer than .* pass --replace-newer"):
        evidence.save(["tucker/demo"], results, store, log=lambda m: None)
    evidence.save(["tucker/demo"], results, store, replace_newer=True, log=lambda m: None)
    assert evidence.read_evidence(store / "tucker" / "demo.json").result.created.startswith("2020")


def test_figures_a_new_run_no_longer_makes_are_removed(tmp_path, code_matches):
    results, store = tmp_path / "results", tmp_path / "evidence"
    _write(results, figures=("demo_a.png", "demo_b.png"))
    evidence.save(["tucker/demo"], results, store, log=lambda m: None)
    assert (store / "tucker" / "demo_b.png").is_file()
    _write(results, figures=("demo_a.png",), created="2999-01-01T00:00:00+00:00")
    evidence.save(["tucker/demo"], results, store, log=lambda m: None)
    assert (store / "tucker" / "demo_a.png").is_file() and not (store / "tucker" / "demo_b.png").exists()


def test_benchmark_results_are_evidence_too(tmp_path, code_matches):
    results, store = tmp_path / "results", tmp_path / "evidence"
    _write(results, study="bench_demo", figures=(), fingerprint="",
           command="OMP_NUM_THREADS=1 python benchmarks/tucker_attention.py --threads 1")
    [saved] = evidence.save([], results, store, log=lambda m: None)
    assert "benchmarks record no code fingerprint" in evidence.read_evidence(saved).provenance["code_check"]
    # a benchmark's missing evidence names its script with the arguments in the script's EVIDENCE_ARGS
    assert evidence.placeholder_commands("tucker", "bench_attention_cuda")[0] == (
        "python benchmarks/tucker_attention.py --device cuda")
    assert evidence.placeholder_commands("tucker", "bench_attention")[0] == "python benchmarks/tucker_attention.py"
    assert evidence.placeholder_commands("relumip", "bench_obbt_scaling")[0] == (
        "python benchmarks/relumip_bounds.py --scale full --jobs 1,2")
    # found by the study it writes where the script is named for no part
    assert evidence.placeholder_commands("jobs", "bench_executor_overhead")[0] == (
        "python benchmarks/executor_overhead.py")


def test_fingerprint_at_a_commit_equals_the_fingerprint_of_its_checked_out_files(tmp_path):
    repo = tmp_path / "repo"
    package = repo / "src" / "structlab" / "tucker"
    # "a.b/c.py" sorts before "a/b.py" as a string but after it by path components (as source_digest sorts).
    for rel, text in {"__init__.py": "x = 1\n", "a/b.py": "y = 2\n", "a.b/c.py": "z = 3\n", "notes.txt": "no"}.items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "code"], check=True)
    commit = subprocess.run([*git[:3], "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    expected = reproduce.source_digest(package, prefix=b"full").hexdigest()[:16]
    assert evidence.fingerprint_at(commit, "tucker", "full", repo=repo) == expected
    (package / "a" / "b.py").write_text("y = 3\n")  # an uncommitted change
    assert evidence.fingerprint_at(commit, "tucker", "full", repo=repo) != reproduce.source_digest(
        package, prefix=b"full").hexdigest()[:16]
    assert evidence.fingerprint_at("0000000", "tucker", "full", repo=repo) is None


def test_reproduce_records_its_command_and_failures(tmp_path, monkeypatch):
    registry: dict = {}
    monkeypatch.setattr(reproduce, "_STUDIES", registry)
    monkeypatch.setattr(reproduce, "load_studies", lambda: dict(registry))
    monkeypatch.setattr("sys.argv", ["/venv/bin/structlab", "--quiet", "reproduce", "--scale", "quick"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    fail = {"now": True}

    @reproduce.study("tucker", "flaky", title="fails once")
    def flaky(ctx):
        if fail["now"]:
            raise RuntimeError("boom")
        return StudyResult(part="tucker", study="flaky", title="fails once", scale=ctx.scale)

    reproduce.run("quick", results_dir=tmp_path, log=lambda m: None)
    note = failure_record(tmp_path, "tucker", "flaky")
    assert note["error"] == "RuntimeError: boom" and note["scale"] == "quick"
    fail["now"] = False
    reproduce.run("quick", results_dir=tmp_path, log=lambda m: None)
    assert failure_record(tmp_path, "tucker", "flaky") is None
    env = read_result(tmp_path / "tucker" / "flaky.json").environment
    assert env["command"].startswith("OMP_NUM_THREADS=1 ") and env["command"].endswith(
        "structlab --quiet reproduce --scale quick")
    assert env["git_dirty"] in (True, False, None) and env["usable_cores"] >= 1


def test_command_line_is_typed_again_as_it_was_run():
    env = {"OMP_NUM_THREADS": "1", "STRUCTLAB_DATA": "/data/my sets", "HOME": "/root"}
    assert command_line(["/x/.venv/bin/structlab", "reproduce", "--only", "tucker"], env) == (
        "OMP_NUM_THREADS=1 STRUCTLAB_DATA='/data/my sets' structlab reproduce --only tucker")
    assert command_line(["/x/src/structlab/cli.py", "report"], {}) == "python -m structlab.cli report"
    assert "git_dirty" in environment() and "command" in environment()


def test_cli_save_and_list(tmp_path, code_matches, capsys):
    results, store = tmp_path / "results", tmp_path / "evidence"
    _write(results, scale="quick")
    assert cli.main(["evidence", "save", "tucker/demo", "--results", str(results), "--evidence", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: nothing saved:") and "Traceback" not in err
    _write(results)
    assert cli.main(["evidence", "save", "tucker/demo", "--results", str(results), "--evidence", str(store)]) == 0
    capsys.readouterr()
    assert cli.main(["evidence", "list", "--evidence", str(store)]) == 0
    out = capsys.readouterr().out
    assert "tucker/demo" in out and "abc1234" in out and "full" in out
    assert "registered studies without evidence:" in out and "tucker/charlm" in out


def _part_is_committed(part: str) -> bool:
    out = subprocess.run(["git", "status", "--porcelain", "--", f"src/structlab/{part}"], capture_output=True,
                         text=True, cwd=evidence.default_evidence_dir().parent, check=False)
    return out.returncode == 0 and not out.stdout.strip()


@pytest.mark.skipif(not _part_is_committed("tucker"), reason="src/structlab/tucker has uncommitted changes")
def test_reproduce_then_save_end_to_end_checks_the_code_against_git(tmp_path, monkeypatch):
    """No stand-ins: a full-scale `reproduce` run records its commit and command, and `save` verifies the
    results' fingerprint against the part's code at that commit through git."""
    registry: dict = {}
    monkeypatch.setattr(reproduce, "_STUDIES", registry)
    monkeypatch.setattr(reproduce, "load_studies", lambda: dict(registry))
    monkeypatch.setattr("sys.argv", ["structlab", "reproduce", "--scale", "full", "--only", "tucker"])
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "STRUCTLAB_DATA", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)

    @reproduce.study("tucker", "e2e", title="end to end")
    def e2e(ctx):
        return StudyResult(part="tucker", study="e2e", title="end to end", scale=ctx.scale,
                           claims=[Claim("it runs", "yes", "agrees")])

    results = tmp_path / "results"
    reproduce.run("full", results_dir=results, log=lambda m: None)
    [saved] = evidence.save(["tucker/e2e"], results, tmp_path / "evidence", log=lambda m: None)
    prov = evidence.read_evidence(saved).provenance
    assert prov["command"] == "structlab reproduce --scale full --only tucker"
    assert prov["code_check"].startswith("the results' fingerprint is that of src/structlab/tucker at ")
