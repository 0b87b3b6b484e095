"""The importer registry: one module per input format, found by name or detected.

Built-in formats register when their module is imported; adding a format is
one more name in ``_BUILTIN_MODULES`` (each module exposes ``IMPORTER``).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..errors import TracekitError, UnknownFormatError
from .base import Importer, ImportOptions, ImportResult

__all__ = ["IMPORTERS", "register_importer", "get_importer", "detect_format", "Importer", "ImportOptions",
           "ImportResult"]

#: Modules under tracekit.importers whose ``IMPORTER`` (or tuple ``IMPORTERS``) is
#: registered, in detection order (the first whose content test matches wins; see
#: detect_format for how a suffix counts).
_BUILTIN_MODULES: tuple[str, ...] = (
    "parquet",  # a trace written by tracekit (binary: its magic bytes decide)
    "tkt",
    "tabular",
    "qemu_simpletrace", "ftrace_text", "tcg_plugin", "qemu_log", "din", "lackey",  # real recordings
)
#: The formats those modules provide, in the same order (for help texts, without importing them;
#: a test checks it against the registry).
BUILTIN_FORMATS: tuple[str, ...] = (
    "parquet", "tkt", "csv", "jsonl", "qemu-simpletrace", "ftrace-text", "qemu-plugin", "qemu-log", "din", "lackey")


class _Registry(dict):
    """Importers by format. The built-in modules are imported on first use: a command that
    reads a trace Parquet (analyze, report) never needs them (~50 ms of start-up).

    An importer registered before that keeps its place over a built-in of the same format,
    as if it had been registered after it.
    """

    _state = "new"  # new, loading, loaded

    def _load(self) -> None:
        if self._state != "new":
            return
        self._state = "loading"
        try:
            early = dict(super().items())
            super().clear()
            for name in _BUILTIN_MODULES:
                mod = importlib.import_module(f"{__name__}.{name}")
                for imp in getattr(mod, "IMPORTERS", None) or (mod.IMPORTER,):
                    super().__setitem__(imp.format, imp)
            super().update(early)
            self._state = "loaded"
        except BaseException:
            self._state = "new"
            raise

    def __getitem__(self, key):
        self._load()
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self._load()
        return super().__contains__(key)

    def __iter__(self):
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def __repr__(self) -> str:
        self._load()
        return super().__repr__()

    def keys(self):
        self._load()
        return super().keys()

    def values(self):
        self._load()
        return super().values()

    def items(self):
        self._load()
        return super().items()

    def get(self, key, default=None):
        self._load()
        return super().get(key, default)


IMPORTERS: dict[str, Importer] = _Registry()

HEAD_BYTES = 64 * 1024


def register_importer(imp: Importer) -> Importer:
    """Make ``imp`` available as ``--format imp.format`` (a later one replaces an earlier one)."""
    IMPORTERS[imp.format] = imp
    return imp


def get_importer(name: str) -> Importer:
    """The importer of format ``name``; UnknownFormatError lists the known ones."""
    try:
        return IMPORTERS[name]
    except KeyError:
        raise UnknownFormatError(
            f"expected a format ({', '.join(sorted(IMPORTERS))}), found '{name}'") from None


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of ``path``: by its content when that identifies one, else by its suffix.

    A suffix is only a hint (a mem plugin ``print-accesses`` log saved as ``.csv`` is
    not a tabular trace): the format the suffix names is kept while its importer
    accepts the first bytes, or when no importer recognises them; otherwise the
    importer whose content test matches wins.
    """
    p = Path(path)
    if p.is_dir():
        raise TracekitError(f"{p}: expected a trace file, found a directory")
    name = p.name.lower()
    by_suffix = next((imp for imp in IMPORTERS.values() if any(name.endswith(s) for s in imp.suffixes)), None)
    try:
        with open(p, "rb") as f:
            head = f.read(HEAD_BYTES)
    except FileNotFoundError:
        if by_suffix is not None:
            return by_suffix.format  # the importer reports the missing file
        raise TracekitError(f"{p}: expected an input file, found no such file") from None
    except OSError as e:
        if by_suffix is not None:
            return by_suffix.format
        raise TracekitError(f"{p}: cannot read: {e.strerror}") from None
    if by_suffix is not None and (not head.strip() or by_suffix.detect(head, p)):
        return by_suffix.format
    for imp in IMPORTERS.values():
        if imp is not by_suffix and imp.detect(head, p):
            return imp.format
    if by_suffix is not None:
        return by_suffix.format  # unrecognised content: the suffix's importer reports what is wrong
    raise UnknownFormatError(
        f"{p}: expected a known format ({', '.join(sorted(IMPORTERS))}), found none matching; "
        "name it with --format")

