"""Dinero IV traces: extended din (``-informat D``) and traditional din (``-informat d``).

Extended: ``ATYPE ADDRESS SIZE [ignored...]``, ATYPE one of ``r w i m c v``
(case-insensitive), ADDRESS and SIZE hex with optional ``0x``; SIZE 0 only
for ``c``/``v`` (whole cache). Traditional (Dinero III): ``LABEL ADDRESS
[ignored...]``, LABEL 0 read, 1 write, 2 instruction fetch, 3 misc, 4
copy-back, 5 invalidate; no size: Dinero IV takes 4 bytes at ``ADDRESS & ~3``
(Dinero IV ``tracein.c``, ``xdinfmt.c``, ``dinfmt.c``).

Mapping: r/0 and m/3 -> read, w/1 -> write, i/2 -> ifetch, c/4 -> ``cmo
dc.cvac`` of the range (clean, no invalidate), v/5 -> ``cmo dc.ivac`` (invalidate,
no clean). A whole-cache ``c``/``v`` (SIZE 0) becomes ``dc.csw``/``dc.isw``: the
model gives set/way operations no coherency effect, except that ``dc.isw`` may
discard dirty data, which is what a Dinero invalidate does.

din traces carry no memory types, no timestamps and usually virtual addresses;
every event is by one agent (``--agent``, i.e. ``ImportOptions.agent``, else
the importer's ``agent=``, ``guest.0`` by default). With the MMU off a guest
access is Device-nGnRnE: give the resolver SCTLR/MAIR or a guest map, or
import as a host agent (``--agent host.sim``).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from .base import ImportOptions, ImportResult
from ._lines import fail_first, finish, hex_u64, read_access_stream

EXT = r"^\s*(?P<t>[rwimcvRWIMCV])\s+(?:0[xX])?(?P<a>[0-9a-fA-F]+)\s+(?:0[xX])?(?P<s>[0-9a-fA-F]+)(?:\s.*)?$"
TRAD = r"^\s*(?P<l>[0-5])\s+(?:0[xX])?(?P<a>[0-9a-fA-F]+)(?:\s.*)?$"


class DinImporter:
    """Dinero IV extended (D) and traditional (d) din text."""

    format = "din"
    description = "Dinero IV din traces (extended 'r ADDR SIZE' and traditional 'LABEL ADDR')"
    suffixes = (".din", ".xdin")
    settings_upfront = True  # TraceInfo is known before any event

    def __init__(self, agent: str = "guest.0"):
        self.agent = agent

    def detect(self, head: bytes, path: Path) -> bool:
        import re
        lines = [ln for ln in head.decode("utf-8", "replace").splitlines()[:20] if ln.strip()]
        return bool(lines) and all(re.match(EXT, ln) or re.match(TRAD, ln) for ln in lines[:-1] or lines)

    def read(self, path: Path, options: ImportOptions) -> ImportResult:
        return read_access_stream(path, options, fmt=self.format, default_agent=self.agent,
                                  note="no memory types, no timestamps; addresses as recorded", decode=_decode)


def _decode(lines: pl.DataFrame, src: str, agent: str, counts: dict[str, int]) -> pl.DataFrame:
    return _decode_lines(lines.filter(~pl.col("line").str.contains(r"^\s*$")), src, agent, counts)


def _decode_lines(df: pl.DataFrame, src: str, agent: str, counts: dict[str, int]) -> pl.DataFrame:
    e = pl.col("line").str.extract_groups(EXT)
    d = pl.col("line").str.extract_groups(TRAD)
    df = df.with_columns(e.alias("e"), d.alias("d"))
    t = pl.col("e").struct.field("t").str.to_lowercase()
    lab = pl.col("d").struct.field("l")
    is_ext = t.is_not_null()
    is_trad = lab.is_not_null()
    fail_first(df.filter(~is_ext & ~is_trad), src,
               "a din record 'ATYPE ADDRESS SIZE' (ATYPE r w i m c v) or 'LABEL ADDRESS' (LABEL 0-5)")
    typ = pl.when(is_ext).then(t).otherwise(
        lab.replace_strict({"0": "r", "1": "w", "2": "i", "3": "m", "4": "c", "5": "v"}, default=None))
    addr = pl.when(is_ext).then(hex_u64(pl.col("e").struct.field("a"))).otherwise(
        hex_u64(pl.col("d").struct.field("a")) & ~pl.lit(3, pl.UInt64))
    size = pl.when(is_ext).then(hex_u64(pl.col("e").struct.field("s"))).otherwise(pl.lit(4, pl.UInt64))
    df = df.with_columns(typ.alias("typ"), addr.alias("addr"), size.alias("size"))
    fail_first(df.filter((pl.col("size") == 0) & pl.col("typ").is_in(["r", "w", "i", "m"])), src,
               "a non-zero SIZE for an access (SIZE 0 is only for c and v: the whole cache)")
    fail_first(df.filter(pl.col("addr").is_null() | pl.col("size").is_null()), src, "hex ADDRESS and SIZE below 2^64")
    fail_first(df.filter(pl.col("addr") + pl.col("size") < pl.col("addr")), src, "a range below 2^64")
    whole = pl.col("size") == 0
    op = pl.col("typ").replace_strict({"r": "read", "m": "read", "w": "write", "i": "ifetch", "c": "cmo", "v": "cmo"})
    cmo = (pl.when(pl.col("typ") == "c").then(pl.when(whole).then(pl.lit("dc.csw")).otherwise(pl.lit("dc.cvac")))
           .when(pl.col("typ") == "v").then(pl.when(whole).then(pl.lit("dc.isw")).otherwise(pl.lit("dc.ivac"))))
    for k, n in df.group_by("typ").len().iter_rows():
        counts[f"records_{k}"] = counts.get(f"records_{k}", 0) + int(n)
    out = df.select(
        "src_line", pl.lit(agent).alias("agent"), op.alias("op"),
        pl.when(~whole).then(pl.col("addr")).alias("addr"), pl.when(~whole).then(pl.col("size")).alias("size"),
        cmo.alias("cmo"),
        pl.when(pl.col("typ") == "m").then(pl.lit("din misc (read without prefetch)")).alias("detail"))
    return finish(out, src)


IMPORTER = DinImporter()
