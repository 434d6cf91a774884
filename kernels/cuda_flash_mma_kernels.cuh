// The kernels of cuda_flash_mma.cu (see its header comment for the algorithm and tiling), included by it. The
// includer provides, in the enclosing namespace: bf16_bits (uint16_t), pack_bf16, ldsm_x4, ldsm_x4_t, mma_bf16
// (warp-level: PTX on the device; on the host emulator, kernels/emu, modelled per the PTX fragment layouts),
// cp_async16, cp_async4, cp_async_commit and cp_async_wait<N> (cp.async; emulated with both timing extremes),
// atomic_add_pair (two adjacent floats, 8-byte aligned, added atomically), and
// PTOOL_FLASH_SMEM(name), which declares the dynamic shared memory as `uint4 name[]`.
#pragma once

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kKeyTile = 64;   // forward and dQ: keys per iteration; dK/dV: keys per CTA
static_assert(kKeyTile == 16 * kWarps, "dK/dV: one 16-key m-tile per warp");
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.69314718055994531f;

template <int HD>
constexpr int kStride = HD + 8;  // bf16 elements per shared row (16-byte pad: conflict-free ldmatrix)
// Head dims: whole 16-column k-chunks of the mma, and an even count of 8-column n-tiles for ldmatrix x4.
template <int HD>
constexpr bool kHeadDimOk = HD % 16 == 0 && HD >= 16 && HD <= 128;

// Per-lane offsets of a 16x16 block for ldsm_x4, as (row, column) in the stored row-major matrix.
// Pattern X: matrices (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15). Non-transposed it yields
// the A fragment of a row-major A; with .trans, from a [k][n] store, the B fragments of n-tiles 0 and 1:
// {b0(n 0-7), b1(n 0-7), b0(n 8-15), b1(n 8-15)}.
// Pattern Y: matrices (0-7, 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15). Non-transposed, from an [n][k] store,
// it yields the B fragments of n-tiles 0 and 1 in the same order.
__device__ __forceinline__ int x_row(int lane) { return (lane & 7) + ((lane >> 3) & 1) * 8; }
__device__ __forceinline__ int x_col(int lane) { return (lane >> 4) * 8; }
__device__ __forceinline__ int y_row(int lane) { return (lane & 7) + (lane >> 4) * 8; }
__device__ __forceinline__ int y_col(int lane) { return ((lane >> 3) & 1) * 8; }

// A fragment of a 16x16 chunk of P (or dS) from the fp32 accumulators of its two 8-column n-tiles.
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack_bf16(c0[0], c0[1]);
  a[1] = pack_bf16(c0[2], c0[3]);
  a[2] = pack_bf16(c1[0], c1[1]);
  a[3] = pack_bf16(c1[2], c1[3]);
}

// Rows [0, valid) of a global bf16 tile (row stride rs elements, HD columns) -> shared [ROWS][HD + 8], rows past
// `valid` zero. 16-byte copies: the launchers require 16-byte aligned base pointers, and HD, rs and every head
// offset are multiples of 8 elements.
template <int HD, int ROWS>
__device__ __forceinline__ void stage(bf16_bits* sm, const bf16_bits* __restrict__ g, int64_t rs, int valid) {
  constexpr int kV = HD / 8;
  for (int idx = threadIdx.x; idx < ROWS * kV; idx += kThreads) {
    const int r = idx / kV, c = (idx % kV) * 8;
    uint4 x = make_uint4(0u, 0u, 0u, 0u);
    if (r < valid) x = __ldg(reinterpret_cast<const uint4*>(g + r * rs + c));
    *reinterpret_cast<uint4*>(sm + r * kStride<HD> + c) = x;
  }
}

// The same tile copied with cp.async (the caller commits and waits); rows past `valid` are zeroed by plain stores.
template <int HD, int ROWS>
__device__ __forceinline__ void stage_async(bf16_bits* sm, const bf16_bits* __restrict__ g, int64_t rs, int valid) {
  constexpr int kV = HD / 8;
  for (int idx = threadIdx.x; idx < ROWS * kV; idx += kThreads) {
    const int r = idx / kV, c = (idx % kV) * 8;
    if (r < valid)
      cp_async16(sm + r * kStride<HD> + c, g + r * rs + c);
    else
      *reinterpret_cast<uint4*>(sm + r * kStride<HD> + c) = make_uint4(0u, 0u, 0u, 0u);
  }
}

// K and V rows [k0, k0 + kKeyTile) of kv head kvh into a K/V buffer pair, with cp.async.
template <int HD>
__device__ __forceinline__ void stage_kv_async(bf16_bits* Ks, bf16_bits* Vs, const bf16_bits* __restrict__ k,
                                               const bf16_bits* __restrict__ v, int b, int T, int Hkv, int kvh,
                                               int k0) {
  const int64_t ks = static_cast<int64_t>(Hkv) * HD;
  const int64_t koff = (static_cast<int64_t>(b) * T + k0) * ks + static_cast<int64_t>(kvh) * HD;
  stage_async<HD, kKeyTile>(Ks, k + koff, ks, min(kKeyTile, T - k0));
  stage_async<HD, kKeyTile>(Vs, v + koff, ks, min(kKeyTile, T - k0));
}

