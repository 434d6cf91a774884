// The residual stream in bf16 activation buffers (the model's stream under embed_bf16, in the CUDA backend's bf16
// mode; Backend's "residual stream" contract): the ops that form a stream value store it rounded and go on with the
// stored value, as the composed ops would read it back; the ops that read the stream read its stored values.
// References are the same ops on plain buffers holding the rounded values, composed where a fused op rounds
// between its steps.
#include <catch2/catch.hpp>

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

TEST_CASE("cuda: ops write the residual stream into bf16 buffers rounded and go on with the stored value", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(71);
  const int64_t N = 37, D = 96, n = N * D;
  const float eps = 1e-6f;
  const Vec xv = bf16_rounded(rand_vec(rng, n, -3.f, 3.f)), ov = bf16_rounded(rand_vec(rng, n)),
            kv = bf16_rounded(rand_vec(rng, n)), x0v = bf16_rounded(rand_vec(rng, n, -2.f, 2.f)),
            sv = rand_vec(rng, D, 0.5f, 1.5f), wv = rand_vec(rng, D, 0.5f, 1.5f), mv = rand_vec(rng, 2 * D),
            gv = rand_vec(rng, D, -2.f, 2.f);
  // The stream's inputs in bf16 buffers, and the same values in plain memory.
  const ActivationBuf x(*g, xv), o(*g, ov), skip(*g, kv), x0(*g, x0v);
  const Dev xp(*g, xv), op(*g, ov), kp(*g, kv), x0p(*g, x0v), s(*g, sv), w(*g, wv), m(*g, mv), gate(*g, gv);
  Dev y32(*g, Vec(n)), h32(*g, Vec(n)), r32(*g, Vec(N)), h(*g, Vec(n)), r(*g, Vec(N));
  const ActivationBuf y(*g, n);

  g->scaled_residual_forward(x.p(), o.p(), s.p(), N, D, y.p());
  g->scaled_residual_forward(xp.p(), op.p(), s.p(), N, D, y32.p());
  check_exact("scaled_residual_forward into a stream buffer", y.values(), bf16_rounded(y32.get()));

  // Fused with the next norm: the norm of the rounded sum.
  g->round_bf16(y32.p(), n);
  g->rmsnorm_forward(y32.p(), N, D, eps, h32.p(), r32.p());
  g->scaled_residual_rmsnorm_forward(x.p(), o.p(), s.p(), N, D, eps, y.p(), h.p(), r.p());
  check_exact("scaled_residual_rmsnorm_forward y", y.values(), y32.get());
  check_exact("scaled_residual_rmsnorm_forward h (the stored y normed)", h.get(), h32.get());
  check_exact("scaled_residual_rmsnorm_forward rstd", r.get(), r32.get());

  g->resid_mix_forward(xp.p(), x0p.p(), m.p(), N, D, y32.p());
  g->round_bf16(y32.p(), n);
  g->rmsnorm_forward(y32.p(), N, D, eps, h32.p(), r32.p());
  g->resid_mix_forward(x.p(), x0.p(), m.p(), N, D, y.p());
  check_exact("resid_mix_forward into a stream buffer", y.values(), y32.get());
  g->resid_mix_rmsnorm_forward(x.p(), x0.p(), m.p(), N, D, eps, y.p(), h.p(), r.p());
  check_exact("resid_mix_rmsnorm_forward y", y.values(), y32.get());
  check_exact("resid_mix_rmsnorm_forward h (the stored y normed)", h.get(), h32.get());
  check_exact("resid_mix_rmsnorm_forward rstd", r.get(), r32.get());

  g->gated_skip_forward(xp.p(), kp.p(), w.p(), gate.p(), N, D, y32.p());
  g->gated_skip_forward(x.p(), skip.p(), w.p(), gate.p(), N, D, y.p());
  check_exact("gated_skip_forward into a stream buffer", y.values(), bf16_rounded(y32.get()));

  // The layer entry rounds each sum it forms (x, x + w skip, the mix) as the composed ops would store them, whether
  // or not it writes x and xs.
  for (const bool with_skip : {true, false}) {
    const std::string tag = with_skip ? " (with a skip)" : " (no skip)";
    Dev xe32(*g, Vec(n)), xs32(*g, Vec(n));
    g->scaled_residual_forward(xp.p(), op.p(), s.p(), N, D, xe32.p());
    g->round_bf16(xe32.p(), n);
    const float* into_mix = xe32.p();
    if (with_skip) {
      g->scaled_residual_forward(xe32.p(), kp.p(), w.p(), N, D, xs32.p());
      g->round_bf16(xs32.p(), n);
      into_mix = xs32.p();
    }
    g->resid_mix_forward(into_mix, x0p.p(), m.p(), N, D, y32.p());
    g->round_bf16(y32.p(), n);
    g->rmsnorm_forward(y32.p(), N, D, eps, h32.p(), r32.p());
    for (const bool keep : {true, false}) {
      const ActivationBuf xe(*g, n), xs(*g, n);
      g->layer_entry_forward(x.p(), o.p(), s.p(), with_skip ? skip.p() : nullptr, with_skip ? w.p() : nullptr,
                             nullptr, x0.p(), m.p(), N, D, eps, keep ? xe.p() : nullptr,
                             keep && with_skip ? xs.p() : nullptr, y.p(), h.p(), r.p());
      const std::string t = tag + (keep ? ", x and xs written" : ", x and xs not written");
      if (keep) check_exact("layer_entry_forward x" + t, xe.values(), xe32.get());
      if (keep && with_skip) check_exact("layer_entry_forward xs" + t, xs.values(), xs32.get());
      check_exact("layer_entry_forward y" + t, y.values(), y32.get());
      check_exact("layer_entry_forward h" + t, h.get(), h32.get());
      check_exact("layer_entry_forward rstd" + t, r.get(), r32.get());
    }
  }
  // x, xs and y share one storage.
  CHECK_THROWS_AS(g->layer_entry_forward(x.p(), o.p(), s.p(), nullptr, nullptr, nullptr, x0.p(), m.p(), N, D, eps,
                                         y32.p(), nullptr, y.p(), h.p(), r.p()),
                  std::invalid_argument);

  // x0: the embedding's rows normed into a stream buffer (rounded by the buffer, and by bf16_out on plain memory).
  const int64_t V = 50;
  const Dev table(*g, rand_vec(rng, V * D));
  std::vector<int32_t> tokens(static_cast<size_t>(N));
  for (auto& t : tokens) t = static_cast<int32_t>(rand_int(rng, 0, V - 1));
  const DevIdx tok(*g, tokens);
  Dev emb(*g, Vec(n));
  for (const bool bf16_out : {false, true}) {
    g->embedding_rmsnorm_forward(table.p(), tok.p(), N, D, eps, true, nullptr, y32.p(), r32.p());
    g->embedding_rmsnorm_forward(table.p(), tok.p(), N, D, eps, bf16_out, emb.p(), y.p(), r.p());
    check_exact("embedding_rmsnorm_forward into a stream buffer" + std::string(bf16_out ? " (bf16_out)" : ""),
                y.values(), y32.get());
    check_exact("embedding_rmsnorm_forward rstd", r.get(), r32.get());
  }

  // A suffix's rows, gathered from one stream buffer into another.
  const int64_t B = 1, from = 30, rows = N - from;
  const ActivationBuf suffix(*g, static_cast<size_t>(rows * D));
  g->gather_rows(x.p(), B, N, from, D, suffix.p());
  check_exact("gather_rows between stream buffers", suffix.values(), Vec(xv.begin() + from * D, xv.end()));
}

