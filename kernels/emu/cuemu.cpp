// cuemu: the scheduler that runs CUDA threads as fibers, the device built-ins it backs, and the runtime API on
// host memory. See kernels/emu/cuemu.h for what is emulated and checked.
#include "kernels/emu/cuemu.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "kernels/emu/include/cuda_runtime_api.h"

#if !defined(__x86_64__)
#error "cuemu switches fiber stacks with x86-64 instructions (cuemu_switch_stack); build with -DPTOOL_CUDA_EMULATOR=OFF"
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUEMU_ASAN 1
#else
#define CUEMU_ASAN 0
#endif

#if CUEMU_TSAN
#include <sanitizer/tsan_interface.h>
extern "C" {  // ThreadSanitizer's dynamic annotations (no public header declares them)
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
}
extern "C" {  // ThreadSanitizer's Java interface (tsan_interface_java.h, not installed)
void __tsan_java_init(unsigned long heap_begin, unsigned long heap_size);
void __tsan_java_free(unsigned long ptr, unsigned long size);
void __tsan_java_alloc(unsigned long ptr, unsigned long size);
}
// The kernels' __shared__ variables and the dynamic shared memory (cuemu.h and below put them in this section;
// the linker defines its bounds).
extern "C" char __start_cuemu_shared[];
extern "C" char __stop_cuemu_shared[];
#endif

// Stack switching (x86-64 System V): saves the callee-saved registers on the current stack, stores its stack
// pointer in *save_sp, and resumes the stack `next_sp` saved the same way. A few instructions, where swapcontext
// would also make a sigprocmask system call at every switch. MXCSR and the x87 control word are left alone:
// nothing in the emulator or the kernels changes them.
extern "C" void cuemu_switch_stack(void** save_sp, void* next_sp);
asm(R"(
  .text
  .globl cuemu_switch_stack
  .type cuemu_switch_stack, @function
cuemu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuemu_switch_stack, .-cuemu_switch_stack
  .section .note.GNU-stack, "", @progbits
  .text
)");

uint3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
dim3 blockDim, gridDim;

