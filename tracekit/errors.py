"""Every failure a user can cause is a TracekitError; the CLI prints it and exits 2.

Messages follow ``FILE:LINE: expected X, found Y`` so an editor can jump to the
spot; use :func:`at` to build them.
"""

from __future__ import annotations


class TracekitError(Exception):
    """Base class of the errors tracekit reports to a user without a traceback."""

    exit_status = 2


class TraceFormatError(TracekitError):
    """An input file is malformed (a line, a record, a header)."""


class SchemaError(TracekitError):
    """A table does not match the documented schema."""


class UnknownFormatError(TracekitError):
    """The input format could not be detected or is not known."""


class UnknownMitigationError(TracekitError):
    """A mitigation name is not in the catalog nor registered."""


class OutputExistsError(TracekitError):
    """The output exists and --force was not given."""


class UsageError(TracekitError):
    """Options that do not fit together."""


def at(src: str, line: int | None = None, *, offset: int | None = None) -> str:
    """Format a source position: ``file:line`` or ``file@offset`` (binary inputs)."""
    if line is not None:
        return f"{src}:{line}"
    if offset is not None:
        return f"{src}: byte offset {offset}"
    return str(src)
