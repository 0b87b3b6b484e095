"""Coalesce findings into address ranges that need one maintenance operation.

A finding names one line; a patch names a buffer. Adjacent lines that need the
same maintenance, by the same agent, in the same window of the trace, are one
``DC`` loop over ``[start, end)``, so reports and notebooks show ranges.
"""

from __future__ import annotations

import polars as pl

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
    # One row per (key, line): several findings on a line need one maintenance.
    per_line = (
        findings.lazy()
        .with_row_index("_row")
        .with_columns(
            pl.col("_row").min().over("mitigation").alias("_mit_order"),
            kind_rank.alias("_kind_rank"),
            pl.col("line").cast(pl.UInt64),
        )
        .group_by([*key, "line"])
        .agg(
            pl.col("_mit_order").first(),
            pl.len().alias("_n"),
            pl.col("_kind_rank"),
            pl.col("seq").cast(pl.UInt64),
            pl.col("other_seq").cast(pl.UInt64),
        )
        # Sort so that a range's lines are adjacent rows; nulls (fix_agent,
        # region) sort together, so null-safe comparisons below group them.
        .sort([*key, "line"], nulls_last=True)
    )
    prev_differs = pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in key])
    gap = (pl.col("line") - pl.col("line").shift(1)).ne_missing(pl.lit(line_size, dtype=pl.UInt64))
    first_row = pl.int_range(pl.len()) == 0
    grouped = (
        per_line
        .with_columns((first_row | prev_differs | gap).cum_sum().alias("_range"))
        .group_by("_range")
        .agg(
            *[pl.col(c).first() for c in key],
            pl.col("_mit_order").first(),
            pl.col("line").min().alias("start"),
            (pl.col("line").max() + line_size).alias("end"),
            pl.col("_n").sum().cast(pl.UInt32).alias("findings"),
            _flat("_kind_rank").unique().sort().alias("_kinds"),
            _flat("seq").unique().sort().alias("seqs"),
            _flat("other_seq").drop_nulls().unique().sort().alias("other_seqs"),
        )
        .with_columns(
            ((pl.col("end") - pl.col("start")) // line_size).alias("lines"),
            pl.col("_kinds").list.eval(
                pl.element().replace_strict({i: k for i, k in enumerate(_KIND_ORDER)}, default="?",
                                            return_dtype=pl.String)
            ).alias("kinds"),
        )
        .sort(["_mit_order", "start", "cause", "fix_after_seq", "fix_before_seq", "fix_agent"],
              nulls_last=True)
        .select([pl.col(c).cast(t) for c, t in RANGES_SCHEMA.items()])
    )
    return grouped.collect()
