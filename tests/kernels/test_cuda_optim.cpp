// The device optimizer step (kernels/cuda_optim.h behind src/train/optimizer_step.h) against the host step, its
// CPU oracle. Every test is tagged [gpu] and skips (with a warning) when no CUDA device is present; each
// comparison prints the share of its tolerance that the worst element used.
//
// Tolerances and why:
// - momentum, Adam moments and Adam-updated weights, EMA/SWA of those, clipped gradients, QAT fake-quant:
//   exact (the same fp32 operations in the same order, std::fma on the host exactly where the device fuses; the
//   clip factor comes from a double norm summed in another order, which moves float(coef) by an ulp with
//   probability ~1e-9).
// - Muon-updated weights, fp32 Newton-Schulz: |gpu - cpu| <= 2e-3 of the slice's largest |ΔW| on the host
//   (cuBLAS and Eigen sum in different orders; five NS iterations amplify those roundings, most for the small
//   singular values, which the quintic maps by up to 3.44x per step).
// - bf16 Newton-Schulz against the host's bf16 mimic (MuonConfig::bf16): 0.1 of the largest |ΔW| (a bf16 ulp is
//   2^-8 relative, and a rounding that lands differently on the two sides is carried through the remaining
//   iterations); against the fp32 oracle the bf16 update is only printed.
// - training on the CUDA backend (TF32 model GEMMs by default) against the CPU: per-step loss within 2e-2 + 1e-2
//   relative over 20 steps of the micro model; resume on the GPU is bit-exact like on the CPU.
// These bounds were set before any run on a GPU: the printed shares say how much room each check has. The last
// two tests check the host-side planning and run without a GPU.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda_backend.h"
#include "tests/kernels/gpu_test_util.h"
#include "formats/error.h"
#include "kernels/cuda_optim.h"
#include "kernels/cuda_optim_internal.h"
#include "src/model/load.h"
#include "src/model/model.h"
#include "src/ops/bf16.h"
#include "src/quant/rtn.h"
#include "src/train/optimizer_step.h"
#include "src/train/schedule.h"
#include "src/train/trainer.h"
#include "tests/src/test_train_corpus.h"

using namespace ptool;
using namespace ptool::train;

namespace {

using Vec = std::vector<float>;

std::unique_ptr<Backend<float>> gpu_backend() { return make_cuda_backend(CudaBackendOptions{}); }

Vec random_vec(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  Vec v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

Vec download(Backend<float>& be, const float* p, size_t n) {
  Vec h(n);
  if (n) be.download(h.data(), p, n);
  return h;
}

// |got - want| <= atol element-wise.
void check_close(const std::string& what, const float* got, const float* want, size_t n, double atol) {
  double worst = 0.0;
  size_t wi = 0;
  for (size_t i = 0; i < n; ++i) {
    double share = std::abs(static_cast<double>(got[i]) - want[i]) / (atol + 1e-30);
    if (std::isnan(got[i]) != std::isnan(want[i])) share = INFINITY;
    if (!(share <= worst)) {
      worst = share;
      wi = i;
    }
  }
  std::printf("  %-58s %7.2f%% of tolerance (atol %.1e, n %zu)\n", what.c_str(), 100.0 * worst, atol, n);
  INFO(what << ": worst element " << wi << " gpu " << (n ? got[wi] : 0.f) << " cpu " << (n ? want[wi] : 0.f));
  CHECK(worst <= 1.0);
}

void check_exact(const std::string& what, const float* got, const float* want, size_t n) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      if (bad == 0) first = i;
      ++bad;
    }
  }
  std::printf("  %-58s exact: %zu of %zu elements differ\n", what.c_str(), bad, n);
  INFO(what << ": first difference at " << first << " gpu " << (bad ? got[first] : 0.f) << " cpu "
            << (bad ? want[first] : 0.f));
  CHECK(bad == 0);
}

// The baseline's block shapes (c_q 512x512, c_k/c_v 256x512, proj 512x512, fc 1024x512, mlp.proj 512x1024) in
// two blocks, so that the host oracle stays quick.
model::ModelConfig baseline_two_blocks() {
  auto c = model::preset("baseline");
  c.physical_blocks = 2;
  c.schedule = {0, 1};
  return c;
}

StepSettings base_settings() {
  StepSettings s;
  s.muon.lr = 0.04;
  s.muon.momentum = 0.9;
  s.adam.group(Group::adam_embed) = {true, 0.05, 0.0};
  s.adam.group(Group::adam_head) = {true, 0.008, 0.0};
  s.adam.group(Group::adam_scalar) = {true, 0.04, 0.0};
  return s;
}

