"""What every report format shows, computed once: header, matrix, costs, ranges, events, sentences.

The formats only lay this out; the words (and the numbers) are the same in
text, Markdown, HTML and JSON, and the same findings give the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SchemaError, TracekitError, UsageError
from ..model import CAUSES, KINDS
from ..ranges import ranges as coalesce_ranges
from ..schema import FINDINGS_SCHEMA, arrow_schema, conform, read_compact, read_metadata, validate_arrow

#: Ranges shown per mitigation in text, Markdown and HTML (JSON has them all).
MAX_RANGES = 50
#: Events listed per range before "... and N more".
MAX_EVENTS = 8

#: Order and short names of the matrix columns (model section 4 names the rules H1..H4).
KIND_CAUSE_ORDER: tuple[tuple[str, str], ...] = (
    ("stale-read", "dirty-not-cleaned"),
    ("stale-read", "stale-line-not-invalidated"),
    ("stale-read", "clobbered-by-writeback"),
    ("stale-read", "discarded-by-invalidate"),
    ("lost-write", "clobbered-by-writeback"),
    ("lost-write", "discarded-by-invalidate"),
    ("stale-ifetch", "icache-not-invalidated"),
)
RULE_OF_CAUSE = {
    "dirty-not-cleaned": "H1",
    "stale-line-not-invalidated": "H2",
    "clobbered-by-writeback": "H3",
    "discarded-by-invalidate": "H4",
    "icache-not-invalidated": "I",
}
SHORT_KIND = {"stale-read": "read", "lost-write": "write", "stale-ifetch": "ifetch"}

#: Memory types as the Arm ARM spells them.
TYPE_WORDS = {
    "dev-ngnrne": "Device-nGnRnE",
    "dev-ngnre": "Device-nGnRE",
    "dev-ngre": "Device-nGRE",
    "dev-gre": "Device-GRE",
    "nc": "Normal Non-cacheable",
    "wt": "Normal Write-Through",
    "wb": "Normal Write-Back",
}
FIX_WORDS = {
    "clean": "clean (DC CVAC)",
    "invalidate": "invalidate (DC IVAC, or DC CIVAC)",
    "clean+invalidate": "clean+invalidate (DC CIVAC)",
    "ic-invalidate": "invalidate the instruction cache (IC IVAU) for",
}
#: The op of the event a finding is reported at, from its kind.
OP_OF_KIND = {"stale-read": "read", "lost-write": "write", "stale-ifetch": "ifetch"}

_TRACE_COLUMNS = ("seq", "agent", "op", "addr", "size", "cmo", "sysreg", "value", "src", "src_line",
                  "src_offset", "phase")
_RESOLVED_COLUMNS = ("mem_type", "path", "type_source")


def short_code(kind: str, cause: str) -> str:
    """``read/H2``: a matrix column that fits a 78-column mail."""
    return f"{SHORT_KIND.get(kind, kind)}/{RULE_OF_CAUSE.get(cause, cause)}"


def title(kind: str, cause: str) -> str:
    return f"{kind}, {cause} ({RULE_OF_CAUSE.get(cause, '?')})"


# --------------------------------------------------------------------------
# Inputs


@dataclass
class FindingsFile:
    """A findings Parquet file read back: what a report needs of an Analysis."""

    findings: pl.DataFrame
    meta: dict[str, Any]
    costs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def load_findings(path: str | os.PathLike[str], *, compact: bool = False) -> FindingsFile:
    """Read a findings-v1 Parquet file and its ``tracekit`` metadata, checking both.

    ``compact``: the string columns as Enum/Categorical (``schema.polars_schema(...,
    compact=True)``), as `tracekit report` reads them: the whole catalog's findings of a 10 M-event
    trace (14.4 M rows) hold 2.5 GB as strings, read in 7 s.
    """
    p = Path(path)
    if not p.is_file():
        raise TracekitError(f"{p}: expected a findings Parquet file, found no such file")
    meta = read_metadata(p)
    if meta.get("schema") not in (None, "tracekit-findings"):
        raise SchemaError(f"{p}: expected a findings file (schema tracekit-findings), "
                          f"found schema {meta.get('schema')}")
    try:
        validate_arrow(pq.read_schema(p).empty_table(), FINDINGS_SCHEMA, where=str(p))  # the columns' types
    except (OSError, pa.ArrowException) as e:
        raise TracekitError(f"{p}: expected a findings Parquet file, found: {e}") from None
    findings = read_compact(p, FINDINGS_SCHEMA, "a findings Parquet file")
    required = [f.name for f in arrow_schema(FINDINGS_SCHEMA) if not f.nullable]
    for c, n in zip(required, findings.select(pl.col(required).null_count()).row(0)):
        if n:
            raise SchemaError(f"{p}: column {c!r} must not hold nulls")
    if not compact:
        findings = conform(findings, FINDINGS_SCHEMA)
    return FindingsFile(findings, meta, dict(meta.get("costs") or {}), p)


def _cost_dict(cost: Any) -> dict[str, Any]:
    """A MitigationCost (dataclass, object or dict) as a plain dict with the documented keys."""
    if cost is None:
        return {}
    if dataclasses.is_dataclass(cost) and not isinstance(cost, type):
        d = dataclasses.asdict(cost)
    elif isinstance(cost, Mapping):
        d = dict(cost)
    else:
        d = {k: getattr(cost, k) for k in ("traps", "inserted_ops", "inserted_lines", "retyped_accesses",
                                           "retyped", "removed_ops") if hasattr(cost, k)}
    retyped = []
    for r in d.get("retyped") or []:
        r = dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)
        retyped.append({"from": r.get("from", r.get("from_")), "to": r.get("to"), "count": int(r.get("count", 0))})
    return {
        "traps": {str(k): int(v) for k, v in sorted((d.get("traps") or {}).items())},
        "inserted_ops": int(d.get("inserted_ops") or 0),
        "inserted_lines": int(d.get("inserted_lines") or 0),
        "retyped_accesses": int(d.get("retyped_accesses") or 0),
        "retyped": sorted(retyped, key=lambda r: (str(r["from"]), str(r["to"]))),
        "removed_ops": int(d.get("removed_ops") or 0),
    }


def load_trace_events(path: str | os.PathLike[str], *, expect_sha256: str | None = None,
                      expect_inputs: Iterable[str] | None = None) -> pl.DataFrame:
    """The events of the analysed trace, resolved when the resolver is available.

    Refuses a trace that is not the one the findings were computed from (the
    wrong trace would put wrong events beside the findings): its sha256, or
    the sha256 of one of its inputs, must be ``expect_sha256``, or it must be
    made of exactly the inputs ``expect_inputs`` (sha256s) the findings record.
    """
    p = Path(path)
    if not p.is_file():
        raise TracekitError(f"{p}: expected a trace file, found no such file")
    from ..resolve import resolve
    from ..trace import load

    trace = load(p)
    if expect_sha256:
        inputs = {i.sha256 for i in trace.info.inputs}
        same_inputs = bool(inputs) and inputs == set(expect_inputs or ())
        if expect_sha256 != trace.sha256 and expect_sha256 not in inputs and not same_inputs:
            raise TracekitError(f"{p}: expected the trace the findings were computed from "
                                f"(sha256 {expect_sha256[:16]}...), found another trace "
                                f"(sha256 {trace.sha256[:16]}...)")
    events = resolve(trace.events, trace.info)
    keep = [c for c in (*_TRACE_COLUMNS, "cmo", *_RESOLVED_COLUMNS) if c in events.columns]
    return events.select(list(dict.fromkeys(keep)))


# --------------------------------------------------------------------------
# The report's content


@dataclass
class Event:
    """One event as a report shows it: ``agent op addr+size (src:line)``."""

    seq: int
    agent: str | None = None
    op: str | None = None
    addr: int | None = None
    size: int | None = None
    src: str | None = None
    src_line: int | None = None
    src_offset: int | None = None
    mem_type: str | None = None
    path: str | None = None
    type_source: str | None = None
    inserted: bool = False
    exact_extent: bool = True  # False: addr+size cover only the bytes with findings

    @property
    def bytes(self) -> str:
        return f"{self.addr:#x}+{self.size}" if self.addr is not None and self.size is not None else ""

    def where(self) -> str:
        if self.src is None:
            return ""
        if self.src_line is not None:
            return f"{self.src}:{self.src_line}"
        if self.src_offset is not None:
            return f"{self.src}@{self.src_offset}"
        return self.src

    def describe(self) -> str:
        if self.inserted:
            return f"{self.agent} maintenance inserted by the mitigation at seq {self.seq}"
        parts = [self.agent or "?", self.op or "event"]
        if self.bytes:
            parts.append(self.bytes)
        text = " ".join(parts)
        if self.where():
            text += f" ({self.where()})"
        return text


@dataclass
class Range:
    """One coalesced range, ready to print."""

    row: dict[str, Any]
    events: list[Event]
    why: str

    @property
    def span(self) -> str:
        return f"{self.row['start']:#x}+{self.row['end'] - self.row['start']}"


@dataclass
class ReportData:
    """Everything a format lays out, in a fixed order."""

    meta: dict[str, Any]
    findings: pl.DataFrame
    mitigations: list[str]
    columns: list[tuple[str, str]]  # (kind, cause) present in any mitigation, model order
    matrix: dict[str, dict[tuple[str, str], int]]  # mitigation -> (kind, cause) -> count
    costs: dict[str, dict[str, Any]]  # mitigation -> cost dict ({} when unknown)
    ranges: pl.DataFrame  # tracekit.ranges.ranges(...)
    shown: dict[str, list[Range]]  # mitigation -> the first MAX_RANGES ranges, described
    range_counts: dict[str, int]
    has_trace: bool
    baseline: str | None = None  # "none" when it was replayed: the reference for fixed/introduced
    against: dict[str, tuple[int, int]] = field(default_factory=dict)  # mitigation -> (fixed, introduced)

    @property
    def line_size(self) -> int:
        return int(self.meta.get("line_size") or 64)

    def total(self, mitigation: str) -> int:
        return sum(self.matrix[mitigation].values())


def header_fields(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The provenance every report starts with (model section 8: say the speculation model and line size)."""
    def get(k: str) -> str:
        v = meta.get(k)
        return "unknown" if v is None or v == "" else str(v)

    ls = meta.get("line_size")
    return [
        ("trace", get("trace")),
        ("sha256", get("trace_sha256")),
        ("tracekit", get("tracekit_version")),
        ("line size", (f"{ls} bytes" + (" (assumed, not recorded)" if meta.get("line_size_assumed") else ""))
         if ls else "unknown"),
        ("speculation", get("speculation")),
        ("engine", get("engine")),
    ]


