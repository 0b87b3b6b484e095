"""The mitigation catalog against coherence-model.md section 6: what each fixes, leaves and introduces.

Each scenario is .tkt text with the worked vectors' annotations
(``#! check ...``, ``EVENT #! M1,M2 KIND/CAUSE``); the verdicts are derived by
hand from the hazard rules (section 4) and the transformation (section 6), and
compared with the replay of the transformed trace by both engines. Structural
checks then look at the inserted events themselves (order, agent, side, sub)
and at the costs.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tracekit.engine import fast, reference
from tracekit.mitigations import apply_mitigation, insertion_sub
from tracekit.resolve import resolve
from tracekit.trace import load

from vectors_util import observed, parse_vector


@dataclass
class Run:
    frame: pl.DataFrame  # transformed, sorted by (seq, sub)
    info: object
    cost: object
    findings: pl.DataFrame


def analyse(tmp_path: Path, text: str, specs: list[str] | None = None) -> dict[str, Run]:
    """Load the scenario with the .tkt importer, resolve, apply each spec, replay with both engines."""
    path = tmp_path / "scenario.tkt"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    v = parse_vector(path)
    specs = specs or v.check
    tr = load(str(path))
    resolved = resolve(tr.events, tr.info)
    out = {}
    for spec in specs:
        frame, info, cost = apply_mitigation(resolved, spec, tr.info)
        ref = reference.replay(frame, info, mitigation=spec)
        assert_frame_equal(fast.replay(frame, info, mitigation=spec), ref)  # the engines agree on it
        out[spec] = Run(frame, info, cost, ref)
    return out


def check_verdicts(tmp_path: Path, text: str) -> dict[str, Run]:
    """The scenario's findings under each checked mitigation are exactly its annotations."""
    runs = analyse(tmp_path, text)
    v = parse_vector(tmp_path / "scenario.tkt")
    for m, run in runs.items():
        want = {x for x in v.expected if x[0] == m}
        got = observed(run.findings)
        assert got == want, f"under {m}: missing {sorted(want - got)}, unexpected {sorted(got - want)}"
    return runs


def inserted(run: Run) -> pl.DataFrame:
    return run.frame.filter(pl.col("sub") != 0)


def position(run: Run, src_line: int) -> int:
    """Row index (in (seq, sub) order) of the recorded event from scenario line ``src_line``."""
    idx = run.frame.with_row_index("_i").filter((pl.col("sub") == 0) & (pl.col("src_line") == src_line))
    assert idx.height == 1
    return idx["_i"][0]


def rows(run: Run) -> list[dict]:
    return run.frame.with_row_index("_i").filter(pl.col("sub") != 0).to_dicts()


# --------------------------------------------------------------------------
# Ordering rule (docs/architecture.md)


def test_insertion_sub_follows_the_ordering_rule():
    # before: -((n - k + 1) * 64 - j); after: (n - k) * 64 + 1 + j
    assert insertion_sub(1, 1, 0, True) == -64
    assert insertion_sub(1, 1, 0, False) == 1
    assert insertion_sub(1, 2, 0, True) == -128 and insertion_sub(2, 2, 0, True) == -64
    assert insertion_sub(1, 2, 0, False) == 65 and insertion_sub(2, 2, 0, False) == 1
    assert insertion_sub(1, 1, 63, True) == -1  # still before the anchor (sub 0)
    # a later mitigation acts closer to the anchor, on both sides
    for j in range(64):
        assert insertion_sub(1, 3, j, True) < insertion_sub(2, 3, 0, True) < insertion_sub(3, 3, 0, True) < 0
        assert 0 < insertion_sub(3, 3, j, False) < insertion_sub(2, 3, 0, False) < insertion_sub(1, 3, 0, False)
    # one mitigation's events keep their own order
    assert insertion_sub(1, 1, 0, True) < insertion_sub(1, 1, 1, True)
    assert insertion_sub(1, 1, 0, False) < insertion_sub(1, 1, 1, False)
    with pytest.raises(ValueError):
        insertion_sub(1, 1, 64, True)
    with pytest.raises(ValueError):
        insertion_sub(3, 2, 0, True)


# --------------------------------------------------------------------------
# guest-boot-inval

