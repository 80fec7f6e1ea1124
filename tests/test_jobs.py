"""The shared job runner: outcomes stored as they finish and trusted only when whole and of the same
fingerprint, failures reported after the other jobs, lost workers replaced; the same on a Ray instance
(slow tests, a local instance of 2 CPUs)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

from structlab.errors import StructlabError
from structlab.jobs import Job, JobsFailed, JobStore, LocalExecutor, RayExecutor, WorkerLost, make_executor, run_jobs


def _square(x: int, calls: str, fail_while: str = "", crash_while: str = "", crash_once: str = "",
            sleep: float = 0.0) -> dict:
    """x squared; appends one line to ``calls`` per run. Raises while the file ``fail_while`` exists, kills
    its own process while ``crash_while`` exists, and once (creating the marker ``crash_once``) if given."""
    if fail_while and Path(fail_while).exists():
        raise ValueError(f"x={x}: told to fail")
    if crash_while and Path(crash_while).exists():
        os._exit(3)
    if crash_once and not Path(crash_once).exists():
        Path(crash_once).touch()
        time.sleep(0.2)  # let the sibling jobs start, so the crash takes work in flight with it
        os._exit(3)
    time.sleep(sleep)
    with open(calls, "a") as handle:
        handle.write(f"{x}\n")
    return {"y": x * x, "pair": (x, -x), "half": np.float64(x / 2)}


def _expected(x: int) -> dict:  # what JSON gives back: tuples as lists, NumPy numbers as floats
    return {"y": x * x, "pair": [x, -x], "half": x / 2}


def _calls(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _jobs(tmp_path: Path, xs, extra: dict[int, dict] | None = None) -> list[Job]:
    """Jobs squaring each of ``xs``, with ``extra[x]`` added to x's arguments."""
    extra = extra or {}
    return [Job(f"square-{x}", _square, {"x": x, "calls": str(tmp_path / "calls.txt"), **extra.get(x, {})})
            for x in xs]


def _quiet(message: str) -> None:
    pass


# --------------------------------------------------------------------------------------------- local
def test_stored_outcomes_are_reused_only_under_the_same_fingerprint(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "runs", salt="v1")
    [job] = _jobs(tmp_path, [3])
    assert run_jobs([job], store=store, log=_quiet) == {"square-3": _expected(3)}
    assert run_jobs([job], store=store, log=_quiet) == {"square-3": _expected(3)}
    assert _calls(tmp_path / "calls.txt") == [3]  # the second run read it back
    run_jobs([job], store=JobStore(tmp_path / "runs", salt="v2"), log=_quiet)
    assert _calls(tmp_path / "calls.txt") == [3, 3]  # another salt (other code): ran again
    run_jobs([replace(job, kwargs={**job.kwargs, "sleep": 0.001})], store=store, log=_quiet)
    assert _calls(tmp_path / "calls.txt") == [3, 3, 3]  # other arguments: ran again
    with pytest.raises(ValueError, match="duplicate"):
        run_jobs([job, replace(job)], store=store)


def test_a_rerun_after_a_partial_run_runs_only_the_missing_jobs(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "runs", salt="v1")
    jobs = _jobs(tmp_path, range(5))
    run_jobs(jobs[:2], store=store, log=_quiet)  # a run stopped after two jobs
    assert run_jobs(jobs, store=store, log=_quiet) == {f"square-{x}": _expected(x) for x in range(5)}
    assert sorted(_calls(tmp_path / "calls.txt")) == [0, 1, 2, 3, 4]  # each ran once


