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
    case Codec::arith: return "arith";
  }
  return "unknown";
}

Codec parse_codec(std::string_view name) {
  for (Codec c : {Codec::none, Codec::zlib, Codec::zstd, Codec::brotli, Codec::arith})
    if (codec_name(c) == name) return c;
  throw Error("unknown codec '" + std::string(name) + "' (expected none, zlib, zstd, brotli or arith)");
}

namespace {

constexpr const char* kArithNotBytes =
    "arith codes the int8 matrices of an artifact section (formats/arith_section.h), not a byte string";

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

// ---------------------------------------------------------------------------------------------------------------
// Decoded length, measured by streaming through a fixed scratch buffer (nothing sized by the file is
// allocated). Returns the decoded length, or limit + 1 as soon as it exceeds `limit`. Throws Error(reason).

uint64_t zlib_decoded_length(std::span<const uint8_t> in, uint64_t limit) {
  z_stream zs{};
  if (inflateInit(&zs) != Z_OK) throw Error("zlib: cannot initialise the decoder");
  uint8_t buf[1 << 15];
  uint64_t total = 0;
  size_t fed = 0;
  int rc = Z_OK;
  std::string err;
  while (true) {
    if (zs.avail_in == 0 && fed < in.size()) {
      const size_t chunk = std::min<size_t>(in.size() - fed, 1u << 30);
      zs.next_in = const_cast<Bytef*>(in.data() + fed);
      zs.avail_in = static_cast<uInt>(chunk);
      fed += chunk;
    }
    zs.next_out = buf;
    zs.avail_out = sizeof buf;
    rc = inflate(&zs, Z_NO_FLUSH);
    total += sizeof buf - zs.avail_out;
    if (total > limit) break;
    if (rc == Z_STREAM_END) {
      if (zs.avail_in != 0 || fed < in.size()) err = "zlib stream ends before the stored bytes do";
      break;
    }
    if (rc == Z_BUF_ERROR && zs.avail_in == 0 && fed == in.size()) {
      err = "zlib data is truncated";
      break;
    }
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      err = std::string("zlib data is corrupt: ") + (zs.msg ? zs.msg : "error " + std::to_string(rc));
      break;
    }
  }
  inflateEnd(&zs);
  if (total > limit) return limit + 1;
  if (!err.empty()) throw Error(err);
  return total;
}

uint64_t zstd_decoded_length(std::span<const uint8_t> in, uint64_t limit) {
  ZSTD_DCtx* d = ZSTD_createDCtx();
  if (!d) throw Error("zstd: cannot create a decoder");
  ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, kMaxZstdWindowLog);
  uint8_t buf[1 << 15];
  ZSTD_inBuffer ib{in.data(), in.size(), 0};
  uint64_t total = 0;
  std::string err;
  while (true) {
    ZSTD_outBuffer ob{buf, sizeof buf, 0};
    const size_t ret = ZSTD_decompressStream(d, &ob, &ib);
    if (ZSTD_isError(ret)) {
      err = std::string("zstd data is corrupt: ") + ZSTD_getErrorName(ret);
      break;
    }
    total += ob.pos;
    if (total > limit) break;
    if (ib.pos == ib.size && ob.pos < ob.size) {
      if (ret != 0) err = "zstd data is truncated";
      break;
    }
  }
  ZSTD_freeDCtx(d);
  if (total > limit) return limit + 1;
  if (!err.empty()) throw Error(err);
  return total;
}

uint64_t brotli_decoded_length(std::span<const uint8_t> in, uint64_t limit) {
  BrotliDecoderState* s = BrotliDecoderCreateInstance(nullptr, nullptr, nullptr);
  if (!s) throw Error("brotli: cannot create a decoder");
  uint8_t buf[1 << 15];
  size_t avail_in = in.size();
  const uint8_t* next_in = in.data();
  uint64_t total = 0;
  std::string err;
  while (true) {
    size_t avail_out = sizeof buf;
    uint8_t* next_out = buf;
    const BrotliDecoderResult r = BrotliDecoderDecompressStream(s, &avail_in, &next_in, &avail_out, &next_out, nullptr);
    total += sizeof buf - avail_out;
    if (total > limit) break;
    if (r == BROTLI_DECODER_RESULT_SUCCESS) {
      if (avail_in != 0) err = "brotli stream ends before the stored bytes do";
      break;
    }
    if (r == BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT) {
      err = "brotli data is truncated";
      break;
    }
    if (r == BROTLI_DECODER_RESULT_ERROR) {
      err = std::string("brotli data is corrupt: ") + BrotliDecoderErrorString(BrotliDecoderGetErrorCode(s));
      break;
    }
  }
  BrotliDecoderDestroyInstance(s);
  if (total > limit) return limit + 1;
  if (!err.empty()) throw Error(err);
  return total;
}

}  // namespace

std::vector<uint8_t> compress(std::span<const uint8_t> raw, const CodecOptions& opt) {
  switch (opt.codec) {
    case Codec::none: return {raw.begin(), raw.end()};
    case Codec::zlib: return zlib_compress(raw, checked_level(opt, 1, 9));
    case Codec::zstd: return zstd_compress(raw, checked_level(opt, 1, 22), opt.window_log);
    case Codec::brotli: return brotli_compress(raw, checked_level(opt, 0, 11), opt.window_log);
    case Codec::arith: break;
  }
  if (opt.codec == Codec::arith) throw Error(kArithNotBytes);
  throw Error("unknown codec id " + std::to_string(static_cast<int>(opt.codec)));
}

std::vector<uint8_t> decompress(Codec codec, std::span<const uint8_t> stored, size_t raw_size) {
  if (codec == Codec::arith) throw Error(kArithNotBytes);
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
    case Codec::arith: break;
  }
  throw Error("unknown codec id " + std::to_string(static_cast<int>(codec)));
}

uint64_t decoded_length(Codec c, std::span<const uint8_t> in, uint64_t limit) {
  switch (c) {
    case Codec::none: return in.size();
    case Codec::zlib: return zlib_decoded_length(in, limit);
    case Codec::zstd: return zstd_decoded_length(in, limit);
    case Codec::brotli: return brotli_decoded_length(in, limit);
    case Codec::arith: throw Error(kArithNotBytes);
  }
  throw Error("unknown codec");
}

}  // namespace ptool