__device__ __forceinline__ float bits_to_float(bf16_bits b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Forward: 16-row m-tiles per warp. Two at hd 16 to 64 (128 query rows per CTA: every K/V fragment feeds two
// mma, which halves the shared-memory and L2 traffic per FLOP; ~230 registers at hd 64, 2 CTAs per SM); one at
// hd 96 and 128, where two would not fit in 255 registers (64 rows per CTA).
template <int HD>
constexpr int kFwdMt = HD <= 64 ? 2 : 1;
template <int HD>
constexpr int kFwdRows = 16 * kWarps * kFwdMt<HD>;

// Shared memory: the tiles loaded once, and two buffers of the tiles looped over.
template <int HD>
constexpr size_t fwd_smem_bytes() {
  return sizeof(bf16_bits) * (kFwdRows<HD> + 2 * 2 * kKeyTile) * kStride<HD>;
}
// dS of a query tile in the dK/dV kernel with atomic dQ: bf16 [kKeyTile keys][BQ + 8 queries] (pad: conflict-free
// pair stores and ldmatrix, as kStride).
template <int BQ>
constexpr int kDsStride = BQ + 8;
template <int HD, int BQ, bool DQ>
constexpr size_t dkdv_smem_bytes() {
  return sizeof(bf16_bits) * (2 * kKeyTile + 2 * 2 * BQ) * kStride<HD> + 2 * 2 * BQ * sizeof(float) +
         (DQ ? sizeof(bf16_bits) * kKeyTile * kDsStride<BQ> : 0);
}
// dQ: 16-row m-tiles per warp, as the forward (128 rows per CTA up to hd 64, 64 at hd 96 and 128).
template <int HD>
constexpr int kDqMt = HD <= 64 ? 2 : 1;
template <int HD>
constexpr int kDqRows = 16 * kWarps * kDqMt<HD>;
template <int HD>
constexpr size_t dq_smem_bytes() {
  return sizeof(bf16_bits) * (2 * kDqRows<HD> + 2 * 2 * kKeyTile) * kStride<HD>;
}

// Query rows per iteration of the dK/dV kernel: 64, or 32 at hd 128 (dK and dV accumulators take 128
// registers there).
template <int HD>
constexpr int kDkdvQ = HD == 128 ? 32 : 64;

// fp32 floats per row of the dK rows that the k-preparation epilogue stages where Ks and Vs were (the pad puts each
// half-warp's float2 stores, 4 rows of 8 bytes x 4 lanes, on 32 distinct banks); exactly the space of Ks and Vs.
template <int HD>
constexpr int kPrepStride = HD + 8;
template <int HD>  // dK/dV: the CTA's 64 keys in Ks and Vs' space; dQ: its query rows in Qs and dOs' space
constexpr bool kPrepFits = sizeof(float) * kKeyTile * kPrepStride<HD> <= sizeof(bf16_bits) * 2 * kKeyTile * kStride<HD>;
static_assert(kPrepFits<16> && kPrepFits<32> && kPrepFits<64> && kPrepFits<96> && kPrepFits<128>);

// Grid and dynamic shared memory of each kernel, shared by the launchers and the host emulator.
struct LaunchShape {
  unsigned gx, gy, gz, threads;
  size_t smem;
};
constexpr unsigned kDotThreads = 256;
template <int HD>
LaunchShape fwd_shape(int B, int Tq, int H) {  // Tq query rows per sequence
  return {static_cast<unsigned>((Tq + kFwdRows<HD> - 1) / kFwdRows<HD>), static_cast<unsigned>(H),
          static_cast<unsigned>(B), kThreads, fwd_smem_bytes<HD>()};
}
template <int HD, bool DQ>
LaunchShape dkdv_shape(int B, int T, int Hkv) {
  return {static_cast<unsigned>((T + kKeyTile - 1) / kKeyTile), static_cast<unsigned>(Hkv), static_cast<unsigned>(B),
          kThreads, dkdv_smem_bytes<HD, kDkdvQ<HD>, DQ>()};
}
template <int HD>
LaunchShape dq_shape(int B, int T, int H) {
  return {static_cast<unsigned>((T + kDqRows<HD> - 1) / kDqRows<HD>), static_cast<unsigned>(H),
          static_cast<unsigned>(B), kThreads, dq_smem_bytes<HD>()};
}
inline LaunchShape dot_shape(int64_t rows) {  // one warp per row, grid-stride beyond 2^20 blocks
  const int64_t blocks = std::min<int64_t>(std::max<int64_t>((rows + 7) / 8, 1), int64_t{1} << 20);
  return {static_cast<unsigned>(blocks), 1, 1, kDotThreads, 0};
}

// ---- forward ------------------------------------------------------------------------------------------------

template <int HD>
__global__ void __launch_bounds__(kThreads) flash_fwd_kernel(const bf16_bits* __restrict__ q, const bf16_bits* __restrict__ k,
                                                             const bf16_bits* __restrict__ v, float* __restrict__ out,
                                                             bf16_bits* __restrict__ out_b, float* __restrict__ lse, int T, int Tq, int H,
                                                             int Hkv, float scale_log2) {
  static_assert(kHeadDimOk<HD>, "head_dim: a multiple of 16 up to 128");
  constexpr int S = kStride<HD>, KC = HD / 16, DN = HD / 8, NT = kKeyTile / 8, MT = kFwdMt<HD>;
  constexpr int ROWS = kFwdRows<HD>, WROWS = 16 * MT;  // query rows per CTA and per warp
  PTOOL_FLASH_SMEM(smem_fwd);
  bf16_bits* Qs = reinterpret_cast<bf16_bits*>(smem_fwd);  // [ROWS][S]
  bf16_bits* KVs = Qs + ROWS * S;  // buffer i: K [kKeyTile][S] at KVs + 2 i kKeyTile S, then V

  const int qb = static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x);  // heavy tiles first
  const int h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (H / Hkv);
  // q, out and lse hold the Tq queries at positions [qoff, T) of each sequence (all of them when Tq = T); rows
  // below are positions (masking), q row r is position qoff + r.
  const int qoff = T - Tq;
  const int q0 = qoff + qb * ROWS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t qs = static_cast<int64_t>(H) * HD;
  stage_kv_async<HD>(KVs, KVs + kKeyTile * S, k, v, b, T, Hkv, kvh, 0);  // key tile 0, in flight during Q's staging
  cp_async_commit();
  stage<HD, ROWS>(Qs, q + (static_cast<int64_t>(b) * Tq + q0 - qoff) * qs + static_cast<int64_t>(h) * HD, qs,
                  min(ROWS, T - q0));
  __syncthreads();
  // The warp owns rows [wrow0, wrow0 + WROWS); m-tile mt holds rows wrow0 + 16 mt + g and + 8 of this thread.
  const int wrow0 = q0 + warp * WROWS;
  uint32_t qf[MT][KC][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int kc = 0; kc < KC; ++kc)
      ldsm_x4(qf[mt][kc], Qs + (warp * WROWS + mt * 16 + x_row(lane)) * S + kc * 16 + x_col(lane));

  float o[MT][DN][4], m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
#pragma unroll
    for (int n = 0; n < DN; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.f;
  }
  const int kt_end = (min(q0 + ROWS, T) + kKeyTile - 1) / kKeyTile;  // key tiles up to the CTA's last row

  for (int kt = 0; kt < kt_end; ++kt) {
    const int k0 = kt * kKeyTile;
    __syncthreads();  // every warp is done with the other buffer (tile kt - 1)
    if (kt + 1 < kt_end) {
      bf16_bits* next = KVs + ((kt + 1) & 1) * 2 * kKeyTile * S;
      stage_kv_async<HD>(next, next + kKeyTile * S, k, v, b, T, Hkv, kvh, k0 + kKeyTile);
    }
    cp_async_commit();
    cp_async_wait<1>();  // this thread's copies of tile kt have landed ...
    __syncthreads();     // ... and every thread's
    if (k0 > wrow0 + WROWS - 1) continue;  // every key of the tile is past every row of this warp
    const bf16_bits* Ks = KVs + (kt & 1) * 2 * kKeyTile * S;
    const bf16_bits* Vs = Ks + kKeyTile * S;

    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < NT; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t kf[4];
        ldsm_x4(kf, Ks + (np * 16 + y_row(lane)) * S + kc * 16 + y_col(lane));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(s[mt][2 * np], qf[mt][kc], kf[0], kf[1]);
          mma_bf16(s[mt][2 * np + 1], qf[mt][kc], kf[2], kf[3]);
        }
      }
    }

    // Masked when some key of the tile is past some row of the warp (near the diagonal; keys >= T are past
    // every real row).
    const bool masked = k0 + kKeyTile - 1 > wrow0;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = k0 + n * 8 + 2 * t + (e & 1), row = wrow0 + mt * 16 + g + (e >> 1) * 8;
          s[mt][n][e] = masked && key > row ? -INFINITY : s[mt][n][e] * scale_log2;
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < NT; ++n) mx = fmaxf(mx, fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
        const float mn = fmaxf(m[mt][r], quad_max(mx));
        // -inf only while every key so far is masked for this row: then p = 0 and nothing accumulates (no NaN).
        const float ms = mn == -INFINITY ? 0.f : mn;
        const float alpha = exp2f(m[mt][r] - ms);
        m[mt][r] = mn;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          s[mt][n][2 * r] = exp2f(s[mt][n][2 * r] - ms);
          s[mt][n][2 * r + 1] = exp2f(s[mt][n][2 * r + 1] - ms);
          sum += s[mt][n][2 * r] + s[mt][n][2 * r + 1];
        }
        l[mt][r] = l[mt][r] * alpha + sum;  // this lane's partial row sum; the quad is summed once at the end