BOOT = """
#! check none guest-boot-inval
@region ram 0x40000000 16M ram
@device dma noncoherent
guest write 0x40000000 128
guest write 0x40001000 8
dev.dma write 0x40002000 8
guest sysreg MAIR_EL1 0xff
guest sysreg SCTLR_EL1 0x1005
guest read 0x40000000 8 idx=0     #! none stale-read/stale-line-not-invalidated
guest read 0x40000040 8 idx=0     #! none stale-read/stale-line-not-invalidated
guest read 0x40001000 8 idx=0     #! none stale-read/stale-line-not-invalidated
guest read 0x40002000 8 idx=0     #! none,guest-boot-inval stale-read/stale-line-not-invalidated
guest.1 write 0x40003000 8
"""


def test_boot_inval_invalidates_mmu_off_writes_before_mmu_on(tmp_path):
    """Rule: per vCPU, DC IVAC of each line it wrote with its MMU off, just before its SCTLR_EL1 write setting M.

    The device's write (line 0x40002000) is not the vCPU's: it stays stale.
    """
    run = check_verdicts(tmp_path, BOOT)["guest-boot-inval"]
    ins = rows(run)
    enable = position(run, 8)
    before_enable = [r for r in ins if r["_i"] < enable]
    # lines 0x40000000-0x4000007f as one run, then line 0x40001000, in address order, just before the write
    assert [(r["cmo"], r["addr"], r["size"]) for r in before_enable] == [
        ("dc.ivac", 0x40000000, 128), ("dc.ivac", 0x40001000, 64)]
    assert [r["_i"] for r in before_enable] == [enable - 2, enable - 1]
    assert all(r["_i"] > position(run, 4) and r["_i"] > position(run, 5) for r in before_enable)
    assert {(r["agent"], r["side"], r["seq"]) for r in before_enable} == {
        ("guest.0/guest-boot-inval", "guest", run.frame["seq"][enable])}
    assert [r["sub"] for r in before_enable] == [insertion_sub(1, 1, 0, True), insertion_sub(1, 1, 1, True)]
    assert before_enable[0]["region"] == "ram" and before_enable[0]["shared"] is False
    # guest.1 never turns its MMU on: its line is invalidated after the last event, by guest.1
    pending = [r for r in ins if r["_i"] > enable]
    last_seq = run.frame.filter(pl.col("sub") == 0)["seq"].max()
    assert [(r["agent"], r["addr"], r["seq"], r["sub"]) for r in pending] == [
        ("guest.1/guest-boot-inval", 0x40003000, last_seq, insertion_sub(1, 1, 0, False))]
    assert run.cost.inserted_ops == 3 and run.cost.inserted_lines == 2 + 1 + 1
    assert run.cost.traps == {} and run.cost.retyped_accesses == 0


def test_boot_inval_acts_at_each_mmu_enable_of_its_own_vcpu(tmp_path):
    """Rule: lines written in a later MMU-off period are invalidated before the next enable, not the first."""
    runs = check_verdicts(tmp_path, """
        #! check none guest-boot-inval
        @region ram 0x40000000 16M ram
        guest sysreg MAIR_EL1 0xff
        guest write 0x40000000 8
        guest sysreg SCTLR_EL1 0x1005
        guest sysreg SCTLR_EL1 0x1004
        guest write 0x40000040 8
        guest sysreg SCTLR_EL1 0x1004
        guest sysreg SCTLR_EL1 0x1005
        guest read 0x40000000 8 idx=0    #! none stale-read/stale-line-not-invalidated
        guest read 0x40000040 8 idx=0    #! none stale-read/stale-line-not-invalidated
    """)
    run = runs["guest-boot-inval"]
    ins = rows(run)
    assert [(r["addr"], r["_i"] + 1) for r in ins] == [
        (0x40000000, position(run, 5)), (0x40000040, position(run, 9))]


