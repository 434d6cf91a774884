// CUDA kernels of the softcap cross-entropy and of the sum of its per-row losses. Contracts: src/ops/cpu_ops.h.
//
// One block per row, two passes over the row, never storing probabilities: pass 1 an online (max, sum of exp) in
// fp32 per thread, combined across the block; pass 2 writes dz. Per-row loss lse - zc[y] in double. dz may alias z
// (each element is read then written by the same thread, and the target logit is read before the block barrier that
// precedes any write).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda_internal.h"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_ops_common.cuh"

namespace ptool::cuda {

namespace {

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

// ---- launchers ----------------------------------------------------------------------------------------------

void launch_softcap_cross_entropy(const float* z, const int32_t* targets, int64_t N, int64_t V, float cap,
                                  double* losses_dev, int32_t* bad_row, Out dz, float grad_scale,
                                  cudaStream_t s) {
  if (N <= 0) return;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(N, int64_t{1} << 20));
  PTOOL_LAUNCH(softcap_ce_kernel<256>, grid, 256, 0, s)(z, targets, N, V, cap, losses_dev, bad_row, dz, grad_scale);
  PTOOL_CUDA_LAUNCHED("softcap_cross_entropy", s);
}

void launch_sum_into(const double* x, int64_t n, double* acc, cudaStream_t s) {
  if (n <= 0) return;
  PTOOL_LAUNCH(sum_into_kernel, 1, 1024, 0, s)(x, n, acc);
  PTOOL_CUDA_LAUNCHED("sum_into", s);
}

}  // namespace ptool::cuda
