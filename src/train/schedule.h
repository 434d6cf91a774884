// LR multiplier schedules (REFERENCE.md §3.3, §4.3), global-norm gradient clipping, and weight
// averaging (EMA, SWA; §4.4). Every group's lr is base_lr · lr_mul. There is no LR warm-up in any
// record (§10.3): WARMUP_STEPS only warms the compiler and is undone.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace ptool::train {

// ---- LR multiplier -------------------------------------------------------------------------------

// Baseline train_gpt.py `lr_mul(step, elapsed_ms)`: 1 when warmdown_iters <= 0; with no time cap
// (max_wallclock_ms <= 0) lr_mul_step_warmdown; otherwise lr_mul_wallclock_warmdown.
double lr_mul_baseline(int64_t step, double elapsed_ms, int64_t iterations, int64_t warmdown_iters,
                       double max_wallclock_ms);

// Pure step-count warmdown (no time cap): with start = max(iterations − warmdown_iters, 0),
//   lr_mul = max((iterations − step) / max(warmdown_iters, 1), 0) for start ≤ step < iterations, else 1
// (1 also for step ≥ iterations, exactly as the reference; the loop never runs such a step).
double lr_mul_step_warmdown(int64_t step, int64_t iterations, int64_t warmdown_iters);

// Wall-clock estimator of WARMDOWN_ITERS (§3.3): step_ms = elapsed_ms / max(step, 1),
// warmdown_ms = warmdown_iters · step_ms, remaining = max(max_wallclock_ms − elapsed_ms, 0);
// lr_mul = remaining / max(warmdown_ms, 1e-9) if remaining ≤ warmdown_ms else 1.
// `step` is the number of steps already completed (the reference's 0-based step before it runs).
double lr_mul_wallclock_warmdown(int64_t step, double elapsed_ms, int64_t warmdown_iters, double max_wallclock_ms);

// Training fraction of the wall-clock-fraction form (§4.3):
//   frac = elapsed_ms / max(max_wallclock_ms − reserve_ms, 1e-9) with a cap (max_wallclock_ms > 0),
//   else step / max(iterations, 1). reserve_ms is the GPTQ reserve subtracted from the cap.
double training_frac(int64_t step, double elapsed_ms, int64_t iterations, double max_wallclock_ms,
                     double reserve_ms = 0.0);

// Wall-clock-fraction warmdown with a floor (§4.3): 1 when warmdown_frac <= 0;
// lr_mul = max((1 − frac) / warmdown_frac, min_lr) once frac ≥ 1 − warmdown_frac, else 1.
double lr_mul_fraction(double frac, double warmdown_frac, double min_lr = 0.0);

// Muon WD taper (§4.3, WD_TAPER_START_FRAC / WD_TAPER_FINAL_MULT): 1 for frac < start_frac, then
// linear to final_mult at frac = 1 (clamped there): 1 + (final_mult − 1)·min((frac − start)/(1 − start), 1).
double wd_taper_mul(double frac, double start_frac, double final_mult);

// ---- Gradient clipping ---------------------------------------------------------------------------

// The global L2 norm of all values (accumulated in double).
double global_norm(std::span<const float> grads);
// torch.nn.utils.clip_grad_norm_: norm = global L2 norm; if max_norm > 0 and the norm is finite,
// grads *= min(max_norm / (norm + 1e-6), 1). Returns the norm before clipping. A non-finite norm leaves
// the gradients untouched (the caller should stop with an error: NaN in training).
double clip_grad_norm(std::span<float> grads, double max_norm);

// ---- Weight averaging ----------------------------------------------------------------------------

// EMA (§4.4), after every optimizer step: ema ← d·ema + (1 − d)·w (ema starts as a copy of the
// initial weights). Sizes must match.
void ema_update(std::span<float> ema, std::span<const float> w, double decay);

// SWA (§4.4): uniform running average of checkpoints taken every `every` steps once the LR multiplier
// has dropped below `start_lr_mul` (the reference's SWA_START_FRAC compared with lr_mul, i.e. inside the
// warmdown). The sum is kept in float like the reference's CPU state dict.
class Swa {
 public:
  Swa(size_t n, int64_t every, double start_lr_mul);
  // The reference's test, run after the step counter was incremented:
  //   lr_mul < start_lr_mul && step % every == 0  → accumulate w. Returns true when w was taken.
  bool maybe_accumulate(int64_t step, double lr_mul, std::span<const float> w);
  bool due(int64_t step, double lr_mul) const;  // that test alone (for a sum kept elsewhere, e.g. on a GPU)
  void accumulate(std::span<const float> w);  // unconditional: sum += w (first one: sum = w), count += 1
  int64_t count() const { return count_; }
  // out = sum / count. Throws ptool::Error when nothing was accumulated.
  void average(std::span<float> out) const;
  // State for checkpoint/resume.
  std::span<const float> sum() const { return sum_; }
  void restore(std::span<const float> sum, int64_t count);

 private:
  std::vector<float> sum_;
  int64_t count_ = 0;
  int64_t every_;
  double start_lr_mul_;
};

}  // namespace ptool::train
