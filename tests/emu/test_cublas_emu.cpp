// cuemu's cuBLAS, cuBLASLt and CUB (kernels/emu/cublas_emu.cpp, kernels/emu/include/cub/): results against the
// documented semantics written out naively, the roundings of the compute types, and the error statuses.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr cublasStatus_t OK = CUBLAS_STATUS_SUCCESS;

// A device buffer (cudaMalloc) holding a copy of a host vector.
template <class T>
struct Dev {
  T* p = nullptr;
  size_t n;
  explicit Dev(const std::vector<T>& h) : n(h.size()) {
    REQUIRE(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess);
    REQUIRE(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() { cudaFree(p); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    REQUIRE(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
  }
};

// Deterministic values in [-2, 2) with full float mantissas, so that products and sums round.
std::vector<float> values(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  for (float& e : v) {
    seed = seed * 1664525u + 1013904223u;
    e = static_cast<float>(static_cast<int32_t>(seed >> 8) - (1 << 23)) / static_cast<float>(1 << 22);
  }
  return v;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = cuemu::float_to_bf16_bits(v[i]);
  return b;
}
std::vector<float> from_bf16(const std::vector<uint16_t>& b) {
  std::vector<float> v(b.size());
  for (size_t i = 0; i < b.size(); ++i) v[i] = cuemu::bf16_bits_to_float(b[i]);
  return v;
}

// A batched GEMM's shapes: leading dimensions above the rows and batch strides above the matrix spans, so that
// the gaps between them show any write out of place.
struct Shape {
  bool ta, tb;
  int64_t m, n, k, batch;
  int64_t lda, ldb, ldc, ldd, sa = 0, sb = 0, sc = 0, sd = 0;
  size_t size_a() const { return static_cast<size_t>(batch * sa); }
  size_t size_b() const { return static_cast<size_t>(batch * sb); }
  size_t size_c() const { return static_cast<size_t>(batch * sc); }
  size_t size_d() const { return static_cast<size_t>(batch * sd); }
};

Shape shape(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t batch) {
  Shape s{ta, tb, m, n, k, batch, (ta ? k : m) + 2, (tb ? n : k) + 3, m + 1, m + 4};
  s.sa = s.lda * (ta ? m : k) + 5;
  s.sb = s.ldb * (tb ? k : n) + 7;
  s.sc = s.ldc * n + 2;
  s.sd = s.ldd * n + 3;
  return s;
}

// The same with D's layout equal to C's, as an in-place call (C == D) needs.
Shape in_place(Shape s) {
  s.ldd = s.ldc, s.sd = s.sc;
  return s;
}

// The documented semantics written out: D(i, j) = alpha sum_l op(A)(i, l) op(B)(l, j) + beta C(i, j), column-major,
// the sum in double in l order rounded to float, the rest in float; C is not read when beta == 0. a(e) and b(e)
// read element e of A's and B's buffers; D holds what the call must leave outside the results.
template <class FA, class FB>
std::vector<float> reference(const Shape& s, FA a, FB b, float alpha, float beta, const std::vector<float>& C,
                             std::vector<float> D) {
  for (int64_t t = 0; t < s.batch; ++t)
    for (int64_t j = 0; j < s.n; ++j)
      for (int64_t i = 0; i < s.m; ++i) {
        double acc = 0;
        for (int64_t l = 0; l < s.k; ++l) {
          const double x = s.ta ? a(t * s.sa + l + i * s.lda) : a(t * s.sa + i + l * s.lda);
          const double y = s.tb ? b(t * s.sb + j + l * s.ldb) : b(t * s.sb + l + j * s.ldb);
          acc += x * y;
        }
        // volatile: each product rounded to float as written, whatever -ffp-contract this test is built with.
        const volatile float scaled = alpha * static_cast<float>(acc);
        const volatile float from_c = beta != 0 ? beta * C[t * s.sc + i + j * s.ldc] : 0.f;
        D[t * s.sd + i + j * s.ldd] = beta != 0 ? scaled + from_c : scaled;
      }
  return D;
}

struct LtHandle {
  cublasLtHandle_t h = nullptr;
  LtHandle() { REQUIRE(cublasLtCreate(&h) == OK); }
  ~LtHandle() { cublasLtDestroy(h); }
};

struct BlasHandle {
  cublasHandle_t h = nullptr;
  BlasHandle() { REQUIRE(cublasCreate(&h) == OK); }
  ~BlasHandle() { cublasDestroy(h); }
};

cublasLtMatrixLayout_t layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int64_t stride,
                              int32_t batch) {
  cublasLtMatrixLayout_t l = nullptr;
  REQUIRE(cublasLtMatrixLayoutCreate(&l, type, rows, cols, ld) == OK);
  REQUIRE(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch)) == OK);
  REQUIRE(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)) ==
          OK);
  return l;
}

