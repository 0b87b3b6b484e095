"""`tracekit ingest/export/schema` and the Python API behind them (tracekit.ingest, tracekit.trace)."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import importlib

ingest_mod = importlib.import_module("tracekit.ingest")
from tracekit import schema
from tracekit.cli import app
from tracekit.errors import TracekitError
from tracekit.ingest import export, ingest
from tracekit.model import TraceInfo
from tracekit.trace import load, read_info, scan

runner = CliRunner()
VECTORS = sorted(glob.glob(str(Path(__file__).resolve().parent / "vectors" / "*.tkt")))
SAMPLES = sorted(glob.glob(str(Path(__file__).resolve().parent.parent / "sample-traces" / "*.tkt")))

SCENARIO = """\
@region ram 0x40000000 16M ram
@region fb  0x48000000 1M  ram shared
@device gpu noncoherent
@phase boot
guest sysreg MAIR_EL1 0x44ff
guest sysreg SCTLR_EL1 0x1005
@phase run
guest write 0x48000000 64 idx=1 value=0x2a
host.vnc read 0x48000000 64
dev.gpu write 0x40002000 512
guest cmo dc.civac 0x40002000
guest cmo dc.cisw
guest barrier dsb sy
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------
# ingest: output, schema, summary


def test_ingest_writes_a_trace_that_matches_the_schema(tmp_path):
    src = write(tmp_path, "s.tkt", SCENARIO)
    out = tmp_path / "s.parquet"
    r = invoke("ingest", src, "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    table = pq.read_table(out)
    schema.validate_arrow(table, "trace-v1", where=str(out))
    assert table.num_rows == 8
    md = schema.read_metadata(out)
    assert md["schema"] == "tracekit-trace" and md["schema_version"] == 1
    assert md["inputs"] == [{"name": str(src), "sha256": ingest_mod.file_sha256(src), "format": "tkt"}]
    assert [r["name"] for r in md["regions"]] == ["ram", "fb"] and md["devices"] == [{"name": "gpu",
                                                                                      "coherent": False}]


def test_columns_are_stored_with_the_schemas_encodings(tmp_path):
    """schemas/*.json 'storage': dictionary strings, delta integers, byte-stream-split floats."""
    src = write(tmp_path, "s.tkt", SCENARIO.replace("host.vnc read", "t=1.5 host.vnc read"))
    out = tmp_path / "s.parquet"
    ingest(src, out, quiet=True)
    meta = pq.ParquetFile(out).metadata.row_group(0)
    enc = {meta.column(i).path_in_schema: set(meta.column(i).encodings) for i in range(meta.num_columns)}
    for col in ("seq", "addr", "size", "src_line", "attr_index"):
        assert "DELTA_BINARY_PACKED" in enc[col], (col, enc[col])
    assert "BYTE_STREAM_SPLIT" in enc["time"]
    for col in ("agent", "op", "src"):
        assert "RLE_DICTIONARY" in enc[col] and "DELTA_BINARY_PACKED" not in enc[col], (col, enc[col])


def test_row_groups_carry_statistics_of_numbers_and_of_the_named_text_columns(tmp_path):
    """storage.text_statistics: a trace keeps none of its text columns' statistics; findings
    keep mitigation's (a reader of one mitigation skips the others' row groups)."""
    from tracekit.analyze import analyze as run

    src = write(tmp_path, "s.tkt", SCENARIO)
    trace = tmp_path / "s.parquet"
    ingest(src, trace, quiet=True)
    meta = pq.ParquetFile(trace).metadata.row_group(0)
    stats = {meta.column(i).path_in_schema: meta.column(i).is_stats_set for i in range(meta.num_columns)}
    assert stats["seq"] and stats["addr"] and stats["time"]
    assert not stats["agent"] and not stats["op"] and not stats["src"]
    findings = tmp_path / "f.parquet"
    run(str(trace), ["none", "mair-trap"], output=str(findings))
    meta = pq.ParquetFile(findings).metadata.row_group(0)
    stats = {meta.column(i).path_in_schema: meta.column(i).statistics for i in range(meta.num_columns)}
    first = pl.read_parquet(findings)["mitigation"][0]
    assert stats["mitigation"] is not None and stats["mitigation"].min == first
    assert stats["seq"] is not None
    assert stats["kind"] is None and stats["agent"] is None


def test_scan_parquet_gives_the_documented_columns(tmp_path):
    out = tmp_path / "s.parquet"
    ingest(write(tmp_path, "s.tkt", SCENARIO), out, quiet=True)
    lf = pl.scan_parquet(out)
    documented = [c["name"] for c in schema.schema_doc("trace-v1")["columns"]]
    assert lf.collect_schema().names() == documented
    assert scan(out).collect_schema().names() == documented
    ev = lf.collect()
    assert ev["seq"].to_list() == list(range(8))
    assert ev["phase"].to_list()[:3] == ["boot", "boot", "run"]


def test_summary_counts_by_op_agent_regions_and_time(tmp_path):
    r = invoke("ingest", write(tmp_path, "s.tkt", SCENARIO), "-o", tmp_path / "o.parquet", "-q")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "8 events" in out
    assert "by op:    barrier 1, cmo 2, read 1, sysreg 2, write 2" in out
    assert "by agent: dev.gpu 1, guest.0 6, host.vnc 1" in out
    assert "region fb: 0x48000000 +0x100000 ram s2=wb host=wb shared" in out
    assert "devices:  gpu (noncoherent)" in out
    assert "no timestamps" in out


def test_trace_load_of_parquet_is_the_written_trace(tmp_path):
    src = write(tmp_path, "s.tkt", SCENARIO)
    out = tmp_path / "s.parquet"
    ingest(src, out, quiet=True)
    a, b = load(out), load(src)
    assert a.events.equals(b.events)
    assert a.info == b.info == read_info(out)
    assert a.sha256 == ingest_mod.file_sha256(out) and b.sha256 == ingest_mod.file_sha256(src)


def test_parquet_not_written_by_tracekit_is_refused(tmp_path):
    p = tmp_path / "x.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(p)
    with pytest.raises(TracekitError, match="expected tracekit metadata"):
        load(p)


# --------------------------------------------------------------------------
# Merging several inputs


def test_merge_by_time_ties_keep_input_then_file_order(tmp_path):
    a = write(tmp_path, "a.tkt", "t=1 host.a write 0x0 8\nt=2 host.a write 0x8 8\nt=2 host.a write 0x10 8\n"
                                 "t=5 host.a write 0x18 8\n")
    b = write(tmp_path, "b.tkt", "t=0.5 host.b read 0x0 8\nt=2 host.b read 0x8 8\nt=3 host.b read 0x10 8\n")
    out = tmp_path / "m.parquet"
    summary = ingest([a, b], out, quiet=True)
    ev = pl.read_parquet(out)
    # expected order, from the rule "by time; ties: input order, then file order"
    assert list(zip(ev["agent"], ev["src_line"])) == [
        ("host.b", 1), ("host.a", 1), ("host.a", 2), ("host.a", 3), ("host.b", 2), ("host.b", 3), ("host.a", 4)]
    assert ev["seq"].to_list() == list(range(7))
    assert summary.order == "time" and summary.time_span == (0.5, 5.0)
    assert [i["name"] for i in schema.read_metadata(out)["inputs"]] == [str(a), str(b)]


def test_merge_streams_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_mod, "MERGE_BATCH", 3)
    a = write(tmp_path, "a.tkt", "".join(f"t={i // 3} host.a write 0x{i:x} 1\n" for i in range(40)))
    b = write(tmp_path, "b.jsonl", "".join(json.dumps({"agent": "host.b", "op": "read", "addr": i, "size": 1,
                                                       "time": i / 7}) + "\n" for i in range(30)))
    c = write(tmp_path, "c.csv", "time,agent,op,addr,size\n" + "".join(f"{i // 2},host.c,read,{i},1\n"
                                                                       for i in range(25)))
    out = tmp_path / "m.parquet"
    ingest([a, b, c], out, quiet=True)
    schema.validate_arrow(pq.read_table(out), "trace-v1", where=str(out))
    got = pl.read_parquet(out)
    # the reference: a stable sort by (time, input, line) of the inputs in memory
    parts = [load(p).events.with_columns(_i=pl.lit(i)) for i, p in enumerate((a, b, c))]
    want = pl.concat(parts).sort(["time", "_i", "src_line"]).drop("_i")
    assert got.drop("seq").equals(want.drop("seq"))
    assert load([a, b, c]).events.drop("seq").equals(want.drop("seq"))
    assert leftovers(tmp_path) == []  # spill files removed


