// Kernels with and without the races cuemu's race-checking build (PTOOL_TSAN) must report, one per mode:
//
//   cuemu_race_demo MODE        (PTOOL_CUDA_EMULATOR=1)
//
// Each mode launches one kernel and checks its result where the result is defined. The racy modes are run by CTest
// only in ThreadSanitizer builds, which must report "data race" naming the kernel; the ordered modes must run
// clean in every build (tests/emu/racecheck_demo.sh).
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda_launch.h"

namespace {

constexpr int kThreads = 64;  // two warps

// Reverses each block's slice through shared memory. Without the barrier, warp 0 reads what warp 1 writes. With
// it, the CTAs (run one after another, each reusing the same shared memory) are not races either.
__global__ void reverse_with_barrier(const int* in, int* out) {
  __shared__ int tile[kThreads];
  const int base = blockIdx.x * kThreads;
  tile[threadIdx.x] = in[base + threadIdx.x];
  __syncthreads();
  out[base + threadIdx.x] = tile[kThreads - 1 - threadIdx.x];
}
__global__ void reverse_dynamic_with_barrier(const int* in, int* out) {
  PTOOL_DYNAMIC_SMEM(int, tile);
  const int base = blockIdx.x * kThreads;
  tile[threadIdx.x] = in[base + threadIdx.x];
  __syncthreads();
  out[base + threadIdx.x] = tile[kThreads - 1 - threadIdx.x];
}
__global__ void reverse_missing_syncthreads(const int* in, int* out) {
  __shared__ int tile[kThreads];
  tile[threadIdx.x] = in[threadIdx.x];
  out[threadIdx.x] = tile[kThreads - 1 - threadIdx.x];
}

// The same within one warp: lanes exchange through shared memory, which needs __syncwarp between.
__global__ void lanes_with_syncwarp(const int* in, int* out) {
  __shared__ int tile[32];
  tile[threadIdx.x] = in[threadIdx.x];
  __syncwarp();
  out[threadIdx.x] = tile[31 - threadIdx.x];
}
__global__ void lanes_missing_syncwarp(const int* in, int* out) {
  __shared__ int tile[32];
  tile[threadIdx.x] = in[threadIdx.x];
  out[threadIdx.x] = tile[31 - threadIdx.x];
}

// A tile reused by the next step of a loop: the barrier after the reads keeps the next step's writes from
// overwriting what a slower warp has still to read (a write-after-read race without it).
template <bool kSecondBarrier>
__global__ void rolling_sum(const int* in, int steps, int* out) {
  __shared__ int tile[kThreads];
  int acc = 0;
  for (int s = 0; s < steps; ++s) {
    tile[threadIdx.x] = in[s * kThreads + threadIdx.x];
    __syncthreads();
    acc += tile[kThreads - 1 - threadIdx.x];
    if (kSecondBarrier) __syncthreads();
  }
  out[threadIdx.x] = acc;
}

// Every thread adds to one counter: atomics are not races. Every thread storing to one word is.
__global__ void count_atomically(int* counter) { atomicAdd(counter, 1); }
__global__ void count_by_plain_stores(int* counter) { *counter = static_cast<int>(threadIdx.x); }

// Every CTA writes the same slice: CTAs run in no set order on the device, so this is a race between CTAs.
__global__ void blocks_overwrite_each_other(const int* in, int* out) {
  out[threadIdx.x] = in[blockIdx.x * kThreads + threadIdx.x];
}


int fail(const std::string& what) {
  std::fprintf(stderr, "cuemu_race_demo: %s\n", what.c_str());
  return 1;
}

int check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) return fail(std::string(what) + ": " + cudaGetErrorString(e));
  return 0;
}

