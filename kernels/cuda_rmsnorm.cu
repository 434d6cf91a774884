// CUDA kernels of RMSNorm and its fused forms: after a scaled residual, a resid_mix or the whole layer entry
// (forward), and before resid_mix's or the channel scale's backward. Contracts: src/ops/cpu_ops.h.
//
// - RMSNorm forward/backward: one warp per row; sum of squares and the backward's dot product accumulate in
//   double (as the CPU reference does), so rstd almost always matches it bit for bit.
// - Row-wise backwards with column sums (RMSNorm + resid_mix, RMSNorm + channel scale): one warp per row (two at
//   D > 512, each with half the columns) does the row's reduction and element-wise work in registers, and keeps
//   its double column sums; blocks write them as chunk partials in a fixed layout that colreduce_finalize adds up.
//   Deterministic.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda_internal.h"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_ops_common.cuh"

namespace ptool::cuda {

namespace {

// ---- RMSNorm ------------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(256) rmsnorm_fwd_kernel(In x, int64_t N, int64_t D, float eps, Out out,
                                                          float* rstd) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < N; row += nwarps) {
    const float r = row_rstd(x, row * D, D, eps, lane);
    if (lane == 0) rstd[row] = r;
    // out may alias x (fp32): each element is read and written by the same lane
    for (int64_t d = lane; d < D; d += 32) put(out, row * D + d, get(x, row * D + d) * r);
  }
}

__global__ void __launch_bounds__(256) rmsnorm_bwd_kernel(In dout, In x, const float* rstd, int64_t N,
                                                          int64_t D, Out dx, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < N; row += nwarps)
    rmsnorm_bwd_row(dout, row * D, x, row * D, rstd[row], D, lane, dx, row * D, accumulate);
}

// ---- the residual stream's sum, then RMSNorm (fused forwards) -----------------------------------------------

// The combination, then rmsnorm_fwd_kernel, one warp per row: y = f(a, b), h = y * rstd(y) of y as stored. The
// second pass rereads y, which the same lane just wrote (from cache).
template <class Combine>
__global__ void __launch_bounds__(256) combine_rmsnorm_kernel(In a, In b, Combine f, int64_t N, int64_t D, float eps,
                                                              Out y, Out h, float* rstd) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < N; row += nwarps) {
    for (int64_t d = lane; d < D; d += 32) put(y, row * D + d, f(d, get(a, row * D + d), get(b, row * D + d)));
    const float r = row_rstd(y, row * D, D, eps, lane);
    if (lane == 0) rstd[row] = r;
    for (int64_t d = lane; d < D; d += 32) put(h, row * D + d, get(y, row * D + d) * r);
  }
}

// Backend::layer_entry_forward, one warp per row, with the roundings of the composed ops: x = ScaledSum(a, b),
// xs = Skip(x, skip) (ScaledSum with the skip weights, or GatedSum), y = MixSum(xs, x0), each as y's storage holds
// it (x and xs are rounded alike when not written), then rmsnorm_fwd_kernel's h and rstd.
template <class Skip>
__global__ void __launch_bounds__(256) layer_entry_kernel(In a, In b, ScaledSum branch, In skip, Skip skip_add,
                                                          In x0, MixSum mix, int64_t N, int64_t D, float eps, Out x,
                                                          Out xs, Out y, Out h, float* rstd) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < N; row += nwarps) {
    for (int64_t d = lane; d < D; d += 32) {
      const int64_t i = row * D + d;
      float v = as_stored(y, branch(d, get(a, i), get(b, i)));
      if (!x.empty()) put(x, i, v);
      if (!skip.empty()) {
        v = as_stored(y, skip_add(d, v, get(skip, i)));
        if (!xs.empty()) put(xs, i, v);
      }
      put(y, i, mix(d, v, get(x0, i)));
    }
    const float r = row_rstd(y, row * D, D, eps, lane);
    if (lane == 0) rstd[row] = r;
    for (int64_t d = lane; d < D; d += 32) put(h, row * D + d, get(y, row * D + d) * r);
  }
}

// ---- RMSNorm's backward, then a per-element op (fused backwards) --------------------------------------------

