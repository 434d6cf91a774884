// The CUDA backend: memory, transfers, cuBLASLt GEMMs and the dispatch to the kernel launchers of cuda_internal.h.
// Host code only (compiled by the C++ compiler); see cuda_backend.h for the numerics.
#include "kernels/cuda_backend.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "formats/error.h"
#include "kernels/cuda_flash_mma.h"
#include "kernels/cuda_internal.h"

namespace ptool {

namespace cuda {

void throw_cuda_error(const char* call, cudaError_t err, const char* file, int line) {
  throw Error(std::string("CUDA: ") + call + " failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err) +
              " (" + file + ":" + std::to_string(line) + ")");
}

namespace {
bool sync_after_launch() {
  static const bool on = [] {
    const char* e = std::getenv("PTOOL_CUDA_SYNC");
    return e != nullptr && e[0] != '\0' && std::strcmp(e, "0") != 0;
  }();
  return on;
}
}  // namespace

void check_launch(const char* kernel, cudaStream_t stream, const char* file, int line) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && sync_after_launch()) err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess) throw_cuda_error((std::string("kernel ") + kernel).c_str(), err, file, line);
}

Workspace::~Workspace() {
  if (p_) cudaFree(p_);  // destructor: errors ignored
}

void* Workspace::get(size_t bytes) {
  if (bytes <= bytes_ && p_) return p_;
  if (p_) {
    PTOOL_CUDA_CHECK(cudaStreamSynchronize(stream_));  // queued kernels may still use the old block
    PTOOL_CUDA_CHECK(cudaFree(p_));
    if (counter_) counter_->sub(bytes_);
    p_ = nullptr;
    bytes_ = 0;
  }
  const size_t want = std::max<size_t>(bytes, 1 << 20);
  PTOOL_CUDA_CHECK(cudaMalloc(&p_, want));
  if (counter_) counter_->add(want);
  bytes_ = want;
  return p_;
}

}  // namespace cuda

