// Chooses the backend the model runs on: "cpu" (the reference) or "cuda" (kernels/, when built and a
// device is present). Errors say which of the two is missing.
#pragma once
#include <memory>
#include <string>

#include "src/ops/backend.h"

namespace ptool {

std::unique_ptr<Backend<float>> make_backend(const std::string& device);

}  // namespace ptool
