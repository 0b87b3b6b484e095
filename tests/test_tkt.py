"""The scenario text format (.tkt): every rule of scenario-format.md, and every error it names.

Expected values are worked out from the format's rules (numbers, sizes in
powers of 1024, agent names, region defaults), not read back from the importer.
"""

from __future__ import annotations

import glob
from pathlib import Path

import polars as pl
import pytest

from tracekit.errors import TraceFormatError, TracekitError, UnknownFormatError
from tracekit.importers import IMPORTERS, detect_format, get_importer
from tracekit.importers import tkt as tkt_mod
from tracekit.trace import load

VECTORS = sorted(glob.glob(str(Path(__file__).resolve().parent / "vectors" / "*.tkt")))
MMU_ON = "guest sysreg MAIR_EL1 0xff\nguest sysreg SCTLR_EL1 0x1005\n"


def scenario(tmp_path: Path, text: str | bytes, name: str = "s.tkt") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def events(tmp_path: Path, text: str) -> pl.DataFrame:
    return load(scenario(tmp_path, text)).events


def error(tmp_path: Path, text: str | bytes) -> tuple[str, Path]:
    p = scenario(tmp_path, text)
    with pytest.raises(TracekitError) as e:
        load(p)
    return str(e.value), p


# --------------------------------------------------------------------------
# Comments, directives and settings


def test_comments_anywhere_and_vector_annotations_are_ignored(tmp_path):
    ev = events(tmp_path, "# a comment line\n\n   # indented comment\n"
                          "guest write 0x1000 8   # trailing\n"
                          "host read 0x1000 8 #! none stale-read/stale-line-not-invalidated\n"
                          "guest write 0x2000 8#no space before the comment\n")
    assert ev["op"].to_list() == ["write", "read", "write"]
    assert ev["addr"].to_list() == [0x1000, 0x1000, 0x2000]


def test_settings_defaults_without_directives(tmp_path):
    info = load(scenario(tmp_path, "guest write 0x0 1\n")).info
    assert (info.line_size, info.stage2, info.fwb, info.regions, info.devices) == (64, True, False, (), ())


def test_settings_from_directives(tmp_path):
    info = load(scenario(tmp_path, "@tracekit 1\n@line-size 128\n@stage2 off\n@fwb on\n"
                                   "guest write 0x0 1\n")).info
    assert (info.line_size, info.stage2, info.fwb) == (128, False, True)


def test_region_defaults_by_kind_and_overrides(tmp_path):
    info = load(scenario(tmp_path, "@region ram 0x40000000 128M ram\n"
                                   "@region fb 0x48000000 1M ram shared\n"
                                   "@region uart 0x09000000 4K mmio\n"
                                   "@region odd 0x50000000 4K ram s2=nc host=none\n"
                                   "@region dv 0x60000000 4K mmio s2=dev-gre host=wt\n")).info
    r = {x.name: x for x in info.regions}
    assert (r["ram"].base, r["ram"].size, r["ram"].kind, r["ram"].s2, r["ram"].host, r["ram"].shared) == \
        (0x40000000, 128 << 20, "ram", "wb", "wb", False)
    assert r["fb"].shared and r["fb"].size == 1 << 20
    assert (r["uart"].kind, r["uart"].s2, r["uart"].host, r["uart"].size) == ("mmio", "dev-ngnrne", "none", 4096)
    assert (r["odd"].s2, r["odd"].host) == ("nc", "none")
    assert (r["dv"].s2, r["dv"].host) == ("dev-gre", "wt")


def test_device_declarations(tmp_path):
    info = load(scenario(tmp_path, "@device gpu noncoherent\n@device nic coherent\n"
                                   "dev.gpu write 0x0 8\n")).info
    assert {(d.name, d.coherent) for d in info.devices} == {("gpu", False), ("nic", True)}


