// CPU reference ops: linear (y = x W^T, PyTorch weight layout).
#include "tests/src/test_ops_harness.h"

using namespace ptool;
using namespace ptool::test_ops;

namespace {

// Inputs: x [N, K], W [M, K].
auto linear_run(int64_t N, int64_t K, int64_t M) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    std::vector<T> y(static_cast<size_t>(N * M));
    cpu::linear_forward(b.p(0), b.p(1), N, K, M, y.data());
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::linear_backward(g.data(), b.p(0), b.p(1), N, K, M, b.g(0), b.g(1));
      b.write_back(grads);
    }
    return to_double(y);
  };
}

Vecs linear_inputs(int64_t N, int64_t K, int64_t M, uint64_t seed) {
  std::mt19937_64 rng(seed);
  return {random_vec(rng, static_cast<size_t>(N * K)), random_vec(rng, static_cast<size_t>(M * K))};
}

}  // namespace

TEST_CASE("linear forward computes x W^T with W stored [out, in]", "[ops]") {
  const std::vector<double> x = {1, 2, 3, 4, 5, 6};          // N = 2, K = 3
  const std::vector<double> W = {1, 0, 0, 0, 1, 1};          // M = 2: picks x0 and x1 + x2
  std::vector<double> y(4);
  cpu::linear_forward(x.data(), W.data(), 2, 3, 2, y.data());
  CHECK(y == std::vector<double>{1, 5, 4, 11});
}

TEST_CASE("linear forward overwrites y", "[ops]") {
  const std::vector<float> x = {1, 2}, W = {3, 4};
  std::vector<float> y = {100};
  cpu::linear_forward(x.data(), W.data(), 1, 2, 1, y.data());
  CHECK(y[0] == 11.0f);
}

TEST_CASE("linear backward matches central differences", "[ops]") {
  check_gradients(linear_run(5, 7, 3), linear_inputs(5, 7, 3, 1), {0, 1}, {"x", "W"});
}

TEST_CASE("linear backward matches central differences at GEMM-blocking sizes", "[ops]") {
  // Large enough that Eigen's blocked GEMM (and its += path) is used; elements are sampled.
  check_gradients(linear_run(70, 300, 40), linear_inputs(70, 300, 40, 2), {0, 1}, {"x", "W"});
}

TEST_CASE("linear backward accumulates into existing gradients", "[ops]") {
  check_backward_accumulates(linear_run(33, 40, 17), linear_inputs(33, 40, 17, 3), {0, 1}, {"x", "W"});
}

TEST_CASE("linear backward skips a gradient whose pointer is null", "[ops]") {
  const Vecs in = linear_inputs(4, 3, 2, 4);
  std::mt19937_64 rng(5);
  const Vec dy = random_vec(rng, 8);
  Vec dx(12, 0.0), dW(6, 0.0);
  cpu::linear_backward(dy.data(), in[0].data(), in[1].data(), 4, 3, 2, dx.data(), static_cast<double*>(nullptr));
  cpu::linear_backward(dy.data(), in[0].data(), in[1].data(), 4, 3, 2, static_cast<double*>(nullptr), dW.data());
  Vecs both = {Vec(12, 0.0), Vec(6, 0.0)};
  linear_run(4, 3, 2)(double{}, in, &dy, &both);
  CHECK(dx == both[0]);
  CHECK(dW == both[1]);
}

TEST_CASE("linear float matches double", "[ops]") {
  check_float_matches_double(linear_run(64, 128, 96), linear_inputs(64, 128, 96, 6), {0, 1}, {"x", "W"}, 1e-5);
}
