"""Reports from hand-made findings: content, layout rules, determinism, CLI, gating.

The findings and their expected counts and ranges come from the story in
``reports_support`` (worked out there from the coherence model), not from the
output under test.
"""

from __future__ import annotations

import json
import re
import stat
import sys

import polars as pl
import pytest
from typer.testing import CliRunner

import reports_support as rs
from tracekit.cli import app
from tracekit.errors import OutputExistsError, TracekitError, UsageError
from tracekit.model import Device, Region, TraceInfo
from tracekit.reports import REPORT_FORMATS, gate, gate_message, render, write_report
from tracekit.reports.html import analysis_html
from tracekit.schema import write_table

TEXT_FORMATS = ("text", "markdown", "json")

# Counts per mitigation in the story: none has H1 on 4 lines (seq 7), H2 on 2 + 64 + 1 lines
# (seq 4, 5, 9), the H3 lost write (seq 8) and the H3 stale read (seq 9).
NONE_ROW = {"read/H1": 4, "read/H2": 67, "read/H3": 1, "write/H3": 1, "total": 73}
GBI_ROW = {"read/H1": 4, "read/H2": 1, "read/H3": 1, "write/H3": 1, "total": 7}


@pytest.fixture
def analysis():
    return rs.analysis()


# --------------------------------------------------------------------------
# text


def matrix_rows(text: str) -> dict[str, dict[str, int]]:
    lines = text.splitlines()
    start = lines.index("Findings per mitigation") + 2
    head = lines[start].split()
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        name, *nums = line.split()
        rows[name] = dict(zip(head[1:], map(int, nums)))
    return rows


@pytest.mark.parametrize("with_trace", [False, True])
def test_text_is_ascii_and_at_most_78_columns(analysis, with_trace):
    text = render(analysis, "text", trace=rs.trace_events() if with_trace else None)
    assert text.isascii()
    assert max(len(line) for line in text.splitlines()) <= 78
    assert "\x1b" not in text  # no colour unless asked


def test_text_stays_within_78_columns_with_long_names_and_non_ascii(analysis):
    long_m = "kvm-cache-toggle+guest-boot-inval+host-cmo+guest-dma-cmo+coherent-device"
    df = analysis.findings.with_columns(
        mitigation=pl.when(pl.col("mitigation") == "none").then(pl.lit(long_m)).otherwise("mitigation"),
        src=pl.lit("/very/long/path/to/a/trace/directory/with/a/long/file-name-for-the-boot-trace-é.tkt"))
    a = rs.FakeAnalysis(df, {}, {**analysis.meta, "mitigations": [long_m, "guest-boot-inval"]})
    text = render(a, "text")
    assert text.isascii()
    assert max(len(line) for line in text.splitlines()) <= 78
    assert long_m in text.replace("\n", "")


def test_text_header_names_the_provenance_the_model_requires(analysis):
    text = render(analysis, "text")
    head = text.split("Findings per mitigation")[0]
    for expected in ("trace:       boot.parquet", f"sha256:      {rs.TRACE_SHA}", "tracekit:    0.1.0",
                     "line size:   64 bytes", "speculation: architectural", "engine:      fast"):
        assert expected in head


def test_text_matrix_counts_match_the_story(analysis):
    rows = matrix_rows(render(analysis, "text"))
    assert rows["none"] == NONE_ROW
    assert rows["guest-boot-inval"] == GBI_ROW
    assert rows["demo-fix"] == dict.fromkeys(NONE_ROW, 0)  # a mitigation with no findings still has its row


