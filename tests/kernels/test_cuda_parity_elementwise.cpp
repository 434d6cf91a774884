// Parity of the CUDA backend with the CPU reference, the element-wise and row-wise ops and their fused forms:
// scales, residual adds, RMSNorm fusions, RoPE and q/k preparation, activations, skips and resid_mix, the fused
// backwards and the layer entry. Tolerances and their reasons: tests/kernels/parity_test_util.h.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda_backend.h"
#include "src/ops/backend.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/parity_test_util.h"

using namespace ptool;
using namespace ptool::parity_test;

using ptool::gpu_test::check_exact;
using ptool::gpu_test::Dev;

TEST_CASE("cuda: channel scale and head scale", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(6);
  for (int it = 0; it < 5; ++it) {
    const int64_t N = rand_int(rng, 1, 3000), D = pick(rng, {1, 7, 64, 512});
    const std::string shape = " N=" + std::to_string(N) + " D=" + std::to_string(D);
    const Vec x = rand_vec(rng, N * D), s = rand_vec(rng, D, 0.5f, 1.5f), dy = rand_vec(rng, N * D);
    const Vec dx0 = rand_vec(rng, N * D), ds0 = rand_vec(rng, D);
    Vec y(N * D), dx = dx0, ds = ds0;
    cpu->channel_scale_forward(x.data(), s.data(), N, D, y.data());
    cpu->channel_scale_backward(dy.data(), x.data(), s.data(), N, D, dx.data(), ds.data());
    Dev gx(*g, x), gs(*g, s), gdy(*g, dy), gy(*g, Vec(N * D)), gdx(*g, dx0), gds(*g, ds0);
    g->channel_scale_forward(gx.p(), gs.p(), N, D, gy.p());
    g->channel_scale_backward(gdy.p(), gx.p(), gs.p(), N, D, gdx.p(), gds.p());
    check_exact("channel_scale_forward" + shape, gy.get(), y);
    check_close("channel_scale_backward dx" + shape, gdx.get(), dx, 1e-7, 1e-6);
    const auto sc = col_abs_sum(dy, x, N, D, ds0);
    check_close("channel_scale_backward ds" + shape, gds.get(), ds, 1e-5, 0.0, &sc);
    Dev gds2(*g, ds0);
    g->channel_scale_backward(gdy.p(), gx.p(), gs.p(), N, D, nullptr, gds2.p());
    check_close("channel_scale_backward ds only" + shape, gds2.get(), ds, 1e-5, 0.0, &sc);
  }
  for (int it = 0; it < 5; ++it) {
    const int64_t N = rand_int(rng, 1, 2000), H = pick(rng, {1, 3, 8}), hd = pick(rng, {2, 16, 64, 128});
    const std::string shape = " N=" + std::to_string(N) + " H=" + std::to_string(H) + " hd=" + std::to_string(hd);
    const Vec x = rand_vec(rng, N * H * hd), gg = rand_vec(rng, H, 0.5f, 2.f), dy = rand_vec(rng, N * H * hd);
    const Vec dx0 = rand_vec(rng, N * H * hd), dg0 = rand_vec(rng, H);
    Vec y(N * H * hd), dx = dx0, dg = dg0;
    cpu->head_scale_forward(x.data(), gg.data(), N, H, hd, y.data());
    cpu->head_scale_backward(dy.data(), x.data(), gg.data(), N, H, hd, dx.data(), dg.data());
    Dev gx(*g, x), ggg(*g, gg), gdy(*g, dy), gy(*g, Vec(N * H * hd)), gdx(*g, dx0), gdg(*g, dg0);
    g->head_scale_forward(gx.p(), ggg.p(), N, H, hd, gy.p());
    g->head_scale_backward(gdy.p(), gx.p(), ggg.p(), N, H, hd, gdx.p(), gdg.p());
    check_exact("head_scale_forward" + shape, gy.get(), y);
    check_close("head_scale_backward dx" + shape, gdx.get(), dx, 1e-7, 1e-6);
    std::vector<double> sc(static_cast<size_t>(H));
    for (int64_t h = 0; h < H; ++h) {
      sc[h] = std::abs(dg0[h]);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < hd; ++i) sc[h] += std::abs(dy[(n * H + h) * hd + i] * x[(n * H + h) * hd + i]);
    }
    check_close("head_scale_backward dg" + shape, gdg.get(), dg, 1e-5, 0.0, &sc);
    g->head_scale_forward(gx.p(), ggg.p(), N, H, hd, gx.p());  // in place
    check_exact("head_scale_forward in place" + shape, gx.get(), y);
  }
}

TEST_CASE("cuda: scaled residual is exactly channel scale then add", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(16);
  for (int it = 0; it < 8; ++it) {
    // D = 6 and odd offsets take the scalar path; D = 64 and 512 on aligned buffers the float4 one.
    const int64_t N = rand_int(rng, 1, 2000), D = pick(rng, {1, 6, 64, 512}), off = pick(rng, {0, 1});
    const std::string shape = " N=" + std::to_string(N) + " D=" + std::to_string(D) + " offset=" +
                              std::to_string(off);
    const Vec x = rand_vec(rng, N * D + off), o = rand_vec(rng, N * D + off), s = rand_vec(rng, D, -2.f, 2.f);
    Vec want(N * D);
    cpu->channel_scale_forward(o.data() + off, s.data(), N, D, want.data());
    cpu->add(want.data(), x.data() + off, static_cast<size_t>(N * D));
    Dev gx(*g, x), go(*g, o), gs(*g, s), gy(*g, Vec(N * D + off));
    g->scaled_residual_forward(gx.p() + off, go.p() + off, gs.p(), N, D, gy.p() + off);
    Vec got = gy.get();
    got.erase(got.begin(), got.begin() + off);
    check_exact("scaled_residual_forward" + shape, got, want);
  }
}

