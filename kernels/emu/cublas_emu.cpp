// cuemu: cuBLAS and cuBLASLt on the host; the semantics and numerics are described in include/cublas_api.h and
// include/cublasLt.h. Every entry point validates its handle and arguments first, returns the status the real
// library documents, and prints one line to stderr saying why when it fails. Built with -ffp-contract=off, as all
// of ptool_kernels_emu is: the arithmetic is the one written, with no multiply fused into an add.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <vector>

#include <Eigen/Dense>

struct cublasContext {};
struct cublasLtContext {};

struct cublasLtMatmulDescOpaque_t {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  cublasOperation_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  int32_t bias_type = -1;  // -1: D's type
};

struct cublasLtMatrixLayoutOpaque_t {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
  int32_t batch = 1;
  int64_t stride = 0;
};

struct cublasLtMatmulPreferenceOpaque_t {
  uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D: the documented defaults
};

namespace {

[[gnu::format(printf, 3, 4)]] cublasStatus_t fail(cublasStatus_t st, const char* fn, const char* fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "cuemu: %s: %s\n", fn, msg);
  return st;
}

// ---- handles: the live ones are registered, so that a null, destroyed or made-up handle is reported as
// CUBLAS_STATUS_NOT_INITIALIZED instead of being dereferenced.
std::mutex handles_mu;
std::set<const void*> handles;

template <class H>
cublasStatus_t create_handle(H** h, const char* fn) {
  if (!h) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "handle is null");
  *h = new H;
  const std::lock_guard lock(handles_mu);
  handles.insert(*h);
  return CUBLAS_STATUS_SUCCESS;
}

template <class H>
cublasStatus_t destroy_handle(H* h, const char* fn) {
  {
    const std::lock_guard lock(handles_mu);
    if (handles.erase(h) == 0) return fail(CUBLAS_STATUS_NOT_INITIALIZED, fn, "%p is not a live handle", (void*)h);
  }
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}

bool live(const void* h, const char* fn) {
  const std::lock_guard lock(handles_mu);
  if (handles.count(h)) return true;
  fail(CUBLAS_STATUS_NOT_INITIALIZED, fn, "%p is not a live handle", h);
  return false;
}

const char* status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "<unknown>";
}

const char* status_string(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
  }
  return "unknown error";
}

// ---- element types ----------------------------------------------------------------------------------------------

// The type combinations cuBLAS documents for these compute types, restricted to the element types emulated.
bool supported(cublasComputeType_t compute, cudaDataType_t scale, cudaDataType_t a, cudaDataType_t b,
               cudaDataType_t c, cudaDataType_t d) {
  if (a != b || c != d) return false;
  switch (compute) {
    case CUBLAS_COMPUTE_32F:
      return scale == CUDA_R_32F && (a == CUDA_R_32F ? c == CUDA_R_32F
                                                     : a == CUDA_R_16BF && (c == CUDA_R_16BF || c == CUDA_R_32F));
    case CUBLAS_COMPUTE_32F_FAST_TF32:
    case CUBLAS_COMPUTE_32F_FAST_16BF: return scale == CUDA_R_32F && a == CUDA_R_32F && c == CUDA_R_32F;
    case CUBLAS_COMPUTE_64F: return scale == CUDA_R_64F && a == CUDA_R_64F && c == CUDA_R_64F;
  }
  return false;
}

// Of the types supported() lets through: CUDA_R_32F, CUDA_R_64F and CUDA_R_16BF (bf16 bits).
size_t type_size(cudaDataType_t t) { return t == CUDA_R_64F ? 8 : t == CUDA_R_32F ? 4 : 2; }

double load(cudaDataType_t t, const void* p, int64_t i) {
  switch (t) {
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    case CUDA_R_64F: return static_cast<const double*>(p)[i];
    default: return cuemu::bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
  }
}

void store(cudaDataType_t t, void* p, int64_t i, double v) {
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case CUDA_R_64F: static_cast<double*>(p)[i] = v; break;
    default: static_cast<uint16_t*>(p)[i] = cuemu::float_to_bf16_bits(static_cast<float>(v));
  }
}

// cvt.rna.tf32.f32: 10 explicit mantissa bits, to nearest, ties away from zero (on the magnitude bits).
float to_tf32(float x) {
  if (!std::isfinite(x)) return x;
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  u = (u + 0x1000u) & ~0x1fffu;
  std::memcpy(&x, &u, sizeof u);
  return x;
}

