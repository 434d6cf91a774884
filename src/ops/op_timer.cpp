#include "src/ops/op_timer.h"

#include <chrono>
#include <stdexcept>
#include <utility>

namespace ptool {

namespace {

class WallClockTimer final : public OpTimer {
 public:
  void start() override {
    if (running_) throw std::logic_error("OpTimer: start() while a span is open");
    running_ = true;
    t0_ = Clock::now();
  }
  void stop() override {
    if (!running_) throw std::logic_error("OpTimer: stop() without start()");
    running_ = false;
    ms_.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0_).count());
  }
  std::vector<double> take_ms() override {
    if (running_) throw std::logic_error("OpTimer: take_ms() while a span is open");
    return std::exchange(ms_, {});
  }
  void abandon() override {
    running_ = false;
    ms_.clear();
  }

 private:
  using Clock = std::chrono::steady_clock;
  bool running_ = false;
  Clock::time_point t0_;
  std::vector<double> ms_;
};

}  // namespace

std::unique_ptr<OpTimer> make_wall_clock_timer() { return std::make_unique<WallClockTimer>(); }

}  // namespace ptool
