// Causal GQA flash attention on the tensor cores: bf16 mma.sync.m16n8k16 with fp32 accumulation, the
// FlashAttention-2 algorithm. Contract and layouts: kernels/cuda_flash_mma.h (those of cuda_attention.cu).
//
// Numerics. Q, K, V, dO and the backward's O arrive in bf16 (the backend's operand buffers, or its rounded
// copies of fp32 tensors) and are staged into shared memory as they are; the forward writes O in fp32 or in bf16
// (an operand buffer); lse and the gradients are fp32. S = Q K^T and every other product accumulate in fp32. The
// online softmax runs in fp32 registers in base 2 (x = s * scale * log2 e), lse = (m + log2 l) ln 2 exactly as
// the fp32 kernels. P is rounded to bf16 for P V (l sums the unrounded fp32 P, as FlashAttention does); dS
// likewise for dS K, dS^T Q. D = rowsum(dO * O) uses the bf16 dO (the dO that dP = dO V^T sees) and bf16 O, so
// that dP - D cancels consistently: with one visible key O = V and dS is then zero up to fp32 summation order.
//
// Tiling. 4 warps (128 threads) per CTA; every warp owns whole 16-row m-tiles of the CTA's row tile (the M = 16
// of the mma), so softmax statistics stay in the registers of one quad of lanes and need only two shuffles, and
// P goes from the S accumulators straight into the A operand of the next mma (the C and A fragment layouts
// coincide), never touching shared memory. Shared tiles are bf16 [rows][hd + 8]: the 16-byte pad makes every
// ldmatrix phase (8 rows of 16 bytes) hit 32 distinct banks. The tiles a kernel loops over (K and V in the forward
// and dQ, Q, dO, lse and D in dK/dV) are double-buffered: cp.async copies tile i + 1 into the other buffer
// while the warps compute on tile i, so the load latency hides behind the tensor-core work (the tiles loaded
// once per CTA are staged through registers). Two barriers per tile: before the copy into the buffer that tile
// i - 1 used, and after the wait for tile i. Shared memory per CTA (hd 64 / hd 128): forward 54 / 85 KiB,
// dQ 72 / 102 KiB, dK/dV 55 / 69 KiB, so two CTAs per SM fit everywhere (227 KiB).
//  - forward: 64 keys per iteration; grid (query tile, head, batch), heaviest tiles first. hd 64: 128 query
//    rows, 32 per warp (two m-tiles share every K and V fragment: half the ldmatrix and L2 traffic per FLOP of
//    64-row tiles, which matters because K and V are re-read from L2 by every query tile; 235 registers,
//    2 CTAs per SM). hd 128: 64 rows, 16 per warp (two m-tiles would not fit in 255 registers; 180 registers).
//    A warp skips key tiles wholly past its rows and masks only tiles that reach past its first row.
//  - dK, dV: one CTA per (batch, kv head, 64 keys), looping over the q heads of its GQA group and the query
//    tiles at or after its keys (64 queries for hd 64, 32 for hd 128 to stay within 255 registers). Each warp
//    computes S^T = K Q^T and dP^T = V dO^T for its 16 keys, P^T = exp2(S^T scale log2e - lse log2e) from the
//    saved lse, dS^T = P^T (dP^T - D) scale, then dV += P^T dO and dK += dS^T Q from registers. A kv row is
//    owned by one warp of one CTA, so the += into dk/dv is race-free and its order fixed: deterministic.
//    Given a FlashPrepBackward (Backend::attention_prep_backward_set), the kernel ends with k's preparation
//    backward instead of writing dk: after a barrier each warp stages its 16 dK rows in fp32 where Ks and Vs were
//    and runs qk_prep_backward's per-row arithmetic on them (prep_bwd_row), writing raw k's gradient into its
//    columns of the q/k/v operand buffer: bit-identical to the separate pass, without dk's fp32 round trip.
//  - dQ: one CTA per (batch, head, query tile), looping over 64-key tiles up to the diagonal: S, dP, dS as
//    above (row-wise), dQ += dS K. Query tiles as in the forward: 128 rows (two m-tiles per warp, 254 registers)
//    at hd 64, 64 rows (181 registers) at hd 128. S and dP are recomputed in both kernels (7 tile GEMMs instead
//    of 5) to avoid floating-point atomics on dQ. Given a FlashPrepBackward for q, it ends like the dK/dV kernel,
//    with q's preparation backward and its gain (prep_gain_dot, prep_bwd_row) on rows staged where Qs and dOs
//    were: the gain's gradient as one double partial per (batch, query tile, warp, head), added up by
//    launch_add_chunk_sums.
//  - atomic dQ (not deterministic, as FlashAttention-2): no dQ kernel. The dK/dV kernel also stores each query
//    tile's dS^T (bf16) in shared memory; after a barrier every warp computes a block of 16 rows x HD BQ / 64 columns
//    of dS K over the CTA's 64 keys and adds it to the fp32 dq with red.global.add.v2.f32 (dq zeroed first unless
//    accumulating). The order of the adds from the key tiles of a query varies run to run. 212 / 246 registers
//    (hd 64 / 128), 64 / 74 KiB of shared memory: still two CTAs per SM.
//  - other head dims: every multiple of 16 up to 128 fits the same code; 16 and 32 are tiled as 64, 96 as 128
//    except in dK/dV (64 queries), and these five are compiled. ptxas (sm_90a, CUDA 13): no kernel spills; the
//    most registers are dQ's 254 at hd 64 (dK/dV, under __launch_bounds__(128, 2): 226 deterministic at hd 64).
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda_flash_mma.h"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_prep_math.cuh"

