"""ftrace-text: trace_pipe, trace-cmd report and perf script text of kvm:* events."""

from pathlib import Path

import polars as pl
import pytest

from tracekit.errors import TraceFormatError
from tracekit.importers.base import ImportOptions
from tracekit.importers.ftrace_text import FtraceTextImporter

DATA = Path(__file__).parent / "data" / "ftrace"
TE = Path(__file__).parent / "data" / "qemu" / "trace-events-excerpt"


def read(path, **kw):
    kw.setdefault("trace_events", TE)
    res = FtraceTextImporter().read(Path(path), ImportOptions(**kw))
    return pl.concat(list(res.batches), how="vertical"), res


def test_trace_pipe_spec_example():
    """Spec 4.3 example: comm 'CPU N/KVM' names the vCPU; kvm_mmio write is an access with its data;
    DC CISW is a set/way cmo by that vCPU; SCTLR write, toggle and KVM's flush are markers."""
    df, res = read(DATA / "trace_pipe.txt")
    assert df.height == 11
    mmio = df.row(3, named=True)
    assert (mmio["agent"], mmio["op"], mmio["addr"], mmio["size"], mmio["value"], mmio["time"]) == (
        "guest.0", "write", 0x9000000, 4, 0x48, pytest.approx(1934.123415))
    sw = df.row(6, named=True)
    assert (sw["agent"], sw["op"], sw["cmo"], sw["addr"]) == ("guest.1", "cmo", "dc.cisw", None)
    assert df.row(8, named=True)["op"] == "marker"  # SYS_SCTLR_EL1 write: value not traced
    assert "value not traced" in df.row(8, named=True)["detail"]
    tog = df.row(9, named=True)
    assert tog["op"] == "marker" and "M&C was on, now off" in tog["detail"]
    assert df.row(7, named=True)["detail"].startswith("kvm_set_way_flush: KVM cleaned+invalidated")
    assert res.summary["sysreg_writes_value_unknown"] == 1


def test_tracing_mark_write_is_decoded_as_qemu_event():
    """QEMU's ftrace backend writes 'NAME ARGS' to trace_marker: decoded like a qemu-log line."""
    df, _ = read(DATA / "trace_pipe.txt")
    last = df.row(10, named=True)
    assert (last["agent"], last["op"], last["addr"], last["value"]) == ("guest.0", "write", 0x9000000, 0x48)


def test_trace_cmd_report_padding_and_header():
    """trace-cmd pads event names to 20 columns and starts with cpus=N (counted, not an event)."""
    df, res = read(DATA / "trace-cmd.txt")
    assert df.height == 5
    assert res.summary["lines"] == {"event": 5, "other": 1}
    assert df.filter(pl.col("op") == "write").select("agent", "addr", "size").rows() == [("guest.0", 0x9000000, 4)]


def test_perf_script_group_prefix():
    """perf script prints 'kvm:kvm_mmio' and separates comm and tid by spaces."""
    df, _ = read(DATA / "perf-script.txt")
    assert df.select("agent", "op", "cmo").rows() == [
        ("guest.0", "marker", None), ("guest.0", "marker", None), ("guest.0", "write", None),
        ("guest.1", "cmo", "dc.cisw")]


def test_mmio_read_and_unsatisfied_read(tmp_path):
    """kvm_mmio: 'unsatisfied-read' exits to QEMU without data (marker); 'read' carries the data."""
    p = tmp_path / "r.txt"
    p.write_text(
        " qemu-system-aar-100     [000] .....   10.000001: kvm_mmio: mmio unsatisfied-read len 4 gpa 0x9000018 val 0x0\n"
        " qemu-system-aar-100     [000] .....   10.000002: kvm_mmio: mmio read len 4 gpa 0x9000018 val 0x90\n")
    df, _ = read(p)
    assert df.select("agent", "op", "addr", "value").rows() == [
        ("guest.100", "marker", None, None), ("guest.100", "read", 0x9000018, 0x90)]


def test_malformed_kvm_line_and_strict(tmp_path):
    p = tmp_path / "b.txt"
    p.write_text("       CPU 0/KVM-1   [003] .....  1.000000: kvm_mmio: mmio write len four gpa 0x9 val 0x1\n")
    with pytest.raises(TraceFormatError, match=r"b.txt:1: expected kvm_mmio text"):
        read(p)
    q = tmp_path / "s.txt"
    q.write_text("       CPU 0/KVM-1   [003] .....  1.000000: kvm_entry: PC: 0x1\ngarbage here\n")
    _, res = read(q)
    assert res.summary["lines"] == {"event": 1, "unknown": 1}
    with pytest.raises(TraceFormatError, match=r"s.txt:2: expected a trace line"):
        read(q, strict=True)


def test_tgid_column(tmp_path):
    """trace option record-tgid adds '(TGID)' after comm-pid: the pid is still the thread's."""
    p = tmp_path / "t.txt"
    p.write_text("       CPU 2/KVM-48217   (  48213) [001] d..1.  5.000000: kvm_mmio: mmio write len 8 gpa 0x1000 val 0x2\n")
    df, _ = read(p)
    assert df.select("agent", "addr", "size", "value", "time").rows() == [("guest.2", 0x1000, 8, 2, 5.0)]
