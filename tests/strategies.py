"""Random traces for the differential tests, and small helpers to write trace-v1 frames by hand.

``traces()`` draws a whole trace: trace-wide settings (line size 32/64/128,
stage 2 on/off, FWB, regions shared or not, RAM and MMIO, coherent and
non-coherent devices) and a list of events by several vCPUs, host threads and
DMA masters. Addresses are drawn from a handful of lines per region so that
events collide on lines (that is where hazards are); accesses may span lines
and maintenance may cover several.
"""

from __future__ import annotations

import shlex
from typing import Any

import polars as pl
from hypothesis import strategies as st

from tracekit.model import Device, Region, TraceInfo
from tracekit.schema import TRACE_SCHEMA, conform

ADDRESS_CMOS = ("dc.ivac", "dc.cvac", "dc.cvap", "dc.civac", "dc.cvau", "dc.zva", "ic.ivau")
GLOBAL_CMOS = ("ic.iallu", "ic.ialluis", "dc.isw", "dc.csw", "dc.cisw")
MEM_TYPES = ("dev-ngnrne", "dev-ngnre", "dev-ngre", "dev-gre", "nc", "wt", "wb")
#: MAIR bytes worth drawing: Device, NC, WT, WB, transient forms, FEAT_XS/MTE and reserved ones.
MAIR_BYTES = (0x00, 0x04, 0x08, 0x0C, 0x44, 0xBB, 0xFF, 0x4F, 0xF4, 0x11, 0x55, 0x40, 0xA0, 0xF0, 0x30, 0xAA, 0x77)


def events_frame(rows: list[dict[str, Any]], inserted: list[dict[str, Any]] = ()) -> pl.DataFrame:
    """trace-v1 events from dicts (agent, op, addr, size, cmo, sysreg, value, attr, attr_index, ...).

    ``inserted`` rows carry ``seq`` (their anchor) and a non-zero ``sub``, like a mitigation's
    inserted events; the frame then has a ``sub`` column.
    """
    out = []
    for i, r in enumerate(list(rows) + list(inserted)):
        r = dict(r)
        agent = r["agent"]
        if agent in ("guest", "host"):
            agent += ".0"
        r["agent"] = agent
        r.setdefault("side", agent.split(".", 1)[0])
        r.setdefault("src", "test.tkt")
        r.setdefault("src_line", i + 1)
        if i < len(rows):
            r["seq"] = i
            r["sub"] = 0
        out.append(r)
    schema = {"seq": pl.UInt64, "agent": pl.String, "side": pl.String, "op": pl.String, "addr": pl.UInt64,
              "size": pl.UInt64, "cmo": pl.String, "sysreg": pl.String, "value": pl.UInt64, "attr": pl.String,
              "attr_index": pl.UInt8, "phase": pl.String, "src": pl.String, "src_line": pl.UInt64}
    df = pl.DataFrame([{k: r.get(k) for k in schema} for r in out], schema=schema)
    if inserted:
        subs = pl.Series("sub", [r["sub"] for r in out], dtype=pl.Int32)
        return conform(df, TRACE_SCHEMA).with_columns(subs).sort("seq", "sub")
    return conform(df, TRACE_SCHEMA)


