// CPU reference ops: rotary position embedding (half-split, partial) and the NTK base rescale.
#include <stdexcept>

#include "tests/src/test_ops_harness.h"

using namespace ptool;
using namespace ptool::test_ops;

namespace {

struct RopeShape {
  int64_t B, T, H, hd, rot;
  double base;
  size_t size() const { return static_cast<size_t>(B * T * H * hd); }
};

auto rope_run(RopeShape s) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    std::vector<T> y = b.in[0];
    cpu::rope_forward(y.data(), s.B, s.T, s.H, s.hd, s.rot, s.base);
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::rope_backward(g.data(), s.B, s.T, s.H, s.hd, s.rot, s.base);
      if (T* dx = b.g(0)) {
        for (size_t i = 0; i < g.size(); ++i) dx[i] += g[i];
      }
      b.write_back(grads);
    }
    return to_double(y);
  };
}

Vec rope_input(const RopeShape& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  return random_vec(rng, s.size());
}

}  // namespace

TEST_CASE("rope at position 0 is the identity", "[ops]") {
  const RopeShape s{2, 1, 3, 8, 8, 10000.0};
  const Vec x = rope_input(s, 1);
  Vec y = x;
  cpu::rope_forward(y.data(), s.B, s.T, s.H, s.hd, s.rot, s.base);
  CHECK(y == x);
}

TEST_CASE("rope at position 1 with one frequency rotates (x1, x2) by 1 radian", "[ops]") {
  // hd = rot = 2: inv_freq[0] = 1, so row t = 1 is rotated by angle 1.
  std::vector<double> x = {0.3, -0.7, 2.0, 5.0};  // B = 1, T = 2, H = 1
  cpu::rope_forward(x.data(), 1, 2, 1, 2, 2, 10000.0);
  CHECK(x[0] == 0.3);
  CHECK(x[1] == -0.7);
  CHECK(x[2] == Approx(2.0 * std::cos(1.0) + 5.0 * std::sin(1.0)).epsilon(1e-14));
  CHECK(x[3] == Approx(-2.0 * std::sin(1.0) + 5.0 * std::cos(1.0)).epsilon(1e-14));
}

TEST_CASE("rope frequency i pairs dim i with dim i + rot/2 at angle t * base^(-2i/rot)", "[ops]") {
  const int64_t hd = 8, rot = 8, t = 5;
  const double base = 100.0;
  std::vector<double> x(static_cast<size_t>((t + 1) * hd), 0.0);
  double* row = x.data() + t * hd;
  row[2] = 1.0;  // x1 of frequency 2 only
  cpu::rope_forward(x.data(), 1, t + 1, 1, hd, rot, base);
  const double a = t * std::pow(base, -2.0 * 2 / rot);
  CHECK(row[2] == Approx(std::cos(a)).epsilon(1e-14));
  CHECK(row[2 + rot / 2] == Approx(-std::sin(a)).epsilon(1e-14));
  for (int64_t d : {0, 1, 3, 4, 5, 7}) CHECK(row[d] == 0.0);
}

TEST_CASE("rope preserves the norm of every rotated pair", "[ops]") {
  const RopeShape s{2, 9, 2, 16, 16, 10000.0};
  const Vec x = rope_input(s, 2);
  Vec y = x;
  cpu::rope_forward(y.data(), s.B, s.T, s.H, s.hd, s.rot, s.base);
  for (size_t v = 0; v < s.size() / 16; ++v) {
    for (int i = 0; i < 8; ++i) {
      const double n0 = std::hypot(x[v * 16 + i], x[v * 16 + i + 8]);
      const double n1 = std::hypot(y[v * 16 + i], y[v * 16 + i + 8]);
      CHECK(n1 == Approx(n0).epsilon(1e-14));
    }
  }
}

