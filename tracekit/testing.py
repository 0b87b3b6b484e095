"""Helpers for testing tracekit and custom mitigations the way tracekit tests itself.

``scenario(text)`` loads a .tkt snippet; ``findings(text, ...)`` analyses it;
``annotations(path)`` reads the ``#!`` verdicts of a worked vector (see
../shared/design/vectors/README.md) so a test can compare them with the findings.
"""

from __future__ import annotations

import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import polars as pl


def scenario(text: str, name: str = "scenario.tkt"):
    """A Trace from scenario text (dedented), through the real .tkt importer."""
    from .trace import load

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return load(str(path))


def findings(text: str, mitigations: Sequence[str] = ("none",), *, engine: str = "reference",
             speculation: str = "architectural", line_size: int | None = None) -> pl.DataFrame:
    """Findings of a scenario snippet (reference engine by default: tests state the model)."""
    from .analyze import analyze

    return analyze(scenario(text), list(mitigations), engine=engine, speculation=speculation,
                   line_size=line_size).findings


def verdicts(f: pl.DataFrame) -> set[tuple[str, int, str]]:
    """{(mitigation, src_line, "kind/cause")} of a findings frame, the form annotations take."""
    return {(m, line, f"{k}/{c}") for m, line, k, c in
            f.select("mitigation", "src_line", "kind", "cause").iter_rows()}


@dataclass
class Annotations:
    """The verdicts a worked vector states for itself."""

    check: list[str]
    options: list[str] = field(default_factory=list)
    expected: set[tuple[str, int, str]] = field(default_factory=set)


def annotations(path: str | Path) -> Annotations:
    """Parse ``#! check``, ``#! options`` and per-event ``#! M1,M2 KIND/CAUSE`` annotations."""
    check: list[str] = []
    options: list[str] = []
    per_line: list[tuple[int, list[str], str]] = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if "#!" not in line:
            continue
        before, _, note = line.partition("#!")
        words = note.split()
        if not before.strip():
            if words and words[0] == "check":
                check += words[1:]
            elif words and words[0] == "options":
                options += words[1:]
            continue
        for i in range(0, len(words), 2):  # "M1,M2 KIND/CAUSE [M3 KIND/CAUSE ...]"
            per_line.append((n, words[i].split(","), words[i + 1]))
    expected = {(m, n, verdict) for n, ms, verdict in per_line for m in ms}
    return Annotations(check or ["none"], options, expected)


def assert_verdicts(text: str, *, engine: str = "reference", **options) -> pl.DataFrame:
    """Analyse an annotated scenario and assert its findings are exactly its ``#!`` verdicts.

    The scenario states its own expectations (``#! check M...`` and per-event
    ``#! M1,M2 KIND/CAUSE``), so a test reads like a worked vector.
    """
    from .analyze import analyze

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "scenario.tkt"
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        ann = annotations(path)
        from .trace import load

        result = analyze(load(str(path)), ann.check, engine=engine, **options)
    got = verdicts(result.findings)
    missing, unexpected = ann.expected - got, got - ann.expected
    assert not missing and not unexpected, (
        f"findings differ from the annotations\n  missing:    {sorted(missing)}\n  unexpected: {sorted(unexpected)}"
    )
    return result.findings
