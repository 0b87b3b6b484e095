"""Every mitigation on random traces, against plain-Python statements of section 6.

The vectorised transformations are compared with straightforward loops over the
(small) random traces of tests/strategies.py: which lines each inserted
operation must cover, at which anchor, on which side of it; which events
are removed; which types change. Plus the structural contract of inserted
events (docs/architecture.md) for every catalog entry and some combinations.
"""

from __future__ import annotations

from collections import defaultdict

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies import traces
from tracekit.mitigations import BUILTIN_ORDER, apply_mitigation
from tracekit.model import SET_WAY_OPS
from tracekit.resolve import resolve

SETTINGS = dict(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SPECS = [*BUILTIN_ORDER, "kvm-cache-toggle+guest-boot-inval", "host-cmo+guest-dma-cmo+kvm-fault-clean"]
M, C = 1, 4


def lines_of(addr, size, ls, zva=False):
    if zva:
        return {addr // ls}
    return set(range(addr // ls, (addr + size - 1) // ls + 1))


def covered(rows, ls):
    """{(acting agent, seq, before): set of lines} of inserted rows."""
    out = defaultdict(set)
    for r in rows:
        acting = r["agent"].split("/")[0]
        out[(acting, r["seq"], r["sub"] < 0, r["cmo"])] |= lines_of(r["addr"], r["size"], ls)
    return dict(out)


def recorded_rows(frame):
    return frame.filter(pl.col("sub") == 0).to_dicts()


def recorded_trace(trace):
    """A drawn trace without the pre-inserted rows some draws carry (they test the engines, not us)."""
    events, info = trace
    if "sub" in events.columns:
        events = events.filter(pl.col("sub") == 0).drop("sub")
    return events, info


def is_write(r):
    return r["op"] == "write" or (r["op"] == "cmo" and r["cmo"] == "dc.zva")


@settings(**SETTINGS)
@given(trace=traces(max_events=50), spec=st.sampled_from(SPECS))
def test_inserted_events_follow_the_contract(trace, spec):
    """Sorted by (seq, sub); inserted rows are cmo with sub != 0, ACTING/NAME agents of the acting side,
    anchored at a recorded seq; recorded rows keep their seq and order (only set/way ops may go)."""
    events, info = recorded_trace(trace)
    resolved = resolve(events, info)
    frame, _, cost = apply_mitigation(resolved, spec, info)
    assert frame.columns == resolved.columns and frame.schema == resolved.schema
    keys = frame.select("seq", "sub").rows()
    assert keys == sorted(keys) and len(set(keys)) <= len(keys)
    ins = frame.filter(pl.col("sub") != 0)
    names = spec.split("+")
    seqs = set(resolved["seq"].to_list())
    for r in ins.to_dicts():
        acting, _, name = r["agent"].partition("/")
        assert name in names and r["op"] == "cmo" and r["side"] == acting.split(".")[0]
        assert r["seq"] in seqs and r["mem_type"] is None
        k = names.index(name) + 1
        lo, hi = (-(len(names) - k + 1) * 64, -(len(names) - k) * 64 - 1) if r["sub"] < 0 else \
            ((len(names) - k) * 64 + 1, (len(names) - k + 1) * 64)
        assert lo <= r["sub"] <= hi
    kept = frame.filter(pl.col("sub") == 0)
    gone = resolved.join(kept.select("seq"), on="seq", how="anti")
    if "kvm-cache-toggle" in names:
        assert set(gone["cmo"].to_list()) <= set(SET_WAY_OPS) and (gone["side"] == "guest").all()
    else:
        assert gone.height == 0
    assert cost.inserted_ops == ins.height and cost.removed_ops == gone.height


@settings(**SETTINGS)
@given(trace=traces(max_events=50))
def test_boot_inval_covers_each_mmu_off_line_at_the_next_enable(trace):
    """Section 6: per vCPU, each line written with M = 0 gets a DC IVAC by that vCPU just before its next
    SCTLR_EL1 write setting M (or after the last event), and nothing else is inserted."""
    events, info = recorded_trace(trace)
    ls = info.line_size
    resolved = resolve(events, info)
    frame, _, _ = apply_mitigation(resolved, "guest-boot-inval", info)
    last = resolved["seq"].max()
    sctlr: dict[str, int] = defaultdict(int)
    pending: dict[str, set] = defaultdict(set)
    want = defaultdict(set)
    for r in recorded_rows(resolved):
        if r["side"] != "guest":
            continue
        a = r["agent"]
        if r["op"] == "sysreg" and r["sysreg"] == "SCTLR_EL1":
            if not sctlr[a] & M and r["value"] & M and pending[a]:
                want[(a, r["seq"], True, "dc.ivac")] |= pending.pop(a)
            sctlr[a] = r["value"]
        elif is_write(r) and r["addr"] is not None and not sctlr[a] & M:
            pending[a] |= lines_of(r["addr"], r["size"], ls, r["op"] == "cmo")
    for a, lines in pending.items():
        if lines:
            want[(a, last, False, "dc.ivac")] |= lines
    assert covered(frame.filter(pl.col("sub") != 0).to_dicts(), ls) == dict(want)


@settings(**SETTINGS)
@given(trace=traces(max_events=50))
def test_kvm_fault_clean_cleans_each_page_before_its_first_guest_access(trace):
    """Section 6: first guest access (any vCPU) to each 4 KiB RAM page: DC CIVAC of the page before it,
    IC IVAU of it too when that access is an instruction fetch."""
    events, info = recorded_trace(trace)
    ls = info.line_size
    resolved = resolve(events, info)
    frame, _, cost = apply_mitigation(resolved, "kvm-fault-clean", info)
    seen: set[int] = set()
    want = defaultdict(set)
    for r in recorded_rows(resolved):
        typed = r["op"] in ("read", "write", "ifetch") or r["cmo"] == "dc.zva"
        if r["side"] != "guest" or not typed or r["region_kind"] != "ram":
            continue
        last = r["addr"] if r["op"] == "cmo" else r["addr"] + r["size"] - 1
        for page in range(r["addr"] // 4096, last // 4096 + 1):
            if page not in seen:
                seen.add(page)
                page_lines = set(range(page * 4096 // ls, (page + 1) * 4096 // ls))
                want[("host.kvm", r["seq"], True, "dc.civac")] |= page_lines
                if r["op"] == "ifetch":
                    want[("host.kvm", r["seq"], True, "ic.ivau")] |= page_lines
    ins = frame.filter(pl.col("sub") != 0)
    assert covered(ins.to_dicts(), ls) == dict(want)
    assert cost.traps.get("stage-2 fault", 0) == len(seen)
    # every IC IVAU of a page comes after its clean
    for r in ins.filter(pl.col("cmo") == "ic.ivau").to_dicts():
        clean = ins.filter((pl.col("seq") == r["seq"]) & (pl.col("cmo") == "dc.civac")
                           & (pl.col("addr") <= r["addr"]) & (pl.col("addr") + pl.col("size") > r["addr"]))
        assert clean.height == 1 and clean["sub"][0] < r["sub"]


@settings(**SETTINGS)
@given(trace=traces(max_events=50))
def test_kvm_cache_toggle_matches_the_state_machine(trace):
    """Section 6, as a loop per vCPU: trapping on at reset; trapped SCTLR write toggling M+C -> flush before;
    caches on -> trapping off; set/way removed, with trapping off -> flush and trapping on."""
    events, info = recorded_trace(trace)
    resolved = resolve(events, info)
    frame, _, cost = apply_mitigation(resolved, "kvm-cache-toggle", info)
    sctlr: dict[str, int] = defaultdict(int)
    trapping: dict[str, bool] = defaultdict(lambda: True)
    flushes, traps = [], defaultdict(int)
    tvm = {"SCTLR_EL1", "TTBR0_EL1", "TTBR1_EL1", "TCR_EL1", "ESR_EL1", "FAR_EL1", "AFSR0_EL1", "AFSR1_EL1",
           "MAIR_EL1", "AMAIR_EL1", "CONTEXTIDR_EL1"}
    for r in recorded_rows(resolved):
        if r["side"] != "guest":
            continue
        a = r["agent"]
        if r["op"] == "sysreg" and r["sysreg"] in tvm:
            if trapping[a]:
                traps[r["sysreg"]] += 1
            if r["sysreg"] == "SCTLR_EL1":
                was, now = (sctlr[a] & (M | C)) == M | C, (r["value"] & (M | C)) == M | C
                if trapping[a] and was != now:
                    flushes.append(r["seq"])
                if trapping[a] and now:
                    trapping[a] = False
                sctlr[a] = r["value"]
        elif r["op"] == "cmo" and r["cmo"] in SET_WAY_OPS:
            traps[r["cmo"].upper().replace(".", " ")] += 1
            if not trapping[a]:
                flushes.append(r["seq"])
                trapping[a] = True
    ins = frame.filter(pl.col("sub") != 0)
    assert ins["seq"].to_list() == flushes
    assert set(ins["cmo"]) <= {"ram.civac"} and ins["addr"].is_null().all()
    assert cost.traps == dict(traps)
    assert frame.filter((pl.col("side") == "guest") & pl.col("cmo").is_in(list(SET_WAY_OPS))).height == 0


@settings(**SETTINGS)
@given(trace=traces(max_events=50), spec=st.sampled_from(["host-cmo", "guest-dma-cmo"]))
def test_shared_region_maintenance_per_access(trace, spec):
    """host-cmo: CIVAC before host reads, CVAC after host writes; guest-dma-cmo: IVAC before guest reads,
    CVAC after guest writes; each of the access's lines, shared regions only, by the accessing agent."""
    events, info = recorded_trace(trace)
    ls = info.line_size
    resolved = resolve(events, info)
    frame, _, _ = apply_mitigation(resolved, spec, info)
    side = "host" if spec == "host-cmo" else "guest"
    read_op = "dc.civac" if spec == "host-cmo" else "dc.ivac"
    want = {}
    for r in recorded_rows(resolved):
        if r["side"] != side or not r["shared"] or r["addr"] is None:
            continue
        if r["op"] == "read":
            want[(r["agent"], r["seq"], True, read_op)] = lines_of(r["addr"], r["size"], ls)
        elif is_write(r):
            want[(r["agent"], r["seq"], False, "dc.cvac")] = lines_of(r["addr"], r["size"], ls, r["op"] == "cmo")
    assert covered(frame.filter(pl.col("sub") != 0).to_dicts(), ls) == want


@settings(**SETTINGS)
@given(trace=traces(max_events=50), spec=st.sampled_from(["mair-trap", "coherent-device", "host-uncached", "s2fwb"]))
def test_type_mitigations_postconditions(trace, spec):
    """The retyping mitigations insert nothing and leave exactly the types section 6 says."""
    events, info = recorded_trace(trace)
    resolved = resolve(events, info)
    frame, minfo, cost = apply_mitigation(resolved, spec, info)
    assert frame.height == resolved.height and cost.inserted_ops == 0
    before = {r["seq"]: r for r in recorded_rows(resolved)}
    for r in recorded_rows(frame):
        b = before[r["seq"]]
        typed = r["mem_type"] is not None
        guest_typed = r["side"] == "guest" and r["s1_decl"] is not None
        if spec == "mair-trap":
            if guest_typed and b["type_source"] in ("mair", "attr") and b["s1_decl"] in ("nc", "wt"):
                assert r["s1_decl"] == "wb"
            else:
                assert r["s1_decl"] == b["s1_decl"]
            if b["type_source"] == "mmu-off" or r["side"] != "guest":
                assert r["mem_type"] == b["mem_type"]
        elif spec == "coherent-device":
            data = r["op"] in ("read", "write") or r["cmo"] == "dc.zva"
            if guest_typed and data and r["shared"] and r["sctlr"] & M:
                assert r["s1_decl"] == "wb"
            else:
                assert r["s1_decl"] == b["s1_decl"] and r["mem_type"] == b["mem_type"]
        elif spec == "host-uncached":
            if r["shared"]:
                assert r["host_cacheable"] is False
                if r["side"] == "host" and typed:
                    assert r["path"] == "N"
            else:
                assert r["host_cacheable"] == b["host_cacheable"] and r["mem_type"] == b["mem_type"]
            assert all(x.host in ("nc", "none", "dev-ngnrne", "dev-ngnre", "dev-ngre", "dev-gre")
                       for x in minfo.regions if x.shared)
        elif spec == "s2fwb":
            assert minfo.fwb
            if guest_typed and r["region_kind"] == "ram":
                assert r["mem_type"] == "wb" and r["fwb"]
            elif r["side"] != "guest" or r["region_kind"] != "ram":
                assert r["mem_type"] == b["mem_type"]
    changed = sum(1 for r in recorded_rows(frame) if r["mem_type"] != before[r["seq"]]["mem_type"])
    assert cost.retyped_accesses == changed


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(n=st.integers(1, 40), data=st.data())
def test_add_events_is_a_stable_sort_of_trace_and_inserted_events(n, data):
    """Contract (docs/architecture.md, "Order of inserted events"): the frame with the inserted
    events is in (seq, sub) order, ties keeping the trace's row first and the inserted rows in
    their order. add_events chains slices when the inserted rows go to few places, merges
    otherwise: both must give exactly that sort."""
    from tracekit.mitigations import base

    seqs = sorted(data.draw(st.lists(st.integers(0, 30), min_size=n, max_size=n)))
    trace = pl.DataFrame({"seq": pl.Series(seqs, dtype=pl.UInt64), "sub": pl.Series([0] * n, dtype=pl.Int32),
                          "tag": [f"t{i}" for i in range(n)]})
    # sub 0 too: an inserted row may tie with a trace row (the trace row comes first)
    subs = st.sampled_from([-65, -2, -1, 0, 1, 2, 64])
    places = data.draw(st.lists(st.sampled_from(seqs), min_size=1, max_size=3))
    rows = data.draw(st.lists(st.tuples(st.sampled_from(places) | st.integers(0, 31), subs), max_size=300))
    inserted = pl.DataFrame({"seq": pl.Series([r[0] for r in rows], dtype=pl.UInt64),
                             "sub": pl.Series([r[1] for r in rows], dtype=pl.Int32),
                             "tag": [f"i{i}" for i in range(len(rows))]})
    want = pl.concat([trace, inserted]).sort("seq", "sub", maintain_order=True)
    saved = base._FEW_INSERTED
    try:
        for few in (0, 1 << 30):  # the gather, then the chained slices, whatever the number of places
            base._FEW_INSERTED = few
            assert base.add_events(trace, inserted).collect().equals(want), few
    finally:
        base._FEW_INSERTED = saved
    # inside apply_mitigation(..., ordered=False): the trace's rows, then the inserted ones in order
    token = base._MERGE_INSERTED.set(False)
    try:
        appended = base.add_events(trace, inserted).collect()
    finally:
        base._MERGE_INSERTED.reset(token)
    assert appended.equals(pl.concat([trace, inserted.sort("seq", "sub", maintain_order=True)]))
    assert appended.sort("seq", "sub", maintain_order=True).equals(want)


@settings(**SETTINGS)
@given(trace=traces(max_events=50), spec=st.sampled_from(SPECS))
def test_unordered_frames_hold_the_ordered_rows(trace, spec):
    """apply_mitigation(..., ordered=False) may leave the last mitigation's inserted events after
    the rows it received (the fast engine orders what it reads): the same rows, settings and cost
    as the ordered frame, which a stable sort by (seq, sub) gives back."""
    events, info = recorded_trace(trace)
    resolved = resolve(events, info)
    ordered, oinfo, ocost = apply_mitigation(resolved, spec, info)
    loose, linfo, lcost = apply_mitigation(resolved, spec, info, ordered=False)
    assert linfo == oinfo and lcost == ocost
    assert loose.sort("seq", "sub", maintain_order=True).equals(ordered)
    # two runs in (seq, sub) order: the frame the last mitigation received, then what it inserted
    keys = list(zip(loose["seq"].to_list(), loose["sub"].to_list()))
    cut = next((i for i in range(1, len(keys)) if keys[i] <= keys[i - 1]), len(keys))
    assert keys[cut:] == sorted(keys[cut:]) and all(sub != 0 for _, sub in keys[cut:])


def test_only_the_last_built_in_mitigation_leaves_rows_unordered():
    """A mitigation always receives a frame in (seq, sub) order, even after one that inserted
    events under ordered=False; a custom mitigation's own result is always ordered."""
    from tracekit.mitigations import register_mitigation, unregister_mitigation
    from tracekit.testing import scenario

    seen = []

    def check(frame, ctx):
        df = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
        seen.append(df.equals(df.sort("seq", "sub", maintain_order=True)))
        return frame

    trace = scenario(
        "@region ram 0x40000000 1M ram\n"
        "@region fb 0x50000000 64K ram shared\n"
        "guest write 0x50000000 8\n"
        "guest write 0x50000040 8\n"
        "host read 0x50000000 8\n"
        "guest write 0x50000080 8\n"
        "host read 0x50000040 8\n")
    register_mitigation("order-check", check, actor="guest", replace=True)
    try:
        resolved = resolve(trace.events, trace.info)
        frame, _info, _cost = apply_mitigation(resolved, "host-cmo+order-check", trace.info, ordered=False)
        assert seen == [True]
        assert (frame["sub"] != 0).sum() == 2  # host-cmo inserted its cleans before the check saw the frame
        assert frame.equals(frame.sort("seq", "sub", maintain_order=True))
    finally:
        unregister_mitigation("order-check")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-2, 2)), max_size=8))
def test_ordered_says_whether_rows_are_in_seq_sub_order(rows):
    """apply_mitigation sorts only when _ordered says the frame is out of (seq, sub) order:
    strictly increasing (seq, sub) pairs, compared in place."""
    from tracekit.mitigations.base import _ordered

    frame = pl.DataFrame({"seq": [s for s, _ in rows], "sub": [b for _, b in rows]},
                         schema={"seq": pl.UInt64, "sub": pl.Int32})
    assert _ordered(frame) == all(a < b for a, b in zip(rows, rows[1:]))
