"""qemu-log: QEMU log-backend lines (three prefix forms) decoded with trace-events, then mapped."""

from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from tracekit.errors import TraceFormatError
from tracekit.importers.base import ImportOptions
from tracekit.importers.qemu_log import QemuLogImporter, load_mapping

DATA = Path(__file__).parent / "data" / "qemu"
TE = DATA / "trace-events-excerpt"


def read(path, **kw):
    kw.setdefault("trace_events", TE)
    res = QemuLogImporter().read(Path(path), ImportOptions(**kw))
    df = pl.concat(list(res.batches), how="vertical")
    return df, res


def test_72_prefix_lines_decode_and_keep_time():
    """Spec 1.3 example (7.2, -msg timestamp=on): MMIO accesses by guest.<cpu>, others markers, time kept."""
    df, res = read(DATA / "kvm-72.log")
    assert df.height == 8  # nothing silently dropped
    assert df["time"][0] == pytest.approx(1700000000.123456, abs=1e-6)
    w = df.row(2, named=True)
    assert (w["agent"], w["op"], w["addr"], w["size"], w["value"]) == ("guest.0", "write", 0x9000000, 4, 0x48)
    assert "name 'pl011'" in w["detail"]  # the region name is kept
    r = df.row(3, named=True)
    assert (r["op"], r["addr"], r["value"]) == ("read", 0x9000018, 0x90)
    assert df.filter(pl.col("op") == "marker")["agent"].to_list() == ["host.48213", "host.48215"] + ["host.48214"] * 4
    assert df["src_line"].to_list() == list(range(1, 9))


def test_memory_slots_become_ram_regions_and_mmio_pages_mmio_regions():
    """Rule: kvm_set_user_memory -> RAM region in info; MMIO accesses' page span -> an MMIO region."""
    _, res = read(DATA / "kvm-72.log")
    regions = {r.name: r for r in res.info.regions}
    assert (regions["slot0"].base, regions["slot0"].size, regions["slot0"].kind) == (0x40000000, 0x80000000, "ram")
    # pl011 accesses at 0x9000000 and 0x9000018 (4 bytes): the page 0x9000000..0x9001000
    assert (regions["mmio.pl011"].base, regions["mmio.pl011"].size, regions["mmio.pl011"].kind) == (
        0x9000000, 0x1000, "mmio")


def test_three_prefix_forms_and_cpu_minus_one():
    """Rule: no prefix, TID@SEC.USEC: and ISO-8601Z all parse; cpu -1 is the host thread."""
    df, res = read(DATA / "events-all-forms.log")
    a, b, c = (df.row(i, named=True) for i in range(3))
    assert (a["agent"], a["time"]) == ("guest.0", None)
    assert (b["agent"], b["size"], b["time"]) == ("host.48215", 2, pytest.approx(1700000001.50002))
    iso = datetime(2025, 9, 1, 10, 0, 1, 500020, tzinfo=timezone.utc).timestamp()
    assert (c["agent"], c["op"], c["time"]) == ("guest.1", "read", pytest.approx(iso, abs=1e-6))
    assert res.summary["lines"]["qemu-message"] == 1


def test_address_space_map_direction():
    """Rule: address_space_map write:1 = the host writes guest memory; write:0 = it reads it."""
    df, _ = read(DATA / "events-all-forms.log")
    m = df.filter(pl.col("detail").str.starts_with("address_space_map"))
    assert m.select("agent", "op", "addr", "size").rows() == [
        ("host.48216", "write", 0x40001000, 0x200), ("host.48216", "read", 0x40002000, 0x40)]


def test_nvme_map_addr_takes_direction_of_preceding_command():
    """Rule: before any command: marker; after pci_nvme_read (disk -> memory): write; after pci_nvme_write: read."""
    df, res = read(DATA / "events-all-forms.log")
    m = df.filter(pl.col("detail").str.starts_with("pci_nvme_map_addr"))
    assert m.select("op", "addr", "size").rows() == [
        ("marker", None, None), ("write", 0x40004000, 4096), ("read", 0x40005000, 512)]
    assert res.summary["nvme_direction_unknown"] == 1


def test_slot_deletion_and_new_variant():
    """Rule: size=0 deletes a slot; the AddrSpace# variant is read too."""
    _, res = read(DATA / "events-all-forms.log")
    assert res.summary["memory_slots"] == [
        {"as": 0, "slot": 0, "gpa": "0x40000000", "size": "0x8000000", "flags": "0x0"}]
    names = {r.name for r in res.info.regions}
    assert {"slot1", "slot0"} <= names  # every range a slot had is RAM for the trace


def test_unmapped_event_is_marker_and_mapping_file_maps_it():
    """Rule: events without a mapping are markers with their text; a TOML mapping turns them into accesses."""
    df, _ = read(DATA / "events-all-forms.log")
    last = df.row(-1, named=True)
    assert (last["op"], last["detail"]) == ("marker", "virtio_balloon_handle_output section name: ram gpa: 0x40010000")
    df, _ = read(DATA / "events-all-forms.log", mapping=DATA / "mapping.toml")
    last = df.row(-1, named=True)
    assert (last["agent"], last["op"], last["addr"], last["size"]) == ("host.balloon48214", "write", 0x40010000, 4096)


def test_bad_mapping_is_reported(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text('[events.x]\nop = "write"\naddr = "a"\n')
    with pytest.raises(TraceFormatError, match="expected addr and size for op write"):
        load_mapping(p)


def test_malformed_known_event_is_file_line_error(tmp_path):
    """Rule: a line naming a known event whose arguments do not fit its format is FILE:LINE."""
    p = tmp_path / "bad.log"
    p.write_text("kvm_run_exit cpu_index 0, reason 6\nmemory_region_ops_write cpu zero mr 0x1 addr 0x2\n")
    with pytest.raises(TraceFormatError, match=r"bad.log:2: expected memory_region_ops_write arguments formatted as"):
        read(p)


def test_unknown_lines_counted_or_strict_error(tmp_path):
    """Rule: lines of no known shape are counted by kind; --strict makes the first one FILE:LINE."""
    p = tmp_path / "x.log"
    p.write_text("kvm_run_exit cpu_index 0, reason 6\nhello world\n\nTaking exception 5 [IRQ] on CPU 0\n")
    df, res = read(p)
    assert res.summary["lines"] == {"blank": 1, "event": 1, "int": 1, "unknown": 1}
    assert res.summary["unknown_line_examples"] == ["2: hello world"]
    with pytest.raises(TraceFormatError, match=r"x.log:2: expected a QEMU log line"):
        read(p, strict=True)


def test_builtin_signatures_without_trace_events_file(tmp_path, monkeypatch):
    """Without trace-events-all, the mapped events still decode (tracekit's own signatures)."""
    import tracekit.importers.trace_events as te
    monkeypatch.setattr(te, "DEFAULT_PATHS", ())
    p = tmp_path / "y.log"
    p.write_text("memory_region_ops_read cpu 2 mr 0x1 addr 0x9000000 value 0x7 size 1 name 'uart'\n"
                 "virtqueue_pop vq 0x1 elem 0x2 in_num 1 out_num 2\n")
    res = QemuLogImporter().read(p, ImportOptions())
    df = pl.concat(list(res.batches))
    assert df.select("agent", "op", "addr").rows() == [("guest.2", "read", 0x9000000)]
    assert res.summary["lines"] == {"event": 1, "unknown": 1}
