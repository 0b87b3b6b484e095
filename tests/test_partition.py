"""Out-of-core analysis: partitioning on the line gives exactly the findings of the whole trace.

Rule under test: hazards are per line, so a trace split by (4 KiB pages of) lines, each
part replayed with the global events (sysreg, whole-cache maintenance, the last event),
must give the same findings frame, in the same order, as analysing it whole; costs add up.
"""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import tracekit.partition as P
from tracekit.analyze import analyze
from tracekit.errors import UsageError
from tracekit.schema import read_metadata
from tracekit.synth import synth



@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return synth(60_000, tmp_path_factory.mktemp("p") / "t.parquet", seed=4, profile="mixed")


@pytest.mark.parametrize("specs", [["none", "mair-trap", "kvm-cache-toggle", "host-uncached"],  # by line
                                   ["none", "kvm-fault-clean", "kvm-cache-toggle"]])  # by 4 KiB page
def test_parts_give_the_findings_of_the_whole_trace(trace, tmp_path, monkeypatch, specs):
    monkeypatch.setattr(P, "BASE_BYTES", 0)
    budget = 64 * P.BYTES_PER_EVENT * 1024 + 1  # small: several parts
    specs = specs + ["guest-boot-inval", "guest-dma-cmo", "host-cmo", "s2fwb"]
    meta = P.replay_partitioned(trace, tmp_path / "f.parquet", specs, budget_bytes=budget)
    assert meta["partition"]["parts"] > 1
    assert meta["partition"]["block_bytes"] == (4096 if "kvm-fault-clean" in specs else 64)
    whole = analyze(trace, specs)
    got = pl.read_parquet(tmp_path / "f.parquet")
    assert_frame_equal(got, whole.findings)
    # costs: each part counts what it owns (an event or operation by its first line, a line where
    # it lies), so they add up to the whole run's, retyped kinds listed most first as there
    for s in specs:
        want = whole.costs[s].to_dict()
        for field, value in meta["costs"][s].items():
            assert value == want[field], (s, field)
    assert any(len(meta["costs"][s]["retyped"]) > 1 for s in specs)  # an order to check
    assert any(meta["costs"][s]["inserted_lines"] for s in specs)
    written = read_metadata(tmp_path / "f.parquet")
    assert written["mitigations"] == specs and written["line_size"] == 64


@pytest.mark.parametrize("profile", ["boot", "virtio", "framebuffer"])
def test_partitioned_costs_add_up_to_the_whole_runs(tmp_path, profile):
    """Every profile, the whole catalog and two combinations, three parts of single lines: the
    costs summed over parts are the whole run's (guest-boot-inval's runs of lines stitched)."""
    from tracekit.analyze import expand_mitigations

    trace = synth(20_000, tmp_path / "t.parquet", seed=11, profile=profile)
    specs = [s for s in expand_mitigations(["all"]) if s != "kvm-fault-clean"]  # (pages: parts of lines)
    specs += ["mair-trap+guest-dma-cmo", "kvm-cache-toggle+host-cmo"]
    meta = P.replay_partitioned(trace, tmp_path / "f.parquet", specs, parts=3)
    assert meta["partition"]["block_bytes"] == 64
    whole = analyze(trace, specs)
    for s in specs:
        want = whole.costs[s].to_dict()
        for field, value in meta["costs"][s].items():
            assert value == want[field], (profile, s, field)


#: Accesses and maintenance crossing lines and pages (events 2, 3, 4, 6), in a 1 MiB RAM region.
CROSSING_ROWS = [dict(agent="guest", op="sysreg", sysreg="MAIR_EL1", value=0xFF),
                 dict(agent="guest", op="sysreg", sysreg="SCTLR_EL1", value=0x1005),
                 dict(agent="guest", op="write", addr=0x4000_0FFC, size=8, attr_index=0),
                 dict(agent="guest", op="write", addr=0x4000_2000, size=0x3000, attr_index=0),
                 dict(agent="host", op="read", addr=0x4000_0FF8, size=16, attr="nc"),
                 dict(agent="guest", op="cmo", cmo="dc.civac", addr=0x4000_3000, size=0x1000),
                 dict(agent="host", op="read", addr=0x4000_2FC0, size=0x1080, attr="nc")]


def _crossing_trace(tmp_path, rows):
    from tracekit.model import Region, TraceInfo
    from tracekit.schema import TRACE_SCHEMA, write_table
    from strategies import events_frame

    info = TraceInfo(regions=(Region.make("ram", 0x4000_0000, 1 << 20),))
    return write_table(events_frame(rows), tmp_path / "t.parquet", schema=TRACE_SCHEMA, info=info)


