"""Guest page-table walk: stage-1 AttrIndx of recorded accesses from the recorded tables.

Expected values are worked out from the VMSAv8-64 descriptor formats (Arm ARM D8.3):
a descriptor is valid when bit 0 is 1; at levels 0-2, bits[1:0] = 0b11 is a table whose
next-level address is bits[47:12] (4K), 0b01 a block (4K: levels 1 and 2); at level 3
0b11 is a page; AttrIndx is bits[4:2]. With a 4K granule a level-1 block maps 1 GiB,
a level-2 block 2 MiB, a page 4 KiB; T0SZ = 16 starts the walk at level 0 (512 entries).
"""


import polars as pl
from typer.testing import CliRunner

from tracekit.cli import app
from tracekit.importers._lines import finish
from tracekit.importers.guest_map import apply_guest_map, load_guest_map
from tracekit.importers.page_tables import apply_page_tables, block_shift, start_level

ROWS = {"agent": pl.String, "op": pl.String, "addr": pl.UInt64, "size": pl.UInt64, "sysreg": pl.String,
        "value": pl.UInt64, "attr": pl.String, "attr_index": pl.UInt8, "cmo": pl.String, "src_line": pl.UInt64}

L0, L1, L2, L3 = 0x4000_0000, 0x4000_1000, 0x4000_2000, 0x4000_3000
TCR_4K_T0SZ16_EPD1 = 16 | (1 << 23)  # T0SZ = 16, TG0 = 0b00 (4K), EPD1 = 1: TTBR1 not walked
SCTLR_ON = 0x1005  # M, C, I


def table(addr):  # table descriptor (levels 0-2)
    return addr | 0b11


def block(pa, idx):  # block descriptor (level 1: 1 GiB, level 2: 2 MiB)
    return pa | (idx << 2) | 0b01


def page(pa, idx):  # level-3 page descriptor
    return pa | (idx << 2) | 0b11


def st(addr, value, agent="guest.0", size=8):
    return dict(agent=agent, op="write", addr=addr, size=size, value=value)


def sysreg(name, value, agent="guest.0"):
    return dict(agent=agent, op="sysreg", sysreg=name, value=value)


def rd(addr, agent="guest.0", **kw):
    return dict(agent=agent, op="read", addr=addr, size=8, **kw)


def frame(rows):
    full = [{k: r.get(k) for k in ROWS} for r in rows]
    df = pl.DataFrame(full, schema=ROWS)
    return finish(df.with_columns(pl.int_range(1, df.height + 1, dtype=pl.UInt64).alias("src_line")), "t.log")


def tables_4k():
    """VA 0 -> L0[0] -> L1 table; L1[1]: 1 GiB block at PA 0x80000000, AttrIndx 2;
    L1[0] -> L2; L2[0x48]: 2 MiB block at PA 0x09000000, AttrIndx 0; L2[1] -> L3;
    L3[0]: page PA 0x48000000, AttrIndx 1; L3[1]: page PA 0x80005000 (inside the 1 GiB
    block, which says AttrIndx 2), AttrIndx 1."""
    return [
        st(L0 + 0 * 8, table(L1)),
        st(L1 + 1 * 8, block(0x8000_0000, 2)),
        st(L1 + 0 * 8, table(L2)),
        st(L2 + 0x48 * 8, block(0x0900_0000, 0)),
        st(L2 + 1 * 8, table(L3)),
        st(L3 + 0 * 8, page(0x4800_0000, 1)),
        st(L3 + 1 * 8, page(0x8000_5000, 1)),
    ]


def mmu_on(tcr=TCR_4K_T0SZ16_EPD1, ttbr0=L0, agent="guest.0"):
    return [sysreg("TCR_EL1", tcr, agent), sysreg("TTBR0_EL1", ttbr0, agent), sysreg("SCTLR_EL1", SCTLR_ON, agent)]


def idx_of(out, rows):
    return [out["attr_index"][i] for i in rows]


