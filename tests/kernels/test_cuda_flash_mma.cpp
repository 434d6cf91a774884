// The bf16 tensor-core flash attention (kernels/cuda_flash_mma.cu), reached through a CUDA backend with
// CudaGemmPrecision::bf16, against the CPU reference backend (fp32). Every test is tagged [gpu] and skips (with a
// warning) when no CUDA device is present. Each comparison prints the share of its tolerance that the worst
// element used.
//
// Tolerances: tests/kernels/flash_test_util.h (3e-2 of each element's bf16 error scale; lse 1e-2 * q scale).
// Exactness: with q = 0 every visible score is 0, every p is exactly 1, and small-integer V is exact in bf16, so
// out must be bit-identical to float(sum of the visible v) * (1.f / n): this pins down masking, partial tiles,
// the GQA head mapping and the P V fragment path without any tolerance.
// These bounds were set before any run on a GPU: the printed shares say how much room each check has.
#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda_backend.h"
#include "tests/kernels/gpu_test_util.h"
#include "kernels/cuda_flash_mma.h"
#include "src/ops/backend.h"
#include "src/ops/bf16.h"
#include "tests/kernels/flash_test_util.h"

using namespace ptool;
using namespace ptool::flash_test;

using ptool::gpu_test::Dev;

namespace {

std::unique_ptr<Backend<float>> bf16_backend(bool deterministic = true) {
  CudaBackendOptions o;
  o.gemm = CudaGemmPrecision::bf16;
  o.deterministic = deterministic;  // false: the backward adds dq with atomics from the dK/dV kernel
  return make_cuda_backend(o);
}

void flash_case(Backend<float>& cpu, Backend<float>& g, std::mt19937_64& rng, const AttnShape& s, float qscale,
                bool with_dq, bool with_dkv) {
  const gpu_test::AttentionRun r = gpu_test::run_attention(cpu, g, rng, s, qscale, with_dq, with_dkv);
  const TermScale ts = term_scales(r.q, r.k, r.v, r.dout, r.out, r.lse, s);
  check_tol("flash forward out" + r.label, r.g_out, r.out, tol_of(ts.out, r.out));
  check_tol("flash forward lse" + r.label, r.g_lse, r.lse, DVec(r.lse.size(), 1e-2 * qscale));
  check_tol("flash backward dq (accumulated)" + r.label, r.g_dq, r.dq, tol_of(ts.dq, r.dq));
  check_tol("flash backward dk (accumulated)" + r.label, r.g_dk, r.dk, tol_of(ts.dk, r.dk));
  check_tol("flash backward dv (accumulated)" + r.label, r.g_dv, r.dv, tol_of(ts.dv, r.dv));
  // Written instead of added (attention_backward_set).
  if (with_dq) check_tol("flash backward_set dq" + r.label, r.g_set.dq, r.set.dq, tol_of(ts.dq, r.set.dq));
  if (with_dkv) {
    check_tol("flash backward_set dk" + r.label, r.g_set.dk, r.set.dk, tol_of(ts.dk, r.set.dk));
    check_tol("flash backward_set dv" + r.label, r.g_set.dv, r.set.dv, tol_of(ts.dv, r.set.dv));
  }
}

}  // namespace

