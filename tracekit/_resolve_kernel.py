"""The per-event part of `resolve` as one compiled pass (numba, cached on disk).

Each event's type depends on its vCPU's SCTLR_EL1/MAIR_EL1 *at that point of the
trace*, which is a running state: a loop over the events in order, carrying one
pair of registers per vCPU, is the natural (and fastest) form. Everything else
(stage 1 from MMU state, ``attr=`` or the MAIR byte, stage 2 from the region,
FWB, host and device types, the path) is a few table lookups per event, done in
the same pass so the arrays are read once. ``resolve.py`` prepares the integer
codes and turns the outputs into polars Enums; the rules themselves are
documented there and in docs/semantics.md.
"""

from __future__ import annotations

import numpy as np
from numba import njit

NONE = 255


@njit(cache=True, inline="always")
def _write_register(i, a, reg, value, has_value, cur_sctlr, cur_mair):
    """Row ``i``'s SCTLR_EL1 (``reg`` 1) or MAIR_EL1 (2) write, into vCPU ``a``'s registers
    (a write without a value writes 0)."""
    v = value[i] if has_value[i] else np.uint64(0)
    if reg[i] == 1:
        cur_sctlr[a] = v
    else:
        cur_mair[a] = v


@njit(cache=True, inline="always")
def _guest_type(decl, sc, ifetch, s2, forced_wb, NC, WB, M, C, I):
    """Stage 1's type and the effective type of a guest access: the MMU on (SCTLR_EL1.M) with
    the access's cache enable clear (C for data, I for an instruction fetch) makes a Normal
    declaration Non-cacheable; stage 1 x stage 2 takes the more restrictive, unless FWB
    forces Write-Back. The rule of both ``resolve_codes`` and ``guest_types``."""
    cache_off = ((sc & I) == 0) if ifetch else ((sc & C) == 0)
    s1 = NC if ((sc & M) != 0 and cache_off and decl >= NC) else decl
    return s1, (WB if forced_wb else min(s1, s2))


@njit(cache=True, nogil=True)
def registers_before(stop, op, side, agent, vcpu_of, reg, value, has_value, n_agents, sysreg, guest):
    """Each vCPU's SCTLR_EL1 and MAIR_EL1 after the rows before ``stop``: where the second half
    of ``resolve_codes``' rows starts from (only the register writes are looked at)."""
    cur_sctlr = np.zeros(max(n_agents, 1), np.uint64)
    cur_mair = np.zeros(max(n_agents, 1), np.uint64)
    for i in range(stop):
        if op[i] == sysreg and reg[i] != 0 and side[i] == guest:
            _write_register(i, vcpu_of[agent[i]], reg, value, has_value, cur_sctlr, cur_mair)
    return cur_sctlr, cur_mair


@njit(cache=True, nogil=True)
def resolve_codes(lo, hi, cur_sctlr, cur_mair, sctlr, mair, s1_decl, s1_type, s2_type, mem, path, source, fwb,
                  op, side, attr, has_idx, attr_index, agent, vcpu_of, reg, value, has_value, pick,
                  s2_of_region, host_of_region, ram_region, dev_type, zva, fwb_trace,
                  mair_codes, path_codes, c):
    """Write rows ``[lo, hi)`` of sctlr, mair, s1_decl, s1_type, s2_type, mem_type, path,
    type_source and fwb (255: null; sctlr and mair 0 off the guest), starting from the vCPUs'
    registers ``cur_sctlr`` / ``cur_mair`` (updated as the rows write them).

    ``c`` holds the vocabulary codes: [READ, WRITE, IFETCH, SYSREG, GUEST, HOST, DEV, DEV_T, NC, WT, WB,
    SCTLR_M, SCTLR_C, SCTLR_I, SRC_MMU_OFF, SRC_ATTR, SRC_MAIR, SRC_ASSUMED, SRC_HOST_MAP, SRC_HOST_ATTR,
    SRC_DEVICE, SRC_DEVICE_ATTR]. ``agent`` holds the agents' codes, ``vcpu_of`` the number of
    each guest agent's code (``vcpu_numbers``);
    ``reg`` is 1 for an SCTLR_EL1 write, 2 for a MAIR_EL1 write, 0 otherwise.
    """
    READ, WRITE, IFETCH, SYSREG, GUEST, HOST = c[0], c[1], c[2], c[3], c[4], c[5]
    DEV_T, NC, WT, WB = c[7], c[8], c[9], c[10]
    M, C, I = np.uint64(c[11]), np.uint64(c[12]), np.uint64(c[13])
    n_types = path_codes.shape[0] - 1
    for i in range(lo, hi):
        o = op[i]
        s = side[i]
        sctlr[i] = 0
        mair[i] = 0
        s1_decl[i] = NONE
        s1_type[i] = NONE
        s2_type[i] = NONE
        mem[i] = NONE
        path[i] = NONE
        source[i] = NONE
        fwb[i] = NONE
        if s == GUEST:
            a = vcpu_of[agent[i]]
            if o == SYSREG and reg[i] != 0:
                _write_register(i, a, reg, value, has_value, cur_sctlr, cur_mair)
            sctlr[i] = cur_sctlr[a]
            mair[i] = cur_mair[a]
        access = o == READ or o == WRITE or o == IFETCH
        if not (access or zva[i]):
            continue
        r = pick[i]
        at = attr[i]
        if s == GUEST:
            sc = sctlr[i]
            ifetch = o == IFETCH
            if (sc & M) == 0:
                if ifetch:
                    decl = WT if (sc & I) != 0 else NC
                else:
                    decl = DEV_T
                src = c[14]
            elif at != NONE:
                decl = at
                src = c[15]
            elif has_idx[i]:
                byte = (mair[i] >> (np.uint64(attr_index[i] & 7) * np.uint64(8))) & np.uint64(0xFF)
                decl = mair_codes[byte]
                src = c[16]
            else:
                decl = WB
                src = c[17]
            s2 = s2_of_region[r]
            f = fwb_trace and ram_region[r]
            s1, m = _guest_type(decl, sc, ifetch, s2, f, NC, WB, M, C, I)
            s1_decl[i] = decl
            s1_type[i] = s1
            s2_type[i] = s2
            fwb[i] = 1 if f else 0
            source[i] = src
        else:
            if s == HOST:
                m = at if at != NONE else host_of_region[r]
                source[i] = c[19] if at != NONE else c[18]
            else:
                m = at if at != NONE else dev_type[i]
                source[i] = c[21] if at != NONE else c[20]
        mem[i] = m
        path[i] = path_codes[min(m, n_types)]


