"""`analyze`: resolve a trace once, replay it under each mitigation, keep the findings.

The trace is read and resolved once; each mitigation transforms the resolved
frame and is replayed by the chosen engine. The result is an :class:`Analysis`
that a notebook can query (``.findings`` is a polars frame in findings-v1) and
the CLI writes as one Parquet file.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable, Sequence

import polars as pl

from . import __version__
from ._progress import progress
from .engine import ENGINES, SPECULATION_MODELS, get_engine
from .errors import UsageError
from .model import TraceInfo
from .resolve import resolve
from .schema import (FINDINGS_SCHEMA, TRACE_SCHEMA, TableWriter, check_output, conform, info_of, read_compact,
                     read_metadata, write_table)


class Analysis:
    """Findings of one trace under one or more mitigations, with costs and provenance.

    ``findings`` is findings-v1 with string columns, as a notebook expects. In bulk
    (the whole catalog on a big trace gives tens of millions of findings) the rows
    are kept in ``compact_findings``, whose string columns are Enum/Categorical
    (``schema.polars_schema(..., compact=True)``), at a third of the memory; the
    string form is made on first use of ``findings``. Counting, comparing, gating
    and writing work on the compact form. An Analysis read from a findings file
    (``load_analysis(path, lazy=True)``, and what ``analyze(..., keep_findings=False)``
    returns) reads its rows from the file when they are first used.
    """

    def __init__(self, findings: pl.DataFrame | None, costs: dict[str, Any], meta: dict[str, Any], info: TraceInfo,
                 events: pl.DataFrame | None = None, transformed: dict[str, pl.DataFrame] | None = None, *,
                 findings_file: str | os.PathLike[str] | None = None):
        if findings is None and findings_file is None:
            raise UsageError("Analysis: expected findings or the findings file to read them from, found neither")
        self._compact = None if findings is None else conform(findings, FINDINGS_SCHEMA, compact=True)
        self._findings_file = findings_file
        self.costs = costs  # spec -> MitigationCost
        self.meta = meta
        self.info = info
        self.events = events  # the resolved trace (None when loaded from a findings file)
        self.transformed = transformed if transformed is not None else {}
        self._strings: pl.DataFrame | None = None
        self._compared: dict[str, Any] = {}  # baseline -> Comparison (the summary and a report share it)
        # the summary's figures when they were tallied as the findings were made (a run that wrote
        # them to a file, or replayed the trace part by part): the summary then reads no findings
        self.summary_figures = None

    @property
    def compact_findings(self) -> pl.DataFrame:
        """The findings with their string columns as Enum/Categorical codes."""
        if self._compact is None:
            self._compact = _read_findings(self._findings_file)
        return self._compact

    @property
    def findings(self) -> pl.DataFrame:
        """The findings (findings-v1, string columns)."""
        if self._strings is None:
            self._strings = conform(self.compact_findings, FINDINGS_SCHEMA)
        return self._strings

    @property
    def mitigations(self) -> list[str]:
        return list(self.meta.get("mitigations", []))

    def matrix(self) -> pl.DataFrame:
        """Counts per mitigation x (kind, cause), one row per mitigation analysed."""
        return self.compare().matrix

    def ranges(self) -> pl.DataFrame:
        """Contiguous lines needing the same maintenance in the same window (tracekit.ranges)."""
        from .ranges import ranges

        return ranges(self.findings, self.info.line_size)

    def compare(self, baseline: str = "none"):
        """The matrix, and per mitigation the findings of ``baseline`` it fixes and those it introduces."""
        from .mitigations.compare import compare

        if baseline not in self._compared:
            self._compared[baseline] = compare(self.compact_findings, self.mitigations, baseline=baseline)
        return self._compared[baseline]

    def write(self, path: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write the findings as one Parquet file (findings-v1) with the run's metadata."""
        meta = {k: v for k, v in self.meta.items() if k not in _INFO_KEYS}
        return write_table(self.compact_findings, path, schema=FINDINGS_SCHEMA, info=self.info, force=force,
                           extra_metadata=meta)

    def summary(self, first: int = 3) -> str:
        """Short human summary: counts per mitigation, kind and cause, the first findings explained."""
        from .summary import figures_of, summary_text

        figures = self.summary_figures
        if figures is None or figures.shown < first:
            figures = figures_of(self, first=first)
        return summary_text(self, figures, first=first)

    def _repr_html_(self) -> str:
        try:
            from .reports.html import analysis_html
        except ImportError:  # pragma: no cover - reports are part of the package
            return "<pre>" + self.summary() + "</pre>"
        return analysis_html(self)


_INFO_KEYS = {"line_size", "stage2", "fwb", "regions", "devices", "inputs", "schema", "schema_version",
              "tracekit_version"}


def _load_trace(trace: Any, *, quiet: bool, replayed_once: bool = False, engine: str = "fast"):
    from .trace import Trace, load

    if isinstance(trace, Trace):
        return trace
    from .resolve import warm_up

    # numba loads its compiled code while the trace is read, as the CLI does
    with warm_up(fast_engine=engine == "fast"):
        return load(trace if not isinstance(trace, (list, tuple)) else list(trace), compact=True,
                    gathered_in_pieces=replayed_once)


