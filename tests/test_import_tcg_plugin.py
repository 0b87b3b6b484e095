"""TCG plugin output (execlog 7.2 / 9.0+, mem plugin CSV) inside a QEMU log."""

from pathlib import Path

import polars as pl
import pytest

from tracekit.errors import TraceFormatError
from tracekit.importers.base import ImportOptions
from tracekit.importers.qemu_log import QemuLogImporter
from tracekit.importers.tcg_plugin import size_from_disassembly

DATA = Path(__file__).parent / "data" / "qemu"
TE = DATA / "trace-events-excerpt"


def read(name, **kw):
    kw.setdefault("trace_events", TE)
    res = QemuLogImporter().read(DATA / name if isinstance(name, str) else name, ImportOptions(**kw))
    return pl.concat(list(res.batches), how="vertical"), res


@pytest.mark.parametrize("disas,total", [
    ("ldr x1, [x1]", 8), ("str w2, [x1]", 4), ("ldrb w0, [x1]", 1), ("strh w0, [x1]", 2),
    ("ldrsb x0, [x1]", 1), ("ldrsw x0, [x1]", 4), ("ldr q0, [x0]", 16), ("ldr d1, [x0]", 8),
    ("stp x29, x30, [sp, #-0x10]!", 16), ("ldp w0, w1, [x2]", 8), ("ldp q0, q1, [x0]", 32),
    ("ldpsw x0, x1, [x2]", 8), ("stxr w1, x2, [x0]", 8), ("stlxrb w1, w2, [x0]", 1), ("ldaxr w0, [x1]", 4),
    ("stlr x0, [x1]", 8), ("ldar w0, [x1]", 4), ("casal x0, x1, [x2]", 8), ("ldaddb w0, w1, [x2]", 1),
    ("swph w0, w1, [x2]", 2), ("ld1 {v0.16b, v1.16b}, [x0]", 32), ("st1 {v0.8b}, [x0]", 8),
    ("ld1 {v0.s}[1], [x0]", 4), ("ld4r {v0.4s, v1.4s, v2.4s, v3.4s}, [x0]", 16),
    ("dc civac, x0", None), ("add x0, x0, #1", None),
])
def test_access_size_from_disassembly(disas, total):
    """Rule (Arm ARM mnemonics): bytes transferred = register width x count, b/h/sw suffixes fixed."""
    got = pl.select(size_from_disassembly(pl.lit(disas))).item()
    assert got == total


def test_execlog_72_accesses_sysregs_and_maintenance():
    """execlog 7.2 (no reg suffixes): values come from movz/movk in the disassembly."""
    df, res = read("execlog-72.log")
    ops = df.filter(pl.col("op") != "ifetch")
    rows = ops.select("src_line", "op", "addr", "size", "cmo", "sysreg", "value").rows()
    assert rows == [
        (3, "sysreg", None, None, None, "SCTLR_EL1", 0x30D00800),  # movz 0x800 + movk 0x30d0<<16
        (5, "write", 0x40400000, 8, None, None, None),
        (6, "cmo", 0x40400000, 64, "dc.ivac", None, None),  # MMU off: x1 = 0x40400000 is physical
        (8, "cmo", 0x40400040, 64, "dc.ivac", None, None),  # add x1, x1, #0x40 followed
        (9, "write", 0x4F3FFFF0, 8, None, None, None),  # stp: two suffixes of 16 bytes -> 8 each
        (9, "write", 0x4F3FFFF8, 8, None, None, None),
        (10, "read", 0x40500000, 32, None, None, None),  # ldp q: one suffix -> one 32-byte access
        (11, "read", 0x9000018, 1, None, None, None),
        (12, "cmo", None, None, "dc.cisw", None, None),
        (15, "sysreg", None, None, None, "SCTLR_EL1", 0x30D01805),
        (17, "marker", None, None, None, None, None),  # MMU on, no guest map: PA of x3 unknown
        (18, "read", 0x40600000, 8, None, None, None),
    ]
    assert "pl011" in ops.filter(pl.col("src_line") == 11)["detail"].item()
    assert "va=0x40600000" in ops.filter(pl.col("src_line") == 17)["detail"].item()
    # PCs are physical while SCTLR_EL1.M = 0 (lines 1..15, reset state then 0x30d00800), not after
    assert df.filter(pl.col("op") == "ifetch")["src_line"].to_list() == list(range(1, 16))
    assert df.filter(pl.col("op") == "ifetch")["addr"][0] == 0x40080000
    assert res.summary["cmo_address_unknown"] == 1
    assert res.summary["vcpus_assumed_at_reset"] == 1


def test_guest_map_va_translation_and_types():
    """Rule: with va= ranges, DC by VA and PCs with the MMU on get physical addresses; accesses get idx."""
    df, res = read("execlog-72.log", guest_map=DATA / "identity-map.txt")
    cm = df.filter((pl.col("src_line") == 17) & (pl.col("op") != "ifetch"))
    assert cm.select("op", "cmo", "addr", "size").row(0) == ("cmo", "dc.civac", 0x40600000, 64)
    assert df.filter((pl.col("op") == "ifetch") & (pl.col("src_line") == 18))["addr"].item() == 0x40080044
    rd = df.filter((pl.col("src_line") == 18) & (pl.col("op") == "read"))
    assert rd["attr_index"].item() == 1
    # 0x9000018 (pl011) and 0x4f3ffff0 (outside 16M of RAM at 0x40000000) stay untyped
    assert df.filter((pl.col("src_line") == 11) & (pl.col("op") == "read"))["attr_index"].item() is None
    gm = res.summary["guest_map"]
    assert gm["guest_accesses"] == gm["typed_by_input"] + gm["typed_by_guest_map_idx"] + \
        gm["typed_by_guest_map_attr"] + gm["untyped"]