TEST_CASE("cuda: fused residual add + rmsnorm equals the two ops", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(17);
  const float eps = std::numeric_limits<float>::epsilon();
  for (int it = 0; it < 6; ++it) {
    const int64_t N = rand_int(rng, 1, 2000), D = pick(rng, {1, 33, 64, 512, 1000});
    const std::string shape = " N=" + std::to_string(N) + " D=" + std::to_string(D);
    const Vec x = rand_vec(rng, N * D, -3.f, 3.f), o = rand_vec(rng, N * D), s = rand_vec(rng, D, -2.f, 2.f);
    Vec y(N * D), h(N * D), rstd(N);
    cpu->scaled_residual_forward(x.data(), o.data(), s.data(), N, D, y.data());
    cpu->rmsnorm_forward(y.data(), N, D, eps, h.data(), rstd.data());
    // The same kernels composed on the device: the fused one must match them bit for bit.
    Dev gx(*g, x), go(*g, o), gs(*g, s), gy(*g, Vec(N * D)), gh(*g, Vec(N * D)), gr(*g, Vec(N));
    g->scaled_residual_forward(gx.p(), go.p(), gs.p(), N, D, gy.p());
    g->rmsnorm_forward(gy.p(), N, D, eps, gh.p(), gr.p());
    Dev fy(*g, Vec(N * D)), fh(*g, Vec(N * D)), fr(*g, Vec(N));
    g->scaled_residual_rmsnorm_forward(gx.p(), go.p(), gs.p(), N, D, eps, fy.p(), fh.p(), fr.p());
    check_exact("scaled_residual_rmsnorm_forward y" + shape, fy.get(), y);
    check_exact("scaled_residual_rmsnorm_forward h (device ops)" + shape, fh.get(), gh.get());
    check_exact("scaled_residual_rmsnorm_forward rstd (device ops)" + shape, fr.get(), gr.get());
    check_close("scaled_residual_rmsnorm_forward h" + shape, fh.get(), h, 1e-7, 2e-6);
    check_close("scaled_residual_rmsnorm_forward rstd" + shape, fr.get(), rstd, 0.0, 2e-6);
  }
}

TEST_CASE("cuda: fused resid_mix + rmsnorm equals the two ops", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(53);
  const float eps = std::numeric_limits<float>::epsilon();
  for (int it = 0; it < 5; ++it) {
    const int64_t N = rand_int(rng, 1, 2000), D = pick(rng, {1, 33, 64, 512});
    const std::string shape = " N=" + std::to_string(N) + " D=" + std::to_string(D);
    const Vec x = rand_vec(rng, N * D, -3.f, 3.f), x0 = rand_vec(rng, N * D), m = rand_vec(rng, 2 * D, -2.f, 2.f);
    Vec y(N * D), h(N * D), rstd(N);
    cpu->resid_mix_forward(x.data(), x0.data(), m.data(), N, D, y.data());
    cpu->rmsnorm_forward(y.data(), N, D, eps, h.data(), rstd.data());
    Dev gx(*g, x), gx0(*g, x0), gm(*g, m), gy(*g, Vec(N * D)), gh(*g, Vec(N * D)), gr(*g, Vec(N));
    g->resid_mix_forward(gx.p(), gx0.p(), gm.p(), N, D, gy.p());
    g->rmsnorm_forward(gy.p(), N, D, eps, gh.p(), gr.p());
    Dev fy(*g, Vec(N * D)), fh(*g, Vec(N * D)), fr(*g, Vec(N));
    g->resid_mix_rmsnorm_forward(gx.p(), gx0.p(), gm.p(), N, D, eps, fy.p(), fh.p(), fr.p());
    check_exact("resid_mix_rmsnorm_forward y (device ops)" + shape, fy.get(), gy.get());
    check_exact("resid_mix_rmsnorm_forward h (device ops)" + shape, fh.get(), gh.get());
    check_exact("resid_mix_rmsnorm_forward rstd (device ops)" + shape, fr.get(), gr.get());
    check_close("resid_mix_rmsnorm_forward y" + shape, fy.get(), y, 1e-7, 1e-6);
    check_close("resid_mix_rmsnorm_forward h" + shape, fh.get(), h, 1e-6, 4e-6);
  }
}

TEST_CASE("cuda: rope forward and backward (partial rotary dims)", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(7);
  for (int it = 0; it < 8; ++it) {
    const int64_t B = rand_int(rng, 1, 3), Tn = rand_int(rng, 1, 300), H = pick(rng, {1, 2, 8});
    const int64_t hd = pick(rng, {4, 16, 64, 128});
    const int64_t rot = std::min<int64_t>(hd, pick(rng, {0, 2, 8, 16, 64, 128}));
    const double base = it % 2 ? 10000.0 : 500000.0;
    const std::string shape = " B=" + std::to_string(B) + " T=" + std::to_string(Tn) + " H=" + std::to_string(H) +
                              " hd=" + std::to_string(hd) + " rot=" + std::to_string(rot);
    const Vec x = rand_vec(rng, B * Tn * H * hd);
    Vec f = x, b = x;
    cpu->rope_forward(f.data(), B, Tn, H, hd, rot, base);
    cpu->rope_backward(b.data(), B, Tn, H, hd, rot, base);
    Dev gf(*g, x), gb(*g, x);
    g->rope_forward(gf.p(), B, Tn, H, hd, rot, base);
    g->rope_backward(gb.p(), B, Tn, H, hd, rot, base);
    check_close("rope_forward" + shape, gf.get(), f, 1e-6, 0.0);
    check_close("rope_backward" + shape, gb.get(), b, 1e-6, 0.0);
    g->rope_backward(gf.p(), B, Tn, H, hd, rot, base);  // the inverse rotation
    check_close("rope backward(forward(x)) == x" + shape, gf.get(), x, 2e-6, 0.0);
  }
  Dev gx(*g, Vec(64));
  CHECK_THROWS_AS(g->rope_forward(gx.p(), 1, 1, 1, 16, 3, 10000.0), std::invalid_argument);
  CHECK_THROWS_AS(g->rope_forward(gx.p(), 1, 1, 1, 16, 18, 10000.0), std::invalid_argument);
}

