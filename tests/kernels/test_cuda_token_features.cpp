// Parity of the CUDA backend with the CPU reference for the ops of the seeds' token features: the learned-scale add
// that joins the value embeddings to v (scaled_add) and SmearGate. Tolerances: the element-wise results 1e-6 relative (one
// multiply-add); the scale's gradient 1e-5 of the sum of |terms| (a double sum in another order, rounded to float).
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda_backend.h"
#include "src/ops/backend.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/parity_test_util.h"

using namespace ptool;
using namespace ptool::parity_test;

using ptool::gpu_test::check_exact;
using ptool::gpu_test::Dev;

TEST_CASE("cuda: scaled add forward and backward, dy from columns of a wider matrix", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend(CudaGemmPrecision::fp32);
  std::mt19937_64 rng(401);
  for (const auto& [N, C] : {std::pair<int64_t, int64_t>{300, 256}, {7, 13}, {1, 1}}) {
    const std::string shape = " N=" + std::to_string(N) + " C=" + std::to_string(C);
    const int64_t ld = C + 6, col = 4;
    const Vec x = rand_vec(rng, static_cast<size_t>(N * C)), y0 = rand_vec(rng, x.size()), s{0.37f};
    const Vec dy = rand_vec(rng, static_cast<size_t>(N * ld)), dx0 = rand_vec(rng, x.size()), ds0{0.25f};
    Vec y = y0, dx = dx0, ds = ds0;
    cpu->scaled_add_forward(x.data(), s.data(), N, C, y.data());
    cpu->scaled_add_backward({const_cast<float*>(dy.data()), ld, col}, x.data(), s.data(), N, C, dx.data(), ds.data());
    Dev gx(*g, x), gs(*g, s), gy(*g, y0), gdy(*g, dy), gdx(*g, dx0), gds(*g, ds0);
    g->scaled_add_forward(gx.p(), gs.p(), N, C, gy.p());
    g->scaled_add_backward({gdy.p(), ld, col}, gx.p(), gs.p(), N, C, gdx.p(), gds.p());
    check_close("scaled_add_forward" + shape, gy.get(), y, 0.0, 1e-6);
    check_close("scaled_add_backward dx" + shape, gdx.get(), dx, 0.0, 1e-6);
    double terms = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) terms += std::abs(dy[n * ld + col + c] * x[n * C + c]);
    check_close("scaled_add_backward ds" + shape, gds.get(), ds, 1e-5 * terms, 0.0);
  }
}

// In the bf16 mode y (v) and dy (v's gradient) are operand buffers: the fp32 results on their rounded values,
// rounded once, whether or not the buffers hold bf16.
TEST_CASE("cuda: scaled add treats y and dy as operand buffers in the bf16 mode", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto f = gpu_backend(CudaGemmPrecision::fp32);
  auto b = gpu_backend(CudaGemmPrecision::bf16);
  CudaBackendOptions conv_opt;
  conv_opt.gemm = CudaGemmPrecision::bf16;
  conv_opt.bf16_operands = false;
  auto conv = make_cuda_backend(conv_opt);
  std::mt19937_64 rng(402);
  const int64_t N = 65, C = 96, ld = 3 * C, col = 2 * C;
  const Vec x = rand_vec(rng, static_cast<size_t>(N * C)), y0 = rand_vec(rng, x.size()), s{0.81f};
  const Vec dy = rand_vec(rng, static_cast<size_t>(N * ld));
  Dev fx(*f, x), fs(*f, s), fy(*f, bf16_rounded(y0)), fdy(*f, bf16_rounded(dy)), fdx(*f, Vec(x.size())),
      fds(*f, Vec{0.f});
  f->scaled_add_forward(fx.p(), fs.p(), N, C, fy.p());
  f->scaled_add_backward({fdy.p(), ld, col}, fx.p(), fs.p(), N, C, fdx.p(), fds.p());
  for (auto* be : {b.get(), conv.get()}) {
    const std::string tag = be == b.get() ? " (operand buffers)" : " (fp32 buffers)";
    DeviceBuffer<float> oy(*be, y0.size(), Storage::operand), ody(*be, dy.size(), Storage::operand);
    Dev hy(*be, y0), hdy(*be, dy), gx(*be, x), gs(*be, s), gdx(*be, Vec(x.size())), gds(*be, Vec{0.f}),
        yv(*be, Vec(y0.size()));
    be->store_operand(oy.get(), hy.p(), y0.size());
    be->store_operand(ody.get(), hdy.p(), dy.size());
    be->scaled_add_forward(gx.p(), gs.p(), N, C, oy.get());
    be->scaled_add_backward({ody.get(), ld, col}, gx.p(), gs.p(), N, C, gdx.p(), gds.p());
    be->operand_values(oy.get(), y0.size(), yv.p());
    check_exact("scaled_add_forward y" + tag, bf16_rounded(yv.get()), bf16_rounded(fy.get()));
    check_exact("scaled_add_backward dx" + tag, gdx.get(), fdx.get());
    check_exact("scaled_add_backward ds" + tag, gds.get(), fds.get());
  }
}

// SmearGate: y and dx within 1e-6 relative (the gate's sigmoid from expf against glibc's exp, one ulp apart at most);
// the gate's gradient within 1e-5 of the sum of |terms|.
TEST_CASE("cuda: smear gate forward and backward", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend(CudaGemmPrecision::fp32);
  std::mt19937_64 rng(403);
  for (const auto& [B, Tn, D] : {std::tuple<int64_t, int64_t, int64_t>{3, 70, 64}, {1, 1, 5}, {2, 33, 1024}}) {
    const std::string shape = " B=" + std::to_string(B) + " Tn=" + std::to_string(Tn) + " D=" + std::to_string(D);
    const size_t n = static_cast<size_t>(B * Tn * D);
    const Vec x = rand_vec(rng, n), gate = rand_vec(rng, static_cast<size_t>(D)), dy = rand_vec(rng, n);
    const Vec dg0 = rand_vec(rng, gate.size());
    Vec y(n), dx(n), dg = dg0;
    cpu->smear_forward(x.data(), gate.data(), B, Tn, D, y.data());
    cpu->smear_backward_set_dx(dy.data(), x.data(), gate.data(), B, Tn, D, dx.data(), dg.data());
    Dev gx(*g, x), gg(*g, gate), gy(*g, Vec(n, 3.f)), gdy(*g, dy), gdx(*g, Vec(n, 3.f)), gdg(*g, dg0);
    g->smear_forward(gx.p(), gg.p(), B, Tn, D, gy.p());
    g->smear_backward_set_dx(gdy.p(), gx.p(), gg.p(), B, Tn, D, gdx.p(), gdg.p());
    check_close("smear_forward" + shape, gy.get(), y, 1e-7, 1e-6);
    check_close("smear_backward dx" + shape, gdx.get(), dx, 1e-7, 1e-6);
    std::vector<double> terms(dg0.begin(), dg0.end());
    for (auto& t : terms) t = std::abs(t);
    for (size_t i = 0; i < n; ++i) {
      const size_t d = i % static_cast<size_t>(D), t = (i / static_cast<size_t>(D)) % static_cast<size_t>(Tn);
      terms[d] += std::abs(dy[i] * ((t > 0 ? x[i - static_cast<size_t>(D)] : 0.f) - x[i]));
    }
    check_close("smear_backward dg" + shape, gdg.get(), dg, 1e-5, 0.0, &terms);
  }
}