def test_boot_inval_on_bare_metal_is_not_upgraded_and_may_discard(tmp_path):
    """Rule: with @stage2 off the inserted DC IVAC stays an invalidation that may discard (H4).

    Bytes 8..15 were written cacheably before the MMU went off; the IVAC before
    the re-enable discards them: a lost write at that write and a stale read later.
    """
    text = """
        #! check none guest-boot-inval
        @stage2 {stage2}
        @region ram 0x40000000 16M ram
        guest sysreg MAIR_EL1 0xff
        guest sysreg SCTLR_EL1 0x1005
        guest write 0x40000008 8 idx=0   {h4}
        guest sysreg SCTLR_EL1 0x1004
        guest write 0x40000000 8         #! none,guest-boot-inval lost-write/clobbered-by-writeback
        guest sysreg SCTLR_EL1 0x1005
        guest read 0x40000008 8 idx=0    {h4read}
    """
    check_verdicts(tmp_path, text.format(stage2="off", h4="#! guest-boot-inval lost-write/discarded-by-invalidate",
                                         h4read="#! guest-boot-inval stale-read/discarded-by-invalidate"))
    check_verdicts(tmp_path, text.format(stage2="on", h4="", h4read=""))


def test_boot_inval_many_scattered_lines_at_one_anchor(tmp_path):
    """More than 64 runs at one anchor still invalidate every line (j clamps; same op, disjoint lines)."""
    writes = "\n".join(f"guest write {0x40000000 + 128 * i:#x} 8" for i in range(80))
    reads = "\n".join(f"guest read {0x40000000 + 128 * i:#x} 8 idx=0" for i in range(80))
    runs = analyse(tmp_path, f"""
        #! check none guest-boot-inval
        @region ram 0x40000000 16M ram
        {writes}
        guest sysreg MAIR_EL1 0xff
        guest sysreg SCTLR_EL1 0x1005
        {reads}
    """.replace("\n", "\n        "))
    assert runs["none"].findings.height == 80
    assert runs["guest-boot-inval"].findings.height == 0
    assert runs["guest-boot-inval"].cost.inserted_ops == 80


# --------------------------------------------------------------------------
# guest-dma-cmo

DMA = """
#! check none guest-dma-cmo
@region ram 0x40000000 16M ram
@region buf 0x48000000 1M  ram shared
@device nic noncoherent
guest sysreg MAIR_EL1 0x44ff
guest sysreg SCTLR_EL1 0x1005
guest write 0x48000000 64 idx=0
dev.nic read 0x48000000 64         #! none stale-read/dirty-not-cleaned
dev.nic write 0x48000040 64
guest read 0x48000040 64 idx=0     #! none stale-read/stale-line-not-invalidated
guest write 0x48000080 8 idx=1
host read 0x48000080 8             #! none,guest-dma-cmo stale-read/stale-line-not-invalidated
guest write 0x40000000 8 idx=0
dev.nic read 0x40000000 8          #! none,guest-dma-cmo stale-read/dirty-not-cleaned
"""


def test_dma_cmo_cleans_after_writes_and_invalidates_before_reads_in_shared_regions(tmp_path):
    """Rule: DC CVAC right after each guest write, DC IVAC right before each guest read, shared regions only.

    It leaves the host's read after a guest NC write (a clean does not invalidate
    the host's line) and the non-shared region.
    """
    run = check_verdicts(tmp_path, DMA)["guest-dma-cmo"]
    ins = rows(run)
    got = [(r["cmo"], r["addr"], r["size"], r["agent"], r["side"], r["sub"]) for r in ins]
    assert got == [
        ("dc.cvac", 0x48000000, 64, "guest.0/guest-dma-cmo", "guest", 1),
        ("dc.ivac", 0x48000040, 64, "guest.0/guest-dma-cmo", "guest", -64),
        ("dc.cvac", 0x48000080, 64, "guest.0/guest-dma-cmo", "guest", 1),
    ]
    assert ins[0]["_i"] == position(run, 7) + 1
    assert ins[1]["_i"] == position(run, 10) - 1
    assert run.cost.inserted_ops == 3 and run.cost.inserted_lines == 3


# --------------------------------------------------------------------------
# coherent-device

COHERENT = """
#! check none coherent-device
@region ram 0x40000000 16M ram
@region fb  0x48000000 1M  ram shared
@device gpu noncoherent
guest write 0x48000080 8
host read 0x48000080 8             #! none,coherent-device stale-read/stale-line-not-invalidated
guest sysreg MAIR_EL1 0x44ff
guest sysreg SCTLR_EL1 0x1005
guest write 0x48000000 8 idx=1
host read 0x48000000 8             #! none stale-read/stale-line-not-invalidated
guest write 0x48000040 8 idx=1
dev.gpu read 0x48000040 8          #! coherent-device stale-read/dirty-not-cleaned
guest write 0x40000000 8 idx=1
host read 0x40000000 8             #! none,coherent-device stale-read/stale-line-not-invalidated
"""


