"""JSON report for tools: matrix, costs, every range and the run's metadata.

Keys are sorted and addresses are integers, so the same findings give the
same bytes and a tool can diff two reports.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from ._common import ReportData, dumps, ranges_with_why

NAME = "json"
SUFFIX = ".json"
DESCRIPTION = "machine-readable: matrix, costs, all ranges and metadata"
VERSION = 1

_META_KEYS = ("trace", "trace_sha256", "tracekit_version", "line_size", "speculation", "engine", "mitigations")


def content(data: ReportData) -> dict[str, Any]:
    """The report as a JSON-ready dict (``schema`` ``tracekit-report``, ``version`` 1)."""
    return {
        "schema": "tracekit-report",
        "version": VERSION,
        "meta": {k: data.meta.get(k) for k in _META_KEYS},
        "matrix": [
            {
                "mitigation": m,
                "total": data.total(m),
                "counts": [{"kind": k, "cause": c, "count": data.matrix[m][(k, c)]} for k, c in data.columns],
            }
            for m in data.mitigations
        ],
        "costs": {m: data.costs[m] or None for m in data.mitigations},
        "against": {
            "baseline": data.baseline,
            "mitigations": {m: {"fixed": f, "introduced": i} for m, (f, i) in data.against.items()},
        },
        "ranges": _RANGES,
        "range_counts": dict(data.range_counts),
    }


_RANGES = "@@ranges@@"


def render(data: ReportData) -> str:
    """The document with sorted keys; the ranges, possibly millions, serialised by polars in one go.

    Each range is one compact line of JSON (keys in the documented column
    order, then ``why``), so the file stays diffable and is written without a
    Python loop over ranges.
    """
    doc = dumps(content(data))
    rng = ranges_with_why(data)
    if rng.height == 0:
        return doc.replace(f'"{_RANGES}"', "[]")
    rows = rng.select(pl.struct(pl.all()).struct.json_encode().alias("j"))["j"]
    body = "[\n    " + ",\n    ".join(rows.to_list()) + "\n  ]"
    return doc.replace(f'"{_RANGES}"', body)
