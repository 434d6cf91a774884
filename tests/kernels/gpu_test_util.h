// Shared by the [gpu] tests: the skip on machines without a CUDA device, host vectors copied to the backend, and
// the bit-exact comparison.
#pragma once
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
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

}  // namespace ptool::gpu_test
