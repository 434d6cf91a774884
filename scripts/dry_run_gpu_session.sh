#!/usr/bin/env bash
# Runs bench/gpu_session.sh with SMOKE=1 on the host emulator of CUDA (kernels/emu), so that a broken command
# line, flag or summary in the script is found here and never costs a GPU session its device minutes.
#
#   bash scripts/dry_run_gpu_session.sh [DIR]     DIR defaults to build-emu (a build without nvcc: every program
#                                                 links the emulated kernels); the session's files go to DIR/session
#
# Every step must exit 0 except the PyTorch twin's where this machine has no torch. Figures mean nothing here.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-build-emu}
cmake -S . -B "$DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPTOOL_CUDA=OFF -DPTOOL_TESTS=ON -DPTOOL_BENCH=ON >/dev/null
cmake --build "$DIR" --target ptool test_kernels_emu bench_train bench_cuda_ops twin_parity_dump
ln -sf test_kernels_emu "$DIR/test_kernels"
rm -rf "$DIR/session"
mkdir -p "$DIR/session"
OUT=$PWD/$DIR/session PTOOL_CUDA_EMULATOR=1 SMOKE=1 BUDGET_S=3000 bash bench/gpu_session.sh "$DIR" >/dev/null
cat "$DIR/session/summary.txt"
has_torch=0
python3 -c 'import torch' 2>/dev/null && has_torch=1
bad=$(grep -E ' rc=' "$DIR/session/summary.txt" | grep -v ' rc=0 ' | { [ $has_torch = 1 ] && cat || grep -v '^torch_twin'; } || true)
if [ -n "$bad" ]; then
  echo "dry run: these steps failed (their stderr is in $DIR/session/log.txt):" >&2
  echo "$bad" >&2
  exit 1
fi
echo "dry run: every step ran"
