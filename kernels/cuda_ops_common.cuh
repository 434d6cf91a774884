// What the kernel files of every op except attention and the GEMMs share (cuda_elementwise.cu, cuda_residual.cu,
// cuda_rmsnorm.cu, cuda_qk_prep.cu, cuda_embedding.cu, cuda_cross_entropy.cu): grid sizes, the bf16-aware element
// access, the generic element-wise map, the deterministic column reduction and the per-row RMSNorm arithmetic.
// Included by several translation units: all of it lives in an unnamed namespace, non-template functions are inline,
// and kernels that are not templates belong in the one .cu that launches them.
#pragma once
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda_internal.h"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_prep_math.cuh"

namespace ptool::cuda {

namespace {

constexpr int kThreads = 256;

inline unsigned grid_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(b, 1, int64_t{1} << 20));  // grid-stride beyond this
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// x rounded to the nearest bf16 (ties to even), kept as fp32: what a bf16 tensor holds.
__device__ __forceinline__ float round_to_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
// The value that put(o, i, v) stores, as fp32: what an op that goes on with the value it wrote must use (a norm fused
// after a residual-stream write normalizes the stored value, as the composed ops would read it back).
__device__ __forceinline__ float as_stored(const Out& o, float v) { return o.bf16 ? round_to_bf16(v) : v; }
// An element of an operand buffer as the bf16 mode holds it (bf16 true), also where the buffer is fp32 (the mode
// without operand buffers, whose GEMMs round at their input): an op other than a GEMM that reads or writes operand
// buffers then computes the same either way.
__device__ __forceinline__ float get_as(const In& x, int64_t i, bool bf16) {
  const float v = get(x, i);
  return bf16 ? round_to_bf16(v) : v;
}
__device__ __forceinline__ void put_as(const Out& o, int64_t i, float v, bool bf16) {
  put(o, i, bf16 ? round_to_bf16(v) : v);
}

// ---- generic element-wise map -------------------------------------------------------------------------------
// One grid-stride kernel over the flat index, coalesced. Memory-bound; no shared memory.
template <class F>
__global__ void map_kernel(F f, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

template <class F>
void launch_map(const F& f, int64_t n, cudaStream_t s, const char* name) {
  if (n <= 0) return;
  PTOOL_LAUNCH(map_kernel, grid_for(n, kThreads), kThreads, 0, s)(f, n);
  PTOOL_CUDA_LAUNCHED(name, s);
}

// ---- deterministic column reductions (fused with the element-wise part of a backward) -----------------------
//
// The backwards of the per-channel parameters (ds, dw, dg, dm, and the per-head dg): one fused pass that also does
// the element-wise input gradient, then a deterministic two-pass column reduction over the N rows: pass 1 has
// blocks of 32 columns x 8 row lanes over a fixed chunk of rows and writes double partial sums per chunk;
// pass 2 (one block per output, colreduce_finalize) adds the chunks in a fixed order and adds the total to the
// accumulator. The chunking depends only on (N, columns), so results are bit-identical run to run. No atomics.
// Row-wise backwards with column sums (cuda_rmsnorm.cu, cuda_qk_prep.cu) write their partials in the layout that
// colreduce_finalize adds up.
//
// A functor F has `static constexpr int kOut` and `__device__ void operator()(int64_t n, int64_t c, double* v)`:
// it does the element-wise work of element (n, c) and returns its kOut contributions to the column sums.

template <class F>
struct ElementwiseOf {  // runs only the element-wise part over the flat index
  F f;
  int64_t C;
  __device__ void operator()(int64_t i) const {
    double v[F::kOut];
    f(i / C, i % C, v);
  }
};

struct ColPlan {
  unsigned colblocks = 1;
  int64_t chunks = 1, rows_per_chunk = 1;
};

inline ColPlan col_plan(int64_t N, int64_t C) {
  ColPlan p;
  p.colblocks = static_cast<unsigned>((C + 31) / 32);
  int64_t chunks = std::max<int64_t>(1, 1024 / static_cast<int64_t>(p.colblocks));
  chunks = std::min<int64_t>(chunks, std::max<int64_t>(1, (N + 7) / 8));
  p.rows_per_chunk = std::max<int64_t>(1, (N + chunks - 1) / chunks);
  p.chunks = (N + p.rows_per_chunk - 1) / p.rows_per_chunk;
  return p;
}

template <class F>
__global__ void __launch_bounds__(256) colreduce_kernel(F f, int64_t N, int64_t C, int64_t rows_per_chunk,
                                                        double* partial) {
  constexpr int K = F::kOut;
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < N ? r0 + rows_per_chunk : N;
  double acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0.0;
  if (c < C) {
    for (int64_t n = r0 + ty; n < r1; n += 8) {
      double v[K];
      f(n, c, v);
#pragma unroll
      for (int k = 0; k < K; ++k) acc[k] += v[k];
    }
  }
  __shared__ double sh[K][8][32];
#pragma unroll
  for (int k = 0; k < K; ++k) sh[k][ty][tx] = acc[k];
  __syncthreads();
  if (ty == 0 && c < C) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      double s = 0.0;
      for (int j = 0; j < 8; ++j) s += sh[k][j][tx];
      partial[(static_cast<int64_t>(blockIdx.y) * K + k) * C + c] = s;
    }
  }
}

