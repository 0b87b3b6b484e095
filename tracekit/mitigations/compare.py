"""Compare mitigations by their findings: the count matrix, and what each fixes or introduces.

A finding is the same finding under two mitigations when it is reported at the
same recorded event, on the same line, with the same kind and cause
(``seq, line, kind, cause``): inserted events never carry a finding's ``seq``
(findings are at accesses), so the key is stable across transformations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import polars as pl

from ..model import CAUSES, KINDS

#: How findings are matched across mitigations.
MATCH_KEY = ("seq", "line", "kind", "cause")


@dataclass
class Comparison:
    """The result of :func:`compare`.

    ``counts``: long form, one row per (mitigation, kind, cause) with ``count``
    (zero rows included for every pair seen under any mitigation).
    ``matrix``: wide form, one row per mitigation, a column per ``kind/cause``
    seen, and ``total``. ``fixed[m]`` / ``introduced[m]``: the baseline's findings
    that ``m`` no longer has, and ``m``'s findings the baseline did not have
    (empty dicts when the baseline was not replayed).
    """

    mitigations: list[str]
    baseline: str | None
    counts: pl.DataFrame
    matrix: pl.DataFrame
    fixed: dict[str, pl.DataFrame] = field(default_factory=dict)
    introduced: dict[str, pl.DataFrame] = field(default_factory=dict)

    def summary(self) -> pl.DataFrame:
        """Per mitigation: findings, fixed, introduced (null without a baseline)."""
        rows = []
        for m in self.mitigations:
            total = self.matrix.filter(pl.col("mitigation") == m)["total"]
            rows.append({
                "mitigation": m,
                "findings": int(total[0]) if total.len() else 0,
                "fixed": self.fixed[m].height if m in self.fixed else None,
                "introduced": self.introduced[m].height if m in self.introduced else None,
            })
        return pl.DataFrame(rows, schema={"mitigation": pl.String, "findings": pl.Int64, "fixed": pl.Int64,
                                          "introduced": pl.Int64})


def _strings(df: pl.DataFrame) -> pl.DataFrame:
    """String columns as strings (a compact findings frame keeps them as Enum/Categorical)."""
    return df.with_columns(pl.col(c).cast(pl.String) for c, t in df.schema.items()
                           if isinstance(t, (pl.Categorical, pl.Enum)))


def _order(pair: tuple[str, str]) -> tuple[int, int]:
    k, c = pair
    return (KINDS.index(k) if k in KINDS else len(KINDS), CAUSES.index(c) if c in CAUSES else len(CAUSES))


def compare(findings: pl.DataFrame, mitigations: Sequence[str] | None = None, *,
            baseline: str = "none") -> Comparison:
    """Counts per mitigation x (kind, cause), and per mitigation what it fixes and introduces against ``baseline``.

    ``mitigations`` gives the row order and the mitigations with no findings
    (which a findings frame cannot show); by default those present, in order.
    """
    order = list(mitigations) if mitigations is not None else list(dict.fromkeys(findings["mitigation"].to_list()))
    pairs = sorted({(k, c) for k, c in findings.select("kind", "cause").unique().iter_rows()}, key=_order)
    counts = findings.group_by("mitigation", "kind", "cause").agg(count=pl.len()).with_columns(
        pl.col("mitigation", "kind", "cause").cast(pl.String))  # Categorical/Enum in a compact frame
    grid = pl.DataFrame(
        [(m, k, c) for m in order for k, c in pairs],
        schema={"mitigation": pl.String, "kind": pl.String, "cause": pl.String}, orient="row",
    )
    long = (
        grid.join(counts, on=["mitigation", "kind", "cause"], how="left")
        .with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
    )
    wide = pl.DataFrame({"mitigation": order}, schema={"mitigation": pl.String})
    for k, c in pairs:
        col = long.filter((pl.col("kind") == k) & (pl.col("cause") == c)).select("mitigation", pl.col("count").alias(f"{k}/{c}"))
        wide = wide.join(col, on="mitigation", how="left", maintain_order="left")
    wide = wide.with_columns(total=pl.sum_horizontal(pl.exclude("mitigation")).cast(pl.Int64)) if pairs else \
        wide.with_columns(total=pl.lit(0, dtype=pl.Int64))
    fixed: dict[str, pl.DataFrame] = {}
    introduced: dict[str, pl.DataFrame] = {}
    key = list(MATCH_KEY)
    has_base = baseline in order or baseline in set(findings["mitigation"].to_list())
    if has_base:
        base = findings.filter(pl.col("mitigation") == baseline)
        base_keys = base.select(key)
        for m in order:
            if m == baseline:
                continue
            mine = findings.filter(pl.col("mitigation") == m)
            # an anti join ignores repeats on its right side: no unique() of millions of keys
            fixed[m] = _strings(base.join(mine.select(key), on=key, how="anti").sort(key))
            introduced[m] = _strings(mine.join(base_keys, on=key, how="anti").sort(key))
    return Comparison(order, baseline if has_base else None, long, wide, fixed, introduced)
