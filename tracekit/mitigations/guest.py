"""Mitigations the guest performs: boot-time invalidation, DMA API discipline, coherent devices.

Coherence model section 6. Each is one polars plan over the resolved frame;
the only per-vCPU state (SCTLR_EL1 before a write) is a window expression.
"""

from __future__ import annotations

import polars as pl

from ..model import SCTLR_M
from .base import (
    Frame,
    Mitigation,
    MitigationContext,
    add_events,
    finalize,
    first_line,
    inserted_events,
    interval_union,
    is_data_write,
    last_line,
    lazy,
    recorded,
    register_mitigation,
    sctlr_before,
)

_col = pl.col
_ANCHOR_COLUMNS = ("time", "phase", "src", "src_line", "src_offset")


def _mmu_on(col: str = "sctlr") -> pl.Expr:
    return (_col(col) & SCTLR_M) != 0


# --------------------------------------------------------------------------
# guest-boot-inval


def boot_inval(frame: Frame, ctx: MitigationContext) -> pl.LazyFrame:
    """Per vCPU, DC IVAC of every line it wrote with its MMU off, just before it sets SCTLR_EL1.M.

    Each MMU-off write (``write`` or DC ZVA with SCTLR_EL1.M = 0 in force) is
    matched, by an as-of join per vCPU, to that vCPU's next SCTLR_EL1 write
    that turns M from 0 to 1; writes with no such later event are pending at
    the end of the trace and are invalidated after its last event. The lines
    are merged into maximal runs per (vCPU, anchor, region): one DC IVAC per
    run, in address order. The DC IVAC is the vCPU's own (side ``guest``), so
    under stage 2 the engines upgrade it to DC CIVAC.
    """
    lf = lazy(frame)
    schema = lf.collect_schema()
    ls = ctx.line_size
    guest = lf.filter(recorded() & (_col("side") == "guest"))
    enables = (
        guest.filter((_col("op") == "sysreg") & (_col("sysreg") == "SCTLR_EL1"))
        .sort("seq")
        .with_columns(_prev=sctlr_before())
        .filter(~_mmu_on("_prev") & _mmu_on("value"))
        .select("agent", _anchor=_col("seq"), _a_sctlr=_col("_prev"), _a_mair=_col("mair"))
    )
    writes = (
        guest.filter(is_data_write() & _col("addr").is_not_null() & ~_mmu_on())
        .select("agent", "seq", "region", _lo=first_line(ls), _hi=last_line(ls))
        .sort("seq")
    )
    end_seq = lf.select(_col("seq").max())
    matched = (
        writes.join_asof(enables.sort("_anchor"), left_on="seq", right_on="_anchor", by="agent", strategy="forward",
                   check_sortedness=False)
        .with_columns(_before=_col("_anchor").is_not_null())
        .join(end_seq.select(_end=_col("seq")), how="cross")
        .with_columns(_anchor=_col("_anchor").fill_null(_col("_end")))
    )
    runs = interval_union(matched, ["_anchor", "_before", "agent", "region"], "_lo", "_hi").collect()
    # The vCPU's SCTLR/MAIR in force at the anchor: before its enabling write, or its last ones
    # (the frame is in seq order, and a group keeps its rows' order).
    at_enable = enables.select("agent", "_anchor", "_a_sctlr", "_a_mair")
    last_state = guest.group_by("agent").agg(_l_sctlr=_col("sctlr").last(), _l_mair=_col("mair").last())
    # the anchor events: recorded, so one per seq, and few
    anchor_rows = lf.filter(recorded() & _col("seq").is_in(runs["_anchor"].unique().implode())).select(
        _anchor=_col("seq"), *_ANCHOR_COLUMNS)
    anchors = (
        runs.lazy().join(at_enable, on=["agent", "_anchor"], how="left")
        .join(last_state, on="agent", how="left")
        .join(anchor_rows, on="_anchor", how="left")
        .sort("_anchor", "agent", "_lo")
        .with_columns(j=pl.int_range(pl.len()).over("_anchor", "_before"))
        .select(
            seq=_col("_anchor"), j="j", before=_col("_before"), acting=_col("agent"),
            cmo=pl.lit("dc.ivac"), addr=_col("_lo") * ls, size=(_col("_hi") - _col("_lo") + 1) * ls,
            sctlr=pl.when(_col("_before")).then(_col("_a_sctlr")).otherwise(_col("_l_sctlr")),
            mair=pl.when(_col("_before")).then(_col("_a_mair")).otherwise(_col("_l_mair")),
            *_ANCHOR_COLUMNS,
        )
    )
    ins = inserted_events(anchors, ctx, schema, detail="guest-boot-inval: lines written with the MMU off")
    return add_events(lf, ins)