TEST_CASE("cuda flash: bf16 forward and backward follow the CPU reference", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = bf16_backend();
  std::mt19937_64 rng(21);
  // T = 1; T not a multiple of the 128-row, 64-key or 32-query tiles; GQA ratios 1, 2, 4; every compiled hd.
  const AttnShape shapes[] = {
      {1, 1, 1, 1, 64},    {1, 1, 4, 1, 128},   {1, 2, 2, 1, 64},   {1, 3, 4, 1, 64},   {2, 65, 4, 2, 64},
      {1, 130, 2, 1, 128}, {1, 129, 2, 1, 128}, {1, 200, 8, 2, 64}, {1, 300, 8, 4, 64}, {1, 257, 4, 1, 128},
      {2, 64, 4, 4, 64},   {1, 128, 2, 2, 128}, {2, 191, 4, 4, 128}, {1, 1, 2, 1, 16},  {2, 150, 4, 2, 16},
      {1, 3, 2, 2, 32},    {1, 190, 8, 2, 32},  {1, 1, 2, 1, 96},   {1, 97, 4, 1, 96},  {2, 140, 2, 2, 96},
  };
  for (const auto& s : shapes) flash_case(*cpu, *g, rng, s, 1.f, true, true);
  // Atomic dq: every head dim, both query tiles of the dK/dV kernel (64, and 32 at hd 128), GQA, partial tiles.
  auto nd = bf16_backend(false);
  for (const AttnShape s : {AttnShape{1, 1, 2, 1, 64}, AttnShape{2, 65, 4, 2, 64}, AttnShape{1, 257, 4, 1, 128},
                            AttnShape{1, 130, 2, 1, 128}, AttnShape{2, 150, 4, 2, 16}, AttnShape{1, 190, 8, 2, 32},
                            AttnShape{1, 97, 4, 1, 96}})
    flash_case(*cpu, *nd, rng, s, 1.f, true, true);
  flash_case(*cpu, *nd, rng, {2, 90, 4, 2, 64}, 1.f, true, false);
  flash_case(*cpu, *nd, rng, {1, 150, 4, 2, 64}, 8.f, true, true);
  // Peaked softmax (large scores), and partial gradient requests.
  flash_case(*cpu, *g, rng, {1, 150, 4, 2, 64}, 8.f, true, true);
  flash_case(*cpu, *g, rng, {1, 150, 4, 2, 128}, 8.f, true, true);
  flash_case(*cpu, *g, rng, {1, 150, 4, 2, 96}, 8.f, true, true);
  flash_case(*cpu, *g, rng, {2, 90, 4, 2, 64}, 1.f, true, false);
  flash_case(*cpu, *g, rng, {2, 90, 4, 2, 128}, 1.f, false, true);
  // Random shapes.
  for (int it = 0; it < 6; ++it) {
    const int64_t Hkv = std::uniform_int_distribution<int64_t>(1, 2)(rng);
    const int64_t ratio = int64_t{1} << std::uniform_int_distribution<int>(0, 2)(rng);
    const int64_t B = std::uniform_int_distribution<int64_t>(1, 2)(rng);
    const int64_t T = std::uniform_int_distribution<int64_t>(1, 400)(rng);
    const int64_t hd = 32 * std::uniform_int_distribution<int64_t>(1, 4)(rng);
    flash_case(*cpu, *g, rng, {B, T, Hkv * ratio, Hkv, hd}, 1.f, true, true);
  }
}

// Training sequences up to 4096 and longer eval windows ([long]: too slow for the emulator's CI run).
TEST_CASE("cuda flash: T = 4096 (hd 64 and 128) and 8192", "[gpu][long]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = bf16_backend();
  std::mt19937_64 rng(41);
  flash_case(*cpu, *g, rng, {1, 4096, 1, 1, 64}, 1.f, true, true);
  flash_case(*cpu, *g, rng, {1, 4096, 1, 1, 128}, 1.f, true, true);
  flash_case(*cpu, *g, rng, {1, 8192, 1, 1, 64}, 1.f, true, true);
}

