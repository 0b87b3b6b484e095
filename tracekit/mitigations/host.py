"""Mitigations QEMU performs on its side of shared memory: maintenance, or an uncached mapping.

Coherence model section 6. QEMU runs at EL0: it can clean (DC CVAC) and
clean+invalidate (DC CIVAC), never invalidate alone.
"""

from __future__ import annotations

import dataclasses

import polars as pl

from ..model import TraceInfo
from .base import (
    Frame,
    Mitigation,
    MitigationContext,
    add_events,
    first_line,
    inserted_events,
    is_data_write,
    is_typed_access,
    last_line,
    lazy,
    recorded,
    register_mitigation,
)

_col = pl.col


def host_cmo(frame: Frame, ctx: MitigationContext) -> pl.LazyFrame:
    """DC CIVAC of the lines right before each host read, DC CVAC right after each host write, in shared regions.

    One operation per access covers its lines; the acting agent is the host
    thread that accesses (``host.vnc/host-cmo``).
    """
    lf = lazy(frame)
    schema = lf.collect_schema()
    ls = ctx.line_size
    acc = lf.filter(recorded() & (_col("side") == "host") & _col("shared").fill_null(False)
                    & _col("addr").is_not_null() & ((_col("op") == "read") | is_data_write()))
    is_read = _col("op") == "read"
    anchors = acc.select(
        "seq", j=pl.lit(0), before=is_read, acting=_col("agent"),
        cmo=pl.when(is_read).then(pl.lit("dc.civac", dtype=schema["cmo"])).otherwise(pl.lit("dc.cvac", dtype=schema["cmo"])),
        addr=first_line(ls) * ls, size=(last_line(ls) - first_line(ls) + 1) * ls, locate=_col("addr"),
        # the access's own region (inserted_events need not look it up)
        region="region", region_kind="region_kind", shared="shared", host_cacheable="host_cacheable",
        time="time", phase="phase", src="src", src_line="src_line", src_offset="src_offset",
    )
    ins = inserted_events(anchors, ctx, schema, detail="host-cmo: QEMU maintenance of a shared buffer")
    return add_events(lf, ins)


def _uncached_regions(info: TraceInfo) -> TraceInfo:
    """Shared regions get a Non-cacheable host mapping (a mapping of 'none' stays none)."""
    regions = tuple(dataclasses.replace(r, host="nc") if r.shared and r.host in ("wb", "wt") else r
                    for r in info.regions)
    return info.replace(regions=regions)


def host_uncached(frame: Frame, ctx: MitigationContext) -> pl.LazyFrame:
    """Host accesses to shared regions become Normal Non-cacheable (path N); those lines lose the host's cacheable alias.

    ``host_cacheable`` becomes false on every row in a shared region, so the
    host mapping no longer makes those lines cacheable for architectural
    speculation; only accesses on path C or T still do. Host accesses whose
    type was Write-Back or Write-Through take ``nc`` (``type_source``
    ``host-map``); Device types stay Device (already path N).
    """
    lf = lazy(frame)
    shared = _col("shared").fill_null(False)
    host_cached = (recorded() & (_col("side") == "host") & shared & is_typed_access()
                   & _col("mem_type").is_in(["wb", "wt"]))
    return lf.with_columns(
        host_cacheable=pl.when(shared).then(pl.lit(False)).otherwise(_col("host_cacheable")),
        mem_type=pl.when(host_cached).then(pl.lit("nc")).otherwise(_col("mem_type")),
        path=pl.when(host_cached).then(pl.lit("N")).otherwise(_col("path")),
        type_source=pl.when(host_cached).then(pl.lit("host-map")).otherwise(_col("type_source")),
    )


HOST_CMO = register_mitigation(Mitigation(
    name="host-cmo",
    actor="QEMU",
    changes=("QEMU maintains shared regions from EL0: a DC CIVAC of the access's lines right before "
             "each host read and a DC CVAC right after each host write (EL0 cannot invalidate without "
             "cleaning)."),
    limits=("Host accesses to shared regions only: device DMA, the guest's own mismatched accesses "
            "(a non-cacheable write read back through a cacheable mapping) and regions not marked "
            "shared are not maintained; every host access there pays a maintenance operation."),
    apply=host_cmo,
    builtin=True,
))

HOST_UNCACHED = register_mitigation(Mitigation(
    name="host-uncached",
    actor="QEMU",
    changes=("QEMU maps shared regions Non-cacheable: host accesses there take path N and the host "
             "mapping no longer makes those lines cacheable for speculation."),
    limits=("Shared regions only; a guest that maps the memory cacheable still creates the cacheable "
            "alias itself (a guest WB write then a host read is now stale), and every host access "
            "there becomes a slow uncached one."),
    apply=host_uncached,
    retypes_only=True,
    update_info=_uncached_regions,
    builtin=True,
))