// ---- the GEMM core ------------------------------------------------------------------------------------------------

// A matrix operand: column-major, element (r, c) of batch t at element offset t * stride + r + c * ld from p.
struct Mat {
  cudaDataType_t type;
  const void* p;
  int64_t rows, cols, ld, stride;
  double at(int64_t t, int64_t r, int64_t c) const { return load(type, p, t * stride + r + c * ld); }
};

// D = epilogue(alpha op(A) op(B) + beta C [+ bias]) for each matrix of the batch; C is not read when beta == 0.
struct Gemm {
  cublasComputeType_t compute;
  bool ta, tb;
  int64_t m, n, k, batch;
  Mat A, B, C, D;
  double alpha, beta;  // values of the scale type
  int fill = -1;       // a cublasFillMode_t: only that triangle of D is computed (syrk); -1: all of D
  const void* bias = nullptr;
  cudaDataType_t bias_type = CUDA_R_32F;
  bool relu = false;
};

// An element of an input as the multiplier sees it (fp32 inputs rounded under the FAST compute types).
double operand(const Gemm& g, const Mat& x, int64_t t, int64_t r, int64_t c) {
  const double v = x.at(t, r, c);
  if (x.type != CUDA_R_32F) return v;
  if (g.compute == CUBLAS_COMPUTE_32F_FAST_TF32) return to_tf32(static_cast<float>(v));
  if (g.compute == CUBLAS_COMPUTE_32F_FAST_16BF)
    return cuemu::bf16_bits_to_float(cuemu::float_to_bf16_bits(static_cast<float>(v)));
  return v;
}

template <class S>  // the scale type: float, or double for CUBLAS_COMPUTE_64F
void run(const Gemm& g) {
  // op(A) by rows and op(B) by columns, then all dot products at once in double (Eigen's GEMM: the emulated
  // training steps multiply full-size Newton-Schulz matrices).
  using RowMajor = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  RowMajor a(g.m, g.k), b(g.n, g.k);
  Eigen::MatrixXd acc(g.m, g.n);
  void* out = const_cast<void*>(g.D.p);  // D came in as void*
  for (int64_t t = 0; t < g.batch; ++t) {
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t l = 0; l < g.k; ++l) a(i, l) = g.ta ? operand(g, g.A, t, l, i) : operand(g, g.A, t, i, l);
    for (int64_t j = 0; j < g.n; ++j)
      for (int64_t l = 0; l < g.k; ++l) b(j, l) = g.tb ? operand(g, g.B, t, j, l) : operand(g, g.B, t, l, j);
    acc.noalias() = a * b.transpose();
    for (int64_t j = 0; j < g.n; ++j) {
      for (int64_t i = 0; i < g.m; ++i) {
        if ((g.fill == CUBLAS_FILL_MODE_LOWER && i < j) || (g.fill == CUBLAS_FILL_MODE_UPPER && i > j)) continue;
        S v = static_cast<S>(g.alpha) * static_cast<S>(acc(i, j));
        if (g.beta != 0) v += static_cast<S>(g.beta) * static_cast<S>(g.C.at(t, i, j));
        if (g.bias) v += static_cast<S>(load(g.bias_type, g.bias, i));
        if (g.relu) v = std::fmax(v, S(0));
        store(g.D.type, out, t * g.D.stride + i + j * g.D.ld, v);
      }
    }
  }
}

void run(const Gemm& g) { g.compute == CUBLAS_COMPUTE_64F ? run<double>(g) : run<float>(g); }

// ---- argument checks --------------------------------------------------------------------------------------------

bool on_device(const char* fn, const char* arg, const void* p, size_t bytes) {
  if (bytes == 0 || cuemu::is_device_range(p, bytes)) return true;
  fail(CUBLAS_STATUS_INVALID_VALUE, fn, "%s (%p, %zu bytes) is not inside one device allocation (cudaMalloc)", arg, p,
       bytes);
  return false;
}

// Each matrix of x's batch, over the bytes from its first element to its last.
bool on_device(const char* fn, const char* arg, const Mat& x, int64_t batch) {
  if (x.rows == 0 || x.cols == 0) return true;
  const size_t es = type_size(x.type), span = static_cast<size_t>((x.cols - 1) * x.ld + x.rows) * es;
  for (int64_t t = 0; t < batch; ++t) {
    const auto at = reinterpret_cast<uintptr_t>(x.p) + static_cast<uintptr_t>(t * x.stride) * es;
    if (!on_device(fn, arg, reinterpret_cast<const void*>(at), span)) return false;
  }
  return true;
}

