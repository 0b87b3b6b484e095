"""tracekit.ranges: which lines coalesce into one maintenance range, and which do not.

Expected ranges are worked out by hand from the coalescing rule: lines that
are contiguous (step = line size) and agree on mitigation, cause, fix_op, the
fix window (fix_after_seq, fix_before_seq), fix_agent and region form one
range [first line, last line + line size).
"""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reports_support as rs
from tracekit.errors import UsageError
from tracekit.ranges import RANGES_SCHEMA, ranges
from tracekit.schema import conform


def finding(line, *, mitigation="none", cause="stale-line-not-invalidated", kind="stale-read", fix_op="invalidate",
            after=1, before=5, agent="guest.0", fix_agent="guest.0", seq=None, other_seq=None, region="ram",
            line_size=64):
    return dict(mitigation=mitigation, kind=kind, cause=cause, seq=before if seq is None else seq, agent=agent,
                addr=line, size=line_size, line=line, other_seq=after if other_seq is None else other_seq,
                other_agent="guest.0", fix_op=fix_op, fix_agent=fix_agent, fix_after_seq=after,
                fix_before_seq=before, region=region, phase=None, src="t.tkt", src_line=1)


def frame(rows):
    return conform(pl.DataFrame(rows), "findings-v1")


def spans(df):
    return [(r["mitigation"], r["start"], r["end"]) for r in df.iter_rows(named=True)]


def test_contiguous_lines_with_the_same_fix_become_one_range():
    df = frame([finding(0x1000 + 64 * i) for i in range(4)])
    out = ranges(df, 64)
    assert spans(out) == [("none", 0x1000, 0x1100)]
    row = out.row(0, named=True)
    assert row["lines"] == 4 and row["findings"] == 4
    assert (row["fix_after_seq"], row["fix_before_seq"], row["fix_agent"]) == (1, 5, "guest.0")


def test_a_missing_line_splits_the_range():
    df = frame([finding(0x1000), finding(0x1040), finding(0x10C0)])  # 0x1080 has no finding
    assert spans(ranges(df, 64)) == [("none", 0x1000, 0x1080), ("none", 0x10C0, 0x1100)]


def test_contiguity_follows_the_line_size():
    # With 128-byte lines, 0x1000 and 0x1080 are neighbours; with 64-byte lines they are not.
    df = frame([finding(0x1000, line_size=128), finding(0x1080, line_size=128)])
    assert spans(ranges(df, 128)) == [("none", 0x1000, 0x1100)]
    assert spans(ranges(df, 64)) == [("none", 0x1000, 0x1040), ("none", 0x1080, 0x10C0)]


@pytest.mark.parametrize("field,other", [
    ("after", 2), ("before", 6), ("fix_agent", "host.0"), ("region", "fb"), ("mitigation", "mair-trap"),
])
def test_adjacent_lines_that_differ_in_the_key_stay_apart(field, other):
    second = finding(0x1040, **{field: other})
    out = ranges(frame([finding(0x1000), second]), 64)
    assert out.height == 2
    assert sorted((r["start"], r["end"]) for r in out.iter_rows(named=True)) == [(0x1000, 0x1040), (0x1040, 0x1080)]


def test_adjacent_lines_with_different_cause_and_fix_stay_apart():
    h1 = finding(0x1040, cause="dirty-not-cleaned", fix_op="clean")
    out = ranges(frame([finding(0x1000), h1]), 64)
    # sorted by start first (the documented order)
    assert [(r["cause"], r["fix_op"], r["start"]) for r in out.iter_rows(named=True)] == [
        ("stale-line-not-invalidated", "invalidate", 0x1000), ("dirty-not-cleaned", "clean", 0x1040)]


def test_several_findings_on_one_line_count_once_in_lines():
    # An H3 lost write and the stale read of its clobbered bytes share the fix (clean after 6, before 8).
    lost = finding(0x2000, kind="lost-write", cause="clobbered-by-writeback", fix_op="clean", after=6, before=8,
                   seq=8, other_seq=6)
    read = finding(0x2000, kind="stale-read", cause="clobbered-by-writeback", fix_op="clean", after=6, before=8,
                   seq=9, other_seq=8)
    out = ranges(frame([read, lost]), 64)
    assert out.height == 1
    row = out.row(0, named=True)
    assert (row["start"], row["end"], row["lines"], row["findings"]) == (0x2000, 0x2040, 1, 2)
    assert row["kinds"] == ["stale-read", "lost-write"]  # model order, not input order
    assert row["seqs"] == [8, 9] and row["other_seqs"] == [6, 8]