def test_merge_needs_timestamps_on_every_event(tmp_path):
    a = write(tmp_path, "a.tkt", "t=1 host write 0x0 8\n")
    b = write(tmp_path, "b.tkt", "t=1 host write 0x0 8\nhost read 0x0 8\n")
    out = tmp_path / "m.parquet"
    r = invoke("ingest", a, b, "-o", out, "-q")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"tracekit: error: {b}:2: expected a timestamp on every event")
    assert "--concat" in r.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_merge_needs_time_order_within_an_input(tmp_path):
    a = write(tmp_path, "a.tkt", "t=2 host write 0x0 8\nt=1 host write 0x0 8\n")
    b = write(tmp_path, "b.tkt", "t=1 host write 0x0 8\n")
    with pytest.raises(TracekitError, match=rf"{a}:2: expected timestamps in non-decreasing order"):
        ingest([a, b], tmp_path / "m.parquet", quiet=True)


def test_concat_appends_inputs_in_order(tmp_path):
    a = write(tmp_path, "a.tkt", "host write 0x0 8\nt=9 host write 0x8 8\n")
    b = write(tmp_path, "b.tkt", "t=1 guest read 0x0 8\n")
    out = tmp_path / "c.parquet"
    r = invoke("ingest", a, b, "-o", out, "--concat", "-q")
    assert r.exit_code == 0, r.output
    schema.validate_arrow(pq.read_table(out), "trace-v1", where=str(out))
    ev = pl.read_parquet(out)
    assert list(zip(ev["src"], ev["src_line"])) == [(str(a), 1), (str(a), 2), (str(b), 1)]
    assert ev["seq"].to_list() == [0, 1, 2]
    assert "order:    concat" in r.stdout


