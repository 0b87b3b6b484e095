"""The summary `tracekit analyze` prints, and the figures it is made of.

The figures (counts per mitigation, what each fixes and introduces against none,
the first findings of each) come from an Analysis's findings, or are tallied as
the findings are made (:class:`SummaryTally`): a run that writes its findings to
a file, or replays a big trace part by part, then prints its summary without
reading tens of millions of findings back, within its memory budget.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import polars as pl

from .findings import CAUSE_TITLES, explain
from .mitigations.compare import MATCH_KEY
from .schema import FINDINGS_SCHEMA, conform

if TYPE_CHECKING:
    from .analyze import Analysis


@dataclass
class SummaryFigures:
    """What a summary shows.

    ``matrix``: ``Comparison.matrix``. ``fixed`` / ``introduced``: per mitigation, how many of
    the baseline's findings it fixes and how many it introduces (empty without the baseline).
    ``first``: per mitigation shown, its first findings; ``first_introduced``: per mitigation,
    the first it introduces; at most ``shown`` rows each, string columns as strings.
    """

    mitigations: list[str]
    baseline: str | None
    counts: pl.DataFrame
    matrix: pl.DataFrame
    fixed: dict[str, int] = field(default_factory=dict)
    introduced: dict[str, int] = field(default_factory=dict)
    first: dict[str, pl.DataFrame] = field(default_factory=dict)
    first_introduced: dict[str, pl.DataFrame] = field(default_factory=dict)
    shown: int = 3


def _shown_mitigations(mitigations: Sequence[str], baseline: str) -> list[str]:
    """Whose first findings a summary lists: the baseline's, or each mitigation's without it."""
    return [baseline] if baseline in mitigations else list(mitigations)


def figures_of(a: "Analysis", *, first: int = 3, baseline: str = "none") -> SummaryFigures:
    """The figures of an Analysis, from its findings."""
    cmp = a.compare(baseline)
    findings = a.compact_findings
    return SummaryFigures(
        a.mitigations, cmp.baseline, cmp.counts, cmp.matrix,
        {m: f.height for m, f in cmp.fixed.items()}, {m: f.height for m, f in cmp.introduced.items()},
        {m: _strings(findings.filter(pl.col("mitigation") == m).head(first))
         for m in _shown_mitigations(a.mitigations, baseline)},
        {m: f.head(first) for m, f in cmp.introduced.items()}, first)


class SummaryTally:
    """The figures of a summary, tallied from each mitigation's findings as they are made.

    ``add(spec, findings)`` for each mitigation of a part of the trace, then ``end_part()``;
    a run that replays the trace whole is one part. A part must hold whole lines (findings
    are matched across mitigations by seq, line, kind and cause), and each mitigation's
    findings in the order analyze writes them. Only the baseline's findings of the current
    part are held (and those of mitigations added before it).
    """

    def __init__(self, mitigations: Sequence[str], *, baseline: str = "none", first: int = 3):
        self.mitigations, self.baseline, self.first = list(mitigations), baseline, first
        self._has_base = baseline in self.mitigations
        self._shown = set(_shown_mitigations(self.mitigations, baseline))
        self._counts: list[pl.DataFrame] = []
        self._fixed = {m: 0 for m in self.mitigations if self._has_base and m != baseline}
        self._introduced = dict(self._fixed)
        self._first: dict[str, pl.DataFrame] = {}
        self._first_introduced: dict[str, pl.DataFrame] = {}
        self._base: pl.DataFrame | None = None  # the current part's baseline findings
        self._base_keys = None
        self._waiting: list[tuple[str, pl.DataFrame]] = []  # added before the part's baseline

    def add(self, spec: str, findings: pl.DataFrame) -> None:
        """One mitigation's findings in the current part."""
        from .mitigations.compare import _Keys, counts_of

        self._counts.append(counts_of(findings, spec))
        if spec in self._shown:
            self._first[spec] = self._earliest(self._first.get(spec), findings.head(self.first))
        if not self._has_base:
            return
        if spec == self.baseline:
            self._base, self._base_keys = findings, _Keys.of(findings)
            waiting, self._waiting = self._waiting, []
            for m, f in waiting:
                self._against_base(m, f)
        elif self._base is None:
            self._waiting.append((spec, findings))
        else:
            self._against_base(spec, findings)

    def end_part(self) -> None:
        """The current part is done: its baseline findings are let go."""
        if self._waiting:
            raise ValueError(f"SummaryTally: the part ended without the baseline {self.baseline!r}")
        self._base = self._base_keys = None

    def figures(self) -> SummaryFigures:
        from .mitigations.compare import tabulate

        counts = pl.concat(self._counts, how="vertical_relaxed") if self._counts else \
            pl.DataFrame(schema={"mitigation": pl.String, "kind": pl.String, "cause": pl.String, "count": pl.UInt32})
        counts = counts.with_columns(pl.col("mitigation", "kind", "cause").cast(pl.String)).group_by(
            "mitigation", "kind", "cause", maintain_order=True).agg(pl.col("count").cast(pl.Int64).sum())
        long, wide = tabulate(counts, self.mitigations)
        return SummaryFigures(
            self.mitigations, self.baseline if self._has_base else None, long, wide,
            dict(self._fixed), dict(self._introduced),
            {m: _strings(self._first.get(m, pl.DataFrame())) for m in self.mitigations if m in self._shown},
            {m: _strings(self._first_introduced.get(m, pl.DataFrame())) for m in self._introduced}, self.first)

    def _against_base(self, spec: str, findings: pl.DataFrame) -> None:
        from .mitigations.compare import differences, unmatched_masks

        masks = unmatched_masks(self._base, findings, self._base_keys)
        if masks is not None:  # counted, and only the first rows introduced gathered
            n_fixed, n_introduced = int(masks[0].sum()), int(masks[1].sum())
            head = findings[masks[1].arg_true().head(self.first)]
        else:
            fixed, introduced = differences(self._base, findings, self._base_keys)
            n_fixed, n_introduced, head = fixed.height, introduced.height, introduced.head(self.first)
        self._fixed[spec] += n_fixed
        self._introduced[spec] += n_introduced
        self._first_introduced[spec] = self._earliest(self._first_introduced.get(spec), head)

    def _earliest(self, held: pl.DataFrame | None, more: pl.DataFrame) -> pl.DataFrame:
        """The first rows of two parts' (each already in order)."""
        if held is None or held.height == 0:
            return more
        if more.height == 0:
            return held
        # the order analyze writes a mitigation's findings in is the match key's (kind and cause
        # sort as their strings do)
        both = pl.concat([_strings(held), _strings(more)], how="vertical_relaxed")
        return both.sort(list(MATCH_KEY), maintain_order=True).head(self.first)


