"""Guest stage-1 memory types from a walk of the guest's own page tables.

A recording made under TCG holds the guest's ``msr ttbr0_el1|ttbr1_el1|tcr_el1|sctlr_el1``
writes with their values (execlog ``reg=``, ``-d cpu`` dumps) and, with the mem plugin,
every store with its data. Those stores include the ones that built the translation
tables, so the stage-1 descriptors are in the trace: this module rebuilds them and gives
each untyped MMU-on guest access the ``attr_index`` (AttrIndx, descriptor bits [4:2]) of
the leaf that maps its guest-physical address.

What is modelled (Arm ARM D8, VMSAv8-64 stage 1, EL1&0 regime):

* TCR_EL1: T0SZ/T1SZ (16..48; above 39 needs FEAT_TTST), EPD0/EPD1, TG0/TG1 (4K, 16K,
  64K); the starting level and the size of the first table follow from TxSZ and the
  granule. TCR_EL1.DS = 1 and 52-bit output addresses with 64K (IPS = 0b110) are not
  walked (counted, with a note); reserved TGx values are not walked either.
* TTBRn_EL1.BADDR (bits [47:1], aligned down to the first table's size); ASID ignored.
* Descriptors: bit 0 valid; at levels 0-2 ``0b11`` is a table (next level at bits
  [47:granule]), ``0b01`` a block where the granule allows one (4K: levels 1, 2; 16K and
  64K: level 2); at level 3 ``0b11`` is a page and ``0b01`` is reserved (invalid).
  Output addresses are 48 bits.
* SCTLR_EL1.M: tables are walked only while the vCPU's MMU is on; a vCPU starts at
  reset (SCTLR_EL1 = 0), TTBR/TCR unknown until written.

Table contents: a doubleword of memory takes the value of the latest store (any agent,
value known) or ``dc zva`` (zeros) before the access in trace order; 1/2/4-byte stores
merge into it; bytes of a store beyond its recorded 64-bit value, and memory never
stored to, are unknown (an unknown descriptor maps nothing). A store whose value was
not recorded is ignored (execlog records a store without its value next to the mem
plugin's row with it). See docs/semantics.md, "Guest page-table walk".

Recorded data addresses are guest-physical, so the lookup is the reverse map
PA -> AttrIndx of every leaf reachable from the vCPU's TTBR0/TTBR1 at the access; when
live leaves of one PA disagree on AttrIndx the access stays untyped and is counted
``page_tables_ambiguous``. Precedence: a type in the input > ``--guest-map`` > this walk.

Cost: a Python loop over the stores to table pages, the descriptors and the register
writes (few); the accesses are typed with two vectorised as-of joins (address, then time).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

import polars as pl

from ..errors import at

#: TCR_EL1.TG0 and TG1 encodings -> granule bits (log2 of the page size); other values reserved.
TG0_BITS = {0b00: 12, 0b01: 16, 0b10: 14}
TG1_BITS = {0b01: 14, 0b10: 12, 0b11: 16}
OA_BITS = 48
REGIME_REGS = ("TTBR0_EL1", "TTBR1_EL1", "TCR_EL1", "SCTLR_EL1")
_END = (1 << 62)  # an index later than every event
MAX_NOTES = 8
_ACCESS = ("read", "write", "ifetch")


def _mask(hi: int, lo: int) -> int:
    """Bits [hi:lo] set."""
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


def block_shift(level: int, granule: int) -> int:
    """log2 of the bytes a descriptor at ``level`` maps (a page at level 3)."""
    return granule + (3 - level) * (granule - 3)


def block_allowed(level: int, granule: int) -> bool:
    """Block descriptors without FEAT_LPA2/52-bit: 4K at levels 1-2, 16K and 64K at level 2."""
    return level in (1, 2) if granule == 12 else level == 2


def start_level(txsz: int, granule: int) -> tuple[int, int]:
    """(starting level, entries in the first table) for an input address of 64 - TxSZ bits."""
    ia = 64 - txsz
    stride = granule - 3
    levels = -(-(ia - granule) // stride)  # ceil
    level = 4 - levels
    return level, 1 << (ia - block_shift(level, granule))


@dataclass(frozen=True)
class Node:
    """One translation table: where it is, its level and granule, how many entries are read."""

    base: int
    level: int
    granule: int
    entries: int


@dataclass
class _Regime:
    """A vCPU's translation registers while the trace is read (None: not recorded yet)."""

    ttbr: list = field(default_factory=lambda: [None, None])
    tcr: int | None = None
    sctlr: int = 0


