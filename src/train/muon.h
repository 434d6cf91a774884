// Muon (REFERENCE.md §4.1, §4.2): momentum + Nesterov, optional row normalisation (MuonEq-R),
// Newton-Schulz orthogonalisation, shape scaling, decoupled weight decay. CPU reference in float (Eigen).
//
// Precision. The reference runs NS in bf16 on the GPU (X = G.bfloat16(), torch.compile'd graph) and
// writes the scaled update into a bf16 flat buffer before `p.add_(update, alpha=-lr)`. By default this
// implementation runs everything in float, which is the more accurate oracle. With `bf16 = true` it
// mimics the reference by rounding (round-to-nearest-even) at the points where the compiled bf16 graph
// stores a bf16 tensor: the normalised X, every GEMM output (A = X Xᵀ, (c·A)·A, B·X), the scaled c·A
// feeding a GEMM, each fused pointwise result (B = b·A + c·A·A, X = a·X + B·X), and the final scaled
// update. GEMMs themselves accumulate in float, like bf16 tensor-core GEMMs accumulate in fp32. The
// norm is computed in double and rounded to bf16 before the division. This is a close mimic, not a
// bit-exact replica of cuBLAS/inductor; tests compare the two modes with a tolerance.
//
// Convergence. The quintic coefficients (3.4445, −4.7750, 2.0315) are tuned for speed, not for
// convergence to the polar factor. Each step maps every singular value σ of X by p(σ) = aσ + bσ³ + cσ⁵;
// after 5 steps a normalised singular value σ₀ ∈ [0.01, 1] lands in [0.68, 1.14] (σ₀ ∈ [0.003, 1]:
// [0.68, 1.21]) and never settles at 1; much smaller σ₀ stay small (p'(0) = a, so ×3.44⁵ ≈ ×485). Polar
// Express (5 steps) maps σ₀ ∈ [0.001, 1] into [0.858, 1.142]. A square Gaussian matrix has σ_min/‖G‖_F
// ~ n^-1.5, so its smallest singular values are NOT orthogonalised; rectangular ones are.
#pragma once
#include <cstdint>
#include <vector>

#include "src/train/param_store.h"

namespace ptool::train {

struct NsCoeffs {
  double a = 0, b = 0, c = 0;
};

struct NsConfig {
  // Iteration k (0-based) uses coeffs[min(k, coeffs.size() - 1)].
  std::vector<NsCoeffs> coeffs;
  int steps = 5;
  double eps = 1e-7;  // X ← X / (‖X‖_F + eps)

  // The baseline quintic (3.4445, −4.7750, 2.0315) repeated `steps` times (MUON_BACKEND_STEPS, default 5).
  static NsConfig quintic(int steps = 5);
  // Polar Express per-iteration tuples (§4.2). The reference slices `_PE_COEFFS[:steps]`, so steps is
  // capped at 5 here too.
  static NsConfig polar_express(int steps = 5);
};

// Orthogonalises the row-major rows×cols matrix G into out (may alias G):
//   X = G / (‖G‖_F + eps); if rows > cols work on Xᵀ; repeat: A = X Xᵀ; B = b·A + c·A·A; X = a·X + B·X;
//   transpose back. bf16: see the header comment. Throws ptool::Error on non-positive dimensions.
void newton_schulz(const float* G, int64_t rows, int64_t cols, const NsConfig& cfg, float* out, bool bf16 = false);

// sqrt(max(1, rows/cols)), the shape correction applied to the orthogonalised update.
double muon_shape_scale(int64_t rows, int64_t cols);

// Momentum warm-up (§3.3): linear from `start` to `end` over `warmup_steps` steps:
//   frac = min(step / warmup_steps, 1) (1 when warmup_steps <= 0); momentum = (1−frac)·start + frac·end.
double muon_momentum_at(int64_t step, double start, double end, int64_t warmup_steps);

struct MuonConfig {
  double lr = 0.04;            // the *scheduled* lr (base_lr · lr_mul) for this step
  double momentum = 0.95;      // this step's μ (see muon_momentum_at)
  double weight_decay = 0.0;   // decoupled: W ← W·(1 − lr·wd) before the update (already tapered if used)
  bool nesterov = true;        // U = G + μ·buf; else U = buf
  bool row_normalize = false;  // MuonEq-R: each row of U divided by max(‖row‖₂, 1e-7) before NS
  NsConfig ns = NsConfig::quintic(5);
  bool bf16 = false;           // mimic the reference's bf16 NS and bf16 update buffer
};

// One Muon step on one (batch of) matrix(es): W, G, buf are row-major [batch, rows, cols] (batch ≥ 1;
// 3-D "banks" are stepped matrix by matrix, like the reference's batched NS). Per matrix:
//   buf ← μ·buf + G;  U ← nesterov ? G + μ·buf : buf;  [row-normalise U];  U ← NS(U);
//   U ← U·sqrt(max(1, rows/cols));  [bf16: round U];  W ← W·(1 − lr·wd);  W ← W − lr·U.
// `scratch` is resized as needed (reuse it across calls to avoid allocation).
void muon_update(float* W, const float* G, float* buf, int64_t batch, int64_t rows, int64_t cols,
                 const MuonConfig& cfg, std::vector<float>& scratch);

// Muon over every slice of a ParamStore whose group is Group::muon (each must have ndim ≥ 2).
class Muon {
 public:
  explicit Muon(const ParamStore& params);
  // Steps every Muon slice of `params` with its gradient in `grads` (same layout; checked).
  void step(ParamStore& params, const ParamStore& grads, const MuonConfig& cfg);
  // Steps only the listed slice indices (for round-robin sharding of the NS work across ranks: the
  // reference gives slice i of the Muon group to rank i % world). Indices of non-Muon slices throw.
  void step_slices(ParamStore& params, const ParamStore& grads, const MuonConfig& cfg,
                   const std::vector<size_t>& slice_indices);
  // Indices of the Muon slices, in layout order.
  const std::vector<size_t>& muon_slices() const { return muon_slices_; }
  // The momentum buffers (same layout as the parameters; non-Muon slices stay zero). Save/restore for resume.
  ParamStore& momentum() { return buf_; }
  const ParamStore& momentum() const { return buf_; }

 private:
  ParamStore buf_;
  std::vector<size_t> muon_slices_;
  std::vector<float> scratch_;
};

}  // namespace ptool::train
