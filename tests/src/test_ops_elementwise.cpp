// CPU reference ops: embedding, RMSNorm, channel/head scales, activations, skips, resid_mix.
#include <cfloat>

#include "tests/src/test_ops_harness.h"

using namespace ptool;
using namespace ptool::test_ops;

namespace {

// ---- run functions (see test_ops_harness.h) ----

auto embedding_run(std::vector<int32_t> tokens, int64_t D) {
  return [tokens, D](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    const auto N = static_cast<int64_t>(tokens.size());
    OpBuffers<T> b(in, grads);
    std::vector<T> y(static_cast<size_t>(N * D));
    cpu::embedding_forward(b.p(0), tokens.data(), N, D, y.data());
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::embedding_backward(g.data(), tokens.data(), N, D, b.g(0));
      b.write_back(grads);
    }
    return to_double(y);
  };
}

auto rmsnorm_run(int64_t N, int64_t D, double eps) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    std::vector<T> y(static_cast<size_t>(N * D)), rstd(static_cast<size_t>(N));
    cpu::rmsnorm_forward(b.p(0), N, D, static_cast<T>(eps), y.data(), rstd.data());
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::rmsnorm_backward(g.data(), b.p(0), rstd.data(), N, D, b.g(0));
      b.write_back(grads);
    }
    return to_double(y);
  };
}

auto channel_scale_run(int64_t N, int64_t D) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    std::vector<T> y(static_cast<size_t>(N * D));
    cpu::channel_scale_forward(b.p(0), b.p(1), N, D, y.data());
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::channel_scale_backward(g.data(), b.p(0), b.p(1), N, D, b.g(0), b.g(1));
      b.write_back(grads);
    }
    return to_double(y);
  };
}

auto head_scale_run(int64_t N, int64_t H, int64_t hd) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    std::vector<T> y(static_cast<size_t>(N * H * hd));
    cpu::head_scale_forward(b.p(0), b.p(1), N, H, hd, y.data());
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::head_scale_backward(g.data(), b.p(0), b.p(1), N, H, hd, b.g(0), b.g(1));
      b.write_back(grads);
    }
    return to_double(y);
  };
}

auto activation_run(cpu::Activation a) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    const auto n = static_cast<int64_t>(in[0].size());
    std::vector<T> y(in[0].size());
    cpu::activation_forward(a, b.p(0), n, y.data());
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::activation_backward(a, g.data(), b.p(0), n, b.g(0));
      b.write_back(grads);
    }
    return to_double(y);
  };
}

// Inputs: x, skip, w. The op adds in place and leaves dx (= dy) to the caller; the run function adds it so
// that the check also pins "x passes through with coefficient 1".
auto skip_add_run(int64_t N, int64_t D) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    std::vector<T> y = b.in[0];
    cpu::skip_add_forward(y.data(), b.p(1), b.p(2), N, D);
    if (dout) {
      auto g = cast_to<T>(*dout);
      if (T* dx = b.g(0)) {
        for (size_t i = 0; i < g.size(); ++i) dx[i] += g[i];
      }
      cpu::skip_add_backward(g.data(), b.p(1), b.p(2), N, D, b.g(1), b.g(2));
      b.write_back(grads);
    }
    return to_double(y);
  };
}

// Inputs: x, skip, w, g.
auto gated_skip_run(int64_t N, int64_t D) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    std::vector<T> y(static_cast<size_t>(N * D));
    cpu::gated_skip_forward(b.p(0), b.p(1), b.p(2), b.p(3), N, D, y.data());
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::gated_skip_backward(g.data(), b.p(0), b.p(1), b.p(2), b.p(3), N, D, b.g(0), b.g(1), b.g(2), b.g(3));
      b.write_back(grads);
    }
    return to_double(y);
  };
}

// Inputs: x, x0, m [2, D].
auto resid_mix_run(int64_t N, int64_t D) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    std::vector<T> y(static_cast<size_t>(N * D));
    cpu::resid_mix_forward(b.p(0), b.p(1), b.p(2), N, D, y.data());
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::resid_mix_backward(g.data(), b.p(0), b.p(1), b.p(2), N, D, b.g(0), b.g(1), b.g(2));
      b.write_back(grads);
    }
    return to_double(y);
  };
}

// Fixed shapes and inputs per op, shared by the three generic checks.
constexpr int64_t kN = 6, kD = 10, kH = 3, kHd = 4, kV = 7;
const std::vector<int32_t> kTokens = {3, 0, 6, 3, 3, 1};  // repeats: table rows collect several tokens

