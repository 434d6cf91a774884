// CPU reference op: exclusive self-attention (XSA), forward and backward.
#include <stdexcept>

#include "tests/src/test_ops_harness.h"

using namespace ptool;
using namespace ptool::test_ops;

namespace {

struct XsaShape {
  int64_t N, H, Hkv, hd;
  size_t att_size() const { return static_cast<size_t>(N * H * hd); }
  size_t v_size() const { return static_cast<size_t>(N * Hkv * hd); }
};

// Inputs: att, v.
auto xsa_run(XsaShape s) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    std::vector<T> y(s.att_size());
    cpu::xsa_forward(b.p(0), b.p(1), s.N, s.H, s.Hkv, s.hd, y.data());
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::xsa_backward(g.data(), b.p(0), b.p(1), s.N, s.H, s.Hkv, s.hd, b.g(0), b.g(1));
      b.write_back(grads);
    }
    return to_double(y);
  };
}

Vecs xsa_inputs(const XsaShape& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  return {random_vec(rng, s.att_size()), random_vec(rng, s.v_size())};
}

double dot_row(const double* a, const double* b, int64_t n) {
  double s = 0;
  for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}

}  // namespace

TEST_CASE("xsa output is orthogonal to the token's own value, and a second application changes nothing", "[ops]") {
  const XsaShape s{5, 4, 2, 8};
  const Vecs in = xsa_inputs(s, 1);
  std::vector<double> y(s.att_size()), y2(s.att_size());
  cpu::xsa_forward(in[0].data(), in[1].data(), s.N, s.H, s.Hkv, s.hd, y.data());
  cpu::xsa_forward(y.data(), in[1].data(), s.N, s.H, s.Hkv, s.hd, y2.data());
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t h = 0; h < s.H; ++h) {
      const double* v = in[1].data() + (n * s.Hkv + h / 2) * s.hd;
      CHECK(std::abs(dot_row(y.data() + (n * s.H + h) * s.hd, v, s.hd)) < 1e-14);
    }
  CHECK(max_abs_diff(y, y2) < 1e-15);
  CHECK(max_abs_diff(y, in[0]) > 0.1);  // it did remove something
}

TEST_CASE("xsa keeps an output orthogonal to its value and removes one parallel to it", "[ops]") {
  // One token, one head: v = (3, 4), so u = (0.6, 0.8).
  const std::vector<double> v{3, 4}, ortho{-4, 3}, para{6, 8};
  std::vector<double> y(2);
  cpu::xsa_forward(ortho.data(), v.data(), 1, 1, 1, 2, y.data());
  CHECK(y == ortho);
  cpu::xsa_forward(para.data(), v.data(), 1, 1, 1, 2, y.data());
  CHECK(std::abs(y[0]) < 1e-15);
  CHECK(std::abs(y[1]) < 1e-15);
}

TEST_CASE("xsa with a zero value vector returns attention's output unchanged (F.normalize's clamp)", "[ops]") {
  const std::vector<double> v{0, 0, 0, 0}, att{1, -2, 3, 0.5};
  std::vector<double> y(4), datt(4, 0.0), dv(4, 0.0);
  cpu::xsa_forward(att.data(), v.data(), 1, 1, 1, 4, y.data());
  CHECK(y == att);
  const std::vector<double> dy{0.5, 1, -1, 2};
  cpu::xsa_backward(dy.data(), att.data(), v.data(), 1, 1, 1, 4, datt.data(), dv.data());
  CHECK(datt == dy);
  CHECK(dv == std::vector<double>(4, 0.0));  // u = 0: no term reaches v
}

TEST_CASE("xsa backward matches central differences (GQA groups of 2, multi-head, multi-query)", "[ops]") {
  for (const XsaShape s : {XsaShape{3, 4, 2, 8}, XsaShape{2, 3, 3, 6}, XsaShape{2, 4, 1, 16}}) {
    INFO("H " << s.H << " Hkv " << s.Hkv << " hd " << s.hd);
    check_gradients(xsa_run(s), xsa_inputs(s, 2), {0, 1}, {"att", "v"});
  }
}

TEST_CASE("xsa backward accumulates into existing gradients, and float matches double", "[ops]") {
  const XsaShape s{4, 4, 2, 16};
  check_backward_accumulates(xsa_run(s), xsa_inputs(s, 3), {0, 1}, {"att", "v"});
  check_float_matches_double(xsa_run(s), xsa_inputs(s, 3), {0, 1}, {"att", "v"});
}

TEST_CASE("xsa rejects H not divisible by Hkv", "[ops]") {
  std::vector<double> a(6), v(4), y(6);
  CHECK_THROWS_AS(cpu::xsa_forward(a.data(), v.data(), 1, 3, 2, 2, y.data()), std::invalid_argument);
  CHECK_THROWS_AS(cpu::xsa_backward(a.data(), a.data(), v.data(), 1, 3, 2, 2, y.data(), v.data()),
                  std::invalid_argument);
}
