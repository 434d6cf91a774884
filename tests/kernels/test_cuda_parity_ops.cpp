// Parity of the CUDA backend with the CPU reference (DESIGN.md principle 2), the basic ops: the device, copies,
// embedding, RMSNorm, the GEMMs (exactly on small integers) and the column-slice writes of q, k and v's
// backward. Tolerances and their reasons: tests/kernels/parity_test_util.h.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <deque>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "formats/error.h"
#include "kernels/cuda_backend.h"
#include "src/ops/backend.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/parity_test_util.h"

using namespace ptool;
using namespace ptool::parity_test;

using ptool::gpu_test::check_exact;
using ptool::gpu_test::Dev;

TEST_CASE("cuda: device and backend basics", "[gpu]") {
  SKIP_WITHOUT_GPU();
  std::printf("device: %s\n", cuda_device_name(0).c_str());
  auto g = make_cuda_backend(0);
  CHECK(std::string(g->name()) == "cuda");
  CHECK_THROWS_AS(make_cuda_backend(1 << 20), Error);
}

TEST_CASE("cuda: upload/download, zero, copy, add, scale, round_bf16", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = gpu_backend();
  std::mt19937_64 rng(1);
  for (size_t n : {size_t{1}, size_t{3}, size_t{4}, size_t{1000}, size_t{4099}, size_t{1} << 20}) {
    INFO("n = " << n);
    const Vec a = rand_vec(rng, n), b = rand_vec(rng, n);
    Dev da(*g, a), db(*g, b);
    check_exact("round trip n=" + std::to_string(n), da.get(), a);
    // add and scale, on aligned and (offset by one float) unaligned pointers
    Vec want = a;
    for (size_t i = 0; i < n; ++i) want[i] += b[i];
    g->add(da.p(), db.p(), n);
    check_exact("add n=" + std::to_string(n), da.get(), want);
    if (n > 1) {
      for (size_t i = 1; i < n; ++i) want[i] += b[i - 1];
      g->add(da.p() + 1, db.p(), n - 1);
      check_exact("add (unaligned) n=" + std::to_string(n), da.get(), want);
    }
    for (auto& x : want) x *= 0.37f;
    g->scale(da.p(), 0.37f, n);
    check_exact("scale n=" + std::to_string(n), da.get(), want);
    for (auto& x : want) x = round_to_bf16(x);  // round_bf16 is the same rounding as the host's
    g->round_bf16(da.p(), n);
    check_exact("round_bf16 n=" + std::to_string(n), da.get(), want);
    g->copy(db.p(), da.p(), n);
    check_exact("copy n=" + std::to_string(n), db.get(), want);
    g->zero(da.p(), n);
    check_exact("zero n=" + std::to_string(n), da.get(), Vec(n, 0.f));
  }
}

TEST_CASE("cuda: embedding forward and backward", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  auto ga = gpu_backend(CudaGemmPrecision::fp32, /*deterministic=*/false);
  std::mt19937_64 rng(2);
  for (int it = 0; it < 6; ++it) {
    const int64_t V = pick(rng, {1, 7, 64, 1024}), D = pick(rng, {1, 5, 64, 512}), N = rand_int(rng, 1, 3000);
    std::vector<int32_t> tok(static_cast<size_t>(N));
    // Skewed ids so that some rows repeat many times.
    for (auto& t : tok) t = static_cast<int32_t>(std::min<int64_t>(V - 1, rand_int(rng, 0, V - 1) % (1 + V / 4)));
    const std::string shape = " V=" + std::to_string(V) + " D=" + std::to_string(D) + " N=" + std::to_string(N);
    const Vec table = rand_vec(rng, V * D), dout = rand_vec(rng, N * D), pre = rand_vec(rng, V * D);
    Vec out(N * D), dt = pre;
    cpu->embedding_forward(table.data(), tok.data(), N, D, out.data());
    cpu->embedding_backward(dout.data(), tok.data(), N, D, dt.data());
    DevIdx dtok(*g, tok);
    Dev dtable(*g, table), ddout(*g, dout), dout_g(*g, Vec(N * D)), ddt(*g, pre);
    g->embedding_forward(dtable.p(), dtok.p(), N, D, dout_g.p());
    g->embedding_backward(ddout.p(), dtok.p(), N, D, ddt.p());
    check_exact("embedding_forward" + shape, dout_g.get(), out);
    check_exact("embedding_backward (sorted)" + shape, ddt.get(), dt);
    // atomic mode: order-dependent rounding, so a tolerance
    DevIdx atok(*ga, tok);
    Dev adout(*ga, dout), adt(*ga, pre);
    ga->embedding_backward(adout.p(), atok.p(), N, D, adt.p());
    check_close("embedding_backward (atomic)" + shape, adt.get(), dt, 1e-5 * std::sqrt(static_cast<double>(N)), 1e-6);
  }
}

