// Host side of the device optimizer step (kernels/cuda_optim.h): grouping of the Muon matrices, the Newton-Schulz
// GEMMs (cuBLAS strided-batched), the Adam chunk table, scratch memory. Kernels: cuda_optim.cu.
#include "kernels/cuda_optim.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "formats/error.h"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_internal.h"
#include "kernels/cuda_optim_internal.h"

namespace ptool {

namespace {

cudaStream_t stream_of(Backend<float>& be) { return static_cast<cudaStream_t>(cuda_stream_of(be)); }

[[noreturn]] void throw_cublas(const char* call, cublasStatus_t st, const char* file, int line) {
  throw Error(std::string("cuBLAS: ") + call + " failed: " + cublasGetStatusName(st) + ": " +
              cublasGetStatusString(st) + " (" + file + ":" + std::to_string(line) + ")");
}

#define PTOOL_CUBLAS_CHECK(call)                                                      \
  do {                                                                                \
    const cublasStatus_t ptool_cublas_st_ = (call);                                   \
    if (ptool_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                    \
      throw_cublas(#call, ptool_cublas_st_, __FILE__, __LINE__);                      \
  } while (0)

// A device array uploaded once (tables that never change after construction).
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(const std::vector<T>& host, cudaStream_t s) {
    if (host.empty()) return;
    PTOOL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), host.size() * sizeof(T)));
    PTOOL_CUDA_CHECK(cudaMemcpyAsync(p_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, s));
    PTOOL_CUDA_CHECK(cudaStreamSynchronize(s));  // `host` may go away; construction is not in the step loop
  }
  DeviceArray(DeviceArray&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~DeviceArray() {
    if (p_) cudaFree(p_);  // destructor: errors ignored
  }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

}  // namespace

namespace cuda {

std::vector<MuonGroup> plan_muon_groups(const std::vector<CudaMuonMatrix>& matrices) {
  std::vector<MuonGroup> groups;
  for (const CudaMuonMatrix& mat : matrices) {
    if (mat.rows <= 0 || mat.cols <= 0 || mat.batch <= 0) continue;
    auto it = std::find_if(groups.begin(), groups.end(), [&](const MuonGroup& g) {
      return g.rows == mat.rows && g.cols == mat.cols && g.scale == mat.scale;
    });
    if (it == groups.end()) {
      groups.push_back(MuonGroup{mat.rows, mat.cols, mat.scale, {}});
      it = groups.end() - 1;
    }
    for (int64_t b = 0; b < mat.batch; ++b)
      it->offs.push_back(static_cast<int64_t>(mat.offset) + b * mat.rows * mat.cols);
  }
  return groups;
}

std::vector<AdamChunk> plan_adam_chunks(const std::vector<CudaAdamSegment>& segments) {
  std::vector<AdamChunk> t;
  for (const CudaAdamSegment& seg : segments) {
    if (seg.group < 0 || seg.group >= kCudaAdamGroups) throw Error("CudaAdam: group index out of range");
    for (size_t o = 0; o < seg.numel; o += kAdamChunk)
      t.push_back({seg.offset + o, static_cast<int32_t>(std::min<size_t>(kAdamChunk, seg.numel - o)), seg.group});
  }
  return t;
}

}  // namespace cuda

// ---- Muon ---------------------------------------------------------------------------------------------------

struct CudaMuon::Impl {
  struct Group : cuda::MuonGroup {
    DeviceArray<int64_t> offs_dev;
  };
  cudaStream_t stream;
  cublasHandle_t blas = nullptr;
  std::vector<Group> groups;
  cuda::Workspace ws;

  ~Impl() {
    if (blas) cublasDestroy(blas);
  }

