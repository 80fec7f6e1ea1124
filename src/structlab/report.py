"""Stored evidence beside the user's own run -> ``results/report.html`` (self-contained) and ``report.md``.

The report opens with the evidence kept in the repository (``evidence/<part>/<study>.json``: full-scale
results with the command and commit that made them): per study its provenance, its claims with their
verdicts and, beside each claim, what the user's run in ``results/`` measured, labelled by scale. A
quick-scale run is a smoke check (the pipeline runs); its verdicts are shown as "runs; not evidence",
never coloured like a full-scale verdict. Then the evidence's figures, its tables, and the user's run
in full (summary, tables, figures, data sources with synthetic ones flagged, configuration,
environment). Figures are embedded downsized, so the HTML can be mailed on its own; the Markdown links
them.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from structlab.atomic import atomic_write_text
from structlab.reproduce import PARTS
from structlab.results import Claim, StudyResult, Table, find_results, read_result

PART_TITLES = {
    "tucker": "Tucker Attention (arXiv 2603.30033)",
    "subject": "Subject-conditioned layers for EEG (arXiv 2510.08059)",
    "relumip": "ReLU networks in mixed-integer programs (arXiv 2502.03016)",
    "audiopairs": "AudioPairBank (arXiv 1607.03766)",
    "jobs": "The study runner (jobs and executors)",
}
SMOKE = "runs; not evidence"
# Figures in the HTML are at most this wide: the page is 1100 px, and 25 figures must fit in 3 MB.
REPORT_FIGURE_WIDTH = 1000
REPORT_MAX_BYTES = 3_000_000

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #333}h2{border-bottom:1px solid #aaa;margin-top:2em}h3{margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
td{overflow-wrap:anywhere}
.badge{display:inline-block;padding:.05em .5em;border-radius:.6em;font-size:.8em;margin-right:.4em;background:#e8e8e8;
white-space:nowrap}
.full{background:#cfe3ff}.quick{background:#eee;border:1px dashed #999}
.synthetic{background:#ffd9a8}.failed{background:#f7b5b5}
.v-agrees{background:#d3f2d3}.v-partly{background:#fff2b3}.v-disagrees{background:#f7c6c6}
.v-inconclusive,.v-not{background:#e6e6e6}
td.smoke{background:repeating-linear-gradient(45deg,#fafafa,#fafafa 6px,#f0f0f0 6px,#f0f0f0 12px);color:#666;
font-style:italic}
td.none{color:#999}td.verdict{white-space:nowrap}td.smoke{white-space:normal;min-width:7.5em}
td.study{white-space:nowrap}
.prov{font-size:.85em;color:#444;background:#f7f7fb;border-left:3px solid #88a;padding:.4em .7em}
.prov code{font-size:.95em}.lead{font-size:1.02em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
details{margin:.6em 0}summary{cursor:pointer;font-weight:600}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
.claims td:nth-child(1){width:34%}
"""


# ---------------------------------------------------------------- loading


@dataclass
class Entry:
    """One study as the report shows it: its stored evidence and the user's run (either may be missing)."""

    part: str
    study: str
    evidence: Any = None  # evidence.Evidence
    run: StudyResult | None = None
    run_path: Path | None = None
    failure: dict[str, Any] | None = None

    @property
    def title(self) -> str:
        for res in (self.evidence.result if self.evidence else None, self.run):
            if res is not None:
                return res.title
        return f"{self.part}/{self.study}"


def load_results(results_dir: str | os.PathLike[str]) -> tuple[list[tuple[Path, StudyResult]], list[str]]:
    """Every readable results file, in part order, and a note for each file that could not be read."""
    loaded, problems = [], []
    for path in find_results(results_dir):
        try:
            loaded.append((path, read_result(path)))
        except ValueError as err:
            problems.append(str(err))
    order = {p: i for i, p in enumerate(PARTS)}
    loaded.sort(key=lambda item: (order.get(item[1].part, len(order)), item[1].study))
    return loaded, problems


