"""The fast engine: named cases for the rules it must get right, and regressions found by the
differential tests (each states the rule and why the expected findings follow from docs/semantics.md).

Cases are small .tkt scenarios through the real importer (``tracekit.testing.scenario``);
the few that need a mitigation's inserted events (whole-RAM clean) build the resolved frame
with ``tests/strategies.events_frame``.
"""

from __future__ import annotations

import textwrap

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from strategies import events_frame
from tracekit.engine import fast, reference
from tracekit.model import Device, Region, TraceInfo
from tracekit.resolve import resolve
from tracekit.schema import FINDINGS_SCHEMA, polars_schema
from tracekit.testing import scenario
from vectors_util import parse_vector, vector_files

COLS = ["kind", "cause", "seq", "line", "addr", "size", "other_seq", "other_agent", "fix_op", "fix_agent",
        "fix_after_seq", "fix_before_seq"]

MMU_ON = """
@region ram 0x40000000 16M ram
guest sysreg MAIR_EL1 0x44ff
guest sysreg SCTLR_EL1 0x1005
"""  # seq 0, 1: idx0 = Normal WB (path C), idx1 = Normal NC (path N)


def run(text: str, *, speculation: str = "architectural", line_size: int | None = None) -> pl.DataFrame:
    """Fast-engine findings of a scenario, checked identical to the reference's."""
    tr = scenario(textwrap.dedent(text))
    info = tr.info if line_size is None else tr.info.replace(line_size=line_size)
    resolved = resolve(tr.events, info)
    got = fast.replay(resolved, info, speculation=speculation)
    assert_frame_equal(got, reference.replay(resolved, info, speculation=speculation))
    return got


def rows(f: pl.DataFrame) -> list[tuple]:
    return f.select(COLS).rows()


# --------------------------------------------------------------------------
# the rules, one case each


def test_h1_dirty_line_not_cleaned_names_the_cacheable_writer():
    """H1: a read on path N of a byte whose last write was on C, with no clean or invalidation between."""
    f = run(MMU_ON + """
        guest.1 sysreg MAIR_EL1 0xff
        guest.1 sysreg SCTLR_EL1 0x1005
        guest.1 write 0x40000010 8 idx=0
        guest   read  0x40000010 8 idx=1
    """)
    line = 0x40000000
    assert rows(f) == [("stale-read", "dirty-not-cleaned", 5, line, 0x40000010, 8, 4, "guest.1", "clean", "guest.1", 4, 5)]


def test_h2_invalidation_before_the_write_does_not_help():
    """H2: a C read of an N-written byte needs an invalidation *after* the write (vector v01's rule)."""
    f = run(MMU_ON + """
        guest cmo dc.civac 0x40000100
        guest write 0x40000100 8 idx=1
        guest read  0x40000100 8 idx=0
        guest cmo dc.civac 0x40000140
        guest write 0x40000140 8 idx=1
        guest cmo dc.civac 0x40000140
        guest read  0x40000140 8 idx=0
    """)
    assert rows(f) == [("stale-read", "stale-line-not-invalidated", 4, 0x40000100, 0x40000100, 8, 3, "guest.0",
                        "invalidate", "guest.0", 3, 4)]


def test_h3_lost_write_and_later_stale_reads_of_clobbered_bytes():
    """H3: an N write while the line may be dirty is a lost write; later reads of its bytes are stale
    (any path) with the fix window of the lost write, until the bytes are written again."""
    f = run(MMU_ON + """
        guest write 0x40000200 4 idx=0
        host  write 0x40000208 8 attr=nc
        guest read  0x40000208 8 idx=1
        guest write 0x40000208 4 idx=1
        guest read  0x4000020c 4 idx=1
        guest read  0x40000208 4 idx=1
    """)
    line = 0x40000200
    # the N write at 3 clobbers bytes 8..15; the N write at 5 is again a lost write (the C write at 2
    # is still not cleaned) and re-clobbers 8..11; the read at 6 of bytes 12..15 names write 3
    assert rows(f) == [
        ("lost-write", "clobbered-by-writeback", 3, line, 0x40000208, 8, 2, "guest.0", "clean", "guest.0", 2, 3),
        ("stale-read", "clobbered-by-writeback", 4, line, 0x40000208, 8, 3, "host.0", "clean", "guest.0", 2, 3),
        ("lost-write", "clobbered-by-writeback", 5, line, 0x40000208, 4, 2, "guest.0", "clean", "guest.0", 2, 5),
        ("stale-read", "clobbered-by-writeback", 6, line, 0x4000020c, 4, 3, "host.0", "clean", "guest.0", 2, 3),
        ("stale-read", "clobbered-by-writeback", 7, line, 0x40000208, 4, 5, "guest.0", "clean", "guest.0", 2, 5),
    ]


