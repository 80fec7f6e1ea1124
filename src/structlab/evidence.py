"""Stored evidence: the full-scale results files that README and docs quote, kept in the repository.

``evidence/<part>/<study>.json`` is a results file (``results.StudyResult``) made by
``structlab reproduce --scale full`` (or a benchmark), copied by :func:`save` with a provenance record
under the key ``"evidence"``: the commit of the code that ran (and whether the checkout had uncommitted
changes), whether the part's code at that commit is the code that made the file, the exact command,
when it was saved. The machine, wall time and package versions are the results file's own
(``environment``, ``wall_seconds``). Figures are stored beside it, downsized; metric blocks too large to
read in a diff (raw measurements) go to ``<study>.raw.json.gz``.

Quick-scale results are smoke tests and are refused, as are results whose last run failed and results
that were made by code other than their recorded commit.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structlab.atomic import atomic_write_bytes, atomic_write_json
from structlab.reproduce import PARTS, fingerprint
from structlab.results import StudyResult, failure_record, find_results, now, read_result, results_path

EVIDENCE_SCHEMA = "structlab.evidence/1"
EVIDENCE_SCALES: tuple[str, ...] = ("full",)
# The four parts, and "jobs": the study runner itself, whose executor benchmark belongs to no part.
EVIDENCE_PARTS: tuple[str, ...] = (*PARTS, "jobs")
# A metric block whose JSON is larger than this goes to the compressed sidecar file.
RAW_LIMIT_BYTES = 64_000
# Stored figures are at most this wide (pixels); 1200 keeps axis labels readable at 100% zoom.
FIGURE_MAX_WIDTH = 1200

_PACKAGE = Path(__file__).resolve().parent
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def default_evidence_dir() -> Path:
    """The checkout's ``evidence/`` folder (beside ``src/``), or ``./evidence`` for an installed package."""
    root = _PACKAGE.parents[1]
    if (root / "pyproject.toml").is_file():
        return root / "evidence"
    return Path("evidence")


def evidence_path(evidence_dir: str | os.PathLike[str], part: str, study: str) -> Path:
    return Path(evidence_dir) / part / f"{study}.json"


@dataclass
class Evidence:
    """One stored results file and its provenance record."""

    path: Path
    result: StudyResult
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.result.part}/{self.result.study}"

    def figure_paths(self) -> list[Path]:
        return [self.path.parent / name for name in self.result.figures]

    def made_on(self) -> dict[str, str]:
        """What docs and the report say of how it was made: ``wall`` time, ``machine`` (processor, usable
        cores, torch threads, GPU), key package ``versions`` and a ``dirty`` note (empty when clean)."""
        res, env = self.result, self.result.environment
        cores = env.get("usable_cores") or env.get("cpu_count")
        machine = f"{env.get('processor') or env.get('machine')}, {cores} usable cores"
        if env.get("torch_threads"):
            machine += f", {env['torch_threads']} torch thread{'s' if env['torch_threads'] != 1 else ''}"
        if env.get("cuda"):
            machine += f", {env['cuda']}"
        packages = env.get("packages", {})
        return {
            "wall": f"{res.wall_seconds:,.0f} s wall" if res.wall_seconds is not None else "wall time not recorded",
            "machine": machine,
            "versions": ", ".join(f"{k} {packages[k]}" for k in ("torch", "numpy", "scikit-learn", "highspy")
                                  if k in packages),
            "dirty": " (uncommitted changes outside the part)" if self.provenance.get("dirty") else "",
        }

    def raw_metrics(self) -> dict[str, Any]:
        """The metric blocks moved to the sidecar file (empty when there is none)."""
        raw = self.provenance.get("raw") or {}
        if not raw:
            return {}
        with gzip.open(self.path.parent / raw["file"], "rt", encoding="utf-8") as handle:
            return json.load(handle)

    def metrics(self, with_raw: bool = False) -> dict[str, Any]:
        """The results file's metrics; ``with_raw`` puts the blocks of the sidecar file back."""
        return {**self.result.metrics, **self.raw_metrics()} if with_raw else self.result.metrics


