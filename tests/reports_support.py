"""Hand-made findings for the report tests: a small boot + scanout story.

The trace (``boot.tkt``):

    seq 0  guest.0 sysreg SCTLR_EL1 0x0                     line 3
    seq 1  guest.0 write 0x40001000 4096   (MMU off: Device-nGnRnE, path N)  line 4
    seq 2  guest.0 sysreg MAIR_EL1 0xff                     line 5
    seq 3  guest.0 sysreg SCTLR_EL1 0x1005                  line 6
    seq 4  host.0  read  0x40001000 128    (host WB, path C)                 line 7
    seq 5  guest.0 read  0x40001000 4096 idx=0 (WB, path C)                  line 8
    seq 6  guest.0 write 0x48000000 256 attr=wb (path C)    line 10  (region fb)
    seq 7  dev.gpu read  0x48000000 256    (noncoherent, N) line 11
    seq 8  dev.gpu write 0x48000000 64     (noncoherent, N) line 12
    seq 9  host.0  read  0x48000000 8      (host WB, C)     line 13

Under ``none`` the model gives (section 4): H2 at seq 4 (2 lines) and seq 5
(64 lines) against the MMU-off write at seq 1; H1 at seq 7 (4 lines) against
the dirty write at seq 6; H3 lost write at seq 8 (line 0x48000000, older
cacheable write seq 6) and the H3 stale read of its clobbered bytes at seq 9;
H2 at seq 9 against the non-cacheable write at seq 8. ``guest-boot-inval``
inserts a DC IVAC (CIVAC under stage 2) by guest.0 before seq 3, so the boot
H2 findings go; ``demo-fix`` is a made-up mitigation with none left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from tracekit.schema import conform

RAM, FB = 0x40001000, 0x48000000
TRACE_SHA = "ab" * 32


def _rows(mitigation: str, *, seq, agent, kind, cause, lines, addr_size, other_seq, other_agent, fix_op,
          fix_agent, after, before, region, phase, src_line):
    out = []
    for line in lines:
        a, s = addr_size(line)
        out.append(dict(mitigation=mitigation, kind=kind, cause=cause, seq=seq, agent=agent, addr=a, size=s,
                        line=line, other_seq=other_seq, other_agent=other_agent, fix_op=fix_op, fix_agent=fix_agent,
                        fix_after_seq=after, fix_before_seq=before, region=region, phase=phase, src="boot.tkt",
                        src_line=src_line))
    return out


def _scanout(m: str) -> list[dict[str, Any]]:
    whole = lambda line: (line, 64)  # noqa: E731
    return [
        *_rows(m, seq=7, agent="dev.gpu", kind="stale-read", cause="dirty-not-cleaned",
               lines=[FB + 64 * i for i in range(4)], addr_size=whole, other_seq=6, other_agent="guest.0",
               fix_op="clean", fix_agent="guest.0", after=6, before=7, region="fb", phase="scanout", src_line=11),
        *_rows(m, seq=8, agent="dev.gpu", kind="lost-write", cause="clobbered-by-writeback", lines=[FB],
               addr_size=whole, other_seq=6, other_agent="guest.0", fix_op="clean", fix_agent="guest.0",
               after=6, before=8, region="fb", phase="scanout", src_line=12),
        *_rows(m, seq=9, agent="host.0", kind="stale-read", cause="clobbered-by-writeback", lines=[FB],
               addr_size=lambda line: (line, 8), other_seq=8, other_agent="dev.gpu", fix_op="clean",
               fix_agent="guest.0", after=6, before=8, region="fb", phase="scanout", src_line=13),
        *_rows(m, seq=9, agent="host.0", kind="stale-read", cause="stale-line-not-invalidated", lines=[FB],
               addr_size=lambda line: (line, 8), other_seq=8, other_agent="dev.gpu", fix_op="invalidate",
               fix_agent="host.0", after=8, before=9, region="fb", phase="scanout", src_line=13),
    ]


def findings() -> pl.DataFrame:
    """findings-v1 rows for none, guest-boot-inval (sorted by seq, line, kind, cause like the engines)."""
    whole = lambda line: (line, 64)  # noqa: E731
    none = [
        *_rows("none", seq=4, agent="host.0", kind="stale-read", cause="stale-line-not-invalidated",
               lines=[RAM, RAM + 64], addr_size=whole, other_seq=1, other_agent="guest.0", fix_op="invalidate",
               fix_agent="host.0", after=1, before=4, region="ram", phase="boot", src_line=7),
        *_rows("none", seq=5, agent="guest.0", kind="stale-read", cause="stale-line-not-invalidated",
               lines=[RAM + 64 * i for i in range(64)], addr_size=whole, other_seq=1, other_agent="guest.0",
               fix_op="invalidate", fix_agent="guest.0", after=1, before=5, region="ram", phase="boot", src_line=8),
        *_scanout("none"),
    ]
    df = pl.DataFrame([*none, *_scanout("guest-boot-inval")])
    return conform(df, "findings-v1")


@dataclass
class Cost:
    """Shaped like tracekit's MitigationCost."""

    traps: dict[str, int] = field(default_factory=dict)
    inserted_ops: int = 0
    inserted_lines: int = 0
    retyped_accesses: int = 0
    retyped: list[dict[str, Any]] = field(default_factory=list)