def test_null_fix_agent_lines_coalesce_with_each_other():
    df = frame([finding(0x1000, fix_agent=None), finding(0x1040, fix_agent=None)])
    out = ranges(df, 64)
    assert spans(out) == [("none", 0x1000, 0x1080)] and out["fix_agent"].to_list() == [None]


def test_row_order_of_the_input_does_not_matter():
    df = rs.findings()
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=7)
    # mitigation order is by first appearance, so keep `none` first in both
    shuffled = pl.concat([shuffled.filter(pl.col("mitigation") == "none"),
                          shuffled.filter(pl.col("mitigation") != "none")])
    assert ranges(shuffled, 64).equals(ranges(df, 64))


def test_hand_made_story_gives_the_hand_computed_ranges():
    """reports_support's story: five ranges under none, the three scanout ones under guest-boot-inval."""
    out = ranges(rs.findings(), 64)
    got = [(r["mitigation"], r["fix_op"], r["cause"], r["start"], r["end"], r["fix_agent"], r["fix_after_seq"],
            r["fix_before_seq"], r["findings"]) for r in out.iter_rows(named=True)]
    scanout = lambda m: [  # noqa: E731
        (m, "clean", "clobbered-by-writeback", rs.FB, rs.FB + 64, "guest.0", 6, 8, 2),
        (m, "clean", "dirty-not-cleaned", rs.FB, rs.FB + 256, "guest.0", 6, 7, 4),
        (m, "invalidate", "stale-line-not-invalidated", rs.FB, rs.FB + 64, "host.0", 8, 9, 1),
    ]
    assert got == [
        ("none", "invalidate", "stale-line-not-invalidated", rs.RAM, rs.RAM + 128, "host.0", 1, 4, 2),
        ("none", "invalidate", "stale-line-not-invalidated", rs.RAM, rs.RAM + 4096, "guest.0", 1, 5, 64),
        *scanout("none"),
        *scanout("guest-boot-inval"),
    ]


def test_no_findings_give_an_empty_frame_with_the_documented_columns():
    out = ranges(rs.findings().head(0), 64)
    assert out.height == 0 and dict(out.schema) == RANGES_SCHEMA


@pytest.mark.parametrize("bad", [0, 48, -64, True])
def test_line_size_must_be_a_power_of_two(bad):
    with pytest.raises(UsageError, match="power of two"):
        ranges(rs.findings(), bad)


def naive_ranges(rows, line_size):
    """The rule written as a loop over sorted distinct (key, line) pairs (the test's oracle)."""
    keyed = sorted({((r["mitigation"], r["cause"], r["fix_op"], r["fix_after_seq"], r["fix_before_seq"],
                      r["fix_agent"], r["region"]), r["line"]) for r in rows})
    out = []
    for key, line in keyed:
        if out and out[-1][0] == key and out[-1][2] == line:
            out[-1][2] = line + line_size
        else:
            out.append([key, line, line + line_size])
    return sorted((k[0], s, e, k[1], k[3], k[4]) for k, s, e in out)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.sampled_from(["none", "m2"]), st.integers(0, 2),
                          st.sampled_from(["stale-line-not-invalidated", "dirty-not-cleaned"])),
                min_size=1, max_size=40))
def test_matches_the_rule_written_as_a_loop(items):
    rows = [finding(0x4000 + 64 * line, mitigation=m, after=a, before=a + 3, cause=c,
                    fix_op="invalidate" if c.startswith("stale") else "clean") for line, m, a, c in items]
    out = ranges(frame(rows), 64)
    got = sorted((r["mitigation"], r["start"], r["end"], r["cause"], r["fix_after_seq"], r["fix_before_seq"])
                 for r in out.iter_rows(named=True))
    assert got == naive_ranges(rows, 64)
    assert out["findings"].sum() == len(rows)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["none", "m2"]), st.integers(0, 1),
                          st.sampled_from(["stale-read", "lost-write", "stale-ifetch"]), st.integers(0, 6),
                          st.one_of(st.none(), st.integers(0, 6)), st.sampled_from(["guest.0", None])),
                min_size=1, max_size=40))
