// CUDA kernels of every op except attention (cuda_attention.cu) and the GEMMs (cuBLASLt, cuda_backend.cpp).
// Contracts: src/ops/cpu_ops.h. fp32 storage; the notes per family say where accumulation is wider.
//
// Design per family
// - fp32 -> bf16 conversion (GEMM operands in bf16 mode): grid-stride, 16-byte loads and 8-byte stores when
//   aligned; memory-bound (6 bytes per element).
// - Element-wise ops (add, scale, activations, channel/head scale forward, skip/gated skip/resid_mix forward,
//   embedding forward, RoPE): one grid-stride kernel over the flat index, coalesced; add/scale use 16-byte
//   accesses when the pointers allow. Memory-bound; no shared memory.
// - RMSNorm forward/backward: one warp per row; sum of squares and the backward's dot product accumulate in
//   double (as the CPU reference does), so rstd almost always matches it bit for bit.
// - q/k preparation (QK RMSNorm, RoPE, q gain): the same per-row arithmetic fused into one warp-per-row kernel
//   each way, so q and k are read once and written once instead of three times.
// - Backward of the per-channel parameters (ds, dw, dg, dm, and the per-head dg): one fused pass that also does
//   the element-wise input gradient, then a deterministic two-pass column reduction over the N rows: pass 1 has
//   blocks of 32 columns x 8 row lanes over a fixed chunk of rows and writes double partial sums per chunk;
//   pass 2 (one block per output) adds the chunks in a fixed order and adds the total to the accumulator. The
//   chunking depends only on (N, columns), so results are bit-identical run to run. No atomics.
// - Row-wise backwards with column sums (RMSNorm + resid_mix; q's gain + q/k preparation): one warp per row does
//   the row's reduction and element-wise work in registers or shared memory, and keeps its double column sums;
//   blocks (or warps) write them as chunk partials in a fixed layout that pass 2 above adds up. Deterministic.
// - Inputs and outputs may be bf16 buffers (cuda::In, cuda::Out): widened on load, rounded to nearest even on store.
// - Embedding backward: deterministic by default (stable radix sort of the token ids, then one block per
//   distinct id adds its rows in position order onto the existing dtable value: the CPU's exact order, so the
//   result equals the CPU's bit for bit); or atomicAdd (CudaBackendOptions::deterministic = false).
// - Softcap cross-entropy: one block per row, two passes over the row, never storing probabilities: pass 1 an
//   online (max, sum of exp) in fp32 per thread, combined across the block; pass 2 writes dz. Per-row loss
//   lse - zc[y] in double. dz may alias z (each element is read then written by the same thread, and the target
//   logit is read before the block barrier that precedes any write).
#include <cuda_bf16.h>

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda_internal.h"
#include "kernels/cuda_launch.h"

namespace ptool::cuda {

namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(b, 1, int64_t{1} << 20));  // grid-stride beyond this
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

void require_writable(const Out& o, bool accumulate, const char* op) {
  if (o.bf16 && accumulate)
    throw std::invalid_argument(std::string(op) + ": cannot add into a bf16 buffer (it is only written)");
}

__device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// An output element: fp32, or bf16 rounded to nearest even when the output is a bf16 buffer (the value
// the bf16 GEMMs would otherwise get from launch_to_bf16).
__device__ __forceinline__ void put(const Out& o, int64_t i, float v) {
  if (o.bf16)
    reinterpret_cast<__nv_bfloat16*>(o.bf16)[i] = __float2bfloat16_rn(v);
  else
    o.f32[i] = v;
}

// An input element, widened from bf16 when the input is a bf16 activation buffer.
__device__ __forceinline__ float get(const In& x, int64_t i) {
  return x.bf16 ? __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(x.bf16)[i]) : x.f32[i];
}

// ---- generic element-wise map -------------------------------------------------------------------------------

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

struct AddF {
  float* y;
  const float* x;
  __device__ void operator()(int64_t i) const { y[i] += x[i]; }
};
struct Add4F {
  float4* y;
  const float4* x;
  __device__ void operator()(int64_t i) const {
    float4 a = y[i];
    const float4 b = x[i];
    a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
    y[i] = a;
  }
};
struct ToBf16F {
  const float* x;
  __nv_bfloat16* y;
  __device__ void operator()(int64_t i) const { y[i] = __float2bfloat16_rn(x[i]); }
};
struct alignas(8) Bf16x4 {
  __nv_bfloat162 lo, hi;
};
struct ToBf16x4F {
  const float4* x;
  Bf16x4* y;
  __device__ void operator()(int64_t i) const {
    const float4 v = x[i];
    y[i] = Bf16x4{__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(v.z, v.w)};
  }
};
struct Bf16ToFloatF {
  const __nv_bfloat16* x;
  float* y;
  __device__ void operator()(int64_t i) const { y[i] = __bfloat162float(x[i]); }
};
struct RoundBf16F {  // y = x rounded to bf16 (nearest even), kept as fp32
  const float* x;
  float* y;
  __device__ void operator()(int64_t i) const { y[i] = __bfloat162float(__float2bfloat16_rn(x[i])); }
};
struct ScaleF {
  float* y;
  float a;
  __device__ void operator()(int64_t i) const { y[i] *= a; }
};
struct Scale4F {
  float4* y;
  float a;
  __device__ void operator()(int64_t i) const {
    float4 v = y[i];
    v.x *= a; v.y *= a; v.z *= a; v.w *= a;
    y[i] = v;
  }
};

// ---- deterministic column reductions (fused with the element-wise part of a backward) ------------------------
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

ColPlan col_plan(int64_t N, int64_t C) {
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

// ---- embedding ----------------------------------------------------------------------------------------------

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

// ---- RMSNorm ------------------------------------------------------------------------------------------------

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

// RMSNorm's backward of one row by one warp: g's row at [goff, goff + D) (a warp's row in shared memory, or the
// same offset as x's), x's and o's at [off, off + D); o = r g - r^3 x mean(g x), added to o (accumulate, fp32
// only) or written (fp32 or bf16). rmsnorm_grad_coef and rmsnorm_grad are its two halves.
__device__ __forceinline__ float rmsnorm_grad_coef(double dot, float r, int64_t D) {  // dot: the warp's sum of g x
  return static_cast<float>(static_cast<double>(r) * r * r * dot / static_cast<double>(D));
}
__device__ __forceinline__ float rmsnorm_grad(float r, float g, float c, float x) {  // no contraction: as the CPU
  return __fsub_rn(__fmul_rn(r, g), __fmul_rn(c, x));
}
__device__ __forceinline__ void rmsnorm_bwd_row(In g, int64_t goff, In x, int64_t off, float r, int64_t D, int lane,
                                                Out o, int64_t ooff, bool accumulate) {
  double dot = 0.0;
  for (int64_t d = lane; d < D; d += 32)
    dot += static_cast<double>(get(g, goff + d)) * static_cast<double>(get(x, off + d));
  const float c = rmsnorm_grad_coef(warp_sum_d(dot), r, D);
  for (int64_t d = lane; d < D; d += 32) {
    const float v = rmsnorm_grad(r, get(g, goff + d), c, get(x, off + d));
    if (accumulate)
      o.f32[ooff + d] = __fadd_rn(o.f32[ooff + d], v);
    else
      put(o, ooff + d, v);
  }
}

__global__ void __launch_bounds__(256) rmsnorm_fwd_kernel(const float* x, int64_t N, int64_t D, float eps,
                                                          Out out, float* rstd) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < N; row += nwarps) {
    const float* xr = x + row * D;
    const float r = row_rstd(x, row * D, D, eps, lane);
    if (lane == 0) rstd[row] = r;
    // out may alias x (fp32): each element is read and written by the same lane
    for (int64_t d = lane; d < D; d += 32) put(out, row * D + d, xr[d] * r);
  }
}

