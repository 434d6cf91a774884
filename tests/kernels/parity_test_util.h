// Shared by the CUDA parity tests (test_cuda_parity_*.cpp): backends, random inputs, and the tolerance check
// that prints the share of its tolerance the worst element used.
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
#pragma once
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda_backend.h"
#include "src/ops/backend.h"
#include "src/ops/bf16.h"
#include "tests/kernels/gpu_test_util.h"

namespace ptool::parity_test {

using Vec = std::vector<float>;

inline const CudaGemmPrecision kAllPrecisions[] = {CudaGemmPrecision::fp32, CudaGemmPrecision::tf32,
                                            CudaGemmPrecision::bf16};

inline std::string tag_of(CudaGemmPrecision p) { return std::string(" [") + gemm_precision_name(p) + "]"; }

inline std::unique_ptr<Backend<float>> gpu_backend(CudaGemmPrecision g = CudaGemmPrecision::fp32, bool det = true) {
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

using gpu_test::rand_vec;

// An activation buffer (Storage::activation) of n elements, optionally holding x (rounded where the backend stores
// bf16), its stored values readable as fp32.
class ActivationBuf {
 public:
  ActivationBuf(Backend<float>& g, size_t n) : g_(&g), act_(g, n, Storage::activation), vals_(g, Vec(n)), n_(n) {}
  ActivationBuf(Backend<float>& g, const Vec& x) : ActivationBuf(g, x.size()) {
    const gpu_test::Dev src(g, x);
    g.store_operand(act_.get(), src.p(), n_);
  }
  float* p() const { return act_.get(); }
  Vec values() const {
    g_->operand_values(act_.get(), n_, vals_.p());
    return vals_.get();
  }

 private:
  Backend<float>* g_;
  DeviceBuffer<float> act_;
  gpu_test::Dev vals_;
  size_t n_;
};

// Each element rounded to bf16 (nearest even): what a bf16 operand buffer holds.
inline Vec bf16_rounded(Vec v) {
  for (auto& f : v) f = round_to_bf16(f);
  return v;
}

inline Vec rand_ints(std::mt19937_64& rng, size_t n, int lo, int hi) {
  std::uniform_int_distribution<int> u(lo, hi);
  Vec v(n);
  for (auto& x : v) x = static_cast<float>(u(rng));
  return v;
}

inline int64_t pick(std::mt19937_64& rng, std::initializer_list<int64_t> xs) {
  std::vector<int64_t> v(xs);
  return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)];
}

inline int64_t rand_int(std::mt19937_64& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

// |got - want| <= atol_i + rtol |want| element-wise, with atol_i = atol * scale[i] when scale is given.
inline void check_close(const std::string& what, const Vec& got, const Vec& want, double atol, double rtol,
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
inline std::vector<double> col_abs_sum(const Vec& a, const Vec& b, int64_t N, int64_t D, const Vec& prefill) {
  std::vector<double> s(static_cast<size_t>(D));
  for (int64_t d = 0; d < D; ++d) s[d] = std::abs(prefill[d]);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) s[d] += std::abs(static_cast<double>(a[n * D + d]) * b[n * D + d]);
  for (auto& x : s) x = std::max(x, 1e-6);
  return s;
}


}  // namespace ptool::parity_test