// The descriptors of one cuBLASLt problem of shape s.
struct LtProblem {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a, b, c, d;
  LtProblem(const Shape& s, cublasComputeType_t compute, cudaDataType_t ab, cudaDataType_t cd) {
    REQUIRE(cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F) == OK);
    const cublasOperation_t opa = s.ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = s.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    REQUIRE(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)) == OK);
    REQUIRE(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)) == OK);
    const auto batch = static_cast<int32_t>(s.batch);
    a = layout(ab, s.ta ? s.k : s.m, s.ta ? s.m : s.k, s.lda, s.sa, batch);
    b = layout(ab, s.tb ? s.n : s.k, s.tb ? s.k : s.n, s.ldb, s.sb, batch);
    c = layout(cd, s.m, s.n, s.ldc, s.sc, batch);
    d = layout(cd, s.m, s.n, s.ldd, s.sd, batch);
  }
  LtProblem(const LtProblem&) = delete;
  LtProblem& operator=(const LtProblem&) = delete;
  ~LtProblem() {
    cublasLtMatmulDescDestroy(desc);
    for (auto l : {a, b, c, d}) cublasLtMatrixLayoutDestroy(l);
  }
  void epilogue(cublasLtEpilogue_t e, const void* bias) {
    REQUIRE(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof(e)) == OK);
    REQUIRE(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)) == OK);
  }
  // Asks the heuristic for the algorithm, promising `align` bytes of alignment for every operand.
  cublasStatus_t heuristic(cublasLtHandle_t h, cublasLtMatmulAlgo_t& algo, uint32_t align = 16) const {
    cublasLtMatmulPreference_t pref = nullptr;
    REQUIRE(cublasLtMatmulPreferenceCreate(&pref) == OK);
    const uint64_t ws = 1 << 20;
    REQUIRE(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)) ==
            OK);
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      REQUIRE(cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof(align)) == OK);
    cublasLtMatmulHeuristicResult_t r{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, desc, a, b, c, d, pref, 1, &r, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st == OK) {
      REQUIRE(found == 1);
      REQUIRE(r.state == OK);
      REQUIRE(r.workspaceSize == 0);
      algo = r.algo;
    }
    return st;
  }
  cublasStatus_t matmul(cublasLtHandle_t h, float alpha, const void* A, const void* B, float beta, const void* C,
                        void* D, uint32_t align = 16) const {
    cublasLtMatmulAlgo_t algo{};
    REQUIRE(heuristic(h, algo, align) == OK);
    return cublasLtMatmul(h, desc, &alpha, A, a, B, b, &beta, C, c, D, d, &algo, nullptr, 0, nullptr);
  }
};

float pow2(int e) { return std::ldexp(1.f, e); }

}  // namespace

TEST_CASE("cublasLtMatmul: every transpose combination of strided batches matches the column-major reference",
          "[cuemu][cublasLt]") {
  LtHandle lt;
  for (const bool ta : {false, true})
    for (const bool tb : {false, true}) {
      CAPTURE(ta, tb);
      const Shape s = shape(ta, tb, 5, 3, 4, 3);
      const auto a = values(s.size_a(), 1), b = values(s.size_b(), 2), c = values(s.size_c(), 3);
      const std::vector<float> d0(s.size_d(), 1234.5f);
      Dev<float> A(a), B(b), C(c), D(d0);  // C != D, each with its own ld
      LtProblem p(s, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F);
      REQUIRE(p.matmul(lt.h, 1.5f, A.p, B.p, -0.75f, C.p, D.p) == OK);
      const auto ref = reference(s, [&](int64_t e) { return a[e]; }, [&](int64_t e) { return b[e]; }, 1.5f, -0.75f,
                                 c, d0);
      REQUIRE(D.get() == ref);
      REQUIRE(C.get() == c);
    }
}

TEST_CASE("cublasLtMatmul: bf16 inputs with fp32 output, and in place (C == D) as the CUDA backend calls it",
          "[cuemu][cublasLt]") {
  LtHandle lt;
  const Shape s = in_place(shape(true, false, 6, 5, 7, 1));
  const auto a = to_bf16(values(s.size_a(), 4)), b = to_bf16(values(s.size_b(), 5));
  const auto c = values(s.size_c(), 6);
  Dev<uint16_t> A(a), B(b);
  Dev<float> C(c);
  LtProblem p(s, CUBLAS_COMPUTE_32F, CUDA_R_16BF, CUDA_R_32F);
  REQUIRE(p.matmul(lt.h, 1.f, A.p, B.p, 1.f, C.p, C.p) == OK);
  const auto bf = [](const std::vector<uint16_t>& v) {
    return [&v](int64_t e) { return cuemu::bf16_bits_to_float(v[e]); };
  };
  REQUIRE(C.get() == reference(s, bf(a), bf(b), 1.f, 1.f, c, c));
}

