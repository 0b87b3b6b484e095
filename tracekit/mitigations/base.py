"""What every mitigation is and the machinery they share.

A mitigation is a transformation of the *resolved* event frame before replay
(coherence model section 6): it rewrites memory types, inserts maintenance
events, removes events, or changes the trace-wide settings. This module holds

* :class:`Mitigation`, the record the catalog and ``tracekit mitigations`` list;
* :class:`MitigationContext`, what a mitigation knows while it acts (its
  position ``k`` of ``n`` in a ``+`` combination, the trace settings);
* :func:`insertion_sub`, the ordering rule of docs/architecture.md;
* :func:`inserted_events`, which turns a small frame of *anchors* into cmo
  rows carrying every resolved column (region columns by a join on the
  regions, so an inserted event looks exactly like a recorded one);
* :class:`MitigationCost` and :func:`mitigation_cost`, the generic cost
  computed by comparing the frame before and after (docs/mitigations.md);
* the registry (:data:`MITIGATIONS`, :func:`register_mitigation`), the spec
  parser and :func:`apply_mitigation`.

Everything is vectorised: mitigations build polars plans; no Python code runs
per event.
"""

from __future__ import annotations

import inspect
import weakref
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import polars as pl

from ..errors import TracekitError, UnknownMitigationError, UsageError
from ..model import SIDES, TraceInfo, seq_sub_key

Frame = pl.LazyFrame | pl.DataFrame

#: Who performs a mitigation ("—" only for `none`).
ACTORS = ("—", "guest", "hypervisor", "QEMU", "hardware")

#: Sub values each mitigation of a combination owns on each side of an anchor
#: (docs/architecture.md, "Order of inserted events").
SUB_BLOCK = 64

#: Events that carry a memory type: accesses and DC ZVA (a write of zeros).
ACCESS_OPS = ("read", "write", "ifetch")

#: Registers whose guest writes trap while HCR_EL2.TVM is set (Arm ARM D13.2.46).
TVM_REGISTERS = (
    "SCTLR_EL1", "TTBR0_EL1", "TTBR1_EL1", "TCR_EL1", "ESR_EL1", "FAR_EL1", "AFSR0_EL1",
    "AFSR1_EL1", "MAIR_EL1", "AMAIR_EL1", "CONTEXTIDR_EL1",
)


class MitigationError(TracekitError):
    """A mitigation could not be applied (a custom one broke the frame, or a limit was hit)."""


# --------------------------------------------------------------------------
# Ordering of inserted events


def insertion_sub(k: int, n: int, j: int, before: bool) -> int:
    """The ``sub`` of the ``j``-th event that mitigation ``k`` of ``n`` inserts at an anchor.

    Before the anchor ``-((n - k + 1) * 64 - j)``, after it ``(n - k) * 64 + 1 + j``
    (docs/architecture.md): a later mitigation acts closer to the anchor, and one
    mitigation's events keep their own order.
    """
    if not 1 <= k <= n:
        raise ValueError(f"mitigation position: expected 1 <= k <= n, found k={k}, n={n}")
    if not 0 <= j < SUB_BLOCK:
        raise ValueError(f"inserted event index: expected 0 <= j < {SUB_BLOCK}, found {j}")
    if before:
        return -((n - k + 1) * SUB_BLOCK - j)
    return (n - k) * SUB_BLOCK + 1 + j


def sub_expr(k: int, n: int, j: pl.Expr, before: pl.Expr | bool) -> pl.Expr:
    """:func:`insertion_sub` as a polars expression over a column of ``j`` (and of ``before``).

    ``j`` is clamped to 63. A mitigation may only exceed 64 events at one anchor
    with events of one operation on disjoint lines, whose order among
    themselves does not matter (see docs/mitigations.md, "Order").
    """
    j = j.cast(pl.Int64).clip(0, SUB_BLOCK - 1)
    before_sub = -((n - k + 1) * SUB_BLOCK - j)
    after_sub = (n - k) * SUB_BLOCK + 1 + j
    if isinstance(before, bool):
        return (before_sub if before else after_sub).cast(pl.Int32)
    return pl.when(before).then(before_sub).otherwise(after_sub).cast(pl.Int32)


# --------------------------------------------------------------------------
# Context and record


