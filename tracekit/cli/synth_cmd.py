"""`tracekit synth`: a thin layer over tracekit.synth.synth."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app, errors_handled


@app.command()
@errors_handled
def synth(
    events: int = typer.Option(..., "--events", "-n", help="Number of events to generate (10 M take a few seconds).",
                               show_default=False),
    output: Path = typer.Option(..., "-o", "--output", help="The trace to write (Parquet, trace-v1).",
                                show_default=False),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same trace."),
    profile: str = typer.Option("mixed", "--profile", help="What the guest does: boot (long MMU-off boot), virtio "
                                "(rings and DMA), framebuffer (scan-out of a Non-cacheable frame buffer), mixed."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary."),
) -> None:
    """Write a realistic synthetic trace: vCPUs booting with the MMU off, then MAIR/SCTLR
    turning it on; shared rings, frame buffers, DMA devices, maintenance at realistic rates.

    Example: tracekit synth --events 10000000 --seed 1 --profile mixed -o mixed.parquet
    """
    from ..synth import synth as run

    path = run(events, output, seed=seed, profile=profile, force=force, quiet=quiet)
    if not quiet:
        typer.echo(f"wrote {events} events ({profile}, seed {seed}) to {path}")