def test_h4_set_way_discard_reports_once_and_reads_name_the_latest_discard():
    """H4 on bare metal: DC ISW may discard; the write is a lost write once (at the first DC ISW), its bytes
    stay discarded, and a later read names the latest discarding operation as the end of the fix window
    (a second DC ISW re-discards). DC ISW is no clean, so the N read is H1 as well."""
    f = run("""
        @stage2 off
    """ + MMU_ON + """
        guest write 0x40000000 8 idx=0
        guest cmo dc.isw
        guest.1 cmo dc.isw
        guest read 0x40000000 8 idx=1
    """)
    line = 0x40000000
    assert rows(f) == [
        ("lost-write", "discarded-by-invalidate", 2, line, line, 8, 3, "guest.0", "clean+invalidate", "guest.0", 2, 3),
        ("stale-read", "dirty-not-cleaned", 5, line, line, 8, 2, "guest.0", "clean", "guest.0", 2, 5),
        ("stale-read", "discarded-by-invalidate", 5, line, line, 8, 2, "guest.0", "clean+invalidate", "guest.1", 2, 4),
    ]


def test_set_way_under_stage2_does_nothing():
    """A guest's DC ISW under stage 2 acts as DC CISW: no discard, no clean (vector v03's last case)."""
    f = run(MMU_ON + """
        guest write 0x40000000 8 idx=0
        guest cmo dc.isw
        guest read 0x40000000 8 idx=1
    """)
    assert f.select("cause").to_series().to_list() == ["dirty-not-cleaned"]


def test_icache_needs_clean_to_pou_before_a_whole_icache_invalidation():
    """I-cache rule with IC IALLU (a whole-cache operation on the global timeline): DC CVAU then IALLU
    fixes a C write; IALLU then CVAU does not."""
    f = run(MMU_ON + """
        guest write 0x40080000 4 idx=0
        guest cmo dc.cvau 0x40080000
        guest cmo ic.iallu
        guest ifetch 0x40080000 4 idx=0
        guest write 0x40080040 4 idx=0
        guest cmo ic.ialluis
        guest cmo dc.cvau 0x40080040
        guest ifetch 0x40080040 4 idx=0
    """)
    assert rows(f) == [("stale-ifetch", "icache-not-invalidated", 9, 0x40080040, 0x40080040, 4, 6, "guest.0",
                        "ic-invalidate", "guest.0", 6, 9)]


def test_access_spanning_lines_is_reported_per_line_with_its_bytes_there():
    f = run(MMU_ON + """
        guest write 0x4000003c 8 idx=0
        guest read  0x4000003c 8 idx=1
    """)
    assert rows(f) == [
        ("stale-read", "dirty-not-cleaned", 3, 0x40000000, 0x4000003c, 4, 2, "guest.0", "clean", "guest.0", 2, 3),
        ("stale-read", "dirty-not-cleaned", 3, 0x40000040, 0x40000040, 4, 2, "guest.0", "clean", "guest.0", 2, 3),
    ]


def test_dc_zva_is_a_write_of_the_whole_line():
    """DC ZVA on path N after a C write is an H3 lost write of the whole line (addr = line base, size = line)."""
    f = run(MMU_ON + """
        guest write 0x40000080 8 idx=0
        guest cmo dc.zva 0x400000a0 idx=1
    """)
    assert rows(f) == [("lost-write", "clobbered-by-writeback", 3, 0x40000080, 0x40000080, 64, 2, "guest.0",
                        "clean", "guest.0", 2, 3)]