MITIGATIONS = ["none", "guest-boot-inval", "demo-fix"]


@dataclass
class FakeAnalysis:
    """The parts of tracekit.analyze.Analysis the reports read."""

    findings: pl.DataFrame
    costs: dict[str, Cost]
    meta: dict[str, Any]
    info: Any = None


def analysis(df: pl.DataFrame | None = None) -> FakeAnalysis:
    costs = {
        "none": Cost(),
        "guest-boot-inval": Cost(inserted_ops=1, inserted_lines=64),
        "demo-fix": Cost(traps={"MAIR_EL1": 2}, inserted_ops=10, inserted_lines=100, retyped_accesses=5,
                         retyped=[{"from": "nc", "to": "wb", "count": 5}]),
    }
    meta = dict(trace="boot.parquet", trace_sha256=TRACE_SHA, tracekit_version="0.1.0", line_size=64,
                speculation="architectural", engine="fast", mitigations=MITIGATIONS)
    return FakeAnalysis(findings() if df is None else df, costs, meta)


def trace_events(*, resolved: bool = True) -> pl.DataFrame:
    """The trace above as trace-v1 rows, with the resolver's type columns when ``resolved``."""
    ev = [
        (0, "guest.0", "sysreg", None, None, "SCTLR_EL1", 3, "boot", None, None, None),
        (1, "guest.0", "write", RAM, 4096, None, 4, "boot", "dev-ngnrne", "N", "mmu-off"),
        (2, "guest.0", "sysreg", None, None, "MAIR_EL1", 5, "boot", None, None, None),
        (3, "guest.0", "sysreg", None, None, "SCTLR_EL1", 6, "boot", None, None, None),
        (4, "host.0", "read", RAM, 128, None, 7, "boot", "wb", "C", "host-map"),
        (5, "guest.0", "read", RAM, 4096, None, 8, "boot", "wb", "C", "mair"),
        (6, "guest.0", "write", FB, 256, None, 10, "scanout", "wb", "C", "attr"),
        (7, "dev.gpu", "read", FB, 256, None, 11, "scanout", "nc", "N", "device"),
        (8, "dev.gpu", "write", FB, 64, None, 12, "scanout", "nc", "N", "device"),
        (9, "host.0", "read", FB, 8, None, 13, "scanout", "wb", "C", "host-map"),
    ]
    cols = ["seq", "agent", "op", "addr", "size", "sysreg", "src_line", "phase", "mem_type", "path", "type_source"]
    df = pl.DataFrame(ev, schema=cols, orient="row").with_columns(
        side=pl.col("agent").str.split(".").list.first(), src=pl.lit("boot.tkt"))
    base = conform(df, "trace-v1")
    if resolved:
        return pl.concat([base, df.select("mem_type", "path", "type_source")], how="horizontal")
    return base


def need_matplotlib() -> None:
    """Skip without matplotlib locally; under CI=true its absence is a failure (the html extra is required)."""
    import os

    import pytest

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("matplotlib is required in CI for the html report: pip install -e '.[html]'")
        pytest.skip("the html report needs matplotlib (pip install 'tracekit[html]')")