def test_each_range_lists_its_findings_kinds_and_events_as_the_loop_does(items):
    """Rule: a range's findings count, kinds (stale-read, lost-write, stale-ifetch order), seqs
    and other_seqs (ascending, distinct, nulls dropped) are those of the findings on its lines."""
    rows = []
    for line, m, a, kind, seq, other, fix_agent in items:
        r = finding(0x8000 + 64 * line, mitigation=m, after=a, before=a + 9, kind=kind, seq=seq, fix_agent=fix_agent)
        r["other_seq"] = other
        rows.append(r)
    out = ranges(frame(rows), 64)
    got = {(g["mitigation"], g["start"], g["end"], g["fix_after_seq"], g["fix_agent"]):
           (g["findings"], g["kinds"], g["seqs"], g["other_seqs"]) for g in out.iter_rows(named=True)}
    want: dict[tuple, list] = {}  # the range key here: the other key columns are the same in every row
    for r in rows:
        want.setdefault((r["mitigation"], r["fix_after_seq"], r["fix_agent"]), []).append(r)
    for (m, start, end, after, agent), (n, kinds, seqs, others) in got.items():
        mine = [r for r in want[(m, after, agent)] if start <= r["line"] < end]
        assert n == len(mine)
        order = ["stale-read", "lost-write", "stale-ifetch"]
        assert kinds == sorted({r["kind"] for r in mine}, key=order.index)
        assert seqs == sorted({r["seq"] for r in mine})
        assert others == sorted({r["other_seq"] for r in mine if r["other_seq"] is not None})
    assert sum(n for n, *_ in got.values()) == len(rows)


_KEYED = st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["none", "m2", "m3"]),
                            st.sampled_from([0, 1, 2, (1 << 62) + 1, None]), st.sampled_from([3, 4, None]),
                            st.sampled_from(["guest.0", "guest.1", None]), st.sampled_from(["ram", "fb", None]),
                            st.sampled_from(["stale-line-not-invalidated", "dirty-not-cleaned"]),
                            st.integers(0, 6)),
                  min_size=1, max_size=40)


def _keyed_rows(items):
    rows = []
    for line, m, after, before, fix_agent, region, cause, seq in items:
        r = finding(0xC000 + 64 * line, mitigation=m, after=after, before=before, fix_agent=fix_agent,
                    region=region, cause=cause, seq=seq, fix_op="invalidate" if cause.startswith("stale") else "clean")
        r["other_seq"] = seq
        rows.append(r)
    return frame(rows)


def _nulls_last(value):
    return (value is None, "" if value is None else value)


@settings(max_examples=80, deadline=None)
@given(_KEYED)
def test_order_words_compare_as_the_columns_with_labels_by_text_and_nulls_last(items):
    """ranges() sorts by a few integer words standing for its columns (``_order_words``): two
    rows' words must compare as the rows' values do, labels by their text, nulls last (a fix
    window past 2**62 takes a word of its own), and be equal exactly where the values are."""
    from tracekit.ranges import RANGE_KEY, _order_words

    import importlib

    module = importlib.import_module("tracekit.ranges")  # (tracekit.ranges, the attribute, is the function)
    df = _keyed_rows(items)
    for columns, table in ((list(RANGE_KEY), True), (["fix_agent", "line", "region", "seq"], True),
                           (list(RANGE_KEY), False)):
        saved = module._TABLE_CODES
        module._TABLE_CODES = saved if table else -1  # (-1: the labels ranked by search, as for huge codes)
        try:
            words = _order_words(df, columns)
        finally:
            module._TABLE_CODES = saved
        got = [tuple(int(w[i]) for w in words) for i in range(df.height)]
        values = [tuple(_nulls_last(v) for v in row) for row in df.select(columns).rows()]
        for i in range(df.height):
            for j in range(df.height):
                assert (got[i] < got[j]) == (values[i] < values[j])
                assert (got[i] == got[j]) == (values[i] == values[j])


@settings(max_examples=60, deadline=None)
@given(_KEYED)
def test_ranges_come_in_the_documented_order(items):
    """Rule (ranges' docstring): by mitigation in order of first appearance, then start, cause,
    fix_after_seq, fix_before_seq, fix_agent, fix_op, region; labels by text, nulls last."""
    df = _keyed_rows(items)
    out = ranges(df, 64)
    first = {m: i for i, m in reversed(list(enumerate(df["mitigation"].to_list())))}
    keys = [(first[r["mitigation"]], r["start"], r["cause"], *(_nulls_last(r[c]) for c in
             ("fix_after_seq", "fix_before_seq", "fix_agent", "fix_op", "region"))) for r in out.iter_rows(named=True)]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
