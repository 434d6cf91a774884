// The CUDA backend's bf16 storage: ops write bf16 operand buffers as the rounded fp32 result, read bf16
// activation buffers as their rounded values, and refuse misuse.
#include <catch2/catch.hpp>

#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/cuda_backend.h"
#include "src/ops/backend.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/parity_test_util.h"

using namespace ptool;
using namespace ptool::parity_test;

using ptool::gpu_test::check_exact;
using ptool::gpu_test::Dev;

// Each op that can write an operand buffer stores there exactly the bf16 rounding of its fp32 result; the ops that
// cannot (accumulating into it, copying or downloading it) refuse.
TEST_CASE("cuda: ops write bf16 operand buffers as the rounded fp32 result, and misuse throws", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(41);
  const int64_t N = 37, D = 96, n = N * D;
  const float eps = std::numeric_limits<float>::epsilon();
  const Vec x = rand_vec(rng, n, -3.f, 3.f), o2 = rand_vec(rng, n), s = rand_vec(rng, D, 0.5f, 1.5f),
            dy = rand_vec(rng, n);
  Dev gx(*g, x), go(*g, o2), gs(*g, s), gdy(*g, dy), plain(*g, Vec(n)), y(*g, Vec(n)), rstd(*g, Vec(N)),
      vals(*g, Vec(n)), ds(*g, Vec(D));
  DeviceBuffer<float> opnd(*g, n, Storage::operand);
  auto values = [&] {
    g->operand_values(opnd.get(), n, vals.p());
    return vals.get();
  };
  g->rmsnorm_forward(gx.p(), N, D, eps, plain.p(), rstd.p());
  g->rmsnorm_forward(gx.p(), N, D, eps, opnd.get(), rstd.p());
  check_exact("rmsnorm_forward into an operand buffer", values(), bf16_rounded(plain.get()));
  g->scaled_residual_rmsnorm_forward(gx.p(), go.p(), gs.p(), N, D, eps, y.p(), plain.p(), rstd.p());
  g->scaled_residual_rmsnorm_forward(gx.p(), go.p(), gs.p(), N, D, eps, y.p(), opnd.get(), rstd.p());
  check_exact("scaled_residual_rmsnorm_forward h into an operand buffer", values(), bf16_rounded(plain.get()));
  for (auto act : {cpu::Activation::relu2, cpu::Activation::leaky_relu2}) {
    g->activation_forward(act, gx.p(), n, plain.p());
    g->activation_forward(act, gx.p(), n, opnd.get());
    check_exact("activation_forward into an operand buffer", values(), bf16_rounded(plain.get()));
    g->activation_backward_set(act, gdy.p(), gx.p(), n, plain.p());
    g->activation_backward_set(act, gdy.p(), gx.p(), n, opnd.get());
    check_exact("activation_backward_set into an operand buffer", values(), bf16_rounded(plain.get()));
  }
  const Vec mix = rand_vec(rng, 2 * D);
  Dev gmix(*g, mix), gy2(*g, Vec(n));
  g->resid_mix_rmsnorm_forward(gx.p(), go.p(), gmix.p(), N, D, eps, gy2.p(), plain.p(), rstd.p());
  g->resid_mix_rmsnorm_forward(gx.p(), go.p(), gmix.p(), N, D, eps, gy2.p(), opnd.get(), rstd.p());
  check_exact("resid_mix_rmsnorm_forward h into an operand buffer", values(), bf16_rounded(plain.get()));
  g->channel_scale_backward_set_dx(gdy.p(), gx.p(), gs.p(), N, D, plain.p(), ds.p());
  g->channel_scale_backward_set_dx(gdy.p(), gx.p(), gs.p(), N, D, opnd.get(), ds.p());
  check_exact("channel_scale_backward_set_dx into an operand buffer", values(), bf16_rounded(plain.get()));
  g->zero(opnd.get(), n);
  check_exact("zero of an operand buffer", values(), Vec(n, 0.f));

  CHECK_THROWS_AS(g->activation_backward(cpu::Activation::relu2, gdy.p(), gx.p(), n, opnd.get()),
                  std::invalid_argument);
  Vec host(n);
  CHECK_THROWS_AS(g->download(host.data(), opnd.get(), n), std::invalid_argument);
  CHECK_THROWS_AS(g->copy(plain.p(), opnd.get(), n), std::invalid_argument);
  CHECK_THROWS_AS(g->scale(opnd.get(), 2.f, n), std::invalid_argument);
  CHECK_THROWS_AS(g->channel_scale_forward(gx.p(), gs.p(), N, D, opnd.get()), std::invalid_argument);  // fp32 out
  CHECK_THROWS_AS(g->rmsnorm_forward(gx.p(), N, D, eps, plain.p(), opnd.get()), std::invalid_argument);  // rstd
  CHECK_THROWS_AS(g->rmsnorm_forward(gx.p(), N - 1, D, eps, opnd.get() + D, rstd.p()),  // the middle of one
                  std::invalid_argument);

  // Off bf16 mode an operand buffer is plain fp32 memory.
  auto t = gpu_backend(CudaGemmPrecision::tf32);
  DeviceBuffer<float> p32(*t, 4, Storage::operand);
  const Vec four = {1.f, 2.f, 3.f, 4.f};
  t->upload(p32.get(), four.data(), 4);
  Vec back(4);
  t->download(back.data(), p32.get(), 4);
  CHECK(back == four);
}

