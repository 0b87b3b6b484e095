"""One progress helper for every long loop: tqdm on stderr, silent when asked or not a terminal."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress_enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def progress(iterable: Iterable[T] | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", quiet: bool = False, unit_scale: bool = False) -> tqdm:
    """A tqdm bar on stderr; disabled (a no-op wrapper) under --quiet or when stderr is no terminal."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale,
                file=sys.stderr, disable=not progress_enabled(quiet), leave=False, dynamic_ncols=True)