namespace cuemu {
namespace {

constexpr size_t kStackBytes = size_t{256} << 10;  // per CUDA thread; kernels keep small register-like arrays
constexpr size_t kDefaultSmem = size_t{48} << 10;
constexpr size_t kMaxSmemOptin = size_t{227} << 10;  // H100

Order g_order = [] {
  const char* e = std::getenv("PTOOL_CUDA_EMULATOR_ORDER");
  return e != nullptr && std::string(e) == "reverse" ? Order::reverse : Order::forward;
}();
bool reverse_order() { return g_order == Order::reverse; }

// ---- errors ------------------------------------------------------------------------------------------------------
cudaError_t g_last_error = cudaSuccess;
cudaError_t g_detail_error = cudaSuccess;  // the error g_error_detail describes
std::string g_error_detail;

cudaError_t fail(cudaError_t e, const std::string& detail) {
  g_last_error = e;
  g_detail_error = e;
  g_error_detail = "cuemu: " + detail;
  std::fprintf(stderr, "%s\n", g_error_detail.c_str());
  return e;
}

// ---- memory --------------------------------------------------------------------------------------------------------
std::mutex g_mem_mutex;
std::map<uintptr_t, size_t> g_device;  // base -> bytes
std::set<uintptr_t> g_pinned;
size_t g_device_bytes = 0;

bool in_device(const void* p, size_t bytes) {
  if (p == nullptr) return false;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  auto it = g_device.upper_bound(a);
  if (it == g_device.begin()) return false;
  --it;
  const size_t offset = a - it->first;  // upper_bound - 1: the last allocation starting at or before a
  return offset <= it->second && bytes <= it->second - offset;
}
bool touches_device(const void* p) { return in_device(p, 1); }

// Device allocations are 256-byte aligned, as cudaMalloc's. Under AddressSanitizer they come from operator new,
// whose redzones ASan checks. Otherwise each one ends where an inaccessible page begins (and starts a page after
// another), so a kernel that reads or writes past its end by more than the rounding to 256 bytes faults at once
// instead of silently using a neighbour's memory.
constexpr size_t kDeviceAlign = 256;
size_t page_bytes() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}
size_t device_rounded(size_t bytes) { return (bytes + kDeviceAlign - 1) / kDeviceAlign * kDeviceAlign; }
size_t device_data_pages(size_t bytes) { return (device_rounded(bytes) + page_bytes() - 1) / page_bytes(); }
void* device_alloc(size_t bytes) {
#if CUEMU_ASAN
  return ::operator new(bytes, std::align_val_t{kDeviceAlign}, std::nothrow);
#else
  const size_t page = page_bytes(), data = device_data_pages(bytes) * page;
  void* map = mmap(nullptr, data + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (map == MAP_FAILED) return nullptr;
  char* first = static_cast<char*>(map) + page;
  if (mprotect(first, data, PROT_READ | PROT_WRITE) != 0) {
    munmap(map, data + 2 * page);
    return nullptr;
  }
  return first + data - device_rounded(bytes);
#endif
}
void device_free(void* p, size_t bytes) {
#if CUEMU_ASAN
  (void)bytes;
  ::operator delete(p, std::align_val_t{kDeviceAlign});
#else
  const size_t page = page_bytes(), data = device_data_pages(bytes) * page;
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) / page * page;
  munmap(reinterpret_cast<char*>(first) - page, data + 2 * page);
#endif
}

// ---- race checking (ThreadSanitizer builds) ------------------------------------------------------------------------
// Built with -fsanitize=thread (PTOOL_TSAN), cuemu is a race checker for the kernels, as compute-sanitizer's racecheck
// is on the device. Every CUDA thread is a ThreadSanitizer fiber, and the switches between fibers order nothing
// (no_sync): only what orders threads on the device does. A CTA barrier (__syncthreads) or a warp's barrier
// (__syncwarp, and every warp-level operation: shuffles, ldmatrix, mma) orders what its threads did before it
// before what they do after it; atomics are relaxed atomics; a grid's threads start after the host's work before
// the launch, and the host goes on after all of them. Nothing orders one CTA after another: consecutive CTAs run
// on two sets of fibers, with barriers of their own, and the race history of shared memory (which a CTA has
// afresh) is cleared before each CTA. ThreadSanitizer then reports two threads that touch the same shared or
// device memory, at least one writing, with nothing between them: a missing __syncthreads or __syncwarp, or two
// CTAs writing the same output, whichever order the scheduler happens to run them in. (CTAs two apart share their
// fibers, so a race between those goes unseen.) The emulator's own bookkeeping, which fibers and the scheduler
// share without such ordering, is hidden from it.
//
// Clearing a history: ThreadSanitizer's Java interface resets the history of a range of its "Java heap" where an
// object is allocated. That heap is declared once as the section that holds all shared memory.
#if CUEMU_TSAN
// Hides (or, undoing a hide, shows again) this fiber's memory accesses from ThreadSanitizer; hides nest.
void hide_accesses(bool hide) {
  if (hide) {
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
  } else {
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  }
}
struct Bookkeeping {  // a scope whose memory accesses are the emulator's, not a kernel's
  Bookkeeping() { hide_accesses(true); }
  ~Bookkeeping() { hide_accesses(false); }
  Bookkeeping(const Bookkeeping&) = delete;
  Bookkeeping& operator=(const Bookkeeping&) = delete;
};
struct KernelMemory {  // inside a Bookkeeping scope: accesses made for a kernel, which are checked
  KernelMemory() { hide_accesses(false); }
  ~KernelMemory() { hide_accesses(true); }
  KernelMemory(const KernelMemory&) = delete;
  KernelMemory& operator=(const KernelMemory&) = delete;
};
void happens_before_release(const void* sync) { __tsan_release(const_cast<void*>(sync)); }
void happens_before_acquire(const void* sync) { __tsan_acquire(const_cast<void*>(sync)); }
#if defined(__clang__)  // no instrumentation at all: Clang's no_sanitize("thread") keeps the entry/exit hooks
#define CUEMU_NO_RACE_CHECK __attribute__((disable_sanitizer_instrumentation))
#else
#define CUEMU_NO_RACE_CHECK __attribute__((no_sanitize_thread))
#endif
constexpr int kFiberSets = 2;
void forget_shared_memory() {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(__start_cuemu_shared);  // 16-byte aligned (g_smem_block)
  const uintptr_t bytes = (reinterpret_cast<uintptr_t>(__stop_cuemu_shared) - begin + 7) & ~uintptr_t{7};
  static const bool declared = (__tsan_java_init(begin, bytes), true);
  (void)declared;
  __tsan_java_free(begin, bytes);   // drops the synchronization objects there
  __tsan_java_alloc(begin, bytes);  // clears the history
}
#else
struct Bookkeeping {
  Bookkeeping() {}  // user-provided: a scope guard is "used" by existing
  Bookkeeping(const Bookkeeping&) = delete;
  Bookkeeping& operator=(const Bookkeeping&) = delete;
};
using KernelMemory = Bookkeeping;
void happens_before_release(const void*) {}
void happens_before_acquire(const void*) {}
#define CUEMU_NO_RACE_CHECK
constexpr int kFiberSets = 1;
void forget_shared_memory() {}
#endif

// ---- fibers ---------------------------------------------------------------------------------------------------------
struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  std::unique_ptr<char[]> stack;
  uint3 tid{};
  int warp = 0, lane = 0;
  bool done = false;
  void* fake_stack = nullptr;  // ASan's bookkeeping of this fiber's stack
  void* tsan = nullptr;        // ThreadSanitizer's fiber (race-checking builds)
  // cp.async: the copies this thread issued and has not waited for, with the group each belongs to (groups are
  // numbered by commit; `committed` is the number of commits so far, and the open group's number).
  struct AsyncCopy {
    void* dst;
    unsigned char data[16];
    size_t bytes;
    uint64_t group;
  };
  std::vector<AsyncCopy> copies;
  uint64_t committed = 0;
};

// A barrier of the `live` threads of a CTA or a warp, by generation: the last arrival moves the generation on,
// which releases the others. A thread that exits no longer counts, and may be the one that completes it.
struct Barrier {
  int live = 0, arrived = 0;
  uint64_t gen = 1;
  // What a race-checking build's arrivals release and departures acquire: one per fiber set (consecutive CTAs
  // must not reach each other through it) and per generation's parity (a thread that passes and arrives again
  // before a slower one has left must not reach that one through the barrier).
  char order[kFiberSets][2] = {};
  void reset(int threads) {
    live = threads;
    arrived = 0;
  }
  // True when this arrival completed the barrier.
  bool arrive() {
    ++arrived;
    return release_if_complete();
  }
  void leave() {
    --live;
    if (arrived > 0) release_if_complete();
  }
  bool release_if_complete() {
    if (arrived != live) return false;
    arrived = 0;
    ++gen;
    return true;
  }
};

