"""Batch invariance: an input read in many small batches gives exactly the events of one batch.

Importers carry state between batches (register values, SCTLR_EL1 per vCPU, the last execlog
line per vCPU, NVMe direction, fw_cfg address halves); big inputs are read in blocks.
"""

from pathlib import Path

import polars as pl
import pytest

import tracekit.importers._lines as lines
from tracekit.importers.base import ImportOptions
from tracekit.importers.din import DinImporter
from tracekit.importers.ftrace_text import FtraceTextImporter
from tracekit.importers.lackey import LackeyImporter
from tracekit.importers.qemu_log import QemuLogImporter

DATA = Path(__file__).parent / "data"
SAMPLE = Path(__file__).resolve().parent.parent / "sample-traces" / "qemu" / "combined.log"
TE = DATA / "qemu" / "trace-events-excerpt"

CASES = [
    (QemuLogImporter, DATA / "qemu" / "execlog-72.log", {"guest_map": DATA / "qemu" / "identity-map.txt"}),
    (QemuLogImporter, DATA / "qemu" / "execlog-cpu-dumps.log", {}),
    (QemuLogImporter, DATA / "qemu" / "events-all-forms.log", {}),
    (QemuLogImporter, DATA / "qemu" / "interleaved-order.log", {}),
    (FtraceTextImporter, DATA / "ftrace" / "trace_pipe.txt", {}),
    (DinImporter, DATA / "din" / "extended.din", {}),
    (LackeyImporter, DATA / "lackey" / "trace.lackey", {}),
]
if SAMPLE.is_file():
    CASES.append((QemuLogImporter, SAMPLE, {"trace_events": SAMPLE.parent / "trace-events",
                                            "guest_map": SAMPLE.parent / "guest-map.txt"}))


def _read(imp, path, kw):
    kw = {"trace_events": TE, **kw}
    res = imp().read(path, ImportOptions(**kw))
    batches = list(res.batches)
    return pl.concat(batches), len(batches), res.summary


@pytest.mark.parametrize("imp,path,kw", CASES, ids=[c[1].name for c in CASES])
def test_small_batches_give_the_same_events(monkeypatch, imp, path, kw):
    whole, n1, s1 = _read(imp, path, kw)
    monkeypatch.setattr(lines, "BATCH_BYTES", 97)  # a few lines per batch, cut anywhere
    parts, n2, s2 = _read(imp, path, kw)
    assert n2 > n1 or path.stat().st_size <= 97
    assert parts.equals(whole)
    assert s1.get("lines") == s2.get("lines")
