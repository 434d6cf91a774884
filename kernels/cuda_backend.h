// The CUDA implementation of the op interface (src/ops/backend.h), DESIGN.md principle 2: the CPU backend is
// the oracle, this is the fast path, tested against it in tests/kernels/test_cuda_parity_*.cpp.
//
// This header has no CUDA includes, so plain C++ files (the trainer, benchmarks, tests) can use it. It exists
// only when the build found nvcc (PTOOL_HAVE_CUDA=1); a build with nvcc but no GPU at run time still links,
// and cuda_device_available() then says false.
//
// The interface is Backend<float>: fp32 storage, except the operand and activation buffers of the bf16 mode
// (below); one CUDA stream per backend, all memory from cudaMalloc. Ops are asynchronous on that stream; download(), softcap_cross_entropy() (which
// returns per-token losses to the host) and take_loss_sum() are the only calls that wait for the device. The
// trainer's step uses softcap_cross_entropy_accumulate(), so it waits once per step, for its loss; token
// batches go up through pinned staging buffers (a copy from pageable memory would wait for the stream).
//
// Passes over activations. At d_model 512 the elementwise ops move more bytes per token than the GEMMs need time for
// (an estimate from ProfilingBackend's traffic counts, not yet a measurement), so the model uses the fused ops of the
// interface and this backend runs each in one kernel: the embedding's lookup with its RMSNorm (x0),
// scaled_residual_forward (y = x + s ⊙ o, no copy then add) and its form fused with the next RMSNorm, q/k preparation
// (forward; backward with q's gain), RMSNorm's backward with resid_mix's (rmsnorm_resid_mix_backward, presets' D),
// and the *_set backwards, which write the input gradient instead of adding it to a zeroed buffer (cuBLASLt beta = 0
// for linear dx). linear_*_shared read the shared input of q, k and v once. In bf16 mode the tensors that only GEMMs
// and attention read (operand buffers: pre-norm outputs, attention's q, k, v, the activation, the final norm, the
// gradients handed to a linear op as dy or to attention as dout, the logits' gradient among them) are stored in bf16 by
// the ops that write them (GEMMs with a bf16 D), so their readers convert nothing; the values are the ones the
// conversion would give, bit for bit. Activation buffers (the GEMM outputs that element-wise ops read: q/k before their
// preparation, the branch outputs, the MLP pre-activation, and the gradients of the activation and the MLP pre-norm)
// hold bf16 too unless bf16_activations is off: that rounds values, as PyTorch's autocast does, and halves their
// traffic. The ops that read them widen each element to fp32 as they load it.
// No cuBLASLt epilogue is used: the model has no biases, its activations (ReLU², LeakyReLU(0.5)²) are not
// among the epilogues, and folding the branch scale into a per-row alpha vector would lose the unscaled output
// that the scale's gradient needs.
//
// Numerics
// - GEMMs (linear_*): cuBLASLt with fp32 output, CudaGemmPrecision picks the inputs: fp32, TF32 (the default,
//   as PyTorch does with allow_tf32; inputs rounded to 10 mantissa bits on the tensor cores) or bf16 (the fp32
//   operands are rounded to bf16, 7 mantissa bits, by a conversion kernel into the workspace; the tensor cores
//   then run at bf16 rate and accumulate in fp32 into fp32 C/D, so activations and gradients stay fp32).
//   Products of small integers are exact in all three modes (integers up to 256 are exact in bf16).
// - Attention: with bf16 and head_dim 16, 32, 64, 96 or 128, the tensor-core flash kernels of kernels/cuda_flash_mma.cu
//   (bf16 q, k, v, dO, fp32 accumulation and softmax, deterministic two-kernel backward); otherwise the fp32
//   kernels of kernels/cuda_attention.cu, which in bf16 mode also read q, k, v and dO rounded to bf16.
// - Everything else is fp32 arithmetic with fp32 or double accumulators (see the kernel files that
//   kernels/cuda_internal.h names for the per-op notes).
// - Deterministic: with CudaBackendOptions::deterministic (the default) every op gives bit-identical results
//   run to run (no floating-point atomics anywhere). deterministic = false (`--device cuda:...,nondeterministic`)
//   switches embedding_backward to atomicAdd and the flash backward to one kernel that adds dQ with atomics
//   (FlashAttention-2's 5 tile products instead of 7): faster, with order-dependent rounding in those sums.
#pragma once
#include <memory>
#include <string>