@pytest.mark.parametrize("line_size, lines", [(32, 2), (64, 1), (128, 1)])
def test_line_size_decides_which_bytes_share_a_line(line_size, lines):
    """H3 needs the C write and the N write on one line: 0x..00 and 0x..20 share a line from 64 bytes up."""
    f = run(MMU_ON + """
        guest write 0x40000000 8 idx=0
        host  write 0x40000020 8 attr=nc
    """, line_size=line_size)
    assert f.height == (1 if lines == 1 else 0)


def test_observed_speculation_needs_a_cacheable_access_before_the_write():
    """--speculation observed: H2 only when a C/T data access touched the line before the N write with no
    invalidation between; architectural: whenever the line is mapped cacheable (here the host maps RAM WB)."""
    text = MMU_ON + """
        guest write 0x40000000 8 idx=1
        guest read  0x40000000 8 idx=0
        guest cmo dc.civac 0x40000000
        guest write 0x40000000 8 idx=1
        guest read  0x40000000 8 idx=0
    """
    arch = run(text)
    obs = run(text, speculation="observed")
    assert arch["seq"].to_list() == [3, 6]
    # observed: the first write had no cacheable access before it; the second came after the read at 3
    # but an invalidation (4) lies between that read and the write, so neither is reported
    assert obs.height == 0


# --------------------------------------------------------------------------
# whole-RAM clean+invalidate (inserted by mitigations): RAM lines only, on the global timeline


def _frame(rows, inserted, info):
    return resolve(events_frame(rows, inserted), info)


def test_ram_civac_cleans_ram_lines_but_not_mmio_lines():
    """ram.civac acts on lines of RAM regions only: a coherent device's C write to an MMIO window
    stays dirty (H1 at the guest's MMU-off read), the same in RAM is cleaned."""
    info = TraceInfo(regions=(Region.make("ram", 0x4000_0000, 1 << 20), Region.make("io", 0x0900_0000, 4096, "mmio")),
                     devices=(Device("gpu", True),))
    ev = [dict(agent="dev.gpu", op="write", addr=0x0900_0000, size=8),
          dict(agent="dev.gpu", op="write", addr=0x4000_0000, size=8),
          dict(agent="guest", op="read", addr=0x0900_0000, size=8),
          dict(agent="guest", op="read", addr=0x4000_0000, size=8)]
    ins = [dict(agent="host.kvm/kvm-cache-toggle", side="host", op="cmo", cmo="ram.civac", seq=1, sub=1, src="test.tkt")]
    r = _frame(ev, ins, info)
    got = fast.replay(r, info)
    assert_frame_equal(got, reference.replay(r, info))
    assert rows(got) == [("stale-read", "dirty-not-cleaned", 2, 0x0900_0000, 0x0900_0000, 8, 0, "dev.gpu", "clean",
                          "dev.gpu", 0, 2)]


def test_ram_civac_between_set_way_operations_ends_the_discard_window():
    """A DC ISW after a whole-RAM clean finds nothing dirty; one before it discards (bare metal)."""
    info = TraceInfo(stage2=False)
    ev = [dict(agent="guest", op="sysreg", sysreg="MAIR_EL1", value=0xFF),
          dict(agent="guest", op="sysreg", sysreg="SCTLR_EL1", value=0x1005),
          dict(agent="guest", op="write", addr=0x1000, size=8, attr_index=0),
          dict(agent="guest", op="cmo", cmo="dc.isw"),
          dict(agent="guest", op="cmo", cmo="dc.isw"),
          dict(agent="guest", op="write", addr=0x2000, size=8, attr_index=0),
          dict(agent="guest", op="cmo", cmo="dc.isw"),
          dict(agent="guest", op="read", addr=0x1000, size=8, attr_index=0),
          dict(agent="guest", op="read", addr=0x2000, size=8, attr_index=0)]
    # the whole-RAM clean lands after the first DC ISW (3) and before the second (4)
    ins = [dict(agent="host.kvm/kvm-cache-toggle", side="host", op="cmo", cmo="ram.civac", seq=4, sub=-1, src="x")]
    r = _frame(ev, ins, info)
    got = fast.replay(r, info)
    assert_frame_equal(got, reference.replay(r, info))
    assert got.select("kind", "cause", "seq", "other_seq", "fix_before_seq").rows() == [
        ("lost-write", "discarded-by-invalidate", 2, 3, 3),  # at the first ISW only
        ("lost-write", "discarded-by-invalidate", 5, 6, 6),
        ("stale-read", "discarded-by-invalidate", 7, 2, 3),  # the second ISW (after the clean) did not re-discard
        ("stale-read", "discarded-by-invalidate", 8, 5, 6),
    ]