#pragma unroll
        for (int n = 0; n < DN; ++n) {
          o[mt][n][2 * r] *= alpha;
          o[mt][n][2 * r + 1] *= alpha;
        }
      }
    }

#pragma unroll
    for (int j = 0; j < NT / 2; ++j) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) acc_to_a(pa[mt], s[mt][2 * j], s[mt][2 * j + 1]);
#pragma unroll
      for (int dp = 0; dp < DN / 2; ++dp) {
        uint32_t vf[4];
        ldsm_x4_t(vf, Vs + (j * 16 + x_row(lane)) * S + dp * 16 + x_col(lane));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(o[mt][2 * dp], pa[mt], vf[0], vf[1]);
          mma_bf16(o[mt][2 * dp + 1], pa[mt], vf[2], vf[3]);
        }
      }
    }
  }

#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = wrow0 + mt * 16 + g + r * 8;
      const float lr = quad_sum(l[mt][r]);
      if (row >= T) continue;
      const float inv = 1.f / lr;
      const int64_t orow = (static_cast<int64_t>(b) * Tq + row - qoff) * qs + static_cast<int64_t>(h) * HD;
#pragma unroll
      for (int n = 0; n < DN; ++n) {
        const float o0 = o[mt][n][2 * r] * inv, o1 = o[mt][n][2 * r + 1] * inv;
        if (out_b) {  // uniform: a bf16 operand buffer gets the pair rounded, in one 4-byte store
          *reinterpret_cast<uint32_t*>(out_b + orow + n * 8 + 2 * t) = pack_bf16(o0, o1);
        } else {
          out[orow + n * 8 + 2 * t] = o0;
          out[orow + n * 8 + 2 * t + 1] = o1;
        }
      }
      if (lse && t == 0) lse[(static_cast<int64_t>(b) * H + h) * Tq + row - qoff] = (m[mt][r] + log2f(lr)) * kLn2;
    }
}