def test_start_level_and_block_sizes_from_the_arm_arm():
    """Rule: the walk starts at the level whose stride covers 64 - TxSZ bits; its table has
    2^(IA bits - bits resolved below it) entries (Arm ARM D8.2 tables for each granule)."""
    assert start_level(16, 12) == (0, 512)   # 4K, 48-bit: level 0, 512 entries
    assert start_level(25, 12) == (1, 512)   # 4K, 39-bit: level 1
    assert start_level(33, 12) == (1, 2)     # 4K, 31-bit: level 1 resolves VA[30], 2 entries
    assert start_level(39, 12) == (2, 16)    # 4K, 25-bit: level 2, VA[24:21]
    assert start_level(16, 14) == (0, 2)     # 16K, 48-bit: level 0 has 2 entries
    assert start_level(16, 16) == (1, 64)    # 64K, 48-bit: level 1, 64 entries
    assert start_level(22, 16) == (2, 8192)  # 64K, 42-bit: level 2, 8192 entries (one 64K table)
    assert [block_shift(lv, 12) for lv in (1, 2, 3)] == [30, 21, 12]
    assert [block_shift(lv, 14) for lv in (2, 3)] == [25, 14]
    assert [block_shift(lv, 16) for lv in (2, 3)] == [29, 16]


def test_leaves_type_accesses_blocks_pages_outside_and_mmu_off():
    """Rules: an MMU-on untyped access takes the AttrIndx of the leaf mapping its PA (level-1
    and level-2 blocks, level-3 pages); a PA no leaf maps stays untyped; an access made with
    the MMU off (before SCTLR_EL1.M = 1) is untouched; an explicit attr= is kept."""
    rows = tables_4k() + [rd(0x8001_0000)] + mmu_on() + [
        rd(0x8001_0000),            # 1 GiB L1 block, AttrIndx 2 (Normal WB in a usual MAIR)
        rd(0x0900_0010),            # 2 MiB L2 block, AttrIndx 0 (Device)
        rd(0x4800_0100),            # the L3 page at 0x48000000, AttrIndx 1 (NC)
        rd(0x4800_1000),            # next 4K page: no leaf (L3[0] maps 4 KiB only)
        rd(0xC000_0000),            # just past the 1 GiB block: untyped
        rd(0x8002_0000, attr="nc"),  # typed by the input: unchanged
        dict(agent="host.0", op="read", addr=0x8001_0000, size=8),  # host: not a guest access
    ]
    df = frame(rows)
    counts = {}
    notes = []
    out = apply_page_tables(df, counts, notes)
    base = len(tables_4k())
    first = base + 1 + 3
    assert out["attr_index"][base] is None  # MMU off
    assert idx_of(out, range(first, first + 6)) == [2, 0, 1, None, None, None]
    assert out["attr"][first + 5] == "nc"
    assert counts["typed_by_page_tables"] == 3
    assert counts["page_tables_ambiguous"] == 0
    # 14 guest accesses (the 7 table stores are writes, made with the MMU off): 1 typed by the
    # input, 3 by the walk, 10 untyped (7 stores, the MMU-off read, two unmapped reads)
    assert counts["guest_accesses"] == 14 and counts["typed_by_input"] == 1 and counts["untyped"] == 10
    assert counts["page_tables"] == 4  # L0, L1, L2, L3
    assert out.columns == df.columns and out.height == df.height
    assert out.drop("attr_index").equals(df.drop("attr_index"))


def test_two_mappings_disagreeing_on_attrindx_are_ambiguous():
    """Rule: PA 0x80005000 is mapped by the 1 GiB block (AttrIndx 2) and by L3[1] (AttrIndx 1):
    the walk does not guess; the access stays untyped and is counted ambiguous. Its
    neighbour 0x80006000 is only in the block: AttrIndx 2."""
    df = frame(tables_4k() + mmu_on() + [rd(0x8000_5008), rd(0x8000_6000)])
    counts = {}
    out = apply_page_tables(df, counts)
    assert out["attr_index"].to_list()[-2:] == [None, 2]
    assert counts["page_tables_ambiguous"] == 1 and counts["typed_by_page_tables"] == 1