TEST_CASE("cuda: the fused embedding + RMSNorm forward equals the ops it replaces, bit for bit", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(12);
  const float eps = std::numeric_limits<float>::epsilon();
  for (int it = 0; it < 8; ++it) {
    const int64_t V = pick(rng, {1, 7, 64, 1024}), D = pick(rng, {1, 5, 64, 512}), N = rand_int(rng, 1, 3000);
    const bool bf16_out = it % 2 == 1, keep_rows = it % 4 < 2;
    std::vector<int32_t> tok(static_cast<size_t>(N));
    for (auto& t : tok) t = static_cast<int32_t>(rand_int(rng, 0, V - 1));
    const std::string shape = " V=" + std::to_string(V) + " D=" + std::to_string(D) + " N=" + std::to_string(N) +
                              (bf16_out ? " bf16" : "") + (keep_rows ? " rows kept" : "");
    const Vec table = rand_vec(rng, V * D, -0.1f, 0.1f);
    // The composition on the same device: lookup, norm, rounding.
    DevIdx dtok(*g, tok);
    Dev dtable(*g, table), rows(*g, Vec(N * D)), want(*g, Vec(N * D)), want_rstd(*g, Vec(N));
    g->embedding_forward(dtable.p(), dtok.p(), N, D, rows.p());
    g->rmsnorm_forward(rows.p(), N, D, eps, want.p(), want_rstd.p());
    if (bf16_out) g->round_bf16(want.p(), static_cast<size_t>(N * D));
    Dev emb(*g, Vec(N * D, -7.f)), out(*g, Vec(N * D)), rstd(*g, Vec(N));
    g->embedding_rmsnorm_forward(dtable.p(), dtok.p(), N, D, eps, bf16_out, keep_rows ? emb.p() : nullptr, out.p(),
                                 rstd.p());
    check_exact("embedding_rmsnorm_forward out" + shape, out.get(), want.get());
    check_exact("embedding_rmsnorm_forward rstd" + shape, rstd.get(), want_rstd.get());
    check_exact("embedding_rmsnorm_forward rows" + shape, emb.get(), keep_rows ? rows.get() : Vec(N * D, -7.f));
    // And the CPU backend's default composition.
    Vec cout(N * D), crstd(N), cemb(N * D);
    cpu->embedding_rmsnorm_forward(table.data(), tok.data(), N, D, eps, bf16_out, cemb.data(), cout.data(),
                                   crstd.data());
    // rstd's double sums run in another order here, which can move a bf16 rounding by one bf16 step (2^-8).
    check_close("embedding_rmsnorm_forward vs cpu" + shape, out.get(), cout, 1e-6, bf16_out ? 4e-3 : 1e-6);
  }
}

