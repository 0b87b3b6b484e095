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

import contextlib
import threading
from functools import partial

import numpy as np
import polars as pl

from ._cores import halves, on_cores
from .errors import TraceFormatError
from .schema import enum_from_codes, enum_of_codes
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

#: Open vocabularies (agents, register names, phases, details, sources) become
#: Categorical in the resolved frame: few distinct values repeated millions of
#: times, so four bytes a row instead of a string, and every copy a mitigation
#: makes of the frame moves integers. Comparisons with strings work as usual;
#: cast to ``pl.String`` before ``.str`` methods.
LABELS = ("agent", "sysreg", "phase", "detail", "src")
REGION_KIND_ENUM = pl.Enum(["ram", "mmio"])

#: Columns `resolve` adds, in order (documented in docs/architecture.md).
RESOLVED_COLUMNS: dict[str, pl.DataType] = {
    "sub": pl.Int32(),
    "region": pl.Categorical(),  # an Enum of the trace's region names in a resolved frame
    "region_kind": REGION_KIND_ENUM,
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
_GUEST_TYPE_CODES = np.array([_OP["ifetch"], TYPE_RANK["nc"], TYPE_RANK["wb"], SCTLR_M, SCTLR_C, SCTLR_I], np.int64)
_ZVA = CMO_OPS.index("dc.zva")
_GUEST = SIDES.index("guest")
_KERNEL_CODES = np.array(
    [_OP["read"], _OP["write"], _OP["ifetch"], _OP["sysreg"], _GUEST, SIDES.index("host"), SIDES.index("dev"),
     _DEV, _NC, _WT, _WB, SCTLR_M, SCTLR_C, SCTLR_I]
    + [SOURCES.index(s) for s in ("mmu-off", "attr", "mair", "assumed-wb", "host-map", "host-attr", "device",
                                  "device-attr")], dtype=np.int64)


def _codes(series: pl.Series, dtype: pl.DataType) -> np.ndarray:
    """The Enum codes of ``series`` as uint8, 255 for null."""
    return series.cast(dtype).to_physical().fill_null(_NONE).cast(pl.UInt8).to_numpy()


def _numbers(series: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column's values, not copied (read-only; anything at a null), and where it is
    not null.

    ``fill_null(0).to_numpy()`` copies a column with nulls: 80 MB for 10 M addresses, every
    page of it faulted in anew.
    """
    arr = series.rechunk().to_arrow()
    n, off = len(arr), arr.offset
    validity, data = arr.buffers()[:2]
    dtype = np.dtype(arr.type.to_pandas_dtype())
    if data is None:  # (no rows)
        return np.zeros(0, dtype), np.zeros(0, np.bool_)
    values = np.frombuffer(data, dtype=dtype, count=off + n)[off:]
    if validity is None:
        return values, np.ones(n, np.bool_)
    valid = np.unpackbits(np.frombuffer(validity, np.uint8), count=off + n, bitorder="little")[off:]
    return values, valid.view(np.bool_)


def region_enum(info: TraceInfo) -> pl.Enum:
    """The dtype of the ``region`` column: an Enum of the trace's region names."""
    return pl.Enum(sorted({r.name for r in info.effective_regions()}))


def region_columns(events: pl.DataFrame, info: TraceInfo) -> tuple[pl.DataFrame, np.ndarray]:
    """Region name, kind, shared flag and host cacheability of each event's address, and its region index.

    Regions are few: a binary search of the sorted bases per event, no sort of the events.
    """
    regions = sorted(info.effective_regions(), key=lambda r: r.base)
    bases = np.array([r.base for r in regions], dtype=np.uint64)
    ends = np.array([min(r.end, (1 << 64) - 1) for r in regions], dtype=np.uint64)
    unbounded = np.array([r.end >= (1 << 64) for r in regions], dtype=bool)
    addr, has_addr = _numbers(events["addr"])
    pick = np.empty(len(addr), np.uint32)
    on_cores([partial(_kernel().region_pick, addr, has_addr, lo, hi, pick, bases, ends, unbounded)
              for lo, hi in halves(len(addr))])
    names = region_enum(info)

    def column(values: list, dtype: pl.DataType) -> pl.Expr:
        """The region attribute of each event: a gather by region index (index len(regions),
        outside every region, picks the null after the regions' values)."""
        return pl.lit(pl.Series(values + [None], dtype=dtype)).gather(pl.col("pick"))

    # one select: polars gathers the four columns at once, on its threads
    frame = pl.DataFrame({"pick": pick}).select(  # (uint32: polars gathers by it as it is)
        region=column([r.name for r in regions], names),
        region_kind=column([r.kind for r in regions], REGION_KIND_ENUM),
        shared=column([r.shared for r in regions], pl.Boolean()),
        host_cacheable=column([r.host in ("wb", "wt") for r in regions], pl.Boolean()),
    )
    return frame, pick


def finalize_types(frame: pl.DataFrame) -> pl.DataFrame:
    """Recompute ``s1_type``, ``mem_type`` and ``path`` of guest accesses from ``s1_decl``.

    SCTLR_EL1.C = 0 (data) or SCTLR_EL1.I = 0 (instruction fetch) with the MMU
    on makes a Normal type Non-cacheable; stage 1 x stage 2 takes the more
    restrictive; FWB forces Write-Back. Host and device types are left as they are.
    """
    s1, mem, path = _kernel().guest_types(
        _codes(frame["s1_decl"], TYPE_ENUM), *_numbers(frame["sctlr"]), _codes(frame["op"], VOCABULARY["op"]),
        _codes(frame["s2_type"], TYPE_ENUM), frame["fwb"].fill_null(False).to_numpy(),
        _codes(frame["mem_type"], TYPE_ENUM), _PATH_CODES, _GUEST_TYPE_CODES)
    return frame.with_columns(
        enum_from_codes(s1, TYPE_ENUM).alias("s1_type"),
        enum_from_codes(mem, TYPE_ENUM).alias("mem_type"),
        enum_from_codes(path, PATH_ENUM).alias("path"),
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
    events = events.with_columns(*(pl.col(c).cast(t) for c, t in VOCABULARY.items() if c in events.columns),
                                 *(pl.col(c).cast(pl.Categorical) for c in LABELS
                                   if c in events.columns and events.schema[c] == pl.String))
    regions = sorted(info.effective_regions(), key=lambda r: r.base)
    region_frame, pick = region_columns(events, info)

    op = _codes(events["op"], VOCABULARY["op"])
    side = _codes(events["side"], VOCABULARY["side"])
    zva = _codes(events["cmo"], VOCABULARY["cmo"]) == _ZVA
    access = (op == _OP["read"]) | (op == _OP["write"]) | (op == _OP["ifetch"])
    _check_regions(events, access, pick, len(regions))

    # the vCPUs, numbered densely (agent codes are few and small, a Categorical's), and their
    # SCTLR_EL1 / MAIR_EL1 writes
    is_guest = side == _GUEST
    agent = events["agent"].to_physical().to_numpy()
    vcpu_of, n_agents = _kernel().vcpu_numbers(agent, side, _GUEST, int(agent.max()) + 1 if len(agent) else 0)
    reg = events.select(pl.when(pl.col("sysreg") == "SCTLR_EL1").then(1).when(pl.col("sysreg") == "MAIR_EL1")
                        .then(2).otherwise(0).cast(pl.UInt8))
    value = events["value"]

    s2_of_region = np.array([TYPE_RANK[r.s2] for r in regions] + [_NONE], dtype=np.uint8)
    host_of_region = np.array([TYPE_RANK.get(r.host, _DEV) for r in regions] + [_NONE], dtype=np.uint8)
    ram_region = np.array([r.kind == "ram" for r in regions] + [False])
    dev = (side == SIDES.index("dev")) & (access | zva)
    dev_type = _device_types(events, info, dev, agent)
    reg = reg.to_series().to_numpy()
    value, has_value = _numbers(value)
    n = len(op)
    sctlr, mair = np.empty(n, np.uint64), np.empty(n, np.uint64)
    s1_decl, s1_type, s2_type, mem, path, source, fwb = (np.empty(n, np.uint8) for _ in range(7))
    attr = _codes(events["attr"], TYPE_ENUM)
    has_idx = events["attr_index"].is_not_null().to_numpy()
    attr_index = events["attr_index"].fill_null(0).to_numpy().astype(np.uint8)
    k = _kernel()

    def rows(lo: int, hi: int) -> None:
        # a second half starts from the registers the first half's rows leave; the first from
        # zeros (without compiling registers_before for a trace resolved in one piece)
        if lo:
            state = k.registers_before(lo, op, side, agent, vcpu_of, reg, value, has_value, n_agents,
                                       _OP["sysreg"], _GUEST)
        else:
            state = np.zeros(max(n_agents, 1), np.uint64), np.zeros(max(n_agents, 1), np.uint64)
        k.resolve_codes(lo, hi, *state, sctlr, mair, s1_decl, s1_type, s2_type, mem, path, source, fwb,
                        op, side, attr, has_idx, attr_index, agent, vcpu_of, reg, value, has_value, pick,
                        s2_of_region, host_of_region, ram_region, dev_type, zva, bool(info.fwb),
                        _MAIR_CODES, _PATH_CODES, _KERNEL_CODES)
    on_cores([partial(rows, lo, hi) for lo, hi in halves(n)])
    # the kernel's codes made columns in one select, which polars runs on its threads (one
    # Series after another took 0.18 s of 10 M events' resolve, on one core)
    built = pl.DataFrame({
        "sctlr": sctlr, "mair": mair, "guest": is_guest, "s1_decl": s1_decl, "s1_type": s1_type,
        "s2_type": s2_type, "fwb": fwb, "mem_type": mem, "path": path, "type_source": source,
    }).select(
        sctlr=pl.when("guest").then("sctlr"),
        mair=pl.when("guest").then("mair"),
        s1_decl=enum_of_codes(pl.col("s1_decl"), TYPE_ENUM),
        s1_type=enum_of_codes(pl.col("s1_type"), TYPE_ENUM),
        s2_type=enum_of_codes(pl.col("s2_type"), TYPE_ENUM),
        fwb=pl.when(pl.col("fwb") != _NONE).then(pl.col("fwb") == 1),
        mem_type=enum_of_codes(pl.col("mem_type"), TYPE_ENUM),
        path=enum_of_codes(pl.col("path"), PATH_ENUM),
        type_source=enum_of_codes(pl.col("type_source"), SOURCE_ENUM),
    )
    frame = pl.concat([events, region_frame, built], how="horizontal")
    extra = [c for c in frame.columns if c not in RESOLVED_COLUMNS and c not in events.columns]
    return frame.select(*events.columns, *[c for c in RESOLVED_COLUMNS if c != "sub"], *extra)


def _kernel():
    from . import _resolve_kernel

    return _resolve_kernel


@contextlib.contextmanager
def warm_up(*, fast_engine: bool = False):
    """While the body runs (reading a trace: polars, GIL released), import numba and load the
    resolve kernels' cached machine code in a thread; wait for it at the end.

    Both take ~0.3 s at the start of a command; overlapped, they cost the longer of the two.
    ``fast_engine``: also, in a thread of its own (``engine._precompile.look_meanwhile``), look
    whether the fast engine's scan is compiled and, on an empty cache, start compiling it in
    another process.
    Any error is left for the real first use to raise.
    """
    def load() -> None:
        try:
            k = _kernel()
            empty = np.zeros(0, np.uint64)
            # the addresses as region_columns passes them (read-only, as _numbers gives them): an
            # array numba types otherwise would load, or compile, a version no call uses
            addr, has_addr = _numbers(pl.Series([None], dtype=pl.UInt64))
            k.region_pick(addr, has_addr, 0, 1, np.empty(1, np.uint32), empty, empty, np.zeros(0, np.bool_))
        except Exception:  # noqa: BLE001 - the real call reports it
            pass

    if fast_engine:
        from .engine import _precompile

        _precompile.look_meanwhile()
    worker = threading.Thread(target=load, name="tracekit-numba-warm-up", daemon=True)
    worker.start()
    try:
        yield
    finally:
        worker.join()


def _device_types(events: pl.DataFrame, info: TraceInfo, dev: np.ndarray, agent: np.ndarray) -> np.ndarray:
    """Type code of each device access from its declaration (coherent: WB, else NC); 255 elsewhere.

    ``agent``: the agents' Categorical codes. The few agents are looked up by name once each,
    then every device access by its code (string operations on 0.4 M device accesses took
    0.05 s of 10 M events' resolve).
    """
    out = np.full(len(dev), _NONE, dtype=np.uint8)
    if not dev.any():
        return out
    rows = np.flatnonzero(dev)
    codes = agent[rows]
    first = np.full(int(codes.max()) + 1, -1, np.int64)
    first[codes[::-1]] = rows[::-1]  # each agent code's first device access
    used = np.flatnonzero(first >= 0)
    names = events["agent"].gather(first[used]).cast(pl.String).str.split(".").list.get(1, null_on_oob=True)
    coherent = {d.name: d.coherent for d in info.devices}
    undeclared = [i for i, n in enumerate(names) if n not in coherent]
    if undeclared:
        row = events.row(int(min(first[used][i] for i in undeclared)), named=True)
        raise TraceFormatError(
            f"{row['src']}:{row['src_line']}: expected a device declared with @device, found {row['agent']!r}")
    type_of = np.full(len(first), _NONE, np.uint8)
    type_of[used] = [_WB if coherent[n] else _NC for n in names]
    out[rows] = type_of[codes]
    return out