// ---- backward -----------------------------------------------------------------------------------------------

// Dv[(b * H + h) * T + t] = sum_d dO[b, t, h, d] * O[b, t, h, d] (both in bf16); one warp per (b, t, h) row.
__global__ void __launch_bounds__(kDotThreads) flash_bwd_dot_kernel(const bf16_bits* __restrict__ dout,
                                                            const bf16_bits* __restrict__ out, int64_t rows, int T, int H,
                                                            int hd, float* __restrict__ Dv) {
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); row < rows;
       row += nwarps) {
    const bf16_bits* a = dout + row * hd;
    const bf16_bits* c = out + row * hd;
    float s = 0.f;
    for (int d = lane; d < hd; d += 32) s = fmaf(bits_to_float(a[d]), bits_to_float(c[d]), s);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
      const int64_t h = row % H, bt = row / H;
      const int64_t t = bt % T, b = bt / T;
      Dv[(b * H + h) * T + t] = s;
    }
  }
}

// Query rows [q0, q0 + BQ) of head h (Q and dO into QdO [BQ][S] twice, lse and D into LD [BQ] twice) with
// cp.async; rows past T are zero.
template <int HD, int BQ>
__device__ __forceinline__ void stage_query_tile_async(bf16_bits* QdO, float* LD, const bf16_bits* __restrict__ q,
                                                       const bf16_bits* __restrict__ dout,
                                                       const float* __restrict__ lse, const float* __restrict__ Dv,
                                                       int b, int T, int H, int h, int q0) {
  const int64_t qs = static_cast<int64_t>(H) * HD;
  const int64_t qoff = (static_cast<int64_t>(b) * T + q0) * qs + static_cast<int64_t>(h) * HD;
  const int qvalid = min(BQ, T - q0);
  stage_async<HD, BQ>(QdO, q + qoff, qs, qvalid);
  stage_async<HD, BQ>(QdO + BQ * kStride<HD>, dout + qoff, qs, qvalid);
  if (threadIdx.x < BQ) {
    const int i = threadIdx.x;
    if (i < qvalid) {
      const int64_t li = (static_cast<int64_t>(b) * H + h) * T + q0 + i;
      cp_async4(LD + i, lse + li);
      cp_async4(LD + BQ + i, Dv + li);
    } else {
      LD[i] = LD[BQ + i] = 0.f;
    }
  }
}

// dq rows [q0, q0 + BQ) of head h += dS K over the CTA's 64 keys, from dSs ([key][query] bf16, the keys' dS^T)
// and Ks, with fp32 atomics (FlashAttention-2's order: the sum over a query's key tiles then depends on which CTA
// adds first, so reruns differ in the last bits). Key chunks from `chunks` on are wholly masked and skipped.
// Warp w computes m-tile w % RB of the BQ / 16 and the columns [c0, c0 + NC) of its share of HD.
template <int HD, int BQ>
__device__ __forceinline__ void dq_add_atomic(const bf16_bits* dSs, const bf16_bits* Ks, int chunks, float* dq, int b,
                                              int T, int H, int h, int q0) {
  constexpr int RB = BQ / 16, NC = HD * RB / kWarps, NN = NC / 8, S = kStride<HD>, SD = kDsStride<BQ>;
  static_assert(kWarps % RB == 0 && NN % 2 == 0, "dQ: whole 16-column pairs of n-tiles per warp");
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int rb = warp % RB, c0 = warp / RB * NC;
  float acc[NN][4];
#pragma unroll
  for (int n = 0; n < NN; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
  for (int kc = 0; kc < kKeyTile / 16; ++kc) {
    if (kc >= chunks) break;
    uint32_t a[4];  // dS rows rb 16.., keys kc 16..: the transpose of the stored [key][query] block (pattern Y)
    ldsm_x4_t(a, dSs + (kc * 16 + y_row(lane)) * SD + rb * 16 + y_col(lane));
#pragma unroll
    for (int np = 0; np < NN / 2; ++np) {
      uint32_t kf[4];
      ldsm_x4_t(kf, Ks + (kc * 16 + x_row(lane)) * S + c0 + np * 16 + x_col(lane));
      mma_bf16(acc[2 * np], a, kf[0], kf[1]);
      mma_bf16(acc[2 * np + 1], a, kf[2], kf[3]);
    }
  }
  const int64_t qs = static_cast<int64_t>(H) * HD;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = q0 + rb * 16 + g + r * 8;
    if (row >= T) continue;
    float* drow = dq + (static_cast<int64_t>(b) * T + row) * qs + static_cast<int64_t>(h) * HD + c0 + 2 * t;
#pragma unroll
    for (int n = 0; n < NN; ++n) atomic_add_pair(drow + n * 8, acc[n][2 * r], acc[n][2 * r + 1]);
  }
}