TEST_CASE("cuda flash: uniform attention (q = 0, integer v) is exact", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = bf16_backend();
  std::mt19937_64 rng(22);
  const AttnShape shapes[] = {{1, 1, 2, 1, 64},    {2, 129, 4, 2, 64}, {1, 300, 8, 2, 128}, {2, 70, 4, 4, 128},
                              {1, 1000, 4, 1, 64}, {1, 77, 2, 1, 16},  {1, 140, 4, 2, 32},  {1, 90, 2, 1, 96}};
  std::uniform_int_distribution<int> iv(-8, 8);
  for (const auto& s : shapes) {
    const int64_t B = s.B, T = s.Tn, H = s.H, Hkv = s.Hkv, hd = s.hd, group = H / Hkv;
    const size_t nq = static_cast<size_t>(B * T * H * hd), nkv = static_cast<size_t>(B * T * Hkv * hd);
    Vec v(nkv);
    for (auto& x : v) x = static_cast<float>(iv(rng));
    const Vec k = rand_vec(rng, nkv);
    Vec want(nq), want_lse(static_cast<size_t>(B * H * T));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < hd; ++d) {
          double sum = 0.0;  // integers: exact
          for (int64_t t = 0; t < T; ++t) {
            sum += v[((b * T + t) * Hkv + h / group) * hd + d];
            want[((b * T + t) * H + h) * hd + d] = static_cast<float>(sum) * (1.f / static_cast<float>(t + 1));
            want_lse[(b * H + h) * T + t] = static_cast<float>(std::log(static_cast<double>(t + 1)));
          }
        }
    Dev gq(*g, Vec(nq, 0.f)), gk(*g, k), gv(*g, v), gout(*g, Vec(nq)), glse(*g, Vec(want_lse.size()));
    g->attention_forward(gq.p(), gk.p(), gv.p(), B, T, H, Hkv, hd, gout.p(), glse.p());
    check_exact("flash forward out, uniform attention" + shape_name(s), gout.get(), want);
    DVec lse_tol(want_lse.size());
    for (size_t i = 0; i < lse_tol.size(); ++i) lse_tol[i] = 1e-6 * (1.0 + want_lse[i]);  // log2f, * ln 2
    check_tol("flash forward lse, uniform attention" + shape_name(s), glse.get(), want_lse, lse_tol);
  }
}

TEST_CASE("cuda flash: backward reruns are bit-identical", "[gpu][determinism]") {
  SKIP_WITHOUT_GPU();
  auto g = bf16_backend();
  std::mt19937_64 rng(23);
  for (const AttnShape s : {AttnShape{2, 333, 8, 2, 64}, AttnShape{1, 200, 4, 1, 128}, AttnShape{1, 150, 4, 2, 96}}) {
    const int64_t B = s.B, T = s.Tn, H = s.H, Hkv = s.Hkv, hd = s.hd;
    const size_t nq = static_cast<size_t>(B * T * H * hd), nkv = static_cast<size_t>(B * T * Hkv * hd);
    const Vec q = rand_vec(rng, nq), k = rand_vec(rng, nkv), v = rand_vec(rng, nkv), dout = rand_vec(rng, nq);
    const Vec dq0 = rand_vec(rng, nq), dk0 = rand_vec(rng, nkv), dv0 = rand_vec(rng, nkv);
    Dev gq(*g, q), gk(*g, k), gv(*g, v), gdout(*g, dout), gout(*g, Vec(nq)), glse(*g, Vec(B * H * T));
    g->attention_forward(gq.p(), gk.p(), gv.p(), B, T, H, Hkv, hd, gout.p(), glse.p());
    Vec runs[2][3];
    for (auto& run : runs) {
      Dev gdq(*g, dq0), gdk(*g, dk0), gdv(*g, dv0);
      g->attention_backward(gdout.p(), gq.p(), gk.p(), gv.p(), gout.p(), glse.p(), B, T, H, Hkv, hd, gdq.p(),
                            gdk.p(), gdv.p());
      run[0] = gdq.get();
      run[1] = gdk.get();
      run[2] = gdv.get();
    }
    check_exact("flash backward dq, two runs" + shape_name(s), runs[1][0], runs[0][0]);
    check_exact("flash backward dk, two runs" + shape_name(s), runs[1][1], runs[0][1]);
    check_exact("flash backward dv, two runs" + shape_name(s), runs[1][2], runs[0][2]);
  }
}

