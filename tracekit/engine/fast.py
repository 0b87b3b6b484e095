"""The fast engine: the reference engine's findings from one compiled pass over (line, position).

Hazards are per line, so the resolved events are cut into per-line pieces
(vectorised: an access or an address maintenance covering k lines gives k
pieces), the pieces are put in (line, position) order with one integer sort,
and one numba loop (``_fast_kernel.scan``) walks each line's pieces with a few
scalars and per-byte arrays of the line size. Whole-cache operations stay on a
small global timeline that each line consults by binary search. The findings
come back as positions and are turned into findings-v1 with polars gathers.

The per-line order of the recorded events does not change between mitigations
(they insert maintenance and retype accesses): the last layout is kept and a
mitigated frame re-uses it, merging only its inserted pieces in.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..errors import UsageError
from ..model import CMO_OPS, TraceInfo, cmo_effect
from ..schema import FINDINGS_SCHEMA, conform, polars_schema

# codes shared with _fast_kernel (kept here so importing this module does not import numba)
READ, WRITE, IFETCH, CMO = 0, 1, 2, 3
_ZVA = 4  # DC ZVA before explode: a write of the whole line
_NO_PATH = 3
E_CLEAN_POC, E_CLEAN_POU, E_INVAL, E_DISCARD, E_IC = 1, 2, 4, 8, 16
_KINDS = ("lost-write", "stale-ifetch", "stale-read")  # string order = code order
_CAUSES = ("clobbered-by-writeback", "dirty-not-cleaned", "discarded-by-invalidate",
           "icache-not-invalidated", "stale-line-not-invalidated")
_FIX_OPS = {"clobbered-by-writeback": "clean", "dirty-not-cleaned": "clean",
            "discarded-by-invalidate": "clean+invalidate", "icache-not-invalidated": "ic-invalidate",
            "stale-line-not-invalidated": "invalidate"}
_GLOBAL_CMOS = ("ram.civac", "ic.iallu", "ic.ialluis", "dc.isw", "dc.csw", "dc.cisw")
_ADDRESS_CMOS = tuple(c for c in CMO_OPS if c not in _GLOBAL_CMOS)


def _effect_bits(cmo: str, upgraded: bool) -> int:
    e = cmo_effect(cmo, side="guest" if upgraded else "host", stage2=upgraded)
    return ((E_CLEAN_POC if e.clean_poc else 0) | (E_CLEAN_POU if e.clean_pou else 0)
            | (E_INVAL if e.invalidate else 0) | (E_DISCARD if e.may_discard else 0)
            | (E_IC if e.ic_invalidate else 0))


class Pieces:
    """Per-line pieces of the events, sorted by (line, pos): line, position, packed attributes."""

    __slots__ = ("line", "pos", "attr")

    def __init__(self, line: np.ndarray, pos: np.ndarray, attr: np.ndarray):
        self.line, self.pos, self.attr = line, pos, attr

    def __len__(self) -> int:
        return len(self.line)

    def take(self, order: np.ndarray) -> "Pieces":
        return Pieces(self.line[order], self.pos[order], self.attr[order])

    def lo_hi(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = self.attr[rows]
        return (a & np.uint64(0x1FFF)).astype(np.uint64), ((a >> np.uint64(13)) & np.uint64(0x1FFF)).astype(np.uint64)


def _event_codes(events: pl.DataFrame, info: TraceInfo, rows: np.ndarray | None = None) -> pl.DataFrame:
    """Per event acting on lines by address: pos, code, addr, size, zva, path, effect bits, host-cacheable, RAM.

    String columns are compared, never hashed: comparisons of short strings are the cheapest
    thing polars does on them. The effect bits are computed on the (few) maintenance rows only.
    """
    op = pl.col("op")
    cmo = pl.col("cmo")
    path = pl.col("path")
    code = (
        pl.when(op == "read").then(READ)
        .when(op == "write").then(WRITE)
        .when(op == "ifetch").then(IFETCH)
        .when(op == "cmo").then(pl.when(cmo == "dc.zva").then(_ZVA).when(cmo.is_in(_ADDRESS_CMOS)).then(CMO))
        .otherwise(None).cast(pl.Int8)
    )
    if rows is not None:  # a subset of the frame (a mitigation's inserted events), keeping positions
        events = events[rows].with_columns(_pos=pl.Series(rows, dtype=pl.Int64))
        position = pl.col("_pos")
    else:
        position = pl.int_range(pl.len(), dtype=pl.Int64)
    ev = (
        events.lazy()
        .select(
            pos=position,
            code=code,
            addr=pl.col("addr"),
            size=pl.col("size"),
            path=pl.when(path == "C").then(0).when(path == "T").then(1).when(path == "N").then(2)
                 .otherwise(_NO_PATH).cast(pl.Int8),
            hostc=pl.col("host_cacheable").fill_null(False),
            ram=(pl.col("region_kind") == "ram").fill_null(False),
        )
        .filter(pl.col("code").is_not_null() & pl.col("addr").is_not_null())
        .collect()
    )
    # effect bits of the maintenance rows (a guest's DC IVAC acts as CIVAC under stage 2): the
    # maintenance rows are a subset of ev's rows in the same order, so their bits scatter by mask
    cm = (
        events.lazy()
        .select(cmo=cmo, up=(pl.col("side") == "guest") & pl.lit(info.stage2),
                keep=(op == "cmo") & cmo.is_in(_ADDRESS_CMOS) & (cmo != "dc.zva") & pl.col("addr").is_not_null())
        .filter("keep")
        .collect()
    )
    eff = np.zeros(ev.height, np.uint8)
    if cm.height:
        table = {(c, u): _effect_bits(c, u) for c in _ADDRESS_CMOS for u in (False, True)}
        bits = pl.DataFrame([{"cmo": c, "up": u, "eff": b} for (c, u), b in table.items()],
                            schema={"cmo": pl.String, "up": pl.Boolean, "eff": pl.UInt8})
        cm = cm.with_columns(pl.col("cmo").cast(pl.String))  # the resolved frame holds an Enum
        cm_eff = cm.join(bits, on=["cmo", "up"], how="left", maintain_order="left")["eff"].to_numpy()
        eff[ev["code"].to_numpy() == CMO] = cm_eff
    return ev.with_columns(eff=pl.Series(eff))


def explode(events: pl.DataFrame, info: TraceInfo, *, rows: np.ndarray | None = None) -> Pieces:
    """Cut events (or the ``rows`` subset) into per-line pieces, sorted by (line, pos)."""
    from . import _fast_kernel as K

    ev = _event_codes(events, info, rows)
    code = ev["code"].to_numpy()
    zva = code == _ZVA
    code = np.where(zva, WRITE, code).astype(np.int8)
    line, pos, attr = K.explode(
        ev["pos"].to_numpy(), ev["addr"].to_numpy().astype(np.uint64, copy=False),
        ev["size"].fill_null(0).to_numpy().astype(np.uint64, copy=False), zva, code,
        ev["path"].to_numpy(), ev["eff"].to_numpy(), ev["hostc"].to_numpy(), ev["ram"].to_numpy(),
        info.line_size,
    )
    n = len(line)
    if n == 0:
        return Pieces(line, pos, attr)
    lmin = line.min()
    bits = max(1, int(n - 1).bit_length())
    if int(line.max() - lmin) < (1 << (63 - bits)):
        # one packed integer key per piece: (line - min) << bits | index, unique, sorted in place
        key = K.packed_order(line, lmin, bits)
        key.sort()
        return Pieces(*K.sorted_pieces(key, bits, lmin, pos, attr))
    # lines too far apart to pack: a stable sort on the line keeps position order within a line
    return Pieces(line, pos, attr).take(np.argsort(line, kind="stable"))


def global_ops(events: pl.DataFrame, info: TraceInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the whole-cache operations that act: ram.civac, IC IALLU(IS), discarding DC ISW."""
    g = (
        events.lazy()
        .select(pos=pl.int_range(pl.len(), dtype=pl.Int64), op=pl.col("op"), cmo=pl.col("cmo"),
                side=pl.col("side"))
        .filter((pl.col("op") == "cmo") & pl.col("cmo").is_in(["ram.civac", "ic.iallu", "ic.ialluis", "dc.isw"]))
        .collect()
    )
    cmo = g["cmo"]
    pos = g["pos"]
    isw_discards = (cmo == "dc.isw") & ~((g["side"] == "guest") & info.stage2)
    return (
        pos.filter(cmo == "ram.civac").to_numpy().astype(np.int64),
        pos.filter(cmo.is_in(["ic.iallu", "ic.ialluis"])).to_numpy().astype(np.int64),
        pos.filter(isw_discards).to_numpy().astype(np.int64),
    )


