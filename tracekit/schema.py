"""Arrow schemas built from the language-neutral JSON files in ``schemas/``.

The JSON files are the contract (other tools read them too); this module only
turns them into pyarrow/polars schemas and writes and reads Parquet files that
follow them, atomically and with the ``tracekit`` metadata key.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import OutputExistsError, SchemaError, TraceFormatError, TracekitError
from .model import MEMORY_TYPES, TraceInfo

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
META_KEY = b"tracekit"

_ARROW_TYPES = {
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.large_string(),
}


@functools.cache
def schema_doc(name: str) -> dict[str, Any]:
    """The parsed JSON document ``schemas/<name>.json`` (e.g. ``trace-v1``)."""
    path = SCHEMA_DIR / f"{name}.json"
    return json.loads(path.read_text())


@functools.cache
def arrow_schema(name: str) -> pa.Schema:
    doc = schema_doc(name)
    return pa.schema(
        [pa.field(c["name"], _ARROW_TYPES[c["type"]], nullable=c["nullable"]) for c in doc["columns"]]
    )


def polars_schema(name: str, *, compact: bool = False) -> dict[str, pl.DataType]:
    """Column name -> polars dtype, in schema order.

    ``compact=True``: string columns as they are kept in memory in bulk, an Enum
    of the allowed values (in string order, so sorting is unchanged) where the
    schema lists them, else Categorical: millions of findings repeat a few
    agents, regions and sources, four bytes a cell instead of a string. Files
    always hold strings.
    """
    out = dict(pl.Schema(pl.from_arrow(arrow_schema(name).empty_table()).schema))
    if compact:
        for c in schema_doc(name)["columns"]:
            if c["type"] == "string":
                out[c["name"]] = pl.Enum(sorted(c["allowed"])) if "allowed" in c else pl.Categorical()
    return out


TRACE_SCHEMA = "trace-v1"
FINDINGS_SCHEMA = "findings-v1"


def trace_columns() -> list[str]:
    return [c["name"] for c in schema_doc(TRACE_SCHEMA)["columns"]]


def enum_from_codes(codes: np.ndarray, dtype: pl.Enum) -> pl.Series:
    """An Enum Series from its codes, without going through strings; 255 (past every
    vocabulary's codes) is null."""
    return pl.Series(codes.astype(np.uint8, copy=False)).cat.to(dtype, strict=False)


def enum_of_codes(codes: pl.Expr, dtype: pl.Enum, table: np.ndarray | None = None) -> pl.Expr:
    """``enum_from_codes`` as an expression, so that a select makes several such columns at
    once: the uint8 ``codes`` (or ``table[codes]``, a uint8 table of codes) as the Enum
    ``dtype``; 255 is null."""
    if table is not None:
        codes = pl.lit(pl.Series(table.astype(np.uint8, copy=False))).gather(codes)
    return codes.cat.to(dtype, strict=False)


def conform(df: pl.DataFrame, name: str, *, extra: bool = False, compact: bool = False,
            keep_coded: bool = False) -> pl.DataFrame:
    """Select and cast ``df`` to schema ``name`` (missing nullable columns become nulls).

    With ``extra=True`` columns beyond the schema are kept after the schema's;
    ``compact=True`` gives string columns their in-memory bulk form (``polars_schema``);
    ``keep_coded=True`` leaves Enum/Categorical string columns as they are (a writer
    hands them to Parquet as dictionaries).
    """
    target = polars_schema(name, compact=compact)
    if list(df.schema.items()) == list(target.items()):
        return df  # already so (a batch conformed upstream): no select to run
    if not df.columns:  # (a literal selected from a frame without columns makes one row)
        return pl.DataFrame(schema=target)
    cols = []
    for col, dtype in target.items():
        if col in df.columns:
            if keep_coded and dtype == pl.String and isinstance(df.schema[col], (pl.Categorical, pl.Enum)):
                cols.append(pl.col(col))
                continue
            cols.append(pl.col(col).cast(dtype, strict=True))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(col))
    if extra:
        cols += [pl.col(c) for c in df.columns if c not in target]
    try:
        return df.select(cols)
    except pl.exceptions.PolarsError as e:  # pragma: no cover - programming error path
        raise SchemaError(f"table does not fit schema {name}: {e}") from None