def _as_meta(analysis: Any) -> dict[str, Any]:
    meta = getattr(analysis, "meta", None)
    return dict(meta) if isinstance(meta, Mapping) else {}


def _trace_events_of(analysis: Any) -> pl.DataFrame | None:
    """The (resolved) events an Analysis carries, if any."""
    ev = getattr(analysis, "events", None)
    if not isinstance(ev, pl.DataFrame):
        ev = getattr(getattr(analysis, "trace", None), "events", None)
    return ev if isinstance(ev, pl.DataFrame) and "seq" in ev.columns else None


def prepare(analysis: Any, *, trace: pl.DataFrame | None = None, max_ranges: int = MAX_RANGES) -> ReportData:
    """Normalise an Analysis (or a FindingsFile, or a bare findings frame) into ReportData.

    ``trace`` is a frame of the trace's events (trace-v1 columns, optionally
    resolved with ``mem_type``/``path``/``type_source``) used to describe the
    events involved; without it the findings' own columns are used.
    """
    if isinstance(analysis, pl.DataFrame):
        findings, meta, costs_in = analysis, {}, {}
    else:
        # an Analysis's compact rows when it has them (its string form may never have been made)
        findings = getattr(analysis, "compact_findings", None)
        if not isinstance(findings, pl.DataFrame):
            findings = getattr(analysis, "findings", None)
        if not isinstance(findings, pl.DataFrame):
            raise UsageError(f"report: expected an Analysis or a findings frame, found {type(analysis).__name__}")
        meta = _as_meta(analysis)
        costs_in = getattr(analysis, "costs", None) or meta.get("costs") or {}
    for col, known in (("kind", KINDS), ("cause", CAUSES)):
        bad = set(findings[col].unique().to_list()) - set(known) if col in findings.columns else set()
        if bad:
            raise SchemaError(f"findings: expected kinds {', '.join(KINDS)} and the model's causes, found "
                              f"{', '.join(sorted(map(str, bad)))}")
    # labels as Enum/Categorical codes: a big catalog's findings held as strings took 2.5 GB more
    findings = conform(findings, FINDINGS_SCHEMA, compact=True)
    if trace is None:
        trace = _trace_events_of(analysis)

    mitigations = list(dict.fromkeys([*(meta.get("mitigations") or []), *costs_in.keys(),
                                      *findings["mitigation"].unique(maintain_order=True).to_list()]))
    counts = findings.group_by("mitigation", "kind", "cause").len().sort("mitigation", "kind", "cause")
    present = set(zip(counts["kind"].to_list(), counts["cause"].to_list()))
    columns = [kc for kc in KIND_CAUSE_ORDER if kc in present]
    columns += sorted(present - set(columns))
    matrix = {m: {kc: 0 for kc in columns} for m in mitigations}
    for m, k, c, n in counts.iter_rows():
        matrix[m][(k, c)] = int(n)
    costs = {m: _cost_dict(costs_in.get(m)) for m in mitigations}
    line_size = int(meta.get("line_size") or 64)
    assumed = not meta.get("line_size")
    meta = {**meta, "line_size": line_size, "mitigations": mitigations}
    if assumed:  # a bare findings frame: ranges need a line size, the header says it was assumed
        meta["line_size_assumed"] = True

    rng = coalesce_ranges(findings, line_size)
    by_mit = {m: rng.filter(pl.col("mitigation") == m) for m in mitigations}
    range_counts = {m: by_mit[m].height for m in mitigations}
    head = pl.concat([by_mit[m].head(max_ranges) for m in mitigations]) if mitigations else rng
    lookup = _event_lookup(findings, head, trace)
    speculation = str(meta.get("speculation") or "architectural")
    shown: dict[str, list[Range]] = {}
    for m in mitigations:
        shown[m] = [_describe_range(r, lookup, speculation) for r in by_mit[m].head(max_ranges).iter_rows(named=True)]
    from ..mitigations.compare import compare

    if callable(getattr(analysis, "compare", None)) and list(getattr(analysis, "mitigations", ())) == mitigations:
        cmp = analysis.compare("none")  # an Analysis keeps its comparison: the summary made it already
    else:
        cmp = compare(findings, mitigations, baseline="none")
    against = {m: (cmp.fixed[m].height, cmp.introduced[m].height) for m in cmp.fixed}
    return ReportData(meta, findings, mitigations, columns, matrix, costs, rng, shown, range_counts,
                      trace is not None, cmp.baseline, against)


