// Causal grouped-query attention, flash style, fp32 (contract: src/ops/cpu_ops.h, attention_*).
//
// Layouts: q [B, T, H, hd], k and v [B, T, Hkv, hd], out like q, lse [B, H, T] (natural log-sum-exp of the
// scaled scores). Head h reads kv head h / (H / Hkv). Scale 1 / sqrt(hd). No T x T matrix is ever stored.
//
// Version 1 is a straightforward SIMT (FFMA) tiled kernel, written for correctness first: 64 x 64 tiles,
// 256 threads = 8 warps, each warp owning 8 rows of the tile. Any head dim up to 128 is handled by padding to
// 16, 32, 64 or 128 with zeros in shared memory (16-byte global loads when hd % 4 == 0). The next step for speed
// is tensor cores (TF32 or bf16 mma / wgmma) with the same tiling, and bf16 storage.
//
// Forward (grid: query block x head x batch; heavy query blocks first). The warp's 8 query rows against the
// 64 keys of a tile: lane j holds the scores of keys j and j + 32 (S = Q K^T from shared memory, 16-byte
// reads), online softmax in base 2 with the row max and sum kept per row (warp shuffles), P goes to a per-warp
// shared buffer, then O += P V with lane j owning head dims [j * hd/32, (j+1) * hd/32). Keys past the diagonal
// are masked only in the diagonal tile; tiles past it are never visited. Saves lse = (m + log2 l) ln 2.
//
// Backward, deterministic (no atomics), FlashAttention-2's recomputation split in two kernels:
//  1. Dv[b, h, t] = rowsum(dO * O)                                      (one warp per row)
//  2. dK, dV: grid key block x kv head x batch. The block keeps its K, V tile and loops over the query heads of
//     its group and the query blocks at or after the diagonal: P^T = exp(K Q^T * scale - lse) (recomputed),
//     dP^T = V dO^T, dS^T = P^T (dP^T - Dv) * scale; dV += P^T dO; dK += dS^T Q. Each kv row is owned by one
//     warp of one block, so dk/dv are accumulated (+=) without races.
//  3. dQ: grid query block x head x batch; loops over key blocks up to the diagonal, recomputes P and dS the
//     same way and dQ += dS K.
// Recomputing S and dP in both 2 and 3 costs 7 tile GEMMs instead of FlashAttention-2's 5 with atomics for dQ.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/cuda_internal.h"
#include "kernels/cuda_launch.h"

