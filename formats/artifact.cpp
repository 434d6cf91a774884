// The artifact container: writer and hardened reader. The byte layout is formats/ARTIFACT.md; keep the two in
// step. The reader trusts nothing: every count and length is checked against the bytes that are there, with
// overflow-safe arithmetic, before anything depending on it is allocated.
#include "formats/artifact.h"

#include "formats/arith_section.h"
#include "formats/atomic_file.h"

#include <brotli/decode.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "formats/error.h"

// Fuzzing builds (scripts/fuzz.sh) let checksum mismatches through so the fuzzer reaches the code behind them;
// everything else is checked as usual.
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define PTOOL_ENFORCE_CHECKSUMS 0
#else
#define PTOOL_ENFORCE_CHECKSUMS 1
#endif

namespace ptool {

// ---------------------------------------------------------------------------------------------------------------
// Names

std::string_view stage_name(Stage s) {
  switch (s) {
    case Stage::checkpoint: return "checkpoint";
    case Stage::quantized: return "quantized";
    case Stage::packed: return "packed";
  }
  return "unknown";
}

std::string_view dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::f64: return "f64";
    case DType::i8: return "i8";
    case DType::u8: return "u8";
    case DType::i16: return "i16";
    case DType::u16: return "u16";
    case DType::i32: return "i32";
    case DType::u32: return "u32";
    case DType::i64: return "i64";
    case DType::u64: return "u64";
  }
  return "unknown";
}

size_t dtype_size(DType d) {
  switch (d) {
    case DType::i8: case DType::u8: return 1;
    case DType::f16: case DType::bf16: case DType::i16: case DType::u16: return 2;
    case DType::f32: case DType::i32: case DType::u32: return 4;
    case DType::f64: case DType::i64: case DType::u64: return 8;
  }
  return 0;
}

int64_t TensorRecord::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return -1;
  }
  return n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? -1 : static_cast<int64_t>(n);
}