__global__ void __launch_bounds__(256) rmsnorm_bwd_kernel(In dout, const float* x, const float* rstd, int64_t N,
                                                          int64_t D, float* dx, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < N; row += nwarps)
    rmsnorm_bwd_row(dout, row * D, x, row * D, rstd[row], D, lane, dx, row * D, accumulate);
}

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

// The combination, then rmsnorm_fwd_kernel, one warp per row: y = f(a, b), h = y * rstd(y). The second pass
// rereads y, which the same lane just wrote (from cache).
template <class Combine>
__global__ void __launch_bounds__(256) combine_rmsnorm_kernel(const float* a, In b, Combine f, int64_t N, int64_t D,
                                                              float eps, float* y, Out h, float* rstd) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < N; row += nwarps) {
    const float* ar = a + row * D;
    float* yr = y + row * D;
    for (int64_t d = lane; d < D; d += 32) yr[d] = f(d, ar[d], get(b, row * D + d));
    const float r = row_rstd(y, row * D, D, eps, lane);
    if (lane == 0) rstd[row] = r;
    for (int64_t d = lane; d < D; d += 32) put(h, row * D + d, yr[d] * r);
  }
}

// Backend::layer_entry_forward, one warp per row, with the roundings of the composed ops: x = ScaledSum(a, b),
// xs = ScaledSum(x, skip) with the skip weights, y = MixSum(xs, x0), then rmsnorm_fwd_kernel's h and rstd.
__global__ void __launch_bounds__(256) layer_entry_kernel(const float* a, In b, ScaledSum branch, const float* skip,
                                                          ScaledSum skip_add, const float* x0, MixSum mix, int64_t N,
                                                          int64_t D, float eps, float* x, float* xs, float* y, Out h,
                                                          float* rstd) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < N; row += nwarps) {
    for (int64_t d = lane; d < D; d += 32) {
      const int64_t i = row * D + d;
      float v = branch(d, a[i], get(b, i));
      if (x) x[i] = v;
      if (skip) {
        v = skip_add(d, v, skip[i]);
        if (xs) xs[i] = v;
      }
      y[i] = mix(d, v, x0[i]);
    }
    const float r = row_rstd(y, row * D, D, eps, lane);
    if (lane == 0) rstd[row] = r;
    for (int64_t d = lane; d < D; d += 32) put(h, row * D + d, y[row * D + d] * r);
  }
}

unsigned row_warps_grid(int64_t rows) { return grid_for(rows, 8); }  // 8 warps (rows) per 256-thread block

// The rotation of one pair (x1, x2) = (x[i], x[i + rot/2]) by the angle whose cosine and sine are c and s.
__device__ __forceinline__ void rotate_pair(float& x1, float& x2, float c, float s) {
  // no contraction into FMAs: the CPU's roundings, the same in every kernel that rotates
  const float y1 = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)), y2 = __fadd_rn(__fmul_rn(-x1, s), __fmul_rn(x2, c));
  x1 = y1;
  x2 = y2;
}

// ---- q/k preparation: RMSNorm, RoPE and the q gain in one pass ---------------------------------------------------
// One warp per head row (row = (b * Tn + t) * H + h), the arithmetic of rmsnorm_fwd_kernel, RopeApplyF and
// HeadScaleFwdF in that order. x may alias raw: every element is read before it is written, by the same lane.

__global__ void __launch_bounds__(256) qk_prep_fwd_kernel(In raw, int64_t rows, int64_t Tn, int64_t H,
                                                          int64_t hd, int64_t half, bool norm, float eps,
                                                          const float* cos_t, const float* sin_t, const float* gain,
                                                          float* rstd, Out x, Out out) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < rows; row += nwarps) {
    const int64_t o = row * hd;
    float r = 1.f;
    if (norm) {  // uniform across the warp
      r = row_rstd(raw, o, hd, eps, lane);
      if (lane == 0) rstd[row] = r;
    }
    const int64_t t = (row / H) % Tn;
    const float g = gain ? gain[row % H] : 1.f;
    const bool keep_x = !gain || x.f32 != out.f32 || x.bf16 != out.bf16;  // out == x with a gain: only out is kept
    for (int64_t i = lane; i < half; i += 32) {
      const float r1 = get(raw, o + i), r2 = get(raw, o + i + half);
      float y1 = norm ? r1 * r : r1, y2 = norm ? r2 * r : r2;
      rotate_pair(y1, y2, cos_t[t * half + i], sin_t[t * half + i]);
      if (keep_x) {
        put(x, o + i, y1);
        put(x, o + i + half, y2);
      }
      if (gain) {
        put(out, o + i, g * y1);
        put(out, o + i + half, g * y2);
      }
    }
    for (int64_t d = 2 * half + lane; d < hd; d += 32) {  // dimensions past the rotary ones
      const float v = norm ? get(raw, o + d) * r : get(raw, o + d);
      if (keep_x) put(x, o + d, v);
      if (gain) put(out, o + d, g * v);
    }
  }
}

// Where row `row` (token row / H, head row % H) of a [tokens * H, hd] result goes in a destination whose token
// rows are ld elements apart, starting at column col (ld = H hd, col = 0: contiguous).
__device__ __forceinline__ int64_t head_row_offset(int64_t row, int64_t H, int64_t hd, int64_t ld, int64_t col) {
  return (row / H) * ld + col + (row % H) * hd;
}