namespace ptool::cuda {

namespace {

constexpr int kB = 64;                 // rows (queries or keys) per tile
constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = kB / kWarps;     // rows per warp
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.69314718055994531f;

template <int HDP>
struct Hd {
  static constexpr bool kDup = HDP < 32;      // HDP 16: lanes 16..31 mirror lanes 0..15 in the lane = dim phases
  static constexpr int kDpl = kDup ? 1 : HDP / 32;  // head dims per lane in the lane = dim phases
  static constexpr int kPad = HDP + 4;        // row stride of tiles read with lane = row: conflict-free float4
};

template <int HDP>
__device__ __forceinline__ int lane_dim0(int lane) {
  return Hd<HDP>::kDup ? (lane & 15) : lane * Hd<HDP>::kDpl;
}

__device__ __forceinline__ float dot4(const float4 a, const float4 b, float acc) {
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  acc = fmaf(a.z, b.z, acc);
  return fmaf(a.w, b.w, acc);
}

__device__ __forceinline__ float4 lds4(const float* p) { return *reinterpret_cast<const float4*>(p); }

template <int N>
__device__ __forceinline__ void lds_n(const float* p, float (&v)[N]) {
  if constexpr (N == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
  } else if constexpr (N == 2) {
    const float2 t = *reinterpret_cast<const float2*>(p);
    v[0] = t.x; v[1] = t.y;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = p[i];
  }
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Copies rows [0, rows_valid) x dims [0, hd) of a global tile (row stride row_stride floats) to shared memory
// with row stride S, zero-filling the rest of the kB x HDP tile. vec: 16-byte global loads (hd % 4 == 0 and
// 16-byte aligned base pointers, decided by the launcher); otherwise element loads.
template <int HDP, int S>
__device__ __forceinline__ void load_tile(float* sm, const float* g, int64_t row_stride, int rows_valid, int hd,
                                          bool vec) {
  constexpr int kV = HDP / 4;
  for (int idx = threadIdx.x; idx < kB * kV; idx += kThreads) {
    const int r = idx / kV, d = (idx % kV) * 4;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < rows_valid && d < hd) {
      const float* src = g + r * row_stride + d;
      if (vec) {
        v = __ldg(reinterpret_cast<const float4*>(src));
      } else {
        v.x = __ldg(src);
        if (d + 1 < hd) v.y = __ldg(src + 1);
        if (d + 2 < hd) v.z = __ldg(src + 2);
        if (d + 3 < hd) v.w = __ldg(src + 3);
      }
    }
    *reinterpret_cast<float4*>(sm + r * S + d) = v;
  }
}

template <int HDP>
constexpr size_t fwd_smem_bytes() {
  return sizeof(float) * (2 * kB * HDP + kB * Hd<HDP>::kPad + kWarps * kRows * kB);
}
template <int HDP>
constexpr size_t dkdv_smem_bytes() {
  return sizeof(float) * (2 * kB * HDP + 2 * kB * Hd<HDP>::kPad + 2 * kWarps * kRows * kB + 2 * kB);
}
template <int HDP>
constexpr size_t dq_smem_bytes() {
  return sizeof(float) * (2 * kB * HDP + 2 * kB * Hd<HDP>::kPad + kWarps * kRows * kB);
}

// ---- forward ------------------------------------------------------------------------------------------------

template <int HDP>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                                            const float* __restrict__ v, float* __restrict__ out,
                                                            float* __restrict__ lse, int T, int H, int Hkv, int hd,
                                                            bool vec, float scale_log2) {
  constexpr int P = Hd<HDP>::kPad, DPL = Hd<HDP>::kDpl;
  PTOOL_DYNAMIC_SMEM(float4, smem4);
  float* Qs = reinterpret_cast<float*>(smem4);  // [kB][HDP]  read as broadcast rows
  float* Ks = Qs + kB * HDP;                     // [kB][P]    read with lane = key
  float* Vs = Ks + kB * P;                       // [kB][HDP]  read with lane = dim
  float* Ps = Vs + kB * HDP;                     // [kWarps][kRows][kB]

  const int qb = static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x);  // heavy blocks first
  const int h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (H / Hkv);
  const int q0 = qb * kB;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t qs = static_cast<int64_t>(H) * hd, ks = static_cast<int64_t>(Hkv) * hd;
  load_tile<HDP, HDP>(Qs, q + (static_cast<int64_t>(b) * T + q0) * qs + static_cast<int64_t>(h) * hd, qs,
                      min(kB, T - q0), hd, vec);

