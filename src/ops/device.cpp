#include "src/ops/device.h"

#include "formats/error.h"
#ifdef PTOOL_HAVE_CUDA
#include "kernels/cuda_backend.h"
#endif

namespace ptool {

std::unique_ptr<Backend<float>> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend<float>();
  if (device == "cuda") {
#ifdef PTOOL_HAVE_CUDA
    if (!cuda_device_available()) throw Error("--device cuda: no CUDA device was found on this machine");
    return make_cuda_backend(0);
#else
    throw Error("--device cuda: this ptool was built without CUDA (nvcc was not found at configure time)");
#endif
  }
  throw Error("--device must be cpu or cuda, got '" + device + "'");
}

}  // namespace ptool
