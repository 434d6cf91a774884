// Shared by the [gpu] tests: the skip on machines without a CUDA device, host vectors copied to the backend, the
// bit-exact comparison, random inputs, and one attention case run on the CPU and on a device backend.
#pragma once
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "kernels/cuda_backend.h"
#include "src/ops/backend.h"

// Returns from the test (with a warning in the log) when no CUDA device is present, so CI without a GPU passes.
#define SKIP_WITHOUT_GPU()                 \
  do {                                     \
    if (!ptool::cuda_device_available()) { \
      WARN("skipped: no CUDA device");     \
      return;                              \
    }                                      \
  } while (0)

namespace ptool::gpu_test {

// Device copy of a host vector, on the given backend.
class Dev {
 public:
  Dev(Backend<float>& b, const std::vector<float>& h) : b_(&b), buf_(b, h.size()), n_(h.size()) {
    if (n_) b.upload(buf_.get(), h.data(), n_);
  }
  float* p() const { return buf_.get(); }
  std::vector<float> get() const {
    std::vector<float> h(n_);
    if (n_) b_->download(h.data(), buf_.get(), n_);
    return h;
  }

 private:
  Backend<float>* b_;
  DeviceBuffer<float> buf_;
  size_t n_;
};

// Every element bit-identical; prints how many differ and names the first.
inline void check_exact(const std::string& what, const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      if (bad == 0) first = i;
      ++bad;
    }
  }
  std::printf("  %-66s exact: %zu of %zu elements differ\n", what.c_str(), bad, got.size());
  INFO(what << ": first difference at " << first << " got " << (bad ? got[first] : 0.f) << " want "
            << (bad ? want[first] : 0.f));
  CHECK(bad == 0);
}