  float o[kRows][DPL], m[kRows], l[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int dd = 0; dd < DPL; ++dd) o[r][dd] = 0.f;
  }
  const float* Qw = Qs + warp * kRows * HDP;
  float* Pw = Ps + warp * kRows * kB;
  const int d0 = lane_dim0<HDP>(lane);

  for (int kt = 0; kt <= qb; ++kt) {
    const int k0 = kt * kB;
    __syncthreads();  // the previous tile's Ks, Vs, Ps are consumed
    const int kvalid = min(kB, T - k0);
    const int64_t koff = (static_cast<int64_t>(b) * T + k0) * ks + static_cast<int64_t>(kvh) * hd;
    load_tile<HDP, P>(Ks, k + koff, ks, kvalid, hd, vec);
    load_tile<HDP, HDP>(Vs, v + koff, ks, kvalid, hd, vec);
    __syncthreads();

    float s[kRows][2];
#pragma unroll
    for (int r = 0; r < kRows; ++r) s[r][0] = s[r][1] = 0.f;
#pragma unroll 4
    for (int d = 0; d < HDP; d += 4) {
      const float4 ka = lds4(Ks + lane * P + d);
      const float4 kb = lds4(Ks + (lane + 32) * P + d);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float4 qa = lds4(Qw + r * HDP + d);
        s[r][0] = dot4(qa, ka, s[r][0]);
        s[r][1] = dot4(qa, kb, s[r][1]);
      }
    }

    const bool diag = kt == qb;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int qi = q0 + warp * kRows + r;
      float x0 = s[r][0] * scale_log2, x1 = s[r][1] * scale_log2;
      if (diag) {
        if (k0 + lane > qi) x0 = -INFINITY;
        if (k0 + lane + 32 > qi) x1 = -INFINITY;
      }
      const float mn = fmaxf(m[r], warp_max(fmaxf(x0, x1)));
      const float ms = mn == -INFINITY ? 0.f : mn;  // cannot happen (key k0 <= qi is visible); no NaN if it did
      const float alpha = exp2f(m[r] - ms);
      const float p0 = exp2f(x0 - ms), p1 = exp2f(x1 - ms);
      l[r] = l[r] * alpha + warp_sum(p0 + p1);
      m[r] = mn;
#pragma unroll
      for (int dd = 0; dd < DPL; ++dd) o[r][dd] *= alpha;
      Pw[r * kB + lane] = p0;
      Pw[r * kB + lane + 32] = p1;
    }
    __syncwarp();

#pragma unroll 2
    for (int j = 0; j < kB; j += 4) {
      float vv[4][DPL];
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) lds_n<DPL>(Vs + (j + jj) * HDP + d0, vv[jj]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float4 p4 = lds4(Pw + r * kB + j);
#pragma unroll
        for (int dd = 0; dd < DPL; ++dd) {
          float acc = o[r][dd];
          acc = fmaf(p4.x, vv[0][dd], acc);
          acc = fmaf(p4.y, vv[1][dd], acc);
          acc = fmaf(p4.z, vv[2][dd], acc);
          o[r][dd] = fmaf(p4.w, vv[3][dd], acc);
        }
      }
    }
  }

  const bool writer = !Hd<HDP>::kDup || lane < 16;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int qi = q0 + warp * kRows + r;
    if (qi >= T) continue;
    const float inv = 1.f / l[r];
    float* orow = out + (static_cast<int64_t>(b) * T + qi) * qs + static_cast<int64_t>(h) * hd;
    if (writer) {
#pragma unroll
      for (int dd = 0; dd < DPL; ++dd)
        if (d0 + dd < hd) orow[d0 + dd] = o[r][dd] * inv;
    }
    if (lane == 0) lse[(static_cast<int64_t>(b) * H + h) * T + qi] = (m[r] + log2f(l[r])) * kLn2;
  }
}

// ---- backward -----------------------------------------------------------------------------------------------

// Dv[(b * H + h) * T + t] = dot(dout row, out row); one warp per (b, t, h) row.
__global__ void __launch_bounds__(256) attn_bwd_dot_kernel(const float* __restrict__ dout,
                                                           const float* __restrict__ out, int64_t rows, int T, int H,
                                                           int hd, float* __restrict__ Dv) {
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); row < rows;
       row += nwarps) {
    const float* a = dout + row * hd;
    const float* c = out + row * hd;
    float s = 0.f;
    for (int d = lane; d < hd; d += 32) s = fmaf(a[d], c[d], s);
    s = warp_sum(s);
    if (lane == 0) {
      const int64_t h = row % H, bt = row / H;
      const int64_t t = bt % T, b = bt / T;
      Dv[(b * H + h) * T + t] = s;
    }
  }
}

