"""Shared plumbing of the text importers: read a file as batches of lines, build trace-v1 rows.

Text inputs can have tens of millions of lines, so they are read in blocks of
bytes cut at a newline and turned into one polars frame of lines per block
(``line``: the text without its end of line, ``src_line``: 1-based number).
Every importer classifies and decodes those frames with polars string
kernels; nothing loops over lines in Python.
"""

from __future__ import annotations

import io
import os
import queue
import stat
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

import polars as pl

from .._progress import progress
from ..errors import TraceFormatError, at

T = TypeVar("T")

#: Bytes read per batch (about 150-250 k lines of QEMU log). Batches this size keep the
#: columns of a batch in cache better than bigger ones and let the read-ahead thread
#: overlap more of the decoding (measured: 16 MB beat 48 MB and 8 MB).
BATCH_BYTES = 16 << 20

#: trace-v1 columns an importer fills (``seq`` is ingest's), with their polars types.
EVENT_COLUMNS: dict[str, pl.DataType] = {
    "time": pl.Float64,
    "agent": pl.String,
    "side": pl.String,
    "op": pl.String,
    "addr": pl.UInt64,
    "size": pl.UInt64,
    "cmo": pl.String,
    "sysreg": pl.String,
    "value": pl.UInt64,
    "attr": pl.String,
    "attr_index": pl.UInt8,
    "phase": pl.String,
    "detail": pl.String,
    "src": pl.String,
    "src_line": pl.UInt64,
    "src_offset": pl.UInt64,
}


def iter_line_batches(path: Path, *, batch_bytes: int | None = None, quiet: bool = True,
                      desc: str = "", prepare: Callable[[pl.DataFrame], T] | None = None) -> Iterator[Any]:
    """Yield frames ``(line: str, src_line: u64)`` covering the file in order.

    A final line without a newline is kept; ``\\r`` before a newline is dropped;
    bytes that are not UTF-8 are replaced (U+FFFD) rather than failing the read.
    The next batch is read (and passed through ``prepare``, when given, whose results
    are yielded instead) in a worker thread while the caller decodes this one:
    polars releases the GIL, so reading and decoding share the cores.
    """
    return prefetch(_line_batches(path, batch_bytes=batch_bytes, quiet=quiet, desc=desc), prepare)


def _line_batches(path: Path, *, batch_bytes: int | None, quiet: bool, desc: str) -> Iterator[pl.DataFrame]:
    batch_bytes = batch_bytes or BATCH_BYTES
    st = path.stat()
    first = 1
    with open(path, "rb") as f, progress(total=st.st_size, desc=desc or path.name, unit="B",
                                         unit_scale=True, quiet=quiet) as bar:
        regular = stat.S_ISREG(st.st_mode)  # (a pipe cannot be read at an offset)
        blocks = _blocks_regular(f.fileno(), batch_bytes) if regular else _blocks_stream(f, batch_bytes)
        for block in blocks:
            bar.update(len(block))
            df = _frame(block, first)
            first += df.height
            yield df


def _blocks_regular(fd: int, batch_bytes: int) -> Iterator[bytes]:
    """Blocks of whole lines (each ends with its newline, except a last line without one).

    The end of a block (the first newline at or after ``batch_bytes``) is found with a
    small read ahead, so each block is read once into its own buffer: no joining of a
    carried partial line, no slicing copy.
    """
    pos = 0
    while True:
        end = pos + batch_bytes
        while True:  # the first newline at or after ``end`` (a line may be longer than one probe)
            probe = os.pread(fd, _PROBE, end)
            nl = probe.find(b"\n")
            if nl >= 0:
                end += nl + 1
                break
            end += len(probe)
            if len(probe) < _PROBE:  # end of file: the last line has no newline
                break
        block = os.pread(fd, end - pos, pos)
        while len(block) < end - pos:  # a short read (not expected for regular files)
            more = os.pread(fd, end - pos - len(block), pos + len(block))
            if not more:
                break
            block += more
        if not block:
            return
        yield block
        pos += len(block)


def _blocks_stream(f: BinaryIO, batch_bytes: int) -> Iterator[bytes]:
    """:func:`_blocks_regular` for pipes and other unseekable inputs: cut at the last newline."""
    carry = b""
    while True:
        block = f.read(batch_bytes)
        if not block:
            if carry:
                yield carry
            return
        block = carry + block
        cut = block.rfind(b"\n")
        if cut < 0:
            carry = block
            continue
        carry = block[cut + 1:]
        yield block[:cut + 1]


