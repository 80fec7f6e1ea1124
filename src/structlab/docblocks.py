"""Marked blocks in README.md and docs/*.md, generated from stored evidence so quoted numbers cannot drift.

A block is an HTML comment that names a study's evidence file (``evidence/PART/STUDY.json``) and what
to take from it, the generated text, and a closing comment::

    <!-- evidence:tucker/charlm table="Validation loss" columns="d,attention,validation loss" -->
    | d | attention | validation loss |
    ...
    <!-- /evidence -->

What a block shows (exactly one of):

``table="TITLE"``
    a table of the results file: its exact title, or a part of it that matches one title
    (case-insensitive). ``columns="a,b"`` keeps and orders columns by name; ``rows="COL=v1|v2; COL2=v"``
    keeps rows whose cells read one of the values (without ``COL=`` the first column; ``v*`` matches
    cells starting with ``v``);
    ``note=no`` leaves out the table's note. With ``cell`` the selection must be one cell, written inline.
``claims``
    the claims table (claim | measured | verdict; ``why`` adds that column); ``claim="part of a claim|..."``
    keeps the claims containing one of the texts. With ``field="measured"`` (or ``verdict``, ``claim``,
    ``why``) the selection must be one claim, and that field is written inline.
``metric="dotted.path"``
    one value of the results file's ``metrics`` (list indices as numbers; ``config.x``,
    ``environment.x`` and ``wall_seconds`` reach those fields), inline. ``format="{:.3f}"`` formats it
    (``"{mean:.3f} ± {std:.3f}"`` for a spread record); by default numbers get 4 significant digits.
``figure="NAME.png"``
    the stored figure as a Markdown image (path relative to the document); ``alt="..."`` for its text.
``provenance``
    one paragraph: command, commit, date, wall time, machine, package versions.

Where the evidence file does not exist yet a block says so and how to make it ("no evidence yet: run
..."); ``structlab report --docs`` rewrites every block, and the test in ``tests/test_docs_evidence.py``
fails when a block differs from what the evidence gives.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from structlab.atomic import atomic_write_text
from structlab.evidence import Evidence, default_evidence_dir, find_evidence, placeholder_commands
from structlab.report import cell_text, markdown_table

OPEN = re.compile(r"<!--\s*evidence:(?P<target>[^\s>]+)(?P<options>.*?)-->", re.S)
CLOSE = "<!-- /evidence -->"
_OPTION = re.compile(r"\s*(?P<key>[a-z_]+)(?:=(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'|(?P<bare>[^\s\"'=]+)))?(?=\s|$)")
KINDS = ("table", "claims", "metric", "figure", "provenance")
_OPTIONS = {
    "table": {"columns", "rows", "note", "cell"},
    "claims": {"claim", "why", "field", "columns"},
    "metric": {"format"},
    "figure": {"alt"},
    "provenance": set(),
}
_CLAIM_FIELDS = ("claim", "measured", "verdict", "why")


@dataclass
class Block:
    """One marked block of a document: where it is, what it asks for, what it holds now."""

    path: Path
    line: int
    marker: str  # the opening comment as written
    part: str
    study: str
    kind: str
    options: dict[str, str]
    body_start: int
    body_end: int
    body: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def inline(self) -> bool:
        return (
            self.kind == "metric"
            or (self.kind == "table" and "cell" in self.options)
            or (self.kind == "claims" and "field" in self.options)
        )


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[`~]*[ \t]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`)(?:(?!\n[ \t]*\n).)+?(?<!`)\1(?!`)", re.S)  # not across paragraphs


def _mask_code(text: str) -> str:
    """``text`` with fenced code blocks and inline code spans blanked (same length): a marker shown as
    an example in code is documentation, not a block."""
    def blank(m: re.Match) -> str:
        return re.sub(r"[^\n]", " ", m.group(0))

    return _CODE_SPAN.sub(blank, _FENCE.sub(blank, text))


def find_blocks(text: str, path: str | os.PathLike[str] = "<text>") -> list[Block]:
    """Every marked block of ``text`` (outside code); raises ``ValueError`` naming the file and line of a
    malformed one."""
    path = Path(path)
    masked = _mask_code(text)
    blocks, pos = [], 0
    while (match := OPEN.search(masked, pos)) is not None:
        line = text.count("\n", 0, match.start()) + 1
        marker = match.group(0)
        close = masked.find(CLOSE, match.end())
        nested = OPEN.search(masked, match.end())
        if close < 0 or (nested is not None and nested.start() < close):
            raise ValueError(f"{path}:{line}: {marker} has no closing {CLOSE} before the next block")
        part, study, kind, options = _parse_marker(match.group("target"), match.group("options"), f"{path}:{line}")
        blocks.append(Block(path, line, marker, part, study, kind, options, match.end(), close,
                            text[match.end():close]))
        pos = close + len(CLOSE)
    stray = masked.find(CLOSE, pos)
    if stray >= 0:
        raise ValueError(f"{path}:{text.count(chr(10), 0, stray) + 1}: {CLOSE} without an opening block")
    return blocks


def _parse_marker(target: str, raw: str, where: str) -> tuple[str, str, str, dict[str, str]]:
    part, sep, study = target.partition("/")
    if not sep or not part or not study:
        raise ValueError(f"{where}: evidence:{target}: expected evidence:PART/STUDY")
    options: dict[str, str] = {}
    pos, raw = 0, raw.rstrip()
    while pos < len(raw):
        m = _OPTION.match(raw, pos)
        if m is None or m.end() == pos:
            raise ValueError(
                f"{where}: cannot read the options {raw[pos:].strip()!r} (expected key=\"value\" or a word)"
            )
        value = next((m.group(g) for g in ("dq", "sq", "bare") if m.group(g) is not None), None)
        options[m.group("key")] = value if value is not None else ""
        pos = m.end()
    kinds = [k for k in KINDS if k in options]
    if len(kinds) != 1:
        raise ValueError(f"{where}: evidence:{target} needs exactly one of {KINDS}, found {kinds or 'none'}")
    kind = kinds[0]
    unknown = set(options) - {kind} - _OPTIONS[kind]
    if unknown:
        raise ValueError(f"{where}: option(s) {sorted(unknown)} do not apply to {kind}; "
                         f"allowed: {sorted(_OPTIONS[kind])}")
    if kind in ("table", "metric", "figure") and not options[kind]:
        raise ValueError(f"{where}: {kind}= needs a value")
    if kind == "claims" and options.get("field", "measured") not in _CLAIM_FIELDS:
        raise ValueError(f"{where}: field={options['field']!r}: expected one of {_CLAIM_FIELDS}")
    return part, study, kind, options


# ---------------------------------------------------------------- rendering


class _EvidenceCache:
    def __init__(self, evidence_dir: Path) -> None:
        self.evidence_dir = evidence_dir
        self._loaded: dict[tuple[str, str], Evidence | None] = {}

    def get(self, part: str, study: str) -> Evidence | None:
        key = (part, study)
        if key not in self._loaded:
            self._loaded[key] = find_evidence(self.evidence_dir, part, study)
        return self._loaded[key]


def render(block: Block, evidence: Evidence | None) -> str:
    """The text between the markers of ``block`` (with its surrounding newlines for a block kind)."""
    if evidence is None:
        if block.inline:
            return "(no evidence yet)"
        steps = placeholder_commands(block.part, block.study)
        return "\n_No evidence yet: run " + ", then ".join(f"`{s}`" for s in steps) + "._\n"
    where = f"{block.where}: {block.marker}"
    try:
        if block.kind == "table":
            text = _render_table(block, evidence)
        elif block.kind == "claims":
            text = _render_claims(block, evidence)
        elif block.kind == "metric":
            text = _render_metric(block, evidence)
        elif block.kind == "figure":
            text = _render_figure(block, evidence)
        else:
            text = provenance_text(evidence, relative_to=block.path.parent)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ValueError(f"{where}: {message}") from err
    return text if block.inline else f"\n{text}\n"


def _find_table(evidence: Evidence, title: str):
    tables = evidence.result.tables
    exact = [t for t in tables if t.title == title]
    if exact:
        return exact[0]
    loose = [t for t in tables if title.lower() in t.title.lower()]
    if len(loose) == 1:
        return loose[0]
    titles = [t.title for t in tables]
    what = "matches several tables" if loose else "matches no table"
    raise ValueError(f"table={title!r} {what} of {evidence.path}; its tables: {titles}")


def _row_filter(spec: str, columns: list[str]) -> list[tuple[int, set[str]]]:
    conditions = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        col, sep, values = part.partition("=")
        if not sep:
            col, values = columns[0], part
        if col.strip() not in columns:
            raise ValueError(f"rows={spec!r}: no column {col.strip()!r}; columns: {columns}")
        conditions.append((columns.index(col.strip()), {v.strip() for v in values.split("|")}))
    return conditions


def _cell_matches(text: str, allowed: set[str]) -> bool:
    """The cell reads one of ``allowed``; a value ending in ``*`` matches every cell that starts with the rest."""
    return any(text == v or (v.endswith("*") and text.startswith(v[:-1])) for v in allowed)


def _select(columns: list[str], rows: list[list[Any]], options: dict[str, str]) -> tuple[list[str], list[list[Any]]]:
    if options.get("rows"):
        conditions = _row_filter(options["rows"], columns)
        rows = [r for r in rows if all(_cell_matches(cell_text(r[i]), allowed) for i, allowed in conditions)]
        if not rows:
            raise ValueError(f"rows={options['rows']!r} keeps no row")
    if options.get("columns"):
        wanted = [c.strip() for c in options["columns"].split(",")]
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise ValueError(f"columns={options['columns']!r}: no column(s) {missing}; columns: {columns}")
        idx = [columns.index(c) for c in wanted]
        columns, rows = wanted, [[r[i] for i in idx] for r in rows]
    return columns, rows


def _render_table(block: Block, evidence: Evidence) -> str:
    table = _find_table(evidence, block.options["table"])
    columns, rows = _select(list(table.columns), [list(r) for r in table.rows], block.options)
    if "cell" in block.options:
        if len(rows) != 1 or len(columns) != 1:
            raise ValueError(f"cell: the selection is {len(rows)} rows x {len(columns)} columns, not one cell")
        return cell_text(rows[0][0])
    text = markdown_table(columns, rows)
    if table.note and block.options.get("note") != "no":
        text += f"\n\n_{table.note}_"
    return text


def _render_claims(block: Block, evidence: Evidence) -> str:
    claims = evidence.result.claims
    if block.options.get("claim"):
        wanted = [w.strip().lower() for w in block.options["claim"].split("|")]
        claims = [c for c in claims if any(w in c.claim.lower() for w in wanted)]
        if not claims:
            known = [c.claim for c in evidence.result.claims]
            raise ValueError(f"claim={block.options['claim']!r} matches no claim of {evidence.path}; claims: {known}")
    if "field" in block.options:
        if len(claims) != 1:
            raise ValueError(f"field={block.options['field']!r} needs one claim; claim= selects {len(claims)}")
        return cell_text(getattr(claims[0], block.options["field"] or "measured"))
    columns = ["claim", "measured", "verdict", *(["why"] if "why" in block.options else [])]
    rows = [[c.claim, c.measured, f"**{c.verdict}**", *([c.why] if "why" in block.options else [])] for c in claims]
    columns, rows = _select(columns, rows, {"columns": block.options.get("columns", "")})
    return markdown_table(columns, rows)


def metric_value(evidence: Evidence, path: str) -> Any:
    """The value at dotted ``path`` of the evidence's metrics (or of config/environment/wall_seconds)."""
    res = evidence.result
    keys = path.split(".")
    if keys == ["wall_seconds"]:
        return res.wall_seconds
    raw_keys = (evidence.provenance.get("raw") or {}).get("metrics", ())
    metrics = evidence.metrics(with_raw=keys[0] in raw_keys)
    value: Any = metrics
    if keys[0] not in metrics and keys[0] in ("config", "environment"):
        value, keys = getattr(res, keys[0]), keys[1:]
    walked = []
    for key in keys:
        walked.append(key)
        if isinstance(value, list):
            if not key.lstrip("-").isdigit():
                raise ValueError(f"metric={path!r}: {'.'.join(walked)} indexes a list; expected a number")
            value = value[int(key)]
        elif isinstance(value, dict):
            if key not in value:
                raise ValueError(f"metric={path!r}: no key {key!r} at {'.'.join(walked[:-1]) or 'metrics'}; "
                                 f"keys there: {sorted(value)[:40]}")
            value = value[key]
        else:
            raise ValueError(f"metric={path!r}: {'.'.join(walked[:-1])} is a {type(value).__name__}, not a mapping")
    return value


