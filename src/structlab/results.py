"""The one results-file format every study writes: ``results/<part>/<study>.json``.

A results file holds what was measured (metrics with their spread, tables), how (configuration,
seeds, data sources and whether they were synthetic, package versions, machine, wall time), the
figures beside it, and the paper's claims set against the measurements. ``structlab report`` renders
every such file; README and docs quote numbers from them, never from constants in code.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from structlab.atomic import atomic_write_json

SCHEMA = "structlab.result/1"

Verdict = Literal["agrees", "partly agrees", "disagrees", "inconclusive", "not measured"]
VERDICTS: tuple[str, ...] = ("agrees", "partly agrees", "disagrees", "inconclusive", "not measured")

# Versions worth recording for any study; a study may add its own.
_PACKAGES = (
    "structlab", "torch", "numpy", "scipy", "scikit-learn", "safetensors", "highspy", "pyscipopt",
    "mne", "pyriemann", "librosa", "soundfile", "matplotlib",
)


@dataclass
class Table:
    """A table of results: ``rows`` are lists aligned with ``columns``."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"rows[{i}] has {len(row)} cells; expected {len(self.columns)} (columns={self.columns})"
                )


@dataclass
class Claim:
    """A claim of the paper (or a goal of an issue) set against what was measured."""

    claim: str
    measured: str
    verdict: Verdict
    why: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict={self.verdict!r}: expected one of {VERDICTS}")


@dataclass
class StudyResult:
    """What one study measured. ``reproduce`` adds the environment, wall time and fingerprint."""

    part: str
    study: str
    title: str
    scale: str
    summary: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # file names beside the results file
    claims: list[Claim] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float | None = None
    created: str = ""
    fingerprint: str = ""
    schema: str = SCHEMA

    @property
    def synthetic(self) -> bool:
        """True when any data source of the study was a synthetic stand-in."""
        return any(d.get("synthetic") for d in self.data)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["synthetic"] = self.synthetic
        return out

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> StudyResult:
        if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
            found = obj.get("schema") if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"schema={found!r}: expected {SCHEMA!r}")
        obj = dict(obj)
        obj.pop("synthetic", None)
        obj["tables"] = [Table(**t) for t in obj.get("tables", [])]
        obj["claims"] = [Claim(**c) for c in obj.get("claims", [])]
        return cls(**obj)


def spread(values: Iterable[float]) -> dict[str, Any]:
    """Mean, sample standard deviation, median, min, max and n of ``values`` (NaNs dropped, kept in n_nan)."""
    raw = [float(v) for v in values]
    vals = [v for v in raw if not math.isnan(v)]
    if not vals:
        return {"n": 0, "n_nan": len(raw), "values": raw}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "n_nan": len(raw) - len(vals),
        "values": raw,
    }


def format_spread(s: dict[str, Any], digits: int = 3) -> str:
    """``mean ± std (n)`` for a :func:`spread` record."""
    if not s.get("n"):
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} (n={s['n']})"


def environment(extra_packages: Sequence[str] = ()) -> dict[str, Any]:
    """Python, machine, package versions, the git commit (and whether the tree had uncommitted changes)
    and the command line, for the record."""
    versions = {}
    for name in (*_PACKAGES, *extra_packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "packages": versions,
        "git_commit": _git(["rev-parse", "--short", "HEAD"]),
        "git_dirty": _git_dirty(),
        "command": command_line(),
    }
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return env


# Variables that change what a run measures or how fast: recorded in front of the command.
_COMMAND_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "STRUCTLAB_DATA", "CUDA_VISIBLE_DEVICES")


def command_line(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> str:
    """The command that started this process, as one would type it again: the variables of
    ``_COMMAND_ENV`` that are set, then the program (``structlab``, ``python -m structlab.cli`` or
    ``python SCRIPT``) and its arguments, shell-quoted."""
    argv = list(sys.argv if argv is None else argv)
    env = os.environ if env is None else env
    if not argv:
        return ""
    program = Path(argv[0])
    if program.name == "structlab":
        head = ["structlab"]
    elif program.name == "__main__.py" or program.as_posix().endswith("structlab/cli.py"):
        head = ["python", "-m", "structlab.cli"]
    elif program.suffix == ".py":
        head = ["python", _relative(program)]
    else:
        head = [program.name]
    prefix = [f"{k}={shlex.quote(env[k])}" for k in _COMMAND_ENV if env.get(k)]
    return " ".join([*prefix, shlex.join([*head, *argv[1:]])])


def _relative(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (``benchmarks/x.py``)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count()


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _git(args: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _git_dirty() -> bool | None:
    """Whether tracked files of the checkout differ from its commit (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def results_path(results_dir: str | os.PathLike[str], part: str, study: str) -> Path:
    return Path(results_dir) / part / f"{study}.json"


def write_result(result: StudyResult, results_dir: str | os.PathLike[str]) -> Path:
    """Write ``result`` atomically to ``<results_dir>/<part>/<study>.json``; returns the path."""
    path = results_path(results_dir, result.part, result.study)
    for fig in result.figures:
        if not (path.parent / fig).is_file():
            raise ValueError(f"figures: {fig!r} is not a file in {path.parent}")
    atomic_write_json(path, result.to_dict())
    with contextlib.suppress(FileNotFoundError):
        failure_path(results_dir, result.part, result.study).unlink()
    return path


def failure_path(results_dir: str | os.PathLike[str], part: str, study: str) -> Path:
    """Where ``reproduce`` notes that the last run of a study failed (removed when a run succeeds)."""
    return Path(results_dir) / part / f".{study}.failed"


def record_failure(results_dir: str | os.PathLike[str], part: str, study: str, scale: str, error: str) -> None:
    """Note that a run of ``part/study`` failed, so that its older results file is not taken for this run's."""
    atomic_write_json(failure_path(results_dir, part, study), {
        "part": part, "study": study, "scale": scale, "error": error, "time": now(), "command": command_line(),
    })


def failure_record(results_dir: str | os.PathLike[str], part: str, study: str) -> dict[str, Any] | None:
    """The note of :func:`record_failure`, or None when the last run did not fail (or left no note)."""
    path = failure_path(results_dir, part, study)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return {"error": "unreadable failure note", "time": "9999"}  # unreadable: assume the worst
    return record if isinstance(record, dict) else {"error": "unreadable failure note", "time": "9999"}


def finish(result: StudyResult, results_dir: str | os.PathLike[str], wall_seconds: float | None = None) -> Path:
    """Stamp ``result`` with the environment, time of writing and wall time, then write it.

    Benchmarks (``benchmarks/*.py``) call this directly with ``study="bench_<name>"``; ``reproduce``
    calls it for studies (adding the source fingerprint that makes results current).
    """
    result.environment = environment()
    result.created = now()
    if wall_seconds is not None:
        result.wall_seconds = wall_seconds
    return write_result(result, results_dir)


def read_result(path: str | os.PathLike[str]) -> StudyResult:
    """Read a results file; raises ``ValueError`` naming the file if it is not one."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
        return StudyResult.from_dict(obj)
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a structlab results file ({err})") from err


def find_results(results_dir: str | os.PathLike[str]) -> list[Path]:
    """Every results file under ``results_dir`` (``<part>/<study>.json``), sorted."""
    root = Path(results_dir)
    return sorted(p for p in root.glob("*/*.json") if p.is_file())
