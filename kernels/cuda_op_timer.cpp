// OpTimer for a CUDA backend: a pair of events around each span, recorded on the backend's stream, so a span
// measures the device time of the work queued inside it. Events are pooled and reused after take_ms().
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <vector>

#include "kernels/cuda_backend.h"
#include "kernels/cuda_internal.h"

namespace ptool {

namespace {

class CudaOpTimer final : public OpTimer {
 public:
  explicit CudaOpTimer(cudaStream_t s) : stream_(s) {}
  ~CudaOpTimer() override {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);  // destructor: errors ignored
  }
  CudaOpTimer(const CudaOpTimer&) = delete;
  CudaOpTimer& operator=(const CudaOpTimer&) = delete;

  void start() override {
    if (used_ % 2 != 0) throw std::logic_error("OpTimer: start() while a span is open");
    record();
  }
  void stop() override {
    if (used_ % 2 == 0) throw std::logic_error("OpTimer: stop() without start()");
    record();
  }
  std::vector<double> take_ms() override {
    if (used_ % 2 != 0) throw std::logic_error("OpTimer: take_ms() while a span is open");
    std::vector<double> ms;
    if (used_ > 0) PTOOL_CUDA_CHECK(cudaEventSynchronize(events_[used_ - 1]));
    for (size_t i = 0; i < used_; i += 2) {
      float t = 0.f;
      PTOOL_CUDA_CHECK(cudaEventElapsedTime(&t, events_[i], events_[i + 1]));
      ms.push_back(t);
    }
    used_ = 0;
    return ms;
  }
  void abandon() override { used_ = 0; }

 private:
  void record() {
    if (used_ == events_.size()) {
      cudaEvent_t e = nullptr;
      PTOOL_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    PTOOL_CUDA_CHECK(cudaEventRecord(events_[used_], stream_));
    ++used_;
  }

  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
  size_t used_ = 0;  // events recorded since the last take_ms()
};

}  // namespace

std::unique_ptr<OpTimer> make_cuda_op_timer(Backend<float>& backend) {
  return std::make_unique<CudaOpTimer>(static_cast<cudaStream_t>(cuda_stream_of(backend)));
}

}  // namespace ptool
