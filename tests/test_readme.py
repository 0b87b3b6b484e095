"""The README a newcomer reads: assembled from docs/readme/, starting with exactly two commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_assembled_from_its_sections():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_readme.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second_word_for_word():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].startswith("python3 -m venv .venv") and "tracekit analyze sample-traces/" in first_block[0]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [first_block[1]]
    sample = re.search(r"tracekit analyze (sample-traces/\S+)", first_block[0]).group(1)
    assert (ROOT / sample).is_file()


def test_every_command_is_documented_in_the_readme():
    from tracekit.cli import app

    text = (ROOT / "README.md").read_text()
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert set(names) >= {"ingest", "export", "schema", "analyze", "report", "mitigations", "synth"}
    for name in names:
        assert f"tracekit {name}" in text, name


def test_the_analyze_output_shown_in_the_readme_is_what_tracekit_prints(monkeypatch):
    from typer.testing import CliRunner

    from tracekit.cli import app

    text = (ROOT / "README.md").read_text()
    block = re.search(r"```console\n\$ tracekit analyze (sample-traces/boot-mmu-off.tkt[^\n]*)\n(.*?)```", text,
                      flags=re.S)
    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(app, ["analyze", *block.group(1).split()])
    assert r.exit_code == 0 and r.stdout == block.group(2)
