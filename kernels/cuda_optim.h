// The optimizer step on the device (REFERENCE.md §3.3, §4): Muon, Adam, global-norm clipping, EMA, SWA and the
// QAT row fake-quant over flat fp32 buffers that live on a CUDA backend, queued in that backend's stream (no
// host sync anywhere). The CPU versions in src/train/ and src/quant/rtn.cpp are the oracles; this header
// takes plain numbers so that kernels/ stays free of training policy (src/train/optimizer_step_cuda.cpp maps
// MuonConfig / AdamConfig onto them). No CUDA includes, like kernels/cuda_backend.h.
//
// Numerics against the CPU oracle (tests/kernels/test_cuda_optim.cpp checks each):
// - Element-wise updates (momentum, Nesterov, Adam, EMA, SWA, W -= lr·U) use the CPU's operations in the
//   CPU's order, fused multiply-adds exactly where the CPU code has std::fma, so equal inputs give equal bits.
// - QAT fake-quant: bit-identical to quant::fake_quantize_rows (RNE fp16 scale, IEEE division, nearbyint).
// - Sums of squares (clip norm, Frobenius norm, row norms) are double, reduced in a fixed tree order: not the
//   CPU's sequential order, but deterministic and far below float resolution.
// - Newton-Schulz GEMMs: cuBLAS strided-batched over all Muon matrices of one shape. fp32 mode: fp32 inputs
//   and FFMA accumulation (parity mode). bf16 mode: bf16 X, A, B stored between the GEMMs, fp32 accumulation,
//   as the reference's compiled bf16 graph (the fast mode); it follows newton_schulz(.., bf16 = true) loosely.
// Every launch is deterministic: fixed grids, no floating-point atomics.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "src/ops/backend.h"

namespace ptool {

// One Muon tensor inside the flat buffers: `batch` row-major rows x cols matrices starting at `offset` floats;
// `scale` multiplies its orthogonalised update (the caller's muon_shape_scale).
struct CudaMuonMatrix {
  size_t offset = 0;
  int64_t batch = 1, rows = 0, cols = 0;
  float scale = 1;
};

struct CudaNsCoeffs {
  float a = 0, b = 0, c = 0;
};

struct CudaMuonStep {
  float lr = 0;                      // W ← W − lr·U
  float momentum = 0;                // μ
  float decay = 1;                   // W ← W·decay first (1 − lr·wd), when apply_decay
  bool apply_decay = false;
  bool nesterov = true;
  bool row_normalize = false;
  std::vector<CudaNsCoeffs> coeffs;  // one per Newton-Schulz iteration (already expanded to the step count)
  double eps = 1e-7;                 // X ← X / (‖X‖_F + eps)
  bool bf16 = false;
};

// Muon over a fixed set of matrices (src/train/muon.cpp muon_update). Matrices of one shape and scale are stepped
// together (one launch per stage and strided-batched GEMMs), groups one after another in first-seen order.
class CudaMuon {
 public:
  CudaMuon(Backend<float>& backend, const std::vector<CudaMuonMatrix>& matrices);
  ~CudaMuon();
  CudaMuon(const CudaMuon&) = delete;
  CudaMuon& operator=(const CudaMuon&) = delete;
  // W, G, buf: the flat parameter, gradient and momentum buffers (backend memory, one layout).
  void step(float* W, const float* G, float* buf, const CudaMuonStep& s);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Adam / AdamW (src/train/adam.cpp) over segments of the flat buffers; each segment belongs to a group whose
// constants the host computes per step exactly as adam_update does.
inline constexpr int kCudaAdamGroups = 8;
struct CudaAdamSegment {
  size_t offset = 0, numel = 0;
  int group = 0;  // < kCudaAdamGroups
};
struct CudaAdamGroupStep {
  bool enabled = false;
  float step_size = 0;       // lr / (1 − β1^t)
  float decay = 1;           // 1 − lr·wd (decoupled)
  float wd = 0;              // coupled: g ← g + wd·w
  bool decoupled = false, coupled = false;
  bool bf16 = false;         // gradient, moments and weights rounded to bf16 (src/train/adam.h)
};
struct CudaAdamStep {
  float b1 = 0, b2 = 0, omb1 = 0, omb2 = 0, eps = 0, bc2_sqrt = 1;
  std::array<CudaAdamGroupStep, kCudaAdamGroups> groups{};
};

class CudaAdam {
 public:
  CudaAdam(Backend<float>& backend, const std::vector<CudaAdamSegment>& segments);
  ~CudaAdam();
  CudaAdam(const CudaAdam&) = delete;
  CudaAdam& operator=(const CudaAdam&) = delete;
  void step(float* w, const float* g, float* m, float* v, const CudaAdamStep& s);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// torch.nn.utils.clip_grad_norm_ over n floats (src/train/schedule.cpp clip_grad_norm): the norm stays in
// device memory and the scaling kernel reads it there.
class CudaGradClip {
 public:
  CudaGradClip(Backend<float>& backend, size_t n);
  ~CudaGradClip();
  CudaGradClip(const CudaGradClip&) = delete;
  CudaGradClip& operator=(const CudaGradClip&) = delete;
  void clip(float* g, double max_norm);
  // The norm before the last clip (waits for the stream; for tests and diagnostics, not the step loop).
  double last_norm();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Test-time training's update (eval_ttt): momentum SGD over the parameters where mask is 1, the gradient clipped
// to a global norm over those parameters first; the others keep their weights (their gradients are zeroed). The
// buffer starts empty: the first step sets it to the gradient. All on the device, no host sync.
class CudaMaskedSgd {
 public:
  CudaMaskedSgd(Backend<float>& backend, const std::vector<uint8_t>& mask);
  ~CudaMaskedSgd();
  CudaMaskedSgd(const CudaMaskedSgd&) = delete;
  CudaMaskedSgd& operator=(const CudaMaskedSgd&) = delete;
  // g is overwritten (masked, clipped); grad_clip <= 0: no clipping.
  void step(float* w, float* g, float lr, float momentum, double grad_clip);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ema ← d·ema + (1 − d)·w (ema_update), with d and omd = 1 − d rounded to float by the caller.
void cuda_ema_update(Backend<float>& backend, float* ema, const float* w, size_t n, float d, float omd);
// SWA sum (Swa::accumulate): first ? sum = w : sum += w.
void cuda_swa_accumulate(Backend<float>& backend, float* sum, const float* w, size_t n, bool first);
// quant::fake_quantize_rows(W, rows, cols, bits, out), bit for bit; out may equal W. bits in 2..8 (unchecked).
void cuda_fake_quantize_rows(Backend<float>& backend, const float* W, int64_t rows, int64_t cols, int bits,
                             float* out);

}  // namespace ptool
