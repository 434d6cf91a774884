// Parity of the CUDA backend with the CPU reference, attention (the fp32 kernels and the bf16 flash kernels,
// full and over a suffix of the queries) and the softcap cross-entropy. Tolerances and their reasons:
// tests/kernels/parity_test_util.h.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <deque>
#include <random>
#include <stdexcept>
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
using ptool::gpu_test::AttnShape;
using ptool::gpu_test::Dev;

namespace {

void attention_case(Backend<float>& cpu, Backend<float>& g, std::mt19937_64& rng, const AttnShape& s, float qscale,
                    bool with_dq, bool with_dkv) {
  const gpu_test::AttentionRun r = gpu_test::run_attention(cpu, g, rng, s, qscale, with_dq, with_dkv);
  check_close("attention_forward out" + r.label, r.g_out, r.out, 2e-5, 0.0);
  check_close("attention_forward lse" + r.label, r.g_lse, r.lse, 2e-5, 2e-6);
  check_close("attention_backward dq (accumulated)" + r.label, r.g_dq, r.dq, 1e-4, 1e-4);
  check_close("attention_backward dk (accumulated)" + r.label, r.g_dk, r.dk, 1e-4, 1e-4);
  check_close("attention_backward dv (accumulated)" + r.label, r.g_dv, r.dv, 1e-4, 1e-4);
  // Written instead of added (attention_backward_set).
  if (with_dq) check_close("attention_backward_set dq" + r.label, r.g_set.dq, r.set.dq, 1e-4, 1e-4);
  if (with_dkv) {
    check_close("attention_backward_set dk" + r.label, r.g_set.dk, r.set.dk, 1e-4, 1e-4);
    check_close("attention_backward_set dv" + r.label, r.g_set.dv, r.set.dv, 1e-4, 1e-4);
  }
}

}  // namespace

// attention_forward_suffix gives attention_forward's rows from `from` on exactly: on the CPU and the fp32 kernels
// through the default (full length, then gathered), with the flash kernel by running only the suffix's query
// tiles (each query row is computed independently of the others, so the tiling does not change it).
TEST_CASE("cuda: attention over a suffix of the queries equals the full attention's rows", "[gpu]") {
  SKIP_WITHOUT_GPU();
  const ThreeBackends backends;
  std::mt19937_64 rng(97);
  const int64_t B = 2, Tn = 200, H = 4, Hkv = 2;
  for (const auto& [name, be] : backends.all())
    for (const int64_t hd : {int64_t{64}, int64_t{48}, int64_t{128}})
      for (const int64_t from : {int64_t{1}, int64_t{63}, int64_t{64}, int64_t{129}, int64_t{199}}) {
        const int64_t D = H * hd, S = Tn - from;
        const std::string tag = std::string(" on ") + name + " hd=" + std::to_string(hd) + " from=" +
                                std::to_string(from);
        const Vec q = rand_vec(rng, static_cast<size_t>(B * Tn * D));
        const Vec k = rand_vec(rng, static_cast<size_t>(B * Tn * Hkv * hd)), v = rand_vec(rng, k.size());
        Vec qs(static_cast<size_t>(B * S * D));
        for (int64_t b = 0; b < B; ++b)
          std::copy_n(q.begin() + (b * Tn + from) * D, S * D, qs.begin() + b * S * D);
        DeviceBuffer<float> gq(*be, q.size(), Storage::operand), gqs(*be, qs.size(), Storage::operand);
        DeviceBuffer<float> full(*be, q.size(), Storage::operand), got(*be, qs.size(), Storage::operand);
        Dev hq(*be, q), hqs(*be, qs), gk(*be, k), gv(*be, v), lse(*be, Vec(B * H * Tn));
        be->store_operand(gq.get(), hq.p(), q.size());
        be->store_operand(gqs.get(), hqs.p(), qs.size());
        be->attention_forward(gq.get(), gk.p(), gv.p(), B, Tn, H, Hkv, hd, full.get(), lse.p());
        be->attention_forward_suffix(gqs.get(), gk.p(), gv.p(), B, Tn, from, H, Hkv, hd, got.get());
        Dev want(*be, qs), out(*be, qs);
        DeviceBuffer<float> rows(*be, qs.size(), Storage::operand);
        be->gather_rows(full.get(), B, Tn, from, D, rows.get());
        be->operand_values(rows.get(), qs.size(), want.p());
        be->operand_values(got.get(), qs.size(), out.p());
        check_exact("attention_forward_suffix" + tag, out.get(), want.get());
      }
}

