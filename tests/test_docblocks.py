"""Marked blocks in the docs: parsed with their line numbers, rendered from fixture evidence, rewritten
atomically, and refused with the file and line when they ask for something the evidence does not hold."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from structlab import cli, docblocks
from structlab.evidence import EVIDENCE_SCHEMA, read_evidence
from structlab.results import Claim, StudyResult, Table


def make_evidence(root, part="tucker", study="demo", figures=("demo_curve.png",)):
    """An evidence file written by hand (not by `evidence.save`), so the renderer is checked on its own."""
    folder = root / "evidence" / part
    folder.mkdir(parents=True, exist_ok=True)
    for fig in figures:
        Image.new("RGB", (40, 20), "white").save(folder / fig)
    res = StudyResult(
        part=part, study=study, title="A demo study", scale="full",
        metrics={"d128": {"mha": {"val_loss": {"mean": 1.96321, "std": 0.0021, "n": 3}}},
                 "ratios": [0.2213, 0.2871], "count": 39, "share": 0.000123},
        tables=[
            Table("Validation loss against attention parameters", ["d", "attention", "params", "loss"],
                  [[128, "mha", 262144, 1.96321], [128, "tucker:4,32,12", 57472, 2.0951],
                   [256, "mha", 1048576, 1.8967]],
                  note="3 seeds"),
            Table("Validation loss of the best model", ["d", "attention"], [[128, "mha"]]),
            Table("Rank | spectra", ["layer", "ranks"], [[0, "4 | 6"]]),
        ],
        figures=list(figures),
        claims=[Claim("Tucker needs at most 1/3 of MLA's parameters", "0.22x (d=128)", "agrees", "interpolated"),
                Claim("Tucker within 0.02 nats of MHA", "+0.132 nats", "disagrees")],
        environment={"git_commit": "abc1234", "python": "3.11.7", "processor": "AMD EPYC", "usable_cores": 1,
                     "torch_threads": 1, "packages": {"torch": "2.13.0", "numpy": "2.1.0"},
                     "command": "OMP_NUM_THREADS=1 structlab reproduce --scale full --only tucker --study demo"},
        wall_seconds=4195.2, created="2026-12-03T04:05:06+00:00", fingerprint="f" * 16,
    )
    obj = res.to_dict()
    obj["evidence"] = {"schema": EVIDENCE_SCHEMA, "command": res.environment["command"], "commit": "abc1234",
                       "dirty": False, "raw": None}
    (folder / f"{study}.json").write_text(json.dumps(obj))
    return folder / f"{study}.json"


def _render(tmp_path, marker):
    doc = tmp_path / "docs" / "page.md"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(f"Intro.\n\n{marker}old<!-- /evidence -->\n")
    [block] = docblocks.find_blocks(doc.read_text(), doc)
    stored = read_evidence(tmp_path / "evidence" / block.part / f"{block.study}.json") if (
        tmp_path / "evidence" / block.part / f"{block.study}.json").is_file() else None
    return docblocks.render(block, stored)


def test_table_block_renders_the_selected_rows_and_columns_as_markdown(tmp_path):
    make_evidence(tmp_path)
    assert _render(tmp_path, '<!-- evidence:tucker/demo table="Validation loss against attention parameters" -->') == (
        "\n| d | attention | params | loss |\n|---|---|---|---|\n| 128 | mha | 262144 | 1.963 |\n"
        "| 128 | tucker:4,32,12 | 57472 | 2.095 |\n| 256 | mha | 1048576 | 1.897 |\n\n_3 seeds_\n"
    )
    got = _render(tmp_path, '<!-- evidence:tucker/demo table="against attention" rows="d=128; attention=mha|x" '
                            'columns="loss,attention" note=no -->')
    assert got == "\n| loss | attention |\n|---|---|\n| 1.963 | mha |\n"
    assert _render(tmp_path, '<!-- evidence:tucker/demo table="spectra" -->') == (
        "\n| layer | ranks |\n|---|---|\n| 0 | 4 \\| 6 |\n")  # a | inside a cell is escaped
    one_cell = "table='against' rows='attention=tucker:4*' columns='params' cell"
    assert _render(tmp_path, f"<!-- evidence:tucker/demo {one_cell} -->") == "57472"


def test_claims_block_and_one_claim_field_inline(tmp_path):
    make_evidence(tmp_path)
    assert _render(tmp_path, "<!-- evidence:tucker/demo claims -->") == (
        "\n| claim | measured | verdict |\n|---|---|---|\n"
        "| Tucker needs at most 1/3 of MLA's parameters | 0.22x (d=128) | **agrees** |\n"
        "| Tucker within 0.02 nats of MHA | +0.132 nats | **disagrees** |\n"
    )
    got = _render(tmp_path, '<!-- evidence:tucker/demo claims claim="1/3" why -->')
    assert got.endswith("| **agrees** | interpolated |\n") and "0.02 nats" not in got
    assert _render(tmp_path, '<!-- evidence:tucker/demo claims claim="0.02 nats" field="verdict" -->') == "disagrees"


def test_metric_block_follows_dotted_paths_and_formats(tmp_path):
    make_evidence(tmp_path)
    r = lambda opts: _render(tmp_path, f"<!-- evidence:tucker/demo {opts} -->")  # noqa: E731
    assert r('metric="d128.mha.val_loss" format="{mean:.3f} ± {std:.3f}"') == "1.963 ± 0.002"
    assert r('metric="d128.mha.val_loss"') == "1.963 ± 0.0021"
    assert r('metric="ratios.1" format="{:.2f}"') == "0.29"
    assert r('metric="count"') == "39" and r('metric="share"') == "0.000123"
    assert r('metric="wall_seconds" format="{:,.0f}"') == "4,195"
    assert r('metric="environment.packages.torch"') == "2.13.0"


def test_figure_and_provenance_blocks(tmp_path):
    make_evidence(tmp_path)
    assert _render(tmp_path, '<!-- evidence:tucker/demo figure="demo_curve.png" alt="loss curve" -->') == (
        "\n![loss curve](../evidence/tucker/demo_curve.png)\n")
    prov = _render(tmp_path, "<!-- evidence:tucker/demo provenance -->")
    assert "`OMP_NUM_THREADS=1 structlab reproduce --scale full --only tucker --study demo`" in prov
    assert "commit `abc1234`" in prov and "made 2026-12-03" in prov and "4,195 s wall" in prov
    assert "(../evidence/tucker/demo.json)" in prov and "torch 2.13.0" in prov


def test_missing_evidence_renders_a_placeholder_that_says_how_to_make_it(tmp_path):
    assert _render(tmp_path, '<!-- evidence:tucker/demo table="x" -->') == (
        "\n_No evidence yet: run `structlab reproduce --scale full --only tucker --study demo`, then "
        "`structlab evidence save tucker/demo`._\n")
    assert _render(tmp_path, '<!-- evidence:tucker/demo metric="a.b" -->') == "(no evidence yet)"


@pytest.mark.parametrize("marker, message", [
    ('table="no such table"', r"table='no such table' matches no table .* its tables: \['Validation loss against"),
    ('table="validation loss"', "matches several tables"),
    ('table="against" columns="nope"', r"no column\(s\) \['nope'\]"),
    ('table="against" rows="d=512"', "keeps no row"),
    ('table="against" rows="e=1"', "no column 'e'"),
    ('table="against" cell', "the selection is 3 rows x 4 columns, not one cell"),
    ('metric="d128.gqa"', r"no key 'gqa' at d128; keys there: \['mha'\]"),
    ('metric="d128"', "give a path to one value"),
    ('metric="ratios.x"', "indexes a list"),
    ('claims claim="nothing like it"', "matches no claim"),
    ('claims field="verdict"', "needs one claim"),
    ('figure="other.png"', "is not a figure of"),
])
def test_a_block_the_evidence_cannot_fill_names_file_line_and_reason(tmp_path, marker, message):
    make_evidence(tmp_path)
    with pytest.raises(ValueError, match=r"page\.md:3: <!-- evidence:tucker/demo .*" + message):
        _render(tmp_path, f"<!-- evidence:tucker/demo {marker} -->")


@pytest.mark.parametrize("text, message", [
    ("<!-- evidence:tucker/demo claims -->\nno end", "has no closing"),
    ("<!-- evidence:tucker/demo claims --><!-- evidence:tucker/demo provenance --><!-- /evidence -->",
     "has no closing"),
    ("text\n<!-- /evidence -->", r":2: <!-- /evidence --> without an opening block"),
    ("<!-- evidence:tucker claims --><!-- /evidence -->", "expected evidence:PART/STUDY"),
    ("<!-- evidence:tucker/demo claims provenance --><!-- /evidence -->", "needs exactly one of"),
    ("<!-- evidence:tucker/demo --><!-- /evidence -->", "needs exactly one of"),
    ("<!-- evidence:tucker/demo metric=\"x\" columns=\"a\" --><!-- /evidence -->", "do not apply to metric"),
    ("<!-- evidence:tucker/demo table=\"x\" \"stray\" --><!-- /evidence -->", "cannot read the options"),
    ("<!-- evidence:tucker/demo table=\"x\"rows=\"y\" --><!-- /evidence -->", "cannot read the options"),
    ("<!-- evidence:tucker/demo claims field=\"colour\" --><!-- /evidence -->", "field='colour'"),
])
def test_malformed_markers_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        docblocks.find_blocks(text, "page.md")


def test_find_blocks_reports_line_numbers_and_keeps_the_text_between_blocks(tmp_path):
    text = ("# Title\n\nLoss <!-- evidence:tucker/demo metric=\"count\" -->12<!-- /evidence --> nats.\n\n"
            "<!-- evidence:tucker/demo claims -->\nold table\n<!-- /evidence -->\nend\n")
    blocks = docblocks.find_blocks(text, "page.md")
    assert [(b.line, b.kind, b.body, b.inline) for b in blocks] == [
        (3, "metric", "12", True), (5, "claims", "\nold table\n", False)]
    make_evidence(tmp_path)
    new, diffs = docblocks.regenerate(text, tmp_path / "page.md", tmp_path / "evidence")
    assert [d.block.line for d in diffs] == [3, 5]
    assert new.startswith("# Title\n\nLoss <!-- evidence:tucker/demo metric=\"count\" -->39<!-- /evidence --> nats.")
    assert new.endswith("| **disagrees** |\n<!-- /evidence -->\nend\n")
    assert docblocks.regenerate(new, tmp_path / "page.md", tmp_path / "evidence")[1] == []  # a fixed point


def test_markers_shown_as_code_are_not_blocks():
    text = ("Write `<!-- evidence:PART/STUDY table=\"...\" -->` to quote a table.\n\n"
            "```markdown\n<!-- evidence:tucker/demo claims -->\n...\n<!-- /evidence -->\n```\n\n"
            "~~~\n<!-- /evidence -->\n~~~\n"
            "<!-- evidence:tucker/demo provenance -->\nreal `code` here\n<!-- /evidence -->\n")
    [block] = docblocks.find_blocks(text, "page.md")
    assert (block.kind, block.line, block.body) == ("provenance", 12, "\nreal `code` here\n")


def test_update_docs_rewrites_all_or_nothing_and_check_writes_nothing(tmp_path, capsys):
    make_evidence(tmp_path)
    (tmp_path / "docs").mkdir()
    readme, page = tmp_path / "README.md", tmp_path / "docs" / "page.md"
    readme.write_text('Count: <!-- evidence:tucker/demo metric="count" -->0<!-- /evidence -->\n')
    page.write_text('<!-- evidence:tucker/demo metric="count" -->39<!-- /evidence -->\n'
                    '<!-- evidence:tucker/demo table="no such table" -->\n<!-- /evidence -->\n')
    before = readme.read_text(), page.read_text()
    with pytest.raises(ValueError, match=r"page\.md:2: .*no such table"):
        docblocks.update_docs(tmp_path, tmp_path / "evidence")
    assert (readme.read_text(), page.read_text()) == before  # README was fine, but nothing was written
    page.write_text('<!-- evidence:tucker/demo metric="count" -->39<!-- /evidence -->\n')
    diffs = docblocks.update_docs(tmp_path, tmp_path / "evidence", check=True)
    assert [str(d) for d in diffs] == [
        f"{readme}:1: <!-- evidence:tucker/demo metric=\"count\" --> differs from what evidence/tucker/demo.json gives"]
    assert readme.read_text() == before[0]
    assert [d.block.line for d in docblocks.update_docs(tmp_path, tmp_path / "evidence")] == [1]
    assert readme.read_text() == 'Count: <!-- evidence:tucker/demo metric="count" -->39<!-- /evidence -->\n'
    assert docblocks.update_docs(tmp_path, tmp_path / "evidence", check=True) == []


def test_cli_report_docs_check_exits_nonzero_when_a_block_differs(tmp_path, monkeypatch, capsys):
    make_evidence(tmp_path)
    (tmp_path / "README.md").write_text('<!-- evidence:tucker/demo metric="count" -->0<!-- /evidence -->\n')
    monkeypatch.setattr(docblocks, "doc_files", lambda root: [tmp_path / "README.md"])
    args = ["report", "--docs", "--evidence", str(tmp_path / "evidence")]
    assert cli.main([*args, "--check"]) == 1
    assert "differs: " in capsys.readouterr().out
    assert cli.main(args) == 0 and cli.main([*args, "--check"]) == 0
    assert cli.main(["report", "--check"]) == 2  # --check without --docs
