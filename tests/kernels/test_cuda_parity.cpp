// Parity of the CUDA backend (kernels/) with the CPU reference backend (DESIGN.md principle 2): every op's
// forward and backward on random shapes, GEMMs exactly on small integers, the whole tiny model's loss and
// gradients, and bit-identical repeat runs. Every test is tagged [gpu] and skips (with a warning) when no CUDA
// device is present. Each comparison prints the share of its tolerance that the worst element used.
//
// Tolerances (|gpu - cpu| <= atol + rtol |cpu| per element unless stated) and why:
// - copies, embedding forward, deterministic embedding backward, zero/add/scale: exact (same fp32 operations in
//   the same order).
// - GEMMs on small integers: exact in fp32, TF32 and bf16 (products and sums are exactly representable; bf16
//   holds every integer up to 256, and with N, K, M <= 200 every partial sum of such products stays below 2^24).
// - GEMMs on U(-1, 1) floats: 1e-5 sqrt(L) absolute in fp32, 2e-3 sqrt(L) in TF32, 8e-3 sqrt(L) in bf16 (L the
//   inner length; bf16 rounds each input by up to 2^-8 relative, so one product is off by ~8e-4 rms and a sum of
//   L of them by ~8e-4 sqrt(L): the bound is ~10 sigma).
// - element-wise ops with one multiply-add: 1e-6 relative (the CPU and nvcc may fuse a*b+c differently).
// - column reductions (ds, dw, dg, dm): 1e-5 of the sum of |terms| (the CPU sums N floats in sequence, the GPU
//   in double: the bound is the CPU's own rounding error).
// - RMSNorm: 2e-6 relative (rstd from a double sum of squares on both sides; fused multiply-adds).
// - RoPE: 1e-6 absolute for |x| <= 1 (cos/sin tables may differ by one float ulp).
// - attention: 2e-5 absolute on out and lse, 1e-4 absolute + 1e-4 relative on gradients (fp32 with a different
//   summation order and exp2 instead of exp).
// - softcap cross-entropy: 3e-5 absolute per token loss (fp32 online softmax against the CPU's double), dz
//   within 5e-6 * grad_scale.
// - the tiny model: loss 2e-5 relative and gradients 1e-3 of each tensor's largest |gradient| with fp32 GEMMs;
//   2e-3 and 5e-2 with TF32 GEMMs (10-bit mantissa inputs); 1e-2 and 0.2 with bf16 GEMMs (7-bit mantissa inputs,
//   8x TF32's rounding; activations stay fp32, so the error does not compound through bf16 storage).
// These bounds are the first version's, set before any run on a GPU: the printed shares say how much room each
// check has once it runs on one.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <deque>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "formats/error.h"
#include "kernels/cuda_backend.h"
#include "tests/kernels/gpu_test_util.h"
#include "src/model/config.h"
#include "src/model/layout.h"
#include "src/model/model.h"
#include "src/ops/backend.h"
#include "src/train/muon.h"

using namespace ptool;

using ptool::gpu_test::check_exact;
using ptool::gpu_test::Dev;

namespace {

using Vec = std::vector<float>;

const CudaGemmPrecision kAllPrecisions[] = {CudaGemmPrecision::fp32, CudaGemmPrecision::tf32,
                                            CudaGemmPrecision::bf16};

std::string tag_of(CudaGemmPrecision p) { return std::string(" [") + gemm_precision_name(p) + "]"; }

std::unique_ptr<Backend<float>> gpu_backend(CudaGemmPrecision g = CudaGemmPrecision::fp32, bool det = true) {
  CudaBackendOptions o;
  o.gemm = g;
  o.deterministic = det;
  return make_cuda_backend(o);
}

// The CPU reference and the CUDA backend with its fp32 attention kernels (tf32) and its flash kernels (bf16).
struct ThreeBackends {
  std::unique_ptr<Backend<float>> cpu = make_cpu_backend<float>(), tf32 = gpu_backend(CudaGemmPrecision::tf32),
                                  bf16 = gpu_backend(CudaGemmPrecision::bf16);
  std::vector<std::pair<std::string, Backend<float>*>> all() const {
    return {{"cpu", cpu.get()}, {"tf32", tf32.get()}, {"bf16", bf16.get()}};
  }
};

class DevIdx {
 public:
  DevIdx(Backend<float>& b, const std::vector<int32_t>& h) : b_(&b), p_(b.alloc_index(h.size())) {
    if (!h.empty()) b.upload_index(p_, h.data(), h.size());
  }
  ~DevIdx() {
    if (p_) b_->release_index(p_);
  }
  DevIdx(const DevIdx&) = delete;
  DevIdx& operator=(const DevIdx&) = delete;
  int32_t* p() const { return p_; }

