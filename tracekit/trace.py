"""A trace in memory (``Trace``) and the ways to get one.

``load`` reads a trace Parquet written by tracekit as it is, and imports any
other input (``.tkt``, CSV, JSONL, ...) in memory exactly as ``tracekit
ingest`` would write it. ``scan`` gives a trace Parquet as a polars LazyFrame
for notebooks and for the stages that stream.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from . import _cores, schema
from .errors import TracekitError
from .importers import ImportOptions
from .model import TraceInfo

PathLike = str | os.PathLike[str]


@dataclass
class Trace:
    """Events in trace-v1 (``seq`` dense 0..n-1) and the trace-wide settings.

    ``source`` names what was loaded; ``sha256`` is the hash of that file's bytes
    (for several inputs, the hash of their hashes in order).
    """

    events: pl.DataFrame
    info: TraceInfo
    source: str = ""
    sha256: str = ""

    def __len__(self) -> int:
        return self.events.height

    def lazy(self) -> pl.LazyFrame:
        return self.events.lazy()


def is_trace_parquet(path: PathLike) -> bool:
    """True when ``path`` is a Parquet file (magic bytes), whatever its name."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"PAR1"


def load(path_or_paths: PathLike | Sequence[PathLike], *, format: str | None = None,
         options: ImportOptions | None = None, concat: bool = False, compact: bool = False,
         gathered_in_pieces: bool = False) -> Trace:
    """The trace in ``path_or_paths``: a tracekit Parquet as is, anything else imported in memory.

    Several inputs merge by time (or append with ``concat``), as in ``ingest``.
    ``compact=True`` reads a trace Parquet with its string columns as the resolved
    frame holds them (closed vocabularies as Enums, agents, registers, phases,
    details and sources as Categoricals): what `analyze` does, at a third of the
    memory of strings and without converting them afterwards.
    ``gathered_in_pieces``: leave the columns that are only gathered from (time, phase,
    detail and the sources) in the pieces polars read them in, for a trace replayed once
    (``_one_piece``).
    """
    from .ingest import file_sha256, ingest_frame

    single = isinstance(path_or_paths, (str, os.PathLike))
    paths = [path_or_paths] if single else list(path_or_paths)
    if len(paths) == 1 and format in (None, "parquet") and is_trace_parquet(paths[0]):
        p = paths[0]
        info = schema.read_trace_info(p)
        md = schema.read_metadata(p)
        if md.get("schema") != schema.schema_doc(schema.TRACE_SCHEMA)["name"]:
            raise TracekitError(f"{p}: expected a trace file (schema tracekit-trace), found {md.get('schema')!r}")
        with ThreadPoolExecutor(1) as pool:  # hashing (GIL released) overlaps the read
            digest = pool.submit(file_sha256, p)
            with schema.reading(p, "a trace Parquet written by tracekit"):
                events = _read_compact(p) if compact else schema.conform(pl.read_parquet(p), schema.TRACE_SCHEMA)
            return Trace(_one_piece(events, gathered_in_pieces), info, str(p), digest.result())
    events, info = ingest_frame(paths, format=format, concat=concat, options=options)
    events = _one_piece(events, gathered_in_pieces)
    if len(info.inputs) == 1:
        digest = info.inputs[0].sha256
    else:
        digest = hashlib.sha256("".join(i.sha256 for i in info.inputs).encode()).hexdigest()
    return Trace(events, info, ", ".join(str(p) for p in paths), digest)


#: The trace columns the engine reads as arrays (resolve, mitigations, replay); the others
#: (time, phase, detail, sources) are only gathered at a few rows (inserted events, findings).
_ARRAY_COLUMNS = ("seq", "agent", "side", "op", "addr", "size", "cmo", "sysreg", "value", "attr", "attr_index")