def _text(t: pa.DataType) -> bool:
    """Strings, in any of Arrow's layouts (a dictionary of strings is how a file with its Arrow
    schema stored holds them)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def validate_arrow(table: pa.Table, name: str, *, where: str = "table") -> None:
    """Raise SchemaError unless ``table`` has exactly the columns and types of ``name``."""
    want = arrow_schema(name)
    got = table.schema
    for f in want:
        idx = got.get_field_index(f.name)
        if idx < 0:
            raise SchemaError(f"{where}: expected column {f.name!r} ({f.type}), found none")
        g = got.field(idx)
        if not (g.type.equals(f.type) or (_text(f.type) and _text(g.type))):
            raise SchemaError(f"{where}: column {f.name!r}: expected {f.type}, found {g.type}")
        if not f.nullable and table.column(idx).null_count:
            raise SchemaError(f"{where}: column {f.name!r} must not hold nulls")


# --------------------------------------------------------------------------
# Atomic output


def check_output(path: str | os.PathLike[str], *, force: bool) -> Path:
    """Refuse to overwrite an existing output unless ``force``; return the Path."""
    p = Path(path)
    if p.is_dir():
        raise OutputExistsError(f"{p}: expected an output file, found a directory")
    if p.exists() and not force:
        raise OutputExistsError(f"{p}: output exists; use --force to overwrite it")
    return p


class AtomicPath:
    """Context manager giving a temporary path beside ``dest``, renamed onto it on success.

    Any exception removes the temporary file, so no half-written output is left.
    """

    def __init__(self, dest: str | os.PathLike[str], *, force: bool = False):
        self.dest = check_output(dest, force=force)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        parent = self.dest.parent if str(self.dest.parent) else Path(".")
        if not parent.is_dir():
            raise OutputExistsError(f"{self.dest}: the output folder {parent} does not exist")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.dest.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes it private; outputs are ordinary files
            os.replace(self.tmp, self.dest)
        else:
            self.tmp.unlink(missing_ok=True)


def metadata_for(info: TraceInfo, schema: str, **extra: Any) -> dict[bytes, bytes]:
    doc = schema_doc(schema)
    payload = json.loads(info.to_json())
    payload.update(
        schema=doc["name"], schema_version=doc["version"], tracekit_version=__version__, **extra
    )
    return {META_KEY: json.dumps(payload, sort_keys=True).encode()}


def write_table(
    batches: pl.DataFrame | Iterable[pl.DataFrame],
    dest: str | os.PathLike[str],
    *,
    schema: str,
    info: TraceInfo,
    force: bool = False,
    extra_columns: bool = False,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write one or many frames as ONE Parquet file following ``schema``, atomically.

    Frames are conformed to the schema (extra columns kept only with
    ``extra_columns``). Columns are encoded as the schema's ``storage`` says
    (dictionary strings, delta integers); row groups follow its ``row_group_size``.
    """
    if isinstance(batches, pl.DataFrame):
        batches = [batches]
    with TableWriter(dest, schema=schema, force=force, extra_columns=extra_columns) as w:
        for df in batches:
            w.write(df)
        w.finish(info, extra_metadata)
    return Path(dest)


