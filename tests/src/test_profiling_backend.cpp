// ProfilingBackend: it forwards every op unchanged, counts each call once with its traffic estimate, treats a
// region as one op, and survives an op that throws.
#include <catch2/catch.hpp>

#include <random>
#include <stdexcept>
#include <vector>

#include "src/model/config.h"
#include "src/model/layout.h"
#include "src/model/model.h"
#include "src/ops/profiling_backend.h"

using namespace ptool;

namespace {

model::ModelConfig small_config() {
  model::ModelConfig c;
  c.vocab_size = 13;
  c.d_model = 8;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.physical_blocks = 3;
  c.schedule = {0, 1, 2, 1};  // block 1 twice: 4 virtual layers, a U-Net skip
  c.train_seq_len = 6;
  return c;
}

struct Batch {
  std::vector<int32_t> x, y;
};
Batch random_batch(int64_t n, int64_t vocab) {
  std::mt19937 rng(11);
  Batch b{std::vector<int32_t>(n), std::vector<int32_t>(n)};
  for (auto* v : {&b.x, &b.y})
    for (auto& t : *v) t = static_cast<int32_t>(rng() % vocab);
  return b;
}

// Loss and gradients of one forward+backward of the model on `be`, from the same weights.
std::pair<double, std::vector<float>> loss_and_grads(const model::ModelConfig& c, Backend<float>& be,
                                                     const Batch& b, int64_t B, int64_t Tn) {
  model::Model<float> m(c, be);
  std::vector<float> p(m.param_count());
  model::init_params(c, m.layout(), 5, p.data());
  m.load_params(p.data());
  m.zero_grads();
  const double loss = m.forward_backward(b.x.data(), b.y.data(), B, Tn, 0.1f);
  std::vector<float> g(m.param_count());
  be.download(g.data(), m.grads(), g.size());
  return {loss, g};
}

}  // namespace

TEST_CASE("a model on a ProfilingBackend computes what it computes on the backend under it, bit for bit",
          "[profile]") {
  const auto c = small_config();
  const int64_t B = 2, Tn = 6;
  const Batch b = random_batch(B * Tn, c.vocab_size);
  auto cpu = make_cpu_backend<float>();
  const auto want = loss_and_grads(c, *cpu, b, B, Tn);
  ProfilingBackend<float> prof(*cpu, make_wall_clock_timer());
  const auto got = loss_and_grads(c, prof, b, B, Tn);
  CHECK(got.first == want.first);
  CHECK(got.second == want.second);
  CHECK(&prof.underlying() == cpu.get());
  CHECK(std::string(prof.name()) == cpu->name());
}

TEST_CASE("the profile counts every op call once, with its traffic and FLOPs", "[profile]") {
  const auto c = small_config();
  const int64_t B = 2, Tn = 6, N = B * Tn, D = c.d_model, L = c.virtual_layers();
  const Batch b = random_batch(N, c.vocab_size);
  auto cpu = make_cpu_backend<float>();
  ProfilingBackend<float> prof(*cpu, make_wall_clock_timer());
  model::Model<float> m(c, prof);
  prof.reset();
  m.forward(b.x.data(), b.y.data(), B, Tn);
  const OpProfile& p = prof.profile();
  REQUIRE(p.count("linear_forward_shared") == 1);
  CHECK(p.at("linear_forward_shared").calls == L);  // q, k, v of each virtual layer in one call
  // each layer's q/k/v: x read once, 3 weights, 3 outputs; 2 N D (D + 2 kv) FLOPs
  const double kv = static_cast<double>(c.kv_dim());
  CHECK(p.at("linear_forward_shared").flops == L * 2.0 * N * D * (D + 2 * kv));
  CHECK(p.at("linear_forward_shared").bytes == L * 4.0 * (N * D + (D + 2 * kv) * D + N * (D + 2 * kv)));
  CHECK(p.at("attention_forward").calls == L);
  CHECK(p.count("rmsnorm_forward") == 0);
  CHECK(p.at("embedding_rmsnorm_forward").calls == 1);  // x0; a forward-only pass does not write the rows out
  CHECK(p.at("embedding_rmsnorm_forward").bytes == 4.0 * (2 * N * D + N) + 4.0 * N);  // + the token ids
  CHECK(p.at("resid_mix_rmsnorm_forward").calls == 1);  // the first layer's entry
  CHECK(p.at("layer_entry_forward").calls == L - 1);    // each later entry, with the residual add before it
  CHECK(p.count("scaled_residual_forward") == 0);
  CHECK(p.at("scaled_residual_rmsnorm_forward").calls == L + 1);  // each MLP pre-norm, and the final norm
  CHECK(p.at("softcap_cross_entropy").calls == 1);
  CHECK(p.count("linear_backward_set_dx") == 0);  // forward only
  double total = 0;
  for (const auto& [op, s] : p) {
    CHECK(s.ms >= 0.0);
    total += s.ms;
  }
  CHECK(total > 0.0);
  const std::string table = format_profile(p);
  CHECK(table.find("linear_forward_shared") != std::string::npos);
  CHECK(table.find("total") != std::string::npos);
  prof.reset();
  CHECK(prof.profile().empty());
}

