"""The results-file format and the report rendered from it."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from structlab import data  # noqa: E402
from structlab.evidence import EVIDENCE_SCHEMA  # noqa: E402
from structlab.report import write_report  # noqa: E402
from structlab.results import (  # noqa: E402
    SCHEMA,
    Claim,
    StudyResult,
    Table,
    finish,
    format_spread,
    read_result,
    record_failure,
    spread,
)


def _result(tmp_path, synthetic=False) -> StudyResult:
    fig = tmp_path / "tucker" / "demo_curve.png"
    fig.parent.mkdir(parents=True, exist_ok=True)
    plt.figure(figsize=(2, 2))
    plt.plot([0, 1], [1, 0])
    plt.savefig(fig)
    plt.close()
    source = (
        data.synthetic("shakespeare", "random text") if synthetic
        else data.Resolution("shakespeare", None, "data folder")
    )
    return StudyResult(
        part="tucker", study="demo", title="A demo study", scale="quick",
        summary="First paragraph.\n\nSecond <paragraph> & more.",
        config={"width": 128}, seeds=[0, 1, 2], data=[source.as_record()],
        metrics={"loss": spread([1.0, 1.2, 1.1])},
        tables=[Table("Losses", ["model", "loss"], [["mha", 1.1], ["tucker", 1.15]], note="3 seeds")],
        figures=[fig.name],
        claims=[Claim("Tucker matches MHA", "+0.05 nats", "partly agrees", "small models")],
    )


def test_spread_matches_statistics_by_hand():
    s = spread([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["median"] == 2.5 and s["n"] == 4
    assert math.isclose(s["std"], math.sqrt(sum((v - 2.5) ** 2 for v in [1, 2, 3, 4]) / 3))
    assert spread([float("nan"), 1.0])["n_nan"] == 1
    assert format_spread(spread([1.0, 1.0])) == "1.000 ± 0.000 (n=2)"
    assert spread([])["n"] == 0


def test_result_round_trips_through_json(tmp_path):
    res = _result(tmp_path)
    path = finish(res, tmp_path, wall_seconds=1.5)
    raw = json.loads(path.read_text())
    assert raw["schema"] == SCHEMA and raw["synthetic"] is False and raw["wall_seconds"] == 1.5
    assert raw["environment"]["packages"]["torch"]
    back = read_result(path)
    assert back.tables[0].rows == res.tables[0].rows and back.claims[0].verdict == "partly agrees"


def test_results_format_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="verdict='maybe'"):
        Claim("c", "m", "maybe")
    with pytest.raises(ValueError, match=r"rows\[0\] has 1 cells; expected 2"):
        Table("t", ["a", "b"], [[1]])
    res = _result(tmp_path)
    res.figures.append("missing.png")
    with pytest.raises(ValueError, match="missing.png"):
        finish(res, tmp_path)
    bad = tmp_path / "tucker" / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a structlab results file"):
        read_result(bad)


def _embedded_images(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m))) for m in re.findall(r"data:image/png;base64,([^']+)'", html)]


def test_report_embeds_figures_and_flags_synthetic_data(tmp_path):
    results = tmp_path / "results"
    finish(_result(results, synthetic=True), results)
    (results / "tucker" / "junk.json").write_text("[]")  # not a results file: skipped, not fatal
    html_path, md_path = write_report(results, tmp_path / "no-evidence")
    html = html_path.read_text()
    with Image.open(results / "tucker" / "demo_curve.png") as original:
        [embedded] = _embedded_images(html)  # self-contained: the figure is in the page
        assert embedded.size == original.size
    assert "uses SYNTHETIC data" in html and "Tucker matches MHA" in html
    assert "Second &lt;paragraph&gt; &amp; more." in html  # escaped
    assert "skipped: " in html and "junk.json: not a structlab results file" in html
    md = md_path.read_text()
    assert "![demo_curve.png](tucker/demo_curve.png)" in md and "**uses synthetic data**" in md
    assert "| mha | 1.1 |" in md


def _store(evidence_dir, res, figures_from):
    """``res`` as an evidence file, written by hand (independent of `structlab evidence save`)."""
    folder = evidence_dir / res.part
    folder.mkdir(parents=True, exist_ok=True)
    for fig in res.figures:
        if (figures_from / fig).is_file():
            shutil.copy(figures_from / fig, folder / fig)
    obj = res.to_dict()
    obj["created"] = "2026-12-01T00:00:00+00:00"
    obj["evidence"] = {"schema": EVIDENCE_SCHEMA, "commit": "abc1234", "dirty": False, "raw": None,
                       "command": "structlab reproduce --scale full --only tucker --study demo"}
    (folder / f"{res.study}.json").write_text(json.dumps(obj))


def _cells_of_claim(html: str, claim: str) -> list[str]:
    row = re.search(r"<tr><td[^>]*>" + re.escape(claim) + r"</td>(.*?)</tr>", html).group(1)
    return re.findall(r"<td([^>]*)>(.*?)</td>", row)


def test_report_opens_with_evidence_and_shows_a_quick_run_as_a_smoke_check(tmp_path):
    results, stored = tmp_path / "results", tmp_path / "evidence"
    full = _result(tmp_path / "made", synthetic=False)
    full.scale = "full"
    full.claims = [Claim("Tucker matches MHA", "+0.01 nats (full)", "agrees"),
                   Claim("Only at full scale", "x", "disagrees")]
    _store(stored, full, tmp_path / "made" / "tucker")
    quick = _result(results)
    quick.claims = [Claim("Tucker matches MHA", "+0.3 nats (quick)", "disagrees"),
                    Claim("Only in the quick run", "y", "agrees")]
    finish(quick, results)
    html_path, md_path = write_report(results, stored)
    html = html_path.read_text()
    # Evidence first: its provenance and claims come before the user's run.
    assert html.index("Stored evidence</b> <code>evidence/tucker/demo.json</code>") < html.index("your run: tables")
    assert "<code>structlab reproduce --scale full --only tucker --study demo</code> at commit <code>abc1234" in html
    [(ev_m_attr, ev_m), (ev_v_attr, ev_v), (run_m_attr, run_m), (run_v_attr, run_v)] = _cells_of_claim(
        html, "Tucker matches MHA")
    assert (ev_m, ev_v, ev_v_attr) == ("+0.01 nats (full)", "agrees", " class='verdict v-agrees'")
    assert run_m == "+0.3 nats (quick)" and run_v == "smoke check: runs; not evidence"
    assert "class='smoke'" in run_v_attr and "v-" not in run_v_attr  # never coloured like a verdict
    assert "your run (quick scale)" in html
    only_ev = _cells_of_claim(html, "Only at full scale")
    assert only_ev[-1][1] == "not in your run"
    only_run = _cells_of_claim(html, "Only in the quick run")
    assert only_run[0][1] == "no stored evidence for this claim" and "smoke" in only_run[-1][0]
    md = md_path.read_text()
    assert ("| tucker/demo | Tucker matches MHA | +0.01 nats (full) | **agrees** | (quick) +0.3 nats (quick) | "
            "smoke check: runs; not evidence |") in md
    assert "![demo_curve.png](../evidence/tucker/demo_curve.png)" in md


def test_a_full_scale_run_of_the_user_gets_coloured_verdicts(tmp_path):
    results = tmp_path / "results"
    res = _result(results)
    res.scale = "full"
    finish(res, results)
    html = write_report(results, tmp_path / "no-evidence")[0].read_text()
    cells = _cells_of_claim(html, "Tucker matches MHA")
    assert cells[0][1] == "no stored evidence for this claim"
    assert cells[-1] == (" class='verdict v-partly'", "partly agrees")
    assert "No stored evidence yet. To make it: <code>structlab reproduce --scale full --only tucker" in html


def test_report_survives_broken_evidence_missing_figures_and_failed_runs(tmp_path):
    results, stored = tmp_path / "results", tmp_path / "evidence"
    full = _result(tmp_path / "made")
    full.scale = "full"
    _store(stored, full, tmp_path / "nowhere")  # its figure was never copied
    (stored / "subject").mkdir()
    (stored / "subject" / "broken.json").write_text("{not json")
    record_failure(results, "relumip", "peaks", "quick", "RuntimeError: solver crashed")
    html = write_report(results, stored)[0].read_text()
    assert "figure demo_curve.png is missing" in html
    assert "broken.json: not a structlab evidence file" in html
    assert "last run failed" in html and "RuntimeError: solver crashed" in html


def test_empty_report_says_how_to_make_results(tmp_path):
    html_path, _ = write_report(tmp_path, tmp_path / "no-evidence")
    assert "structlab reproduce --scale quick" in html_path.read_text()


def test_report_names_the_registered_studies_that_have_neither_evidence_nor_a_run(tmp_path):
    from structlab.evidence import registered_studies

    results = tmp_path / "results"
    res = _result(results)
    res.part, res.study, res.figures = "relumip", "peaks", []
    finish(res, results)
    html_path, md_path = write_report(results, tmp_path / "no-evidence")
    html, md = html_path.read_text(), md_path.read_text()
    line = re.search(r"No stored evidence yet and no run here: (.*?)\. To make", html).group(1)
    named = re.findall(r"<code>(.*?)</code>", line)
    assert named == [f"{p}/{s}" for p, s in registered_studies() if (p, s) != ("relumip", "peaks")]
    assert "tucker/charlm" in named and "relumip/peaks" not in named
    assert "`tucker/charlm`" in md and "`relumip/peaks`" not in md.split("no run here:")[1].split("\n")[0]


def test_figures_shrink_until_the_page_fits_its_size_limit(tmp_path, monkeypatch):
    from structlab import report

    results = tmp_path / "results"
    res = _result(results)
    Image.new("RGB", (2400, 800), "white").save(results / "tucker" / "demo_curve.png")
    finish(res, results)
    html = write_report(results, tmp_path / "no-evidence")[0].read_text()
    assert [im.width for im in _embedded_images(html)] == [report.REPORT_FIGURE_WIDTH]
    monkeypatch.setattr(report, "REPORT_MAX_BYTES", 1)  # nothing fits: the smallest figures are used
    html = write_report(results, tmp_path / "no-evidence")[0].read_text()
    assert [im.width for im in _embedded_images(html)] == [480]