def expand_mitigations(specs: Iterable[str]) -> list[str]:
    """Expand `all` and validate every name (UnknownMitigationError); keep order, drop repeats."""
    from .mitigations import expand

    return expand(list(specs)) or ["none"]


def analyze(
    trace: Any,
    mitigations: Sequence[str] = ("none",),
    *,
    engine: str = "fast",
    speculation: str = "architectural",
    line_size: int | None = None,
    quiet: bool = True,
    keep_transformed: bool = False,
    output: str | os.PathLike[str] | None = None,
    force: bool = False,
    keep_findings: bool = True,
    replays: int | None = None,
    tally: bool = False,
) -> Analysis:
    """Replay ``trace`` (a Trace, a trace Parquet file, or any input `ingest` accepts).

    Parameters
    ----------
    mitigations
        Mitigation specs (``none``, ``mair-trap``, ``kvm-cache-toggle+guest-boot-inval``, ``all``).
    engine
        ``fast`` (default) or ``reference``; both give identical findings.
    speculation
        ``architectural`` (what the architecture permits) or ``observed``.
    line_size
        Override the trace's line size.
    keep_transformed
        Keep each mitigation's transformed event frame in ``Analysis.transformed``.
    output
        Also write the findings there (as ``Analysis.write`` would), each mitigation's as
        soon as it is replayed, while the next one is: the file appears, complete, at the
        end (``force``: replace an existing one).
    keep_findings
        False (needs ``output``): each mitigation's findings go to the file and are not held
        beside the trace (``replays`` of them replayed at once, the next one applied meanwhile,
        three while the first replays alone); once the trace is let go, the Analysis is read
        back from the file.
        The peak is then one mitigation's, not the whole catalog's findings on top of the
        trace (the CLI does this when a trace fits its memory budget but that would not).
    replays
        Mitigations the fast engine replays at once after the first (default 2); 1 holds a
        single mitigation's frames at a time, for the least memory (the CLI's
        ``findings-on-disk-serial`` plan).
    tally
        Tally the summary's figures as the findings are made (``Analysis.summary_figures``):
        the summary of a keep_findings=False analysis then reads no findings back.
    """
    from .mitigations import apply_mitigation

    if engine not in ENGINES:
        raise UsageError(f"--engine: expected one of {', '.join(ENGINES)}, found {engine!r}")
    if speculation not in SPECULATION_MODELS:
        raise UsageError(
            f"--speculation: expected one of {', '.join(SPECULATION_MODELS)}, found {speculation!r}")
    if line_size is not None and (line_size < 4 or line_size & (line_size - 1) or line_size > 4096):
        raise UsageError(f"--line-size: expected a power of two between 4 and 4096, found {line_size}")
    specs = expand_mitigations(mitigations)
    if replays is not None and replays < 1:
        raise UsageError(f"replays: expected 1 or more mitigations replayed at once, found {replays}")
    if not keep_findings and output is None:
        raise UsageError("keep_findings=False: expected an output file to write the findings to, found none")
    if output is not None:
        check_output(output, force=force)  # before any work
    tr = _load_trace(trace, quiet=quiet, replayed_once=len(specs) == 1, engine=engine)
    info = tr.info if line_size is None else tr.info.replace(line_size=line_size)
    resolved = resolve(tr.events, info)
    engine_replay = get_engine(engine)
    # fast engine, several mitigations: keep the per-line layout, and (same_trace) the findings of
    # the first replay, so that each mitigation is scanned only on the lines it changes
    extra = {"reuse": len(specs) > 1, "same_trace": object() if len(specs) > 1 else None} \
        if engine == "fast" else {}

    def replay(mitigated: pl.DataFrame, minfo: TraceInfo, spec: str) -> tuple[str, pl.DataFrame]:
        return spec, engine_replay(mitigated, minfo, mitigation=spec, speculation=speculation, compact=True, **extra)

    from .summary import SummaryTally

    tallied = SummaryTally(specs) if tally else None

    frames, costs, transformed = [], {}, {}
    with ExitStack() as stack:
        # The fast engine's compiled loops release the GIL and polars runs its own threads: the
        # next mitigation is applied while earlier ones are replayed (two at a time after the
        # first, which makes the layout the others only read), and each one's findings are
        # written while the next are replayed.
        pool = stack.enter_context(ThreadPoolExecutor(_REPLAYS, thread_name_prefix="tracekit-replay"))
        writer = None if output is None else \
            stack.enter_context(TableWriter(output, schema=FINDINGS_SCHEMA, force=force))
        writing = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="tracekit-write"))
        written: list = []

        def done(spec: str, found: pl.DataFrame) -> None:
            if keep_findings:
                frames.append(found)
            if writer is not None:
                written.append(writing.submit(writer.write, found))
            if tallied is not None:  # (in spec order, off the thread that applies mitigations)
                written.append(writing.submit(tallied.add, spec, found))

        pending: deque = deque()  # replays running, oldest first (their findings are kept in spec order)
        ready: deque = deque()  # mitigations applied, waiting for a replay to start
        started = 0

        def pump(block: bool) -> None:
            """Start the ready replays while there is room, in spec order; ``block``: wait for room."""
            nonlocal started
            while ready:
                while pending and pending[0].done():
                    done(*pending.popleft().result())
                # room: fewer than _REPLAYS still running (one that finished behind a longer,
                # older one has its findings kept until that one is done, but no longer counts);
                # the first replay runs alone: it makes the layout (and the findings) the others reuse
                running = [f for f in pending if not f.done()]
                if running and (started == 1 or len(running) >= at_once):
                    if not block:
                        return
                    wait(running, return_when=FIRST_COMPLETED)
                    continue
                spec, mitigated, minfo = ready.popleft()
                pending.append(pool.submit(replay, mitigated, minfo, spec))
                started += 1

        # the fast engine replays a frame with its inserted events appended (cheaper than merging them)
        ordered = engine != "fast" or keep_transformed
        concurrent = engine == "fast" and len(specs) > 1
        at_once = _REPLAYS if replays is None else replays
        for spec in progress(specs, desc=f"{tr.source}: replay", unit="mitigation", quiet=quiet):
            mitigated, minfo, cost = apply_mitigation(resolved, spec, info, ordered=ordered)
            costs[spec] = cost
            if keep_transformed:
                transformed[spec] = mitigated
            if not concurrent:
                done(*replay(mitigated, minfo, spec))
                continue
            ready.append((spec, mitigated, minfo))
            del mitigated
            # while the first replay runs alone, up to _AHEAD more mitigations are applied
            # meanwhile (their frames share the resolved frame's columns); then one at a time
            pump(block=not (started == 1 and pending and len(ready) < _AHEAD))
        pump(block=True)
        while pending:
            done(*pending.popleft().result())
        findings = pl.concat(frames) if frames else conform(pl.DataFrame(), FINDINGS_SCHEMA, compact=True)
        meta = _meta(tr, info, speculation, engine, specs, costs)
        for w in written:
            w.result()  # a failed write raises here (and the with block removes the file)
        if writer is not None:
            writer.finish(info, {k: v for k, v in meta.items() if k not in _INFO_KEYS})
        figures = None
        if tallied is not None:
            tallied.end_part()
            figures = tallied.figures()
    if not keep_findings:
        del trace, tr, resolved, findings  # the caller may hold none of them: the read-back's room
        if engine == "fast":
            from .engine.fast import clear_cache

            clear_cache()  # the layout kept for another mitigation of this trace
        read = load_analysis(output, lazy=True)  # the rows when first used: maybe never (tracekit analyze -q -o)
        read.transformed = transformed
        read.summary_figures = figures
        return read
    result = Analysis(findings, costs, meta, info, resolved, transformed)
    result.summary_figures = figures
    return result


