"""The vnncomp study's reading of the competition's files and its rule for settled answers."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict

import pytest

from structlab import data
from structlab.relumip.studies.vnncomp import read_instances, read_published, settle

mnistfc = data.find("vnncomp2021-mnistfc")


@pytest.mark.skipif(mnistfc is None, reason="vnncomp2021-mnistfc data set not found")
def test_the_published_results_read_as_12_tools_on_the_90_listed_instances() -> None:
    listed = read_instances(mnistfc.path)
    assert len(listed) == 90 and Counter(t for _, _, t in listed) == {120.0: 30, 300.0: 60}  # 2x256: 120 s
    published = read_published(mnistfc.path)
    # the results files lack one listed instance (and add the competition's test_nano/test_tiny rows)
    missing = {(o, v) for o, v, _ in listed} - set(published)
    assert missing == {("mnist-net_256x6.onnx", "prop_14_0.05.vnnlib")}
    mnist = [published[(o, v)] for o, v, _ in listed if (o, v) not in missing]
    assert all(len(tools) == 12 for tools in mnist)
    venus = Counter(tools["venus2"][0] for tools in mnist)
    # the issue's goal "48" counts venus2's answer on the competition's test instance too
    assert venus["holds"] + venus["violated"] == 47
    abcrown = Counter(tools["a-b-CROWN"][0] for tools in mnist)
    assert abcrown["holds"] == 49 and abcrown["violated"] == 21  # UNSAT/SAT mapped


def test_settled_answers_come_from_a_checked_counterexample_or_a_strict_majority_of_the_tools() -> None:
    tools = {"a": ("holds", 1.0), "b": ("holds", 2.0), "c": ("violated", 3.0), "d": ("timeout", 120.0)}
    assert settle({"result": "violated", "checked": True}, tools) == ("violated", "checked counterexample")
    assert settle({"result": "holds", "checked": False}, tools) == ("holds", "majority 2 of 3")
    assert settle(None, {"a": ("holds", 1.0), "c": ("violated", 1.0)}) == ("unsettled", "tie 1:1")
    # our own answer never votes: a lone "holds" of ours settles nothing
    assert settle({"result": "holds", "checked": False}, {"d": ("timeout", 120.0)}) == ("unsettled", "no answer")
    # one tool's unchecked answer settles nothing either (RPM decides many instances alone, often wrongly)
    assert settle(None, {"RPM": ("violated", 55.0), "d": ("timeout", 120.0)}) == (
        "unsettled", "one tool only (RPM's violated)")
    assert settle(None, {"a": ("holds", 1.0), "b": ("holds", 1.0), "RPM": ("violated", 55.0)}) == (
        "holds", "majority 2 of 3")


def test_the_published_mnistfc_results_have_one_tool_that_every_other_contradicts() -> None:
    """Why a lone answer does not settle: in the competition's own results RPM's decided answers are
    contradicted by every other deciding tool on many instances (counted independently of the study's code)."""
    if mnistfc is None:
        pytest.skip("vnncomp2021-mnistfc data set not found")
    against_all: Counter = Counter()
    with open(mnistfc.path / "vnncomp2021_results.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_instance: dict = defaultdict(dict)
    for row in rows:
        word = row["result"].strip().lower()
        if word in ("holds", "unsat", "violated", "sat"):
            by_instance[(row["onnx"], row["vnnlib"])][row["tool"]] = word in ("holds", "unsat")
    for answers in by_instance.values():
        for tool, holds in answers.items():
            others = [h for t, h in answers.items() if t != tool]
            if others and all(h != holds for h in others):
                against_all[tool] += 1
    assert against_all["RPM"] >= 30 and max(n for t, n in against_all.items() if t != "RPM") < 10