// On a backend that folds neither preparation's backward into attention's (the CPU), the joined op is counted as
// the ops it composes: attention_backward_set, then q's and k's preparation backwards with their fp32 dq and dk
// round trips, with and without QK-norm (k's rotated gradient then copied into its columns).
TEST_CASE("attention_prep_backward_set counts the traffic of the ops it composes", "[profile]") {
  const int64_t B = 2, Tn = 5, H = 4, Hkv = 2, hd = 8, N = B * Tn, D = H * hd, KV = Hkv * hd, W = D + 2 * KV;
  auto cpu = make_cpu_backend<float>();
  CHECK(!cpu->prep_backward_folds(hd).q);
  CHECK(!cpu->prep_backward_folds(hd).k);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const auto vec = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = u(rng);
    return v;
  };
  std::vector<float> q = vec(N * D), k = vec(N * KV), v = vec(N * KV), out = vec(N * D), lse = vec(N * H),
                     dout = vec(N * D), rq = vec(N * D), rk = vec(N * KV), rs_q = vec(N * H), rs_k = vec(N * Hkv),
                     gain = vec(H), dgain(H), dq(N * D), dk(N * KV), all(N * W);
  using Slice = Backend<float>::ColumnSlice;
  for (const bool norm : {true, false}) {
    ProfilingBackend<float> joined(*cpu, make_wall_clock_timer()), parts(*cpu, make_wall_clock_timer());
    joined.attention_prep_backward_set(dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), B, Tn, H,
                                       Hkv, hd, hd, 10000.0, norm, 1e-6f, gain.data(), dgain.data(),
                                       {rq.data(), rs_q.data(), Slice(all.data(), W, 0)},
                                       {rk.data(), rs_k.data(), Slice(all.data(), W, D)},
                                       Slice(all.data(), W, D + KV), dq.data(), dk.data());
    parts.attention_backward_set(dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), B, Tn, H, Hkv, hd,
                                 dq.data(), dk.data(), Slice(all.data(), W, D + KV));
    parts.qk_prep_backward_gain(dq.data(), gain.data(), dgain.data(), rq.data(), rs_q.data(), B, Tn, H, hd, hd,
                                10000.0, norm, 1e-6f, Slice(all.data(), W, 0));
    parts.qk_prep_backward(dk.data(), rk.data(), rs_k.data(), B, Tn, Hkv, hd, hd, 10000.0, norm,
                           Slice(all.data(), W, D));
    if (!norm) parts.copy_columns(dk.data(), N, KV, Slice(all.data(), W, D));
    double sum = 0.0, flops = 0.0;
    for (const auto& [op, st] : parts.profile()) {
      sum += st.bytes;
      flops += st.flops;
    }
    INFO("norm " << norm);
    REQUIRE(joined.profile().count("attention_prep_backward_set") == 1);
    CHECK(joined.profile().at("attention_prep_backward_set").bytes == sum);
    CHECK(joined.profile().at("attention_prep_backward_set").flops == flops);
  }
}

