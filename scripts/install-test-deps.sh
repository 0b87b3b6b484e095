#!/bin/sh
# Install what the test suite needs beyond the Python packages: Debian's
# chromium, which tests/test_reports_html.py drives headless to load the HTML
# report. Idempotent: does nothing when a chromium is already on PATH.
#
#   sh scripts/install-test-deps.sh
set -eu

have_chromium() {
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

if have_chromium; then
    echo "install-test-deps: chromium already installed: $(command -v chromium || command -v chromium-browser)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: chromium is missing and apt-get is not available; install chromium by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "install-test-deps: installing chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale or absent on a fresh machine; another apt
# process may hold the lock for a while, so wait for it.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -q
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -q chromium
have_chromium
echo "install-test-deps: chromium installed: $(command -v chromium || command -v chromium-browser)"
