"""README.md and docs/*.md quote full-scale numbers only from stored evidence: every marked block must be
what `structlab report --docs` renders from evidence/ (run it after `structlab evidence save`)."""

from __future__ import annotations

from pathlib import Path

from structlab import docblocks
from structlab.evidence import load_evidence

ROOT = Path(__file__).resolve().parents[1]


def test_every_evidence_block_of_the_docs_matches_the_stored_evidence():
    differences = docblocks.update_docs(ROOT, ROOT / "evidence", check=True)
    assert not differences, (
        "marked blocks differ from what the evidence gives (run `structlab report --docs`):\n  "
        + "\n  ".join(str(d) for d in differences)
    )


def test_the_docs_quote_evidence_of_every_part():
    blocks = [b for path in docblocks.doc_files(ROOT) for b in docblocks.find_blocks(path.read_text(), path)]
    assert {b.part for b in blocks} >= {"tucker", "subject", "relumip", "audiopairs"}


def test_every_stored_evidence_file_is_complete():
    for stored in load_evidence(ROOT / "evidence"):
        assert stored.path.stem == stored.result.study and stored.path.parent.name == stored.result.part
        assert stored.result.scale == "full", f"{stored.path}: quick-scale results are not evidence"
        for fig in stored.figure_paths():
            assert fig.is_file(), f"{stored.path}: figure {fig.name} is missing"
        assert stored.provenance.get("command") and stored.provenance.get("commit"), stored.path
        stored.raw_metrics()  # the compressed block, if any, reads
