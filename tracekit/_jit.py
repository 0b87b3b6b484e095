"""A lazy ``numba.njit`` for importers: numba is imported and the loop compiled on first call.

Importing numba costs ~0.15 s; most commands never run these loops, so the
command line should not pay for it at start-up. Only for functions called from
Python (a compiled caller needs the real dispatcher).
"""

from __future__ import annotations

import functools
from typing import Any, Callable


def njit(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        compiled: Callable[..., Any] | None = None

        @functools.wraps(fn)
        def call(*args: Any) -> Any:
            nonlocal compiled
            if compiled is None:
                import numba

                compiled = numba.njit(**options)(fn)
            return compiled(*args)

        return call

    return wrap
