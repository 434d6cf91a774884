// cuemu: runs the CUDA source of kernels/ on the host, so that the whole CUDA backend (launch shapes, indexing,
// shared memory, warp shuffles, barriers, cuBLAS calls, stream and memory bookkeeping) is tested on machines
// without a GPU, and under AddressSanitizer, which then also checks every device-memory access of the kernels.
//
// How. kernels/*.cu are compiled as C++ (build/emu_*.cpp include them) with kernels/emu/include ahead of the
// CUDA toolkit, so <cuda_runtime_api.h>, <cuda_bf16.h>, <cublasLt.h>, ... are this project's host versions.
// A launch runs its CTAs one after another; within a CTA every CUDA thread is a fiber with its own stack, and
// the threads switch only at __syncthreads, __syncwarp and the warp-level operations, which are barriers of the
// CTA or of the warp, as on the device. A warp runs as far as it can before the next warp starts (to a
// __syncthreads it cannot pass yet, or its end), so warps are as far apart as the barriers allow. Everything runs
// on the calling OS thread, in a fixed order, so results are deterministic. `__shared__` variables are function
// statics: one copy shared by the threads of the CTA being run (CTAs never overlap).
//
// What it checks beyond the results: launch configurations (empty grids, more than 1024 threads per block,
// grid limits, dynamic shared memory over 48 KiB without cudaFuncSetAttribute, over 227 KiB at all), copies
// whose pointers are not of the kind the direction says, barriers that can never complete (a deadlock is
// reported with the kernel's name), shuffles that read a lane that has exited, cp.async copies that are not of
// device memory into dynamic shared memory, and device memory leaks.
//
// Device memory: cudaMalloc fills each allocation with 0xff bytes (NaN as fp32 and bf16), so a kernel that reads
// what no one wrote shows up; without ASan each allocation ends at an inaccessible page, so an access past its end
// (beyond the rounding to 256 bytes) faults instead of reaching a neighbour.
//
// Races: here each thread runs until it blocks, so a missing __syncthreads may go unnoticed in one order; the
// tests run again with PTOOL_CUDA_EMULATOR_ORDER=reverse (see set_order). Built with Clang's ThreadSanitizer
// (PTOOL_TSAN, scripts/racecheck.sh), cuemu reports the races between two threads of a CTA, or of two CTAs run
// one after the other, whatever the order: the fibers are ThreadSanitizer fibers, ordered only by what orders
// threads on the device (see "race checking" in cuemu.cpp).
//
// What it cannot check: timing, and the device's floating-point contraction choices (the emulated kernels are
// compiled with -ffp-contract=off; __fmaf_rn is a true fma).
//
// The emulated device exists only when enabled: cudaGetDeviceCount() reports 0 devices unless the environment
// has PTOOL_CUDA_EMULATOR=1, so a build whose kernels are emulated never picks the emulator by accident.
#pragma once
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A race-checking (ThreadSanitizer) build: GCC says so with __SANITIZE_THREAD__, Clang 14 only through
// __has_feature.
#if defined(__SANITIZE_THREAD__)
#define CUEMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CUEMU_TSAN 1
#endif
#endif
#ifndef CUEMU_TSAN
#define CUEMU_TSAN 0
#endif

#if CUEMU_TSAN
// In the section of all shared memory, whose race history the race checker clears for each CTA (cuemu.cpp). GCC
// ignores a section attribute on the static locals of templates: race-checking builds use Clang.
#define __shared__ static __attribute__((section("cuemu_shared")))
#else
#define __shared__ static
#endif
#define __noinline__

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

// The current thread's coordinates; set by the scheduler before it resumes a fiber.
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
constexpr int warpSize = 32;

struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

