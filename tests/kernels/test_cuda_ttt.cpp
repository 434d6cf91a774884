// Score-first test-time training on the CUDA backend: its SGD runs on the device (CudaMaskedSgd) and follows the
// host version that the CPU backend runs, per target; frozen parameters keep their weights bit for bit.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cuda_backend.h"
#include "src/eval/evaluate.h"
#include "src/model/layout.h"
#include "src/model/model.h"
#include "src/ops/bf16.h"
#include "src/ops/profiling_backend.h"
#include "tests/kernels/gpu_test_util.h"

using namespace ptool;

namespace {

model::ModelConfig ttt_config() {
  model::ModelConfig c;
  c.vocab_size = 32;
  c.d_model = 32;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.physical_blocks = 2;
  c.schedule = {0, 1};
  c.train_seq_len = 16;
  return c;
}

struct TttRun {
  eval::EvalResult r;
  std::vector<double> per_target;
  std::vector<float> params_after;
  int64_t downloads = 0;  // backend downloads during the TTT pass (the host SGD makes one per step)
};

TttRun run_ttt(Backend<float>& be, const std::vector<float>& params, const std::vector<uint16_t>& tokens,
               const eval::TttOptions& opt) {
  const auto cfg = ttt_config();
  model::Model<float> m(cfg, be);
  m.load_params(params.data());
  ByteLuts luts;
  luts.base_bytes.assign(cfg.vocab_size, 1);
  luts.has_leading_space.assign(cfg.vocab_size, 0);
  luts.is_boundary.assign(cfg.vocab_size, 0);
  TttRun t;
  auto* prof = dynamic_cast<ProfilingBackend<float>*>(&be);
  if (prof) prof->reset();
  t.r = eval::eval_ttt(m, tokens, 16, 8, luts, 4, opt, &t.per_target);
  if (prof && prof->profile().count("download")) t.downloads = prof->profile().at("download").calls;
  t.params_after.resize(m.param_count());
  m.store_params(t.params_after.data());
  return t;
}

}  // namespace

TEST_CASE("cuda: score-first TTT on the device follows the host SGD; frozen weights stay put", "[gpu]") {
  SKIP_WITHOUT_GPU();
  const auto cfg = ttt_config();
  const auto L = model::make_layout(cfg);
  std::vector<float> params(L.total);
  model::init_params(cfg, L, 5, params.data());
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0, 0.2f);
  for (auto& s : L.specs)
    if (s.name.find("proj") != std::string::npos)
      for (int64_t i = 0; i < s.numel; ++i) params[s.offset + i] = nd(rng);
  std::vector<uint16_t> tokens(6 * 32 + 1);
  for (auto& t : tokens) t = static_cast<uint16_t>(rng() % cfg.vocab_size);
  eval::TttOptions opt;
  opt.chunk_tokens = 32;
  opt.epochs = 2;
  opt.lr = 0.05;
  opt.grad_clip = 0.5;  // small enough to clip
  opt.batch_seqs = 2;
  opt.freeze_blocks = 1;

  auto cpu = make_cpu_backend<float>();
  CudaBackendOptions o;
  o.gemm = CudaGemmPrecision::fp32;
  auto gpu = make_cuda_backend(o);
  ProfilingBackend<float> prof(*gpu, make_cuda_op_timer(*gpu));
  ProfilingBackend<float> cpu_prof(*cpu, make_wall_clock_timer());
  const TttRun want = run_ttt(cpu_prof, params, tokens, opt);
  const TttRun got = run_ttt(prof, params, tokens, opt);
  CHECK(want.downloads > 0);   // the host SGD reads the gradients every step
  CHECK(got.downloads == 0);   // the device SGD never does
  CHECK(got.r.tokens == want.r.tokens);
  CHECK(got.r.nll_sum == Approx(want.r.nll_sum).epsilon(1e-5));
  REQUIRE(got.per_target.size() == want.per_target.size());
  double worst = 0;
  for (size_t i = 0; i < got.per_target.size(); ++i)
    worst = std::max(worst, std::abs(got.per_target[i] - want.per_target[i]));
  std::printf("TTT per-target losses: worst |gpu - cpu| %.3g\n", worst);
  CHECK(worst < 1e-4);
  // Frozen (the embedding and block 0): unchanged; trained (block 1): moved, as on the host.
  for (const auto& s : L.specs) {
    const bool frozen = s.name == "tok_emb.weight" || s.name.rfind("blocks.0.", 0) == 0;
    double moved = 0, diff = 0;
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i) {
      moved += std::abs(got.params_after[i] - params[i]);
      diff = std::max(diff, static_cast<double>(std::abs(got.params_after[i] - want.params_after[i])));
    }
    INFO(s.name);
    if (frozen) CHECK(moved == 0.0);
    CHECK(diff < 1e-4);
  }
}

TEST_CASE("cuda: an embed_bf16 model's round_bf16_params rounds tok_emb in device memory, nothing else", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cfg = ttt_config();
  cfg.embed_bf16 = true;
  auto gpu = make_cuda_backend(CudaBackendOptions{});
  model::Model<float> m(cfg, *gpu);
  std::vector<float> params(m.param_count()), back(m.param_count());
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0, 0.1f);
  for (float& v : params) v = nd(rng);
  m.load_params(params.data());
  m.round_bf16_params();  // what eval_ttt calls after each SGD step
  m.store_params(back.data());
  const auto& e = m.layout().at("tok_emb.weight");
  int64_t wrong = 0, moved = 0;
  for (int64_t i = 0; i < m.param_count(); ++i) {
    const bool emb = i >= e.offset && i < e.offset + e.numel;
    wrong += back[i] != (emb ? round_to_bf16(params[i]) : params[i]);
    moved += back[i] != params[i];
  }
  CHECK(wrong == 0);
  CHECK(moved > e.numel / 2);
}
