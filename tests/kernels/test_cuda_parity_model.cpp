// Parity of the CUDA backend with the CPU reference for the whole model: the tiny model's loss and gradients
// (and variants reaching every feature), the bf16 mode, the suffix-scoring forward, and bit-identical repeat
// runs in deterministic mode. Tolerances and their reasons: tests/kernels/parity_test_util.h.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda_backend.h"
#include "src/model/config.h"
#include "src/model/layout.h"
#include "src/model/model.h"
#include "src/ops/backend.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/parity_test_util.h"

using namespace ptool;
using namespace ptool::parity_test;

using ptool::gpu_test::check_exact;
using ptool::gpu_test::Dev;

namespace {

std::vector<float> noisy_params(const model::ModelConfig& cfg, const model::ParamLayout& L, uint64_t seed) {
  std::vector<float> p(static_cast<size_t>(L.total));
  model::init_params(cfg, L, seed, p.data());
  // Perturb every tensor (zero-initialised projections too) so that every path carries gradient.
  std::mt19937_64 rng(seed + 1);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (const auto& s : L.specs) {
    const bool scalar = s.group == model::OptGroup::scalar;
    for (int64_t i = 0; i < s.numel; ++i) p[s.offset + i] += (scalar ? 0.1f : 0.03f) * nd(rng);
  }
  return p;
}

struct RunResult {
  double loss = 0.0;
  std::vector<double> losses;
  Vec grads;
};

RunResult run_model(Backend<float>& be, const model::ModelConfig& cfg, const std::vector<float>& params,
                    const std::vector<int32_t>& x, const std::vector<int32_t>& y, int64_t B, int64_t Tn) {
  model::Model<float> m(cfg, be);
  m.load_params(params.data());
  m.zero_grads();
  RunResult r;
  r.losses.resize(static_cast<size_t>(B * Tn));
  m.forward(x.data(), y.data(), B, Tn, r.losses.data());
  r.loss = m.forward_backward(x.data(), y.data(), B, Tn, 1.f / static_cast<float>(B * Tn));
  r.grads.resize(static_cast<size_t>(m.param_count()));
  be.download(r.grads.data(), m.grads(), r.grads.size());
  return r;
}

model::ModelConfig variant_config() {  // features the presets above do not reach
  model::ModelConfig c = model::preset("tiny");
  c.vocab_size = 300;
  c.d_model = 96;
  c.n_heads = 3;  // head_dim 32
  c.n_kv_heads = 1;
  c.rope_dims = 8;
  c.activation = cpu::Activation::leaky_relu2;
  c.skips = model::SkipKind::gated;
  c.ln_scale = true;
  c.logit_softcap = 15.0;
  c.tie_embeddings = false;
  c.physical_blocks = 3;
  c.schedule = {0, 1, 2, 1, 2};
  c.per_virtual_scalars = true;
  c.train_seq_len = 64;  // evaluated at T = 77 > 64: NTK-rescaled RoPE base
  c.xsa_last = 3;        // XSA in the last three layers: block 2 with it and without, block 1 with it
  c.ve_dim = 16;         // value embeddings in the last two
  c.ve_last = 2;
  return c;
}

model::ModelConfig token_features_config() {  // the bigram hash and smear gate at the embedding
  model::ModelConfig c = model::preset("tiny");
  c.bigram_buckets = 97;
  c.bigram_dim = 24;
  c.smear_gate = true;
  return c;
}

model::ModelConfig single_block_config() {  // one layer (its norm fused with the final one), no mixing or skips
  model::ModelConfig c = model::preset("tiny");
  c.physical_blocks = 1;
  c.schedule = {0};
  c.norm_scale = true;
  c.resid_mix = false;
  c.skips = model::SkipKind::none;
  c.qk_norm = false;
  return c;
}

}  // namespace

