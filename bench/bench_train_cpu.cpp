// Training throughput of the CPU path: forward + backward + Muon/Adam step, tokens per second.
//   bench_train_cpu --preset tiny --batch-tokens 4096 --steps 5 [--json]
#include <chrono>
#include <cstdio>
#include <random>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "src/model/model.h"
#include "src/train/adam.h"
#include "src/train/muon.h"
#include "src/train/param_store.h"
#include "src/train/trainer.h"

using namespace ptool;

int main(int argc, char** argv) {
  CLI::App app{"CPU training throughput"};
  std::string preset = "tiny";
  int64_t batch_tokens = 4096, steps = 5, seq_len = 0;
  bool json = false;
  app.add_option("--preset", preset)->capture_default_str();
  app.add_option("--batch-tokens", batch_tokens)->capture_default_str();
  app.add_option("--seq-len", seq_len, "0: the preset's train_seq_len")->capture_default_str();
  app.add_option("--steps", steps, "timed steps (after one warm-up step)")->capture_default_str();
  app.add_flag("--json", json);
  CLI11_PARSE(app, argc, argv);

  auto cfg = model::preset(preset);
  const int64_t T = seq_len > 0 ? seq_len : cfg.train_seq_len;
  const int64_t B = batch_tokens / T;
  auto be = make_cpu_backend<float>();
  model::Model<float> m(cfg, *be);
  train::ParamStore params = train::make_param_store(m.layout());
  model::init_params(cfg, m.layout(), 1, params.data());
  m.load_params(params.data());
  auto grads = params.zeros_like();
  train::Muon muon(params);
  train::Adam adam(params);
  std::mt19937 rng(3);
  std::vector<int32_t> x(B * T), y(B * T);
  for (auto& v : x) v = static_cast<int32_t>(rng() % cfg.vocab_size);
  for (auto& v : y) v = static_cast<int32_t>(rng() % cfg.vocab_size);

  double fb_ms = 0, opt_ms = 0;
  for (int64_t s = 0; s <= steps; ++s) {
    auto t0 = std::chrono::steady_clock::now();
    m.zero_grads();
    m.forward_backward(x.data(), y.data(), B, T, 1.0f / static_cast<float>(B * T));
    auto t1 = std::chrono::steady_clock::now();
    be->download(grads.data(), m.grads(), grads.size());
    train::MuonConfig mc;
    muon.step(params, grads, mc);
    adam.step(params, grads, train::AdamConfig{});
    m.load_params(params.data());
    auto t2 = std::chrono::steady_clock::now();
    if (s == 0) continue;  // warm-up
    fb_ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
    opt_ms += std::chrono::duration<double, std::milli>(t2 - t1).count();
  }
  const double step_ms = (fb_ms + opt_ms) / steps;
  const double tok_s = static_cast<double>(B * T) / (step_ms / 1000.0);
  if (json) {
    nlohmann::json j = {{"preset", preset},           {"params", m.param_count()}, {"batch_tokens", B * T},
                        {"seq_len", T},               {"step_ms", step_ms},        {"forward_backward_ms", fb_ms / steps},
                        {"optimizer_ms", opt_ms / steps}, {"tokens_per_s", tok_s}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("preset %s params %lld batch %lld x %lld: step %.1f ms (fwd+bwd %.1f, optimizer %.1f) -> %.0f tokens/s\n",
                preset.c_str(), static_cast<long long>(m.param_count()), static_cast<long long>(B),
                static_cast<long long>(T), step_ms, fb_ms / steps, opt_ms / steps, tok_s);
  }
}
