"""The scenario text format (``.tkt``, docs: ../shared/design/scenario-format.md).

One event per line in the order they happen; ``@`` directives set the trace's
line size, stage 2, FWB, regions and devices, and ``@phase`` labels the events
below it. ``#`` starts a comment anywhere (so the ``#!`` verdict annotations of
the worked vectors are comments here).

How it is read, and why it is fast:

* The directives are few: one ``memchr``-speed pass finds every line whose
  first non-blank character is ``@`` and parses them in Python first, so the
  settings are known before any event is checked, wherever a directive sits.
* The events are parsed in chunks of whole lines with polars string kernels:
  split lines, strip comments, one regex for ``[t=T] AGENT OP REST``, tokens
  of REST split into positional arguments and ``key=value`` keys, then the
  shared typed conversion and semantic checks of :mod:`tracekit.validate`.
  No Python code runs per event line.

Extensions beyond the written spec (needed so that ``tracekit export`` can
write any trace-v1 event): ``marker [TEXT]`` (a free-text event kept for
context); ``barrier [KIND]`` takes the rest of the line as its text, like
``marker`` (so a ``t=`` on those lines goes first); ``ram.civac`` is accepted
as a maintenance operation; a bare ``@phase`` ends the current phase.
"""

from __future__ import annotations

import io
import mmap
from collections import deque
from concurrent.futures import ThreadPoolExecutor
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl

from .._progress import progress
from ..errors import TraceFormatError, TracekitError
from ..model import ATTR_ALIASES, Device, Region, TraceInfo
from ..validate import (
    AGENT_EXPECTED,
    AGENT_RE,
    NUMBER_RE,
    SIZE_RE,
    U64_MAX,
    Check,
    Semantics,
    _q,
    first_error,
    typed_fields,
)
from .base import ImportOptions, ImportResult

FORMAT_VERSION = 1
CHUNK_BYTES = 8 << 20

DIRECTIVES = ("@tracekit", "@line-size", "@stage2", "@fwb", "@region", "@device", "@phase")
KEYS = ("attr", "idx", "value", "t")
#: Positional arguments after the operation: (least, most, usage).
ARITY = {
    "read": (2, 2, "read ADDR SIZE"),
    "write": (2, 2, "write ADDR SIZE"),
    "ifetch": (2, 2, "ifetch ADDR SIZE"),
    "cmo": (1, 3, "cmo OP [ADDR [SIZE]]"),
    "sysreg": (2, 2, "sysreg NAME VALUE"),
}
#: Operations whose arguments are free text up to a comment: the detail column.
TEXT_OPS = ("barrier", "marker")
EVENT_OPS = (*ARITY, *TEXT_OPS)


# --------------------------------------------------------------------------
# Files


def open_input(path: Path) -> None:
    """Refuse a missing path or a directory with a clear message (not an OSError trace)."""
    if path.is_dir():
        raise TraceFormatError(f"{path}: expected a trace file, found a directory")
    if not path.exists():
        raise TracekitError(f"{path}: expected an input file, found no such file")


def count_newlines(data, start: int = 0, end: int | None = None) -> int:
    """Newlines in ``data[start:end]`` (bytes or mmap; vectorised, no copy of an mmap)."""
    view = np.frombuffer(data, dtype=np.uint8)[start:end]
    step = 64 << 20  # bounded temporary memory on big files
    base = start or 0
    total = 0
    for i in range(0, len(view), step):
        total += int(np.count_nonzero(view[i:i + step] == 10))
        release(data, base + i, base + min(len(view), i + step))
    return total


