#!/usr/bin/env bash
# Sets the machine up (only what is missing), then runs the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
source scripts/python_env.sh
"$PY" -m hivedata demo "$@"