# --------------------------------------------------------------------------
# Events and sentences


def _event_lookup(findings: pl.DataFrame, head: pl.DataFrame,
                  trace: pl.DataFrame | None) -> dict[tuple[str, int], Event]:
    """(mitigation, seq) -> Event for every event the shown ranges involve."""
    if head.height == 0:
        return {}
    involved = (
        head.select(
            "mitigation",
            pl.concat_list(pl.col("fix_after_seq"), pl.col("fix_before_seq"), "seqs", "other_seqs").alias("seq"),
        )
        .explode("seq")
        .drop_nulls()
        .unique()
        .with_columns(pl.col("mitigation").cast(findings.schema["mitigation"]))  # (to join with the findings)
    )
    out: dict[tuple[str, int], Event] = {}
    # What the findings say about the events they are reported at (all lines of the event).
    at = (
        findings.join(involved, on=["mitigation", "seq"], how="semi")
        .group_by("mitigation", "seq")
        .agg(
            pl.col("agent").first(),
            pl.col("kind").first(),
            pl.col("addr").min().alias("lo"),
            (pl.col("addr") + pl.col("size")).max().alias("hi"),
            pl.col("src").first(),
            pl.col("src_line").first(),
            pl.col("src_offset").first(),
        )
    )
    for r in at.iter_rows(named=True):
        out[(r["mitigation"], r["seq"])] = Event(
            r["seq"], r["agent"], OP_OF_KIND.get(r["kind"]), r["lo"], r["hi"] - r["lo"], r["src"],
            r["src_line"], r["src_offset"], exact_extent=False)
    # What the findings say about their other events: only the agent.
    others = (
        findings.filter(pl.col("other_seq").is_not_null())
        .select("mitigation", pl.col("other_seq").alias("seq"), "other_agent", "kind", "cause")
        .join(involved, on=["mitigation", "seq"], how="semi")
        .unique(subset=["mitigation", "seq"], keep="first", maintain_order=False)
        .sort("mitigation", "seq")
    )
    for r in others.iter_rows(named=True):
        key = (r["mitigation"], r["seq"])
        if key in out:
            continue
        agent = r["other_agent"]
        inserted = bool(agent and "/" in agent)
        op = "invalidation" if (r["kind"], r["cause"]) == ("lost-write", "discarded-by-invalidate") else "write"
        out[key] = Event(r["seq"], agent, None if inserted else op, inserted=inserted)
    for m, s in involved.iter_rows():
        out.setdefault((m, s), Event(s))
    if trace is not None:
        want = involved["seq"].unique()
        cols = [c for c in (*_TRACE_COLUMNS, *_RESOLVED_COLUMNS) if c in trace.columns]
        rows = trace.filter(pl.col("seq").is_in(want.implode())).select(cols)
        if "sub" in trace.columns:  # a resolved frame: the recorded event is sub 0
            rows = trace.filter(pl.col("seq").is_in(want.implode()) & (pl.col("sub") == 0)).select(cols)
        recorded = {r["seq"]: r for r in rows.iter_rows(named=True)}
        for key, ev in out.items():
            r = recorded.get(key[1])
            if r is None or ev.inserted:
                continue
            op = r["op"]
            if op == "cmo" and r.get("cmo"):
                op = r["cmo"].upper().replace(".", " ")  # DC IVAC
            elif op == "sysreg" and r.get("sysreg"):
                op = f"sysreg {r['sysreg']}"
            out[key] = Event(key[1], r["agent"], op, r.get("addr"), r.get("size"), r.get("src"), r.get("src_line"),
                             r.get("src_offset"), r.get("mem_type"), r.get("path"), r.get("type_source"))
    return out


