"""The summary tallied as findings are made is the summary of the findings (tracekit.summary).

A run that writes its findings as it goes (or replays a big trace part by part) prints its
summary and answers --fail-on from figures tallied on the way; the oracle is the summary
and the gate of the same findings read back whole.
"""

from __future__ import annotations

import importlib

import pytest

import tracekit.partition as P
from tracekit.reports.gate import remaining
from tracekit.summary import SummaryTally
from tracekit.synth import synth

analysis = importlib.import_module("tracekit.analyze")  # the package's `analyze` is the function

MITIGATION_SETS = [
    ["all"],
    ["s2fwb", "none", "host-cmo"],  # the baseline after a mitigation: that one waits for it
    ["mair-trap", "kvm-fault-clean"],  # no baseline: the first findings of each, nothing fixed
    ["none"],
    ["kvm-cache-toggle+guest-boot-inval", "none"],
]


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return synth(60_000, tmp_path_factory.mktemp("s") / "t.parquet", seed=11, profile="mixed")


def _read_whole(path):
    return analysis.load_analysis(path)


@pytest.mark.parametrize("specs", MITIGATION_SETS)
@pytest.mark.parametrize("parts", [1, 5])
def test_a_summary_tallied_part_by_part_is_the_summary_of_the_findings(trace, tmp_path, specs, parts):
    specs = analysis.expand_mitigations(specs)
    out = tmp_path / "f.parquet"
    tallied = P.analyze_partitioned(trace, out, specs, parts=parts)
    assert tallied.meta["partition"]["parts"] == parts
    read = _read_whole(out)
    assert tallied.summary() == read.summary()
    assert tallied._compact is None  # nothing was read for it
    for kinds in ("all", "lost-write", "stale-ifetch,stale-read"):
        assert remaining(tallied, kinds).equals(remaining(read, kinds))
    if "none" in specs:
        cmp = read.compare()
        assert tallied.summary_figures.fixed == {m: f.height for m, f in cmp.fixed.items()}
        assert tallied.summary_figures.introduced == {m: f.height for m, f in cmp.introduced.items()}


@pytest.mark.parametrize("specs", MITIGATION_SETS[:3])
def test_analyze_writing_its_findings_tallies_the_summary_without_reading_them_back(trace, tmp_path, specs,
                                                                                   monkeypatch):
    out = tmp_path / "f.parquet"
    in_memory = analysis.analyze(trace, specs)
    reads = []
    real = analysis._read_findings
    monkeypatch.setattr(analysis, "_read_findings", lambda path: reads.append(path) or real(path))
    on_disk = analysis.analyze(trace, specs, output=out, keep_findings=False, tally=True)
    assert on_disk.summary() == in_memory.summary() and reads == []
    assert remaining(on_disk, "all").equals(remaining(in_memory, "all")) and reads == []
    # more first findings than were tallied: the summary reads the findings for them
    assert on_disk.summary(first=5) == in_memory.summary(first=5) and reads == [out]


def test_a_part_without_the_baseline_is_refused(trace, tmp_path):
    tally = SummaryTally(["none", "mair-trap"])
    found = analysis.analyze(trace, ["mair-trap"]).compact_findings
    tally.add("mair-trap", found)
    with pytest.raises(ValueError, match="without the baseline 'none'"):
        tally.end_part()


def test_a_tally_of_the_reference_engines_findings_is_the_summary_of_them(tmp_path):
    """The reference engine's findings have string columns (the fast engine's in analyze
    are Enum/Categorical codes): the tally matches them the same way."""
    trace = synth(6_000, tmp_path / "t.parquet", seed=5, profile="mixed")
    specs = ["none", "kvm-cache-toggle", "mair-trap"]
    tallied = P.analyze_partitioned(trace, tmp_path / "f.parquet", specs, parts=3, engine="reference")
    read = _read_whole(tmp_path / "f.parquet")
    assert tallied.summary() == read.summary() and "against none" in read.summary()
