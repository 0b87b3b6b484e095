"""The worked vectors of the design (../shared/design/vectors/) under every mitigation they check.

Rule: each vector's `#!` annotations are the verdicts coherence-model.md implies;
the findings under each checked mitigation must be exactly those
(mitigation, kind, cause, src_line). Both engines are run: they must agree.
"""

from __future__ import annotations

import pytest

from tracekit.analyze import analyze
from tracekit.mitigations import MITIGATIONS
from tracekit.trace import load

from vectors_util import observed, parse_vector, vector_files

VECTOR_FILES = vector_files()


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_vector_verdicts_per_mitigation(path, engine):
    v = parse_vector(path)
    assert all(m in MITIGATIONS for m in v.check), v.check
    kw = v.analyze_kwargs()
    kw.setdefault("engine", engine)
    result = analyze(load(str(path)), v.check, **kw)
    got = observed(result.findings)
    for m in v.check:
        want_m = {x for x in v.expected if x[0] == m}
        got_m = {x for x in got if x[0] == m}
        assert got_m == want_m, f"{path.name} under {m}: missing {sorted(want_m - got_m)}, unexpected {sorted(got_m - want_m)}"


def test_every_vector_checks_a_catalog_mitigation():
    assert VECTOR_FILES, "no worked vectors found"
    """The vectors exercise mitigations beyond `none` (so the test above covers the catalog)."""
    checked = {m for p in VECTOR_FILES for m in parse_vector(p).check}
    assert {"kvm-fault-clean", "kvm-cache-toggle", "mair-trap", "guest-boot-inval", "host-uncached"} <= checked
