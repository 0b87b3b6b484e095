"""The mitigation package's Python surface: specs, registry, custom mitigations, costs, comparison."""

from __future__ import annotations

import textwrap
from pathlib import Path

import polars as pl
import pytest

from tracekit.analyze import analyze
from tracekit.errors import UnknownMitigationError
from tracekit.mitigations import (
    BUILTIN_ORDER,
    MITIGATIONS,
    MitigationCost,
    MitigationError,
    apply_mitigation,
    compare,
    expand,
    inserted_events,
    parse_spec,
    register_mitigation,
    unregister_mitigation,
)
from tracekit.mitigations.base import interval_union, mitigation_cost
from tracekit.resolve import resolve
from tracekit.trace import load

SCENARIO = """
@region ram 0x40000000 16M ram
@region fb  0x48000000 1M  ram shared
guest sysreg MAIR_EL1 0x44ff
guest sysreg SCTLR_EL1 0x1005
guest write 0x48000000 8 idx=1
host.vnc read 0x48000000 8
host.vnc write 0x40000000 8
guest read 0x40000000 8 idx=1
"""
# Under none: line 6 (host read) H2 stale-line-not-invalidated (guest NC write, host WB read, RAM is
# host-cacheable); line 8 (guest NC read) H1 dirty-not-cleaned (host WB write not cleaned).


@pytest.fixture
def trace(tmp_path):
    p = tmp_path / "s.tkt"
    p.write_text(SCENARIO.lstrip("\n"))
    return load(str(p))


@pytest.fixture
def custom():
    """Names registered by a test are removed afterwards."""
    names: list[str] = []
    yield names
    for n in names:
        unregister_mitigation(n)


# --------------------------------------------------------------------------
# Specs


def test_parse_spec_splits_left_to_right_and_checks_names():
    assert parse_spec("kvm-cache-toggle+guest-boot-inval") == ["kvm-cache-toggle", "guest-boot-inval"]
    assert parse_spec(" none ") == ["none"]


def test_unknown_mitigation_error_names_it_and_lists_the_known_ones():
    with pytest.raises(UnknownMitigationError) as e:
        parse_spec("mair-trap+no-such-fix")
    msg = str(e.value)
    assert "'no-such-fix'" in msg
    assert all(name in msg for name in BUILTIN_ORDER)
    with pytest.raises(UnknownMitigationError, match="empty name"):
        parse_spec("mair-trap++s2fwb")
    with pytest.raises(UnknownMitigationError):
        parse_spec("")


def test_a_combination_names_each_mitigation_once():
    """Regression: `-m guest-boot-inval+s2fwb+guest-boot-inval` applied it twice (its DC IVACs
    inserted twice, its cost counted twice); a repeat in a combination is a usage error, exit 2."""
    from typer.testing import CliRunner

    from tracekit.cli import app
    from tracekit.errors import UsageError

    with pytest.raises(UsageError, match=r"found 'guest-boot-inval' 2 times in 'guest-boot-inval\+s2fwb\+"):
        parse_spec("guest-boot-inval+s2fwb+guest-boot-inval")
    boot = Path(__file__).resolve().parent.parent / "sample-traces" / "boot-mmu-off.tkt"
    r = CliRunner().invoke(app, ["analyze", str(boot), "-m", "none+none"])
    assert r.exit_code == 2 and "expected each mitigation once in a combination" in r.output


def test_expand_all_is_the_catalog_none_first():
    assert expand("all") == list(BUILTIN_ORDER)
    assert expand("all")[0] == "none"
    assert expand(["s2fwb", "all"])[:2] == ["s2fwb", "none"]  # repeats dropped, order kept
    assert expand("none, mair-trap + s2fwb") == ["none", "mair-trap+s2fwb"]
    assert len(expand("all")) == len(set(expand("all")))