def read_evidence(path: str | os.PathLike[str]) -> Evidence:
    """Read an evidence file; raises ``ValueError`` naming the file if it is not one."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, found {type(obj).__name__}")
        provenance = obj.pop("evidence", None)
        if not isinstance(provenance, dict) or provenance.get("schema") != EVIDENCE_SCHEMA:
            raise ValueError(f"no provenance record of schema {EVIDENCE_SCHEMA!r} under 'evidence'")
        return Evidence(path, StudyResult.from_dict(obj), provenance)
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a structlab evidence file ({err})") from err


def find_evidence(evidence_dir: str | os.PathLike[str], part: str, study: str) -> Evidence | None:
    """The stored evidence of ``part/study``, or None when there is none."""
    path = evidence_path(evidence_dir, part, study)
    return read_evidence(path) if path.is_file() else None


def load_evidence(evidence_dir: str | os.PathLike[str] | None = None) -> list[Evidence]:
    """Every evidence file under ``evidence_dir``, in part order (an unreadable file raises)."""
    root = Path(evidence_dir) if evidence_dir is not None else default_evidence_dir()
    loaded = [read_evidence(p) for p in sorted(root.glob("*/*.json")) if p.is_file()]
    order = {p: i for i, p in enumerate(PARTS)}
    loaded.sort(key=lambda e: (order.get(e.result.part, len(order)), e.result.study))
    return loaded


# ---------------------------------------------------------------- saving


@dataclass
class _Plan:
    """One results file checked and ready to be stored."""

    source: Path
    result: StudyResult
    raw_text: dict[str, Any]
    command: str
    command_source: str
    code_check: str


def save(
    selection: Sequence[str] = (),
    results_dir: str | os.PathLike[str] = "results",
    evidence_dir: str | os.PathLike[str] | None = None,
    command: str | None = None,
    replace_newer: bool = False,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Copy full-scale results files from ``results_dir`` into ``evidence_dir``; returns the stored paths.

    Args:
        selection: ``"PART/STUDY"`` names (benchmarks too, e.g. ``"tucker/bench_attention"``); empty:
            every full-scale results file in ``results_dir`` (quick-scale ones are skipped with a note).
        results_dir: where ``structlab reproduce`` (or a benchmark) wrote the files.
        evidence_dir: the evidence folder (default: the checkout's ``evidence/``).
        command: the command that made the files, for files written before commands were recorded;
            ``{part}`` and ``{study}`` are replaced per file. A file that records its own command keeps
            it (a different ``command`` is an error).
        replace_newer: replace stored evidence even when it was made later than the results file.

    Every file is checked before anything is written; any problem (unknown study, quick scale, corrupt
    file, missing figure, failed last run, code that differs from the recorded commit, no command)
    raises ``ValueError`` listing all of them, and the evidence folder is left as it was.
    """
    results_dir = Path(results_dir)
    evidence_dir = Path(evidence_dir) if evidence_dir is not None else default_evidence_dir()
    if not results_dir.is_dir():
        raise ValueError(f"results={str(results_dir)!r}: no such folder (run structlab reproduce --scale full)")
    chosen = _select(selection, results_dir, log)
    plans, problems = [], []
    for source in chosen:
        try:
            plans.append(_check(source, results_dir, evidence_dir, command, replace_newer))
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError("nothing saved:\n  " + "\n  ".join(problems))
    saved = []
    for plan in plans:
        saved.append(_store(plan, evidence_dir))
        res = plan.result
        log(f"saved {res.part}/{res.study} (commit {res.environment.get('git_commit')}) -> {saved[-1]}")
    return saved


def _select(selection: Sequence[str], results_dir: Path, log: Callable[[str], None]) -> list[Path]:
    if not selection:
        found, skipped = [], []
        for path in find_results(results_dir):
            try:
                scale = read_result(path).scale
            except ValueError:
                scale = None  # unreadable: _check says why
            (found if scale in (*EVIDENCE_SCALES, None) else skipped).append(path)
        for path in skipped:
            log(f"skipped {path.parent.name}/{path.stem}: not full scale (a smoke test, not evidence)")
        if not found:
            raise ValueError(
                f"results={str(results_dir)!r}: no full-scale results files "
                "(run structlab reproduce --scale full, or name PART/STUDY)"
            )
        return found
    paths = []
    for name in selection:
        part, sep, study = name.partition("/")
        if not sep or not part or not study or "/" in study:
            raise ValueError(f"study={name!r}: expected PART/STUDY, e.g. tucker/charlm")
        if part not in EVIDENCE_PARTS:
            raise ValueError(f"study={name!r}: unknown part {part!r}; expected one of {EVIDENCE_PARTS}")
        path = results_path(results_dir, part, study)
        if not path.is_file():
            known = sorted(f"{p.parent.name}/{p.stem}" for p in find_results(results_dir))
            raise ValueError(f"study={name!r}: no results file {path}; results there: {known or 'none'}")
        paths.append(path)
    return paths


