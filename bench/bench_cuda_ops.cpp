// Times the CUDA backend (kernels/) at the baseline shapes (REFERENCE.md §3.1): the linear layers (cuBLASLt)
// and causal GQA attention, forward and backward (B=8, T=1024, d 512, 8 heads / 4 kv heads of 64, MLP 1024,
// vocab 1024; attention also at the head dims 96 and 32 of the wider presets); the fused RMSNorm + resid_mix and
// RMSNorm + channel-scale backwards against the two ops they replace, at the presets' widths 512, 768 and 1024
// (GB/s of each form's own traffic); the token features' ops (XSA, the value embedding's add, the smear gate) at
// recursive_4x7's shapes (GB/s); then the whole model's forward_backward for the tiny and baseline presets
// (tokens/s).
// Prints a table, or one JSON object with --json. Exits 1 when the build has no CUDA or there is no device.
//
//   bench_cuda_ops [--json] [--reps 20] [--gemm tf32|bf16|fp32] [--batch 8] [--seq 1024] [--device 0]
//
// Times are host wall clock around `reps` calls followed by one stream synchronization (launch overheads
// included, as in a training step), after warm-up calls; the model's forward_backward waits for its loss anyway.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#ifdef PTOOL_HAVE_CUDA
#include "kernels/cuda_backend.h"
#include "src/model/config.h"
#include "src/model/layout.h"
#include "src/model/model.h"
#endif

#ifdef PTOOL_HAVE_CUDA
namespace {

using Clock = std::chrono::steady_clock;

struct Result {
  std::string op, pass, shape;
  double ms = 0, flops = 0, tokens = 0, bytes = 0;
};

// Mean wall time of one call in ms: `warm` untimed calls, then `reps` calls and a synchronization.
double time_ms(ptool::Backend<float>& be, const std::function<void()>& f, int reps, int warm = 2) {
  for (int i = 0; i < warm; ++i) f();
  ptool::cuda_synchronize(be);
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) f();
  ptool::cuda_synchronize(be);
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / reps;
}

std::vector<float> random_vec(std::mt19937_64& rng, size_t n, float scale) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

ptool::DeviceBuffer<float> device_random(ptool::Backend<float>& be, std::mt19937_64& rng, size_t n, float scale) {
  ptool::DeviceBuffer<float> b(be, n);
  const auto h = random_vec(rng, n, scale);
  be.upload(b.get(), h.data(), n);
  return b;
}

