"""Generic access streams: Dinero IV din (both forms) and Valgrind Lackey."""

from pathlib import Path

import polars as pl
import pytest

from tracekit.errors import TraceFormatError
from tracekit.importers.base import ImportOptions
from tracekit.importers.din import DinImporter
from tracekit.importers.lackey import LackeyImporter

DATA = Path(__file__).parent / "data"


def read(imp, path, **kw):
    res = imp.read(Path(path), ImportOptions(**kw))
    return pl.concat(list(res.batches)), res


def test_extended_din_spec_example():
    """xdin: r/w/i/m accesses with hex sizes; c 0 0 = copy-back of the whole cache; v = invalidate a range."""
    df, _ = read(DinImporter(), DATA / "din" / "extended.din")
    assert df.select("agent", "op", "addr", "size", "cmo").rows() == [
        ("guest.0", "ifetch", 0x400584, 4, None),
        ("guest.0", "read", 0x7FFFFFF0, 8, None),
        ("guest.0", "write", 0x7FFFFFF8, 8, None),
        ("guest.0", "read", 0x4123A000, 0x40, None),  # m: misc = read
        ("guest.0", "cmo", None, None, "dc.csw"),
        ("guest.0", "cmo", 0x4123A000, 0x40, "dc.ivac"),
    ]


def test_traditional_din_is_word_oriented():
    """Dinero III din has no size: Dinero IV takes 4 bytes at address & ~3."""
    df, _ = read(DinImporter(agent="host.sim"), DATA / "din" / "traditional.din")
    assert df.select("agent", "op", "addr", "size").rows() == [
        ("host.sim", "ifetch", 0x400584, 4), ("host.sim", "read", 0x7FFFFFF0, 4), ("host.sim", "write", 0x7FFFFFF4, 4)]


def test_din_errors(tmp_path):
    p = tmp_path / "a.din"
    p.write_text("r 10 4\nr 20 0\n")
    with pytest.raises(TraceFormatError, match=r"a.din:2: expected a non-zero SIZE"):
        read(DinImporter(), p)
    p.write_text("r 10 4\nx 20 4\n")
    with pytest.raises(TraceFormatError, match=r"a.din:2: expected a din record"):
        read(DinImporter(), p)


def test_lackey_spec_example():
    """Lackey: ==PID== lines skipped; I fetch, S store, L load, M = read then write of the same bytes."""
    df, res = read(LackeyImporter(), DATA / "lackey" / "trace.lackey")
    assert df.select("op", "addr", "size", "src_line").rows() == [
        ("ifetch", 0x04000BD0, 3, 2), ("write", 0x1FFEFFFE88, 8, 3), ("ifetch", 0x04000BD3, 4, 4),
        ("read", 0x04021D88, 8, 5), ("read", 0x04221E20, 4, 6), ("write", 0x04221E20, 4, 6)]
    assert res.summary["lines_valgrind"] == 2 and res.summary["records_M"] == 1


def test_lackey_malformed_record(tmp_path):
    p = tmp_path / "t.lackey"
    p.write_text("I  0400,3\n L 04zz,8\n")
    with pytest.raises(TraceFormatError, match=r"t.lackey:2: expected"):
        read(LackeyImporter(), p)


def test_agent_option_names_the_agent_of_din_and_lackey():
    """ImportOptions.agent (--agent) is the one agent of formats that record none; it beats the default."""
    df, res = read(DinImporter(), DATA / "din" / "extended.din", agent="host.sim")
    assert set(df["agent"]) == {"host.sim"} and set(df["side"]) == {"host"} and res.summary["agent"] == "host.sim"
    df, _ = read(LackeyImporter(), DATA / "lackey" / "trace.lackey", agent="guest.3")
    assert set(df["agent"]) == {"guest.3"}
    df, _ = read(LackeyImporter(), DATA / "lackey" / "trace.lackey")
    assert set(df["agent"]) == {"guest.0"}  # default when no --agent


def test_ingest_cli_agent_option(tmp_path):
    """`tracekit ingest --agent dev.gpu x.din` writes every event as dev.gpu; a malformed name is exit 2."""
    from typer.testing import CliRunner

    from tracekit.cli import app

    out = tmp_path / "t.parquet"
    r = CliRunner().invoke(app, ["ingest", str(DATA / "din" / "extended.din"), "-o", str(out), "-q",
                                 "--agent", "dev.gpu"])
    assert r.exit_code == 0, r.output
    df = pl.read_parquet(out)
    assert set(df["agent"]) == {"dev.gpu"} and set(df["side"]) == {"dev"} and df.height == 6
    bad = tmp_path / "bad.parquet"
    r = CliRunner().invoke(app, ["ingest", str(DATA / "din" / "extended.din"), "-o", str(bad), "-q",
                                 "--agent", "gpu 0"])
    assert r.exit_code == 2 and "--agent: expected an agent" in r.output and not bad.exists()


@pytest.mark.parametrize("imp,path", [(DinImporter(), "din/extended.din"), (LackeyImporter(), "lackey/trace.lackey")])
def test_guest_map_types_the_accesses_of_both_streams(tmp_path, imp, path):
    """--guest-map applies to din and to Lackey alike (Lackey ignored it until both shared one reader):
    a map covering all of memory as nc gives every guest access attr nc, and the summary counts them."""
    gmap = tmp_path / "map.txt"
    gmap.write_text("0x0 0x8000000000000000 nc\n0x8000000000000000 0x7fffffffffffffff nc\n")
    df, res = read(imp, DATA / path, guest_map=gmap)
    acc = df.filter(pl.col("op").is_in(["read", "write", "ifetch"]))
    assert acc.height > 0 and set(acc["attr"]) == {"nc"}
    assert res.summary["guest_map"]["typed_by_guest_map_attr"] == acc.height
