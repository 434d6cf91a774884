// Exclusive self-attention (XSA): Backend::xsa_forward and xsa_backward. One warp per (token, kv group): the group's
// value row is read once, normalized, and serves each of its heads, so v's gradient is summed over the group's heads
// in registers (no atomics). A lane holds elements lane, lane + 32, ... of a row (hd <= kMaxXsaHd).
// With bf16 values (the bf16 mode), every input is read and every output stored as a bf16 operand buffer holds it,
// also where the buffers are fp32 (the mode without operand buffers): the results are then the same either way, as
// they are for the GEMMs and attention, which round their inputs.
#include <stdexcept>
#include <string>

#include "kernels/cuda_ops_common.cuh"
#include "src/ops/cpu_ops.h"

namespace ptool::cuda {

namespace {

constexpr int kMaxXsaHd = 128;
constexpr int kXsaSlots = kMaxXsaHd / 32;

// The unit value of row `off` into u (lane's elements; 0 beyond hd); returns |v| (double) and sets r = 1/max(|v|, eps)
// as cpu::xsa_* do.
__device__ __forceinline__ double unit_value(In v, int64_t off, int64_t hd, bool bf16, int lane, float u[kXsaSlots],
                                             float& r) {
  float x[kXsaSlots];
  double ss = 0.0;
#pragma unroll
  for (int k = 0; k < kXsaSlots; ++k) {
    const int64_t j = lane + 32 * k;
    x[k] = j < hd ? get_as(v, off + j, bf16) : 0.f;
    ss += static_cast<double>(x[k]) * static_cast<double>(x[k]);
  }
  const double n = sqrt(warp_sum_d(ss));
  r = static_cast<float>(1.0 / fmax(n, cpu::kXsaEps));
#pragma unroll
  for (int k = 0; k < kXsaSlots; ++k) u[k] = __fmul_rn(x[k], r);
  return n;
}

// The row at off into a (0 beyond hd); returns a · u in double, summed over the warp.
__device__ __forceinline__ double load_dot(In x, int64_t off, int64_t hd, bool bf16, int lane,
                                           const float u[kXsaSlots], float a[kXsaSlots]) {
  double s = 0.0;
#pragma unroll
  for (int k = 0; k < kXsaSlots; ++k) {
    const int64_t j = lane + 32 * k;
    a[k] = j < hd ? get_as(x, off + j, bf16) : 0.f;
    s += static_cast<double>(a[k]) * static_cast<double>(u[k]);
  }
  return warp_sum_d(s);
}

__global__ void __launch_bounds__(256) xsa_fwd_kernel(In att, In v, int64_t rows, int64_t H, int64_t Hkv, int64_t hd,
                                                      bool bf16, Out y) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5, nwarps = static_cast<int64_t>(gridDim.x) * wpb, G = H / Hkv;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < rows; row += nwarps) {
    const int64_t n = row / Hkv, g = row % Hkv;
    float u[kXsaSlots], r;
    unit_value(v, row * hd, hd, bf16, lane, u, r);
    for (int64_t h = g * G; h < (g + 1) * G; ++h) {
      const int64_t off = (n * H + h) * hd;
      float a[kXsaSlots];
      const float c = static_cast<float>(load_dot(att, off, hd, bf16, lane, u, a));
#pragma unroll
      for (int k = 0; k < kXsaSlots; ++k)
        if (lane + 32 * k < hd) put_as(y, off + lane + 32 * k, __fsub_rn(a[k], __fmul_rn(c, u[k])), bf16);
    }
  }
}

// datt (written) and/or dv (added into; row n at n * ld + col), in cpu::xsa_backward's arithmetic.
__global__ void __launch_bounds__(256) xsa_bwd_kernel(In dy, In att, In v, int64_t rows, int64_t H, int64_t Hkv,
                                                      int64_t hd, bool bf16, Out datt, Out dv, int64_t ld,
                                                      int64_t col) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5, nwarps = static_cast<int64_t>(gridDim.x) * wpb, G = H / Hkv;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < rows; row += nwarps) {
    const int64_t n = row / Hkv, g = row % Hkv;
    float u[kXsaSlots], r;
    const double norm = unit_value(v, row * hd, hd, bf16, lane, u, r);
    double du[kXsaSlots] = {};
    for (int64_t h = g * G; h < (g + 1) * G; ++h) {
      const int64_t off = (n * H + h) * hd;
      float a[kXsaSlots], d[kXsaSlots];
      const float c = static_cast<float>(load_dot(att, off, hd, bf16, lane, u, a));
      const float e = static_cast<float>(load_dot(dy, off, hd, bf16, lane, u, d));
#pragma unroll
      for (int k = 0; k < kXsaSlots; ++k) {
        if (!datt.empty() && lane + 32 * k < hd)
          put_as(datt, off + lane + 32 * k, __fsub_rn(d[k], __fmul_rn(e, u[k])), bf16);
        du[k] -= static_cast<double>(__fmul_rn(c, d[k])) + static_cast<double>(__fmul_rn(e, a[k]));
      }
    }
    if (dv.empty()) continue;
    double p = 0.0;
    if (norm > cpu::kXsaEps) {
#pragma unroll
      for (int k = 0; k < kXsaSlots; ++k) p += du[k] * static_cast<double>(u[k]);
      p = warp_sum_d(p);
    }
    const int64_t base = n * ld + col + g * hd;
#pragma unroll
    for (int k = 0; k < kXsaSlots; ++k) {
      const int64_t j = lane + 32 * k;
      if (j >= hd) continue;
      const float add = __fmul_rn(r, static_cast<float>(du[k] - p * static_cast<double>(u[k])));
      put_as(dv, base + j, __fadd_rn(get_as(In(dv), base + j, bf16), add), bf16);
    }
  }
}

void check_xsa(const char* op, int64_t H, int64_t Hkv, int64_t hd) {
  if (H < 1 || Hkv < 1 || H % Hkv != 0 || hd < 1 || hd > kMaxXsaHd)
    throw std::invalid_argument(std::string(op) + ": needs H a multiple of Hkv and head_dim in 1.." +
                                std::to_string(kMaxXsaHd) + " (H " + std::to_string(H) + ", Hkv " +
                                std::to_string(Hkv) + ", head_dim " + std::to_string(hd) + ")");
}

}  // namespace

void launch_xsa_forward(In att, In v, int64_t N, int64_t H, int64_t Hkv, int64_t hd, bool bf16, Out y,
                        cudaStream_t s) {
  check_xsa("xsa_forward", H, Hkv, hd);
  const int64_t rows = N * Hkv;
  if (rows <= 0) return;
  PTOOL_LAUNCH(xsa_fwd_kernel, row_warps_grid(rows), 256, 0, s)(att, v, rows, H, Hkv, hd, bf16, y);
  PTOOL_CUDA_LAUNCHED("xsa_forward", s);
}

void launch_xsa_backward(In dy, In att, In v, int64_t N, int64_t H, int64_t Hkv, int64_t hd, bool bf16, Out datt,
                         Out dv, int64_t ld, int64_t col, cudaStream_t s) {
  check_xsa("xsa_backward", H, Hkv, hd);
  const int64_t rows = N * Hkv;
  if (rows <= 0 || (datt.empty() && dv.empty())) return;
  PTOOL_LAUNCH(xsa_bwd_kernel, row_warps_grid(rows), 256, 0, s)(dy, att, v, rows, H, Hkv, hd, bf16, datt, dv, ld, col);
  PTOOL_CUDA_LAUNCHED("xsa_backward", s);
}

}  // namespace ptool::cuda
