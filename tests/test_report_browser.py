"""The report in a real browser (Debian's chromium, headless): it loads, every figure decodes, no table
or figure runs off the page or over another, and the file stays under 3 MB."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from structlab.evidence import EVIDENCE_SCHEMA
from structlab.report import write_report
from structlab.results import Claim, StudyResult, Table, finish

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VERDICTS = ("agrees", "partly agrees", "disagrees", "inconclusive")

# Runs in the page after load and writes what it found into <body data-check=...>, which --dump-dom prints.
_CHECK = """<script>
window.addEventListener('load', () => {
  const out = {images: 0, broken: [], overflow: [], overlaps: []};
  const page = document.body.getBoundingClientRect();
  document.querySelectorAll('details').forEach(d => d.open = true);
  document.querySelectorAll('img').forEach(img => {
    out.images += 1;
    if (!img.complete || img.naturalWidth === 0) out.broken.push(img.alt);
  });
  const boxes = [...document.querySelectorAll('table, figure, h2, h3, p.prov')];
  boxes.forEach(el => {
    const r = el.getBoundingClientRect();
    if (r.right > page.right + 1) out.overflow.push(el.tagName + ' ' + (el.textContent || '').slice(0, 60));
  });
  for (let i = 0; i < boxes.length; i++) {
    const a = boxes[i].getBoundingClientRect();
    for (let j = i + 1; j < boxes.length; j++) {
      if (boxes[i].contains(boxes[j]) || boxes[j].contains(boxes[i])) continue;
      const b = boxes[j].getBoundingClientRect();
      const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 1 && h > 1) out.overlaps.push(boxes[i].tagName + '/' + boxes[j].tagName);
    }
  }
  document.body.dataset.check = JSON.stringify(out);
});
</script>"""


def _figure(path, kind: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, ax in enumerate(axes):
        ax.plot(range(40), [((x + kind) % 7) * (i + 1) for x in range(40)], marker="o", label=f"series {i}")
        ax.set_xlabel("attention parameters")
        ax.set_ylabel("validation loss (nats)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _study(folder, part, study, scale, n_claims=4, n_figures=3) -> StudyResult:
    (folder / part).mkdir(parents=True, exist_ok=True)
    figures = []
    for k in range(n_figures):
        name = f"{study}_figure{k}.png"
        _figure(folder / part / name, k)
        figures.append(name)
    long = "; ".join(f"d={d}: tucker:4,32,12 (22% of MHA's attention parameters) is +0.{d} nats worse than MHA "
                     f"(per-seed differences 0.132 ± 0.035 (n=3))" for d in (128, 256))
    return StudyResult(
        part=part, study=study, title=f"A {part} study with long claims", scale=scale,
        summary="A summary paragraph.\n\nAnd a second one.",
        tables=[Table("A wide table of results", [f"column number {i}" for i in range(12)],
                      [[f"row {r} value {i} with text" if i % 3 else r * 1.2345 for i in range(12)]
                       for r in range(15)], note="a note")],
        figures=figures,
        claims=[Claim(f"Claim {i}: Tucker needs at most 1/3 of the attention parameters of the best GQA and the "
                      "best MLA point (issue goal)", long, VERDICTS[i % 4], "because") for i in range(n_claims)],
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_figures_and_no_overlap(tmp_path):
    results, made, stored = tmp_path / "results", tmp_path / "made", tmp_path / "evidence"
    for part in ("tucker", "subject", "relumip", "audiopairs"):
        for study in ("one", "two"):
            ev = _study(made, part, study, "full")
            (stored / part).mkdir(parents=True, exist_ok=True)
            for fig in ev.figures:
                shutil.copy(made / part / fig, stored / part / fig)
            obj = ev.to_dict()
            obj["created"] = "2026-12-01T00:00:00+00:00"
            obj["environment"] = {"processor": "AMD EPYC", "usable_cores": 1, "torch_threads": 1, "python": "3.11.7",
                                  "packages": {"torch": "2.13.0"}}
            obj["evidence"] = {"schema": EVIDENCE_SCHEMA, "commit": "abc1234", "dirty": False, "raw": None,
                               "command": f"OMP_NUM_THREADS=1 structlab reproduce --scale full --only {part} "
                                          f"--study {study}"}
            (stored / part / f"{study}.json").write_text(json.dumps(obj))
            finish(_study(results, part, study, "quick"), results)
    html_path, _ = write_report(results, stored)
    assert html_path.stat().st_size < 3_000_000, f"report is {html_path.stat().st_size / 1e6:.1f} MB"

    checked = tmp_path / "checked.html"
    checked.write_text(html_path.read_text().replace("</body>", _CHECK + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,4000", "--virtual-time-budget=10000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", checked.as_uri()], capture_output=True, text=True,
                         timeout=240, check=True).stdout
    found = re.search(r'data-check="([^"]*)"', dom)
    assert found, "the check script did not run"
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["images"] == 8 * 3 * 2 and check["broken"] == []  # evidence and your run, every figure decodes
    assert check["overflow"] == [] and check["overlaps"] == []

    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", html_path.as_uri()], capture_output=True,
                   timeout=240, check=True)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, tables and figures, not a blank page
