// CUDA kernels of RoPE and of the q/k preparation (QK RMSNorm, RoPE, q gain). Contracts: src/ops/cpu_ops.h.
//
// - RoPE alone: launch_map's one grid-stride kernel over the flat index (a pair per element).
// - q/k preparation: the same per-row arithmetic fused into one warp-per-row kernel each way, so q and k are read
//   once and written once instead of three times.
// - q's gain + q/k preparation backward: one warp per head row does the row's element-wise work in shared memory
//   and keeps its double sum for the gain's gradient; the warps write them as chunk partials in a fixed layout that
//   colreduce_finalize adds up. Deterministic.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "kernels/cuda_internal.h"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_ops_common.cuh"

namespace ptool::cuda {

namespace {

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

// ---- q/k preparation: RMSNorm, RoPE and the q gain in one pass ----------------------------------------------
// One warp per head row (row = (b * Tn + t) * H + h), the arithmetic of rmsnorm_fwd_kernel (cuda_rmsnorm.cu),
// RopeApplyF and HeadScaleFwdF (cuda_elementwise.cu) in that order. x may alias raw: every element is read before
// it is written, by the same lane.

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
    prep_bwd_row(d + row * hd, (row / H) % Tn, raw, row * hd, norm ? rstd[row] : 1.f, hd, half, norm, cos_t, sin_t,
                 norm ? draw : Out{}, head_row_offset(row, H, hd, ld, col), lane);
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
    prep_gain_dot(acc, dq + off, t, raw, off, r, hd, half, norm, cos_t, sin_t, lane);
    for (int64_t i = lane; i < hd; i += 32) d[i] = __fmul_rn(g, dq[off + i]);
    __syncwarp();
    prep_bwd_row(d, t, raw, off, r, hd, half, norm, cos_t, sin_t, draw, tok * ld + col + h * hd, lane);
    __syncwarp();  // the row is read before the next one overwrites it
  }
  acc = warp_sum_d(acc);
  if (lane == 0) partial[w] = acc;
}

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------------------

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

void launch_add_chunk_sums(const double* partial, int64_t chunks, int64_t H, float* acc, cudaStream_t s) {
  if (chunks <= 0 || H <= 0) return;
  PTOOL_LAUNCH(colreduce_finalize<1>, dim3(static_cast<unsigned>(H), 1), 256, 0, s)(partial, chunks, H, 1, acc,
                                                                                   nullptr);
  PTOOL_CUDA_LAUNCHED("add_chunk_sums", s);
}

}  // namespace ptool::cuda