TEST_CASE("cuda: ops read the residual stream from bf16 buffers as its stored values", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(73);
  const float eps = 1e-6f;
  for (const int64_t D : {128, 96}) {  // the fused backwards' kernels, and their composed fallback
    const int64_t N = 300, n = N * D;
    const std::string shape = " D=" + std::to_string(D);
    const Vec xv = bf16_rounded(rand_vec(rng, n, -3.f, 3.f)), x0v = bf16_rounded(rand_vec(rng, n, -2.f, 2.f)),
              kv = bf16_rounded(rand_vec(rng, n)), dyv = rand_vec(rng, n), dhv = rand_vec(rng, n),
              ov = rand_vec(rng, n), mv = rand_vec(rng, 2 * D), sv = rand_vec(rng, D, 0.5f, 1.5f),
              gv = rand_vec(rng, D, -2.f, 2.f), dsv = rand_vec(rng, 2 * D);
    const ActivationBuf x(*g, xv), x0(*g, x0v), skip(*g, kv);
    const Dev xp(*g, xv), x0p(*g, x0v), kp(*g, kv), dy(*g, dyv), dh(*g, dhv), o(*g, ov), m(*g, mv), s(*g, sv),
        gate(*g, gv);
    Dev r1(*g, Vec(N)), r2(*g, Vec(N)), h1(*g, Vec(n)), h2(*g, Vec(n));
    g->rmsnorm_forward(x.p(), N, D, eps, h1.p(), r1.p());
    g->rmsnorm_forward(xp.p(), N, D, eps, h2.p(), r2.p());
    check_exact("rmsnorm_forward from a stream buffer" + shape, h1.get(), h2.get());
    check_exact("rmsnorm_forward rstd from a stream buffer" + shape, r1.get(), r2.get());
    for (const bool set : {false, true}) {
      Dev d1(*g, dyv), d2(*g, dyv);
      if (set) {
        g->rmsnorm_backward_set(dh.p(), x.p(), r2.p(), N, D, d1.p());
        g->rmsnorm_backward_set(dh.p(), xp.p(), r2.p(), N, D, d2.p());
      } else {
        g->rmsnorm_backward(dh.p(), x.p(), r2.p(), N, D, d1.p());
        g->rmsnorm_backward(dh.p(), xp.p(), r2.p(), N, D, d2.p());
      }
      check_exact(std::string(set ? "rmsnorm_backward_set" : "rmsnorm_backward") + " from a stream x" + shape,
                  d1.get(), d2.get());
    }
    {
      Dev dx1(*g, Vec(n)), dx2(*g, Vec(n)), dx01(*g, dyv), dx02(*g, dyv), dm1(*g, dsv), dm2(*g, dsv);
      g->resid_mix_backward_set_dx(dy.p(), x.p(), x0.p(), m.p(), N, D, dx1.p(), dx01.p(), dm1.p());
      g->resid_mix_backward_set_dx(dy.p(), xp.p(), x0p.p(), m.p(), N, D, dx2.p(), dx02.p(), dm2.p());
      check_exact("resid_mix_backward_set_dx dx from stream x, x0" + shape, dx1.get(), dx2.get());
      check_exact("resid_mix_backward_set_dx dx0" + shape, dx01.get(), dx02.get());
      check_exact("resid_mix_backward_set_dx dm" + shape, dm1.get(), dm2.get());
    }
    {
      Dev k1(*g, Vec(n)), k2(*g, Vec(n)), dw1(*g, sv), dw2(*g, sv);
      g->skip_add_backward_set(dy.p(), skip.p(), s.p(), N, D, k1.p(), dw1.p());
      g->skip_add_backward_set(dy.p(), kp.p(), s.p(), N, D, k2.p(), dw2.p());
      check_exact("skip_add_backward_set dskip from a stream skip" + shape, k1.get(), k2.get());
      check_exact("skip_add_backward_set dw" + shape, dw1.get(), dw2.get());
    }
    {
      Dev dx1(*g, dyv), dx2(*g, dyv), k1(*g, Vec(n)), k2(*g, Vec(n)), dw1(*g, sv), dw2(*g, sv), dg1(*g, gv),
          dg2(*g, gv);
      g->gated_skip_backward(dh.p(), x.p(), skip.p(), s.p(), gate.p(), N, D, dx1.p(), k1.p(), dw1.p(), dg1.p());
      g->gated_skip_backward(dh.p(), xp.p(), kp.p(), s.p(), gate.p(), N, D, dx2.p(), k2.p(), dw2.p(), dg2.p());
      check_exact("gated_skip_backward dx from stream x, skip" + shape, dx1.get(), dx2.get());
      check_exact("gated_skip_backward dskip" + shape, k1.get(), k2.get());
      check_exact("gated_skip_backward dw" + shape, dw1.get(), dw2.get());
      check_exact("gated_skip_backward dg" + shape, dg1.get(), dg2.get());
    }
    // The fused RMSNorm + resid_mix backward recomputes the norm's input from x and x0 rounded as the stream
    // buffer y holds it: the composed ops on the stored y give its dx and dx0 bit for bit, dm up to summation order.
    {
      const ActivationBuf y(*g, n);
      Dev yp(*g, Vec(n)), rstd(*g, Vec(N));
      g->resid_mix_rmsnorm_forward(x.p(), x0.p(), m.p(), N, D, eps, y.p(), h1.p(), rstd.p());
      g->operand_values(y.p(), n, yp.p());
      Dev dx1(*g, dyv), dx2(*g, dyv), dx01(*g, dhv), dx02(*g, dhv), dm1(*g, dsv), dm2(*g, dsv);
      g->rmsnorm_resid_mix_backward(dh.p(), y.p(), rstd.p(), x.p(), x0.p(), m.p(), N, D, dx1.p(), dx01.p(), dm1.p(),
                                    nullptr, false);
      g->rmsnorm_backward(dh.p(), yp.p(), rstd.p(), N, D, dx2.p());
      g->resid_mix_backward_set_dx(dx2.p(), xp.p(), x0p.p(), m.p(), N, D, dx2.p(), dx02.p(), dm2.p());
      check_exact("rmsnorm_resid_mix_backward dx from a stream y" + shape, dx1.get(), dx2.get());
      check_exact("rmsnorm_resid_mix_backward dx0 from a stream y" + shape, dx01.get(), dx02.get());
      check_close("rmsnorm_resid_mix_backward dm from a stream y" + shape, dm1.get(), dm2.get(), 1e-6, 1e-6);

      Dev dxa(*g, dyv), dxb(*g, dyv), d1(*g, Vec(n)), d2(*g, Vec(n)), ds1(*g, sv), ds2(*g, sv);
      g->rmsnorm_channel_scale_backward(dh.p(), y.p(), rstd.p(), o.p(), s.p(), N, D, dxa.p(), d1.p(), ds1.p());
      g->rmsnorm_channel_scale_backward(dh.p(), yp.p(), rstd.p(), o.p(), s.p(), N, D, dxb.p(), d2.p(), ds2.p());
      check_exact("rmsnorm_channel_scale_backward dx from a stream y" + shape, dxa.get(), dxb.get());
      check_exact("rmsnorm_channel_scale_backward dout" + shape, d1.get(), d2.get());
      check_exact("rmsnorm_channel_scale_backward ds" + shape, ds1.get(), ds2.get());
    }
  }
}