def test_settings_of_inputs_must_agree(tmp_path):
    a = write(tmp_path, "a.tkt", "@line-size 64\nt=1 host write 0x0 8\n")
    b = write(tmp_path, "b.tkt", "@line-size 128\nt=1 host write 0x0 8\n")
    for extra in ([], ["--concat"]):
        out = tmp_path / "m.parquet"
        r = invoke("ingest", a, b, "-o", out, "-q", *extra)
        assert r.exit_code == 2
        assert str(a) in r.stderr and str(b) in r.stderr and "line size" in r.stderr
        assert not out.exists() and leftovers(tmp_path) == []


def test_options_override_input_settings(tmp_path):
    src = write(tmp_path, "s.tkt", "@line-size 64\n@stage2 on\nguest cmo dc.civac 0x0\n")
    out = tmp_path / "o.parquet"
    r = invoke("ingest", src, "-o", out, "--line-size", "128", "--no-stage2", "--fwb", "-q")
    assert r.exit_code == 0, r.output
    info = read_info(out)
    assert (info.line_size, info.stage2, info.fwb) == (128, False, True)
    assert pl.read_parquet(out)["size"].to_list() == [128]  # the cmo default follows the line size


def test_csv_with_settings_option(tmp_path):
    c = write(tmp_path, "r.csv", "agent,op,addr,size\nguest,write,0x40000000,8\n")
    s = write(tmp_path, "r.settings", "@region ram 0x40000000 4K ram\n")
    out = tmp_path / "r.parquet"
    r = invoke("ingest", c, "-o", out, "--settings", s, "-q")
    assert r.exit_code == 0, r.output
    assert [x.name for x in read_info(out).regions] == ["ram"]
    r = invoke("ingest", c, "-o", tmp_path / "x.parquet", "--format", "jsonl", "-q")
    assert r.exit_code == 2 and "expected a JSON object" in r.stderr


# --------------------------------------------------------------------------
# Bad input: exit 2, FILE:LINE, no output