@dataclass(frozen=True)
class MitigationContext:
    """What a mitigation knows while it acts.

    ``info`` is the trace settings *after* this mitigation's own settings change
    (``s2fwb`` sets ``fwb``; ``host-uncached`` maps shared regions Non-cacheable);
    ``info_before`` the settings it found. ``owns``: in a partitioned run, which addresses
    lie on lines this part owns (numpy uint64 addresses -> bool); traps counted per line or
    page count only those, so that the parts add up (None: the whole trace).
    """

    info: TraceInfo
    k: int = 1  # 1-based position in the combination
    n: int = 1  # number of mitigations in the combination
    spec: str = ""  # the whole combination, e.g. "kvm-cache-toggle+guest-boot-inval"
    name: str = ""  # this mitigation's name
    info_before: TraceInfo | None = None
    owns: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def line_size(self) -> int:
        return self.info.line_size

    def sub(self, j: pl.Expr | int, *, before: pl.Expr | bool) -> pl.Expr:
        """Sub of inserted event(s) number ``j`` at their anchor (vectorised insertion_sub)."""
        return sub_expr(self.k, self.n, j if isinstance(j, pl.Expr) else pl.lit(j), before)

    def agent(self, acting: pl.Expr | str) -> pl.Expr:
        """``ACTING_AGENT/MITIGATION``, the agent of the events this mitigation inserts."""
        acting = acting if isinstance(acting, pl.Expr) else pl.lit(acting)
        return acting.cast(pl.String) + pl.lit("/" + self.name)


ApplyFn = Callable[[Frame, MitigationContext], Frame]
TrapsFn = Callable[[Frame, MitigationContext], Mapping[str, int]]
InfoFn = Callable[[TraceInfo], TraceInfo]


@dataclass(frozen=True)
class Mitigation:
    """One entry of the catalog: who acts, what it changes, what it cannot do, and how.

    ``apply(frame, ctx)`` returns the transformed frame (lazy or eager, same
    columns). ``traps(frame, ctx)`` counts the traps the mitigation takes on the
    frame it is given (before it acts). ``update_info(info)`` changes the trace
    settings (FWB, host mappings). ``merges_lines``: its operations by address are
    maximal runs of neighbouring lines, one per (anchor, side of it, acting agent,
    region), like guest-boot-inval's; a partitioned run, whose parts each see part of a
    run, then counts them by where the runs begin (``partition._RunEdges``).
    ``retypes_only``: it changes memory types or settings and never inserts or removes an
    event, so it builds no second frame beside the trace and the memory planner counts it
    as light as ``none`` (``partition.estimated_bytes``); checked when it is applied.
    """

    name: str
    actor: str
    changes: str  # one sentence
    limits: str  # what it cannot fix or what it may break
    apply: ApplyFn
    traps: TrapsFn | None = None
    update_info: InfoFn | None = None
    builtin: bool = False
    merges_lines: bool = False
    retypes_only: bool = False

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "actor": self.actor, "changes": self.changes, "limits": self.limits}


# --------------------------------------------------------------------------
# Cost


@dataclass
class MitigationCost:
    """What a mitigation costs beside what it fixes (docs/mitigations.md, "Cost").

    ``traps``: trap name -> count. ``inserted_ops``: maintenance events inserted
    (a by-address range is one operation). ``inserted_lines``: the lines they
    cover, summed over operations (a whole-RAM ``ram.civac`` covers every RAM
    line the trace touches). ``retyped_accesses``: accesses whose memory type
    changed, ``retyped`` the same by ``{from, to, count}``. ``removed_ops``:
    recorded events removed (set/way operations KVM emulates).
    """

    traps: dict[str, int] = field(default_factory=dict)
    inserted_ops: int = 0
    inserted_lines: int = 0
    retyped_accesses: int = 0
    retyped: list[dict[str, Any]] = field(default_factory=list)
    removed_ops: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "traps": dict(self.traps),
            "inserted_ops": self.inserted_ops,
            "inserted_lines": self.inserted_lines,
            "retyped_accesses": self.retyped_accesses,
            "retyped": [dict(r) for r in self.retyped],
            "removed_ops": self.removed_ops,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MitigationCost":
        return cls(
            traps={str(k): int(v) for k, v in dict(d.get("traps", {})).items()},
            inserted_ops=int(d.get("inserted_ops", 0)),
            inserted_lines=int(d.get("inserted_lines", 0)),
            retyped_accesses=int(d.get("retyped_accesses", 0)),
            retyped=[{"from": r["from"], "to": r["to"], "count": int(r["count"])} for r in d.get("retyped", [])],
            removed_ops=int(d.get("removed_ops", 0)),
        )

    @property
    def trap_count(self) -> int:
        return sum(self.traps.values())

    def describe(self) -> str:
        """One line for summaries: traps, maintenance, retyped accesses."""
        traps = ", ".join(f"{k} {v}" for k, v in sorted(self.traps.items())) or "none"
        retyped = ", ".join(f"{r['from']}->{r['to']} {r['count']}" for r in self.retyped)
        parts = [f"traps: {traps}",
                 f"maintenance inserted: {self.inserted_ops} ops over {self.inserted_lines} lines",
                 f"accesses retyped: {self.retyped_accesses}" + (f" ({retyped})" if retyped else "")]
        if self.removed_ops:
            parts.append(f"events removed: {self.removed_ops}")
        return "; ".join(parts)