// The atomic dq sums the same bf16 dS K products as the dQ kernel, in another order (per 64-key tile, then
// across tiles by atomics): it must agree far inside the bf16 tolerance, 1e-4 of each element's error scale (an
// index or masking slip is off by the scale itself). dk and dv come from the same code in both kernels: equal.
TEST_CASE("cuda flash: atomic dq agrees with the two-kernel backward", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto det = bf16_backend(true);
  auto nd = bf16_backend(false);
  std::mt19937_64 rng(25);
  for (const AttnShape s : {AttnShape{2, 200, 8, 2, 64}, AttnShape{1, 161, 4, 1, 128}, AttnShape{1, 100, 4, 2, 96},
                            AttnShape{1, 70, 2, 1, 32}}) {
    const int64_t B = s.B, T = s.Tn, H = s.H, Hkv = s.Hkv, hd = s.hd;
    const size_t nq = static_cast<size_t>(B * T * H * hd), nkv = static_cast<size_t>(B * T * Hkv * hd);
    const Vec q = rand_vec(rng, nq), k = rand_vec(rng, nkv), v = rand_vec(rng, nkv), dout = rand_vec(rng, nq);
    Vec out(nq), lse(static_cast<size_t>(B * H * T));
    {
      Dev gq(*det, q), gk(*det, k), gv(*det, v), gout(*det, out), glse(*det, lse);
      det->attention_forward(gq.p(), gk.p(), gv.p(), B, T, H, Hkv, hd, gout.p(), glse.p());
      out = gout.get();
      lse = glse.get();
    }
    const TermScale ts = term_scales(q, k, v, dout, out, lse, s);
    const auto run = [&](Backend<float>& g, const Vec& dq0) {
      Dev gq(g, q), gk(g, k), gv(g, v), gdout(g, dout), gout(g, out), glse(g, lse);
      Dev gdq(g, dq0), gdk(g, Vec(nkv, 0.f)), gdv(g, Vec(nkv, 0.f));
      g.attention_backward(gdout.p(), gq.p(), gk.p(), gv.p(), gout.p(), glse.p(), B, T, H, Hkv, hd, gdq.p(), gdk.p(),
                           gdv.p());
      return std::array<Vec, 3>{gdq.get(), gdk.get(), gdv.get()};
    };
    const Vec dq0 = rand_vec(rng, nq);
    for (const Vec& start : {Vec(nq, 0.f), dq0}) {  // written onto zeros, and added to a prefilled dq
      const auto want = run(*det, start), got = run(*nd, start);
      DVec tol(nq);
      for (size_t i = 0; i < nq; ++i) tol[i] = 1e-4 * ts.dq[i] + 1e-6 * std::abs(want[0][i]) + 1e-7;
      const std::string tag = shape_name(s) + (start[0] == 0.f ? "" : " (accumulated)");
      check_tol("atomic dq vs dQ kernel" + tag, got[0], want[0], tol);
      check_exact("atomic dq's dk vs the dK/dV kernel's" + tag, got[1], want[1]);
      check_exact("atomic dq's dv vs the dK/dV kernel's" + tag, got[2], want[2]);
    }
  }
}