// n floats drawn uniformly from [lo, hi).
inline std::vector<float> rand_vec(std::mt19937_64& rng, size_t n, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

struct AttnShape {
  int64_t B, Tn, H, Hkv, hd;
};

inline std::string shape_name(const AttnShape& s) {
  return " B=" + std::to_string(s.B) + " T=" + std::to_string(s.Tn) + " H=" + std::to_string(s.H) +
         " Hkv=" + std::to_string(s.Hkv) + " hd=" + std::to_string(s.hd);
}

// attention_backward_set on the CPU (its gradients start as 7s, which its default zeroes) and on g (they start as
// NaN, so a kernel that added instead of writing would leave NaN): the CPU's and the device's dq, dk, dv, each
// empty where it was not asked for. The inputs are the same tensors, on the host and on g.
struct AttnInputs {
  const float *dout, *q, *k, *v, *out, *lse;
};
struct AttnGrads {
  std::vector<float> dq, dk, dv;
};
inline std::pair<AttnGrads, AttnGrads> attention_backward_set_on_both(Backend<float>& cpu, const AttnInputs& host,
                                                                      Backend<float>& g, const AttnInputs& dev,
                                                                      int64_t B, int64_t Tn, int64_t H, int64_t Hkv,
                                                                      int64_t hd, bool with_dq, bool with_dkv) {
  const size_t nq = static_cast<size_t>(B * Tn * H * hd), nkv = static_cast<size_t>(B * Tn * Hkv * hd);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  AttnGrads want{std::vector<float>(nq, 7.f), std::vector<float>(nkv, 7.f), std::vector<float>(nkv, 7.f)};
  cpu.attention_backward_set(host.dout, host.q, host.k, host.v, host.out, host.lse, B, Tn, H, Hkv, hd,
                             with_dq ? want.dq.data() : nullptr, with_dkv ? want.dk.data() : nullptr,
                             with_dkv ? want.dv.data() : nullptr);
  Dev dq(g, std::vector<float>(nq, nan)), dk(g, std::vector<float>(nkv, nan)), dv(g, std::vector<float>(nkv, nan));
  g.attention_backward_set(dev.dout, dev.q, dev.k, dev.v, dev.out, dev.lse, B, Tn, H, Hkv, hd,
                           with_dq ? dq.p() : nullptr, with_dkv ? dk.p() : nullptr, with_dkv ? dv.p() : nullptr);
  AttnGrads got;
  if (with_dq)
    got.dq = dq.get();
  else
    want.dq.clear();
  if (with_dkv) {
    got.dk = dk.get();
    got.dv = dv.get();
  } else {
    want.dk.clear();
    want.dv.clear();
  }
  return {want, got};
}

// One attention case on the CPU and on g: random q (in [-qscale, qscale)), k, v and dO; the forward; the backward
// added onto random gradients (dq and/or dk, dv as asked; the device's reads its own out and lse, as the model
// does); attention_backward_set. `label` names the shape, the q scale and the gradients asked for.
struct AttentionRun {
  std::string label;
  std::vector<float> q, k, v, dout;
  std::vector<float> out, lse, dq, dk, dv;          // the CPU's
  std::vector<float> g_out, g_lse, g_dq, g_dk, g_dv;  // the device's
  AttnGrads set, g_set;                              // attention_backward_set's, the CPU's and the device's
};
inline AttentionRun run_attention(Backend<float>& cpu, Backend<float>& g, std::mt19937_64& rng, const AttnShape& s,
                                  float qscale, bool with_dq, bool with_dkv) {
  const int64_t B = s.B, Tn = s.Tn, H = s.H, Hkv = s.Hkv, hd = s.hd;
  AttentionRun r;
  r.label = shape_name(s) + (qscale != 1.f ? " q x" + std::to_string(static_cast<int>(qscale)) : std::string()) +
            (with_dq && with_dkv ? "" : with_dq ? " (dq only)" : " (dk, dv only)");
  const size_t nq = static_cast<size_t>(B * Tn * H * hd), nkv = static_cast<size_t>(B * Tn * Hkv * hd);
  r.q = rand_vec(rng, nq, -qscale, qscale);
  r.k = rand_vec(rng, nkv);
  r.v = rand_vec(rng, nkv);
  r.dout = rand_vec(rng, nq);
  const std::vector<float> dq0 = rand_vec(rng, nq), dk0 = rand_vec(rng, nkv), dv0 = rand_vec(rng, nkv);
  r.out.resize(nq);
  r.lse.resize(static_cast<size_t>(B * H * Tn));
  r.dq = dq0;
  r.dk = dk0;
  r.dv = dv0;
  cpu.attention_forward(r.q.data(), r.k.data(), r.v.data(), B, Tn, H, Hkv, hd, r.out.data(), r.lse.data());
  cpu.attention_backward(r.dout.data(), r.q.data(), r.k.data(), r.v.data(), r.out.data(), r.lse.data(), B, Tn, H,
                         Hkv, hd, with_dq ? r.dq.data() : nullptr, with_dkv ? r.dk.data() : nullptr,
                         with_dkv ? r.dv.data() : nullptr);
  Dev gq(g, r.q), gk(g, r.k), gv(g, r.v), gdout(g, r.dout), gout(g, std::vector<float>(nq)),
      glse(g, std::vector<float>(r.lse.size()));
  Dev gdq(g, dq0), gdk(g, dk0), gdv(g, dv0);
  g.attention_forward(gq.p(), gk.p(), gv.p(), B, Tn, H, Hkv, hd, gout.p(), glse.p());
  r.g_out = gout.get();
  r.g_lse = glse.get();
  g.attention_backward(gdout.p(), gq.p(), gk.p(), gv.p(), gout.p(), glse.p(), B, Tn, H, Hkv, hd,
                       with_dq ? gdq.p() : nullptr, with_dkv ? gdk.p() : nullptr, with_dkv ? gdv.p() : nullptr);
  r.g_dq = gdq.get();
  r.g_dk = gdk.get();
  r.g_dv = gdv.get();
  std::tie(r.set, r.g_set) = attention_backward_set_on_both(
      cpu, {r.dout.data(), r.q.data(), r.k.data(), r.v.data(), r.out.data(), r.lse.data()}, g,
      {gdout.p(), gq.p(), gk.p(), gv.p(), gout.p(), glse.p()}, B, Tn, H, Hkv, hd, with_dq, with_dkv);
  return r;
}

}  // namespace ptool::gpu_test
