"""The ``tracekit`` command: a thin typer layer over the Python API.

Each command lives in its own module and only parses options, calls the
library function of the same name and prints. Expected failures are
TracekitError: printed as ``tracekit: error: MESSAGE`` on stderr, exit 2, no
traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from typing import Callable, TypeVar

import typer

from .. import __version__
from ..errors import TracekitError

app = typer.Typer(
    name="tracekit",
    help="Find where an arm64 KVM guest and its host disagree about cacheability.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., object])


def fail(message: str, status: int = 2) -> typer.Exit:
    """Print ``message`` as an error on stderr and return the Exit to raise."""
    typer.echo(f"tracekit: error: {message}", err=True)
    return typer.Exit(status)


def errors_handled(fn: F) -> F:
    """The one error boundary: TracekitError becomes a message and its exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TracekitError as e:
            raise fail(str(e), e.exit_status) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except BrokenPipeError:  # `tracekit ... | head`
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tracekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail on stderr."),
) -> None:
    if verbose:
        logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format="tracekit: %(message)s")


# Commands register themselves on `app` when imported.
from . import ingest_cmd, analyze_cmd, report_cmd, mitigations_cmd, synth_cmd  # noqa: E402,F401


def main() -> None:
    """The console script: run the command, then leave without tearing the interpreter down.

    Unwinding the interpreter (a last garbage collection over numba's, polars' and pyarrow's
    objects, module by module) took 0.2-0.3 s after every command, a fifth of a warm
    `analyze` of a million events. Every output is written and renamed into place before a
    command returns, so once the streams are flushed there is nothing left to lose; a thread
    still at work (not a daemon) gets the normal exit, which waits for it.
    """
    try:
        app()
        status: object = 0
    except SystemExit as e:
        status = e.code
    _leave(status)


def _leave(status: object) -> None:
    if not isinstance(status, int):  # sys.exit(None) is success; sys.exit("text") prints it, 1
        if status is not None:
            print(status, file=sys.stderr)
        status = 0 if status is None else 1
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(status)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream: nothing more to say
            pass
    os._exit(status)
