// Host emulation of the bf16 flash attention kernels (kernels/cuda_flash_mma_kernels.cuh), so that their indexing,
// masking, tiling and fragment logic run and are checked on machines without a GPU
// (test_flash_mma_emulated.cpp). Every CUDA thread of a CTA is a std::thread running the kernel source as is;
// __syncthreads is a barrier of the CTA; the warp-level operations (__shfl_xor_sync, ldmatrix, mma.sync) publish
// each lane's operand in a per-warp buffer between two barriers of the warp and compute what the PTX ISA
// specifies for each lane's fragment. CTAs run one after another. Shared memory starts filled with 0xff bytes
// (NaN as bf16 and as float), so that reading anything not staged shows up as NaN in the results.
// Not emulated: timing, races between warps beyond the barriers, and the tensor cores' internal summation order
// (here: fp32, in k order), which only moves results by fp32 rounding.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace ptool::flash_emu {

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 gridDim, blockDim;

struct float4 {
  float x, y, z, w;
};
struct uint2 {
  uint32_t x, y;
};
struct uint4 {
  uint32_t x, y, z, w;
};
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline uint2 make_uint2(uint32_t a, uint32_t b) { return {a, b}; }
inline float __ldg(const float* p) { return *p; }
inline float4 __ldg(const float4* p) {
  float4 r;
  std::memcpy(&r, p, sizeof r);
  return r;
}
using std::min;

// State of the CTA being run.
inline uint4* g_smem = nullptr;
inline std::barrier<>* g_cta_barrier = nullptr;
inline std::barrier<>* g_warp_barrier[8] = {};
struct WarpExchange {
  float f[32];
  const uint16_t* p[32];
  uint32_t a[32][4];
  uint32_t b[32][2];
};
inline WarpExchange g_warp_x[8];

inline int emu_lane() { return static_cast<int>(threadIdx.x & 31); }
inline int emu_warp() { return static_cast<int>(threadIdx.x >> 5); }
inline void warp_sync() { g_warp_barrier[emu_warp()]->arrive_and_wait(); }
inline void __syncthreads() { g_cta_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int mask) {
  WarpExchange& x = g_warp_x[emu_warp()];
  x.f[emu_lane()] = v;
  warp_sync();
  const float r = x.f[emu_lane() ^ mask];
  warp_sync();
  return r;
}

// bf16: round to nearest even (finite inputs), as __float2bfloat16_rn.
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
struct Bf16 {
  uint16_t bits;
};
inline Bf16 __float2bfloat16_rn(float f) { return {to_bf16(f)}; }
inline float __bfloat162float(Bf16 b) { return from_bf16(b.bits); }

using bf16_bits = uint16_t;
inline uint32_t pack_bf16(float lo, float hi) { return to_bf16(lo) | (static_cast<uint32_t>(to_bf16(hi)) << 16); }

// ldmatrix .x4: lanes 8i..8i+7 address the rows of matrix i; lane (g, t) receives row g, columns 2t, 2t+1
// (.trans: rows 2t, 2t+1 of column g), the lower column (row) in the low half.
inline void ldsm_x4(uint32_t (&r)[4], const bf16_bits* p) {
  WarpExchange& x = g_warp_x[emu_warp()];
  const int l = emu_lane(), g = l >> 2, t = l & 3;
  x.p[l] = p;
  warp_sync();
  for (int i = 0; i < 4; ++i) {
    const uint16_t* row = x.p[8 * i + g];
    r[i] = row[2 * t] | (static_cast<uint32_t>(row[2 * t + 1]) << 16);
  }
  warp_sync();
}
inline void ldsm_x4_t(uint32_t (&r)[4], const bf16_bits* p) {
  WarpExchange& x = g_warp_x[emu_warp()];
  const int l = emu_lane(), g = l >> 2, t = l & 3;
  x.p[l] = p;
  warp_sync();
  for (int i = 0; i < 4; ++i)
    r[i] = x.p[8 * i + 2 * t][g] | (static_cast<uint32_t>(x.p[8 * i + 2 * t + 1][g]) << 16);
  warp_sync();
}

