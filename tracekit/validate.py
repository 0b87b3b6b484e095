"""Checks every importer applies to the events it reads, vectorised over whole batches.

Two layers, shared by the scenario text (`.tkt`) and the tabular (CSV/JSONL)
importers so that both accept and refuse the same things:

* :func:`typed_fields` turns *text* fields (as written in the input) into the
  trace-v1 types: numbers decimal or ``0x`` hex, sizes with ``K``/``M``/``G``,
  ``attr`` aliases, agent names (``guest`` -> ``guest.0``); each malformed field
  is a :class:`Check` that names the line.
* :class:`Semantics` checks a typed batch against the trace's settings: sizes
  not zero, ranges below 2^64, every address inside one region, devices
  declared, and a guest access with its vCPU's MMU on must say its stage-1
  type (``attr=`` or ``idx=``, scenario format). The MMU state is tracked per
  vCPU from SCTLR_EL1 writes across batches.

A check is a boolean expression (true = the row is bad) and a message
expression; messages are only built for the first bad row, so a clean batch
costs one pass of boolean kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from typing import NamedTuple

import polars as pl

from .errors import TraceFormatError
from .model import (
    ACCESS_OPS,
    ATTR_ALIASES,
    CMO_OPS,
    CMO_WITHOUT_ADDRESS,
    MEMORY_TYPES,
    OPS,
    SCTLR_M,
    TraceInfo,
)

U64_MAX = (1 << 64) - 1

#: Agent names: guest[.N], host[.X], dev.NAME[.X].
AGENT_RE = r"^(?:guest(?:\.[0-9]+)?|host(?:\.[A-Za-z0-9_-]+)?|dev\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)?)$"
AGENT_EXPECTED = "an agent guest[.N], host[.X] or dev.NAME[.X]"
NUMBER_RE = r"^(?:0[xX][0-9a-fA-F]+|[0-9]+)$"
SIZE_RE = r"^(0[xX][0-9a-fA-F]+|[0-9]+)([KMG]?)$"
FLOAT_RE = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
SYSREG_RE = r"^[A-Za-z][A-Za-z0-9_]*$"

ATTR_EXPECTED = "one of dev, " + ", ".join(MEMORY_TYPES)
OP_EXPECTED = "an operation (" + ", ".join(OPS) + ")"
CMO_EXPECTED = "a maintenance operation (" + ", ".join(CMO_OPS) + ")"


@dataclass(frozen=True)
class Check:
    """One rule: ``bad`` is true on rows that break it; ``message`` says expected/found."""

    bad: pl.Expr
    message: pl.Expr


def first_error(df: pl.DataFrame, checks: list[Check], src: str, line_col: str = "src_line") -> None:
    """Raise TraceFormatError for the first row (in frame order) that breaks a check.

    The check listed first wins on that row, so list structural checks before
    the checks of fields they make meaningful.
    """
    if not checks or df.height == 0:
        return
    any_bad = pl.any_horizontal([c.bad.fill_null(False) for c in checks])
    if not df.select(any_bad.any()).item():  # the common case: one scalar, no mask kept
        return
    flags = df.select(any_bad.alias("bad"))["bad"]
    row = df.filter(flags).head(1)
    for c in checks:
        if row.select(c.bad.fill_null(False)).item():
            msg = row.select(c.message).item()
            line = row[line_col].item() if line_col in row.columns else None
            where = f"{src}:{line}" if line is not None else src
            raise TraceFormatError(f"{where}: {msg}")
    raise AssertionError("a check flagged a row but none matches it")  # pragma: no cover


def _q(e: pl.Expr) -> pl.Expr:
    """A found token for a message: quoted, or 'nothing' when missing."""
    return pl.when(e.is_null()).then(pl.lit("nothing")).otherwise(pl.format("'{}'", e))


def uint_value(s: pl.Expr) -> pl.Expr:
    """A decimal or 0x-hex string as uint64; null when malformed or past 2^64."""
    is_hex = s.str.starts_with("0x") | s.str.starts_with("0X")
    return (
        pl.when(is_hex)
        .then(s.str.slice(2).str.to_integer(base=16, dtype=pl.UInt64, strict=False))
        .otherwise(s.str.to_integer(base=10, dtype=pl.UInt64, strict=False))
    )


def parse_uint(s: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(value, well_formed, fits): a decimal or 0x-hex string as uint64."""
    value = uint_value(s)
    return value, s.str.contains(NUMBER_RE), value.is_not_null()