TEST_CASE("cublasLtMatmul: bf16 output is rounded once, to nearest even", "[cuemu][cublasLt]") {
  LtHandle lt;
  // D (2 x 1) = A (2 x 2) B (2 x 1) with B = (1, 1): 1 + 2^-8 and 1 + 3 2^-8 lie halfway between bf16 neighbours.
  Shape s = shape(false, false, 2, 1, 2, 1);
  s.lda = 2, s.ldb = 2, s.ldc = s.ldd = 2, s.sa = 4, s.sb = 2, s.sc = s.sd = 2;
  const std::vector<float> a{1.f, 1.f + pow2(-7), pow2(-8), pow2(-8)};
  Dev<uint16_t> A(to_bf16(a)), B(to_bf16({1.f, 1.f})), D(std::vector<uint16_t>(2, 0));
  LtProblem p(s, CUBLAS_COMPUTE_32F, CUDA_R_16BF, CUDA_R_16BF);
  REQUIRE(p.matmul(lt.h, 1.f, A.p, B.p, 0.f, D.p, D.p) == OK);
  REQUIRE(from_bf16(D.get()) == std::vector<float>{1.f, 1.f + pow2(-6)});
}

TEST_CASE("CUBLAS_COMPUTE_32F_FAST_TF32 rounds fp32 inputs to 10 mantissa bits, to nearest, ties away from zero",
          "[cuemu][cublasLt][cublas]") {
  LtHandle lt;
  BlasHandle blas;
  // D = A B with k = 1 and B = 1: D is A as the multiplier saw it.
  const std::vector<float> a{1.f + pow2(-11), -(1.f + pow2(-11)), 1.f + pow2(-11) + pow2(-20), 1.f + pow2(-12),
                             2.f - pow2(-23), 3.f};
  const std::vector<float> tf32{1.f + pow2(-10), -(1.f + pow2(-10)), 1.f + pow2(-10), 1.f, 2.f, 3.f};
  Shape s = shape(false, false, 6, 1, 1, 1);
  s.lda = s.ldc = s.ldd = 6, s.ldb = 1, s.sa = s.sc = s.sd = 6, s.sb = 1;
  Dev<float> A(a), one(std::vector<float>{1.f}), D(std::vector<float>(6, 0.f));
  {
    LtProblem p(s, CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F, CUDA_R_32F);
    REQUIRE(p.matmul(lt.h, 1.f, A.p, one.p, 0.f, D.p, D.p) == OK);
    REQUIRE(D.get() == tf32);
    // B is rounded too: D (1 x 1) = 1 * (1 + 2^-11).
    LtProblem p1(in_place(shape(false, false, 1, 1, 1, 1)), CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F, CUDA_R_32F);
    REQUIRE(p1.matmul(lt.h, 1.f, one.p, A.p, 0.f, D.p, D.p) == OK);
    REQUIRE(D.get()[0] == 1.f + pow2(-10));
  }
  {
    LtProblem p(s, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F);  // plain fp32: no rounding
    REQUIRE(p.matmul(lt.h, 1.f, A.p, one.p, 0.f, D.p, D.p) == OK);
    REQUIRE(D.get() == a);
  }
  const float alpha = 1.f, beta = 0.f;
  REQUIRE(cublasGemmEx(blas.h, CUBLAS_OP_N, CUBLAS_OP_N, 6, 1, 1, &alpha, A.p, CUDA_R_32F, 6, one.p, CUDA_R_32F, 1,
                       &beta, D.p, CUDA_R_32F, 6, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT) == OK);
  REQUIRE(D.get() == tf32);
}

TEST_CASE("CUBLAS_COMPUTE_32F_FAST_16BF rounds fp32 inputs to bf16, to nearest even", "[cuemu][cublas]") {
  BlasHandle blas;
  Dev<float> A(std::vector<float>{1.f + pow2(-8), 1.f + 3 * pow2(-8)}), one(std::vector<float>{1.f}),
      D(std::vector<float>(2, 0.f));
  const float alpha = 1.f, beta = 0.f;
  REQUIRE(cublasGemmEx(blas.h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 1, 1, &alpha, A.p, CUDA_R_32F, 2, one.p, CUDA_R_32F, 1,
                       &beta, D.p, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT) == OK);
  REQUIRE(D.get() == std::vector<float>{1.f, 1.f + pow2(-6)});
}

TEST_CASE("cublasLtMatmul epilogues: BIAS adds bias[row], RELU clamps at 0, RELU_BIAS adds then clamps",
          "[cuemu][cublasLt]") {
  LtHandle lt;
  // D (3 x 2) = A (3 x 1) B (1 x 2) = (1, -2, 3)^T (1, -1), bias (10, 1, -4).
  Shape s = shape(false, false, 3, 2, 1, 1);
  s.lda = s.ldc = s.ldd = 3, s.ldb = 1, s.sa = 3, s.sb = 2, s.sc = s.sd = 6;
  Dev<float> A(std::vector<float>{1, -2, 3}), B(std::vector<float>{1, -1}), bias(std::vector<float>{10, 1, -4}),
      D(std::vector<float>(6, 0.f));
  const auto run = [&](cublasLtEpilogue_t e) {
    LtProblem p(s, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F);
    p.epilogue(e, bias.p);
    REQUIRE(p.matmul(lt.h, 1.f, A.p, B.p, 0.f, D.p, D.p) == OK);
    return D.get();
  };
  REQUIRE(run(CUBLASLT_EPILOGUE_DEFAULT) == std::vector<float>{1, -2, 3, -1, 2, -3});
  REQUIRE(run(CUBLASLT_EPILOGUE_BIAS) == std::vector<float>{11, -1, -1, 9, 3, -7});
  REQUIRE(run(CUBLASLT_EPILOGUE_RELU) == std::vector<float>{1, 0, 3, 0, 2, 0});
  REQUIRE(run(CUBLASLT_EPILOGUE_RELU_BIAS) == std::vector<float>{11, 0, 0, 9, 3, 0});

  LtProblem p(s, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F);
  cublasLtEpilogue_t gelu = CUBLASLT_EPILOGUE_GELU;
  REQUIRE(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &gelu, sizeof(gelu)) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
  p.epilogue(CUBLASLT_EPILOGUE_BIAS, nullptr);
  REQUIRE(p.matmul(lt.h, 1.f, A.p, B.p, 0.f, D.p, D.p) == CUBLAS_STATUS_INVALID_VALUE);
}

