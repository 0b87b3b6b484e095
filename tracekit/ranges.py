"""Coalesce findings into address ranges that need one maintenance operation.

A finding names one line; a patch names a buffer. Adjacent lines that need the
same maintenance, by the same agent, in the same window of the trace, are one
``DC`` loop over ``[start, end)``, so reports and notebooks show ranges.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from .errors import UsageError

#: Columns that must be equal for two adjacent lines to share a range.
RANGE_KEY = ("mitigation", "cause", "fix_op", "fix_after_seq", "fix_before_seq", "fix_agent", "region")

#: The ranges frame, column -> dtype, in order (documented in :func:`ranges`).
RANGES_SCHEMA: dict[str, pl.DataType] = {
    "mitigation": pl.String(),
    "cause": pl.String(),
    "fix_op": pl.String(),
    "fix_agent": pl.String(),
    "fix_after_seq": pl.UInt64(),
    "fix_before_seq": pl.UInt64(),
    "region": pl.String(),
    "start": pl.UInt64(),
    "end": pl.UInt64(),
    "lines": pl.UInt64(),
    "findings": pl.UInt32(),
    "kinds": pl.List(pl.String()),
    "seqs": pl.List(pl.UInt64()),
    "other_seqs": pl.List(pl.UInt64()),
}

_KIND_ORDER = ("stale-read", "lost-write", "stale-ifetch")


def _flat(col: str) -> pl.Expr:
    """The per-line lists of a range's rows, as one flat list (in a group_by)."""
    return pl.col(col).list.explode(keep_nulls=False, empty_as_null=False)


def _check_line_size(line_size: int) -> int:
    if isinstance(line_size, bool) or not isinstance(line_size, int) or line_size < 1 \
            or line_size & (line_size - 1):
        raise UsageError(f"line size: expected a power of two, found {line_size!r}")
    return line_size


