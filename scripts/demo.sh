#!/usr/bin/env bash
# Sets the machine up (only what is missing), then trains on the embedded default (train.py with no bucket).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
source scripts/python_env.sh
"$PY" train.py "$@"
