"""Analyse a trace larger than memory: partition it on the cache line, replay each part.

Hazards are per line, so lines can be replayed apart. What is not per line is
small and is given to every part: the per-vCPU SCTLR_EL1/MAIR_EL1 timeline
(``sysreg`` events, which ``resolve`` needs), the whole-cache maintenance
(set/way, IC IALLU(IS), whole-RAM), and the trace's last event (mitigations
anchor end-of-trace insertions after it).

1. A first pass over four columns counts the events of each block of lines (a
   line; a 4 KiB page when ``kvm-fault-clean`` is asked for, since it acts on
   whole pages) and assigns blocks to parts so that parts come out even (hot
   lines spread: the heaviest blocks each go to the least loaded part).
2. A streaming pass sends every line event (access, maintenance by address,
   DC ZVA) to the part(s) owning the blocks it touches (Arrow IPC files: cheap to
   keep hundreds open), the global events to a small file of their own.
3. Each part (+ the global events) is resolved, mitigated and replayed like a
   whole trace; only findings on lines the part owns are kept, written to a
   temporary Parquet file per part and mitigation.
4. The output is merged by ranges of ``seq``: each part's findings are sorted by
   seq, so a range is read from every part with predicate push-down, sorted and
   appended, mitigation by mitigation, as ``analyze`` orders them.

The findings are those of the whole trace, and so are the costs: each part counts what it
owns (``_PartCost``: a retyped access or an inserted operation by its first line, a line where
it lies, a whole-RAM clean's lines where they lie), and what the global events cost in every
part is taken out once per part but one; traps counted per page (kvm-fault-clean) count the
part's own pages (``MitigationContext.owns``). A mitigation that merges neighbouring lines
into one operation (guest-boot-inval's DC IVAC runs) sees only the pieces of a run its part
holds: the parts record where their pieces meet lines of other parts (``_RunEdges``), and the
pieces that continue another part's are taken out of the count at the end.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ._arrays import distinct, sum_by_key
from .errors import UsageError
from .model import TraceInfo
from .schema import FINDINGS_SCHEMA, TRACE_SCHEMA, conform, read_trace_info, reading, write_table

if TYPE_CHECKING:
    from .summary import SummaryTally

#: Memory one event costs while a part is resolved, mitigated and replayed (parts are
#: sized with it; 100 M events at --memory-budget 1G peaked at 1.29 GB, benchmarks/README.md).
BYTES_PER_EVENT = 700
#: A whole trace in memory, per event: the baseline alone (`none` replays the resolved
#: frame as it is, and a mitigation that only retypes, ``Mitigation.retypes_only``, builds
#: no second frame), with the heaviest single mitigation, and per mitigation beyond the
#: first (its findings are kept for the comparison; two replay at once); plus what the
#: process needs besides (interpreter, polars, numba). Fitted to the peak RSS of
#: `tracekit analyze -o F` on `mixed` traces (2026-12-06, re-measured 2026-12-07 on traces
#: that store their Arrow types; tests/test_partition.py has the table): 10 M events: none
#: 1.89 GiB, s2fwb 1.85, kvm-fault-clean+guest-boot-inval 3.55, the catalog 6.13; 1 M: the
#: catalog 1.05. The estimate is 1.07-1.2x the heavy runs' peaks and up to 1.76x the
#: lightest's (guest-boot-inval); it was 1.5-1.9x, and partitioned the catalog of 10 M
#: events even with a 12 GB budget.
WHOLE_BYTES_PER_EVENT_NONE = 220
WHOLE_BYTES_PER_EVENT = 400
WHOLE_BYTES_PER_EVENT_AND_MITIGATION = 30
WHOLE_BASE_BYTES = 550 << 20
#: With the findings on disk, per event beyond one mitigation's run: the next mitigation applied
#: meanwhile, the last one's findings on their way to the file, and a second replay at once
#: (the catalog: 0.98-1.03 GiB at 1 M events, 5.29-5.63 GiB at 10 M), which also costs a
#: little whatever the size...
ON_DISK_BYTES_PER_EVENT = 180
ON_DISK_SECOND_REPLAY_BYTES = 48 << 20
#: ... or one replay at a time (0.93-0.94 GiB at 1 M, 4.81-4.95 GiB at 10 M).
ON_DISK_SERIAL_BYTES_PER_EVENT = 120
#: What the process needs besides the parts (interpreter, polars, numba, the global events).
BASE_BYTES = 350 << 20
PAGE_SHIFT = 12  # parts own whole 4 KiB pages
_GLOBAL_OPS = ("sysreg",)
_LINE_CMOS = ("dc.ivac", "dc.cvac", "dc.cvap", "dc.civac", "dc.cvau", "dc.zva", "ic.ivau")


def _retypes_only(spec: str) -> bool:
    """Whether every mitigation of ``spec`` (``a+b``) only retypes events (``Mitigation.retypes_only``):
    then, like ``none``, it builds no second frame beside the trace. An unknown name counts as
    heavy (loading it reports it)."""
    from .mitigations import MITIGATIONS

    return all(n.strip() in MITIGATIONS and MITIGATIONS[n.strip()].retypes_only for n in spec.split("+"))


def default_budget() -> int:
    """A quarter of physical memory (the default of ``--memory-budget``)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError):  # pragma: no cover - not POSIX
        return 4 << 30


