"""Damaged inputs of every format are a message, never a traceback (hypothesis).

Rule under test (README, "Bad input"): whatever an input holds, `tracekit ingest` either
imports it (exit 0) or names the file and what it expected (exit 2); an imported trace then
analyses under the whole catalog the same way. The inputs are this repository's own samples
of every format, damaged as files are: cut short, a byte changed, a digit replaced or made
too long for 64 bits, a line repeated, text inserted.

Each failure this found became a named regression test beside it (ftrace pids and vCPU
numbers beyond 64 bits, QEMU trace arguments beyond 64 bits, a trace Parquet whose metadata
says a line size of -2 or a fractional region base, or whose op column says 'rad'). The
files an input is read with (--trace-events, --mapping, --guest-map, --settings) are damaged
the same way: a mapping that is not UTF-8, or with a number beyond 64 bits, a mapping error
that did not name its file, a trace-events signature without an argument tracekit reads, a
guest map number beyond 64 bits.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tracekit.cli import app

ROOT = Path(__file__).resolve().parent.parent
#: One input per format the importers detect by themselves.
INPUTS = [ROOT / p for p in (
    "sample-traces/boot-mmu-off.tkt",
    "sample-traces/qemu/combined.log",
    "sample-traces/qemu/execlog.log",
    "tests/data/qemu/mem-plugin.csv",
    "tests/data/qemu/interleaved-order.log",
    "tests/data/qemu/kvm-72.log",
    "tests/data/ftrace/trace-cmd.txt",
    "tests/data/ftrace/perf-script.txt",
    "tests/data/ftrace/trace_pipe.txt",
    "tests/data/din/extended.din",
    "tests/data/lackey/trace.lackey",
    "tests/data/two-runs-rank-order.parquet",
    "tests/data/tabular/events.csv",
    "tests/data/tabular/events.jsonl",
)]
EXAMPLES = int(os.environ.get("TRACEKIT_FUZZ_EXAMPLES", "150"))
runner = CliRunner()


def damaged(data: bytes, how: str, at: int, text: bytes) -> bytes:
    """``data`` damaged at byte ``at`` (taken modulo its length) in one of the ways files are."""
    d = bytearray(data)
    at %= max(len(d), 1)
    digits = [i for i, c in enumerate(d) if 0x30 <= c <= 0x39]
    if how == "cut":
        return bytes(d[:at])
    if how == "byte":
        d[at] = text[0] if text else 0
    elif how == "insert":
        d[at:at] = text
    elif how == "not-a-digit" and digits:
        d[digits[at % len(digits)]] = ord("x")
    elif how == "too-long" and digits:
        i = digits[at % len(digits)]
        d[i:i] = b"99999999999999999999999"
    elif how == "repeat-line":
        lines = bytes(d).split(b"\n")
        k = at % len(lines)
        lines.insert(k, lines[k])
        return b"\n".join(lines)
    return bytes(d)


def _fails_cleanly(result) -> bool:
    return result.exit_code in (0, 2) and (result.exception is None or isinstance(result.exception, SystemExit))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.sampled_from(INPUTS),
       how=st.sampled_from(["cut", "byte", "insert", "not-a-digit", "too-long", "repeat-line"]),
       at=st.integers(0, 1 << 20),
       text=st.sampled_from([b"\xff", b"\x00", b"\n", b"-", b"0x", b",,", b"\t", b"@", b"\xc3(", b"\n\n@@ 1\n"]))
def test_a_damaged_input_is_imported_or_refused_with_a_message(tmp_path, source, how, at, text):
    path = tmp_path / source.name
    path.write_bytes(damaged(source.read_bytes(), how, at, text))
    r = runner.invoke(app, ["ingest", str(path), "-o", str(tmp_path / "t.parquet"), "-q", "--force"])
    assert _fails_cleanly(r), (how, at, text, r.output, r.exception)
    if r.exit_code == 2:
        assert r.output.startswith("tracekit: error: ") and source.name in r.output
        return
    r = runner.invoke(app, ["analyze", str(tmp_path / "t.parquet"), "-m", "all", "-q", "-o",
                            str(tmp_path / "f.parquet"), "--force"])
    assert _fails_cleanly(r), (how, at, text, r.output, r.exception)


def test_the_samples_import_undamaged(tmp_path):
    """(The damage above starts from inputs that import.)"""
    for source in INPUTS:
        r = runner.invoke(app, ["ingest", str(source), "-o", str(tmp_path / "t.parquet"), "-q", "--force"])
        assert r.exit_code == 0, (source, r.output)
    for source, fixed, option, companion in COMPANIONS:
        r = runner.invoke(app, ["ingest", str(source), *fixed, option, str(companion), "-o",
                                str(tmp_path / "t.parquet"), "-q", "--force"])
        assert r.exit_code == 0, (source, option, r.output)


#: The files an input is read with (an input of the repository's own that imports with it,
#: and the other files it needs): QEMU's trace-events signatures, a TOML mapping of further
#: QEMU events, guest maps in both forms, and a settings file for a CSV.
_TE = ("--trace-events", str(ROOT / "tests/data/qemu/trace-events-excerpt"))
COMPANIONS = [(ROOT / a, fixed, option, ROOT / b) for a, fixed, option, b in (
    ("tests/data/qemu/events-all-forms.log", (), "--trace-events", "tests/data/qemu/trace-events-excerpt"),
    ("tests/data/qemu/events-all-forms.log", _TE, "--mapping", "tests/data/qemu/mapping.toml"),
    ("tests/data/qemu/execlog-72.log", (), "--guest-map", "tests/data/qemu/identity-map.txt"),
    ("tests/data/qemu/execlog-72.log", (), "--guest-map", "tests/data/qemu/guest-map.toml"),
    ("sample-traces/qemu/execlog.log", (), "--guest-map", "sample-traces/qemu/guest-map.txt"),
    ("tests/data/tabular/events.csv", (), "--settings", "sample-traces/qemu/settings.tkt"),
)]


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=st.sampled_from(COMPANIONS),
       how=st.sampled_from(["cut", "byte", "insert", "not-a-digit", "too-long", "repeat-line"]),
       at=st.integers(0, 1 << 20),
       text=st.sampled_from([b"\xff", b"\x00", b"\n", b"-", b"0x", b"=", b"[", b'"', b"\t", b"\xc3(", b"(int x"]))
def test_a_damaged_companion_file_is_used_or_refused_with_a_message(tmp_path, pair, how, at, text):
    """The same rule for the files an input is read with (--trace-events, --mapping,
    --guest-map, --settings): a damaged one is refused naming it, or the input imports."""
    source, fixed, option, companion = pair
    path = tmp_path / companion.name
    path.write_bytes(damaged(companion.read_bytes(), how, at, text))
    r = runner.invoke(app, ["ingest", str(source), *fixed, option, str(path), "-o", str(tmp_path / "t.parquet"),
                            "-q", "--force"])
    assert _fails_cleanly(r), (option, how, at, text, r.output, r.exception)
    if r.exit_code == 2:
        assert r.output.startswith("tracekit: error: ") and (companion.name in r.output or source.name in r.output)


@pytest.mark.parametrize("source, line, pattern", [
    ("tests/data/ftrace/trace-cmd.txt", 2, "expected a pid (a number below 2^63)"),
    ("tests/data/qemu/interleaved-order.log", 2, "arguments whose numbers fit in 64 bits"),
])
def test_regression_numbers_beyond_64_bits_are_named(tmp_path, source, line, pattern):
    """Regression: a pid, or a QEMU trace argument, longer than 64 bits became a polars cast error
    (ftrace) or a null compared with None (QEMU's memory_region_ops_write) and a traceback."""
    lines = (ROOT / source).read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1].replace(b"48215", b"99999999999999999999948215", 1).replace(
        b"0x9000000", b"0x90000999999999999999999999900", 1)
    path = tmp_path / Path(source).name
    path.write_bytes(b"\n".join(lines))
    r = runner.invoke(app, ["ingest", str(path), "-o", str(tmp_path / "t.parquet"), "-q"])
    assert r.exit_code == 2 and f"{path}:{line}: " in r.output and pattern in r.output, r.output


