// SmearGate (Backend::smear_forward, smear_backward_set_dx): each position blended with the one before it in its
// sequence, through a per-channel sigmoid gate. Element-wise; the gate's gradient is one deterministic column
// reduction. x (the normed embedding) is fp32; y and dy may be the residual stream's bf16 buffers.
#include "kernels/cuda_ops_common.cuh"

namespace ptool::cuda {

namespace {

struct SmearFwdF {
  const float* x;
  const float* g;
  Out y;
  int64_t Tn, D;
  __device__ void operator()(int64_t i) const {
    const int64_t d = i % D, t = (i / D) % Tn;
    const float s = sigmoidf_(g[d]);
    const float prev = t > 0 ? x[i - D] : 0.f;
    put(y, i, __fadd_rn(__fmul_rn(1.f - s, x[i]), __fmul_rn(s, prev)));
  }
};

struct SmearBwdF {
  static constexpr int kOut = 1;
  In dy;
  const float* x;
  const float* g;
  float* dx;  // written
  int64_t Tn, D;
  __device__ void operator()(int64_t n, int64_t d, double* v) const {
    const int64_t i = n * D + d, t = n % Tn;
    const float s = sigmoidf_(g[d]), gy = get(dy, i);
    const float next = t + 1 < Tn ? __fmul_rn(s, get(dy, i + D)) : 0.f;
    dx[i] = __fadd_rn(__fmul_rn(1.f - s, gy), next);
    const float prev = t > 0 ? x[i - D] : 0.f;
    const double sd = static_cast<double>(s);
    v[0] = static_cast<double>(gy) * static_cast<double>(prev - x[i]) * (sd * (1.0 - sd));
  }
};

}  // namespace

void launch_smear_forward(const float* x, const float* g, int64_t B, int64_t Tn, int64_t D, Out y, cudaStream_t s) {
  launch_map(SmearFwdF{x, g, y, Tn, D}, B * Tn * D, s, "smear_forward");
}

void launch_smear_backward(In dy, const float* x, const float* g, int64_t B, int64_t Tn, int64_t D, float* dx,
                           float* dg_acc, Workspace& ws, cudaStream_t s) {
  launch_colreduce(SmearBwdF{dy, x, g, dx, Tn, D}, B * Tn, D, 1, dg_acc, nullptr, ws, s, "smear_backward");
}

}  // namespace ptool::cuda