#include "src/ops/backend.h"
#include "src/ops/op_timer.h"

namespace ptool {

enum class CudaGemmPrecision {
  fp32,  // CUBLAS_COMPUTE_32F: full fp32 multiply-add (FFMA), slow on tensor-core GPUs
  tf32,  // CUBLAS_COMPUTE_32F_FAST_TF32: inputs rounded to TF32 on the tensor cores, fp32 accumulation
  bf16,  // A/B converted to CUDA_R_16BF (round to nearest even), CUBLAS_COMPUTE_32F, fp32 C/D
};

// "fp32", "tf32", "bf16"; parse throws ptool::Error naming the accepted spellings.
const char* gemm_precision_name(CudaGemmPrecision p);
CudaGemmPrecision parse_gemm_precision(const std::string& s);

struct CudaBackendOptions {
  int device = 0;
  CudaGemmPrecision gemm = CudaGemmPrecision::tf32;
  bool deterministic = true;
  // bf16 mode: operand buffers (Backend::alloc_operand) hold bf16, written by their producers, so their GEMMs need
  // no conversion. false keeps them fp32 and converts before each GEMM; the results are the same bit for bit.
  bool bf16_operands = true;
  // bf16 mode: activation buffers (Backend::alloc_activation: the model's GEMM outputs and their gradients that
  // element-wise ops read; under embed_bf16 the model's residual stream and its gradient too) hold bf16, as under
  // PyTorch's autocast and the reference's bf16 stream: half the bytes, values rounded. false: fp32.
  bool bf16_activations = true;
};

// Throws ptool::Error when no usable device exists (say which CUDA call failed and why).
std::unique_ptr<Backend<float>> make_cuda_backend(int device = 0);
std::unique_ptr<Backend<float>> make_cuda_backend(const CudaBackendOptions& options);

// True when the CUDA runtime finds at least one device (never throws).
bool cuda_device_available();
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)"; throws ptool::Error when there is no such device.
std::string cuda_device_name(int device = 0);
// Waits for all work queued on a CUDA backend's stream and reports any asynchronous error (throws ptool::Error).
// A no-op for other backends. Benchmarks use it to time ops.
void cuda_synchronize(Backend<float>& backend);
// The cudaStream_t (as void*, to keep CUDA headers out) that a CUDA backend queues its work on, so that other
// device code (the optimizer, calibration) can run in the same stream order. Throws for other backends.
void* cuda_stream_of(Backend<float>& backend);
bool is_cuda_backend(const Backend<float>& backend);

// Times spans of work on a CUDA backend's stream with CUDA events (for ProfilingBackend). Throws for other
// backends.
std::unique_ptr<OpTimer> make_cuda_op_timer(Backend<float>& backend);

// Device memory a CUDA backend holds: its buffers (alloc/alloc_index) and workspaces, now and at the peak
// (the counterpart of torch.cuda.max_memory_allocated). Throws for other backends.
struct CudaMemory {
  size_t live_bytes = 0;
  size_t peak_bytes = 0;
};
CudaMemory cuda_memory(const Backend<float>& backend);
// Restarts the peak at the live bytes (as torch.cuda.reset_peak_memory_stats), to measure one phase.
void cuda_reset_peak_memory(Backend<float>& backend);
// Used memory of the whole device (cudaMemGetInfo: total - free), the CUDA context and other processes included.
size_t cuda_device_used_bytes(int device = 0);

}  // namespace ptool