# --------------------------------------------------------------------------
# Frame helpers shared by the catalog


def lazy(frame: Frame) -> pl.LazyFrame:
    return frame.lazy() if isinstance(frame, pl.DataFrame) else frame


def collect(frame: Frame) -> pl.DataFrame:
    """A mitigation's frame, each column in one piece.

    polars' default (streaming) engine returns every column, even one the plan only
    passed through, in 100k-row morsels; each later ``to_numpy`` or gather of such a
    column copies it whole. The in-memory engine hands untouched columns back as they
    were: the catalog on 10 M events 32.4 -> 29.2 s, page faults down a third.
    """
    return frame.collect(engine="in-memory") if isinstance(frame, pl.LazyFrame) else frame


def recorded() -> pl.Expr:
    """Rows of the recorded trace (inserted events have sub != 0); only they are anchors."""
    return pl.col("sub") == 0


def is_zva() -> pl.Expr:
    return (pl.col("op") == "cmo") & (pl.col("cmo") == "dc.zva")


def is_data_write() -> pl.Expr:
    """A write in the model: ``write`` and DC ZVA (a write of zeros to its line)."""
    return (pl.col("op") == "write") | is_zva().fill_null(False)


def is_typed_access() -> pl.Expr:
    """Events with a memory type: accesses and DC ZVA."""
    return pl.col("op").is_in(ACCESS_OPS) | is_zva().fill_null(False)


def first_line(ls: int) -> pl.Expr:
    return pl.col("addr") // ls


