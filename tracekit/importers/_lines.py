"""Shared plumbing of the text importers: read a file as batches of lines, build trace-v1 rows.

Text inputs can have tens of millions of lines, so they are read in blocks of
bytes cut at a newline and turned into one polars frame of lines per block
(``line``: the text without its end of line, ``src_line``: 1-based number).
Every importer classifies and decodes those frames with polars string
kernels; nothing loops over lines in Python.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import polars as pl

from .._progress import progress
from ..errors import TraceFormatError, at

#: Bytes read per batch (about 0.5-1 M lines of QEMU log).
BATCH_BYTES = 48 << 20

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
                      desc: str = "") -> Iterator[pl.DataFrame]:
    """Yield frames ``(line: str, src_line: u64)`` covering the file in order.

    A final line without a newline is kept; ``\\r`` before a newline is dropped;
    bytes that are not UTF-8 are replaced (U+FFFD) rather than failing the read.
    """
    batch_bytes = batch_bytes or BATCH_BYTES
    size = path.stat().st_size
    first = 1
    carry = b""
    with open(path, "rb") as f, progress(total=size, desc=desc or path.name, unit="B",
                                         unit_scale=True, quiet=quiet) as bar:
        while True:
            block = f.read(batch_bytes)
            bar.update(len(block))
            if not block:
                if carry:
                    yield _frame(carry, first)
                return
            block = carry + block
            cut = block.rfind(b"\n")
            if cut < 0:
                carry = block
                continue
            carry = block[cut + 1:]
            df = _frame(block[:cut], first)
            first += df.height
            yield df


def _frame(block: bytes, first: int) -> pl.DataFrame:
    # polars' CSV reader with a separator and quote that never occur in text logs
    # splits lines on all cores; blank lines come back as nulls (kept: they count).
    if not block:
        lines = pl.Series("line", [""], dtype=pl.String)
    elif b"\x1f" in block:  # the separator occurs: fall back to a plain split
        text = block.decode("utf-8", errors="replace")
        lines = pl.Series("line", [text], dtype=pl.String).str.split("\n").explode()
    else:
        lines = pl.read_csv(io.BytesIO(block), has_header=False, separator="\x1f", quote_char=None,
                            schema={"line": pl.String}, encoding="utf8-lossy",
                            truncate_ragged_lines=True)["line"].fill_null("")
        want = block.count(b"\n") + 1  # the reader drops trailing empty lines: put them back
        if lines.len() < want:
            lines = pl.concat([lines, pl.Series("line", [""] * (want - lines.len()), dtype=pl.String)])
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
