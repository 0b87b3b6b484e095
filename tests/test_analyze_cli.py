"""`tracekit analyze` as a user runs it: outputs, exit codes, messages, metadata."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
import pyarrow.parquet as pq
from typer.testing import CliRunner

from tracekit.cli import app
from tracekit.schema import polars_schema, validate_arrow

ROOT = Path(__file__).resolve().parents[1]
BOOT = ROOT / "sample-traces" / "boot-mmu-off.tkt"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_findings_file_has_the_documented_columns_and_metadata(tmp_path):
    out = tmp_path / "f.parquet"
    r = run("analyze", BOOT, "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    f = pl.read_parquet(out)
    validate_arrow(pq.read_table(out), "findings-v1", where=str(out))
    assert dict(f.schema) == polars_schema("findings-v1")
    assert set(f["mitigation"]) == {"none"} and f.height == 2
    meta = json.loads(pq.read_metadata(out).metadata[b"tracekit"])
    assert meta["trace_sha256"] == hashlib.sha256(BOOT.read_bytes()).hexdigest()
    assert meta["line_size"] == 64 and meta["speculation"] == "architectural"
    assert meta["mitigations"] == ["none"] and meta["schema"] == "tracekit-findings"


def test_summary_names_counts_and_explains_the_first_findings():
    r = run("analyze", BOOT, "-m", "none", "-m", "guest-boot-inval")
    assert r.exit_code == 0, r.output
    assert "guest-boot-inval  fixes 1, introduces 0" in r.stdout
    assert "stale-line-not-invalidated=2" in r.stdout
    read_line = next(i for i, t in enumerate(BOOT.read_text().splitlines(), 1) if t.startswith("guest read   0x40080000"))
    assert "Fix: invalidate" in r.stdout and f"boot-mmu-off.tkt:{read_line}" in r.stdout


def test_all_expands_to_the_catalog_in_order(tmp_path):
    from tracekit.mitigations import expand

    out = tmp_path / "f.parquet"
    assert run("analyze", BOOT, "-m", "all", "-o", out, "-q").exit_code == 0
    meta = json.loads(pq.read_metadata(out).metadata[b"tracekit"])
    assert meta["mitigations"] == expand("all") and meta["mitigations"][0] == "none"
    assert len(meta["mitigations"]) == 10 and set(meta["costs"]) == set(meta["mitigations"])


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "f.parquet"
    out.write_text("keep me")
    r = run("analyze", BOOT, "-o", out, "-q")
    assert r.exit_code == 2
    assert f"{out}: output exists; use --force" in r.stderr
    assert out.read_text() == "keep me"
    assert run("analyze", BOOT, "-o", out, "-q", "--force").exit_code == 0


def test_fail_on_exit_codes():
    assert run("analyze", BOOT, "-m", "guest-boot-inval", "--fail-on", "stale-read", "-q").exit_code == 1
    assert run("analyze", BOOT, "-m", "s2fwb", "--fail-on", "stale-read,lost-write", "-q").exit_code == 0
    assert run("analyze", BOOT, "-m", "guest-boot-inval", "--fail-on", "lost-write", "-q").exit_code == 0
    bad = run("analyze", BOOT, "--fail-on", "stale", "-q")
    assert bad.exit_code == 2 and "--fail-on" in bad.stderr and "Traceback" not in bad.output


def test_bad_input_is_a_message_with_file_and_line_and_no_output(tmp_path):
    src = tmp_path / "bad.tkt"
    src.write_text("@region ram 0x40000000 16M ram\nguest write 0x40000000 0\n")
    out = tmp_path / "f.parquet"
    r = run("analyze", src, "-o", out)
    assert r.exit_code == 2
    assert f"{src}:2:" in r.stderr and "Traceback" not in r.output
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_unknown_mitigation_lists_the_known_ones():
    r = run("analyze", BOOT, "-m", "flush-everything")
    assert r.exit_code == 2 and "flush-everything" in r.stderr and "guest-boot-inval" in r.stderr


def test_emit_trace_shows_what_the_mitigation_inserted(tmp_path):
    out = tmp_path / "t.parquet"
    assert run("analyze", BOOT, "-m", "guest-boot-inval", "--emit-trace", out, "-q").exit_code == 0
    validate_arrow(pq.read_table(out), "trace-v1", where=str(out))
    t = pl.read_parquet(out)
    inserted = t.filter(pl.col("sub") != 0)
    # invalidations of exactly the lines the vCPU wrote with its MMU off, just before its SCTLR write that sets M
    sctlr_on = t.filter((pl.col("sysreg") == "SCTLR_EL1") & (pl.col("value") == 0x1005))["seq"].item()
    assert inserted["agent"].unique().to_list() == ["guest.0/guest-boot-inval"]
    assert set(inserted["cmo"]) == {"dc.ivac"}
    assert set(inserted["seq"]) == {sctlr_on} and (inserted["sub"] < 0).all()
    covered = {line for a, n in inserted.select("addr", "size").rows() for line in range(a // 64, (a + n - 1) // 64 + 1)}
    assert covered == {0x40080000 // 64, 0x40080040 // 64, 0x40080080 // 64}


def test_reference_and_fast_engines_write_the_same_findings(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    for engine, out in (("reference", a), ("fast", b)):
        assert run("analyze", BOOT, "-m", "all", "--engine", engine, "-o", out, "-q").exit_code == 0
    assert pl.read_parquet(a).equals(pl.read_parquet(b))


def test_analyze_a_trace_parquet_written_by_ingest(tmp_path):
    trace = tmp_path / "t.parquet"
    assert run("ingest", BOOT, "-o", trace, "--quiet").exit_code == 0
    out = tmp_path / "f.parquet"
    assert run("analyze", trace, "-o", out, "-q").exit_code == 0
    assert pl.read_parquet(out).height == 2


def test_report_written_in_the_same_run(tmp_path):
    rep = tmp_path / "r.md"
    assert run("analyze", BOOT, "-m", "none", "--report", rep, "-q").exit_code == 0
    text = rep.read_text()
    assert "| " in text and "stale-line-not-invalidated" in text


def test_memory_budget_replays_a_big_trace_by_parts_with_the_same_findings(tmp_path, monkeypatch):
    import tracekit.partition as partition

    calls = []
    original = partition.replay_partitioned

    def recording(*args, **kwargs):
        calls.append(original(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(partition, "replay_partitioned", recording)
    # 400k events need ~740 MB by the whole-trace estimate: a 420M budget forces parts
    trace = tmp_path / "t.parquet"
    assert run("synth", "--events", "400000", "--seed", "3", "--profile", "mixed", "-o", trace).exit_code == 0
    whole, parts = tmp_path / "whole.parquet", tmp_path / "parts.parquet"
    assert run("analyze", trace, "-m", "none", "-m", "guest-dma-cmo", "-o", whole, "-q").exit_code == 0
    r = run("analyze", trace, "-m", "none", "-m", "guest-dma-cmo", "-o", parts, "--memory-budget", "420M", "-q")
    assert r.exit_code == 0, r.output
    assert len(calls) == 1 and calls[0]["partition"]["parts"] > 1
    assert pl.read_parquet(parts).equals(pl.read_parquet(whole))


def test_a_budget_for_the_trace_but_not_the_catalogs_findings_writes_them_as_they_come(tmp_path, monkeypatch):
    """Between the estimates (partition.memory_plan) the trace is replayed whole, two mitigations
    at a time (one, with less room), each one's findings written and let go, then read back for
    the summary: the same file and the same summary as a run with room for everything (on 10 M
    events: 24-28 s at 5.3-5.6 GiB, 27-30 s at 4.8-4.9 GiB, where partitioning took 80 s)."""
    import importlib

    import tracekit.partition as partition

    analysis_module = importlib.import_module("tracekit.analyze")
    kept, at_once = [], []
    original = analysis_module.analyze

    def recording(*args, **kwargs):
        kept.append(kwargs.get("keep_findings", True))
        at_once.append(kwargs.get("replays"))
        return original(*args, **kwargs)

    monkeypatch.setattr(analysis_module, "analyze", recording)
    monkeypatch.setattr(partition, "replay_partitioned", None)  # not by parts: calling it fails
    trace = tmp_path / "t.parquet"
    assert run("synth", "--events", "20000", "--seed", "5", "--profile", "mixed", "-o", trace).exit_code == 0
    specs = analysis_module.expand_mitigations(["all"])
    # (a second replay's fixed cost set aside: it outweighs the findings of 20k events' catalog)
    monkeypatch.setattr(partition, "ON_DISK_SECOND_REPLAY_BYTES", 0)
    low = partition.estimated_bytes(20000, specs, findings_kept=False)
    high = partition.estimated_bytes(20000, specs)
    whole, on_disk = tmp_path / "whole.parquet", tmp_path / "on-disk.parquet"
    a = run("analyze", trace, "-m", "all", "-o", whole, "--memory-budget", "100G")
    b = run("analyze", trace, "-m", "all", "-o", on_disk, "--memory-budget", str((low + high) // 2))
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    assert kept == [True, False]
    assert pl.read_parquet(on_disk).equals(pl.read_parquet(whole))
    assert pq.read_metadata(on_disk).metadata == pq.read_metadata(whole).metadata
    assert b.output == a.output and "against none" in b.output
    # without -o the findings go through a temporary file: same summary
    c = run("analyze", trace, "-m", "all", "--memory-budget", str((low + high) // 2))
    assert c.exit_code == 0 and c.output == a.output and kept[-1] is False
    # less room: one mitigation replayed at a time (findings-on-disk-serial), the same file
    serial = tmp_path / "serial.parquet"
    d = run("analyze", trace, "-m", "all", "-o", serial, "--memory-budget", str(low - 1))
    assert d.exit_code == 0 and d.output == a.output
    assert kept == [True, False, False, False] and at_once == [None, None, None, 1]
    assert pl.read_parquet(serial).equals(pl.read_parquet(whole))
    # with -q, no report and no --fail-on nothing needs the findings: they are not read back
    reads = []
    real_read = analysis_module._read_findings
    monkeypatch.setattr(analysis_module, "_read_findings", lambda path: (reads.append(path), real_read(path))[1])
    quiet = tmp_path / "quiet.parquet"
    e = run("analyze", trace, "-m", "all", "-q", "-o", quiet, "--memory-budget", str((low + high) // 2))
    assert e.exit_code == 0 and e.output == "" and reads == []
    assert pl.read_parquet(quiet).equals(pl.read_parquet(whole))
    # the summary and --fail-on use figures tallied as the findings were made: still no read
    f = run("analyze", trace, "-m", "all", "-o", tmp_path / "loud.parquet", "--memory-budget", str((low + high) // 2))
    assert f.exit_code == 0 and f.output == a.output and reads == []
    g = run("analyze", trace, "-m", "all", "-q", "--fail-on", "lost-write", "--memory-budget", str((low + high) // 2))
    assert g.exit_code == 1 and reads == [] and "lost-write under none" in g.stderr
    # a report needs the rows: read once
    h = run("analyze", trace, "-m", "all", "-q", "--report", tmp_path / "r.md", "--memory-budget", str((low + high) // 2))
    assert h.exit_code == 0 and len(reads) == 1 and (tmp_path / "r.md").read_text().startswith("#")


def test_budgeted_run_does_not_read_its_findings_back_for_a_summary_or_a_gate(tmp_path, monkeypatch):
    """Regression: a partitioned run read the whole findings file back into memory at the end,
    first even with -q and nothing to report (100 M events at --memory-budget 1G peaked at
    3.1 GB there), then for its summary or --fail-on (10 M events at 1G: 1.32 GB). The summary
    and the gate now use figures tallied part by part; only a report reads the findings."""
    import importlib

    analysis_module = importlib.import_module("tracekit.analyze")  # the package's analyze is the function
    reads = []
    original = analysis_module._read_findings
    monkeypatch.setattr(analysis_module, "_read_findings", lambda path: reads.append(path) or original(path))
    trace = tmp_path / "t.parquet"
    assert run("synth", "--events", "400000", "--seed", "3", "--profile", "mixed", "-o", trace).exit_code == 0
    out = tmp_path / "f.parquet"
    assert run("analyze", trace, "-o", out, "--memory-budget", "420M", "-q").exit_code == 0
    assert reads == [] and pl.read_parquet(out).height > 0
    r = run("analyze", trace, "-o", out, "--memory-budget", "420M", "--force", "--fail-on",
            "stale-read,lost-write,stale-ifetch")
    assert r.exit_code == 1 and reads == []  # the trace has findings: the gate fails, from the tallied counts
    whole = run("analyze", trace, "--fail-on", "stale-read,lost-write,stale-ifetch")  # in memory, read whole
    assert r.stdout == whole.stdout and "first findings under none" in r.stdout  # the same summary
    assert r.stderr == whole.stderr and "findings of the kinds named by --fail-on remain" in r.stderr
    assert run("analyze", trace, "-o", out, "--memory-budget", "420M", "-q", "--force",
               "--report", tmp_path / "r.txt").exit_code == 0
    assert reads == [out]  # a report reads them


def test_report_format_comes_from_the_suffix_or_is_asked_for(tmp_path):
    assert run("analyze", BOOT, "--report", tmp_path / "r.json", "-q").exit_code == 0
    assert json.loads((tmp_path / "r.json").read_text())
    r = run("analyze", BOOT, "--report", tmp_path / "r.xyz", "-q")
    assert r.exit_code == 2 and "r.xyz: cannot tell the report format" in r.stderr
    assert not (tmp_path / "r.xyz").exists()


def test_a_missing_or_broken_parquet_is_a_message_not_a_traceback(tmp_path):
    """Regression: the memory-budget check opened a missing .parquet before anything else and
    raised FileNotFoundError out of the CLI."""
    missing = run("analyze", tmp_path / "gone.parquet", "-m", "none")
    assert missing.exit_code == 2
    assert "gone.parquet" in missing.output and "no such file" in missing.output
    assert not isinstance(missing.exception, FileNotFoundError)
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet\n")
    res = run("analyze", broken, "-m", "none")
    assert res.exit_code == 2 and "broken.parquet" in res.output
    assert "Traceback" not in res.output


def test_a_trace_damaged_inside_is_a_message_not_a_traceback(tmp_path):
    """Regression: a trace Parquet whose footer is sound but whose first data page header is not
    (a disk error, a truncated copy patched up) raised polars' ComputeError out of the CLI; it is
    now a message naming the file, exit 2, and no output; part by part, the same error."""
    from tracekit.errors import TraceFormatError
    from tracekit.partition import replay_partitioned

    trace = tmp_path / "t.parquet"
    assert run("ingest", BOOT, "-o", trace, "-q").exit_code == 0
    page = pq.ParquetFile(trace).metadata.row_group(0).column(0).data_page_offset
    data = bytearray(trace.read_bytes())
    data[page:page + 8] = b"\xff" * 8
    trace.write_bytes(bytes(data))
    res = run("analyze", trace, "-m", "all", "-o", tmp_path / "f.parquet", "-q")
    assert res.exit_code == 2, res.output
    said = f"{trace}: expected a trace Parquet written by tracekit, found a damaged file"
    assert said in res.output
    assert not (tmp_path / "f.parquet").exists()
    with pytest.raises(TraceFormatError, match="found a damaged file"):
        replay_partitioned(trace, tmp_path / "p.parquet", ["none"], parts=2)
    assert not (tmp_path / "p.parquet").exists()