TEST_CASE("cuda: rmsnorm forward and backward", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend();
  std::mt19937_64 rng(3);
  for (int it = 0; it < 6; ++it) {
    const int64_t N = rand_int(rng, 1, 2000), D = pick(rng, {1, 16, 33, 64, 512, 1000});
    const float eps = std::numeric_limits<float>::epsilon();
    const std::string shape = " N=" + std::to_string(N) + " D=" + std::to_string(D);
    const Vec x = rand_vec(rng, N * D, -3.f, 3.f), dout = rand_vec(rng, N * D), pre = rand_vec(rng, N * D);
    Vec out(N * D), rstd(N), dx = pre;
    cpu->rmsnorm_forward(x.data(), N, D, eps, out.data(), rstd.data());
    cpu->rmsnorm_backward(dout.data(), x.data(), rstd.data(), N, D, dx.data());
    Dev gx(*g, x), gout(*g, Vec(N * D)), grstd(*g, Vec(N)), gdout(*g, dout), gdx(*g, pre);
    g->rmsnorm_forward(gx.p(), N, D, eps, gout.p(), grstd.p());
    g->rmsnorm_backward(gdout.p(), gx.p(), grstd.p(), N, D, gdx.p());
    check_close("rmsnorm_forward out" + shape, gout.get(), out, 1e-7, 2e-6);
    check_close("rmsnorm_forward rstd" + shape, grstd.get(), rstd, 0.0, 2e-6);
    check_close("rmsnorm_backward dx (accumulated)" + shape, gdx.get(), dx, 1e-6, 2e-6);
    g->rmsnorm_forward(gx.p(), N, D, eps, gx.p(), grstd.p());  // in place
    check_close("rmsnorm_forward in place" + shape, gx.get(), out, 1e-7, 2e-6);
  }
}

TEST_CASE("cuda: linear is exact on small integers (fp32, TF32 and bf16 GEMMs)", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  std::mt19937_64 rng(4);
  struct Range {
    int lim, iters;
    int64_t max_dim;
  };
  for (auto prec : kAllPrecisions) {
    auto g = gpu_backend(prec);
    const std::string mode = tag_of(prec);
    // |values| <= 8 for every mode; bf16 also at its limit, |values| <= 256 (dims <= 200 keep sums below 2^24)
    std::vector<Range> ranges{{8, 8, 300}};
    if (prec == CudaGemmPrecision::bf16) ranges.push_back({256, 4, 200});
    for (const Range& r : ranges) {
      for (int it = 0; it < r.iters; ++it) {
        const int64_t N = rand_int(rng, 1, r.max_dim), K = rand_int(rng, 1, r.max_dim),
                      M = rand_int(rng, 1, r.max_dim);
        const std::string shape = " |v|<=" + std::to_string(r.lim) + " N=" + std::to_string(N) +
                                  " K=" + std::to_string(K) + " M=" + std::to_string(M);
        const Vec x = rand_ints(rng, N * K, -r.lim, r.lim), W = rand_ints(rng, M * K, -r.lim, r.lim),
                  dy = rand_ints(rng, N * M, -r.lim, r.lim);
        const Vec dx0 = rand_ints(rng, N * K, -100, 100), dW0 = rand_ints(rng, M * K, -100, 100);
        Vec y(N * M), dx = dx0, dW = dW0;
        cpu->linear_forward(x.data(), W.data(), N, K, M, y.data());
        cpu->linear_backward(dy.data(), x.data(), W.data(), N, K, M, dx.data(), dW.data());
        Dev gx(*g, x), gW(*g, W), gdy(*g, dy), gy(*g, Vec(N * M, 123.f)), gdx(*g, dx0), gdW(*g, dW0);
        g->linear_forward(gx.p(), gW.p(), N, K, M, gy.p());
        g->linear_backward(gdy.p(), gx.p(), gW.p(), N, K, M, gdx.p(), gdW.p());
        check_exact("linear_forward" + mode + shape, gy.get(), y);
        check_exact("linear_backward dx (accumulated)" + mode + shape, gdx.get(), dx);
        check_exact("linear_backward dW (accumulated)" + mode + shape, gdW.get(), dW);
        // null gradient pointers skip that gradient
        Dev gdx2(*g, dx0), gdW2(*g, dW0);
        g->linear_backward(gdy.p(), gx.p(), gW.p(), N, K, M, nullptr, gdW2.p());
        g->linear_backward(gdy.p(), gx.p(), gW.p(), N, K, M, gdx2.p(), nullptr);
        check_exact("linear_backward dx only" + mode + shape, gdx2.get(), dx);
        check_exact("linear_backward dW only" + mode + shape, gdW2.get(), dW);
      }
    }
  }
}

