#!/usr/bin/env bash
# Opt-in: replace Pillow with Pillow-SIMD (SSE4/AVX2 resize and colour conversion) in the Python
# environment that `$PYTHON` (default: python) belongs to. hivedata never does this by itself.
#
#   bash scripts/install_pillow_simd.sh            # build + install, then report pillow_is_simd()
#   PYTHON=/path/to/venv/bin/python bash scripts/install_pillow_simd.sh
#   SKIP_DEPS=1 bash scripts/install_pillow_simd.sh   # build deps already installed (no apt-get)
#
# Pillow-SIMD is built from source (there are no wheels): it needs a C compiler, the libjpeg(-turbo)
# and zlib headers, and the Python headers. On Debian/Ubuntu this script installs them with apt-get
# (through sudo when not root). The compiler flag follows the CPU: -mavx2 when it has AVX2, else
# -msse4 (a binary built with -mavx2 dies with SIGILL on a CPU without AVX2 - build on the machine
# that trains, or on one with the same CPU features).
#
# Revert to plain Pillow:
#   python -m pip uninstall -y pillow-simd && python -m pip install pillow
#
# Note: a later `pip install` of a package that depends on Pillow may pull Pillow back in over the
# top (both install the `PIL` package); `python -m hivedata.loader.decoders.simd` tells which one is loaded.
set -euo pipefail

PILLOW_SIMD_VERSION="${PILLOW_SIMD_VERSION:-12.1.1.post0}"   # newest on PyPI when written (`pip index versions pillow-simd`)
PYTHON="${PYTHON:-python}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf '[install_pillow_simd] %s\n' "$*"; }

# -- compiler flags from the CPU ----------------------------------------------------------------
if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
    SIMD_FLAG="-mavx2"
elif grep -qw sse4_2 /proc/cpuinfo 2>/dev/null || grep -qw sse4_1 /proc/cpuinfo 2>/dev/null; then
    SIMD_FLAG="-msse4"
else
    say "this CPU reports neither AVX2 nor SSE4 (or is not x86): Pillow-SIMD would not help; keeping Pillow"
    exit 1
fi
CC_CMD="${CC:-cc} ${SIMD_FLAG}"

# -- build dependencies (Debian / Ubuntu) -------------------------------------------------------
if [[ "${SKIP_DEPS:-0}" != "1" ]] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [[ "$(id -u)" != "0" ]]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            say "not root and no sudo: skipping apt-get (the build needs libjpeg-dev zlib1g-dev python3-dev"
            say "and a C compiler; if it fails, install those and rerun with SKIP_DEPS=1)"
            SKIP_DEPS=1
        fi
    fi
fi
if [[ "${SKIP_DEPS:-0}" != "1" ]] && command -v apt-get >/dev/null 2>&1; then
    # Debian names libjpeg-turbo's headers libjpeg62-turbo-dev, Ubuntu libjpeg-turbo8-dev;
    # libjpeg-dev is the virtual package both provide.
    JPEG_DEV="libjpeg-dev"
    if apt-cache show libjpeg62-turbo-dev >/dev/null 2>&1; then JPEG_DEV="libjpeg62-turbo-dev"; fi
    say "installing build dependencies: ${JPEG_DEV} zlib1g-dev build-essential"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${JPEG_DEV}" zlib1g-dev build-essential
fi

say "Python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
say "building pillow-simd==${PILLOW_SIMD_VERSION} with CC=\"${CC_CMD}\" (takes a minute or two)"

# Build first (into a temporary wheel directory), uninstall Pillow only once the build succeeded,
# so a failed build leaves the environment as it was.
WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT
# --no-binary pillow-simd (rather than :all:): build Pillow-SIMD itself from source, but let pip use
# wheels for the build backend (setuptools) that it installs into the isolated build environment.
CC="${CC_CMD}" "$PYTHON" -m pip wheel --no-deps --no-cache-dir --no-binary pillow-simd \
    --wheel-dir "$WHEELS" "pillow-simd==${PILLOW_SIMD_VERSION}"

"$PYTHON" -m pip uninstall -y pillow pillow-simd
if ! "$PYTHON" -m pip install --no-deps --no-index --find-links "$WHEELS" "pillow-simd==${PILLOW_SIMD_VERSION}"; then
    say "installing the built wheel failed; restoring Pillow"
    "$PYTHON" -m pip install pillow
    exit 1
fi

# -- report ----------------------------------------------------------------------------------------
cd "$REPO_ROOT"
PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - <<'EOF'
import PIL
from PIL import Image  # the compiled core must load (an AVX2 build on a non-AVX2 CPU fails here)

try:
    from hivedata.loader.decoders.simd import describe, pillow_is_simd
except ImportError:  # the script may run against an environment without hivedata's dependencies
    simd = ".post" in PIL.__version__
    print(f"PIL {PIL.__version__}: pillow_is_simd() = {simd} (version heuristic)")
else:
    simd = pillow_is_simd()
    print(describe())
    print(f"pillow_is_simd() = {simd}")
Image.new("RGB", (64, 64)).resize((32, 32), Image.BILINEAR)
raise SystemExit(0 if simd else 1)
EOF
say "done. Revert with: $PYTHON -m pip uninstall -y pillow-simd && $PYTHON -m pip install pillow"