const TensorRecord* Artifact::find(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const TensorRecord& Artifact::at(std::string_view name) const {
  if (const TensorRecord* t = find(name)) return *t;
  throw Error("artifact has no tensor '" + std::string(name) + "' (it has " + std::to_string(tensors.size()) +
              " tensors)");
}

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

constexpr uint64_t kSectionFixed = 44;  // fixed part of a section record
constexpr uint64_t kTensorFixed = 44;   // fixed part of a tensor record
constexpr int kMaxMetadataDepth = 64;
constexpr uint32_t kMaxAlignment = 4096;
constexpr uint64_t kNoLimit = std::numeric_limits<uint64_t>::max();

uint16_t get_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t get_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t get_u64(const uint8_t* p) { return static_cast<uint64_t>(get_u32(p)) | (static_cast<uint64_t>(get_u32(p + 4)) << 32); }

void put_u8(std::vector<uint8_t>& o, uint8_t v) { o.push_back(v); }
void put_u16(std::vector<uint8_t>& o, uint16_t v) {
  o.push_back(static_cast<uint8_t>(v));
  o.push_back(static_cast<uint8_t>(v >> 8));
}
void put_u32(std::vector<uint8_t>& o, uint32_t v) {
  for (int i = 0; i < 4; ++i) o.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_u64(std::vector<uint8_t>& o, uint64_t v) {
  for (int i = 0; i < 8; ++i) o.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_bytes(std::vector<uint8_t>& o, std::string_view s) { o.insert(o.end(), s.begin(), s.end()); }
void set_u64(std::vector<uint8_t>& o, size_t at, uint64_t v) {
  for (int i = 0; i < 8; ++i) o[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

// x rounded up to a multiple of a (a power of two); false on overflow.
bool align_up(uint64_t x, uint64_t a, uint64_t* out) {
  uint64_t y;
  if (__builtin_add_overflow(x, a - 1, &y)) return false;
  *out = y & ~(a - 1);
  return true;
}
bool is_pow2(uint64_t a) { return a != 0 && (a & (a - 1)) == 0; }

uint64_t xxh64(std::span<const uint8_t> b) { return XXH64(b.data(), b.size(), 0); }

std::string hex64(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string range(uint64_t a, uint64_t b) { return "[" + std::to_string(a) + ", " + std::to_string(b) + ")"; }

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) { ++i; continue; }
    int len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return false;
    if (n - i < static_cast<size_t>(len)) return false;
    for (int k = 1; k < len; ++k) {
      const auto cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

// A name as it appears in a one-line message: control bytes (and, in invalid UTF-8, high bytes) escaped,
// long names shortened.
std::string show(std::string_view s) {
  const bool utf8 = valid_utf8(s);
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (out.size() >= 120) {
      out += "...";
      break;
    }
    const auto c = static_cast<uint8_t>(s[i]);
    if (c < 0x20 || c == 0x7F || (c >= 0x80 && !utf8) || c == '\\' || c == '\'') {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
      // keep multi-byte characters whole
      if (c >= 0xC0)
        while (i + 1 < s.size() && (static_cast<uint8_t>(s[i + 1]) & 0xC0) == 0x80) out += s[++i];
    }
  }
  return "'" + out + "'";
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Why a name is unusable, or "" when it is fine.
std::string name_defect(std::string_view s, bool allow_empty) {
  if (s.empty()) return allow_empty ? "" : "empty name";
  if (s.size() > 65535) return "name longer than 65535 bytes";
  if (!valid_utf8(s)) return "not valid UTF-8";
  if (s.find('\0') != std::string_view::npos) return "contains a NUL byte";
  return "";
}

bool is_sha256_hex(const nlohmann::json& v) {
  if (!v.is_string()) return false;
  const auto& s = v.get_ref<const std::string&>();
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// Why the writer cannot store this metadata so that the reader reads it back, or "" (mirrors the reader's rules).
std::string metadata_defect(const nlohmann::json& j, int depth) {
  if (depth > kMaxMetadataDepth) return "nested deeper than " + std::to_string(kMaxMetadataDepth) + " levels";
  if (j.is_number_float() && !std::isfinite(j.get<double>())) return "holds a number that is not finite";
  if (j.is_structured())
    for (const auto& v : j)
      if (std::string d = metadata_defect(v, depth + 1); !d.empty()) return d;
  return "";
}

// Byte shuffle (ARTIFACT.md §3).
std::vector<uint8_t> shuffle(std::span<const uint8_t> r, size_t k) {
  std::vector<uint8_t> s(r.begin(), r.end());
  const size_t m = r.size() / k;
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < k; ++j) s[j * m + i] = r[i * k + j];
  return s;
}
std::vector<uint8_t> unshuffle(std::span<const uint8_t> s, size_t k) {
  std::vector<uint8_t> r(s.begin(), s.end());
  const size_t m = s.size() / k;
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < k; ++j) r[i * k + j] = s[j * m + i];
  return r;
}

// ---------------------------------------------------------------------------------------------------------------
// Reader

class Parser {
 public:
  Parser(std::span<const uint8_t> bytes, const std::string& file) : b_(bytes), file_(file) {}

  ArtifactLayout layout();
  Artifact load(ArtifactLayout& layout);

 private:
  [[noreturn]] void fail(const std::string& what) const { throw Error(file_ + ": " + what); }
  void detect_foreign() const;
  void parse_metadata(ArtifactLayout& L, uint64_t at, uint64_t len) const;
  void parse_sections(ArtifactLayout& L, uint64_t& pos, uint64_t end, uint32_t count) const;
  void parse_tensors(ArtifactLayout& L, uint64_t& pos, uint64_t end, uint32_t count) const;
  void check_sections(const ArtifactLayout& L) const;
  void check_tensors(const ArtifactLayout& L) const;
  void check_zero(uint64_t from, uint64_t to, const std::string& where) const;

  std::span<const uint8_t> b_;
  const std::string& file_;
};

void Parser::detect_foreign() const {
  const std::string_view s(reinterpret_cast<const char*>(b_.data()), std::min<size_t>(b_.size(), 512));
  if (s.starts_with("version https://git-lfs"))
    fail("this is a Git LFS pointer, not the artifact itself (fetch the object with 'git lfs pull')");
  size_t i = 0;
  if (s.starts_with("\xEF\xBB\xBF")) i = 3;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) ++i;
  std::string head(s.substr(i, 9));
  std::transform(head.begin(), head.end(), head.begin(), [](char c) { return static_cast<char>(std::tolower(c)); });
  if (head.starts_with("<!doctype") || head.starts_with("<html"))
    fail("this is an HTML page, not an artifact (a download that saved an error or login page?)");
  if (s.starts_with("PK\x03\x04"))
    fail("this is a zip archive (a PyTorch .pt checkpoint?), not a ptool artifact");
  if (b_.size() >= 10 && b_[8] == '{' && (b_[9] == '"' || b_[9] == '}') && get_u64(b_.data()) <= b_.size() - 8)
    fail("this is a safetensors file, not a ptool artifact");
}

void Parser::check_zero(uint64_t from, uint64_t to, const std::string& where) const {
  for (uint64_t i = from; i < to; ++i)
    if (b_[i] != 0) fail("non-zero padding at file offset " + std::to_string(i) + " (" + where + ")");
}

void Parser::parse_metadata(ArtifactLayout& L, uint64_t at, uint64_t len) const {
  struct TooDeep {};
  const auto* p = reinterpret_cast<const char*>(b_.data() + at);
  const std::string where = " (metadata, file bytes " + range(at, at + len) + ")";
  struct NotFinite {};
  nlohmann::json::parser_callback_t cb = [](int depth, nlohmann::json::parse_event_t event, nlohmann::json& v) {
    if (depth > kMaxMetadataDepth) throw TooDeep{};
    if (event == nlohmann::json::parse_event_t::value && v.is_number_float() && !std::isfinite(v.get<double>()))
      throw NotFinite{};
    return true;
  };
  try {
    L.metadata = nlohmann::json::parse(p, p + len, cb);
  } catch (const TooDeep&) {
    fail("metadata is nested deeper than " + std::to_string(kMaxMetadataDepth) + " levels" + where);
  } catch (const NotFinite&) {
    fail("metadata holds a number that is not finite" + where);
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("metadata is not valid JSON: ") + e.what() + where);
  }
  if (!L.metadata.is_object())
    fail(std::string("metadata is not a JSON object (it is ") + L.metadata.type_name() + ")" + where);
  if (auto it = L.metadata.find("tokenizer_sha256"); it != L.metadata.end() && !is_sha256_hex(*it))
    fail("metadata key tokenizer_sha256 is not 64 lowercase hex digits" + where);
}

void Parser::parse_sections(ArtifactLayout& L, uint64_t& pos, uint64_t end, uint32_t count) const {
  L.sections.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    const std::string rec = "section record #" + std::to_string(i) + " at offset " + std::to_string(pos);
    if (end - pos < kSectionFixed) fail(rec + " runs past the end of the header (" + std::to_string(end) + " bytes)");
    const uint8_t* p = b_.data() + pos;
    const uint32_t record_bytes = get_u32(p);
    const uint16_t name_len = get_u16(p + 6);
    const uint64_t expected = kSectionFixed + name_len;
    if (record_bytes < expected || (L.version_minor == 0 && record_bytes != expected))
      fail(rec + ": record size " + std::to_string(record_bytes) + ", expected " + std::to_string(expected));
    if (end - pos < record_bytes) fail(rec + " runs past the end of the header (" + std::to_string(end) + " bytes)");
    SectionInfo s;
    s.codec = static_cast<Codec>(p[4]);
    s.shuffle_stride = p[5];
    s.alignment = get_u32(p + 8);
    s.file_offset = get_u64(p + 12);
    s.stored_bytes = get_u64(p + 20);
    s.raw_bytes = get_u64(p + 28);
    s.stored_checksum = get_u64(p + 36);
    s.name.assign(reinterpret_cast<const char*>(p + kSectionFixed), name_len);
    L.sections.push_back(std::move(s));
    pos += record_bytes;
  }
}

void Parser::parse_tensors(ArtifactLayout& L, uint64_t& pos, uint64_t end, uint32_t count) const {
  L.tensors.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    const std::string rec = "tensor record #" + std::to_string(i) + " at offset " + std::to_string(pos);
    if (end - pos < kTensorFixed) fail(rec + " runs past the end of the header (" + std::to_string(end) + " bytes)");
    const uint8_t* p = b_.data() + pos;
    const uint32_t record_bytes = get_u32(p);
    const uint8_t rank = p[5];
    const uint16_t name_len = get_u16(p + 6);
    const uint16_t scheme_len = get_u16(p + 8);
    if (rank > kArtifactMaxRank)
      fail(rec + ": rank " + std::to_string(rank) + " exceeds the maximum of " + std::to_string(kArtifactMaxRank));
    const uint64_t expected = kTensorFixed + 8ull * rank + name_len + scheme_len;
    if (record_bytes < expected || (L.version_minor == 0 && record_bytes != expected))
      fail(rec + ": record size " + std::to_string(record_bytes) + ", expected " + std::to_string(expected));
    if (end - pos < record_bytes) fail(rec + " runs past the end of the header (" + std::to_string(end) + " bytes)");
    TensorInfo t;
    t.dtype = static_cast<DType>(p[4]);
    t.section = get_u32(p + 12);
    t.scheme_version = get_u32(p + 16);
    t.offset = get_u64(p + 20);
    t.length = get_u64(p + 28);
    t.checksum = get_u64(p + 36);
    const uint8_t* dims = p + kTensorFixed;
    const uint8_t* name = dims + 8 * rank;
    t.name.assign(reinterpret_cast<const char*>(name), name_len);
    t.scheme.assign(reinterpret_cast<const char*>(name + name_len), scheme_len);
    t.shape.resize(rank);
    for (uint8_t d = 0; d < rank; ++d) {
      const uint64_t v = get_u64(dims + 8 * d);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail("tensor " + show(t.name) + " (" + rec + "): dimension " + std::to_string(d) + " = " + std::to_string(v) +
             " overflows int64");
      t.shape[d] = static_cast<int64_t>(v);
    }
    L.tensors.push_back(std::move(t));
    pos += record_bytes;
  }
}

void Parser::check_sections(const ArtifactLayout& L) const {
  std::unordered_set<std::string_view> names;
  uint64_t prev_end = L.header_bytes;
  for (size_t i = 0; i < L.sections.size(); ++i) {
    const SectionInfo& s = L.sections[i];
    const std::string sec = "section " + show(s.name) + " (#" + std::to_string(i) + ")";
    if (std::string d = name_defect(s.name, false); !d.empty()) fail("section #" + std::to_string(i) + ": " + d + " " + show(s.name));
    if (!names.insert(s.name).second) fail("duplicate section name " + show(s.name) + " (section #" + std::to_string(i) + ")");
    if (static_cast<uint8_t>(s.codec) > static_cast<uint8_t>(Codec::arith))
      fail(sec + ": unknown codec " + std::to_string(static_cast<int>(s.codec)) +
           " (expected 0 none, 1 zlib, 2 zstd, 3 brotli, 4 arith)");
    if (s.codec == Codec::arith && L.version_minor < 1)
      fail(sec + ": unknown codec 4 (arith) in a version 1.0 file (arith needs version 1.1)");
    if (s.codec == Codec::arith && s.shuffle_stride >= 2)
      fail(sec + ": codec arith with a byte shuffle of stride " + std::to_string(s.shuffle_stride) +
           " (arith sections are not shuffled)");
    if (!is_pow2(s.alignment) || s.alignment > kMaxAlignment)
      fail(sec + ": alignment " + std::to_string(s.alignment) + " is not a power of two in 1..4096");
    uint64_t expected = 0;
    if (!align_up(prev_end, kArtifactSectionAlign, &expected) || s.file_offset != expected)
      fail(sec + ": section offset " + std::to_string(s.file_offset) + ", expected " + std::to_string(expected) +
           " (sections follow the header in table order, 64-byte aligned)");
    uint64_t end;
    if (__builtin_add_overflow(s.file_offset, s.stored_bytes, &end) || end > L.file_bytes)
      fail(sec + " needs file bytes [" + std::to_string(s.file_offset) + ", " + std::to_string(s.file_offset) + "+" +
           std::to_string(s.stored_bytes) + ") but the file has " + std::to_string(L.file_bytes) +
           " bytes: past the end of the file");
    check_zero(prev_end, s.file_offset, "before " + sec);
    if ((s.raw_bytes == 0) != (s.stored_bytes == 0) || (s.codec == Codec::none && s.stored_bytes != s.raw_bytes))
      fail(sec + ": stored length " + std::to_string(s.stored_bytes) + " and raw length " + std::to_string(s.raw_bytes) +
           " disagree with codec " + std::string(codec_name(s.codec)) +
           " (0 stored exactly when 0 raw; equal for codec none)");
    prev_end = end;
  }
  if (prev_end != L.file_bytes)
    fail(std::to_string(L.file_bytes - prev_end) + " unexplained bytes after the " +
         (L.sections.empty() ? "header" : "last section") + ": file bytes " + range(prev_end, L.file_bytes));
}

void Parser::check_tensors(const ArtifactLayout& L) const {
  std::unordered_set<std::string_view> names;
  std::vector<uint64_t> next(L.sections.size(), 0);   // end of the previous tensor in each section
  std::vector<uint32_t> used(L.sections.size(), 0);
  for (size_t i = 0; i < L.tensors.size(); ++i) {
    const TensorInfo& t = L.tensors[i];
    const std::string idx = " (tensor #" + std::to_string(i) + ")";
    if (std::string d = name_defect(t.name, false); !d.empty()) fail("tensor #" + std::to_string(i) + ": " + d + " " + show(t.name));
    const std::string ten = "tensor " + show(t.name);
    if (!names.insert(t.name).second) fail("duplicate tensor name " + show(t.name) + idx);
    if (std::string d = name_defect(t.scheme, true); !d.empty()) fail(ten + ": scheme " + show(t.scheme) + ": " + d);
    if (dtype_size(t.dtype) == 0) fail(ten + ": unknown dtype " + std::to_string(static_cast<int>(t.dtype)) + idx);
    uint64_t numel = 1;
    for (int64_t d : t.shape)
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) ||
          numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(ten + ": element count of shape " + shape_str(t.shape) + " overflows" + idx);
    if (t.section >= L.sections.size())
      fail(ten + ": section index " + std::to_string(t.section) + " but there are " + std::to_string(L.sections.size()) +
           " sections" + idx);
    if (t.scheme.empty()) {
      uint64_t bytes;
      const bool overflow = __builtin_mul_overflow(numel, dtype_size(t.dtype), &bytes);
      if (overflow || bytes != t.length)
        fail(ten + ": length " + std::to_string(t.length) + " does not match its shape " + shape_str(t.shape) + " x " +
             std::string(dtype_name(t.dtype)) + " (" + (overflow ? std::string("overflow") : std::to_string(bytes)) +
             " bytes)" + idx);
    }
    const SectionInfo& s = L.sections[t.section];
    const std::string in = " in section " + show(s.name);
    if (t.offset % s.alignment != 0)
      fail(ten + idx + in + ": raw offset " + std::to_string(t.offset) + " is misaligned (alignment " +
           std::to_string(s.alignment) + ")");
    uint64_t expected;
    if (!align_up(next[t.section], s.alignment, &expected)) expected = kNoLimit;
    if (t.offset > expected)
      fail(ten + " leaves a hole" + in + ": raw offset " + std::to_string(t.offset) + ", expected " + std::to_string(expected));
    if (t.offset < expected)
      fail(ten + " overlaps the previous tensor" + in + ": raw offset " + std::to_string(t.offset) + ", expected " +
           std::to_string(expected));
    uint64_t end;
    if (__builtin_add_overflow(t.offset, t.length, &end) || end > s.raw_bytes)
      fail(ten + " needs raw bytes [" + std::to_string(t.offset) + ", " + std::to_string(t.offset) + "+" +
           std::to_string(t.length) + ") but section " + show(s.name) + " has " + std::to_string(s.raw_bytes) +
           ": past the end of section");
    next[t.section] = end;
    ++used[t.section];
  }
  for (size_t i = 0; i < L.sections.size(); ++i) {
    const SectionInfo& s = L.sections[i];
    if (used[i] == 0) fail("section " + show(s.name) + " holds no tensors");
    if (next[i] != s.raw_bytes)
      fail("section " + show(s.name) + " has " + std::to_string(s.raw_bytes - next[i]) +
           " raw bytes after its last tensor (raw bytes " + range(next[i], s.raw_bytes) + ")");
  }
}

