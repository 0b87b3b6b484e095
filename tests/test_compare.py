"""`compare`: what each mitigation fixes and introduces against the baseline, whatever the row order.

Rule under test (mitigations/compare.py): a finding is the same finding under two
mitigations when (seq, line, kind, cause) match; ``fixed[m]`` are the baseline's rows whose
key m lacks, ``introduced[m]`` m's rows whose key the baseline lacks, each in key order.
Frames written by analyze (each mitigation's rows in one run, in key order) are matched by
one merge; any other frame by anti joins. Both must give what a set of keys gives.
"""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from tracekit.analyze import analyze
from tracekit.mitigations import compare
from tracekit.schema import FINDINGS_SCHEMA, conform
from tracekit.synth import synth

KINDS = ("lost-write", "stale-ifetch", "stale-read")
CAUSES = ("clobbered-by-writeback", "dirty-not-cleaned", "stale-line-not-invalidated")
MITIGATIONS = ("none", "mair-trap", "host-cmo")

finding = st.tuples(st.sampled_from(MITIGATIONS), st.sampled_from(KINDS), st.sampled_from(CAUSES),
                    st.integers(0, 6), st.integers(0, 3))


def _frame(rows, compact: bool) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema={"mitigation": pl.String, "kind": pl.String, "cause": pl.String,
                                    "seq": pl.UInt64, "line": pl.UInt64}, orient="row")
    return conform(df.with_columns(src_line=pl.col("seq") * 10 + pl.col("line")), FINDINGS_SCHEMA, compact=compact)


def _keys(df: pl.DataFrame) -> list[tuple]:
    return [(r["seq"], r["line"], r["kind"], r["cause"]) for r in df.iter_rows(named=True)]


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(rows=st.lists(finding, max_size=40), grouped=st.booleans(), compact=st.booleans())
def test_fixed_and_introduced_are_the_set_differences_of_the_keys(rows, grouped, compact):
    if grouped:  # as analyze writes them: by mitigation, each in key order (the fast path)
        rows = sorted(rows, key=lambda r: (MITIGATIONS.index(r[0]), r[3], r[4], r[1], r[2]))
    df = _frame(rows, compact)
    cmp = compare(df, list(MITIGATIONS))
    keys = {m: {(s, ln, k, c) for mm, k, c, s, ln in rows if mm == m} for m in MITIGATIONS}
    for m in MITIGATIONS[1:]:
        want_fixed = sorted((s, ln, k, c) for mm, k, c, s, ln in rows if mm == "none" and (s, ln, k, c) not in keys[m])
        want_new = sorted((s, ln, k, c) for mm, k, c, s, ln in rows if mm == m and (s, ln, k, c) not in keys["none"])
        assert _keys(cmp.fixed[m]) == want_fixed
        assert _keys(cmp.introduced[m]) == want_new
        assert cmp.fixed[m].schema["kind"] == pl.String  # strings, whatever the frame held
    for m in MITIGATIONS:
        row = cmp.matrix.filter(pl.col("mitigation") == m)
        assert row["total"].item() == sum(1 for r in rows if r[0] == m)


def test_an_analysis_compares_the_same_in_its_own_order_and_shuffled(tmp_path):
    """The merge (rows as analyze wrote them) and the joins (the same rows shuffled) agree on a
    real catalog run, row for row."""
    trace = synth(20_000, tmp_path / "t.parquet", seed=7, profile="mixed")
    a = analyze(trace, ["all"])
    fast = a.compare()
    slow = compare(a.compact_findings.sample(fraction=1.0, shuffle=True, seed=3), a.mitigations)
    assert_frame_equal(fast.matrix, slow.matrix)
    assert_frame_equal(fast.counts, slow.counts)
    assert sum(f.height for f in fast.fixed.values()) > 0 and sum(f.height for f in fast.introduced.values()) > 0
    for m in fast.fixed:
        assert_frame_equal(fast.fixed[m], slow.fixed[m])
        assert_frame_equal(fast.introduced[m], slow.introduced[m])
