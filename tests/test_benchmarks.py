"""The benchmark scripts' diagnostics keep working as the engine changes.

`benchmarks/phases.py` times the engine's steps by wrapping the functions that do them;
a step renamed or no longer called through its module would silently drop out of its
table. Timings are not asserted (they are measured, not tested).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_phases_reports_every_step_of_one_analysis(tmp_path):
    from tracekit.synth import synth

    trace = tmp_path / "t.parquet"
    synth(20_000, trace, seed=2)
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "phases.py"), str(trace), "--runs", "1"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines()[2:]}
    # every step of a `none` analysis ran through its timer (a step never timed has no row;
    # mitigate is timed too, though none changes nothing): seconds, cores, kernel share, faults
    for step in ("read", "resolve", "mitigate", "order", "cut", "scan", "findings", "write"):
        assert step in rows and len(rows[step]) == 4, (step, p.stdout)
        assert rows[step][2].endswith("%") and rows[step][3].endswith("k"), (step, p.stdout)
    assert "total" in rows
    assert "findings;" in p.stdout.splitlines()[0] and not p.stdout.startswith(f"{trace}, none: 0 findings")


def test_phases_refuses_several_mitigations(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "phases.py"), str(tmp_path / "t.parquet"),
                        "--mitigation", "none,mair-trap"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "expected one mitigation" in p.stderr