 private:
  Backend<float>* b_;
  int32_t* p_;
};

Vec rand_vec(std::mt19937_64& rng, size_t n, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> u(lo, hi);
  Vec v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// Each element rounded to bf16 (nearest even): what a bf16 operand buffer holds.
Vec bf16_rounded(Vec v) {
  for (auto& f : v) f = train::round_to_bf16(f);
  return v;
}

Vec rand_ints(std::mt19937_64& rng, size_t n, int lo, int hi) {
  std::uniform_int_distribution<int> u(lo, hi);
  Vec v(n);
  for (auto& x : v) x = static_cast<float>(u(rng));
  return v;
}

int64_t pick(std::mt19937_64& rng, std::initializer_list<int64_t> xs) {
  std::vector<int64_t> v(xs);
  return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)];
}

int64_t rand_int(std::mt19937_64& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

// |got - want| <= atol_i + rtol |want| element-wise, with atol_i = atol * scale[i] when scale is given.
void check_close(const std::string& what, const Vec& got, const Vec& want, double atol, double rtol,
                 const std::vector<double>* scale = nullptr) {
  REQUIRE(got.size() == want.size());
  double worst = 0.0;
  size_t wi = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    const double tol = atol * (scale ? (*scale)[i] : 1.0) + rtol * std::abs(w) + 1e-30;
    double share = std::abs(g - w) / tol;
    if (std::isnan(g) != std::isnan(w)) share = INFINITY;
    if (std::isnan(g) && std::isnan(w)) share = 0.0;
    if (!(share <= worst)) {
      worst = share;
      wi = i;
    }
  }
  std::printf("  %-58s %7.2f%% of tolerance (atol %.0e%s, rtol %.0e, n %zu)\n", what.c_str(), 100.0 * worst, atol,
              scale ? " x scale" : "", rtol, got.size());
  INFO(what << ": worst element " << wi << " gpu " << (got.empty() ? 0.f : got[wi]) << " cpu "
            << (want.empty() ? 0.f : want[wi]) << " (" << 100.0 * worst << "% of tolerance)");
  CHECK(worst <= 1.0);
}

// Sum over rows of |a[n, c] * b[n, c]| per column c (plus |prefill|): the scale of a column reduction's error.
std::vector<double> col_abs_sum(const Vec& a, const Vec& b, int64_t N, int64_t D, const Vec& prefill) {
  std::vector<double> s(static_cast<size_t>(D));
  for (int64_t d = 0; d < D; ++d) s[d] = std::abs(prefill[d]);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) s[d] += std::abs(static_cast<double>(a[n * D + d]) * b[n * D + d]);
  for (auto& x : s) x = std::max(x, 1e-6);
  return s;
}

}  // namespace

TEST_CASE("cuda: device and backend basics", "[gpu]") {
  SKIP_WITHOUT_GPU();
  std::printf("device: %s\n", cuda_device_name(0).c_str());
  auto g = make_cuda_backend(0);
  CHECK(std::string(g->name()) == "cuda");
  CHECK_THROWS_AS(make_cuda_backend(1 << 20), Error);
}

