// ProfilingBackend over the CUDA backend, timed by CUDA events: the model's results do not change, the helpers
// that need the concrete backend (stream, memory) see through the wrapper, and the device optimizer runs inside a
// profiled region.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <vector>

#include "kernels/cuda_backend.h"
#include "src/model/config.h"
#include "src/model/layout.h"
#include "src/model/model.h"
#include "src/ops/profiling_backend.h"
#include "src/train/optimizer_step.h"
#include "src/train/trainer.h"
#include "tests/kernels/gpu_test_util.h"

using namespace ptool;

namespace {

struct Run {
  double loss;
  std::vector<float> grads, params_after_step;
};

// One forward+backward of the tiny preset, then one optimizer step, on `be`.
Run run_tiny(Backend<float>& be, std::function<void(const std::function<void()>&)> around_step) {
  const auto c = model::preset("tiny");
  model::Model<float> m(c, be);
  train::OptimizerState os(train::make_param_store(m.layout()), false, 0, 0.0);
  model::init_params(c, m.layout(), 3, os.params.data());
  auto opt = train::make_optimizer_step(m, os);
  const int64_t B = 2, Tn = 64;
  std::mt19937 rng(4);
  std::vector<int32_t> x(B * Tn), y(B * Tn);
  for (auto* v : {&x, &y})
    for (auto& t : *v) t = static_cast<int32_t>(rng() % c.vocab_size);
  m.zero_grads();
  Run r;
  r.loss = m.forward_backward(x.data(), y.data(), B, Tn, 1.f / (B * Tn));
  r.grads.resize(m.param_count());
  be.download(r.grads.data(), m.grads(), r.grads.size());
  train::StepSettings ss;
  around_step([&] { opt->step(ss); });
  r.params_after_step.resize(m.param_count());
  m.store_params(r.params_after_step.data());
  return r;
}

}  // namespace

TEST_CASE("cuda: a profiled CUDA backend gives the same results, timed by events", "[gpu]") {
  SKIP_WITHOUT_GPU();
  for (auto prec : {CudaGemmPrecision::tf32, CudaGemmPrecision::bf16}) {  // bf16: operand buffers via the wrapper
    INFO(gemm_precision_name(prec));
    CudaBackendOptions o;
    o.gemm = prec;
    auto direct = make_cuda_backend(o);
    const Run want = run_tiny(*direct, [](const std::function<void()>& f) { f(); });

    auto inner = make_cuda_backend(o);
    ProfilingBackend<float> prof(*inner, make_cuda_op_timer(*inner));
    CHECK(is_cuda_backend(prof));
    CHECK(cuda_stream_of(prof) == cuda_stream_of(*inner));
    const Run got = run_tiny(prof, [&](const std::function<void()>& f) { prof.time_region("optimizer step", f); });
    CHECK(got.loss == want.loss);
    CHECK(got.grads == want.grads);
    CHECK(got.params_after_step == want.params_after_step);

    const OpProfile& p = prof.profile();
    REQUIRE(p.count("optimizer step") == 1);
    CHECK(p.at("optimizer step").calls == 1);
    REQUIRE(p.count("attention_prep_backward_set") == 1);
    CHECK(p.at("attention_prep_backward_set").calls == model::preset("tiny").virtual_layers());
    double total = 0;
    for (const auto& [op, s] : p) {
      CHECK(s.ms >= 0.0);
      total += s.ms;
    }
    CHECK(total > 0.0);
    std::printf("%s", format_profile(p).c_str());
    CHECK(cuda_memory(prof).peak_bytes > 0);  // the helpers reach the backend under the wrapper
  }
}

