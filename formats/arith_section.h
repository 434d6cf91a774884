// The artifact's section codec 4, "arith" (ARTIFACT.md §3.1): each int8 matrix of a section is coded by
// ptool's entropy codec (formats/entropy_codec.h), one stream per matrix, and every other raw byte of the
// section (per-row scales, float tensors, padding) goes, in raw order, into one "rest" stream coded by a
// byte codec (Brotli unless storing it plain is smaller). Stored bytes:
//
//   u8 rest_codec (0 none, 1 zlib, 2 zstd, 3 brotli) | u8[7] zero | u64 rest_stored_bytes | rest stored bytes
//   then for each matrix, in tensor-table order: u64 stream_bytes | entropy-coded stream
//
// and nothing after the last stream.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "formats/artifact.h"

namespace ptool {

struct MatrixRegion {
  uint64_t offset = 0;  // within the section's raw bytes
  int64_t rows = 0, cols = 0;
  uint64_t bytes() const { return static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols); }
};

// The matrix a tensor contributes to an arith section: a rank-2 i8 tensor with both dimensions > 0 whose
// record holds at least rows*cols bytes; its first rows*cols raw bytes are the matrix, row-major. Quantized
// per-row records (codes, then fp16 scales) and plain int8 matrices qualify; nothing else does.
std::optional<MatrixRegion> matrix_region(DType dtype, std::span<const int64_t> shape, uint64_t offset,
                                          uint64_t length);

// `regions` must be in raw order, disjoint and inside `raw` (throws Error otherwise). Matrices are encoded
// in parallel; the bytes do not depend on the number of threads.
std::vector<uint8_t> encode_arith_section(std::span<const uint8_t> raw, std::span<const MatrixRegion> regions);

// The inverse. Throws Error on any defect (framing, an unknown rest codec, a stream of another shape, a
// payload that does not decode, bytes left over). Before allocating raw_bytes it checks that the stored bytes
// can account for them: the rest stream's decoded length is measured by streaming, and no matrix may claim
// more codes than its stream can carry (the coder spends at least log2(4096/4095) bits on every code).
std::vector<uint8_t> decode_arith_section(std::span<const uint8_t> stored, uint64_t raw_bytes,
                                          std::span<const MatrixRegion> regions);

}  // namespace ptool
