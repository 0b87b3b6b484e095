"""CI gating: exit status 1 while findings of the named kinds remain.

``tracekit analyze ... --fail-on stale-read,lost-write`` calls :func:`gate`;
a pipeline then fails exactly when the mitigation under test leaves a hazard
of a kind the project has decided to forbid.
"""

from __future__ import annotations

from typing import Any, Iterable

import polars as pl

from ..errors import UsageError
from ..model import KINDS


def parse_kinds(kinds: str | Iterable[str]) -> tuple[str, ...]:
    """``"stale-read,lost-write"`` (or a list) -> validated kind names; ``all`` means every kind."""
    items = kinds.split(",") if isinstance(kinds, str) else [p for k in kinds for p in str(k).split(",")]
    names = [k.strip() for k in items if k.strip()]
    if not names:
        raise UsageError(f"--fail-on: expected one or more of {', '.join(KINDS)} (comma-separated), found none")
    if "all" in names:
        return KINDS
    bad = [k for k in names if k not in KINDS]
    if bad:
        raise UsageError(f"--fail-on: expected a finding kind ({', '.join(KINDS)} or all), found {bad[0]!r}")
    return tuple(dict.fromkeys(names))


def _frame(findings: Any) -> pl.DataFrame:
    if isinstance(findings, pl.DataFrame):
        df = findings
    elif hasattr(findings, "compact_findings"):  # an Analysis: no need for the string form
        df = findings.compact_findings
    else:
        df = getattr(findings, "findings", None)
    if not isinstance(df, pl.DataFrame) or not {"mitigation", "kind"} <= set(df.columns):
        raise UsageError("gate: expected a findings-v1 frame or an Analysis")
    return df


def remaining(findings: Any, kinds: str | Iterable[str], *,
              mitigations: Iterable[str] | None = None) -> pl.DataFrame:
    """Counts of the findings that fail the gate, per mitigation and kind (empty: the gate passes)."""
    wanted = parse_kinds(kinds)
    figures = getattr(findings, "summary_figures", None)
    # counts per (mitigation, kind, cause): tallied as the findings were made (none is read), or of the rows
    counts = figures.counts if figures is not None else \
        _frame(findings).group_by("mitigation", "kind", "cause").agg(count=pl.len())
    df = counts.filter(pl.col("kind").is_in(list(wanted)) & (pl.col("count") > 0))
    if mitigations is not None:
        df = df.filter(pl.col("mitigation").is_in(list(mitigations)))
    return (df.group_by("mitigation", "kind").agg(pl.col("count").sum().cast(pl.UInt32).alias("findings"))
            .with_columns(pl.col("mitigation", "kind").cast(pl.String)).sort("mitigation", "kind"))


def gate(findings: Any, kinds: str | Iterable[str], *, mitigations: Iterable[str] | None = None) -> int:
    """1 when any finding of ``kinds`` remains, else 0: the exit status of ``--fail-on``.

    ``findings`` is a findings-v1 frame (or an Analysis); every mitigation in
    it counts, unless ``mitigations`` names the ones to judge (so ``-m none
    -m guest-boot-inval`` can show the baseline and gate on the fix alone).
    Unknown kind names raise UsageError (exit 2), never a silent pass.
    """
    return 1 if remaining(findings, kinds, mitigations=mitigations).height else 0


def gate_message(findings: Any, kinds: str | Iterable[str], *, mitigations: Iterable[str] | None = None) -> str:
    """One line for stderr saying why the gate failed (empty when it passes)."""
    left = remaining(findings, kinds, mitigations=mitigations)
    if left.height == 0:
        return ""
    parts = [f"{n} {k} under {m}" for m, k, n in left.iter_rows()]
    return "findings of the kinds named by --fail-on remain: " + ", ".join(parts)