std::vector<Result> bench_ops(ptool::Backend<float>& be, int64_t B, int64_t Tn, int reps) {
  std::mt19937_64 rng(1);
  std::vector<Result> res;
  const int64_t D = 512, H = 8, Hkv = 4, hd = 64, mlp = 1024, vocab = 1024, N = B * Tn;
  struct LinearShape {
    const char* name;
    int64_t K, M;
  };
  const LinearShape shapes[] = {{"attn.q/proj", D, D}, {"attn.k/v", D, Hkv * hd}, {"mlp.fc", D, mlp},
                                {"mlp.proj", mlp, D},  {"lm_head", D, vocab}};
  for (const auto& s : shapes) {
    auto x = device_random(be, rng, static_cast<size_t>(N * s.K), 1.f);
    auto W = device_random(be, rng, static_cast<size_t>(s.M * s.K), 0.05f);
    auto dy = device_random(be, rng, static_cast<size_t>(N * s.M), 1.f);
    ptool::DeviceBuffer<float> y(be, static_cast<size_t>(N * s.M)), dx(be, static_cast<size_t>(N * s.K)),
        dW(be, static_cast<size_t>(s.M * s.K));
    be.zero(dx.get(), dx.size());
    be.zero(dW.get(), dW.size());
    const std::string shape = std::to_string(N) + "x" + std::to_string(s.K) + " -> " + std::to_string(s.M);
    const double gemm = 2.0 * static_cast<double>(N) * static_cast<double>(s.K) * static_cast<double>(s.M);
    res.push_back({std::string("linear ") + s.name, "forward", shape,
                   time_ms(be, [&] { be.linear_forward(x.get(), W.get(), N, s.K, s.M, y.get()); }, reps), gemm, 0});
    res.push_back({std::string("linear ") + s.name, "backward", shape,
                   time_ms(be, [&] { be.linear_backward(dy.get(), x.get(), W.get(), N, s.K, s.M, dx.get(), dW.get()); },
                           reps),
                   2.0 * gemm, 0});
  }
  // Attention at the heads of the baseline (8 x 64, 4 kv), ultimate_recurrent (8 x 96, 2 kv) and recursive_4x7
  // (32 x 32, 8 kv): each head dim is its own flash kernel.
  struct AttnShape {
    int64_t H, Hkv, hd;
  };
  for (const AttnShape a : {AttnShape{H, Hkv, hd}, AttnShape{8, 2, 96}, AttnShape{32, 8, 32}}) {
    const size_t qn = static_cast<size_t>(N * a.H * a.hd), kvn = static_cast<size_t>(N * a.Hkv * a.hd);
    auto q = device_random(be, rng, qn, 1.f), k = device_random(be, rng, kvn, 1.f),
         v = device_random(be, rng, kvn, 1.f), dout = device_random(be, rng, qn, 1.f);
    ptool::DeviceBuffer<float> out(be, qn), lse(be, static_cast<size_t>(B * a.H * Tn)), dq(be, qn), dk(be, kvn),
        dv(be, kvn);
    be.zero(dq.get(), qn);
    be.zero(dk.get(), kvn);
    be.zero(dv.get(), kvn);
    // Causal FLOPs as FlashAttention's benchmarks count them: T(T+1)/2 visible pairs, 2 GEMMs forward (QK^T, PV),
    // 5 backward (QK^T, dV, dP, dQ, dK); the kernels here recompute QK^T and dP once more (7), not counted.
    const double pairs = static_cast<double>(B * a.H) * static_cast<double>(Tn) * static_cast<double>(Tn + 1) / 2.0;
    const double per_gemm = 2.0 * pairs * static_cast<double>(a.hd);
    const std::string shape = "B" + std::to_string(B) + " T" + std::to_string(Tn) + " H" + std::to_string(a.H) +
                              " Hkv" + std::to_string(a.Hkv) + " hd" + std::to_string(a.hd);
    res.push_back({"attention", "forward", shape, time_ms(be, [&] {
                     be.attention_forward(q.get(), k.get(), v.get(), B, Tn, a.H, a.Hkv, a.hd, out.get(), lse.get());
                   }, reps),
                   2.0 * per_gemm, 0});
    res.push_back({"attention", "backward", shape, time_ms(be, [&] {
                     be.attention_backward(dout.get(), q.get(), k.get(), v.get(), out.get(), lse.get(), B, Tn, a.H,
                                           a.Hkv, a.hd, dq.get(), dk.get(), dv.get());
                   }, reps),
                   5.0 * per_gemm, 0});
  }
  return res;
}