def test_catalog_covers_the_model_table():
    """Section 6 lists ten entries; each has who acts, one sentence of change, and limits."""
    assert list(MITIGATIONS)[: len(BUILTIN_ORDER)] == list(BUILTIN_ORDER)
    for m in MITIGATIONS.values():
        assert m.changes and m.limits and m.actor
    actors = {n: MITIGATIONS[n].actor for n in BUILTIN_ORDER}
    assert actors["host-cmo"] == actors["host-uncached"] == "QEMU"
    assert {actors[n] for n in ("mair-trap", "kvm-cache-toggle", "kvm-fault-clean", "s2fwb")} == {"hypervisor"}
    assert {actors[n] for n in ("guest-boot-inval", "guest-dma-cmo", "coherent-device")} == {"guest"}


# --------------------------------------------------------------------------
# Custom mitigations from Python


def test_register_custom_mitigation_and_replay_with_it(trace, custom):
    """A function over the event frame, registered by decorator, usable by name in analyze (and in combinations).

    host-flush inserts a DC CIVAC of the read's lines before each host read: it
    fixes line 6's H2 and leaves line 8's H1 (nothing cleans the host's write);
    after mair-trap the guest's read at line 8 is Write-Back too, so the combination is clean.
    """

    @register_mitigation("host-flush", actor="QEMU", changes="CIVAC before host reads.", limits="Reads only.",
                         traps=lambda frame, ctx: {"hvc": 2})
    def host_flush(frame, ctx):
        lf = frame.lazy()
        reads = lf.filter((pl.col("side") == "host") & (pl.col("op") == "read") & (pl.col("sub") == 0)).select(
            "seq", "src", "src_line", j=pl.lit(0), before=pl.lit(True), acting=pl.col("agent"),
            cmo=pl.lit("dc.civac"), addr=pl.col("addr"), size=pl.col("size"))
        return pl.concat([lf, inserted_events(reads, ctx, lf.collect_schema())])

    custom.append("host-flush")
    assert MITIGATIONS["host-flush"].actor == "QEMU"
    a = analyze(trace, ["none", "host-flush", "mair-trap+host-flush"], engine="reference")
    got = {(m, k, c, line) for m, k, c, line in a.findings.select("mitigation", "kind", "cause", "src_line").iter_rows()}
    assert got == {
        ("none", "stale-read", "stale-line-not-invalidated", 6), ("none", "stale-read", "dirty-not-cleaned", 8),
        ("host-flush", "stale-read", "dirty-not-cleaned", 8),
    }
    cost = a.costs["host-flush"]
    assert cost.traps == {"hvc": 2} and cost.inserted_ops == 1 and cost.inserted_lines == 1
    frame, _, _ = apply_mitigation(resolve(trace.events, trace.info), "mair-trap+host-flush", trace.info)
    civac = frame.filter(pl.col("sub") != 0).row(0, named=True)
    assert civac["agent"] == "host.vnc/host-flush" and civac["sub"] == -64  # k=2 of 2
    assert civac["region"] == "fb" and civac["shared"] is True


def test_register_rejects_bad_names_and_duplicates(custom):
    with pytest.raises(ValueError):
        register_mitigation("a+b", lambda f, c: f)
    with pytest.raises(ValueError):
        register_mitigation("all", lambda f, c: f)
    with pytest.raises(ValueError):
        register_mitigation("mair-trap", lambda f, c: f)
    with pytest.raises(ValueError):
        register_mitigation("x-fix", lambda f, c: f, actor="the cloud")
    register_mitigation("x-fix", lambda f, c: f, actor="hardware")
    custom.append("x-fix")
    assert "x-fix" in expand("all")
    unregister_mitigation("mair-trap")  # built-ins stay
    assert "mair-trap" in MITIGATIONS


def test_custom_mitigation_that_drops_a_column_is_an_error(trace, custom):
    register_mitigation("broken", lambda f, c: f.drop("path"))
    custom.append("broken")
    with pytest.raises(MitigationError, match="broken.*path"):
        apply_mitigation(resolve(trace.events, trace.info), "broken", trace.info)


