"""CSV/JSONL speed paths: the typed reads accept exactly what the text path accepts, and every
JSONL object's keys are checked.

The importers first read a chunk with the numbers typed by the reader (pyarrow CSV, polars
NDJSON) and fall back to the text path (tracekit.validate's rules) for chunks the typed read
refuses. The differential tests below run each odd input twice, with the typed path allowed and
with it disabled, and require the same events or the same error: the text path is the
reference implementation of the scenario rules, so the typed path may only be faster.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracekit.errors import TracekitError
from tracekit.importers import tabular
from tracekit.importers import tkt as tkt_mod
from tracekit.schema import trace_columns
from tracekit.trace import load

SETTINGS = "@region ram 0x40000000 1G ram\n"
CSV_HEADER = "time,agent,op,addr,size,cmo,sysreg,value,attr,attr_index,phase,detail"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    (tmp_path / (name + ".settings.tkt")).write_text(SETTINGS)
    return p


def outcome(path: Path):
    """('ok', events without src) or ('error', message)."""
    try:
        return "ok", load(path).events.drop("src")
    except TracekitError as e:
        return "error", str(e)


def text_path_only(monkeypatch) -> None:
    """Disable the typed speed path: every chunk is converted from text by the scenario rules."""
    monkeypatch.setattr(tabular, "_typed_fast", lambda df, line_size, **_: None)


def assert_typed_path_agrees(tmp_path: Path, monkeypatch, suffix: str, text: str) -> None:
    """The same events, or the same error, with the typed speed paths and with the text path only."""
    fast = outcome(write(tmp_path, f"a.{suffix}", text))
    text_path_only(monkeypatch)
    slow = outcome(write(tmp_path, f"b.{suffix}", text))
    assert fast[0] == slow[0], (fast, slow)
    if fast[0] == "error":
        assert fast[1].replace(f"a.{suffix}", f"b.{suffix}") == slow[1]
    else:
        assert fast[1].equals(slow[1])


# --------------------------------------------------------------------------
# Rule: numbers are decimal or 0x hex (sizes also K/M/G), timestamps decimal; the typed reads
# (which trim blanks, parse "inf", take hex) must not widen or change that.

CSV_ROWS = [
    "1.5,guest,write,0x40000000,8,,,,wb,,,",
    "1.5,guest,write,0X40000000,8,,,,wb,,,",
    "1.5,guest,write,1073741824,4K,,,,wb,,,",
    "1.5,guest,write, 1073741824,8,,,,wb,,,",
    "1.5,guest,write,1073741824 ,8,,,,wb,,,",
    '1.5,guest,write," 1073741824",8,,,,wb,,,',
    "1.5,guest,write,+1073741824,8,,,,wb,,,",
    "1.5,guest,write,01073741824,8,,,,wb,,,",
    "1.5,guest,write,0x,8,,,,wb,,,",
    "1.5,guest,write,18446744073709551615,1,,,,wb,,,",
    "1.5,guest,write,18446744073709551616,1,,,,wb,,,",
    "1.5,guest,write,0x40000000,8,,,,,7,,",
    "1.5,guest,write,0x40000000,8,,,,,8,,",
    "1.5,guest,write,0x40000000,8,,,,dev,,,",
    "inf,guest,write,0x40000000,8,,,,wb,,,",
    "1e400,guest,write,0x40000000,8,,,,wb,,,",
    "NaN,guest,write,0x40000000,8,,,,wb,,,",
    "+.5e-3,guest,write,0x40000000,8,,,,wb,,,",
    " 1.5,guest,write,0x40000000,8,,,,wb,,,",
    "1.5\t,guest,write,0x40000000,8,,,,wb,,,",
    "1.5,guest,cmo,0x40000010,,dc.civac,,,,,,",
    "1.5,guest,cmo,,,dc.isw,,,,,,",
    "1.5,guest,cmo,0x40000000,,dc.isw,,,,,,",
    "1.5,guest,sysreg,,,,sctlr_el1,0x0,,,,",
    "1.5,guest,sysreg,,,,MAIR_EL1,,,,,",
    "1.5,guest,barrier,,,,,,,,,dsb sy",
    "1.5,guest,barrier,0x40000000,,,,,,,,",
    "1.5,host.vnc,read,0x40000000,64,,,,,,scanout,",
    "1.5,dev.gpu,read,0x40000000,64,,,,,,,",
    "1.5,guest,read,0x40000000,8,,,,,,,",
    "1.5,NULL,read,0x40000000,8,,,,wb,,,",
    "1.5,guest,write,0x40000000,8,,,0x10000000000000000,wb,,,",
]


@pytest.mark.parametrize("row", CSV_ROWS)
def test_csv_typed_read_accepts_what_the_text_path_accepts(tmp_path, monkeypatch, row):
    text = "\n".join([CSV_HEADER, "1.0,guest,write,0x40000000,8,,,,wb,,,", row]) + "\n"
    assert_typed_path_agrees(tmp_path, monkeypatch, "csv", text)


def test_csv_blank_around_a_number_is_an_error(tmp_path):
    # scenario rule: a number is decimal or 0x hex, nothing else (pyarrow would read ' 5' as 5)
    p = write(tmp_path, "t.csv", f"{CSV_HEADER}\n1.0,guest,write, 0x40000000,8,,,,wb,,,\n")
    kind, msg = outcome(p)
    assert kind == "error" and msg.startswith(f"{p}:2: expected an address (decimal or 0x hex), found ' 0x40000000'")


def test_csv_infinite_timestamp_word_is_an_error(tmp_path):
    # rule: a timestamp is a decimal number of seconds ('inf' is no decimal number)
    p = write(tmp_path, "t.csv", f"{CSV_HEADER}\ninf,guest,write,0x40000000,8,,,,wb,,,\n")
    kind, msg = outcome(p)
    assert kind == "error" and msg.startswith(f"{p}:2: expected a timestamp in seconds")


JSONL_OBJECTS = [
    {"agent": "guest", "op": "write", "addr": 1073741824, "size": 8, "attr": "wb"},
    {"agent": "guest", "op": "write", "addr": "0x40000000", "size": "4K", "attr": "wb"},
    {"agent": "guest", "op": "write", "addr": "1073741824", "size": 8, "attr": "wb", "time": "0.5"},
    {"agent": "guest", "op": "write", "addr": 1073741824.0, "size": 8, "attr": "wb"},
    {"agent": "guest", "op": "write", "addr": -1, "size": 8, "attr": "wb"},
    {"agent": "guest", "op": "write", "addr": True, "size": 8, "attr": "wb"},
    {"agent": "guest", "op": "write", "addr": 2**64 - 1, "size": 1, "attr": "wb"},
    {"agent": "guest", "op": "write", "addr": 2**64, "size": 1, "attr": "wb"},
    {"agent": "guest", "op": "write", "addr": 1073741824, "size": 8, "attr_index": 7},
    {"agent": "guest", "op": "write", "addr": 1073741824, "size": 8, "attr_index": 8},
    {"agent": "guest", "op": "write", "addr": 1073741824, "size": 8, "attr_index": -1},
    {"agent": "guest", "op": "write", "addr": 1073741824, "size": 8, "attr": "dev", "time": 3},
    '{"agent": "guest", "op": "write", "addr": 1073741824, "size": 8, "attr": "wb", "time": 1e400}',
    {"agent": "guest", "op": "cmo", "cmo": "dc.civac", "addr": 1073741840},
    {"agent": "guest", "op": "sysreg", "sysreg": "sctlr_el1", "value": 0},
    {"agent": "host", "op": "read", "addr": 1073741824, "size": 64, "phase": 5},
    {"agent": "guest", "op": "barrier", "detail": "dsb sy", "seq": 9, "side": "x", "src": "y.tkt"},
    {"agent": "guest", "op": "marker", "addr": 1073741824},
]


@pytest.mark.parametrize("obj", JSONL_OBJECTS, ids=lambda o: o if isinstance(o, str) else json.dumps(o))
def test_jsonl_typed_read_accepts_what_the_text_path_accepts(tmp_path, monkeypatch, obj):
    lines = [json.dumps({"agent": "guest", "op": "write", "addr": 1073741824, "size": 8, "attr": "wb"}),
             obj if isinstance(obj, str) else json.dumps(obj)]
    text = "\n".join(lines) + "\n"
    assert_typed_path_agrees(tmp_path, monkeypatch, "jsonl", text)


def test_clean_inputs_take_the_typed_path(tmp_path, monkeypatch):
    """Decimal and 0x-hex CSV numbers and JSON numbers never need the text conversion (the speed target)."""
    def refuse(self, text):
        raise AssertionError("the text path was used")

    monkeypatch.setattr(tabular._Rows, "typed", refuse)
    c = write(tmp_path, "t.csv", "\n".join([
        CSV_HEADER, ",guest,sysreg,,,,MAIR_EL1,0x44ff,,,,", "0.5,guest,write,0x40000000,8,,,,,1,,",
        "1,host.vnc,read,1073741888,64,,,,,,,", "2,guest,cmo,0x40000000,,dc.civac,,,,,,"]) + "\n")
    ev = load(c).events
    assert ev["addr"].to_list() == [None, 0x40000000, 0x40000040, 0x40000000]
    assert ev["size"].to_list() == [None, 8, 64, 64]  # a cmo by address without a size: one line
    assert ev["side"].to_list() == ["guest", "guest", "host", "guest"]
    j = write(tmp_path, "t.jsonl", "\n".join(json.dumps(o) for o in [
        {"agent": "guest", "op": "sysreg", "sysreg": "MAIR_EL1", "value": 17663},
        {"agent": "guest", "op": "write", "addr": 1073741824, "size": 8, "attr_index": 1, "time": 0.5},
        {"agent": "dev.gpu", "op": "read", "addr": 1073741824, "size": 64, "time": 1}]) + "\n")
    (tmp_path / "t.jsonl.settings.tkt").write_text(SETTINGS + "@device gpu noncoherent\n")
    ev = load(j).events
    assert ev["agent"].to_list() == ["guest.0", "guest.0", "dev.gpu"]
    assert ev["value"].to_list()[0] == 0x44ff and ev["attr_index"].to_list() == [None, 1, None]


def test_hex_strings_and_size_suffixes_take_the_second_typed_read(tmp_path, monkeypatch):
    """JSON has no hex numbers, so addresses often come as "0x..." strings; sizes as "4K"."""
    def refuse(self, text):
        raise AssertionError("the text path was used")

    monkeypatch.setattr(tabular._Rows, "typed", refuse)
    j = write(tmp_path, "t.jsonl", "\n".join(json.dumps(o) for o in [
        {"agent": "guest", "op": "sysreg", "sysreg": "MAIR_EL1", "value": "0x44ff"},
        {"agent": "guest", "op": "write", "addr": "0x40000000", "size": "4K", "attr": "wb", "time": 0.5},
        {"agent": "host", "op": "read", "addr": 1073741824, "size": 64, "time": 1}]) + "\n")
    ev = load(j).events
    assert ev["addr"].to_list() == [None, 0x40000000, 0x40000000]
    assert ev["size"].to_list() == [None, 4096, 64] and ev["value"].to_list()[0] == 0x44ff
    c = write(tmp_path, "t.csv", f"{CSV_HEADER}\n0.5,guest,write,0x40000000,1M,,,,wb,,,\n")
    assert load(c).events["size"].to_list() == [1 << 20]


# --------------------------------------------------------------------------
# Rule: every JSONL object's keys are trace-v1 column names, not only the first object's.

def jsonl(tmp_path: Path, objs: list, name: str = "t.jsonl") -> Path:
    return write(tmp_path, name, "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")


GOOD = {"agent": "guest", "op": "write", "addr": 1073741824, "size": 8, "attr": "wb"}


def test_jsonl_unknown_key_on_a_later_object(tmp_path):
    p = jsonl(tmp_path, [GOOD, GOOD, {"agent": "guest", "op": "write", "adr": 1073741824, "size": 8}])
    kind, msg = outcome(p)
    assert kind == "error"
    assert msg.startswith(f"{p}:3: expected trace-v1 field names ({', '.join(trace_columns())}), found 'adr'")


def test_jsonl_unknown_key_in_a_later_chunk_names_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(tkt_mod, "CHUNK_BYTES", 200)  # several lines a chunk, many chunks
    objs = [GOOD] * 40 + ["", {"agent": "host", "op": "marker", "Detail": "x"}] + [GOOD] * 5
    p = jsonl(tmp_path, objs)
    kind, msg = outcome(p)
    assert kind == "error" and msg.startswith(f"{p}:42: expected trace-v1 field names") and "found 'Detail'" in msg


def test_jsonl_earlier_line_error_wins_over_a_later_unknown_key(tmp_path):
    # the rows before the bad key are still checked: line 2's size 0 is reported, not line 3's key
    p = jsonl(tmp_path, [GOOD, {**GOOD, "size": 0}, {**GOOD, "bogus": 1}])
    kind, msg = outcome(p)
    assert kind == "error" and msg.startswith(f"{p}:2: expected a size of at least 1"), msg


def test_jsonl_key_scan_reads_json_strings_and_spacing(tmp_path):
    # a value holding quotes and colons is no key; a key may be written with escapes or spaced colons
    ok = jsonl(tmp_path, [
        {"agent": "guest", "op": "marker", "detail": 'say "bogus": 1 {"x": [2]}'},
        '{"agent" : "guest", "op":"write", "\\u0061ddr": 1073741824, "size"\t: 8, "attr": "wb"}',
    ])
    kind, ev = outcome(ok)
    assert kind == "ok", ev
    assert ev["detail"].to_list()[0] == 'say "bogus": 1 {"x": [2]}' and ev["addr"].to_list()[1] == 0x40000000
    bad = jsonl(tmp_path, [GOOD, '{"agent": "guest", "op": "marker", "bogus" : 1}'], name="b.jsonl")
    kind, msg = outcome(bad)
    assert kind == "error" and msg.startswith(f"{bad}:2: expected trace-v1 field names") and "found 'bogus'" in msg
    esc = jsonl(tmp_path, [GOOD, '{"agent": "guest", "op": "marker", "\\u0062ogus": 1}'], name="e.jsonl")
    kind, msg = outcome(esc)
    assert kind == "error" and msg.startswith(f"{esc}:2: ") and "found 'bogus'" in msg


def test_jsonl_ignored_columns_are_known_keys_on_every_object(tmp_path):
    p = jsonl(tmp_path, [GOOD, {**GOOD, "seq": 5, "side": "host", "src": "x", "src_line": 9, "src_offset": 1}])
    kind, ev = outcome(p)
    assert kind == "ok", ev
    assert ev["seq"].to_list() == [0, 1] and ev["side"].to_list() == ["guest", "guest"]
    assert ev["src_line"].to_list() == [1, 2]


def test_jsonl_nested_key_is_not_a_top_level_key(tmp_path):
    # keys inside a nested value are not fields; the nested value itself is refused by the field rules
    p = jsonl(tmp_path, [GOOD, {"agent": "guest", "op": "write", "addr": {"bogus": 1}, "size": 8}])
    kind, msg = outcome(p)
    assert kind == "error" and msg.startswith(f"{p}:2: expected") and "found 'bogus'" not in msg, msg


# --------------------------------------------------------------------------
# Chunking keeps line numbers on the typed path (CSV)

def test_csv_typed_chunks_keep_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(tabular, "BLOCK_BYTES", 100)
    rows = [f"{i},host,write,{0x40000000 + 8 * i},8,,,,,,," for i in range(300)]
    p = write(tmp_path, "t.csv", "\n".join([CSV_HEADER, *rows]) + "\n")
    ev = load(p).events
    assert ev["src_line"].to_list() == list(range(2, 302))
    assert ev["addr"].to_list() == [0x40000000 + 8 * i for i in range(300)]
    assert ev["time"].to_list() == [float(i) for i in range(300)]
    bad = write(tmp_path, "b.csv", "\n".join([CSV_HEADER, *rows, "1,host,write,0x40000000,0,,,,,,,"]) + "\n")
    kind, msg = outcome(bad)
    assert kind == "error" and msg.startswith(f"{bad}:302: expected a size of at least 1")


def test_csv_without_final_newline(tmp_path):
    rows = ["1.0,guest,write,0x40000000,8,,,,wb,,,", "2.0,host,read,0x40000000,8,,,,,,,"]
    p = write(tmp_path, "t.csv", "\n".join([CSV_HEADER, *rows]))  # no newline after the last row
    ev = load(p).events
    assert ev["src_line"].to_list() == [2, 3] and ev["op"].to_list() == ["write", "read"]
