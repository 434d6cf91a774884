// The device implementation of OptimizerStep (optimizer_step.h): maps MuonConfig / AdamConfig onto
// kernels/cuda_optim.h and keeps every optimizer buffer on the GPU.
#ifdef PTOOL_HAVE_CUDA
#include <algorithm>
#include <cstring>

#include "formats/error.h"
#include "kernels/cuda_optim.h"
#include "src/train/optimizer_step.h"

namespace ptool::train {

namespace {

std::vector<CudaMuonMatrix> muon_matrices(const OptimizerState& st) {
  std::vector<CudaMuonMatrix> out;
  for (size_t i : st.muon.muon_slices()) {
    const Slice& s = st.params.slices()[i];
    out.push_back({s.offset, s.batch(), s.rows(), s.cols(), static_cast<float>(muon_shape_scale(s.rows(), s.cols()))});
  }
  return out;
}

std::vector<CudaAdamSegment> adam_segments(const ParamStore& p) {
  std::vector<CudaAdamSegment> out;
  for (const Slice& s : p.slices())
    if (s.numel > 0 && s.group != Group::muon && s.group != Group::frozen)
      out.push_back({s.offset, s.numel, static_cast<int>(s.group)});
  return out;
}

// muon_update's per-step constants, rounded to float as it rounds them.
CudaMuonStep muon_step_of(const MuonConfig& c) {
  CudaMuonStep s;
  s.lr = static_cast<float>(c.lr);
  s.momentum = static_cast<float>(c.momentum);
  s.decay = static_cast<float>(1.0 - c.lr * c.weight_decay);
  s.apply_decay = c.weight_decay != 0.0;
  s.nesterov = c.nesterov;
  s.row_normalize = c.row_normalize;
  if (c.ns.steps > 0 && c.ns.coeffs.empty()) throw Error("newton_schulz: no coefficients");
  for (int k = 0; k < c.ns.steps; ++k) {
    const NsCoeffs& co = c.ns.coeffs[std::min(static_cast<size_t>(k), c.ns.coeffs.size() - 1)];
    s.coeffs.push_back({static_cast<float>(co.a), static_cast<float>(co.b), static_cast<float>(co.c)});
  }
  s.eps = c.ns.eps;
  s.bf16 = c.bf16;
  return s;
}

CudaAdamStep adam_step_of(const AdamConfig& c, int64_t t) {
  static_assert(kNumGroups <= kCudaAdamGroups);
  CudaAdamStep s;
  for (int g = 0; g < kNumGroups; ++g) {
    const AdamGroup& gr = c.groups[static_cast<size_t>(g)];
    if (!gr.enabled) continue;
    const AdamStepConsts k = adam_step_consts(t, gr, c);
    s.b1 = k.b1, s.b2 = k.b2, s.omb1 = k.omb1, s.omb2 = k.omb2, s.eps = k.eps, s.bc2_sqrt = k.bc2_sqrt;
    s.groups[static_cast<size_t>(g)] = {true, k.step_size, k.decay, k.wd, k.decoupled, k.coupled, k.bf16};
  }
  return s;
}

class DeviceOptimizerStep final : public OptimizerStep {
 public:
  DeviceOptimizerStep(model::Model<float>& m, OptimizerState& st)
      : m_(m),
        be_(m.backend()),
        st_(st),
        n_(st.params.size()),
        momentum_(be_, n_),
        adam_m_(be_, n_),
        adam_v_(be_, n_),
        muon_(be_, muon_matrices(st)),
        adam_(be_, adam_segments(st.params)),
        clip_(be_, n_) {
    if (static_cast<int64_t>(n_) != m.param_count()) throw Error("internal: optimizer state and model differ in size");
    m_.load_params(st_.params.data());
    be_.upload(momentum_.get(), st_.muon.momentum().data(), n_);
    be_.upload(adam_m_.get(), st_.adam.exp_avg().data(), n_);
    be_.upload(adam_v_.get(), st_.adam.exp_avg_sq().data(), n_);
    if (!st_.ema.empty()) {
      ema_ = DeviceBuffer<float>(be_, n_);
      be_.upload(ema_.get(), st_.ema.data(), n_);
    }
    swa_count_ = st_.swa.count();
    if (swa_count_ > 0) {
      swa_ = DeviceBuffer<float>(be_, n_);
      be_.upload(swa_.get(), st_.swa.sum().data(), n_);
    }
  }

  const float* fake_quantized_weights(int bits) override {
    if (qat_.size() != n_) qat_ = DeviceBuffer<float>(be_, n_);
    be_.copy(qat_.get(), m_.params(), n_);
    for (size_t i : st_.muon.muon_slices()) {
      const Slice& s = st_.params.slices()[i];
      cuda_fake_quantize_rows(be_, m_.params() + s.offset, s.rows() * s.batch(), s.cols(), bits, qat_.get() + s.offset);
    }
    return qat_.get();
  }

  void step(const StepSettings& s) override {
    float* w = m_.params();
    float* g = m_.grads();
    if (s.grad_clip > 0) clip_.clip(g, s.grad_clip);
    muon_.step(w, g, momentum_.get(), muon_step_of(s.muon));
    const int64_t t = st_.adam.step_count() + 1;
    st_.adam.set_step_count(t);
    adam_.step(w, g, adam_m_.get(), adam_v_.get(), adam_step_of(s.adam, t));
    if (ema_.size())
      cuda_ema_update(be_, ema_.get(), w, n_, static_cast<float>(s.ema_decay), static_cast<float>(1.0 - s.ema_decay));
    if (s.swa_take) {
      if (!swa_.size()) swa_ = DeviceBuffer<float>(be_, n_);
      cuda_swa_accumulate(be_, swa_.get(), w, n_, swa_count_ == 0);
      ++swa_count_;
    }
  }

  void sync_to_host() override {
    m_.store_params(st_.params.data());
    be_.download(st_.muon.momentum().data(), momentum_.get(), n_);
    be_.download(st_.adam.exp_avg().data(), adam_m_.get(), n_);
    be_.download(st_.adam.exp_avg_sq().data(), adam_v_.get(), n_);
    if (ema_.size()) be_.download(st_.ema.data(), ema_.get(), n_);
    if (swa_count_ > 0) {
      std::vector<float> sum(n_);
      be_.download(sum.data(), swa_.get(), n_);
      st_.swa.restore(sum, swa_count_);
    }
  }

 private:
  model::Model<float>& m_;
  Backend<float>& be_;
  OptimizerState& st_;
  size_t n_;
  DeviceBuffer<float> momentum_, adam_m_, adam_v_, ema_, swa_, qat_;
  int64_t swa_count_ = 0;
  CudaMuon muon_;
  CudaAdam adam_;
  CudaGradClip clip_;
};

}  // namespace

std::unique_ptr<OptimizerStep> make_device_optimizer_step(model::Model<float>& m, OptimizerState& state) {
  if (std::strcmp(m.backend().name(), "cuda") != 0)
    throw Error(std::string("the device optimizer step needs a CUDA backend, not ") + m.backend().name());
  return std::make_unique<DeviceOptimizerStep>(m, state);
}

}  // namespace ptool::train
#endif
