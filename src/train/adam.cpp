#include "src/train/adam.h"

#include <cmath>

#include "formats/error.h"
#include "src/ops/bf16.h"

namespace ptool::train {

AdamStepConsts adam_step_consts(int64_t t, const AdamGroup& group, const AdamConfig& cfg) {
  const double lr = group.lr, weight_decay = group.weight_decay;
  if (t < 1) throw Error("adam: step number must be >= 1");
  const double bc1 = 1.0 - std::pow(cfg.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(cfg.beta2, static_cast<double>(t));
  AdamStepConsts c;
  c.step_size = static_cast<float>(lr / bc1);
  c.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  c.b1 = static_cast<float>(cfg.beta1);
  c.b2 = static_cast<float>(cfg.beta2);
  c.omb1 = static_cast<float>(1.0 - cfg.beta1);
  c.omb2 = static_cast<float>(1.0 - cfg.beta2);
  c.eps = static_cast<float>(cfg.eps);
  c.decoupled = cfg.decoupled_weight_decay && weight_decay != 0.0;
  c.coupled = !cfg.decoupled_weight_decay && weight_decay != 0.0;
  c.decay = static_cast<float>(1.0 - lr * weight_decay);
  c.wd = static_cast<float>(weight_decay);
  c.bf16 = group.bf16;
  return c;
}

void adam_update(float* w, const float* g, float* m, float* v, size_t n, int64_t t, const AdamGroup& group,
                 const AdamConfig& cfg) {
  const AdamStepConsts c = adam_step_consts(t, group, cfg);
  // Explicit fused multiply-adds (what GCC's contraction made of the plain expressions): the device step in
  // kernels/cuda_optim.cu uses the same ones and matches bit for bit whatever the host compiler contracts.
  for (size_t i = 0; i < n; ++i) {
    float gi = c.bf16 ? round_to_bf16(g[i]) : g[i];
    if (c.coupled) gi = std::fma(c.wd, w[i], gi);
    if (c.decoupled) w[i] *= c.decay;
    m[i] = std::fma(c.b1, m[i], c.omb1 * gi);
    v[i] = std::fma(c.b2, v[i], c.omb2 * gi * gi);
    const float denom = std::sqrt(v[i]) / c.bc2_sqrt + c.eps;
    w[i] = std::fma(-c.step_size, m[i] / denom, w[i]);
    if (c.bf16) {
      m[i] = round_to_bf16(m[i]);
      v[i] = round_to_bf16(v[i]);
      w[i] = round_to_bf16(w[i]);
    }
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
                s.numel, t_, gr, cfg);
  }
}

}  // namespace ptool::train