def ranges(findings: pl.DataFrame, line_size: int) -> pl.DataFrame:
    """The address ranges that need maintenance, one row per maintenance operation.

    Lines of ``findings`` (a findings-v1 frame) that are contiguous
    (``line`` steps by ``line_size``) and agree on ``mitigation``, ``cause``,
    ``fix_op``, the fix window (``fix_after_seq``, ``fix_before_seq``),
    ``fix_agent`` and ``region`` become one range. The fix agent and region are
    part of the key so that every range names exactly one agent that can do the
    maintenance and one region (in practice both follow from the fix window).
    Several findings on one line with the same key (a lost write and the
    stale reads of its clobbered bytes) count once towards the range's lines.

    Columns of the result:

    ``mitigation``, ``cause``, ``fix_op``, ``fix_agent``, ``region``
        as in the findings;
    ``fix_after_seq``, ``fix_before_seq``
        the two bounding events: the maintenance must come strictly after the
        first and strictly before the second;
    ``start``, ``end``
        the range ``[start, end)`` in bytes, line-aligned;
    ``lines``
        ``(end - start) / line_size``;
    ``findings``
        the number of findings the range removes;
    ``kinds``
        the kinds of those findings (stale-read, lost-write, stale-ifetch order);
    ``seqs``
        the events the findings are reported at, ascending;
    ``other_seqs``
        their other events (the missed write, the older cacheable write, the
        invalidation), ascending, nulls dropped.

    Rows are sorted by mitigation (in the order they first appear in
    ``findings``), then ``start``, ``cause``, ``fix_after_seq``,
    ``fix_before_seq``, ``fix_agent``. The computation is one sort, one diff
    and one cumulative sum, whatever the number of findings.
    """
    line_size = _check_line_size(line_size)
    missing = [c for c in (*RANGE_KEY, "line", "kind", "seq", "other_seq") if c not in findings.columns]
    if missing:
        raise UsageError(f"findings: expected findings-v1 columns, found none named {', '.join(missing)}")
    if findings.height == 0:
        return pl.DataFrame(schema=RANGES_SCHEMA)

    key = list(RANGE_KEY)
    kind_rank = pl.col("kind").replace_strict(
        {k: i for i, k in enumerate(_KIND_ORDER)}, default=len(_KIND_ORDER), return_dtype=pl.UInt8
    )
    # Rows sorted so that a range's findings are adjacent and its lines ascending; nulls
    # (fix_agent, region) sort together, so null-safe comparisons below group them. A new
    # range starts where the key changes or the line steps by more than one line (several
    # findings on one line with the same key need one maintenance). The labels are sorted and
    # compared as integer codes: only their equality matters here (the ranges are put in
    # order by name at the end), and sorting strings was most of the time.
    codes = {c: f"_code_{c}" for c in key
             if findings.schema[c] == pl.String or isinstance(findings.schema[c], (pl.Categorical, pl.Enum))}
    by = [codes.get(c, c) for c in key]
    prev_differs = pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in by])
    step = pl.col("line") - pl.col("line").shift(1)
    apart = ~(step.eq_missing(pl.lit(0, dtype=pl.UInt64)) | step.eq_missing(pl.lit(line_size, dtype=pl.UInt64)))
    first_row = pl.int_range(pl.len()) == 0
    rows = (
        findings.lazy()
        .with_row_index("_row")
        .select("_row", *[c for c in by if c not in codes.values()],
                pl.col("_row").min().over("mitigation").alias("_mit_order"), kind_rank.alias("_kind_rank"),
                pl.col("line").cast(pl.UInt64), pl.col("seq").cast(pl.UInt64), pl.col("other_seq").cast(pl.UInt64),
                *[_label_code(c, findings.schema[c]).alias(name) for c, name in codes.items()])
        .sort([*by, "line"], nulls_last=True)
        .with_columns(_new=first_row | prev_differs | apart)
        .collect(engine="in-memory")
    )
    # Each range is a run of rows: its scalars are read at the run's first and last rows (the
    # labels from the findings, by row: the sort moved only codes and numbers), its lists are
    # made from the run boundaries (a group_by with unique().sort() per range cost 60% of the
    # time on millions of findings), directly in the ranges' final order.
    head = np.flatnonzero(rows["_new"].to_numpy())
    bounds = np.append(head, rows.height)
    last = bounds[1:] - 1
    line = rows["line"].to_numpy()
    at_head = findings.select(*key)[rows["_row"].gather(head)].with_columns(
        _mit_order=rows["_mit_order"].gather(head),
        start=pl.Series(line[head]),
        end=pl.Series(line[last] + np.uint64(line_size)),
        lines=pl.Series((line[last] - line[head]) // np.uint64(line_size) + np.uint64(1)),
        findings=pl.Series(np.diff(bounds).astype(np.uint32)),
    )
    order = at_head.select(pl.arg_sort_by(["_mit_order", "start", "cause", "fix_after_seq", "fix_before_seq",
                                           "fix_agent"], nulls_last=True)).to_series().to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return (
        at_head[order]
        .with_columns(kinds=_run_kinds(rows["_kind_rank"].to_numpy(), head).gather(pl.Series(order)),
                      seqs=_run_lists(rows["seq"], bounds, rank),
                      other_seqs=_run_lists(rows["other_seq"], bounds, rank))
        .select([pl.col(c).cast(t) for c, t in RANGES_SCHEMA.items()])
    )


def _label_code(column: str, dtype: pl.DataType) -> pl.Expr:
    """An integer per distinct label of ``column`` (null stays null)."""
    col = pl.col(column) if isinstance(dtype, (pl.Categorical, pl.Enum)) else pl.col(column).cast(pl.Categorical)
    return col.to_physical()


def _run_kinds(rank: np.ndarray, head: np.ndarray) -> pl.Series:
    """Per run of rows starting at ``head``: its kinds (ranks of ``_KIND_ORDER``, 3 for any other),
    in that order. A run holds at most four distinct ranks: their set is a 4-bit mask, and the
    lists are taken from the 16 possible (building millions of string lists took 2 s)."""
    names = [*_KIND_ORDER, "?"]
    mask = np.bitwise_or.reduceat(np.left_shift(np.uint8(1), rank.astype(np.uint8)), head)
    table = pl.Series([[names[i] for i in range(4) if m >> i & 1] for m in range(16)], dtype=pl.List(pl.String))
    return table.gather(pl.Series(mask.astype(np.uint32)))


def _run_lists(values: pl.Series, bounds: np.ndarray, rank: np.ndarray) -> pl.Series:
    """Per run of rows ``[bounds[i], bounds[i+1])``: its distinct non-null values, ascending; the
    lists in the order of the runs' ``rank``.

    One sort of (rank, value) packed in an integer, one pass to drop repeats, and the list
    column is built from offsets: no per-run work in Python or in a group_by.
    """
    run = np.repeat(rank, np.diff(bounds))
    keep = values.is_not_null().to_numpy()
    v = values.fill_null(0).to_numpy().astype(np.uint64)[keep]
    run = run[keep]
    v_bits = max(1, int(v.max()).bit_length()) if len(v) else 1
    r_bits = max(1, int(len(bounds)).bit_length())
    if v_bits + r_bits <= 64:
        packed = (run.astype(np.uint64) << np.uint64(v_bits)) | v
        packed.sort()
        run = (packed >> np.uint64(v_bits)).astype(np.int64)
        v = packed & np.uint64((1 << v_bits) - 1)
    else:  # values too wide to pack beside the run number
        order = np.lexsort((v, run))
        run, v = run[order], v[order]
    fresh = np.ones(len(v), dtype=bool)
    fresh[1:] = (run[1:] != run[:-1]) | (v[1:] != v[:-1])
    run, v = run[fresh], v[fresh]
    offsets = np.zeros(len(bounds), dtype=np.int64)
    np.cumsum(np.bincount(run, minlength=len(bounds) - 1), out=offsets[1:])
    return pl.Series(pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(v))).cast(pl.List(values.dtype))
