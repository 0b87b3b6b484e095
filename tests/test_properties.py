"""Invariants of the coherence model that hold for any trace (hypothesis).

Random scenarios are rendered as .tkt text and go through the real importer,
resolver and the reference engine.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracekit.testing import findings

AGENTS = ["guest.0", "guest.1", "host.0", "dev.nic", "dev.gpu"]
HEADER = """@region ram 0x40000000 1M ram
@region fb  0x48000000 1M ram shared
@device nic noncoherent
@device gpu coherent
"""
MAIRS = ["0xff", "0x44ff", "0xbb44ff", "0x0", "0x44"]
SCTLRS = ["0x0", "0x1005", "0x1001", "0x1004", "0x1000"]
CMOS_BY_ADDR = ["dc.ivac", "dc.cvac", "dc.civac", "dc.cvau", "dc.zva", "ic.ivau"]
CMOS_GLOBAL = ["dc.isw", "dc.csw", "dc.cisw", "ic.iallu"]


@st.composite
def events(draw, *, ifetch=True, discarding=True):
    """A list of (agent, op, args...) tuples on a small window of two regions."""
    out = []
    n = draw(st.integers(1, 30))
    for _ in range(n):
        agent = draw(st.sampled_from(AGENTS))
        kinds = ["read", "write"] + (["ifetch"] if ifetch and agent.startswith("guest") else [])
        kinds += ["cmo"] + (["sysreg"] if agent.startswith("guest") else [])
        op = draw(st.sampled_from(kinds))
        base = draw(st.sampled_from([0x40000000, 0x48000000]))
        addr = base + draw(st.integers(0, 255))
        if op in ("read", "write", "ifetch"):
            size = draw(st.integers(1, 80))
            key = f"idx={draw(st.integers(0, 2))}" if agent.startswith("guest") else ""
            out.append((agent, op, f"{addr:#x}", str(size), key))
        elif op == "sysreg":
            reg = draw(st.sampled_from(["MAIR_EL1", "SCTLR_EL1"]))
            out.append((agent, "sysreg", reg, draw(st.sampled_from(MAIRS if reg == "MAIR_EL1" else SCTLRS))))
        else:
            cmos = CMOS_BY_ADDR + CMOS_GLOBAL
            if not discarding:
                cmos = [c for c in cmos if c not in ("dc.ivac", "dc.isw")]
            c = draw(st.sampled_from(cmos))
            out.append((agent, "cmo", c) + ((f"{addr:#x}",) if c not in CMOS_GLOBAL else ()))
    return out


def render(evs, header=HEADER) -> str:
    return header + "\n".join(" ".join(x for x in e if x) for e in evs) + "\n"


def civac_around(evs):
    """DC CIVAC (and IC IVAU) of every line of every access right before reads and after writes."""
    out = []
    for e in evs:
        agent, op = e[0], e[1]
        if op in ("read", "ifetch"):
            out.append((agent, "cmo", "dc.civac", e[2], e[3]))
            if op == "ifetch":
                out.append((agent, "cmo", "ic.ivau", e[2], e[3]))
        out.append(e)
        if op == "write" or (op == "cmo" and e[2] == "dc.zva"):
            out.append((agent, "cmo", "dc.civac", e[3] if op == "cmo" else e[2], e[3] if op == "write" else "1"))
    return out


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(events(), st.sampled_from(["", "@stage2 off\n"]))
def test_cleaning_and_invalidating_around_every_access_removes_every_finding(evs, stage2):
    assert findings(render(civac_around(evs), stage2 + HEADER)).height == 0


@SETTINGS
@given(events(ifetch=False, discarding=False))
def test_a_trace_whose_accesses_all_take_the_cacheable_path_has_no_findings(evs):
    # every guest MAIR entry WB, caches on, host WB, only the coherent device
    evs = [e for e in evs if e[0] != "dev.nic" and e[1] != "sysreg"]
    header = HEADER + "guest.0 sysreg MAIR_EL1 0xffffff\nguest.0 sysreg SCTLR_EL1 0x1005\n"
    header += "guest.1 sysreg MAIR_EL1 0xffffff\nguest.1 sysreg SCTLR_EL1 0x1005\n"
    assert findings(render(evs, header)).height == 0


@SETTINGS
@given(events())
def test_observed_speculation_reports_a_subset_of_architectural(evs):
    text = render(evs)
    key = ["seq", "line", "kind", "cause"]
    arch = set(findings(text).select(key).rows())
    observed = set(findings(text, speculation="observed").select(key).rows())
    assert observed <= arch


@SETTINGS
@given(events())
def test_every_fix_window_is_ordered_and_contains_the_event(evs):
    f = findings(render(evs))
    for row in f.iter_rows(named=True):
        assert row["fix_after_seq"] < row["fix_before_seq"]
        if row["kind"] != "lost-write" or row["cause"] != "discarded-by-invalidate":
            assert row["fix_before_seq"] <= row["seq"]
