// CPU reference ops: logit softcap + cross-entropy.
#include <limits>
#include <stdexcept>

#include "tests/src/test_ops_harness.h"

using namespace ptool;
using namespace ptool::test_ops;

namespace {

// Input: logits z [N, V]. Output: the summed loss; the upstream gradient of that scalar is grad_scale.
auto ce_run(std::vector<int32_t> targets, int64_t V, double cap) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    const auto N = static_cast<int64_t>(targets.size());
    std::vector<T> dz(static_cast<size_t>(N * V));
    const double total = cpu::softcap_cross_entropy(b.p(0), targets.data(), N, V, static_cast<T>(cap), nullptr,
                                                    dout ? dz.data() : nullptr,
                                                    static_cast<T>(dout ? (*dout)[0] : 0.0));
    if (dout) {
      if (T* g = b.g(0)) {
        for (size_t i = 0; i < dz.size(); ++i) g[i] += dz[i];
      }
      b.write_back(grads);
    }
    return Vec{total};
  };
}

const std::vector<int32_t> kTargets = {0, 5, 2, 2, 10, 7};
constexpr int64_t kV = 11;

Vec logits(uint64_t seed, double range) {
  std::mt19937_64 rng(seed);
  return random_vec(rng, kTargets.size() * kV, -range, range);
}

}  // namespace

TEST_CASE("cross-entropy of uniform logits is ln V per token, capped or not", "[ops]") {
  for (float cap : {0.0f, 30.0f}) {
    INFO("cap " << cap);
    const int64_t N = 3, V = 1024;
    std::vector<float> z(static_cast<size_t>(N * V), 0.25f);
    const std::vector<int32_t> y = {0, 17, 1023};
    std::vector<double> losses(3);
    const double total = cpu::softcap_cross_entropy(z.data(), y.data(), N, V, cap, losses.data(),
                                                    static_cast<float*>(nullptr), 1.0f);
    for (double l : losses) CHECK(l == Approx(std::log(1024.0)).epsilon(1e-12));
    CHECK(total == Approx(3 * std::log(1024.0)).epsilon(1e-12));
  }
}

TEST_CASE("cross-entropy returns the sum of the per-token losses", "[ops]") {
  const Vec z = logits(1, 3.0);
  Vec losses(kTargets.size());
  const double total = cpu::softcap_cross_entropy(z.data(), kTargets.data(), static_cast<int64_t>(kTargets.size()),
                                                  kV, 0.0, losses.data(), static_cast<double*>(nullptr), 1.0);
  double sum = 0;
  for (double l : losses) {
    CHECK(l > 0.0);
    sum += l;
  }
  CHECK(total == Approx(sum).epsilon(1e-15));
}

TEST_CASE("softcap maps logits into (-cap, cap) before the softmax", "[ops]") {
  // z = (1e4, -1e4, 0), target 1, cap 30: the capped logits are (30, -30, 0).
  const std::vector<double> z = {1e4, -1e4, 0.0};
  const std::vector<int32_t> y = {1};
  double loss = 0;
  std::vector<double> dz(3);
  cpu::softcap_cross_entropy(z.data(), y.data(), 1, 3, 30.0, &loss, dz.data(), 1.0);
  CHECK(loss == Approx(std::log(std::exp(30.0) + std::exp(-30.0) + 1.0) + 30.0).epsilon(1e-14));
  CHECK(loss <= std::log(3.0) + 2 * 30.0);  // the bound a cap of 30 guarantees
  // Saturated logits get (almost) no gradient through tanh; the uncapped one gets p - 0.
  CHECK(std::abs(dz[0]) < 1e-20);
  CHECK(std::abs(dz[1]) < 1e-20);
  CHECK(dz[2] == Approx(1.0 / (std::exp(30.0) + std::exp(-30.0) + 1.0)).epsilon(1e-12));
}

TEST_CASE("cross-entropy without a cap stays finite for huge logits", "[ops]") {
  const std::vector<float> z = {1000.0f, 0.0f, -1000.0f};
  const std::vector<int32_t> y = {1};
  double loss = 0;
  std::vector<float> dz(3);
  cpu::softcap_cross_entropy(z.data(), y.data(), 1, 3, 0.0f, &loss, dz.data(), 1.0f);
  CHECK(loss == Approx(1000.0).epsilon(1e-12));
  CHECK(dz[0] == Approx(1.0f));
  CHECK(dz[1] == Approx(-1.0f));
  CHECK(dz[2] == 0.0f);
}

TEST_CASE("uncapped cross-entropy gradient is grad_scale * (softmax - onehot)", "[ops]") {
  const std::vector<double> z = {1.0, 2.0, 3.0};
  const std::vector<int32_t> y = {0};
  std::vector<double> dz(3);
  cpu::softcap_cross_entropy(z.data(), y.data(), 1, 3, 0.0, static_cast<double*>(nullptr), dz.data(), 0.5);
  const double zsum = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  CHECK(dz[0] == Approx(0.5 * (std::exp(1.0) / zsum - 1.0)).epsilon(1e-14));
  CHECK(dz[1] == Approx(0.5 * std::exp(2.0) / zsum).epsilon(1e-14));
  CHECK(dz[2] == Approx(0.5 * std::exp(3.0) / zsum).epsilon(1e-14));
  CHECK(std::abs(dz[0] + dz[1] + dz[2]) < 1e-15);
}

TEST_CASE("cross-entropy overwrites dz and may write it over the logits", "[ops]") {
  const Vec z = logits(2, 4.0);
  const auto N = static_cast<int64_t>(kTargets.size());
  Vec dz(z.size(), 123.0);
  cpu::softcap_cross_entropy(z.data(), kTargets.data(), N, kV, 30.0, static_cast<double*>(nullptr), dz.data(), 0.1);
  Vec inplace = z;
  cpu::softcap_cross_entropy(inplace.data(), kTargets.data(), N, kV, 30.0, static_cast<double*>(nullptr),
                             inplace.data(), 0.1);
  CHECK(max_abs(dz) < 1.0);
  CHECK(inplace == dz);
}

TEST_CASE("cross-entropy backward matches central differences, softcap on and off", "[ops]") {
  for (double cap : {0.0, 30.0, 2.0}) {
    INFO("cap " << cap);
    check_gradients(ce_run(kTargets, kV, cap), {logits(3, 5.0)}, {0}, {"z"}, {1e-5, 1e-6, 66, 13});
  }
}

TEST_CASE("cross-entropy float matches double, softcap on and off", "[ops]") {
  for (double cap : {0.0, 30.0}) {
    INFO("cap " << cap);
    check_float_matches_double(ce_run(kTargets, kV, cap), {logits(4, 20.0)}, {0}, {"z"}, 1e-6);
  }
}

TEST_CASE("cross-entropy rejects a target outside the vocabulary", "[ops]") {
  const std::vector<float> z(6, 0.0f);
  for (int32_t bad : {-1, 3}) {
    const std::vector<int32_t> y = {0, bad};
    CHECK_THROWS_AS(cpu::softcap_cross_entropy(z.data(), y.data(), 2, 3, 30.0f, static_cast<double*>(nullptr),
                                               static_cast<float*>(nullptr), 1.0f),
                    std::out_of_range);
  }
}
