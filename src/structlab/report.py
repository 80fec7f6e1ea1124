"""Every results file under ``results/`` -> ``results/report.html`` (self-contained) and ``report.md``.

The report opens with the claims of all studies side by side (paper vs measured, with a verdict), then
one section per part and study: summary, tables, figures, data sources (synthetic ones flagged),
configuration, environment and wall time. Figures are embedded in the HTML as data URIs, so the file
can be mailed on its own; the Markdown links them relative to the results folder.
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
import os
from pathlib import Path
from typing import Any

from structlab.atomic import atomic_write_text
from structlab.reproduce import PARTS
from structlab.results import StudyResult, find_results, read_result

PART_TITLES = {
    "tucker": "Tucker Attention (arXiv 2603.30033)",
    "subject": "Subject-conditioned layers for EEG (arXiv 2510.08059)",
    "relumip": "ReLU networks in mixed-integer programs (arXiv 2502.03016)",
    "audiopairs": "AudioPairBank (arXiv 1607.03766)",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #333}h2{border-bottom:1px solid #aaa;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.05em .5em;border-radius:.6em;font-size:.8em;margin-right:.4em;background:#e8e8e8}
.synthetic{background:#ffd9a8}.failed{background:#f7b5b5}
.v-agrees{background:#d3f2d3}.v-partly{background:#fff2b3}.v-disagrees{background:#f7c6c6}
.v-inconclusive,.v-not{background:#e6e6e6}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
details{margin:.5em 0}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
"""


def load_results(results_dir: str | os.PathLike[str]) -> list[tuple[Path, StudyResult]]:
    """Every readable results file, in part order; unreadable files are skipped with a note in the report."""
    loaded = []
    for path in find_results(results_dir):
        try:
            loaded.append((path, read_result(path)))
        except ValueError:
            continue
    order = {p: i for i, p in enumerate(PARTS)}
    loaded.sort(key=lambda item: (order.get(item[1].part, len(order)), item[1].study))
    return loaded