ArtifactLayout Parser::layout() {
  const uint64_t size = b_.size();
  if (size == 0) fail("empty file (0 bytes), not a ptool artifact");
  detect_foreign();
  if (size < 8 && std::memcmp(b_.data(), kArtifactMagic, size) == 0)
    fail("truncated: the magic needs bytes [0, 8) but the file has " + std::to_string(size) + " bytes");
  if (size < 8 || std::memcmp(b_.data(), kArtifactMagic, 8) != 0) {
    std::string got;
    for (size_t i = 0; i < std::min<uint64_t>(size, 8); ++i) got += static_cast<char>(b_[i]);
    fail("not a ptool artifact: bad magic " + show(got) + " at offset 0 (expected 'PTOOLART')");
  }
  if (size < kArtifactPreambleBytes)
    fail("truncated: the preamble needs bytes [0, 64) but the file has " + std::to_string(size) + " bytes");
  const uint8_t* p = b_.data();
  ArtifactLayout L;
  L.version_major = get_u16(p + 8);
  L.version_minor = get_u16(p + 10);
  if (L.version_major == 0x0100)
    fail("version field at offset 8 reads " + std::to_string(L.version_major) +
         ": the file looks byte-swapped (big-endian); artifacts are little-endian");
  if (L.version_major != kArtifactMajor)
    fail("unsupported major version " + std::to_string(L.version_major) + "." + std::to_string(L.version_minor) +
         " (this reader reads 1.x; offset 8)");
  L.header_bytes = get_u64(p + 16);
  if (L.header_bytes < kArtifactPreambleBytes)
    fail("header length " + std::to_string(L.header_bytes) + " at offset 16 is smaller than the preamble (64 bytes)");
  if (L.header_bytes > size)
    fail("truncated: the header needs bytes " + range(0, L.header_bytes) + " but the file has " + std::to_string(size) +
         " bytes");
  L.header_checksum = get_u64(p + 56);
  XXH64_state_t* st = XXH64_createState();
  if (!st) throw std::bad_alloc();
  XXH64_reset(st, 0);
  XXH64_update(st, p, 56);
  XXH64_update(st, p + 64, L.header_bytes - 64);
  const uint64_t computed = XXH64_digest(st);
  XXH64_freeState(st);
  if (PTOOL_ENFORCE_CHECKSUMS && computed != L.header_checksum)
    fail("header checksum mismatch: stored " + hex64(L.header_checksum) + ", computed " + hex64(computed) +
         " over header bytes " + range(0, L.header_bytes));
  L.file_bytes = get_u64(p + 24);
  if (L.file_bytes > size)
    fail("truncated: the header declares " + std::to_string(L.file_bytes) + " bytes but the file has " +
         std::to_string(size));
  if (L.file_bytes < size)
    fail("trailing bytes: the file has " + std::to_string(size) + " bytes but the header declares " +
         std::to_string(L.file_bytes) + " (offset 24)");
  const uint8_t stage = p[12];
  if (stage < 1 || stage > 3)
    fail("unknown stage " + std::to_string(stage) + " at offset 12 (expected 1 checkpoint, 2 quantized or 3 packed)");
  L.stage = static_cast<Stage>(stage);
  L.metadata_bytes = get_u64(p + 32);
  if (L.metadata_bytes > L.header_bytes - 64)
    fail("metadata of " + std::to_string(L.metadata_bytes) + " bytes at offset 64 does not fit in the header (" +
         std::to_string(L.header_bytes) + " bytes)");
  parse_metadata(L, 64, L.metadata_bytes);

  const uint32_t section_count = get_u32(p + 40);
  const uint32_t tensor_count = get_u32(p + 44);
  const uint64_t tables_at = 64 + L.metadata_bytes;
  const uint64_t room = L.header_bytes - tables_at;
  // Each record needs at least its fixed part and a 1-byte name.
  if (uint64_t{section_count} * (kSectionFixed + 1) > room)
    fail("section count " + std::to_string(section_count) + " cannot fit in the " + std::to_string(room) +
         " header bytes after the metadata");
  if (uint64_t{section_count} * (kSectionFixed + 1) + uint64_t{tensor_count} * (kTensorFixed + 1) > room)
    fail("tensor count " + std::to_string(tensor_count) + " cannot fit in the " + std::to_string(room) +
         " header bytes after the metadata and " + std::to_string(section_count) + " sections");
  uint64_t pos = tables_at;
  parse_sections(L, pos, L.header_bytes, section_count);
  parse_tensors(L, pos, L.header_bytes, tensor_count);
  if (L.version_minor == 0 && pos != L.header_bytes)
    fail(std::to_string(L.header_bytes - pos) + " unexplained header bytes: the tables end at offset " +
         std::to_string(pos) + " but the header is " + std::to_string(L.header_bytes) + " bytes (version 1.0)");
  check_sections(L);
  check_tensors(L);
  return L;
}

