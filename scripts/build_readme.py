"""Assemble README.md from the sections in docs/readme/ (each owned next to its code).

    python scripts/build_readme.py          # rewrite README.md
    python scripts/build_readme.py --check  # exit 1 if README.md is stale (tests run this)

Some sections are themselves generated (the mitigation catalog from the
registry), so the README cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["00-intro", "ingest", "20-analyze", "mitigations", "reports", "performance", "real-inputs",
            "recording", "90-development"]


def build() -> str:
    parts = [(ROOT / "docs" / "readme" / f"{name}.md").read_text().strip() for name in SECTIONS]
    return "\n\n".join(parts) + "\n"


def main() -> int:
    text = build()
    readme = ROOT / "README.md"
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            print("README.md is stale: run python scripts/build_readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
