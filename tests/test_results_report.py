"""The results-file format and the report rendered from it."""

from __future__ import annotations

import base64
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from structlab import data  # noqa: E402
from structlab.report import write_report  # noqa: E402
from structlab.results import (  # noqa: E402
    SCHEMA,
    Claim,
    StudyResult,
    Table,
    finish,
    format_spread,
    read_result,
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


def test_report_embeds_figures_and_flags_synthetic_data(tmp_path):
    finish(_result(tmp_path, synthetic=True), tmp_path)
    (tmp_path / "tucker" / "junk.json").write_text("[]")  # not a results file: skipped, not fatal
    html_path, md_path = write_report(tmp_path)
    html = html_path.read_text()
    png = (tmp_path / "tucker" / "demo_curve.png").read_bytes()
    assert base64.b64encode(png).decode() in html  # self-contained
    assert "uses SYNTHETIC data" in html and "Tucker matches MHA" in html
    assert "Second &lt;paragraph&gt; &amp; more." in html  # escaped
    md = md_path.read_text()
    assert "![demo_curve.png](tucker/demo_curve.png)" in md and "**uses synthetic data**" in md
    assert "| mha | 1.1 |" in md


def test_empty_report_says_how_to_make_results(tmp_path):
    html_path, _ = write_report(tmp_path)
    assert "structlab reproduce --scale quick" in html_path.read_text()
