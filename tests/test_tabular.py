"""CSV and JSONL inputs: trace-v1 field names, settings side files, and the same checks as a scenario."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracekit.errors import TracekitError
from tracekit.importers import ImportOptions, detect_format
from tracekit.importers import tabular
from tracekit.importers import tkt as tkt_mod
from tracekit.trace import load

HEADER = "time,agent,op,addr,size,cmo,sysreg,value,attr,attr_index,phase,detail"


def csv_file(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "t.csv",
             settings: str | None = None) -> Path:
    p = tmp_path / name
    p.write_text("\n".join([header, *rows]) + "\n")
    if settings is not None:
        (tmp_path / (name + ".settings.tkt")).write_text(settings)
    return p


def jsonl_file(tmp_path: Path, objs: list[dict | str], name: str = "t.jsonl", settings: str | None = None) -> Path:
    p = tmp_path / name
    p.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    if settings is not None:
        (tmp_path / (name + ".settings.tkt")).write_text(settings)
    return p


def fails(path: Path, options: ImportOptions | None = None) -> str:
    with pytest.raises(TracekitError) as e:
        load(path, options=options)
    return str(e.value)


# --------------------------------------------------------------------------
# CSV


def test_csv_fields_typed_like_a_scenario(tmp_path):
    p = csv_file(tmp_path, [
        ",guest,sysreg,,,,sctlr_el1,0x0,,,boot,",
        "1.25,guest.1,write,0x40000000,4K,,,42,,,boot,",
        ",host,read,1073741824,64,,,,dev,,,",
        ",guest,cmo,0x40000000,,dc.civac,,,,,,",
        ",guest,cmo,,,dc.cisw,,,,,,",
        ",guest,barrier,,,,,,,,,dsb sy",
    ])
    ev = load(p).events
    assert ev["agent"].to_list() == ["guest.0", "guest.1", "host.0", "guest.0", "guest.0", "guest.0"]
    assert ev["side"].to_list() == ["guest", "guest", "host", "guest", "guest", "guest"]
    assert ev["addr"].to_list() == [None, 0x40000000, 0x40000000, 0x40000000, None, None]
    assert ev["size"].to_list() == [None, 4096, 64, 64, None, None]  # cmo by address: one line
    assert ev["sysreg"].to_list()[0] == "SCTLR_EL1"
    assert ev["value"].to_list()[:2] == [0, 42]
    assert ev["attr"].to_list()[2] == "dev-ngnrne"
    assert ev["time"].to_list()[:2] == [None, 1.25]
    assert ev["phase"].to_list()[:3] == ["boot", "boot", None]
    assert ev["detail"].to_list()[-1] == "dsb sy"
    assert ev["src_line"].to_list() == [2, 3, 4, 5, 6, 7]  # the header is line 1
    assert ev["src"].unique().to_list() == [str(p)]


def test_csv_side_seq_src_columns_are_ignored(tmp_path):
    p = csv_file(tmp_path, ["7,guest,host,write,0x0,8,x.tkt,99", "3,host,guest,read,0x0,8,x.tkt,98"],
                 header="seq,agent,side,op,addr,size,src,src_line")
    ev = load(p).events
    assert ev["seq"].to_list() == [0, 1]  # file order, dense
    assert ev["side"].to_list() == ["guest", "host"]  # from the agent
    assert ev["src_line"].to_list() == [2, 3]


def test_csv_minimal_columns(tmp_path):
    ev = load(csv_file(tmp_path, ["guest,marker"], header="agent,op")).events
    assert ev["op"].to_list() == ["marker"] and ev["addr"].to_list() == [None]


def test_csv_settings_beside_the_input(tmp_path):
    p = csv_file(tmp_path, [",guest,write,0x40000000,8,,,,,,,"],
                 settings="@line-size 128\n@stage2 off\n@region ram 0x40000000 16M ram\n@device gpu coherent\n")
    info = load(p).info
    assert (info.line_size, info.stage2, [r.name for r in info.regions], [d.name for d in info.devices]) == \
        (128, False, ["ram"], ["gpu"])


def test_settings_option_wins_over_the_side_file(tmp_path):
    p = csv_file(tmp_path, [",guest,write,0x40000000,8,,,,,,,"], settings="@line-size 128\n")
    other = tmp_path / "other.tkt"
    other.write_text("@line-size 32\n")
    assert load(p, options=ImportOptions(settings=other)).info.line_size == 32
    assert load(p, options=ImportOptions(settings=other, line_size=256)).info.line_size == 256


def test_settings_file_with_an_event_is_an_error(tmp_path):
    p = csv_file(tmp_path, [",guest,write,0x0,8,,,,,,,"], settings="@line-size 64\nguest write 0x0 8\n")
    msg = fails(p)
    assert msg.startswith(f"{p}.settings.tkt:2: expected only @ directives")


def test_settings_file_errors_name_its_line(tmp_path):
    p = csv_file(tmp_path, [",guest,write,0x0,8,,,,,,,"], settings="# s\n@region a 0x0 0 ram\n")
    assert fails(p).startswith(f"{p}.settings.tkt:2: expected a region size of at least 1")


@pytest.mark.parametrize("row,line,fragment", [
    (",guest,write,0x0,8,,,,,,,", 3, "expected an access inside one region"),
    (",dev.gpu,write,0x40000000,8,,,,,,,", 3, "expected a device declared with @device"),
    (",guest,write,0x40000000,0,,,,,,,", 3, "expected a size of at least 1"),
    (",guest,write,0xZ,8,,,,,,,", 3, "expected an address (decimal or 0x hex), found '0xZ'"),
    (",cpu,write,0x40000000,8,,,,,,,", 3, "expected an agent"),
    (",guest,fly,0x40000000,8,,,,,,,", 3, "expected an operation"),
    (",guest,cmo,0x40000000,,dc.isw,,,,,,", 3, "expected no address for dc.isw"),
    (",guest,read,0x40000000,,,,,,,,", 3, "expected a size for read"),
    (",guest,sysreg,,,,SCTLR_EL1,,,,,", 3, "expected a value for sysreg"),
    (",host,read,0x40000000,8,,,,uc,,,", 3, "expected attr one of"),
    (",guest,read,0x40000000,8,,,,,9,,", 3, "expected idx 0..7"),
])
def test_csv_rows_get_the_scenario_checks(tmp_path, row, line, fragment):
    p = csv_file(tmp_path, [",guest,write,0x40000000,8,,,,,,,", row],
                 settings="@region ram 0x40000000 16M ram\n")
    msg = fails(p)
    assert msg.startswith(f"{p}:{line}: "), msg
    assert fragment in msg, msg


def test_csv_mmu_on_typing(tmp_path):
    p = csv_file(tmp_path, [",guest,sysreg,,,,SCTLR_EL1,1,,,,", ",guest,read,0x0,8,,,,,,,"])
    assert fails(p).startswith(f"{p}:3: expected attr= or idx= on read by guest.0 with its MMU on")


def test_csv_unknown_and_missing_columns(tmp_path):
    assert fails(csv_file(tmp_path, ["guest,read,0x0"], header="agent,op,address")).startswith(
        f"{tmp_path / 't.csv'}:1: expected trace-v1 column names")
    assert "found 'address'" in fails(csv_file(tmp_path, ["guest,read,0x0"], header="agent,op,address"))
    assert fails(csv_file(tmp_path, ["guest,0x0"], header="agent,addr")).startswith(
        f"{tmp_path / 't.csv'}:1: expected a column 'op', found none")


def test_csv_wrong_field_count_names_the_line(tmp_path):
    p = csv_file(tmp_path, ["guest,read,0x0,8", "guest,read,0x0"], header="agent,op,addr,size")
    assert fails(p).startswith(f"{p}:3: expected 4 comma-separated fields, found 3")


def test_csv_blank_line_is_an_error_not_a_shift(tmp_path):
    p = csv_file(tmp_path, ["guest,read,0x0,8", "", "guest,read,0x0,8"], header="agent,op,addr,size")
    assert fails(p).startswith(f"{p}:3: expected an agent")  # the blank line keeps its number


def test_csv_non_utf8(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes(b"agent,op,detail\nguest,marker,ok\nguest,marker,caf\xe9\n")
    assert fails(p).startswith(f"{p}:3: expected UTF-8 text, found byte 0xe9")


def test_csv_empty_file(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("")
    assert fails(p).startswith(f"{p}:1: expected a CSV header") and "empty file" in fails(p)


def test_csv_batches_keep_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(tabular, "BLOCK_BYTES", 64)
    rows = [f"host,write,0x{i:x},8" for i in range(200)] + ["host,write,0x0,0"]
    p = csv_file(tmp_path, rows, header="agent,op,addr,size")
    assert fails(p).startswith(f"{p}:202: expected a size of at least 1")
    ev = load(csv_file(tmp_path, rows[:-1], header="agent,op,addr,size", name="ok.csv")).events
    assert ev["src_line"].to_list() == list(range(2, 202))
    assert ev["addr"].to_list() == list(range(200))


# --------------------------------------------------------------------------
# JSONL


def test_jsonl_numbers_or_strings_and_blank_lines(tmp_path):
    p = jsonl_file(tmp_path, [
        {"agent": "guest", "op": "sysreg", "sysreg": "MAIR_EL1", "value": 255},
        "",
        {"agent": "guest", "op": "write", "addr": 1073741824, "size": "4K", "attr": "nc", "time": 0.5},
        {"agent": "host.vnc", "op": "read", "addr": "0x40000000", "size": 64, "time": None},
        {"agent": "guest", "op": "read", "addr": 18446744073709551615, "size": 1, "attr_index": 3},
    ])
    ev = load(p).events
    assert ev["addr"].to_list() == [None, 0x40000000, 0x40000000, 2**64 - 1]
    assert ev["size"].to_list() == [None, 4096, 64, 1]
    assert ev["value"].to_list()[0] == 255
    assert ev["attr_index"].to_list()[3] == 3
    assert ev["time"].to_list() == [None, 0.5, None, None]
    assert ev["src_line"].to_list() == [1, 3, 4, 5]


def test_jsonl_settings_beside_the_input(tmp_path):
    p = jsonl_file(tmp_path, [{"agent": "guest", "op": "write", "addr": 0, "size": 8}],
                   settings="@region low 0x1000 4K ram\n")
    assert fails(p).startswith(f"{p}:1: expected an access inside one region")


def test_jsonl_invalid_json_names_the_line(tmp_path):
    p = jsonl_file(tmp_path, [{"agent": "guest", "op": "write", "addr": 0, "size": 8}, '{"agent": "guest", op}'])
    assert fails(p).startswith(f"{p}:2: expected a JSON object, found invalid JSON")


def test_jsonl_earlier_rule_wins_over_later_bad_json(tmp_path):
    p = jsonl_file(tmp_path, [{"agent": "guest", "op": "write", "addr": 0, "size": 0}, "{nope"])
    assert fails(p).startswith(f"{p}:1: expected a size of at least 1")


def test_jsonl_unknown_field_and_nested_value(tmp_path):
    p = jsonl_file(tmp_path, [{"agent": "guest", "op": "write", "address": 0}])
    assert fails(p).startswith(f"{p}:1: expected trace-v1 field names") and "'address'" in fails(p)
    p = jsonl_file(tmp_path, [{"agent": "guest", "op": "marker"}, {"agent": "guest", "op": "write",
                                                                    "addr": [1], "size": 8}], name="n.jsonl")
    msg = fails(p)  # either reader names the line and the value
    assert msg.startswith(f"{p}:2: expected") and ("'addr'" in msg or "'[1]'" in msg), msg


def test_jsonl_mmu_on_typing_and_device(tmp_path):
    p = jsonl_file(tmp_path, [{"agent": "guest", "op": "sysreg", "sysreg": "SCTLR_EL1", "value": 1},
                              {"agent": "guest", "op": "ifetch", "addr": 0, "size": 4}])
    assert fails(p).startswith(f"{p}:2: expected attr= or idx= on ifetch")
    p = jsonl_file(tmp_path, [{"agent": "dev.dma", "op": "write", "addr": 0, "size": 4}], name="d.jsonl")
    assert fails(p).startswith(f"{p}:1: expected a device declared with @device")


def test_jsonl_chunks_keep_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(tkt_mod, "CHUNK_BYTES", 100)
    objs = [{"agent": "host", "op": "write", "addr": i, "size": 8} for i in range(100)]
    ev = load(jsonl_file(tmp_path, objs)).events
    assert ev["src_line"].to_list() == list(range(1, 101)) and ev["addr"].to_list() == list(range(100))


def test_jsonl_empty_file(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("")
    assert fails(p).startswith(f"{p}:1: expected JSON objects") and "empty file" in fails(p)


# --------------------------------------------------------------------------
# Same events from every format


def test_tkt_csv_jsonl_give_the_same_events(tmp_path):
    (tmp_path / "s.tkt").write_text(
        "@region ram 0x40000000 16M ram\n@device gpu noncoherent\n"
        "guest sysreg MAIR_EL1 0x44ff\nguest sysreg SCTLR_EL1 0x1005\n"
        "t=0.5 guest write 0x40000000 8 idx=1 value=7\nt=1 dev.gpu read 0x40000000 64\n"
        "t=2 guest cmo dc.civac 0x40000000\n")
    settings = "@region ram 0x40000000 16M ram\n@device gpu noncoherent\n"
    c = csv_file(tmp_path, [",guest,sysreg,,,,MAIR_EL1,0x44ff,,,,", ",guest,sysreg,,,,SCTLR_EL1,0x1005,,,,",
                            "0.5,guest,write,0x40000000,8,,,7,,1,,", "1,dev.gpu,read,0x40000000,64,,,,,,,",
                            "2,guest,cmo,0x40000000,,dc.civac,,,,,,"], settings=settings)
    j = jsonl_file(tmp_path, [
        {"agent": "guest", "op": "sysreg", "sysreg": "MAIR_EL1", "value": "0x44ff"},
        {"agent": "guest", "op": "sysreg", "sysreg": "SCTLR_EL1", "value": 4101},
        {"agent": "guest", "op": "write", "addr": 0x40000000, "size": 8, "attr_index": 1, "value": 7, "time": 0.5},
        {"agent": "dev.gpu", "op": "read", "addr": 0x40000000, "size": 64, "time": 1},
        {"agent": "guest", "op": "cmo", "cmo": "dc.civac", "addr": 0x40000000, "time": 2},
    ], settings=settings)
    frames = [load(p).events.drop("src", "src_line") for p in (tmp_path / "s.tkt", c, j)]
    assert frames[0].equals(frames[1]) and frames[0].equals(frames[2])
    infos = [load(p).info.replace(inputs=()) for p in (tmp_path / "s.tkt", c, j)]
    assert infos[0] == infos[1] == infos[2]


def test_detect_csv_and_jsonl_by_suffix_and_content(tmp_path):
    assert detect_format(csv_file(tmp_path, ["guest,marker"], header="agent,op", name="x.csv")) == "csv"
    assert detect_format(csv_file(tmp_path, ["guest,marker"], header="agent,op", name="x.dat")) == "csv"
    assert detect_format(jsonl_file(tmp_path, [{"agent": "guest", "op": "marker"}], name="x.log")) == "jsonl"
    assert detect_format(jsonl_file(tmp_path, [{"agent": "guest", "op": "marker"}], name="x.ndjson")) == "jsonl"