TEST_CASE("cuda: fused q/k preparation (QK norm, partial rope, gain) matches the composed ops", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(31);
  for (int it = 0; it < 12; ++it) {
    const bool norm = it % 2 == 0, gain = it % 3 != 2;
    const int64_t B = rand_int(rng, 1, 2), Tn = rand_int(rng, 1, 90), H = pick(rng, {1, 2, 4});
    const int64_t hd = pick(rng, {16, 64, 128});
    const int64_t rot = std::min<int64_t>(hd, pick(rng, {0, 8, 16, 64, 128}));
    const double base = it % 2 ? 10000.0 : 500000.0;
    const std::string shape = " B=" + std::to_string(B) + " T=" + std::to_string(Tn) + " H=" + std::to_string(H) +
                              " hd=" + std::to_string(hd) + " rot=" + std::to_string(rot) + (norm ? " norm" : "") +
                              (gain ? " gain" : "");
    const size_t n = static_cast<size_t>(B * Tn * H * hd), rows = static_cast<size_t>(B * Tn * H);
    const Vec raw = rand_vec(rng, n, -2.f, 2.f), gains = rand_vec(rng, static_cast<size_t>(H), 0.5f, 2.f);
    const Vec dx = rand_vec(rng, n);
    Vec rstd(rows), x(n), out(n), d = dx, draw(n, 7.f);
    cpu->qk_prep_forward(raw.data(), B, Tn, H, hd, rot, base, norm, 1e-6f, gain ? gains.data() : nullptr,
                         rstd.data(), x.data(), gain ? out.data() : x.data());
    cpu->qk_prep_backward(d.data(), raw.data(), rstd.data(), B, Tn, H, hd, rot, base, norm, draw.data());
    Dev graw(*g, raw), ggain(*g, gains), grstd(*g, Vec(rows)), gx(*g, Vec(n)), gout(*g, Vec(n)), gd(*g, dx);
    Dev gdraw(*g, Vec(n, 7.f));
    g->qk_prep_forward(graw.p(), B, Tn, H, hd, rot, base, norm, 1e-6f, gain ? ggain.p() : nullptr, grstd.p(), gx.p(),
                       gain ? gout.p() : gx.p());
    g->qk_prep_backward(gd.p(), graw.p(), grstd.p(), B, Tn, H, hd, rot, base, norm, gdraw.p());
    check_close("qk_prep_forward x" + shape, gx.get(), x, 2e-6, 2e-6);
    if (gain) {
      check_close("qk_prep_forward out" + shape, gout.get(), out, 2e-6, 2e-6);
      // out == x: only the gained values are kept (a forward-only pass)
      Dev gonly(*g, Vec(n));
      g->qk_prep_forward(graw.p(), B, Tn, H, hd, rot, base, norm, 1e-6f, ggain.p(), grstd.p(), gonly.p(), gonly.p());
      check_exact("qk_prep_forward out == x" + shape, gonly.get(), gout.get());
    }
    if (norm) check_close("qk_prep_forward rstd" + shape, grstd.get(), rstd, 0.0, 2e-6);
    check_close("qk_prep_backward d (rotated back)" + shape, gd.get(), d, 2e-6, 0.0);
    check_close("qk_prep_backward draw" + shape, gdraw.get(), draw, 1e-5, 1e-5);  // untouched without norm
  }
  // x may alias raw.
  const Vec raw = rand_vec(rng, 2 * 5 * 2 * 64);
  Vec x = raw, rstd(20);
  cpu->qk_prep_forward(x.data(), 2, 5, 2, 64, 32, 10000.0, true, 1e-6f, nullptr, rstd.data(), x.data(), x.data());
  Dev gx(*g, raw), grstd(*g, Vec(20));
  g->qk_prep_forward(gx.p(), 2, 5, 2, 64, 32, 10000.0, true, 1e-6f, nullptr, grstd.p(), gx.p(), gx.p());
  check_close("qk_prep_forward in place", gx.get(), x, 2e-6, 2e-6);
  CHECK_THROWS_AS(g->qk_prep_forward(gx.p(), 1, 1, 1, 16, 3, 10000.0, false, 1e-6f, nullptr, nullptr, gx.p(), gx.p()),
                  std::invalid_argument);
}

TEST_CASE("cuda: activations", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(9);
  for (auto act : {cpu::Activation::relu2, cpu::Activation::leaky_relu2}) {
    const std::string name = act == cpu::Activation::relu2 ? "relu2" : "leaky_relu2";
    const int64_t n = rand_int(rng, 1, 100000);
    const Vec h = rand_vec(rng, n, -3.f, 3.f), dout = rand_vec(rng, n), dh0 = rand_vec(rng, n);
    Vec out(n), dh = dh0;
    cpu->activation_forward(act, h.data(), n, out.data());
    cpu->activation_backward(act, dout.data(), h.data(), n, dh.data());
    Dev gh(*g, h), gout(*g, Vec(n)), gdout(*g, dout), gdh(*g, dh0);
    g->activation_forward(act, gh.p(), n, gout.p());
    g->activation_backward(act, gdout.p(), gh.p(), n, gdh.p());
    check_exact(name + " forward", gout.get(), out);
    check_close(name + " backward (accumulated)", gdh.get(), dh, 1e-7, 1e-6);
  }
}