def test_events_spanning_lines_reach_every_owner(tmp_path, monkeypatch):
    """Accesses and maintenance ranges crossing lines (and pages) owned by different parts are replayed
    in each part for the lines it owns (H1 on both sides of a page boundary)."""
    rows = CROSSING_ROWS
    path = _crossing_trace(tmp_path, rows)
    meta = P.replay_partitioned(path, tmp_path / "f.parquet", ["none"], parts=11)
    assert meta["partition"]["parts"] == 11
    # the lines of these events were spread: several parts received some of them
    assert sum(1 for n in meta["partition"]["events_per_part"] if n) >= 4
    got = pl.read_parquet(tmp_path / "f.parquet")
    assert_frame_equal(got, analyze(path, ["none"]).findings)
    # read 4 covers lines 0x...fc0 and 0x...1000 (pages 0 and 1); read 6 the lines left dirty outside
    # the cleaned page 3: 0x...2fc0 and 0x...4000
    assert got.select("seq", "line").rows() == [(4, 0x4000_0FC0), (4, 0x4000_1000), (6, 0x4000_2FC0), (6, 0x4000_4000)]
    assert meta["partition"]["events"] == len(rows)


@pytest.mark.parametrize("parts", [2, 5, 11])
def test_costs_of_accesses_across_pages_count_once(tmp_path, parts):
    """Accesses crossing page boundaries are held by every part owning one of their pages: the
    costs still count each access, operation, line and stage-2 fault once (the part owning it;
    kvm-fault-clean counts the pages its part owns through ``MitigationContext.owns``)."""
    # a guest read of page 1 after the write that crossed into it (so page 1's first touch is
    # that write, held by the parts of pages 0 and 1)
    path = _crossing_trace(tmp_path, CROSSING_ROWS + [dict(agent="guest", op="read", addr=0x4000_1000, size=8,
                                                            attr_index=0)])
    specs = ["none", "kvm-fault-clean", "guest-dma-cmo", "host-cmo", "kvm-cache-toggle", "s2fwb"]
    meta = P.replay_partitioned(path, tmp_path / "f.parquet", specs, parts=parts)
    whole = analyze(path, specs)
    assert whole.costs["kvm-fault-clean"].traps == {"stage-2 fault": 5}
    for s in specs:
        assert meta["costs"][s] == whole.costs[s].to_dict(), s


#: A guest writing with its MMU off, then turning it on: runs of lines 0-18 (a write in each of
#: lines 0-15, one across lines 16-17, one in 18), 20 alone, and 63-64 (across a page boundary).
MMU_OFF_RUNS = ([dict(agent="guest", op="write", addr=0x4000_0000 + 64 * i, size=8) for i in range(16)]
                + [dict(agent="guest", op="write", addr=0x4000_0438, size=16),
                   dict(agent="guest", op="write", addr=0x4000_0480, size=8),
                   dict(agent="guest", op="write", addr=0x4000_0500, size=8),
                   dict(agent="guest", op="write", addr=0x4000_0FC0, size=0x80),
                   dict(agent="guest", op="sysreg", sysreg="SCTLR_EL1", value=0x1005),
                   dict(agent="host", op="read", addr=0x4000_0040, size=8, attr="wb")])


@pytest.mark.parametrize("parts", [2, 5, 11])
def test_runs_of_lines_cut_by_parts_count_once(tmp_path, parts):
    """guest-boot-inval makes one DC IVAC per run of neighbouring lines a vCPU wrote with its MMU
    off (Mitigation.merges_lines); parts of single lines each hold pieces of a run, and the run
    still counts once: the pieces that continue another part's are stitched out."""
    path = _crossing_trace(tmp_path, MMU_OFF_RUNS)
    specs = ["guest-boot-inval", "guest-boot-inval+guest-dma-cmo"]
    meta = P.replay_partitioned(path, tmp_path / "f.parquet", specs, parts=parts)
    assert meta["partition"]["block_bytes"] == 64
    assert sum(1 for n in meta["partition"]["events_per_part"] if n) == parts  # every part holds a piece
    whole = analyze(path, specs)
    assert whole.costs["guest-boot-inval"].inserted_ops == 3
    assert whole.costs["guest-boot-inval"].inserted_lines == 19 + 1 + 2
    for s in specs:
        assert meta["costs"][s] == whole.costs[s].to_dict(), s