template <int HDP>
__global__ void __launch_bounds__(kThreads) attn_bwd_dkdv_kernel(const float* __restrict__ dout,
                                                                 const float* __restrict__ q,
                                                                 const float* __restrict__ k,
                                                                 const float* __restrict__ v,
                                                                 const float* __restrict__ lse,
                                                                 const float* __restrict__ Dv, int T, int H, int Hkv,
                                                                 int hd, bool vec, float scale, float scale_log2,
                                                                 float* dk, float* dv, bool accumulate) {
  constexpr int P = Hd<HDP>::kPad, DPL = Hd<HDP>::kDpl;
  PTOOL_DYNAMIC_SMEM(float4, smem4);
  float* Ks = reinterpret_cast<float*>(smem4);  // [kB][HDP]  broadcast rows (the warp's own keys)
  float* Vs = Ks + kB * HDP;                     // [kB][HDP]
  float* Qs = Vs + kB * HDP;                     // [kB][P]    lane = query (float4) and lane = dim
  float* dOs = Qs + kB * P;                      // [kB][P]
  float* Pt = dOs + kB * P;                      // [kWarps][kRows][kB]  P^T of the warp's keys
  float* dSt = Pt + kWarps * kRows * kB;         // [kWarps][kRows][kB]  dS^T
  float* lse_s = dSt + kWarps * kRows * kB;      // [kB]  lse * log2(e) of the query tile
  float* D_s = lse_s + kB;                       // [kB]

  const int kb = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int group = H / Hkv;
  const int nqb = (T + kB - 1) / kB;
  const int k0 = kb * kB;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t qs = static_cast<int64_t>(H) * hd, ks = static_cast<int64_t>(Hkv) * hd;
  {
    const int64_t koff = (static_cast<int64_t>(b) * T + k0) * ks + static_cast<int64_t>(kvh) * hd;
    load_tile<HDP, HDP>(Ks, k + koff, ks, min(kB, T - k0), hd, vec);
    load_tile<HDP, HDP>(Vs, v + koff, ks, min(kB, T - k0), hd, vec);
  }
  float dkacc[kRows][DPL], dvacc[kRows][DPL];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int dd = 0; dd < DPL; ++dd) dkacc[r][dd] = dvacc[r][dd] = 0.f;
  const float* Kw = Ks + warp * kRows * HDP;
  const float* Vw = Vs + warp * kRows * HDP;
  float* Ptw = Pt + warp * kRows * kB;
  float* dStw = dSt + warp * kRows * kB;
  const int d0 = lane_dim0<HDP>(lane);

  for (int hh = 0; hh < group; ++hh) {
    const int h = kvh * group + hh;
    for (int qb = kb; qb < nqb; ++qb) {
      const int q0 = qb * kB;
      const int qvalid = min(kB, T - q0);
      __syncthreads();  // previous Qs, dOs, lse_s, D_s, Pt, dSt consumed (and Ks, Vs loaded, first time)
      const int64_t qoff = (static_cast<int64_t>(b) * T + q0) * qs + static_cast<int64_t>(h) * hd;
      load_tile<HDP, P>(Qs, q + qoff, qs, qvalid, hd, vec);
      load_tile<HDP, P>(dOs, dout + qoff, qs, qvalid, hd, vec);
      if (threadIdx.x < kB) {
        const int i = threadIdx.x;
        const int64_t li = (static_cast<int64_t>(b) * H + h) * T + q0 + i;
        lse_s[i] = i < qvalid ? lse[li] * kLog2e : 0.f;
        D_s[i] = i < qvalid ? Dv[li] : 0.f;
      }
      __syncthreads();

      float st[kRows][2], dpt[kRows][2];
#pragma unroll
      for (int r = 0; r < kRows; ++r) st[r][0] = st[r][1] = dpt[r][0] = dpt[r][1] = 0.f;
#pragma unroll 2
      for (int d = 0; d < HDP; d += 4) {
        const float4 qa = lds4(Qs + lane * P + d), qb4 = lds4(Qs + (lane + 32) * P + d);
        const float4 oa = lds4(dOs + lane * P + d), ob = lds4(dOs + (lane + 32) * P + d);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const float4 kk = lds4(Kw + r * HDP + d);
          const float4 vv = lds4(Vw + r * HDP + d);
          st[r][0] = dot4(kk, qa, st[r][0]);
          st[r][1] = dot4(kk, qb4, st[r][1]);
          dpt[r][0] = dot4(vv, oa, dpt[r][0]);
          dpt[r][1] = dot4(vv, ob, dpt[r][1]);
        }
      }

      const bool diag = qb == kb;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int key = k0 + warp * kRows + r;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int il = lane + 32 * c;
          const bool ok = il < qvalid && (!diag || key <= q0 + il);
          const float p = ok ? exp2f(st[r][c] * scale_log2 - lse_s[il]) : 0.f;
          Ptw[r * kB + il] = p;
          dStw[r * kB + il] = p * (dpt[r][c] - D_s[il]) * scale;
        }
      }
      __syncwarp();

