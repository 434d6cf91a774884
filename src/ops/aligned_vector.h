// std::vector with 64-byte aligned storage, for scratch that Eigen or vectorised loops read: their kernels take
// alignment-dependent paths (different summation orders), so results must not depend on where the allocator put
// a buffer (the CPU backend's own buffers are aligned the same way).
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace ptool {

inline constexpr std::size_t kCpuAlign = 64;

template <class T>
struct Aligned64Allocator {
  using value_type = T;
  Aligned64Allocator() = default;
  template <class U>
  Aligned64Allocator(const Aligned64Allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{kCpuAlign}));
  }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{kCpuAlign}); }
  template <class U>
  bool operator==(const Aligned64Allocator<U>&) const noexcept {
    return true;
  }
};

template <class T>
using AlignedVector = std::vector<T, Aligned64Allocator<T>>;

}  // namespace ptool