bool valid_op(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

// The checks and the run shared by the cuBLAS GEMMs (cublasGemmEx, cublasGemmStridedBatchedEx, cublasSgemm).
cublasStatus_t blas_gemm(const char* fn, cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                         int m, int n, int k, const void* alpha, const Mat& A, const Mat& B, const void* beta,
                         const Mat& C, int batch, cublasComputeType_t compute) {
  if (!live(handle, fn)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!valid_op(transa) || !valid_op(transb)) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "invalid transa/transb");
  if (m < 0 || n < 0 || k < 0 || batch < 0)
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "m %d, n %d, k %d, batchCount %d: negative", m, n, k, batch);
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  if (A.ld < std::max(1, ta ? k : m) || B.ld < std::max(1, tb ? n : k) || C.ld < std::max(1, m))
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "lda %lld, ldb %lld or ldc %lld below the rows of A, B or C",
                (long long)A.ld, (long long)B.ld, (long long)C.ld);
  if (!alpha || !beta) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "alpha or beta is null");
  const cudaDataType_t scale = compute == CUBLAS_COMPUTE_64F ? CUDA_R_64F : CUDA_R_32F;
  if (!supported(compute, scale, A.type, B.type, C.type, C.type))
    return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "compute type %d with A/B/C types %d/%d/%d", compute, A.type, B.type,
                C.type);
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  const auto value = [&](const void* p) {
    return scale == CUDA_R_64F ? *static_cast<const double*>(p) : *static_cast<const float*>(p);
  };
  Gemm g{compute, ta, tb, m, n, k, batch, A, B, C, C, value(alpha), value(beta)};
  g.A.rows = ta ? k : m, g.A.cols = ta ? m : k;
  g.B.rows = tb ? n : k, g.B.cols = tb ? k : n;
  g.C.rows = g.D.rows = m, g.C.cols = g.D.cols = n;
  if (!on_device(fn, "A", g.A, batch) || !on_device(fn, "B", g.B, batch) || !on_device(fn, "C", g.C, batch))
    return CUBLAS_STATUS_INVALID_VALUE;
  run(g);
  return CUBLAS_STATUS_SUCCESS;
}

// ---- cuBLASLt -----------------------------------------------------------------------------------------------------

constexpr uint64_t kAlgoTag = 0x63756575'6c74616cull;  // marks an algorithm filled in by the heuristic

bool has_bias(cublasLtEpilogue_t e) { return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_RELU_BIAS; }

cudaDataType_t bias_type(const cublasLtMatmulDescOpaque_t& d, cudaDataType_t dtype) {
  return d.bias_type < 0 ? dtype : static_cast<cudaDataType_t>(d.bias_type);
}

Mat mat(const cublasLtMatrixLayoutOpaque_t& l, const void* p) {
  return {l.type, p, static_cast<int64_t>(l.rows), static_cast<int64_t>(l.cols), l.ld, l.stride};
}

// Checks a matmul's types and shapes (what the heuristic and the matmul both need).
cublasStatus_t check_problem(const char* fn, const cublasLtMatmulDescOpaque_t& d,
                             const cublasLtMatrixLayoutOpaque_t* const (&l)[4]) {
  const auto &A = *l[0], &B = *l[1], &C = *l[2], &D = *l[3];
  if (!supported(d.compute, d.scale, A.type, B.type, C.type, D.type))
    return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "compute type %d, scale type %d with A/B/C/D types %d/%d/%d/%d",
                d.compute, d.scale, A.type, B.type, C.type, D.type);
  if (has_bias(d.epilogue)) {
    const cudaDataType_t bt = bias_type(d, D.type);
    if (bt != D.type && !(bt == CUDA_R_32F && D.type == CUDA_R_16BF))
      return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "bias type %d with D type %d", bt, D.type);
  }
  for (int i = 0; i < 4; ++i) {
    if (l[i]->ld < std::max<int64_t>(1, static_cast<int64_t>(l[i]->rows)))
      return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "%c: ld %lld < rows %llu", "ABCD"[i], (long long)l[i]->ld,
                  (unsigned long long)l[i]->rows);
  }
  const bool ta = d.transa != CUBLAS_OP_N, tb = d.transb != CUBLAS_OP_N;
  const uint64_t am = ta ? A.cols : A.rows, ak = ta ? A.rows : A.cols, bk = tb ? B.cols : B.rows,
                 bn = tb ? B.rows : B.cols;
  if (am != D.rows || bn != D.cols || ak != bk || C.rows != D.rows || C.cols != D.cols)
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn,
                "inconsistent shapes: op(A) %llux%llu, op(B) %llux%llu, C %llux%llu, D %llux%llu",
                (unsigned long long)am, (unsigned long long)ak, (unsigned long long)bk, (unsigned long long)bn,
                (unsigned long long)C.rows, (unsigned long long)C.cols, (unsigned long long)D.rows,
                (unsigned long long)D.cols);
  if (A.batch != D.batch || B.batch != D.batch || C.batch != D.batch)
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "batch counts A %d, B %d, C %d, D %d differ", A.batch, B.batch,
                C.batch, D.batch);
  return CUBLAS_STATUS_SUCCESS;
}