#pragma unroll 2
      for (int j = 0; j < kB; j += 4) {
        float oo[4][DPL], qq[4][DPL];
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          lds_n<DPL>(dOs + (j + jj) * P + d0, oo[jj]);
          lds_n<DPL>(Qs + (j + jj) * P + d0, qq[jj]);
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const float4 p4 = lds4(Ptw + r * kB + j);
          const float4 s4 = lds4(dStw + r * kB + j);
#pragma unroll
          for (int dd = 0; dd < DPL; ++dd) {
            float a = dvacc[r][dd];
            a = fmaf(p4.x, oo[0][dd], a);
            a = fmaf(p4.y, oo[1][dd], a);
            a = fmaf(p4.z, oo[2][dd], a);
            dvacc[r][dd] = fmaf(p4.w, oo[3][dd], a);
            float g = dkacc[r][dd];
            g = fmaf(s4.x, qq[0][dd], g);
            g = fmaf(s4.y, qq[1][dd], g);
            g = fmaf(s4.z, qq[2][dd], g);
            dkacc[r][dd] = fmaf(s4.w, qq[3][dd], g);
          }
        }
      }
    }
  }

  const bool writer = !Hd<HDP>::kDup || lane < 16;
  if (!writer) return;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int key = k0 + warp * kRows + r;
    if (key >= T) continue;
    const int64_t off = (static_cast<int64_t>(b) * T + key) * ks + static_cast<int64_t>(kvh) * hd;
#pragma unroll
    for (int dd = 0; dd < DPL; ++dd) {
      if (d0 + dd >= hd) continue;
      if (dk) dk[off + d0 + dd] = accumulate ? dk[off + d0 + dd] + dkacc[r][dd] : dkacc[r][dd];
      if (dv) dv[off + d0 + dd] = accumulate ? dv[off + d0 + dd] + dvacc[r][dd] : dvacc[r][dd];
    }
  }
}