TEST_CASE("cublasGemmStridedBatchedEx: every transpose combination, fp32 and bf16, matches the reference",
          "[cuemu][cublas]") {
  BlasHandle blas;
  for (const bool ta : {false, true})
    for (const bool tb : {false, true}) {
      CAPTURE(ta, tb);
      const Shape s = in_place(shape(ta, tb, 4, 5, 3, 3));  // C is the output
      const auto a = values(s.size_a(), 7), b = values(s.size_b(), 8), c = values(s.size_c(), 9);
      const float alpha = -0.5f, beta = 2.f;
      const auto call = [&](const void* A, const void* B, void* C, cudaDataType_t t) {
        return cublasGemmStridedBatchedEx(blas.h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                          static_cast<int>(s.m), static_cast<int>(s.n), static_cast<int>(s.k), &alpha,
                                          A, t, static_cast<int>(s.lda), s.sa, B, t, static_cast<int>(s.ldb), s.sb,
                                          &beta, C, t, static_cast<int>(s.ldc), s.sc, static_cast<int>(s.batch),
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      };
      {
        Dev<float> A(a), B(b), C(c);
        REQUIRE(call(A.p, B.p, C.p, CUDA_R_32F) == OK);
        REQUIRE(C.get() == reference(s, [&](int64_t e) { return a[e]; }, [&](int64_t e) { return b[e]; }, alpha,
                                     beta, c, c));
      }
      {
        const auto ab = to_bf16(a), bb = to_bf16(b), cb = to_bf16(c);
        Dev<uint16_t> A(ab), B(bb), C(cb);
        REQUIRE(call(A.p, B.p, C.p, CUDA_R_16BF) == OK);
        const auto cf = from_bf16(cb);
        const auto ref = reference(s, [&](int64_t e) { return cuemu::bf16_bits_to_float(ab[e]); },
                                   [&](int64_t e) { return cuemu::bf16_bits_to_float(bb[e]); }, alpha, beta, cf, cf);
        REQUIRE(C.get() == to_bf16(ref));
      }
    }
}

TEST_CASE("cublasSgemm and cublasGemmEx are column-major", "[cuemu][cublas]") {
  BlasHandle blas;
  // A = [1 2; 3 4], B = [5 6; 7 8] stored by columns.
  Dev<float> A(std::vector<float>{1, 3, 2, 4}), B(std::vector<float>{5, 7, 6, 8}), C(std::vector<float>(4, 0.f));
  const float one = 1.f, zero = 0.f;
  REQUIRE(cublasSgemm(blas.h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, A.p, 2, B.p, 2, &zero, C.p, 2) == OK);
  REQUIRE(C.get() == std::vector<float>{19, 43, 22, 50});  // A B
  REQUIRE(cublasSgemm(blas.h, CUBLAS_OP_T, CUBLAS_OP_N, 2, 2, 2, &one, A.p, 2, B.p, 2, &zero, C.p, 2) == OK);
  REQUIRE(C.get() == std::vector<float>{26, 38, 30, 44});  // A^T B
  REQUIRE(cublasGemmEx(blas.h, CUBLAS_OP_N, CUBLAS_OP_T, 2, 2, 2, &one, A.p, CUDA_R_32F, 2, B.p, CUDA_R_32F, 2, &zero,
                       C.p, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == OK);
  REQUIRE(C.get() == std::vector<float>{17, 39, 23, 53});  // A B^T
}

TEST_CASE("beta == 0 does not read C (NaN there does not propagate)", "[cuemu][cublas][cublasLt]") {
  const float nan = std::numeric_limits<float>::quiet_NaN(), one = 1.f, zero = 0.f;
  Dev<float> A(std::vector<float>{2}), B(std::vector<float>{3}), C(std::vector<float>{nan});
  BlasHandle blas;
  REQUIRE(cublasSgemm(blas.h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, A.p, 1, B.p, 1, &zero, C.p, 1) == OK);
  REQUIRE(C.get()[0] == 6.f);
  LtHandle lt;
  LtProblem p(shape(false, false, 1, 1, 1, 1), CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F);
  Dev<float> nan_c(std::vector<float>{nan}), D(std::vector<float>{0.f});
  REQUIRE(p.matmul(lt.h, 1.f, A.p, B.p, 0.f, nan_c.p, D.p) == OK);
  REQUIRE(D.get()[0] == 6.f);
}

TEST_CASE("cublasDsyrk updates only the requested triangle and leaves the other untouched", "[cuemu][cublas]") {
  BlasHandle blas;
  const int n = 4, k = 3, ldc = n + 1;
  const double alpha = 0.5, beta = 2, sentinel = -999;
  for (const auto uplo : {CUBLAS_FILL_MODE_LOWER, CUBLAS_FILL_MODE_UPPER})
    for (const auto trans : {CUBLAS_OP_N, CUBLAS_OP_T}) {
      CAPTURE(uplo, trans);
      const bool t = trans == CUBLAS_OP_T;
      const int lda = (t ? k : n) + 2;
      std::vector<double> a(static_cast<size_t>(lda * (t ? n : k))), c(static_cast<size_t>(ldc * n), sentinel);
      for (size_t i = 0; i < a.size(); ++i) a[i] = values(a.size(), 10)[i];
      std::vector<double> want = c;
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < n; ++i) {
          if (uplo == CUBLAS_FILL_MODE_LOWER ? i < j : i > j) continue;
          c[i + j * ldc] = i - j * 0.25;
          double acc = 0;  // op(A)(i, l) op(A)(j, l): float values, so exact products, fused or not
          for (int l = 0; l < k; ++l)
            acc += (t ? a[l + i * lda] : a[i + l * lda]) * (t ? a[l + j * lda] : a[j + l * lda]);
          want[i + j * ldc] = alpha * acc + beta * c[i + j * ldc];
        }
      Dev<double> A(a), C(c);
      REQUIRE(cublasDsyrk(blas.h, uplo, trans, n, k, &alpha, A.p, lda, &beta, C.p, ldc) == OK);
      REQUIRE(C.get() == want);
    }
}

TEST_CASE("cub::DeviceRadixSort::SortPairs: size query, stable order, signed keys, bit ranges", "[cuemu][cub]") {
  // Sorts keys (bits [begin, end)) with values 0, 1, ... and returns the sorted keys and values.
  const auto sort = [](const std::vector<int32_t>& keys, int begin, int end) {
    const int n = static_cast<int>(keys.size());
    size_t bytes = 0;
    REQUIRE(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int32_t*>(nullptr),
                                            static_cast<int32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                            static_cast<int32_t*>(nullptr), n, begin, end) == cudaSuccess);
    REQUIRE(bytes > 0);
    std::vector<int32_t> pos(keys.size());
    for (int i = 0; i < n; ++i) pos[i] = i;
    Dev<int32_t> kin(keys), kout(std::vector<int32_t>(keys.size())), vin(pos), vout(std::vector<int32_t>(keys.size()));
    Dev<char> temp{std::vector<char>(bytes)};
    REQUIRE(cub::DeviceRadixSort::SortPairs(temp.p, bytes, kin.p, kout.p, vin.p, vout.p, n, begin, end) ==
            cudaSuccess);
    size_t small = bytes - 1;
    REQUIRE(cub::DeviceRadixSort::SortPairs(temp.p, small, kin.p, kout.p, vin.p, vout.p, n, begin, end) ==
            cudaErrorInvalidValue);
    return std::make_pair(kout.get(), vout.get());
  };
  using V = std::vector<int32_t>;
  REQUIRE(sort({3, 1, 3, 2, 1, 3}, 0, 32) == std::make_pair(V{1, 1, 2, 3, 3, 3}, V{1, 4, 3, 0, 2, 5}));
  REQUIRE(sort({5, -1, 0, INT_MIN, INT_MAX, -7}, 0, 32) ==
          std::make_pair(V{INT_MIN, -7, -1, 0, 5, INT_MAX}, V{3, 5, 1, 2, 0, 4}));
  // Bits [4, 8) only: digits 1, 2, 1, 0, 2, 1, ties kept in input order.
  REQUIRE(sort({0x15, 0x21, 0x13, 0x0f, 0x2f, 0x10}, 4, 8) ==
          std::make_pair(V{0x0f, 0x15, 0x13, 0x10, 0x21, 0x2f}, V{3, 0, 2, 5, 1, 4}));
  // The sign flip is on bit 31, outside [0, 4): -1 has digit 15 there.
  REQUIRE(sort({-1, 2}, 0, 4) == std::make_pair(V{2, -1}, V{1, 0}));
}

