"""Speed and memory of the replay on `mixed` synthetic traces, each figure beside its target.

    fast vs reference on the same 200k-event trace ............ >= 100x
    one mitigation end to end, 10 M events (read, resolve,
      replay, write findings) ................................ >= 8 M events/s
    the whole catalog (10 mitigations) on 10 M events ......... <= 20 s wall
      (by the API, and by the command with its default memory plan and summary)
    peak RSS of that one-mitigation run ....................... <= 3 GB
    --memory-budget 1G on 100 M events ........................ <= 1.5 GB peak RSS
    `tracekit analyze` of 1 M events under none, whole process  <= 1.5 s warm, <= 10 s cold

Every measurement runs in a child process (peak RSS is that run's alone); the cold
start uses a fresh NUMBA_CACHE_DIR (an emptied cache, without touching the shared one).
The one-mitigation and catalog runs are repeated (--repeat, default 3 and 2): the figure
is the best run's, every run's time is printed beside it, and the peak RSS is the
highest of them. On a shared 2-core virtual machine one run in several is 20-40% slower
than the others (2026-12-07: the same 'none' run 7.0 s in the bench, then 5.1 s twice).
Traces are generated with `tracekit synth` into --workdir (kept with --keep).

The targets are absolute, set on the machine issue #5 was written on, where polars read a
10 M-event trace Parquet and sorted it by (line, seq) in about 2 s. That read-and-sort, the
yardstick, is timed here too (best of 3, in its own child), and the one-mitigation and catalog
runs are printed again as multiples of it beside the targets' multiples (8 M events/s: 0.625
yardsticks; 20 s: 10): a verdict that a faster or slower machine does not move
(--no-baseline skips it). The yardstick reads a copy of the trace with its text columns as plain
Parquet strings, as every trace was written when the issue was filed: since traces store their
Arrow types (76a33d4) polars reads and sorts the trace itself ~30% faster (2.7 s against 3.8 s
here), and a yardstick that moved with our own file format would measure it, not the machine.

The yardstick's best of 3 runs in one process, whose later runs reuse memory the first
faulted in, where each figure is a fresh process's first run; the bench also prints the
yardstick timed so (the first run of 3 fresh processes, the best) and the one-mitigation run
as a multiple of it, for information: which reading issue #5's target means is open.

The issue also quotes pycachesim on its machine (0.77 M accesses/s, a Python call per access).
With the `bench` extra installed (pip install -e '.[bench]'), pycachesim replays 2 M of the
trace's accesses so here, and the one-mitigation rate is printed again scaled by the two
machines' pycachesim speeds. The two scalings disagree on this machine (2026-12-08: pycachesim
0.70-0.73 M/s, 5-10% slower than the issue's, where the yardstick is 1.7-2.2 times the issue's
2 s): work that is mostly memory traffic and first touches of fresh pages, such as a read and
sort, has slowed here far more than the CPU. Both are printed; neither is the machine.

Usage: .venv/bin/python benchmarks/bench_engine.py [--quick] [--only ref,one,catalog,budget,startup]
       [--events 10000000] [--big-events 100000000] [--mitigation none] [--repeat 3]
       [--no-baseline] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The targets as multiples of the yardstick (polars reads a trace Parquet and sorts it by
#: (line, seq)), which took "about 2 s" for 10 M events on the machine issue #5 set them on:
#: 8 M events/s is 1.25 s there, 0.625 yardsticks; the catalog's 20 s, 10 yardsticks. Both
#: scale with the events as the yardstick does, so they hold for any --events (roughly: a
#: small trace's fixed costs weigh more).
_ONE_IN_YARDSTICKS = 1.25 / 2.0
_CATALOG_IN_YARDSTICKS = 20 / 2.0
PY = sys.executable
TRACEKIT = str(Path(PY).with_name("tracekit"))


# --------------------------------------------------------------------------
# child tasks: each prints one JSON line {seconds, rss_mb, ...}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_ref(trace: str) -> dict:
    """Fast and reference replay of the same resolved frame (fast timed warm, best of 3)."""
    import polars as pl

    from tracekit.engine import fast, reference
    from tracekit.resolve import resolve
    from tracekit.schema import read_trace_info

    info = read_trace_info(trace)
    resolved = resolve(pl.read_parquet(trace), info)
    fast.replay(resolved, info)  # load the compiled code
    t_fast = []
    for _ in range(3):
        fast.clear_cache()
        t = time.perf_counter()
        f = fast.replay(resolved, info)
        t_fast.append(time.perf_counter() - t)
    t = time.perf_counter()
    r = reference.replay(resolved, info)
    t_ref = time.perf_counter() - t
    return {"fast_s": min(t_fast), "reference_s": t_ref, "same": f.equals(r), "findings": f.height,
            "events": resolved.height}


def child_analyze(trace: str, mitigations: list[str], out: str) -> dict:
    """analyze writing the findings, as `tracekit analyze -o` does (each mitigation's while the
    next are replayed; every finding kept), timed from reading the file."""
    from tracekit.analyze import analyze

    t = time.perf_counter()
    a = analyze(trace, mitigations, output=out, force=True)
    return {"seconds": time.perf_counter() - t, "findings": a.compact_findings.height, "rss_mb": _rss_mb()}


def child_budget(trace: str, budget: str, out: str) -> dict:
    """As `tracekit analyze TRACE -o OUT --memory-budget B` runs it: with its summary (tallied
    part by part) made at the end."""
    from tracekit.partition import analyze_partitioned, parse_size

    t = time.perf_counter()
    analysis = analyze_partitioned(trace, out, ["none"], budget_bytes=parse_size(budget), force=True)
    summary = analysis.summary()
    return {"seconds": time.perf_counter() - t, "rss_mb": _rss_mb(), "parts": analysis.meta["partition"]["parts"],
            "summary_lines": summary.count("\n")}


def child_baseline(trace: str, line_size: int, runs: int = 3) -> dict:
    """The issue's yardstick, on this machine: polars reads the trace Parquet and sorts it by
    (line, seq), nothing else (best of ``runs``; ``first``: the first run's time)."""
    import polars as pl

    times = []
    for _ in range(runs):
        t = time.perf_counter()
        df = pl.read_parquet(trace).with_columns(line=pl.col("addr") // line_size).sort("line", "seq")
        times.append(time.perf_counter() - t)
        del df
    return {"seconds": min(times), "first": times[0], "rss_mb": _rss_mb()}


#: What the issue quotes pycachesim at on its machine, "end to end".
_PYCACHESIM_ISSUE_RATE = 0.77e6


def child_pycachesim(trace: str, accesses: int) -> dict:
    """The issue's other measure of its machine: pycachesim replaying accesses one Python call
    each ("0.77 M/s end to end"), here the trace's first ``accesses`` reads, writes and
    instruction fetches through a 2-level LRU (32 KiB and 512 KiB, 8 ways, 64-byte lines),
    timed from reading the trace (best of 2).

    Single-core interpreter and C work with little memory traffic, where the yardstick is mostly
    memory traffic: two views of how this machine compares with the issue's.
    """
    import polars as pl
    from cachesim import Cache, CacheSimulator, MainMemory

    times = []
    for _ in range(2):
        t = time.perf_counter()
        df = (pl.scan_parquet(trace).select("op", "addr", "size")
              .filter(pl.col("op").cast(pl.String).is_in(["read", "write", "ifetch"])).head(accesses)
              .collect())
        addr, size = df["addr"].to_list(), df["size"].fill_null(1).to_list()
        store = (df["op"].cast(pl.String) == "write").to_list()
        memory = MainMemory()
        l2 = Cache("L2", 1024, 8, 64, "LRU")
        memory.load_to(l2)
        memory.store_from(l2)
        l1 = Cache("L1", 64, 8, 64, "LRU", store_to=l2, load_from=l2)
        sim = CacheSimulator(l1, memory)
        load, st = sim.load, sim.store
        for a, n, w in zip(addr, size, store):
            if w:
                st(a, n)
            else:
                load(a, n)
        times.append(time.perf_counter() - t)
    return {"seconds": min(times), "accesses": len(addr), "rss_mb": _rss_mb()}


def run_child(*args: str, env: dict | None = None) -> dict:
    p = subprocess.run([PY, __file__, "--child", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    if p.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def best_of(n: int, *args: str) -> dict:
    """The fastest of ``n`` runs of a child, with every run's time (``of``) and the highest peak RSS."""
    runs = [run_child(*args) for _ in range(n)]
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["rss_mb"] = max(r["rss_mb"] for r in runs)
    times = ", ".join(f"{r['seconds']:.1f}" for r in runs)
    best["of"] = f", best of {n} ({times} s)" if n > 1 else ""
    return best


# --------------------------------------------------------------------------


def ensure_trace(workdir: Path, events: int, seed: int = 1) -> Path:
    from tracekit.synth import synth

    path = workdir / f"mixed-{events}-{seed}.parquet"
    if not path.exists():
        t = time.perf_counter()
        synth(events, path, seed=seed, profile="mixed", quiet=False)
        print(f"  (synth {events:,} events: {time.perf_counter() - t:.1f} s)", flush=True)
    return path


def plain_strings_copy(trace: Path) -> Path:
    """The yardstick's input: ``trace`` written with its text columns as plain Parquet strings and
    no Arrow schema stored (as traces were written before storage.arrow_types), the same encodings."""
    import polars as pl

    from tracekit import schema

    path = trace.with_name(trace.stem + ".plain-strings.parquet")
    if not path.exists():
        with schema.TableWriter(path, schema=schema.TRACE_SCHEMA, arrow_types=False) as w:
            w.write(pl.read_parquet(trace))
            w.finish(schema.read_trace_info(trace))
    return path


def timed_process(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a whole process."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{p.stderr}")
    return wall, int(p.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="Small sizes (a few seconds per figure).")
    ap.add_argument("--only", default="ref,one,catalog,budget,startup", help="Comma-separated figures to measure.")
    ap.add_argument("--events", type=int, default=None, help="Events of the one-mitigation/catalog trace.")
    ap.add_argument("--big-events", type=int, default=None, help="Events of the --memory-budget trace.")
    ap.add_argument("--ref-events", type=int, default=None, help="Events of the fast-vs-reference trace.")
    ap.add_argument("--mitigation", default="none", help="The mitigation of the one-mitigation run.")
    ap.add_argument("--budget", default="1G", help="--memory-budget of the big run.")
    ap.add_argument("--repeat", type=int, default=3,
                    help="Runs of the one-mitigation figure (the catalog's: half as many, at least 1); the best counts.")
    ap.add_argument("--no-baseline", action="store_true", help="Skip the yardstick (polars' read and sort).")
    ap.add_argument("--workdir", type=Path, default=None, help="Where traces go (default: a temporary folder).")
    ap.add_argument("--keep", action="store_true", help="Keep the workdir.")
    a = ap.parse_args()

    if a.child:
        task, *rest = a.child
        if task == "ref":
            res = child_ref(rest[0])
        elif task == "analyze":
            res = child_analyze(rest[0], rest[1].split(","), rest[2])
        elif task == "budget":
            res = child_budget(rest[0], rest[1], rest[2])
        elif task == "baseline":
            res = child_baseline(rest[0], int(rest[1]), *(int(r) for r in rest[2:3]))
        elif task == "pycachesim":
            res = child_pycachesim(rest[0], int(rest[1]))
        else:
            raise SystemExit(f"unknown child task {task}")
        print(json.dumps(res))
        return

    events = a.events or (1_000_000 if a.quick else 10_000_000)
    big = a.big_events or (5_000_000 if a.quick else 100_000_000)
    ref_events = a.ref_events or (20_000 if a.quick else 200_000)
    only = set(a.only.split(","))
    work = a.workdir or Path(tempfile.mkdtemp(prefix="tracekit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, bool]] = []

    def row(name: str, measured: str, target: str, ok: bool) -> None:
        rows.append((name, measured, target, ok))
        print(f"{name:<58} {measured:>22}   target {target:<16} {'ok' if ok else 'MISSED'}", flush=True)

    try:
        print(f"machine: {os.cpu_count()} cpus; load average {os.getloadavg()[0]:.1f}; workdir {work}", flush=True)
        if "ref" in only:
            r = run_child("ref", str(ensure_trace(work, ref_events)))
            speedup = r["reference_s"] / r["fast_s"]
            row(f"fast vs reference, {r['events']:,} events", f"{speedup:,.0f}x ({r['fast_s']:.3f} s vs "
                f"{r['reference_s']:.1f} s)", ">= 100x", speedup >= 100 and r["same"])
            if not r["same"]:
                print("  !! the engines disagree on this trace", flush=True)
        if {"one", "catalog"} & only:
            trace = ensure_trace(work, events)
        yardstick = None
        if {"one", "catalog"} & only and not a.no_baseline:
            from tracekit.schema import read_trace_info

            plain, line_size = str(plain_strings_copy(trace)), str(read_trace_info(trace).line_size)
            r = run_child("baseline", plain, line_size)
            yardstick = r["seconds"]
            print(f"{'yardstick: polars reads the trace and sorts it by (line, seq)':<58} {yardstick:>20.2f} s"
                  f"   (the issue's machine: about 2 s for 10 M events)", flush=True)
            # the same timed as the figures are, a fresh process's first run (faults and all)
            first_yardstick = min([r["first"], *(run_child("baseline", plain, line_size, "1")["first"]
                                                  for _ in range(2))])
            print(f"{'  the same, first run of a fresh process (best of 3)':<58} {first_yardstick:>20.2f} s",
                  flush=True)

        pycachesim_rate = None
        if "one" in only and not a.no_baseline:
            import importlib.util

            if importlib.util.find_spec("cachesim") is None:
                print("pycachesim not installed (pip install -e '.[bench]'): its calibration is skipped", flush=True)
            else:
                r = run_child("pycachesim", str(trace), str(min(events, 2_000_000)))
                pycachesim_rate = r["accesses"] / r["seconds"]
                label = f"pycachesim: {r['accesses']:,} accesses of the trace, a call each"
                print(f"{label:<58} {pycachesim_rate / 1e6:>16.2f} M/s   (the issue's machine: "
                      f"{_PYCACHESIM_ISSUE_RATE / 1e6:.2f} M/s)", flush=True)

        def against_yardstick(seconds: float, limit: float) -> None:
            """The same run as a multiple of the yardstick, beside the target's multiple where the
            issue measured the yardstick: a figure this machine's speed does not move."""
            if yardstick:
                row("  in yardsticks (machine-independent form of the target)", f"{seconds / yardstick:.2f}x",
                    f"<= {limit:.3g}x", seconds / yardstick <= limit)

        if "one" in only:
            r = best_of(max(1, a.repeat), "analyze", str(trace), a.mitigation, str(work / "one.findings.parquet"))
            rate = events / r["seconds"]
            row(f"'{a.mitigation}' end to end, {events:,} events{r['of']}",
                f"{rate / 1e6:.2f} M ev/s ({r['seconds']:.1f} s)", ">= 8 M ev/s", rate >= 8e6)
            against_yardstick(r["seconds"], _ONE_IN_YARDSTICKS)
            if yardstick:  # information, no verdict: which reading the target means is open (#5)
                print(f"{'  in first-run yardsticks (both timed as first runs)':<58} "
                      f"{r['seconds'] / first_yardstick:>21.2f}x  ({_ONE_IN_YARDSTICKS:.3g}x is the target's multiple)",
                      flush=True)
            if pycachesim_rate:
                scaled = rate * _PYCACHESIM_ISSUE_RATE / pycachesim_rate
                row("  scaled to the issue's machine by pycachesim's speed", f"{scaled / 1e6:.2f} M ev/s",
                    ">= 8 M ev/s", scaled >= 8e6)
            row("peak RSS of those runs", f"{r['rss_mb'] / 1024:.2f} GB", "<= 3 GB", r["rss_mb"] <= 3 * 1024)
        if "catalog" in only:
            from tracekit.analyze import expand_mitigations

            specs = expand_mitigations(["all"])
            r = best_of(max(1, (a.repeat + 1) // 2), "analyze", str(trace), ",".join(specs),
                        str(work / "all.findings.parquet"))
            row(f"catalog ({len(specs)} mitigations), {events:,} events{r['of']}", f"{r['seconds']:.1f} s "
                f"(RSS {r['rss_mb'] / 1024:.1f} GB)", "<= 20 s", r["seconds"] <= 20)
            against_yardstick(r["seconds"], _CATALOG_IN_YARDSTICKS)
            # what a user gets: the command, its default budget and plan, the summary included
            from tracekit.partition import default_budget, memory_plan

            plan = memory_plan(trace, default_budget(), specs)
            wall, rss = timed_process([TRACEKIT, "analyze", str(trace), "-m", "all", "-o",
                                       str(work / "cli.findings.parquet"), "--force"])
            row(f"  the same, `tracekit analyze -m all` ({plan})", f"{wall:.1f} s (RSS {rss / 1024:.1f} GB)",
                "<= 20 s", wall <= 20)
            against_yardstick(wall, _CATALOG_IN_YARDSTICKS)
        if "budget" in only:
            bt = ensure_trace(work, big, seed=2)
            r = run_child("budget", str(bt), a.budget, str(work / "big.findings.parquet"))
            row(f"--memory-budget {a.budget}, {big:,} events ({r['parts']} parts, with the summary)",
                f"{r['rss_mb'] / 1024:.2f} GB peak ({r['seconds']:.0f} s)", "<= 1.5 GB", r["rss_mb"] <= 1.5 * 1024)
        if "startup" in only:
            st = ensure_trace(work, 1_000_000, seed=3)
            cmd = [TRACEKIT, "analyze", str(st), "-q", "-o", str(work / "st.findings.parquet"), "--force"]
            cold_cache = Path(tempfile.mkdtemp(prefix="numba-cold-"))
            try:
                cold, _ = timed_process(cmd, env={"NUMBA_CACHE_DIR": str(cold_cache)})
            finally:
                shutil.rmtree(cold_cache, ignore_errors=True)
            timed_process(cmd)  # make sure the normal cache is warm
            warm = min(timed_process(cmd)[0] for _ in range(3))
            row("tracekit analyze 1 M events, warm (whole process)", f"{warm:.2f} s", "<= 1.5 s", warm <= 1.5)
            row("tracekit analyze 1 M events, cold numba cache", f"{cold:.2f} s", "<= 10 s", cold <= 10)
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (2 cores shared with other work skew the figures)")
    finally:
        if not a.keep and a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