// A CPU model with the host step and a GPU model with the device step, from the same weights and gradients.
struct StepPair {
  model::ModelConfig cfg;
  std::unique_ptr<Backend<float>> cpu = make_cpu_backend<float>(), gpu = gpu_backend();
  model::Model<float> mc{cfg, *cpu}, mg{cfg, *gpu};
  OptimizerState sc, sg;
  std::unique_ptr<OptimizerStep> host, dev;
  Vec w0;

  StepPair(const model::ModelConfig& c, bool ema)
      : cfg(c),
        sc(make_param_store(mc.layout()), ema, 1, 2.0),
        sg(make_param_store(mg.layout()), ema, 1, 2.0) {
    model::init_params(cfg, mc.layout(), 5, sc.params.data());
    // Random Muon weights too (the baseline zero-initialises the output projections).
    const Vec r = random_vec(sc.params.size(), 77, 0.02f);
    for (size_t i : sc.muon.muon_slices()) {
      const Slice& s = sc.params.slices()[i];
      std::copy(r.begin() + s.offset, r.begin() + s.offset + s.numel, sc.params.data() + s.offset);
    }
    sg.params.copy_from(sc.params);
    if (ema) {
      std::copy(sc.params.data(), sc.params.data() + sc.params.size(), sc.ema.begin());
      sg.ema = sc.ema;
    }
    w0.assign(sc.params.data(), sc.params.data() + sc.params.size());
    host = make_host_optimizer_step(mc, sc);
    dev = make_device_optimizer_step(mg, sg);
  }

  void step(const StepSettings& s, uint64_t seed) {
    const Vec g = random_vec(sc.params.size(), seed, 0.01f);
    cpu->upload(mc.grads(), g.data(), g.size());
    gpu->upload(mg.grads(), g.data(), g.size());
    host->step(s);
    dev->step(s);
  }

  // Muon slices within rel x the slice's largest host |ΔW|, everything else exact.
  void compare_weights(const std::string& tag, const float* got, const float* want, double rel) {
    for (const Slice& s : sc.params.slices()) {
      if (s.group == Group::muon) {
        double dmax = 0;
        for (size_t i = s.offset; i < s.offset + s.numel; ++i)
          dmax = std::max(dmax, std::abs(static_cast<double>(sc.params.data()[i]) - w0[i]));
        check_close(tag + " " + s.name, got + s.offset, want + s.offset, s.numel, rel * dmax);
      } else {
        check_exact(tag + " " + s.name, got + s.offset, want + s.offset, s.numel);
      }
    }
  }

  void compare(double muon_rel) {
    dev->sync_to_host();
    const size_t n = sc.params.size();
    check_exact("momentum", sg.muon.momentum().data(), sc.muon.momentum().data(), n);
    check_exact("adam exp_avg", sg.adam.exp_avg().data(), sc.adam.exp_avg().data(), n);
    check_exact("adam exp_avg_sq", sg.adam.exp_avg_sq().data(), sc.adam.exp_avg_sq().data(), n);
    CHECK(sg.adam.step_count() == sc.adam.step_count());
    compare_weights("weights", sg.params.data(), sc.params.data(), muon_rel);
    if (!sc.ema.empty()) compare_weights("ema", sg.ema.data(), sc.ema.data(), muon_rel);
    CHECK(sg.swa.count() == sc.swa.count());
    if (sc.swa.count() > 0) compare_weights("swa sum", sg.swa.sum().data(), sc.swa.sum().data(), muon_rel * 2);
  }
};

}  // namespace

TEST_CASE("cuda optim: fp32 device step matches the host step (clip, WD, EMA, SWA)", "[gpu]") {
  SKIP_WITHOUT_GPU();
  StepPair p(baseline_two_blocks(), true);
  StepSettings s = base_settings();
  s.muon.weight_decay = 0.05;
  s.adam.group(Group::adam_scalar).weight_decay = 0.02;
  s.grad_clip = 0.5;  // the random gradients' norm is about 20: clipping is active
  s.ema_decay = 0.9;
  s.swa_take = true;
  for (int k = 0; k < 2; ++k) p.step(s, 10 + k);
  p.compare(2e-3);
}

TEST_CASE("cuda optim: fp32 device step with row normalisation, Polar Express and coupled Adam WD", "[gpu]") {
  SKIP_WITHOUT_GPU();
  StepPair p(baseline_two_blocks(), false);
  StepSettings s = base_settings();
  s.muon.row_normalize = true;
  s.muon.nesterov = false;
  s.muon.ns = NsConfig::polar_express(5);
  s.adam.decoupled_weight_decay = false;
  s.adam.group(Group::adam_embed).weight_decay = 0.1;
  p.step(s, 20);
  p.compare(2e-3);
}

