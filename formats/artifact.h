// The artifact: one versioned container for the float checkpoint, the quantized model and the packed
// submission (DESIGN.md principle 1). The byte layout is specified in formats/ARTIFACT.md.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/codec.h"

namespace ptool {

inline constexpr char kArtifactMagic[8] = {'P', 'T', 'O', 'O', 'L', 'A', 'R', 'T'};
inline constexpr uint16_t kArtifactMajor = 1;
inline constexpr uint64_t kArtifactPreambleBytes = 64;
inline constexpr uint64_t kArtifactSectionAlign = 64;   // file alignment of every section
inline constexpr uint32_t kArtifactMaxRank = 8;
inline constexpr int kArtifactMaxZstdWindowLog = kMaxZstdWindowLog;

enum class Stage : uint8_t { checkpoint = 1, quantized = 2, packed = 3 };
std::string_view stage_name(Stage s);

// Storage type of a tensor's raw bytes.
enum class DType : uint8_t { f32 = 0, f16 = 1, bf16 = 2, f64 = 3, i8 = 4, u8 = 5, i16 = 6, u16 = 7, i32 = 8,
                             u32 = 9, i64 = 10, u64 = 11 };
std::string_view dtype_name(DType d);
size_t dtype_size(DType d);  // 0 for a value outside the enum

struct TensorRecord {
  std::string name;
  std::vector<int64_t> shape;      // empty = scalar; a zero dimension = zero-size tensor
  DType dtype = DType::f32;
  std::string scheme;              // "" = plain values; else the quant scheme, e.g. "int8_per_row"
  uint32_t scheme_version = 0;
  std::string section = "main";    // tensors of one section are stored (and compressed) together
  std::vector<uint8_t> data;       // raw little-endian bytes; for plain tensors numel * dtype_size

  int64_t numel() const;           // product of shape (1 for a scalar); -1 if a dim is negative or it overflows

  bool operator==(const TensorRecord&) const = default;
};

struct SectionOptions {
  std::string name;
  CodecOptions codec;
  uint8_t shuffle_stride = 0;      // 0/1: none; k > 1: byte shuffle with stride k before the codec
  uint32_t alignment = 64;         // raw-byte alignment of each tensor in the section (power of two <= 4096)
};

struct Artifact {
  Stage stage = Stage::checkpoint;
  nlohmann::json metadata = nlohmann::json::object();  // model config, tokenizer sha256, provenance, ...
  std::vector<TensorRecord> tensors;

  const TensorRecord* find(std::string_view name) const;  // nullptr when absent
  const TensorRecord& at(std::string_view name) const;    // throws Error naming the tensor
};

struct WriteOptions {
  CodecOptions default_codec;               // for sections not listed below
  std::vector<SectionOptions> sections;     // options of sections no tensor uses are ignored
};

// What the header says, as validated by the reader (everything but the data); for inspect and tools.
struct SectionInfo {
  std::string name;
  Codec codec = Codec::none;
  uint8_t shuffle_stride = 0;
  uint32_t alignment = 1;
  uint64_t file_offset = 0, stored_bytes = 0, raw_bytes = 0, stored_checksum = 0;
};
struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::f32;
  std::string scheme;
  uint32_t scheme_version = 0;
  uint32_t section = 0;                     // index into ArtifactLayout::sections
  uint64_t offset = 0, length = 0, checksum = 0;
};
struct ArtifactLayout {
  uint16_t version_major = 0, version_minor = 0;
  Stage stage = Stage::checkpoint;
  uint64_t header_bytes = 0, file_bytes = 0, metadata_bytes = 0, header_checksum = 0;
  nlohmann::json metadata = nlohmann::json::object();
  std::vector<SectionInfo> sections;
  std::vector<TensorInfo> tensors;
};

// Atomic: writes a temp file beside `path`, fsyncs, renames. Returns the file's size in bytes.
// Throws Error (and leaves no file behind) on invalid input or any I/O failure.
uint64_t write_artifact(const std::string& path, const Artifact& a, const WriteOptions& opt = {});
// The exact bytes write_artifact writes.
std::vector<uint8_t> serialize_artifact(const Artifact& a, const WriteOptions& opt = {});

// Hardened reader; every defect is a one-line Error naming the file (and tensor / offset where it applies).
// All checksums are verified.
Artifact read_artifact(const std::string& path);
Artifact read_artifact(const std::string& path, ArtifactLayout& layout);
Artifact parse_artifact(std::span<const uint8_t> bytes, const std::string& name_for_errors);
Artifact parse_artifact(std::span<const uint8_t> bytes, const std::string& name_for_errors, ArtifactLayout& layout);
// Validates the header, tables and section placement (including the header checksum) without decoding
// any section. Allocates nothing that the bytes do not account for.
ArtifactLayout parse_artifact_layout(std::span<const uint8_t> bytes, const std::string& name_for_errors);

}  // namespace ptool