struct Warp {
  Barrier bar;
  // Two of each, used alternately by successive warp operations (by barrier generation): a lane that is
  // ahead writes the next operation's copy while the others still read this one, so one barrier per
  // operation suffices.
  alignas(16) unsigned char slot[2][32][16];
  const uint16_t* rows[2][32];
  uint32_t a[2][32][4], b[2][32][2];
  uint64_t stamp[2][32] = {};  // the generation in which each lane last wrote each copy; gen starts at 1
};

struct Cta {
  Barrier bar;
  uint64_t progress = 0;
  std::vector<Warp> warps;
};

// Dynamic shared memory of the running CTA: a heap block of the launch's size (which AddressSanitizer bounds), or
// in race-checking builds a static block in the section of all shared memory (see forget_shared_memory).
#if CUEMU_TSAN
alignas(16) unsigned char g_smem_block[kMaxSmemOptin] __attribute__((section("cuemu_shared")));
class DynamicSmem {
 public:
  void resize(size_t bytes) { bytes_ = bytes; }
  unsigned char* data() { return g_smem_block; }
  size_t size() const { return bytes_; }
  bool empty() const { return bytes_ == 0; }

 private:
  size_t bytes_ = 0;
};
#else
using DynamicSmem = std::vector<unsigned char>;
#endif

struct Scheduler {
  void* sched_sp = nullptr;
  void* sched_tsan = nullptr;  // the launching OS thread's ThreadSanitizer state
  char cta_start = 0, cta_end = 0;  // orders the host and earlier CTAs before a CTA, and its threads before the host
  void* sched_fake = nullptr;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
  std::vector<std::unique_ptr<Fiber>> fibers[kFiberSets];
  int set = 0;  // the fiber set of the running CTA
  Cta cta;
  int current = -1;
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  const char* kernel = "";
  std::string device_error;  // the first error of this launch
  DynamicSmem smem;
};

std::mutex g_launch_mutex;  // one grid at a time, whatever OS thread launches it
Scheduler g_s;
std::map<const void*, size_t> g_smem_optin;  // per kernel, as cudaFuncSetAttribute set it
std::mutex g_smem_optin_mutex;

size_t smem_optin(const void* func) {
  std::lock_guard<std::mutex> lock(g_smem_optin_mutex);
  const auto it = g_smem_optin.find(func);
  return it == g_smem_optin.end() ? 0 : it->second;
}

Fiber& fiber(size_t i) { return *g_s.fibers[g_s.set][i]; }
Fiber& cur() { return fiber(static_cast<size_t>(g_s.current)); }

// Not race-instrumented: a thread's last switch never returns, and an instrumented frame would stay open.
CUEMU_NO_RACE_CHECK void switch_to_scheduler(Fiber& f, bool exiting) {
#if CUEMU_TSAN
  __tsan_switch_to_fiber(g_s.sched_tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if CUEMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.fake_stack, g_s.sched_stack_bottom, g_s.sched_stack_size);
#else
  (void)exiting;
#endif
  cuemu_switch_stack(&f.sp, g_s.sched_sp);
#if CUEMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

void yield() { switch_to_scheduler(cur(), false); }

void record_device_error(const std::string& what);

// Called when a thread's body returns (its own frame: fiber_main never returns, so under ASan a local of its
// would leave its stack redzones poisoned for the next CTA's threads).
void finish_thread(Fiber& f) {
  if (!f.copies.empty()) record_device_error("exits with cp.async copies it never waited for");
  happens_before_release(&g_s.cta_end);
  Bookkeeping emulator;
  f.done = true;
  Cta& c = g_s.cta;
  c.bar.leave();
  c.warps[static_cast<size_t>(f.warp)].bar.leave();
  ++c.progress;
}

// Not race-instrumented: it never returns (each CTA starts it afresh on the same stack).
CUEMU_NO_RACE_CHECK void fiber_main() {
#if CUEMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_s.sched_stack_bottom, &g_s.sched_stack_size);
#endif
  happens_before_acquire(&g_s.cta_start);
  g_s.body(g_s.body_ctx);
  Fiber& f = cur();
  finish_thread(f);
  switch_to_scheduler(f, true);
  std::abort();  // a finished fiber is never resumed
}

void resume(int i) {
  Fiber& f = fiber(static_cast<size_t>(i));
  g_s.current = i;
  threadIdx = f.tid;
#if CUEMU_TSAN
  __tsan_switch_to_fiber(f.tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if CUEMU_ASAN
  __sanitizer_start_switch_fiber(&g_s.sched_fake, f.stack.get(), kStackBytes);
#endif
  cuemu_switch_stack(&g_s.sched_sp, f.sp);
#if CUEMU_ASAN
  __sanitizer_finish_switch_fiber(g_s.sched_fake, nullptr, nullptr);
#endif
}

std::string coords(const uint3& t) {
  return "block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
         std::to_string(blockIdx.z) + ") thread (" + std::to_string(t.x) + "," + std::to_string(t.y) + "," +
         std::to_string(t.z) + ")";
}

void record_device_error(const std::string& what) {
  Bookkeeping emulator;
  if (g_s.device_error.empty())
    g_s.device_error = std::string("kernel ") + g_s.kernel + ": " + coords(cur().tid) + ": " + what;
}

void arrive_and_wait(Barrier& b) {
  const uint64_t gen = b.gen;
  happens_before_release(&b.order[g_s.set][gen & 1]);
  bool passed;
  {
    Bookkeeping emulator;
    ++g_s.cta.progress;
    passed = b.arrive();
  }
  // No Bookkeeping scope stays open across a switch: a deadlock may leave this fiber here for good.
  if (!passed)
    while (b.gen == gen) yield();
  happens_before_acquire(&b.order[g_s.set][gen & 1]);
}

void warp_barrier() { arrive_and_wait(g_s.cta.warps[static_cast<size_t>(cur().warp)].bar); }

// Whether lane src took part in the warp operation that wrote copy `buf` in generation `gen`.
bool valid_lane(int src, uint64_t buf, uint64_t gen) {
  const Warp& w = g_s.cta.warps[static_cast<size_t>(cur().warp)];
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  const int lanes = static_cast<int>(std::min(32u, threads - static_cast<unsigned>(cur().warp) * 32));
  if (src < 0 || src >= lanes || w.stamp[buf][src] != gen) {
    record_device_error("warp operation reads lane " + std::to_string(src) + ", which " +
                        (src >= 0 && src < lanes ? "has exited or is elsewhere" : "does not exist"));
    return false;
  }
  return true;
}

bool all_lanes_valid(uint64_t buf, uint64_t gen) {
  for (int i = 0; i < 32; ++i)
    if (!valid_lane(i, buf, gen)) return false;
  return true;
}

// Publishes this lane's part of a warp operation: returns the copy to use and the generation to check against.
std::pair<uint64_t, uint64_t> begin_warp_op(Warp& w, int lane) {
  const uint64_t gen = w.bar.gen, buf = gen & 1;
  w.stamp[buf][lane] = gen;
  return {buf, gen};
}

// A fresh stack that cuemu_switch_stack resumes into fiber_main, as if fiber_main had just been called.
void* initial_stack(char* base) {
  auto* top = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(base) + kStackBytes) & ~uintptr_t{15});
  *--top = 0;                                           // fiber_main's return address: it never returns
  *--top = reinterpret_cast<uint64_t>(&fiber_main);     // popped by cuemu_switch_stack's ret
  for (int i = 0; i < 6; ++i) *--top = 0;               // rbp, rbx, r12-r15
  return top;
}