TEST_CASE("cuda: linear on random floats", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  std::mt19937_64 rng(5);
  for (auto prec : kAllPrecisions) {
    auto g = gpu_backend(prec);
    const std::string mode = tag_of(prec);
    for (int it = 0; it < 4; ++it) {
      const int64_t N = pick(rng, {1, 77, 512, 1024}), K = pick(rng, {64, 100, 512}), M = pick(rng, {1, 64, 256, 1000});
      const std::string shape = " N=" + std::to_string(N) + " K=" + std::to_string(K) + " M=" + std::to_string(M);
      // W offset by one float inside its buffer: an unaligned operand, as parameter slices can be
      const Vec x = rand_vec(rng, N * K), Wbuf = rand_vec(rng, M * K + 1), dy = rand_vec(rng, N * M);
      const Vec W(Wbuf.begin() + 1, Wbuf.end());
      Vec y(N * M), dx(N * K, 0.f), dW(M * K, 0.f);
      cpu->linear_forward(x.data(), W.data(), N, K, M, y.data());
      cpu->linear_backward(dy.data(), x.data(), W.data(), N, K, M, dx.data(), dW.data());
      Dev gx(*g, x), gW(*g, Wbuf), gdy(*g, dy), gy(*g, Vec(N * M)), gdx(*g, Vec(N * K)), gdW(*g, Vec(M * K + 1));
      g->linear_forward(gx.p(), gW.p() + 1, N, K, M, gy.p());
      g->linear_backward(gdy.p(), gx.p(), gW.p() + 1, N, K, M, gdx.p(), gdW.p() + 1);
      Vec gdw = gdW.get();
      gdw.erase(gdw.begin());
      // error of a length-L dot product of U(-1,1) values: fp32 ~ 1e-7 sqrt(L), TF32 ~ 5e-4 sqrt(L) / 3,
      // bf16 ~ 8e-4 sqrt(L)
      const double r = prec == CudaGemmPrecision::bf16 ? 8e-3 : prec == CudaGemmPrecision::tf32 ? 2e-3 : 1e-5;
      check_close("linear_forward" + mode + shape, gy.get(), y, r * std::sqrt(static_cast<double>(K)), 0.0);
      check_close("linear_backward dx" + mode + shape, gdx.get(), dx, r * std::sqrt(static_cast<double>(M)), 0.0);
      check_close("linear_backward dW" + mode + shape, gdw, dW, r * std::sqrt(static_cast<double>(N)), 0.0);
    }
  }
}