@pytest.mark.parametrize("profile", ["boot", "virtio", "framebuffer", "mixed"])
def test_mitigations_declared_retypes_only_keep_every_event(profile):
    """Mitigation.retypes_only (the memory planner counts such a mitigation as light as none):
    each built-in that declares it keeps the trace's events, one for one; the others insert."""
    from tracekit.synth import synth_frame, trace_info

    info = trace_info()
    resolved = resolve(synth_frame(60_000, seed=11, profile=profile), info)
    light = {n for n, m in MITIGATIONS.items() if m.builtin and m.retypes_only}
    assert light == {"none", "mair-trap", "coherent-device", "host-uncached", "s2fwb"}
    for name in light:
        frame, _, cost = apply_mitigation(resolved, name, info)
        assert frame.height == resolved.height and (frame["sub"] == 0).all(), name
        assert frame["seq"].equals(resolved["seq"]) and cost.inserted_ops == 0, name


def test_a_mitigation_declared_retypes_only_that_inserts_is_an_error(trace, custom):
    def inserts(frame, ctx):
        lf = frame.lazy()
        at = lf.filter(pl.col("op") == "read").select(
            "seq", "src", "src_line", j=pl.lit(0), before=pl.lit(True), acting=pl.col("agent"),
            cmo=pl.lit("dc.civac"), addr=pl.col("addr"), size=pl.col("size"))
        return pl.concat([lf, inserted_events(at, ctx, lf.collect_schema())])

    register_mitigation("not-light", inserts, retypes_only=True)
    custom.append("not-light")
    with pytest.raises(MitigationError, match="not-light.*retypes_only.*6 events into 8"):
        apply_mitigation(resolve(trace.events, trace.info), "not-light", trace.info)


# --------------------------------------------------------------------------
# Costs


def test_cost_round_trips_through_dict():
    c = MitigationCost(traps={"MAIR_EL1": 3}, inserted_ops=2, inserted_lines=5, retyped_accesses=4,
                       retyped=[{"from": "nc", "to": "wb", "count": 4}], removed_ops=1)
    assert MitigationCost.from_dict(c.to_dict()) == c
    assert MitigationCost.from_dict({}) == MitigationCost()
    assert "MAIR_EL1 3" in c.describe()


def test_cost_is_in_the_analysis_metadata(trace):
    a = analyze(trace, ["none", "host-cmo", "host-uncached"], engine="reference")
    assert a.meta["costs"]["host-cmo"] == a.costs["host-cmo"].to_dict()
    assert a.costs["none"] == MitigationCost()
    # host-cmo: CIVAC before the fb read, nothing for the write outside shared regions
    assert a.costs["host-cmo"].inserted_ops == 1 and a.costs["host-cmo"].inserted_lines == 1
    # host-uncached retypes the host's fb read only (the ram write is not shared)
    assert a.costs["host-uncached"].retyped == [{"from": "wb", "to": "nc", "count": 1}]


def test_ram_civac_covers_every_ram_line_the_trace_touches(tmp_path):
    """Cost rule: one ram.civac covers the distinct RAM lines of the trace (MMIO excluded)."""
    p = tmp_path / "t.tkt"
    p.write_text(textwrap.dedent("""
        @region ram  0x40000000 16M ram
        @region uart 0x09000000 4K  mmio
        guest write 0x40000000 256
        guest write 0x40000080 256
        guest write 0x09000000 4
        guest cmo dc.civac 0x40010000
        guest sysreg SCTLR_EL1 0x1005
    """).lstrip())
    tr = load(str(p))
    frame, info, cost = apply_mitigation(resolve(tr.events, tr.info), "kvm-cache-toggle", tr.info)
    # 0x40000000..0x4000017f is 6 lines; plus the maintained line 0x40010000
    assert cost.inserted_ops == 1 and cost.inserted_lines == 7
    assert frame.filter(pl.col("cmo") == "ram.civac").height == 1


