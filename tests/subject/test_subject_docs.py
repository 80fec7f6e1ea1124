"""Every python code block of README.md and docs/subject.md runs verbatim (the quick start must not rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DOCS = ["README.md", "docs/subject.md"]
BLOCKS = [(doc, i, code) for doc in DOCS for i, code in enumerate(BLOCK.findall((ROOT / doc).read_text("utf-8")))]


def test_the_subject_docs_have_code_blocks():
    assert {doc for doc, _, _ in BLOCKS} == set(DOCS)


@pytest.mark.parametrize(("doc", "index", "code"), BLOCKS, ids=[f"{d}[{i}]" for d, i, _ in BLOCKS])
def test_python_code_block_runs_verbatim(doc, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, f"{doc}, python block {index}", "exec"), {"__name__": "__docs__"})
    finally:
        torch.set_num_threads(threads)