def _check(
    source: Path, results_dir: Path, evidence_dir: Path, command: str | None, replace_newer: bool
) -> _Plan:
    label = f"{source.parent.name}/{source.stem}"
    result = read_result(source)  # ValueError names the file
    if (result.part, result.study) != (source.parent.name, source.stem):
        raise ValueError(f"{source}: holds {result.part}/{result.study}, not {label}")
    if result.scale not in EVIDENCE_SCALES:
        raise ValueError(
            f"{label}: scale={result.scale!r}; only full-scale results are evidence "
            f"(run structlab reproduce --scale full --only {result.part} --study {result.study})"
        )
    failed = failure_record(results_dir, result.part, result.study)
    if failed and failed.get("scale", "full") in EVIDENCE_SCALES and failed.get("time", "") >= result.created:
        raise ValueError(
            f"{label}: its last run ({failed.get('scale')} scale, {failed.get('time')}) failed "
            f"({failed.get('error')}); {source} is from an earlier run ({result.created}). Rerun the study, "
            f"or delete {results_dir / result.part / ('.' + result.study + '.failed')} to store the earlier results"
        )
    for fig in result.figures:
        if not _SAFE_NAME.match(fig):
            raise ValueError(f"{label}: figure name {fig!r} is not a plain file name")
        _check_png(source.parent / fig, label)
    env = result.environment
    if not env.get("git_commit"):
        raise ValueError(f"{label}: records no git commit (run it from a git checkout)")
    code_check = _code_check(result)
    recorded = env.get("command") or ""
    if recorded:
        if command and _fill(command, result) != recorded:
            raise ValueError(
                f"{label}: --command {_fill(command, result)!r} differs from the command the file records "
                f"({recorded!r}); leave --command out"
            )
        cmd, cmd_source = recorded, "recorded by the run"
    elif command:
        cmd, cmd_source = _fill(command, result), "given to structlab evidence save"
    else:
        raise ValueError(f"{label}: records no command (made before commands were recorded); pass --command")
    _check_command(cmd, result, label)
    old_path = evidence_path(evidence_dir, result.part, result.study)
    if old_path.is_file() and not replace_newer:
        try:
            old = read_evidence(old_path)
        except ValueError:
            old = None  # a broken stored file is replaced
        if old is not None and old.result.created > result.created:
            raise ValueError(
                f"{label}: the stored evidence ({old.result.created}, commit "
                f"{old.result.environment.get('git_commit')}) is newer than {source} ({result.created}); "
                "pass --replace-newer to replace it"
            )
    return _Plan(source, result, _split_raw(result), cmd, cmd_source, code_check)


def _fill(command: str, result: StudyResult) -> str:
    return command.replace("{part}", result.part).replace("{study}", result.study)


def _check_command(cmd: str, result: StudyResult, label: str) -> None:
    """A ``reproduce`` command must be full scale and must name this study if it names any."""
    try:
        words = shlex.split(cmd)
    except ValueError as err:
        raise ValueError(f"{label}: command {cmd!r} is not a shell command line ({err})") from err
    if "reproduce" not in words:
        return  # a benchmark script: its arguments are its own
    scale = _option_values(words, "--scale") or ["quick"]
    if scale[-1] not in EVIDENCE_SCALES:
        raise ValueError(f"{label}: command {cmd!r} runs scale {scale[-1]!r}, not full")
    only, studies = _option_values(words, "--only"), _option_values(words, "--study")
    if (only and result.part not in only) or (studies and result.study not in studies):
        raise ValueError(f"{label}: command {cmd!r} does not run {label}")


def _option_values(words: list[str], option: str) -> list[str]:
    values = []
    for i, word in enumerate(words):
        if word == option and i + 1 < len(words):
            values.append(words[i + 1])
        elif word.startswith(option + "="):
            values.append(word.split("=", 1)[1])
    return values


