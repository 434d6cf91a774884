// Shared by the [gpu] tests: the skip on machines without a CUDA device, and host vectors copied to the backend.
#pragma once
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

}  // namespace ptool::gpu_test