namespace cuemu {

// ---- the scheduler's side of the device built-ins (cuemu.cpp) --------------------------------------------------
void syncthreads();
void syncwarp();
// Warp exchange: this lane publishes `bytes` bytes, the warp meets, this lane copies out `src_lane`'s bytes, the
// warp meets again. src_lane must be a live lane of this warp.
void warp_exchange(const void* mine, void* out, size_t bytes, int src_lane);
int lane_id();
// Dynamic shared memory of the running CTA (launch's smem bytes, 16-byte aligned, filled with 0xff at each CTA
// so that reading what was never written shows up as NaN).
void* dynamic_smem();
// cp.async (4, 8 or 16 bytes, global -> dynamic shared memory), commit_group and wait_group(pending): the copy
// lands at the issue in the forward order, at the covering wait in the reverse order (see set_order). In the
// reverse order, a thread that exits with copies it never waited for fails the launch.
void cp_async(void* dst, const void* src, size_t bytes);
void cp_async_commit();
void cp_async_wait(int pending);

// ---- launches ----------------------------------------------------------------------------------------------------
struct LaunchConfig {
  dim3 grid, block;
  size_t smem = 0;
  const void* stream = nullptr;
  const char* name = "";
  const void* func = nullptr;  // the kernel, for the shared-memory opt-in cudaFuncSetAttribute gave it
};
// Validates the configuration (on failure: the error is what cudaGetLastError returns next, nothing runs), then
// runs body once per CUDA thread of every CTA.
void run_grid(const LaunchConfig& cfg, void (*body)(void*), void* ctx);

template <class Kernel, class Address>
struct Launcher {
  LaunchConfig cfg;
  Kernel kernel;
  Address address;  // args... -> the kernel's address (cfg.func)
  template <class... A>
  void operator()(A... args) {
    cfg.func = address(args...);
    // Each thread receives its own copies of the arguments, as a kernel's by-value parameters on the device.
    auto call = [&]() { kernel(args...); };
    run_grid(cfg, [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call);
  }
};
template <class Kernel, class Address>
Launcher<Kernel, Address> make_launcher(dim3 grid, dim3 block, size_t smem, const void* stream, const char* name,
                                        Address address, Kernel k) {
  return Launcher<Kernel, Address>{LaunchConfig{grid, block, smem, stream, name}, k, address};
}
// A kernel's address, as cudaFuncSetAttribute takes it, given the types of the launch's arguments P: the kernel
// itself when its name denotes one function (or a pointer to one), else the specialization of a kernel template
// whose parameters are exactly P (deduced as <<<...>>> would); null when neither resolves.
template <class... P, class... A>
const void* kernel_address(void (*f)(A...)) {
  return reinterpret_cast<const void*>(f);
}

// The order in which a launch runs its CTAs and, between two barriers, the threads of a CTA: first to last or
// last to first. A kernel whose results differ between the two has a race (a missing __syncthreads, a CTA that
// reads another's output), which one order alone may hide. Starts as PTOOL_CUDA_EMULATOR_ORDER says (reverse;
// anything else is forward).
enum class Order { forward, reverse };
void set_order(Order o);
Order order();

// True when PTOOL_CUDA_EMULATOR=1 was set (the emulated device exists).
bool enabled();
// Whether [p, p + bytes) lies inside one live device allocation (cudaMalloc).
bool is_device_range(const void* p, size_t bytes);

// ---- bf16 bit conversions (round to nearest even, as __float2bfloat16_rn) -------------------------------------------
uint16_t float_to_bf16_bits(float f);
float bf16_bits_to_float(uint16_t b);

// The tensor-core operations of the bf16 flash kernels, per the PTX ISA's fragment layouts (g = lane / 4,
// t = lane % 4). ldmatrix .x4: lanes 8i..8i+7 give the row addresses of 8x8 matrix i; register i of lane (g, t)
// receives row g, columns 2t and 2t + 1 (.trans: rows 2t and 2t + 1 of column g), lower one in the low half.
void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* row, bool trans);
// d += a b, m16n8k16, bf16 inputs, fp32 accumulation (here: in k order).
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

}  // namespace cuemu

// ---- device built-ins ----------------------------------------------------------------------------------------------
inline void __syncthreads() { cuemu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { cuemu::syncwarp(); }

template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T>);
  const int lane = cuemu::lane_id();
  const int src = (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1));
  T out;
  cuemu::warp_exchange(&v, &out, sizeof(T), src);
  return out;
}
template <class T>
T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T>);
  const int lane = cuemu::lane_id();
  T out;
  cuemu::warp_exchange(&v, &out, sizeof(T), (lane & ~(width - 1)) | (src_lane & (width - 1)));
  return out;
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T>);
  const int lane = cuemu::lane_id();
  const int in_seg = (lane & (width - 1)) + static_cast<int>(delta);
  T out;
  cuemu::warp_exchange(&v, &out, sizeof(T), in_seg < width ? lane + static_cast<int>(delta) : lane);
  return out;
}

// Atomics: relaxed read-modify-writes, as the device's (one CUDA thread runs at a time, but a race-checking build
// must see them as atomics, which order nothing, and not as races).
template <class T>
T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}
inline int atomicMin(int* p, int v) {
  std::atomic_ref<int> a(*p);
  int old = a.load(std::memory_order_relaxed);
  while (v < old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
  }
  return old;
}
inline int atomicMax(int* p, int v) {
  std::atomic_ref<int> a(*p);
  int old = a.load(std::memory_order_relaxed);
  while (v > old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
  }
  return old;
}

template <class T>
T __ldg(const T* p) {
  return *p;
}

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline double __longlong_as_double(long long v) {
  double d;
  std::memcpy(&d, &v, sizeof d);
  return d;
}
inline long long __double_as_longlong(double d) {
  long long v;
  std::memcpy(&v, &d, sizeof v);
  return v;
}
inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline int __float_as_int(float f) {
  int v;
  std::memcpy(&v, &f, sizeof v);
  return v;
}
// The device's global min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

using std::isfinite;
using std::isinf;
using std::isnan;

// Shared-memory addresses for inline PTX have no host meaning; kept for source compatibility.
inline size_t __cvta_generic_to_shared(const void* p) { return reinterpret_cast<size_t>(p); }

// kernel<<<grid, block, smem, stream>>>(args) is written PTOOL_LAUNCH(kernel, grid, block, smem, stream)(args)
// (kernels/cuda_launch.h); here it becomes a host call that runs the grid.
#define PTOOL_LAUNCH(kernel, grid, block, smem, stream)                                                       \
  ::cuemu::make_launcher(dim3(grid), dim3(block), static_cast<size_t>(smem), static_cast<const void*>(stream), \
                         #kernel, PTOOL_EMU_KERNEL_ADDRESS(kernel),                                           \
                         [](auto... ptool_emu_args) { kernel(ptool_emu_args...); })
#define PTOOL_EMU_KERNEL_ADDRESS(kernel)                                                                          \
  [](auto... a) -> const void* {                                                                                  \
    if constexpr (requires { ::cuemu::kernel_address<decltype(a)...>(kernel); })                                 \
      return ::cuemu::kernel_address<decltype(a)...>(kernel);                                                     \
    else if constexpr (requires { static_cast<void (*)(decltype(a)...)>(kernel); })                              \
      return reinterpret_cast<const void*>(static_cast<void (*)(decltype(a)...)>(kernel));                       \
    else                                                                                                          \
      return nullptr;                                                                                             \
  }
#define PTOOL_DYNAMIC_SMEM(type, name) type* name = static_cast<type*>(::cuemu::dynamic_smem())
