#!/usr/bin/env bash
# Set up everything the whole test suite needs, then run it:
#  - Debian packages the tests use for real (headless chromium for the HTML report),
#  - a virtual environment with tracekit and its test extras.
# Safe to run again: each step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,html]'
exec .venv/bin/python -m pytest -q "$@"
