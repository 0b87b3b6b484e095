"""Damaged inputs of every format are a message, never a traceback (hypothesis).

Rule under test (README, "Bad input"): whatever an input holds, `tracekit ingest` either
imports it (exit 0) or names the file and what it expected (exit 2); an imported trace then
analyses under the whole catalog the same way. The inputs are this repository's own samples
of every format, damaged as files are: cut short, a byte changed, a digit replaced or made
too long for 64 bits, a line repeated, text inserted.

Each failure this found became a named regression test beside it (ftrace pids and vCPU
numbers beyond 64 bits, QEMU trace arguments beyond 64 bits, a trace Parquet whose metadata
says a line size of -2 or a fractional region base, or whose op column says 'rad').
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
