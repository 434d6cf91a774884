// cuemu: cub::DeviceRadixSort::SortPairs on the host, with CUB's contract: a first call with d_temp_storage null
// only sets temp_storage_bytes; the second sorts stably by the key bits [begin_bit, end_bit), signed keys in
// signed order (CUB flips the sign bit before taking the bits), and fails with cudaErrorInvalidValue when the
// temporary storage is smaller than asked for (as CUB's AliasTemporaries does). Beyond CUB it checks that every
// buffer lies inside a device allocation and that the outputs do not overlap the inputs.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cuda_runtime_api.h"

namespace cub {

namespace cuemu_detail {

// The bits [begin_bit, end_bit) of the key after CUB's twiddle; 0 <= begin_bit <= end_bit <= bits of K.
template <class K>
uint64_t radix_digits(K key, int begin_bit, int end_bit) {
  using U = std::make_unsigned_t<K>;
  U u = static_cast<U>(key);
  if constexpr (std::is_signed_v<K>) u = static_cast<U>(u ^ (U(1) << (sizeof(K) * 8 - 1)));
  const int width = end_bit - begin_bit;
  if (width == 0) return 0;
  const uint64_t v = static_cast<uint64_t>(u) >> begin_bit;
  return width == 64 ? v : v & ((uint64_t{1} << width) - 1);
}

inline bool device_buffer(const char* arg, const void* p, size_t bytes) {
  if (cuemu::is_device_range(p, bytes)) return true;
  std::fprintf(stderr,
               "cuemu: cub::DeviceRadixSort::SortPairs: %s (%p, %zu bytes) is not inside one device allocation\n", arg,
               p, bytes);
  return false;
}

inline bool disjoint(const void* a, const void* b, size_t bytes) {
  const auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return x + bytes <= y || y + bytes <= x;
}

}  // namespace cuemu_detail

struct DeviceRadixSort {
  template <class K, class V>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in, K* d_keys_out,
                               const V* d_values_in, V* d_values_out, int num_items, int begin_bit = 0,
                               int end_bit = sizeof(K) * 8, cudaStream_t = 0) {
    static_assert(std::is_integral_v<K> && !std::is_same_v<K, bool>, "cuemu sorts integer keys only");
    namespace d = cuemu_detail;
    if (num_items < 0 || begin_bit < 0 || begin_bit > end_bit || end_bit > static_cast<int>(sizeof(K) * 8))
      return cudaErrorInvalidValue;
    const size_t n = static_cast<size_t>(num_items), kb = n * sizeof(K), vb = n * sizeof(V);
    // CUB's double buffers for keys and values plus its histograms; the emulation sorts in host memory instead.
    const auto round = [](size_t b) { return (b + 255) / 256 * 256; };
    const size_t need = round(kb) + round(vb) + 256;
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = need;
      return cudaSuccess;
    }
    if (temp_storage_bytes < need) {
      std::fprintf(stderr, "cuemu: cub::DeviceRadixSort::SortPairs: temp_storage_bytes %zu < %zu\n", temp_storage_bytes,
                   need);
      return cudaErrorInvalidValue;
    }
    if (n == 0) return cudaSuccess;
    if (!d::device_buffer("d_temp_storage", d_temp_storage, need) || !d::device_buffer("d_keys_in", d_keys_in, kb) ||
        !d::device_buffer("d_keys_out", d_keys_out, kb) || !d::device_buffer("d_values_in", d_values_in, vb) ||
        !d::device_buffer("d_values_out", d_values_out, vb))
      return cudaErrorInvalidDevicePointer;
    if (!d::disjoint(d_keys_in, d_keys_out, kb) || !d::disjoint(d_values_in, d_values_out, vb)) {
      std::fprintf(stderr, "cuemu: cub::DeviceRadixSort::SortPairs: an output overlaps its input\n");
      return cudaErrorInvalidValue;
    }
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return d::radix_digits(d_keys_in[a], begin_bit, end_bit) < d::radix_digits(d_keys_in[b], begin_bit, end_bit);
    });
    for (size_t i = 0; i < n; ++i) {
      d_keys_out[i] = d_keys_in[order[i]];
      d_values_out[i] = d_values_in[order[i]];
    }
    return cudaSuccess;
  }
};

}  // namespace cub
