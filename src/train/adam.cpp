#include "src/train/adam.h"

#include <cmath>

#include "formats/error.h"

namespace ptool::train {

void adam_update(float* w, const float* g, float* m, float* v, size_t n, int64_t t, double lr, double weight_decay,
                 const AdamConfig& cfg) {
  if (t < 1) throw Error("adam: step number must be >= 1");
  const double bc1 = 1.0 - std::pow(cfg.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(cfg.beta2, static_cast<double>(t));
  const float step_size = static_cast<float>(lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float b1 = static_cast<float>(cfg.beta1), b2 = static_cast<float>(cfg.beta2);
  const float omb1 = static_cast<float>(1.0 - cfg.beta1), omb2 = static_cast<float>(1.0 - cfg.beta2);
  const float eps = static_cast<float>(cfg.eps);
  const bool decoupled = cfg.decoupled_weight_decay && weight_decay != 0.0;
  const bool coupled = !cfg.decoupled_weight_decay && weight_decay != 0.0;
  const float decay = static_cast<float>(1.0 - lr * weight_decay);
  const float wd = static_cast<float>(weight_decay);
  for (size_t i = 0; i < n; ++i) {
    float gi = g[i];
    if (coupled) gi += wd * w[i];
    if (decoupled) w[i] *= decay;
    m[i] = b1 * m[i] + omb1 * gi;
    v[i] = b2 * v[i] + omb2 * gi * gi;
    const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
    w[i] -= step_size * (m[i] / denom);
  }
}

Adam::Adam(const ParamStore& params) : m_(params.zeros_like()), v_(params.zeros_like()) {}

void Adam::step(ParamStore& params, const ParamStore& grads, const AdamConfig& cfg) {
  m_.check_same_layout(params, "adam: parameters");
  m_.check_same_layout(grads, "adam: gradients");
  ++t_;
  for (const Slice& s : params.slices()) {
    const AdamGroup& gr = cfg.group(s.group);
    if (!gr.enabled || s.numel == 0) continue;
    adam_update(params.data() + s.offset, grads.data() + s.offset, m_.data() + s.offset, v_.data() + s.offset,
                s.numel, t_, gr.lr, gr.weight_decay, cfg);
  }
}

}  // namespace ptool::train