Artifact Parser::load(ArtifactLayout& L) {
  Artifact a;
  a.stage = L.stage;
  a.metadata = L.metadata;
  a.tensors.resize(L.tensors.size());
  std::vector<std::vector<size_t>> members(L.sections.size());
  for (size_t i = 0; i < L.tensors.size(); ++i) {
    const TensorInfo& t = L.tensors[i];
    TensorRecord& r = a.tensors[i];
    r.name = t.name;
    r.shape = t.shape;
    r.dtype = t.dtype;
    r.scheme = t.scheme;
    r.scheme_version = t.scheme_version;
    r.section = L.sections[t.section].name;
    members[t.section].push_back(i);
  }
  for (size_t si = 0; si < L.sections.size(); ++si) {
    const SectionInfo& s = L.sections[si];
    const std::string sec = "section " + show(s.name);
    const std::span<const uint8_t> stored = b_.subspan(s.file_offset, s.stored_bytes);
    const uint64_t sum = xxh64(stored);
    if (PTOOL_ENFORCE_CHECKSUMS && sum != s.stored_checksum)
      fail("section checksum mismatch in " + sec + ": stored " + hex64(s.stored_checksum) + ", computed " + hex64(sum) +
           " over file bytes " + range(s.file_offset, s.file_offset + s.stored_bytes));
    const std::string where = sec + " (" + std::string(codec_name(s.codec)) + ", file bytes " +
                              range(s.file_offset, s.file_offset + s.stored_bytes) + ")";
    std::vector<uint8_t> owned;
    std::span<const uint8_t> raw = stored;
    if (s.codec == Codec::arith && s.raw_bytes > 0) {
      std::vector<MatrixRegion> regions;
      for (size_t i : members[si]) {
        const TensorInfo& t = L.tensors[i];
        if (auto m = matrix_region(t.dtype, t.shape, t.offset, t.length)) regions.push_back(*m);
      }
      try {
        owned = decode_arith_section(stored, s.raw_bytes, regions);
      } catch (const Error& e) {
        fail("cannot decode " + where + ": " + e.what());
      }
      raw = owned;
    } else if (s.codec != Codec::none && s.raw_bytes > 0) {
      uint64_t n;
      try {
        n = decoded_length(s.codec, stored, s.raw_bytes);
      } catch (const Error& e) {
        fail("cannot decode " + where + ": " + e.what());
      }
      if (n != s.raw_bytes)
        fail("cannot decode " + where + ": it decodes to " + (n > s.raw_bytes ? "more than " : "") +
             std::to_string(std::min(n, s.raw_bytes)) + " bytes, but the header declares " + std::to_string(s.raw_bytes));
      try {
        owned = decompress(s.codec, stored, s.raw_bytes);
      } catch (const Error& e) {
        fail("cannot decode " + where + ": " + e.what());
      }
      raw = owned;
    }
    if (s.shuffle_stride >= 2 && !raw.empty()) {
      owned = unshuffle(raw, s.shuffle_stride);
      raw = owned;
    }
    uint64_t prev = 0;
    for (size_t i : members[si]) {
      const TensorInfo& t = L.tensors[i];
      for (uint64_t k = prev; k < t.offset; ++k)
        if (raw[k] != 0)
          fail("non-zero padding in " + sec + " at raw offset " + std::to_string(k) + " (before tensor " + show(t.name) + ")");
      const auto bytes = raw.subspan(t.offset, t.length);
      const uint64_t tsum = xxh64(bytes);
      if (PTOOL_ENFORCE_CHECKSUMS && tsum != t.checksum)
        fail("tensor checksum mismatch for tensor " + show(t.name) + ": stored " + hex64(t.checksum) + ", computed " +
             hex64(tsum) + " (" + sec + ", raw bytes " + range(t.offset, t.offset + t.length) + ")");
      a.tensors[i].data.assign(bytes.begin(), bytes.end());
      prev = t.offset + t.length;
    }
  }
  return a;
}

