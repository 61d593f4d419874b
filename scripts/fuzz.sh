#!/usr/bin/env bash
# Fuzzing of what parses untrusted bytes (issue 12 item 6); see tests/fuzz/README.md.
#   scripts/fuzz.sh [seconds-per-harness]      (default 600 = 10 CPU-minutes each)
# 1. Builds the libFuzzer harness(es) in tests/fuzz/harnesses/ with clang -fsanitize=fuzzer,address,undefined
#    into build/fuzz, linking the csrc/*.cc they need directly (not the pybind module), and runs each one,
#    niced, one at a time, on a scratch copy of its seed corpus (tests/fuzz/corpus/<harness>/).
# 2. Runs the Hypothesis fuzz tests (tests/fuzz/test_*_fuzz.py: tar walker, shard index, labels, GCS listing)
#    with HIVEDATA_FUZZ_SECONDS per test.
# Crashes land in build/fuzz/artifacts/; minimize with `build/fuzz/<harness> -minimize_crash=1 <file>`.
# Env: FUZZ_ONLY=decode|python (run one part), CXX (default clang++).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-600}
OUT=build/fuzz
CXX=${CXX:-clang++}
PY=${PYTHON:-python3}
mkdir -p "$OUT/artifacts"

FLAGS=(-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -Icsrc)

build_decode() {
  "$CXX" "${FLAGS[@]}" tests/fuzz/harnesses/decode_fuzzer.cc csrc/jpeg_decoder.cc csrc/augment.cc \
    csrc/resample.cc -ljpeg -o "$OUT/decode_fuzzer"
}

run_libfuzzer() {  # name binary max_len
  local name=$1 bin=$2 max_len=$3 work="$OUT/corpus/$1"
  mkdir -p "$work"
  cp -n tests/fuzz/corpus/"$name"/* "$work"/ 2>/dev/null || true
  echo "== $name: ${SECS}s, max_len $max_len (log: $OUT/$name.log)"
  # -rss_limit_mb: a decode may legitimately take ~16 MP * 4 B plus libjpeg's buffers, under ASan
  /usr/bin/time -f "$name: %U s user + %S s system CPU, %e s wall, max RSS %M KB" nice -n 19 "$bin" "$work" -max_total_time="$SECS" -max_len="$max_len" -rss_limit_mb=2560 -timeout=30 \
    -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$name-" 2>&1 | tee "$OUT/$name.log" | grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|stat::|ERROR|SUMMARY|==[0-9]+==|CPU, " || true
  if grep -qE "ERROR: (libFuzzer|AddressSanitizer|UndefinedBehaviorSanitizer)|runtime error:|contract violated" \
      "$OUT/$name.log"; then
    echo "!! $name found a crash: see $OUT/$name.log and $OUT/artifacts/"
    return 1
  fi
}

status=0
ONLY=${FUZZ_ONLY:-all}
if [ "$ONLY" = all ] || [ "$ONLY" = decode ]; then
  build_decode
  run_libfuzzer decode "$OUT/decode_fuzzer" 65536 || status=1
fi
if [ "$ONLY" = all ] || [ "$ONLY" = python ]; then
  echo "== hypothesis: ${SECS}s per test"
  HIVEDATA_FUZZ_SECONDS=$SECS nice -n 19 "$PY" -m pytest -q -p no:cacheprovider tests/fuzz -m fuzz \
    -o addopts="" -s || status=1
fi
exit $status
