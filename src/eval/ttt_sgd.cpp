#include "src/eval/ttt_sgd.h"

#include <cmath>

#ifdef PTOOL_HAVE_CUDA
#include "kernels/cuda_backend.h"
#include "kernels/cuda_optim.h"
#endif

namespace ptool::eval {

namespace {

class HostTttSgd final : public TttSgd {
 public:
  HostTttSgd(model::Model<float>& m, const std::vector<uint8_t>& mask, double momentum, double grad_clip)
      : m_(m), mask_(mask), momentum_(momentum), clip_(grad_clip), w_(mask.size()), g_(mask.size()),
        buf_(mask.size(), 0.0f) {}

  void step(float lr) override {
    const size_t P = mask_.size();
    m_.backend().download(g_.data(), m_.grads(), P);
    m_.store_params(w_.data());
    double norm2 = 0;
    for (size_t i = 0; i < P; ++i)
      if (mask_[i]) norm2 += static_cast<double>(g_[i]) * g_[i];
    const double norm = std::sqrt(norm2);
    const double clip = (clip_ > 0 && norm > clip_) ? clip_ / (norm + 1e-6) : 1.0;
    for (size_t i = 0; i < P; ++i) {
      if (!mask_[i]) continue;
      const float gi = static_cast<float>(g_[i] * clip);
      buf_[i] = have_buf_ ? static_cast<float>(momentum_) * buf_[i] + gi : gi;
      w_[i] -= lr * buf_[i];
    }
    have_buf_ = true;
    m_.load_params(w_.data());
  }

 private:
  model::Model<float>& m_;
  std::vector<uint8_t> mask_;
  double momentum_, clip_;
  std::vector<float> w_, g_, buf_;
  bool have_buf_ = false;
};

#ifdef PTOOL_HAVE_CUDA
class DeviceTttSgd final : public TttSgd {
 public:
  DeviceTttSgd(model::Model<float>& m, const std::vector<uint8_t>& mask, double momentum, double grad_clip)
      : m_(m), sgd_(m.backend(), mask), momentum_(static_cast<float>(momentum)), clip_(grad_clip) {}
  void step(float lr) override { sgd_.step(m_.params(), m_.grads(), lr, momentum_, clip_); }

 private:
  model::Model<float>& m_;
  CudaMaskedSgd sgd_;
  float momentum_;
  double clip_;
};
#endif

}  // namespace

std::unique_ptr<TttSgd> make_ttt_sgd(model::Model<float>& m, const std::vector<uint8_t>& mask, double momentum,
                                     double grad_clip) {
#ifdef PTOOL_HAVE_CUDA
  if (is_cuda_backend(m.backend())) return std::make_unique<DeviceTttSgd>(m, mask, momentum, grad_clip);
#endif
  return std::make_unique<HostTttSgd>(m, mask, momentum, grad_clip);
}

}  // namespace ptool::eval
