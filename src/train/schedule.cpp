#include "src/train/schedule.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "formats/error.h"

namespace ptool::train {

double lr_mul_step_warmdown(int64_t step, int64_t iterations, int64_t warmdown_iters) {
  if (warmdown_iters <= 0) return 1.0;
  const int64_t start = std::max<int64_t>(iterations - warmdown_iters, 0);
  if (step >= start && step < iterations)
    return std::max(static_cast<double>(iterations - step) / static_cast<double>(std::max<int64_t>(warmdown_iters, 1)),
                    0.0);
  return 1.0;
}

double lr_mul_wallclock_warmdown(int64_t step, double elapsed_ms, int64_t warmdown_iters, double max_wallclock_ms) {
  if (warmdown_iters <= 0) return 1.0;
  const double step_ms = elapsed_ms / static_cast<double>(std::max<int64_t>(step, 1));
  const double warmdown_ms = static_cast<double>(warmdown_iters) * step_ms;
  const double remaining_ms = std::max(max_wallclock_ms - elapsed_ms, 0.0);
  return remaining_ms <= warmdown_ms ? remaining_ms / std::max(warmdown_ms, 1e-9) : 1.0;
}

double lr_mul_baseline(int64_t step, double elapsed_ms, int64_t iterations, int64_t warmdown_iters,
                       double max_wallclock_ms) {
  if (warmdown_iters <= 0) return 1.0;
  if (max_wallclock_ms <= 0) return lr_mul_step_warmdown(step, iterations, warmdown_iters);
  return lr_mul_wallclock_warmdown(step, elapsed_ms, warmdown_iters, max_wallclock_ms);
}

double training_frac(int64_t step, double elapsed_ms, int64_t iterations, double max_wallclock_ms,
                     double reserve_ms) {
  if (max_wallclock_ms <= 0)
    return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(iterations, 1));
  return elapsed_ms / std::max(max_wallclock_ms - reserve_ms, 1e-9);
}

double lr_mul_fraction(double frac, double warmdown_frac, double min_lr) {
  if (warmdown_frac <= 0) return 1.0;
  if (frac >= 1.0 - warmdown_frac) return std::max((1.0 - frac) / warmdown_frac, min_lr);
  return 1.0;
}

double wd_taper_mul(double frac, double start_frac, double final_mult) {
  if (frac < start_frac) return 1.0;
  const double span = 1.0 - start_frac;
  const double p = span > 0 ? std::min((frac - start_frac) / span, 1.0) : 1.0;
  return 1.0 + (final_mult - 1.0) * p;
}

double global_norm(std::span<const float> grads) {
  double ss = 0.0;
  for (float g : grads) ss += static_cast<double>(g) * g;
  return std::sqrt(ss);
}

double clip_grad_norm(std::span<float> grads, double max_norm) {
  const double norm = global_norm(grads);
  if (max_norm > 0 && std::isfinite(norm)) {
    const double coef = std::min(max_norm / (norm + 1e-6), 1.0);
    if (coef < 1.0) {
      const float c = static_cast<float>(coef);
      for (float& g : grads) g *= c;
    }
  }
  return norm;
}

void ema_update(std::span<float> ema, std::span<const float> w, double decay) {
  if (ema.size() != w.size())
    throw Error("ema: size mismatch (" + std::to_string(ema.size()) + " vs " + std::to_string(w.size()) + ")");
  const float d = static_cast<float>(decay);
  const float omd = static_cast<float>(1.0 - decay);
  // ema.mul_(d).add_(w, alpha=1-d) as one explicit fma (what GCC's contraction made of it; the device matches).
  for (size_t i = 0; i < ema.size(); ++i) ema[i] = std::fma(ema[i], d, omd * w[i]);
}

Swa::Swa(size_t n, int64_t every, double start_lr_mul)
    : sum_(n, 0.0f), every_(every), start_lr_mul_(start_lr_mul) {
  if (every <= 0) throw Error("swa: 'every' must be positive");
}

bool Swa::due(int64_t step, double lr_mul) const { return lr_mul < start_lr_mul_ && step % every_ == 0; }

bool Swa::maybe_accumulate(int64_t step, double lr_mul, std::span<const float> w) {
  if (!due(step, lr_mul)) return false;
  accumulate(w);
  return true;
}

void Swa::accumulate(std::span<const float> w) {
  if (w.size() != sum_.size())
    throw Error("swa: size mismatch (" + std::to_string(w.size()) + " vs " + std::to_string(sum_.size()) + ")");
  if (count_ == 0)
    std::copy(w.begin(), w.end(), sum_.begin());
  else
    for (size_t i = 0; i < sum_.size(); ++i) sum_[i] += w[i];
  ++count_;
}

void Swa::average(std::span<float> out) const {
  if (count_ == 0) throw Error("swa: no checkpoint was accumulated");
  if (out.size() != sum_.size()) throw Error("swa: output size mismatch");
  const float cnt = static_cast<float>(count_);
  for (size_t i = 0; i < sum_.size(); ++i) out[i] = sum_[i] / cnt;
}

void Swa::restore(std::span<const float> sum, int64_t count) {
  if (sum.size() != sum_.size()) throw Error("swa: restored sum has the wrong size");
  if (count < 0) throw Error("swa: negative count");
  std::copy(sum.begin(), sum.end(), sum_.begin());
  count_ = count;
}

}  // namespace ptool::train