// RMSNorm's backward followed by a per-element op in one pass (Backend::rmsnorm_resid_mix_backward and
// rmsnorm_channel_scale_backward): a team of G warps per row, the row's D = 32 CPL columns split among them (lane
// owns columns lane + 32 j; warp part g of its team the j in [g CPL / G, (g + 1) CPL / G)), their values held in
// registers. The norm's input y comes from F::y(i, col). Each warp forms the row's dot product over all D columns
// itself, in the order of the composed rmsnorm_backward (so c, and dx, are bit for bit the same; the team's other
// warps read the row from cache, and need no barrier). t = dx + rmsnorm_grad(dh, y), the gradient at y, goes to
// F(i, col, t, v), which writes its outputs and returns its F::kOut column-sum terms in v. Each warp keeps the
// double column sums of its columns over its team's rows_per_team rows; the block adds its teams' sums in team
// order into partial[(block * kOut + k) * D + c] for colreduce_finalize (a fixed order: deterministic). Saves the
// write and re-read of t that composed ops pass through memory. 256 threads per block, at most 128 registers (2
// blocks per SM): a warp's double sums take 2 kOut CPL / G of them, which fits up to CPL / G = 16 (D = 512 with
// one warp a row, D = 1024 with two).
// Its template argument: the columns per lane, the warps per row and the element op, as one type (PTOOL_LAUNCH
// takes no commas).
template <int C, int G, class Op>
struct BwdThen {
  static constexpr int kCpl = C;
  static constexpr int kWarpsPerRow = G;
  using F = Op;
};
template <class Cfg>
__global__ void __launch_bounds__(256, 2) rmsnorm_bwd_then_kernel(typename Cfg::F f, In dh, const float* rstd, In dx,
                                                                  int64_t N, int64_t rows_per_team,
                                                                  double* partial) {
  constexpr int CPL = Cfg::kCpl, G = Cfg::kWarpsPerRow, CPW = CPL / G, TEAMS = 8 / G;
  static_assert(CPL % G == 0 && 8 % G == 0, "a row's columns split evenly among the warps of a block's teams");
  constexpr int64_t D = 32 * CPL;
  constexpr int K = Cfg::F::kOut;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, part = warp % G, j0 = part * CPW;
  const int64_t team = static_cast<int64_t>(blockIdx.x) * TEAMS + warp / G;
  const int64_t r0 = team * rows_per_team, r1 = r0 + rows_per_team < N ? r0 + rows_per_team : N;
  double sums[K][CPW];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int j = 0; j < CPW; ++j) sums[k][j] = 0.0;
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
    for (int j = 0; j < CPW; ++j) {
      const int64_t col = lane + 32 * (j0 + j), i = off + col;
      double v[K];
      f(i, col, __fadd_rn(get(dx, i), rmsnorm_grad(r, get(dh, i), c, f.y(i, col))), v);
#pragma unroll
      for (int k = 0; k < K; ++k) sums[k][j] += v[k];
    }
  }
  __shared__ double sh[TEAMS][D];
  for (int k = 0; k < K; ++k) {
    __syncthreads();  // sh is free (k > 0: the block has read k - 1's sums)
#pragma unroll
    for (int j = 0; j < CPW; ++j) sh[warp / G][lane + 32 * (j0 + j)] = sums[k][j];
    __syncthreads();
    for (int64_t col = threadIdx.x; col < D; col += blockDim.x) {
      double t = 0.0;
      for (int v = 0; v < TEAMS; ++v) t += sh[v][col];
      partial[(static_cast<int64_t>(blockIdx.x) * K + k) * D + col] = t;
    }
  }
}

