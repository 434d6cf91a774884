// CUDA kernels of the token embedding. Contracts: src/ops/cpu_ops.h.
//
// - Forward: launch_map's one grid-stride kernel over the flat index; with the RMSNorm that makes x0, one warp per
//   row (the table's rows are read once, and not written back out unless the backward needs them).
// - Backward: deterministic by default (stable radix sort of the token ids, then one block per distinct id adds its
//   rows in position order onto the existing dtable value: the CPU's exact order, so the result equals the CPU's bit
//   for bit); or atomicAdd (CudaBackendOptions::deterministic = false).
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>

#include "kernels/cuda_internal.h"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_ops_common.cuh"

namespace ptool::cuda {

namespace {

struct EmbedFwdF {
  const float* table;
  const int32_t* tokens;
  float* out;
  int64_t D;
  __device__ void operator()(int64_t i) const {
    const int64_t n = i / D, d = i % D;
    out[i] = table[static_cast<int64_t>(tokens[n]) * D + d];
  }
};
struct EmbedBwdAtomicF {
  const float* dout;
  const int32_t* tokens;
  float* dtable;
  int64_t D;
  __device__ void operator()(int64_t i) const {
    const int64_t n = i / D, d = i % D;
    atomicAdd(dtable + static_cast<int64_t>(tokens[n]) * D + d, dout[i]);
  }
};
struct IotaF {
  int32_t* v;
  __device__ void operator()(int64_t i) const { v[i] = static_cast<int32_t>(i); }
};

// Backend::embedding_rmsnorm_forward, one warp per row, with rmsnorm_fwd_kernel's rstd and products and
// launch_round_bf16's rounding: bit for bit the ops it replaces.
__global__ void __launch_bounds__(256) embedding_rmsnorm_kernel(const float* table, const int32_t* tokens, int64_t N,
                                                                int64_t D, float eps, bool bf16_out, float* emb,
                                                                Out out, float* rstd) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < N; row += nwarps) {
    const float* tr = table + static_cast<int64_t>(tokens[row]) * D;
    const float r = row_rstd(tr, 0, D, eps, lane);
    if (lane == 0) rstd[row] = r;
    for (int64_t d = lane; d < D; d += 32) {
      const float v = tr[d], y = v * r;
      if (emb) emb[row * D + d] = v;
      put(out, row * D + d, bf16_out ? round_to_bf16(y) : y);
    }
  }
}

// keys: token ids sorted (stable), pos: their positions. Block per run start.
__global__ void embed_bwd_segments(const float* dout, const int32_t* keys, const int32_t* pos, int64_t N, int64_t D,
                                   float* dtable) {
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int32_t tok = keys[i];
    if (i > 0 && keys[i - 1] == tok) continue;  // not the first of its run (uniform across the block)
    int64_t end = i + 1;
    while (end < N && keys[end] == tok) ++end;
    float* row = dtable + static_cast<int64_t>(tok) * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float acc = row[d];
#pragma unroll 4
      for (int64_t j = i; j < end; ++j) acc += dout[static_cast<int64_t>(pos[j]) * D + d];
      row[d] = acc;
    }
  }
}

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------------------

void launch_embedding_forward(const float* table, const int32_t* tokens, int64_t N, int64_t D, float* out,
                              cudaStream_t s) {
  if (D <= 0) return;
  launch_map(EmbedFwdF{table, tokens, out, D}, N * D, s, "embedding_forward");
}

void launch_embedding_rmsnorm_forward(const float* table, const int32_t* tokens, int64_t N, int64_t D, float eps,
                                      bool bf16_out, float* emb, Out out, float* rstd, cudaStream_t s) {
  if (N <= 0 || D <= 0) return;
  PTOOL_LAUNCH(embedding_rmsnorm_kernel, row_warps_grid(N), 256, 0, s)(table, tokens, N, D, eps, bf16_out, emb, out,
                                                                       rstd);
  PTOOL_CUDA_LAUNCHED("embedding_rmsnorm_forward", s);
}

void launch_embedding_backward_atomic(const float* dout, const int32_t* tokens, int64_t N, int64_t D,
                                      float* dtable, cudaStream_t s) {
  if (D <= 0) return;
  launch_map(EmbedBwdAtomicF{dout, tokens, dtable, D}, N * D, s, "embedding_backward (atomic)");
}

void launch_embedding_backward_sorted(const float* dout, const int32_t* tokens, int64_t N, int64_t D,
                                      float* dtable, Workspace& ws, cudaStream_t s) {
  if (N <= 0 || D <= 0) return;
  if (N > INT32_MAX) throw std::invalid_argument("embedding_backward: N too large for the sort");
  const int n = static_cast<int>(N);
  size_t temp_bytes = 0;
  PTOOL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, tokens, static_cast<int32_t*>(nullptr),
                                                   static_cast<const int32_t*>(nullptr),
                                                   static_cast<int32_t*>(nullptr), n, 0, 32, s));
  Carver measure;
  measure.take<int32_t>(N);
  measure.take<int32_t>(N);
  measure.take<int32_t>(N);
  measure.take<char>(temp_bytes);
  Carver c{static_cast<char*>(ws.get(measure.off)), 0};
  int32_t* keys = c.take<int32_t>(N);
  int32_t* pos_in = c.take<int32_t>(N);
  int32_t* pos = c.take<int32_t>(N);
  void* temp = c.take<char>(temp_bytes);
  launch_map(IotaF{pos_in}, N, s, "embedding_backward (iota)");
  PTOOL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, tokens, keys, pos_in, pos, n, 0, 32, s));
  const int threads = D >= 256 ? 256 : D >= 128 ? 128 : D >= 64 ? 64 : 32;
  PTOOL_LAUNCH(embed_bwd_segments, static_cast<unsigned>(std::min<int64_t>(N, int64_t{1} << 20)), threads, 0, s)(
      dout, keys, pos, N, D, dtable);
  PTOOL_CUDA_LAUNCHED("embedding_backward (segments)", s);
}

}  // namespace ptool::cuda