# --------------------------------------------------------------------------
# regressions found by tests/test_differential.py and engine corner cases


def test_regression_no_findings_is_an_empty_frame_with_the_schema():
    """Found by hypothesis: a trace with no findings gave one row of nulls (conform of an empty frame)."""
    f = run("""
        guest read 0x40000000 1
    """)
    assert f.height == 0
    assert dict(f.schema) == polars_schema(FINDINGS_SCHEMA)


def test_regression_kept_layout_is_not_reused_for_another_trace_with_the_same_addresses():
    """Found by hypothesis: the per-line layout kept between mitigations was re-used for a different trace
    whose events had the same seq/addr/size but another operation (ifetch vs read). The checksum now
    covers op, cmo, side and region kind."""
    base = MMU_ON + """
        guest write 0x40000000 4 idx=0
        guest {op} 0x40000000 4 idx=1
    """
    read = run(base.format(op="read"))
    fetch = run(base.format(op="ifetch"))
    assert read["cause"].to_list() == ["dirty-not-cleaned"]
    assert fetch["cause"].to_list() == ["icache-not-invalidated"]


def test_lines_too_far_apart_to_pack_in_one_sort_key():
    """Lines at both ends of the address space (no regions: all RAM) take the stable-sort path."""
    f = run("""
        guest write 0x0 8
        guest write 0xffffffffffffffc0 8
        host  read 0x0 8
        host  read 0xffffffffffffffc0 8
    """)
    # MMU-off guest writes go to memory (N); the host reads through its WB mapping (C): H2 on both lines
    assert f.select("seq", "line").rows() == [(2, 0), (3, 0xFFFFFFFFFFFFFFC0)]


def test_findings_past_the_first_output_block_grow_it_between_lines():
    """The kernel's output starts at 1,024 rows (a sixteenth of the pieces, at least that) and grows
    between two lines, by the next line's bound. Here 600 lines each hold a C write and two N reads
    of it (H1 twice per line): 1,200 findings from 1,800 pieces, so the block fills mid-trace."""
    body = "".join(f"guest write {0x40000000 + 64 * k:#x} 8 idx=0\n"
                   f"guest read {0x40000000 + 64 * k:#x} 8 idx=1\n"
                   f"guest read {0x40000000 + 64 * k + 4:#x} 4 idx=1\n" for k in range(600))
    f = run(MMU_ON + body)
    assert f.height == 1200
    assert f.group_by("line").len()["len"].to_list() == [2] * 600
    assert set(f.select("kind", "cause").rows()) == {("stale-read", "dirty-not-cleaned")}


def test_one_line_with_more_findings_than_the_first_output_block():
    """A line whose own bound exceeds the whole first block (1,500 N reads of one C write: 1,500 H1
    findings, bound 6,002) grows it before the line is scanned."""
    body = "guest write 0x40000000 8 idx=0\n" + "guest read 0x40000000 8 idx=1\n" * 1500
    f = run(MMU_ON + body)
    assert f.height == 1500
    assert f["other_seq"].unique().to_list() == [2]  # every read names the one write


