// Helpers of the bf16 flash attention tests (test_cuda_flash_mma.cpp, on a GPU or on the host emulator): random
// inputs, element-wise checks that print the share of their tolerance used, and the error scale of the bf16
// kernels.
//
// Tolerances. The kernels round Q, K, V, dO, P and dS to bf16 (8 significant bits: relative rounding error up to
// 2^-8, rms ~2.3e-3) and sum in fp32, so an output element that sums terms x_j is off by ~2.3e-3 * M with
// M = sqrt(sum_j x_j^2), the root-sum-square of its terms (random rounding errors add in quadrature). A score's
// rounding error also moves p_ij by a relative ~2.3e-3 * sqrt(2) scale |q_i o k_j| (o: element-wise), so each
// term carries the weight w_ij = 1 + scale sqrt(2 sum_d (q_id k_jd)^2). The terms, computed here in double:
//   out[i, d]: w p_ij v_jd          dv[j, d]: w p_ij dO_id (over i and the heads of the group)
//   dq[i, d]:  w p_ij (|dP_ij| + |dO_i o v_j| + |D_i|) scale k_jd          dk[j, d]: the same with q_id
// (dS = P (dP - D) cancels, so its rounding scales with its parts, not with |dS|; dP = dO . v_j itself can be
// small by cancellation while its bf16 error scales with |dO_i o v_j|, the 2-norm of its terms).
// Bound: 3e-2 M + 1e-6 |want| (the second term for the fp32 rounding of the accumulate-into prefill). A host
// emulation of these kernels (their source run per thread, with ldmatrix / mma.sync modelled per the PTX
// fragment layouts) on shapes like these used at most 0.9e-2 M (30% of the bound); a wrong mask, index or
// fragment layout gives errors of the order of M. lse: 1e-2 * qscale absolute (its error is a p-weighted mean
// of score errors, ~5e-4 per unit of q scale; the emulation used 22%).
#pragma once
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tests/kernels/gpu_test_util.h"

namespace ptool::flash_test {

using Vec = std::vector<float>;
using DVec = std::vector<double>;

using gpu_test::rand_vec;

// |got - want| <= tol[i] element-wise; prints the share of the tolerance the worst element used.
inline void check_tol(const std::string& what, const Vec& got, const Vec& want, const DVec& tol) {
  REQUIRE(got.size() == want.size());
  REQUIRE(tol.size() == want.size());
  double worst = 0.0;
  size_t wi = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    double share = std::abs(static_cast<double>(got[i]) - want[i]) / (tol[i] + 1e-30);
    if (std::isnan(got[i]) || std::isnan(want[i])) share = INFINITY;
    if (!(share <= worst)) {
      worst = share;
      wi = i;
    }
  }
  std::printf("  %-66s %7.2f%% of tolerance (n %zu)\n", what.c_str(), 100.0 * worst, got.size());
  INFO(what << ": worst element " << wi << " gpu " << (got.empty() ? 0.f : got[wi]) << " cpu "
            << (want.empty() ? 0.f : want[wi]) << " tol " << (tol.empty() ? 0.0 : tol[wi]) << " ("
            << 100.0 * worst << "% of tolerance)");
  CHECK(worst <= 1.0);
}

using gpu_test::check_exact;

using gpu_test::AttnShape;
using gpu_test::shape_name;

// Root-sum-square of the (weighted) terms of every output element: the error scale of the header comment.
struct TermScale {
  DVec out, dq, dk, dv;
};

inline TermScale term_scales(const Vec& q, const Vec& k, const Vec& v, const Vec& dout, const Vec& out, const Vec& lse,
                      const AttnShape& s) {
  const int64_t B = s.B, T = s.Tn, H = s.H, Hkv = s.Hkv, hd = s.hd, group = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  TermScale m{DVec(q.size()), DVec(q.size()), DVec(k.size()), DVec(k.size())};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        const int64_t kvh = h / group, qo = ((b * T + i) * H + h) * hd;
        double D = 0.0;
        for (int64_t d = 0; d < hd; ++d) D += static_cast<double>(dout[qo + d]) * out[qo + d];
        for (int64_t j = 0; j <= i; ++j) {
          const int64_t ko = ((b * T + j) * Hkv + kvh) * hd;
          double sc = 0.0, sq = 0.0, dp = 0.0, dq2 = 0.0;
          for (int64_t d = 0; d < hd; ++d) {
            const double x = static_cast<double>(q[qo + d]) * k[ko + d];
            sc += x;
            sq += x * x;
            const double y = static_cast<double>(dout[qo + d]) * v[ko + d];
            dp += y;
            dq2 += y * y;
          }
          const double wp = (1.0 + scale * std::sqrt(2.0 * sq)) * std::exp(sc * scale - lse[(b * H + h) * T + i]);
          const double dm = wp * (std::abs(dp) + std::sqrt(dq2) + std::abs(D)) * scale;
          for (int64_t d = 0; d < hd; ++d) {
            const double to = wp * v[ko + d], tq = dm * k[ko + d], tk = dm * q[qo + d], tv = wp * dout[qo + d];
            m.out[qo + d] += to * to;
            m.dq[qo + d] += tq * tq;
            m.dk[ko + d] += tk * tk;
            m.dv[ko + d] += tv * tv;
          }
        }
      }
  for (DVec* x : {&m.out, &m.dq, &m.dk, &m.dv})
    for (double& e : *x) e = std::sqrt(e);
  return m;
}

constexpr double kTermTol = 3e-2;

inline DVec tol_of(const DVec& scale, const Vec& want) {
  DVec t(want.size());
  for (size_t i = 0; i < t.size(); ++i) t[i] = kTermTol * scale[i] + 1e-6 * std::abs(want[i]) + 1e-7;
  return t;
}

}  // namespace ptool::flash_test