def test_phase_labels_events_below_until_next(tmp_path):
    ev = events(tmp_path, "guest write 0x0 1\n@phase boot\nguest write 0x0 1\n# c\nguest write 0x0 1\n"
                          "@phase scanout\nhost read 0x0 1\n@phase\nhost read 0x0 1\n")
    assert ev["phase"].to_list() == [None, "boot", "boot", "scanout", None]


def test_directives_anywhere_apply_to_the_whole_trace(tmp_path):
    # a region declared after the events still bounds them (settings are trace-wide)
    msg, p = error(tmp_path, "guest write 0x1000 8\n@region ram 0x40000000 16M ram\n")
    assert msg.startswith(f"{p}:1: expected an access inside one region")


# --------------------------------------------------------------------------
# Numbers, sizes, agents, operations, keys


def test_numbers_decimal_and_hex_sizes_in_powers_of_1024(tmp_path):
    ev = events(tmp_path, "guest write 4096 8\nguest write 0x1000 0x10\nguest write 0X1F 1K\n"
                          "guest write 0x0 2M\nguest write 0x0 1G\n")
    assert ev["addr"].to_list() == [4096, 4096, 31, 0, 0]
    assert ev["size"].to_list() == [8, 16, 1024, 2 << 20, 1 << 30]


def test_largest_address_is_accepted(tmp_path):
    ev = events(tmp_path, "guest write 0xffffffffffffffff 1\nguest write 18446744073709551615 1\n")
    assert ev["addr"].to_list() == [2**64 - 1, 2**64 - 1]


def test_agents_default_instance_and_side(tmp_path):
    ev = events(tmp_path, "@device gpu coherent\nguest read 0x0 1\nhost read 0x0 1\nguest.3 read 0x0 1\n"
                          "host.vnc read 0x0 1\ndev.gpu read 0x0 1\ndev.gpu.q0 read 0x0 1\n")
    assert ev["agent"].to_list() == ["guest.0", "host.0", "guest.3", "host.vnc", "dev.gpu", "dev.gpu.q0"]
    assert ev["side"].to_list() == ["guest", "host", "guest", "host", "dev", "dev"]


def test_operations_and_their_columns(tmp_path):
    ev = events(tmp_path, "guest read 0x10 4\nguest write 0x20 8 value=0x2a\nguest ifetch 0x30 4\n"
                          "guest cmo dc.civac 0x40 128\nguest cmo dc.cisw\nguest cmo ic.iallu\n"
                          "guest sysreg sctlr_el1 0x0\nguest sysreg TCR_EL1 0x1234\nguest barrier dsb sy\n"
                          "guest marker  hello world \n")
    assert ev["op"].to_list() == ["read", "write", "ifetch", "cmo", "cmo", "cmo", "sysreg", "sysreg",
                                  "barrier", "marker"]
    assert ev["cmo"].to_list() == [None, None, None, "dc.civac", "dc.cisw", "ic.iallu", None, None, None, None]
    assert ev["addr"].to_list()[3:6] == [0x40, None, None]
    assert ev["size"].to_list()[3:6] == [128, None, None]
    assert ev["sysreg"].to_list()[6:8] == ["SCTLR_EL1", "TCR_EL1"]  # names upper case, others kept
    assert ev["value"].to_list()[:2] == [None, 0x2A]
    assert ev["value"].to_list()[6:8] == [0, 0x1234]
    assert ev["detail"].to_list()[8:] == ["dsb sy", "hello world"]


@pytest.mark.parametrize("line_size", [64, 128])
def test_cmo_by_address_defaults_to_one_line(tmp_path, line_size):
    ev = events(tmp_path, f"@line-size {line_size}\nguest cmo dc.civac 0x1000\nguest cmo dc.cvac 0x1000 8\n")
    assert ev["size"].to_list() == [line_size, 8]


@pytest.mark.parametrize("op", ["dc.ivac", "dc.cvac", "dc.cvap", "dc.civac", "dc.cvau", "dc.zva", "ic.ivau"])
def test_every_cmo_by_address(tmp_path, op):
    assert events(tmp_path, f"guest cmo {op} 0x40\n")["cmo"].to_list() == [op]


