// The artifact: one versioned container for the float checkpoint, the quantized model and the packed
// submission (DESIGN.md principle 1). The byte layout is specified in formats/ARTIFACT.md.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/codec.h"

namespace ptool {

enum class Stage : uint8_t { checkpoint = 1, quantized = 2, packed = 3 };
std::string_view stage_name(Stage s);

// Storage type of a tensor's raw bytes.
enum class DType : uint8_t { f32 = 0, f16 = 1, bf16 = 2, f64 = 3, i8 = 4, u8 = 5, i16 = 6, u16 = 7, i32 = 8,
                             u32 = 9, i64 = 10, u64 = 11 };
std::string_view dtype_name(DType d);
size_t dtype_size(DType d);

struct TensorRecord {
  std::string name;
  std::vector<int64_t> shape;      // empty = scalar; a zero dimension = zero-size tensor
  DType dtype = DType::f32;
  std::string scheme;              // "" = plain values; else the quant scheme, e.g. "int8_per_row"
  uint32_t scheme_version = 0;
  std::string section = "main";    // tensors of one section are stored (and compressed) together
  std::vector<uint8_t> data;       // raw little-endian bytes; for plain tensors numel * dtype_size

  int64_t numel() const;
};

struct SectionOptions {
  std::string name;
  CodecOptions codec;
  uint8_t shuffle_stride = 0;      // 0/1: none; k > 1: byte shuffle with stride k before the codec
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
  std::vector<SectionOptions> sections;
};

// Atomic: writes a temp file beside `path`, fsyncs, renames. Returns the file's size in bytes.
uint64_t write_artifact(const std::string& path, const Artifact& a, const WriteOptions& opt = {});
// Hardened reader; every defect is a one-line Error naming the file (and tensor / offset where it applies).
Artifact read_artifact(const std::string& path);
Artifact parse_artifact(std::span<const uint8_t> bytes, const std::string& name_for_errors);

}  // namespace ptool
