"""Reports of an analysis: text (mail), Markdown (merge requests), HTML (one page), JSON (tools).

Every format shows the same content, computed once by ``_common.prepare``:
provenance (trace, sha256, version, line size, speculation model), the
mitigation x (kind, cause) matrix, costs, and per mitigation the address ranges
needing maintenance with the events involved and one sentence of why.

>>> from tracekit.reports import render
>>> text = render(analysis, "text")                      # doctest: +SKIP
>>> write_report(analysis, "html", "report.html")        # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import polars as pl

from ..errors import UsageError
from ..schema import AtomicPath, check_output
from . import html as _html
from . import json as _json
from . import markdown as _markdown
from . import text as _text
from ._common import FindingsFile, ReportData, load_findings, load_trace_events, prepare
from .gate import gate, gate_message, parse_kinds, remaining


@dataclass(frozen=True)
class ReportFormat:
    """One output format: its ``--format`` name, file suffix, one line of help, and renderer."""

    name: str
    suffix: str
    description: str
    render: Callable[..., str]


REPORT_FORMATS: dict[str, ReportFormat] = {
    m.NAME: ReportFormat(m.NAME, m.SUFFIX, m.DESCRIPTION, m.render) for m in (_text, _markdown, _html, _json)
}


def get_format(name: str) -> ReportFormat:
    try:
        return REPORT_FORMATS[name]
    except KeyError:
        raise UsageError(f"--format: expected one of {', '.join(REPORT_FORMATS)}, found {name!r}") from None


def format_of(path: "str | os.PathLike[str] | None") -> str | None:
    """The format whose file suffix ``path`` has (``review.html`` -> html), None when no format has it."""
    if path is None:
        return None
    suffix = Path(path).suffix.lower()
    return next((name for name, f in REPORT_FORMATS.items() if f.suffix.lower() == suffix), None)


def render(analysis: Any, format: str, *, trace: pl.DataFrame | None = None, color: bool = False) -> str:
    """The report of ``analysis`` in ``format`` as a string.

    ``analysis`` is an Analysis, a findings file read back
    (:func:`load_findings`) or a bare findings-v1 frame. ``trace`` (the
    trace's events, optionally resolved) lets the report describe every event
    involved. ``color`` only affects the text format (ANSI bold headings).
    """
    fmt = get_format(format)
    data = prepare(analysis, trace=trace)
    if fmt.name == "text":
        return fmt.render(data, color=color)
    return fmt.render(data)


def write_report(analysis: Any, format: str, dest: str | os.PathLike[str] | None = None, *, force: bool = False,
                 trace: pl.DataFrame | None = None) -> str | Path:
    """Render and, with ``dest``, write atomically (never over an existing file without ``force``).

    Returns the text when ``dest`` is None, else the Path written.
    """
    if dest is not None:
        with AtomicPath(dest, force=force) as tmp:  # checks the destination before any work
            text = render(analysis, format, trace=trace)
            tmp.write_text(text, encoding="utf-8", newline="\n")
        return Path(dest)
    return render(analysis, format, trace=trace)


def report(findings: str | os.PathLike[str], format: str = "text", dest: str | os.PathLike[str] | None = None, *,
           force: bool = False, trace: str | os.PathLike[str] | None = None, color: bool = False) -> str | Path:
    """``tracekit report``: read a findings file (and optionally its trace) and render it.

    The trace must be the one the findings were computed from: the same file,
    or the Parquet ingested from it, or the input the Parquet was ingested from.
    Returns the text when ``dest`` is None, else the Path written.
    """
    fmt = get_format(format)
    if dest is not None:
        check_output(dest, force=force)  # refuse before reading anything
    loaded = load_findings(findings, compact=True)
    events = None
    if trace is not None:
        events = load_trace_events(trace, expect_sha256=loaded.meta.get("trace_sha256"),
                                   expect_inputs=[i.get("sha256") for i in loaded.meta.get("inputs") or ()])
    if dest is None:
        return render(loaded, fmt.name, trace=events, color=color)
    return write_report(loaded, fmt.name, dest, force=force, trace=events)


__all__ = [
    "report",
    "REPORT_FORMATS", "ReportFormat", "ReportData", "FindingsFile", "render", "write_report", "get_format",
    "load_findings", "load_trace_events", "prepare", "gate", "gate_message", "parse_kinds", "remaining",
]
