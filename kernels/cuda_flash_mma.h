// Internal to kernels/: tensor-core (bf16 mma.sync) flash attention, the CudaGemmPrecision::bf16 path of the
// CUDA backend's attention_forward / attention_backward. Same contract, layouts and lse convention as the fp32
// kernels of cuda_attention.cu (src/ops/cpu_ops.h): q [B, T, H, hd], k and v [B, T, Hkv, hd], out like q, lse
// [B, H, T] natural log-sum-exp of the scaled scores, dq/dk/dv accumulated into (null skips). Q, K, V, dO and
// the backward's out come in bf16 (bits, round to nearest even: the caller's bf16 operand buffers, or its rounded
// copies); the forward's out and the backward's dv (when written, not accumulated) are fp32 or bf16 operand
// buffers, dv's rows dv_ld elements apart from column dv_col (a slice of a wider buffer; Hkv hd and 0 for its
// own); lse, dq and dk are fp32. P and dS are rounded to bf16 for the tensor cores, accumulation is fp32, so
// results differ from the fp32 kernels by ~1e-3 relative (see tests/kernels/test_cuda_flash_mma.cpp).
// The backward is deterministic (no atomics: bit-identical reruns) unless atomic_dq, which adds dq's terms with
// fp32 atomics from the dK/dV kernel (one kernel instead of two; dq 8-byte aligned; reruns differ in the last
// bits of dq). Plain C++ header (no CUDA device types).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda_internal.h"

namespace ptool::cuda {

// head_dim values the kernels are compiled for.
inline bool flash_mma_supports(int64_t hd) { return hd == 16 || hd == 32 || hd == 64 || hd == 96 || hd == 128; }

// Throw std::invalid_argument for bad shapes (H % Hkv != 0, ...), for head dims other than 16, 32, 64, 96 and 128, and for
// q, k, v, dout or the backward's out not 16-byte aligned. lse may be null in the forward (no backward follows).
// The forward's queries are the positions [from, Tn) of each sequence (Backend::attention_forward_suffix; 0 for
// attention_forward): q, out and lse hold Tn - from rows per sequence, k and v all Tn.
void launch_flash_mma_forward(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t B, int64_t Tn,
                              int64_t from, int64_t H, int64_t Hkv, int64_t hd, Out out, float* lse, cudaStream_t s);
// A preparation's backward run by a backward kernel on its gradient rows instead of writing them: k's
// (Backend::qk_prep_backward) by the dK/dV kernel, q's with its gain (Backend::qk_prep_backward_gain) by the
// deterministic dQ kernel. The rows (times gain[h] for q) are rotated back by the rope table (cos_t, sin_t:
// [Tn][half], half = rot / 2; 0: no rope), then with norm go through RMSNorm's backward (raw [B * Tn, heads hd],
// rstd [B * Tn * heads]) into draw, whose token rows are ld elements apart from column col; without norm the
// rotated rows go there. q's gain gradient sum dq x is added to dgain. The per-row arithmetic of the separate
// kernels (prep_bwd_row, prep_gain_dot), so draw is the same bit for bit; dgain's double sums are grouped by the
// dQ kernel's warps, so it agrees to rounding. Only where the gradient is written, not accumulated.
struct FlashPrepBackward {
  In raw;
  const float* rstd = nullptr;
  const float* cos_t = nullptr;
  const float* sin_t = nullptr;
  int64_t half = 0;
  bool norm = false;
  Out draw;
  int64_t ld = 0, col = 0;
  const float* gain = nullptr;  // q only
  float* dgain = nullptr;
};

void launch_flash_mma_backward(const uint16_t* dout, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                               const uint16_t* out, const float* lse, int64_t B, int64_t Tn, int64_t H, int64_t Hkv,
                               int64_t hd, float* dq_acc, float* dk_acc, Out dv, int64_t dv_ld, int64_t dv_col,
                               bool accumulate, bool atomic_dq, Workspace& ws, cudaStream_t s,
                               const FlashPrepBackward* k_prep = nullptr, const FlashPrepBackward* q_prep = nullptr);

}  // namespace ptool::cuda