// Its backward: d is rotated back in place (RopeApplyF, inverse); with norm, the warp then reads the whole rotated
// row and writes rmsnorm_bwd_kernel's dx into draw (overwriting it; token rows ld apart from column col).
__global__ void __launch_bounds__(256) qk_prep_bwd_kernel(float* d, In raw, const float* rstd, int64_t rows,
                                                          int64_t Tn, int64_t H, int64_t hd, int64_t half, bool norm,
                                                          const float* cos_t, const float* sin_t, Out draw,
                                                          int64_t ld, int64_t col) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < rows; row += nwarps) {
    float* dr = d + row * hd;
    const int64_t t = (row / H) % Tn;
    for (int64_t i = lane; i < half; i += 32)
      rotate_pair(dr[i], dr[i + half], cos_t[t * half + i], -sin_t[t * half + i]);
    if (!norm) continue;  // uniform across the warp
    __syncwarp();         // the row's rotated elements were written by other lanes
    rmsnorm_bwd_row(d, row * hd, raw, row * hd, rstd[row], hd, lane, draw, head_row_offset(row, H, hd, ld, col),
                    false);
  }
}

// q's backward with its gain in front (Backend::qk_prep_backward_gain): the warp's row of d = g[h] dq goes to shared
// memory (never to global), is rotated back there, and RMSNorm's backward of it is written into draw (or the
// rotated d itself without norm). The gain's gradient needs x = rope(norm(raw)): each lane forms its elements
// again with qk_prep_fwd_kernel's arithmetic (the stored rstd, the same rotation). Warp w owns head h = w % H over
// tokens_per_warp tokens of chunk w / H, so its double sum of dq x is head h's share of dg from that chunk:
// partial[w] = partial[(chunk * 1 + 0) * H + h], the layout colreduce_finalize<1> adds up in chunk order
// (deterministic). Each lane does the element-wise arithmetic of HeadScaleBwdF, RopeApplyF and rmsnorm_bwd_row:
// draw equals the three ops' bit for bit.
__global__ void __launch_bounds__(256) qk_prep_bwd_gain_kernel(const float* dq, const float* gain, In raw,
                                                               const float* rstd, int64_t tokens, int64_t Tn,
                                                               int64_t H, int64_t hd, int64_t half, bool norm,
                                                               const float* cos_t, const float* sin_t,
                                                               int64_t tokens_per_warp, int64_t warps, Out draw,
                                                               int64_t ld, int64_t col, double* partial) {
  __shared__ float rows[8][kMaxPrepHd];
  const int lane = threadIdx.x & 31;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (w >= warps) return;  // no block barrier below
  float* d = rows[threadIdx.x >> 5];
  const int64_t h = w % H, t0 = (w / H) * tokens_per_warp;
  const int64_t t1 = t0 + tokens_per_warp < tokens ? t0 + tokens_per_warp : tokens;
  const float g = gain[h];
  double acc = 0.0;
  for (int64_t tok = t0; tok < t1; ++tok) {
    const int64_t off = (tok * H + h) * hd, t = tok % Tn;
    const float r = norm ? rstd[tok * H + h] : 1.f;
    for (int64_t i = lane; i < half; i += 32) {
      const float r1 = get(raw, off + i), r2 = get(raw, off + i + half);
      float x1 = norm ? r1 * r : r1, x2 = norm ? r2 * r : r2;
      rotate_pair(x1, x2, cos_t[t * half + i], sin_t[t * half + i]);
      acc += static_cast<double>(dq[off + i]) * static_cast<double>(x1);
      acc += static_cast<double>(dq[off + i + half]) * static_cast<double>(x2);
    }
    for (int64_t i = 2 * half + lane; i < hd; i += 32) {  // dimensions past the rotary ones
      const float v = norm ? get(raw, off + i) * r : get(raw, off + i);
      acc += static_cast<double>(dq[off + i]) * static_cast<double>(v);
    }
    for (int64_t i = lane; i < hd; i += 32) d[i] = __fmul_rn(g, dq[off + i]);
    __syncwarp();
    for (int64_t i = lane; i < half; i += 32) rotate_pair(d[i], d[i + half], cos_t[t * half + i], -sin_t[t * half + i]);
    __syncwarp();
    const int64_t out_off = tok * ld + col + h * hd;
    if (norm) {
      rmsnorm_bwd_row(d, 0, raw, off, rstd[tok * H + h], hd, lane, draw, out_off, false);
    } else {
      for (int64_t i = lane; i < hd; i += 32) put(draw, out_off + i, d[i]);
    }
    __syncwarp();  // the row is read before the next one overwrites it
  }
  acc = warp_sum_d(acc);
  if (lane == 0) partial[w] = acc;
}

// ---- scales -------------------------------------------------------------------------------------------------

struct ChannelScaleFwdF {
  const float* x;
  const float* s;
  float* y;
  int64_t D;
  __device__ void operator()(int64_t i) const { y[i] = s[i % D] * x[i]; }
};
// y = f(a, b) per channel (ScaledSum, MixSum), element-wise.
template <class Combine>
struct CombineF {
  const float* a;
  In b;
  Combine f;
  float* y;
  int64_t D;
  __device__ void operator()(int64_t i) const { y[i] = f(i % D, a[i], get(b, i)); }
};
template <class Combine>
struct Combine4F {  // four channels at a time (D % 4 == 0, a, b, y 16-byte aligned)
  const float4* a;
  const float4* b;
  Combine f;
  float4* y;
  int64_t D;
  __device__ void operator()(int64_t i) const {
    const int64_t c = (4 * i) % D;
    const float4 u = a[i], v = b[i];
    y[i] = float4{f(c, u.x, v.x), f(c + 1, u.y, v.y), f(c + 2, u.z, v.z), f(c + 3, u.w, v.w)};
  }
};
struct ChannelScaleBwdF {
  static constexpr int kOut = 1;
  const float* dy;
  In x;
  const float* s;
  Out dx;
  int64_t D;
  bool accumulate;  // dx += (else dx =; a bf16 dx is only written)
  __device__ void operator()(int64_t n, int64_t c, double* v) const {
    const int64_t i = n * D + c;
    const float g = dy[i];
    if (accumulate && dx.f32)
      dx.f32[i] += s[c] * g;
    else if (dx.f32 || dx.bf16)
      put(dx, i, s[c] * g);
    v[0] = static_cast<double>(g) * static_cast<double>(get(x, i));
  }
};
struct HeadScaleFwdF {
  const float* x;
  const float* g;
  float* y;
  int64_t H, hd;
  __device__ void operator()(int64_t i) const { y[i] = g[(i / hd) % H] * x[i]; }
};
struct HeadScaleBwdF {  // columns c = h * hd + i of the [N, H * hd] view
  static constexpr int kOut = 1;
  const float* dy;
  const float* x;
  const float* g;
  float* dx;
  int64_t C, hd;
  bool accumulate;  // dx += (else dx =)
  __device__ void operator()(int64_t n, int64_t c, double* v) const {
    const int64_t i = n * C + c;
    const float gy = dy[i];
    if (dx) dx[i] = accumulate ? dx[i] + g[c / hd] * gy : g[c / hd] * gy;
    v[0] = static_cast<double>(gy) * static_cast<double>(x[i]);
  }
};

// ---- RoPE ---------------------------------------------------------------------------------------------------

