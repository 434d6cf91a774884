// Times spans of work that a backend queues: start() before the work, stop() after it (spans alternate and do not
// nest). take_ms() waits for the work, returns each span's milliseconds in order and forgets them.
#pragma once
#include <memory>
#include <vector>

namespace ptool {

class OpTimer {
 public:
  virtual ~OpTimer() = default;
  virtual void start() = 0;
  virtual void stop() = 0;
  virtual std::vector<double> take_ms() = 0;
  // Drops every span, open or closed: after a failure, so that timing can start afresh.
  virtual void abandon() = 0;
};

// The host's clock between start() and stop(): right for a backend whose ops are done when they return (the CPU).
std::unique_ptr<OpTimer> make_wall_clock_timer();

}  // namespace ptool