def test_should_partition_compares_the_estimate_with_the_budget(trace):
    assert P.should_partition(trace, 1 << 20)
    assert not P.should_partition(trace, 1 << 40)
    assert P.parse_size("1G") == 1 << 30 and P.parse_size("512M") == 512 << 20 and P.parse_size("4096") == 4096
    with pytest.raises(UsageError):
        P.parse_size("lots")
    with pytest.raises(UsageError):
        P.part_count(10, 1 << 20)  # below what the process needs at all


def test_a_budget_that_holds_the_trace_but_not_all_the_findings_writes_them_as_they_come(trace, monkeypatch):
    """Each mitigation's findings stay in memory for the comparison: a budget that holds one
    mitigation's run of a trace may not hold the catalog's. Then the trace is still analysed in
    memory, two mitigations at a time (then one at a time, with less room) with their findings
    written and let go (far faster than by parts); only a budget below one mitigation's run
    partitions."""
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(trace).metadata.num_rows
    # a second replay's fixed cost (48 MiB) outweighs the findings of this small trace's catalog:
    # set aside here so that every tier exists, as it does from ~560k events on (checked below)
    fixed = P.ON_DISK_SECOND_REPLAY_BYTES
    monkeypatch.setattr(P, "ON_DISK_SECOND_REPLAY_BYTES", 0)
    one, ten = P.estimated_bytes(rows, ["none"]), P.estimated_bytes(rows, ["none"] * 10)
    on_disk = P.estimated_bytes(rows, ["none"] * 10, findings_kept=False)
    serial = P.estimated_bytes(rows, ["none"] * 10, findings_kept=False, replays=1)
    assert one < serial < on_disk < ten
    between = (on_disk + ten) // 2
    assert P.memory_plan(trace, between, ["none"]) == "whole"
    assert P.memory_plan(trace, between, ["none"] * 10) == "findings-on-disk"
    assert not P.should_partition(trace, between, ["none"] * 10)
    # less room: one mitigation replayed at a time, then parts
    assert P.memory_plan(trace, on_disk - 1, ["none"] * 10) == "findings-on-disk-serial"
    assert not P.should_partition(trace, on_disk - 1, ["none"] * 10)
    assert P.memory_plan(trace, one - 1, ["none"]) == "partitioned"
    assert P.memory_plan(trace, serial - 1, ["none"] * 10) == "partitioned"
    assert P.memory_plan(trace.parent / "missing.parquet", 1, ["none"]) == "whole"  # loading says what is wrong
    monkeypatch.undo()
    assert P.estimated_bytes(rows, ["none"] * 10, findings_kept=False) == on_disk + fixed > ten
    assert P.memory_plan(trace, ten - 1, ["none"] * 10) == "findings-on-disk-serial"  # not two at once
    big = 600_000
    assert P.estimated_bytes(big, 10, findings_kept=False) < P.estimated_bytes(big, 10)


#: Peak RSS in KiB (/usr/bin/time %M) of `tracekit analyze TRACE -m ... -o F --memory-budget B`
#: with the summary, on bench_engine.py's `mixed` traces, seeds 3 (1 M) and 1 (10 M), this
#: 2-core machine, traces storing their Arrow types (2026-12-07 20:20, `82ed6c0`; the rows with
#: s2fwb and host-uncached 20:50); plan "whole": B = 100G; "on disk" and "serial": a budget
#: between the estimates of the plan and of the one above it (picks findings-on-disk, or
#: findings-on-disk-serial).
MEASURED_PEAKS = [
    (1_000_000, ["none"], "whole", 450_340),
    (1_000_000, ["host-uncached"], "whole", 461_112),
    (1_000_000, ["guest-boot-inval"], "whole", 568_832),
    (1_000_000, ["kvm-fault-clean+guest-boot-inval"], "whole", 830_664),
    (1_000_000, ["guest-dma-cmo"], "whole", 569_664),
    (1_000_000, ["kvm-cache-toggle"], "whole", 719_028),
    (1_000_000, ["none", "mair-trap"], "whole", 592_240),
    (1_000_000, ["all"], "whole", 1_104_592),
    (1_000_000, ["all"], "on disk", 1_069_872),
    (1_000_000, ["all"], "serial", 1_002_460),
    (10_000_000, ["none"], "whole", 1_985_848),
    (10_000_000, ["s2fwb"], "whole", 1_944_116),
    (10_000_000, ["guest-boot-inval"], "whole", 2_534_592),
    (10_000_000, ["kvm-fault-clean+guest-boot-inval"], "whole", 3_725_548),
    (10_000_000, ["guest-dma-cmo"], "whole", 2_829_856),
    (10_000_000, ["kvm-cache-toggle"], "whole", 4_052_312),
    (10_000_000, ["none", "mair-trap"], "whole", 2_560_852),
    (10_000_000, ["all"], "whole", 6_422_516),
    (10_000_000, ["all"], "on disk", 5_602_992),
    (10_000_000, ["all"], "serial", 4_951_600),
]
_PLAN_ESTIMATES = {"whole": {}, "on disk": {"findings_kept": False}, "serial": {"findings_kept": False, "replays": 1}}


