"""What every importer provides, so `ingest` can treat all formats alike.

An importer turns one input file into batches of trace-v1 rows (without
``seq``: ingest numbers the merged trace) plus the trace-wide settings the
input declares. Batches stream so that a 50-million-line input never has to
fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import polars as pl

from ..model import Device, Region, TraceInfo


@dataclass(frozen=True)
class ImportOptions:
    """Options of `tracekit ingest` that importers may use; None means "as the input says"."""

    line_size: int | None = None  # --line-size
    stage2: bool | None = None  # --stage2/--no-stage2
    fwb: bool | None = None  # --fwb/--no-fwb
    regions: tuple[Region, ...] | None = None  # --region (repeatable)
    devices: tuple[Device, ...] | None = None  # --device (repeatable)
    settings: Path | None = None  # --settings FILE: a .tkt header of @directives (CSV/JSONL side file)
    trace_events: Path | None = None  # --trace-events FILE (QEMU trace-events-all)
    mapping: Path | None = None  # --mapping FILE (TOML: user mapping of QEMU events)
    guest_map: Path | None = None  # --guest-map FILE (GPA ranges -> stage-1 type)
    strict: bool = False  # --strict: lines of no known shape are errors
    agent: str | None = None  # --agent: the agent of formats that name none (din, lackey; default guest.0)
    quiet: bool = True  # no progress bars


@dataclass
class ImportResult:
    """The events of one input.

    ``batches`` yields polars frames with the trace-v1 columns except ``seq``
    (in input order). ``info`` and ``summary`` are final once ``batches`` is
    exhausted (a QEMU log learns its memory map while it is read).
    """

    batches: Iterable[pl.DataFrame]
    info: TraceInfo = field(default_factory=TraceInfo)
    summary: dict[str, Any] = field(default_factory=dict)


class Importer(Protocol):
    """One input format. Register instances in ``tracekit.importers.IMPORTERS``."""

    format: str  # the --format name, e.g. "tkt", "qemu-log"
    description: str  # one line for `tracekit ingest --help` and the README
    suffixes: tuple[str, ...]  # file-name endings that suggest the format

    def detect(self, head: bytes, path: Path) -> bool:
        """True when the first bytes of the file look like this format."""

    def read(self, path: Path, options: ImportOptions) -> ImportResult:
        """Parse ``path``; raise TraceFormatError with ``FILE:LINE: expected…, found…``."""