template <int HDP>
__global__ void __launch_bounds__(kThreads) attn_bwd_dq_kernel(const float* __restrict__ dout,
                                                               const float* __restrict__ q,
                                                               const float* __restrict__ k,
                                                               const float* __restrict__ v,
                                                               const float* __restrict__ lse,
                                                               const float* __restrict__ Dv, int T, int H, int Hkv,
                                                               int hd, bool vec, float scale, float scale_log2,
                                                               float* dq, bool accumulate) {
  constexpr int P = Hd<HDP>::kPad, DPL = Hd<HDP>::kDpl;
  PTOOL_DYNAMIC_SMEM(float4, smem4);
  float* Qs = reinterpret_cast<float*>(smem4);  // [kB][HDP]  broadcast rows
  float* dOs = Qs + kB * HDP;                    // [kB][HDP]
  float* Ks = dOs + kB * HDP;                    // [kB][P]    lane = key (float4) and lane = dim
  float* Vs = Ks + kB * P;                       // [kB][P]    lane = key
  float* dS = Vs + kB * P;                       // [kWarps][kRows][kB]

  const int qb = static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x);  // heavy blocks first
  const int h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (H / Hkv);
  const int q0 = qb * kB;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t qs = static_cast<int64_t>(H) * hd, ks = static_cast<int64_t>(Hkv) * hd;
  {
    const int64_t qoff = (static_cast<int64_t>(b) * T + q0) * qs + static_cast<int64_t>(h) * hd;
    load_tile<HDP, HDP>(Qs, q + qoff, qs, min(kB, T - q0), hd, vec);
    load_tile<HDP, HDP>(dOs, dout + qoff, qs, min(kB, T - q0), hd, vec);
  }
  float lse2[kRows], Dr[kRows], dqacc[kRows][DPL];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int qi = q0 + warp * kRows + r;
    const int64_t li = (static_cast<int64_t>(b) * H + h) * T + qi;
    lse2[r] = qi < T ? lse[li] * kLog2e : 0.f;
    Dr[r] = qi < T ? Dv[li] : 0.f;
#pragma unroll
    for (int dd = 0; dd < DPL; ++dd) dqacc[r][dd] = 0.f;
  }
  const float* Qw = Qs + warp * kRows * HDP;
  const float* dOw = dOs + warp * kRows * HDP;
  float* dSw = dS + warp * kRows * kB;
  const int d0 = lane_dim0<HDP>(lane);

  for (int kt = 0; kt <= qb; ++kt) {
    const int k0 = kt * kB;
    __syncthreads();
    const int kvalid = min(kB, T - k0);
    const int64_t koff = (static_cast<int64_t>(b) * T + k0) * ks + static_cast<int64_t>(kvh) * hd;
    load_tile<HDP, P>(Ks, k + koff, ks, kvalid, hd, vec);
    load_tile<HDP, P>(Vs, v + koff, ks, kvalid, hd, vec);
    __syncthreads();

    float s[kRows][2], dp[kRows][2];
#pragma unroll
    for (int r = 0; r < kRows; ++r) s[r][0] = s[r][1] = dp[r][0] = dp[r][1] = 0.f;
#pragma unroll 2
    for (int d = 0; d < HDP; d += 4) {
      const float4 ka = lds4(Ks + lane * P + d), kb4 = lds4(Ks + (lane + 32) * P + d);
      const float4 va = lds4(Vs + lane * P + d), vb = lds4(Vs + (lane + 32) * P + d);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float4 qq = lds4(Qw + r * HDP + d);
        const float4 oo = lds4(dOw + r * HDP + d);
        s[r][0] = dot4(qq, ka, s[r][0]);
        s[r][1] = dot4(qq, kb4, s[r][1]);
        dp[r][0] = dot4(oo, va, dp[r][0]);
        dp[r][1] = dot4(oo, vb, dp[r][1]);
      }
    }

    const bool diag = kt == qb;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int qi = q0 + warp * kRows + r;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int key = k0 + lane + 32 * c;
        const bool ok = qi < T && (!diag || key <= qi);
        const float p = ok ? exp2f(s[r][c] * scale_log2 - lse2[r]) : 0.f;
        dSw[r * kB + lane + 32 * c] = p * (dp[r][c] - Dr[r]) * scale;
      }
    }
    __syncwarp();

