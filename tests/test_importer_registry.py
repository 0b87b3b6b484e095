"""The importer registry loads the built-in importers on first use (start-up time of commands
that never import), without changing what the registry holds or the order detection tries."""

from __future__ import annotations

import subprocess
import sys

import tracekit.importers as importers
from tracekit.importers import BUILTIN_FORMATS, IMPORTERS


def test_the_static_list_of_formats_is_the_registry_of_built_ins():
    """BUILTIN_FORMATS (for help texts) must name what the modules register, in detection order."""
    builtins = [f for f, imp in IMPORTERS.items() if imp.__module__.startswith("tracekit.importers.")]
    assert tuple(builtins) == BUILTIN_FORMATS


def test_an_importer_registered_before_first_use_replaces_the_built_in_and_keeps_its_place():
    reg = importers._Registry()
    class Mine:
        format, description, suffixes = "csv", "mine", (".csv",)

        def detect(self, head, path):
            return False

        def read(self, path, options):
            raise NotImplementedError

    mine = Mine()
    reg["csv"] = mine  # what register_importer does, before anything read the registry
    assert reg["csv"] is mine  # reading loads the built-ins; the earlier registration wins
    assert list(reg)[:4] == ["parquet", "tkt", "csv", "jsonl"]  # and detection order is the built-in order
    assert reg["tkt"].format == "tkt"


def test_importing_the_cli_does_not_import_the_importer_modules():
    code = ("import sys, tracekit.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('tracekit.importers.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "tracekit.importers.qemu_log" not in out and "tracekit.importers.tabular" not in out