// qk_prep_forward_suffix gives qk_prep_forward's rows from `from` on exactly (out and rstd): every row is
// prepared alone, the CUDA kernel rotating the suffix's rows with the full length's table from row `from` on.
TEST_CASE("cuda: q/k preparation of a suffix of the positions equals the full pass's rows", "[gpu]") {
  SKIP_WITHOUT_GPU();
  const ThreeBackends backends;
  std::mt19937_64 rng(98);
  const int64_t B = 2, Tn = 150, H = 3;
  for (const auto& [name, be] : backends.all())
    for (const auto& [hd, rot, norm, gain] : {std::tuple{int64_t{64}, int64_t{64}, true, true},
                                              std::tuple{int64_t{64}, int64_t{16}, true, true},
                                              std::tuple{int64_t{32}, int64_t{32}, false, true},
                                              std::tuple{int64_t{48}, int64_t{0}, true, false}})
      for (const int64_t from : {int64_t{1}, int64_t{64}, int64_t{149}}) {
        const int64_t D = H * hd, S = Tn - from;
        const std::string tag = std::string(" on ") + name + " hd=" + std::to_string(hd) + " rot=" +
                                std::to_string(rot) + (norm ? " norm" : "") + (gain ? " gain" : "") + " from=" +
                                std::to_string(from);
        const Vec raw = rand_vec(rng, static_cast<size_t>(B * Tn * D)), g = rand_vec(rng, H, 0.5f, 2.f);
        Vec raws(static_cast<size_t>(B * S * D));
        for (int64_t b = 0; b < B; ++b)
          std::copy_n(raw.begin() + (b * Tn + from) * D, S * D, raws.begin() + b * S * D);
        Dev graw(*be, raw), graws(*be, raws), gg(*be, g), rstd(*be, Vec(B * Tn * H)), rstds(*be, Vec(B * S * H));
        DeviceBuffer<float> full(*be, raw.size(), Storage::operand), got(*be, raws.size(), Storage::operand);
        const double base = 10000.0 * (1.0 + static_cast<double>(from) / 1000.0);  // any base, the same for both
        be->qk_prep_forward(graw.p(), B, Tn, H, hd, rot, base, norm, 1e-6f, gain ? gg.p() : nullptr, rstd.p(),
                            full.get(), full.get());
        be->qk_prep_forward_suffix(graws.p(), B, Tn, from, H, hd, rot, base, norm, 1e-6f, gain ? gg.p() : nullptr,
                                   rstds.p(), got.get());
        DeviceBuffer<float> rows(*be, raws.size(), Storage::operand);
        be->gather_rows(full.get(), B, Tn, from, D, rows.get());
        Dev want(*be, raws), out(*be, raws);
        be->operand_values(rows.get(), raws.size(), want.p());
        be->operand_values(got.get(), raws.size(), out.p());
        check_exact("qk_prep_forward_suffix out" + tag, out.get(), want.get());
        if (norm) {
          const Vec all = rstd.get();
          Vec want_r(static_cast<size_t>(B * S * H));
          for (int64_t b = 0; b < B; ++b)
            std::copy_n(all.begin() + (b * Tn + from) * H, S * H, want_r.begin() + b * S * H);
          check_exact("qk_prep_forward_suffix rstd" + tag, rstds.get(), want_r);
        }
      }
}