// The *_set backwards overwrite the input gradient: the device buffer starts as NaN, so a kernel that read it
// (added instead of writing) would leave NaN behind. The CPU runs its defaults (zero, then the accumulating op);
// parameter gradients start non-zero and must still accumulate.
TEST_CASE("cuda: backwards that overwrite the input gradient", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  std::mt19937_64 rng(18);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (auto prec : kAllPrecisions) {
    auto g = gpu_backend(prec);
    const std::string mode = tag_of(prec);
    for (int it = 0; it < 3; ++it) {
      const int64_t N = rand_int(rng, 1, 300), K = rand_int(rng, 1, 300), M = rand_int(rng, 1, 300);
      const std::string shape = " N=" + std::to_string(N) + " K=" + std::to_string(K) + " M=" + std::to_string(M);
      const Vec x = rand_ints(rng, N * K, -8, 8), W = rand_ints(rng, M * K, -8, 8), dy = rand_ints(rng, N * M, -8, 8);
      const Vec dW0 = rand_ints(rng, M * K, -100, 100);
      Vec dx(N * K, 7.f), dW = dW0;
      cpu->linear_backward_set_dx(dy.data(), x.data(), W.data(), N, K, M, dx.data(), dW.data());
      Dev gx(*g, x), gW(*g, W), gdy(*g, dy), gdx(*g, Vec(N * K, nan)), gdW(*g, dW0);
      g->linear_backward_set_dx(gdy.p(), gx.p(), gW.p(), N, K, M, gdx.p(), gdW.p());
      check_close("linear_backward_set_dx dx (exact; -0 == +0)" + mode + shape, gdx.get(), dx, 0.0, 0.0);
      check_exact("linear_backward_set_dx dW (accumulated)" + mode + shape, gdW.get(), dW);
    }
  }
  auto g = gpu_backend();
  for (int it = 0; it < 4; ++it) {
    const int64_t N = rand_int(rng, 1, 2000), H = pick(rng, {1, 3, 8}), hd = pick(rng, {2, 16, 64});
    const int64_t D = H * hd;
    const std::string shape = " N=" + std::to_string(N) + " H=" + std::to_string(H) + " hd=" + std::to_string(hd);
    const Vec x = rand_vec(rng, N * D), dy = rand_vec(rng, N * D), s = rand_vec(rng, D, 0.5f, 1.5f),
              gain = rand_vec(rng, H, 0.5f, 2.f), ds0 = rand_vec(rng, D), dg0 = rand_vec(rng, H);
    Vec dx(N * D, 7.f), ds = ds0, dxh(N * D, 7.f), dg = dg0;
    cpu->channel_scale_backward_set_dx(dy.data(), x.data(), s.data(), N, D, dx.data(), ds.data());
    cpu->head_scale_backward_set_dx(dy.data(), x.data(), gain.data(), N, H, hd, dxh.data(), dg.data());
    Dev gx(*g, x), gdy(*g, dy), gs(*g, s), ggain(*g, gain), gdx(*g, Vec(N * D, nan)), gds(*g, ds0),
        gdxh(*g, Vec(N * D, nan)), gdg(*g, dg0);
    g->channel_scale_backward_set_dx(gdy.p(), gx.p(), gs.p(), N, D, gdx.p(), gds.p());
    g->head_scale_backward_set_dx(gdy.p(), gx.p(), ggain.p(), N, H, hd, gdxh.p(), gdg.p());
    check_close("channel_scale_backward_set_dx dx" + shape, gdx.get(), dx, 0.0, 1e-7);
    const auto sc = col_abs_sum(dy, x, N, D, ds0);
    check_close("channel_scale_backward_set_dx ds (accumulated)" + shape, gds.get(), ds, 1e-5, 0.0, &sc);
    check_close("head_scale_backward_set_dx dx" + shape, gdxh.get(), dxh, 0.0, 1e-7);
    std::vector<double> sch(static_cast<size_t>(H));
    for (int64_t h = 0; h < H; ++h) {
      sch[h] = std::abs(dg0[h]);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < hd; ++i) sch[h] += std::abs(dy[(n * H + h) * hd + i] * x[(n * H + h) * hd + i]);
    }
    check_close("head_scale_backward_set_dx dg (accumulated)" + shape, gdg.get(), dg, 1e-5, 0.0, &sch);
    // RMSNorm's (x as its input) and skip_add's (x as the skip, s as its weights)
    Vec h(N * D), rstd(N), dxr(N * D, 7.f), dskip(N * D, 7.f), dw = ds0;
    cpu->rmsnorm_forward(x.data(), N, D, 1e-6f, h.data(), rstd.data());
    cpu->rmsnorm_backward_set(dy.data(), x.data(), rstd.data(), N, D, dxr.data());
    cpu->skip_add_backward_set(dy.data(), x.data(), s.data(), N, D, dskip.data(), dw.data());
    Dev grstd(*g, rstd), gdxr(*g, Vec(N * D, nan)), gdskip(*g, Vec(N * D, nan)), gdw(*g, ds0);
    g->rmsnorm_backward_set(gdy.p(), gx.p(), grstd.p(), N, D, gdxr.p());
    g->skip_add_backward_set(gdy.p(), gx.p(), gs.p(), N, D, gdskip.p(), gdw.p());
    check_close("rmsnorm_backward_set dx" + shape, gdxr.get(), dxr, 1e-6, 2e-6);
    check_close("skip_add_backward_set dskip" + shape, gdskip.get(), dskip, 0.0, 1e-7);
    check_close("skip_add_backward_set dw (accumulated)" + shape, gdw.get(), dw, 1e-5, 0.0, &sc);
  }
  for (auto act : {cpu::Activation::relu2, cpu::Activation::leaky_relu2}) {
    const int64_t n = rand_int(rng, 1, 100000);
    const Vec h = rand_vec(rng, n, -3.f, 3.f), dout = rand_vec(rng, n);
    Vec dh(n, 7.f);
    cpu->activation_backward_set(act, dout.data(), h.data(), n, dh.data());
    Dev gh(*g, h), gdout(*g, dout), gdh(*g, Vec(n, nan));
    g->activation_backward_set(act, gdout.p(), gh.p(), n, gdh.p());
    check_close(std::string(act == cpu::Activation::relu2 ? "relu2" : "leaky_relu2") + " backward_set", gdh.get(), dh,
                0.0, 1e-6);
  }
}

