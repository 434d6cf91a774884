// Kernels of the device optimizer step (kernels/cuda_optim.h; launchers in cuda_optim_internal.h).
//
// Design
// - Element-wise updates are grid-stride maps written with explicit roundings (__fmaf_rn, __fmul_rn, __fadd_rn,
//   __fdiv_rn, __fsqrt_rn): the CPU oracle writes its multiply-adds as std::fma in the same places, so the same
//   operations in the same order give the same bits, and nvcc may neither fuse nor split anything else.
// - Sums of squares: pass 1 has one block per fixed chunk of one matrix (or of the whole buffer) writing a double
//   partial; pass 2 has one block per matrix adding its partials. Both reduce in a fixed tree: deterministic,
//   no atomics. Consumers (pack, clip) read the sum from device memory, so the host never waits.
// - Pack / apply move a matrix between its row-major place in the flat buffers and the packed Newton-Schulz
//   layout (r x c with r <= c, i.e. transposed when rows > cols) through 32 x 32 shared-memory tiles, so reads
//   and writes stay coalesced in both orientations.
// - Fake-quant: one block per row (max |w| is order-independent, so exact), then the scalar reference's
//   operations per element.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda_internal.h"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_optim_internal.h"

namespace ptool::cuda {

namespace {

constexpr int kThreads = 256;
constexpr size_t kSumChunk = size_t{1} << 14;  // floats per pass-1 block
constexpr int kTile = 32, kTileRows = 8;

unsigned grid_for(size_t n) {
  const size_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<size_t>(b, 1, size_t{1} << 20));  // grid-stride beyond this
}

__device__ __forceinline__ float bf16r(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// Block-wide double sum in a fixed order (blockDim.x == kThreads).
__device__ double block_sum(double v) {
  __shared__ double sh[kThreads];
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (static_cast<int>(threadIdx.x) < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();  // sh may be reused by the caller's next block_sum
  return r;
}

template <class F>
__global__ void map_kernel(F f, size_t n) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

template <class F>
void map(const char* name, F f, size_t n, cudaStream_t s) {
  if (n == 0) return;
  PTOOL_LAUNCH(map_kernel, grid_for(n), kThreads, 0, s)(f, n);
  PTOOL_CUDA_LAUNCHED(name, s);
}

// ---- element-wise maps (functors: the build does not enable extended lambdas) ---------------------------------

struct MomentumF {  // packed U[idx] from the matrix at offs[idx / n]
  const int64_t* offs;
  size_t n;
  const float* G;
  float* buf;
  float* U;
  float mu;
  bool nesterov;
  __device__ void operator()(size_t idx) const {
    const size_t i = offs[idx / n] + idx % n;
    const float b = __fmaf_rn(buf[i], mu, G[i]);  // buf.mul_(μ).add_(g)
    buf[i] = b;
    U[idx] = nesterov ? __fmaf_rn(mu, b, G[i]) : b;
  }
};

struct ClipF {
  float* g;
  const double* ss;
  double max_norm;
  __device__ void operator()(size_t i) const {
    const double norm = sqrt(*ss);
    if (!isfinite(norm)) return;
    const double coef = fmin(max_norm / (norm + 1e-6), 1.0);
    if (coef < 1.0) g[i] = __fmul_rn(g[i], static_cast<float>(coef));
  }
};

struct EmaF {  // ema.mul_(d).add_(w, alpha=1-d)
  float* ema;
  const float* w;
  float d, omd;
  __device__ void operator()(size_t i) const { ema[i] = __fmaf_rn(ema[i], d, __fmul_rn(omd, w[i])); }
};

struct MaskF {
  float* g;
  const uint8_t* mask;
  __device__ void operator()(size_t i) const {
    if (!mask[i]) g[i] = 0.f;
  }
};

struct MaskedSgdF {  // eval_ttt's host loop: buf = μ·buf + g (or g), w -= lr·buf
  float* w;
  const float* g;
  float* buf;
  const uint8_t* mask;
  float lr, mu;
  bool first;
  __device__ void operator()(size_t i) const {
    if (!mask[i]) return;
    const float b = first ? g[i] : __fmaf_rn(mu, buf[i], g[i]);
    buf[i] = b;
    w[i] = __fmaf_rn(-lr, b, w[i]);
  }
};

struct SwaF {
  float* sum;
  const float* w;
  bool first;
  __device__ void operator()(size_t i) const { sum[i] = first ? w[i] : __fadd_rn(sum[i], w[i]); }
};

// ---- sums of squares ----------------------------------------------------------------------------------------

__global__ void sumsq_partials_kernel(const float* x, size_t n, bool bf16_inputs, double* partials) {
  const size_t m = blockIdx.y, chunk = blockIdx.x;
  const float* p = x + m * n;
  const size_t lo = chunk * kSumChunk, hi = min(n, lo + kSumChunk);
  double acc = 0;
  for (size_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    const float v = bf16_inputs ? bf16r(p[i]) : p[i];
    acc += static_cast<double>(v) * v;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partials[m * gridDim.x + chunk] = acc;
}

__global__ void sumsq_finalize_kernel(const double* partials, int chunks, double* ss) {
  const double* p = partials + static_cast<size_t>(blockIdx.x) * chunks;
  double acc = 0;
  for (int i = threadIdx.x; i < chunks; i += kThreads) acc += p[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) ss[blockIdx.x] = acc;
}

// ---- Muon ---------------------------------------------------------------------------------------------------

__global__ void row_normalize_kernel(float* U, int64_t cols) {
  float* row = U + static_cast<size_t>(blockIdx.x) * cols;
  double acc = 0;
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) acc += static_cast<double>(row[j]) * row[j];
  const float nrm = fmaxf(static_cast<float>(sqrt(block_sum(acc))), 1e-7f);
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) row[j] = __fdiv_rn(row[j], nrm);
}

template <class T>
__device__ __forceinline__ T store_as(float v);
template <>
__device__ __forceinline__ float store_as<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 store_as<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
__device__ __forceinline__ float load_f(float v) { return v; }
__device__ __forceinline__ float load_f(__nv_bfloat16 v) { return __bfloat162float(v); }

// Grid (col tiles, row tiles, nb) over the source U[m] (rows x cols). Output X[m] is rows x cols, or cols x rows
// when transposed.
template <class T>
__global__ void ns_pack_kernel(const float* U, const double* ss, int64_t rows, int64_t cols, double eps, bool bf16,
                               bool transpose, T* X) {
  __shared__ float tile[kTile][kTile + 1];
  const size_t m = blockIdx.z, n = static_cast<size_t>(rows) * cols;
  const float* u = U + m * n;
  T* x = X + m * n;
  const double nrm = sqrt(ss[m]);
  // newton_schulz: fp32 divides by float(‖X‖ + eps); bf16 by bf16(bf16(‖X‖) + eps) and rounds X before and after.
  const float denom = bf16 ? bf16r(bf16r(static_cast<float>(nrm)) + static_cast<float>(eps))
                           : static_cast<float>(nrm + eps);
  auto value = [&](float v) { return bf16 ? bf16r(__fdiv_rn(bf16r(v), denom)) : __fdiv_rn(v, denom); };
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTile, j0 = static_cast<int64_t>(blockIdx.x) * kTile;
  for (int k = threadIdx.y; k < kTile; k += kTileRows) {
    const int64_t i = i0 + k, j = j0 + threadIdx.x;
    if (i < rows && j < cols) {
      const float v = value(u[i * cols + j]);
      if (transpose)
        tile[k][threadIdx.x] = v;
      else
        x[i * cols + j] = store_as<T>(v);
    }
  }
  if (!transpose) return;
  __syncthreads();
  for (int k = threadIdx.y; k < kTile; k += kTileRows) {
    const int64_t j = j0 + k, i = i0 + threadIdx.x;  // X[j][i] = U[i][j]
    if (i < rows && j < cols) x[j * rows + i] = store_as<T>(tile[threadIdx.x][k]);
  }
}

// Grid (col tiles, row tiles, nb) over the destination W[m] (rows x cols). X[m] is rows x cols, or cols x rows
// when transposed.
template <class T>
__global__ void muon_apply_kernel(const T* X, int64_t rows, int64_t cols, bool transpose, const int64_t* offs,
                                  float scale, bool bf16, float lr, float decay, bool apply_decay, float* W) {
  __shared__ float tile[kTile][kTile + 1];
  const size_t m = blockIdx.z, n = static_cast<size_t>(rows) * cols;
  const T* x = X + m * n;
  float* w = W + offs[m];
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTile, j0 = static_cast<int64_t>(blockIdx.x) * kTile;
  if (transpose) {
    for (int k = threadIdx.y; k < kTile; k += kTileRows) {
      const int64_t j = j0 + k, i = i0 + threadIdx.x;  // W[i][j] = X[j][i]
      if (i < rows && j < cols) tile[k][threadIdx.x] = load_f(x[j * rows + i]);
    }
    __syncthreads();
  }
  for (int k = threadIdx.y; k < kTile; k += kTileRows) {
    const int64_t i = i0 + k, j = j0 + threadIdx.x;
    if (i >= rows || j >= cols) continue;
    float u = __fmul_rn(transpose ? tile[threadIdx.x][k] : load_f(x[i * cols + j]), scale);
    if (bf16) u = bf16r(u);
    float wv = w[i * cols + j];
    if (apply_decay) wv = __fmul_rn(wv, decay);
    w[i * cols + j] = __fmaf_rn(-lr, u, wv);
  }
}

// ---- Adam ---------------------------------------------------------------------------------------------------

__global__ void adam_kernel(const AdamChunk* table, AdamConsts c, float* w, const float* g, float* m, float* v) {
  const AdamChunk ch = table[blockIdx.x];
  const AdamGroupConsts gc = c.groups[ch.group];
  if (!gc.enabled) return;
  for (int32_t k = threadIdx.x; k < ch.len; k += kThreads) {
    const size_t i = ch.offset + k;
    float gi = gc.bf16 ? bf16r(g[i]) : g[i], wi = w[i];
    if (gc.coupled) gi = __fmaf_rn(gc.wd, wi, gi);
    if (gc.decoupled) wi = __fmul_rn(wi, gc.decay);
    const float mi = __fmaf_rn(c.b1, m[i], __fmul_rn(c.omb1, gi));
    const float vi = __fmaf_rn(c.b2, v[i], __fmul_rn(__fmul_rn(c.omb2, gi), gi));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.bc2_sqrt), c.eps);
    wi = __fmaf_rn(-gc.step_size, __fdiv_rn(mi, denom), wi);
    m[i] = gc.bf16 ? bf16r(mi) : mi;  // a bf16 group: torch's fused Adam stores bf16 moments and weights
    v[i] = gc.bf16 ? bf16r(vi) : vi;
    w[i] = gc.bf16 ? bf16r(wi) : wi;
  }
}