struct RopeTableF {
  float* cos_t;
  float* sin_t;
  int64_t half, rot;
  double base;
  __device__ void operator()(int64_t idx) const {
    const int64_t t = idx / half, i = idx % half;
    const double inv_freq = pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(rot));
    const double a = static_cast<double>(t) * inv_freq;
    cos_t[idx] = static_cast<float>(cos(a));
    sin_t[idx] = static_cast<float>(sin(a));
  }
};
struct RopeApplyF {
  float* x;
  const float* cos_t;
  const float* sin_t;
  int64_t Tn, H, hd, half;
  bool inverse;
  __device__ void operator()(int64_t idx) const {
    const int64_t i = idx % half, row = idx / half;  // row = (b * Tn + t) * H + h
    const int64_t t = (row / H) % Tn;
    const float c = cos_t[t * half + i];
    const float s = inverse ? -sin_t[t * half + i] : sin_t[t * half + i];
    float* v = x + row * hd;
    rotate_pair(v[i], v[i + half], c, s);
  }
};

// ---- activations --------------------------------------------------------------------------------------------

template <bool kLeaky>
struct ActFwdF {
  In h;
  Out out;
  __device__ void operator()(int64_t i) const {
    const float v = get(h, i);
    const float r = v > 0.f ? v : (kLeaky ? 0.5f * v : 0.f);
    put(out, i, r * r);
  }
};
template <bool kLeaky>
struct ActBwdF {
  In dout;
  In h;
  Out dh;
  bool accumulate;  // dh += (else dh =; a bf16 dh is only written)
  __device__ void operator()(int64_t i) const {
    const float v = get(h, i);
    float d;
    if (kLeaky) {
      d = v > 0.f ? 2.f * v : 0.5f * v;
    } else {
      d = 2.f * (v > 0.f ? v : 0.f);
    }
    if (accumulate)
      dh.f32[i] += d * get(dout, i);
    else
      put(dh, i, d * get(dout, i));
  }
};

// ---- skips and resid_mix ------------------------------------------------------------------------------------

__device__ __forceinline__ float sigmoidf_(float g) { return 1.f / (1.f + expf(-g)); }

struct SkipAddFwdF {
  float* x;
  const float* skip;
  const float* w;
  int64_t D;
  __device__ void operator()(int64_t i) const { x[i] += w[i % D] * skip[i]; }
};
struct SkipAddBwdF {
  static constexpr int kOut = 1;
  const float* dy;
  const float* skip;
  const float* w;
  float* dskip;
  int64_t D;
  bool accumulate;  // dskip += (else dskip =)
  __device__ void operator()(int64_t n, int64_t c, double* v) const {
    const int64_t i = n * D + c;
    const float g = dy[i];
    if (dskip) dskip[i] = accumulate ? __fadd_rn(dskip[i], __fmul_rn(w[c], g)) : __fmul_rn(w[c], g);
    v[0] = static_cast<double>(g) * static_cast<double>(skip[i]);
  }
};
struct GatedSkipFwdF {
  const float* x;
  const float* skip;
  const float* w;
  const float* g;
  float* y;
  int64_t D;
  __device__ void operator()(int64_t i) const {
    const int64_t d = i % D;
    const float s = sigmoidf_(g[d]);
    y[i] = s * x[i] + (1.f - s) * w[d] * skip[i];
  }
};
struct GatedSkipBwdF {  // out 0: dw, out 1: dg
  static constexpr int kOut = 2;
  const float* dy;
  const float* x;
  const float* skip;
  const float* w;
  const float* g;
  float* dx;
  float* dskip;
  int64_t D;
  __device__ void operator()(int64_t n, int64_t c, double* v) const {
    const int64_t i = n * D + c;
    const float s = sigmoidf_(g[c]);
    const float gy = dy[i];
    if (dx) dx[i] += s * gy;
    if (dskip) dskip[i] += (1.f - s) * w[c] * gy;
    const double sd = s, gyd = gy, k = skip[i];
    v[0] = (1.0 - sd) * k * gyd;
    v[1] = sd * (1.0 - sd) * (static_cast<double>(x[i]) - static_cast<double>(w[c]) * k) * gyd;
  }
};
struct ResidMixBwdF {  // out 0: dm[0, :], out 1: dm[1, :]
  static constexpr int kOut = 2;
  const float* dy;
  const float* x;
  const float* x0;
  const float* m;
  float* dx;  // may be dy: the element is read before it is written, by the same thread
  float* dx0;
  int64_t D;
  bool accumulate;  // dx += (else dx =); dx0 always accumulates
  __device__ void operator()(int64_t n, int64_t c, double* v) const {
    const int64_t i = n * D + c;
    const float gy = dy[i];
    if (dx) dx[i] = accumulate ? __fadd_rn(dx[i], __fmul_rn(m[c], gy)) : __fmul_rn(m[c], gy);
    if (dx0) dx0[i] = __fadd_rn(dx0[i], __fmul_rn(m[D + c], gy));
    v[0] = static_cast<double>(x[i]) * gy;
    v[1] = static_cast<double>(x0[i]) * gy;
  }
};

// RMSNorm's backward followed by a per-element op in one pass (Backend::rmsnorm_resid_mix_backward and
// rmsnorm_channel_scale_backward): one warp per row with the row's D = 32 CPL columns in registers (lane owns
// columns lane + 32 j). The norm's input y comes from F::y(i, col). t = dx + rmsnorm_grad(dh, y), the gradient at
// y, goes to F(i, col, t, v), which writes its
// outputs and returns its F::kOut column-sum terms in v. Each warp keeps the double column sums over its
// rows_per_warp rows; the block adds its 8 warps' sums in warp order into partial[(block * kOut + k) * D + c] for
// colreduce_finalize (a fixed order: deterministic). Saves the write and re-read of t that composed ops pass
// through memory. 256 threads per block, at most 128 registers (2 blocks per SM; at D = 512 the double sums of
// resid_mix take 64 of them and ptxas spills a few words).
// Its template argument: the columns per lane and the element op, as one type (PTOOL_LAUNCH takes no commas).
template <int C, class Op>
struct BwdThen {
  static constexpr int kCpl = C;
  using F = Op;
};
template <class Cfg>
__global__ void __launch_bounds__(256, 2) rmsnorm_bwd_then_kernel(typename Cfg::F f, In dh, const float* rstd,
                                                                  const float* dx, int64_t N, int64_t rows_per_warp,
                                                                  double* partial) {
  constexpr int CPL = Cfg::kCpl;
  constexpr int64_t D = 32 * CPL;
  constexpr int K = Cfg::F::kOut;
  const int lane = threadIdx.x & 31;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int64_t r0 = w * rows_per_warp, r1 = r0 + rows_per_warp < N ? r0 + rows_per_warp : N;
  double sums[K][CPL];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int j = 0; j < CPL; ++j) sums[k][j] = 0.0;
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t off = row * D;
    double dot = 0.0;
