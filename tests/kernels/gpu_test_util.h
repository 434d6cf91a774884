// Shared by the [gpu] tests: the skip on machines without a CUDA device, host vectors copied to the backend, and
// the bit-exact comparison.
#pragma once
#include <cstdio>
#include <cstring>
#include <string>
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

}  // namespace ptool::gpu_test
