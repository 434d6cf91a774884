// CPU reference: causal grouped-query attention, flash style.
//
// Forward, per (batch, query head) and per block of kBlock query rows: S = Q K^T (Eigen GEMM), the causal
// row softmax (max-subtracted, lse saved per row), O = P V / rowsum. Keys past the diagonal are never
// exponentiated. Backward, per (batch, kv head) so that the gradients of a shared kv head are written by one
// task only: P is recomputed from lse block by block, then
//   dV += P^T dO ;  dP = dO V^T ;  dS = P ⊙ (dP - rowsum(dO ⊙ O)) * scale ;  dQ += dS K ;  dK += dS^T Q.
// Scratch: thread-local buffers of kBlock x T (one for the forward, two for the backward).
// The loops over tasks carry `omp parallel for`; they run in parallel when the build enables OpenMP.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "src/ops/aligned_vector.h"
#include "src/ops/cpu_ops.h"

namespace ptool::cpu {

namespace {

constexpr int64_t kBlock = 64;  // query rows per block

template <class T> using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T> using CStrided = Eigen::Map<const RowMajor<T>, 0, Eigen::OuterStride<>>;
template <class T> using MStrided = Eigen::Map<RowMajor<T>, 0, Eigen::OuterStride<>>;
template <class T> using MDense = Eigen::Map<RowMajor<T>>;

void check_attention_args(const char* op, int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd) {
  if (B < 0 || Tn < 0 || hd <= 0 || H <= 0 || Hkv <= 0 || H % Hkv != 0) {
    throw std::invalid_argument(std::string(op) + ": bad shape B=" + std::to_string(B) + " T=" + std::to_string(Tn) +
                                " H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) + " hd=" +
                                std::to_string(hd) + " (need H % Hkv == 0)");
  }
}

template <class T> T* scratch(AlignedVector<T>& buf, int64_t n) {
  if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

}  // namespace

template <class T> void attention_forward(const T* q, const T* k, const T* v, int64_t B, int64_t Tn, int64_t H,
                                          int64_t Hkv, int64_t hd, T* out, T* lse) {
  check_attention_args("attention_forward", B, Tn, H, Hkv, hd);
  const int64_t group = H / Hkv;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  const Eigen::OuterStride<> qstride(H * hd), kstride(Hkv * hd);
  const int64_t tasks = B * H;

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    thread_local AlignedVector<T> sbuf;
    T* s = scratch(sbuf, kBlock * Tn);
    T inv_sum[kBlock];
    const int64_t b = task / H, h = task % H, kvh = h / group;
    CStrided<T> K(k + (b * Tn * Hkv + kvh) * hd, Tn, hd, kstride);
    CStrided<T> V(v + (b * Tn * Hkv + kvh) * hd, Tn, hd, kstride);
    T* lse_bh = lse ? lse + (b * H + h) * Tn : nullptr;
    for (int64_t t0 = 0; t0 < Tn; t0 += kBlock) {
      const int64_t bq = std::min(kBlock, Tn - t0), kend = t0 + bq;
      CStrided<T> Q(q + ((b * Tn + t0) * H + h) * hd, bq, hd, qstride);
      MDense<T> S(s, bq, kend);
      S.noalias() = Q * K.topRows(kend).transpose();
      for (int64_t i = 0; i < bq; ++i) {
        const int64_t n = t0 + i + 1;  // keys 0 .. t0 + i are visible
        auto row = S.row(i).head(n).array();
        row *= scale;
        const T m = row.maxCoeff();
        row = (row - m).exp();
        const T sum = row.sum();
        S.row(i).tail(kend - n).setZero();
        if (lse_bh) lse_bh[t0 + i] = m + std::log(sum);
        inv_sum[i] = T(1) / sum;
      }
      MStrided<T> O(out + ((b * Tn + t0) * H + h) * hd, bq, hd, qstride);
      O.noalias() = S * V.topRows(kend);
      for (int64_t i = 0; i < bq; ++i) O.row(i) *= inv_sum[i];
    }
  }
}

template <class T> void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out,
                                           const T* lse, int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd,
                                           T* dq_acc, T* dk_acc, T* dv_acc) {
  check_attention_args("attention_backward", B, Tn, H, Hkv, hd);
  if (!dq_acc && !dk_acc && !dv_acc) return;
  const int64_t group = H / Hkv;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  const Eigen::OuterStride<> qstride(H * hd), kstride(Hkv * hd);
  const int64_t tasks = B * Hkv;

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    thread_local AlignedVector<T> pbuf, dpbuf;
    T* p = scratch(pbuf, kBlock * Tn);
    T* dp = scratch(dpbuf, kBlock * Tn);
    const int64_t b = task / Hkv, kvh = task % Hkv;
    const int64_t kv_off = (b * Tn * Hkv + kvh) * hd;
    CStrided<T> K(k + kv_off, Tn, hd, kstride);
    CStrided<T> V(v + kv_off, Tn, hd, kstride);
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      const T* lse_bh = lse + (b * H + h) * Tn;
      for (int64_t t0 = 0; t0 < Tn; t0 += kBlock) {
        const int64_t bq = std::min(kBlock, Tn - t0), kend = t0 + bq;
        const int64_t q_off = ((b * Tn + t0) * H + h) * hd;
        CStrided<T> Q(q + q_off, bq, hd, qstride);
        CStrided<T> dO(dout + q_off, bq, hd, qstride);
        CStrided<T> O(out + q_off, bq, hd, qstride);
        MDense<T> P(p, bq, kend);
        P.noalias() = Q * K.topRows(kend).transpose();
        for (int64_t i = 0; i < bq; ++i) {
          const int64_t n = t0 + i + 1;
          auto row = P.row(i).head(n).array();
          row = (row * scale - lse_bh[t0 + i]).exp();
          P.row(i).tail(kend - n).setZero();
        }
        if (dv_acc) {
          MStrided<T> dV(dv_acc + kv_off, Tn, hd, kstride);
          dV.topRows(kend).noalias() += P.transpose() * dO;
        }
        if (!dq_acc && !dk_acc) continue;
        MDense<T> dS(dp, bq, kend);
        dS.noalias() = dO * V.topRows(kend).transpose();  // dP
        for (int64_t i = 0; i < bq; ++i) {
          const int64_t n = t0 + i + 1;
          const T Di = dO.row(i).dot(O.row(i));
          auto row = dS.row(i).head(n).array();
          row = P.row(i).head(n).array() * (row - Di) * scale;
          dS.row(i).tail(kend - n).setZero();
        }
        if (dq_acc) {
          MStrided<T> dQ(dq_acc + q_off, bq, hd, qstride);
          dQ.noalias() += dS * K.topRows(kend);
        }
        if (dk_acc) {
          MStrided<T> dK(dk_acc + kv_off, Tn, hd, kstride);
          dK.topRows(kend).noalias() += dS.transpose() * Q;
        }
      }
    }
  }
}

template void attention_forward<float>(const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                                       int64_t, float*, float*);
template void attention_forward<double>(const double*, const double*, const double*, int64_t, int64_t, int64_t,
                                        int64_t, int64_t, double*, double*);
template void attention_backward<float>(const float*, const float*, const float*, const float*, const float*,
                                        const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*, float*,
                                        float*);
template void attention_backward<double>(const double*, const double*, const double*, const double*, const double*,
                                         const double*, int64_t, int64_t, int64_t, int64_t, int64_t, double*, double*,
                                         double*);

}  // namespace ptool::cpu
