"""qemu-simpletrace: the binary v4 format, built here byte by byte from the spec (input-formats 1.4)."""

import struct
from pathlib import Path

import polars as pl
import pytest

from tracekit.errors import TraceFormatError
from tracekit.importers.base import ImportOptions
from tracekit.importers.qemu_simpletrace import QemuSimpletraceImporter

TE = Path(__file__).parent / "data" / "qemu" / "trace-events-excerpt"
HEADER = struct.pack("<QQQ", 2**64 - 1, 0xF2B177CB0AA429B4, 4)


def mapping(eid, name):
    b = name.encode()
    return struct.pack("<QQI", 0, eid, len(b)) + b


def event(eid, ts, pid, args, length=None):
    body = b""
    for a in args:
        if isinstance(a, str):
            s = a.encode()
            body += struct.pack("<I", len(s)) + s
        else:
            body += struct.pack("<Q", a & (2**64 - 1))
    return struct.pack("<QQQII", 1, eid, ts, 24 + len(body) if length is None else length, pid) + body


def read(tmp_path, data):
    p = tmp_path / "trace-1234"
    p.write_bytes(data)
    res = QemuSimpletraceImporter().read(p, ImportOptions(trace_events=TE))
    return pl.concat(list(res.batches)), res


MR_READ = [0, 0xAAAAD3B1C2D0, 0x9000018, 0x90, 4, "pl011"]


def test_spec_example_record(tmp_path):
    """Spec example: memory_region_ops_read id 0x1a3, args cpu 0 ... name 'pl011' -> guest.0 read."""
    rec = event(0x1A3, 0x3C7F01E240, 48341, MR_READ)
    assert len(rec) - 8 == 0x49  # 'length 0x49 = 24+5*8+4+5' of the spec
    data = HEADER + mapping(0x1A3, "memory_region_ops_read") + rec
    df, res = read(tmp_path, data)
    r = df.row(0, named=True)
    assert (r["agent"], r["op"], r["addr"], r["size"], r["value"]) == ("guest.0", "read", 0x9000018, 4, 0x90)
    assert r["time"] == pytest.approx(0x3C7F01E240 / 1e9)
    assert r["src_offset"] == 24 + 20 + len("memory_region_ops_read")
    assert "name=pl011" in r["detail"]


def test_sign_extension_dropped_records_and_short_tail(tmp_path):
    """cpu_index -1 is sign-extended (host agent); a dropped-events record is a marker; a record cut
    by the end of the file ends the data."""
    data = (HEADER + mapping(7, "memory_region_ops_write")
            + event(7, 10, 1, [-1, 1, 0x9000000, 0x48, 4, "pl011"])
            + event(2**64 - 2, 11, 1, [12]))
    data += event(7, 12, 1, [0, 1, 2, 3, 4, "x"])[:30]
    df, res = read(tmp_path, data)
    assert df.select("agent", "op").rows() == [("host.0", "write"), ("host.0", "marker")]
    assert res.summary["dropped_events"] == 12
    assert res.summary["truncated_tail_bytes"] == 30


def test_kvm_set_user_memory_region(tmp_path):
    data = HEADER + mapping(3, "kvm_set_user_memory") + event(3, 1, 1, [0, 0, 0x40000000, 0x8000000, 0xFFFF0000, 0])
    _, res = read(tmp_path, data)
    assert [(r.name, r.base, r.size) for r in res.info.regions] == [("slot0", 0x40000000, 0x8000000)]


@pytest.mark.parametrize("data,msg", [
    (struct.pack("<QQQ", 2**64 - 1, 0x1234, 4), r"byte offset 8: expected simpletrace header id"),
    (struct.pack("<QQQ", 0, 0xF2B177CB0AA429B4, 4), r"byte offset 0: expected simpletrace header id"),
    (struct.pack(">QQQ", 2**64 - 1, 0xF2B177CB0AA429B4, 4), r"byte offset 8: expected a little-endian"),
    (struct.pack("<QQQ", 2**64 - 1, 0xF2B177CB0AA429B4, 3), r"byte offset 16: expected simpletrace format version 4, found 3"),
    (HEADER + event(9, 1, 1, [1]), r"byte offset 24: expected an event id declared by a mapping record, found unknown event id 9"),
    (HEADER + struct.pack("<Q", 5) + b"\0" * 16, r"byte offset 24: expected record type 0 \(mapping\) or 1 \(event\), found 5"),
    (HEADER + mapping(1, "kvm_run_exit") + event(1, 1, 1, [0, 6, 7]), r"expected 24 argument bytes for kvm_run_exit"),
    (HEADER + mapping(1, "no_such_event") + event(1, 1, 1, []), r"expected an event of the trace-events file"),
])
def test_errors_name_byte_offsets(tmp_path, data, msg):
    """Wrong magic/version, unknown ids and record types, and a record whose length does not fit
    its arguments (truncated in the middle) are errors with a byte offset."""
    with pytest.raises(TraceFormatError, match=msg):
        read(tmp_path, data)
