"""CSV and JSONL inputs whose fields are trace-v1 column names.

Each row (CSV) or object (JSONL, one per line) is one event, in file order.
Fields: ``agent`` and ``op`` are required; ``time addr size cmo sysreg value
attr attr_index phase detail`` are optional (empty or missing = null). Numbers
may be decimal or ``0x`` hex (sizes also ``K``/``M``/``G``), ``attr`` takes the
scenario spellings (``dev`` = ``dev-ngnrne``), agents ``guest``/``host`` become
``guest.0``/``host.0``. ``seq``, ``side``, ``src``, ``src_line`` and
``src_offset`` may be present and are ignored: the order is the file's, the side
follows the agent, and the source is this file and line.

The trace's settings (line size, stage 2, FWB, regions, devices) come from a
scenario header of ``@`` directives: ``--settings FILE``, else ``INPUT.settings.tkt``
beside the input (the input's full name plus ``.settings.tkt``, e.g.
``run.csv.settings.tkt``) when it exists; command options override either. The
rows get the same checks as a scenario (tracekit.validate).

Both formats stream in chunks of whole lines (~8 MiB), so memory stays bounded
whatever the file size; two chunks are parsed at once. A JSONL chunk of plain flat
objects (the common shape) is read by one compiled scan that checks the keys and
types the values together (tracekit.importers._flat_json); any other chunk, and
every CSV chunk, is first read with the numbers typed by the reader itself
(pyarrow's CSV reader, polars' NDJSON reader): decimal or ``0x`` numbers in CSV,
JSON numbers in JSONL. If that read
refuses the chunk, a second one takes ``addr size value`` as text and converts
them with the text path's number rules (``"0x..."`` strings in JSON, ``4K``
sizes). A chunk still refused, or with a row that breaks a rule, is read as text
and converted by the scenario's rules (tracekit.validate), which name the bad
line; the typed reads only ever accept what that path accepts. Every JSONL
object's keys are checked (one compiled scan of the chunk's bytes).
"""

from __future__ import annotations

import csv
import io
import json
import mmap
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from .._progress import progress
from ..errors import TraceFormatError
from ..model import ATTR_ALIASES, CMO_OPS, CMO_WITHOUT_ADDRESS, OPS, SIDES, TraceInfo
from ..schema import enum_from_codes, trace_columns
from ..validate import TEXT_FIELDS, Semantics, batch_names, first_error, typed_fields
from ..validate import size_fast, uint_fast  # the text path's own number parsing (Fields.fast)
from .base import ImportOptions, ImportResult
from .tkt import Header, checked_in_order, decode, open_input, ordered_map, read_settings, release

BLOCK_BYTES = 8 << 20
IGNORED = ("seq", "side", "src", "src_line", "src_offset")
REQUIRED = ("agent", "op")


def settings_file(path: Path, options: ImportOptions) -> Path | None:
    """The settings side file that applies to ``path``: --settings, else INPUT.settings.tkt if present."""
    if options.settings is not None:
        return Path(options.settings)
    beside = path.with_name(path.name + ".settings.tkt")
    return beside if beside.is_file() else None


def trace_info(path: Path, options: ImportOptions) -> TraceInfo:
    f = settings_file(path, options)
    header = read_settings(f) if f is not None else Header(str(path))
    return header.info(options)


def options_info(options: ImportOptions, path: Path | None = None, learned_regions: tuple = ()) -> TraceInfo:
    """Settings of an input that carries none of its own (a QEMU log, ftrace text, din, lackey).

    A settings file (``--settings`` or INPUT.settings.tkt) wins over the regions
    the input taught (QEMU memory slots); command options win over both.
    """
    if path is not None and settings_file(path, options) is not None:
        return trace_info(path, options)
    kw: dict = {"regions": learned_regions}
    if options.line_size:
        kw["line_size"] = options.line_size
    if options.stage2 is not None:
        kw["stage2"] = options.stage2
    if options.fwb is not None:
        kw["fwb"] = options.fwb
    if options.regions is not None:
        kw["regions"] = options.regions
    if options.devices is not None:
        kw["devices"] = options.devices
    return TraceInfo(**kw)