def test_generic_cost_counts_removed_and_retyped():
    before = pl.DataFrame({"seq": [0, 1, 2], "sub": [0, 0, 0], "op": ["write", "cmo", "read"],
                           "cmo": [None, "dc.csw", None], "addr": [0, None, 64], "size": [8, None, 8],
                           "mem_type": ["nc", None, "wb"], "region_kind": ["ram", None, "ram"]},
                          schema_overrides={"seq": pl.UInt64, "sub": pl.Int32, "addr": pl.UInt64, "size": pl.UInt64})
    after = before.filter(pl.col("seq") != 1).with_columns(mem_type=pl.lit("wb"))
    from tracekit.model import TraceInfo

    c = mitigation_cost(before, after, TraceInfo())
    assert c.removed_ops == 1 and c.inserted_ops == 0
    assert c.retyped == [{"from": "nc", "to": "wb", "count": 1}] and c.retyped_accesses == 1


def test_generic_cost_with_a_removed_access_matches_the_others_by_seq():
    """Removed rows that include an access: the kept accesses no longer pair up row by row with
    the trace's, and are matched by seq (the retyped count is of the kept accesses only)."""
    before = pl.DataFrame({"seq": [0, 1, 2, 3], "sub": [0, 0, 0, 0], "op": ["write", "read", "cmo", "read"],
                           "cmo": [None, None, "dc.csw", None], "addr": [0, 64, None, 128],
                           "size": [8, 8, None, 8], "mem_type": ["nc", "nc", None, "nc"],
                           "region_kind": ["ram", "ram", None, "ram"]},
                          schema_overrides={"seq": pl.UInt64, "sub": pl.Int32, "addr": pl.UInt64, "size": pl.UInt64})
    after = before.filter(~pl.col("seq").is_in([1, 2])).with_columns(
        mem_type=pl.when(pl.col("seq") == 3).then(pl.lit("wb")).otherwise(pl.col("mem_type")))
    from tracekit.model import TraceInfo

    c = mitigation_cost(before, after, TraceInfo())
    assert c.removed_ops == 2
    assert c.retyped == [{"from": "nc", "to": "wb", "count": 1}] and c.retyped_accesses == 1


def test_interval_union_merges_overlapping_and_adjacent_runs():
    lf = pl.LazyFrame({"k": [1, 1, 1, 1, 2], "lo": [0, 2, 3, 10, 2], "hi": [1, 2, 5, 11, 2]})
    got = interval_union(lf, ["k"], "lo", "hi").collect().rows()
    assert got == [(1, 0, 5), (1, 10, 11), (2, 2, 2)]


