"""The fast engine's compiled scan: every line's events in order, one pass (numba).

Kept apart from ``fast.py`` so that importing tracekit does not import numba;
the machine code is cached on disk (``cache=True``), so only the first run in a
fresh environment pays for compilation.

Input rows are the per-line pieces of events (accesses, address maintenance,
DC ZVA), sorted by (line, pos) where ``pos`` is the event's row in the resolved
frame (its (seq, sub) rank). Whole-cache operations (ram.civac, IC IALLU(IS),
DC ISW that may discard) are not exploded: they live on three small sorted
position arrays that each line consults by binary search between two of its own
events, so one such operation costs O(log n) per line that has events around
it, never O(lines).

The rules are docs/semantics.md, and mirror ``reference.py`` step for step.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# row codes
READ, WRITE, IFETCH, CMO = 0, 1, 2, 3
#: DC ZVA's code before it is cut (a write of the whole line)
ZVA = 4
# paths (3: none)
P_C, P_T, P_N = 0, 1, 2
# maintenance effect bits
E_CLEAN_POC, E_CLEAN_POU, E_INVAL, E_DISCARD, E_IC = 1, 2, 4, 8, 16
# byte spoil flags
S_NONE, S_CLOB, S_DISC = 0, 1, 2
# kinds and causes, numbered in their string order (findings sort by the strings)
K_LOST, K_IFETCH, K_READ = 0, 1, 2
X_CLOB, X_DIRTY, X_DISC, X_ICACHE, X_STALE = 0, 1, 2, 3, 4
#: output columns: row (the finding's piece), kind, cause, other, fix_after, fix_before, fix_agent (positions)
NCOL = 7

# A piece's attributes packed in one uint64 (fewer arrays to sort, gather and merge):
# lo (13 bits) | hi (13) | code (2) | path (2) | effect bits (5) | host-cacheable (1) | RAM (1)
SH_HI, SH_CODE, SH_PATH, SH_EFF, SH_HOSTC, SH_RAM = 13, 26, 28, 30, 35, 36
M13 = (1 << 13) - 1
#: bits of one radix-sort digit at most (2,048 buckets: the counts stay in the first-level cache)
_DIGIT = 11
#: bits of path and host-cacheable: what a mitigation may change for a recorded event
PATH_HOSTC_MASK = (3 << SH_PATH) | (1 << SH_HOSTC)
# the same as uint64 constants, so that numba keeps the field arithmetic in unsigned integers
U_HI, U_CODE, U_PATH, U_EFF, U_HOSTC, U_RAM = (np.uint64(x) for x in (SH_HI, SH_CODE, SH_PATH, SH_EFF, SH_HOSTC, SH_RAM))
U3, U1, U31, U13 = np.uint64(3), np.uint64(1), np.uint64(31), np.uint64(M13)


@njit(cache=True, inline="always")
def field(a, shift, mask):
    """An unsigned field of a packed attribute word, as int64."""
    return np.int64((a >> shift) & mask)


@njit(cache=True, inline="always")
def pack(lo, hi, code, path, eff, hostc, ram):
    return (np.uint64(lo) | (np.uint64(hi) << U_HI) | (np.uint64(code) << U_CODE) | (np.uint64(path) << U_PATH)
            | (np.uint64(eff) << U_EFF) | (np.uint64(hostc) << U_HOSTC) | (np.uint64(ram) << U_RAM))


@njit(cache=True, inline="always")
def _first_at_least(a, lo, p):
    """Index of the first element of sorted ``a`` at or after ``lo`` that is >= p (len(a) if none)."""
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < p:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, inline="always")
def _last_before(a, p):
    """Index of the last element of sorted ``a`` that is < p, or -1."""
    return _first_at_least(a, 0, p) - 1


@njit(cache=True, inline="always")
def _advance(a, idx, p):
    """Index of the last element of sorted ``a`` that is < p, given ``idx`` that was so for a p' <= p.

    Pieces of a line come in increasing position, and most gaps between two of them hold no
    whole-cache operation: one comparison then, a binary search only when the cursor moves.
    """
    nxt = idx + 1
    if nxt >= a.shape[0] or a[nxt] >= p:
        return idx
    return _first_at_least(a, nxt + 1, p) - 1


@njit(cache=True, inline="always")
def _put(out, n, row, kind, cause, other, fix_after, fix_before, fix_agent):
    """Write finding n if ``out`` has room for it, and return n + 1 either way (a line that
    overflows is scanned again into a bigger array, see ``_scan_lines``)."""
    if n < out.shape[0]:
        out[n, 0] = row
        out[n, 1] = kind
        out[n, 2] = cause
        out[n, 3] = other
        out[n, 4] = fix_after
        out[n, 5] = fix_before
        out[n, 6] = fix_agent
    return n + 1


@njit(cache=True)
def _discard(out, n, q, dirty_end, tlo, thi, wpos, wrow, wpath, spoil, sother):
    """H4 at the may-discard operation at position q: report each live dirty write once, spoil its bytes."""
    for b in range(tlo, thi):
        w = wpos[b]
        if w >= 0 and wpath[b] == P_C and w > dirty_end and spoil[b] != S_DISC:
            # first discarding operation for this write on this line
            n = _put(out, n, wrow[b], K_LOST, X_DISC, q, w, q, q)
            for b2 in range(b, thi):
                if wpos[b2] == w:
                    spoil[b2] = S_DISC
    for b in range(tlo, thi):
        w = wpos[b]
        if w >= 0 and wpath[b] == P_C and w > dirty_end:
            spoil[b] = S_DISC
            sother[b] = q  # the latest discarding operation (as the reference re-spoils)
    return n


@njit(cache=True, nogil=True)
def scan(r_line, r_pos, r_attr, g_ram, g_ic, g_isw, n_events, line_size, observed):
    """Findings of every line: an (n, NCOL) int64 array (see NCOL), in no particular order.

    The lines are scanned into an output array that is grown, between two lines, when a line's
    findings did not fit (``_scan_lines``): the loop that scans never rebinds an array, so numba
    keeps reference counting out of it (an atomic increment and decrement per piece took half
    of the scan's time).
    """
    nrows = r_line.shape[0]
    out = np.empty((max(1024, nrows // 16), NCOL), np.int64)
    n = np.int64(0)  # (not literals: numba would compile _scan_lines once more for them, 2.5 s)
    i = np.int64(0)
    while True:
        i, n, need = _scan_lines(r_line, r_pos, r_attr, g_ram, g_ic, g_isw, n_events, line_size, observed,
                                 out, n, i)
        if i >= nrows:
            return out[:n].copy()
        bigger = np.empty((max(out.shape[0] * 2, n + need), NCOL), np.int64)
        for r in range(n):  # (not bigger[:n] = out[:n]: its shape check compiles numba's
            for c in range(NCOL):  # string formatting, 3.4 s of a cold start)
                bigger[r, c] = out[r, c]
        out = bigger


@njit(cache=True, nogil=True)
def _scan_lines(r_line, r_pos, r_attr, g_ram, g_ic, g_isw, n_events, line_size, observed, out, n, i):
    """Scan whole lines from piece i into ``out`` from row n: (the next line's first piece, rows
    used, and, when a line's findings did not fit, their count; that line is then to be scanned
    again, from its first piece, into a bigger array).

    Every line starts from a clean state (its bytes are forgotten at its end), so stopping
    between two lines loses nothing.
    """
    nrows = r_line.shape[0]
    wpos = np.full(line_size, -1, np.int64)  # W(b): position of the last write
    wrow = np.zeros(line_size, np.int64)  # ... its piece (for its bytes on the line)
    wpath = np.zeros(line_size, np.int8)
    spoil = np.zeros(line_size, np.int8)  # clobbered / discarded until written again
    sother = np.zeros(line_size, np.int64)  # H3: the C write; H4: the discarding op
    cachedw = np.zeros(line_size, np.bool_)  # the line may have been cached at W(b)
    has_ram = g_ram.shape[0] > 0
    has_ic = g_ic.shape[0] > 0
    has_isw = g_isw.shape[0] > 0
    has_global = has_ram or has_ic or has_isw

    while i < nrows:
        ln = r_line[i]
        n0 = n
        # first pass: is the line mapped cacheable (architectural speculation)?
        j = i
        mapped = False
        while j < nrows and r_line[j] == ln:
            a = r_attr[j]
            pj = field(a, U_PATH, U3)
            if pj <= P_N and (pj <= P_T or field(a, U_HOSTC, U1) == 1):
                mapped = True
            j += 1
        is_ram = False
        last_clean = -1  # clean to PoC
        last_inval = -1
        last_cw = -1  # last write on path C
        last_pou = -1
        last_ic = -1
        pou_ic = -1  # last clean to PoU before last_ic
        last_ct = -1  # observed: last data access on C/T
        # bounds that let an access skip its bytes when no hazard rule can fire on them:
        last_w = -1  # last write on any path (an ifetch finds nothing when all are behind IC + PoU clean)
        last_nc = -1  # last write on path N whose line may have been cached (H2 needs one after last_inval)
        spoiled = False  # some byte was clobbered or discarded since the line began (H3/H4)
        tlo = line_size
        thi = np.int64(0)  # (not a literal: numba would compile _discard once more for it)
        k = i
        # cursors into the whole-cache timelines: the last operation before p (ram, ic) or p1 + 1 (isw)
        ram_c = -1
        ic_c = -1
        isw_c = -1
        while True:
            p = r_pos[k] if k < j else n_events
            if k > i and has_global:
                # whole-cache operations strictly between the previous piece and this one
                p1 = r_pos[k - 1]
                r = -1
                if is_ram and has_ram:
                    ram_c = _advance(g_ram, ram_c, p)
                    ir = ram_c
                    if ir >= 0 and g_ram[ir] > p1:
                        r = g_ram[ir]
                if has_isw and last_cw > max(last_clean, last_inval):
                    # DC ISW before the gap's first ram.civac: the first reports and spoils,
                    # each later one re-spoils (a read names the latest); after the clean, none acts
                    limit = p
                    if r >= 0:
                        limit = g_ram[_last_before(g_ram, p1 + 1) + 1]
                    isw_c = _advance(g_isw, isw_c, p1 + 1)
                    s_i = isw_c + 1
                    if s_i < g_isw.shape[0] and g_isw[s_i] < limit:
                        dirty_end = max(last_clean, last_inval)
                        spoiled = True  # last_cw > dirty_end: there may be bytes to discard
                        n = _discard(out, n, g_isw[s_i], dirty_end, tlo, thi, wpos, wrow, wpath, spoil, sother)
                        last_s = g_isw[_last_before(g_isw, limit)]
                        if last_s != g_isw[s_i]:
                            n = _discard(out, n, last_s, dirty_end, tlo, thi, wpos, wrow, wpath, spoil, sother)
                if has_ic:
                    ic_c = _advance(g_ic, ic_c, p)
                    ic_i = ic_c
                    if ic_i >= 0 and g_ic[ic_i] > p1:
                        c = g_ic[ic_i]
                        pb = last_pou
                        if is_ram and has_ram:
                            ir4 = _last_before(g_ram, c)
                            if ir4 >= 0 and g_ram[ir4] > pb:
                                pb = g_ram[ir4]
                        pou_ic = pb
                        last_ic = c
                if r >= 0:
                    last_clean = r
                    last_inval = r
                    last_pou = r
            if k == j:
                break
            a = r_attr[k]
            if field(a, U_RAM, U1) == 1:
                is_ram = True
            code = field(a, U_CODE, U3)
            lo = np.int64(a & U13)
            hi = field(a, U_HI, U13)
            pth = field(a, U_PATH, U3)
            if code == READ:
                h1 = -1
                h2 = -1
                h3 = -1
                h3o = -1
                h4 = -1
                h4o = -1
                dirty_end = max(last_clean, last_inval)
                # H1 needs a C write after dirty_end, H2 a cached N write after last_inval,
                # H3/H4 a spoiled byte: when none can be there, the bytes need no look
                if not (spoiled or (pth == P_N and last_cw > dirty_end) or (pth <= P_T and last_nc > last_inval)):
                    hi = lo
                for b in range(lo, hi):
                    w = wpos[b]
                    if w < 0:
                        continue
                    sp = spoil[b]
                    if sp == S_CLOB:
                        if w > h3:
                            h3 = w
                            h3o = sother[b]
                    elif sp == S_DISC:
                        if w > h4:
                            h4 = w
                            h4o = sother[b]
                    wp = wpath[b]
                    if pth == P_N:
                        if wp == P_C and w > dirty_end and w > h1:
                            h1 = w
                    elif pth <= P_T:
                        if wp == P_N and cachedw[b] and w > last_inval and w > h2:
                            h2 = w
                if h1 >= 0:
                    n = _put(out, n, k, K_READ, X_DIRTY, h1, h1, p, h1)
                if h2 >= 0:
                    n = _put(out, n, k, K_READ, X_STALE, h2, h2, p, p)
                if h3 >= 0:
                    n = _put(out, n, k, K_READ, X_CLOB, h3, h3o, h3, h3o)
                if h4 >= 0:
                    n = _put(out, n, k, K_READ, X_DISC, h4, h4, h4o, h4o)
                if observed and pth <= P_T:
                    last_ct = p
            elif code == WRITE:
                clob = False
                if pth == P_N and last_cw > max(last_clean, last_inval):
                    clob = True
                    n = _put(out, n, k, K_LOST, X_CLOB, last_cw, last_cw, p, last_cw)
                if observed:
                    cached = last_ct > last_inval
                else:
                    cached = mapped
                # one store loop per array (no branch inside: they vectorise)
                wpos[lo:hi] = p
                wrow[lo:hi] = k
                wpath[lo:hi] = pth
                cachedw[lo:hi] = cached
                if clob:
                    spoil[lo:hi] = S_CLOB
                    sother[lo:hi] = last_cw
                    spoiled = True
                else:
                    spoil[lo:hi] = S_NONE
                last_w = p
                if pth == P_N and cached:
                    last_nc = p
                if lo < tlo:
                    tlo = lo
                if hi > thi:
                    thi = hi
                if pth == P_C:
                    last_cw = p
                if observed and pth <= P_T:
                    last_ct = p
            elif code == IFETCH:
                ic = -1
                if last_w < last_ic and last_cw < pou_ic:
                    hi = lo  # every write is behind the last IC invalidate, every C write behind its PoU clean
                for b in range(lo, hi):
                    w = wpos[b]
                    if w < 0:
                        continue
                    ok = last_ic > w and (wpath[b] != P_C or pou_ic > w)
                    if not ok and w > ic:
                        ic = w
                if ic >= 0:
                    n = _put(out, n, k, K_IFETCH, X_ICACHE, ic, ic, p, p)
            else:
                e = field(a, U_EFF, U31)
                dirty_end = max(last_clean, last_inval)
                if e & E_DISCARD and last_cw > dirty_end:
                    # (only a C write after the last clean or invalidate has bytes to discard)
                    spoiled = True
                    n = _discard(out, n, p, dirty_end, tlo, thi, wpos, wrow, wpath, spoil, sother)
                if e & E_INVAL:
                    last_inval = p
                if e & E_CLEAN_POC:
                    last_clean = p
                if e & E_CLEAN_POU:
                    last_pou = p
                if e & E_IC:
                    last_ic = p
                    pou_ic = last_pou
            k += 1
        # forget the line's bytes
        for b in range(tlo, thi):
            wpos[b] = -1
            spoil[b] = S_NONE
        if n > out.shape[0]:
            return i, n0, n - n0  # the line's findings did not all fit: again, into a bigger array
        i = j
    return i, n, 0


@njit(cache=True, inline="always")
def _last_byte(a, s, is_cmo, is_zva, ls):
    """The last byte of an event's span: a maintenance by address with no size covers the
    line holding a (as the reference), DC ZVA that line whole (its pieces say so)."""
    one = np.uint64(1)
    if is_zva:
        return a
    if s == 0:
        s = (ls - (a & (ls - one))) if is_cmo else one
    return a + (s - one)


@njit(cache=True, inline="always")
def _row_code(i, op, cmo, cmo_op, op_lut, cmo_lut):
    """Row i's code (READ, WRITE, IFETCH, CMO, ZVA); -1: it acts on no line by address."""
    return cmo_lut[cmo[i]] if op[i] == cmo_op else op_lut[op[i]]


@njit(cache=True, inline="always")
def _span(i, c, addr, size, has_size, ls, lsh):
    """Row i's first line, last line and last byte (``c``: its row code, DC ZVA still ZVA)."""
    a = addr[i]
    end = _last_byte(a, size[i] if has_size[i] else np.uint64(0), c == CMO, c == ZVA, ls)
    return a >> lsh, end >> lsh, end


@njit(cache=True, nogil=True)
def count_pieces(rows, every_row, j0, j1, op, cmo, addr, has_addr, size, has_size, cmo_op, op_lut, cmo_lut,
                 line_size):
    """How many pieces ``cut_pieces`` makes of ``rows[j0:j1]`` (``every_row``: of rows j0 to j1,
    in order), and the least and the greatest line they are on (no pieces: the greatest
    uint64 and 0).

    Its loop head is ``cut_pieces``' on purpose (the same rows, tested alike; the span is the
    shared ``_span``): the row test moved into one inline helper made this pass 0.19 -> 0.25 s,
    or 0.31 s with the address test first, on 10 M events.
    """
    ls = np.uint64(line_size)
    lsh = np.uint64(_log2(line_size))  # (a shift, not a 64-bit division, per address)
    total = 0
    lmin = np.uint64(0xFFFFFFFFFFFFFFFF)
    lmax = np.uint64(0)
    for j in range(j0, j1):
        i = j if every_row else rows[j]
        c = _row_code(i, op, cmo, cmo_op, op_lut, cmo_lut)
        if c < 0 or not has_addr[i]:
            continue
        first, last, _ = _span(i, c, addr, size, has_size, ls, lsh)
        total += np.int64(last - first) + 1
        lmin = min(lmin, first)
        lmax = max(lmax, last)
    return total, lmin, lmax


@njit(cache=True, nogil=True)
def cut_pieces(rows, every_row, j0, j1, k0, rank_of, op, cmo, side, path, region_kind, addr, has_addr, size,
               has_size, hostc, guest_side, cmo_op, op_lut, cmo_lut, path_lut, eff_lut, line_size, lmin, pos_bits,
               packed, o_key, o_attr, o_pos):
    """Cut the rows acting on lines by address (``rows[j0:j1]``, or rows j0 to j1) into per-line
    pieces, in row order, from output place ``k0`` on, straight from the frame's Enum codes (no
    per-event arrays in between).

    A piece's position is its row, or the row's rank in (seq, sub) order (``rank_of``, when
    not empty). When ``packed``, its key is ``(line - lmin) << pos_bits | position`` (unique:
    an event has one piece per line), what ``fast.sort_pairs`` sorts and ``split_keys``
    takes apart; else its key is its line and its position goes to ``o_pos``. Its
    attributes are ``pack``'s; the effect bits of a guest's maintenance are those of its
    stage-2 upgrade (``eff_lut``).
    """
    ls = np.uint64(line_size)
    lsh = np.uint64(_log2(line_size))
    b = np.uint64(pos_bits)
    ranked = rank_of.shape[0] > 0
    k = k0
    for j in range(j0, j1):
        i = j if every_row else rows[j]
        c = _row_code(i, op, cmo, cmo_op, op_lut, cmo_lut)
        if c < 0 or not has_addr[i]:
            continue
        first, last, end = _span(i, c, addr, size, has_size, ls, lsh)
        zva = c == ZVA
        if zva:
            c = WRITE  # DC ZVA: a write of the whole line
            lo0 = 0
            hi_last = line_size
        else:
            lo0 = np.int64(addr[i] - (first << lsh))
            hi_last = np.int64(end - (last << lsh)) + 1
        if c == CMO:
            pth = 3
            eff = eff_lut[cmo[i], 1 if side[i] == guest_side else 0]
        else:
            pth = path_lut[path[i]]
            eff = 0
        ram = region_kind[i] == 0
        p = rank_of[i] if ranked else i
        ln = first
        while True:
            if packed:
                o_key[k] = ((ln - lmin) << b) | np.uint64(p)
            else:
                o_key[k] = ln
                o_pos[k] = p
            o_attr[k] = pack(lo0 if ln == first else 0, hi_last if ln == last else line_size,
                             c, pth, eff, hostc[i], ram)
            k += 1
            if ln == last:
                break
            ln += np.uint64(1)


@njit(cache=True, inline="always")
def _log2(x):
    r = 0
    while (1 << r) < x:
        r += 1
    return r


@njit(cache=True, nogil=True)
def merge(a_line, a_pos, a_attr, b_line, b_pos, b_attr):
    """Two piece lists sorted by (line, pos) merged into one."""
    na = a_line.shape[0]
    nb = b_line.shape[0]
    line = np.empty(na + nb, np.uint64)
    pos = np.empty(na + nb, np.int64)
    attr = np.empty(na + nb, np.uint64)
    i = 0
    j = 0
    k = 0
    while i < na or j < nb:
        if j >= nb or (i < na and (a_line[i] < b_line[j] or (a_line[i] == b_line[j] and a_pos[i] < b_pos[j]))):
            line[k] = a_line[i]
            pos[k] = a_pos[i]
            attr[k] = a_attr[i]
            i += 1
        else:
            line[k] = b_line[j]
            pos[k] = b_pos[j]
            attr[k] = b_attr[j]
            j += 1
        k += 1
    return line, pos, attr


@njit(cache=True, nogil=True)
def digit_counts(key, lo, hi, shift, mask):
    """How many of ``key[lo:hi]`` have each digit ``(key >> shift) & mask``: a pass of
    ``fast.sort_pairs``' radix sort counts its keys (or one thread's half of them) so."""
    counts = np.zeros(np.int64(mask) + 1, np.int64)
    for i in range(lo, hi):
        counts[np.int64((key[i] >> shift) & mask)] += 1
    return counts


@njit(cache=True, nogil=True)
def scatter_digit(src_key, src_value, dst_key, dst_value, lo, hi, places, shift, mask):
    """Move the pairs ``[lo, hi)`` to their digit's next place (``places``, advanced): a pass of
    ``fast.sort_pairs``' radix sort (or one thread's half of it), stable."""
    for i in range(lo, hi):
        b = np.int64((src_key[i] >> shift) & mask)
        j = places[b]
        dst_key[j] = src_key[i]
        dst_value[j] = src_value[i]
        places[b] = j + 1


@njit(cache=True, nogil=True)
def split_keys(key, pos_bits, lmin, o_pos):
    """Sorted ``cut_pieces`` keys taken apart: each becomes its line in place, its position goes to ``o_pos``."""
    b = np.uint64(pos_bits)
    mask = (np.uint64(1) << b) - np.uint64(1)
    for k in range(key.shape[0]):
        o_pos[k] = np.int64(key[k] & mask)
        key[k] = (key[k] >> b) + lmin


@njit(cache=True, nogil=True)
def recorded_checksum(seq, sub, addr, has_addr, size, has_size, op, cmo, side, region_kind):
    """Count and two checksums of the recorded events with an address (see fast._kept_layout);
    addresses and sizes as `resolve._numbers` gives them (anything at a null), the last four
    Enum codes (uint8)."""
    count = 0
    total = np.uint64(0)
    mixed_xor = np.uint64(0)
    for i in range(seq.shape[0]):
        if sub[i] == 0 and has_addr[i]:
            kind = (np.uint64(op[i]) | (np.uint64(cmo[i]) << np.uint64(8)) | (np.uint64(side[i]) << np.uint64(16))
                    | (np.uint64(region_kind[i]) << np.uint64(24)))
            length = np.uint64(size[i]) if has_size[i] else np.uint64(0)
            m = ((np.uint64(seq[i]) * np.uint64(0x9E3779B97F4A7C15)) ^ (np.uint64(addr[i]) * np.uint64(0xC2B2AE3D27D4EB4F))
                 ^ (length * np.uint64(0x165667B19E3779F9)) ^ kind)
            total += m
            mixed_xor ^= (m * np.uint64(0xFF51AFD7ED558CCD)) ^ (m >> np.uint64(29))
            count += 1
    return count, total, mixed_xor


@njit(cache=True, nogil=True)
def ordered(seq, sub):
    """Whether the rows are in strictly increasing (seq, sub) order."""
    for i in range(1, seq.shape[0]):
        if seq[i] < seq[i - 1] or (seq[i] == seq[i - 1] and sub[i] <= sub[i - 1]):
            return False
    return True


@njit(cache=True, nogil=True)
def relayout(seq, sub, layout_seq, layout_attr, path_code, path_lut, hostc):
    """The kept layout's pieces in a mitigated frame: each piece's position (row of its recorded
    event, found by seq) and its attributes with that row's path and host-cacheable bit."""
    n = seq.shape[0]
    m = 0
    top = 0
    for i in range(n):
        if sub[i] == 0:
            m += 1
            if seq[i] > top:
                top = seq[i]
    rows = np.empty(m, np.int64)
    seqs = np.empty(m, np.uint64)
    j = 0
    for i in range(n):
        if sub[i] == 0:
            rows[j] = i
            seqs[j] = seq[i]
            j += 1
    dense = top < np.uint64(4 * m + 1024)
    table = np.empty(np.int64(top) + 1 if dense else 0, np.int64)
    if dense:
        for j in range(m):
            table[seqs[j]] = rows[j]
    k_n = layout_seq.shape[0]
    pos = np.empty(k_n, np.int64)
    for k in range(k_n):
        s = layout_seq[k]
        if dense:
            pos[k] = table[s]
        else:  # seqs are sorted (every seq looked up is present: the checksums match)
            pos[k] = rows[_first_at_least(seqs, 0, s)]
    return pos, retyped(pos, layout_attr, path_code, path_lut, hostc)


@njit(cache=True, nogil=True)
def removed_rows(frame_seq, seq):
    """The rows of a frame (``frame_seq``, ascending) missing from a later frame whose rows
    (``seq``, ascending) are those rows less some: (True, their indices, ascending), or
    (False, ...) when ``seq`` is not such a subsequence."""
    n = frame_seq.shape[0]
    m = seq.shape[0]
    gone = np.empty(max(n - m, 0), np.int64)
    g = 0
    j = 0
    for i in range(n):
        if j < m and frame_seq[i] == seq[j]:
            j += 1
        elif g < gone.shape[0]:
            gone[g] = i
            g += 1
        else:
            return False, gone[:0]
    return j == m and g == gone.shape[0], gone[:g]


@njit(cache=True, nogil=True)
def shifted_past(pos, gone):
    """``pos`` less, for each, the number of ``gone`` rows (ascending) before it: the rows they
    have once those are removed."""
    out = np.empty(pos.shape[0], np.int64)
    for k in range(pos.shape[0]):
        out[k] = pos[k] - _first_at_least(gone, 0, pos[k])
    return out


@njit(cache=True, nogil=True)
def retyped(pos, layout_attr, path_code, path_lut, hostc):
    """The kept pieces' attributes with the path and host-cacheable bit of their event (row ``pos``)."""
    k_n = pos.shape[0]
    attr = np.empty(k_n, np.uint64)
    keep = ~np.uint64(PATH_HOSTC_MASK)
    for k in range(k_n):
        p = pos[k]
        a = layout_attr[k] & keep
        pth = U3 if field(a, U_CODE, U3) == CMO else np.uint64(path_lut[path_code[p]])
        attr[k] = a | (pth << U_PATH) | (np.uint64(hostc[p]) << U_HOSTC)
    return attr


@njit(cache=True, nogil=True)
def on_lines(line, lines):
    """Per piece (``line`` sorted): whether its line is one of ``lines`` (sorted, distinct)."""
    n = line.shape[0]
    out = np.zeros(n, np.bool_)
    j = 0
    m = lines.shape[0]
    for i in range(n):
        while j < m and lines[j] < line[i]:
            j += 1
        if j >= m:
            break
        out[i] = lines[j] == line[i]
    return out


@njit(cache=True, nogil=True)
def union_lines(a, b):
    """Distinct values of two ascending arrays (repeats allowed), ascending: one merge pass."""
    out = np.empty(a.shape[0] + b.shape[0], np.uint64)
    i = 0
    j = 0
    k = 0
    while i < a.shape[0] or j < b.shape[0]:
        if j >= b.shape[0] or (i < a.shape[0] and a[i] <= b[j]):
            v = a[i]
            i += 1
        else:
            v = b[j]
            j += 1
        if k == 0 or out[k - 1] != v:
            out[k] = v
            k += 1
    return out[:k].copy()


@njit(cache=True, nogil=True)
def changed_recorded(seq, sub, types, base_seq, base_types):
    """Per row of the baseline frame (``base_seq`` ascending): whether this frame's recorded
    event of the same seq (``sub == 0``, in seq order) has another piece type (path and
    host-cacheable bit, see fast._piece_types), and how many do. Events the baseline lacks
    have no pieces (the layout's checksums match): they are skipped."""
    n = seq.shape[0]
    m = base_seq.shape[0]
    out = np.zeros(m, np.bool_)
    k = 0
    j = 0
    for i in range(n):
        if sub[i] != 0:
            continue
        s = seq[i]
        while j < m and base_seq[j] < s:
            j += 1
        if j < m and base_seq[j] == s and types[i] != base_types[j]:
            out[j] = True
            k += 1
    return out, k


@njit(cache=True, nogil=True)
def marked_lines(line, pos, mark):
    """Distinct lines (ascending; ``line`` is sorted) of the pieces whose event (row ``pos``) is marked."""
    n = line.shape[0]
    out = np.empty(n, np.uint64)
    k = 0
    for i in range(n):
        if mark[pos[i]] and (k == 0 or out[k - 1] != line[i]):
            out[k] = line[i]
            k += 1
    return out[:k].copy()


@njit(cache=True, nogil=True)
def merge_findings(a_key, a_line, a_kc, a_keep, b_key, b_line, b_kc):
    """Rows of ``concat(a, b)`` in (key, line, kind-cause) order, leaving out ``a``'s rows not kept.

    Both are in that order already; a kept row of ``a`` and a row of ``b`` are never on
    the same line, so no two rows compare equal.
    """
    na = a_key.shape[0]
    nb = b_key.shape[0]
    out = np.empty(na + nb, np.int64)
    i = 0
    j = 0
    k = 0
    while True:
        while i < na and not a_keep[i]:
            i += 1
        if i >= na and j >= nb:
            break
        take_a = j >= nb or (i < na and (a_key[i] < b_key[j] or (a_key[i] == b_key[j] and (
            a_line[i] < b_line[j] or (a_line[i] == b_line[j] and a_kc[i] < b_kc[j])))))
        if take_a:
            out[k] = i
            i += 1
        else:
            out[k] = na + j
            j += 1
        k += 1
    return out[:k].copy()


@njit(cache=True, nogil=True)
def two_run_order(seq, sub):
    """Rows in (seq, sub) order when the rows are two runs each in that order, the second of
    inserted events only (``sub != 0``: a frame and the events appended to it), merged stably
    (ties: the first run's row first); an empty array when they are not."""
    n = seq.shape[0]
    cut = -1
    for i in range(1, n):
        # equal keys do not cut a run (a mitigation may insert several events at one place)
        if seq[i] < seq[i - 1] or (seq[i] == seq[i - 1] and sub[i] < sub[i - 1]):
            if cut >= 0:
                return np.empty(0, np.int64)
            cut = i
    if cut < 0:
        return np.arange(n)
    for i in range(cut, n):
        if sub[i] == 0:  # a recorded event after the cut: recorded events not in seq order
            return np.empty(0, np.int64)
    out = np.empty(n, np.int64)
    i = 0
    j = cut
    k = 0
    while i < cut or j < n:
        if j >= n or (i < cut and (seq[i] < seq[j] or (seq[i] == seq[j] and sub[i] <= sub[j]))):
            out[k] = i
            i += 1
        else:
            out[k] = j
            j += 1
        k += 1
    return out


@njit(cache=True, nogil=True)
def finding_columns(raw, order, p_line, p_pos, p_attr, rows, line_size, lo, hi, out):
    """Write places ``[lo, hi)`` of the findings' numeric columns (``out``: at, other,
    fix_agent, fix_after, fix_before as int64, line, addr, size as uint64, kind, cause as
    uint8) in ``order``, in one pass over the scan's rows.

    Per finding: its event's row and the rows of the other, fix-agent, fix-after and
    fix-before events (``rows``: the frame's row at each position, empty when positions
    are rows), the line's first byte, the first byte and size of the access on it, kind
    and cause codes. In numpy this was a gather of the (n, 7) array, five gathers through
    ``rows`` and the attribute arithmetic, each its own pass over memory.
    """
    at, other, fix_agent, fix_after, fix_before, line, addr, size, kind, cause = out
    by_rank = rows.shape[0] > 0
    ls = np.uint64(line_size)
    for i in range(lo, hi):
        r = order[i]
        piece = raw[r, 0]
        a = p_attr[piece]
        lo = a & U13
        first = p_line[piece] * ls
        line[i] = first
        addr[i] = first + lo
        size[i] = ((a >> U_HI) & U13) - lo
        kind[i] = raw[r, 1]
        cause[i] = raw[r, 2]
        if by_rank:
            at[i] = rows[p_pos[piece]]
            other[i] = rows[raw[r, 3]]
            fix_after[i] = rows[raw[r, 4]]
            fix_before[i] = rows[raw[r, 5]]
            fix_agent[i] = rows[raw[r, 6]]
        else:
            at[i] = p_pos[piece]
            other[i] = raw[r, 3]
            fix_after[i] = raw[r, 4]
            fix_before[i] = raw[r, 5]
            fix_agent[i] = raw[r, 6]
