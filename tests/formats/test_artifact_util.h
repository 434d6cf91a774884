// Test helpers for the artifact: an encoder written from formats/ARTIFACT.md independently of the library
// writer (so hand-made and corrupt files can be built field by field), and a scratch directory.
#pragma once
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "formats/artifact.h"

namespace ptool::testing {

inline void le(std::vector<uint8_t>& o, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) o.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
inline void patch(std::vector<uint8_t>& o, size_t at, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) o[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
inline uint64_t hash(const std::vector<uint8_t>& b) { return XXH64(b.data(), b.size(), 0); }
inline std::vector<uint8_t> bytes_of(std::string_view s) { return {s.begin(), s.end()}; }

struct RawSection {
  std::string name = "main";
  uint8_t codec = 0;
  uint8_t shuffle = 0;
  uint32_t alignment = 64;
  std::vector<uint8_t> stored;                 // placed at the canonical offset (§2.3)
  uint64_t raw_bytes = 0;
  std::optional<uint64_t> file_offset;         // overrides the canonical value in the record only
  std::optional<uint64_t> stored_bytes;        // overrides stored.size() in the record only
  std::optional<uint64_t> checksum;            // overrides xxh64(stored)
  std::optional<uint32_t> record_bytes;
  std::vector<uint8_t> extra;                  // bytes appended to the record (later minor versions)
};

struct RawTensor {
  std::string name;
  uint8_t dtype = 0;
  std::vector<uint64_t> dims;
  std::string scheme;
  uint32_t scheme_version = 0;
  uint32_t section = 0;
  uint64_t offset = 0, length = 0, checksum = 0;
  std::optional<uint8_t> rank;                 // overrides dims.size()
  std::optional<uint32_t> record_bytes;
  std::vector<uint8_t> extra;
};

struct RawFile {
  std::string magic = "PTOOLART";
  uint16_t major = 1, minor = 0;
  uint8_t stage = 1;
  std::string metadata = "{}";
  std::vector<RawSection> sections;
  std::vector<RawTensor> tensors;
  std::vector<uint8_t> header_extension;       // after the tensor table, inside H
  std::vector<uint8_t> trailing;               // after the last section, counted in file_bytes
  uint8_t padding_byte = 0;                    // value of the padding before each section
  std::optional<uint64_t> header_bytes, file_bytes, metadata_bytes, header_checksum;
  std::optional<uint32_t> section_count, tensor_count;
  bool fix_header_checksum = true;             // false: keep a checksum computed before `after_checksum`
  std::function<void(std::vector<uint8_t>&)> after_checksum;  // edits made after the checksum is computed

  std::vector<uint8_t> encode() const {
    std::vector<uint8_t> h;
    h.insert(h.end(), magic.begin(), magic.end());
    le(h, major, 2);
    le(h, minor, 2);
    le(h, stage, 1);
    le(h, 0, 3);
    le(h, 0, 8);  // H, patched
    le(h, 0, 8);  // file_bytes, patched
    le(h, metadata_bytes.value_or(metadata.size()), 8);
    le(h, section_count.value_or(static_cast<uint32_t>(sections.size())), 4);
    le(h, tensor_count.value_or(static_cast<uint32_t>(tensors.size())), 4);
    le(h, 0, 8);
    le(h, 0, 8);  // checksum, patched
    h.insert(h.end(), metadata.begin(), metadata.end());
    // Canonical section offsets need H first.
    uint64_t H = h.size() + header_extension.size();
    for (const auto& s : sections) H += 44 + s.name.size() + s.extra.size();
    for (const auto& t : tensors) H += 44 + 8 * t.dims.size() + t.name.size() + t.scheme.size() + t.extra.size();
    std::vector<uint64_t> at;
    uint64_t end = H;
    for (const auto& s : sections) {
      at.push_back((end + 63) / 64 * 64);
      end = at.back() + s.stored.size();
    }
    for (size_t i = 0; i < sections.size(); ++i) {
      const RawSection& s = sections[i];
      le(h, s.record_bytes.value_or(static_cast<uint32_t>(44 + s.name.size() + s.extra.size())), 4);
      le(h, s.codec, 1);
      le(h, s.shuffle, 1);
      le(h, s.name.size(), 2);
      le(h, s.alignment, 4);
      le(h, s.file_offset.value_or(at[i]), 8);
      le(h, s.stored_bytes.value_or(s.stored.size()), 8);
      le(h, s.raw_bytes, 8);
      le(h, s.checksum.value_or(hash(s.stored)), 8);
      h.insert(h.end(), s.name.begin(), s.name.end());
      h.insert(h.end(), s.extra.begin(), s.extra.end());
    }
    for (const RawTensor& t : tensors) {
      le(h, t.record_bytes.value_or(
                static_cast<uint32_t>(44 + 8 * t.dims.size() + t.name.size() + t.scheme.size() + t.extra.size())),
         4);
      le(h, t.dtype, 1);
      le(h, t.rank.value_or(static_cast<uint8_t>(t.dims.size())), 1);
      le(h, t.name.size(), 2);
      le(h, t.scheme.size(), 2);
      le(h, 0, 2);
      le(h, t.section, 4);
      le(h, t.scheme_version, 4);
      le(h, t.offset, 8);
      le(h, t.length, 8);
      le(h, t.checksum, 8);
      for (uint64_t d : t.dims) le(h, d, 8);
      h.insert(h.end(), t.name.begin(), t.name.end());
      h.insert(h.end(), t.scheme.begin(), t.scheme.end());
      h.insert(h.end(), t.extra.begin(), t.extra.end());
    }
    h.insert(h.end(), header_extension.begin(), header_extension.end());
    std::vector<uint8_t> f = h;
    for (size_t i = 0; i < sections.size(); ++i) {
      f.resize(at[i], padding_byte);
      f.insert(f.end(), sections[i].stored.begin(), sections[i].stored.end());
    }
    f.insert(f.end(), trailing.begin(), trailing.end());
    patch(f, 16, header_bytes.value_or(h.size()), 8);
    patch(f, 24, file_bytes.value_or(f.size()), 8);
    const uint64_t hb = std::min<uint64_t>(header_bytes.value_or(h.size()), f.size());
    if (hb >= 64) {
      XXH64_state_t* st = XXH64_createState();
      XXH64_reset(st, 0);
      XXH64_update(st, f.data(), 56);
      XXH64_update(st, f.data() + 64, hb - 64);
      patch(f, 56, header_checksum.value_or(XXH64_digest(st)), 8);
      XXH64_freeState(st);
    }
    if (after_checksum) after_checksum(f);
    return f;
  }
};

// A tensor record for `data` placed at `offset` of section `section`.
inline RawTensor raw_tensor(std::string name, uint8_t dtype, std::vector<uint64_t> dims, uint32_t section,
                            uint64_t offset, const std::vector<uint8_t>& data) {
  RawTensor t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.dims = std::move(dims);
  t.section = section;
  t.offset = offset;
  t.length = data.size();
  t.checksum = hash(data);
  return t;
}

// The base valid file of the corrupt-file matrix: section "main" (codec none) holding f32 "a" [2, 3] at raw
// offset 0 and f32 "b" [4] at raw offset 64.
inline std::vector<uint8_t> iota_bytes(size_t n, uint8_t start) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(start + i);
  return v;
}
inline RawFile base_file() {
  RawFile f;
  f.metadata = R"({"config":{"vocab_size":8}})";
  const auto a = iota_bytes(24, 1), b = iota_bytes(16, 101);
  RawSection s;
  s.stored.assign(80, 0);
  std::copy(a.begin(), a.end(), s.stored.begin());
  std::copy(b.begin(), b.end(), s.stored.begin() + 64);
  s.raw_bytes = 80;
  f.sections.push_back(s);
  f.tensors.push_back(raw_tensor("a", 0, {2, 3}, 0, 0, a));
  f.tensors.push_back(raw_tensor("b", 0, {4}, 0, 64, b));
  return f;
}

// A scratch directory under the build tree, removed at scope exit.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::filesystem::create_directories(PTOOL_BINARY_DIR "/test_tmp");
    std::string tmpl = PTOOL_BINARY_DIR "/test_tmp/artifact.XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

}  // namespace ptool::testing