TEST_CASE("cuda: upload/download, zero, copy, add, scale", "[gpu]") {
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

namespace {

struct AttnShape {
  int64_t B, Tn, H, Hkv, hd;
};

void attention_case(Backend<float>& cpu, Backend<float>& g, std::mt19937_64& rng, const AttnShape& s, float qscale,
                    bool with_dq, bool with_dkv) {
  const int64_t B = s.B, Tn = s.Tn, H = s.H, Hkv = s.Hkv, hd = s.hd;
  const std::string shape = " B=" + std::to_string(B) + " T=" + std::to_string(Tn) + " H=" + std::to_string(H) +
                            " Hkv=" + std::to_string(Hkv) + " hd=" + std::to_string(hd) +
                            (qscale != 1.f ? " q x" + std::to_string(static_cast<int>(qscale)) : std::string()) +
                            (with_dq && with_dkv ? "" : with_dq ? " (dq only)" : " (dk, dv only)");
  const size_t nq = static_cast<size_t>(B * Tn * H * hd), nkv = static_cast<size_t>(B * Tn * Hkv * hd);
  const Vec q = rand_vec(rng, nq, -qscale, qscale), k = rand_vec(rng, nkv), v = rand_vec(rng, nkv);
  const Vec dout = rand_vec(rng, nq), dq0 = rand_vec(rng, nq), dk0 = rand_vec(rng, nkv), dv0 = rand_vec(rng, nkv);
  Vec out(nq), lse(static_cast<size_t>(B * H * Tn)), dq = dq0, dk = dk0, dv = dv0;
  cpu.attention_forward(q.data(), k.data(), v.data(), B, Tn, H, Hkv, hd, out.data(), lse.data());
  cpu.attention_backward(dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), B, Tn, H, Hkv, hd,
                         with_dq ? dq.data() : nullptr, with_dkv ? dk.data() : nullptr,
                         with_dkv ? dv.data() : nullptr);
  Dev gq(g, q), gk(g, k), gv(g, v), gdout(g, dout), gout(g, Vec(nq)), glse(g, Vec(B * H * Tn));
  Dev gdq(g, dq0), gdk(g, dk0), gdv(g, dv0);
  g.attention_forward(gq.p(), gk.p(), gv.p(), B, Tn, H, Hkv, hd, gout.p(), glse.p());
  check_close("attention_forward out" + shape, gout.get(), out, 2e-5, 0.0);
  check_close("attention_forward lse" + shape, glse.get(), lse, 2e-5, 2e-6);
  // The backward reads the GPU's own out and lse, as the model does.
  g.attention_backward(gdout.p(), gq.p(), gk.p(), gv.p(), gout.p(), glse.p(), B, Tn, H, Hkv, hd,
                       with_dq ? gdq.p() : nullptr, with_dkv ? gdk.p() : nullptr, with_dkv ? gdv.p() : nullptr);
  check_close("attention_backward dq (accumulated)" + shape, gdq.get(), dq, 1e-4, 1e-4);
  check_close("attention_backward dk (accumulated)" + shape, gdk.get(), dk, 1e-4, 1e-4);
  check_close("attention_backward dv (accumulated)" + shape, gdv.get(), dv, 1e-4, 1e-4);
  // Written instead of added (attention_backward_set).
  const auto [want, got] = gpu_test::attention_backward_set_on_both(
      cpu, {dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data()}, g,
      {gdout.p(), gq.p(), gk.p(), gv.p(), gout.p(), glse.p()}, B, Tn, H, Hkv, hd, with_dq, with_dkv);
  if (with_dq) check_close("attention_backward_set dq" + shape, got.dq, want.dq, 1e-4, 1e-4);
  if (with_dkv) {
    check_close("attention_backward_set dk" + shape, got.dk, want.dk, 1e-4, 1e-4);
    check_close("attention_backward_set dv" + shape, got.dv, want.dv, 1e-4, 1e-4);
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

namespace {

std::vector<float> noisy_params(const model::ModelConfig& cfg, const model::ParamLayout& L, uint64_t seed) {
  std::vector<float> p(static_cast<size_t>(L.total));
  model::init_params(cfg, L, seed, p.data());
  // Perturb every tensor (zero-initialised projections too) so that every path carries gradient.
  std::mt19937_64 rng(seed + 1);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (const auto& s : L.specs) {
    const bool scalar = s.group == model::OptGroup::scalar;
    for (int64_t i = 0; i < s.numel; ++i) p[s.offset + i] += (scalar ? 0.1f : 0.03f) * nd(rng);
  }
  return p;
}

struct RunResult {
  double loss = 0.0;
  std::vector<double> losses;
  Vec grads;
};

RunResult run_model(Backend<float>& be, const model::ModelConfig& cfg, const std::vector<float>& params,
                    const std::vector<int32_t>& x, const std::vector<int32_t>& y, int64_t B, int64_t Tn) {
  model::Model<float> m(cfg, be);
  m.load_params(params.data());
  m.zero_grads();
  RunResult r;
  r.losses.resize(static_cast<size_t>(B * Tn));
  m.forward(x.data(), y.data(), B, Tn, r.losses.data());
  r.loss = m.forward_backward(x.data(), y.data(), B, Tn, 1.f / static_cast<float>(B * Tn));
  r.grads.resize(static_cast<size_t>(m.param_count()));
  be.download(r.grads.data(), m.grads(), r.grads.size());
  return r;
}

model::ModelConfig variant_config() {  // features the presets above do not reach
  model::ModelConfig c = model::preset("tiny");
  c.vocab_size = 300;
  c.d_model = 96;
  c.n_heads = 3;  // head_dim 32
  c.n_kv_heads = 1;
  c.rope_dims = 8;
  c.activation = cpu::Activation::leaky_relu2;
  c.skips = model::SkipKind::gated;
  c.ln_scale = true;
  c.logit_softcap = 15.0;
  c.tie_embeddings = false;
  c.physical_blocks = 3;
  c.schedule = {0, 1, 2, 1, 2};
  c.per_virtual_scalars = true;
  c.train_seq_len = 64;  // evaluated at T = 77 > 64: NTK-rescaled RoPE base
  return c;
}

model::ModelConfig single_block_config() {  // one layer (its norm fused with the final one), no mixing or skips
  model::ModelConfig c = model::preset("tiny");
  c.physical_blocks = 1;
  c.schedule = {0};
  c.norm_scale = true;
  c.resid_mix = false;
  c.skips = model::SkipKind::none;
  c.qk_norm = false;
  return c;
}

}  // namespace

TEST_CASE("cuda: the tiny model's loss and gradients match the CPU backend", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  struct ModelCase {
    std::string name;
    model::ModelConfig cfg;
    int64_t B, Tn;
  };
  const ModelCase cases[] = {{"tiny", model::preset("tiny"), 2, 128},
                             {"tiny T=77", model::preset("tiny"), 3, 77},
                             {"tiny_recurrent", model::preset("tiny_recurrent"), 2, 128},
                             {"variant (leaky, partial rope, gated, ln_scale, untied)", variant_config(), 2, 77},
                             {"one block (norm_scale, no resid_mix, no skips, no qk_norm)", single_block_config(), 2,
                              50}};
  for (const auto& mc : cases) {
    const auto L = model::make_layout(mc.cfg);
    const auto params = noisy_params(mc.cfg, L, 17);
    std::mt19937_64 rng(23);
    std::vector<int32_t> x(static_cast<size_t>(mc.B * mc.Tn)), y(x.size());
    for (auto& t : x) t = static_cast<int32_t>(rand_int(rng, 0, mc.cfg.vocab_size - 1));
    for (auto& t : y) t = static_cast<int32_t>(rand_int(rng, 0, mc.cfg.vocab_size - 1));
    const RunResult want = run_model(*cpu, mc.cfg, params, x, y, mc.B, mc.Tn);
    // Every precision, and bf16 once more with atomics (the flash backward's dQ, the embedding backward).
    const std::pair<CudaGemmPrecision, bool> runs[] = {
        {CudaGemmPrecision::fp32, true}, {CudaGemmPrecision::tf32, true}, {CudaGemmPrecision::bf16, true},
        {CudaGemmPrecision::bf16, false}};
    for (const auto& [prec, det] : runs) {
      const std::string tag = mc.name + tag_of(prec) + (det ? "" : " nondeterministic");
      auto g = gpu_backend(prec, det);
      const RunResult got = run_model(*g, mc.cfg, params, x, y, mc.B, mc.Tn);
      std::printf("%s: loss cpu %.9g gpu %.9g\n", tag.c_str(), want.loss, got.loss);
      // {loss relative, per-token loss absolute, gradient share of the tensor's max}, in enum order fp32, tf32, bf16
      const double tol[3][3] = {{2e-5, 2e-4, 1e-3}, {2e-3, 2e-2, 5e-2}, {1e-2, 1e-1, 2e-1}};
      const double* t = tol[static_cast<int>(prec)];
      const double lrel = t[0];
      check_close(tag + " loss", {static_cast<float>(got.loss)}, {static_cast<float>(want.loss)}, 0.0, lrel);
      check_close(tag + " per-token losses", Vec(got.losses.begin(), got.losses.end()),
                  Vec(want.losses.begin(), want.losses.end()), t[1], lrel);
      const double grel = t[2];
      for (const auto& s : L.specs) {
        const Vec gg(got.grads.begin() + s.offset, got.grads.begin() + s.offset + s.numel);
        const Vec gc(want.grads.begin() + s.offset, want.grads.begin() + s.offset + s.numel);
        double mx = 0.0;
        for (float v : gc) mx = std::max(mx, static_cast<double>(std::abs(v)));
        check_close(tag + " grad " + s.name, gg, gc, grel * mx + 1e-9, 0.0);
      }
    }
  }
}

// bf16 operand buffers change where the bf16 rounding happens (in the op that writes the tensor, not before the
// GEMM), not its result: loss, per-token losses and gradients equal the converting path's bit for bit, and the
// activations GPTQ calibration sees are the fp32 ones rounded to bf16.
TEST_CASE("cuda: bf16 operand buffers give the bf16 mode's results bit for bit", "[gpu]") {
  SKIP_WITHOUT_GPU();
  model::ModelConfig plain_tied = variant_config();  // plain pre-norms (operand h1, h2), tied head, gated skips
  plain_tied.ln_scale = false;
  plain_tied.tie_embeddings = true;
  const std::pair<std::string, model::ModelConfig> cases[] = {
      {"tiny", model::preset("tiny")}, {"variant", variant_config()}, {"variant, plain norms", plain_tied}};
  for (const auto& [name, cfg] : cases) {
    const auto L = model::make_layout(cfg);
    const auto params = noisy_params(cfg, L, 31);
    const int64_t B = 2, Tn = 77;
    std::mt19937_64 rng(37);
    std::vector<int32_t> x(static_cast<size_t>(B * Tn)), y(x.size());
    for (auto& t : x) t = static_cast<int32_t>(rand_int(rng, 0, cfg.vocab_size - 1));
    for (auto& t : y) t = static_cast<int32_t>(rand_int(rng, 0, cfg.vocab_size - 1));
    CudaBackendOptions on, off;
    on.gemm = off.gemm = CudaGemmPrecision::bf16;
    off.bf16_operands = false;
    auto g_on = make_cuda_backend(on), g_off = make_cuda_backend(off);
    const RunResult want = run_model(*g_off, cfg, params, x, y, B, Tn);
    const RunResult got = run_model(*g_on, cfg, params, x, y, B, Tn);
    CHECK(got.loss == want.loss);
    check_exact(name + " per-token losses (operand buffers vs converting)", Vec(got.losses.begin(), got.losses.end()),
                Vec(want.losses.begin(), want.losses.end()));
    check_exact(name + " gradients (operand buffers vs converting)", got.grads, want.grads);

    // What calibration sees: the converting backend's fp32 activations, rounded to bf16.
    std::map<std::string, Vec> seen_on, seen_off;
    for (auto* run : {&seen_on, &seen_off}) {
      Backend<float>& be = run == &seen_on ? *g_on : *g_off;
      model::Model<float> m(cfg, be);
      m.load_params(params.data());
      m.forward(x.data(), y.data(), B, Tn);
      m.visit_linear_inputs([&](const std::string& w, const float* X, int64_t rows, int64_t cols) {
        Vec h(static_cast<size_t>(rows * cols));
        be.download(h.data(), X, h.size());
        (*run)[w] = h;
      });
    }
    // Operand buffers: the pre-norm outputs when the norms are plain, the attention output, the activation and
    // the final norm.
    REQUIRE(seen_on.size() == seen_off.size());
    const bool plain_norms = !cfg.ln_scale && !cfg.norm_scale;
    for (auto& [w, v] : seen_off) {
      const bool pre_norm = w.find("attn.c_") != std::string::npos || w.find("mlp.fc") != std::string::npos;
      const bool operand = !pre_norm || plain_norms;
      check_exact(name + " calibration input " + w + (operand ? " (bf16)" : ""), seen_on.at(w),
                  operand ? bf16_rounded(v) : v);
    }
  }
}

// A forward that scores a suffix of each sequence (sliding eval) gives the full forward's losses and logits for
// those positions: its last layer runs past attention on the scored rows alone.
TEST_CASE("cuda: a suffix forward scores like the full forward", "[gpu]") {
  SKIP_WITHOUT_GPU();
  const auto cfg = model::preset("tiny");
  const auto L = model::make_layout(cfg);
  const auto params = noisy_params(cfg, L, 43);
  const int64_t B = 3, Tn = 40, from = 29, S = Tn - from, V = cfg.vocab_size;
  std::mt19937_64 rng(47);
  std::vector<int32_t> x(static_cast<size_t>(B * Tn)), y(x.size());
  for (auto& t : x) t = static_cast<int32_t>(rand_int(rng, 0, V - 1));
  for (auto& t : y) t = static_cast<int32_t>(rand_int(rng, 0, V - 1));
  for (auto prec : {CudaGemmPrecision::fp32, CudaGemmPrecision::bf16}) {
    auto g = gpu_backend(prec);
    model::Model<float> m(cfg, *g);
    m.load_params(params.data());
    std::vector<double> all(x.size()), part(static_cast<size_t>(B * S));
    m.forward(x.data(), y.data(), B, Tn, all.data());
    Vec full(static_cast<size_t>(B * Tn * V)), suffix(static_cast<size_t>(B * S * V));
    g->download(full.data(), m.logits(), full.size());
    m.forward(x.data(), y.data(), B, Tn, part.data(), from);
    g->download(suffix.data(), m.logits(), suffix.size());
    Vec want_l, got_l, want_z;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = from; t < Tn; ++t) {
        want_l.push_back(static_cast<float>(all[b * Tn + t]));
        got_l.push_back(static_cast<float>(part[b * S + t - from]));
        want_z.insert(want_z.end(), full.begin() + (b * Tn + t) * V, full.begin() + (b * Tn + t + 1) * V);
      }
    check_close("suffix forward losses" + tag_of(prec), got_l, want_l, 1e-5, 1e-5);
    check_close("suffix forward logits" + tag_of(prec), suffix, want_z, 1e-5, 1e-5);
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

// rmsnorm_resid_mix_backward: the fused kernel (D 64 .. 512) gives the composed ops' dx and dx0 bit for bit and
// their dm up to summation order, from fp32 and from a bf16 activation dh; other D compose; the CPU agrees.
TEST_CASE("cuda: the fused RMSNorm + resid_mix backward matches the two ops", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(67);
  for (const int64_t D : {64, 512, 96}) {
    for (const int64_t N : {1, 300, 5000}) {
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

// rmsnorm_channel_scale_backward: the fused kernel (D 64 .. 512) gives the composed ops' dx and dout bit for bit
// (dout in fp32 memory and in an operand buffer) and their ds up to summation order, from fp32 and from bf16
// activation dh and o; other D compose; the CPU agrees.
TEST_CASE("cuda: the fused RMSNorm + channel-scale backward matches the two ops", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(71);
  for (const int64_t D : {128, 512, 96}) {
    for (const int64_t N : {1, 300, 5000}) {
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

// layer_entry_forward gives the composed ops' outputs (scaled_residual_forward for the branch and the skip, then
// resid_mix_rmsnorm_forward) bit for bit, with and without a skip, keeping x and xs or not, from a bf16
// activation branch output into an operand h; the CPU's fused form agrees with its composed ops exactly.
TEST_CASE("cuda: the fused layer entry matches the composed ops", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(79);
  const float eps = 1e-6f;
  for (const int64_t D : {64, 96}) {
    const int64_t N = 301, n = N * D;
    const Vec a = rand_vec(rng, n, -2.f, 2.f), b = bf16_rounded(rand_vec(rng, n)), s = rand_vec(rng, D, 0.5f, 1.5f),
              skip = rand_vec(rng, n, -2.f, 2.f), w = rand_vec(rng, D, 0.5f, 1.5f),
              x0 = rand_vec(rng, n, -2.f, 2.f), m = rand_vec(rng, 2 * D);
    for (const bool with_skip : {false, true}) {
      const std::string shape = " D=" + std::to_string(D) + (with_skip ? " with a skip" : "");
      // composed, CPU and device
      Vec cx(n), cxs(n), cy(n), ch(n), cr(N);
      cpu->scaled_residual_forward(a.data(), b.data(), s.data(), N, D, cx.data());
      if (with_skip) cpu->scaled_residual_forward(cx.data(), skip.data(), w.data(), N, D, cxs.data());
      cpu->resid_mix_rmsnorm_forward(with_skip ? cxs.data() : cx.data(), x0.data(), m.data(), N, D, eps, cy.data(),
                                     ch.data(), cr.data());
      Dev ga(*g, a), gb(*g, b), gs(*g, s), gskip(*g, skip), gw(*g, w), gx0(*g, x0), gm(*g, m);
      Dev x1(*g, Vec(n)), xs1(*g, Vec(n)), y1(*g, Vec(n)), h1(*g, Vec(n)), r1(*g, Vec(N));
      g->scaled_residual_forward(ga.p(), gb.p(), gs.p(), N, D, x1.p());
      if (with_skip) g->scaled_residual_forward(x1.p(), gskip.p(), gw.p(), N, D, xs1.p());
      g->resid_mix_rmsnorm_forward(with_skip ? xs1.p() : x1.p(), gx0.p(), gm.p(), N, D, eps, y1.p(), h1.p(), r1.p());
      DeviceBuffer<float> b_act(*g, n, Storage::activation);
      g->store_operand(b_act.get(), gb.p(), n);
      for (const bool keep : {true, false}) {
        const std::string tag = shape + (keep ? ", keeping x and xs" : ", forward only");
        Vec fx(n), fxs(n), fy(n), fh(n), fr(N);
        cpu->layer_entry_forward(a.data(), b.data(), s.data(), with_skip ? skip.data() : nullptr, w.data(), x0.data(),
                                 m.data(), N, D, eps, keep ? fx.data() : nullptr,
                                 keep && with_skip ? fxs.data() : nullptr, fy.data(), fh.data(), fr.data());
        check_exact("cpu layer_entry_forward y" + tag, fy, cy);
        check_exact("cpu layer_entry_forward h" + tag, fh, ch);
        check_exact("cpu layer_entry_forward rstd" + tag, fr, cr);
        if (keep) check_exact("cpu layer_entry_forward x" + tag, fx, cx);
        if (keep && with_skip) check_exact("cpu layer_entry_forward xs" + tag, fxs, cxs);
        Dev x2(*g, Vec(n)), xs2(*g, Vec(n)), y2(*g, Vec(n)), r2(*g, Vec(N)), hv(*g, Vec(n));
        DeviceBuffer<float> h_op(*g, n, Storage::operand);
        g->layer_entry_forward(ga.p(), b_act.get(), gs.p(), with_skip ? gskip.p() : nullptr, gw.p(), gx0.p(), gm.p(),
                               N, D, eps, keep ? x2.p() : nullptr, keep && with_skip ? xs2.p() : nullptr, y2.p(),
                               h_op.get(), r2.p());
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

  CHECK_THROWS_AS(g->channel_scale_backward(gdy.p(), gx.p(), gs.p(), N, D, opnd.get(), ds.p()),
                  std::invalid_argument);
  CHECK_THROWS_AS(g->activation_backward(cpu::Activation::relu2, gdy.p(), gx.p(), n, opnd.get()),
                  std::invalid_argument);
  Vec host(n);
  CHECK_THROWS_AS(g->download(host.data(), opnd.get(), n), std::invalid_argument);
  CHECK_THROWS_AS(g->copy(plain.p(), opnd.get(), n), std::invalid_argument);
  CHECK_THROWS_AS(g->add(opnd.get(), plain.p(), n), std::invalid_argument);
  CHECK_THROWS_AS(g->channel_scale_forward(gx.p(), gs.p(), N, D, opnd.get()), std::invalid_argument);  // fp32 out
  CHECK_THROWS_AS(g->rmsnorm_backward(gdy.p(), opnd.get(), rstd.p(), N, D, plain.p()), std::invalid_argument);  // x
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
    DeviceBuffer<float> act;
    Dev plain;
  };
  auto pair = [&](const Vec& x) {
    Dev src(*g, x);
    Pair p{DeviceBuffer<float>(*g, x.size(), Storage::activation), Dev(*g, bf16_rounded(x))};
    g->store_operand(p.act.get(), src.p(), x.size());
    return p;
  };
  const Vec xv = rand_vec(rng, n, -3.f, 3.f), dyv = rand_vec(rng, n), sv = rand_vec(rng, D, 0.5f, 1.5f);
  Pair h = pair(xv), dout = pair(dyv);
  Dev x(*g, xv), dy(*g, dyv), sc(*g, sv), r1(*g, Vec(n)), r2(*g, Vec(n)), y1(*g, Vec(n)), y2(*g, Vec(n)),
      rs1(*g, Vec(N)), rs2(*g, Vec(N)), ds1(*g, Vec(D)), ds2(*g, Vec(D));
  for (auto act : {cpu::Activation::relu2, cpu::Activation::leaky_relu2}) {
    g->activation_forward(act, h.act.get(), n, r1.p());
    g->activation_forward(act, h.plain.p(), n, r2.p());
    check_exact("activation_forward from an activation buffer", r1.get(), r2.get());
    g->activation_backward_set(act, dout.act.get(), h.act.get(), n, r1.p());
    g->activation_backward_set(act, dout.plain.p(), h.plain.p(), n, r2.p());
    check_exact("activation_backward_set from activation buffers", r1.get(), r2.get());
    g->activation_backward(act, dout.act.get(), h.act.get(), n, r1.p());
    g->activation_backward(act, dout.plain.p(), h.plain.p(), n, r2.p());
    check_exact("activation_backward from activation buffers", r1.get(), r2.get());
  }
  g->scaled_residual_forward(x.p(), h.act.get(), sc.p(), N, D, y1.p());
  g->scaled_residual_forward(x.p(), h.plain.p(), sc.p(), N, D, y2.p());
  check_exact("scaled_residual_forward with o from an activation buffer", y1.get(), y2.get());
  g->scaled_residual_rmsnorm_forward(x.p(), h.act.get(), sc.p(), N, D, eps, y1.p(), r1.p(), rs1.p());
  g->scaled_residual_rmsnorm_forward(x.p(), h.plain.p(), sc.p(), N, D, eps, y2.p(), r2.p(), rs2.p());
  check_exact("scaled_residual_rmsnorm_forward y, o from an activation buffer", y1.get(), y2.get());
  check_exact("scaled_residual_rmsnorm_forward h, o from an activation buffer", r1.get(), r2.get());
  g->channel_scale_backward_set_dx(dy.p(), h.act.get(), sc.p(), N, D, r1.p(), ds1.p());
  g->channel_scale_backward_set_dx(dy.p(), h.plain.p(), sc.p(), N, D, r2.p(), ds2.p());
  check_exact("channel_scale_backward_set_dx ds, x from an activation buffer", ds1.get(), ds2.get());
  g->rmsnorm_forward(x.p(), N, D, eps, y1.p(), rs1.p());
  g->zero(r1.p(), n);
  g->zero(r2.p(), n);
  g->rmsnorm_backward(dout.act.get(), x.p(), rs1.p(), N, D, r1.p());
  g->rmsnorm_backward(dout.plain.p(), x.p(), rs1.p(), N, D, r2.p());
  check_exact("rmsnorm_backward with dout from an activation buffer", r1.get(), r2.get());
  // q/k preparation reads raw from one, forward and backward (x = [B, Tn, H, hd] rows of the same floats).
  const int64_t B = 2, Tn = 37, H = 3, hd = 16;
  static_assert(B * Tn * H * hd == 37 * 96, "the [N, D] floats reshaped");
  Dev qr1(*g, Vec(B * Tn * H)), qr2(*g, Vec(B * Tn * H));
  g->qk_prep_forward(h.act.get(), B, Tn, H, hd, 8, 10000.0, true, eps, sc.p(), qr1.p(), y1.p(), r1.p());
  g->qk_prep_forward(h.plain.p(), B, Tn, H, hd, 8, 10000.0, true, eps, sc.p(), qr2.p(), y2.p(), r2.p());
  check_exact("qk_prep_forward with raw from an activation buffer", r1.get(), r2.get());
  Dev d1(*g, dyv), d2(*g, dyv);
  g->qk_prep_backward(d1.p(), h.act.get(), qr1.p(), B, Tn, H, hd, 8, 10000.0, true, r1.p());
  g->qk_prep_backward(d2.p(), h.plain.p(), qr2.p(), B, Tn, H, hd, 8, 10000.0, true, r2.p());
  check_exact("qk_prep_backward with raw from an activation buffer", r1.get(), r2.get());
  // A GEMM reads one as its bf16 operand, and writes one rounded.
  const Vec W = rand_vec(rng, 40 * D);
  Dev gW(*g, W), z1(*g, Vec(N * 40)), z2(*g, Vec(N * 40)), zv(*g, Vec(N * 40));
  g->linear_forward(h.act.get(), gW.p(), N, D, 40, z1.p());
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

TEST_CASE("cuda: deterministic mode gives bit-identical repeat runs", "[gpu][determinism]") {
  SKIP_WITHOUT_GPU();
  for (const char* preset : {"tiny", "tiny_recurrent"}) {
    const auto cfg = model::preset(preset);
    const auto L = model::make_layout(cfg);
    const auto params = noisy_params(cfg, L, 5);
    std::mt19937_64 rng(29);
    const int64_t B = 4, Tn = 128;
    std::vector<int32_t> x(static_cast<size_t>(B * Tn)), y(x.size());
    for (auto& t : x) t = static_cast<int32_t>(rand_int(rng, 0, 63));  // few distinct ids: repeated embedding rows
    for (auto& t : y) t = static_cast<int32_t>(rand_int(rng, 0, cfg.vocab_size - 1));
    for (auto prec : kAllPrecisions) {
      auto g1 = gpu_backend(prec);
      auto g2 = gpu_backend(prec);
      const RunResult a = run_model(*g1, cfg, params, x, y, B, Tn);
      const RunResult b = run_model(*g1, cfg, params, x, y, B, Tn);
      const RunResult c = run_model(*g2, cfg, params, x, y, B, Tn);
      const std::string tag = std::string(preset) + tag_of(prec);
      CHECK(a.loss == b.loss);
      CHECK(a.loss == c.loss);
      check_exact(tag + " repeat run, same backend: grads", b.grads, a.grads);
      check_exact(tag + " repeat run, new backend: grads", c.grads, a.grads);
    }
  }
}
