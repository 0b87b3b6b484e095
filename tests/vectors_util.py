"""Read the verdicts a worked vector states for itself (../shared/design/vectors/README.md).

``#! check M1 M2``   the mitigations the verdicts cover;
``#! options ARGS``  extra ``tracekit analyze`` arguments;
``EVENT  #! M1,M2 KIND/CAUSE [M3 KIND/CAUSE ...]``  this line is reported with
KIND/CAUSE under exactly the listed mitigations (and under none of the other
checked ones). A line with no annotation is reported under none of them.

The mitigation tests use this parser (kept here, not in tracekit.testing, which
the lead owns) and compare the set (mitigation, kind, cause, src_line).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

#: The design's vectors, and the in-repo copy (tests/vectors/) that travels with the tree.
VECTOR_DIRS = (Path(__file__).resolve().parent / "vectors",
               Path(__file__).resolve().parents[2] / "shared" / "design" / "vectors")


def vector_files() -> list[Path]:
    """Every worked vector found, in-repo copy first (both are tested when both exist)."""
    return [p for d in VECTOR_DIRS if d.is_dir() for p in sorted(d.glob("*.tkt"))]


@dataclass
class Vector:
    path: Path
    check: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    #: {(mitigation, kind, cause, src_line)}
    expected: set[tuple[str, str, str, int]] = field(default_factory=set)

    def analyze_kwargs(self) -> dict[str, Any]:
        """``#! options`` as keyword arguments of tracekit.analyze.analyze."""
        kw: dict[str, Any] = {}
        it = iter(self.options)
        for opt in it:
            name, _, value = opt.partition("=")
            if not value:
                value = next(it)
            if name == "--speculation":
                kw["speculation"] = value
            elif name == "--line-size":
                kw["line_size"] = int(value, 0)
            elif name == "--engine":
                kw["engine"] = value
            else:
                raise ValueError(f"{self.path}: expected --speculation/--line-size/--engine, found {opt!r}")
        return kw


def parse_vector(path: str | Path) -> Vector:
    """The annotations of a vector file; raises ValueError on a malformed one."""
    path = Path(path)
    v = Vector(path)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        before, sep, note = line.partition("#!")
        if not sep:
            continue
        words = shlex.split(note, comments=False)
        if not before.strip():
            if words[:1] == ["check"]:
                v.check += words[1:]
            elif words[:1] == ["options"]:
                v.options += words[1:]
            else:
                raise ValueError(f"{path}:{n}: expected '#! check' or '#! options', found {note.strip()!r}")
            continue
        if len(words) % 2:
            raise ValueError(f"{path}:{n}: expected pairs 'M1,M2 KIND/CAUSE', found {note.strip()!r}")
        for ms, verdict in zip(words[::2], words[1::2]):
            kind, _, cause = verdict.partition("/")
            if not cause:
                raise ValueError(f"{path}:{n}: expected KIND/CAUSE, found {verdict!r}")
            for m in ms.split(","):
                v.expected.add((m, kind, cause, n))
    if not v.check:
        v.check = ["none"]
    return v


def observed(findings: pl.DataFrame) -> set[tuple[str, str, str, int]]:
    """{(mitigation, kind, cause, src_line)} of a findings frame."""
    return {tuple(r) for r in findings.select("mitigation", "kind", "cause", "src_line").iter_rows()}