def _type_phrase(ev: Event, default_path: str, *, reading: bool = False) -> str:
    """`` with its MMU off (Device-nGnRnE, to memory)``, `` (Normal Write-Back, through the cache)``
    or, without the resolved trace, the path the rule implies: `` to memory``."""
    path = ev.path or default_path
    memory = "from memory" if reading else "to memory"
    where = {"N": memory, "C": "through the cache", "T": "through the cache" if reading else "write-through"}.get(
        path, f"on path {path}")
    if ev.type_source in ("device", "device-attr") and ev.mem_type in ("wb", "nc"):
        return f" ({'coherent' if path == 'C' else 'non-coherent'} DMA, {where})"
    if ev.mem_type:
        t = TYPE_WORDS.get(ev.mem_type, ev.mem_type)
        lead = " with its MMU off" if ev.type_source == "mmu-off" else ""
        return f"{lead} ({t}, {where})"
    return f" {where}"


def _lines_phrase(row: Mapping[str, Any]) -> str:
    n = int(row["lines"])
    span = f"{row['start']:#x}+{row['end'] - row['start']}"
    return f"{span} ({n} line{'s' if n != 1 else ''})"


def _cached_phrase(speculation: str) -> str:
    if speculation == "observed":
        return "a cacheable access brought the line into the cache before it"
    return "the line is mapped cacheable, so the cache may hold a stale copy of it"