TEST_CASE("a profiled region is one op: the backend ops it calls are not counted on their own", "[profile]") {
  auto cpu = make_cpu_backend<float>();
  ProfilingBackend<float> prof(*cpu, make_wall_clock_timer());
  DeviceBuffer<float> buf(prof, 64);
  prof.reset();
  prof.time_region("optimizer step", [&] {
    prof.zero(buf.get(), 64);
    prof.scale(buf.get(), 2.f, 64);
  });
  prof.zero(buf.get(), 64);
  const OpProfile& p = prof.profile();
  CHECK(p.at("optimizer step").calls == 1);
  CHECK(p.at("zero").calls == 1);
  CHECK(p.count("scale") == 0);
}

TEST_CASE("an op that throws is still timed, and the profiler goes on", "[profile]") {
  auto cpu = make_cpu_backend<float>();
  ProfilingBackend<float> prof(*cpu, make_wall_clock_timer());
  const int64_t N = 2, V = 5;
  DeviceBuffer<float> z(prof, N * V);
  const std::vector<int32_t> bad = {1, 7};  // 7 is outside the vocabulary
  int32_t* t = prof.alloc_index(2);
  prof.upload_index(t, bad.data(), 2);
  prof.zero(z.get(), N * V);
  CHECK_THROWS_AS(prof.softcap_cross_entropy(z.get(), t, N, V, 0.f, nullptr, nullptr, 1.f), std::out_of_range);
  prof.zero(z.get(), N * V);
  const OpProfile& p = prof.profile();
  CHECK(p.at("softcap_cross_entropy").calls == 1);
  CHECK(p.at("zero").calls == 2);
  prof.release_index(t);
}

TEST_CASE("the wall-clock timer refuses spans that do not alternate", "[profile]") {
  auto timer = make_wall_clock_timer();
  CHECK_THROWS_AS(timer->stop(), std::logic_error);
  timer->start();
  CHECK_THROWS_AS(timer->start(), std::logic_error);
  CHECK_THROWS_AS(timer->take_ms(), std::logic_error);
  timer->stop();
  const auto ms = timer->take_ms();
  REQUIRE(ms.size() == 1);
  CHECK(ms[0] >= 0.0);
  CHECK(timer->take_ms().empty());
}

namespace {
// The wall clock, but stop() fails once when armed (a device error while closing a span).
class FlakyTimer final : public OpTimer {
 public:
  bool fail_next_stop = false;
  void start() override { t_->start(); }
  void stop() override {
    if (fail_next_stop) {
      fail_next_stop = false;
      throw std::runtime_error("timer failure");
    }
    t_->stop();
  }
  std::vector<double> take_ms() override { return t_->take_ms(); }
  void abandon() override { t_->abandon(); }

 private:
  std::unique_ptr<OpTimer> t_ = make_wall_clock_timer();
};
}  // namespace

TEST_CASE("a timer that fails to close a span costs that pass's timings, not the profiler", "[profile]") {
  auto cpu = make_cpu_backend<float>();
  auto timer = std::make_unique<FlakyTimer>();
  FlakyTimer* flaky = timer.get();
  ProfilingBackend<float> prof(*cpu, std::move(timer));
  DeviceBuffer<float> buf(prof, 16);
  prof.zero(buf.get(), 16);
  flaky->fail_next_stop = true;
  CHECK_THROWS_WITH(prof.scale(buf.get(), 2.f, 16), "timer failure");  // the op ran; its span could not close
  prof.zero(buf.get(), 16);
  prof.add(buf.get(), buf.get(), 16);
  const OpProfile& p = prof.profile();  // spans and ops still pair up
  CHECK(p.at("zero").calls == 1);       // the first zero was dropped with the failed span
  CHECK(p.at("add").calls == 1);
  CHECK(p.count("scale") == 0);
}