TEST_CASE("cuda: skip_add, gated_skip, resid_mix", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(10);
  for (int it = 0; it < 4; ++it) {
    const int64_t N = rand_int(rng, 1, 3000), D = pick(rng, {1, 9, 64, 512});
    const std::string shape = " N=" + std::to_string(N) + " D=" + std::to_string(D);
    const Vec x = rand_vec(rng, N * D), x0 = rand_vec(rng, N * D), skip = rand_vec(rng, N * D),
              dy = rand_vec(rng, N * D);
    const Vec w = rand_vec(rng, D, 0.f, 2.f), gate = rand_vec(rng, D, -3.f, 3.f), m = rand_vec(rng, 2 * D, 0.f, 2.f);
    const Vec da0 = rand_vec(rng, N * D), db0 = rand_vec(rng, N * D), dw0 = rand_vec(rng, D), dg0 = rand_vec(rng, D),
              dm0 = rand_vec(rng, 2 * D);
    Dev gx(*g, x), gx0(*g, x0), gskip(*g, skip), gdy(*g, dy), gw(*g, w), ggate(*g, gate), gm(*g, m);

    {  // skip_add
      Vec y = x, ds = da0, dw = dw0;
      cpu->skip_add_forward(y.data(), skip.data(), w.data(), N, D);
      cpu->skip_add_backward(dy.data(), skip.data(), w.data(), N, D, ds.data(), dw.data());
      Dev gy(*g, x), gds(*g, da0), gdw(*g, dw0);
      g->skip_add_forward(gy.p(), gskip.p(), gw.p(), N, D);
      g->skip_add_backward(gdy.p(), gskip.p(), gw.p(), N, D, gds.p(), gdw.p());
      check_close("skip_add_forward" + shape, gy.get(), y, 1e-7, 1e-6);
      check_close("skip_add_backward dskip" + shape, gds.get(), ds, 1e-7, 1e-6);
      const auto sc = col_abs_sum(dy, skip, N, D, dw0);
      check_close("skip_add_backward dw" + shape, gdw.get(), dw, 1e-5, 0.0, &sc);
    }
    {  // gated_skip
      Vec y(N * D), dx = da0, ds = db0, dw = dw0, dg = dg0;
      cpu->gated_skip_forward(x.data(), skip.data(), w.data(), gate.data(), N, D, y.data());
      cpu->gated_skip_backward(dy.data(), x.data(), skip.data(), w.data(), gate.data(), N, D, dx.data(), ds.data(),
                               dw.data(), dg.data());
      Dev gy(*g, Vec(N * D)), gdx(*g, da0), gds(*g, db0), gdw(*g, dw0), gdg(*g, dg0);
      g->gated_skip_forward(gx.p(), gskip.p(), gw.p(), ggate.p(), N, D, gy.p());
      g->gated_skip_backward(gdy.p(), gx.p(), gskip.p(), gw.p(), ggate.p(), N, D, gdx.p(), gds.p(), gdw.p(), gdg.p());
      check_close("gated_skip_forward" + shape, gy.get(), y, 1e-7, 2e-6);
      check_close("gated_skip_backward dx" + shape, gdx.get(), dx, 1e-7, 2e-6);
      check_close("gated_skip_backward dskip" + shape, gds.get(), ds, 1e-7, 2e-6);
      // |terms| <= |skip dy| for dw and <= (|x| + |w skip|) |dy| / 4 for dg: scale by both sums
      auto sc = col_abs_sum(dy, skip, N, D, dw0);
      const auto sx = col_abs_sum(dy, x, N, D, dg0);
      for (int64_t d = 0; d < D; ++d)
        sc[d] = std::max(1.0, static_cast<double>(w[d])) * (sc[d] + sx[d]) + std::abs(dw0[d]);
      check_close("gated_skip_backward dw" + shape, gdw.get(), dw, 1e-5, 0.0, &sc);
      check_close("gated_skip_backward dg" + shape, gdg.get(), dg, 1e-5, 0.0, &sc);
    }
    {  // resid_mix
      Vec y(N * D), dx = da0, dx0 = db0, dm = dm0;
      cpu->resid_mix_forward(x.data(), x0.data(), m.data(), N, D, y.data());
      cpu->resid_mix_backward(dy.data(), x.data(), x0.data(), m.data(), N, D, dx.data(), dx0.data(), dm.data());
      Dev gy(*g, Vec(N * D)), gdx(*g, da0), gdx0(*g, db0), gdm(*g, dm0);
      g->resid_mix_forward(gx.p(), gx0.p(), gm.p(), N, D, gy.p());
      g->resid_mix_backward(gdy.p(), gx.p(), gx0.p(), gm.p(), N, D, gdx.p(), gdx0.p(), gdm.p());
      check_close("resid_mix_forward" + shape, gy.get(), y, 1e-7, 1e-6);
      check_close("resid_mix_backward dx" + shape, gdx.get(), dx, 1e-7, 1e-6);
      check_close("resid_mix_backward dx0" + shape, gdx0.get(), dx0, 1e-7, 1e-6);
      auto sc = col_abs_sum(dy, x, N, D, Vec(dm0.begin(), dm0.begin() + D));
      const auto s1 = col_abs_sum(dy, x0, N, D, Vec(dm0.begin() + D, dm0.end()));
      sc.insert(sc.end(), s1.begin(), s1.end());
      check_close("resid_mix_backward dm" + shape, gdm.get(), dm, 1e-5, 0.0, &sc);
      // y aliasing x: in place
      Dev gy2(*g, x);
      g->resid_mix_forward(gy2.p(), gx0.p(), gm.p(), N, D, gy2.p());
      check_close("resid_mix_forward in place" + shape, gy2.get(), y, 1e-7, 1e-6);
      // dx written: into a NaN buffer, and in place over dy (the CPU runs the defaults, from 7s and in place)
      Vec sdx(N * D, 7.f), sdx0 = db0, sdm = dm0, idx = dy, idx0 = db0, idm = dm0;
      cpu->resid_mix_backward_set_dx(dy.data(), x.data(), x0.data(), m.data(), N, D, sdx.data(), sdx0.data(),
                                     sdm.data());
      cpu->resid_mix_backward_set_dx(idx.data(), x.data(), x0.data(), m.data(), N, D, idx.data(), idx0.data(),
                                     idm.data());
      check_exact("cpu resid_mix_backward_set_dx in place dx" + shape, idx, sdx);
      const float nan = std::numeric_limits<float>::quiet_NaN();
      Dev gsdx(*g, Vec(N * D, nan)), gsdx0(*g, db0), gsdm(*g, dm0), gidx(*g, dy), gidx0(*g, db0), gidm(*g, dm0);
      g->resid_mix_backward_set_dx(gdy.p(), gx.p(), gx0.p(), gm.p(), N, D, gsdx.p(), gsdx0.p(), gsdm.p());
      g->resid_mix_backward_set_dx(gidx.p(), gx.p(), gx0.p(), gm.p(), N, D, gidx.p(), gidx0.p(), gidm.p());
      for (const char* how : {"", " in place"}) {
        const bool in_place = how[0] != '\0';
        check_close("resid_mix_backward_set_dx dx" + std::string(how) + shape, (in_place ? gidx : gsdx).get(), sdx,
                    1e-7, 1e-6);
        check_close("resid_mix_backward_set_dx dx0" + std::string(how) + shape, (in_place ? gidx0 : gsdx0).get(),
                    sdx0, 1e-7, 1e-6);
        check_close("resid_mix_backward_set_dx dm" + std::string(how) + shape, (in_place ? gidm : gsdm).get(), sdm,
                    1e-5, 0.0, &sc);
      }
    }
  }
}