def test_text_ranges_show_events_and_why_in_the_models_words(analysis):
    text = render(analysis, "text", trace=rs.trace_events())
    none = text.split("Under none:")[1].split("Under guest-boot-inval:")[0]
    assert "73 findings, 5 ranges needing maintenance" in none
    flat = " ".join(none.split())
    # range 1: the host's 2-line read after the guest's MMU-off write
    assert "[1] invalidate 0x40001000+128 (2 lines) in ram" in flat
    assert "seq 1 guest.0 write 0x40001000+4096 (boot.tkt:4)" in flat
    assert "seq 4 host.0 read 0x40001000+128 (boot.tkt:7)" in flat
    assert ("guest.0 wrote 0x40001000+4096 with its MMU off (Device-nGnRnE, to memory) while the line is mapped "
            "cacheable, so the cache may hold a stale copy of it, which host.0's read at seq 4 may return; "
            "invalidate (DC IVAC, or DC CIVAC) 0x40001000+128 (2 lines) by host.0 after seq 1 and before seq 4."
            ) in flat
    # H1: a non-coherent device read of the guest's dirty lines needs a clean by the guest
    assert ("dev.gpu read 0x48000000+256 (non-coherent DMA, from memory) while guest.0's write at seq 6 "
            "(Normal Write-Back, through the cache) may still sit dirty in the cache; clean (DC CVAC) "
            "0x48000000+256 (4 lines) by guest.0 after seq 6 and before seq 7.") in flat
    assert "put the older bytes back over the new ones" in flat  # H3
    assert "No maintenance needed" in text.split("Under demo-fix:")[1]


def test_text_without_trace_describes_events_from_the_findings(analysis):
    flat = " ".join(render(analysis, "text").split())
    assert "seq 7 dev.gpu read 0x48000000+256 (boot.tkt:11)" in flat  # agent, op from kind, bytes, src:line
    assert "seq 6 guest.0 write" in flat  # other event: only its agent is known
    assert "give the trace (--trace)" in flat


def test_text_colour_only_when_asked(analysis):
    assert "\x1b[1m" in render(analysis, "text", color=True)
    assert "\x1b" not in render(analysis, "markdown") + render(analysis, "json")


def test_text_caps_ranges_per_mitigation_and_says_how_many_more():
    rows = [rs._rows("none", seq=1000 + i, agent="host.0", kind="stale-read", cause="stale-line-not-invalidated",
                     lines=[0x40000000 + 128 * i], addr_size=lambda line: (line, 8), other_seq=i, other_agent="guest.0",
                     fix_op="invalidate", fix_agent="host.0", after=i, before=1000 + i, region="ram", phase=None,
                     src_line=i + 1)[0] for i in range(60)]
    a = rs.FakeAnalysis(pl.DataFrame(rows), {}, {"mitigations": ["none"], "line_size": 64})
    text = render(a, "text")
    assert "[50]" in text and "[51]" not in text
    assert "... and 10 more ranges under none (the json report lists them all)." in " ".join(text.split())
    assert len(json.loads(render(a, "json"))["ranges"]) == 60


# --------------------------------------------------------------------------
# markdown and json


def md_tables(md: str) -> list[list[str]]:
    tables, cur = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    return tables + ([cur] if cur else [])


def test_markdown_tables_are_well_formed(analysis):
    md = render(analysis, "markdown", trace=rs.trace_events())
    tables = md_tables(md)
    assert len(tables) == 2 + 1 + 2  # header, matrix, costs, and ranges under none and guest-boot-inval
    for t in tables:
        n = len(re.split(r"(?<!\\)\|", t[0]))
        assert re.fullmatch(r"\|(:?---:?\|)+", t[1]), t[1]
        assert all(len(re.split(r"(?<!\\)\|", row)) == n for row in t), t
        assert all(row.endswith("|") for row in t)


def test_markdown_matrix_and_ranges(analysis):
    md = render(analysis, "markdown")
    assert "| `none` | 4 | 67 | 1 | 1 | **73** |" in md
    assert "| `demo-fix` | 0 | 0 | 0 | 0 | **0** |" in md
    assert "### Under `none`: 73 findings, 5 ranges needing maintenance" in md
    assert "| 2 | invalidate | `0x40001000+4096` | 64 | ram | guest.0 | 1 | 5 |" in md