TEST_CASE("cuda optim: a bf16 Adam group (the baseline's tok_emb) matches the host exactly", "[gpu]") {
  SKIP_WITHOUT_GPU();
  StepPair p(baseline_two_blocks(), false);
  REQUIRE(p.cfg.embed_bf16);
  StepSettings s = base_settings();
  s.adam.group(Group::adam_embed) = {true, 0.05, 0.01, true};
  for (int k = 0; k < 3; ++k) p.step(s, 30 + k);
  p.compare(2e-3);
  const Slice& e = p.sg.params.slice("tok_emb.weight");
  size_t off_grid = 0;
  for (size_t i = e.offset; i < e.offset + e.numel; ++i)
    off_grid += !is_bf16_value(p.sg.params.data()[i]) + !is_bf16_value(p.sg.adam.exp_avg().data()[i]) +
                !is_bf16_value(p.sg.adam.exp_avg_sq().data()[i]);
  CHECK(off_grid == 0);
}

TEST_CASE("cuda optim: bf16 Newton-Schulz follows the host's bf16 mimic", "[gpu]") {
  SKIP_WITHOUT_GPU();
  StepPair p(baseline_two_blocks(), false);
  StepSettings s = base_settings();
  s.muon.bf16 = true;
  p.step(s, 30);
  p.compare(0.1);

  // Against the fp32 oracle, for information: how far the fast mode is from it.
  StepPair f(baseline_two_blocks(), false);
  StepSettings s32 = base_settings();
  f.step(s32, 30);
  f.host->sync_to_host();
  p.dev->sync_to_host();
  for (size_t i : f.sc.muon.muon_slices()) {
    const Slice& sl = f.sc.params.slices()[i];
    double worst = 0, dmax = 0;
    for (size_t j = sl.offset; j < sl.offset + sl.numel; ++j) {
      worst = std::max(worst, std::abs(static_cast<double>(p.sg.params.data()[j]) - f.sc.params.data()[j]));
      dmax = std::max(dmax, std::abs(static_cast<double>(f.sc.params.data()[j]) - f.w0[j]));
    }
    std::printf("  bf16 device vs fp32 host %-33s max |diff| = %.3f of max |dW|\n", sl.name.c_str(), worst / dmax);
  }
}

TEST_CASE("cuda optim: QAT fake-quant is bit-identical to quant::fake_quantize_rows", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto be = gpu_backend();
  const int64_t rows = 9, cols = 300;
  Vec w = random_vec(rows * cols, 4, 0.05f);
  for (int64_t c = 0; c < cols; ++c) {
    w[1 * cols + c] = 0.f;                                     // all zero: the floor scale
    w[2 * cols + c] = 1e-6f * static_cast<float>(c % 7);       // tiny
    w[3 * cols + c] = 3e4f * std::sin(static_cast<float>(c));  // large
  }
  w[5 * cols + 17] = std::numeric_limits<float>::quiet_NaN();
  w[6 * cols + 3] = std::numeric_limits<float>::infinity();
  DeviceBuffer<float> in(*be, w.size()), out(*be, w.size());
  for (int bits = 2; bits <= 8; ++bits) {
    // Row 4 (bits >= 3, where the floor 1/R is below 0.25 R): scale exactly 0.25 and every other value at
    // (k + 1/2) scales: round-half-to-even ties.
    const int R = (1 << (bits - 1)) - 1;
    for (int64_t c = 0; c < cols; ++c)
      w[4 * cols + c] = c == 0 ? 0.25f * R : (static_cast<float>(c % (2 * R)) - R + 0.5f) * 0.25f;
    be->upload(in.get(), w.data(), w.size());
    Vec want(w.size());
    quant::fake_quantize_rows(w.data(), rows, cols, bits, want.data());
    cuda_fake_quantize_rows(*be, in.get(), rows, cols, bits, out.get());
    const Vec got = download(*be, out.get(), w.size());
    // Row 6 (an infinite weight) is outside the contract on the host too (a NaN cast to int): skip it.
    Vec g2 = got, w2 = want;
    std::fill(g2.begin() + 6 * cols, g2.begin() + 7 * cols, 0.f);
    std::fill(w2.begin() + 6 * cols, w2.begin() + 7 * cols, 0.f);
    check_exact("fake_quantize_rows bits " + std::to_string(bits), g2.data(), w2.data(), g2.size());
  }
  // In place, on the first five rows.
  Vec want(w.size());
  quant::fake_quantize_rows(w.data(), 5, cols, 6, want.data());
  cuda_fake_quantize_rows(*be, in.get(), 5, cols, 6, in.get());
  check_exact("fake_quantize_rows in place", download(*be, in.get(), w.size()).data(), want.data(), 5 * cols);

  // Through the optimizer step on the baseline shapes.
  StepPair p(baseline_two_blocks(), false);
  const float* qh = p.host->fake_quantized_weights(6);  // CPU backend memory is host memory
  const Vec qd = download(*p.gpu, p.dev->fake_quantized_weights(6), p.sc.params.size());
  check_exact("QAT forward weights (int6)", qd.data(), qh, qd.size());
}