def _entries(results_dir: Path, evidence_dir: Path | None) -> tuple[list[Entry], list[str]]:
    from structlab import evidence as ev_mod

    runs, problems = load_results(results_dir)
    entries: dict[tuple[str, str], Entry] = {}
    evidence_dir = evidence_dir if evidence_dir is not None else ev_mod.default_evidence_dir()
    for path in sorted(evidence_dir.glob("*/*.json")):
        try:
            stored = ev_mod.read_evidence(path)
        except ValueError as err:
            problems.append(str(err))
            continue
        entries[(stored.result.part, stored.result.study)] = Entry(stored.result.part, stored.result.study, stored)
    for path, res in runs:
        entry = entries.setdefault((res.part, res.study), Entry(res.part, res.study))
        entry.run, entry.run_path = res, path
    for note in sorted(results_dir.glob("*/.*.failed")):
        part, study = note.parent.name, note.name[1:-len(".failed")]
        from structlab.results import failure_record

        entries.setdefault((part, study), Entry(part, study)).failure = failure_record(results_dir, part, study)
    order = {p: i for i, p in enumerate(PARTS)}
    ordered = sorted(entries.values(), key=lambda e: (order.get(e.part, len(order)), e.study.startswith("bench_"),
                                                      e.study))
    return ordered, problems


def write_report(
    results_dir: str | os.PathLike[str] = "results", evidence_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """Render ``report.html`` and ``report.md`` into ``results_dir`` from its results files and the stored
    evidence (default: the checkout's ``evidence/``); returns their paths."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    entries, problems = _entries(results_dir, Path(evidence_dir) if evidence_dir is not None else None)
    pending = _pending(entries)
    html_path, md_path = results_dir / "report.html", results_dir / "report.md"
    for width in (REPORT_FIGURE_WIDTH, 700, 480):  # smaller figures until the page fits in REPORT_MAX_BYTES
        page = render_html(entries, problems, figure_width=width, pending=pending)
        if len(page.encode()) <= REPORT_MAX_BYTES:
            break
    atomic_write_text(html_path, page)
    atomic_write_text(md_path, render_markdown(entries, problems, results_dir, pending=pending))
    return html_path, md_path


def _pending(entries: list[Entry]) -> list[str]:
    """The registered studies that have neither stored evidence nor a run here ("part/study"); none listed where
    a part's studies cannot be imported (an extra not installed): the report does not need them."""
    from structlab.evidence import registered_studies

    try:
        registered = registered_studies()
    except ImportError:
        return []
    shown = {(entry.part, entry.study) for entry in entries}
    return [f"{part}/{study}" for part, study in registered if (part, study) not in shown]


def _pending_how(code: Callable[[str], str]) -> str:
    """How to make a pending study's evidence (the commands docs name, for any PART/STUDY), each through ``code``."""
    from structlab.evidence import placeholder_commands

    return "To make a study's evidence: " + ", then ".join(code(c) for c in placeholder_commands("PART", "STUDY")) + "."


# ---------------------------------------------------------------- shared


def cell_text(value: Any) -> str:
    """A table cell as text: floats to 4 significant digits, spread records as ``mean ± std``."""
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, dict) and "mean" in value:
        return f"{cell_text(value['mean'])} ± {value.get('std', 0.0):.2g}"
    return str(value)


