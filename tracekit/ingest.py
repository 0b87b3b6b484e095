"""Turn one or more inputs into ONE trace Parquet file (trace-v1), and back to text.

Several inputs merge by ``time`` into one total order: a stable k-way merge,
so events with equal times keep the order of the inputs as given, then their
order in the file. Merging needs a timestamp on every event and each input in
time order; ``concat=True`` instead appends the inputs one after the other.
``seq`` is then numbered 0..n-1 in the final order.

Memory stays bounded: a single input (or a concatenation) streams from the
importer straight into the Parquet writer; a merge first spills each input to
a temporary Parquet file beside the output and merges batch by batch.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from . import schema
from ._progress import progress
from .errors import TraceFormatError, TracekitError, UsageError, at
from .importers import ImportOptions, detect_format, get_importer
from .model import SCTLR_M, InputFile, TraceInfo

MERGE_BATCH = 1 << 20
PathLike = str | os.PathLike[str]


def file_sha256(path: PathLike, stop: threading.Event | None = None) -> str:
    """Hex SHA-256 of a file; ``stop`` set by another thread abandons it (returns "")."""
    h = hashlib.sha256()
    # one small buffer, read into and hashed while it is in the cache (as hashlib.file_digest
    # does, which cannot be stopped): 1.4 GB in 0.93 s of CPU instead of 1.05 s by 8 MB reads
    buf = bytearray(256 << 10)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            if stop is not None and stop.is_set():
                return ""
            h.update(view[:n])
    return h.hexdigest()


def _paths(inputs: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = [Path(p) for p in inputs]
    if not paths:
        raise UsageError("expected at least one input, found none")
    return paths


def settings_of(info: TraceInfo) -> TraceInfo:
    """The part of the settings that must agree between inputs (not the input list)."""
    return info.replace(inputs=())


def describe_settings_difference(a: TraceInfo, b: TraceInfo) -> str:
    for name in ("line_size", "stage2", "fwb", "regions", "devices"):
        if getattr(a, name) != getattr(b, name):
            return name.replace("_", " ")
    return "settings"


@dataclass
class _Input:
    path: Path
    format: str
    index: int
    batches: Iterable[pl.DataFrame] | None = None
    result: Any = None

    @property
    def src(self) -> str:
        return str(self.path)


def _open_inputs(paths: list[Path], format: str | None, options: ImportOptions) -> list[_Input]:
    out = []
    for i, p in enumerate(paths):
        if p.is_dir():
            raise TraceFormatError(f"{p}: expected a trace file, found a directory")
        if not p.exists():
            raise TracekitError(f"{p}: expected an input file, found no such file")
        fmt = format or detect_format(p)
        out.append(_Input(p, get_importer(fmt).format, i))
    return out


def _read(inp: _Input, options: ImportOptions) -> Iterator[pl.DataFrame]:
    """The input's batches, conformed to trace-v1 minus seq (plus nothing else)."""
    imp = get_importer(inp.format)
    inp.result = imp.read(inp.path, options)
    for df in inp.result.batches:
        yield df


class _Agreement:
    """Settings of the inputs must agree; what one input does not declare, another may.

    A host-side ftrace log declares no memory map while the QEMU log beside it
    does: regions declared by one input apply to the merged trace, devices are
    the union of the inputs' (same name, same coherence). Line size, stage 2 and
    FWB must be equal.
    """

    def __init__(self) -> None:
        self.first: tuple[str, TraceInfo] | None = None

    def add(self, src: str, info: TraceInfo) -> TraceInfo:
        s = settings_of(info)
        if self.first is None:
            self.first = (src, s)
            return s
        first_src, merged = self.first
        conflict = next((n for n in ("line_size", "stage2", "fwb") if getattr(merged, n) != getattr(s, n)), None)
        if conflict is None and merged.regions and s.regions and merged.regions != s.regions:
            conflict = "regions"
        devices = {d.name: d for d in merged.devices}
        for d in s.devices:
            if devices.setdefault(d.name, d) != d:
                conflict = "devices"
        if conflict is not None:
            raise TraceFormatError(f"{src}: expected the same settings as {first_src} to merge them, "
                                   f"found a different {conflict.replace('_', ' ')}")
        merged = merged.replace(regions=merged.regions or s.regions, devices=tuple(devices.values()))
        self.first = (first_src, merged)
        return merged


