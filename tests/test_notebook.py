"""examples/explore.ipynb runs top to bottom and its answers are right.

The code cells are executed in order with plain ``exec`` (no Jupyter), in the
examples/ folder as a user would; each answer is then recomputed here the slow,
obvious way from the same findings.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "explore.ipynb"


def load_notebook() -> dict:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def test_notebook_is_valid_nbformat_4():
    nb = load_notebook()
    assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    ids = [c["id"] for c in nb["cells"]]
    assert len(ids) == len(set(ids))
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code")
        assert isinstance(cell["source"], list) and all(isinstance(s, str) for s in cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None  # committed without outputs


@pytest.fixture(scope="module")
def ns():
    """The notebook's namespace after running every code cell in order, from examples/."""
    import os

    nb = load_notebook()
    namespace: dict = {"__name__": "__main__"}
    old = Path.cwd()
    os.chdir(NOTEBOOK.parent)
    try:
        for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
            exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}[code cell {i}]", "exec"), namespace)
    finally:
        os.chdir(old)
    return namespace


def none_rows(ns):
    return [r for r in ns["findings"].iter_rows(named=True) if r["mitigation"] == "none"]


def test_question_1_phase_with_the_most_stale_reads(ns):
    reads = Counter(phase for phase, _seq in {(r["phase"], r["seq"]) for r in none_rows(ns)
                                               if r["kind"] == "stale-read"})
    assert reads, "the sample must have stale reads under none"
    best = max(reads.values())
    assert reads[ns["worst_phase"]] == best


def test_question_2_ranges_invalidated_under_none_only(ns):
    """A need is (line, cause, fix_op, fix_agent, window); ranges must cover exactly none's minus gbi's."""
    line_size = ns["analysis"].info.line_size
    needs: dict[str, set] = {"none": set(), "guest-boot-inval": set()}
    for r in ns["findings"].iter_rows(named=True):
        if r["fix_op"] in ("invalidate", "clean+invalidate") and r["mitigation"] in needs:
            needs[r["mitigation"]].add((r["line"], r["cause"], r["fix_op"], r["fix_agent"], r["fix_after_seq"],
                                        r["fix_before_seq"]))
    expected = needs["none"] - needs["guest-boot-inval"]
    assert expected, "guest-boot-inval must remove some invalidations in the sample"
    got = set()
    for r in ns["fixed_by_boot_inval"].iter_rows(named=True):
        got |= {(line, r["cause"], r["fix_op"], r["fix_agent"], r["fix_after_seq"], r["fix_before_seq"])
                for line in range(r["start"], r["end"], line_size)}
    assert got == expected


def test_question_3_agent_in_the_most_hazards(ns):
    count = Counter()
    for r in none_rows(ns):
        who = {r["agent"].split("/")[0]} | ({r["other_agent"].split("/")[0]} if r["other_agent"] else set())
        count.update(who)
    assert count[ns["top_agent"]] == max(count.values())
    table = {r["who"]: r["hazards"] for r in ns["hazards_by_agent"].iter_rows(named=True)}
    assert table == dict(count)