// Launches `launch` on fresh device buffers: in = 0..n-1, out zeroed; then checks out against want (when given).
template <class Launch>
int run(int n, int out_n, Launch launch, const std::vector<int>& want) {
  int *in = nullptr, *out = nullptr;
  if (check(cudaMalloc(&in, n * sizeof(int)), "cudaMalloc") ||
      check(cudaMalloc(&out, out_n * sizeof(int)), "cudaMalloc"))
    return 1;
  std::vector<int> host(n);
  for (int i = 0; i < n; ++i) host[i] = i;
  if (check(cudaMemcpy(in, host.data(), n * sizeof(int), cudaMemcpyHostToDevice), "cudaMemcpy") ||
      check(cudaMemset(out, 0, out_n * sizeof(int)), "cudaMemset"))
    return 1;
  launch(in, out);
  if (check(cudaGetLastError(), "launch") || check(cudaDeviceSynchronize(), "synchronize")) return 1;
  std::vector<int> got(out_n);
  if (check(cudaMemcpy(got.data(), out, out_n * sizeof(int), cudaMemcpyDeviceToHost), "cudaMemcpy")) return 1;
  cudaFree(in);
  cudaFree(out);
  if (!want.empty() && got != want) return fail("wrong result");
  return 0;
}

// Each slice of `width` of 0..n-1 reversed.
std::vector<int> reversed(int n, int width) {
  std::vector<int> v(n);
  for (int i = 0; i < n; ++i) v[i] = i / width * width + width - 1 - i % width;
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc == 2 ? argv[1] : "";
  constexpr int kSteps = 3;
  std::vector<int> rolled(kThreads, 0);
  for (int s = 0; s < kSteps; ++s)
    for (int i = 0; i < kThreads; ++i) rolled[i] += s * kThreads + kThreads - 1 - i;

  if (mode == "ordered-syncthreads")
    return run(4 * kThreads, 4 * kThreads, [](int* in, int* out) {
      PTOOL_LAUNCH(reverse_with_barrier, 4, kThreads, 0, nullptr)(in, out);
    }, reversed(4 * kThreads, kThreads));
  if (mode == "ordered-dynamic-smem")
    return run(4 * kThreads, 4 * kThreads, [](int* in, int* out) {
      PTOOL_LAUNCH(reverse_dynamic_with_barrier, 4, kThreads, kThreads * sizeof(int), nullptr)(in, out);
    }, reversed(4 * kThreads, kThreads));
  if (mode == "blocks-overlap")
    return run(4 * kThreads, kThreads, [](int* in, int* out) {
      PTOOL_LAUNCH(blocks_overwrite_each_other, 4, kThreads, 0, nullptr)(in, out);
    }, {});
  if (mode == "missing-syncthreads")
    return run(kThreads, kThreads, [](int* in, int* out) {
      PTOOL_LAUNCH(reverse_missing_syncthreads, 1, kThreads, 0, nullptr)(in, out);
    }, {});
  if (mode == "ordered-syncwarp")
    return run(32, 32, [](int* in, int* out) { PTOOL_LAUNCH(lanes_with_syncwarp, 1, 32, 0, nullptr)(in, out); },
               reversed(32, 32));
  if (mode == "missing-syncwarp")
    return run(32, 32, [](int* in, int* out) { PTOOL_LAUNCH(lanes_missing_syncwarp, 1, 32, 0, nullptr)(in, out); },
               {});
  if (mode == "ordered-reuse")
    return run(kSteps * kThreads, kThreads, [](int* in, int* out) {
      PTOOL_LAUNCH(rolling_sum<true>, 1, kThreads, 0, nullptr)(in, kSteps, out);
    }, rolled);
  if (mode == "missing-barrier-before-reuse")
    return run(kSteps * kThreads, kThreads, [](int* in, int* out) {
      PTOOL_LAUNCH(rolling_sum<false>, 1, kThreads, 0, nullptr)(in, kSteps, out);
    }, {});
  if (mode == "atomics")
    return run(1, 1, [](int*, int* out) { PTOOL_LAUNCH(count_atomically, 4, kThreads, 0, nullptr)(out); },
               {4 * kThreads});
  if (mode == "plain-stores")
    return run(1, 1, [](int*, int* out) { PTOOL_LAUNCH(count_by_plain_stores, 1, kThreads, 0, nullptr)(out); }, {});
  return fail("usage: cuemu_race_demo MODE (ordered-syncthreads, ordered-dynamic-smem, missing-syncthreads, "
              "ordered-syncwarp, missing-syncwarp, ordered-reuse, missing-barrier-before-reuse, atomics, "
              "plain-stores, blocks-overlap)");
}