def _check_png(path: Path, label: str) -> None:
    if not path.is_file():
        raise ValueError(f"{label}: figure {path.name!r} is missing from {path.parent}")
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # noqa: BLE001 - any decoding error means a broken figure
        raise ValueError(f"{label}: figure {path} is not a readable image ({err})") from err


def _code_check(result: StudyResult) -> str:
    """Compare the results file's source fingerprint with the part's code at its recorded commit.

    Raises ``ValueError`` when they differ: the file was made by other code than the commit it names
    (uncommitted changes to the part, or a results file carried over from another checkout).
    """
    commit = result.environment["git_commit"]
    if not result.fingerprint:
        return "not recorded (benchmarks record no code fingerprint)"
    expected = fingerprint_at(commit, result.part, result.scale)
    if expected is None:
        return f"not checked (commit {commit} is not in this repository)"
    if expected != result.fingerprint:
        raise ValueError(
            f"{result.part}/{result.study}: made by code other than src/structlab/{result.part} at its recorded "
            f"commit {commit} (fingerprint {result.fingerprint}, the commit's {expected}): uncommitted changes "
            "when it ran; commit them and rerun"
        )
    return f"the results' fingerprint is that of src/structlab/{result.part} at {commit}"


def fingerprint_at(commit: str, part: str, scale: str, repo: str | os.PathLike[str] | None = None) -> str | None:
    """``reproduce.fingerprint(part, scale)`` of the code at git ``commit`` of ``repo`` (default: the
    checkout this package is in), or None if git cannot say (no checkout, unknown commit)."""

    root = str(repo) if repo is not None else _git_output(["rev-parse", "--show-toplevel"])
    if root is None:
        return None
    prefix = f"src/structlab/{part}/"
    listing = _git_output(["ls-tree", "-r", "--name-only", commit, "--", prefix], cwd=root)
    if listing is None:
        return None
    names = [n for n in listing.splitlines() if n.endswith(".py")]
    # source_digest sorts Path objects, i.e. by path components, not by the string.
    names.sort(key=lambda n: tuple(n[len(prefix):].split("/")))
    digest = hashlib.sha256(scale.encode())
    for name in names:
        blob = subprocess.run(["git", "show", f"{commit}:{name}"], capture_output=True, cwd=root, check=False)
        if blob.returncode != 0:
            return None
        digest.update(name[len(prefix):].encode())
        digest.update(blob.stdout)
    return digest.hexdigest()[:16]


def _git_output(args: Sequence[str], cwd: Path | str = _PACKAGE) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _split_raw(result: StudyResult) -> dict[str, Any]:
    """The metric blocks too large to keep in the readable file (key -> value)."""
    raw = {}
    for key, value in result.metrics.items():
        if len(json.dumps(value, default=str)) > RAW_LIMIT_BYTES:
            raw[key] = value
    return raw


