// CUDA kernels of the element-wise ops: add, scale, bf16 conversions, copy_columns, gather_rows, the channel and
// head scales, and the activations. Contracts: src/ops/cpu_ops.h.
//
// - fp32 -> bf16 conversion (GEMM operands in bf16 mode): grid-stride, 16-byte loads and 8-byte stores when
//   aligned; memory-bound (6 bytes per element).
// - Add, scale, activations, channel/head scale forward: launch_map's one grid-stride kernel over the flat index;
//   add/scale use 16-byte accesses when the pointers allow.
// - Channel/head scale backward: the element-wise input gradient fused with the deterministic column reduction of
//   the parameter's gradient (launch_colreduce).
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda_internal.h"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_ops_common.cuh"

namespace ptool::cuda {

namespace {

void require_writable(const Out& o, bool accumulate, const char* op) {
  if (o.bf16 && accumulate)
    throw std::invalid_argument(std::string(op) + ": cannot add into a bf16 buffer (it is only written)");
}

// ---- add, scale and bf16 conversions ------------------------------------------------------------------------

struct AddF {  // either side may be a bf16 buffer (the residual stream's gradient)
  Out y;
  In x;
  __device__ void operator()(int64_t i) const { put(y, i, get(y, i) + get(x, i)); }
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
  __device__ void operator()(int64_t i) const { y[i] = round_to_bf16(x[i]); }
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

// ---- copies -------------------------------------------------------------------------------------------------

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

// ---- scales -------------------------------------------------------------------------------------------------

struct ChannelScaleFwdF {
  const float* x;
  const float* s;
  float* y;
  int64_t D;
  __device__ void operator()(int64_t i) const { y[i] = s[i % D] * x[i]; }
};
struct ChannelScaleBwdF {
  static constexpr int kOut = 1;
  In dy, x;
  const float* s;
  Out dx;
  int64_t D;
  bool accumulate;  // dx += (else dx =)
  __device__ void operator()(int64_t n, int64_t c, double* v) const {
    const int64_t i = n * D + c;
    const float g = get(dy, i);
    if (accumulate && !dx.empty())
      put(dx, i, get(dx, i) + s[c] * g);
    else if (!dx.empty())
      put(dx, i, s[c] * g);
    v[0] = static_cast<double>(g) * static_cast<double>(get(x, i));
  }
};
// y += s[0] x, and its backward (Backend::scaled_add_*): y and dy hold operand-buffer values (get_as/put_as), dy's
// rows ld apart from column col.
struct ScaledAddFwdF {
  In x;
  const float* s;
  Out y;
  bool bf16;
  __device__ void operator()(int64_t i) const { put_as(y, i, get_as(In(y), i, bf16) + s[0] * get(x, i), bf16); }
};
struct ScaledAddBwdF {
  static constexpr int kOut = 1;
  In dy, x;
  int64_t ld, col, C;
  const float* s;
  Out dx;  // added into; may be empty
  bool bf16;
  __device__ void operator()(int64_t n, int64_t c, double* v) const {
    const int64_t i = n * C + c;
    const float g = get_as(dy, n * ld + col + c, bf16);
    if (!dx.empty()) put(dx, i, get(In(dx), i) + s[0] * g);
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

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------------------

void launch_add(Out y, In x, size_t n, cudaStream_t s) {
  const int64_t nn = static_cast<int64_t>(n);
  if (y.f32 && x.f32 && aligned16(y.f32) && aligned16(x.f32)) {
    const int64_t n4 = nn / 4;
    launch_map(Add4F{reinterpret_cast<float4*>(y.f32), reinterpret_cast<const float4*>(x.f32)}, n4, s, "add");
    launch_map(AddF{y.f32 + 4 * n4, x.f32 + 4 * n4}, nn - 4 * n4, s, "add");
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

void launch_channel_scale_forward(const float* x, const float* sc, int64_t N, int64_t D, float* y, cudaStream_t s) {
  if (D <= 0) return;
  launch_map(ChannelScaleFwdF{x, sc, y, D}, N * D, s, "channel_scale_forward");
}

void launch_scaled_add_forward(In x, const float* sc, int64_t N, int64_t C, bool bf16, Out y, cudaStream_t s) {
  launch_map(ScaledAddFwdF{x, sc, y, bf16}, N * C, s, "scaled_add_forward");
}

void launch_scaled_add_backward(In dy, int64_t ld, int64_t col, In x, const float* sc, int64_t N, int64_t C, bool bf16,
                                Out dx_acc, float* ds_acc, Workspace& ws, cudaStream_t s) {
  if (dx_acc.empty() && !ds_acc) return;
  launch_colreduce(ScaledAddBwdF{dy, x, ld, col, C, sc, dx_acc, bf16}, N, C, C, ds_acc, nullptr, ws, s,
                   "scaled_add_backward");
}

void launch_channel_scale_backward(In dy, In x, const float* sc, int64_t N, int64_t D, Out dx, bool accumulate,
                                   float* ds_acc, Workspace& ws, cudaStream_t s) {
  if (dx.empty() && !ds_acc) return;
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

}  // namespace ptool::cuda
