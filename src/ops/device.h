// Chooses the backend the model runs on from a --device string:
//   cpu          the reference (fp32)
//   cuda         kernels/ with TF32 GEMMs (the default precision)
//   cuda:tf32    the same, spelled out
//   cuda:bf16    bf16 GEMM and attention inputs, fp32 accumulation, parameters in fp32, GEMM outputs that
//                element-wise ops read stored in bf16 (as PyTorch's autocast keeps them); the residual stream and
//                its gradient in bf16 under embed_bf16 (as the reference's), else fp32
//   cuda:bf16-gemm  the same with those GEMM outputs and the stream kept in fp32 (CudaBackendOptions::
//                bf16_activations off)
//   cuda:fp32    full fp32 GEMMs (slow; for checking)
//   cuda:bf16,nondeterministic  (after any cuda spelling) floating-point atomics where they are faster: the
//                bf16 flash backward's dQ and the embedding backward; reruns then differ in the last bits
// The precision rides on the device string so that every command with --device takes it without a new flag.
// Errors say what is missing (a CUDA build, a device) or which spellings exist.
#pragma once
#include <memory>
#include <string>

#include "src/ops/backend.h"

namespace ptool {

std::unique_ptr<Backend<float>> make_backend(const std::string& device);

// One line for --help texts: the spellings make_backend accepts.
inline constexpr const char* kDeviceHelp =
    "cpu, or cuda[:tf32|bf16|bf16-gemm|fp32][,nondeterministic] (GEMM precision; plain cuda = tf32; "
    "nondeterministic: faster atomics, reruns differ in the last bits)";

}  // namespace ptool
