"""tracekit: find where an arm64 KVM guest and its host disagree about cacheability.

The Python API mirrors the CLI: ``ingest`` writes a trace, ``scan`` reads one as
a polars LazyFrame, ``analyze`` replays it under mitigations and returns an
:class:`Analysis` with the findings.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import TracekitError  # noqa: E402
from .model import Device, Region, TraceInfo  # noqa: E402
from .resolve import resolve  # noqa: E402
from .analyze import Analysis, analyze, load_analysis  # noqa: E402
from .trace import Trace, load, scan  # noqa: E402
from .ingest import export, ingest  # noqa: E402
from .mitigations import MITIGATIONS, register_mitigation  # noqa: E402

__all__ = [
    "__version__", "Analysis", "Device", "MITIGATIONS", "Region", "Trace", "TraceInfo", "TracekitError",
    "analyze", "export", "ingest", "load", "load_analysis", "register_mitigation", "resolve", "scan",
]
