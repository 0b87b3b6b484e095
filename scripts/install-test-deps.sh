#!/bin/sh
# Install what the test suite needs beyond the Python packages, from Debian:
#  - chromium, which tests/test_reports_html.py drives headless to load the HTML report;
#  - qemu-system-common, for QEMU's own /usr/share/qemu/trace-events-all, which
#    tests/test_import_trace_events.py parses whole (every event format QEMU has).
# Idempotent: installs only what is missing, and nothing when all is there.
#
#   sh scripts/install-test-deps.sh
set -eu

have_chromium() {
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

TRACE_EVENTS=/usr/share/qemu/trace-events-all
missing=""
have_chromium || missing="$missing chromium"
[ -f "$TRACE_EVENTS" ] || missing="$missing qemu-system-common"

if [ -z "$missing" ]; then
    echo "install-test-deps: chromium ($(command -v chromium || command -v chromium-browser)) and $TRACE_EVENTS already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: missing:$missing, and apt-get is not available; install them by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "install-test-deps: installing$missing with apt-get"
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale or absent on a fresh machine; another apt
# process may hold the lock for a while, so wait for it.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -q
# shellcheck disable=SC2086 # one word per package
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -q $missing
have_chromium
[ -f "$TRACE_EVENTS" ]
echo "install-test-deps: installed$missing"