def test_failures_are_reported_after_the_other_jobs_and_a_rerun_repeats_only_them(tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    flag.touch()
    store = JobStore(tmp_path / "runs", salt="v1")
    jobs = _jobs(tmp_path, [2, 5, 3, 7], {5: {"fail_while": str(flag)}, 7: {"fail_while": str(flag)}})
    with pytest.raises(JobsFailed, match=r"2 of 4 jobs failed \(square-5, square-7\); square-5: ValueError") as info:
        run_jobs(jobs, store=store, log=_quiet)
    assert sorted(info.value.failures) == ["square-5", "square-7"]
    assert isinstance(info.value.__cause__, ValueError)
    assert sorted(p.name for p in store.folder.glob("*.json")) == ["square-2.json", "square-3.json"]
    flag.unlink()
    assert run_jobs(jobs, store=store, log=_quiet) == {f"square-{x}": _expected(x) for x in (2, 5, 3, 7)}
    assert sorted(_calls(tmp_path / "calls.txt")) == [2, 3, 5, 7]


@pytest.mark.parametrize("content", [
    "",  # a file created but never written
    '{"fingerprint": "FP", "outcome": {"y": 4',  # cut short
    "\x00\x01 not json",  # garbage
    '{"fingerprint": "FP", "outcome": [1, 2]}',  # whole, but not an outcome
    '{"fingerprint": "0000000000000000", "outcome": {"y": 4}}',  # of another fingerprint
])
def test_a_cut_short_or_corrupt_stored_outcome_is_run_again_not_trusted(tmp_path: Path, content: str) -> None:
    store = JobStore(tmp_path / "runs", salt="v1")
    [job] = _jobs(tmp_path, [2])
    store.folder.mkdir()
    store.path(job).write_text(content.replace("FP", job.fingerprint("v1")))
    assert run_jobs([job], store=store, log=_quiet) == {"square-2": _expected(2)}
    assert _calls(tmp_path / "calls.txt") == [2]
    assert json.loads(store.path(job).read_text())["outcome"] == _expected(2)  # replaced by the real one


def test_an_outcome_that_json_cannot_hold_fails_that_job_and_leaves_no_file(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "runs", salt="v1")
    jobs = [*_jobs(tmp_path, [1]), Job("opaque", _opaque)]
    with pytest.raises(JobsFailed, match=r"1 of 2 jobs failed \(opaque\); opaque: TypeError"):
        run_jobs(jobs, store=store, log=_quiet)
    assert sorted(p.name for p in store.folder.iterdir()) == ["square-1.json"]  # no temporary file left


def _opaque() -> dict:
    return {"value": object()}


def test_worker_processes_give_the_outcomes_of_the_in_process_run(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, range(4))
    expected = {f"square-{x}": _expected(x) for x in range(4)}
    assert run_jobs(jobs, LocalExecutor(), workers=1, log=_quiet) == expected
    assert run_jobs(jobs, LocalExecutor(workers=2), log=_quiet) == expected  # the executor's workers win


def test_a_killed_local_worker_is_replaced_and_the_jobs_it_lost_run_again(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "runs", salt="v1")
    jobs = _jobs(tmp_path, range(4), {1: {"crash_once": str(tmp_path / "crashed")}})
    outcomes = run_jobs(jobs, LocalExecutor(workers=2), store, log=_quiet)
    assert outcomes == {f"square-{x}": _expected(x) for x in range(4)}
    assert (tmp_path / "crashed").exists()
    assert set(_calls(tmp_path / "calls.txt")) == {0, 1, 2, 3}


def test_a_job_that_always_kills_its_worker_is_reported_and_takes_no_other_job_with_it(tmp_path: Path) -> None:
    flag = tmp_path / "crash"
    flag.touch()
    store = JobStore(tmp_path / "runs", salt="v1")
    jobs = _jobs(tmp_path, [0], {0: {"crash_while": str(flag)}}) + _jobs(tmp_path, [1, 2, 3], {
        x: {"sleep": 0.5} for x in (1, 2, 3)})  # in flight beside it when it dies
    with pytest.raises(JobsFailed, match=r"1 of 4 jobs failed \(square-0\); square-0: WorkerLost") as info:
        run_jobs(jobs, LocalExecutor(workers=2, retries=1), store, log=_quiet)
    assert isinstance(info.value.failures["square-0"], WorkerLost)
    assert sorted(p.name for p in store.folder.glob("*.json")) == ["square-1.json", "square-2.json", "square-3.json"]


# ------------------------------------------------------------------------------------ fingerprints
def test_fingerprint_of_plain_arguments_is_the_hash_tucker_stored_runs_were_keyed_by() -> None:
    job = Job("d64-mha-s0", _square, {"x": 3, "calls": "c", "schedule": {"steps": 80, "lr": 3e-3}, "ranks": (2, 8)})
    text = json.dumps([_square.__module__, _square.__qualname__, job.kwargs, "quick-abc"], sort_keys=True, default=str)
    assert job.fingerprint("quick-abc") == hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class _Data:
    X: np.ndarray
    labels: list[str]


def test_fingerprint_reads_arrays_and_dataclasses_by_content() -> None:
    def fingerprint(X: np.ndarray, labels=("l", "r")) -> str:
        return Job("a", _square, {"data": _Data(X, list(labels)), "seed": 0}).fingerprint()

    X = np.arange(12.0).reshape(3, 4)
    changed = X.copy()
    changed[2, 3] += 1e-9
    assert fingerprint(X) == fingerprint(X.copy())
    assert fingerprint(X) not in {fingerprint(changed), fingerprint(X.astype(np.float32)), fingerprint(X.reshape(4, 3)),
                                  fingerprint(X, ("l", "R"))}


@dataclass
class _Recorded:
    X: np.ndarray
    provenance: dict = field(default_factory=dict, compare=False)


def test_a_dataclass_field_declared_compare_false_is_not_part_of_the_fingerprint() -> None:
    """A provenance record (where the data came from, whether a cache was hit) must not make the same job
    look new, or a resumed study reruns what it stored."""
    X = np.arange(6.0)

    def fingerprint(provenance: dict) -> str:
        return Job("a", _square, {"data": _Recorded(X, provenance)}).fingerprint()

    assert fingerprint({"cache": {"hit": False}}) == fingerprint({"cache": {"hit": True}, "path": "/elsewhere"})
    assert fingerprint({}) != Job("a", _square, {"data": _Recorded(X + 1)}).fingerprint()


def test_an_argument_the_fingerprint_cannot_read_needs_an_identity() -> None:
    job = Job("table", _square, {"table": object()})
    with pytest.raises(TypeError, match="job 'table': an argument of type object cannot be fingerprinted"):
        job.fingerprint()
    a = replace(job, identity={"checksums": ["ab", "cd"]})
    assert a.fingerprint() == replace(a, kwargs={"table": object()}).fingerprint()
    assert a.fingerprint() != replace(a, identity={"checksums": ["ab", "ce"]}).fingerprint()


def test_bad_jobs_and_settings_are_refused_with_the_argument_named() -> None:
    with pytest.raises(ValueError, match="key='a/b'"):
        Job("a/b", _square)
    with pytest.raises(ValueError, match="workers=0"):
        run_jobs([], workers=0)
    with pytest.raises(ValueError, match="executor='dask'"):
        make_executor("dask")
    with pytest.raises(ValueError, match="address='127.0.0.1:6379': only the 'ray' executor"):
        make_executor("local", address="127.0.0.1:6379")
    with pytest.raises(ValueError, match="address='head-node': expected HOST:PORT"):
        RayExecutor(address="head-node")
    with pytest.raises(ValueError, match="port 70000 is out of range"):
        RayExecutor(address="head:70000")


def test_the_ray_executor_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(StructlabError, match=r"pip install 'structlab\[cluster\]'"):
        make_executor("ray")


def test_an_address_where_no_ray_head_listens_is_named_before_any_study_runs(tmp_path: Path, capsys) -> None:
    from structlab import cli

    pytest.importorskip("ray")
    with socket.socket() as sock:  # a port that was free a moment ago, and so has nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StructlabError, match=rf"address='127.0.0.1:{port}': no Ray head answers there"):
        RayExecutor(address=f"127.0.0.1:{port}").connect()
    args = ["reproduce", "--executor", "ray", "--address", f"127.0.0.1:{port}", "--results", str(tmp_path)]
    assert cli.main(args) == 2
    assert f"error: address='127.0.0.1:{port}': no Ray head answers there" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing ran


# ----------------------------------------------------------------------------------------------- ray
@pytest.mark.slow
def test_ray_stores_the_others_when_a_job_raises_and_a_worker_dies_and_a_rerun_completes(
    tmp_path: Path, ray_executor: RayExecutor
) -> None:
    fail, crash = tmp_path / "fail", tmp_path / "crash"
    fail.touch()
    crash.touch()
    store = JobStore(tmp_path / "runs", salt="v1")
    jobs = _jobs(tmp_path, range(6), {2: {"fail_while": str(fail)}, 4: {"crash_while": str(crash)},
                                       **{x: {"sleep": 0.3} for x in (0, 1, 3, 5)}})
    with pytest.raises(JobsFailed, match=r"2 of 6 jobs failed") as info:
        run_jobs(jobs, ray_executor, store, log=_quiet)
    assert isinstance(info.value.failures["square-2"], ValueError)  # the job's own exception, not Ray's wrapper
    assert isinstance(info.value.failures["square-4"], WorkerLost)
    assert sorted(p.name for p in store.folder.glob("*.json")) == [f"square-{x}.json" for x in (0, 1, 3, 5)]
    fail.unlink()
    crash.unlink()
    before = _calls(tmp_path / "calls.txt")
    assert run_jobs(jobs, ray_executor, store, log=_quiet) == {f"square-{x}": _expected(x) for x in range(6)}
    assert sorted(_calls(tmp_path / "calls.txt")[len(before):]) == [2, 4]  # only the failed ones ran again


@pytest.mark.slow
def test_ray_retries_a_job_whose_worker_is_killed_mid_task(tmp_path: Path, ray_executor: RayExecutor) -> None:
    jobs = _jobs(tmp_path, range(4), {1: {"crash_once": str(tmp_path / "crashed")}})
    assert run_jobs(jobs, ray_executor, log=_quiet) == {f"square-{x}": _expected(x) for x in range(4)}
    assert (tmp_path / "crashed").exists()


@pytest.mark.slow
def test_ray_gives_the_outcomes_of_the_local_executor_with_a_shared_array_argument(
    tmp_path: Path, ray_executor: RayExecutor
) -> None:
    X = np.random.default_rng(0).normal(size=(200, 50))
    jobs = [Job(f"col-{j}", _column_stats, {"X": X, "column": j}) for j in range(6)]
    local = run_jobs(jobs, LocalExecutor(workers=1), log=_quiet)
    assert run_jobs(jobs, ray_executor, log=_quiet) == local
    assert local["col-3"]["mean"] == pytest.approx(float(X[:, 3].mean()))


def _column_stats(X: np.ndarray, column: int) -> dict:
    return {"mean": float(X[:, column].mean()), "max": float(X[:, column].max())}


# ------------------------------------------------------------------------------- the command line
def test_cli_executor_ray_without_ray_says_how_to_install_it(tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    from structlab import cli

    monkeypatch.setitem(sys.modules, "ray", None)
    assert cli.main(["reproduce", "--executor", "ray", "--results", str(tmp_path)]) == 2
    assert "pip install 'structlab[cluster]'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing ran


def test_cli_refuses_an_address_without_the_ray_executor_and_workers_below_one(tmp_path: Path, capsys) -> None:
    from structlab import cli

    assert cli.main(["reproduce", "--address", "10.0.0.5:6379", "--results", str(tmp_path)]) == 2
    assert "address='10.0.0.5:6379': only the 'ray' executor" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--workers", "0"])
    assert "'0': expected a positive integer" in capsys.readouterr().err


def test_studies_get_the_run_executor_through_their_context_and_it_is_closed(tmp_path: Path, monkeypatch) -> None:
    from structlab import reproduce
    from structlab.results import StudyResult

    registry: dict = {}
    monkeypatch.setattr(reproduce, "_STUDIES", registry)
    monkeypatch.setattr(reproduce, "load_studies", lambda: dict(registry))

    @reproduce.study("tucker", "squares", title="squares")
    def squares(ctx):
        outcomes = ctx.run_jobs(_jobs(tmp_path, range(3)), salt="v1")
        return StudyResult(part="tucker", study="squares", title="squares", scale=ctx.scale,
                           metrics={"y": [o["y"] for o in outcomes.values()]})

    class Recorded(LocalExecutor):
        closed = 0

        def close(self) -> None:
            Recorded.closed += 1

    out = reproduce.run("quick", results_dir=tmp_path, log=_quiet, executor=Recorded(workers=2))
    assert [o.status for o in out] == ["ran"] and Recorded.closed == 1
    assert sorted(p.name for p in (tmp_path / "tucker" / "runs" / "squares").iterdir()) == [
        "square-0.json", "square-1.json", "square-2.json"]


def _record_pid_and_sleep(folder: str) -> dict:
    (Path(folder) / str(os.getpid())).touch()
    time.sleep(120)
    return {}


def _running(pid: int) -> bool:
    """Whether process ``pid`` is alive (a zombie waiting to be reaped counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    """A run killed by SIGKILL (no time to shut its pool down) must not leave workers computing jobs that no
    one will collect."""
    import subprocess
    import sys

    folder = tmp_path / "pids"
    folder.mkdir()
    script = ("from tests.test_jobs import _record_pid_and_sleep\n"
              "from structlab.jobs import Job, LocalExecutor\n"
              f"jobs = [Job(k, _record_pid_and_sleep, {{'folder': {str(folder)!r}}}) for k in ('a', 'b')]\n"
              "list(LocalExecutor().results(jobs, workers=2, threads=1))\n")
    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=root,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "src")])})
    try:
        deadline = time.monotonic() + 120
        while len(list(folder.iterdir())) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        workers = [int(p.name) for p in folder.iterdir()]
        assert all(_running(pid) for pid in workers)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 15
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(pid) for pid in workers)
    finally:
        parent.kill()