namespace {

using cuda::Workspace;

[[noreturn]] void throw_cublas(const char* call, cublasStatus_t st, const char* file, int line) {
  throw Error(std::string("cuBLASLt: ") + call + " failed: " + cublasLtGetStatusName(st) + ": " +
              cublasLtGetStatusString(st) + " (" + file + ":" + std::to_string(line) + ")");
}

#define PTOOL_CUBLAS_CHECK(call)                                                      \
  do {                                                                                \
    const cublasStatus_t ptool_cublas_st_ = (call);                                   \
    if (ptool_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                    \
      throw_cublas(#call, ptool_cublas_st_, __FILE__, __LINE__);                      \
  } while (0)

unsigned alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  unsigned al = 16;
  while (al > 1 && (a % al) != 0) al >>= 1;
  return al;
}

// One cached cuBLASLt plan per GEMM shape, transposes and operand alignments.
struct GemmKey {
  bool ta, tb;
  int64_t m, n, k, lda, ldb, ldc;
  unsigned ala, alb, alc;
  bool c_bf16;  // C/D in bf16 (a bf16 buffer as the output)
  bool operator<(const GemmKey& o) const {
    return std::tie(ta, tb, m, n, k, lda, ldb, ldc, ala, alb, alc, c_bf16) <
           std::tie(o.ta, o.tb, o.m, o.n, o.k, o.lda, o.ldb, o.ldc, o.ala, o.alb, o.alc, o.c_bf16);
  }
};

struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  void destroy() {
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    desc = nullptr;
    a = b = c = nullptr;
  }
};

struct RopeTable {
  float* cos_t = nullptr;
  float* sin_t = nullptr;
};

class CudaBackend final : public Backend<float> {
 public:
  explicit CudaBackend(const CudaBackendOptions& o) : opt_(o) {
    int count = 0;
    PTOOL_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (o.device < 0 || o.device >= count) {
      throw Error("CUDA: device " + std::to_string(o.device) + " does not exist (" + std::to_string(count) +
                  " device(s) found)");
    }
    PTOOL_CUDA_CHECK(cudaSetDevice(o.device));
    PTOOL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    ws_.set_stream(stream_);
    ws_.set_counter(&mem_);
    conv_ws_.set_stream(stream_);
    conv_ws_.set_counter(&mem_);
    PTOOL_CUBLAS_CHECK(cublasLtCreate(&lt_));
    PTOOL_CUDA_CHECK(cudaMalloc(&lt_ws_, kLtWorkspace));
    mem_.add(kLtWorkspace);
    PTOOL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&bad_row_dev_), sizeof(int32_t)));
    PTOOL_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&bad_row_host_), sizeof(int32_t)));
    PTOOL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&loss_acc_dev_), sizeof(double)));
    PTOOL_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&loss_acc_host_), sizeof(double)));
    PTOOL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&acc_bad_row_dev_), sizeof(int32_t)));
    reset_loss_accumulator();
    for (auto& st : staging_) PTOOL_CUDA_CHECK(cudaEventCreateWithFlags(&st.done, cudaEventDisableTiming));
  }

  ~CudaBackend() override {
    if (stream_) cudaStreamSynchronize(stream_);
    for (auto& [key, plan] : plans_) plan.destroy();
    for (auto& [key, t] : rope_) {
      cudaFree(t.cos_t);
      cudaFree(t.sin_t);
    }
    if (losses_host_) cudaFreeHost(losses_host_);
    if (losses_dev_) cudaFree(losses_dev_);
    if (bad_row_host_) cudaFreeHost(bad_row_host_);
    if (bad_row_dev_) cudaFree(bad_row_dev_);
    if (loss_acc_dev_) cudaFree(loss_acc_dev_);
    if (loss_acc_host_) cudaFreeHost(loss_acc_host_);
    if (acc_bad_row_dev_) cudaFree(acc_bad_row_dev_);
    for (auto& st : staging_) {
      if (st.host) cudaFreeHost(st.host);
      if (st.done) cudaEventDestroy(st.done);
    }
    if (lt_ws_) cudaFree(lt_ws_);
    if (lt_) cublasLtDestroy(lt_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  const char* name() const override { return "cuda"; }
  void synchronize() { PTOOL_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  cudaStream_t stream() const { return stream_; }
  const cuda::MemCounter& memory() const { return mem_; }
  void reset_peak_memory() { mem_.peak = mem_.live; }

  // ---- memory ----
  float* alloc(size_t n) override { return static_cast<float*>(device_alloc(n * sizeof(float))); }
  void release(float* p) override { device_free(p); }
  int32_t* alloc_index(size_t n) override { return static_cast<int32_t*>(device_alloc(n * sizeof(int32_t))); }
  void release_index(int32_t* p) override { device_free(p); }
  // In bf16 mode operand buffers hold bf16, and so do activation buffers unless opt_.bf16_activations is off
  // (bf16_buffers_ knows them all); elsewhere they are plain fp32 memory.
  float* alloc_operand(size_t n) override {
    return opt_.gemm == CudaGemmPrecision::bf16 && opt_.bf16_operands ? alloc_bf16(n) : alloc(n);
  }
  float* alloc_activation(size_t n) override {
    return opt_.gemm == CudaGemmPrecision::bf16 && opt_.bf16_activations ? alloc_bf16(n) : alloc(n);
  }
  size_t element_bytes(const float* p) const override { return is_bf16(p) ? sizeof(uint16_t) : sizeof(float); }
  float* alloc_bf16(size_t n) {
    void* p = device_alloc(n * sizeof(uint16_t));
    if (p) bf16_buffers_[p] = n;
    return static_cast<float*>(p);
  }
  void store_operand(float* dst, const float* src, size_t n) override {
    require_plain(src, "store_operand");
    if (is_bf16(dst))
      cuda::launch_to_bf16(src, n, reinterpret_cast<uint16_t*>(dst), stream_);
    else
      copy(dst, src, n);
  }
  void operand_values(const float* src, size_t n, float* dst) override {
    require_plain(dst, "operand_values");
    if (is_bf16(src))
      cuda::launch_bf16_to_float(reinterpret_cast<const uint16_t*>(src), n, dst, stream_);
    else
      copy(dst, src, n);
  }

  // From pageable host memory cudaMemcpyAsync returns once the data is staged, so `host` may be reused at once.
  void upload(float* dst, const float* host, size_t n) override {
    require_plain(dst, "upload");
    if (n) PTOOL_CUDA_CHECK(cudaMemcpyAsync(dst, host, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
  }
  void download(float* host, const float* src, size_t n) override {
    require_plain(src, "download");
    if (n == 0) return;
    PTOOL_CUDA_CHECK(cudaMemcpyAsync(host, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    PTOOL_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  // Through a pinned staging slot, so the copy is queued without waiting for the stream (token batches are
  // uploaded every micro-batch); waits only until the copy that last used the slot is done.
  void upload_index(int32_t* dst, const int32_t* host, size_t n) override {
    if (n == 0) return;
    Staging& st = staging_[next_staging_++ % staging_.size()];
    PTOOL_CUDA_CHECK(cudaEventSynchronize(st.done));
    if (st.cap < n) {
      if (st.host) PTOOL_CUDA_CHECK(cudaFreeHost(st.host));
      st.host = nullptr;
      st.cap = 0;
      PTOOL_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&st.host), n * sizeof(int32_t)));
      st.cap = n;
    }
    std::memcpy(st.host, host, n * sizeof(int32_t));
    PTOOL_CUDA_CHECK(cudaMemcpyAsync(dst, st.host, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    PTOOL_CUDA_CHECK(cudaEventRecord(st.done, stream_));
  }
  void zero(float* p, size_t n) override {
    if (n) PTOOL_CUDA_CHECK(cudaMemsetAsync(p, 0, n * (is_bf16(p) ? sizeof(uint16_t) : sizeof(float)), stream_));
  }
  void copy(float* dst, const float* src, size_t n) override {
    require_plain(dst, "copy");
    require_plain(src, "copy");
    if (n && dst != src)
      PTOOL_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
  }
  void add(float* y, const float* x, size_t n) override {
    cuda::launch_add(out_of(y), in_of(x), n, stream_);
  }
  void scale(float* y, float a, size_t n) override {
    require_plain(y, "scale");
    cuda::launch_scale(y, a, n, stream_);
  }
  void round_bf16(float* y, size_t n) override {
    require_plain(y, "round_bf16");
    cuda::launch_round_bf16(y, n, y, stream_);
  }

  // ---- model ops ----
  void embedding_forward(const float* t, const int32_t* tok, int64_t N, int64_t D, float* out) override {
    require_plain("embedding_forward", {t, out});
    cuda::launch_embedding_forward(t, tok, N, D, out, stream_);
  }
  void embedding_rmsnorm_forward(const float* t, const int32_t* tok, int64_t N, int64_t D, float eps, bool bf16_out,
                                 float* emb, float* out, float* rstd) override {
    require_plain("embedding_rmsnorm_forward", {t, emb, rstd});
    cuda::launch_embedding_rmsnorm_forward(t, tok, N, D, eps, bf16_out, emb, out_of(out), rstd, stream_);
  }
  void embedding_backward(const float* d, const int32_t* tok, int64_t N, int64_t D, float* dt) override {
    require_plain("embedding_backward", {d, dt});
    if (!dt) return;
    if (opt_.deterministic)
      cuda::launch_embedding_backward_sorted(d, tok, N, D, dt, ws_, stream_);
    else
      cuda::launch_embedding_backward_atomic(d, tok, N, D, dt, stream_);
  }
  void rmsnorm_forward(const float* x, int64_t N, int64_t D, float eps, float* out, float* rstd) override {
    require_plain("rmsnorm_forward", {rstd});
    cuda::launch_rmsnorm_forward(in_of(x), N, D, eps, out_of(out), rstd, stream_);
  }
  void rmsnorm_backward(const float* d, const float* x, const float* rstd, int64_t N, int64_t D,
                        float* dx) override {
    require_plain("rmsnorm_backward", {rstd});
    cuda::launch_rmsnorm_backward(in_of(d), in_of(x), rstd, N, D, out_of(dx), true, stream_);
  }
  void rmsnorm_backward_set(const float* d, const float* x, const float* rstd, int64_t N, int64_t D,
                            float* dx) override {
    require_plain("rmsnorm_backward_set", {rstd});
    cuda::launch_rmsnorm_backward(in_of(d), in_of(x), rstd, N, D, out_of(dx), false, stream_);
  }

  // y[N, M] = x[N, K] W[M, K]^T. cuBLASLt is column-major: the row-major y is the column-major y^T (M x N), and
  // y^T = W x^T = op_T(W as col-major K x M) * op_N(x as col-major K x N).
  void linear_forward(const float* x, const float* W, int64_t N, int64_t K, int64_t M, float* y) override {
    require_plain("linear_forward", {W});
    if (N <= 0 || M <= 0) return;
    if (K <= 0) {
      zero(y, static_cast<size_t>(N * M));
      return;
    }
    const auto op = operands({W, x}, {M * K, N * K});
    gemm(true, false, M, N, K, op[0], K, op[1], K, out_of(y), M, 0.f);
  }
  // dx[N, K] += dy[N, M] W[M, K]:  dx^T (K x N) = W^T (col-major K x M, op N) * dy^T (col-major M x N, op N).
  // dW[M, K] += dy^T x:            dW^T (K x M) = x^T (col-major K x N, op N) * dy (col-major M x N, op T).
  // One operand list for all weights, so bf16 mode converts x once.
  void linear_forward_shared(const float* x, int64_t N, int64_t K, std::span<const LinearOut> outs) override {
    for (const LinearOut& o : outs) require_plain("linear_forward_shared", {o.W});
    if (N <= 0) return;
    if (K <= 0) {
      for (const LinearOut& o : outs)
        if (o.M > 0) zero(o.y, static_cast<size_t>(N * o.M));
      return;
    }
    std::vector<const float*> p{x};
    std::vector<int64_t> n{N * K};
    for (const LinearOut& o : outs) {
      p.push_back(o.M > 0 ? o.W : nullptr);
      n.push_back(o.M * K);
    }
    const auto op = operands(p, n);
    for (size_t i = 0; i < outs.size(); ++i)
      if (outs[i].M > 0)
        gemm(true, false, outs[i].M, N, K, op[1 + i], K, op[0], K, out_of(outs[i].y), outs[i].M, 0.f);
  }
  void copy_columns(const float* src, int64_t N, int64_t width, ColumnSlice dst) override {
    cuda::launch_copy_columns(in_of(src), N, width, out_of(dst.base), dst.row_stride(width), dst.col, stream_);
  }
  void gather_rows(const float* src, int64_t B, int64_t Tn, int64_t from, int64_t D, float* dst) override {
    if (from < 0 || from > Tn) throw std::invalid_argument("gather_rows: from outside [0, Tn]");
    cuda::launch_gather_rows(in_of(src), B, Tn, from, D, out_of(dst), stream_);
  }
  void linear_backward(const float* dy, const float* x, const float* W, int64_t N, int64_t K, int64_t M, float* dx,
                       float* dW) override {
    require_plain("linear_backward", {W, dx, dW});
    linear_backward_impl(dy, x, W, N, K, M, dx, 1.f, dW);
  }
  void linear_backward_set_dx(const float* dy, const float* x, const float* W, int64_t N, int64_t K, int64_t M,
                              float* dx, float* dW) override {
    require_plain("linear_backward_set_dx", {W, dW});
    if (dx && (N > 0 && K > 0) && M <= 0) zero(dx, static_cast<size_t>(N * K));  // an empty sum
    linear_backward_impl(dy, x, W, N, K, M, dx, 0.f, dW);
  }

  void channel_scale_forward(const float* x, const float* s, int64_t N, int64_t D, float* y) override {
    require_plain("channel_scale_forward", {x, s, y});
    cuda::launch_channel_scale_forward(x, s, N, D, y, stream_);
  }
  void scaled_residual_forward(const float* x, const float* o, const float* sc, int64_t N, int64_t D,
                               float* y) override {
    require_plain("scaled_residual_forward", {sc});
    cuda::launch_scaled_residual_forward(in_of(x), in_of(o), sc, N, D, out_of(y), stream_);
  }
  void scaled_residual_rmsnorm_forward(const float* x, const float* o, const float* sc, int64_t N, int64_t D,
                                       float eps, float* y, float* h, float* rstd) override {
    require_plain("scaled_residual_rmsnorm_forward", {sc, rstd});
    cuda::launch_scaled_residual_rmsnorm_forward(in_of(x), in_of(o), sc, N, D, eps, out_of(y), out_of(h), rstd,
                                                 stream_);
  }
  void channel_scale_backward(const float* dy, const float* x, const float* s, int64_t N, int64_t D, float* dx,
                              float* ds) override {
    require_plain("channel_scale_backward", {s, ds});
    cuda::launch_channel_scale_backward(in_of(dy), in_of(x), s, N, D, out_of(dx), true, ds, ws_, stream_);
  }
  void channel_scale_backward_set_dx(const float* dy, const float* x, const float* s, int64_t N, int64_t D, float* dx,
                                     float* ds) override {
    require_plain("channel_scale_backward_set_dx", {s, ds});
    cuda::launch_channel_scale_backward(in_of(dy), in_of(x), s, N, D, out_of(dx), false, ds, ws_, stream_);
  }
  void head_scale_forward(const float* x, const float* g, int64_t N, int64_t H, int64_t hd, float* y) override {
    require_plain("head_scale_forward", {x, g, y});
    cuda::launch_head_scale_forward(x, g, N, H, hd, y, stream_);
  }
  void head_scale_backward(const float* dy, const float* x, const float* g, int64_t N, int64_t H, int64_t hd,
                           float* dx, float* dg) override {
    require_plain("head_scale_backward", {dy, x, g, dx, dg});
    cuda::launch_head_scale_backward(dy, x, g, N, H, hd, dx, true, dg, ws_, stream_);
  }
  void head_scale_backward_set_dx(const float* dy, const float* x, const float* g, int64_t N, int64_t H, int64_t hd,
                                  float* dx, float* dg) override {
    require_plain("head_scale_backward_set_dx", {dy, x, g, dx, dg});
    cuda::launch_head_scale_backward(dy, x, g, N, H, hd, dx, false, dg, ws_, stream_);
  }
  void rope_forward(float* x, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base) override {
    require_plain("rope_forward", {x});
    rope("rope_forward", x, B, Tn, H, hd, rot, base, false);
  }
  void rope_backward(float* dx, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base) override {
    require_plain("rope_backward", {dx});
    rope("rope_backward", dx, B, Tn, H, hd, rot, base, true);
  }
  void qk_prep_forward(const float* raw, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base,
                       bool norm, float eps, const float* gain, float* rstd, float* x, float* out) override {
    require_plain("qk_prep_forward", {gain, rstd});
    const RopeTable* t = rope_table("qk_prep_forward", Tn, hd, rot, base);
    cuda::launch_qk_prep_forward(in_of(raw), B * Tn * H, Tn, H, hd, t ? rot : 0, norm, eps, t ? t->cos_t : nullptr,
                                 t ? t->sin_t : nullptr, gain, rstd, out_of(x), out_of(out), stream_);
  }
  // The suffix's rows against the full length's rope table from row `from` on: the per-row arithmetic of the full
  // pass, with the rows' period S.
  void qk_prep_forward_suffix(const float* raw, int64_t B, int64_t Tn, int64_t from, int64_t H, int64_t hd,
                              int64_t rot, double base, bool norm, float eps, const float* gain, float* rstd,
                              float* out) override {
    require_plain("qk_prep_forward_suffix", {gain, rstd});
    if (from < 0 || from >= std::max<int64_t>(Tn, 1))
      throw std::invalid_argument("qk_prep_forward_suffix: from " + std::to_string(from) + " outside [0, T = " +
                                  std::to_string(Tn) + ")");
    const RopeTable* t = rope_table("qk_prep_forward_suffix", Tn, hd, rot, base);
    const int64_t S = Tn - from, skip = from * (rot / 2);
    cuda::launch_qk_prep_forward(in_of(raw), B * S * H, S, H, hd, t ? rot : 0, norm, eps,
                                 t ? t->cos_t + skip : nullptr, t ? t->sin_t + skip : nullptr, gain, rstd,
                                 out_of(out), out_of(out), stream_);
  }
  void qk_prep_backward(float* d, const float* raw, const float* rstd, int64_t B, int64_t Tn, int64_t H, int64_t hd,
                        int64_t rot, double base, bool norm, ColumnSlice draw) override {
    require_plain("qk_prep_backward", {d, rstd});
    const RopeTable* t = rope_table("qk_prep_backward", Tn, hd, rot, base);
    cuda::launch_qk_prep_backward(d, in_of(raw), rstd, B * Tn * H, Tn, H, hd, t ? rot : 0, norm, t ? t->cos_t : nullptr,
                                  t ? t->sin_t : nullptr, out_of(draw.base), draw.row_stride(H * hd), draw.col,
                                  stream_);
  }
  void qk_prep_backward_gain(const float* dq, const float* gain, float* dg, const float* raw, const float* rstd,
                             int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base, bool norm,
                             float eps, ColumnSlice draw) override {
    require_plain("qk_prep_backward_gain", {dq, gain, dg, rstd});
    if (hd > cuda::kMaxPrepHd) {
      Backend<float>::qk_prep_backward_gain(dq, gain, dg, raw, rstd, B, Tn, H, hd, rot, base, norm, eps, draw);
      return;
    }
    const RopeTable* t = rope_table("qk_prep_backward_gain", Tn, hd, rot, base);
    cuda::launch_qk_prep_backward_gain(dq, gain, dg, in_of(raw), rstd, B * Tn, Tn, H, hd, t ? rot : 0, norm,
                                       t ? t->cos_t : nullptr, t ? t->sin_t : nullptr, out_of(draw.base),
                                       draw.row_stride(H * hd), draw.col, ws_, stream_);
  }
  // bf16 GEMM precision: the tensor-core flash kernels, which read q, k, v, dO and (backward) out in bf16 (operand
  // buffers as they are, the rest rounded into conv_ws_) and may write out into an operand buffer; else the fp32
  // kernels, which in bf16 mode read the same bf16 values (widened or rounded into conv_ws_) and write an operand
  // out through an fp32 copy, so that operand buffers never change a result.
  void attention_forward(const float* q, const float* k, const float* v, int64_t B, int64_t Tn, int64_t H,
                         int64_t Hkv, int64_t hd, float* out, float* lse) override {
    require_plain("attention_forward", {lse});
    const int64_t nq = elements(B, Tn, H, hd), nkv = elements(B, Tn, Hkv, hd);
    if (opt_.gemm == CudaGemmPrecision::bf16 && cuda::flash_mma_supports(hd)) {
      const auto in = operands({q, k, v}, {nq, nkv, nkv});
      cuda::launch_flash_mma_forward(bits(in[0]), bits(in[1]), bits(in[2]), B, Tn, 0, H, Hkv, hd, out_of(out), lse,
                                     stream_);
      return;
    }
    const bool op_out = is_bf16(out);
    auto in = attention_fp32_inputs({q, k, v, nullptr}, {nq, nkv, nkv, op_out ? nq : 0});
    float* o = op_out ? const_cast<float*>(in[3]) : out;  // the fp32 scratch carved for it
    cuda::launch_attention_forward(in[0], in[1], in[2], B, Tn, H, Hkv, hd, o, lse, stream_);
    if (op_out) cuda::launch_to_bf16(o, static_cast<size_t>(nq), reinterpret_cast<uint16_t*>(out), stream_);
  }
  // The flash kernel runs the suffix's query tiles only; the fp32 kernels go through the default (full length).
  void attention_forward_suffix(const float* q, const float* k, const float* v, int64_t B, int64_t Tn, int64_t from,
                                int64_t H, int64_t Hkv, int64_t hd, float* out) override {
    if (opt_.gemm != CudaGemmPrecision::bf16 || !cuda::flash_mma_supports(hd)) {
      Backend<float>::attention_forward_suffix(q, k, v, B, Tn, from, H, Hkv, hd, out);
      return;
    }
    const int64_t S = Tn - from;
    const auto in = operands({q, k, v}, {elements(B, S, H, hd), elements(B, Tn, Hkv, hd), elements(B, Tn, Hkv, hd)});
    cuda::launch_flash_mma_forward(bits(in[0]), bits(in[1]), bits(in[2]), B, Tn, from, H, Hkv, hd, out_of(out),
                                   nullptr, stream_);
  }
  void attention_backward(const float* dout, const float* q, const float* k, const float* v, const float* out,
                          const float* lse, int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd, float* dq,
                          float* dk, float* dv) override {
    require_plain("attention_backward", {lse, dq, dk, dv});  // it adds into dv
    attention_backward_impl(dout, q, k, v, out, lse, B, Tn, H, Hkv, hd, dq, dk, dv, true);
  }
  void attention_backward_set(const float* dout, const float* q, const float* k, const float* v, const float* out,
                              const float* lse, int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd, float* dq,
                              float* dk, ColumnSlice dv) override {
    require_plain("attention_backward_set", {lse, dq, dk});
    attention_backward_impl(dout, q, k, v, out, lse, B, Tn, H, Hkv, hd, dq, dk, dv, false);
  }
  // On the flash path the dK/dV kernel runs k's preparation backward on its dK rows, and in the deterministic mode
  // the dQ kernel runs q's (with its gain) on its dQ rows: the per-row arithmetic of qk_prep_backward(_gain), so
  // the raw gradients are the same bit for bit, and the fp32 dq / dk scratch is never written. With atomic dq no
  // CTA holds a whole dq row: q's goes on through qk_prep_backward_gain.
  void attention_prep_backward_set(const float* dout, const float* q, const float* k, const float* v,
                                   const float* out, const float* lse, int64_t B, int64_t Tn, int64_t H, int64_t Hkv,
                                   int64_t hd, int64_t rot, double base, bool norm, float eps, const float* gain,
                                   float* dgain, PrepGrad qg, PrepGrad kg, ColumnSlice dv, float* dq,
                                   float* dk) override {
    const PrepFolds folds = prep_backward_folds(hd);
    if (!folds.k) {
      Backend<float>::attention_prep_backward_set(dout, q, k, v, out, lse, B, Tn, H, Hkv, hd, rot, base, norm, eps,
                                                  gain, dgain, qg, kg, dv, dq, dk);
      return;
    }
    require_plain("attention_prep_backward_set", {lse, dq, kg.rstd, qg.rstd, gain, dgain});
    const int64_t nq = elements(B, Tn, H, hd), nkv = elements(B, Tn, Hkv, hd);
    const RopeTable* t = rope_table("attention_prep_backward_set", Tn, hd, rot, base);
    const auto prep = [&](const PrepGrad& p, int64_t heads) {
      return cuda::FlashPrepBackward{in_of(p.raw),          p.rstd,
                                     t ? t->cos_t : nullptr, t ? t->sin_t : nullptr,
                                     t ? rot / 2 : 0,        norm,
                                     out_of(p.draw.base),   p.draw.row_stride(heads * hd),
                                     p.draw.col,            folds.q ? gain : nullptr,
                                     folds.q ? dgain : nullptr};
    };
    const cuda::FlashPrepBackward kp = prep(kg, Hkv), qp = prep(qg, H);
    const auto in = operands({dout, q, k, v, out}, {nq, nq, nkv, nkv, nq});
    cuda::launch_flash_mma_backward(bits(in[0]), bits(in[1]), bits(in[2]), bits(in[3]), bits(in[4]), lse, B, Tn, H,
                                    Hkv, hd, folds.q ? nullptr : dq, nullptr, out_of(dv.base),
                                    dv.row_stride(Hkv * hd), dv.col, false, !opt_.deterministic, ws_, stream_, &kp,
                                    folds.q ? &qp : nullptr);
    if (!folds.q) qk_prep_backward_gain(dq, gain, dgain, qg.raw, qg.rstd, B, Tn, H, hd, rot, base, norm, eps, qg.draw);
  }
  PrepFolds prep_backward_folds(int64_t hd) const override {
    const bool flash = opt_.gemm == CudaGemmPrecision::bf16 && cuda::flash_mma_supports(hd);
    return {flash && opt_.deterministic, flash};
  }
  // dv is a whole buffer when accumulating.
  void attention_backward_impl(const float* dout, const float* q, const float* k, const float* v, const float* out,
                               const float* lse, int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd, float* dq,
                               float* dk, ColumnSlice dv, bool accumulate) {
    const int64_t nq = elements(B, Tn, H, hd), nkv = elements(B, Tn, Hkv, hd);
    const int64_t dv_ld = dv.row_stride(Hkv * hd);
    if (opt_.gemm == CudaGemmPrecision::bf16 && cuda::flash_mma_supports(hd)) {
      const auto in = operands({dout, q, k, v, out}, {nq, nq, nkv, nkv, nq});
      cuda::launch_flash_mma_backward(bits(in[0]), bits(in[1]), bits(in[2]), bits(in[3]), bits(in[4]), lse, B, Tn, H,
                                      Hkv, hd, dq, dk, out_of(dv.base), dv_ld, dv.col, accumulate, !opt_.deterministic,
                                      ws_, stream_);
    } else {
      // An operand buffer or a slice is written through an fp32 copy.
      const bool via_copy = dv.base && (is_bf16(dv.base) || !dv.whole(Hkv * hd));
      const auto in = attention_fp32_inputs({dout, q, k, v, out, nullptr}, {nq, nq, nkv, nkv, nq, via_copy ? nkv : 0});
      float* dvf = via_copy ? const_cast<float*>(in[5]) : dv.base;
      cuda::launch_attention_backward(in[0], in[1], in[2], in[3], in[4], lse, B, Tn, H, Hkv, hd, dq, dk, dvf,
                                      accumulate, ws_, stream_);
      if (via_copy) cuda::launch_copy_columns(dvf, B * Tn, Hkv * hd, out_of(dv.base), dv_ld, dv.col, stream_);
    }
  }
  void smear_forward(const float* x, const float* g, int64_t B, int64_t Tn, int64_t D, float* y) override {
    require_plain("smear_forward", {x, g});
    cuda::launch_smear_forward(x, g, B, Tn, D, out_of(y), stream_);
  }
  void smear_backward_set_dx(const float* dy, const float* x, const float* g, int64_t B, int64_t Tn, int64_t D,
                             float* dx, float* dg) override {
    require_plain("smear_backward_set_dx", {x, g, dx, dg});
    cuda::launch_smear_backward(in_of(dy), x, g, B, Tn, D, dx, dg, ws_, stream_);
  }
  void scaled_add_forward(const float* x, const float* sc, int64_t N, int64_t C, float* y) override {
    require_plain("scaled_add_forward", {sc});
    cuda::launch_scaled_add_forward(in_of(x), sc, N, C, opt_.gemm == CudaGemmPrecision::bf16, out_of(y), stream_);
  }
  void scaled_add_backward(ColumnSlice dy, const float* x, const float* sc, int64_t N, int64_t C, float* dx_acc,
                           float* ds_acc) override {
    require_plain("scaled_add_backward", {sc, ds_acc});
    cuda::launch_scaled_add_backward(in_of(dy.base), dy.row_stride(C), dy.col, in_of(x), sc, N, C,
                                     opt_.gemm == CudaGemmPrecision::bf16, out_of(dx_acc), ds_acc, ws_, stream_);
  }
  // In the bf16 mode XSA reads and writes values as bf16 operand buffers hold them, whether or not they are such
  // buffers (bf16_operands off), as the GEMMs and attention do.
  void xsa_forward(const float* att, const float* v, int64_t N, int64_t H, int64_t Hkv, int64_t hd,
                   float* y) override {
    cuda::launch_xsa_forward(in_of(att), in_of(v), N, H, Hkv, hd, opt_.gemm == CudaGemmPrecision::bf16, out_of(y),
                             stream_);
  }
  void xsa_backward(const float* dy, const float* att, const float* v, int64_t N, int64_t H, int64_t Hkv, int64_t hd,
                    float* datt, ColumnSlice dv) override {
    const int64_t w = Hkv * hd;
    cuda::launch_xsa_backward(in_of(dy), in_of(att), in_of(v), N, H, Hkv, hd, opt_.gemm == CudaGemmPrecision::bf16,
                              out_of(datt), out_of(dv.base), dv.row_stride(w), dv.col, stream_);
  }
  void activation_forward(cpu::Activation a, const float* h, int64_t n, float* out) override {
    cuda::launch_activation_forward(a == cpu::Activation::leaky_relu2, in_of(h), n, out_of(out), stream_);
  }
  void activation_backward(cpu::Activation a, const float* dout, const float* h, int64_t n, float* dh) override {
    cuda::launch_activation_backward(a == cpu::Activation::leaky_relu2, in_of(dout), in_of(h), n, out_of(dh), true,
                                     stream_);
  }
  void activation_backward_set(cpu::Activation a, const float* dout, const float* h, int64_t n, float* dh) override {
    cuda::launch_activation_backward(a == cpu::Activation::leaky_relu2, in_of(dout), in_of(h), n, out_of(dh), false,
                                     stream_);
  }
  void skip_add_forward(float* x, const float* skip, const float* w, int64_t N, int64_t D) override {
    require_plain("skip_add_forward", {x, skip, w});
    cuda::launch_skip_add_forward(x, skip, w, N, D, stream_);
  }
  void skip_add_backward(const float* dy, const float* skip, const float* w, int64_t N, int64_t D, float* dskip,
                         float* dw) override {
    require_plain("skip_add_backward", {w, dw});
    cuda::launch_skip_add_backward(in_of(dy), in_of(skip), w, N, D, out_of(dskip), true, dw, ws_, stream_);
  }
  void skip_add_backward_set(const float* dy, const float* skip, const float* w, int64_t N, int64_t D, float* dskip,
                             float* dw) override {
    require_plain("skip_add_backward_set", {w, dw});
    cuda::launch_skip_add_backward(in_of(dy), in_of(skip), w, N, D, out_of(dskip), false, dw, ws_, stream_);
  }
  void gated_skip_forward(const float* x, const float* skip, const float* w, const float* g, int64_t N, int64_t D,
                          float* y) override {
    require_plain("gated_skip_forward", {w, g});
    cuda::launch_gated_skip_forward(in_of(x), in_of(skip), w, g, N, D, out_of(y), stream_);
  }
  void gated_skip_backward(const float* dy, const float* x, const float* skip, const float* w, const float* g,
                           int64_t N, int64_t D, float* dx, float* dskip, float* dw, float* dg) override {
    require_plain("gated_skip_backward", {w, g, dw, dg});
    cuda::launch_gated_skip_backward(in_of(dy), in_of(x), in_of(skip), w, g, N, D, out_of(dx), out_of(dskip), dw, dg,
                                     ws_, stream_);
  }
  void layer_entry_forward(const float* a, const float* b, const float* s, const float* skip, const float* w,
                           const float* g, const float* x0, const float* m, int64_t N, int64_t D, float eps, float* x,
                           float* xs, float* y, float* h, float* rstd) override {
    require_plain("layer_entry_forward", {s, w, g, m, rstd});
    // x and xs hold values of the stream that y continues: one storage for the three (the kernel rounds x and xs
    // as y's storage would, written or not).
    for (const float* p : {x, xs})
      if (p && is_bf16(p) != is_bf16(y))
        throw std::invalid_argument("layer_entry_forward: x, xs and y must all be bf16 buffers or all fp32");
    cuda::launch_layer_entry_forward(in_of(a), in_of(b), s, in_of(skip), w, g, in_of(x0), m, N, D, eps, out_of(x),
                                     out_of(xs), out_of(y), out_of(h), rstd, stream_);
  }
  void resid_mix_rmsnorm_forward(const float* x, const float* x0, const float* m, int64_t N, int64_t D, float eps,
                                 float* y, float* h, float* rstd) override {
    require_plain("resid_mix_rmsnorm_forward", {m, rstd});
    cuda::launch_resid_mix_rmsnorm_forward(in_of(x), in_of(x0), m, N, D, eps, out_of(y), out_of(h), rstd, stream_);
  }
  void resid_mix_forward(const float* x, const float* x0, const float* m, int64_t N, int64_t D, float* y) override {
    require_plain("resid_mix_forward", {m});
    cuda::launch_resid_mix_forward(in_of(x), in_of(x0), m, N, D, out_of(y), stream_);
  }
  void resid_mix_backward(const float* dy, const float* x, const float* x0, const float* m, int64_t N, int64_t D,
                          float* dx, float* dx0, float* dm) override {
    require_plain("resid_mix_backward", {m, dm});
    cuda::launch_resid_mix_backward(in_of(dy), in_of(x), in_of(x0), m, N, D, out_of(dx), true, out_of(dx0), dm, ws_,
                                    stream_);
  }
  void rmsnorm_resid_mix_backward(const float* dh, const float* y, const float* rstd, const float* x, const float* x0,
                                  const float* m, int64_t N, int64_t D, float* dx, float* dx0, float* dm,
                                  const float* dx_add, bool fold_x0) override {
    require_plain("rmsnorm_resid_mix_backward", {rstd, m, dm});
    if (!cuda::rmsnorm_fused_backward(D) || !dx0 || !dm) {
      Backend<float>::rmsnorm_resid_mix_backward(dh, y, rstd, x, x0, m, N, D, dx, dx0, dm, dx_add, fold_x0);
      return;
    }
    cuda::launch_rmsnorm_resid_mix_backward(in_of(dh), rstd, in_of(x), in_of(x0), m, is_bf16(y), N, D, out_of(dx),
                                            out_of(dx0), dm, in_of(dx_add), fold_x0, ws_, stream_);
  }
  void rmsnorm_channel_scale_backward(const float* dh, const float* y, const float* rstd, const float* o,
                                      const float* s, int64_t N, int64_t D, float* dx, float* dout,
                                      float* ds) override {
    require_plain("rmsnorm_channel_scale_backward", {rstd, s, ds});
    if (!cuda::rmsnorm_fused_backward(D) || !dout || !ds) {
      Backend<float>::rmsnorm_channel_scale_backward(dh, y, rstd, o, s, N, D, dx, dout, ds);
      return;
    }
    cuda::launch_rmsnorm_channel_scale_backward(in_of(dh), in_of(y), rstd, in_of(o), s, N, D, out_of(dx), out_of(dout),
                                                ds, ws_, stream_);
  }
  void resid_mix_backward_set_dx(const float* dy, const float* x, const float* x0, const float* m, int64_t N,
                                 int64_t D, float* dx, float* dx0, float* dm) override {
    require_plain("resid_mix_backward_set_dx", {m, dm});
    cuda::launch_resid_mix_backward(in_of(dy), in_of(x), in_of(x0), m, N, D, out_of(dx), false, out_of(dx0), dm, ws_,
                                    stream_);
  }

  // The only op that waits for the device: per-token losses come back to the host (and with them the check
  // that every target is inside the vocabulary). The sum is taken on the host in row order (deterministic).
  double softcap_cross_entropy(const float* z, const int32_t* targets, int64_t N, int64_t V, float cap,
                               double* losses_host, float* dz, float grad_scale) override {
    require_plain("softcap_cross_entropy", {z});
    if (N < 0 || V <= 0) {
      throw std::invalid_argument("softcap_cross_entropy: bad shape N=" + std::to_string(N) +
                                  " V=" + std::to_string(V));
    }
    if (N == 0) return 0.0;
    ensure_losses(N);
    PTOOL_CUDA_CHECK(cudaMemsetAsync(bad_row_dev_, 0x7f, sizeof(int32_t), stream_));  // 0x7f7f7f7f > any row
    cuda::launch_softcap_cross_entropy(z, targets, N, V, cap, losses_dev_, bad_row_dev_, out_of(dz), grad_scale,
                                       stream_);
    PTOOL_CUDA_CHECK(cudaMemcpyAsync(losses_host_, losses_dev_, N * sizeof(double), cudaMemcpyDeviceToHost, stream_));
    PTOOL_CUDA_CHECK(cudaMemcpyAsync(bad_row_host_, bad_row_dev_, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    synchronize();
    if (*bad_row_host_ != 0x7f7f7f7f) {
      const int32_t row = *bad_row_host_;
      int32_t t = 0;
      PTOOL_CUDA_CHECK(cudaMemcpy(&t, targets + row, sizeof(int32_t), cudaMemcpyDeviceToHost));
      throw std::out_of_range("softcap_cross_entropy: target " + std::to_string(t) + " at row " +
                              std::to_string(row) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
    }
    double total = 0.0;
    for (int64_t n = 0; n < N; ++n) total += losses_host_[n];
    if (losses_host) std::memcpy(losses_host, losses_host_, static_cast<size_t>(N) * sizeof(double));
    return total;
  }

  // Training form: the loss sum stays on the device (one block adds it in a fixed order, so reruns agree bit
  // for bit; the order differs from the host's row order above, so the two forms may differ in the last bits).
  void softcap_cross_entropy_accumulate(const float* z, const int32_t* targets, int64_t N, int64_t V, float cap,
                                        float* dz, float grad_scale) override {
    require_plain("softcap_cross_entropy_accumulate", {z});
    if (N < 0 || V <= 0) {
      throw std::invalid_argument("softcap_cross_entropy: bad shape N=" + std::to_string(N) +
                                  " V=" + std::to_string(V));
    }
    if (N == 0) return;
    ensure_losses(N);
    cuda::launch_softcap_cross_entropy(z, targets, N, V, cap, losses_dev_, acc_bad_row_dev_, out_of(dz),
                                       grad_scale, stream_);
    cuda::launch_sum_into(losses_dev_, N, loss_acc_dev_, stream_);
  }
  double take_loss_sum() override {
    PTOOL_CUDA_CHECK(cudaMemcpyAsync(loss_acc_host_, loss_acc_dev_, sizeof(double), cudaMemcpyDeviceToHost, stream_));
    PTOOL_CUDA_CHECK(cudaMemcpyAsync(bad_row_host_, acc_bad_row_dev_, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    synchronize();
    const double sum = *loss_acc_host_;
    const int32_t bad = *bad_row_host_;
    reset_loss_accumulator();
    if (bad != 0x7f7f7f7f)
      throw std::out_of_range("softcap_cross_entropy: a target at row " + std::to_string(bad) +
                              " of a batch since the last loss read is outside the vocabulary");
    return sum;
  }

 private:
  static constexpr size_t kLtWorkspace = size_t{32} << 20;  // cuBLAS's recommendation for Hopper

  // Per-token loss buffers of at least N rows (grown once; growing waits for queued work that uses them).
  void ensure_losses(int64_t N) {
    if (N > INT32_MAX) throw std::invalid_argument("softcap_cross_entropy: N too large");
    if (static_cast<size_t>(N) <= losses_cap_) return;
    synchronize();
    if (losses_host_) PTOOL_CUDA_CHECK(cudaFreeHost(losses_host_));
    if (losses_dev_) PTOOL_CUDA_CHECK(cudaFree(losses_dev_));
    losses_host_ = nullptr;
    losses_dev_ = nullptr;
    losses_cap_ = 0;
    PTOOL_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&losses_host_), N * sizeof(double)));
    PTOOL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&losses_dev_), N * sizeof(double)));
    losses_cap_ = static_cast<size_t>(N);
  }
  void reset_loss_accumulator() {
    PTOOL_CUDA_CHECK(cudaMemsetAsync(loss_acc_dev_, 0, sizeof(double), stream_));
    PTOOL_CUDA_CHECK(cudaMemsetAsync(acc_bad_row_dev_, 0x7f, sizeof(int32_t), stream_));
  }

  void* device_alloc(size_t bytes) {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    PTOOL_CUDA_CHECK(cudaMalloc(&p, bytes));
    sizes_[p] = bytes;
    mem_.add(bytes);
    return p;
  }
  // Whether p is a bf16 buffer (an operand or activation buffer of the bf16 mode). A pointer into one past its
  // start is refused: float offsets do not address its bf16 elements.
  bool is_bf16(const void* p) const {
    auto it = bf16_buffers_.upper_bound(p);
    if (it == bf16_buffers_.begin()) return false;
    --it;
    if (static_cast<const char*>(p) >= static_cast<const char*>(it->first) + it->second * sizeof(uint16_t))
      return false;
    if (p != it->first)
      throw std::invalid_argument("a pointer into the middle of a bf16 buffer (only its start is valid)");
    return true;
  }
  cuda::Out out_of(float* p) const { return is_bf16(p) ? cuda::Out::bf16_at(p) : cuda::Out(p); }
  cuda::In in_of(const float* p) const { return is_bf16(p) ? cuda::In::bf16_at(p) : cuda::In(p); }
  void require_plain(const void* p, const char* op) const {
    if (is_bf16(p))
      throw std::invalid_argument(std::string(op) + ": a bf16 buffer holds no floats (use operand_values)");
  }
  // For the ops' arguments that they read or write as floats.
  void require_plain(const char* op, std::initializer_list<const void*> ps) const {
    for (const void* p : ps) require_plain(p, op);
  }

  void device_free(void* p) {
    if (!p) return;
    bf16_buffers_.erase(p);
    PTOOL_CUDA_CHECK(cudaFree(p));
    const auto it = sizes_.find(p);
    if (it == sizes_.end()) return;
    mem_.sub(it->second);
    sizes_.erase(it);
  }

  // dx = dx_beta dx + dy W (dx_beta 1: accumulate, 0: overwrite); dW += dy^T x.
  void linear_backward_impl(const float* dy, const float* x, const float* W, int64_t N, int64_t K, int64_t M,
                            float* dx, float dx_beta, float* dW) {
    if (N <= 0 || K <= 0 || M <= 0 || (!dx && !dW)) return;
    const auto op = operands({dy, dx ? W : nullptr, dW ? x : nullptr}, {N * M, M * K, N * K});
    if (dx) gemm(false, false, K, N, M, op[1], K, op[0], M, out_of(dx), K, dx_beta);
    if (dW) gemm(false, true, K, M, N, op[2], K, op[0], M, dW, K, 1.f);
  }

  // The GEMM (or flash attention) operands (p[i], n[i] floats) in the precision's input type: the fp32 pointers
  // themselves, or (bf16) bf16 buffers as they are and copies of the rest rounded to bf16, carved together from
  // conv_ws_ (which no other op uses until this op's kernels are queued). Null operands stay null.
  std::vector<const void*> operands(const std::vector<const float*>& p, const std::vector<int64_t>& n) {
    std::vector<const void*> out(p.begin(), p.end());
    if (opt_.gemm != CudaGemmPrecision::bf16) return out;
    cuda::Carver c;
    for (size_t i = 0; i < p.size(); ++i)
      if (p[i] && !is_bf16(p[i])) c.take<uint16_t>(static_cast<size_t>(n[i]));
    c.base = static_cast<char*>(conv_ws_.get(c.off));
    c.off = 0;
    for (size_t i = 0; i < p.size(); ++i) {
      if (!p[i] || is_bf16(p[i])) continue;  // a bf16 buffer is used as it is
      uint16_t* b = c.take<uint16_t>(static_cast<size_t>(n[i]));
      cuda::launch_to_bf16(p[i], static_cast<size_t>(n[i]), b, stream_);
      out[i] = b;
    }
    return out;
  }

  // The fp32 attention kernels' inputs in bf16 mode: bf16 buffers widened and plain tensors rounded to bf16,
  // carved from conv_ws_ (the flash kernels' inputs, as fp32). Other modes have no bf16 buffers and round nothing:
  // the pointers themselves. In every mode a null input with n[i] > 0 gets n[i] floats of scratch.
  std::vector<const float*> attention_fp32_inputs(const std::vector<const float*>& p, const std::vector<int64_t>& n) {
    std::vector<const float*> out(p.begin(), p.end());
    const bool widen = opt_.gemm == CudaGemmPrecision::bf16;
    cuda::Carver c;
    for (size_t i = 0; i < p.size(); ++i)
      if (widen || !p[i]) c.take<float>(static_cast<size_t>(n[i]));
    if (c.off == 0) return out;
    c.base = static_cast<char*>(conv_ws_.get(c.off));
    c.off = 0;
    for (size_t i = 0; i < p.size(); ++i) {
      if (!widen && p[i]) continue;
      float* f = c.take<float>(static_cast<size_t>(n[i]));
      if (!p[i]) {
        if (n[i] > 0) out[i] = f;
        continue;
      }
      if (n[i] == 0) continue;
      if (is_bf16(p[i]))
        cuda::launch_bf16_to_float(reinterpret_cast<const uint16_t*>(p[i]), static_cast<size_t>(n[i]), f, stream_);
      else
        cuda::launch_round_bf16(p[i], static_cast<size_t>(n[i]), f, stream_);
      out[i] = f;
    }
    return out;
  }
  static const uint16_t* bits(const void* p) { return static_cast<const uint16_t*>(p); }
  // B * Tn * H * hd, or 0 for a bad shape (which the launchers then report).
  static int64_t elements(int64_t B, int64_t Tn, int64_t H, int64_t hd) {
    return B < 0 || Tn < 0 || H < 0 || hd < 0 ? 0 : B * Tn * H * hd;
  }

  // D = alpha op(A) op(B) + beta C with C == D (column-major, m x n result, k the inner dimension). A and B are
  // fp32, or bf16 in bf16 mode (one precision per backend, so the plan key needs no input type); C/D are fp32,
  // or in bf16 mode a bf16 buffer (then beta must be 0: the fp32 result is rounded once, to nearest even).
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void* A, int64_t lda, const void* B,
            int64_t ldb, cuda::Out C, int64_t ldc, float beta) {
    if (C.bf16 && beta != 0.f) throw std::invalid_argument("a GEMM cannot add into a bf16 buffer");
    const void* c = C.ptr();
    const GemmKey key{ta, tb, m, n, k, lda, ldb, ldc, alignment_of(A), alignment_of(B), alignment_of(c), C.bf16 != nullptr};
    auto it = plans_.find(key);
    if (it == plans_.end()) it = plans_.emplace(key, make_plan(key)).first;
    const GemmPlan& p = it->second;
    const float alpha = 1.f;
    PTOOL_CUBLAS_CHECK(cublasLtMatmul(lt_, p.desc, &alpha, A, p.a, B, p.b, &beta, c, p.c, const_cast<void*>(c), p.c,
                                      &p.algo, lt_ws_, kLtWorkspace, stream_));
  }

  GemmPlan make_plan(const GemmKey& key) {
    GemmPlan p;
    try {
      const cublasComputeType_t compute =
          opt_.gemm == CudaGemmPrecision::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      const cudaDataType_t in = opt_.gemm == CudaGemmPrecision::bf16 ? CUDA_R_16BF : CUDA_R_32F;
      PTOOL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, compute, CUDA_R_32F));
      const cublasOperation_t opa = key.ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = key.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
      PTOOL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
      PTOOL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
      // Stored shapes (before op): A is m x k (or k x m when transposed), B is k x n (or n x k).
      PTOOL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, in, key.ta ? key.k : key.m, key.ta ? key.m : key.k,
                                                    key.lda));
      PTOOL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, in, key.tb ? key.n : key.k, key.tb ? key.k : key.n,
                                                    key.ldb));
      PTOOL_CUBLAS_CHECK(
          cublasLtMatrixLayoutCreate(&p.c, key.c_bf16 ? CUDA_R_16BF : CUDA_R_32F, key.m, key.n, key.ldc));
      cublasLtMatmulPreference_t pref = nullptr;
      PTOOL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
      {
        const uint64_t ws = kLtWorkspace;
        const uint32_t ala = key.ala, alb = key.alb, alc = key.alc;
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
        if (st == CUBLAS_STATUS_SUCCESS)
          st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ala,
                                                    sizeof(ala));
        if (st == CUBLAS_STATUS_SUCCESS)
          st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &alb,
                                                    sizeof(alb));
        if (st == CUBLAS_STATUS_SUCCESS)
          st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alc,
                                                    sizeof(alc));
        if (st == CUBLAS_STATUS_SUCCESS)
          st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alc,
                                                    sizeof(alc));
        if (st == CUBLAS_STATUS_SUCCESS)
          st = cublasLtMatmulAlgoGetHeuristic(lt_, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
      }
      cublasLtMatmulPreferenceDestroy(pref);
      PTOOL_CUBLAS_CHECK(st);
      if (found == 0) {
        throw Error("cuBLASLt: no algorithm for the GEMM m=" + std::to_string(key.m) + " n=" + std::to_string(key.n) +
                    " k=" + std::to_string(key.k));
      }
      p.algo = result.algo;
    } catch (...) {
      p.destroy();
      throw;
    }
    return p;
  }

  // The cos/sin table for (Tn, rot, base), made once and kept; nullptr when there is nothing to rotate.
  const RopeTable* rope_table(const char* op, int64_t Tn, int64_t hd, int64_t rot, double base) {
    if (rot < 0 || rot % 2 != 0 || rot > hd) {
      throw std::invalid_argument(std::string(op) + ": rotary dims " + std::to_string(rot) +
                                  " must be even and in [0, head_dim = " + std::to_string(hd) + "]");
    }
    if (!(base > 0.0)) throw std::invalid_argument(std::string(op) + ": base must be > 0, got " + std::to_string(base));
    if (rot == 0 || Tn <= 0) return nullptr;
    uint64_t bits = 0;
    std::memcpy(&bits, &base, sizeof(bits));
    const auto key = std::make_tuple(Tn, rot, bits);
    auto it = rope_.find(key);
    if (it == rope_.end()) {
      RopeTable t;
      const size_t n = static_cast<size_t>(Tn * (rot / 2));
      try {
        PTOOL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&t.cos_t), n * sizeof(float)));
        PTOOL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&t.sin_t), n * sizeof(float)));
        cuda::launch_rope_table(Tn, rot, base, t.cos_t, t.sin_t, stream_);
      } catch (...) {
        cudaFree(t.cos_t);
        cudaFree(t.sin_t);
        throw;
      }
      it = rope_.emplace(key, t).first;
    }
    return &it->second;
  }

  void rope(const char* op, float* x, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, double base,
            bool inverse) {
    const RopeTable* t = rope_table(op, Tn, hd, rot, base);
    if (t == nullptr || B <= 0 || H <= 0) return;
    cuda::launch_rope_apply(x, B, Tn, H, hd, rot, t->cos_t, t->sin_t, inverse, stream_);
  }

  CudaBackendOptions opt_;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  void* lt_ws_ = nullptr;
  Workspace ws_;
  Workspace conv_ws_;  // operands()' bf16 copies, apart from ws_ so that an op may use both at once
  cuda::MemCounter mem_;
  std::unordered_map<void*, size_t> sizes_;  // of the buffers from device_alloc
  std::map<const void*, size_t> bf16_buffers_;    // bf16 buffers (operand and activation): start -> elements
  std::map<GemmKey, GemmPlan> plans_;
  std::map<std::tuple<int64_t, int64_t, uint64_t>, RopeTable> rope_;
  double* losses_host_ = nullptr;  // pinned
  double* losses_dev_ = nullptr;
  size_t losses_cap_ = 0;
  int32_t* bad_row_dev_ = nullptr;
  int32_t* bad_row_host_ = nullptr;  // pinned
  double* loss_acc_dev_ = nullptr;    // softcap_cross_entropy_accumulate's running sum
  double* loss_acc_host_ = nullptr;   // pinned
  int32_t* acc_bad_row_dev_ = nullptr;
  // Pinned staging for upload_index: a copy from pageable memory would wait for the whole stream first.
  struct Staging {
    int32_t* host = nullptr;
    size_t cap = 0;
    cudaEvent_t done = nullptr;  // recorded after the copy that last read this slot
  };
  std::array<Staging, 4> staging_{};  // x and y of two micro-batches in flight
  size_t next_staging_ = 0;
};

}  // namespace