def test_events_out_of_order_are_replayed_in_seq_sub_order():
    tr = scenario(textwrap.dedent(MMU_ON + """
        guest write 0x40000000 8 idx=0
        guest read  0x40000000 8 idx=1
    """))
    r = resolve(tr.events, tr.info)
    shuffled = r.sample(fraction=1.0, shuffle=True, seed=1)
    assert_frame_equal(fast.replay(shuffled, tr.info), fast.replay(r, tr.info))
    assert fast.replay(r, tr.info).height == 1


@pytest.mark.parametrize("path", vector_files(), ids=lambda p: p.name)
def test_worked_vectors_match_the_reference_under_every_checked_mitigation(path):
    from tracekit.mitigations import apply_mitigation

    v = parse_vector(path)
    tr = scenario(path.read_text(), name=path.name)
    resolved = resolve(tr.events, tr.info)
    for spec in v.check:
        mitigated, minfo, _ = apply_mitigation(resolved, spec, tr.info)
        for speculation in ("architectural", "observed"):
            assert_frame_equal(fast.replay(mitigated, minfo, mitigation=spec, speculation=speculation),
                               reference.replay(mitigated, minfo, mitigation=spec, speculation=speculation))


def test_a_frame_with_the_layouts_rows_reuses_their_places(monkeypatch):
    """A mitigated frame whose recorded events are those of the frame that made the kept layout
    (retyped, or with events inserted among them) finds the pieces' rows by one gather, in the
    frame's order or out of it; one without some recorded events that have no pieces (KVM
    removes the set/way operations it emulates) shifts those rows past the removed ones; one
    with recorded events the layout's frame did not have looks each piece's event up by seq.
    All give the reference engine's findings."""
    from tracekit.engine import _fast_kernel as K
    from tracekit.mitigations import apply_mitigation
    from tracekit.trace import load

    from pathlib import Path

    trace = load(Path(__file__).resolve().parent.parent / "sample-traces" / "boot-mmu-off.tkt", compact=True)
    resolved = resolve(trace.events, trace.info)
    used = []
    for name in ("relayout", "shifted_past"):
        real = getattr(K, name)
        monkeypatch.setattr(K, name, lambda *a, _real=real, _name=name: (used.append(_name), _real(*a))[1])
    fast.clear_cache()
    fast.replay(resolved, trace.info, reuse=True)
    frames = [(spec, *apply_mitigation(resolved, spec, trace.info, ordered=ordered)[:2], [])
              for spec in ("mair-trap", "guest-boot-inval", "s2fwb") for ordered in (True, False)]
    no_address = resolved.filter(pl.col("addr").is_null())["seq"]
    assert no_address.len() >= 2
    first, last = no_address[0], no_address[-1]
    frames.append(("x", resolved.filter(pl.col("seq") != last), trace.info, ["shifted_past"]))
    frames.append(("x", resolved.filter(~pl.col("seq").is_in([first, last])), trace.info, ["shifted_past"]))
    # the same, with an inserted event before the removed ones' place (rows among the recorded ones)
    ins = apply_mitigation(resolved, "guest-boot-inval", trace.info)[0]
    frames.append(("x", ins.filter(pl.col("seq") != first), trace.info, ["shifted_past"]))
    extra = resolved.filter(pl.col("seq") == last).with_columns(seq=pl.col("seq").max() + 1000)
    frames.append(("x", pl.concat([resolved, extra]), trace.info, ["relayout"]))
    for spec, frame, info, path in frames:
        used.clear()
        got = fast.replay(frame, info, mitigation=spec, reuse=True)
        assert_frame_equal(got, reference.replay(frame, info, mitigation=spec))
        assert used == path, (spec, used)
    fast.clear_cache()


