// Times the CPU reference ops that dominate a training step: the linear layers (Eigen GEMMs) and causal
// GQA attention, forward and backward, at the baseline shapes (REFERENCE.md §3.1: 1024 tokens, d 512,
// 8 heads / 4 kv heads of 64, MLP 1024, vocab 1024). Prints a table, or one JSON object with --json.
//
//   build-ops/bench_cpu_ops [--json] [--reps 5] [--tokens 1024] [--seq 1024] [--dtype float|double]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "src/ops/cpu_ops.h"

namespace {

using Clock = std::chrono::steady_clock;

// Median wall time of `reps` calls after one warm-up call, in seconds.
double time_median(const std::function<void()>& f, int reps) {
  f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

template <class T> std::vector<T> random_vec(std::mt19937_64& rng, size_t n, double scale) {
  std::uniform_real_distribution<double> u(-scale, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(u(rng));
  return v;
}

struct Result {
  std::string op, pass, shape;
  double seconds, flops;
};

template <class T> std::vector<Result> run(int64_t tokens, int64_t seq, int reps) {
  std::mt19937_64 rng(1);
  std::vector<Result> res;
  const int64_t D = 512, H = 8, Hkv = 4, hd = 64, mlp = 1024, vocab = 1024;

  struct LinearShape {
    const char* name;
    int64_t K, M;
  };
  const LinearShape shapes[] = {{"attn.q/proj", D, D}, {"attn.k/v", D, Hkv * hd}, {"mlp.fc", D, mlp},
                                {"mlp.proj", mlp, D},  {"lm_head", D, vocab}};
  for (const auto& s : shapes) {
    const int64_t N = tokens;
    auto x = random_vec<T>(rng, static_cast<size_t>(N * s.K), 1.0);
    auto W = random_vec<T>(rng, static_cast<size_t>(s.M * s.K), 0.05);
    auto y = std::vector<T>(static_cast<size_t>(N * s.M));
    auto dy = random_vec<T>(rng, y.size(), 1.0);
    std::vector<T> dx(x.size()), dW(W.size());
    const std::string shape = std::to_string(N) + "x" + std::to_string(s.K) + " -> " + std::to_string(s.M);
    const double gemm = 2.0 * static_cast<double>(N) * static_cast<double>(s.K) * static_cast<double>(s.M);
    res.push_back({std::string("linear ") + s.name, "forward", shape,
                   time_median([&] { ptool::cpu::linear_forward(x.data(), W.data(), N, s.K, s.M, y.data()); }, reps),
                   gemm});
    res.push_back({std::string("linear ") + s.name, "backward", shape, time_median([&] {
                     ptool::cpu::linear_backward(dy.data(), x.data(), W.data(), N, s.K, s.M, dx.data(), dW.data());
                   }, reps),
                   2.0 * gemm});
  }

  {
    const int64_t B = std::max<int64_t>(1, tokens / seq), Tn = seq;
    const size_t qn = static_cast<size_t>(B * Tn * H * hd), kvn = static_cast<size_t>(B * Tn * Hkv * hd);
    auto q = random_vec<T>(rng, qn, 1.0), k = random_vec<T>(rng, kvn, 1.0), v = random_vec<T>(rng, kvn, 1.0);
    auto dout = random_vec<T>(rng, qn, 1.0);
    std::vector<T> out(qn), lse(static_cast<size_t>(B * H * Tn)), dq(qn), dk(kvn), dv(kvn);
    // Causal FLOPs (the convention of FlashAttention's benchmarks): the T(T+1)/2 visible (query, key) pairs,
    // 2 GEMMs in the forward (QK^T, PV) and 5 in the backward (QK^T again, dV, dP, dQ, dK), 2 flops per MAC.
    const double pairs = static_cast<double>(B * H) * static_cast<double>(Tn) * static_cast<double>(Tn + 1) / 2.0;
    const double per_gemm = 2.0 * pairs * static_cast<double>(hd);
    const std::string shape = "B" + std::to_string(B) + " T" + std::to_string(Tn) + " H" + std::to_string(H) +
                              " Hkv" + std::to_string(Hkv) + " hd" + std::to_string(hd);
    res.push_back({"attention", "forward", shape, time_median([&] {
                     ptool::cpu::attention_forward(q.data(), k.data(), v.data(), B, Tn, H, Hkv, hd, out.data(),
                                                   lse.data());
                   }, reps),
                   2.0 * per_gemm});
    res.push_back({"attention", "backward", shape, time_median([&] {
                     ptool::cpu::attention_backward(dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(),
                                                    B, Tn, H, Hkv, hd, dq.data(), dk.data(), dv.data());
                   }, reps),
                   5.0 * per_gemm});
  }
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Benchmark the CPU reference linear and attention ops at the baseline shapes."};
  bool json = false;
  int reps = 5;
  int64_t tokens = 1024, seq = 1024;
  std::string dtype = "float";
  app.add_flag("--json", json, "Print one JSON object instead of a table");
  app.add_option("--reps", reps, "Timed repetitions per op (median reported), after one warm-up call")
      ->default_val(5)
      ->check(CLI::PositiveNumber);
  app.add_option("--tokens", tokens, "Tokens per call (batch * seq)")->default_val(1024)->check(CLI::PositiveNumber);
  app.add_option("--seq", seq, "Attention sequence length; batch = tokens / seq")
      ->default_val(1024)
      ->check(CLI::PositiveNumber);
  app.add_option("--dtype", dtype, "Element type")->default_val("float")->check(CLI::IsMember({"float", "double"}));
  CLI11_PARSE(app, argc, argv);

  const auto results = dtype == "float" ? run<float>(tokens, seq, reps) : run<double>(tokens, seq, reps);
#ifdef _OPENMP
  const bool openmp = true;
#else
  const bool openmp = false;
#endif

  if (json) {
    nlohmann::json j;
    j["benchmark"] = "bench_cpu_ops";
    j["dtype"] = dtype;
    j["tokens"] = tokens;
    j["seq"] = seq;
    j["reps"] = reps;
    j["openmp"] = openmp;
    j["results"] = nlohmann::json::array();
    for (const auto& r : results) {
      j["results"].push_back({{"op", r.op},
                              {"pass", r.pass},
                              {"shape", r.shape},
                              {"ms", r.seconds * 1e3},
                              {"gflop", r.flops * 1e-9},
                              {"gflops_per_s", r.flops / r.seconds * 1e-9}});
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("CPU ops, %s, %lld tokens, median of %d (OpenMP %s)\n", dtype.c_str(), static_cast<long long>(tokens),
                reps, openmp ? "on" : "off");
    std::printf("%-22s %-9s %-30s %10s %10s\n", "op", "pass", "shape", "ms", "GFLOP/s");
    for (const auto& r : results) {
      std::printf("%-22s %-9s %-30s %10.3f %10.2f\n", r.op.c_str(), r.pass.c_str(), r.shape.c_str(),
                  r.seconds * 1e3, r.flops / r.seconds * 1e-9);
    }
  }
  return 0;
}