  // C = alpha op(A) op(B) + beta C for every matrix of the batch (cuBLAS is column-major).
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const void* A, int64_t lda,
            int64_t sa, const void* B, int64_t ldb, int64_t sb, float beta, void* C, int64_t ldc, int64_t sc,
            int64_t batch, bool bf16) {
    const cudaDataType t = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    PTOOL_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        blas, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(m),
        static_cast<int>(n), static_cast<int>(k), &alpha, A, t, static_cast<int>(lda), sa, B, t,
        static_cast<int>(ldb), sb, &beta, C, t, static_cast<int>(ldc), sc, static_cast<int>(batch),
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  void step_group(const Group& g, float* W, const float* G, float* buf, const CudaMuonStep& s) {
    const int64_t nb = static_cast<int64_t>(g.offs.size());
    const bool tr = g.rows > g.cols;
    const int64_t r = tr ? g.cols : g.rows, c = tr ? g.rows : g.cols;  // X is r x c, r <= c
    const size_t n = static_cast<size_t>(g.rows) * g.cols, es = s.bf16 ? 2 : 4;
    const size_t xn = static_cast<size_t>(nb) * r * c, an = static_cast<size_t>(nb) * r * r;
    const int chunks = cuda::sumsq_chunks(n);
    cuda::Carver cv;  // one pass measures (base == nullptr), the second carves the workspace
    auto carve = [&] {
      struct {
        float* U;
        char *X0, *X1, *A, *B;
        double *partials, *ss;
      } p{cv.take<float>(n * nb), cv.take<char>(xn * es), cv.take<char>(xn * es), cv.take<char>(an * es),
          cv.take<char>(an * es), cv.take<double>(static_cast<size_t>(chunks) * nb), cv.take<double>(nb)};
      return p;
    };
    carve();
    cv.base = static_cast<char*>(ws.get(cv.off));
    cv.off = 0;
    const auto p = carve();

    cuda::launch_muon_momentum(g.offs_dev.get(), nb, n, G, buf, p.U, s.momentum, s.nesterov, stream);
    if (s.row_normalize) cuda::launch_row_normalize(p.U, nb * g.rows, g.cols, stream);
    cuda::launch_sumsq_partials(p.U, n, nb, s.bf16, p.partials, stream);
    cuda::launch_sumsq_finalize(p.partials, chunks, nb, p.ss, stream);
    cuda::launch_ns_pack(p.U, p.ss, nb, g.rows, g.cols, s.eps, s.bf16, p.X0, stream);
    char *X = p.X0, *Xn = p.X1;
    const int64_t sx = r * c, sa = r * r;
    for (const CudaNsCoeffs& co : s.coeffs) {
      // Row-major X (r x c) is column-major Xᵀ (ld c). A = X Xᵀ; B = b·A + c·A·A; X ← a·X + B·X, the last as
      // the column-major Xᵀ·Bᵀ. The in-place C of cuBLAS gets a copy of A (resp. X) first.
      gemm(true, false, r, r, c, 1.f, X, c, sx, X, c, sx, 0.f, p.A, r, sa, nb, s.bf16);
      PTOOL_CUDA_CHECK(cudaMemcpyAsync(p.B, p.A, an * es, cudaMemcpyDeviceToDevice, stream));
      gemm(false, false, r, r, r, co.c, p.A, r, sa, p.A, r, sa, co.b, p.B, r, sa, nb, s.bf16);
      PTOOL_CUDA_CHECK(cudaMemcpyAsync(Xn, X, xn * es, cudaMemcpyDeviceToDevice, stream));
      gemm(false, true, c, r, r, 1.f, X, c, sx, p.B, r, sa, co.a, Xn, c, sx, nb, s.bf16);
      std::swap(X, Xn);
    }
    cuda::launch_muon_apply(X, s.bf16, nb, g.rows, g.cols, g.offs_dev.get(), g.scale, s.lr, s.decay,
                            s.apply_decay, W, stream);
  }
};

CudaMuon::CudaMuon(Backend<float>& backend, const std::vector<CudaMuonMatrix>& matrices)
    : impl_(std::make_unique<Impl>()) {
  impl_->stream = stream_of(backend);
  impl_->ws.set_stream(impl_->stream);
  PTOOL_CUBLAS_CHECK(cublasCreate(&impl_->blas));
  PTOOL_CUBLAS_CHECK(cublasSetStream(impl_->blas, impl_->stream));
  for (cuda::MuonGroup& g : cuda::plan_muon_groups(matrices)) {
    DeviceArray<int64_t> offs(g.offs, impl_->stream);
    impl_->groups.push_back({std::move(g), std::move(offs)});
  }
}

CudaMuon::~CudaMuon() = default;

void CudaMuon::step(float* W, const float* G, float* buf, const CudaMuonStep& s) {
  for (const auto& g : impl_->groups) impl_->step_group(g, W, G, buf, s);
}

// ---- Adam ---------------------------------------------------------------------------------------------------

struct CudaAdam::Impl {
  cudaStream_t stream;
  int64_t nchunks = 0;
  DeviceArray<cuda::AdamChunk> table;
};

CudaAdam::CudaAdam(Backend<float>& backend, const std::vector<CudaAdamSegment>& segments)
    : impl_(std::make_unique<Impl>()) {
  impl_->stream = stream_of(backend);
  const std::vector<cuda::AdamChunk> t = cuda::plan_adam_chunks(segments);
  impl_->nchunks = static_cast<int64_t>(t.size());
  impl_->table = DeviceArray<cuda::AdamChunk>(t, impl_->stream);
}

CudaAdam::~CudaAdam() = default;

void CudaAdam::step(float* w, const float* g, float* m, float* v, const CudaAdamStep& s) {
  cuda::AdamConsts c{s.b1, s.b2, s.omb1, s.omb2, s.eps, s.bc2_sqrt, {}};
  for (int i = 0; i < kCudaAdamGroups; ++i) {
    const CudaAdamGroupStep& gs = s.groups[i];
    c.groups[i] = {gs.step_size, gs.decay, gs.wd, gs.enabled, gs.decoupled, gs.coupled, gs.bf16};
  }
  cuda::launch_adam(impl_->table.get(), impl_->nchunks, c, w, g, m, v, impl_->stream);
}

// ---- clipping -----------------------------------------------------------------------------------------------

struct CudaGradClip::Impl {
  cudaStream_t stream;
  size_t n;
  int chunks;
  double* partials = nullptr;  // chunks partial sums, then the total
  ~Impl() {
    if (partials) cudaFree(partials);
  }
};

CudaGradClip::CudaGradClip(Backend<float>& backend, size_t n) : impl_(std::make_unique<Impl>()) {
  impl_->stream = stream_of(backend);
  impl_->n = n;
  impl_->chunks = cuda::sumsq_chunks(n);
  PTOOL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&impl_->partials), (impl_->chunks + 1) * sizeof(double)));
}

