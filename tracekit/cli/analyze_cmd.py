"""`tracekit analyze`: replay a trace under mitigations and report the findings."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import app, errors_handled, fail


@app.command()
@errors_handled
def analyze(
    inputs: List[Path] = typer.Argument(..., help="A trace Parquet file, or inputs `ingest` accepts (ingested on the fly).",
                                        show_default=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the findings here (Parquet, findings-v1)."),
    mitigation: List[str] = typer.Option(["none"], "-m", "--mitigation",
                                         help="Mitigation to replay (repeatable; 'a+b' combines; 'all' is the catalog)."),
    speculation: str = typer.Option("architectural", help="architectural (what Arm permits) or observed (one run)."),
    line_size: Optional[int] = typer.Option(None, help="Cache line size in bytes (default: the trace's)."),
    engine: str = typer.Option("fast", help="fast or reference (same findings)."),
    emit_trace: Optional[Path] = typer.Option(None, help="Write each mitigation's transformed trace here (Parquet)."),
    report: Optional[Path] = typer.Option(None, help="Also write a report to this file."),
    report_format: Optional[str] = typer.Option(None, "--format", help="Report format: text, markdown, html, json "
                                                "(default: from the --report suffix)."),
    fail_on: Optional[str] = typer.Option(None, help="Exit 1 when findings of these kinds remain "
                                          "(comma-separated: stale-read,lost-write,stale-ifetch)."),
    input_format: Optional[str] = typer.Option(None, help="Input format when ingesting on the fly (default: detect)."),
    memory_budget: Optional[str] = typer.Option(None, help="Memory to stay within, e.g. 1G (default: a quarter of "
                                                "RAM); a bigger trace Parquet is replayed part by part."),
    concat: bool = typer.Option(False, help="Append several inputs in order instead of merging by timestamp."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars and no summary on stdout."),
) -> None:
    """Replay INPUT against the cache model under each mitigation; print a summary.

    Exit status: 0 when the analysis ran (findings or not), 1 when --fail-on
    kinds remain, 2 for bad input.
    """
    from ..analyze import analyze as run, expand_mitigations, write_transformed
    from ..schema import check_output
    from ..trace import load

    kinds: tuple = ()
    if fail_on:
        from ..reports.gate import gate, gate_message, parse_kinds

        kinds = parse_kinds(fail_on)
    for out in (output, emit_trace, report):
        if out is not None:
            check_output(out, force=force)
    from ..partition import default_budget, memory_plan, parse_size

    budget = parse_size(memory_budget) if memory_budget else default_budget()
    single = inputs[0] if len(inputs) == 1 else None
    plan = "whole"
    specs = expand_mitigations(mitigation)
    if single is not None and single.suffix == ".parquet" and emit_trace is None:
        plan = memory_plan(single, budget, specs)
    # a run that writes its findings as it goes reads them back only for a report: the summary
    # and --fail-on use figures tallied on the way, so the run stays within its budget (tens of
    # millions of findings otherwise)
    tally = not quiet or bool(kinds)
    if plan == "partitioned":
        result = _analyze_partitioned(single, output, mitigation, budget=budget, engine=engine,
                                      speculation=speculation, line_size=line_size, force=force, quiet=quiet,
                                      tally=tally, read_back=report is not None)
    else:
        from ..resolve import warm_up

        with warm_up(fast_engine=engine == "fast"):  # numba loads its compiled code while the trace is read
            trace = load([str(p) for p in inputs] if len(inputs) > 1 else str(inputs[0]), format=input_format,
                         concat=concat, compact=True, gathered_in_pieces=len(specs) == 1)
        kw = dict(engine=engine, speculation=speculation, line_size=line_size, quiet=quiet,
                  keep_transformed=emit_trace is not None, force=force)
        if plan in ("findings-on-disk", "findings-on-disk-serial"):
            # the trace fits, the catalog's findings beside it would not: each mitigation's go to
            # the file as it is replayed, and come back once the trace is let go (analyze holds
            # the only reference); the serial plan replays one mitigation at a time
            held = [trace]
            del trace
            kw["replays"] = 1 if plan == "findings-on-disk-serial" else None
            result = _with_findings_file(output, lambda dest: run(held.pop(), mitigation, output=dest,
                                                                  keep_findings=False, tally=tally, **kw),
                                         read=report is not None)
        else:
            result = run(trace, mitigation, output=output, tally=tally, **kw)
    if emit_trace is not None:
        write_transformed(result, emit_trace, force=force)
    if report is not None:
        from ..reports import write_report

        write_report(result, report_format or _format_of(report), report, force=force)
    if not quiet:
        typer.echo(result.summary(), nl=False)
    if kinds and gate(result, kinds):
        typer.echo(f"tracekit: {gate_message(result, kinds)}", err=True)
        raise typer.Exit(1)


def _analyze_partitioned(trace: Path, output: Optional[Path], mitigations: List[str], *, budget: int,
                         tally: bool, read_back: bool, **kw):
    """Replay a trace larger than the budget line-partition by line-partition; findings go to ``output``.

    The Analysis of the findings file (its rows read with ``read_back``, else when first used),
    with the summary's figures when ``tally``.
    """
    from ..partition import analyze_partitioned

    return _with_findings_file(output, lambda dest: analyze_partitioned(
        trace, dest, mitigations, budget_bytes=budget, tally=tally, **kw), read=read_back)


def _with_findings_file(output: Optional[Path], run, *, read: bool):
    """``run(dest)`` with ``output`` as ``dest``, or a temporary file when there is none;
    ``read``: the findings of the Analysis it returns are read (inside the temporary
    directory: an Analysis read from the file is lazy)."""
    import tempfile
    from contextlib import ExitStack

    with ExitStack() as stack:
        dest = output if output is not None else \
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tracekit-"))) / "findings.parquet"
        result = run(dest)
        if read:
            _ = result.compact_findings  # read while the file is there
        return result


def _format_of(path: Path) -> str:
    """The report format whose file suffix ``path`` has (the report registry knows them)."""
    from ..reports import REPORT_FORMATS, format_of

    name = format_of(path)
    if name is None:
        raise fail(f"{path}: cannot tell the report format from the suffix; give --format "
                   f"({', '.join(REPORT_FORMATS)})")
    return name