// Runs one CTA to completion; returns false (with g_s.device_error set) on a deadlock.
bool run_cta(unsigned nthreads) {
  Bookkeeping emulator;
  // Barrier generations keep counting across CTAs, so no warp-operation stamp of an earlier CTA can match.
  Cta& c = g_s.cta;
  c.bar.reset(static_cast<int>(nthreads));
  c.progress = 0;
  const size_t nwarps = (nthreads + 31) / 32;
  if (c.warps.size() < nwarps) c.warps.resize(nwarps);
  for (size_t w = 0; w < nwarps; ++w) c.warps[w].bar.reset(static_cast<int>(std::min<size_t>(32, nthreads - w * 32)));
  if (!g_s.smem.empty()) std::memset(g_s.smem.data(), 0xff, g_s.smem.size());
  forget_shared_memory();
  for (unsigned i = 0; i < nthreads; ++i) {
    Fiber& f = fiber(i);
    f.done = false;
    f.fake_stack = nullptr;
#if CUEMU_ASAN
    // A finished thread's frames never returned: clear what ASan marked in them before the stack is reused.
    __asan_unpoison_memory_region(f.stack.get(), kStackBytes);
#endif
    f.copies.clear();
    f.committed = 0;
    f.sp = initial_stack(f.stack.get());
  }
  const bool reverse = reverse_order();
  happens_before_release(&g_s.cta_start);
  while (c.bar.live > 0) {
    const uint64_t before = c.progress;
    for (size_t kw = 0; kw < nwarps; ++kw) {
      // Each warp runs as far as it can (to a __syncthreads it cannot pass, or its end) before the next one
      // starts: the warps drift as far apart as the barriers allow, which exposes a missing __syncthreads.
      const size_t w = reverse ? nwarps - 1 - kw : kw;
      const unsigned first = static_cast<unsigned>(w * 32), lanes = std::min(32u, nthreads - first);
      uint64_t at = 0;
      do {
        at = c.progress;
        for (unsigned kl = 0; kl < lanes; ++kl) {
          const unsigned i = first + (reverse ? lanes - 1 - kl : kl);
          if (!fiber(i).done) resume(static_cast<int>(i));
        }
      } while (c.progress != at);
    }
    if (c.bar.live > 0 && c.progress == before) {
      int waiting_block = c.bar.arrived, waiting_warp = 0;
      for (size_t w = 0; w < nwarps; ++w) waiting_warp += c.warps[w].bar.arrived;
      g_s.device_error = std::string("kernel ") + g_s.kernel + ": deadlock in block (" + std::to_string(blockIdx.x) +
                         "," + std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) + "): " +
                         std::to_string(c.bar.live) + " live threads, " + std::to_string(waiting_block) +
                         " waiting at __syncthreads, " + std::to_string(waiting_warp) +
                         " at warp-level operations whose lanes are elsewhere";
      return false;
    }
  }
  return g_s.device_error.empty();
}