// The operand is at least as aligned as the algorithm was promised (capped at 16 bytes, see cublasLt.h).
bool aligned(const char* fn, const char* arg, const void* p, uint32_t promised) {
  const uint32_t need = std::clamp(promised, 1u, 16u);
  if (reinterpret_cast<uintptr_t>(p) % need == 0) return true;
  fail(CUBLAS_STATUS_INVALID_VALUE, fn, "%s (%p) is less aligned than the %u bytes promised to the heuristic", arg, p,
       promised);
  return false;
}

// Reads an attribute value of exactly sizeof(T) bytes.
template <class T>
bool read_attr(const char* fn, T& out, const void* buf, size_t size) {
  if (!buf || size != sizeof(T)) {
    fail(CUBLAS_STATUS_INVALID_VALUE, fn, buf ? "sizeInBytes %zu, the attribute has %zu" : "buf is null", size,
         sizeof(T));
    return false;
  }
  std::memcpy(&out, buf, sizeof(T));
  return true;
}

}  // namespace

// ---- cuBLAS -------------------------------------------------------------------------------------------------------

cublasStatus_t cublasCreate(cublasHandle_t* handle) { return create_handle(handle, "cublasCreate"); }
cublasStatus_t cublasDestroy(cublasHandle_t handle) { return destroy_handle(handle, "cublasDestroy"); }
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t) {
  return live(handle, "cublasSetStream") ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
const char* cublasGetStatusName(cublasStatus_t status) { return status_name(status); }
const char* cublasGetStatusString(cublasStatus_t status) { return status_string(status); }

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType_t Atype, int lda, const void* B,
                            cudaDataType_t Btype, int ldb, const void* beta, void* C, cudaDataType_t Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  if (algo != CUBLAS_GEMM_DEFAULT) return fail(CUBLAS_STATUS_NOT_SUPPORTED, "cublasGemmEx", "algo %d", algo);
  return blas_gemm("cublasGemmEx", handle, transa, transb, m, n, k, alpha, {Atype, A, 0, 0, lda, 0},
                   {Btype, B, 0, 0, ldb, 0}, beta, {Ctype, C, 0, 0, ldc, 0}, 1, computeType);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType_t Atype,
                                          int lda, long long int strideA, const void* B, cudaDataType_t Btype, int ldb,
                                          long long int strideB, const void* beta, void* C, cudaDataType_t Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  if (algo != CUBLAS_GEMM_DEFAULT)
    return fail(CUBLAS_STATUS_NOT_SUPPORTED, "cublasGemmStridedBatchedEx", "algo %d", algo);
  return blas_gemm("cublasGemmStridedBatchedEx", handle, transa, transb, m, n, k, alpha,
                   {Atype, A, 0, 0, lda, strideA}, {Btype, B, 0, 0, ldb, strideB}, beta, {Ctype, C, 0, 0, ldc, strideC},
                   batchCount, computeType);
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                           const float* beta, float* C, int ldc) {
  return blas_gemm("cublasSgemm", handle, transa, transb, m, n, k, alpha, {CUDA_R_32F, A, 0, 0, lda, 0},
                   {CUDA_R_32F, B, 0, 0, ldb, 0}, beta, {CUDA_R_32F, C, 0, 0, ldc, 0}, 1, CUBLAS_COMPUTE_32F);
}

