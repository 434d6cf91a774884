// CPU reference ops of the token features: BigramHash buckets and SmearGate.
#include <stdexcept>

#include "tests/src/test_ops_harness.h"

using namespace ptool;
using namespace ptool::test_ops;

namespace {

// Inputs: x [B, Tn, D], g [D].
auto smear_run(int64_t B, int64_t Tn, int64_t D) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    std::vector<T> y(static_cast<size_t>(B * Tn * D));
    cpu::smear_forward(b.p(0), b.p(1), B, Tn, D, y.data());
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::smear_backward(g.data(), b.p(0), b.p(1), B, Tn, D, b.g(0), b.g(1));
      b.write_back(grads);
    }
    return to_double(y);
  };
}

Vecs smear_inputs(int64_t B, int64_t Tn, int64_t D, uint64_t seed) {
  std::mt19937_64 rng(seed);
  return {random_vec(rng, static_cast<size_t>(B * Tn * D)), random_vec(rng, static_cast<size_t>(D), -2.0, 2.0)};
}

}  // namespace

TEST_CASE("bigram buckets follow the records' hash, per sequence, the first position in the last bucket", "[ops]") {
  const std::vector<int32_t> x{5, 7, 1000, 0, 3, 9};
  std::vector<int32_t> b(6);
  cpu::bigram_buckets(x.data(), 2, 3, 10240, b.data());
  CHECK(b[0] == 10239);
  CHECK(b[1] == ((36313 * 7) ^ (27191 * 5)) % 10239);
  CHECK(b[2] == ((36313LL * 1000) ^ (27191LL * 7)) % 10239);
  CHECK(b[3] == 10239);  // a new sequence: no previous token
  CHECK(b[4] == ((36313 * 3) ^ (27191 * 0)) % 10239);
  for (int32_t v : b) CHECK((v >= 0 && v < 10240));
  CHECK_THROWS_AS(cpu::bigram_buckets(x.data(), 1, 6, 1, b.data()), std::invalid_argument);
}

TEST_CASE("smear gate at g = 0 averages each position with the one before, the first with zero", "[ops]") {
  const std::vector<double> x{1, 2, 3, 4, 5, 6}, g{0, 0};
  std::vector<double> y(6);
  cpu::smear_forward(x.data(), g.data(), 1, 3, 2, y.data());
  CHECK(y == std::vector<double>{0.5, 1, 2, 3, 4, 5});
  cpu::smear_forward(x.data(), g.data(), 3, 1, 2, y.data());  // sequences of one: nothing to blend in
  CHECK(y == std::vector<double>{0.5, 1, 1.5, 2, 2.5, 3});
}

TEST_CASE("smear gate backward matches central differences, accumulates, and float matches double", "[ops]") {
  check_gradients(smear_run(2, 5, 3), smear_inputs(2, 5, 3, 1), {0, 1}, {"x", "g"});
  check_backward_accumulates(smear_run(2, 5, 3), smear_inputs(2, 5, 3, 2), {0, 1}, {"x", "g"});
  check_float_matches_double(smear_run(3, 4, 8), smear_inputs(3, 4, 8, 3), {0, 1}, {"x", "g"});
}

TEST_CASE("smear gate forward may write over its input", "[ops]") {
  const Vecs in = smear_inputs(2, 6, 4, 4);
  std::vector<double> y(in[0].size()), io = in[0];
  cpu::smear_forward(in[0].data(), in[1].data(), 2, 6, 4, y.data());
  cpu::smear_forward(io.data(), in[1].data(), 2, 6, 4, io.data());
  CHECK(io == y);
}
