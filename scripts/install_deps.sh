#!/usr/bin/env bash
# Installs ptool's build and test dependencies from Debian packages (sudo when not root).
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PACKAGES=(build-essential cmake ninja-build pkg-config git
  libeigen3-dev libcli11-dev catch2 libzstd-dev libbrotli-dev zlib1g-dev nlohmann-json3-dev
  libsentencepiece-dev sentencepiece libxxhash-dev libssl-dev
  clang libclang-rt-14-dev xz-utils bible-kjv)
missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