@pytest.mark.parametrize("keys, want", [
    ([(1, 0), (3, 0), (2, -1), (3, 1)], [0, 2, 1, 3]),  # a frame, then the events appended to it
    ([(1, 0), (2, 1), (2, 1)], [0, 1, 2]),  # equal keys, one run
    ([(2, 1), (3, 0), (2, 1), (2, 1)], [0, 2, 3, 1]),  # equal keys: the first run's row first (stable)
    ([(3, 0), (1, -1), (1, -1), (2, -1)], [1, 2, 3, 0]),  # equal keys within the second run
    ([(5, 0), (1, -1)], [1, 0]),
    ([(5, 0), (1, 0)], []),  # a recorded event in the second run: recorded events out of order
    ([(3, 0), (2, 1), (1, 1)], []),  # three runs: not this kernel's case (argsort)
])
def test_two_run_order_merges_a_frame_and_its_appended_events(keys, want):
    """apply_mitigation(..., ordered=False) gives two runs in (seq, sub) order, the second of
    inserted events; the fast engine merges them (stably) instead of sorting, and says when
    the rows are not such two runs (then it sorts the columns it reads)."""
    import numpy as np

    from tracekit.engine._fast_kernel import two_run_order

    seq = np.array([k[0] for k in keys], np.uint64)
    sub = np.array([k[1] for k in keys], np.int32)
    assert two_run_order(seq, sub).tolist() == want


def _assert_sorts_as_a_stable_sort(high, high_bits, rng):
    """``fast.sort_pairs`` of keys packed as fast.explode packs them (``high`` above the
    positions) must order them, and carry the values, as a stable argsort; ``stable_order``
    of ``high`` must be that argsort."""
    import numpy as np

    n = len(high)
    low_bits = max(1, (n - 1).bit_length())
    key = (high << np.uint64(low_bits)) | np.arange(n, dtype=np.uint64)
    payload = rng.integers(0, 1 << 60, size=n, dtype=np.uint64)
    work, carried = key.copy(), payload.copy()
    spare_key, spare_value = np.empty_like(key), np.empty_like(key)
    if fast.sort_pairs(work, carried, spare_key, spare_value, low_bits, high_bits):
        work, carried = spare_key, spare_value
    order = np.argsort(key, kind="stable")
    assert np.array_equal(work, key[order])
    assert np.array_equal(carried, payload[order])
    assert np.array_equal(fast.stable_order(high.copy(), high_bits), np.argsort(high, kind="stable"))


@pytest.mark.parametrize("high_bits", [1, 5, 11, 12, 25, 40])
@pytest.mark.parametrize("n", [0, 1, 7, 5000])
def test_radix_sorts_order_as_a_stable_sort(high_bits, n):
    """The pieces' and the findings' sorts are LSD radix sorts (one to four passes by the
    width asked for, a pass whose digit is the same for every key skipped): each must give
    what a stable comparison sort gives, for keys with many repeats and for few, and carry
    the values along."""
    import numpy as np

    rng = np.random.default_rng(high_bits * 1000 + n)
    distinct = max(1, min(n // 3, 1 << high_bits))
    values = rng.integers(0, 1 << high_bits, size=distinct, dtype=np.uint64)
    high = values[rng.integers(0, distinct, size=n)] if n else np.zeros(0, np.uint64)
    _assert_sorts_as_a_stable_sort(high, high_bits, rng)


@pytest.mark.parametrize("high_bits", [1, 11, 25, 40])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 5001])
def test_radix_sort_on_two_cores_orders_as_a_stable_sort(monkeypatch, high_bits, n):
    """``fast.sort_pairs`` shares each pass between two threads (each half of the keys counted,
    then moved to its own places); the order must still be a stable sort's, whatever the
    halves hold (a digit only in one half, the same digit in both)."""
    import numpy as np

    from tracekit import _cores

    monkeypatch.setattr(_cores, "SPLIT_ROWS", 1)
    monkeypatch.setattr(_cores, "CORES", 2)
    rng = np.random.default_rng(high_bits * 7 + n)
    high = rng.integers(0, 1 << min(high_bits, 3) if n % 2 else 1 << high_bits, size=n, dtype=np.uint64)
    _assert_sorts_as_a_stable_sort(high, high_bits, rng)


