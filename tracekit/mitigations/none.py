"""``none``: the trace as recorded, the baseline every other mitigation is compared with."""

from __future__ import annotations

from .base import Frame, Mitigation, MitigationContext, register_mitigation


def _identity(frame: Frame, ctx: MitigationContext) -> Frame:
    return frame


NONE = register_mitigation(Mitigation(
    name="none",
    actor="—",
    changes="Nothing: the trace as recorded, the baseline the others are compared with.",
    limits="Fixes nothing.",
    apply=_identity,
    retypes_only=True,
    builtin=True,
))