// dK and dV, and with DQ also dQ: each query tile's dS goes through shared memory into dq += dS K, added with
// atomics (dq_atomic; see dq_add_atomic). Two CTAs per SM, as shared memory allows: without the hint ptxas held
// hd 32's deterministic form to 128 registers and spilled.
template <int HD, bool DQ>
__global__ void __launch_bounds__(kThreads, 2) flash_bwd_dkdv_kernel(
    const bf16_bits* __restrict__ dout, const bf16_bits* __restrict__ q, const bf16_bits* __restrict__ k,
    const bf16_bits* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ Dv, int T, int H, int Hkv,
    float scale, float scale_log2, float* dk, float* dv, bf16_bits* dv_b, int64_t dv_ld, int64_t dv_col,
    bool accumulate, float* dq_atomic, FlashPrepBackward k_prep) {
  static_assert(kHeadDimOk<HD>, "head_dim: a multiple of 16 up to 128");
  constexpr int BQ = kDkdvQ<HD>;
  constexpr int S = kStride<HD>, KC = HD / 16, DN = HD / 8, QN = BQ / 8, SD = kDsStride<BQ>;
  PTOOL_FLASH_SMEM(smem_dkdv);
  bf16_bits* Ks = reinterpret_cast<bf16_bits*>(smem_dkdv);  // [kKeyTile][S]
  bf16_bits* Vs = Ks + kKeyTile * S;                         // [kKeyTile][S]
  bf16_bits* QdOs = Vs + kKeyTile * S;  // buffer i: Q [BQ][S] at QdOs + 2 i BQ S, then dO [BQ][S]
  float* LDs = reinterpret_cast<float*>(QdOs + 2 * 2 * BQ * S);  // buffer i: lse [BQ] at LDs + 2 i BQ, then D
  bf16_bits* dSs = reinterpret_cast<bf16_bits*>(LDs + 2 * 2 * BQ);  // DQ: [kKeyTile][SD], the tile's dS^T

  const int kb = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;  // low kb (the most query tiles) launch first
  const int group = H / Hkv;
  const int k0 = kb * kKeyTile;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t ks = static_cast<int64_t>(Hkv) * HD;
  const int64_t koff = (static_cast<int64_t>(b) * T + k0) * ks + static_cast<int64_t>(kvh) * HD;
  // The query tiles at or after the CTA's keys, for each q head of the group: tile j is head j / nqt's rows
  // [qstart + (j % nqt) BQ, + BQ). Tile 0 is in flight while K and V are staged.
  const int qstart = k0 / BQ * BQ, nqt = (T - qstart + BQ - 1) / BQ, tiles = group * nqt;
  stage_query_tile_async<HD, BQ>(QdOs, LDs, q, dout, lse, Dv, b, T, H, kvh * group, qstart);
  cp_async_commit();
  stage<HD, kKeyTile>(Ks, k + koff, ks, min(kKeyTile, T - k0));
  stage<HD, kKeyTile>(Vs, v + koff, ks, min(kKeyTile, T - k0));

  float dka[DN][4], dva[DN][4];
#pragma unroll
  for (int n = 0; n < DN; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.f;
  const int wkey0 = k0 + warp * 16;  // the warp's first key; this thread's keys are wkey0 + g and wkey0 + g + 8
  const bf16_bits* Kw = Ks + (warp * 16 + x_row(lane)) * S + x_col(lane);
  const bf16_bits* Vw = Vs + (warp * 16 + x_row(lane)) * S + x_col(lane);

  for (int tile = 0; tile < tiles; ++tile) {
    const int q0 = qstart + tile % nqt * BQ, qvalid = min(BQ, T - q0);
    __syncthreads();  // every warp is done with the other buffer (tile - 1; first time: Ks, Vs are staged)
    if (tile + 1 < tiles) {
      const int n = (tile + 1) & 1;
      stage_query_tile_async<HD, BQ>(QdOs + n * 2 * BQ * S, LDs + n * 2 * BQ, q, dout, lse, Dv, b, T, H,
                                     kvh * group + (tile + 1) / nqt, qstart + (tile + 1) % nqt * BQ);
    }
    cp_async_commit();
    cp_async_wait<1>();  // this thread's copies of this tile have landed ...
    __syncthreads();     // ... and every thread's
    const bf16_bits* Qs = QdOs + (tile & 1) * 2 * BQ * S;
    const bf16_bits* dOs = Qs + BQ * S;
    const float* lse_s = LDs + (tile & 1) * 2 * BQ;  // lse (natural log) of the tile's queries
    const float* D_s = lse_s + BQ;
    if (q0 + BQ - 1 >= wkey0) {  // else every query of the tile precedes every key of this warp
      float st[QN][4], dpt[QN][4];  // S^T and dP^T: rows = the warp's 16 keys, columns = the BQ queries
#pragma unroll
      for (int n = 0; n < QN; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.f;
#pragma unroll
      for (int kc = 0; kc < KC; ++kc) {
        uint32_t ka[4], va[4];
        ldsm_x4(ka, Kw + kc * 16);
        ldsm_x4(va, Vw + kc * 16);
#pragma unroll
        for (int np = 0; np < QN / 2; ++np) {
          uint32_t qf[4], of[4];
          ldsm_x4(qf, Qs + (np * 16 + y_row(lane)) * S + kc * 16 + y_col(lane));
          ldsm_x4(of, dOs + (np * 16 + y_row(lane)) * S + kc * 16 + y_col(lane));
          mma_bf16(st[2 * np], ka, qf[0], qf[1]);
          mma_bf16(st[2 * np + 1], ka, qf[2], qf[3]);
          mma_bf16(dpt[2 * np], va, of[0], of[1]);
          mma_bf16(dpt[2 * np + 1], va, of[2], of[3]);
        }
      }

#pragma unroll
      for (int n = 0; n < QN; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = n * 8 + 2 * t + (e & 1), key = wkey0 + g + (e >> 1) * 8;
          const bool ok = col < qvalid && q0 + col >= key;
          const float p = ok ? exp2f(st[n][e] * scale_log2 - __fmul_rn(lse_s[col], kLog2e)) : 0.f;
          st[n][e] = p;
          dpt[n][e] = p * (dpt[n][e] - D_s[col]) * scale;
        }

#pragma unroll
      for (int j = 0; j < QN / 2; ++j) {
        uint32_t pa[4], sa[4];
        acc_to_a(pa, st[2 * j], st[2 * j + 1]);
        acc_to_a(sa, dpt[2 * j], dpt[2 * j + 1]);
        if constexpr (DQ) {  // dS^T rows g, g + 8 of the warp's keys, queries 16 j + 2t (+1) and + 8
          bf16_bits* ds = dSs + (warp * 16 + g) * SD + j * 16 + 2 * t;
          *reinterpret_cast<uint32_t*>(ds) = sa[0];
          *reinterpret_cast<uint32_t*>(ds + 8 * SD) = sa[1];
          *reinterpret_cast<uint32_t*>(ds + 8) = sa[2];
          *reinterpret_cast<uint32_t*>(ds + 8 * SD + 8) = sa[3];
        }
#pragma unroll
        for (int dp = 0; dp < DN / 2; ++dp) {
          uint32_t of[4], qf[4];
          ldsm_x4_t(of, dOs + (j * 16 + x_row(lane)) * S + dp * 16 + x_col(lane));
          ldsm_x4_t(qf, Qs + (j * 16 + x_row(lane)) * S + dp * 16 + x_col(lane));
          mma_bf16(dva[2 * dp], pa, of[0], of[1]);
          mma_bf16(dva[2 * dp + 1], pa, of[2], of[3]);
          mma_bf16(dka[2 * dp], sa, qf[0], qf[1]);
          mma_bf16(dka[2 * dp + 1], sa, qf[2], qf[3]);
        }
      }
    }
    if constexpr (DQ) {
      __syncthreads();  // every warp's dS is in dSs (a warp that skipped the tile: its keys' chunk is not read)
      // 16-key chunk c is seen by some query of the tile when q0 + BQ - 1 >= k0 + 16 c (q0 >= k0 always).
      const int chunks = min(kKeyTile / 16, (q0 + BQ - 1 - k0) / 16 + 1);
      dq_add_atomic<HD, BQ>(dSs, Ks, chunks, dq_atomic, b, T, H, kvh * group + tile / nqt, q0);
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = wkey0 + g + r * 8;
    if (key >= T) continue;
    const int64_t off = (static_cast<int64_t>(b) * T + key) * ks + static_cast<int64_t>(kvh) * HD + 2 * t;
    // dv's rows are dv_ld apart from column dv_col (a slice of a wider operand buffer, or ks and 0).
    const int64_t voff = (static_cast<int64_t>(b) * T + key) * dv_ld + dv_col + static_cast<int64_t>(kvh) * HD + 2 * t;
#pragma unroll
    for (int n = 0; n < DN; ++n) {
      if (dk) {
        dk[off + n * 8] = accumulate ? dk[off + n * 8] + dka[n][2 * r] : dka[n][2 * r];
        dk[off + n * 8 + 1] = accumulate ? dk[off + n * 8 + 1] + dka[n][2 * r + 1] : dka[n][2 * r + 1];
      }
      if (dv) {
        dv[voff + n * 8] = accumulate ? dv[voff + n * 8] + dva[n][2 * r] : dva[n][2 * r];
        dv[voff + n * 8 + 1] = accumulate ? dv[voff + n * 8 + 1] + dva[n][2 * r + 1] : dva[n][2 * r + 1];
      } else if (dv_b) {  // a bf16 operand buffer, written (never accumulated): the pair in one 4-byte store
        *reinterpret_cast<uint32_t*>(dv_b + voff + n * 8) = pack_bf16(dva[n][2 * r], dva[n][2 * r + 1]);
      }
    }
  }
  if (k_prep.draw.f32 || k_prep.draw.bf16) {  // k's preparation backward instead of dk (dk is null)
    __syncthreads();  // every warp is done with Ks and Vs, whose space now holds the dK rows
    float* rows = reinterpret_cast<float*>(smem_dkdv) + warp * 16 * kPrepStride<HD>;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int n = 0; n < DN; ++n)
        *reinterpret_cast<float2*>(rows + (g + 8 * r) * kPrepStride<HD> + n * 8 + 2 * t) =
            make_float2(dka[n][2 * r], dka[n][2 * r + 1]);
    __syncwarp();
    for (int i = 0; i < 16 && wkey0 + i < T; ++i) {  // the warp's keys, one row at a time (uniform across it)
      const int64_t tok = static_cast<int64_t>(b) * T + wkey0 + i, hrow = tok * Hkv + kvh;
      prep_bwd_row(rows + i * kPrepStride<HD>, wkey0 + i, k_prep.raw, hrow * HD, k_prep.norm ? k_prep.rstd[hrow] : 1.f,
                   HD, k_prep.half, k_prep.norm, k_prep.cos_t, k_prep.sin_t, k_prep.draw,
                   tok * k_prep.ld + k_prep.col + static_cast<int64_t>(kvh) * HD, lane);
    }
  }
}

template <int HD>
__global__ void __launch_bounds__(kThreads) flash_bwd_dq_kernel(
    const bf16_bits* __restrict__ dout, const bf16_bits* __restrict__ q, const bf16_bits* __restrict__ k,
    const bf16_bits* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ Dv, int T, int H, int Hkv,
    float scale, float scale_log2, float* dq, bool accumulate, FlashPrepBackward q_prep, double* gain_partial) {
  static_assert(kHeadDimOk<HD>, "head_dim: a multiple of 16 up to 128");
  constexpr int S = kStride<HD>, KC = HD / 16, DN = HD / 8, NT = kKeyTile / 8, MT = kDqMt<HD>;
  constexpr int ROWS = kDqRows<HD>, WROWS = 16 * MT;  // query rows per CTA and per warp
  PTOOL_FLASH_SMEM(smem_dq);
  bf16_bits* Qs = reinterpret_cast<bf16_bits*>(smem_dq);  // [ROWS][S]
  bf16_bits* dOs = Qs + ROWS * S;                          // [ROWS][S]
  bf16_bits* KVs = dOs + ROWS * S;  // buffer i: K [kKeyTile][S] at KVs + 2 i kKeyTile S, then V

  const int qb = static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x);  // heavy tiles first
  const int h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (H / Hkv);
  const int q0 = qb * ROWS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t qs = static_cast<int64_t>(H) * HD;
  const int64_t qoff = (static_cast<int64_t>(b) * T + q0) * qs + static_cast<int64_t>(h) * HD;
  stage_kv_async<HD>(KVs, KVs + kKeyTile * S, k, v, b, T, Hkv, kvh, 0);  // key tile 0, in flight meanwhile
  cp_async_commit();
  stage<HD, ROWS>(Qs, q + qoff, qs, min(ROWS, T - q0));
  stage<HD, ROWS>(dOs, dout + qoff, qs, min(ROWS, T - q0));

  // The warp owns rows [wrow0, wrow0 + WROWS); m-tile mt holds rows wrow0 + 16 mt + g and + 8 of this thread.
  const int wrow0 = q0 + warp * WROWS;
  float lse2[MT][2], Dr[MT][2], dqa[MT][DN][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = wrow0 + mt * 16 + g + r * 8;
      const int64_t li = (static_cast<int64_t>(b) * H + h) * T + row;
      lse2[mt][r] = row < T ? lse[li] * kLog2e : 0.f;
      Dr[mt][r] = row < T ? Dv[li] : 0.f;
    }
#pragma unroll
    for (int n = 0; n < DN; ++n) dqa[mt][n][0] = dqa[mt][n][1] = dqa[mt][n][2] = dqa[mt][n][3] = 0.f;
  }
  const bf16_bits* Qw = Qs + (warp * WROWS + x_row(lane)) * S + x_col(lane);
  const bf16_bits* dOw = dOs + (warp * WROWS + x_row(lane)) * S + x_col(lane);
  const int kt_end = (min(q0 + ROWS, T) + kKeyTile - 1) / kKeyTile;  // key tiles up to the CTA's last row

  for (int kt = 0; kt < kt_end; ++kt) {
    const int k0 = kt * kKeyTile;
    __syncthreads();  // every warp is done with the other buffer (tile kt - 1)
    if (kt + 1 < kt_end) {
      bf16_bits* next = KVs + ((kt + 1) & 1) * 2 * kKeyTile * S;
      stage_kv_async<HD>(next, next + kKeyTile * S, k, v, b, T, Hkv, kvh, k0 + kKeyTile);
    }
    cp_async_commit();
    cp_async_wait<1>();  // this thread's copies of tile kt (and at kt = 0 its Qs, dOs stores) ...
    __syncthreads();     // ... are visible to every thread
    if (k0 > wrow0 + WROWS - 1) continue;  // every key of the tile is past every row of this warp
    const bf16_bits* Ks = KVs + (kt & 1) * 2 * kKeyTile * S;
    const bf16_bits* Vs = Ks + kKeyTile * S;

    float s[MT][NT][4], dp[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][n][e] = dp[mt][n][e] = 0.f;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
      uint32_t qa[MT][4], oa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        ldsm_x4(qa[mt], Qw + mt * 16 * S + kc * 16);
        ldsm_x4(oa[mt], dOw + mt * 16 * S + kc * 16);
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t kf[4], vf[4];
        ldsm_x4(kf, Ks + (np * 16 + y_row(lane)) * S + kc * 16 + y_col(lane));
        ldsm_x4(vf, Vs + (np * 16 + y_row(lane)) * S + kc * 16 + y_col(lane));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(s[mt][2 * np], qa[mt], kf[0], kf[1]);
          mma_bf16(s[mt][2 * np + 1], qa[mt], kf[2], kf[3]);
          mma_bf16(dp[mt][2 * np], oa[mt], vf[0], vf[1]);
          mma_bf16(dp[mt][2 * np + 1], oa[mt], vf[2], vf[3]);
        }
      }
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = k0 + n * 8 + 2 * t + (e & 1), row = wrow0 + mt * 16 + g + (e >> 1) * 8;
          const bool ok = key <= row && row < T;
          const float p = ok ? exp2f(s[mt][n][e] * scale_log2 - lse2[mt][e >> 1]) : 0.f;
          s[mt][n][e] = p * (dp[mt][n][e] - Dr[mt][e >> 1]) * scale;  // dS
        }