def test_inserted_events_of_both_runs_are_cut_in_rank_order():
    """Regression (a trace hypothesis found for test_analyze_of_the_whole_catalog_gives_the_
    reference_findings, kept in tests/data): under apply_mitigation(..., ordered=False),
    host-cmo+guest-dma-cmo leaves host-cmo's maintenance among the trace's rows and appends
    guest-dma-cmo's. Cut in row order, a line's inserted pieces came out of (seq, sub) order
    and the fast engine reported a stale read the reference engine does not."""
    from pathlib import Path

    from tracekit.mitigations import apply_mitigation
    from tracekit.trace import load

    tr = load(Path(__file__).resolve().parent / "data" / "two-runs-rank-order.parquet")
    r = resolve(tr.events, tr.info)
    spec = "host-cmo+guest-dma-cmo"
    loose, minfo, _cost = apply_mitigation(r, spec, tr.info, ordered=False)
    ordered = loose.sort("seq", "sub", maintain_order=True)
    assert not loose.equals(ordered)  # the case at hand: rows out of order
    fast.clear_cache()
    assert_frame_equal(fast.replay(loose, minfo, mitigation=spec), reference.replay(ordered, minfo, mitigation=spec))


def test_the_scans_compiled_code_formats_no_strings():
    """Regression (cold start): growing the output by a 2-D slice assignment made numba compile
    its shape check's error message, and with it its string machinery (str, repr, join: 3.4 s
    of a first run's 12.9), into the scan. Compiled afresh (the cached code cannot be
    inspected), the scan must hold none of it."""
    import numba
    import numpy as np

    from tracekit.engine import _fast_kernel as K

    fresh = numba.njit(cache=False)(K.scan.py_func)
    u64, i64 = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    assert fresh(u64, i64, u64, i64, i64, i64, 0, 64, False).shape == (0, K.NCOL)
    ir = fresh.inspect_llvm(fresh.signatures[0])
    assert "unicode" not in ir and "raise_with_shape_context" not in ir


def test_work_pulled_by_two_threads_comes_back_in_order_and_uses_both():
    """``_cores.on_cores`` runs calls that cost unequally on two threads, each taking the next
    when it is done: the results must be in the calls' order, every call made once, both
    threads must take part when one call blocks, and an error must reach the caller."""
    import threading

    from tracekit import _cores

    saved = _cores.CORES
    _cores.CORES = 2
    try:
        gate = threading.Event()
        names: list[str] = []

        def call(i: int) -> int:
            names.append(threading.current_thread().name)
            if i == 0:
                assert gate.wait(10)  # held until another thread has taken the rest
            elif i == 9:
                gate.set()
            return i * i

        assert _cores.on_cores([lambda i=i: call(i) for i in range(10)]) == [i * i for i in range(10)]
        assert len(names) == 10 and len(set(names)) == 2

        def fails() -> None:
            raise ValueError("part 3")

        with pytest.raises(ValueError, match="part 3"):
            _cores.on_cores([lambda: 1, lambda: 2, fails, lambda: 4])
    finally:
        _cores.CORES = saved


@pytest.mark.parametrize("parts", [2, 5, 64])
def test_scan_cut_in_parts_at_line_boundaries_gives_the_whole_scans_rows(monkeypatch, parts):
    """A big scan is cut at line boundaries into parts taken in turn by two threads (lines cost
    unequally: the halves of a mixed trace took 0.18 and 0.55 s); the rows must be one whole
    scan's, in its order, with the pieces numbered as in the whole, however many parts."""
    import numpy as np

    from tracekit import _cores
    from tracekit.engine import _fast_kernel
    from tracekit.synth import synth_frame, trace_info

    info = trace_info()
    events = resolve(synth_frame(20_000, seed=3, profile="mixed"), info)
    pieces = fast.explode(events, info)
    globals_ = fast.global_ops(events, info)
    whole = _fast_kernel.scan(pieces.line, pieces.pos, pieces.attr, *globals_, events.height, info.line_size, False)
    assert len(whole) > 100  # findings in many parts
    monkeypatch.setattr(fast, "_SPLIT_SCAN", 2)
    monkeypatch.setattr(fast, "_SCAN_PARTS", parts)
    monkeypatch.setattr(_cores, "CORES", 2)
    assert np.array_equal(fast.scan(pieces, globals_, events.height, info, "architectural"), whole)