def scan(pieces: Pieces, globals_: tuple[np.ndarray, np.ndarray, np.ndarray], n_events: int,
         info: TraceInfo, speculation: str) -> np.ndarray:
    """Run the compiled kernel; (n, 7) int64 rows: piece, kind, cause, other, fix_after, fix_before, fix_agent."""
    from ._fast_kernel import scan as kernel

    g_ram, g_ic, g_isw = globals_
    return kernel(pieces.line, pieces.pos, pieces.attr, g_ram, g_ic, g_isw, n_events, info.line_size,
                  speculation == "observed")


def empty_findings() -> pl.DataFrame:
    return pl.DataFrame(schema=polars_schema(FINDINGS_SCHEMA))


def _findings_order(pos: np.ndarray, line: np.ndarray, kind: np.ndarray, cause: np.ndarray) -> np.ndarray:
    """Permutation to (pos, line, kind, cause) order.

    The kernel emits findings line by line in ascending line order, so the rank of a
    finding's line is a running count; one packed integer key then sorts them.
    """
    n = len(pos)
    rank = np.zeros(n, np.int64)
    if n > 1:
        np.cumsum(line[1:] != line[:-1], out=rank[1:])
    rank_bits = max(1, int(rank[-1]).bit_length())
    pos_bits = max(1, int(pos.max()).bit_length())
    if pos_bits + rank_bits + 5 <= 63:
        key = (pos << (rank_bits + 5)) | (rank << 5) | (kind * 8 + cause)
        return np.argsort(key)
    return np.lexsort((cause, kind, line, pos))


