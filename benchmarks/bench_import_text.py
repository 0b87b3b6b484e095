"""Throughput of the text importers on generated input (target: >= 1 M lines/s on 2 cores).

Usage: .venv/bin/python benchmarks/bench_import_text.py [--lines N] [--keep DIR] [--only TEXT]...

Generates, per format, N lines shaped like the real thing (a QEMU 7.2 log of
trace events with ``-msg timestamp=on``, an execlog of loads/stores/DC ops with
register suffixes, a mixed QEMU -D log with -d cpu dumps, trace_pipe text of
kvm events, extended din and Lackey output), imports each with its importer
(all batches, no output written) and prints lines/s beside the target: wall-clock,
and per CPU-second (all threads' CPU time, also shown as CPU microseconds per line),
which is what to read when other jobs share the cores (the load average is printed
before and after). The importers read and prepare the next batch in a second thread
while they decode the current one, so on an idle 2-core machine wall-clock time is
below CPU time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tracekit.importers.base import ImportOptions
from tracekit.importers.din import DinImporter
from tracekit.importers.ftrace_text import FtraceTextImporter
from tracekit.importers.lackey import LackeyImporter
from tracekit.importers.qemu_log import QemuLogImporter

TARGET = 1_000_000

TRACE_EVENTS = '''memory_region_ops_read(int cpu_index, void *mr, uint64_t addr, uint64_t value, unsigned size, const char *name) "cpu %d mr %p addr 0x%"PRIx64" value 0x%"PRIx64" size %u name '%s'"
memory_region_ops_write(int cpu_index, void *mr, uint64_t addr, uint64_t value, unsigned size, const char *name) "cpu %d mr %p addr 0x%"PRIx64" value 0x%"PRIx64" size %u name '%s'"
virtqueue_pop(void *vq, void *elem, unsigned int in_num, unsigned int out_num) "vq %p elem %p in_num %u out_num %u"
kvm_run_exit(int cpu_index, uint32_t reason) "cpu_index %d, reason %d"
address_space_map(void *as, uint64_t addr, uint64_t len, bool is_write, uint32_t attrs) "as:%p addr 0x%"PRIx64":%"PRIx64" write:%d attrs:0x%x"
'''


def _write(path: Path, lines: list[str], n: int) -> None:
    reps = n // len(lines) + 1
    block = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(block * reps)


def gen_qemu_events(path: Path, n: int) -> None:
    rng = np.random.default_rng(1)
    lines = []
    for i in range(1000):
        a = 0x9000000 + int(rng.integers(0, 0x1000)) * 4
        k = i % 5
        ts = f"48215@{1700000000 + i // 100}.{(i * 37) % 1000000:06d}:"
        if k == 0:
            lines.append(f"{ts}memory_region_ops_write cpu 0 mr 0xaaaad3b1c2d0 addr 0x{a:x} value 0x{i:x} size 4 name 'pl011'")
        elif k == 1:
            lines.append(f"{ts}memory_region_ops_read cpu 1 mr 0xaaaad3b1c2d0 addr 0x{a:x} value 0x90 size 4 name 'pl011'")
        elif k == 2:
            lines.append(f"{ts}virtqueue_pop vq 0xaaaad40a1e28 elem 0xffff40001240 in_num 1 out_num 2")
        elif k == 3:
            lines.append(f"{ts}kvm_run_exit cpu_index 0, reason 6")
        else:
            lines.append(f"{ts}address_space_map as:0xaaaad0000000 addr 0x{0x40000000 + a:x}:200 write:1 attrs:0x1")
    _write(path, lines, n)


def gen_execlog(path: Path, n: int) -> None:
    lines = []
    pc = 0x40200000
    for i in range(1000):
        pc += 4
        k = i % 8
        if k == 0:
            lines.append(f'0, 0x{pc:x}, 0xd2800000, "movz x0, #0x{i:x}", x0 -> 0x{i:016x}')
        elif k == 1:
            lines.append(f'0, 0x{pc:x}, 0xf9400021, "ldr x1, [x1]", load, 0x{0x41000000 + i * 8:08x}, RAM')
        elif k == 2:
            lines.append(f'0, 0x{pc:x}, 0xa9bf7bfd, "stp x29, x30, [sp, #-0x10]!", store, 0x{0x4f000000 + i * 16:08x}, RAM, store, 0x{0x4f000008 + i * 16:08x}, RAM')
        elif k == 3:
            lines.append(f'0, 0x{pc:x}, 0xd50b7e20, "dc civac, x0"')
        elif k == 4:
            lines.append(f'1, 0x{pc:x}, 0xb9000022, "str w2, [x1]", store, 0x{0x42000000 + i * 4:08x}, RAM')
        elif k == 5:
            lines.append(f'1, 0x{pc:x}, 0x8b010000, "add x0, x0, x1"')
        elif k == 6:
            lines.append(f'0, 0x{pc:x}, 0xd5033f9f, "dsb sy"')
        else:
            lines.append(f'1, 0x{pc:x}, 0x39400020, "ldrb w0, [x1]", load, 0x{0x43000000 + i:08x}, RAM')
    _write(path, lines, n)


def gen_mixed(path: Path, n: int) -> None:
    dump = [" PC=0000000040200000 X00=0000000000000000 X01=0000000000000000"] + [
        " ".join(f"X{r:02d}=00000000000000{r:02x}" for r in range(i, i + 3)) for i in range(2, 29, 3)] + [
        "X29=0000000000000000 X30=0000000000000000  SP=0000000000000000", "PSTATE=400003c5 -Z-- EL1h"]
    lines = []
    for i in range(100):
        lines += dump
        lines.append(f'0, 0x{0x40200000 + 4 * i:x}, 0xf9400021, "ldr x1, [x1]", load, 0x{0x41000000 + i * 8:08x}, RAM')
        lines.append(f"memory_region_ops_write cpu 0 mr 0xaaaad3b1c2d0 addr 0x9000000 value 0x{i:x} size 4 name 'pl011'")
        lines.append("Taking exception 5 [IRQ] on CPU 0")
    _write(path, lines, n)


def gen_ftrace(path: Path, n: int) -> None:
    lines = []
    for i in range(1000):
        t = f"{1934 + i // 1000}.{i % 1000:03d}411"
        k = i % 4
        if k == 0:
            lines.append(f"       CPU 0/KVM-48215   [003] d..1.  {t}: kvm_exit: TRAP: HSR_EC: 0x0024 (DABT_LOW), PC: 0xffff800008a1c2d4")
        elif k == 1:
            lines.append(f"       CPU 0/KVM-48215   [003] .....  {t}: kvm_mmio: mmio write len 4 gpa 0x9000000 val 0x{i:x}")
        elif k == 2:
            lines.append(f"       CPU 1/KVM-48216   [001] .....  {t}: kvm_sys_access: PC: ffff800008011f00 SYS_DC_CISW (1,0,7,14,2) write")
        else:
            lines.append(f"       CPU 1/KVM-48216   [001] d..1.  {t}: kvm_entry: PC: 0xffff800008a1c2d0")
    _write(path, lines, n)


def gen_din(path: Path, n: int) -> None:
    lines = [f"{'rwi'[i % 3]} {0x40000000 + i * 8:x} 8" for i in range(1000)]
    _write(path, lines, n)


def gen_lackey(path: Path, n: int) -> None:
    lines = ["==1== Lackey"] + [f"{[' L', ' S', 'I ', ' M'][i % 4]} {0x4000000 + i * 8:08x},8" for i in range(1000)]
    _write(path, lines, n)


CASES = [
    ("qemu-log (trace events, 7.2 prefix)", gen_qemu_events, QemuLogImporter, {"trace_events": True}),
    ("qemu-log (execlog with reg= suffixes)", gen_execlog, QemuLogImporter, {}),
    ("qemu-log (mixed: -d cpu dumps + events)", gen_mixed, QemuLogImporter, {"trace_events": True}),
    ("ftrace-text (trace_pipe kvm events)", gen_ftrace, FtraceTextImporter, {}),
    ("din (extended)", gen_din, DinImporter, {}),
    ("lackey", gen_lackey, LackeyImporter, {}),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=2_000_000, help="lines per generated input")
    ap.add_argument("--keep", type=Path, help="write the inputs here and keep them")
    ap.add_argument("--only", action="append", default=[],
                    help="run only the inputs whose name contains this text (repeatable)")
    a = ap.parse_args()
    tmp = a.keep or Path(tempfile.mkdtemp(prefix="tk-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    te = tmp / "trace-events"
    te.write_text(TRACE_EVENTS)
    print(f"cores available: {len(os.sched_getaffinity(0))}; target {TARGET / 1e6:.1f} M lines/s; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'input':45} {'lines':>10} {'MB':>7} {'events':>10} {'seconds':>8} {'cpu s':>7} {'M lines/s':>10} "
          f"{'per cpu-s':>10} {'cpu us/line':>12}  target")
    worst = float("inf")
    for i, (name, gen, imp, kw) in enumerate(CASES):
        if a.only and not any(o in name for o in a.only):
            continue
        p = tmp / f"bench-{i}-{name.split()[0]}.txt"
        gen(p, a.lines)
        n_lines = sum(1 for _ in open(p, "rb"))
        opts = ImportOptions(trace_events=te if kw.get("trace_events") else None, quiet=True)
        t0 = time.perf_counter()
        c0 = time.process_time()
        res = imp().read(p, opts)
        events = sum(df.height for df in res.batches)
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
        rate = n_lines / dt
        worst = min(worst, rate)
        ok = "ok" if rate >= TARGET else "BELOW"
        print(f"{name:45} {n_lines:>10} {p.stat().st_size / 1e6:>7.1f} {events:>10} {dt:>8.2f} {cpu:>7.2f} "
              f"{rate / 1e6:>10.2f} {n_lines / cpu / 1e6:>10.2f} {cpu / n_lines * 1e6:>12.2f}  {ok}", flush=True)
        if not a.keep:
            p.unlink()
    print(f"slowest: {worst / 1e6:.2f} M lines/s (target {TARGET / 1e6:.1f}); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall-clock rates drop when others share them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
