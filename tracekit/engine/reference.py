"""The reference replay: the hazard rules of the coherence model, one event at a time.

This engine exists to be read and to be the oracle the fast engine is tested
against. It keeps, per line, the state docs/semantics.md lists and applies the
rules H1-H4 and the instruction-fetch rule literally, byte by byte. It is
deliberately plain Python: clarity over speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ..model import FIX_OP_OF_CAUSE, TraceInfo, cmo_effect
from ..schema import FINDINGS_SCHEMA, conform

NEVER = (-1, 0)  # a position before every event


@dataclass(frozen=True)
class Event:
    """What a finding needs to say about an event."""

    pos: tuple[int, int]  # (seq, sub): the total order
    seq: int
    agent: str
    path: str | None
    addr: int | None
    size: int | None
    region: str | None
    phase: str | None
    src: str
    src_line: int | None
    src_offset: int | None


@dataclass
class Spoil:
    """Why a byte's memory value may be wrong until it is written again (H3, H4)."""

    cause: str  # clobbered-by-writeback | discarded-by-invalidate
    other: Event  # the write whose value a later read may miss
    fix_after: Event
    fix_before: Event
    fix_agent: str


@dataclass
class Byte:
    write: Event | None = None  # W(b): the last write
    may_cached: bool = False  # the line may have been cached at that write (H2)
    spoil: Spoil | None = None


@dataclass
class Line:
    bytes: list[Byte]
    is_ram: bool = True
    last_clean: tuple[int, int] = NEVER  # clean to PoC
    last_inval: tuple[int, int] = NEVER  # invalidation (ends the dirty window too)
    last_c_write: Event | None = None  # last write on path C to any byte
    last_pou_clean: tuple[int, int] = NEVER
    last_ic_inval: tuple[int, int] = NEVER
    pou_clean_before_ic_inval: tuple[int, int] = NEVER
    last_ct_access: tuple[int, int] = NEVER  # observed speculation: last data access on C/T
    discard_reported: set[int] = field(default_factory=set)

    def dirty_end(self) -> tuple[int, int]:
        return max(self.last_clean, self.last_inval)


