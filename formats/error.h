// One error type for the whole project: a one-line message that says what and where.
#pragma once
#include <stdexcept>
#include <string>

namespace ptool {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace ptool
