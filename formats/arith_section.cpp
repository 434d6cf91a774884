#include "formats/arith_section.h"

#include <algorithm>
#include <functional>
#include <future>
#include <string>
#include <thread>

#include "formats/entropy_codec.h"
#include "formats/error.h"

namespace ptool {

namespace {

constexpr size_t kPrefixBytes = 16;  // rest codec, 7 zero bytes, rest_stored_bytes
// The coder's probabilities are 12-bit, so each code costs at least log2(4096/4095) bits, i.e. a stream byte
// carries at most ~22,711 codes; 2^15 leaves room for the stream header.
constexpr uint64_t kMaxCodesPerStreamByte = uint64_t{1} << 15;

void put_u64(std::vector<uint8_t>& o, uint64_t v) {
  for (int i = 0; i < 8; ++i) o.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Runs f(0..n-1) on up to hardware_concurrency threads; an exception thrown by f is rethrown here.
void parallel_for(size_t n, const std::function<void(size_t)>& f) {
  const size_t workers = std::max<size_t>(1, std::min<size_t>(n, std::thread::hardware_concurrency()));
  std::vector<std::future<void>> jobs;
  for (size_t w = 0; w < workers; ++w)
    jobs.push_back(std::async(std::launch::async, [&, w] {
      for (size_t i = w; i < n; i += workers) f(i);
    }));
  for (auto& j : jobs) j.get();
}

// Every raw byte outside the matrices, in raw order.
std::vector<uint8_t> rest_bytes(std::span<const uint8_t> raw, std::span<const MatrixRegion> regions) {
  std::vector<uint8_t> rest;
  uint64_t pos = 0;
  for (const MatrixRegion& m : regions) {
    rest.insert(rest.end(), raw.begin() + static_cast<ptrdiff_t>(pos), raw.begin() + static_cast<ptrdiff_t>(m.offset));
    pos = m.offset + m.bytes();
  }
  rest.insert(rest.end(), raw.begin() + static_cast<ptrdiff_t>(pos), raw.end());
  return rest;
}

// Regions in order, disjoint, inside [0, raw_bytes); returns the bytes outside them.
uint64_t check_regions(std::span<const MatrixRegion> regions, uint64_t raw_bytes, const char* who) {
  uint64_t pos = 0, inside = 0;
  for (size_t i = 0; i < regions.size(); ++i) {
    const MatrixRegion& m = regions[i];
    if (m.rows <= 0 || m.cols <= 0 || m.offset < pos || m.offset > raw_bytes || m.bytes() / m.rows != uint64_t(m.cols) ||
        m.bytes() > raw_bytes - m.offset)
      throw Error(std::string(who) + ": matrix #" + std::to_string(i) + " (" + std::to_string(m.rows) + "x" +
                  std::to_string(m.cols) + " at raw offset " + std::to_string(m.offset) +
                  ") is not inside the section's raw bytes after the previous one");
    pos = m.offset + m.bytes();
    inside += m.bytes();
  }
  return raw_bytes - inside;
}

}  // namespace

std::optional<MatrixRegion> matrix_region(DType dtype, std::span<const int64_t> shape, uint64_t offset,
                                          uint64_t length) {
  if (dtype != DType::i8 || shape.size() != 2 || shape[0] <= 0 || shape[1] <= 0) return std::nullopt;
  const MatrixRegion m{offset, shape[0], shape[1]};
  uint64_t n;
  if (__builtin_mul_overflow(static_cast<uint64_t>(shape[0]), static_cast<uint64_t>(shape[1]), &n) || n > length)
    return std::nullopt;
  return m;
}

std::vector<uint8_t> encode_arith_section(std::span<const uint8_t> raw, std::span<const MatrixRegion> regions) {
  check_regions(regions, raw.size(), "arith encoder");
  // Each stream depends only on its own codes, so the matrices are encoded in parallel.
  std::vector<std::vector<uint8_t>> streams(regions.size());
  parallel_for(regions.size(), [&](size_t i) {
    const MatrixRegion& m = regions[i];
    streams[i] = encode_codes({reinterpret_cast<const int8_t*>(raw.data() + m.offset), m.bytes()}, m.rows, m.cols);
  });

  const std::vector<uint8_t> rest = rest_bytes(raw, regions);
  CodecOptions brotli;
  brotli.codec = Codec::brotli;
  brotli.window_log = 24;
  std::vector<uint8_t> rest_stored = rest.empty() ? std::vector<uint8_t>{} : compress(rest, brotli);
  Codec rest_codec = Codec::brotli;
  if (rest_stored.size() >= rest.size()) {
    rest_codec = Codec::none;
    rest_stored = rest;
  }

  std::vector<uint8_t> out(8, 0);
  out[0] = static_cast<uint8_t>(rest_codec);
  put_u64(out, rest_stored.size());
  out.insert(out.end(), rest_stored.begin(), rest_stored.end());
  for (const auto& s : streams) {
    put_u64(out, s.size());
    out.insert(out.end(), s.begin(), s.end());
  }
  return out;
}

std::vector<uint8_t> decode_arith_section(std::span<const uint8_t> stored, uint64_t raw_bytes,
                                          std::span<const MatrixRegion> regions) {
  const uint64_t rest_expected = check_regions(regions, raw_bytes, "arith section");
  if (stored.size() < kPrefixBytes)
    throw Error("arith section: " + std::to_string(stored.size()) + " stored bytes cannot hold its 16-byte prefix");
  const uint8_t rest_codec = stored[0];
  if (rest_codec > static_cast<uint8_t>(Codec::brotli))
    throw Error("arith section: unknown codec " + std::to_string(rest_codec) +
                " for the bytes outside the matrices (expected 0 none, 1 zlib, 2 zstd, 3 brotli)");
  for (size_t i = 1; i < 8; ++i)
    if (stored[i] != 0) throw Error("arith section: reserved byte " + std::to_string(i) + " is not zero");
  const uint64_t rest_stored = get_u64(stored.data() + 8);
  if (rest_stored > stored.size() - kPrefixBytes)
    throw Error("arith section: the rest stream of " + std::to_string(rest_stored) + " bytes runs past the " +
                std::to_string(stored.size()) + " stored bytes");
  const auto rest_span = stored.subspan(kPrefixBytes, rest_stored);

  // Frame the matrix streams and check that the stored bytes can account for raw_bytes before allocating.
  std::vector<std::span<const uint8_t>> streams;
  uint64_t pos = kPrefixBytes + rest_stored;
  for (size_t i = 0; i < regions.size(); ++i) {
    if (stored.size() - pos < 8)
      throw Error("arith section: stored bytes end before the length of matrix stream #" + std::to_string(i));
    const uint64_t n = get_u64(stored.data() + pos);
    pos += 8;
    if (n > stored.size() - pos)
      throw Error("arith section: matrix stream #" + std::to_string(i) + " of " + std::to_string(n) +
                  " bytes runs past the stored bytes");
    if (regions[i].bytes() / kMaxCodesPerStreamByte > n)
      throw Error("arith section: matrix stream #" + std::to_string(i) + " has " + std::to_string(n) +
                  " bytes, too few to hold " + std::to_string(regions[i].rows) + "x" + std::to_string(regions[i].cols) +
                  " codes");
    streams.push_back(stored.subspan(pos, n));
    pos += n;
  }
  if (pos != stored.size())
    throw Error("arith section: " + std::to_string(stored.size() - pos) + " stored bytes after the last matrix stream");
  const Codec rc = static_cast<Codec>(rest_codec);
  if (rc != Codec::none && rest_stored > 0) {
    const uint64_t n = decoded_length(rc, rest_span, rest_expected);
    if (n != rest_expected)
      throw Error("arith section: the bytes outside the matrices decode to " + std::string(n > rest_expected ? "more than " : "") +
                  std::to_string(std::min(n, rest_expected)) + " bytes, expected " + std::to_string(rest_expected));
  } else if (rest_stored != rest_expected) {
    throw Error("arith section: " + std::to_string(rest_stored) + " bytes outside the matrices, expected " +
                std::to_string(rest_expected));
  }

  std::vector<uint8_t> raw(raw_bytes);
  const std::vector<uint8_t> rest =
      rc == Codec::none || rest_expected == 0 ? std::vector<uint8_t>(rest_span.begin(), rest_span.end())
                                              : decompress(rc, rest_span, rest_expected);
  uint64_t raw_pos = 0, rest_pos = 0;
  for (const MatrixRegion& m : regions) {
    std::copy_n(rest.begin() + static_cast<ptrdiff_t>(rest_pos), m.offset - raw_pos, raw.begin() + static_cast<ptrdiff_t>(raw_pos));
    rest_pos += m.offset - raw_pos;
    raw_pos = m.offset + m.bytes();
  }
  std::copy_n(rest.begin() + static_cast<ptrdiff_t>(rest_pos), raw_bytes - raw_pos, raw.begin() + static_cast<ptrdiff_t>(raw_pos));

  // Decode the matrices in parallel; the first failing matrix (in table order) names the error.
  std::vector<std::string> errors(regions.size());
  parallel_for(regions.size(), [&](size_t i) {
    const MatrixRegion& m = regions[i];
    try {
      const std::vector<int8_t> codes = decode_codes(streams[i], m.rows, m.cols);
      std::copy(codes.begin(), codes.end(), reinterpret_cast<int8_t*>(raw.data() + m.offset));
    } catch (const Error& e) {
      errors[i] = e.what();
    }
  });
  for (size_t i = 0; i < errors.size(); ++i)
    if (!errors[i].empty()) throw Error("arith section: matrix stream #" + std::to_string(i) + ": " + errors[i]);
  return raw;
}

}  // namespace ptool