def _md_escape(value: Any) -> str:
    return cell_text(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_md_escape(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict_class(verdict: str) -> str:
    return "v-" + verdict.split()[0]


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[0-9][0-9.,]*", "#", text.lower())).strip()


def match_claims(stored: list[Claim], run: list[Claim]) -> list[tuple[Claim | None, Claim | None]]:
    """Pairs (evidence claim, run claim): the same text, else the same text up to its numbers (a claim
    may quote its scale's sizes); run claims without a partner come last."""
    left = list(run)
    pairs: list[tuple[Claim | None, Claim | None]] = []
    for claim in stored:
        partner = next((c for c in left if c.claim == claim.claim), None)
        if partner is None:
            partner = next((c for c in left if _normalise(c.claim) == _normalise(claim.claim)), None)
        if partner is not None:
            left.remove(partner)
        pairs.append((claim, partner))
    return pairs + [(None, c) for c in left]


def _is_evidence_scale(res: StudyResult) -> bool:
    from structlab.evidence import EVIDENCE_SCALES

    return res.scale in EVIDENCE_SCALES


# ---------------------------------------------------------------- HTML


def _embed(path: Path, width: int) -> str:
    from structlab.evidence import compact_png

    try:
        data = compact_png(path, width)
    except Exception:  # noqa: BLE001 - not an image Pillow reads: embed it as it is
        data = path.read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _html_figures(folder: Path, names: list[str], caption: str, width: int) -> str:
    e = html.escape
    out = []
    for name in names:
        fig = folder / name
        if fig.is_file():
            out.append(f"<figure><img src='{_embed(fig, width)}' alt='{e(name)}'><figcaption>{e(name)} "
                       f"({e(caption)})</figcaption></figure>")
        else:
            out.append(f"<p class='failed'>figure {e(name)} is missing from {e(str(folder))}</p>")
    return "".join(out)


def _html_table(table: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(
            f"<td class='num'>{e(cell_text(v))}</td>" if isinstance(v, int | float) else f"<td>{e(cell_text(v))}</td>"
            for v in row
        ) + "</tr>"
        for row in table.rows
    )
    note = f"<p><small>{e(table.note)}</small></p>" if table.note else ""
    return f"<h4>{e(table.title)}</h4><table><tr>{head}</tr>{body}</table>{note}"


def _run_badges(res: StudyResult) -> str:
    e = html.escape
    if _is_evidence_scale(res):
        badges = f"<span class='badge full'>{e(res.scale)} scale</span>"
    else:
        badges = f"<span class='badge quick'>{e(res.scale)} scale: smoke check</span>"
    if res.wall_seconds is not None:
        badges += f"<span class='badge'>{res.wall_seconds:,.0f} s</span>"
    if res.synthetic:
        badges += "<span class='badge synthetic'>uses SYNTHETIC data</span>"
    return badges


def _verdict_cell(claim: Claim | None, res: StudyResult | None) -> str:
    e = html.escape
    if claim is None or res is None:
        return "<td class='none'>—</td>"
    if not _is_evidence_scale(res):
        return (f"<td class='smoke' title='verdict at {e(res.scale)} scale: {e(claim.verdict)}'>"
                f"smoke check: {SMOKE}</td>")
    return f"<td class='verdict {_verdict_class(claim.verdict)}'>{e(claim.verdict)}</td>"


def _html_claims(entry: Entry) -> str:
    e = html.escape
    stored = entry.evidence.result if entry.evidence else None
    pairs = match_claims(stored.claims if stored else [], entry.run.claims if entry.run else [])
    if not pairs:
        return ""
    run_label = f"your run ({e(entry.run.scale)} scale)" if entry.run else "your run (none)"
    rows = [
        "<table class='claims'><tr><th rowspan='2'>claim</th><th colspan='2'>stored evidence (full scale)</th>"
        f"<th colspan='2'>{run_label}</th></tr><tr><th>measured</th><th>verdict</th><th>measured</th>"
        "<th>verdict</th></tr>"
    ]
    for mine, theirs in pairs:
        text = (mine or theirs).claim
        why = (mine or theirs).why
        title = f" title='{e(why)}'" if why else ""
        ev_cells = (f"<td>{e(mine.measured)}</td>{_verdict_cell(mine, stored)}" if mine
                    else "<td class='none' colspan='2'>no stored evidence for this claim</td>")
        run_cells = (f"<td>{e(theirs.measured)}</td>{_verdict_cell(theirs, entry.run)}" if theirs
                     else "<td class='none' colspan='2'>not in your run</td>")
        rows.append(f"<tr><td{title}>{e(text)}</td>{ev_cells}{run_cells}</tr>")
    rows.append("</table>")
    return "".join(rows)


def _provenance_html(entry: Entry) -> str:
    e = html.escape
    from structlab.evidence import placeholder_commands

    if entry.evidence is None:
        steps = placeholder_commands(entry.part, entry.study)
        return ("<p class='prov'>No stored evidence yet. To make it: "
                + ", then ".join(f"<code>{e(s)}</code>" for s in steps) + ".</p>")
    res, prov, made = entry.evidence.result, entry.evidence.provenance, entry.evidence.made_on()
    synthetic = " <span class='badge synthetic'>uses SYNTHETIC data</span>" if res.synthetic else ""
    return (
        f"<p class='prov'><b>Stored evidence</b> <code>evidence/{e(entry.part)}/{e(entry.study)}.json</code>, "
        f"full scale, made {e(res.created[:10])} by <code>{e(str(prov.get('command')))}</code> at commit "
        f"<code>{e(str(prov.get('commit')))}</code>{e(made['dirty'])}; {e(made['wall'])} on {e(made['machine'])}; "
        f"Python {e(str(res.environment.get('python')))}, {e(made['versions'])}.{synthetic}</p>"
    )


def _html_run(entry: Entry, width: int) -> str:
    e = html.escape
    res, path = entry.run, entry.run_path
    assert res is not None and path is not None
    parts = [f"<p>{_run_badges(res)} <small>written {e(res.created[:19].replace('T', ' '))} to "
             f"<code>{e(str(path))}</code></small></p>"]
    if res.summary:
        parts.append("".join(f"<p>{e(p)}</p>" for p in res.summary.strip().split("\n\n")))
    parts.extend(_html_table(t) for t in res.tables)
    parts.append(_html_figures(path.parent, res.figures, f"your run, {res.scale} scale", width))
    if res.data:
        items = []
        for d in res.data:
            flag = " <span class='badge synthetic'>synthetic</span>" if d.get("synthetic") else ""
            items.append(f"<li><b>{e(str(d.get('name')))}</b>: {e(str(d.get('origin')))}{flag} "
                         f"{e(str(d.get('path') or d.get('detail') or ''))}</li>")
        parts.append("<p>Data:</p><ul>" + "".join(items) + "</ul>")
    parts.append(
        "<details><summary>configuration, seeds and metrics</summary><pre>"
        + e(json.dumps({"config": res.config, "seeds": res.seeds, "metrics": res.metrics}, indent=1, default=str))
        + "</pre></details>"
    )
    parts.append(
        "<details><summary>environment</summary><pre>"
        + e(json.dumps({"created": res.created, "fingerprint": res.fingerprint, **res.environment}, indent=1))
        + "</pre></details>"
    )
    return "\n".join(parts)


def _html_entry(entry: Entry, width: int) -> str:
    e = html.escape
    out = [f"<h3 id='{e(entry.part)}-{e(entry.study)}'>{e(entry.title)} <small>({e(entry.part)}/{e(entry.study)})"
           "</small></h3>", _provenance_html(entry)]
    if entry.failure:
        out.append(f"<p class='failed'>Your last {e(str(entry.failure.get('scale')))}-scale run of this study failed "
                   f"({e(str(entry.failure.get('time')))}): {e(str(entry.failure.get('error')))}</p>")
    out.append(_html_claims(entry))
    if entry.evidence is not None:
        stored = entry.evidence.result
        if stored.summary:
            out.append("".join(f"<p>{e(p)}</p>" for p in stored.summary.strip().split("\n\n")))
        out.append(_html_figures(entry.evidence.path.parent, stored.figures, "stored evidence, full scale", width))
        if stored.tables:
            out.append(f"<details><summary>stored evidence: {len(stored.tables)} table(s)</summary>"
                       + "".join(_html_table(t) for t in stored.tables) + "</details>")
    if entry.run is not None:
        label = "your run" if entry.evidence is None else "your run: tables, figures, data, configuration"
        opened = " open" if entry.evidence is None else ""
        out.append(f"<details{opened}><summary>{e(label)} ({e(entry.run.scale)} scale)</summary>"
                   + _html_run(entry, width) + "</details>")
    return "\n".join(out)


def _html_overview(entries: list[Entry]) -> str:
    e = html.escape
    rows = []
    for entry in entries:
        if entry.evidence is not None:
            res, prov = entry.evidence.result, entry.evidence.provenance
            wall = f", {res.wall_seconds:,.0f} s" if res.wall_seconds is not None else ""
            stored = (f"<span class='badge full'>full scale</span>{e(res.created[:10])}, "
                      f"commit <code>{e(str(prov.get('commit')))}</code>{e(wall)}")
        else:
            stored = "<span class='none'>none yet</span>"
        if entry.run is not None:
            mine = _run_badges(entry.run)
        else:
            mine = "<span class='none'>not run</span>"
        if entry.failure:
            mine += "<span class='badge failed'>last run failed</span>"
        rows.append(f"<tr><td class='study'><a href='#{e(entry.part)}-{e(entry.study)}'>{e(entry.part)}/"
                    f"{e(entry.study)}</a></td>"
                    f"<td>{e(entry.title)}</td><td>{stored}</td><td>{mine}</td></tr>")
    return ("<h2>Studies</h2><table><tr><th>study</th><th>title</th><th>stored evidence</th><th>your run</th></tr>"
            + "".join(rows) + "</table>")


_INTRO = (
    "<p class='lead'><b>Stored evidence</b> is the full-scale result of each study, kept in the repository "
    "(<code>evidence/</code>) with the command and commit that made it: that is what the claims' verdicts rest on. "
    "<b>Your run</b> is what <code>structlab reproduce</code> wrote into this results folder. At quick scale it is a "
    "smoke check: it shows that every study runs here, with models too small and too briefly trained to settle "
    "anything, so its verdicts are shown as <i>smoke check: runs; not evidence</i>.</p>"
    "<p>Verdicts at full scale: <span class='badge v-agrees'>agrees</span><span class='badge v-partly'>partly agrees"
    "</span><span class='badge v-disagrees'>disagrees</span><span class='badge v-inconclusive'>inconclusive</span>"
    "&nbsp; quick scale: <span class='badge quick'>smoke check</span></p>"
)


def render_html(entries: list[Entry], problems: Sequence[str] = (), figure_width: int = REPORT_FIGURE_WIDTH,
                pending: Sequence[str] = ()) -> str:
    e = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>structlab report</title>",
        f"<style>{_CSS}</style></head><body><h1>structlab report</h1>",
        _INTRO,
    ]
    if not any(entry.run for entry in entries):
        out.append("<p>No results of your own yet. Run <code>structlab reproduce --scale quick</code>.</p>")
    for problem in problems:
        out.append(f"<p class='failed'>skipped: {e(problem)}</p>")
    if entries:
        out.append(_html_overview(entries))
    if pending:
        out.append("<p class='none'>No stored evidence yet and no run here: "
                   + ", ".join(f"<code>{e(name)}</code>" for name in pending) + ". "
                   + _pending_how(lambda c: f"<code>{e(c)}</code>") + "</p>")
    current_part = None
    for entry in entries:
        if entry.part != current_part:
            current_part = entry.part
            out.append(f"<h2 id='{e(entry.part)}'>{e(PART_TITLES.get(entry.part, entry.part))}</h2>")
        out.append(_html_entry(entry, figure_width))
    out.append("</body></html>")
    return "\n".join(out)


# ---------------------------------------------------------------- Markdown


def _md_verdict(claim: Claim | None, res: StudyResult | None) -> str:
    if claim is None or res is None:
        return "—"
    return f"**{claim.verdict}**" if _is_evidence_scale(res) else f"smoke check: {SMOKE}"


def render_markdown(entries: list[Entry], problems: list[str], results_dir: Path, pending: Sequence[str] = ()) -> str:
    out = ["# structlab report", "",
           "Stored evidence: full-scale results kept in the repository (`evidence/`) with the command and commit "
           "that made them. Your run: what `structlab reproduce` wrote here; at quick scale a smoke check "
           f"(\"{SMOKE}\").", ""]
    if not any(entry.run for entry in entries):
        out += ["No results of your own yet. Run `structlab reproduce --scale quick`.", ""]
    out += [f"- skipped: {p}" for p in problems]
    if pending:
        out += ["No stored evidence yet and no run here: " + ", ".join(f"`{name}`" for name in pending) + ". "
                + _pending_how(lambda c: f"`{c}`"), ""]
    if not entries:
        return "\n".join(out) + "\n"
    overview = []
    for entry in entries:
        stored = "none yet"
        if entry.evidence is not None:
            res = entry.evidence.result
            stored = f"full scale, {res.created[:10]}, commit {entry.evidence.provenance.get('commit')}"
        mine = f"{entry.run.scale} scale" + ("" if _is_evidence_scale(entry.run) else " (smoke check)") \
            if entry.run else "not run"
        if entry.failure:
            mine += ", last run failed"
        overview.append([f"{entry.part}/{entry.study}", entry.title, stored, mine])
    out += ["## Studies", "", markdown_table(["study", "title", "stored evidence", "your run"], overview), ""]
    claims = []
    for entry in entries:
        stored = entry.evidence.result if entry.evidence else None
        for mine, theirs in match_claims(stored.claims if stored else [], entry.run.claims if entry.run else []):
            claims.append([
                f"{entry.part}/{entry.study}", (mine or theirs).claim,
                mine.measured if mine else "—", _md_verdict(mine, stored),
                f"({entry.run.scale}) {theirs.measured}" if theirs and entry.run else "—",
                _md_verdict(theirs, entry.run),
            ])
    if claims:
        out += ["## Claims: stored evidence and your run", "",
                markdown_table(["study", "claim", "evidence (full scale)", "verdict", "your run", "your verdict"],
                               claims), ""]
    current_part = None
    for entry in entries:
        if entry.part != current_part:
            current_part = entry.part
            out += [f"## {PART_TITLES.get(entry.part, entry.part)}", ""]
        out += [f"### {entry.title} (`{entry.part}/{entry.study}`)", ""]
        if entry.evidence is not None:
            res, prov = entry.evidence.result, entry.evidence.provenance
            wall = f", {res.wall_seconds:,.0f} s wall" if res.wall_seconds is not None else ""
            out += [f"Stored evidence: `{prov.get('command')}` at commit `{prov.get('commit')}`, made "
                    f"{res.created[:10]}{wall}.", ""]
            for t in res.tables:
                out += [f"**{t.title}** (evidence)", "", markdown_table(t.columns, t.rows), ""]
            for fig in res.figures:
                rel = Path(os.path.relpath(entry.evidence.path.parent / fig, results_dir)).as_posix()
                out += [f"![{fig}]({rel})", ""]
        else:
            from structlab.evidence import placeholder_commands

            out += ["No stored evidence yet: run " + ", then ".join(
                f"`{s}`" for s in placeholder_commands(entry.part, entry.study)) + ".", ""]
        if entry.failure:
            out += [f"Your last run failed: {entry.failure.get('error')}", ""]
        if entry.run is not None:
            res, path = entry.run, entry.run_path
            wall = f", {res.wall_seconds:.0f} s" if res.wall_seconds is not None else ""
            smoke = "" if _is_evidence_scale(res) else ", a smoke check: runs; not evidence"
            synth = " — **uses synthetic data**" if res.synthetic else ""
            out += [f"Your run ({res.scale} scale{wall}{smoke}){synth}:", ""]
            if res.summary:
                out += [res.summary.strip(), ""]
            for t in res.tables:
                out += [f"**{t.title}**", "", markdown_table(t.columns, t.rows), ""]
                if t.note:
                    out += [f"_{t.note}_", ""]
            for fig in res.figures:
                rel = os.path.relpath(path.parent / fig, results_dir)
                out += [f"![{fig}]({Path(rel).as_posix()})", ""]
            if res.data:
                out += ["Data: " + "; ".join(
                    f"{d.get('name')} ({d.get('origin')}{', SYNTHETIC' if d.get('synthetic') else ''})"
                    for d in res.data
                ), ""]
    return "\n".join(out) + "\n"