def test_coherent_device_makes_mmu_on_shared_accesses_write_back(tmp_path):
    """Rule: guest data accesses to shared regions with the MMU on take stage-1 WB; MMU-off and non-shared stay.

    A genuinely non-coherent device now misses the guest's dirty line (introduced).
    """
    runs = check_verdicts(tmp_path, COHERENT)
    run = runs["coherent-device"]
    assert inserted(run).height == 0
    assert run.cost.retyped == [{"from": "nc", "to": "wb", "count": 2}] and run.cost.retyped_accesses == 2
    mmu_off = run.frame.filter(pl.col("src_line") == 5)
    assert mmu_off["mem_type"][0] == "dev-ngnrne" and mmu_off["s1_decl"][0] == "dev-ngnrne"


# --------------------------------------------------------------------------
# host-cmo

HOST_CMO = """
#! check none host-cmo
@region ram 0x40000000 16M ram
@region fb  0x48000000 1M  ram shared
guest sysreg MAIR_EL1 0x44ff
guest sysreg SCTLR_EL1 0x1005
guest write 0x48000000 8 idx=1
host.vnc read 0x48000000 8          #! none stale-read/stale-line-not-invalidated
host.vnc write 0x48000040 8
guest read 0x48000040 8 idx=1       #! none stale-read/dirty-not-cleaned
guest write 0x48000080 8 idx=0
host.vnc read 0x48000080 8
guest read 0x48000080 8 idx=1       #! none stale-read/dirty-not-cleaned
guest write 0x480000c0 8 idx=1
guest read 0x480000c0 8 idx=0       #! none,host-cmo stale-read/stale-line-not-invalidated
host.vnc write 0x40000000 8
guest read 0x40000000 8 idx=1       #! none,host-cmo stale-read/dirty-not-cleaned
"""


def test_host_cmo_civac_before_reads_cvac_after_writes_never_invalidate_alone(tmp_path):
    """Rule: DC CIVAC right before each host read, DC CVAC right after each host write, shared regions only.

    A plain invalidation by the host (not upgraded: side host) would discard the
    guest's dirty line at 0x48000080 (H4); the CIVAC cleans it, which also fixes
    the guest's later non-cacheable read.
    """
    run = check_verdicts(tmp_path, HOST_CMO)["host-cmo"]
    ins = rows(run)
    assert set(inserted(run)["cmo"]) == {"dc.civac", "dc.cvac"}
    got = [(r["cmo"], r["addr"], r["agent"], r["side"], r["sub"]) for r in ins]
    assert got == [
        ("dc.civac", 0x48000000, "host.vnc/host-cmo", "host", -64),
        ("dc.cvac", 0x48000040, "host.vnc/host-cmo", "host", 1),
        ("dc.civac", 0x48000080, "host.vnc/host-cmo", "host", -64),
    ]
    assert [r["_i"] for r in ins] == [position(run, 7) - 1, position(run, 8) + 1, position(run, 11) - 1]


# --------------------------------------------------------------------------
# host-uncached

UNCACHED = """
#! check none host-uncached
@region ram 0x40000000 16M ram
@region fb  0x48000000 1M  ram shared
guest sysreg MAIR_EL1 0x44ff
guest sysreg SCTLR_EL1 0x1005
guest write 0x48000000 8 idx=1
host read 0x48000000 8             #! none stale-read/stale-line-not-invalidated
guest write 0x48000040 8 idx=0
host read 0x48000040 8             #! host-uncached stale-read/dirty-not-cleaned
host write 0x40000000 8
guest read 0x40000000 8 idx=1      #! none,host-uncached stale-read/dirty-not-cleaned
"""