TEST_CASE("cuda: causal GQA attention forward and backward", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(8);
  const AttnShape shapes[] = {
      {1, 1, 1, 1, 16},   {2, 65, 4, 2, 16},  {1, 130, 2, 1, 32},  {2, 64, 4, 4, 64},  {1, 200, 8, 2, 64},
      {1, 129, 2, 1, 128}, {1, 70, 3, 1, 96}, {2, 100, 2, 2, 48},  {1, 77, 4, 1, 6},   {1, 300, 8, 4, 64},
  };
  for (const auto& s : shapes) attention_case(*cpu, *g, rng, s, 1.f, true, true);
  // Peaked softmax (large scores), and partial gradient requests.
  attention_case(*cpu, *g, rng, {1, 150, 4, 2, 64}, 8.f, true, true);
  attention_case(*cpu, *g, rng, {2, 90, 4, 2, 32}, 1.f, true, false);
  attention_case(*cpu, *g, rng, {2, 90, 4, 2, 32}, 1.f, false, true);
  // Random shapes.
  for (int it = 0; it < 4; ++it) {
    const int64_t Hkv = pick(rng, {1, 2, 4}), H = Hkv * pick(rng, {1, 2, 4});
    attention_case(*cpu, *g, rng,
                   {rand_int(rng, 1, 3), rand_int(rng, 1, 260), H, Hkv, pick(rng, {8, 16, 32, 64, 128})}, 1.f, true,
                   true);
  }
}

// Training sequences up to 4096 and longer eval windows ([long]: too slow for the emulator's CI run).
TEST_CASE("cuda: attention at T = 4096 and 8192", "[gpu][long]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(81);
  attention_case(*cpu, *g, rng, {1, 4096, 1, 1, 64}, 1.f, true, true);
  attention_case(*cpu, *g, rng, {1, 8192, 1, 1, 64}, 1.f, true, true);
}

TEST_CASE("cuda: attention refuses shapes it does not support", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = gpu_backend();
  Dev a(*g, Vec(4 * 136)), l(*g, Vec(8));
  CHECK_THROWS_AS(g->attention_forward(a.p(), a.p(), a.p(), 1, 2, 2, 2, 136, a.p(), l.p()), std::invalid_argument);
  CHECK_THROWS_AS(g->attention_forward(a.p(), a.p(), a.p(), 1, 2, 3, 2, 16, a.p(), l.p()), std::invalid_argument);
}

TEST_CASE("cuda: softcap cross-entropy", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(11);
  struct Case {
    int64_t N, V;
    float cap, gs, zrange;
  };
  const Case cases[] = {{1, 1, 30.f, 1.f, 5.f},      {37, 5, 0.f, 1.f, 5.f},      {300, 1024, 30.f, 1.f / 300, 20.f},
                        {64, 1000, 2.f, 0.5f, 10.f}, {129, 3000, 0.f, 1.f, 40.f}, {2048, 1024, 15.f, 1.f / 2048, 60.f}};
  for (const auto& c : cases) {
    const std::string shape = " N=" + std::to_string(c.N) + " V=" + std::to_string(c.V) +
                              " cap=" + std::to_string(static_cast<int>(c.cap));
    const Vec z = rand_vec(rng, c.N * c.V, -c.zrange, c.zrange);
    std::vector<int32_t> y(static_cast<size_t>(c.N));
    for (auto& t : y) t = static_cast<int32_t>(rand_int(rng, 0, c.V - 1));
    std::vector<double> lc(c.N), lg(c.N);
    Vec dz(c.N * c.V);
    const double sum_c = cpu->softcap_cross_entropy(z.data(), y.data(), c.N, c.V, c.cap, lc.data(), dz.data(), c.gs);
    Dev gz(*g, z), gdz(*g, Vec(c.N * c.V));
    DevIdx gy(*g, y);
    const double sum_g = g->softcap_cross_entropy(gz.p(), gy.p(), c.N, c.V, c.cap, lg.data(), gdz.p(), c.gs);
    check_close("softcap_cross_entropy losses" + shape, Vec(lg.begin(), lg.end()), Vec(lc.begin(), lc.end()), 3e-5,
                0.0);
    check_close("softcap_cross_entropy sum" + shape, {static_cast<float>(sum_g)}, {static_cast<float>(sum_c)},
                3e-5 * c.N, 1e-6);
    check_close("softcap_cross_entropy dz" + shape, gdz.get(), dz, 5e-6 * c.gs, 0.0);
    // dz aliasing z, and no per-token losses requested
    const double sum_a = g->softcap_cross_entropy(gz.p(), gy.p(), c.N, c.V, c.cap, nullptr, gz.p(), c.gs);
    CHECK(sum_a == sum_g);
    check_close("softcap_cross_entropy dz aliasing z" + shape, gz.get(), dz, 5e-6 * c.gs, 0.0);
  }
  // A target outside the vocabulary throws, like the CPU reference.
  Dev gz(*g, Vec(3 * 10));
  DevIdx bad(*g, {1, 10, 2});
  CHECK_THROWS_AS(g->softcap_cross_entropy(gz.p(), bad.p(), 3, 10, 30.f, nullptr, nullptr, 1.f), std::out_of_range);
  DevIdx neg(*g, {-1, 0, 2});
  CHECK_THROWS_AS(g->softcap_cross_entropy(gz.p(), neg.p(), 3, 10, 30.f, nullptr, nullptr, 1.f), std::out_of_range);
  // ... and the backend stays usable afterwards.
  DevIdx ok(*g, {1, 9, 2});
  CHECK(std::isfinite(g->softcap_cross_entropy(gz.p(), ok.p(), 3, 10, 30.f, nullptr, nullptr, 1.f)));
}