#pragma unroll 2
    for (int j = 0; j < kB; j += 4) {
      float kk[4][DPL];
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) lds_n<DPL>(Ks + (j + jj) * P + d0, kk[jj]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float4 s4 = lds4(dSw + r * kB + j);
#pragma unroll
        for (int dd = 0; dd < DPL; ++dd) {
          float a = dqacc[r][dd];
          a = fmaf(s4.x, kk[0][dd], a);
          a = fmaf(s4.y, kk[1][dd], a);
          a = fmaf(s4.z, kk[2][dd], a);
          dqacc[r][dd] = fmaf(s4.w, kk[3][dd], a);
        }
      }
    }
  }

  const bool writer = !Hd<HDP>::kDup || lane < 16;
  if (!writer) return;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int qi = q0 + warp * kRows + r;
    if (qi >= T) continue;
    float* row = dq + (static_cast<int64_t>(b) * T + qi) * qs + static_cast<int64_t>(h) * hd;
#pragma unroll
    for (int dd = 0; dd < DPL; ++dd)
      if (d0 + dd < hd) row[d0 + dd] = accumulate ? row[d0 + dd] + dqacc[r][dd] : dqacc[r][dd];
  }
}

// ---- launchers ----------------------------------------------------------------------------------------------

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

void check_args(const char* op, int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd) {
  if (B < 0 || Tn < 0 || hd <= 0 || H <= 0 || Hkv <= 0 || H % Hkv != 0) {
    throw std::invalid_argument(std::string(op) + ": bad shape B=" + std::to_string(B) + " T=" + std::to_string(Tn) +
                                " H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) + " hd=" +
                                std::to_string(hd) + " (need H % Hkv == 0)");
  }
  if (hd > 128) {
    throw std::invalid_argument(std::string(op) + ": the CUDA kernels support head_dim <= 128, got " +
                                std::to_string(hd));
  }
  if (Tn > (int64_t{1} << 30) || H > 65535 || B > 65535) {
    throw std::invalid_argument(std::string(op) + ": shape too large for the CUDA grid (T=" + std::to_string(Tn) +
                                " H=" + std::to_string(H) + " B=" + std::to_string(B) + ")");
  }
}


template <int HDP>
void fwd_impl(const float* q, const float* k, const float* v, int B, int T, int H, int Hkv, int hd, bool vec,
              float* out, float* lse, cudaStream_t s) {
  constexpr size_t smem = fwd_smem_bytes<HDP>();
  PTOOL_CUDA_CHECK(cudaFuncSetAttribute(attn_fwd_kernel<HDP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  const float scale_log2 = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd))) * kLog2e;
  const dim3 grid(static_cast<unsigned>((T + kB - 1) / kB), static_cast<unsigned>(H), static_cast<unsigned>(B));
  PTOOL_LAUNCH(attn_fwd_kernel<HDP>, grid, kThreads, smem, s)(q, k, v, out, lse, T, H, Hkv, hd, vec, scale_log2);
  PTOOL_CUDA_LAUNCHED("attention_forward", s);
}