def test_same_attrindx_twice_is_not_ambiguous():
    """Rule: two live leaves of one PA that agree on AttrIndx type the access (only a
    disagreement is ambiguous): L3[1] rewritten to AttrIndx 2 agrees with the block."""
    df = frame(tables_4k() + [st(L3 + 8, page(0x8000_5000, 2))] + mmu_on() + [rd(0x8000_5008)])
    counts = {}
    assert apply_page_tables(df, counts)["attr_index"][-1] == 2
    assert counts["page_tables_ambiguous"] == 0


def test_table_rewritten_after_the_ttbr_write_is_seen_by_later_accesses():
    """Rule (docs/semantics.md, guest page-table walk): an access sees the descriptors as
    stored before it, not as they were at the TTBR write: break (L3[0] = 0) leaves the page
    unmapped, make (AttrIndx 2) types later accesses WB; earlier ones keep AttrIndx 1."""
    df = frame(tables_4k() + mmu_on() + [
        rd(0x4800_0000),
        st(L3, 0),                    # break: invalid
        rd(0x4800_0000),
        st(L3, page(0x4800_0000, 2)),  # make: AttrIndx 2
        rd(0x4800_0000),
    ])
    out = apply_page_tables(df, {})
    assert out["attr_index"].to_list()[-5:] == [1, None, None, None, 2]


def test_tables_built_after_the_mmu_is_on_and_dc_zva():
    """Rules: a table built (or linked in) after SCTLR_EL1.M = 1 is walked from then on; DC
    ZVA writes zeros, so a zeroed descriptor is invalid."""
    df = frame(mmu_on() + [st(L0, table(L1)), rd(0x4001_0000), st(L1 + 8, block(0x4000_0000, 3)),
                           rd(0x4001_0000), dict(agent="guest.0", op="cmo", cmo="dc.zva", addr=L1, size=64),
                           rd(0x4001_0000)])
    out = apply_page_tables(df, {})
    assert out["attr_index"].to_list()[-5:] == [None, None, 3, None, None]


def test_partial_and_wide_stores():
    """Rules: two 4-byte stores make one known descriptor (little-endian halves); of a 16-byte
    store only the low 8 bytes were recorded, so the second descriptor is unknown (maps nothing)."""
    d = block(0x4000_0000, 5)
    df = frame([st(L0, table(L1)), st(L1 + 8, d & 0xFFFF_FFFF, size=4), st(L1 + 12, d >> 32, size=4),
                st(L1 + 24, block(0xC000_0000, 4)),                # L1[3], known ...
                st(L1 + 16, block(0x8000_0000, 4), size=16)]       # ... until this stp-like store
               + mmu_on() + [rd(0x4000_0000), rd(0x8000_0000), rd(0xC000_0000)])
    out = apply_page_tables(df, {})
    assert out["attr_index"].to_list()[-3:] == [5, 4, None]


def test_guest_map_and_explicit_types_win_over_the_walk(tmp_path):
    """Rule (precedence): a type in the input > --guest-map > page-table walk; the counts add
    up: guest_accesses = typed_by_input + by the guest map + by the walk + untyped."""
    gm = tmp_path / "g.txt"
    gm.write_text("0x80010000 4K nc\n")
    df = frame(tables_4k() + mmu_on() + [rd(0x8001_0000), rd(0x8002_0000), rd(0x8002_0000, attr_index=7)])
    counts = {}
    df = apply_guest_map(df, load_guest_map(gm), counts)
    out = apply_page_tables(df, counts)
    assert out.select("attr", "attr_index").rows()[-3:] == [("nc", None), (None, 2), (None, 7)]
    assert counts["typed_by_guest_map_attr"] == 1 and counts["typed_by_page_tables"] == 1
    # 10 guest accesses: the 7 table stores (MMU off: untyped) and the 3 reads
    assert counts["typed_by_input"] == 1 and counts["untyped"] == 7 and counts["guest_accesses"] == 10


