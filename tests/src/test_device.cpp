// make_backend's device strings (src/ops/device.h): the accepted spellings and the errors for the others. Runs
// without a GPU: a CUDA spelling either builds a backend or fails for a missing device, never for its spelling.
#include <catch2/catch.hpp>

#include <string>

#include "formats/error.h"
#include "src/ops/device.h"

using namespace ptool;

namespace {

// The error text of make_backend(device), or "" when it succeeds.
std::string error_of(const std::string& device) {
  try {
    make_backend(device);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("make_backend: cpu and unknown devices", "[device]") {
  CHECK(std::string(make_backend("cpu")->name()) == "cpu");
  for (const char* bad : {"gpu", "CUDA", "cpu:bf16", "", "cpu,nondeterministic"}) {
    INFO(bad);
    CHECK_THAT(error_of(bad), Catch::Contains("cuda[:tf32|bf16|bf16-gemm|fp32]"));
  }
}

TEST_CASE("make_backend: cuda spellings", "[device]") {
  for (const char* ok : {"cuda", "cuda:tf32", "cuda:bf16", "cuda:bf16-gemm", "cuda:fp32", "cuda,nondeterministic",
                         "cuda:bf16,nondeterministic", "cuda:bf16-gemm,nondeterministic"}) {
    INFO(ok);
    const std::string err = error_of(ok);
    // built and present: a backend; otherwise the error names what is missing
    CHECK((err.empty() || err.find("no CUDA device") != std::string::npos ||
           err.find("built without CUDA") != std::string::npos));
  }
#ifdef PTOOL_HAVE_CUDA
  CHECK_THAT(error_of("cuda:fp16"), Catch::Contains("cuda[:tf32|bf16|bf16-gemm|fp32]"));
  CHECK_THAT(error_of("cuda:fp16"), Catch::Contains("got 'cuda:fp16'"));
  CHECK_THAT(error_of("cuda:"), Catch::Contains("got 'cuda:'"));
  for (const char* bad : {"cuda:bf16,", "cuda:bf16,deterministic", "cuda:,nondeterministic", "cuda:nondeterministic",
                          "cuda:bf16,nondeterministic,nondeterministic", "cuda,nondeterministic:bf16"}) {
    INFO(bad);
    CHECK_THAT(error_of(bad), Catch::Contains(std::string("got '") + bad + "'"));
  }
#else
  CHECK_THAT(error_of("cuda:bf16"), Catch::Contains("built without CUDA"));
#endif
}