TEST_CASE("cub::DeviceRadixSort::SortPairs rejects host memory", "[cuemu][cub]") {
  int32_t host_keys[2] = {2, 1};
  Dev<int32_t> kout(std::vector<int32_t>(2)), vin(std::vector<int32_t>{0, 1}), vout(std::vector<int32_t>(2));
  size_t bytes = 0;
  REQUIRE(cub::DeviceRadixSort::SortPairs(nullptr, bytes, host_keys, kout.p, vin.p, vout.p, 2) == cudaSuccess);
  Dev<char> temp{std::vector<char>(bytes)};
  REQUIRE(cub::DeviceRadixSort::SortPairs(temp.p, bytes, host_keys, kout.p, vin.p, vout.p, 2) ==
          cudaErrorInvalidDevicePointer);
}

// ---- error statuses -------------------------------------------------------------------------------------------------

static_assert(CUBLAS_STATUS_SUCCESS == 0 && CUBLAS_STATUS_NOT_INITIALIZED == 1 && CUBLAS_STATUS_ALLOC_FAILED == 3 &&
              CUBLAS_STATUS_INVALID_VALUE == 7 && CUBLAS_STATUS_ARCH_MISMATCH == 8 &&
              CUBLAS_STATUS_MAPPING_ERROR == 11 && CUBLAS_STATUS_EXECUTION_FAILED == 13 &&
              CUBLAS_STATUS_INTERNAL_ERROR == 14 && CUBLAS_STATUS_NOT_SUPPORTED == 15);

