// Internal to kernels/: error checking, the grow-once device workspace, and the kernel launchers that
// cuda_backend.cpp (host code, compiled by the C++ compiler) calls. Every launcher enqueues on the given stream and
// returns without waiting. Kernels live in cuda_attention.cu and, one file per family of the other ops, in
// cuda_elementwise.cu, cuda_residual.cu, cuda_rmsnorm.cu, cuda_qk_prep.cu, cuda_embedding.cu and
// cuda_cross_entropy.cu.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace ptool::cuda {

// Throws ptool::Error("CUDA: <call> failed: <error string> (<file>:<line>)").
[[noreturn]] void throw_cuda_error(const char* call, cudaError_t err, const char* file, int line);
// After a kernel launch: checks the launch (cudaGetLastError); with PTOOL_CUDA_SYNC=1 in the environment it
// also synchronizes the stream, so that an asynchronous fault is reported at the kernel that caused it.
void check_launch(const char* kernel, cudaStream_t stream, const char* file, int line);

#define PTOOL_CUDA_CHECK(call)                                                          \
  do {                                                                                  \
    const cudaError_t ptool_cuda_err_ = (call);                                         \
    if (ptool_cuda_err_ != cudaSuccess)                                                 \
      ::ptool::cuda::throw_cuda_error(#call, ptool_cuda_err_, __FILE__, __LINE__);      \
  } while (0)
#define PTOOL_CUDA_LAUNCHED(name, stream) ::ptool::cuda::check_launch(name, stream, __FILE__, __LINE__)

// Bytes of device memory a backend holds, now and at the peak.
struct MemCounter {
  size_t live = 0, peak = 0;
  void add(size_t b) {
    live += b;
    if (live > peak) peak = live;
  }
  void sub(size_t b) { live -= b; }
};

// Device scratch that grows to the largest request and is then reused (no allocation in the step loop once
// the shapes are known). Ops run in stream order, so one op's use of the block cannot overlap the next op's.
// Growing synchronizes the stream before freeing the old block.
class Workspace {
 public:
  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace();
  void set_stream(cudaStream_t s) { stream_ = s; }
  void set_counter(MemCounter* c) { counter_ = c; }
  void* get(size_t bytes);
  size_t capacity() const { return bytes_; }

 private:
  cudaStream_t stream_ = nullptr;
  MemCounter* counter_ = nullptr;
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Carves aligned sub-buffers out of one workspace block: first measure (base == nullptr), then carve.
struct Carver {
  char* base = nullptr;
  size_t off = 0;
  template <class T>
  T* take(size_t n) {
    off = (off + 255) & ~size_t(255);
    T* p = base ? reinterpret_cast<T*>(base + off) : nullptr;
    off += n * sizeof(T);
    return p;
  }
};

#ifdef __CUDACC__
#define PTOOL_HOST_DEVICE __host__ __device__
#else
#define PTOOL_HOST_DEVICE
#endif

// An op's output: fp32 memory, or a bf16 buffer (an operand or activation buffer of the bf16 mode), whose elements
// are stored rounded to nearest even. At most one is set. A float* converts to it, so fp32 callers need no change.
struct Out {
  float* f32 = nullptr;
  uint16_t* bf16 = nullptr;
  Out() = default;
  PTOOL_HOST_DEVICE Out(float* p) : f32(p) {}  // implicit on purpose
  static Out bf16_at(void* p) {
    Out o;
    o.bf16 = static_cast<uint16_t*>(p);
    return o;
  }
  const void* ptr() const { return f32 ? static_cast<const void*>(f32) : static_cast<const void*>(bf16); }
  PTOOL_HOST_DEVICE bool empty() const { return !f32 && !bf16; }
};

// An op's input that may be a bf16 activation buffer (Backend::alloc_activation in bf16 mode): fp32 memory or bf16
// bits, at most one set; a const float* converts to it, and so does an Out (to read back what an op wrote).
struct In {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
  In() = default;
  PTOOL_HOST_DEVICE In(const float* p) : f32(p) {}  // implicit on purpose
  PTOOL_HOST_DEVICE In(const Out& o) : f32(o.f32), bf16(o.bf16) {}  // implicit on purpose
  static In bf16_at(const void* p) {
    In i;
    i.bf16 = static_cast<const uint16_t*>(p);
    return i;
  }
  PTOOL_HOST_DEVICE bool empty() const { return !f32 && !bf16; }
};

// ---- the kernel files of the other ops (named above) --------------------------------------------------------
// y += x; either may be a bf16 buffer (read widened, written rounded).
void launch_add(Out y, In x, size_t n, cudaStream_t s);
void launch_scale(float* y, float a, size_t n, cudaStream_t s);
// y[i] = bf16 bits of x[i], rounded to nearest even (the GEMM operands of CudaGemmPrecision::bf16).
void launch_to_bf16(const float* x, size_t n, uint16_t* y, cudaStream_t s);
void launch_bf16_to_float(const uint16_t* x, size_t n, float* y, cudaStream_t s);
// y[i] = x[i] rounded to bf16 and back (exact): what a bf16 operand buffer would hold, as fp32. y may be x.
void launch_round_bf16(const float* x, size_t n, float* y, cudaStream_t s);
// dst[n, off + j] = src[n, j] for n < N, j < w, dst's rows ld elements apart (Backend::copy_columns).
void launch_copy_columns(In src, int64_t N, int64_t w, Out dst, int64_t ld, int64_t off, cudaStream_t s);
// dst[b, s, :] = src[b, from + s, :] for b < B, s < Tn - from, rows D wide (Backend::gather_rows).
void launch_gather_rows(In src, int64_t B, int64_t Tn, int64_t from, int64_t D, Out dst, cudaStream_t s);

void launch_embedding_forward(const float* table, const int32_t* tokens, int64_t N, int64_t D, float* out,
                              cudaStream_t s);
// Backend::embedding_rmsnorm_forward: emb (may be null) = the rows, out = their RMSNorm (bf16-rounded when
// bf16_out), rstd per row; one warp per row.
void launch_embedding_rmsnorm_forward(const float* table, const int32_t* tokens, int64_t N, int64_t D, float eps,
                                      bool bf16_out, float* emb, Out out, float* rstd, cudaStream_t s);
void launch_embedding_backward_atomic(const float* dout, const int32_t* tokens, int64_t N, int64_t D,
                                      float* dtable, cudaStream_t s);
// Deterministic: stable radix sort of (token, position), then one block per distinct token adds its rows in
// position order, starting from the existing dtable value (the CPU reference's exact summation order).
void launch_embedding_backward_sorted(const float* dout, const int32_t* tokens, int64_t N, int64_t D,
                                      float* dtable, Workspace& ws, cudaStream_t s);

void launch_rmsnorm_forward(In x, int64_t N, int64_t D, float eps, Out out, float* rstd, cudaStream_t s);
// dx += (accumulate) or dx = RMSNorm's backward of dout.
void launch_rmsnorm_backward(In dout, In x, const float* rstd, int64_t N, int64_t D, Out dx, bool accumulate,
                             cudaStream_t s);

void launch_channel_scale_forward(const float* x, const float* sc, int64_t N, int64_t D, float* y, cudaStream_t s);
// The residual stream's ops read it (x, x0, skip, y) as In and write it (y, and layer_entry's x and xs) as Out: a bf16
// stream buffer holds each new value rounded, and a norm fused after it normalizes the rounded value (Backend's
// "residual stream" contract).
// y = x + sc ⊙ o (Backend::scaled_residual_forward), rounded as channel_scale_forward then add.
void launch_scaled_residual_forward(In x, In o, const float* sc, int64_t N, int64_t D, Out y, cudaStream_t s);
// The same, then h = rmsnorm(y) with rstd per row (Backend::scaled_residual_rmsnorm_forward): one warp per row.
void launch_scaled_residual_rmsnorm_forward(In x, In o, const float* sc, int64_t N, int64_t D, float eps, Out y,
                                            Out h, float* rstd, cudaStream_t s);
// The backwards below add into their input gradient (dx, dh) when accumulate, else overwrite it; parameter
// gradients (ds, dg) always accumulate. A bf16 gradient (an activation buffer, or the residual stream's gradient
// under embed_bf16) is read widened and written rounded, once per element: the fp32 arithmetic on its stored
// values, rounded as stored. (The head scale's takes fp32 only.)
void launch_channel_scale_backward(In dy, In x, const float* sc, int64_t N, int64_t D, Out dx, bool accumulate,
                                   float* ds_acc, Workspace& ws, cudaStream_t s);
// Backend::scaled_add_forward and _backward: y += s[0] x; dx_acc += s[0] dy and ds_acc[0] += sum dy ⊙ x (one
// deterministic column reduction over all C columns), dy's rows ld apart from column col. With bf16, y and dy are
// read (and y stored) as bf16 operand buffers hold values, fp32 buffers included.
void launch_scaled_add_forward(In x, const float* sc, int64_t N, int64_t C, bool bf16, Out y, cudaStream_t s);
void launch_scaled_add_backward(In dy, int64_t ld, int64_t col, In x, const float* sc, int64_t N, int64_t C, bool bf16,
                                Out dx_acc, float* ds_acc, Workspace& ws, cudaStream_t s);
// Backend::smear_forward and smear_backward_set_dx (cuda_smear.cu): y (may be bf16) from fp32 x; dx written, dg_acc
// added to.
void launch_smear_forward(const float* x, const float* g, int64_t B, int64_t Tn, int64_t D, Out y, cudaStream_t s);
void launch_smear_backward(In dy, const float* x, const float* g, int64_t B, int64_t Tn, int64_t D, float* dx,
                           float* dg_acc, Workspace& ws, cudaStream_t s);
void launch_head_scale_forward(const float* x, const float* g, int64_t N, int64_t H, int64_t hd, float* y,
                               cudaStream_t s);
void launch_head_scale_backward(const float* dy, const float* x, const float* g, int64_t N, int64_t H, int64_t hd,
                                float* dx, bool accumulate, float* dg_acc, Workspace& ws, cudaStream_t s);

// cos/sin tables [Tn, rot/2] (angles in double, rounded to float, as in the CPU reference).
void launch_rope_table(int64_t Tn, int64_t rot, double base, float* cos_t, float* sin_t, cudaStream_t s);
void launch_rope_apply(float* x, int64_t B, int64_t Tn, int64_t H, int64_t hd, int64_t rot, const float* cos_t,
                       const float* sin_t, bool inverse, cudaStream_t s);

// RMSNorm (when norm), RoPE and the per-head gain (when gain) of Backend::qk_prep_forward over rows = B * Tn * H
// head rows; cos/sin tables as launch_rope_table's for Tn and rot. And its backward (Backend::qk_prep_backward),
// whose draw has token rows ld elements apart from column col (H hd and 0 when it is a buffer of its own).
void launch_qk_prep_forward(In raw, int64_t rows, int64_t Tn, int64_t H, int64_t hd, int64_t rot,
                            bool norm, float eps, const float* cos_t, const float* sin_t, const float* gain,
                            float* rstd, Out x, Out out, cudaStream_t s);
void launch_qk_prep_backward(float* d, In raw, const float* rstd, int64_t rows, int64_t Tn, int64_t H,
                             int64_t hd, int64_t rot, bool norm, const float* cos_t, const float* sin_t, Out draw,
                             int64_t ld, int64_t col, cudaStream_t s);

void launch_activation_forward(bool leaky, In h, int64_t n, Out out, cudaStream_t s);
void launch_activation_backward(bool leaky, In dout, In h, int64_t n, Out dh, bool accumulate,
                                cudaStream_t s);

void launch_skip_add_forward(float* x, const float* skip, const float* w, int64_t N, int64_t D, cudaStream_t s);
void launch_skip_add_backward(In dy, In skip, const float* w, int64_t N, int64_t D, Out dskip, bool accumulate,
                              float* dw_acc, Workspace& ws, cudaStream_t s);
void launch_gated_skip_forward(In x, In skip, const float* w, const float* g, int64_t N, int64_t D, Out y,
                               cudaStream_t s);
void launch_gated_skip_backward(In dy, In x, In skip, const float* w, const float* g, int64_t N, int64_t D,
                                Out dx_acc, Out dskip_acc, float* dw_acc, float* dg_acc, Workspace& ws,
                                cudaStream_t s);
void launch_resid_mix_forward(In x, In x0, const float* m, int64_t N, int64_t D, Out y, cudaStream_t s);
// The same, then h = rmsnorm(y) with rstd per row (Backend::resid_mix_rmsnorm_forward): one warp per row.
// Backend::layer_entry_forward: one warp per row; x, xs may be empty (not written; rounded as y's storage would
// round them all the same); skip empty: no skip add; g (gate logits) given: the gated skip.
void launch_layer_entry_forward(In a, In b, const float* sc, In skip, const float* w, const float* g, In x0,
                                const float* m, int64_t N, int64_t D, float eps, Out x, Out xs, Out y, Out h,
                                float* rstd, cudaStream_t s);
void launch_resid_mix_rmsnorm_forward(In x, In x0, const float* m, int64_t N, int64_t D, float eps, Out y, Out h,
                                      float* rstd, cudaStream_t s);
// dx may be dy (in place).
void launch_resid_mix_backward(In dy, In x, In x0, const float* m, int64_t N, int64_t D, Out dx, bool accumulate,
                               Out dx0_acc, float* dm_acc, Workspace& ws, cudaStream_t s);

// Backend::qk_prep_backward_gain in one pass over rows = tokens * H head rows (hd <= kMaxPrepHd, else
// std::invalid_argument), x formed again from raw and rstd as launch_qk_prep_forward forms it; cos/sin as
// launch_qk_prep_backward's, and draw, ld, col too; dg_acc (may be null) is added to.
constexpr int64_t kMaxPrepHd = 128;
void launch_qk_prep_backward_gain(const float* dq, const float* gain, float* dg_acc, In raw, const float* rstd,
                                  int64_t tokens, int64_t Tn, int64_t H, int64_t hd, int64_t rot, bool norm,
                                  const float* cos_t, const float* sin_t, Out draw, int64_t ld, int64_t col,
                                  Workspace& ws, cudaStream_t s);

// Backend::rmsnorm_resid_mix_backward and rmsnorm_channel_scale_backward in one pass each, for the D that
// rmsnorm_fused_backward accepts (64, 128, 256, 512, 768 and 1024: the presets' widths; others throw
// std::invalid_argument: compose the ops instead). dx0, dm_acc and ds_acc are added to; dout is written.
bool rmsnorm_fused_backward(int64_t D);
// The resid_mix form recomputes the norm's input y = resid_mix(x, x0, m) as resid_mix_forward forms it, rounded to
// bf16 when y_bf16 (the forward stored it in a bf16 stream buffer).
void launch_rmsnorm_resid_mix_backward(In dh, const float* rstd, In x, In x0, const float* m, bool y_bf16, int64_t N,
                                       int64_t D, Out dx, Out dx0, float* dm_acc, In dx_add, bool fold_x0,
                                       Workspace& ws, cudaStream_t s);
void launch_rmsnorm_channel_scale_backward(In dh, In y, const float* rstd, In o, const float* sc,
                                           int64_t N, int64_t D, Out dx, Out dout, float* ds_acc, Workspace& ws,
                                           cudaStream_t s);

// One block per row. losses_dev[n] gets each row's loss (double); *bad_row gets the smallest row whose target
// is outside [0, V) (it must hold INT32_MAX before the launch; left unchanged when all targets are valid).
// dz: empty for no gradient; fp32 (may alias z) or a bf16 operand buffer.
void launch_softcap_cross_entropy(const float* z, const int32_t* targets, int64_t N, int64_t V, float cap,
                                  double* losses_dev, int32_t* bad_row, Out dz, float grad_scale,
                                  cudaStream_t s);

// *acc += sum of x[0..n), in a fixed order (one block: strided per-thread sums, then a tree), so reruns agree.
void launch_sum_into(const double* x, int64_t n, double* acc, cudaStream_t s);
// acc[h] += the sum over chunks c of partial[c * H + h] (double, in a fixed order, so reruns agree): the gain's
// gradient of q's preparation backward when the flash dQ kernel runs it.
void launch_add_chunk_sums(const double* partial, int64_t chunks, int64_t H, float* acc, cudaStream_t s);

// Backend::xsa_forward and xsa_backward (cuda_xsa.cu; head_dim <= 128, else std::invalid_argument). The backward
// writes datt and adds into dv (row n at n * ld + col) where each is given. bf16: every value read and stored as a
// bf16 buffer holds it, fp32 buffers included.
void launch_xsa_forward(In att, In v, int64_t N, int64_t H, int64_t Hkv, int64_t hd, bool bf16, Out y,
                        cudaStream_t s);
void launch_xsa_backward(In dy, In att, In v, int64_t N, int64_t H, int64_t Hkv, int64_t hd, bool bf16, Out datt,
                         Out dv, int64_t ld, int64_t col, cudaStream_t s);

// ---- cuda_attention.cu --------------------------------------------------------------------------------------
// Throws std::invalid_argument for bad shapes (H % Hkv != 0, ...) and for head_dim > 128, which the kernels do
// not support. 16-byte loads are used when hd % 4 == 0 and the pointers allow, element loads otherwise. The
// backward adds into dq, dk, dv when accumulate, else writes them (every row has one writer either way).
void launch_attention_forward(const float* q, const float* k, const float* v, int64_t B, int64_t Tn, int64_t H,
                              int64_t Hkv, int64_t hd, float* out, float* lse, cudaStream_t s);
void launch_attention_backward(const float* dout, const float* q, const float* k, const float* v, const float* out,
                               const float* lse, int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t hd,
                               float* dq_acc, float* dk_acc, float* dv_acc, bool accumulate, Workspace& ws,
                               cudaStream_t s);

}  // namespace ptool::cuda