def test_vcpus_have_their_own_ttbr_and_share_memory():
    """Rule: each vCPU walks from its own TTBR0_EL1; the tables are one memory: guest.1's
    store of a descriptor is seen by guest.0's walk. guest.1 points at a second L0 (empty)."""
    other_l0 = 0x4000_8000
    df = frame(tables_4k()[1:] + [st(L0, table(L1), agent="guest.1"), st(other_l0, 0, agent="guest.1")]
               + mmu_on() + mmu_on(ttbr0=other_l0, agent="guest.1")
               + [rd(0x8001_0000), rd(0x8001_0000, agent="guest.1")])
    out = apply_page_tables(df, {})
    assert out["attr_index"].to_list()[-2:] == [2, None]


def test_ttbr1_and_64k_granule():
    """Rules: TTBR1_EL1 with TG1 = 0b11 (64K), T1SZ = 22 starts at level 2 with 8192
    entries; a level-2 block maps 512 MiB at bits[47:29]; a level-3 page 64 KiB at bits[47:16]."""
    l2, l3 = 0x5000_0000, 0x5001_0000
    tcr = (1 << 7) | (22 << 16) | (0b11 << 30)  # EPD0 = 1, T1SZ = 22, TG1 = 64K
    df = frame([st(l2 + 8, block(0x2000_0000, 6)), st(l2 + 2 * 8, table(l3)), st(l3 + 5 * 8, page(0x7777_0000, 3)),
                sysreg("TCR_EL1", tcr), sysreg("TTBR1_EL1", l2 | (0x1234 << 48)), sysreg("SCTLR_EL1", 1),
                rd(0x3FFF_FFF8), rd(0x7777_FFF8), rd(0x7778_0000)])
    out = apply_page_tables(df, {})
    assert out["attr_index"].to_list()[-3:] == [6, 3, None]


def test_16k_granule_blocks_only_at_level_2():
    """Rules: TG0 = 0b10 (16K), T0SZ = 28 starts at level 2 (2048 entries); a level-2 block
    maps 32 MiB; a 0b01 descriptor at level 3 is reserved (invalid) and maps nothing."""
    l2, l3 = 0x6000_0000, 0x6000_4000
    tcr = 28 | (0b10 << 14) | (1 << 23)
    df = frame([st(l2, block(0x0200_0000, 2)), st(l2 + 8, table(l3)), st(l3, block(0x0800_0000, 1)),
                sysreg("TCR_EL1", tcr), sysreg("TTBR0_EL1", l2), sysreg("SCTLR_EL1", 1),
                rd(0x03FF_FFF8), rd(0x0400_0000), rd(0x0800_0000)])
    out = apply_page_tables(df, {})
    assert out["attr_index"].to_list()[-3:] == [2, None, None]


def test_level0_block_with_4k_is_invalid():
    """Rule: with a 4K granule (DS = 0) a block descriptor at level 0 is invalid."""
    df = frame([st(L0, block(0, 2))] + mmu_on() + [rd(0x1000)])
    assert apply_page_tables(df, {})["attr_index"][-1] is None


def test_reserved_tg0_and_missing_tcr_are_counted_not_raised():
    """Rule: TCR_EL1.TG0 = 0b11 is reserved: that regime is not walked; the summary counts it
    and a note names the line; the MMU on with no recorded TCR_EL1 likewise. No exception."""
    df = frame(tables_4k() + mmu_on(tcr=TCR_4K_T0SZ16_EPD1 | (0b11 << 14)) + [rd(0x4001_0000)])
    counts, notes = {}, []
    out = apply_page_tables(df, counts, notes)
    assert out["attr_index"][-1] is None
    assert counts["page_tables_not_walked"] == 1 and counts["typed_by_page_tables"] == 0
    assert any("t.log:10: guest.0: TCR_EL1" in n and "TG0 = 0b11, a reserved value" in n for n in notes)
    df = frame(tables_4k() + [sysreg("TTBR0_EL1", L0), sysreg("SCTLR_EL1", 1), rd(0x4001_0000)])
    counts, notes = {}, []
    apply_page_tables(df, counts, notes)
    assert counts["page_tables_not_walked"] == 2  # TTBR0 and TTBR1 both without a TCR
    assert "no TCR_EL1 write was recorded" in notes[0]


