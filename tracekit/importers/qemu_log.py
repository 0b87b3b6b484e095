"""QEMU ``-D`` logs: trace events (log backend), TCG plugin output and ``-d`` debug output.

Every line is classified by its shape (:mod:`.qemu_interleaved`); file order
is event order. Trace-event lines (three prefix forms: none,
``TID@SEC.USEC:`` and ``ISO8601Z ``) are decoded with the per-event regexes
built from ``trace-events-all`` (:mod:`.trace_events`) and mapped:

====================================== =======================================================
event                                  becomes
====================================== =======================================================
memory_region_ops_read / _write        guest MMIO read/write by ``guest.<cpu>`` (cpu >= 0), else
                                       by ``host.<tid>``; addr, size, value; detail keeps the
                                       region name. The region's page span becomes an MMIO region
kvm_set_user_memory (all variants)     a marker; the memory slot becomes a RAM region in
                                       ``ImportResult.info`` (size 0 = slot deleted)
address_space_map (9.1+)               host read (write:0) or write (write:1) of addr..addr+len
pci_nvme_map_addr                      host access of addr..addr+len; direction from the preceding
                                       pci_nvme_read (device -> guest memory: write) or
                                       pci_nvme_write (guest memory -> device: read); marker when
                                       no command was seen
smmuv3_translate_success               host access of 1 byte at ``translated`` (the access size is
                                       not traced); perm 0x2 write, otherwise read
pci_nvme_map_prp                       marker: QEMU calls nvme_map_addr for every PRP segment, so
                                       the accesses already come from pci_nvme_map_addr
anything else                          marker, detail = ``NAME ARGS`` as logged
====================================== =======================================================

A mapping file (``--mapping FILE``, TOML) maps any other event, see
:func:`load_mapping`. Timestamps become the ``time`` column (seconds).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from ..errors import TraceFormatError, UsageError
from ..model import ATTR_ALIASES, CMO_OPS, OPS, Region, TraceInfo
from . import qemu_interleaved as qi
from .base import ImportOptions, ImportResult
from ._lines import EVENT_COLUMNS, fail_first, finish, iter_line_batches, side_expr
from .tcg_plugin import (PluginState, current_vcpu_column, decode_execlog, decode_memcsv, execlog_mem_items,
                         split_execlog_rows, suffix_register_rows)
from .tkt import read_text
from .trace_events import EventTable, fast_regex, load_table_lazily, unfit_fields


# --------------------------------------------------------------------------
# user mapping

_MAPPING_KEYS = {"op", "addr", "size", "value", "agent", "cmo", "sysreg", "attr"}


@dataclass(frozen=True)
class EventMapping:
    """How one event becomes a trace-v1 row (``--mapping`` file entry)."""

    op: str
    where: str  # the file and table it came from ("FILE: [events.NAME]"), for messages
    addr: str | int | None = None
    size: str | int | None = None
    value: str | int | None = None
    agent: str = "host.{tid}"
    cmo: str | None = None
    sysreg: str | None = None
    attr: str | None = None


def load_mapping(path: Path | None) -> dict[str, EventMapping]:
    """Read a mapping file::

        [events.virtio_balloon_handle_output]   # one table per QEMU event name
        op = "write"            # read | write | ifetch | cmo | sysreg | marker
        addr = "gpa"            # an argument name, or a number
        size = 4096             # an argument name, or a number
        value = "val"           # optional
        agent = "host.{tid}"    # template: {tid} and {ARGUMENT} are substituted
        cmo = "dc.civac"        # op = "cmo"
        sysreg = "MAIR_EL1"     # op = "sysreg" (value = argument)
        attr = "wb"             # optional explicit memory type
    """
    if path is None:
        return {}
    try:
        doc = tomllib.loads(read_text(Path(path)))
    except OSError as e:
        raise UsageError(f"{path}: expected a readable mapping file, found: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise TraceFormatError(f"{path}: expected TOML, found: {e}") from None
    events = doc.get("events", {})
    if not isinstance(events, dict) or set(doc) - {"events"}:
        raise TraceFormatError(f"{path}: expected only [events.NAME] tables, found {sorted(set(doc) - {'events'})}")
    out = {}
    for name, spec in events.items():
        where = f"{path}: [events.{name}]"
        if not isinstance(spec, dict):
            raise TraceFormatError(f"{where}: expected a table, found {spec!r}")
        extra = set(spec) - _MAPPING_KEYS
        if extra:
            raise TraceFormatError(f"{where}: expected keys {sorted(_MAPPING_KEYS)}, found {sorted(extra)}")
        op = spec.get("op")
        if op not in OPS:
            raise TraceFormatError(f"{where}: expected op one of {', '.join(OPS)}, found {op!r}")
        if op in ("read", "write", "ifetch") and (spec.get("addr") is None or spec.get("size") is None):
            raise TraceFormatError(f"{where}: expected addr and size for op {op}, found {sorted(spec)}")
        if op == "cmo" and spec.get("cmo") not in CMO_OPS:
            raise TraceFormatError(f"{where}: expected cmo one of {', '.join(CMO_OPS)}, found {spec.get('cmo')!r}")
        if op == "sysreg" and not spec.get("sysreg"):
            raise TraceFormatError(f"{where}: expected sysreg = NAME for op sysreg, found none")
        for key in ("addr", "size", "value"):
            v = spec.get(key)
            if not (v is None or (isinstance(v, str) and v) or (type(v) is int and 0 <= v < 1 << 64)):
                raise TraceFormatError(f"{where}: expected {key} an argument name or a number from 0 to 2**64 - 1, "
                                       f"found {v!r}")
        for key in ("agent", "cmo", "sysreg"):
            if spec.get(key) is not None and not isinstance(spec[key], str):
                raise TraceFormatError(f"{where}: expected {key} text, found {spec[key]!r}")
        attr = spec.get("attr")
        if attr is not None and (not isinstance(attr, str) or attr not in ATTR_ALIASES):
            raise TraceFormatError(f"{where}: expected attr one of {', '.join(ATTR_ALIASES)}, found {attr!r}")
        out[name] = EventMapping(op=op, addr=spec.get("addr"), size=spec.get("size"), value=spec.get("value"),
                                 agent=spec.get("agent", "host.{tid}"), cmo=spec.get("cmo"),
                                 sysreg=(spec.get("sysreg") or "").upper() or None,
                                 attr=ATTR_ALIASES.get(attr) if attr else None, where=where)
    return out


def _template(tmpl: str, columns: set[str], where: str) -> pl.Expr:
    parts: list[pl.Expr] = []
    pos = 0
    for m in re.finditer(r"\{(\w+)\}", tmpl):
        if m.start() > pos:
            parts.append(pl.lit(tmpl[pos:m.start()]))
        name = m.group(1)
        if name == "tid":
            parts.append(pl.col("tid").fill_null(0).cast(pl.String))
        elif name in columns:
            parts.append(pl.col(name).cast(pl.String))
        else:
            raise UsageError(f"{where}: agent template names {{{name}}}, which the event has no argument for")
        pos = m.end()
    if pos < len(tmpl):
        parts.append(pl.lit(tmpl[pos:]))
    return pl.concat_str(parts) if parts else pl.lit(tmpl)


def _arg(spec: str | int | None, columns: set[str], where: str) -> pl.Expr:
    if spec is None:
        return pl.lit(None, pl.UInt64)
    if isinstance(spec, int):
        return pl.lit(spec, pl.UInt64)
    if spec not in columns:
        raise UsageError(f"{where}: names argument {spec!r}; the event has {sorted(columns)}")
    return pl.col(spec).cast(pl.UInt64, strict=False)


# --------------------------------------------------------------------------
# event decoding (shared with ftrace's tracing_mark_write lines)


@dataclass
class EventState:
    """Per-input state of the trace-event decoder, carried across batches."""

    nvme_dir: str | None = None
    slots: dict[tuple[int, int], tuple[int, int, int]] = field(default_factory=dict)  # (as,slot)->(gpa,size,flags)
    ram_ranges: list[tuple[int, int, str]] = field(default_factory=list)  # every (gpa, size, name) seen
    mmio: dict[str, list[int]] = field(default_factory=dict)  # region name -> [lo, hi)
    fw_cfg_hi: int = 0  # high half of the fw_cfg DMA address register
    counts: dict[str, int] = field(default_factory=dict)

    def bump(self, key: str, n: int) -> None:
        if n:
            self.counts[key] = self.counts.get(key, 0) + int(n)


def _host_agent(tids: list[int] | None = None) -> pl.Expr:
    """QEMU threads are ``host.<tid>`` (``host.0`` when the log has no thread ids).

    ``tids``: every thread id of the rows, when known: each row then looks its text up
    (a log has a few threads) instead of formatting it.
    """
    tid = pl.col("tid").fill_null(0)
    if tids is None:
        return pl.format("host.{}", tid)
    return tid.replace_strict({t: f"host.{t}" for t in {0, *tids}}, return_dtype=pl.String)


def decode_event_rows(rows: pl.DataFrame, table: EventTable, mapping: dict[str, EventMapping],
                      state: EventState, src: str) -> pl.DataFrame:
    """Trace-event lines -> event rows (``_line``, ``_sub`` and trace-v1 columns).

    ``rows`` has ``_line``, ``src_line``, ``time``, ``tid``, ``ev_name``, ``ev_body``, ``rest``
    and optionally ``host_agent`` (ftrace: the thread that wrote the marker).
    """
    if rows.height == 0:
        return pl.DataFrame()
    host = pl.col("host_agent") if "host_agent" in rows.columns else _host_agent(
        rows["tid"].drop_nulls().unique().to_list())
    if not rows["_line"].is_sorted():
        rows = rows.sort("_line")
    # NVMe transfer direction, in file order
    if state.nvme_dir is not None or rows["ev_name"].is_in(["pci_nvme_read", "pci_nvme_write"]).any():
        nv = (pl.when(pl.col("ev_name") == "pci_nvme_read").then(pl.lit("write"))
              .when(pl.col("ev_name") == "pci_nvme_write").then(pl.lit("read")))
        rows = rows.with_columns(nv.forward_fill().alias("nvme_dir"))
        if state.nvme_dir is not None:
            rows = rows.with_columns(pl.col("nvme_dir").fill_null(state.nvme_dir))
        last = rows["nvme_dir"].drop_nulls()
        if last.len():
            state.nvme_dir = last[-1]
    else:
        rows = rows.with_columns(pl.lit(None, pl.String).alias("nvme_dir"))

    base_cols = ["_line", "src_line", "time", "tid", "rest", "nvme_dir"] + (
        ["host_agent"] if "host_agent" in rows.columns else [])
    out = []
    # one pass splits the rows by event name (file order kept within each name)
    groups = rows.select(*base_cols, "ev_body", "ev_name").partition_by("ev_name", as_dict=True,
                                                                          maintain_order=True)
    for (name,), sub in sorted(groups.items()):
        sub = sub.drop("ev_name")
        state.bump(f"event:{name}", sub.height)
        # arguments the mapping reads: a user mapping may name any; an unmapped event
        # (a marker) needs none, so its lines are only matched (no captures)
        used = None if name in mapping else _USED_ARGS.get(name, frozenset())
        needed = frozenset() if used is None else used - _OPTIONAL_ARGS.get(name, frozenset())
        for d in table.definitions(name):
            keep = [f for f, _ in d.fields if used is None or f in used]
            if needed - set(keep):
                # a trace-events file whose signature of an event tracekit reads lacks an argument
                # it reads (a damaged or foreign file)
                raise TraceFormatError(
                    f"{d.source or 'trace-events'}: expected {name} with the arguments {', '.join(sorted(needed))}, "
                    f"found {', '.join(f for f, _ in d.fields) or 'none'}")
            if keep:  # one regex pass: every group is mandatory, so a match fills any kept one
                # the one-pass form first (same captures where it matches), then the exact regex
                for rx in filter(None, (fast_regex(d), d.regex)):
                    x = sub.with_columns(pl.col("ev_body").str.extract_groups(rx).alias("_g"))
                    hit = x.select(pl.col("_g").struct.field(keep[0]).is_not_null())
                    if hit.to_series().all():
                        ok, sub = x, x.clear().drop("_g")
                    else:
                        ok = x.filter(hit.to_series())
                        sub = x.filter(~hit.to_series()).drop("_g")
                    fail_first(ok.filter(unfit_fields(pl.col("_g"), d, keep)).with_columns(pl.col("rest").alias("line")),
                               src, f"{name} arguments whose numbers fit in 64 bits")
                    ok = ok.with_columns(_typed(d, "_g", keep)).drop("_g")
                    if ok.height:
                        out.append(_map_event(name, ok, {f for f, _ in d.fields}, mapping, state, host, src))
                    if sub.height == 0:
                        break
            else:
                matched = pl.col("ev_body").str.contains(d.regex)
                m = sub.select(matched).to_series()
                if m.all():
                    ok, sub = sub, sub.clear()
                else:
                    ok, sub = sub.filter(m), sub.filter(~m)
                if ok.height:
                    out.append(_map_event(name, ok, {f for f, _ in d.fields}, mapping, state, host, src))
            if sub.height == 0:
                break
        if sub.height:
            fmt = table.events[name].fmt
            fail_first(sub.with_columns(pl.col("rest").alias("line")), src,
                       f"{name} arguments formatted as {fmt!r} (trace-events)")
    if not out:
        return pl.DataFrame()
    return pl.concat(out, how="diagonal_relaxed")


def _typed(d, col: str, only: list[str] | None = None) -> list[pl.Expr]:
    """Typed argument columns from the struct of ``extract_groups`` (see trace_events.decode_args)."""
    from .trace_events import typed_fields
    return typed_fields(pl.col(col), d, only)


#: The arguments :func:`_map_event` reads, per event it maps (without a user mapping);
#: other arguments of these events, and every argument of other events, are not converted.
_USED_ARGS: dict[str, frozenset[str]] = {
    "memory_region_ops_read": frozenset({"cpu_index", "addr", "value", "size", "name"}),
    "memory_region_ops_write": frozenset({"cpu_index", "addr", "value", "size", "name"}),
    "kvm_set_user_memory": frozenset({"as", "slot", "guest_phys_addr", "memory_size", "flags", "ret"}),
    "address_space_map": frozenset({"addr", "len", "is_write"}),
    "pci_nvme_map_addr": frozenset({"addr", "len"}),
    "smmuv3_translate_success": frozenset({"translated", "perm"}),
}
#: Of those, the ones only some QEMU versions trace (kvm_set_user_memory's address space: 9.x).
_OPTIONAL_ARGS: dict[str, frozenset[str]] = {"kvm_set_user_memory": frozenset({"as"})}


def _fw_cfg_dma(df: pl.DataFrame, state: EventState) -> pl.DataFrame:
    """QEMU's fw_cfg DMA engine, which 7.2 does not trace: synthesise its guest-RAM accesses.

    A write of the DMA address register (region ``fwcfg.dma``: 8 bytes at offset 0, or
    the low 4 bytes at offset 4 after the high 4 at offset 0; the value is the
    descriptor address D, as the device reads it) makes QEMU run the transfer at once
    (``hw/nvram/fw_cfg.c`` ``fw_cfg_dma_transfer``): it reads the 16-byte descriptor
    ``{be32 control, be32 length, be64 address}`` at D, copies the data (its address is
    in guest memory, not in the log: not synthesised) and writes the control word back
    (4 bytes at D, 0 = done). Both accesses are by ``host.fwcfg``, right after the kick.
    """
    k = df.filter(pl.col("name") == "fwcfg.dma")
    if k.height == 0:
        return pl.DataFrame()
    off = pl.col("addr") & 0xF
    hi = pl.when((pl.col("size") == 4) & (off == 0)).then(pl.col("value"))
    k = k.sort("_line").with_columns(hi.forward_fill().fill_null(state.fw_cfg_hi).alias("_hi"))
    last_hi = k.filter((pl.col("size") == 4) & (off == 0))
    if last_hi.height:
        state.fw_cfg_hi = int(last_hi["value"][-1])
    d = (pl.when(pl.col("size") == 8).then(pl.col("value"))
         .when((pl.col("size") == 4) & (off == 4)).then(pl.col("_hi") * pl.lit(1 << 32, pl.UInt64) + pl.col("value")))
    k = k.with_columns(d.alias("_d")).filter(pl.col("_d").is_not_null() & (pl.col("_d") != 0))
    state.bump("fw_cfg_dma_transfers_synthesised", k.height)
    why = pl.format("fw_cfg DMA (synthesised from the kick at line {}): ", "src_line")
    return pl.concat([
        k.select(pl.col("_line"), pl.lit(1, pl.Int64).alias("_sub"), "src_line", "time",
                 pl.lit("host.fwcfg").alias("agent"), pl.lit("host").alias("side"), pl.lit("read").alias("op"),
                 pl.col("_d").alias("addr"),
                 pl.lit(16, pl.UInt64).alias("size"),
                 pl.concat_str([why, pl.lit("read the descriptor")]).alias("detail")),
        k.select(pl.col("_line"), pl.lit(2, pl.Int64).alias("_sub"), "src_line", "time",
                 pl.lit("host.fwcfg").alias("agent"), pl.lit("host").alias("side"), pl.lit("write").alias("op"),
                 pl.col("_d").alias("addr"),
                 pl.lit(4, pl.UInt64).alias("size"), pl.lit(0, pl.UInt64).alias("value"),
                 pl.concat_str([why, pl.lit("write the control word (done); the data copy is not traced")])
                 .alias("detail")),
    ], how="diagonal_relaxed")


def _base(df: pl.DataFrame, agent: pl.Expr, op: str | pl.Expr, side: pl.Expr | None = None) -> list[pl.Expr]:
    """The common columns; ``side`` (the agent's side) defaults to the host thread's."""
    if side is None:
        side = _host_side(df)
    return [pl.col("_line"), pl.lit(0, pl.Int64).alias("_sub"), pl.col("src_line"), pl.col("time"),
            agent.alias("agent"), side.alias("side"), (pl.lit(op) if isinstance(op, str) else op).alias("op")]


def _host_side(df: pl.DataFrame) -> pl.Expr:
    """``side`` of the host-thread agent: ``host.<tid>`` (null where ftrace's ``host_agent`` is)."""
    if "host_agent" in df.columns:
        return pl.when(pl.col("host_agent").is_not_null()).then(pl.lit("host"))
    return pl.lit("host")  # _host_agent() is never null


def _map_event(name: str, df: pl.DataFrame, fields: set[str], mapping: dict[str, EventMapping],
               state: EventState, host: pl.Expr, src: str) -> pl.DataFrame:
    detail = pl.col("rest").alias("detail")
    if name in mapping:
        m = mapping[name]
        where = m.where
        cols = fields | {"tid"}
        agent = _template(m.agent, cols, where)
        return df.select(
            *_base(df, agent, m.op, side_expr(agent)),
            _arg(m.addr, cols, where).alias("addr"), _arg(m.size, cols, where).alias("size"),
            _arg(m.value, cols, where).alias("value"), pl.lit(m.cmo).alias("cmo"),
            pl.lit(m.sysreg).alias("sysreg"), pl.lit(m.attr).alias("attr"), detail)
    if name in ("memory_region_ops_read", "memory_region_ops_write"):
        op = "read" if name.endswith("read") else "write"
        cpus = df["cpu_index"].drop_nulls().unique().to_list()  # a few: look the texts up
        guest = pl.col("cpu_index").replace_strict({c: f"guest.{c}" for c in cpus}, default=None,
                                                   return_dtype=pl.String)
        agent = pl.when(pl.col("cpu_index") >= 0).then(guest).otherwise(host)
        span = df.group_by("name").agg(pl.col("addr").min().alias("lo"),
                                       (pl.col("addr") + pl.col("size").clip(1)).max().alias("hi"))
        for nm, lo, hi in span.iter_rows():
            cur = state.mmio.setdefault(nm, [lo, hi])
            cur[0], cur[1] = min(cur[0], lo), max(cur[1], hi)
        side = pl.when(pl.col("cpu_index") >= 0).then(pl.lit("guest")).otherwise(_host_side(df))
        out = df.select(*_base(df, agent, op, side), "addr", pl.col("size").clip(1), "value", detail)
        if op == "write":
            dma = _fw_cfg_dma(df, state)
            if dma.height:
                out = pl.concat([out, dma], how="diagonal_relaxed")
        return out
    if name == "kvm_set_user_memory":
        has_as = "as" in df.columns
        for r in df.select(pl.col("as") if has_as else pl.lit(0).alias("as"), "slot", "guest_phys_addr",
                           "memory_size", "flags", "ret").iter_rows():
            asid, slot, gpa, size, flags, ret = r
            if ret not in (0, None):
                continue
            key = (int(asid), int(slot))
            if size:
                state.slots[key] = (int(gpa), int(size), int(flags))
                state.ram_ranges.append((int(gpa), int(size), f"as{asid}.slot{slot}" if has_as and asid
                                         else f"slot{slot}"))
            else:
                state.slots.pop(key, None)
        return df.select(*_base(df, host, "marker"), detail)
    if name == "address_space_map":
        op = pl.when(pl.col("is_write") != 0).then(pl.lit("write")).otherwise(pl.lit("read"))
        op = pl.when(pl.col("len") == 0).then(pl.lit("marker")).otherwise(op)
        return df.select(*_base(df, host, op), pl.when(pl.col("len") > 0).then(pl.col("addr")).alias("addr"),
                         pl.when(pl.col("len") > 0).then(pl.col("len")).alias("size"), detail)
    if name == "pci_nvme_map_addr":
        known = pl.col("nvme_dir").is_not_null() & (pl.col("len") > 0)
        state.bump("nvme_direction_unknown", df.filter(pl.col("nvme_dir").is_null()).height)
        return df.select(*_base(df, host, pl.when(known).then(pl.col("nvme_dir")).otherwise(pl.lit("marker"))),
                         pl.when(known).then(pl.col("addr")).alias("addr"),
                         pl.when(known).then(pl.col("len")).alias("size"), detail)
    if name == "smmuv3_translate_success":
        op = pl.when(pl.col("perm") == 2).then(pl.lit("write")).otherwise(pl.lit("read"))
        return df.select(*_base(df, host, op), pl.col("translated").alias("addr"), pl.lit(1, pl.UInt64).alias("size"),
                         pl.format("{} (access size not traced: 1 byte recorded)", "rest").alias("detail"))
    return df.select(*_base(df, host, "marker"), detail)


# --------------------------------------------------------------------------
# the importer


def _regions(state: EventState, options: ImportOptions) -> tuple[tuple[Region, ...], dict[str, Any]]:
    """RAM regions from memory slots, MMIO regions (page spans) from MMIO accesses.

    Regions are declared only when the log had memory slots (a KVM run): a TCG
    log without them keeps "all memory is RAM". Overlapping slot ranges (a
    slot re-added with another size) are merged; MMIO spans overlapping RAM
    or each other are left out (reported).
    """
    note: dict[str, Any] = {}
    if not state.ram_ranges:
        if state.mmio:
            note["mmio_seen"] = {k: [hex(v[0]), hex(v[1])] for k, v in sorted(state.mmio.items())}
        return (), note
    ram: list[list[Any]] = []
    for gpa, size, nm in sorted(set(state.ram_ranges)):
        if ram and gpa < ram[-1][1]:
            ram[-1][1] = max(ram[-1][1], gpa + size)
            ram[-1][2] = ram[-1][2] if nm in ram[-1][2].split("+") else ram[-1][2] + "+" + nm
        else:
            ram.append([gpa, gpa + size, nm])
    regions = [Region.make(nm, lo, hi - lo, "ram") for lo, hi, nm in ram]
    taken = [(lo, hi) for lo, hi, _ in ram]
    skipped = []
    for nm, (lo, hi) in sorted(state.mmio.items(), key=lambda kv: kv[1][0]):
        lo &= ~0xFFF
        hi = (hi + 0xFFF) & ~0xFFF
        if any(lo < b and a < hi for a, b in taken):
            skipped.append(nm)
            continue
        regions.append(Region.make(f"mmio.{nm}", lo, hi - lo, "mmio"))
        taken.append((lo, hi))
    if skipped:
        note["mmio_regions_overlapping_left_out"] = skipped
    return tuple(sorted(regions, key=lambda r: r.base)), note


#: Lines held back for the next execlog line (a log whose execlog output stopped is
#: decoded in file order beyond this).
HOLD_LIMIT = 4_000_000


class QemuLogImporter:
    """QEMU -D log: trace events (log backend), TCG plugin output, -d in_asm,exec,cpu,int."""

    format = "qemu-log"
    description = ("QEMU -D log: trace events (log backend, decoded with trace-events-all), "
                   "TCG plugin output (execlog, mem CSV) and -d debug output, in file order")
    suffixes = (".qemu.log", ".qemulog")

    def detect(self, head: bytes, path: Path) -> bool:
        text = head.decode("utf-8", errors="replace")
        lines = [ln for ln in text.splitlines()[:20] if ln.strip()]
        pat = re.compile(r"^(?:\d+@\d+\.\d{6}:[A-Za-z_]\w* |\d{4}-\d\d-\d\dT[\d:.]+Z [A-Za-z_]\w* |"
                         r"\d+, 0x[0-9a-fA-F]+, 0x[0-9a-fA-F]+, \"|insn_vaddr,insn_symbol,|Trace \d+: 0x|"
                         r"(?:memory_region_ops_(?:read|write)|kvm_set_user_memory|kvm_run_exit|address_space_map) )")
        return any(pat.match(ln) for ln in lines)

    def read(self, path: Path, options: ImportOptions) -> ImportResult:
        path = Path(path)
        src = str(path)
        table = load_table_lazily(options.trace_events)  # (an installed file: parsed when an event needs it)
        mapping = load_mapping(options.mapping)
        unknown_mapped = sorted(set(mapping) - set(table.names()))
        gmap = None
        if options.guest_map is not None:
            from .guest_map import load_guest_map
            gmap = load_guest_map(options.guest_map)
        names = set(table.names()) | set(mapping)
        line_size = options.line_size or 64
        ev_state = EventState()
        pl_state = PluginState()
        kinds: dict[str, int] = {}
        examples: list[str] = []
        summary: dict[str, Any] = {"format": self.format,
                                   "trace_events": table.path or "built-in signatures (no trace-events-all found)"}
        if unknown_mapped:
            summary["mapped_events_not_in_trace_events"] = unknown_mapped
        result = ImportResult(batches=iter(()), info=_info(options, (), path), summary=summary)
        gm_counts: dict[str, int] = {}

        def decoded() -> Iterator[pl.DataFrame]:
            # Lines after the last execlog line of a batch go with the next batch: the next
            # execlog line is placed before them, and a -d cpu dump is read with the line after it.
            held = None
            def classified(lines: pl.DataFrame) -> tuple[pl.DataFrame, tuple[pl.DataFrame, ...] | None]:
                # runs a batch ahead, in the reading thread: each line's shape, and the
                # fields, memory items and register values of the execlog lines (the lines
                # held for the next batch hold none)
                df = qi.classify(lines, names).with_columns(pl.col("src_line").alias("_line"))
                is_x = df["kind"] == "execlog"
                if not is_x.any():
                    return df, None
                split = split_execlog_rows(df.filter(is_x).select("_line", "src_line", "time", "rest"))
                return df, (split, execlog_mem_items(split), suffix_register_rows(split.lazy()).collect())

            for df, split in iter_line_batches(path, quiet=options.quiet, desc=f"reading {path.name}",
                                               prepare=classified):
                if options.strict:
                    qi.check_strict(df, src)
                qi.count_kinds(df, kinds)
                qi.unknown_examples(df, examples)
                df = df.drop("line")  # the text is in ``rest`` (after the prefix) from here on
                if held is not None:
                    df = pl.concat([held, df], how="vertical_relaxed")
                    held = None
                # rows are in file order: cut (zero-copy) after the last execlog line
                last = df.select(pl.arg_where(pl.col("kind") == "execlog").max()).item()
                if last is not None:
                    held = df.slice(last + 1)
                    df = df.slice(0, last + 1)
                elif pl_state.last_execlog_line is not None and df.height < HOLD_LIMIT:
                    held = df  # the next execlog line may belong before all of these
                    continue
                yield decode_log_frame(df, table, mapping, ev_state, pl_state, src, line_size, gmap, split)
            if held is not None and held.height:
                yield decode_log_frame(held, table, mapping, ev_state, pl_state, src, line_size, gmap)

        def batches() -> Iterator[pl.DataFrame]:
            for out in decoded():
                if out.height == 0:
                    continue
                if gmap is not None:
                    from .guest_map import apply_guest_map
                    out = apply_guest_map(out, gmap, gm_counts)
                yield out
            regions, note = _regions(ev_state, options)
            result.info = _info(options, regions, path)
            summary["lines"] = dict(sorted(kinds.items()))
            if kinds.get("unknown"):
                summary["unknown_line_examples"] = examples
            summary["events"] = {k[6:]: v for k, v in sorted(ev_state.counts.items()) if k.startswith("event:")}
            summary.update({k: v for k, v in sorted(ev_state.counts.items()) if not k.startswith("event:")})
            summary.update(dict(sorted(pl_state.counts.items())))
            summary["memory_slots"] = [
                {"as": a, "slot": s, "gpa": hex(g), "size": hex(z), "flags": hex(f)}
                for (a, s), (g, z, f) in sorted(ev_state.slots.items())]
            summary.update(note)
            if gmap is not None:
                summary["guest_map"] = dict(gm_counts)

        result.batches = batches()
        return result


def _info(options: ImportOptions, regions: tuple[Region, ...], path: Path | None = None) -> TraceInfo:
    """The trace settings: a settings file (``--settings`` or INPUT.settings.tkt) wins over what
    the log taught (memory slots, MMIO spans); command options win over both."""
    from .tabular import options_info

    return options_info(options, path, regions)


def decode_log_frame(df: pl.DataFrame, table: EventTable, mapping: dict[str, EventMapping],
                     ev_state: EventState, pl_state: PluginState, src: str, line_size: int,
                     gmap: Any = None, split: tuple[pl.DataFrame, ...] | None = None) -> pl.DataFrame:
    """One classified batch of a QEMU log -> trace-v1 rows in file order.

    ``split``: the execlog lines of ``df`` already cut into fields, their memory items and
    register values (tcg_plugin.split_execlog_rows, execlog_mem_items, suffix_register_rows).
    """
    parts = []
    present = set(df["kind"].unique().to_list())
    ev = df if present == {"event"} else df.filter(pl.col("kind") == "event")
    if not pl_state.mmio_traced and ev.select((pl.col("ev_name").str.starts_with("memory_region_ops_")
                                               & ~pl.col("ev_body").str.starts_with("cpu -")).any()).item():
        pl_state.mmio_traced = True
    if ev.height:
        out = decode_event_rows(ev, table, mapping, ev_state, src)
        if out.height:
            parts.append(out)
    if "execlog" in present and split is not None and not present & {"exec", "mem-csv", "cpu-dump"}:
        # execlog lines only (already cut into fields): no line needs the vCPU of the line
        # before it; the last vCPU seen carries to the next batch (as current_vcpu_column)
        seen = split[0]["vcpu"].drop_nulls()
        if seen.len():
            pl_state.current_vcpu = int(seen[-1])
        no_dumps = split[0].select("_line", "src_line", "time", "rest", pl.lit("cpu-dump").alias("kind"),
                                   pl.lit(None, pl.Int64).alias("vcpu")).clear()
        out = decode_execlog(split[0], no_dumps, pl_state, src, line_size, gmap, split)
        if out.height:
            parts.append(out)
    elif present & {"execlog", "mem-csv", "cpu-dump"}:
        small = df.select("_line", "src_line", "time", "rest", "kind").filter(
            pl.col("kind").is_in(["execlog", "exec", "mem-csv", "cpu-dump"]))
        small = small.with_columns(current_vcpu_column(small, pl_state).alias("vcpu"))
        dumps = small.filter(pl.col("kind") == "cpu-dump").with_columns(pl.col("vcpu").fill_null(0))
        ex = small.filter(pl.col("kind") == "execlog")
        if ex.height or dumps.height:
            out = decode_execlog(ex, dumps, pl_state, src, line_size, gmap, split)
            if out.height:
                parts.append(out)
        mc = small.filter(pl.col("kind") == "mem-csv")
        if mc.height:
            parts.append(decode_memcsv(mc, pl_state, src))
    if not parts:
        return pl.DataFrame()
    out = parts[0] if len(parts) == 1 else pl.concat(parts, how="diagonal_relaxed")
    # one integer key: _osub is 0..1200, an execlog row's _oline is unique per line
    if "_oline" in out.columns:
        key = (pl.coalesce("_oline", "_line").cast(pl.UInt64) * 4096
               + pl.coalesce("_osub", "_sub").cast(pl.UInt64))
    else:  # no execlog rows: each row stays at its own line
        key = pl.col("_line").cast(pl.UInt64) * 4096 + pl.col("_sub").cast(pl.UInt64)
    # Order by the integer key alone (its arg-sort), then only gather; rows sharing a key
    # (none in practice) are ordered by their line, as a sort on (key, _line) would. Only
    # the output columns are gathered (finish first).
    # the parts come in many chunks: one copy into contiguous columns makes the rest cheaper
    out = out.rechunk()
    keys = out.select(key.alias("_key"), "_line")
    order = keys.select(pl.int_range(pl.len(), dtype=pl.UInt32).sort_by("_key", maintain_order=True))[:, 0]
    if order.is_sorted():
        return finish(out, src)
    keys = keys[order]
    if keys.select(((pl.col("_key").diff() == 0) & (pl.col("_line").diff() < 0)).any()).item():
        return finish(out.with_columns(key.alias("_key")).sort(["_key", "_line"], maintain_order=True), src)
    # gather only the columns that carry values (finish adds the constant and null ones)
    return finish(out.select([c for c in out.columns if c in EVENT_COLUMNS])[order], src)


__all__ = ["QemuLogImporter", "IMPORTER", "load_mapping", "decode_event_rows", "EventState", "EventMapping"]


IMPORTER = QemuLogImporter()
