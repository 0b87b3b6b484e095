"""Differential tests: the fast engine gives exactly the reference engine's findings.

Rule under test: architecture.md "Both engines must return identical frames" — same
rows, columns, types and order — for any resolved (and mitigated) trace, under both
speculation models and every line size. Hypothesis draws random traces
(tests/strategies.py); the example budget is split so that one CI run replays more
than 2,000 traces, derandomized so that CI is reproducible.
"""

from __future__ import annotations

import contextlib
import os

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from strategies import traces
from tracekit import _cores
from tracekit.engine import fast, reference
from tracekit.resolve import resolve

#: Examples per test; the total over this file is > 2,000 at the default.
SCALE = float(os.environ.get("TRACEKIT_DIFF_SCALE", "1"))
_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _examples(n: int) -> int:
    return max(1, int(n * SCALE))


def check_same(resolved: pl.DataFrame, info, *, speculation: str, mitigation: str = "none",
               same_trace: object | None = None) -> pl.DataFrame:
    want = reference.replay(resolved, info, mitigation=mitigation, speculation=speculation)
    got = fast.replay(resolved, info, mitigation=mitigation, speculation=speculation, same_trace=same_trace)
    assert_frame_equal(got, want)
    return want


@settings(max_examples=_examples(900), **_SETTINGS)
@given(trace=traces(), speculation=st.sampled_from(["architectural", "observed"]))
def test_random_traces_give_the_reference_findings(trace, speculation):
    events, info = trace
    check_same(resolve(events, info), info, speculation=speculation)


@settings(max_examples=_examples(500), **_SETTINGS)
@given(trace=traces(max_events=120), speculation=st.sampled_from(["architectural", "observed"]))
def test_longer_random_traces_give_the_reference_findings(trace, speculation):
    events, info = trace
    check_same(resolve(events, info), info, speculation=speculation)


MITIGATIONS = [
    "mair-trap", "guest-boot-inval", "guest-dma-cmo", "coherent-device", "host-cmo", "host-uncached",
    "kvm-cache-toggle", "kvm-fault-clean", "s2fwb",
    "kvm-cache-toggle+guest-boot-inval", "host-cmo+guest-dma-cmo", "mair-trap+kvm-fault-clean",
    "guest-boot-inval+kvm-cache-toggle+s2fwb",
]


@settings(max_examples=_examples(700), **_SETTINGS)
@given(trace=traces(max_events=60), spec=st.sampled_from(MITIGATIONS),
       speculation=st.sampled_from(["architectural", "observed"]))
def test_mitigated_random_traces_give_the_reference_findings(trace, spec, speculation):
    from tracekit.mitigations import apply_mitigation

    events, info = trace
    resolved = resolve(events, info)
    mitigated, minfo, _cost = apply_mitigation(resolved, spec, info)
    check_same(mitigated, minfo, speculation=speculation, mitigation=spec)


@st.composite
def mitigation_like(draw, resolved: pl.DataFrame) -> pl.DataFrame:
    """What a mitigation may do to a resolved frame: retype accesses, drop the host's cacheable
    alias, remove set/way operations, insert maintenance (whole-RAM included) around events."""
    n = resolved.height
    paths = resolved["path"].to_list()
    for i in draw(st.lists(st.integers(0, n - 1), max_size=6)):
        if paths[i] is not None:
            paths[i] = draw(st.sampled_from(["C", "T", "N"]))
    hostc = resolved["host_cacheable"].to_list()
    for i in draw(st.lists(st.integers(0, n - 1), max_size=3)):
        if hostc[i] is not None:
            hostc[i] = False
    frame = resolved.with_columns(pl.Series("path", paths, dtype=pl.String),
                                  pl.Series("host_cacheable", hostc, dtype=pl.Boolean))
    if draw(st.booleans()):
        frame = frame.filter(~pl.col("cmo").is_in(["dc.isw", "dc.csw", "dc.cisw"]).fill_null(False))
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        anchor = frame.row(draw(st.integers(0, frame.height - 1)), named=True)
        if anchor["sub"] != 0:
            continue
        op = draw(st.sampled_from(["ram.civac", "dc.civac", "dc.cvac", "dc.ivac", "ic.iallu", "ic.ivau"]))
        acting = draw(st.sampled_from(["guest.0", "host.kvm"]))
        row = {**{c: None for c in frame.columns}, "seq": anchor["seq"], "sub": draw(st.sampled_from([-65, -1, 1, 64])),
               "agent": f"{acting}/mit", "side": acting.split(".")[0], "op": "cmo", "cmo": op, "src": anchor["src"],
               "region_kind": anchor["region_kind"], "region": anchor["region"]}
        if op not in ("ram.civac", "ic.iallu") and anchor["addr"] is not None:
            row.update(addr=anchor["addr"], size=anchor["size"] or 1)
        elif op not in ("ram.civac", "ic.iallu"):
            continue
        rows.append(row)
    if rows:
        extra = pl.DataFrame(rows, schema=frame.schema)
        frame = pl.concat([frame, extra]).unique(["seq", "sub"], keep="first", maintain_order=True).sort("seq", "sub")
    return frame