def compact_png(path: str | os.PathLike[str], max_width: int = FIGURE_MAX_WIDTH) -> bytes:
    """``path``'s image as a small PNG: at most ``max_width`` pixels wide, 256 colours (plots use few)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.width > max_width:
            height = round(image.height * max_width / image.width)
            image = image.resize((max_width, height), Image.Resampling.LANCZOS)
        if image.mode not in ("RGB", "RGBA", "P"):
            image = image.convert("RGBA")
        if image.mode == "RGBA" and image.getextrema()[3][0] == 255:
            image = image.convert("RGB")  # opaque: drop the alpha channel before quantising
        if image.mode != "P":
            image = image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _store(plan: _Plan, evidence_dir: Path) -> Path:
    res = plan.result
    folder = evidence_dir / res.part
    target = evidence_path(evidence_dir, res.part, res.study)
    old_files: set[str] = set()
    if target.is_file():
        with contextlib.suppress(ValueError):
            old = read_evidence(target)
            old_files = set(old.result.figures)
            if old.provenance.get("raw"):
                old_files.add(old.provenance["raw"]["file"])
    # Figures and the raw block first, the JSON that names them last: an interruption leaves the old
    # JSON in place (its figures may already be the new ones, never missing).
    for fig in res.figures:
        atomic_write_bytes(folder / fig, compact_png(plan.source.parent / fig))
    raw_name = f"{res.study}.raw.json.gz"
    if plan.raw_text:
        payload = json.dumps(plan.raw_text, default=str, separators=(",", ":")).encode()
        atomic_write_bytes(folder / raw_name, gzip.compress(payload, mtime=0))
    obj = res.to_dict()
    obj["metrics"] = {
        k: ({"stored_in": raw_name} if k in plan.raw_text else v) for k, v in res.metrics.items()
    }
    env = res.environment
    obj["evidence"] = {
        "schema": EVIDENCE_SCHEMA,
        "saved": now(),
        "source": str(plan.source),
        "commit": env.get("git_commit"),
        "dirty": env.get("git_dirty"),
        "code_check": plan.code_check,
        "command": plan.command,
        "command_source": plan.command_source,
        "saved_at_commit": _git_output(["rev-parse", "--short", "HEAD"]),
        "raw": {"file": raw_name, "metrics": sorted(plan.raw_text)} if plan.raw_text else None,
    }
    atomic_write_json(target, obj)
    keep = set(res.figures) | ({raw_name} if plan.raw_text else set())
    for name in old_files - keep:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    return target


# ---------------------------------------------------------------- listing


def registered_studies() -> list[tuple[str, str]]:
    from structlab.reproduce import load_studies

    order = {p: i for i, p in enumerate(PARTS)}
    return sorted(load_studies(), key=lambda k: (order[k[0]], k[1]))


def listing(evidence_dir: str | os.PathLike[str] | None = None) -> tuple[list[list[str]], list[str]]:
    """Rows (study, made, commit, scale, wall time, code now, figures) of the stored evidence, and the
    registered studies that have none."""
    rows = []
    stored = set()
    root = Path(evidence_dir) if evidence_dir is not None else default_evidence_dir()
    for path in sorted(root.glob("*/*.json")):
        try:
            ev = read_evidence(path)
        except ValueError as err:
            rows.append([f"{path.parent.name}/{path.stem}", "UNREADABLE", str(err)[:60], "", "", "", ""])
            continue
        res, prov = ev.result, ev.provenance
        stored.add((res.part, res.study))
        commit = str(prov.get("commit")) + (" (dirty)" if prov.get("dirty") else "")
        if not res.fingerprint:
            code = "benchmark"
        elif res.fingerprint == fingerprint(res.part, res.scale):
            code = "same as now"
        else:
            code = "changed since"
        wall = f"{res.wall_seconds:,.0f} s" if res.wall_seconds is not None else "?"
        rows.append([ev.label, res.created[:10], commit, res.scale, wall, code, str(len(res.figures))])
    missing = [f"{p}/{s}" for p, s in registered_studies() if (p, s) not in stored]
    return rows, missing


def format_listing(rows: list[list[str]], missing: list[str]) -> str:
    header = ["evidence", "made", "commit", "scale", "wall time", "part's code", "figures"]
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    if not rows:
        lines = ["no evidence stored yet"]
    lines.append("")
    lines.append("registered studies without evidence: " + (", ".join(missing) if missing else "none"))
    return "\n".join(lines)


def placeholder_commands(part: str, study: str) -> list[str]:
    """The commands that make the evidence of ``part/study`` (what docs and the report say while it is
    missing). A benchmark ``bench_X...`` is made by ``benchmarks/<part>_X.py``, with the arguments that its
    ``EVIDENCE_ARGS`` (study -> arguments, a literal dict read without importing the script) gives."""
    save_cmd = f"structlab evidence save {part}/{study}"
    if not study.startswith("bench_"):
        return [f"structlab reproduce --scale full --only {part} --study {study}", save_cmd]
    scripts = sorted((_PACKAGE.parents[1] / "benchmarks").glob("*.py"), key=lambda p: -len(p.stem))
    prefix = part + "_"
    by_name = [s for s in scripts if s.stem.startswith(prefix) and study.startswith("bench_" + s.stem[len(prefix):])]
    by_text = [s for s in scripts if f'study="{study}"' in s.read_text()]
    for script in by_name or by_text:
        args = _evidence_args(script).get(study, "")
        return [f"python benchmarks/{script.name} {args}".rstrip(), save_cmd]
    return [f"the benchmark in benchmarks/ that writes results/{part}/{study}.json", save_cmd]


def _evidence_args(script: Path) -> dict[str, str]:
    """A benchmark script's module-level ``EVIDENCE_ARGS`` literal, or {} where it has none."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "EVIDENCE_ARGS" for t in targets) and node.value is not None:
                return ast.literal_eval(node.value)
    return {}