// ---- fake quant ---------------------------------------------------------------------------------------------

__global__ void fake_quant_kernel(const float* W, int64_t cols, int R, float* out) {
  __shared__ float sh_max[kThreads];
  __shared__ int64_t sh_nan[kThreads];
  const float* row = W + static_cast<size_t>(blockIdx.x) * cols;
  float* o = out + static_cast<size_t>(blockIdx.x) * cols;
  float mx = 0;
  int64_t last_nan = -1;  // the CPU's running max ends on the row's last NaN
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) {
    const float v = row[j];
    if (isnan(v))
      last_nan = j;
    else
      mx = fmaxf(mx, fabsf(v));
  }
  sh_max[threadIdx.x] = mx;
  sh_nan[threadIdx.x] = last_nan;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) {
      sh_max[threadIdx.x] = fmaxf(sh_max[threadIdx.x], sh_max[threadIdx.x + s]);
      sh_nan[threadIdx.x] = max(sh_nan[threadIdx.x], sh_nan[threadIdx.x + s]);
    }
    __syncthreads();
  }
  const int64_t nan_at = sh_nan[0];
  const float m = sh_max[0];
  __syncthreads();  // every thread has read the results before `out` (which may alias W) is written
  if (nan_at >= 0) {
    const float nanv = row[nan_at];
    for (int64_t j = threadIdx.x; j < cols; j += kThreads) o[j] = nanv;
    return;
  }
  const float Rf = static_cast<float>(R);
  const float floor = static_cast<float>(1.0 / R);
  unsigned short h = __half_as_ushort(__float2half_rn(__fdiv_rn(fmaxf(m, floor), Rf)));
  if ((h & 0x7fffu) == 0) h = 1;
  const float s = __half2float(__ushort_as_half(h));
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) {
    float q = rintf(__fdiv_rn(row[j], s));
    q = q < -Rf ? -Rf : (Rf < q ? Rf : q);  // std::clamp's comparisons
    o[j] = __fmul_rn(static_cast<float>(static_cast<int>(q)), s);
  }
}

}  // namespace