def why(row: Mapping[str, Any], after: Event, before: Event, *, speculation: str = "architectural") -> str:
    """One sentence, in the coherence model's words, of why the range needs its maintenance."""
    cause, kinds = row["cause"], list(row["kinds"])
    a, b = row["fix_after_seq"], row["fix_before_seq"]
    who_a, who_b = after.agent or f"the event at seq {a}", before.agent or f"the event at seq {b}"
    bytes_a = f" {after.bytes}" if after.bytes else ""
    bytes_b = f" {before.bytes}" if before.bytes else ""
    if cause == "dirty-not-cleaned":
        lead = (f"{who_b} read{bytes_b}{_type_phrase(before, 'N', reading=True)} while {who_a}'s write at seq {a}"
                f"{_type_phrase(after, 'C')} may still sit dirty in the cache")
    elif cause == "stale-line-not-invalidated":
        lead = (f"{who_a} wrote{bytes_a}{_type_phrase(after, 'N')} while {_cached_phrase(speculation)}, "
                f"which {who_b}'s read at seq {b} may return")
    elif cause == "clobbered-by-writeback":
        lead = (f"{who_b} wrote{bytes_b}{_type_phrase(before, 'N')} while the line may still be dirty from "
                f"{who_a}'s write at seq {a}{_type_phrase(after, 'C')}, so a later write-back of the line "
                f"may put the older bytes back over the new ones")
        if "stale-read" in kinds:
            lead += " and later reads of them may be stale"
    elif cause == "discarded-by-invalidate":
        lead = (f"{who_a}'s write at seq {a}{_type_phrase(after, 'C')} may still be dirty when the "
                f"invalidation at seq {b} by {who_b} discards the line, so the write may be lost")
        if "stale-read" in kinds:
            lead += " and later reads of its bytes may be stale"
        by = f" by {row['fix_agent']}" if row.get("fix_agent") else ""
        return (f"{lead}; clean (DC CVAC) {_lines_phrase(row)}{by} after seq {a} and before seq {b}, or make "
                f"the invalidation at seq {b} a clean+invalidate (DC CIVAC).")
    else:  # icache-not-invalidated
        lead = (f"{who_b} fetched instructions{bytes_b} while its instruction cache may still hold the line "
                f"from before {who_a}'s write at seq {a}")
        if after.path == "C":
            lead += ", which went through the data cache and so needs a clean to the point of unification first"
        elif after.path is None:
            lead += " (after a cacheable write, a clean to the point of unification must come first)"
    fix = FIX_WORDS.get(row["fix_op"], row["fix_op"])
    by = f" by {row['fix_agent']}" if row.get("fix_agent") else ""
    return f"{lead}; {fix} {_lines_phrase(row)}{by} after seq {a} and before seq {b}."


