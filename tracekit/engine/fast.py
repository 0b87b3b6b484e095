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

from functools import partial

import numpy as np
import polars as pl

from .. import _cores
from ..errors import UsageError
from ..findings import kind_cause_rank
from ..model import CMO_OPS, OPS, PATHS, SIDES, TraceInfo, cmo_effect, seq_sub_key
from ..schema import FINDINGS_SCHEMA, conform, enum_of_codes, polars_schema

# codes shared with _fast_kernel (kept here so importing this module does not import numba)
READ, WRITE, IFETCH, CMO = 0, 1, 2, 3
_ZVA = 4  # DC ZVA before it is cut (_fast_kernel.ZVA): a write of the whole line
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


def _lookup_tables(stage2: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """By Enum code (255: null): the row code of an operation, of a maintenance operation, the
    path code, and the effect bits of a maintenance operation by (cmo, acting side is the guest)."""
    op = np.full(256, -1, np.int8)
    for name, c in (("read", READ), ("write", WRITE), ("ifetch", IFETCH)):
        op[OPS.index(name)] = c
    cmo = np.full(256, -1, np.int8)
    eff = np.zeros((256, 2), np.uint8)
    for c in _ADDRESS_CMOS:
        cmo[CMO_OPS.index(c)] = _ZVA if c == "dc.zva" else CMO
        if c != "dc.zva":
            eff[CMO_OPS.index(c)] = (_effect_bits(c, False), _effect_bits(c, stage2))
    path = np.full(256, _NO_PATH, np.int8)
    for i, p in enumerate(PATHS):
        path[i] = ("C", "T", "N").index(p)
    return op, cmo, path, eff


def explode(events: pl.DataFrame, info: TraceInfo, *, rows: np.ndarray | None = None,
            ranks: "_Ranks | None" = None) -> Pieces:
    """Cut events (or the ``rows`` subset) into per-line pieces, sorted by (line, pos).

    ``ranks``: the frame's rows are not in (seq, sub) order; a piece's position is its
    event's rank in that order, not its row.

    Two compiled passes over the frame's codes (count, then cut into packed sort keys), a
    radix sort carrying the attributes, and a pass taking the keys apart: no array per event
    in between, no gather at random, and the sort's second buffer becomes the positions'
    array. Each fresh array of 10 M elements costs about 0.1 s of page faults on the
    benchmark machine, more than the pass that fills it.
    """
    from . import _fast_kernel as K

    from ..resolve import PATH_ENUM, REGION_KIND_ENUM, VOCABULARY, _codes, _numbers

    every = rows is None and ranks is None
    rank_of = np.zeros(0, np.int64)
    if ranks is not None:
        rank_of = ranks.of
        rows = np.arange(events.height, dtype=np.int64) if rows is None else rows
        pos = rank_of[rows]
        if len(pos) > 1 and not bool(np.all(pos[1:] > pos[:-1])):
            # the rows' ranks are not ascending (inserted events of both runs): the cut keeps its
            # input's order within a line, so the rows go in rank order
            rows = rows[np.argsort(pos, kind="stable")]
    rows = np.zeros(0, np.int64) if every else np.asarray(rows, np.int64)
    op = _codes(events["op"], VOCABULARY["op"])
    cmo = _codes(events["cmo"], VOCABULARY["cmo"])
    addr, has_addr = _numbers(events["addr"])
    size, has_size = _numbers(events["size"])
    op_lut, cmo_lut, path_lut, eff_lut = _lookup_tables(info.stage2)
    cmo_op = OPS.index("cmo")
    # the rows in two halves, one per core, for a big frame: each half is counted, then cut
    # from its first place on (the first half's pieces first: the same output as one pass)
    n_rows = events.height if every else len(rows)
    halves = _cores.halves(n_rows)
    counted = _cores.on_cores([partial(K.count_pieces, rows, every, lo, hi, op, cmo, addr, has_addr, size, has_size,
                                       cmo_op, op_lut, cmo_lut, info.line_size) for lo, hi in halves])
    total = sum(int(c[0]) for c in counted)
    lmin = np.uint64(min(int(c[1]) for c in counted) if total else 0)  # (as the kernels take it, whatever its size)
    lmax = max(int(c[2]) for c in counted)
    pos_bits = max(1, int(events.height - 1).bit_length())
    line_bits = max(1, int(lmax - lmin).bit_length()) if total else 1
    # one packed integer key per piece, (line - lmin) << pos_bits | position, when the lines are
    # near enough; else the line, and a stable sort by it keeps position order within a line
    packed = line_bits + pos_bits <= 63
    key, attr = np.empty(total, np.uint64), np.empty(total, np.uint64)
    pos = np.empty(0 if packed else total, np.int64)
    side = _codes(events["side"], VOCABULARY["side"])
    path = _codes(events["path"], PATH_ENUM)
    kind = _codes(events["region_kind"], REGION_KIND_ENUM)
    hostc = events["host_cacheable"].fill_null(False).to_numpy()
    starts = np.cumsum([0] + [int(c[0]) for c in counted[:-1]])
    _cores.on_cores([partial(K.cut_pieces, rows, every, lo, hi, int(k0), rank_of, op, cmo, side, path, kind, addr,
                             has_addr, size, has_size, hostc, SIDES.index("guest"), cmo_op, op_lut, cmo_lut, path_lut,
                             eff_lut, info.line_size, lmin, pos_bits, packed, key, attr, pos)
                     for (lo, hi), k0 in zip(halves, starts)])
    del op, cmo, addr, has_addr, size, has_size, side, path, kind, hostc
    if not packed:
        return Pieces(key, pos, attr).take(np.argsort(key, kind="stable"))
    spare_key, spare_attr = np.empty(total, np.uint64), np.empty(total, np.uint64)
    if sort_pairs(key, attr, spare_key, spare_attr, pos_bits, line_bits):
        key, attr, spare_key = spare_key, spare_attr, key
    del spare_attr
    pos = spare_key.view(np.int64)  # (the sort's other buffer)
    K.split_keys(key, pos_bits, lmin, pos)  # the keys become the lines in place
    return Pieces(key, pos, attr)


def global_ops(events: pl.DataFrame, info: TraceInfo, ranks: "_Ranks | None" = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (ascending) of the whole-cache operations that act: ram.civac, IC IALLU(IS),
    discarding DC ISW. ``ranks``: as for ``explode``."""
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
    out = (
        pos.filter(cmo == "ram.civac").to_numpy().astype(np.int64),
        pos.filter(cmo.is_in(["ic.iallu", "ic.ialluis"])).to_numpy().astype(np.int64),
        pos.filter(isw_discards).to_numpy().astype(np.int64),
    )
    return out if ranks is None else tuple(np.sort(ranks(p)) for p in out)


#: Pieces above which the scan is cut at line boundaries and shared between two cores.
_SPLIT_SCAN = 1 << 21
#: Parts a shared scan is cut into. Lines cost unequally (a frame buffer's wide writes several
#: times a boot's words): cut in two, one core waited for the other (10 M mixed events: halves of
#: 0.18 and 0.55 s); in many parts taken in turn, each core takes the next when it is done
#: (the scan of those 11.3 M pieces: 0.51-0.73 s in 2 parts, 0.33-0.36 s in 16, 0.30-0.32 s in 64).
_SCAN_PARTS = 64


def scan(pieces: Pieces, globals_: tuple[np.ndarray, np.ndarray, np.ndarray], n_events: int,
         info: TraceInfo, speculation: str) -> np.ndarray:
    """Run the compiled kernel; (n, 7) int64 rows: piece, kind, cause, other, fix_after, fix_before, fix_agent.

    Lines are independent (the whole-cache timelines are only read), so a big scan is cut at
    line boundaries into parts that two threads take in turn (the kernel releases the GIL);
    the rows come back in line order, as from one scan.
    """
    from . import _precompile
    from ._fast_kernel import scan as kernel

    _precompile.wait()  # a first run's helper compiling this kernel (and the findings') meanwhile
    g_ram, g_ic, g_isw = globals_
    observed = speculation == "observed"

    def part(lo: int, hi: int) -> np.ndarray:
        found = kernel(pieces.line[lo:hi], pieces.pos[lo:hi], pieces.attr[lo:hi], g_ram, g_ic, g_isw, n_events,
                       info.line_size, observed)
        found[:, 0] += lo  # its piece numbers were the slice's
        return found

    n = len(pieces)
    if n < _SPLIT_SCAN or _cores.CORES < 2:
        return part(0, n)
    # each cut moved back to the first piece of the line it falls in (a line is never cut)
    cuts = np.unique(np.searchsorted(pieces.line, pieces.line[np.arange(1, _SCAN_PARTS) * n // _SCAN_PARTS],
                                     side="left"))
    bounds = [0, *(int(c) for c in cuts if 0 < c < n), n]
    return np.concatenate(_cores.on_cores([partial(part, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]))


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
        return stable_order(key.astype(np.uint64), pos_bits + rank_bits + 5)
    return np.lexsort((cause, kind, line, pos))


def stable_order(key: np.ndarray, nbits: int) -> np.ndarray:
    """The stable sort order of uint64 ``key`` (values below 2**nbits), by the pieces' radix
    sort carrying the rows (one compiled sort for both; ``key`` is overwritten)."""
    rows = np.arange(len(key), dtype=np.uint64)
    spare_key, spare_rows = np.empty_like(key), np.empty_like(rows)
    if sort_pairs(key, rows, spare_key, spare_rows, 0, nbits):
        rows = spare_rows
    return rows.view(np.int64)


def sort_pairs(key: np.ndarray, value: np.ndarray, spare_key: np.ndarray, spare_value: np.ndarray,
               shift: int, nbits: int) -> int:
    """Sort ``key`` stably by its bits [shift, shift + nbits), ``value`` along: an LSD radix
    sort, the spares (as long) its second buffers. Returns 1 when the sorted pairs are in the
    spares, else 0.

    ``cut_pieces``'s keys need no more: their low bits, the positions, are ascending in input
    order, which a stable sort of the line bits keeps. Two to three passes of up to 11-bit
    digits (a pass whose digit is the same for every key is skipped), each a count and a
    move (``_fast_kernel.digit_counts``, ``scatter_digit``), cost less than a comparison sort
    of 64-bit keys whatever their order (11.3 M keys: 0.17 s against numpy's 0.8 s on the
    AMD EPYC), and carrying the values along spares a gather at random.

    For 1 M keys and more on two cores, each pass is shared: both halves are counted at once,
    then each moves its pairs to its own places (a digit's places go to the first half's
    pairs, then the second's), so every pass stays stable: 12 M keys in 0.10 s instead of
    0.14-0.17 s, the first touch of the spares' pages shared too. The one-thread passes cost
    a read of the keys more than one kernel counting every pass's digits at once (0.17 s
    against 0.14 s for 12 M keys), which is not worth a third kernel to compile at a first
    run (0.5 s).
    """
    from . import _fast_kernel as K

    n = len(key)
    halves = _cores.halves(n)
    passes = max(1, (nbits + K._DIGIT - 1) // K._DIGIT)
    d = (nbits + passes - 1) // passes
    mask = np.uint64((1 << d) - 1)
    src_k, dst_k, src_v, dst_v = key, spare_key, value, spare_value
    swapped = 0
    for p in range(passes):
        sh = np.uint64(shift + p * d)
        counted = _cores.on_cores([partial(K.digit_counts, src_k, lo, hi, sh, mask) for lo, hi in halves])
        counts = sum(counted[1:], counted[0])
        if counts.max() == n:  # (no keys: every count 0)
            continue  # one digit for all: this pass would move nothing
        places = np.zeros(len(counts), np.int64)
        np.cumsum(counts[:-1], out=places[1:])
        starts = [places]  # each half's first place per digit: after the earlier halves' keys of it
        for c in counted[:-1]:
            starts.append(starts[-1] + c)
        _cores.on_cores([partial(K.scatter_digit, src_k, src_v, dst_k, dst_v, lo, hi, at, sh, mask)
                         for (lo, hi), at in zip(halves, starts)])
        src_k, dst_k = dst_k, src_k
        src_v, dst_v = dst_v, src_v
        swapped ^= 1
    return swapped


class _Source:
    """Where the findings' event columns come from: the frame as given, and (when its rows were
    not in (seq, sub) order) its row at each position of the replay."""

    __slots__ = ("events", "rows")

    def __init__(self, events: pl.DataFrame, rows: np.ndarray | None = None):
        self.events, self.rows = events, rows


def findings_frame(raw: np.ndarray, pieces: Pieces, events: "pl.DataFrame | _Source", info: TraceInfo,
                   mitigation: str, compact: bool = False, *, with_pos: bool = False):
    """findings-v1 rows from the kernel's positions, sorted by (seq, line, kind, cause).

    The sort is numeric (positions follow (seq, sub); kind and cause codes are numbered
    in their string order); the numbers come from one compiled pass in that order
    (``_fast_kernel.finding_columns``), the event columns one select of gathers.
    ``with_pos``: also the rows' event positions, as (frame, positions).
    """
    source = events if isinstance(events, _Source) else _Source(events)
    if raw.shape[0] == 0:
        empty = conform(empty_findings(), FINDINGS_SCHEMA, compact=compact)
        return (empty, np.zeros(0, np.int64)) if with_pos else empty
    from ._fast_kernel import finding_columns

    row = raw[:, 0]
    pos = pieces.pos[row]
    order = _findings_order(pos, pieces.line[row], raw[:, 1], raw[:, 2])
    pos = pos[order]
    rows = source.rows if source.rows is not None else np.zeros(0, np.int64)
    n = len(order)
    out = (*(np.empty(n, np.int64) for _ in range(5)), *(np.empty(n, np.uint64) for _ in range(3)),
           np.empty(n, np.uint8), np.empty(n, np.uint8))
    _cores.on_cores([partial(finding_columns, raw, order, pieces.line, pieces.pos, pieces.attr, rows, info.line_size,
                             lo, hi, out) for lo, hi in _cores.halves(n)])
    at_row, other, fix_agent, fix_after, fix_before, line, addr, size, kind, cause = out
    ev = source.events
    # kinds, causes and fix operations: the compact schema's Enums straight from the kernel's
    # codes (mapped by name); conform makes strings of them only when asked for
    target = polars_schema(FINDINGS_SCHEMA, compact=True)

    def coded(column: str, names: list[str], code: str) -> pl.Expr:
        lut = np.array([target[column].categories.to_list().index(v) for v in names], np.uint8)
        return enum_of_codes(pl.col(code), target[column], lut)

    def event(column: str, row: str) -> pl.Expr:
        return pl.lit(ev[column]).gather(pl.col(row))

    # one select: polars makes the columns at once, on its threads (gathering them one after
    # another took ~0.2 s of 1.8 M findings, on one core)
    df = pl.DataFrame({"at": at_row, "other": other, "fix_agent": fix_agent, "fix_after": fix_after,
                       "fix_before": fix_before, "kind": kind, "cause": cause, "line": line, "addr": addr,
                       "size": size}).select(
        mitigation=pl.lit(mitigation, dtype=target["mitigation"]),
        kind=coded("kind", list(_KINDS), "kind"),
        cause=coded("cause", list(_CAUSES), "cause"),
        seq=event("seq", "at"),
        agent=event("agent", "at"),
        addr="addr",
        size="size",
        line="line",
        other_seq=event("seq", "other"),
        other_agent=event("agent", "other"),
        fix_op=coded("fix_op", [_FIX_OPS[c] for c in _CAUSES], "cause"),
        fix_agent=event("agent", "fix_agent"),
        fix_after_seq=event("seq", "fix_after"),
        fix_before_seq=event("seq", "fix_before"),
        region=event("region", "at").cast(target["region"]) if compact else event("region", "at"),
        phase=event("phase", "at"),
        src=event("src", "at"),
        src_line=event("src_line", "at"),
        src_offset=event("src_offset", "at"),
    )
    out = conform(df, FINDINGS_SCHEMA, compact=compact)
    return (out, pos) if with_pos else out


#: The columns the replay reads for every event (the findings' other columns are gathered
#: only at the findings' rows).
_REPLAY_COLUMNS = ("seq", "sub", "op", "cmo", "side", "region_kind", "path", "addr", "size", "host_cacheable")


class _Ranks:
    """Where each row of a frame stands in (seq, sub) order, for a frame replayed in its own
    row order: the engine's positions are ranks, the frame is read by row."""

    __slots__ = ("rows", "of")

    def __init__(self, rows: np.ndarray):
        self.rows = rows  # the row at each rank
        self.of = np.empty_like(rows)
        self.of[rows] = np.arange(len(rows), dtype=rows.dtype)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self.of[rows]


def _in_order(events: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray | None, _Ranks | None]:
    """The frame to replay, the rows of ``events`` in (seq, sub) order (None: the rows are in
    that order), and the rank of each row when the frame is replayed in its own row order.

    The contract allows rows in any order. What ``apply_mitigation(..., ordered=False)``
    gives (a frame in order, then the events the last mitigation inserted, in order) is
    replayed as it is: its recorded events are still in seq order, so everything the
    replay derives from rows holds, and positions become ranks (``_Ranks``). Any other
    order: the columns the replay reads are put in order (a stable sort of one packed
    key). Either way the findings' columns are gathered through ``rows``.
    """
    if "sub" not in events.columns:
        events = events.with_columns(sub=pl.lit(0, dtype=pl.Int32))
    read = events.select(_REPLAY_COLUMNS)
    if any(n > 1 for n in read.n_chunks("all")):
        # a frame in pieces (a mitigation appended its events): the replay reads its columns as
        # numpy arrays, several times each, and every read of a column in pieces copies it
        events = read.rechunk()
    from ._fast_kernel import ordered, two_run_order

    seq = events["seq"].to_numpy()
    sub = events["sub"].to_numpy()
    if ordered(seq, sub):
        return events, None, None
    rows = two_run_order(seq, sub)  # what apply_mitigation(..., ordered=False) gives: one merge
    if len(rows):
        return events, rows, _Ranks(rows)
    if int(seq.max()) < 1 << 32:
        rows = np.argsort(seq_sub_key(seq, sub), kind="stable")
    else:
        rows = np.lexsort((sub, seq))  # stable too
    return events.select(_REPLAY_COLUMNS)[rows], rows, None


class _Layout:
    """The recorded events' pieces in (line, seq) order, kept between mitigations of one trace.

    ``baseline``: when the replay that made the layout inserted nothing, its findings and
    whole-cache operations, so that a later mitigation is replayed only on the lines it
    changes (see ``replay``).
    """

    __slots__ = ("key", "seq", "line", "attr", "baseline", "pos", "frame_seq", "frame_types")

    def __init__(self, key: tuple, seq: np.ndarray, line: np.ndarray, attr: np.ndarray):
        self.key, self.seq, self.line, self.attr = key, seq, line, attr
        self.baseline: _Baseline | None = None
        # when the frame that made the layout had no inserted events: the pieces' rows in it, its
        # seq column and its events' piece types (_piece_types), so that a frame with the same rows
        # (a mitigation that only retypes) re-reads its attributes without looking every piece's
        # row up again, and a mitigated frame finds the events it retyped
        self.pos: np.ndarray | None = None
        self.frame_seq: np.ndarray | None = None
        self.frame_types: np.ndarray | None = None


class _Baseline:
    """The findings of the replay that made a layout, and what else they depended on.

    ``key``, ``line`` and ``kc``: the findings' order as integers ((seq, sub) packed, line,
    kind and cause ranks), to merge them with a later replay's fresh findings.
    """

    __slots__ = ("findings", "globals", "speculation", "compact", "token", "key", "line", "kc")

    def __init__(self, findings: pl.DataFrame, globals_: tuple, speculation: str, compact: bool, token: object):
        self.findings, self.globals, self.speculation, self.compact = findings, globals_, speculation, compact
        self.token = token  # the caller's same_trace: the layout's key does not cover agents, sources...
        seq = findings["seq"].to_numpy()
        self.key = seq_sub_key(seq, np.zeros(len(seq), np.int32))
        self.line = findings["line"].to_numpy()
        self.kc = kind_cause_rank(findings)


_LAST: _Layout | None = None


def clear_cache() -> None:
    """Forget the kept layout (it is also replaced by the next trace replayed)."""
    global _LAST
    _LAST = None


def _piece_types(events: pl.DataFrame) -> np.ndarray:
    """Per event, what of its pieces' attributes a mitigation may change: path code | host-cacheable << 2."""
    from ..resolve import PATH_ENUM, _codes

    path = _lookup_tables(False)[2][_codes(events["path"], PATH_ENUM)].astype(np.uint8)
    return path | (events["host_cacheable"].fill_null(False).to_numpy().astype(np.uint8) << np.uint8(2))


def _kept_layout(events: pl.DataFrame, info: TraceInfo, reuse: bool) -> tuple["_Layout | None", tuple | None]:
    """The kept layout, if it fits this frame's recorded events, and the frame's layout key.

    A mitigation leaves the recorded events' addresses alone: it inserts events (``sub``
    != 0), retypes accesses (``path``), may drop the host's cacheable alias
    (``host_cacheable``) or remove set/way operations. So the recorded events' pieces and
    their (line, seq) order are computed once per trace and kept. The kept layout is used
    only when the recorded events with an address are the same (count and checksums of
    seq, addr, size, op, cmo, side and region kind).
    """
    global _LAST
    from . import _fast_kernel as K

    from ..resolve import REGION_KIND_ENUM, VOCABULARY, _codes, _numbers

    if not reuse:
        _LAST = None  # a layout kept for another trace is only memory now
        return None, None
    # what else fixes a recorded event's pieces: operation, side (stage-2 upgrade), region kind
    count, total, xor = K.recorded_checksum(
        events["seq"].to_numpy(), events["sub"].to_numpy(),
        *_numbers(events["addr"]), *_numbers(events["size"]), _codes(events["op"], VOCABULARY["op"]),
        _codes(events["cmo"], VOCABULARY["cmo"]), _codes(events["side"], VOCABULARY["side"]),
        _codes(events["region_kind"], REGION_KIND_ENUM))
    key = (info.line_size, info.stage2, int(count), int(total), int(xor))
    return (_LAST if _LAST is not None and _LAST.key == key else None), key


def _kept_pieces(events: pl.DataFrame, layout: _Layout, which: np.ndarray | None = None,
                 ranks: _Ranks | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions in this frame of the kept layout's pieces (all, or ``which``), and their
    attributes with this frame's path and host-cacheable bit.

    When the frame's recorded events are those of the frame that made the layout, or those
    less some without pieces, a piece's position is the row of its recorded event among this
    frame's recorded rows: one gather (and a shift past the removed rows). Otherwise each
    piece's event is looked up by seq.
    """
    from . import _fast_kernel as K

    from ..resolve import PATH_ENUM, _codes

    seq = events["seq"].to_numpy()
    sub = events["sub"].to_numpy()
    path_code = _codes(events["path"], PATH_ENUM)
    hostc = events["host_cacheable"].fill_null(False).to_numpy()
    path_lut = _lookup_tables(False)[2]
    attr = layout.attr if which is None else layout.attr[which]
    if layout.frame_seq is not None:
        n_rec = len(layout.frame_seq)
        is_rec = sub == 0
        n_here = int(np.count_nonzero(is_rec))
        # the recorded rows first and the inserted ones appended (apply_mitigation's
        # ordered=False) are a slice: no lookup of the rows, no gather through them
        appended = bool(is_rec[:n_here].all())
        recorded = slice(0, n_here) if appended else np.flatnonzero(is_rec)
        rec_seq = seq[recorded]
        # the layout frame's recorded rows, or those less some (kvm-cache-toggle removes the
        # set/way operations): rows without pieces (the layout's checksum covers every event with
        # an address), so each piece's row is its row in the layout's frame less the removed rows
        # before it, no lookup by seq
        same, gone = K.removed_rows(layout.frame_seq, rec_seq) if len(rec_seq) <= n_rec else (False, None)
        if same:
            pos = layout.pos if which is None else layout.pos[which]
            if len(gone):
                pos = K.shifted_past(pos, gone)
            if not appended and len(recorded) != len(seq):  # rows were inserted among them: the recorded ones moved
                pos = recorded[pos]
            attr = K.retyped(pos, attr, path_code, path_lut, hostc)
            return (pos if ranks is None else ranks(pos)), attr
    pos, attr = K.relayout(seq.astype(np.uint64, copy=False), sub, layout.seq if which is None else layout.seq[which],
                           attr, path_code, path_lut, hostc)
    return (pos if ranks is None else ranks(pos)), attr


def _pieces(events: pl.DataFrame, info: TraceInfo, layout: "_Layout | None", key: tuple | None,
            reuse: bool, ranks: _Ranks | None = None, ins: Pieces | None = None) -> tuple[Pieces, "_Layout | None"]:
    """The per-line pieces of a resolved (and mitigated) frame in (line, pos) order, and the
    layout this call made (None: it used the kept one, or keeps none).

    With the kept layout, a mitigated frame only re-reads path and host-cacheable for the
    recorded events' pieces, cuts its own inserted events (``ins``: already cut), and merges.
    """
    global _LAST
    from . import _fast_kernel as K

    seq = events["seq"].to_numpy().astype(np.uint64, copy=False)
    sub = events["sub"].to_numpy()
    inserted = np.flatnonzero(sub != 0)
    made = None
    if layout is not None:
        rec = Pieces(layout.line, *_kept_pieces(events, layout, ranks=ranks))
    else:
        # (the recorded rows' numbers only when some rows are not recorded: 80 MB for 10 M events)
        rec = explode(events, info, rows=np.flatnonzero(sub == 0), ranks=ranks) if len(inserted) \
            else explode(events, info)
        if reuse:
            made = _LAST = _Layout(key, seq[rec.pos if ranks is None else ranks.rows[rec.pos]], rec.line, rec.attr)
            if not len(inserted):
                made.pos, made.frame_seq, made.frame_types = rec.pos, seq, _piece_types(events)
    if not len(inserted):
        return rec, made
    if ins is None:
        ins = explode(events, info, rows=inserted, ranks=ranks)
    return Pieces(*K.merge(rec.line, rec.pos, rec.attr, ins.line, ins.pos, ins.attr)), made


def replay(events: pl.DataFrame, info: TraceInfo, *, mitigation: str = "none",
           speculation: str = "architectural", compact: bool = False, reuse: bool = True,
           same_trace: object | None = None) -> pl.DataFrame:
    """Findings of a resolved (and mitigated) frame; identical to ``reference.replay``.

    ``compact``: string columns as Enum/Categorical (``schema.polars_schema``), as `analyze` keeps them.
    ``reuse``: keep (and use) the recorded events' per-line layout for the next mitigation of the
    same trace; a single replay need not pay the memory.
    ``same_trace``: a token the caller passes with every frame of one resolved trace (`analyze`
    makes one per call). With it, the findings of a replay that inserted nothing are kept, and
    later frames with the same token are scanned only on the lines where they differ.
    """
    if speculation not in ("architectural", "observed"):
        raise UsageError(f"--speculation: expected architectural or observed, found {speculation!r}")
    wide = events
    events, rows, ranks = _in_order(events)
    layout, key = _kept_layout(events, info, reuse)
    globals_ = global_ops(events, info, ranks)
    if same_trace is not None and events.height and int(events["seq"].max()) >= 1 << 32:
        same_trace = None  # (seq, sub) is packed in 64 bits below: 4 G events and more replay whole
    base = layout.baseline if layout is not None and same_trace is not None else None
    ins = None  # the inserted events' pieces, when a replay of the changed lines cut them and gave up
    if base is not None and base.token is same_trace and base.speculation == speculation \
            and base.compact == compact:
        seq_sub = _SeqSub(events, ranks)
        if all(np.array_equal(seq_sub[g], b) for g, b in zip(globals_, base.globals)):
            found, ins = _replay_changed_lines(events, info, layout, globals_, mitigation, speculation, compact,
                                               base, seq_sub, _Source(wide, rows), ranks)
            if found is not None:
                return found
    pieces, made = _pieces(events, info, layout, key, reuse, ranks, ins)
    raw = scan(pieces, globals_, events.height, info, speculation)
    found = findings_frame(raw, pieces, _Source(wide, rows), info, mitigation, compact)
    if same_trace is not None and made is not None and made.frame_seq is not None:
        # this replay made the layout and inserted nothing: later mitigations of the trace are
        # replayed against it only on the lines where they differ
        seq_sub = _SeqSub(events, ranks)
        made.baseline = _Baseline(found, tuple(seq_sub[g] for g in globals_), speculation, compact, same_trace)
    return found


#: Above this share of the pieces on changed lines, a mitigation is replayed whole.
_MOST_CHANGED = 0.6


class _SeqSub:
    """(seq, sub) of rows as one integer: the identity of an event across frames of one trace.

    Computed only at the rows asked for (whole-cache operations, findings), not for every event.
    """

    __slots__ = ("seq", "sub", "ranks")

    def __init__(self, events: pl.DataFrame, ranks: _Ranks | None = None):
        self.seq = events["seq"].to_numpy()
        self.sub = events["sub"].to_numpy()
        self.ranks = ranks  # when the frame is replayed in its own row order

    def __getitem__(self, pos: np.ndarray) -> np.ndarray:
        rows = pos if self.ranks is None else self.ranks.rows[pos]
        return seq_sub_key(self.seq[rows], self.sub[rows])


def _replay_changed_lines(events: pl.DataFrame, info: TraceInfo, layout: _Layout, globals_: tuple,
                          mitigation: str, speculation: str, compact: bool, base: _Baseline,
                          seq_sub: _SeqSub, source: _Source, ranks: _Ranks | None = None
                          ) -> tuple[pl.DataFrame | None, Pieces | None]:
    """Findings of a mitigated frame from the baseline's on the lines it leaves alone.

    Every hazard is local to one line: given the same whole-cache operations (the same
    events, by seq and sub), a line whose pieces are the baseline's (same recorded events
    in the same order, same attributes, nothing inserted) has the baseline's findings on
    it, event for event. The changed lines are those of the recorded events whose path or
    host-cacheable bit changed and of the inserted events; only their pieces are laid out
    and scanned; the rest are the baseline's rows relabelled, and both are merged in the
    engine's order (seq, sub, line, kind, cause).
    None: too much changed to be worth it (the caller replays everything, with the inserted
    events' pieces returned beside it when they were cut).
    """
    from . import _fast_kernel as K

    seq = events["seq"].to_numpy().astype(np.uint64, copy=False)
    sub = events["sub"].to_numpy()
    changed, n_changed = K.changed_recorded(seq, sub, _piece_types(events), layout.frame_seq, layout.frame_types)
    if n_changed > _MOST_CHANGED * len(layout.frame_seq):
        return None, None  # most events retyped (mair-trap on a guest's whole RAM): not worth it
    inserted = np.flatnonzero(sub != 0)
    ins = explode(events, info, rows=inserted, ranks=ranks) if len(inserted) else None
    # the lines of the changed events' pieces, from the layout (its pieces' rows are the baseline's)
    touched = K.union_lines(K.marked_lines(layout.line, layout.pos, changed) if n_changed else np.zeros(0, np.uint64),
                            ins.line if ins is not None else np.zeros(0, np.uint64))  # ascending, distinct
    kept = np.flatnonzero(K.on_lines(layout.line, touched))
    n_ins = len(ins) if ins is not None else 0
    if len(kept) + n_ins > _MOST_CHANGED * (len(layout.line) + n_ins):
        return None, ins
    part = Pieces(layout.line[kept], *_kept_pieces(events, layout, kept, ranks))
    if ins is not None:
        part = Pieces(*K.merge(part.line, part.pos, part.attr, ins.line, ins.pos, ins.attr))
    raw = scan(part, globals_, events.height, info, speculation)
    fresh, pos = findings_frame(raw, part, source, info, mitigation, compact, with_pos=True)
    old = base.findings.with_columns(pl.lit(mitigation).cast(base.findings.schema["mitigation"]).alias("mitigation"))
    # the baseline's rows on the changed lines are replaced by the fresh ones
    touched_at = touched * np.uint64(info.line_size)
    i = np.minimum(np.searchsorted(touched_at, base.line), max(len(touched_at) - 1, 0))
    keep_old = touched_at[i] != base.line if len(touched_at) else np.ones(len(base.line), np.bool_)
    order = K.merge_findings(base.key, base.line, base.kc, keep_old, seq_sub[pos],
                             fresh["line"].to_numpy(), kind_cause_rank(fresh))
    return pl.concat([old, fresh], how="vertical", rechunk=False)[order], ins