def check_columns(names, src: str, line: int = 1, *, what: str = "column") -> None:
    """Every name is a trace-v1 column and the required ones are there (CSV header, JSONL object)."""
    known = set(trace_columns())
    for n in names:
        if n not in known:
            raise TraceFormatError(
                f"{src}:{line}: expected trace-v1 {what} names ({', '.join(trace_columns())}), found '{n}'")
    for r in REQUIRED:
        if r not in names:
            raise TraceFormatError(f"{src}:{line}: expected a {what} '{r}', found none")


class _Rows:
    """Typed conversion + checks of one input's text batches, in order."""

    def __init__(self, src: str, info: TraceInfo) -> None:
        self.src = src
        self.fields = typed_fields(line_size=info.line_size)
        self.semantics = Semantics(info, src)

    def typed(self, text: pl.DataFrame) -> pl.DataFrame:
        """Typed, syntax-checked rows of ``text`` (string columns + ``src_line``); thread-safe.

        A bad row raises TraceFormatError carrying the rows before it (``before``)
        for :func:`checked_in_order`.
        """
        missing = [c for c in TEXT_FIELDS if c not in text.columns]
        if missing:
            text = text.with_columns([pl.lit(None, dtype=pl.String).alias(c) for c in missing])
        fast = self.fields.fast(text, ("phase", "detail", "src_line"))
        if fast is not None:  # every row is valid (the common case)
            return self.finish(fast)
        full = self.fields.helpers(text.lazy()).collect(engine="streaming")

        def finish(frame: pl.DataFrame) -> pl.DataFrame:
            return frame.select(self.fields.select(("phase", "detail", "src_line"))).with_columns(
                src=pl.lit(self.src), src_offset=pl.lit(None, dtype=pl.UInt64))

        if full["_typed_bad"].any():
            row = full.filter(pl.col("_typed_bad")).head(1)
            before = finish(full.filter(pl.col("src_line") < row["src_line"][0]))
            try:
                first_error(row, self.fields.checks, self.src)
            except TraceFormatError as e:
                e.before = before  # type: ignore[attr-defined]
                raise
        return finish(full)

    def finish(self, typed: pl.DataFrame) -> pl.DataFrame:
        """Typed rows plus the provenance columns (``src`` one value: an Enum of it, a dictionary
        the Parquet writer takes without hashing every row's copy)."""
        return typed.with_columns(src=pl.lit(self.src, dtype=pl.Enum([self.src])),
                                  src_offset=pl.lit(None, dtype=pl.UInt64))

    def convert(self, text: pl.DataFrame) -> pl.DataFrame:
        """Typed and fully checked rows (in file order, one batch at a time)."""
        try:
            out = self.typed(text)
        except TraceFormatError as e:
            self.semantics.check(e.before)  # type: ignore[attr-defined]  # an earlier line's error first
            raise
        self.semantics.check(out)
        return out


def _line_chunks(data, start: int, first_line: int, src: str, quiet: bool, *, block: int,
                 check_utf8: bool) -> Iterator[tuple[bytes, int, int]]:
    """(bytes, first line, number of lines) for pieces of ``data[start:]`` cut after a newline.

    Each piece is ~``block`` bytes; its pages are dropped from the mapping once
    copied (bounded RSS). Newlines are counted with numpy (bytes.count is
    several times slower). ``check_utf8``: a piece that is not ASCII must be
    UTF-8, else an error names the line and byte offset.
    """
    n = len(data)
    pos, line = start, first_line
    with progress(total=n - start, desc=f"reading {Path(src).name}", unit="B", unit_scale=True,
                  quiet=quiet) as bar:
        while pos < n:
            end = min(n, pos + block)
            if end < n:
                nl = data.find(b"\n", end)
                end = n if nl < 0 else nl + 1
            raw = bytes(data[pos:end])
            release(data, pos, end)
            if check_utf8 and not raw.isascii():
                decode(raw, src, line, pos)
            lines = int(np.count_nonzero(np.frombuffer(raw, dtype=np.uint8) == 10)) + (not raw.endswith(b"\n"))
            yield raw, line, lines
            line += lines
            bar.update(end - pos)
            pos = end