TEST_CASE("cuda: the tiny model's loss and gradients match the CPU backend", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  struct ModelCase {
    std::string name;
    model::ModelConfig cfg;
    int64_t B, Tn;
  };
  // embed_bf16: the bf16 mode keeps the residual stream and its gradient in bf16 (fused and composed paths)
  auto bf16_stream = [](model::ModelConfig c) {
    c.embed_bf16 = true;
    return c;
  };
  const ModelCase cases[] = {{"tiny", model::preset("tiny"), 2, 128},
                             {"tiny, embed_bf16", bf16_stream(model::preset("tiny")), 2, 77},
                             {"variant, embed_bf16", bf16_stream(variant_config()), 2, 77},
                             {"one block, embed_bf16", bf16_stream(single_block_config()), 2, 50},
                             {"tiny T=77", model::preset("tiny"), 3, 77},
                             {"tiny_recurrent", model::preset("tiny_recurrent"), 2, 128},
                             {"tiny with bigram hash and smear gate", token_features_config(), 2, 77},
                             {"variant (leaky, partial rope, gated, ln_scale, untied, xsa, ve)", variant_config(), 2, 77},
                             {"one block (norm_scale, no resid_mix, no skips, no qk_norm)", single_block_config(), 2,
                              50}};
  for (const auto& mc : cases) {
    const auto L = model::make_layout(mc.cfg);
    const auto params = noisy_params(mc.cfg, L, 17);
    std::mt19937_64 rng(23);
    std::vector<int32_t> x(static_cast<size_t>(mc.B * mc.Tn)), y(x.size());
    for (auto& t : x) t = static_cast<int32_t>(rand_int(rng, 0, mc.cfg.vocab_size - 1));
    for (auto& t : y) t = static_cast<int32_t>(rand_int(rng, 0, mc.cfg.vocab_size - 1));
    const RunResult want = run_model(*cpu, mc.cfg, params, x, y, mc.B, mc.Tn);
    // Every precision, and bf16 once more with atomics (the flash backward's dQ, the embedding backward).
    const std::pair<CudaGemmPrecision, bool> runs[] = {
        {CudaGemmPrecision::fp32, true}, {CudaGemmPrecision::tf32, true}, {CudaGemmPrecision::bf16, true},
        {CudaGemmPrecision::bf16, false}};
    for (const auto& [prec, det] : runs) {
      const std::string tag = mc.name + tag_of(prec) + (det ? "" : " nondeterministic");
      auto g = gpu_backend(prec, det);
      const RunResult got = run_model(*g, mc.cfg, params, x, y, mc.B, mc.Tn);
      std::printf("%s: loss cpu %.9g gpu %.9g\n", tag.c_str(), want.loss, got.loss);
      // {loss relative, per-token loss absolute, gradient share of the tensor's max}, in enum order fp32, tf32, bf16
      const double tol[3][3] = {{2e-5, 2e-4, 1e-3}, {2e-3, 2e-2, 5e-2}, {1e-2, 1e-1, 2e-1}};
      const double* t = tol[static_cast<int>(prec)];
      const double lrel = t[0];
      check_close(tag + " loss", {static_cast<float>(got.loss)}, {static_cast<float>(want.loss)}, 0.0, lrel);
      check_close(tag + " per-token losses", Vec(got.losses.begin(), got.losses.end()),
                  Vec(want.losses.begin(), want.losses.end()), t[1], lrel);
      const double grel = t[2];
      for (const auto& s : L.specs) {
        const Vec gg(got.grads.begin() + s.offset, got.grads.begin() + s.offset + s.numel);
        const Vec gc(want.grads.begin() + s.offset, want.grads.begin() + s.offset + s.numel);
        double mx = 0.0;
        for (float v : gc) mx = std::max(mx, static_cast<double>(std::abs(v)));
        check_close(tag + " grad " + s.name, gg, gc, grel * mx + 1e-9, 0.0);
      }
    }
  }
}

