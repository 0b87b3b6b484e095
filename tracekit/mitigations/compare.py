"""Compare mitigations by their findings: the count matrix, and what each fixes or introduces.

A finding is the same finding under two mitigations when it is reported at the
same recorded event, on the same line, with the same kind and cause
(``seq, line, kind, cause``): inserted events never carry a finding's ``seq``
(findings are at accesses), so the key is stable across transformations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

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
    order = list(mitigations) if mitigations is not None else \
        findings["mitigation"].cast(pl.String).unique(maintain_order=True).to_list()
    spans = _spans(findings)
    if spans:  # each mitigation's rows in one run (as analyze writes them): counted run by run
        counts = pl.concat([counts_of(findings.slice(*at), m) for m, at in spans.items()], how="vertical_relaxed")
    else:
        counts = findings.group_by("mitigation", "kind", "cause").agg(count=pl.len())
    long, wide = tabulate(counts, order)
    fixed: dict[str, pl.DataFrame] = {}
    introduced: dict[str, pl.DataFrame] = {}
    has_base = baseline in order or bool((findings["mitigation"] == baseline).any())
    if has_base:
        def of(m: str) -> pl.DataFrame:
            return findings.slice(*spans[m]) if spans and m in spans else \
                findings.filter(pl.col("mitigation") == m)
        base = of(baseline)
        base_keys = _Keys.of(base)
        for m in order:
            if m == baseline:
                continue
            mine = of(m)
            gone, new = differences(base, mine, base_keys)
            fixed[m], introduced[m] = _strings(gone), _strings(new)
    return Comparison(order, baseline if has_base else None, long, wide, fixed, introduced)


def counts_of(findings: pl.DataFrame, mitigation: str) -> pl.DataFrame:
    """One mitigation's findings counted per (kind, cause): mitigation, kind, cause, count."""
    return (findings.group_by("kind", "cause").agg(count=pl.len())
            .select(pl.lit(mitigation, dtype=pl.String).alias("mitigation"), "kind", "cause", "count"))


def tabulate(counts: pl.DataFrame, order: Sequence[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The long and wide count tables (``Comparison.counts``, ``.matrix``) from counts per
    (mitigation, kind, cause), in the mitigations' ``order``."""
    counts = counts.with_columns(pl.col("mitigation", "kind", "cause").cast(pl.String))  # Enums in a compact frame
    pairs = sorted(set(zip(counts["kind"].to_list(), counts["cause"].to_list())), key=_order)
    grid = pl.DataFrame(
        [(m, k, c) for m in order for k, c in pairs],
        schema={"mitigation": pl.String, "kind": pl.String, "cause": pl.String}, orient="row",
    )
    long = (
        grid.join(counts, on=["mitigation", "kind", "cause"], how="left")
        .with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
    )
    wide = pl.DataFrame({"mitigation": list(order)}, schema={"mitigation": pl.String})
    for k, c in pairs:
        col = long.filter((pl.col("kind") == k) & (pl.col("cause") == c)).select("mitigation", pl.col("count").alias(f"{k}/{c}"))
        wide = wide.join(col, on="mitigation", how="left", maintain_order="left")
    wide = wide.with_columns(total=pl.sum_horizontal(pl.exclude("mitigation")).cast(pl.Int64)) if pairs else \
        wide.with_columns(total=pl.lit(0, dtype=pl.Int64))
    return long, wide


_KEYS_OF_BASE = object()


def differences(base: pl.DataFrame, mine: pl.DataFrame, base_keys: Any = _KEYS_OF_BASE,
                ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rows of ``base`` that ``mine`` lacks (fixed) and those of ``mine`` that ``base``
    lacks (introduced), by MATCH_KEY, each in key order, their columns as they were.

    ``base_keys``: ``_Keys.of(base)``, when the caller compares several frames with one base.
    """
    masks = unmatched_masks(base, mine, base_keys)
    if masks is not None:
        return base.filter(masks[0]), mine.filter(masks[1])
    key = list(MATCH_KEY)
    # an anti join ignores repeats on its right side: no unique() of millions of keys
    return (base.join(mine.select(key), on=key, how="anti").sort(key),
            mine.join(base.select(key), on=key, how="anti").sort(key))


def unmatched_masks(base: pl.DataFrame, mine: pl.DataFrame, base_keys: Any = _KEYS_OF_BASE,
                    ) -> tuple[pl.Series, pl.Series] | None:
    """Which rows of ``base`` ``mine`` lacks and which of ``mine`` ``base`` lacks (boolean
    Series), when both are in key order (as analyze writes them: one merge each way); None
    otherwise (``differences`` then joins)."""
    if base_keys is _KEYS_OF_BASE:
        base_keys = _Keys.of(base)
    mine_keys = _Keys.of(mine) if base_keys is not None else None
    if base_keys is None or mine_keys is None:
        return None
    return base_keys.unmatched(mine_keys), mine_keys.unmatched(base_keys)


def _spans(findings: pl.DataFrame) -> dict[str, tuple[int, int]] | None:
    """Each mitigation's (offset, rows) when its rows are one run, as analyze writes them;
    None when some mitigation's rows are apart (then they are filtered)."""
    runs = findings.select(pl.col("mitigation").rle()).unnest("mitigation")
    names = runs["value"].cast(pl.String).to_list()
    if len(set(names)) != len(names):
        return None
    lengths = runs["len"].to_list()
    offsets = [0]
    for n in lengths[:-1]:
        offsets.append(offsets[-1] + n)
    return {m: (o, n) for m, o, n in zip(names, offsets, lengths)}


class _Keys:
    """One mitigation's match keys as arrays, known to be in key order (kind and cause ranked
    as their strings sort, as ``sort`` orders the Enums and the strings alike)."""

    __slots__ = ("seq", "line", "kc")

    def __init__(self, seq, line, kc):
        self.seq, self.line, self.kc = seq, line, kc

    @classmethod
    def of(cls, frame: pl.DataFrame) -> "_Keys | None":
        """The keys, or None when the rows are not in key order (or a key is null)."""
        from ..findings import kind_cause_rank
        from ._match_kernel import in_key_order

        k = frame.select("seq", "line", "kind", "cause")
        if any(k[c].null_count() for c in k.columns):
            return None
        try:
            kc = kind_cause_rank(k)
        except pl.exceptions.PolarsError:  # a kind or cause the engine does not name: the joins match them
            return None
        keys = cls(k["seq"].cast(pl.UInt64).to_numpy(), k["line"].cast(pl.UInt64).to_numpy(), kc)
        return keys if in_key_order(keys.seq, keys.line, keys.kc) else None

    def unmatched(self, other: "_Keys") -> pl.Series:
        from ._match_kernel import unmatched

        return pl.Series(unmatched(self.seq, self.line, self.kc, other.seq, other.line, other.kc))
