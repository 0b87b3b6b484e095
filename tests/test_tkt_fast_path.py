"""The .tkt importer's fast path (canonical lines tokenised in bulk) agrees with its exact path.

The fast path exists for speed only: on any input, including malformed lines,
it must give the same events, or the same first error, as the line-by-line
exact parser. Random scenario chunks, a fixed seed per case, so CI is reproducible.
"""

from __future__ import annotations

import random

import pytest
from polars.testing import assert_frame_equal

from tracekit.errors import TraceFormatError
from tracekit.importers import tkt

AG = ["guest", "guest.0", "guest.1", "host", "host.vnc", "dev.gpu", "cpu0", "guest.x"]
def tokline():
    op = random.choice(["read", "write", "ifetch", "cmo", "cmo", "sysreg", "barrier", "marker", "load"])
    toks = [random.choice(AG[:6]) if random.random() > .05 else random.choice(AG), op]
    if op in ("read", "write", "ifetch"):
        toks += [random.choice(["0x40", "64", "0X4f", "0x+5", "+5", "zz"] if random.random() < .1 else ["0x40", "64", "0x1000"]),
                 random.choice(["8", "4K", "0x10", "1G"] if random.random() > .05 else ["0", "K", "99999999999999999999"])]
        ks = random.sample(["attr=" + random.choice(["wb", "nc", "dev", "bogus"]), "idx=" + random.choice(["1", "7", "8"]), "value=5"], random.randint(0, 2))
        toks += ks
    elif op == "cmo":
        c = random.choice(["dc.civac", "ic.iallu", "dc.zva", "dc.bogus"])
        toks += [c]
        if c != "ic.iallu" or random.random() < .1:
            toks += random.choice([["0x40"], ["0x40", "64"], ["0x40", "64", "9"], []])
    elif op == "sysreg":
        toks += random.choice([["SCTLR_EL1", "0x1005"], ["mair_el1", "5"], ["SCTLR_EL1"], ["SCTLR_EL1", "1", "2"], ["X", "1", "value=3"]])
    elif op in ("barrier", "marker"):
        toks += random.choice([[], ["dsb", "sy"], ["t=3", "x=y"]])
    if random.random() < .5:
        t = random.choice(["0.5", "1", "1e-6", "inf", "", "x"] if random.random() < .1 else ["0.5", "1", "1e-6"])
        if random.random() < .8: toks = ["t=" + t] + toks
        else: toks.append("t=" + t)
    if random.random() < .03: toks.append(random.choice(["t=1", "attr=wb", "colour=red", "5"]))
    sep = " " if random.random() > .05 else random.choice(["  ", "\t", " \t", "\u00a0", " \x1f", "\x0b", "\u2003"])
    line = sep.join(toks)
    r = random.random()
    if r < .03: line = "  " + line
    elif r < .06: line = line + " # comment"
    elif r < .08: line = line + "#c"
    elif r < .09: line = line + " "
    elif r < .1: line = line + "\r"
    return line
def lines(n):
    out = []
    for _ in range(n):
        r = random.random()
        if r < .03: out.append("")
        elif r < .05: out.append("# just a comment")
        elif r < .07: out.append("@phase p%d" % random.randint(0, 3))
        else: out.append(tokline())
    return out
def run(data, fast):
    """Parse ``data`` with or without the fast path; an error becomes a comparable tuple."""
    saved = tkt._fast_events
    if not fast: tkt._fast_events = lambda *a: None
    try:
        return tkt.parse_events(data, 1, src="f", line_size=64, phases=[(3, "a"), (9, None)])
    except TraceFormatError as e:
        b = getattr(e, "before", None)
        return ("ERR", str(e), None if b is None else b.height)
    finally:
        tkt._fast_events = saved


CLEAN = ["guest.0 read 0x0 8 idx=1\u00a0", "guest.0\x1f read 0x0 8 idx=1", "host read\u00a00x0 8",
         "t=1 host.vnc cmo dc.civac 0x40", "dev.gpu cmo ic.iallu", "guest sysreg sctlr_el1 0x1005 t=3",
         "guest.0 cmo dc.civac 0x40 64 attr=nc", "host read 0x10 8 value=0x5 attr=wb t=2", "host  read 0x10 8",
         "host read 0x10 8 # c", "", "@phase x", "guest.0 marker hello world", "t=1\tguest.0 read 0x0 8 idx=0",
         "guest.0 ifetch 0x0 4 idx=7 "]


@pytest.mark.parametrize("seed", range(300))
def test_fast_and_exact_paths_agree(seed):
    random.seed(seed)
    ls = lines(random.randint(1, 30))
    if random.random() < .5:
        ls = [random.choice(CLEAN + ["t=%d guest.0 read 0x%x 8 idx=1" % (i, i), "guest.1 write %d 4K attr=dev" % i])
              for i in range(random.randint(1, 40))]
    data = ("\n".join(ls) + ("\n" if random.random() < .8 else "")).encode()
    fast, exact = run(data, True), run(data, False)
    if isinstance(fast, tuple) or isinstance(exact, tuple):
        assert fast == exact, data
    else:
        assert_frame_equal(fast, exact)


def test_the_fast_path_is_taken_for_canonical_lines(monkeypatch):
    taken = []
    original = tkt._fast_events

    def spy(*args):
        out = original(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(tkt, "_fast_events", spy)
    data = "".join(f"guest.0 read {i * 64:#x} 8 idx=1\n" for i in range(100)).encode()
    tkt.parse_events(data, 1, src="f", line_size=64, phases=[])
    assert taken and all(taken)
