"""Findings in the coherence model's words: one sentence of why for each row.

Reports, the analyze summary and notebooks share these sentences so that a
finding reads the same everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from .model import CAUSES, KINDS


#: What each (kind, cause) means, short, for table headers and legends.
CAUSE_TITLES = {
    ("stale-read", "dirty-not-cleaned"): "H1 stale read: dirty line not cleaned",
    ("stale-read", "stale-line-not-invalidated"): "H2 stale read: stale line not invalidated",
    ("lost-write", "clobbered-by-writeback"): "H3 lost write: clobbered by write-back",
    ("stale-read", "clobbered-by-writeback"): "H3 stale read: clobbered by write-back",
    ("lost-write", "discarded-by-invalidate"): "H4 lost write: discarded by invalidation",
    ("stale-read", "discarded-by-invalidate"): "H4 stale read: discarded by invalidation",
    ("stale-ifetch", "icache-not-invalidated"): "stale instruction fetch: I-cache not invalidated",
}

_FIX_WORDS = {
    "clean": "clean (DC CVAC)",
    "invalidate": "invalidate (DC IVAC, or DC CIVAC)",
    "clean+invalidate": "clean+invalidate (DC CIVAC; or clean before the invalidation)",
    "ic-invalidate": "invalidate the I-cache (IC IVAU)",
}


def _bytes(row: dict[str, Any]) -> str:
    return f"{row['addr']:#x}+{row['size']}"


def _other(row: dict[str, Any]) -> str:
    if row.get("other_seq") is None:
        return "an earlier event"
    who = row.get("other_agent") or "?"
    return f"{who} (seq {row['other_seq']})"


def explain(row: dict[str, Any]) -> str:
    """One sentence: what may go wrong at this finding, why, and the fix window."""
    kind, cause, line = row["kind"], row["cause"], row["line"]
    who, at = row["agent"], _bytes(row)
    if cause == "dirty-not-cleaned":
        why = (f"{who} reads {at} from memory (non-cacheable), but the cacheable write by {_other(row)} "
               f"may still sit dirty in the cache: line {line:#x} is not cleaned in between.")
    elif cause == "stale-line-not-invalidated":
        why = (f"{who} reads {at} through the cache, but the last write, by {_other(row)}, went to memory "
               f"while line {line:#x} may have been cached, and the line is not invalidated after it.")
    elif cause == "clobbered-by-writeback" and kind == "lost-write":
        why = (f"{who} writes {at} to memory while line {line:#x} may be dirty from the cacheable write by "
               f"{_other(row)}; the line's later write-back may put the older bytes back over it.")
    elif cause == "clobbered-by-writeback":
        why = (f"{who} reads {at}, written to memory by {_other(row)}, but a dirty copy of line {line:#x} "
               f"may have been written back over those bytes.")
    elif cause == "discarded-by-invalidate" and kind == "lost-write":
        why = (f"{who}'s cacheable write of {at} may be thrown away: the invalidation by {_other(row)} "
               f"may discard line {line:#x} before it is cleaned.")
    elif cause == "discarded-by-invalidate":
        why = (f"{who} reads {at}, whose cacheable write by {_other(row)} may have been discarded by an "
               f"invalidation of line {line:#x} before it was cleaned.")
    else:
        why = (f"{who} fetches instructions at {at} written by {_other(row)} with no I-cache invalidation "
               f"of line {line:#x} after the write (after a cacheable write, a clean to PoU must come first).")
    fix = _FIX_WORDS[row["fix_op"]]
    return (f"{why} Fix: {fix} line {line:#x} after seq {row['fix_after_seq']} and before seq "
            f"{row['fix_before_seq']}" + (f", by {row['fix_agent']}." if row.get("fix_agent") else "."))


def kind_cause_rank(findings: pl.DataFrame) -> np.ndarray:
    """Each finding's kind and cause as one integer that orders like the strings, kind first:
    the findings' order (seq, line, kind, cause) in integers, for the fast engine's merges and
    ``compare``'s. A kind or cause outside the model raises a polars error."""
    ranks = []
    for column in ("kind", "cause"):
        s = findings[column]
        if not isinstance(s.dtype, pl.Enum):
            s = s.cast(pl.String).cast(pl.Enum(sorted(KINDS if column == "kind" else CAUSES)))
        names = s.dtype.categories.to_list()
        lut = np.argsort(np.argsort(np.array(names, dtype=object))).astype(np.uint8)
        ranks.append(lut[s.to_physical().to_numpy()])
    return ranks[0].astype(np.int64) * 8 + ranks[1]