def test_nothing_to_walk_is_a_no_op():
    """Rule: without a TTBR value and an MMU-on SCTLR_EL1 write nothing is walked or counted."""
    df = frame(tables_4k() + [sysreg("SCTLR_EL1", 1), rd(0x4001_0000)])
    counts = {}
    assert apply_page_tables(df, counts).equals(df) and counts == {}


# ---------------------------------------------------------------- end to end: tracekit ingest

def _csv_store(addr, value):  # mem plugin print-accesses row (9.1+): access_size in bits
    return f"0x400800f0,,0x{addr:x},0x{addr:x},64,store,0x{value:016x}"


def _set_reg(pc, reg, value):  # execlog 9.0+ line whose register suffix gives the value
    return f'0, 0x{pc:x}, 0xd2800000, "mov {reg}, #0x{value:x}", {reg} -> 0x{value:016x}'


def test_cli_ingest_qemu_log_reports_page_table_typing(tmp_path):
    """End to end: a QEMU -D log (execlog with reg= values, mem plugin rows with store data)
    ingested by `tracekit ingest`: the walk types the MMU-on loads (1 GiB block AttrIndx 2,
    L3 page AttrIndx 1), the summary says so; --no-page-walk leaves them untyped."""
    lines = ["insn_vaddr,insn_symbol,mem_vaddr,mem_hwaddr,access_size,access_type,mem_value"]
    for addr, value in [(L0, table(L1)), (L1 + 8, block(0x8000_0000, 2)), (L1, table(L2)),
                        (L2 + 8, table(L3)), (L3, page(0x4800_0000, 1))]:
        lines.append(_csv_store(addr, value))
    pc = 0x40080000
    for reg, name, value in [("x0", "tcr_el1", TCR_4K_T0SZ16_EPD1), ("x1", "ttbr0_el1", L0),
                             ("x2", "sctlr_el1", SCTLR_ON)]:
        lines.append(_set_reg(pc, reg, value))
        lines.append(f'0, 0x{pc + 4:x}, 0xd5182000, "msr {name}, {reg}"')
        pc += 8
    lines.append(f'0, 0x{pc:x}, 0xf9400061, "ldr x1, [x3]", load, 0x80010000, RAM')
    lines.append(f'0, 0x{pc + 4:x}, 0xf9400061, "ldr x1, [x3]", load, 0x48000008, RAM')
    lines.append(f'0, 0x{pc + 8:x}, 0xf9400061, "ldr x1, [x3]", load, 0xc0000000, RAM')
    log = tmp_path / "guest.qemu.log"
    log.write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(log), "-o", str(tmp_path / "t.parquet"), "-q"])
    assert res.exit_code == 0, res.output
    assert "page tables 2" in res.output and "untyped 1" in res.output
    ev = pl.read_parquet(tmp_path / "t.parquet").filter(pl.col("op") == "read")
    assert ev["attr_index"].to_list() == [2, 1, None]
    from tracekit.ingest import ingest_frame
    events, _ = ingest_frame(log)  # the in-memory ingest types the same way
    assert events.filter(pl.col("op") == "read")["attr_index"].to_list() == [2, 1, None]
    res = runner.invoke(app, ["ingest", str(log), "-o", str(tmp_path / "u.parquet"), "-q", "--no-page-walk"])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(tmp_path / "u.parquet").filter(pl.col("op") == "read")["attr_index"].null_count() == 3
