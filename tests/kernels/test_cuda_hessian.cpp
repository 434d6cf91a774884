// GPTQ Hessians on the GPU (kernels/cuda_hessian.h) against double sums on the host, and collect_hessians on a
// CUDA backend against the CPU backend. Tagged [gpu]; skipped without a device. Tolerances and why:
// - CudaHessians on given X: 1e-13 of sum_r |x_ri x_rj| per element (both sides add the same double products,
//   in a different order).
// - collect_hessians, CPU vs CUDA fp32 backend: 1e-4 of sqrt(H_ii H_jj) per element (the inputs X come from two
//   fp32 forward passes that agree to ~1e-5 relative; H is quadratic in X).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "formats/error.h"
#include "kernels/cuda_backend.h"
#include "tests/kernels/gpu_test_util.h"
#include "kernels/cuda_hessian.h"
#include "src/model/calibrate.h"
#include "src/model/config.h"
#include "src/model/layout.h"

using namespace ptool;

namespace {

// Largest |got - want| / tol over the elements, printed as a share of the tolerance.
double worst_share(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
                   const std::vector<double>& tol) {
  REQUIRE(got.size() == want.size());
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double share = std::abs(got[i] - want[i]) / (tol[i] + 1e-300);
    if (!(share <= worst)) worst = share;
  }
  std::printf("  %-60s %7.2f%% of tolerance (n %zu)\n", what.c_str(), 100.0 * worst, got.size());
  return worst;
}

}  // namespace

TEST_CASE("cuda: CudaHessians equals X^T X summed in double on the host", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = make_cuda_backend(0);
  std::mt19937_64 rng(41);
  std::normal_distribution<float> nd(0.f, 1.f);
  struct Case {
    int64_t cols;
    std::vector<int64_t> rows;  // one add() per entry
    size_t chunk_bytes;
  };
  const Case cases[] = {{1, {1}, 1 << 20},
                        {7, {3, 100}, 1 << 20},
                        {64, {77, 1000, 5}, 64 * 64 * 8 * 3 + 8},  // chunks of 3 rows (and a partial one)
                        {300, {2048}, size_t{1} << 26}};
  for (const Case& c : cases) {
    CudaHessians hs(*g, c.chunk_bytes);
    std::vector<double> want(c.cols * c.cols, 0.0), tol(want.size(), 0.0);
    std::vector<DeviceBuffer<float>> keep;  // X stays alive until the device has read it
    for (int64_t rows : c.rows) {
      std::vector<float> X(rows * c.cols);
      for (auto& v : X) v = nd(rng);
      keep.emplace_back(*g, X.size());
      g->upload(keep.back().get(), X.data(), X.size());
      hs.add("w", keep.back().get(), rows, c.cols);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < c.cols; ++i)
          for (int64_t j = 0; j < c.cols; ++j) {
            const double p = static_cast<double>(X[r * c.cols + i]) * X[r * c.cols + j];
            want[i * c.cols + j] += p;
            tol[i * c.cols + j] += 1e-13 * std::abs(p);
          }
    }
    const auto got = hs.download();
    REQUIRE(got.size() == 1);
    CHECK(worst_share("cols " + std::to_string(c.cols) + ", " + std::to_string(c.rows.size()) + " adds",
                      got.at("w"), want, tol) <= 1.0);
    CHECK_THROWS_AS(hs.add("w", keep.back().get(), 1, c.cols + 1), Error);
  }
  auto cpu = make_cpu_backend<float>();
  CHECK_THROWS_AS(CudaHessians(*cpu), Error);
}

TEST_CASE("cuda: collect_hessians on the GPU matches the CPU backend", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  CudaBackendOptions o;
  o.gemm = CudaGemmPrecision::fp32;
  auto gpu = make_cuda_backend(o);
  for (const char* preset : {"tiny", "tiny_recurrent"}) {
    const auto cfg = model::preset(preset);
    const auto L = model::make_layout(cfg);
    std::vector<float> params(static_cast<size_t>(L.total));
    model::init_params(cfg, L, 3, params.data());
    std::mt19937_64 rng(43);
    const int64_t T = 64, B = 3, batches = 2;
    std::vector<uint16_t> tokens(static_cast<size_t>(batches * B * T + 1));
    for (auto& t : tokens) t = static_cast<uint16_t>(rng() % cfg.vocab_size);
    model::Model<float> mc(cfg, *cpu), mg(cfg, *gpu);
    mc.load_params(params.data());
    mg.load_params(params.data());
    const auto want = model::collect_hessians(mc, tokens, T, B, batches);
    const auto got = model::collect_hessians(mg, tokens, T, B, batches);
    REQUIRE(got.size() == want.size());
    for (const auto& [name, hw] : want) {
      INFO(preset << " " << name);
      REQUIRE(got.count(name) == 1);
      const auto& hg = got.at(name);
      CHECK(hg.cols == hw.cols);
      CHECK(hg.batches == hw.batches);
      std::vector<double> tol(hw.H.size());
      for (int64_t i = 0; i < hw.cols; ++i)
        for (int64_t j = 0; j < hw.cols; ++j)
          tol[i * hw.cols + j] = 1e-4 * std::sqrt(hw.H[i * hw.cols + i] * hw.H[j * hw.cols + j]) + 1e-12;
      CHECK(worst_share(std::string(preset) + " " + name, hg.H, hw.H, tol) <= 1.0);
    }
  }
}