def parse_size(text: str) -> int:
    """``1G``, ``512M``, ``2048K`` or bytes."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(t)
    except ValueError:
        raise UsageError(f"--memory-budget: expected a size like 1G or 512M, found {text!r}") from None


def estimated_bytes(events: int, mitigations: int | Sequence[str] = ("none",), *,
                    findings_kept: bool = True, replays: int = 2) -> int:
    """Peak memory of analysing ``events`` whole under ``mitigations`` (specs, or how many).

    ``findings_kept=False``: each mitigation's findings written and let go
    (``analyze(..., keep_findings=False)``), the next mitigation applied meanwhile, and
    ``replays`` mitigations replayed at once (2, or 1 for the least memory).
    """
    if isinstance(mitigations, int):
        count, light = max(1, mitigations), False
    else:
        count, light = max(1, len(mitigations)), all(_retypes_only(m) for m in mitigations)
    per_event = WHOLE_BYTES_PER_EVENT_NONE if light else WHOLE_BYTES_PER_EVENT
    if count > 1 and not findings_kept:
        if replays == 1:
            return WHOLE_BASE_BYTES + events * (per_event + ON_DISK_SERIAL_BYTES_PER_EVENT)
        return WHOLE_BASE_BYTES + ON_DISK_SECOND_REPLAY_BYTES + events * (per_event + ON_DISK_BYTES_PER_EVENT)
    return WHOLE_BASE_BYTES + events * (per_event + WHOLE_BYTES_PER_EVENT_AND_MITIGATION * (count - 1))


#: How `tracekit analyze` runs a trace Parquet (``memory_plan``), lightest on time first.
PLANS = ("whole", "findings-on-disk", "findings-on-disk-serial", "partitioned")


def memory_plan(trace_path: str | os.PathLike[str], budget_bytes: int,
                mitigations: int | Sequence[str] = ("none",)) -> str:
    """How to analyse the trace under ``mitigations`` within ``budget_bytes`` (one of ``PLANS``).

    ``whole``: in memory, the mitigations replayed two at a time and every finding kept.
    ``findings-on-disk``: in memory, two at a time, each one's findings written and let go
    (the summary tallied on the way; a report reads them back at the end). The catalog of
    10 M events with the summary: 18.8-19.8 s in a fairly quiet hour, where partitioning took
    78-89 s. ``findings-on-disk-serial``: the same one mitigation at a time (19.8-20.2 s,
    0.7-0.9 GiB less). ``partitioned``: part by part (``replay_partitioned``).
    A path that is not a readable Parquet file is ``whole``: loading it reports what is wrong.
    """
    try:
        rows = pq.ParquetFile(trace_path).metadata.num_rows
    except (OSError, pa.ArrowException):
        return "whole"
    if estimated_bytes(rows, mitigations) <= budget_bytes:
        return "whole"
    if estimated_bytes(rows, mitigations, findings_kept=False) <= budget_bytes:
        return "findings-on-disk"
    if estimated_bytes(rows, mitigations, findings_kept=False, replays=1) <= budget_bytes:
        return "findings-on-disk-serial"
    return "partitioned"


def should_partition(trace_path: str | os.PathLike[str], budget_bytes: int,
                     mitigations: int | Sequence[str] = ("none",)) -> bool:
    """Whether the trace is too big to analyse in memory within ``budget_bytes`` (``memory_plan``)."""
    return memory_plan(trace_path, budget_bytes, mitigations) == "partitioned"


def part_count(events: int, budget_bytes: int) -> int:
    """Parts needed for ``events`` (spread evenly) to fit the budget."""
    room = budget_bytes - BASE_BYTES
    if room < 64 * BYTES_PER_EVENT * 1024:
        raise UsageError(f"--memory-budget: expected at least {(BASE_BYTES >> 20) + 64} MiB, "
                         f"found {budget_bytes >> 20} MiB")
    return max(1, math.ceil(events * BYTES_PER_EVENT / (room * 0.7)))


_ACCESS_OPS = pa.array(["read", "write", "ifetch"])


def _line_events(t: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the line events of a batch, their first byte and their size (at least 1)."""
    import pyarrow.compute as pc  # only the partitioned path needs it (40 ms to import)

    op = t.column("op")
    cmo = t.column("cmo")
    line_cmo = pc.fill_null(pc.and_(pc.equal(op, "cmo"), pc.is_in(cmo, pa.array(_LINE_CMOS))), False)
    line_ev = pc.and_(pc.or_(pc.is_in(op, _ACCESS_OPS), line_cmo), pc.is_valid(t.column("addr")))
    idx = np.flatnonzero(pc.fill_null(line_ev, False).to_numpy(zero_copy_only=False))
    addr = pc.fill_null(t.column("addr"), 0).to_numpy()[idx]
    raw_size = pc.fill_null(t.column("size"), 0).to_numpy()[idx]
    zva = pc.fill_null(pc.equal(cmo, "dc.zva"), False).to_numpy(zero_copy_only=False)[idx]
    # DC ZVA stays in its line; a maintenance without a size covers one line from addr (at most
    # 4 KiB, the largest line size): give it the next block too
    size = np.where(zva, 1, np.where(raw_size == 0, 4096, raw_size)).astype(np.uint64)
    return idx, addr, size