// resid_mix's backward of t (with its rounding): dx = m0 t, dx0 += m1 t; column sums of t x and t x0. The norm's
// input y = resid_mix(x, x0) is recomputed (MixSum, as the forward formed it, rounded to bf16 when the forward
// stored it so) from the x and x0 it reads anyway. dx_add (a skip's gradient) joins dx, and with fold_x0 dx goes to
// dx0 instead, with the fp32 roundings of the adds they replace (Backend::rmsnorm_resid_mix_backward); bf16
// gradients are rounded once, as stored.
struct ResidMixOfGradF {
  static constexpr int kOut = 2;
  In x, x0;
  const float* m;
  bool y_bf16;
  Out dx, dx0;
  In dx_add;
  bool fold_x0;
  int64_t D;
  __device__ float y(int64_t i, int64_t col) const {
    const float v = MixSum{m, D}(col, get(x, i), get(x0, i));
    return y_bf16 ? round_to_bf16(v) : v;
  }
  __device__ void operator()(int64_t i, int64_t col, float t, double* v) const {
    float gx = __fmul_rn(m[col], t);
    if (!dx_add.empty()) gx = __fadd_rn(gx, get(dx_add, i));
    const float gx0 = __fadd_rn(get(dx0, i), __fmul_rn(m[D + col], t));
    if (fold_x0) {
      put(dx0, i, __fadd_rn(gx0, gx));
    } else {
      put(dx, i, gx);
      put(dx0, i, gx0);
    }
    v[0] = static_cast<double>(get(x, i)) * t;
    v[1] = static_cast<double>(get(x0, i)) * t;
  }
};

// The channel scale's backward of t: dx = t (the residual gradient goes on), dout = s t; column sums of t o.
struct ChannelScaleOfGradF {
  static constexpr int kOut = 1;
  In yv;  // the norm's input
  In o;
  const float* sc;
  Out dx;
  Out dout;
  __device__ float y(int64_t i, int64_t) const { return get(yv, i); }
  __device__ void operator()(int64_t i, int64_t col, float t, double* v) const {
    put(dx, i, t);
    put(dout, i, __fmul_rn(sc[col], t));
    v[0] = static_cast<double>(t) * static_cast<double>(get(o, i));
  }
};

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------------------

void launch_rmsnorm_forward(In x, int64_t N, int64_t D, float eps, Out out, float* rstd, cudaStream_t s) {
  if (N <= 0) return;
  PTOOL_LAUNCH(rmsnorm_fwd_kernel, row_warps_grid(N), 256, 0, s)(x, N, D, eps, out, rstd);
  PTOOL_CUDA_LAUNCHED("rmsnorm_forward", s);
}

void launch_rmsnorm_backward(In dout, In x, const float* rstd, int64_t N, int64_t D, Out dx, bool accumulate,
                             cudaStream_t s) {
  if (N <= 0 || dx.empty()) return;
  PTOOL_LAUNCH(rmsnorm_bwd_kernel, row_warps_grid(N), 256, 0, s)(dout, x, rstd, N, D, dx, accumulate);
  PTOOL_CUDA_LAUNCHED("rmsnorm_backward", s);
}

void launch_scaled_residual_rmsnorm_forward(In x, In o, const float* sc, int64_t N, int64_t D, float eps, Out y,
                                            Out h, float* rstd, cudaStream_t s) {
  if (N <= 0 || D <= 0) return;
  PTOOL_LAUNCH(combine_rmsnorm_kernel<ScaledSum>, row_warps_grid(N), 256, 0, s)(x, o, ScaledSum{sc}, N, D, eps, y,
                                                                                h, rstd);
  PTOOL_CUDA_LAUNCHED("scaled_residual_rmsnorm_forward", s);
}

void launch_layer_entry_forward(In a, In b, const float* sc, In skip, const float* w, const float* g, In x0,
                                const float* m, int64_t N, int64_t D, float eps, Out x, Out xs, Out y, Out h,
                                float* rstd, cudaStream_t s) {
  if (N <= 0 || D <= 0) return;
  auto run = [&](auto skip_sum) {
    PTOOL_LAUNCH(layer_entry_kernel<decltype(skip_sum)>, row_warps_grid(N), 256, 0, s)(
        a, b, ScaledSum{sc}, skip, skip_sum, x0, MixSum{m, D}, N, D, eps, x, xs, y, h, rstd);
  };
  if (g && !skip.empty())
    run(GatedSum{w, g});
  else
    run(ScaledSum{w});
  PTOOL_CUDA_LAUNCHED("layer_entry_forward", s);
}