TEST_CASE("cuda optim: gradient clipping, EMA and SWA match the host", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto be = gpu_backend();
  const size_t n = 3'000'017;
  const Vec g = random_vec(n, 8, 1e-3f);
  DeviceBuffer<float> d(*be, n);
  CudaGradClip clip(*be, n);
  for (double max_norm : {0.5, 1e9}) {
    Vec want = g;
    const double norm = clip_grad_norm(want, max_norm);
    be->upload(d.get(), g.data(), n);
    clip.clip(d.get(), max_norm);
    CHECK(clip.last_norm() == Approx(norm).epsilon(1e-12));
    check_exact("clip_grad_norm max_norm " + std::to_string(max_norm), download(*be, d.get(), n).data(),
                want.data(), n);
  }
  Vec bad = g;
  bad[12345] = std::numeric_limits<float>::quiet_NaN();
  be->upload(d.get(), bad.data(), n);
  clip.clip(d.get(), 0.5);
  CHECK(std::isnan(clip.last_norm()));
  const Vec after = download(*be, d.get(), n);
  CHECK(std::memcmp(after.data(), bad.data(), 100 * sizeof(float)) == 0);  // a non-finite norm clips nothing

  const Vec w = random_vec(n, 9, 0.1f);
  Vec ema = random_vec(n, 10, 0.1f);
  DeviceBuffer<float> dw(*be, n), de(*be, n), ds(*be, n);
  be->upload(dw.get(), w.data(), n);
  be->upload(de.get(), ema.data(), n);
  ema_update(ema, w, 0.997);
  cuda_ema_update(*be, de.get(), dw.get(), n, static_cast<float>(0.997), static_cast<float>(1.0 - 0.997));
  check_exact("ema_update", download(*be, de.get(), n).data(), ema.data(), n);

  Swa swa(n, 1, 2.0);
  swa.accumulate(w);
  swa.accumulate(ema);
  cuda_swa_accumulate(*be, ds.get(), dw.get(), n, true);
  cuda_swa_accumulate(*be, ds.get(), de.get(), n, false);
  check_exact("swa sum", download(*be, ds.get(), n).data(), swa.sum().data(), n);
}

TEST_CASE("cuda optim: repeated device steps are bit-identical", "[gpu][determinism]") {
  SKIP_WITHOUT_GPU();
  for (bool bf16 : {false, true}) {
    Vec runs[2];
    for (auto& r : runs) {
      StepPair p(baseline_two_blocks(), true);
      StepSettings s = base_settings();
      s.muon.bf16 = bf16;
      s.muon.row_normalize = true;
      s.grad_clip = 0.5;
      s.ema_decay = 0.9;
      for (int k = 0; k < 2; ++k) {
        const Vec g = random_vec(p.sg.params.size(), 40 + k, 0.01f);
        p.gpu->upload(p.mg.grads(), g.data(), g.size());
        p.dev->step(s);
      }
      p.dev->sync_to_host();
      r.assign(p.sg.params.data(), p.sg.params.data() + p.sg.params.size());
      r.insert(r.end(), p.sg.ema.begin(), p.sg.ema.end());
      r.insert(r.end(), p.sg.muon.momentum().data(), p.sg.muon.momentum().data() + p.sg.params.size());
    }
    check_exact(std::string("two device runs, ") + (bf16 ? "bf16" : "fp32"), runs[1].data(), runs[0].data(),
                runs[0].size());
  }
}