def _describe_range(row: dict[str, Any], lookup: Mapping[tuple[str, int], Event], speculation: str) -> Range:
    m = row["mitigation"]
    seqs = sorted({row["fix_after_seq"], row["fix_before_seq"], *row["seqs"], *row["other_seqs"]})
    events = [lookup.get((m, s)) or Event(s) for s in seqs]
    after = lookup.get((m, row["fix_after_seq"])) or Event(row["fix_after_seq"])
    before = lookup.get((m, row["fix_before_seq"])) or Event(row["fix_before_seq"])
    return Range(row, events, why(row, after, before, speculation=speculation))


def ranges_with_why(data: ReportData) -> pl.DataFrame:
    """Every range (not only the shown ones), with the sentence of why where it was described (else null)."""
    key = ["mitigation", "start", "cause", "fix_after_seq", "fix_before_seq", "fix_agent", "region"]
    described = [r for rs in data.shown.values() for r in rs]
    why = pl.DataFrame(
        {**{k: [r.row[k] for r in described] for k in key}, "why": [r.why for r in described]},
        schema={**{k: data.ranges.schema[k] for k in key}, "why": pl.String()},
    )
    return data.ranges.join(why, on=key, how="left", nulls_equal=True, maintain_order="left")


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=True) + "\n"