template <class F>
auto guarded(const std::string& file, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    throw Error(file + ": out of memory while reading the artifact");
  } catch (const std::length_error&) {
    throw Error(file + ": out of memory while reading the artifact (length error)");
  }
}

// The bytes of a file: mapped when it is a regular file, read otherwise.
class FileBytes {
 public:
  explicit FileBytes(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) fail(path, "cannot stat");
    if (S_ISDIR(st.st_mode)) {
      ::close(fd_);
      throw Error(path + ": is a directory, not an artifact");
    }
    if (S_ISREG(st.st_mode)) {
      size_ = static_cast<size_t>(st.st_size);
      if (size_ > 0) {
        void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
        if (m == MAP_FAILED) fail(path, "cannot map");
        map_ = static_cast<const uint8_t*>(m);
      }
    } else {
      uint8_t buf[1 << 16];
      while (true) {
        const ssize_t n = ::read(fd_, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail(path, "cannot read");
        if (n == 0) break;
        copy_.insert(copy_.end(), buf, buf + n);
      }
    }
  }
  ~FileBytes() {
    if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
    if (fd_ >= 0) ::close(fd_);
  }
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  std::span<const uint8_t> bytes() const { return map_ ? std::span<const uint8_t>(map_, size_) : std::span<const uint8_t>(copy_); }