// qk_prep_backward_gain: one pass gives head_scale_backward_set_dx then qk_prep_backward's draw bit for bit (into
// fp32 and into an operand buffer), and their dg up to summation order, without being given x; the CPU agrees.
TEST_CASE("cuda: q's backward through its gain in one pass matches the composed ops", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(71);
  struct Case {
    int64_t B, Tn, H, hd, rot;
    bool norm;
  };
  // hd 160: past the fused kernel's 128, the composed default
  for (const Case& c : {Case{2, 77, 8, 64, 64, true}, Case{1, 300, 3, 32, 8, true}, Case{2, 40, 2, 128, 128, true},
                        Case{1, 50, 4, 64, 16, false}, Case{1, 30, 2, 160, 160, true}}) {
    const std::string shape = " B=" + std::to_string(c.B) + " T=" + std::to_string(c.Tn) + " H=" +
                              std::to_string(c.H) + " hd=" + std::to_string(c.hd) + " rot=" + std::to_string(c.rot) +
                              (c.norm ? "" : " no norm");
    const int64_t rows = c.B * c.Tn * c.H, n = rows * c.hd;
    const Vec raw = rand_vec(rng, n, -2.f, 2.f), dq = rand_vec(rng, n), gain = rand_vec(rng, c.H, 0.5f, 3.f),
              dg0 = rand_vec(rng, c.H);
    Vec rstd(rows), x(n), out(n);
    cpu->qk_prep_forward(raw.data(), c.B, c.Tn, c.H, c.hd, c.rot, 10000.0, c.norm, 1e-6f, gain.data(), rstd.data(),
                         x.data(), out.data());
    Dev graw(*g, raw), gdq(*g, dq), ggain(*g, gain), grstd(*g, rstd), gx(*g, x), tmp(*g, Vec(n)), r2(*g, Vec(rows));
    Dev dg1(*g, dg0), dg2(*g, dg0), draw1(*g, Vec(n)), draw2(*g, Vec(n)), vals(*g, Vec(n));
    // the composed ops get x as the device's forward forms it (the fused op forms it again from raw and rstd)
    g->qk_prep_forward(graw.p(), c.B, c.Tn, c.H, c.hd, c.rot, 10000.0, c.norm, 1e-6f, nullptr, r2.p(), gx.p(), gx.p());
    g->head_scale_backward_set_dx(gdq.p(), gx.p(), ggain.p(), c.B * c.Tn, c.H, c.hd, tmp.p(), dg1.p());
    g->qk_prep_backward(tmp.p(), graw.p(), grstd.p(), c.B, c.Tn, c.H, c.hd, c.rot, 10000.0, c.norm, draw1.p());
    const Vec want = c.norm ? draw1.get() : tmp.get();
    g->qk_prep_backward_gain(gdq.p(), ggain.p(), dg2.p(), graw.p(), grstd.p(), c.B, c.Tn, c.H, c.hd, c.rot, 10000.0,
                             c.norm, 1e-6f, draw2.p());
    check_exact("qk_prep_backward_gain draw" + shape, draw2.get(), want);
    check_close("qk_prep_backward_gain dg" + shape, dg2.get(), dg1.get(), 1e-6, 1e-6);
    DeviceBuffer<float> op(*g, n, Storage::operand);
    g->qk_prep_backward_gain(gdq.p(), ggain.p(), nullptr, graw.p(), grstd.p(), c.B, c.Tn, c.H, c.hd, c.rot, 10000.0,
                             c.norm, 1e-6f, op.get());
    g->operand_values(op.get(), n, vals.p());
    check_exact("qk_prep_backward_gain draw into an operand buffer" + shape, vals.get(), bf16_rounded(want));
    Vec cdg = dg0, cdraw(n);
    cpu->qk_prep_backward_gain(dq.data(), gain.data(), cdg.data(), raw.data(), rstd.data(), c.B, c.Tn, c.H, c.hd,
                               c.rot, 10000.0, c.norm, 1e-6f, cdraw.data());
    check_close("qk_prep_backward_gain draw, cpu" + shape, draw2.get(), cdraw, 1e-5, 1e-5);
    check_close("qk_prep_backward_gain dg, cpu" + shape, dg2.get(), cdg, 1e-4, 1e-5);
  }
}

// rmsnorm_resid_mix_backward: the fused kernel (one warp a row up to D = 512, two at 768 and 1024) gives the
// composed ops' dx and dx0 bit for bit and their dm up to summation order, from fp32 and from a bf16 activation dh;
// other D compose; the CPU agrees.
TEST_CASE("cuda: the fused RMSNorm + resid_mix backward matches the two ops", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(67);
  for (const int64_t D : {64, 512, 768, 1024, 96}) {
    for (const int64_t N : {int64_t{1}, int64_t{300}, D > 512 ? int64_t{2100} : int64_t{5000}}) {
      const std::string shape = " N=" + std::to_string(N) + " D=" + std::to_string(D);
      const Vec x = rand_vec(rng, N * D, -2.f, 2.f), x0 = rand_vec(rng, N * D, -2.f, 2.f), m = rand_vec(rng, 2 * D),
                dh = bf16_rounded(rand_vec(rng, N * D)), dx_in = rand_vec(rng, N * D), dx0_in = rand_vec(rng, N * D),
                dm_in = rand_vec(rng, 2 * D);
      Vec y(N * D), h(N * D), rstd(N);
      cpu->resid_mix_forward(x.data(), x0.data(), m.data(), N, D, y.data());
      cpu->rmsnorm_forward(y.data(), N, D, 1e-6f, h.data(), rstd.data());
      Dev gx(*g, x), gx0(*g, x0), gm(*g, m), gy(*g, y), grstd(*g, rstd), gdh(*g, dh);
      g->resid_mix_forward(gx.p(), gx0.p(), gm.p(), N, D, gy.p());  // y as the fused kernel recomputes it
      DeviceBuffer<float> dh_act(*g, N * D, Storage::activation);
      g->store_operand(dh_act.get(), gdh.p(), N * D);
      // composed on the device
      Dev dx1(*g, dx_in), dx01(*g, dx0_in), dm1(*g, dm_in);
      g->rmsnorm_backward(gdh.p(), gy.p(), grstd.p(), N, D, dx1.p());
      g->resid_mix_backward_set_dx(dx1.p(), gx.p(), gx0.p(), gm.p(), N, D, dx1.p(), dx01.p(), dm1.p());
      for (const bool act : {false, true}) {
        const std::string tag = shape + (act ? " (dh bf16 activation)" : "");
        Dev dx2(*g, dx_in), dx02(*g, dx0_in), dm2(*g, dm_in);
        g->rmsnorm_resid_mix_backward(act ? dh_act.get() : gdh.p(), gy.p(), grstd.p(), gx.p(), gx0.p(), gm.p(), N, D,
                                      dx2.p(), dx02.p(), dm2.p(), nullptr, false);
        check_exact("fused rmsnorm + resid_mix backward dx" + tag, dx2.get(), dx1.get());
        check_exact("fused rmsnorm + resid_mix backward dx0" + tag, dx02.get(), dx01.get());
        check_close("fused rmsnorm + resid_mix backward dm" + tag, dm2.get(), dm1.get(), 1e-6, 1e-6);
      }
      // A skip's gradient joining dx, and the first layer's fold of dx into dx0: the adds they replace, bit for bit.
      const Dev gadd(*g, rand_vec(rng, N * D));
      for (const bool with_add : {false, true})
        for (const bool fold : {false, true}) {
          if (!with_add && !fold) continue;
          const std::string tag = shape + (with_add ? " + dx_add" : "") + (fold ? " folded into dx0" : "");
          Dev dx3(*g, dx_in), dx03(*g, dx0_in), dm3(*g, dm_in), dx4(*g, dx_in), dx04(*g, dx0_in), dm4(*g, dm_in);
          g->rmsnorm_backward(gdh.p(), gy.p(), grstd.p(), N, D, dx3.p());
          g->resid_mix_backward_set_dx(dx3.p(), gx.p(), gx0.p(), gm.p(), N, D, dx3.p(), dx03.p(), dm3.p());
          if (with_add) g->add(dx3.p(), gadd.p(), N * D);
          if (fold) g->add(dx03.p(), dx3.p(), N * D);
          g->rmsnorm_resid_mix_backward(gdh.p(), gy.p(), grstd.p(), gx.p(), gx0.p(), gm.p(), N, D, dx4.p(), dx04.p(),
                                        dm4.p(), with_add ? gadd.p() : nullptr, fold);
          if (!fold) check_exact("fused rmsnorm + resid_mix backward dx" + tag, dx4.get(), dx3.get());
          check_exact("fused rmsnorm + resid_mix backward dx0" + tag, dx04.get(), dx03.get());
          check_close("fused rmsnorm + resid_mix backward dm" + tag, dm4.get(), dm3.get(), 1e-6, 1e-6);
        }
      Vec cdx = dx_in, cdx0 = dx0_in, cdm = dm_in;
      cpu->rmsnorm_resid_mix_backward(dh.data(), y.data(), rstd.data(), x.data(), x0.data(), m.data(), N, D,
                                      cdx.data(), cdx0.data(), cdm.data(), nullptr, false);
      check_close("fused rmsnorm + resid_mix backward dx, cpu" + shape, dx1.get(), cdx, 1e-6, 1e-5);
      check_close("fused rmsnorm + resid_mix backward dx0, cpu" + shape, dx01.get(), cdx0, 1e-6, 1e-5);
      Vec t = dx_in;  // the gradient at y, whose products with x and x0 the dm columns sum
      cpu->rmsnorm_backward(dh.data(), y.data(), rstd.data(), N, D, t.data());
      auto sc = col_abs_sum(t, x, N, D, Vec(dm_in.begin(), dm_in.begin() + D));
      const auto s1 = col_abs_sum(t, x0, N, D, Vec(dm_in.begin() + D, dm_in.end()));
      sc.insert(sc.end(), s1.begin(), s1.end());
      check_close("fused rmsnorm + resid_mix backward dm, cpu" + shape, dm1.get(), cdm, 1e-5, 0.0, &sc);
    }
  }
}

