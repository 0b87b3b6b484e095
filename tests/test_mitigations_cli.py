"""`tracekit mitigations` and the README fragment generated from the same registry."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from tracekit.cli import app
from tracekit.mitigations import BUILTIN_ORDER, MITIGATIONS
from tracekit.mitigations._docs import README_FRAGMENT, readme_fragment

runner = CliRunner()


def test_lists_every_mitigation_with_actor_changes_and_limits():
    r = runner.invoke(app, ["mitigations"])
    assert r.exit_code == 0, r.output
    headers = re.findall(r"^(\S+)  \((.+)\)$", r.stdout, flags=re.M)
    assert headers == [(n, MITIGATIONS[n].actor) for n in BUILTIN_ORDER]
    assert r.stdout.count("  changes: ") == len(BUILTIN_ORDER) == r.stdout.count("  limits:  ")
    assert max(len(line) for line in r.stdout.splitlines()) <= 78


def test_json_lists_the_catalog_in_order():
    r = runner.invoke(app, ["mitigations", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [d["name"] for d in data] == list(BUILTIN_ORDER)
    assert set(data[0]) == {"name", "actor", "changes", "limits"}
    assert data[list(BUILTIN_ORDER).index("s2fwb")]["limits"] == MITIGATIONS["s2fwb"].limits


def test_selected_names_and_unknown_name():
    r = runner.invoke(app, ["mitigations", "s2fwb", "host-cmo", "--json"])
    assert [d["name"] for d in json.loads(r.stdout)] == ["s2fwb", "host-cmo"]
    r = runner.invoke(app, ["mitigations", "no-such"])
    assert r.exit_code == 2
    assert "unknown mitigation 'no-such'" in r.stderr and "kvm-fault-clean" in r.stderr
    assert r.stdout == "" and "Traceback" not in r.output


def test_readme_fragment_matches_the_registry():
    """docs/readme/mitigations.md is generated (python -m tracekit.mitigations._docs): it cannot drift."""
    assert README_FRAGMENT.read_text() == readme_fragment(), "run: python -m tracekit.mitigations._docs"
    text = README_FRAGMENT.read_text()
    assert text.startswith("## ")
    for name in BUILTIN_ORDER:
        assert f"| `{name}` | {MITIGATIONS[name].actor} |" in text


def test_readme_custom_mitigation_example_runs(tmp_path, monkeypatch):
    """The README's Python example registers a mitigation that analyze accepts by name."""
    from tracekit.mitigations import unregister_mitigation

    code = re.search(r"```python\n(.*?)```", README_FRAGMENT.read_text(), flags=re.S).group(1)
    (tmp_path / "trace.tkt").write_text(
        "@region ram 0x40000000 16M ram\nguest sysreg MAIR_EL1 0x44ff\nguest sysreg SCTLR_EL1 0x1005\n"
        "guest write 0x40000000 8 idx=1\nhost read 0x40000000 8\n")
    monkeypatch.chdir(tmp_path)
    code = code.replace('analyze("trace.tkt", ["none", "guest-wb-everywhere"]).summary()',
                        'result = analyze("trace.tkt", ["none", "guest-wb-everywhere"], engine="reference")')
    ns: dict = {}
    try:
        exec(compile(code, "README", "exec"), ns)
        f = ns["result"].findings
        assert f.filter(f["mitigation"] == "none").height == 1
        assert f.filter(f["mitigation"] == "guest-wb-everywhere").height == 0
    finally:
        unregister_mitigation("guest-wb-everywhere")