// mma.sync.m16n8k16 bf16, fp32 accumulate. Lane (g, t) holds A rows g and g+8, columns 2t, 2t+1 (a[0], a[1]) and
// 2t+8, 2t+9 (a[2], a[3]); B column g, rows 2t, 2t+1 (b0) and 2t+8, 2t+9 (b1); D rows g, g+8, columns 2t, 2t+1.
inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  WarpExchange& x = g_warp_x[emu_warp()];
  const int l = emu_lane(), g = l >> 2, t = l & 3;
  for (int i = 0; i < 4; ++i) x.a[l][i] = a[i];
  x.b[l][0] = b0;
  x.b[l][1] = b1;
  warp_sync();
  auto half = [](uint32_t w, int hi) { return from_bf16(static_cast<uint16_t>(hi ? w >> 16 : w & 0xffffu)); };
  auto A = [&](int r, int c) { return half(x.a[(r & 7) * 4 + ((c & 7) >> 1)][(r >= 8) + 2 * (c >= 8)], c & 1); };
  auto B = [&](int k, int n) { return half(x.b[n * 4 + ((k & 7) >> 1)][k >= 8], k & 1); };
  for (int e = 0; e < 4; ++e) {
    const int r = g + (e >> 1) * 8, c = 2 * t + (e & 1);
    float s = d[e];
    for (int k = 0; k < 16; ++k) s += A(r, k) * B(k, c);
    d[e] = s;
  }
  warp_sync();
}

#define PTOOL_FLASH_SMEM(name) uint4* name = g_smem
#include "kernels/cuda_flash_mma_kernels.cuh"
#undef PTOOL_FLASH_SMEM
#undef __global__
#undef __device__
#undef __forceinline__
#undef __launch_bounds__

template <class Kernel>
void emulate(const LaunchShape& ls, Kernel&& kernel) {
  gridDim = {ls.gx, ls.gy, ls.gz};
  blockDim = {ls.threads, 1, 1};
  std::vector<uint4> smem(ls.smem / sizeof(uint4) + 1);
  for (unsigned z = 0; z < ls.gz; ++z)
    for (unsigned y = 0; y < ls.gy; ++y)
      for (unsigned x = 0; x < ls.gx; ++x) {
        std::memset(smem.data(), 0xff, smem.size() * sizeof(uint4));
        g_smem = smem.data();
        std::barrier<> cta(ls.threads);
        g_cta_barrier = &cta;
        std::vector<std::unique_ptr<std::barrier<>>> warps;
        for (unsigned w = 0; w < ls.threads / 32; ++w) {
          warps.push_back(std::make_unique<std::barrier<>>(32));
          g_warp_barrier[w] = warps.back().get();
        }
        std::vector<std::thread> threads;
        for (unsigned tid = 0; tid < ls.threads; ++tid)
          threads.emplace_back([&, tid] {
            threadIdx = {tid, 0, 0};
            blockIdx = {x, y, z};
            kernel();
          });
        for (auto& th : threads) th.join();
      }
}

// The launchers of cuda_flash_mma.cu, on host memory (hd 64 or 128).
template <int HD>
void forward(const float* q, const float* k, const float* v, int B, int T, int H, int Hkv, float* out, float* lse) {
  const float scale_log2 = static_cast<float>(1.0 / std::sqrt(static_cast<double>(HD))) * kLog2e;
  emulate(fwd_shape<HD>(B, T, H), [&] { flash_fwd_kernel<HD>(q, k, v, out, lse, T, H, Hkv, true, scale_log2); });
}

template <int HD>
void backward(const float* dout, const float* q, const float* k, const float* v, const float* out, const float* lse,
              int B, int T, int H, int Hkv, float* dq, float* dk, float* dv) {
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(HD)));
  const float scale_log2 = scale * kLog2e;
  const int64_t rows = int64_t{B} * T * H;
  std::vector<float> Dv(static_cast<size_t>(rows));
  emulate(dot_shape(rows), [&] { flash_bwd_dot_kernel(dout, out, rows, T, H, HD, Dv.data()); });
  if (dk || dv)
    emulate(dkdv_shape<HD>(B, T, Hkv), [&] {
      flash_bwd_dkdv_kernel<HD>(dout, q, k, v, lse, Dv.data(), T, H, Hkv, true, scale, scale_log2, dk, dv);
    });
  if (dq)
    emulate(dq_shape<HD>(B, T, H), [&] {
      flash_bwd_dq_kernel<HD>(dout, q, k, v, lse, Dv.data(), T, H, Hkv, true, scale, scale_log2, dq);
    });
}

}  // namespace ptool::flash_emu
