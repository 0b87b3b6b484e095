"""Kernel trace text: ``trace_pipe`` / ``trace``, ``trace-cmd report`` and ``perf script``.

The three tools print the same information with different prefixes; one
regex accepts all three (comm may contain spaces, e.g. ``CPU 0/KVM``, so it
is split at the pid, not at whitespace)::

    trace_pipe   "       CPU 0/KVM-48215   [003] d..1.  1934.123400: kvm_entry: PC: 0x..."
    trace-cmd    "       CPU 0/KVM-48215 [003]  1934.123411: kvm_exit:             TRAP: ..."
    perf script  "       CPU 0/KVM 48215 [003]  1934.123411:          kvm:kvm_exit: TRAP: ..."

KVM/arm64 events (Linux 6.1 ``arch/arm64/kvm/trace_arm.h``, ``include/trace/events/kvm.h``):

=================== ===================================================================
event               becomes
=================== ===================================================================
kvm_mmio            ``write``/``read`` (the data in ``value``) of ``len`` bytes at ``gpa`` by
                    the vCPU; ``unsatisfied-read`` (the read exits to QEMU, value not yet
                    known) is a marker
kvm_sys_access      ``SYS_DC_ISW``/``CSW``/``CISW`` writes -> ``cmo dc.isw|csw|cisw`` by the
                    vCPU (set/way: no address). Other registers (``SYS_SCTLR_EL1``,
                    ``SYS_MAIR_EL1``...) -> marker: KVM does not trace the value written
kvm_toggle_cache    marker ``SCTLR_EL1 M&C was on|off, now on|off``: only whether both M and C
                    are set is known; a ``sysreg`` event needs the whole value (a guessed one
                    would also set I, EE, WXN... wrongly), so no sysreg event is made
kvm_set_way_flush   marker: KVM's own clean+invalidate of all guest RAM. The
                    ``kvm-cache-toggle`` mitigation models exactly this, so the recorded
                    flush is kept for reading, not replayed
tracing_mark_write  QEMU's ftrace backend: ``NAME ARGS`` decoded like a qemu-log line
anything else       marker (kvm_entry, kvm_exit, kvm_guest_fault, kvm_access_fault,
                    kvm_userspace_exit, timers, irqs ...), detail ``event: text``
=================== ===================================================================

The vCPU is taken from the thread name ``CPU N/KVM`` (QEMU with
``-name ...,debug-threads=on``); other threads are ``guest.<tid>`` for vCPU
events and ``host.<tid>`` for markers of QEMU threads. Timestamps go to
``time`` (seconds of the trace clock).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from ..model import TraceInfo
from .base import ImportOptions, ImportResult
from ._lines import dec_u64, fail_first, finish, iter_line_batches
from .qemu_log import EventState, decode_event_rows, load_mapping
from .trace_events import load_table

PREFIX = (r"^\s*(?P<comm>.+?)(?:-|\s+)(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
          r"(?:[\w.]{4,5}\s+)?(?P<ts>\d+\.\d+):\s+(?:(?P<group>\w+):)?(?P<event>\w+):\s*(?P<msg>(?s:.*))$")
#: PREFIX without its ``(?P<msg>(?s:.*))$`` tail, which matches whatever follows: a line
#: matches PREFIX exactly when it starts with a match of this, and the regex engine can
#: stop at the end of the prefix instead of scanning every message to the end.
PREFIX_HEAD = PREFIX.replace(r"(?P<msg>(?s:.*))$", "")
assert PREFIX_HEAD != PREFIX
OTHER = r"^(?:\s*$|\s*#|cpus=\d+|CPU:\s*\d+ \[|\s*version = |CPU \d+ is empty|\s*\[?LOST \d+ EVENTS\]?)"

KVM_MMIO = r"^mmio (?P<type>unsatisfied-read|read|write) len (?P<len>\d+) gpa 0x(?P<gpa>[0-9a-fA-F]+) val 0x(?P<val>[0-9a-fA-F]+)$"
KVM_SYS_ACCESS = (r"^PC: (?P<pc>[0-9a-fA-F]+) (?P<name>\S+) \((?P<op0>\d+),(?P<op1>\d+),(?P<crn>\d+),(?P<crm>\d+),"
                  r"(?P<op2>\d+)\) (?P<dir>read|write)$")
KVM_TOGGLE = r"^VM op at 0x(?P<pc>[0-9a-fA-F]+) \(cache was (?P<was>on|off), now (?P<now>on|off)\)$"
KVM_SW_FLUSH = r"^S/W flush at 0x(?P<pc>[0-9a-fA-F]+) \(cache (?P<cache>on|off)\)$"

SET_WAY = {"SYS_DC_ISW": "dc.isw", "SYS_DC_CSW": "dc.csw", "SYS_DC_CISW": "dc.cisw"}


def _split_prefix(lines: pl.DataFrame, pid: bool = True) -> pl.DataFrame:
    """event, ts, pid, head (comm-pid), msg of each line, null event where PREFIX does not match.

    The whole-prefix regex is only tested (no captures); the fields come from
    cheap slices around the ``[CPU]`` column and splits, each skipped when no line
    of the batch needs it (perf script's ``group:event``, a pid after a space).
    """
    line = pl.col("line")
    df = lines.with_columns(line.str.contains(PREFIX_HEAD).alias("_ok"), line.str.find("] ", literal=True).alias("_b"),
                            line.str.find("[", literal=True).alias("_a"))
    all_ok = bool(df["_ok"].all())

    def if_ok(e: pl.Expr) -> pl.Expr:
        return e if all_ok else pl.when(pl.col("_ok")).then(e)

    df = df.with_columns(if_ok(line.str.slice(pl.col("_b") + 2)).alias("_tail"),
                         if_ok(line.str.slice(0, pl.col("_a"))).str.strip_chars_end().alias("head"))
    if df["head"].str.ends_with(")").any():  # option record-tgid: "comm-pid (tgid)"
        df = df.with_columns(pl.col("head").str.replace(r"\s*\(\s*[\d-]+\)\s*$", ""))
    # tail: "[FLAGS  ]TS: [GROUP:]EVENT:[ padding] TEXT"
    df = df.with_columns(pl.col("_tail").str.splitn(": ", 3).alias("_f"))
    event = pl.col("_f").struct.field("field_1")
    if df.select(event.str.contains(":", literal=True).any()).item():  # perf script: "group:event"
        event = event.str.split(":").list.last()
    df = df.with_columns(
        pl.col("_f").struct.field("field_0").str.split(" ").list.last().alias("ts"),
        event.alias("event"),
        pl.col("_f").struct.field("field_2").str.strip_chars_start().fill_null("").alias("msg"))
    df = df.with_columns(if_ok(pl.col("event")).alias("event")).drop("_ok", "_b", "_a", "_tail", "_f")
    return _split_pid(df) if pid else df


def _split_prefix_ahead(lines: pl.DataFrame) -> pl.DataFrame:
    """:func:`_split_prefix` but the pid (:func:`_split_pid`): the part the reading thread does."""
    return _split_prefix(lines, pid=False)


def _split_pid(df: pl.DataFrame) -> pl.DataFrame:
    """Add ``pid``: after the last '-' of ``head`` when that is all digits, else after its last space."""
    df = df.with_columns(pl.col("head").str.split("-").list.last().alias("_pid1"))
    digits = pl.col("_pid1").str.contains(r"^\d+$")
    if df.select((digits | pl.col("_pid1").is_null()).all()).item():
        pid = pl.col("_pid1")  # (a null _pid1 has a null head: the other choice is null too)
    else:
        pid = pl.when(digits).then(pl.col("_pid1")).otherwise(pl.col("head").str.split(" ").list.last())
    return df.with_columns(pid.alias("pid")).drop("_pid1")


class FtraceTextImporter:
    """trace_pipe / trace-cmd report / perf script text of kvm:* events (and QEMU's ftrace backend)."""

    format = "ftrace-text"
    description = "Linux trace text (trace_pipe, trace-cmd report, perf script) of kvm:* events"
    suffixes = (".trace.txt", ".ftrace", ".ftrace.txt")
    settings_upfront = True  # TraceInfo is known before any event

    def detect(self, head: bytes, path: Path) -> bool:
        text = head.decode("utf-8", errors="replace")
        pat = re.compile(PREFIX)
        lines = [ln for ln in text.splitlines()[:30] if ln.strip() and not ln.startswith(("#", "cpus="))]
        return bool(lines) and sum(bool(pat.match(ln)) for ln in lines[:10]) >= max(1, min(len(lines), 10) // 2)

    def read(self, path: Path, options: ImportOptions) -> ImportResult:
        path = Path(path)
        src = str(path)
        # QEMU's event table is only needed for tracing_mark_write lines (QEMU's ftrace
        # backend): a file named with --trace-events is read now (its errors surface at
        # once), the installed one when the first such line is met.
        loaded = [load_table(options.trace_events)] if options.trace_events is not None else []

        def table() -> Any:
            if not loaded:
                loaded.append(load_table(None))
            return loaded[0]

        mapping = load_mapping(options.mapping)
        gmap = None
        if options.guest_map is not None:
            from .guest_map import load_guest_map
            gmap = load_guest_map(options.guest_map)
        ev_state = EventState()
        counts: dict[str, int] = {}
        kinds: dict[str, int] = {}
        summary: dict[str, Any] = {"format": self.format}
        result = ImportResult(batches=iter(()), info=_info(options, path), summary=summary)
        gm_counts: dict[str, int] = {}

        def batches() -> Iterator[pl.DataFrame]:
            # the prefix of the next batch's lines is split in a worker thread, ahead (all but
            # the pid, which this thread adds: the two threads get about the same work)
            for df in iter_line_batches(path, quiet=options.quiet, desc=f"reading {path.name}",
                                        prepare=_split_prefix_ahead):
                out = self._decode(_split_pid(df), table, mapping, ev_state, counts, kinds, src, options.strict)
                if out.height == 0:
                    continue
                if gmap is not None:
                    from .guest_map import apply_guest_map
                    out = apply_guest_map(out, gmap, gm_counts)
                yield out
            summary["lines"] = dict(sorted(kinds.items()))
            summary["events"] = dict(sorted(counts.items()))
            summary.update({k: v for k, v in sorted(ev_state.counts.items()) if not k.startswith("event:")})
            if gmap is not None:
                summary["guest_map"] = dict(gm_counts)

        result.batches = batches()
        return result

    def _decode(self, df: pl.DataFrame, table, mapping, ev_state: EventState, counts: dict[str, int],
                kinds: dict[str, int], src: str, strict: bool) -> pl.DataFrame:
        """One batch of lines, already through :func:`_split_prefix`, -> trace-v1 rows."""
        all_ev = not df["event"].is_null().any()
        df = df.with_columns(
            pl.lit("event").alias("kind") if all_ev else
            pl.when(pl.col("event").is_not_null()).then(pl.lit("event"))
            .when(pl.col("line").str.contains(OTHER)).then(pl.lit("other"))
            .otherwise(pl.lit("unknown")).alias("kind"))
        for k, n in df.group_by("kind").len().iter_rows():
            kinds[k] = kinds.get(k, 0) + int(n)
        if strict:
            fail_first(df.filter(pl.col("kind") == "unknown"), src,
                       "a trace line 'COMM-PID [CPU] TIMESTAMP: EVENT: TEXT' (trace_pipe, trace-cmd report "
                       "or perf script)")
        vcpu = pl.col("head").str.extract(r"^\s*CPU (\d+)/KVM[- ]", 1)
        ev = (df if all_ev else df.filter(pl.col("kind") == "event")).with_columns(
            pl.col("pid").cast(pl.Int64, strict=False).alias("tid"),
            pl.col("ts").cast(pl.Float64).alias("time"),
            pl.col("src_line").alias("_line"),
            vcpu.cast(pl.Int64, strict=False).alias("vcpu"),
            (vcpu.is_not_null() & vcpu.cast(pl.Int64, strict=False).is_null()).alias("_bad_vcpu"),
        )
        fail_first(ev.filter(pl.col("tid").is_null() & pl.col("pid").is_not_null()), src,
                   "a pid (a number below 2^63) after the task name, 'COMM-PID [CPU]'")
        fail_first(ev.filter("_bad_vcpu"), src, "a vCPU number below 2^63 in 'CPU N/KVM'")
        ev = ev.drop("_bad_vcpu")
        if ev.height == 0:
            return pl.DataFrame()
        present = set()  # the events of this batch
        for k, n in ev.group_by("event").len().iter_rows():
            counts[k] = counts.get(k, 0) + int(n)
            present.add(k)
        host = pl.format("host.{}", "tid")
        marker_detail = pl.format("{}: {}", "event", "msg")
        event = pl.col("event")

        # Every event line gives one row, in file order: the few event kinds with arguments
        # are decoded where they occur (their text is null elsewhere), so the rows need no
        # regrouping and no sort. tracing_mark_write lines (QEMU's ftrace backend) go through
        # the trace-event decoder and are merged after.
        decoders = {"kvm_mmio": KVM_MMIO, "kvm_sys_access": KVM_SYS_ACCESS, "kvm_toggle_cache": KVM_TOGGLE,
                    "kvm_set_way_flush": KVM_SW_FLUSH}
        used = [n for n in decoders if n in present]
        if used:
            ev = ev.with_columns(pl.when(event == n).then(pl.col("msg")).str.extract_groups(decoders[n]).alias(n)
                                 for n in used)
        for name in used:  # a line of a decoded kind that its regex does not read is an error
            first = re.findall(r"\?P<(\w+)>", decoders[name])[0]  # every group is mandatory
            fail_first(ev.filter((event == name) & pl.col(name).struct.field(first).is_null()), src,
                       f"{name} text matching {decoders[name]!r}")
        f = {n: (lambda n: lambda field: pl.col(n).struct.field(field))(n) for n in used}
        op = pl.lit("marker")
        addr = size = value = cmo = None
        suffix = None  # after "EVENT: TEXT" in the detail
        detail = None
        if "kvm_mmio" in used:
            g = f["kvm_mmio"]
            done = (event == "kvm_mmio") & (g("type") != "unsatisfied-read")
            op = pl.when(done).then(
                pl.when(g("type") == "write").then(pl.lit("write")).otherwise(pl.lit("read"))).otherwise(op)
            # (the groups hold hex digits only: no 0x to strip)
            addr = pl.when(done).then(g("gpa").str.to_integer(base=16, dtype=pl.UInt64, strict=False))
            size = pl.when(done).then(dec_u64(g("len")).clip(1))
            value = pl.when(done).then(g("val").str.to_integer(base=16, dtype=pl.UInt64, strict=False))
        if "kvm_sys_access" in used:
            g = f["kvm_sys_access"]
            is_sys = event == "kvm_sys_access"
            sw = is_sys & g("name").is_in(list(SET_WAY)) & (g("dir") == "write")
            ev_state.bump("sysreg_writes_value_unknown", ev.select(
                (is_sys & ~g("name").str.starts_with("SYS_DC_") & (g("dir") == "write")).sum()).item())
            op = pl.when(sw).then(pl.lit("cmo")).otherwise(op)
            cmo = pl.when(sw).then(g("name").replace_strict(SET_WAY, default=None))
            suffix = pl.when(is_sys).then(pl.lit(" (value not traced)")).otherwise(pl.lit(""))
            detail = pl.when(sw).then(None)
        if "kvm_toggle_cache" in used:
            g = f["kvm_toggle_cache"]
            detail = (detail if detail is not None else pl).when(event == "kvm_toggle_cache").then(pl.format(
                "kvm_toggle_cache: SCTLR_EL1 M&C was {}, now {} at pc 0x{} (other bits not traced)",
                g("was"), g("now"), g("pc")))
        if "kvm_set_way_flush" in used:
            g = f["kvm_set_way_flush"]
            detail = (detail if detail is not None else pl).when(event == "kvm_set_way_flush").then(pl.format(
                "kvm_set_way_flush: KVM cleaned+invalidated all guest RAM (guest caches {}) at pc 0x{}",
                g("cache"), g("pc")))
        text = pl.concat_str([event, pl.lit(": "), pl.col("msg")] + ([suffix] if suffix is not None else []))
        detail = text if detail is None else detail.otherwise(text)
        # the acting thread: the vCPU for kvm events it decodes and for kvm_* markers of a vCPU
        # thread (guest.<vcpu>, else guest.<tid>), the thread otherwise (host.<tid>)
        handled = {"kvm_mmio", "kvm_sys_access", "kvm_toggle_cache", "kvm_set_way_flush", "tracing_mark_write"}
        if present - handled:
            vcpu_thread = pl.col("vcpu").is_not_null() & event.str.starts_with("kvm_")
            on_vcpu = event.is_in(list(handled)) | vcpu_thread
            side = pl.when(on_vcpu).then(pl.lit("guest")).otherwise(pl.lit("host"))
            num = pl.when(on_vcpu).then(pl.coalesce("vcpu", "tid")).otherwise(pl.col("tid"))
        else:
            side, num = pl.lit("guest"), pl.coalesce("vcpu", "tid")
        cols = [pl.col("_line"), pl.lit(0, pl.Int64).alias("_sub"), "src_line", "time",
                pl.concat_str([side, pl.lit("."), num.cast(pl.String)]).alias("agent"),
                pl.when(num.is_not_null()).then(side).alias("side"), op.alias("op")]
        cols += [e.alias(n) for n, e in (("addr", addr), ("size", size), ("value", value), ("cmo", cmo))
                 if e is not None]
        cols.append(detail.alias("detail"))
        if "tracing_mark_write" not in present:
            return finish(ev.select(cols), src)

        is_tm = event == "tracing_mark_write"
        parts = [ev.filter(~is_tm).select(cols)]
        tm = ev.filter(is_tm)
        table = table()
        tm = tm.with_columns(
            pl.col("msg").str.extract(r"^([A-Za-z_]\w*)(?: |$)", 1).alias("ev_name"),
            pl.col("msg").str.replace(r"^[A-Za-z_]\w* ?", "").alias("ev_body"),
            pl.col("msg").alias("rest"), host.alias("host_agent"))
        known = pl.col("ev_name").is_in(pl.Series(sorted(set(table.events) | set(mapping)), dtype=pl.String).implode())
        q = tm.filter(known)
        if q.height:
            out = decode_event_rows(q.select("_line", "src_line", "time", "tid", "ev_name", "ev_body", "rest",
                                             "host_agent"), table, mapping, ev_state, src)
            if out.height:
                parts.append(out)
        rest = tm.filter(~known)
        if rest.height:
            parts.append(rest.select(pl.col("_line"), pl.lit(0, pl.Int64).alias("_sub"), "src_line", "time",
                                     host.alias("agent"), pl.lit("marker").alias("op"), marker_detail.alias("detail")))
        out = pl.concat([p.drop("side", strict=False) for p in parts], how="diagonal_relaxed").sort("_line", "_sub")
        return finish(out, src)  # (which gives every row its side)


def _info(options: ImportOptions, path: Path | None = None) -> TraceInfo:
    """Settings: --settings or INPUT.settings.tkt when given, else the options."""
    from .tabular import options_info

    return options_info(options, path)


IMPORTER = FtraceTextImporter()
__all__ = ["FtraceTextImporter", "IMPORTER"]
