#!/usr/bin/env bash
# Install the Debian packages the synthetic corpora need: Festival and two of its diphone voices
# (kal, ked: US male) for the paired corpus (alignsts_cli/training/corpus.py), and for the phone
# recogniser's corpus (alignsts_cli/training/phones.py) also Festival's HTS voice slt (US female) and
# Flite with its voices (kal, awb, rms, slt). Skips what is present; uses sudo when not root.
# Usage: bash scripts/install-festival.sh
set -euo pipefail

bash "$(dirname "$0")/apt-install-missing.sh" festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts flite
command -v text2wave >/dev/null || { echo "text2wave not found after installing festival" >&2; exit 1; }
command -v flite >/dev/null || { echo "flite not found after installing it" >&2; exit 1; }