// attention_prep_backward_set on the flash path runs k's preparation backward in the dK/dV kernel's epilogue and,
// with deterministic dq, q's (with its gain) in the dQ kernel's, with the separate kernels' per-row arithmetic
// (prep_bwd_row, prep_gain_dot): q's, k's and v's raw gradients in their columns of one operand buffer (whose last
// columns keep their 5s) equal the composed ops (the Backend default on the same backend) bit for bit. The gain's
// gradient sums the same double terms grouped by the dQ kernel's warps instead of qk_prep_backward_gain's chunks:
// it agrees to a few float ulps. With atomic dq (q not folded), q's columns and the gain's gradient differ from run
// to run in their last bits (the order of the adds) and are checked against a bound.
TEST_CASE("cuda flash: q's and k's preparation backwards in the flash kernels equal the separate ops", "[gpu]") {
  SKIP_WITHOUT_GPU();
  struct Case {
    AttnShape s;
    int64_t rot;
    bool norm, bf16_raw;
  };
  // Partial key tiles, GQA, every compiled head dim; full, partial (half not a multiple of 8 too) and no rope;
  // with and without QK-norm; raw q and k as bf16 activation buffers and as fp32.
  const Case cases[] = {{{2, 65, 4, 2, 64}, 64, true, true},  {{1, 130, 2, 1, 128}, 32, true, false},
                        {{1, 97, 4, 1, 96}, 0, true, true},   {{2, 70, 4, 2, 32}, 32, false, true},
                        {{1, 40, 2, 2, 16}, 8, true, false}, {{1, 150, 8, 2, 64}, 20, true, true}};
  std::mt19937_64 rng(27);
  for (const bool deterministic : {true, false}) {
    auto g = bf16_backend(deterministic);
    CHECK(g->prep_backward_folds(64).k);
    CHECK(g->prep_backward_folds(64).q == deterministic);
    for (const Case& c : cases) {
      const AttnShape& s = c.s;
      const int64_t B = s.B, T = s.Tn, H = s.H, Hkv = s.Hkv, hd = s.hd, N = B * T, D = H * hd, KV = Hkv * hd;
      const int64_t ld = D + 2 * KV + 6;
      const size_t nq = static_cast<size_t>(N * D), nkv = static_cast<size_t>(N * KV);
      const Storage raw_storage = c.bf16_raw ? Storage::activation : Storage::plain;
      DeviceBuffer<float> rq(*g, nq, raw_storage), rk(*g, nkv, raw_storage);
      Dev hq(*g, rand_vec(rng, nq, -2.f, 2.f)), hk(*g, rand_vec(rng, nkv, -2.f, 2.f));
      g->store_operand(rq.get(), hq.p(), nq);
      g->store_operand(rk.get(), hk.p(), nkv);
      Dev gain(*g, rand_vec(rng, static_cast<size_t>(H), 0.5f, 2.f)), v(*g, rand_vec(rng, nkv));
      Dev dout(*g, rand_vec(rng, nq));
      Dev rstd_q(*g, Vec(N * H)), rstd_k(*g, Vec(N * Hkv)), q(*g, Vec(nq)), k(*g, Vec(nkv)), out(*g, Vec(nq));
      Dev lse(*g, Vec(N * H));
      g->qk_prep_forward(rq.get(), B, T, H, hd, c.rot, 10000.0, c.norm, 1e-6f, gain.p(), rstd_q.p(), q.p(), q.p());
      g->qk_prep_forward(rk.get(), B, T, Hkv, hd, c.rot, 10000.0, c.norm, 1e-6f, nullptr, rstd_k.p(), k.p(), k.p());
      g->attention_forward(q.p(), k.p(), v.p(), B, T, H, Hkv, hd, out.p(), lse.p());
      using Slice = Backend<float>::ColumnSlice;
      const auto run = [&](bool fused) {
        DeviceBuffer<float> all(*g, static_cast<size_t>(N * ld), Storage::operand);
        Dev vals(*g, Vec(N * ld, 5.f)), dgain(*g, Vec(H, 0.25f)), dq(*g, Vec(nq)), dk(*g, Vec(nkv));
        g->store_operand(all.get(), vals.p(), static_cast<size_t>(N * ld));
        const Backend<float>::PrepGrad qg{rq.get(), rstd_q.p(), Slice(all.get(), ld, 0)};
        const Backend<float>::PrepGrad kg{rk.get(), rstd_k.p(), Slice(all.get(), ld, D)};
        const Slice dv(all.get(), ld, D + KV);
        if (fused)
          g->attention_prep_backward_set(dout.p(), q.p(), k.p(), v.p(), out.p(), lse.p(), B, T, H, Hkv, hd, c.rot,
                                         10000.0, c.norm, 1e-6f, gain.p(), dgain.p(), qg, kg, dv, dq.p(), dk.p());
        else
          g->Backend<float>::attention_prep_backward_set(dout.p(), q.p(), k.p(), v.p(), out.p(), lse.p(), B, T, H,
                                                         Hkv, hd, c.rot, 10000.0, c.norm, 1e-6f, gain.p(),
                                                         dgain.p(), qg, kg, dv, dq.p(), dk.p());
        g->operand_values(all.get(), static_cast<size_t>(N * ld), vals.p());
        return std::pair<Vec, Vec>{vals.get(), dgain.get()};
      };
      const auto [want, want_dg] = run(false);
      const auto [got, got_dg] = run(true);
      const std::string tag = shape_name(s) + " rot " + std::to_string(c.rot) + (c.norm ? "" : " no norm") +
                              (c.bf16_raw ? " bf16 raw" : "") + (deterministic ? "" : " (atomic dq)");
      const auto columns = [&](const Vec& all, int64_t from, int64_t to) {
        Vec r;
        for (int64_t n = 0; n < N; ++n) r.insert(r.end(), all.begin() + n * ld + from, all.begin() + n * ld + to);
        return r;
      };
      check_exact("fused prep: k's and v's columns and the rest" + tag, columns(got, D, ld),
                  columns(want, D, ld));
      if (deterministic) {
        check_exact("fused q prep: q's columns" + tag, columns(got, 0, D), columns(want, 0, D));
        DVec tol(want_dg.size());
        for (size_t i = 0; i < tol.size(); ++i) tol[i] = 4e-7 * std::abs(want_dg[i]) + 1e-9;  // a few float ulps
        check_tol("fused q prep: dgain" + tag, got_dg, want_dg, tol);
      } else {  // atomic dq: bf16-rounded q columns may differ by an ulp
        const Vec wq = columns(want, 0, D);
        double scale = 0.0;
        for (float x : wq) scale = std::max(scale, static_cast<double>(std::abs(x)));
        check_tol("k prep fused, q not: q's columns" + tag, columns(got, 0, D), wq, DVec(wq.size(), 1e-2 * scale));
        check_tol("k prep fused, q not: dgain" + tag, got_dg, want_dg, DVec(want_dg.size(), 1e-3));
      }
    }
  }
}