def _one_piece(events: pl.DataFrame, gathered_in_pieces: bool = False) -> pl.DataFrame:
    """The events with each column in one piece (``gathered_in_pieces``: each column read as
    an array).

    polars reads a Parquet file in pieces (one or more per row group: 10 to 95 for 10 M
    events), and every numpy view of a column in pieces is a copy. Copied once here, the
    resolved frame shares the trace's columns, and an analysis that holds both (the
    Trace and its resolved frame) holds the events once: 0.7 GB less for 10 M events.
    The columns only gathered from are worth a copy when many mitigations copy the frame
    (the catalog of 10 M events took 4 s and 0.5 GB more with them in pieces), not for one
    replay (360 MB and ~0.1 s less).
    """
    wanted = events.columns if not gathered_in_pieces else [c for c in _ARRAY_COLUMNS if c in events.columns]
    pieces = [c for c in wanted if events[c].n_chunks() > 1]
    if not pieces:
        return events
    # a column at a time on each core (polars copies a Series without the GIL; DataFrame.rechunk
    # copied 7 columns of 10 M events in 0.2 s, two threads in 0.1 s), the biggest first
    pieces.sort(key=lambda c: -events[c].estimated_size())
    return events.with_columns(_cores.on_cores([events[c].rechunk for c in pieces]))


def _read_compact(path: PathLike) -> pl.DataFrame:
    from .resolve import LABELS, VOCABULARY

    target = schema.polars_schema(schema.TRACE_SCHEMA)
    lf = pl.scan_parquet(path)
    stored = lf.collect_schema()
    missing = [c for c in target if c not in stored]
    if missing:
        raise TracekitError(f"{path}: expected the trace-v1 columns, found {', '.join(missing)} missing")
    want = {c: VOCABULARY.get(c, pl.Categorical if c in LABELS else t) for c, t in target.items()}
    # a file that stores its Arrow types (schemas/trace-v1.json, "storage") holds the closed
    # vocabularies as Enums in string order: the codes are mapped to the kernels' order below
    recode = [c for c, t in want.items() if isinstance(t, pl.Enum) and isinstance(stored[c], pl.Enum)]
    df = lf.select(pl.col(c) if c in recode or stored[c] == t else pl.col(c).cast(t) for c, t in want.items()).collect()
    # one with_columns: polars recodes the columns at once, on its threads (0.15 -> 0.08 s for
    # the four of 10 M events)
    return df.with_columns(_recoded(c, df.schema[c], want[c]) for c in recode)


def _recoded(column: str, have: pl.Enum, to: pl.Enum) -> pl.Expr:
    """An Enum column as the Enum ``to`` of the same values, by a table of codes (in one piece)."""
    values = have.categories.to_list()
    if values == to.categories.to_list():
        return pl.col(column)
    table = np.full(256, 255, np.uint8)  # 255: null, as enum_of_codes reads it
    try:
        table[:len(values)] = [to.categories.to_list().index(v) for v in values]
    except ValueError:  # a value the vocabulary lacks: polars' cast names it
        return pl.col(column).cast(pl.String).cast(to)
    return schema.enum_of_codes(pl.col(column).to_physical().fill_null(255), to, table).alias(column)


def scan(path: PathLike) -> pl.LazyFrame:
    """The trace Parquet ``path`` as a LazyFrame (checked to be a tracekit trace), in trace-v1:
    text columns as strings (the file may hold them as Enums and Categoricals, see
    schemas/trace-v1.json "storage"; ``load(path, compact=True)`` keeps them so)."""
    read_info(path)
    lf = pl.scan_parquet(path)
    coded = [c for c, t in lf.collect_schema().items() if isinstance(t, (pl.Enum, pl.Categorical))]
    return lf.with_columns(pl.col(coded).cast(pl.String)) if coded else lf


def read_info(path: PathLike) -> TraceInfo:
    """The settings (line size, stage 2, FWB, regions, devices, inputs) of a trace Parquet."""
    p = Path(path)
    if p.is_dir():
        raise TracekitError(f"{p}: expected a trace file, found a directory")
    if not p.exists():
        raise TracekitError(f"{p}: expected a trace file, found no such file")
    return schema.read_trace_info(p)
