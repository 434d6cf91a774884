// The element access and per-row arithmetic that the op kernels (cuda_ops_common.cuh) share with the flash
// kernels (cuda_flash_mma.cu), whose dK/dV kernel can run the q/k preparation's backward in its epilogue: bf16-aware
// loads and stores, the rotation of one RoPE pair, RMSNorm's backward of one row by one warp, the gain's gradient
// terms and the preparation's backward of one head row. One implementation, so that the fused and the separate passes round
// alike. Included by several translation units: an unnamed namespace of forced-inline device functions.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda_internal.h"

namespace ptool::cuda {

namespace {

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

// The rotation of one pair (x1, x2) = (x[i], x[i + rot/2]) by the angle whose cosine and sine are c and s.
__device__ __forceinline__ void rotate_pair(float& x1, float& x2, float c, float s) {
  // no contraction into FMAs: the CPU's roundings, the same in every kernel that rotates
  const float y1 = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)), y2 = __fadd_rn(__fmul_rn(-x1, s), __fmul_rn(x2, c));
  x1 = y1;
  x2 = y2;
}

// RMSNorm's backward of one row by one warp: g's row at [goff, goff + D) (a warp's row in shared memory, or the
// same offset as x's), x's and o's at [off, off + D); o = r g - r^3 x mean(g x), added to o (accumulate) or
// written (fp32 or bf16; a bf16 o is read widened and written rounded). rmsnorm_grad_coef and rmsnorm_grad are its
// two halves.
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
    put(o, ooff + d, accumulate ? __fadd_rn(get(o, ooff + d), v) : v);
  }
}

// The gain's gradient terms of one head row: adds dq[i] x[i] over this lane's columns to acc (in double, in column
// order), with x = rope(norm ? raw r : raw), q before its gain, formed again exactly as qk_prep_fwd_kernel formed
// it (the forward does not keep it).
__device__ __forceinline__ void prep_gain_dot(double& acc, const float* dq, int64_t t, In raw, int64_t off, float r,
                                              int64_t hd, int64_t half, bool norm, const float* cos_t,
                                              const float* sin_t, int lane) {
  for (int64_t i = lane; i < half; i += 32) {
    const float r1 = get(raw, off + i), r2 = get(raw, off + i + half);
    float x1 = norm ? r1 * r : r1, x2 = norm ? r2 * r : r2;
    rotate_pair(x1, x2, cos_t[t * half + i], sin_t[t * half + i]);
    acc += static_cast<double>(dq[i]) * static_cast<double>(x1);
    acc += static_cast<double>(dq[i + half]) * static_cast<double>(x2);
  }
  for (int64_t i = 2 * half + lane; i < hd; i += 32) {  // dimensions past the rotary ones
    const float v = norm ? get(raw, off + i) * r : get(raw, off + i);
    acc += static_cast<double>(dq[i]) * static_cast<double>(v);
  }
}

// The q/k preparation's backward of one head row by one warp: the row d (hd floats in global or shared memory,
// overwritten) is rotated back by position t's angles (cos_t, sin_t: [T][half]); with norm, RMSNorm's backward of
// it (raw's row at raw_off, the forward's rstd r) is written into o at ooff; without, the rotated row, when o is
// given.
__device__ __forceinline__ void prep_bwd_row(float* d, int64_t t, In raw, int64_t raw_off, float r, int64_t hd,
                                             int64_t half, bool norm, const float* cos_t, const float* sin_t, Out o,
                                             int64_t ooff, int lane) {
  for (int64_t i = lane; i < half; i += 32) rotate_pair(d[i], d[i + half], cos_t[t * half + i], -sin_t[t * half + i]);
  __syncwarp();  // the row's rotated elements were written by other lanes
  if (norm) {
    rmsnorm_bwd_row(d, 0, raw, raw_off, r, hd, lane, o, ooff, false);
  } else if (o.f32 || o.bf16) {
    for (int64_t i = lane; i < hd; i += 32) put(o, ooff + i, d[i]);
  }
}

}  // namespace

}  // namespace ptool::cuda