#: The numbers a typed read gives directly (attr_index read wide, then checked to be 0..7).
NUMBER_FIELDS = ("time", "addr", "size", "value", "attr_index")
#: The numbers often written as text the readers do not type: "0x10" in JSON, "4K" sizes.
TEXT_NUMBERS = ("addr", "size", "value")


def _numbers_from_text(df: pl.DataFrame) -> pl.DataFrame | None:
    """``df`` with its text ``addr size value`` as u64 (decimal, 0x hex, sizes with K/M/G), or None.

    The text path's own conversion (the one ``Fields.fast`` applies), so a
    chunk converted here gives what the text path gives; None when a value is
    malformed or too big (the text path then names the line).
    """
    out = {}
    for c in TEXT_NUMBERS:
        if c not in df.columns or df[c].dtype != pl.String:
            continue
        v = size_fast(df[c]) if c == "size" else uint_fast(df[c])
        if v is None:
            return None
        out[c] = v
    return df.with_columns(**out) if out else df


def _typed_fast(df: pl.DataFrame, line_size: int, *, distinct: dict[str, pl.Series] | None = None,
                codes: dict[str, np.ndarray] | None = None) -> pl.DataFrame | None:
    """Trace-v1 columns of a chunk whose numbers were typed by the reader, when every row is valid.

    ``df`` holds the text fields with ``time`` Float64 and ``addr size value
    attr_index`` unsigned integers (as the reader parsed them), plus ``src_line``.
    The same checks and output as ``Fields.fast`` (tracekit.validate) on the
    same rows as text: the few distinct names checked once each, the structural
    rules as boolean masks. None means "some row may break a rule": the caller
    reads the chunk again as text, and the exact checks name the first bad line.
    ``distinct``: the distinct values of some text columns, when the reader knows them;
    ``codes``: for some of those, each row's index into them (``_flat_json.FlatChunk``).
    """
    n = df.height
    agent_t, op_t, cmo_t, sysreg_t, attr_t = (df[c] for c in ("agent", "op", "cmo", "sysreg", "attr"))
    names = batch_names(df, distinct)
    if names is None:
        return None
    agents, ops, cmos, sysregs, attrs = names
    idx = df["attr_index"]
    if idx.null_count() < n and not ((idx >= 0) & (idx <= 7)).all():
        return None
    time = df["time"]
    if not time.is_finite().all():  # inf, nan (and 1e400): the text path decides
        return None

    # the structural checks of typed_fields (the fields are well formed here), as eager
    # boolean kernels: each mask is computed once (an expression list recomputed them)
    ops_seen = set(ops.to_list())
    none = pl.Series([False], dtype=pl.Boolean).new_from_index(0, n)

    def coded(column: str, names: set[str]) -> pl.Series | None:
        """Rows whose ``column`` is one of ``names``, by code, when the reader gave the codes."""
        if not codes or column not in codes or not distinct or column not in distinct:
            return None
        hit = np.array([v in names for v in distinct[column].to_list()], dtype=bool)
        return pl.Series(hit[codes[column]])

    def op_is(*names: str) -> pl.Series:
        if not any(o in ops_seen for o in names):
            return none
        by_code = coded("op", set(names))
        if by_code is not None:
            return by_code
        hit = [op_t == o for o in names if o in ops_seen]
        out = hit[0]
        for h in hit[1:]:
            out = out | h
        return out

    is_access, is_cmo, is_sysreg = op_is("read", "write", "ifetch"), op_is("cmo"), op_is("sysreg")
    other = ~(is_access | is_cmo)
    addr_nn, size_nn, value_nn = df["addr"].is_not_null(), df["size"].is_not_null(), df["value"].is_not_null()
    cmo_nn, sysreg_nn = cmo_t.is_not_null(), sysreg_t.is_not_null()
    typed_nn = attr_t.is_not_null() | idx.is_not_null()
    no_addr = [c for c in cmos.to_list() if c in CMO_WITHOUT_ADDRESS]
    cmo_no_addr = none if not no_addr else coded("cmo", set(no_addr))
    if cmo_no_addr is None:
        cmo_no_addr = cmo_t.is_in(no_addr).fill_null(False)
    addr_or_size = addr_nn | size_nn
    bad = (
        (is_cmo ^ cmo_nn)  # a cmo without its operation, or an operation on another event
        | (is_cmo & cmo_no_addr & addr_or_size)
        | (is_cmo & ~cmo_no_addr & ~addr_nn)
        | (is_access & ~(addr_nn & size_nn))  # an access needs an address and a size
        | (other & (addr_or_size | typed_nn))
        | (is_sysreg ^ sysreg_nn)
        | (is_sysreg & ~value_nn)
    )
    if bad.any():
        return None

    names = agents.to_list()
    agent = agent_t.replace({"guest": "guest.0", "host": "host.0"}) if ("guest" in names or "host" in names) \
        else agent_t
    sides = [a.split(".", 1)[0] for a in names]  # guest, host or dev (the agents are valid)
    if codes and "agent" in codes:  # each distinct agent's side, by the reader's code, as an Enum
        side = _enum_by_code(codes["agent"], sides, SIDES)
    elif len(set(sides)) == 1:
        side = pl.repeat(sides[0], n, dtype=pl.String, eager=True)
    else:  # each distinct agent's side, gathered by the agent's code
        side = pl.Series(sides, dtype=pl.String).gather(agent_t.cast(pl.Enum(names)).to_physical())
    attr = attr_t.replace_strict(ATTR_ALIASES, default=None, return_dtype=pl.String) \
        if any(ATTR_ALIASES[a] != a for a in attrs) else attr_t
    size = df["size"]
    one_line = is_cmo & ~size_nn & addr_nn
    if one_line.any():  # a cmo by address without a size maintains the line holding the address
        size = df.select(pl.when(one_line).then(pl.lit(line_size, dtype=pl.UInt64) - pl.col("addr") % line_size)
                         .otherwise(pl.col("size"))).to_series()
    # register names upper case (ASCII by SYSREG_RE); a column already so is kept as it is
    sysreg = sysreg_t if all(s == s.upper() for s in sysregs.to_list()) else sysreg_t.str.to_uppercase()
    # closed vocabularies as Enums, straight from the reader's codes: later string tests are
    # integer tests, and the Parquet writer takes them as dictionaries without hashing a row
    if codes and distinct and "op" in codes:
        op_t = _enum_by_code(codes["op"], distinct["op"].to_list(), OPS)
    if codes and distinct and "cmo" in codes:
        cmo_t = _enum_by_code(codes["cmo"], distinct["cmo"].to_list(), CMO_OPS)
    return pl.DataFrame({
        "time": time, "agent": agent, "side": side.alias("side"), "op": op_t, "addr": df["addr"], "size": size,
        "cmo": cmo_t, "sysreg": sysreg, "value": df["value"], "attr": attr, "attr_index": idx.cast(pl.UInt8),
        "phase": df["phase"], "detail": df["detail"], "src_line": df["src_line"]})


