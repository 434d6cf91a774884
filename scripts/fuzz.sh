#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/*.cpp) with clang in build-fuzz/ and runs each for SECONDS (default 60)
# on a copy of its seed corpus fuzz/corpus_<name without fuzz_>/. The whole formats library is compiled with
# coverage instrumentation, ASan and UBSan, and with FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION (checksums are
# not enforced, so the fuzzer gets past them). Crash inputs land in build-fuzz/crashes/.
# Exit status: non-zero when a target fails to build or finds a bug.
#   usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
SECS=${1:-60}
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=$ROOT/build-fuzz

cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DPTOOL_FUZZ=ON -DPTOOL_SANITIZE=ON -DPTOOL_TESTS=OFF -DPTOOL_BENCH=OFF -DPTOOL_CUDA=OFF \
  "-DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION" >/dev/null

targets=()
for src in "$ROOT"/fuzz/*.cpp; do targets+=("$(basename "$src" .cpp)"); done
[ ${#targets[@]} -gt 0 ] || { echo "fuzz.sh: no fuzz targets in fuzz/" >&2; exit 1; }
cmake --build "$BUILD" --target "${targets[@]}"

mkdir -p "$BUILD/crashes"
status=0
for t in "${targets[@]}"; do
  seeds=$ROOT/fuzz/corpus_${t#fuzz_}
  work=$BUILD/corpus/$t          # grows across runs; the seeds in the repository stay as they are
  mkdir -p "$work"
  [ -d "$seeds" ] && cp -n "$seeds"/* "$work"/ 2>/dev/null || true
  log=$BUILD/$t.log
  echo "fuzz.sh: running $t for ${SECS}s (log $log)"
  set +e
  "$BUILD/$t" -max_total_time="$SECS" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix="$BUILD/crashes/$t-" "$work" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  echo "fuzz.sh: $t: ${execs:-?} executions in ${SECS}s, ${cov:-cov: ?}, corpus $(ls "$work" | wc -l) files, exit $rc"
  if [ $rc -ne 0 ]; then
    status=1
    echo "fuzz.sh: $t FAILED; the end of its log:" >&2
    tail -40 "$log" >&2
  fi
done
exit $status
