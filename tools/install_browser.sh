#!/usr/bin/env bash
# Debian's chromium for the browser tests (tests/e2e/test_ui_browser.py drives it with Playwright's
# executable_path; Playwright's own browser download is not used). chromium-driver comes along for
# WebDriver users. Idempotent: does nothing when /usr/bin/chromium is already there. Needs root, or sudo.
# `make browser` (python3 -m tools.browser ensure) runs this only when no Chrome/Chromium is installed
# anywhere it looks and the machine is Debian/Ubuntu with root or sudo; elsewhere it says what to install.
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "error: installing chromium needs root; run this script as root or install sudo" >&2
    echo "       (or install by hand: apt-get install chromium chromium-driver)" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: apt-get not found; install Debian's chromium and chromium-driver packages by hand" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y --no-install-recommends chromium chromium-driver
echo "installed: $(/usr/bin/chromium --version)"