def _render_metric(block: Block, evidence: Evidence) -> str:
    value = metric_value(evidence, block.options["metric"])
    fmt = block.options.get("format")
    if fmt:
        if value is None:
            return "n/a"
        return fmt.format(value, **value) if isinstance(value, dict) else fmt.format(value)
    if isinstance(value, dict | list):
        if isinstance(value, dict) and "mean" in value:
            return cell_text(value)
        raise ValueError(f"metric={block.options['metric']!r} is a {type(value).__name__}; give a path to one value")
    return cell_text(value)


def _render_figure(block: Block, evidence: Evidence) -> str:
    name = block.options["figure"]
    if name not in evidence.result.figures:
        raise ValueError(f"figure={name!r} is not a figure of {evidence.path}; its figures: {evidence.result.figures}")
    rel = Path(os.path.relpath(evidence.path.parent / name, block.path.parent)).as_posix()
    return f"![{block.options.get('alt') or name}]({rel})"


def provenance_text(evidence: Evidence, relative_to: Path | None = None) -> str:
    """One Markdown paragraph saying how the evidence was made."""
    res, prov, made = evidence.result, evidence.provenance, evidence.made_on()
    file = evidence.path if relative_to is None else Path(os.path.relpath(evidence.path, relative_to))
    synthetic = " Uses **synthetic** data." if res.synthetic else ""
    return (
        f"Evidence [`{file.as_posix()}`]({file.as_posix()}), {res.scale} scale: `{prov.get('command')}` at commit "
        f"`{prov.get('commit')}`{made['dirty']}, made {res.created[:10]}, {made['wall']} on {made['machine']}; "
        f"Python {res.environment.get('python')}, {made['versions']}." + synthetic
    )