template <int HDP>
void bwd_impl(const float* dout, const float* q, const float* k, const float* v, const float* lse, const float* Dv,
              int B, int T, int H, int Hkv, int hd, bool vec, float* dq, float* dk, float* dv, bool accumulate,
              cudaStream_t s) {
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const float scale_log2 = scale * kLog2e;
  const unsigned nblk = static_cast<unsigned>((T + kB - 1) / kB);
  if (dk || dv) {
    constexpr size_t smem = dkdv_smem_bytes<HDP>();
    PTOOL_CUDA_CHECK(cudaFuncSetAttribute(attn_bwd_dkdv_kernel<HDP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    const dim3 grid(nblk, static_cast<unsigned>(Hkv), static_cast<unsigned>(B));
    PTOOL_LAUNCH(attn_bwd_dkdv_kernel<HDP>, grid, kThreads, smem, s)(dout, q, k, v, lse, Dv, T, H, Hkv, hd, vec, scale,
                                                                     scale_log2, dk, dv, accumulate);
    PTOOL_CUDA_LAUNCHED("attention_backward (dk, dv)", s);
  }
  if (dq) {
    constexpr size_t smem = dq_smem_bytes<HDP>();
    PTOOL_CUDA_CHECK(cudaFuncSetAttribute(attn_bwd_dq_kernel<HDP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    const dim3 grid(nblk, static_cast<unsigned>(H), static_cast<unsigned>(B));
    PTOOL_LAUNCH(attn_bwd_dq_kernel<HDP>, grid, kThreads, smem, s)(dout, q, k, v, lse, Dv, T, H, Hkv, hd, vec, scale,
                                                                   scale_log2, dq, accumulate);
    PTOOL_CUDA_LAUNCHED("attention_backward (dq)", s);
  }
}

}  // namespace

void launch_attention_forward(const float* q, const float* k, const float* v, int64_t B, int64_t Tn, int64_t H,
                              int64_t Hkv, int64_t hd, float* out, float* lse, cudaStream_t s) {
  const char* op = "attention_forward";
  check_args(op, B, Tn, H, Hkv, hd);
  if (B == 0 || Tn == 0) return;
  const bool vec = hd % 4 == 0 && aligned16(q) && aligned16(k) && aligned16(v);
  const int b = static_cast<int>(B), t = static_cast<int>(Tn), h = static_cast<int>(H), hk = static_cast<int>(Hkv),
            d = static_cast<int>(hd);
  if (hd <= 16)
    fwd_impl<16>(q, k, v, b, t, h, hk, d, vec, out, lse, s);
  else if (hd <= 32)
    fwd_impl<32>(q, k, v, b, t, h, hk, d, vec, out, lse, s);
  else if (hd <= 64)
    fwd_impl<64>(q, k, v, b, t, h, hk, d, vec, out, lse, s);
  else
    fwd_impl<128>(q, k, v, b, t, h, hk, d, vec, out, lse, s);
}

void launch_attention_backward(const float* dout, const float* q, const float* k, const float* v, const float* out,
                               const float* lse, int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd,
                               float* dq_acc, float* dk_acc, float* dv_acc, bool accumulate, Workspace& ws,
                               cudaStream_t s) {
  const char* op = "attention_backward";
  check_args(op, B, Tn, H, Hkv, hd);
  if (!dq_acc && !dk_acc && !dv_acc) return;
  if (B == 0 || Tn == 0) return;
  const bool vec = hd % 4 == 0 && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(dout);
  const int b = static_cast<int>(B), t = static_cast<int>(Tn), h = static_cast<int>(H), hk = static_cast<int>(Hkv),
            d = static_cast<int>(hd);
  auto* Dv = static_cast<float*>(ws.get(static_cast<size_t>(B * H * Tn) * sizeof(float)));
  const int64_t rows = B * Tn * H;
  const unsigned grid = static_cast<unsigned>(std::clamp<int64_t>((rows + 7) / 8, 1, int64_t{1} << 20));
  PTOOL_LAUNCH(attn_bwd_dot_kernel, grid, 256, 0, s)(dout, out, rows, t, h, d, Dv);
  PTOOL_CUDA_LAUNCHED("attention_backward (rowsum dO*O)", s);
  if (hd <= 16)
    bwd_impl<16>(dout, q, k, v, lse, Dv, b, t, h, hk, d, vec, dq_acc, dk_acc, dv_acc, accumulate, s);
  else if (hd <= 32)
    bwd_impl<32>(dout, q, k, v, lse, Dv, b, t, h, hk, d, vec, dq_acc, dk_acc, dv_acc, accumulate, s);
  else if (hd <= 64)
    bwd_impl<64>(dout, q, k, v, lse, Dv, b, t, h, hk, d, vec, dq_acc, dk_acc, dv_acc, accumulate, s);
  else
    bwd_impl<128>(dout, q, k, v, lse, Dv, b, t, h, hk, d, vec, dq_acc, dk_acc, dv_acc, accumulate, s);
}

}  // namespace ptool::cuda
