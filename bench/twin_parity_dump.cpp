// ptool's side of the numeric cross-check with the PyTorch twin (bench/twin_parity.py, bench/TWIN.md): a few
// fp32 training steps of a small model on the CPU backend, written out so that the twin can run the same steps
// from the same weights on the same tokens and compare.
//   twin_parity_dump --config model.json --batch 2 --seq 24 --steps 3 --out DIR
// The matrices (the blocks' and an untied head) get N(0, --perturb) noise on top of their initialisation, so that
// the first gradient reaches every tensor (the output projections and the head start at zero). DIR gets:
// config.json (ptool's full config), layout.json (every tensor's name, shape, offset), tokens.i32 (steps x batch x
// (seq + 1) int32), weights0.f32 (the initial weights, layout order), grads0.f32 (the gradient of the first
// batch's mean loss at those weights), weights_final.f32, and result.json (each step's mean loss and the optimizer
// settings used: Muon in fp32 with a fixed momentum, Adam, no warmdown, no clipping).
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "src/model/config.h"
#include "src/model/layout.h"
#include "src/model/model.h"
#include "src/train/optimizer_step.h"
#include "src/train/rng.h"
#include "src/train/trainer.h"

using namespace ptool;

namespace {

struct Args {
  std::string config_file, out;
  int64_t batch = 2, seq = 24, steps = 3;
  uint64_t seed = 1;
  double perturb = 0.02;
};

void write_floats(const std::string& path, const float* p, size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(p), static_cast<std::streamsize>(n * sizeof(float)));
  if (!f) throw Error("cannot write " + path);
}

void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream f(path);
  f << j.dump(1) << "\n";
  if (!f) throw Error("cannot write " + path);
}

void run(const Args& a) {
  std::ifstream cf(a.config_file);
  if (!cf) throw Error("cannot open " + a.config_file);
  const model::ModelConfig cfg = model::config_from_json(nlohmann::json::parse(cf));
  if (a.batch < 1 || a.seq < 1 || a.steps < 1) throw Error("--batch, --seq and --steps must be positive");
  auto be = make_cpu_backend<float>();
  model::Model<float> m(cfg, *be);
  train::OptimizerState os(train::make_param_store(m.layout()), false, 0, 1.0);
  model::init_params(cfg, m.layout(), a.seed, os.params.data());
  // Zero-initialised matrices would leave the first gradient of everything before them zero.
  train::Rng noise(a.seed, 3);
  for (const auto& sl : os.params.slices())
    if (sl.group == train::Group::muon || sl.group == train::Group::adam_head)
      for (size_t i = sl.offset; i < sl.offset + sl.numel; ++i)
        os.params.data()[i] += static_cast<float>(a.perturb * noise.normal());
  const std::vector<float> w0(os.params.data(), os.params.data() + os.params.size());
  const auto step = train::make_host_optimizer_step(m, os);

  // Tokens: uniform ids from ptool's own RNG, one batch per step.
  const int64_t per_step = a.batch * (a.seq + 1);
  std::vector<int32_t> tokens(static_cast<size_t>(a.steps * per_step));
  train::Rng rng(a.seed, 7);
  for (auto& t : tokens) t = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(cfg.vocab_size));

  // What ptool train does with its defaults, with three simplifications the twin mirrors: Muon in fp32 (no bf16
  // Newton-Schulz or update buffer), momentum fixed at its final value, and the lr multiplier fixed at 1.
  train::StepSettings ss;
  ss.muon.lr = 0.04;
  ss.muon.momentum = 0.95;
  ss.muon.ns = train::NsConfig::quintic(5);
  ss.adam.group(train::Group::adam_embed) = {true, cfg.tie_embeddings ? 0.05 : 0.6, 0.0, cfg.embed_bf16};
  ss.adam.group(train::Group::adam_head) = {true, 0.008, 0.0};
  ss.adam.group(train::Group::adam_scalar) = {true, 0.04, 0.0};

  nlohmann::json losses = nlohmann::json::array();
  std::vector<int32_t> x(static_cast<size_t>(a.batch * a.seq)), y(x.size());
  for (int64_t s = 0; s < a.steps; ++s) {
    for (int64_t b = 0; b < a.batch; ++b)
      for (int64_t t = 0; t < a.seq; ++t) {
        const int32_t* row = tokens.data() + s * per_step + b * (a.seq + 1);
        x[b * a.seq + t] = row[t];
        y[b * a.seq + t] = row[t + 1];
      }
    const auto n = static_cast<double>(a.batch * a.seq);
    m.zero_grads();
    losses.push_back(m.forward_backward(x.data(), y.data(), a.batch, a.seq, static_cast<float>(1.0 / n)) / n);
    if (s == 0) {
      std::vector<float> g(static_cast<size_t>(m.param_count()));
      be->download(g.data(), m.grads(), g.size());
      write_floats(a.out + "/grads0.f32", g.data(), g.size());
    }
    step->step(ss);
  }

  nlohmann::json layout = nlohmann::json::array();
  for (const auto& spec : m.layout().specs)
    layout.push_back({{"name", spec.name}, {"shape", spec.shape}, {"offset", spec.offset}});
  write_json(a.out + "/config.json", model::config_to_json(cfg));
  write_json(a.out + "/layout.json", layout);
  std::ofstream tf(a.out + "/tokens.i32", std::ios::binary);
  tf.write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 4));
  if (!tf) throw Error("cannot write " + a.out + "/tokens.i32");
  write_floats(a.out + "/weights0.f32", w0.data(), w0.size());
  write_floats(a.out + "/weights_final.f32", os.params.data(), os.params.size());
  write_json(a.out + "/result.json",
             {{"batch", a.batch}, {"seq", a.seq}, {"steps", a.steps}, {"losses", losses},
              {"matrix_lr", ss.muon.lr}, {"muon_momentum", ss.muon.momentum}, {"ns_steps", 5},
              {"tied_embed_lr", 0.05}, {"embed_lr", 0.6}, {"head_lr", 0.008}, {"scalar_lr", 0.04},
              {"beta1", 0.9}, {"beta2", 0.95}, {"adam_eps", 1e-8}});
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"dump a few fp32 CPU training steps for bench/twin_parity.py"};
  app.add_option("--config", a.config_file, "model config JSON (ptool config prints one)")->required();
  app.add_option("--out", a.out, "existing folder for the dump")->required();
  app.add_option("--batch", a.batch, "sequences per step")->capture_default_str();
  app.add_option("--seq", a.seq, "sequence length")->capture_default_str();
  app.add_option("--steps", a.steps, "optimizer steps")->capture_default_str();
  app.add_option("--seed", a.seed, "initialisation and token seed")->capture_default_str();
  app.add_option("--perturb", a.perturb, "std of the noise added to every matrix after initialisation")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    run(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "twin_parity_dump: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