// The stream's gradient in bf16 buffers: an op that writes or adds into one computes what it would on fp32 memory
// holding the stored values and stores each result rounded once (the fused backwards; their composed fallbacks
// round at every op they compose, so those are compared within a few bf16 ulps); the gradients it reads (dy,
// dout, dx_add) are read as stored. Parameter gradients stay fp32 and equal the plain run's.
TEST_CASE("cuda: ops add into the residual stream's gradient in bf16 buffers, rounding once", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(79);
  const float eps = 1e-6f;
  for (const int64_t D : {128, 96}) {
    const int64_t N = 300, n = N * D;
    const bool fused = D == 128;
    const std::string shape = " D=" + std::to_string(D);
    auto rnd = [&](float lo = -1.f, float hi = 1.f) { return bf16_rounded(rand_vec(rng, n, lo, hi)); };
    const Vec xv = rnd(-3.f, 3.f), x0v = rnd(-2.f, 2.f), kv = rnd(), dyv = rnd(), dhv = rnd(), dxv = rnd(),
              dx0v = rnd(), addv = rnd(), mv = rand_vec(rng, 2 * D), sv = rand_vec(rng, D, 0.5f, 1.5f),
              gv = rand_vec(rng, D, -2.f, 2.f);
    const Dev x(*g, xv), x0(*g, x0v), skip(*g, kv), dh(*g, dhv), m(*g, mv), s(*g, sv), gate(*g, gv);
    const ActivationBuf dy(*g, dyv), dx_add(*g, addv);
    const Dev dyp(*g, dyv), addp(*g, addv);
    // The stored result against the plain run's, rounded.
    auto same = [&](const std::string& what, const ActivationBuf& got, const Dev& want) {
      check_exact(what + shape, got.values(), bf16_rounded(want.get()));
    };

    {
      const ActivationBuf y(*g, dxv), y2(*g, dxv);
      Dev yp(*g, dxv), xp(*g, Vec(n));
      g->add(y.p(), dy.p(), n);
      g->add(yp.p(), dyp.p(), n);
      same("add, both bf16", y, yp);
      g->upload(xp.p(), dhv.data(), n);
      g->add(y2.p(), xp.p(), n);
      Dev yq(*g, dxv);
      g->add(yq.p(), xp.p(), n);
      same("add of fp32 into bf16", y2, yq);
    }
    Dev rstd(*g, Vec(N)), hn(*g, Vec(n));
    g->rmsnorm_forward(x.p(), N, D, eps, hn.p(), rstd.p());
    // Each op of the pair (the *_set form writes its input gradient, the other adds into it) runs once on the bf16
    // buffers and once on plain memory holding the same values.
    for (const bool set : {false, true}) {
      const std::string mode = set ? " (written)" : " (added into)";
      auto rmsnorm_bwd = [&](const float* d, float* dx) {
        if (set)
          g->rmsnorm_backward_set(d, x.p(), rstd.p(), N, D, dx);
        else
          g->rmsnorm_backward(d, x.p(), rstd.p(), N, D, dx);
      };
      auto channel_scale_bwd = [&](const float* d, float* dx, float* ds) {
        if (set)
          g->channel_scale_backward_set_dx(d, x.p(), s.p(), N, D, dx, ds);
        else
          g->channel_scale_backward(d, x.p(), s.p(), N, D, dx, ds);
      };
      auto skip_add_bwd = [&](const float* d, float* dskip, float* dw) {
        if (set)
          g->skip_add_backward_set(d, skip.p(), s.p(), N, D, dskip, dw);
        else
          g->skip_add_backward(d, skip.p(), s.p(), N, D, dskip, dw);
      };
      const ActivationBuf dx(*g, dxv), cx(*g, dxv), k(*g, dxv);
      Dev dxp(*g, dxv), cxp(*g, dxv), kp(*g, dxv), ds1(*g, sv), ds2(*g, sv), dw1(*g, sv), dw2(*g, sv);
      rmsnorm_bwd(dy.p(), dx.p());
      rmsnorm_bwd(dyp.p(), dxp.p());
      same("rmsnorm_backward dx" + mode, dx, dxp);
      channel_scale_bwd(dy.p(), cx.p(), ds1.p());
      channel_scale_bwd(dyp.p(), cxp.p(), ds2.p());
      same("channel_scale_backward dx" + mode, cx, cxp);
      check_exact("channel_scale_backward ds" + mode + shape, ds1.get(), ds2.get());
      skip_add_bwd(dy.p(), k.p(), dw1.p());
      skip_add_bwd(dyp.p(), kp.p(), dw2.p());
      same("skip_add_backward dskip" + mode, k, kp);
      check_exact("skip_add_backward dw" + mode + shape, dw1.get(), dw2.get());
    }
    {
      const ActivationBuf dx(*g, dxv), k(*g, dx0v);
      Dev dxp(*g, dxv), kp(*g, dx0v), dw1(*g, sv), dw2(*g, sv), dg1(*g, gv), dg2(*g, gv);
      g->gated_skip_backward(dy.p(), x.p(), skip.p(), s.p(), gate.p(), N, D, dx.p(), k.p(), dw1.p(), dg1.p());
      g->gated_skip_backward(dyp.p(), x.p(), skip.p(), s.p(), gate.p(), N, D, dxp.p(), kp.p(), dw2.p(), dg2.p());
      same("gated_skip_backward dx (added into)", dx, dxp);
      same("gated_skip_backward dskip (added into)", k, kp);
      check_exact("gated_skip_backward dw" + shape, dw1.get(), dw2.get());
      check_exact("gated_skip_backward dg" + shape, dg1.get(), dg2.get());
    }
    {  // resid_mix's backward, in place (dx is dy) as the model runs it
      const ActivationBuf dx(*g, dyv), dx0(*g, dx0v);
      Dev dxp(*g, dyv), dx0p(*g, dx0v), dm1(*g, mv), dm2(*g, mv);
      g->resid_mix_backward_set_dx(dx.p(), x.p(), x0.p(), m.p(), N, D, dx.p(), dx0.p(), dm1.p());
      g->resid_mix_backward_set_dx(dxp.p(), x.p(), x0.p(), m.p(), N, D, dxp.p(), dx0p.p(), dm2.p());
      same("resid_mix_backward_set_dx dx (in place)", dx, dxp);
      same("resid_mix_backward_set_dx dx0 (added into)", dx0, dx0p);
      check_exact("resid_mix_backward_set_dx dm" + shape, dm1.get(), dm2.get());
    }
    // The fused backwards: t = dx + the norm's gradient, from the stored dx, then each output rounded once.
    Dev y(*g, Vec(n)), ry(*g, Vec(N));
    g->resid_mix_rmsnorm_forward(x.p(), x0.p(), m.p(), N, D, eps, y.p(), hn.p(), ry.p());
    for (const bool with_add : {false, true})
      for (const bool fold : {false, true}) {
        const std::string tag = std::string(with_add ? " + dx_add" : "") + (fold ? " folded into dx0" : "");
        const ActivationBuf dx(*g, dxv), dx0(*g, dx0v);
        Dev dxp(*g, dxv), dx0p(*g, dx0v), dm1(*g, mv), dm2(*g, mv);
        g->rmsnorm_resid_mix_backward(dh.p(), y.p(), ry.p(), x.p(), x0.p(), m.p(), N, D, dx.p(), dx0.p(), dm1.p(),
                                      with_add ? dx_add.p() : nullptr, fold);
        g->rmsnorm_resid_mix_backward(dh.p(), y.p(), ry.p(), x.p(), x0.p(), m.p(), N, D, dxp.p(), dx0p.p(), dm2.p(),
                                      with_add ? addp.p() : nullptr, fold);
        if (fused) {
          if (!fold) same("rmsnorm_resid_mix_backward dx" + tag, dx, dxp);
          same("rmsnorm_resid_mix_backward dx0" + tag, dx0, dx0p);
          check_exact("rmsnorm_resid_mix_backward dm" + tag + shape, dm1.get(), dm2.get());
        } else {  // composed: rounded at each op; bf16 has 8 significant bits
          if (!fold) check_close("rmsnorm_resid_mix_backward dx" + tag + shape, dx.values(), dxp.get(), 0.05, 0.02);
          check_close("rmsnorm_resid_mix_backward dx0" + tag + shape, dx0.values(), dx0p.get(), 0.05, 0.02);
        }
      }
    {
      const ActivationBuf dx(*g, dxv);
      Dev dxp(*g, dxv), d1(*g, Vec(n)), d2(*g, Vec(n)), ds1(*g, sv), ds2(*g, sv);
      g->rmsnorm_channel_scale_backward(dh.p(), y.p(), ry.p(), x0.p(), s.p(), N, D, dx.p(), d1.p(), ds1.p());
      g->rmsnorm_channel_scale_backward(dh.p(), y.p(), ry.p(), x0.p(), s.p(), N, D, dxp.p(), d2.p(), ds2.p());
      if (fused) {
        same("rmsnorm_channel_scale_backward dx", dx, dxp);
        check_exact("rmsnorm_channel_scale_backward dout" + shape, d1.get(), d2.get());
        check_exact("rmsnorm_channel_scale_backward ds" + shape, ds1.get(), ds2.get());
      } else {
        same("rmsnorm_channel_scale_backward dx", dx, dxp);  // one rounding here too: dx = t, then dout = s t
        check_close("rmsnorm_channel_scale_backward dout" + shape, d1.get(), d2.get(), 0.02, 0.01);
      }
    }
    {
      const ActivationBuf dst(*g, n);
      g->copy_columns(dyp.p(), N, D, dst.p());  // already bf16 values: copied exactly
      check_exact("copy_columns into a stream buffer" + shape, dst.values(), dyv);
      Dev plain(*g, rand_vec(rng, n));
      g->copy_columns(plain.p(), N, D, dst.p());
      same("copy_columns of fp32 into a stream buffer", dst, plain);
    }
  }
}