def release(data, start: int = 0, end: int | None = None) -> None:
    """Drop the pages of an mmap range from this process (they count as RSS once read).

    The mapping is read-only, so the pages are only re-read from the page cache
    if touched again; this keeps memory bounded on multi-gigabyte inputs.
    """
    if not isinstance(data, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    end = len(data) if end is None else end
    start -= start % mmap.PAGESIZE
    if end > start:
        data.madvise(mmap.MADV_DONTNEED, start, end - start)


def read_text(path: Path) -> str:
    """A small text file read whole (a mapping, a guest map); a bad byte is an error naming
    its line and byte offset (``decode``)."""
    return decode(Path(path).read_bytes(), str(path), 1, 0)


def decode(data: bytes, src: str, first_line: int, base_offset: int) -> str:
    """UTF-8 text of ``data``; a bad byte is an error naming its line and byte offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        raise TraceFormatError(
            f"{src}:{line}: expected UTF-8 text, found byte 0x{data[e.start]:02x} "
            f"(byte offset {base_offset + e.start})"
        ) from None


# --------------------------------------------------------------------------
# Directives


def py_uint(tok: str, what: str, where: str) -> int:
    if not re.fullmatch(NUMBER_RE, tok):
        raise TraceFormatError(f"{where}: expected {what} (decimal or 0x hex), found '{tok}'")
    v = int(tok, 16) if tok[:2].lower() == "0x" else int(tok)
    if v > U64_MAX:
        raise TraceFormatError(f"{where}: expected {what} below 2^64, found '{tok}'")
    return v


def py_size(tok: str, what: str, where: str) -> int:
    m = re.fullmatch(SIZE_RE, tok)
    if not m:
        raise TraceFormatError(f"{where}: expected {what} (decimal or 0x hex, optional K/M/G), found '{tok}'")
    v = py_uint(m.group(1), what, where) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]
    if v > U64_MAX:
        raise TraceFormatError(f"{where}: expected {what} below 2^64, found '{tok}'")
    return v


def _on_off(tok: list[str], name: str, where: str) -> bool:
    if len(tok) != 2 or tok[1] not in ("on", "off"):
        found = "nothing" if len(tok) < 2 else f"'{' '.join(tok[1:])}'"
        raise TraceFormatError(f"{where}: expected '{name} on' or '{name} off', found {found}")
    return tok[1] == "on"


@dataclass
class Header:
    """The directives of one scenario (or settings) file, with the line each came from."""

    src: str
    line_size: int | None = None
    stage2: bool | None = None
    fwb: bool | None = None
    regions: list[tuple[Region, int]] = field(default_factory=list)
    devices: list[tuple[Device, int]] = field(default_factory=list)
    phases: list[tuple[int, str]] = field(default_factory=list)  # (line, label)
    count: int = 0
    _set_at: dict[str, int] = field(default_factory=dict)

    def _once(self, name: str, value, current, line: int):
        """A setting given twice must agree (a later different value is an error)."""
        if current is not None and current != value:
            raise TraceFormatError(
                f"{self.src}:{line}: expected {name} to agree with line {self._set_at[name]}, found a different value")
        self._set_at.setdefault(name, line)
        return value

    def add(self, text: str, line: int) -> None:
        """Parse one directive line (comment already removed)."""
        where = f"{self.src}:{line}"
        tok = text.split()
        name = tok[0]
        self.count += 1
        if name == "@tracekit":
            if len(tok) != 2 or tok[1] != str(FORMAT_VERSION):
                found = "nothing" if len(tok) < 2 else f"'{' '.join(tok[1:])}'"
                raise TraceFormatError(f"{where}: expected '@tracekit {FORMAT_VERSION}' (format version), found {found}")
        elif name == "@line-size":
            if len(tok) != 2:
                raise TraceFormatError(f"{where}: expected '@line-size N', found '{text}'")
            n = py_uint(tok[1], "a line size", where)
            if n < 4 or n & (n - 1):
                raise TraceFormatError(f"{where}: expected a line size that is a power of two (at least 4), found {n}")
            self.line_size = self._once("@line-size", n, self.line_size, line)
        elif name == "@stage2":
            self.stage2 = self._once("@stage2", _on_off(tok, "@stage2", where), self.stage2, line)
        elif name == "@fwb":
            self.fwb = self._once("@fwb", _on_off(tok, "@fwb", where), self.fwb, line)
        elif name == "@region":
            self._region(tok, where, line)
        elif name == "@device":
            if len(tok) != 3 or tok[2] not in ("coherent", "noncoherent"):
                raise TraceFormatError(f"{where}: expected '@device NAME coherent|noncoherent', found '{text}'")
            if not re.fullmatch(r"[A-Za-z0-9_-]+", tok[1]):
                raise TraceFormatError(f"{where}: expected a device name of letters, digits, _ or -, found '{tok[1]}'")
            for d, dl in self.devices:
                if d.name == tok[1]:
                    raise TraceFormatError(f"{where}: expected a new device name, found '{tok[1]}' (declared at line {dl})")
            self.devices.append((Device(tok[1], tok[2] == "coherent"), line))
        elif name == "@phase":
            label = text[len("@phase"):].strip()
            self.phases.append((line, label or None))  # a bare @phase ends the labelling
        else:
            raise TraceFormatError(f"{where}: expected a directive ({', '.join(DIRECTIVES)}), found '{name}'")

    def _region(self, tok: list[str], where: str, line: int) -> None:
        usage = "'@region NAME BASE SIZE ram|mmio [shared] [s2=TYPE] [host=TYPE]'"
        if len(tok) < 5:
            raise TraceFormatError(f"{where}: expected {usage}, found '{' '.join(tok)}'")
        name, base_t, size_t, kind = tok[1:5]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise TraceFormatError(f"{where}: expected a region name of letters, digits, _ . or -, found '{name}'")
        base = py_uint(base_t, "a region base", where)
        size = py_size(size_t, "a region size", where)
        if kind not in ("ram", "mmio"):
            raise TraceFormatError(f"{where}: expected region kind ram or mmio, found '{kind}'")
        if size == 0:
            raise TraceFormatError(f"{where}: expected a region size of at least 1, found 0")
        if base + size > 1 << 64:
            raise TraceFormatError(f"{where}: expected a region below 2^64, found {base_t} + {size_t}")
        shared, s2, host = False, None, None
        for t in tok[5:]:
            if t == "shared":
                shared = True
            elif t.startswith("s2=") and t[3:] in ATTR_ALIASES:
                s2 = t[3:]
            elif t.startswith("host=") and (t[5:] in ATTR_ALIASES or t[5:] == "none"):
                host = t[5:]
            else:
                raise TraceFormatError(
                    f"{where}: expected shared, s2=wb|wt|nc|dev or host=wb|wt|nc|dev|none, found '{t}'")
        for r, rl in self.regions:
            if r.name == name:
                raise TraceFormatError(f"{where}: expected a new region name, found '{name}' (declared at line {rl})")
            if base < r.end and r.base < base + size:
                raise TraceFormatError(
                    f"{where}: expected regions that do not overlap, found {name} [0x{base:x}, 0x{base + size:x}) "
                    f"overlapping {r.name} [0x{r.base:x}, 0x{r.end:x}) (line {rl})")
        self.regions.append((Region.make(name, base, size, kind, s2=s2, host=host, shared=shared), line))

    def info(self, options: ImportOptions | None = None) -> TraceInfo:
        """The trace settings: the file's, overridden by any option given."""
        o = options or ImportOptions()
        return TraceInfo(
            line_size=o.line_size or self.line_size or 64,
            stage2=o.stage2 if o.stage2 is not None else (self.stage2 if self.stage2 is not None else True),
            fwb=o.fwb if o.fwb is not None else bool(self.fwb),
            regions=tuple(o.regions) if o.regions is not None else tuple(r for r, _ in self.regions),
            devices=tuple(o.devices) if o.devices is not None else tuple(d for d, _ in self.devices),
        )


def scan_directives(data, src: str) -> Header:
    """Every directive of ``data`` (bytes or mmap), found by looking only at ``@`` bytes.

    A directive is a line whose first non-blank character is ``@``; the settings
    it declares apply to the whole file, wherever it sits.
    """
    header = Header(src)
    pos, line, last = 0, 1, 0
    n = len(data)
    while True:
        at = data.find(b"@", pos)
        if at < 0:
            break
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        end = n if end < 0 else end
        pos = end + 1 if end < n else n
        if data[start:at].strip(b" \t\r\f\v"):
            continue  # '@' inside an event or a comment
        line += count_newlines(data, last, start)
        last = start
        text = decode(bytes(data[start:end]), src, line, start)
        code = text.split("#", 1)[0].strip()
        header.add(code, line)
        if pos >= n:
            break
    return header


def read_settings(path: str | os.PathLike[str]) -> Header:
    """A settings side file: a scenario header of ``@`` directives only (no events)."""
    p = Path(path)
    open_input(p)
    data = p.read_bytes()
    src = str(path)
    text = decode(data, src, 1, 0)
    header = Header(src)
    for i, raw in enumerate(text.split("\n"), 1):
        code = raw.split("#", 1)[0].strip()
        if not code:
            continue
        if not code.startswith("@"):
            raise TraceFormatError(f"{src}:{i}: expected only @ directives in a settings file, found '{code}'")
        header.add(code, i)
    return header


# --------------------------------------------------------------------------
# Events


def _byte_chunks(data, src: str, quiet: bool) -> Iterator[tuple[bytes, int]]:
    """(bytes, first line) for pieces of ``data`` cut at line ends, each ~CHUNK_BYTES.

    Bytes, not text: the fast tokenizer reads bytes, and text is decoded only
    for the few lines that need the exact path. A piece that is not ASCII is
    checked to be UTF-8 (a bad byte is an error naming its line and offset).
    """
    n = len(data)
    pos, line = 0, 1
    with progress(total=n, desc=f"reading {Path(src).name}", unit="B", unit_scale=True, quiet=quiet) as bar:
        while pos < n:
            end = min(n, pos + CHUNK_BYTES)
            if end < n:
                nl = data.find(b"\n", end)
                end = n if nl < 0 else nl + 1
            raw = bytes(data[pos:end])
            release(data, pos, end)
            if not raw.isascii():
                decode(raw, src, line, pos)  # a bad byte names its line and offset
            yield raw, line
            line += raw.count(b"\n")
            bar.update(end - pos)
            pos = end


#: One pass over a line: [t=T] AGENT OP, up to four positional arguments (no '='),
#: then the keys, then a comment. Blank, comment-only and directive lines give no agent
#: or an agent starting with '@'.
LINE_RE = (
    r"^\s*(?:t=(?P<t0>[^\s#]*)\s+)?(?P<agent>[^\s#]+)?(?:\s+(?P<op>[^\s#]+))?"
    r"(?:\s+(?P<a0>[^\s=#]+))?(?:\s+(?P<a1>[^\s=#]+))?(?:\s+(?P<a2>[^\s=#]+))?(?:\s+(?P<a3>[^\s=#]+))?"
    r"(?P<keys>(?:\s[^#]*)?)(?:#.*)?$"
)
TEXT_RE = r"^\s*(?:t=[^\s#]*\s+)?[^\s#]+\s+(?:barrier|marker)(?:\s+(?P<text>[^#]*))?"


def _key(keys: pl.Expr, name: str) -> pl.Expr:
    return keys.str.extract(rf"(?:^|\s){name}=(\S*)", 1)


def _bad_keys(keys: str | None) -> str:
    """The message for a key part that is not a set of distinct known keys (one row only)."""
    seen = set()
    for tok in (keys or "").split():
        name = tok.split("=", 1)[0] if "=" in tok else None
        if name is None:
            return f"expected key=value after the arguments, found '{tok}'"
        if name not in KEYS:
            return f"expected a key ({', '.join(k + '=' for k in KEYS)}), found '{tok}'"
        if name in seen:
            return f"expected each key once, found {name}= given twice"
        seen.add(name)
    return "expected distinct known keys"  # pragma: no cover


def _tokens_regex(lines: pl.DataFrame) -> pl.LazyFrame:
    """Tokens of every line by one regex: any spacing, comments anywhere."""
    lf = (
        lines.lazy()
        .with_columns(pl.col("raw").str.extract_groups(LINE_RE).alias("g"))
        .unnest("g")
        .filter(pl.col("agent").is_not_null() & ~pl.col("agent").str.starts_with("@"))
    )
    op, keys = pl.col("op"), pl.col("keys")
    is_text = op.is_in(list(TEXT_OPS))  # free text: keys are part of the text
    return lf.with_columns(
        *[pl.when(~is_text).then(_key(keys, k)).alias(c)
          for k, c in (("t", "t_key"), ("attr", "attr"), ("idx", "attr_index"), ("value", "value_key"))],
        keys.str.count_matches(r"\S+").alias("nkeys"),
        (pl.col("a0").is_not_null().cast(pl.Int8) + pl.col("a1").is_not_null().cast(pl.Int8)
         + pl.col("a2").is_not_null().cast(pl.Int8) + pl.col("a3").is_not_null().cast(pl.Int8)).alias("npos"),
        pl.when(is_text).then(pl.col("raw").str.extract(TEXT_RE, 1).str.strip_chars()).alias("marker_text"),
    )


def parse_events(text: str | bytes, first_line: int, *, src: str, line_size: int,
                 phases: list[tuple[int, str | None]], check=None) -> pl.DataFrame:
    """The event lines of ``text`` as trace-v1 columns (no seq), checked for syntax.

    Raises TraceFormatError naming the first bad line; ``check`` (the semantic
    checks) runs on the lines before it first, so the earliest error wins.

    Lines spelled the canonical way (tokens split by single spaces, no comment)
    take a fast path: split into tokens by polars' CSV reader, checked with
    cheap kernels (:meth:`Fields.fast`). Every other line (comments, tabs,
    markers, directives, blank lines, and any line the fast path doubts) goes
    through the one-regex path below, which gives the exact messages.
    """
    fields = typed_fields(line_size=line_size)
    data = text.encode() if isinstance(text, str) else text
    fast = _fast_events(data, first_line, fields)
    if fast is None:  # doubt about the whole chunk: the exact path decides everything
        lines = _line_frame(data, first_line)
        return _finish(_exact_events(lines, fields, src, check, None, phases), src, phases)
    good, slow = fast
    if slow.len():
        lines = _lines_at(data, first_line, slow)
        rest = _exact_events(lines, fields, src, check, good, phases)
        if rest.height:
            good = _merge_lines(good, rest)
    return _finish(good, src, phases)


def _lines_at(data: bytes, first_line: int, wanted: pl.Series) -> pl.DataFrame:
    """``(src_line, raw)`` of the lines ``wanted`` (sorted) of a chunk."""
    if wanted.len() > 4096:
        frame = _line_frame(data, first_line)
        return frame.select(pl.all().gather((wanted - first_line).cast(pl.Int64)))
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    idx = (wanted - first_line).to_numpy().astype(np.int64)
    raw = []
    for i in idx.tolist():
        start = int(ends[i - 1]) + 1 if i > 0 else 0
        end = int(ends[i]) if i < len(ends) else len(data)
        raw.append(data[start:end].decode("utf-8"))
    return pl.DataFrame({"src_line": wanted.cast(pl.UInt64), "raw": pl.Series(raw, dtype=pl.String)})


def _merge_lines(good: pl.DataFrame, rest: pl.DataFrame) -> pl.DataFrame:
    """Two frames sorted by src_line as one (a few rest rows are spliced in by position)."""
    if rest.height > 1024:
        return good.merge_sorted(rest, key="src_line")
    at = good["src_line"].search_sorted(rest["src_line"], side="left").to_list()
    pieces, prev, i = [], 0, 0
    while i < len(at):
        j = i
        while j < len(at) and at[j] == at[i]:
            j += 1
        if at[i] > prev:
            pieces.append(good.slice(prev, at[i] - prev))
        pieces.append(rest.slice(i, j - i))
        prev, i = at[i], j
    if prev < good.height:
        pieces.append(good.slice(prev))
    return pl.concat(pieces, rechunk=False)


def _line_frame(data: bytes, first_line: int) -> pl.DataFrame:
    """``(src_line, raw)``: the lines of a chunk (a final newline ends the last line)."""
    raw = pl.Series([data.decode("utf-8")], dtype=pl.String).str.split("\n").explode()
    if data.endswith(b"\n"):
        raw = raw.head(raw.len() - 1)
    return pl.DataFrame({"raw": raw}).with_row_index("src_line", offset=first_line).with_columns(
        pl.col("src_line").cast(pl.UInt64))


#: Tokens a canonical line may have (a further column flags longer lines).
FAST_TOKENS = 8
_TOKEN_SCHEMA = {f"f{i}": pl.String for i in range(FAST_TOKENS + 1)}
#: Bytes of a chunk that needs no per-token check for comments and other spaces.
_PLAIN = bytes(b for b in range(0x20, 0x7F) if b != ord("#")) + b"\n"


def _fast_events(data: bytes, first_line: int, fields) -> tuple[pl.DataFrame, pl.Series] | None:
    """(typed rows of the canonical lines, src_line of the other lines), or None to doubt the chunk."""
    if not data:
        return None
    nlines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    try:
        tok = pl.read_csv(io.BytesIO(data), has_header=False, separator=" ", quote_char=None,
                          schema=_TOKEN_SCHEMA, truncate_ragged_lines=True, missing_columns="insert",
                          extra_columns="ignore", encoding="utf8")
    except pl.exceptions.PolarsError:
        return None
    if tok.height != nlines:
        return None
    tok = tok.with_columns(src_line=pl.int_range(first_line, first_line + nlines, dtype=pl.UInt64))
    weird = bool(data.translate(None, _PLAIN))  # a comment, a control character or non-ASCII text
    has_t0 = tok["f0"].str.starts_with("t=").fill_null(False)
    n_t0 = int(has_t0.sum())
    # lines with and without a leading t= are read separately; the fewer kind goes to the exact path
    if n_t0 * 2 >= tok.height:
        text = _canonical(tok, "f0", 1, weird)
        if n_t0 < tok.height:
            text = text.with_columns(_ok=pl.col("_ok") & has_t0)
    else:
        text = _canonical(tok, None, 0, weird)
        if n_t0:
            text = text.with_columns(_ok=pl.col("_ok") & ~has_t0)
    ok = text["_ok"]
    canon = text.filter(ok) if not ok.all() else text
    slow = text.filter(~ok)["src_line"]
    typed = fields.fast(canon.drop("_ok").with_columns(detail=pl.lit(None, dtype=pl.String)),
                        ("detail", "src_line"))
    if typed is None:
        return None
    return typed, slow


def _canonical(tok: pl.DataFrame, t0: str | None, first: int, weird: bool) -> pl.DataFrame:
    """Text fields of lines ``[t=T] AGENT OP ARGS... KEY=VALUE...``, and ``_ok``: the line is canonical.

    A line that is not ``_ok`` goes to the exact path, which either reads it
    (comments, other spacing, markers, directives) or names what is wrong.
    ``weird``: the chunk has a comment, a control character or non-ASCII text somewhere.
    Work is pruned by looking at whole columns first (a token column that
    never holds a key is not searched for keys, and so on).
    """
    n = tok.height
    agent_t, op_t = tok[f"f{first}"], tok[f"f{first + 1}"]
    rest = [tok[c] for c in (f"f{i}" for i in range(first + 2, FAST_TOKENS)) if tok[c].null_count() < n]
    null_str = pl.repeat(None, n, dtype=pl.String, eager=True)
    zeros = pl.zeros(n, dtype=pl.Int32, eager=True)
    ok = tok[f"f{FAST_TOKENS}"].is_null() & agent_t.is_not_null() & op_t.is_not_null()
    # positional arguments: tokens without '=' before any token with one (or a gap)
    pos, prev = [], None
    for r in rest:
        p = r.is_not_null() & ~r.str.contains("=", literal=True).fill_null(True)
        p = p if prev is None else prev & p
        pos.append(p)
        prev = p
    npos = sum((p.cast(pl.Int32) for p in pos), zeros)
    keys = {k: null_str for k in KEYS}
    nkeys = found = zeros
    for r, p in zip(rest, pos):
        key_at = r.is_not_null() & ~p
        if not key_at.any():
            continue
        nkeys = nkeys + key_at.cast(pl.Int32)
        for name in KEYS:
            hit = key_at & r.str.starts_with(name + "=")
            if not hit.any():
                continue
            found = found + hit.cast(pl.Int32)
            ok = ok & ~(hit & keys[name].is_not_null())  # each key once
            keys[name] = pl.select(pl.when(hit).then(r.str.slice(len(name) + 1))
                                   .otherwise(keys[name])).to_series()
    ok = ok & (found == nkeys)  # every token after the arguments is a known key
    for i in range(len(rest) - 1):  # no empty token between two tokens (two spaces)
        ok = ok & (rest[i].is_not_null() | rest[i + 1].is_null())
    args = [rest[i] if i < len(rest) and (pos[i] | rest[i].is_null()).all()
            else (pl.select(pl.when(pos[i]).then(rest[i])).to_series() if i < len(rest) else null_str)
            for i in range(3)]
    ops = set(op_t.drop_nulls().unique().to_list())
    fixed = ops <= {"read", "write", "ifetch", "sysreg"}  # exactly two arguments
    if fixed:
        ok = ok & (npos == 2)
    else:
        least = op_t.replace_strict({k: v[0] for k, v in ARITY.items()}, default=None, return_dtype=pl.Int32)
        most = op_t.replace_strict({k: v[1] for k, v in ARITY.items()}, default=None, return_dtype=pl.Int32)
        ok = ok & least.is_not_null() & (npos >= least) & (npos <= most)
    if ops & {"read", "write", "ifetch"} == ops:
        addr, size, cmo, sysreg, value = args[0], args[1], null_str, null_str, keys["value"]
    else:
        f = pl.DataFrame({"op": op_t, "a0": args[0], "a1": args[1], "a2": args[2], "v": keys["value"]})
        op = pl.col("op")
        access, is_cmo, is_sysreg = op.is_in(["read", "write", "ifetch"]), op == "cmo", op == "sysreg"
        f = f.select(
            pl.when(access).then(pl.col("a0")).when(is_cmo).then(pl.col("a1")).alias("addr"),
            pl.when(access).then(pl.col("a1")).when(is_cmo).then(pl.col("a2")).alias("size"),
            pl.when(is_cmo).then(pl.col("a0")).alias("cmo"),
            pl.when(is_sysreg).then(pl.col("a0")).alias("sysreg"),
            pl.when(is_sysreg).then(pl.col("a1")).otherwise(pl.col("v")).alias("value"),
            (is_sysreg & pl.col("v").is_not_null()).alias("_sysreg_value_twice"),
        )
        addr, size, cmo, sysreg, value = (f[c] for c in ("addr", "size", "cmo", "sysreg", "value"))
        ok = ok & ~f["_sysreg_value_twice"]
    if t0:
        ok = ok & keys["t"].is_null()  # t= given twice
        time = tok[t0].str.slice(2)
    else:
        time = keys["t"]
    if weird:  # a token with '#', a control character or non-ASCII: the exact path reads the line
        for c in [tok[f"f{i}"] for i in range(first + 2)] + rest:
            ok = ok & ~c.str.contains(r"[^\x21-\x22\x24-\x7e]").fill_null(False)
    return pl.DataFrame({
        "time": time, "agent": agent_t, "op": op_t, "addr": addr, "size": size, "cmo": cmo,
        "sysreg": sysreg, "value": value, "attr": keys["attr"], "attr_index": keys["idx"],
        "src_line": tok["src_line"], "_ok": ok.fill_null(False)})


def _exact_events(lines: pl.DataFrame, fields, src: str, check, good: pl.DataFrame | None,
                  phases) -> pl.DataFrame:
    """Typed rows of ``lines`` (``raw``, ``src_line``) by the one-regex path, with exact errors.

    ``good``: rows already read from the other lines of the chunk, so that an
    error's ``before`` holds every earlier line of the chunk.
    """
    lf = _tokens_regex(lines)
    op, keys = pl.col("op"), pl.col("keys")
    is_marker = op.is_in(list(TEXT_OPS))
    known = sum(pl.col(c).is_not_null().cast(pl.UInt32) for c in ("t_key", "attr", "attr_index", "value_key"))
    npos = pl.col("npos")
    least = op.replace_strict({k: v[0] for k, v in ARITY.items()}, default=None, return_dtype=pl.Int8)
    most = op.replace_strict({k: v[1] for k, v in ARITY.items()}, default=None, return_dtype=pl.Int8)
    usage = op.replace_strict({k: v[2] for k, v in ARITY.items()}, default=None, return_dtype=pl.String)
    extra_arg = pl.concat_list("a0", "a1", "a2", "a3").list.get(most.cast(pl.Int64), null_on_oob=True)
    access = op.is_in(["read", "write", "ifetch"])
    is_cmo, is_sysreg = op == "cmo", op == "sysreg"

    syntax = [
        Check(~pl.col("agent").str.contains(AGENT_RE),
              pl.format(f"expected {AGENT_EXPECTED}, found {{}}", _q(pl.col("agent")))),
        Check(op.is_null(), pl.format("expected an operation ({}) after {}, found end of line",
                                      pl.lit(", ".join(EVENT_OPS)), pl.col("agent"))),
        Check(~op.is_in(list(EVENT_OPS)),
              pl.format("expected an operation ({}), found {}", pl.lit(", ".join(EVENT_OPS)), _q(op))),
        Check(~is_marker & (pl.col("nkeys") != known),
              keys.map_elements(_bad_keys, return_dtype=pl.String, skip_nulls=False)),
        Check(pl.col("t0").is_not_null() & pl.col("t_key").is_not_null(),
              pl.lit("expected each key once, found t= given twice")),
        Check(~is_marker & (npos < least), pl.format("expected '{}', found end of line", usage)),
        Check(~is_marker & (npos > most), pl.format("expected '{}', found extra {}", usage, _q(extra_arg))),
        Check(is_sysreg & pl.col("value_key").is_not_null(),
              pl.lit("expected the sysreg value as its second argument, found value= as well")),
    ]
    lf = lf.with_columns(
        pl.any_horizontal([c.bad.fill_null(False) for c in syntax]).alias("_syntax_bad"),
        pl.coalesce(pl.col("t0"), pl.col("t_key")).alias("time"),
        pl.when(access).then(pl.col("a0")).when(is_cmo).then(pl.col("a1")).alias("addr"),
        pl.when(access).then(pl.col("a1")).when(is_cmo).then(pl.col("a2")).alias("size"),
        pl.when(is_cmo).then(pl.col("a0")).alias("cmo"),
        pl.when(is_sysreg).then(pl.col("a0")).alias("sysreg"),
        pl.when(is_sysreg).then(pl.col("a1")).otherwise(pl.col("value_key")).alias("value"),
        pl.when(~is_marker).then(pl.col("attr")).alias("attr"),
        pl.when(~is_marker).then(pl.col("attr_index")).alias("attr_index"),
        pl.when(is_marker).then(pl.col("marker_text").replace("", None)).alias("detail"),
    )
    lf = fields.helpers(lf).with_columns((pl.col("_syntax_bad") | pl.col("_typed_bad")).alias("_bad"))
    full = lf.collect(engine="streaming")
    if full.height and full["_bad"].any():
        row = full.filter(pl.col("_bad")).head(1)
        before = full.filter(pl.col("src_line") < row["src_line"][0]).select(fields.select(("detail", "src_line")))
        if good is not None:
            before = pl.concat([good.filter(pl.col("src_line") < row["src_line"][0]), before]).sort("src_line")
        before = _finish(before, src, phases)
        if check is not None:  # a rule broken on an earlier line is reported first
            check(before)
        try:
            first_error(row, syntax, src)
            first_error(row, fields.checks, src)
        except TraceFormatError as e:
            e.before = before  # type: ignore[attr-defined]  # for a caller that checks later
            raise
    return full.select(fields.select(("detail", "src_line")))


def _finish(out: pl.DataFrame, src: str, phases) -> pl.DataFrame:
    """Typed rows -> the importer's columns: phase from the @phase lines above, src."""
    if phases:
        plines = np.array([p for p, _ in phases], dtype=np.uint64)
        idx = np.searchsorted(plines, out["src_line"].to_numpy(), side="right").astype(np.int64) - 1
        names = pl.Series([None, *[name for _, name in phases]], dtype=pl.String)
        out = out.with_columns(phase=names.gather(idx + 1))
    else:
        out = out.with_columns(phase=pl.lit(None, dtype=pl.String))
    return out.with_columns(src=pl.lit(src), src_offset=pl.lit(None, dtype=pl.UInt64))


def ordered_map(fn, items, *, workers: int = 2, ahead: int = 2) -> Iterator:
    """``map(fn, items)`` on a few threads, results in order, at most ``workers + ahead`` in flight.

    The chunk parsers are polars/pyarrow kernels that release the GIL, so two
    chunks are parsed at once on two cores while the caller checks and writes.
    """
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tracekit-parse") as ex:
        try:
            for item in items:
                pending.append(ex.submit(fn, item))
                if len(pending) > workers + ahead - 1:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def checked_in_order(batches: Iterator[pl.DataFrame], check) -> Iterator[pl.DataFrame]:
    """Apply the sequential checks (``Semantics.check``) to batches in file order.

    A parse error carries the rows before it (``before``): those are checked
    first, so the error of the earliest line is the one reported.
    """
    try:
        for df in batches:
            check(df)
            yield df
    except TraceFormatError as e:
        before = getattr(e, "before", None)
        if before is not None:
            check(before)
        raise


# --------------------------------------------------------------------------
# The importer


class TktImporter:
    format = "tkt"
    description = "tracekit scenario text: one event per line, @ directives (docs: scenario-format.md)"
    suffixes = (".tkt",)
    settings_upfront = True  # the directives are read before any event is yielded

    _HEAD = re.compile(
        r"^\s*(?:@(?:tracekit|line-size|stage2|fwb|region|device|phase)\b|"
        r"(?:t=\S+\s+)?(?:guest|host|dev)(?:\.\S+)?\s+(?:read|write|ifetch|cmo|sysreg|barrier|marker)\b)")

    def detect(self, head: bytes, path: Path) -> bool:
        """The first line that is not blank or a comment is a directive or a scenario event."""
        for raw in head.decode("utf-8", errors="replace").splitlines():
            code = raw.split("#", 1)[0].strip()
            if code:
                return bool(self._HEAD.match(code))
        return False

    def read(self, path: Path, options: ImportOptions) -> ImportResult:
        path = Path(path)
        src = str(path)
        open_input(path)
        size = path.stat().st_size
        if size == 0:
            raise TraceFormatError(f"{src}:1: expected a scenario (events or @ directives), found an empty file")
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            header = scan_directives(data, src)
        except BaseException:
            data.close()
            raise
        release(data)
        info = header.info(options)
        result = ImportResult(batches=[], info=info, summary={"events": 0})
        result.batches = self._batches(data, src, header, info, options, result)
        return result

    def _batches(self, data, src, header, info, options, result) -> Iterator[pl.DataFrame]:
        sem = Semantics(info, src)
        events = 0
        def parse(chunk: tuple[bytes, int]) -> pl.DataFrame:
            return parse_events(chunk[0], chunk[1], src=src, line_size=info.line_size, phases=header.phases)

        try:
            for df in checked_in_order(ordered_map(parse, _byte_chunks(data, src, options.quiet)), sem.check):
                events += df.height
                result.summary["events"] = events
                if df.height:
                    yield df
            if events == 0 and header.count == 0:
                raise TraceFormatError(
                    f"{src}:1: expected a scenario (events or @ directives), found only comments and blank lines")
        finally:
            data.close()


IMPORTER = TktImporter()