def size_stages(col: str) -> list[list[pl.Expr]]:
    """Helper columns of a size (number + optional K/M/G suffix), in three stages.

    ``_{col}_v`` the bytes (null if malformed or too big), ``_{col}_ok`` well
    formed, ``_{col}_fits`` below 2^64. Each piece is computed once.
    """
    s = pl.col(col)
    last = s.str.slice(-1)
    suffixed = last.is_in(["K", "M", "G"])
    stage1 = [
        pl.when(suffixed).then(s.str.slice(0, s.str.len_bytes() - 1)).otherwise(s).alias(f"_{col}_digits"),
        pl.when(suffixed).then(last.replace_strict({"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}, default=1,
                                                   return_dtype=pl.UInt64))
        .otherwise(pl.lit(1, dtype=pl.UInt64)).alias(f"_{col}_mult"),
    ]
    digits, mult = pl.col(f"_{col}_digits"), pl.col(f"_{col}_mult")
    stage2 = [uint_value(digits).alias(f"_{col}_base"), digits.str.contains(NUMBER_RE).alias(f"_{col}_ok")]
    base = pl.col(f"_{col}_base")
    fits = base.is_not_null() & (base <= pl.lit(U64_MAX, dtype=pl.UInt64) // mult)
    stage3 = [fits.alias(f"_{col}_fits")]
    stage4 = [pl.when(pl.col(f"_{col}_fits")).then(base * mult).alias(f"_{col}_v")]
    return [stage1, stage2, stage3, stage4]


@dataclass
class Fields:
    """Typed trace-v1 columns built from text fields, and the checks on them.

    ``prepare`` are helper columns computed once (with_columns) before the
    checks and ``columns`` read them, so each text field is parsed once.
    """

    prepare: list[list[pl.Expr]]  # stages, each computed with with_columns
    columns: dict[str, pl.Expr]
    checks: list[Check]
    line_size: int = 64

    def fast(self, df: pl.DataFrame, keep: tuple[str, ...] = ()) -> pl.DataFrame | None:
        """The typed columns of a batch in which every row is valid, else None.

        The common case, a clean batch, is decided with a few cheap kernels
        (numbers parsed once, the few distinct agents/operations/names checked
        once each, the rest boolean masks). None means "some row may break a
        check": the caller then runs the exact checks (``helpers``) to name the
        first bad line. Accepting here implies the exact checks accept, and the
        columns are the same as ``select`` gives.
        """
        return _fast_typed(df, self.line_size, keep)

    def helpers(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        """``lf`` with the helper columns and ``_typed_bad`` (the row breaks a check)."""
        for stage in self.prepare:
            lf = lf.with_columns(stage)
        return lf.with_columns(pl.any_horizontal([c.bad.fill_null(False) for c in self.checks]).alias("_typed_bad"))

    def select(self, keep: tuple[str, ...] = ()) -> list[pl.Expr]:
        """The typed trace-v1 columns (over a frame with the helpers), then ``keep``."""
        return [*[e.alias(k) for k, e in self.columns.items()], *[pl.col(c) for c in keep]]

    def apply(self, df: pl.DataFrame, src: str, line_col: str = "src_line") -> pl.DataFrame:
        """Check ``df`` (text columns) and return the typed columns (plus detail, phase, line)."""
        helped = df
        for stage in self.prepare:
            helped = helped.with_columns(stage)
        first_error(helped, self.checks, src, line_col)
        keep = [c for c in ("detail", "phase", line_col) if c in df.columns]
        return helped.select(*[e.alias(k) for k, e in self.columns.items()], *keep)


def typed_fields(*, line_size: int) -> Fields:
    """Typed expressions over text columns named like trace-v1 (agent, op, addr, ...).

    Text columns that are missing must exist as null strings.
    """
    agent_t, op_t = pl.col("agent"), pl.col("op")
    cmo_t, sysreg_t = pl.col("cmo"), pl.col("sysreg")
    stages = size_stages("size")
    prepare: list[pl.Expr] = []
    later: list[pl.Expr] = []
    parsed = {"size": (pl.col("_size_v"), pl.col("_size_ok"), pl.col("_size_fits"))}
    for col in ("addr", "value", "attr_index"):
        prepare += [uint_value(pl.col(col)).alias(f"_{col}_v"), pl.col(col).str.contains(NUMBER_RE).alias(f"_{col}_ok")]
        later.append(pl.col(f"_{col}_v").is_not_null().alias(f"_{col}_fits"))
        parsed[col] = (pl.col(f"_{col}_v"), pl.col(f"_{col}_ok"), pl.col(f"_{col}_fits"))
    prepare += [
        pl.col("attr").replace_strict(ATTR_ALIASES, default=None, return_dtype=pl.String).alias("_attr_v"),
        (pl.col("time").str.contains(FLOAT_RE) & pl.col("time").cast(pl.Float64, strict=False).is_not_null())
        .alias("_time_ok"),
        agent_t.str.contains(AGENT_RE).alias("_agent_ok"),
        op_t.is_in(list(ACCESS_OPS)).alias("_is_access"),
        (op_t == "cmo").alias("_is_cmo"),
        cmo_t.is_in(list(CMO_WITHOUT_ADDRESS)).alias("_cmo_no_addr"),
    ]
    addr, _, _ = parsed["addr"]
    size, _, _ = parsed["size"]
    value, _, _ = parsed["value"]
    idx, idx_ok, idx_fits = parsed["attr_index"]
    attr = pl.col("_attr_v")
    is_access, is_cmo, cmo_no_addr = pl.col("_is_access"), pl.col("_is_cmo"), pl.col("_cmo_no_addr")
    agent = (
        pl.when(agent_t == "guest").then(pl.lit("guest.0"))
        .when(agent_t == "host").then(pl.lit("host.0"))
        .otherwise(agent_t)
    )
    side = agent_t.str.extract(r"^([a-z]+)", 1)
    # A cmo by address without a size maintains one line (scenario format): the line
    # holding the address, as DC/IC operations by VA do (bytes from addr to the line's end).
    size_final = pl.when(is_cmo & pl.col("size").is_null() & pl.col("addr").is_not_null()).then(
        pl.lit(line_size, dtype=pl.UInt64) - addr % line_size
    ).otherwise(size)

    def num_checks(what: str, col: str, *, sized: bool = False) -> list[Check]:
        _, ok, fits = parsed[col]
        form = "decimal or 0x hex" + (", optional K/M/G" if sized else "")
        return [
            Check(pl.col(col).is_not_null() & ~ok,
                  pl.format(f"expected {what} ({form}), found {{}}", _q(pl.col(col)))),
            Check(pl.col(col).is_not_null() & ok & ~fits,
                  pl.format(f"expected {what} below 2^64, found {{}}", _q(pl.col(col)))),
        ]

    addr_or_size = pl.col("addr").is_not_null() | pl.col("size").is_not_null()
    checks = [
        Check(agent_t.is_null() | ~pl.col("_agent_ok"),
              pl.format(f"expected {AGENT_EXPECTED}, found {{}}", _q(agent_t))),
        Check(op_t.is_null() | ~op_t.is_in(list(OPS)), pl.format(f"expected {OP_EXPECTED}, found {{}}", _q(op_t))),
        Check(is_cmo & (cmo_t.is_null() | ~cmo_t.is_in(list(CMO_OPS))),
              pl.format(f"expected {CMO_EXPECTED}, found {{}}", _q(cmo_t))),
        Check(~is_cmo & cmo_t.is_not_null(),
              pl.format("expected no maintenance operation on a {} event, found {}", op_t, _q(cmo_t))),
        Check(is_cmo & cmo_no_addr & addr_or_size,
              pl.format("expected no address for {} (it acts on every line), found {}", cmo_t,
                        _q(pl.coalesce(pl.col("addr"), pl.col("size"))))),
        Check(is_cmo & ~cmo_no_addr & pl.col("addr").is_null(),
              pl.format("expected an address after {}, found nothing", cmo_t)),
        Check(is_access & pl.col("addr").is_null(), pl.format("expected an address for {}, found nothing", op_t)),
        Check(is_access & pl.col("addr").is_not_null() & pl.col("size").is_null(),
              pl.format("expected a size for {}, found nothing", op_t)),
        Check(~is_access & ~is_cmo & addr_or_size,
              pl.format("expected no address on a {} event, found {}", op_t,
                        _q(pl.coalesce(pl.col("addr"), pl.col("size"))))),
        Check((op_t == "sysreg") & sysreg_t.is_null(), pl.lit("expected a register name for sysreg, found nothing")),
        Check((op_t == "sysreg") & sysreg_t.is_not_null() & ~sysreg_t.str.contains(SYSREG_RE),
              pl.format("expected a register name (e.g. SCTLR_EL1), found {}", _q(sysreg_t))),
        Check((op_t != "sysreg") & sysreg_t.is_not_null(),
              pl.format("expected no register name on a {} event, found {}", op_t, _q(sysreg_t))),
        Check((op_t == "sysreg") & pl.col("value").is_null(),
              pl.format("expected a value for sysreg {}, found nothing", sysreg_t)),
        *num_checks("an address", "addr"),
        *num_checks("a size", "size", sized=True),
        *num_checks("a value", "value"),
        Check(pl.col("attr").is_not_null() & attr.is_null(),
              pl.format(f"expected attr {ATTR_EXPECTED}, found {{}}", _q(pl.col("attr")))),
        Check(pl.col("attr_index").is_not_null() & ~(idx_ok & idx_fits & (idx <= 7)),
              pl.format("expected idx 0..7 (a MAIR_EL1 AttrIndx), found {}", _q(pl.col("attr_index")))),
        Check(pl.col("time").is_not_null() & ~pl.col("_time_ok"),
              pl.format("expected a timestamp in seconds (a decimal number), found {}", _q(pl.col("time")))),
        Check(~is_access & ~is_cmo & (pl.col("attr").is_not_null() | pl.col("attr_index").is_not_null()),
              pl.format("expected attr/idx only on accesses, found them on a {} event", op_t)),
    ]
    columns = {
        "time": pl.col("time").cast(pl.Float64, strict=False),
        "agent": agent,
        "side": side,
        "op": op_t,
        "addr": addr,
        "size": size_final,
        "cmo": cmo_t,
        "sysreg": sysreg_t.str.to_uppercase(),
        "value": value,
        "attr": attr,
        "attr_index": idx.cast(pl.UInt8, strict=False),
    }
    return Fields([stages[0] + prepare, stages[1] + later, stages[2], stages[3]], columns, checks, line_size)


def uint_fast(s: pl.Series) -> pl.Series | None:
    """Decimal or 0x-hex text -> u64, or None if any value is malformed or too big.

    ``str.to_integer`` accepts exactly NUMBER_RE's digits plus a leading '+',
    which is refused here; a null result on non-null text means malformed or
    past 2^64. A column of one kind (all decimal, all 0x) is parsed once.
    """
    nulls = s.null_count()
    if nulls == s.len():
        return s.cast(pl.UInt64)
    first = s.drop_nulls()[0] if nulls else s[0]
    if not first.startswith("0x"):
        v = s.str.to_integer(base=10, dtype=pl.UInt64, strict=False)
        if v.null_count() == nulls:
            return None if s.str.starts_with("+").any() else v
    elif s.str.starts_with("0x").sum() == s.len() - nulls:
        digits = s.str.slice(2)
        v = digits.str.to_integer(base=16, dtype=pl.UInt64, strict=False)
        if v.null_count() == nulls:
            return None if digits.str.starts_with("+").any() else v
    # mixed spellings (or a bad value): the general form decides
    if s.str.contains("+", literal=True).any():
        return None
    v = pl.DataFrame({"s": s}).select(uint_value(pl.col("s"))).to_series().rename(s.name)
    return v if v.null_count() == nulls else None


def size_fast(s: pl.Series) -> pl.Series | None:
    """A size (number, optional K/M/G) -> bytes, or None if any is malformed or too big."""
    v = uint_fast(s)
    if v is not None:
        return v
    frame = pl.DataFrame({"size": s})
    for stage in size_stages("size"):
        frame = frame.with_columns(stage)
    ok = frame.select((pl.col("size").is_null() | (pl.col("_size_ok") & pl.col("_size_fits"))).all()).item()
    return frame["_size_v"].rename(s.name) if ok else None


class BatchNames(NamedTuple):
    """The distinct names of a batch's columns (Series, attrs a list)."""

    agents: pl.Series
    ops: pl.Series
    cmos: pl.Series
    sysregs: pl.Series
    attrs: list


def batch_names(df: pl.DataFrame, distinct: dict[str, pl.Series] | None = None) -> BatchNames | None:
    """The distinct agent, op, cmo, sysreg and attr names of a batch when all are valid, else None.

    The fast paths check the few distinct names once each; on None the exact
    checks run and name the first bad line. ``distinct``: columns whose distinct
    values (nulls included) the reader already knows.
    """
    def unique(c: str) -> pl.Series:
        return distinct[c] if distinct and c in distinct else df[c].unique()

    agents = unique("agent")
    if agents.null_count() or not agents.str.contains(AGENT_RE).all():
        return None
    ops = unique("op")
    if ops.null_count() or not ops.is_in(list(OPS)).all():
        return None
    cmos = unique("cmo").drop_nulls()
    if not cmos.is_in(list(CMO_OPS)).all():
        return None
    sysregs = unique("sysreg").drop_nulls()
    if not sysregs.str.contains(SYSREG_RE).all():
        return None
    attrs = unique("attr").drop_nulls().to_list()
    if any(a not in ATTR_ALIASES for a in attrs):
        return None
    return BatchNames(agents, ops, cmos, sysregs, attrs)


def _fast_typed(df: pl.DataFrame, line_size: int, keep: tuple[str, ...]) -> pl.DataFrame | None:
    """See :meth:`Fields.fast`."""
    n = df.height
    agent_t, op_t, cmo_t, sysreg_t, attr_t = (df[c] for c in ("agent", "op", "cmo", "sysreg", "attr"))
    names = batch_names(df)
    if names is None:
        return None
    agents, ops, cmos, sysregs, attrs = names
    # numbers, parsed once
    addr = uint_fast(df["addr"])
    value = uint_fast(df["value"])
    size = size_fast(df["size"])
    idx = uint_fast(df["attr_index"])
    if addr is None or value is None or size is None or idx is None or (idx > 7).any():
        return None
    time = df["time"].cast(pl.Float64, strict=False)
    if time.null_count() != df["time"].null_count() or not time.is_finite().all():
        return None  # inf/nan are refused by FLOAT_RE (1e400 is not: the exact path decides)

    op = pl.col("op")
    addr_nn, size_nn, value_nn = pl.col("addr").is_not_null(), pl.col("size").is_not_null(), pl.col("value").is_not_null()
    cmo_nn, sysreg_nn = pl.col("cmo").is_not_null(), pl.col("sysreg").is_not_null()
    typed_nn = pl.col("attr").is_not_null() | pl.col("attr_index").is_not_null()
    is_access = (op == "read") | (op == "write") | (op == "ifetch")
    is_cmo, is_sysreg = op == "cmo", op == "sysreg"
    no_addr = [c for c in cmos.to_list() if c in CMO_WITHOUT_ADDRESS]
    cmo_no_addr = pl.col("cmo").is_in(no_addr) if no_addr else pl.lit(False)
    addr_or_size = addr_nn | size_nn
    bad = [  # the structural checks of typed_fields (fields are well formed here)
        is_cmo & ~cmo_nn,
        ~is_cmo & cmo_nn,
        is_cmo & cmo_no_addr & addr_or_size,
        is_cmo & ~cmo_no_addr & ~addr_nn,
        is_access & ~addr_nn,
        is_access & addr_nn & ~size_nn,
        ~is_access & ~is_cmo & addr_or_size,
        is_sysreg & ~sysreg_nn,
        ~is_sysreg & sysreg_nn,
        is_sysreg & ~value_nn,
        ~is_access & ~is_cmo & typed_nn,
    ]
    if df.select(pl.any_horizontal(bad).any()).item():
        return None

    if "guest" in agents.to_list() or "host" in agents.to_list():
        agent = agent_t.replace({"guest": "guest.0", "host": "host.0"})
    else:
        agent = agent_t
    sides = {a.split(".", 1)[0] for a in agents.to_list()}  # guest, host or dev (the agents are valid)
    if len(sides) == 1:
        side = pl.repeat(sides.pop(), n, dtype=pl.String, eager=True)
    else:  # the first letter tells the three apart
        a = pl.col("agent")
        side = df.select(pl.when(a.str.starts_with("g")).then(pl.lit("guest"))
                         .when(a.str.starts_with("h")).then(pl.lit("host")).otherwise(pl.lit("dev"))).to_series()
    if attrs and any(ATTR_ALIASES[a] != a for a in attrs):
        attr = attr_t.replace_strict(ATTR_ALIASES, default=None, return_dtype=pl.String)
    else:
        attr = attr_t
    out = pl.DataFrame({
        "time": time, "agent": agent, "side": side, "op": op_t, "addr": addr, "size": size, "cmo": cmo_t,
        "sysreg": sysreg_t.str.to_uppercase() if sysregs.len() else sysreg_t, "value": value, "attr": attr,
        "attr_index": idx.cast(pl.UInt8), **{c: df[c] for c in keep}})
    one_line = df.select(is_cmo & pl.col("size").is_null() & addr_nn).to_series()
    if one_line.any():  # a cmo by address without a size maintains the line holding the address
        out = out.with_columns(size=pl.when(one_line).then(pl.lit(line_size, dtype=pl.UInt64)
                                                           - pl.col("addr") % line_size)
                               .otherwise(pl.col("size")))
    return out


TEXT_FIELDS = ("time", "agent", "op", "addr", "size", "cmo", "sysreg", "value", "attr", "attr_index",
               "phase", "detail")


@dataclass
class Semantics:
    """The checks that need the trace's settings, carried across the batches of one input.

    ``mmu_typing``: a guest access with its vCPU's MMU on must carry ``attr`` or
    ``attr_index`` (the scenario rule; applied to every input format, since an
    untyped access would otherwise be resolved as an assumption).
    """

    info: TraceInfo
    src: str
    mmu_typing: bool = True
    line_col: str = "src_line"
    _sctlr: dict[str, int] = field(default_factory=dict)  # vCPU -> SCTLR_EL1 at the end of the last batch

    def __post_init__(self) -> None:
        regions = sorted(self.info.regions, key=lambda r: r.base)
        self._bases = np.array([r.base for r in regions], dtype=np.uint64)
        self._lasts = np.array([r.base + r.size - 1 for r in regions], dtype=np.uint64)
        self._names = [r.name for r in regions]
        self._devices = [d.name for d in self.info.devices]

    def check(self, df: pl.DataFrame) -> None:
        """Raise TraceFormatError naming the first line of ``df`` that breaks a rule."""
        if df.height == 0:
            return
        addr, size = pl.col("addr"), pl.col("size")
        has_range = addr.is_not_null() & size.is_not_null()
        u64max = pl.lit(U64_MAX, dtype=pl.UInt64)
        hexaddr = addr.map_elements(lambda a: format(a, "x"), return_dtype=pl.String)
        agents = df["agent"].unique().to_list()
        undeclared = [a for a in agents if a.startswith("dev.") and a.split(".")[1] not in self._devices]
        checks = [
            Check(has_range & (size == 0), pl.format("expected a size of at least 1, found {}", size)),
            Check(has_range & (size > 0) & ((u64max - addr) < (size - 1)),
                  pl.format("expected a range below 2^64, found 0x{} + {} bytes", hexaddr, size)),
        ]
        if undeclared:
            checks.append(Check(pl.col("agent").is_in(undeclared),
                                pl.format("expected a device declared with @device, found undeclared {}",
                                          _q(pl.col("agent")))))
        extra = {}
        if len(self._bases):
            extra["_in_region"] = self._region_fit(df)
            checks.append(Check(has_range & (size > 0) & ~pl.col("_in_region"),
                                pl.format("expected an access inside one region ({}), found 0x{} + {} bytes",
                                          pl.lit(", ".join(self._names)), hexaddr, size)))
        if self.mmu_typing and any(a.startswith("guest") for a in agents) and self._mmu_matters(df):
            extra["_mmu_on"] = self._mmu_on(df)
            checks.append(Check(
                (pl.col("side") == "guest") & pl.col("op").is_in(list(ACCESS_OPS)) & pl.col("_mmu_on")
                & pl.col("attr").is_null() & pl.col("attr_index").is_null(),
                pl.format("expected attr= or idx= on {} by {} with its MMU on (SCTLR_EL1.M = 1), found neither",
                          pl.col("op"), pl.col("agent"))))
        checked = df.with_columns(**{k: pl.Series(k, v) for k, v in extra.items()}) if extra else df
        first_error(checked, checks, self.src, self.line_col)

    def _mmu_matters(self, df: pl.DataFrame) -> bool:
        """False when no row of ``df`` can break the MMU typing rule and the MMU state stays as it is.

        The state changes only with a guest SCTLR_EL1 write; the rule only
        concerns guest accesses with neither attr nor attr_index. Without
        either kind of row the per-row MMU state need not be computed.
        """
        return df.select(
            ((pl.col("side") == "guest") & (
                ((pl.col("op") == "sysreg") & (pl.col("sysreg") == "SCTLR_EL1"))
                | (pl.col("op").is_in(list(ACCESS_OPS)) & pl.col("attr").is_null()
                   & pl.col("attr_index").is_null()))).any()).item()

    def _region_fit(self, df: pl.DataFrame) -> np.ndarray:
        """Per row: the range [addr, addr+size) lies inside one declared region."""
        addr = df["addr"].fill_null(0).to_numpy()
        size = df["size"].fill_null(1).to_numpy()
        size = np.where(size == 0, 1, size).astype(np.uint64)
        last = addr + (size - np.uint64(1))  # wraps past 2^64; such rows fail the 2^64 check first
        i = np.searchsorted(self._bases, addr, side="right").astype(np.int64) - 1
        ok = i >= 0
        j = np.where(ok, i, 0)
        ok &= (last >= addr) & (last <= self._lasts[j])
        return ok

    def _mmu_on(self, df: pl.DataFrame) -> pl.Series:
        """Per row: the agent's SCTLR_EL1.M in force (after earlier SCTLR_EL1 writes, in row order)."""
        is_sctlr = (pl.col("op") == "sysreg") & (pl.col("sysreg") == "SCTLR_EL1") & (pl.col("side") == "guest")
        carried = {a: v for a, v in self._sctlr.items()}
        if not df.select(is_sctlr.any()).item():
            # no SCTLR_EL1 write in this batch (the common case): each vCPU keeps its state
            on = {a: bool(v & SCTLR_M) for a, v in carried.items()}
            return df["agent"].replace_strict(on, default=False, return_dtype=pl.Boolean).rename("_mmu_on")
        frame = df.select(
            pl.col("agent"),
            pl.when(is_sctlr).then(pl.col("value")).otherwise(None).alias("_w"),
            is_sctlr.alias("_is"),
        ).with_columns(
            # the value in force *before* this row: the previous write's value
            pl.col("_w").shift(1).forward_fill().over("agent").alias("_before"),
        )
        # the first write of an agent in this batch: shift(1) over agent gives null -> carried-in value
        start = frame["agent"].replace_strict(carried, default=0, return_dtype=pl.UInt64) if carried else \
            pl.Series([0] * frame.height, dtype=pl.UInt64)
        before = frame["_before"].fill_null(start)
        # update the carried state from each agent's last SCTLR_EL1 write in this batch
        last = frame.filter(pl.col("_is")).group_by("agent", maintain_order=True).agg(pl.col("_w").last())
        for a, v in zip(last["agent"].to_list(), last["_w"].to_list()):
            self._sctlr[a] = v
        return pl.Series("_mmu_on", (before.to_numpy() & np.uint64(SCTLR_M)) != 0)