namespace ptool::cuda {

namespace {

using bf16_bits = uint16_t;  // shared tiles hold raw bf16 bits

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) lands in the low 16 bits
  uint32_t r;
  memcpy(&r, &v, sizeof r);
  return r;
}

#if PTOOL_CUDA_EMULATED
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16_bits* p) { cuemu::ldmatrix_x4(r, p, false); }
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const bf16_bits* p) { cuemu::ldmatrix_x4(r, p, true); }
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  cuemu::mma_m16n8k16_bf16(d, a, b0, b1);
}
__device__ __forceinline__ void cp_async16(bf16_bits* dst, const bf16_bits* src) { cuemu::cp_async(dst, src, 16); }
__device__ __forceinline__ void cp_async4(float* dst, const float* src) { cuemu::cp_async(dst, src, 4); }
__device__ __forceinline__ void cp_async_commit() { cuemu::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  cuemu::cp_async_wait(N);
}
__device__ __forceinline__ void atomic_add_pair(float* p, float x, float y) {
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
}
#else
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// cp.async: global -> shared without registers (16 bytes bypassing L1, or 4 bytes), grouped by commit;
// wait_group<N> returns once at most the N most recent groups of this thread are still in flight. The copies
// are visible to other threads only after a barrier that follows the wait.
__device__ __forceinline__ void cp_async16(bf16_bits* dst, const bf16_bits* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async4(float* dst, const float* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ldmatrix x4: lanes 8i..8i+7 give the row addresses of 8x8 matrix i; register i receives matrix i with thread
// (g = lane / 4, t = lane % 4) holding row g, columns 2t, 2t+1 (.trans: column g, rows 2t, 2t+1).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16_bits* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const bf16_bits* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}

// d += a b, m16n8k16, A row-major 16x16, B "col" 16x8 (given as its 8 columns of 16 k), fp32 accumulators.
// Fragments (g = lane / 4, t = lane % 4): a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]},
// b = {B[2t..][g], B[2t+8..][g]}, d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One vector reduction (red.global.add.v2.f32, sm_90) instead of two scalar ones; p is 8-byte aligned.
__device__ __forceinline__ void atomic_add_pair(float* p, float x, float y) {
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(x, y));
}
#endif

#define PTOOL_FLASH_SMEM(name) PTOOL_DYNAMIC_SMEM(uint4, name)
#include "kernels/cuda_flash_mma_kernels.cuh"
#undef PTOOL_FLASH_SMEM

// ---- launchers ----------------------------------------------------------------------------------------------

void check_aligned(const char* op, std::initializer_list<const void*> ps) {
  for (const void* p : ps)
    if ((reinterpret_cast<uintptr_t>(p) & 15u) != 0)
      throw std::invalid_argument(std::string(op) + ": the bf16 flash kernels need 16-byte aligned q, k, v and dO");
}

void check_args(const char* op, int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd) {
  if (B < 0 || Tn < 0 || hd <= 0 || H <= 0 || Hkv <= 0 || H % Hkv != 0) {
    throw std::invalid_argument(std::string(op) + ": bad shape B=" + std::to_string(B) + " T=" + std::to_string(Tn) +
                                " H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) + " hd=" +
                                std::to_string(hd) + " (need H % Hkv == 0)");
  }
  if (!flash_mma_supports(hd)) {
    throw std::invalid_argument(std::string(op) + ": the bf16 flash kernels support head_dim 16, 32, 64, 96 and 128, got " +
                                std::to_string(hd));
  }
  if (Tn > (int64_t{1} << 30) || H > 65535 || B > 65535) {
    throw std::invalid_argument(std::string(op) + ": shape too large for the CUDA grid (T=" + std::to_string(Tn) +
                                " H=" + std::to_string(H) + " B=" + std::to_string(B) + ")");
  }
}

// 1 / sqrt(hd), rounded once to float; the kernels also take it times log2 e for their base-2 softmax.
template <int HD>
float softmax_scale() {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(HD)));
}

