#!/usr/bin/env bash
# Builds the programs a GPU session runs (ptool, test_kernels, bench_train, bench_cuda_ops, twin_parity_dump) here,
# for the H100 device machine (sm_90a), into one small folder the device tool can carry (`carry: ["build-device"]`,
# bench/TWIN.md):
#
#   bash scripts/build_for_device.sh [DIR]       DIR defaults to build-device; objects go to DIR-obj (both ignored)
#
# - Release, kernels for sm_90a only (CMakeLists.txt), baseline x86-64 host code (-DPTOOL_X86_64_V3=OFF): the
#   device's CPU is not this one, and an illegal instruction would lose the session.
# - CUDA libraries: cudart is linked statically (CUDA::cudart_static); cuBLAS and cuBLASLt dynamically
#   (libcublas.so.13, libcublasLt.so.13, ~0.5 GB, far too big to carry). The device has them with its CUDA 13
#   toolkit and driver; the RPATH names /usr/local/cuda/lib64 and its targets/ folder, and bench/gpu_session.sh
#   also puts the folder it finds on LD_LIBRARY_PATH. libcuda comes with the driver.
# - Every other shared library that is not part of glibc/libstdc++ (zlib, zstd, brotli, xxhash, SentencePiece,
#   OpenSSL's libcrypto) is copied next to the binaries, which find it through $ORIGIN. The search path is an old-
#   style DT_RPATH (--disable-new-dtags), because only that one also applies to the libraries' own dependencies
#   (libbrotlienc needs libbrotlicommon, libsentencepiece_train needs libsentencepiece).
# - Binaries are stripped; the script fails if the folder exceeds 50 MiB or a library does not resolve from it.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-build-device}
OBJ=$DIR-obj
JOBS=${JOBS:-2}
TARGETS=(ptool test_kernels bench_train bench_cuda_ops twin_parity_dump)

cmake -S . -B "$OBJ" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPTOOL_X86_64_V3=OFF -DPTOOL_CUDA=ON \
  -DPTOOL_TESTS=ON -DPTOOL_BENCH=ON \
  "-DCMAKE_BUILD_RPATH=\$ORIGIN;/usr/local/cuda/lib64;/usr/local/cuda/targets/x86_64-linux/lib" \
  -DCMAKE_EXE_LINKER_FLAGS=-Wl,--disable-new-dtags >/dev/null
cmake --build "$OBJ" -j "$JOBS" --target "${TARGETS[@]}"  # test_kernels exists only when nvcc was found

rm -rf "$DIR"
mkdir -p "$DIR"
for t in "${TARGETS[@]}"; do
  cp "$OBJ/$t" "$DIR/"
  strip --strip-unneeded "$DIR/$t"
done

# Shared libraries to carry: whatever ldd resolves outside the C/C++ runtime and CUDA.
keep_out='^(linux-vdso|ld-linux|libc\.|libm\.|libstdc\+\+|libgcc_s|librt\.|libpthread\.|libdl\.|libcuda\.|libcudart|libcublas)'
for t in "${TARGETS[@]}"; do
  ldd "$DIR/$t" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  if ! [[ $name =~ $keep_out ]]; then cp -L "$path" "$DIR/$name"; fi
done

# Check: every carried library resolves from DIR, and nothing but CUDA's is missing or taken from elsewhere.
status=0
for t in "${TARGETS[@]}"; do
  while read -r name _ path _; do
    [[ $name =~ $keep_out ]] && continue
    if [[ $path != "$(realpath "$DIR")/$name" ]]; then
      echo "$t: $name resolves to '$path', not $DIR" >&2
      status=1
    fi
  done < <(env -u LD_LIBRARY_PATH ldd "$DIR/$t" | awk '$2 == "=>" {print $1, $2, $3, $4}')
done
# Tests read testdata/ through the source folder compiled into them; gpu_session.sh links it to the device's copy.
pwd >"$DIR/source_dir.txt"
size_kib=$(du -sk "$DIR" | cut -f1)
echo "$DIR: $(ls "$DIR" | wc -l) files, $((size_kib / 1024)) MiB"
if [ "$size_kib" -gt $((50 * 1024)) ]; then echo "$DIR is over 50 MiB" >&2; status=1; fi
exit $status