def findings_frame(raw: np.ndarray, pieces: Pieces, events: pl.DataFrame, info: TraceInfo,
                   mitigation: str) -> pl.DataFrame:
    """findings-v1 rows from the kernel's positions, sorted by (seq, line, kind, cause).

    The sort is numeric (positions follow (seq, sub); kind and cause codes are numbered
    in their string order), then every column is one gather.
    """
    if raw.shape[0] == 0:
        return empty_findings()
    row = raw[:, 0]
    pos = pieces.pos[row]
    line = pieces.line[row]
    order = _findings_order(pos, line, raw[:, 1], raw[:, 2])
    raw = raw[order]
    row = row[order]
    pos = pos[order]
    ls = np.uint64(info.line_size)
    line = line[order] * ls
    lo, hi = pieces.lo_hi(row)
    size = hi - lo
    ev = events.select("seq", "agent", "region", "phase", "src", "src_line", "src_offset")
    at = ev[pos]
    seq = ev["seq"]
    agent = ev["agent"]
    cause = pl.Series("cause", _CAUSES, dtype=pl.String).gather(raw[:, 2])
    df = pl.DataFrame({
        "mitigation": pl.repeat(mitigation, len(pos), dtype=pl.String, eager=True),
        "kind": pl.Series("kind", _KINDS, dtype=pl.String).gather(raw[:, 1]),
        "cause": cause,
        "seq": at["seq"],
        "agent": at["agent"],
        "addr": line + lo,
        "size": size,
        "line": line,
        "other_seq": seq.gather(raw[:, 3]),
        "other_agent": agent.gather(raw[:, 3]),
        "fix_op": pl.Series("fix_op", [_FIX_OPS[c] for c in _CAUSES], dtype=pl.String).gather(raw[:, 2]),
        "fix_agent": agent.gather(raw[:, 6]),
        "fix_after_seq": seq.gather(raw[:, 4]),
        "fix_before_seq": seq.gather(raw[:, 5]),
        "region": at["region"],
        "phase": at["phase"],
        "src": at["src"],
        "src_line": at["src_line"],
        "src_offset": at["src_offset"],
    })
    return conform(df, FINDINGS_SCHEMA)


def _sorted(events: pl.DataFrame) -> pl.DataFrame:
    """The frame in (seq, sub) order (the contract; checked cheaply, sorted only when needed)."""
    if "sub" not in events.columns:
        events = events.with_columns(sub=pl.lit(0, dtype=pl.Int32))
    key = events.select(pl.col("seq").cast(pl.Int64), pl.col("sub").cast(pl.Int64))
    ok = key.select(((pl.col("seq").diff() > 0) | ((pl.col("seq").diff() == 0) & (pl.col("sub").diff() > 0)))
                    .fill_null(True).all()).item()
    return events if ok else events.sort("seq", "sub", maintain_order=True)