Vecs inputs(std::initializer_list<size_t> sizes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Vecs v;
  for (size_t n : sizes) v.push_back(random_vec(rng, n));
  return v;
}

const size_t ND = static_cast<size_t>(kN * kD);

}  // namespace

// ---------------------------------------------------------------- embedding

TEST_CASE("embedding forward copies the table row of each token", "[ops]") {
  const std::vector<double> table = {1, 2, 3, 4, 5, 6};  // V = 3, D = 2
  const std::vector<int32_t> tok = {2, 0, 2};
  std::vector<double> out(6);
  cpu::embedding_forward(table.data(), tok.data(), 3, 2, out.data());
  CHECK(out == std::vector<double>{5, 6, 1, 2, 5, 6});
}

TEST_CASE("embedding backward sums the gradients of repeated tokens into one row", "[ops]") {
  const std::vector<int32_t> tok = {2, 0, 2};
  const std::vector<double> dout = {1, 10, 100, 1000, 10000, 100000};
  std::vector<double> dtable(6, 0.5);
  cpu::embedding_backward(dout.data(), tok.data(), 3, 2, dtable.data());
  CHECK(dtable == std::vector<double>{100.5, 1000.5, 0.5, 0.5, 10001.5, 100010.5});
}

TEST_CASE("embedding backward matches central differences", "[ops]") {
  check_gradients(embedding_run(kTokens, kD), inputs({kV * kD}, 1), {0}, {"table"});
}

TEST_CASE("embedding backward accumulates into existing gradients", "[ops]") {
  check_backward_accumulates(embedding_run(kTokens, kD), inputs({kV * kD}, 1), {0}, {"table"});
}

TEST_CASE("embedding float matches double", "[ops]") {
  check_float_matches_double(embedding_run(kTokens, kD), inputs({kV * kD}, 1), {0}, {"table"});
}

// ---------------------------------------------------------------- rmsnorm

TEST_CASE("rmsnorm of (3, 4) is (3, 4) / sqrt(12.5) and saves that rstd", "[ops]") {
  const std::vector<double> x = {3, 4};
  std::vector<double> out(2), rstd(1);
  cpu::rmsnorm_forward(x.data(), 1, 2, 0.0, out.data(), rstd.data());
  CHECK(rstd[0] == Approx(1.0 / std::sqrt(12.5)).epsilon(1e-15));
  CHECK(out[0] == Approx(3.0 / std::sqrt(12.5)).epsilon(1e-15));
  CHECK(out[1] == Approx(4.0 / std::sqrt(12.5)).epsilon(1e-15));
}

TEST_CASE("rmsnorm output has unit mean square and ignores the input's scale", "[ops]") {
  std::mt19937_64 rng(3);
  const Vec x = random_vec(rng, 4 * 64, -5, 5);
  Vec x7 = x;
  for (auto& v : x7) v *= 7.0;
  Vec out(x.size()), out7(x.size()), rstd(4);
  cpu::rmsnorm_forward(x.data(), 4, 64, 1e-12, out.data(), rstd.data());
  cpu::rmsnorm_forward(x7.data(), 4, 64, 1e-12, out7.data(), rstd.data());
  for (int r = 0; r < 4; ++r) {
    double ms = 0;
    for (int d = 0; d < 64; ++d) ms += out[r * 64 + d] * out[r * 64 + d];
    CHECK(ms / 64 == Approx(1.0).epsilon(1e-9));
  }
  CHECK(max_abs_diff(out, out7) < 1e-12);
}

TEST_CASE("rmsnorm uses the eps it is given: a zero row gets rstd = 1/sqrt(eps)", "[ops]") {
  const float eps = FLT_EPSILON;  // what the model passes for fp32 (torch's F.rms_norm default)
  std::vector<float> x(8, 0.0f), out(8, 1.0f), rstd(1);
  cpu::rmsnorm_forward(x.data(), 1, 8, eps, out.data(), rstd.data());
  CHECK(rstd[0] == Approx(1.0 / std::sqrt(static_cast<double>(FLT_EPSILON))).epsilon(1e-6));
  for (float v : out) CHECK(v == 0.0f);
}

TEST_CASE("rmsnorm forward may run in place", "[ops]") {
  std::mt19937_64 rng(5);
  const Vec x = random_vec(rng, 3 * 8);
  Vec out(x.size()), inplace = x, rstd(3);
  cpu::rmsnorm_forward(x.data(), 3, 8, 1e-6, out.data(), rstd.data());
  cpu::rmsnorm_forward(inplace.data(), 3, 8, 1e-6, inplace.data(), rstd.data());
  CHECK(inplace == out);
}