// cuda (TF32 GEMMs) and cuda:bf16 (bf16 GEMM inputs, operand and activation buffers, the fused backwards), also
// with atomics (,nondeterministic): the bound per step is 2e-2 + 1e-2 |loss| for TF32 and twice that for bf16.
TEST_CASE("cuda optim: 20 training steps on --device cuda track the CPU run", "[gpu]") {
  SKIP_WITHOUT_GPU();
  ptool_test::Corpus corpus("cuda_optim_track");
  auto opt = ptool_test::quick(20);
  opt.warmdown_iters = 8;
  opt.grad_clip = 1.0;
  auto in = corpus.in;
  const auto cpu = train::train(ptool_test::micro(), opt, in);
  REQUIRE(cpu.losses.size() == 20);
  for (const char* device : {"cuda", "cuda:bf16", "cuda:bf16,nondeterministic"}) {
    INFO(device);
    const double k = std::string(device) == "cuda" ? 1.0 : 2.0;
    opt.device = device;
    const auto gpu = train::train(ptool_test::micro(), opt, in);
    REQUIRE(gpu.losses.size() == 20);
    double worst = 0;
    for (size_t i = 0; i < 20; ++i) {
      const double tol = k * (2e-2 + 1e-2 * std::abs(cpu.losses[i]));
      worst = std::max(worst, std::abs(gpu.losses[i] - cpu.losses[i]) / tol);
      std::printf("  step %2zu loss cpu %.6f %s %.6f\n", i + 1, cpu.losses[i], device, gpu.losses[i]);
    }
    std::printf("  %-58s %7.2f%% of tolerance\n", (std::string("training losses, ") + device + " vs cpu").c_str(),
                100.0 * worst);
    CHECK(worst <= 1.0);
    CHECK(gpu.losses.back() < gpu.losses.front() - 1.0);
    CHECK(std::abs(gpu.val_loss - cpu.val_loss) <= k * (2e-2 + 1e-2 * cpu.val_loss));
  }
}

TEST_CASE("cuda optim: QAT, SWA and resume on --device cuda (bit-exact resume)", "[gpu]") {
  SKIP_WITHOUT_GPU();
  ptool_test::Corpus corpus("cuda_optim_resume");
  auto opt = ptool_test::quick(8);
  opt.device = "cuda";
  opt.qat_bits = 6;
  opt.swa_every = 2;
  opt.swa_start = 2.0;
  opt.checkpoint_every = 4;
  opt.log_every = 1;
  auto straight = corpus.in;
  straight.out_path = (corpus.dir / "straight.ptc").string();
  train::TrainCallbacks cb;
  cb.on_step = [&](const train::StepLog& s) {
    if (s.step == 5) std::filesystem::copy_file(straight.out_path, corpus.dir / "step4.ptc");
  };
  const auto a = train::train(ptool_test::micro(), opt, straight, cb);
  auto resumed = corpus.in;
  resumed.out_path = (corpus.dir / "resumed.ptc").string();
  resumed.resume_path = (corpus.dir / "step4.ptc").string();
  const auto c = train::train(ptool_test::micro(), opt, resumed);
  REQUIRE(a.losses.size() == 8);
  REQUIRE(c.losses.size() == 4);
  for (int i = 0; i < 4; ++i) CHECK(c.losses[i] == a.losses[4 + i]);
  CHECK(model::load_model(straight.out_path).weights == model::load_model(resumed.out_path).weights);
  CHECK(c.val_loss == a.val_loss);
}

// Host planning of the device step: runs without a GPU.
TEST_CASE("cuda optim: Muon matrices group by shape and scale, banks by member", "[optim]") {
  const std::vector<CudaMuonMatrix> mats = {
      {0, 1, 4, 6, 1.f}, {100, 1, 8, 6, 1.155f}, {200, 1, 4, 6, 1.f}, {300, 3, 4, 6, 1.f}, {500, 1, 0, 6, 1.f}};
  const auto g = cuda::plan_muon_groups(mats);
  REQUIRE(g.size() == 2);
  CHECK((g[0].rows == 4 && g[0].cols == 6 && g[0].scale == 1.f));
  CHECK(g[0].offs == std::vector<int64_t>{0, 200, 300, 324, 348});
  CHECK((g[1].rows == 8 && g[1].scale == 1.155f));
  CHECK(g[1].offs == std::vector<int64_t>{100});
}

TEST_CASE("cuda optim: Adam segments are cut into chunks in order", "[optim]") {
  const auto t = cuda::plan_adam_chunks({{10, 5000, 1}, {6000, 0, 2}, {7000, 4096, 3}});
  REQUIRE(t.size() == 3);
  CHECK((t[0].offset == 10 && t[0].len == cuda::kAdamChunk && t[0].group == 1));
  CHECK((t[1].offset == 10 + static_cast<size_t>(cuda::kAdamChunk) && t[1].len == 5000 - cuda::kAdamChunk));
  CHECK((t[2].offset == 7000 && t[2].len == 4096 && t[2].group == 3));
  CHECK_THROWS_AS(cuda::plan_adam_chunks({{0, 1, kCudaAdamGroups}}), Error);
}