#pragma unroll
    for (int j = 0; j < CPL; ++j)
      dot += static_cast<double>(get(dh, off + lane + 32 * j)) *
             static_cast<double>(f.y(off + lane + 32 * j, lane + 32 * j));
    const float r = rstd[row];
    const float c = rmsnorm_grad_coef(warp_sum_d(dot), r, D);
    // dh and y are read again (from L1: the warp just read them) rather than held: fewer registers, more warps.
#pragma unroll
    for (int j = 0; j < CPL; ++j) {
      const int64_t col = lane + 32 * j, i = off + col;
      double v[K];
      f(i, col, __fadd_rn(dx[i], rmsnorm_grad(r, get(dh, i), c, f.y(i, col))), v);
#pragma unroll
      for (int k = 0; k < K; ++k) sums[k][j] += v[k];
    }
  }
  __shared__ double sh[8][D];
  const int warp = threadIdx.x >> 5;
  for (int k = 0; k < K; ++k) {
    __syncthreads();  // sh is free (k > 0: the block has read k - 1's sums)
#pragma unroll
    for (int j = 0; j < CPL; ++j) sh[warp][lane + 32 * j] = sums[k][j];
    __syncthreads();
    for (int64_t col = threadIdx.x; col < D; col += blockDim.x) {
      double t = 0.0;
      for (int v = 0; v < 8; ++v) t += sh[v][col];
      partial[(static_cast<int64_t>(blockIdx.x) * K + k) * D + col] = t;
    }
  }
}

// resid_mix's backward of t (with its rounding): dx = m0 t, dx0 += m1 t; column sums of t x and t x0. The norm's
// input y = resid_mix(x, x0) is recomputed (MixSum, as the forward formed it) from the x and x0 it reads anyway.
// dx_add (a skip's gradient) joins dx, and with fold_x0 dx goes to dx0 instead, with the roundings of the adds
// they replace (Backend::rmsnorm_resid_mix_backward).
struct ResidMixOfGradF {
  static constexpr int kOut = 2;
  const float *x, *x0, *m;
  float *dx, *dx0;
  const float* dx_add;
  bool fold_x0;
  int64_t D;
  __device__ float y(int64_t i, int64_t col) const { return MixSum{m, D}(col, x[i], x0[i]); }
  __device__ void operator()(int64_t i, int64_t col, float t, double* v) const {
    float gx = __fmul_rn(m[col], t);
    if (dx_add) gx = __fadd_rn(gx, dx_add[i]);
    const float gx0 = __fadd_rn(dx0[i], __fmul_rn(m[D + col], t));
    if (fold_x0) {
      dx0[i] = __fadd_rn(gx0, gx);
    } else {
      dx[i] = gx;
      dx0[i] = gx0;
    }
    v[0] = static_cast<double>(x[i]) * t;
    v[1] = static_cast<double>(x0[i]) * t;
  }
};

// The channel scale's backward of t: dx = t (the residual gradient goes on), dout = s t; column sums of t o.
struct ChannelScaleOfGradF {
  static constexpr int kOut = 1;
  const float* yv;  // the norm's input
  In o;
  const float* sc;
  float* dx;
  Out dout;
  __device__ float y(int64_t i, int64_t) const { return yv[i]; }
  __device__ void operator()(int64_t i, int64_t col, float t, double* v) const {
    dx[i] = t;
    put(dout, i, __fmul_rn(sc[col], t));
    v[0] = static_cast<double>(t) * static_cast<double>(get(o, i));
  }
};

// ---- softcap cross-entropy ----------------------------------------------------------------------------------

// Merges the (max, sum of exp(v - max)) pair (m2, s2) into (m, s).
__device__ __forceinline__ void ms_merge(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
    return;
  }
  const float mx = fmaxf(m, m2);
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

template <int kT>
__global__ void __launch_bounds__(kT) softcap_ce_kernel(const float* z, const int32_t* targets, int64_t N, int64_t V,
                                                        float cap, double* losses, int32_t* bad_row, Out dz,
                                                        float gs) {
  constexpr int kW = kT / 32;
  __shared__ float sh_m[kW], sh_s[kW], sh_fin[2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool capped = cap > 0.f;
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const int32_t y = targets[row];
    if (y < 0 || y >= V) {  // uniform across the block
      if (threadIdx.x == 0) {
        atomicMin(bad_row, static_cast<int32_t>(row));
        losses[row] = __longlong_as_double(0x7ff8000000000000LL);  // NaN
      }
      continue;
    }
    const float* zr = z + row * V;
    // Pass 1: online max and sum of exp of the capped logits.
    float m = -INFINITY, s = 0.f;
    for (int64_t j = threadIdx.x; j < V; j += kT) {
      float v = zr[j];
      if (capped) v = cap * tanhf(v / cap);
      if (v > m) {
        s = s * expf(m - v) + 1.f;
        m = v;
      } else {
        s += expf(v - m);
      }
    }
    float zy = zr[y];  // read by every thread before the barrier below: dz may alias z
    if (capped) zy = cap * tanhf(zy / cap);
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
      const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
      ms_merge(m, s, m2, s2);
    }
    if (lane == 0) {
      sh_m[warp] = m;
      sh_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
      m = lane < kW ? sh_m[lane] : -INFINITY;
      s = lane < kW ? sh_s[lane] : 0.f;
      for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        ms_merge(m, s, m2, s2);
      }
      if (lane == 0) {
        sh_fin[0] = m;
        sh_fin[1] = s;
      }
    }
    __syncthreads();
    const float lse = sh_fin[0] + logf(sh_fin[1]);
    if (threadIdx.x == 0) losses[row] = static_cast<double>(lse) - static_cast<double>(zy);
    // Pass 2: dz = gs * (softmax - onehot) * dcap/dz.
    if (dz.f32 || dz.bf16) {
      for (int64_t j = threadIdx.x; j < V; j += kT) {
        const float v = zr[j];
        float t = 0.f, zc = v;
        if (capped) {
          t = tanhf(v / cap);
          zc = cap * t;
        }
        float g = expf(zc - lse) - (j == y ? 1.f : 0.f);
        if (capped) g *= 1.f - t * t;
        put(dz, row * V + j, gs * g);
      }
    }
    __syncthreads();  // sh_* are reused by the next row
  }
}

// A block per row (grid-stride over rows), its threads along the row: coalesced on both sides.
__global__ void __launch_bounds__(256) copy_columns_kernel(In src, int64_t N, int64_t w, Out dst, int64_t ld,
                                                           int64_t off) {
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x)
    for (int64_t j = threadIdx.x; j < w; j += blockDim.x) put(dst, n * ld + off + j, get(src, n * w + j));
}
__global__ void __launch_bounds__(256) gather_rows_kernel(In src, int64_t rows, int64_t S, int64_t Tn, int64_t from,
                                                          int64_t D, Out dst) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t from_row = (r / S) * Tn + from + r % S;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) put(dst, r * D + j, get(src, from_row * D + j));
  }
}

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------------------