TEST_CASE("cuda: softcap cross-entropy accumulating on the device (the training form)", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = gpu_backend();
  std::mt19937_64 rng(12);
  const int64_t N = 777, V = 1024;
  const float cap = 30.f, gs = 1.f / N;
  double want = 0;
  std::deque<Dev> zs;  // deque: DevIdx cannot move
  std::deque<DevIdx> ys;
  std::vector<Vec> dzs;
  for (int i = 0; i < 3; ++i) {
    const Vec z = rand_vec(rng, N * V, -20.f, 20.f);
    std::vector<int32_t> y(static_cast<size_t>(N));
    for (auto& t : y) t = static_cast<int32_t>(rand_int(rng, 0, V - 1));
    zs.emplace_back(*g, z);
    ys.emplace_back(*g, y);
    Dev dz(*g, Vec(N * V));
    want += g->softcap_cross_entropy(zs.back().p(), ys.back().p(), N, V, cap, nullptr, dz.p(), gs);
    dzs.push_back(dz.get());
  }
  for (int i = 0; i < 3; ++i) {
    Dev dz(*g, Vec(N * V));
    g->softcap_cross_entropy_accumulate(zs[i].p(), ys[i].p(), N, V, cap, dz.p(), gs);
    CHECK(dz.get() == dzs[i]);  // the same kernel writes dz
  }
  const double got = g->take_loss_sum();
  CHECK(got == Approx(want).epsilon(1e-12));  // double sums of the same losses, in another order
  CHECK(g->take_loss_sum() == 0.0);
  // A bad target is reported by the next read, which also resets, so the backend stays usable.
  DevIdx bad(*g, {1, 10, 2});
  Dev gz(*g, Vec(3 * 10));
  g->softcap_cross_entropy_accumulate(gz.p(), bad.p(), 3, 10, cap, nullptr, 1.f);
  CHECK_THROWS_AS(g->take_loss_sum(), std::out_of_range);
  DevIdx ok(*g, {1, 9, 2});
  g->softcap_cross_entropy_accumulate(gz.p(), ok.p(), 3, 10, cap, nullptr, 1.f);
  CHECK(std::isfinite(g->take_loss_sum()));
}