def _root(reg: _Regime, n: int) -> tuple[Node | None, str | None]:
    """The first table of TTBRn in ``reg`` (or None) and, when it cannot be walked, why."""
    if not reg.sctlr & 1:
        return None, None
    if reg.tcr is None:
        return None, "the MMU is on but no TCR_EL1 write was recorded before"
    tcr = reg.tcr
    if (tcr >> (7 if n == 0 else 23)) & 1:  # EPD0 / EPD1: no walk
        return None, None
    if reg.ttbr[n] is None:
        return None, f"the MMU is on but no TTBR{n}_EL1 write was recorded before"
    tg = (tcr >> (14 if n == 0 else 30)) & 3
    granule = (TG0_BITS if n == 0 else TG1_BITS).get(tg)
    if granule is None:
        return None, f"TCR_EL1 0x{tcr:x} has TG{n} = 0b{tg:02b}, a reserved value: TTBR{n}_EL1 is not walked"
    if (tcr >> 59) & 1 and granule != 16:
        return None, f"TCR_EL1 0x{tcr:x} has DS = 1 (52-bit addresses), which tracekit does not walk"
    if granule == 16 and (tcr >> 32) & 7 == 0b110:
        return None, f"TCR_EL1 0x{tcr:x} has IPS = 52 bits with a 64K granule, which tracekit does not walk"
    txsz = (tcr >> (0 if n == 0 else 16)) & 0x3F
    top = 47 if granule == 16 else 48
    if not 16 <= txsz <= top:
        return None, f"TCR_EL1 0x{tcr:x} has T{n}SZ = {txsz}, outside 16..{top}: TTBR{n}_EL1 is not walked"
    level, entries = start_level(txsz, granule)
    size = max(entries * 8, 64)
    base = reg.ttbr[n] & _mask(OA_BITS - 1, 1) & ~(size - 1)
    return Node(base, level, granule, entries), None


@dataclass
class PageTableTyping:
    """The reverse map of a trace's guest page tables, ready to type accesses.

    ``segments``: per vCPU, guest-physical ranges [lo, hi) whose set of mapping leaves is
    constant; ``slices``: per (vCPU, segment), from event index ``t`` on, how many distinct
    AttrIndx values the live leaves give (``n``) and the one value when ``n`` is 1.
    """

    segments: pl.DataFrame
    slices: pl.DataFrame
    tables: int = 0
    leaves: int = 0
    unwalkable: int = 0
    notes: list[str] = field(default_factory=list)

    def apply(self, df: pl.DataFrame, counts: dict[str, int], *, offset: int = 0,
              base_counts: bool = False) -> pl.DataFrame:
        """Set ``attr_index`` of the untyped guest accesses of ``df`` (rows ``offset``.. of the trace).

        ``base_counts``: also count ``guest_accesses``/``typed_by_input``/``untyped`` as
        ``apply_guest_map`` does (when no guest map counted them).
        """
        acc = (pl.col("side") == "guest") & pl.col("op").is_in(_ACCESS) & pl.col("addr").is_not_null()
        untyped = acc & pl.col("attr").is_null() & pl.col("attr_index").is_null()
        if base_counts:
            n_acc, n_untyped = df.select(acc.sum().alias("a"), untyped.sum().alias("u")).row(0)
            counts["guest_accesses"] = counts.get("guest_accesses", 0) + int(n_acc or 0)
            counts["typed_by_input"] = counts.get("typed_by_input", 0) + int((n_acc or 0) - (n_untyped or 0))
            counts["untyped"] = counts.get("untyped", 0) + int(n_untyped or 0)
        counts.setdefault("typed_by_page_tables", 0)
        counts.setdefault("page_tables_ambiguous", 0)
        if self.segments.height == 0 or df.height == 0:
            return df
        keys = df.with_row_index("_r").filter(untyped).select(
            "_r", (pl.col("_r").cast(pl.Int64) + offset).alias("_t"), pl.col("agent").alias("vcpu"), "addr")
        if keys.height == 0:
            return df
        hit = keys.sort("addr").join_asof(self.segments, left_on="addr", right_on="lo", by="vcpu",
                                          strategy="backward", check_sortedness=False)
        hit = hit.filter(pl.col("seg").is_not_null() & (pl.col("addr") < pl.col("hi")))
        hit = hit.sort("_t").join_asof(self.slices, left_on="_t", right_on="t", by=["vcpu", "seg"],
                                       strategy="backward", check_sortedness=False)
        typed = hit.filter(pl.col("n") == 1).select("_r", pl.col("idx").alias("_pt_idx"))
        n_amb = hit.filter(pl.col("n") > 1).height
        counts["typed_by_page_tables"] += typed.height
        counts["page_tables_ambiguous"] += n_amb
        if "untyped" in counts:
            counts["untyped"] -= typed.height
        if typed.height == 0:
            return df
        out = df.with_row_index("_r").join(typed, on="_r", how="left").sort("_r")
        return out.with_columns(pl.coalesce("attr_index", "_pt_idx").alias("attr_index")).drop("_r", "_pt_idx")


