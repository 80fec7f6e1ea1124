"""The main job: every part's studies at one scale, then the report.

Each part registers its studies in its module or package ``structlab.<part>.studies`` with :func:`study`::

    from structlab.reproduce import StudyContext, study
    from structlab.results import StudyResult

    @study("tucker", "charlm", title="Character-level language model on Shakespeare")
    def charlm(ctx: StudyContext) -> StudyResult:
        ...

``run`` imports those modules, runs each study whose results are not current (the study's source
fingerprint and scale are recorded in its results file), writes ``results/<part>/<study>.json`` and
renders the report.
"""

from __future__ import annotations

import hashlib
import importlib
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from structlab import runtime
from structlab.results import StudyResult, finish, read_result, record_failure, results_path

Scale = Literal["quick", "full"]
SCALES: tuple[str, ...] = ("quick", "full")
PARTS: tuple[str, ...] = ("tucker", "subject", "relumip", "audiopairs")
DEFAULT_RESULTS = Path("results")


@dataclass
class StudyContext:
    """What a study gets: its scale, where to write figures, and a logger."""

    part: str
    study: str
    scale: Scale
    results_dir: Path
    log: Callable[[str], None] = print

    @property
    def out_dir(self) -> Path:
        """The folder of this part's results; figures go here."""
        path = self.results_dir / self.part
        path.mkdir(parents=True, exist_ok=True)
        return path

    def figure_path(self, name: str) -> Path:
        """Where to save figure ``name`` (e.g. ``"pareto.png"``); list the returned path's ``.name`` in ``figures``."""
        return self.out_dir / f"{self.study}_{name}"

    @property
    def quick(self) -> bool:
        return self.scale == "quick"


@dataclass(frozen=True)
class Study:
    part: str
    name: str
    title: str
    run: Callable[[StudyContext], StudyResult]


_STUDIES: dict[tuple[str, str], Study] = {}


def study(part: str, name: str, title: str) -> Callable[[Callable[[StudyContext], StudyResult]], Callable]:
    """Register a study function of ``part`` under ``name``."""
    if part not in PARTS:
        raise ValueError(f"part={part!r}: expected one of {PARTS}")

    def register(fn: Callable[[StudyContext], StudyResult]) -> Callable[[StudyContext], StudyResult]:
        _STUDIES[(part, name)] = Study(part, name, title, fn)
        return fn

    return register


def load_studies() -> dict[tuple[str, str], Study]:
    """Import every part's ``studies`` module (a part without one yet is skipped) and return the registry."""
    for part in PARTS:
        module = f"structlab.{part}.studies"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name not in (module, f"structlab.{part}"):
                raise
    return dict(_STUDIES)


def source_digest(package: Path, exclude: Sequence[str] = (), prefix: bytes = b"") -> hashlib._Hash:
    """SHA-256 of ``prefix`` and every ``*.py`` file below ``package`` (relative path and contents, in
    sorted order), leaving out files and folders named in ``exclude`` (a name matches at any depth).
    Parts key stored work on it, so a change to the code that made the work invalidates it; ``update``
    the result to add more."""
    digest = hashlib.sha256(prefix)
    for path in sorted(package.rglob("*.py")):
        if not set(path.relative_to(package).parts) & set(exclude):
            digest.update(path.relative_to(package).as_posix().encode())
            digest.update(path.read_bytes())
    return digest


def fingerprint(part: str, scale: str) -> str:
    """A hash of the part's source code and the scale: results with another fingerprint are stale."""
    return source_digest(Path(__file__).parent / part, prefix=scale.encode()).hexdigest()[:16]


def is_current(spec: Study, scale: str, results_dir: Path) -> bool:
    path = results_path(results_dir, spec.part, spec.name)
    if not path.is_file():
        return False
    try:
        old = read_result(path)
    except ValueError:
        return False
    return old.scale == scale and old.fingerprint == fingerprint(spec.part, scale)


@dataclass
class Outcome:
    part: str
    study: str
    status: Literal["ran", "current", "failed"]
    seconds: float = 0.0
    error: str = ""


def run(
    scale: Scale = "quick",
    only: list[str] | None = None,
    studies: list[str] | None = None,
    force: bool = False,
    results_dir: Path = DEFAULT_RESULTS,
    log: Callable[[str], None] = print,
) -> list[Outcome]:
    """Run the registered studies at ``scale``; a failing study is reported and the others go on."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: expected one of {SCALES}")
    for part in only or []:
        if part not in PARTS:
            raise ValueError(f"only={part!r}: expected parts from {PARTS}")
    registry = load_studies()
    chosen = [
        s for s in registry.values()
        if (not only or s.part in only) and (not studies or s.name in studies)
    ]
    if studies:
        unknown = set(studies) - {s.name for s in chosen}
        if unknown:
            known = sorted(s.name for s in registry.values())
            raise ValueError(f"study={sorted(unknown)}: no such study; known: {known}")
    results_dir = Path(results_dir)
    outcomes: list[Outcome] = []
    for spec in sorted(chosen, key=lambda s: (PARTS.index(s.part), s.name)):
        label = f"{spec.part}/{spec.name}"
        if not force and is_current(spec, scale, results_dir):
            log(f"[{label}] results are current (use --force to rerun)")
            outcomes.append(Outcome(spec.part, spec.name, "current"))
            continue
        log(f"[{label}] {spec.title} ({scale} scale)")
        ctx = StudyContext(spec.part, spec.name, scale, results_dir, log=lambda msg, _l=label: log(f"[{_l}] {msg}"))
        start = time.perf_counter()
        try:
            runtime.seed_everything(0)
            result = spec.run(ctx)
            if (result.part, result.study, result.scale) != (spec.part, spec.name, scale):
                raise ValueError(
                    f"study returned part/study/scale {result.part}/{result.study}/{result.scale}, "
                    f"expected {spec.part}/{spec.name}/{scale}"
                )
            result.fingerprint = fingerprint(spec.part, scale)
            path = finish(result, results_dir, wall_seconds=time.perf_counter() - start)
            outcomes.append(Outcome(spec.part, spec.name, "ran", result.wall_seconds))
            log(f"[{label}] done in {result.wall_seconds:.0f} s -> {path}")
        except Exception as err:  # noqa: BLE001 - one failing study must not stop the others
            seconds = time.perf_counter() - start
            log(f"[{label}] FAILED after {seconds:.0f} s: {type(err).__name__}: {err}")
            log(traceback.format_exc())
            record_failure(results_dir, spec.part, spec.name, scale, f"{type(err).__name__}: {err}")
            outcomes.append(Outcome(spec.part, spec.name, "failed", seconds, f"{type(err).__name__}: {err}"))
    return outcomes