// In bf16 mode the fp32 kernels read q, k, v rounded to bf16, as the flash kernels and operand buffers would.
TEST_CASE("cuda flash: other head dims keep the fp32 kernels; the launchers refuse them", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = bf16_backend();
  std::mt19937_64 rng(24);
  const AttnShape s{1, 100, 4, 2, 40};
  const size_t nq = static_cast<size_t>(s.B * s.Tn * s.H * s.hd), nkv = static_cast<size_t>(s.B * s.Tn * s.Hkv * s.hd);
  const Vec q = rand_vec(rng, nq), k = rand_vec(rng, nkv), v = rand_vec(rng, nkv);
  Vec qr = q, kr = k, vr = v;
  for (Vec* x : {&qr, &kr, &vr})
    for (float& f : *x) f = round_to_bf16(f);
  Vec out(nq), lse(static_cast<size_t>(s.B * s.H * s.Tn));
  cpu->attention_forward(qr.data(), kr.data(), vr.data(), s.B, s.Tn, s.H, s.Hkv, s.hd, out.data(), lse.data());
  Dev gq(*g, q), gk(*g, k), gv(*g, v), gout(*g, Vec(nq)), glse(*g, Vec(lse.size()));
  g->attention_forward(gq.p(), gk.p(), gv.p(), s.B, s.Tn, s.H, s.Hkv, s.hd, gout.p(), glse.p());
  // fp32 kernels on the rounded inputs: the 2e-5 bound of the attention parity test, far below bf16's error.
  check_tol("hd 40 on cuda:bf16 (fp32 kernels, bf16 q k v) out" + shape_name(s), gout.get(), out, DVec(nq, 2e-5));
  const auto* bq = reinterpret_cast<const uint16_t*>(gq.p());  // any aligned bits: the shape is refused first
  const auto* bk = reinterpret_cast<const uint16_t*>(gk.p());
  const auto* bv = reinterpret_cast<const uint16_t*>(gv.p());
  for (const int64_t hd : {8, 40, 48, 256})
    CHECK_THROWS_AS(cuda::launch_flash_mma_forward(bq, bk, bv, 1, 2, 0, 2, 2, hd, gout.p(), glse.p(), nullptr),
                    std::invalid_argument);
  CHECK_THROWS_AS(cuda::launch_flash_mma_forward(bq, bk, bv, 1, 2, 0, 3, 2, 64, gout.p(), glse.p(), nullptr),
                  std::invalid_argument);
  CHECK_THROWS_AS(cuda::launch_flash_mma_forward(bq + 1, bk, bv, 1, 2, 0, 2, 2, 64, gout.p(), glse.p(), nullptr),
                  std::invalid_argument);  // not 16-byte aligned
}