@settings(max_examples=_examples(300), **_SETTINGS)
@given(trace=traces(max_events=60), data=st.data(), speculation=st.sampled_from(["architectural", "observed"]))
def test_kept_layout_serves_transformed_frames(trace, data, speculation):
    """The fast engine keeps the recorded events' per-line order between frames of one trace;
    a transformed frame (retyped, with inserted or removed maintenance) must still replay exactly."""
    events, info = trace
    resolved = resolve(events, info)
    check_same(resolved, info, speculation=speculation)  # builds the kept layout
    for _ in range(2):
        check_same(data.draw(mitigation_like(resolved)), info, speculation=speculation)


@settings(max_examples=_examples(60), **_SETTINGS)
@given(trace=traces(max_events=60))
def test_one_layout_serves_several_mitigations(trace):
    """The fast engine re-uses the recorded events' per-line order across mitigated frames of one trace."""
    events, info = trace
    resolved = resolve(events, info)
    from tracekit.mitigations import apply_mitigation

    frames = [resolved]
    frames += [apply_mitigation(resolved, spec, info)[0] for spec in ("host-cmo", "mair-trap", "kvm-cache-toggle")]
    for frame in frames + frames[:1]:
        check_same(frame, info, speculation="architectural")


class _AlwaysChangedLines:
    """Force the fast engine to replay only the changed lines, however many changed."""

    def __enter__(self):
        self.saved = fast._MOST_CHANGED
        fast._MOST_CHANGED = 2.0

    def __exit__(self, *exc):
        fast._MOST_CHANGED = self.saved


@settings(max_examples=_examples(300), **_SETTINGS)
@given(trace=traces(max_events=60), data=st.data(), speculation=st.sampled_from(["architectural", "observed"]))
def test_changed_lines_replay_gives_the_reference_findings(trace, data, speculation):
    """Rule (architecture.md, "Replaying only the changed lines"): after a replay that inserted
    nothing, a frame of the same trace is scanned only on the lines whose pieces differ (other
    attributes, or inserted pieces) and keeps the earlier findings elsewhere, relabelled; the
    result must be the reference engine's, row for row and in order."""
    from tracekit.mitigations import apply_mitigation

    events, info = trace
    resolved = resolve(events, info)
    token = object()
    with _AlwaysChangedLines():
        check_same(resolved, info, speculation=speculation, same_trace=token)  # the baseline
        for _ in range(2):
            check_same(data.draw(mitigation_like(resolved)), info, speculation=speculation, mitigation="x",
                       same_trace=token)
        for spec in data.draw(st.lists(st.sampled_from(MITIGATIONS), min_size=1, max_size=3)):
            mitigated, minfo, _cost = apply_mitigation(resolved, spec, info)
            check_same(mitigated, minfo, speculation=speculation, mitigation=spec, same_trace=token)


class _AlwaysSplitScan:
    """Force the fast engine to share all it shares between two cores, however small the frame:
    every scan of two or more pieces cut at line boundaries into parts that two threads take
    in turn, every cut of events into pieces and every radix sort done as two halves, on two
    threads."""

    def __enter__(self):
        self.saved = fast._SPLIT_SCAN, _cores.CORES, _cores.SPLIT_ROWS
        fast._SPLIT_SCAN, _cores.CORES, _cores.SPLIT_ROWS = 2, 2, 1

    def __exit__(self, *exc):
        fast._SPLIT_SCAN, _cores.CORES, _cores.SPLIT_ROWS = self.saved


@settings(max_examples=_examples(300), **_SETTINGS)
@given(trace=traces(max_events=120), spec=st.sampled_from(["none"] + MITIGATIONS),
       speculation=st.sampled_from(["architectural", "observed"]))