// rmsnorm_channel_scale_backward: the fused kernel (one warp a row up to D = 512, two at 768 and 1024) gives the
// composed ops' dx and dout bit for bit (dout in fp32 memory and in an operand buffer) and their ds up to summation
// order, from fp32 and from bf16 activation dh and o; other D compose; the CPU agrees.
TEST_CASE("cuda: the fused RMSNorm + channel-scale backward matches the two ops", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(71);
  for (const int64_t D : {128, 512, 768, 1024, 96}) {
    for (const int64_t N : {int64_t{1}, int64_t{300}, D > 512 ? int64_t{2100} : int64_t{5000}}) {
      const std::string shape = " N=" + std::to_string(N) + " D=" + std::to_string(D);
      const Vec y = rand_vec(rng, N * D, -2.f, 2.f), o = bf16_rounded(rand_vec(rng, N * D)),
                sc = rand_vec(rng, D, 0.5f, 1.5f), dh = bf16_rounded(rand_vec(rng, N * D)),
                dx_in = rand_vec(rng, N * D), ds_in = rand_vec(rng, D);
      Vec h(N * D), rstd(N);
      cpu->rmsnorm_forward(y.data(), N, D, 1e-6f, h.data(), rstd.data());
      Dev gy(*g, y), go(*g, o), gsc(*g, sc), grstd(*g, rstd), gdh(*g, dh);
      DeviceBuffer<float> dh_act(*g, N * D, Storage::activation), o_act(*g, N * D, Storage::activation);
      g->store_operand(dh_act.get(), gdh.p(), N * D);
      g->store_operand(o_act.get(), go.p(), N * D);
      // composed on the device
      Dev dx1(*g, dx_in), dout1(*g, Vec(N * D)), ds1(*g, ds_in);
      g->rmsnorm_backward(gdh.p(), gy.p(), grstd.p(), N, D, dx1.p());
      g->channel_scale_backward_set_dx(dx1.p(), go.p(), gsc.p(), N, D, dout1.p(), ds1.p());
      for (const bool act : {false, true}) {
        const std::string tag = shape + (act ? " (dh, o bf16 activations; dout an operand buffer)" : "");
        Dev dx2(*g, dx_in), dout2(*g, Vec(N * D)), ds2(*g, ds_in), vals(*g, Vec(N * D));
        DeviceBuffer<float> dout_op(*g, N * D, Storage::operand);
        g->rmsnorm_channel_scale_backward(act ? dh_act.get() : gdh.p(), gy.p(), grstd.p(), act ? o_act.get() : go.p(),
                                          gsc.p(), N, D, dx2.p(), act ? dout_op.get() : dout2.p(), ds2.p());
        check_exact("fused rmsnorm + channel scale backward dx" + tag, dx2.get(), dx1.get());
        if (act) {
          g->operand_values(dout_op.get(), N * D, vals.p());
          check_exact("fused rmsnorm + channel scale backward dout" + tag, vals.get(), bf16_rounded(dout1.get()));
        } else {
          check_exact("fused rmsnorm + channel scale backward dout" + tag, dout2.get(), dout1.get());
        }
        check_close("fused rmsnorm + channel scale backward ds" + tag, ds2.get(), ds1.get(), 1e-6, 1e-6);
      }
      Vec cdx = dx_in, cdout(N * D), cds = ds_in;
      cpu->rmsnorm_channel_scale_backward(dh.data(), y.data(), rstd.data(), o.data(), sc.data(), N, D, cdx.data(),
                                          cdout.data(), cds.data());
      check_close("fused rmsnorm + channel scale backward dx, cpu" + shape, dx1.get(), cdx, 1e-6, 1e-5);
      check_close("fused rmsnorm + channel scale backward dout, cpu" + shape, dout1.get(), cdout, 1e-6, 1e-5);
      const auto sums = col_abs_sum(cdx, o, N, D, ds_in);
      check_close("fused rmsnorm + channel scale backward ds, cpu" + shape, ds1.get(), cds, 1e-5, 0.0, &sums);
    }
  }
}