def test_host_uncached_takes_path_n_and_drops_the_host_alias(tmp_path):
    """Rule: host accesses to shared regions take path N, host_cacheable false there; the guest's WB alias stays."""
    run = check_verdicts(tmp_path, UNCACHED)["host-uncached"]
    fb = run.frame.filter(pl.col("region") == "fb")
    assert not fb["host_cacheable"].any()
    host_fb = fb.filter(pl.col("side") == "host")
    assert set(host_fb["path"]) == {"N"} and set(host_fb["mem_type"]) == {"nc"}
    assert run.frame.filter((pl.col("region") == "ram") & (pl.col("side") == "host"))["path"].to_list() == ["C"]
    assert {r.name: r.host for r in run.info.regions} == {"ram": "wb", "fb": "nc"}
    assert run.cost.retyped == [{"from": "wb", "to": "nc", "count": 2}]


# --------------------------------------------------------------------------
# mair-trap

MAIR = """
#! check none mair-trap
@region ram 0x40000000 16M ram
@region fb  0x48000000 1M  ram shared
@device gpu noncoherent
guest write 0x48000000 8
host read 0x48000000 8             #! none,mair-trap stale-read/stale-line-not-invalidated
guest sysreg MAIR_EL1 0x44ff
guest sysreg SCTLR_EL1 0x1005
guest write 0x48000040 8 idx=1
dev.gpu read 0x48000040 8          #! mair-trap stale-read/dirty-not-cleaned
guest sysreg MAIR_EL1 0xbb04ff
guest write 0x48000080 8 idx=1
host read 0x48000080 8             #! none,mair-trap stale-read/stale-line-not-invalidated
guest write 0x480000c0 8 idx=2
host read 0x480000c0 8
"""


def test_mair_trap_rewrites_nc_wt_entries_and_leaves_mmu_off_alone(tmp_path):
    """Rule: trapped MAIR_EL1 writes have NC/WT bytes made WB; Device bytes and MMU-off accesses are untouched.

    0x44ff -> 0xffff; 0xbb04ff -> 0xff04ff (idx1 Device-nGnRE stays, idx2 WT becomes WB).
    A non-coherent device now misses the guest's dirty line (introduced).
    """
    runs = check_verdicts(tmp_path, MAIR)
    run = runs["mair-trap"]
    mairs = run.frame.filter(pl.col("sysreg") == "MAIR_EL1")["value"].to_list()
    assert mairs == [0xFFFF, 0xFF04FF]
    assert run.frame.filter(pl.col("src_line") == 14)["mair"][0] == 0xFF04FF
    assert run.frame.filter(pl.col("src_line") == 5)["mem_type"][0] == "dev-ngnrne"
    assert run.cost.traps == {"MAIR_EL1": 2}
    assert sorted((r["from"], r["to"], r["count"]) for r in run.cost.retyped) == [("nc", "wb", 1), ("wt", "wb", 1)]
    assert runs["none"].cost.traps == {}


# --------------------------------------------------------------------------
# kvm-cache-toggle

TOGGLE = """
#! check none kvm-cache-toggle
@region ram 0x40000000 16M ram
guest sysreg MAIR_EL1 0xff
guest write 0x40000000 8
guest cmo dc.cisw
guest sysreg SCTLR_EL1 0x1005
guest read 0x40000000 8 idx=0         #! none stale-read/stale-line-not-invalidated
guest sysreg MAIR_EL1 0xff
guest write 0x40000040 8 idx=0
guest cmo dc.csw
guest read 0x40000040 8 attr=nc       #! none stale-read/dirty-not-cleaned
guest sysreg SCTLR_EL1 0x1005
guest.1 sysreg SCTLR_EL1 0x1005
"""


def test_kvm_cache_toggle_state_machine_per_vcpu(tmp_path):
    """Rule: trapping on at reset; a trapped SCTLR_EL1 write toggling M+C is preceded by ONE ram.civac and
    stops trapping; set/way ops are removed, and with trapping off replaced by ram.civac and trapping restarts.

    Line 5's dc.cisw comes with trapping on: removed, no flush. Line 10 (dc.csw)
    comes with trapping off: flushed (fixing line 11), trapping on again, so
    line 12's SCTLR_EL1 write traps (no toggle: no flush). guest.1 starts trapping.
    """
    run = check_verdicts(tmp_path, TOGGLE)["kvm-cache-toggle"]
    assert run.frame.filter(pl.col("cmo").is_in(["dc.cisw", "dc.csw"])).height == 0
    ins = rows(run)
    assert all(r["cmo"] == "ram.civac" and r["addr"] is None and r["agent"] == "host.kvm/kvm-cache-toggle"
               and r["side"] == "host" and r["sub"] == -64 for r in ins)
    seq_of = {r["src_line"]: r["seq"] for r in run.frame.filter(pl.col("sub") == 0).to_dicts()}
    original = load(str(tmp_path / "scenario.tkt")).events
    csw_seq = original.filter(pl.col("cmo") == "dc.csw")["seq"][0]
    assert [r["seq"] for r in ins] == [seq_of[6], csw_seq, seq_of[13]]
    assert ins[0]["_i"] == position(run, 6) - 1
    assert run.cost.traps == {"SCTLR_EL1": 3, "MAIR_EL1": 1, "DC CISW": 1, "DC CSW": 1}
    assert run.cost.removed_ops == 2 and run.cost.inserted_ops == 3
    # each ram.civac covers every RAM line the trace touches: 0x40000000 and 0x40000040
    assert run.cost.inserted_lines == 3 * 2