// Three weights of one input, as q, k and v: exact against the CPU on small integers, and bit-identical to the
// separate calls on floats (the same conversions and GEMMs).
TEST_CASE("cuda: linears sharing one input match separate calls", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  std::mt19937_64 rng(19);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  using Out = Backend<float>::LinearOut;
  for (auto prec : kAllPrecisions) {
    auto g = gpu_backend(prec);
    const std::string mode = tag_of(prec);
    for (bool ints : {true, false}) {
      const int64_t N = rand_int(rng, 1, 300), K = rand_int(rng, 1, 200);
      const int64_t Ms[3] = {rand_int(rng, 1, 200), rand_int(rng, 1, 100), rand_int(rng, 1, 100)};
      const std::string shape = std::string(ints ? " ints" : " floats") + " N=" + std::to_string(N) +
                                " K=" + std::to_string(K) + " M=" + std::to_string(Ms[0]) + "," +
                                std::to_string(Ms[1]) + "," + std::to_string(Ms[2]);
      auto values = [&](int64_t n) { return ints ? rand_ints(rng, n, -8, 8) : rand_vec(rng, n); };
      const Vec x = values(N * K);
      std::vector<Vec> W, y;
      std::vector<Out> outs;
      for (int64_t M : Ms) W.push_back(values(M * K));
      for (int i = 0; i < 3; ++i) {
        y.emplace_back(N * Ms[i]);
        outs.push_back({W[i].data(), Ms[i], y[i].data()});
      }
      cpu->linear_forward_shared(x.data(), N, K, outs);
      Dev gx(*g, x);
      std::deque<Dev> gW, gy, sy;
      std::vector<Out> gouts;
      for (int i = 0; i < 3; ++i) {
        gW.emplace_back(*g, W[i]);
        gy.emplace_back(*g, Vec(N * Ms[i], nan));
        sy.emplace_back(*g, Vec(N * Ms[i]));
        gouts.push_back({gW[i].p(), Ms[i], gy[i].p()});
        g->linear_forward(gx.p(), gW[i].p(), N, K, Ms[i], sy[i].p());
      }
      g->linear_forward_shared(gx.p(), N, K, gouts);
      for (int i = 0; i < 3; ++i) {
        const std::string w = " W" + std::to_string(i) + mode + shape;
        check_exact("linear_forward_shared y vs separate" + w, gy[i].get(), sy[i].get());
        if (ints) check_exact("linear_forward_shared y" + w, gy[i].get(), y[i]);
      }
    }
  }
  // An empty first weight (M = 0) and weights at odd offsets (unaligned, as parameter slices can be).
  for (auto prec : kAllPrecisions) {
    auto g = gpu_backend(prec);
    const int64_t N = 33, K = 20, Ms[3] = {0, 7, 12};
    const Vec x = rand_ints(rng, N * K, -8, 8);
    std::vector<Vec> Wb, y;
    std::vector<Out> outs;
    for (int64_t M : Ms) Wb.push_back(rand_ints(rng, M * K + 1, -8, 8));
    for (int i = 0; i < 3; ++i) y.emplace_back(N * Ms[i], 0.f);
    for (int i = 0; i < 3; ++i) outs.push_back({Wb[i].data() + 1, Ms[i], y[i].data()});
    cpu->linear_forward_shared(x.data(), N, K, outs);
    Dev gx(*g, x);
    std::deque<Dev> gW, gy;
    std::vector<Out> gouts;
    for (int i = 0; i < 3; ++i) {
      gW.emplace_back(*g, Wb[i]);
      gy.emplace_back(*g, Vec(N * Ms[i], nan));
      gouts.push_back({gW[i].p() + 1, Ms[i], gy[i].p()});
    }
    g->linear_forward_shared(gx.p(), N, K, gouts);
    for (int i = 1; i < 3; ++i)
      check_exact("linear_forward_shared y, unaligned W" + std::to_string(i) + tag_of(prec), gy[i].get(), y[i]);
  }
}