cublasStatus_t cublasDsyrk(cublasHandle_t handle, cublasFillMode_t uplo, cublasOperation_t trans, int n, int k,
                           const double* alpha, const double* A, int lda, const double* beta, double* C, int ldc) {
  const char* fn = "cublasDsyrk";
  if (!live(handle, fn)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if ((uplo != CUBLAS_FILL_MODE_LOWER && uplo != CUBLAS_FILL_MODE_UPPER) || !valid_op(trans))
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "invalid uplo or trans");
  const bool ta = trans != CUBLAS_OP_N;
  if (n < 0 || k < 0 || lda < std::max(1, ta ? k : n) || ldc < std::max(1, n))
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "n %d, k %d, lda %d, ldc %d", n, k, lda, ldc);
  if (!alpha || !beta) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "alpha or beta is null");
  if (n == 0) return CUBLAS_STATUS_SUCCESS;
  // op(A) op(A)^T is the GEMM of op(A) with B = A under the other transpose.
  const Mat a{CUDA_R_64F, A, ta ? k : n, ta ? n : k, lda, 0}, c{CUDA_R_64F, C, n, n, ldc, 0};
  if (!on_device(fn, "A", a, 1) || !on_device(fn, "C", c, 1)) return CUBLAS_STATUS_INVALID_VALUE;
  Gemm g{CUBLAS_COMPUTE_64F, ta, !ta, n, n, k, 1, a, a, c, c, *alpha, *beta};
  g.fill = uplo;
  run(g);
  return CUBLAS_STATUS_SUCCESS;
}