CudaGradClip::~CudaGradClip() = default;

void CudaGradClip::clip(float* g, double max_norm) {
  double* ss = impl_->partials + impl_->chunks;
  cuda::launch_sumsq_partials(g, impl_->n, 1, false, impl_->partials, impl_->stream);
  cuda::launch_sumsq_finalize(impl_->partials, impl_->chunks, 1, ss, impl_->stream);
  if (max_norm > 0) cuda::launch_clip_scale(g, impl_->n, ss, max_norm, impl_->stream);
}

double CudaGradClip::last_norm() {
  double ss = 0;
  PTOOL_CUDA_CHECK(cudaMemcpyAsync(&ss, impl_->partials + impl_->chunks, sizeof(double), cudaMemcpyDeviceToHost,
                                   impl_->stream));
  PTOOL_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  return std::sqrt(ss);
}

// ---- test-time training's SGD ---------------------------------------------------------------------------------

struct CudaMaskedSgd::Impl {
  cudaStream_t stream;
  size_t n;
  uint8_t* mask = nullptr;
  float* buf = nullptr;
  bool first = true;
  std::unique_ptr<CudaGradClip> clip;
  ~Impl() {
    if (mask) cudaFree(mask);
    if (buf) cudaFree(buf);
  }
};

CudaMaskedSgd::CudaMaskedSgd(Backend<float>& backend, const std::vector<uint8_t>& mask)
    : impl_(std::make_unique<Impl>()) {
  impl_->stream = stream_of(backend);
  impl_->n = mask.size();
  impl_->clip = std::make_unique<CudaGradClip>(backend, mask.size());
  if (mask.empty()) return;
  PTOOL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&impl_->mask), mask.size()));
  PTOOL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&impl_->buf), mask.size() * sizeof(float)));
  PTOOL_CUDA_CHECK(cudaMemcpyAsync(impl_->mask, mask.data(), mask.size(), cudaMemcpyHostToDevice, impl_->stream));
  PTOOL_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));  // the host vector may go away after this returns
}

CudaMaskedSgd::~CudaMaskedSgd() = default;

void CudaMaskedSgd::step(float* w, float* g, float lr, float momentum, double grad_clip) {
  if (impl_->n == 0) return;
  cuda::launch_mask(g, impl_->mask, impl_->n, impl_->stream);
  if (grad_clip > 0) impl_->clip->clip(g, grad_clip);
  cuda::launch_masked_sgd(w, g, impl_->buf, impl_->mask, impl_->n, lr, momentum, impl_->first, impl_->stream);
  impl_->first = false;
}

// ---- EMA, SWA, fake quant -----------------------------------------------------------------------------------

void cuda_ema_update(Backend<float>& backend, float* ema, const float* w, size_t n, float d, float omd) {
  cuda::launch_ema(ema, w, n, d, omd, stream_of(backend));
}

void cuda_swa_accumulate(Backend<float>& backend, float* sum, const float* w, size_t n, bool first) {
  cuda::launch_swa(sum, w, n, first, stream_of(backend));
}

void cuda_fake_quantize_rows(Backend<float>& backend, const float* W, int64_t rows, int64_t cols, int bits,
                             float* out) {
  cuda::launch_fake_quantize_rows(W, rows, cols, bits, out, stream_of(backend));
}

}  // namespace ptool