void launch_resid_mix_rmsnorm_forward(In x, In x0, const float* m, int64_t N, int64_t D, float eps, Out y, Out h,
                                      float* rstd, cudaStream_t s) {
  if (N <= 0 || D <= 0) return;
  PTOOL_LAUNCH(combine_rmsnorm_kernel<MixSum>, row_warps_grid(N), 256, 0, s)(x, x0, MixSum{m, D}, N, D, eps, y, h,
                                                                             rstd);
  PTOOL_CUDA_LAUNCHED("resid_mix_rmsnorm_forward", s);
}

bool rmsnorm_fused_backward(int64_t D) {
  return D == 64 || D == 128 || D == 256 || D == 512 || D == 768 || D == 1024;
}

namespace {

template <class F>
void launch_rmsnorm_bwd_then(const F& f, In dh, const float* rstd, In dx, int64_t N, int64_t D,
                             float* sum0, float* sum1, Workspace& ws, cudaStream_t s, const char* name) {
  if (!rmsnorm_fused_backward(D))
    throw std::invalid_argument(std::string(name) + ": no fused kernel for D = " + std::to_string(D));
  if (N <= 0) return;
  constexpr int K = F::kOut;
  double* partial = nullptr;
  int64_t blocks = 0;
  // The grid for Cfg's warps per row: at most about 4096 warps (512 blocks, a few waves on an H100) and at least 4
  // rows a team, so few block partials.
  auto run = [&](auto cfg) {
    using Cfg = decltype(cfg);
    constexpr int64_t G = Cfg::kWarpsPerRow;
    const int64_t rows_per_team = std::max<int64_t>(4, (N * G + 4095) / 4096);
    const int64_t teams = (N + rows_per_team - 1) / rows_per_team, teams_per_block = 8 / G;
    blocks = (teams + teams_per_block - 1) / teams_per_block;
    partial = static_cast<double*>(ws.get(static_cast<size_t>(blocks * K * D) * sizeof(double)));
    PTOOL_LAUNCH(rmsnorm_bwd_then_kernel<Cfg>, static_cast<unsigned>(blocks), 256, 0, s)(f, dh, rstd, dx, N,
                                                                                         rows_per_team, partial);
  };
  switch (D) {  // one warp a row up to D = 512 (16 columns a lane), two beyond
    case 64: run(BwdThen<2, 1, F>{}); break;
    case 128: run(BwdThen<4, 1, F>{}); break;
    case 256: run(BwdThen<8, 1, F>{}); break;
    case 512: run(BwdThen<16, 1, F>{}); break;
    case 768: run(BwdThen<24, 2, F>{}); break;
    default: run(BwdThen<32, 2, F>{});
  }
  PTOOL_CUDA_LAUNCHED(name, s);
  PTOOL_LAUNCH(colreduce_finalize<K>, dim3(static_cast<unsigned>(D), K), 256, 0, s)(partial, blocks, D, 1, sum0,
                                                                                   sum1);
  PTOOL_CUDA_LAUNCHED(name, s);
}

}  // namespace

void launch_rmsnorm_resid_mix_backward(In dh, const float* rstd, In x, In x0, const float* m, bool y_bf16, int64_t N,
                                       int64_t D, Out dx, Out dx0, float* dm_acc, In dx_add, bool fold_x0,
                                       Workspace& ws, cudaStream_t s) {
  launch_rmsnorm_bwd_then(ResidMixOfGradF{x, x0, m, y_bf16, dx, dx0, dx_add, fold_x0, D}, dh, rstd, dx, N, D, dm_acc,
                          dm_acc + D, ws, s, "rmsnorm_resid_mix_backward");
}

void launch_rmsnorm_channel_scale_backward(In dh, In y, const float* rstd, In o, const float* sc,
                                           int64_t N, int64_t D, Out dx, Out dout, float* ds_acc, Workspace& ws,
                                           cudaStream_t s) {
  launch_rmsnorm_bwd_then(ChannelScaleOfGradF{y, o, sc, dx, dout}, dh, rstd, dx, N, D, ds_acc, nullptr, ws, s,
                          "rmsnorm_channel_scale_backward");
}

}  // namespace ptool::cuda