// ---- cuBLASLt -----------------------------------------------------------------------------------------------------

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) { return create_handle(handle, "cublasLtCreate"); }
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) { return destroy_handle(handle, "cublasLtDestroy"); }
const char* cublasLtGetStatusName(cublasStatus_t status) { return status_name(status); }
const char* cublasLtGetStatusString(cublasStatus_t status) { return status_string(status); }

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
  if (!desc) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescCreate", "desc is null");
  *desc = new cublasLtMatmulDescOpaque_t{computeType, scaleType};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t sizeInBytes) {
  const char* fn = "cublasLtMatmulDescSetAttribute";
  if (!desc) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "desc is null");
  int32_t i32 = 0;
  uint32_t u32 = 0;
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB:
      if (!read_attr(fn, i32, buf, sizeInBytes)) return CUBLAS_STATUS_INVALID_VALUE;
      if (!valid_op(static_cast<cublasOperation_t>(i32)))
        return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "operation %d", i32);
      (attr == CUBLASLT_MATMUL_DESC_TRANSA ? desc->transa : desc->transb) = static_cast<cublasOperation_t>(i32);
      return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      if (!read_attr(fn, u32, buf, sizeInBytes)) return CUBLAS_STATUS_INVALID_VALUE;
      if (u32 != CUBLASLT_EPILOGUE_DEFAULT && u32 != CUBLASLT_EPILOGUE_RELU && u32 != CUBLASLT_EPILOGUE_BIAS &&
          u32 != CUBLASLT_EPILOGUE_RELU_BIAS)
        return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "epilogue %u is not emulated", u32);
      desc->epilogue = static_cast<cublasLtEpilogue_t>(u32);
      return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      return read_attr(fn, desc->bias, buf, sizeInBytes) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
      return read_attr(fn, desc->bias_type, buf, sizeInBytes) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
  }
  return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "attribute %d is not emulated", attr);
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType_t type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (!layout) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatrixLayoutCreate", "layout is null");
  *layout = new cublasLtMatrixLayoutOpaque_t{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, size_t sizeInBytes) {
  const char* fn = "cublasLtMatrixLayoutSetAttribute";
  if (!layout) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "layout is null");
  int32_t i32 = 0;
  switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_ORDER:
      if (!read_attr(fn, i32, buf, sizeInBytes)) return CUBLAS_STATUS_INVALID_VALUE;
      if (i32 != CUBLASLT_ORDER_COL) return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "order %d is not emulated", i32);
      return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT:
      if (!read_attr(fn, i32, buf, sizeInBytes)) return CUBLAS_STATUS_INVALID_VALUE;
      if (i32 < 1) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "batch count %d", i32);
      layout->batch = i32;
      return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET:
      return read_attr(fn, layout->stride, buf, sizeInBytes) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
  }
  return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "attribute %d is not emulated", attr);
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  if (!pref) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceCreate", "pref is null");
  *pref = new cublasLtMatmulPreferenceOpaque_t;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t sizeInBytes) {
  const char* fn = "cublasLtMatmulPreferenceSetAttribute";
  if (!pref) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "pref is null");
  uint64_t max_workspace = 0;
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:  // any limit fits: the emulated algorithm needs no workspace
      return read_attr(fn, max_workspace, buf, sizeInBytes) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
      return read_attr(fn, pref->align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, sizeInBytes)
                 ? CUBLAS_STATUS_SUCCESS
                 : CUBLAS_STATUS_INVALID_VALUE;
  }
  return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "attribute %d is not emulated", attr);
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t pref, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int* returnAlgoCount) {
  const char* fn = "cublasLtMatmulAlgoGetHeuristic";
  if (!live(handle, fn)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!desc || !Adesc || !Bdesc || !Cdesc || !Ddesc || !pref || !heuristicResultsArray || !returnAlgoCount ||
      requestedAlgoCount < 1)
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "a null argument or requestedAlgoCount %d < 1", requestedAlgoCount);
  if (const cublasStatus_t st = check_problem(fn, *desc, {Adesc, Bdesc, Cdesc, Ddesc}); st != CUBLAS_STATUS_SUCCESS)
    return st;
  cublasLtMatmulHeuristicResult_t& r = heuristicResultsArray[0];
  r = {};
  r.algo.data[0] = kAlgoTag;
  std::copy(std::begin(pref->align), std::end(pref->align), r.algo.data + 1);
  r.workspaceSize = 0;
  r.state = CUBLAS_STATUS_SUCCESS;
  r.wavesCount = 1.f;
  *returnAlgoCount = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc,
                              const void* beta, const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo, void* workspace,
                              size_t workspaceSizeInBytes, cudaStream_t) {
  const char* fn = "cublasLtMatmul";
  if (!live(handle, fn)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!desc || !Adesc || !Bdesc || !Cdesc || !Ddesc || !alpha || !beta)
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "a descriptor, alpha or beta is null");
  if (const cublasStatus_t st = check_problem(fn, *desc, {Adesc, Bdesc, Cdesc, Ddesc}); st != CUBLAS_STATUS_SUCCESS)
    return st;
  if (algo && algo->data[0] != kAlgoTag)
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "algo was not filled in by cublasLtMatmulAlgoGetHeuristic");
  if (C == D && (Cdesc->ld != Ddesc->ld || Cdesc->stride != Ddesc->stride))
    return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "in place (C == D) with different C and D layouts");
  const bool bias = has_bias(desc->epilogue);
  if (bias && !desc->bias) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "bias epilogue without a bias pointer");
  const auto value = [&](const void* p) {
    return desc->scale == CUDA_R_64F ? *static_cast<const double*>(p) : *static_cast<const float*>(p);
  };
  Gemm g{desc->compute,
         desc->transa != CUBLAS_OP_N,
         desc->transb != CUBLAS_OP_N,
         static_cast<int64_t>(Ddesc->rows),
         static_cast<int64_t>(Ddesc->cols),
         static_cast<int64_t>(desc->transa != CUBLAS_OP_N ? Adesc->rows : Adesc->cols),
         Ddesc->batch,
         mat(*Adesc, A),
         mat(*Bdesc, B),
         mat(*Cdesc, C),
         mat(*Ddesc, D),
         value(alpha),
         value(beta)};
  if (bias) g.bias = desc->bias, g.bias_type = bias_type(*desc, Ddesc->type);
  g.relu = desc->epilogue == CUBLASLT_EPILOGUE_RELU || desc->epilogue == CUBLASLT_EPILOGUE_RELU_BIAS;
  if (g.m == 0 || g.n == 0) return CUBLAS_STATUS_SUCCESS;
  const bool reads_c = g.beta != 0;
  if (algo && (!aligned(fn, "A", A, static_cast<uint32_t>(algo->data[1])) ||
               !aligned(fn, "B", B, static_cast<uint32_t>(algo->data[2])) ||
               (reads_c && !aligned(fn, "C", C, static_cast<uint32_t>(algo->data[3]))) ||
               !aligned(fn, "D", D, static_cast<uint32_t>(algo->data[4]))))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!on_device(fn, "A", g.A, g.batch) || !on_device(fn, "B", g.B, g.batch) ||
      (reads_c && !on_device(fn, "C", g.C, g.batch)) || !on_device(fn, "D", g.D, g.batch) ||
      (bias && !on_device(fn, "bias", g.bias, static_cast<size_t>(g.m) * type_size(g.bias_type))) ||
      !on_device(fn, "workspace", workspace, workspaceSizeInBytes))
    return CUBLAS_STATUS_INVALID_VALUE;
  run(g);
  return CUBLAS_STATUS_SUCCESS;
}
