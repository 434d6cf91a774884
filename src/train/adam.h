// Adam / AdamW over the slices of a ParamStore, with lr and weight decay per optimizer group
// (REFERENCE.md §3.3: tok_emb lr 0.05, lm_head 0.008, scalars 0.04, betas (0.9, 0.95), eps 1e-8, no WD;
// §4.3: AdamW with EMBED_WD / scalar WD in the later stacks).
//
// Per element, with t the step count after increment (first step t = 1), as torch.optim.Adam/AdamW:
//   coupled WD (Adam, weight_decay > 0):  g ← g + wd·w
//   decoupled WD (AdamW):                  w ← w·(1 − lr·wd)
//   m ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
//   w ← w − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
// Bias corrections are computed in double and the element update in float.
// A bf16 group mimics torch's fused Adam on a bf16 parameter (the reference's tok_emb): the gradient, the moments
// and the weight are bf16 tensors there, so g is rounded to bf16 before the update and m, v and w after it.
#pragma once
#include <array>
#include <cstdint>

#include "src/train/param_store.h"

namespace ptool::train {

struct AdamGroup {
  bool enabled = false;       // slices of a disabled group are not touched (moments stay zero)
  double lr = 0.0;            // the *scheduled* lr (base_lr · lr_mul) for this step
  double weight_decay = 0.0;
  bool bf16 = false;          // gradient, moments and weights rounded to bf16 (see above)
};

struct AdamConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  bool decoupled_weight_decay = true;  // true: AdamW; false: torch.optim.Adam's L2 form
  // Indexed by static_cast<int>(Group). Defaults: the three adam_* groups enabled, muon/frozen disabled.
  std::array<AdamGroup, kNumGroups> groups{AdamGroup{false}, AdamGroup{true}, AdamGroup{true}, AdamGroup{true},
                                           AdamGroup{false}};
  AdamGroup& group(Group g) { return groups[static_cast<size_t>(g)]; }
  const AdamGroup& group(Group g) const { return groups[static_cast<size_t>(g)]; }
};

// The float constants of one step of one group, as adam_update computes them (shared with the device step so
// that both use the same bits).
struct AdamStepConsts {
  float step_size, bc2_sqrt, b1, b2, omb1, omb2, eps, decay, wd;
  bool decoupled, coupled, bf16;
};
AdamStepConsts adam_step_consts(int64_t t, const AdamGroup& group, const AdamConfig& cfg);

// One Adam step of `group`'s settings on n contiguous elements; `t` is the 1-based step number of this update.
void adam_update(float* w, const float* g, float* m, float* v, size_t n, int64_t t, const AdamGroup& group,
                 const AdamConfig& cfg);

class Adam {
 public:
  explicit Adam(const ParamStore& params);
  // Increments the step count, then updates every slice whose group is enabled in cfg.
  void step(ParamStore& params, const ParamStore& grads, const AdamConfig& cfg);
  int64_t step_count() const { return t_; }
  void set_step_count(int64_t t) { t_ = t; }   // for resume
  ParamStore& exp_avg() { return m_; }          // first moments (same layout as the parameters)
  ParamStore& exp_avg_sq() { return v_; }       // second moments
  const ParamStore& exp_avg() const { return m_; }
  const ParamStore& exp_avg_sq() const { return v_; }

 private:
  ParamStore m_, v_;
  int64_t t_ = 0;
};

}  // namespace ptool::train
