"""The mitigation catalog (coherence model section 6), one module per family.

``apply_mitigation(resolved, "kvm-cache-toggle+guest-boot-inval", info)``
transforms a resolved frame left to right and returns the frame sorted by
(seq, sub), the settings to replay it with, and its cost. Custom mitigations
register from Python with :func:`register_mitigation`. docs/mitigations.md
defines every transformation and the cost.
"""

from __future__ import annotations

import json

from .base import (
    ACTORS,
    MITIGATIONS,
    Mitigation,
    MitigationContext,
    MitigationCost,
    MitigationError,
    add_events,
    apply_mitigation,
    catalog,
    expand,
    finalize,
    get_mitigation,
    insertion_sub,
    inserted_events,
    mitigation_cost,
    parse_spec,
    register_mitigation,
    unregister_mitigation,
)
from . import none, guest, host, hypervisor  # noqa: E402,F401  (register the catalog)
from .compare import Comparison, compare

#: Catalog order: the coherence model's table.
BUILTIN_ORDER = (
    "none", "mair-trap", "guest-boot-inval", "guest-dma-cmo", "coherent-device", "host-cmo",
    "host-uncached", "kvm-cache-toggle", "kvm-fault-clean", "s2fwb",
)


def _reorder() -> None:
    items = dict(MITIGATIONS)
    MITIGATIONS.clear()
    for name in BUILTIN_ORDER:
        MITIGATIONS[name] = items.pop(name)
    MITIGATIONS.update(items)


_reorder()


def mitigations(*, builtin_only: bool = False) -> list[Mitigation]:
    """Every mitigation, in catalog order: what ``tracekit mitigations`` lists."""
    return catalog(builtin_only=builtin_only)


def format_catalog(entries: list[Mitigation], fmt: str = "text") -> str:
    """The catalog as plain text, JSON or the Markdown of docs/readme/mitigations.md."""
    if fmt == "json":
        return json.dumps([m.to_dict() for m in entries], indent=2, ensure_ascii=False) + "\n"
    if fmt == "markdown":
        out = ["| mitigation | who acts | what it changes | known limits |", "|---|---|---|---|"]
        for m in entries:
            out.append(f"| `{m.name}` | {m.actor} | {m.changes} | {m.limits} |")
        return "\n".join(out) + "\n"
    if fmt != "text":
        raise ValueError(f"format: expected text, json or markdown, found {fmt!r}")
    import textwrap

    out = []
    for m in entries:
        out.append(f"{m.name}  ({m.actor})")
        for label, text in (("changes: ", m.changes), ("limits:  ", m.limits)):
            out += textwrap.wrap(text, 78, initial_indent="  " + label, subsequent_indent=" " * 11,
                                 break_on_hyphens=False, break_long_words=False)
        out.append("")
    return "\n".join(out)


__all__ = [
    "ACTORS", "MITIGATIONS", "BUILTIN_ORDER", "Mitigation", "MitigationContext", "MitigationCost",
    "MitigationError", "Comparison", "add_events", "apply_mitigation", "catalog", "compare", "expand",
    "finalize", "format_catalog", "get_mitigation", "insertion_sub", "inserted_events",
    "mitigation_cost", "mitigations", "parse_spec", "register_mitigation", "unregister_mitigation",
]
