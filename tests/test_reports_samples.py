"""Every report format for every sample trace, analysed under the whole catalog.

The expected numbers are recomputed here from the findings frame (the engine's
output), so these tests check that reports carry the findings faithfully:
counts, ranges covering exactly the lines found, layout rules, determinism.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import reports_support as rs
import tracekit
from tracekit.cli import app
from tracekit.reports import render

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "sample-traces").glob("*.tkt"))


def test_there_are_sample_traces():
    assert len(SAMPLES) >= 4


@pytest.fixture(scope="module", params=SAMPLES, ids=[p.stem for p in SAMPLES])
def sample(request):
    a = tracekit.analyze(request.param, ["all"])
    return request.param, a, {fmt: render(a, fmt) for fmt in ("text", "markdown", "json")}


def totals(a) -> dict[str, int]:
    counts = dict(a.findings.group_by("mitigation").len().iter_rows())
    return {m: counts.get(m, 0) for m in a.mitigations}


def test_text_layout_and_totals(sample):
    _, a, out = sample
    text = out["text"]
    assert text.isascii() and max(len(line) for line in text.splitlines()) <= 78
    for m, n in totals(a).items():
        assert f"Under {m}: {n} finding{'s' * (n != 1)}," in text


def test_markdown_tables_are_well_formed(sample):
    _, a, out = sample
    rows = [line for line in out["markdown"].splitlines() if line.startswith("|")]
    assert rows and all(line.endswith("|") for line in rows)
    for m, n in totals(a).items():
        assert re.search(rf"^\| `{re.escape(m)}` \|.*\| \*\*{n}\*\* \|$", out["markdown"], re.M)


def test_json_ranges_cover_exactly_the_lines_found(sample):
    _, a, out = sample
    doc = json.loads(out["json"])
    assert {m["mitigation"]: m["total"] for m in doc["matrix"]} == totals(a)
    line_size = doc["meta"]["line_size"]
    key = ("mitigation", "cause", "fix_op", "fix_agent", "fix_after_seq", "fix_before_seq", "region")
    want = {(*(r[k] for k in key), r["line"]) for r in a.findings.iter_rows(named=True)}
    got = set()
    for r in doc["ranges"]:
        got |= {(*(r[k] for k in key), line) for line in range(r["start"], r["end"], line_size)}
    assert got == want
    assert sum(r["findings"] for r in doc["ranges"]) == a.findings.height


def test_reports_are_deterministic_across_runs(sample):
    path, _, out = sample
    again = tracekit.analyze(path, ["all"])
    for fmt, text in out.items():
        assert render(again, fmt).encode() == text.encode(), fmt


def test_html_is_self_contained(sample):
    rs.need_matplotlib()
    _, a, _ = sample
    page = render(a, "html")
    assert "<script" not in page and not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", page)
    assert page.count("<svg") == 1 + len(a.mitigations)


def test_cli_analyze_then_report_end_to_end(tmp_path):
    """tracekit analyze -o, then tracekit report --trace, as a reviewer would run them."""
    sample = ROOT / "sample-traces" / "boot-mmu-off.tkt"
    findings = tmp_path / "boot.parquet"
    runner = CliRunner()
    res = runner.invoke(app, ["analyze", str(sample), "-m", "none", "-m", "guest-boot-inval", "-o", str(findings),
                              "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["report", str(findings), "--trace", str(sample)])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.stdout.split())
    # boot-mmu-off: the host's read (annotated stale under none) misses a guest MMU-off write (model 4, H2)
    lines = sample.read_text().splitlines()
    host_read = next(i for i, t in enumerate(lines, 1) if t.startswith("host") and " read " in t and "#! none" in t)
    addr = lines[host_read - 1].split()[2]
    assert "with its MMU off (Device-nGnRnE, to memory)" in flat
    assert f"host.0 read {addr}+64 ({sample}:{host_read})" in flat
    doc = json.loads(runner.invoke(app, ["report", str(findings), "-f", "json"]).stdout)
    expected = pl.read_parquet(findings).group_by("mitigation").len()
    assert {m["mitigation"]: m["total"] for m in doc["matrix"]} == dict(expected.iter_rows())


def test_repr_html_of_a_real_analysis(sample):
    _, a, _ = sample
    snippet = a._repr_html_()
    assert snippet.startswith("<div>") and "<table" in snippet
    for m in a.mitigations:
        assert f"<code>{m}</code>" in snippet


def test_report_accepts_the_trace_in_either_form_and_rejects_another(tmp_path):
    """--trace may be the analysed Parquet or the input it was ingested from; another trace is refused."""
    runner = CliRunner()
    source = ROOT / "sample-traces" / "boot-mmu-off.tkt"
    parquet, findings = tmp_path / "boot.parquet", tmp_path / "f.parquet"
    assert runner.invoke(app, ["ingest", str(source), "-o", str(parquet), "-q"]).exit_code == 0
    assert runner.invoke(app, ["analyze", str(parquet), "-o", str(findings), "-q"]).exit_code == 0
    for trace in (parquet, source):
        res = runner.invoke(app, ["report", str(findings), "--trace", str(trace)])
        assert res.exit_code == 0, res.output
        assert "with its MMU off (Device-nGnRnE, to memory)" in " ".join(res.stdout.split())
    res = runner.invoke(app, ["report", str(findings), "--trace", str(ROOT / "sample-traces" / "virtio-ring.tkt")])
    assert res.exit_code == 2 and "expected the trace the findings were computed from" in res.stderr