// bf16 operand buffers change where the bf16 rounding happens (in the op that writes the tensor, not before the
// GEMM), not its result: loss, per-token losses and gradients equal the converting path's bit for bit, and the
// activations GPTQ calibration sees are the fp32 ones rounded to bf16.
TEST_CASE("cuda: bf16 operand buffers give the bf16 mode's results bit for bit", "[gpu]") {
  SKIP_WITHOUT_GPU();
  model::ModelConfig plain_tied = variant_config();  // plain pre-norms (operand h1, h2), tied head, gated skips
  plain_tied.ln_scale = false;
  plain_tied.tie_embeddings = true;
  const std::pair<std::string, model::ModelConfig> cases[] = {
      {"tiny", model::preset("tiny")}, {"variant", variant_config()}, {"variant, plain norms", plain_tied},
      {"bigram hash and smear gate", token_features_config()}};
  for (const auto& [name, cfg] : cases) {
    const auto L = model::make_layout(cfg);
    const auto params = noisy_params(cfg, L, 31);
    const int64_t B = 2, Tn = 77;
    std::mt19937_64 rng(37);
    std::vector<int32_t> x(static_cast<size_t>(B * Tn)), y(x.size());
    for (auto& t : x) t = static_cast<int32_t>(rand_int(rng, 0, cfg.vocab_size - 1));
    for (auto& t : y) t = static_cast<int32_t>(rand_int(rng, 0, cfg.vocab_size - 1));
    CudaBackendOptions on, off;
    on.gemm = off.gemm = CudaGemmPrecision::bf16;
    off.bf16_operands = false;
    auto g_on = make_cuda_backend(on), g_off = make_cuda_backend(off);
    const RunResult want = run_model(*g_off, cfg, params, x, y, B, Tn);
    const RunResult got = run_model(*g_on, cfg, params, x, y, B, Tn);
    CHECK(got.loss == want.loss);
    check_exact(name + " per-token losses (operand buffers vs converting)", Vec(got.losses.begin(), got.losses.end()),
                Vec(want.losses.begin(), want.losses.end()));
    check_exact(name + " gradients (operand buffers vs converting)", got.grads, want.grads);

    // What calibration sees: the converting backend's fp32 activations, rounded to bf16.
    std::map<std::string, Vec> seen_on, seen_off;
    for (auto* run : {&seen_on, &seen_off}) {
      Backend<float>& be = run == &seen_on ? *g_on : *g_off;
      model::Model<float> m(cfg, be);
      m.load_params(params.data());
      m.forward(x.data(), y.data(), B, Tn);
      m.visit_linear_inputs([&](const std::string& w, const float* X, int64_t rows, int64_t cols) {
        Vec h(static_cast<size_t>(rows * cols));
        be.download(h.data(), X, h.size());
        (*run)[w] = h;
      });
    }
    // Operand buffers: the pre-norm outputs when the norms are plain, the attention output, the activation and
    // the final norm; not the value and bigram embeddings' looked-up rows.
    REQUIRE(seen_on.size() == seen_off.size());
    const bool plain_norms = !cfg.ln_scale && !cfg.norm_scale;
    for (auto& [w, v] : seen_off) {
      const bool pre_norm = w.find("attn.c_") != std::string::npos || w.find("mlp.fc") != std::string::npos;
      const bool lookup = w == "ve.proj.weight" || w == "bigram.proj.weight";  // fp32 rows, not operands
      const bool operand = !lookup && (!pre_norm || plain_norms);
      check_exact(name + " calibration input " + w + (operand ? " (bf16)" : ""), seen_on.at(w),
                  operand ? bf16_rounded(v) : v);
    }
  }
}

