"""A trace Parquet written by tracekit, as an input of `tracekit ingest`.

So a trace ingested once (a host-side log, say) merges with another input later
without going back to the raw log, and a trace can be re-cut with other settings
(``--line-size``, ``--stage2``...). Events keep their provenance: ``src`` and
``src_line`` still name the file and line each came from, not this Parquet file.
The trace's own settings, regions and devices come along; command options win
over them, as they do over a scenario header.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import TraceFormatError
from ..schema import TRACE_SCHEMA, conform, read_metadata, read_trace_info, schema_doc
from .base import ImportOptions, ImportResult

MAGIC = b"PAR1"
BATCH_ROWS = 1 << 20


class ParquetTraceImporter:
    """Trace Parquet files written by tracekit (schema trace-v1)."""

    format = "parquet"
    description = "a trace Parquet written by tracekit (trace-v1), to merge or re-cut"
    suffixes = (".parquet",)
    settings_upfront = True

    def detect(self, head: bytes, path: Path) -> bool:
        return head.startswith(MAGIC)

    def read(self, path: Path, options: ImportOptions) -> ImportResult:
        path = Path(path)
        try:
            meta = read_metadata(path)
        except Exception as e:  # noqa: BLE001 - named in the message
            raise TraceFormatError(f"{path}: expected a trace Parquet written by tracekit, found: {e}") from None
        want = schema_doc(TRACE_SCHEMA)["name"]
        if meta.get("schema") != want:
            raise TraceFormatError(f"{path}: expected a trace Parquet (schema {want}), found schema "
                                   f"{meta.get('schema')!r}")
        info = read_trace_info(path)
        changes = {k: v for k, v in (("line_size", options.line_size or None), ("stage2", options.stage2),
                                     ("fwb", options.fwb), ("regions", options.regions),
                                     ("devices", options.devices)) if v is not None}
        info = info.replace(inputs=(), **changes)
        rows = pq.ParquetFile(path).metadata.num_rows

        def batches() -> Iterator[pl.DataFrame]:
            from .._progress import progress

            with progress(total=rows, desc=f"reading {path.name}", unit="ev", unit_scale=True,
                          quiet=options.quiet) as bar:
                try:
                    row = 0
                    for b in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
                        df = conform(pl.from_arrow(b), TRACE_SCHEMA).drop("seq")
                        _check_vocabulary(df, path, row)
                        row += df.height
                        bar.update(df.height)
                        yield df
                except (OSError, pa.ArrowException) as e:
                    raise TraceFormatError(f"{path}: expected a readable trace Parquet, found: {e}") from None

        return ImportResult(batches=batches(), info=info,
                            summary={"format": self.format, "events": rows,
                                     "note": "events keep their own src and src_line"})


def _check_vocabulary(df: pl.DataFrame, path: Path, first_row: int) -> None:
    """The closed vocabularies (side, op, cmo, attr) hold only their words: a file edited or
    damaged by hand is refused here, where its row can be named, not later by a cast."""
    from ..resolve import VOCABULARY

    for col, dtype in VOCABULARY.items():
        words = dtype.categories.to_list()
        bad = df[col].is_not_null() & ~df[col].is_in(words)
        if bad.any():
            at = int(bad.arg_true()[0])
            raise TraceFormatError(f"{path}: row {first_row + at}: expected {col} one of {', '.join(words)}, "
                                   f"found {df[col][at]!r}")


IMPORTER = ParquetTraceImporter()