# ---------------------------------------------------------------- files


def doc_files(root: str | os.PathLike[str]) -> list[Path]:
    """README.md and docs/*.md of the checkout at ``root``."""
    root = Path(root)
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


@dataclass
class Difference:
    """A block whose text differs from what the evidence gives."""

    block: Block
    expected: str

    def __str__(self) -> str:
        b = self.block
        return f"{b.where}: {b.marker} differs from what evidence/{b.part}/{b.study}.json gives"


def regenerate(
    text: str, path: str | os.PathLike[str], evidence_dir: str | os.PathLike[str]
) -> tuple[str, list[Difference]]:
    """``text`` with every block re-rendered, and the blocks that changed."""
    cache = _EvidenceCache(Path(evidence_dir))
    out, pos, differences = [], 0, []
    for block in find_blocks(text, path):
        expected = render(block, cache.get(block.part, block.study))
        out += [text[pos:block.body_start], expected]
        pos = block.body_end
        if expected != block.body:
            differences.append(Difference(block, expected))
    out.append(text[pos:])
    return "".join(out), differences


def update_docs(
    root: str | os.PathLike[str] | None = None,
    evidence_dir: str | os.PathLike[str] | None = None,
    check: bool = False,
    files: Sequence[str | os.PathLike[str]] | None = None,
) -> list[Difference]:
    """Re-render the blocks of README.md and docs/*.md of the checkout at ``root`` (default: this
    package's checkout), or of ``files``; returns the blocks that differed.

    With ``check`` nothing is written. Every file is rendered before any is written, so a bad block
    (a table title that is not in the evidence, an unknown option) raises ``ValueError`` naming its file
    and line and leaves every file as it was.
    """
    evidence_dir = Path(evidence_dir) if evidence_dir is not None else default_evidence_dir()
    root = Path(root) if root is not None else default_evidence_dir().parent  # the checkout
    paths = [Path(f) for f in files] if files is not None else doc_files(root)
    rendered, differences = [], []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        new, diffs = regenerate(text, path, evidence_dir)
        differences += diffs
        if new != text:
            rendered.append((path, new))
    if not check:
        for path, new in rendered:
            atomic_write_text(path, new)
    return differences