def test_json_carries_matrix_costs_ranges_and_meta(analysis):
    doc = json.loads(render(analysis, "json"))
    assert doc["schema"] == "tracekit-report" and doc["version"] == 1
    assert doc["meta"]["trace_sha256"] == rs.TRACE_SHA and doc["meta"]["speculation"] == "architectural"
    assert doc["meta"]["mitigations"] == rs.MITIGATIONS
    totals = {m["mitigation"]: m["total"] for m in doc["matrix"]}
    assert totals == {"none": 73, "guest-boot-inval": 7, "demo-fix": 0}
    assert doc["costs"]["demo-fix"]["traps"] == {"MAIR_EL1": 2}
    assert doc["costs"]["demo-fix"]["retyped"] == [{"from": "nc", "to": "wb", "count": 5}]
    assert doc["range_counts"] == {"none": 5, "guest-boot-inval": 3, "demo-fix": 0}
    r2 = doc["ranges"][1]
    assert (r2["mitigation"], r2["start"], r2["end"], r2["lines"], r2["fix_agent"]) == (
        "none", rs.RAM, rs.RAM + 4096, 64, "guest.0")
    assert r2["why"].endswith("by guest.0 after seq 1 and before seq 5.")


# --------------------------------------------------------------------------
# determinism


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_same_findings_give_byte_identical_reports(analysis, fmt):
    """Rule: a report is a function of the findings, not of their row order or of the run."""
    first = render(analysis, fmt, trace=rs.trace_events())
    again = render(rs.analysis(), fmt, trace=rs.trace_events())
    shuffled = analysis.findings.sample(fraction=1.0, shuffle=True, seed=3)
    reordered = render(rs.FakeAnalysis(shuffled, analysis.costs, analysis.meta), fmt, trace=rs.trace_events())
    assert first.encode() == again.encode() == reordered.encode()


def test_written_files_are_byte_identical(analysis, tmp_path):
    for fmt in TEXT_FORMATS:
        a = write_report(analysis, fmt, tmp_path / f"a.{fmt}")
        b = write_report(rs.analysis(), fmt, tmp_path / f"b.{fmt}")
        assert a.read_bytes() == b.read_bytes()


# --------------------------------------------------------------------------
# writing