TEST_CASE("rmsnorm backward matches central differences", "[ops]") {
  check_gradients(rmsnorm_run(kN, kD, 1e-5), inputs({ND}, 2), {0}, {"x"});
}

TEST_CASE("rmsnorm backward accumulates into existing gradients", "[ops]") {
  check_backward_accumulates(rmsnorm_run(kN, kD, 1e-5), inputs({ND}, 2), {0}, {"x"});
}

TEST_CASE("rmsnorm float matches double", "[ops]") {
  check_float_matches_double(rmsnorm_run(kN, 64, 1e-6), inputs({kN * 64}, 2), {0}, {"x"});
}

// ---------------------------------------------------------------- channel and head scales

TEST_CASE("channel scale multiplies column d by s[d]", "[ops]") {
  const std::vector<double> x = {1, 2, 3, 4, 5, 6}, s = {10, 0, -1};
  std::vector<double> y(6);
  cpu::channel_scale_forward(x.data(), s.data(), 2, 3, y.data());
  CHECK(y == std::vector<double>{10, 0, -3, 40, 0, -6});
}

TEST_CASE("channel scale backward matches central differences", "[ops]") {
  check_gradients(channel_scale_run(kN, kD), inputs({ND, kD}, 3), {0, 1}, {"x", "s"});
}

TEST_CASE("channel scale backward accumulates into existing gradients", "[ops]") {
  check_backward_accumulates(channel_scale_run(kN, kD), inputs({ND, kD}, 3), {0, 1}, {"x", "s"});
}

TEST_CASE("channel scale float matches double", "[ops]") {
  check_float_matches_double(channel_scale_run(kN, kD), inputs({ND, kD}, 3), {0, 1}, {"x", "s"});
}

TEST_CASE("head scale multiplies every element of head h by g[h]", "[ops]") {
  const std::vector<double> x = {1, 2, 3, 4, 5, 6, 7, 8}, g = {2, -1};  // N = 2, H = 2, hd = 2
  std::vector<double> y(8);
  cpu::head_scale_forward(x.data(), g.data(), 2, 2, 2, y.data());
  CHECK(y == std::vector<double>{2, 4, -3, -4, 10, 12, -7, -8});
}

TEST_CASE("head scale backward matches central differences", "[ops]") {
  check_gradients(head_scale_run(kN, kH, kHd), inputs({kN * kH * kHd, kH}, 4), {0, 1}, {"x", "g"});
}

TEST_CASE("head scale backward accumulates into existing gradients", "[ops]") {
  check_backward_accumulates(head_scale_run(kN, kH, kHd), inputs({kN * kH * kHd, kH}, 4), {0, 1}, {"x", "g"});
}

TEST_CASE("head scale float matches double", "[ops]") {
  check_float_matches_double(head_scale_run(kN, kH, kHd), inputs({kN * kH * kHd, kH}, 4), {0, 1}, {"x", "g"});
}

// ---------------------------------------------------------------- activations

TEST_CASE("relu^2 squares positive inputs and zeroes the rest", "[ops]") {
  const std::vector<double> h = {-2, -0.5, 0, 0.5, 3};
  std::vector<double> y(5);
  cpu::activation_forward(cpu::Activation::relu2, h.data(), 5, y.data());
  CHECK(y == std::vector<double>{0, 0, 0, 0.25, 9});
}

TEST_CASE("leaky_relu(0.5)^2 squares x for x > 0 and x/2 otherwise", "[ops]") {
  const std::vector<double> h = {-2, -0.5, 0, 0.5, 3};
  std::vector<double> y(5);
  cpu::activation_forward(cpu::Activation::leaky_relu2, h.data(), 5, y.data());
  CHECK(y == std::vector<double>{1, 0.0625, 0, 0.25, 9});
}

TEST_CASE("activation backward matches central differences for relu^2 and leaky_relu(0.5)^2", "[ops]") {
  for (auto a : {cpu::Activation::relu2, cpu::Activation::leaky_relu2}) {
    INFO("activation " << static_cast<int>(a));
    check_gradients(activation_run(a), inputs({ND}, 5), {0}, {"h"});
  }
}

TEST_CASE("activation backward accumulates into existing gradients", "[ops]") {
  for (auto a : {cpu::Activation::relu2, cpu::Activation::leaky_relu2}) {
    INFO("activation " << static_cast<int>(a));
    check_backward_accumulates(activation_run(a), inputs({ND}, 5), {0}, {"h"});
  }
}