def test_scan_cut_in_two_at_a_line_gives_the_reference_findings(trace, spec, speculation):
    """Rule (architecture.md, "Both engines must return identical frames"): lines are independent,
    so a scan cut at line boundaries into parts, run by two threads in turn, must give the same
    rows in the same order; each part numbers its pieces from its own start. The events cut into pieces as two
    halves and the pieces sorted by two threads must come out as from one pass."""
    from tracekit.mitigations import apply_mitigation

    events, info = trace
    mitigated, minfo, _cost = apply_mitigation(resolve(events, info), spec, info)
    with _AlwaysSplitScan():
        check_same(mitigated, minfo, speculation=speculation, mitigation=spec)


@settings(max_examples=_examples(150), **_SETTINGS)
@given(trace=traces(max_events=120))
def test_resolve_in_two_halves_gives_the_whole_passs_frame(trace):
    """Rule (coherence model section 3): an access's type depends on its vCPU's SCTLR_EL1 and
    MAIR_EL1 at that point of the trace. Resolved as two halves on two threads, the second
    half starts from the registers the first half's rows leave, so every column must be
    what one pass over all rows gives."""
    events, info = trace
    whole = resolve(events, info)
    with _AlwaysSplitScan():
        halves = resolve(events, info)
    assert_frame_equal(halves, whole)


@settings(max_examples=_examples(200), **_SETTINGS)
@given(trace=traces(max_events=80), data=st.data(), speculation=st.sampled_from(["architectural", "observed"]))
def test_frames_out_of_order_give_the_reference_findings(trace, data, speculation):
    """Rule (architecture.md, "Rows out of order"): the fast engine takes a frame's rows in any
    order (analyze passes apply_mitigation(..., ordered=False) frames, inserted events last) and
    gives the findings of the same frame in (seq, sub) order, with and without a baseline to
    replay only the changed lines against."""
    from tracekit.mitigations import apply_mitigation

    events, info = trace
    resolved = resolve(events, info)
    token = object()
    changed_lines = data.draw(st.booleans())
    with _AlwaysChangedLines() if changed_lines else contextlib.nullcontext():
        fast.replay(resolved, info, speculation=speculation, same_trace=token)  # the baseline
        for spec in data.draw(st.lists(st.sampled_from(MITIGATIONS), min_size=1, max_size=3)):
            loose, minfo, _cost = apply_mitigation(resolved, spec, info, ordered=False)
            if data.draw(st.booleans()):  # any order at all
                loose = loose[data.draw(st.permutations(range(loose.height)))]
            ordered = loose.sort("seq", "sub", maintain_order=True)
            want = reference.replay(ordered, minfo, mitigation=spec, speculation=speculation)
            got = fast.replay(loose, minfo, mitigation=spec, speculation=speculation, same_trace=token)
            assert_frame_equal(got, want)


def test_changed_lines_replay_needs_the_same_trace():
    """Two traces whose recorded accesses match (same layout key) but whose agents differ: the
    first one's findings must not be reused for the second (each call's own same_trace token)."""
    from tracekit.testing import scenario

    runs = []
    with _AlwaysChangedLines():
        for agent in ("guest.0", "guest.1"):
            tr = scenario(f"""
                @region ram 0x40000000 1M ram
                {agent} write 0x40000000 8
                host read 0x40000000 8
                """)
            runs.append(check_same(resolve(tr.events, tr.info), tr.info, speculation="architectural",
                                   same_trace=object()))
    assert runs[0].height and runs[0]["other_agent"].to_list() != runs[1]["other_agent"].to_list()


@settings(max_examples=_examples(40), **_SETTINGS)
@given(trace=traces(max_events=60), speculation=st.sampled_from(["architectural", "observed"]))
def test_analyze_of_the_whole_catalog_gives_the_reference_findings(trace, speculation):
    """The analyze loop with the fast engine (frames out of order, replays two at a time after
    the first, changed lines against the first's findings) gives the reference engine's rows,
    mitigation by mitigation, in the order of the specs."""
    import importlib

    from tracekit.trace import Trace

    analyze = importlib.import_module("tracekit.analyze").analyze
    events, info = trace
    if "sub" in events.columns:
        events = events.filter(pl.col("sub") == 0).drop("sub")  # a trace as recorded
    specs = ["all", "kvm-cache-toggle+guest-boot-inval", "host-cmo+guest-dma-cmo"]
    got = analyze(Trace(events, info), specs, speculation=speculation).findings
    want = analyze(Trace(events, info), specs, speculation=speculation, engine="reference").findings
    assert_frame_equal(got, want)