void ensure_fibers(unsigned n) {
  for (auto& set : g_s.fibers)
    while (set.size() < n) {
      set.push_back(std::make_unique<Fiber>());
      Fiber& f = *set.back();
      f.stack.reset(new char[kStackBytes]);
#if CUEMU_TSAN
      f.tsan = __tsan_create_fiber(0);
#endif
    }
}

// A race-checking build names each fiber after the CUDA thread it runs, for ThreadSanitizer's reports.
void name_fibers(unsigned nthreads) {
#if CUEMU_TSAN
  for (const auto& set : g_s.fibers)
    for (unsigned i = 0; i < nthreads; ++i) {
      Fiber& f = *set[i];
      char name[64];
      std::snprintf(name, sizeof name, "thread (%u,%u,%u) of %s", f.tid.x, f.tid.y, f.tid.z, g_s.kernel);
      __tsan_set_fiber_name(f.tsan, name);
    }
#else
  (void)nthreads;
#endif
}
// A race-checking build gives a fiber left inside its body by a deadlock a fresh ThreadSanitizer state (its open
// frames would stay on the old one).
void renew_stuck_fibers(unsigned nthreads) {
#if CUEMU_TSAN
  for (unsigned i = 0; i < nthreads; ++i) {
    Fiber& f = fiber(i);
    if (f.done) continue;
    // What it did happens before what the host does next, as if it had finished (its state only, same stack).
    __tsan_switch_to_fiber(f.tsan, __tsan_switch_to_fiber_no_sync);
    happens_before_release(&g_s.cta_end);
    __tsan_switch_to_fiber(g_s.sched_tsan, __tsan_switch_to_fiber_no_sync);
    __tsan_destroy_fiber(f.tsan);
    f.tsan = __tsan_create_fiber(0);
  }
#else
  (void)nthreads;
#endif
}

}  // namespace

// ---- built-ins ------------------------------------------------------------------------------------------------------

void syncthreads() { arrive_and_wait(g_s.cta.bar); }

void syncwarp() { warp_barrier(); }

int lane_id() { return cur().lane; }

void warp_exchange(const void* mine, void* out, size_t bytes, int src_lane) {
  // Registers pass through the emulator's slots; no kernel memory is touched.
  Fiber& f = cur();
  Warp& w = g_s.cta.warps[static_cast<size_t>(f.warp)];
  uint64_t buf, gen;
  {
    Bookkeeping emulator;
    std::tie(buf, gen) = begin_warp_op(w, f.lane);
    std::memcpy(w.slot[buf][f.lane], mine, bytes);
  }
  warp_barrier();
  if (valid_lane(src_lane, buf, gen))
    std::memcpy(out, w.slot[buf][src_lane], bytes);
  else
    std::memset(out, 0, bytes);
}

void* dynamic_smem() { return g_s.smem.data(); }

// The device copies asynchronously: the bytes reach shared memory at some point before the wait that covers
// them. The forward order writes them at the issue (the earliest), which exposes a copy into a tile that other
// threads still read; the reverse order at the wait (the latest), which exposes a read before the wait, or
// before the barrier that must follow the wait when other threads read the tile.
void cp_async(void* dst, const void* src, size_t bytes) {
  const auto* d = static_cast<const unsigned char*>(dst);
  const auto* base = g_s.smem.data();
  if (bytes > 16 || d < base || d + bytes > base + g_s.smem.size() ||
      reinterpret_cast<uintptr_t>(dst) % bytes != 0 || reinterpret_cast<uintptr_t>(src) % bytes != 0) {
    record_device_error("cp.async of " + std::to_string(bytes) +
                        " bytes outside dynamic shared memory or not aligned to its size");
    return;
  }
  if (!in_device(src, bytes)) {
    record_device_error("cp.async reads outside device memory");
    return;
  }
  if (!reverse_order()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  Fiber& f = cur();
  Fiber::AsyncCopy c{dst, {}, bytes, f.committed};
  std::memcpy(c.data, src, bytes);  // the source is read at the issue, the destination written at the wait
  Bookkeeping emulator;
  f.copies.push_back(c);
}

void cp_async_commit() {
  Bookkeeping emulator;
  ++cur().committed;
}

void cp_async_wait(int pending) {
  Bookkeeping emulator;
  Fiber& f = cur();
  // Groups below committed - pending are complete; the open (uncommitted) group is not covered.
  const uint64_t done_below = f.committed > static_cast<uint64_t>(pending) ? f.committed - pending : 0;
  size_t kept = 0;
  for (Fiber::AsyncCopy& c : f.copies) {
    if (c.group < done_below) {
      KernelMemory lands;  // written by this thread, now
      std::memcpy(c.dst, c.data, c.bytes);
    } else
      f.copies[kept++] = c;
  }
  f.copies.resize(kept);
}

void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* row, bool trans) {
  Fiber& f = cur();
  Warp& w = g_s.cta.warps[static_cast<size_t>(f.warp)];
  uint64_t buf, gen;
  {
    Bookkeeping emulator;  // but the shared memory the rows point to is read below, for the kernel
    std::tie(buf, gen) = begin_warp_op(w, f.lane);
    w.rows[buf][f.lane] = row;
  }
  const uint16_t* const* rows = w.rows[buf];
  warp_barrier();
  const int g = f.lane >> 2, t = f.lane & 3;
  const bool ok = all_lanes_valid(buf, gen);
  for (int i = 0; i < 4; ++i) {
    if (!ok) {
      r[i] = 0;
      continue;
    }
    uint16_t lo, hi;
    if (trans) {
      lo = rows[8 * i + 2 * t][g];
      hi = rows[8 * i + 2 * t + 1][g];
    } else {
      lo = rows[8 * i + g][2 * t];
      hi = rows[8 * i + g][2 * t + 1];
    }
    r[i] = lo | (static_cast<uint32_t>(hi) << 16);
  }
}