class _Layout:
    """The recorded events' pieces in (line, seq) order, kept between mitigations of one trace."""

    __slots__ = ("key", "seq", "line", "attr")

    def __init__(self, key: tuple, seq: np.ndarray, line: np.ndarray, attr: np.ndarray):
        self.key, self.seq, self.line, self.attr = key, seq, line, attr


_LAST: _Layout | None = None


def clear_cache() -> None:
    """Forget the kept layout (it is also replaced by the next trace replayed)."""
    global _LAST
    _LAST = None


def _path_codes(events: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    path = pl.col("path")
    df = events.select(
        path=pl.when(path == "C").then(0).when(path == "T").then(1).when(path == "N").then(2)
        .otherwise(_NO_PATH).cast(pl.Int8),
        hostc=pl.col("host_cacheable").fill_null(False),
    )
    return df["path"].to_numpy(), df["hostc"].to_numpy()


def pieces_of(events: pl.DataFrame, info: TraceInfo, *, reuse: bool = True) -> Pieces:
    """The per-line pieces of a resolved (and mitigated) frame in (line, pos) order.

    A mitigation leaves the recorded events' addresses alone: it inserts events (``sub``
    != 0), retypes accesses (``path``), may drop the host's cacheable alias
    (``host_cacheable``) or remove set/way operations. So the recorded events' pieces and
    their (line, seq) order are computed once per trace and kept; a mitigated frame only
    re-reads path and host-cacheable for them, cuts its own inserted events, and merges.
    The kept layout is used only when the recorded events with an address are the same
    (count and checksums of seq, addr, size, op, cmo, side and region kind).
    """
    global _LAST
    from . import _fast_kernel as K

    cols = events.select(
        pl.col("seq").cast(pl.UInt64), pl.col("sub").cast(pl.Int64),
        addr=pl.col("addr").fill_null(0).cast(pl.UInt64), size=pl.col("size").fill_null(0).cast(pl.UInt64),
        has_addr=pl.col("addr").is_not_null(),
        # what else fixes a recorded event's pieces: operation, side (stage-2 upgrade), region kind
        kind=pl.col("op").hash(11) ^ pl.col("cmo").hash(12) ^ pl.col("side").hash(13)
        ^ pl.col("region_kind").hash(14),
    )
    seq = cols["seq"].to_numpy()
    sub = cols["sub"].to_numpy()
    recorded = sub == 0
    count, total, xor = K.recorded_checksum(seq, sub, cols["addr"].to_numpy(), cols["size"].to_numpy(),
                                            cols["has_addr"].to_numpy(), cols["kind"].to_numpy())
    key = (info.line_size, info.stage2, int(count), int(total), int(xor))
    inserted = np.flatnonzero(~recorded)
    layout = _LAST if reuse else None
    if layout is not None and layout.key == key:
        rec_rows = np.flatnonzero(recorded)
        rec_seq = seq[rec_rows]
        top = int(rec_seq[-1]) if len(rec_seq) else 0
        if top < 4 * len(rec_seq) + 1024:
            table = np.empty(top + 1, np.int64)  # every seq looked up is present (the checksums match)
            table[rec_seq] = rec_rows
            pos = table[layout.seq]
        else:
            pos = rec_rows[np.searchsorted(rec_seq, layout.seq)]
        path, hostc = _path_codes(events)
        rec = Pieces(layout.line, pos, K.retype(layout.attr, pos, path, hostc))
    else:
        if len(inserted):
            rec = explode(events, info, rows=np.flatnonzero(recorded))
        else:
            rec = explode(events, info)
        if reuse:
            _LAST = _Layout(key, seq[rec.pos], rec.line, rec.attr)
    if not len(inserted):
        return rec
    ins = explode(events, info, rows=inserted)
    return Pieces(*K.merge(rec.line, rec.pos, rec.attr, ins.line, ins.pos, ins.attr))


def replay(events: pl.DataFrame, info: TraceInfo, *, mitigation: str = "none",
           speculation: str = "architectural") -> pl.DataFrame:
    """Findings of a resolved (and mitigated) frame; identical to ``reference.replay``."""
    if speculation not in ("architectural", "observed"):
        raise UsageError(f"--speculation: expected architectural or observed, found {speculation!r}")
    events = _sorted(events)
    pieces = pieces_of(events, info)
    raw = scan(pieces, global_ops(events, info), events.height, info, speculation)
    return findings_frame(raw, pieces, events, info, mitigation)