class _TimeOrder:
    """Checks that one input has a timestamp on every event, in non-decreasing order."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.last: float | None = None

    def _where(self, df: pl.DataFrame, i: int) -> str:
        """FILE:LINE of row i (or the byte offset of a binary input)."""
        return at(self.src, df["src_line"][i], offset=df["src_offset"][i])

    def check(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        t = df["time"]
        if t.null_count():
            where = self._where(df, int(t.is_null().arg_true()[0]))
            raise TraceFormatError(
                f"{where}: expected a timestamp on every event to merge inputs by time, found none "
                "(use --concat to append the inputs in order instead)")
        arr = t.to_numpy()
        prev = np.concatenate([[self.last if self.last is not None else -np.inf], arr[:-1]])
        back = arr < prev
        if back.any():
            i = int(back.argmax())
            raise TraceFormatError(
                f"{self._where(df, i)}: expected timestamps in non-decreasing order to merge inputs by time, "
                f"found {arr[i]} after {prev[i]} (use --concat to append the inputs in order instead)")
        self.last = float(t[-1])


def _merge_spilled(files: list[Path]) -> Iterator[pl.DataFrame]:
    """Stable k-way merge by time of spilled inputs (each in time order), batch by batch.

    Rows strictly before the smallest "last buffered time" of the inputs still
    being read can be emitted: nothing later can sort before them. Ties wait
    until every input has moved past them, then sort by (time, input, row).
    """
    readers = [pq.ParquetFile(f).iter_batches(batch_size=MERGE_BATCH) for f in files]
    buffers: list[pl.DataFrame | None] = [None] * len(files)
    done = [False] * len(files)
    rows = [0] * len(files)

    def refill(i: int) -> None:
        try:
            b = pl.from_arrow(next(readers[i]))
        except StopIteration:
            done[i] = True
            return
        b = b.with_columns(_input=pl.lit(i, dtype=pl.UInt32),
                           _row=pl.int_range(rows[i], rows[i] + b.height, dtype=pl.UInt64))
        rows[i] += b.height
        buffers[i] = b if buffers[i] is None else pl.concat([buffers[i], b], how="vertical_relaxed")

    for i in range(len(files)):
        refill(i)
    while True:
        live = [i for i in range(len(files)) if not done[i]]
        if not live:
            rest = [b for b in buffers if b is not None and b.height]
            if rest:
                yield pl.concat(rest, how="vertical_relaxed").sort(["time", "_input", "_row"]).drop("_input", "_row")
            return
        # an input with an empty buffer must be read before anything can be emitted
        empty = [i for i in live if buffers[i] is None or buffers[i].height == 0]
        if empty:
            for i in empty:
                refill(i)
            continue
        watermark = min(buffers[i]["time"][-1] for i in live)
        out = []
        for i, b in enumerate(buffers):
            if b is None or b.height == 0:
                continue
            n = int(b["time"].search_sorted(watermark, side="left"))
            if n:
                out.append(b.head(n))
                buffers[i] = b.slice(n)
        if out:
            yield pl.concat(out, how="vertical_relaxed").sort(["time", "_input", "_row"]).drop("_input", "_row")
        for i in live:
            if buffers[i].height == 0 or buffers[i]["time"][-1] == watermark:
                refill(i)


@dataclass
class IngestSummary:
    """What was written: counts by operation and agent, regions, time span."""

    output: Path | None
    events: int
    info: TraceInfo
    by_op: dict[str, int] = field(default_factory=dict)
    by_agent: dict[str, int] = field(default_factory=dict)
    time_span: tuple[float, float] | None = None
    order: str = "file"
    #: per input: where its guest accesses' stage-1 types came from (guest map, page-table walk)
    guest_types: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        out = [f"{self.output}: {self.events} events" if self.output else f"{self.events} events"]
        out.append("  by op:    " + (", ".join(f"{k} {v}" for k, v in sorted(self.by_op.items())) or "-"))
        out.append("  by agent: " + (", ".join(f"{k} {v}" for k, v in sorted(self.by_agent.items())) or "-"))
        if self.info.regions:
            for r in self.info.regions:
                out.append(f"  region {r.name}: 0x{r.base:x} +0x{r.size:x} {r.kind} s2={r.s2} host={r.host}"
                           + (" shared" if r.shared else ""))
        else:
            out.append("  regions:  none declared (all memory is RAM)")
        if self.info.devices:
            out.append("  devices:  " + ", ".join(
                f"{d.name} ({'coherent' if d.coherent else 'noncoherent'})" for d in self.info.devices))
        out.append(f"  line size {self.info.line_size}, stage 2 {'on' if self.info.stage2 else 'off'}, "
                   f"FWB {'on' if self.info.fwb else 'off'}")
        if self.time_span:
            a, b = self.time_span
            out.append(f"  time:     {a:.6f} .. {b:.6f} s ({b - a:.6f} s)")
        else:
            out.append("  time:     no timestamps")
        out.append(f"  order:    {self.order}")
        for src, c in self.guest_types:
            parts = [f"accesses {c.get('guest_accesses', 0)}", f"input {c.get('typed_by_input', 0)}"]
            if "typed_by_guest_map_attr" in c or "typed_by_guest_map_idx" in c:
                parts.append(f"guest map {c.get('typed_by_guest_map_attr', 0) + c.get('typed_by_guest_map_idx', 0)}")
            if "typed_by_page_tables" in c:
                parts.append(f"page tables {c['typed_by_page_tables']} (ambiguous {c.get('page_tables_ambiguous', 0)}, "
                             f"{c.get('page_tables', 0)} tables)")
            parts.append(f"untyped {c.get('untyped', 0)}")
            out.append(f"  guest types {src}: " + ", ".join(parts))
            if "mmu_off" in c:
                out.append(f"    of the accesses, {c['mmu_off']} were made with the MMU off (their type is the "
                           f"MMU-off one, from SCTLR_EL1), and {c['untyped_mmu_on']} with the MMU on carry no type "
                           "(analysed as Write-Back, type_source assumed-wb)")
        out.extend(f"  page tables: {n}" for n in self.notes)
        return "\n".join(out) + "\n"


class _Tally:
    def __init__(self, guest_mmu: bool = False) -> None:
        self.n = 0
        self.op: Counter[str] = Counter()
        self.agent: Counter[str] = Counter()
        self.tmin: float | None = None
        self.tmax: float | None = None
        #: recorded inputs: per input, guest accesses made with the vCPU's MMU off, and those
        #: made with it on that carry no type (the analysis assumes Write-Back for them)
        self.guest_mmu = guest_mmu
        self.mmu_off: Counter[str] = Counter()
        self.untyped_mmu_on: Counter[str] = Counter()
        self._sctlr: dict[str, int] = {}  # each vCPU's SCTLR_EL1 so far (0 at reset)

    def _count_mmu(self, df: pl.DataFrame) -> None:
        guest = pl.col("side") == "guest"
        write = guest & (pl.col("op") == "sysreg") & (pl.col("sysreg") == "SCTLR_EL1")
        rows = df.filter(guest).select(
            "agent", "src", "op", "addr", "attr", "attr_index",
            _w=pl.when(write).then(pl.col("value").fill_null(0)))
        if rows.height == 0:
            return
        carried = pl.col("agent").replace_strict(self._sctlr, default=0, return_dtype=pl.UInt64)
        rows = rows.with_columns(_s=pl.col("_w").forward_fill().over("agent").fill_null(carried))
        acc = pl.col("op").is_in(["read", "write", "ifetch"]) & pl.col("addr").is_not_null()
        off = (pl.col("_s") & SCTLR_M) == 0
        untyped = pl.col("attr").is_null() & pl.col("attr_index").is_null()
        counts = rows.group_by("src").agg(off=(acc & off).sum(), on_untyped=(acc & ~off & untyped).sum())
        for src, n_off, n_untyped in counts.iter_rows():
            self.mmu_off[src] += int(n_off)
            self.untyped_mmu_on[src] += int(n_untyped)
        last = rows.filter(pl.col("_w").is_not_null()).group_by("agent").agg(pl.col("_w").last())
        self._sctlr.update(dict(last.iter_rows()))

    def add(self, df: pl.DataFrame) -> pl.DataFrame:
        """Number ``df`` (seq) after the rows seen so far and count it."""
        df = df.with_columns(seq=pl.int_range(self.n, self.n + df.height, dtype=pl.UInt64))
        self.n += df.height
        pairs = df.group_by("op", "agent").len()  # one pass for both counts
        for op, agent, k in pairs.iter_rows():
            self.op[op] += k
            self.agent[agent] += k
        if self.guest_mmu:
            self._count_mmu(df)
        t = df["time"]
        if t.null_count() < df.height:
            lo, hi = t.min(), t.max()
            self.tmin = lo if self.tmin is None else min(self.tmin, lo)
            self.tmax = hi if self.tmax is None else max(self.tmax, hi)
        return df


def _conform(df: pl.DataFrame, *, keep_coded: bool = False) -> pl.DataFrame:
    """Importer batches as trace-v1 minus seq (a placeholder seq keeps the column order).

    ``keep_coded``: Enum columns stay so (batches going straight to the writer, which
    takes them as dictionaries); spilled batches are merged with other inputs' and take strings.
    """
    return schema.conform(df.with_columns(seq=pl.lit(0, dtype=pl.UInt64)), schema.TRACE_SCHEMA,
                          keep_coded=keep_coded).drop("seq")


def _input_files(ins: list[_Input], hashes: list[Future] | None = None) -> tuple[InputFile, ...]:
    if hashes is None:
        return tuple(InputFile(inp.src, file_sha256(inp.path), inp.format) for inp in ins)
    return tuple(InputFile(inp.src, h.result(), inp.format) for inp, h in zip(ins, hashes))


def ingest(inputs: PathLike | Sequence[PathLike], output: PathLike, *, format: str | None = None,
           force: bool = False, quiet: bool = False, concat: bool = False,
           options: ImportOptions | None = None, page_walk: bool = True) -> IngestSummary:
    """Import ``inputs`` and write them as one trace-v1 Parquet file ``output``, atomically.

    Several inputs merge by time (stable: input order, then file order) unless
    ``concat``. ``page_walk``: type untyped MMU-on guest accesses of recorded inputs
    from the guest's recorded page tables (``importers.page_tables``). Raises
    TracekitError for bad input; nothing is written then.
    """
    paths = _paths(inputs)
    out = schema.check_output(output, force=force)
    options = options or ImportOptions()
    if options.quiet != quiet:
        from dataclasses import replace
        options = replace(options, quiet=quiet)
    ins = _open_inputs(paths, format, options)
    agree = _Agreement()
    tally = _Tally(guest_mmu=any(i.format in PAGE_WALK_FORMATS for i in ins) or options.guest_map is not None)
    merge = len(ins) > 1 and not concat
    parent = out.parent if str(out.parent) else Path(".")
    spill_dir: Path | None = None
    # The inputs' SHA-256 (for the metadata) is computed in a thread while they are
    # read: hashlib releases the GIL, and reading a file once more costs little.
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracekit-sha256")
    stop_hashing = threading.Event()  # set on an error, so a bad input fails at once
    hashes = [hasher.submit(file_sha256, inp.path, stop_hashing) for inp in ins]
    source: Iterable[pl.DataFrame] = ()
    try:
        # The settings go into the file's metadata, which is written first. The importers
        # of this package know them before any event ("settings_upfront"), so a single
        # input or a concatenation streams straight to the writer; otherwise (a merge, or
        # a QEMU log that learns its memory map while read) every input is spilled first.
        upfront = not merge and all(getattr(get_importer(i.format), "settings_upfront", False) for i in ins)
        if upfront:
            for inp in ins:
                inp.result = get_importer(inp.format).read(inp.path, options)
                agree.add(inp.src, inp.result.info)
            source = _stream_upfront(ins)  # starts reading now, while the inputs are hashed
        else:
            spill_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.spill.", dir=parent))
            readers = list(_spill_all(ins, options, concat=concat, agree=agree, spill_dir=spill_dir,
                                      page_walk=page_walk))
            source = (df for r in readers for df in r())
        order = "time" if merge else ("concat" if len(ins) > 1 else "file")
        with schema.TableWriter(out, schema=schema.TRACE_SCHEMA, force=force) as writer, \
                progress(desc=f"writing {out.name}", unit="ev", unit_scale=True, quiet=quiet) as bar:
            for df in source:
                writer.write(tally.add(df))
                bar.update(df.height)
            # the metadata goes in last: the hashes are waited for only now (a 1.4 GB input
            # hashes in ~1.2 s, and waiting for it first held the whole pipeline back)
            info = (agree.first[1] if agree.first else TraceInfo()).replace(inputs=_input_files(ins, hashes))
            writer.finish(info, {"order": order})
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
        stop_hashing.set()  # done by now unless an error ended the ingest early
        hasher.shutdown(wait=False, cancel_futures=True)
        if spill_dir is not None:
            shutil.rmtree(spill_dir, ignore_errors=True)
    span = (tally.tmin, tally.tmax) if tally.tmin is not None else None
    types, notes = _guest_types(ins)
    for src, c in types:
        if tally.guest_mmu:
            c["mmu_off"] = tally.mmu_off.get(src, 0)
            c["untyped_mmu_on"] = tally.untyped_mmu_on.get(src, 0)
    return IngestSummary(out, tally.n, info, dict(tally.op), dict(tally.agent), span, order, types, notes)


def _stream_upfront(ins: list[_Input]) -> Iterator[pl.DataFrame]:
    def batches() -> Iterator[pl.DataFrame]:
        for inp in ins:
            for df in inp.result.batches:
                yield _conform(df, keep_coded=True)

    return prefetch(batches(), depth=8)


def prefetch(batches: Iterator[pl.DataFrame], depth: int = 2) -> "_Prefetch":
    """Run ``batches`` in a thread, ``depth`` ahead of the consumer, starting now.

    Parsing (polars) and writing (pyarrow) both release the GIL, so on two
    cores reading batch n+1 overlaps writing batch n. Errors reach the consumer
    in order; a consumer that stops early (or calls ``close``) stops the producer.
    """
    return _Prefetch(batches, depth)


class _Prefetch:
    _DONE = object()

    def __init__(self, batches: Iterator[pl.DataFrame], depth: int) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._batches = batches
        self._thread = threading.Thread(target=self._produce, name="tracekit-ingest-read", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        q, stop = self._q, self._stop
        try:
            for b in self._batches:
                while not stop.is_set():
                    try:
                        q.put(("ok", b), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("ok", self._DONE))
        except BaseException as e:  # forwarded to the consumer, raised there
            q.put(("err", e))

    def __iter__(self) -> Iterator[pl.DataFrame]:
        try:
            while True:
                kind, item = self._q.get()
                if kind == "err":
                    raise item
                if item is self._DONE:
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # drain so a blocked producer can see the stop flag
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass


def _spill_all(ins: list[_Input], options: ImportOptions, *, concat: bool, agree: _Agreement,
               spill_dir: Path, page_walk: bool = False):
    """Spill every input; yields, per input (or one for the merge), a function giving its batches."""
    merge = len(ins) > 1 and not concat
    files = []
    for inp in ins:
        order = _TimeOrder(inp.src) if merge else None
        f = spill_dir / f"input-{inp.index}.parquet"

        def checked(frames: Iterable[pl.DataFrame]) -> Iterator[pl.DataFrame]:
            for df in frames:
                df = _conform(df)
                if order is not None:
                    order.check(df)
                yield df

        written = _spill(f, checked(_read(inp, options)))
        agree.add(inp.src, inp.result.info)
        if written:
            if page_walk and inp.format in PAGE_WALK_FORMATS:
                _walk_spilled(f, inp)
            files.append(f)
    if merge:
        yield lambda: _merge_spilled(files)
    else:
        for f in files:
            yield (lambda f=f: (pl.from_arrow(b) for b in pq.ParquetFile(f).iter_batches(batch_size=MERGE_BATCH)))


# --------------------------------------------------------------------------
# Guest page-table walk (issue 7 item 4): after the importer (and its --guest-map),
# per input: a guest's page tables, TTBR/TCR/SCTLR writes and accesses are all in the
# guest-side input, in their recorded order; a host-side log merged with it holds no
# guest register values. Only recorded formats, and only when the input turns a
# vCPU's MMU on with a TTBR value recorded (a scan of two columns otherwise).

#: Formats whose recordings can hold the guest's TTBR/TCR values and page-table stores.
PAGE_WALK_FORMATS = frozenset({"qemu-log", "qemu-plugin", "qemu-simpletrace", "ftrace-text"})


def _walk_counts(inp: _Input) -> tuple[dict[str, int], bool]:
    """The counts to continue: the importer's guest-map tally if it made one (then the walk
    only adds), else a fresh one (the walk counts the accesses itself)."""
    gm = inp.result.summary.get("guest_map") if inp.result is not None else None
    return (dict(gm), False) if gm else ({}, True)


def _walk_done(inp: _Input, typing: Any, counts: dict[str, int]) -> None:
    from .importers.page_tables import record_walk

    notes: list[str] = []
    record_walk(typing, counts, notes)
    inp.result.summary["page_tables"] = counts
    if notes:
        inp.result.summary["page_table_notes"] = notes


def _spill(path: Path, frames: Iterable[pl.DataFrame]) -> bool:
    """Write ``frames`` to the scratch Parquet ``path`` (lz4: read back once, soon); False if none came."""
    writer = None
    try:
        for df in frames:
            table = df.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="lz4")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return writer is not None


def _walk_spilled(f: Path, inp: _Input) -> None:
    """Type the spilled input ``f`` from its page tables; rewrite it batch by batch."""
    from .importers.page_tables import build_typing

    typing = build_typing(pl.scan_parquet(f))
    if typing is None:
        return
    counts, base = _walk_counts(inp)
    tmp = f.with_name(f.stem + ".walked.parquet")

    def typed() -> Iterator[pl.DataFrame]:
        offset = 0
        for b in pq.ParquetFile(f).iter_batches(batch_size=MERGE_BATCH):
            df = typing.apply(pl.DataFrame(pl.from_arrow(b)), counts, offset=offset, base_counts=base)
            offset += df.height
            yield df

    _spill(tmp, typed())
    os.replace(tmp, f)
    _walk_done(inp, typing, counts)


def _walk_frame(df: pl.DataFrame, inp: _Input) -> pl.DataFrame:
    """``_walk_spilled`` for an input held in memory."""
    from .importers.page_tables import build_typing

    typing = build_typing(df)
    if typing is None:
        return df
    counts, base = _walk_counts(inp)
    df = typing.apply(df, counts, base_counts=base)
    _walk_done(inp, typing, counts)
    return df


def _guest_types(ins: list[_Input]) -> tuple[list[tuple[str, dict[str, int]]], list[str]]:
    """Per input, the typing tally (after the walk when it ran, else the guest map's) and notes."""
    types, notes = [], []
    for inp in ins:
        summ = inp.result.summary if inp.result is not None else {}
        c = summ.get("page_tables") or summ.get("guest_map")
        if c:
            types.append((inp.src, c))
        notes.extend(f"{inp.src}: {n}" if not n.startswith(inp.src) else n for n in summ.get("page_table_notes", []))
    return types, notes



def ingest_frame(inputs: PathLike | Sequence[PathLike], *, format: str | None = None, concat: bool = False,
                 options: ImportOptions | None = None, page_walk: bool = True) -> tuple[pl.DataFrame, TraceInfo]:
    """The events and settings of ``inputs``, in memory (what ``ingest`` would write)."""
    paths = _paths(inputs)
    options = options or ImportOptions()
    ins = _open_inputs(paths, format, options)
    agree = _Agreement()
    merge = len(ins) > 1 and not concat
    frames = []
    for inp in ins:
        order = _TimeOrder(inp.src) if merge else None
        parts = []
        for df in _read(inp, options):
            df = _conform(df)
            if order is not None:
                order.check(df)
            parts.append(df)
        agree.add(inp.src, inp.result.info)
        df = pl.concat(parts, how="vertical_relaxed") if parts else \
            schema.conform(pl.DataFrame(), schema.TRACE_SCHEMA).drop("seq")
        if page_walk and inp.format in PAGE_WALK_FORMATS:
            df = _walk_frame(df, inp)
        frames.append(df.with_columns(_input=pl.lit(inp.index, dtype=pl.UInt32),
                                      _row=pl.int_range(0, df.height, dtype=pl.UInt64)))
    events = pl.concat(frames, how="vertical_relaxed")
    if merge:
        events = events.sort(["time", "_input", "_row"])
    events = events.drop("_input", "_row").with_columns(seq=pl.int_range(0, events.height, dtype=pl.UInt64))
    info = (agree.first[1] if agree.first else TraceInfo()).replace(inputs=_input_files(ins))
    return schema.conform(events, schema.TRACE_SCHEMA), info


# --------------------------------------------------------------------------
# Export to the scenario format


def _header_lines(info: TraceInfo, source: str) -> list[str]:
    out = [
        f"# exported by tracekit from {source}",
        "@tracekit 1",
        f"@line-size {info.line_size}",
        f"@stage2 {'on' if info.stage2 else 'off'}",
        f"@fwb {'on' if info.fwb else 'off'}",
    ]
    for r in info.regions:
        out.append(f"@region {r.name} 0x{r.base:x} 0x{r.size:x} {r.kind}" + (" shared" if r.shared else "")
                   + f" s2={r.s2} host={r.host}")
    for d in info.devices:
        out.append(f"@device {d.name} {'coherent' if d.coherent else 'noncoherent'}")
    return out


def _hex(col: str) -> pl.Expr:
    """'0x…' of a uint64 column (vectorised: two 32-bit halves, no Python per row)."""
    c = pl.col(col)
    hi = (c // (1 << 32)).cast(pl.UInt32)
    lo = (c % (1 << 32)).cast(pl.UInt32)
    return pl.when(c.is_not_null()).then(pl.concat_str(pl.lit("0x"), _hex32(hi, lo)))


def _hex32(hi: pl.Expr, lo: pl.Expr) -> pl.Expr:
    digits = "0123456789abcdef"
    parts = []
    for shift in range(28, -1, -4):
        parts.append(((hi // (1 << shift)) % 16).cast(pl.UInt8))
    for shift in range(28, -1, -4):
        parts.append(((lo // (1 << shift)) % 16).cast(pl.UInt8))
    chars = [p.replace_strict(list(range(16)), list(digits), return_dtype=pl.String) for p in parts]
    return pl.concat_str(chars).str.strip_chars_start("0").str.replace(r"^$", "0")


def _event_lines(df: pl.DataFrame) -> pl.Series:
    """One scenario line per event (vectorised string building)."""
    op = pl.col("op")
    access = op.is_in(["read", "write", "ifetch"])
    args = (
        pl.when(access).then(pl.concat_str(_hex("addr"), pl.col("size").cast(pl.String), separator=" "))
        .when(op == "cmo").then(pl.concat_str(pl.col("cmo"), _hex("addr"), pl.col("size").cast(pl.String),
                                               separator=" ", ignore_nulls=True))
        .when(op == "sysreg").then(pl.concat_str(pl.col("sysreg"), _hex("value"), separator=" "))
        .when(op.is_in(["barrier", "marker"])).then(pl.col("detail").str.replace_all("#", " ", literal=True))
    )
    # A guest access with the MMU on that recorded no type cannot be written as a
    # scenario without one: it is written attr=wb (the type the resolver assumes).
    keys = pl.concat_str(
        pl.when(pl.col("attr").is_not_null()).then(pl.format("attr={}", pl.col("attr")))
        .when(pl.col("_untyped")).then(pl.lit("attr=wb")),
        pl.when(pl.col("attr_index").is_not_null()).then(pl.format("idx={}", pl.col("attr_index"))),
        pl.when(op != "sysreg").then(pl.when(pl.col("value").is_not_null()).then(
            pl.concat_str(pl.lit("value="), _hex("value")))),
        separator=" ", ignore_nulls=True,
    )
    line = pl.concat_str(
        pl.when(pl.col("time").is_not_null()).then(pl.format("t={}", pl.col("time").cast(pl.String))),
        pl.col("agent"), op, args, pl.when(keys != "").then(keys),
        pl.when(pl.col("_untyped")).then(pl.lit("# type not recorded: assumed wb")),
        separator=" ", ignore_nulls=True,
    )
    return df.select(line.alias("line"))["line"]


def export(trace_path: PathLike, output_tkt: PathLike, *, force: bool = False, quiet: bool = True) -> Path:
    """Write the trace ``trace_path`` as a scenario (``.tkt``) whose ingest gives the same events.

    Phases become ``@phase`` lines. Two things cannot be written exactly and are
    adapted: a ``#`` inside a barrier/marker text becomes a space, and a guest
    access with its MMU on and no recorded type is written ``attr=wb`` (with a
    comment saying so), since a scenario requires a type there.
    """
    from .trace import read_info

    info = read_info(trace_path)
    out = schema.check_output(output_tkt, force=force)
    pf = pq.ParquetFile(trace_path)
    state = {"phase": None, "sctlr": {}}
    with schema.AtomicPath(out, force=force) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(_header_lines(info, str(trace_path))) + "\n")
        with progress(total=pf.metadata.num_rows, desc=f"writing {out.name}", unit="ev", unit_scale=True,
                      quiet=quiet) as bar:
            for batch in pf.iter_batches(batch_size=MERGE_BATCH):
                df = pl.from_arrow(batch)
                assert isinstance(df, pl.DataFrame)
                df = schema.conform(df, schema.TRACE_SCHEMA)  # text as strings (a file may hold Enums)
                df = _mark_untyped(df, state["sctlr"])
                lines = _event_lines(df)
                prev = pl.concat([pl.Series([state["phase"]], dtype=pl.String), df["phase"].head(-1)])
                if df.height:
                    state["phase"] = df["phase"][-1]
                changed = df.select((pl.col("phase").ne_missing(prev)).alias("c"))["c"]
                phase_line = pl.when(pl.col("phase").is_null()).then(pl.lit("@phase")).otherwise(
                    pl.format("@phase {}", pl.col("phase")))
                text = df.with_columns(line=lines, changed=changed).select(
                    pl.when(pl.col("changed")).then(pl.concat_str(phase_line, pl.lit("\n"), pl.col("line")))
                    .otherwise(pl.col("line"))
                )
                body = "\n".join(text.to_series().to_list())
                if body:
                    f.write(body + "\n")
                bar.update(df.height)
    return out


def _mark_untyped(df: pl.DataFrame, sctlr: dict[str, int]) -> pl.DataFrame:
    """Column ``_untyped``: a guest access with its vCPU's MMU on and neither attr nor attr_index."""
    from .validate import Semantics

    sem = Semantics(TraceInfo(), "")
    sem._sctlr = sctlr
    on = sem._mmu_on(df)
    return df.with_columns(_untyped=(on & (pl.col("side") == "guest") & pl.col("op").is_in(["read", "write", "ifetch"])
                                     & pl.col("attr").is_null() & pl.col("attr_index").is_null()))
