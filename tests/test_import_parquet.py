"""A trace Parquet written by tracekit is itself an input of `tracekit ingest`: re-cut with other
settings, or merged with another recording, without going back to the raw log."""

from __future__ import annotations

import shutil

import polars as pl
import pytest
from typer.testing import CliRunner

from tracekit.cli import app
from tracekit.importers import detect_format
from tracekit.schema import read_trace_info

runner = CliRunner()


def ingest(*args):
    return runner.invoke(app, ["ingest", *map(str, args), "-q"])


@pytest.fixture
def guest_trace(tmp_path):
    """Guest events with timestamps 1, 3, 5 (from a CSV), ingested to a trace Parquet."""
    csv = tmp_path / "guest.csv"
    csv.write_text("time,agent,op,addr,size\n1.0,guest.0,write,0x1000,8\n3.0,guest.0,read,0x1000,8\n"
                   "5.0,guest.0,write,0x2000,4\n")
    out = tmp_path / "guest.parquet"
    assert ingest(csv, "-o", out).exit_code == 0
    return csv, out


def test_a_trace_reingested_gives_the_same_events_and_settings(guest_trace, tmp_path):
    csv, trace = guest_trace
    again = tmp_path / "again.parquet"
    res = ingest(trace, "-o", again)
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(again).equals(pl.read_parquet(trace))
    assert read_trace_info(again).replace(inputs=()) == read_trace_info(trace).replace(inputs=())
    # provenance: the events still point at the CSV lines they came from, not at the Parquet file
    assert pl.read_parquet(again)["src"].unique().to_list() == [str(csv)]
    assert pl.read_parquet(again)["src_line"].to_list() == [2, 3, 4]


def test_command_options_re_cut_the_settings(guest_trace, tmp_path):
    _, trace = guest_trace
    out = tmp_path / "cut.parquet"
    assert ingest(trace, "-o", out, "--line-size", "128", "--no-stage2").exit_code == 0
    info = read_trace_info(out)
    assert info.line_size == 128 and info.stage2 is False


def test_a_trace_merges_with_another_input_by_time(guest_trace, tmp_path):
    _, trace = guest_trace
    host = tmp_path / "host.csv"
    host.write_text("time,agent,op,addr,size\n2.0,host.vnc,read,0x1000,8\n4.0,host.vnc,write,0x2000,4\n")
    out = tmp_path / "merged.parquet"
    res = ingest(trace, host, "-o", out)
    assert res.exit_code == 0, res.output
    df = pl.read_parquet(out)
    assert df["time"].to_list() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert df["agent"].to_list() == ["guest.0", "host.vnc", "guest.0", "host.vnc", "guest.0"]
    assert df["seq"].to_list() == [0, 1, 2, 3, 4]


def test_detected_by_content_whatever_its_name(guest_trace, tmp_path):
    _, trace = guest_trace
    odd = tmp_path / "trace.bin"
    shutil.copy(trace, odd)
    assert detect_format(odd) == "parquet"


def test_a_parquet_that_is_not_a_trace_is_a_clear_error(tmp_path):
    other = tmp_path / "other.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(other)
    res = ingest(other, "-o", tmp_path / "out.parquet")
    assert res.exit_code == 2 and "other.parquet" in res.output and "tracekit" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "out.parquet").exists()
