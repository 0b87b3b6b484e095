"""The hazard rules of the coherence model, one positive and one negative case each.

Every scenario states its verdicts as ``#!`` annotations (the vectors' convention);
the expected verdicts were worked out by hand from coherence-model.md sections 3-4
and 7 (and docs/semantics.md where the model is silent).
"""

from __future__ import annotations

import polars as pl
import pytest

from tracekit.testing import assert_verdicts, findings

HEAD = """
@region ram 0x40000000 16M ram
@device nic noncoherent
@device gpu coherent
guest sysreg MAIR_EL1 0xbb44ff        # idx0 WB, idx1 NC, idx2 WT
guest sysreg SCTLR_EL1 0x1005         # M | C | I
"""


def test_h1_dirty_line_not_cleaned_before_noncacheable_read():
    assert_verdicts(HEAD + """
guest write 0x40000000 8 idx=0
guest read  0x40000000 8 idx=1        #! none stale-read/dirty-not-cleaned
guest write 0x40000040 8 idx=0
guest cmo   dc.cvac 0x40000040        # the clean between W and the read removes H1
guest read  0x40000040 8 idx=1
host  write 0x40000080 8
dev.nic read 0x40000080 8             #! none stale-read/dirty-not-cleaned
dev.gpu read 0x40000080 8             # a coherent device snoops: path C, no hazard
""")


def test_h2_invalidation_must_follow_the_noncacheable_write():
    assert_verdicts(HEAD + """
guest write 0x40000000 8 idx=1
guest cmo   dc.civac 0x40000000       # after W: the stale line is gone
guest read  0x40000000 8 idx=0
guest cmo   dc.civac 0x40000040       # before W: speculation can refill the line
guest write 0x40000040 8 idx=1
guest read  0x40000040 8 idx=0        #! none stale-read/stale-line-not-invalidated
guest write 0x40000080 8 idx=1
guest cmo   dc.cvac 0x40000080        # a clean alone does not drop a stale copy
guest read  0x40000080 8 idx=0        #! none stale-read/stale-line-not-invalidated
""")


def test_dc_ivac_is_clean_and_invalidate_under_stage2():
    assert_verdicts(HEAD + """
guest write 0x40000000 8 idx=0
guest cmo   dc.ivac 0x40000000        # stage 2 on: acts as DC CIVAC, nothing discarded
guest read  0x40000000 8 idx=1
""")


def test_dc_ivac_discards_on_bare_metal():
    assert_verdicts("@stage2 off\n" + HEAD + """
guest write 0x40000000 8 idx=0        #! none lost-write/discarded-by-invalidate
guest cmo   dc.ivac 0x40000000
guest read  0x40000000 8 idx=1        #! none stale-read/discarded-by-invalidate
guest write 0x40000040 8 idx=0
guest cmo   dc.cvac 0x40000040        # cleaned first: the invalidation discards nothing
guest cmo   dc.ivac 0x40000040
guest read  0x40000040 8 idx=1
""")


def test_a_hosts_dc_ivac_is_never_upgraded():
    assert_verdicts(HEAD + """
guest write 0x40000000 8 idx=0        #! none lost-write/discarded-by-invalidate
host  cmo   dc.ivac 0x40000000        # stage 2 upgrades only the guest's operations
guest read  0x40000000 8 idx=1        #! none stale-read/discarded-by-invalidate
""")


def test_sctlr_and_mair_are_per_vcpu():
    assert_verdicts("""
@region ram 0x40000000 16M ram
guest.0 sysreg MAIR_EL1 0xff
guest.0 sysreg SCTLR_EL1 0x1005
guest.1 write 0x40000000 8                # guest.1 still has its MMU off: Device, to memory
guest.0 read  0x40000000 8 idx=0          #! none stale-read/stale-line-not-invalidated
guest.1 sysreg MAIR_EL1 0x44              # guest.1's idx0 is Non-cacheable
guest.1 sysreg SCTLR_EL1 0x1005
guest.0 write 0x40000040 8 idx=0
guest.1 read  0x40000040 8 idx=0          #! none stale-read/dirty-not-cleaned
""")


def test_sctlr_c_clear_with_mmu_on_makes_normal_memory_noncacheable():
    assert_verdicts("""
@region ram 0x40000000 16M ram
guest sysreg MAIR_EL1 0xff
guest sysreg SCTLR_EL1 0x1001             # M and I, C clear
guest write 0x40000000 8 idx=0            # Normal WB in MAIR, but C=0: Non-cacheable
guest read  0x40000000 8 attr=wb          # stated WB is still Non-cacheable: N reads N, fine
host  read  0x40000000 8                  #! none stale-read/stale-line-not-invalidated
guest sysreg SCTLR_EL1 0x1005
guest read  0x40000000 8 idx=0            #! none stale-read/stale-line-not-invalidated
""")


