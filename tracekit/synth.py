"""Synthetic traces that look like a KVM guest booting and running next to QEMU.

What a generated trace holds (trace-v1, one Parquet file):

* regions: guest RAM, a kernel-text window inside it, a shared frame buffer,
  a shared virtio ring, shared DMA buffers, and two MMIO windows (UART,
  virtio-mmio); devices: a non-coherent GPU and block device, a coherent NIC;
* a boot prefix: QEMU (``host.loader``) writes the kernel image through its
  cacheable mapping, each vCPU runs with its MMU off (Device accesses, set/way
  maintenance as firmware does, DC IVAC of the page tables it wrote), then
  writes MAIR_EL1 (Linux's layout) and SCTLR_EL1 with M, C and I set;
* a steady state that mixes, by profile: kernel work on RAM through Write-Back
  (``idx=0``) with instruction fetches, page zeroing with DC ZVA, code patching
  with DC CVAU + IC IVAU, a frame buffer drawn through Normal Non-cacheable
  (``idx=2``) and scanned out by ``host.vnc``, virtio rings and DMA buffers
  with the streaming-DMA maintenance at realistic rates (sometimes missing,
  which is where findings come from), MMIO doorbells, rare IC IALLU and
  set/way operations.

Generation is vectorised with numpy, chunk by chunk (one random stream per
chunk, derived from the seed), so a trace is the same for a seed whatever the
machine, 10 M events take a few seconds and 100 M events stream in bounded
memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute  # noqa: F401

from .errors import UsageError
from .model import Device, Region, TraceInfo
from .schema import TRACE_SCHEMA, write_table

PROFILES = ("boot", "virtio", "framebuffer", "mixed")
CHUNK = 1 << 20  # events per generated batch (fixed: the seed's streams depend on it)

LINE = 64
PAGE = 4096
RAM = Region.make("ram", 0x4000_0000, 512 << 20, "ram")
FB = Region.make("fb", 0x6000_0000, 8 << 20, "ram", shared=True)
RING = Region.make("virtq", 0x6080_0000, 1 << 20, "ram", shared=True)
DMA = Region.make("dmabuf", 0x6090_0000, 16 << 20, "ram", shared=True)
UART = Region.make("uart", 0x0900_0000, 4096, "mmio")
VIRTIO_MMIO = Region.make("virtio-mmio", 0x0A00_0000, 16 << 10, "mmio")
REGIONS = (UART, VIRTIO_MMIO, RAM, FB, RING, DMA)
DEVICES = (Device("gpu", False), Device("blk", False), Device("nic", True))
KERNEL_TEXT = (0x4008_0000, 16 << 20)  # inside RAM
PAGE_TABLES = (0x4100_0000, 2 << 20)
WORKING_SET = (0x4200_0000, 256 << 20)

#: Linux's MAIR_EL1: idx0 Normal WB, idx1 Tagged WB, idx2 Normal NC, idx3 Device-nGnRnE, idx4 Device-nGnRE.
LINUX_MAIR = 0x0000_0004_0044_F0FF
LINUX_SCTLR_ON = 0x30D0_199D  # M | C | I and the usual RES1/feature bits
RESET_SCTLR = 0x30D0_0800  # MMU, D- and I-cache off

# string tables: events carry small codes, turned into dictionary columns once per chunk
AGENTS = ("guest.0", "guest.1", "guest.2", "guest.3", "host.loader", "host.vnc", "host.virtio",
          "host.kvm", "dev.gpu", "dev.blk", "dev.nic")
G0, HOST_LOADER, HOST_VNC, HOST_VIRTIO, HOST_KVM, DEV_GPU, DEV_BLK, DEV_NIC = 0, 4, 5, 6, 7, 8, 9, 10
OPS = ("read", "write", "ifetch", "cmo", "sysreg", "barrier")
RD, WR, IF, CM, SR, BR = range(6)
CMOS = ("", "dc.ivac", "dc.cvac", "dc.civac", "dc.cvau", "dc.zva", "ic.ivau", "ic.iallu", "dc.cisw", "dc.csw",
        "dc.isw", "ic.ialluis")
NOC, IVAC, CVAC, CIVAC, CVAU, ZVA, IVAU, IALLU, CISW, CSW, ISW, IALLUIS = range(12)
PHASES = ("boot", "kernel", "scanout", "virtio", "dma")
PH_BOOT, PH_KERNEL, PH_SCANOUT, PH_VIRTIO, PH_DMA = range(5)

#: Steady-state mixture per profile: weights of the activity generators below.
MIXES = {
    "boot": {"kernel": 0.80, "zero": 0.10, "patch": 0.02, "scanout": 0.03, "virtio": 0.03, "dma": 0.02},
    "virtio": {"kernel": 0.40, "zero": 0.03, "patch": 0.01, "scanout": 0.01, "virtio": 0.35, "dma": 0.20},
    "framebuffer": {"kernel": 0.35, "zero": 0.03, "patch": 0.01, "scanout": 0.55, "virtio": 0.03, "dma": 0.03},
    "mixed": {"kernel": 0.50, "zero": 0.05, "patch": 0.02, "scanout": 0.18, "virtio": 0.15, "dma": 0.10},
}
#: Fraction of the trace spent in the boot prefix (vCPUs with their MMU off, image loading).
BOOT_SHARE = {"boot": 0.5, "virtio": 0.02, "framebuffer": 0.02, "mixed": 0.05}


def trace_info() -> TraceInfo:
    return TraceInfo(line_size=LINE, stage2=True, fwb=False, regions=REGIONS, devices=DEVICES)


@dataclass
class _Cols:
    """One chunk's columns as numpy arrays of codes and numbers (missing = the null mask)."""

    agent: np.ndarray
    op: np.ndarray
    addr: np.ndarray
    size: np.ndarray
    cmo: np.ndarray
    sysreg: np.ndarray  # 0 none, 1 SCTLR_EL1, 2 MAIR_EL1
    value: np.ndarray
    attr_index: np.ndarray  # 255 = none
    phase: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "_Cols":
        return cls(np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n, np.uint64), np.zeros(n, np.uint64),
                   np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n, np.uint64),
                   np.full(n, 255, np.uint8), np.zeros(n, np.uint8))