// Traffic counts each tensor at the bytes it is stored in: 2 per element for the bf16 mode's operand and
// activation buffers, 4 for plain memory (a GEMM's y and x here).
TEST_CASE("cuda: a profile counts bf16 buffers at 2 bytes per element", "[gpu]") {
  SKIP_WITHOUT_GPU();
  CudaBackendOptions o;
  o.gemm = CudaGemmPrecision::bf16;
  auto inner = make_cuda_backend(o);
  ProfilingBackend<float> prof(*inner, make_cuda_op_timer(*inner));
  const int64_t N = 8, K = 16, M = 24;
  DeviceBuffer<float> x(prof, N * K), W(prof, M * K), y(prof, N * M), y_op(prof, N * M, Storage::operand),
      u(prof, N * M, Storage::activation);
  prof.zero(x.get(), N * K);
  prof.zero(W.get(), M * K);
  prof.linear_forward(x.get(), W.get(), N, K, M, y.get());
  CHECK(prof.element_bytes(y_op.get()) == 2);
  CHECK(prof.element_bytes(u.get()) == 2);
  CHECK(prof.element_bytes(y.get()) == 4);
  prof.reset();
  prof.linear_forward(x.get(), W.get(), N, K, M, y_op.get());
  CHECK(prof.profile().at("linear_forward").bytes == 4.0 * (N * K + M * K) + 2.0 * N * M);
  prof.reset();
  prof.activation_forward(cpu::Activation::relu2, u.get(), N * M, y.get());
  CHECK(prof.profile().at("activation_forward").bytes == 2.0 * N * M + 4.0 * N * M);
}

// The model puts its residual stream in activation buffers under embed_bf16 (bf16 in the bf16 mode, as the
// reference's stream has its bf16 embedding's dtype): the stream's ops move 2 bytes per element of it, the others
// are unchanged, and the loss stays within bf16 noise of the fp32 stream's.
TEST_CASE("cuda: under embed_bf16 the bf16 mode keeps the model's residual stream in bf16", "[gpu]") {
  SKIP_WITHOUT_GPU();
  CudaBackendOptions o;
  o.gemm = CudaGemmPrecision::bf16;
  const int64_t B = 2, Tn = 64, N = B * Tn;
  std::map<bool, OpProfile> prof;
  std::map<bool, double> loss;
  for (const bool bf16_stream : {false, true}) {
    auto inner = make_cuda_backend(o);
    ProfilingBackend<float> be(*inner, make_cuda_op_timer(*inner));
    auto c = model::preset("tiny");
    c.embed_bf16 = bf16_stream;
    model::Model<float> m(c, be);
    std::vector<float> p(static_cast<size_t>(m.param_count()));
    model::init_params(c, m.layout(), 3, p.data());
    m.load_params(p.data());
    std::mt19937 rng(4);
    std::vector<int32_t> x(N), y(N);
    for (auto* v : {&x, &y})
      for (auto& t : *v) t = static_cast<int32_t>(rng() % c.vocab_size);
    loss[bf16_stream] = m.forward_backward(x.data(), y.data(), B, Tn, 1.f / N);
    prof[bf16_stream] = be.profile();
  }
  const double D = model::preset("tiny").d_model;
  // Per call: x read and y written (the norm's h and rstd, o: as before).
  const OpStats &f32 = prof[false].at("scaled_residual_rmsnorm_forward"), &b16 = prof[true].at(
                                                                                 "scaled_residual_rmsnorm_forward");
  CHECK(f32.calls == b16.calls);
  CHECK(f32.bytes - b16.bytes == f32.calls * 2.0 * 2.0 * N * D);
  for (const char* op : {"layer_entry_forward", "rmsnorm_resid_mix_backward", "rmsnorm_channel_scale_backward",
                         "rmsnorm_backward_set"}) {
    INFO(op);
    CHECK(prof[true].at(op).bytes < prof[false].at(op).bytes);
  }
  for (const char* op : {"linear_forward", "activation_forward", "attention_forward"}) {
    INFO(op);
    CHECK(prof[true].at(op).bytes == prof[false].at(op).bytes);
  }
  CHECK(loss[true] != loss[false]);
  CHECK(std::abs(loss[true] - loss[false]) < 1e-2 * std::abs(loss[false]));
}