def last_line(ls: int) -> pl.Expr:
    """Last line of an event: DC ZVA acts on the line of its address only (docs/semantics.md)."""
    size = pl.col("size").fill_null(1).clip(lower_bound=1)
    return pl.when(is_zva().fill_null(False)).then(pl.col("addr") // ls).otherwise(
        (pl.col("addr") + size - 1) // ls)


def sctlr_before() -> pl.Expr:
    """Per vCPU, SCTLR_EL1 in force *before* each row (0 at reset), from its SCTLR_EL1 writes.

    Use on a frame sorted by seq and holding (at least) the vCPU's SCTLR_EL1 writes.
    """
    setting = pl.when((pl.col("op") == "sysreg") & (pl.col("sysreg") == "SCTLR_EL1")).then(pl.col("value"))
    return setting.shift(1).forward_fill().over("agent").fill_null(0).cast(pl.UInt64)


def interval_union(frame: pl.LazyFrame, keys: list[str], lo: str, hi: str) -> pl.LazyFrame:
    """Merge overlapping or adjacent integer intervals [lo, hi] per ``keys`` (vectorised).

    Returns ``keys + [lo, hi]`` with one row per maximal run, sorted by keys then lo.
    """
    s = frame.select(*keys, lo, hi).sort(*keys, lo)
    prev_hi = pl.col(hi).cum_max().shift(1)
    if keys:
        prev_hi = prev_hi.over(keys)
    starts = s.with_columns(_new=(prev_hi.is_null() | (pl.col(lo) > prev_hi + 1)).cast(pl.Int64))
    run = pl.col("_new").cum_sum()
    if keys:
        run = run.over(keys)
    return (
        starts.with_columns(_run=run)
        .group_by(*keys, "_run", maintain_order=True)
        .agg(pl.col(lo).min(), pl.col(hi).max())
        .drop("_run")
    )


def region_table(info: TraceInfo) -> pl.DataFrame:
    """The regions as a frame for joins: base, last byte and the resolved region columns."""
    regions = sorted(info.effective_regions(), key=lambda r: r.base)
    return pl.DataFrame(
        {
            "_base": [r.base for r in regions],
            "_last": [min(r.base + r.size, 1 << 64) - 1 for r in regions],
            "region": [r.name for r in regions],
            "region_kind": [r.kind for r in regions],
            "shared": [r.shared for r in regions],
            "host_cacheable": [r.host in ("wb", "wt") for r in regions],
        },
        schema={"_base": pl.UInt64, "_last": pl.UInt64, "region": pl.String, "region_kind": pl.String,
                "shared": pl.Boolean, "host_cacheable": pl.Boolean},
    )


_REGION_COLUMNS = ("region", "region_kind", "shared", "host_cacheable")

#: Columns an anchor frame may carry into inserted events (copied from the anchor event).
_COPIED = ("time", "phase", "src", "src_line", "src_offset", "sctlr", "mair")


def inserted_events(anchors: Frame, ctx: MitigationContext, schema: Mapping[str, pl.DataType],
                    *, detail: str | None = None) -> pl.LazyFrame:
    """Maintenance events inserted by ``ctx.name``, with every column of ``schema`` filled.

    ``anchors`` has one row per inserted event: ``seq`` (the anchor), ``j``
    (index of the event at its anchor), ``before`` (bool), ``acting`` (the
    agent performing it), ``cmo``, ``addr`` and ``size`` (null for ``ram.civac``),
    optionally ``locate`` (the address whose region the event belongs to;
    default ``addr``) and any of time, phase, src, src_line, src_offset, sctlr,
    mair (copied from the anchor; missing ones are null). The result has
    ``op = "cmo"``, ``agent = ACTING/NAME``, the acting agent's ``side``, the
    region columns joined from ``ctx.info`` (``ram.civac``: region_kind ``ram``),
    and null types (a cmo has none).

    An anchor that already knows the region columns of ``locate`` (an access
    maintained on its own lines: they are the access's) may carry all four
    (region, region_kind, shared, host_cacheable): they are taken as they are,
    instead of being looked up (two sorts of the anchors and a join: 0.2 s for
    guest-dma-cmo's 2 M events on 10 M).
    """
    a = lazy(anchors)
    given = a.collect_schema()
    names = given.names()
    if "locate" not in names:
        a = a.with_columns(locate=pl.col("addr"))
    if all(c in names for c in _REGION_COLUMNS):
        inside = pl.col("region").is_not_null()
    else:
        regions = region_table(ctx.info).lazy()
        a = (
            a.with_columns(_row=pl.int_range(pl.len()), _loc=pl.col("locate").cast(pl.UInt64).fill_null(0))
            .sort("_loc")
            .join_asof(regions, left_on="_loc", right_on="_base", strategy="backward")
            .sort("_row")
        )
        inside = pl.col("locate").is_not_null() & pl.col("_base").is_not_null() & (pl.col("_loc") <= pl.col("_last"))
    whole_ram = pl.col("cmo") == "ram.civac"
    cols: dict[str, pl.Expr] = {
        "seq": pl.col("seq"),
        "sub": ctx.sub(pl.col("j"), before=pl.col("before")),
        "agent": ctx.agent(pl.col("acting")),
        "side": _side_of(pl.col("acting"), given.get("acting"), schema.get("side")),
        "op": pl.lit("cmo"),
        "addr": pl.col("addr"),
        "size": pl.col("size"),
        "cmo": pl.col("cmo"),
        "detail": pl.lit(detail, dtype=pl.String),
        "region": pl.when(inside).then(pl.col("region")),
        "region_kind": pl.when(whole_ram).then(pl.lit("ram")).when(inside).then(pl.col("region_kind")),
        "shared": pl.when(inside).then(pl.col("shared")),
        "host_cacheable": pl.when(inside).then(pl.col("host_cacheable")),
    }
    for c in _COPIED:
        if c in names:
            cols[c] = pl.col(c)
    exprs = []
    for c, dtype in schema.items():
        e = cols.get(c, pl.lit(None))
        exprs.append(e.cast(dtype).alias(c))
    return a.select(exprs)


def _side_of(acting: pl.Expr, dtype: pl.DataType | None, side: pl.DataType | None) -> pl.Expr:
    """The side of agents named ``SIDE.N``: read off a Categorical's categories, not row by row."""
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        out = pl.lit(None, dtype=side or pl.String)
        for name in SIDES:
            out = pl.when(acting.cat.starts_with(name + ".") | (acting == name)) \
                .then(pl.lit(name, dtype=side or pl.String)).otherwise(out)
        return out
    return acting.cast(pl.String).str.split(".").list.first()


def add_events(frame: Frame, *inserted: Frame) -> pl.LazyFrame:
    """The frame with inserted events added, sorted by (seq, sub) (stable: ties keep insertion order).

    The frame is already in (seq, sub) order and the inserted events are few, so
    they are sorted alone and placed by a binary search instead of sorting the
    whole trace again. Inside ``apply_mitigation(..., ordered=False)`` the last
    mitigation's events are only appended (see there): the fast engine replays such
    a frame by rank, far cheaper than moving every column of the trace.
    """
    base = collect(frame)
    ins = [collect(i) for i in inserted]
    ins = [i for i in ins if i.height]
    if not ins:
        return base.lazy()
    new = pl.concat(ins, how="vertical").sort("seq", "sub", maintain_order=True)
    if not _MERGE_INSERTED.get():
        return pl.concat([base, new], how="vertical", rechunk=False).lazy()
    top = max(int(base["seq"].max() or 0), int(new["seq"].max() or 0))
    if base.height and top < (1 << 32) and _ordered(base):
        at = np.searchsorted(_packed(base), _packed(new), side="right")  # ties: base first
        runs = np.flatnonzero(np.diff(at)) + 1  # new rows starting another place in the trace
        if len(runs) < _FEW_INSERTED:
            # a few places (a whole-RAM clean per cache toggle, the lines a vCPU wrote before its
            # MMU came on): the trace is cut there and the pieces chained, no row is copied
            pieces, start = [], 0
            for first, last in zip([0, *runs.tolist()], [*runs.tolist(), new.height]):
                cut = int(at[first])
                pieces += [base.slice(start, cut - start), new.slice(first, last - first)]
                start = cut
            pieces.append(base.slice(start))
            return pl.concat([p for p in pieces if p.height], how="vertical", rechunk=False).lazy()
        # many places: one gather of both frames (parallel over columns, cheaper than merge_sorted)
        both = pl.concat([base, new], how="vertical", rechunk=False)
        return both[_interleave(at, base.height)].lazy()
    return pl.concat([base, new], how="vertical").sort("seq", "sub", maintain_order=True).lazy()


def _interleave(at: np.ndarray, n: int) -> np.ndarray:
    """Rows of ``base + new`` in merged order, where new row j goes before base row ``at[j]``
    (``at`` ascending): what a merge of the two would take, as one gather index."""
    k = at.shape[0]
    to = at + np.arange(k)  # where each new row lands
    take = np.empty(n + k, np.int64)
    take[to] = np.arange(n, n + k)
    keep = np.ones(n + k, np.bool_)
    keep[to] = False
    take[keep] = np.arange(n)
    return take


#: False while ``apply_mitigation(..., ordered=False)`` runs a built-in mitigation's last step:
#: add_events then appends instead of merging.
_MERGE_INSERTED: ContextVar[bool] = ContextVar("tracekit_merge_inserted", default=True)


#: Inserted events going to fewer places in the trace than this are chained between slices of
#: it instead of merged in.
_FEW_INSERTED = 64


def _packed(frame: pl.DataFrame) -> np.ndarray:
    """(seq, sub) as one sortable uint64 per row (seq below 2^32)."""
    return seq_sub_key(frame["seq"].to_numpy(), frame["sub"].to_numpy())


def finalize(frame: Frame, info: TraceInfo) -> pl.DataFrame:
    """Recompute guest types after ``s1_decl`` / ``fwb`` changed (``resolve.finalize_types``)."""
    from ..resolve import finalize_types

    return finalize_types(collect(frame))


# --------------------------------------------------------------------------
# Cost, generically: compare the frame before and after


_TOUCHED: dict[tuple[str, int], tuple[Any, int]] = {}


def _touched_cached(fn):
    """One trace's count, kept: every mitigation of a catalog run costs its ram.civac against the same frame.

    Kept per (function, line size) with a weak reference to the frame it was counted on:
    a frame that is gone (even if another takes its address) never matches.
    """
    def wrapper(frame: Frame, line_size: int) -> int:
        if not isinstance(frame, pl.DataFrame):
            return fn(frame, line_size)
        key = (fn.__name__, line_size)
        hit = _TOUCHED.get(key)
        if hit is not None and hit[0]() is frame:
            return hit[1]
        value = fn(frame, line_size)
        _TOUCHED[key] = (weakref.ref(frame), value)
        return value

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


@_touched_cached
def ram_lines_touched(frame: Frame, line_size: int) -> int:
    """Distinct lines of RAM regions that the trace's addressed events touch (what ``ram.civac`` covers)."""
    return _distinct_lines(lazy(frame).filter(
        recorded() & pl.col("addr").is_not_null() & (pl.col("region_kind") == "ram").fill_null(True)), line_size)


@_touched_cached
def _lines_touched(frame: Frame, line_size: int) -> int:
    return _distinct_lines(lazy(frame).filter(recorded() & pl.col("addr").is_not_null()), line_size)


def _distinct_lines(events: pl.LazyFrame, line_size: int) -> int:
    """Distinct lines the events' [addr, addr+size) cover.

    The lines of a trace lie close together (its regions): they are marked in a table as long
    as their span (``_lines_kernel``, one pass: 10 M events 0.2 s, where sorting the intervals
    to merge them took 0.6 s). Spread far apart, or covered over and over by long intervals,
    they are merged sorted instead (``interval_union``).
    """
    lines = events.select(_lo=first_line(line_size).cast(pl.Int64),
                          _hi=last_line(line_size).cast(pl.Int64)).collect()
    if lines.height == 0:
        return 0
    lo, hi = lines["_lo"].to_numpy(), lines["_hi"].to_numpy()
    base = int(lo.min())
    span = int(hi.max()) - base + 1
    if span <= max(8 * len(lo), _MARKED_SPAN):
        from ._lines_kernel import marked_lines

        count = marked_lines(lo, hi, base, span, 8 * len(lo) + span)
        if count >= 0:
            return int(count)
    runs = interval_union(lines.lazy(), [], "_lo", "_hi")
    return int(runs.select((pl.col("_hi") - pl.col("_lo") + 1).sum()).collect().item() or 0)


#: Lines a marking table may span whatever the events' count (16 MB).
_MARKED_SPAN = 1 << 24


def _recorded_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows with sub == 0; a slice (no copy) when they come first, as in a frame that
    inserted nothing or appended what it inserted (``apply_mitigation(..., ordered=False)``)."""
    recorded_count = int((frame["sub"] == 0).sum())
    if frame.height == recorded_count or not (frame["sub"].head(recorded_count) != 0).any():
        return frame.head(recorded_count)
    return frame.filter(pl.col("sub") == 0)


def mitigation_cost(before: Frame, after: Frame, info: TraceInfo,
                    traps: Mapping[str, int] | None = None) -> MitigationCost:
    """Cost of turning ``before`` into ``after`` (docs/mitigations.md, "Cost").

    Inserted and removed events are rows present on one side only, keyed by
    (seq, sub). Lines covered: by-address operations cover the lines of
    [addr, addr+size); ``ram.civac`` covers every RAM line the recorded trace
    touches; other operations without an address every line it touches.
    Retyped accesses: recorded accesses (and DC ZVA) whose ``mem_type`` differs.
    """
    b, a = lazy(before), lazy(after)
    key = ["seq", "sub"]
    before_df = before if isinstance(before, pl.DataFrame) else None
    after_df = after if isinstance(after, pl.DataFrame) else None
    if before_df is not None and after_df is not None and not (before_df["sub"] != 0).any():
        # the usual case, `before` is the recorded trace: what `after` inserted is what has sub != 0,
        # and the recorded rows it kept are still in seq order (no join over the whole trace)
        ins = after_df.select("sub", "op", "cmo", "addr", "size").filter(pl.col("sub") != 0).drop("sub")
        kept = _recorded_rows(after_df.select("seq", "sub", "op", "cmo", "mem_type"))
        removed = before_df.height - kept.height
        typed = is_typed_access()
        if removed == 0:
            changed = before_df.select(typed.alias("_t"), _from=pl.col("mem_type")).with_columns(
                _to=kept["mem_type"]).filter(pl.col("_t") & pl.col("_from").ne_missing(pl.col("_to")))
        else:
            accesses = before_df.filter(typed).select("seq", _from=pl.col("mem_type"))
            kept_accesses = kept.filter(typed).select("seq", _to=pl.col("mem_type"))
            if accesses["seq"].equals(kept_accesses["seq"]):
                # only other rows were removed (KVM's emulated set/way operations): the accesses
                # pair up row by row (1.2 s less than the join on 10 M events)
                changed = accesses.with_columns(_to=kept_accesses["_to"]).filter(
                    pl.col("_from").ne_missing(pl.col("_to")))
            else:  # accesses were removed: match the kept ones by seq, both sides in seq order
                changed = (kept_accesses.join_asof(accesses.with_columns(_bseq=pl.col("seq")), on="seq",
                                                   strategy="backward", check_sortedness=False)
                           .filter((pl.col("_bseq") == pl.col("seq")) & pl.col("_from").ne_missing(pl.col("_to"))))
        re = (changed.group_by("_from", "_to").len()
              .with_columns(pl.col("_from").cast(pl.String), pl.col("_to").cast(pl.String))
              .sort("len", "_from", "_to", descending=[True, False, False], nulls_last=True))
        return _cost(ins, re, before, info, traps, removed)
    ins = collect(a.join(b.select(key), on=key, how="anti").select("op", "cmo", "addr", "size"))
    removed = collect(b.join(a.select(key), on=key, how="anti").select(pl.len())).item()
    typed = is_typed_access()
    re = collect(
        b.filter(typed).select(*key, _from=pl.col("mem_type"))
        .join(a.filter(typed).select(*key, _to=pl.col("mem_type")), on=key, how="inner")
        .filter(pl.col("_from").ne_missing(pl.col("_to")))
        .group_by("_from", "_to").len()
        .with_columns(pl.col("_from").cast(pl.String), pl.col("_to").cast(pl.String))
        .sort("len", "_from", "_to", descending=[True, False, False], nulls_last=True)
    )
    return _cost(ins, re, before, info, traps, removed)


def whole_cache_lines(inserted: pl.DataFrame, touched: Callable[[bool], int]) -> int:
    """Lines the whole-cache operations among ``inserted`` cover: a ``ram.civac`` every RAM line
    the trace touches (``touched(True)``), any other every line it touches (``touched(False)``);
    ``touched`` is only asked when such an operation is there."""
    whole = inserted.filter(pl.col("addr").is_null() & (pl.col("op") == "cmo"))
    n_ram = int((whole["cmo"] == "ram.civac").sum()) if whole.height else 0
    rest = whole.height - n_ram
    return (n_ram * touched(True) if n_ram else 0) + (rest * touched(False) if rest else 0)


def retyped_entries(re: pl.DataFrame) -> list[dict[str, Any]]:
    """``{from, to, count}`` of a (``_from``, ``_to``, ``len``) count frame, as a cost lists them."""
    return [{"from": r["_from"], "to": r["_to"], "count": int(r["len"])} for r in re.iter_rows(named=True)]


def traps_dict(traps: Mapping[str, int] | None) -> dict[str, int]:
    """Trap counts as a cost holds them: by name, none of zero."""
    return {str(k): int(v) for k, v in sorted((traps or {}).items()) if v}


def _cost(ins: pl.DataFrame, re: pl.DataFrame, before: Frame, info: TraceInfo,
          traps: Mapping[str, int] | None, removed: int) -> MitigationCost:
    ls = info.line_size
    by_addr = ins.filter(pl.col("addr").is_not_null())
    lines = int(by_addr.select((last_line(ls) - first_line(ls) + 1).sum()).item() or 0) if by_addr.height else 0
    lines += whole_cache_lines(ins, lambda ram: (ram_lines_touched if ram else _lines_touched)(before, ls))
    retyped = retyped_entries(re)
    return MitigationCost(
        traps=traps_dict(traps),
        inserted_ops=ins.height,
        inserted_lines=lines,
        retyped_accesses=sum(r["count"] for r in retyped),
        retyped=retyped,
        removed_ops=int(removed),
    )


# --------------------------------------------------------------------------
# Registry and specs

#: Every known mitigation by name, in catalog order (``none`` first).
MITIGATIONS: dict[str, Mitigation] = {}

_FORBIDDEN = set("+, \t\n/")


def _check_name(name: str) -> None:
    if not name or name == "all" or any(ch in _FORBIDDEN for ch in name):
        raise ValueError(f"mitigation name: expected a word without '+', ',', '/' or spaces (not 'all'), "
                         f"found {name!r}")


def _add(m: Mitigation, replace: bool) -> Mitigation:
    _check_name(m.name)
    if m.actor not in ACTORS:
        raise ValueError(f"mitigation {m.name!r}: expected an actor in {ACTORS}, found {m.actor!r}")
    if m.name in MITIGATIONS and not replace:
        raise ValueError(f"mitigation {m.name!r} is already registered (pass replace=True)")
    MITIGATIONS[m.name] = m
    return m


def register_mitigation(
    name: str | Mitigation,
    apply: ApplyFn | None = None,
    *,
    actor: str = "guest",
    changes: str = "",
    limits: str = "",
    traps: TrapsFn | None = None,
    update_info: InfoFn | None = None,
    replace: bool = False,
    builtin: bool = False,
    merges_lines: bool = False,
    retypes_only: bool = False,
) -> Any:
    """Add a mitigation to the catalog, from Python.

    Three forms::

        register_mitigation(Mitigation(...))
        register_mitigation("my-fix", fn, actor="guest", changes="...", limits="...")

        @register_mitigation("my-fix", actor="hypervisor", changes="...", limits="...",
                             traps=lambda frame, ctx: {"HVC": 1})
        def my_fix(frame, ctx):       # a function over the resolved event frame
            return frame               # same columns; insert with inserted_events(...)

    The decorator form returns the :class:`Mitigation`. A name already taken
    raises ValueError unless ``replace=True``.
    """
    if isinstance(name, Mitigation):
        return _add(name, replace)

    def wrap(fn: ApplyFn) -> Mitigation:
        doc = (inspect.getdoc(fn) or "").strip().split("\n\n")[0].replace("\n", " ")
        return _add(Mitigation(name, actor, changes or doc or name, limits or "not stated", fn, traps,
                               update_info, builtin, merges_lines, retypes_only), replace)

    if apply is not None:
        return wrap(apply)
    return wrap


def unregister_mitigation(name: str) -> None:
    """Remove a custom mitigation (built-in ones stay)."""
    m = MITIGATIONS.get(name)
    if m is not None and not m.builtin:
        del MITIGATIONS[name]


def get_mitigation(name: str) -> Mitigation:
    try:
        return MITIGATIONS[name]
    except KeyError:
        raise UnknownMitigationError(
            f"expected a mitigation ({', '.join(MITIGATIONS)}), found unknown mitigation {name!r}") from None


def parse_spec(spec: str) -> list[str]:
    """The names of a ``+`` combination, left to right (``"a+b"`` -> ``["a", "b"]``); checks each."""
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownMitigationError(f"expected a mitigation ({', '.join(MITIGATIONS)}), found {spec!r}")
    names = [p.strip() for p in spec.split("+")]
    for p in names:
        if not p:
            raise UnknownMitigationError(f"expected mitigation names joined by '+', found an empty name in {spec!r}")
        get_mitigation(p)
    twice = [n for n, k in Counter(names).items() if k > 1]
    if twice:  # (applied twice, a mitigation inserts its maintenance twice and counts its cost twice)
        raise UsageError(f"expected each mitigation once in a combination, found {twice[0]!r} "
                         f"{Counter(names)[twice[0]]} times in {spec!r}")
    return names


def expand(specs: str | Iterable[str]) -> list[str]:
    """Mitigation specs to run: ``all`` is every catalog entry (``none`` first); commas separate specs.

    Repeats are dropped, order is kept, every name is checked.
    """
    items = [specs] if isinstance(specs, str) else list(specs)
    out: list[str] = []
    for item in items:
        for spec in (s.strip() for s in item.split(",")):
            if spec == "all":
                names = ["none", *[n for n in MITIGATIONS if n != "none"]]
            else:
                names = ["+".join(parse_spec(spec))]
            for n in names:
                if n not in out:
                    out.append(n)
    return out


def catalog(*, builtin_only: bool = False) -> list[Mitigation]:
    """The mitigations in catalog order."""
    return [m for m in MITIGATIONS.values() if m.builtin or not builtin_only]


# --------------------------------------------------------------------------
# Applying a spec


def _conform_like(frame: pl.DataFrame, schema: pl.Schema, name: str) -> pl.DataFrame:
    missing = [c for c in schema.names() if c not in frame.columns]
    if missing:
        raise MitigationError(f"mitigation {name!r}: expected the frame's columns, found {', '.join(missing)} missing")
    have = frame.schema
    if list(have.items()) == list(schema.items()):
        return frame  # the usual case: nothing to select or cast
    try:
        return frame.select([pl.col(c) if have[c] == t else pl.col(c).cast(t) for c, t in schema.items()])
    except pl.exceptions.PolarsError as e:
        raise MitigationError(f"mitigation {name!r}: expected the frame's column types, found: {e}") from None


def apply_mitigation(resolved: pl.DataFrame, spec: str, info: TraceInfo, *, ordered: bool = True,
                     cost: bool = True, owns: Callable[[np.ndarray], np.ndarray] | None = None
                     ) -> tuple[pl.DataFrame, TraceInfo, MitigationCost]:
    """Apply ``spec`` (``none``, ``a``, ``a+b``...) to a resolved frame, left to right.

    Returns the transformed frame sorted by (seq, sub), the trace settings the
    engines must use with it (FWB, host mappings), and the cost.

    ``ordered=False``: the rows may come out of order (the frame the last built-in
    mitigation received, then the events it inserted). For a frame that goes
    straight to the fast engine, which replays it by each event's rank: putting
    every column of a 10 M-event trace in order costs 1-3 s per mitigation. A
    mitigation always receives an ordered frame.

    ``cost=False``: the cost holds the traps only (a partitioned run counts the rest itself,
    part by part: ``partition._PartCost``); ``owns``: see ``MitigationContext``.
    """
    names = parse_spec(spec)
    resolved = collect(resolved)
    if names == ["none"]:  # the baseline: nothing to transform, nothing to count
        frame = resolved if "sub" in resolved.columns else resolved.with_columns(sub=pl.lit(0, dtype=pl.Int32))
        return frame, info, MitigationCost()
    if "sub" not in resolved.columns:
        resolved = resolved.with_columns(sub=pl.lit(0, dtype=pl.Int32))
    schema = resolved.schema
    frame = resolved
    traps: Counter[str] = Counter()
    canonical = "+".join(names)
    for k, name in enumerate(names, 1):
        m = get_mitigation(name)
        new_info = m.update_info(info) if m.update_info else info
        ctx = MitigationContext(info=new_info, k=k, n=len(names), spec=canonical, name=name, info_before=info,
                                owns=owns)
        if m.traps is not None:
            traps.update({str(t): int(c) for t, c in dict(m.traps(frame, ctx)).items()})
        token = _MERGE_INSERTED.set(False) if not ordered and m.builtin and k == len(names) else None
        before = frame.height
        try:
            frame = _conform_like(collect(m.apply(frame, ctx)), schema, name)
        finally:
            if token is not None:
                _MERGE_INSERTED.reset(token)
        if m.retypes_only and frame.height != before:
            raise MitigationError(f"mitigation {name!r} is declared retypes_only, but turned {before} events "
                                  f"into {frame.height}")
        info = new_info
    if ordered and not _ordered(frame):
        frame = frame.sort("seq", "sub", maintain_order=True)
    if not cost:
        return frame, info, MitigationCost(traps=traps_dict(traps))
    return frame, info, mitigation_cost(resolved, frame, info, traps)


def _ordered(frame: pl.DataFrame) -> bool:
    """Whether the frame is already in (seq, sub) order (checking is far cheaper than sorting)."""
    if frame.height < 2:
        return True
    # compared in place (no int64 copies, no differences): 0.4 -> ~0.05 s for 10 M rows
    seq = frame["seq"].to_numpy()
    sub = frame["sub"].to_numpy()
    later = seq[1:] > seq[:-1]
    if later.all():
        return True
    return bool(np.all(later | ((seq[1:] == seq[:-1]) & (sub[1:] > sub[:-1]))))
