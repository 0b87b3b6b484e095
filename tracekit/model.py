"""The domain's vocabulary: memory types, paths, maintenance operations, regions.

Everything here is a constant or a small frozen dataclass so that importers,
the resolver, mitigations and both engines speak the same words
(``../shared/design/coherence-model.md`` sections 2-5).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Iterable

# --------------------------------------------------------------------------
# Memory types and paths (model section 2 and 3)

#: Memory types, most restrictive first. Stage-1 x stage-2 combination takes
#: the one with the lower rank (model 3.2).
MEMORY_TYPES: tuple[str, ...] = (
    "dev-ngnrne",
    "dev-ngnre",
    "dev-ngre",
    "dev-gre",
    "nc",
    "wt",
    "wb",
)
TYPE_RANK: dict[str, int] = {t: i for i, t in enumerate(MEMORY_TYPES)}
DEVICE_TYPES = frozenset(MEMORY_TYPES[:4])

#: Spellings accepted in ``attr=``, ``s2=``, ``host=`` and mapped to MEMORY_TYPES.
ATTR_ALIASES: dict[str, str] = {"dev": "dev-ngnrne", **{t: t for t in MEMORY_TYPES}}

#: Path an access takes for a memory type: C cacheable (write-back), T
#: write-through, N straight to memory.
PATH_OF_TYPE: dict[str, str] = {
    **{t: "N" for t in DEVICE_TYPES},
    "nc": "N",
    "wt": "T",
    "wb": "C",
}
PATHS = ("C", "T", "N")

# --------------------------------------------------------------------------
# Operations

SIDES = ("guest", "host", "dev")
OPS = ("read", "write", "ifetch", "cmo", "sysreg", "barrier", "marker")
ACCESS_OPS = ("read", "write", "ifetch")

#: Cache-maintenance operations a trace may contain. ``ram.civac`` is only
#: inserted by mitigations (a clean+invalidate of all guest RAM by VA).
CMO_OPS = (
    "dc.ivac",
    "dc.cvac",
    "dc.cvap",
    "dc.civac",
    "dc.cvau",
    "dc.zva",
    "ic.ivau",
    "ic.iallu",
    "ic.ialluis",
    "dc.isw",
    "dc.csw",
    "dc.cisw",
    "ram.civac",
)
#: Operations that take no address: set/way, whole-I-cache and whole-RAM.
CMO_WITHOUT_ADDRESS = frozenset({"ic.iallu", "ic.ialluis", "dc.isw", "dc.csw", "dc.cisw", "ram.civac"})
SET_WAY_OPS = frozenset({"dc.isw", "dc.csw", "dc.cisw"})


@dataclass(frozen=True)
class CmoEffect:
    """What a maintenance operation does to a line (model section 4 table)."""

    clean_poc: bool = False
    clean_pou: bool = False
    invalidate: bool = False
    may_discard: bool = False
    ic_invalidate: bool = False
    all_lines: bool = False  # set/way, IALLU and whole-RAM operations


_CMO_EFFECT = {
    "dc.cvac": CmoEffect(clean_poc=True, clean_pou=True),
    "dc.cvap": CmoEffect(clean_poc=True, clean_pou=True),
    "dc.civac": CmoEffect(clean_poc=True, clean_pou=True, invalidate=True),
    "dc.ivac": CmoEffect(invalidate=True, may_discard=True),
    "dc.cvau": CmoEffect(clean_pou=True),
    "dc.zva": CmoEffect(),  # a write of zeros: the engines treat it as a write
    "ic.ivau": CmoEffect(ic_invalidate=True),
    "ic.iallu": CmoEffect(ic_invalidate=True, all_lines=True),
    "ic.ialluis": CmoEffect(ic_invalidate=True, all_lines=True),
    "dc.isw": CmoEffect(may_discard=True, all_lines=True),
    "dc.csw": CmoEffect(all_lines=True),
    "dc.cisw": CmoEffect(all_lines=True),
    "ram.civac": CmoEffect(clean_poc=True, clean_pou=True, invalidate=True, all_lines=True),
}

#: With stage 2 enabled, a guest's invalidate-only operations act as their
#: clean+invalidate forms (HCR_EL2.VM; model section 4).
STAGE2_UPGRADE = {"dc.ivac": "dc.civac", "dc.isw": "dc.cisw"}


def cmo_effect(cmo: str, *, side: str, stage2: bool) -> CmoEffect:
    """Effect of ``cmo`` executed by an agent of ``side`` on a trace with/without stage 2."""
    if stage2 and side == "guest":
        cmo = STAGE2_UPGRADE.get(cmo, cmo)
    return _CMO_EFFECT[cmo]


# --------------------------------------------------------------------------
# Findings vocabulary (model sections 4 and 7)

KINDS = ("stale-read", "lost-write", "stale-ifetch")
CAUSES = (
    "dirty-not-cleaned",
    "stale-line-not-invalidated",
    "clobbered-by-writeback",
    "discarded-by-invalidate",
    "icache-not-invalidated",
)
FIX_OPS = ("clean", "invalidate", "clean+invalidate", "ic-invalidate")
#: The fix each cause calls for.
FIX_OP_OF_CAUSE = {
    "dirty-not-cleaned": "clean",
    "stale-line-not-invalidated": "invalidate",
    "clobbered-by-writeback": "clean",
    "discarded-by-invalidate": "clean+invalidate",
    "icache-not-invalidated": "ic-invalidate",
}

# --------------------------------------------------------------------------
# MAIR decoding (model section 3.1)


def decode_mair_byte(byte: int) -> str:
    """Memory type of one MAIR_EL1 attribute byte; the inner attribute decides.

    Encodings the model leaves out follow the Arm ARM: 0x40/0xA0 are the
    FEAT_XS forms of Normal NC/WT, 0xF0 is Tagged Normal WB (FEAT_MTE2); any
    other inner 0b0000 is reserved and taken as Non-cacheable; Device
    encodings with bits[1:0] set are taken by bits[3:2].
    """
    byte &= 0xFF
    hi, lo = byte >> 4, byte & 0xF
    if hi == 0:
        return ("dev-ngnrne", "dev-ngnre", "dev-ngre", "dev-gre")[lo >> 2]
    if lo == 0:
        return {0x4: "nc", 0xA: "wt", 0xF: "wb"}.get(hi, "nc")
    if lo == 0b0100:
        return "nc"
    if lo >> 2 == 0b00:  # 0b00RW, RW != 00
        return "wt"
    if lo >> 2 == 0b01:  # 0b01RW, RW != 00
        return "wb"
    if lo >> 2 == 0b10:
        return "wt"
    return "wb"


#: The whole table, for vectorised lookups.
MAIR_BYTE_TYPE: tuple[str, ...] = tuple(decode_mair_byte(b) for b in range(256))

SCTLR_M = 1 << 0
SCTLR_C = 1 << 2
SCTLR_I = 1 << 12

# --------------------------------------------------------------------------
# Trace-wide settings


@dataclass(frozen=True)
class Region:
    """A range of guest-physical memory and how each side maps it (model section 5)."""

    name: str
    base: int
    size: int
    kind: str = "ram"  # ram | mmio
    s2: str = "wb"  # stage-2 memory type
    host: str = "wb"  # host mapping memory type, or "none"
    shared: bool = False

    @property
    def end(self) -> int:
        return self.base + self.size

    @classmethod
    def make(cls, name: str, base: int, size: int, kind: str = "ram", *, s2: str | None = None,
             host: str | None = None, shared: bool = False) -> "Region":
        """A region with the model's defaults for its kind (ram: wb/wb, mmio: dev/none)."""
        if s2 is None:
            s2 = "wb" if kind == "ram" else "dev-ngnrne"
        if host is None:
            host = "wb" if kind == "ram" else "none"
        return cls(name, base, size, kind, ATTR_ALIASES.get(s2, s2), ATTR_ALIASES.get(host, host), shared)


