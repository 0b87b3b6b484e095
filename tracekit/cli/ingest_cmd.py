"""`tracekit ingest`, `tracekit export`, `tracekit schema`: thin layers over tracekit.ingest and tracekit.schema."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import schema as schema_mod
from ..errors import UsageError
from ..importers import BUILTIN_FORMATS, ImportOptions
from . import app, errors_handled


@app.command()
@errors_handled
def ingest(
    inputs: List[Path] = typer.Argument(..., help="Input files (.tkt, .csv, .jsonl, ...); several merge by time.",
                                        show_default=False),
    output: Path = typer.Option(..., "-o", "--output", help="The trace to write (Parquet, trace-v1).",
                                show_default=False),
    format: Optional[str] = typer.Option(None, "--format", help="Input format (default: from the suffix or "
                                         "content). Built in: " + ", ".join(sorted(BUILTIN_FORMATS)) + "."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars on stderr."),
    concat: bool = typer.Option(False, "--concat", help="Append the inputs in the order given instead of merging "
                                "them by time (for inputs without timestamps)."),
    settings: Optional[Path] = typer.Option(None, "--settings", help="CSV/JSONL settings: a .tkt header of @ "
                                            "directives (default: INPUT.settings.tkt beside the input, if any)."),
    line_size: Optional[int] = typer.Option(None, "--line-size", help="Cache line size in bytes (overrides the "
                                            "input's)."),
    stage2: Optional[bool] = typer.Option(None, "--stage2/--no-stage2", help="A KVM guest (stage 2 on) or bare "
                                          "metal (overrides the input's)."),
    fwb: Optional[bool] = typer.Option(None, "--fwb/--no-fwb", help="FEAT_S2FWB for RAM regions (overrides the "
                                       "input's)."),
    trace_events: Optional[Path] = typer.Option(None, "--trace-events", help="QEMU trace-events-all file "
                                                "(QEMU log inputs)."),
    mapping: Optional[Path] = typer.Option(None, "--mapping", help="TOML mapping of QEMU events to trace events."),
    guest_map: Optional[Path] = typer.Option(None, "--guest-map", help="GPA ranges -> stage-1 type (QEMU inputs)."),
    strict: bool = typer.Option(False, "--strict", help="Lines of no known shape are errors (log inputs)."),
    page_walk: bool = typer.Option(True, "--page-walk/--no-page-walk", help="Type untyped MMU-on guest accesses "
                                   "from the guest's recorded page tables (TTBR/TCR writes and table stores "
                                   "with values, QEMU inputs); after --guest-map."),
    agent: Optional[str] = typer.Option(None, "--agent", help="The agent of inputs that name none (din, "
                                        "lackey): guest[.N], host[.X] or dev.NAME[.X]; default guest.0."),
) -> None:
    """Import INPUT... into one trace Parquet file and print a summary.

    Example: tracekit ingest boot.tkt -o boot.parquet
    """
    from .._process import reuse_big_allocations
    from ..ingest import ingest as run

    reuse_big_allocations()
    if line_size is not None and (line_size < 4 or line_size & (line_size - 1)):
        raise UsageError(f"--line-size: expected a power of two (at least 4), found {line_size}")
    if agent is not None:
        import re
        from ..validate import AGENT_EXPECTED, AGENT_RE
        if not re.match(AGENT_RE, agent):
            raise UsageError(f"--agent: expected {AGENT_EXPECTED}, found '{agent}'")
        agent = {"guest": "guest.0", "host": "host.0"}.get(agent, agent)
    options = ImportOptions(line_size=line_size, stage2=stage2, fwb=fwb, settings=settings,
                            trace_events=trace_events, mapping=mapping, guest_map=guest_map, strict=strict,
                            quiet=quiet, agent=agent)
    summary = run(inputs, output, format=format, force=force, quiet=quiet, concat=concat, options=options,
                  page_walk=page_walk)
    typer.echo(summary.text(), nl=False)


@app.command()
@errors_handled
def export(
    trace: Path = typer.Argument(..., help="A trace Parquet file written by tracekit.", show_default=False),
    output: Path = typer.Option(..., "-o", "--output", help="The scenario file to write (.tkt).",
                                show_default=False),
    force: bool = typer.Option(False, "--force", help="Overwrite the output if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars on stderr."),
) -> None:
    """Write a trace as a scenario (.tkt) that ingests back to the same events.

    Example: tracekit export run.parquet -o run.tkt
    """
    from ..ingest import export as run

    path = run(trace, output, force=force, quiet=quiet)
    typer.echo(f"{path}: written")


@app.command()
@errors_handled
def schema(
    name: str = typer.Argument("trace", help="trace or findings."),
) -> None:
    """Print the documentation of a table schema (columns, types, meaning, metadata)."""
    names = {"trace": schema_mod.TRACE_SCHEMA, "findings": schema_mod.FINDINGS_SCHEMA,
             schema_mod.TRACE_SCHEMA: schema_mod.TRACE_SCHEMA, schema_mod.FINDINGS_SCHEMA: schema_mod.FINDINGS_SCHEMA}
    if name not in names:
        raise UsageError(f"expected a schema name (trace, findings), found '{name}'")
    typer.echo(schema_mod.describe(names[name]), nl=False)