TEST_CASE("status names and strings are cuBLAS's", "[cuemu][cublas][errors]") {
  REQUIRE(std::string(cublasGetStatusName(CUBLAS_STATUS_INVALID_VALUE)) == "CUBLAS_STATUS_INVALID_VALUE");
  REQUIRE(std::string(cublasLtGetStatusName(CUBLAS_STATUS_NOT_SUPPORTED)) == "CUBLAS_STATUS_NOT_SUPPORTED");
  REQUIRE(std::string(cublasGetStatusString(CUBLAS_STATUS_SUCCESS)) == "success");
  REQUIRE(std::string(cublasLtGetStatusString(CUBLAS_STATUS_NOT_INITIALIZED)) == "the library was not initialized");
}

TEST_CASE("a null or destroyed handle is CUBLAS_STATUS_NOT_INITIALIZED", "[cuemu][cublas][cublasLt][errors]") {
  const float f = 1.f;
  const double d = 1.0;
  REQUIRE(cublasCreate(nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  cublasHandle_t h = nullptr;
  REQUIRE(cublasCreate(&h) == OK);
  REQUIRE(cublasSetStream(h, nullptr) == OK);
  REQUIRE(cublasDestroy(h) == OK);
  for (cublasHandle_t bad : {static_cast<cublasHandle_t>(nullptr), h}) {
    REQUIRE(cublasDestroy(bad) == CUBLAS_STATUS_NOT_INITIALIZED);
    REQUIRE(cublasSetStream(bad, nullptr) == CUBLAS_STATUS_NOT_INITIALIZED);
    REQUIRE(cublasSgemm(bad, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &f, nullptr, 1, nullptr, 1, &f, nullptr, 1) ==
            CUBLAS_STATUS_NOT_INITIALIZED);
    REQUIRE(cublasGemmEx(bad, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &f, nullptr, CUDA_R_32F, 1, nullptr, CUDA_R_32F, 1, &f,
                         nullptr, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) ==
            CUBLAS_STATUS_NOT_INITIALIZED);
    REQUIRE(cublasDsyrk(bad, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, 1, 1, &d, nullptr, 1, &d, nullptr, 1) ==
            CUBLAS_STATUS_NOT_INITIALIZED);
  }
  cublasLtHandle_t lt = nullptr;
  REQUIRE(cublasLtCreate(&lt) == OK);
  LtProblem p(shape(false, false, 1, 1, 1, 1), CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F);
  cublasLtMatmulAlgo_t algo{};
  REQUIRE(p.heuristic(lt, algo) == OK);
  REQUIRE(cublasLtDestroy(lt) == OK);
  for (cublasLtHandle_t bad : {static_cast<cublasLtHandle_t>(nullptr), lt}) {
    REQUIRE(p.heuristic(bad, algo) == CUBLAS_STATUS_NOT_INITIALIZED);
    REQUIRE(cublasLtMatmul(bad, p.desc, &f, nullptr, p.a, nullptr, p.b, &f, nullptr, p.c, nullptr, p.d, &algo, nullptr,
                           0, nullptr) == CUBLAS_STATUS_NOT_INITIALIZED);
    REQUIRE(cublasLtDestroy(bad) == CUBLAS_STATUS_NOT_INITIALIZED);
  }
}

TEST_CASE("cuBLASLt: ld below the rows, inconsistent shapes or batches are INVALID_VALUE, unsupported types "
          "NOT_SUPPORTED",
          "[cuemu][cublasLt][errors]") {
  LtHandle lt;
  cublasLtMatmulAlgo_t algo{};
  const float one = 1.f;
  const Shape s = shape(false, false, 4, 3, 2, 1);
  Dev<float> buf(std::vector<float>(64, 0.f));
  {
    Shape bad = s;
    bad.lda = 3;  // A is 4 x 2
    LtProblem p(bad, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F);
    REQUIRE(p.heuristic(lt.h, algo) == CUBLAS_STATUS_INVALID_VALUE);
    REQUIRE(cublasLtMatmul(lt.h, p.desc, &one, buf.p, p.a, buf.p, p.b, &one, buf.p, p.c, buf.p, p.d, nullptr, nullptr,
                           0, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  }
  {
    LtProblem p(s, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F);
    REQUIRE(p.heuristic(lt.h, algo) == OK);
    cublasLtMatrixLayoutDestroy(p.b);
    p.b = layout(CUDA_R_32F, 3, 3, 3, 0, 1);  // op(A) is 4 x 2, B 3 x 3
    REQUIRE(p.heuristic(lt.h, algo) == CUBLAS_STATUS_INVALID_VALUE);
    REQUIRE(cublasLtMatmul(lt.h, p.desc, &one, buf.p, p.a, buf.p, p.b, &one, buf.p, p.c, buf.p, p.d, nullptr, nullptr,
                           0, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  }
  {
    LtProblem p(s, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F);
    const int32_t two = 2;
    REQUIRE(cublasLtMatrixLayoutSetAttribute(p.a, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &two, sizeof(two)) == OK);
    REQUIRE(p.heuristic(lt.h, algo) == CUBLAS_STATUS_INVALID_VALUE);
  }
  {
    LtProblem p(s, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF);  // fp32 A/B need fp32 C/D
    REQUIRE(p.heuristic(lt.h, algo) == CUBLAS_STATUS_NOT_SUPPORTED);
    LtProblem q(s, CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_16BF, CUDA_R_32F);  // TF32 is for fp32 inputs
    REQUIRE(q.heuristic(lt.h, algo) == CUBLAS_STATUS_NOT_SUPPORTED);
  }
  {
    LtProblem p(s, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F);
    const int32_t row = CUBLASLT_ORDER_ROW;
    const int64_t stride = 0;
    REQUIRE(cublasLtMatrixLayoutSetAttribute(p.a, CUBLASLT_MATRIX_LAYOUT_ORDER, &row, sizeof(row)) ==
            CUBLAS_STATUS_NOT_SUPPORTED);
    REQUIRE(cublasLtMatrixLayoutSetAttribute(p.a, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &stride, sizeof(stride)) ==
            CUBLAS_STATUS_INVALID_VALUE);  // int32_t expected
    REQUIRE(cublasLtMatrixLayoutSetAttribute(p.a, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, nullptr, 8) ==
            CUBLAS_STATUS_INVALID_VALUE);
    const cublasLtMatmulAlgo_t made_up{};  // not from the heuristic
    REQUIRE(cublasLtMatmul(lt.h, p.desc, &one, buf.p, p.a, buf.p, p.b, &one, buf.p, p.c, buf.p, p.d, &made_up, nullptr,
                           0, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  }
}

TEST_CASE("cublasLtMatmul: a pointer less aligned than the preference promised is INVALID_VALUE",
          "[cuemu][cublasLt][errors]") {
  LtHandle lt;
  LtProblem p(in_place(shape(false, false, 1, 1, 1, 1)), CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F);
  Dev<float> buf(std::vector<float>(8, 1.f)), D(std::vector<float>(1, 0.f));
  const float* a4 = buf.p + 1;  // 4-byte aligned, not 16
  REQUIRE(p.matmul(lt.h, 1.f, a4, buf.p, 0.f, D.p, D.p, 16) == CUBLAS_STATUS_INVALID_VALUE);
  REQUIRE(p.matmul(lt.h, 1.f, buf.p, buf.p, 0.f, D.p, D.p, 16) == OK);
  REQUIRE(p.matmul(lt.h, 1.f, a4, buf.p, 0.f, D.p, D.p, 4) == OK);
  const float one = 1.f, zero = 0.f;  // no algorithm given: nothing was promised
  REQUIRE(cublasLtMatmul(lt.h, p.desc, &one, a4, p.a, buf.p, p.b, &zero, D.p, p.c, D.p, p.d, nullptr, nullptr, 0,
                         nullptr) == OK);
}

TEST_CASE("matrices outside device memory (cudaMalloc) are CUBLAS_STATUS_INVALID_VALUE",
          "[cuemu][cublas][cublasLt][errors]") {
  BlasHandle blas;
  LtHandle lt;
  float host[4] = {1, 2, 3, 4};
  Dev<float> A(std::vector<float>{1, 2, 3, 4}), short3(std::vector<float>{1, 2, 3}), C(std::vector<float>(4, 0.f));
  const float one = 1.f;
  const auto sgemm = [&](const float* a, float* c) {
    return cublasSgemm(blas.h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, a, 2, A.p, 2, &one, c, 2);
  };
  REQUIRE(sgemm(A.p, C.p) == OK);
  REQUIRE(sgemm(host, C.p) == CUBLAS_STATUS_INVALID_VALUE);
  REQUIRE(sgemm(A.p, host) == CUBLAS_STATUS_INVALID_VALUE);
  REQUIRE(sgemm(short3.p, C.p) == CUBLAS_STATUS_INVALID_VALUE);  // the 2 x 2 A runs past its allocation
  // The second matrix of a strided batch runs past the allocation.
  REQUIRE(cublasGemmStridedBatchedEx(blas.h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, A.p, CUDA_R_32F, 2, 4, A.p,
                                     CUDA_R_32F, 2, 0, &one, C.p, CUDA_R_32F, 2, 0, 2, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE);
  const double dd = 1.0;
  double hd[4] = {};
  Dev<double> Ad(std::vector<double>(4, 1.0));
  REQUIRE(cublasDsyrk(blas.h, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, 2, 2, &dd, Ad.p, 2, &dd, hd, 2) ==
          CUBLAS_STATUS_INVALID_VALUE);

  Shape s = shape(false, false, 2, 2, 2, 1);
  s.lda = s.ldb = s.ldc = s.ldd = 2, s.sa = s.sb = s.sc = s.sd = 4;
  LtProblem p(s, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F);
  REQUIRE(p.matmul(lt.h, 1.f, A.p, A.p, 1.f, C.p, C.p) == OK);
  REQUIRE(p.matmul(lt.h, 1.f, A.p, host, 1.f, C.p, C.p) == CUBLAS_STATUS_INVALID_VALUE);
  REQUIRE(p.matmul(lt.h, 1.f, A.p, A.p, 1.f, C.p, host) == CUBLAS_STATUS_INVALID_VALUE);
  REQUIRE(p.matmul(lt.h, 1.f, A.p, A.p, 1.f, host, C.p) == CUBLAS_STATUS_INVALID_VALUE);  // beta != 0 reads C
}

TEST_CASE("cuBLAS GEMM arguments: negative sizes, ld below the rows, null scalars, unsupported types",
          "[cuemu][cublas][errors]") {
  BlasHandle blas;
  Dev<float> A(std::vector<float>(16, 1.f)), C(std::vector<float>(16, 0.f));
  const float one = 1.f;
  const auto gemm = [&](cublasOperation_t ta, int m, int lda, int ldc, const float* alpha, cudaDataType_t ct,
                        int batch = 1) {
    return cublasGemmStridedBatchedEx(blas.h, ta, CUBLAS_OP_N, m, 2, 2, alpha, A.p, CUDA_R_32F, lda, 0, A.p,
                                      CUDA_R_32F, 2, 0, &one, C.p, ct, ldc, 0, batch, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT);
  };
  REQUIRE(gemm(CUBLAS_OP_N, 2, 2, 2, &one, CUDA_R_32F) == OK);
  REQUIRE(gemm(CUBLAS_OP_N, 3, 2, 3, &one, CUDA_R_32F) == CUBLAS_STATUS_INVALID_VALUE);  // lda 2 < m 3
  REQUIRE(gemm(CUBLAS_OP_T, 3, 2, 3, &one, CUDA_R_32F) == OK);                          // op T: lda >= k 2
  REQUIRE(gemm(CUBLAS_OP_N, 2, 2, 1, &one, CUDA_R_32F) == CUBLAS_STATUS_INVALID_VALUE);  // ldc 1 < m 2
  REQUIRE(gemm(CUBLAS_OP_N, -1, 2, 2, &one, CUDA_R_32F) == CUBLAS_STATUS_INVALID_VALUE);
  REQUIRE(gemm(CUBLAS_OP_N, 2, 2, 2, &one, CUDA_R_32F, -1) == CUBLAS_STATUS_INVALID_VALUE);
  REQUIRE(gemm(static_cast<cublasOperation_t>(7), 2, 2, 2, &one, CUDA_R_32F) == CUBLAS_STATUS_INVALID_VALUE);
  REQUIRE(gemm(CUBLAS_OP_N, 2, 2, 2, nullptr, CUDA_R_32F) == CUBLAS_STATUS_INVALID_VALUE);
  REQUIRE(gemm(CUBLAS_OP_N, 2, 2, 2, &one, CUDA_R_16BF) == CUBLAS_STATUS_NOT_SUPPORTED);  // fp32 A/B, bf16 C
  REQUIRE(gemm(CUBLAS_OP_N, 2, 2, 2, &one, CUDA_R_32F, 0) == OK);                          // nothing to do
  REQUIRE(cublasGemmEx(blas.h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, A.p, CUDA_R_32F, 2, A.p, CUDA_R_32F, 2, &one,
                       C.p, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, static_cast<cublasGemmAlgo_t>(5)) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
  const double d = 1.0;
  Dev<double> Ad(std::vector<double>(16, 1.0)), Cd(std::vector<double>(16, 0.0));
  REQUIRE(cublasDsyrk(blas.h, static_cast<cublasFillMode_t>(2), CUBLAS_OP_N, 2, 2, &d, Ad.p, 2, &d, Cd.p, 2) ==
          CUBLAS_STATUS_INVALID_VALUE);
  REQUIRE(cublasDsyrk(blas.h, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, 3, 2, &d, Ad.p, 2, &d, Cd.p, 3) ==
          CUBLAS_STATUS_INVALID_VALUE);  // lda 2 < n 3
  REQUIRE(cublasDsyrk(blas.h, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_T, 3, 2, &d, Ad.p, 2, &d, Cd.p, 3) == OK);
}