#: The implicit region of a trace that declares none: all memory is RAM.
ALL_RAM = Region("ram", 0, 1 << 64, "ram", "wb", "wb", False)


@dataclass(frozen=True)
class Device:
    """A DMA master: coherent ones snoop the caches (path C), others go to memory (N)."""

    name: str
    coherent: bool


@dataclass(frozen=True)
class InputFile:
    name: str
    sha256: str
    format: str


@dataclass(frozen=True)
class TraceInfo:
    """Trace-wide settings, stored as JSON in the Parquet metadata under ``tracekit``."""

    line_size: int = 64
    stage2: bool = True
    fwb: bool = False
    regions: tuple[Region, ...] = ()
    devices: tuple[Device, ...] = ()
    inputs: tuple[InputFile, ...] = ()

    def effective_regions(self) -> tuple[Region, ...]:
        """The declared regions, or the single all-RAM region when none are declared."""
        return self.regions or (ALL_RAM,)

    def device(self, name: str) -> Device | None:
        return next((d for d in self.devices if d.name == name), None)

    def replace(self, **changes: Any) -> "TraceInfo":
        return dataclasses.replace(self, **changes)

    def to_json(self, **extra: Any) -> str:
        d = dataclasses.asdict(self)
        d.update(extra)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TraceInfo":
        return cls(
            line_size=int(d.get("line_size", 64)),
            stage2=bool(d.get("stage2", True)),
            fwb=bool(d.get("fwb", False)),
            regions=tuple(Region(**r) for r in d.get("regions", ())),
            devices=tuple(Device(**x) for x in d.get("devices", ())),
            inputs=tuple(InputFile(**x) for x in d.get("inputs", ())),
        )


def seq_sub_key(seq, sub):
    """(seq, sub) of numpy arrays as one uint64 per event that orders like the pair (seq below
    2^32): an event's identity across frames of one trace, and a one-key sort by event order."""
    import numpy as np

    return (seq.astype(np.uint64, copy=False) << np.uint64(32)) | (sub.astype(np.int64) + (1 << 31)).astype(np.uint64)


def side_of(agent: str) -> str:
    return agent.split(".", 1)[0]


def iter_lines(addr: int, size: int, line_size: int) -> Iterable[int]:
    """Line numbers (addr // line_size) that [addr, addr+size) touches."""
    return range(addr // line_size, (addr + size - 1) // line_size + 1)