#: Replays of one trace's mitigations run at once by the fast engine (after the first), unless
#: ``replays`` says otherwise.
_REPLAYS = 2
#: Mitigations applied ahead while the first replay runs alone (frames held at once), whether
#: the findings are kept or not. The frames are cheap (they share the resolved frame's unchanged
#: columns) and that core would otherwise wait: the catalog of 10 M events with one replay at a
#: time (the command's serial plan) took 19.6-20.5 s applying three ahead, 20.2-21.7 s applying
#: one, at the same peak (4.9-5.2 GB); the heaviest mitigations first (none, kvm-cache-toggle,
#: kvm-fault-clean, host-uncached, guest-dma-cmo) 4.33-4.37 -> 4.51-4.57 GB.
_AHEAD = 3


def _meta(tr, info: TraceInfo, speculation: str, engine: str, specs: list[str], costs: dict) -> dict[str, Any]:
    """The run's provenance, as a findings file records it."""
    return {
        "trace": tr.source,
        "trace_sha256": tr.sha256,
        "line_size": info.line_size,
        "speculation": speculation,
        "engine": engine,
        "mitigations": specs,
        "costs": {s: c.to_dict() for s, c in costs.items()},
        "tracekit_version": __version__,
    }


def write_transformed(analysis: Analysis, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write each mitigation's transformed trace into ONE Parquet file with a `mitigation` column."""
    frames = [f.with_columns(mitigation=pl.lit(spec)) for spec, f in analysis.transformed.items()]
    return write_table(frames, path, schema=TRACE_SCHEMA, info=analysis.info, force=force, extra_columns=True)


def load_analysis(path: str | os.PathLike[str], *, lazy: bool = False) -> Analysis:
    """Read a findings file written by `tracekit analyze` back into an Analysis.

    ``lazy``: read the metadata now and the findings when they are first used (the file
    must still be there then).
    """
    from .mitigations import MitigationCost

    meta = read_metadata(path)
    info = info_of(meta, path)
    costs = {s: MitigationCost.from_dict(c) for s, c in meta.get("costs", {}).items()}
    if lazy:
        return Analysis(None, costs, meta, info, findings_file=path)
    return Analysis(_read_findings(path), costs, meta, info)


def _read_findings(path: str | os.PathLike[str]) -> pl.DataFrame:
    return read_compact(path, FINDINGS_SCHEMA, "a findings Parquet written by tracekit")
