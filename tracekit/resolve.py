"""Effective memory type and path of every access (coherence model section 3).

One vectorised pass over the event table: per-vCPU SCTLR_EL1/MAIR_EL1 state is
carried forward from the vCPU's own ``sysreg`` events, the stage-1 type comes
from the MAIR byte (or ``attr=``), stage 2 and FWB come from the region. The
intermediate columns stay in the frame so a notebook can see why an access took
the path it took, and so a mitigation can rewrite one step (``s1_decl``,
``fwb``) and call :func:`finalize_types` instead of resolving again.

Memory types are polars Enums whose codes follow ``model.MEMORY_TYPES``, most
restrictive first: combining stage 1 and stage 2 is taking the smaller code.
The arithmetic runs on those codes with numpy; strings never enter the loop.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .errors import TraceFormatError
from .model import (CMO_OPS, MAIR_BYTE_TYPE, MEMORY_TYPES, OPS, PATH_OF_TYPE, PATHS, SCTLR_C, SCTLR_I, SCTLR_M,
                    SIDES, TYPE_RANK, TraceInfo)

#: Closed vocabularies are polars Enums in the resolved frame: one byte a value
#: instead of a string, so a 10-million-event trace stays small and fast.
TYPE_ENUM = pl.Enum(MEMORY_TYPES)
PATH_ENUM = pl.Enum(PATHS)
SOURCES = ("mmu-off", "mair", "attr", "assumed-wb", "host-map", "host-attr", "device", "device-attr")
SOURCE_ENUM = pl.Enum(SOURCES)
VOCABULARY: dict[str, pl.DataType] = {
    "side": pl.Enum(SIDES),
    "op": pl.Enum(OPS),
    "cmo": pl.Enum(CMO_OPS),
    "attr": TYPE_ENUM,
}

#: Columns `resolve` adds, in order (documented in docs/architecture.md).
RESOLVED_COLUMNS: dict[str, pl.DataType] = {
    "sub": pl.Int32(),
    "region": pl.String(),
    "region_kind": pl.String(),
    "shared": pl.Boolean(),
    "host_cacheable": pl.Boolean(),
    "sctlr": pl.UInt64(),
    "mair": pl.UInt64(),
    "s1_decl": TYPE_ENUM,
    "s1_type": TYPE_ENUM,
    "s2_type": TYPE_ENUM,
    "fwb": pl.Boolean(),
    "mem_type": TYPE_ENUM,
    "path": PATH_ENUM,
    "type_source": SOURCE_ENUM,
}

_NONE = 255  # "no type" in the uint8 code arrays
_DEV, _NC, _WT, _WB = TYPE_RANK["dev-ngnrne"], TYPE_RANK["nc"], TYPE_RANK["wt"], TYPE_RANK["wb"]
_MAIR_CODES = np.array([TYPE_RANK[t] for t in MAIR_BYTE_TYPE], dtype=np.uint8)
_PATH_CODES = np.array([PATHS.index(PATH_OF_TYPE[t]) for t in MEMORY_TYPES] + [_NONE], dtype=np.uint8)
_OP = {o: i for i, o in enumerate(OPS)}
_ZVA = CMO_OPS.index("dc.zva")
_GUEST = SIDES.index("guest")


def _codes(series: pl.Series, dtype: pl.DataType) -> np.ndarray:
    """The Enum codes of ``series`` as uint8, 255 for null."""
    return series.cast(dtype).to_physical().fill_null(_NONE).cast(pl.UInt8).to_numpy()


def _enum(codes: np.ndarray, categories: tuple[str, ...], dtype: pl.DataType) -> pl.Series:
    """An Enum Series from uint8 codes (255 -> null), without going through strings."""
    idx = pl.Series(codes.astype(np.uint32))
    idx = pl.select(pl.when(idx != _NONE).then(idx)).to_series()
    return pl.Series(categories, dtype=dtype).gather(idx)


def region_columns(events: pl.DataFrame, info: TraceInfo) -> tuple[pl.DataFrame, np.ndarray]:
    """Region name, kind, shared flag and host cacheability of each event's address, and its region index.

    Regions are few: a binary search of the sorted bases per event, no sort of the events.
    """
    regions = sorted(info.effective_regions(), key=lambda r: r.base)
    bases = np.array([r.base for r in regions], dtype=np.uint64)
    ends = np.array([min(r.end, (1 << 64) - 1) for r in regions], dtype=np.uint64)
    unbounded = np.array([r.end >= (1 << 64) for r in regions], dtype=bool)
    addr = events["addr"].fill_null(0).to_numpy()
    has_addr = events["addr"].is_not_null().to_numpy()
    idx = np.searchsorted(bases, addr, side="right").astype(np.int64) - 1
    safe = np.clip(idx, 0, len(regions) - 1)
    inside = (idx >= 0) & ((addr < ends[safe]) | unbounded[safe]) & has_addr
    pick = np.where(inside, safe, len(regions))  # len(regions): no region
    gather = pl.Series(pick.astype(np.uint32))

    def column(values: list, dtype: pl.DataType) -> pl.Series:
        return pl.Series(values + [None], dtype=dtype).gather(gather)

    frame = pl.DataFrame({
        "region": column([r.name for r in regions], pl.String()),
        "region_kind": column([r.kind for r in regions], pl.String()),
        "shared": column([r.shared for r in regions], pl.Boolean()),
        "host_cacheable": column([r.host in ("wb", "wt") for r in regions], pl.Boolean()),
    })
    return frame, pick


def finalize_types(frame: pl.DataFrame) -> pl.DataFrame:
    """Recompute ``s1_type``, ``mem_type`` and ``path`` of guest accesses from ``s1_decl``.

    SCTLR_EL1.C = 0 (data) or SCTLR_EL1.I = 0 (instruction fetch) with the MMU
    on makes a Normal type Non-cacheable; stage 1 x stage 2 takes the more
    restrictive; FWB forces Write-Back. Host and device types are left as they are.
    """
    decl = _codes(frame["s1_decl"], TYPE_ENUM)
    guest = decl != _NONE
    sctlr = frame["sctlr"].fill_null(0).to_numpy()
    ifetch = _codes(frame["op"], VOCABULARY["op"]) == _OP["ifetch"]
    mmu_on = (sctlr & SCTLR_M) != 0
    cache_off = np.where(ifetch, (sctlr & SCTLR_I) == 0, (sctlr & SCTLR_C) == 0)
    s1 = np.where(guest & mmu_on & cache_off & (decl >= _NC), np.uint8(_NC), decl)
    s2 = _codes(frame["s2_type"], TYPE_ENUM)
    fwb = frame["fwb"].fill_null(False).to_numpy()
    guest_mem = np.where(fwb, np.uint8(_WB), np.minimum(s1, s2))
    mem = np.where(guest, guest_mem, _codes(frame["mem_type"], TYPE_ENUM)).astype(np.uint8)
    return frame.with_columns(
        _enum(s1, MEMORY_TYPES, TYPE_ENUM).alias("s1_type"),
        _enum(mem, MEMORY_TYPES, TYPE_ENUM).alias("mem_type"),
        _enum(_PATH_CODES[np.minimum(mem, len(MEMORY_TYPES))], PATHS, PATH_ENUM).alias("path"),
    )


def _check_regions(frame: pl.DataFrame, accesses: np.ndarray, pick: np.ndarray, n_regions: int) -> None:
    outside = accesses & (pick == n_regions) & frame["addr"].is_not_null().to_numpy()
    if outside.any():
        row = frame.row(int(np.argmax(outside)), named=True)
        where = f"{row['src']}:{row['src_line']}" if row.get("src_line") is not None else f"{row['src']}"
        raise TraceFormatError(f"{where}: expected an address inside a declared region, found {row['addr']:#x}")


def resolve(events: pl.DataFrame, info: TraceInfo) -> pl.DataFrame:
    """Add the resolved columns (docs/architecture.md) to trace-v1 events, sorted by (seq, sub)."""
    if "sub" not in events.columns:
        events = events.with_columns(sub=pl.lit(0, dtype=pl.Int32))
    if not (events["seq"].is_sorted() and (events["sub"] == 0).all()):
        events = events.sort("seq", "sub")
    events = events.with_columns(*(pl.col(c).cast(t) for c, t in VOCABULARY.items() if c in events.columns))
    regions = sorted(info.effective_regions(), key=lambda r: r.base)
    region_frame, pick = region_columns(events, info)

    op = _codes(events["op"], VOCABULARY["op"])
    side = _codes(events["side"], VOCABULARY["side"])
    zva = _codes(events["cmo"], VOCABULARY["cmo"]) == _ZVA
    access = (op == _OP["read"]) | (op == _OP["write"]) | (op == _OP["ifetch"])
    typed = access | zva
    _check_regions(events, access, pick, len(regions))

    # per-vCPU SCTLR_EL1 / MAIR_EL1, carried forward from the vCPU's own writes (0 at reset)
    sctlr, mair, is_guest_row = _vcpu_state(events, side, op)
    sysregs = pl.DataFrame({
        "sctlr": pl.Series(sctlr).set(pl.Series(~is_guest_row), None),
        "mair": pl.Series(mair).set(pl.Series(~is_guest_row), None),
    })

    # stage 1 of guest accesses: MMU off, attr=, MAIR[AttrIndx], or assumed WB
    guest = (side == _GUEST) & typed
    ifetch = op == _OP["ifetch"]
    mmu_off = (sctlr & SCTLR_M) == 0
    attr = _codes(events["attr"], TYPE_ENUM)
    idx_series = events["attr_index"]
    has_idx = idx_series.is_not_null().to_numpy()
    idx = idx_series.fill_null(0).to_numpy().astype(np.uint64) & np.uint64(7)
    mair_type = _MAIR_CODES[((mair >> (idx * np.uint64(8))) & np.uint64(0xFF)).astype(np.intp)]
    mmu_off_type = np.where(ifetch, np.where((sctlr & SCTLR_I) != 0, _WT, _NC), _DEV).astype(np.uint8)
    conds = [mmu_off, attr != _NONE, has_idx]
    s1_decl = np.select(conds, [mmu_off_type, attr, mair_type], default=_WB).astype(np.uint8)
    g_source = np.select(conds, [SOURCES.index("mmu-off"), SOURCES.index("attr"), SOURCES.index("mair")],
                         default=SOURCES.index("assumed-wb"))

    # host mappings and devices
    s2_of_region = np.array([TYPE_RANK[r.s2] for r in regions] + [_NONE], dtype=np.uint8)
    host_of_region = np.array([TYPE_RANK.get(r.host, _DEV) for r in regions] + [_NONE], dtype=np.uint8)
    ram_region = np.array([r.kind == "ram" for r in regions] + [False])
    host = (side == SIDES.index("host")) & typed
    dev = (side == SIDES.index("dev")) & typed
    dev_type = _device_types(events, info, dev)
    other_type = np.where(attr != _NONE, attr, np.where(host, host_of_region[pick], dev_type))
    has_attr = attr != _NONE
    other_source = np.where(host, np.where(has_attr, SOURCES.index("host-attr"), SOURCES.index("host-map")),
                            np.where(has_attr, SOURCES.index("device-attr"), SOURCES.index("device")))

    none = np.uint8(_NONE)
    frame = pl.concat([events, region_frame], how="horizontal").with_columns(
        sctlr=sysregs["sctlr"], mair=sysregs["mair"],
        s1_decl=_enum(np.where(guest, s1_decl, none), MEMORY_TYPES, TYPE_ENUM),
        s1_type=_enum(np.full(len(op), none), MEMORY_TYPES, TYPE_ENUM),
        s2_type=_enum(np.where(guest, s2_of_region[pick], none), MEMORY_TYPES, TYPE_ENUM),
        fwb=pl.Series(np.where(guest, info.fwb & ram_region[pick], False)).set(pl.Series(~guest), None),
        mem_type=_enum(np.where(typed & ~guest, other_type, none).astype(np.uint8), MEMORY_TYPES, TYPE_ENUM),
        type_source=_enum(np.where(guest, g_source, np.where(typed, other_source, none)).astype(np.uint8),
                          SOURCES, SOURCE_ENUM),
    )
    frame = finalize_types(frame)
    extra = [c for c in frame.columns if c not in RESOLVED_COLUMNS and c not in events.columns]
    return frame.select(*events.columns, *[c for c in RESOLVED_COLUMNS if c != "sub"], *extra)


def _vcpu_state(events: pl.DataFrame, side: np.ndarray, op: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SCTLR_EL1 and MAIR_EL1 in force at every guest event, per vCPU (0 at reset).

    The register writes are few: for each vCPU, a binary search of its writes
    gives every one of its events the last value written at or before it.
    """
    n = len(op)
    sctlr, mair = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
    is_guest = side == _GUEST
    if not is_guest.any():
        return sctlr, mair, is_guest
    names = events["agent"].filter(pl.Series(is_guest)).unique().sort().to_list()
    agent = events["agent"].cast(pl.Enum(names), strict=False).to_physical().to_numpy()
    w_at = np.flatnonzero(is_guest & (op == _OP["sysreg"]))  # the vCPUs' register writes: few
    w_reg = np.array(events["sysreg"].gather(w_at).fill_null("").to_list(), dtype=object)
    w_value = events["value"].gather(w_at).fill_null(0).to_numpy().astype(np.uint64)
    w_agent = agent[w_at]
    for code in range(len(names)):
        mine = np.flatnonzero((agent == code) & is_guest)
        for name, out in (("SCTLR_EL1", sctlr), ("MAIR_EL1", mair)):
            sel = (w_agent == code) & (w_reg == name)
            at, val = w_at[sel], w_value[sel]
            if not len(at):
                continue
            last = np.searchsorted(at, mine, side="right") - 1
            out[mine] = np.where(last >= 0, val[np.maximum(last, 0)], np.uint64(0))
    return sctlr, mair, is_guest


def _device_types(events: pl.DataFrame, info: TraceInfo, dev: np.ndarray) -> np.ndarray:
    """Type code of each device access from its declaration (coherent: WB, else NC); 255 elsewhere."""
    out = np.full(len(dev), _NONE, dtype=np.uint8)
    if not dev.any():
        return out
    coherent = {d.name: d.coherent for d in info.devices}
    names = events["agent"].filter(pl.Series(dev)).str.split(".").list.get(1, null_on_oob=True)
    undeclared = names.is_null() | ~names.is_in(list(coherent))
    if undeclared.any():
        row = events.filter(pl.Series(dev)).filter(undeclared).row(0, named=True)
        raise TraceFormatError(
            f"{row['src']}:{row['src_line']}: expected a device declared with @device, found {row['agent']!r}")
    codes = names.replace_strict({n: (_WB if c else _NC) for n, c in coherent.items()}, return_dtype=pl.UInt8)
    out[dev] = codes.to_numpy()
    return out