void launch_add(float* y, const float* x, size_t n, cudaStream_t s) {
  const int64_t nn = static_cast<int64_t>(n);
  if (aligned16(y) && aligned16(x)) {
    const int64_t n4 = nn / 4;
    launch_map(Add4F{reinterpret_cast<float4*>(y), reinterpret_cast<const float4*>(x)}, n4, s, "add");
    launch_map(AddF{y + 4 * n4, x + 4 * n4}, nn - 4 * n4, s, "add");
  } else {
    launch_map(AddF{y, x}, nn, s, "add");
  }
}

void launch_scale(float* y, float a, size_t n, cudaStream_t s) {
  const int64_t nn = static_cast<int64_t>(n);
  if (aligned16(y)) {
    const int64_t n4 = nn / 4;
    launch_map(Scale4F{reinterpret_cast<float4*>(y), a}, n4, s, "scale");
    launch_map(ScaleF{y + 4 * n4, a}, nn - 4 * n4, s, "scale");
  } else {
    launch_map(ScaleF{y, a}, nn, s, "scale");
  }
}

void launch_bf16_to_float(const uint16_t* x, size_t n, float* y, cudaStream_t s) {
  launch_map(Bf16ToFloatF{reinterpret_cast<const __nv_bfloat16*>(x), y}, static_cast<int64_t>(n), s, "bf16_to_float");
}

void launch_round_bf16(const float* x, size_t n, float* y, cudaStream_t s) {
  launch_map(RoundBf16F{x, y}, static_cast<int64_t>(n), s, "round_bf16");
}

void launch_copy_columns(In src, int64_t N, int64_t w, Out dst, int64_t ld, int64_t off, cudaStream_t s) {
  if (N <= 0 || w <= 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(N, int64_t{1} << 20));
  PTOOL_LAUNCH(copy_columns_kernel, blocks, kThreads, 0, s)(src, N, w, dst, ld, off);
  PTOOL_CUDA_LAUNCHED("copy_columns", s);
}

void launch_gather_rows(In src, int64_t B, int64_t Tn, int64_t from, int64_t D, Out dst, cudaStream_t s) {
  const int64_t S = Tn - from, rows = B * S;
  if (rows <= 0 || D <= 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(rows, int64_t{1} << 20));
  PTOOL_LAUNCH(gather_rows_kernel, blocks, kThreads, 0, s)(src, rows, S, Tn, from, D, dst);
  PTOOL_CUDA_LAUNCHED("gather_rows", s);
}

void launch_to_bf16(const float* x, size_t n, uint16_t* y, cudaStream_t s) {
  const int64_t nn = static_cast<int64_t>(n);
  auto* yb = reinterpret_cast<__nv_bfloat16*>(y);
  if (aligned16(x) && (reinterpret_cast<uintptr_t>(y) & 7u) == 0) {
    const int64_t n4 = nn / 4;
    launch_map(ToBf16x4F{reinterpret_cast<const float4*>(x), reinterpret_cast<Bf16x4*>(y)}, n4, s, "to_bf16");
    launch_map(ToBf16F{x + 4 * n4, yb + 4 * n4}, nn - 4 * n4, s, "to_bf16");
  } else {
    launch_map(ToBf16F{x, yb}, nn, s, "to_bf16");
  }
}