std::unique_ptr<Backend<float>> make_cuda_backend(const CudaBackendOptions& options) {
  return std::make_unique<CudaBackend>(options);
}

std::unique_ptr<Backend<float>> make_cuda_backend(int device) {
  CudaBackendOptions o;
  o.device = device;
  return make_cuda_backend(o);
}

bool cuda_device_available() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the error state
    return false;
  }
  return count > 0;
}

std::string cuda_device_name(int device) {
  cudaDeviceProp prop{};
  PTOOL_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
         std::to_string(prop.multiProcessorCount) + " SMs)";
}

void cuda_synchronize(Backend<float>& backend) {
  if (auto* b = dynamic_cast<CudaBackend*>(&backend.underlying())) b->synchronize();
}

void* cuda_stream_of(Backend<float>& backend) {
  auto* b = dynamic_cast<CudaBackend*>(&backend.underlying());
  if (!b) throw Error(std::string("not a CUDA backend: ") + backend.name());
  return b->stream();
}

bool is_cuda_backend(const Backend<float>& backend) {
  return dynamic_cast<const CudaBackend*>(&backend.underlying()) != nullptr;
}

CudaMemory cuda_memory(const Backend<float>& backend) {
  auto* b = dynamic_cast<const CudaBackend*>(&backend.underlying());
  if (!b) throw Error(std::string("not a CUDA backend: ") + backend.name());
  return {b->memory().live, b->memory().peak};
}