TEST_CASE("partial rope leaves the dims past rot untouched", "[ops]") {
  const RopeShape s{1, 7, 2, 16, 4, 10000.0};
  const Vec x = rope_input(s, 3);
  Vec y = x;
  cpu::rope_forward(y.data(), s.B, s.T, s.H, s.hd, s.rot, s.base);
  for (size_t v = 0; v < s.size() / 16; ++v) {
    for (int d = 4; d < 16; ++d) CHECK(y[v * 16 + d] == x[v * 16 + d]);
  }
  CHECK(max_abs_diff(x, y) > 0.1);  // the first rot dims did move
}

TEST_CASE("rope makes q.k depend only on the distance between positions", "[ops]") {
  // Same q at positions 2 and 6, same k at positions 0 and 4: the two dot products agree.
  const int64_t hd = 8, Tn = 7;
  std::mt19937_64 rng(4);
  const Vec qv = random_vec(rng, hd), kv = random_vec(rng, hd);
  Vec q(static_cast<size_t>(Tn * hd), 0.0), k(static_cast<size_t>(Tn * hd), 0.0);
  for (int64_t t : {2, 6}) std::copy(qv.begin(), qv.end(), q.begin() + t * hd);
  for (int64_t t : {0, 4}) std::copy(kv.begin(), kv.end(), k.begin() + t * hd);
  cpu::rope_forward(q.data(), 1, Tn, 1, hd, hd, 10000.0);
  cpu::rope_forward(k.data(), 1, Tn, 1, hd, hd, 10000.0);
  auto qk = [&](int64_t tq, int64_t tk) {
    double s = 0;
    for (int64_t d = 0; d < hd; ++d) s += q[tq * hd + d] * k[tk * hd + d];
    return s;
  };
  CHECK(qk(2, 0) == Approx(qk(6, 4)).epsilon(1e-12));
}

TEST_CASE("rope backward undoes rope forward", "[ops]") {
  const RopeShape s{2, 11, 3, 8, 6, 500.0};
  const Vec x = rope_input(s, 5);
  Vec y = x;
  cpu::rope_forward(y.data(), s.B, s.T, s.H, s.hd, s.rot, s.base);
  cpu::rope_backward(y.data(), s.B, s.T, s.H, s.hd, s.rot, s.base);
  CHECK(max_abs_diff(x, y) < 1e-14);
}

TEST_CASE("rope backward matches central differences, full and partial rotation", "[ops]") {
  for (int64_t rot : {8, 4, 0}) {
    INFO("rot " << rot);
    const RopeShape s{2, 5, 3, 8, rot, 10000.0};
    check_gradients(rope_run(s), {rope_input(s, 6)}, {0}, {"x"});
  }
}

TEST_CASE("rope float matches double", "[ops]") {
  const RopeShape s{2, 64, 4, 16, 16, 10000.0};
  check_float_matches_double(rope_run(s), {rope_input(s, 7)}, {0}, {"x"}, 1e-6);
}

TEST_CASE("rope rejects an odd or oversized rot", "[ops]") {
  std::vector<float> x(16);
  CHECK_THROWS_AS(cpu::rope_forward(x.data(), 1, 2, 1, 8, 3, 10000.0), std::invalid_argument);
  CHECK_THROWS_AS(cpu::rope_backward(x.data(), 1, 2, 1, 8, 10, 10000.0), std::invalid_argument);
}

TEST_CASE("NTK base is unchanged up to the training length and matches REFERENCE 7.2 beyond it", "[ops]") {
  CHECK(cpu::rope_ntk_base(10000.0, 16, 1024, 1024) == 10000.0);
  CHECK(cpu::rope_ntk_base(10000.0, 16, 512, 1024) == 10000.0);
  // scale 2, rd 16: 10000 * 2^(16/14) ~= 22,080 (the 03-21/03-22 quirk in REFERENCE.md)
  const double b = cpu::rope_ntk_base(10000.0, 16, 2048, 1024);
  CHECK(b == Approx(10000.0 * std::pow(2.0, 16.0 / 14.0)).epsilon(1e-15));
  CHECK(b == Approx(22081.0).margin(1.0));
  CHECK_THROWS_AS(cpu::rope_ntk_base(10000.0, 2, 2048, 1024), std::invalid_argument);
}