void launch_embedding_forward(const float* table, const int32_t* tokens, int64_t N, int64_t D, float* out,
                              cudaStream_t s) {
  if (D <= 0) return;
  launch_map(EmbedFwdF{table, tokens, out, D}, N * D, s, "embedding_forward");
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

void launch_rmsnorm_forward(const float* x, int64_t N, int64_t D, float eps, Out out, float* rstd,
                            cudaStream_t s) {
  if (N <= 0) return;
  PTOOL_LAUNCH(rmsnorm_fwd_kernel, row_warps_grid(N), 256, 0, s)(x, N, D, eps, out, rstd);
  PTOOL_CUDA_LAUNCHED("rmsnorm_forward", s);
}

void launch_rmsnorm_backward(In dout, const float* x, const float* rstd, int64_t N, int64_t D, float* dx,
                             bool accumulate, cudaStream_t s) {
  if (N <= 0 || dx == nullptr) return;
  PTOOL_LAUNCH(rmsnorm_bwd_kernel, row_warps_grid(N), 256, 0, s)(dout, x, rstd, N, D, dx, accumulate);
  PTOOL_CUDA_LAUNCHED("rmsnorm_backward", s);
}

void launch_channel_scale_forward(const float* x, const float* sc, int64_t N, int64_t D, float* y, cudaStream_t s) {
  if (D <= 0) return;
  launch_map(ChannelScaleFwdF{x, sc, y, D}, N * D, s, "channel_scale_forward");
}

void launch_scaled_residual_forward(const float* x, In o, const float* sc, int64_t N, int64_t D, float* y,
                                    cudaStream_t s) {
  if (D <= 0) return;
  if (D % 4 == 0 && o.f32 && aligned16(x) && aligned16(o.f32) && aligned16(y)) {
    launch_map(Combine4F<ScaledSum>{reinterpret_cast<const float4*>(x), reinterpret_cast<const float4*>(o.f32), {sc},
                                    reinterpret_cast<float4*>(y), D},
               N * D / 4, s, "scaled_residual_forward");
  } else {
    launch_map(CombineF<ScaledSum>{x, o, {sc}, y, D}, N * D, s, "scaled_residual_forward");
  }
}

void launch_scaled_residual_rmsnorm_forward(const float* x, In o, const float* sc, int64_t N, int64_t D,
                                            float eps, float* y, Out h, float* rstd, cudaStream_t s) {
  if (N <= 0 || D <= 0) return;
  PTOOL_LAUNCH(combine_rmsnorm_kernel<ScaledSum>, row_warps_grid(N), 256, 0, s)(x, o, ScaledSum{sc}, N, D, eps, y,
                                                                                h, rstd);
  PTOOL_CUDA_LAUNCHED("scaled_residual_rmsnorm_forward", s);
}

void launch_layer_entry_forward(const float* a, In b, const float* sc, const float* skip, const float* w,
                                const float* x0, const float* m, int64_t N, int64_t D, float eps, float* x, float* xs,
                                float* y, Out h, float* rstd, cudaStream_t s) {
  if (N <= 0 || D <= 0) return;
  PTOOL_LAUNCH(layer_entry_kernel, row_warps_grid(N), 256, 0, s)(a, b, ScaledSum{sc}, skip, ScaledSum{w}, x0,
                                                                 MixSum{m, D}, N, D, eps, x, xs, y, h, rstd);
  PTOOL_CUDA_LAUNCHED("layer_entry_forward", s);
}

void launch_resid_mix_rmsnorm_forward(const float* x, const float* x0, const float* m, int64_t N, int64_t D,
                                      float eps, float* y, Out h, float* rstd, cudaStream_t s) {
  if (N <= 0 || D <= 0) return;
  PTOOL_LAUNCH(combine_rmsnorm_kernel<MixSum>, row_warps_grid(N), 256, 0, s)(x, x0, MixSum{m, D}, N, D, eps, y, h,
                                                                             rstd);
  PTOOL_CUDA_LAUNCHED("resid_mix_rmsnorm_forward", s);
}

void launch_channel_scale_backward(const float* dy, In x, const float* sc, int64_t N, int64_t D,
                                   Out dx, bool accumulate, float* ds_acc, Workspace& ws, cudaStream_t s) {
  if (!dx.f32 && !dx.bf16 && !ds_acc) return;
  require_writable(dx, accumulate, "channel_scale_backward");
  launch_colreduce(ChannelScaleBwdF{dy, x, sc, dx, D, accumulate}, N, D, 1, ds_acc, nullptr, ws, s,
                   "channel_scale_backward");
}

void launch_head_scale_forward(const float* x, const float* g, int64_t N, int64_t H, int64_t hd, float* y,
                               cudaStream_t s) {
  if (H <= 0 || hd <= 0) return;
  launch_map(HeadScaleFwdF{x, g, y, H, hd}, N * H * hd, s, "head_scale_forward");
}

void launch_head_scale_backward(const float* dy, const float* x, const float* g, int64_t N, int64_t H, int64_t hd,
                                float* dx, bool accumulate, float* dg_acc, Workspace& ws, cudaStream_t s) {
  if (!dx && !dg_acc) return;
  if (H <= 0 || hd <= 0) return;
  launch_colreduce(HeadScaleBwdF{dy, x, g, dx, H * hd, hd, accumulate}, N, H * hd, hd, dg_acc, nullptr, ws, s,
                   "head_scale_backward");
}

void launch_rope_table(int64_t Tn, int64_t rot, double base, float* cos_t, float* sin_t, cudaStream_t s) {
  const int64_t half = rot / 2;
  if (half <= 0 || Tn <= 0) return;
  launch_map(RopeTableF{cos_t, sin_t, half, rot, base}, Tn * half, s, "rope_table");
}

void launch_rope_apply(float* x, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, const float* cos_t,
                       const float* sin_t, bool inverse, cudaStream_t s) {
  const int64_t half = rot / 2;
  if (half <= 0) return;
  launch_map(RopeApplyF{x, cos_t, sin_t, Tn, H, hd, half, inverse}, B * Tn * H * half, s,
             inverse ? "rope_backward" : "rope_forward");
}

void launch_qk_prep_forward(In raw, int64_t rows, int64_t Tn, int64_t H, int64_t hd, int64_t rot,
                            bool norm, float eps, const float* cos_t, const float* sin_t, const float* gain,
                            float* rstd, Out x, Out out, cudaStream_t s) {
  if (rows <= 0 || hd <= 0) return;
  PTOOL_LAUNCH(qk_prep_fwd_kernel, row_warps_grid(rows), 256, 0, s)(raw, rows, Tn, H, hd, rot / 2, norm, eps, cos_t,
                                                                     sin_t, gain, rstd, x, out);
  PTOOL_CUDA_LAUNCHED("qk_prep_forward", s);
}

void launch_qk_prep_backward(float* d, In raw, const float* rstd, int64_t rows, int64_t Tn, int64_t H,
                             int64_t hd, int64_t rot, bool norm, const float* cos_t, const float* sin_t, Out draw,
                             int64_t ld, int64_t col, cudaStream_t s) {
  if (rows <= 0 || hd <= 0 || (rot == 0 && !norm)) return;
  PTOOL_LAUNCH(qk_prep_bwd_kernel, row_warps_grid(rows), 256, 0, s)(d, raw, rstd, rows, Tn, H, hd, rot / 2, norm,
                                                                     cos_t, sin_t, draw, ld, col);
  PTOOL_CUDA_LAUNCHED("qk_prep_backward", s);
}

void launch_activation_forward(bool leaky, In h, int64_t n, Out out, cudaStream_t s) {
  if (leaky)
    launch_map(ActFwdF<true>{h, out}, n, s, "activation_forward");
  else
    launch_map(ActFwdF<false>{h, out}, n, s, "activation_forward");
}

void launch_activation_backward(bool leaky, In dout, In h, int64_t n, Out dh, bool accumulate,
                                cudaStream_t s) {
  if (!dh.f32 && !dh.bf16) return;
  require_writable(dh, accumulate, "activation_backward");
  if (leaky)
    launch_map(ActBwdF<true>{dout, h, dh, accumulate}, n, s, "activation_backward");
  else
    launch_map(ActBwdF<false>{dout, h, dh, accumulate}, n, s, "activation_backward");
}

void launch_skip_add_forward(float* x, const float* skip, const float* w, int64_t N, int64_t D, cudaStream_t s) {
  if (D <= 0) return;
  launch_map(SkipAddFwdF{x, skip, w, D}, N * D, s, "skip_add_forward");
}

void launch_skip_add_backward(const float* dy, const float* skip, const float* w, int64_t N, int64_t D,
                              float* dskip, bool accumulate, float* dw_acc, Workspace& ws, cudaStream_t s) {
  if (!dskip && !dw_acc) return;
  launch_colreduce(SkipAddBwdF{dy, skip, w, dskip, D, accumulate}, N, D, 1, dw_acc, nullptr, ws, s,
                   "skip_add_backward");
}

void launch_gated_skip_forward(const float* x, const float* skip, const float* w, const float* g, int64_t N,
                               int64_t D, float* y, cudaStream_t s) {
  if (D <= 0) return;
  launch_map(GatedSkipFwdF{x, skip, w, g, y, D}, N * D, s, "gated_skip_forward");
}

void launch_gated_skip_backward(const float* dy, const float* x, const float* skip, const float* w, const float* g,
                                int64_t N, int64_t D, float* dx_acc, float* dskip_acc, float* dw_acc, float* dg_acc,
                                Workspace& ws, cudaStream_t s) {
  if (!dx_acc && !dskip_acc && !dw_acc && !dg_acc) return;
  launch_colreduce(GatedSkipBwdF{dy, x, skip, w, g, dx_acc, dskip_acc, D}, N, D, 1, dw_acc, dg_acc, ws, s,
                   "gated_skip_backward");
}

void launch_resid_mix_forward(const float* x, const float* x0, const float* m, int64_t N, int64_t D, float* y,
                              cudaStream_t s) {
  if (D <= 0) return;
  launch_map(CombineF<MixSum>{x, x0, {m, D}, y, D}, N * D, s, "resid_mix_forward");
}

void launch_resid_mix_backward(const float* dy, const float* x, const float* x0, const float* m, int64_t N,
                               int64_t D, float* dx, bool accumulate, float* dx0_acc, float* dm_acc, Workspace& ws,
                               cudaStream_t s) {
  if (!dx && !dx0_acc && !dm_acc) return;
  launch_colreduce(ResidMixBwdF{dy, x, x0, m, dx, dx0_acc, D, accumulate}, N, D, 1, dm_acc, dm_acc ? dm_acc + D : nullptr,
                   ws, s, "resid_mix_backward");
}

void launch_qk_prep_backward_gain(const float* dq, const float* gain, float* dg_acc, In raw, const float* rstd,
                                  int64_t tokens, int64_t Tn, int64_t H, int64_t hd, int64_t rot, bool norm,
                                  const float* cos_t, const float* sin_t, Out draw, int64_t ld, int64_t col,
                                  Workspace& ws, cudaStream_t s) {
  if (hd > kMaxPrepHd) throw std::invalid_argument("qk_prep_backward_gain: head_dim over 128");
  if (tokens <= 0 || H <= 0 || hd <= 0) return;
  // About 4096 warps, whole chunks of H heads.
  const int64_t chunks_wanted = std::max<int64_t>(1, 4096 / H);
  const int64_t tokens_per_warp = (tokens + chunks_wanted - 1) / chunks_wanted;
  const int64_t chunks = (tokens + tokens_per_warp - 1) / tokens_per_warp, warps = chunks * H;
  auto* partial = static_cast<double*>(ws.get(static_cast<size_t>(warps) * sizeof(double)));
  PTOOL_LAUNCH(qk_prep_bwd_gain_kernel, static_cast<unsigned>((warps + 7) / 8), 256, 0, s)(
      dq, gain, raw, rstd, tokens, Tn, H, hd, rot / 2, norm, cos_t, sin_t, tokens_per_warp, warps, draw, ld, col,
      partial);
  PTOOL_CUDA_LAUNCHED("qk_prep_backward_gain", s);
  if (dg_acc) {
    PTOOL_LAUNCH(colreduce_finalize<1>, dim3(static_cast<unsigned>(H), 1), 256, 0, s)(partial, chunks, H, 1, dg_acc,
                                                                                     nullptr);
    PTOOL_CUDA_LAUNCHED("qk_prep_backward_gain", s);
  }
}

bool rmsnorm_fused_backward(int64_t D) { return D == 64 || D == 128 || D == 256 || D == 512; }

namespace {

template <class F>
void launch_rmsnorm_bwd_then(const F& f, In dh, const float* rstd, const float* dx, int64_t N, int64_t D,
                             float* sum0, float* sum1, Workspace& ws, cudaStream_t s, const char* name) {
  if (!rmsnorm_fused_backward(D))
    throw std::invalid_argument(std::string(name) + ": no fused kernel for D = " + std::to_string(D));
  if (N <= 0) return;
  constexpr int K = F::kOut;
  // At most 4096 warps (512 blocks, a few waves on an H100) and at least 4 rows a warp: few block partials.
  const int64_t rows_per_warp = std::max<int64_t>(4, (N + 4095) / 4096);
  const int64_t warps = (N + rows_per_warp - 1) / rows_per_warp, blocks = (warps + 7) / 8;
  auto* partial = static_cast<double*>(ws.get(static_cast<size_t>(blocks * K * D) * sizeof(double)));
  const unsigned g = static_cast<unsigned>(blocks);
  using C2 = BwdThen<2, F>;
  using C4 = BwdThen<4, F>;
  using C8 = BwdThen<8, F>;
  using C16 = BwdThen<16, F>;
  switch (D) {
    case 64: PTOOL_LAUNCH(rmsnorm_bwd_then_kernel<C2>, g, 256, 0, s)(f, dh, rstd, dx, N, rows_per_warp, partial);
      break;
    case 128: PTOOL_LAUNCH(rmsnorm_bwd_then_kernel<C4>, g, 256, 0, s)(f, dh, rstd, dx, N, rows_per_warp, partial);
      break;
    case 256: PTOOL_LAUNCH(rmsnorm_bwd_then_kernel<C8>, g, 256, 0, s)(f, dh, rstd, dx, N, rows_per_warp, partial);
      break;
    default: PTOOL_LAUNCH(rmsnorm_bwd_then_kernel<C16>, g, 256, 0, s)(f, dh, rstd, dx, N, rows_per_warp, partial);
  }
  PTOOL_CUDA_LAUNCHED(name, s);
  PTOOL_LAUNCH(colreduce_finalize<K>, dim3(static_cast<unsigned>(D), K), 256, 0, s)(partial, blocks, D, 1, sum0,
                                                                                   sum1);
  PTOOL_CUDA_LAUNCHED(name, s);
}

}  // namespace

void launch_rmsnorm_resid_mix_backward(In dh, const float* rstd, const float* x, const float* x0, const float* m,
                                       int64_t N, int64_t D, float* dx, float* dx0, float* dm_acc,
                                       const float* dx_add, bool fold_x0, Workspace& ws, cudaStream_t s) {
  launch_rmsnorm_bwd_then(ResidMixOfGradF{x, x0, m, dx, dx0, dx_add, fold_x0, D}, dh, rstd, dx, N, D, dm_acc,
                          dm_acc + D, ws, s, "rmsnorm_resid_mix_backward");
}

void launch_rmsnorm_channel_scale_backward(In dh, const float* y, const float* rstd, In o, const float* sc,
                                           int64_t N, int64_t D, float* dx, Out dout, float* ds_acc, Workspace& ws,
                                           cudaStream_t s) {
  launch_rmsnorm_bwd_then(ChannelScaleOfGradF{y, o, sc, dx, dout}, dh, rstd, dx, N, D, ds_acc, nullptr, ws, s,
                          "rmsnorm_channel_scale_backward");
}

void launch_softcap_cross_entropy(const float* z, const int32_t* targets, int64_t N, int64_t V, float cap,
                                  double* losses_dev, int32_t* bad_row, Out dz, float grad_scale,
                                  cudaStream_t s) {
  if (N <= 0) return;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(N, int64_t{1} << 20));
  PTOOL_LAUNCH(softcap_ce_kernel<256>, grid, 256, 0, s)(z, targets, N, V, cap, losses_dev, bad_row, dz, grad_scale);
  PTOOL_CUDA_LAUNCHED("softcap_cross_entropy", s);
}

namespace {
__global__ void sum_into_kernel(const double* x, int64_t n, double* acc) {
  __shared__ double part[1024];
  double v = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += x[i];
  part[threadIdx.x] = v;
  __syncthreads();
  for (unsigned w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *acc += part[0];
}
}  // namespace

void launch_sum_into(const double* x, int64_t n, double* acc, cudaStream_t s) {
  if (n <= 0) return;
  PTOOL_LAUNCH(sum_into_kernel, 1, 1024, 0, s)(x, n, acc);
  PTOOL_CUDA_LAUNCHED("sum_into", s);
}

}  // namespace ptool::cuda
