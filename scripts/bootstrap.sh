#!/usr/bin/env bash
# Sets up a bare Debian machine for hivedata: system libraries, Python packages, the native build.
# Idempotent: installs only what is missing. Runs as root, or through sudo when available.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/python_env.sh
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "bootstrap: not root and no sudo: install libcurl4-openssl-dev libjpeg62-turbo-dev yourself" >&2
  fi
fi

# 1. System packages the native build links against.
need=()
for pkg in libcurl4-openssl-dev libjpeg62-turbo-dev g++ make; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 2. Python packages. torch is pinned: an unpinned torch pulls gigabytes of CUDA wheels.
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
"$PY" - <<'PYEOF' || pip_install "torch==2.13.0"
import importlib.metadata as m, sys
sys.exit(0 if m.version("torch").startswith("2.13.0") else 1)
PYEOF
pip_install "setuptools>=64" wheel "pybind11>=2.12"

# 3. hivedata itself (builds csrc/ into hivedata/_native) with its dev extras.
pip_install --no-build-isolation -e ".[dev]"
"$PY" -c "import hivedata._native" && echo "bootstrap: hivedata is ready"