// Attention reads q, k, v, dout and out from operand buffers as it reads them from fp32 memory, in bf16 mode with
// the flash kernels (hd 64) and with the fp32 kernels (hd 40): both round those inputs to bf16. Its out and dv go
// into operand buffers rounded.
TEST_CASE("cuda: attention gives the same results from operand buffers as from fp32 inputs", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(59);
  for (const AttnShape& s : {AttnShape{2, 70, 4, 2, 64}, AttnShape{1, 50, 2, 1, 40}}) {
    const std::string shape = " hd=" + std::to_string(s.hd);
    const size_t nq = static_cast<size_t>(s.B * s.Tn * s.H * s.hd), nkv = static_cast<size_t>(s.B * s.Tn * s.Hkv * s.hd);
    const Vec q = rand_vec(rng, nq), k = rand_vec(rng, nkv), v = rand_vec(rng, nkv), dout = rand_vec(rng, nq);
    Dev gq(*g, q), gk(*g, k), gv(*g, v), gdout(*g, dout), out(*g, Vec(nq)), lse(*g, Vec(s.B * s.H * s.Tn));
    DeviceBuffer<float> oq(*g, nq, Storage::operand), ok(*g, nkv, Storage::operand), ov(*g, nkv, Storage::operand),
        odout(*g, nq, Storage::operand);
    g->store_operand(oq.get(), gq.p(), nq);
    g->store_operand(ok.get(), gk.p(), nkv);
    g->store_operand(ov.get(), gv.p(), nkv);
    g->store_operand(odout.get(), gdout.p(), nq);
    Dev out_op(*g, Vec(nq)), lse_op(*g, Vec(s.B * s.H * s.Tn));
    g->attention_forward(gq.p(), gk.p(), gv.p(), s.B, s.Tn, s.H, s.Hkv, s.hd, out.p(), lse.p());
    g->attention_forward(oq.get(), ok.get(), ov.get(), s.B, s.Tn, s.H, s.Hkv, s.hd, out_op.p(), lse_op.p());
    check_exact("attention_forward out from operand buffers" + shape, out_op.get(), out.get());
    check_exact("attention_forward lse from operand buffers" + shape, lse_op.get(), lse.get());
    DeviceBuffer<float> oout(*g, nq, Storage::operand);
    Dev out_vals(*g, Vec(nq));
    g->attention_forward(oq.get(), ok.get(), ov.get(), s.B, s.Tn, s.H, s.Hkv, s.hd, oout.get(), lse_op.p());
    g->operand_values(oout.get(), nq, out_vals.p());
    check_exact("attention_forward out into an operand buffer" + shape, out_vals.get(), bf16_rounded(out.get()));
    Dev dq(*g, Vec(nq)), dk(*g, Vec(nkv)), dv(*g, Vec(nkv)), dq_op(*g, Vec(nq)), dk_op(*g, Vec(nkv)),
        dv_op(*g, Vec(nkv));
    g->attention_backward_set(gdout.p(), gq.p(), gk.p(), gv.p(), out.p(), lse.p(), s.B, s.Tn, s.H, s.Hkv, s.hd, dq.p(),
                              dk.p(), dv.p());
    g->attention_backward_set(odout.get(), oq.get(), ok.get(), ov.get(), oout.get(), lse.p(), s.B, s.Tn, s.H, s.Hkv,
                              s.hd, dq_op.p(), dk_op.p(), dv_op.p());
    check_exact("attention_backward_set dq from operand buffers" + shape, dq_op.get(), dq.get());
    check_exact("attention_backward_set dk from operand buffers" + shape, dk_op.get(), dk.get());
    check_exact("attention_backward_set dv from operand buffers" + shape, dv_op.get(), dv.get());
    DeviceBuffer<float> odv(*g, nkv, Storage::operand);
    Dev dv_vals(*g, Vec(nkv));
    g->attention_backward_set(odout.get(), oq.get(), ok.get(), ov.get(), oout.get(), lse.p(), s.B, s.Tn, s.H, s.Hkv,
                              s.hd, dq_op.p(), dk_op.p(), odv.get());
    g->operand_values(odv.get(), nkv, dv_vals.p());
    check_exact("attention_backward_set dv into an operand buffer" + shape, dv_vals.get(), bf16_rounded(dv.get()));
    check_exact("attention_backward_set dq beside an operand dv" + shape, dq_op.get(), dq.get());
    CHECK_THROWS_AS(g->attention_backward(odout.get(), oq.get(), ok.get(), ov.get(), oout.get(), lse.p(), s.B, s.Tn,
                                          s.H, s.Hkv, s.hd, dq_op.p(), dk_op.p(), odv.get()),
                    std::invalid_argument);
  }
}