class TableWriter:
    """ONE Parquet file following ``schema``, written frame by frame, renamed into place at the end.

    For outputs made piece by piece (the findings of one mitigation after another):
    each frame is written as it comes, and the metadata, which may depend on all of
    them (the costs), goes in last, with ``finish``. Leaving the ``with`` block
    without ``finish`` (an error) leaves no file behind.
    """

    def __init__(self, dest: str | os.PathLike[str], *, schema: str, force: bool = False,
                 extra_columns: bool = False, arrow_types: bool | None = None) -> None:
        self.schema, self.extra_columns = schema, extra_columns
        self.row_group = int(schema_doc(schema).get("row_group_size", 1 << 20))
        target = arrow_schema(schema)
        # Only the string columns are dictionary-encoded: numbers such as time, addr
        # and seq are nearly unique, and building a dictionary for them (then
        # abandoning it) was half of the writer's time. The numbers are delta-encoded
        # instead, and the pages compressed as the schema's storage section says.
        storage = schema_doc(schema).get("storage", {})
        self.compression = storage.get("compression", "zstd")
        self.compression_level = storage.get("compression_level")
        self.dictionary = [f.name for f in target if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        # Tables go to the writer as polars holds them (string views, no copy: converting
        # them to Arrow strings was a third of the writer's CPU), and coded columns (Enum,
        # Categorical) as Arrow dictionaries, whose values the writer takes as they are
        # instead of hashing every row's text.
        #
        # Where the schema's storage says ``arrow_types``, every text column is coded so
        # (an Enum where the schema lists the values, else a Categorical) and the file
        # stores its Arrow schema: each text column a dictionary of strings carrying
        # polars' own description of the Enum or Categorical (from ``to_arrow``). polars
        # then decodes the Parquet dictionary pages straight to Enum and Categorical codes
        # (10 M events: 0.72 s instead of 1.03 s, without strings made and hashed on the
        # way); pyarrow gives dictionaries (pandas: Categoricals). Otherwise the Arrow
        # schema is not stored (it would say string_view or dictionary) and every reader
        # sees plain strings. The tracekit metadata is added by hand either way, to the
        # file's key-value metadata (``read_metadata``). ``arrow_types`` overrides the schema's
        # storage (False: a file as every trace was written before, for comparisons).
        self.arrow_types = bool(storage.get("arrow_types")) if arrow_types is None else arrow_types
        self.compact = polars_schema(schema, compact=True) if self.arrow_types else {}
        self.target = pa.schema([f.with_type(pa.string_view()) if f.name in self.dictionary else f for f in target])
        self._coded: set[str] | None = None  # the text columns written as dictionaries (the first frame's)
        self._index_types: dict[str, pa.DataType] = {}  # their index types (the first frame's)
        self._atomic = AtomicPath(dest, force=force)
        self._writer: pq.ParquetWriter | None = None
        self._finished = False
        # pyarrow starts a row group at every write_table call: frames are held (as Arrow
        # tables, no copy) until a whole row group's worth is there. Ingest hands over
        # ~60k-row batches, and wrote 170 row groups of them for 10 M events: a dictionary
        # page and statistics per column each time (1.72 s of writing, 1.55 s in 1 M-row groups).
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def __enter__(self) -> "TableWriter":
        self._tmp = self._atomic.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._writer is not None:
            self._writer.close()
        if exc_type is None and not self._finished:  # left early: no half-written output either
            exc_type = RuntimeError
        self._atomic.__exit__(exc_type, exc, tb)

    def write(self, df: pl.DataFrame) -> None:
        for piece in _slices([df], self.row_group):
            table = self._table(piece)
            if self._writer is None:
                self._writer = self._open(table)
            if table.num_rows:
                self._pending.append(table)
                self._pending_rows += table.num_rows
                if self._pending_rows >= self.row_group:
                    self._flush(whole_groups=True)

    def _table(self, piece: pl.DataFrame) -> pa.Table:
        """``piece`` as the Arrow table the file is written from."""
        frame = conform(piece, self.schema, extra=self.extra_columns, keep_coded=True)
        if self.arrow_types:
            frame = frame.with_columns(pl.col(c).cast(self.compact[c]) for c in self.dictionary
                                       if frame.schema[c] != self.compact[c])
        coded = {c for c, t in frame.schema.items() if isinstance(t, (pl.Categorical, pl.Enum))}
        if self._coded is None:  # the first frame fixes each text column's Arrow type
            self._coded = coded
        if coded != self._coded:  # a frame coded otherwise than the first: made alike
            frame = frame.with_columns(*(pl.col(c).cast(pl.String) for c in coded - self._coded),
                                       *(pl.col(c).cast(pl.Categorical) for c in self._coded - coded
                                         if c in frame.columns))
        table = frame.to_arrow(compat_level=pl.CompatLevel.newest())
        schema = self._schema(table.schema)
        return table if table.schema.equals(schema, check_metadata=True) else table.cast(schema)

    def _schema(self, got: pa.Schema) -> pa.Schema:
        """The Arrow schema the file is written with: the target's (or, with extra columns, the
        frame's), coded text columns as dictionaries of strings (Parquet takes no string views in
        a dictionary). Stored (``arrow_types``), each keeps its index type and polars' field
        metadata, both fixed by the schema (an Enum's values, or a Categorical); else one type for
        every frame, with the first frame's index type (polars' own: an Enum's 8 to 32 bits, a
        Categorical's 32), so that only the few dictionary values are cast, never the indices:
        1.8 M findings converted in 0.13 s instead of 0.30 s; the Parquet is the same."""
        base = got if self.extra_columns else self.target
        fields = []
        for f in base:
            if f.name in (self._coded or ()):
                if self.arrow_types:
                    g = got.field(f.name)
                    f = f.with_type(pa.dictionary(g.type.index_type, pa.string(), g.type.ordered))
                    f = f.with_metadata(g.metadata)
                else:
                    index = self._index_types.setdefault(f.name, got.field(f.name).type.index_type)
                    f = f.with_type(pa.dictionary(index, pa.string()))
            fields.append(f)
        return pa.schema(fields)

    def _flush(self, *, whole_groups: bool) -> None:
        """Write the held tables: the whole row groups among them (the rest stays held), or all."""
        if not self._pending:
            return
        held = pa.concat_tables(self._pending)
        cut = held.num_rows - held.num_rows % self.row_group if whole_groups else held.num_rows
        assert self._writer is not None
        if cut:
            self._writer.write_table(held.slice(0, cut), row_group_size=self.row_group)
        rest = held.slice(cut)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def finish(self, info: TraceInfo, extra_metadata: dict[str, Any] | None = None) -> None:
        """Add the metadata and close the file (renamed into place when the ``with`` block ends)."""
        self._flush(whole_groups=False)
        if self._writer is None:  # no rows: an empty but valid file
            empty = self._table(conform(pl.DataFrame(), self.schema))
            self._writer = self._open(empty)
            self._writer.write_table(empty)
        self._writer.add_key_value_metadata(metadata_for(info, self.schema, **(extra_metadata or {})))
        self._writer.close()
        self._writer = None
        self._finished = True

    def _open(self, table: pa.Table) -> pq.ParquetWriter:
        texts = [f.name for f in table.schema if f.name in self.dictionary or pa.types.is_dictionary(f.type)
                 or pa.types.is_string_view(f.type)]
        return pq.ParquetWriter(self._tmp, table.schema, compression=self.compression,
                                compression_level=self.compression_level, use_dictionary=texts, store_schema=self.arrow_types,
                                column_encoding=column_encodings(self.schema, table.schema, texts),
                                write_statistics=statistics_columns(self.schema, table.schema, texts))


def statistics_columns(schema: str, arrow: pa.Schema, texts: list[str]) -> list[str]:
    """The columns whose row groups carry min/max statistics: every number, and only the text
    columns the schema's ``storage.text_statistics`` names.

    A text column's statistics are taken from its decoded values: writing 1.7 M findings
    took 0.79 s with them, 0.70 s without; 3 M trace events 0.78 s, 0.66 s. They help a
    reader skip row groups only where the rows are grouped by that column (findings by
    mitigation).
    """
    keep = set(schema_doc(schema).get("storage", {}).get("text_statistics", []))
    return [f.name for f in arrow if f.name not in texts or f.name in keep]


def column_encodings(schema: str, arrow: pa.Schema, dictionary: list[str]) -> dict[str, str]:
    """The Parquet encoding of each column that is not dictionary-encoded, by its Arrow type
    (the schema's ``storage.encodings``): delta for integers, byte stream split for floats.

    Measured on a 10-million-event trace: the writer's CPU 2.9 -> 2.3 s and the file half the
    size (seq and src_line shrink 200x, addresses 25x); reading it back is no slower.
    """
    rules = schema_doc(schema).get("storage", {}).get("encodings", {})
    out = {}
    for f in arrow:
        if f.name in dictionary:
            continue
        kind = "integer" if pa.types.is_integer(f.type) else "float" if pa.types.is_floating(f.type) else None
        if kind in rules:
            out[f.name] = rules[kind]
    return out


def _slices(batches: Iterable[pl.DataFrame], rows: int = 1 << 20) -> Iterator[pl.DataFrame]:
    """Frames cut to at most ``rows`` rows: each is converted (e.g. Categorical to strings) on its own."""
    for df in batches:
        for start in range(0, max(df.height, 1), rows):
            yield df.slice(start, rows)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``tracekit`` JSON metadata of a Parquet file written by tracekit.

    Read from the file's key-value metadata: where a file stores its Arrow schema, pyarrow's
    ``read_schema`` gives that schema's metadata instead, and the writer adds ours at the end.
    """
    try:
        md = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as e:
        raise TracekitError(f"{path}: expected a Parquet file written by tracekit, found: {e}") from None
    if META_KEY not in md:
        raise TracekitError(f"{path}: expected tracekit metadata (key 'tracekit'), found none")
    try:
        meta = json.loads(md[META_KEY])
    except ValueError as e:
        raise TraceFormatError(f"{path}: expected its tracekit metadata as JSON, found: {e}") from None
    if not isinstance(meta, dict):
        raise TraceFormatError(f"{path}: expected its tracekit metadata as a JSON object, found {type(meta).__name__}")
    return meta


@contextlib.contextmanager
def reading(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """The readers' errors on a damaged Parquet file (bad pages, bad thrift, bad UTF-8: the footer
    was sound) as a TraceFormatError naming the file and what it should have been."""
    try:
        yield
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError, pa.ArrowException, OSError) as e:
        said = " ".join(str(e).split())  # (pyarrow's messages span lines)
        raise TraceFormatError(f"{path}: expected {what}, found a damaged file ({said})") from None


def read_compact(path: str | os.PathLike[str], name: str, what: str) -> pl.DataFrame:
    """Table ``name`` from a Parquet file with its string columns in their bulk form
    (``polars_schema(name, compact=True)``): the file's dictionaries become codes, no string
    is copied per row (a third of the memory of strings, and faster to read)."""
    target = polars_schema(name, compact=True)
    with reading(path, what):
        return pl.scan_parquet(path).select(pl.col(c).cast(t) for c, t in target.items()).collect()


def read_trace_info(path: str | os.PathLike[str]) -> TraceInfo:
    """The trace settings a tracekit file records, checked (a damaged or hand-edited footer)."""
    return info_of(read_metadata(path), path)


def info_of(meta: dict[str, Any], path: str | os.PathLike[str]) -> TraceInfo:
    """``TraceInfo.from_dict(meta)``, an error naming ``path`` when the settings are not ones
    tracekit writes."""
    try:
        info = TraceInfo.from_dict(meta)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise TraceFormatError(f"{path}: expected the trace settings (line size, regions, devices) in its "
                               f"metadata, found: {e}") from None
    ls = info.line_size
    if not 4 <= ls <= 4096 or ls & (ls - 1):
        raise TraceFormatError(f"{path}: expected a line size that is a power of two between 4 and 4096 in its "
                               f"metadata, found {ls}")
    for r in info.regions:
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (r.base, r.size))
        if not (isinstance(r.name, str) and whole and r.base >= 0 and 1 <= r.size <= (1 << 64) - r.base
                and r.kind in ("ram", "mmio") and r.s2 in MEMORY_TYPES and r.host in (*MEMORY_TYPES, "none")
                and isinstance(r.shared, bool)):
            raise TraceFormatError(f"{path}: expected regions of NAME, BASE, SIZE (whole numbers), kind ram or mmio "
                                   f"and memory types in its metadata, found {r}")
    for d in info.devices:
        if not (isinstance(d.name, str) and isinstance(d.coherent, bool)):
            raise TraceFormatError(f"{path}: expected devices of a name and coherent true or false in its metadata, "
                                   f"found {d}")
    return info


def describe(name: str) -> str:
    """Human-readable documentation of a schema (``tracekit schema``)."""
    doc = schema_doc(name)
    out = [f"{doc['name']} version {doc['version']}", "", doc["description"], ""]
    if "notebook_hints" in doc:
        out += ["In a notebook: " + doc["notebook_hints"], ""]
    width = max(len(c["name"]) for c in doc["columns"])
    for c in doc["columns"]:
        null = "nullable" if c["nullable"] else "required"
        out.append(f"  {c['name']:<{width}}  {c['type']:<7} {null}")
        out.append(f"  {'':<{width}}  {c['meaning']}")
        if "allowed" in c:
            out.append(f"  {'':<{width}}  allowed: {', '.join(c['allowed'])}")
    storage = doc.get("storage")
    if storage:
        enc = ", ".join(f"{k} columns {v}" for k, v in storage["encodings"].items())
        level = f" level {storage['compression_level']}" if "compression_level" in storage else ""
        out += ["", f"Storage: row groups of {doc.get('row_group_size', 1 << 20)} rows, "
                    f"{storage['compression']}{level} pages, {enc}."]
    md = doc.get("metadata")
    if md:
        out += ["", f"Metadata key {md['key']!r} ({md['encoding']}):"]
        out += [f"  {k}: {v}" for k, v in md["fields"].items()]
    return "\n".join(out) + "\n"
