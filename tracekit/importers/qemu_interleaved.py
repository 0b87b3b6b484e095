"""Recognise each line of a QEMU ``-D`` log by its shape.

One QEMU log file mixes trace-event lines, TCG plugin output (execlog, the
mem plugin's CSV) and ``-d in_asm,exec,cpu,int`` debug output, all written
through ``qemu_log`` in execution order. tracekit treats the file as ONE
input: every line is classified by the regexes below (after an optional
timestamp prefix), file order is event order, and lines of no known shape
are counted by kind (``--strict`` makes them errors).

Shapes (QEMU 7.2 ... 10.x sources: ``scripts/tracetool/backend/log.py``,
``contrib/plugins/execlog.c``, ``tests/tcg/plugins/mem.c``,
``accel/tcg/cpu-exec.c`` ``log_cpu_exec``, ``target/arm/cpu.c``
``aarch64_cpu_dump_state``, ``target/arm/helper.c`` ``arm_log_exception``):

=============== ===============================================================
kind            line
=============== ===============================================================
event           ``NAME ARGS`` with NAME in trace-events-all
execlog         ``0, 0xffff800008a1c2d0, 0xf9400021, "ldr x1, [x1]", load, ...``
mem-csv         ``0xffff800008a1c2d0,memcpy,0xffff...,0x4123a008,64,load,0x...``
mem-csv-header  ``insn_vaddr,insn_symbol,mem_vaddr,mem_hwaddr,access_size,...``
cpu-dump        `` PC=... X00=... X01=...``, ``X02=...``, ``PSTATE=...`` (-d cpu)
exec            ``Trace 0: 0x7f... [00000000/ffff.../00000011/ff200000] sym`` (-d exec)
in-asm          ``----------------``, ``IN: sym``, ``0x40000000:  d2800000  movz ...``
int             ``Taking exception 5 [IRQ] on CPU 0``, ``...from EL1 to EL1`` (-d int)
plugin-summary  ``mem accesses: 12``, ``io accesses: 3`` and similar counters
qemu-message    ``qemu-system-aarch64: ...`` (error_report)
blank           empty line
unknown         anything else (counted; an error with --strict)
=============== ===============================================================
"""

from __future__ import annotations

import polars as pl

from ..errors import TraceFormatError, at

#: The optional prefix of every qemu_log line: ``TID@SEC.USEC:`` (QEMU <= 10.0,
#: ``-msg timestamp=on``) or ``ISO8601Z `` (QEMU >= 10.1).
PREFIX_RE = (r"^(?:(?P<tid>\d+)@(?P<sec>\d+)\.(?P<usec>\d{6}):"
             r"|(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) )?(?P<rest>(?s:.*))$")

EXECLOG_START = r'^\d+, 0x[0-9a-fA-F]+, 0x[0-9a-fA-F]+, "'
MEMCSV_HEADER = r"^insn_vaddr,insn_symbol,mem_vaddr,mem_hwaddr,access_size,access_type"
MEMCSV_ROW = r"^0x[0-9a-fA-F]+,[^,]*,0x[0-9a-fA-F]+,0x[0-9a-fA-F]+,\d+,(?:load|store),"
CPU_DUMP = r"^\s*(?:PC|X\d\d|SP|PSTATE|FPCR|FPSR|SVCR|FFR|ZCR_EL\d|[QZPD]\d\d|ZA\w*)="
EXEC = r"^(?:Trace \d+: 0x[0-9a-fA-F]+ \[|Chain \d+: 0x|Linking TBs |Stopped execution of TB chain)"
IN_ASM = (r"^(?:-{10,}$|IN: |IN:$|OUT: |OUT:$|OBJD-[HT]: |0x[0-9a-fA-F]+:  |  -- guest addr |PROLOGUE: |OP:$|"
          r"OP after optimization|\s+0x[0-9a-fA-F]+:\s)")