#pragma unroll
    for (int j = 0; j < NT / 2; ++j) {
      uint32_t sa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) acc_to_a(sa[mt], s[mt][2 * j], s[mt][2 * j + 1]);
#pragma unroll
      for (int dd = 0; dd < DN / 2; ++dd) {
        uint32_t kf[4];
        ldsm_x4_t(kf, Ks + (j * 16 + x_row(lane)) * S + dd * 16 + x_col(lane));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(dqa[mt][2 * dd], sa[mt], kf[0], kf[1]);
          mma_bf16(dqa[mt][2 * dd + 1], sa[mt], kf[2], kf[3]);
        }
      }
    }
  }

  if (q_prep.draw.f32 || q_prep.draw.bf16) {  // q's preparation backward with its gain instead of dq (dq is null)
    __syncthreads();  // every warp is done with Qs and dOs, whose space now holds the dQ rows
    float* rows = reinterpret_cast<float*>(smem_dq) + warp * WROWS * kPrepStride<HD>;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int n = 0; n < DN; ++n)
          *reinterpret_cast<float2*>(rows + (mt * 16 + g + 8 * r) * kPrepStride<HD> + n * 8 + 2 * t) =
              make_float2(dqa[mt][n][2 * r], dqa[mt][n][2 * r + 1]);
    __syncwarp();
    const float gh = q_prep.gain[h];
    double acc = 0.0;
    for (int i = 0; i < WROWS && wrow0 + i < T; ++i) {  // the warp's rows, one at a time (uniform across it)
      const int64_t tok = static_cast<int64_t>(b) * T + wrow0 + i, hrow = tok * H + h;
      float* d = rows + i * kPrepStride<HD>;
      const float r = q_prep.norm ? q_prep.rstd[hrow] : 1.f;
      prep_gain_dot(acc, d, wrow0 + i, q_prep.raw, hrow * HD, r, HD, q_prep.half, q_prep.norm, q_prep.cos_t,
                    q_prep.sin_t, lane);
      __syncwarp();  // the dot read columns that other lanes scale next
      for (int c = lane; c < HD; c += 32) d[c] = __fmul_rn(gh, d[c]);
      __syncwarp();
      prep_bwd_row(d, wrow0 + i, q_prep.raw, hrow * HD, r, HD, q_prep.half, q_prep.norm, q_prep.cos_t, q_prep.sin_t,
                   q_prep.draw, tok * q_prep.ld + q_prep.col + static_cast<int64_t>(h) * HD, lane);
    }
    acc = warp_sum_d(acc);  // chunk (b, query tile, warp) of head h
    if (lane == 0) gain_partial[((static_cast<int64_t>(b) * gridDim.x + qb) * kWarps + warp) * H + h] = acc;
    return;
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = wrow0 + mt * 16 + g + r * 8;
      if (row >= T) continue;
      float* drow = dq + (static_cast<int64_t>(b) * T + row) * qs + static_cast<int64_t>(h) * HD + 2 * t;
#pragma unroll
      for (int n = 0; n < DN; ++n) {
        drow[n * 8] = accumulate ? drow[n * 8] + dqa[mt][n][2 * r] : dqa[mt][n][2 * r];
        drow[n * 8 + 1] = accumulate ? drow[n * 8 + 1] + dqa[mt][n][2 * r + 1] : dqa[mt][n][2 * r + 1];
      }
    }
}
