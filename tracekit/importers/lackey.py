"""Valgrind Lackey ``--tool=lackey --trace-mem=yes`` output.

``lackey/lk_main.c`` prints ``I  %08lx,%lu`` (instruction fetch), `` L addr,size``
(load), `` S addr,size`` (store) and `` M addr,size`` (modify: a load and a
store of the same bytes by one instruction, e.g. ``inc [mem]``); address lower-case
hex without ``0x``, size decimal. Valgrind's own ``==PID==`` lines are skipped.
``M`` becomes a read followed by a write.

Lackey addresses are *virtual* addresses of one user-space process; there are
no physical addresses, memory types, timestamps or threads (Valgrind
serialises threads). Every event is by one agent (``--agent``, i.e.
``ImportOptions.agent``, else the importer's ``agent=``, ``guest.0`` by
default). Useful to cross-check the cache model against other simulators,
not to study a KVM guest.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from .base import ImportOptions, ImportResult
from ._lines import dec_u64, fail_first, finish, hex_u64, read_access_stream

RECORD = r"^(?:I |\s[LSM])\s+(?P<a>[0-9a-fA-F]+),(?P<s>\d+)\s*$"
START = r"^(?:I\s|\s[LSM]\s)"
BANNER = r"^==\d+=="


class LackeyImporter:
    """valgrind --tool=lackey --trace-mem=yes output."""

    format = "lackey"
    description = "Valgrind Lackey --trace-mem=yes output (I/L/S/M lines; virtual addresses)"
    suffixes = (".lackey",)
    settings_upfront = True  # TraceInfo is known before any event

    def __init__(self, agent: str = "guest.0"):
        self.agent = agent

    def detect(self, head: bytes, path: Path) -> bool:
        import re
        lines = [ln for ln in head.decode("utf-8", "replace").splitlines()[:40] if ln.strip()]
        recs = [ln for ln in lines if not re.match(BANNER, ln)]
        return bool(recs) and all(re.match(RECORD, ln) for ln in recs[:-1] or recs) and (
            any(re.match(BANNER, ln) for ln in lines) or len(recs) >= 2)

    def read(self, path: Path, options: ImportOptions) -> ImportResult:
        return read_access_stream(
            path, options, fmt=self.format, default_agent=self.agent,
            note="virtual addresses of one process; no memory types, no timestamps",
            decode=lambda lines, src, agent, counts: _decode(lines, src, agent, counts, options.strict))


def _decode(lines: pl.DataFrame, src: str, agent: str, counts: dict[str, int], strict: bool) -> pl.DataFrame:
    df = lines.with_columns(
        pl.when(pl.col("line").str.contains(BANNER)).then(pl.lit("valgrind"))
        .when(pl.col("line").str.contains(r"^\s*$")).then(pl.lit("blank"))
        .when(pl.col("line").str.contains(START)).then(pl.lit("record"))
        .otherwise(pl.lit("unknown")).alias("kind"))
    for k, n in df.group_by("kind").len().iter_rows():
        counts[f"lines_{k}"] = counts.get(f"lines_{k}", 0) + int(n)
    if strict:
        fail_first(df.filter(pl.col("kind") == "unknown"), src,
                   "a Lackey line 'I  ADDR,SIZE', ' L|S|M ADDR,SIZE' or a '==PID==' line")
    rec = df.filter(pl.col("kind") == "record").with_columns(
        pl.col("line").str.extract_groups(RECORD).alias("g"),
        pl.col("line").str.slice(0, 2).str.strip_chars().alias("t"))
    fail_first(rec.filter(pl.col("g").struct.field("a").is_null()), src,
               "'I  ADDR,SIZE' or ' L|S|M ADDR,SIZE' (hex address, decimal size)")
    rec = rec.with_columns(hex_u64(pl.col("g").struct.field("a")).alias("addr"),
                           dec_u64(pl.col("g").struct.field("s")).alias("size"))
    fail_first(rec.filter(pl.col("size") == 0), src, "a size of at least 1")
    for k, n in rec.group_by("t").len().iter_rows():
        counts[f"records_{k}"] = counts.get(f"records_{k}", 0) + int(n)
    # M = read then write: one row per access, in order
    rec = rec.with_columns(
        pl.col("t").replace_strict({"I": ["ifetch"], "L": ["read"], "S": ["write"],
                                    "M": ["read", "write"]},
                                   return_dtype=pl.List(pl.String)).alias("op")).explode("op")
    out = rec.select("src_line", pl.lit(agent).alias("agent"), "op", "addr", "size",
                     pl.when(pl.col("t") == "M").then(pl.lit("lackey modify")).alias("detail"))
    return finish(out, src) if out.height else out


IMPORTER = LackeyImporter()