def test_register_unknown_after_a_load_and_copied_by_mov(tmp_path):
    """Rule: a load into the register makes its value unknown; mov xD, xN copies; adrp sets."""
    p = tmp_path / "c.log"
    p.write_text('0, 0x1000, 0x1, "movz x1, #0x4040, lsl #16"\n'
                 '0, 0x1004, 0x2, "mov x2, x1"\n'
                 '0, 0x1008, 0x3, "ldr x1, [x1]", load, 0x40400000, RAM\n'
                 '0, 0x100c, 0x4, "dc civac, x1"\n'
                 '0, 0x1010, 0x5, "dc civac, x2"\n'
                 '0, 0x1014, 0x6, "adrp x3, #0x40201000"\n'
                 '0, 0x1018, 0x7, "sub x3, x3, #0x1, lsl #12"\n'
                 '0, 0x101c, 0x8, "msr ttbr0_el1, x3"\n')
    df, _ = read(p)
    rows = df.filter(pl.col("op").is_in(["cmo", "marker", "sysreg"])).select("src_line", "op", "addr", "value").rows()
    assert rows == [(4, "marker", None, None), (5, "cmo", 0x40400000, None), (8, "sysreg", None, 0x40200000)]


def test_execlog_90_register_suffixes():
    """9.0+ reg= suffixes: a register's value after an instruction; a sysreg's own suffix wins."""
    df, _ = read("execlog-90-regs.log")
    s = df.filter(pl.col("op").is_in(["sysreg", "marker"])).select("agent", "op", "sysreg", "value").rows()
    assert s == [("guest.0", "sysreg", "MAIR_EL1", 5),
                 ("guest.1", "sysreg", "SCTLR_EL1", 0x30D5198D),
                 ("guest.1", "marker", None, None)]  # x5 of vCPU 1 never seen


def test_cpu_dump_is_state_after_the_line_that_follows_it():
    """Rule (execlog prints an instruction when the next starts): a -d cpu dump describes the
    state after the execlog line printed right after it, except at the first instruction."""
    df, _ = read("execlog-cpu-dumps.log")
    assert df.filter(pl.col("op") == "sysreg")["value"].to_list() == [0x11, 0xAA]


def test_mem_plugin_csv_bits_and_values():
    """mem.c print-accesses: access_size is in bits; the value is kept; counters are plugin-summary."""
    df, res = read("mem-plugin.csv")
    assert df.select("agent", "op", "addr", "size", "value").rows() == [
        ("guest.0", "read", 0x4123A008, 8, 0xDEADBEEF),
        ("guest.0", "write", 0x4123B000, 4, 0x12345678),
        ("guest.0", "write", 0x9000000, 1, 0x48)]
    assert res.summary["lines"] == {"mem-csv": 3, "mem-csv-header": 1, "plugin-summary": 2}


def test_execlog_line_moves_before_events_it_caused():
    """Rule: execlog prints an instruction after it ran, so the str that caused the MMIO event
    is placed before that event; its MMIO access, also recorded by memory_region_ops, is a marker."""
    df, _ = read("interleaved-order.log")
    assert df.select("src_line", "op").rows() == [(1, "ifetch"), (3, "ifetch"), (3, "marker"), (2, "write")]


def test_malformed_execlog_line(tmp_path):
    p = tmp_path / "e.log"
    p.write_text('0, 0x10, 0x1, "nop "\n0, 0x14, 0x2, "ldr x0, [x1]", load, 0xzz, RAM\n')
    with pytest.raises(TraceFormatError, match=r"e.log:2: expected an execlog line"):
        read(p)


def test_mem_csv_bad_size(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("insn_vaddr,insn_symbol,mem_vaddr,mem_hwaddr,access_size,access_type,mem_value\n"
                 "0x1,,0x2,0x3,12,load,0x0\n")
    with pytest.raises(TraceFormatError, match=r"m.csv:2: expected an access_size in bits"):
        read(p)


def test_mem_plugin_csv_detected_by_its_header_despite_csv_suffix(tmp_path):
    """Rule: content that identifies a format beats the suffix: mem.c print-accesses saved as
    .csv is TCG plugin output, not a tabular trace; a tabular CSV stays tabular."""
    from tracekit.importers import detect_format

    p = tmp_path / "accesses.csv"
    p.write_bytes((DATA / "mem-plugin.csv").read_bytes())
    assert detect_format(p) == "qemu-plugin"
    t = tmp_path / "trace.csv"
    t.write_text("agent,op,addr,size\nguest,read,0x40000000,8\n")
    assert detect_format(t) == "csv"
    u = tmp_path / "junk.csv"
    u.write_text("no,known,columns\n1,2,3\n")
    assert detect_format(u) == "csv"  # unrecognised content: the suffix decides