// The fused backwards of RMSNorm with resid_mix and with the channel scale (one pass each) against the ops they
// replace, at width D on fp32 buffers. Bytes as ProfilingBackend counts them: the fused resid_mix form reads dh, x,
// x0 and dx0, writes dx0 and dx (reads and writes dx: it is added to); composed, rmsnorm_backward reads dh and y and
// adds into dx, then resid_mix_backward_set_dx reads it with x and x0 and writes dx and dx0.
std::vector<Result> bench_norm_backwards(ptool::Backend<float>& be, int64_t N, int reps) {
  std::mt19937_64 rng(2);
  std::vector<Result> res;
  for (const int64_t D : {512, 768, 1024}) {
    const size_t n = static_cast<size_t>(N * D);
    const double e = static_cast<double>(n) * sizeof(float);
    auto dh = device_random(be, rng, n, 1.f), x = device_random(be, rng, n, 1.f), x0 = device_random(be, rng, n, 1.f),
         y = device_random(be, rng, n, 1.f), o = device_random(be, rng, n, 1.f), dx = device_random(be, rng, n, 1.f),
         dx0 = device_random(be, rng, n, 1.f), dout = device_random(be, rng, n, 1.f);
    auto rstd = device_random(be, rng, static_cast<size_t>(N), 1.f), m = device_random(be, rng, 2 * D, 1.f),
         s = device_random(be, rng, D, 1.f), dm = device_random(be, rng, 2 * D, 1.f),
         ds = device_random(be, rng, D, 1.f);
    const std::string shape = std::to_string(N) + "x" + std::to_string(D);
    res.push_back({"rmsnorm+resid_mix", "backward fused", shape, time_ms(be, [&] {
                     be.rmsnorm_resid_mix_backward(dh.get(), y.get(), rstd.get(), x.get(), x0.get(), m.get(), N, D,
                                                   dx.get(), dx0.get(), dm.get(), nullptr, false);
                   }, reps), 0, 0, 7 * e});
    res.push_back({"rmsnorm+resid_mix", "backward 2 ops", shape, time_ms(be, [&] {
                     be.rmsnorm_backward(dh.get(), y.get(), rstd.get(), N, D, dx.get());
                     be.resid_mix_backward_set_dx(dx.get(), x.get(), x0.get(), m.get(), N, D, dx.get(), dx0.get(),
                                                  dm.get());
                   }, reps), 0, 0, 10 * e});
    res.push_back({"rmsnorm+channel_scale", "backward fused", shape, time_ms(be, [&] {
                     be.rmsnorm_channel_scale_backward(dh.get(), y.get(), rstd.get(), o.get(), s.get(), N, D, dx.get(),
                                                       dout.get(), ds.get());
                   }, reps), 0, 0, 6 * e});
    res.push_back({"rmsnorm+channel_scale", "backward 2 ops", shape, time_ms(be, [&] {
                     be.rmsnorm_backward(dh.get(), y.get(), rstd.get(), N, D, dx.get());
                     be.channel_scale_backward_set_dx(dx.get(), o.get(), s.get(), N, D, dout.get(), ds.get());
                   }, reps), 0, 0, 7 * e});
  }
  return res;
}

