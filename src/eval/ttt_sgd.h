// The weight update of score-first test-time training (eval_ttt, step 2): momentum SGD over the trainable
// parameters (mask 1), the gradient first clipped to a global norm over them. On a CUDA backend it runs on the
// device (kernels/cuda_optim.h CudaMaskedSgd: no copies, no host sync); elsewhere on the host, through
// download and upload. The two agree to float rounding (the device norm is reduced in another order).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "src/model/model.h"

namespace ptool::eval {

class TttSgd {
 public:
  virtual ~TttSgd() = default;
  // After a forward_backward: w ← w − lr·buf, buf ← momentum·buf + clip(g) (buf = clip(g) the first time).
  virtual void step(float lr) = 0;
};

std::unique_ptr<TttSgd> make_ttt_sgd(model::Model<float>& m, const std::vector<uint8_t>& mask, double momentum,
                                     double grad_clip);

}  // namespace ptool::eval
