"""Guest map: stage-1 types of guest-physical ranges for recorded (untyped) guest accesses."""

from pathlib import Path

import polars as pl
import pytest

from tracekit.errors import TraceFormatError
from tracekit.importers._lines import finish
from tracekit.importers.guest_map import apply_guest_map, load_guest_map, translate_va

DATA = Path(__file__).parent / "data" / "qemu"


def events(rows):
    df = pl.DataFrame(rows, schema={"agent": pl.String, "op": pl.String, "addr": pl.UInt64, "size": pl.UInt64,
                                    "attr": pl.String, "attr_index": pl.UInt8, "phase": pl.String},
                      orient="row")
    return finish(df, "t")


def test_toml_ranges_phase_first_and_counts():
    """Rule: an untyped guest access takes its range's attr/idx; a phase-specific range wins in its
    phase; explicit types, host accesses and addresses outside every range are left alone."""
    gm = load_guest_map(DATA / "guest-map.toml")
    df = events([
        ("guest.0", "write", 0x40001000, 8, None, None, None),   # idx 1
        ("guest.0", "read", 0x48000040, 8, None, None, None),    # nc
        ("guest.0", "read", 0x48000040, 8, None, None, "boot"),  # boot override: wb
        ("guest.0", "read", 0x40002000, 8, "nc", None, None),    # typed by the input: unchanged
        ("host.0", "read", 0x40001000, 8, None, None, None),     # host: unchanged
        ("guest.1", "read", 0x50000000, 4, None, None, None),    # outside: untyped
        ("guest.0", "cmo", 0x40001000, 64, None, None, None),    # not an access
    ])
    counts = {}
    out = apply_guest_map(df, gm, counts)
    assert out.select("attr", "attr_index").rows() == [
        (None, 1), ("nc", None), ("wb", None), ("nc", None), (None, None), (None, None), (None, None)]
    assert counts == {"guest_accesses": 5, "typed_by_input": 1, "typed_by_guest_map_attr": 2,
                      "typed_by_guest_map_idx": 1, "untyped": 1}
    assert out.columns == df.columns


def test_text_form_and_va_translation():
    gm = load_guest_map(DATA / "identity-map.txt")
    va = pl.DataFrame({"_i": [0, 1, 2], "va": [0x40000000, 0x40FFFFFF, 0x41000000]},
                      schema={"_i": pl.UInt32, "va": pl.UInt64})
    assert translate_va(va, gm).sort("_i")["pa"].to_list() == [0x40000000, 0x40FFFFFF, None]


def test_overlap_and_bad_lines(tmp_path):
    p = tmp_path / "g.txt"
    p.write_text("0x1000 4K wb\n0x1800 4K nc\n")
    with pytest.raises(TraceFormatError, match="expected ranges that do not overlap"):
        load_guest_map(p)
    p.write_text("0x1000 4K\n")
    with pytest.raises(TraceFormatError, match=r"g.txt:1: expected 'BASE SIZE attr\|idx=N"):
        load_guest_map(p)
    p.write_text("0x1000 4K idx=9\n")
    with pytest.raises(TraceFormatError, match=r"g.txt:1: expected idx 0..7, found 9"):
        load_guest_map(p)
    p.write_text("0x1000 4K writeback\n")
    with pytest.raises(TraceFormatError, match=r"g.txt:1: expected attr one of"):
        load_guest_map(p)