// The token features' ops at recursive_4x7's shapes (D 1024, 32 heads / 8 KV of 32): XSA's forward and its two
// backward halves, the value embedding's scaled add into v and its backward, the smear gate. fp32 buffers; bytes are
// each op's own reads and writes (a value added into is read and written).
std::vector<Result> bench_token_features(ptool::Backend<float>& be, int64_t B, int64_t Tn, int reps) {
  using Slice = ptool::Backend<float>::ColumnSlice;
  std::mt19937_64 rng(4);
  std::vector<Result> res;
  const int64_t N = B * Tn, D = 1024, H = 32, Hkv = 8, hd = 32, KV = Hkv * hd;
  const double f = sizeof(float), nd = static_cast<double>(N * D) * f, nkv = static_cast<double>(N * KV) * f;
  auto att = device_random(be, rng, static_cast<size_t>(N * D), 1.f), dy = device_random(be, rng, att.size(), 1.f),
       v = device_random(be, rng, static_cast<size_t>(N * KV), 1.f), dv = device_random(be, rng, v.size(), 1.f),
       ve = device_random(be, rng, v.size(), 1.f), s = device_random(be, rng, 2, 1.f),
       gate = device_random(be, rng, static_cast<size_t>(D), 1.f), dgate = device_random(be, rng, gate.size(), 1.f);
  ptool::DeviceBuffer<float> y(be, att.size()), datt(be, att.size()), dve(be, v.size()), dx(be, att.size());
  const std::string xsa_shape = std::to_string(N) + " x " + std::to_string(H) + "/" + std::to_string(Hkv) + " x " +
                                std::to_string(hd);
  res.push_back({"xsa", "forward", xsa_shape, time_ms(be, [&] {
                   be.xsa_forward(att.get(), v.get(), N, H, Hkv, hd, y.get());
                 }, reps), 0, 0, 2 * nd + nkv});
  res.push_back({"xsa", "backward datt", xsa_shape, time_ms(be, [&] {
                   be.xsa_backward(dy.get(), att.get(), v.get(), N, H, Hkv, hd, datt.get(), Slice(nullptr));
                 }, reps), 0, 0, 3 * nd + nkv});
  res.push_back({"xsa", "backward dv", xsa_shape, time_ms(be, [&] {
                   be.xsa_backward(dy.get(), att.get(), v.get(), N, H, Hkv, hd, nullptr, Slice(dv.get()));
                 }, reps), 0, 0, 2 * nd + 3 * nkv});
  const std::string kv_shape = std::to_string(N) + "x" + std::to_string(KV);
  res.push_back({"scaled_add (ve into v)", "forward", kv_shape, time_ms(be, [&] {
                   be.scaled_add_forward(ve.get(), s.get(), N, KV, v.get());
                 }, reps), 0, 0, 3 * nkv});
  res.push_back({"scaled_add (ve into v)", "backward", kv_shape, time_ms(be, [&] {
                   be.scaled_add_backward(Slice(dv.get()), ve.get(), s.get(), N, KV, dve.get(), s.get() + 1);
                 }, reps), 0, 0, 4 * nkv});
  const std::string d_shape = std::to_string(N) + "x" + std::to_string(D);
  res.push_back({"smear_gate", "forward", d_shape, time_ms(be, [&] {
                   be.smear_forward(att.get(), gate.get(), B, Tn, D, y.get());
                 }, reps), 0, 0, 2 * nd});
  res.push_back({"smear_gate", "backward", d_shape, time_ms(be, [&] {
                   be.smear_backward_set_dx(dy.get(), att.get(), gate.get(), B, Tn, D, dx.get(), dgate.get());
                 }, reps), 0, 0, 3 * nd});
  return res;
}

Result bench_model(ptool::Backend<float>& be, const std::string& preset, int64_t B, int64_t Tn, int reps) {
  auto cfg = ptool::model::preset(preset);
  ptool::model::Model<float> m(cfg, be);
  std::vector<float> p(static_cast<size_t>(m.param_count()));
  ptool::model::init_params(cfg, m.layout(), 1, p.data());
  m.load_params(p.data());
  std::mt19937 rng(3);
  std::vector<int32_t> x(static_cast<size_t>(B * Tn)), y(x.size());
  for (auto& t : x) t = static_cast<int32_t>(rng() % cfg.vocab_size);
  for (auto& t : y) t = static_cast<int32_t>(rng() % cfg.vocab_size);
  const float gs = 1.f / static_cast<float>(B * Tn);
  const double ms = time_ms(be, [&] {
    m.zero_grads();
    m.forward_backward(x.data(), y.data(), B, Tn, gs);
  }, reps, 2);
  return {"model " + preset, "forward_backward",
          "B" + std::to_string(B) + " T" + std::to_string(Tn) + " (" + std::to_string(m.param_count()) + " params)",
          ms, 0, static_cast<double>(B * Tn)};
}

}  // namespace
#endif