def test_fwb_makes_mmu_off_accesses_write_back():
    text = """
@region ram 0x40000000 16M ram
{fwb}
guest write 0x40000000 8                  # MMU off: Device-nGnRnE unless FWB
host  read  0x40000000 8                  {verdict}
"""
    assert_verdicts(text.format(fwb="@fwb on", verdict=""))
    assert_verdicts(text.format(fwb="@fwb off", verdict="#! none stale-read/stale-line-not-invalidated"))


def test_fwb_leaves_mmio_device():
    from tracekit.resolve import resolve
    from tracekit.testing import scenario

    tr = scenario("""
@fwb on
@region ram  0x40000000 16M ram
@region uart 0x09000000 4K  mmio
guest write 0x09000000 4
guest write 0x40000000 4
""")
    r = resolve(tr.events, tr.info)
    acc = r.filter(pl.col("op") == "write")
    assert acc["mem_type"].to_list() == ["dev-ngnrne", "wb"]
    assert acc["path"].to_list() == ["N", "C"]
    assert acc["fwb"].to_list() == [False, True]


def test_write_through_reads_through_the_cache_and_writes_memory():
    assert_verdicts(HEAD + """
guest write 0x40000000 8 idx=2            # WT write updates memory too
host  read  0x40000000 8 attr=nc          # so a memory read sees it
host  write 0x40000040 8 attr=nc
guest read  0x40000040 8 idx=2            #! none stale-read/stale-line-not-invalidated
guest write 0x40000080 8 idx=0            # the line is dirty ...
guest write 0x40000088 8 idx=2            # ... a WT write to it causes no hazard of its own
host  read  0x40000088 8 attr=nc
""")


def test_an_access_spanning_two_lines_is_reported_per_line():
    f = assert_verdicts(HEAD + """
guest write 0x4000003c 8 idx=1
guest read  0x4000003c 8 idx=0            #! none stale-read/stale-line-not-invalidated
""")
    rows = f.sort("line").select("line", "addr", "size").rows()
    assert rows == [(0x40000000, 0x4000003C, 4), (0x40000040, 0x40000040, 4)]


def test_only_bytes_the_write_touched_are_stale():
    assert_verdicts(HEAD + """
guest write 0x40000000 8 idx=1
guest read  0x40000008 8 idx=0            # same stale line, bytes never written: no finding
guest read  0x40000004 8 idx=0            #! none stale-read/stale-line-not-invalidated
""")


def test_h3_other_bytes_of_a_dirty_line_are_clobbered_until_rewritten():
    assert_verdicts(HEAD + """
guest write 0x40000000 8 idx=0
dev.nic write 0x40000010 8                #! none lost-write/clobbered-by-writeback
guest read  0x40000010 8 idx=0            #! none stale-read/clobbered-by-writeback none stale-read/stale-line-not-invalidated
guest cmo   dc.civac 0x40000000
dev.nic read 0x40000010 8                 #! none stale-read/clobbered-by-writeback
dev.nic write 0x40000010 8                # rewritten on a clean line: no longer clobbered
dev.nic read 0x40000010 8
""")


def test_h3_needs_a_dirty_line():
    assert_verdicts(HEAD + """
guest write 0x40000000 8 idx=0
guest cmo   dc.cvac 0x40000000
dev.nic write 0x40000010 8
dev.nic read 0x40000010 8
""")


LINE128 = HEAD + """
guest write 0x40000000 8 idx=0
guest cmo   dc.cvac 0x40000040            # the same line when lines are 128 bytes
guest read  0x40000000 8 idx=1
"""


def test_line_size_128_from_the_trace():
    assert findings("@line-size 128\n" + LINE128).height == 0
    assert findings(LINE128)["cause"].to_list() == ["dirty-not-cleaned"]


def test_line_size_option_overrides_the_trace():
    assert findings(LINE128, line_size=128).height == 0
    f = findings("@line-size 128\n" + LINE128, line_size=64)
    assert f["cause"].to_list() == ["dirty-not-cleaned"]