@pytest.mark.parametrize("op", ["ic.iallu", "ic.ialluis", "dc.isw", "dc.csw", "dc.cisw"])
def test_set_way_and_iallu_take_no_address(tmp_path, op):
    assert events(tmp_path, f"guest cmo {op}\n")["addr"].to_list() == [None]
    msg, p = error(tmp_path, f"guest cmo {op} 0x40\n")
    assert msg.startswith(f"{p}:1: expected no address for {op}")


@pytest.mark.parametrize("alias,attr", [("dev", "dev-ngnrne"), ("dev-ngnrne", "dev-ngnrne"), ("dev-ngnre", "dev-ngnre"),
                                        ("dev-ngre", "dev-ngre"), ("dev-gre", "dev-gre"), ("nc", "nc"),
                                        ("wt", "wt"), ("wb", "wb")])
def test_attr_aliases_normalised_to_trace_types(tmp_path, alias, attr):
    assert events(tmp_path, f"host read 0x0 8 attr={alias}\n")["attr"].to_list() == [attr]


def test_keys_idx_value_t_and_leading_timestamp(tmp_path):
    ev = events(tmp_path, MMU_ON + "t=1.5 guest read 0x0 8 idx=7\nguest write 0x0 8 attr=nc value=42 t=2e-3\n"
                                   "t=3 host barrier dmb\n")
    assert ev["attr_index"].to_list() == [None, None, 7, None, None]
    assert ev["time"].to_list() == [None, None, 1.5, 0.002, 3.0]
    assert ev["value"].to_list()[3] == 42


def test_events_keep_file_order_src_and_lines(tmp_path):
    p = scenario(tmp_path, "# header\n\nguest write 0x0 1\n@phase x\nhost read 0x0 1\n\n\nguest read 0x0 1\n")
    ev = load(p).events
    assert ev["seq"].to_list() == [0, 1, 2]
    assert ev["src_line"].to_list() == [3, 5, 8]
    assert set(ev["src"].to_list()) == {str(p)}


def test_crlf_line_ends(tmp_path):
    ev = events(tmp_path, "@region ram 0x0 4K ram\r\nguest write 0x0 8\r\nhost read 0x0 8\r\n")
    assert ev["op"].to_list() == ["write", "read"]


def test_no_regions_means_all_memory_is_ram(tmp_path):
    ev = events(tmp_path, "guest write 0xfffffffffffff000 4K\n")
    assert ev.height == 1


# --------------------------------------------------------------------------
# MMU-on typing, per vCPU


def test_mmu_off_accesses_need_no_type(tmp_path):
    ev = events(tmp_path, "guest write 0x0 8\nguest sysreg SCTLR_EL1 0x1004\nguest read 0x0 8\n")
    assert ev.height == 3  # SCTLR.M = 0 in 0x1004


def test_mmu_on_access_without_type_is_an_error(tmp_path):
    msg, p = error(tmp_path, MMU_ON + "guest read 0x0 8 idx=0\nguest write 0x0 8\n")
    assert msg.startswith(f"{p}:4: expected attr= or idx= on write by guest.0 with its MMU on")


def test_mmu_on_ifetch_without_type_is_an_error(tmp_path):
    msg, p = error(tmp_path, MMU_ON + "guest ifetch 0x0 4\n")
    assert msg.startswith(f"{p}:3: expected attr= or idx= on ifetch")


def test_mmu_state_is_per_vcpu(tmp_path):
    # guest.0 turns its MMU on; guest.1's is still off, and a host needs no type
    ev = events(tmp_path, MMU_ON + "guest.1 write 0x0 8\nhost read 0x0 8\nguest read 0x0 8 attr=wb\n")
    assert ev.height == 5
    msg, p = error(tmp_path, "guest.1 sysreg SCTLR_EL1 0x1\nguest.0 read 0x0 8\nguest.1 read 0x0 8\n")
    assert msg.startswith(f"{p}:3: expected attr= or idx= on read by guest.1")


