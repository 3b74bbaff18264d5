#!/usr/bin/env bash
# Install Debian's Chromium and its WebDriver, which the web page's tests drive headless through Selenium
# (tests/test_web.py). Skips what is present; uses sudo when not root.
# Usage: bash scripts/install-chromium.sh
set -euo pipefail

bash "$(dirname "$0")/apt-install-missing.sh" chromium chromium-driver
command -v chromedriver >/dev/null || { echo "chromedriver not found after installing chromium-driver" >&2; exit 1; }
