#include "formats/codec.h"

#include <brotli/decode.h>
#include <brotli/encode.h>
#include <zlib.h>
#include <zstd.h>

#include "formats/error.h"

namespace ptool {

std::string_view codec_name(Codec c) {
  switch (c) {
    case Codec::none: return "none";
    case Codec::zlib: return "zlib";
    case Codec::zstd: return "zstd";
    case Codec::brotli: return "brotli";
  }
  return "unknown";
}

Codec parse_codec(std::string_view name) {
  for (Codec c : {Codec::none, Codec::zlib, Codec::zstd, Codec::brotli})
    if (codec_name(c) == name) return c;
  throw Error("unknown codec '" + std::string(name) + "' (expected none, zlib, zstd or brotli)");
}

namespace {

int checked_level(const CodecOptions& opt, int lo, int hi) {
  if (opt.level == -1) return hi;
  if (opt.level < lo || opt.level > hi)
    throw Error(std::string(codec_name(opt.codec)) + " level " + std::to_string(opt.level) + " is outside " +
                std::to_string(lo) + ".." + std::to_string(hi));
  return opt.level;
}

std::vector<uint8_t> zlib_compress(std::span<const uint8_t> raw, int level) {
  uLongf bound = compressBound(raw.size());
  std::vector<uint8_t> out(bound);
  if (compress2(out.data(), &bound, raw.data(), raw.size(), level) != Z_OK) throw Error("zlib compression failed");
  out.resize(bound);
  return out;
}

std::vector<uint8_t> zstd_compress(std::span<const uint8_t> raw, int level, int window_log) {
  const ZSTD_bounds wb = ZSTD_cParam_getBounds(ZSTD_c_windowLog);
  if (window_log != 0 && (window_log < wb.lowerBound || window_log > wb.upperBound))
    throw Error("zstd window " + std::to_string(window_log) + " is outside " + std::to_string(wb.lowerBound) + ".." +
                std::to_string(wb.upperBound));
  ZSTD_CCtx* ctx = ZSTD_createCCtx();
  if (!ctx) throw Error("zstd: out of memory");
  auto set = [&](ZSTD_cParameter p, int v) {
    const size_t rc = ZSTD_CCtx_setParameter(ctx, p, v);
    if (ZSTD_isError(rc)) {
      ZSTD_freeCCtx(ctx);
      throw Error(std::string("zstd parameter rejected: ") + ZSTD_getErrorName(rc));
    }
  };
  set(ZSTD_c_compressionLevel, level);
  if (window_log > 0) {
    set(ZSTD_c_enableLongDistanceMatching, 1);
    set(ZSTD_c_windowLog, window_log);
  }
  std::vector<uint8_t> out(ZSTD_compressBound(raw.size()));
  size_t n = ZSTD_compress2(ctx, out.data(), out.size(), raw.data(), raw.size());
  ZSTD_freeCCtx(ctx);
  if (ZSTD_isError(n)) throw Error(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
  out.resize(n);
  return out;
}

std::vector<uint8_t> brotli_compress(std::span<const uint8_t> raw, int quality, int window_log) {
  int lgwin = window_log > 0 ? window_log : 24;
  if (lgwin < BROTLI_MIN_WINDOW_BITS || lgwin > BROTLI_MAX_WINDOW_BITS)
    throw Error("brotli window " + std::to_string(lgwin) + " is outside 10..24");
  size_t n = BrotliEncoderMaxCompressedSize(raw.size());
  if (n == 0) n = raw.size() + 1024;
  std::vector<uint8_t> out(n);
  if (!BrotliEncoderCompress(quality, lgwin, BROTLI_MODE_GENERIC, raw.size(), raw.data(), &n, out.data()))
    throw Error("brotli compression failed");
  out.resize(n);
  return out;
}

}  // namespace

std::vector<uint8_t> compress(std::span<const uint8_t> raw, const CodecOptions& opt) {
  switch (opt.codec) {
    case Codec::none: return {raw.begin(), raw.end()};
    case Codec::zlib: return zlib_compress(raw, checked_level(opt, 1, 9));
    case Codec::zstd: return zstd_compress(raw, checked_level(opt, 1, 22), opt.window_log);
    case Codec::brotli: return brotli_compress(raw, checked_level(opt, 0, 11), opt.window_log);
  }
  throw Error("unknown codec id " + std::to_string(static_cast<int>(opt.codec)));
}

std::vector<uint8_t> decompress(Codec codec, std::span<const uint8_t> stored, size_t raw_size) {
  std::vector<uint8_t> out(raw_size);
  const std::string what = std::string(codec_name(codec)) + " data is corrupt";
  switch (codec) {
    case Codec::none:
      if (stored.size() != raw_size) throw Error("stored length differs from raw length for uncompressed data");
      std::copy(stored.begin(), stored.end(), out.begin());
      return out;
    case Codec::zlib: {
      uLongf n = raw_size;
      uLong src = stored.size();
      int rc = uncompress2(out.data(), &n, stored.data(), &src);
      if (rc != Z_OK || n != raw_size || src != stored.size()) throw Error(what);
      return out;
    }
    case Codec::zstd: {
      ZSTD_DCtx* ctx = ZSTD_createDCtx();
      ZSTD_DCtx_setParameter(ctx, ZSTD_d_windowLogMax, 31);
      size_t n = ZSTD_decompressDCtx(ctx, out.data(), out.size(), stored.data(), stored.size());
      ZSTD_freeDCtx(ctx);
      if (ZSTD_isError(n) || n != raw_size) throw Error(what);
      return out;
    }
    case Codec::brotli: {
      size_t n = raw_size;
      if (BrotliDecoderDecompress(stored.size(), stored.data(), &n, out.data()) != BROTLI_DECODER_RESULT_SUCCESS ||
          n != raw_size)
        throw Error(what);
      return out;
    }
  }
  throw Error("unknown codec id " + std::to_string(static_cast<int>(codec)));
}

}  // namespace ptool
