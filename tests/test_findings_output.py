"""`analyze(..., output=)`: the findings are written mitigation by mitigation while the next one is
replayed, and the file is the one ``Analysis.write`` makes; on an error, no file is left.

Rule (README, "Bad input"; docs/architecture.md): an output appears complete or not at all.
"""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tracekit.analyze import analyze, load_analysis
from tracekit.errors import OutputExistsError
from tracekit.mitigations import register_mitigation, unregister_mitigation
from tracekit.schema import read_metadata
from tracekit.synth import synth


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return synth(20_000, tmp_path_factory.mktemp("o") / "t.parquet", seed=2, profile="mixed")


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_streamed_findings_file_is_the_written_one(trace, tmp_path, engine):
    specs = ["none", "mair-trap", "guest-boot-inval"] if engine == "fast" else ["none", "mair-trap"]
    streamed = analyze(trace, specs, engine=engine, output=tmp_path / "s.parquet")
    streamed.write(tmp_path / "w.parquet")
    assert_frame_equal(pl.read_parquet(tmp_path / "s.parquet"), pl.read_parquet(tmp_path / "w.parquet"))
    assert read_metadata(tmp_path / "s.parquet") == read_metadata(tmp_path / "w.parquet")
    back = load_analysis(tmp_path / "s.parquet")
    assert back.mitigations == specs and back.findings.height == streamed.findings.height > 0
    assert back.costs["mair-trap"].retyped_accesses == streamed.costs["mair-trap"].retyped_accesses > 0


def test_a_failing_mitigation_leaves_no_findings_file(trace, tmp_path):
    def broken(frame, ctx):
        raise RuntimeError("broken on purpose")

    register_mitigation("broken-on-purpose", broken, actor="guest")
    try:
        with pytest.raises(Exception, match="broken on purpose"):
            analyze(trace, ["none", "mair-trap", "broken-on-purpose"], output=tmp_path / "f.parquet")
    finally:
        unregister_mitigation("broken-on-purpose")
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary file


def test_an_existing_findings_file_needs_force(trace, tmp_path):
    out = tmp_path / "f.parquet"
    out.write_text("keep me")
    with pytest.raises(OutputExistsError):
        analyze(trace, ["none"], output=out)
    assert out.read_text() == "keep me"
    analyze(trace, ["none"], output=out, force=True)
    assert pl.read_parquet(out).height == load_analysis(out).findings.height