def test_regression_a_carriage_return_inside_a_csv_line_is_named(tmp_path):
    """Regression: a lone carriage return in a CSV row (or its header) made Python's csv module
    raise while the importer looked for the line pyarrow refused: a traceback, not the line."""
    text = (ROOT / "tests/data/tabular/events.csv").read_text()
    path = tmp_path / "t.csv"
    for line, damaged_text, said in ((2, text.replace("guest,sysreg,", "guest,sysreg\r,", 1),
                                      "expected 12 comma-separated fields, found a carriage return"),
                                     (1, text.replace("sysreg,", "sysreg\r,", 1),
                                      "expected a CSV header of trace-v1 column names, found a carriage return")):
        path.write_bytes(damaged_text.encode())
        r = runner.invoke(app, ["ingest", str(path), "-o", str(tmp_path / "t.parquet")])
        assert r.exit_code == 2 and f"{path}:{line}: {said}" in r.output, r.output


@pytest.mark.parametrize("key, value, said", [
    ("line_size", -2, "a line size that is a power of two between 4 and 4096 in its metadata, found -2"),
    ("regions", [{"name": "r0"}], "expected the trace settings (line size, regions, devices) in its metadata"),
    ("regions", [{"name": "r0", "base": 10.37, "size": 128}], "expected regions of NAME, BASE, SIZE"),
])
def test_regression_a_trace_whose_metadata_was_edited_is_refused(tmp_path, key, value, said):
    """Regression: a trace Parquet whose metadata said a line size of -2 was ingested and analysed
    until polars failed to cast sizes; a region without its fields raised TypeError; a region
    at a fractional base failed to print in hex."""
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(ROOT / "tests/data/two-runs-rank-order.parquet")
    meta = {**json.loads(table.schema.metadata[b"tracekit"]), key: value}
    bad = tmp_path / "t.parquet"
    pq.write_table(table.replace_schema_metadata({b"tracekit": json.dumps(meta).encode()}), bad)
    for args in (["ingest", str(bad), "-o", str(tmp_path / "o.parquet")], ["analyze", str(bad)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and str(bad) in r.output and said in r.output, (args, r.output)


def test_regression_a_trace_with_a_word_outside_its_vocabulary_is_refused(tmp_path):
    """Regression: a trace Parquet whose op column said 'rad' was ingested as it was, and analyze
    died casting it to the op Enum; ingest names the row, analyze the column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(ROOT / "tests/data/two-runs-rank-order.parquet")
    ops = table.column("op").to_pylist()
    ops[3] = "rad"
    bad = tmp_path / "t.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("op"), "op", pa.array(ops)), bad)
    r = runner.invoke(app, ["ingest", str(bad), "-o", str(tmp_path / "o.parquet")])
    assert r.exit_code == 2 and f"{bad}: row 3: expected op one of read, write" in r.output and "'rad'" in r.output
    r = runner.invoke(app, ["analyze", str(bad)])
    assert r.exit_code == 2 and str(bad) in r.output and "column 'op'" in r.output, r.output


def _ingest_with(tmp_path, source: str, *args: str):
    return runner.invoke(app, ["ingest", str(ROOT / source), *args, "-o", str(tmp_path / "t.parquet"), "-q",
                               "--force"])


def test_regression_a_mapping_that_is_not_utf8_is_named(tmp_path):
    """Regression: a --mapping file with a byte that is not UTF-8 raised UnicodeDecodeError."""
    bad = tmp_path / "m.toml"
    bad.write_bytes(b"# \xff\n[events.virtio_balloon_handle_output]\nop = \"marker\"\n")
    r = _ingest_with(tmp_path, "tests/data/qemu/events-all-forms.log", *_TE, "--mapping", str(bad))
    assert r.exit_code == 2 and f"{bad}:1: expected UTF-8 text, found byte 0xff" in r.output, r.output


def test_regression_a_mapping_naming_no_argument_of_its_event_names_its_file(tmp_path):
    """Regression: 'mapping of EVENT: names argument ...' did not say which file."""
    bad = tmp_path / "m.toml"
    bad.write_text((ROOT / "tests/data/qemu/mapping.toml").read_text().replace('addr = "gpa"', 'addr = "-pa"'))
    r = _ingest_with(tmp_path, "tests/data/qemu/events-all-forms.log", *_TE, "--mapping", str(bad))
    assert r.exit_code == 2 and f"{bad}: [events.virtio_balloon_handle_output]: names argument '-pa'" in r.output


@pytest.mark.parametrize("size", ["99999999999999999999994096", "-1", "4.5", "[1]"])
def test_regression_a_mapping_number_beyond_64_bits_is_refused(tmp_path, size):
    """Regression: size = 99999999999999999999994096 in a --mapping file failed a cast to u64."""
    bad = tmp_path / "m.toml"
    bad.write_text((ROOT / "tests/data/qemu/mapping.toml").read_text().replace("size = 4096", f"size = {size}"))
    r = _ingest_with(tmp_path, "tests/data/qemu/events-all-forms.log", *_TE, "--mapping", str(bad))
    assert r.exit_code == 2 and f"{bad}: [events.virtio_balloon_handle_output]: expected size an argument name " \
        "or a number from 0 to 2**64 - 1" in r.output, r.output


def test_regression_trace_events_without_an_argument_tracekit_reads_are_named(tmp_path):
    """Regression: a trace-events signature of memory_region_ops_read without its addr argument
    (a damaged file) ended in polars' ColumnNotFoundError."""
    te = tmp_path / "trace-events"
    te.write_text((ROOT / "tests/data/qemu/trace-events-excerpt").read_text()
                  .replace("uint64_t addr, uint64_t value, unsigned size, const char *name) \"cpu %d mr %p addr",
                           "uint64_t adr, uint64_t value, unsigned size, const char *name) \"cpu %d mr %p addr", 1))
    r = _ingest_with(tmp_path, "tests/data/qemu/events-all-forms.log", "--trace-events", str(te))
    assert r.exit_code == 2 and f"{te}:5: expected memory_region_ops_read with the arguments addr, cpu_index, " \
        "name, size, value, found cpu_index, mr, adr, value, size, name" in r.output, r.output


@pytest.mark.parametrize("name, text, where", [
    ("map.txt", "0x40000000 16M idx=1 va=0x99999999999999999999999\n", ":1: expected va"),
    ("map.toml", "[[range]]\nbase = -16\nsize = 64\nidx = 1\n", ": range #1: expected base"),
])
def test_regression_a_guest_map_number_outside_64_bits_is_refused(tmp_path, name, text, where):
    """Regression: va= beyond 64 bits in a guest map failed building a UInt64 column (and a
    negative TOML base passed the range check)."""
    gm = tmp_path / name
    gm.write_text(text)
    r = _ingest_with(tmp_path, "tests/data/qemu/execlog-72.log", "--guest-map", str(gm))
    assert r.exit_code == 2 and f"{gm}{where} from 0 to 2**64 - 1" in r.output, r.output