@pytest.mark.parametrize("name,content,where", [
    ("bad.tkt", "guest write 0x0 8\nguest fly 0x0 8\n", "bad.tkt:2: expected an operation"),
    ("bad.tkt", "@region ram 0x40000000 1M ram\nguest write 0x0 8\n", "bad.tkt:2: expected an access inside"),
    ("bad.tkt", "", "bad.tkt:1: expected a scenario"),
    ("bad.csv", "agent,op,addr,size\nguest,write,0x0,0\n", "bad.csv:2: expected a size of at least 1"),
    ("bad.jsonl", '{"agent":"guest","op":"write","addr":0,"size":8}\n[1]\n', "bad.jsonl:2: expected a JSON object"),
])
def test_bad_input_exit_2_message_and_no_output(tmp_path, name, content, where):
    src = write(tmp_path, name, content)
    out = tmp_path / "o.parquet"
    r = invoke("ingest", src, "-o", out)
    assert r.exit_code == 2
    assert r.stderr.startswith(f"tracekit: error: {tmp_path}/{where}"), r.stderr
    assert "Traceback" not in r.output
    assert not out.exists() and leftovers(tmp_path) == []


def test_bad_bytes_exit_2(tmp_path):
    src = tmp_path / "b.tkt"
    src.write_bytes(b"guest write 0x0 8\xff\n")
    r = invoke("ingest", src, "-o", tmp_path / "o.parquet")
    assert r.exit_code == 2 and f"{src}:1: expected UTF-8 text, found byte 0xff" in r.stderr


