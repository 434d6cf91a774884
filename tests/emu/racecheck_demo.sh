#!/usr/bin/env bash
# cuemu as a race checker (tests/emu/cuemu_race_demo.cpp): the ordered kernels run clean and give their results in
# every build; in a ThreadSanitizer build (TSAN=1) each racy kernel is reported as a data race in that kernel.
#   racecheck_demo.sh DEMO_BINARY TSAN
set -uo pipefail
demo=$1
tsan=$2
export PTOOL_CUDA_EMULATOR=1 TSAN_OPTIONS="halt_on_error=0 exitcode=66 ${TSAN_OPTIONS:-}"
failed=0
for mode in ordered-syncthreads ordered-dynamic-smem ordered-syncwarp ordered-reuse atomics; do
  out=$("$demo" "$mode" 2>&1)
  rc=$?
  if [ $rc != 0 ] || grep -q ThreadSanitizer <<<"$out"; then
    echo "FAIL $mode: rc $rc, expected a clean run"
    echo "$out" | head -40
    failed=1
  else
    echo "ok   $mode: clean"
  fi
done
if [ "$tsan" = 1 ]; then
  for pair in missing-syncthreads:reverse_missing_syncthreads missing-syncwarp:lanes_missing_syncwarp \
    missing-barrier-before-reuse:rolling_sum plain-stores:count_by_plain_stores \
    blocks-overlap:blocks_overwrite_each_other; do
    mode=${pair%%:*} kernel=${pair#*:}
    out=$("$demo" "$mode" 2>&1)
    rc=$?
    if grep -q "WARNING: ThreadSanitizer: data race" <<<"$out" && grep -q "$kernel" <<<"$out" && [ $rc != 0 ]; then
      echo "ok   $mode: reported as a race in $kernel"
    else
      echo "FAIL $mode: rc $rc, expected a data race reported in $kernel"
      echo "$out" | head -40
      failed=1
    fi
  done
fi
exit $failed
