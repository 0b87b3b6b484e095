"""Markdown report for a merge request: the text report's content as tables.

Only GitHub/GitLab-common Markdown: pipe tables, headings, lists, code spans.
"""

from __future__ import annotations

from ._common import MAX_EVENTS, ReportData, header_fields, title

NAME = "markdown"
SUFFIX = ".md"
DESCRIPTION = "GitHub/GitLab Markdown tables, for a merge request or issue"


def _cell(s: object) -> str:
    """A table cell: pipes escaped, no line breaks."""
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(s: object) -> str:
    text = str(s).replace("`", "'")
    return f"`{text}`"


def _table(head: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in head) + " |",
           "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def render(data: ReportData) -> str:
    out = ["## tracekit report: cache-coherency findings", ""]
    out += _table(["", ""], [[k, _code(v) if k in ("trace", "sha256") else v] for k, v in header_fields(data.meta)]
                  + [["mitigations", ", ".join(_code(m) for m in data.mitigations)]], ["l", "l"])
    out += ["", "A finding says the architecture permits a read to return stale data, a write to be lost or an "
                "instruction fetch to execute stale code, under the speculation model above; it is not a claim "
                "that a particular CPU will do so.", ""]

    out += ["### Findings per mitigation", ""]
    head = ["mitigation", *(f"{k} / {c}" for k, c in data.columns), "total"]
    rows = [[_code(m), *(str(data.matrix[m][kc]) for kc in data.columns), f"**{data.total(m)}**"]
            for m in data.mitigations]
    out += _table(head, rows, ["l", *["r"] * (len(head) - 1)])
    out += ["", "### Cost per mitigation", ""]
    rows = []
    for m in data.mitigations:
        c = data.costs[m]
        if not c:
            rows.append([_code(m), "-", "-", "-", "-", "-"])
            continue
        traps = ", ".join(f"{n} {name}" for name, n in c["traps"].items()) or "0"
        retyped = ", ".join(f"{r['count']} {r['from']}->{r['to']}" for r in c["retyped"]) or str(c["retyped_accesses"])
        if c.get("removed_ops"):
            traps += f"; {c['removed_ops']} ops removed"
        rows.append([_code(m), str(sum(c["traps"].values())), traps, str(c["inserted_ops"]), str(c["inserted_lines"]),
                     retyped])
    head = ["mitigation", "traps", "traps taken, ops removed", "ops inserted", "lines covered", "accesses retyped"]
    align = ["l", "r", "l", "r", "r", "l"]
    if data.baseline:
        for m, row in zip(data.mitigations, rows):
            fixed, new = data.against.get(m, (None, None))
            row += ["-" if fixed is None else str(fixed), "-" if new is None else str(new)]
        head += [f"fixes (of `{data.baseline}`)", "introduces"]
        align += ["r", "r"]
    out += _table(head, rows, align)

    for m in data.mitigations:
        n, shown = data.range_counts[m], data.shown[m]
        out += ["", f"### Under `{m}`: {data.total(m)} findings, {n} ranges needing maintenance", ""]
        if not shown:
            out.append("No maintenance needed: no findings under this mitigation.")
            continue
        rows = []
        for i, r in enumerate(shown, 1):
            row = r.row
            rows.append([str(i), row["fix_op"], _code(r.span), str(row["lines"]), row.get("region") or "",
                         row.get("fix_agent") or "?", str(row["fix_after_seq"]), str(row["fix_before_seq"]),
                         f"{', '.join(row['kinds'])}, {row['cause']}", str(row["findings"])])
        out += _table(["#", "fix", "range", "lines", "region", "by", "after seq", "before seq", "finding",
                       "findings"], rows, ["r", "l", "l", "r", "l", "l", "r", "r", "l", "r"])
        out.append("")
        for i, r in enumerate(shown, 1):
            out.append(f"{i}. {r.why}")
            for ev in r.events[:MAX_EVENTS]:
                out.append(f"   - seq {ev.seq}: {_code(ev.describe())}")
            if len(r.events) > MAX_EVENTS:
                out.append(f"   - ... and {len(r.events) - MAX_EVENTS} more events")
        if n > len(shown):
            out += ["", f"... and {n - len(shown)} more ranges under `{m}` (the json report lists them all)."]
    if data.columns:
        out += ["", "Causes: " + "; ".join(f"{title(k, c)}" for k, c in data.columns) + "."]
    if not data.has_trace:
        out += ["", "_Events are described from the findings; give the trace (`--trace`) to see every event's "
                    "operation, bytes and memory type._"]
    return "\n".join(out) + "\n"