# --------------------------------------------------------------------------
# guest-dma-cmo


def _shared_guest(lf: pl.LazyFrame) -> pl.LazyFrame:
    return lf.filter(recorded() & (_col("side") == "guest") & _col("shared").fill_null(False)
                     & _col("addr").is_not_null())


def dma_cmo(frame: Frame, ctx: MitigationContext) -> pl.LazyFrame:
    """Streaming DMA API discipline on ``shared`` regions, by the accessing vCPU.

    DC CVAC of the access's lines right after each guest write (and DC ZVA);
    DC IVAC of them right before each guest read (upgraded to CIVAC under
    stage 2). One operation per access covers all its lines.
    """
    lf = lazy(frame)
    schema = lf.collect_schema()
    ls = ctx.line_size
    acc = _shared_guest(lf).filter((_col("op") == "read") | is_data_write())
    is_read = _col("op") == "read"
    anchors = acc.select(
        "seq", j=pl.lit(0), before=is_read, acting=_col("agent"),
        cmo=pl.when(is_read).then(pl.lit("dc.ivac", dtype=schema["cmo"])).otherwise(pl.lit("dc.cvac", dtype=schema["cmo"])),
        addr=first_line(ls) * ls, size=(last_line(ls) - first_line(ls) + 1) * ls, locate=_col("addr"),
        # the access's own region (inserted_events need not look it up)
        region="region", region_kind="region_kind", shared="shared", host_cacheable="host_cacheable",
        *_ANCHOR_COLUMNS, sctlr=_col("sctlr"), mair=_col("mair"),
    )
    ins = inserted_events(anchors, ctx, schema, detail="guest-dma-cmo: DMA API maintenance of a shared buffer")
    return add_events(lf, ins)


# --------------------------------------------------------------------------
# coherent-device


def coherent_device(frame: Frame, ctx: MitigationContext) -> pl.DataFrame:
    """Guest data accesses to ``shared`` regions with the MMU on declare stage-1 Normal Write-Back.

    Only ``s1_decl`` changes; SCTLR_EL1.C, stage 2 and FWB still apply
    (``resolve.finalize_types``). Instruction fetches and MMU-off accesses keep
    their types; host and device agents are untouched.
    """
    lf = lazy(frame)
    target = (
        recorded() & (_col("side") == "guest") & _col("shared").fill_null(False) & _mmu_on()
        & ((_col("op") == "read") | is_data_write()) & _col("s1_decl").is_not_null()
    )
    lf = lf.with_columns(s1_decl=pl.when(target).then(pl.lit("wb")).otherwise(_col("s1_decl")))
    return finalize(lf, ctx.info)


GUEST_BOOT_INVAL = register_mitigation(Mitigation(
    name="guest-boot-inval",
    actor="guest",
    changes=("Per vCPU, a DC IVAC (CIVAC under stage 2) of every line that vCPU wrote with its MMU off, "
             "just before its SCTLR_EL1 write that sets M; lines still pending at the end of the trace "
             "get it there."),
    limits=("Acts only on the vCPU's own MMU-off writes: lines written by another vCPU, by the host or "
            "by a device, and anything after the MMU is on, are not maintained; on bare metal "
            "(@stage2 off) the DC IVAC is not upgraded and may discard dirty lines."),
    apply=boot_inval,
    builtin=True,
    merges_lines=True,  # one DC IVAC per run of neighbouring lines
))

GUEST_DMA_CMO = register_mitigation(Mitigation(
    name="guest-dma-cmo",
    actor="guest",
    changes=("DMA API discipline on shared regions: a DC CVAC of the access's lines right after each "
             "guest write, a DC IVAC (CIVAC under stage 2) right before each guest read."),
    limits=("Guest accesses to shared regions only: host and device accesses, and regions not marked "
            "shared, are not maintained; a host read through its cacheable mapping after a guest "
            "non-cacheable write stays stale (the guest cleans, nobody invalidates the host's line); on "
            "bare metal the DC IVAC may discard dirty lines."),
    apply=dma_cmo,
    builtin=True,
))

COHERENT_DEVICE = register_mitigation(Mitigation(
    name="coherent-device",
    actor="guest",
    changes=("Told by the VMM that the device is coherent, the guest maps shared regions Normal "
             "Write-Back: its data accesses there with the MMU on take stage-1 type WB."),
    limits=("MMU-off accesses, instruction fetches and non-shared regions keep their types; "
            "SCTLR_EL1.C = 0 and a non-WB stage 2 still apply; a real non-coherent DMA master "
            "(@device NAME noncoherent) now misses the guest's dirty lines."),
    apply=coherent_device,
    retypes_only=True,
    builtin=True,
))