// The same for the GEMMs with a bf16 D (y, dx), q/k preparation (forward and backward) and the logits' gradient;
// store_operand rounds.
TEST_CASE("cuda: GEMMs, q/k preparation and cross-entropy write operand buffers as the rounded fp32 result", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(53);
  auto values = [&](const float* op, size_t n) {
    Dev out(*g, Vec(n));
    g->operand_values(op, n, out.p());
    return out.get();
  };
  const int64_t N = 37, K = 96, M = 80;
  const Vec x = rand_vec(rng, N * K), W = rand_vec(rng, M * K), dy = rand_vec(rng, N * M);
  Dev gx(*g, x), gW(*g, W), gdy(*g, dy), plain(*g, Vec(N * M)), plain_dx(*g, Vec(N * K));
  DeviceBuffer<float> y_op(*g, N * M, Storage::operand), dx_op(*g, N * K, Storage::operand);
  g->linear_forward(gx.p(), gW.p(), N, K, M, plain.p());
  g->linear_forward(gx.p(), gW.p(), N, K, M, y_op.get());
  check_exact("linear_forward into an operand buffer", values(y_op.get(), N * M), bf16_rounded(plain.get()));
  const Backend<float>::LinearOut outs[] = {{gW.p(), M, y_op.get()}};
  g->zero(y_op.get(), N * M);
  g->linear_forward_shared(gx.p(), N, K, outs);
  check_exact("linear_forward_shared into an operand buffer", values(y_op.get(), N * M), bf16_rounded(plain.get()));
  g->linear_backward_set_dx(gdy.p(), gx.p(), gW.p(), N, K, M, plain_dx.p(), nullptr);
  g->linear_backward_set_dx(gdy.p(), gx.p(), gW.p(), N, K, M, dx_op.get(), nullptr);
  check_exact("linear_backward_set_dx into an operand buffer", values(dx_op.get(), N * K), bf16_rounded(plain_dx.get()));
  CHECK_THROWS_AS(g->linear_backward(gdy.p(), gx.p(), gW.p(), N, K, M, dx_op.get(), nullptr), std::invalid_argument);

  // q/k preparation: the training form (x plain, out an operand), the forward-only form (x == out) and no gain.
  const int64_t B = 2, Tn = 9, H = 3, hd = 32, rows = B * Tn * H, n = rows * hd;
  const Vec raw = rand_vec(rng, n, -2.f, 2.f), gain = rand_vec(rng, H, 0.5f, 2.f);
  Dev graw(*g, raw), ggain(*g, gain), rstd(*g, Vec(rows)), xp(*g, Vec(n)), outp(*g, Vec(n)), xq(*g, Vec(n));
  DeviceBuffer<float> q_op(*g, n, Storage::operand);
  g->qk_prep_forward(graw.p(), B, Tn, H, hd, 16, 10000.0, true, 1e-6f, ggain.p(), rstd.p(), xp.p(), outp.p());
  g->qk_prep_forward(graw.p(), B, Tn, H, hd, 16, 10000.0, true, 1e-6f, ggain.p(), rstd.p(), xq.p(), q_op.get());
  check_exact("qk_prep_forward x beside an operand out", xq.get(), xp.get());
  check_exact("qk_prep_forward out into an operand buffer", values(q_op.get(), n), bf16_rounded(outp.get()));
  g->zero(q_op.get(), n);
  g->qk_prep_forward(graw.p(), B, Tn, H, hd, 16, 10000.0, true, 1e-6f, ggain.p(), rstd.p(), q_op.get(), q_op.get());
  check_exact("qk_prep_forward in place (x == out) into an operand buffer", values(q_op.get(), n),
              bf16_rounded(outp.get()));
  g->qk_prep_forward(graw.p(), B, Tn, H, hd, 16, 10000.0, true, 1e-6f, nullptr, rstd.p(), xp.p(), xp.p());
  g->qk_prep_forward(graw.p(), B, Tn, H, hd, 16, 10000.0, true, 1e-6f, nullptr, rstd.p(), q_op.get(), q_op.get());
  check_exact("qk_prep_forward without a gain into an operand buffer", values(q_op.get(), n), bf16_rounded(xp.get()));
  const Vec d0 = rand_vec(rng, n);
  Dev gd1(*g, d0), gd2(*g, d0), draw(*g, Vec(n));
  g->qk_prep_backward(gd1.p(), graw.p(), rstd.p(), B, Tn, H, hd, 16, 10000.0, true, draw.p());
  g->qk_prep_backward(gd2.p(), graw.p(), rstd.p(), B, Tn, H, hd, 16, 10000.0, true, q_op.get());
  check_exact("qk_prep_backward draw into an operand buffer", values(q_op.get(), n), bf16_rounded(draw.get()));

  // Cross-entropy's dz, in both forms.
  const int64_t R = 29, V = 300;
  const Vec z = rand_vec(rng, R * V, -20.f, 20.f);
  std::vector<int32_t> tgt(static_cast<size_t>(R));
  for (auto& t : tgt) t = static_cast<int32_t>(rand_int(rng, 0, V - 1));
  Dev gz(*g, z), dz(*g, Vec(R * V));
  DevIdx gt(*g, tgt);
  DeviceBuffer<float> dz_op(*g, R * V, Storage::operand);
  const double want = g->softcap_cross_entropy(gz.p(), gt.p(), R, V, 15.f, nullptr, dz.p(), 0.5f);
  CHECK(g->softcap_cross_entropy(gz.p(), gt.p(), R, V, 15.f, nullptr, dz_op.get(), 0.5f) == want);
  check_exact("softcap_cross_entropy dz into an operand buffer", values(dz_op.get(), R * V), bf16_rounded(dz.get()));
  g->zero(dz_op.get(), R * V);
  g->softcap_cross_entropy_accumulate(gz.p(), gt.p(), R, V, 15.f, dz_op.get(), 0.5f);
  g->take_loss_sum();
  check_exact("softcap_cross_entropy_accumulate dz into an operand buffer", values(dz_op.get(), R * V),
              bf16_rounded(dz.get()));

  // store_operand rounds to nearest even; off bf16 mode it copies.
  g->store_operand(dz_op.get(), gz.p(), R * V);
  check_exact("store_operand", values(dz_op.get(), R * V), bf16_rounded(z));
  CHECK_THROWS_AS(g->store_operand(plain.p(), dz_op.get(), 4), std::invalid_argument);
}

