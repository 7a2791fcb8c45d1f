#!/usr/bin/env bash
# What the test suite needs that pip cannot install: a Chromium for the web page's test, driven through
# Playwright (whose own browser download cannot work offline). Installed here when the machine allows
# it (Debian or Ubuntu, as root or with passwordless sudo); otherwise one sentence says what to install,
# and `make test` stops before running anything.
set -euo pipefail
BROWSER="${DEEPFAKE_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$BROWSER" ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        SUDO=""
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        SUDO="none"
    fi
    if [ "$SUDO" != "none" ]; then
        echo "Installing Debian's chromium for the web page's test (once)..." >&2
        $SUDO apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
        if [ -x "$BROWSER" ]; then
            exit 0
        fi
    fi
fi
echo "make test needs Chromium at $BROWSER for the web page's test: install it (Debian/Ubuntu: \`sudo apt-get install chromium\`; elsewhere your distribution's chromium package, or point DEEPFAKE_CHROMIUM at a Chromium binary) and run make test again." >&2
exit 1
