"""Plain-text report for a mailing list: ASCII only, at most 78 columns.

Mail clients and ``git send-email`` reviewers read this, so nothing depends on
a terminal: colour is only added on request (the CLI asks when stdout is a
terminal), and every line is wrapped to :data:`WIDTH`.
"""

from __future__ import annotations

import textwrap

from ._common import MAX_EVENTS, ReportData, header_fields, short_code, title

WIDTH = 78
NAME = "text"
SUFFIX = ".txt"
DESCRIPTION = "plain ASCII, at most 78 columns, for a mailing list or a terminal"

_BOLD, _RESET = "\x1b[1m", "\x1b[0m"


def _ascii(s: str) -> str:
    return s.encode("ascii", "backslashreplace").decode("ascii")


def _wrap(text: str, indent: str = "", first: str | None = None) -> list[str]:
    return textwrap.wrap(_ascii(text), WIDTH, initial_indent=indent if first is None else first,
                         subsequent_indent=indent, break_on_hyphens=False, break_long_words=True) or [""]


def _heading(text: str, color: bool, ch: str = "-") -> list[str]:
    lines = _wrap(text)
    shown = [f"{_BOLD}{line}{_RESET}" if color else line for line in lines]
    return ["", *shown, ch * max(len(line) for line in lines)]


def _table(head: list[str], rows: list[list[str]], name_width_max: int = 34) -> list[str]:
    """Right-aligned numeric columns after a name column; a long name gets its own line."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    num_w = sum(w + 2 for w in widths[1:])
    name_w = min(widths[0], max(10, WIDTH - num_w), name_width_max)
    out = [(head[0].ljust(name_w) + "".join("  " + h.rjust(w) for h, w in zip(head[1:], widths[1:]))).rstrip()]
    for r in rows:
        nums = "".join("  " + c.rjust(w) for c, w in zip(r[1:], widths[1:]))
        if len(r[0]) > name_w:
            out += _wrap(r[0])
            out.append((" " * name_w + nums).rstrip())
        else:
            out.append((r[0].ljust(name_w) + nums).rstrip())
    return out


def render(data: ReportData, *, color: bool = False) -> str:
    """The report as text; ``color`` adds ANSI bold to headings (terminals only)."""
    out: list[str] = []
    head = "tracekit report: cache-coherency findings"
    out += [(f"{_BOLD}{head}{_RESET}" if color else head), "=" * len(head)]
    for k, v in header_fields(data.meta):
        out += _wrap(f"{k + ':':<13}{v}", " " * 13, first="")
    out += _wrap("mitigations: " + ", ".join(data.mitigations), " " * 13, first="")
    out.append("")
    out += _wrap("A finding says the architecture permits a read to return stale data, a write to be lost or "
                 "an instruction fetch to execute stale code, under the speculation model above; it is not a "
                 "claim that a particular CPU will do so.")

    out += _heading("Findings per mitigation", color)
    codes = [short_code(k, c) for k, c in data.columns]
    rows = [[m, *(str(data.matrix[m][kc]) for kc in data.columns), str(data.total(m))] for m in data.mitigations]
    out += _table(["mitigation", *codes, "total"], rows)
    if data.columns:
        out.append("")
        for (k, c), code in zip(data.columns, codes):
            out += _wrap(f"{code:<10}{title(k, c)}", " " * 10, first="  ")

    out += _heading("Cost per mitigation", color)
    rows = []
    for m in data.mitigations:
        c = data.costs[m]
        row = [m, str(sum(c.get("traps", {}).values())) if c else "-",
               str(c.get("inserted_ops", "-")) if c else "-", str(c.get("inserted_lines", "-")) if c else "-",
               str(c.get("retyped_accesses", "-")) if c else "-"]
        if data.baseline:
            fixed, new = data.against.get(m, (None, None))
            row += ["-" if fixed is None else str(fixed), "-" if new is None else str(new)]
        rows.append(row)
    head = ["mitigation", "traps", "ops inserted", "lines", "retyped"]
    out += _table(head + (["fixes", "introduces"] if data.baseline else []), rows)
    if data.baseline:
        out.append("")
        out += _wrap(f"fixes / introduces: findings of {data.baseline} the mitigation removes / findings it "
                     f"has that {data.baseline} has not (same event, line, kind and cause).", "  ", first="  ")
    details = []
    for m in data.mitigations:
        c = data.costs[m]
        bits = [f"{n} {name}" for name, n in c.get("traps", {}).items()]
        bits += [f"{r['count']} {r['from']}->{r['to']}" for r in c.get("retyped", [])]
        if c.get("removed_ops"):
            bits.append(f"{c['removed_ops']} ops removed")
        if bits:
            details += _wrap(f"{m}: " + ", ".join(bits), "    ", first="  ")
    if details:
        out += ["", "  traps taken, accesses retyped, operations removed:", *details]

    for m in data.mitigations:
        n, shown = data.range_counts[m], data.shown[m]
        out += _heading(f"Under {m}: {data.total(m)} finding{'s' * (data.total(m) != 1)}, "
                        f"{n} range{'s' * (n != 1)} needing maintenance", color)
        if not shown:
            out.append("No maintenance needed: no findings under this mitigation.")
            continue
        for i, r in enumerate(shown, 1):
            row = r.row
            out.append("")
            region = f" in {row['region']}" if row.get("region") else ""
            out += _wrap(f"[{i}] {row['fix_op']} {r.span} ({row['lines']} line{'s' * (row['lines'] != 1)}){region}; "
                         f"{', '.join(row['kinds'])}, {row['cause']}; {row['findings']} "
                         f"finding{'s' * (row['findings'] != 1)}", "    ", first="")
            out.append("    events:")
            evs = r.events
            for ev in evs[:MAX_EVENTS]:
                out += _wrap(f"seq {ev.seq:<6} {ev.describe()}", " " * 17, first="      ")
            if len(evs) > MAX_EVENTS:
                out.append(f"      ... and {len(evs) - MAX_EVENTS} more events")
            out += _wrap("why: " + r.why, "    ", first="    ")
        if n > len(shown):
            out.append("")
            out += _wrap(f"... and {n - len(shown)} more ranges under {m} (the json report lists them all).")
    if not data.has_trace:
        out.append("")
        out += _wrap("Events are described from the findings; give the trace (--trace) to see every event's "
                     "operation, bytes and memory type.")
    return "\n".join(line.rstrip() for line in out) + "\n"