int sumsq_chunks(size_t n) { return static_cast<int>(std::max<size_t>(1, (n + kSumChunk - 1) / kSumChunk)); }

void launch_sumsq_partials(const float* x, size_t n, int64_t nb, bool bf16_inputs, double* partials, cudaStream_t s) {
  if (nb <= 0) return;
  PTOOL_LAUNCH(sumsq_partials_kernel, dim3(sumsq_chunks(n), static_cast<unsigned>(nb)), kThreads, 0, s)(
      x, n, bf16_inputs, partials);
  PTOOL_CUDA_LAUNCHED("sumsq_partials", s);
}

void launch_sumsq_finalize(const double* partials, int chunks, int64_t nb, double* ss, cudaStream_t s) {
  if (nb <= 0) return;
  PTOOL_LAUNCH(sumsq_finalize_kernel, static_cast<unsigned>(nb), kThreads, 0, s)(partials, chunks, ss);
  PTOOL_CUDA_LAUNCHED("sumsq_finalize", s);
}

void launch_muon_momentum(const int64_t* offs, int64_t nb, size_t n, const float* G, float* buf, float* U, float mu,
                          bool nesterov, cudaStream_t s) {
  map("muon_momentum", MomentumF{offs, n, G, buf, U, mu, nesterov}, n * static_cast<size_t>(nb), s);
}

