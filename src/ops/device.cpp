#include "src/ops/device.h"

#include <string_view>

#include "formats/error.h"
#ifdef PTOOL_HAVE_CUDA
#include "kernels/cuda_backend.h"
#endif

namespace ptool {

std::unique_ptr<Backend<float>> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend<float>();
  // cuda[:PRECISION][,nondeterministic]
  constexpr std::string_view kNondet = ",nondeterministic";
  const bool nondeterministic = device.ends_with(kNondet);
  const std::string spec = nondeterministic ? device.substr(0, device.size() - kNondet.size()) : device;
  if (spec == "cuda" || spec.starts_with("cuda:")) {
#ifdef PTOOL_HAVE_CUDA
    CudaBackendOptions o;
    o.deterministic = !nondeterministic;
    const std::string p = spec == "cuda" ? "tf32" : spec.substr(5);
    if (p == "bf16-gemm") {
      o.gemm = CudaGemmPrecision::bf16;
      o.bf16_activations = false;
    } else if (p == "tf32" || p == "bf16" || p == "fp32") {
      o.gemm = parse_gemm_precision(p);
    } else {
      throw Error("--device must be " + std::string(kDeviceHelp) + ", got '" + device + "'");
    }
    if (!cuda_device_available()) throw Error("--device " + device + ": no CUDA device was found on this machine");
    return make_cuda_backend(o);
#else
    throw Error("--device " + device + ": this ptool was built without CUDA (nvcc was not found at configure time)");
#endif
  }
  throw Error("--device must be " + std::string(kDeviceHelp) + ", got '" + device + "'");
}

}  // namespace ptool