INT = r"^(?:Taking exception |\.\.\.|Exception return from |Interrupt |Exception |CPU \d+ )"
PLUGIN_SUMMARY = r"^(?:(?:inline |callback )?mem accesses: \d+|io accesses: \d+|Region Base, |Warning: 0x)"
QEMU_MESSAGE = r"^qemu(?:-system)?-[\w.-]+: "
EVENT_NAME = r"^([A-Za-z_]\w*)(?: |$)"

KINDS = ("event", "execlog", "mem-csv", "mem-csv-header", "cpu-dump", "exec", "in-asm", "int",
         "plugin-summary", "qemu-message", "blank", "unknown")


TID_PREFIX = r"^\d+@\d+\.\d{6}:"
ISO_PREFIX = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z "


def split_prefix(lines: pl.DataFrame) -> pl.DataFrame:
    """Add ``tid`` (i64), ``time`` (f64 seconds) and ``rest`` (the line after the prefix).

    Cheap string kernels only (an anchored ``contains`` then ``find``/``slice``):
    capture groups over every line would cost more than the rest of the import.
    The prefixes are ASCII, so the byte offsets of ``find`` are character offsets.
    """
    line = pl.col("line")
    t = lines.select(line.str.contains(TID_PREFIX).alias("_t"))
    if t["_t"].all() or not lines.select(line.str.contains("Z ", literal=True).any()).item():
        # every line has the other prefix, or none has the "Z " that ends an ISO one: skip its test
        flags = t.with_columns(pl.lit(False).alias("_i"))
    else:
        flags = t.with_columns(lines.select(line.str.contains(ISO_PREFIX).alias("_i")))
    has_t, has_i = bool(flags["_t"].any()), bool(flags["_i"].any())
    if not (has_t or has_i):
        return lines.with_columns(pl.lit(None, pl.Int64).alias("tid"), pl.lit(None, pl.Float64).alias("time"),
                                  line.alias("rest"))
    df = lines.with_columns(flags)
    if has_t and not has_i and flags["_t"].all():  # every line has the TID@SEC.USEC: prefix
        # cut at the first ':' (the prefix's), then its head at the '@'
        df = df.with_columns(line.str.splitn(":", 2).alias("_s"))
        df = df.with_columns(pl.col("_s").struct.field("field_0").str.splitn("@", 2).alias("_p"),
                             pl.col("_s").struct.field("field_1").alias("rest"))
        return df.with_columns(
            pl.col("_p").struct.field("field_0").cast(pl.Int64, strict=False).alias("tid"),
            pl.col("_p").struct.field("field_1").cast(pl.Float64, strict=False).alias("time"),
        ).select(*lines.columns, "tid", "time", "rest")
    tid = time = rest = None
    if has_t:
        df = df.with_columns(line.str.find("@", literal=True).alias("_at"),
                             line.str.find(":", literal=True).alias("_c"))
        tid = pl.when(pl.col("_t")).then(line.str.slice(0, pl.col("_at")).cast(pl.Int64, strict=False))
        time = pl.when(pl.col("_t")).then(
            line.str.slice(pl.col("_at") + 1, pl.col("_c") - pl.col("_at") - 1).cast(pl.Float64, strict=False))
        rest = pl.when(pl.col("_t")).then(line.str.slice(pl.col("_c") + 1))
    if has_i:
        df = df.with_columns(line.str.find(" ", literal=True).alias("_sp"))
        iso = line.str.slice(0, pl.col("_sp")).str.strip_suffix("Z")
        i_time = (iso.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", time_unit="us", strict=False)
                  .dt.epoch("us").cast(pl.Float64) / 1e6)
        i_rest = line.str.slice(pl.col("_sp") + 1)
        time = (time.when(pl.col("_i")).then(i_time) if time is not None
                else pl.when(pl.col("_i")).then(i_time))
        rest = (rest.when(pl.col("_i")).then(i_rest) if rest is not None
                else pl.when(pl.col("_i")).then(i_rest))
    return df.with_columns(
        (tid if tid is not None else pl.lit(None, pl.Int64)).alias("tid"),
        time.alias("time"),
        rest.otherwise(line).alias("rest"),
    ).drop([c for c in ("_t", "_i", "_at", "_c", "_sp") if c in df.columns])