@pytest.mark.parametrize("events,specs,plan,peak_kib", MEASURED_PEAKS)
def test_the_whole_trace_estimate_bounds_the_measured_peak_without_wasting_the_budget(events, specs, plan, peak_kib):
    """Under the peak, `analyze` would run out of the budget it was given; far above it, a trace
    that fits is partitioned, which takes three times as long (the catalog of 10 M events:
    78-89 s partitioned, 25 s with its findings on disk)."""
    from tracekit.analyze import expand_mitigations

    ratio = P.estimated_bytes(events, expand_mitigations(specs), **_PLAN_ESTIMATES[plan]) / (peak_kib * 1024)
    assert 1.05 <= ratio <= 1.8


def test_a_mitigation_that_only_retypes_counts_as_the_baseline():
    """Mitigation.retypes_only (mair-trap, coherent-device, host-uncached, s2fwb): no second frame
    beside the trace, so the estimate is none's (measured at 10 M events: s2fwb 1.85 GiB, none
    1.89 GiB); a combination with a mitigation that inserts maintenance is heavy."""
    n = 10_000_000
    light = P.estimated_bytes(n, ["none"])
    for spec in ("mair-trap", "coherent-device", "host-uncached", "s2fwb", "mair-trap+s2fwb"):
        assert P.estimated_bytes(n, [spec]) == light, spec
    assert P.estimated_bytes(n, ["mair-trap+guest-boot-inval"]) == P.estimated_bytes(n, ["guest-boot-inval"]) > light
    assert P.estimated_bytes(n, ["none", "mair-trap"]) < P.estimated_bytes(n, ["none", "guest-dma-cmo"])


def test_a_mitigation_that_copies_the_frame_counts_more_than_the_baseline(trace):
    """`none` replays the resolved frame as it is; a mitigation that inserts maintenance builds a
    new frame beside it (MEASURED_PEAKS at 10 M events: 1.89 GiB against 2.42 GiB for guest-boot-inval)."""
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(trace).metadata.num_rows
    assert P.estimated_bytes(rows, ["guest-boot-inval"]) > P.estimated_bytes(rows, ["none"])
    budget = (P.estimated_bytes(rows, ["guest-boot-inval"]) + P.estimated_bytes(rows, ["none"])) // 2
    assert P.should_partition(trace, budget, ["guest-boot-inval"])
    assert not P.should_partition(trace, budget, ["none"])


@pytest.mark.parametrize("parts", [3, 300])  # owners in a table of bytes, of 16-bit words
def test_owners_by_table_are_those_by_search(monkeypatch, parts):
    """A block's owner: the part it was assigned (looked up in a table when the blocks span
    little, by a binary search otherwise), or a hash for a block the count never saw."""
    import numpy as np

    rng = np.random.default_rng(parts)
    blocks = np.unique(rng.integers(1_000, 200_000, 5_000).astype(np.uint64))
    counts = rng.integers(1, 50, len(blocks))
    by_table = P.Owners.assign(6, blocks, counts, parts)
    monkeypatch.setattr(P.Owners, "TABLE_BYTES", 0)
    by_search = P.Owners.assign(6, blocks, counts, parts)
    assert by_table._table is not None and by_search._table is None
    asked = np.concatenate([blocks, rng.integers(0, 300_000, 20_000).astype(np.uint64),
                            np.array([0, blocks[0] - 1, blocks[-1] + 1, 2**64 - 1], np.uint64)])
    got = by_table.of(asked)
    assert np.array_equal(got, by_search.of(asked))
    assert np.array_equal(got[:len(blocks)], by_search.owner)  # the assigned ones
    assert got.min() >= 0 and got.max() < parts