def test_write_report_refuses_to_overwrite_without_force(analysis, tmp_path):
    dest = tmp_path / "r.txt"
    dest.write_text("keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        write_report(analysis, "text", dest)
    assert dest.read_text() == "keep me"
    assert write_report(analysis, "text", dest, force=True) == dest
    assert dest.read_text().startswith("tracekit report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]  # no temporary left behind
    assert dest.stat().st_mode & stat.S_IRGRP or dest.stat().st_mode & stat.S_IRUSR


def test_write_report_without_dest_returns_the_text(analysis):
    assert write_report(analysis, "markdown") == render(analysis, "markdown")


def test_unknown_format_is_a_usage_error(analysis):
    with pytest.raises(UsageError, match="expected one of text, markdown, html, json"):
        render(analysis, "pdf")


def test_registry_lists_the_four_formats():
    assert list(REPORT_FORMATS) == ["text", "markdown", "html", "json"]
    assert {f.suffix for f in REPORT_FORMATS.values()} == {".txt", ".md", ".html", ".json"}


def test_html_without_matplotlib_says_how_to_install_it(analysis, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(TracekitError, match=r"pip install 'tracekit\[html\]'"):
        render(analysis, "html")


def test_html_is_self_contained(analysis):
    rs.need_matplotlib()
    page = render(analysis, "html", trace=rs.trace_events())
    assert page.startswith("<!DOCTYPE html>")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", page)
    assert not re.search(r"@import|url\((?!#)", page)  # no external CSS, only in-page SVG references
    assert page.count("<svg") == 1 + len(rs.MITIGATIONS)  # the cost bars and one plane per mitigation
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))


def test_analysis_html_is_a_small_table(analysis):
    snippet = analysis_html(analysis)
    assert "<table" in snippet and "<svg" not in snippet and "<html" not in snippet
    assert "<b>73</b>" in snippet and "5 ranges need maintenance" in snippet


def test_bare_findings_frame_renders(analysis):
    text = render(analysis.findings, "text")
    assert "sha256:      unknown" in text and matrix_rows(text)["none"] == NONE_ROW


# --------------------------------------------------------------------------
# gate


def test_gate_fails_while_findings_of_the_kinds_remain(analysis):
    assert gate(analysis.findings, "stale-read,lost-write") == 1
    assert gate(analysis.findings, ["lost-write"]) == 1
    assert "1 lost-write under none" in gate_message(analysis.findings, "lost-write")


def test_gate_passes_when_no_finding_of_the_kinds_remains(analysis):
    assert gate(analysis.findings, "stale-ifetch") == 0
    assert gate(analysis.findings.head(0), "all") == 0
    assert gate_message(analysis.findings, "stale-ifetch") == ""
    assert gate(analysis.findings, "stale-read", mitigations=["demo-fix"]) == 0
    assert gate(analysis, "stale-read", mitigations=["guest-boot-inval"]) == 1  # an Analysis works too


@pytest.mark.parametrize("bad", ["stale-reads", "stale-read,bogus", "", " , "])
def test_gate_rejects_unknown_kind_names(analysis, bad):
    with pytest.raises(UsageError, match="--fail-on: expected"):
        gate(analysis.findings, bad)


# --------------------------------------------------------------------------
# CLI


def info() -> TraceInfo:
    return TraceInfo(regions=(Region.make("ram", 0x40000000, 128 << 20), Region.make("fb", 0x48000000, 1 << 20,
                                                                                     shared=True)),
                     devices=(Device("gpu", False),))


def write_findings(path, a, sha=rs.TRACE_SHA):
    meta = {k: v for k, v in a.meta.items() if k not in ("line_size", "tracekit_version")}
    meta["trace_sha256"] = sha
    meta["costs"] = {m: c.__dict__ for m, c in a.costs.items()}
    write_table(a.findings, path, schema="findings-v1", info=info(), extra_metadata=meta)
    return path


def invoke(*args):
    return CliRunner().invoke(app, ["report", *map(str, args)])


def test_cli_report_to_stdout_matches_the_library(analysis, tmp_path):
    f = write_findings(tmp_path / "f.parquet", analysis)
    res = invoke(f, "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["range_counts"] == {"none": 5, "guest-boot-inval": 3, "demo-fix": 0}
    assert doc["costs"]["guest-boot-inval"]["inserted_lines"] == 64
    text = invoke(f).stdout
    assert matrix_rows(text)["none"] == NONE_ROW and "\x1b" not in text


def test_cli_report_writes_the_file_and_refuses_to_overwrite(analysis, tmp_path):
    f = write_findings(tmp_path / "f.parquet", analysis)
    out = tmp_path / "r.md"
    assert invoke(f, "-f", "markdown", "-o", out).exit_code == 0
    assert out.read_text().startswith("## tracekit report")
    res = invoke(f, "-f", "markdown", "-o", out)
    assert res.exit_code == 2 and "use --force" in res.stderr and "Traceback" not in res.output
    assert invoke(f, "-f", "markdown", "-o", out, "--force").exit_code == 0


def test_cli_report_takes_the_format_from_the_output_suffix(analysis, tmp_path):
    """Regression: `-o review.html` wrote the text report into an .html file. The suffix names the
    format unless --format does; an unknown suffix keeps the text default."""
    f = write_findings(tmp_path / "f.parquet", analysis)
    for name, check in (("r.html", lambda t: t.lstrip().lower().startswith("<!doctype html")),
                        ("r.md", lambda t: t.startswith("## tracekit report")),
                        ("r.json", lambda t: json.loads(t)["range_counts"]["none"] == 5),
                        ("r.log", lambda t: t.startswith("tracekit report"))):
        assert invoke(f, "-o", tmp_path / name).exit_code == 0
        assert check((tmp_path / name).read_text()), name
    assert invoke(f, "-f", "text", "-o", tmp_path / "t.html").exit_code == 0  # --format wins
    assert (tmp_path / "t.html").read_text().startswith("tracekit report")


@pytest.mark.parametrize("args,message", [
    (["--format", "pdf"], "expected one of text, markdown, html, json, found 'pdf'"),
    (["--trace", "missing.parquet"], "expected a trace file, found no such file"),
])
def test_cli_report_bad_usage_exits_2(analysis, tmp_path, args, message):
    f = write_findings(tmp_path / "f.parquet", analysis)
    res = invoke(f, *[a if a != "missing.parquet" else tmp_path / a for a in args])
    assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.output


def test_cli_report_rejects_a_file_that_is_not_findings(tmp_path):
    missing = invoke(tmp_path / "nope.parquet")
    assert missing.exit_code == 2 and "expected a findings Parquet file, found no such file" in missing.stderr
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    res = invoke(junk)
    assert res.exit_code == 2 and f"{junk}: expected a Parquet file written by tracekit" in res.stderr


def test_cli_report_with_the_trace_resolves_memory_types(analysis, tmp_path):
    """--trace runs the real resolver: the MMU-off write is Device-nGnRnE (model 3.1)."""
    events = rs.trace_events(resolved=False).with_columns(
        value=pl.when(pl.col("seq") == 2).then(0xFF).when(pl.col("seq") == 3).then(0x1005)
        .when(pl.col("seq") == 0).then(0).otherwise(None).cast(pl.UInt64),
        attr_index=pl.when(pl.col("seq") == 5).then(0).otherwise(None).cast(pl.UInt8),
        attr=pl.when(pl.col("seq") == 6).then(pl.lit("wb")).otherwise(None))
    trace = write_table(events, tmp_path / "boot.parquet", schema="trace-v1", info=info())
    from tracekit.trace import load

    f = write_findings(tmp_path / "f.parquet", analysis, sha=load(trace).sha256)
    res = invoke(f, "--trace", trace)
    assert res.exit_code == 0, res.output
    flat = " ".join(res.stdout.split())
    assert "guest.0 wrote 0x40001000+4096 with its MMU off (Device-nGnRnE, to memory)" in flat
    assert "seq 5 guest.0 read 0x40001000+4096 (boot.tkt:8)" in flat

    other = write_findings(tmp_path / "g.parquet", analysis, sha="cd" * 32)
    res = invoke(other, "--trace", trace)
    assert res.exit_code == 2 and "expected the trace the findings were computed from" in res.stderr


def test_readme_example_is_what_the_text_report_prints(analysis):
    """docs/readme/reports.md shows a range of this story; it must stay the real output."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "readme" / "reports.md").read_text()
    block = re.search(r"```\n(\[1\] invalidate .*?)```", doc, re.S).group(1)
    assert block in render(analysis, "text", trace=rs.trace_events())


def test_h4_and_ifetch_sentences():
    """H4: the fix is a clean before the invalidation or a CIVAC instead (model 4); section 7: IC IVAU."""
    base = dict(src="bare.tkt", region="ram", phase=None)
    rows = [
        dict(mitigation="none", kind="lost-write", cause="discarded-by-invalidate", seq=20, agent="guest.0",
             addr=0x40010000, size=64, line=0x40010000, other_seq=21, other_agent="guest.0",
             fix_op="clean+invalidate", fix_agent="guest.0", fix_after_seq=20, fix_before_seq=21, src_line=3, **base),
        dict(mitigation="none", kind="stale-ifetch", cause="icache-not-invalidated", seq=31, agent="guest.0",
             addr=0x40080000, size=4, line=0x40080000, other_seq=30, other_agent="guest.0", fix_op="ic-invalidate",
             fix_agent="guest.0", fix_after_seq=30, fix_before_seq=31, src_line=9, **base),
    ]
    text = " ".join(render(pl.DataFrame(rows), "text").split())
    assert ("guest.0's write at seq 20 through the cache may still be dirty when the invalidation at seq 21 by "
            "guest.0 discards the line, so the write may be lost; clean (DC CVAC) 0x40010000+64 (1 line) by guest.0 "
            "after seq 20 and before seq 21, or make the invalidation at seq 21 a clean+invalidate (DC CIVAC).") in text
    assert "seq 21 guest.0 invalidation" in text  # the other event of an H4 lost write is the invalidation
    assert ("guest.0 fetched instructions 0x40080000+4 while its instruction cache may still hold the line from "
            "before guest.0's write at seq 30") in text
    assert "invalidate the instruction cache (IC IVAU) for 0x40080000+64 (1 line) by guest.0 after seq 30" in text
    assert "stale-ifetch" in text and "ifetch/I" in text


def test_fixes_and_introduces_against_none(analysis):
    """guest-boot-inval removes the 66 boot findings (2 host + 64 guest lines) and keeps the 7 scanout ones;
    demo-fix has no findings, so it fixes all 73 of none."""
    doc = json.loads(render(analysis, "json"))
    assert doc["against"] == {"baseline": "none", "mitigations": {
        "guest-boot-inval": {"fixed": 66, "introduced": 0}, "demo-fix": {"fixed": 73, "introduced": 0}}}
    text = render(analysis, "text")
    cost = text[text.index("Cost per mitigation"):]
    assert re.search(r"^guest-boot-inval +0 +1 +64 +0 +66 +0$", cost, re.M)
    assert re.search(r"^demo-fix +2 +10 +100 +5 +73 +0$", cost, re.M)


def test_the_summary_and_a_report_of_one_analysis_compare_once(monkeypatch):
    """The command prints the summary and writes the report from one Analysis: both need each
    mitigation's findings fixed and introduced against none, which on the 10 M catalog's 14 M
    findings takes 2-3 s, so the Analysis keeps its comparison. Same report either way."""
    import importlib
    from pathlib import Path

    from tracekit.analyze import analyze

    sample = Path(__file__).resolve().parent.parent / "sample-traces" / "boot-mmu-off.tkt"
    specs = ["none", "guest-boot-inval", "mair-trap"]
    module = importlib.import_module("tracekit.mitigations.compare")
    calls = []
    real = module.compare
    monkeypatch.setattr(module, "compare", lambda *a, **k: (calls.append(k.get("baseline")), real(*a, **k))[1])
    a = analyze(str(sample), specs)
    summary = a.summary()
    md = render(a, "markdown")
    assert calls == ["none"] and "against none" in summary
    monkeypatch.setattr(module, "compare", real)
    fresh = analyze(str(sample), specs)  # a report alone makes the comparison itself
    assert render(fresh, "markdown") == md
    assert render(rs.analysis(), "markdown")  # an object without compare() (a findings file) still reports


def test_reports_work_on_the_compact_findings_and_say_the_same(tmp_path):
    """A report reads a findings file with its labels as codes (load_findings(compact=True): the
    whole catalog of 10 M events held 2.5 GB more as strings) and renders an Analysis from its
    compact rows without making its string form; every format says the same as from strings."""
    from pathlib import Path

    from tracekit.analyze import analyze
    from tracekit.reports import load_findings, report

    boot = Path(__file__).resolve().parent.parent / "sample-traces" / "boot-mmu-off.tkt"
    a = analyze(boot, ["all"], output=tmp_path / "f.parquet")
    compact = load_findings(tmp_path / "f.parquet", compact=True)
    strings = load_findings(tmp_path / "f.parquet")
    assert isinstance(compact.findings.schema["kind"], pl.Enum)
    assert isinstance(compact.findings.schema["agent"], pl.Categorical)
    assert strings.findings.schema["kind"] == pl.String
    assert compact.findings.cast(strings.findings.schema).equals(strings.findings)
    for fmt in ("text", "markdown", "html", "json"):
        assert render(compact, fmt) == render(strings, fmt) == report(tmp_path / "f.parquet", fmt), fmt
        assert "stale-read" in render(a, fmt)
    assert a._strings is None  # (the Analysis's string form was never made)
