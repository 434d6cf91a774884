// Shared helpers of the CPU op tests (tests/src/test_ops_*.cpp): finite-difference gradient checks,
// the accumulate convention and float-vs-double agreement, all driven by one "run" function per op.
//
// A run function has the shape
//   std::vector<double> run(auto tag, const Vecs& in, const Vec* dout, Vecs* grads)
// It converts the inputs `in` to T = decltype(tag), runs the op's forward and returns the output as double.
// When dout is given it also runs the backward with upstream gradient dout, adding into (*grads)[i] for every
// input i whose grads entry is non-empty (OpBuffers does the conversions). A scalar loss L = <dout, out> then
// has dL/d in[i] = what backward added to grads[i].
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "src/ops/cpu_ops.h"

namespace ptool::test_ops {

using Vec = std::vector<double>;
using Vecs = std::vector<Vec>;

inline Vec random_vec(std::mt19937_64& rng, size_t n, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> u(lo, hi);
  Vec v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

template <class T> std::vector<T> cast_to(const Vec& v) { return std::vector<T>(v.begin(), v.end()); }
template <class T> Vec to_double(const std::vector<T>& v) { return Vec(v.begin(), v.end()); }

inline double dot(const Vec& a, const Vec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

inline double max_abs(const Vec& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

inline double max_abs_diff(const Vec& a, const Vec& b) {
  REQUIRE(a.size() == b.size());
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

// Inputs and gradient accumulators of one run, converted to T; write_back returns the gradients as double.
template <class T> struct OpBuffers {
  std::vector<std::vector<T>> in, grad;
  OpBuffers(const Vecs& din, const Vecs* dgrad) {
    for (const auto& v : din) in.push_back(cast_to<T>(v));
    if (dgrad) {
      for (const auto& v : *dgrad) grad.push_back(cast_to<T>(v));
    }
  }
  T* p(size_t i) { return in[i].data(); }
  T* g(size_t i) { return i < grad.size() && !grad[i].empty() ? grad[i].data() : nullptr; }
  void write_back(Vecs* dgrad) const {
    if (!dgrad) return;
    for (size_t i = 0; i < grad.size(); ++i) (*dgrad)[i] = to_double(grad[i]);
  }
};

struct FdOptions {
  double h = 1e-5;            // central-difference step
  double tol = 1e-6;          // relative tolerance per element
  size_t max_checks = 48;     // elements checked per input (sampled when the input is larger)
  uint64_t seed = 12345;
};

// Checks every input listed in `diff` (indices into `in`) against central differences of L = <dout, out>.
// Gradient accumulators start from random non-zero values, so this also checks that backward adds.
template <class Run>
void check_gradients(const Run& run, Vecs in, const std::vector<size_t>& diff, const std::vector<std::string>& names,
                     FdOptions opt = {}) {
  std::mt19937_64 rng(opt.seed);
  const Vec out0 = run(double{}, in, nullptr, nullptr);
  const Vec dout = random_vec(rng, out0.size());
  Vecs pre(in.size());
  for (size_t i : diff) pre[i] = random_vec(rng, in[i].size());
  Vecs grads = pre;
  run(double{}, in, &dout, &grads);

  for (size_t i : diff) {
    Vec analytic(in[i].size());
    for (size_t e = 0; e < analytic.size(); ++e) analytic[e] = grads[i][e] - pre[i][e];
    std::vector<size_t> idx(in[i].size());
    for (size_t e = 0; e < idx.size(); ++e) idx[e] = e;
    if (idx.size() > opt.max_checks) {
      std::shuffle(idx.begin(), idx.end(), rng);
      idx.resize(opt.max_checks);
    }
    const double floor = 1e-3 * max_abs(analytic) + 1e-12;
    double worst = 0.0;
    size_t worst_e = 0;
    double worst_a = 0.0, worst_n = 0.0;
    for (size_t e : idx) {
      const double x0 = in[i][e];
      in[i][e] = x0 + opt.h;
      const double lp = dot(dout, run(double{}, in, nullptr, nullptr));
      in[i][e] = x0 - opt.h;
      const double lm = dot(dout, run(double{}, in, nullptr, nullptr));
      in[i][e] = x0;
      const double numeric = (lp - lm) / (2.0 * opt.h);
      const double err =
          std::abs(analytic[e] - numeric) / std::max({std::abs(analytic[e]), std::abs(numeric), floor});
      if (err > worst) {
        worst = err;
        worst_e = e;
        worst_a = analytic[e];
        worst_n = numeric;
      }
    }
    INFO("input " << names[i] << ": worst element " << worst_e << " analytic " << worst_a << " numeric " << worst_n);
    CHECK(worst <= opt.tol);
    CHECK(max_abs(analytic) > 0.0);  // a gradient that is identically zero would pass vacuously
  }
}

// Backward called twice with the same upstream gradient, starting from zero, leaves twice the gradient of one call.
template <class Run> void check_backward_accumulates(const Run& run, const Vecs& in, const std::vector<size_t>& diff,
                                                     const std::vector<std::string>& names) {
  std::mt19937_64 rng(777);
  const Vec out0 = run(double{}, in, nullptr, nullptr);
  const Vec dout = random_vec(rng, out0.size());
  Vecs once(in.size());
  for (size_t i : diff) once[i] = Vec(in[i].size(), 0.0);
  Vecs twice = once;
  run(double{}, in, &dout, &once);
  run(double{}, in, &dout, &twice);
  run(double{}, in, &dout, &twice);
  for (size_t i : diff) {
    INFO("input " << names[i]);
    Vec doubled = once[i];
    for (auto& x : doubled) x *= 2.0;
    CHECK(max_abs(once[i]) > 0.0);
    CHECK(max_abs_diff(twice[i], doubled) <= 1e-12 * std::max(1.0, max_abs(doubled)));
  }
}

// The float instantiation agrees with the double one on outputs and gradients to `tol` relative to the
// largest magnitude of each array.
template <class Run> void check_float_matches_double(const Run& run, const Vecs& in, const std::vector<size_t>& diff,
                                                     const std::vector<std::string>& names, double tol = 2e-5) {
  std::mt19937_64 rng(4242);
  const Vec out_d0 = run(double{}, in, nullptr, nullptr);
  const Vec dout = random_vec(rng, out_d0.size());
  // Round inputs to float first so both precisions see the same numbers.
  Vecs inr = in;
  for (auto& v : inr) {
    for (auto& x : v) x = static_cast<double>(static_cast<float>(x));
  }
  Vec doutr = dout;
  for (auto& x : doutr) x = static_cast<double>(static_cast<float>(x));
  Vecs gd(in.size()), gf(in.size());
  for (size_t i : diff) gd[i] = gf[i] = Vec(in[i].size(), 0.0);
  const Vec od = run(double{}, inr, &doutr, &gd);
  const Vec of = run(float{}, inr, &doutr, &gf);
  {
    INFO("output");
    CHECK(max_abs_diff(od, of) <= tol * std::max(max_abs(od), 1e-30));
  }
  for (size_t i : diff) {
    INFO("gradient of " << names[i]);
    CHECK(max_abs_diff(gd[i], gf[i]) <= tol * std::max(max_abs(gd[i]), 1e-30));
  }
}

}  // namespace ptool::test_ops
