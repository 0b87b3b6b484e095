"""Where one analysis's time goes: wall time, cores busy and page faults of each step.

    .venv/bin/python benchmarks/phases.py TRACE [--mitigation none] [--runs 3]

Each run is a fresh process (as `bench_engine.py` times one mitigation end to end: the
steps' first-touch page faults and first calls are part of what a user waits for), running
`analyze(TRACE, [mitigation], output=...)` with the engine's steps wrapped in timers:

    read        load the trace (numba loads its compiled code meanwhile)
    resolve     memory types and paths of every event
    mitigate    apply the mitigation
    order       the frame's rows in (seq, sub) order, and the whole-cache operations
    cut         events cut into per-line pieces, radix-sorted by (line, position)
    scan        the compiled per-line scan
    findings    the findings frame (sort, columns, gathers)
    write       the findings file, row group by row group, and its metadata

For each step: wall seconds, cores busy (CPU seconds / wall seconds, 2.0 at most on the
benchmark machine), the kernel's share of that CPU time (on the benchmark machine mostly
first touches of fresh pages: faults and zeroing) and minor page faults (thousands). With several runs, each figure is
the median of the runs, and the end-to-end time of every run is printed.

One mitigation only: under several, the steps of different mitigations overlap on threads
and the per-step figures would count each other's work. This is a diagnostic for whoever
works on issue #5's one-mitigation figure; it sets no target (`bench_engine.py` does).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("read", "resolve", "mitigate", "order", "cut", "scan", "findings", "write")


def _now() -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds (user and kernel), kernel CPU seconds, minor page faults, of
    this process so far: a step's figures are the differences of two of these."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt


def _since(start: tuple) -> list:
    return [b - a for a, b in zip(start, _now())]


def child(trace: str, mitigation: str) -> dict:
    """One analysis in this process, its steps timed (wall, CPU, kernel CPU, faults, summed per step)."""
    from tracekit import schema
    from tracekit.engine import fast

    # (the modules: tracekit.analyze is also the name of the function)
    analyze_module = importlib.import_module("tracekit.analyze")
    mitigations_module = importlib.import_module("tracekit.mitigations")
    totals = {s: [0.0, 0.0, 0.0, 0] for s in STEPS}

    def timed(step: str, f):
        @functools.wraps(f)
        def run(*a, **k):
            start = _now()
            try:
                return f(*a, **k)
            finally:
                totals[step] = [t + d for t, d in zip(totals[step], _since(start))]
        return run

    analyze_module._load_trace = timed("read", analyze_module._load_trace)
    analyze_module.resolve = timed("resolve", analyze_module.resolve)
    mitigations_module.apply_mitigation = timed("mitigate", mitigations_module.apply_mitigation)
    fast._in_order = timed("order", fast._in_order)
    fast.global_ops = timed("order", fast.global_ops)
    fast.explode = timed("cut", fast.explode)
    fast.scan = timed("scan", fast.scan)
    fast.findings_frame = timed("findings", fast.findings_frame)
    schema.TableWriter.write = timed("write", schema.TableWriter.write)
    schema.TableWriter.finish = timed("write", schema.TableWriter.finish)
    with tempfile.TemporaryDirectory(prefix="tracekit-phases-") as tmp:
        start = _now()
        found = analyze_module.analyze(trace, [mitigation], output=Path(tmp) / "findings.parquet")
        wall, cpu, kernel, faults = _since(start)
    return {"steps": totals, "wall": wall, "cpu": cpu, "kernel": kernel, "faults": faults,
            "findings": found.compact_findings.height, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", help="a trace Parquet (e.g. from `tracekit synth --events 10000000 --seed 1`)")
    ap.add_argument("--mitigation", default="none", help="one mitigation spec (default none)")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes to run (default 3)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.trace, a.mitigation)))
        return
    if "," in a.mitigation or a.mitigation == "all":
        raise SystemExit("phases.py: expected one mitigation (the steps of several overlap), "
                         f"found {a.mitigation!r}")
    runs = []
    for _ in range(max(1, a.runs)):
        p = subprocess.run([sys.executable, __file__, a.trace, "--mitigation", a.mitigation, "--child"],
                           capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"phases.py: the run failed:\n{p.stderr}")
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    med = statistics.median
    print(f"{a.trace}, {a.mitigation}: {runs[0]['findings']:,} findings; "
          f"{len(runs)} run(s), medians (every run's end to end: "
          f"{', '.join(format(r['wall'], '.2f') for r in runs)} s)")
    print(f"{'step':10s} {'seconds':>8s} {'cores':>6s} {'kernel':>7s} {'faults':>8s}")
    for step in STEPS:
        wall = med(r["steps"][step][0] for r in runs)
        if wall == 0:
            continue
        cores = med(r["steps"][step][1] / r["steps"][step][0] for r in runs if r["steps"][step][0])
        kernel = med(r["steps"][step][2] / r["steps"][step][1] for r in runs if r["steps"][step][1])
        faults = med(r["steps"][step][3] for r in runs)
        print(f"{step:10s} {wall:8.2f} {cores:6.2f} {kernel:6.0%} {faults / 1000:7.0f}k")
    wall = med(r["wall"] for r in runs)
    print(f"{'other':10s} {wall - sum(med(r['steps'][s][0] for r in runs) for s in STEPS):8.2f}")
    print(f"{'total':10s} {wall:8.2f} {med(r['cpu'] / r['wall'] for r in runs):6.2f} "
          f"{med(r['kernel'] / r['cpu'] for r in runs):6.0%} {med(r['faults'] for r in runs) / 1000:7.0f}k"
          f"   peak RSS {max(r['rss_mb'] for r in runs):.0f} MiB")


if __name__ == "__main__":
    main()