 private:
  [[noreturn]] void fail(const std::string& path, const char* what) {
    const int e = errno;
    if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
    ::close(fd_);
    throw Error(path + ": " + what + ": " + std::strerror(e));
  }
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  size_t size_ = 0;
  std::vector<uint8_t> copy_;
};

// ---------------------------------------------------------------------------------------------------------------
// Writer

[[noreturn]] void bad_input(const std::string& what) { throw Error("cannot write artifact: " + what); }

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Public API

ArtifactLayout parse_artifact_layout(std::span<const uint8_t> bytes, const std::string& name_for_errors) {
  return guarded(name_for_errors, [&] { return Parser(bytes, name_for_errors).layout(); });
}

Artifact parse_artifact(std::span<const uint8_t> bytes, const std::string& name_for_errors, ArtifactLayout& layout) {
  return guarded(name_for_errors, [&] {
    Parser p(bytes, name_for_errors);
    layout = p.layout();
    return p.load(layout);
  });
}

Artifact parse_artifact(std::span<const uint8_t> bytes, const std::string& name_for_errors) {
  ArtifactLayout layout;
  return parse_artifact(bytes, name_for_errors, layout);
}

Artifact read_artifact(const std::string& path, ArtifactLayout& layout) {
  FileBytes f(path);
  return parse_artifact(f.bytes(), path, layout);
}

