"""Every bundled sample trace gives, under every mitigation, the findings its comment block predicts.

The verdicts are the samples' own ``#!`` annotations, reasoned from the
coherence model (each sample's comment block says why); both engines run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.testing import assert_verdicts

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "sample-traces").glob("*.tkt"))


def test_there_are_samples():
    assert {p.name for p in SAMPLES} >= {"boot-mmu-off.tkt", "framebuffer-nc.tkt", "virtio-ring.tkt",
                                         "dma-noncoherent.tkt"}


@pytest.mark.parametrize("engine", ["reference", "fast"])
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_findings_match_its_annotations(path, engine):
    assert_verdicts(path.read_text(), engine=engine)