void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Fiber& f = cur();
  Warp& w = g_s.cta.warps[static_cast<size_t>(f.warp)];
  uint64_t buf, gen;
  {
    Bookkeeping emulator;  // registers only
    std::tie(buf, gen) = begin_warp_op(w, f.lane);
    std::memcpy(w.a[buf][f.lane], a, sizeof a);
    w.b[buf][f.lane][0] = b0;
    w.b[buf][f.lane][1] = b1;
  }
  warp_barrier();
  if (all_lanes_valid(buf, gen)) {
    // This lane's rows g, g + 8 of A come from lanes 4g..4g+3 (registers 0, 2 and 1, 3), its columns 2t, 2t + 1
    // of B from lanes 4n..4n+3 with n the column (registers 0 and 1); k = 2t' + h (+ 8) of lane 4n + t'.
    auto half = [](uint32_t v, int hi) { return bf16_bits_to_float(static_cast<uint16_t>(hi ? v >> 16 : v)); };
    const int g = f.lane >> 2, t = f.lane & 3;
    float A[2][16], B[2][16];
    for (int tp = 0; tp < 4; ++tp)
      for (int h = 0; h < 2; ++h) {
        for (int i = 0; i < 2; ++i) {
          const uint32_t* ar = w.a[buf][4 * g + tp];
          A[i][2 * tp + h] = half(ar[i], h);
          A[i][2 * tp + 8 + h] = half(ar[2 + i], h);
          const uint32_t* br = w.b[buf][4 * (2 * t + i) + tp];
          B[i][2 * tp + h] = half(br[0], h);
          B[i][2 * tp + 8 + h] = half(br[1], h);
        }
      }
    for (int i = 0; i < 4; ++i) {  // d = {(g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)}
      float acc = d[i];
      for (int k = 0; k < 16; ++k) acc += A[i >> 1][k] * B[i & 1][k];
      d[i] = acc;
    }
  }
}

// ---- launches -------------------------------------------------------------------------------------------------------

void run_grid(const LaunchConfig& cfg, void (*body)(void*), void* ctx) {
  const std::string name = cfg.name;
  const uint64_t threads = uint64_t{cfg.block.x} * cfg.block.y * cfg.block.z;
  if (cfg.grid.x == 0 || cfg.grid.y == 0 || cfg.grid.z == 0 || threads == 0) {
    fail(cudaErrorInvalidConfiguration, "kernel " + name + ": empty grid or block (" + std::to_string(cfg.grid.x) +
                                            "x" + std::to_string(cfg.grid.y) + "x" + std::to_string(cfg.grid.z) +
                                            " blocks of " + std::to_string(threads) + " threads)");
    return;
  }
  if (threads > 1024 || cfg.block.z > 64 || cfg.grid.y > 65535 || cfg.grid.z > 65535 ||
      cfg.grid.x > 2147483647u) {
    fail(cudaErrorInvalidConfiguration, "kernel " + name + ": launch exceeds the device's limits (" +
                                            std::to_string(threads) + " threads per block, grid y " +
                                            std::to_string(cfg.grid.y) + ", z " + std::to_string(cfg.grid.z) + ")");
    return;
  }
  if (cfg.smem > kMaxSmemOptin) {
    fail(cudaErrorInvalidValue, "kernel " + name + ": " + std::to_string(cfg.smem) +
                                    " bytes of dynamic shared memory, more than the device's " +
                                    std::to_string(kMaxSmemOptin));
    return;
  }
  if (cfg.smem > kDefaultSmem && cfg.smem > smem_optin(cfg.func)) {
    fail(cudaErrorInvalidValue, "kernel " + name + ": " + std::to_string(cfg.smem) +
                                    " bytes of dynamic shared memory need cudaFuncSetAttribute(" +
                                    "cudaFuncAttributeMaxDynamicSharedMemorySize) on this kernel first");
    return;
  }
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  Bookkeeping emulator;  // the scheduler's state, which fibers a deadlock left inside their bodies have read
  ensure_fibers(static_cast<unsigned>(threads));
  g_s.body = body;
  g_s.body_ctx = ctx;
  g_s.kernel = cfg.name;
  g_s.device_error.clear();
  g_s.smem.resize((cfg.smem + 15) & ~size_t{15});  // filled with 0xff for each CTA
  blockDim = cfg.block;
  gridDim = cfg.grid;
  for (const auto& set : g_s.fibers)
    for (unsigned i = 0; i < threads; ++i) {
      Fiber& f = *set[i];
      f.tid = uint3{i % cfg.block.x, (i / cfg.block.x) % cfg.block.y, i / (cfg.block.x * cfg.block.y)};
      f.warp = static_cast<int>(i / 32);
      f.lane = static_cast<int>(i % 32);
    }
#if CUEMU_TSAN
  g_s.sched_tsan = __tsan_get_current_fiber();
#endif
  name_fibers(static_cast<unsigned>(threads));
  const uint64_t ctas = uint64_t{cfg.grid.x} * cfg.grid.y * cfg.grid.z;
  bool ok = true;
  for (uint64_t k = 0; k < ctas && ok; ++k) {
    const uint64_t b = reverse_order() ? ctas - 1 - k : k;
    blockIdx = uint3{static_cast<unsigned>(b % cfg.grid.x), static_cast<unsigned>(b / cfg.grid.x % cfg.grid.y),
                     static_cast<unsigned>(b / (uint64_t{cfg.grid.x} * cfg.grid.y))};
    g_s.set = static_cast<int>(k % kFiberSets);
    ok = run_cta(static_cast<unsigned>(threads));
  }
  if (!ok) renew_stuck_fibers(static_cast<unsigned>(threads));
  happens_before_acquire(&g_s.cta_end);  // the host goes on after every thread of the grid
  g_s.current = -1;
  if (!ok) fail(cudaErrorLaunchFailure, g_s.device_error);
}