void launch_row_normalize(float* U, int64_t nrows, int64_t cols, cudaStream_t s) {
  if (nrows <= 0) return;
  PTOOL_LAUNCH(row_normalize_kernel, static_cast<unsigned>(nrows), kThreads, 0, s)(U, cols);
  PTOOL_CUDA_LAUNCHED("row_normalize", s);
}

void launch_ns_pack(const float* U, const double* ss, int64_t nb, int64_t rows, int64_t cols, double eps, bool bf16,
                    void* X, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((cols + kTile - 1) / kTile), static_cast<unsigned>((rows + kTile - 1) / kTile),
                  static_cast<unsigned>(nb));
  const dim3 block(kTile, kTileRows);
  if (bf16)
    PTOOL_LAUNCH(ns_pack_kernel, grid, block, 0, s)(
        U, ss, rows, cols, eps, true, rows > cols, static_cast<__nv_bfloat16*>(X));
  else
    PTOOL_LAUNCH(ns_pack_kernel, grid, block, 0, s)(U, ss, rows, cols, eps, false, rows > cols, static_cast<float*>(X));
  PTOOL_CUDA_LAUNCHED("ns_pack", s);
}

void launch_muon_apply(const void* X, bool bf16, int64_t nb, int64_t rows, int64_t cols, const int64_t* offs,
                       float scale, float lr, float decay, bool apply_decay, float* W, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((cols + kTile - 1) / kTile), static_cast<unsigned>((rows + kTile - 1) / kTile),
                  static_cast<unsigned>(nb));
  const dim3 block(kTile, kTileRows);
  if (bf16)
    PTOOL_LAUNCH(muon_apply_kernel, grid, block, 0, s)(
        static_cast<const __nv_bfloat16*>(X), rows, cols, rows > cols, offs, scale, true, lr, decay, apply_decay, W);
  else
    PTOOL_LAUNCH(muon_apply_kernel, grid, block, 0, s)(
        static_cast<const float*>(X), rows, cols, rows > cols, offs, scale, false, lr, decay, apply_decay, W);
  PTOOL_CUDA_LAUNCHED("muon_apply", s);
}

void launch_adam(const AdamChunk* table, int64_t nchunks, const AdamConsts& c, float* w, const float* g, float* m,
                 float* v, cudaStream_t s) {
  if (nchunks <= 0) return;
  PTOOL_LAUNCH(adam_kernel, static_cast<unsigned>(nchunks), kThreads, 0, s)(table, c, w, g, m, v);
  PTOOL_CUDA_LAUNCHED("adam", s);
}

void launch_clip_scale(float* g, size_t n, const double* ss, double max_norm, cudaStream_t s) {
  map("clip_scale", ClipF{g, ss, max_norm}, n, s);
}

void launch_ema(float* ema, const float* w, size_t n, float d, float omd, cudaStream_t s) {
  map("ema", EmaF{ema, w, d, omd}, n, s);
}

void launch_mask(float* g, const uint8_t* mask, size_t n, cudaStream_t s) { map("mask", MaskF{g, mask}, n, s); }

void launch_masked_sgd(float* w, const float* g, float* buf, const uint8_t* mask, size_t n, float lr, float mu,
                       bool first, cudaStream_t s) {
  map("masked_sgd", MaskedSgdF{w, g, buf, mask, lr, mu, first}, n, s);
}

void launch_swa(float* sum, const float* w, size_t n, bool first, cudaStream_t s) {
  map("swa", SwaF{sum, w, first}, n, s);
}

void launch_fake_quantize_rows(const float* W, int64_t rows, int64_t cols, int bits, float* out, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  PTOOL_LAUNCH(fake_quant_kernel, static_cast<unsigned>(rows), kThreads, 0, s)(W, cols, (1 << (bits - 1)) - 1, out);
  PTOOL_CUDA_LAUNCHED("fake_quantize_rows", s);
}

}  // namespace ptool::cuda
