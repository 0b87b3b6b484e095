"""One self-contained HTML page: tables, ranges and static plots as inline SVG.

The page fetches nothing (a Content-Security-Policy forbids it) and runs no
script: it can be attached to a bug, archived by CI and opened offline years
later. Plots are drawn by matplotlib (the ``html`` extra) into SVG.
"""

from __future__ import annotations

import html
import io
import re
from typing import Any

import numpy as np
import polars as pl

from .._arrays import distinct
from ..errors import TracekitError
from ..model import CAUSES, KINDS
from ._common import MAX_EVENTS, ReportData, header_fields, prepare, title

NAME = "html"
SUFFIX = ".html"
DESCRIPTION = "one self-contained page with tables and plots (needs matplotlib)"

#: Above this many findings in one plot, points are drawn as an embedded bitmap.
RASTER_ABOVE = 20_000

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:75em;
padding:0 1em;color:#1b1f24;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:.25em .6em;vertical-align:top}
th{background:#f6f8fa;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.z{color:#8c959f}code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
.note{color:#57606a}figure{margin:1em 0}figure svg{max-width:100%;height:auto}
figcaption{color:#57606a;font-size:.9em}ul.ev{margin:.2em 0;padding-left:1.2em}
"""


def _matplotlib():
    """The pieces of matplotlib the plots use, or a TracekitError saying how to install it."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
        from matplotlib.collections import PolyCollection
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise TracekitError("the html report draws its plots with matplotlib, which is not installed; "
                            "install it with: pip install 'tracekit[html]'  (or: pip install matplotlib)") from None
    return matplotlib, Figure, PolyCollection, MaxNLocator


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "x"


# --------------------------------------------------------------------------
# SVG plots


_CAUSE_COLOUR = dict(zip(CAUSES, ("#1f77b4", "#d62728", "#ff7f0e", "#9467bd", "#2ca02c")))
_KIND_MARKER = dict(zip(KINDS, ("o", "s", "^")))


def _svg(fig: Any, prefix: str) -> str:
    """The figure as an inline ``<svg>``: no XML prolog, no metadata, ids unique on the page."""
    matplotlib = _matplotlib()[0]
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "tracekit", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = re.sub(r'(xlink:href|href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{prefix}-{m.group(2)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", svg)
    return svg.replace("<svg ", f'<svg role="img" aria-labelledby="{prefix}-title" ', 1).replace(
        ">", f'><title id="{prefix}-title">{_e(prefix)}</title>', 1)


class _AddressAxis:
    """Line addresses -> plot height, with long gaps between clusters of lines squeezed.

    Findings cluster in a few buffers far apart (RAM at 0x40000000, a frame
    buffer at 0x48000000); a linear axis would draw them as two dots. Gaps
    longer than :data:`GAP_LINES` lines are drawn as a short break instead.
    """

    GAP_LINES = 64

    def __init__(self, lines: Any, line_size: int):
        self.line_size = line_size
        u = distinct(np.asarray(lines, dtype=np.uint64))
        self.lines = u
        gaps = np.diff(u).astype(np.float64)
        big = gaps > self.GAP_LINES * line_size
        kept = float(gaps[~big].sum()) + line_size
        self.squeezed = max(4.0 * line_size, 0.06 * kept)
        steps = np.where(big, self.squeezed, gaps)
        self.y = np.concatenate([[0.0], np.cumsum(steps)]) if u.size else np.zeros(0)
        self.cluster_starts = np.concatenate([[0], np.nonzero(big)[0] + 1]) if u.size else np.zeros(0, int)
        self.breaks = self.y[self.cluster_starts[1:]] - self.squeezed / 2 if u.size else np.zeros(0)

    def __call__(self, lines: Any) -> Any:
        """Plot height of each line address (addresses must be lines with findings)."""
        idx = np.searchsorted(self.lines, np.asarray(lines, dtype=np.uint64))
        return self.y[np.clip(idx, 0, max(len(self.y) - 1, 0))]

    @property
    def top(self) -> float:
        return float(self.y[-1]) + self.line_size if len(self.y) else float(self.line_size)

    def ticks(self, most: int = 8) -> tuple[list[float], list[str]]:
        """Every cluster's first line, then lines spread evenly among those with findings."""
        if not len(self.lines):
            return [], []
        starts = self.cluster_starts
        step = max(1, -(-len(starts) // most))
        picked = set(starts[::step].tolist())
        room = most - len(picked)
        if room > 0:
            picked |= set(np.linspace(0, len(self.lines) - 1, room + 1).round().astype(int).tolist())
        idx = sorted(picked)
        # keep labels apart: at least 1/(2*most) of the axis between two ticks
        keep, last = [], None
        for i in idx:
            if last is None or self.y[i] - self.y[last] >= self.top / (2 * most) or i in starts:
                keep.append(i)
                last = i
        return [float(self.y[i]) for i in keep], [f"{int(self.lines[i]):#x}" for i in keep]


def _pixel_keys(ax: Any, *points: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One integer per row: the pixels of its ``points`` in the plot's bitmap (display units at the
    figure's dpi, where a rasterized artist is drawn), 16 bits a coordinate. A figure is a few
    hundred pixels; coordinates far outside it (clipped from view anyway) are held at its margin."""
    key = np.zeros(len(points[0][0]), np.int64)
    for x, y in points:
        px = np.rint(ax.transData.transform(np.column_stack([x, y]))).clip(-4096, 28671).astype(np.int64) + 4096
        key = (key << 32) | (px[:, 0] << 16) | px[:, 1]
    return key


def _one_per_pixel(ax: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rows of the last point at each pixel of the plot's bitmap, in order: the earlier ones
    there would be drawn under it."""
    last = (pl.DataFrame({"k": _pixel_keys(ax, (x, y))}).with_row_index()
            .group_by("k").agg(pl.col("index").last()))
    return np.sort(last["index"].to_numpy())


def _boxes_per_pixel(ax: Any, x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray,
                     alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boxes with the same corners on the bitmap's pixels drawn once, with the opacity of as
    many stacked at ``alpha`` as fell there (what drawing them all would give)."""
    each = (pl.DataFrame({"k": _pixel_keys(ax, (x0, y0), (x1, y1))}).with_row_index()
            .group_by("k").agg(pl.col("index").first(), n=pl.len()).sort("index"))
    first = each["index"].to_numpy()
    return x0[first], x1[first], y0[first], y1[first], 1.0 - (1.0 - alpha) ** each["n"].to_numpy()


def plane_svg(data: ReportData, mitigation: str, axis: _AddressAxis | None = None) -> str:
    """Findings of one mitigation on the (seq, address) plane; ranges as shaded boxes over their fix window.

    ``axis``: the address axis of every mitigation's findings (one per report: it sorts every line).
    """
    _, Figure, PolyCollection, MaxNLocator = _matplotlib()
    from matplotlib.colors import to_rgba

    f = data.findings
    sub = f.filter(pl.col("mitigation") == mitigation)
    # Fixed axes box (not a constrained layout) so that every mitigation's plane has the same size.
    fig = Figure(figsize=(9, 4.2), dpi=100)
    ax = fig.add_axes((0.13, 0.13, 0.56, 0.78))
    if axis is None:
        axis = _AddressAxis(f["line"].to_numpy(), data.line_size)
    if f.height:
        lo_s, hi_s = int(f["seq"].min()), int(f["seq"].max())
        lo_s = min(lo_s, int(f["fix_after_seq"].min()))
        pad_s, pad_a = max(1, (hi_s - lo_s) // 20), axis.top / 20
        ax.set_xlim(lo_s - pad_s, hi_s + pad_s)
        ax.set_ylim(-pad_a, axis.top + pad_a)
        for y in axis.breaks:
            ax.axhline(y, color="#8c959f", linewidth=0.8, linestyle=(0, (4, 3)))
        ticks, labels = axis.ticks()
        ax.set_yticks(ticks, labels)
    rng = data.ranges.filter(pl.col("mitigation") == mitigation)
    if rng.height:
        # One (n, 4, 2) array of corners: no Python object per range.
        x0 = rng["fix_after_seq"].to_numpy().astype(np.float64)
        x1 = np.maximum(rng["fix_before_seq"].to_numpy().astype(np.float64), x0 + 0.5)
        y0 = axis(rng["start"].to_numpy())
        y1 = axis((rng["end"] - data.line_size).to_numpy()) + data.line_size
        face, edge = np.array(to_rgba("#8c959f")), np.array(to_rgba("#57606a"))
        alpha = np.full(len(x0), 0.22)
        boxed = rng.height > RASTER_ABOVE // 10  # drawn as a bitmap: each pixel box once
        if boxed:
            x0, x1, y0, y1, alpha = _boxes_per_pixel(ax, x0, x1, y0, y1, 0.22)
        verts = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1),
                          np.stack([x0, y1], 1)], axis=1)
        ax.add_collection(PolyCollection(verts, facecolors=np.column_stack([np.tile(face[:3], (len(x0), 1)), alpha]),
                                         edgecolors=np.column_stack([np.tile(edge[:3], (len(x0), 1)), alpha]),
                                         linewidth=0.6, rasterized=boxed),
                          autolim=False)  # (the limits are set above: no walk over every box's extent)
        ax.plot([], [], color="#8c959f", alpha=0.5, linewidth=6, label="range: fix window x lines")
    raster = sub.height > RASTER_ABOVE
    for (kind, cause), grp in sorted(sub.group_by("kind", "cause"), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        x, y = grp["seq"].to_numpy(), axis(grp["line"].to_numpy()) + data.line_size / 2
        if raster:  # drawn as a bitmap: one marker per pixel (the others would land on it)
            keep = _one_per_pixel(ax, x, y)
            x, y = x[keep], y[keep]
        ax.scatter(x, y, s=28, marker=_KIND_MARKER.get(kind, "o"), color=_CAUSE_COLOUR.get(cause, "#000000"),
                   label=f"{kind}, {cause}", rasterized=raster, edgecolors="none", alpha=0.9)
    if sub.height == 0:
        ax.text(0.5, 0.5, "no findings", transform=ax.transAxes, ha="center", va="center", color="#57606a",
                fontsize=14)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("event order (seq)")
    ax.set_ylabel("line address (long gaps squeezed)")
    ax.set_title(f"findings under {mitigation}", fontsize=11)
    ax.grid(True, color="#eaeef2", linewidth=0.6)
    if sub.height:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _svg(fig, f"plane-{_slug(mitigation)}")


def cost_svg(data: ReportData) -> str:
    """Per mitigation: findings by kind beside what the mitigation costs."""
    _, Figure, *_rest = _matplotlib()
    ms = data.mitigations
    n = max(len(ms), 1)
    fig = Figure(figsize=(9, 1.2 + 0.45 * n), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(ms)))
    base = [0] * len(ms)
    kind_colour = dict(zip(KINDS, ("#d62728", "#ff7f0e", "#9467bd")))
    for kind in KINDS:
        vals = [sum(v for (k, _c), v in data.matrix[m].items() if k == kind) for m in ms]
        if any(vals):
            left.barh(ys, vals, left=base, color=kind_colour[kind], label=kind, height=0.6)
            base = [b + v for b, v in zip(base, vals)]
    left.set_title("findings", fontsize=11)
    base = [0] * len(ms)
    for key, label, colour in (("traps", "traps taken", "#1f77b4"), ("inserted_ops", "maintenance ops inserted",
                                                                     "#2ca02c"),
                               ("retyped_accesses", "accesses retyped", "#8c564b")):
        vals = []
        for m in ms:
            c = data.costs[m]
            v = c.get(key, 0) if c else 0
            vals.append(sum(v.values()) if isinstance(v, dict) else int(v))
        if any(vals):
            right.barh(ys, vals, left=base, color=colour, label=label, height=0.6)
            base = [b + v for b, v in zip(base, vals)]
    right.set_title("cost", fontsize=11)
    left.set_yticks(ys, ms)
    left.invert_yaxis()
    for ax in (left, right):
        ax.grid(True, axis="x", color="#eaeef2", linewidth=0.6)
        ax.set_axisbelow(True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.4 / n), ncols=3)
    return _svg(fig, "cost")


# --------------------------------------------------------------------------
# Page


def _table(head: list[str], rows: list[list[tuple[str, str]]], cls: str = "") -> str:
    """``rows`` hold (html, css class) cells; ``head`` is plain text."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>" for v, c in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _matrix_table(data: ReportData) -> str:
    rows = []
    for m in data.mitigations:
        cells = [(f"<code>{_e(m)}</code>", "")]
        for kc in data.columns:
            v = data.matrix[m][kc]
            cells.append((str(v), "n" if v else "n z"))
        cells.append((f"<b>{data.total(m)}</b>", "n"))
        rows.append(cells)
    return _table(["mitigation", *(f"{k} / {c}" for k, c in data.columns), "total"], rows, "matrix")


def _cost_table(data: ReportData) -> str:
    rows = []
    for m in data.mitigations:
        c = data.costs[m]
        if not c:
            rows.append([(f"<code>{_e(m)}</code>", ""), *[("-", "n")] * 4, ("", "")])
            continue
        detail = ", ".join([f"{n} {_e(k)}" for k, n in c["traps"].items()]
                           + [f"{r['count']} {_e(r['from'])}&rarr;{_e(r['to'])}" for r in c["retyped"]]
                           + ([f"{c['removed_ops']} ops removed"] if c.get("removed_ops") else []))
        rows.append([(f"<code>{_e(m)}</code>", ""), (str(sum(c["traps"].values())), "n"),
                     (str(c["inserted_ops"]), "n"), (str(c["inserted_lines"]), "n"),
                     (str(c["retyped_accesses"]), "n"), (detail, "")])
    head = ["mitigation", "traps", "ops inserted", "lines covered", "accesses retyped", "detail"]
    if data.baseline:
        for m, row in zip(data.mitigations, rows):
            fixed, new = data.against.get(m, (None, None))
            row += [("-" if fixed is None else str(fixed), "n"), ("-" if new is None else str(new), "n")]
        head += [f"fixes (of {data.baseline})", "introduces"]
    return _table(head, rows, "costs")


def _ranges_section(data: ReportData, m: str) -> str:
    n, shown = data.range_counts[m], data.shown[m]
    out = [f'<h2 id="ranges-{_slug(m)}">Under <code>{_e(m)}</code>: {data.total(m)} findings, '
           f"{n} ranges needing maintenance</h2>"]
    if not shown:
        out.append("<p>No maintenance needed: no findings under this mitigation.</p>")
        return "\n".join(out)
    rows = []
    for i, r in enumerate(shown, 1):
        row = r.row
        evs = "".join(f'<li><span class="mono">seq {ev.seq}</span> {_e(ev.describe())}</li>'
                      for ev in r.events[:MAX_EVENTS])
        if len(r.events) > MAX_EVENTS:
            evs += f"<li>... and {len(r.events) - MAX_EVENTS} more events</li>"
        rows.append([
            (str(i), "n"), (_e(row["fix_op"]), ""), (f'<span class="mono">{_e(r.span)}</span>', ""),
            (str(row["lines"]), "n"), (_e(row.get("fix_agent") or "?"), ""),
            (str(row["fix_after_seq"]), "n"), (str(row["fix_before_seq"]), "n"),
            (_e(f"{', '.join(row['kinds'])}, {row['cause']}"), ""), (str(row["findings"]), "n"),
            (f'<ul class="ev">{evs}</ul>{_e(r.why)}', ""),
        ])
    out.append(_table(["#", "fix", "range", "lines", "by", "after seq", "before seq", "finding", "findings",
                       "events and why"], rows, "ranges"))
    if n > len(shown):
        out.append(f"<p>... and {n - len(shown)} more ranges under <code>{_e(m)}</code> "
                   "(the json report lists them all).</p>")
    return "\n".join(out)


def render(data: ReportData) -> str:
    _matplotlib()  # fail before any work when the extra is missing
    trace = data.meta.get("trace") or "trace"
    meta_rows = [[(_e(k), ""), (f"<code>{_e(v)}</code>" if k in ("trace", "sha256") else _e(v), "")]
                 for k, v in header_fields(data.meta)]
    meta_rows.append([("mitigations", ""), (", ".join(f"<code>{_e(m)}</code>" for m in data.mitigations), "")])
    legend = "".join(f"<li>{_e(f'{k} / {c}')}: {_e(title(k, c))}</li>" for k, c in data.columns)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>tracekit report: {_e(trace)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>tracekit report: cache-coherency findings</h1>",
        _table(["", ""], meta_rows, "meta"),
        '<p class="note">A finding says the architecture permits a read to return stale data, a write to be lost '
        "or an instruction fetch to execute stale code, under the speculation model above; it is not a claim "
        "that a particular CPU will do so.</p>",
        '<h2 id="matrix">Findings per mitigation</h2>',
        _matrix_table(data),
        f"<ul>{legend}</ul>" if legend else "",
        '<h2 id="costs">Cost per mitigation</h2>',
        _cost_table(data),
        '<h2 id="plots">Plots</h2>',
        '<figure id="plot-cost">' + cost_svg(data)
        + "<figcaption>Findings by kind (left) against what each mitigation costs (right).</figcaption></figure>",
    ]
    axis = _AddressAxis(data.findings["line"].to_numpy(), data.line_size)  # the same in every plane
    for m in data.mitigations:
        parts.append(f'<figure id="plot-plane-{_slug(m)}">' + plane_svg(data, m, axis)
                     + f"<figcaption>Findings under <code>{_e(m)}</code>: event order (seq) against line address;"
                     " shaded boxes are the ranges needing maintenance, spanning their fix window."
                     "</figcaption></figure>")
    for m in data.mitigations:
        parts.append(_ranges_section(data, m))
    if not data.has_trace:
        parts.append('<p class="note">Events are described from the findings; give the trace (--trace) to see '
                     "every event's operation, bytes and memory type.</p>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


def analysis_html(analysis: Any) -> str:
    """A small HTML table for ``Analysis._repr_html_``: provenance, matrix and costs, no plots."""
    data = prepare(analysis, max_ranges=0)
    head = ", ".join(f"{_e(k)} <code>{_e(v)}</code>" for k, v in header_fields(data.meta)
                     if k in ("trace", "line size", "speculation", "engine"))
    ranges = "".join(f"<li><code>{_e(m)}</code>: {data.range_counts[m]} ranges need maintenance</li>"
                     for m in data.mitigations)
    return (f"<div><p><b>tracekit analysis</b>: {head}</p>{_matrix_table(data)}{_cost_table(data)}"
            f"<ul>{ranges}</ul></div>")
