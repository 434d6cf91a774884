#!/usr/bin/env bash
# Runs bench/twin_parity.py (ptool's CPU path against the PyTorch twin in fp32) with the first python3 that has
# torch and numpy; exits 77 (CTest: skipped) with the reason when there is none.   usage: twin_parity.sh BUILD_DIR
set -u
here=$(cd "$(dirname "$0")" && pwd)
for py in python3 /usr/bin/python3; do
  if command -v "$py" >/dev/null && "$py" -c "import torch, numpy" 2>/dev/null; then
    exec "$py" "$here/twin_parity.py" --build "$1"
  fi
done
echo "skipped: no python3 with torch and numpy here (Debian: apt-get install python3-torch)"
exit 77
