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
    ``fix_before_seq``, ``fix_agent``, ``fix_op`` and ``region`` (labels by
    their text, nulls last). The computation is one sort, one diff and one
    cumulative sum, whatever the number of findings.
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
    # Rows sorted so that a range's findings are adjacent and its lines ascending. A new range
    # starts where the key changes or the line steps by more than one line (several findings
    # on one line with the same key need one maintenance). The key's seven columns are sorted
    # and compared as a few integer words (`_order_words`): only their equality matters here
    # (the ranges are put in order at the end).
    words = _order_words(findings, key)
    by = [f"_w{i}" for i in range(len(words))]
    prev_differs = pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in by])
    step = pl.col("line") - pl.col("line").shift(1)
    apart = ~(step.eq_missing(pl.lit(0, dtype=pl.UInt64)) | step.eq_missing(pl.lit(line_size, dtype=pl.UInt64)))
    first_row = pl.int_range(pl.len()) == 0
    rows = (
        findings.lazy()
        .with_row_index("_row")
        .select("_row", pl.col("_row").min().over("mitigation").alias("_mit_order"), kind_rank.alias("_kind_rank"),
                pl.col("line").cast(pl.UInt64), pl.col("seq").cast(pl.UInt64), pl.col("other_seq").cast(pl.UInt64))
        .collect()
        .with_columns(pl.Series(name, w) for name, w in zip(by, words))
        .sort([*by, "line"])
        .with_columns(_new=first_row | prev_differs | apart)
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
    words = _order_words(at_head, ["_mit_order", "start", "cause", "fix_after_seq", "fix_before_seq", "fix_agent",
                                   "fix_op", "region"])
    order = pl.DataFrame([pl.Series(f"_w{i}", w) for i, w in enumerate(words)]).select(
        pl.arg_sort_by([f"_w{i}" for i in range(len(words))])).to_series().to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return (
        at_head[order]
        .with_columns(kinds=_run_kinds(rows["_kind_rank"].to_numpy(), head).gather(pl.Series(order)),
                      seqs=_run_lists(rows["seq"], bounds, rank),
                      other_seqs=_run_lists(rows["other_seq"], bounds, rank))
        .select([pl.col(c).cast(t) for c, t in RANGES_SCHEMA.items()])
    )


def _order_words(frame: pl.DataFrame, columns: list[str]) -> list[np.ndarray]:
    """``columns`` of ``frame`` packed into uint64 words, one array per word: the words compare
    (in order) as the columns do, labels by their text and nulls last, and are equal exactly
    where the columns are.

    polars sorts a few integer columns without nulls several times faster than labels and
    nullable numbers: the 14.4 M findings of the whole catalog sort by the range key and
    line in 0.9 s instead of 4.9 s (and ``nulls_last`` alone makes a sort 3x slower).
    """
    fields = [f for c in columns for f in _order_fields(frame[c])]
    words: list[np.ndarray] = []
    used = 64
    for values, bits in fields:
        if not bits:
            continue  # the same value (0) in every row
        if used + bits > 64:
            words.append(np.zeros(frame.height, np.uint64))
            used = 0
        np.left_shift(words[-1], np.uint64(bits), out=words[-1])  # (the first field the most significant)
        np.bitwise_or(words[-1], values, out=words[-1])
        used += bits
    return words or [np.zeros(frame.height, np.uint64)]


#: Label codes up to which ``_order_fields`` ranks them through a table indexed by code.
_TABLE_CODES = 1 << 24


def _order_fields(s: pl.Series) -> list[tuple[np.ndarray, int]]:
    """A column as (uint64 values, bits) fields that order as it does, nulls last: a label's
    rank in the sorted text of its values, a number as it is (a null one past the greatest)."""
    if s.dtype == pl.String:
        s = s.cast(pl.Categorical)
    if isinstance(s.dtype, (pl.Categorical, pl.Enum)):
        values = s.unique().drop_nulls()
        if not len(values):
            return []  # every row null: nothing to tell them apart
        codes = values.to_physical().cast(pl.Int64).to_numpy()
        phys = s.to_physical()
        by_text = codes[values.cast(pl.String).arg_sort().to_numpy()]  # (the labels are distinct)
        null = int(codes.max()) + 1
        if null <= _TABLE_CODES:  # a table by code (codes are small: a few labels, or a few thousand in a session)
            table = np.full(null + 1, len(codes), np.uint64)
            table[by_text] = np.arange(len(codes), dtype=np.uint64)
            return [(table[(phys.fill_null(null) if phys.null_count() else phys).to_numpy()], len(codes).bit_length())]
        ascending = np.sort(codes)
        rank_of = np.empty(len(codes), np.uint64)
        rank_of[np.searchsorted(ascending, by_text)] = np.arange(len(codes), dtype=np.uint64)
        at = np.searchsorted(ascending, phys.cast(pl.Int64).fill_null(0).to_numpy())
        return [(np.where(phys.is_null().to_numpy(), np.uint64(len(codes)), rank_of[np.minimum(at, len(codes) - 1)]),
                 len(codes).bit_length())]
    top = s.max()
    if top is None:
        return []  # every row null: nothing to tell them apart
    s = s.cast(pl.UInt64)
    if not s.null_count():
        return [(s.to_numpy(), int(top).bit_length())]
    if int(top) < (1 << 64) - 1:
        return [(s.fill_null(int(top) + 1).to_numpy(), (int(top) + 1).bit_length())]
    return [(s.is_null().cast(pl.UInt64).to_numpy(), 1), (s.fill_null(0).to_numpy(), 64)]


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
        packed = pl.Series(packed).sort().to_numpy()  # (polars' sort: 0.23 s for 14 M, numpy's 1.0 s)
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
