"""Sharing one compiled pass between the machine's cores.

The benchmark machine has two. A pass over every event (cut into pieces, resolve the
types, sort) that releases the GIL runs as two halves, the second on a thread, when the
events are many: each half writes its own part of the outputs, so the result is the one
pass's. Tests set ``CORES`` and ``SPLIT_ROWS`` to force the halves on tiny traces.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

#: Cores the halves may use (1: every pass runs whole, here).
CORES = os.cpu_count() or 1
#: Rows from which a pass is worth two threads (below, a thread costs more than it saves).
SPLIT_ROWS = 1 << 20


def halves(n: int) -> list[tuple[int, int]]:
    """``[0, n)`` as one range, or as two halves when it is big and there are two cores."""
    if n < SPLIT_ROWS or CORES < 2:
        return [(0, n)]
    return [(0, n // 2), (n // 2, n)]


def on_cores(calls: list[Callable[[], Any]]) -> list[Any]:
    """The results of ``calls`` in order, run by two threads (this one and another) that each
    take the next call as soon as they are done with one: the two halves of a pass
    (``halves``), or work cut in more parts than cores because the parts cost unequally (a
    scan's lines do: a trace's frame buffer costs several times its boot code per piece), so
    that neither core waits for the other while there is work left. The calls are compiled
    kernels, or polars copies, that release the GIL. A pool per call, not one kept: a thread
    left alive would keep the command from leaving at once (``cli.main``).
    """
    if len(calls) <= 1 or CORES < 2:
        return [call() for call in calls]
    results: list[Any] = [None] * len(calls)
    taken = itertools.count()  # (next() on it is atomic: a call is taken by one thread only)

    def work() -> None:
        for i in taken:
            if i >= len(calls):
                return
            results[i] = calls[i]()

    with ThreadPoolExecutor(1, thread_name_prefix="tracekit-half") as pool:
        other = pool.submit(work)
        work()
        other.result()
    return results