template <int HD>
void fwd_impl(const bf16_bits* q, const bf16_bits* k, const bf16_bits* v, int B, int T, int Tq, int H, int Hkv,
              Out out, float* lse, cudaStream_t s) {
  const LaunchShape ls = fwd_shape<HD>(B, Tq, H);
  PTOOL_CUDA_CHECK(cudaFuncSetAttribute(flash_fwd_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(ls.smem)));
  PTOOL_LAUNCH(flash_fwd_kernel<HD>, dim3(ls.gx, ls.gy, ls.gz), ls.threads, ls.smem, s)(
      q, k, v, out.f32, out.bf16, lse, T, Tq, H, Hkv, softmax_scale<HD>() * kLog2e);
  PTOOL_CUDA_LAUNCHED("flash_mma_forward", s);
}

template <int HD, bool DQ>
void dkdv_launch(const bf16_bits* dout, const bf16_bits* q, const bf16_bits* k, const bf16_bits* v, const float* lse,
                 const float* Dv, int B, int T, int H, int Hkv, float* dk, Out dv, int64_t dv_ld, int64_t dv_col,
                 bool accumulate, float* dq_atomic, const FlashPrepBackward& k_prep, cudaStream_t s) {
  const float scale = softmax_scale<HD>();
  const LaunchShape ls = dkdv_shape<HD, DQ>(B, T, Hkv);
  constexpr auto* dkdv_kernel = flash_bwd_dkdv_kernel<HD, DQ>;  // PTOOL_LAUNCH takes no commas in its names
  PTOOL_CUDA_CHECK(cudaFuncSetAttribute(dkdv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(ls.smem)));
  PTOOL_LAUNCH(dkdv_kernel, dim3(ls.gx, ls.gy, ls.gz), ls.threads, ls.smem, s)(
      dout, q, k, v, lse, Dv, T, H, Hkv, scale, scale * kLog2e, dk, dv.f32, dv.bf16, dv_ld, dv_col, accumulate,
      dq_atomic, k_prep);
  PTOOL_CUDA_LAUNCHED(DQ ? "flash_mma_backward (dk, dv, atomic dq)" : "flash_mma_backward (dk, dv)", s);
}