int main(int argc, char** argv) {
  CLI::App app{"Benchmark the CUDA backend: linear and attention at the baseline shapes, and whole-model steps."};
  bool json = false;
  int reps = 20, device = 0;
  int64_t batch = 8, seq = 1024;
  std::string gemm = "tf32";
  app.add_flag("--json", json, "Print one JSON object instead of a table");
  app.add_option("--reps", reps, "Timed calls per op (mean reported), after 2 warm-up calls")
      ->default_val(20)
      ->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "Sequences per call (B)")->default_val(8)->check(CLI::PositiveNumber);
  app.add_option("--seq", seq, "Sequence length (T); ops see N = B * T tokens")
      ->default_val(1024)
      ->check(CLI::PositiveNumber);
  app.add_option("--gemm", gemm, "GEMM precision")->default_val("tf32")->check(CLI::IsMember({"tf32", "bf16", "fp32"}));
  app.add_option("--device", device, "CUDA device index")->default_val(0);
  CLI11_PARSE(app, argc, argv);

#ifndef PTOOL_HAVE_CUDA
  std::fprintf(stderr, "bench_cuda_ops: this build has no CUDA backend (nvcc was not found at configure time)\n");
  return 1;
#else
  if (!ptool::cuda_device_available()) {
    std::fprintf(stderr, "bench_cuda_ops: no CUDA device available\n");
    return 1;
  }
  try {
    ptool::CudaBackendOptions opt;
    opt.device = device;
    opt.gemm = ptool::parse_gemm_precision(gemm);
    auto be = ptool::make_cuda_backend(opt);
    const std::string dev = ptool::cuda_device_name(device);
    auto results = bench_ops(*be, batch, seq, reps);
    for (auto& r : bench_norm_backwards(*be, batch * seq, reps)) results.push_back(std::move(r));
    for (auto& r : bench_token_features(*be, batch, seq, reps)) results.push_back(std::move(r));
    const auto tiny_T = ptool::model::preset("tiny").train_seq_len;
    results.push_back(bench_model(*be, "tiny", std::max<int64_t>(1, batch * seq / tiny_T), tiny_T, reps));
    results.push_back(bench_model(*be, "baseline", batch, seq, std::max(1, reps / 4)));

    if (json) {
      nlohmann::json j;
      j["benchmark"] = "bench_cuda_ops";
      j["device"] = dev;
      j["gemm"] = gemm;
      j["batch"] = batch;
      j["seq"] = seq;
      j["reps"] = reps;
      j["results"] = nlohmann::json::array();
      for (const auto& r : results) {
        nlohmann::json e{{"op", r.op}, {"pass", r.pass}, {"shape", r.shape}, {"ms", r.ms}};
        if (r.flops > 0) {
          e["gflop"] = r.flops * 1e-9;
          e["tflops_per_s"] = r.flops / (r.ms * 1e-3) * 1e-12;
        }
        if (r.tokens > 0) e["tokens_per_s"] = r.tokens / (r.ms * 1e-3);
        if (r.bytes > 0) e["gb_per_s"] = r.bytes / (r.ms * 1e-3) * 1e-9;
        j["results"].push_back(e);
      }
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf("CUDA backend on %s, GEMMs %s, B=%lld T=%lld, mean of %d calls\n", dev.c_str(), gemm.c_str(),
                  static_cast<long long>(batch), static_cast<long long>(seq), reps);
      std::printf("%-22s %-17s %-34s %10s %12s\n", "op", "pass", "shape", "ms", "rate");
      for (const auto& r : results) {
        char rate[64] = "";
        if (r.flops > 0)
          std::snprintf(rate, sizeof(rate), "%.1f TFLOP/s", r.flops / (r.ms * 1e-3) * 1e-12);
        else if (r.tokens > 0)
          std::snprintf(rate, sizeof(rate), "%.0f tok/s", r.tokens / (r.ms * 1e-3));
        else if (r.bytes > 0)
          std::snprintf(rate, sizeof(rate), "%.0f GB/s", r.bytes / (r.ms * 1e-3) * 1e-9);
        std::printf("%-22s %-17s %-34s %10.3f %12s\n", r.op.c_str(), r.pass.c_str(), r.shape.c_str(), r.ms, rate);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_ops: %s\n", e.what());
    return 1;
  }
  return 0;
#endif
}
