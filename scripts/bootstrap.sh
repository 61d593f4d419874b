#!/usr/bin/env bash
# Sets up a bare Debian machine for hivedata: system libraries, Python packages, the native build.
# Idempotent: installs only what is missing. Runs as root, or through sudo when available.
# On macOS the system libraries come from Homebrew instead (untested by CI: see docs/building.md).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/python_env.sh
# 1. System packages the native build links against (setup.py finds them with pkg-config).
if [ "$(uname -s)" = Darwin ]; then
  if ! command -v brew >/dev/null 2>&1; then
    echo "bootstrap: install Homebrew (https://brew.sh), then: brew install curl jpeg-turbo pkg-config" >&2
    exit 1
  fi
  need=()
  for formula in curl jpeg-turbo; do brew list --versions "$formula" >/dev/null 2>&1 || need+=("$formula"); done
  command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
  if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: brew install ${need[*]}"
    brew install "${need[@]}"
  fi
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "bootstrap: not root and no sudo: install libcurl4-openssl-dev libjpeg62-turbo-dev pkg-config yourself" >&2
    fi
  fi

  need=()
  for pkg in libcurl4-openssl-dev libjpeg62-turbo-dev pkg-config g++ make; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
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