def _event_blocks(idx: np.ndarray, addr: np.ndarray, size: np.ndarray, shift: int, cap: int):
    """(row, block) for every block a line event touches; rows touching more than ``cap`` blocks
    are returned apart (they go to every part)."""
    first = addr >> np.uint64(shift)
    last = (addr + (size - np.uint64(1))) >> np.uint64(shift)
    nb = (last - first + np.uint64(1)).astype(np.int64)
    wide = nb > cap
    one = nb == 1
    rows, blocks = [idx[one]], [first[one]]
    span = np.flatnonzero(~one & ~wide)
    if len(span):
        r = np.repeat(span, nb[span])
        off = np.arange(len(r)) - np.repeat(np.cumsum(nb[span]) - nb[span], nb[span])
        rows.append(idx[r])
        blocks.append(first[r] + off.astype(np.uint64))
    return np.concatenate(rows), np.concatenate(blocks), idx[wide]


class Owners:
    """Which part owns each block of lines (a line, or a 4 KiB page for ``kvm-fault-clean``).

    Blocks are assigned from their event counts: the heaviest by longest-processing-time
    (each to the least loaded part), the rest in a snake order, so hot lines and pages
    spread and parts come out even.
    """

    #: Bytes up to which ``of`` looks owners up in a table indexed by block (a byte per block of
    #: the span from the least to the greatest, two with more than 254 parts) instead of a
    #: binary search over the blocks: 20 M look-ups for a 10 M-event trace (the split, then
    #: each part's costs) took 4-5 s searching 886,000 blocks spanning 23 M.
    TABLE_BYTES = 32 << 20

    def __init__(self, shift: int, blocks: np.ndarray, owner: np.ndarray, parts: int):
        self.shift, self.blocks, self.owner, self.parts = shift, blocks, owner, parts
        self._table: np.ndarray | None = None
        span = int(blocks[-1] - blocks[0]) + 1 if len(blocks) else 0
        dtype = np.dtype(np.uint8 if parts < 0xFF else np.uint16)
        if 0 < span * dtype.itemsize <= self.TABLE_BYTES and parts < 0xFFFF:
            # the value past every part marks a block the trace's count did not see
            self._table = np.full(span, np.iinfo(dtype).max, dtype)
            self._table[blocks - blocks[0]] = owner

    @classmethod
    def assign(cls, shift: int, blocks: np.ndarray, counts: np.ndarray, parts: int) -> "Owners":
        import heapq

        order = np.argsort(-counts, kind="stable")
        owner = np.empty(len(blocks), np.int64)
        load = np.zeros(parts, np.int64)
        heavy = order[: 20 * parts]
        heap = [(0, p) for p in range(parts)]
        for i in heavy:
            w, p = heapq.heappop(heap)
            owner[i] = p
            heapq.heappush(heap, (w + int(counts[i]), p))
        for w, p in heap:
            load[p] = w
        rest = order[20 * parts:]
        if len(rest):
            by_load = np.argsort(load, kind="stable")
            k = np.arange(len(rest))
            lap, pos = k // parts, k % parts
            owner[rest] = by_load[np.where(lap % 2 == 0, pos, parts - 1 - pos)]
        return cls(shift, blocks, owner, parts)

    def loads(self, counts: np.ndarray) -> np.ndarray:
        return np.bincount(self.owner, weights=counts, minlength=self.parts)

    def of(self, block: np.ndarray) -> np.ndarray:
        """The part owning each block (uint64): its assigned one, or for a block the count did not
        see (an inserted event's), one by a hash of the block number."""
        block = np.asarray(block, np.uint64)
        hashed = ((block * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) % np.uint64(self.parts)
        if self._table is not None:
            off = block - self.blocks[0]  # (a block below the least wraps past the table)
            inside = off < np.uint64(len(self._table))
            got = self._table[np.where(inside, off, 0)]
            return np.where(inside & (got < self.parts), got, hashed).astype(np.int64)
        i = np.clip(np.searchsorted(self.blocks, block), 0, max(len(self.blocks) - 1, 0))
        known = len(self.blocks) > 0 and (self.blocks[i] == block)
        return np.where(known, self.owner[i] if len(self.blocks) else 0, hashed.astype(np.int64))


def count_blocks(trace_path: str | os.PathLike[str], shift: int, cap: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Events per block over the whole trace (one pass over four columns), and the events that go everywhere."""
    pf = pq.ParquetFile(trace_path)
    acc_b: list[np.ndarray] = []
    acc_c: list[np.ndarray] = []
    pending = 0
    wide = 0
    for batch in _row_groups(trace_path, pf, columns=["op", "cmo", "addr", "size"]):
        idx, addr, size = _line_events(batch)
        _, blocks, w = _event_blocks(idx, addr, size, shift, cap)
        wide += len(w)
        b, c = np.unique(blocks, return_counts=True)  # (sorted, with counts: numpy sorts; quick)
        c = c.astype(np.int64, copy=False)
        acc_b.append(b)
        acc_c.append(c)
        pending += len(b)
        if pending > 8 << 20:  # compact
            b, c = sum_by_key(np.concatenate(acc_b), np.concatenate(acc_c))
            acc_b, acc_c = [b], [c]
            pending = len(b)
    if not acc_b:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), wide
    b, c = sum_by_key(np.concatenate(acc_b), np.concatenate(acc_c))
    return b, c, wide


def _row_groups(path: str | os.PathLike[str], pf: pq.ParquetFile, columns: list[str] | None = None,
                rows: int = 1 << 18) -> Iterator[pa.Table]:
    """The file in slices of at most ``rows``, read one row group at a time.

    (``ParquetFile.iter_batches`` keeps allocations alive across batches: its memory grows
    with the file; reading row groups one by one stays flat.)
    """
    for i in range(pf.num_row_groups):
        with reading(path, "a trace Parquet written by tracekit"):
            t = pf.read_row_group(i, columns=columns)
        for start in range(0, t.num_rows, rows):
            yield t.slice(start, rows).combine_chunks()
        del t
        pa.default_memory_pool().release_unused()


def _split_batch(t: pa.Table, owners: Owners) -> tuple[list[tuple[int, pa.Table]], pa.Table]:
    """(part, rows) for the line events of a slice of the trace, and its global events."""
    parts = owners.parts
    idx, addr, size = _line_events(t)
    rows, blocks, wide = _event_blocks(idx, addr, size, owners.shift, _cap(parts))
    owner = owners.of(blocks)
    if len(wide):  # events over very many blocks: to every part
        rows = np.concatenate([rows, np.repeat(wide, parts)])
        owner = np.concatenate([owner, np.tile(np.arange(parts), len(wide))])
    width = t.num_rows + 1
    key = distinct(owner.astype(np.int64) * width + rows)  # one copy per (part, event), in event order
    owner, rows = key // width, key % width
    out = []
    if len(rows):
        cuts = np.flatnonzero(np.diff(owner)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [len(rows)]])
        taken = t.take(pa.array(rows))  # once, in (part, event) order; each part's rows a slice of it
        for s0, e0 in zip(starts, ends):
            out.append((int(owner[s0]), taken.slice(s0, e0 - s0)))
    import pyarrow.compute as pc

    op = t.column("op")
    cmo = t.column("cmo")
    glob = pc.or_(pc.is_in(op, pa.array(_GLOBAL_OPS)),
                  pc.and_(pc.equal(op, "cmo"), pc.invert(pc.is_in(cmo, pa.array(_LINE_CMOS)))))
    return out, t.filter(pc.fill_null(glob, False))


def _cap(parts: int) -> int:
    return max(64, 4 * parts)


def split_trace(trace_path: str | os.PathLike[str], workdir: Path, owners: Owners, *,
                quiet: bool = True) -> dict[str, Any]:
    """Stream the trace into line-partitioned part files and one file of global events.

    The part files are Arrow IPC (LZ4): a writer holds no page buffers, so hundreds of
    them open at once cost little memory (Parquet writers buffer every column).
    """
    from ._progress import progress

    parts = owners.parts
    pf = pq.ParquetFile(trace_path)
    # text columns as strings: a file that stores its Arrow types holds them as dictionaries,
    # one per row group, and an Arrow IPC file takes no dictionary that changes between batches
    schema = pa.schema([pa.field(f.name, pa.string() if pa.types.is_dictionary(f.type) else f.type, f.nullable)
                        for f in pf.schema_arrow])
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    counts = np.zeros(parts, np.int64)
    glob_writer = pa.ipc.new_file(workdir / "global.arrow", schema, options=options)
    last = None
    bar = progress(total=pf.metadata.num_rows, desc="partition", unit="ev", unit_scale=True, quiet=quiet)
    try:
        for batch in _row_groups(trace_path, pf):
            batch = batch.cast(schema)
            per_part, glob = _split_batch(batch, owners)
            for p, tab in per_part:
                if p not in writers:
                    writers[p] = pa.ipc.new_file(workdir / f"part-{p:05d}.arrow", schema, options=options)
                writers[p].write_table(tab.cast(schema))
                counts[p] += tab.num_rows
            if glob.num_rows:
                glob_writer.write_table(glob.cast(schema))
            last = batch.slice(batch.num_rows - 1, 1)
            bar.update(batch.num_rows)
            del per_part, glob, batch
            pa.default_memory_pool().release_unused()
    finally:
        bar.close()
        glob_writer.close()
        for w in writers.values():
            w.close()
    if last is not None:
        with pa.ipc.new_file(workdir / "last.arrow", schema) as w:
            w.write_table(last.cast(schema))
    return {"parts": parts, "events_per_part": counts.tolist(), "events": pf.metadata.num_rows,
            "block_bytes": 1 << owners.shift}


def _read_arrow(path: Path) -> pl.DataFrame:
    with pa.OSFile(str(path)) as src:
        table = pa.ipc.open_file(src).read_all()
    return pl.from_arrow(table, rechunk=False)


def _part_frame(workdir: Path, p: int, glob: pl.DataFrame, last: pl.DataFrame) -> pl.DataFrame:
    """A part's events with the global ones and the trace's last, in seq order, each once.

    The part's file is in seq order (split_trace keeps the trace's order) and shares no
    event with the global ones, except possibly the trace's last: the few global events
    are merged in, not the whole part deduplicated and sorted (3.1-3.4 -> 2.5-2.6 s for a part
    of 5 M, most of it reading the part file). The frames are compact (Enums and Categoricals,
    as `analyze` reads a trace): merging codes, not strings, and resolve has nothing left to
    cast (a part of 465,000 events: 0.13-0.19 -> 0.11-0.12 s, resolving it 0.064 -> 0.05 s).
    """
    path = workdir / f"part-{p:05d}.arrow"
    rest = pl.concat([glob, last], how="vertical_relaxed").unique("seq", keep="first", maintain_order=False)
    if not path.exists():
        return rest.sort("seq")
    own = conform(_read_arrow(path), TRACE_SCHEMA, compact=True)
    if not own["seq"].is_sorted():  # a trace file not in seq order: as before
        return pl.concat([own, rest.select(own.columns).cast(own.schema)], how="vertical_relaxed") \
            .unique("seq", keep="first", maintain_order=False).sort("seq")
    seq = own["seq"].to_numpy()
    extra = rest["seq"].to_numpy()
    at = np.minimum(np.searchsorted(seq, extra), max(len(seq) - 1, 0))
    rest = rest.filter(pl.Series(~((len(seq) > 0) & (seq[at] == extra)))).sort("seq")
    return own.merge_sorted(rest.select(own.columns).cast(own.schema), key="seq")


def _owned(findings: pl.DataFrame, p: int, owners: Owners) -> pl.DataFrame:
    if findings.height == 0:
        return findings
    block = findings["line"].to_numpy() >> np.uint64(owners.shift)
    return findings.filter(pl.Series(owners.of(block) == p))


class _PartCost:
    """What one part adds to its run's cost (``MitigationCost.to_dict``), counted so that the
    parts add up to the whole trace's cost: an event or inserted operation on lines of several
    parts counts in the part that owns its first line, a line in the part that owns it.

    ``owns``: uint64 addresses -> whether this part owns their lines (``MitigationContext.owns``;
    nothing, for the global events alone: what they cost in every part is taken out once per
    part but one).
    What the part owns of its resolved frame is worked out once for all its mitigations.
    An operation a mitigation makes by merging neighbouring lines (``Mitigation.merges_lines``)
    is cut where a part's lines end and counts once per piece here; ``run_edges`` tells which
    pieces continue another part's.
    """

    def __init__(self, before: pl.DataFrame, info: TraceInfo, owns: Callable[[np.ndarray], np.ndarray]):
        self.before, self.ls, self.owns = before, info.line_size, owns
        self._counted: pl.Series | None = None  # the typed accesses whose first line the part owns
        self._touched: dict[bool, int] = {}

    def owned_rows(self, frame: pl.DataFrame) -> pl.Series:
        """Rows with an address whose first line this part owns."""
        addr = frame["addr"]
        return pl.Series(self.owns(addr.fill_null(0).to_numpy().astype(np.uint64, copy=False))
                         & addr.is_not_null().to_numpy())

    def owned_lines(self, lines: pl.DataFrame, distinct: bool) -> int:
        """Lines of the [_lo, _hi] line ranges that this part owns (``distinct``: each once)."""
        if lines.height == 0:
            return 0
        each = _each_line(lines)["line"]
        if distinct:
            each = each.unique()
        return int(self.owns_lines(each.to_numpy()).sum())

    def owns_lines(self, lines: np.ndarray) -> np.ndarray:
        """Whether this part owns each of ``lines`` (uint64 line numbers)."""
        return self.owns(lines * np.uint64(self.ls))

    def touched(self, ram: bool) -> int:
        """Owned lines the recorded trace's addressed events touch (of RAM regions only: ``ram``)."""
        from .mitigations.base import first_line, last_line, recorded

        if ram not in self._touched:
            events = self.before.filter(recorded() & pl.col("addr").is_not_null())
            if ram:
                events = events.filter((pl.col("region_kind") == "ram").fill_null(True))
            self._touched[ram] = self.owned_lines(events.select(_lo=first_line(self.ls), _hi=last_line(self.ls)),
                                                  distinct=True)
        return self._touched[ram]

    def __call__(self, after: pl.DataFrame, traps: dict[str, int]) -> dict[str, Any]:
        from .mitigations.base import first_line, is_typed_access, last_line, retyped_entries, whole_cache_lines

        before, ls = self.before, self.ls
        inserted = after.select("sub", "op", "cmo", "addr", "size").filter(pl.col("sub") != 0)
        by_addr = inserted.filter(pl.col("addr").is_not_null())
        lines = self.owned_lines(by_addr.select(_lo=first_line(ls), _hi=last_line(ls)), distinct=False)
        lines += whole_cache_lines(inserted, self.touched)
        # retyped: the owned accesses of the part's trace, matched by seq to what the mitigation kept
        if self._counted is None:
            self._counted = before.select(is_typed_access()).to_series() & self.owned_rows(before)
        kept = after.select("seq", "sub", _to=pl.col("mem_type")).filter(pl.col("sub") == 0)
        was = before.select("seq", _from=pl.col("mem_type"))
        if kept.height == was.height and kept["seq"].equals(was["seq"]):
            # the usual case: the mitigation kept every recorded row, in order (no join)
            changed = was.with_columns(kept["_to"]).filter(self._counted)
        else:
            changed = was.filter(self._counted).join(kept, on="seq", how="inner")
        re = (changed.filter(pl.col("_from").ne_missing(pl.col("_to")))
              .group_by("_from", "_to").len()
              .with_columns(pl.col("_from").cast(pl.String), pl.col("_to").cast(pl.String)))
        retyped = retyped_entries(re)
        return {
            "traps": dict(traps),
            "inserted_ops": inserted.height - by_addr.height + int(self.owned_rows(by_addr).sum()),
            "inserted_lines": lines,
            "retyped_accesses": sum(r["count"] for r in retyped),
            "retyped": retyped,
            "removed_ops": before.height - (after.height - inserted.height),
        }

    def run_edges(self, after: pl.DataFrame, names: Sequence[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Where the runs of lines that mitigations ``names`` merged meet lines this part does not own.

        In a whole run such a mitigation makes one operation per maximal run of lines with the same
        key (anchor ``seq``, ``before`` it or not, acting ``agent``, ``region``). This part holds
        every event on its own lines, so its pieces of runs are exact on them; a piece whose first
        line it owns counted as an operation (``__call__``). That piece continues a run of another
        part when the line before it, owned elsewhere, is in a run with the same key. So:

        * starts: (key, line) of each piece beginning on an owned line whose previous line this part
          does not own (the piece may continue another part's run);
        * ends: (key, line + 1) of each owned line in a piece whose next line this part does not own
          (the run goes on there, if anything there is written).

        A start matched by an end, from any part, is a piece counted once too often.
        """
        from .mitigations.base import first_line, last_line

        agent = pl.col("agent").cast(pl.String)
        runs = (after.lazy().filter((pl.col("sub") != 0) & pl.col("addr").is_not_null()
                                    & pl.any_horizontal(agent.str.ends_with(f"/{n}") for n in names))
                .select("seq", before=pl.col("sub") < 0, agent=agent, region=pl.col("region").cast(pl.String),
                        _lo=first_line(self.ls), _hi=last_line(self.ls))
                .collect())
        if runs.height == 0:
            empty = runs.select(*_RUN_KEY, line=pl.col("_lo"))
            return empty, empty
        lo = runs["_lo"].to_numpy().astype(np.uint64)
        prev = np.where(lo > 0, lo - np.uint64(1), lo)  # (line 0 has none before it)
        start = self.owns_lines(lo) & (lo > 0) & ~self.owns_lines(prev)
        starts = runs.filter(pl.Series(start)).select(*_RUN_KEY, line=pl.col("_lo"))
        each = _each_line(runs, *_RUN_KEY)
        line = each["line"].to_numpy()
        end = self.owns_lines(line) & ~self.owns_lines(line + np.uint64(1))
        ends = each.filter(pl.Series(end)).select(*_RUN_KEY, line=pl.col("line") + 1)
        return starts, ends


#: What makes runs of lines one operation in a whole run (``_PartCost.run_edges``).
_RUN_KEY = ("seq", "before", "agent", "region")


def _each_line(ranges: pl.DataFrame, *keep: str) -> pl.DataFrame:
    """One row per line of each [_lo, _hi] line range (``line``, uint64), with the ``keep`` columns."""
    return ranges.select(*keep, line=pl.int_ranges("_lo", pl.col("_hi") + 1, dtype=pl.UInt64)).explode("line")


class _RunEdges:
    """Every part's run edges (``_PartCost.run_edges``), per mitigation spec, kept on disk.

    A guest that zeroes 512 MB with its MMU off writes 8 M lines; with lines spread over the
    parts nearly each is an edge, more than a part's budget holds beside it. Each part's edges
    go to an Arrow IPC file, their keys as small integers; they are matched at the end, when
    the parts are gone.
    """

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.keys: dict[tuple, int] = {}
        self.files: dict[int, list[Path]] = {}

    def add(self, m: int, p: int, starts: pl.DataFrame, ends: pl.DataFrame) -> None:
        if starts.height == 0 and ends.height == 0:
            return
        both = pl.concat([starts.with_columns(start=pl.lit(True)), ends.with_columns(start=pl.lit(False))])
        key = list(_RUN_KEY)
        known = both.select(key).unique()
        ids = known.with_columns(_key=pl.Series([self.keys.setdefault(k, len(self.keys)) for k in known.iter_rows()],
                                                dtype=pl.UInt32))
        path = self.dir / f"edges-{m}-{p:05d}.arrow"
        both.join(ids, on=key, how="left", nulls_equal=True).select("_key", "line", "start").write_ipc(path)
        self.files.setdefault(m, []).append(path)

    def continued(self, m: int) -> int:
        """Pieces of spec ``m`` that continue a run begun in another part: counted once too often."""
        if m not in self.files:
            return 0
        edges = pl.scan_ipc(self.files[m])
        starts = edges.filter(pl.col("start")).select("_key", "line")
        ends = edges.filter(~pl.col("start")).select("_key", "line").unique()
        return int(starts.join(ends, on=["_key", "line"], how="semi").select(pl.len()).collect().item())


def _nothing_owned(addr: np.ndarray) -> np.ndarray:
    return np.zeros(len(addr), np.bool_)


def _most_first(item: tuple[tuple[str | None, str | None], int]) -> tuple:
    """Retyped (from, to) -> count entries as ``mitigation_cost`` orders them: count descending,
    then from and to by name, a missing type last."""
    (a, b), count = item
    return -count, a is None, a or "", b is None, b or ""


def _add_cost(total: dict[str, Any], c: dict[str, Any], sign: int) -> None:
    for k, v in c.get("traps", {}).items():
        total["traps"][k] = total["traps"].get(k, 0) + sign * v
    for k in ("inserted_ops", "inserted_lines", "retyped_accesses", "removed_ops"):
        total[k] = total.get(k, 0) + sign * int(c.get(k, 0))
    for r in c.get("retyped", []):
        key = (r["from"], r["to"])
        total["_retyped"][key] = total["_retyped"].get(key, 0) + sign * int(r["count"])


def replay_partitioned(
    trace_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    mitigations: Sequence[str] = ("none",),
    *,
    budget_bytes: int | None = None,
    engine: str = "fast",
    speculation: str = "architectural",
    line_size: int | None = None,
    force: bool = False,
    quiet: bool = True,
    workdir: str | os.PathLike[str] | None = None,
    parts: int | None = None,
    tally: "SummaryTally | None" = None,
) -> dict[str, Any]:
    """Analyse ``trace_path`` part by part within ``budget_bytes``; write findings-v1 to ``output``.

    Returns the metadata written with the findings (as ``Analysis.meta``), plus
    ``partition`` (parts and events per part). ``parts`` overrides the count the budget gives.
    ``tally``: fed each part's findings, for a summary that reads none back (a part holds
    whole lines, as a tally wants).
    """
    from . import __version__
    from ._progress import progress
    from .analyze import expand_mitigations
    from .engine import get_engine
    from .ingest import file_sha256
    from .mitigations import MitigationCost, apply_mitigation
    from .mitigations.base import get_mitigation, parse_spec
    from .resolve import resolve
    from .schema import check_output

    check_output(output, force=force)
    budget = default_budget() if budget_bytes is None else budget_bytes
    specs = expand_mitigations(mitigations)
    info: TraceInfo = read_trace_info(trace_path)
    if line_size is not None:
        info = info.replace(line_size=line_size)
    if info.line_size > (1 << PAGE_SHIFT):
        raise UsageError(f"--line-size: expected at most {1 << PAGE_SHIFT} with --memory-budget, found {info.line_size}")
    rows = pq.ParquetFile(trace_path).metadata.num_rows
    # kvm-fault-clean acts on whole 4 KiB pages at the first access to each: keep pages whole
    page_mitigation = any("kvm-fault-clean" in s.split("+") for s in specs)
    shift = PAGE_SHIFT if page_mitigation else info.line_size.bit_length() - 1
    want = parts or part_count(rows, budget)
    blocks, counts, wide = count_blocks(trace_path, shift, _cap(want))
    limit = (budget - BASE_BYTES) * 0.8 / BYTES_PER_EVENT  # events a part may hold
    while True:
        owners = Owners.assign(shift, blocks, counts, want)
        heaviest = (owners.loads(counts).max() if len(counts) else 0) + wide
        if parts or heaviest <= limit or want >= 8 * (rows // max(limit, 1) + 1):
            break
        want = math.ceil(want * heaviest / limit) + 1
    replay = get_engine(engine)
    tmp = Path(tempfile.mkdtemp(prefix="tracekit-parts-", dir=workdir))
    try:
        split = split_trace(trace_path, tmp, owners, quiet=quiet)
        parts = owners.parts
        glob = conform(_read_arrow(tmp / "global.arrow"), TRACE_SCHEMA, compact=True)
        last = conform(_read_arrow(tmp / "last.arrow"), TRACE_SCHEMA, compact=True) \
            if (tmp / "last.arrow").exists() else glob.clear()
        totals = {s: {"traps": {}, "_retyped": {}} for s in specs}
        # the global events alone: their costs are counted once per part
        g_resolved = resolve(pl.concat([glob, last]).unique("seq").sort("seq"), info)
        part_cost = _PartCost(g_resolved, info, _nothing_owned)
        for s in specs:
            g_mitigated, _, g_cost = apply_mitigation(g_resolved, s, info, cost=False, owns=_nothing_owned)
            _add_cost(totals[s], part_cost(g_mitigated, g_cost.traps), -(parts - 1))
        del g_resolved, g_mitigated, part_cost
        # findings go to buckets of seq ranges (one Arrow IPC writer per mitigation and bucket), so
        # the output is assembled one bucket at a time, whatever the number of parts
        top = int(pq.ParquetFile(trace_path).metadata.num_rows)
        width = max(1 << 16, math.ceil(max(top, 1) / max(1, math.ceil(top / (1 << 20)))))
        buckets = _Buckets(tmp, width)
        edges = _RunEdges(tmp)
        merging = {s: [n for n in parse_spec(s) if get_mitigation(n).merges_lines] for s in specs}
        for p in progress(range(parts), desc="replay parts", unit="part", quiet=quiet):
            resolved = resolve(_part_frame(tmp, p, glob, last), info)
            def owns(addr: np.ndarray, p: int = p) -> np.ndarray:
                return owners.of(addr >> np.uint64(owners.shift)) == p

            part_cost = _PartCost(resolved, info, owns)
            # the fast engine replays each later mitigation of this part only on the lines it changes
            part_of_trace = {"same_trace": object()} if engine == "fast" and len(specs) > 1 else {}
            for m, s in enumerate(specs):
                mitigated, minfo, cost = apply_mitigation(resolved, s, info, ordered=engine != "fast", cost=False,
                                                          owns=owns)
                _add_cost(totals[s], part_cost(mitigated, cost.traps), +1)
                if merging[s]:
                    edges.add(m, p, *part_cost.run_edges(mitigated, merging[s]))
                found = _owned(replay(mitigated, minfo, mitigation=s, speculation=speculation, **part_of_trace),
                               p, owners)
                buckets.add(m, found)
                if tally is not None:
                    tally.add(s, found)
                del mitigated, found
            if tally is not None:
                tally.end_part()
            del resolved, part_cost
        buckets.close()
        costs = {}
        for m, (s, t) in enumerate(totals.items()):
            t["inserted_ops"] -= edges.continued(m)
            # in the order a whole run lists them (mitigation_cost): most first, then by name
            t["retyped"] = [{"from": a, "to": b, "count": c} for (a, b), c in
                            sorted(t.pop("_retyped").items(), key=_most_first) if c]
            t["traps"] = {k: v for k, v in t["traps"].items() if v}
            costs[s] = MitigationCost.from_dict(t).to_dict()
        meta = {
            "trace": str(trace_path),
            "trace_sha256": file_sha256(Path(trace_path)),
            "line_size": info.line_size,
            "speculation": speculation,
            "engine": engine,
            "mitigations": specs,
            "costs": costs,
            "tracekit_version": __version__,
        }
        extra = {k: v for k, v in meta.items() if k != "tracekit_version"}  # write_table adds it
        write_table(buckets.merged(len(specs)), output, schema=FINDINGS_SCHEMA, info=info, force=force,
                    extra_metadata=extra)
        return {**meta, "partition": split}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def analyze_partitioned(trace_path: str | os.PathLike[str], output: str | os.PathLike[str],
                        mitigations: Sequence[str] = ("none",), *, tally: bool = True, **kw: Any):
    """``replay_partitioned``, then the Analysis of its findings file, whose rows are read when
    first used, and ``meta["partition"]``; with ``tally`` its summary figures are tallied part by
    part, so its summary and ``--fail-on`` gate read no findings back (what ``tracekit analyze
    --memory-budget`` does)."""
    from .analyze import expand_mitigations, load_analysis
    from .summary import SummaryTally

    tallied = SummaryTally(expand_mitigations(mitigations)) if tally else None
    done = replay_partitioned(trace_path, output, mitigations, tally=tallied, **kw)
    result = load_analysis(output, lazy=True)
    result.meta["partition"] = done["partition"]  # parts and events per part (not in the file)
    result.summary_figures = tallied.figures() if tallied is not None else None
    return result


class _Buckets:
    """Findings of all parts by (mitigation, seq range): append part by part, read back range by range."""

    def __init__(self, workdir: Path, width: int):
        self.dir, self.width = workdir, width
        self.writers: dict[tuple[int, int], pa.ipc.RecordBatchFileWriter] = {}
        self.options = pa.ipc.IpcWriteOptions(compression="lz4")

    def _path(self, m: int, b: int) -> Path:
        return self.dir / f"found-{m:03d}-{b:06d}.arrow"

    def add(self, m: int, findings: pl.DataFrame) -> None:
        if findings.height == 0:
            return
        bucket = findings["seq"].to_numpy() // np.uint64(self.width)
        findings = findings.with_columns(_b=pl.Series(bucket.astype(np.int64)))
        for (b,), part in findings.partition_by("_b", as_dict=True, maintain_order=True).items():
            table = part.drop("_b").to_arrow()
            key = (m, int(b))
            if key not in self.writers:
                self.writers[key] = pa.ipc.new_file(self._path(*key), table.schema, options=self.options)
            self.writers[key].write_table(table)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def merged(self, mitigations: int) -> Iterator[pl.DataFrame]:
        """Every mitigation's findings in (seq, line, kind, cause) order, one seq range at a time."""
        keys = sorted(self.writers)
        for m in range(mitigations):
            for _, b in (k for k in keys if k[0] == m):
                # compact (text as Enum/Categorical codes): the writer holds a row group's worth
                # (1 M findings) of these before writing it, at a third of the memory of strings
                df = conform(_read_arrow(self._path(m, b)), FINDINGS_SCHEMA, compact=True) \
                    .sort("seq", "line", "kind", "cause")
                self._path(m, b).unlink()
                yield df
