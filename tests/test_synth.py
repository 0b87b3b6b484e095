"""Synthetic traces: valid trace-v1, deterministic for a seed, realistic in the ways the model cares about."""

from __future__ import annotations

import pyarrow.parquet as pq
import polars as pl
import pytest
from typer.testing import CliRunner

import tracekit.synth as synth_mod
from tracekit.cli import app
from tracekit.model import SCTLR_C, SCTLR_I, SCTLR_M
from tracekit.resolve import resolve
from tracekit.schema import TRACE_SCHEMA, read_trace_info, validate_arrow
from tracekit.synth import LINUX_MAIR, Synth, synth, synth_frame, trace_info


@pytest.fixture(scope="module")
def mixed() -> pl.DataFrame:
    return synth_frame(60_000, seed=7, profile="mixed")


def test_written_file_follows_trace_v1_and_carries_the_settings(tmp_path):
    out = synth(5_000, tmp_path / "t.parquet", seed=1, profile="virtio")
    validate_arrow(pq.read_table(out), TRACE_SCHEMA, where=str(out))
    info = read_trace_info(out)
    assert info == trace_info()
    assert any(r.shared for r in info.regions) and any(r.kind == "mmio" for r in info.regions)
    assert {d.coherent for d in info.devices} == {True, False}


def test_same_seed_same_trace_other_seed_other_trace():
    a = synth_frame(20_000, seed=3, profile="mixed")
    b = synth_frame(20_000, seed=3, profile="mixed")
    c = synth_frame(20_000, seed=4, profile="mixed")
    assert a.equals(b)
    assert not a.equals(c)


def test_streaming_in_chunks_gives_the_events_of_one_batch(monkeypatch):
    """Chunk k has its own random stream: the first chunks of a longer trace are the same events,
    and a trace made chunk by chunk in threads equals one made sequentially."""
    monkeypatch.setattr(synth_mod, "CHUNK", 4096)
    g = Synth(5 * 4096 + 17, 9, "framebuffer")
    seq = pl.concat(list(g.chunks()))
    threaded = pl.concat(list(g.chunks(prefetch=2)))
    assert seq.equals(threaded)
    assert seq.height == 5 * 4096 + 17
    assert seq["seq"].to_list() == list(range(seq.height))  # dense total order


def test_every_access_resolves_inside_a_region(mixed):
    """resolve() raises on an access outside every region; guest accesses with the MMU on carry idx=."""
    r = resolve(mixed, trace_info())
    acc = r.filter(pl.col("op").is_in(["read", "write", "ifetch"]))
    assert acc["region"].null_count() == 0
    assert acc["path"].null_count() == 0
    guest_on = acc.filter((pl.col("side") == "guest") & ((pl.col("sctlr") & SCTLR_M) != 0))
    assert guest_on["attr_index"].null_count() == 0
    assert (guest_on["type_source"] == "mair").all()


def test_vcpus_boot_with_the_mmu_off_then_turn_it_on():
    """Each vCPU starts at reset (M=0), accesses memory as Device, then writes MAIR then SCTLR with M, C, I."""
    ev = synth_frame(20_000, seed=2, profile="boot")
    r = resolve(ev, trace_info())
    for cpu in range(4):
        agent = f"guest.{cpu}"
        regs = r.filter((pl.col("agent") == agent) & (pl.col("op") == "sysreg"))
        sctlr = regs.filter(pl.col("sysreg") == "SCTLR_EL1")["value"].to_list()
        assert sctlr[0] & SCTLR_M == 0
        assert sctlr[-1] & (SCTLR_M | SCTLR_C | SCTLR_I) == SCTLR_M | SCTLR_C | SCTLR_I
        assert LINUX_MAIR in regs.filter(pl.col("sysreg") == "MAIR_EL1")["value"].to_list()
        off = r.filter((pl.col("agent") == agent) & (pl.col("op") == "write") & (pl.col("type_source") == "mmu-off"))
        assert off.height > 0 and (off["mem_type"] == "dev-ngnrne").all()


def test_profiles_have_what_they_promise(mixed):
    info = trace_info()
    fb = next(r for r in info.regions if r.name == "fb")
    r = resolve(mixed, info)
    # the frame buffer is drawn through Normal NC and scanned out by the host through Write-Back
    draws = r.filter((pl.col("region") == "fb") & (pl.col("side") == "guest") & (pl.col("op") == "write"))
    assert draws.height > 0 and (draws["path"] == "N").mean() > 0.9
    assert r.filter((pl.col("agent") == "host.vnc") & (pl.col("path") == "C")).height > 0
    assert fb.shared
    # DMA by coherent (C) and non-coherent (N) devices
    dev = r.filter(pl.col("side") == "dev")
    assert set(dev["path"].unique()) == {"C", "N"}
    # maintenance at realistic rates: some, not most; ZVA and set/way and IALLU present
    cmos = mixed.filter(pl.col("op") == "cmo")
    assert 0.005 < cmos.height / mixed.height < 0.2
    assert {"dc.zva", "dc.civac", "dc.cvau", "ic.ivau"} <= set(cmos["cmo"].unique())
    big = synth_frame(400_000, seed=5, profile="mixed")["cmo"].unique().to_list()
    assert {"dc.cisw", "ic.ialluis"} & set(big)


def test_cli_writes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "s.parquet"
    runner = CliRunner()
    r = runner.invoke(app, ["synth", "--events", "3000", "--seed", "1", "--profile", "boot", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(out).height == 3000
    r = runner.invoke(app, ["synth", "--events", "3000", "-o", str(out)])
    assert r.exit_code == 2 and "--force" in r.output
    r = runner.invoke(app, ["synth", "--events", "3000", "--profile", "nope", "-o", str(tmp_path / "x.parquet")])
    assert r.exit_code == 2 and "--profile" in r.output
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("profile", ["boot", "mixed"])
def test_only_maintenance_events_name_a_maintenance_operation(profile):
    """Regression: a boot slot drawn as maintenance then turned into a register write kept its cmo
    (a SCTLR_EL1 write that also said dc.cisw). trace-v1: cmo is null unless op is cmo."""
    df = synth_frame(200_000, seed=1, profile=profile)
    assert df.filter(pl.col("cmo").is_not_null() & (pl.col("op") != "cmo")).height == 0
    assert df.filter((pl.col("op") == "sysreg") & pl.col("sysreg").is_null()).height == 0