def _lines_by_set(addr: list[int], size: list[int], line_size: int) -> int:
    """The obviously right count: every line of every event in one set."""
    return len({line for a, n in zip(addr, size) for line in range(a // line_size, (a + max(n, 1) - 1) // line_size + 1)})


@pytest.mark.parametrize("case", [
    "empty", "one", "overlapping", "adjacent", "random", "spread-beyond-the-table", "long-over-and-over"])
def test_distinct_lines_counts_each_line_once_by_marking_or_by_merging(case, monkeypatch):
    """The lines ``ram.civac`` and whole-cache operations cover (their cost): marked in a table
    when the lines lie close, merged sorted otherwise; both count every line once."""
    import random

    from tracekit.mitigations import base

    rng = random.Random(7)
    addr, size = {
        "empty": ([], []),
        "one": ([0x1000], [8]),
        "overlapping": ([0x1000, 0x1010, 0x1038, 0x1000], [64, 200, 16, 1]),
        "adjacent": ([0x40, 0x80, 0x100], [64, 64, 64]),
        "random": ([0x4000_0000 + rng.randrange(1 << 20) for _ in range(2000)],
                   [rng.choice([1, 4, 8, 64, 100, 4096]) for _ in range(2000)]),
        # lines 2^40 apart: a table that long is out of the question, the intervals are merged
        "spread-beyond-the-table": ([0x1000, 1 << 46, (1 << 46) + 32], [8, 64, 64]),
        # one 16 MiB interval 64 times: more marks than 8 per event plus the span, merged instead
        "long-over-and-over": ([0x4000_0000] * 64, [16 << 20] * 64),
    }[case]
    marked = []
    real = None
    if case in ("spread-beyond-the-table", "long-over-and-over", "random"):
        from tracekit.mitigations import _lines_kernel

        real = _lines_kernel.marked_lines
        monkeypatch.setattr(_lines_kernel, "marked_lines", lambda *a: marked.append(r := real(*a)) or r)
    frame = pl.LazyFrame({"addr": addr, "size": size, "op": ["write"] * len(addr), "cmo": [None] * len(addr)},
                         schema={"addr": pl.UInt64, "size": pl.UInt64, "op": pl.String, "cmo": pl.String})
    assert base._distinct_lines(frame, 64) == _lines_by_set(addr, size, 64)
    if case == "random":
        assert marked and marked[0] >= 0  # counted by marking
    if case == "spread-beyond-the-table":
        assert marked == []  # never tried: the span is too long
    if case == "long-over-and-over":
        assert marked == [-1]  # tried, gave up past the marks allowed, merged


# --------------------------------------------------------------------------
# Comparison


def test_compare_matrix_fixed_and_introduced(tmp_path):
    """host-uncached fixes line 6 (H2) and introduces line 10 (H1); mair-trap makes the guest's NC accesses WB
    and so fixes lines 6 and 8.

    Matching is on (seq, line, kind, cause).
    """
    p = tmp_path / "s.tkt"
    p.write_text(SCENARIO.lstrip("\n") + "guest write 0x48000040 8 idx=0\nhost.vnc read 0x48000040 8\n")
    # line 9: guest WB write to fb; line 10: host read. Under host-uncached the host reads N: H1 introduced.
    a = analyze(load(str(p)), ["none", "host-uncached", "mair-trap"], engine="reference")
    cmp = compare(a.findings, a.mitigations)
    m = {r["mitigation"]: r for r in cmp.matrix.to_dicts()}
    assert m["none"]["total"] == 2 and m["host-uncached"]["total"] == 2 and m["mair-trap"]["total"] == 0
    assert m["none"]["stale-read/stale-line-not-invalidated"] == 1
    assert m["host-uncached"]["stale-read/dirty-not-cleaned"] == 2
    assert cmp.fixed["host-uncached"]["src_line"].to_list() == [6]
    assert cmp.introduced["host-uncached"]["src_line"].to_list() == [10]
    assert cmp.fixed["mair-trap"]["src_line"].to_list() == [6, 8]
    assert cmp.introduced["mair-trap"].height == 0
    summary = {r["mitigation"]: r for r in cmp.summary().to_dicts()}
    assert summary["host-uncached"] == {"mitigation": "host-uncached", "findings": 2, "fixed": 1, "introduced": 1}
    assert summary["none"]["fixed"] is None
    long = cmp.counts.filter(pl.col("mitigation") == "mair-trap")
    assert long["count"].sum() == 0 and long.height == 2  # zero rows kept for pairs seen elsewhere


def test_compare_without_baseline_and_with_a_clean_mitigation():
    empty = pl.DataFrame(schema={"mitigation": pl.String, "kind": pl.String, "cause": pl.String,
                                 "seq": pl.UInt64, "line": pl.UInt64})
    cmp = compare(empty, ["s2fwb"])
    assert cmp.baseline is None and cmp.fixed == {} and cmp.matrix["total"].to_list() == [0]