def test_mmu_off_again_needs_no_type(tmp_path):
    ev = events(tmp_path, MMU_ON + "guest sysreg SCTLR_EL1 0x1000\nguest read 0x0 8\n")
    assert ev.height == 4


def test_mmu_state_carries_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(tkt_mod, "CHUNK_BYTES", 64)
    body = MMU_ON + "".join("guest write 0x0 8 idx=0\n" for _ in range(20)) + "guest read 0x0 8\n"
    msg, p = error(tmp_path, body)
    assert msg.startswith(f"{p}:23: expected attr= or idx=")


def test_chunks_keep_lines_and_phases(tmp_path, monkeypatch):
    monkeypatch.setattr(tkt_mod, "CHUNK_BYTES", 50)
    text = "@phase a\n" + "".join(f"host write 0x{i:x} 8\n" for i in range(30)) + "@phase b\nhost read 0x0 8\n"
    ev = events(tmp_path, text)
    assert ev["src_line"].to_list() == list(range(2, 32)) + [33]
    assert ev["addr"].to_list()[:30] == list(range(30))
    assert ev["phase"].to_list() == ["a"] * 30 + ["b"]


# --------------------------------------------------------------------------
# Errors: FILE:LINE: expected ..., found ...

BAD = [
    # unknown directive / operation / key / agent
    ("@regoin ram 0x0 4K ram\n", 1, "expected a directive (@tracekit", "'@regoin'"),
    ("guest read 0x0 8\nguest load 0x0 8\n", 2, "expected an operation", "'load'"),
    ("guest read 0x0 8 colour=red\n", 1, "expected a key (attr=, idx=, value=, t=)", "'colour=red'"),
    ("guest read 0x0 8 attr=wb attr=nc\n", 1, "expected each key once", "attr="),
    ("guest read 0x0 8 attr=wb 5\n", 1, "expected key=value after the arguments", "'5'"),
    ("cpu0 read 0x0 8\n", 1, "expected an agent guest[.N], host[.X] or dev.NAME[.X]", "'cpu0'"),
    ("guest.x read 0x0 8\n", 1, "expected an agent", "'guest.x'"),
    ("dev read 0x0 8\n", 1, "expected an agent", "'dev'"),
    ("guest\n", 1, "expected an operation", "found end of line"),
    # undeclared device
    ("@device gpu coherent\ndev.nic write 0x0 8\n", 2, "expected a device declared with @device", "'dev.nic'"),
    # the first undeclared device access is named, whichever device is seen first
    ("@device gpu coherent\ndev.gpu read 0x0 8\ndev.gpu read 0x0 8\ndev.blk read 0x0 8\ndev.nic write 0x0 8\n"
     "dev.nic write 0x0 8\ndev.blk read 0x0 8\n", 4, "expected a device declared with @device", "'dev.blk'"),
    # arguments
    ("guest read 0x0\n", 1, "expected 'read ADDR SIZE'", "found end of line"),
    ("guest read 0x0 8 9\n", 1, "expected 'read ADDR SIZE'", "found extra '9'"),
    ("guest cmo\n", 1, "expected 'cmo OP [ADDR [SIZE]]'", "found end of line"),
    ("guest cmo dc.civac\n", 1, "expected an address after dc.civac", "found nothing"),
    ("guest cmo dc.flush 0x0\n", 1, "expected a maintenance operation", "'dc.flush'"),
    ("guest sysreg SCTLR_EL1\n", 1, "expected 'sysreg NAME VALUE'", "found end of line"),
    ("guest sysreg 1ABC 0x0\n", 1, "expected a register name", "'1ABC'"),
    ("guest sysreg SCTLR_EL1 0x0 value=1\n", 1, "expected the sysreg value as its second argument", "value="),
    ("t=1 guest read 0x0 8 t=2\n", 1, "expected each key once", "t="),
    # malformed numbers and sizes
    ("guest read 0xZZ 8\n", 1, "expected an address (decimal or 0x hex)", "'0xZZ'"),
    ("guest read -1 8\n", 1, "expected an address (decimal or 0x hex)", "'-1'"),
    ("guest read +1 8\n", 1, "expected an address (decimal or 0x hex)", "'+1'"),
    ("guest read 0x10000000000000000 8\n", 1, "expected an address below 2^64", "'0x10000000000000000'"),
    ("guest read 0x0 8k\n", 1, "expected a size (decimal or 0x hex, optional K/M/G)", "'8k'"),
    ("guest read 0x0 4KK\n", 1, "expected a size", "'4KK'"),
    ("guest read 0x0 17179869184G\n", 1, "expected a size below 2^64", "'17179869184G'"),
    ("guest write 0x0 8 value=x\n", 1, "expected a value (decimal or 0x hex)", "'x'"),
    ("host read 0x0 8 attr=uc\n", 1, "expected attr one of dev,", "'uc'"),
    ("guest read 0x0 8 idx=8\n", 1, "expected idx 0..7", "'8'"),
    ("t=soon guest read 0x0 8\n", 1, "expected a timestamp in seconds", "'soon'"),
    ("t=nan guest read 0x0 8\n", 1, "expected a timestamp in seconds", "'nan'"),
    # size zero, range past 2^64
    ("guest read 0x0 0\n", 1, "expected a size of at least 1", "found 0"),
    ("guest cmo dc.civac 0x0 0\n", 1, "expected a size of at least 1", "found 0"),
    ("guest read 0xffffffffffffffff 2\n", 1, "expected a range below 2^64", "0xffffffffffffffff + 2 bytes"),
    # regions
    ("@region ram 0x40000000 16M ram\nguest write 0x3ffffff8 8\n", 2, "expected an access inside one region",
     "0x3ffffff8 + 8 bytes"),
    ("@region a 0x0 4K ram\n@region b 0x1000 4K ram\nguest write 0xff8 16\n", 3,
     "expected an access inside one region", "0xff8 + 16 bytes"),
    ("@region ram 0x40000000 16M ram\nguest cmo dc.civac 0x0\n", 2, "expected an access inside one region", "0x0"),
    ("@region a 0x0 8K ram\n@region b 0x1000 4K ram\n", 2, "expected regions that do not overlap",
     "overlapping a"),
    ("@region a 0x0 0 ram\n", 1, "expected a region size of at least 1", "found 0"),
    ("@region a 0xfffffffffffff000 8K ram\n", 1, "expected a region below 2^64", "0xfffffffffffff000 + 8K"),
    ("@region a 0x0 4K rom\n", 1, "expected region kind ram or mmio", "'rom'"),
    ("@region a 0x0 4K ram s2=none\n", 1, "expected shared, s2=wb|wt|nc|dev", "'s2=none'"),
    ("@region a 0x0\n", 1, "expected '@region NAME BASE SIZE", "'@region a 0x0'"),
    ("@region a 0x0 4K ram\n@region a 0x2000 4K ram\n", 2, "expected a new region name", "'a'"),
    ("@region a 0xQ 4K ram\n", 1, "expected a region base (decimal or 0x hex)", "'0xQ'"),
    # other directives
    ("@tracekit 2\n", 1, "expected '@tracekit 1'", "'2'"),
    ("@line-size 48\n", 1, "expected a line size that is a power of two", "found 48"),
    ("@line-size 64\n@line-size 128\n", 2, "expected @line-size to agree with line 1", "different value"),
    ("@stage2 maybe\n", 1, "expected '@stage2 on' or '@stage2 off'", "'maybe'"),
    ("@fwb\n", 1, "expected '@fwb on' or '@fwb off'", "found nothing"),
    ("@device gpu sometimes\n", 1, "expected '@device NAME coherent|noncoherent'", "'@device gpu sometimes'"),
    ("@device gpu coherent\n@device gpu coherent\n", 2, "expected a new device name", "'gpu'"),
]