# --------------------------------------------------------------------------
# kvm-fault-clean

FAULT = """
#! check none kvm-fault-clean
@region ram 0x40000000 16M ram
@device dma noncoherent
dev.dma write 0x40000000 64
guest sysreg MAIR_EL1 0xff
guest sysreg SCTLR_EL1 0x1005
guest read 0x40000000 8 idx=0          #! none stale-read/stale-line-not-invalidated
guest write 0x40001000 8 idx=0
dev.dma read 0x40001000 8              #! none,kvm-fault-clean stale-read/dirty-not-cleaned
dev.dma write 0x40000040 8
guest read 0x40000040 8 idx=0          #! none,kvm-fault-clean stale-read/stale-line-not-invalidated
dev.dma write 0x40003000 4
guest ifetch 0x40003000 4 idx=0        #! none stale-ifetch/icache-not-invalidated
guest read 0x40004ff8 16 idx=0
"""


def test_kvm_fault_clean_before_first_access_per_page(tmp_path):
    """Rule: the first guest access (any vCPU) to each 4 KiB RAM page is preceded by DC CIVAC of the page,
    and IC IVAU of it when that access is an ifetch; it cannot fix what that access writes, nor later ones.
    """
    run = check_verdicts(tmp_path, FAULT)["kvm-fault-clean"]
    ins = rows(run)
    got = [(r["cmo"], r["addr"], r["size"], r["_i"] + 1) for r in ins]
    # pages 4 and 5 (one access spanning them) are one run; the ifetch's IC IVAU comes after its clean
    assert [g[:3] for g in got] == [
        ("dc.civac", 0x40000000, 4096), ("dc.civac", 0x40001000, 4096),
        ("dc.civac", 0x40003000, 4096), ("ic.ivau", 0x40003000, 4096), ("dc.civac", 0x40004000, 8192)]
    assert got[0][3] == position(run, 7) and got[1][3] == position(run, 8)
    assert got[3][3] == position(run, 13) and got[4][3] == position(run, 14)
    assert {(r["agent"], r["side"]) for r in ins} == {("host.kvm/kvm-fault-clean", "host")}
    assert [r["sub"] for r in ins if r["addr"] == 0x40003000] == [insertion_sub(1, 1, 0, True),
                                                                  insertion_sub(1, 1, 32, True)]
    assert run.cost.traps == {"stage-2 fault": 5}
    assert run.cost.inserted_ops == 5 and run.cost.inserted_lines == 64 * 4 + 128


def test_kvm_fault_clean_first_access_of_any_vcpu(tmp_path):
    """Rule: the page is mapped once for the VM: another vCPU's later first access gets nothing."""
    runs = analyse(tmp_path, """
        #! check kvm-fault-clean
        @region ram 0x40000000 16M ram
        guest.0 read 0x40000000 8
        guest.1 read 0x40000040 8
    """)
    ins = inserted(runs["kvm-fault-clean"])
    assert ins.height == 1 and ins["src_line"][0] == 3


# --------------------------------------------------------------------------
# s2fwb

FWB = """
#! check none s2fwb
@region ram  0x40000000 16M ram
@region fb   0x48000000 1M  ram shared
@region uart 0x09000000 4K  mmio
@device gpu noncoherent
guest write 0x40000000 8
guest sysreg MAIR_EL1 0x44ff
guest sysreg SCTLR_EL1 0x1005
guest read 0x40000000 8 idx=0          #! none stale-read/stale-line-not-invalidated
guest write 0x48000000 8 idx=1
dev.gpu read 0x48000000 8              #! s2fwb stale-read/dirty-not-cleaned
guest write 0x09000000 4 idx=0
"""


