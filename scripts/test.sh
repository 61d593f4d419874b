#!/usr/bin/env bash
# Sets the machine up (only what is missing), then lints and runs every test tier that runs here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
source scripts/python_env.sh
"$PY" -m ruff check .
"$PY" -m pytest -q "$@"