@pytest.mark.parametrize("text,line,expected,found", BAD, ids=[b[2][:40] + f"-{i}" for i, b in enumerate(BAD)])
def test_bad_input_names_file_line_expected_found(tmp_path, text, line, expected, found):
    msg, p = error(tmp_path, text)
    assert msg.startswith(f"{p}:{line}: "), msg
    assert expected in msg, msg
    assert "found" in msg and found in msg, msg


def test_first_bad_line_wins(tmp_path):
    msg, p = error(tmp_path, "guest read 0x0 8\nguest read 0x0 0\nfoo read 0x0 8\n")
    assert msg.startswith(f"{p}:2: expected a size of at least 1")


def test_non_utf8_bytes_name_the_line(tmp_path):
    msg, p = error(tmp_path, b"guest read 0x0 8\n# caf\xe9\n")
    assert msg.startswith(f"{p}:2: expected UTF-8 text, found byte 0xe9")


def test_non_utf8_in_a_directive(tmp_path):
    msg, p = error(tmp_path, b"guest read 0x0 8\n@phase caf\xe9\n")
    assert msg.startswith(f"{p}:2: expected UTF-8 text")


def test_empty_file(tmp_path):
    msg, p = error(tmp_path, "")
    assert msg.startswith(f"{p}:1: expected a scenario") and "empty file" in msg