@njit(cache=True, nogil=True)
def vcpu_numbers(agent, side, guest, n_codes):
    """The vCPUs' numbers (0, 1, ... in code order) at their agent codes (< ``n_codes``), -1
    at the others', and how many: one pass, where a count of the codes of the guest's events
    made two 10 M-element temporaries."""
    seen = np.zeros(n_codes, np.bool_)
    for i in range(agent.shape[0]):
        if side[i] == guest:
            seen[agent[i]] = True
    number = np.full(n_codes, -1, np.int64)
    n = 0
    for a in range(n_codes):
        if seen[a]:
            number[a] = n
            n += 1
    return number, n


@njit(cache=True, nogil=True)
def region_pick(addr, has_addr, lo, hi, out, bases, ends, unbounded):
    """Write ``out[lo:hi]``: the index of the region holding each address (``len(bases)`` for
    none); bases sorted, regions disjoint.

    ``out`` is uint32: what polars gathers by, and half the pages of int64 to fault in.
    """
    k = bases.shape[0]
    last = 0  # consecutive events mostly hit the same region: try it first
    for i in range(lo, hi):
        out[i] = k
        if not has_addr[i]:
            continue
        a = addr[i]
        if k and bases[last] <= a and (a < ends[last] or unbounded[last]):
            out[i] = last
            continue
        lo, hi = 0, k
        while lo < hi:  # first base > a
            mid = (lo + hi) >> 1
            if bases[mid] <= a:
                lo = mid + 1
            else:
                hi = mid
        j = lo - 1
        if j >= 0 and (a < ends[j] or unbounded[j]):
            out[i] = j
            last = j


@njit(cache=True, nogil=True)
def guest_types(decl, sctlr, has_sctlr, op, s2, fwb, mem_before, path_codes, c):
    """Return s1_type, mem_type and path after a mitigation changed ``s1_decl`` / ``fwb``
    (``resolve.finalize_types``, whose rules these are), in one pass without temporaries.

    ``c`` holds [IFETCH, NC, WB, SCTLR_M, SCTLR_C, SCTLR_I]; a null SCTLR_EL1 reads as 0.
    """
    n = decl.shape[0]
    IFETCH, NC, WB = c[0], c[1], c[2]
    M, C, I = np.uint64(c[3]), np.uint64(c[4]), np.uint64(c[5])
    s1 = np.empty(n, np.uint8)
    mem = np.empty(n, np.uint8)
    path = np.empty(n, np.uint8)
    for i in range(n):
        d = decl[i]
        if d == NONE:  # not a guest access: its types stay
            s1[i] = d
            t = mem_before[i]
        else:
            v = np.uint64(sctlr[i]) if has_sctlr[i] else np.uint64(0)
            s1[i], t = _guest_type(d, v, op[i] == IFETCH, s2[i], fwb[i], NC, WB, M, C, I)
        mem[i] = t
        path[i] = path_codes[min(t, path_codes.shape[0] - 1)]
    return s1, mem, path