Artifact read_artifact(const std::string& path) {
  ArtifactLayout layout;
  return read_artifact(path, layout);
}

std::vector<uint8_t> serialize_artifact(const Artifact& a, const WriteOptions& opt) {
  const auto stage = static_cast<uint8_t>(a.stage);
  if (stage < 1 || stage > 3) bad_input("unknown stage " + std::to_string(stage));
  if (!a.metadata.is_object()) bad_input(std::string("metadata must be a JSON object, not a ") + a.metadata.type_name());
  if (auto it = a.metadata.find("tokenizer_sha256"); it != a.metadata.end() && !is_sha256_hex(*it))
    bad_input("metadata key tokenizer_sha256 is not 64 lowercase hex digits");
  if (std::string d = metadata_defect(a.metadata, 0); !d.empty()) bad_input("metadata " + d);
  std::string meta;
  try {
    meta = a.metadata.dump();
  } catch (const nlohmann::json::exception& e) {
    bad_input(std::string("metadata cannot be written as JSON: ") + e.what());
  }

  // Options by section name.
  std::unordered_map<std::string, const SectionOptions*> options;
  for (const SectionOptions& o : opt.sections) {
    if (!options.emplace(o.name, &o).second) bad_input("section options for " + show(o.name) + " are given twice");
    if (!is_pow2(o.alignment) || o.alignment > kMaxAlignment)
      bad_input("section " + show(o.name) + ": alignment " + std::to_string(o.alignment) +
                " is not a power of two in 1..4096");
  }

  // Validate tensors; sections in order of first use.
  struct Sec {
    std::string name;
    CodecOptions codec;
    uint8_t shuffle = 0;
    uint32_t alignment = 64;
    std::vector<size_t> members;
    std::vector<uint8_t> stored;
    uint64_t raw_bytes = 0;
  };
  std::vector<Sec> secs;
  std::unordered_map<std::string_view, uint32_t> sec_index;
  std::unordered_set<std::string_view> names;
  std::vector<uint32_t> tensor_sec(a.tensors.size());
  std::vector<uint64_t> tensor_off(a.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const TensorRecord& t = a.tensors[i];
    const std::string ten = "tensor " + show(t.name);
    if (std::string d = name_defect(t.name, false); !d.empty()) bad_input("tensor #" + std::to_string(i) + ": " + d);
    if (!names.insert(t.name).second) bad_input("duplicate tensor name " + show(t.name));
    if (std::string d = name_defect(t.section, false); !d.empty()) bad_input(ten + ": section name: " + d);
    if (std::string d = name_defect(t.scheme, true); !d.empty()) bad_input(ten + ": scheme: " + d);
    if (dtype_size(t.dtype) == 0) bad_input(ten + ": unknown dtype " + std::to_string(static_cast<int>(t.dtype)));
    if (t.shape.size() > kArtifactMaxRank) bad_input(ten + ": rank " + std::to_string(t.shape.size()) + " exceeds 8");
    const int64_t numel = t.numel();
    if (numel < 0) bad_input(ten + ": shape " + shape_str(t.shape) + " has a negative dimension or overflows");
    if (t.scheme.empty()) {
      uint64_t need;
      if (__builtin_mul_overflow(static_cast<uint64_t>(numel), dtype_size(t.dtype), &need) || need != t.data.size())
        bad_input(ten + ": data has " + std::to_string(t.data.size()) + " bytes but shape " + shape_str(t.shape) + " x " +
                  std::string(dtype_name(t.dtype)) + " needs " + std::to_string(numel) + " x " +
                  std::to_string(dtype_size(t.dtype)));
    }
    auto [it, fresh] = sec_index.emplace(t.section, static_cast<uint32_t>(secs.size()));
    if (fresh) {
      Sec s;
      s.name = t.section;
      if (auto o = options.find(t.section); o != options.end()) {
        s.codec = o->second->codec;
        s.shuffle = o->second->shuffle_stride;
        s.alignment = o->second->alignment;
      } else {
        s.codec = opt.default_codec;
      }
      if (static_cast<uint8_t>(s.codec.codec) > static_cast<uint8_t>(Codec::arith))
        bad_input("section " + show(s.name) + ": unknown codec " + std::to_string(static_cast<int>(s.codec.codec)));
      if (s.codec.codec == Codec::arith && s.shuffle >= 2)
        bad_input("section " + show(s.name) + ": codec arith does not take a byte shuffle");
      if (s.codec.codec == Codec::zstd && s.codec.window_log > kArtifactMaxZstdWindowLog)
        bad_input("section " + show(s.name) + ": zstd window_log " + std::to_string(s.codec.window_log) +
                  " exceeds the artifact limit of " + std::to_string(kArtifactMaxZstdWindowLog));
      secs.push_back(std::move(s));
    }
    tensor_sec[i] = it->second;
    secs[it->second].members.push_back(i);
  }
  if (secs.size() > std::numeric_limits<uint32_t>::max() || a.tensors.size() > std::numeric_limits<uint32_t>::max())
    bad_input("too many tensors");

  // Raw bytes, shuffle, codec.
  for (Sec& s : secs) {
    uint64_t end = 0;
    for (size_t i : s.members) {
      uint64_t off;
      if (!align_up(end, s.alignment, &off) || __builtin_add_overflow(off, a.tensors[i].data.size(), &end))
        bad_input("section " + show(s.name) + " is too large");
      tensor_off[i] = off;
    }
    s.raw_bytes = end;
    if (end == 0) continue;
    std::vector<uint8_t> raw(end, 0);
    for (size_t i : s.members) std::copy(a.tensors[i].data.begin(), a.tensors[i].data.end(), raw.begin() + tensor_off[i]);
    if (s.shuffle >= 2) raw = shuffle(raw, s.shuffle);
    if (s.codec.codec == Codec::arith) {
      std::vector<MatrixRegion> regions;
      for (size_t i : s.members) {
        const TensorRecord& t = a.tensors[i];
        if (auto m = matrix_region(t.dtype, t.shape, tensor_off[i], t.data.size())) regions.push_back(*m);
      }
      s.stored = encode_arith_section(raw, regions);
    } else if (s.codec.codec == Codec::none) {
      s.stored = std::move(raw);
    } else {
      try {
        s.stored = compress(raw, s.codec);
      } catch (const Error& e) {
        bad_input("section " + show(s.name) + ": " + e.what());
      }
    }
  }

  // Header.
  uint64_t H = 64 + meta.size();
  for (const Sec& s : secs) H += kSectionFixed + s.name.size();
  for (const TensorRecord& t : a.tensors) H += kTensorFixed + 8 * t.shape.size() + t.name.size() + t.scheme.size();
  std::vector<uint64_t> sec_off(secs.size());
  uint64_t end = H;
  for (size_t i = 0; i < secs.size(); ++i) {
    align_up(end, kArtifactSectionAlign, &sec_off[i]);
    end = sec_off[i] + secs[i].stored.size();
  }
  const uint64_t file_bytes = end;

  std::vector<uint8_t> out;
  out.reserve(file_bytes);
  out.insert(out.end(), kArtifactMagic, kArtifactMagic + 8);
  put_u16(out, kArtifactMajor);
  // 1.0 unless a section uses what 1.1 added (codec arith), so every other file stays readable by 1.0 readers.
  const bool uses_1_1 = std::any_of(secs.begin(), secs.end(), [](const Sec& x) { return x.codec.codec == Codec::arith; });
  put_u16(out, uses_1_1 ? 1 : 0);
  put_u8(out, stage);
  put_u8(out, 0);
  put_u16(out, 0);
  put_u64(out, H);
  put_u64(out, file_bytes);
  put_u64(out, meta.size());
  put_u32(out, static_cast<uint32_t>(secs.size()));
  put_u32(out, static_cast<uint32_t>(a.tensors.size()));
  put_u64(out, 0);
  put_u64(out, 0);  // header checksum, set below
  put_bytes(out, meta);
  for (size_t i = 0; i < secs.size(); ++i) {
    const Sec& s = secs[i];
    put_u32(out, static_cast<uint32_t>(kSectionFixed + s.name.size()));
    put_u8(out, static_cast<uint8_t>(s.codec.codec));
    put_u8(out, s.shuffle);
    put_u16(out, static_cast<uint16_t>(s.name.size()));
    put_u32(out, s.alignment);
    put_u64(out, sec_off[i]);
    put_u64(out, s.stored.size());
    put_u64(out, s.raw_bytes);
    put_u64(out, xxh64(s.stored));
    put_bytes(out, s.name);
  }
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const TensorRecord& t = a.tensors[i];
    put_u32(out, static_cast<uint32_t>(kTensorFixed + 8 * t.shape.size() + t.name.size() + t.scheme.size()));
    put_u8(out, static_cast<uint8_t>(t.dtype));
    put_u8(out, static_cast<uint8_t>(t.shape.size()));
    put_u16(out, static_cast<uint16_t>(t.name.size()));
    put_u16(out, static_cast<uint16_t>(t.scheme.size()));
    put_u16(out, 0);
    put_u32(out, tensor_sec[i]);
    put_u32(out, t.scheme_version);
    put_u64(out, tensor_off[i]);
    put_u64(out, t.data.size());
    put_u64(out, xxh64(t.data));
    for (int64_t d : t.shape) put_u64(out, static_cast<uint64_t>(d));
    put_bytes(out, t.name);
    put_bytes(out, t.scheme);
  }
  if (out.size() != H) throw Error("internal error: header is " + std::to_string(out.size()) + " bytes, expected " + std::to_string(H));
  XXH64_state_t* st = XXH64_createState();
  if (!st) throw std::bad_alloc();
  XXH64_reset(st, 0);
  XXH64_update(st, out.data(), 56);
  XXH64_update(st, out.data() + 64, out.size() - 64);
  set_u64(out, 56, XXH64_digest(st));
  XXH64_freeState(st);
  for (size_t i = 0; i < secs.size(); ++i) {
    out.resize(sec_off[i], 0);
    out.insert(out.end(), secs[i].stored.begin(), secs[i].stored.end());
  }
  return out;
}

uint64_t write_artifact(const std::string& path, const Artifact& a, const WriteOptions& opt) {
  std::vector<uint8_t> bytes;
  try {
    bytes = serialize_artifact(a, opt);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  } catch (const std::bad_alloc&) {
    throw Error(path + ": cannot write artifact: out of memory");
  }
  write_file_atomic(path, bytes, "artifact");
  return bytes.size();
}

}  // namespace ptool