template <int HD>
void bwd_impl(const bf16_bits* dout, const bf16_bits* q, const bf16_bits* k, const bf16_bits* v, const float* lse,
              const float* Dv, int B, int T, int H, int Hkv, float* dq, float* dk, Out dv, int64_t dv_ld,
              int64_t dv_col, bool accumulate, bool atomic_dq, const FlashPrepBackward& k_prep,
              const FlashPrepBackward& q_prep, double* gain_partial, cudaStream_t s) {
  if (dq && atomic_dq) {  // one kernel: dq gets every key tile's dS K by atomics, onto zeros unless accumulating
    if (!accumulate)
      PTOOL_CUDA_CHECK(cudaMemsetAsync(dq, 0, static_cast<size_t>(B) * T * H * HD * sizeof(float), s));
    dkdv_launch<HD, true>(dout, q, k, v, lse, Dv, B, T, H, Hkv, dk, dv, dv_ld, dv_col, accumulate, dq, k_prep, s);
    return;
  }
  if (dk || dv.f32 || dv.bf16 || k_prep.draw.f32 || k_prep.draw.bf16)
    dkdv_launch<HD, false>(dout, q, k, v, lse, Dv, B, T, H, Hkv, dk, dv, dv_ld, dv_col, accumulate, nullptr, k_prep,
                           s);
  const bool folds_q = q_prep.draw.f32 || q_prep.draw.bf16;
  if (dq || folds_q) {
    const float scale = softmax_scale<HD>();
    const LaunchShape ls = dq_shape<HD>(B, T, H);
    PTOOL_CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_dq_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(ls.smem)));
    PTOOL_LAUNCH(flash_bwd_dq_kernel<HD>, dim3(ls.gx, ls.gy, ls.gz), ls.threads, ls.smem, s)(
        dout, q, k, v, lse, Dv, T, H, Hkv, scale, scale * kLog2e, dq, accumulate, q_prep, gain_partial);
    PTOOL_CUDA_LAUNCHED("flash_mma_backward (dq)", s);
    if (folds_q && q_prep.dgain)  // chunks: (batch, query tile, warp)
      launch_add_chunk_sums(gain_partial, static_cast<int64_t>(B) * ls.gx * kWarps, H, q_prep.dgain, s);
  }
}

// The gain's gradient chunks of q's preparation backward in the dQ kernel: one per (batch, query tile, warp, head).
template <int HD>
int64_t gain_partials(int64_t B, int64_t Tn, int64_t H) {
  return B * dq_shape<HD>(1, static_cast<int>(Tn), 1).gx * kWarps * H;
}

}  // namespace

void launch_flash_mma_forward(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t B, int64_t Tn,
                              int64_t from, int64_t H, int64_t Hkv, int64_t hd, Out out, float* lse, cudaStream_t s) {
  check_args("attention_forward", B, Tn, H, Hkv, hd);
  check_aligned("attention_forward", {q, k, v});
  if (from < 0 || from >= std::max<int64_t>(Tn, 1))
    throw std::invalid_argument("attention_forward: the scored queries start at " + std::to_string(from) +
                                ", outside [0, T = " + std::to_string(Tn) + ")");
  if (B == 0 || Tn == 0) return;
  const int b = static_cast<int>(B), t = static_cast<int>(Tn), tq = static_cast<int>(Tn - from);
  const int h = static_cast<int>(H), hk = static_cast<int>(Hkv);
  switch (hd) {
    case 16: return fwd_impl<16>(q, k, v, b, t, tq, h, hk, out, lse, s);
    case 32: return fwd_impl<32>(q, k, v, b, t, tq, h, hk, out, lse, s);
    case 64: return fwd_impl<64>(q, k, v, b, t, tq, h, hk, out, lse, s);
    case 96: return fwd_impl<96>(q, k, v, b, t, tq, h, hk, out, lse, s);
    default: return fwd_impl<128>(q, k, v, b, t, tq, h, hk, out, lse, s);
  }
}