def _enum_by_code(codes: np.ndarray, values: list[str | None], vocabulary: tuple[str, ...]) -> pl.Series:
    """The Enum column of a closed ``vocabulary`` whose row i is ``values[codes[i]]`` (None: null)."""
    lut = np.array([vocabulary.index(v) if v is not None else 255 for v in values], dtype=np.uint8)
    return enum_from_codes(lut[codes], pl.Enum(vocabulary))


def _with_text_fields(df: pl.DataFrame, first_line: int, *, typed: bool = False) -> pl.DataFrame:
    """Every text field (missing ones as nulls) and ``src_line`` (row i is line first_line + i).

    ``typed``: the numbers of ``df`` are typed, and missing ones are null numbers.
    """
    def dtype(c: str) -> pl.DataType:
        if not typed or c not in NUMBER_FIELDS:
            return pl.String()
        return pl.Float64() if c == "time" else pl.UInt64()

    missing = [pl.lit(None, dtype=dtype(c)).alias(c) for c in TEXT_FIELDS if c not in df.columns]
    return df.with_columns(*missing, src_line=pl.int_range(first_line, first_line + df.height, dtype=pl.UInt64))


class CsvImporter:
    format = "csv"
    description = "CSV with a header of trace-v1 column names (settings: --settings or INPUT.settings.tkt)"
    suffixes = (".csv",)
    settings_upfront = True

    def detect(self, head: bytes, path: Path) -> bool:
        first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
        names = [n.strip().strip('"') for n in first.split(",")]
        return len(names) > 1 and all(r in names for r in REQUIRED)

    def read(self, path: Path, options: ImportOptions) -> ImportResult:
        path = Path(path)
        src = str(path)
        open_input(path)
        if path.stat().st_size == 0:
            raise TraceFormatError(f"{src}:1: expected a CSV header of trace-v1 column names, found an empty file")
        with open(path, "rb") as f:
            head = f.readline()
        text = decode(head, src, 1, 0)
        try:
            header = [n.strip() for n in next(csv.reader([text]), [])]
        except csv.Error as c:
            what = "a carriage return inside the line" if "\r" in text.rstrip("\r\n") else str(c)
            raise TraceFormatError(f"{src}:1: expected a CSV header of trace-v1 column names, found {what}: "
                                   f"{text.rstrip(chr(13) + chr(10))[:80]!r}") from None
        check_columns(header, src)
        info = trace_info(path, options)
        result = ImportResult(batches=[], info=info, summary={"events": 0})
        result.batches = self._batches(path, src, header, info, options, result)
        return result

    def _batches(self, path: Path, src: str, header: list[str], info: TraceInfo, options: ImportOptions,
                 result: ImportResult) -> Iterator[pl.DataFrame]:
        rows = _Rows(src, info)
        wanted = [c for c in header if c not in IGNORED]
        text_types = {c: pa.string() for c in header}
        number_types = {**text_types, **{c: pa.float64() if c == "time" else pa.uint64()
                                         for c in NUMBER_FIELDS if c in wanted}}
        # second try: the sizes, addresses and values as text (4K), the other numbers typed
        some_text_types = {**number_types, **{c: pa.string() for c in TEXT_NUMBERS if c in wanted}}

        def read(raw: bytes, types: dict) -> pa.Table:
            return pacsv.read_csv(
                io.BytesIO(raw),
                read_options=pacsv.ReadOptions(column_names=header, use_threads=False,
                                               block_size=max(1 << 20, len(raw) + 1)),
                parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
                convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                     include_columns=wanted))

        def typed(chunk: tuple[bytes, int, int]) -> pl.DataFrame:
            # runs in the worker threads: both readers release the GIL
            raw, first, lines = chunk
            if not _trimmed_numbers(raw):
                for types in (number_types, some_text_types):
                    try:
                        table = read(raw, types)
                    except pa.ArrowInvalid:  # a field this read refuses: the next one, or the text path
                        continue
                    df = _numbers_from_text(_from_arrow(table)) if table.num_rows == lines else None
                    if df is None:
                        break
                    fast = _typed_fast(_with_text_fields(df, first, typed=True), info.line_size)
                    if fast is not None:
                        return rows.finish(fast)
                    break  # read, but some row breaks a rule: the text path names it
            return rows.typed(_with_text_fields(_from_arrow(read(raw, text_types)), first))

        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            nl = data.find(b"\n")
            body = len(data) if nl < 0 else nl + 1  # the first data row (line 2)
            # pyarrow checks UTF-8 (a bad byte fails the read; _csv_error names its line)
            chunks = _line_chunks(data, body, 2, src, options.quiet, block=BLOCK_BYTES, check_utf8=False)
            for out in checked_in_order(ordered_map(typed, chunks), rows.semantics.check):
                result.summary["events"] += out.height
                if out.height:
                    yield out
        except pa.ArrowInvalid as e:
            raise _csv_error(path, src, len(header), e) from None
        finally:
            data.close()