// copy_columns places a source's rows into its columns of dst and leaves the others: exactly on plain memory, and
// as stored from operand and activation buffers (bf16 in the bf16 mode) into an operand buffer, rounding a plain
// source there.
TEST_CASE("cuda: copy_columns places a source's rows in its columns of a wider matrix", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  std::mt19937_64 rng(67);
  using Slice = Backend<float>::ColumnSlice;
  for (const int64_t N : {int64_t{1}, int64_t{37}, int64_t{300}}) {
    // Three sources side by side from column 2 of rows 100 wide: columns 0, 1 and 100 - 2 keep their 5s.
    const int64_t widths[3] = {64, 1, 33}, offs[3] = {2, 66, 67}, W = 100;
    std::vector<Vec> src;
    for (int64_t w : widths) src.push_back(rand_vec(rng, N * w));
    Vec want(N * W, 5.f), got(N * W, 5.f);
    for (int64_t n = 0; n < N; ++n)
      for (int i = 0; i < 3; ++i)
        for (int64_t j = 0; j < widths[i]; ++j) want[n * W + offs[i] + j] = src[i][n * widths[i] + j];
    const std::string shape = " N=" + std::to_string(N);
    for (int i = 0; i < 3; ++i) cpu->copy_columns(src[i].data(), N, widths[i], Slice(got.data(), W, offs[i]));
    check_exact("copy_columns on the CPU" + shape, got, want);
    {
      auto g = gpu_backend();
      Dev a(*g, src[0]), b(*g, src[1]), c(*g, src[2]), dst(*g, Vec(N * W, 5.f));
      const Dev* ds[3] = {&a, &b, &c};
      for (int i = 0; i < 3; ++i) g->copy_columns(ds[i]->p(), N, widths[i], Slice(dst.p(), W, offs[i]));
      check_exact("copy_columns, plain memory" + shape, dst.get(), want);
      Dev whole(*g, Vec(N * widths[0]));
      g->copy_columns(a.p(), N, widths[0], whole.p());  // a buffer of its own: a copy
      check_exact("copy_columns into a whole buffer" + shape, whole.get(), src[0]);
    }
    auto g = gpu_backend(CudaGemmPrecision::bf16);
    DeviceBuffer<float> op(*g, N * widths[0], Storage::operand), act(*g, N * widths[1], Storage::activation),
        dst(*g, N * W, Storage::operand);
    Dev a(*g, src[0]), b(*g, src[1]), c(*g, src[2]), vals(*g, Vec(N * W, 5.f));
    g->store_operand(op.get(), a.p(), N * widths[0]);
    g->store_operand(act.get(), b.p(), N * widths[1]);
    g->store_operand(dst.get(), vals.p(), N * W);
    const float* from[3] = {op.get(), act.get(), c.p()};
    for (int i = 0; i < 3; ++i) g->copy_columns(from[i], N, widths[i], Slice(dst.get(), W, offs[i]));
    g->operand_values(dst.get(), N * W, vals.p());
    check_exact("copy_columns, bf16 buffers and a plain source into an operand buffer" + shape, vals.get(),
                bf16_rounded(want));
  }
}

