"""A first run (an empty numba cache) compiles the scan in a helper process.

With nothing cached every kernel compiles at its first call, on one core; the scan is the
biggest (4 s of a 9 s first run on the benchmark machine), so while the trace is read and
resolved another process compiles it into the cache (tracekit/engine/_precompile.py) and the
analysis loads it from there. These tests run in fresh interpreters, each with its own
empty cache folder (NUMBA_CACHE_DIR), so the shared cache is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

from tracekit.synth import synth

_RUN = """
import json, sys
from tracekit.analyze import analyze
from tracekit.engine import _fast_kernel as K, _precompile
trace, out, engine = sys.argv[1:4]
a = analyze(trace, ["none"], engine=engine, output=out, force=True)
seen = {"helpers": _precompile.helpers_started, "findings": a.findings.height}
if engine == "fast":
    seen["scan_signatures"] = len(K.scan.signatures)
    seen["scan_hits"] = sum(K.scan.stats.cache_hits.values())
    seen["scan_misses"] = sum(K.scan.stats.cache_misses.values())
    _precompile.compile_findings_kernel()  # what wait() compiles: the engine's own signature?
    seen["findings_signatures"] = len(K.finding_columns.signatures)
print(json.dumps(seen))
"""


def _run(trace: Path, out: Path, cache: Path, engine: str = "fast") -> dict:
    p = subprocess.run([sys.executable, "-c", _RUN, str(trace), str(out), engine], capture_output=True, text=True,
                       env={**os.environ, "NUMBA_CACHE_DIR": str(cache)}, timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_a_first_run_loads_the_scan_that_a_helper_compiled(tmp_path):
    """Rule: on an empty cache the scan is compiled once, by the helper, with the argument
    types the engine passes (else the run would compile another signature itself: a cache
    miss here); a run on the warm cache starts no helper; the findings are the same."""
    trace = tmp_path / "t.parquet"
    synth(20_000, trace, seed=4)
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    first = _run(trace, tmp_path / "first.parquet", cache)
    assert first["helpers"] == 1
    assert first["scan_misses"] == 0 and first["scan_hits"] == 1 and first["scan_signatures"] == 1
    assert first["findings_signatures"] == 1
    assert first["findings"] > 0
    again = _run(trace, tmp_path / "again.parquet", cache)
    assert again["helpers"] == 0 and again["scan_misses"] == 0 and again["scan_hits"] == 1
    assert pl.read_parquet(tmp_path / "first.parquet").equals(pl.read_parquet(tmp_path / "again.parquet"))


def test_the_reference_engine_starts_no_helper(tmp_path):
    """Rule: only the fast engine's runs compile its scan ahead (the reference engine has no scan to share)."""
    trace = tmp_path / "t.parquet"
    synth(2_000, trace, seed=5)
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    seen = _run(trace, tmp_path / "ref.parquet", cache, engine="reference")
    assert seen["helpers"] == 0 and seen["findings"] > 0