// Activation buffers hold bf16 in bf16 mode: every op that may read one gives exactly what it gives on the rounded
// values in fp32 memory. With bf16_activations off they are plain fp32 memory.
TEST_CASE("cuda: ops read bf16 activation buffers as their rounded values", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(61);
  const int64_t N = 37, D = 96, n = N * D;
  const float eps = 1e-6f;
  // An activation buffer holding x rounded, and the rounded values in plain memory.
  struct Pair {
    ActivationBuf act;
    Dev plain;
  };
  auto pair = [&](const Vec& x) { return Pair{ActivationBuf(*g, x), Dev(*g, bf16_rounded(x))}; };
  const Vec xv = rand_vec(rng, n, -3.f, 3.f), dyv = rand_vec(rng, n), sv = rand_vec(rng, D, 0.5f, 1.5f);
  Pair h = pair(xv), dout = pair(dyv);
  Dev x(*g, xv), dy(*g, dyv), sc(*g, sv), r1(*g, Vec(n)), r2(*g, Vec(n)), y1(*g, Vec(n)), y2(*g, Vec(n)),
      rs1(*g, Vec(N)), rs2(*g, Vec(N)), ds1(*g, Vec(D)), ds2(*g, Vec(D));
  for (auto act : {cpu::Activation::relu2, cpu::Activation::leaky_relu2}) {
    g->activation_forward(act, h.act.p(), n, r1.p());
    g->activation_forward(act, h.plain.p(), n, r2.p());
    check_exact("activation_forward from an activation buffer", r1.get(), r2.get());
    g->activation_backward_set(act, dout.act.p(), h.act.p(), n, r1.p());
    g->activation_backward_set(act, dout.plain.p(), h.plain.p(), n, r2.p());
    check_exact("activation_backward_set from activation buffers", r1.get(), r2.get());
    g->activation_backward(act, dout.act.p(), h.act.p(), n, r1.p());
    g->activation_backward(act, dout.plain.p(), h.plain.p(), n, r2.p());
    check_exact("activation_backward from activation buffers", r1.get(), r2.get());
  }
  g->scaled_residual_forward(x.p(), h.act.p(), sc.p(), N, D, y1.p());
  g->scaled_residual_forward(x.p(), h.plain.p(), sc.p(), N, D, y2.p());
  check_exact("scaled_residual_forward with o from an activation buffer", y1.get(), y2.get());
  g->scaled_residual_rmsnorm_forward(x.p(), h.act.p(), sc.p(), N, D, eps, y1.p(), r1.p(), rs1.p());
  g->scaled_residual_rmsnorm_forward(x.p(), h.plain.p(), sc.p(), N, D, eps, y2.p(), r2.p(), rs2.p());
  check_exact("scaled_residual_rmsnorm_forward y, o from an activation buffer", y1.get(), y2.get());
  check_exact("scaled_residual_rmsnorm_forward h, o from an activation buffer", r1.get(), r2.get());
  g->channel_scale_backward_set_dx(dy.p(), h.act.p(), sc.p(), N, D, r1.p(), ds1.p());
  g->channel_scale_backward_set_dx(dy.p(), h.plain.p(), sc.p(), N, D, r2.p(), ds2.p());
  check_exact("channel_scale_backward_set_dx ds, x from an activation buffer", ds1.get(), ds2.get());
  g->rmsnorm_forward(x.p(), N, D, eps, y1.p(), rs1.p());
  g->zero(r1.p(), n);
  g->zero(r2.p(), n);
  g->rmsnorm_backward(dout.act.p(), x.p(), rs1.p(), N, D, r1.p());
  g->rmsnorm_backward(dout.plain.p(), x.p(), rs1.p(), N, D, r2.p());
  check_exact("rmsnorm_backward with dout from an activation buffer", r1.get(), r2.get());
  // q/k preparation reads raw from one, forward and backward (x = [B, Tn, H, hd] rows of the same floats).
  const int64_t B = 2, Tn = 37, H = 3, hd = 16;
  static_assert(B * Tn * H * hd == 37 * 96, "the [N, D] floats reshaped");
  Dev qr1(*g, Vec(B * Tn * H)), qr2(*g, Vec(B * Tn * H));
  g->qk_prep_forward(h.act.p(), B, Tn, H, hd, 8, 10000.0, true, eps, sc.p(), qr1.p(), y1.p(), r1.p());
  g->qk_prep_forward(h.plain.p(), B, Tn, H, hd, 8, 10000.0, true, eps, sc.p(), qr2.p(), y2.p(), r2.p());
  check_exact("qk_prep_forward with raw from an activation buffer", r1.get(), r2.get());
  Dev d1(*g, dyv), d2(*g, dyv);
  g->qk_prep_backward(d1.p(), h.act.p(), qr1.p(), B, Tn, H, hd, 8, 10000.0, true, r1.p());
  g->qk_prep_backward(d2.p(), h.plain.p(), qr2.p(), B, Tn, H, hd, 8, 10000.0, true, r2.p());
  check_exact("qk_prep_backward with raw from an activation buffer", r1.get(), r2.get());
  // A GEMM reads one as its bf16 operand, and writes one rounded.
  const Vec W = rand_vec(rng, 40 * D);
  Dev gW(*g, W), z1(*g, Vec(N * 40)), z2(*g, Vec(N * 40)), zv(*g, Vec(N * 40));
  g->linear_forward(h.act.p(), gW.p(), N, D, 40, z1.p());
  g->linear_forward(h.plain.p(), gW.p(), N, D, 40, z2.p());
  check_exact("linear_forward with x from an activation buffer", z1.get(), z2.get());
  DeviceBuffer<float> zact(*g, N * 40, Storage::activation);
  g->linear_forward(h.plain.p(), gW.p(), N, D, 40, zact.get());
  g->operand_values(zact.get(), N * 40, zv.p());
  check_exact("linear_forward into an activation buffer", zv.get(), bf16_rounded(z2.get()));

  CudaBackendOptions off;
  off.gemm = CudaGemmPrecision::bf16;
  off.bf16_activations = false;
  auto g32 = make_cuda_backend(off);
  DeviceBuffer<float> a32(*g32, 4, Storage::activation);
  const Vec four = {1.f + 1e-6f, 2.f, 3.f, 4.f};  // 1 + 1e-6 is not a bf16 value
  g32->upload(a32.get(), four.data(), 4);
  Vec back(4);
  g32->download(back.data(), a32.get(), 4);
  CHECK(back == four);
}