def _num(s: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if s[-1] in mult:
        return int(s[:-1], 0) * mult[s[-1]]
    return int(s, 0)


def tkt(text: str) -> tuple[pl.DataFrame, TraceInfo]:
    """A small subset of the .tkt format for engine tests (the real importer is tracekit.trace.load).

    Enough to state a case: @line-size, @stage2, @fwb, @region, @device, @phase, and the
    read/write/ifetch/cmo/sysreg lines with attr= and idx=.
    """
    info: dict[str, Any] = {"line_size": 64, "stage2": True, "fwb": False}
    regions: list[Region] = []
    devices: list[Device] = []
    rows: list[dict[str, Any]] = []
    phase = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        w = shlex.split(line)
        if w[0].startswith("@"):
            d = w[0][1:]
            if d == "line-size":
                info["line_size"] = _num(w[1])
            elif d == "stage2":
                info["stage2"] = w[1] == "on"
            elif d == "fwb":
                info["fwb"] = w[1] == "on"
            elif d == "region":
                kw = dict(x.split("=", 1) for x in w[5:] if "=" in x)
                regions.append(Region.make(w[1], _num(w[2]), _num(w[3]), w[4], s2=kw.get("s2"),
                                           host=kw.get("host"), shared="shared" in w[5:]))
            elif d == "device":
                devices.append(Device(w[1], w[2] == "coherent"))
            elif d == "phase":
                phase = w[1]
            continue
        keys = dict(x.split("=", 1) for x in w if "=" in x)
        w = [x for x in w if "=" not in x]
        agent, op = w[0], w[1]
        r: dict[str, Any] = {"agent": agent, "op": op, "src_line": n, "phase": phase}
        if op in ("read", "write", "ifetch"):
            r.update(addr=_num(w[2]), size=_num(w[3]))
        elif op == "cmo":
            r["cmo"] = w[2]
            if len(w) > 3:
                r.update(addr=_num(w[3]), size=_num(w[4]) if len(w) > 4 else info["line_size"])
        elif op == "sysreg":
            r.update(sysreg=w[2], value=_num(w[3]))
        if "attr" in keys:
            r["attr"] = {"dev": "dev-ngnrne"}.get(keys["attr"], keys["attr"])
        if "idx" in keys:
            r["attr_index"] = int(keys["idx"])
        rows.append(r)
    df = events_frame(rows)
    return df.with_columns(src_line=pl.Series([r["src_line"] for r in rows], dtype=pl.UInt64)), TraceInfo(
        line_size=info["line_size"], stage2=info["stage2"], fwb=info["fwb"], regions=tuple(regions),
        devices=tuple(devices))


# --------------------------------------------------------------------------
# hypothesis strategies


@st.composite
def trace_infos(draw) -> tuple[TraceInfo, list[tuple[int, int]]]:
    """Settings and the address windows events draw from (a few lines in each region)."""
    ls = draw(st.sampled_from([32, 64, 128]))
    stage2 = draw(st.booleans())
    fwb = draw(st.booleans()) if stage2 else False
    regions: list[Region] = []
    if draw(st.integers(0, 4)) > 0:  # most traces declare regions
        base = 0x4000_0000
        n = draw(st.integers(1, 4))
        for i in range(n):
            kind = draw(st.sampled_from(["ram", "ram", "ram", "mmio"]))
            size = draw(st.sampled_from([ls * 4, ls * 8, 4096]))
            unaligned = draw(st.sampled_from([0, 0, 0, ls // 2]))  # regions not on line boundaries
            s2 = draw(st.sampled_from([None, None, "wb", "wt", "nc", "dev"]))
            host = draw(st.sampled_from([None, None, "wb", "wt", "nc", "none"]))
            regions.append(Region.make(f"r{i}", base + unaligned, size, kind, s2=s2, host=host,
                                       shared=draw(st.booleans())))
            base += unaligned + size + draw(st.sampled_from([0, 0, 4096]))
    devices = (Device("dma", False), Device("gpu", True))
    info = TraceInfo(line_size=ls, stage2=stage2, fwb=fwb, regions=tuple(regions), devices=devices)
    if regions:
        windows = [(r.base, r.size) for r in regions]
    else:
        windows = [(0x4000_0000, ls * 6), (0x1000, ls * 3)]
    return info, windows


@st.composite
def traces(draw, max_events: int = 40) -> tuple[pl.DataFrame, TraceInfo]:
    """A random trace-v1 frame and its TraceInfo."""
    info, windows = draw(trace_infos())
    ls = info.line_size
    agents = ["guest.0", "guest.1", "host.0", "host.vnc", "dev.dma", "dev.gpu"]
    # a few lines per window, so events meet on lines
    hot = []
    for base, size in windows:
        nlines = max(1, min(size // ls, 4))
        first = (base + ls - 1) // ls * ls
        hot += [(first + i * ls, base, base + size) for i in range(nlines)]
    n = draw(st.integers(1, max_events))
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        agent = draw(st.sampled_from(agents))
        side = agent.split(".")[0]
        kind = draw(st.sampled_from(
            ["read", "read", "write", "write", "write", "ifetch", "cmo", "cmo", "sysreg"]
            if side == "guest" else ["read", "write", "write", "cmo", "read"]))
        if side == "dev" and kind == "cmo":
            kind = "write"
        line_base, lo, hi = draw(st.sampled_from(hot))
        r: dict[str, Any] = {"agent": agent}
        if kind in ("read", "write", "ifetch"):
            off = draw(st.sampled_from([0, 0, 4, 8, ls // 2, ls - 4, ls - 2]))
            size = draw(st.sampled_from([1, 4, 8, 8, 16, ls, 2 * ls]))
            addr = min(max(lo, line_base + off), hi - 1)
            size = max(1, min(size, hi - addr))  # stay inside the region
            r.update(op=kind, addr=addr, size=size)
            if side == "guest":
                which = draw(st.sampled_from(["idx", "idx", "attr", "none"]))
                if which == "idx":
                    r["attr_index"] = draw(st.integers(0, 7))
                elif which == "attr":
                    r["attr"] = draw(st.sampled_from(MEM_TYPES))
            elif draw(st.integers(0, 5)) == 0:
                r["attr"] = draw(st.sampled_from(MEM_TYPES))
        elif kind == "cmo":
            op = draw(st.sampled_from(ADDRESS_CMOS + ADDRESS_CMOS + GLOBAL_CMOS))
            r.update(op="cmo", cmo=op)
            if op in ADDRESS_CMOS:
                off = draw(st.sampled_from([0, 0, 8, ls // 2]))
                addr = min(max(lo, line_base + off), hi - 1)
                size = draw(st.sampled_from([None, ls, ls, 2 * ls, 3 * ls]))
                if size is not None:
                    size = max(1, min(size, hi - addr))
                r.update(addr=addr, size=size)
                if op == "dc.zva" and side == "guest" and draw(st.booleans()):
                    r["attr_index"] = draw(st.integers(0, 7))
        else:
            reg = draw(st.sampled_from(["SCTLR_EL1", "SCTLR_EL1", "MAIR_EL1", "TCR_EL1"]))
            if reg == "SCTLR_EL1":
                value = draw(st.sampled_from([0x0, 0x1005, 0x1005, 0x1005, 0x1, 0x5, 0x1001, 0x1000]))
            elif reg == "MAIR_EL1":
                value = sum(draw(st.sampled_from(MAIR_BYTES)) << (8 * i) for i in range(8))
            else:
                value = 0
            r.update(op="sysreg", sysreg=reg, value=value)
        rows.append(r)
    # maintenance a mitigation would insert around recorded events (incl. the whole-RAM clean)
    inserted: list[dict[str, Any]] = []
    taken: set[tuple[int, int]] = set()
    for _ in range(draw(st.sampled_from([0, 0, 1, 3, 6]))):
        anchor = draw(st.integers(0, n - 1))
        sub = draw(st.sampled_from([-128, -64, -63, -1, 1, 2, 65, 130]))
        if (anchor, sub) in taken:
            continue
        taken.add((anchor, sub))
        acting = draw(st.sampled_from(["guest.0", "guest.1", "host.kvm", "host.vnc"]))
        op = draw(st.sampled_from(["ram.civac", "ram.civac", "dc.civac", "dc.cvac", "dc.ivac", "ic.iallu", "ic.ivau"]))
        r = {"agent": f"{acting}/mit", "side": acting.split(".")[0], "op": "cmo", "cmo": op,
             "seq": anchor, "sub": sub, "src": "test.tkt"}
        if op not in ("ram.civac", "ic.iallu"):
            line_base, lo, hi = draw(st.sampled_from(hot))
            r.update(addr=line_base, size=min(ls, hi - line_base))
        inserted.append(r)
    return events_frame(rows, inserted), info
