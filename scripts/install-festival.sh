#!/usr/bin/env bash
# Install the Debian packages the synthetic paired corpus (alignsts_cli/corpus.py) needs:
# Festival and two of its diphone voices (kal: US male, kdl: UK male). Skips what is present;
# uses sudo when not root. Usage: bash scripts/install-festival.sh
set -euo pipefail

packages=(festival festvox-kallpc16k festvox-kdlpc16k)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "festival and its voices are already installed"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v text2wave >/dev/null || { echo "text2wave not found after installing festival" >&2; exit 1; }