def write_report(results_dir: str | os.PathLike[str] = "results") -> tuple[Path, Path]:
    """Render ``report.html`` and ``report.md`` into ``results_dir``; returns their paths."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_results(results_dir)
    html_path, md_path = results_dir / "report.html", results_dir / "report.md"
    atomic_write_text(html_path, render_html(loaded))
    atomic_write_text(md_path, render_markdown(loaded, results_dir))
    return html_path, md_path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, dict) and "mean" in value:
        return f"{value['mean']:.4g} ± {value.get('std', 0.0):.2g}"
    return str(value)


def _verdict_class(verdict: str) -> str:
    return "v-" + verdict.split()[0]


# ---------------------------------------------------------------- HTML


def render_html(loaded: list[tuple[Path, StudyResult]]) -> str:
    e = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>structlab report</title>",
        f"<style>{_CSS}</style></head><body><h1>structlab report</h1>",
    ]
    if not loaded:
        out.append("<p>No results yet. Run <code>structlab reproduce --scale quick</code>.</p>")
    else:
        out.append(_html_overview(loaded))
    current_part = None
    for path, res in loaded:
        if res.part != current_part:
            current_part = res.part
            out.append(f"<h2 id='{e(res.part)}'>{e(PART_TITLES.get(res.part, res.part))}</h2>")
        out.append(_html_study(path, res))
    out.append("</body></html>")
    return "\n".join(out)


def _html_overview(loaded: list[tuple[Path, StudyResult]]) -> str:
    e = html.escape
    rows = []
    for _, res in loaded:
        badges = f"<span class='badge'>{e(res.scale)}</span>"
        if res.synthetic:
            badges += "<span class='badge synthetic'>synthetic data</span>"
        wall = f"{res.wall_seconds:.0f} s" if res.wall_seconds is not None else "?"
        rows.append(
            f"<tr><td><a href='#{e(res.part)}-{e(res.study)}'>{e(res.part)}/{e(res.study)}</a></td>"
            f"<td>{e(res.title)}</td><td>{badges}</td><td class='num'>{wall}</td></tr>"
        )
    studies = "<table><tr><th>study</th><th>title</th><th></th><th>wall time</th></tr>" + "".join(rows) + "</table>"
    claims = []
    for _, res in loaded:
        for c in res.claims:
            claims.append(
                f"<tr><td>{e(res.part)}/{e(res.study)}</td><td>{e(c.claim)}</td><td>{e(c.measured)}</td>"
                f"<td class='{_verdict_class(c.verdict)}'>{e(c.verdict)}</td><td>{e(c.why)}</td></tr>"
            )
    claims_html = (
        "<h2>Claims re-measured</h2><table><tr><th>study</th><th>claim</th><th>measured</th><th>verdict</th>"
        "<th>why</th></tr>" + "".join(claims) + "</table>"
        if claims
        else ""
    )
    return "<h2>Studies</h2>" + studies + claims_html


def _html_table(table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(
            f"<td class='num'>{e(_cell(v))}</td>" if isinstance(v, int | float) else f"<td>{e(_cell(v))}</td>"
            for v in row
        ) + "</tr>"
        for row in table.rows
    )
    note = f"<p><small>{e(table.note)}</small></p>" if table.note else ""
    return f"<h4>{e(table.title)}</h4><table><tr>{head}</tr>{body}</table>{note}"


def _embed(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_study(path: Path, res: StudyResult) -> str:
    e = html.escape
    parts = [f"<h3 id='{e(res.part)}-{e(res.study)}'>{e(res.title)} <small>({e(res.part)}/{e(res.study)})</small></h3>"]
    badges = f"<span class='badge'>scale: {e(res.scale)}</span>"
    if res.wall_seconds is not None:
        badges += f"<span class='badge'>{res.wall_seconds:.0f} s</span>"
    if res.synthetic:
        badges += "<span class='badge synthetic'>uses SYNTHETIC data</span>"
    parts.append(f"<p>{badges}</p>")
    if res.summary:
        parts.append("".join(f"<p>{e(p)}</p>" for p in res.summary.strip().split("\n\n")))
    if res.claims:
        parts.append("<table><tr><th>claim</th><th>measured</th><th>verdict</th><th>why</th></tr>")
        for c in res.claims:
            parts.append(
                f"<tr><td>{e(c.claim)}</td><td>{e(c.measured)}</td>"
                f"<td class='{_verdict_class(c.verdict)}'>{e(c.verdict)}</td><td>{e(c.why)}</td></tr>"
            )
        parts.append("</table>")
    parts.extend(_html_table(t) for t in res.tables)
    for fig in res.figures:
        fig_path = path.parent / fig
        if fig_path.is_file():
            parts.append(
                f"<figure><img src='{_embed(fig_path)}' alt='{e(fig)}'><figcaption>{e(fig)}</figcaption></figure>"
            )
        else:
            parts.append(f"<p class='failed'>figure {e(fig)} is missing</p>")
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


# ---------------------------------------------------------------- Markdown


def _md_escape(value: Any) -> str:
    return _cell(value).replace("|", "\\|").replace("\n", " ")


def _md_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_md_escape(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(loaded: list[tuple[Path, StudyResult]], results_dir: Path) -> str:
    out = ["# structlab report", ""]
    if not loaded:
        out.append("No results yet. Run `structlab reproduce --scale quick`.")
        return "\n".join(out) + "\n"
    claims = [
        [f"{res.part}/{res.study}", c.claim, c.measured, c.verdict, c.why] for _, res in loaded for c in res.claims
    ]
    if claims:
        out += ["## Claims re-measured", "", _md_table(["study", "claim", "measured", "verdict", "why"], claims), ""]
    current_part = None
    for path, res in loaded:
        if res.part != current_part:
            current_part = res.part
            out += [f"## {PART_TITLES.get(res.part, res.part)}", ""]
        wall = f", {res.wall_seconds:.0f} s" if res.wall_seconds is not None else ""
        synth = " — **uses synthetic data**" if res.synthetic else ""
        out += [f"### {res.title} (`{res.part}/{res.study}`, {res.scale} scale{wall}){synth}", ""]
        if res.summary:
            out += [res.summary.strip(), ""]
        for t in res.tables:
            out += [f"**{t.title}**", "", _md_table(t.columns, t.rows), ""]
            if t.note:
                out += [f"_{t.note}_", ""]
        for fig in res.figures:
            rel = os.path.relpath(path.parent / fig, results_dir)
            out += [f"![{fig}]({Path(rel).as_posix()})", ""]
        if res.data:
            out += ["Data: " + "; ".join(
                f"{d.get('name')} ({d.get('origin')}{', SYNTHETIC' if d.get('synthetic') else ''})" for d in res.data
            ), ""]
    return "\n".join(out) + "\n"
