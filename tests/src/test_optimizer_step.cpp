// The trainer's optimizer step (src/train/optimizer_step.h) on the CPU backend: the host implementation is the
// sequence clip, Muon, Adam, EMA, SWA done by hand, bit for bit; QAT weights are the quantizer's fake-quant.
#include <catch2/catch.hpp>

#include <cstring>
#include <random>
#include <vector>

#include "formats/error.h"
#include "src/model/layout.h"
#include "src/model/model.h"
#include "src/quant/rtn.h"
#include "src/train/optimizer_step.h"
#include "src/train/trainer.h"
#include "tests/src/test_train_corpus.h"

using namespace ptool;
using namespace ptool::train;

namespace {

std::vector<float> random_vec(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

StepSettings settings(double lr_mul) {
  StepSettings s;
  s.muon.lr = 0.04 * lr_mul;
  s.muon.momentum = 0.9;
  s.muon.weight_decay = 0.01;
  s.adam.group(Group::adam_embed) = {true, 0.05 * lr_mul, 0.0};
  s.adam.group(Group::adam_head) = {true, 0.008 * lr_mul, 0.0};
  s.adam.group(Group::adam_scalar) = {true, 0.04 * lr_mul, 0.02};
  s.grad_clip = 0.05;
  s.ema_decay = 0.9;
  s.swa_take = true;
  return s;
}

}  // namespace

TEST_CASE("host optimizer step is clip, Muon, Adam, EMA and SWA in that order", "[train]") {
  const auto cfg = ptool_test::micro();
  auto be = make_cpu_backend<float>();
  model::Model<float> m(cfg, *be);
  OptimizerState st(make_param_store(m.layout()), true, 1, 2.0);
  model::init_params(cfg, m.layout(), 7, st.params.data());
  std::copy(st.params.data(), st.params.data() + st.params.size(), st.ema.begin());

  // The same sequence by hand on copies.
  ParamStore p = st.params.zeros_like();
  p.copy_from(st.params);
  Muon muon(p);
  Adam adam(p);
  std::vector<float> ema = st.ema;
  Swa swa(p.size(), 1, 2.0);

  const auto step = make_optimizer_step(m, st);
  for (int k = 0; k < 3; ++k) {
    const auto g = random_vec(p.size(), 100 + k, 0.01f);
    be->upload(m.grads(), g.data(), g.size());
    const StepSettings s = settings(1.0 - 0.25 * k);
    step->step(s);

    ParamStore grads = p.zeros_like();
    std::copy(g.begin(), g.end(), grads.data());
    clip_grad_norm(grads.flat(), s.grad_clip);
    muon.step(p, grads, s.muon);
    adam.step(p, grads, s.adam);
    ema_update(ema, p.flat(), s.ema_decay);
    swa.accumulate(p.flat());
  }
  step->sync_to_host();
  CHECK(std::memcmp(st.params.data(), p.data(), p.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(st.muon.momentum().data(), muon.momentum().data(), p.size() * sizeof(float)) == 0);
  CHECK(st.adam.step_count() == 3);
  CHECK(st.ema == ema);
  CHECK(st.swa.count() == 3);
  CHECK(std::equal(st.swa.sum().begin(), st.swa.sum().end(), swa.sum().begin()));
  std::vector<float> on_model(p.size());
  m.store_params(on_model.data());
  CHECK(std::memcmp(on_model.data(), p.data(), p.size() * sizeof(float)) == 0);
}

TEST_CASE("host QAT weights fake-quantize exactly the Muon matrices", "[train][qat]") {
  const auto cfg = ptool_test::micro();
  auto be = make_cpu_backend<float>();
  model::Model<float> m(cfg, *be);
  OptimizerState st(make_param_store(m.layout()), false, 0, 0.5);
  model::init_params(cfg, m.layout(), 3, st.params.data());
  const auto step = make_optimizer_step(m, st);
  const float* q = step->fake_quantized_weights(6);  // CPU backend memory is host memory
  size_t quantized = 0;
  for (const Slice& s : st.params.slices()) {
    std::vector<float> want(st.params.data() + s.offset, st.params.data() + s.offset + s.numel);
    if (s.group == Group::muon) {
      quant::fake_quantize_rows(want.data(), s.rows() * s.batch(), s.cols(), 6, want.data());
      ++quantized;
    }
    INFO(s.name);
    CHECK(std::memcmp(q + s.offset, want.data(), s.numel * sizeof(float)) == 0);
  }
  CHECK(quantized == st.muon.muon_slices().size());
  CHECK(quantized > 0);
}

TEST_CASE("SWA's due test is maybe_accumulate's", "[train]") {
  Swa swa(1, 3, 0.5);
  CHECK_FALSE(swa.due(3, 0.5));  // not below the start
  CHECK_FALSE(swa.due(4, 0.4));  // not a multiple of every
  CHECK(swa.due(6, 0.4));
  const float w = 1.f;
  CHECK(swa.maybe_accumulate(6, 0.4, {&w, 1}) == swa.due(6, 0.4));
}

#ifdef PTOOL_HAVE_CUDA
TEST_CASE("the device optimizer step refuses a CPU backend", "[train]") {
  const auto cfg = ptool_test::micro();
  auto be = make_cpu_backend<float>();
  model::Model<float> m(cfg, *be);
  OptimizerState st(make_param_store(m.layout()), false, 0, 0.5);
  CHECK_THROWS_AS(make_device_optimizer_step(m, st), Error);
}
#endif
