"""Matching two mitigations' findings by one merge of their keys (numba, cached on disk).

Apart from ``compare.py`` so that importing tracekit does not import numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def in_key_order(seq, line, kc):
    """Whether the rows are in (seq, line, kind-cause rank) order, repeats allowed."""
    for i in range(1, seq.shape[0]):
        if seq[i] != seq[i - 1]:
            if seq[i] < seq[i - 1]:
                return False
        elif line[i] != line[i - 1]:
            if line[i] < line[i - 1]:
                return False
        elif kc[i] < kc[i - 1]:
            return False
    return True


@njit(cache=True, nogil=True)
def unmatched(a_seq, a_line, a_kc, b_seq, b_line, b_kc):
    """Per row of a: its key is not among b's (both in key order): an anti join in one pass."""
    n = a_seq.shape[0]
    m = b_seq.shape[0]
    out = np.ones(n, np.bool_)
    j = 0
    for i in range(n):
        s, ln, k = a_seq[i], a_line[i], a_kc[i]
        while j < m and (b_seq[j] < s or (b_seq[j] == s and (b_line[j] < ln or (b_line[j] == ln and b_kc[j] < k)))):
            j += 1
        if j < m and b_seq[j] == s and b_line[j] == ln and b_kc[j] == k:
            out[i] = False
    return out