def _regime_writes(lf: pl.LazyFrame) -> pl.DataFrame:
    """The guest's TTBR/TCR/SCTLR writes with known values, with their event index ``_i``."""
    return lf.filter((pl.col("side") == "guest") & (pl.col("op") == "sysreg")
                     & pl.col("sysreg").is_in(REGIME_REGS) & pl.col("value").is_not_null()).select(
        "_i", "agent", "sysreg", "value", "src", "src_line").collect()


def wants_walk(regs: pl.DataFrame) -> bool:
    """True when some vCPU turns its MMU on and a TTBR value is recorded (else: nothing to walk)."""
    on = regs.filter((pl.col("sysreg") == "SCTLR_EL1") & ((pl.col("value") & 1) == 1)).height
    return bool(on) and regs.filter(pl.col("sysreg").is_in(["TTBR0_EL1", "TTBR1_EL1"])).height > 0


def _memory_writes(lf: pl.LazyFrame, pages: set[int]) -> list[tuple[int, int, int, int | None]]:
    """Stores with a known value and ``dc zva`` touching the 4K ``pages``: (_i, addr, size, value)."""
    page = sorted(pages)
    zva = (pl.col("op") == "cmo") & (pl.col("cmo") == "dc.zva")
    st = (pl.col("op") == "write") & pl.col("value").is_not_null()
    sel = lf.filter((st | zva) & pl.col("addr").is_not_null() & (pl.col("size") > 0)).filter(
        (pl.col("addr") // 4096).is_in(page) | ((pl.col("addr") + pl.col("size") - 1) // 4096).is_in(page))
    rows = sel.select("_i", "addr", "size", pl.when(zva).then(pl.lit(0, pl.UInt64)).otherwise("value")
                      .alias("value")).collect().sort("_i")
    return list(rows.iter_rows())


class _Memory:
    """Per-doubleword history of the table pages: dw address -> [(from index, value | None)]."""

    def __init__(self) -> None:
        self.history: dict[int, list[tuple[int, int | None]]] = {}
        self.state: dict[int, tuple[int, int]] = {}  # dw -> (bytes, known-byte mask)
        self._keys: list[int] | None = None

    def write(self, i: int, addr: int, size: int, value: int) -> None:
        end = addr + size
        dw = addr & ~7
        while dw < end:
            val, known = self.state.get(dw, (0, 0))
            for b in range(max(addr, dw), min(end, dw + 8)):
                off = b - dw
                k = b - addr  # byte of the store: only the low 8 were recorded
                val &= ~(0xFF << (8 * off))
                if k < 8:
                    val |= ((value >> (8 * k)) & 0xFF) << (8 * off)
                    known |= 1 << off
                else:
                    known &= ~(1 << off)
            self.state[dw] = (val, known)
            self.history.setdefault(dw, []).append((i + 1, val if known == 0xFF else None))
            dw += 8
        self._keys = None

    def intervals(self, lo: int, hi: int):
        """(dw, from, to, value) of the known values of doublewords in [lo, hi)."""
        if self._keys is None:
            self._keys = sorted(self.history)
        keys = self._keys
        for k in range(bisect_left(keys, lo), len(keys)):
            dw = keys[k]
            if dw >= hi:
                break
            h = self.history[dw]
            for j, (t0, v) in enumerate(h):
                if v is not None:
                    yield dw, t0, h[j + 1][0] if j + 1 < len(h) else _END, v


def _pages(node: Node) -> set[int]:
    start = node.base >> 12
    return set(range(start, ((node.base + max(node.entries * 8, 8) - 1) >> 12) + 1))


def build_typing(events: pl.DataFrame | pl.LazyFrame, *, regs: pl.DataFrame | None = None
                 ) -> PageTableTyping | None:
    """Walk the guest page tables recorded in ``events`` (trace-v1 columns, event order).

    None when there is nothing to walk (no vCPU turns its MMU on with a TTBR value).
    """
    lf = events.lazy().with_row_index("_i")
    if regs is None:
        regs = _regime_writes(lf)
    if not wants_walk(regs):
        return None
    notes: list[str] = []
    unwalkable = 0
    # --- roots: per vCPU and TTBRn, the first table in force over [t0, t1) of event indices
    roots: list[tuple[str, Node, int, int]] = []
    for vcpu, rows in sorted(regs.sort("_i").group_by("agent", maintain_order=True), key=lambda g: g[0][0]):
        vcpu = vcpu[0]
        reg = _Regime()
        current: list[tuple[Node | None, int]] = [(None, 0), (None, 0)]
        why_now: list[str | None] = [None, None]
        for i, name, value, src, line in rows.select("_i", "sysreg", "value", "src", "src_line").iter_rows():
            if name == "SCTLR_EL1":
                reg.sctlr = value
            elif name == "TCR_EL1":
                reg.tcr = value
            else:
                reg.ttbr[int(name[4])] = value
            for n in (0, 1):
                node, why = _root(reg, n)
                if why is not None and why != why_now[n]:  # a regime this module cannot walk begins
                    unwalkable += 1
                    if len(notes) < MAX_NOTES:
                        notes.append(f"{at(src, line)}: {vcpu}: {why}")
                why_now[n] = why
                old, since = current[n]
                if node != old:
                    if old is not None and since < i + 1:
                        roots.append((vcpu, old, since, i + 1))
                    current[n] = (node, i + 1)
        for node, since in current:
            if node is not None:
                roots.append((vcpu, node, since, _END))
    # --- the tables reachable from the roots (at any time), and the memory they are read from
    mem = _Memory()
    nodes: dict[Node, int] = {}
    pending = list(dict.fromkeys(r[1] for r in roots))
    pages_read: set[int] = set()
    while pending:
        for nd in pending:
            nodes.setdefault(nd, len(nodes))
        new_pages = set().union(*(_pages(nd) for nd in pending)) - pages_read
        if new_pages:
            for i, addr, size, value in _memory_writes(lf, new_pages):
                mem.write(i, addr, size, value)
            pages_read |= new_pages
        nxt = []
        for nd in pending:
            if nd.level == 3:
                continue
            full = 1 << (nd.granule - 3)
            for _, _, _, v in mem.intervals(nd.base, nd.base + nd.entries * 8):
                if v & 3 == 3:
                    child = Node(v & _mask(OA_BITS - 1, nd.granule), nd.level + 1, nd.granule, full)
                    if child not in nodes and child not in nxt:
                        nxt.append(child)
        pending = nxt
    for vcpu, nd, _, _ in roots:
        if not any(True for _ in mem.intervals(nd.base, nd.base + nd.entries * 8)) and len(notes) < MAX_NOTES:
            note = (f"{vcpu}: no store with a value was recorded in the level-{nd.level} table at "
                    f"0x{nd.base:x} (tables loaded with the image are not in a trace)")
            if note not in notes:
                notes.append(note)
    # --- descriptors (node, t0, t1, value) -> leaves per node, bottom-up by level
    ent_rows: dict[str, list] = {"node": [], "t0": [], "t1": [], "v": []}
    for nd, nid in nodes.items():
        for _, t0, t1, v in mem.intervals(nd.base, nd.base + nd.entries * 8):
            if v & 1:
                ent_rows["node"].append(nid)
                ent_rows["t0"].append(t0)
                ent_rows["t1"].append(t1)
                ent_rows["v"].append(v)
    ent = pl.DataFrame(ent_rows, schema={"node": pl.Int64, "t0": pl.Int64, "t1": pl.Int64, "v": pl.UInt64})
    info = pl.DataFrame({"node": list(nodes.values()), "level": [n.level for n in nodes],
                         "granule": [n.granule for n in nodes], "base": [n.base for n in nodes],
                         "entries": [n.entries for n in nodes]},
                        schema={"node": pl.Int64, "level": pl.Int64, "granule": pl.Int64, "base": pl.UInt64,
                                "entries": pl.Int64})
    ent = ent.join(info.select("node", "level", "granule"), on="node")
    v, lvl, g = pl.col("v"), pl.col("level"), pl.col("granule")
    kind = v & 3
    shift = g + (3 - lvl) * (g - 3)
    oa_low = pl.lit(2, pl.UInt64).pow(shift).cast(pl.UInt64)
    oa_mask = pl.lit(_mask(OA_BITS - 1, 0), pl.UInt64) & ~(oa_low - 1)
    blk_ok = pl.when(g == 12).then(lvl.is_in([1, 2])).otherwise(lvl == 2)
    is_leaf = ((lvl == 3) & (kind == 3)) | ((lvl < 3) & (kind == 1) & blk_ok)
    leaves_direct = ent.filter(is_leaf).select(
        "node", "level", (v & oa_mask).alias("pa"), ((v & oa_mask) + oa_low).alias("end"),
        ((v // 4) & 7).cast(pl.UInt8).alias("idx"), "t0", "t1")
    tbl = ent.filter((lvl < 3) & (kind == 3)).with_columns(
        (v & (pl.lit(_mask(OA_BITS - 1, 0), pl.UInt64) & ~(pl.lit(2, pl.UInt64).pow(g).cast(pl.UInt64) - 1)))
        .alias("c_base"), (lvl + 1).alias("c_level"))
    child_ids = info.filter(pl.col("entries") == pl.lit(2, pl.Int64).pow(pl.col("granule") - 3)).select(
        pl.col("node").alias("child"), pl.col("base").alias("c_base"), pl.col("level").alias("c_level"), "granule")
    tbl = tbl.join(child_ids, on=["c_base", "c_level", "granule"], how="inner").select("node", "level", "child",
                                                                                         "t0", "t1")
    below = leaves_direct.filter(pl.col("level") == 3).drop("level")
    all_leaves = [below]
    for level in (2, 1, 0):
        via = tbl.filter(pl.col("level") == level).join(below.rename({"node": "child", "t0": "c0", "t1": "c1"}),
                                                        on="child")
        via = via.select("node", "pa", "end", "idx", pl.max_horizontal("t0", "c0").alias("t0"),
                         pl.min_horizontal("t1", "c1").alias("t1")).filter(pl.col("t0") < pl.col("t1"))
        here = leaves_direct.filter(pl.col("level") == level).drop("level")
        below = pl.concat([here, via])
        all_leaves.append(below)
    leaves = pl.concat(all_leaves)
    root_df = pl.DataFrame({"vcpu": [r[0] for r in roots], "node": [nodes[r[1]] for r in roots],
                            "r0": [r[2] for r in roots], "r1": [r[3] for r in roots]},
                           schema={"vcpu": pl.String, "node": pl.Int64, "r0": pl.Int64, "r1": pl.Int64})
    live = root_df.join(leaves, on="node").select(
        "vcpu", "pa", "end", "idx", pl.max_horizontal("t0", "r0").alias("t0"),
        pl.min_horizontal("t1", "r1").alias("t1")).filter(pl.col("t0") < pl.col("t1"))
    segments, slices = _reverse_map(live)
    return PageTableTyping(segments, slices, tables=len(nodes), leaves=leaves_direct.height,
                           unwalkable=unwalkable, notes=notes)


def _reverse_map(live: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Live leaves (vcpu, pa, end, idx, t0, t1) -> elementary PA segments and their time slices.

    A segment lies between consecutive leaf boundaries of one vCPU, so every leaf covers
    whole segments; per segment, +1/-1 events at each leaf interval's start/end counted per
    AttrIndx (8 running sums) give, from each event index on, the set of live AttrIndx values.
    """
    seg_schema = {"vcpu": pl.String, "lo": pl.UInt64, "hi": pl.UInt64, "seg": pl.Int64}
    if live.height == 0:
        return pl.DataFrame(schema=seg_schema), pl.DataFrame(
            schema={"vcpu": pl.String, "seg": pl.Int64, "t": pl.Int64, "n": pl.UInt32, "idx": pl.UInt8})
    bounds = pl.concat([live.select("vcpu", pl.col("pa").alias("x")), live.select("vcpu", pl.col("end").alias("x"))]
                       ).unique().sort("vcpu", "x")
    bounds = bounds.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("rank"))
    segments = bounds.with_columns(pl.col("x").shift(-1).over("vcpu").alias("hi")).filter(
        pl.col("hi").is_not_null()).select("vcpu", pl.col("x").alias("lo"), "hi", pl.col("rank").alias("seg"))
    cover = live.join(bounds.rename({"x": "pa", "rank": "r_lo"}), on=["vcpu", "pa"]).join(
        bounds.rename({"x": "end", "rank": "r_hi"}), on=["vcpu", "end"])
    cover = cover.with_columns(pl.int_ranges("r_lo", "r_hi").alias("seg")).explode("seg")
    ev = pl.concat([cover.select("vcpu", "seg", pl.col("t0").alias("t"), "idx", pl.lit(1, pl.Int64).alias("d")),
                    cover.select("vcpu", "seg", pl.col("t1").alias("t"), "idx", pl.lit(-1, pl.Int64).alias("d"))])
    ev = ev.group_by("vcpu", "seg", "t").agg(
        [pl.when(pl.col("idx") == k).then(pl.col("d")).otherwise(0).sum().alias(f"d{k}") for k in range(8)]
    ).sort("vcpu", "seg", "t")
    ev = ev.with_columns([pl.col(f"d{k}").cum_sum().over("vcpu", "seg").alias(f"c{k}") for k in range(8)])
    mask = pl.sum_horizontal([(pl.col(f"c{k}") > 0).cast(pl.UInt32) * (1 << k) for k in range(8)])
    slices = ev.select("vcpu", "seg", "t", mask.alias("mask")).with_columns(
        pl.col("mask").cast(pl.UInt8).bitwise_count_ones().cast(pl.UInt32).alias("n"),
        pl.col("mask").replace_strict({1 << k: k for k in range(8)}, default=None, return_dtype=pl.UInt8)
        .alias("idx")).drop("mask")
    return segments.sort("lo"), slices.sort("t")


def apply_page_tables(df: pl.DataFrame, counts: dict[str, int], notes: list[str] | None = None) -> pl.DataFrame:
    """Type the untyped MMU-on guest accesses of the trace frame ``df`` from its recorded page tables.

    ``counts`` gains ``typed_by_page_tables`` and ``page_tables_ambiguous`` (and
    ``page_tables``/``page_table_leaves`` for what was walked); its ``untyped`` is kept as
    "still untyped after both the guest map and the walk": when ``counts`` comes from
    ``apply_guest_map`` over the same frame, typed accesses are taken off its ``untyped``,
    otherwise ``guest_accesses``/``typed_by_input``/``untyped`` are counted here first.
    A frame with nothing to walk is returned unchanged and ``counts`` untouched.
    """
    typing = build_typing(df)
    if typing is None:
        return df
    record_walk(typing, counts, notes)
    return typing.apply(df, counts, base_counts="guest_accesses" not in counts)


def record_walk(typing: PageTableTyping, counts: dict[str, int], notes: list[str] | None) -> None:
    """Counts and notes of what the walk found (tables, leaves, registers not walked)."""
    counts["page_tables"] = counts.get("page_tables", 0) + typing.tables
    counts["page_table_leaves"] = counts.get("page_table_leaves", 0) + typing.leaves
    if typing.unwalkable:
        counts["page_tables_not_walked"] = counts.get("page_tables_not_walked", 0) + typing.unwalkable
    if notes is not None:
        notes.extend(typing.notes)


__all__ = ["apply_page_tables", "build_typing", "PageTableTyping", "Node", "start_level", "block_shift",
           "wants_walk", "record_walk"]
