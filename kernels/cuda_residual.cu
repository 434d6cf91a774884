// CUDA kernels of the element-wise ops on the residual stream: scaled residual, skip, gated skip and resid_mix.
// Contracts: src/ops/cpu_ops.h. Their forms fused with RMSNorm are in cuda_rmsnorm.cu.
//
// - Forwards: launch_map's one grid-stride kernel over the flat index; the scaled residual uses 16-byte accesses
//   when the pointers allow.
// - Backwards: the element-wise input gradients fused with the deterministic column reduction of the parameters'
//   gradients (launch_colreduce).
#include <cmath>
#include <cstdint>

#include "kernels/cuda_internal.h"
#include "kernels/cuda_ops_common.cuh"

namespace ptool::cuda {

namespace {

// ---- scaled residual and resid_mix forward ------------------------------------------------------------------

// y = f(a, b) per channel (ScaledSum, MixSum), element-wise.
template <class Combine>
struct CombineF {
  In a, b;
  Combine f;
  Out y;
  int64_t D;
  __device__ void operator()(int64_t i) const { put(y, i, f(i % D, get(a, i), get(b, i))); }
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

// ---- skips and resid_mix ------------------------------------------------------------------------------------

struct SkipAddFwdF {
  float* x;
  const float* skip;
  const float* w;
  int64_t D;
  __device__ void operator()(int64_t i) const { x[i] += w[i % D] * skip[i]; }
};
struct SkipAddBwdF {
  static constexpr int kOut = 1;
  In dy, skip;
  const float* w;
  Out dskip;
  int64_t D;
  bool accumulate;  // dskip += (else dskip =)
  __device__ void operator()(int64_t n, int64_t c, double* v) const {
    const int64_t i = n * D + c;
    const float g = get(dy, i);
    if (!dskip.empty())
      put(dskip, i, accumulate ? __fadd_rn(get(dskip, i), __fmul_rn(w[c], g)) : __fmul_rn(w[c], g));
    v[0] = static_cast<double>(g) * static_cast<double>(get(skip, i));
  }
};
struct GatedSkipFwdF {
  In x, skip;
  const float* w;
  const float* g;
  Out y;
  int64_t D;
  __device__ void operator()(int64_t i) const { put(y, i, GatedSum{w, g}(i % D, get(x, i), get(skip, i))); }
};
struct GatedSkipBwdF {  // out 0: dw, out 1: dg
  static constexpr int kOut = 2;
  In dy, x, skip;
  const float* w;
  const float* g;
  Out dx, dskip;  // added to
  int64_t D;
  __device__ void operator()(int64_t n, int64_t c, double* v) const {
    const int64_t i = n * D + c;
    const float s = sigmoidf_(g[c]);
    const float gy = get(dy, i);
    if (!dx.empty()) put(dx, i, get(dx, i) + s * gy);
    if (!dskip.empty()) put(dskip, i, get(dskip, i) + (1.f - s) * w[c] * gy);
    const double sd = s, gyd = gy, k = get(skip, i);
    v[0] = (1.0 - sd) * k * gyd;
    v[1] = sd * (1.0 - sd) * (static_cast<double>(get(x, i)) - static_cast<double>(w[c]) * k) * gyd;
  }
};
struct ResidMixBwdF {  // out 0: dm[0, :], out 1: dm[1, :]
  static constexpr int kOut = 2;
  In dy, x, x0;
  const float* m;
  Out dx;  // may be dy: the element is read before it is written, by the same thread
  Out dx0;
  int64_t D;
  bool accumulate;  // dx += (else dx =); dx0 always accumulates
  __device__ void operator()(int64_t n, int64_t c, double* v) const {
    const int64_t i = n * D + c;
    const float gy = get(dy, i);
    if (!dx.empty()) put(dx, i, accumulate ? __fadd_rn(get(dx, i), __fmul_rn(m[c], gy)) : __fmul_rn(m[c], gy));
    if (!dx0.empty()) put(dx0, i, __fadd_rn(get(dx0, i), __fmul_rn(m[D + c], gy)));
    v[0] = static_cast<double>(get(x, i)) * gy;
    v[1] = static_cast<double>(get(x0, i)) * gy;
  }
};

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------------------

void launch_scaled_residual_forward(In x, In o, const float* sc, int64_t N, int64_t D, Out y, cudaStream_t s) {
  if (D <= 0) return;
  if (D % 4 == 0 && x.f32 && o.f32 && y.f32 && aligned16(x.f32) && aligned16(o.f32) && aligned16(y.f32)) {
    launch_map(Combine4F<ScaledSum>{reinterpret_cast<const float4*>(x.f32), reinterpret_cast<const float4*>(o.f32),
                                    {sc}, reinterpret_cast<float4*>(y.f32), D},
               N * D / 4, s, "scaled_residual_forward");
  } else {
    launch_map(CombineF<ScaledSum>{x, o, {sc}, y, D}, N * D, s, "scaled_residual_forward");
  }
}

void launch_skip_add_forward(float* x, const float* skip, const float* w, int64_t N, int64_t D, cudaStream_t s) {
  if (D <= 0) return;
  launch_map(SkipAddFwdF{x, skip, w, D}, N * D, s, "skip_add_forward");
}

void launch_skip_add_backward(In dy, In skip, const float* w, int64_t N, int64_t D, Out dskip, bool accumulate,
                              float* dw_acc, Workspace& ws, cudaStream_t s) {
  if (dskip.empty() && !dw_acc) return;
  launch_colreduce(SkipAddBwdF{dy, skip, w, dskip, D, accumulate}, N, D, 1, dw_acc, nullptr, ws, s,
                   "skip_add_backward");
}

void launch_gated_skip_forward(In x, In skip, const float* w, const float* g, int64_t N, int64_t D, Out y,
                               cudaStream_t s) {
  if (D <= 0) return;
  launch_map(GatedSkipFwdF{x, skip, w, g, y, D}, N * D, s, "gated_skip_forward");
}

void launch_gated_skip_backward(In dy, In x, In skip, const float* w, const float* g, int64_t N, int64_t D,
                                Out dx_acc, Out dskip_acc, float* dw_acc, float* dg_acc, Workspace& ws,
                                cudaStream_t s) {
  if (dx_acc.empty() && dskip_acc.empty() && !dw_acc && !dg_acc) return;
  launch_colreduce(GatedSkipBwdF{dy, x, skip, w, g, dx_acc, dskip_acc, D}, N, D, 1, dw_acc, dg_acc, ws, s,
                   "gated_skip_backward");
}

void launch_resid_mix_forward(In x, In x0, const float* m, int64_t N, int64_t D, Out y, cudaStream_t s) {
  if (D <= 0) return;
  launch_map(CombineF<MixSum>{x, x0, {m, D}, y, D}, N * D, s, "resid_mix_forward");
}

void launch_resid_mix_backward(In dy, In x, In x0, const float* m, int64_t N, int64_t D, Out dx, bool accumulate,
                               Out dx0_acc, float* dm_acc, Workspace& ws, cudaStream_t s) {
  if (dx.empty() && dx0_acc.empty() && !dm_acc) return;
  launch_colreduce(ResidMixBwdF{dy, x, x0, m, dx, dx0_acc, D, accumulate}, N, D, 1, dm_acc, dm_acc ? dm_acc + D : nullptr,
                   ws, s, "resid_mix_backward");
}

}  // namespace ptool::cuda