def test_comments_only_file(tmp_path):
    msg, p = error(tmp_path, "# nothing here\n\n")
    assert msg.startswith(f"{p}:1: expected a scenario") and "only comments" in msg


def test_directives_only_file_is_an_empty_trace(tmp_path):
    tr = load(scenario(tmp_path, "@region ram 0x0 4K ram\n"))
    assert tr.events.height == 0 and tr.info.regions[0].name == "ram"


def test_directory_as_input(tmp_path):
    d = tmp_path / "dir.tkt"
    d.mkdir()
    with pytest.raises(TraceFormatError, match=r"dir\.tkt: expected a trace file, found a directory"):
        load(d)


def test_missing_file(tmp_path):
    with pytest.raises(TracekitError, match="no such file"):
        load(tmp_path / "nope.tkt")


# --------------------------------------------------------------------------
# Registry and detection


def test_registry_knows_builtin_formats():
    assert {"tkt", "csv", "jsonl"} <= set(IMPORTERS)
    assert get_importer("tkt").format == "tkt"


def test_unknown_format_lists_known_ones():
    with pytest.raises(UnknownFormatError) as e:
        get_importer("pcap")
    assert "'pcap'" in str(e.value) and "tkt" in str(e.value) and "csv" in str(e.value)


def test_detect_by_suffix_then_content(tmp_path):
    assert detect_format(scenario(tmp_path, "anything", "x.tkt")) == "tkt"
    assert detect_format(scenario(tmp_path, "# c\n@region ram 0x0 4K ram\n", "noext")) == "tkt"
    assert detect_format(scenario(tmp_path, "t=1 host.vnc read 0x0 8\n", "log.txt")) == "tkt"
    with pytest.raises(UnknownFormatError, match="--format"):
        detect_format(scenario(tmp_path, "hello world\n", "other.txt"))


# --------------------------------------------------------------------------
# The worked vectors


@pytest.mark.parametrize("path", VECTORS, ids=[Path(v).name for v in VECTORS])
def test_every_vector_loads(path):
    tr = load(path)
    text = Path(path).read_text().splitlines()
    event_lines = [i for i, l in enumerate(text, 1)
                   if l.split("#", 1)[0].strip() and not l.strip().startswith("@")]
    assert tr.events["src_line"].to_list() == event_lines


# --------------------------------------------------------------------------
# Free text


def test_barrier_and_marker_text_keeps_equals_words(tmp_path):
    ev = events(tmp_path, "guest marker boot done attr=wb t=9   # not part of it\nt=4 guest barrier dsb sy\n"
                          "guest barrier\n")
    assert ev["detail"].to_list() == ["boot done attr=wb t=9", "dsb sy", None]
    assert ev["attr"].to_list() == [None, None, None]
    assert ev["time"].to_list() == [None, 4.0, None]