// A forward that scores a suffix of each sequence (sliding eval) gives the full forward's losses and logits for
// those positions: its last layer runs past attention on the scored rows alone.
TEST_CASE("cuda: a suffix forward scores like the full forward", "[gpu]") {
  SKIP_WITHOUT_GPU();
  for (const auto& [bf16_stream, xsa] : {std::pair{false, false}, {true, false}, {false, true}}) {
    auto cfg = model::preset("tiny");
    cfg.embed_bf16 = bf16_stream;  // the bf16 mode's stream, and with it the scored rows, in bf16
    cfg.xsa_last = xsa ? 1 : 0;    // the last layer's XSA on the scored rows and their own values
    const auto L = model::make_layout(cfg);
    const auto params = noisy_params(cfg, L, 43);
    const int64_t B = 3, Tn = 40, from = 29, S = Tn - from, V = cfg.vocab_size;
    std::mt19937_64 rng(47);
    std::vector<int32_t> x(static_cast<size_t>(B * Tn)), y(x.size());
    for (auto& t : x) t = static_cast<int32_t>(rand_int(rng, 0, V - 1));
    for (auto& t : y) t = static_cast<int32_t>(rand_int(rng, 0, V - 1));
    for (auto prec : {CudaGemmPrecision::fp32, CudaGemmPrecision::bf16}) {
      auto g = gpu_backend(prec);
      model::Model<float> m(cfg, *g);
      m.load_params(params.data());
      std::vector<double> all(x.size()), part(static_cast<size_t>(B * S));
      m.forward(x.data(), y.data(), B, Tn, all.data());
      Vec full(static_cast<size_t>(B * Tn * V)), suffix(static_cast<size_t>(B * S * V));
      g->download(full.data(), m.logits(), full.size());
      m.forward(x.data(), y.data(), B, Tn, part.data(), from);
      g->download(suffix.data(), m.logits(), suffix.size());
      Vec want_l, got_l, want_z;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = from; t < Tn; ++t) {
          want_l.push_back(static_cast<float>(all[b * Tn + t]));
          got_l.push_back(static_cast<float>(part[b * S + t - from]));
          want_z.insert(want_z.end(), full.begin() + (b * Tn + t) * V, full.begin() + (b * Tn + t + 1) * V);
        }
      const std::string tag = tag_of(prec) + (bf16_stream ? " embed_bf16" : "") + (xsa ? " xsa" : "");
      check_close("suffix forward losses" + tag, got_l, want_l, 1e-5, 1e-5);
      check_close("suffix forward logits" + tag, suffix, want_z, 1e-5, 1e-5);
    }
  }
}

TEST_CASE("cuda: deterministic mode gives bit-identical repeat runs", "[gpu][determinism]") {
  SKIP_WITHOUT_GPU();
  for (const char* preset : {"tiny", "tiny_recurrent"}) {
    const auto cfg = model::preset(preset);
    const auto L = model::make_layout(cfg);
    const auto params = noisy_params(cfg, L, 5);
    std::mt19937_64 rng(29);
    const int64_t B = 4, Tn = 128;
    std::vector<int32_t> x(static_cast<size_t>(B * Tn)), y(x.size());
    for (auto& t : x) t = static_cast<int32_t>(rand_int(rng, 0, 63));  // few distinct ids: repeated embedding rows
    for (auto& t : y) t = static_cast<int32_t>(rand_int(rng, 0, cfg.vocab_size - 1));
    for (auto prec : kAllPrecisions) {
      auto g1 = gpu_backend(prec);
      auto g2 = gpu_backend(prec);
      const RunResult a = run_model(*g1, cfg, params, x, y, B, Tn);
      const RunResult b = run_model(*g1, cfg, params, x, y, B, Tn);
      const RunResult c = run_model(*g2, cfg, params, x, y, B, Tn);
      const std::string tag = std::string(preset) + tag_of(prec);
      CHECK(a.loss == b.loss);
      CHECK(a.loss == c.loss);
      check_exact(tag + " repeat run, same backend: grads", b.grads, a.grads);
      check_exact(tag + " repeat run, new backend: grads", c.grads, a.grads);
    }
  }
}