void set_order(Order o) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_order = o;
}
Order order() { return g_order; }

bool enabled() {
  const char* e = std::getenv("PTOOL_CUDA_EMULATOR");
  return e != nullptr && std::string(e) == "1";
}

bool is_device_range(const void* p, size_t bytes) { return in_device(p, bytes); }

// ---- bf16 -------------------------------------------------------------------------------------------------------

uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace cuemu

// ---- the runtime API ------------------------------------------------------------------------------------------------

using cuemu::fail;
namespace {
// Streams and events only need to exist (work runs when it is enqueued): a registry of live handles.
class Handles {
 public:
  void* make() {
    auto* h = new char;
    std::lock_guard<std::mutex> lock(mutex_);
    live_.insert(h);
    return h;
  }
  bool destroy(const void* h) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (live_.erase(h) == 0) return false;
    delete static_cast<const char*>(h);
    return true;
  }
  bool valid(const void* h) {
    std::lock_guard<std::mutex> lock(mutex_);
    return live_.count(h) != 0;
  }

 private:
  std::mutex mutex_;
  std::set<const void*> live_;
};
Handles g_streams, g_events;

bool valid_stream(cudaStream_t s) { return s == nullptr || g_streams.valid(s); }
bool valid_event(cudaEvent_t e) { return g_events.valid(e); }

// What cudaEventElapsedTime needs: work runs when it is enqueued, so an event's time is the host's at its record.
struct EventTiming {
  bool timing = true;  // created without cudaEventDisableTiming
  bool recorded = false;
  std::chrono::steady_clock::time_point at;
};
std::mutex g_timing_mutex;
std::map<const void*, EventTiming> g_timing;
}  // namespace

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return fail(cudaErrorInvalidValue, "cudaGetDeviceCount: null pointer");
  *count = cuemu::enabled() ? 1 : 0;
  return *count ? cudaSuccess : cudaErrorNoDevice;
}

