#!/usr/bin/env bash
# Install Debian's Chromium and its WebDriver, which the web page's tests drive headless through Selenium
# (tests/test_web.py). Skips what is present; uses sudo when not root.
# Usage: bash scripts/install-chromium.sh
set -euo pipefail

packages=(chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "chromium and chromium-driver are already installed"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v chromedriver >/dev/null || { echo "chromedriver not found after installing chromium-driver" >&2; exit 1; }
