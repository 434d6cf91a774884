// Byte codecs behind one interface: none, zlib (1-9), zstd (1-22, long window), brotli (0-11, window <= 24).
// Codec::arith is not a byte codec: it is the artifact's section codec for int8 matrices (formats/arith_section.h),
// which needs the section's tensor table; compress()/decompress() refuse it.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ptool {

enum class Codec : uint8_t { none = 0, zlib = 1, zstd = 2, brotli = 3, arith = 4 };

inline constexpr int kMaxZstdWindowLog = 27;  // decoders refuse zstd frames that need a larger window

struct CodecOptions {
  Codec codec = Codec::none;
  int level = -1;          // -1: the codec's maximum (zlib 9, zstd 22, brotli 11)
  int window_log = 0;      // zstd long-window log / brotli lgwin; 0: codec default (brotli 24)
};

std::string_view codec_name(Codec c);
Codec parse_codec(std::string_view name);  // throws Error on an unknown name

std::vector<uint8_t> compress(std::span<const uint8_t> raw, const CodecOptions& opt);
// Decompresses exactly raw_size bytes; throws Error on corrupt input or a size mismatch.
std::vector<uint8_t> decompress(Codec codec, std::span<const uint8_t> stored, size_t raw_size);
// The decoded length, measured by streaming through a fixed buffer (nothing sized by the input is allocated),
// or limit + 1 as soon as it exceeds `limit`. Throws Error on corrupt or truncated input.
uint64_t decoded_length(Codec codec, std::span<const uint8_t> stored, uint64_t limit);

}  // namespace ptool
