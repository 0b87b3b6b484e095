"""Mitigations the hypervisor (KVM) performs: MAIR trapping, cache-toggle flushes, fault-time cleaning, FWB.

Coherence model section 6. The per-vCPU trapping state of ``kvm-cache-toggle``
is computed with window expressions over the vCPU's few control events
(SCTLR_EL1/VM-register writes and set/way operations), not a loop.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import polars as pl

from ..model import MAIR_BYTE_TYPE, SCTLR_C, SCTLR_M, SET_WAY_OPS, TraceInfo
from .base import (
    TVM_REGISTERS,
    Frame,
    collect,
    Mitigation,
    MitigationContext,
    add_events,
    finalize,
    inserted_events,
    interval_union,
    is_typed_access,
    is_zva,
    lazy,
    recorded,
    register_mitigation,
    sctlr_before,
)

_col = pl.col
PAGE = 4096
KVM = "host.kvm"
_ANCHOR_COLUMNS = ("time", "phase", "src", "src_line", "src_offset")


def _guest_sysreg(name: str | tuple[str, ...]) -> pl.Expr:
    names = [name] if isinstance(name, str) else list(name)
    return (recorded() & (_col("side") == "guest") & (_col("op") == "sysreg")
            & _col("sysreg").is_in(names).fill_null(False))


def _count_by(lf: pl.LazyFrame, key: pl.Expr) -> dict[str, int]:
    out = lf.select(_k=key).group_by("_k").len().collect()
    return {str(k): int(n) for k, n in out.iter_rows() if k is not None}


# --------------------------------------------------------------------------
# mair-trap

#: MAIR byte -> the byte KVM writes instead: Normal NC and WT entries become WB (0xFF).
MAIR_TRAP_BYTE = {b: (0xFF if MAIR_BYTE_TYPE[b] in ("nc", "wt") else b) for b in range(256)}


def trapped_mair(value: int) -> int:
    """A MAIR_EL1 value with every Normal Non-cacheable / Write-Through byte replaced by 0xFF."""
    return sum(MAIR_TRAP_BYTE[(value >> (8 * i)) & 0xFF] << (8 * i) for i in range(8))


def mair_trap_value(expr: pl.Expr, values: Iterable[int]) -> pl.Expr:
    """``expr`` with each MAIR value rewritten as KVM installs it.

    A trace holds a handful of distinct MAIR values, so the rewrite is a lookup
    over those, not byte arithmetic over every row.
    """
    mapping = {int(v): trapped_mair(int(v)) for v in values if v is not None}
    return expr.replace(mapping) if mapping else expr


def mair_trap(frame: Frame, ctx: MitigationContext) -> pl.DataFrame:
    """Stage-1 NC/WT types from MAIR_EL1 (or stated with ``attr=``) become Write-Back; MMU-off accesses untouched.

    Rewrites ``s1_decl`` of guest accesses whose type came from MAIR or
    ``attr=`` (``type_source`` mair/attr), then ``resolve.finalize_types``. The
    guest's MAIR_EL1 writes (``value``) and the ``mair`` column show the value
    KVM installs instead. Device entries stay Device.
    """
    df = collect(frame)
    lf = df.lazy()
    is_guest = _col("side") == "guest"
    values = set(df["mair"].drop_nulls().unique().to_list())
    values |= set(df.filter(_guest_sysreg("MAIR_EL1"))["value"].drop_nulls().to_list())
    retype = (recorded() & is_guest & _col("type_source").is_in(["mair", "attr"]).fill_null(False)
              & _col("s1_decl").is_in(["nc", "wt"]).fill_null(False))
    mair_write = _guest_sysreg("MAIR_EL1")
    lf = lf.with_columns(
        s1_decl=pl.when(retype).then(pl.lit("wb")).otherwise(_col("s1_decl")),
        value=pl.when(mair_write).then(mair_trap_value(_col("value"), values)).otherwise(_col("value")),
        mair=mair_trap_value(_col("mair"), values),
    )
    return finalize(lf, ctx.info)


def mair_trap_traps(frame: Frame, ctx: MitigationContext) -> dict[str, int]:
    """Every guest MAIR_EL1 write traps."""
    return _count_by(lazy(frame).filter(_guest_sysreg("MAIR_EL1")), _col("sysreg"))


# --------------------------------------------------------------------------
# kvm-cache-toggle


def _caches_on(value: pl.Expr) -> pl.Expr:
    return (value & (SCTLR_M | SCTLR_C)) == (SCTLR_M | SCTLR_C)


def toggle_state(frame: Frame) -> pl.LazyFrame:
    """The vCPUs' control events with KVM's trapping state before each (``_trapping``) and ``_flush``.

    Per vCPU, trapping (HCR_EL2.TVM) is on at reset; a trapped SCTLR_EL1 write
    leaving M and C both set turns it off; a set/way operation turns it on.
    So trapping is on before an event exactly when no SCTLR_EL1 write enabling
    the caches lies between the vCPU's last set/way operation (or reset) and
    it: a segment number (set/way operations so far) and a running count of
    enabling writes per segment, both window expressions.
    ``_flush``: a trapped SCTLR_EL1 write that changes whether caches are on
    (M and C both set), or a set/way operation found with trapping off.
    """
    is_sctlr = _col("sysreg") == "SCTLR_EL1"
    is_sw = _col("op") == "cmo"
    ctl = (
        lazy(frame)
        .filter(_guest_sysreg(TVM_REGISTERS) | (recorded() & (_col("side") == "guest") & (_col("op") == "cmo")
                                                  & _col("cmo").is_in(list(SET_WAY_OPS)).fill_null(False)))
        .sort("seq")
        .with_columns(_prev=sctlr_before(), _sw=is_sw.cast(pl.Int64))
        .with_columns(_seg=_col("_sw").cum_sum().over("agent") - _col("_sw"),
                      _en=(is_sctlr.fill_null(False) & _caches_on(_col("value"))).cast(pl.Int64))
        .with_columns(_trapping=(_col("_en").cum_sum().over("agent", "_seg") - _col("_en")) == 0)
    )
    change = _caches_on(_col("_prev")) != _caches_on(_col("value"))
    return ctl.with_columns(
        _flush=(is_sctlr.fill_null(False) & _col("_trapping") & change) | (is_sw & ~_col("_trapping")))


def kvm_cache_toggle(frame: Frame, ctx: MitigationContext) -> pl.LazyFrame:
    """KVM's TVM/TSW handling: whole-RAM clean+invalidate when a trapped SCTLR_EL1 write toggles the caches; set/way emulated.

    Each flush is ONE ``ram.civac`` event by ``host.kvm`` just before the
    SCTLR_EL1 write, or in place of the set/way operation found with trapping
    off. Every guest set/way operation is removed.
    """
    lf = lazy(frame)
    schema = lf.collect_schema()
    st = toggle_state(lf)
    anchors = st.filter(_col("_flush")).select(
        "seq", j=pl.lit(0), before=pl.lit(True), acting=pl.lit(KVM), cmo=pl.lit("ram.civac"),
        addr=pl.lit(None, dtype=pl.UInt64), size=pl.lit(None, dtype=pl.UInt64), *_ANCHOR_COLUMNS,
    )
    ins = inserted_events(anchors, ctx, schema, detail="kvm-cache-toggle: stage2_flush_vm")
    set_way = (recorded() & (_col("side") == "guest") & (_col("op") == "cmo")
               & _col("cmo").is_in(list(SET_WAY_OPS)).fill_null(False))
    return add_events(lf.filter(~set_way), ins)


def kvm_cache_toggle_traps(frame: Frame, ctx: MitigationContext) -> dict[str, int]:
    """VM-register writes taken while trapping is on (by register) and every set/way operation (by op)."""
    st = toggle_state(frame)
    regs = _count_by(st.filter((_col("op") == "sysreg") & _col("_trapping")), _col("sysreg"))
    sw = _count_by(st.filter(_col("op") == "cmo"), _col("cmo").cast(pl.String).str.to_uppercase().str.replace(".", " ", literal=True))
    return {**regs, **sw}


# --------------------------------------------------------------------------
# kvm-fault-clean


def first_touches(frame: Frame) -> pl.LazyFrame:
    """Per 4 KiB page of RAM, the first guest access (any vCPU): its seq and whether it is an ifetch.

    Accesses and DC ZVA, by recorded guest events in ``ram`` regions; an access
    spanning pages touches each. Returns one row per page: ``page``, ``seq``.
    """
    lf = lazy(frame)
    acc = lf.filter(recorded() & (_col("side") == "guest") & is_typed_access() & _col("addr").is_not_null()
                    & (_col("region_kind") == "ram").fill_null(False))
    # DC ZVA writes the line of its address, which lies in the page of its address.
    last_byte = pl.when(is_zva().fill_null(False)).then(_col("addr")).otherwise(
        _col("addr") + _col("size").fill_null(1).clip(lower_bound=1) - 1)
    spans = acc.select("seq", page=_col("addr") // PAGE, _last=last_byte // PAGE)
    # nearly every access lies in one page: only the few that cross pages are cut into pages
    one = spans.filter(_col("page") == _col("_last")).select("seq", "page")
    many = (spans.filter(_col("page") != _col("_last"))
            .select("seq", page=pl.int_ranges("page", _col("_last") + 1, dtype=pl.UInt64)).explode("page"))
    return pl.concat([one, many.select("seq", pl.col("page").cast(pl.UInt64))]).group_by("page").agg(
        _col("seq").min())


def kvm_fault_clean(frame: Frame, ctx: MitigationContext) -> pl.LazyFrame:
    """Before the first guest access to each RAM page: DC CIVAC of the page, and IC IVAU of it for an ifetch.

    The pages an access maps for the first time are merged into runs; each run
    is one DC CIVAC (j 0..31) and, when the access is an instruction fetch, one
    IC IVAU after all the cleans (j 32..63), by ``host.kvm``. The access itself
    comes after the maintenance, so what it writes is not cleaned.
    """
    lf = lazy(frame)
    schema = lf.collect_schema()
    runs = interval_union(first_touches(lf).with_columns(_hi=_col("page")), ["seq"], "page", "_hi").collect()
    # the faulting accesses: one recorded event per seq, and few of them
    acc = lf.filter(recorded() & _col("seq").is_in(runs["seq"].unique().implode())).select(
        "seq", "op", "addr", *_ANCHOR_COLUMNS)
    runs = (
        runs.lazy().join(acc.rename({"addr": "_acc_addr"}), on="seq", how="left")
        .sort("seq", "page")
        .with_columns(_r=pl.int_range(pl.len()).over("seq").clip(0, 31))
    )
    common = dict(
        before=pl.lit(True), acting=pl.lit(KVM), addr=_col("page") * PAGE,
        size=(_col("_hi") - _col("page") + 1) * PAGE, locate=_col("_acc_addr"),
    )
    cleans = runs.select("seq", *_ANCHOR_COLUMNS, j=_col("_r"), cmo=pl.lit("dc.civac"), **common)
    ics = runs.filter(_col("op") == "ifetch").select(
        "seq", *_ANCHOR_COLUMNS, j=_col("_r") + 32, cmo=pl.lit("ic.ivau"), **common)
    detail = "kvm-fault-clean: stage-2 fault, page mapped"
    return add_events(lf, inserted_events(pl.concat([cleans, ics]), ctx, schema, detail=detail))


def kvm_fault_clean_traps(frame: Frame, ctx: MitigationContext) -> dict[str, int]:
    """One stage-2 fault per RAM page the guest touches (in a partitioned run, per page the part owns)."""
    pages = first_touches(frame).select("page").collect()["page"].to_numpy().astype(np.uint64)
    return {"stage-2 fault": len(pages) if ctx.owns is None else int(ctx.owns(pages * np.uint64(PAGE)).sum())}


# --------------------------------------------------------------------------
# s2fwb


def _fwb_on(info: TraceInfo) -> TraceInfo:
    return info.replace(fwb=True)


def s2fwb(frame: Frame, ctx: MitigationContext) -> pl.DataFrame:
    """FWB (HCR_EL2.FWB) for every RAM region: guest accesses there become Write-Back, MMU off included.

    Sets ``fwb`` on guest accesses (and DC ZVA) to ``ram`` regions and calls
    ``resolve.finalize_types``; the returned settings have ``fwb`` on.
    """
    lf = lazy(frame)
    target = (recorded() & (_col("side") == "guest") & is_typed_access() & _col("s1_decl").is_not_null()
              & (_col("region_kind") == "ram").fill_null(False))
    lf = lf.with_columns(fwb=pl.when(target).then(pl.lit(True)).otherwise(_col("fwb")))
    return finalize(lf, ctx.info)


MAIR_TRAP = register_mitigation(Mitigation(
    name="mair-trap",
    actor="hypervisor",
    changes=("Every guest MAIR_EL1 write is trapped and its Normal Non-cacheable and Write-Through "
             "entries become Normal Write-Back; a type stated with attr= is treated the same."),
    limits=("MMU-off accesses (Device-nGnRnE) and Device entries are untouched, so boot-time hazards "
            "stay; a non-coherent device now misses the guest's dirty lines; counts MAIR_EL1 writes "
            "only (with HCR_EL2.TVM instead of a fine-grained trap every VM-register write traps too)."),
    apply=mair_trap,
    retypes_only=True,
    traps=mair_trap_traps,
    builtin=True,
))

KVM_CACHE_TOGGLE = register_mitigation(Mitigation(
    name="kvm-cache-toggle",
    actor="hypervisor",
    changes=("KVM traps VM registers (HCR_EL2.TVM) from reset until the vCPU enables its caches and "
             "emulates set/way operations: a trapped SCTLR_EL1 write that toggles M+C, or a set/way "
             "operation with trapping off, gets one clean+invalidate of all guest RAM (ram.civac)."),
    limits=("Once the caches are on, SCTLR_EL1 writes are no longer trapped: a later cache disable "
            "(or re-enable) goes unmaintained until the next set/way operation; a set/way operation "
            "made while trapping is on is simply dropped; host and device accesses are not "
            "maintained."),
    apply=kvm_cache_toggle,
    traps=kvm_cache_toggle_traps,
    builtin=True,
))

KVM_FAULT_CLEAN = register_mitigation(Mitigation(
    name="kvm-fault-clean",
    actor="hypervisor",
    changes=("KVM without FWB, at stage-2 fault time: a DC CIVAC of the 4 KiB RAM page before the first "
             "guest access (any vCPU) to it, and an I-cache invalidation of it when that access is an "
             "instruction fetch."),
    limits=("Acts once per page, before the access that faults, so it cannot fix what that access "
            "writes or anything later; the trace is taken to start with no page mapped; it models KVM "
            "without FWB even when FWB is on."),
    apply=kvm_fault_clean,
    traps=kvm_fault_clean_traps,
    builtin=True,
))

S2FWB = register_mitigation(Mitigation(
    name="s2fwb",
    actor="hypervisor",
    changes=("FEAT_S2FWB (ARMv8.4, HCR_EL2.FWB = 1) for every RAM region: every guest access there is "
             "Normal Write-Back whatever stage 1 says, MMU off included."),
    limits=("MMIO regions are unaffected; a guest can no longer make a buffer non-cacheable, so a "
            "non-coherent device or a host mapping shared memory Non-cacheable now misses the guest's "
            "dirty lines; needs ARMv8.4 hardware."),
    apply=s2fwb,
    retypes_only=True,
    update_info=_fwb_on,
    builtin=True,
))