TEST_CASE("cuda flash: timing at the baseline shape (printed, not asserted)", "[gpu][timing]") {
  SKIP_WITHOUT_GPU();
  // B * T = 65,536 tokens, 8 heads, 4 kv heads, head dim 64, T 1024. Causal FLOPs as FlashAttention counts
  // them: forward 4 B H T^2 hd / 2, backward 2.5 x that.
  const int64_t B = 64, T = 1024, H = 8, Hkv = 4, hd = 64;
  const size_t nq = static_cast<size_t>(B * T * H * hd), nkv = static_cast<size_t>(B * T * Hkv * hd);
  std::mt19937_64 rng(25);
  const Vec x = rand_vec(rng, nq);
  const Vec xkv(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(nkv));
  const double fwd_flop = 2.0 * static_cast<double>(B * H * hd) * static_cast<double>(T * T);
  for (CudaGemmPrecision prec : {CudaGemmPrecision::bf16, CudaGemmPrecision::fp32}) {
    CudaBackendOptions o;
    o.gemm = prec;
    auto g = make_cuda_backend(o);
    Dev gq(*g, x), gk(*g, xkv), gv(*g, xkv), gdout(*g, x), gout(*g, Vec(nq)), glse(*g, Vec(B * H * T));
    Dev gdq(*g, Vec(nq)), gdk(*g, Vec(nkv)), gdv(*g, Vec(nkv));
    auto fwd = [&] { g->attention_forward(gq.p(), gk.p(), gv.p(), B, T, H, Hkv, hd, gout.p(), glse.p()); };
    auto bwd = [&] {
      g->attention_backward(gdout.p(), gq.p(), gk.p(), gv.p(), gout.p(), glse.p(), B, T, H, Hkv, hd, gdq.p(),
                            gdk.p(), gdv.p());
    };
    auto time_ms = [&](auto&& f, int reps) {
      f();
      cuda_synchronize(*g);
      const auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; ++r) f();
      cuda_synchronize(*g);
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
    };
    const int reps = prec == CudaGemmPrecision::bf16 ? 20 : 3;
    const double tf = time_ms(fwd, reps), tb = time_ms(bwd, reps);
    std::printf("  attention B=%lld T=%lld H=%lld Hkv=%lld hd=%lld [%s]: forward %.3f ms (%.1f TFLOP/s), backward "
                "%.3f ms (%.1f TFLOP/s)\n",
                static_cast<long long>(B), static_cast<long long>(T), static_cast<long long>(H),
                static_cast<long long>(Hkv), static_cast<long long>(hd), gemm_precision_name(prec), tf,
                fwd_flop / tf * 1e-9, tb, 2.5 * fwd_flop / tb * 1e-9);
  }
}