def test_s2fwb_forces_write_back_in_ram_only(tmp_path):
    """Rule: FWB makes every guest access to RAM Write-Back, MMU off included; MMIO unaffected.

    A non-coherent device now misses the guest's dirty line (introduced).
    """
    run = check_verdicts(tmp_path, FWB)["s2fwb"]
    assert run.info.fwb is True
    assert run.frame.filter(pl.col("region") == "uart")["mem_type"].to_list() == ["dev-ngnrne"]
    guest_ram = run.frame.filter((pl.col("side") == "guest") & (pl.col("region_kind") == "ram")
                                 & pl.col("mem_type").is_not_null())
    assert set(guest_ram["mem_type"]) == {"wb"} and guest_ram["fwb"].all()
    assert sorted((r["from"], r["to"], r["count"]) for r in run.cost.retyped) == [
        ("dev-ngnrne", "wb", 1), ("nc", "wb", 1)]


# --------------------------------------------------------------------------
# Combinations


def test_combination_applies_left_to_right_later_closer_to_anchor(tmp_path):
    """Rule: `a+b` applies a then b; at a shared anchor the later mitigation's events sit closer to it."""
    text = """
        #! check kvm-cache-toggle+guest-boot-inval guest-boot-inval+kvm-cache-toggle
        @region ram 0x40000000 16M ram
        guest sysreg MAIR_EL1 0xff
        guest write 0x40000000 8
        guest sysreg SCTLR_EL1 0x1005
        guest read 0x40000000 8 idx=0
    """
    runs = analyse(tmp_path, text)
    a = runs["kvm-cache-toggle+guest-boot-inval"]
    b = runs["guest-boot-inval+kvm-cache-toggle"]
    assert [(r["cmo"], r["sub"]) for r in rows(a)] == [("ram.civac", -128), ("dc.ivac", -64)]
    assert [(r["cmo"], r["sub"]) for r in rows(b)] == [("dc.ivac", -128), ("ram.civac", -64)]
    for run in (a, b):
        assert rows(run)[-1]["_i"] + 1 == position(run, 5)
        assert run.findings.height == 0
        assert run.cost.inserted_ops == 2 and run.cost.traps == {"SCTLR_EL1": 1, "MAIR_EL1": 1}


def test_combination_sees_the_previous_transformation(tmp_path):
    """Rule: a later mitigation works on the earlier one's output: host-uncached's settings reach s2fwb's info,
    and retyped accesses are counted from the recorded types to the final ones."""
    runs = analyse(tmp_path, """
        #! check mair-trap+s2fwb
        @region ram 0x40000000 16M ram
        @region fb  0x48000000 1M  ram shared
        guest write 0x48000000 8
        guest sysreg MAIR_EL1 0x44ff
        guest sysreg SCTLR_EL1 0x1005
        guest write 0x48000000 8 idx=1
        host read 0x48000000 8
    """, ["mair-trap+s2fwb", "host-uncached+s2fwb"])
    r = runs["mair-trap+s2fwb"]
    assert sorted((x["from"], x["to"], x["count"]) for x in r.cost.retyped) == [("dev-ngnrne", "wb", 1),
                                                                                 ("nc", "wb", 1)]
    assert r.cost.traps == {"MAIR_EL1": 1} and r.info.fwb
    h = runs["host-uncached+s2fwb"]
    assert h.info.fwb and {x.name: x.host for x in h.info.regions}["fb"] == "nc"


# --------------------------------------------------------------------------
# Inserted events carry every resolved column


def test_inserted_events_have_consistent_resolved_columns(tmp_path):
    """Inserted cmo rows: region columns joined from the regions, no memory type, anchor's source position."""
    runs = analyse(tmp_path, DMA, ["guest-dma-cmo"])
    run = runs["guest-dma-cmo"]
    ins = inserted(run)
    assert ins.columns == run.frame.columns
    assert ins.select("region", "region_kind", "shared", "host_cacheable").unique().rows() == [("buf", "ram", True, True)]
    assert ins.select(pl.col("mem_type", "path", "s1_decl", "type_source").is_null().all()).row(0) == (True,) * 4
    assert (ins["op"] == "cmo").all() and ins["src"].is_not_null().all()
    # the guest's inserted events know the vCPU's SCTLR/MAIR in force
    assert set(ins["sctlr"]) == {0x1005} and set(ins["mair"]) == {0x44FF}


