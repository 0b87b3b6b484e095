"""Effective memory type and path of every access (coherence model section 3).

One vectorised pass over the event table: per-vCPU SCTLR_EL1/MAIR_EL1 state is
carried forward from the vCPU's own ``sysreg`` events, the stage-1 type comes
from the MAIR byte (or ``attr=``), stage 2 and FWB come from the region. The
intermediate columns stay in the frame so a notebook can see why an access took
the path it took, and so a mitigation can rewrite one step (``s1_decl``,
``fwb``) and call :func:`finalize_types` instead of resolving again.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .errors import TraceFormatError
from .model import MAIR_BYTE_TYPE, PATH_OF_TYPE, SCTLR_C, SCTLR_I, SCTLR_M, TYPE_RANK, TraceInfo

_RANK_TO_TYPE = {r: t for t, r in TYPE_RANK.items()}
_NORMAL = ("nc", "wt", "wb")

#: Columns `resolve` adds, in order (documented in docs/architecture.md).
RESOLVED_COLUMNS: dict[str, pl.DataType] = {
    "sub": pl.Int32(),
    "region": pl.String(),
    "region_kind": pl.String(),
    "shared": pl.Boolean(),
    "host_cacheable": pl.Boolean(),
    "sctlr": pl.UInt64(),
    "mair": pl.UInt64(),
    "s1_decl": pl.String(),
    "s1_type": pl.String(),
    "s2_type": pl.String(),
    "fwb": pl.Boolean(),
    "mem_type": pl.String(),
    "path": pl.String(),
    "type_source": pl.String(),
}

_col = pl.col


def _typed_access() -> pl.Expr:
    """Events that have a memory type: accesses and DC ZVA (a write of zeros)."""
    return _col("op").is_in(["read", "write", "ifetch"]) | (_col("cmo") == "dc.zva")


def region_columns(events: pl.DataFrame, info: TraceInfo) -> pl.DataFrame:
    """Region name, kind, stage-2 type, host mapping and shared flag of each event's address.

    Regions are few: a binary search of the sorted bases per event, no sort of the events.
    """
    regions = sorted(info.effective_regions(), key=lambda r: r.base)
    bases = np.array([r.base for r in regions], dtype=np.uint64)
    ends = np.array([r.end if r.end < (1 << 64) else (1 << 64) - 1 for r in regions], dtype=np.uint64)
    addr = events["addr"].fill_null(0).to_numpy()
    idx = np.searchsorted(bases, addr, side="right").astype(np.int64) - 1
    has_addr = events["addr"].is_not_null().to_numpy()
    unbounded = [r.end >= (1 << 64) for r in regions]
    safe = np.clip(idx, 0, len(regions) - 1)
    inside = (idx >= 0) & ((addr < ends[safe]) | np.array(unbounded, dtype=bool)[safe]) & has_addr
    pick = np.where(inside, safe, -1)

    def column(values: list, dtype: pl.DataType) -> pl.Series:
        table = pl.Series(values + [None], dtype=dtype)
        return table.gather(pl.Series(np.where(pick < 0, len(values), pick)))

    return pl.DataFrame(
        {
            "region": column([r.name for r in regions], pl.String()),
            "region_kind": column([r.kind for r in regions], pl.String()),
            "shared": column([r.shared for r in regions], pl.Boolean()),
            "host_cacheable": column([r.host in ("wb", "wt") for r in regions], pl.Boolean()),
            "_s2": column([r.s2 for r in regions], pl.String()),
            "_host": column([r.host for r in regions], pl.String()),
        }
    )


def _rank(expr: pl.Expr) -> pl.Expr:
    return expr.replace_strict(TYPE_RANK, return_dtype=pl.Int8, default=None)


def _unrank(expr: pl.Expr) -> pl.Expr:
    return expr.replace_strict(_RANK_TO_TYPE, return_dtype=pl.String, default=None)


def _bit(col: str, bit: int) -> pl.Expr:
    return (_col(col) & bit) != 0


def finalize_types(frame: pl.DataFrame) -> pl.DataFrame:
    """Recompute ``s1_type``, ``mem_type`` and ``path`` of guest accesses from ``s1_decl``.

    SCTLR_EL1.C = 0 (data) or SCTLR_EL1.I = 0 (instruction fetch) with the MMU
    on makes a Normal type Non-cacheable; stage 1 x stage 2 takes the more
    restrictive; FWB forces Write-Back. Host and device types are left as they are.
    """
    guest_access = (_col("side") == "guest") & _col("s1_decl").is_not_null()
    mmu_on = _bit("sctlr", SCTLR_M)
    cache_bit_off = pl.when(_col("op") == "ifetch").then(~_bit("sctlr", SCTLR_I)).otherwise(~_bit("sctlr", SCTLR_C))
    s1_type = (
        pl.when(mmu_on & cache_bit_off & _col("s1_decl").is_in(_NORMAL))
        .then(pl.lit("nc"))
        .otherwise(_col("s1_decl"))
    )
    frame = frame.with_columns(s1_type=pl.when(guest_access).then(s1_type).otherwise(_col("s1_type")))
    combined = _unrank(pl.min_horizontal(_rank(_col("s1_type")), _rank(_col("s2_type"))))
    guest_type = pl.when(_col("fwb")).then(pl.lit("wb")).otherwise(combined)
    frame = frame.with_columns(mem_type=pl.when(guest_access).then(guest_type).otherwise(_col("mem_type")))
    return frame.with_columns(path=_col("mem_type").replace_strict(PATH_OF_TYPE, default=None, return_dtype=pl.String))


def resolve(events: pl.DataFrame, info: TraceInfo) -> pl.DataFrame:
    """Add the resolved columns (docs/architecture.md) to trace-v1 events, sorted by (seq, sub)."""
    if "sub" not in events.columns:
        events = events.with_columns(sub=pl.lit(0, dtype=pl.Int32))
    events = events.sort("seq", "sub")
    regions = region_columns(events, info)
    frame = pl.concat([events, regions], how="horizontal")

    bad = frame.filter(_col("addr").is_not_null() & _col("region").is_null() & _col("op").is_in(["read", "write", "ifetch"]))
    if bad.height:
        row = bad.row(0, named=True)
        where = f"{row['src']}:{row['src_line']}" if row.get("src_line") is not None else f"{row['src']}"
        raise TraceFormatError(f"{where}: expected an address inside a declared region, found {row['addr']:#x}")

    is_guest = _col("side") == "guest"
    state = {}
    for reg, name in (("SCTLR_EL1", "sctlr"), ("MAIR_EL1", "mair")):
        setting = pl.when(is_guest & (_col("op") == "sysreg") & (_col("sysreg") == reg)).then(_col("value"))
        state[name] = pl.when(is_guest).then(setting.forward_fill().over("agent").fill_null(0)).cast(pl.UInt64)
    frame = frame.with_columns(**state)

    typed = _typed_access()
    guest_typed = is_guest & typed
    mmu_off = ~_bit("sctlr", SCTLR_M)
    mair_byte = (_col("mair") // pl.lit(256, dtype=pl.UInt64).pow(_col("attr_index").cast(pl.UInt64))) % 256
    mair_type = mair_byte.cast(pl.Int64).replace_strict(dict(enumerate(MAIR_BYTE_TYPE)), return_dtype=pl.String)
    mmu_off_type = (
        pl.when(_col("op") == "ifetch")
        .then(pl.when(_bit("sctlr", SCTLR_I)).then(pl.lit("wt")).otherwise(pl.lit("nc")))
        .otherwise(pl.lit("dev-ngnrne"))
    )
    s1_decl = (
        pl.when(mmu_off).then(mmu_off_type)
        .when(_col("attr").is_not_null()).then(_col("attr"))
        .when(_col("attr_index").is_not_null()).then(mair_type)
        .otherwise(pl.lit("wb"))
    )
    guest_source = (
        pl.when(mmu_off).then(pl.lit("mmu-off"))
        .when(_col("attr").is_not_null()).then(pl.lit("attr"))
        .when(_col("attr_index").is_not_null()).then(pl.lit("mair"))
        .otherwise(pl.lit("assumed-wb"))
    )

    coherent = {d.name: d.coherent for d in info.devices}
    device_name = _col("agent").str.split(".").list.get(1, null_on_oob=True)
    device_type = device_name.replace_strict(
        {n: ("wb" if c else "nc") for n, c in coherent.items()}, default=None, return_dtype=pl.String
    )
    host_map = pl.when(_col("_host") == "none").then(pl.lit("dev-ngnrne")).otherwise(_col("_host"))
    side = _col("side")
    other_type = (
        pl.when(_col("attr").is_not_null()).then(_col("attr"))
        .when(side == "host").then(host_map)
        .when(side == "dev").then(device_type)
    )
    other_source = (
        pl.when(side == "host").then(pl.when(_col("attr").is_not_null()).then(pl.lit("host-attr")).otherwise(pl.lit("host-map")))
        .when(side == "dev").then(pl.when(_col("attr").is_not_null()).then(pl.lit("device-attr")).otherwise(pl.lit("device")))
    )
    frame = frame.with_columns(
        s1_decl=pl.when(guest_typed).then(s1_decl),
        s1_type=pl.lit(None, dtype=pl.String),
        s2_type=pl.when(guest_typed).then(_col("_s2")),
        fwb=pl.when(guest_typed).then(pl.lit(info.fwb) & (_col("region_kind") == "ram")),
        mem_type=pl.when(typed & ~is_guest).then(other_type),
        type_source=pl.when(guest_typed).then(guest_source).when(typed).then(other_source),
    )
    missing = frame.filter(typed & (side == "dev") & _col("mem_type").is_null())
    if missing.height:
        row = missing.row(0, named=True)
        raise TraceFormatError(
            f"{row['src']}:{row['src_line']}: expected a device declared with @device, found {row['agent']!r}"
        )
    frame = finalize_types(frame).drop("_s2", "_host")
    extra = [c for c in frame.columns if c not in RESOLVED_COLUMNS and c not in events.columns]
    return frame.select(*events.columns, *[c for c in RESOLVED_COLUMNS if c != "sub"], *extra)
