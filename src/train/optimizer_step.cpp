#include "src/train/optimizer_step.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "src/quant/rtn.h"

namespace ptool::train {

OptimizerState::OptimizerState(ParamStore p, bool ema_on, int64_t swa_every, double swa_start)
    : params(std::move(p)),
      muon(params),
      adam(params),
      ema(ema_on ? params.size() : 0),
      swa(params.size(), std::max<int64_t>(swa_every, 1), swa_start) {}

namespace {

// Today's reference path: everything on the host, the weights uploaded after every step.
class HostOptimizerStep final : public OptimizerStep {
 public:
  HostOptimizerStep(model::Model<float>& m, OptimizerState& st) : m_(m), st_(st), grads_(st.params.zeros_like()) {
    m_.load_params(st_.params.data());
  }

  const float* fake_quantized_weights(int bits) override {
    const ParamStore& p = st_.params;
    qat_.assign(p.data(), p.data() + p.size());
    for (size_t i : st_.muon.muon_slices()) {
      const Slice& s = p.slices()[i];
      quant::fake_quantize_rows(p.data() + s.offset, s.rows() * s.batch(), s.cols(), bits, qat_.data() + s.offset);
    }
    if (qat_dev_.size() != qat_.size()) qat_dev_ = DeviceBuffer<float>(m_.backend(), qat_.size());
    m_.backend().upload(qat_dev_.get(), qat_.data(), qat_.size());
    return qat_dev_.get();
  }

  void step(const StepSettings& s) override {
    m_.backend().download(grads_.data(), m_.grads(), grads_.size());
    if (s.grad_clip > 0) clip_grad_norm(grads_.flat(), s.grad_clip);
    st_.muon.step(st_.params, grads_, s.muon);
    st_.adam.step(st_.params, grads_, s.adam);
    m_.load_params(st_.params.data());
    if (!st_.ema.empty()) ema_update(st_.ema, st_.params.flat(), s.ema_decay);
    if (s.swa_take) st_.swa.accumulate(st_.params.flat());
  }

  void sync_to_host() override {}

 private:
  model::Model<float>& m_;
  OptimizerState& st_;
  ParamStore grads_;
  std::vector<float> qat_;
  DeviceBuffer<float> qat_dev_;
};

}  // namespace

std::unique_ptr<OptimizerStep> make_host_optimizer_step(model::Model<float>& m, OptimizerState& state) {
  return std::make_unique<HostOptimizerStep>(m, state);
}

std::unique_ptr<OptimizerStep> make_optimizer_step(model::Model<float>& m, OptimizerState& state) {
#ifdef PTOOL_HAVE_CUDA
  if (std::strcmp(m.backend().name(), "cuda") == 0) return make_device_optimizer_step(m, state);
#endif
  return make_host_optimizer_step(m, state);
}

}  // namespace ptool::train
