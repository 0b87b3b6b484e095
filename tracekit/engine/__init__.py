"""Replay engines: the same findings from the reference oracle and the fast engine.

Both take a resolved (and mitigated) event frame sorted by (seq, sub) and return
a findings-v1 frame sorted by (seq, line, kind, cause).
"""

from __future__ import annotations

from typing import Callable

import polars as pl

from ..errors import UsageError
from ..model import TraceInfo

ENGINES = ("fast", "reference")
SPECULATION_MODELS = ("architectural", "observed")


def get_engine(name: str) -> Callable[..., pl.DataFrame]:
    if name == "reference":
        from .reference import replay
    elif name == "fast":
        from .fast import replay
    else:
        raise UsageError(f"--engine: expected one of {', '.join(ENGINES)}, found {name!r}")
    return replay


def replay(events: pl.DataFrame, info: TraceInfo, *, mitigation: str = "none",
           speculation: str = "architectural", engine: str = "fast") -> pl.DataFrame:
    if speculation not in SPECULATION_MODELS:
        raise UsageError(f"--speculation: expected one of {', '.join(SPECULATION_MODELS)}, found {speculation!r}")
    return get_engine(engine)(events, info, mitigation=mitigation, speculation=speculation)