def classify(lines: pl.DataFrame, event_names: list[str] | set[str]) -> pl.DataFrame:
    """Add ``kind`` (see module doc) and ``ev_name`` / ``ev_body`` for trace-event lines.

    The common shapes (trace event, execlog) are tested on every line; the
    rarer ones only on what is left, so a log of one shape costs two passes.
    The event name is the text before the first space (``find`` + ``slice``:
    no split into new columns of every line).
    """
    df = split_prefix(lines)
    rest = pl.col("rest")
    names = pl.Series(sorted(event_names), dtype=pl.String)
    df = df.with_columns(rest.str.find(" ", literal=True).alias("_sp"))
    name = pl.when(pl.col("_sp").is_null()).then(rest).otherwise(rest.str.slice(0, pl.col("_sp")))
    df = df.with_columns(name.is_in(names.implode()).alias("_ev"))
    kind = (pl.when(pl.col("_ev")).then(pl.lit("event"))
            .when(rest.str.contains(EXECLOG_START)).then(pl.lit("execlog")))
    if df["_ev"].all():
        kind = pl.lit("event")
    df = df.with_columns(kind.alias("kind"))
    other = df["kind"].is_null()
    if other.any():
        rare = (
            pl.when(rest.str.contains(r"^\s*$")).then(pl.lit("blank"))
            .when(rest.str.contains(MEMCSV_ROW)).then(pl.lit("mem-csv"))
            .when(rest.str.contains(CPU_DUMP)).then(pl.lit("cpu-dump"))
            .when(rest.str.contains(EXEC)).then(pl.lit("exec"))
            .when(rest.str.contains(IN_ASM)).then(pl.lit("in-asm"))
            .when(rest.str.contains(INT)).then(pl.lit("int"))
            .when(rest.str.contains(MEMCSV_HEADER)).then(pl.lit("mem-csv-header"))
            .when(rest.str.contains(PLUGIN_SUMMARY)).then(pl.lit("plugin-summary"))
            .when(rest.str.contains(QEMU_MESSAGE)).then(pl.lit("qemu-message"))
            .otherwise(pl.lit("unknown"))
        )
        k = df["kind"].clone()
        k.scatter(other.arg_true(), df.filter(other).select(rare)[:, 0])
        df = df.with_columns(k.alias("kind"))
    is_ev = pl.col("_ev")
    body = pl.when(pl.col("_sp").is_null()).then(pl.lit("")).otherwise(rest.str.slice(pl.col("_sp") + 1))
    if not df["_ev"].any():  # no trace event in the batch (an execlog): nothing to cut
        name = body = pl.lit(None, pl.String)
    return df.with_columns(
        pl.when(is_ev).then(name).alias("ev_name"),
        pl.when(is_ev).then(body).alias("ev_body"),
    ).drop("_sp", "_ev")


def count_kinds(df: pl.DataFrame, counts: dict[str, int]) -> None:
    for k, n in df.group_by("kind").len().iter_rows():
        counts[k] = counts.get(k, 0) + int(n)


def unknown_examples(df: pl.DataFrame, examples: list[str], limit: int = 5) -> None:
    if len(examples) >= limit:
        return
    bad = df.filter(pl.col("kind") == "unknown").head(limit - len(examples))
    for line_no, text in bad.select("src_line", "line").iter_rows():
        examples.append(f"{line_no}: {text[:100]}")


def check_strict(df: pl.DataFrame, src: str) -> None:
    """``--strict``: the first line of no known shape is an error naming FILE:LINE."""
    bad = df.filter(pl.col("kind") == "unknown")
    if bad.height:
        row = bad.row(0, named=True)
        text = row["line"] if len(row["line"]) <= 100 else row["line"][:97] + "..."
        raise TraceFormatError(
            f"{at(src, int(row['src_line']))}: expected a QEMU log line (trace event, TCG plugin output "
            f"or -d debug output), found {text!r}")