namespace {

// The model's q, k, v backward (attention_backward_set, qk_prep_backward_gain, qk_prep_backward with QK-norm):
// the raw gradients of v, q and k written into operand buffers of their own and placed side by side on the host
// (`slices` false), or written by the ops straight into their columns of one operand buffer whose rows are
// ld > D + 2 KV apart (true; the last columns keep their 5s). Returns the [N, ld] values.
Vec qkv_raw_gradients(Backend<float>& be, bool slices, int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd,
                      bool q_norm, uint64_t seed) {
  using Slice = Backend<float>::ColumnSlice;
  std::mt19937_64 rng(seed);
  const int64_t N = B * Tn, D = H * hd, KV = Hkv * hd, ld = D + 2 * KV + 6, rot = hd / 2;
  const size_t nq = static_cast<size_t>(N * D), nkv = static_cast<size_t>(N * KV);
  Dev rq(be, rand_vec(rng, nq, -2.f, 2.f)), rk(be, rand_vec(rng, nkv, -2.f, 2.f)), v(be, rand_vec(rng, nkv));
  Dev gain(be, rand_vec(rng, static_cast<size_t>(H), 0.5f, 2.f)), dout(be, rand_vec(rng, nq));
  Dev rstd_q(be, Vec(N * H)), rstd_k(be, Vec(N * Hkv)), q(be, Vec(nq)), k(be, Vec(nkv)), out(be, Vec(nq));
  Dev lse(be, Vec(N * H)), dq(be, Vec(nq)), dk(be, Vec(nkv)), dg(be, Vec(H, 0.f));
  be.qk_prep_forward(rq.p(), B, Tn, H, hd, rot, 10000.0, q_norm, 1e-6f, gain.p(), rstd_q.p(), q.p(), q.p());
  be.qk_prep_forward(rk.p(), B, Tn, Hkv, hd, rot, 10000.0, true, 1e-6f, nullptr, rstd_k.p(), k.p(), k.p());
  be.attention_forward(q.p(), k.p(), v.p(), B, Tn, H, Hkv, hd, out.p(), lse.p());
  DeviceBuffer<float> all(be, static_cast<size_t>(N * ld), Storage::operand);
  Dev vals(be, Vec(N * ld, 5.f));
  be.store_operand(all.get(), vals.p(), static_cast<size_t>(N * ld));
  if (slices) {
    be.attention_backward_set(dout.p(), q.p(), k.p(), v.p(), out.p(), lse.p(), B, Tn, H, Hkv, hd, dq.p(), dk.p(),
                              Slice(all.get(), ld, D + KV));
    be.qk_prep_backward_gain(dq.p(), gain.p(), dg.p(), rq.p(), rstd_q.p(), B, Tn, H, hd, rot, 10000.0, q_norm, 1e-6f,
                             Slice(all.get(), ld, 0));
    be.qk_prep_backward(dk.p(), rk.p(), rstd_k.p(), B, Tn, Hkv, hd, rot, 10000.0, true, Slice(all.get(), ld, D));
    be.operand_values(all.get(), static_cast<size_t>(N * ld), vals.p());
    return vals.get();
  }
  DeviceBuffer<float> gq(be, nq, Storage::operand), gk(be, nkv, Storage::operand), gv(be, nkv, Storage::operand);
  be.attention_backward_set(dout.p(), q.p(), k.p(), v.p(), out.p(), lse.p(), B, Tn, H, Hkv, hd, dq.p(), dk.p(),
                            gv.get());
  be.qk_prep_backward_gain(dq.p(), gain.p(), dg.p(), rq.p(), rstd_q.p(), B, Tn, H, hd, rot, 10000.0, q_norm, 1e-6f,
                           gq.get());
  be.qk_prep_backward(dk.p(), rk.p(), rstd_k.p(), B, Tn, Hkv, hd, rot, 10000.0, true, gk.get());
  Vec want(static_cast<size_t>(N * ld), 5.f);
  const std::pair<const float*, int64_t> parts[3] = {{gq.get(), D}, {gk.get(), KV}, {gv.get(), KV}};
  int64_t col = 0;
  for (const auto& [buf, w] : parts) {
    Dev part(be, Vec(static_cast<size_t>(N * w)));
    be.operand_values(buf, static_cast<size_t>(N * w), part.p());
    const Vec h = part.get();
    for (int64_t n = 0; n < N; ++n) std::copy_n(h.begin() + n * w, w, want.begin() + n * ld + col);
    col += w;
  }
  return want;
}

}  // namespace

// Written through ColumnSlices the three ops give exactly what they write into buffers of their own, on the CPU
// (through its scratch copies) and on the GPU (the flash kernels at hd 64 in bf16, the fp32 kernels otherwise).
TEST_CASE("cuda: q, k and v's backward ops write their columns of one wider operand buffer", "[gpu]") {
  SKIP_WITHOUT_GPU();
  const ThreeBackends backends;
  uint64_t seed = 90;
  for (const auto& [name, be] : backends.all())
    for (const int64_t hd : {int64_t{64}, int64_t{48}})
      for (const bool q_norm : {true, false}) {
        const std::string tag = std::string(" on ") + name + " hd=" + std::to_string(hd) + (q_norm ? " q norm" : "");
        const Vec want = qkv_raw_gradients(*be, false, 2, 37, 4, 2, hd, q_norm, seed);
        const Vec got = qkv_raw_gradients(*be, true, 2, 37, 4, 2, hd, q_norm, seed++);
        check_exact("q, k, v raw gradients side by side" + tag, got, want);
      }
}