// layer_entry_forward gives the composed ops' outputs (scaled_residual_forward for the branch, then for the skip
// scaled_residual_forward or, with gate logits, gated_skip_forward, then resid_mix_rmsnorm_forward) bit for bit,
// without a skip and with either kind, keeping x and xs or not, from a bf16 activation branch output into an
// operand h; the CPU's fused form agrees with its composed ops exactly.
TEST_CASE("cuda: the fused layer entry matches the composed ops", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(79);
  const float eps = 1e-6f;
  enum class Skip { none, plain, gated };
  for (const int64_t D : {64, 96}) {
    const int64_t N = 301, n = N * D;
    const Vec a = rand_vec(rng, n, -2.f, 2.f), b = bf16_rounded(rand_vec(rng, n)), s = rand_vec(rng, D, 0.5f, 1.5f),
              skip = rand_vec(rng, n, -2.f, 2.f), w = rand_vec(rng, D, 0.5f, 1.5f),
              gate = rand_vec(rng, D, -3.f, 3.f), x0 = rand_vec(rng, n, -2.f, 2.f), m = rand_vec(rng, 2 * D);
    for (const Skip kind : {Skip::none, Skip::plain, Skip::gated}) {
      const bool with_skip = kind != Skip::none, gated = kind == Skip::gated;
      const std::string shape = " D=" + std::to_string(D) +
                                (gated ? " with a gated skip" : with_skip ? " with a skip" : "");
      // composed, CPU and device
      Vec cx(n), cxs(n), cy(n), ch(n), cr(N);
      cpu->scaled_residual_forward(a.data(), b.data(), s.data(), N, D, cx.data());
      if (gated)
        cpu->gated_skip_forward(cx.data(), skip.data(), w.data(), gate.data(), N, D, cxs.data());
      else if (with_skip)
        cpu->scaled_residual_forward(cx.data(), skip.data(), w.data(), N, D, cxs.data());
      cpu->resid_mix_rmsnorm_forward(with_skip ? cxs.data() : cx.data(), x0.data(), m.data(), N, D, eps, cy.data(),
                                     ch.data(), cr.data());
      Dev ga(*g, a), gb(*g, b), gs(*g, s), gskip(*g, skip), gw(*g, w), ggate(*g, gate), gx0(*g, x0), gm(*g, m);
      Dev x1(*g, Vec(n)), xs1(*g, Vec(n)), y1(*g, Vec(n)), h1(*g, Vec(n)), r1(*g, Vec(N));
      g->scaled_residual_forward(ga.p(), gb.p(), gs.p(), N, D, x1.p());
      if (gated)
        g->gated_skip_forward(x1.p(), gskip.p(), gw.p(), ggate.p(), N, D, xs1.p());
      else if (with_skip)
        g->scaled_residual_forward(x1.p(), gskip.p(), gw.p(), N, D, xs1.p());
      g->resid_mix_rmsnorm_forward(with_skip ? xs1.p() : x1.p(), gx0.p(), gm.p(), N, D, eps, y1.p(), h1.p(), r1.p());
      DeviceBuffer<float> b_act(*g, n, Storage::activation);
      g->store_operand(b_act.get(), gb.p(), n);
      for (const bool keep : {true, false}) {
        const std::string tag = shape + (keep ? ", keeping x and xs" : ", forward only");
        Vec fx(n), fxs(n), fy(n), fh(n), fr(N);
        cpu->layer_entry_forward(a.data(), b.data(), s.data(), with_skip ? skip.data() : nullptr, w.data(),
                                 gated ? gate.data() : nullptr, x0.data(), m.data(), N, D, eps,
                                 keep ? fx.data() : nullptr, keep && with_skip ? fxs.data() : nullptr, fy.data(),
                                 fh.data(), fr.data());
        check_exact("cpu layer_entry_forward y" + tag, fy, cy);
        check_exact("cpu layer_entry_forward h" + tag, fh, ch);
        check_exact("cpu layer_entry_forward rstd" + tag, fr, cr);
        if (keep) check_exact("cpu layer_entry_forward x" + tag, fx, cx);
        if (keep && with_skip) check_exact("cpu layer_entry_forward xs" + tag, fxs, cxs);
        Dev x2(*g, Vec(n)), xs2(*g, Vec(n)), y2(*g, Vec(n)), r2(*g, Vec(N)), hv(*g, Vec(n));
        DeviceBuffer<float> h_op(*g, n, Storage::operand);
        g->layer_entry_forward(ga.p(), b_act.get(), gs.p(), with_skip ? gskip.p() : nullptr, gw.p(),
                               gated ? ggate.p() : nullptr, gx0.p(), gm.p(), N, D, eps, keep ? x2.p() : nullptr,
                               keep && with_skip ? xs2.p() : nullptr, y2.p(), h_op.get(), r2.p());
        g->operand_values(h_op.get(), n, hv.p());
        check_exact("layer_entry_forward y" + tag, y2.get(), y1.get());
        check_exact("layer_entry_forward h (operand buffer)" + tag, hv.get(), bf16_rounded(h1.get()));
        check_exact("layer_entry_forward rstd" + tag, r2.get(), r1.get());
        if (keep) check_exact("layer_entry_forward x" + tag, x2.get(), x1.get());
        if (keep && with_skip) check_exact("layer_entry_forward xs" + tag, xs2.get(), xs1.get());
      }
      check_close("layer_entry_forward h, cpu" + shape, h1.get(), ch, 1e-6, 1e-5);
    }
  }
}

// gather_rows packs each sequence's rows from `from` on: exactly on plain memory (CPU and device against the
// definition), and as stored from an operand or activation buffer into an operand buffer.
TEST_CASE("cuda: gather_rows packs each sequence's suffix rows", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  std::mt19937_64 rng(73);
  struct Case {
    int64_t B, Tn, from, D;
  };
  for (const Case c : {Case{1, 1, 0, 8}, Case{3, 70, 6, 64}, Case{32, 128, 64, 96}, Case{2, 5, 5, 16}}) {
    const int64_t S = c.Tn - c.from, n = c.B * S * c.D;
    const std::string shape = " B=" + std::to_string(c.B) + " Tn=" + std::to_string(c.Tn) +
                              " from=" + std::to_string(c.from) + " D=" + std::to_string(c.D);
    const Vec src = rand_vec(rng, c.B * c.Tn * c.D);
    Vec want(n), got(n);
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t t = 0; t < S; ++t)
        for (int64_t d = 0; d < c.D; ++d) want[(b * S + t) * c.D + d] = src[(b * c.Tn + c.from + t) * c.D + d];
    cpu->gather_rows(src.data(), c.B, c.Tn, c.from, c.D, got.data());
    check_exact("gather_rows on the CPU" + shape, got, want);
    {
      auto g = gpu_backend();
      Dev gsrc(*g, src), gdst(*g, Vec(n, 5.f));
      g->gather_rows(gsrc.p(), c.B, c.Tn, c.from, c.D, gdst.p());
      check_exact("gather_rows, plain memory" + shape, gdst.get(), want);
    }
    auto g = gpu_backend(CudaGemmPrecision::bf16);
    Dev gsrc(*g, src), vals(*g, Vec(n));
    for (const Storage st : {Storage::operand, Storage::activation}) {
      DeviceBuffer<float> in(*g, src.size(), st), out(*g, n, Storage::operand);
      g->store_operand(in.get(), gsrc.p(), src.size());
      g->gather_rows(in.get(), c.B, c.Tn, c.from, c.D, out.get());
      g->operand_values(out.get(), n, vals.p());
      check_exact(std::string("gather_rows from an ") + (st == Storage::operand ? "operand" : "activation") +
                      " buffer into an operand buffer" + shape,
                  vals.get(), bf16_rounded(want));
    }
  }
}