def test_directory_input_exit_2(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    r = invoke("ingest", d, "-o", tmp_path / "o.parquet")
    assert r.exit_code == 2 and f"{d}: expected a trace file, found a directory" in r.stderr


def test_unknown_format_exit_2(tmp_path):
    r = invoke("ingest", write(tmp_path, "x.tkt", "guest write 0x0 8\n"), "-o", tmp_path / "o.parquet",
               "--format", "pcap")
    assert r.exit_code == 2 and "'pcap'" in r.stderr and "tkt" in r.stderr


def test_existing_output_needs_force(tmp_path):
    src = write(tmp_path, "s.tkt", "guest write 0x0 8\n")
    out = tmp_path / "o.parquet"
    out.write_text("precious")
    r = invoke("ingest", src, "-o", out, "-q")
    assert r.exit_code == 2 and "--force" in r.stderr
    assert out.read_text() == "precious"
    r = invoke("ingest", src, "-o", out, "-q", "--force")
    assert r.exit_code == 0 and pl.read_parquet(out).height == 1


def test_failed_force_keeps_the_old_output(tmp_path):
    out = tmp_path / "o.parquet"
    ingest(write(tmp_path, "s.tkt", "guest write 0x0 8\n"), out, quiet=True)
    before = out.read_bytes()
    r = invoke("ingest", write(tmp_path, "bad.tkt", "guest write 0x0 0\n"), "-o", out, "--force")
    assert r.exit_code == 2 and out.read_bytes() == before and leftovers(tmp_path) == []


def test_missing_output_folder(tmp_path):
    r = invoke("ingest", write(tmp_path, "s.tkt", "guest write 0x0 8\n"), "-o", tmp_path / "no" / "o.parquet")
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_bad_line_size_option(tmp_path):
    r = invoke("ingest", write(tmp_path, "s.tkt", "guest write 0x0 8\n"), "-o", tmp_path / "o.parquet",
               "--line-size", "48")
    assert r.exit_code == 2 and "--line-size" in r.stderr


# --------------------------------------------------------------------------
# export


def test_export_round_trip_gives_the_same_events(tmp_path):
    text = SCENARIO + "@phase\nt=1.5e-3 host write 0x40003000 8 value=0xffffffffffffffff attr=dev\n" \
                      "t=2 guest.1 marker boot done\nt=3 guest.1 barrier\nguest.1 cmo ic.ialluis\n"
    src = write(tmp_path, "s.tkt", text)
    t1, t2, back = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "back.tkt"
    ingest(src, t1, quiet=True)
    r = invoke("export", t1, "-o", back)
    assert r.exit_code == 0, r.output
    r = invoke("ingest", back, "-o", t2, "-q")
    assert r.exit_code == 0, r.output
    a, b = pl.read_parquet(t1), pl.read_parquet(t2)
    assert a.drop("src", "src_line").equals(b.drop("src", "src_line"))
    assert read_info(t1).replace(inputs=()) == read_info(t2).replace(inputs=())


@pytest.mark.parametrize("path", VECTORS + SAMPLES, ids=[Path(v).name for v in VECTORS + SAMPLES])
def test_export_round_trip_of_vectors_and_samples(tmp_path, path):
    t1, t2, back = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "back.tkt"
    ingest(path, t1, quiet=True)
    export(t1, back)
    ingest(back, t2, quiet=True)
    assert pl.read_parquet(t1).drop("src", "src_line").equals(pl.read_parquet(t2).drop("src", "src_line"))


def test_export_writes_untyped_mmu_on_accesses_as_assumed_wb(tmp_path):
    # a trace from an importer that records no stage-1 type (e.g. a QEMU log)
    ev = pl.DataFrame({"seq": [0, 1], "agent": ["guest.0", "guest.0"], "side": ["guest", "guest"],
                       "op": ["sysreg", "read"], "sysreg": ["SCTLR_EL1", None], "value": [1, None],
                       "addr": [None, 64], "size": [None, 8], "src": ["q.log", "q.log"]},
                      schema_overrides={"seq": pl.UInt64, "value": pl.UInt64, "addr": pl.UInt64, "size": pl.UInt64})
    t = tmp_path / "q.parquet"
    schema.write_table(ev, t, schema="trace-v1", info=TraceInfo())
    back = export(t, tmp_path / "q.tkt")
    line = back.read_text().splitlines()[-1]
    assert line == "guest.0 read 0x40 8 attr=wb # type not recorded: assumed wb"


def test_export_refuses_existing_output(tmp_path):
    t = tmp_path / "a.parquet"
    ingest(write(tmp_path, "s.tkt", "guest write 0x0 8\n"), t, quiet=True)
    (tmp_path / "x.tkt").write_text("keep")
    r = invoke("export", t, "-o", tmp_path / "x.tkt")
    assert r.exit_code == 2 and (tmp_path / "x.tkt").read_text() == "keep"


def test_export_of_a_non_trace_exit_2(tmp_path):
    r = invoke("export", write(tmp_path, "s.tkt", "guest write 0x0 8\n"), "-o", tmp_path / "x.tkt")
    assert r.exit_code == 2 and "expected a Parquet file written by tracekit" in r.stderr
    assert not (tmp_path / "x.tkt").exists()


# --------------------------------------------------------------------------
# schema, vectors, samples


@pytest.mark.parametrize("name,doc", [("trace", "trace-v1"), ("findings", "findings-v1")])
def test_schema_command_prints_the_description(name, doc):
    r = invoke("schema", name)
    assert r.exit_code == 0 and r.stdout == schema.describe(doc)


def test_schema_default_and_unknown():
    assert invoke("schema").stdout == schema.describe("trace-v1")
    r = invoke("schema", "events")
    assert r.exit_code == 2 and "'events'" in r.stderr


@pytest.mark.parametrize("path", VECTORS + SAMPLES, ids=[Path(v).name for v in VECTORS + SAMPLES])
def test_ingest_every_vector_and_sample(tmp_path, path):
    out = tmp_path / "v.parquet"
    r = invoke("ingest", path, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    schema.validate_arrow(pq.read_table(out), "trace-v1")


def test_an_input_without_a_memory_map_merges_with_one_that_has_it(tmp_path):
    """A host ftrace log declares no regions; the QEMU-side input's regions apply to the merged trace."""
    a = tmp_path / "guest.tkt"
    a.write_text("@region ram 0x40000000 16M ram\n@device nic noncoherent\n"
                 "t=1.0 guest write 0x40000000 8\nt=3.0 guest write 0x40000040 8\n")
    b = tmp_path / "host.tkt"
    b.write_text("@device gpu coherent\nt=2.0 host read 0x40000000 8\n")
    out = tmp_path / "t.parquet"
    r = CliRunner().invoke(app, ["ingest", str(a), str(b), "-o", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    info = read_info(out)
    assert [x.name for x in info.regions] == ["ram"] and {d.name for d in info.devices} == {"nic", "gpu"}
    assert pl.read_parquet(out)["agent"].to_list() == ["guest.0", "host.0", "guest.0"]


def test_inputs_with_different_memory_maps_do_not_merge(tmp_path):
    a = tmp_path / "a.tkt"
    a.write_text("@region ram 0x40000000 16M ram\nt=1 guest write 0x40000000 8\n")
    b = tmp_path / "b.tkt"
    b.write_text("@region ram 0x40000000 32M ram\nt=2 host read 0x40000000 8\n")
    r = CliRunner().invoke(app, ["ingest", str(a), str(b), "-o", str(tmp_path / "t.parquet")])
    assert r.exit_code == 2 and f"{b}: expected the same settings as {a}" in r.stderr and "regions" in r.stderr


def test_writer_fills_whole_row_groups_from_small_frames(tmp_path):
    """The schema's row_group_size holds however the frames come (pyarrow starts a group per call)."""
    events = ingest_mod.ingest(write(tmp_path, "s.tkt", SCENARIO), tmp_path / "s.parquet", quiet=True)
    frame = pl.read_parquet(tmp_path / "s.parquet")
    big = pl.concat([frame.with_columns(seq=pl.col("seq") + 8 * k) for k in range(300)])  # 2,400 rows
    out = tmp_path / "many.parquet"
    with schema.TableWriter(out, schema=schema.TRACE_SCHEMA) as w:
        w.row_group = 1000
        for start in range(0, big.height, 70):
            w.write(big.slice(start, 70))
        w.finish(events.info)
    meta = pq.ParquetFile(out).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 400]
    assert pl.read_parquet(out).equals(big)


@pytest.mark.parametrize("arrow_types", [None, False])
@pytest.mark.parametrize("first_coded", [True, False])
def test_writer_takes_coded_and_plain_text_columns_alike(tmp_path, first_coded, arrow_types):
    """Enum/Categorical and plain string columns go to Parquet alike, as dictionaries; frames
    coded otherwise than the first give the same values, whether the file stores its Arrow
    types (traces) or not (findings; there each dictionary keeps the first frame's index
    type: an Enum's 8-bit codes, then a Categorical's 32-bit ones cast to them)."""
    events = ingest_mod.ingest(write(tmp_path, "s.tkt", SCENARIO), tmp_path / "s.parquet", quiet=True)
    plain = load(tmp_path / "s.parquet").events  # trace-v1: text as strings
    assert all(plain.schema[c] == pl.String for c in ("op", "agent", "src"))
    coded = plain.with_columns(pl.col("op").cast(pl.Enum(["read", "write", "ifetch", "cmo", "sysreg", "barrier",
                                                          "marker"])),
                               pl.col("agent", "src").cast(pl.Categorical))
    frames = [coded, plain, coded] if first_coded else [plain, coded, plain]
    out = tmp_path / "mixed.parquet"
    with schema.TableWriter(out, schema=schema.TRACE_SCHEMA, arrow_types=arrow_types) as w:
        for f in frames:
            w.write(f)
        w.finish(events.info)
    assert scan(out).collect().equals(pl.concat([plain] * 3))
    if arrow_types is None:
        assert pl.read_parquet(out).schema == pl.read_parquet(tmp_path / "s.parquet").schema
    else:
        assert pl.read_parquet(out).equals(pl.concat([plain] * 3))  # plain strings, every reader
    schema.validate_arrow(pq.read_table(out), "trace-v1", where=str(out))


def test_a_trace_stores_its_text_columns_as_enums_and_categoricals(tmp_path):
    """schemas/trace-v1.json storage.arrow_types: the file stores its Arrow schema, each text
    column a dictionary of strings that polars reads as the schema's Enum (the allowed values,
    in string order) or as a Categorical, without making strings; the values are trace-v1's.
    The tracekit metadata is in the file's key-value metadata."""
    out = tmp_path / "s.parquet"
    ingest(write(tmp_path, "s.tkt", SCENARIO), out, quiet=True)
    compact = schema.polars_schema("trace-v1", compact=True)
    read = pl.read_parquet(out)
    texts = [c["name"] for c in schema.schema_doc("trace-v1")["columns"] if c["type"] == "string"]
    for c in texts:
        assert read.schema[c] == compact[c], c
    assert isinstance(read.schema["op"], pl.Enum) and isinstance(read.schema["agent"], pl.Categorical)
    arrow = pq.read_schema(out)
    assert all(pa.types.is_dictionary(arrow.field(c).type) for c in texts)
    strings = load(tmp_path / "s.tkt").events  # imported in memory: strings
    assert schema.conform(read, "trace-v1").equals(strings)
    assert scan(out).collect().equals(strings)
    assert json.loads(pq.read_metadata(out).metadata[b"tracekit"])["schema"] == "tracekit-trace"
    schema.validate_arrow(pq.read_table(out), "trace-v1", where=str(out))


def test_a_trace_written_with_plain_strings_loads_the_same(tmp_path):
    """A trace written before storage.arrow_types (plain strings, no Arrow schema stored) loads
    to the same frames, compact or not."""
    new = tmp_path / "s.parquet"
    ingest(write(tmp_path, "s.tkt", SCENARIO + "guest cmo dc.zva 0x40000000\nhost read 0x40000000 8\n"),
           new, quiet=True)
    old = tmp_path / "old.parquet"
    with schema.TableWriter(old, schema=schema.TRACE_SCHEMA, arrow_types=False) as w:
        w.write(pl.read_parquet(new))
        w.finish(read_info(new))
    assert not any(pa.types.is_dictionary(f.type) for f in pq.read_schema(old))
    assert pl.read_parquet(old).schema["op"] == pl.String
    for compact in (True, False):
        a, b = load(old, compact=compact).events, load(new, compact=compact).events
        assert a.schema == b.schema and a.equals(b), compact
    assert load(new, compact=True).events["cmo"].drop_nulls().to_list() == ["dc.civac", "dc.cisw", "dc.zva"]


def test_recoding_an_enum_maps_every_value_and_null():
    """`_read_compact` maps a stored Enum (string order) to the kernels' Enum by a table of codes:
    the same column as polars' cast through strings."""
    from tracekit.resolve import VOCABULARY
    from tracekit import trace as trace_module

    for name, to in VOCABULARY.items():
        values = to.categories.to_list()
        stored = pl.Enum(sorted(values))
        column = pl.Series(name, [*values, None, *reversed(values), None], dtype=pl.String).cast(stored)
        got = column.to_frame().select(trace_module._recoded(name, stored, to)).to_series()
        assert got.dtype == to and got.name == name
        assert got.equals(column.cast(pl.String).cast(to)), name


@pytest.mark.parametrize("name, content", [("t.csv", "agent,op,addr,size\n"),
                                           ("t.tkt", "@region ram 0x40000000 16M ram\n")])
def test_inputs_without_events_make_an_empty_trace_that_analyses_clean(tmp_path, name, content):
    """A header-only CSV or a scenario of directives only is a trace of no events: ingest writes it
    (no row of nulls), and analyze, whole or part by part, writes an empty findings file."""
    from tracekit.partition import replay_partitioned

    src = tmp_path / name
    src.write_text(content)
    r = runner.invoke(app, ["ingest", str(src), "-o", str(tmp_path / "t.parquet"), "-q"])
    assert r.exit_code == 0, r.output
    assert pq.ParquetFile(tmp_path / "t.parquet").metadata.num_rows == 0
    r = runner.invoke(app, ["analyze", str(tmp_path / "t.parquet"), "-m", "all", "-o", str(tmp_path / "f.parquet"),
                            "-q"])
    assert r.exit_code == 0, r.output
    replay_partitioned(tmp_path / "t.parquet", tmp_path / "p.parquet", ["none", "guest-boot-inval"], parts=2)
    for out in ("f.parquet", "p.parquet"):
        found = pl.read_parquet(tmp_path / out)
        assert found.height == 0 and found.columns == list(schema.polars_schema(schema.FINDINGS_SCHEMA))
