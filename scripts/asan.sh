#!/usr/bin/env bash
# Builds hivedata._native with AddressSanitizer + UBSan into build/asan and runs the native tests on it
# (hostile inputs, faults, fork, exit, Ctrl-C). The normal editable build is left untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/build/asan
PY=${PYTHON:-python3}

rm -rf "$OUT/lib"
mkdir -p "$OUT/lib"
HIVEDATA_SANITIZE=1 "$PY" setup.py -q build_ext --build-temp "$OUT/tmp" --build-lib "$OUT/lib" >/dev/null
# the package's Python files next to the sanitized extension
(cd hivedata && find . -name "*.py" -exec cp --parents {} "$OUT/lib/hivedata/" \;)

ASAN_LIB=$(g++ -print-file-name=libasan.so)
UBSAN_LIB=$(g++ -print-file-name=libubsan.so)
export LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB"
# allocator_may_return_null: an impossible allocation is std::bad_alloc (which the code handles), not an ASan report
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_init_order=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH="$OUT/lib:$ROOT"
# -P: do not put the checkout first on sys.path, so the sanitized build is the one imported
"$PY" -P -c "import hivedata._native as n, sys; assert n.__file__.startswith('$OUT'), n.__file__; print('sanitized build:', n.__file__)"
if [ $# -eq 0 ]; then
  set -- tests/unit/test_native_basics.py tests/integration/test_fetch.py tests/integration/test_faults.py \
    tests/integration/test_process_hazards.py tests/unit/test_decode.py tests/unit/test_decode_hostile.py \
    tests/integration/test_loader.py tests/integration/test_shards.py tests/integration/test_block_reads.py \
    tests/unit/test_read_plan.py tests/unit/test_loader_memory.py tests/unit/test_local_source.py \
    tests/integration/test_transport_faults.py tests/integration/test_https_transport.py \
    tests/integration/test_ranged_integrity.py tests/unit/test_ranged_crc.py tests/unit/test_decode_verdict.py \
    tests/unit/test_decode_bounds.py tests/integration/test_verify_cli.py tests/integration/test_native_lifetimes.py \
    tests/unit/test_fuzz_replay.py -k "not dali"  # DALI's own libraries do not load under ASan
fi
"$PY" -P -m pytest -q -p no:cacheprovider "$@"
