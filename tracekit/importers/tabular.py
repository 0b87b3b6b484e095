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

Both formats stream in batches (pyarrow's CSV reader; JSONL in chunks of whole
lines decoded by polars), so memory stays bounded whatever the file size.
"""

from __future__ import annotations

import csv
import io
import json
import mmap
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from .._progress import progress
from ..errors import TraceFormatError
from ..model import TraceInfo
from ..schema import trace_columns
from ..validate import TEXT_FIELDS, Semantics, first_error, typed_fields
from .base import ImportOptions, ImportResult
from .tkt import Header, checked_in_order, decode, open_input, ordered_map, read_settings

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
            return fast.with_columns(src=pl.lit(self.src), src_offset=pl.lit(None, dtype=pl.UInt64))
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

    def convert(self, text: pl.DataFrame) -> pl.DataFrame:
        """Typed and fully checked rows (in file order, one batch at a time)."""
        try:
            out = self.typed(text)
        except TraceFormatError as e:
            self.semantics.check(e.before)  # type: ignore[attr-defined]  # an earlier line's error first
            raise
        self.semantics.check(out)
        return out


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
        header = [n.strip() for n in next(csv.reader([decode(head, src, 1, 0)]), [])]
        check_columns(header, src)
        info = trace_info(path, options)
        result = ImportResult(batches=[], info=info, summary={"events": 0})
        result.batches = self._batches(path, src, header, info, options, result)
        return result

    def _batches(self, path: Path, src: str, header: list[str], info: TraceInfo, options: ImportOptions,
                 result: ImportResult) -> Iterator[pl.DataFrame]:
        rows = _Rows(src, info)
        wanted = [c for c in header if c not in IGNORED]
        line = 2  # the first data row
        try:
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
                parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in header}, strings_can_be_null=True,
                    include_columns=wanted),
            )
            def texts() -> Iterator[tuple[pa.RecordBatch, int]]:
                nonlocal line
                for batch in reader:
                    yield batch, line
                    line += batch.num_rows

            def typed(item: tuple[pa.RecordBatch, int]) -> pl.DataFrame:
                # the conversion to polars runs in the worker threads too (it copies the strings)
                batch, first = item
                text = pl.from_arrow(batch)
                assert isinstance(text, pl.DataFrame)
                return rows.typed(text.with_columns(
                    src_line=pl.int_range(first, first + text.height, dtype=pl.UInt64)))

            with progress(desc=f"reading {path.name}", unit="ev", unit_scale=True, quiet=options.quiet) as bar:
                for out in checked_in_order(ordered_map(typed, texts()), rows.semantics.check):
                    result.summary["events"] += out.height
                    bar.update(out.height)
                    if out.height:
                        yield out
        except pa.ArrowInvalid as e:
            raise _csv_error(path, src, len(header), e) from None
        except UnicodeDecodeError:  # pragma: no cover - pyarrow reports invalid UTF-8 as ArrowInvalid
            raise


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
            fields = next(csv.reader([text]), [])
            if len(fields) != ncols:
                shown = text.rstrip("\r\n")
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
        return result

    def _batches(self, path: Path, src: str, info: TraceInfo, options: ImportOptions,
                 result: ImportResult) -> Iterator[pl.DataFrame]:
        from .tkt import _byte_chunks

        rows = _Rows(src, info)
        struct = pl.Struct({c: pl.String for c in trace_columns() if c not in IGNORED})
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        first = True

        def chunks() -> Iterator[tuple[bytes, int]]:
            nonlocal first
            for raw, first_line in _byte_chunks(data, src, options.quiet):  # UTF-8 checked there
                if first:  # field names are checked on the first object
                    found = _first_object(raw.decode("utf-8"), first_line)
                    if found is not None:
                        _check_first_object(found[1], src, found[0])
                        first = False
                yield raw, first_line

        def typed(chunk: tuple[bytes, int]) -> pl.DataFrame:
            raw, first_line = chunk
            fast = _read_dense(raw, first_line, struct)
            if fast is not None:
                return rows.typed(fast)
            text = raw.decode("utf-8")
            lines = pl.Series([text], dtype=pl.String).str.split("\n").explode()
            if text.endswith("\n"):
                lines = lines.head(lines.len() - 1)
            df = (pl.DataFrame({"raw": lines})
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

        try:
            for out in checked_in_order(ordered_map(typed, chunks()), rows.semantics.check):
                result.summary["events"] += out.height
                if out.height:
                    yield out
            if first:
                raise TraceFormatError(f"{src}:1: expected JSON objects, one per line, found only blank lines")
        finally:
            data.close()


def _read_dense(text: bytes, first_line: int, struct: pl.Struct) -> pl.DataFrame | None:
    """A chunk with no blank line read by polars' NDJSON reader (row i is line first_line + i).

    None when the chunk has a blank line or does not parse: the line-by-line
    path then reads it and names the bad line. (Bytes: searching a str for
    newlines cost more than parsing the JSON.)
    """
    body = text[:-1] if text.endswith(b"\n") else text
    if not body or b"\n\n" in body or body.startswith(b"\n"):
        return None
    try:
        df = pl.read_ndjson(io.BytesIO(body), schema=dict(struct.to_schema()))
    except pl.exceptions.PolarsError:
        return None
    if df.height != body.count(b"\n") + 1:
        return None
    return df.with_columns(src_line=pl.int_range(first_line, first_line + df.height, dtype=pl.UInt64))


def _first_object(text: str, first_line: int) -> tuple[int, str] | None:
    """(line, text) of the first non-blank line of ``text``."""
    pos, line = 0, first_line
    while pos < len(text):
        nl = text.find("\n", pos)
        nl = len(text) if nl < 0 else nl
        if text[pos:nl].strip():
            return line, text[pos:nl].strip()
        pos, line = nl + 1, line + 1
    return None


def _check_first_object(raw: str, src: str, line: int) -> None:
    """Field names are checked on the first object (later ones are read with the same names)."""
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