def _dict_column(codes: np.ndarray, names: tuple[str, ...], null_code: int | None = None) -> pa.Array:
    """A string column from small codes (null where ``codes == null_code``)."""
    idx = pa.array(codes.astype(np.int32), mask=None if null_code is None else codes == null_code)
    return pa.compute.take(pa.array(names, pa.large_string()), idx)


def _aligned(rng: np.random.Generator, base: int, span: int, n: int, align: int, zipf: float = 0.0) -> np.ndarray:
    """n addresses in [base, base+span) aligned to ``align``; zipf > 0 favours a hot subset of pages."""
    slots = span // align
    if zipf > 0:
        # hot pages: a power law over page ranks, then a uniform slot inside the page
        pages = max(1, span // PAGE)
        rank = np.minimum((rng.pareto(zipf, n) * 8).astype(np.int64), pages - 1)
        page = (rank * 2654435761) % pages  # scatter the hot pages over the span
        per_page = max(1, PAGE // align)
        slot = page * per_page + rng.integers(0, per_page, n)
        slot = np.minimum(slot, slots - 1)
    else:
        slot = rng.integers(0, slots, n)
    return (np.uint64(base) + slot.astype(np.uint64) * np.uint64(align)).astype(np.uint64)


def _access_size(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(np.array([1, 2, 4, 8, 8, 8, 16, 64], np.uint64), n)


class Synth:
    """Generates one trace chunk by chunk; the state carried between chunks is tiny."""

    def __init__(self, events: int, seed: int, profile: str, vcpus: int = 4):
        if profile not in PROFILES:
            raise UsageError(f"--profile: expected one of {', '.join(PROFILES)}, found {profile!r}")
        if events < 1:
            raise UsageError(f"--events: expected at least 1, found {events}")
        self.n = events
        self.seed = seed
        self.profile = profile
        self.vcpus = vcpus
        self.boot_len = min(events, max(int(events * BOOT_SHARE[profile]), 200 * vcpus))
        self.mix = MIXES[profile]
        self.src = f"synth-{profile}-{seed}"

    # -- boot prefix -------------------------------------------------------

    def _boot(self, rng: np.random.Generator, start: int, c: _Cols) -> None:
        """Boot events at global positions start..start+len(c): loader, then each vCPU in its slot."""
        n = len(c.agent)
        gpos = np.arange(start, start + n)
        load_end = max(1, self.boot_len // 10)
        per_cpu = max(1, (self.boot_len - load_end) // self.vcpus)
        loader = gpos < load_end
        # QEMU loads the kernel image through its Write-Back mapping, 64-byte stores
        k = int(loader.sum())
        if k:
            c.agent[loader] = HOST_LOADER
            c.op[loader] = WR
            off = (gpos[loader] * 64) % KERNEL_TEXT[1]
            c.addr[loader] = np.uint64(KERNEL_TEXT[0]) + off.astype(np.uint64)
            c.size[loader] = 64
            c.phase[loader] = PH_BOOT
        cpu_part = ~loader
        if not cpu_part.any():
            return
        rel = gpos[cpu_part] - load_end
        cpu = np.minimum(rel // per_cpu, self.vcpus - 1)
        within = rel - cpu * per_cpu
        m = int(cpu_part.sum())
        agent = (G0 + cpu).astype(np.uint8)
        op = np.full(m, WR, np.uint8)
        addr = np.zeros(m, np.uint64)
        size = np.full(m, 8, np.uint64)
        cmo = np.zeros(m, np.uint8)
        sysreg = np.zeros(m, np.uint8)
        value = np.zeros(m, np.uint64)
        attr = np.full(m, 255, np.uint8)
        kind = rng.random(m)
        # MMU off: page-table writes (Device), reads of the image (H1 against the loader's
        # cacheable writes), instruction fetches, set/way loops, DC IVAC of page tables
        pt = _aligned(rng, PAGE_TABLES[0] + int(0) , PAGE_TABLES[1], m, 8)
        img = _aligned(rng, *KERNEL_TEXT, m, 8)
        is_pt = kind < 0.45
        is_img = (kind >= 0.45) & (kind < 0.70)
        is_if = (kind >= 0.70) & (kind < 0.93)
        is_sw = (kind >= 0.93) & (kind < 0.95)
        is_iv = kind >= 0.95
        addr[is_pt] = pt[is_pt]
        op[is_img] = RD
        addr[is_img] = img[is_img]
        op[is_if] = IF
        addr[is_if] = img[is_if] & ~np.uint64(3)
        size[is_if] = 4
        op[is_sw] = CM
        cmo[is_sw] = np.where(rng.random(m) < 0.5, CISW, CSW)[is_sw]
        size[is_sw] = 0
        op[is_iv] = CM
        cmo[is_iv] = IVAC
        addr[is_iv] = pt[is_iv] & ~np.uint64(LINE - 1)
        size[is_iv] = LINE
        # the vCPU's last events of its slot: reset SCTLR at the start, MAIR then SCTLR at the end
        first = within == 0
        op[first] = SR
        sysreg[first] = 1
        value[first] = RESET_SCTLR
        last_mair = within == per_cpu - 2
        last_sctlr = within == per_cpu - 1
        op[last_mair] = SR
        sysreg[last_mair] = 2
        value[last_mair] = LINUX_MAIR
        op[last_sctlr] = SR
        sysreg[last_sctlr] = 1
        value[last_sctlr] = LINUX_SCTLR_ON
        cmo[first | last_mair | last_sctlr] = NOC  # a register write replacing a drawn maintenance slot
        for col, v in ((c.agent, agent), (c.op, op), (c.addr, addr), (c.size, size), (c.cmo, cmo),
                       (c.sysreg, sysreg), (c.value, value), (c.attr_index, attr)):
            col[cpu_part] = v
        c.addr[cpu_part & (c.op == SR)] = 0
        c.phase[cpu_part] = PH_BOOT

    # -- steady state ----------------------------------------------------------

    def _steady(self, rng: np.random.Generator, start: int, c: _Cols, mask: np.ndarray) -> None:
        """Steady-state events at the masked slots: each activity generates only its own events."""
        where = np.flatnonzero(mask)
        if not len(where):
            return
        names = list(self.mix)
        p = np.array([self.mix[k] for k in names])
        which = rng.choice(len(names), len(where), p=p / p.sum())
        c.attr_index[where] = 0  # idx0: Normal WB
        c.phase[where] = PH_KERNEL
        for k, name in enumerate(names):
            idx = where[which == k]
            if len(idx):
                getattr(self, f"_{name}")(rng, c, idx, (start + idx).astype(np.int64))
        # rare whole-cache maintenance, barriers and register writes by the guest
        m = len(where)
        rare = rng.random(m)
        vcpu = (G0 + rng.integers(0, self.vcpus, m)).astype(np.uint8)
        sw = where[rare < 2e-5]
        c.agent[sw] = vcpu[rare < 2e-5]
        c.op[sw] = CM
        c.cmo[sw] = np.where(rng.random(len(sw)) < 0.5, CISW, ISW)
        ia_m = (rare >= 2e-5) & (rare < 6e-5)
        ia = where[ia_m]
        c.agent[ia] = vcpu[ia_m]
        c.op[ia] = CM
        c.cmo[ia] = IALLUIS
        bar = where[(rare >= 6e-5) & (rare < 1e-3)]
        bar = bar[(c.op[bar] != CM) & (c.agent[bar] < HOST_LOADER)]  # barriers by vCPUs
        c.op[bar] = BR
        c.cmo[bar] = NOC
        mair_m = (rare >= 1e-3) & (rare < 1.00002e-3)
        mair = where[mair_m]
        c.agent[mair] = vcpu[mair_m]
        c.op[mair] = SR
        c.cmo[mair] = NOC
        c.sysreg[mair] = 2
        c.value[mair] = LINUX_MAIR
        # only guest accesses (and DC ZVA) carry an AttrIndx
        guest_access = (c.agent[where] < HOST_LOADER) & ((c.op[where] <= IF) | ((c.op[where] == CM) & (c.cmo[where] == ZVA)))
        c.attr_index[where[~guest_access]] = 255

    def _vcpus(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return (G0 + rng.integers(0, self.vcpus, n)).astype(np.uint8)

    def _kernel(self, rng, c: _Cols, idx: np.ndarray, gpos: np.ndarray) -> None:
        """Kernel work: loads/stores on a hot working set, instruction fetches, MMIO doorbells."""
        n = len(idx)
        u = rng.random(n)
        size = _access_size(rng, n)
        c.agent[idx] = self._vcpus(rng, n)
        c.op[idx] = np.where(u < 0.62, RD, np.where(u < 0.80, WR, IF))
        c.addr[idx] = _aligned(rng, *WORKING_SET, n, 8, zipf=1.2) & ~(size - np.uint64(1))
        c.size[idx] = size
        f = u >= 0.80
        c.addr[idx[f]] = _aligned(rng, *KERNEL_TEXT, int(f.sum()), 4, zipf=1.5)
        c.size[idx[f]] = 4
        mm = u >= 0.995
        c.addr[idx[mm]] = np.uint64(VIRTIO_MMIO.base) + rng.integers(0, 64, int(mm.sum())).astype(np.uint64) * np.uint64(4)
        c.size[idx[mm]] = 4
        c.attr_index[idx[mm]] = 3  # Device-nGnRnE

    def _zero(self, rng, c: _Cols, idx: np.ndarray, gpos: np.ndarray) -> None:
        """Page zeroing with DC ZVA, then stores into the page."""
        n = len(idx)
        u = rng.random(n)
        z = u < 0.7
        c.agent[idx] = self._vcpus(rng, n)
        c.op[idx] = np.where(z, CM, WR)
        c.cmo[idx] = np.where(z, ZVA, NOC)
        page = _aligned(rng, *WORKING_SET, n, PAGE)
        c.addr[idx] = page + ((gpos % (PAGE // LINE)) * LINE).astype(np.uint64)
        c.size[idx] = np.where(z, LINE, 8).astype(np.uint64)

    def _patch(self, rng, c: _Cols, idx: np.ndarray, gpos: np.ndarray) -> None:
        """Code patching: store, DC CVAU, IC IVAU, fetch (CVAC for CVAU now and then, rare IALLU)."""
        n = len(idx)
        u = rng.random(n)
        step = gpos % 4
        c.agent[idx] = self._vcpus(rng, n)
        c.addr[idx] = _aligned(rng, KERNEL_TEXT[0], 1 << 20, n, LINE)
        op = np.choose(step, [WR, CM, CM, IF]).astype(np.uint8)
        cmo = np.choose(step, [NOC, CVAU, IVAU, NOC]).astype(np.uint8)
        cmo[(step == 1) & (u < 0.1)] = CVAC
        cmo[(step == 2) & (u < 0.02)] = IALLU
        c.op[idx] = op
        c.cmo[idx] = cmo
        c.size[idx] = np.where(op == CM, LINE, 4).astype(np.uint64)

    def _scanout(self, rng, c: _Cols, idx: np.ndarray, gpos: np.ndarray) -> None:
        """Frame buffer: the guest draws through Normal NC, host.vnc scans out through its WB mapping."""
        n = len(idx)
        u = rng.random(n)
        c.phase[idx] = PH_SCANOUT
        fb = np.uint64(FB.base) + ((gpos * 8) % FB.size).astype(np.uint64)
        vcpu = self._vcpus(rng, n)
        draw = u < 0.55
        vnc = (u >= 0.55) & (u < 0.97)
        flush = u >= 0.97
        c.agent[idx] = np.where(draw | flush, vcpu, HOST_VNC)
        c.op[idx] = np.where(draw, WR, np.where(vnc, RD, CM))
        c.attr_index[idx] = 2  # Normal NC
        behind = np.maximum((fb - np.uint64(4096)) & ~np.uint64(63), np.uint64(FB.base))
        c.addr[idx] = np.where(draw, fb, np.where(vnc, behind, fb & ~np.uint64(LINE - 1)))
        c.size[idx] = np.where(draw, 8, LINE).astype(np.uint64)
        fi = idx[flush]
        c.cmo[fi] = np.where(rng.random(len(fi)) < 0.5, CVAC, CIVAC)

    def _virtio(self, rng, c: _Cols, idx: np.ndarray, gpos: np.ndarray) -> None:
        """Virtio ring: guest writes descriptors (WB, shared), QEMU reads them and writes the used ring."""
        n = len(idx)
        u = rng.random(n)
        c.phase[idx] = PH_VIRTIO
        vcpu = self._vcpus(rng, n)
        host = (u >= 0.35) & (u < 0.8)
        c.agent[idx] = np.where(host, HOST_VIRTIO, vcpu)
        c.op[idx] = np.where(u < 0.35, WR, np.where(u < 0.65, RD, np.where(u < 0.8, WR, np.where(u < 0.96, RD, WR))))
        c.addr[idx] = _aligned(rng, RING.base, 64 << 10, n, 16)
        c.size[idx] = 16
        kick = idx[u >= 0.96]
        c.addr[kick] = np.uint64(VIRTIO_MMIO.base + 0x50)
        c.size[kick] = 4
        c.attr_index[kick] = 3

    def _dma(self, rng, c: _Cols, idx: np.ndarray, gpos: np.ndarray) -> None:
        """Streaming DMA: devices write/read buffers; the guest cleans/invalidates (mostly) and reads."""
        n = len(idx)
        u = rng.random(n)
        u2 = rng.random(n)
        c.phase[idx] = PH_DMA
        big = u2 < 0.2
        buf = _aligned(rng, DMA.base, DMA.size, n, LINE, zipf=1.0)
        c.addr[idx] = np.where(big, buf & ~np.uint64(511), buf)
        c.size[idx] = np.where(big, 512, LINE).astype(np.uint64)
        dev = np.where(u2 < 0.45, DEV_BLK, np.where(u2 < 0.8, DEV_NIC, DEV_GPU)).astype(np.uint8)
        vcpu = self._vcpus(rng, n)
        devside = u < 0.45
        c.agent[idx] = np.where(devside, dev, vcpu)
        c.op[idx] = np.where(u < 0.3, WR, np.where(u < 0.45, RD, np.where(u < 0.6, CM, np.where(u < 0.92, RD, WR))))
        maint = (u >= 0.45) & (u < 0.6)
        c.cmo[idx[maint]] = np.where(u2[maint] < 0.6, CIVAC, np.where(u2[maint] < 0.9, IVAC, CVAC))

    # -- chunks ---------------------------------------------------------------

    def chunk(self, i: int) -> pl.DataFrame:
        """Chunk ``i`` (events i*CHUNK ..): its own random stream, so chunks can be made in any order."""
        ss = np.random.SeedSequence(self.seed, spawn_key=(i,))
        start = i * CHUNK
        n = min(CHUNK, self.n - start)
        rng = np.random.default_rng(ss)
        c = _Cols.empty(n)
        gpos = np.arange(start, start + n)
        boot = gpos < self.boot_len
        if boot.any():
            bc = _Cols.empty(int(boot.sum()))
            self._boot(rng, start, bc)
            for f in ("agent", "op", "addr", "size", "cmo", "sysreg", "value", "attr_index", "phase"):
                getattr(c, f)[boot] = getattr(bc, f)
        self._steady(rng, start, c, ~boot)
        return self._frame(c, start)

    def chunks(self, prefetch: int = 0) -> Iterator[pl.DataFrame]:
        """trace-v1 frames of at most CHUNK events, in order (``prefetch`` chunks made ahead in threads)."""
        count = (self.n + CHUNK - 1) // CHUNK
        if prefetch <= 0:
            for i in range(count):
                yield self.chunk(i)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(prefetch) as pool:
            pending = [pool.submit(self.chunk, i) for i in range(min(prefetch, count))]
            for i in range(count):
                df = pending.pop(0).result()
                if i + prefetch < count:
                    pending.append(pool.submit(self.chunk, i + prefetch))
                yield df

    def _frame(self, c: _Cols, start: int) -> pl.DataFrame:
        n = len(c.agent)
        has_addr = (c.op <= CM) & ~((c.op == CM) & np.isin(c.cmo, [IALLU, CISW, CSW, ISW, IALLUIS]))
        sides = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2], np.uint8)[c.agent]
        is_sr = c.op == SR
        table = pa.table({
            "seq": pa.array(np.arange(start, start + n, dtype=np.uint64)),
            "time": pa.array(np.arange(start, start + n, dtype=np.float64) * 1e-7),
            "agent": _dict_column(c.agent, AGENTS),
            "side": _dict_column(sides, ("guest", "host", "dev")),
            "op": _dict_column(c.op, OPS),
            "addr": pa.array(c.addr, mask=~has_addr),
            "size": pa.array(c.size, mask=~has_addr),
            "cmo": _dict_column(c.cmo, CMOS, null_code=NOC),
            "sysreg": _dict_column(c.sysreg, ("", "SCTLR_EL1", "MAIR_EL1"), null_code=0),
            "value": pa.array(c.value, mask=~is_sr),
            "attr_index": pa.array(c.attr_index, mask=c.attr_index == 255),
            "phase": _dict_column(c.phase, PHASES),
            "detail": _dict_column(np.where(c.op == BR, 1, 0), ("", "dmb ish"), null_code=0),
            "src": _dict_column(np.zeros(n, np.uint8), (self.src,)),
        })
        return pl.from_arrow(table)


def synth(events: int, output: str | Path, *, seed: int = 0, profile: str = "mixed", force: bool = False,
          quiet: bool = True) -> Path:
    """Write a synthetic trace of ``events`` events (trace-v1 Parquet) and return its path."""
    from ._progress import progress

    gen = Synth(events, seed, profile)
    bar = progress(total=events, desc=f"synth {profile}", unit="ev", unit_scale=True, quiet=quiet)

    def batches() -> Iterator[pl.DataFrame]:
        for df in gen.chunks(prefetch=2):
            bar.update(df.height)
            yield df

    try:
        return write_table(batches(), output, schema=TRACE_SCHEMA, info=trace_info(), force=force)
    finally:
        bar.close()


def synth_frame(events: int, *, seed: int = 0, profile: str = "mixed") -> pl.DataFrame:
    """The same events in memory (tests, benchmarks); trace-v1 columns."""
    from .schema import conform

    return conform(pl.concat(list(Synth(events, seed, profile).chunks())), TRACE_SCHEMA)