def _from_arrow(table: pa.Table) -> pl.DataFrame:
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return df


def _trimmed_numbers(raw: bytes) -> bool:
    """True when a field of ``raw`` may start or end with a space or tab.

    pyarrow's typed CSV read trims them around numbers (' 5' is 5) while the
    scenario rules refuse them, so such chunks take the text path. A blank
    next to a comma, quote or line end is enough to send the chunk there; free
    text with inner spaces ('dsb sy') is not.
    """
    if b" " not in raw and b"\t" not in raw:
        return False
    b = np.frombuffer(raw, dtype=np.uint8)
    at = np.flatnonzero((b == 32) | (b == 9))
    if at[0] == 0 or at[-1] == len(b) - 1:
        return True
    edges = np.array([44, 10, 13, 34], dtype=np.uint8)  # , \n \r "
    return bool(np.isin(b[at - 1], edges).any() or np.isin(b[at + 1], edges).any())


def _csv_error(path: Path, src: str, ncols: int, e: Exception) -> TraceFormatError:
    """Locate a CSV the reader refused: the first line with a bad byte or field count (error path only)."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as u:
                return TraceFormatError(f"{src}:{i}: expected UTF-8 text, found byte 0x{raw[u.start]:02x}")
            if i == 1:
                continue
            shown = text.rstrip("\r\n")
            try:
                fields = next(csv.reader([text]), [])
            except csv.Error as c:
                what = "a carriage return inside the line" if "\r" in shown else str(c)
                return TraceFormatError(f"{src}:{i}: expected {ncols} comma-separated fields, found {what}: "
                                        f"{shown[:80]!r}")
            if len(fields) != ncols:
                return TraceFormatError(
                    f"{src}:{i}: expected {ncols} comma-separated fields, found {len(fields)}: '{shown[:80]}'")
    return TraceFormatError(f"{src}: expected CSV, found: {e}")


class JsonlImporter:
    format = "jsonl"
    description = "JSON Lines, one object per event with trace-v1 field names (settings as for CSV)"
    suffixes = (".jsonl", ".ndjson")
    settings_upfront = True

    def detect(self, head: bytes, path: Path) -> bool:
        for raw in head.split(b"\n")[:5]:
            s = raw.strip()
            if not s:
                continue
            try:
                obj = json.loads(s)
            except ValueError:
                return False
            return isinstance(obj, dict) and "agent" in obj and "op" in obj
        return False

    def read(self, path: Path, options: ImportOptions) -> ImportResult:
        path = Path(path)
        src = str(path)
        open_input(path)
        if path.stat().st_size == 0:
            raise TraceFormatError(f"{src}:1: expected JSON objects, one per line, found an empty file")
        info = trace_info(path, options)
        result = ImportResult(batches=[], info=info, summary={"events": 0})
        result.batches = self._batches(path, src, info, options, result)
        # numba and the compiled scans are imported and loaded here, in the calling thread, before
        # any worker thread runs (~0.3 s once per process; an import racing other threads can
        # deadlock). CSV and the other formats never import them.
        from . import _flat_json

        _flat_json.warm_up()
        return result

    def _batches(self, path: Path, src: str, info: TraceInfo, options: ImportOptions,
                 result: ImportResult) -> Iterator[pl.DataFrame]:
        from . import tkt
        from ._flat_json import read_flat, unknown_key

        rows = _Rows(src, info)
        struct = pl.Struct({c: pl.String for c in trace_columns() if c not in IGNORED})
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        first = True

        def chunks() -> Iterator[tuple[bytes, int, int]]:
            nonlocal first
            # JSONL lines are ~3x as long as scenario lines: chunks of twice the bytes keep the
            # per-chunk work (Python glue and polars calls, under one GIL) small beside the
            # events' (10 M events: 5.3 -> 5.0 s, peak RSS 610 -> 760 MB, runs interleaved)
            for raw, first_line, lines in _line_chunks(data, 0, 1, src, options.quiet, block=2 * tkt.CHUNK_BYTES,
                                                       check_utf8=True):
                if first:  # the first object must also name the required fields
                    found = _first_object(raw, first_line)
                    if found is not None:
                        _check_first_object(found[1], src, found[0])
                        first = False
                yield raw, first_line, lines

        def text_path(raw: bytes, first_line: int, lines: int) -> pl.DataFrame:
            """Numbers as text (hex strings, 4K sizes), blank lines, or a bad line to name."""
            fast = _read_dense(raw, first_line, lines, struct)
            if fast is not None:
                return rows.typed(fast)
            text = raw.decode("utf-8")
            split = pl.Series([text], dtype=pl.String).str.split("\n").explode()
            if text.endswith("\n"):
                split = split.head(split.len() - 1)
            df = (pl.DataFrame({"raw": split})
                  .with_row_index("src_line", offset=first_line)
                  .with_columns(pl.col("src_line").cast(pl.UInt64), pl.col("raw").str.strip_chars())
                  .filter(pl.col("raw") != ""))
            try:
                decoded = df.select(pl.col("src_line"), pl.col("raw").str.json_decode(struct).alias("o"))
            except pl.exceptions.PolarsError:
                err = _jsonl_error(df, src)
                if err.line is not None:  # rules broken on earlier lines are reported first
                    before = df.filter(pl.col("src_line") < err.line)
                    err.before = rows.typed(before.select(  # type: ignore[attr-defined]
                        pl.col("src_line"), pl.col("raw").str.json_decode(struct).alias("o")).unnest("o"))
                raise err from None
            text_df = decoded.unnest("o")
            if text_df.filter(pl.col("agent").is_null() & pl.col("op").is_null()).height:
                _jsonl_object_check(df, src)
            return rows.typed(text_df)

        def typed(chunk: tuple[bytes, int, int]) -> pl.DataFrame:
            # runs in the worker threads (polars and the compiled key scan release the GIL)
            raw, first_line, lines = chunk
            flat = read_flat(raw, lines)  # the common shape, keys checked and values typed in one scan
            if flat is not None:
                fast = _typed_fast(_with_text_fields(flat.frame, first_line, typed=True), info.line_size,
                                   distinct=flat.distinct, codes=flat.codes)
                if fast is not None:
                    return rows.finish(fast)
            bad = unknown_key(raw)
            if bad is not None:
                rel, cut, key = bad
                err = TraceFormatError(f"{src}:{first_line + rel}: expected trace-v1 field names "
                                       f"({', '.join(trace_columns())}), found '{key}'")
                # the lines before it are checked first (an earlier line's error wins)
                err.before = typed((raw[:cut], first_line, rel)) if rel else None  # type: ignore[attr-defined]
                raise err
            df = None
            for schema in (JSONL_TYPED, JSONL_SOME_TEXT):
                try:
                    df = _numbers_from_text(pl.read_ndjson(raw, schema=schema))
                    break
                except pl.exceptions.PolarsError:
                    continue  # a value this read refuses (or bad JSON): the next one, or the text path
            if df is not None and df.height == lines:  # fewer rows: a blank line the text path numbers
                fast = _typed_fast(_with_text_fields(df, first_line, typed=True), info.line_size)
                if fast is not None:
                    return rows.finish(fast)
            return text_path(raw, first_line, lines)

        try:
            for out in checked_in_order(ordered_map(typed, chunks()), rows.semantics.check):
                result.summary["events"] += out.height
                if out.height:
                    yield out
            if first:
                raise TraceFormatError(f"{src}:1: expected JSON objects, one per line, found only blank lines")
        finally:
            data.close()


#: JSONL read with the numbers typed (JSON numbers only; a string such as "0x10" fails the
#: chunk's typed read). attr_index is read as Int64 (polars' NDJSON reader has no UInt8), then checked.
JSONL_TYPED = {"time": pl.Float64, "agent": pl.String, "op": pl.String, "addr": pl.UInt64, "size": pl.UInt64,
               "cmo": pl.String, "sysreg": pl.String, "value": pl.UInt64, "attr": pl.String, "attr_index": pl.Int64,
               "phase": pl.String, "detail": pl.String}
#: The second try: addresses, sizes and values as text ("0x40000000", "4K", or JSON numbers as text).
JSONL_SOME_TEXT = {**JSONL_TYPED, **{c: pl.String for c in TEXT_NUMBERS}}


def _read_dense(text: bytes, first_line: int, lines: int, struct: pl.Struct) -> pl.DataFrame | None:
    """A chunk with no blank line read by polars' NDJSON reader, numbers as text (row i is line first_line + i).

    None when the chunk has a blank line (polars skips it: fewer rows than
    lines) or does not parse: the line-by-line path then reads it and names
    the bad line.
    """
    try:
        df = pl.read_ndjson(text, schema=dict(struct.to_schema()))
    except pl.exceptions.PolarsError:
        return None
    if df.height != lines:
        return None
    return df.with_columns(src_line=pl.int_range(first_line, first_line + df.height, dtype=pl.UInt64))


def _first_object(raw: bytes, first_line: int) -> tuple[int, str] | None:
    """(line, text) of the first non-blank line of ``raw`` (only that line is decoded)."""
    pos, line = 0, first_line
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        nl = len(raw) if nl < 0 else nl
        piece = raw[pos:nl].strip()
        if piece:
            return line, piece.decode("utf-8")
        pos, line = nl + 1, line + 1
    return None


def _check_first_object(raw: str, src: str, line: int) -> None:
    """The first object is a JSON object naming the required fields (every object's keys are scanned too)."""
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise TraceFormatError(f"{src}:{line}: expected a JSON object, found invalid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise TraceFormatError(f"{src}:{line}: expected a JSON object, found {type(obj).__name__}")
    check_columns(list(obj), src, line, what="field")


class _LineError(TraceFormatError):
    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


def _jsonl_error(df: pl.DataFrame, src: str) -> _LineError:
    """The first line of ``df`` that is not a JSON object of plain values (error path only)."""
    for line, raw in zip(df["src_line"].to_list(), df["raw"].to_list()):
        try:
            obj = json.loads(raw)
        except ValueError as e:
            return _LineError(f"{src}:{line}: expected a JSON object, found invalid JSON ({e.msg})", line)
        if not isinstance(obj, dict):
            return _LineError(f"{src}:{line}: expected a JSON object, found {type(obj).__name__}", line)
        for k, v in obj.items():
            if isinstance(v, (dict, list)):
                return _LineError(f"{src}:{line}: expected a plain value for '{k}', found {type(v).__name__}",
                                  line)
    return _LineError(f"{src}: expected JSON objects, one per line")


def _jsonl_object_check(df: pl.DataFrame, src: str) -> None:
    err = _jsonl_error(df, src)
    if err.line is not None:
        raise err


CSV_IMPORTER = CsvImporter()
JSONL_IMPORTER = JsonlImporter()
IMPORTERS = (CSV_IMPORTER, JSONL_IMPORTER)
