#!/usr/bin/env bash
# The CUDA kernels' race check: the emulated kernel tests built with ThreadSanitizer (build-tsan/), where the
# CUDA emulator reports any two threads of a CTA that touch the same memory with no barrier between them
# (kernels/emu/cuemu.h, "Races"). Without a GPU this is what stands in for compute-sanitizer's racecheck.
#
#   bash scripts/racecheck.sh [CTEST_REGEX]     default: every emulated kernel test (slow: ThreadSanitizer on the
#                                               emulator; a regex such as "cuda flash" runs a part)
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPTOOL_TSAN=ON -DPTOOL_CUDA=OFF \
  -DPTOOL_BENCH=OFF >/dev/null
cmake --build build-tsan --target test_kernels_emu cuemu_race_demo
# One OpenMP thread: the CPU reference the tests compare with runs in libgomp, which ThreadSanitizer cannot see
# into. The test that runs a racy kernel on purpose, and the command-line tests (another binary), are left out.
export OMP_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
ctest --test-dir build-tsan --output-on-failure -j2 --timeout 3000 -R "${1:-kernels \(emulated\)}" \
  -E "exposing a missing barrier"
