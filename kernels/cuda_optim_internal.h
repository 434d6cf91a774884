// Internal to kernels/: the launchers of kernels/cuda_optim.cu that kernels/cuda_optim.cpp (host code) calls.
// Every launcher enqueues on the given stream and returns without waiting. Matrix stages take `nb` matrices:
// `offs` (device, nb entries) are their offsets in the flat buffers, packed scratch holds them back to back.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cuda_optim.h"

namespace ptool::cuda {

// ---- host planning (pure; tested without a GPU) --------------------------------------------------------------

// Muon matrices of one shape and scale, stepped together: offs[m] is where matrix m starts (a 3-D bank
// contributes one entry per member). Groups in first-seen order; empty matrices are dropped.
struct MuonGroup {
  int64_t rows, cols;
  float scale;
  std::vector<int64_t> offs;
};
std::vector<MuonGroup> plan_muon_groups(const std::vector<CudaMuonMatrix>& matrices);

// Sums of squares in double, deterministic: launch_sumsq_partials writes nb x sumsq_chunks(n) partials (each
// over a fixed chunk of one matrix of n floats; with bf16_inputs every value is rounded to bf16 first), then
// launch_sumsq_finalize reduces each matrix's partials into ss[m].
int sumsq_chunks(size_t n);
void launch_sumsq_partials(const float* x, size_t n, int64_t nb, bool bf16_inputs, double* partials, cudaStream_t s);
void launch_sumsq_finalize(const double* partials, int chunks, int64_t nb, double* ss, cudaStream_t s);

// buf ← μ·buf + G;  U ← nesterov ? G + μ·buf : buf  (U packed [nb, n]).
void launch_muon_momentum(const int64_t* offs, int64_t nb, size_t n, const float* G, float* buf, float* U, float mu,
                          bool nesterov, cudaStream_t s);
// Each of nrows rows of U divided by max(‖row‖₂, 1e-7).
void launch_row_normalize(float* U, int64_t nrows, int64_t cols, cudaStream_t s);
// X[m] = U[m] / (‖U[m]‖_F + eps) (transposed when rows > cols), from ss[m] = ‖U[m]‖²; X is float, or bf16 with
// the reference's roundings (see newton_schulz in src/train/muon.h).
void launch_ns_pack(const float* U, const double* ss, int64_t nb, int64_t rows, int64_t cols, double eps, bool bf16,
                    void* X, cudaStream_t s);
// W[m] ← W[m]·decay (apply_decay);  W[m] ← W[m] − lr·(scale·X[m]) with X transposed back (bf16: the scaled
// update rounded to bf16).
void launch_muon_apply(const void* X, bool bf16, int64_t nb, int64_t rows, int64_t cols, const int64_t* offs,
                       float scale, float lr, float decay, bool apply_decay, float* W, cudaStream_t s);

// Adam: one block per table entry (a chunk of one segment); per-group constants by value.
struct AdamChunk {
  size_t offset;
  int32_t len;
  int32_t group;
};
struct AdamGroupConsts {
  float step_size, decay, wd;
  int enabled, decoupled, coupled, bf16;
};
struct AdamConsts {
  float b1, b2, omb1, omb2, eps, bc2_sqrt;
  AdamGroupConsts groups[8];
};
inline constexpr int32_t kAdamChunk = 4096;
// Each segment cut into chunks of at most kAdamChunk floats, in order. Throws ptool::Error on a bad group.
std::vector<AdamChunk> plan_adam_chunks(const std::vector<CudaAdamSegment>& segments);
void launch_adam(const AdamChunk* table, int64_t nchunks, const AdamConsts& c, float* w, const float* g, float* m,
                 float* v, cudaStream_t s);

// g ← g·min(max_norm / (sqrt(*ss) + 1e-6), 1) when that factor is below 1 and the norm is finite.
void launch_clip_scale(float* g, size_t n, const double* ss, double max_norm, cudaStream_t s);
void launch_ema(float* ema, const float* w, size_t n, float d, float omd, cudaStream_t s);
// g ← mask ? g : 0.
void launch_mask(float* g, const uint8_t* mask, size_t n, cudaStream_t s);
// Where mask: buf ← first ? g : μ·buf + g;  w ← w − lr·buf.
void launch_masked_sgd(float* w, const float* g, float* buf, const uint8_t* mask, size_t n, float lr, float mu,
                       bool first, cudaStream_t s);
void launch_swa(float* sum, const float* w, size_t n, bool first, cudaStream_t s);
void launch_fake_quantize_rows(const float* W, int64_t rows, int64_t cols, int bits, float* out, cudaStream_t s);

}  // namespace ptool::cuda
