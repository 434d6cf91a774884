// The host emulator of CUDA (kernels/emu/cuemu.h): thread coordinates, barriers, warp operations, the checks it
// makes of launches and copies, and its bf16 conversion. Kernels here are written as in kernels/*.cu.
#include <cuda_runtime_api.h>

#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "kernels/cuda_launch.h"

namespace {

template <class T>
struct DeviceArray {
  T* p = nullptr;
  size_t n;
  explicit DeviceArray(size_t count) : n(count) { REQUIRE(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess); }
  ~DeviceArray() { cudaFree(p); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    REQUIRE(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
  }
};

__global__ void coords_kernel(int* out) {
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  out[block * blockDim.x * blockDim.y * blockDim.z + thread] = 1000 * block + thread;
}

// Reverses each block's slice through shared memory: correct only if the barrier separates writes and reads.
__global__ void reverse_kernel(const int* in, int* out) {
  __shared__ int tile[256];
  const int base = blockIdx.x * blockDim.x;
  tile[threadIdx.x] = in[base + threadIdx.x];
  __syncthreads();
  out[base + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

__global__ void warp_sum_kernel(const double* in, double* out) {
  double v = in[threadIdx.x];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[threadIdx.x] = v;
}

__global__ void deadlock_kernel() {
  if (threadIdx.x == 0)
    __syncwarp();
  else
    __syncthreads();
}

__global__ void early_exit_shuffle_kernel(float* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

__global__ void dynamic_smem_kernel(float* out) {
  PTOOL_DYNAMIC_SMEM(float, buf);
  buf[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = buf[(threadIdx.x + 1) % blockDim.x];
}

__global__ void unwritten_smem_kernel(float* out) {
  PTOOL_DYNAMIC_SMEM(float, buf);
  out[threadIdx.x] = buf[threadIdx.x];
}

// Reads the left neighbour's shared value without a barrier between the write and the read: a race, which
// the order of the threads decides.
__global__ void racy_neighbour_kernel(float* out) {
  PTOOL_DYNAMIC_SMEM(float, buf);
  buf[threadIdx.x] = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = threadIdx.x > 0 ? buf[threadIdx.x - 1] : 0.f;
}

// Each CTA takes the next number from a counter: the order in which the CTAs ran.
__global__ void cta_order_kernel(int* counter, int* out) {
  if (threadIdx.x == 0) out[blockIdx.x] = atomicAdd(counter, 1);
}

__global__ void write_at_kernel(float* p, int i) { p[i] = 1.f; }

// Each thread takes a number from a counter, meets its warp, and takes another: the order the threads ran in.
__global__ void schedule_kernel(int* counter, int* first, int* second) {
  first[threadIdx.x] = atomicAdd(counter, 1);
  __syncwarp();
  second[threadIdx.x] = atomicAdd(counter, 1);
}

// Thread 0 copies 4 floats with cp.async and reads the destination before and after the wait; `wait` false
// exits with the copy still pending.
__global__ void cp_async_kernel(const float* src, float* before, float* after, bool wait) {
  PTOOL_DYNAMIC_SMEM(float, buf);
  if (threadIdx.x != 0) return;
  cuemu::cp_async(buf, src, 16);
  cuemu::cp_async_commit();
  before[0] = buf[0];
  if (!wait) return;
  cuemu::cp_async_wait(0);
  after[0] = buf[0];
}

// Restores the emulator's thread order when a test that changes it ends.
struct OrderGuard {
  cuemu::Order saved = cuemu::order();
  ~OrderGuard() { cuemu::set_order(saved); }
};

// reverse_kernel over 4 blocks of 256: each block's slice comes out reversed.
void check_block_reversal() {
  const int n = 4 * 256;
  std::vector<int> in(n);
  for (int i = 0; i < n; ++i) in[static_cast<size_t>(i)] = i * 7 + 1;
  DeviceArray<int> din(n), dout(n);
  REQUIRE(cudaMemcpy(din.p, in.data(), n * sizeof(int), cudaMemcpyHostToDevice) == cudaSuccess);
  PTOOL_LAUNCH(reverse_kernel, 4, 256, 0, nullptr)(din.p, dout.p);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  const std::vector<int> h = dout.get();
  for (int b = 0; b < 4; ++b)
    for (int t = 0; t < 256; ++t)
      REQUIRE(h[static_cast<size_t>(b * 256 + t)] == in[static_cast<size_t>(b * 256 + 255 - t)]);
}

std::string last_error_text() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e));
}

}  // namespace

TEST_CASE("cuemu: a kernel sees its grid and block coordinates") {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  const int threads = 24, blocks = 12;
  DeviceArray<int> out(static_cast<size_t>(threads * blocks));
  PTOOL_LAUNCH(coords_kernel, grid, block, 0, nullptr)(out.p);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  const std::vector<int> h = out.get();
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < threads; ++t) REQUIRE(h[static_cast<size_t>(b * threads + t)] == 1000 * b + t);
}

TEST_CASE("cuemu: __syncthreads orders shared memory between the threads of a block") {
  check_block_reversal();
}

TEST_CASE("cuemu: xor shuffles give every lane the warp's sum") {
  std::vector<double> in(64);
  for (int i = 0; i < 64; ++i) in[static_cast<size_t>(i)] = i;
  DeviceArray<double> din(64), dout(64);
  REQUIRE(cudaMemcpy(din.p, in.data(), sizeof(double) * 64, cudaMemcpyHostToDevice) == cudaSuccess);
  PTOOL_LAUNCH(warp_sum_kernel, 1, 64, 0, nullptr)(din.p, dout.p);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  const std::vector<double> h = dout.get();
  for (int i = 0; i < 32; ++i) CHECK(h[static_cast<size_t>(i)] == 496.0);   // 0 + ... + 31
  for (int i = 32; i < 64; ++i) CHECK(h[static_cast<size_t>(i)] == 1520.0);  // 32 + ... + 63
}

TEST_CASE("cuemu: dynamic shared memory is per launch and starts as NaN") {
  DeviceArray<float> out(128);
  PTOOL_LAUNCH(dynamic_smem_kernel, 1, 128, 128 * sizeof(float), nullptr)(out.p);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  std::vector<float> h = out.get();
  for (int i = 0; i < 128; ++i) CHECK(h[static_cast<size_t>(i)] == static_cast<float>((i + 1) % 128));
  PTOOL_LAUNCH(unwritten_smem_kernel, 1, 128, 128 * sizeof(float), nullptr)(out.p);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  h = out.get();
  for (float v : h) CHECK(std::isnan(v));
}

TEST_CASE("cuemu: over 48 KiB of dynamic shared memory needs the opt-in on that very kernel") {
  // As on the device, cudaFuncAttributeMaxDynamicSharedMemorySize belongs to one kernel: another kernel's opt-in
  // (here dynamic_smem_kernel's) does not let unwritten_smem_kernel launch with more than the default 48 KiB.
  constexpr int kBytes = 64 << 10;
  DeviceArray<float> out(128);
  REQUIRE(cudaFuncSetAttribute(dynamic_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes) ==
          cudaSuccess);
  PTOOL_LAUNCH(dynamic_smem_kernel, 1, 128, kBytes, nullptr)(out.p);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  PTOOL_LAUNCH(unwritten_smem_kernel, 1, 128, kBytes, nullptr)(out.p);
  const cudaError_t e = cudaGetLastError();
  CHECK(e == cudaErrorInvalidValue);
  CHECK(std::string(cudaGetErrorString(e)).find("on this kernel") != std::string::npos);
  PTOOL_LAUNCH(dynamic_smem_kernel, 1, 128, kBytes + 1, nullptr)(out.p);  // past its own opt-in
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
}

// Runs a racy kernel on purpose, which a race-checking build reports (scripts/racecheck.sh leaves it out by name).
TEST_CASE("cuemu: the reverse order runs CTAs and threads last to first, exposing a missing barrier") {
  OrderGuard guard;
  DeviceArray<float> out(64);
  DeviceArray<int> counter(1), ctas(3);
  for (const cuemu::Order o : {cuemu::Order::forward, cuemu::Order::reverse}) {
    cuemu::set_order(o);
    REQUIRE(cudaMemset(counter.p, 0, sizeof(int)) == cudaSuccess);
    PTOOL_LAUNCH(cta_order_kernel, 3, 32, 0, nullptr)(counter.p, ctas.p);
    PTOOL_LAUNCH(racy_neighbour_kernel, 1, 64, 64 * sizeof(float), nullptr)(out.p);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    const std::vector<int> taken = ctas.get();
    const std::vector<float> h = out.get();
    const bool reverse = o == cuemu::Order::reverse;
    CHECK(taken == (reverse ? std::vector<int>{2, 1, 0} : std::vector<int>{0, 1, 2}));
    // Forward, each thread's neighbour has already written; reverse, none has: the race shows as NaN.
    for (int t = 1; t < 64; ++t) CHECK(std::isnan(h[static_cast<size_t>(t)]) == reverse);
  }
  // The coordinates and a correct kernel's results do not depend on the order.
  cuemu::set_order(cuemu::Order::reverse);
  check_block_reversal();
}

TEST_CASE("cuemu: a warp runs up to a barrier it cannot pass before the next warp starts") {
  OrderGuard guard;
  DeviceArray<int> counter(1), first(64), second(64);
  for (const cuemu::Order o : {cuemu::Order::forward, cuemu::Order::reverse}) {
    cuemu::set_order(o);
    REQUIRE(cudaMemset(counter.p, 0, sizeof(int)) == cudaSuccess);
    PTOOL_LAUNCH(schedule_kernel, 1, 64, 0, nullptr)(counter.p, first.p, second.p);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    const std::vector<int> a = first.get(), b = second.get();
    // Forward: warp 0's lanes 0..31 take 0..31, then 32..63 past __syncwarp; then warp 1 takes 64..127.
    // Reverse: warp 1 first, lane 31 first.
    for (int t = 0; t < 64; ++t) {
      const int warp_rank = o == cuemu::Order::forward ? t / 32 : 1 - t / 32;
      const int lane_rank = o == cuemu::Order::forward ? t % 32 : 31 - t % 32;
      CHECK(a[static_cast<size_t>(t)] == 64 * warp_rank + lane_rank);
      CHECK(b[static_cast<size_t>(t)] >= 64 * warp_rank + 32);
      CHECK(b[static_cast<size_t>(t)] < 64 * warp_rank + 64);
    }
  }
}

TEST_CASE("cuemu: cp.async lands at the issue in the forward order and at the wait in the reverse order") {
  OrderGuard guard;
  DeviceArray<float> src(4), before(1), after(1);
  const std::vector<float> h = {3.f, 1.f, 4.f, 1.f};
  REQUIRE(cudaMemcpy(src.p, h.data(), sizeof(float) * 4, cudaMemcpyHostToDevice) == cudaSuccess);
  cuemu::set_order(cuemu::Order::forward);
  PTOOL_LAUNCH(cp_async_kernel, 1, 32, 16, nullptr)(src.p, before.p, after.p, true);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  CHECK(before.get()[0] == 3.f);
  CHECK(after.get()[0] == 3.f);
  cuemu::set_order(cuemu::Order::reverse);
  PTOOL_LAUNCH(cp_async_kernel, 1, 32, 16, nullptr)(src.p, before.p, after.p, true);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  CHECK(std::isnan(before.get()[0]));  // shared memory starts as NaN; the copy is still in flight
  CHECK(after.get()[0] == 3.f);
  // A copy never waited for fails the launch (in the reverse order, where copies wait).
  PTOOL_LAUNCH(cp_async_kernel, 1, 32, 16, nullptr)(src.p, before.p, after.p, false);
  const std::string e = last_error_text();
  INFO(e);
  CHECK(e.find("cp.async copies it never waited for") != std::string::npos);
  // The source must be device memory.
  PTOOL_LAUNCH(cp_async_kernel, 1, 32, 16, nullptr)(h.data(), before.p, after.p, true);
  CHECK(last_error_text().find("cp.async reads outside device memory") != std::string::npos);
}

TEST_CASE("cuemu: device memory starts as NaN, and a write past an allocation's end crashes") {
  DeviceArray<float> d(100);  // 400 bytes, rounded to 512
  for (float v : d.get()) CHECK(std::isnan(v));
  PTOOL_LAUNCH(write_at_kernel, 1, 1, 0, nullptr)(d.p, 99);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  CHECK(d.get()[99] == 1.f);
  // In a child process: the write at byte 512 must not return normally (a fault, or ASan's report).
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    std::signal(SIGSEGV, SIG_DFL);  // not Catch's handler, which would report the expected crash as a failure
    std::signal(SIGBUS, SIG_DFL);
    const int null = open("/dev/null", O_WRONLY);
    if (null >= 0) {
      dup2(null, 1);
      dup2(null, 2);
    }
    PTOOL_LAUNCH(write_at_kernel, 1, 1, 0, nullptr)(d.p, 128);
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK_FALSE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
}

TEST_CASE("cuemu: a barrier that can never complete is reported as a deadlock") {
  PTOOL_LAUNCH(deadlock_kernel, 1, 32, 0, nullptr)();
  const std::string e = last_error_text();
  INFO(e);
  CHECK(e.find("deadlock") != std::string::npos);
  CHECK(e.find("deadlock_kernel") != std::string::npos);
}

TEST_CASE("cuemu: a shuffle reading an exited lane fails the launch") {
  DeviceArray<float> out(32);
  PTOOL_LAUNCH(early_exit_shuffle_kernel, 1, 32, 0, nullptr)(out.p);
  const std::string e = last_error_text();
  INFO(e);
  CHECK(e.find("lane 5, which has exited or is elsewhere") != std::string::npos);
}

TEST_CASE("cuemu: launch configurations the device refuses fail without running") {
  DeviceArray<int> out(4096);
  SECTION("an empty grid") {
    PTOOL_LAUNCH(coords_kernel, 0, 32, 0, nullptr)(out.p);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  }
  SECTION("more than 1024 threads per block") {
    PTOOL_LAUNCH(coords_kernel, 1, 2048, 0, nullptr)(out.p);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  }
  SECTION("grid y beyond 65535") {
    PTOOL_LAUNCH(coords_kernel, dim3(1, 65536), 1, 0, nullptr)(out.p);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  }
  SECTION("more than 227 KiB of dynamic shared memory") {
    PTOOL_LAUNCH(dynamic_smem_kernel, 1, 32, 228 << 10, nullptr)(reinterpret_cast<float*>(out.p));
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  }
  CHECK(cudaGetLastError() == cudaSuccess);  // reading the error cleared it
}

TEST_CASE("cuemu: copies must name device memory where the direction says device") {
  DeviceArray<float> d(16);
  std::vector<float> h(16, 1.f);
  CHECK(cudaMemcpy(d.p, h.data(), 16 * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(cudaMemcpy(h.data(), d.p, 16 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(d.p, h.data(), 17 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(d.p + 8, h.data(), 8 * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(cudaMemcpy(h.data(), d.p, 16 * sizeof(float), cudaMemcpyDeviceToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemsetAsync(d.p, 0, 64, nullptr) == cudaSuccess);
  CHECK(cudaMemsetAsync(h.data(), 0, 64, nullptr) == cudaErrorInvalidValue);
  CHECK(cudaFree(h.data()) == cudaErrorInvalidValue);
  cudaGetLastError();
}

TEST_CASE("cuemu: event timing measures the host time between records, and refuses what CUDA refuses") {
  cudaEvent_t a = nullptr, b = nullptr, untimed = nullptr;
  REQUIRE(cudaEventCreate(&a) == cudaSuccess);
  REQUIRE(cudaEventCreate(&b) == cudaSuccess);
  REQUIRE(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming) == cudaSuccess);
  float ms = -1.f;
  CHECK(cudaEventElapsedTime(&ms, a, b) == cudaErrorInvalidResourceHandle);  // never recorded
  REQUIRE(cudaEventRecord(a, nullptr) == cudaSuccess);
  volatile double sink = 0;
  for (int i = 0; i < 2000000; ++i) sink = sink + 1e-9 * i;
  REQUIRE(cudaEventRecord(b, nullptr) == cudaSuccess);
  REQUIRE(cudaEventRecord(untimed, nullptr) == cudaSuccess);
  CHECK(cudaEventElapsedTime(&ms, a, b) == cudaSuccess);
  CHECK(ms > 0.f);
  CHECK(ms < 10000.f);
  float back = 0.f;
  CHECK(cudaEventElapsedTime(&back, b, a) == cudaSuccess);
  CHECK(back == -ms);
  CHECK(cudaEventElapsedTime(&ms, a, untimed) == cudaErrorInvalidResourceHandle);
  CHECK(cudaEventElapsedTime(nullptr, a, b) == cudaErrorInvalidValue);
  for (cudaEvent_t e : {a, b, untimed}) CHECK(cudaEventDestroy(e) == cudaSuccess);
  CHECK(cudaEventElapsedTime(&ms, a, b) == cudaErrorInvalidResourceHandle);  // destroyed
  cudaGetLastError();
}

TEST_CASE("cuemu: the device exists only with PTOOL_CUDA_EMULATOR=1") {
  const char* before = std::getenv("PTOOL_CUDA_EMULATOR");
  const std::string saved = before ? before : "";
  int count = -1;
  setenv("PTOOL_CUDA_EMULATOR", "1", 1);
  CHECK(cudaGetDeviceCount(&count) == cudaSuccess);
  CHECK(count == 1);
  unsetenv("PTOOL_CUDA_EMULATOR");
  CHECK(cudaGetDeviceCount(&count) == cudaErrorNoDevice);
  CHECK(count == 0);
  if (before) setenv("PTOOL_CUDA_EMULATOR", saved.c_str(), 1);
  cudaGetLastError();
}

TEST_CASE("cuemu: bf16 conversion rounds to nearest, ties to even") {
  auto bits = [](float f) { return cuemu::float_to_bf16_bits(f); };
  CHECK(bits(1.0f) == 0x3f80);
  CHECK(bits(1.0f + 0x1p-8f) == 0x3f80);        // halfway, 0x3f80 is even
  CHECK(bits(1.0f + 3 * 0x1p-8f) == 0x3f82);    // halfway, rounds up to even
  CHECK(bits(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81);
  CHECK(bits(-2.0f) == 0xc000);
  CHECK(bits(3.4028235e38f) == 0x7f80);          // rounds to infinity
  CHECK(std::isnan(cuemu::bf16_bits_to_float(bits(std::nanf("")))));
}