def _strings(findings: pl.DataFrame) -> pl.DataFrame:
    """Findings rows with string columns (findings-v1), whichever form they came in."""
    return conform(findings, FINDINGS_SCHEMA)


def summary_text(a: "Analysis", figures: SummaryFigures, *, first: int = 3) -> str:
    """The summary of ``a`` (its provenance and costs) with ``figures``."""
    m = a.meta
    lines = [
        f"trace {m.get('trace')}  sha256 {str(m.get('trace_sha256'))[:16]}",
        f"line size {a.info.line_size}  speculation {m.get('speculation')}  engine {m.get('engine')}  "
        f"stage 2 {'on' if a.info.stage2 else 'off'}",
        "",
    ]
    mat = figures.matrix
    present = [c for c in mat.columns[1:-1] if mat[c].sum() > 0]
    lines.append("findings per mitigation and (kind/cause):")
    width = max([len("mitigation")] + [len(s) for s in mat["mitigation"]])
    totals = {}
    for row in mat.iter_rows(named=True):
        totals[row["mitigation"]] = row["total"]
        parts = [f"{c}={row[c]}" for c in present if row[c]]
        lines.append(f"  {row['mitigation']:<{width}}  {row['total']:>6}  " + ("  ".join(parts) or "clean"))
    if figures.fixed:
        lines += ["", "against none (fixed / introduced):"]
        for spec in figures.fixed:
            cost = a.costs.get(spec)
            extra = ""
            if cost is not None:
                extra = (f"  cost: traps {sum(cost.traps.values())}, inserted ops {cost.inserted_ops} "
                         f"over {cost.inserted_lines} lines, retyped accesses {cost.retyped_accesses}")
            lines.append(f"  {spec:<{width}}  fixes {figures.fixed[spec]}, introduces "
                         f"{figures.introduced[spec]}{extra}")
    shown = [(figures.first[s], totals.get(s, 0), f"first findings under {s}") for s in figures.first]
    shown += [(figures.first_introduced[s], figures.introduced[s],
               f"findings {s} introduces (none did not have them)") for s in figures.first_introduced]
    for rows, total, title in shown:
        if total == 0:
            continue
        lines += ["", f"{title}:"]
        for row in rows.head(first).iter_rows(named=True):
            where = f"{row['src']}:{row['src_line']}" if row["src_line"] is not None else row["src"]
            label = CAUSE_TITLES.get((row["kind"], row["cause"]), row["cause"])
            lines.append(f"  seq {row['seq']} ({where}) {label}")
            lines += textwrap.wrap(explain(row), 96, initial_indent="    ", subsequent_indent="    ")
        if total > first:
            lines.append(f"  ... and {total - first} more (tracekit report, or the findings file)")
    return "\n".join(lines) + "\n"