TEST_CASE("activation float matches double", "[ops]") {
  for (auto a : {cpu::Activation::relu2, cpu::Activation::leaky_relu2}) {
    INFO("activation " << static_cast<int>(a));
    check_float_matches_double(activation_run(a), inputs({ND}, 5), {0}, {"h"});
  }
}

// ---------------------------------------------------------------- skips and resid_mix

TEST_CASE("skip add adds w * skip to x in place", "[ops]") {
  std::vector<double> x = {1, 1, 1, 1};
  const std::vector<double> skip = {1, 2, 3, 4}, w = {10, -1};
  cpu::skip_add_forward(x.data(), skip.data(), w.data(), 2, 2);
  CHECK(x == std::vector<double>{11, -1, 31, -3});
}

TEST_CASE("skip add backward matches central differences", "[ops]") {
  check_gradients(skip_add_run(kN, kD), inputs({ND, ND, kD}, 6), {0, 1, 2}, {"x", "skip", "w"});
}

TEST_CASE("skip add backward accumulates into existing gradients", "[ops]") {
  check_backward_accumulates(skip_add_run(kN, kD), inputs({ND, ND, kD}, 6), {1, 2}, {"x", "skip", "w"});
}

TEST_CASE("skip add float matches double", "[ops]") {
  check_float_matches_double(skip_add_run(kN, kD), inputs({ND, ND, kD}, 6), {1, 2}, {"x", "skip", "w"});
}

TEST_CASE("gated skip with gate 0 averages x and w * skip; a large gate keeps x", "[ops]") {
  const std::vector<double> x = {2, 4}, skip = {6, 8}, w = {1, 0.5};
  std::vector<double> y(2);
  const std::vector<double> g0 = {0, 0};
  cpu::gated_skip_forward(x.data(), skip.data(), w.data(), g0.data(), 1, 2, y.data());
  CHECK(y[0] == Approx(4.0));
  CHECK(y[1] == Approx(4.0));
  const std::vector<double> gbig = {40, 40};
  cpu::gated_skip_forward(x.data(), skip.data(), w.data(), gbig.data(), 1, 2, y.data());
  CHECK(y[0] == Approx(2.0));
  CHECK(y[1] == Approx(4.0));
}

TEST_CASE("gated skip backward matches central differences", "[ops]") {
  check_gradients(gated_skip_run(kN, kD), inputs({ND, ND, kD, kD}, 7), {0, 1, 2, 3}, {"x", "skip", "w", "g"});
}

TEST_CASE("gated skip backward accumulates into existing gradients", "[ops]") {
  check_backward_accumulates(gated_skip_run(kN, kD), inputs({ND, ND, kD, kD}, 7), {0, 1, 2, 3},
                             {"x", "skip", "w", "g"});
}

TEST_CASE("gated skip float matches double", "[ops]") {
  check_float_matches_double(gated_skip_run(kN, kD), inputs({ND, ND, kD, kD}, 7), {0, 1, 2, 3},
                             {"x", "skip", "w", "g"});
}

namespace {

// Inputs: x, s (one element), y's initial value.
auto scaled_add_run(int64_t N, int64_t C) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    std::vector<T> y(b.in[2]);
    cpu::scaled_add_forward(b.p(0), b.p(1), N, C, y.data());
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::scaled_add_backward(g.data(), C, b.p(0), b.p(1), N, C, b.g(0), b.g(1));
      if (T* dy0 = b.g(2))
        for (size_t i = 0; i < g.size(); ++i) dy0[i] += g[i];  // y's old value passes straight through
      b.write_back(grads);
    }
    return to_double(y);
  };
}

}  // namespace

TEST_CASE("scaled add backward matches central differences, accumulates, and float matches double", "[ops]") {
  check_gradients(scaled_add_run(kN, kD), inputs({ND, 1, ND}, 8), {0, 1}, {"x", "s"});
  check_backward_accumulates(scaled_add_run(kN, kD), inputs({ND, 1, ND}, 8), {0, 1}, {"x", "s"});
  check_float_matches_double(scaled_add_run(kN, kD), inputs({ND, 1, ND}, 8), {0, 1}, {"x", "s"});
}