def test_mitigated_frames_keep_passed_through_columns_in_one_piece():
    """A retyping mitigation hands the columns it does not touch back as it got them.

    polars' default engine cuts every column of a collected plan into 100k-row
    morsels, and every later numpy read of such a column copies it: the engine
    read each column of a 10 M-event frame several times per replay. So mitigations
    collect with the in-memory engine (``base.collect``).
    """
    from tracekit.mitigations import expand
    from tracekit.synth import synth_frame, trace_info

    events = synth_frame(300_000, seed=3)
    info = trace_info()
    resolved = resolve(events, info)
    assert resolved["seq"].n_chunks() == 1
    for spec in expand(["all"]):
        frame, _info, _cost = apply_mitigation(resolved, spec, info, ordered=False)
        pieces = dict(zip(frame.columns, frame.n_chunks("all")))
        inserted = int((frame["sub"] != 0).sum())
        # appended inserted events make a second piece (ordered=False); nothing else may
        assert max(pieces.values()) <= (2 if inserted else 1), (spec, pieces)


def test_a_loaded_trace_and_its_resolved_frame_share_the_events_columns(tmp_path):
    """`load` puts each column in one piece, so `resolve` adds its columns without copying the
    trace's: an analysis holding both (the Trace and the resolved frame) holds the events once
    (0.7 GB less at 10 M events). polars reads a Parquet file in one piece or more per row group."""
    from tracekit.synth import synth_frame, trace_info
    from tracekit.trace import load

    from tracekit import schema as schema_module
    from tracekit import trace as trace_module

    path = tmp_path / "t.parquet"
    with schema_module.TableWriter(path, schema=schema_module.TRACE_SCHEMA) as w:
        w.row_group = 50_000
        w.write(synth_frame(300_000, seed=3))
        w.finish(trace_info())
    read = trace_module._read_compact(path)  # as polars reads it
    assert read["seq"].n_chunks() > 1 and read["time"].n_chunks() > 1
    tr = load(path, compact=True)
    assert max(tr.events.n_chunks("all")) == 1
    resolved = resolve(tr.events, tr.info)
    for column in ("seq", "time"):  # numeric, no nulls: numpy views of the very buffers
        mine = tr.events[column].to_numpy(allow_copy=False)
        theirs = resolved[column].to_numpy(allow_copy=False)
        assert np.shares_memory(mine, theirs), column


def test_a_trace_replayed_once_leaves_only_its_gathered_columns_in_pieces(tmp_path):
    """For one mitigation (`analyze` and the command pass ``gathered_in_pieces`` then) `load`
    copies into one piece only the columns the engine reads as arrays; time, phase, detail
    and the sources stay in polars' pieces (360 MB not copied at 10 M events). The findings
    gathered from them must be those of a trace in one piece."""
    from polars.testing import assert_frame_equal

    from tracekit.analyze import analyze
    from tracekit.synth import synth_frame, trace_info
    from tracekit.trace import _ARRAY_COLUMNS, load

    from tracekit import schema as schema_module

    path = tmp_path / "t.parquet"
    with schema_module.TableWriter(path, schema=schema_module.TRACE_SCHEMA) as w:
        w.row_group = 20_000
        w.write(synth_frame(100_000, seed=5))
        w.finish(trace_info())
    tr = load(path, compact=True, gathered_in_pieces=True)
    pieces = dict(zip(tr.events.columns, tr.events.n_chunks("all")))
    assert {c for c, n in pieces.items() if n > 1} == {"time", "phase", "detail", "src", "src_line", "src_offset"}
    assert all(pieces[c] == 1 for c in _ARRAY_COLUMNS)
    whole = analyze(load(path, compact=True), ["none"])
    once = analyze(str(path), ["none"])  # (analyze loads it so)
    assert whole.findings.height > 0
    assert_frame_equal(once.findings, whole.findings)
    assert_frame_equal(analyze(tr, ["none"]).findings, whole.findings)
