"""The console script's way out: it skips the interpreter's teardown (`tracekit.cli.main`),
so these check, as a user's shell sees it, that nothing is lost by it: every line printed,
every exit status kept, a thread still at work waited for."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from typer.testing import CliRunner

from tracekit.cli import app

ROOT = Path(__file__).resolve().parents[1]
RING = ROOT / "sample-traces" / "virtio-ring.tkt"
# stdout buffered as a user's shell has it (a CI may set PYTHONUNBUFFERED, which would hide a
# missing flush)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def tracekit(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracekit", *args], capture_output=True, text=True, cwd=ROOT, env=ENV,
                          **kw)


def test_a_piped_summary_arrives_whole():
    # the same command through typer's runner (no console script, a normal return)
    expected = CliRunner().invoke(app, ["analyze", str(RING), "-m", "all"])
    assert expected.exit_code == 0, expected.output
    r = tracekit("analyze", str(RING), "-m", "all")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected.stdout and r.stdout.count("\n") > 20


def test_the_output_file_is_complete_when_the_process_has_left(tmp_path):
    out, expected = tmp_path / "f.parquet", tmp_path / "expected.parquet"
    assert CliRunner().invoke(app, ["analyze", str(RING), "-m", "all", "-o", str(expected), "-q"]).exit_code == 0
    r = tracekit("analyze", str(RING), "-m", "all", "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert pq.read_metadata(out).metadata == pq.read_metadata(expected).metadata
    assert pl.read_parquet(out).equals(pl.read_parquet(expected)) and pl.read_parquet(out).height > 0


def test_bad_input_keeps_its_status_and_message(tmp_path):
    r = tracekit("analyze", str(tmp_path / "missing.tkt"))
    assert r.returncode == 2
    assert r.stderr == f"tracekit: error: {tmp_path / 'missing.tkt'}: expected an input file, found no such file\n"


def test_fail_on_keeps_status_one():
    r = tracekit("analyze", str(RING), "--fail-on", "stale-read,lost-write", "--quiet")
    assert r.returncode == 1


def run_leave(status_code: str, body: str = "") -> subprocess.CompletedProcess:
    script = textwrap.dedent(body) + f"\nfrom tracekit.cli import _leave\n_leave({status_code})\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=ENV)


def test_a_thread_still_at_work_is_waited_for(tmp_path):
    done = tmp_path / "done"
    r = run_leave("0", f"""
        import threading, time, pathlib
        def late():
            time.sleep(0.5)
            pathlib.Path({str(done)!r}).write_text("written")
        threading.Thread(target=late).start()
    """)
    assert r.returncode == 0, r.stderr
    assert done.read_text() == "written"


def test_exit_with_text_prints_it_and_fails_like_sys_exit():
    r = run_leave("'stopped here'", "print('before', end='')")  # unflushed stdout, too
    assert (r.returncode, r.stderr, r.stdout) == (1, "stopped here\n", "before")
    assert run_leave("None").returncode == 0
    assert run_leave("3").returncode == 3