cudaError_t cudaSetDevice(int device) {
  if (!cuemu::enabled() || device != 0) return fail(cudaErrorInvalidDevice, "cudaSetDevice: no such device");
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return fail(cudaErrorInvalidValue, "cudaGetDevice: null pointer");
  *device = 0;
  return cuemu::enabled() ? cudaSuccess : cudaErrorNoDevice;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (prop == nullptr) return fail(cudaErrorInvalidValue, "cudaGetDeviceProperties: null pointer");
  if (!cuemu::enabled() || device != 0) return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties: no device");
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "cuemu (CUDA emulated on the host, H100 limits)");
  prop->totalGlobalMem = size_t{80} << 30;
  prop->sharedMemPerBlock = cuemu::kDefaultSmem;
  prop->sharedMemPerBlockOptin = cuemu::kMaxSmemOptin;
  prop->maxThreadsPerBlock = 1024;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->warpSize = 32;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (free_bytes == nullptr || total_bytes == nullptr) return fail(cudaErrorInvalidValue, "cudaMemGetInfo: null");
  std::lock_guard<std::mutex> lock(cuemu::g_mem_mutex);
  *total_bytes = size_t{80} << 30;
  *free_bytes = *total_bytes - std::min(*total_bytes, cuemu::g_device_bytes);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (p == nullptr) return fail(cudaErrorInvalidValue, "cudaMalloc: null pointer");
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  void* m = cuemu::device_alloc(bytes);
  if (m == nullptr) return fail(cudaErrorMemoryAllocation, "cudaMalloc: out of memory");
  std::memset(m, 0xff, bytes);  // as garbage as the device's: NaN as fp32 or bf16, so a read before a write shows
  std::lock_guard<std::mutex> lock(cuemu::g_mem_mutex);
  cuemu::g_device[reinterpret_cast<uintptr_t>(m)] = bytes;
  cuemu::g_device_bytes += bytes;
  *p = m;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(cuemu::g_mem_mutex);
  auto it = cuemu::g_device.find(reinterpret_cast<uintptr_t>(p));
  if (it == cuemu::g_device.end()) return fail(cudaErrorInvalidValue, "cudaFree: not a device allocation");
  cuemu::g_device_bytes -= it->second;
  cuemu::device_free(p, it->second);
  cuemu::g_device.erase(it);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** p, size_t bytes) {
  if (p == nullptr) return fail(cudaErrorInvalidValue, "cudaMallocHost: null pointer");
  *p = ::operator new(bytes ? bytes : 1, std::align_val_t{256}, std::nothrow);
  if (*p == nullptr) return fail(cudaErrorMemoryAllocation, "cudaMallocHost: out of memory");
  std::lock_guard<std::mutex> lock(cuemu::g_mem_mutex);
  cuemu::g_pinned.insert(reinterpret_cast<uintptr_t>(*p));
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* p) {
  if (p == nullptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(cuemu::g_mem_mutex);
  if (cuemu::g_pinned.erase(reinterpret_cast<uintptr_t>(p)) == 0)
    return fail(cudaErrorInvalidValue, "cudaFreeHost: not a cudaMallocHost allocation");
  ::operator delete(p, std::align_val_t{256});
  return cudaSuccess;
}

namespace {
const char* kind_name(cudaMemcpyKind k) {
  switch (k) {
    case cudaMemcpyHostToHost: return "HostToHost";
    case cudaMemcpyHostToDevice: return "HostToDevice";
    case cudaMemcpyDeviceToHost: return "DeviceToHost";
    case cudaMemcpyDeviceToDevice: return "DeviceToDevice";
    case cudaMemcpyDefault: return "Default";
  }
  return "?";
}

// Each pointer must be device memory (the whole range) exactly when the direction says so.
cudaError_t check_copy(const char* call, void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return fail(cudaErrorInvalidValue, std::string(call) + ": null pointer");
  const bool dst_dev = kind == cudaMemcpyDeviceToDevice || kind == cudaMemcpyHostToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToDevice || kind == cudaMemcpyDeviceToHost;
  if (kind == cudaMemcpyDefault) return cudaSuccess;
  auto side = [&](const void* p, bool dev, const char* which) -> cudaError_t {
    if (dev && !cuemu::in_device(p, bytes))
      return fail(cudaErrorInvalidValue, std::string(call) + " (" + kind_name(kind) + ", " + std::to_string(bytes) +
                                             " bytes): the " + which +
                                             " is not inside one device allocation for the whole range");
    if (!dev && cuemu::touches_device(p))
      return fail(cudaErrorInvalidValue, std::string(call) + " (" + kind_name(kind) + "): the " + which +
                                             " is device memory but the direction says host");
    return cudaSuccess;
  };
  if (cudaError_t e = side(dst, dst_dev, "destination"); e != cudaSuccess) return e;
  return side(src, src_dev, "source");
}
}  // namespace

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync: unknown stream");
  if (cudaError_t e = check_copy("cudaMemcpyAsync", dst, src, bytes, kind); e != cudaSuccess) return e;
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* p, int value, size_t bytes) { return cudaMemsetAsync(p, value, bytes, nullptr); }

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle, "cudaMemsetAsync: unknown stream");
  if (bytes == 0) return cudaSuccess;
  if (!cuemu::in_device(p, bytes))
    return fail(cudaErrorInvalidValue, "cudaMemsetAsync: " + std::to_string(bytes) +
                                           " bytes are not inside one device allocation");
  std::memset(p, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  if (s == nullptr) return fail(cudaErrorInvalidValue, "cudaStreamCreate: null pointer");
  *s = static_cast<cudaStream_t>(g_streams.make());
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (s == nullptr || !g_streams.destroy(s))
    return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: unknown stream");
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize: unknown stream");
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags) {
  if (e == nullptr) return fail(cudaErrorInvalidValue, "cudaEventCreate: null pointer");
  *e = static_cast<cudaEvent_t>(g_events.make());
  std::lock_guard<std::mutex> lock(g_timing_mutex);
  g_timing[*e].timing = (flags & cudaEventDisableTiming) == 0;
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (!g_events.destroy(e)) return fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy: unknown event");
  std::lock_guard<std::mutex> lock(g_timing_mutex);
  g_timing.erase(e);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!valid_event(e) || !valid_stream(s))
    return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: unknown event or stream");
  std::lock_guard<std::mutex> lock(g_timing_mutex);
  EventTiming& t = g_timing[e];
  t.recorded = true;
  t.at = std::chrono::steady_clock::now();
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (ms == nullptr) return fail(cudaErrorInvalidValue, "cudaEventElapsedTime: null pointer");
  if (!valid_event(start) || !valid_event(end))
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: unknown event");
  std::lock_guard<std::mutex> lock(g_timing_mutex);
  const EventTiming &a = g_timing[start], &b = g_timing[end];
  if (!a.timing || !b.timing)
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event was created with timing disabled");
  if (!a.recorded || !b.recorded)
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event was never recorded");
  *ms = std::chrono::duration<float, std::milli>(b.at - a.at).count();
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!valid_event(e)) return fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: unknown event");
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  if (!valid_event(e) || !valid_stream(s))
    return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: unknown event or stream");
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = cuemu::g_last_error;
  cuemu::g_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return cuemu::g_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

// The detail of the last failure when it is the error asked about (the emulator knows more than a code).
const char* cudaGetErrorString(cudaError_t e) {
  if (e == cudaErrorNoDevice) return "no CUDA-capable device is detected (cuemu: set PTOOL_CUDA_EMULATOR=1)";
  if (e != cudaSuccess && e == cuemu::g_detail_error) return cuemu::g_error_detail.c_str();
  return e == cudaSuccess ? "no error" : cudaGetErrorName(e);
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (func == nullptr || attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > cuemu::kMaxSmemOptin)
    return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: unsupported attribute or value " +
                                           std::to_string(value));
  std::lock_guard<std::mutex> lock(cuemu::g_smem_optin_mutex);
  cuemu::g_smem_optin[func] = static_cast<size_t>(value);
  return cudaSuccess;
}