def test_mitigations_are_applied_while_the_first_replay_runs_and_findings_stay_in_spec_order(trace, tmp_path,
                                                                                           monkeypatch):
    """analyze applies up to _AHEAD mitigations while the first replay (which makes the layout
    the others reuse) runs alone; replays then finish in any order, the findings do not."""
    import importlib
    import threading
    import time

    analyze_mod = importlib.import_module("tracekit.analyze")
    fast = analyze_mod.get_engine("fast")
    first_done = threading.Event()
    applied_early: list[str] = []
    finished: list[str] = []

    def engine(frame, info, *, mitigation, **kw):
        if mitigation == "none":
            time.sleep(1.5)  # a long first replay (the three applies take ~0.1 s here)
        elif mitigation == "mair-trap":
            time.sleep(0.5)  # finishes after the next one
        found = fast(frame, info, mitigation=mitigation, **kw)
        finished.append(mitigation)
        if mitigation == "none":
            first_done.set()
        return found

    real_apply = importlib.import_module("tracekit.mitigations").apply_mitigation

    def apply(resolved, spec, info, **kw):
        out = real_apply(resolved, spec, info, **kw)
        if spec != "none" and not first_done.is_set():
            applied_early.append(spec)
        return out

    monkeypatch.setattr(analyze_mod, "get_engine", lambda name: engine)
    monkeypatch.setattr("tracekit.mitigations.apply_mitigation", apply)
    specs = ["none", "mair-trap", "guest-boot-inval", "coherent-device", "s2fwb", "host-cmo"]
    got = analyze(trace, specs, output=tmp_path / "f.parquet")
    assert applied_early == specs[1:1 + analyze_mod._AHEAD]
    assert finished.index("guest-boot-inval") < finished.index("mair-trap")  # out of order...
    monkeypatch.undo()
    want = analyze(trace, specs)
    assert_frame_equal(got.findings, want.findings)  # ...but kept in spec order
    assert got.findings["mitigation"].unique(maintain_order=True).to_list() == \
        [s for s in specs if s in set(want.findings["mitigation"])]
    assert_frame_equal(pl.read_parquet(tmp_path / "f.parquet"), want.findings)


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_findings_not_kept_come_back_from_the_file_as_they_were(trace, tmp_path, engine, monkeypatch):
    """keep_findings=False: each mitigation's findings go to the file and are let go (one
    mitigation at a time); the Analysis is read back from the file: the same findings, costs
    and metadata as a run that kept them, and the transformed frames when asked for."""
    from tracekit.errors import UsageError

    specs = ["none", "mair-trap", "guest-dma-cmo", "kvm-fault-clean"]
    kept = analyze(trace, specs, engine=engine, output=tmp_path / "k.parquet")
    let_go = analyze(trace, specs, engine=engine, output=tmp_path / "g.parquet", keep_findings=False,
                     keep_transformed=True)
    assert let_go.compact_findings.height > 0
    assert_frame_equal(let_go.compact_findings, kept.compact_findings)
    assert {s: c.to_dict() for s, c in let_go.costs.items()} == {s: c.to_dict() for s, c in kept.costs.items()}
    assert read_metadata(tmp_path / "g.parquet") == read_metadata(tmp_path / "k.parquet")
    assert list(let_go.transformed) == specs and let_go.transformed["guest-dma-cmo"].height > kept.events.height
    assert let_go.summary() == kept.summary()
    with pytest.raises(UsageError, match="output"):
        analyze(trace, specs, keep_findings=False)
    # the rows are read from the file when first used, not before
    import importlib

    analysis_module = importlib.import_module("tracekit.analyze")
    lazy = analysis_module.load_analysis(tmp_path / "g.parquet", lazy=True)
    reads = []
    real = analysis_module._read_findings
    monkeypatch.setattr(analysis_module, "_read_findings", lambda path: (reads.append(path), real(path))[1])
    assert lazy.mitigations == specs and reads == []
    assert_frame_equal(lazy.compact_findings, kept.compact_findings)
    assert reads == [tmp_path / "g.parquet"]
    assert_frame_equal(lazy.findings, kept.findings)
    assert len(reads) == 1


@pytest.mark.parametrize("replays", [1, 2])
def test_findings_on_disk_replay_as_many_at_once_as_asked_with_three_applied_ahead(trace, tmp_path, monkeypatch,
                                                                                   replays):
    """keep_findings=False is for short memory: at most ``replays`` replays at once (two by
    default, one for the least memory); three mitigations are still applied while the first
    replay runs alone (their frames share the resolved frame's columns; a core would wait)."""
    import importlib
    import threading
    import time

    analyze_mod = importlib.import_module("tracekit.analyze")
    fast = analyze_mod.get_engine("fast")
    lock = threading.Lock()
    state = {"active": 0, "most_active": 0, "started": 0, "applied": 0, "most_ahead": 0}

    def engine(frame, info, *, mitigation, **kw):
        with lock:
            state["active"] += 1
            state["started"] += 1
            state["most_active"] = max(state["most_active"], state["active"])
        time.sleep(1.0 if mitigation == "none" else 0.3)  # the next applies happen meanwhile
        try:
            return fast(frame, info, mitigation=mitigation, **kw)
        finally:
            with lock:
                state["active"] -= 1

    real_apply = importlib.import_module("tracekit.mitigations").apply_mitigation

    def apply(resolved, spec, info, **kw):
        out = real_apply(resolved, spec, info, **kw)
        with lock:
            state["applied"] += 1
            state["most_ahead"] = max(state["most_ahead"], state["applied"] - state["started"])
        return out

    monkeypatch.setattr(analyze_mod, "get_engine", lambda name: engine)
    monkeypatch.setattr("tracekit.mitigations.apply_mitigation", apply)
    specs = ["none", "mair-trap", "guest-boot-inval", "coherent-device", "s2fwb", "host-cmo"]
    got = analyze(trace, specs, output=tmp_path / "f.parquet", keep_findings=False, replays=replays)
    assert state["started"] == len(specs) and state["most_active"] == replays
    assert state["most_ahead"] == analyze_mod._AHEAD == 3
    monkeypatch.undo()
    assert_frame_equal(got.compact_findings, analyze(trace, specs).compact_findings)
