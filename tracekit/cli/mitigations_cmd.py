"""`tracekit mitigations`: list the mitigation catalog (who acts, what it changes, known limits)."""

from __future__ import annotations

from typing import List, Optional

import typer

from . import app, errors_handled


@app.command("mitigations")
@errors_handled
def mitigations(
    names: Optional[List[str]] = typer.Argument(None, metavar="[NAME]...", help="Only these mitigations (default: all).",
                                                show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {name, actor, changes, limits}."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the Markdown table of the README."),
) -> None:
    """List every mitigation: its name, who acts, what it changes and its known limits.

    Combine them with '+' in `tracekit analyze -m a+b` (applied left to right).
    """
    from ..errors import UsageError
    from ..mitigations import format_catalog, get_mitigation, mitigations as catalog

    if as_json and markdown:
        raise UsageError("--json and --markdown: expected at most one output format, found both")
    entries = [get_mitigation(n) for n in names] if names else catalog()
    fmt = "json" if as_json else "markdown" if markdown else "text"
    typer.echo(format_catalog(entries, fmt), nl=False)