def prefetch(items: Iterator[Any], prepare: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """``prepare(x)`` (or ``x``) for each of ``items``, produced one step ahead in a worker thread.

    Order is kept; an exception raised by ``items`` or ``prepare`` is raised here when its
    item is due (so errors come in input order, after everything before them). At most
    one finished item waits, so memory stays bounded (three batches at most: one being
    decoded, one waiting, one being read). Closing this generator early stops the worker.
    """
    q: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: tuple[int, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x in items:
                if not put((0, prepare(x) if prepare is not None else x)):
                    return
            put((1, None))
        except BaseException as e:  # handed to the consumer, raised there
            put((2, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="tracekit-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = q.get()
            if kind == 1:
                return
            if kind == 2:
                raise value
            yield value
    finally:
        stop.set()
        worker.join()


#: Bytes read ahead to find where a block ends.
_PROBE = 64 << 10


def _frame(block: bytes, first: int) -> pl.DataFrame:
    """The lines of ``block`` (whole lines; the last may lack its newline) as a frame."""
    # polars' CSV reader with a separator and quote that never occur in text logs
    # splits lines on all cores; blank lines come back as nulls (kept: they count). The
    # newline ending the block ends its last line: one row per line, as many as newlines
    # (plus the last line when the block does not end with a newline).
    if b"\x1f" in block:  # the separator occurs: fall back to a plain split
        text = block.decode("utf-8", errors="replace")
        lines = pl.Series("line", [text[:-1] if text.endswith("\n") else text], dtype=pl.String) \
            .str.split("\n").explode()
    else:
        lines = pl.read_csv(io.BytesIO(block), has_header=False, separator="\x1f", quote_char=None,
                            schema={"line": pl.String}, encoding="utf8-lossy",
                            truncate_ragged_lines=True)["line"].fill_null("")
    if block.find(b"\r") >= 0:
        lines = lines.str.strip_suffix("\r")
    n = lines.len()
    return pl.DataFrame({"line": lines}).with_columns(
        pl.int_range(first, first + n, dtype=pl.UInt64).alias("src_line"))


def hex_u64(expr: pl.Expr) -> pl.Expr:
    """Hex text (with or without ``0x``) -> u64; null when empty or not hex."""
    return expr.str.strip_prefix("0x").str.strip_prefix("0X").str.to_integer(
        base=16, dtype=pl.UInt64, strict=False)


_HEXDIGITS = {i: "0123456789abcdef"[i] for i in range(16)}


def hex_str(expr: pl.Expr) -> pl.Expr:
    """u64 -> lower-case hex text without ``0x`` and without leading zeros (vectorised)."""
    v = expr.cast(pl.UInt64)
    digits = [(v.floordiv(pl.lit(16 ** (15 - i), pl.UInt64)) % 16).replace_strict(_HEXDIGITS, return_dtype=pl.String)
              for i in range(16)]
    s = pl.concat_str(digits).str.strip_chars_start("0")
    return pl.when(v.is_null()).then(None).when(s == "").then(pl.lit("0")).otherwise(s)


def dec_i64(expr: pl.Expr) -> pl.Expr:
    return expr.str.strip_chars(" ").str.to_integer(base=10, dtype=pl.Int64, strict=False)


def dec_u64(expr: pl.Expr) -> pl.Expr:
    return expr.str.strip_chars(" ").str.to_integer(base=10, dtype=pl.UInt64, strict=False)


def side_expr(agent: pl.Expr) -> pl.Expr:
    """The part of ``agent`` before the first dot (prefix tests: cheaper than a split)."""
    out = pl.when(agent.str.starts_with("guest.")).then(pl.lit("guest"))
    for side in ("host", "dev", "mit"):
        out = out.when(agent.str.starts_with(side + ".")).then(pl.lit(side))
    return out.otherwise(agent.str.split_exact(".", 1).struct.field("field_0"))


def finish(df: pl.DataFrame, src: str) -> pl.DataFrame:
    """Select and type the trace-v1 columns (minus ``seq``); missing ones become null."""
    cols = []
    for name, dtype in EVENT_COLUMNS.items():
        if name == "src":
            cols.append(pl.lit(src, dtype=pl.String).alias("src"))
        elif name in df.columns:
            cols.append(pl.col(name).cast(dtype))
        elif name == "side" and "agent" in df.columns:
            cols.append(side_expr(pl.col("agent")).alias("side"))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    return df.select(cols)


def empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema=EVENT_COLUMNS)


def fail_first(bad: pl.DataFrame, src: str, expected: str, *, line_col: str = "src_line",
               text_col: str = "line") -> None:
    """Raise ``FILE:LINE: expected X, found Y`` for the first row of ``bad`` (if any)."""
    if bad.height == 0:
        return
    row = bad.sort(line_col).row(0, named=True)
    found = row[text_col]
    if found is not None and len(found) > 120:
        found = found[:117] + "..."
    raise TraceFormatError(f"{at(src, int(row[line_col]))}: expected {expected}, found {found!r}")


def head_bytes(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def read_access_stream(path: Path, options: Any, *, fmt: str, default_agent: str, note: str,
                       decode: Callable[[pl.DataFrame, str, str, dict[str, int]], pl.DataFrame]) -> Any:
    """The import of a simulator access stream (din, lackey): one agent (``--agent``, else the
    importer's), settings from the options, each batch of lines decoded by ``decode(lines, src,
    agent, counts)``, ``--guest-map`` applied, the counts put into the summary at the end."""
    from .base import ImportResult
    from .tabular import options_info

    path = Path(path)
    src = str(path)
    agent = options.agent or default_agent
    counts: dict[str, int] = {}
    summary: dict[str, Any] = {"format": fmt, "agent": agent, "note": note}
    gmap = None
    if options.guest_map is not None:
        from .guest_map import load_guest_map
        gmap = load_guest_map(options.guest_map)
    gm_counts: dict[str, int] = {}

    def batches() -> Iterator[pl.DataFrame]:
        from .guest_map import apply_guest_map

        for lines in iter_line_batches(path, quiet=options.quiet, desc=f"reading {path.name}"):
            out = decode(lines, src, agent, counts)
            if out.height:
                yield apply_guest_map(out, gmap, gm_counts) if gmap is not None else out
        summary.update(dict(sorted(counts.items())))
        if gmap is not None:
            summary["guest_map"] = dict(gm_counts)

    return ImportResult(batches=batches(), info=options_info(options, path), summary=summary)