void launch_flash_mma_backward(const uint16_t* dout, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                               const uint16_t* out, const float* lse, int64_t B, int64_t Tn, int64_t H, int64_t Hkv,
                               int64_t hd, float* dq_acc, float* dk_acc, Out dv, int64_t dv_ld, int64_t dv_col,
                               bool accumulate, bool atomic_dq, Workspace& ws, cudaStream_t s,
                               const FlashPrepBackward* k_prep, const FlashPrepBackward* q_prep) {
  check_args("attention_backward", B, Tn, H, Hkv, hd);
  const FlashPrepBackward kp = k_prep ? *k_prep : FlashPrepBackward{}, qp = q_prep ? *q_prep : FlashPrepBackward{};
  const bool folds_k = kp.draw.f32 || kp.draw.bf16, folds_q = qp.draw.f32 || qp.draw.bf16;
  const auto check_prep = [&](const FlashPrepBackward& p, const char* which, int64_t heads) {
    if ((p.norm && !p.rstd) || p.half < 0 || 2 * p.half > hd || (p.half > 0 && (!p.cos_t || !p.sin_t)) ||
        p.ld < heads * hd || p.col < 0 || p.col > p.ld - heads * hd || accumulate)
      throw std::invalid_argument(std::string("attention_backward: ") + which +
                                  "'s preparation backward needs no accumulation, the norm's rstd, a rope table for "
                                  "its rotary dims and a destination that holds heads * hd columns");
  };
  if (folds_k) check_prep(kp, "k", Hkv);
  if (folds_q) check_prep(qp, "q", H);
  if (folds_k && dk_acc) throw std::invalid_argument("attention_backward: k's preparation backward replaces dk");
  if (folds_q && (dq_acc || atomic_dq || !qp.gain))
    throw std::invalid_argument("attention_backward: q's preparation backward replaces dq, needs the gain and "
                                "deterministic dq (no atomics)");
  check_aligned("attention_backward", {dout, q, k, v, out});
  if (dv.bf16 && accumulate) throw std::invalid_argument("attention_backward: cannot add into a bf16 operand buffer");
  if (dv_ld < Hkv * hd || dv_col < 0 || dv_col > dv_ld - Hkv * hd || (accumulate && dv_ld != Hkv * hd) ||
      (dv.bf16 && (dv_ld % 2 != 0 || dv_col % 2 != 0)))
    throw std::invalid_argument("attention_backward: dv's rows (" + std::to_string(dv_ld) + " apart, from column " +
                                std::to_string(dv_col) + ") cannot hold Hkv * hd = " + std::to_string(Hkv * hd) +
                                " columns (accumulated: whole rows; bf16: even ld and column)");
  if (atomic_dq && dq_acc && (reinterpret_cast<uintptr_t>(dq_acc) & 7u) != 0)
    throw std::invalid_argument("attention_backward: atomic dq needs an 8-byte aligned dq");
  if (!dq_acc && !dk_acc && !dv.f32 && !dv.bf16 && !folds_k && !folds_q) return;
  if (B == 0 || Tn == 0) return;
  const int b = static_cast<int>(B), t = static_cast<int>(Tn), h = static_cast<int>(H), hk = static_cast<int>(Hkv);
  const auto impl = [&](auto hd_constant) {
    constexpr int HD = decltype(hd_constant)::value;
    const int64_t partials = folds_q ? gain_partials<HD>(B, Tn, H) : 0;
    Carver carve;  // measure, then carve D and the gain's partial sums out of one workspace block
    carve.take<float>(static_cast<size_t>(B * H * Tn));
    carve.take<double>(static_cast<size_t>(partials));
    carve = Carver{static_cast<char*>(ws.get(carve.off))};
    auto* Dv = carve.take<float>(static_cast<size_t>(B * H * Tn));
    auto* gain_partial = carve.take<double>(static_cast<size_t>(partials));
    const int64_t rows = B * Tn * H;
    const LaunchShape ls = dot_shape(rows);
    PTOOL_LAUNCH(flash_bwd_dot_kernel, ls.gx, ls.threads, 0, s)(dout, out, rows, t, h, HD, Dv);
    PTOOL_CUDA_LAUNCHED("flash_mma_backward (rowsum dO * O)", s);
    bwd_impl<HD>(dout, q, k, v, lse, Dv, b, t, h, hk, dq_acc, dk_acc, dv, dv_ld, dv_col, accumulate, atomic_dq, kp, qp,
                 gain_partial, s);
  };
  switch (hd) {
    case 16: return impl(std::integral_constant<int, 16>{});
    case 32: return impl(std::integral_constant<int, 32>{});
    case 64: return impl(std::integral_constant<int, 64>{});
    case 96: return impl(std::integral_constant<int, 96>{});
    default: return impl(std::integral_constant<int, 128>{});
  }
}

}  // namespace ptool::cuda
