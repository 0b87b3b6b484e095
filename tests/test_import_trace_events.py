"""trace-events parsing: the printf format of each event becomes a regex with typed fields."""

from pathlib import Path

import polars as pl
import pytest

from tracekit.errors import TraceFormatError
from tracekit.importers.trace_events import builtin_table, decode_args, fmt_to_regex, load_table, parse_text

DATA = Path(__file__).parent / "data" / "qemu"


def _decode(table, name, body, variant=0):
    ev = table.definitions(name)[variant]
    matched, fields = decode_args(pl.col("b"), ev)
    return pl.DataFrame({"b": [body]}).select(matched.alias("m"), *fields).row(0, named=True)


def test_pri_macros_and_literal_concatenation():
    """Rule (tracetool): adjacent literals concatenate; PRIx64 -> llx, PRIu32 -> u."""
    t = parse_text('ev(uint64_t a, uint32_t n) "a 0x%"PRIx64" n %"PRIu32\n')
    assert t.events["ev"].fmt == "a 0x%llx n %u"


def test_memory_region_ops_write_fields_typed():
    """Rule: %d -> signed, %p/%x -> unsigned hex, %u -> unsigned, %s -> text (spec 2.1 example line)."""
    t = load_table(DATA / "trace-events-excerpt")
    row = _decode(t, "memory_region_ops_write", "cpu 0 mr 0xaaaad3b1c2d0 addr 0x9000000 value 0x48 size 4 name 'pl011'")
    assert row == {"m": True, "cpu_index": 0, "mr": 0xAAAAD3B1C2D0, "addr": 0x9000000, "value": 0x48, "size": 4,
                   "name": "pl011"}


def test_negative_cpu_and_nil_pointer():
    """Rule: cpu_index -1 (non-vCPU thread) stays negative; %p of NULL prints (nil) = 0."""
    t = builtin_table()
    row = _decode(t, "memory_region_ops_read", "cpu -1 mr (nil) addr 0x10 value 0x0 size 1 name 'a b'")
    assert (row["cpu_index"], row["mr"], row["name"]) == (-1, 0, "a b")


def test_kvm_set_user_memory_both_variants():
    """Rule: the 7.2 and the AddrSpace#/guest_memfd forms of kvm_set_user_memory both decode."""
    t = builtin_table()
    old = _decode(t, "kvm_set_user_memory", "Slot#0 flags=0x0 gpa=0x40000000 size=0x80000000 ua=0xffff5fe00000 ret=0")
    assert (old["m"], old["guest_phys_addr"], old["memory_size"]) == (True, 0x40000000, 0x80000000)
    new = _decode(t, "kvm_set_user_memory", "AddrSpace#0 Slot#3 flags=0x2 gpa=0x4000000 size=0x4000000 "
                  "ua=0xffff5fe00000 guest_memfd=-1 guest_memfd_offset=0x0 ret=0", variant=1)
    assert (new["m"], new["slot"], new["fd"], new["guest_phys_addr"]) == (True, 3, -1, 0x4000000)


def test_vcpu_property_adds_cpu_argument():
    """Rule (tracetool <= 8.0): a 'vcpu' event prints 'cpu=%p ' before its own format."""
    t = parse_text('vcpu guest_cpu_reset(void)\n')
    ev = t.events["guest_cpu_reset"]
    assert ev.fmt == "cpu=%p "
    assert [f for f, _ in ev.fields] == ["cpu"]


def test_width_and_hash_flags():
    """Rule: %08x is zero padded hex; %#x may print 0x; %5d may be space padded."""
    regex, fields = fmt_to_regex("v %08x w %#x n %5d", ["v", "w", "n"])
    row = pl.DataFrame({"b": ["v 0000002a w 0x10 n    -3"]}).select(
        pl.col("b").str.extract_groups(regex)).unnest("b").row(0)
    assert row == ("0000002a", "0x10", "-3")


def test_malformed_trace_events_line_names_file_and_line(tmp_path):
    """Rule: a trace-events line that is not NAME(ARGS) "FMT" is FILE:LINE."""
    p = tmp_path / "te"
    p.write_text('ok(int a) "a %d"\nthis is not an event\n')
    with pytest.raises(TraceFormatError, match=r"te:2: expected 'NAME\(ARGS\) \"FORMAT\"'"):
        load_table(p)


def test_installed_file_parses_when_present():
    """Every event of an installed trace-events-all gives a regex polars accepts."""
    p = Path("/usr/share/qemu/trace-events-all")
    if not p.is_file():
        pytest.skip("QEMU's trace-events-all is not installed")
    t = load_table(p)
    assert len(t.events) > 1000
    df = pl.DataFrame({"b": ["x"]})
    for ev in t.events.values():
        df.select(pl.col("b").str.contains(ev.regex))


@pytest.mark.parametrize("fmt,body,expect", [
    # %s followed by literal text: the one-pass form stops at the first quote/space/colon
    ("name '%s'", "name 'pl011'", {"s": "pl011"}),
    ("name '%s'", "name 'it''s'", None),  # holds the quote: only the exact regex reads it
    ("%s sid=%d", "smmuv3-iommu-memory-region-0-0 sid=8", {"s": "smmuv3-iommu-memory-region-0-0", "d": 8}),
    ("%s:%d %s", "a:1 b c", {"s": "a", "d": 1, "s2": "b c"}),
    ("%s%5d!", "ab   12!", None),  # a padded number right after the string: no one-pass form
])
def test_one_pass_regex_reads_the_same_fields_as_the_exact_one(fmt, body, expect):
    """Rule: the lazy %s group stops at the first place where the rest of the format matches;
    the one-pass form ([^C]* before literal C) captures the same or does not match at all."""
    import re

    from tracekit.importers.trace_events import fast_regex, parse_line

    names = ["s", "d", "s2"][:len(re.findall(r"%\d*[sd]", fmt))]
    args = ", ".join(("const char *" if n.startswith("s") else "int ") + n for n in names)
    ev = parse_line(f'ev({args}) "{fmt}"', "t")
    exact = pl.DataFrame({"b": [body]}).select(pl.col("b").str.extract_groups(ev.regex)).unnest("b").row(0, named=True)
    fast = fast_regex(ev)
    if fast is None:
        assert expect is None and "%5d" in fmt
        return
    got = pl.DataFrame({"b": [body]}).select(pl.col("b").str.extract_groups(fast)).unnest("b").row(0, named=True)
    if expect is None:  # the one-pass form does not match; the exact regex does
        assert all(v is None for v in got.values()) and all(v is not None for v in exact.values())
    else:
        assert got == exact and {k: (int(v) if k == "d" else v) for k, v in got.items()} == expect


def test_string_argument_holding_the_delimiter_decodes_via_exact_regex(tmp_path):
    """A region name with a quote fails the one-pass form and is read by the exact regex (no error)."""
    from tracekit.importers.base import ImportOptions
    from tracekit.importers.qemu_log import QemuLogImporter

    p = tmp_path / "q.log"
    p.write_text("memory_region_ops_write cpu 0 mr 0xaa addr 0x9000000 value 0x48 size 4 name 'pl011'\n"
                 "memory_region_ops_write cpu 0 mr 0xaa addr 0xa000000 value 0x1 size 4 name 'it's'\n")
    res = QemuLogImporter().read(p, ImportOptions(trace_events=DATA / "trace-events-excerpt"))
    df = pl.concat(list(res.batches))
    assert df.select("op", "addr", "value").rows() == [("write", 0x9000000, 0x48), ("write", 0xA000000, 1)]
    assert set(res.summary["mmio_seen"]) == {"pl011", "it's"}