void cuda_reset_peak_memory(Backend<float>& backend) {
  auto* b = dynamic_cast<CudaBackend*>(&backend.underlying());
  if (!b) throw Error(std::string("not a CUDA backend: ") + backend.name());
  b->reset_peak_memory();
}

size_t cuda_device_used_bytes(int device) {
  int current = 0;
  PTOOL_CUDA_CHECK(cudaGetDevice(&current));
  PTOOL_CUDA_CHECK(cudaSetDevice(device));
  size_t free = 0, total = 0;
  const cudaError_t err = cudaMemGetInfo(&free, &total);
  cudaSetDevice(current);
  PTOOL_CUDA_CHECK(err);
  return total - free;
}

const char* gemm_precision_name(CudaGemmPrecision p) {
  switch (p) {
    case CudaGemmPrecision::fp32: return "fp32";
    case CudaGemmPrecision::tf32: return "tf32";
    case CudaGemmPrecision::bf16: return "bf16";
  }
  return "?";
}

CudaGemmPrecision parse_gemm_precision(const std::string& s) {
  for (auto p : {CudaGemmPrecision::fp32, CudaGemmPrecision::tf32, CudaGemmPrecision::bf16})
    if (s == gemm_precision_name(p)) return p;
  throw Error("GEMM precision must be fp32, tf32 or bf16, got '" + s + "'");
}

}  // namespace ptool