// Block (j, k): out_k[j] += sum over chunks and over the `group` columns j*group .. j*group+group-1.
template <int K>
__global__ void __launch_bounds__(256) colreduce_finalize(const double* partial, int64_t chunks, int64_t C,
                                                          int64_t group, float* out0, float* out1) {
  const int64_t j = blockIdx.x;
  const int k = static_cast<int>(blockIdx.y);
  float* out = k == 0 ? out0 : out1;
  if (out == nullptr) return;  // uniform across the block
  const int64_t per = chunks * group;
  double s = 0.0;
  for (int64_t e = threadIdx.x; e < per; e += blockDim.x) {
    const int64_t ch = e / group, g = e % group;
    s += partial[(ch * K + k) * C + j * group + g];
  }
  s = warp_sum_d(s);
  __shared__ double sh[8];
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) t += sh[w];
    out[j] += static_cast<float>(t);
  }
}

// Runs f over all N x C elements; when out0 or out1 is non-null also reduces its contributions into
// out_k[j] (j < C / group) as described above.
template <class F>
void launch_colreduce(const F& f, int64_t N, int64_t C, int64_t group, float* out0, float* out1, Workspace& ws,
                      cudaStream_t s, const char* name) {
  if (N <= 0 || C <= 0) return;
  if (out0 == nullptr && out1 == nullptr) {
    launch_map(ElementwiseOf<F>{f, C}, N * C, s, name);
    return;
  }
  const ColPlan p = col_plan(N, C);
  auto* partial = static_cast<double*>(ws.get(static_cast<size_t>(p.chunks * F::kOut * C) * sizeof(double)));
  PTOOL_LAUNCH(colreduce_kernel, dim3(p.colblocks, static_cast<unsigned>(p.chunks)), 256, 0, s)(
      f, N, C, p.rows_per_chunk, partial);
  PTOOL_CUDA_LAUNCHED(name, s);
  PTOOL_LAUNCH(colreduce_finalize<F::kOut>, dim3(static_cast<unsigned>(C / group), F::kOut), 256, 0, s)(
      partial, p.chunks, C, group, out0, out1);
  PTOOL_CUDA_LAUNCHED(name, s);
}

// ---- one warp per row: the grid, and RMSNorm of a row -------------------------------------------------------

inline unsigned row_warps_grid(int64_t rows) { return grid_for(rows, 8); }  // 8 warps (rows) per 256-thread block

// 1 / sqrt(mean(x^2) + eps) of the row at x[off, off + D), by the 32 lanes of a warp (every lane gets it); the sum
// in double.
__device__ __forceinline__ float row_rstd(In x, int64_t off, int64_t D, float eps, int lane) {
  double ss = 0.0;
  for (int64_t d = lane; d < D; d += 32) {
    const double v = get(x, off + d);
    ss += v * v;
  }
  ss = warp_sum_d(ss);
  return static_cast<float>(1.0 / sqrt(ss / static_cast<double>(D) + static_cast<double>(eps)));
}

// ---- the residual stream's sums of two inputs ---------------------------------------------------------------

// A new residual-stream value from two inputs at channel d, rounded the same way wherever it is formed (the
// element-wise ops and their forms fused with RMSNorm): scaled_residual's a + s[d] b with the product rounded on
// its own (as the CPU's channel scale, then add), and resid_mix's m[0, d] a + m[1, d] b.
struct ScaledSum {
  const float* s;
  __device__ float operator()(int64_t d, float a, float b) const { return __fadd_rn(a, __fmul_rn(s[d], b)); }
};
struct MixSum {
  const float* m;
  int64_t D;
  __device__ float operator()(int64_t d, float a, float b) const {
    return __fmaf_rn(m[d], a, __fmul_rn(m[D + d], b));
  }
};
// A gated U-Net skip's sum, gated_skip_forward's y = σ(g[d]) a + (1 - σ(g[d])) w[d] b, rounded at each step as on
// the CPU (the kernel files that include this header are compiled without FMA contraction).
__device__ __forceinline__ float sigmoidf_(float g) { return 1.f / (1.f + expf(-g)); }
struct GatedSum {
  const float* w;
  const float* g;
  __device__ float operator()(int64_t d, float a, float b) const {
    const float s = sigmoidf_(g[d]);
    return s * a + (1.f - s) * w[d] * b;
  }
};

}  // namespace

}  // namespace ptool::cuda
