"""The real QEMU 7.2 recording in sample-traces/qemu (execlog + -d cpu + trace events, one log).

Expected values come from sample-traces/qemu/expected.tkt and guest/guest.S, written by hand
from the guest program, not from this importer's output.
"""

from pathlib import Path

import polars as pl
import pytest

from tracekit.importers import detect_format
from tracekit.importers.base import ImportOptions
from tracekit.importers.qemu_log import QemuLogImporter

SAMPLE = Path(__file__).resolve().parent.parent / "sample-traces" / "qemu"
GMAP = Path(__file__).parent / "data" / "qemu" / "sample-guest-map.txt"  # our own copy, from guest.S


@pytest.fixture(scope="module")
def combined():
    res = QemuLogImporter().read(SAMPLE / "combined.log", ImportOptions(trace_events=SAMPLE / "trace-events",
                                                                         guest_map=GMAP, strict=True))
    return pl.concat(list(res.batches)), res


def test_detected_as_qemu_log():
    assert detect_format(SAMPLE / "combined.log") == "qemu-log"
    assert detect_format(SAMPLE / "execlog.log") == "qemu-plugin"


def test_sysreg_values_match_the_guest_program(combined):
    """guest.S builds every sysreg value with movz/movk; -d cpu dumps give TTBR0 (expected.tkt)."""
    df, _ = combined
    assert df.filter(pl.col("op") == "sysreg").select("sysreg", "value").rows() == [
        ("SCTLR_EL1", 0x30D00800), ("MAIR_EL1", 0x44FF00), ("TCR_EL1", 0x200803519), ("TTBR0_EL1", 0x40201000),
        ("SCTLR_EL1", 0x30D01805)]


def test_maintenance_matches_expected(combined):
    """expected.tkt: DC IVAC of B (MMU off), four set/way ops, CVAC/CIVAC/IVAC/CVAU/IC IVAU by VA
    (identity map), DC CIVAC of the DMA descriptors and target."""
    df, res = combined
    cm = df.filter(pl.col("op") == "cmo").select("cmo", "addr").rows()
    assert cm == [
        ("dc.ivac", 0x40400100), ("dc.ivac", 0x40400140), ("dc.cisw", None), ("dc.cisw", None), ("dc.csw", None),
        ("dc.isw", None), ("dc.cvac", 0x40600000), ("dc.civac", 0x40600040), ("dc.ivac", 0x40600100),
        ("dc.civac", 0x408000C0), ("dc.civac", 0x408000C0), ("dc.civac", 0x40800100), ("dc.cvau", 0x40600400),
        ("ic.ivau", 0x40600400)]
    assert res.summary.get("cmo_address_unknown", 0) == 0
    assert res.summary["lines"].get("unknown", 0) == 0  # strict: every line has a known shape


def test_guest_data_accesses_and_types(combined):
    df, _ = combined
    g = df.filter(pl.col("agent").str.starts_with("guest") & pl.col("op").is_in(["read", "write"]))
    first = g.head(4).select("op", "addr", "size").rows()
    assert first == [("write", 0x40400000, 8), ("write", 0x40400040, 8), ("write", 0x40400100, 8),
                     ("write", 0x40400140, 8)]
    nc = g.filter((pl.col("addr") >= 0x40800000) & (pl.col("addr") < 0x40A00000))
    assert nc.height > 0 and nc["attr_index"].unique().to_list() == [2]  # the NC block (MAIR idx 2)


def test_fw_cfg_dma_synthesised(combined):
    """README item 5: each 'fwcfg.dma' kick gives a host read of the 16-byte descriptor at D and a
    host write of its 4-byte control word (the data copy is not in the logs)."""
    df, res = combined
    h = df.filter(pl.col("agent") == "host.fwcfg").select("op", "addr", "size").rows()
    assert h == [("read", 0x40800000, 16), ("write", 0x40800000, 4), ("read", 0x408000C0, 16),
                 ("write", 0x408000C0, 4), ("read", 0x40600200, 16), ("write", 0x40600200, 4)]
    assert res.summary["fw_cfg_dma_transfers_synthesised"] == 3


def test_findings_of_the_recording(tmp_path):
    """README 'Expected findings': without the (untraced) DMA data copy an importer gives findings
    1-4 and 7: H2 at A lines 0 and 1, H2 at QEMU's descriptor read, H1 at the guest's poll of the
    control word, and the stale instruction fetch of SLOT_BAD."""
    from tracekit.analyze import analyze
    from tracekit.ingest import ingest
    out = tmp_path / "rec.parquet"
    ingest([SAMPLE / "combined.log"], out, quiet=True, options=ImportOptions(
        trace_events=SAMPLE / "trace-events", guest_map=SAMPLE / "guest-map.txt", settings=SAMPLE / "settings.tkt"))
    f = analyze(out).findings
    assert f.select("kind", "cause", "agent", "addr").rows() == [
        ("stale-read", "stale-line-not-invalidated", "guest.0", 0x40400000),
        ("stale-read", "stale-line-not-invalidated", "guest.0", 0x40400040),
        ("stale-read", "stale-line-not-invalidated", "host.fwcfg", 0x40800000),
        ("stale-read", "dirty-not-cleaned", "guest.0", 0x40800000),
        ("stale-ifetch", "icache-not-invalidated", "guest.0", 0x40600440)]


@pytest.mark.parametrize("with_map", [True, False])
def test_ingest_summary_says_which_accesses_the_mmu_types_and_which_have_no_type(tmp_path, with_map):
    """Issue 7 item 4: the summary says how many accesses got their type from where and how many
    have none. Its MMU-off and untyped-with-MMU-on counts are made while writing (a running
    SCTLR_EL1 per vCPU); they must agree with the resolver's type_source, computed independently."""
    from tracekit.ingest import ingest
    from tracekit.resolve import resolve
    from tracekit.trace import load
    out = tmp_path / "rec.parquet"
    options = ImportOptions(trace_events=SAMPLE / "trace-events", settings=SAMPLE / "settings.tkt",
                            guest_map=(SAMPLE / "guest-map.txt") if with_map else None)
    summary = ingest([SAMPLE / "combined.log"], out, quiet=True, options=options)
    (src, counts), = summary.guest_types
    tr = load(out)
    sources = dict(resolve(tr.events, tr.info).filter(pl.col("side") == "guest")
                   .group_by(pl.col("type_source").cast(pl.String)).len().iter_rows())
    assert counts["mmu_off"] == sources["mmu-off"] > 0
    assert counts["untyped_mmu_on"] == sources.get("assumed-wb", 0)
    assert (counts["untyped_mmu_on"] == 0) == with_map  # the map types every MMU-on access of this guest
    assert f"{counts['mmu_off']} were made with the MMU off" in summary.text()