def test_set_way_operations_neither_clean_nor_invalidate():
    assert_verdicts(HEAD + """
guest write 0x40000000 8 idx=0
guest cmo   dc.cisw
guest read  0x40000000 8 idx=1            #! none stale-read/dirty-not-cleaned
host  write 0x40000040 8 attr=nc
guest cmo   dc.cisw
guest read  0x40000040 8 idx=0            #! none stale-read/stale-line-not-invalidated
guest write 0x40000080 8 idx=0
guest cmo   dc.isw                        # stage 2: DC ISW acts as DC CISW, discards nothing
guest read  0x40000080 8 idx=1            #! none stale-read/dirty-not-cleaned
""")


def test_dc_isw_may_discard_on_bare_metal_but_is_no_clean():
    assert_verdicts("@stage2 off\n" + HEAD + """
guest write 0x40000000 8 idx=0            #! none lost-write/discarded-by-invalidate
guest cmo   dc.isw
guest read  0x40000000 8 idx=1            #! none stale-read/discarded-by-invalidate none stale-read/dirty-not-cleaned
guest cmo   dc.isw                        # the same write is reported once
""")


SPECULATION = """
@region ram 0x40000000 16M ram host=none
guest sysreg MAIR_EL1 0x44ff
guest sysreg SCTLR_EL1 0x1005
guest write 0x40000000 8 idx=1
guest read  0x40000000 8 idx=0            # A: arch only (cached later, never before W)
guest read  0x40000040 8 idx=0
guest write 0x40000040 8 idx=1
guest read  0x40000040 8 idx=0            # B: both (read through the cache before W)
guest read  0x40000080 8 idx=0
guest cmo   dc.civac 0x40000080
guest write 0x40000080 8 idx=1
guest read  0x40000080 8 idx=0            # C: arch only (invalidated between the access and W)
"""


def _marked(text: str, marker: str) -> int:
    body = text.lstrip("\n").splitlines()
    return next(i for i, line in enumerate(body, 1) if f"# {marker}:" in line)


def test_architectural_speculation_reports_every_cacheable_line():
    f = findings(SPECULATION)
    assert set(f["src_line"]) == {_marked(SPECULATION, m) for m in "ABC"}
    assert set(f["cause"]) == {"stale-line-not-invalidated"}


def test_observed_speculation_needs_a_recorded_cacheable_access_before_the_write():
    f = findings(SPECULATION, speculation="observed")
    assert set(f["src_line"]) == {_marked(SPECULATION, "B")}


def test_instruction_fetch_needs_an_icache_invalidation_after_the_write():
    assert_verdicts(HEAD + """
dev.nic write 0x40080000 64               # code loaded by DMA, straight to memory
guest ifetch 0x40080000 4 idx=0           #! none stale-ifetch/icache-not-invalidated
guest cmo   ic.iallu
guest ifetch 0x40080000 4 idx=0           # no clean needed after a write to memory
guest write 0x40080040 4 idx=0
guest cmo   dc.cvau 0x40080040
guest cmo   ic.iallu
guest ifetch 0x40080040 4 idx=0
guest write 0x40080080 4 idx=0
guest cmo   ic.ivau 0x40080080            # no clean to PoU before the invalidation
guest ifetch 0x40080080 4 idx=0           #! none stale-ifetch/icache-not-invalidated
""")


def test_fix_window_and_other_event_point_at_the_right_events():
    f = findings(HEAD + """
guest write 0x40000000 8 idx=0
guest write 0x40000004 8 idx=0
guest read  0x40000000 16 idx=1
""")
    # events: 0 MAIR, 1 SCTLR, 2 write, 3 write, 4 read; the latest write wins
    assert f.select("seq", "other_seq", "fix_op", "fix_after_seq", "fix_before_seq").rows() == [
        (4, 3, "clean", 3, 4)
    ]


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_both_engines_state_the_same_verdicts(engine):
    assert_verdicts(HEAD + """
guest write 0x40000000 8 idx=0
guest read  0x40000000 8 idx=1            #! none stale-read/dirty-not-cleaned
""", engine=engine)


def test_maintenance_by_address_without_size_acts_on_the_line_holding_it():
    # DC CIVAC Xt maintains the line containing Xt, even when Xt is not line-aligned
    assert_verdicts(HEAD + """
guest write 0x40000040 8 idx=0
guest write 0x40000000 8 idx=0
guest cmo   dc.civac 0x40000020           # line 0x40000000 only
guest read  0x40000000 8 idx=1
guest read  0x40000040 8 idx=1            #! none stale-read/dirty-not-cleaned
""")
