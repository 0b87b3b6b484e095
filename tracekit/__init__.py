"""tracekit: find where an arm64 KVM guest and its host disagree about cacheability.

The Python API mirrors the CLI: ``ingest`` writes a trace, ``scan`` reads one as
a polars LazyFrame, ``analyze`` replays it under mitigations and returns an
:class:`Analysis` with the findings.
"""

__version__ = "0.1.0"

from .errors import TracekitError  # noqa: E402

__all__ = ["__version__", "TracekitError"]
