"""``tracekit report``: render a findings file as text, Markdown, HTML or JSON."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from . import app, errors_handled


@app.command("report")
@errors_handled
def report_command(
    findings: Path = typer.Argument(..., help="Findings Parquet file written by `tracekit analyze -o`.",
                                    show_default=False, metavar="FINDINGS"),
    format: Optional[str] = typer.Option(None, "--format", "-f",
                                         metavar="FORMAT", help="text (mail, 78 columns), markdown (merge requests), "
                                         "html (one self-contained page with plots; needs matplotlib) or json "
                                         "(tools). Default: from the suffix of -o (.txt .md .html .json), else text.",
                                         show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report to FILE instead of "
                                          "stdout.", show_default=False, metavar="FILE"),
    force: bool = typer.Option(False, "--force", help="Overwrite FILE if it exists."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="The analysed trace (Parquet): describe every "
                                         "event as `agent op addr+size (src:line)` with its memory type.",
                                         show_default=False, metavar="TRACE"),
) -> None:
    """Render FINDINGS as a report: provenance, the mitigation x (kind, cause) matrix, costs, and
    per mitigation the address ranges needing maintenance, with the events involved and why.

    Example: tracekit report boot-findings.parquet --format markdown --trace boot.parquet -o review.md
    """
    from ..reports import format_of, report

    format = format or format_of(output) or "text"
    color = output is None and format == "text" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    result = report(findings, format, output, force=force, trace=trace, color=color)
    if output is None:
        sys.stdout.write(str(result))
        sys.stdout.flush()
