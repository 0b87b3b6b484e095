"""Guest stage-1 memory types for recorded traces (``--guest-map FILE``).

A recording (QEMU log, execlog, ftrace) says which guest-physical bytes a
vCPU touched, never with which stage-1 memory type. The model needs it once
the guest's MMU is on (with the MMU off every data access is Device-nGnRnE,
which the resolver derives from the recorded SCTLR_EL1 writes). A guest map
states it per guest-physical range, as the guest's page tables would:

TOML::

    [[range]]
    base = 0x40000000     # guest-physical address
    size = "2M"           # bytes: a number, or with K/M/G
    attr = "wb"           # stage-1 type: dev, dev-ngnre, dev-ngre, dev-gre, nc, wt, wb
    # idx = 1             # ... or the MAIR_EL1 AttrIndx (0..7), decoded with the recorded MAIR_EL1
    # phase = "boot"      # optional: only for events of this phase label
    # va = 0x40000000     # optional: the virtual address that maps to base

Text (one range a line, ``#`` comments)::

    0x40000000 2M wb
    0x40800000 2M idx=2 va=0x40800000
    0x48000000 1M nc phase=scanout

Guest accesses that carry neither ``attr`` nor ``attr_index`` take the type of
the range holding their address (phase-specific ranges first). ``va=`` gives
the importers a virtual -> physical translation for data-cache and
instruction-cache maintenance by VA and for instruction fetches (execlog
prints virtual PCs) while the MMU is on.

Accesses left without a type fall to the resolver: MMU off -> Device-nGnRnE;
MMU on -> Write-Back with type_source ``assumed-wb``. The importer summary
says how many accesses got their type from where.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ..errors import TraceFormatError, UsageError, at
from ..model import ATTR_ALIASES
from .tkt import read_text

_SIZE = re.compile(r"^(0x[0-9a-fA-F]+|\d+)([KMG]?)$")


@dataclass(frozen=True)
class GuestRange:
    base: int
    size: int
    attr: str | None = None
    idx: int | None = None
    phase: str | None = None
    va: int | None = None


@dataclass(frozen=True)
class GuestMap:
    ranges: tuple[GuestRange, ...]
    src: str = ""

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {"g_base": [r.base for r in self.ranges], "g_end": [r.base + r.size for r in self.ranges],
             "g_attr": [r.attr for r in self.ranges], "g_idx": [r.idx for r in self.ranges],
             "g_phase": [r.phase for r in self.ranges], "g_va": [r.va for r in self.ranges]},
            schema={"g_base": pl.UInt64, "g_end": pl.UInt64, "g_attr": pl.String, "g_idx": pl.UInt8,
                    "g_phase": pl.String, "g_va": pl.UInt64})


def _num(text: object, where: str, what: str) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        v = text
    else:
        m = _SIZE.match(str(text).strip())
        if not m:
            raise TraceFormatError(f"{where}: expected {what} (a number, 0x hex, optional K/M/G), found {text!r}")
        v = int(m.group(1), 0) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
    if not 0 <= v < 1 << 64:
        raise TraceFormatError(f"{where}: expected {what} from 0 to 2**64 - 1, found {text!r}")
    return v


def _range(d: dict, where: str) -> GuestRange:
    extra = set(d) - {"base", "size", "attr", "idx", "phase", "va"}
    if extra:
        raise TraceFormatError(f"{where}: expected keys base, size, attr|idx, phase, va; found {sorted(extra)}")
    if "base" not in d or "size" not in d:
        raise TraceFormatError(f"{where}: expected base and size, found {sorted(d)}")
    base, size = _num(d["base"], where, "base"), _num(d["size"], where, "size")
    if size <= 0 or base + size > 1 << 64:
        raise TraceFormatError(f"{where}: expected a non-empty range below 2^64, found base {base:#x} size {size:#x}")
    attr = d.get("attr")
    idx = d.get("idx")
    if (attr is None) == (idx is None):
        raise TraceFormatError(f"{where}: expected exactly one of attr= or idx=, found {sorted(d)}")
    if attr is not None and (not isinstance(attr, str) or attr not in ATTR_ALIASES):
        raise TraceFormatError(f"{where}: expected attr one of {', '.join(ATTR_ALIASES)}, found {attr!r}")
    if d.get("phase") is not None and not isinstance(d["phase"], str):
        raise TraceFormatError(f"{where}: expected phase text, found {d['phase']!r}")
    if idx is not None:
        idx = _num(idx, where, "idx")
        if not 0 <= idx <= 7:
            raise TraceFormatError(f"{where}: expected idx 0..7, found {idx}")
    va = _num(d["va"], where, "va") if d.get("va") is not None else None
    return GuestRange(base, size, ATTR_ALIASES.get(attr) if attr else None, idx, d.get("phase"), va)


def load_guest_map(path: Path) -> GuestMap:
    """Read a guest map (TOML when the file has ``[[range]]`` tables, else the text form)."""
    path = Path(path)
    try:
        text = read_text(path)
    except OSError as e:
        raise UsageError(f"{path}: expected a readable guest map, found: {e.strerror}") from None
    ranges: list[GuestRange] = []
    if re.search(r"^\s*\[\[range\]\]", text, re.M):
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise TraceFormatError(f"{path}: expected TOML, found: {e}") from None
        if set(doc) - {"range"}:
            raise TraceFormatError(f"{path}: expected only [[range]] tables, found {sorted(set(doc) - {'range'})}")
        for i, d in enumerate(doc.get("range", []), 1):
            ranges.append(_range(d, f"{path}: range #{i}"))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            where = at(str(path), n)
            tok = line.split()
            if len(tok) < 3:
                raise TraceFormatError(f"{where}: expected 'BASE SIZE attr|idx=N [phase=P] [va=VA]', found {line!r}")
            d: dict = {"base": tok[0], "size": tok[1]}
            for t in tok[2:]:
                if "=" in t:
                    k, v = t.split("=", 1)
                    d[k] = v
                else:
                    d["attr"] = t
            ranges.append(_range(d, where))
    # ranges of one phase must not overlap
    by_phase: dict[str | None, list[GuestRange]] = {}
    for r in ranges:
        by_phase.setdefault(r.phase, []).append(r)
    for ph, rs in by_phase.items():
        rs = sorted(rs, key=lambda r: r.base)
        for a, b in zip(rs, rs[1:]):
            if b.base < a.base + a.size:
                raise TraceFormatError(f"{path}: expected ranges that do not overlap, found {a.base:#x}+{a.size:#x} "
                                       f"and {b.base:#x}+{b.size:#x}" + (f" (phase {ph})" if ph else ""))
    return GuestMap(tuple(ranges), str(path))


def _lookup(keys: pl.DataFrame, ranges: pl.DataFrame, key: str, lo: str, hi: str) -> pl.DataFrame:
    """For each row of ``keys`` (``_i``, ``key``), the range with lo <= key < hi (or nulls)."""
    if ranges.height == 0 or keys.height == 0:
        return keys
    j = keys.sort(key).join_asof(ranges.sort(lo), left_on=key, right_on=lo, strategy="backward",
                                 check_sortedness=False)
    inside = pl.col(key) < pl.col(hi)
    return j.with_columns([pl.when(inside).then(pl.col(c)).alias(c) for c in ranges.columns])


def apply_guest_map(df: pl.DataFrame, gmap: GuestMap, counts: dict[str, int]) -> pl.DataFrame:
    """Fill ``attr``/``attr_index`` of untyped guest accesses from ``gmap`` (vectorised as-of join)."""
    acc = (pl.col("side") == "guest") & pl.col("op").is_in(["read", "write", "ifetch"]) & pl.col("addr").is_not_null()
    df = df.with_row_index("_i")
    untyped = acc & pl.col("attr").is_null() & pl.col("attr_index").is_null()
    n_acc = df.filter(acc).height
    n_untyped = df.filter(untyped).height
    counts["guest_accesses"] = counts.get("guest_accesses", 0) + n_acc
    counts["typed_by_input"] = counts.get("typed_by_input", 0) + n_acc - n_untyped
    keys = df.filter(untyped).select("_i", "addr", "phase")
    ranges = gmap.frame()
    found = []
    phased = ranges.filter(pl.col("g_phase").is_not_null())
    if phased.height and keys.height:
        for ph in phased["g_phase"].unique().to_list():
            k = keys.filter(pl.col("phase") == ph)
            hit = _lookup(k, phased.filter(pl.col("g_phase") == ph), "addr", "g_base", "g_end")
            if "g_base" in hit.columns:
                hit = hit.filter(pl.col("g_base").is_not_null())
                found.append(hit.select("_i", "g_attr", "g_idx"))
                keys = keys.join(hit.select("_i"), on="_i", how="anti")
    plain = ranges.filter(pl.col("g_phase").is_null())
    hit = _lookup(keys, plain, "addr", "g_base", "g_end")
    if "g_base" in hit.columns:
        found.append(hit.filter(pl.col("g_base").is_not_null()).select("_i", "g_attr", "g_idx"))
    if found:
        typed = pl.concat(found)
        df = df.join(typed, on="_i", how="left")
        counts["typed_by_guest_map_attr"] = counts.get("typed_by_guest_map_attr", 0) + typed.filter(
            pl.col("g_attr").is_not_null()).height
        counts["typed_by_guest_map_idx"] = counts.get("typed_by_guest_map_idx", 0) + typed.filter(
            pl.col("g_idx").is_not_null()).height
        df = df.with_columns(pl.coalesce("attr", "g_attr").alias("attr"),
                             pl.coalesce("attr_index", "g_idx").alias("attr_index")).drop("g_attr", "g_idx")
        n_typed = typed.height
    else:
        n_typed = 0
    counts["untyped"] = counts.get("untyped", 0) + n_untyped - n_typed
    return df.sort("_i").drop("_i")


def translate_va(va: pl.DataFrame, gmap: GuestMap | None) -> pl.DataFrame:
    """``va`` frame (``_i``, ``va``) -> adds ``pa`` from the ``va=`` ranges of the map (null outside)."""
    if gmap is None or va.height == 0:
        return va.with_columns(pl.lit(None, pl.UInt64).alias("pa"))
    r = gmap.frame().filter(pl.col("g_va").is_not_null() & pl.col("g_phase").is_null())
    if r.height == 0:
        return va.with_columns(pl.lit(None, pl.UInt64).alias("pa"))
    r = r.select("g_va", (pl.col("g_va") + (pl.col("g_end") - pl.col("g_base"))).alias("g_vend"), "g_base")
    hit = _lookup(va, r, "va", "g_va", "g_vend")
    return hit.with_columns((pl.col("va") - pl.col("g_va") + pl.col("g_base")).alias("pa")).drop(
        "g_va", "g_vend", "g_base")
