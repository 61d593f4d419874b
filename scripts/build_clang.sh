#!/usr/bin/env bash
# Builds hivedata._native with clang (CC=clang CXX=clang++, warnings are errors) into build/clang and runs
# native tests on that build. The normal editable build is left untouched. Linux and macOS.
#   bash scripts/build_clang.sh                      # the default native tests
#   bash scripts/build_clang.sh tests/unit/test_decode_hostile.py -k truncated
# Env: CLANG_CC / CLANG_CXX pick the compilers (e.g. clang-17), HIVEDATA_WERROR=0 keeps warnings as warnings.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/build/clang
PY=${PYTHON:-python3}
CC_BIN=${CLANG_CC:-clang}
CXX_BIN=${CLANG_CXX:-clang++}

if ! command -v "$CXX_BIN" >/dev/null 2>&1 || ! command -v "$CC_BIN" >/dev/null 2>&1; then
  if [ "$(uname -s)" = Darwin ]; then
    echo "build_clang: $CXX_BIN not found: install the Xcode command line tools (xcode-select --install)" >&2
  else
    echo "build_clang: $CXX_BIN not found: install clang (apt-get install clang)" >&2
  fi
  exit 1
fi
echo "build_clang: $("$CXX_BIN" --version | head -n 1)"

rm -rf "$OUT/lib"
mkdir -p "$OUT/lib"
WERROR=${HIVEDATA_WERROR-1}
[ "$WERROR" = 0 ] && WERROR=""
# the whole log is kept: a warning or an error is there with the compiler's own words
if ! CC=$CC_BIN CXX=$CXX_BIN HIVEDATA_WERROR=$WERROR "$PY" setup.py build_ext \
    --build-temp "$OUT/tmp" --build-lib "$OUT/lib" >"$OUT/build.log" 2>&1; then
  grep -E "error|warning" "$OUT/build.log" | head -n 40 >&2 || tail -n 20 "$OUT/build.log" >&2
  echo "build_clang: the clang build failed (whole log: $OUT/build.log)" >&2
  exit 1
fi
if grep -q "warning:" "$OUT/build.log"; then
  grep "warning:" "$OUT/build.log" >&2
  echo "build_clang: clang warned (whole log: $OUT/build.log)" >&2
fi
# the package's Python files next to the clang extension (portable: no GNU cp --parents)
"$PY" - "$ROOT/hivedata" "$OUT/lib/hivedata" <<'PYEOF'
import shutil, sys
shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
PYEOF

export PYTHONPATH="$OUT/lib:$ROOT"
# -P: do not put the checkout first on sys.path, so the clang build is the one imported
"$PY" -P -c "import hivedata._native as n; assert n.__file__.startswith('$OUT'), n.__file__; print('clang build:', n.__file__)"
if [ $# -eq 0 ]; then
  set -- tests/unit/test_native_basics.py tests/unit/test_decode.py tests/unit/test_decode_hostile.py \
    tests/unit/test_read_plan.py
fi
"$PY" -P -m pytest -q -p no:cacheprovider "$@"
