"""Counting the distinct lines of many line intervals by marking them (numba, cached on disk).

Apart from ``base.py`` so that importing tracekit does not import numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def marked_lines(lo, hi, base, span, most_marks):
    """Lines in the union of the intervals [lo[i], hi[i]] (all within [base, base + span)),
    by marking each in a span-long table; -1 once more than ``most_marks`` marks were made
    (long intervals over and over: the caller merges sorted intervals instead)."""
    seen = np.zeros(span, np.bool_)
    count = 0
    marks = 0
    for i in range(lo.shape[0]):
        first = lo[i] - base
        last = hi[i] - base
        marks += last - first + 1
        if marks > most_marks:
            return -1
        for line in range(first, last + 1):
            if not seen[line]:
                seen[line] = True
                count += 1
    return count