class Replay:
    def __init__(self, info: TraceInfo, mitigation: str, speculation: str, cacheable_lines: set[int]):
        self.info = info
        self.ls = info.line_size
        self.mitigation = mitigation
        self.observed = speculation == "observed"
        self.cacheable_lines = cacheable_lines
        self.lines: dict[int, Line] = {}
        self.findings: list[dict[str, Any]] = []

    # -- helpers -----------------------------------------------------------

    def report(self, kind: str, cause: str, at: Event, n: int, other: Event | None,
               fix_after: Event, fix_before: Event, fix_agent: str | None) -> None:
        lo, hi = self.span(at, n)
        self.findings.append(
            dict(
                mitigation=self.mitigation, kind=kind, cause=cause, seq=at.seq, agent=at.agent,
                addr=lo, size=hi - lo, line=n * self.ls,
                other_seq=None if other is None else other.seq,
                other_agent=None if other is None else other.agent,
                fix_op=FIX_OP_OF_CAUSE[cause], fix_agent=fix_agent,
                fix_after_seq=fix_after.seq, fix_before_seq=fix_before.seq,
                region=at.region, phase=at.phase, src=at.src, src_line=at.src_line, src_offset=at.src_offset,
            )
        )

    def span(self, ev: Event, n: int) -> tuple[int, int]:
        base = n * self.ls
        return max(ev.addr, base), min(ev.addr + ev.size, base + self.ls)

    def lines_of(self, ev: Event) -> range:
        return range(ev.addr // self.ls, (ev.addr + ev.size - 1) // self.ls + 1)

    # -- accesses ------------------------------------------------------------

    def read(self, ev: Event, ln: Line, n: int) -> None:
        lo, hi = self.span(ev, n)
        latest: dict[str, Event] = {}
        spoils: dict[str, Spoil] = {}
        for b in range(lo - n * self.ls, hi - n * self.ls):
            byte = ln.bytes[b]
            if byte.spoil is not None:
                s = byte.spoil
                if s.cause not in spoils or s.other.pos > spoils[s.cause].other.pos:
                    spoils[s.cause] = s
            w = byte.write
            if w is None:
                continue
            cause = None
            if ev.path == "N" and w.path == "C" and ln.dirty_end() < w.pos:
                cause = "dirty-not-cleaned"  # H1
            elif ev.path in ("C", "T") and w.path == "N" and byte.may_cached and ln.last_inval < w.pos:
                cause = "stale-line-not-invalidated"  # H2
            if cause and (cause not in latest or w.pos > latest[cause].pos):
                latest[cause] = w
        for cause, w in latest.items():
            if cause == "dirty-not-cleaned":
                self.report("stale-read", cause, ev, n, w, w, ev, w.agent)
            else:
                self.report("stale-read", cause, ev, n, w, w, ev, ev.agent)
        for cause, s in spoils.items():
            self.report("stale-read", cause, ev, n, s.other, s.fix_after, s.fix_before, s.fix_agent)
        if self.observed and ev.path in ("C", "T"):
            ln.last_ct_access = ev.pos

    def write(self, ev: Event, ln: Line, n: int) -> None:
        lo, hi = self.span(ev, n)
        clobber = None
        if ev.path == "N" and ln.last_c_write is not None and ln.last_c_write.pos > ln.dirty_end():
            c = ln.last_c_write  # H3: the line may be dirty; its write-back puts older bytes back
            self.report("lost-write", "clobbered-by-writeback", ev, n, c, c, ev, c.agent)
            clobber = Spoil("clobbered-by-writeback", ev, c, ev, c.agent)
        if self.observed:
            may_cached = ln.last_ct_access > ln.last_inval
        else:
            may_cached = n in self.cacheable_lines
        for b in range(lo - n * self.ls, hi - n * self.ls):
            ln.bytes[b] = Byte(ev, may_cached, clobber)
        if ev.path == "C":
            ln.last_c_write = ev
        if self.observed and ev.path in ("C", "T"):
            ln.last_ct_access = ev.pos

    def ifetch(self, ev: Event, ln: Line, n: int) -> None:
        lo, hi = self.span(ev, n)
        stale: Event | None = None
        for b in range(lo - n * self.ls, hi - n * self.ls):
            w = ln.bytes[b].write
            if w is None:
                continue
            invalidated = ln.last_ic_inval > w.pos
            cleaned = w.path != "C" or ln.pou_clean_before_ic_inval > w.pos
            if not (invalidated and cleaned) and (stale is None or w.pos > stale.pos):
                stale = w
        if stale is not None:
            self.report("stale-ifetch", "icache-not-invalidated", ev, n, stale, stale, ev, ev.agent)

    # -- maintenance -----------------------------------------------------------

    def maintain(self, ev: Event, effect, ln: Line, n: int) -> None:
        if effect.may_discard:  # H4
            dirty_since = ln.dirty_end()
            discarded: dict[int, Event] = {}
            for b, byte in enumerate(ln.bytes):
                w = byte.write
                if w is not None and w.path == "C" and w.pos > dirty_since:
                    discarded[w.seq] = w
                    byte.spoil = Spoil("discarded-by-invalidate", w, w, ev, ev.agent)
            for w in sorted(discarded.values(), key=lambda e: e.pos):
                if w.seq not in ln.discard_reported:
                    ln.discard_reported.add(w.seq)
                    self.report("lost-write", "discarded-by-invalidate", w, n, ev, w, ev, ev.agent)
        if effect.invalidate:
            ln.last_inval = ev.pos
        if effect.clean_poc:
            ln.last_clean = ev.pos
        if effect.clean_pou:
            ln.last_pou_clean = ev.pos
        if effect.ic_invalidate:
            ln.last_ic_inval = ev.pos
            ln.pou_clean_before_ic_inval = ln.last_pou_clean


def _event(row: dict[str, Any]) -> Event:
    return Event(
        pos=(row["seq"], row["sub"]), seq=row["seq"], agent=row["agent"], path=row["path"],
        addr=row["addr"], size=row["size"], region=row["region"], phase=row["phase"],
        src=row["src"], src_line=row["src_line"], src_offset=row["src_offset"],
    )


def cacheable_lines(events: pl.DataFrame, line_size: int) -> set[int]:
    """Lines some agent maps cacheable: an access on path C/T, or in a host-cacheable region."""
    lines: set[int] = set()
    for row in events.iter_rows(named=True):
        if row["path"] is None or row["addr"] is None:
            continue
        if row["path"] in ("C", "T") or row["host_cacheable"]:
            addr, size = _access_range(row, line_size)
            lines.update(range(addr // line_size, (addr + size - 1) // line_size + 1))
    return lines


def _access_range(row: dict[str, Any], line_size: int) -> tuple[int, int]:
    if row["op"] == "cmo":  # dc.zva: the whole line holding the address
        return row["addr"] - row["addr"] % line_size, line_size
    return row["addr"], row["size"]


def replay(events: pl.DataFrame, info: TraceInfo, *, mitigation: str = "none",
           speculation: str = "architectural", compact: bool = False) -> pl.DataFrame:
    """Findings of one mitigation's resolved event frame (docs/semantics.md), findings-v1."""
    ls = info.line_size
    events = events.sort("seq", "sub")
    rp = Replay(info, mitigation, speculation, set() if speculation == "observed" else cacheable_lines(events, ls))

    def touch(n: int, region_kind: str | None) -> Line:
        ln = rp.lines.get(n)
        if ln is None:
            ln = rp.lines[n] = Line([Byte() for _ in range(ls)], is_ram=False)
        if region_kind == "ram":
            ln.is_ram = True
        return ln

    for row in events.iter_rows(named=True):
        op = row["op"]
        if op in ("read", "write", "ifetch") or row["cmo"] == "dc.zva":
            ev = _event(row)
            if op == "cmo":  # DC ZVA: a write of zeros to the whole line
                base = row["addr"] - row["addr"] % ls
                ev = Event(**{**ev.__dict__, "addr": base, "size": ls})
            for n in rp.lines_of(ev):
                ln = touch(n, row["region_kind"])
                getattr(rp, "write" if op == "cmo" else op)(ev, ln, n)
        elif op == "cmo":
            ev = _event(row)
            effect = cmo_effect(row["cmo"], side=row["side"], stage2=info.stage2)
            if effect.all_lines:
                ram_only = row["cmo"] == "ram.civac"
                for n in sorted(rp.lines):
                    ln = rp.lines[n]
                    if not ram_only or ln.is_ram:
                        rp.maintain(ev, effect, ln, n)
            else:
                size = row["size"] or ls - row["addr"] % ls  # no size: the line holding the address
                for n in range(row["addr"] // ls, (row["addr"] + size - 1) // ls + 1):
                    rp.maintain(ev, effect, touch(n, row["region_kind"]), n)
    df = pl.DataFrame(rp.findings, schema=_findings_schema()) if rp.findings else pl.DataFrame(schema=_findings_schema())
    return conform(df, FINDINGS_SCHEMA, compact=compact).sort("seq", "line", "kind", "cause", maintain_order=True)


def _findings_schema() -> dict[str, pl.DataType]:
    from ..schema import polars_schema

    return polars_schema(FINDINGS_SCHEMA)