TEST_CASE("scaled add backward reads dy from columns of a wider matrix", "[ops]") {
  std::mt19937_64 rng(9);
  const int64_t ld = kD + 5, col = 2;
  const Vec x = random_vec(rng, ND), s{0.7}, wide = random_vec(rng, static_cast<size_t>(kN * ld));
  Vec dense(ND);
  for (int64_t n = 0; n < kN; ++n)
    for (int64_t c = 0; c < kD; ++c) dense[n * kD + c] = wide[n * ld + col + c];
  Vec dx1(ND, 0.0), dx2(ND, 0.0), ds1{0.0}, ds2{0.0};
  cpu::scaled_add_backward(dense.data(), kD, x.data(), s.data(), kN, kD, dx1.data(), ds1.data());
  cpu::scaled_add_backward(wide.data() + col, ld, x.data(), s.data(), kN, kD, dx2.data(), ds2.data());
  CHECK(dx1 == dx2);
  CHECK(ds1 == ds2);
  CHECK(ds1[0] != 0.0);
}

TEST_CASE("resid_mix at its init (ones, zeros) returns x", "[ops]") {
  std::mt19937_64 rng(8);
  const Vec x = random_vec(rng, ND), x0 = random_vec(rng, ND);
  Vec m(2 * kD, 0.0);
  std::fill(m.begin(), m.begin() + kD, 1.0);
  Vec y(ND);
  cpu::resid_mix_forward(x.data(), x0.data(), m.data(), kN, kD, y.data());
  CHECK(y == x);
}

TEST_CASE("resid_mix backward matches central differences", "[ops]") {
  check_gradients(resid_mix_run(kN, kD), inputs({ND, ND, 2 * kD}, 8), {0, 1, 2}, {"x", "x0", "m"});
}

TEST_CASE("resid_mix backward accumulates into existing gradients", "[ops]") {
  check_backward_accumulates(resid_mix_run(kN, kD), inputs({ND, ND, 2 * kD}, 8), {0, 1, 2}, {"x", "x0", "m"});
}

TEST_CASE("resid_mix float matches double", "[ops]") {
  check_float_matches_double(resid_mix_run(kN, kD), inputs({ND, ND, 2 * kD}, 8), {0, 1, 2}, {"x", "x0", "m"});
}

TEST_CASE("element-wise ops skip a gradient whose pointer is null", "[ops]") {
  std::mt19937_64 rng(9);
  const Vec x = random_vec(rng, ND), s = random_vec(rng, kD), dy = random_vec(rng, ND);
  Vec dx(ND, 0.0);
  cpu::channel_scale_backward(dy.data(), x.data(), s.data(), kN, kD, dx.data(), static_cast<double*>(nullptr));
  Vec ds(kD, 0.0);
  cpu::channel_scale_backward(dy.data(), x.data(), s.data(), kN, kD, static_cast<double*>(nullptr), ds.data());
  CHECK(max_abs(dx) > 0.0);
  CHECK(max_abs(ds) > 0.0);
}

TEST_CASE("element-wise forwards may write their output over an input", "[ops]") {
  std::mt19937_64 rng(10);
  const Vec x = random_vec(rng, ND), x0 = random_vec(rng, ND), skip = random_vec(rng, ND);
  const Vec s = random_vec(rng, kD), g = random_vec(rng, kD), m = random_vec(rng, 2 * kD);
  Vec ref(ND), io;
  cpu::channel_scale_forward(x.data(), s.data(), kN, kD, ref.data());
  io = x;
  cpu::channel_scale_forward(io.data(), s.data(), kN, kD, io.data());
  CHECK(io == ref);
  cpu::head_scale_forward(x.data(), s.data(), kN, 2, kD / 2, ref.data());
  io = x;
  cpu::head_scale_forward(io.data(), s.data(), kN, 2, kD / 2, io.data());
  CHECK(io == ref);
  for (auto a : {cpu::Activation::relu2, cpu::Activation::leaky_relu2}) {
    cpu::activation_forward(a, x.data(), static_cast<int64_t>(ND), ref.data());
    io = x;
    cpu::activation_forward(a, io.data(), static_cast<int64_t>(ND), io.data());
    CHECK(io == ref);
  }
  cpu::gated_skip_forward(x.data(), skip.data(), s.data(), g.data(), kN, kD, ref.data());
  io = x;
  cpu::gated_skip_forward(io.data(), skip.data(), s.data(), g.data(), kN, kD, io.data());
  CHECK(io == ref);
  cpu::resid_mix_forward(x.data(), x0.data(), m.data(), kN, kD, ref.data());
  io = x;
  cpu::resid_mix_forward(io.data(), x0.data(), m.data(), kN, kD, io.data());
  CHECK(io == ref);
  io = x0;
  cpu::resid_mix_forward(x.data(), io.data(), m.data(), kN, kD, io.data());
  CHECK(io == ref);
}
